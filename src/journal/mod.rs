//! The journal: an append-only, checksummed log of opaque records in segment
//! files, plus snapshots, in one directory. It owns the bytes on disk and
//! nothing else: it knows no actor or event type (callers encode their
//! events with [`crate::codec`] and hand over the bytes), and it decides
//! when a record is durable, so a caller acknowledges a client only after
//! [`Journal::wait_durable`] says so.
//!
//! - [`segment`]: the file format (segment names, header, record framing).
//! - [`writer`]: the writer thread (group commit, fsync policy, write errors).
//! - [`recover`]: reading a directory back at open (torn tails cut, gaps and
//!   corruption refused).
//! - [`snapshot`]: snapshot files and the deletion of segments they cover.
//! - [`faults`]: injected write and fsync failures, for tests.
//! - [`replication`]: the gate of a replicated journal (cluster mode): the
//!   feed of written batches a replicator ships, and what it marks stored.
//!
//! Appending never blocks the caller: it copies the record into a bounded
//! in-memory queue (`queue_bytes`) under a short lock and returns its Lsn;
//! the writer takes the whole queue at once. When the queue is full or the
//! disk is failing, `append` answers [`JournalError::Unavailable`] at once, so
//! the caller can refuse its client's request instead of acknowledging what
//! was not stored. `docs/operations.md` (Durability) is the operator's view.
//!
//! A replicated journal (`JournalConfig::replicated`, cluster mode) counts a
//! record durable only once it is also marked replicated; the bytes waiting
//! for the replica count against the same `queue_bytes` budget, so a replica
//! that falls behind makes `append` answer `Unavailable` like a slow disk.
//! [`Journal::fail`] makes any journal refuse everything for good.

mod faults;
pub mod record;
mod recover;
mod replication;
mod segment;
pub(crate) mod snapshot;
mod writer;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

pub use faults::Faults;
pub use replication::{FeedBatch, ReplicationFeed, ReplicationFigures};
pub use segment::FORMAT_VERSION;

use crate::codec::MAX_RECORD;
use writer::{Batch, Segment, Writer};

/// Position of a record: 1 for the first ever appended, gap-free after it.
/// 0 stands for "none yet".
pub type Lsn = u64;

/// When appended records are fsynced, and so when they count as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every batch is fsynced before any record of it is durable; appends
    /// that wait together share one fsync (group commit).
    Always,
    /// fsync at most once per `max_delay`: a record is durable at most
    /// `max_delay` (plus one fsync) after it is written. Far fewer fsyncs
    /// under load than `Always`, at a bounded cost in acknowledgement latency.
    Batch { max_delay: Duration },
    /// Durable once written to the OS (page cache): a crash of the process
    /// loses nothing, a crash of the machine or its power loses what the OS
    /// had not written yet.
    Never,
}

/// The default `Batch` delay: 2 ms. An fsync on a data-center SSD takes
/// about 0.1–2 ms, so waiting longer buys little batching, while 2 ms stays
/// far below what a person notices in a chat's acknowledgement, and caps
/// fsyncs at 500 a second whatever the load.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(2);
/// Segment size before the writer starts a new file: large enough that
/// rotation (an fsync and a directory fsync) is rare, small enough that a
/// snapshot frees space soon.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes of records queued for the writer before `append` answers
/// `Unavailable`: some seconds of a busy broker's records, so a slow fsync
/// is absorbed and only a disk that has stopped shows.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// The smallest `segment_bytes` accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// Where and how the journal writes.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The journal's directory (created if missing; nothing else should
    /// write in it).
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// A segment is closed and a new one started when the next record would
    /// take it past this (a record larger than it gets a segment of its own).
    pub segment_bytes: u64,
    /// Budget of the queue between `append` and the writer, in bytes of
    /// framed records. A record larger than the budget is still taken when
    /// nothing is queued. Replicated, the bytes written and not yet marked
    /// replicated count too: a replica that falls behind refuses appends
    /// like a slow disk.
    pub queue_bytes: usize,
    /// Injected storage faults (tests); the default injects none.
    pub faults: Faults,
    /// Replicated (cluster mode): a record is durable only once written
    /// under the fsync policy **and** marked replicated
    /// ([`Journal::mark_replicated`]); every written batch is handed to the
    /// feed a replicator takes ([`Journal::replication_feed`]), and the
    /// bytes not yet replicated count against `queue_bytes`. The records
    /// found at open count as replicated. Default false.
    pub replicated: bool,
}

impl JournalConfig {
    /// The defaults in `dir`: `Batch` every 2 ms, 64 MiB segments, a 16 MiB queue.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            fsync: Fsync::Batch {
                max_delay: DEFAULT_BATCH_DELAY,
            },
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            faults: Faults::default(),
            replicated: false,
        }
    }
}

/// What the journal cannot do, and why. `Unavailable` is the one a caller
/// maps to its clients' `unavailable`; the others at open stop the start.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal corrupt: {} at byte {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error(
        "{} has journal format version {found}; this build reads versions up to \
         {supported}: it was written by a newer Switchboard (run that version, or restore \
         a backup made by this one)",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "journal segment missing in {}: records from Lsn {expected} are needed, but the next \
         segment starts at Lsn {found}",
        dir.display()
    )]
    MissingSegment {
        dir: PathBuf,
        expected: Lsn,
        found: Lsn,
    },
    #[error("journal unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("journal closed")]
    Closed,
    #[error("journal directory {} is in use by another process (lock held on {})", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("journal record of {len} bytes: must be 1 to {max} bytes")]
    InvalidRecord { len: usize, max: usize },
    #[error("Lsn {lsn} has not been appended (highest: {appended})")]
    NotAppended { lsn: Lsn, appended: Lsn },
    #[error("snapshot at Lsn {lsn}: {why}")]
    InvalidSnapshot { lsn: Lsn, why: String },
    #[error(
        "journal close timed out after {timeout:?}: durable up to Lsn {durable} of {appended} \
         appended"
    )]
    CloseTimeout {
        timeout: Duration,
        durable: Lsn,
        appended: Lsn,
    },
    #[error("invalid journal configuration: {0}")]
    Config(String),
}

impl JournalError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What recovery cut off the end of the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutReport {
    pub segment: PathBuf,
    /// Where the file now ends (the first byte that was cut).
    pub offset: u64,
    pub bytes: u64,
    /// Records (whole or torn) in the bytes cut, following their length
    /// prefixes as far as they were sane.
    pub records: u64,
    /// Why the first cut record was bad (torn, checksum, length).
    pub reason: String,
    /// The Lsn of the last record kept (0: none).
    pub last_good: Lsn,
}

/// What [`Journal::open`] read back: the newest good snapshot, and every
/// record after it in Lsn order (gap-free, starting right after the
/// snapshot's Lsn, or at 1).
#[derive(Debug, Default)]
pub struct Recovered {
    pub snapshot: Option<(Lsn, Vec<u8>)>,
    pub records: Vec<(Lsn, Vec<u8>)>,
    pub cut: Option<CutReport>,
}

/// The journal handle: cheap to clone, `Send + Sync`. Dropping the last
/// handle starts a close without waiting for it; call [`Journal::close`] to
/// know everything queued was written.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    dir: PathBuf,
    queue_bytes: usize,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Serializes snapshot writers; holds the newest snapshot's Lsn.
    snapshots: Mutex<Lsn>,
}

/// What the appenders and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits on it for records, a close, or a deadline.
    work: Condvar,
    appended: AtomicU64,
    written: AtomicU64,
    /// Written under the fsync policy (what `durable` is without
    /// replication).
    synced: AtomicU64,
    /// Marked replicated (replicated journals).
    replicated: AtomicU64,
    /// `synced`, or the lower of `synced` and `replicated`; only grows.
    durable: AtomicU64,
    durable_rx: watch::Receiver<Lsn>,
    /// Taken (dropped) once nothing more can become durable: the writer
    /// stopped (and, replicated, everything written was replicated or the
    /// close gave up), or the journal failed. Its lock orders `durable`'s
    /// updates.
    durable_tx: Mutex<Option<watch::Sender<Lsn>>>,
    /// `durable_tx` is gone.
    finished: AtomicBool,
    /// [`Journal::fail`] was called.
    failed: AtomicBool,
    replicated_mode: bool,
    feed: Mutex<replication::Feed>,
    /// Wakes the replicator waiting on the feed.
    feed_notify: tokio::sync::Notify,
    feed_taken: AtomicBool,
    /// Bytes handed to the feed and not yet marked replicated.
    unreplicated: AtomicUsize,
    /// True while appends are accepted (not failing, not closing, writer
    /// running): what [`Journal::health`] reads on every request without
    /// the queue's lock. Written under that lock whenever `failing` or
    /// `closing` change, and when the writer stops.
    accepting: AtomicBool,
    /// Blocking waiters (close, snapshots) wait on `flushed_cv` under it.
    flushed: Mutex<()>,
    flushed_cv: Condvar,
    writer_done: AtomicBool,
}

struct Queue {
    batch: Batch,
    next_lsn: Lsn,
    /// Some while the writer is failing: appends are refused with it.
    failing: Option<String>,
    /// Some once the journal failed for good ([`Journal::fail`]).
    failed: Option<String>,
    closing: bool,
    /// The writer sleeps until its next `Batch` fsync is due, and takes the
    /// queue then: an append need not wake it.
    sleeping_until_sync: bool,
    /// A close timed out: the writer stops without writing the rest.
    abandon: bool,
}

impl Shared {
    /// No append is taken from now on.
    fn set_closing(&self) {
        let mut q = self.queue.lock();
        q.closing = true;
        self.accepting.store(false, Ordering::Release);
    }

    /// The writer is failing (`Some(why)`) or works again (`None`).
    fn set_failing(&self, reason: Option<String>) {
        let mut q = self.queue.lock();
        let accepting = reason.is_none()
            && q.failed.is_none()
            && !q.closing
            && !self.writer_done.load(Ordering::Acquire);
        q.failing = reason;
        self.accepting.store(accepting, Ordering::Release);
    }

    /// Recompute `durable` from `synced` (and `replicated`) and publish it
    /// if it grew; nothing grows once finished.
    fn advance(&self) {
        {
            // Read under the lock: of two threads that each stored one
            // watermark before taking it, the second sees both.
            let tx = self.durable_tx.lock();
            let Some(tx) = tx.as_ref() else { return };
            let synced = self.synced.load(Ordering::Acquire);
            let target = if self.replicated_mode {
                synced.min(self.replicated.load(Ordering::Acquire))
            } else {
                synced
            };
            if target <= self.durable.load(Ordering::Acquire) {
                return;
            }
            self.durable.store(target, Ordering::Release);
            tx.send_replace(target);
        }
        let _guard = self.flushed.lock();
        self.flushed_cv.notify_all();
    }

    /// Nothing more becomes durable: drop the sender (async waiters wake),
    /// wake blocking waiters and the replicator.
    fn finish(&self) {
        {
            let mut tx = self.durable_tx.lock();
            tx.take();
            self.finished.store(true, Ordering::Release);
        }
        {
            let _guard = self.flushed.lock();
            self.flushed_cv.notify_all();
        }
        self.feed_notify.notify_one();
    }

    /// Finish once the writer has stopped and, replicated, everything it
    /// wrote was replicated (or the journal failed).
    fn finish_if_done(&self) {
        let done = {
            // Under the lock, as in `advance`: the writer stopping and the
            // last mark cannot both miss each other.
            let tx = self.durable_tx.lock();
            tx.is_some()
                && self.writer_done.load(Ordering::Acquire)
                && (!self.replicated_mode
                    || self.failed.load(Ordering::Acquire)
                    || self.replicated.load(Ordering::Acquire)
                        >= self.written.load(Ordering::Acquire))
        };
        if done {
            self.finish();
        }
    }

    /// Refuse everything from now on, and let nothing more become durable.
    fn fail(&self, reason: &str) {
        {
            let mut q = self.queue.lock();
            if q.failed.is_some() {
                return;
            }
            q.failed = Some(reason.to_owned());
            self.accepting.store(false, Ordering::Release);
        }
        self.failed.store(true, Ordering::Release);
        self.finish();
        tracing::error!(
            reason,
            durable = self.durable.load(Ordering::Acquire),
            appended = self.appended.load(Ordering::Acquire),
            "journal failed for good: appends refused, nothing more becomes durable"
        );
    }

    /// The refusal of a failed journal, if it failed.
    fn failed_error(&self) -> Option<JournalError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let q = self.queue.lock();
        q.failed.as_ref().map(|reason| JournalError::Unavailable {
            reason: reason.clone(),
        })
    }
}

impl Journal {
    /// Open (creating) the directory: read the latest good snapshot and every
    /// record after it, cut a torn or corrupt tail of the last segment, refuse
    /// corruption in an earlier segment, a missing segment or a newer format;
    /// then start the writer thread.
    pub fn open(cfg: JournalConfig) -> Result<(Journal, Recovered), JournalError> {
        if cfg.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(JournalError::Config(format!(
                "segment_bytes must be at least {MIN_SEGMENT_BYTES}"
            )));
        }
        if cfg.queue_bytes == 0 {
            return Err(JournalError::Config(
                "queue_bytes must be at least 1".into(),
            ));
        }
        if cfg.fsync
            == (Fsync::Batch {
                max_delay: Duration::ZERO,
            })
        {
            return Err(JournalError::Config(
                "the batch fsync delay must be more than 0 (use Always to fsync every batch)"
                    .into(),
            ));
        }
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| JournalError::io(&dir, e))?;
        let lock = lock_dir(&dir)?;
        let opened = recover::recover(&dir)?;
        let seg = match opened.active {
            Some((path, first, records, len)) => Segment::reopen(path.clone(), first, records, len)
                .map_err(|e| JournalError::io(&path, e))?,
            None => {
                Segment::create(&dir, opened.next_lsn).map_err(|e| JournalError::io(&dir, e))?
            }
        };
        let last = opened.next_lsn - 1;
        let newest_snapshot = opened.recovered.snapshot.as_ref().map_or(0, |(l, _)| *l);
        let (durable_tx, durable_rx) = watch::channel(last);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                batch: Batch::default(),
                next_lsn: opened.next_lsn,
                failing: None,
                failed: None,
                closing: false,
                sleeping_until_sync: false,
                abandon: false,
            }),
            work: Condvar::new(),
            appended: AtomicU64::new(last),
            written: AtomicU64::new(last),
            synced: AtomicU64::new(last),
            replicated: AtomicU64::new(last),
            durable: AtomicU64::new(last),
            durable_rx,
            durable_tx: Mutex::new(Some(durable_tx)),
            finished: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            replicated_mode: cfg.replicated,
            feed: Mutex::new(replication::Feed::new(last)),
            feed_notify: tokio::sync::Notify::new(),
            feed_taken: AtomicBool::new(false),
            unreplicated: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            flushed: Mutex::new(()),
            flushed_cv: Condvar::new(),
            writer_done: AtomicBool::new(false),
        });
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.clone(),
            fsync: cfg.fsync,
            segment_bytes: cfg.segment_bytes,
            queue_bytes: cfg.queue_bytes,
            faults: cfg.faults,
            seg,
            _lock: lock,
            written: last,
            pending: Batch::default(),
            unsynced: Batch::default(),
            last_sync: None,
            needs_truncate: false,
        };
        let done = DoneGuard(shared.clone());
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                let _done = done;
                writer.run();
            })
            .map_err(|e| JournalError::io(&dir, e))?;
        tracing::info!(
            dir = %dir.display(),
            snapshot = newest_snapshot,
            records = opened.recovered.records.len(),
            next_lsn = opened.next_lsn,
            "journal opened"
        );
        let journal = Journal {
            inner: Arc::new(Inner {
                shared,
                dir,
                queue_bytes: cfg.queue_bytes,
                writer: Mutex::new(Some(handle)),
                snapshots: Mutex::new(newest_snapshot),
            }),
        };
        Ok((journal, opened.recovered))
    }

    /// Append one record and return its Lsn. Never blocks on I/O: the bytes
    /// are copied into the writer's queue. `Unavailable` when the queue's
    /// byte budget is spent or the writer is failing; the record is then not
    /// taken and no Lsn is used.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, JournalError> {
        if payload.is_empty() || payload.len() > MAX_RECORD {
            return Err(JournalError::InvalidRecord {
                len: payload.len(),
                max: MAX_RECORD,
            });
        }
        let crc = crc32c::crc32c(payload);
        let frame = payload.len() + segment::FRAME_OVERHEAD;
        let shared = &self.inner.shared;
        let mut q = shared.queue.lock();
        if let Some(reason) = &q.failed {
            return Err(JournalError::Unavailable {
                reason: reason.clone(),
            });
        }
        if q.closing || shared.writer_done.load(Ordering::Acquire) {
            return Err(JournalError::Closed);
        }
        if let Some(reason) = &q.failing {
            return Err(JournalError::Unavailable {
                reason: reason.clone(),
            });
        }
        let queued = q.batch.buf.len();
        // Always 0 without replication.
        let unreplicated = shared.unreplicated.load(Ordering::Acquire);
        let waiting = queued + unreplicated;
        if waiting > 0 && waiting + frame > self.inner.queue_bytes {
            let budget = self.inner.queue_bytes;
            return Err(JournalError::Unavailable {
                reason: if shared.replicated_mode {
                    format!(
                        "journal queue full ({queued} bytes waiting for the disk, \
                         {unreplicated} written and waiting for replication, budget {budget})"
                    )
                } else {
                    format!(
                        "journal queue full ({queued} bytes waiting for the disk, budget {budget})"
                    )
                },
            });
        }
        segment::encode_frame(&mut q.batch.buf, payload, crc);
        q.batch.frames.push(frame as u32);
        let lsn = q.next_lsn;
        q.next_lsn += 1;
        shared.appended.store(lsn, Ordering::Release);
        // Wake the writer when it waits for records; not when it sleeps
        // until its next fsync (it takes the queue then), unless the queue
        // just passed half its budget.
        let half = self.inner.queue_bytes / 2;
        let wake = if q.sleeping_until_sync {
            queued < half && queued + frame >= half
        } else {
            queued == 0
        };
        drop(q);
        if wake {
            shared.work.notify_one();
        }
        Ok(lsn)
    }

    /// The highest Lsn handed out.
    pub fn appended(&self) -> Lsn {
        self.inner.shared.appended.load(Ordering::Acquire)
    }

    /// The highest Lsn written to the OS (durable or not yet).
    pub fn written(&self) -> Lsn {
        self.inner.shared.written.load(Ordering::Acquire)
    }

    /// The highest Lsn durable under the fsync policy: every record up to it
    /// survives a crash (`Never`: a crash of the process only). Replicated:
    /// also marked replicated.
    pub fn durable(&self) -> Lsn {
        self.inner.shared.durable.load(Ordering::Acquire)
    }

    /// Resolves when `durable() >= lsn`. Holds no lock; costs one atomic
    /// load when it already is. While the writer is failing it keeps
    /// waiting (the record is written once the disk works again; bound the
    /// wait with a timeout if needed), and so while a replicated journal's
    /// replica is away; `Closed` if the journal stops first, `Unavailable`
    /// (with the reason) if it failed ([`Journal::fail`]).
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), JournalError> {
        if self.durable() >= lsn {
            return Ok(());
        }
        let appended = self.appended();
        if lsn > appended {
            return Err(JournalError::NotAppended { lsn, appended });
        }
        let mut rx = self.inner.shared.durable_rx.clone();
        loop {
            if *rx.borrow_and_update() >= lsn {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return if *rx.borrow() >= lsn {
                    Ok(())
                } else {
                    Err(self
                        .inner
                        .shared
                        .failed_error()
                        .unwrap_or(JournalError::Closed))
                };
            }
        }
    }

    /// The durable Lsn as a watch channel, for code that cannot `.await`
    /// (an actor can poll it, or spawn the `changed()` future). The sender
    /// is dropped when nothing more can become durable: the writer stopped
    /// (replicated: and what it wrote was replicated, or the close gave
    /// up), or the journal failed.
    pub fn watch_durable(&self) -> watch::Receiver<Lsn> {
        self.inner.shared.durable_rx.clone()
    }

    /// Block the calling thread until `durable() >= lsn`, for at most
    /// `timeout`. For blocking threads only (shutdown, snapshots), never an
    /// actor or executor thread.
    pub fn wait_durable_blocking(&self, lsn: Lsn, timeout: Duration) -> Result<(), JournalError> {
        let appended = self.appended();
        if lsn > appended {
            return Err(JournalError::NotAppended { lsn, appended });
        }
        let shared = &self.inner.shared;
        let deadline = Instant::now() + timeout;
        let mut guard = shared.flushed.lock();
        loop {
            if self.durable() >= lsn {
                return Ok(());
            }
            if shared.finished.load(Ordering::Acquire) {
                drop(guard);
                return Err(shared.failed_error().unwrap_or(JournalError::Closed));
            }
            if shared
                .flushed_cv
                .wait_until(&mut guard, deadline)
                .timed_out()
            {
                if self.durable() >= lsn {
                    return Ok(());
                }
                drop(guard);
                return Err(self.health().err().unwrap_or(JournalError::Unavailable {
                    reason: format!("Lsn {lsn} not durable after {timeout:?}"),
                }));
            }
        }
    }

    /// Ok while appends are accepted; `Unavailable` while the writer is
    /// failing (with its error) or after [`Journal::fail`] (with its
    /// reason), `Closed` after a close. Called for every
    /// message and changing request: while appends are accepted it is one
    /// atomic load; only a refusal takes the lock, to say why.
    pub fn health(&self) -> Result<(), JournalError> {
        let shared = &self.inner.shared;
        if shared.accepting.load(Ordering::Acquire) {
            return Ok(());
        }
        let q = shared.queue.lock();
        if let Some(reason) = &q.failed {
            return Err(JournalError::Unavailable {
                reason: reason.clone(),
            });
        }
        if q.closing || shared.writer_done.load(Ordering::Acquire) {
            return Err(JournalError::Closed);
        }
        match &q.failing {
            Some(reason) => Err(JournalError::Unavailable {
                reason: reason.clone(),
            }),
            // Accepting again since the load above.
            None => Ok(()),
        }
    }

    /// Write the caller's state as of `lsn` (every record up to `lsn`
    /// applied, none after) as a snapshot: it first waits until `lsn` is
    /// durable (at most 30 s), then writes it atomically (tmp file, fsync,
    /// rename, fsync dir), keeps the two newest snapshots and deletes the
    /// segments wholly before the older of them. Blocks: call it from a
    /// blocking thread.
    pub fn write_snapshot(&self, lsn: Lsn, bytes: &[u8]) -> Result<(), JournalError> {
        let invalid = |why: String| JournalError::InvalidSnapshot { lsn, why };
        if lsn == 0 {
            return Err(invalid("Lsn 0 is before any record".into()));
        }
        let appended = self.appended();
        if lsn > appended {
            return Err(invalid(format!("only {appended} records appended")));
        }
        self.wait_durable_blocking(lsn, Duration::from_secs(30))?;
        let mut newest = self.inner.snapshots.lock();
        // Never after a close: the directory may be another broker's by now.
        if self.inner.shared.queue.lock().closing {
            return Err(JournalError::Closed);
        }
        if lsn < *newest {
            return Err(invalid(format!("older than the snapshot at Lsn {newest}")));
        }
        let started = Instant::now();
        let path = snapshot::write(&self.inner.dir, lsn, bytes)?;
        *newest = lsn;
        let removed = snapshot::prune(&self.inner.dir)?;
        tracing::info!(
            snapshot = %path.display(),
            bytes = bytes.len(),
            files_removed = removed.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "journal snapshot written"
        );
        Ok(())
    }

    /// Stop taking appends (and snapshots: one being written is waited for),
    /// write and fsync everything queued, stop the writer, and (replicated)
    /// wait until all of it is replicated; at most `timeout`. After a
    /// timeout (the disk is failing, the replica away) the writer is told
    /// to stop and what was not durable is lost: none of it was
    /// acknowledged. A failed journal answers its `Unavailable`.
    pub fn close(&self, timeout: Duration) -> Result<(), JournalError> {
        let shared = &self.inner.shared;
        let deadline = Instant::now() + timeout;
        {
            // A snapshot being written finishes first (and none starts
            // after), so nothing writes in the directory once it is closed.
            let _snapshot = self.inner.snapshots.try_lock_until(deadline);
            shared.set_closing();
        }
        shared.work.notify_one();
        {
            let mut guard = shared.flushed.lock();
            while !shared.writer_done.load(Ordering::Acquire) {
                if shared
                    .flushed_cv
                    .wait_until(&mut guard, deadline)
                    .timed_out()
                    && !shared.writer_done.load(Ordering::Acquire)
                {
                    drop(guard);
                    shared.queue.lock().abandon = true;
                    shared.work.notify_one();
                    shared.finish();
                    return Err(JournalError::CloseTimeout {
                        timeout,
                        durable: self.durable(),
                        appended: self.appended(),
                    });
                }
            }
        }
        if let Some(handle) = self.inner.writer.lock().take() {
            let _ = handle.join();
        }
        if shared.replicated_mode {
            let mut guard = shared.flushed.lock();
            while self.durable() < self.appended()
                && !shared.finished.load(Ordering::Acquire)
                && !shared
                    .flushed_cv
                    .wait_until(&mut guard, deadline)
                    .timed_out()
            {}
        }
        shared.finish();
        if let Some(failed) = shared.failed_error() {
            return Err(failed);
        }
        let (durable, appended) = (self.durable(), self.appended());
        if durable < appended {
            return Err(JournalError::CloseTimeout {
                timeout,
                durable,
                appended,
            });
        }
        tracing::info!(durable, "journal closed");
        Ok(())
    }

    /// Make the journal unhealthy for good: every `append` and `health()`
    /// answers `Unavailable` with `reason`, nothing more becomes durable
    /// (waiters get the same error), and the writer only writes out what
    /// was queued. For a node that must stop acknowledging at once (its
    /// replicated write was fenced off: another node is active). The first
    /// reason stays.
    pub fn fail(&self, reason: &str) {
        self.inner.shared.fail(reason);
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The Lsn of the newest snapshot written (or read at open); 0: none.
    pub fn snapshot_lsn(&self) -> Lsn {
        *self.inner.snapshots.lock()
    }

    /// The newest snapshot that reads back whole, with its Lsn (an
    /// unreadable one is skipped for the one before it, as at open).
    /// Blocks on I/O: for blocking threads only.
    pub fn read_snapshot(&self) -> Result<Option<(Lsn, Vec<u8>)>, JournalError> {
        recover::newest_good_snapshot(&self.inner.dir)
    }

    /// Read the records after `after` up to `upto` back from the segment
    /// files, in Lsn order, one segment in memory at a time, and hand each
    /// to `each`. `upto` must be written ([`Journal::written`]): those
    /// records are whole in the files whatever the writer does meanwhile.
    /// Blocks on I/O: for blocking threads only (the snapshot compactor).
    pub fn read_records(
        &self,
        after: Lsn,
        upto: Lsn,
        mut each: impl FnMut(Lsn, &[u8]) -> Result<(), String>,
    ) -> Result<(), JournalError> {
        let written = self.written();
        if upto > written {
            return Err(JournalError::NotAppended {
                lsn: upto,
                appended: written,
            });
        }
        let dir = &self.inner.dir;
        let segments = segment::list_segments(dir)?;
        let mut next = after + 1;
        let start = segments
            .iter()
            .rposition(|(first, _)| *first <= next)
            .unwrap_or(0);
        for (first, path) in segments.iter().skip(start) {
            if next > upto {
                break;
            }
            if *first > next {
                return Err(JournalError::MissingSegment {
                    dir: dir.clone(),
                    expected: next,
                    found: *first,
                });
            }
            let bytes = std::fs::read(path).map_err(|e| JournalError::io(path, e))?;
            segment::check_header(path, &bytes, *first)?;
            let found = segment::scan(&bytes);
            for (n, &(at, len)) in found.records.iter().enumerate() {
                let lsn = first + n as u64;
                if lsn < next {
                    continue;
                }
                if lsn > upto {
                    break;
                }
                each(lsn, &bytes[at..at + len]).map_err(|what| JournalError::Corrupt {
                    path: path.clone(),
                    offset: at as u64,
                    what,
                })?;
                next = lsn + 1;
            }
        }
        if next <= upto {
            return Err(JournalError::MissingSegment {
                dir: dir.clone(),
                expected: next,
                found: upto + 1,
            });
        }
        Ok(())
    }

    /// A handle that does not keep the journal open (a background thread
    /// holds one, so dropping the broker's handles still closes it).
    pub fn downgrade(&self) -> WeakJournal {
        WeakJournal(Arc::downgrade(&self.inner))
    }
}

/// A [`Journal`] handle that does not keep it open.
#[derive(Clone)]
pub struct WeakJournal(std::sync::Weak<Inner>);

impl WeakJournal {
    /// The journal, while some handle still holds it.
    pub fn upgrade(&self) -> Option<Journal> {
        self.0.upgrade().map(|inner| Journal { inner })
    }
}

impl Drop for Inner {
    /// The last handle is gone: the writer writes what is queued and stops.
    fn drop(&mut self) {
        self.shared.set_closing();
        self.shared.work.notify_one();
    }
}

/// Marks the writer stopped (also when it panics) and wakes blocking waiters.
struct DoneGuard(Arc<Shared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.accepting.store(false, Ordering::Release);
        {
            let _guard = self.0.flushed.lock();
            self.0.writer_done.store(true, Ordering::Release);
            self.0.flushed_cv.notify_all();
        }
        self.0.feed_notify.notify_one();
        self.0.finish_if_done();
    }
}

/// fsync a directory, so a file created or renamed in it stays after a crash.
/// The Lsn in a file name `<prefix><20 digits><suffix>` (segments,
/// snapshots), or None for any other name.
fn lsn_in_name(name: &str, prefix: &str, suffix: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Every file of `dir` whose name `parse` reads an Lsn from, unsorted.
fn files_by_lsn(
    dir: &Path,
    parse: fn(&str) -> Option<Lsn>,
) -> Result<Vec<(Lsn, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        if let Some(lsn) = entry.file_name().to_str().and_then(parse) {
            out.push((lsn, entry.path()));
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

/// Take the directory's exclusive lock (`LOCK`, flock): a second broker on
/// the same directory is refused instead of interleaving its appends.
/// The journal directory's exclusive lock, released when this is dropped
/// (the writer's end). Released explicitly (`LOCK_UN`), not only by closing
/// the descriptor: a `flock` belongs to the open file, which a process
/// forked meanwhile shares until it `exec`s (a test process starting a
/// server, say), so closing this copy alone could leave the directory locked
/// for a moment after the journal closed.
pub(crate) struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this value owns; no memory is shared.
            unsafe {
                libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
            }
        }
    }
}

fn lock_dir(dir: &Path) -> Result<DirLock, JournalError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(JournalError::Locked {
                    dir: dir.to_owned(),
                    lock: path,
                });
            }
            return Err(JournalError::io(&path, err));
        }
    }
    Ok(DirLock(file))
}

#[cfg(test)]
mod tests;

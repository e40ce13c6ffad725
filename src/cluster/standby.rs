//! A standby's side of the journal: the [`Follower`], which copies every
//! record the active node replicates into this node's own local journal,
//! with the same Lsns, so that a standby that takes over opens that journal
//! and replays it like any node restarting.
//!
//! The active node writes its journal records to the events stream on the
//! subject `<prefix>.core` ([`core_subject`]), in this wire format:
//! - one NATS message carries one or more records of consecutive Lsns;
//! - header [`LSN_HEADER`] (`Switchboard-Lsn`): the first record's Lsn, in
//!   decimal; header [`NODE_HEADER`] (`Switchboard-Node`): the writer's id;
//! - the payload: the records framed as in a journal segment (u32 LE length,
//!   u32 LE CRC-32C of the record, the record), back to back;
//! - claim markers (header [`super::CLAIM_HEADER`], empty payload) are not
//!   records, and are skipped.
//!
//! The follower reads the subject from its first message with an ordered
//! consumer (the server pushes messages as they come, with flow control; a
//! consumer lost with a NATS restart is recreated from the next sequence),
//! and appends each record with [`Journal::append`], checking that every
//! message starts at exactly the Lsn expected next, that every record's
//! CRC matches, and that the local journal hands out the same Lsn. Anything
//! else stops it with an error ([`FollowError`]): it never skips a record.
//! Each `AttachmentStored` record's file is fetched from the files bucket
//! ([`super::files`]) and written to `<data_dir>/files/<id>` before the
//! record is appended (a file deleted meanwhile, because it left the active's
//! store, is not there to fetch and is left out, as it would be on the
//! active after a restart).
//!
//! The local journal starts fresh: an existing `<data_dir>/journal` is moved
//! aside to `<data_dir>/journal.previous` first (replacing an older one), so
//! a node that used to be active never replays records of its own that were
//! not replicated. It starts from the newest snapshot the active node
//! uploaded ([`super::snapshots::seed`]) when there is one: the snapshot is
//! written into the fresh journal, the files it names are fetched, and
//! copying starts at the core message holding the record after it (the
//! records of that message up to the snapshot are skipped, being in it).
//! Without a snapshot (a young cluster) it copies from Lsn 1.
//!
//! Taking over: the new active node opens the fenced writer on the core
//! subject, which writes its claim; then [`Follower::finish`] with the
//! claim's stream sequence copies everything before it and closes the local
//! journal flushed; then the broker starts normally on that journal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::files::{Files, FilesError};
use super::snapshots::{self, CoreSubject, SeedError, Snapshots};
use super::{Cluster, ClusterError, CLAIM_HEADER, LSN_HEADER};
use crate::codec::{CodecError, MAX_RECORD};
use crate::journal::record::{self, Record};
use crate::journal::{Journal, JournalConfig, JournalError, Lsn};
use crate::snapshot::{BrokerState, ReplaySettings};

/// How long [`Follower::finish`] waits for the local journal to flush.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait between two attempts to (re)create the consumer or fetch a file
/// while NATS is away.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// How often the follower checks that the consumer still delivers what the
/// stream holds.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Why a follower stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("moving the journal {} aside to {}: {source}", from.display(), to.display())]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The events stream was made without the core subject (by an older
    /// Switchboard): nothing can be replicated through it.
    #[error("stream {stream} does not take {subject} (its subjects: {subjects})")]
    NotInStream {
        stream: String,
        subject: String,
        subjects: String,
    },
    #[error("the local journal: {0}")]
    Journal(#[from] JournalError),
    #[error("the fresh local journal at {} recovered {records} records", dir.display())]
    NotEmpty { dir: PathBuf, records: usize },
    #[error("seeding the local journal: {0}")]
    Seed(#[from] SeedError),
    #[error("the fresh local journal at {} opened at snapshot {found:?}, not at the seed's {seeded:?}", dir.display())]
    Seeded {
        dir: PathBuf,
        seeded: Option<Lsn>,
        found: Option<Lsn>,
    },
    #[error("the snapshot at Lsn {lsn} does not decode: {why}")]
    SeedState { lsn: Lsn, why: String },
    #[error("{subject}: {source}")]
    Nats {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    /// A message on the core subject that is not in the wire format.
    #[error("message {sequence} on the core subject: {what}")]
    Unreadable { sequence: u64, what: String },
    /// A message does not start at the next Lsn: records are missing (or
    /// repeated).
    #[error("message {sequence} on the core subject starts at Lsn {found}, Lsn {expected} was expected next: records are missing or repeated")]
    Gap {
        sequence: u64,
        expected: Lsn,
        found: Lsn,
    },
    /// The records this follower needs next were trimmed from the subject
    /// (it was away, so out of the roster, while the active node wrote two
    /// snapshots): it must start again from a snapshot.
    #[error("the core subject was trimmed past this standby: it needs Lsn {expected} next, the subject starts at Lsn {first}")]
    Behind { expected: Lsn, first: Lsn },
    #[error("message {sequence} on the core subject: the record at Lsn {lsn} fails its checksum")]
    BadCrc { sequence: u64, lsn: Lsn },
    #[error("the record at Lsn {lsn} was appended to the local journal as Lsn {local}")]
    LocalLsn { lsn: Lsn, local: Lsn },
    #[error("the record at Lsn {lsn} does not decode: {source}")]
    Record {
        lsn: Lsn,
        #[source]
        source: CodecError,
    },
    #[error("writing {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the follower's task ended unexpectedly: {0}")]
    Task(String),
}

/// A batch's payload that does not read as framed records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("no records")]
    Empty,
    #[error("record {index} cut short at byte {offset}")]
    Truncated { index: usize, offset: usize },
    #[error("record {index}: length {len} (must be 1 to {max})")]
    Length {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("record {index} fails its checksum")]
    Crc { index: usize },
}

/// How long a follower waits for its local journal to take a record.
const APPEND_PATIENCE: Duration = Duration::from_secs(30);

/// How often, and how far apart, a follower asks where the core subject
/// starts when a message skips records and NATS does not answer: up to
/// 20 × 250 ms, then the skip is taken for a gap.
const LOOKUP_TRIES: u32 = 20;
const LOOKUP_PAUSE: Duration = Duration::from_millis(250);

/// The records of one message's payload, in order, each checked against its
/// CRC-32C.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let index = records.len();
        let Some(head) = payload.get(at..at + 8) else {
            return Err(BatchError::Truncated { index, offset: at });
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_RECORD {
            return Err(BatchError::Length {
                index,
                len,
                max: MAX_RECORD,
            });
        }
        let Some(record) = payload.get(at + 8..at + 8 + len) else {
            return Err(BatchError::Truncated { index, offset: at });
        };
        if crc32c::crc32c(record) != crc {
            return Err(BatchError::Crc { index });
        }
        records.push(record);
        at += 8 + len;
    }
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    Ok(records)
}

/// Whether NATS subject `filter` (tokens `*`: any one, `>`: the rest)
/// takes `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// What the follower's task and its handle share.
struct Progress {
    /// The Lsn of the last record appended to the local journal.
    copied: AtomicU64,
    /// The stream sequence of the last core message handled (copied or
    /// skipped).
    seen: watch::Sender<u64>,
    /// Set when the task stops on an error.
    failed: watch::Sender<Option<String>>,
    /// Set when that error is [`FollowError::Behind`].
    behind: std::sync::atomic::AtomicBool,
}

/// Copies the core subject into the local journal; see the module doc.
pub struct Follower {
    journal: Journal,
    progress: Arc<Progress>,
    events: stream::Stream,
    subject: String,
    /// Stop at the first message at or after this sequence.
    limit: watch::Sender<Option<u64>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), FollowError>>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Follower {
    /// Move the journal directory `journal.dir` (`<data_dir>/journal`)
    /// aside to `<dir>.previous` if it exists (replacing an older one),
    /// open a fresh journal there, and start copying the core subject into
    /// it from the first message, in a task on the current runtime. Files
    /// go to `files/` beside the journal directory (`<data_dir>/files`).
    ///
    /// The journal is seeded from the newest usable snapshot in the
    /// cluster's bucket, if any (see the module doc); `replay` decodes it,
    /// for the files it names.
    pub async fn start(
        cluster: &Cluster,
        journal: JournalConfig,
        replay: &ReplaySettings,
    ) -> Result<Follower, FollowError> {
        let settings = cluster.settings();
        let subject = settings.core_subject();
        let files = Files::open(cluster).await?;
        let snapshots = Snapshots::open(cluster).await?;
        let stream_name = settings.events_stream();
        let events = cluster
            .jetstream()
            .get_stream(&stream_name)
            .await
            .map_err(|e| FollowError::Nats {
                subject: subject.clone(),
                source: e.into(),
            })?;
        let subjects = &events.cached_info().config.subjects;
        if !subjects
            .iter()
            .any(|filter| subject_matches(filter, &subject))
        {
            return Err(FollowError::NotInStream {
                stream: stream_name,
                subject,
                subjects: subjects.join(", "),
            });
        }
        let files_dir = journal
            .dir
            .parent()
            .map_or_else(|| PathBuf::from("files"), |d| d.join("files"));
        let core = CoreSubject::new(events.clone(), subject.clone());
        let seed = snapshots::seed(&snapshots, &core).await?;
        let (seeded, from_sequence) = seed.as_ref().map_or((0, 1), |s| (s.lsn, s.from_sequence));
        let dir = journal.dir.clone();
        let replay = *replay;
        let (journal, recovered, seed_files) = tokio::task::spawn_blocking(move || {
            move_aside(&journal.dir)?;
            let mut seed_files = Vec::new();
            if let Some(seed) = seed {
                let state = BrokerState::decode(&seed.payload, &replay).map_err(|e| {
                    FollowError::SeedState {
                        lsn: seed.lsn,
                        why: e.to_string(),
                    }
                })?;
                seed_files = state.attachments.into_keys().collect();
                std::fs::create_dir_all(&journal.dir).map_err(|source| FollowError::File {
                    path: journal.dir.clone(),
                    source,
                })?;
                crate::journal::snapshot::write(&journal.dir, seed.lsn, &seed.payload)?;
            }
            let (journal, recovered) = Journal::open(journal)?;
            Ok::<_, FollowError>((journal, recovered, seed_files))
        })
        .await
        .map_err(|e| FollowError::Task(e.to_string()))??;
        if !recovered.records.is_empty() {
            return Err(FollowError::NotEmpty {
                dir,
                records: recovered.records.len(),
            });
        }
        let found = recovered.snapshot.as_ref().map(|(lsn, _)| *lsn);
        let want = (seeded > 0).then_some(seeded);
        if found != want {
            return Err(FollowError::Seeded {
                dir,
                seeded: want,
                found,
            });
        }
        if seeded > 0 {
            tracing::info!(
                snapshot = seeded,
                from_sequence,
                files = seed_files.len(),
                "cluster: the standby's journal starts from the active node's snapshot"
            );
        }
        let progress = Arc::new(Progress {
            copied: AtomicU64::new(seeded),
            seen: watch::channel(from_sequence - 1).0,
            failed: watch::channel(None).0,
            behind: std::sync::atomic::AtomicBool::new(false),
        });
        let (limit, limit_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let copier = Copier {
            journal: journal.clone(),
            files,
            files_dir,
            core,
            events: events.clone(),
            subject: subject.clone(),
            next_lsn: seeded + 1,
            seeded,
            seed_files,
            seen: from_sequence - 1,
            progress: progress.clone(),
        };
        let shared = progress.clone();
        let task = tokio::spawn(async move {
            let result = copier.run(stop_rx, limit_rx).await;
            if let Err(e) = &result {
                if matches!(e, FollowError::Behind { .. }) {
                    shared.behind.store(true, Ordering::Release);
                    tracing::warn!(error = %e, "cluster: the standby fell behind the trimmed journal");
                } else {
                    tracing::error!(error = %e, "cluster: the standby stopped following the active node's journal");
                }
                shared.failed.send_replace(Some(e.to_string()));
            }
            result
        });
        tracing::info!(subject = %subject, "cluster: standby following the active node's journal");
        Ok(Follower {
            journal,
            progress,
            events,
            subject,
            limit,
            stop,
            task: Some(task),
        })
    }

    /// The local journal the records are copied into (for its compactor:
    /// a standby keeps snapshots as it follows, so taking over replays
    /// only the records after the newest).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The Lsn of the last record copied into the local journal (0: none).
    pub fn copied(&self) -> Lsn {
        self.progress.copied.load(Ordering::Acquire)
    }

    /// The stream sequence of the last core message handled.
    pub fn seen(&self) -> u64 {
        *self.progress.seen.borrow()
    }

    /// Resolves if the follower stops on its own, which is always an error
    /// (a gap, a bad CRC, an unreadable message, the local journal failing),
    /// with its message; [`Follower::finish`] then returns the error itself.
    pub async fn failed(&self) -> String {
        let mut failed = self.progress.failed.subscribe();
        loop {
            if let Some(why) = failed.borrow_and_update().clone() {
                return why;
            }
            if failed.changed().await.is_err() {
                return "the follower is gone".to_owned();
            }
        }
    }

    /// Whether the follower stopped because the records it needs were
    /// trimmed ([`FollowError::Behind`]): [`Follower::close`] it and start a
    /// new one, which seeds from the newest snapshot.
    pub fn fell_behind(&self) -> bool {
        self.progress.behind.load(Ordering::Acquire)
    }

    /// Stop copying and close the local journal (flushed), for a follower
    /// that is given up.
    pub async fn close(mut self) -> Result<(), FollowError> {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // Its error is already known (`failed`); only the stop matters.
            let _ = task.await;
        }
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.close(CLOSE_TIMEOUT))
            .await
            .map_err(|e| FollowError::Task(e.to_string()))??;
        Ok(())
    }

    /// Copy every core message with a stream sequence below
    /// `upto_stream_seq` (the new active node's claim: its writer's last
    /// sequence once opened), stop, and close the local journal flushed;
    /// `Journal::open` on the directory then recovers exactly those records.
    /// Returns the last Lsn copied. Waits as long as the messages take to
    /// arrive; an error the follower stopped on is returned (the journal is
    /// closed all the same).
    pub async fn finish(mut self, upto_stream_seq: u64) -> Result<Lsn, FollowError> {
        self.limit.send_replace(Some(upto_stream_seq));
        let Some(mut task) = self.task.take() else {
            return Err(FollowError::Task("finished twice".to_owned()));
        };
        let mut seen = self.progress.seen.subscribe();
        let ended = loop {
            let last = *seen.borrow_and_update();
            if last.saturating_add(1) >= upto_stream_seq
                || self.nothing_between(last, upto_stream_seq).await
            {
                break None;
            }
            tokio::select! {
                _ = seen.changed() => {}
                result = &mut task => break Some(result),
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
        };
        let result = match ended {
            Some(result) => result,
            None => {
                self.stop.send_replace(true);
                (&mut task).await
            }
        };
        let result = result
            .map_err(|e| FollowError::Task(e.to_string()))
            .and_then(|r| r);
        let journal = self.journal.clone();
        let closed = tokio::task::spawn_blocking(move || journal.close(CLOSE_TIMEOUT))
            .await
            .map_err(|e| FollowError::Task(e.to_string()))?;
        result?;
        closed?;
        let copied = self.copied();
        tracing::info!(
            copied,
            upto_stream_seq,
            "cluster: standby caught up and closed its journal"
        );
        Ok(copied)
    }

    /// Whether the core subject has no message after `last` and below
    /// `upto` (so everything below `upto` is handled). An unanswered read
    /// says no: the caller waits and asks again.
    async fn nothing_between(&self, last: u64, upto: u64) -> bool {
        let next = tokio::time::timeout(
            RETRY_EVERY * 4,
            self.events
                .direct_get_next_for_subject(self.subject.as_str(), Some(last + 1)),
        )
        .await;
        match next {
            Ok(Ok(m)) => m.sequence >= upto,
            Ok(Err(e)) => matches!(e.kind(), DirectGetErrorKind::NotFound),
            Err(_) => false,
        }
    }
}

/// Move `dir` aside to `<dir>.previous` (removing an older one), if it
/// exists, and sync the parent so the move survives a crash.
fn move_aside(dir: &Path) -> Result<(), FollowError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    let previous = dir.with_file_name(name);
    let err = |source| FollowError::MoveAside {
        from: dir.to_owned(),
        to: previous.clone(),
        source,
    };
    if previous.exists() {
        std::fs::remove_dir_all(&previous).map_err(err)?;
    }
    std::fs::rename(dir, &previous).map_err(err)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    tracing::warn!(
        journal = %dir.display(),
        previous = %previous.display(),
        "cluster: this node starts as a standby; its old journal was moved aside (the active node's replicated journal is copied instead)"
    );
    Ok(())
}

/// The follower's task.
struct Copier {
    journal: Journal,
    files: Files,
    files_dir: PathBuf,
    core: CoreSubject,
    events: stream::Stream,
    subject: String,
    /// The Lsn the next record must have.
    next_lsn: Lsn,
    /// The snapshot the journal was seeded from (0: none): records up to it
    /// are in it, and skipped in the first message.
    seeded: Lsn,
    /// The files the seed snapshot names, fetched before anything is
    /// copied.
    seed_files: Vec<String>,
    /// The stream sequence of the last message handled.
    seen: u64,
    progress: Arc<Progress>,
}

impl Copier {
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        limit: watch::Receiver<Option<u64>>,
    ) -> Result<(), FollowError> {
        for id in std::mem::take(&mut self.seed_files) {
            self.copy_file(self.seen, &id).await?;
        }
        loop {
            let messages = self
                .events
                .create_consumer(OrderedConfig {
                    filter_subject: self.subject.clone(),
                    deliver_policy: if self.seen == 0 {
                        DeliverPolicy::All
                    } else {
                        DeliverPolicy::ByStartSequence {
                            start_sequence: self.seen + 1,
                        }
                    },
                    ..Default::default()
                })
                .await;
            let messages = match messages {
                Ok(consumer) => consumer.messages().await.map_err(async_nats::Error::from),
                Err(e) => Err(e.into()),
            };
            match messages {
                Ok(mut messages) => {
                    let mut check = tokio::time::interval(STALL_CHECK);
                    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    // A message known to be there, not yet delivered.
                    let mut waiting_for: Option<u64> = None;
                    loop {
                        let next = tokio::select! {
                            biased;
                            changed = stop.changed() => {
                                if changed.is_err() || *stop.borrow() {
                                    return Ok(());
                                }
                                continue;
                            }
                            next = messages.next() => next,
                            _ = check.tick() => {
                                // A consumer that lost its server (a NATS
                                // restart) notices only after missing two idle
                                // heartbeats; a message that stays undelivered
                                // for a whole check means a new one is needed.
                                if waiting_for.is_some_and(|seq| seq > self.seen) {
                                    tracing::warn!(seen = self.seen, "cluster: following the core subject: delivery stalled; resubscribing");
                                    break;
                                }
                                waiting_for = self.next_after(self.seen).await;
                                continue;
                            }
                        };
                        let message = match next {
                            Some(Ok(m)) => m,
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "cluster: following the core subject: reading failed; resubscribing");
                                break;
                            }
                            None => {
                                tracing::warn!("cluster: following the core subject: the consumer ended; resubscribing");
                                break;
                            }
                        };
                        let sequence = message
                            .info()
                            .map_err(|e| FollowError::Unreadable {
                                sequence: self.seen + 1,
                                what: format!("no stream sequence: {e}"),
                            })?
                            .stream_sequence;
                        if sequence <= self.seen {
                            continue; // delivered again after a resubscription
                        }
                        if limit.borrow().is_some_and(|l| sequence >= l) {
                            return Ok(());
                        }
                        self.copy(sequence, &message.message).await?;
                        self.seen = sequence;
                        self.progress.seen.send_replace(sequence);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: following the core subject: subscribing failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
    }

    /// The sequence of the first core message after `seen`, if there is
    /// one (and the server answers within the check interval).
    async fn next_after(&self, seen: u64) -> Option<u64> {
        let next = tokio::time::timeout(
            STALL_CHECK,
            self.events
                .direct_get_next_for_subject(self.subject.as_str(), Some(seen + 1)),
        )
        .await;
        match next {
            Ok(Ok(m)) => Some(m.sequence),
            _ => None,
        }
    }

    /// Copy one message's records (or skip a claim marker).
    async fn copy(
        &mut self,
        sequence: u64,
        message: &async_nats::Message,
    ) -> Result<(), FollowError> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        if header(CLAIM_HEADER).is_some() {
            return Ok(());
        }
        let unreadable = |what: String| FollowError::Unreadable { sequence, what };
        let first: Lsn = header(LSN_HEADER)
            .ok_or_else(|| unreadable(format!("no {LSN_HEADER} header")))?
            .trim()
            .parse()
            .map_err(|e| unreadable(format!("{LSN_HEADER}: {e}")))?;
        // The first message after a seed may start before it: its records
        // up to the seed are in the snapshot. Anywhere else, a message must
        // start exactly at the next Lsn.
        let after_seed =
            self.seeded > 0 && self.next_lsn == self.seeded + 1 && first <= self.next_lsn;
        if first > self.next_lsn {
            // Missing records: trimmed away (this follower was left
            // behind), or a real gap. Which one is asked of NATS, again for
            // a while if it does not answer (a blip must not make a
            // follower that can start again from a snapshot stop for good).
            let mut tries = 0;
            let start = loop {
                match self.core.next_records(1).await {
                    Ok(start) => break start,
                    Err(e) if tries < LOOKUP_TRIES => {
                        tries += 1;
                        tracing::warn!(error = %e, "cluster: following the core subject: where it starts is unknown; asking again");
                        tokio::time::sleep(LOOKUP_PAUSE).await;
                    }
                    Err(_) => break None,
                }
            };
            if let Some(start) = start {
                if start.first_lsn > self.next_lsn {
                    return Err(FollowError::Behind {
                        expected: self.next_lsn,
                        first: start.first_lsn,
                    });
                }
            }
        }
        if first != self.next_lsn && !after_seed {
            return Err(FollowError::Gap {
                sequence,
                expected: self.next_lsn,
                found: first,
            });
        }
        let records = decode_batch(&message.payload).map_err(|e| match e {
            BatchError::Crc { index } => FollowError::BadCrc {
                sequence,
                lsn: first + index as u64,
            },
            other => unreadable(other.to_string()),
        })?;
        for (i, bytes) in records.into_iter().enumerate() {
            let lsn = first + i as u64;
            if lsn <= self.seeded {
                continue;
            }
            let record =
                record::read(bytes).map_err(|source| FollowError::Record { lsn, source })?;
            if let Record::AttachmentStored { meta, .. } = &record {
                if !meta.id.is_empty() {
                    self.copy_file(sequence, &meta.id).await?;
                }
            }
            let local = self.append(bytes).await?;
            if local != lsn {
                return Err(FollowError::LocalLsn { lsn, local });
            }
            self.next_lsn = lsn + 1;
            self.progress.copied.store(lsn, Ordering::Release);
        }
        Ok(())
    }

    /// Append to the local journal, waiting while its queue is full, for at
    /// most [`APPEND_PATIENCE`]: a journal that takes nothing for that long
    /// (a full or failing disk) makes this node unfit to take over, and the
    /// follower stops rather than keep the node in the race for the lease
    /// (won, it would claim the subject and then wait for ever to copy the
    /// rest, holding the lease).
    async fn append(&self, bytes: &[u8]) -> Result<Lsn, FollowError> {
        let since = tokio::time::Instant::now();
        let mut waited = 0u32;
        loop {
            match self.journal.append(bytes) {
                Ok(lsn) => return Ok(lsn),
                Err(JournalError::Unavailable { reason }) if since.elapsed() < APPEND_PATIENCE => {
                    // The record was not taken: no Lsn used; try again once
                    // the writer has caught up (or the disk works again).
                    waited += 1;
                    if waited.is_multiple_of(1000) {
                        tracing::warn!(%reason, "cluster: the standby's journal does not take records");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Fetch file `id` and write it to `<data_dir>/files/<id>`, synced.
    /// A file no longer in the bucket left the active's store: nothing to
    /// copy. NATS errors are retried (the follower cannot go on without
    /// it).
    async fn copy_file(&self, sequence: u64, id: &str) -> Result<(), FollowError> {
        if id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(FollowError::Unreadable {
                sequence,
                what: format!("file id {id:?} is not a file name"),
            });
        }
        let bytes = loop {
            match self.files.get(id).await {
                Ok(found) => break found,
                Err(e @ (FilesError::Nats { .. } | FilesError::TimedOut { .. })) => {
                    tracing::warn!(error = %e, "cluster: fetching a replicated file failed; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
            }
        };
        let Some(bytes) = bytes else {
            tracing::debug!(file = %id, "cluster: a replicated file was deleted before the standby fetched it");
            return Ok(());
        };
        let (dir, path) = (self.files_dir.clone(), self.files_dir.join(id));
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_synced(&dir, &target, &bytes))
            .await
            .map_err(|e| FollowError::Task(e.to_string()))?
            .map_err(|source| FollowError::File { path, source })
    }
}

/// Write `bytes` to `path` (in `dir`, created if missing) through a
/// temporary file, synced, then renamed into place.
fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(buf: &mut Vec<u8>, record: &[u8]) {
        buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
        buf.extend_from_slice(record);
    }

    #[test]
    fn subjects_match_as_nats_matches_them() {
        assert!(subject_matches("sb.core", "sb.core"));
        assert!(subject_matches("sb.*", "sb.core"));
        assert!(subject_matches("sb.>", "sb.core"));
        assert!(subject_matches(">", "sb.core"));
        assert!(!subject_matches("sb.p.*", "sb.core"));
        assert!(!subject_matches("sb", "sb.core"));
        assert!(!subject_matches("sb.core.x", "sb.core"));
        assert!(!subject_matches("sb.core.>", "sb.core"));
        assert!(!subject_matches("other.core", "sb.core"));
    }

    #[test]
    fn a_batch_reads_back_record_by_record() {
        let mut buf = Vec::new();
        frame(&mut buf, b"one");
        frame(&mut buf, b"second record");
        frame(&mut buf, &[7u8; 1000]);
        let records = decode_batch(&buf).expect("decodes");
        assert_eq!(records, [&b"one"[..], b"second record", &[7u8; 1000]]);
    }

    #[test]
    fn a_bad_batch_is_refused_saying_where() {
        assert_eq!(decode_batch(&[]), Err(BatchError::Empty));
        let mut buf = Vec::new();
        frame(&mut buf, b"one");
        frame(&mut buf, b"two");
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode_batch(&flipped), Err(BatchError::Crc { index: 1 }));
        assert_eq!(
            decode_batch(&buf[..buf.len() - 1]),
            Err(BatchError::Truncated {
                index: 1,
                offset: 11
            })
        );
        assert_eq!(
            decode_batch(&buf[..13]),
            Err(BatchError::Truncated {
                index: 1,
                offset: 11
            })
        );
        let mut zero = buf.clone();
        zero.extend_from_slice(&[0u8; 8]);
        assert_eq!(
            decode_batch(&zero),
            Err(BatchError::Length {
                index: 2,
                len: 0,
                max: MAX_RECORD
            })
        );
    }
}

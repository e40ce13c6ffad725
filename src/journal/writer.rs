//! The writer thread: the only code that writes segment files.
//!
//! Group commit: each round takes everything queued since the last one,
//! writes it with one `write_all` per segment it lands in, then syncs as the
//! policy says (`Always`: now, one fsync for the whole batch; `Batch`: when
//! `max_delay` has passed since the last fsync; `Never`: not at all) and
//! publishes the durable Lsn. It is an OS thread of its own, not a tokio
//! blocking task: it lives as long as the journal and spends its time in
//! `write` and `fsync`, which must never stall an executor.
//!
//! Under `Batch` the writer sleeps until the next fsync is due and then
//! takes, writes and fsyncs everything queued in one round; appends made
//! meanwhile do not wake it (only an idle writer, or a queue past half its
//! byte budget, is woken). Writing each append as it came would not make
//! anything durable sooner, and costs a wake-up of this thread, a context
//! switch and a `write` per burst of appends, on the core the actors run
//! on (`docs/performance.md`, Durability figures).
//!
//! A write or fsync error (ENOSPC, EIO) does not lose or half-write
//! anything: the records stay in memory, the segment is truncated back to
//! its last good offset (after a failed fsync, to the last fsynced one: the
//! kernel may have dropped the pages it could not write, so they are written
//! again), `health()` turns `Unavailable` so no new append is accepted, and
//! the writer retries with a backoff from 100 ms to 1 s until it works.
//!
//! A replicated journal's writer hands every chunk it writes to the
//! replication feed right after the `write` (before its fsync: the two run
//! side by side), once per record even when a failed fsync makes it write
//! records again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::segment::{encode_header, segment_name};
use super::{sync_dir, Faults, Fsync, Lsn, Shared};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Framed records in Lsn order, and each one's frame length.
#[derive(Default)]
pub(super) struct Batch {
    pub buf: Vec<u8>,
    pub frames: Vec<u32>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Move everything of `from` to the end of `self`.
    pub fn take_all(&mut self, from: &mut Batch) {
        if self.is_empty() {
            std::mem::swap(self, from);
        } else {
            self.buf.append(&mut from.buf);
            self.frames.append(&mut from.frames);
        }
    }

    /// Move the first `n` records (`bytes` bytes) to the end of `to`.
    fn move_front(&mut self, n: usize, bytes: usize, to: &mut Batch) {
        if n == self.frames.len() {
            to.take_all(self);
        } else {
            to.buf.extend_from_slice(&self.buf[..bytes]);
            to.frames.extend_from_slice(&self.frames[..n]);
            self.buf.drain(..bytes);
            self.frames.drain(..n);
        }
    }
}

/// The segment being appended to.
pub(super) struct Segment {
    pub file: File,
    pub path: PathBuf,
    pub first: Lsn,
    pub records: u64,
    /// Bytes known written (header included): where the next record goes.
    pub len: u64,
    /// Bytes known fsynced.
    pub synced_len: u64,
}

impl Segment {
    /// A new, empty segment starting at `first`: header written to a temp
    /// file, fsynced, renamed, directory fsynced, so a segment file never
    /// exists with a torn header.
    pub fn create(dir: &Path, first: Lsn) -> std::io::Result<Segment> {
        let path = dir.join(segment_name(first));
        let tmp = dir.join(format!("{}.tmp", segment_name(first)));
        let header = encode_header(first);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&header)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir).map_err(std::io::Error::other)?;
        let len = header.len() as u64;
        Ok(Segment {
            file: OpenOptions::new().append(true).open(&path)?,
            path,
            first,
            records: 0,
            len,
            synced_len: len,
        })
    }

    /// The segment recovery found last, `len` good bytes holding `records`
    /// records; fsynced (what a crashed process left in the page cache is
    /// made durable before anything new is acknowledged).
    pub fn reopen(path: PathBuf, first: Lsn, records: u64, len: u64) -> std::io::Result<Segment> {
        let file = OpenOptions::new().append(true).open(&path)?;
        file.sync_all()?;
        Ok(Segment {
            file,
            path,
            first,
            records,
            len,
            synced_len: len,
        })
    }
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    pub fsync: Fsync,
    pub segment_bytes: u64,
    /// The queue's byte budget (`JournalConfig::queue_bytes`).
    pub queue_bytes: usize,
    pub faults: Faults,
    pub seg: Segment,
    /// Held for the writer's life: the directory's exclusive lock.
    pub _lock: super::DirLock,
    /// Highest Lsn written to the file (not necessarily fsynced).
    pub written: Lsn,
    /// Taken from the queue, not yet written.
    pub pending: Batch,
    /// Written to `seg` since its last fsync (`Always`/`Batch` only): kept to
    /// be written again if that fsync fails.
    pub unsynced: Batch,
    /// When the last good fsync of records started (`Batch` spaces their
    /// starts at least `max_delay` apart).
    pub last_sync: Option<Instant>,
    /// The file may hold bytes past `seg.len` from a failed write.
    pub needs_truncate: bool,
}

impl Writer {
    pub fn run(mut self) {
        // While failing: when to try again, and the delay used.
        let mut retry: Option<(Instant, Duration)> = None;
        loop {
            let Some(closing) = self.wait_for_work(retry.map(|(at, _)| at)) else {
                tracing::error!(
                    written = self.written,
                    appended = self.shared.appended.load(Ordering::Acquire),
                    "journal writer gave up at close: records not written are lost \
                     (none of them was acknowledged)"
                );
                return;
            };
            match self.flush(closing) {
                Ok(()) => {
                    if retry.take().is_some() {
                        self.set_failing(None);
                        tracing::info!(
                            durable = self.shared.durable.load(Ordering::Acquire),
                            "journal writes work again; appends accepted"
                        );
                    }
                    if closing {
                        return;
                    }
                }
                Err(e) => {
                    let delay = retry.map_or(RETRY_MIN, |(_, d)| (d * 2).min(RETRY_MAX));
                    let reason = format!("journal write failed: {e}");
                    // Refusing before saying so: the log line means it.
                    self.set_failing(Some(reason));
                    if retry.is_none() {
                        tracing::error!(
                            segment = %self.seg.path.display(),
                            error = %e,
                            "journal write failed; appends refused until it works \
                             again (retrying)"
                        );
                    }
                    retry = Some((Instant::now() + delay, delay));
                }
            }
        }
    }

    /// Wait until there is something to do, then take the queue. Returns
    /// whether the journal is closing, or None when the writer must stop now
    /// (a close that timed out).
    fn wait_for_work(&mut self, retry_at: Option<Instant>) -> Option<bool> {
        let mut q = self.shared.queue.lock();
        loop {
            if q.abandon {
                return None;
            }
            if let Some(at) = retry_at {
                if Instant::now() >= at {
                    break;
                }
                self.shared.work.wait_until(&mut q, at);
                continue;
            }
            if q.closing {
                break;
            }
            match self.sync_deadline(!q.batch.is_empty()) {
                Some(at) if Instant::now() >= at => break,
                // A queue past half its budget is written now (fsynced when
                // due), so appends are not refused while the writer sleeps.
                Some(_) if !q.batch.is_empty() && q.batch.buf.len() >= self.queue_bytes / 2 => {
                    break
                }
                Some(at) => {
                    q.sleeping_until_sync = true;
                    self.shared.work.wait_until(&mut q, at);
                    q.sleeping_until_sync = false;
                }
                None if !q.batch.is_empty() => break,
                None => self.shared.work.wait(&mut q),
            }
        }
        self.pending.take_all(&mut q.batch);
        Some(q.closing)
    }

    /// Under `Batch`, when the records written but not fsynced, and those
    /// queued (`queued`), are to be written and fsynced: `max_delay` after
    /// the last fsync started, or now if it was longer ago.
    fn sync_deadline(&self, queued: bool) -> Option<Instant> {
        match self.fsync {
            Fsync::Batch { max_delay } if queued || !self.unsynced.is_empty() => {
                Some(self.last_sync.map_or_else(Instant::now, |t| t + max_delay))
            }
            _ => None,
        }
    }

    fn flush(&mut self, closing: bool) -> std::io::Result<()> {
        if self.needs_truncate {
            self.seg.file.set_len(self.seg.len)?;
            self.needs_truncate = false;
        }
        self.write_pending()?;
        let sync_now = closing
            || match self.fsync {
                Fsync::Always => true,
                Fsync::Batch { max_delay } => {
                    self.last_sync.is_none_or(|t| t.elapsed() >= max_delay)
                }
                Fsync::Never => false,
            };
        if sync_now {
            self.sync()?;
        }
        Ok(())
    }

    /// Write every pending record, rotating to a new segment when the next
    /// one would take the current past `segment_bytes` (a segment always
    /// takes at least one record, however large).
    fn write_pending(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            let mut n = 0;
            let mut bytes = 0usize;
            for &frame in &self.pending.frames {
                let fits = self.seg.len + (bytes + frame as usize) as u64 <= self.segment_bytes;
                if !fits && self.seg.records + n as u64 > 0 {
                    break;
                }
                n += 1;
                bytes += frame as usize;
            }
            if n == 0 {
                self.rotate()?;
                continue;
            }
            if let Err(e) = self
                .faults
                .write_all(&mut self.seg.file, &self.pending.buf[..bytes])
            {
                self.needs_truncate = true;
                return Err(e);
            }
            // Replicated: hand what was just written to the replicator.
            self.shared.ship(
                self.written + 1,
                &self.pending.frames[..n],
                &self.pending.buf[..bytes],
            );
            self.seg.len += bytes as u64;
            self.seg.records += n as u64;
            self.written += n as u64;
            self.shared.written.store(self.written, Ordering::Release);
            if self.fsync == Fsync::Never {
                // Written is durable under this policy; nothing kept.
                self.seg.synced_len = self.seg.len;
                let mut done = Batch::default();
                self.pending.move_front(n, bytes, &mut done);
                self.publish(self.written);
            } else {
                self.pending.move_front(n, bytes, &mut self.unsynced);
            }
        }
        Ok(())
    }

    /// fsync the current segment and publish what it made durable. On
    /// failure the unsynced records go back in front of the pending ones,
    /// to be written again after the file is truncated to its last fsynced
    /// length.
    fn sync(&mut self) -> std::io::Result<()> {
        if self.fsync == Fsync::Never {
            // Only at close and rotation; nothing kept to write again.
            return self.faults.sync_data(&self.seg.file);
        }
        if self.unsynced.is_empty() {
            return Ok(());
        }
        // Measured from the start of an fsync: on a disk whose fsync takes
        // longer than `max_delay`, the next one is due as soon as this one
        // ends (`Batch` is then `Always`), instead of idling `max_delay` more.
        let started = Instant::now();
        if let Err(e) = self.faults.sync_data(&self.seg.file) {
            let n = self.unsynced.frames.len() as u64;
            self.seg.len = self.seg.synced_len;
            self.seg.records -= n;
            self.written -= n;
            self.shared.written.store(self.written, Ordering::Release);
            let mut back = std::mem::take(&mut self.unsynced);
            back.take_all(&mut self.pending);
            self.pending = back;
            self.needs_truncate = true;
            return Err(e);
        }
        self.seg.synced_len = self.seg.len;
        self.unsynced.buf.clear();
        self.unsynced.frames.clear();
        self.last_sync = Some(started);
        self.publish(self.written);
        Ok(())
    }

    /// Close the current segment (fsynced) and start the next.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let next = Segment::create(&self.dir, self.seg.first + self.seg.records)?;
        tracing::debug!(segment = %next.path.display(), "journal segment started");
        self.seg = next;
        Ok(())
    }

    /// Records up to `lsn` are written under the fsync policy: durable now,
    /// or (replicated) once also replicated.
    fn publish(&self, lsn: Lsn) {
        self.shared.synced.store(lsn, Ordering::Release);
        self.shared.advance();
    }

    fn set_failing(&self, reason: Option<String>) {
        self.shared.set_failing(reason);
        let _guard = self.shared.flushed.lock();
        self.shared.flushed_cv.notify_all();
    }
}

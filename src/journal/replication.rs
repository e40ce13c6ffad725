//! The replication gate: with [`JournalConfig::replicated`](super::JournalConfig)
//! a record is durable only once it is written under the fsync policy **and**
//! a replicator has said it is stored elsewhere ([`Journal::mark_replicated`]).
//!
//! The writer thread hands every batch it writes to a segment (its first Lsn
//! and the framed bytes, exactly as written) to a feed, whether or not a
//! replicator has attached yet: records appended before the replicator takes
//! the feed ([`Journal::replication_feed`]) are waiting in it. The feed is
//! not bounded on its own: the bytes handed to it and not yet marked
//! replicated count against the journal's `queue_bytes` budget together with
//! the records waiting for the disk, so when replication falls behind (NATS
//! slow or away) `append` answers `Unavailable` exactly as with a slow disk,
//! and the writer never waits for the replicator.
//!
//! [`Journal::fail`] ends it for good: appends and `health()` answer
//! `Unavailable` with the reason, and nothing becomes durable any more (a
//! replicator fenced off by another writer calls it: the records it could not
//! store elsewhere must never be acknowledged).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::{Journal, JournalError, Lsn, Shared};

/// Records of consecutive Lsns as the writer wrote them to a segment: each
/// framed like `segment::encode_frame` (u32 LE length, u32 LE CRC-32C of the
/// payload, the payload), back to back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedBatch {
    /// The first record's Lsn.
    pub first: Lsn,
    /// Each record's frame length (8 bytes of frame header + payload), in order.
    pub frames: Vec<u32>,
    /// The framed records.
    pub bytes: Bytes,
}

impl FeedBatch {
    /// The last record's Lsn.
    pub fn last(&self) -> Lsn {
        self.first + self.frames.len() as u64 - 1
    }
}

/// The feed's state, under its own lock (never taken with another).
#[derive(Default)]
pub(super) struct Feed {
    /// Handed over by the writer, not yet taken by the replicator.
    batches: VecDeque<FeedBatch>,
    /// The frame length of every record handed over and not yet
    /// replicated, up to `shipped`: what `unreplicated` counts.
    outstanding: VecDeque<u32>,
    /// The highest Lsn handed over.
    pub shipped: Lsn,
}

impl Feed {
    pub fn new(shipped: Lsn) -> Feed {
        Feed {
            shipped,
            ..Feed::default()
        }
    }
}

impl Shared {
    /// Writer thread: `frames` (starting at Lsn `first`, bytes `buf`) were
    /// just written to the segment. Hands over the part not handed over
    /// before (records written again after a failed fsync were already).
    pub(super) fn ship(&self, first: Lsn, frames: &[u32], buf: &[u8]) {
        if !self.replicated_mode || frames.is_empty() {
            return;
        }
        let last = first + frames.len() as u64 - 1;
        let mut feed = self.feed.lock();
        if last <= feed.shipped {
            return;
        }
        let skip = (feed.shipped + 1).saturating_sub(first) as usize;
        let offset: usize = frames[..skip].iter().map(|&f| f as usize).sum();
        let batch = FeedBatch {
            first: first + skip as u64,
            frames: frames[skip..].to_vec(),
            bytes: Bytes::copy_from_slice(&buf[offset..]),
        };
        let len = batch.bytes.len();
        feed.outstanding.extend(&batch.frames);
        feed.batches.push_back(batch);
        feed.shipped = last;
        self.unreplicated.fetch_add(len, Ordering::AcqRel);
        drop(feed);
        self.feed_notify.notify_one();
    }

    /// Records up to `lsn` are stored by the replica.
    pub(super) fn mark_replicated(&self, lsn: Lsn) -> Result<(), JournalError> {
        if !self.replicated_mode {
            return Err(JournalError::Config(
                "mark_replicated on a journal that is not replicated".into(),
            ));
        }
        let freed: usize = {
            let mut feed = self.feed.lock();
            if lsn > feed.shipped {
                return Err(JournalError::NotAppended {
                    lsn,
                    appended: feed.shipped,
                });
            }
            let first_outstanding = feed.shipped + 1 - feed.outstanding.len() as u64;
            let n = (lsn + 1).saturating_sub(first_outstanding) as usize;
            feed.outstanding.drain(..n).map(|f| f as usize).sum()
        };
        if freed > 0 {
            self.unreplicated.fetch_sub(freed, Ordering::AcqRel);
        }
        self.replicated.fetch_max(lsn, Ordering::AcqRel);
        self.advance();
        self.finish_if_done();
        Ok(())
    }
}

/// The replicator's end of the feed: taken once per journal with
/// [`Journal::replication_feed`]. It does not keep the journal open.
pub struct ReplicationFeed {
    shared: Arc<Shared>,
}

impl ReplicationFeed {
    /// Every batch waiting, in Lsn order; waits until there is at least
    /// one. None once nothing more will come: the writer has stopped (a
    /// close, or the last handle dropped) and everything was taken, or the
    /// journal was closed or failed for good.
    pub async fn recv(&self) -> Option<Vec<FeedBatch>> {
        loop {
            let notified = self.shared.feed_notify.notified();
            let taken = self.try_recv();
            if !taken.is_empty() {
                return Some(taken);
            }
            if self.is_finished() || self.shared.writer_done.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// Every batch waiting now (maybe none), in Lsn order.
    pub fn try_recv(&self) -> Vec<FeedBatch> {
        self.shared.feed.lock().batches.drain(..).collect()
    }

    /// Records up to `lsn` are stored by the replica: see
    /// [`Journal::mark_replicated`].
    pub fn mark_replicated(&self, lsn: Lsn) -> Result<(), JournalError> {
        self.shared.mark_replicated(lsn)
    }

    /// See [`Journal::fail`].
    pub fn fail(&self, reason: &str) {
        self.shared.fail(reason);
    }

    /// The highest Lsn marked replicated (at open: the last record found).
    pub fn replicated(&self) -> Lsn {
        self.shared.replicated.load(Ordering::Acquire)
    }

    /// Nothing can become durable any more (the journal was closed, or
    /// failed): a replicator retrying a write can stop.
    pub fn is_finished(&self) -> bool {
        self.shared.finished.load(Ordering::Acquire)
    }

    /// The figures of [`Journal::replication_figures`].
    pub fn figures(&self) -> ReplicationFigures {
        self.shared.figures()
    }
}

/// Where replication stands, for an admin view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationFigures {
    /// The highest Lsn handed out.
    pub appended: Lsn,
    /// The highest Lsn marked replicated.
    pub replicated: Lsn,
    /// The highest Lsn durable (written locally under the fsync policy and
    /// replicated).
    pub durable: Lsn,
    /// Records appended and not yet replicated (`appended - replicated`).
    pub lag: u64,
    /// Bytes handed to the replicator and not yet replicated (they count
    /// against `queue_bytes`).
    pub unreplicated_bytes: usize,
}

impl Shared {
    pub(super) fn figures(&self) -> ReplicationFigures {
        let replicated = self.replicated.load(Ordering::Acquire);
        let appended = self.appended.load(Ordering::Acquire);
        ReplicationFigures {
            appended,
            replicated,
            durable: self.durable.load(Ordering::Acquire),
            lag: appended.saturating_sub(replicated),
            unreplicated_bytes: self.unreplicated.load(Ordering::Acquire),
        }
    }
}

impl Journal {
    /// The replicator's end of the feed of written batches. Only for a
    /// journal opened with `replicated: true`, and only once (`Config`
    /// error otherwise).
    pub fn replication_feed(&self) -> Result<ReplicationFeed, JournalError> {
        let shared = &self.inner.shared;
        if !shared.replicated_mode {
            return Err(JournalError::Config(
                "the journal is not replicated (JournalConfig::replicated)".into(),
            ));
        }
        if shared.feed_taken.swap(true, Ordering::AcqRel) {
            return Err(JournalError::Config(
                "the replication feed was already taken".into(),
            ));
        }
        Ok(ReplicationFeed {
            shared: shared.clone(),
        })
    }

    /// Records up to `lsn` are stored by the replica: they become durable
    /// once also written locally under the fsync policy. `lsn` must have
    /// been handed to the feed (`NotAppended` otherwise); marking less than
    /// before changes nothing.
    pub fn mark_replicated(&self, lsn: Lsn) -> Result<(), JournalError> {
        self.inner.shared.mark_replicated(lsn)
    }

    /// The highest Lsn marked replicated (at open: the last record found).
    pub fn replicated(&self) -> Lsn {
        self.inner.shared.replicated.load(Ordering::Acquire)
    }

    /// Appended, replicated and durable Lsns, the lag, and the bytes
    /// waiting for the replica.
    pub fn replication_figures(&self) -> ReplicationFigures {
        self.inner.shared.figures()
    }
}

#[cfg(test)]
mod tests;

//! The active node's replication of its journal to NATS: the [`Replicator`],
//! one tokio task, takes the batches the journal's writer hands over
//! ([`crate::journal::ReplicationFeed`]) and publishes them on
//! `<prefix>.core` through the fenced core writer
//! ([`super::EventLog::core_writer`]); after each acknowledgement it marks
//! the records replicated, which (with the local fsync) makes them durable.
//!
//! The wire format (`docs/cluster.md`, "Replication"): one message carries
//! one or more records of consecutive Lsns, framed exactly as in a journal
//! segment (u32 LE length, u32 LE CRC-32C, payload, back to back); header
//! `Switchboard-Lsn` is the first record's Lsn, `Switchboard-Node` the
//! writer's node id. Headers and payload together never exceed the server's
//! `max_payload`: a longer run of records is split over several messages,
//! and a single record too large for one is a loud failure.
//!
//! Group commit: one message is in flight at a time; every batch that waits
//! meanwhile goes into the next message (up to `max_payload`).
//!
//! Failures:
//! - no answer (NATS away, restarting, JetStream not ready): the same
//!   message is sent again, with a backoff from 100 ms to 1 s, for as long
//!   as it takes (the writer's message id makes the retry safe: stored once).
//!   Durability stops advancing meanwhile, and appends are refused once the
//!   waiting records spend the journal's `queue_bytes`.
//! - fenced off (another node claimed `<prefix>.core`: it is the active node
//!   now), a record larger than `max_payload`, or batches out of order: the
//!   journal fails for good ([`crate::journal::Journal::fail`]: nothing more
//!   is acknowledged) and [`ReplicatorHandle::stopped`] reports why.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fence::{FenceError, FencedWriter};
use crate::journal::{FeedBatch, Journal, Lsn, ReplicationFeed};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Why replication stopped for good (the journal was failed with the same
/// message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error(
        "replication to {subject} fenced off (expected last sequence {expected}): another node \
         has claimed it and is the active node now; this node stops acknowledging"
    )]
    Fenced { subject: String, expected: u64 },
    #[error(
        "journal record at Lsn {lsn} is {frame} bytes framed: with the message headers ({headers} \
         bytes) it exceeds the NATS server's max_payload of {max_payload} bytes, so it cannot be \
         replicated (raise max_payload in the NATS server's configuration)"
    )]
    RecordTooLarge {
        lsn: Lsn,
        frame: usize,
        headers: usize,
        max_payload: usize,
    },
    #[error(
        "replication feed out of order: expected Lsn {expected}, got a batch from Lsn {found}"
    )]
    OutOfOrder { expected: Lsn, found: Lsn },
    #[error("replication cannot start: {0}")]
    Start(String),
    #[error("replication stopped: {0}")]
    Other(String),
}

/// Where replication stands, for an admin view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// The highest Lsn appended to the journal.
    pub appended: Lsn,
    /// The highest Lsn acknowledged by JetStream.
    pub replicated: Lsn,
    /// The highest Lsn durable (replicated and fsynced locally).
    pub durable: Lsn,
    /// Records appended and not replicated yet (`appended - replicated`).
    pub lag: u64,
    /// Bytes written and not replicated yet (they count against the
    /// journal's `queue_bytes`).
    pub unreplicated_bytes: usize,
    /// Messages acknowledged since the replicator started.
    pub messages: u64,
    /// The stream sequence of the last acknowledged message.
    pub stream_sequence: u64,
    /// While a message is being retried: the last error.
    pub retrying: Option<String>,
    /// Stopped for good, and why (None: running, or ended with the journal).
    pub stopped: Option<String>,
}

/// What the task shares with its handle.
struct Shared {
    feed: ReplicationFeed,
    messages: AtomicU64,
    stream_sequence: AtomicU64,
    retrying: Mutex<Option<String>>,
    ended: AtomicBool,
    stopped: watch::Sender<Option<Result<(), ReplicationError>>>,
}

/// Starts the replication task.
pub struct Replicator;

impl Replicator {
    /// Take `journal`'s replication feed (opened with `replicated: true`;
    /// once per journal) and start shipping it through `writer` (the core
    /// writer, [`super::EventLog::core_writer`]) on the current tokio
    /// runtime. Records appended before this call are shipped first. The
    /// task ends by itself once the journal is closed and everything is
    /// replicated (or the close gave up, or the journal failed).
    pub fn start(
        journal: &Journal,
        writer: FencedWriter,
    ) -> Result<ReplicatorHandle, ReplicationError> {
        let feed = journal
            .replication_feed()
            .map_err(|e| ReplicationError::Start(e.to_string()))?;
        let (stopped, stopped_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            feed,
            messages: AtomicU64::new(0),
            stream_sequence: AtomicU64::new(writer.last_sequence()),
            retrying: Mutex::new(None),
            ended: AtomicBool::new(false),
            stopped,
        });
        tracing::info!(
            subject = writer.subject(),
            from = shared.feed.replicated() + 1,
            "journal replication started"
        );
        let task = tokio::spawn(run(shared.clone(), writer));
        Ok(ReplicatorHandle {
            shared,
            stopped: stopped_rx,
            task,
        })
    }
}

/// The server's handle on the replication task.
pub struct ReplicatorHandle {
    shared: Arc<Shared>,
    stopped: watch::Receiver<Option<Result<(), ReplicationError>>>,
    task: JoinHandle<()>,
}

impl ReplicatorHandle {
    /// Resolves when the task has ended: `Ok` once the journal was closed
    /// (or failed by someone else) and the task had nothing more to do;
    /// the error when replication failed for good (the journal was failed
    /// with it: the node must stop acknowledging). Independent of `self`'s
    /// lifetime, so it can be spawned or put in a `select!`.
    pub fn stopped(&self) -> impl Future<Output = Result<(), ReplicationError>> + Send + 'static {
        let mut rx = self.stopped.clone();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(result) => result.clone().unwrap_or(Ok(())),
                Err(_) => Err(ReplicationError::Other(
                    "the replication task ended without a result".into(),
                )),
            }
        }
    }

    /// The result, if the task has ended.
    pub fn result(&self) -> Option<Result<(), ReplicationError>> {
        self.stopped.borrow().clone()
    }

    /// The figures for an admin view.
    pub fn status(&self) -> ReplicationStatus {
        let f = self.shared.feed.figures();
        ReplicationStatus {
            appended: f.appended,
            replicated: f.replicated,
            durable: f.durable,
            lag: f.lag,
            unreplicated_bytes: f.unreplicated_bytes,
            messages: self.shared.messages.load(Ordering::Acquire),
            stream_sequence: self.shared.stream_sequence.load(Ordering::Acquire),
            retrying: self.shared.retrying.lock().clone(),
            stopped: match &*self.stopped.borrow() {
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            },
        }
    }

    /// Stop the task now (a node stopping without closing its journal
    /// cleanly). What was not replicated never becomes durable: the journal
    /// is failed.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Fails the journal if the task ends without saying how (a panic, an
/// abort): without a replicator nothing could become durable anyway, and
/// appends would otherwise pile up until the budget refuses them.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        if !self.0.ended.load(Ordering::Acquire) {
            let reason = "journal replication stopped unexpectedly";
            self.0.feed.fail(reason);
            self.0
                .stopped
                .send_replace(Some(Err(ReplicationError::Other(reason.into()))));
        }
    }
}

async fn run(shared: Arc<Shared>, mut writer: FencedWriter) {
    let guard = EndGuard(shared.clone());
    let result = ship(&shared, &mut writer).await;
    match &result {
        Ok(()) => tracing::info!(
            replicated = shared.feed.replicated(),
            "journal replication ended with the journal"
        ),
        Err(e) => {
            shared.feed.fail(&e.to_string());
            tracing::error!(error = %e, "journal replication failed; the journal refuses appends");
        }
    }
    shared.ended.store(true, Ordering::Release);
    shared.stopped.send_replace(Some(result));
    drop(guard);
}

/// One message: records `first..=last`, framed.
#[derive(Debug)]
struct Message {
    first: Lsn,
    last: Lsn,
    payload: Bytes,
}

async fn ship(shared: &Shared, writer: &mut FencedWriter) -> Result<(), ReplicationError> {
    let feed = &shared.feed;
    let header_room = writer.records_header_room();
    let mut pending: VecDeque<FeedBatch> = VecDeque::new();
    // The first Lsn the next batch taken from the feed must start with.
    let mut expected = feed.replicated() + 1;
    let mut take = |pending: &mut VecDeque<FeedBatch>, batches: Vec<FeedBatch>| {
        for b in batches {
            if b.first != expected {
                return Err(ReplicationError::OutOfOrder {
                    expected,
                    found: b.first,
                });
            }
            expected = b.last() + 1;
            pending.push_back(b);
        }
        Ok(())
    };
    loop {
        if pending.is_empty() {
            match feed.recv().await {
                Some(batches) => take(&mut pending, batches)?,
                None => return Ok(()),
            }
        } else {
            take(&mut pending, feed.try_recv())?;
        }
        let max_payload = writer.client().server_info().max_payload;
        let message = next_message(&mut pending, max_payload, header_room)?;
        let Some(sequence) = publish(shared, writer, &message).await? else {
            // The journal was closed (giving up) or failed meanwhile.
            return Ok(());
        };
        shared.messages.fetch_add(1, Ordering::AcqRel);
        shared.stream_sequence.store(sequence, Ordering::Release);
        feed.mark_replicated(message.last)
            .map_err(|e| ReplicationError::Other(e.to_string()))?;
    }
}

/// Take the records at the front of `pending` that fit in one message (at
/// least one: a record that does not fit alone is an error).
fn next_message(
    pending: &mut VecDeque<FeedBatch>,
    max_payload: usize,
    header_room: usize,
) -> Result<Message, ReplicationError> {
    let limit = max_payload.saturating_sub(header_room);
    let first = pending.front().map_or(0, |b| b.first);
    let mut parts: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let mut last = first;
    while let Some(batch) = pending.front_mut() {
        let mut n = 0;
        let mut bytes = 0usize;
        for &frame in &batch.frames {
            if size + bytes + frame as usize > limit {
                break;
            }
            n += 1;
            bytes += frame as usize;
        }
        if n == 0 {
            if parts.is_empty() {
                return Err(ReplicationError::RecordTooLarge {
                    lsn: batch.first,
                    frame: batch.frames[0] as usize,
                    headers: header_room,
                    max_payload,
                });
            }
            break;
        }
        size += bytes;
        if n == batch.frames.len() {
            let whole = pending.pop_front().expect("the front batch");
            last = whole.last();
            parts.push(whole.bytes);
        } else {
            parts.push(batch.bytes.slice(..bytes));
            batch.bytes = batch.bytes.slice(bytes..);
            batch.frames.drain(..n);
            batch.first += n as u64;
            last = batch.first - 1;
            break;
        }
    }
    let payload = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        let mut joined = Vec::with_capacity(size);
        for p in &parts {
            joined.extend_from_slice(p);
        }
        Bytes::from(joined)
    };
    Ok(Message {
        first,
        last,
        payload,
    })
}

/// Send `message` until JetStream stores it (its sequence), or None when
/// the journal finished meanwhile (nothing would become durable anyway).
async fn publish(
    shared: &Shared,
    writer: &mut FencedWriter,
    message: &Message,
) -> Result<Option<u64>, ReplicationError> {
    let mut delay = RETRY_MIN;
    loop {
        match writer
            .append_records(message.first, message.payload.clone())
            .await
        {
            Ok(sequence) => {
                if shared.retrying.lock().take().is_some() {
                    tracing::info!(
                        lsn = message.first,
                        "journal replication works again; durability advances"
                    );
                }
                return Ok(Some(sequence));
            }
            Err(FenceError::Fenced { expected, .. }) => {
                return Err(ReplicationError::Fenced {
                    subject: writer.subject().to_owned(),
                    expected,
                })
            }
            Err(e @ FenceError::Append { .. }) => {
                let first = shared.retrying.lock().replace(e.to_string()).is_none();
                if first {
                    tracing::warn!(
                        error = %e,
                        lsn = message.first,
                        "journal replication: no answer from NATS; retrying (nothing more \
                         becomes durable meanwhile)"
                    );
                }
                if shared.feed.is_finished() {
                    return Ok(None);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                if shared.feed.is_finished() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(ReplicationError::Other(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: Lsn, sizes: &[usize]) -> FeedBatch {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let payload = vec![(first as usize + i) as u8; len];
            bytes.extend_from_slice(&(len as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
            frames.push((len + 8) as u32);
        }
        FeedBatch {
            first,
            frames,
            bytes: Bytes::from(bytes),
        }
    }

    #[test]
    fn waiting_batches_coalesce_up_to_the_limit_and_split_inside_a_batch() {
        // Frames of 18 bytes; a limit of 100 - 20 = 80 takes 4 of them.
        let mut pending: VecDeque<FeedBatch> = [
            batch(1, &[10, 10]),
            batch(3, &[10, 10, 10]),
            batch(6, &[10]),
        ]
        .into();
        let all: Vec<u8> = pending.iter().flat_map(|b| b.bytes.to_vec()).collect();
        let m = next_message(&mut pending, 100, 20).unwrap();
        assert_eq!((m.first, m.last), (1, 4));
        assert_eq!(&m.payload[..], &all[..72]);
        let m = next_message(&mut pending, 100, 20).unwrap();
        assert_eq!((m.first, m.last), (5, 6));
        assert_eq!(&m.payload[..], &all[72..]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_record_larger_than_a_message_is_an_error_naming_it() {
        let mut pending: VecDeque<FeedBatch> = [batch(7, &[200])].into();
        let e = next_message(&mut pending, 150, 20).unwrap_err();
        assert_eq!(
            e,
            ReplicationError::RecordTooLarge {
                lsn: 7,
                frame: 208,
                headers: 20,
                max_payload: 150
            }
        );
        assert!(e.to_string().contains("max_payload of 150"), "{e}");
    }

    #[test]
    fn a_record_that_fits_exactly_is_taken() {
        let mut pending: VecDeque<FeedBatch> = [batch(1, &[72, 1])].into();
        let m = next_message(&mut pending, 100, 20).unwrap();
        assert_eq!((m.first, m.last, m.payload.len()), (1, 1, 80));
        let m = next_message(&mut pending, 100, 20).unwrap();
        assert_eq!((m.first, m.last, m.payload.len()), (2, 2, 9));
    }
}

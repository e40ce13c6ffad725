//! The journal's snapshots in NATS, and keeping `<prefix>.core` short.
//!
//! Without this the core subject holds every record since the cluster's
//! first start, and a new standby copies all of them. Instead:
//! - the active node uploads each snapshot its compactor writes to the
//!   object store `<prefix>-snapshots` (object `snap-<Lsn, 20 digits>`, the
//!   bytes of the snapshot file: header, checksum, payload), keeping the
//!   [`KEEP`] newest ([`keep_trimmed`]);
//! - then it purges the core messages wholly before the *older* of those
//!   snapshots (a margin of one: a standby that finds the newest one
//!   unreadable seeds from the other), and never past a record a standby
//!   in the roster has not copied yet, so a standby that lags is not cut
//!   off;
//! - a standby starting with an empty journal seeds it from the newest
//!   snapshot whose next record the stream still holds ([`seed`]), fetches
//!   the files that snapshot names, and copies the core subject from the
//!   message holding that next record on ([`super::standby`]).
//!
//! Finding a record's message: core messages carry their first record's Lsn
//! (header `Switchboard-Lsn`), strictly increasing along the stream (claim
//! markers carry none and are stepped over), so a binary search over stream
//! sequences with direct gets finds the message holding a given Lsn in
//! about log2(messages) reads ([`message_holding`]).

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::stream::{self, DirectGetErrorKind};

use super::files::{Files, FilesError};
use super::{Cluster, ClusterError, CLAIM_HEADER, LSN_HEADER};
use crate::journal::{snapshot, Journal, JournalError, Lsn, WeakJournal};

/// Snapshots kept in the bucket.
pub const KEEP: usize = 2;

/// How long one upload or download of a snapshot may take (a snapshot is
/// the whole state: far bigger than a file).
const SNAPSHOT_CALL_LIMIT: Duration = Duration::from_secs(300);

/// How long one read of the stream (a direct get or a purge) may take.
const STREAM_CALL_LIMIT: Duration = Duration::from_secs(10);

/// A call about the snapshots or the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotsError {
    #[error(transparent)]
    Bucket(#[from] FilesError),
    #[error("stream {stream}: {what}: {source}")]
    Stream {
        stream: String,
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("stream {stream}: {what} timed out")]
    TimedOut { stream: String, what: &'static str },
    #[error("the core message {sequence}: {what}")]
    Unreadable { sequence: u64, what: String },
    #[error("snapshot {name}: {source}")]
    Snapshot {
        name: String,
        #[source]
        source: JournalError,
    },
    #[error("the local journal: {0}")]
    Journal(#[from] JournalError),
    #[error("reading the local snapshot: {0}")]
    Task(String),
}

/// The name of the object holding the snapshot at `lsn`.
pub fn object_name(lsn: Lsn) -> String {
    format!("snap-{lsn:020}")
}

/// The Lsn an object's name gives, if it names a snapshot.
pub fn parse_object_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix("snap-")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The `<prefix>-snapshots` object store. Cheap to clone.
#[derive(Clone)]
pub struct Snapshots {
    bucket: Files,
}

impl Snapshots {
    /// Open the bucket, creating it if missing.
    pub async fn open(cluster: &Cluster) -> Result<Snapshots, ClusterError> {
        let bucket = cluster.settings().snapshots_bucket();
        Ok(Snapshots {
            bucket: Files::open_bucket(
                cluster,
                bucket,
                "Switchboard journal snapshots",
                SNAPSHOT_CALL_LIMIT,
            )
            .await?,
        })
    }

    /// The Lsns of the snapshots in the bucket, newest first.
    pub async fn list(&self) -> Result<Vec<Lsn>, SnapshotsError> {
        let mut lsns: Vec<Lsn> = self
            .bucket
            .names()
            .await?
            .iter()
            .filter_map(|n| parse_object_name(n))
            .collect();
        lsns.sort_unstable_by(|a, b| b.cmp(a));
        Ok(lsns)
    }

    /// Upload the snapshot at `lsn` (its payload; stored as a snapshot file).
    pub async fn put(&self, lsn: Lsn, payload: &[u8]) -> Result<(), SnapshotsError> {
        let file = snapshot::encode(lsn, payload);
        Ok(self.bucket.put(&object_name(lsn), &file).await?)
    }

    /// The payload of the snapshot at `lsn`, checked (header, Lsn, length,
    /// checksum); `None` if it is not there.
    pub async fn get(&self, lsn: Lsn) -> Result<Option<Vec<u8>>, SnapshotsError> {
        let name = object_name(lsn);
        let Some(bytes) = self.bucket.get(&name).await? else {
            return Ok(None);
        };
        let source = Path::new(self.bucket.bucket()).join(&name);
        snapshot::decode(bytes.to_vec(), lsn, &source)
            .map(Some)
            .map_err(|source| SnapshotsError::Snapshot { name, source })
    }

    /// Delete the snapshot at `lsn` (not there: no error).
    pub async fn delete(&self, lsn: Lsn) -> Result<(), SnapshotsError> {
        Ok(self.bucket.delete(&object_name(lsn)).await?)
    }
}

/// A core message: its stream sequence and its first record's Lsn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreMessage {
    pub sequence: u64,
    pub first_lsn: Lsn,
}

/// The core subject of the events stream, read by direct gets.
#[derive(Clone)]
pub struct CoreSubject {
    events: stream::Stream,
    subject: String,
}

impl CoreSubject {
    pub fn new(events: stream::Stream, subject: String) -> CoreSubject {
        CoreSubject { events, subject }
    }

    fn stream_error(&self, what: &'static str, source: async_nats::Error) -> SnapshotsError {
        SnapshotsError::Stream {
            stream: self.events.cached_info().config.name.clone(),
            what,
            source,
        }
    }

    fn timed_out(&self, what: &'static str) -> SnapshotsError {
        SnapshotsError::TimedOut {
            stream: self.events.cached_info().config.name.clone(),
            what,
        }
    }

    /// The first core message holding records (not a claim marker) at or
    /// after stream sequence `from`; `None`: there is none.
    pub async fn next_records(&self, from: u64) -> Result<Option<CoreMessage>, SnapshotsError> {
        let mut at = from.max(1);
        loop {
            let get = self
                .events
                .direct_get_next_for_subject(self.subject.as_str(), Some(at));
            let message = match tokio::time::timeout(STREAM_CALL_LIMIT, get).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
                Ok(Err(e)) => return Err(self.stream_error("direct get", e.into())),
                Err(_) => return Err(self.timed_out("direct get")),
            };
            let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
            if header(CLAIM_HEADER).is_some() {
                at = message.sequence + 1;
                continue;
            }
            let first_lsn = header(LSN_HEADER)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| SnapshotsError::Unreadable {
                    sequence: message.sequence,
                    what: format!("no readable {LSN_HEADER} header"),
                })?;
            return Ok(Some(CoreMessage {
                sequence: message.sequence,
                first_lsn,
            }));
        }
    }

    /// The stream's last sequence (any subject), as the server says now.
    async fn last_sequence(&self) -> Result<u64, SnapshotsError> {
        let mut events = self.events.clone();
        match tokio::time::timeout(STREAM_CALL_LIMIT, events.info()).await {
            Ok(Ok(info)) => Ok(info.state.last_sequence),
            Ok(Err(e)) => Err(self.stream_error("info", e.into())),
            Err(_) => Err(self.timed_out("info")),
        }
    }

    /// The core message holding record `lsn`: the last one whose first Lsn
    /// is at most `lsn` (it may also hold records before `lsn`, or end
    /// before it when `lsn` is not written yet). `None`: the subject holds
    /// no message that early (it is empty, or trimmed past `lsn`).
    pub async fn message_holding(&self, lsn: Lsn) -> Result<Option<CoreMessage>, SnapshotsError> {
        let last = self.last_sequence().await?;
        search_holding(1, last, lsn, |at| self.next_records(at)).await
    }

    /// Remove the core messages before stream sequence `before`; how many
    /// went.
    pub async fn purge_before(&self, before: u64) -> Result<u64, SnapshotsError> {
        let purge = self
            .events
            .purge()
            .filter(self.subject.as_str())
            .sequence(before);
        match tokio::time::timeout(STREAM_CALL_LIMIT, purge).await {
            Ok(Ok(r)) => Ok(r.purged),
            Ok(Err(e)) => Err(self.stream_error("purge", e.into())),
            Err(_) => Err(self.timed_out("purge")),
        }
    }
}

/// The binary search of [`CoreSubject::message_holding`], over stream
/// sequences `lo..=hi`; `next(at)` answers the first core message with
/// records at or after `at`.
async fn search_holding<F, Fut, E>(
    lo: u64,
    hi: u64,
    lsn: Lsn,
    mut next: F,
) -> Result<Option<CoreMessage>, E>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<Option<CoreMessage>, E>>,
{
    let mut best = match next(lo).await? {
        Some(m) if m.first_lsn <= lsn => m,
        _ => return Ok(None),
    };
    let (mut lo, hi) = (best.sequence, hi.max(best.sequence));
    let mut hi = hi;
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match next(mid).await? {
            Some(m) if m.first_lsn <= lsn => {
                best = m;
                lo = m.sequence.max(mid);
            }
            _ => hi = mid - 1,
        }
    }
    Ok(Some(best))
}

/// Where a fresh standby's journal starts.
pub struct Seed {
    /// The snapshot's Lsn: its records are not copied.
    pub lsn: Lsn,
    /// The snapshot's payload.
    pub payload: Vec<u8>,
    /// The core message holding record `lsn + 1` (or the last one, if that
    /// record is not written yet): copying starts there.
    pub from_sequence: u64,
}

/// What a fresh standby starts from: the newest snapshot in the bucket that
/// reads back whole and whose next record the core subject still holds;
/// `None` when the subject holds every record from Lsn 1 and there is no
/// snapshot to start from (a young cluster). An error when the subject was
/// trimmed and no snapshot covers what is gone.
pub async fn seed(snapshots: &Snapshots, core: &CoreSubject) -> Result<Option<Seed>, SeedError> {
    for lsn in snapshots.list().await? {
        let payload = match snapshots.get(lsn).await {
            Ok(Some(payload)) => payload,
            Ok(None) => continue,
            Err(e @ SnapshotsError::Snapshot { .. }) => {
                tracing::warn!(error = %e, "cluster: skipping an unreadable snapshot; trying the one before it");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match core.message_holding(lsn + 1).await? {
            Some(m) => {
                return Ok(Some(Seed {
                    lsn,
                    payload,
                    from_sequence: m.sequence,
                }))
            }
            None => {
                // No records at all yet: a cluster carried over from a
                // single node (`carry_over`), whose active node has written
                // nothing since its snapshot. The first record to come
                // must be the one after it.
                if core.next_records(1).await?.is_none() {
                    return Ok(Some(Seed {
                        lsn,
                        payload,
                        from_sequence: 1,
                    }));
                }
                tracing::warn!(
                    snapshot = lsn,
                    "cluster: the core subject no longer holds the records after a snapshot; trying an older one"
                );
            }
        }
    }
    match core.next_records(1).await? {
        None => Ok(None),
        Some(m) if m.first_lsn == 1 => Ok(None),
        Some(m) => Err(SeedError::Trimmed {
            first_lsn: m.first_lsn,
        }),
    }
}

/// A fresh standby cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Snapshots(#[from] SnapshotsError),
    #[error("the core subject starts at Lsn {first_lsn} and no snapshot in the bucket covers the records before it")]
    Trimmed { first_lsn: Lsn },
}

/// The active node's upkeep, every `every` for as long as the journal
/// lives: upload a snapshot newer than the newest in the bucket, keep the
/// [`KEEP`] newest, and purge the core messages wholly before the older
/// one, never past a record a standby has not copied (`standbys` gives
/// their copied Lsns, from the roster; no round runs before it knows
/// them). A failed round is logged and tried again at the next; the stream
/// only grows meanwhile.
pub async fn keep_trimmed(
    journal: WeakJournal,
    snapshots: Snapshots,
    core: CoreSubject,
    standbys: impl Fn() -> Option<Vec<Lsn>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut uploaded: Option<Lsn> = None;
    loop {
        tick.tick().await;
        let Some(journal) = journal.upgrade() else {
            return;
        };
        let Some(standbys) = standbys() else {
            continue;
        };
        match trim_round(&journal, &snapshots, &core, &standbys, &mut uploaded).await {
            Ok(Some(trim)) => tracing::info!(
                snapshot = trim.uploaded,
                kept_from = trim.bound,
                purged = trim.purged,
                "cluster: snapshot uploaded; the core subject trimmed"
            ),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cluster: uploading a snapshot or trimming the core subject failed; trying again later")
            }
        }
    }
}

/// What one round of [`keep_trimmed`] did.
#[derive(Debug)]
pub struct Trimmed {
    pub uploaded: Lsn,
    /// The Lsn the core subject's records are kept after.
    pub bound: Lsn,
    pub purged: u64,
}

/// One round of [`keep_trimmed`]: nothing to do unless the journal has a
/// snapshot newer than the last one done with (`uploaded`: uploaded, and
/// the subject trimmed behind it; a round that fails after the upload
/// leaves it to the next, which trims without uploading again).
pub async fn trim_round(
    journal: &Journal,
    snapshots: &Snapshots,
    core: &CoreSubject,
    standbys: &[Lsn],
    uploaded: &mut Option<Lsn>,
) -> Result<Option<Trimmed>, SnapshotsError> {
    let newest_local = journal.snapshot_lsn();
    if newest_local == 0 {
        return Ok(None);
    }
    if uploaded.is_some_and(|last| last >= newest_local) {
        return Ok(None);
    }
    let mut kept = snapshots.list().await?;
    let (lsn, done) = match kept.first().copied() {
        // There already (an earlier round's upload whose trimming failed,
        // or the previous active node's): only the trimming is left.
        Some(newest) if newest >= newest_local => (newest, newest),
        // The newest local snapshot counts as done even when it could not
        // be read back and an older one went up: the next round waits for
        // a newer one rather than upload the same older one again.
        _ => match upload_newest(journal, snapshots, newest_local).await? {
            Some(lsn) => (lsn, lsn.max(newest_local)),
            None => return Ok(None),
        },
    };
    // What the bucket holds now, newest first: what it held, and the
    // upload (an older snapshot, when the newest local one is unreadable,
    // may have been there already).
    if !kept.contains(&lsn) {
        kept.push(lsn);
        kept.sort_unstable_by(|a, b| b.cmp(a));
    }
    for old in kept.iter().skip(KEEP) {
        snapshots.delete(*old).await?;
    }
    // The older snapshot kept, or the only one: with one, nothing goes yet.
    let Some(&older) = kept.get(KEEP - 1) else {
        *uploaded = Some(done);
        return Ok(Some(Trimmed {
            uploaded: lsn,
            bound: 0,
            purged: 0,
        }));
    };
    let bound = standbys.iter().copied().fold(older, Lsn::min);
    let purged = match core.message_holding(bound + 1).await? {
        Some(m) => core.purge_before(m.sequence).await?,
        None => 0,
    };
    *uploaded = Some(done);
    Ok(Some(Trimmed {
        uploaded: lsn,
        bound,
        purged,
    }))
}

/// Upload the newest local snapshot that reads back (the newest, unless it
/// cannot be read); its Lsn, or None without one.
async fn upload_newest(
    journal: &Journal,
    snapshots: &Snapshots,
    newest_local: Lsn,
) -> Result<Option<Lsn>, SnapshotsError> {
    let reader = journal.clone();
    let read = tokio::task::spawn_blocking(move || reader.read_snapshot())
        .await
        .map_err(|e| SnapshotsError::Task(e.to_string()))??;
    let Some((lsn, payload)) = read else {
        return Ok(None);
    };
    if lsn < newest_local {
        tracing::warn!(
            newest = newest_local,
            uploading = lsn,
            "the newest local snapshot cannot be read back: uploading the newest one that can \
             (once; the next upload waits for a newer snapshot)"
        );
    }
    snapshots.put(lsn, &payload).await?;
    Ok(Some(lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream's core messages as (sequence, first Lsn); `None` for a
    /// claim marker. Answers like `next_records`.
    fn next_in(messages: &[(u64, Option<Lsn>)], at: u64) -> Option<CoreMessage> {
        messages
            .iter()
            .filter(|(s, first)| *s >= at && first.is_some())
            .map(|(s, first)| CoreMessage {
                sequence: *s,
                first_lsn: first.unwrap_or_default(),
            })
            .next()
    }

    async fn holding(messages: &[(u64, Option<Lsn>)], lsn: Lsn) -> Option<CoreMessage> {
        let last = messages.last().map_or(0, |(s, _)| *s);
        let mut reads = 0;
        let found = search_holding(1, last, lsn, |at| {
            reads += 1;
            std::future::ready(Ok::<_, ()>(next_in(messages, at)))
        })
        .await
        .expect("no error");
        assert!(
            reads <= 2 + 2 * (64 - last.leading_zeros()),
            "{reads} reads for {last} messages"
        );
        found
    }

    /// The answer by a linear scan.
    fn holding_by_scan(messages: &[(u64, Option<Lsn>)], lsn: Lsn) -> Option<CoreMessage> {
        messages
            .iter()
            .filter_map(|(s, f)| {
                f.map(|f| CoreMessage {
                    sequence: *s,
                    first_lsn: f,
                })
            })
            .rfind(|m| m.first_lsn <= lsn)
    }

    #[tokio::test]
    async fn the_message_holding_an_lsn_is_found_by_binary_search() {
        // Batches of 1 to 4 records, claim markers here and there, other
        // subjects' sequences missing (gaps), a trimmed start.
        let mut messages = Vec::new();
        let (mut seq, mut lsn) = (5u64, 1u64);
        for i in 0..300u64 {
            if i % 37 == 0 {
                messages.push((seq, None));
                seq += 1;
            }
            messages.push((seq, Some(lsn)));
            lsn += 1 + i % 4;
            seq += 1 + i % 3;
        }
        for target in 0..lsn + 3 {
            assert_eq!(
                holding(&messages, target).await,
                holding_by_scan(&messages, target),
                "Lsn {target}"
            );
        }
        assert_eq!(holding(&[], 5).await, None, "an empty subject");
        assert_eq!(holding(&[(1, None)], 5).await, None, "claim markers only");
    }

    #[test]
    fn object_names_carry_the_lsn() {
        assert_eq!(object_name(42), "snap-00000000000000000042");
        assert_eq!(parse_object_name(&object_name(42)), Some(42));
        assert_eq!(parse_object_name(&object_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_object_name("snap-42"), None);
        assert_eq!(parse_object_name("file-00000000000000000042"), None);
        assert_eq!(parse_object_name("snap-0000000000000000004x"), None);
    }
}

//! The snapshot compactor: a thread of its own (never an actix arbiter or a
//! tokio worker) that writes the journal's snapshots, so a restart replays
//! a bounded number of records and old segments are deleted.
//!
//! It never looks at a live actor. Each snapshot is the previous snapshot
//! (read back from its file) with the records after it up to the target
//! Lsn applied (read back from the segment files) through
//! [`BrokerState::apply`], the code recovery runs: so the snapshot at Lsn N
//! is exactly the state replaying records 1..N gives, whatever the actors
//! are doing meanwhile. The hot path pays nothing but the CPU this thread
//! uses and, while it runs, the memory of one copy of the state.
//!
//! When: once `snapshot_every_records` records follow the last snapshot, or
//! `snapshot_interval` after it if any record came. The target is the
//! durable end of the journal at that moment. [`Journal::write_snapshot`]
//! writes it atomically, keeps the two newest and deletes the segments the
//! older one does not need. A failure is logged and tried again at the next
//! interval; the journal goes on as before (it only grows).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::journal::{Journal, JournalError, Lsn, WeakJournal};
use crate::snapshot::{BrokerState, ReplaySettings};

/// When snapshots are written.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Records after the last snapshot that call for a new one.
    pub every_records: u64,
    /// Most time between snapshots while records come in.
    pub interval: Duration,
}

/// Why a snapshot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("snapshot at Lsn {lsn}: {why}")]
    State { lsn: Lsn, why: String },
}

/// What one compaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The snapshot it started from (0: none) and the one it wrote.
    pub from: Lsn,
    pub lsn: Lsn,
    pub bytes: usize,
}

/// Write one snapshot at `target` (at most the journal's durable end): the
/// newest snapshot on disk, the records after it up to `target` applied,
/// files whose bytes are gone dropped, encoded and written. `files` is the
/// directory of stored files' bytes, if any.
pub fn compact(
    journal: &Journal,
    settings: &ReplaySettings,
    files: Option<&std::path::Path>,
    target: Lsn,
) -> Result<Compacted, CompactError> {
    let (from, mut state) = match journal.read_snapshot()? {
        Some((lsn, bytes)) => {
            let state = BrokerState::decode(&bytes, settings).map_err(|e| CompactError::State {
                lsn,
                why: e.to_string(),
            })?;
            (lsn, state)
        }
        None => (0, BrokerState::new(settings)),
    };
    if target <= from {
        return Err(CompactError::State {
            lsn: target,
            why: format!("not after the newest snapshot, at Lsn {from}"),
        });
    }
    journal.read_records(from, target, |_, bytes| {
        state
            .apply_bytes(bytes, settings)
            .map_err(|e| e.to_string())
    })?;
    if let Some(dir) = files {
        state.drop_missing_files(dir);
    }
    let bytes = state.encode().map_err(|e| CompactError::State {
        lsn: target,
        why: e.to_string(),
    })?;
    journal.write_snapshot(target, &bytes)?;
    Ok(Compacted {
        from,
        lsn: target,
        bytes: bytes.len(),
    })
}

/// Start the compactor's thread. It stops by itself once the journal is
/// closed or every other handle to it is gone.
pub fn start(
    journal: &Journal,
    settings: ReplaySettings,
    files: Option<PathBuf>,
    schedule: Schedule,
) -> std::io::Result<()> {
    let weak = journal.downgrade();
    std::thread::Builder::new()
        .name("journal-compactor".into())
        .spawn(move || run(weak, settings, files, schedule))?;
    Ok(())
}

/// How often the thread looks whether a snapshot is due (two atomic loads).
const LOOK_EVERY: Duration = Duration::from_millis(200);

fn run(weak: WeakJournal, settings: ReplaySettings, files: Option<PathBuf>, schedule: Schedule) {
    let mut last = Instant::now();
    // After a failure, wait a whole interval before trying again.
    let mut retry_at: Option<Instant> = None;
    loop {
        std::thread::sleep(LOOK_EVERY.min(schedule.interval));
        let Some(journal) = weak.upgrade() else {
            return;
        };
        if matches!(journal.health(), Err(JournalError::Closed)) {
            return;
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        let base = journal.snapshot_lsn();
        let durable = journal.durable();
        let pending = durable.saturating_sub(base);
        let due = pending >= schedule.every_records
            || (pending > 0 && last.elapsed() >= schedule.interval);
        if !due {
            continue;
        }
        let started = Instant::now();
        match compact(&journal, &settings, files.as_deref(), durable) {
            Ok(done) => {
                last = Instant::now();
                retry_at = None;
                tracing::info!(
                    from = done.from,
                    lsn = done.lsn,
                    bytes = done.bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "snapshot made"
                );
            }
            Err(e) => {
                retry_at = Some(Instant::now() + schedule.interval);
                tracing::warn!(error = %e, "snapshot failed; the journal keeps every record until the next one");
            }
        }
    }
}

//! Reading a data dir back at open: the newest good snapshot, then every
//! record after it, segment by segment, checking that the segments follow
//! each other without a gap.
//!
//! What is cut and what is refused:
//! - a torn or corrupt tail of the **last** segment (a crash in the middle of
//!   a write, or bytes the disk lost) is cut: the file is truncated to its
//!   last good record and the cut is reported and logged. Nothing after the
//!   first bad byte is applied, so a record is never half-applied.
//! - a bad record in an **earlier** segment, a segment missing from the
//!   chain, a bad segment header, or a file of a newer format version is
//!   refused with an error: those are not what a crash leaves, and going on
//!   would silently drop records that were acknowledged.

use std::path::{Path, PathBuf};

use super::segment::{check_header, list_segments, scan};
use super::snapshot;
use super::{CutReport, JournalError, Lsn, Recovered};

/// What `open` needs besides the records: where appending resumes.
pub(super) struct Opened {
    pub recovered: Recovered,
    /// The segment to append to (path, first Lsn, records, good length), or
    /// None when a new one starts at `next_lsn`.
    pub active: Option<(PathBuf, Lsn, u64, u64)>,
    pub next_lsn: Lsn,
}

pub(super) fn recover(dir: &Path) -> Result<Opened, JournalError> {
    remove_temp_files(dir)?;
    let snapshot = newest_good_snapshot(dir)?;
    let base = snapshot.as_ref().map_or(0, |(lsn, _)| *lsn);
    let need = base + 1;
    let segments = list_segments(dir)?;
    let mut recovered = Recovered {
        snapshot,
        records: Vec::new(),
        cut: None,
    };
    let Some(start) = segments.iter().rposition(|(first, _)| *first <= need) else {
        return match segments.first() {
            None => Ok(Opened {
                recovered,
                active: None,
                next_lsn: need,
            }),
            Some((found, _)) => Err(JournalError::MissingSegment {
                dir: dir.to_owned(),
                expected: need,
                found: *found,
            }),
        };
    };
    let mut next = segments[start].0;
    let mut active = None;
    let last = segments.len() - 1;
    for (i, (first, path)) in segments.iter().enumerate().skip(start) {
        if *first > next {
            return Err(JournalError::MissingSegment {
                dir: dir.to_owned(),
                expected: next,
                found: *first,
            });
        }
        if *first < next {
            return Err(JournalError::Corrupt {
                path: path.clone(),
                offset: 0,
                what: format!(
                    "starts at Lsn {first}, but the segment before it ends at Lsn {}",
                    next.saturating_sub(1)
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| JournalError::io(path, e))?;
        check_header(path, &bytes, *first)?;
        let found = scan(&bytes);
        let mut good_len = bytes.len() as u64;
        if let Some(tail) = found.bad_tail {
            if i != last {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: tail.offset,
                    what: format!(
                        "{} (not the last segment: refusing to drop the records after it)",
                        tail.what
                    ),
                });
            }
            let cut = CutReport {
                segment: path.clone(),
                offset: tail.offset,
                bytes: bytes.len() as u64 - tail.offset,
                records: tail.records,
                reason: tail.what,
                last_good: (first + found.records.len() as u64).saturating_sub(1),
            };
            cut_tail(path, tail.offset)?;
            tracing::warn!(
                segment = %path.display(),
                offset = cut.offset,
                bytes = cut.bytes,
                records = cut.records,
                reason = %cut.reason,
                last_good_lsn = cut.last_good,
                "journal: cut a torn or corrupt tail of the last segment"
            );
            good_len = tail.offset;
            recovered.cut = Some(cut);
        }
        for (n, &(at, len)) in found.records.iter().enumerate() {
            let lsn = first + n as u64;
            if lsn > base {
                recovered.records.push((lsn, bytes[at..at + len].to_vec()));
            }
        }
        next = first + found.records.len() as u64;
        if i == last {
            active = Some((path.clone(), *first, found.records.len() as u64, good_len));
        }
    }
    // Under `Never`, the snapshot (always fsynced) may be ahead of what the
    // segments kept after a power loss: appending resumes after the snapshot,
    // in a new segment so that Lsns and positions stay in step.
    if next <= base {
        tracing::warn!(
            snapshot = base,
            last_record = next.saturating_sub(1),
            "journal: the segments end before the snapshot (records written without fsync \
             were lost); resuming after the snapshot"
        );
        return Ok(Opened {
            recovered,
            active: None,
            next_lsn: need,
        });
    }
    Ok(Opened {
        recovered,
        active,
        next_lsn: next,
    })
}

/// The newest snapshot that reads back whole, with its Lsn. An
/// unreadable one is skipped with a warning: the one before it and the
/// segments kept for it give the same state. A newer format is refused.
pub(super) fn newest_good_snapshot(dir: &Path) -> Result<Option<(Lsn, Vec<u8>)>, JournalError> {
    for (lsn, path) in snapshot::list_snapshots(dir)? {
        match snapshot::read(&path, lsn) {
            Ok(bytes) => return Ok(Some((lsn, bytes))),
            Err(e @ JournalError::NewerFormat { .. }) => return Err(e),
            Err(e) => tracing::warn!(
                snapshot = %path.display(),
                error = %e,
                "journal: skipping an unreadable snapshot; trying the one before it"
            ),
        }
    }
    Ok(None)
}

fn cut_tail(path: &Path, offset: u64) -> Result<(), JournalError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io(path, e))?;
    file.set_len(offset)
        .and_then(|()| file.sync_all())
        .map_err(|e| JournalError::io(path, e))
}

/// Snapshots and segments half-made when a crash came (`*.tmp`).
fn remove_temp_files(dir: &Path) -> Result<(), JournalError> {
    for entry in std::fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))? {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") && (name.starts_with("wal-") || name.starts_with("snap-")) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
            tracing::info!(file = %path.display(), "journal: removed an unfinished file");
        }
    }
    Ok(())
}

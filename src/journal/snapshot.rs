//! Snapshot files: the caller's whole state at one Lsn, written atomically,
//! so replay starts there instead of at Lsn 1 and older segments can go.
//!
//! ```text
//! snapshot = magic "SWBDSNP\0" (8) | version u32 LE | Lsn u64 LE | length u64 LE | crc32c of the payload u32 LE | payload
//! ```
//!
//! Named `snap-<Lsn, 20 digits>.snap`. Written as `<name>.tmp`, fsynced,
//! renamed, and the directory fsynced: a crash leaves either the whole
//! snapshot or none (a stray `.tmp` is removed at the next open). The two
//! newest snapshots are kept, and the segments the older of them needs: if
//! the newest one turns out unreadable, recovery falls back to the other and
//! replays more, instead of refusing to start.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::segment::{list_segments, FORMAT_VERSION};
use super::{sync_dir, JournalError, Lsn};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SWBDSNP\0";
const HEADER_LEN: usize = 32;
/// Snapshots kept on disk (see the module doc).
pub const KEEP: usize = 2;

pub fn snapshot_name(lsn: Lsn) -> String {
    format!("snap-{lsn:020}.snap")
}

pub fn parse_snapshot_name(name: &str) -> Option<Lsn> {
    super::lsn_in_name(name, "snap-", ".snap")
}

/// Every snapshot file of the directory, newest first.
pub fn list_snapshots(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, JournalError> {
    let mut out = super::files_by_lsn(dir, parse_snapshot_name)?;
    out.sort_unstable_by_key(|(lsn, _)| std::cmp::Reverse(*lsn));
    Ok(out)
}

/// The snapshot file's bytes for `payload` at `lsn`: the header, then the
/// payload (what [`write`] puts on disk, and what a cluster's active node
/// uploads).
pub fn encode(lsn: Lsn, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Write `bytes` as the snapshot at `lsn`: tmp file, fsync, rename, fsync
/// the directory.
pub fn write(dir: &Path, lsn: Lsn, bytes: &[u8]) -> Result<PathBuf, JournalError> {
    let path = dir.join(snapshot_name(lsn));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(lsn)));
    let file = encode(lsn, bytes);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&file)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(JournalError::io(&tmp, e));
    }
    std::fs::rename(&tmp, &path).map_err(|e| JournalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Read and check one snapshot file.
pub fn read(path: &Path, named: Lsn) -> Result<Vec<u8>, JournalError> {
    let bytes = std::fs::read(path).map_err(|e| JournalError::io(path, e))?;
    decode(bytes, named, path)
}

/// Check a snapshot file's bytes (`path`: where they come from, for the
/// errors) and return its payload: the magic bytes, a format this build
/// reads, the Lsn it is `named` by, the length and the checksum.
pub fn decode(bytes: Vec<u8>, named: Lsn, path: &Path) -> Result<Vec<u8>, JournalError> {
    let corrupt = |what: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        what,
    };
    if bytes.len() < 12 || bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a snapshot (bad magic bytes)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(JournalError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 || bytes.len() < HEADER_LEN {
        return Err(corrupt("bad header".into()));
    }
    let lsn = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
    if lsn != named {
        return Err(corrupt(format!(
            "header says Lsn {lsn}, the file name {named}"
        )));
    }
    if len != (bytes.len() - HEADER_LEN) as u64 {
        return Err(corrupt(format!(
            "header says {len} bytes, the file holds {}",
            bytes.len() - HEADER_LEN
        )));
    }
    if crc32c::crc32c(&bytes[HEADER_LEN..]) != crc {
        return Err(corrupt("snapshot checksum mismatch".into()));
    }
    let mut bytes = bytes;
    bytes.drain(..HEADER_LEN);
    Ok(bytes)
}

/// After a new snapshot: drop snapshots beyond the [`KEEP`] newest, and the
/// segments wholly before the oldest one kept (a segment is wholly before
/// Lsn L when the next segment starts at or before L + 1; the last segment,
/// the one being written, never is). Returns the files removed.
pub fn prune(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let snapshots = list_snapshots(dir)?;
    let mut removed = Vec::new();
    let Some(&(oldest_kept, _)) = snapshots.get(KEEP - 1).or(snapshots.last()) else {
        return Ok(removed);
    };
    for (_, path) in snapshots.iter().skip(KEEP) {
        std::fs::remove_file(path).map_err(|e| JournalError::io(path, e))?;
        removed.push(path.clone());
    }
    let segments = list_segments(dir)?;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if *next_first <= oldest_kept + 1 {
            std::fs::remove_file(path).map_err(|e| JournalError::io(path, e))?;
            removed.push(path.clone());
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

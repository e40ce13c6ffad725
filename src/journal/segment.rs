//! The on-disk format of segment files: their names, their header, and the
//! framing of one record. Reading a whole segment back (with the checks that
//! decide between "torn tail" and "corrupt") lives here too, so the format is
//! written down in one file.
//!
//! ```text
//! segment  = header record*
//! header   = magic "SWBDWAL\0" (8) | version u32 LE | first Lsn u64 LE | crc32c of the previous 20 bytes u32 LE
//! record   = length u32 LE (1..=MAX_RECORD) | crc32c of the payload u32 LE | payload
//! ```
//!
//! A record does not carry its Lsn: the n-th record of the segment whose
//! first Lsn is F has Lsn F + n. The file's name repeats F
//! (`wal-00000000000000000001.seg`) so a gap is visible from a listing.
//! A length of 0 is never written: a tail of zeros (what some file systems
//! leave after a crash) would otherwise read as valid empty records.

use std::path::{Path, PathBuf};

use super::{JournalError, Lsn};
use crate::codec::MAX_RECORD;

/// The format version this build writes and reads. A file with a higher one
/// comes from a newer Switchboard and is refused, never guessed at.
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_MAGIC: [u8; 8] = *b"SWBDWAL\0";
pub const HEADER_LEN: usize = 24;
/// Length and checksum in front of every payload.
pub const FRAME_OVERHEAD: usize = 8;

/// `wal-<first Lsn, 20 digits>.seg`: sorts by name as by Lsn.
pub fn segment_name(first: Lsn) -> String {
    format!("wal-{first:020}.seg")
}

/// The first Lsn a segment file's name says, or None for any other file.
pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    super::lsn_in_name(name, "wal-", ".seg")
}

/// Every segment file of the directory, sorted by first Lsn.
pub fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, JournalError> {
    let mut out = super::files_by_lsn(dir, parse_segment_name)?;
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

pub fn encode_header(first: Lsn) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Check a segment's header against its name. The version is looked at
/// before the checksum: a newer format may lay out the rest differently.
pub fn check_header(path: &Path, bytes: &[u8], named_first: Lsn) -> Result<(), JournalError> {
    let corrupt = |what: &str| JournalError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        what: what.to_owned(),
    };
    if bytes.len() < 12 || bytes[..8] != SEGMENT_MAGIC {
        return Err(corrupt("not a journal segment (bad magic bytes)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version > FORMAT_VERSION {
        return Err(JournalError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt("format version 0"));
    }
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("header cut short"));
    }
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[..20]) {
        return Err(corrupt("header checksum mismatch"));
    }
    let first = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if first != named_first {
        return Err(corrupt(&format!(
            "header says first Lsn {first}, the file name {named_first}"
        )));
    }
    Ok(())
}

/// Append one framed record to `buf`.
pub fn encode_frame(buf: &mut Vec<u8>, payload: &[u8], crc: u32) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Why reading records stopped before the end of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTail {
    /// Offset of the first byte not part of a good record.
    pub offset: u64,
    pub what: String,
    /// Records (whole or torn) in the bytes from `offset` on, counted by
    /// following their length prefixes as far as they look sane: what the
    /// operator is told was cut.
    pub records: u64,
}

/// The records of one segment, read from its bytes.
pub struct Scan {
    /// (offset of the payload, its length), in order.
    pub records: Vec<(usize, usize)>,
    /// None: every byte after the header is part of a good record.
    pub bad_tail: Option<BadTail>,
}

/// Read every good record after the header; stop at the first that is torn
/// (runs past the end) or fails its checks.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    let bad_tail = loop {
        if at == bytes.len() {
            break None;
        }
        match frame_at(bytes, at) {
            Ok(len) => {
                records.push((at + FRAME_OVERHEAD, len));
                at += FRAME_OVERHEAD + len;
            }
            Err(what) => {
                break Some(BadTail {
                    offset: at as u64,
                    what,
                    records: count_frames(bytes, at),
                })
            }
        }
    };
    Scan { records, bad_tail }
}

/// The payload length of a good record at `at`, or why it is not one.
fn frame_at(bytes: &[u8], at: usize) -> Result<usize, String> {
    let rest = &bytes[at..];
    if rest.len() < FRAME_OVERHEAD {
        return Err(format!(
            "torn record: {} bytes of an 8-byte frame header",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD {
        return Err(format!("record length {len} out of range 1..={MAX_RECORD}"));
    }
    let Some(payload) = rest.get(FRAME_OVERHEAD..FRAME_OVERHEAD + len) else {
        return Err(format!(
            "torn record: {} of {len} payload bytes",
            rest.len() - FRAME_OVERHEAD
        ));
    };
    if crc32c::crc32c(payload) != crc {
        return Err("record checksum mismatch".to_owned());
    }
    Ok(len)
}

/// How many frames the bytes from `at` hold, following length prefixes (a
/// bad checksum does not stop the count; a length out of range or past the
/// end counts as one last torn record).
fn count_frames(bytes: &[u8], mut at: usize) -> u64 {
    let mut n = 0;
    while at < bytes.len() {
        n += 1;
        let rest = &bytes[at..];
        if rest.len() < FRAME_OVERHEAD {
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > MAX_RECORD || rest.len() < FRAME_OVERHEAD + len {
            break;
        }
        at += FRAME_OVERHEAD + len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: Lsn, payloads: &[&[u8]]) -> Vec<u8> {
        let mut b = encode_header(first).to_vec();
        for p in payloads {
            encode_frame(&mut b, p, crc32c::crc32c(p));
        }
        b
    }

    #[test]
    fn names_sort_as_lsns_and_other_files_are_not_segments() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for other in [
            "wal-1.seg",
            "wal-00000000000000000001.seg.tmp",
            "snap-1",
            "x",
        ] {
            assert_eq!(parse_segment_name(other), None, "{other}");
        }
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn a_good_segment_scans_whole() {
        let b = segment(5, &[b"one", b"two", b"three"]);
        check_header(Path::new("x"), &b, 5).unwrap();
        let s = scan(&b);
        assert!(s.bad_tail.is_none());
        let got: Vec<&[u8]> = s.records.iter().map(|&(o, l)| &b[o..o + l]).collect();
        assert_eq!(got, [&b"one"[..], b"two", b"three"]);
    }

    #[test]
    fn header_checks_name_version_and_checksum() {
        let b = segment(5, &[]);
        let e = check_header(Path::new("x"), &b, 6).unwrap_err();
        assert!(e.to_string().contains("first Lsn 5"), "{e}");
        let mut newer = b.clone();
        newer[8] = 2;
        assert!(matches!(
            check_header(Path::new("x"), &newer, 5),
            Err(JournalError::NewerFormat {
                found: 2,
                supported: 1,
                ..
            })
        ));
        let mut flipped = b.clone();
        flipped[14] ^= 1;
        assert!(matches!(
            check_header(Path::new("x"), &flipped, 5),
            Err(JournalError::Corrupt { .. })
        ));
        assert!(check_header(Path::new("x"), b"SWBDSNP\0\x01\0\0\0", 5).is_err());
    }

    #[test]
    fn torn_and_flipped_tails_say_where_and_how_many() {
        let b = segment(1, &[b"aaaa", b"bbbb", b"cccc"]);
        let second = HEADER_LEN + FRAME_OVERHEAD + 4;
        // Torn in the middle of the third record's payload.
        let torn = &b[..b.len() - 2];
        let s = scan(torn);
        assert_eq!(s.records.len(), 2);
        let tail = s.bad_tail.unwrap();
        assert_eq!(tail.offset as usize, second + FRAME_OVERHEAD + 4);
        assert_eq!(tail.records, 1);
        assert!(tail.what.starts_with("torn record"), "{}", tail.what);
        // A flipped bit in the second record's payload: two records cut.
        let mut flipped = b.clone();
        flipped[second + FRAME_OVERHEAD + 1] ^= 0x10;
        let tail = scan(&flipped).bad_tail.unwrap();
        assert_eq!((tail.offset as usize, tail.records), (second, 2));
        assert_eq!(tail.what, "record checksum mismatch");
        // Zeros after the last record are not empty records.
        let mut zeros = b.clone();
        zeros.extend([0u8; 64]);
        let s = scan(&zeros);
        assert_eq!(s.records.len(), 3);
        assert!(s.bad_tail.unwrap().what.contains("length 0"));
    }
}

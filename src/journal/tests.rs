//! The journal against a real directory: round trips, the damage a crash
//! or a disk can do, snapshots, write failures, and concurrent appenders.

use std::collections::HashSet;
use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use super::segment::{list_segments, HEADER_LEN};
use super::snapshot::list_snapshots;
use super::*;

const CLOSE: Duration = Duration::from_secs(10);

fn cfg(dir: &Path, fsync: Fsync) -> JournalConfig {
    JournalConfig {
        fsync,
        segment_bytes: MIN_SEGMENT_BYTES,
        ..JournalConfig::new(dir)
    }
}

fn batch() -> Fsync {
    Fsync::Batch {
        max_delay: Duration::from_millis(1),
    }
}

/// Record `i`: a size that varies with `i`, its first bytes saying which.
fn payload(i: u64) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(8 + (i as usize * 37) % 300, (i % 251) as u8);
    p
}

/// Open, append records 1..=n, close.
fn write_records(dir: &Path, n: u64) {
    let (j, rec) = Journal::open(cfg(dir, batch())).unwrap();
    assert!(rec.records.is_empty() && rec.snapshot.is_none());
    for i in 1..=n {
        assert_eq!(j.append(&payload(i)).unwrap(), i);
    }
    j.close(CLOSE).unwrap();
}

fn reopen(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
    Journal::open(cfg(dir, batch()))
}

fn lsns(rec: &Recovered) -> Vec<Lsn> {
    rec.records.iter().map(|(l, _)| *l).collect()
}

fn segments(dir: &Path) -> Vec<(Lsn, PathBuf)> {
    list_segments(dir).unwrap()
}

/// Wait (at most 5 s) for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_handle_can_be_shared_between_threads_and_tasks() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    shared::<Journal>();
}

#[test]
fn many_records_round_trip_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 2000);
    let segs = segments(dir.path());
    assert!(segs.len() > 10, "{} segments", segs.len());
    for (first, path) in &segs {
        let len = std::fs::metadata(path).unwrap().len();
        assert!(len <= MIN_SEGMENT_BYTES, "{first}: {len} bytes");
    }
    let (j, rec) = reopen(dir.path()).unwrap();
    assert!(rec.cut.is_none() && rec.snapshot.is_none());
    assert_eq!(lsns(&rec), (1..=2000).collect::<Vec<_>>());
    for (lsn, bytes) in &rec.records {
        assert_eq!(bytes, &payload(*lsn));
    }
    assert_eq!((j.appended(), j.durable()), (2000, 2000));
    // Appending resumes at the next Lsn, in the last segment.
    assert_eq!(j.append(b"after").unwrap(), 2001);
    j.close(CLOSE).unwrap();
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert_eq!(rec.records.last().unwrap(), &(2001, b"after".to_vec()));
    assert_eq!(segments(dir.path()).len(), segs.len());
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 100);
    let (_, last) = segments(dir.path()).pop().unwrap();
    let full = std::fs::metadata(&last).unwrap().len();
    // Tear the last record: 3 bytes of its payload missing.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(full - 3)
        .unwrap();
    let (j, rec) = reopen(dir.path()).unwrap();
    let cut = rec.cut.clone().expect("a cut");
    assert_eq!(lsns(&rec), (1..=99).collect::<Vec<_>>());
    assert_eq!((cut.records, cut.last_good, &cut.segment), (1, 99, &last));
    let last_frame = (payload(100).len() + 8) as u64;
    assert_eq!(cut.offset, full - last_frame);
    assert_eq!(cut.bytes, last_frame - 3);
    assert!(cut.reason.starts_with("torn record"), "{}", cut.reason);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), cut.offset);
    // The next record takes the cut one's Lsn; nothing is cut twice.
    assert_eq!(j.append(b"again").unwrap(), 100);
    j.close(CLOSE).unwrap();
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert!(rec.cut.is_none());
    assert_eq!(rec.records.last().unwrap(), &(100, b"again".to_vec()));
}

#[test]
fn flipped_bits_in_the_last_record_of_the_last_segment_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50);
    let (_, last) = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0x04;
    std::fs::write(&last, &bytes).unwrap();
    let (_j, rec) = reopen(dir.path()).unwrap();
    let cut = rec.cut.expect("a cut");
    assert_eq!((cut.records, cut.last_good), (1, 49));
    assert_eq!(cut.reason, "record checksum mismatch");
    assert_eq!(rec.records.len(), 49);
}

#[test]
fn flipped_bits_in_an_earlier_segment_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 300);
    let segs = segments(dir.path());
    let (_, second) = &segs[1];
    let mut bytes = std::fs::read(second).unwrap();
    bytes[HEADER_LEN + 8 + 3] ^= 0x80;
    std::fs::write(second, &bytes).unwrap();
    let err = reopen(dir.path()).err().expect("refused");
    match &err {
        JournalError::Corrupt { path, offset, .. } => {
            assert_eq!((path, *offset), (second, HEADER_LEN as u64));
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("not the last segment"), "{err}");
    // Nothing was cut: the file is as it was.
    assert_eq!(std::fs::read(second).unwrap(), bytes);
}

#[test]
fn a_missing_middle_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 300);
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[2].1).unwrap();
    match reopen(dir.path()).err().expect("refused") {
        JournalError::MissingSegment {
            expected, found, ..
        } => assert_eq!((expected, found), (segs[2].0, segs[3].0)),
        other => panic!("want MissingSegment, got {other:?}"),
    }
    // The first segment gone, and no snapshot to stand for it: refused too.
    std::fs::remove_file(&segs[0].1).unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(JournalError::MissingSegment { expected: 1, .. })
    ));
}

#[test]
fn a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 10);
    let (_, path) = segments(dir.path()).pop().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(8)).unwrap();
    f.write_all(&7u32.to_le_bytes()).unwrap();
    drop(f);
    let err = reopen(dir.path()).err().expect("refused");
    assert!(
        matches!(
            err,
            JournalError::NewerFormat {
                found: 7,
                supported: FORMAT_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer Switchboard"), "{err}");
}

#[test]
fn a_snapshot_replaces_the_records_before_it_and_frees_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), batch())).unwrap();
    for i in 1..=600 {
        j.append(&payload(i)).unwrap();
    }
    j.wait_durable_blocking(600, Duration::from_secs(5))
        .unwrap();
    let before = segments(dir.path()).len();
    j.write_snapshot(400, b"state at 400").unwrap();
    let after = segments(dir.path());
    assert!(after.len() < before, "{before} -> {}", after.len());
    // What is left starts at or before 401, and no segment ends before 400.
    assert!(after[0].0 <= 401 && after[1].0 > 401, "{after:?}");
    for i in 601..=700 {
        j.append(&payload(i)).unwrap();
    }
    j.write_snapshot(650, b"state at 650").unwrap();
    // The older snapshot is kept, with the segments it needs.
    let snaps: Vec<Lsn> = list_snapshots(dir.path())
        .unwrap()
        .iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(snaps, [650, 400]);
    assert!(segments(dir.path())[0].0 <= 401);
    assert!(matches!(
        j.write_snapshot(500, b"old"),
        Err(JournalError::InvalidSnapshot { lsn: 500, .. })
    ));
    assert!(matches!(
        j.write_snapshot(701, b"future"),
        Err(JournalError::InvalidSnapshot { lsn: 701, .. })
    ));
    j.close(CLOSE).unwrap();

    let (j, rec) = reopen(dir.path()).unwrap();
    assert_eq!(rec.snapshot, Some((650, b"state at 650".to_vec())));
    assert_eq!(lsns(&rec), (651..=700).collect::<Vec<_>>());
    assert_eq!(rec.records[0].1, payload(651));
    assert_eq!(j.append(b"next").unwrap(), 701);
    j.close(CLOSE).unwrap();

    // The newest snapshot damaged: the one before it and its segments.
    let (_, newest) = list_snapshots(dir.path()).unwrap()[0].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&newest, bytes).unwrap();
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert_eq!(rec.snapshot, Some((400, b"state at 400".to_vec())));
    assert_eq!(lsns(&rec), (401..=701).collect::<Vec<_>>());
}

#[test]
fn records_read_back_span_segments_and_stop_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), batch())).unwrap();
    for i in 1..=600 {
        j.append(&payload(i)).unwrap();
    }
    j.wait_durable_blocking(600, Duration::from_secs(5))
        .unwrap();
    assert!(segments(dir.path()).len() > 2, "the records span segments");
    let mut seen = Vec::new();
    j.read_records(150, 550, |lsn, bytes| {
        assert_eq!(bytes, payload(lsn).as_slice(), "record {lsn}");
        seen.push(lsn);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, (151..=550).collect::<Vec<_>>());
    assert!(matches!(
        j.read_records(0, 601, |_, _| Ok(())),
        Err(JournalError::NotAppended { lsn: 601, .. })
    ));
    let err = j
        .read_records(
            0,
            10,
            |lsn, _| if lsn == 5 { Err("no".into()) } else { Ok(()) },
        )
        .unwrap_err();
    assert!(err.to_string().contains(": no"), "{err}");
    // Segments freed by a snapshot are not there to read from.
    j.write_snapshot(400, b"state at 400").unwrap();
    assert!(matches!(
        j.read_records(0, 450, |_, _| Ok(())),
        Err(JournalError::MissingSegment { .. })
    ));
    assert_eq!(j.snapshot_lsn(), 400);
    assert_eq!(
        j.read_snapshot().unwrap(),
        Some((400, b"state at 400".to_vec()))
    );
    j.close(CLOSE).unwrap();
    // After a close nothing is written in the directory any more.
    assert!(matches!(
        j.write_snapshot(500, b"too late"),
        Err(JournalError::Closed)
    ));
    assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
}

#[test]
fn a_snapshot_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), batch())).unwrap();
    j.append(b"one").unwrap();
    j.write_snapshot(1, b"s").unwrap();
    j.close(CLOSE).unwrap();
    let (_, path) = list_snapshots(dir.path()).unwrap()[0].clone();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(JournalError::NewerFormat { found: 2, .. })
    ));
}

/// A full disk: the write fails halfway through a batch; appends are refused
/// while it lasts; the writer retries, then everything accepted before the
/// failure is written once, whole, and appends are taken again.
#[test]
fn a_failing_write_refuses_appends_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Always);
    let faults = c.faults.clone();
    let (j, _) = Journal::open(c).unwrap();
    for i in 1..=10 {
        j.append(&payload(i)).unwrap();
    }
    eventually("the first records durable", || j.durable() == 10);
    faults.fail_writes(3);
    let last = append_until_refused(&j, 11..=20);
    eventually("health unavailable", || j.health().is_err());
    let err = j.append(b"refused").unwrap_err();
    assert!(
        matches!(&err, JournalError::Unavailable { reason } if reason.contains("No space left")),
        "{err:?}"
    );
    assert!(j.durable() < last);
    eventually("recovery", || j.health().is_ok());
    assert_eq!(faults.armed().0, 0);
    j.wait_durable_blocking(last, Duration::from_secs(5))
        .unwrap();
    assert_eq!(j.append(b"accepted again").unwrap(), last + 1);
    j.close(CLOSE).unwrap();
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert!(rec.cut.is_none(), "{:?}", rec.cut);
    assert_eq!(lsns(&rec), (1..=last + 1).collect::<Vec<_>>());
    for (lsn, bytes) in &rec.records[..last as usize] {
        assert_eq!(bytes, &payload(*lsn));
    }
}

/// Append `payload(i)` for each i until the journal refuses one (the writer
/// found the armed fault); returns the last Lsn accepted. Those are the
/// records that must come back, each exactly once.
fn append_until_refused(j: &Journal, range: std::ops::RangeInclusive<u64>) -> Lsn {
    let mut last = j.appended();
    for i in range {
        match j.append(&payload(i)) {
            Ok(lsn) => {
                assert_eq!(lsn, i);
                last = lsn;
            }
            Err(JournalError::Unavailable { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    last
}

/// A failed fsync: the records since the last good one are written again
/// (the kernel may have dropped them), none twice.
#[test]
fn a_failing_fsync_rewrites_what_it_did_not_make_durable() {
    for fsync in [Fsync::Always, batch()] {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), fsync);
        let faults = c.faults.clone();
        let (j, _) = Journal::open(c).unwrap();
        j.append(b"first").unwrap();
        j.wait_durable_blocking(1, Duration::from_secs(5)).unwrap();
        faults.fail_syncs(3);
        let last = append_until_refused(&j, 2..=30);
        eventually("health unavailable", || j.health().is_err());
        assert!(j.durable() < last);
        j.wait_durable_blocking(last, Duration::from_secs(5))
            .unwrap();
        eventually("recovery", || j.health().is_ok());
        j.close(CLOSE).unwrap();
        let (_j, rec) = reopen(dir.path()).unwrap();
        assert!(rec.cut.is_none());
        assert_eq!(lsns(&rec), (1..=last).collect::<Vec<_>>(), "{fsync:?}");
        for (lsn, bytes) in &rec.records[1..] {
            assert_eq!(bytes, &payload(*lsn));
        }
    }
}

/// A disk that stops answering: the writer holds one batch, the queue
/// fills up to its budget, then appends are refused (nothing waits without
/// bound in memory); when the disk answers again everything taken is written.
#[test]
fn a_stalled_disk_fills_the_queue_then_appends_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = JournalConfig {
        queue_bytes: 1000,
        ..cfg(dir.path(), Fsync::Always)
    };
    let faults = c.faults.clone();
    let (j, _) = Journal::open(c).unwrap();
    faults.stall(true);
    // The writer takes the first record and waits on the disk with it.
    j.append(&[1; 100]).unwrap();
    eventually("the writer holding the first record", || {
        j.inner.shared.queue.lock().batch.is_empty()
    });
    // The queue takes 1000 bytes: nine 108-byte frames, not ten.
    for lsn in 2..=10 {
        assert_eq!(j.append(&[2; 100]).unwrap(), lsn);
    }
    let err = j.append(&[3; 100]).unwrap_err();
    assert!(
        matches!(&err, JournalError::Unavailable { reason } if reason.contains("queue full")),
        "{err:?}"
    );
    assert_eq!((j.appended(), j.durable()), (10, 0));
    faults.stall(false);
    j.wait_durable_blocking(10, Duration::from_secs(5)).unwrap();
    assert_eq!(j.append(&[4; 100]).unwrap(), 11);
    // A record larger than the whole budget still goes when nothing waits.
    j.wait_durable_blocking(11, Duration::from_secs(5)).unwrap();
    eventually("an empty queue", || {
        j.inner.shared.queue.lock().batch.is_empty()
    });
    assert_eq!(j.append(&[5; 5000]).unwrap(), 12);
    j.close(CLOSE).unwrap();
}

#[test]
fn close_gives_up_after_its_timeout_while_the_disk_fails() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Always);
    c.faults.fail_writes(u32::MAX);
    let (j, _) = Journal::open(c).unwrap();
    j.append(b"never written").unwrap();
    let err = j.close(Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::CloseTimeout {
                durable: 0,
                appended: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(j.append(b"x"), Err(JournalError::Closed)));
}

#[tokio::test]
async fn wait_durable_resolves_in_lsn_order() {
    for fsync in [Fsync::Always, batch(), Fsync::Never] {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(cfg(dir.path(), fsync)).unwrap();
        let mut watch = j.watch_durable();
        let mut seen = 0;
        for i in 1..=200 {
            let lsn = j.append(&payload(i)).unwrap();
            if i % 20 == 0 {
                j.wait_durable(lsn).await.unwrap();
                // Durable is a prefix: everything before it is too.
                assert!(j.durable() >= lsn);
                let now = *watch.borrow_and_update();
                assert!(now >= seen && now >= lsn, "{fsync:?}: {seen} then {now}");
                seen = now;
            }
        }
        // Already durable: no wait. Not appended: an error, not a hang.
        j.wait_durable(1).await.unwrap();
        assert!(matches!(
            j.wait_durable(999).await,
            Err(JournalError::NotAppended {
                lsn: 999,
                appended: 200
            })
        ));
        let waiter = {
            let j = j.clone();
            let lsn = j.append(b"last").unwrap();
            tokio::spawn(async move { j.wait_durable(lsn).await })
        };
        j.close(CLOSE).unwrap();
        waiter.await.unwrap().unwrap();
        assert_eq!(j.durable(), 201);
    }
}

#[test]
fn concurrent_appenders_get_gap_free_lsns_in_their_own_order() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(cfg(dir.path(), batch())).unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                (0..2500u32)
                    .map(|i| {
                        let mut p = vec![t];
                        p.extend(i.to_le_bytes());
                        j.append(&p).unwrap()
                    })
                    .collect::<Vec<Lsn>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        let got = t.join().unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        all.extend(got);
    }
    assert_eq!(all, (1..=10_000).collect::<HashSet<_>>());
    j.close(CLOSE).unwrap();
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert_eq!(lsns(&rec), (1..=10_000).collect::<Vec<_>>());
    // Each thread's records are in the order it appended them.
    let mut next = [0u32; 4];
    for (_, p) in &rec.records {
        let t = p[0] as usize;
        assert_eq!(u32::from_le_bytes(p[1..5].try_into().unwrap()), next[t]);
        next[t] += 1;
    }
}

#[test]
fn a_second_journal_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path()).unwrap();
    assert!(matches!(
        reopen(dir.path()),
        Err(JournalError::Locked { .. })
    ));
    j.close(CLOSE).unwrap();
    let (j, _) = reopen(dir.path()).unwrap();
    j.close(CLOSE).unwrap();
}

#[test]
fn bad_records_and_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path()).unwrap();
    assert!(matches!(
        j.append(b""),
        Err(JournalError::InvalidRecord { len: 0, .. })
    ));
    assert!(matches!(
        j.append(&vec![0; MAX_RECORD + 1]),
        Err(JournalError::InvalidRecord { .. })
    ));
    assert_eq!(j.append(b"ok").unwrap(), 1);
    j.close(CLOSE).unwrap();
    let small = JournalConfig {
        segment_bytes: 100,
        ..JournalConfig::new(dir.path())
    };
    assert!(matches!(Journal::open(small), Err(JournalError::Config(_))));
}

#[test]
fn a_record_larger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path()).unwrap();
    let big = vec![9u8; 3 * MIN_SEGMENT_BYTES as usize];
    j.append(b"small").unwrap();
    j.append(&big).unwrap();
    j.append(b"small again").unwrap();
    j.close(CLOSE).unwrap();
    assert_eq!(
        segments(dir.path()).iter().map(|s| s.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert_eq!(rec.records[1], (2, big));
}

/// Under `Batch` the writer sleeps until the next fsync is due: records
/// appended meanwhile wait in the queue (no wake-up, no `write` per append),
/// unless the queue passes half its budget; a close takes them at once.
#[test]
fn batch_appends_wait_for_the_next_fsync_round_unless_the_queue_fills() {
    let dir = tempfile::tempdir().unwrap();
    let c = JournalConfig {
        queue_bytes: 1000,
        ..cfg(
            dir.path(),
            Fsync::Batch {
                max_delay: Duration::from_secs(30),
            },
        )
    };
    let (j, _) = Journal::open(c).unwrap();
    // Nothing fsynced yet: the first record is written and fsynced at once.
    j.append(&[1; 100]).unwrap();
    j.wait_durable_blocking(1, Duration::from_secs(5)).unwrap();
    // The next wakes the idle writer, which finds its fsync 30 s away and
    // goes to sleep until then.
    assert_eq!(j.append(&[2; 100]).unwrap(), 2);
    eventually("the writer asleep until its next fsync", || {
        j.inner.shared.queue.lock().sleeping_until_sync
    });
    // Three 108-byte frames in all: under half the budget, left queued.
    for lsn in 3..=4 {
        assert_eq!(j.append(&[2; 100]).unwrap(), lsn);
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!((j.written(), j.durable()), (1, 1));
    assert_eq!(j.inner.shared.queue.lock().batch.frames.len(), 3);
    // The fifth frame takes the queue past 500 bytes: written, not fsynced.
    j.append(&[3; 100]).unwrap();
    assert_eq!(j.append(&[3; 100]).unwrap(), 6);
    eventually("the queue written", || j.written() >= 5);
    assert_eq!(j.durable(), 1, "the fsync is not due for 30 s");
    j.close(CLOSE).unwrap();
    assert_eq!(j.durable(), 6);
    let (_j, rec) = reopen(dir.path()).unwrap();
    assert_eq!(lsns(&rec), (1..=6).collect::<Vec<_>>());
}

/// `health` (one atomic load while appends are taken) still says why they
/// are refused while the writer fails, is Ok again once it works, and is
/// `Closed` after a close.
#[test]
fn health_says_why_appends_are_refused_and_when_they_are_taken_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), Fsync::Always);
    let faults = c.faults.clone();
    let (j, _) = Journal::open(c).unwrap();
    assert!(j.health().is_ok());
    faults.fail_writes(1);
    j.append(&payload(1)).unwrap();
    eventually("health unavailable", || j.health().is_err());
    let err = j.health().unwrap_err();
    assert!(
        matches!(&err, JournalError::Unavailable { reason } if reason.contains("No space left")),
        "{err:?}"
    );
    eventually("recovery", || j.health().is_ok());
    j.wait_durable_blocking(1, Duration::from_secs(5)).unwrap();
    j.close(CLOSE).unwrap();
    assert!(matches!(j.health(), Err(JournalError::Closed)));
}

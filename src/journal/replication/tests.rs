//! The replication gate against a real directory: what is durable when, the
//! feed's contents, its budget, failing for good, and closing.

use std::path::Path;
use std::time::{Duration, Instant};

use super::super::segment::encode_frame;
use super::super::{Faults, Fsync, Journal, JournalConfig, JournalError, Lsn, MIN_SEGMENT_BYTES};
use super::FeedBatch;

const CLOSE: Duration = Duration::from_secs(10);

fn replicated(dir: &Path) -> JournalConfig {
    JournalConfig {
        fsync: Fsync::Always,
        segment_bytes: MIN_SEGMENT_BYTES,
        replicated: true,
        ..JournalConfig::new(dir)
    }
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(8 + (i as usize * 29) % 200, (i % 251) as u8);
    p
}

/// Wait (at most 5 s) for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Take batches from the feed until `upto` is in, checking they follow
/// each other from `from`; returns them.
fn drain(feed: &super::ReplicationFeed, from: Lsn, upto: Lsn) -> Vec<FeedBatch> {
    let mut got: Vec<FeedBatch> = Vec::new();
    eventually("the feed to hold every record", || {
        got.extend(feed.try_recv());
        got.last().is_some_and(|b| b.last() >= upto)
    });
    let mut next = from;
    for b in &got {
        assert_eq!(b.first, next, "batches follow each other");
        next = b.last() + 1;
    }
    got
}

/// The frames of records `from..=upto`, as `encode_frame` writes them.
fn framed(from: Lsn, upto: Lsn) -> Vec<u8> {
    let mut want = Vec::new();
    for i in from..=upto {
        let p = payload(i);
        encode_frame(&mut want, &p, crc32c::crc32c(&p));
    }
    want
}

fn joined(batches: &[FeedBatch]) -> Vec<u8> {
    batches
        .iter()
        .flat_map(|b| b.bytes.iter().copied())
        .collect()
}

#[test]
fn durable_waits_for_both_the_disk_and_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(replicated(dir.path())).unwrap();
    let feed = j.replication_feed().unwrap();
    for i in 1..=20 {
        assert_eq!(j.append(&payload(i)).unwrap(), i);
    }
    let batches = drain(&feed, 1, 20);
    assert_eq!(joined(&batches), framed(1, 20), "the bytes as written");
    for b in &batches {
        let sum: u32 = b.frames.iter().sum();
        assert_eq!(sum as usize, b.bytes.len());
    }
    // Fsynced (Always) but not replicated: nothing durable.
    eventually("the writer to sync", || {
        j.inner
            .shared
            .synced
            .load(std::sync::atomic::Ordering::Acquire)
            == 20
    });
    assert_eq!(j.durable(), 0);
    assert!(j
        .wait_durable_blocking(1, Duration::from_millis(50))
        .is_err());
    j.mark_replicated(7).unwrap();
    assert_eq!(j.durable(), 7);
    assert_eq!(j.replicated(), 7);
    let f = j.replication_figures();
    assert_eq!((f.appended, f.replicated, f.durable, f.lag), (20, 7, 7, 13));
    // Marking back changes nothing; beyond what was handed over is refused.
    j.mark_replicated(3).unwrap();
    assert_eq!(j.durable(), 7);
    assert!(matches!(
        j.mark_replicated(21),
        Err(JournalError::NotAppended { lsn: 21, .. })
    ));
    feed.mark_replicated(20).unwrap();
    assert_eq!(j.durable(), 20);
    assert_eq!(j.replication_figures().unreplicated_bytes, 0);
    j.close(CLOSE).unwrap();
}

#[test]
fn replicated_before_the_local_fsync_is_not_durable_yet() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    faults.stall(true);
    let (j, _) = Journal::open(JournalConfig {
        faults: faults.clone(),
        ..replicated(dir.path())
    })
    .unwrap();
    let feed = j.replication_feed().unwrap();
    j.append(b"first").unwrap();
    // The writer stalls in its write: nothing handed over, nothing durable.
    assert!(feed.try_recv().is_empty());
    assert!(j.mark_replicated(1).is_err(), "not handed over yet");
    faults.stall(false);
    drain(&feed, 1, 1);
    j.mark_replicated(1).unwrap();
    eventually("durable once synced too", || j.durable() == 1);
    j.close(CLOSE).unwrap();
}

#[test]
fn records_appended_before_the_replicator_attaches_are_in_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    // A journal with records from before: they count as replicated.
    {
        let (j, _) = Journal::open(replicated(dir.path())).unwrap();
        let feed = j.replication_feed().unwrap();
        for i in 1..=5 {
            j.append(&payload(i)).unwrap();
        }
        drain(&feed, 1, 5);
        j.mark_replicated(5).unwrap();
        j.close(CLOSE).unwrap();
    }
    let (j, rec) = Journal::open(replicated(dir.path())).unwrap();
    assert_eq!(rec.records.len(), 5);
    assert_eq!((j.durable(), j.replicated()), (5, 5));
    for i in 6..=30 {
        assert_eq!(j.append(&payload(i)).unwrap(), i);
    }
    eventually("written", || j.written() == 30);
    let feed = j.replication_feed().unwrap();
    assert!(
        matches!(j.replication_feed(), Err(JournalError::Config(_))),
        "taken once"
    );
    let batches = drain(&feed, 6, 30);
    assert_eq!(joined(&batches), framed(6, 30));
    j.mark_replicated(30).unwrap();
    eventually("durable once fsynced too", || j.durable() == 30);
    j.close(CLOSE).unwrap();
}

#[test]
fn records_written_again_after_a_failed_fsync_are_handed_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let (j, _) = Journal::open(JournalConfig {
        faults: faults.clone(),
        ..replicated(dir.path())
    })
    .unwrap();
    let feed = j.replication_feed().unwrap();
    faults.fail_syncs(2);
    for i in 1..=10 {
        // A failed fsync refuses appends until its retry succeeds; a client
        // tries again, and so does this test.
        let mut taken = None;
        eventually("an append taken", || match j.append(&payload(i)) {
            Ok(lsn) => {
                taken = Some(lsn);
                true
            }
            Err(JournalError::Unavailable { .. }) => false,
            Err(e) => panic!("append {i}: {e}"),
        });
        assert_eq!(taken, Some(i));
    }
    eventually("the faults to be used", || faults.armed() == (0, 0));
    let batches = drain(&feed, 1, 10);
    assert_eq!(joined(&batches), framed(1, 10));
    j.mark_replicated(10).unwrap();
    eventually("durable after the retries", || j.durable() == 10);
    j.close(CLOSE).unwrap();
}

#[test]
fn a_replica_falling_behind_spends_the_queue_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(JournalConfig {
        queue_bytes: 1000,
        ..replicated(dir.path())
    })
    .unwrap();
    let feed = j.replication_feed().unwrap();
    let record = [7u8; 92]; // 100 bytes framed
    for i in 1..=10 {
        assert_eq!(j.append(&record).unwrap(), i);
    }
    eventually("all handed over", || j.written() == 10);
    match j.append(&record) {
        Err(JournalError::Unavailable { reason }) => {
            assert!(reason.contains("waiting for replication"), "{reason}")
        }
        other => panic!("a full budget refuses, got {other:?}"),
    }
    assert_eq!(j.appended(), 10, "no Lsn used by the refusal");
    // health() speaks of the writer, not the budget: still Ok.
    assert!(j.health().is_ok());
    j.mark_replicated(3).unwrap();
    assert_eq!(j.replication_figures().unreplicated_bytes, 700);
    assert_eq!(j.append(&record).unwrap(), 11);
    drop(feed);
    j.close(Duration::from_millis(100)).unwrap_err();
}

#[tokio::test]
async fn a_failed_journal_refuses_everything_and_stops_durability() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(replicated(dir.path())).unwrap();
    let feed = j.replication_feed().unwrap();
    for i in 1..=4 {
        j.append(&payload(i)).unwrap();
    }
    let waiter = {
        let j = j.clone();
        tokio::spawn(async move { j.wait_durable(4).await })
    };
    let mut got = Vec::new();
    while got.last().is_none_or(|b: &FeedBatch| b.last() < 4) {
        got.extend(
            tokio::time::timeout(Duration::from_secs(5), feed.recv())
                .await
                .expect("batches")
                .expect("open"),
        );
    }
    j.mark_replicated(2).unwrap();
    tokio::time::timeout(Duration::from_secs(5), j.wait_durable(2))
        .await
        .expect("fsynced")
        .unwrap();
    feed.fail("fenced off: another node is active");
    let unavailable = |r: Result<_, JournalError>| match r {
        Err(JournalError::Unavailable { reason }) => reason.contains("another node is active"),
        _ => false,
    };
    assert!(unavailable(j.health()));
    assert!(unavailable(j.append(b"more").map(drop)));
    assert!(unavailable(
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is answered")
            .unwrap()
    ));
    // Nothing more becomes durable, whatever is marked.
    j.mark_replicated(4).unwrap();
    assert_eq!(j.durable(), 2);
    j.fail("a second reason");
    assert!(unavailable(j.health()), "the first reason stays");
    assert!(feed.is_finished());
    assert!(feed.recv().await.is_none());
    assert!(unavailable(j.close(CLOSE)));
}

#[test]
fn fail_works_without_replication_too() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(JournalConfig::new(dir.path())).unwrap();
    assert!(matches!(j.replication_feed(), Err(JournalError::Config(_))));
    assert!(j.mark_replicated(0).is_err());
    j.append(b"one").unwrap();
    j.wait_durable_blocking(1, CLOSE).unwrap();
    j.fail("stop");
    assert!(matches!(j.health(), Err(JournalError::Unavailable { reason }) if reason == "stop"));
    assert!(matches!(
        j.append(b"two"),
        Err(JournalError::Unavailable { .. })
    ));
    assert_eq!(j.durable(), 1);
}

#[tokio::test]
async fn close_waits_for_the_replica_and_ends_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(replicated(dir.path())).unwrap();
    let feed = j.replication_feed().unwrap();
    for i in 1..=3 {
        j.append(&payload(i)).unwrap();
    }
    let replicator = tokio::spawn(async move {
        let mut last = 0;
        while let Some(batches) = feed.recv().await {
            last = batches.last().unwrap().last();
            feed.mark_replicated(last).unwrap();
        }
        last
    });
    let closing = {
        let j = j.clone();
        tokio::task::spawn_blocking(move || j.close(CLOSE))
    };
    closing.await.unwrap().unwrap();
    assert_eq!(j.durable(), 3);
    let last = tokio::time::timeout(Duration::from_secs(5), replicator)
        .await
        .expect("the feed ends after the close")
        .unwrap();
    assert_eq!(last, 3);
}

#[test]
fn close_gives_up_on_an_absent_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(replicated(dir.path())).unwrap();
    let feed = j.replication_feed().unwrap();
    j.append(b"one").unwrap();
    let started = Instant::now();
    match j.close(Duration::from_millis(200)) {
        Err(JournalError::CloseTimeout {
            durable: 0,
            appended: 1,
            ..
        }) => {}
        other => panic!("close must time out, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(feed.is_finished());
}

//! The standby's side of cluster mode against a real `nats-server`
//! (`tests/common/nats.rs` starts one per test): the `core` lease (one
//! holder, failover on a crash, handover on release, a stalled holder,
//! a NATS restart), the follower copying the core subject into a local
//! journal (same Lsns and bytes; gaps and bad checksums stop it; `finish` at
//! a claim; the old journal moved aside), uploaded files in NATS, and the
//! active node's snapshot upload when its newest snapshot is unreadable.
//! Leases last 2 s here unless a test says otherwise.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::header::HeaderMap;
use bytes::Bytes;
use switchboard::attachments::{AttachmentStore, FileReplica, Uploader};
use switchboard::cluster::{
    Cluster, ClusterSettings, CoreLease, Files, FollowError, Follower, LossCause, CLAIM_HEADER,
    CORE_KEY, LSN_HEADER, NODE_HEADER,
};
use switchboard::journal::record::RecordRef;
use switchboard::journal::{Journal, JournalConfig, Lsn};
use switchboard::protocol::{AttachmentMeta, Id};
use tokio::time::Instant;

use common::nats::NatsServer;

const TTL: Duration = Duration::from_secs(2);

/// Long enough for any step of these tests on a loaded machine; every wait
/// ends as soon as its condition holds.
const PATIENCE: Duration = Duration::from_secs(20);

fn settings(url: &str, id: &str, ttl: Duration) -> ClusterSettings {
    let mut s = ClusterSettings::new(url, id);
    s.lease_ttl = ttl;
    s
}

async fn connect(url: &str, id: &str) -> Cluster {
    Cluster::connect(settings(url, id, TTL))
        .await
        .expect("connect")
}

/// Poll `cond` every 20 ms until it holds; fail with `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who the `core` key names now, if anyone, with its revision.
async fn core_holder(cluster: &Cluster) -> Option<(String, u64)> {
    cluster
        .leases()
        .entry(CORE_KEY)
        .await
        .expect("read the core key")
        .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        .map(|e| (String::from_utf8_lossy(&e.value).into_owned(), e.revision))
}

/// Poll the async `cond` every 20 ms until it holds; fail with `what`
/// after `limit`.
async fn wait_until_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- the lease

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_the_core_lease_and_the_others_wait_until_it_is_dropped() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (a, b) = (connect(&url, "a").await, connect(&url, "b").await);
    let lease_a = CoreLease::acquire(&a).await.expect("a acquires");
    assert!(lease_a.holds());
    let waiting = tokio::spawn(async move { CoreLease::acquire(&b).await.map(|l| (l, b)) });
    let renew = a.settings().renew_every();
    // Several renewals: a keeps it, b goes on waiting.
    tokio::time::sleep(renew * 6).await;
    assert!(!waiting.is_finished(), "b took a held lease");
    assert!(lease_a.holds());
    let (holder, revision) = core_holder(&a).await.expect("the key is there");
    assert_eq!(holder, "a");
    assert!(revision > 1, "a renewed its lease (revision {revision})");

    // Gone without a word, as a crash: the key expires after the TTL.
    let dropped = Instant::now();
    drop(lease_a);
    // The key lapses within the TTL of its last renewal; b's next try (one
    // renewal interval) takes it; a second of slack for the server's expiry
    // timer and a loaded machine.
    let bound = TTL + renew + Duration::from_secs(1);
    let (lease_b, b) = tokio::time::timeout(bound, waiting)
        .await
        .unwrap_or_else(|_| panic!("b did not take over within {bound:?}"))
        .expect("task")
        .expect("b acquires");
    eprintln!("failover of the core lease: {:?}", dropped.elapsed());
    assert!(lease_b.holds());
    assert_eq!(core_holder(&b).await.map(|h| h.0).as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_core_lease_is_taken_within_one_renewal_interval() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (a, b) = (connect(&url, "a").await, connect(&url, "b").await);
    let lease_a = CoreLease::acquire(&a).await.expect("a acquires");
    let waiting = tokio::spawn(async move { CoreLease::acquire(&b).await });
    let renew = a.settings().renew_every();
    tokio::time::sleep(renew * 2).await;
    assert!(!waiting.is_finished());
    let released = Instant::now();
    lease_a.release().await;
    let bound = renew + Duration::from_millis(500);
    let lease_b = tokio::time::timeout(bound, waiting)
        .await
        .unwrap_or_else(|_| panic!("b did not take the released lease within {bound:?}"))
        .expect("task")
        .expect("b acquires");
    eprintln!(
        "handover of the released core lease: {:?}",
        released.elapsed()
    );
    assert!(lease_b.holds());
    assert_eq!(core_holder(&a).await.map(|h| h.0).as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_the_ttl_loses_the_lease_and_never_renews_it_again() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (a, b) = (connect(&url, "a").await, connect(&url, "b").await);
    let lease_a = CoreLease::acquire(&a).await.expect("a acquires");
    let paused = Instant::now();
    lease_a.pause();
    // By its own clock the lease lapses 7/8 TTL after its last confirmed
    // renewal: lost() says so even though the renewal task is stalled.
    let cause = tokio::time::timeout(TTL + Duration::from_secs(1), lease_a.lost())
        .await
        .expect("lost() resolves within the TTL");
    assert_eq!(cause, LossCause::Lapsed);
    assert!(
        paused.elapsed() < TTL,
        "lost only after {:?}",
        paused.elapsed()
    );
    assert!(!lease_a.holds());
    // The server expires the key; b takes it.
    let lease_b = tokio::time::timeout(PATIENCE, CoreLease::acquire(&b))
        .await
        .expect("b acquires in time")
        .expect("b acquires");
    // a wakes: it renews nothing, whether the key is free or b's.
    lease_a.resume();
    let (_, before) = core_holder(&a).await.expect("b holds the key");
    tokio::time::sleep(a.settings().renew_every() * 4).await;
    assert!(!lease_a.holds());
    assert_eq!(lease_a.lost().await, LossCause::Lapsed);
    assert!(lease_b.holds());
    let (holder, after) = core_holder(&a).await.expect("b holds the key");
    assert_eq!(holder, "b");
    assert!(after > before, "b renews");

    // The same for a holder that is still within the server's TTL when it
    // wakes but past its own 7/8: nothing is renewed either.
    let (_, at_pause) = core_holder(&a).await.expect("b holds the key");
    lease_b.pause();
    tokio::time::sleep(TTL * 7 / 8 + Duration::from_millis(50)).await;
    lease_b.resume();
    tokio::time::sleep(a.settings().renew_every() * 2).await;
    assert_eq!(lease_b.lost().await, LossCause::Lapsed);
    let now = core_holder(&a).await;
    assert!(
        now.as_ref().is_none_or(|(_, r)| *r == at_pause),
        "renewed after its lease lapsed: {now:?} (revision {at_pause} at the pause)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_refused_is_reported_and_a_fenced_holder_stops_renewing() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = connect(&url, "a").await;
    let lease = CoreLease::acquire(&a).await.expect("a acquires");
    // Someone else rewrites the key: the next renewal is refused.
    a.leases()
        .put(CORE_KEY, Bytes::from_static(b"intruder"))
        .await
        .expect("put");
    let cause = tokio::time::timeout(PATIENCE, lease.lost())
        .await
        .expect("lost() resolves");
    assert_eq!(cause, LossCause::Refused);
    assert!(!lease.holds());
    assert_eq!(
        core_holder(&a).await.map(|h| h.0).as_deref(),
        Some("intruder")
    );

    a.leases().purge(CORE_KEY).await.expect("purge");
    let lease = CoreLease::acquire(&a).await.expect("a acquires again");
    lease.fenced();
    assert!(!lease.holds());
    assert_eq!(lease.lost().await, LossCause::Fenced);
    let (_, revision) = core_holder(&a).await.expect("the key stays");
    tokio::time::sleep(a.settings().renew_every() * 3).await;
    assert_eq!(core_holder(&a).await.map(|h| h.1), Some(revision));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_applied_whose_answer_was_lost_does_not_lose_the_lease() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = connect(&url, "a").await;
    let lease = CoreLease::acquire(&a).await.expect("a acquires");
    // What a renewal timed out here but applied by NATS leaves: the key
    // still names a, one revision on from what a holds.
    let (_, held) = core_holder(&a).await.expect("held");
    let applied = a
        .leases()
        .update(CORE_KEY, Bytes::from_static(b"a"), held)
        .await
        .expect("update");
    // The next renewals go on from there: the lease is kept.
    let every = a.settings().renew_every();
    wait_until_async("renewals after the lost answer", PATIENCE, || async {
        core_holder(&a).await.is_some_and(|(_, r)| r > applied + 1)
    })
    .await;
    assert!(lease.holds());
    assert!(
        tokio::time::timeout(every, lease.lost()).await.is_err(),
        "not lost"
    );
    assert_eq!(core_holder(&a).await.map(|h| h.0).as_deref(), Some("a"));

    // And a release right after another such renewal still hands over at
    // once.
    let (_, now) = core_holder(&a).await.expect("held");
    a.leases()
        .update(CORE_KEY, Bytes::from_static(b"a"), now)
        .await
        .expect("update");
    lease.release().await;
    assert_eq!(core_holder(&a).await, None, "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_keeps_the_core_lease_across_a_nats_restart() {
    // A longer lease, so a restart of the server (and the client's
    // reconnection) fits within it on a loaded machine.
    let ttl = Duration::from_secs(8);
    let mut nats = NatsServer::start();
    let url = nats.url();
    let a = Cluster::connect(settings(&url, "a", ttl))
        .await
        .expect("a connects");
    let b = Cluster::connect(settings(&url, "b", ttl))
        .await
        .expect("b connects");
    let lease_a = CoreLease::acquire(&a).await.expect("a acquires");
    let waiting = tokio::spawn(async move { CoreLease::acquire(&b).await });
    let (_, before) = core_holder(&a).await.expect("held");

    let down = Instant::now();
    tokio::task::block_in_place(|| nats.restart());
    let restarted = down.elapsed();

    // a renews at its revision again; b never gets it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let read = tokio::time::timeout(Duration::from_secs(1), a.leases().entry(CORE_KEY)).await;
        if let Ok(Ok(Some(e))) = read {
            assert_eq!(&e.value[..], b"a");
            if e.revision > before {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a did not renew after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "nats-server restarted in {restarted:?}; the core lease renewed {:?} after it went down",
        down.elapsed()
    );
    tokio::time::sleep(a.settings().renew_every() * 2).await;
    assert!(
        lease_a.holds(),
        "a lost the lease over a restart within the TTL"
    );
    assert!(!waiting.is_finished(), "b took the lease over a restart");
    let no_loss = tokio::time::timeout(Duration::from_millis(10), lease_a.lost()).await;
    assert!(no_loss.is_err(), "a reported a loss: {no_loss:?}");
}

// ------------------------------------------------------------- the follower

/// The active side's wire format, written by hand: records of consecutive
/// Lsns from `first`, framed as in a journal segment, in one message.
async fn publish_batch(cluster: &Cluster, first: Lsn, records: &[Vec<u8>]) -> u64 {
    let mut payload = Vec::new();
    for r in records {
        payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
        payload.extend_from_slice(&crc32c::crc32c(r).to_le_bytes());
        payload.extend_from_slice(r);
    }
    let mut headers = HeaderMap::new();
    headers.insert(LSN_HEADER, first.to_string().as_str());
    headers.insert(NODE_HEADER, "writer");
    publish(cluster, headers, payload).await
}

async fn publish(cluster: &Cluster, headers: HeaderMap, payload: Vec<u8>) -> u64 {
    cluster
        .jetstream()
        .publish_with_headers(cluster.settings().core_subject(), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

/// A claim marker, as a new active node's fenced writer writes it.
async fn claim(cluster: &Cluster) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert(CLAIM_HEADER, "new-active");
    publish(cluster, headers, Vec::new()).await
}

/// A real journal record (the follower decodes each one): a webhook event
/// with a body of `size` bytes, numbered `n`.
fn record(n: u64, size: usize) -> Vec<u8> {
    let id = format!("ev_{n}");
    let body = vec![(n % 251) as u8; size];
    switchboard::codec::encode(&RecordRef::WebhookQueued {
        url: "https://hooks.example.com/in",
        id: &id,
        lane: n,
        body: &body,
        at: SystemTime::UNIX_EPOCH,
    })
    .expect("encode")
}

fn records(from: u64, n: u64) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| record(i, (i as usize * 37) % 700))
        .collect()
}

fn journal_config(data: &Path) -> JournalConfig {
    JournalConfig::new(data.join("journal"))
}

fn replay() -> switchboard::snapshot::ReplaySettings {
    switchboard::snapshot::ReplaySettings::of(&switchboard::config::Config::default())
}

/// What `Journal::open` recovers from `dir`, as (Lsn, bytes).
fn recover(dir: &Path) -> Vec<(Lsn, Vec<u8>)> {
    let (journal, recovered) = Journal::open(JournalConfig::new(dir)).expect("open");
    journal.close(Duration::from_secs(10)).expect("close");
    recovered.records
}

fn numbered(from: Lsn, records: &[Vec<u8>]) -> Vec<(Lsn, Vec<u8>)> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| (from + i as u64, r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_copies_every_record_with_its_lsn_and_recovers_exactly_them() {
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let data = tempfile::tempdir().expect("temp dir");
    // Before the standby starts: one record, then a batch.
    let mut all = records(1, 1);
    all.extend(records(2, 40));
    publish_batch(&cluster, 1, &all[..1]).await;
    publish_batch(&cluster, 2, &all[1..]).await;
    // A partition's event in the same stream: not the core subject.
    cluster
        .event_log()
        .writer(switchboard::cluster::Partition::new(3).expect("p"), None)
        .await
        .expect("partition writer")
        .append(Bytes::from_static(b"not core"))
        .await
        .expect("append");

    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    wait_until("the first 41 records copied", PATIENCE, || {
        follower.copied() == 41
    })
    .await;
    // While it runs: more batches, a claim marker between them (an earlier
    // take-over; skipped), and many records quickly.
    let mut next = 42;
    for n in [1, 3, 200] {
        let batch = records(next, n);
        publish_batch(&cluster, next, &batch).await;
        all.extend(batch);
        next += n;
        claim(&cluster).await;
    }
    let started = Instant::now();
    for _ in 0..100 {
        let batch = records(next, 200);
        publish_batch(&cluster, next, &batch).await;
        all.extend(batch);
        next += 200;
    }
    let last = next - 1;
    wait_until("every record copied", PATIENCE, || {
        follower.copied() == last
    })
    .await;
    eprintln!(
        "20,000 records in 100 messages written and copied in {:?}",
        started.elapsed()
    );
    let upto = claim(&cluster).await;
    assert_eq!(follower.finish(upto).await.expect("finish"), last);
    let recovered = recover(&data.path().join("journal"));
    assert_eq!(recovered.len(), all.len());
    assert!(recovered == numbered(1, &all), "the records differ");
}

#[tokio::test]
async fn finish_at_a_claim_copies_everything_before_it_and_nothing_after() {
    // A current-thread runtime: the follower's task cannot run before
    // `finish` has set its limit, so the records after the claim are
    // there to be (wrongly) copied if the limit did not hold.
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let data = tempfile::tempdir().expect("temp dir");
    let before = records(1, 25);
    publish_batch(&cluster, 1, &before[..10]).await;
    publish_batch(&cluster, 11, &before[10..]).await;
    let upto = claim(&cluster).await;
    publish_batch(&cluster, 26, &records(26, 5)).await;
    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    assert_eq!(follower.finish(upto).await.expect("finish"), 25);
    assert!(recover(&data.path().join("journal")) == numbered(1, &before));

    // Nothing at all before the claim: an empty journal.
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let data = tempfile::tempdir().expect("temp dir");
    let upto = claim(&cluster).await;
    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    assert_eq!(follower.finish(upto).await.expect("finish"), 0);
    assert!(recover(&data.path().join("journal")).is_empty());
}

/// Start a follower on a fresh prefix of `nats`, publish `bad` after two
/// good records, and return what it stopped with.
async fn stopped_by(
    nats: &NatsServer,
    prefix: &str,
    bad: impl AsyncFnOnce(&Cluster),
) -> (String, FollowError, Vec<(Lsn, Vec<u8>)>) {
    let mut s = settings(&nats.url(), "standby", TTL);
    s.prefix = prefix.to_owned();
    let cluster = Cluster::connect(s).await.expect("connect");
    let data = tempfile::tempdir().expect("temp dir");
    let good = records(1, 2);
    publish_batch(&cluster, 1, &good).await;
    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    bad(&cluster).await;
    // And a good one after it, which must not be copied either.
    publish_batch(&cluster, 3, &records(3, 1)).await;
    let said = tokio::time::timeout(PATIENCE, follower.failed())
        .await
        .expect("the follower stops");
    let upto = claim(&cluster).await;
    let err = follower.finish(upto).await.expect_err("finish says why");
    let kept = recover(&data.path().join("journal"));
    assert_eq!(kept, numbered(1, &good), "{prefix}: the good records stay");
    (said, err, kept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_a_bad_checksum_or_an_unreadable_message_stops_the_follower() {
    let nats = NatsServer::start();

    let (said, err, _) = stopped_by(&nats, "gap", async |c: &Cluster| {
        publish_batch(c, 4, &records(4, 2)).await;
    })
    .await;
    assert!(
        matches!(
            err,
            FollowError::Gap {
                expected: 3,
                found: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(said.contains("Lsn 3 was expected"), "{said}");

    let (_, err, _) = stopped_by(&nats, "repeat", async |c: &Cluster| {
        publish_batch(c, 2, &records(2, 1)).await;
    })
    .await;
    assert!(
        matches!(
            err,
            FollowError::Gap {
                expected: 3,
                found: 2,
                ..
            }
        ),
        "{err}"
    );

    let (_, err, _) = stopped_by(&nats, "crc", async |c: &Cluster| {
        let r = records(3, 2);
        let mut payload = Vec::new();
        for (i, r) in r.iter().enumerate() {
            let crc = crc32c::crc32c(r) ^ u32::from(i == 1);
            payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
            payload.extend_from_slice(&crc.to_le_bytes());
            payload.extend_from_slice(r);
        }
        let mut headers = HeaderMap::new();
        headers.insert(LSN_HEADER, "3");
        publish(c, headers, payload).await;
    })
    .await;
    // The message is refused whole: not even its good first record is kept.
    assert!(matches!(err, FollowError::BadCrc { lsn: 4, .. }), "{err}");

    let (_, err, _) = stopped_by(&nats, "noheader", async |c: &Cluster| {
        let mut payload = Vec::new();
        let r = record(3, 10);
        payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
        payload.extend_from_slice(&crc32c::crc32c(&r).to_le_bytes());
        payload.extend_from_slice(&r);
        publish(c, HeaderMap::new(), payload).await;
    })
    .await;
    assert!(
        matches!(&err, FollowError::Unreadable { what, .. } if what.contains(LSN_HEADER)),
        "{err}"
    );

    let (_, err, _) = stopped_by(&nats, "cut", async |c: &Cluster| {
        let mut headers = HeaderMap::new();
        headers.insert(LSN_HEADER, "3");
        publish(c, headers, vec![9, 0, 0, 0, 1, 2]).await;
    })
    .await;
    assert!(matches!(err, FollowError::Unreadable { .. }), "{err}");

    let (_, err, _) = stopped_by(&nats, "notarecord", async |c: &Cluster| {
        publish_batch(c, 3, &[vec![0xff; 12]]).await;
    })
    .await;
    assert!(matches!(err, FollowError::Record { lsn: 3, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_journal_is_moved_aside_and_an_older_one_replaced() {
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let data = tempfile::tempdir().expect("temp dir");
    // This node's own journal from when it was active, with records that
    // were never replicated; and an even older one moved aside before.
    let own = records(1, 7);
    {
        let (journal, _) = Journal::open(journal_config(data.path())).expect("open");
        for r in &own {
            journal.append(r).expect("append");
        }
        journal.close(Duration::from_secs(10)).expect("close");
    }
    let previous = data.path().join("journal.previous");
    std::fs::create_dir_all(&previous).expect("mkdir");
    std::fs::write(previous.join("older"), b"x").expect("write");

    let replicated = records(100, 3);
    publish_batch(&cluster, 1, &replicated).await;
    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    let upto = claim(&cluster).await;
    assert_eq!(follower.finish(upto).await.expect("finish"), 3);
    assert!(recover(&data.path().join("journal")) == numbered(1, &replicated));
    assert!(
        !previous.join("older").exists(),
        "the older one is replaced"
    );
    assert!(
        recover(&previous) == numbered(1, &own),
        "the old journal is kept aside"
    );
}

// ---------------------------------------------------------------- the files

fn attachment_record(id: &str, size: u64) -> Vec<u8> {
    let meta = AttachmentMeta {
        id: id.to_owned(),
        content_type: "image/png".to_owned(),
        size,
        filename: "a.png".to_owned(),
        url: format!("/attachments/{id}"),
        error: None,
    };
    switchboard::codec::encode(&RecordRef::AttachmentStored {
        meta: &meta,
        uploader: &Uploader::Agent(Id::from("ag_1")),
        quota: None,
        at: SystemTime::UNIX_EPOCH,
    })
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_in_and_out_of_the_bucket() {
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "a").await;
    let files = Files::open(&cluster).await.expect("open");
    assert_eq!(files.bucket(), "switchboard-files");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    files.put("att_1", &big).await.expect("put");
    files.put("att_2", b"small").await.expect("put");
    assert_eq!(
        files.get("att_1").await.expect("get").as_deref(),
        Some(&big[..])
    );
    assert_eq!(
        files.get("att_2").await.expect("get").as_deref(),
        Some(&b"small"[..])
    );
    assert_eq!(files.get("att_3").await.expect("get"), None);
    files.delete("att_1").await.expect("delete");
    assert_eq!(files.get("att_1").await.expect("get"), None);
    files.delete("att_1").await.expect("deleting twice");
    // A second node opens the same bucket.
    let other = Files::open(&connect(&nats.url(), "b").await)
        .await
        .expect("open");
    assert_eq!(
        other.get("att_2").await.expect("get").as_deref(),
        Some(&b"small"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attachment_store_replicates_files_through_its_hook() {
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "a").await;
    let files = Files::open(&cluster).await.expect("open");
    let data = tempfile::tempdir().expect("temp dir");
    let config = switchboard::Config {
        data_dir: Some(data.path().to_owned()),
        ..Default::default()
    };
    let store = AttachmentStore::new(&config);
    let replica: Arc<dyn FileReplica> = Arc::new(files.clone());
    assert!(store.set_replica(replica.clone()));
    assert!(!store.set_replica(replica), "set once");
    let bytes = Bytes::from_static(b"the file's bytes");
    store.persist("att_9", &bytes).await.expect("persist");
    assert_eq!(
        std::fs::read(data.path().join("files/att_9")).expect("local copy"),
        &bytes[..]
    );
    assert_eq!(files.get("att_9").await.expect("get"), Some(bytes.clone()));
    // Stored and never sent: the sweep drops it, here and in the bucket.
    let meta = AttachmentMeta {
        id: "att_9".to_owned(),
        content_type: "text/plain".to_owned(),
        size: bytes.len() as u64,
        filename: "a.txt".to_owned(),
        url: "/attachments/att_9".to_owned(),
        error: None,
    };
    store
        .insert_persisted(meta, bytes, Uploader::Admin, None)
        .expect("insert");
    assert_eq!(store.sweep_unused(Duration::ZERO), 1);
    let deadline = Instant::now() + PATIENCE;
    while files.get("att_9").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "the replicated copy stays");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_writes_each_replicated_file_into_its_data_dir() {
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let files = Files::open(&cluster).await.expect("open");
    let data = tempfile::tempdir().expect("temp dir");
    let picture: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    files.put("att_a", &picture).await.expect("put");
    // att_gone was deleted (it left the active's store) before the standby
    // got to it: there is nothing to copy, and the record still is.
    let mut all = records(1, 2);
    all.push(attachment_record("att_a", picture.len() as u64));
    all.push(attachment_record("att_gone", 5));
    publish_batch(&cluster, 1, &all).await;
    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    // A file stored while it follows.
    files.put("att_b", b"later").await.expect("put");
    let later = attachment_record("att_b", 5);
    publish_batch(&cluster, 5, std::slice::from_ref(&later)).await;
    all.push(later);
    let upto = claim(&cluster).await;
    assert_eq!(follower.finish(upto).await.expect("finish"), 5);
    assert_eq!(
        std::fs::read(data.path().join("files/att_a")).expect("att_a"),
        picture
    );
    assert_eq!(
        std::fs::read(data.path().join("files/att_b")).expect("att_b"),
        b"later"
    );
    assert!(!data.path().join("files/att_gone").exists());
    assert!(recover(&data.path().join("journal")) == numbered(1, &all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_goes_on_following_across_a_nats_restart() {
    let mut nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let data = tempfile::tempdir().expect("temp dir");
    let mut all = records(1, 10);
    publish_batch(&cluster, 1, &all).await;
    let follower = Follower::start(&cluster, journal_config(data.path()), &replay())
        .await
        .expect("start");
    wait_until("the first records copied", PATIENCE, || {
        follower.copied() == 10
    })
    .await;
    let down = Instant::now();
    tokio::task::block_in_place(|| nats.restart());
    // The client reconnects; the next writes go through.
    let later = records(11, 5);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(LSN_HEADER, "11");
        let mut payload = Vec::new();
        for r in &later {
            payload.extend_from_slice(&(r.len() as u32).to_le_bytes());
            payload.extend_from_slice(&crc32c::crc32c(r).to_le_bytes());
            payload.extend_from_slice(r);
        }
        let sent = cluster
            .jetstream()
            .publish_with_headers(cluster.settings().core_subject(), headers, payload.into())
            .await;
        if let Ok(ack) = sent {
            if ack.await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no write after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all.extend(later);
    wait_until("the records after the restart copied", PATIENCE * 3, || {
        follower.copied() == 15
    })
    .await;
    eprintln!(
        "following resumed {:?} after nats-server went down",
        down.elapsed()
    );
    let upto = claim(&cluster).await;
    assert_eq!(follower.finish(upto).await.expect("finish"), 15);
    assert!(recover(&data.path().join("journal")) == numbered(1, &all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_an_events_stream_without_the_core_subject() {
    // `Cluster::connect` gives an older stream the core subject; one changed
    // by hand afterwards (partitions only) is refused, not followed blindly.
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "standby").await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream("switchboard-events")
        .await
        .expect("the events stream");
    let mut config = stream.info().await.expect("stream info").config.clone();
    config.subjects = vec!["switchboard.p.*".to_owned()];
    js.update_stream(config)
        .await
        .expect("take the core subject away");
    let data = tempfile::tempdir().expect("temp dir");
    let err = match Follower::start(&cluster, journal_config(data.path()), &replay()).await {
        Ok(_) => panic!("a follower started on a stream without switchboard.core"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, FollowError::NotInStream { subject, .. } if subject == "switchboard.core"),
        "{err}"
    );
}

// ---------------------------------------------------------------- snapshots

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_newest_snapshot_is_replaced_by_the_one_before_it_once() {
    use switchboard::cluster::snapshots::trim_round;
    use switchboard::cluster::{CoreSubject, Snapshots};
    let nats = NatsServer::start();
    let cluster = connect(&nats.url(), "active").await;
    let snapshots = Snapshots::open(&cluster).await.expect("the bucket");
    let core = CoreSubject::new(cluster.events().clone(), cluster.settings().core_subject());
    let data = tempfile::tempdir().expect("temp dir");
    let (journal, _) = Journal::open(journal_config(data.path())).expect("open");
    for r in records(1, 6) {
        journal.append(&r).expect("append");
    }
    let writer = journal.clone();
    tokio::task::spawn_blocking(move || {
        writer.write_snapshot(3, b"state at 3").expect("snapshot 3");
        writer.write_snapshot(6, b"state at 6").expect("snapshot 6");
    })
    .await
    .expect("written");
    // The newest snapshot's last byte goes bad on the disk.
    let newest = data
        .path()
        .join("journal")
        .join(format!("snap-{:020}.snap", 6));
    let mut bytes = std::fs::read(&newest).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&newest, bytes).expect("write");

    let mut uploaded = None;
    let round = trim_round(&journal, &snapshots, &core, &[], &mut uploaded)
        .await
        .expect("a round");
    assert_eq!(
        round.map(|t| t.uploaded),
        Some(3),
        "the newest readable one"
    );
    assert_eq!(snapshots.list().await.expect("list"), vec![3]);
    assert_eq!(
        snapshots.get(3).await.expect("get"),
        Some(b"state at 3".to_vec())
    );
    assert_eq!(uploaded, Some(6), "the unreadable newest counts as done");
    // Later rounds upload nothing until a newer snapshot is written.
    for _ in 0..3 {
        let round = trim_round(&journal, &snapshots, &core, &[], &mut uploaded)
            .await
            .expect("a round");
        assert!(
            round.is_none(),
            "uploaded again: {:?}",
            round.map(|t| t.uploaded)
        );
    }
    let writer = journal.clone();
    tokio::task::spawn_blocking(move || {
        for r in records(7, 2) {
            writer.append(&r).expect("append");
        }
        writer.write_snapshot(8, b"state at 8").expect("snapshot 8");
    })
    .await
    .expect("written");
    let round = trim_round(&journal, &snapshots, &core, &[], &mut uploaded)
        .await
        .expect("a round");
    assert_eq!(round.map(|t| t.uploaded), Some(8));
    assert_eq!(snapshots.list().await.expect("list"), vec![8, 3]);
    journal.close(Duration::from_secs(10)).expect("close");
}

//! Partition leases and fenced appends against a real `nats-server`
//! (`tests/common/nats.rs` starts one per test): fair split, failover of a
//! dropped node, rebalancing to a late joiner without two owners, a paused
//! owner fenced out, and a NATS restart. Leases last 2 s here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use switchboard::cluster::{
    Cluster, ClusterError, ClusterSettings, FenceError, LeaseKeeper, LossCause, OwnershipChange,
    Partition, PARTITIONS,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use common::nats::NatsServer;

const TTL: Duration = Duration::from_secs(2);

/// Long enough for any step of these tests on a loaded machine; every wait
/// ends as soon as its condition holds.
const PATIENCE: Duration = Duration::from_secs(20);

struct Node {
    cluster: Cluster,
    keeper: LeaseKeeper,
    changes: mpsc::Receiver<OwnershipChange>,
}

fn settings(url: &str, id: &str) -> ClusterSettings {
    let mut s = ClusterSettings::new(url, id);
    s.lease_ttl = TTL;
    s
}

async fn node(url: &str, id: &str) -> Node {
    let cluster = Cluster::connect(settings(url, id)).await.expect("connect");
    let (keeper, changes) = LeaseKeeper::start(&cluster);
    Node {
        cluster,
        keeper,
        changes,
    }
}

/// Poll `cond` every 50 ms until it holds; fail with `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nodes "a", "b" and "c", once they have split the 64 partitions 22/21/21.
async fn three_nodes(url: &str) -> (Node, Node, Node) {
    let (a, b, c) = (
        node(url, "a").await,
        node(url, "b").await,
        node(url, "c").await,
    );
    wait_until("64 partitions split 22/21/21", PATIENCE, || {
        split(&[&a, &b, &c]) == Some(vec![22, 21, 21])
    })
    .await;
    (a, b, c)
}

/// Each node's count if together they hold every partition once.
fn split(nodes: &[&Node]) -> Option<Vec<usize>> {
    let sets: Vec<BTreeSet<Partition>> = nodes.iter().map(|n| n.keeper.owned()).collect();
    let all: BTreeSet<Partition> = sets.iter().flatten().copied().collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    (all.len() == usize::from(PARTITIONS) && total == all.len())
        .then(|| sets.iter().map(BTreeSet::len).collect())
}

/// The lease bucket as it stands: partition key → owner.
async fn lease_owners(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in Partition::all() {
        if let Some(e) = cluster
            .leases()
            .entry(p.index().to_string())
            .await
            .expect("read lease")
        {
            if e.operation == Operation::Put {
                out.insert(
                    p.index().to_string(),
                    String::from_utf8_lossy(&e.value).into_owned(),
                );
            }
        }
    }
    out
}

/// What the bucket says agrees with what each keeper believes.
async fn assert_bucket_agrees(cluster: &Cluster, nodes: &[&Node]) {
    let owners = lease_owners(cluster).await;
    assert_eq!(owners.len(), usize::from(PARTITIONS), "{owners:?}");
    for n in nodes {
        for p in n.keeper.owned() {
            assert_eq!(
                owners.get(&p.index().to_string()).map(String::as_str),
                Some(n.keeper.node_id()),
                "{p}"
            );
        }
    }
}

/// Every change to the lease bucket seen by a watch: (key, operation,
/// value, revision).
type Seen = Arc<Mutex<Vec<(String, Operation, String, u64)>>>;

async fn watch_leases(cluster: &Cluster) -> Seen {
    let seen: Seen = Arc::default();
    let mut watch = cluster.leases().watch_all().await.expect("watch");
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            let Ok(e) = entry else { break };
            out.lock().push((
                e.key,
                e.operation,
                String::from_utf8_lossy(&e.value).into_owned(),
                e.revision,
            ));
        }
    });
    seen
}

/// No key went from one owner straight to another: every handover passed
/// through a delete (valid where no lease expired).
fn assert_no_two_owners(seen: &Seen) {
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (key, op, value, revision) in seen.lock().iter() {
        let now = (*op == Operation::Put).then(|| value.clone());
        if let (Some(Some(before)), Some(after)) = (last.get(key), &now) {
            assert_eq!(
                before, after,
                "partition {key} passed from {before} to {after} (revision {revision}) without a release"
            );
        }
        last.insert(key.clone(), now);
    }
}

fn drain(changes: &mut mpsc::Receiver<OwnershipChange>) -> Vec<OwnershipChange> {
    let mut out = Vec::new();
    while let Ok(c) = changes.try_recv() {
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_keepers_split_the_partitions_fairly() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (a, b, c) = three_nodes(&url).await;
    assert_bucket_agrees(&a.cluster, &[&a, &b, &c]).await;
    // Each keeper told its owner of exactly what it holds.
    let mut c = c;
    let acquired: BTreeSet<Partition> = drain(&mut c.changes)
        .into_iter()
        .filter_map(|ch| match ch {
            OwnershipChange::Acquired(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(c.keeper.owned().is_subset(&acquired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_keepers_partitions_are_taken_over_within_a_lease() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (a, b, c) = three_nodes(&url).await;
    let orphans = c.keeper.owned();
    // Gone without a word, as a crash: its leases and membership expire.
    let dropped = Instant::now();
    drop(c);
    let renew = settings(&url, "x").renew_every();
    // The lease lapses within the TTL of its last renewal; the survivors'
    // next round (one renewal interval) takes it; a second interval and
    // a second of slack for the server's expiry timer and a loaded machine.
    let bound = TTL + renew * 2 + Duration::from_secs(1);
    wait_until("the survivors hold all 64 partitions, 32/32", bound, || {
        split(&[&a, &b]) == Some(vec![32, 32])
    })
    .await;
    let took = dropped.elapsed();
    let mine: BTreeSet<Partition> = a.keeper.owned().union(&b.keeper.owned()).copied().collect();
    assert!(orphans.is_subset(&mine));
    assert_bucket_agrees(&a.cluster, &[&a, &b]).await;
    eprintln!("failover of 21 partitions: {took:?} (TTL {TTL:?}, renewal every {renew:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_keeper_hands_its_partitions_over_without_waiting_for_the_ttl() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (a, b, mut c) = three_nodes(&url).await;
    let held = c.keeper.owned();
    drain(&mut c.changes);
    let stopping = Instant::now();
    c.keeper.stop().await.expect("stop");
    let released: BTreeSet<Partition> = drain(&mut c.changes)
        .into_iter()
        .map(|ch| match ch {
            OwnershipChange::Released(p) => p,
            other => panic!("a stopping keeper only releases, got {other:?}"),
        })
        .collect();
    assert_eq!(released, held);
    // Its membership is gone at once too, so the survivors' shares grow in
    // their next round rather than after the TTL.
    wait_until(
        "the survivors hold all 64 partitions, 32/32",
        PATIENCE,
        || split(&[&a, &b]) == Some(vec![32, 32]),
    )
    .await;
    let took = stopping.elapsed();
    assert!(
        took < TTL,
        "the handover took {took:?}: as long as an expiry"
    );
    assert_bucket_agrees(&a.cluster, &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_its_share_with_never_two_owners() {
    let nats = NatsServer::start();
    let url = nats.url();
    let a = node(&url, "a").await;
    let seen = watch_leases(&a.cluster).await;
    let b = node(&url, "b").await;
    wait_until("64 partitions split 32/32", PATIENCE, || {
        split(&[&a, &b]) == Some(vec![32, 32])
    })
    .await;
    let mut c = node(&url, "c").await;
    wait_until("64 partitions rebalanced to 22/21/21", PATIENCE, || {
        split(&[&a, &b, &c]) == Some(vec![22, 21, 21])
    })
    .await;
    assert_bucket_agrees(&a.cluster, &[&a, &b, &c]).await;
    // The watch has seen the last of it (each key's latest revision).
    let latest: BTreeMap<String, u64> = {
        let mut m = BTreeMap::new();
        for p in Partition::all() {
            let e = a
                .cluster
                .leases()
                .entry(p.index().to_string())
                .await
                .expect("read");
            m.insert(p.index().to_string(), e.map_or(0, |e| e.revision));
        }
        m
    };
    wait_until("the watch caught up", PATIENCE, || {
        let seen = seen.lock();
        latest
            .iter()
            .all(|(k, rev)| seen.iter().any(|(key, _, _, r)| key == k && r >= rev))
    })
    .await;
    assert_no_two_owners(&seen);
    let gave_back = seen
        .lock()
        .iter()
        .filter(|(_, op, _, _)| *op == Operation::Delete)
        .count();
    assert!(
        gave_back >= 21,
        "only {gave_back} releases for c's 21 partitions"
    );
    let changes = drain(&mut c.changes);
    assert!(changes
        .iter()
        .all(|ch| matches!(ch, OwnershipChange::Acquired(_))));
    assert_eq!(changes.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_refused_its_renewal_and_fenced_off() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut a = node(&url, "a").await;
    let b = node(&url, "b").await;
    wait_until("64 partitions split 32/32", PATIENCE, || {
        split(&[&a, &b]) == Some(vec![32, 32])
    })
    .await;
    let p = *a.keeper.owned().iter().next().expect("a holds some");
    let log_a = a.cluster.event_log();
    let mut writer_a = a.keeper.writer(&log_a, p).await.expect("a's writer");
    let first = writer_a
        .append(Bytes::from_static(b"a-1"))
        .await
        .expect("a owns p");
    drain(&mut a.changes);

    a.keeper.pause();
    wait_until("b takes a's partitions after the TTL", PATIENCE, || {
        b.keeper.owned().len() == usize::from(PARTITIONS)
    })
    .await;
    let log_b = b.cluster.event_log();
    let mut writer_b = b.keeper.writer(&log_b, p).await.expect("b's writer");
    assert!(
        writer_b.last_sequence() > first,
        "b's claim follows a's event"
    );
    let second = writer_b
        .append_event(&("b", 2u32))
        .await
        .expect("b owns p now");
    // Paused, a's keeper has renewed nothing: by its own clock the lease
    // has lapsed, so its owner would not act for p even before the keeper
    // wakes.
    assert!(!a.keeper.holds(p), "a's lease on p lapsed by its clock");

    a.keeper.resume();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let change = tokio::time::timeout_at(deadline, a.changes.recv())
            .await
            .expect("a is told it lost p")
            .expect("a's keeper runs");
        if change == OwnershipChange::Lost(p, LossCause::Refused) {
            break;
        }
    }
    assert!(!a.keeper.holds(p));
    match writer_a.append(Bytes::from_static(b"a-2")).await {
        Err(FenceError::Fenced {
            partition,
            expected,
        }) => {
            assert_eq!(partition, p);
            assert_eq!(expected, first);
        }
        other => panic!("a stale owner's write must be fenced off, got {other:?}"),
    }
    // The partition holds exactly a's first event and b's.
    let events = log_b.read(p, 1, 100).await.expect("read back");
    assert_eq!(
        events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(events[0].payload, Bytes::from_static(b"a-1"));
    assert_eq!(
        events[1].decode::<(String, u32)>().expect("decode"),
        ("b".to_owned(), 2)
    );
    // b's writer goes on; a gets its share back by rebalancing.
    writer_b
        .append(Bytes::from_static(b"b-3"))
        .await
        .expect("b still owns p");
    wait_until("64 partitions split 32/32 again", PATIENCE, || {
        split(&[&a, &b]) == Some(vec![32, 32])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_watches_resume_after_a_nats_restart() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let mut a = node(&url, "a").await;
    let mut b = node(&url, "b").await;
    let seen = watch_leases(&a.cluster).await;
    wait_until("64 partitions split 32/32", PATIENCE, || {
        split(&[&a, &b]) == Some(vec![32, 32])
    })
    .await;
    let p = *a.keeper.owned().iter().next().expect("a holds some");
    let log = a.cluster.event_log();
    let mut writer = a.keeper.writer(&log, p).await.expect("writer");
    let first = writer
        .append(Bytes::from_static(b"before"))
        .await
        .expect("append");
    let before = seen.lock().iter().map(|s| s.3).max().unwrap_or(0);
    drain(&mut a.changes);
    drain(&mut b.changes);

    let down = Instant::now();
    tokio::task::block_in_place(|| nats.restart());
    let restarted = down.elapsed();

    // Renewals go on at the revisions held (or the leases are taken back):
    // all 64 held again, the bucket agreeing, and written since the restart.
    wait_until(
        "64 partitions split 32/32 after the restart",
        PATIENCE,
        || split(&[&a, &b]) == Some(vec![32, 32]),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let owned: BTreeSet<String> = a
            .keeper
            .owned()
            .union(&b.keeper.owned())
            .map(|p| p.index().to_string())
            .collect();
        let mut renewed = 0;
        for key in &owned {
            if let Ok(Some(e)) = a.cluster.leases().entry(key.clone()).await {
                renewed += usize::from(e.revision > before);
            }
        }
        if renewed == usize::from(PARTITIONS) && split(&[&a, &b]) == Some(vec![32, 32]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leases not renewed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_bucket_agrees(&a.cluster, &[&a, &b]).await;
    let changes: Vec<_> = drain(&mut a.changes)
        .into_iter()
        .chain(drain(&mut b.changes))
        .collect();
    eprintln!(
        "nats-server restarted in {restarted:?}; leases renewed again {:?} after it went down; \
         ownership changes meanwhile: {changes:?}",
        down.elapsed()
    );
    // The watch opened before the restart goes on delivering.
    wait_until("the watch delivers after the restart", PATIENCE, || {
        seen.lock().iter().filter(|s| s.3 > before).count() >= usize::from(PARTITIONS)
    })
    .await;
    // The owner's writer goes on where it was.
    if a.keeper.holds(p) {
        let second = writer
            .append(Bytes::from_static(b"after"))
            .await
            .expect("append after the restart");
        assert!(second > first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_let_go_when_nats_is_away_longer_than_a_lease_and_take_over_again() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let mut a = node(&url, "a").await;
    let mut b = node(&url, "b").await;
    wait_until("64 partitions split 32/32", PATIENCE, || {
        split(&[&a, &b]) == Some(vec![32, 32])
    })
    .await;
    let held_a = a.keeper.owned();
    drain(&mut a.changes);
    drain(&mut b.changes);

    tokio::task::block_in_place(|| nats.stop());
    // No renewal can be confirmed: by their own clocks the leases lapse,
    // and the keepers stop owning them rather than act on a stale lease.
    wait_until("both keepers let every lease lapse", PATIENCE, || {
        a.keeper.owned().is_empty() && b.keeper.owned().is_empty()
    })
    .await;
    // And the keeper tells its owner so, once per lease.
    let deadline = Instant::now() + PATIENCE;
    let mut lapsed = BTreeSet::new();
    while lapsed != held_a {
        match tokio::time::timeout_at(deadline, a.changes.recv()).await {
            Ok(Some(OwnershipChange::Lost(p, LossCause::Lapsed))) => {
                assert!(lapsed.insert(p), "{p} reported lapsed twice");
            }
            Ok(other) => panic!("only lapses while NATS is away, got {other:?}"),
            Err(_) => panic!("a reported {lapsed:?} lapsed of {held_a:?}"),
        }
    }

    tokio::task::block_in_place(|| nats.spawn());
    wait_until(
        "64 partitions split 32/32 once NATS is back",
        PATIENCE,
        || split(&[&a, &b]) == Some(vec![32, 32]),
    )
    .await;
    assert_bucket_agrees(&a.cluster, &[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_must_agree_on_the_lease_ttl_and_name_themselves_plainly() {
    let nats = NatsServer::start();
    let url = nats.url();
    let first = Cluster::connect(settings(&url, "a"))
        .await
        .expect("connect");
    assert_eq!(first.settings().lease_ttl, TTL);
    let mut other = settings(&url, "b");
    other.lease_ttl = TTL * 2;
    match Cluster::connect(other).await {
        Err(ClusterError::TtlDiffers { found, want, .. }) => {
            assert_eq!((found, want), (TTL, TTL * 2));
        }
        Err(e) => panic!("expected TtlDiffers, got {e}"),
        Ok(_) => panic!("a node with another TTL must not join"),
    }
    for bad in ["", "a.b", "a b", "ä", &"n".repeat(65)] {
        assert!(
            matches!(
                Cluster::connect(settings(&url, bad)).await,
                Err(ClusterError::Setting(_))
            ),
            "node id {bad:?}"
        );
    }
    // Nothing listening: the first connection fails at once, saying where.
    let closed = format!("nats://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    });
    match Cluster::connect(settings(&closed, "c")).await {
        Err(e @ ClusterError::Connect { .. }) => assert!(e.to_string().contains(&closed), "{e}"),
        Err(e) => panic!("expected a connect error, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owners_claim_fences_the_old_one_out_before_any_event() {
    let nats = NatsServer::start();
    let url = nats.url();
    let old = Cluster::connect(settings(&url, "old"))
        .await
        .expect("connect");
    let new = Cluster::connect(settings(&url, "new"))
        .await
        .expect("connect");
    let p = switchboard::cluster::partition_of("cv_0123456789abcdef01234567");
    let mut stale = old.event_log().writer(p, None).await.expect("old writer");
    let e1 = stale
        .append(Bytes::from_static(b"old-1"))
        .await
        .expect("append");
    // The new owner only opens its writer: that claim alone shuts the old
    // one out.
    let mut owner = new.event_log().writer(p, None).await.expect("new writer");
    assert!(matches!(
        stale.append(Bytes::from_static(b"old-2")).await,
        Err(FenceError::Fenced { expected, .. }) if expected == e1
    ));
    assert!(matches!(
        stale.append(Bytes::from_static(b"old-3")).await,
        Err(FenceError::Closed(_))
    ));
    let e2 = owner
        .append(Bytes::from_static(b"new-1"))
        .await
        .expect("append");
    // The latest claim wins, even between two writers of one node.
    let mut again = new.event_log().writer(p, None).await.expect("writer");
    let mut retry = new.event_log().writer(p, None).await.expect("writer");
    assert!(
        matches!(
            again.append(Bytes::from_static(b"x")).await,
            Err(FenceError::Fenced { .. })
        ),
        "the earlier writer is fenced off by the later claim"
    );
    let e3 = retry
        .append(Bytes::from_static(b"new-2"))
        .await
        .expect("append");
    let log = old.event_log();
    let events = log.read(p, 1, 100).await.expect("read");
    assert_eq!(
        events
            .iter()
            .map(|e| (e.sequence, e.payload.clone()))
            .collect::<Vec<_>>(),
        [
            (e1, Bytes::from_static(b"old-1")),
            (e2, Bytes::from_static(b"new-1")),
            (e3, Bytes::from_static(b"new-2")),
        ]
    );
    // Reading from a later sequence, and a limited number.
    assert_eq!(log.read(p, e1 + 1, 100).await.expect("read").len(), 2);
    assert_eq!(log.read(p, 1, 1).await.expect("read").len(), 1);
    let other = Partition::new((p.index() + 1) % PARTITIONS).expect("partition");
    assert!(log.read(other, 1, 100).await.expect("read").is_empty());

    // A retried append whose first try was stored but never answered (a
    // NATS restart between the two): the retry is answered with the first
    // try's sequence, not refused as fenced and not stored twice, whichever
    // way the server orders its id and expected-sequence checks.
    let mut retrying = old.event_log().writer(other, None).await.expect("writer");
    let claimed = retrying.last_sequence();
    let subject = old.settings().partition_subject(other);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        claimed.to_string().as_str(),
    );
    headers.insert(
        "Nats-Msg-Id",
        retrying.message_id(b"retried", false).as_str(),
    );
    let first = old
        .jetstream()
        .publish_with_headers(subject, headers, Bytes::from_static(b"retried"))
        .await
        .expect("publish")
        .await
        .expect("the first try is stored");
    let again = retrying
        .append(Bytes::from_static(b"retried"))
        .await
        .expect("a retry is not fenced");
    assert_eq!(again, first.sequence);
    let stored = log.read(other, 1, 100).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        [Bytes::from_static(b"retried")]
    );
    // The writer goes on from there; and a write somebody else made in
    // between is still a fence, not mistaken for a retry.
    let next = retrying
        .append(Bytes::from_static(b"after"))
        .await
        .expect("the next append");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        next.to_string().as_str(),
    );
    old.jetstream()
        .publish_with_headers(
            old.settings().partition_subject(other),
            headers,
            Bytes::from_static(b"someone else"),
        )
        .await
        .expect("publish")
        .await
        .expect("the other write is stored");
    assert!(matches!(
        retrying.append(Bytes::from_static(b"mine")).await,
        Err(FenceError::Fenced { .. })
    ));
}

//! Cluster mode's snapshots in NATS, with real processes on a real
//! nats-server: the active node uploads its journal's snapshots to
//! `<prefix>-snapshots`, keeps two, and trims `<prefix>.core` behind the
//! older one; a standby started afterwards seeds its journal from the
//! newest snapshot (the records it would need from Lsn 1 are gone), copies
//! the rest, fetches the files the snapshot names, and takes over with
//! everything acknowledged. And a node that ran alone carries its state
//! into a new cluster instead of losing it.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::DirectGetErrorKind;
use common::cluster::{
    assert_active, assert_served, snapshots_in, upload, wait_copied, wait_replicated, TestCluster,
    ADMIN, PREFIX,
};
use common::load::{assert_acked_stored_once, assert_recovered, Load};
use common::process::{binary, Broker, Stream};
use common::Harness;
use switchboard::cluster::{CLAIM_HEADER, LSN_HEADER};

/// One test at a time (each starts its own nats-server and nodes).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A snapshot every 40 records (and at least every second).
const SNAPSHOT_OFTEN: [(&str, &str); 2] = [
    ("SWITCHBOARD_SNAPSHOT_EVERY_RECORDS", "40"),
    ("SWITCHBOARD_SNAPSHOT_INTERVAL", "1s"),
];

/// The first core message holding records: (stream sequence, first Lsn).
async fn first_core_records(cluster: &TestCluster) -> Option<(u64, u64)> {
    let stream = async_nats::jetstream::new(cluster.nats_client().await)
        .get_stream(format!("{PREFIX}-events"))
        .await
        .expect("the events stream");
    let subject = format!("{PREFIX}.core");
    let mut at = 1;
    loop {
        match stream
            .direct_get_next_for_subject(subject.as_str(), Some(at))
            .await
        {
            Ok(m) if m.headers.get(CLAIM_HEADER).is_some() => at = m.sequence + 1,
            Ok(m) => {
                let lsn = m
                    .headers
                    .get(LSN_HEADER)
                    .and_then(|v| v.as_str().parse().ok())
                    .expect("an Lsn header");
                return Some((m.sequence, lsn));
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return None,
            Err(e) => panic!("reading {subject}: {e}"),
        }
    }
}

/// The Lsns of the snapshots in `<prefix>-snapshots`, oldest first.
async fn snapshots_in_bucket(cluster: &TestCluster) -> Vec<u64> {
    snapshots_in(cluster.nats_client().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_started_after_the_core_subject_was_trimmed_seeds_from_the_newest_snapshot_and_takes_over(
) {
    const AGENTS: usize = 4;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 20;
    const MESSAGES: usize = 15;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_node_with(0, &SNAPSHOT_OFTEN);
    let active = cluster.wait_active(&[], Duration::from_secs(20));

    // A file first: its record is trimmed away long before the standby
    // starts, so only the snapshot names it.
    let owner = active.h.create_agent("owner", 1, &[]).await;
    let (file, bytes) = upload(&active.h, &owner.token).await;

    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    assert_eq!(
        outcome.total(),
        CUSTOMERS * MESSAGES,
        "every message acknowledged"
    );
    let durable = wait_replicated(&active.h).await;

    // Two snapshots in the bucket, the subject trimmed behind the older.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (snapshots, first) = loop {
        let snapshots = snapshots_in_bucket(&cluster).await;
        assert!(snapshots.len() <= 2, "two snapshots kept: {snapshots:?}");
        let first = first_core_records(&cluster).await.expect("core records");
        if snapshots.len() == 2 && first.1 > 1 {
            break (snapshots, first);
        }
        assert!(
            Instant::now() < deadline,
            "no trimming: snapshots {snapshots:?}, the first core message {first:?} \
             ({durable} records durable)\n{}",
            cluster.last_lines(0, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        first.1 <= snapshots[0] + 1,
        "the subject keeps every record after the older snapshot ({snapshots:?}): it starts at Lsn {}",
        first.1
    );
    println!(
        "{durable} records durable; snapshots in the bucket at {snapshots:?}; the core subject starts at Lsn {} (stream sequence {})",
        first.1, first.0
    );

    // A fresh standby: it cannot start from Lsn 1 any more.
    cluster.start_node_with(1, &SNAPSHOT_OFTEN);
    let seeded =
        cluster
            .process(1)
            .wait_for(Stream::Err, "the standby seeded from a snapshot", |l| {
                l.contains("starts from the active node's snapshot")
            });
    println!("{seeded}");
    let more = active.h.create_agent("late", 1, &[]).await;
    let durable = wait_replicated(&active.h).await;
    wait_copied(&active.h, "node-1", durable).await;

    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    assert_active(&new.h, "node-1").await;
    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 3).await;
    // The agent created after the seed, and the file only the snapshot
    // names, are there.
    let r = new.h.admin_get(&format!("/v1/agents/{}", more.id)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_served(&new.h, &owner.token, &file, &bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_paused_while_the_core_subject_was_trimmed_past_it_starts_again_from_a_snapshot()
{
    const AGENTS: usize = 4;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 20;
    const MESSAGES: usize = 15;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);
    cluster.start_node_with(0, &SNAPSHOT_OFTEN);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node_with(1, &SNAPSHOT_OFTEN);
    cluster.wait_following(1);
    active.h.create_agent("early", 1, &[]).await;
    let durable = wait_replicated(&active.h).await;
    wait_copied(&active.h, "node-1", durable).await;

    // Paused: its roster line expires, and the subject is trimmed past it.
    // NATS restarts meanwhile, so what was pushed to its consumer before
    // is all it finds when it wakes: it must subscribe again, from where
    // the records are gone.
    cluster.process(1).signal(libc::SIGSTOP);
    cluster.nats.restart();
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    assert_eq!(outcome.total(), CUSTOMERS * MESSAGES);
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_core_records(&cluster).await.map(|(_, lsn)| lsn) <= Some(durable + 1) {
        assert!(
            Instant::now() < deadline,
            "the subject was not trimmed past the paused standby (at Lsn {durable})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Woken, it finds its next records gone, and starts again.
    cluster.process(1).signal(libc::SIGCONT);
    cluster
        .process(1)
        .wait_for(Stream::Err, "the standby starting again", |l| {
            l.contains("starting again from the newest snapshot")
        });
    cluster.assert_standby(1);
    let durable = wait_replicated(&active.h).await;
    wait_copied(&active.h, "node-1", durable).await;

    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    assert_active(&new.h, "node-1").await;
    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_ran_alone_carries_its_state_into_a_new_cluster() {
    const AGENTS: usize = 3;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 10;
    const MESSAGES: usize = 6;
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::new(2);

    // node-0's data dir, used by a single node first.
    let mut alone = Broker::start(
        binary()
            .arg("--data-dir")
            .arg(cluster.nodes[0].dir.path())
            .args(["--bind", "127.0.0.1:0"])
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN)
            .env("SWITCHBOARD_CLIENT_LIMITS", "false"),
    );
    let api = alone.stdout_value("api");
    let h = Harness::external(api.trim_end_matches("/v1"), ADMIN);
    let owner = h.create_agent("owner", 1, &[]).await;
    let (file, bytes) = upload(&h, &owner.token).await;
    let load = Load::start(&h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    assert_eq!(outcome.total(), CUSTOMERS * MESSAGES);
    alone.signal(libc::SIGTERM);
    assert_eq!(alone.wait_exit(Duration::from_secs(15)), Some(0));

    // The same data dir, now in cluster mode against an empty NATS: it
    // becomes the active node with everything it had.
    cluster.start_node(0);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    cluster
        .process(0)
        .wait_for(Stream::Err, "the journal carried over", |l| {
            l.contains("carrying this node's journal into it")
        });
    assert_active(&active.h, "node-0").await;
    assert_served(&active.h, &owner.token, &file, &bytes).await;
    assert_recovered(&active.h, &outcome, &agents, CAPACITY, 2).await;
    assert_eq!(
        snapshots_in_bucket(&cluster).await.len(),
        1,
        "its snapshot uploaded"
    );

    // A standby starts from that snapshot, and takes over with all of it.
    cluster.start_node(1);
    cluster
        .process(1)
        .wait_for(Stream::Err, "the standby seeded from a snapshot", |l| {
            l.contains("starts from the active node's snapshot")
        });
    let durable = wait_replicated(&active.h).await;
    wait_copied(&active.h, "node-1", durable).await;
    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    assert_active(&new.h, "node-1").await;
    assert_acked_stored_once(&new.h, &outcome.acked).await;
    assert_served(&new.h, &owner.token, &file, &bytes).await;
    let r = new.h.admin_get(&format!("/v1/agents/{}", owner.id)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

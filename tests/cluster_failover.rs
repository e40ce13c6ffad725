//! Cluster mode's failover, with real processes: three (or two) nodes of the
//! real binary on one real nats-server, a 2 s lease TTL, desks and webchat
//! customers against the active node. The active node is killed, paused,
//! stopped cleanly, or loses NATS; a standby takes over, clients reconnect
//! to it with the same tokens, and everything that was acknowledged is
//! there exactly once.
//!
//! The tests run one at a time (each starts its own nats-server and nodes;
//! together they would fight for the CPU and blur the times they print).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use common::cluster::{
    assert_active, assert_served, upload, wait_replicated, TestCluster, PREFIX, TTL,
};
use common::load::{assert_recovered, customer, Customer, Load, Outcome};
use futures_util::StreamExt;
use switchboard::cluster::{CLAIM_HEADER, NODE_HEADER};

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every message on `<prefix>.core`, in order, claim markers included.
async fn core_messages(cluster: &TestCluster) -> Vec<StreamMessage> {
    let stream = async_nats::jetstream::new(cluster.nats_client().await)
        .get_stream(format!("{PREFIX}-events"))
        .await
        .expect("the events stream");
    let subject = format!("{PREFIX}.core");
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        match stream
            .direct_get_next_for_subject(subject.as_str(), Some(next))
            .await
        {
            Ok(m) => {
                next = m.sequence + 1;
                out.push(m);
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return out,
            Err(e) => panic!("reading {subject}: {e}"),
        }
    }
}

fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// After `node` claimed `<prefix>.core`, nobody else wrote there: the last
/// claim is `node`'s, and every record after it carries `node`'s header.
/// Returns how many records `node` wrote after its claim.
async fn assert_only_writer_since_its_claim(cluster: &TestCluster, node: &str) -> usize {
    let messages = core_messages(cluster).await;
    let claim = messages
        .iter()
        .rposition(|m| header(m, CLAIM_HEADER).is_some())
        .expect("a claim marker on the core subject");
    assert_eq!(
        header(&messages[claim], CLAIM_HEADER),
        Some(node),
        "the last claim is {node}'s"
    );
    for m in &messages[claim + 1..] {
        assert_eq!(
            header(m, NODE_HEADER),
            Some(node),
            "record at sequence {} written after {node}'s claim by another node",
            m.sequence
        );
    }
    messages.len() - claim - 1
}

/// Follow the `core` lease until a node other than `from` holds it: that
/// node, how long after `since` it took the lease, and how long after
/// `since` `from` released it, if it did (a delete, not an expiry: an
/// expiry shows in no watch).
async fn next_holder(
    watch: &mut async_nats::jetstream::kv::Watch,
    from: &str,
    since: Instant,
) -> (String, Duration, Option<Duration>) {
    let mut released = None;
    loop {
        let entry = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("the lease changed hands within 20 s")
            .expect("the watch goes on")
            .expect("a lease entry");
        match entry.operation {
            Operation::Delete | Operation::Purge => released = Some(since.elapsed()),
            Operation::Put if entry.value.as_ref() != from.as_bytes() => {
                let holder = String::from_utf8_lossy(&entry.value).into_owned();
                return (holder, since.elapsed(), released);
            }
            Operation::Put => {}
        }
    }
}

/// The node other than `a` and `b` among three.
fn third(a: usize, b: usize) -> usize {
    (0..3).find(|i| *i != a && *i != b).expect("three nodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_active_under_load_a_standby_takes_over_with_everything_acknowledged() {
    const AGENTS: usize = 30;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 300;
    const MESSAGES: usize = 6;
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(3);
    assert_active(&active.h, "node-0").await;
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    load.wait_acked(CUSTOMERS * MESSAGES / 3, Duration::from_secs(20))
        .await;
    cluster.assert_standby(1);
    cluster.assert_standby(2);

    let mut lease = cluster.leases().await.watch("core").await.expect("watch");
    let killed = Instant::now();
    load.broker_gone();
    cluster.process(0).signal(libc::SIGKILL);
    assert_eq!(cluster.process(0).wait_exit(Duration::from_secs(5)), None);
    let (holder, taken, _) = next_holder(&mut lease, "node-0", killed).await;
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    let took = killed.elapsed();
    assert_eq!(cluster.nodes[new.index].id, holder);
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    println!(
        "kill -9 with {} messages acknowledged in {} conversations: {holder} took the lease \
         {} ms later and served {} ms later (TTL {} ms, renewal every {} ms)",
        outcome.total(),
        outcome.acked.len(),
        taken.as_millis(),
        took.as_millis(),
        TTL.as_millis(),
        (TTL / 4).as_millis()
    );
    assert!(outcome.total() > 0, "the kill came before any ack");
    let id = cluster.nodes[new.index].id.clone();
    assert_active(&new.h, &id).await;
    cluster.assert_standby(third(0, new.index));

    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 10).await;
    assert_only_writer_since_its_claim(&cluster, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_paused_past_its_lease_is_fenced_and_exits_75_when_it_wakes() {
    const AGENTS: usize = 10;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 60;
    const MESSAGES: usize = 20;
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(2);
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    load.wait_acked(CUSTOMERS * MESSAGES / 3, Duration::from_secs(20))
        .await;

    let mut lease = cluster.leases().await.watch("core").await.expect("watch");
    let paused = Instant::now();
    load.broker_gone();
    cluster.process(0).signal(libc::SIGSTOP);
    let (holder, taken, released) = next_holder(&mut lease, "node-0", paused).await;
    assert_eq!((holder.as_str(), released), ("node-1", None));
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    let took = paused.elapsed();
    assert_eq!(new.index, 1);
    // The old active wakes with clients still waiting on it: whatever it
    // tries to write now is refused, and it stops.
    cluster.process(0).signal(libc::SIGCONT);
    let woke = Instant::now();
    assert_eq!(
        cluster.process(0).wait_exit(Duration::from_secs(10)),
        Some(75),
        "the paused node exits with 75: {:#?}",
        cluster.process(0).seen
    );
    let stopped = woke.elapsed();
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    println!(
        "SIGSTOP with {} messages acknowledged: node-1 took the lease {} ms later and served \
         {} ms later; the old active exited 75 {} ms after SIGCONT",
        outcome.total(),
        taken.as_millis(),
        took.as_millis(),
        stopped.as_millis()
    );
    assert_active(&new.h, "node-1").await;
    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 5).await;
    let written = assert_only_writer_since_its_claim(&cluster, "node-1").await;
    assert!(written > 0, "node-1 wrote the life cycles after its claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_shorter_than_the_lease_pauses_acks_and_changes_nothing() {
    const AGENTS: usize = 10;
    const CAPACITY: u64 = 6;
    const CUSTOMERS: usize = 60;
    // Far more than are acknowledged while NATS restarts (a run of 12 each
    // once ended within the 81 ms restart, leaving no ack to wait for).
    const MESSAGES: usize = 60;
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(2);
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    load.wait_acked(CUSTOMERS * 4, Duration::from_secs(20))
        .await;

    let down = Instant::now();
    cluster.nats.restart();
    let was_down = down.elapsed();
    let at_restart = load.acked_now();
    let resumed = load
        .wait_acked(at_restart + 1, Duration::from_secs(20))
        .await;
    let paused = down.elapsed();
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    println!(
        "nats-server down for {} ms: acks went on {} ms after it went down ({} acknowledged \
         then, {} in all)",
        was_down.as_millis(),
        paused.as_millis(),
        at_restart,
        outcome.total()
    );
    assert!(
        resumed > at_restart,
        "acks resumed after the restart; the active node printed:\n{}",
        cluster.last_lines(0, 40)
    );
    assert_eq!(
        outcome.total(),
        CUSTOMERS * MESSAGES,
        "every message of every customer was acknowledged"
    );
    // No failover: the same node is active, the other still a standby.
    assert!(cluster.process(0).running());
    assert_active(&active.h, "node-0").await;
    cluster.assert_standby(1);
    wait_replicated(&active.h).await;
    assert_recovered(&active.h, &outcome, &agents, CAPACITY, 5).await;
    assert_only_writer_since_its_claim(&cluster, "node-0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_away_longer_than_the_lease_stops_the_active_and_a_node_takes_over_when_it_is_back() {
    const AGENTS: usize = 10;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 60;
    // Far more than are sent before NATS is down: a nats-server stopping
    // still stores what comes in while it shuts down, so a short run could
    // end before it is gone.
    const MESSAGES: usize = 60;
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(2);
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    load.wait_acked(CUSTOMERS * 4, Duration::from_secs(20))
        .await;

    let down = Instant::now();
    load.broker_gone();
    cluster.nats.stop();
    assert_eq!(
        cluster.process(0).wait_exit(Duration::from_secs(15)),
        Some(75),
        "the active exits with 75 once its lease lapsed: {:#?}",
        cluster.process(0).seen
    );
    let exited = down.elapsed();
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    assert!(outcome.total() > 0);
    assert!(
        outcome.total() < CUSTOMERS * MESSAGES,
        "NATS went away before the run was over: {} of {} acknowledged",
        outcome.total(),
        CUSTOMERS * MESSAGES
    );

    // NATS comes back; the old active is restarted (as a supervisor would)
    // and comes back as a standby; one of the two becomes active.
    cluster.nats.spawn();
    let back = Instant::now();
    cluster.start_node(0);
    let new = cluster.wait_active(&[], Duration::from_secs(30));
    println!(
        "NATS away: the active exited 75 {} ms after NATS went down; with NATS back, node-{} \
         active {} ms later; {} messages acknowledged before",
        exited.as_millis(),
        new.index,
        back.elapsed().as_millis(),
        outcome.total()
    );
    let id = cluster.nodes[new.index].id.clone();
    assert_active(&new.h, &id).await;
    cluster.assert_standby(1 - new.index);
    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 5).await;
    assert_only_writer_since_its_claim(&cluster, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_active_releases_the_lease_and_a_standby_takes_over_at_once() {
    const AGENTS: usize = 10;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 60;
    const MESSAGES: usize = 12;
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(3);
    let mut lease = cluster.leases().await.watch("core").await.expect("watch");
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    load.wait_acked(CUSTOMERS * MESSAGES / 3, Duration::from_secs(20))
        .await;

    let stopped = Instant::now();
    load.broker_gone();
    cluster.process(0).signal(libc::SIGTERM);
    // The lease is deleted by its holder, not left to expire: the watch
    // sees the delete before another node's claim on it.
    let (holder, taken, released) = next_holder(&mut lease, "node-0", stopped).await;
    let released =
        released.unwrap_or_else(|| panic!("{holder} took the lease without node-0 releasing it"));
    let taken = (holder, taken);
    assert_eq!(
        cluster.process(0).wait_exit(Duration::from_secs(10)),
        Some(0)
    );
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    let up = stopped.elapsed();
    assert_eq!(cluster.nodes[new.index].id, taken.0);
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    println!(
        "SIGTERM: lease released after {} ms, taken by {} after {} ms, which was serving after \
         {} ms (renewal every {} ms)",
        released.as_millis(),
        taken.0,
        taken.1.as_millis(),
        up.as_millis(),
        (TTL / 4).as_millis()
    );
    assert_active(&new.h, &taken.0).await;
    cluster.assert_standby(third(0, new.index));
    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 5).await;
    assert_only_writer_since_its_claim(&cluster, &taken.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_restarted_under_an_active_comes_back_as_a_standby_and_takes_over_later() {
    const AGENTS: usize = 5;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 20;
    const MESSAGES: usize = 3;
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(2);
    // Records from before the standby's restart…
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    let agents = load.agents.clone();
    let before = load.finish().await;
    assert_eq!(before.total(), CUSTOMERS * MESSAGES);

    cluster.assert_standby(1);
    cluster.process(1).signal(libc::SIGKILL);
    cluster.process(1).wait_exit(Duration::from_secs(5));
    cluster.start_node(1);
    cluster.wait_following(1);
    // …and after it.
    let count = std::sync::atomic::AtomicUsize::new(0);
    let no_failure = std::sync::atomic::AtomicBool::new(false);
    let mut after = Outcome {
        customers: Vec::new(),
        acked: BTreeMap::new(),
        messages: MESSAGES,
        moved: 0,
    };
    for i in CUSTOMERS..CUSTOMERS + 10 {
        let (session, conv, acks) = customer(&active.h, i, MESSAGES, &count, &no_failure)
            .await
            .expect("a session");
        let conv = conv.expect("acknowledged");
        after.customers.push(Customer {
            index: i,
            session,
            conv: Some(conv.clone()),
            acked: acks.len(),
        });
        after.acked.entry(conv).or_default().extend(acks);
    }
    assert_eq!(after.total(), 10 * MESSAGES);
    wait_replicated(&active.h).await;
    cluster.assert_standby(1);
    assert_active(&active.h, "node-0").await;
    let data_dir = cluster.nodes[1].dir.path().to_owned();
    assert!(
        data_dir.join("journal.previous").is_dir(),
        "the restarted standby moved its journal aside: {:?}, {:#?}",
        std::fs::read_dir(&data_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
        cluster.process(1).seen
    );

    // The restarted standby takes over, with everything from before and
    // after its restart.
    cluster.process(0).signal(libc::SIGTERM);
    assert_eq!(
        cluster.process(0).wait_exit(Duration::from_secs(10)),
        Some(0)
    );
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    assert_eq!(new.index, 1);
    assert_active(&new.h, "node-1").await;
    let mut all = before;
    all.customers.extend(after.customers);
    all.acked.extend(after.acked);
    assert_recovered(&new.h, &all, &agents, CAPACITY, 3).await;
}

/// Waits until `GET /v1/cluster` on the active node lists exactly `ids`
/// (by node id) and `check` holds for its answer; the answer.
async fn wait_roster(
    h: &common::Harness,
    ids: &[&str],
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + TTL * 4;
    loop {
        let v = h.admin_get_ok("/v1/cluster").await;
        let listed: Vec<&str> = v["nodes"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["node_id"].as_str()).collect())
            .unwrap_or_default();
        if listed == ids && check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_node_lists_every_node_and_how_far_each_standby_has_copied() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(3);
    for i in 0..5 {
        active.h.create_agent(&format!("roster-{i}"), 2, &[]).await;
    }
    let durable = wait_replicated(&active.h).await;
    assert!(
        durable >= 5,
        "five agents, five records at least: {durable}"
    );
    // Every node has its line; the standbys have copied everything.
    let v = wait_roster(
        &active.h,
        &["node-0", "node-1", "node-2"],
        "every node listed, the standbys caught up",
        |v| {
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            nodes.iter().all(|n| match n["role"].as_str() {
                Some("active") => n["durable_lsn"].as_u64() >= Some(durable),
                Some("standby") => n["copied_lsn"].as_u64() >= Some(durable),
                _ => false,
            })
        },
    )
    .await;
    let roles: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["role"].as_str())
        .collect();
    assert_eq!(roles, ["active", "standby", "standby"], "{v}");

    // A standby answers on its own address. By default it relays to the
    // active node (`tests/cluster_relay.rs`): healthy, with its progress.
    let standby = cluster.standby_url(1);
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{standby}/healthz"))
        .send()
        .await
        .expect("the standby answers");
    assert_eq!(r.status().as_u16(), 200);
    let health: serde_json::Value = r.json().await.expect("json");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["standby"]["node_id"], "node-1", "{health}");
    assert_eq!(health["standby"]["role"], "standby", "{health}");
    assert_eq!(health["standby"]["active_node"], "node-0", "{health}");
    assert!(
        health["standby"]["copied_lsn"].as_u64() >= Some(durable),
        "{health}"
    );
    // With `cluster_relay = false`, `503 standby` to everything, with its
    // progress and the active node beside the error on /healthz.
    cluster.process(1).signal(libc::SIGKILL);
    cluster.process(1).wait_exit(Duration::from_secs(5));
    cluster.start_node_with(1, &[("SWITCHBOARD_CLUSTER_RELAY", "false")]);
    let standby = cluster.standby_url(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let r = http
            .get(format!("{standby}/healthz"))
            .send()
            .await
            .expect("the standby answers");
        assert_eq!(r.status().as_u16(), 503);
        let health: serde_json::Value = r.json().await.expect("json");
        if health["standby"]["active_node"] == "node-0" {
            break health;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["error"]["code"], "standby", "{health}");
    assert_eq!(health["standby"]["node_id"], "node-1", "{health}");
    assert_eq!(health["standby"]["role"], "standby", "{health}");
    let r = http
        .get(format!("{standby}/v1/cluster"))
        .bearer_auth(common::cluster::ADMIN)
        .send()
        .await
        .expect("the standby answers");
    assert_eq!(r.status().as_u16(), 503);
    let refused: serde_json::Value = r.json().await.expect("json");
    assert_eq!(refused["error"]["code"], "standby", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("node-0 is the active node")),
        "{refused}"
    );

    // A standby that dies drops out of the list once its line expires.
    cluster.process(2).signal(libc::SIGKILL);
    cluster.process(2).wait_exit(Duration::from_secs(5));
    wait_roster(
        &active.h,
        &["node-0", "node-1"],
        "the dead standby dropped out within the TTL",
        |_| true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploaded_before_a_failover_is_served_by_the_new_active_node() {
    let _serial = SERIAL.lock().await;
    // node-1 on a port of its own, as in production: it answers there as a
    // standby, and serves there once active.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut cluster = TestCluster::new(2);
    cluster.nodes[1].bind = format!("127.0.0.1:{port}");
    cluster.start_node(0);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node(1);
    assert_eq!(cluster.standby_url(1), format!("http://127.0.0.1:{port}"));
    let alice = active.h.create_agent("alice", 2, &[]).await;
    let (id, bytes) = upload(&active.h, &alice.token).await;
    wait_replicated(&active.h).await;

    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    assert_eq!(
        new.h.base,
        format!("http://127.0.0.1:{port}"),
        "the same address"
    );
    assert_active(&new.h, "node-1").await;
    assert_served(&new.h, &alice.token, &id, &bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_of_three_killed_under_load_loses_nothing_acknowledged() {
    const AGENTS: usize = 10;
    const CAPACITY: u64 = 6;
    const CUSTOMERS: usize = 60;
    const MESSAGES: usize = 40;
    let _serial = SERIAL.lock().await;
    // Three NATS servers, every stream and bucket with three replicas, and
    // the default lease TTL: the production setting (docs/cluster.md).
    let servers = common::nats::NatsServer::cluster(3).await;
    let mut cluster = TestCluster::on_nats(2, servers);
    cluster.ttl = Duration::from_secs(10);
    let replicas = [("SWITCHBOARD_CLUSTER_REPLICAS", "3")];
    cluster.start_node_with(0, &replicas);
    let active = cluster.wait_active(&[], Duration::from_secs(30));
    cluster.start_node_with(1, &replicas);
    cluster.wait_following(1);
    let load = Load::start(&active.h, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    load.wait_acked(CUSTOMERS * 4, Duration::from_secs(20))
        .await;

    // The first server (every node's first URL) crashes. A stream or
    // bucket it led has no leader until JetStream elects another (seconds):
    // acknowledgements wait meanwhile, and if it led the lease bucket for
    // longer than the lease allows, the active node fail-stops and the
    // standby takes over. Either way nothing acknowledged is lost.
    load.broker_gone();
    let killed = Instant::now();
    let at_kill = load.acked_now();
    cluster.nats.kill();
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    let finished = killed.elapsed();
    // A whole TTL after the kill, the lease was either renewed through it
    // or lost.
    tokio::time::sleep(cluster.ttl.saturating_sub(killed.elapsed())).await;
    let still_active =
        cluster.process(0).running() && active.h.admin_get("/v1/cluster").await.status == 200;
    let new = if still_active {
        active
    } else {
        assert_eq!(
            cluster.process(0).wait_exit(Duration::from_secs(15)),
            Some(75),
            "the active node fail-stops: {}",
            cluster.last_lines(0, 20)
        );
        cluster.wait_active(&[0], Duration::from_secs(60))
    };
    println!(
        "a NATS server of three killed with {at_kill} messages acknowledged: the customers \
         were done {} ms later with {} acknowledged; node-{} active {} ms after the kill ({})",
        finished.as_millis(),
        outcome.total(),
        new.index,
        killed.elapsed().as_millis(),
        if still_active {
            "rode it out"
        } else {
            "the lease lapsed while its bucket had no leader: failed over"
        }
    );
    let id = cluster.nodes[new.index].id.clone();
    let v = new.h.admin_get_ok("/v1/cluster").await;
    assert_eq!(v["node_id"], id.as_str(), "{v}");
    assert_eq!(v["role"], "active", "{v}");
    assert!(outcome.total() >= at_kill);
    assert_recovered(&new.h, &outcome, &agents, CAPACITY, 5).await;
    assert_only_writer_since_its_claim(&cluster, &id).await;
}

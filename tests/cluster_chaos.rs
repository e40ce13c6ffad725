//! One cluster through a run of faults in a row: three nodes of the real
//! binary on one real nats-server (a 2 s lease TTL), each round a fresh
//! load of desks and webchat customers (through the active node, or relayed
//! through a standby; the desks park one task in four and send one in four
//! back to the queue, so faults fall amid those moves too), then a fault: the active node killed, paused past
//! its lease, stopped cleanly; a standby killed; a standby restarted just
//! as the active node is killed; nats-server restarted, alone or as the
//! active node is killed; the active node killed and then the one that took
//! over from it. Every node that
//! went down is started again and comes back as a standby, so each node
//! changes role over the run.
//!
//! After each round everything its clients were told is stored is there
//! exactly once on whichever node is active, the clients come back with
//! their tokens and a conversation goes on to the end (with the desk that
//! holds it, or, when its assignment was not copied before the fault, with
//! the desk it is offered to again); after the last, so
//! is everything acknowledged in every round, and no agent of any round
//! holds more than its capacity or a conversation another holds.
//!
//! `CHAOS_REPEAT=n` runs the sequence of faults `n` times over (once by
//! default), for a longer soak by hand.
//!
//! The tests run one at a time (each starts its own nats-server and nodes).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{
    assert_active, wait_copied, wait_replicated, Active, TestCluster, ADMIN, TTL,
};
use common::load::{assert_acked_stored_once, assert_recovered, reconnect_desks, Desks, Load};
use common::{Agent, Harness};

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AGENTS: usize = 4;
const CAPACITY: u64 = 5;
const CUSTOMERS: usize = 20;
const MESSAGES: usize = 10;

/// What happens in a round.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` the active node.
    KillActive,
    /// `kill -9` the standby the round's clients are relayed through.
    KillEdge,
    /// `SIGSTOP` the active node past its lease, then `SIGCONT`: it must
    /// find itself fenced and exit 75.
    PauseActive,
    /// Restart nats-server (down a moment, shorter than the lease).
    RestartNats,
    /// `kill -9` a standby and start it again, then at once `kill -9` the
    /// active node: the other standby, or the one still starting, takes
    /// over.
    KillStandbyThenActive,
    /// `SIGTERM` the active node, the round's clients relayed through a
    /// standby.
    StopActive,
    /// `kill -9` the active node and restart nats-server at once: a
    /// standby takes over once NATS is back.
    KillActiveWithNats,
    /// `kill -9` the active node, then the node that takes over as soon as
    /// it serves: the last one takes over from the second.
    KillTwoActives,
}

impl Fault {
    /// Whether the round's clients go through a standby's relay.
    fn relayed(self) -> bool {
        matches!(self, Fault::KillEdge | Fault::StopActive)
    }
}

const ROUNDS: [Fault; 8] = [
    Fault::KillActive,
    Fault::KillEdge,
    Fault::PauseActive,
    Fault::RestartNats,
    Fault::KillStandbyThenActive,
    Fault::StopActive,
    Fault::KillActiveWithNats,
    Fault::KillTwoActives,
];

/// The running nodes other than `active`.
fn standbys(cluster: &mut TestCluster, active: usize) -> Vec<usize> {
    (0..cluster.nodes.len())
        .filter(|i| *i != active && cluster.process(*i).running())
        .collect()
}

/// Start every node that is down again (it comes back as a standby), and
/// wait until every standby has copied what the active node made durable.
async fn heal(cluster: &mut TestCluster, active: &Active) {
    for i in 0..cluster.nodes.len() {
        if !cluster.process(i).running() {
            cluster.start_node(i);
            cluster.wait_following(i);
        }
    }
    let durable = wait_replicated(&active.h).await;
    for i in 0..cluster.nodes.len() {
        if i != active.index {
            wait_copied(&active.h, &cluster.nodes[i].id, durable).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rides_out_a_run_of_faults_and_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, mut active) = TestCluster::start(3);
    heal(&mut cluster, &active).await;
    let mut acked_in_all = BTreeMap::new();
    let mut agents_of_all: Vec<Agent> = Vec::new();
    let mut moved_in_all = 0;
    let repeat: usize = std::env::var("CHAOS_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let rounds = ROUNDS.iter().copied().cycle().take(ROUNDS.len() * repeat);
    for (round, fault) in rounds.enumerate() {
        let edge = standbys(&mut cluster, active.index)[0];
        let clients = if fault.relayed() {
            Harness::external(&cluster.standby_url(edge), ADMIN)
        } else {
            Harness::external(&active.h.base, ADMIN)
        };
        let load = Load::start_named(
            &clients,
            &format!("r{round}a"),
            Desks::Move,
            AGENTS,
            CAPACITY,
            CUSTOMERS,
            MESSAGES,
        )
        .await;
        load.wait_acked(CUSTOMERS * MESSAGES / 3, Duration::from_secs(20))
            .await;

        let started = Instant::now();
        let old = active.index;
        let mut down = Vec::new();
        match fault {
            Fault::KillActive => {
                load.broker_gone();
                cluster.process(old).signal(libc::SIGKILL);
                cluster.process(old).wait_exit(Duration::from_secs(5));
                down.push(old);
            }
            Fault::KillEdge => {
                load.broker_gone();
                cluster.process(edge).signal(libc::SIGKILL);
                cluster.process(edge).wait_exit(Duration::from_secs(5));
            }
            Fault::PauseActive => {
                load.broker_gone();
                cluster.process(old).signal(libc::SIGSTOP);
                let new = cluster.wait_active(&[old], Duration::from_secs(20));
                assert_ne!(new.index, old);
                cluster.process(old).signal(libc::SIGCONT);
                assert_eq!(
                    cluster.process(old).wait_exit(Duration::from_secs(10)),
                    Some(75),
                    "the paused node, fenced, exits 75: {}",
                    cluster.last_lines(old, 20)
                );
                down.push(old);
            }
            Fault::RestartNats => {
                let at = load.acked_now();
                cluster.nats.restart();
                let after = load.wait_acked(at + 1, Duration::from_secs(20)).await;
                assert!(
                    after > at,
                    "acks resumed after the restart:\n{}",
                    cluster.last_lines(old, 40)
                );
            }
            Fault::KillStandbyThenActive => {
                load.broker_gone();
                cluster.process(edge).signal(libc::SIGKILL);
                cluster.process(edge).wait_exit(Duration::from_secs(5));
                cluster.start_node(edge);
                cluster.process(old).signal(libc::SIGKILL);
                cluster.process(old).wait_exit(Duration::from_secs(5));
                down.push(old);
            }
            Fault::KillActiveWithNats => {
                load.broker_gone();
                cluster.process(old).signal(libc::SIGKILL);
                cluster.process(old).wait_exit(Duration::from_secs(5));
                cluster.nats.restart();
                down.push(old);
            }
            Fault::KillTwoActives => {
                load.broker_gone();
                cluster.process(old).signal(libc::SIGKILL);
                cluster.process(old).wait_exit(Duration::from_secs(5));
                let second = cluster.wait_active(&[old], Duration::from_secs(20));
                cluster.process(second.index).signal(libc::SIGKILL);
                cluster
                    .process(second.index)
                    .wait_exit(Duration::from_secs(5));
                down.extend([old, second.index]);
            }
            Fault::StopActive => {
                load.broker_gone();
                cluster.process(old).signal(libc::SIGTERM);
                assert_eq!(
                    cluster.process(old).wait_exit(Duration::from_secs(10)),
                    Some(0)
                );
                down.push(old);
            }
        }
        active = cluster.wait_active(&down, Duration::from_secs(20));
        let served = started.elapsed();
        let agents = load.agents.clone();
        let outcome = load.finish().await;
        let id = cluster.nodes[active.index].id.clone();
        moved_in_all += outcome.moved;
        println!(
            "round {round}, {fault:?}: {} messages acknowledged, {} tasks parked or \
             transferred; {id} active, serving {} ms after the fault (TTL {} ms)",
            outcome.total(),
            outcome.moved,
            served.as_millis(),
            TTL.as_millis()
        );
        assert!(outcome.total() > 0, "round {round}: nothing acknowledged");
        if down.is_empty() {
            assert_eq!(active.index, old, "round {round}: no failover");
        }
        assert_active(&active.h, &id).await;
        assert_recovered(&active.h, &outcome, &agents, CAPACITY, 1).await;
        for (conv, acks) in outcome.acked {
            acked_in_all.insert(conv, acks);
        }
        agents_of_all.extend(agents);
        heal(&mut cluster, &active).await;
    }

    // Everything acknowledged in any round, on the node active at the end;
    // no agent over capacity, no conversation held twice.
    assert_acked_stored_once(&active.h, &acked_in_all).await;
    reconnect_desks(&active.h, &agents_of_all, CAPACITY).await;
    assert!(moved_in_all > 0, "the desks parked or transferred nothing");
}

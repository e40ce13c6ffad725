//! The conversation workflow (`loadtest/src/workflow.rs`) through a cluster
//! of three nodes of the real binary on one real nats-server (a 2 s lease
//! TTL): desks on one node, customers on another, both relayed to the
//! active node at first; the active node killed (`kill -9`) twice along the
//! way, each time another taking over and the killed one started again as a
//! standby, so the nodes the clients use change roles too. Every client
//! reconnects to its node as after a network drop, customers resend what had
//! no `ack`; then the workflow's checks: the router and every conversation
//! agree on each holder, no agent over capacity or sent a frame of a
//! conversation it does not hold, every acknowledged message stored once at
//! its `seq`, and everything wound down to completed or canceled with all
//! capacity given back.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{TestCluster, ADMIN};
use common::nats::free_port;
use loadtest::workflow::{self, Fault, Options};

/// The short offers and graces the workflow expects.
const SETTINGS: &[(&str, &str)] = &[
    ("SWITCHBOARD_OFFER_TIMEOUT", "2s"),
    ("SWITCHBOARD_REOFFER_COOLDOWN", "300ms"),
    ("SWITCHBOARD_DISCONNECT_GRACE", "1s"),
    ("SWITCHBOARD_CUSTOMER_GRACE", "1s"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_workflow_through_a_cluster_rides_out_failovers() {
    let mut cluster = TestCluster::new(3);
    // Fixed addresses: a node keeps its address across restarts and roles.
    for node in &mut cluster.nodes {
        node.bind = format!("127.0.0.1:{}", free_port());
    }
    let url = |cluster: &TestCluster, i: usize| format!("http://{}", cluster.nodes[i].bind);
    cluster.start_node_with(0, SETTINGS);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    assert_eq!(active.index, 0);
    for i in 1..3 {
        cluster.start_node_with(i, SETTINGS);
        cluster.wait_following(i);
    }
    let (desks, customers) = (url(&cluster, 1), url(&cluster, 2));
    let cluster = Arc::new(Mutex::new((cluster, 0usize)));
    let fault: Fault = {
        let cluster = cluster.clone();
        Box::new(move || {
            let cluster = cluster.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    let mut guard = cluster.lock().expect("cluster");
                    let (cluster, active) = &mut *guard;
                    let old = *active;
                    cluster.process(old).signal(libc::SIGKILL);
                    cluster.process(old).wait_exit(Duration::from_secs(10));
                    *active = cluster.wait_active(&[old], Duration::from_secs(20)).index;
                    cluster.start_node_with(old, SETTINGS);
                    cluster.wait_following(old);
                })
                .await
                .expect("failover");
            })
        })
    };
    let outcome = workflow::run(Options {
        base: desks,
        customer_base: Some(customers),
        admin: ADMIN.to_owned(),
        agents: 40,
        conversations: 400,
        limit: Duration::from_secs(120),
        seed: workflow::seed_from_env(5),
        chaos: Duration::from_secs(8),
        fault: Some((fault, 2)),
    })
    .await;
    if let Err(failures) = outcome {
        let mut guard = cluster.lock().expect("cluster");
        let (cluster, _) = &mut *guard;
        let logs: Vec<String> = (0..3).map(|i| cluster.last_lines(i, 15)).collect();
        panic!(
            "the workflow through the cluster failed:\n{failures}\n\nthe nodes' last lines:\n{}",
            logs.join("\n---\n")
        );
    }
}

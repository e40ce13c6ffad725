//! Durability with the real binary as a child process on a data dir: a
//! graceful shutdown (SIGTERM) closes every socket with a reason, flushes
//! and exits 0; a `kill -9` in the middle of a load loses nothing that was
//! acknowledged and duplicates nothing; after either, clients reconnect and
//! their life cycles finish.

mod common;

use std::path::Path;
use std::time::Duration;

use common::load::{assert_recovered, Desks, Load};
use common::process::{binary, Broker};
use common::*;

/// An admin token the broker accepts (at least 32 characters).
const ADMIN: &str = "durability-admin-0123456789abcdef0123";

/// The broker on `dir`, listening on a free port; its base URL.
fn broker_on(dir: &Path) -> (Broker, Harness) {
    let mut broker = Broker::start(
        binary()
            .args(["--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN)
            .env("SWITCHBOARD_CLIENT_LIMITS", "false")
            .env("SWITCHBOARD_SHUTDOWN_TIMEOUT", "5s"),
    );
    let api = broker.stdout_value("api");
    let base = api.trim_end_matches("/v1").to_owned();
    (broker, Harness::external(&base, ADMIN))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_socket_with_a_reason_and_the_restart_resumes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut broker, h) = broker_on(dir.path());
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (ann, mut ann_ws, _) = h.customer_with_message("Ann", "hello").await;
    let (_, assigned) = desk.take_offer().await;
    let conv = s(&assigned["task"]["conversation_id"]);
    desk.agent_send(&conv, "hi Ann", "r1").await;
    ann_ws.recv_message_text("hi Ann").await;

    broker.signal(libc::SIGTERM);
    assert_eq!(desk.recv_close().await, (1001, "shutting down".into()));
    assert_eq!(ann_ws.recv_close().await, (1001, "shutting down".into()));
    assert_eq!(broker.wait_exit(Duration::from_secs(10)), Some(0));
    drop(broker);

    let (_broker, h) = broker_on(dir.path());
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(
        hello["tasks"][0]["conversation_id"],
        conv.as_str(),
        "{hello}"
    );
    let (mut ann_ws, history) = h.connect_customer(&ann).await;
    assert_eq!(texts(&history["messages"]), ["hello", "hi Ann"]);
    let ack = ann_ws.say("thanks").await;
    assert_eq!(ack["seq"], 3);
    desk.recv_message_text("thanks").await;
    desk.end(&conv).await;
    let task = s(&hello["tasks"][0]["id"]);
    desk.complete(&task, "resolved", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_message_and_duplicates_none() {
    const AGENTS: usize = 100;
    const CAPACITY: u64 = 5;
    const CUSTOMERS: usize = 1_000;
    const MESSAGES: usize = 6;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut broker, h) = broker_on(dir.path());
    // Agents accept whatever they are offered, until the broker dies, and
    // park or send back to the queue one task in four each: the kill also
    // falls amid those moves (each recorded by the router, then by the
    // conversation).
    let load = Load::start_named(&h, "a", Desks::Move, AGENTS, CAPACITY, CUSTOMERS, MESSAGES).await;
    // Kill it while the customers are writing: once a third of the
    // messages are acknowledged.
    load.wait_acked(CUSTOMERS * MESSAGES / 3, Duration::from_secs(20))
        .await;
    assert!(
        load.wait_moved(Duration::from_secs(10)).await,
        "the desks parked or transferred nothing"
    );
    load.broker_gone();
    broker.signal(libc::SIGKILL);
    let _ = broker.wait_exit(Duration::from_secs(5));
    drop(broker);
    let agents = load.agents.clone();
    let outcome = load.finish().await;
    let total = outcome.total();
    assert!(
        total > 0,
        "the kill came before any message was acknowledged"
    );
    println!(
        "{total} messages acknowledged in {} conversations, {} tasks parked or transferred \
         before the kill",
        outcome.acked.len(),
        outcome.moved
    );

    // Everything acknowledged is there once; everyone comes back: no agent
    // over capacity, no conversation held twice, conversations go on and
    // end.
    let (_broker, h) = broker_on(dir.path());
    assert_recovered(&h, &outcome, &agents, CAPACITY, 10).await;
}

/// The conversation workflow (`loadtest/src/workflow.rs`: offers accepted,
/// rejected and run out, transfers cold and warm, parks, ends, breaks,
/// desks and customers away around their graces, leaves, outbound chats, a
/// supervisor's force-completes) with the broker killed (`kill -9`) three
/// times along the way, each time started again on the same data dir and
/// address.
/// Every client reconnects as after a network drop and customers resend
/// what had no `ack`; then the workflow's checks: the router and every
/// conversation agree on each holder, no agent over capacity or sent a
/// frame of a conversation it does not hold, every acknowledged message
/// stored once at its `seq`, every task completed or canceled in the end
/// with all capacity given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_workflow_survives_kill_9s_along_the_way() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_owned();
    let start = move |bind: &str| {
        let mut broker = Broker::start(
            binary()
                .args(["--bind", bind, "--data-dir"])
                .arg(&data)
                .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN)
                .env("SWITCHBOARD_CLIENT_LIMITS", "false")
                .env("SWITCHBOARD_OFFER_TIMEOUT", "2s")
                .env("SWITCHBOARD_REOFFER_COOLDOWN", "300ms")
                .env("SWITCHBOARD_DISCONNECT_GRACE", "1s")
                .env("SWITCHBOARD_CUSTOMER_GRACE", "1s"),
        );
        let api = broker.stdout_value("api");
        (broker, api.trim_end_matches("/v1").to_owned())
    };
    let (broker, base) = start("127.0.0.1:0");
    let addr = base.trim_start_matches("http://").to_owned();
    let broker = std::sync::Arc::new(std::sync::Mutex::new(Some(broker)));
    let start = std::sync::Arc::new(start);
    let fault: loadtest::workflow::Fault = {
        let broker = broker.clone();
        Box::new(move || {
            let (broker, start, addr) = (broker.clone(), start.clone(), addr.clone());
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    let mut slot = broker.lock().expect("broker");
                    if let Some(mut old) = slot.take() {
                        old.signal(libc::SIGKILL);
                        old.wait_exit(Duration::from_secs(10));
                    }
                    *slot = Some(start(&addr).0);
                })
                .await
                .expect("restart");
            })
        })
    };
    let outcome = loadtest::workflow::run(loadtest::workflow::Options {
        base: base.clone(),
        customer_base: None,
        admin: ADMIN.to_owned(),
        agents: 60,
        conversations: 600,
        limit: Duration::from_secs(90),
        seed: loadtest::workflow::seed_from_env(3),
        chaos: Duration::from_secs(8),
        fault: Some((fault, 3)),
    })
    .await;
    if let Err(failures) = outcome {
        panic!("the workflow across kill -9s failed:\n{failures}");
    }
    let restarted = broker.lock().expect("broker").take();
    assert!(restarted.is_some(), "the fault never ran");
}

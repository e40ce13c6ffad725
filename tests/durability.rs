//! Durability with the real binary as a child process on a data dir: a
//! graceful shutdown (SIGTERM) closes every socket with a reason, flushes
//! and exits 0; a `kill -9` in the middle of a load loses nothing that was
//! acknowledged and duplicates nothing; after either, clients reconnect and
//! their life cycles finish.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{binary, Broker};
use common::*;
use serde_json::Value;

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

fn signal(broker: &Broker, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &broker.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig}");
}

/// Wait for the child to exit; its exit code.
fn exit_code(broker: &mut Broker, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = broker.child.try_wait().expect("wait") {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

    signal(&broker, "-TERM");
    assert_eq!(desk.recv_close().await, (1001, "shutting down".into()));
    assert_eq!(ann_ws.recv_close().await, (1001, "shutting down".into()));
    assert_eq!(exit_code(&mut broker, Duration::from_secs(10)), Some(0));
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

/// What a client was told was stored: by conversation, `client_msg_id` →
/// `seq`.
type Acked = BTreeMap<String, BTreeMap<String, u64>>;

/// One customer: opens a conversation and sends `n` messages, each after
/// the previous one's ack, recording every ack; stops at the first failure
/// (the broker was killed).
async fn customer(
    h: &Harness,
    i: usize,
    n: usize,
    count: &AtomicUsize,
) -> (Session, Option<String>, Vec<(String, u64)>) {
    let session = h.create_session(&format!("c{i}"), None).await;
    let mut acks = Vec::new();
    let mut conv = None;
    let Ok(mut ws) = try_connect(&h.customer_ws_url(&session)).await else {
        return (session, conv, acks);
    };
    for k in 0..n {
        let id = format!("c{i}-{k}");
        let sent = ws
            .try_send(serde_json::json!({"type": "message", "text": format!("m{k}"), "client_msg_id": id}))
            .await;
        if !sent {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let ack = loop {
            match ws
                .try_recv_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(v) if v["type"] == "ack" => break Some(v),
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(ack) = ack else { break };
        conv = ack["conversation_id"].as_str().map(str::to_owned).or(conv);
        acks.push((id, ack["seq"].as_u64().expect("ack seq")));
        count.fetch_add(1, Ordering::Relaxed);
    }
    (session, conv, acks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_message_and_duplicates_none() {
    const AGENTS: usize = 100;
    const CUSTOMERS: usize = 1_000;
    const MESSAGES: usize = 6;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut broker, h) = broker_on(dir.path());
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        agents.push(h.create_agent(&format!("a{a}"), 5, &[]).await);
    }
    // Agents accept whatever they are offered, until the broker dies.
    let mut desks = Vec::new();
    for agent in &agents {
        let mut desk = h.agent_online(agent).await;
        desks.push(tokio::spawn(async move {
            let mut assigned = 0usize;
            while let Some(v) = desk.try_recv_within(Duration::from_secs(5)).await {
                if v["type"] == "task.offered" {
                    let task = v["task"]["id"].clone();
                    if !desk
                        .try_send(serde_json::json!({"type": "accept", "task_id": task}))
                        .await
                    {
                        break;
                    }
                    assigned += 1;
                }
            }
            assigned
        }));
    }
    let mut customers = Vec::new();
    let count = Arc::new(AtomicUsize::new(0));
    for i in 0..CUSTOMERS {
        let base = h.base.clone();
        let count = count.clone();
        customers.push(tokio::spawn(async move {
            customer(&Harness::external(&base, ADMIN), i, MESSAGES, &count).await
        }));
    }
    // Kill it while the customers are writing: once a third of the
    // messages are acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < CUSTOMERS * MESSAGES / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&broker, "-KILL");
    let _ = exit_code(&mut broker, Duration::from_secs(5));
    drop(broker);
    let mut sessions = Vec::new();
    let mut acked: Acked = BTreeMap::new();
    for c in customers {
        let (session, conv, acks) = c.await.expect("customer task");
        if let Some(conv) = &conv {
            acked.entry(conv.clone()).or_default().extend(acks);
        }
        sessions.push((session, conv));
    }
    for d in desks {
        let _ = d.await;
    }
    let total: usize = acked.values().map(BTreeMap::len).sum();
    assert!(
        total > 0,
        "the kill came before any message was acknowledged"
    );
    println!(
        "{total} messages acknowledged in {} conversations before the kill",
        acked.len()
    );

    let (_broker, h) = broker_on(dir.path());
    for (conv, acks) in &acked {
        let messages = h.messages(conv).await;
        let list = messages["messages"].as_array().expect("messages");
        assert_gap_free(&messages["messages"]);
        let mut seen = BTreeSet::new();
        for m in list {
            let id = m["client_msg_id"].as_str().unwrap_or_default().to_owned();
            assert!(seen.insert(id.clone()), "{conv}: {id} stored twice");
        }
        for (id, seq) in acks {
            let stored: Vec<&Value> = list
                .iter()
                .filter(|m| m["client_msg_id"] == id.as_str())
                .collect();
            assert_eq!(
                stored.len(),
                1,
                "{conv}: acknowledged {id} not stored exactly once"
            );
            assert_eq!(stored[0]["seq"].as_u64(), Some(*seq), "{conv}: {id} moved");
        }
    }
    // Everyone comes back: no agent over capacity, every customer's
    // conversation goes on and ends.
    let mut open = 0;
    for agent in &agents {
        let (_desk, hello) = h.connect_agent(agent).await;
        let tasks = hello["tasks"].as_array().map_or(0, Vec::len);
        assert!(tasks <= 5, "{} holds {tasks} tasks: {hello}", agent.id);
        open += tasks;
    }
    assert!(open <= AGENTS * 5);
    for (session, conv) in sessions.iter().take(10) {
        let (mut ws, history) = h.connect_customer(session).await;
        if let Some(conv) = conv {
            assert_eq!(history["conversation_id"], conv.as_str(), "{history}");
            ws.say("after the restart").await;
        }
    }
}

//! An agent desktop that stops reading is cut off as a slow consumer, loses
//! nothing, and does not disturb anybody else.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Characters per customer message: large, so kernel socket buffers fill fast.
const TEXT_LEN: usize = 20_000;
/// Upper bound on messages sent while waiting for the cut-off.
const MAX_MESSAGES: usize = 1500;
/// Messages sent after the cut-off was observed (must still be acked and kept).
const AFTER_CUTOFF: usize = 10;

fn big_text(i: usize) -> String {
    let head = format!("msg-{i:05}-");
    format!("{head}{}", "x".repeat(TEXT_LEN - head.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_agent_is_disconnected_and_nothing_is_lost() {
    let mut cfg = test_config();
    cfg.socket_backlog = 16;
    cfg.max_text = TEXT_LEN;
    // Room for every message this test may send (the history cap is not
    // what it is about).
    cfg.max_history_bytes = (MAX_MESSAGES * TEXT_LEN * 2) as u64;
    cfg.disconnect_grace = Duration::from_secs(30);
    // Keep heartbeats out of the picture: the cut-off must be for slowness.
    cfg.heartbeat_interval = Duration::from_secs(30);
    cfg.client_timeout = Duration::from_secs(120);
    let h = start_with(cfg);

    // Pair 1: alice and Dana.
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let s1 = h.create_session("Dana", None).await;
    let (mut c1, _hist) = h.connect_customer(&s1).await;
    let ack = c1.say_with_id("start", "start").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _assigned) = a.take_offer().await;
    let task_id = s(&offer["task"]["id"]);

    // Pair 2: bob and Eve, set up before alice stalls.
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let s2 = h.create_session("Eve", None).await;
    let (mut c2, _hist) = h.connect_customer(&s2).await;

    // Alice stops reading from here on. Dana writes a lot; every message is acked.
    let mut sent = 0usize;
    let mut cut_at = None;
    let mut next_check = 10;
    while sent < MAX_MESSAGES {
        let i = sent;
        let ack = c1.say_with_id(&big_text(i), &format!("big-{i}")).await;
        assert_eq!(ack["seq"], (i + 2) as u64, "ack seq: {ack}");
        assert_eq!(ack["conversation_id"], conv.as_str());
        sent += 1;
        match cut_at {
            None if sent >= next_check => {
                next_check += 10;
                let v = h.agent_view("alice").await;
                if v["connected"] == false {
                    cut_at = Some(sent);
                }
            }
            Some(at) if sent >= at + AFTER_CUTOFF => break,
            _ => {}
        }
    }
    assert!(
        cut_at.is_some(),
        "alice never showed connected:false after {sent} messages of {TEXT_LEN} chars \
         (socket_backlog 16)"
    );
    eprintln!("slow consumer: connected:false seen after {cut_at:?} messages, {sent} sent");
    let v = h
        .wait_agent("alice", "connected:false", |v| v["connected"] == false)
        .await;
    assert_eq!(v["connected"], false);

    // Meanwhile the rest of the broker works normally.
    let ack2 = c2.say("hi from Eve").await;
    let ob = b.offer_for(&s(&ack2["conversation_id"])).await;
    let conv2 = s(&ob["task"]["conversation_id"]);
    let assigned = b.accept(&s(&ob["task"]["id"])).await;
    assert_eq!(texts(&assigned["history"]), vec!["hi from Eve"]);
    b.agent_send(&conv2, "hello Eve", "b1").await;
    let m = c2.recv_message_text("hello Eve").await;
    assert_eq!(m["message"]["seq"], 2);
    c2.say("thanks").await;
    b.recv_message_text("thanks").await;

    // Alice reads again: whatever was queued, then close 1008 "slow_consumer".
    let (code, reason) = a.recv_close_within(Duration::from_secs(20)).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "slow_consumer"),
        "close frame of the slow consumer"
    );
    // The frames she did get are an in-order, gap-free run of the conversation.
    let got: Vec<u64> = a
        .pending
        .iter()
        .filter(|v| v["type"] == "message" && v["conversation_id"] == conv.as_str())
        .map(|v| v["message"]["seq"].as_u64().expect("seq"))
        .collect();
    if let Some(first) = got.first() {
        let want: Vec<u64> = (*first..*first + got.len() as u64).collect();
        assert_eq!(got, want, "messages delivered before the close");
    }
    drop(a);

    // Reconnect within the grace period: the resync has the newest messages
    // (a bounded replay), and the pages before them the rest: every message.
    let (mut a, hello) = h.connect_agent(&alice).await;
    let tasks = hello["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "hello after reconnect: {}", hello["tasks"]);
    assert_eq!(tasks[0]["id"], task_id.as_str());
    let re = a
        .recv_where("task.assigned resync", |v| v["type"] == "task.assigned")
        .await;
    let mut all: Vec<Value> = re["history"].as_array().expect("history").clone();
    let mut earlier = re["history_has_earlier"] == true;
    while earlier {
        let before = all[0]["seq"].as_u64().expect("seq");
        let page = h
            .get(
                &format!("/v1/conversations/{conv}/messages?before_seq={before}&limit=100"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(page.status, 200, "page before {before}");
        let mut got = page.body["messages"].as_array().expect("messages").clone();
        got.extend(all);
        all = got;
        earlier = page.body["has_more"] == true;
    }
    let history = &Value::Array(all);
    assert_gap_free(history);
    let texts: Vec<String> = texts(history);
    assert_eq!(texts.len(), sent + 1, "history length");
    assert_eq!(texts[0], "start");
    for (i, t) in texts[1..].iter().enumerate() {
        assert!(
            t == &big_text(i),
            "message {i} in history differs (starts {:?})",
            &t[..t.len().min(16)]
        );
    }
    let cmids: Vec<Value> = history
        .as_array()
        .expect("history")
        .iter()
        .skip(1)
        .map(|m| m["client_msg_id"].clone())
        .collect();
    for (i, id) in cmids.iter().enumerate() {
        assert_eq!(id, &format!("big-{i}"), "client_msg_id of message {i}");
    }

    // And she is live again.
    c1.say("are you back?").await;
    let m = a.recv_message_text("are you back?").await;
    assert_eq!(m["message"]["seq"], (sent + 2) as u64);
    let v = h.agent_view("alice").await;
    assert_eq!(v["connected"], true, "{v}");
}

//! Ending conversations, wrap-up and completion.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn is_offer(v: &Value) -> bool {
    v["type"] == "task.offered"
}

/// One agent (capacity 1) with one accepted webchat conversation.
/// Returns (harness-owned sockets, conversation id, task id).
async fn assigned_conversation(h: &Harness) -> (Ws, Ws, String, String) {
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, cust, ack) = h.customer_with_message("Dana", "help").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _assigned) = a.take_offer().await;
    (a, cust, conv, s(&offer["task"]["id"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_before_end_is_invalid_state() {
    let h = start();
    let (mut a, _cust, conv, task) = assigned_conversation(&h).await;
    let err = a
        .call_err(
            json!({"type": "complete", "task_id": task, "disposition": "resolved", "notes": ""}),
            "invalid_state",
        )
        .await;
    assert!(err["message"].is_string(), "{err}");
    let c = h.conversation(&conv).await;
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["task"]["state"], "assigned", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_disposition_is_rejected() {
    let h = start();
    let (mut a, _cust, conv, task) = assigned_conversation(&h).await;
    a.end(&conv).await;
    a.call_err(
        json!({"type": "complete", "task_id": task, "disposition": "made_up", "notes": "x"}),
        "invalid_disposition",
    )
    .await;
    let c = h.conversation(&conv).await;
    assert_eq!(c["task"]["state"], "wrapping", "{c}");
    // A valid one then works.
    a.complete(&task, "follow_up", "call back Monday").await;
    let c = h.conversation(&conv).await;
    assert_eq!(c["task"]["state"], "completed", "{c}");
    assert_eq!(c["disposition"], "follow_up", "{c}");
    assert_eq!(c["notes"], "call back Monday", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_over_limit_are_rejected() {
    let h = start();
    let (mut a, _cust, conv, task) = assigned_conversation(&h).await;
    a.end(&conv).await;
    let long = "n".repeat(4001);
    a.call_err(
        json!({"type": "complete", "task_id": task, "disposition": "resolved", "notes": long}),
        "text_too_long",
    )
    .await;
    let c = h.conversation(&conv).await;
    assert_eq!(c["task"]["state"], "wrapping", "{c}");
    // Exactly at the limit (in characters, not bytes) is fine.
    let at_limit = "é".repeat(4000);
    a.complete(&task, "resolved", &at_limit).await;
    let c = h.conversation(&conv).await;
    assert_eq!(c["notes"], at_limit.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapup_timeout_auto_completes_and_frees_capacity() {
    let mut cfg = test_config();
    cfg.wrapup_timeout = Duration::from_millis(300);
    let h = start_with(cfg);
    let (mut a, _cust, conv, task) = assigned_conversation(&h).await;
    a.end(&conv).await;

    let done = a
        .recv_where("task.completed", |v| v["type"] == "task.completed")
        .await;
    assert_eq!(done["task_id"], task.as_str(), "{done}");
    let c = h.conversation(&conv).await;
    assert_eq!(c["task"]["state"], "completed", "{c}");
    assert_eq!(c["disposition"], "no_response", "{c}");

    // Capacity is free again: the next customer is offered to alice.
    let (_s2, _c2, ack2) = h.customer_with_message("Eve", "next").await;
    let o = a.offer().await;
    assert_eq!(o["task"]["conversation_id"], ack2["conversation_id"], "{o}");

    // Completing the auto-completed task is no longer possible.
    let err = a
        .call(json!({"type": "complete", "task_id": task, "disposition": "resolved", "notes": ""}))
        .await;
    assert_eq!(err["type"], "error", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_held_while_wrapping() {
    let h = start();
    let (mut a, _cust, conv, task) = assigned_conversation(&h).await;
    a.end(&conv).await;
    let v = h.agent_view("alice").await;
    assert_eq!(v["load"]["webchat"], 1, "wrapping task counts: {v}");

    let (_s2, _c2, ack2) = h.customer_with_message("Eve", "next").await;
    a.expect_none("offer while wrapping at capacity", QUIET, is_offer)
        .await;
    let c2 = h.conversation(&s(&ack2["conversation_id"])).await;
    assert_eq!(c2["task"]["state"], "queued", "{c2}");

    a.complete(&task, "resolved", "").await;
    let o = a.offer().await;
    assert_eq!(o["task"]["conversation_id"], ack2["conversation_id"], "{o}");
    let v = h.agent_view("alice").await;
    assert_eq!(v["load"]["webchat"], 1, "the new offer counts: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_conversation_rejects_sends() {
    let h = start();
    let (mut a, mut cust, conv, _task) = assigned_conversation(&h).await;
    a.end(&conv).await;
    cust.recv_type("conversation.ended").await;
    a.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "late", "client_msg_id": "late"}),
        "invalid_state",
    )
    .await;
    let msgs = h.messages(&conv).await;
    assert_eq!(texts(&msgs["messages"]), vec!["help"], "{msgs}");
}

//! Parking and queue inactivity over real sockets: a parked task frees its
//! agent's capacity and comes back on the customer's next message or at its
//! time, offered first to the agent who parked it; a queue's inactivity
//! settings warn a silent customer and then end the conversation.
mod common;

use std::time::{Duration, SystemTime};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// A frame of this conversation (or its task).
fn of(conv: &str, task: &str) -> impl Fn(&Value) -> bool {
    let (conv, task) = (conv.to_owned(), task.to_owned());
    move |v: &Value| {
        v["conversation_id"] == conv.as_str()
            || v["task_id"] == task.as_str()
            || v["task"]["id"] == task.as_str()
    }
}

async fn load(h: &Harness, agent: &str) -> u64 {
    h.agent_view(agent).await["load"]["webchat"]
        .as_u64()
        .expect("load")
}

/// The open task `task` as `GET /v1/tasks` shows it.
async fn listed(h: &Harness, task: &str) -> Value {
    let tasks = h.admin_get_ok("/v1/tasks").await;
    tasks
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == task).cloned())
        .unwrap_or_else(|| panic!("{task} in {tasks}"))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_frees_capacity_and_the_customer_brings_it_back_to_the_same_agent() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut c, ack) = h
        .customer_with_message("Dana", "I will send the receipt")
        .await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _) = a.take_offer().await;
    let task = s(&offer["task"]["id"]);
    // Bob has been idle longer, with as much room: he would win otherwise.
    let bob = h.create_agent("bob", 2, &[]).await;
    let mut b = h.agent_online(&bob).await;

    let v = a.call(json!({"type": "park", "task_id": task})).await;
    assert_eq!(v["type"], "task.parked", "{v}");
    assert_eq!(v["task_id"], task.as_str());
    assert_eq!(v["conversation_id"], conv.as_str());
    assert_eq!(v["until"], Value::Null);
    assert_eq!(load(&h, "alice").await, 0, "capacity freed");
    let t = listed(&h, &task).await;
    assert_eq!(t["state"], "parked");
    assert_eq!(t["agent_id"], "alice");
    a.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "hi"}),
        "not_your_task",
    )
    .await;

    c.say("here it is").await;
    let back = a.offer_for(&conv).await;
    assert_eq!(back["task"]["id"], task.as_str());
    b.expect_none("bob offered the parked task", QUIET, of(&conv, &task))
        .await;
    let assigned = a.accept(&task).await;
    assert_eq!(
        texts(&assigned["history"]),
        vec!["I will send the receipt", "here it is"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_until_a_time_comes_back_then() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, _c, ack) = h.customer_with_message("Dana", "call me back").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _) = a.take_offer().await;
    let task = s(&offer["task"]["id"]);
    let until = rfc3339(SystemTime::now() + Duration::from_millis(700));
    let v = a
        .call(json!({"type": "park", "task_id": task, "until": until}))
        .await;
    assert_eq!(v["type"], "task.parked", "{v}");
    assert_eq!(v["until"], until.as_str());
    let back = a.offer_for(&conv).await;
    assert_eq!(back["task"]["id"], task.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_task_goes_to_someone_else_when_its_agent_cannot_take_it() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut c, ack) = h.customer_with_message("Dana", "later").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _) = a.take_offer().await;
    let task = s(&offer["task"]["id"]);
    let v = a.call(json!({"type": "park", "task_id": task})).await;
    assert_eq!(v["type"], "task.parked", "{v}");
    a.set_activity("break").await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    c.say("back now").await;
    let offer = b.offer_for(&conv).await;
    assert_eq!(offer["task"]["id"], task.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_errors_and_the_customer_leaving_a_parked_chat() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let (_s, mut c, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _) = a.take_offer().await;
    let task = s(&offer["task"]["id"]);
    let mut b = h.agent_online(&bob).await;

    b.call_err(json!({"type": "park", "task_id": task}), "not_your_task")
        .await;
    a.call_err(
        json!({"type": "park", "task_id": "tk_missing"}),
        "unknown_task",
    )
    .await;
    let past = rfc3339(SystemTime::now() - Duration::from_secs(60));
    a.call_err(
        json!({"type": "park", "task_id": task, "until": past}),
        "bad_request",
    )
    .await;
    a.call_err(
        json!({"type": "park", "task_id": task, "until": "tomorrow"}),
        "bad_request",
    )
    .await;
    // Not while a warm transfer is pending.
    let v = a
        .call(json!({"type": "transfer", "task_id": task, "to": {"agent": "bob"}, "mode": "warm"}))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    b.offer_for(&conv).await;
    a.call_err(json!({"type": "park", "task_id": task}), "invalid_state")
        .await;
    let v = a
        .call(json!({"type": "transfer.cancel", "task_id": task}))
        .await;
    assert_eq!(v["type"], "ok", "{v}");

    let v = a.call(json!({"type": "park", "task_id": task})).await;
    assert_eq!(v["type"], "task.parked", "{v}");
    // A parked task is not ended: the customer leaving cancels it.
    c.send(json!({"type": "leave"})).await;
    c.recv_type("conversation.ended").await;
    let v = h
        .wait_conversation(&conv, "canceled", |v| v["task"]["state"] == "canceled")
        .await;
    assert_eq!(v["task"]["state"], "canceled");
    let r = h
        .request(Method::GET, "/v1/tasks?state=parked", Some(&h.admin), None)
        .await;
    assert_eq!(r.body, json!([]), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_customer_is_warned_then_the_conversation_ends_for_inactivity() {
    let h = start();
    let r = h
        .request(
            Method::POST,
            "/v1/queues",
            Some(&h.admin),
            Some(&json!({"id": "quiet", "inactivity":
                {"warn_after": "400ms", "warning": "Are you still there?", "close_after": "1200ms"}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut c, conv) = customer_in(&h, "Dana", "quiet").await;
    let (offer, _) = a.take_offer().await;
    let task = s(&offer["task"]["id"]);

    let warning = c.recv_message_text("Are you still there?").await;
    assert_eq!(warning["message"]["from"], "system");
    a.recv_message_text("Are you still there?").await;
    // The customer answers: the clock starts again.
    c.say("yes, one moment").await;
    a.expect_none(
        "an end right after the customer wrote",
        Duration::from_millis(700),
        |v| v["type"] == "conversation.ended",
    )
    .await;
    let ended = a.recv_type("conversation.ended").await;
    assert_eq!(ended["reason"], "inactivity", "{ended}");
    assert_eq!(ended["task_id"], task.as_str());
    let ended = c.recv_type("conversation.ended").await;
    assert_eq!(ended["reason"], "inactivity");
    let v = h.conversation(&conv).await;
    assert_eq!(v["task"]["state"], "wrapping", "{v}");
    a.complete(&task, "resolved", "").await;
}

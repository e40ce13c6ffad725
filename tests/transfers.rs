//! Transfers over real sockets: cold (to a queue, to an agent, falling back
//! to the queue), warm (accept, reject, timeout, cancel, end while pending),
//! a desk reloaded while its warm transfer is pending, the sender going
//! offline while it is (the freed target takes the best waiting task), the
//! supervisor's cold transfer, and the errors.
mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard::Config;

fn config() -> Config {
    let mut c = test_config();
    c.offer_timeout = Duration::from_secs(5);
    c
}

async fn create_queue(h: &Harness, body: Value) {
    let r = h
        .request(Method::POST, "/v1/queues", Some(&h.admin), Some(&body))
        .await;
    assert_eq!(r.status, 201, "create queue {body}: {}", r.text);
}

/// A frame of this conversation (or its task).
fn of(conv: &str, task: &str) -> impl Fn(&Value) -> bool {
    let (conv, task) = (conv.to_owned(), task.to_owned());
    move |v: &Value| {
        v["conversation_id"] == conv.as_str()
            || v["task_id"] == task.as_str()
            || v["task"]["id"] == task.as_str()
    }
}

/// `alice` online and holding a customer's conversation: (alice's desk,
/// customer socket, conversation id, task id).
async fn alice_holds(h: &Harness, capacity: u64) -> (Ws, Ws, String, String) {
    let alice = h.create_agent("alice", capacity, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut c, ack) = h.customer_with_message("Dana", "my order is late").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _) = a.take_offer().await;
    c.recv_type("agent.joined").await;
    (a, c, conv, s(&offer["task"]["id"]))
}

fn transfer(task: &str, to: Value, mode: &str, note: &str) -> Value {
    json!({"type": "transfer", "task_id": task, "to": to, "mode": mode, "note": note})
}

async fn load(h: &Harness, agent: &str) -> u64 {
    h.agent_view(agent).await["load"]["webchat"]
        .as_u64()
        .expect("load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_to_a_queue_releases_the_sender_at_once() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "billing", "skills": ["billing"]})).await;
    let (mut a, mut c, conv, task) = alice_holds(&h, 1).await;
    a.agent_send(&conv, "Let me check", "a1").await;

    let v = a
        .call(transfer(
            &task,
            json!({"queue": "billing"}),
            "cold",
            "wants a refund",
        ))
        .await;
    assert_eq!(v["type"], "task.transferred", "{v}");
    assert_eq!(v["task_id"], task.as_str());
    assert_eq!(v["conversation_id"], conv.as_str());
    assert_eq!(v["to"], json!({"queue": "billing"}));
    assert_eq!(load(&h, "alice").await, 0, "alice's capacity freed at once");

    // Alice gets nothing more of it, and may not write to it.
    c.say("are you there?").await;
    a.expect_none(
        "a frame of the transferred conversation",
        QUIET,
        of(&conv, &task),
    )
    .await;
    a.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "hi"}),
        "not_your_task",
    )
    .await;

    // Bob (billing) is offered it, with the transfer and the chain.
    let bob = h.create_agent("bob", 1, &["billing"]).await;
    let mut b = h.agent_online(&bob).await;
    let offer = b.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["from"], "alice", "{offer}");
    assert_eq!(offer["transfer"]["mode"], "cold");
    assert_eq!(offer["transfer"]["note"], "wants a refund");
    assert_eq!(offer["task"]["queue"], "billing");
    assert_eq!(offer["task"]["transfers"][0]["note"], "wants a refund");
    let assigned = b.accept(&task).await;
    assert_eq!(
        texts(&assigned["history"]),
        vec!["my order is late", "Let me check", "are you there?"],
        "the whole history"
    );
    assert_eq!(assigned["task"]["transfers"][0]["from"], "alice");
    let joined = c.recv_type("agent.joined").await;
    assert_eq!(joined["agent"]["name"], "Agent bob");
    b.agent_send(&conv, "Bob here", "b1").await;
    c.recv_message_text("Bob here").await;
    a.expect_none("bob's reply at alice's desk", QUIET, of(&conv, &task))
        .await;
    let tasks = h.admin_get_ok("/v1/tasks").await;
    let t = tasks
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == task.as_str()).cloned())
        .unwrap_or_else(|| panic!("task in {tasks}"));
    assert_eq!(t["agent_id"], "bob");
    assert_eq!(t["queue"], "billing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_to_a_queue_goes_ahead_of_newer_tasks() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "billing", "skills": ["billing"]})).await;
    let (mut a, _c, conv, task) = alice_holds(&h, 1).await;
    // A newer task waits in billing, where nobody is online yet.
    let (_s2, _c2, newer) = customer_in(&h, "Eve", "billing").await;
    let v = a
        .call(transfer(&task, json!({"queue": "billing"}), "cold", ""))
        .await;
    assert_eq!(v["type"], "task.transferred", "{v}");

    let bob = h.create_agent("bob", 1, &["billing"]).await;
    let mut b = h.agent_online(&bob).await;
    let offer = b.offer().await;
    assert_eq!(
        offer["task"]["conversation_id"],
        conv.as_str(),
        "the transferred task (older) first, not {newer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_to_an_agent_falls_back_to_the_queue_on_reject() {
    let mut cfg = config();
    cfg.offer_timeout = Duration::from_millis(600);
    let h = start_with(cfg);
    let (mut a, _c, conv, task) = alice_holds(&h, 1).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;

    let v = a
        .call(transfer(&task, json!({"agent": "bob"}), "cold", "VIP"))
        .await;
    assert_eq!(v["type"], "task.transferred", "{v}");
    assert_eq!(v["to"], json!({"agent": "bob"}));
    let offer = b.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["note"], "VIP");
    assert_eq!(
        load(&h, "bob").await,
        1,
        "bob's capacity counted from the offer"
    );
    b.reject(&task).await;

    // Back to the queue: carol takes it (alice, who let go, is passed over).
    let carol = h.create_agent("carol", 1, &[]).await;
    let mut cw = h.agent_online(&carol).await;
    let offer = cw.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["from"], "alice", "{offer}");
    a.expect_none("an offer back to alice", QUIET, |v| {
        v["type"] == "task.offered"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_to_an_agent_who_lets_it_time_out_falls_back_to_the_queue() {
    let mut cfg = config();
    cfg.offer_timeout = Duration::from_millis(600);
    let h = start_with(cfg);
    let (mut a, _c, conv, task) = alice_holds(&h, 1).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let v = a
        .call(transfer(&task, json!({"agent": "bob"}), "cold", ""))
        .await;
    assert_eq!(v["type"], "task.transferred", "{v}");
    b.offer_for(&conv).await;
    let r = b
        .recv_where("rescinded on timeout", |v| {
            v["type"] == "task.rescinded" && v["task_id"] == task.as_str()
        })
        .await;
    assert_eq!(r["reason"], "timeout");
    let carol = h.create_agent("carol", 1, &[]).await;
    let mut cw = h.agent_online(&carol).await;
    let offer = cw.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["to"], json!({"agent": "bob"}), "{offer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_errors() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "sms_only", "channels": ["sms"]})).await;
    let (mut a, _c, _conv, task) = alice_holds(&h, 1).await;
    let bob = h.create_agent("bob", 1, &["spanish"]).await;
    let mut b = h.agent_online(&bob).await;
    let r = h
        .request(
            Method::POST,
            "/v1/agents",
            Some(&h.admin),
            Some(&json!({"id": "smsonly", "capacity": {"webchat": 0, "sms": 2}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    for (to, code) in [
        (json!({"queue": "nope"}), "not_found"),
        (json!({"agent": "nobody"}), "not_found"),
        (json!({"queue": "sms_only"}), "bad_request"),
        (json!({"agent": "smsonly"}), "bad_request"),
        (json!({"agent": "alice"}), "bad_request"),
    ] {
        a.call_err(transfer(&task, to, "cold", ""), code).await;
    }
    // Bob does not hold it.
    b.call_err(
        transfer(&task, json!({"queue": "default"}), "cold", ""),
        "not_your_task",
    )
    .await;
    a.call_err(
        transfer("tk_missing", json!({"queue": "default"}), "cold", ""),
        "unknown_task",
    )
    .await;
    a.call_err(
        transfer(&task, json!({"queue": "default"}), "sideways", ""),
        "bad_request",
    )
    .await;
    a.call_err(
        transfer(&task, json!({"agent": "bob"}), "cold", &"x".repeat(2001)),
        "text_too_long",
    )
    .await;
    // A skilled queue's task and an agent without the skill.
    create_queue(&h, json!({"id": "es", "skills": ["spanish"]})).await;
    let r = a
        .call(transfer(&task, json!({"queue": "es"}), "cold", ""))
        .await;
    assert_eq!(r["type"], "task.transferred", "{r}");
    let offer = b.offer().await;
    let task = s(&offer["task"]["id"]);
    b.accept(&task).await;
    b.call_err(
        transfer(&task, json!({"agent": "alice"}), "cold", ""),
        "bad_request",
    )
    .await;
    // Alice still holds nothing: the failed transfers changed nothing.
    assert_eq!(load(&h, "alice").await, 0);
    assert_eq!(load(&h, "bob").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_moves_only_when_the_target_accepts() {
    let h = start_with(config());
    let (mut a, mut c, conv, task) = alice_holds(&h, 1).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;

    let v = a
        .call(transfer(
            &task,
            json!({"agent": "bob"}),
            "warm",
            "billing question",
        ))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    let offer = b.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["mode"], "warm", "{offer}");
    assert_eq!(offer["transfer"]["note"], "billing question");
    assert_eq!(offer["transfer"]["from"], "alice");
    // Both count: alice until she is released, bob from the offer.
    assert_eq!(load(&h, "alice").await, 1);
    assert_eq!(load(&h, "bob").await, 1);
    // A second transfer while one is pending is refused.
    a.call_err(
        transfer(&task, json!({"queue": "default"}), "cold", ""),
        "invalid_state",
    )
    .await;
    // Alice keeps the conversation meanwhile; bob sees none of it live.
    c.say("still waiting").await;
    a.recv_message_text("still waiting").await;
    a.agent_send(&conv, "Bringing in a colleague", "a1").await;
    b.expect_none("a live frame before accepting", QUIET, |v| {
        v["type"] == "message"
    })
    .await;
    b.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "hi"}),
        "not_your_task",
    )
    .await;

    let assigned = b.accept(&task).await;
    assert_eq!(
        texts(&assigned["history"]),
        vec![
            "my order is late",
            "still waiting",
            "Bringing in a colleague"
        ]
    );
    assert_eq!(assigned["task"]["transfers"][0]["mode"], "warm");
    let moved = a.recv_type("task.transferred").await;
    assert_eq!(moved["task_id"], task.as_str());
    assert_eq!(moved["to"], json!({"agent": "bob"}));
    let joined = c.recv_type("agent.joined").await;
    assert_eq!(joined["agent"]["name"], "Agent bob");
    h.wait_agent("alice", "capacity back", |v| v["load"]["webchat"] == 0)
        .await;
    assert_eq!(load(&h, "bob").await, 1);
    c.say("hello bob").await;
    b.recv_message_text("hello bob").await;
    a.expect_none("the conversation at alice's desk", QUIET, of(&conv, &task))
        .await;
    a.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "hi"}),
        "not_your_task",
    )
    .await;
}

/// Alice holds a task and has offered it warm to bob: (alice, bob,
/// customer, conversation, task).
async fn warm_pending(h: &Harness) -> (Ws, Ws, Ws, String, String) {
    let (mut a, c, conv, task) = alice_holds(h, 1).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let v = a
        .call(transfer(&task, json!({"agent": "bob"}), "warm", ""))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    b.offer_for(&conv).await;
    (a, b, c, conv, task)
}

/// The sender still holds the conversation: it can write, bob's capacity
/// is back.
async fn alice_keeps(h: &Harness, a: &mut Ws, c: &mut Ws, conv: &str) {
    a.agent_send(conv, "still me", &next_ref("a")).await;
    c.recv_message_text("still me").await;
    h.wait_agent("bob", "capacity back", |v| v["load"]["webchat"] == 0)
        .await;
    assert_eq!(load(h, "alice").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_rejected_leaves_it_with_the_sender() {
    let h = start_with(config());
    let (mut a, mut b, mut c, conv, task) = warm_pending(&h).await;
    b.reject(&task).await;
    let f = a.recv_type("transfer.failed").await;
    assert_eq!(
        f,
        json!({"type": "transfer.failed", "task_id": task, "reason": "rejected"})
    );
    alice_keeps(&h, &mut a, &mut c, &conv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_timed_out_leaves_it_with_the_sender() {
    let mut cfg = config();
    cfg.offer_timeout = Duration::from_millis(500);
    let h = start_with(cfg);
    let (mut a, mut b, mut c, conv, task) = warm_pending(&h).await;
    let f = a.recv_type("transfer.failed").await;
    assert_eq!(f["reason"], "timeout");
    let r = b.recv_type("task.rescinded").await;
    assert_eq!(r["reason"], "timeout");
    b.call_err(json!({"type": "accept", "task_id": task}), "not_your_task")
        .await;
    alice_keeps(&h, &mut a, &mut c, &conv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_canceled_leaves_it_with_the_sender() {
    let h = start_with(config());
    let (mut a, mut b, mut c, conv, task) = warm_pending(&h).await;
    // Only the sender cancels.
    b.call_err(
        json!({"type": "transfer.cancel", "task_id": task}),
        "not_your_task",
    )
    .await;
    let v = a
        .call(json!({"type": "transfer.cancel", "task_id": task}))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    let f = a.recv_type("transfer.failed").await;
    assert_eq!(f["reason"], "canceled");
    let r = b.recv_type("task.rescinded").await;
    assert_eq!(r["reason"], "transfer_canceled");
    a.call_err(
        json!({"type": "transfer.cancel", "task_id": task}),
        "invalid_state",
    )
    .await;
    alice_keeps(&h, &mut a, &mut c, &conv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_reloaded_mid_warm_transfer_is_told_it_is_pending_and_can_cancel() {
    let h = start_with(config());
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut c, ack) = h.customer_with_message("Dana", "my order is late").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _) = a.take_offer().await;
    let task = s(&offer["task"]["id"]);
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let v = a
        .call(transfer(&task, json!({"agent": "bob"}), "warm", "refund?"))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    b.offer_for(&conv).await;

    // The page reloads: a new socket, while bob's offer is still open.
    drop(a);
    let (mut a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    let resync = a.recv_type("task.assigned").await;
    assert_eq!(resync["task"]["id"], task.as_str(), "{resync}");
    let pending = &resync["pending_transfer"];
    assert_eq!(pending["from"], "alice", "{resync}");
    assert_eq!(pending["to"], json!({"agent": "bob"}), "{resync}");
    assert_eq!(pending["mode"], "warm", "{resync}");
    assert_eq!(pending["note"], "refund?", "{resync}");
    assert!(pending["at"].is_string(), "{resync}");

    // What the reloaded desk shows, Cancel, works.
    let v = a
        .call(json!({"type": "transfer.cancel", "task_id": task}))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    assert_eq!(a.recv_type("transfer.failed").await["reason"], "canceled");
    assert_eq!(
        b.recv_type("task.rescinded").await["reason"],
        "transfer_canceled"
    );
    alice_keeps(&h, &mut a, &mut c, &conv).await;

    // Reloaded again, nothing is pending any more.
    drop(a);
    let (mut a, _hello) = h.connect_agent(&alice).await;
    let resync = a.recv_type("task.assigned").await;
    assert_eq!(resync["task"]["id"], task.as_str(), "{resync}");
    assert!(resync.get("pending_transfer").is_none(), "{resync}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_while_a_transfer_is_pending_cancels_it_first() {
    let h = start_with(config());
    let (mut a, mut b, mut c, conv, task) = warm_pending(&h).await;
    let r = next_ref("end");
    a.send(json!({"type": "end", "conversation_id": conv, "ref": r}))
        .await;
    let f = a.recv_next().await;
    assert_eq!(f["type"], "transfer.failed", "canceled first: {f}");
    assert_eq!(f["reason"], "ended");
    let ended = a.recv_ref(&r).await;
    assert_eq!(ended["type"], "conversation.ended");
    c.recv_type("conversation.ended").await;
    let rescinded = b.recv_type("task.rescinded").await;
    assert_eq!(rescinded["reason"], "transfer_canceled");
    b.call_err(json!({"type": "accept", "task_id": task}), "not_your_task")
        .await;
    h.wait_agent("bob", "capacity back", |v| v["load"]["webchat"] == 0)
        .await;
    // Alice wraps it up as usual.
    a.complete(&task, "resolved", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_to_a_queue_offers_its_best_agent_other_than_the_sender() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "billing", "skills": ["billing"]})).await;
    let (mut a, _c, conv, task) = alice_holds(&h, 2).await;
    a.call_err(
        transfer(&task, json!({"queue": "billing"}), "warm", ""),
        "invalid_state",
    )
    .await;
    let bob = h.create_agent("bob", 1, &["billing"]).await;
    let mut b = h.agent_online(&bob).await;
    let v = a
        .call(transfer(
            &task,
            json!({"queue": "billing"}),
            "warm",
            "refund",
        ))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    let offer = b.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["to"], json!({"queue": "billing"}));
    b.accept(&task).await;
    let moved = a.recv_type("task.transferred").await;
    assert_eq!(moved["to"], json!({"queue": "billing"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_transfers_cold_over_http() {
    let h = start_with(config());
    let (mut a, _c, conv, task) = alice_holds(&h, 1).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let path = format!("/v1/tasks/{task}/transfer");
    let body = json!({"to": {"agent": "bob"}, "note": "escalated"});
    let r = h.request(Method::POST, &path, None, Some(&body)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = h
        .request(Method::POST, &path, Some(&h.admin), Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let moved = a.recv_type("task.transferred").await;
    assert_eq!(moved["to"], json!({"agent": "bob"}));
    let offer = b.offer_for(&conv).await;
    assert_eq!(offer["transfer"]["from"], "supervisor");
    assert_eq!(offer["transfer"]["note"], "escalated");
    b.accept(&task).await;

    for (path, body, status, code) in [
        (
            "/v1/tasks/tk_missing/transfer".to_owned(),
            json!({"to": {"queue": "default"}}),
            404,
            "unknown_task",
        ),
        (
            path.clone(),
            json!({"to": {"queue": "nope"}}),
            404,
            "not_found",
        ),
        (
            path.clone(),
            json!({"to": {"planet": "mars"}}),
            400,
            "bad_request",
        ),
    ] {
        let r = h
            .request(Method::POST, &path, Some(&h.admin), Some(&body))
            .await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text);
        assert_eq!(r.error_code(), code, "{}", r.text);
    }
}

/// The sender goes offline while its warm transfer is on offer: its task
/// goes back to the queue, and the target's slot, free again, goes to the
/// best waiting task (a more urgent queue's), not to the task taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_going_offline_mid_warm_transfer_frees_the_target_for_the_best_task() {
    let mut cfg = config();
    cfg.aging = 0;
    let h = start_with(cfg);
    create_queue(&h, json!({"id": "vip", "priority": 50})).await;
    let (mut a, mut b, _c, _conv, task) = warm_pending(&h).await;
    // A VIP customer writes meanwhile; bob's one slot is the transfer's.
    let (_s, _v, vip) = customer_in(&h, "Vic", "vip").await;
    b.expect_none("an offer while full", QUIET, |v| {
        v["type"] == "task.offered"
    })
    .await;

    let v = a
        .call(json!({"type": "activity", "activity": "offline"}))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    let r = a.recv_type("task.rescinded").await;
    assert_eq!(r["task_id"], task.as_str(), "{r}");
    let r = b.recv_type("task.rescinded").await;
    assert_eq!(r["reason"], "transfer_canceled", "{r}");
    let offer = b
        .recv_where("an offer", |v| v["type"] == "task.offered")
        .await;
    assert_eq!(offer["task"]["conversation_id"], vip.as_str(), "{offer}");
    // Alice's task waits for the next free agent.
    let r = h
        .request(Method::GET, "/v1/tasks?state=queued", Some(&h.admin), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let waiting = r.body.as_array().cloned().unwrap_or_default();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["id"], task.as_str(), "{waiting:?}");
}

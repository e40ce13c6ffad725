//! Routing: who gets offered what, and what happens when offers fail.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn is_offer(v: &Value) -> bool {
    v["type"] == "task.offered"
}

/// Two agents wait for one offer: the offer, the socket that got it, the other.
async fn first_offer<'a>(a: &'a mut Ws, b: &'a mut Ws) -> (Value, &'a mut Ws, &'a mut Ws) {
    let a_first = tokio::select! {
        v = a.recv_where("offer", is_offer) => Ok(v),
        v = b.recv_where("offer", is_offer) => Err(v),
    };
    match a_first {
        Ok(v) => (v, a, b),
        Err(v) => (v, b, a),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_free_capacity_wins() {
    let h = start();
    // Alice is available first (longest idle) but has less free capacity.
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 3, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;

    let (_s, _c, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);
    let offer = b.offer().await;
    assert_eq!(offer["task"]["conversation_id"], conv.as_str());
    a.expect_none(
        "offer to the agent with less free capacity",
        QUIET,
        is_offer,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_capacity_longest_idle_wins() {
    let h = start();
    let alice = h.create_agent("alice", 2, &[]).await;
    let bob = h.create_agent("bob", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;

    // Both have 2 free: alice has been idle longer.
    let (_s1, _c1, ack1) = h.customer_with_message("C1", "one").await;
    let o1 = a.offer_for(&s(&ack1["conversation_id"])).await;
    a.accept(&s(&o1["task"]["id"])).await;
    b.expect_none(
        "offer to bob for task 1",
        Duration::from_millis(100),
        is_offer,
    )
    .await;

    // Alice 1 free, bob 2 free: bob.
    let (_s2, _c2, ack2) = h.customer_with_message("C2", "two").await;
    let o2 = b.offer_for(&s(&ack2["conversation_id"])).await;
    b.accept(&s(&o2["task"]["id"])).await;

    // Both 1 free: alice got her last task before bob did, so she is idle longer.
    let (_s3, _c3, ack3) = h.customer_with_message("C3", "three").await;
    let o3 = a.offer_for(&s(&ack3["conversation_id"])).await;
    a.accept(&s(&o3["task"]["id"])).await;
    b.expect_none("offer to bob for task 3", QUIET, is_offer)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_reoffers_elsewhere_not_to_the_rejecter() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;

    let (_s, _c, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);

    // Whoever gets it first rejects it.
    let (offer, first_ws, second_ws) = first_offer(&mut a, &mut b).await;
    let task_id = s(&offer["task"]["id"]);
    assert_eq!(offer["task"]["conversation_id"], conv.as_str());
    first_ws.reject(&task_id).await;

    // The other agent gets the same task.
    let o2 = second_ws.offer().await;
    assert_eq!(o2["task"]["id"], task_id.as_str(), "{o2}");
    second_ws.reject(&task_id).await;

    // Both rejected: nobody gets it again within the re-offer cool-down.
    first_ws
        .expect_none("re-offer to a rejecting agent", QUIET, is_offer)
        .await;
    second_ws
        .expect_none(
            "re-offer to a rejecting agent",
            Duration::from_millis(50),
            is_offer,
        )
        .await;
    let c = h.conversation(&conv).await;
    assert_eq!(c["task"]["state"], "queued", "{c}");

    // A third agent gets it.
    let carol = h.create_agent("carol", 1, &[]).await;
    let mut c = h.agent_online(&carol).await;
    let o3 = c.offer().await;
    assert_eq!(o3["task"]["id"], task_id.as_str(), "{o3}");
    let assigned = c.accept(&task_id).await;
    assert_eq!(texts(&assigned["history"]), vec!["hi"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_reject_and_it_comes_back_to_the_first_after_the_cooldown() {
    let mut cfg = test_config();
    cfg.reoffer_cooldown = Duration::from_millis(1500);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;

    let (_s, _c, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, first, second) = first_offer(&mut a, &mut b).await;
    let task_id = s(&offer["task"]["id"]);
    first.reject(&task_id).await;
    let rejected_first = std::time::Instant::now();
    let o2 = second.offer().await;
    assert_eq!(o2["task"]["id"], task_id.as_str(), "{o2}");
    second.reject(&task_id).await;

    // Within the cool-down nobody is offered it; then the agent who declined
    // longest ago is, and only that one.
    first
        .expect_none("re-offer within the cool-down", QUIET, is_offer)
        .await;
    let again = first
        .recv_where_within(
            "re-offer after the cool-down",
            Duration::from_secs(5),
            is_offer,
        )
        .await;
    assert!(
        rejected_first.elapsed() >= Duration::from_millis(1400),
        "re-offered {:?} after the first decline, before the cool-down",
        rejected_first.elapsed()
    );
    assert_eq!(again["task"]["id"], task_id.as_str(), "{again}");
    second
        .expect_none("re-offer to the later decliner", QUIET, is_offer)
        .await;
    let assigned = first.accept(&task_id).await;
    assert_eq!(texts(&assigned["history"]), vec!["hi"]);
    let c = h.conversation(&conv).await;
    assert_eq!(c["task"]["state"], "assigned", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_offer_comes_back_to_the_only_agent_after_the_cooldown() {
    let mut cfg = test_config();
    cfg.offer_timeout = Duration::from_millis(300);
    cfg.reoffer_cooldown = Duration::from_millis(1000);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;

    let (_s, mut cust, ack) = h.customer_with_message("Dana", "hello?").await;
    let o1 = a.offer().await;
    let task_id = s(&o1["task"]["id"]);
    let r = a.recv_type("task.rescinded").await;
    assert_eq!(r["reason"], "timeout", "{r}");
    a.expect_none("re-offer within the cool-down", QUIET, is_offer)
        .await;
    // The customer writes again meanwhile: kept for the agent.
    cust.say("still there?").await;

    let o2 = a
        .recv_where_within(
            "re-offer after the cool-down",
            Duration::from_secs(5),
            is_offer,
        )
        .await;
    assert_eq!(o2["task"]["id"], task_id.as_str(), "{o2}");
    assert_eq!(o2["task"]["conversation_id"], ack["conversation_id"]);
    let assigned = a.accept(&task_id).await;
    assert_eq!(texts(&assigned["history"]), vec!["hello?", "still there?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decliner_is_passed_over_for_a_fresh_agent_during_the_cooldown() {
    let mut cfg = test_config();
    cfg.reoffer_cooldown = Duration::from_millis(1500);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, _c, _ack) = h.customer_with_message("Dana", "hi").await;
    let o = a.offer().await;
    let task_id = s(&o["task"]["id"]);
    a.reject(&task_id).await;

    // Bob arrives during alice's cool-down and gets it at once.
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let ob = b.offer().await;
    assert_eq!(ob["task"]["id"], task_id.as_str(), "{ob}");
    b.accept(&task_id).await;
    // ... and alice is not offered it when her cool-down ends.
    a.expect_none(
        "offer of a task someone else took",
        Duration::from_millis(2000),
        is_offer,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_timeout_rescinds_and_requeues_ahead_of_newer() {
    let mut cfg = test_config();
    cfg.offer_timeout = Duration::from_millis(400);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;

    let (_s1, _c1, ack1) = h.customer_with_message("First", "first").await;
    let conv1 = s(&ack1["conversation_id"]);
    let o1 = a.offer().await;
    let t1 = s(&o1["task"]["id"]);
    assert_eq!(o1["task"]["conversation_id"], conv1.as_str());

    // Alice ignores it; the offer times out.
    let r = a.recv_type("task.rescinded").await;
    assert_eq!(r["task_id"], t1.as_str(), "{r}");
    assert_eq!(r["reason"], "timeout", "{r}");
    // ... and is not offered to her again.
    a.expect_none("re-offer after timeout", QUIET, is_offer)
        .await;
    a.set_activity("break").await;

    // A newer task arrives while nobody is eligible.
    let (_s2, _c2, ack2) = h.customer_with_message("Second", "second").await;
    let conv2 = s(&ack2["conversation_id"]);
    let c1 = h.conversation(&conv1).await;
    assert_eq!(c1["task"]["state"], "queued", "{c1}");

    // Bob (capacity 1) gets the older, timed-out task first.
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let ob = b.offer().await;
    assert_eq!(
        ob["task"]["conversation_id"],
        conv1.as_str(),
        "requeued task must be ahead of newer ones: {ob}"
    );
    b.accept(&t1).await;

    // Alice comes back and gets the newer one, not the one she let expire.
    a.set_activity("available").await;
    let oa = a.offer().await;
    assert_eq!(oa["task"]["conversation_id"], conv2.as_str(), "{oa}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_skills_are_respected() {
    let h = start();
    // Alice: no skills, more capacity, idle longer. Bob: speaks spanish.
    let alice = h.create_agent("alice", 3, &[]).await;
    let bob = h.create_agent("bob", 1, &["spanish"]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;

    let sess = h.create_session("Juan", Some(&["spanish"])).await;
    let (mut cust, _hist) = h.connect_customer(&sess).await;
    let ack = cust.say("hola").await;
    let conv = s(&ack["conversation_id"]);
    let ob = b.offer().await;
    assert_eq!(ob["task"]["conversation_id"], conv.as_str(), "{ob}");
    b.accept(&s(&ob["task"]["id"])).await;

    // A second spanish customer waits: bob is full, alice lacks the skill.
    let sess2 = h.create_session("Maria", Some(&["spanish"])).await;
    let (mut cust2, _hist) = h.connect_customer(&sess2).await;
    let ack2 = cust2.say("hola?").await;
    let conv2 = s(&ack2["conversation_id"]);
    a.expect_none(
        "offer of a skilled task to an unskilled agent",
        QUIET,
        is_offer,
    )
    .await;
    let c2 = h.conversation(&conv2).await;
    assert_eq!(c2["task"]["state"], "queued", "{c2}");

    // A customer without requirements goes to alice.
    let (_s3, _c3, ack3) = h.customer_with_message("Zoe", "hello").await;
    let oa = a.offer().await;
    assert_eq!(
        oa["task"]["conversation_id"], ack3["conversation_id"],
        "{oa}"
    );

    // Giving alice the skill makes her eligible for the waiting one.
    let admin = h.admin.clone();
    let r = h
        .request(
            reqwest::Method::PATCH,
            "/v1/agents/alice",
            Some(&admin),
            Some(&json!({"skills": ["spanish"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let oa2 = a.offer_for(&conv2).await;
    assert_eq!(oa2["task"]["preview"], "hola?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_and_offline_agents_get_no_offers() {
    let h = start();
    let alice = h.create_agent("alice", 2, &[]).await;
    let bob = h.create_agent("bob", 2, &[]).await;
    let carol = h.create_agent("carol", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    a.set_activity("break").await;
    let mut b = h.agent_online(&bob).await;
    b.set_activity("offline").await;
    // Carol connects but never leaves the initial `offline`.
    let (mut c, _hello) = h.connect_agent(&carol).await;

    let (_s, _cw, ack) = h.customer_with_message("Dana", "anyone there?").await;
    let conv = s(&ack["conversation_id"]);
    a.expect_none("offer while on break", QUIET, is_offer).await;
    b.expect_none("offer while offline", Duration::from_millis(50), is_offer)
        .await;
    c.expect_none("offer while offline", Duration::from_millis(50), is_offer)
        .await;
    let st = h.admin_get_ok("/v1/stats").await;
    assert_eq!(st["queue"]["length"], 1, "stats: {st}");
    assert_eq!(st["agents"]["break"], 1, "stats: {st}");
    assert_eq!(st["agents"]["available"], 0, "stats: {st}");

    a.set_activity("available").await;
    let o = a.offer().await;
    assert_eq!(o["task"]["conversation_id"], conv.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_within_grace_resyncs_tasks() {
    let mut cfg = test_config();
    cfg.disconnect_grace = Duration::from_secs(30);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 2, &[]).await;
    let bob = h.create_agent("bob", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;
    b.set_activity("break").await;

    let (_s, mut cust, ack) = h.customer_with_message("Dana", "m1").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _assigned) = a.take_offer().await;
    let task_id = s(&offer["task"]["id"]);
    a.agent_send(&conv, "m2", "a-m2").await;
    cust.recv_message_text("m2").await;

    // Alice's desktop goes away.
    drop(a);
    h.wait_agent("alice", "disconnected", |v| v["connected"] == false)
        .await;
    // The customer keeps writing meanwhile.
    let ack3 = cust.say("m3 while you were away").await;
    assert_eq!(ack3["seq"], 3);
    b.set_activity("available").await;
    b.expect_none("offer of a task held in grace", QUIET, is_offer)
        .await;

    // Reconnect: hello carries the task, then task.assigned with full history.
    let (mut a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["activity"], "available", "activity kept: {hello}");
    let tasks = hello["tasks"].as_array().expect("tasks array");
    assert_eq!(tasks.len(), 1, "{hello}");
    assert_eq!(tasks[0]["id"], task_id.as_str(), "{hello}");
    let re = a.recv_type("task.assigned").await;
    assert_eq!(re["task"]["id"], task_id.as_str(), "{re}");
    assert_gap_free(&re["history"]);
    assert_eq!(
        texts(&re["history"]),
        vec!["m1", "m2", "m3 while you were away"],
        "{re}"
    );

    // Business as usual afterwards.
    let ack4 = cust.say("m4").await;
    assert_eq!(ack4["seq"], 4);
    let m4 = a.recv_message_text("m4").await;
    assert_eq!(m4["message"]["seq"], 4);
    a.agent_send(&conv, "m5", "a-m5").await;
    let m5 = cust.recv_message_text("m5").await;
    assert_eq!(m5["message"]["seq"], 5);
    b.expect_none("offer to bob", Duration::from_millis(50), is_offer)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_grace_task_is_requeued_with_history() {
    let mut cfg = test_config();
    cfg.disconnect_grace = Duration::from_millis(300);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;

    let (_s, mut cust, ack) = h.customer_with_message("Dana", "m1").await;
    let conv = s(&ack["conversation_id"]);
    a.take_offer().await;
    a.agent_send(&conv, "m2", "a-m2").await;
    cust.recv_message_text("m2").await;

    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    drop(a);

    // After the grace period bob is offered the conversation with its history.
    let ob = b.offer_for(&conv).await;
    let bt = s(&ob["task"]["id"]);
    let assigned = b.accept(&bt).await;
    assert_gap_free(&assigned["history"]);
    assert_eq!(texts(&assigned["history"]), vec!["m1", "m2"], "{assigned}");
    let c = h.conversation(&conv).await;
    assert_eq!(c["agent_id"], "bob", "{c}");
    cust.recv_where("agent.joined bob", |v| {
        v["type"] == "agent.joined" && v["agent"]["name"] == "Agent bob"
    })
    .await;

    // Alice reconnecting later has nothing left.
    let (_a2, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], json!([]), "{hello}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_while_queued_are_delivered_in_order() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut a, _hello) = h.connect_agent(&alice).await;

    let sess = h.create_session("Dana", None).await;
    let (mut cust, _h) = h.connect_customer(&sess).await;
    for (i, t) in ["q1", "q2", "q3"].iter().enumerate() {
        let ack = cust.say(t).await;
        assert_eq!(ack["seq"], i as u64 + 1, "{ack}");
    }
    a.set_activity("available").await;
    let o = a.offer().await;
    assert_eq!(
        o["task"]["preview"], "q3",
        "preview is the latest text: {o}"
    );
    let assigned = a.accept(&s(&o["task"]["id"])).await;
    assert_eq!(texts(&assigned["history"]), vec!["q1", "q2", "q3"]);
    assert_gap_free(&assigned["history"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_leaving_before_assignment_cancels() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut cust, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);
    let o = a.offer().await;
    let task_id = s(&o["task"]["id"]);

    cust.send(json!({"type": "leave"})).await;
    let r = a.recv_type("task.rescinded").await;
    assert_eq!(r["task_id"], task_id.as_str(), "{r}");
    assert_eq!(r["reason"], "customer_left", "{r}");
    let c = h
        .wait_conversation(&conv, "task canceled", |c| c["task"]["state"] == "canceled")
        .await;
    assert_eq!(c["task"]["id"], task_id.as_str());

    // Accepting it now fails, and capacity is free for someone else.
    let err = a.call(json!({"type": "accept", "task_id": task_id})).await;
    assert_eq!(err["type"], "error", "{err}");
    let (_s2, _c2, ack2) = h.customer_with_message("Eve", "hello").await;
    let o2 = a.offer().await;
    assert_eq!(o2["task"]["conversation_id"], ack2["conversation_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_offer_is_gone_from_the_desk_after_a_reconnect() {
    let h = start();
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, _c, _ack) = h.customer_with_message("Dana", "hi").await;
    let offer = a.offer().await;
    a.reject(&s(&offer["task"]["id"])).await;
    drop(a);
    h.wait_agent("alice", "disconnected", |v| v["connected"] == false)
        .await;

    let (_a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    assert_eq!(hello["agent"]["load"]["webchat"], 0, "{hello}");
}

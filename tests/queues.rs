//! Queues over real sockets: the admin API, entry by queue, order across
//! queues (priority, then arrival), routing policies, total capacity, missed
//! offers, last-agent routing, overflow, maximum wait and business hours
//! (with a manual clock: no test waits for the office to open).
mod common;

use std::time::{Duration, SystemTime};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard::clock::Clock;
use switchboard::Config;

const ADMIN: &str = "queues-test-admin-token-0123456789abcdef";

fn config() -> Config {
    let mut c = test_config();
    c.admin_token = Some(ADMIN.into());
    c
}

fn is_offer(v: &Value) -> bool {
    v["type"] == "task.offered"
}

async fn admin(h: &Harness, method: Method, path: &str, body: Option<Value>) -> Resp {
    h.request(method, path, Some(ADMIN), body.as_ref()).await
}

async fn create_queue(h: &Harness, body: Value) -> Value {
    let r = admin(h, Method::POST, "/v1/queues", Some(body.clone())).await;
    assert_eq!(r.status, 201, "create queue {body}: {}", r.text);
    r.body
}

async fn agent_with(h: &Harness, id: &str, capacity: Value, skills: &[&str]) -> Agent {
    let r = admin(
        h,
        Method::POST,
        "/v1/agents",
        Some(json!({"id": id, "capacity": capacity, "skills": skills})),
    )
    .await;
    assert_eq!(r.status, 201, "create agent {id}: {}", r.text);
    Agent {
        id: id.into(),
        name: id.into(),
        token: s(&r.body["token"]),
    }
}

/// Accept, end and complete the task of `offer`: the agent's capacity frees.
async fn serve(ws: &mut Ws, offer: &Value) {
    let task = s(&offer["task"]["id"]);
    let conv = s(&offer["task"]["conversation_id"]);
    ws.accept(&task).await;
    ws.end(&conv).await;
    ws.complete(&task, "resolved", "").await;
}

async fn open_tasks(h: &Harness, query: &str) -> Vec<Value> {
    let r = admin(h, Method::GET, &format!("/v1/tasks?{query}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_managed_over_the_admin_api() {
    let h = start_with(config());
    let list = admin(&h, Method::GET, "/v1/queues", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body[0]["id"], "default", "{}", list.text);

    let q = create_queue(
        &h,
        json!({"id": "billing", "name": "Billing", "channels": ["webchat"], "priority": 10,
               "policy": "round_robin", "max_wait": "15m", "max_wait_message": "Sorry",
               "sla": {"first_response": "60s"}, "last_agent_window": "24h",
               "inactivity": {"warn_after": "5m", "warning": "Still there?", "close_after": "10m"}}),
    )
    .await;
    assert_eq!(q["max_wait"], "15m");
    assert_eq!(q["inactivity"]["close_after"], "10m");
    let again = admin(
        &h,
        Method::POST,
        "/v1/queues",
        Some(json!({"id": "billing"})),
    )
    .await;
    assert_eq!((again.status, again.error_code()), (409, "conflict"));

    let patched = admin(
        &h,
        Method::PATCH,
        "/v1/queues/billing",
        Some(json!({"priority": 30, "policy": "longest_idle"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["priority"], 30);
    assert_eq!(patched.body["name"], "Billing", "untouched fields stay");
    let got = admin(&h, Method::GET, "/v1/queues/billing", None).await;
    assert_eq!(got.body["policy"], "longest_idle");

    for (method, path, body, status, code) in [
        (Method::GET, "/v1/queues/nope", None, 404, "not_found"),
        (
            Method::PATCH,
            "/v1/queues/nope",
            Some(json!({})),
            404,
            "not_found",
        ),
        (Method::DELETE, "/v1/queues/nope", None, 404, "not_found"),
        (Method::DELETE, "/v1/queues/default", None, 409, "conflict"),
        (
            Method::PATCH,
            "/v1/queues/billing",
            Some(json!({"priority": 101})),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/queues",
            Some(json!({"id": "x", "overflow": {"after": "1m", "to": "nowhere"}})),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/queues",
            Some(json!({"id": "y", "business_hours": {"tz": "Nowhere/City"}})),
            400,
            "bad_request",
        ),
        (
            Method::POST,
            "/v1/queues",
            Some(json!({"id": "z", "max_wait": "soon"})),
            400,
            "bad_request",
        ),
    ] {
        let r = admin(&h, method.clone(), path, body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code),
            "{method} {path}: {}",
            r.text
        );
    }
    // Not without the admin token.
    let r = h
        .request(Method::GET, "/v1/queues", Some("not-the-token"), None)
        .await;
    assert_eq!(r.status, 401);

    // A queue with a waiting task cannot go; once it is empty it can.
    let (_s, mut c, _conv) = customer_in(&h, "Dana", "billing").await;
    let r = admin(&h, Method::DELETE, "/v1/queues/billing", None).await;
    assert_eq!((r.status, r.error_code()), (409, "conflict"), "{}", r.text);
    c.send(json!({"type": "leave"})).await;
    c.recv_type("conversation.ended").await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = admin(&h, Method::DELETE, "/v1/queues/billing", None).await;
        if r.status == 204 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = admin(&h, Method::GET, "/v1/queues/billing", None).await;
    assert_eq!(gone.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_carries_its_queue_priority_and_waiting_since() {
    let h = start_with(config());
    create_queue(
        &h,
        json!({"id": "sales", "priority": 40, "channels": ["webchat"]}),
    )
    .await;
    create_queue(&h, json!({"id": "texts", "channels": ["sms"]})).await;
    let r = session_in(&h, "Dana", "nope").await;
    assert_eq!((r.status, r.error_code()), (404, "not_found"), "{}", r.text);
    let r = session_in(&h, "Dana", "texts").await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "bad_request"),
        "{}",
        r.text
    );

    let (_s, _c, conv) = customer_in(&h, "Dana", "sales").await;
    let tasks = open_tasks(&h, "queue=sales").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["conversation_id"], conv.as_str());
    assert_eq!(tasks[0]["priority"], 40);
    assert!(tasks[0]["waiting_since"].is_string());
    assert!(open_tasks(&h, "queue=default").await.is_empty());

    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let offer = a.offer_for(&conv).await;
    assert_eq!(offer["task"]["queue"], "sales");
    assert_eq!(offer["task"]["priority"], 40);
    assert_eq!(offer["task"]["waiting_since"], tasks[0]["waiting_since"]);
    let assigned = a.accept(&s(&offer["task"]["id"])).await;
    assert_eq!(assigned["task"]["queue"], "sales");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_agent_always_gets_the_oldest_of_equal_priority_tasks() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "a", "priority": 20})).await;
    create_queue(&h, json!({"id": "b", "priority": 20})).await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;

    // Alice is busy with the first; the rest wait, alternating queues.
    let (_s0, _c0, first) = customer_in(&h, "C0", "a").await;
    let offer = a.offer_for(&first).await;
    let mut waiting = Vec::new();
    let mut sockets = Vec::new();
    for (i, q) in ["b", "a", "b", "a", "b"].iter().enumerate() {
        let (_s, c, conv) = customer_in(&h, &format!("C{}", i + 1), q).await;
        waiting.push(conv);
        sockets.push(c);
        // Distinct arrival times.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serve(&mut a, &offer).await;
    for conv in &waiting {
        let next = a.recv_where("next offer", is_offer).await;
        assert_eq!(
            next["task"]["conversation_id"],
            conv.as_str(),
            "the oldest waiting task comes first: {next}"
        );
        serve(&mut a, &next).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_goes_first_and_a_priority_change_applies_at_once() {
    let mut cfg = config();
    cfg.aging = 0;
    let h = start_with(cfg);
    create_queue(&h, json!({"id": "low", "priority": 0})).await;
    create_queue(&h, json!({"id": "high", "priority": 50})).await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s0, _c0, busy) = customer_in(&h, "C0", "low").await;
    let offer = a.offer_for(&busy).await;

    let (_s1, _c1, old_low) = customer_in(&h, "C1", "low").await;
    let (_s2, _c2, new_high) = customer_in(&h, "C2", "high").await;
    let (_s3, _c3, newer_low) = customer_in(&h, "C3", "low").await;
    // Before anyone is free, "low" becomes the most urgent.
    let r = admin(
        &h,
        Method::PATCH,
        "/v1/queues/low",
        Some(json!({"priority": 90})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let tasks = open_tasks(&h, "state=queued&queue=low").await;
    assert!(tasks.iter().all(|t| t["priority"] == 90), "{tasks:?}");

    serve(&mut a, &offer).await;
    for conv in [&old_low, &newer_low, &new_high] {
        let next = a.recv_where("next offer", is_offer).await;
        assert_eq!(next["task"]["conversation_id"], conv.as_str(), "{next}");
        serve(&mut a, &next).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_longest_idle_count_open_work_only() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "rr", "policy": "round_robin"})).await;
    // Bob has far more free capacity, which round robin ignores.
    let alice = h.create_agent("alice", 2, &[]).await;
    let bob = h.create_agent("bob", 9, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;
    // Alice became available first: offered least recently.
    let (_s1, _c1, one) = customer_in(&h, "C1", "rr").await;
    a.offer_for(&one).await;
    let (_s2, _c2, two) = customer_in(&h, "C2", "rr").await;
    b.offer_for(&two).await;
    let (_s3, _c3, three) = customer_in(&h, "C3", "rr").await;
    a.offer_for(&three).await;
    b.expect_none("a second offer to bob", QUIET, is_offer)
        .await;

    // Longest idle: an agent with no open work beats one with work, even
    // one who has had more free capacity all along.
    create_queue(&h, json!({"id": "idle", "policy": "longest_idle"})).await;
    let carol = h.create_agent("carol", 1, &[]).await;
    let mut c = h.agent_online(&carol).await;
    let (_s4, _c4, four) = customer_in(&h, "C4", "idle").await;
    c.offer_for(&four).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_capacity_caps_open_tasks_across_channels() {
    let h = start_with(config());
    let alice = agent_with(
        &h,
        "alice",
        json!({"webchat": 3, "sms": 2, "total": 2}),
        &[],
    )
    .await;
    let view = h.agent_view("alice").await;
    assert_eq!(view["capacity"]["total"], 2);
    let mut a = h.agent_online(&alice).await;
    let mut convs = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..3 {
        let (_s, c, conv) = customer_in(&h, &format!("C{i}"), "default").await;
        convs.push(conv);
        sockets.push(c);
    }
    a.offer_for(&convs[0]).await;
    a.offer_for(&convs[1]).await;
    a.expect_none("a third offer over the total", QUIET, is_offer)
        .await;
    // Raising the total frees a place at once.
    let r = admin(
        &h,
        Method::PATCH,
        "/v1/agents/alice",
        Some(json!({"capacity": {"webchat": 3, "sms": 2, "total": 3}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    a.offer_for(&convs[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_offers_make_an_agent_not_responding_until_it_comes_back() {
    let mut cfg = config();
    cfg.offer_timeout = Duration::from_millis(200);
    cfg.reoffer_cooldown = Duration::from_millis(100);
    cfg.max_missed_offers = 2;
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, _c, conv) = customer_in(&h, "Dana", "default").await;
    // Two offers lapse in a row (the only agent gets it again after the
    // re-offer cool-down).
    a.offer_for(&conv).await;
    a.recv_where("rescind", |v| {
        v["type"] == "task.rescinded" && v["reason"] == "timeout"
    })
    .await;
    a.offer_for(&conv).await;
    let changed = a.recv_type("activity.changed").await;
    assert_eq!(changed["activity"], "not_responding");
    assert_eq!(changed["reason"], "missed_offers");
    h.wait_agent("alice", "not_responding", |v| {
        v["activity"] == "not_responding"
    })
    .await;
    a.expect_none("an offer while not responding", QUIET, is_offer)
        .await;
    // The agent cannot pick not_responding itself; it sets itself available.
    a.call_err(
        json!({"type": "activity", "activity": "not_responding"}),
        "bad_request",
    )
    .await;
    a.set_activity("available").await;
    a.offer_for(&conv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_customer_is_offered_to_its_last_agent_if_eligible_now() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "vip", "last_agent_window": "1h"})).await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 5, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (s1, mut c1, conv) = customer_in(&h, "Dana", "vip").await;
    let offer = a.offer_for(&conv).await;
    serve(&mut a, &offer).await;
    c1.recv_type("conversation.ended").await;
    h.wait_agent("alice", "free", |v| v["load"]["webchat"] == 0)
        .await;
    // Bob now has far more free capacity, but Dana comes back to Alice.
    let mut b = h.agent_online(&bob).await;
    let ack = c1.say("me again").await;
    let second = s(&ack["conversation_id"]);
    assert_ne!(second, conv);
    let offer = a.offer_for(&second).await;
    serve(&mut a, &offer).await;
    h.wait_agent("alice", "free", |v| v["load"]["webchat"] == 0)
        .await;
    b.expect_none("offer to bob", QUIET, is_offer).await;

    // Alice on break: Dana's next task goes to the queue at once.
    a.set_activity("break").await;
    let ack = c1.say("third time").await;
    b.offer_for(&s(&ack["conversation_id"])).await;
    drop(s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_moves_a_task_or_relaxes_its_skills() {
    let h = start_with(config());
    create_queue(&h, json!({"id": "general", "priority": 5})).await;
    create_queue(
        &h,
        json!({"id": "experts", "skills": ["expert"], "overflow": {"after": "300ms", "to": "general"}}),
    )
    .await;
    create_queue(
        &h,
        json!({"id": "french", "skills": ["fr"], "overflow": {"after": "300ms", "relax_skills": true}}),
    )
    .await;
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s1, _c1, moved) = customer_in(&h, "C1", "experts").await;
    let (_s2, _c2, relaxed) = customer_in(&h, "C2", "french").await;
    a.expect_none(
        "an offer before the overflow",
        Duration::from_millis(150),
        is_offer,
    )
    .await;
    let o1 = a.offer_for(&moved).await;
    assert_eq!(o1["task"]["queue"], "general");
    assert_eq!(o1["task"]["priority"], 5);
    let o2 = a.offer_for(&relaxed).await;
    assert_eq!(o2["task"]["queue"], "french");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_wait_the_task_is_canceled_and_the_customer_told() {
    let h = start_with(config());
    create_queue(
        &h,
        json!({"id": "short", "max_wait": "300ms", "max_wait_message": "Nobody is free, sorry."}),
    )
    .await;
    let (_s, mut c, conv) = customer_in(&h, "Dana", "short").await;
    let system = c.recv_message_from("system").await;
    assert_eq!(system["message"]["text"], "Nobody is free, sorry.");
    c.recv_type("conversation.ended").await;
    let v = h
        .wait_conversation(&conv, "canceled", |v| v["task"]["state"] == "canceled")
        .await;
    assert_eq!(v["task"]["reason"], "max_wait", "{v}");
    assert!(open_tasks(&h, "queue=short").await.is_empty());
    // The agent who comes later is offered nothing.
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    a.expect_none("an offer of the canceled task", QUIET, is_offer)
        .await;
}

/// Monday 2026-11-30 at `hh:mm` in Madrid (UTC+1 then).
fn madrid(hh: u64, mm: u64) -> SystemTime {
    humantime::parse_rfc3339("2026-11-30T00:00:00Z").unwrap()
        + Duration::from_secs(hh * 3600 + mm * 60)
        - Duration::from_secs(3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_hours_follow_the_queues_time_zone_on_a_manual_clock() {
    let clock = Clock::manual(madrid(8, 59));
    let mut cfg = config();
    cfg.clock = clock.clone();
    let h = start_with(cfg);
    let hours = |outside: &str| {
        json!({"tz": "Europe/Madrid", "weekly": {"mon": ["09:00-18:00"]},
               "holidays": ["2026-12-07"], "closed_message": format!("Closed ({outside})"),
               "outside": outside})
    };
    create_queue(&h, json!({"id": "waits", "business_hours": hours("wait")})).await;
    create_queue(
        &h,
        json!({"id": "cancels", "business_hours": hours("cancel")}),
    )
    .await;

    // 08:59: closed. One waits with the message, one is canceled with it.
    let (_s1, mut c1, waiting) = customer_in(&h, "C1", "waits").await;
    let m = c1.recv_message_from("system").await;
    assert_eq!(m["message"]["text"], "Closed (wait)");
    let (_s2, mut c2, canceled) = customer_in(&h, "C2", "cancels").await;
    let m = c2.recv_message_from("system").await;
    assert_eq!(m["message"]["text"], "Closed (cancel)");
    c2.recv_type("conversation.ended").await;
    let v = h
        .wait_conversation(&canceled, "canceled", |v| v["task"]["state"] == "canceled")
        .await;
    assert_eq!(v["task"]["reason"], "closed");

    // 09:00: open. No message, and the waiting task is still there to route.
    clock.set(madrid(9, 0));
    let (_s3, mut c3, open) = customer_in(&h, "C3", "cancels").await;
    c3.expect_none("a closed message while open", QUIET, |v| {
        v["type"] == "message" && v["message"]["from"] == "system"
    })
    .await;
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    a.offer_for(&waiting).await;
    a.offer_for(&open).await;

    // 18:00 is closed again; so is the holiday (a Monday) at noon.
    for at in [
        madrid(18, 0),
        humantime::parse_rfc3339("2026-12-07T11:00:00Z").unwrap(),
    ] {
        clock.set(at);
        let (_s, mut c, _conv) = customer_in(&h, "Late", "cancels").await;
        c.recv_type("conversation.ended").await;
    }
}

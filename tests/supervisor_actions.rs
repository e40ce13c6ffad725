//! Supervisor actions over real sockets and HTTP: listing tasks and
//! conversations by state and queue (bounded pages), completing a task,
//! transferring one, setting an agent's activity (offline logs it out) and
//! capacity live, monitoring a conversation read-only on the supervisor
//! socket, and the `supervisor.action` event each action publishes; errors
//! included.
mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

async fn admin(h: &Harness, method: Method, path: &str, body: Option<Value>) -> Resp {
    h.request(method, path, Some(&h.admin), body.as_ref()).await
}

async fn create_queue(h: &Harness, id: &str) {
    let r = admin(h, Method::POST, "/v1/queues", Some(json!({"id": id}))).await;
    assert_eq!(r.status, 201, "create queue {id}: {}", r.text);
}

/// A supervisor socket.
async fn supervisor(h: &Harness) -> Ws {
    Ws::connect(&format!("{}/v1/supervisor/ws?token={}", h.ws_base, h.admin)).await
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|a| a.iter().map(|t| s(&t[key])).collect())
        .unwrap_or_default()
}

/// `supervisor.action` with this `action`.
async fn action(sup: &mut Ws, name: &str) -> Value {
    let v = sup
        .recv_where(name, |v| {
            v["type"] == "supervisor.action" && v["action"] == name
        })
        .await;
    assert_eq!(v["by"], "admin", "{v}");
    v
}

/// An agent holding the task of a new customer: (desk, customer, conversation, task).
async fn assigned(h: &Harness, agent: &Agent, name: &str) -> (Ws, Ws, String, String) {
    let mut desk = h.agent_online(agent).await;
    let (_s, customer, conv) = customer_in(h, name, "default").await;
    let offer = desk.offer_for(&conv).await;
    let task = s(&offer["task"]["id"]);
    desk.accept(&task).await;
    (desk, customer, conv, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_by_state_and_queue_a_bounded_page_at_a_time() {
    let h = start();
    create_queue(&h, "billing").await;
    let mut convs = Vec::new();
    for name in ["B1", "B2", "B3"] {
        convs.push(customer_in(&h, name, "billing").await);
    }
    let _other = customer_in(&h, "D1", "default").await;
    let billing: Vec<String> = convs.iter().map(|c| c.2.clone()).collect();

    let all = admin(
        &h,
        Method::GET,
        "/v1/tasks?state=waiting&queue=billing",
        None,
    )
    .await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(ids(&all.body, "conversation_id"), billing);
    let first = admin(&h, Method::GET, "/v1/tasks?queue=billing&limit=2", None).await;
    assert_eq!(ids(&first.body, "conversation_id"), billing[..2]);
    let rest = admin(
        &h,
        Method::GET,
        "/v1/tasks?queue=billing&limit=2&offset=2",
        None,
    )
    .await;
    assert_eq!(ids(&rest.body, "conversation_id"), billing[2..]);
    let past = admin(&h, Method::GET, "/v1/tasks?limit=2&offset=10", None).await;
    assert_eq!(past.body, json!([]));
    let assigned = admin(&h, Method::GET, "/v1/tasks?state=assigned", None).await;
    assert_eq!(assigned.body, json!([]));

    for (query, what) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("state=sleeping", "state"),
        ("state=completed", "finished"),
    ] {
        let r = admin(&h, Method::GET, &format!("/v1/tasks?{query}"), None).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.error_code(), "bad_request");
        assert!(r.text.contains(what), "{query}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_listed_by_state_and_queue_a_bounded_page_at_a_time() {
    let h = start();
    create_queue(&h, "billing").await;
    let alice = h.create_agent("alice", 1, &[]).await;
    // One served and ended in `default`, two waiting in `billing`.
    let (mut desk, _c, served, task) = assigned(&h, &alice, "D1").await;
    desk.end(&served).await;
    desk.complete(&task, "resolved", "").await;
    desk.set_activity("offline").await;
    let (_s1, _c1, b1) = customer_in(&h, "B1", "billing").await;
    let (_s2, _c2, b2) = customer_in(&h, "B2", "billing").await;

    let r = admin(
        &h,
        Method::GET,
        "/v1/conversations?state=waiting&queue=billing",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        ids(&r.body["conversations"], "id"),
        [b1.clone(), b2.clone()]
    );
    assert_eq!(r.body["total"], 2);
    assert!(r.body["next_offset"].is_null(), "{}", r.text);
    assert_eq!(r.body["conversations"][0]["queue"], "billing");

    let page = admin(&h, Method::GET, "/v1/conversations?limit=1", None).await;
    assert_eq!(
        ids(&page.body["conversations"], "id"),
        std::slice::from_ref(&served)
    );
    assert_eq!(page.body["total"], 3);
    assert_eq!(page.body["next_offset"], 1);
    let next = admin(&h, Method::GET, "/v1/conversations?limit=2&offset=1", None).await;
    assert_eq!(ids(&next.body["conversations"], "id"), [b1, b2]);
    assert!(next.body["next_offset"].is_null());

    let ended = admin(&h, Method::GET, "/v1/conversations?state=ended", None).await;
    assert_eq!(
        ids(&ended.body["conversations"], "id"),
        std::slice::from_ref(&served)
    );
    assert_eq!(ended.body["conversations"][0]["task"]["state"], "completed");
    let done = admin(
        &h,
        Method::GET,
        "/v1/conversations?state=completed&queue=default",
        None,
    )
    .await;
    assert_eq!(ids(&done.body["conversations"], "id"), [served]);
    let open = admin(
        &h,
        Method::GET,
        "/v1/conversations?state=open&queue=default",
        None,
    )
    .await;
    assert_eq!(open.body["total"], 0, "{}", open.text);

    for query in ["limit=0", "limit=5000", "state=sleeping", "channel=fax"] {
        let r = admin(&h, Method::GET, &format!("/v1/conversations?{query}"), None).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.error_code(), "bad_request");
    }
    let desk_token = h.get("/v1/conversations", Some(&alice.token)).await;
    assert_eq!(desk_token.status, 401, "{}", desk_token.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_task_ends_its_conversation_and_the_desk_sees_it_leave() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut sup = supervisor(&h).await;
    let (mut desk, mut customer, conv, task) = assigned(&h, &alice, "Dana").await;

    let r = admin(
        &h,
        Method::POST,
        &format!("/v1/tasks/{task}/complete"),
        Some(json!({"disposition": "spam", "notes": "closed by the supervisor"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], conv.as_str());
    assert_eq!(r.body["state"], "ended");
    assert_eq!(r.body["task"]["state"], "completed");
    assert_eq!(r.body["disposition"], "spam");
    assert_eq!(r.body["notes"], "closed by the supervisor");

    let ended = desk.recv_type("conversation.ended").await;
    assert_eq!(ended["task_id"], task.as_str(), "{ended}");
    let done = desk.recv_type("task.completed").await;
    assert_eq!(done["task_id"], task.as_str());
    assert_eq!(done["disposition"], "spam");
    customer.recv_type("conversation.ended").await;
    let a = action(&mut sup, "task.complete").await;
    assert_eq!(a["task_id"], task.as_str());
    assert_eq!(a["conversation_id"], conv.as_str());
    assert_eq!(a["disposition"], "spam");

    // Its capacity is free: the next customer is offered to alice.
    let (_s, _c, next) = customer_in(&h, "Eve", "default").await;
    desk.offer_for(&next).await;

    // A task in wrap-up is completed without a second end.
    let offer_task = s(&admin(&h, Method::GET, "/v1/tasks", None).await.body[0]["id"]);
    desk.accept(&offer_task).await;
    desk.end(&next).await;
    let r = admin(
        &h,
        Method::POST,
        &format!("/v1/tasks/{offer_task}/complete"),
        Some(json!({"disposition": "resolved"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    desk.recv_type("task.completed").await;
    desk.expect_none("a second conversation.ended", QUIET, |v| {
        v["type"] == "conversation.ended"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_refuses_unknown_tasks_bad_dispositions_and_tasks_not_held() {
    let h = start();
    let complete = |task: String, body: Value| {
        let h = &h;
        async move {
            admin(
                h,
                Method::POST,
                &format!("/v1/tasks/{task}/complete"),
                Some(body),
            )
            .await
        }
    };
    let r = complete("tk_nope".into(), json!({"disposition": "resolved"})).await;
    assert_eq!((r.status, r.error_code()), (404, "not_found"), "{}", r.text);

    // Waiting: nobody holds it, nothing to complete.
    let (_s, _c, conv) = customer_in(&h, "Dana", "default").await;
    let waiting = s(&admin(&h, Method::GET, "/v1/tasks", None).await.body[0]["id"]);
    let r = complete(waiting.clone(), json!({"disposition": "resolved"})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "invalid_state"),
        "{}",
        r.text
    );

    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let offer = desk.offer_for(&conv).await;
    let task = s(&offer["task"]["id"]);
    desk.accept(&task).await;
    let r = complete(task.clone(), json!({"disposition": "bogus"})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (422, "invalid_disposition"),
        "{}",
        r.text
    );
    let r = complete(task.clone(), json!({"disposition": "resolved", "extra": 1})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "bad_request"),
        "{}",
        r.text
    );
    let r = complete(task.clone(), json!({"notes": "no disposition"})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "bad_request"),
        "{}",
        r.text
    );
    // Refusals changed nothing: the agent still holds it.
    desk.expect_none("the task leaving", QUIET, |v| {
        v["type"] == "conversation.ended" || v["type"] == "task.completed"
    })
    .await;
    let r = complete(task.clone(), json!({"disposition": "resolved"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = complete(task, json!({"disposition": "resolved"})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (409, "invalid_state"),
        "{}",
        r.text
    );

    let desk_token = h
        .request(
            Method::POST,
            &format!("/v1/tasks/{waiting}/complete"),
            Some(&alice.token),
            Some(&json!({"disposition": "resolved"})),
        )
        .await;
    assert_eq!(desk_token.status, 401, "{}", desk_token.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_an_agent_offline_logs_it_out_and_its_task_goes_back() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut sup = supervisor(&h).await;
    let (mut desk, _customer, conv, _task) = assigned(&h, &alice, "Dana").await;

    let r = admin(
        &h,
        Method::PATCH,
        "/v1/agents/alice",
        Some(json!({"activity": "break"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["activity"], "break");
    let v = desk.recv_type("activity.changed").await;
    assert_eq!(
        (v["activity"].clone(), v["reason"].clone()),
        (json!("break"), json!("supervisor"))
    );
    let a = action(&mut sup, "agent.activity").await;
    assert_eq!(
        (a["agent_id"].clone(), a["activity"].clone()),
        (json!("alice"), json!("break"))
    );

    let r = admin(
        &h,
        Method::PATCH,
        "/v1/agents/alice",
        Some(json!({"activity": "offline"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["activity"], "offline");
    let v = desk.recv_type("activity.changed").await;
    assert_eq!(v["activity"], "offline");
    let (code, reason) = desk.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1000, "logged out by a supervisor")
    );
    let view = h
        .wait_agent("alice", "logged out", |v| v["connected"] == false)
        .await;
    assert_eq!(view["activity"], "offline", "{view}");
    let a = action(&mut sup, "agent.activity").await;
    assert_eq!(a["activity"], "offline");
    // Its task is back in the queue for someone else.
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut bob_desk = h.agent_online(&bob).await;
    bob_desk.offer_for(&conv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_activities_and_unknown_agents_are_refused() {
    let h = start();
    h.create_agent("alice", 1, &[]).await;
    for (body, status, code) in [
        (json!({"activity": "sleeping"}), 400, "bad_request"),
        (json!({"activity": "not_responding"}), 400, "bad_request"),
        (json!({"activity": 3}), 400, "bad_request"),
    ] {
        let r = admin(&h, Method::PATCH, "/v1/agents/alice", Some(body.clone())).await;
        assert_eq!(
            (r.status, r.error_code()),
            (status, code),
            "{body}: {}",
            r.text
        );
    }
    let r = admin(
        &h,
        Method::PATCH,
        "/v1/agents/nobody",
        Some(json!({"activity": "break"})),
    )
    .await;
    assert_eq!((r.status, r.error_code()), (404, "not_found"), "{}", r.text);
    assert_eq!(h.agent_view("alice").await["activity"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_change_applies_at_once() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut sup = supervisor(&h).await;
    let (mut desk, _c, _conv, _task) = assigned(&h, &alice, "Dana").await;
    let (_s, _c2, second) = customer_in(&h, "Eve", "default").await;
    desk.expect_none("an offer over capacity", QUIET, |v| {
        v["type"] == "task.offered"
    })
    .await;
    let r = admin(
        &h,
        Method::PATCH,
        "/v1/agents/alice",
        Some(json!({"capacity": {"webchat": 2}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    desk.offer_for(&second).await;
    let a = action(&mut sup, "agent.capacity").await;
    assert_eq!(a["capacity"]["webchat"], 2, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_transfer_is_an_action_with_its_target_and_note() {
    let h = start();
    create_queue(&h, "billing").await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut sup = supervisor(&h).await;
    let (mut desk, _c, conv, task) = assigned(&h, &alice, "Dana").await;
    let r = admin(
        &h,
        Method::POST,
        &format!("/v1/tasks/{task}/transfer"),
        Some(json!({"to": {"queue": "billing"}, "note": "VIP"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    desk.recv_type("task.transferred").await;
    let a = action(&mut sup, "task.transfer").await;
    assert_eq!(a["task_id"], task.as_str(), "{a}");
    assert_eq!(a["conversation_id"], conv.as_str(), "{a}");
    assert_eq!(a["to"], json!({"queue": "billing"}), "{a}");
    assert_eq!(a["note"], "VIP", "{a}");
    assert!(a["at"].is_string(), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_conversation_streams_its_messages_read_only() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut desk, mut customer, conv, _task) = assigned(&h, &alice, "Dana").await;
    let mut sup = supervisor(&h).await;

    sup.send(json!({"type": "monitor", "conversation_id": conv, "ref": "m1"}))
        .await;
    let m = sup.recv_type("monitoring").await;
    assert_eq!(m["ref"], "m1");
    assert_eq!(m["conversation_id"], conv.as_str());
    assert_eq!(m["messages"][0]["text"], "hello from Dana", "{m}");
    let a = action(&mut sup, "conversation.monitor").await;
    assert_eq!(a["conversation_id"], conv.as_str());

    customer.say("Where is my order?").await;
    let v = sup
        .recv_where("the customer's message", |v| v["type"] == "message")
        .await;
    assert_eq!(v["message"]["text"], "Where is my order?");
    assert_eq!(v["conversation_id"], conv.as_str());
    desk.agent_send(&conv, "Checking now", "s1").await;
    let v = sup
        .recv_where("the agent's message", |v| v["type"] == "message")
        .await;
    assert_eq!(v["message"]["text"], "Checking now");
    assert_eq!(v["message"]["from"], "agent");

    // Read-only: the stream takes no chat commands.
    sup.send(json!({"type": "send", "conversation_id": conv, "text": "hi", "ref": "x1"}))
        .await;
    sup.expect_error("x1", "bad_request").await;

    sup.send(json!({"type": "unmonitor", "conversation_id": conv, "ref": "u1"}))
        .await;
    let ok = sup.recv_ref("u1").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    action(&mut sup, "conversation.unmonitor").await;
    customer.say("Still there?").await;
    desk.recv_message_text("Still there?").await;
    sup.expect_none("a message after unmonitor", QUIET, |v| {
        v["type"] == "message"
    })
    .await;

    // Errors: unknown conversation, not monitored, missing id.
    sup.send(json!({"type": "monitor", "conversation_id": "cv_nope", "ref": "n1"}))
        .await;
    sup.expect_error("n1", "not_found").await;
    sup.send(json!({"type": "unmonitor", "conversation_id": conv, "ref": "n2"}))
        .await;
    sup.expect_error("n2", "not_found").await;
    sup.send(json!({"type": "monitor", "ref": "n3"})).await;
    sup.expect_error("n3", "bad_request").await;
}

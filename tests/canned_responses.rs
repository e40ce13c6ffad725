//! Canned responses over real sockets: the admin's CRUD and its checks,
//! agents listing the responses of their queues, and `send` by `canned_id`
//! filled in on webchat and SMS, with its errors.
mod common;
mod providers;

use std::time::Duration;

use common::{customer_in, s, Harness, Resp, Ws};
use providers::mock::{Api, Failure};
use providers::*;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard::canned::CannedDraft;

async fn post(h: &Harness, token: &str, body: Value) -> Resp {
    h.request(
        Method::POST,
        "/v1/canned-responses",
        Some(token),
        Some(&body),
    )
    .await
}

async fn patch(h: &Harness, id: &str, body: Value) -> Resp {
    h.request(
        Method::PATCH,
        &format!("/v1/canned-responses/{id}"),
        Some(&h.admin),
        Some(&body),
    )
    .await
}

async fn delete(h: &Harness, id: &str) -> Resp {
    h.request(
        Method::DELETE,
        &format!("/v1/canned-responses/{id}"),
        Some(&h.admin),
        None,
    )
    .await
}

/// Save a response as the admin; it must be created.
async fn save(h: &Harness, body: Value) -> Value {
    let r = post(h, &h.admin.clone(), body.clone()).await;
    assert_eq!(r.status, 201, "create {body}: {}", r.text);
    r.body
}

async fn create_queue(h: &Harness, body: Value) {
    let r = h
        .request(Method::POST, "/v1/queues", Some(&h.admin), Some(&body))
        .await;
    assert_eq!(r.status, 201, "queue {body}: {}", r.text);
}

/// The ids a listing answered, in its order.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|r| s(&r["id"]))
        .collect()
}

async fn list(h: &Harness, query: &str, token: &str) -> Resp {
    h.get(&format!("/v1/canned-responses{query}"), Some(token))
        .await
}

#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str, in_message: &str) {
    assert_eq!((r.status, r.error_code()), (status, code), "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(in_message),
        "want {in_message:?} in {message:?}"
    );
}

/// A `send` by canned id; the frame answering it (echo or error).
async fn send_canned(ws: &mut Ws, conversation_id: &str, canned_id: &str) -> Value {
    ws.call(json!({
        "type": "send",
        "conversation_id": conversation_id,
        "canned_id": canned_id,
        "client_msg_id": common::next_ref("cm"),
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_creates_lists_changes_and_deletes() {
    let h = common::start();
    create_queue(&h, json!({"id": "billing", "name": "Billing"})).await;
    let greet = save(
        &h,
        json!({"id": "greet", "title": "Greeting", "text": "Hi {{customer.name}}!"}),
    )
    .await;
    assert_eq!(
        greet,
        json!({"id": "greet", "title": "Greeting", "text": "Hi {{customer.name}}!", "queue": null})
    );
    // No id: one is made.
    let hours = save(
        &h,
        json!({"title": "Billing hours", "text": "{{queue.name}} opens at 9.", "queue": "billing"}),
    )
    .await;
    let hours_id = s(&hours["id"]);
    assert!(hours_id.starts_with("cr_"), "{hours}");

    // Listed by title, each with `filled` null outside a conversation.
    let all = list(&h, "", &h.admin).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(ids(&all.body), [hours_id.clone(), "greet".into()]);
    assert_eq!(all.body[1]["filled"], Value::Null);

    // PATCH replaces the given fields; queue null makes it global.
    let r = patch(&h, &hours_id, json!({"title": "Hours", "queue": null})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["title"], "Hours");
    assert_eq!(r.body["queue"], Value::Null);
    assert_eq!(r.body["text"], "{{queue.name}} opens at 9.");
    let r = patch(&h, "greet", json!({"queue": "billing"})).await;
    assert_eq!(r.body["queue"], "billing", "{}", r.text);

    // DELETE, then it is gone.
    assert_eq!(delete(&h, "greet").await.status, 204);
    assert_error(&delete(&h, "greet").await, 404, "not_found", "greet");
    assert_error(
        &patch(&h, "greet", json!({"title": "x"})).await,
        404,
        "not_found",
        "canned response greet does not exist",
    );
    assert_eq!(ids(&list(&h, "", &h.admin).await.body), [hours_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_responses_are_refused_with_the_reason() {
    let mut cfg = common::test_config();
    cfg.max_canned_responses = 3;
    cfg.max_canned_text = 50;
    let h = common::start_with(cfg);
    let admin = h.admin.clone();
    save(&h, json!({"id": "a", "title": "A", "text": "a"})).await;

    let cases = [
        (
            json!({"title": "T", "text": "Hi {{customer.email}}"}),
            400,
            "bad_request",
            "unknown placeholder {{customer.email}}",
        ),
        (
            json!({"title": "T", "text": "Hi {{ agent.name"}),
            400,
            "bad_request",
            "unclosed placeholder",
        ),
        (
            json!({"title": "", "text": "x"}),
            400,
            "bad_request",
            "title must be 1-100 characters",
        ),
        (
            json!({"title": "T", "text": "   "}),
            400,
            "bad_request",
            "text must not be empty",
        ),
        (
            json!({"title": "T", "text": "x".repeat(51)}),
            400,
            "text_too_long",
            "at most 50",
        ),
        (
            json!({"id": "has space", "title": "T", "text": "x"}),
            400,
            "bad_request",
            "must be 1-64 characters",
        ),
        (
            json!({"title": "T", "text": "x", "queue": "nowhere"}),
            404,
            "not_found",
            "queue nowhere does not exist",
        ),
        (
            json!({"title": "T", "text": "x", "colour": "red"}),
            400,
            "bad_request",
            "colour",
        ),
        (
            json!({"id": "a", "title": "T", "text": "x"}),
            409,
            "conflict",
            "canned response a already exists",
        ),
    ];
    for (body, status, code, message) in cases {
        let r = post(&h, &admin, body.clone()).await;
        assert_error(&r, status, code, message);
    }
    assert_error(
        &patch(&h, "a", json!({"text": "{{queue.id}}"})).await,
        400,
        "bad_request",
        "unknown placeholder {{queue.id}}",
    );
    assert_error(
        &patch(&h, "a", json!({"id": "b"})).await,
        400,
        "bad_request",
        "id cannot be changed",
    );
    // Nothing refused was stored, nor changed.
    let all = list(&h, "", &admin).await.body;
    assert_eq!(ids(&all), ["a"]);
    assert_eq!(all[0]["text"], "a");

    // The library is bounded.
    save(&h, json!({"title": "B", "text": "b"})).await;
    save(&h, json!({"title": "C", "text": "c"})).await;
    assert_error(
        &post(&h, &admin, json!({"title": "D", "text": "d"})).await,
        409,
        "conflict",
        "max_canned_responses",
    );

    // Only the admin writes; customers do not read.
    let alice = h.create_agent("alice", 1, &[]).await;
    let r = post(&h, &alice.token, json!({"title": "T", "text": "x"})).await;
    assert_error(&r, 401, "unauthorized", "admin token");
    let session = h.create_session("Dana", None).await;
    assert_error(
        &list(&h, "", &session.token).await,
        401,
        "unauthorized",
        "for agents",
    );
    assert_error(
        &list(&h, "?queue=default&conversation_id=cv_x", &admin).await,
        400,
        "bad_request",
        "not both",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_list_the_global_ones_and_their_queues_only() {
    let mut cfg = common::test_config();
    // One from the configuration file's [[canned_responses]].
    cfg.canned_responses = vec![CannedDraft {
        id: Some("welcome".into()),
        title: "Welcome".into(),
        text: "Welcome!".into(),
        queue: None,
    }];
    let h = common::start_with(cfg);
    create_queue(
        &h,
        json!({"id": "billing", "name": "Billing", "skills": ["billing"]}),
    )
    .await;
    create_queue(
        &h,
        json!({"id": "sales", "name": "Sales", "skills": ["sales"]}),
    )
    .await;
    save(&h, json!({"id": "g", "title": "Global", "text": "g"})).await;
    save(
        &h,
        json!({"id": "b", "title": "Billing", "text": "b", "queue": "billing"}),
    )
    .await;
    save(
        &h,
        json!({"id": "s", "title": "Sales", "text": "s", "queue": "sales"}),
    )
    .await;
    let alice = h.create_agent("alice", 1, &["billing"]).await;
    let bob = h.create_agent("bob", 1, &[]).await;

    // Listed by title: Billing, Global, Sales, Welcome.
    assert_eq!(
        ids(&list(&h, "", &h.admin).await.body),
        ["b", "g", "s", "welcome"]
    );
    assert_eq!(
        ids(&list(&h, "", &alice.token).await.body),
        ["b", "g", "welcome"]
    );
    assert_eq!(ids(&list(&h, "", &bob.token).await.body), ["g", "welcome"]);
    assert_eq!(
        ids(&list(&h, "?queue=billing", &alice.token).await.body),
        ["b", "g", "welcome"]
    );
    assert_eq!(
        ids(&list(&h, "?queue=sales", &h.admin).await.body),
        ["g", "s", "welcome"]
    );
    assert_error(
        &list(&h, "?queue=sales", &alice.token).await,
        404,
        "not_found",
        "queue sales is not one of yours",
    );
    assert_error(
        &list(&h, "?queue=nowhere", &h.admin).await,
        404,
        "not_found",
        "queue nowhere does not exist",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_by_id_fills_placeholders_on_webchat() {
    let h = common::start();
    create_queue(&h, json!({"id": "billing", "name": "Billing & Payments"})).await;
    save(
        &h,
        json!({"id": "greet", "title": "Greeting",
               "text": "Hi {{customer.name|there}}, {{agent.name}} from {{ queue.name }} here."}),
    )
    .await;
    save(
        &h,
        json!({"id": "refund", "title": "Refund", "text": "Refunds take 5 days.", "queue": "billing"}),
    )
    .await;
    save(
        &h,
        json!({"id": "other", "title": "Other", "text": "x", "queue": "default"}),
    )
    .await;
    let alice = h.create_agent("alice", 2, &[]).await;
    let bob = h.create_agent("bob", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (_session, mut customer, conv) = customer_in(&h, "Dana", "billing").await;
    let (_offer, _assigned) = desk.take_offer().await;

    // The listing for the conversation shows each usable response filled in.
    let r = list(&h, &format!("?conversation_id={conv}"), &alice.token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r.body), ["greet", "refund"]);
    let greeting = "Hi Dana, Agent alice from Billing & Payments here.";
    assert_eq!(r.body[0]["filled"], greeting);
    assert_eq!(r.body[1]["filled"], "Refunds take 5 days.");
    // Not another agent's conversation, nor one that does not exist.
    assert_error(
        &list(&h, &format!("?conversation_id={conv}"), &bob.token).await,
        404,
        "not_found",
        "does not exist",
    );
    assert_error(
        &list(&h, "?conversation_id=cv_nothing", &h.admin).await,
        404,
        "not_found",
        "does not exist",
    );

    // Sent by id: stored and delivered filled in, echoed with the ref.
    let echo = send_canned(&mut desk, &conv, "greet").await;
    assert_eq!(echo["type"], "message", "{echo}");
    assert_eq!(echo["message"]["text"], greeting);
    assert_eq!(echo["message"]["from"], "agent");
    customer.recv_message_text(greeting).await;
    let echo = send_canned(&mut desk, &conv, "refund").await;
    assert_eq!(echo["message"]["text"], "Refunds take 5 days.", "{echo}");
    let texts = common::texts(&h.messages(&conv).await["messages"]);
    assert_eq!(
        texts,
        ["hello from Dana", greeting, "Refunds take 5 days."],
        "history"
    );

    // The errors, each with the command's ref, nothing stored.
    let e = desk
        .call_err(
            json!({"type": "send", "conversation_id": conv, "canned_id": "nope"}),
            "not_found",
        )
        .await;
    assert!(s(&e["message"]).contains("canned response nope"), "{e}");
    let e = desk
        .call_err(
            json!({"type": "send", "conversation_id": conv, "canned_id": "other"}),
            "bad_request",
        )
        .await;
    assert!(
        s(&e["message"]).contains("is for queue default; this conversation is in queue billing"),
        "{e}"
    );
    let e = desk
        .call_err(
            json!({"type": "send", "conversation_id": conv, "canned_id": "greet", "text": "Hi"}),
            "bad_request",
        )
        .await;
    assert!(s(&e["message"]).contains("not both"), "{e}");
    let mut bob_desk = h.agent_online(&bob).await;
    bob_desk
        .call_err(
            json!({"type": "send", "conversation_id": conv, "canned_id": "greet"}),
            "not_your_task",
        )
        .await;
    assert_eq!(common::texts(&h.messages(&conv).await["messages"]).len(), 3);

    // After the end, the normal rule: invalid_state.
    desk.end(&conv).await;
    desk.call_err(
        json!({"type": "send", "conversation_id": conv, "canned_id": "greet"}),
        "invalid_state",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_by_id_on_sms_fills_a_missing_name_and_keeps_the_channel_rules() {
    let env = start(|c| {
        c.provider_in_flight = 1;
        c.provider_queue = 1;
        c.provider_timeout = Duration::from_secs(3);
    });
    let h = &env.h;
    save(
        h,
        json!({"id": "greet", "title": "Greeting",
               "text": "Hi {{customer.name|there}}, {{agent.name}} ({{queue.name}})."}),
    )
    .await;
    save(
        h,
        json!({"id": "plain", "title": "Plain", "text": "Hi {{customer.name}}, welcome."}),
    )
    .await;
    save(
        h,
        json!({"id": "long", "title": "Long", "text": "x".repeat(1601)}),
    )
    .await;
    let (_alice, mut ws) = env.agent("alice").await;
    env.sms_in(&sms_params("SMC0001", "+15551230000", "hi"))
        .await;
    let (_o, _a, conv, _t) = take(&mut ws).await;

    // An SMS customer's only name is its number: the fallback, or nothing.
    let r = list(h, &format!("?conversation_id={conv}"), &h.admin).await;
    assert_eq!(r.body[0]["id"], "greet", "{}", r.text);
    assert_eq!(r.body[0]["filled"], "Hi there, Agent alice (default).");

    // Twilio holds the first send 1.5 s; the second waits in the queue of 1.
    env.mock
        .fail(Api::Twilio, 1, Failure::Slow(Duration::from_millis(1500)));
    let echo = send_canned(&mut ws, &conv, "greet").await;
    assert_eq!(echo["message"]["text"], "Hi there, Agent alice (default).");
    env.mock.wait_sends(Api::Twilio, 1).await;
    let echo = send_canned(&mut ws, &conv, "plain").await;
    assert_eq!(echo["message"]["text"], "Hi , welcome.", "{echo}");
    // The outbound budget holds for canned sends too.
    let e = send_canned(&mut ws, &conv, "plain").await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    // SMS's own length limit applies to the filled-in text.
    let e = send_canned(&mut ws, &conv, "long").await;
    assert_eq!(e["code"], "text_too_long", "{e}");

    let sends = env.mock.wait_sends(Api::Twilio, 2).await;
    let bodies: Vec<String> = sends
        .iter()
        .map(|r| r.form_value("Body").unwrap_or_default())
        .collect();
    assert_eq!(
        bodies,
        ["Hi there, Agent alice (default).", "Hi , welcome."]
    );
    let texts: Vec<String> = env
        .history(&conv)
        .await
        .iter()
        .map(|m| s(&m["text"]))
        .collect();
    assert_eq!(
        texts,
        ["hi", "Hi there, Agent alice (default).", "Hi , welcome."]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_renames_reach_the_placeholder() {
    let h = common::start();
    create_queue(&h, json!({"id": "billing", "name": "Billing"})).await;
    save(
        &h,
        json!({"id": "q", "title": "Queue", "text": "You are in {{queue.name}}."}),
    )
    .await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (_session, _customer, conv) = customer_in(&h, "Dana", "billing").await;
    desk.take_offer().await;
    let r = h
        .request(
            Method::PATCH,
            "/v1/queues/billing",
            Some(&h.admin),
            Some(&json!({"name": "Invoices"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let echo = send_canned(&mut desk, &conv, "q").await;
    assert_eq!(echo["message"]["text"], "You are in Invoices.", "{echo}");
}

//! WebSocket command errors, limits and authentication.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_frame_then_socket_still_works() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut a, _hello) = h.connect_agent(&alice).await;
    a.send_text("{\"type\": \"activity\", ".into()).await;
    let err = a.recv_type("error").await;
    assert_eq!(err["code"], "bad_request", "{err}");
    assert!(err["ref"].is_null(), "no ref could be read: {err}");
    assert!(err["message"].is_string(), "{err}");
    // Still usable.
    a.set_activity("available").await;

    // Same on the customer socket.
    let sess = h.create_session("Dana", None).await;
    let (mut c, _hist) = h.connect_customer(&sess).await;
    c.send_text("not json at all".into()).await;
    let err = c.recv_type("error").await;
    assert_eq!(err["code"], "bad_request", "{err}");
    let ack = c.say("still here").await;
    assert_eq!(ack["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_incomplete_commands_are_bad_request() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut a, _hello) = h.connect_agent(&alice).await;
    let e = a.call_err(json!({"type": "dance"}), "bad_request").await;
    assert!(e["ref"].is_string(), "ref echoed: {e}");
    a.call_err(json!({"no_type": true}), "bad_request").await;
    a.call_err(json!({"type": "accept"}), "bad_request").await;
    a.call_err(
        json!({"type": "activity", "activity": "sleeping"}),
        "bad_request",
    )
    .await;
    a.set_activity("available").await;

    let sess = h.create_session("Dana", None).await;
    let (mut c, _hist) = h.connect_customer(&sess).await;
    c.call_err(json!({"type": "accept", "task_id": "t"}), "bad_request")
        .await;
    c.say("ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_ownership_errors() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    // Bob is connected but offline, so he gets no offers.
    let (mut b, _hello) = h.connect_agent(&bob).await;

    let e = a
        .call_err(
            json!({"type": "accept", "task_id": "no-such-task"}),
            "unknown_task",
        )
        .await;
    assert!(
        e["ref"].as_str().is_some_and(|r| r.starts_with("accept-")),
        "{e}"
    );
    a.call_err(
        json!({"type": "reject", "task_id": "no-such-task"}),
        "unknown_task",
    )
    .await;
    a.call_err(
        json!({"type": "complete", "task_id": "no-such-task", "disposition": "resolved"}),
        "unknown_task",
    )
    .await;

    let (_s, _c, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);
    let o = a.offer().await;
    let task = s(&o["task"]["id"]);

    // Bob may not take or reject alice's offer.
    b.call_err(json!({"type": "accept", "task_id": task}), "not_your_task")
        .await;
    b.call_err(json!({"type": "reject", "task_id": task}), "not_your_task")
        .await;
    a.accept(&task).await;

    // Bob may not write into, end, or complete alice's conversation.
    b.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "hijack", "client_msg_id": "x"}),
        "not_your_task",
    )
    .await;
    b.call_err(
        json!({"type": "end", "conversation_id": conv}),
        "not_your_task",
    )
    .await;
    b.call_err(
        json!({"type": "typing", "conversation_id": conv}),
        "not_your_task",
    )
    .await;
    // Nor read it over HTTP.
    let r = h
        .get(&format!("/v1/conversations/{conv}"), Some(&bob.token))
        .await;
    assert!(
        r.status == 401 || r.status == 403 || r.status == 404,
        "bob reading alice's conversation: {} {}",
        r.status,
        r.text
    );
    let msgs = h.messages(&conv).await;
    assert_eq!(texts(&msgs["messages"]), vec!["hi"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_after_offer_timeout_is_invalid_state() {
    let mut cfg = test_config();
    cfg.offer_timeout = Duration::from_millis(200);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, _c, _ack) = h.customer_with_message("Dana", "hi").await;
    let o = a.offer().await;
    let task = s(&o["task"]["id"]);
    let r = a.recv_type("task.rescinded").await;
    assert_eq!(r["reason"], "timeout", "{r}");
    a.call_err(json!({"type": "accept", "task_id": task}), "invalid_state")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_over_max_text_is_rejected() {
    let mut cfg = test_config();
    cfg.max_text = 100;
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let sess = h.create_session("Dana", None).await;
    let (mut c, _hist) = h.connect_customer(&sess).await;

    // Customer: one char too many (characters, not bytes).
    c.call_err(
        json!({"type": "message", "text": "ü".repeat(101), "client_msg_id": "big"}),
        "text_too_long",
    )
    .await;
    let ack = c.say(&"ü".repeat(100)).await;
    assert_eq!(ack["seq"], 1, "the rejected message took no seq: {ack}");
    let conv = s(&ack["conversation_id"]);

    let (_o, _assigned) = a.take_offer().await;
    a.call_err(
        json!({"type": "send", "conversation_id": conv, "text": "x".repeat(101), "client_msg_id": "big"}),
        "text_too_long",
    )
    .await;
    let echo = a.agent_send(&conv, &"x".repeat(100), "ok").await;
    assert_eq!(echo["message"]["seq"], 2, "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_max_frame_closes_with_1009() {
    let mut cfg = test_config();
    cfg.max_frame = 8 * 1024;
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut a, _hello) = h.connect_agent(&alice).await;
    let big = json!({"type": "typing", "conversation_id": "x".repeat(10 * 1024)});
    a.send(big).await;
    let err = a.recv_type("error").await;
    assert_eq!(err["code"], "payload_too_large", "{err}");
    let (code, _reason) = a.recv_close().await;
    assert_eq!(code, 1009, "close code");
    h.wait_agent("alice", "disconnected", |v| v["connected"] == false)
        .await;

    // A frame under the limit is fine on a new socket.
    let (mut a, _hello) = h.connect_agent(&alice).await;
    a.send_text(format!(
        "{{\"type\":\"activity\",\"activity\":\"available\",\"ref\":\"r\",\"pad\":\"{}\"}}",
        "p".repeat(4 * 1024)
    ))
    .await;
    let ok = a.recv_ref("r").await;
    assert_eq!(ok["type"], "ok", "{ok}");

    // Customer socket too.
    let sess = h.create_session("Dana", None).await;
    let (mut c, _hist) = h.connect_customer(&sess).await;
    c.send(json!({"type": "message", "text": "y".repeat(10 * 1024), "client_msg_id": "huge"}))
        .await;
    let err = c.recv_type("error").await;
    assert_eq!(err["code"], "payload_too_large", "{err}");
    let (code, _reason) = c.recv_close().await;
    assert_eq!(code, 1009, "customer close code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_refused_before_upgrade() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let url = format!("{}/v1/agents/alice/ws?token=wrong", h.ws_base);
    assert_eq!(
        try_connect(&url).await.err(),
        Some(401),
        "wrong agent token"
    );
    let url = format!("{}/v1/agents/alice/ws", h.ws_base);
    assert_eq!(
        try_connect(&url).await.err(),
        Some(401),
        "missing agent token"
    );
    // Bob's token does not open alice's desktop.
    let url = format!("{}/v1/agents/alice/ws?token={}", h.ws_base, bob.token);
    assert_eq!(
        try_connect(&url).await.err(),
        Some(401),
        "other agent's token"
    );
    let url = format!("{}/v1/webchat/ws?token=wrong", h.ws_base);
    assert_eq!(
        try_connect(&url).await.err(),
        Some(401),
        "wrong session token"
    );
    let url = format!("{}/v1/webchat/ws", h.ws_base);
    assert_eq!(
        try_connect(&url).await.err(),
        Some(401),
        "missing session token"
    );
    // And the right one works.
    let (_a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["agent"]["id"], "alice");
    // HTTP with a wrong bearer.
    let r = h.get("/v1/conversations/whatever", Some("wrong")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.error_code(), "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_ref() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut a, _hello) = h.connect_agent(&alice).await;
    a.send(json!({"type": "accept", "task_id": "nope", "ref": "my-ref-1"}))
        .await;
    a.send(json!({"type": "bogus", "ref": "my-ref-2"})).await;
    a.send(json!({"type": "activity", "activity": "available", "ref": "my-ref-3"}))
        .await;
    let e1 = a.recv_next().await;
    assert_eq!(e1["type"], "error");
    assert_eq!(e1["ref"], "my-ref-1", "{e1}");
    assert_eq!(e1["code"], "unknown_task");
    let e2 = a.recv_next().await;
    assert_eq!(e2["ref"], "my-ref-2", "{e2}");
    assert_eq!(e2["code"], "bad_request");
    let ok = a.recv_next().await;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(ok["ref"], "my-ref-3", "{ok}");
    // Without a ref the error has ref null.
    a.send(json!({"type": "accept", "task_id": "nope"})).await;
    let e = a.recv_type("error").await;
    assert!(
        e.get("ref").is_some_and(|r| r.is_null()),
        "ref: null expected: {e}"
    );
}

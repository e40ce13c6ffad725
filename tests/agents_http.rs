//! Agent administration over HTTP, plus the small operational endpoints.
mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn alice_body() -> Value {
    json!({
        "id": "alice",
        "name": "Alice",
        "capacity": {"webchat": 3, "sms": 2, "whatsapp": 1, "messenger": 0},
        "skills": ["spanish"],
    })
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "status for {code}: body {}", r.text);
    assert_eq!(r.error_code(), code, "error code: body {}", r.text);
    assert!(
        r.body["error"]["message"].is_string(),
        "error message must be a string: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_get_patch_delete() {
    let h = start();
    let admin = h.admin.clone();
    let admin = Some(admin.as_str());

    let r = h
        .request(Method::POST, "/v1/agents", admin, Some(&alice_body()))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let a = &r.body;
    assert_eq!(a["id"], "alice");
    assert_eq!(a["name"], "Alice");
    assert_eq!(
        a["capacity"],
        json!({"webchat": 3, "sms": 2, "whatsapp": 1, "messenger": 0})
    );
    assert_eq!(a["skills"], json!(["spanish"]));
    assert!(
        a["token"].as_str().is_some_and(|t| !t.is_empty()),
        "token: {a}"
    );
    assert_eq!(a["activity"], "offline");
    assert_eq!(a["connected"], false);
    assert!(a["load"].is_object(), "load: {a}");

    let bob = json!({"id": "bob", "name": "Bob",
        "capacity": {"webchat": 1, "sms": 1, "whatsapp": 1, "messenger": 1}, "skills": []});
    let r = h
        .request(Method::POST, "/v1/agents", admin, Some(&bob))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // List.
    let list = h.admin_get_ok("/v1/agents").await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"alice") && ids.contains(&"bob"),
        "list: {list}"
    );
    assert_eq!(ids.len(), 2, "list: {list}");
    for a in list.as_array().expect("array") {
        assert!(a.get("token").is_none(), "list must not leak tokens: {a}");
    }

    // Get one.
    let got = h.admin_get_ok("/v1/agents/alice").await;
    assert_eq!(got["id"], "alice");
    assert_eq!(got["name"], "Alice");
    assert_eq!(got["capacity"]["webchat"], 3);
    assert_eq!(got["skills"], json!(["spanish"]));
    assert_eq!(got["connected"], false);
    assert_eq!(got["activity"], "offline");

    // Patch name, capacity and skills.
    let patch = json!({
        "name": "Alice B.",
        "capacity": {"webchat": 5, "sms": 1, "whatsapp": 1, "messenger": 1},
        "skills": ["french", "billing"],
    });
    let r = h
        .request(Method::PATCH, "/v1/agents/alice", admin, Some(&patch))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["name"], "Alice B.");
    assert_eq!(r.body["capacity"]["webchat"], 5);
    assert_eq!(r.body["skills"], json!(["french", "billing"]));

    // A partial patch leaves the other fields alone.
    let r = h
        .request(
            Method::PATCH,
            "/v1/agents/alice",
            admin,
            Some(&json!({"name": "Alice C."})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got = h.admin_get_ok("/v1/agents/alice").await;
    assert_eq!(got["name"], "Alice C.");
    assert_eq!(got["capacity"]["webchat"], 5);
    assert_eq!(got["skills"], json!(["french", "billing"]));

    // Delete.
    let r = h
        .request(Method::DELETE, "/v1/agents/alice", admin, None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = h.admin_get("/v1/agents/alice").await;
    assert_error(&r, 404, "not_found");
    let list = h.admin_get_ok("/v1/agents").await;
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["bob"], "list after delete: {list}");

    // The id is free again.
    let r = h
        .request(Method::POST, "/v1/agents", admin, Some(&alice_body()))
        .await;
    assert_eq!(r.status, 201, "re-create after delete: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_admin_token() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    h.create_agent("bob", 1, &[]).await;
    let body = json!({"id": "x", "name": "X"});
    let patch = json!({"name": "X"});
    for token in [None, Some("wrong-token"), Some(alice.token.as_str())] {
        let cases: Vec<(Method, &str, Option<&Value>)> = vec![
            (Method::POST, "/v1/agents", Some(&body)),
            (Method::GET, "/v1/agents", None),
            (Method::GET, "/v1/agents/alice", None),
            (Method::PATCH, "/v1/agents/alice", Some(&patch)),
            (Method::DELETE, "/v1/agents/alice", None),
            (Method::POST, "/v1/agents/alice/token", None),
            (Method::GET, "/v1/stats", None),
        ];
        for (m, path, b) in cases {
            if token == Some(alice.token.as_str()) && m == Method::GET && path == "/v1/agents/alice"
            {
                // Server decision: an agent may read its own view.
                continue;
            }
            let r = h.request(m.clone(), path, token, b).await;
            assert_eq!(
                r.status, 401,
                "{m} {path} with token {token:?}: body {}",
                r.text
            );
            assert_eq!(r.error_code(), "unauthorized", "{m} {path}: {}", r.text);
        }
    }
    // An agent may read itself, but not other agents.
    let r = h.get("/v1/agents/alice", Some(&alice.token)).await;
    assert_eq!(r.status, 200, "agent reads itself: {}", r.text);
    let r = h.get("/v1/agents/bob", Some(&alice.token)).await;
    assert!(
        r.status == 401 || r.status == 403,
        "alice reading bob: {} {}",
        r.status,
        r.text
    );
    // Nothing was changed by the rejected calls.
    let got = h.admin_get_ok("/v1/agents/alice").await;
    assert_eq!(got["name"], "Agent alice");
    let r = h.get("/v1/agents/alice", Some(&alice.token)).await;
    assert_eq!(r.status, 200, "alice's token still works: {}", r.text);
    let r = h.admin_get("/v1/agents/x").await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_before_the_body() {
    let h = start();
    h.create_agent("alice", 1, &[]).await;
    // An unauthenticated caller learns nothing about body validation.
    for (m, path) in [
        (Method::POST, "/v1/agents"),
        (Method::PATCH, "/v1/agents/alice"),
    ] {
        let r = h
            .request_raw(
                m.clone(),
                path,
                None,
                "application/json",
                b"{broken".to_vec(),
            )
            .await;
        assert_eq!(
            r.status, 401,
            "{m} {path} without token, bad body: {}",
            r.text
        );
        assert_eq!(r.error_code(), "unauthorized", "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_is_conflict() {
    let h = start();
    let admin = h.admin.clone();
    let r = h
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(&alice_body()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let first_token = r.body["token"].clone();
    let r = h
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(&alice_body()),
        )
        .await;
    assert_error(&r, 409, "conflict");
    // The original agent is unchanged and its token still works.
    let got = h.admin_get_ok("/v1/agents/alice").await;
    assert_eq!(got["name"], "Alice");
    let agent = Agent {
        id: "alice".into(),
        name: "Alice".into(),
        token: s(&first_token),
    };
    let (_ws, hello) = h.connect_agent(&agent).await;
    assert_eq!(hello["agent"]["id"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_bad_request() {
    let h = start();
    let admin = h.admin.clone();
    let r = h
        .request_raw(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            "application/json",
            b"{\"id\": \"alice\", ".to_vec(),
        )
        .await;
    assert_error(&r, 400, "bad_request");

    let r = h
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(&json!({"name": "No Id"})),
        )
        .await;
    assert_error(&r, 400, "bad_request");

    let r = h
        .request(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(&json!({"id": "alice", "capacity": "lots"})),
        )
        .await;
    assert_error(&r, 400, "bad_request");

    // PATCH with broken JSON on an existing agent.
    h.create_agent("bob", 1, &[]).await;
    let r = h
        .request_raw(
            Method::PATCH,
            "/v1/agents/bob",
            Some(&admin),
            "application/json",
            b"not json".to_vec(),
        )
        .await;
    assert_error(&r, 400, "bad_request");

    // Nothing was created.
    let list = h.admin_get_ok("/v1/agents").await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "list: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_is_not_found() {
    let h = start();
    let admin = h.admin.clone();
    let r = h.admin_get("/v1/agents/nobody").await;
    assert_error(&r, 404, "not_found");
    let r = h
        .request(
            Method::PATCH,
            "/v1/agents/nobody",
            Some(&admin),
            Some(&json!({"name": "N"})),
        )
        .await;
    assert_error(&r, 404, "not_found");
    let r = h
        .request(Method::DELETE, "/v1/agents/nobody", Some(&admin), None)
        .await;
    assert_error(&r, 404, "not_found");
    // Deleting twice: second is 404.
    h.create_agent("alice", 1, &[]).await;
    let r = h
        .request(Method::DELETE, "/v1/agents/alice", Some(&admin), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = h
        .request(Method::DELETE, "/v1/agents/alice", Some(&admin), None)
        .await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_token_locks_the_old_one_out_at_once() {
    let h = start();
    let admin = h.admin.clone();
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (mut bob_desk, _) = h.connect_agent(&bob).await;
    // Alice holds a conversation across the rotation.
    let (_session, _customer, ack) = h.customer_with_message("Dana", "hello").await;
    let conversation = s(&ack["conversation_id"]);
    let (offer, _assigned) = desk.take_offer().await;
    let task = s(&offer["task"]["id"]);

    let r = h
        .request(Method::POST, "/v1/agents/alice/token", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], "alice", "{}", r.text);
    let token = s(&r.body["token"]);
    assert_eq!(token.len(), 32, "{token}");
    assert_ne!(token, alice.token);
    assert_eq!(
        r.body.as_object().map(|o| o.len()),
        Some(2),
        "only id and token: {}",
        r.text
    );

    // The desk opened with the old token is closed, saying why.
    let (code, reason) = desk.recv_close().await;
    assert_eq!(code, 1008, "close code");
    assert_eq!(reason, "token rotated");

    // The old token no longer works, for HTTP or for a new socket.
    let r = h.get("/v1/agents/alice", Some(&alice.token)).await;
    assert_error(&r, 401, "unauthorized");
    assert_eq!(try_connect(&h.agent_ws_url(&alice)).await.err(), Some(401));

    // The new one does, and the agent gets its conversation back.
    let rotated = Agent {
        token,
        ..alice.clone()
    };
    let r = h.get("/v1/agents/alice", Some(&rotated.token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (mut desk, hello) = h.connect_agent(&rotated).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    let resync = desk.recv_type("task.assigned").await;
    assert_eq!(resync["task"]["conversation_id"], conversation.as_str());
    // Bob's token and socket are untouched (a closed socket would panic here).
    let r = h.get("/v1/agents/bob", Some(&bob.token)).await;
    assert_eq!(r.status, 200, "bob is untouched: {}", r.text);
    bob_desk
        .expect_none("a frame for bob", QUIET, |v| v["type"] == "error")
        .await;

    // Unknown agent.
    let r = h
        .request(Method::POST, "/v1/agents/nobody/token", Some(&admin), None)
        .await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_view_tracks_connection_and_activity() {
    let h = start();
    let alice = h.create_agent("alice", 2, &[]).await;
    let (mut ws, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["activity"], "offline", "fresh connection: {hello}");
    assert_eq!(hello["agent"]["id"], "alice");
    assert_eq!(hello["tasks"], json!([]));
    h.wait_agent("alice", "connected", |v| v["connected"] == true)
        .await;
    ws.set_activity("available").await;
    h.wait_agent("alice", "available", |v| v["activity"] == "available")
        .await;
    ws.set_activity("break").await;
    h.wait_agent("alice", "break", |v| v["activity"] == "break")
        .await;
    drop(ws);
    h.wait_agent("alice", "disconnected", |v| v["connected"] == false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_requeues_its_tasks() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, _cws, ack) = h.customer_with_message("Dana", "hello").await;
    let conv = s(&ack["conversation_id"]);
    let (_offer, _assigned) = a.take_offer().await;

    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    b.expect_none("offer before delete", QUIET, |v| {
        v["type"] == "task.offered"
    })
    .await;

    let admin = h.admin.clone();
    let r = h
        .request(Method::DELETE, "/v1/agents/alice", Some(&admin), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);

    let offer = b.offer_for(&conv).await;
    let assigned = b.accept(&s(&offer["task"]["id"])).await;
    assert_eq!(texts(&assigned["history"]), vec!["hello".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints() {
    let h = start();
    let r = h.get("/healthz", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"status": "ok"}));

    let r = h.get("/v1/dispositions", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for d in ["resolved", "follow_up", "escalated", "spam", "no_response"] {
        assert!(
            r.body.as_array().is_some_and(|a| a.contains(&json!(d))),
            "dispositions must contain {d}: {}",
            r.text
        );
    }

    h.create_agent("alice", 1, &[]).await;
    let st = h.admin_get_ok("/v1/stats").await;
    assert_eq!(st["agents"]["total"], 1, "stats: {st}");
    assert_eq!(st["agents"]["connected"], 0, "stats: {st}");
    for k in [
        "queued",
        "reserved",
        "assigned",
        "wrapping",
        "completed",
        "canceled",
    ] {
        assert!(st["tasks"][k].is_u64(), "stats.tasks.{k}: {st}");
    }
    assert!(st["queue"]["length"].is_u64(), "stats.queue: {st}");
    assert!(st["messages"]["in"].is_u64(), "stats.messages: {st}");
    for k in ["p50", "p90", "p99", "max"] {
        assert!(
            st["routing_latency_ms"][k].is_number(),
            "stats.routing_latency_ms.{k}: {st}"
        );
    }

    let r = h.get("/metrics", Some(&h.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.lines().any(|l| l.starts_with("switchboard_")),
        "metrics: {}",
        r.text
    );
}

//! Operations over real sockets: health, stats, Prometheus metrics, the
//! supervisor event stream and dispositions.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_dispositions_need_no_token() {
    let h = start();
    let r = h.get("/healthz", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"status": "ok"}));
    let r = h.get("/v1/dispositions", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!(["resolved", "follow_up", "escalated", "spam", "no_response"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_metrics_follow_a_conversation() {
    let h = start();
    let r = h.get("/v1/stats", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "unauthorized");

    let alice = h.create_agent("alice", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_s, mut c, _ack) = h.customer_with_message("Dana", "hello").await;
    let (task, _assigned) = a.take_offer().await;
    let conv = task["task"]["conversation_id"]
        .as_str()
        .expect("conv")
        .to_owned();
    let task_id = task["task"]["id"].as_str().expect("task").to_owned();
    a.agent_send(&conv, "hi Dana", "a1").await;
    c.recv_message_text("hi Dana").await;

    let stats = h.admin_get_ok("/v1/stats").await;
    assert_eq!(stats["agents"]["total"], 1, "{stats}");
    assert_eq!(stats["agents"]["available"], 1, "{stats}");
    assert_eq!(stats["tasks"]["assigned"], 1, "{stats}");
    assert_eq!(stats["messages"]["in"], 1, "{stats}");
    assert_eq!(stats["messages"]["out"], 1, "{stats}");
    assert_eq!(stats["queue"]["length"], 0, "{stats}");
    assert_eq!(stats["routing_latency_ms"]["count"], 1, "{stats}");

    a.end(&conv).await;
    a.complete(&task_id, "resolved", "done").await;
    let stats = h.admin_get_ok("/v1/stats").await;
    assert_eq!(stats["tasks"]["assigned"], 0, "{stats}");
    assert_eq!(stats["tasks"]["completed"], 1, "{stats}");

    let r = h.get("/metrics", Some(&h.admin)).await;
    assert_eq!(r.status, 200);
    for line in [
        "switchboard_agents{state=\"available\"} 1",
        "switchboard_tasks_finished_total{state=\"completed\"} 1",
        "switchboard_messages_total{direction=\"in\"} 1",
        "switchboard_queue_length{channel=\"webchat\"} 0",
        "# TYPE switchboard_routing_latency_seconds gauge",
    ] {
        assert!(
            r.text.lines().any(|l| l == line),
            "missing {line:?} in\n{}",
            r.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_length_and_oldest_wait_are_reported() {
    let h = start();
    let (_s, _c, _ack) = h.customer_with_message("Dana", "anyone there?").await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let stats = h.admin_get_ok("/v1/stats").await;
    assert_eq!(stats["queue"]["length"], 1, "{stats}");
    assert_eq!(stats["tasks"]["queued"], 1, "{stats}");
    assert!(
        stats["queue"]["oldest_wait_ms"].as_u64().expect("ms") >= 50,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_stream_shows_agent_and_task_events() {
    let h = start();
    let url = format!("{}/v1/supervisor/ws?token=wrong-token", h.ws_base);
    assert_eq!(try_connect(&url).await.err(), Some(401));

    let url = format!("{}/v1/supervisor/ws?token={}", h.ws_base, h.admin);
    let mut sup = Ws::connect(&url).await;
    // Subscription is asynchronous: make sure it is in place before acting.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let ev = sup
        .recv_where("agent available", |v| {
            v["type"] == "agent.state" && v["agent"]["activity"] == "available"
        })
        .await;
    assert_eq!(ev["agent"]["id"], "alice");
    assert_eq!(ev["agent"]["connected"], true);

    let (_s, _c, _ack) = h.customer_with_message("Dana", "hello").await;
    let (task, _) = a.take_offer().await;
    let task_id = task["task"]["id"].clone();
    for state in ["reserved", "assigned"] {
        let ev = sup
            .recv_where(state, |v| v["type"] == "task.state" && v["state"] == state)
            .await;
        assert_eq!(ev["task_id"], task_id, "{ev}");
        assert_eq!(ev["channel"], "webchat");
    }
    // Supervisors only listen.
    sup.send(json!({"type": "accept", "task_id": "x", "ref": "s1"}))
        .await;
    let err = sup.recv_ref("s1").await;
    assert_eq!(err["code"], "bad_request", "{err}");
}

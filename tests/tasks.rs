//! What a supervisor board sees: `GET /v1/tasks`, `task.state` on the
//! supervisor stream from a task's creation on, and agents counted by what
//! they can do now in `/v1/stats`.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn ids(tasks: &Value) -> Vec<String> {
    tasks
        .as_array()
        .expect("an array of tasks")
        .iter()
        .map(|t| s(&t["id"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tasks_are_listed_oldest_first_with_customer_state_and_agent() {
    let h = start();
    let mut waiting = Vec::new();
    for name in ["Ann", "Ben", "Cleo"] {
        let (_s, ws, ack) = h.customer_with_message(name, "hello").await;
        waiting.push((ws, ack));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks = h.admin_get_ok("/v1/tasks").await;
    let list = tasks.as_array().expect("array");
    assert_eq!(list.len(), 3, "{tasks}");
    let names: Vec<&str> = list
        .iter()
        .map(|t| t["customer"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["Ann", "Ben", "Cleo"], "{tasks}");
    for (t, (_, ack)) in list.iter().zip(&waiting) {
        assert_eq!(t["conversation_id"], ack["conversation_id"], "{t}");
        assert_eq!(t["state"], "queued", "{t}");
        assert_eq!(t["channel"], "webchat", "{t}");
        assert_eq!(t["queue"], "default", "{t}");
        assert_eq!(t["priority"], 0, "{t}");
        assert!(t["agent_id"].is_null(), "{t}");
        assert!(t["waiting_since"].is_string(), "{t}");
        assert!(t["created_at"].is_string(), "{t}");
    }

    // One agent with room for one: the oldest is reserved for her.
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let offer = a.offer().await;
    let reserved = h.admin_get_ok("/v1/tasks?state=reserved").await;
    assert_eq!(ids(&reserved), vec![s(&offer["task"]["id"])], "{reserved}");
    assert_eq!(reserved[0]["agent_id"], "alice", "{reserved}");
    assert_eq!(reserved[0]["customer"]["name"], "Ann", "{reserved}");
    let queued = h.admin_get_ok("/v1/tasks?state=queued").await;
    assert_eq!(queued.as_array().map(Vec::len), Some(2), "{queued}");
    let both = h
        .admin_get_ok("/v1/tasks?state=queued,reserved&channel=webchat&queue=default")
        .await;
    assert_eq!(both.as_array().map(Vec::len), Some(3), "{both}");
    let none = h.admin_get_ok("/v1/tasks?channel=sms").await;
    assert_eq!(none, serde_json::json!([]));
    let other_queue = h.admin_get_ok("/v1/tasks?queue=billing").await;
    assert_eq!(other_queue, serde_json::json!([]));

    // Accepted, then ended: assigned, then wrapping; completed leaves the list.
    let task_id = s(&offer["task"]["id"]);
    let conv = s(&offer["task"]["conversation_id"]);
    a.accept(&task_id).await;
    let assigned = h.admin_get_ok("/v1/tasks?state=assigned").await;
    assert_eq!(ids(&assigned), vec![task_id.clone()], "{assigned}");
    a.end(&conv).await;
    let wrapping = h.admin_get_ok("/v1/tasks?state=wrapping").await;
    assert_eq!(ids(&wrapping), vec![task_id.clone()], "{wrapping}");
    a.complete(&task_id, "resolved", "").await;
    // The router hears of the completion after the agent does (so that the
    // agent's next offer never overtakes it): the task leaves the list soon.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let all = h.admin_get_ok("/v1/tasks").await;
        if !ids(&all).contains(&task_id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{all}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_refuses_bad_filters_and_strangers() {
    let h = start();
    for (query, needle) in [
        ("state=sleeping", "unknown task state"),
        ("state=completed", "open tasks"),
        ("channel=fax", "unknown channel"),
    ] {
        let r = h.admin_get(&format!("/v1/tasks?{query}")).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.error_code(), "bad_request", "{query}: {}", r.text);
        assert!(r.text.contains(needle), "{query}: {}", r.text);
    }
    let r = h.get("/v1/tasks", None).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let alice = h.create_agent("alice", 1, &[]).await;
    let r = h.get("/v1/tasks", Some(&alice.token)).await;
    assert_eq!(r.status, 401, "agents are not admins: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisors_see_a_task_from_its_creation_to_its_end() {
    let h = start();
    let url = format!("{}/v1/supervisor/ws?token={}", h.ws_base, h.admin);
    let mut sup = Ws::connect(&url).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (_s, _c, ack) = h.customer_with_message("Dana", "is anyone there?").await;
    let created = sup
        .recv_where("task created", |v| v["type"] == "task.state")
        .await;
    assert_eq!(created["state"], "queued", "{created}");
    assert_eq!(
        created["conversation_id"], ack["conversation_id"],
        "{created}"
    );
    assert_eq!(created["task"]["customer"]["name"], "Dana", "{created}");
    assert_eq!(created["task"]["state"], "queued", "{created}");
    assert_eq!(created["task"]["queue"], "default", "{created}");
    assert!(created["task"]["waiting_since"].is_string(), "{created}");
    let task_id = created["task_id"].clone();
    assert_eq!(created["task"]["id"], task_id, "{created}");

    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_offer, assigned) = a.take_offer().await;
    let conv = s(&assigned["task"]["conversation_id"]);
    a.end(&conv).await;
    a.complete(&s(&task_id), "resolved", "").await;
    for state in ["reserved", "assigned", "wrapping", "completed"] {
        let ev = sup
            .recv_where(state, |v| v["type"] == "task.state" && v["state"] == state)
            .await;
        assert_eq!(ev["task_id"], task_id, "{ev}");
        assert_eq!(ev["task"]["state"], state, "{ev}");
        assert_eq!(ev["agent_id"], "alice", "{ev}");
        assert_eq!(ev["task"]["agent_id"], "alice", "{ev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_counted_by_what_they_can_take_now() {
    let h = start();
    let full = h.create_agent("full", 1, &[]).await;
    let free = h.create_agent("free", 2, &[]).await;
    let resting = h.create_agent("resting", 2, &[]).await;
    let gone = h.create_agent("gone", 2, &[]).await;
    let _never = h.create_agent("never", 2, &[]).await;

    let mut f = h.agent_online(&full).await;
    let (_s, _c, _ack) = h.customer_with_message("Dana", "hi").await;
    f.take_offer().await;
    h.wait_agent("full", "one webchat task", |v| v["load"]["webchat"] == 1)
        .await;
    let _fr = h.agent_online(&free).await;
    let (mut r, _) = h.connect_agent(&resting).await;
    r.set_activity("break").await;
    let g = h.agent_online(&gone).await;
    drop(g);
    h.wait_agent("gone", "disconnected", |v| v["connected"] == false)
        .await;

    let stats = h.admin_get_ok("/v1/stats").await;
    let agents = &stats["agents"];
    let want = [
        ("available", 1),
        ("busy", 0),
        ("break", 1),
        ("offline", 1),
        ("disconnected", 1),
    ];
    // "full" has a free sms/whatsapp/messenger slot, so it is still available
    // overall; on webchat it is busy.
    for (k, n) in want {
        let expect = if k == "available" { n + 1 } else { n };
        assert_eq!(agents[k], expect, "{k}: {agents}");
    }
    assert_eq!(agents["total"], 5, "{agents}");
    let web = &agents["by_channel"]["webchat"];
    for (k, n) in [
        ("available", 1),
        ("busy", 1),
        ("break", 1),
        ("offline", 1),
        ("disconnected", 1),
    ] {
        assert_eq!(web[k], n, "webchat {k}: {agents}");
    }
    let sms = &agents["by_channel"]["sms"];
    assert_eq!(sms["available"], 2, "{agents}");
    assert_eq!(sms["busy"], 0, "{agents}");

    let metrics = h.get("/metrics", Some(&h.admin)).await.text;
    for line in [
        "switchboard_agents{state=\"disconnected\"} 1",
        "switchboard_channel_agents{channel=\"webchat\",state=\"busy\"} 1",
        "switchboard_channel_agents{channel=\"webchat\",state=\"available\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

//! Queue statistics over real sockets: `GET /v1/stats` per queue after a
//! scripted day (on a manual clock, so waits are exact), the supervisor
//! stream's rate-limited `stats` frame, and `/metrics` with `queue` labels.
mod common;

use std::time::{Duration, SystemTime};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use switchboard::clock::Clock;
use switchboard::Config;

const ADMIN: &str = "queue-stats-test-admin-token-0123456789ab";

fn config() -> Config {
    let mut c = test_config();
    c.admin_token = Some(ADMIN.into());
    c
}

async fn admin(h: &Harness, method: Method, path: &str, body: Option<Value>) -> Resp {
    h.request(method, path, Some(ADMIN), body.as_ref()).await
}

async fn create_queue(h: &Harness, body: Value) {
    let r = admin(h, Method::POST, "/v1/queues", Some(body.clone())).await;
    assert_eq!(r.status, 201, "create queue {body}: {}", r.text);
}

async fn agent_with(h: &Harness, id: &str, skills: &[&str]) -> Agent {
    let r = admin(
        h,
        Method::POST,
        "/v1/agents",
        Some(json!({"id": id, "capacity": {"webchat": 1}, "skills": skills})),
    )
    .await;
    assert_eq!(r.status, 201, "create agent {id}: {}", r.text);
    Agent {
        id: id.into(),
        name: id.into(),
        token: s(&r.body["token"]),
    }
}

/// `GET /v1/stats`'s queues by id. The router answers it after every
/// message already in its mailbox, so it also makes sure those were counted
/// before the test moves the clock.
async fn queues(h: &Harness) -> serde_json::Map<String, Value> {
    let r = admin(h, Method::GET, "/v1/stats", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| (s(&q["id"]), q.clone()))
        .collect()
}

/// Poll `/v1/stats` until `pred` holds for queue `id`.
async fn wait_queue(h: &Harness, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let q = queues(h).await[id].clone();
        if pred(&q) {
            return q;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn t0() -> SystemTime {
    humantime::parse_rfc3339("2026-11-30T10:00:00Z").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_queue_stats_equal_what_a_scripted_day_produced() {
    let clock = Clock::manual(t0());
    let at = |secs: u64| clock.set(t0() + Duration::from_secs(secs));
    let mut cfg = config();
    cfg.clock = clock.clone();
    let h = start_with(cfg);
    for (id, skill) in [("billing", "billing"), ("sales", "sales")] {
        create_queue(
            &h,
            json!({"id": id, "skills": [skill], "sla": {"first_response": "60s"}}),
        )
        .await;
    }
    let alice = agent_with(&h, "alice", &["billing"]).await;
    let bob = agent_with(&h, "bob", &["sales"]).await;
    let mut a = h.agent_online(&alice).await;
    let mut b = h.agent_online(&bob).await;

    // 0 s: a billing task, accepted 30 s later (within the 60 s target).
    let _c1 = customer_in(&h, "C1", "billing").await.1;
    let offer1 = a.offer().await;
    at(30);
    a.accept(&s(&offer1["task"]["id"])).await;

    // 30 s: a sales task, accepted 90 s later (past the target).
    let _c2 = customer_in(&h, "C2", "sales").await.1;
    let offer2 = b.offer().await;
    at(120);
    b.accept(&s(&offer2["task"]["id"])).await;

    // 120 s: a billing task that waits (Alice is full), 10 s later still
    // waiting, then its customer leaves: abandoned before the target.
    let mut c3 = customer_in(&h, "C3", "billing").await.1;
    wait_queue(&h, "billing", "C3 waiting", |q| q["waiting"] == 1).await;
    at(130);
    let billing = queues(&h).await["billing"].clone();
    assert_eq!(billing["longest_wait_ms"], 10_000, "{billing}");
    assert_eq!(billing["offered"], 0, "{billing}");
    assert_eq!(billing["capacity_in_use"], 1, "{billing}");
    c3.send(json!({"type": "leave"})).await;
    wait_queue(&h, "billing", "C3 abandoned", |q| {
        q["today"]["abandoned"] == 1
    })
    .await;

    // Alice ends at 150 s (handled 120 s) and completes at 170 s (wrap-up 20 s).
    at(150);
    a.end(&s(&offer1["task"]["conversation_id"])).await;
    queues(&h).await;
    at(170);
    a.complete(&s(&offer1["task"]["id"]), "resolved", "").await;
    let all = wait_queue(&h, "billing", "C1 completed", |q| {
        q["today"]["completed"] == 1
    })
    .await;

    assert_eq!(
        all,
        json!({
            "id": "billing", "waiting": 0, "longest_wait_ms": 0, "offered": 0,
            "capacity_in_use": 0,
            "agents": {"available": 1, "busy": 0, "break": 0, "offline": 0,
                       "disconnected": 0, "not_responding": 0},
            "today": {"created": 2, "completed": 1, "canceled": 1, "abandoned": 1,
                      "avg_wait_ms": 30_000, "avg_handle_ms": 120_000,
                      "avg_wrapup_ms": 20_000, "sla_met_pct": 100.0}
        })
    );
    let all = queues(&h).await;
    assert_eq!(
        all["sales"],
        json!({
            "id": "sales", "waiting": 0, "longest_wait_ms": 0, "offered": 0,
            "capacity_in_use": 1,
            "agents": {"available": 0, "busy": 1, "break": 0, "offline": 0,
                       "disconnected": 0, "not_responding": 0},
            "today": {"created": 1, "completed": 0, "canceled": 0, "abandoned": 0,
                      "avg_wait_ms": 90_000, "avg_handle_ms": null,
                      "avg_wrapup_ms": null, "sla_met_pct": 0.0}
        })
    );
    // `default` has no skills: both agents serve it. Nothing entered it.
    assert_eq!(
        all["default"]["agents"]["available"], 1,
        "{}",
        all["default"]
    );
    assert_eq!(all["default"]["agents"]["busy"], 1, "{}", all["default"]);
    assert_eq!(all["default"]["today"]["created"], 0);
    assert_eq!(all["default"]["today"]["sla_met_pct"], Value::Null);

    // Bob goes on break: counted so in sales.
    b.set_activity("break").await;
    wait_queue(&h, "sales", "bob on break", |q| q["agents"]["break"] == 1).await;

    // The same figures in Prometheus form, labelled by queue.
    let r = h.get("/metrics", Some(ADMIN)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for line in [
        "switchboard_queue_waiting{queue=\"billing\"} 0",
        "switchboard_queue_capacity_in_use{queue=\"sales\"} 1",
        "switchboard_queue_agents{queue=\"billing\",state=\"available\"} 1",
        "switchboard_queue_agents{queue=\"sales\",state=\"break\"} 1",
        "switchboard_queue_tasks_today_total{queue=\"billing\",event=\"created\"} 2",
        "switchboard_queue_tasks_today_total{queue=\"billing\",event=\"abandoned\"} 1",
        "switchboard_queue_wait_seconds_avg{queue=\"sales\"} 90",
        "switchboard_queue_handle_seconds_avg{queue=\"billing\"} 120",
        "switchboard_queue_wrapup_seconds_avg{queue=\"billing\"} 20",
        "switchboard_queue_sla_met_ratio{queue=\"billing\"} 1",
        "switchboard_queue_sla_met_ratio{queue=\"sales\"} 0",
        "# TYPE switchboard_queue_tasks_today_total counter",
    ] {
        assert!(
            r.text.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            r.text
        );
    }
    // No SLA figure where there is none.
    assert!(!r
        .text
        .contains("switchboard_queue_sla_met_ratio{queue=\"default\"}"));

    // Midnight (UTC) on the router's clock: a new day starts from zero.
    clock.set(humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap());
    let all = queues(&h).await;
    assert_eq!(all["billing"]["today"]["created"], 0, "{}", all["billing"]);
    assert_eq!(all["billing"]["today"]["avg_wait_ms"], Value::Null);
    // Live figures are not daily: Bob still holds the sales task.
    assert_eq!(all["sales"]["capacity_in_use"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_stream_gets_stats_at_most_once_a_second_with_the_latest_figures() {
    let h = start_with(config());
    let mut sup = Ws::connect(&format!("{}/v1/supervisor/ws?token={ADMIN}", h.ws_base)).await;
    // Subscription is asynchronous: make sure it is in place before acting.
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Two changes well within a second.
    let _c1 = customer_in(&h, "C1", "default").await.1;
    let _c2 = customer_in(&h, "C2", "default").await.1;

    let waiting = |v: &Value| {
        v["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["id"] == "default"))
            .map(|q| q["waiting"].clone())
    };
    let mut arrivals = Vec::new();
    loop {
        let frame = sup.recv_type("stats").await;
        arrivals.push(tokio::time::Instant::now());
        if waiting(&frame) == Some(json!(2)) {
            assert_eq!(frame["queues"][0]["today"]["created"], 2, "{frame}");
            break;
        }
        assert!(arrivals.len() < 4, "no frame with both tasks: {frame}");
    }
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(900),
            "two stats frames {:?} apart",
            pair[1] - pair[0]
        );
    }
    // Nothing changed since: no further frame.
    sup.expect_none(
        "a stats frame without a change",
        Duration::from_millis(1_500),
        |v| v["type"] == "stats",
    )
    .await;

    // The snapshot a (re)connecting board starts from.
    let all = queues(&h).await;
    assert_eq!(all["default"]["waiting"], 2);
}

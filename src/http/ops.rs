//! Operations: `/healthz` (503 while the journal cannot write), `/v1/stats` (admin), `/metrics` (Prometheus text:
//! the admin token or the metrics token, unless `metrics_public`) and
//! `/v1/dispositions`.

use std::fmt::Write;

use actix_web::{HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::http::{auth_failed, bearer, require_admin, same_secret, throttle_gate, State};
use crate::metrics::Metrics;
use crate::protocol::{ChannelKind, TaskState};
use crate::router::{GetStats, RouterStats};

/// `200 {"status":"ok"}`; `503 unavailable` while the journal cannot write
/// (a full or failing disk: the broker takes no change, so a load balancer
/// should send elsewhere), with the journal's error.
pub async fn healthz(state: State) -> Result<HttpResponse, ApiError> {
    if let Some(Err(e)) = state.journal.as_ref().map(crate::journal::Journal::health) {
        return Err(ApiError::Unavailable(e.to_string()));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok"})))
}

/// `GET /v1/cluster` (admin): this node's place in the cluster. A single
/// node answers `{"role":"single"}`; an active node its id, lease TTL and
/// how far its journal is replicated (`docs/cluster.md`). Standbys answer
/// `503 standby` (`http/standby.rs`), so every answer comes from the active
/// node.
pub async fn cluster(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(match state.cluster.get() {
        Some(status) => status.to_json(),
        None => serde_json::json!({"node_id": null, "role": "single"}),
    }))
}

pub async fn dispositions(state: State) -> HttpResponse {
    HttpResponse::Ok().json(&state.config.dispositions)
}

async fn router_stats(state: &State) -> Result<RouterStats, ApiError> {
    state.router.send(GetStats).await.map_err(ApiError::mailbox)
}

pub async fn stats(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let r = router_stats(&state).await?;
    let m = &state.metrics;
    let tasks: serde_json::Map<String, serde_json::Value> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), m.tasks_in(*s).max(0).into()))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "agents": {
            "total": r.agents_total,
            "connected": r.agents_connected,
            "available": r.agents.available,
            "busy": r.agents.busy,
            "break": r.agents.on_break,
            "offline": r.agents.offline,
            "disconnected": r.agents.disconnected,
            "not_responding": r.agents.not_responding,
            "by_channel": ChannelKind::ALL
                .iter()
                .map(|ch| (ch.as_str(), r.agents_by_channel[ch.index()]))
                .collect::<std::collections::BTreeMap<_, _>>(),
        },
        "tasks": tasks,
        "queue": {
            "length": r.queue_length,
            "by_channel": r.queue_by_channel,
            "oldest_wait_ms": r.oldest_wait.as_millis() as u64,
        },
        "messages": {
            "in": Metrics::count(&m.messages_in),
            "out": Metrics::count(&m.messages_out),
        },
        "conversations": {
            "opened": Metrics::count(&m.conversations_opened),
        },
        "slow_consumers": Metrics::count(&m.slow_consumers),
        "connections": {
            "open": state.limits.connections.open(),
            "max": state.config.max_connections,
        },
        "routing_latency_ms": {
            "p50": r.latency_p50_ms,
            "p90": r.latency_p90_ms,
            "p99": r.latency_p99_ms,
            "max": r.latency_max_ms,
            "count": r.latency_count,
        },
        "queues": r.queues,
        "webhooks": state.webhooks.stats(),
    })))
}

/// Who may read `/metrics`: anyone with `metrics_public`, else the admin
/// token or the metrics token. Figures of load and queues tell an outsider
/// how busy the contact center is and when an attack hurts, so they are not
/// public by default.
fn may_read_metrics(req: &HttpRequest, state: &State) -> Result<(), ApiError> {
    if state.config.metrics_public {
        return Ok(());
    }
    let token = bearer(req)?.ok_or_else(|| {
        ApiError::Unauthorized(
            "/metrics needs a token: send Authorization: Bearer <metrics token or admin token> \
             (or set metrics_public = true)"
                .into(),
        )
    })?;
    throttle_gate(req, state)?;
    let metrics_token = state.config.metrics_token.as_deref();
    if same_secret(&token, &state.admin_token)
        || metrics_token.is_some_and(|t| same_secret(&token, t))
    {
        return Ok(());
    }
    if state.agent_by_token(&token).is_some() || state.webchat_session(&token).is_some() {
        return Err(ApiError::Unauthorized(
            "/metrics needs the metrics token or the admin token".into(),
        ));
    }
    Err(auth_failed(req, state, "invalid token"))
}

/// Prometheus text exposition format, version 0.0.4.
pub async fn metrics(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    may_read_metrics(&req, &state)?;
    let r = router_stats(&state).await?;
    let m = &state.metrics;
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, help: &str, kind: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP switchboard_{name} {help}");
        let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "switchboard_{name}{labels} {value}");
        }
    };
    let by_state = |c: &crate::router::AgentCounts, labels: &str| -> Vec<(String, f64)> {
        [
            ("available", c.available),
            ("busy", c.busy),
            ("break", c.on_break),
            ("offline", c.offline),
            ("disconnected", c.disconnected),
            ("not_responding", c.not_responding),
        ]
        .iter()
        .map(|(state, n)| (format!("{{{labels}state=\"{state}\"}}"), *n as f64))
        .collect()
    };
    gauge(
        "agents",
        "Agents by state: available (free capacity), busy (full), break, offline, disconnected (in grace), not_responding.",
        "gauge",
        &by_state(&r.agents, ""),
    );
    let per_channel: Vec<(String, f64)> = ChannelKind::ALL
        .iter()
        .flat_map(|ch| {
            by_state(
                &r.agents_by_channel[ch.index()],
                &format!("channel=\"{}\",", ch.as_str()),
            )
        })
        .collect();
    gauge(
        "channel_agents",
        "Agents with capacity on a channel, by state on that channel.",
        "gauge",
        &per_channel,
    );
    gauge(
        "agents_connected",
        "Agents with a desktop socket.",
        "gauge",
        &[(String::new(), r.agents_connected as f64)],
    );
    let tasks: Vec<(String, f64)> = TaskState::ALL
        .iter()
        .filter(|s| s.is_open())
        .map(|s| {
            (
                format!("{{state=\"{}\"}}", s.as_str()),
                m.tasks_in(*s) as f64,
            )
        })
        .collect();
    gauge("tasks", "Open tasks by state.", "gauge", &tasks);
    gauge(
        "tasks_finished_total",
        "Tasks completed or canceled since start.",
        "counter",
        &[
            (
                "{state=\"completed\"}".into(),
                m.tasks_in(TaskState::Completed) as f64,
            ),
            (
                "{state=\"canceled\"}".into(),
                m.tasks_in(TaskState::Canceled) as f64,
            ),
        ],
    );
    let queue: Vec<(String, f64)> = ChannelKind::ALL
        .iter()
        .map(|c| {
            (
                format!("{{channel=\"{}\"}}", c.as_str()),
                r.queue_by_channel.get(*c) as f64,
            )
        })
        .collect();
    gauge(
        "queue_length",
        "Tasks waiting for an agent.",
        "gauge",
        &queue,
    );
    gauge(
        "queue_oldest_wait_seconds",
        "Wait of the oldest queued task.",
        "gauge",
        &[(String::new(), r.oldest_wait.as_secs_f64())],
    );
    gauge(
        "messages_total",
        "Messages accepted, by direction.",
        "counter",
        &[
            (
                "{direction=\"in\"}".into(),
                Metrics::count(&m.messages_in) as f64,
            ),
            (
                "{direction=\"out\"}".into(),
                Metrics::count(&m.messages_out) as f64,
            ),
        ],
    );
    gauge(
        "slow_consumers_total",
        "Sockets closed because their client stopped reading.",
        "counter",
        &[(String::new(), Metrics::count(&m.slow_consumers) as f64)],
    );
    gauge(
        "connections_open",
        "Open connections, HTTP and WebSocket (max_connections bounds them).",
        "gauge",
        &[(String::new(), state.limits.connections.open() as f64)],
    );
    gauge(
        "routing_latency_seconds",
        "Task arrival to first offer, by quantile since start.",
        "gauge",
        &[
            ("{quantile=\"0.5\"}".into(), r.latency_p50_ms / 1000.0),
            ("{quantile=\"0.9\"}".into(), r.latency_p90_ms / 1000.0),
            ("{quantile=\"0.99\"}".into(), r.latency_p99_ms / 1000.0),
        ],
    );
    gauge(
        "routed_tasks_total",
        "Tasks offered at least once since start.",
        "counter",
        &[(String::new(), r.latency_count as f64)],
    );
    queue_metrics(&r, &mut gauge);
    webhook_metrics(&state.webhooks.stats(), &mut gauge);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out))
}

/// Each webhook endpoint's figures, labelled `url` (without its query, which
/// may carry a credential of the receiver's).
fn webhook_metrics(
    endpoints: &[crate::webhooks::EndpointStats],
    gauge: &mut impl FnMut(&str, &str, &str, &[(String, f64)]),
) {
    if endpoints.is_empty() {
        return;
    }
    let now = std::time::SystemTime::now();
    let per = |f: &dyn Fn(&crate::webhooks::EndpointStats) -> f64| -> Vec<(String, f64)> {
        endpoints
            .iter()
            .map(|e| {
                let url = e.url.split(['?', '#']).next().unwrap_or_default();
                let url = url.replace('\\', "\\\\").replace('"', "\\\"");
                (format!("{{url=\"{url}\"}}"), f(e))
            })
            .collect()
    };
    gauge(
        "webhook_pending",
        "Webhook events queued or in flight, per endpoint (bounded by webhook_queue).",
        "gauge",
        &per(&|e| e.pending as f64),
    );
    gauge(
        "webhook_delivered_total",
        "Webhook events the endpoint answered with a 2xx.",
        "counter",
        &per(&|e| e.delivered as f64),
    );
    gauge(
        "webhook_failed_total",
        "Webhook events given up after webhook_retry_for.",
        "counter",
        &per(&|e| e.failed as f64),
    );
    gauge(
        "webhook_dropped_total",
        "Webhook events dropped because the endpoint's queue was full.",
        "counter",
        &per(&|e| e.dropped as f64),
    );
    gauge(
        "webhook_failed_attempts_total",
        "Webhook delivery attempts that failed (non-2xx, timeout, connection error).",
        "counter",
        &per(&|e| e.failed_attempts as f64),
    );
    gauge(
        "webhook_failing_seconds",
        "How long the endpoint has failed since its last success (0: healthy).",
        "gauge",
        &per(&|e| {
            e.failing_since
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64())
        }),
    );
}

/// Each queue's figures, labelled `queue`: live gauges, today's counts (since
/// midnight UTC: counters that reset daily) and today's averages and SLA.
fn queue_metrics(r: &RouterStats, gauge: &mut impl FnMut(&str, &str, &str, &[(String, f64)])) {
    let per_queue =
        |f: &dyn Fn(&crate::protocol::QueueStats) -> Option<f64>| -> Vec<(String, f64)> {
            r.queues
                .iter()
                .filter_map(|q| f(q).map(|v| (format!("{{queue=\"{}\"}}", q.id), v)))
                .collect()
        };
    gauge(
        "queue_waiting",
        "Tasks waiting in the queue.",
        "gauge",
        &per_queue(&|q| Some(q.waiting as f64)),
    );
    gauge(
        "queue_longest_wait_seconds",
        "Wait of the queue's longest-waiting task (0 when none waits).",
        "gauge",
        &per_queue(&|q| Some(q.longest_wait_ms as f64 / 1000.0)),
    );
    gauge(
        "queue_offered",
        "The queue's tasks on offer to an agent, awaiting an answer.",
        "gauge",
        &per_queue(&|q| Some(q.offered as f64)),
    );
    gauge(
        "queue_capacity_in_use",
        "The queue's tasks holding agent capacity (offered, assigned, wrap-up).",
        "gauge",
        &per_queue(&|q| Some(q.capacity_in_use as f64)),
    );
    let agents: Vec<(String, f64)> = r
        .queues
        .iter()
        .flat_map(|q| {
            let a = q.agents;
            [
                ("available", a.available),
                ("busy", a.busy),
                ("break", a.on_break),
                ("offline", a.offline),
                ("disconnected", a.disconnected),
                ("not_responding", a.not_responding),
            ]
            .map(|(state, n)| {
                (
                    format!("{{queue=\"{}\",state=\"{state}\"}}", q.id),
                    n as f64,
                )
            })
        })
        .collect();
    gauge(
        "queue_agents",
        "Agents serving the queue, by state (an agent counts in every queue it serves).",
        "gauge",
        &agents,
    );
    let tasks: Vec<(String, f64)> = r
        .queues
        .iter()
        .flat_map(|q| {
            let t = &q.today;
            [
                ("created", t.created),
                ("completed", t.completed),
                ("canceled", t.canceled),
                ("abandoned", t.abandoned),
            ]
            .map(|(event, n)| {
                (
                    format!("{{queue=\"{}\",event=\"{event}\"}}", q.id),
                    n as f64,
                )
            })
        })
        .collect();
    gauge(
        "queue_tasks_today_total",
        "The queue's tasks since midnight UTC by event: created, completed, canceled, abandoned (a subset of canceled). Resets at midnight.",
        "counter",
        &tasks,
    );
    let secs = |ms: Option<u64>| ms.map(|ms| ms as f64 / 1000.0);
    gauge(
        "queue_wait_seconds_avg",
        "Average wait until accept (ASA) of the queue's tasks accepted today.",
        "gauge",
        &per_queue(&|q| secs(q.today.avg_wait_ms)),
    );
    gauge(
        "queue_handle_seconds_avg",
        "Average accept to end of conversation, of the queue's conversations ended today.",
        "gauge",
        &per_queue(&|q| secs(q.today.avg_handle_ms)),
    );
    gauge(
        "queue_wrapup_seconds_avg",
        "Average end of conversation to complete, of the queue's tasks completed today.",
        "gauge",
        &per_queue(&|q| secs(q.today.avg_wrapup_ms)),
    );
    gauge(
        "queue_sla_met_ratio",
        "Share (0-1) of today's tasks accepted within the queue's sla.first_response, of those accepted or abandoned after it.",
        "gauge",
        &per_queue(&|q| q.today.sla_met_pct.map(|p| p / 100.0)),
    );
}

//! Simulated agents: created over the admin API, then one desktop WebSocket each
//! that goes `available`, accepts every offer, answers every customer message
//! with `re: <seq> #<n> t=<nanos>`, ends the conversation when the customer says
//! `bye`, and completes the task with disposition `resolved`. Offers for
//! customers of another run are rejected.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::net::{self, Failure, Ws};
use crate::report::{now_nanos, stamp_of, tag_of, Counters, Lat, Stats};
use crate::Ctx;

/// How many agent-creation requests are in flight at once.
const CREATE_PARALLELISM: usize = 32;

/// `ref` of the `activity: available` command sent after `hello`.
const READY_REF: &str = "ready";

/// An agent created for this run.
#[derive(Debug, Clone)]
pub struct Creds {
    pub id: String,
    pub token: String,
}

/// Creates `count` agents `lt-agent-<run>-<n>` with capacity `capacity` on
/// webchat. Returns those created and the failures.
pub async fn create_agents(ctx: &Ctx, count: usize, capacity: u32) -> (Vec<Creds>, Vec<Failure>) {
    let results: Vec<Result<Creds, Failure>> = stream::iter(0..count)
        .map(|n| create_one(ctx, n, capacity))
        .buffer_unordered(CREATE_PARALLELISM)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(c) => created.push(c),
            Err(f) => failed.push(f),
        }
    }
    (created, failed)
}

async fn create_one(ctx: &Ctx, n: usize, capacity: u32) -> Result<Creds, Failure> {
    let id = format!("lt-agent-{}-{n}", ctx.run_id);
    let body = json!({
        "id": id,
        "name": format!("Load test agent {n}"),
        "capacity": { "webchat": capacity },
        "skills": [],
    });
    let (_, v) = net::http_json(
        ctx.http(n),
        Method::POST,
        ctx.target.http("/v1/agents"),
        Some(&ctx.admin_token),
        Some(&body),
    )
    .await?;
    let token = v["token"].as_str().ok_or_else(|| {
        Failure::new(
            "harness.bad_agent_body",
            format!("POST /v1/agents for {id}: no token in {v}"),
        )
    })?;
    if v["id"].as_str() != Some(id.as_str()) {
        return Err(Failure::new(
            "harness.bad_agent_body",
            format!("POST /v1/agents for {id}: answered id {}", v["id"]),
        ));
    }
    Ok(Creds {
        id,
        token: token.to_string(),
    })
}

/// Deletes the run's agents; returns how many deletions failed.
pub async fn delete_agents(ctx: &Ctx, agents: &[Creds]) -> usize {
    let results: Vec<Result<(), Failure>> = stream::iter(agents.iter().enumerate())
        .map(|(n, a)| async move {
            let url = ctx.target.http(&format!("/v1/agents/{}", a.id));
            net::http_json(
                ctx.http(n),
                Method::DELETE,
                url,
                Some(&ctx.admin_token),
                None,
            )
            .await
            .map(|_| ())
        })
        .buffer_unordered(CREATE_PARALLELISM)
        .collect()
        .await;
    results.iter().filter(|r| r.is_err()).count()
}

/// Runs one agent until `shutdown` turns true or its socket fails. `ready` gets
/// `true` once the server confirmed `available`. Returns how many tasks the agent
/// still held at the end.
pub async fn run(
    ctx: Arc<Ctx>,
    creds: Creds,
    ready: oneshot::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> usize {
    let mut agent = Agent {
        ctx: ctx.clone(),
        id: creds.id.clone(),
        convs: HashMap::new(),
        accept_sent: HashMap::new(),
        next_msg: 0,
        customer_prefix: crate::customer::name_prefix(&ctx.run_id),
        ready: Some(ready),
        out: Vec::new(),
    };
    ctx.pacer.wait().await;
    let url = ctx
        .target
        .ws(&format!("/v1/agents/{}/ws", creds.id), &creds.token);
    let mut ws = match net::connect_ws(&ctx.target, ctx.sources.pick(), &url).await {
        Ok(ws) => ws,
        Err(f) => {
            agent.fail(Failure::new(
                f.code,
                format!("agent {}: {}", creds.id, f.detail),
            ));
            return 0;
        }
    };
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            ev = net::recv_json(&mut ws) => match ev {
                Ok(ev) => {
                    agent.handle(&ev);
                    if let Err(f) = agent.flush(&mut ws).await {
                        agent.fail(f);
                        return agent.convs.len();
                    }
                }
                Err(f) => {
                    agent.fail(Failure::new(f.code, format!("agent {}: {}", agent.id, f.detail)));
                    return agent.convs.len();
                }
            }
        }
    }
    let _ = net::send_json(&mut ws, &json!({"type": "activity", "activity": "offline"})).await;
    net::close_ws(ws).await;
    agent.convs.len()
}

/// Counts a check the server's events failed, seen by agent `id`.
fn harness(stats: &Stats, id: &str, what: &str, detail: String) {
    stats.error(&Failure::new(
        format!("harness.{what}"),
        format!("agent {id}: {detail}"),
    ));
}

/// One conversation as the agent sees it.
struct Conv {
    task_id: String,
    last_seq: u64,
    end_sent: bool,
}

struct Agent {
    ctx: Arc<Ctx>,
    id: String,
    /// Assigned conversations by conversation id.
    convs: HashMap<String, Conv>,
    /// Task id → when `accept` was sent (nanos).
    accept_sent: HashMap<String, u64>,
    next_msg: u64,
    /// Customer names of this run start with this.
    customer_prefix: String,
    ready: Option<oneshot::Sender<bool>>,
    /// Commands to send after the current event.
    out: Vec<Value>,
}

impl Agent {
    fn fail(&mut self, f: Failure) {
        self.ctx.stats.error(&f);
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(false);
        }
    }

    async fn flush(&mut self, ws: &mut Ws) -> Result<(), Failure> {
        if self.out.is_empty() {
            return Ok(());
        }
        for cmd in self.out.drain(..) {
            net::feed_json(ws, &cmd).await?;
        }
        net::flush(ws).await
    }

    fn handle(&mut self, ev: &Value) {
        let c = &self.ctx.stats.c;
        match ev["type"].as_str().unwrap_or_default() {
            "hello" => {
                if ev["agent"]["id"].as_str() != Some(self.id.as_str()) {
                    harness(
                        &self.ctx.stats,
                        &self.id,
                        "bad_hello",
                        format!("hello for another agent: {}", ev["agent"]),
                    );
                }
                self.out
                    .push(json!({"type": "activity", "activity": "available", "ref": READY_REF}));
            }
            "ok" if ev["ref"].as_str() == Some(READY_REF) => {
                if let Some(ready) = self.ready.take() {
                    Counters::inc(&c.agents_ready);
                    let _ = ready.send(true);
                }
            }
            "task.offered" => {
                Counters::inc(&c.offers);
                let task = &ev["task"];
                let Some(task_id) = task["id"].as_str() else {
                    harness(
                        &self.ctx.stats,
                        &self.id,
                        "bad_event",
                        format!("task.offered without task.id: {ev}"),
                    );
                    return;
                };
                if task["channel"].as_str() != Some("webchat") {
                    harness(
                        &self.ctx.stats,
                        &self.id,
                        "bad_event",
                        format!("offer on channel {}", task["channel"]),
                    );
                }
                // A task from another run or client (left in the queue, say) would
                // hold capacity forever: reject it, and it is not offered here again.
                let customer = task["customer"]["name"].as_str().unwrap_or_default();
                if !customer.starts_with(&self.customer_prefix) {
                    Counters::inc(&c.foreign_offers_rejected);
                    self.out.push(json!({
                        "type": "reject",
                        "task_id": task_id,
                        "ref": format!("reject:{task_id}"),
                    }));
                    return;
                }
                // The preview is the latest customer text: the first message, stamped.
                let preview = task["preview"].as_str().unwrap_or_default();
                if let (Some(1), Some(sent)) = (tag_of(preview), stamp_of(preview)) {
                    self.ctx.stats.record_since(Lat::FirstToOffered, sent);
                }
                self.accept_sent.insert(task_id.to_string(), now_nanos());
                Counters::inc(&c.accepts_sent);
                self.out.push(json!({
                    "type": "accept",
                    "task_id": task_id,
                    "ref": format!("accept:{task_id}"),
                }));
            }
            "task.rescinded" => {
                let reason = ev["reason"].as_str().unwrap_or("(none)");
                self.ctx.stats.rescinded(reason);
                if let Some(t) = ev["task_id"].as_str() {
                    self.accept_sent.remove(t);
                }
            }
            "task.assigned" => self.on_assigned(ev),
            "message" => {
                let conv_id = ev["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.on_message(&conv_id, &ev["message"], true);
            }
            "conversation.ended" => {
                let conv_id = ev["conversation_id"].as_str().unwrap_or_default();
                let Some(conv) = self.convs.get(conv_id) else {
                    harness(
                        &self.ctx.stats,
                        &self.id,
                        "unknown_conversation",
                        format!("conversation.ended for {conv_id}"),
                    );
                    return;
                };
                let task_id = conv.task_id.clone();
                if let Some(t) = ev["task_id"].as_str() {
                    if t != task_id {
                        harness(&self.ctx.stats, &self.id,
                            "task_mismatch",
                            format!("conversation.ended for {conv_id} names task {t}, assigned was {task_id}"),
                        );
                    }
                }
                Counters::inc(&c.completes_sent);
                self.out.push(json!({
                    "type": "complete",
                    "task_id": task_id,
                    "disposition": "resolved",
                    "notes": "load test",
                    "ref": format!("complete:{task_id}"),
                }));
            }
            "task.completed" => {
                let task_id = ev["task_id"].as_str().unwrap_or_default();
                let before = self.convs.len();
                self.convs.retain(|_, conv| conv.task_id != task_id);
                if self.convs.len() == before {
                    harness(
                        &self.ctx.stats,
                        &self.id,
                        "unknown_task",
                        format!("task.completed for {task_id}"),
                    );
                } else {
                    Counters::inc(&c.tasks_completed);
                    Counters::dec(&c.open_tasks);
                }
            }
            "error" => {
                let code = ev["code"].as_str().unwrap_or("error_without_code");
                let detail = format!(
                    "agent {}: {} (ref {})",
                    self.id,
                    ev["message"].as_str().unwrap_or_default(),
                    ev["ref"]
                );
                let is_ready = ev["ref"].as_str() == Some(READY_REF);
                let f = Failure::new(code, detail);
                if is_ready {
                    self.fail(f);
                } else {
                    self.ctx.stats.error(&f);
                }
            }
            // typing, message.status and anything newer carry nothing to act on.
            _ => {}
        }
    }

    fn on_assigned(&mut self, ev: &Value) {
        let c = &self.ctx.stats.c;
        let task = &ev["task"];
        let (Some(task_id), Some(conv_id)) =
            (task["id"].as_str(), task["conversation_id"].as_str())
        else {
            harness(
                &self.ctx.stats,
                &self.id,
                "bad_event",
                format!("task.assigned without ids: {ev}"),
            );
            return;
        };
        Counters::inc(&c.assigned);
        if let Some(sent) = self.accept_sent.remove(task_id) {
            self.ctx.stats.record_since(Lat::AcceptToAssigned, sent);
        }
        let preview = task["preview"].as_str().unwrap_or_default();
        if let (Some(1), Some(sent)) = (tag_of(preview), stamp_of(preview)) {
            self.ctx.stats.record_since(Lat::FirstToAssigned, sent);
        }
        if self.convs.contains_key(conv_id) {
            harness(
                &self.ctx.stats,
                &self.id,
                "duplicate_assigned",
                format!("task.assigned again for {conv_id}"),
            );
            return;
        }
        Counters::inc(&c.open_tasks);
        self.convs.insert(
            conv_id.to_string(),
            Conv {
                task_id: task_id.to_string(),
                last_seq: 0,
                end_sent: false,
            },
        );
        // Messages that arrived while the task waited come in the history.
        if let Some(history) = ev["history"].as_array() {
            for m in history {
                self.on_message(conv_id, m, false);
            }
        }
    }

    /// One message of `conv_id`; `live` is false for history replayed on assign.
    fn on_message(&mut self, conv_id: &str, m: &Value, live: bool) {
        let c = &self.ctx.stats.c;
        let seq = m["seq"].as_u64().unwrap_or(0);
        let Some(conv) = self.convs.get_mut(conv_id) else {
            harness(
                &self.ctx.stats,
                &self.id,
                "unknown_conversation",
                format!("message seq {seq} for {conv_id}"),
            );
            return;
        };
        if seq <= conv.last_seq {
            let last = conv.last_seq;
            harness(
                &self.ctx.stats,
                &self.id,
                "seq_duplicate_or_reordered",
                format!("{conv_id}: seq {seq} after {last}"),
            );
            return;
        }
        if seq != conv.last_seq + 1 {
            let last = conv.last_seq;
            harness(
                &self.ctx.stats,
                &self.id,
                "seq_gap",
                format!("{conv_id}: seq {seq} after {last}"),
            );
        }
        conv.last_seq = seq;
        if m["from"].as_str() != Some("customer") {
            return;
        }
        Counters::inc(&c.customer_to_agent);
        let text = m["text"].as_str().unwrap_or_default();
        if text == "bye" {
            if !conv.end_sent {
                conv.end_sent = true;
                Counters::inc(&c.ends_sent);
                self.out.push(json!({
                    "type": "end",
                    "conversation_id": conv_id,
                    "ref": format!("end:{conv_id}"),
                }));
            }
            return;
        }
        if conv.end_sent {
            return;
        }
        let Some(tag) = tag_of(text) else {
            harness(
                &self.ctx.stats,
                &self.id,
                "bad_text",
                format!("{conv_id}: customer text {text:?}"),
            );
            return;
        };
        if live {
            if let Some(sent) = stamp_of(text) {
                self.ctx.stats.record_since(Lat::CustomerToAgent, sent);
            }
        }
        self.next_msg += 1;
        let client_msg_id = format!("{}-m{}", self.id, self.next_msg);
        self.out.push(json!({
            "type": "send",
            "conversation_id": conv_id,
            "text": format!("re: {seq} #{tag} t={}", now_nanos()),
            "attachments": [],
            "client_msg_id": client_msg_id,
            "ref": client_msg_id,
        }));
    }
}

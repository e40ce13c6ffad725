//! Simulated agents: created over the admin API (or made up, against the
//! baseline relay), then one desktop WebSocket each that goes `available`,
//! accepts every offer of this run after `--accept-delay`, answers every
//! customer message after `--reply-delay` with `re: <seq> #<n> t=<intended
//! nanos>`, ends the conversation when the customer says `bye`, and completes
//! the task after `--handle-time` with a disposition from `--disposition`.
//! Offers for customers of another run are rejected.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use crate::net::{self, Failure, Ws};
use crate::report::{
    instant_at, now_nanos, send_stamp, stamp_of, tag_of, Counters, Gauge, Lat, Stats,
};
use crate::run::{Ctx, Kind};

/// How many agent-creation requests are in flight at once.
const CREATE_PARALLELISM: usize = 32;

/// `ref` of the `activity: available` command sent after `hello`.
const READY_REF: &str = "ready";

/// An agent created for this run.
#[derive(Debug, Clone)]
pub struct Creds {
    pub n: usize,
    pub id: String,
    pub token: String,
}

/// Creates the agents numbered `numbers` (`lt-agent-<run>-<n>`). Returns those
/// created and the failures.
pub async fn create_agents(ctx: &Ctx, numbers: &[usize]) -> (Vec<Creds>, Vec<Failure>) {
    let results: Vec<Result<Creds, Failure>> = stream::iter(numbers.iter().copied())
        .map(|n| create_one(ctx, n))
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
    created.sort_by_key(|c| c.n);
    (created, failed)
}

async fn create_one(ctx: &Ctx, n: usize) -> Result<Creds, Failure> {
    let id = format!("lt-agent-{}-{n}", ctx.run_id);
    if ctx.kind.is_relay() {
        // The relays have no admin API: they take any agent id and token.
        return Ok(Creds {
            n,
            id,
            token: format!("{}-{n}", ctx.kind.name()),
        });
    }
    let mut capacity = json!({ "webchat": ctx.plan.capacity });
    if ctx.plan.sms_capacity > 0 {
        capacity["sms"] = json!(ctx.plan.sms_capacity);
    }
    if ctx.plan.whatsapp_capacity > 0 {
        capacity["whatsapp"] = json!(ctx.plan.whatsapp_capacity);
    }
    let body = json!({
        "id": id,
        "name": format!("Load test agent {n}"),
        "capacity": capacity,
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
        n,
        id,
        token: token.to_string(),
    })
}

/// Deletes the run's agents; returns how many deletions failed.
pub async fn delete_agents(ctx: &Ctx, agents: &[Creds]) -> usize {
    if ctx.kind.is_relay() {
        return 0;
    }
    let results: Vec<Result<(), Failure>> = stream::iter(agents.iter())
        .map(|a| async move {
            let url = ctx.target.http(&format!("/v1/agents/{}", a.id));
            net::http_json(
                ctx.http(a.n),
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
    let mut agent = Agent::new(ctx.clone(), &creds, ready);
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
    let _conn = Gauge::up(&ctx.stats.c.connections);
    loop {
        let next_due = agent.later.peek().map(|Reverse((due, _, _))| *due);
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(instant_at(next_due.unwrap_or(0))), if next_due.is_some() => {
                agent.take_due();
            }
            ev = net::recv_json(&mut ws) => match ev {
                Ok(ev) => agent.handle(&ev),
                Err(f) => {
                    agent.fail(Failure::new(f.code, format!("agent {}: {}", agent.id, f.detail)));
                    return agent.convs.len();
                }
            }
        }
        if let Err(f) = agent.flush(&mut ws).await {
            agent.fail(f);
            return agent.convs.len();
        }
    }
    if ctx.kind == Kind::Switchboard {
        let _ = net::send_json(&mut ws, &json!({"type": "activity", "activity": "offline"})).await;
    }
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
    /// Provider channels: the histogram `send` → `delivered` goes to.
    delivery: Option<Lat>,
}

/// Something the agent does later: the command, and for an `accept` its task.
enum Later {
    Accept(String),
    Send(Value),
    /// A reply: the command without its text, the text before the stamp, and
    /// when it was meant to go.
    Reply(Value, String, u64),
}

struct Agent {
    ctx: Arc<Ctx>,
    id: String,
    rng: StdRng,
    /// Assigned conversations by conversation id.
    convs: HashMap<String, Conv>,
    /// Task id → when `accept` was sent (nanos).
    accept_sent: HashMap<String, u64>,
    /// SMS and WhatsApp: client_msg_id → intended send time (and the
    /// channel's delivery histogram), until the echo names the message.
    pending_status: HashMap<String, (u64, Lat)>,
    /// SMS and WhatsApp: message id → intended send time (and histogram),
    /// until `delivered` or `failed`.
    sent_by_id: HashMap<String, (u64, Lat)>,
    next_msg: u64,
    /// Customer names of this run start with this.
    customer_prefix: String,
    /// SMS customer numbers of this run start with this.
    sms_prefix: String,
    /// WhatsApp customer numbers (wa_id) of this run start with this.
    wa_prefix: String,
    ready: Option<oneshot::Sender<bool>>,
    /// Commands to send after the current event.
    out: Vec<Value>,
    /// Commands to send later: (due nanos, order, command).
    later: BinaryHeap<Reverse<(u64, u64, LaterBox)>>,
    later_seq: u64,
}

/// Orders [`Later`] entries by due time and insertion only.
struct LaterBox(Later);

impl PartialEq for LaterBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for LaterBox {}
impl PartialOrd for LaterBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for LaterBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Agent {
    fn new(ctx: Arc<Ctx>, creds: &Creds, ready: oneshot::Sender<bool>) -> Agent {
        Agent {
            id: creds.id.clone(),
            rng: StdRng::seed_from_u64(ctx.seed ^ 0xA6E7_0000_0000_0000 ^ creds.n as u64),
            convs: HashMap::new(),
            accept_sent: HashMap::new(),
            pending_status: HashMap::new(),
            sent_by_id: HashMap::new(),
            next_msg: 0,
            customer_prefix: crate::customer::name_prefix(&ctx.run_id),
            sms_prefix: crate::twilio::number_prefix(ctx.sms_tag),
            wa_prefix: crate::meta::number_prefix(ctx.sms_tag),
            ready: Some(ready),
            out: Vec::new(),
            later: BinaryHeap::new(),
            later_seq: 0,
            ctx,
        }
    }

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

    /// Sends `later` now when `delay` is zero, else schedules it.
    fn after(&mut self, delay: Duration, later: Later) {
        if delay.is_zero() {
            self.run_later(later);
        } else {
            self.later_seq += 1;
            let due = now_nanos() + delay.as_nanos() as u64;
            self.later
                .push(Reverse((due, self.later_seq, LaterBox(later))));
        }
    }

    fn take_due(&mut self) {
        let now = now_nanos();
        while let Some(Reverse((due, _, _))) = self.later.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, LaterBox(l)))) = self.later.pop() else {
                break;
            };
            self.run_later(l);
        }
    }

    fn run_later(&mut self, later: Later) {
        match later {
            Later::Accept(task_id) => {
                self.accept_sent.insert(task_id.clone(), now_nanos());
                Counters::inc(&self.ctx.stats.c.accepts_sent);
                self.out.push(json!({
                    "type": "accept",
                    "task_id": task_id,
                    "ref": format!("accept:{task_id}"),
                }));
            }
            Later::Send(cmd) => self.out.push(cmd),
            Later::Reply(mut cmd, text, intended) => {
                let stamp = send_stamp(intended);
                cmd["text"] = json!(format!("{text} t={stamp}"));
                if let Some(cmid) = cmd["client_msg_id"].as_str() {
                    if let Some(t) = self.pending_status.get_mut(cmid) {
                        t.0 = stamp;
                    }
                }
                self.out.push(cmd);
            }
        }
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
            "task.offered" => self.on_offered(ev),
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
            "message.status" => self.on_status(ev),
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
                let plan = &self.ctx.plan;
                let disposition = if plan.dispositions.len() > 1 {
                    plan.dispositions[self.rng.random_range(0..plan.dispositions.len())].clone()
                } else {
                    plan.dispositions
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "resolved".into())
                };
                let delay = plan.handle_time.sample(&mut self.rng);
                self.after(
                    delay,
                    Later::Send(json!({
                        "type": "complete",
                        "task_id": task_id,
                        "disposition": disposition,
                        "notes": "load test",
                        "ref": format!("complete:{task_id}"),
                    })),
                );
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
            // typing and anything newer carry nothing to act on.
            _ => {}
        }
    }

    fn on_offered(&mut self, ev: &Value) {
        let c = &self.ctx.stats.c;
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
        // A task from another run or client (left in the queue, say) would hold
        // capacity forever: reject it, and it is not offered here again.
        let ours = match task["channel"].as_str() {
            // The relays serve this run only and know no names.
            Some("webchat") => {
                self.ctx.kind.is_relay()
                    || task["customer"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(&self.customer_prefix)
            }
            Some("sms") => task["customer"]["address"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&self.sms_prefix),
            Some("whatsapp") => task["customer"]["address"]
                .as_str()
                .unwrap_or_default()
                .starts_with(&self.wa_prefix),
            _ => false,
        };
        if !ours {
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
        let delay = self.ctx.plan.accept_delay.sample(&mut self.rng);
        self.after(delay, Later::Accept(task_id.to_string()));
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
                delivery: match task["channel"].as_str() {
                    Some("sms") => Some(Lat::SendToDelivered),
                    Some("whatsapp") => Some(Lat::WhatsappSendToDelivered),
                    _ => None,
                },
            },
        );
        // Messages that arrived while the task waited come in the history.
        if let Some(history) = ev["history"].as_array() {
            for m in history {
                self.on_message(conv_id, m, false);
            }
        }
    }

    fn on_status(&mut self, ev: &Value) {
        let status = ev["status"].as_str().unwrap_or("(none)");
        self.ctx.stats.status(status);
        let Some(id) = ev["message_id"].as_str() else {
            return;
        };
        match status {
            "delivered" => {
                if let Some((sent, lat)) = self.sent_by_id.remove(id) {
                    Counters::dec(&self.ctx.stats.c.awaiting_delivery);
                    self.ctx.stats.record_since(lat, sent);
                }
            }
            "failed" => {
                if self.sent_by_id.remove(id).is_some() {
                    Counters::dec(&self.ctx.stats.c.awaiting_delivery);
                }
                self.ctx.stats.error(&Failure::new(
                    "delivery_failed",
                    format!(
                        "agent {}: message {id}: {}",
                        self.id,
                        ev["error"].as_str().unwrap_or("(no reason)")
                    ),
                ));
            }
            _ => {}
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
        let delivery = conv.delivery;
        if m["from"].as_str() == Some("agent") {
            // The echo of our own send names the message that statuses refer to.
            if let (Some(_), Some(cmid), Some(id)) =
                (delivery, m["client_msg_id"].as_str(), m["id"].as_str())
            {
                if let Some(sent) = self.pending_status.remove(cmid) {
                    self.sent_by_id.insert(id.to_string(), sent);
                }
            }
            return;
        }
        if m["from"].as_str() != Some("customer") {
            return;
        }
        // Every customer message counts; only those received live are timed
        // (see report::MESSAGES_NOTE).
        Counters::inc(&c.customer_to_agent);
        let text = m["text"].as_str().unwrap_or_default();
        if text == "bye" {
            Counters::inc(&c.customer_to_agent_closing);
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
        if !live {
            Counters::inc(&c.customer_to_agent_with_assignment);
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
                Counters::inc(&c.customer_to_agent_timed);
            }
        }
        self.next_msg += 1;
        let client_msg_id = format!("{}-m{}", self.id, self.next_msg);
        let delay = self.ctx.plan.reply_delay.sample(&mut self.rng);
        // Stamped with the intended send time: a late send counts against the run.
        let intended = now_nanos() + delay.as_nanos() as u64;
        if let Some(lat) = delivery.filter(|_| self.ctx.plan.track_delivery) {
            self.pending_status
                .insert(client_msg_id.clone(), (intended, lat));
            Counters::inc(&c.awaiting_delivery);
        }
        self.after(
            delay,
            Later::Reply(
                json!({
                    "type": "send",
                    "conversation_id": conv_id,
                    "attachments": [],
                    "client_msg_id": client_msg_id,
                    "ref": client_msg_id,
                }),
                format!("re: {seq} #{tag}"),
                intended,
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{human, measurements_json};

    /// A customer message event as the broker sends it.
    fn message(seq: u64, text: &str) -> Value {
        json!({"seq": seq, "from": "customer", "text": text, "id": format!("m{seq}")})
    }

    #[test]
    fn message_counts_reconcile_with_the_histograms() {
        // 3 conversations x 4 messages: the first of each comes with the
        // assignment, #2..#4 live, then "bye"; the agent answers each #n.
        let ctx = Arc::new(Ctx::for_test(4));
        let creds = Creds {
            n: 0,
            id: "lt-agent-t1-0".into(),
            token: String::new(),
        };
        let (tx, _rx) = oneshot::channel();
        let mut agent = Agent::new(ctx.clone(), &creds, tx);
        let (convs, messages) = (3u64, 4u64);
        for c in 0..convs {
            let conv = format!("conv-{c}");
            let first = message(1, &format!("lt #1 t={}", now_nanos()));
            agent.handle(&json!({
                "type": "task.assigned",
                "task": {"id": format!("task-{c}"), "conversation_id": conv, "channel": "webchat",
                         "preview": first["text"]},
                "history": [first],
            }));
            // The agent's replies are echoed to it and take a seq each.
            let mut seq = 2;
            for n in 2..=messages {
                agent.handle(&json!({"type": "message", "conversation_id": conv,
                    "message": {"seq": seq, "from": "agent", "text": "re"}}));
                seq += 1;
                agent.handle(&json!({"type": "message", "conversation_id": conv,
                    "message": message(seq, &format!("lt #{n} t={}", now_nanos()))}));
                seq += 1;
            }
            agent.handle(&json!({"type": "message", "conversation_id": conv,
                "message": {"seq": seq, "from": "agent", "text": "re"}}));
            agent.handle(&json!({"type": "message", "conversation_id": conv,
                "message": message(seq + 1, "bye")}));
        }
        // The customers' side: every reply received and timed.
        for _ in 0..convs * messages {
            ctx.stats.record_since(Lat::AgentToCustomer, now_nanos());
            Counters::inc(&ctx.stats.c.agent_to_customer);
        }
        assert_eq!(ctx.stats.error_count(), 0);
        let r = measurements_json(&ctx.stats.snapshot(1.0, 0), convs);
        let m = &r["messages"];
        let lat = &r["latency_ms"];
        // Sent: messages + bye per conversation one way, messages the other.
        assert_eq!(m["customer_to_agent"], convs * (messages + 1));
        assert_eq!(m["agent_to_customer"], convs * messages);
        // Timed: #2..#n one way, every reply the other; the histograms agree.
        assert_eq!(m["timed"]["customer_to_agent"], convs * (messages - 1));
        assert_eq!(
            lat["customer_to_agent"]["count"],
            m["timed"]["customer_to_agent"]
        );
        assert_eq!(
            lat["agent_to_customer"]["count"],
            m["timed"]["agent_to_customer"]
        );
        assert_eq!(lat["message"]["count"], m["timed"]["total"]);
        assert_eq!(lat["first_message_to_assigned"]["count"], convs);
        // And what is left out adds up to the difference.
        let u = &m["untimed"];
        assert_eq!(u["customer_to_agent_with_assignment"], convs);
        assert_eq!(u["customer_to_agent_closing"], convs);
        assert_eq!(u["customer_to_agent_other"], 0);
        assert_eq!(u["agent_to_customer"], 0);
        let sum = |v: &Value| {
            v.as_object()
                .unwrap()
                .values()
                .map(|x| x.as_u64().unwrap())
                .sum::<u64>()
        };
        assert_eq!(
            m["timed"]["total"].as_u64().unwrap() + sum(u),
            m["total"].as_u64().unwrap()
        );
        assert!(m["note"]
            .as_str()
            .unwrap()
            .contains("first_message_to_assigned"));
        let text = human(&r);
        assert!(
            text.contains("timed in the latency histograms: 9 customer->agent + 12 agent->customer = 21; not timed: 3 first messages"),
            "{text}"
        );
        assert!(text.contains("3 closing \"bye\""), "{text}");
        // The agent ended each conversation on its bye.
        assert_eq!(Counters::get(&ctx.stats.c.ends_sent), convs);
    }
}

//! Acceptance test of the core broker under concurrency: hundreds of agents and
//! thousands of webchat conversations through the whole life cycle over real
//! sockets, plus a smaller test of offer timeouts racing with accepts.
//!
//! Self-contained: a lean WebSocket client (no per-frame bookkeeping) so that
//! thousands of sockets stay cheap, and shared progress counters so that a
//! timeout says how far the run got.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::Config;
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Whole-run bound of the big test.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Parallel connection set-ups (HTTP session + WebSocket handshake).
const CONNECT_PARALLELISM: usize = 200;

// ---------------------------------------------------------------------------
// Shared progress and failure reporting
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Progress {
    agents_ready: AtomicUsize,
    customers_connected: AtomicUsize,
    customer_msgs_acked: AtomicUsize,
    agent_replies_sent: AtomicUsize,
    customers_done: AtomicUsize,
    offers: AtomicUsize,
    rescinds: AtomicUsize,
    tasks_assigned: AtomicUsize,
    tasks_completed: AtomicUsize,
    agent_polls: AtomicUsize,
    /// Longest queue seen by the poller.
    max_queue: AtomicUsize,
    /// task id → agent ids that got `task.assigned` for it.
    assignments: Mutex<HashMap<String, Vec<String>>>,
    /// Anything that went wrong in a spawned task; the test fails on the first.
    errors: Mutex<Vec<String>>,
}

impl Progress {
    fn fail(&self, msg: String) {
        let mut e = self.errors.lock().unwrap();
        if e.len() < 50 {
            e.push(msg);
        }
    }

    fn has_errors(&self) -> bool {
        !self.errors.lock().unwrap().is_empty()
    }

    fn snapshot(&self) -> String {
        let c = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        format!(
            "agents ready {}, customers connected {}, customer messages acked {}, \
             agent replies sent {}, offers {}, rescinds {}, tasks assigned {}, \
             tasks completed {}, customers done {}, agent-list polls {}, max queue seen {}",
            c(&self.agents_ready),
            c(&self.customers_connected),
            c(&self.customer_msgs_acked),
            c(&self.agent_replies_sent),
            c(&self.offers),
            c(&self.rescinds),
            c(&self.tasks_assigned),
            c(&self.tasks_completed),
            c(&self.customers_done),
            c(&self.agent_polls),
            c(&self.max_queue),
        )
    }

    fn errors_text(&self) -> String {
        self.errors.lock().unwrap().join("\n  ")
    }
}

/// Runs `body` under `limit`; fails fast on the first error a spawned task
/// reports, and on timeout says how far the run got.
async fn bounded<T>(
    what: &str,
    limit: Duration,
    progress: &Arc<Progress>,
    body: impl std::future::Future<Output = T>,
) -> T {
    let watch_errors = async {
        loop {
            if progress.has_errors() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout(limit, body) => match r {
            Ok(v) => v,
            Err(_) => panic!(
                "{what}: timed out after {limit:?}; progress: {}; errors: [{}]",
                progress.snapshot(),
                progress.errors_text()
            ),
        },
        _ = watch_errors => panic!(
            "{what}: failed; progress: {}; errors:\n  {}",
            progress.snapshot(),
            progress.errors_text()
        ),
    }
}

// ---------------------------------------------------------------------------
// Lean WebSocket + HTTP helpers
// ---------------------------------------------------------------------------

async fn ws_connect(url: &str) -> Result<Ws, String> {
    match tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Err(_) => Err(format!("connect {url}: timed out")),
        Ok(Err(e)) => Err(format!("connect {url}: {e}")),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

async fn ws_send(ws: &mut Ws, v: Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string()))
        .await
        .map_err(|e| format!("ws send {v}: {e}"))
}

/// Next JSON text frame; Err when the socket closes or fails.
async fn ws_recv(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            None => return Err("socket ended".into()),
            Some(Err(e)) => return Err(format!("socket error: {e}")),
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| format!("non-JSON frame {t:?}: {e}"))
            }
            Some(Ok(Message::Close(f))) => return Err(format!("socket closed: {f:?}")),
            Some(Ok(Message::Binary(_))) => return Err("unexpected binary frame".into()),
            Some(Ok(_)) => {} // ping / pong
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

struct Srv {
    base: String,
    ws: String,
    admin: String,
    http: reqwest::Client,
    _srv: switchboard::server::RunningServer,
}

impl Srv {
    fn start(cfg: Config) -> Arc<Srv> {
        let srv = switchboard::server::spawn(cfg).expect("server starts");
        Arc::new(Srv {
            base: srv.base_url(),
            ws: srv.ws_url(),
            admin: srv.admin_token.clone(),
            http: http_client(),
            _srv: srv,
        })
    }

    async fn admin_get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = r.status();
        let text = r.text().await.map_err(|e| format!("GET {path}: {e}"))?;
        if status != 200 {
            return Err(format!("GET {path}: {status} {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}: {text}"))
    }

    async fn create_agent(&self, id: &str, webchat: u32) -> String {
        let r = self
            .http
            .post(format!("{}/v1/agents", self.base))
            .bearer_auth(&self.admin)
            .json(&json!({
                "id": id,
                "name": format!("Agent {id}"),
                "capacity": {"webchat": webchat, "sms": 0, "whatsapp": 0, "messenger": 0},
                "skills": [],
            }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("create agent {id}: {e}"));
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "create agent {id}: {body}");
        body["token"].as_str().expect("agent token").to_string()
    }

    async fn create_session(&self, name: &str) -> Result<String, String> {
        let r = self
            .http
            .post(format!("{}/v1/webchat/sessions", self.base))
            .json(&json!({ "name": name }))
            .send()
            .await
            .map_err(|e| format!("create session {name}: {e}"))?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != 201 {
            return Err(format!("create session {name}: {status} {body}"));
        }
        body["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("create session {name}: no token in {body}"))
    }
}

fn text_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------
// Agent desktop
// ---------------------------------------------------------------------------

#[derive(Default, Debug)]
struct AgentConv {
    task_id: String,
    /// Customer messages seen (history + live), as (seq, message id, text).
    customer_msgs: Vec<(u64, String, String)>,
    /// Every seq seen in this conversation on the desktop, in arrival order.
    seqs: Vec<u64>,
    replies: usize,
    ended: bool,
    completed: bool,
}

#[derive(Default, Debug)]
struct AgentReport {
    id: String,
    responsive: bool,
    max_load: usize,
    /// Every task id offered, in order.
    offers: Vec<String>,
    /// (task id, reason) of every rescind.
    rescinds: Vec<(String, String)>,
    /// conversation id → what this desktop saw of it.
    convs: HashMap<String, AgentConv>,
    completed: usize,
}

struct AgentSpec {
    id: String,
    token: String,
    capacity: usize,
    /// false: never answers offers (lets them time out).
    responsive: bool,
    /// Replies per conversation before `end`.
    replies: usize,
}

async fn run_agent(
    srv: Arc<Srv>,
    spec: AgentSpec,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> AgentReport {
    let mut rep = AgentReport {
        id: spec.id.clone(),
        responsive: spec.responsive,
        ..AgentReport::default()
    };
    let id = spec.id.as_str();
    let fail = |m: String| progress.fail(format!("agent {id}: {m}"));
    let url = format!("{}/v1/agents/{id}/ws?token={}", srv.ws, spec.token);
    let mut ws = match ws_connect(&url).await {
        Ok(ws) => ws,
        Err(e) => {
            fail(e);
            return rep;
        }
    };
    match ws_recv(&mut ws).await {
        Ok(v) if v["type"] == "hello" => {}
        other => {
            fail(format!("first frame is not hello: {other:?}"));
            return rep;
        }
    }
    let act_ref = format!("act-{id}");
    if let Err(e) = ws_send(
        &mut ws,
        json!({"type": "activity", "activity": "available", "ref": act_ref}),
    )
    .await
    {
        fail(e);
        return rep;
    }

    // Tasks offered and not yet assigned / rescinded.
    let mut offered: HashSet<String> = HashSet::new();
    // Tasks assigned (or wrapping) and not yet completed / rescinded.
    let mut held: HashMap<String, String> = HashMap::new(); // task → conversation
    let mut rescinded: HashSet<String> = HashSet::new();
    let mut ready = false;

    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            f = ws_recv(&mut ws) => f,
        };
        let v = match frame {
            Ok(v) => v,
            Err(e) => {
                fail(e);
                break;
            }
        };
        let ty = v["type"].as_str().unwrap_or_default();
        match ty {
            "ok" if v["ref"] == act_ref.as_str() && !ready => {
                ready = true;
                progress.agents_ready.fetch_add(1, Ordering::Relaxed);
            }
            "ok" | "typing" => {}
            "task.offered" => {
                let tid = text_of(&v["task"]["id"]);
                progress.offers.fetch_add(1, Ordering::Relaxed);
                if rep.offers.contains(&tid) {
                    fail(format!("task {tid} offered to me twice: {v}"));
                }
                rep.offers.push(tid.clone());
                offered.insert(tid.clone());
                let load = offered.len() + held.len();
                rep.max_load = rep.max_load.max(load);
                if load > spec.capacity {
                    fail(format!(
                        "over capacity: {load} tasks (offered {offered:?}, held {:?}) > {}",
                        held.keys().collect::<Vec<_>>(),
                        spec.capacity
                    ));
                }
                if spec.responsive {
                    let accept =
                        json!({"type": "accept", "task_id": tid, "ref": format!("acc-{tid}")});
                    if let Err(e) = ws_send(&mut ws, accept).await {
                        fail(e);
                        break;
                    }
                }
            }
            "task.assigned" => {
                let tid = text_of(&v["task"]["id"]);
                let cid = text_of(&v["task"]["conversation_id"]);
                progress.tasks_assigned.fetch_add(1, Ordering::Relaxed);
                {
                    let mut a = progress.assignments.lock().unwrap();
                    let who = a.entry(tid.clone()).or_default();
                    who.push(id.to_string());
                    if who.len() > 1 {
                        fail(format!("task {tid} assigned more than once: to {who:?}"));
                    }
                }
                if !spec.responsive {
                    fail(format!("unresponsive agent got task.assigned: {v}"));
                }
                if !offered.remove(&tid) {
                    fail(format!("task.assigned without a pending offer: {v}"));
                }
                if held.insert(tid.clone(), cid.clone()).is_some() {
                    fail(format!("task {tid} assigned twice to me"));
                }
                if rep.convs.contains_key(&cid) {
                    fail(format!("conversation {cid} assigned to me twice"));
                }
                let conv = rep.convs.entry(cid.clone()).or_default();
                conv.task_id = tid.clone();
                let history = v["history"].as_array().cloned().unwrap_or_default();
                let mut to_answer = Vec::new();
                for m in &history {
                    let seq = m["seq"].as_u64().unwrap_or(0);
                    if seq != conv.seqs.len() as u64 + 1 {
                        fail(format!("history of {cid} not gap-free: {v}"));
                    }
                    conv.seqs.push(seq);
                    if m["from"] == "customer" {
                        to_answer.push(m.clone());
                    }
                }
                for m in to_answer {
                    if let Err(e) = on_customer_message(
                        &mut ws,
                        &mut rep,
                        &cid,
                        &m,
                        spec.replies,
                        &progress,
                        id,
                    )
                    .await
                    {
                        fail(e);
                    }
                }
            }
            "message" => {
                let cid = text_of(&v["conversation_id"]);
                let m = &v["message"];
                let seq = m["seq"].as_u64().unwrap_or(0);
                let Some(conv) = rep.convs.get_mut(&cid) else {
                    fail(format!("message for a conversation I do not hold: {v}"));
                    continue;
                };
                if seq != conv.seqs.len() as u64 + 1 {
                    fail(format!(
                        "conversation {cid}: seq {seq} after {:?} (out of order, gap or duplicate): {v}",
                        conv.seqs
                    ));
                }
                conv.seqs.push(seq);
                match m["from"].as_str() {
                    Some("customer") => {
                        let m = m.clone();
                        if let Err(e) = on_customer_message(
                            &mut ws,
                            &mut rep,
                            &cid,
                            &m,
                            spec.replies,
                            &progress,
                            id,
                        )
                        .await
                        {
                            fail(e);
                        }
                    }
                    Some("agent") => {
                        let want = format!("{cid}-a");
                        let cmid = m["client_msg_id"].as_str().unwrap_or_default();
                        if !cmid.starts_with(&want) || m["agent_id"] != id {
                            fail(format!("echo without my client_msg_id/agent_id: {v}"));
                        }
                    }
                    _ => fail(format!("unexpected message author: {v}")),
                }
            }
            "conversation.ended" => {
                let cid = text_of(&v["conversation_id"]);
                let tid = text_of(&v["task_id"]);
                match rep.convs.get_mut(&cid) {
                    Some(c) if c.task_id == tid && !c.ended => c.ended = true,
                    _ => fail(format!("unexpected conversation.ended: {v}")),
                }
                let cmd = json!({
                    "type": "complete",
                    "task_id": tid,
                    "disposition": "resolved",
                    "notes": format!("handled by {id}"),
                    "ref": format!("cmp-{tid}"),
                });
                if let Err(e) = ws_send(&mut ws, cmd).await {
                    fail(e);
                    break;
                }
            }
            "task.completed" => {
                let tid = text_of(&v["task_id"]);
                match held.remove(&tid) {
                    Some(cid) => {
                        if let Some(c) = rep.convs.get_mut(&cid) {
                            if !c.ended || c.completed {
                                fail(format!("task.completed out of order: {v}"));
                            }
                            c.completed = true;
                        }
                    }
                    None => fail(format!("task.completed for a task I do not hold: {v}")),
                }
                if v["disposition"] != "resolved" {
                    fail(format!("completed with another disposition: {v}"));
                }
                rep.completed += 1;
                progress.tasks_completed.fetch_add(1, Ordering::Relaxed);
            }
            "task.rescinded" => {
                let tid = text_of(&v["task_id"]);
                progress.rescinds.fetch_add(1, Ordering::Relaxed);
                let was_offer = offered.remove(&tid);
                let was_held = held.remove(&tid).is_some();
                if !was_offer && !was_held {
                    fail(format!("task.rescinded for a task I do not hold: {v}"));
                }
                rescinded.insert(tid.clone());
                rep.rescinds.push((tid, text_of(&v["reason"])));
            }
            "error" => {
                // A late accept racing the offer timeout is expected to fail.
                let r = v["ref"].as_str().unwrap_or_default();
                let late_accept = r
                    .strip_prefix("acc-")
                    .is_some_and(|t| rescinded.contains(t));
                if !late_accept {
                    fail(format!("error frame: {v}"));
                }
            }
            "hello" => fail(format!("second hello: {v}")),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    rep
}

/// The agent's reaction to a customer message: reply `a<k>`; after the last
/// reply, end the conversation.
async fn on_customer_message(
    ws: &mut Ws,
    rep: &mut AgentReport,
    cid: &str,
    m: &Value,
    replies: usize,
    progress: &Progress,
    agent_id: &str,
) -> Result<(), String> {
    let conv = rep
        .convs
        .get_mut(cid)
        .ok_or_else(|| format!("customer message for unknown conversation {cid}"))?;
    let mid = text_of(&m["id"]);
    if conv.customer_msgs.iter().any(|(_, id, _)| *id == mid) {
        return Err(format!("customer message delivered twice: {m}"));
    }
    conv.customer_msgs
        .push((m["seq"].as_u64().unwrap_or(0), mid, text_of(&m["text"])));
    if conv.replies >= replies {
        return Err(format!(
            "conversation {cid}: customer message after my last reply: {m}"
        ));
    }
    conv.replies += 1;
    let k = conv.replies;
    ws_send(
        ws,
        json!({
            "type": "send",
            "conversation_id": cid,
            "text": format!("a{k}"),
            "client_msg_id": format!("{cid}-a{k}"),
            "ref": format!("snd-{agent_id}-{cid}-{k}"),
        }),
    )
    .await?;
    progress.agent_replies_sent.fetch_add(1, Ordering::Relaxed);
    if k == replies {
        ws_send(
            ws,
            json!({"type": "end", "conversation_id": cid, "ref": format!("end-{cid}")}),
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Webchat customer
// ---------------------------------------------------------------------------

#[derive(Default, Debug)]
struct CustomerReport {
    name: String,
    conversation_id: String,
    /// (seq, from, text) of every `message` event, in arrival order.
    messages: Vec<(u64, String, String)>,
    acks: Vec<u64>,
    agent_joined: Vec<String>,
    ended: bool,
}

/// One customer: session, socket, then (once `go` is set) `n` messages in a
/// closed loop (each after the agent's answer to the previous one), then waits
/// for the end.
async fn run_customer(
    srv: Arc<Srv>,
    idx: usize,
    n: usize,
    progress: Arc<Progress>,
    connect_slots: Arc<Semaphore>,
    mut go: watch::Receiver<bool>,
) -> CustomerReport {
    let name = format!("Customer {idx}");
    let mut rep = CustomerReport {
        name: name.clone(),
        ..CustomerReport::default()
    };
    let fail = |m: String| progress.fail(format!("customer {idx}: {m}"));

    let permit = connect_slots.acquire().await.expect("semaphore");
    let token = match srv.create_session(&name).await {
        Ok(t) => t,
        Err(e) => {
            fail(e);
            return rep;
        }
    };
    let mut ws = match ws_connect(&format!("{}/v1/webchat/ws?token={token}", srv.ws)).await {
        Ok(ws) => ws,
        Err(e) => {
            fail(e);
            return rep;
        }
    };
    match ws_recv(&mut ws).await {
        Ok(v) if v["type"] == "history" && v["messages"] == json!([]) => {}
        other => {
            fail(format!("first frame is not an empty history: {other:?}"));
            return rep;
        }
    }
    drop(permit);
    progress.customers_connected.fetch_add(1, Ordering::Relaxed);
    // Everyone writes at once: more conversations than agent slots.
    if go.wait_for(|g| *g).await.is_err() {
        fail("start signal dropped".into());
        return rep;
    }

    for k in 1..=n {
        let cmid = format!("c{k}");
        let sent = json!({"type": "message", "text": cmid, "client_msg_id": cmid, "ref": format!("say-{k}")});
        if let Err(e) = ws_send(&mut ws, sent).await {
            fail(e);
            return rep;
        }
        // Read until the agent's answer `a<k>`.
        loop {
            let v = match ws_recv(&mut ws).await {
                Ok(v) => v,
                Err(e) => {
                    fail(format!(
                        "{e} while waiting for a{k}; got {:?}",
                        rep.messages
                    ));
                    return rep;
                }
            };
            if let Err(e) = on_customer_frame(&mut rep, &v, &progress) {
                fail(e);
                return rep;
            }
            if v["type"] == "conversation.ended" {
                fail(format!(
                    "conversation ended before a{k}: {:?}",
                    rep.messages
                ));
                return rep;
            }
            let m = &v["message"];
            if v["type"] == "message" && m["from"] == "agent" && m["text"] == format!("a{k}") {
                break;
            }
        }
    }
    loop {
        let v = match ws_recv(&mut ws).await {
            Ok(v) => v,
            Err(e) => {
                fail(format!("{e} while waiting for conversation.ended"));
                return rep;
            }
        };
        if let Err(e) = on_customer_frame(&mut rep, &v, &progress) {
            fail(e);
            return rep;
        }
        if v["type"] == "conversation.ended" {
            break;
        }
    }
    progress.customers_done.fetch_add(1, Ordering::Relaxed);
    let _ = ws.close(None).await;
    rep
}

fn on_customer_frame(
    rep: &mut CustomerReport,
    v: &Value,
    progress: &Progress,
) -> Result<(), String> {
    let cid = text_of(&v["conversation_id"]);
    if !cid.is_empty() {
        if rep.conversation_id.is_empty() {
            rep.conversation_id = cid.clone();
        } else if rep.conversation_id != cid {
            return Err(format!(
                "frame for another conversation (mine is {}): {v}",
                rep.conversation_id
            ));
        }
    }
    match v["type"].as_str().unwrap_or_default() {
        "ack" => {
            let seq = v["seq"].as_u64().unwrap_or(0);
            let want = format!("c{}", rep.acks.len() + 1);
            if v["client_msg_id"] != want.as_str() {
                return Err(format!("ack out of order (expected {want}): {v}"));
            }
            rep.acks.push(seq);
            progress.customer_msgs_acked.fetch_add(1, Ordering::Relaxed);
        }
        "message" => {
            let m = &v["message"];
            let seq = m["seq"].as_u64().unwrap_or(0);
            if seq != rep.messages.len() as u64 + 1 {
                return Err(format!(
                    "seq {seq} after {:?} (gap, duplicate or out of order): {v}",
                    rep.messages
                ));
            }
            rep.messages
                .push((seq, text_of(&m["from"]), text_of(&m["text"])));
        }
        "agent.joined" => rep.agent_joined.push(text_of(&v["agent"]["name"])),
        "conversation.ended" => {
            if rep.ended {
                return Err(format!("conversation.ended twice: {v}"));
            }
            rep.ended = true;
        }
        "typing" => {}
        "error" => return Err(format!("error frame: {v}")),
        _ => return Err(format!("unexpected frame: {v}")),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Checks shared by both tests
// ---------------------------------------------------------------------------

/// The customer's own view: seq 1..2n gap-free, c1,a1,c2,a2,…, one agent,
/// acked with the right seqs, ended.
fn check_customer(rep: &CustomerReport, n: usize) {
    let want: Vec<(u64, String, String)> = (1..=n)
        .flat_map(|k| {
            [
                ((2 * k - 1) as u64, "customer".to_string(), format!("c{k}")),
                ((2 * k) as u64, "agent".to_string(), format!("a{k}")),
            ]
        })
        .collect();
    assert_eq!(rep.messages, want, "{}: messages seen", rep.name);
    let want_acks: Vec<u64> = (1..=n).map(|k| (2 * k - 1) as u64).collect();
    assert_eq!(rep.acks, want_acks, "{}: ack seqs", rep.name);
    assert_eq!(
        rep.agent_joined.len(),
        1,
        "{}: exactly one agent.joined, got {:?}",
        rep.name,
        rep.agent_joined
    );
    assert!(rep.ended, "{}: conversation.ended", rep.name);
}

/// Cross-checks agents against customers: every conversation handled by
/// exactly one agent, which saw each customer message exactly once, all seqs
/// in order, and completed it.
fn check_agents(agents: &[AgentReport], customers: &[CustomerReport], n: usize, max_cap: usize) {
    let mut owner: HashMap<&str, &str> = HashMap::new();
    let mut task_owner: HashMap<&str, &str> = HashMap::new();
    for a in agents {
        assert!(
            a.max_load <= max_cap,
            "agent {} reached load {} > {max_cap}",
            a.id,
            a.max_load
        );
        for (cid, c) in &a.convs {
            if let Some(other) = owner.insert(cid, &a.id) {
                panic!("conversation {cid} held by {other} and {}", a.id);
            }
            if let Some(other) = task_owner.insert(&c.task_id, &a.id) {
                panic!("task {} assigned to {other} and {}", c.task_id, a.id);
            }
            let texts: Vec<&str> = c.customer_msgs.iter().map(|m| m.2.as_str()).collect();
            let want: Vec<String> = (1..=n).map(|k| format!("c{k}")).collect();
            assert_eq!(
                texts, want,
                "agent {} conversation {cid}: customer messages seen",
                a.id
            );
            let seqs: Vec<u64> = c.customer_msgs.iter().map(|m| m.0).collect();
            let want_seqs: Vec<u64> = (1..=n).map(|k| (2 * k - 1) as u64).collect();
            assert_eq!(seqs, want_seqs, "agent {} conversation {cid}", a.id);
            let all: Vec<u64> = (1..=2 * n as u64).collect();
            assert_eq!(c.seqs, all, "agent {} conversation {cid}: seqs", a.id);
            assert_eq!(c.replies, n, "agent {} conversation {cid}", a.id);
            assert!(
                c.ended && c.completed,
                "agent {} conversation {cid}: ended/completed",
                a.id
            );
        }
    }
    for c in customers {
        assert!(
            owner.contains_key(c.conversation_id.as_str()),
            "{}: conversation {} never reached an agent",
            c.name,
            c.conversation_id
        );
    }
    assert_eq!(
        owner.len(),
        customers.len(),
        "agents held conversations no customer knows about"
    );
}

/// `GET /v1/stats` until the broker has settled, then the exact figures.
async fn check_stats(srv: &Srv, conversations: u64, n: u64) -> Value {
    let want = |s: &Value| {
        s["tasks"]["completed"] == conversations
            && s["tasks"]["queued"] == 0
            && s["tasks"]["reserved"] == 0
            && s["tasks"]["assigned"] == 0
            && s["tasks"]["wrapping"] == 0
            && s["tasks"]["canceled"] == 0
            && s["messages"]["in"] == conversations * n
            && s["messages"]["out"] == conversations * n
            && s["queue"]["length"] == 0
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = srv.admin_get("/v1/stats").await.expect("stats");
        if want(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "stats never settled: want tasks.completed={conversations}, queued/reserved/\
             assigned/wrapping/canceled=0, messages in/out={}, queue.length=0; got {s}",
            conversations * n
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /v1/agents` until stopped: no agent's load over its capacity.
/// Also samples the queue length from `GET /v1/stats`.
async fn poll_agents(srv: Arc<Srv>, progress: Arc<Progress>, mut stop: watch::Receiver<bool>) {
    loop {
        match srv.admin_get("/v1/agents").await {
            Ok(Value::Array(list)) => {
                for a in &list {
                    let load = a["load"]["webchat"].as_u64();
                    let cap = a["capacity"]["webchat"].as_u64();
                    match (load, cap) {
                        (Some(l), Some(c)) if l <= c => {}
                        _ => progress.fail(format!("GET /v1/agents: load over capacity: {a}")),
                    }
                }
                progress.agent_polls.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => progress.fail(format!("GET /v1/agents: not a list: {other}")),
            Err(e) => progress.fail(e),
        }
        match srv.admin_get("/v1/stats").await {
            Ok(s) => {
                let q = s["queue"]["length"].as_u64().unwrap_or(0) as usize;
                progress.max_queue.fetch_max(q, Ordering::Relaxed);
            }
            Err(e) => progress.fail(e),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Waits until `done`; on an error it waits forever and `bounded` reports it.
async fn wait_for(progress: &Progress, done: impl Fn() -> bool) {
    while !done() {
        if progress.has_errors() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// 200 agents (webchat capacity 5) and 2,000 webchat customers, 5 messages
/// each way per conversation, all at once over real sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_conversations_through_two_hundred_agents() {
    const AGENTS: usize = 200;
    const CAPACITY: usize = 5;
    const CUSTOMERS: usize = 2000;
    const MESSAGES: usize = 5;

    let started = Instant::now();
    let srv = Srv::start(Config::for_tests());
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let (agents, customers) = bounded("concurrency run", RUN_TIMEOUT, &progress, async {
        // Agents by HTTP, a few at a time.
        let tokens: Vec<(String, String)> = futures_util::stream::iter(0..AGENTS)
            .map(|i| {
                let srv = srv.clone();
                async move {
                    let id = format!("agent-{i:03}");
                    let token = srv.create_agent(&id, CAPACITY as u32).await;
                    (id, token)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;

        let agent_tasks: Vec<_> = tokens
            .into_iter()
            .map(|(id, token)| {
                let spec = AgentSpec {
                    id,
                    token,
                    capacity: CAPACITY,
                    responsive: true,
                    replies: MESSAGES,
                };
                tokio::spawn(run_agent(
                    srv.clone(),
                    spec,
                    progress.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        wait_for(&progress, || {
            progress.agents_ready.load(Ordering::Relaxed) == AGENTS
        })
        .await;
        let poller = tokio::spawn(poll_agents(srv.clone(), progress.clone(), stop_rx.clone()));

        let slots = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
        let (go_tx, go_rx) = watch::channel(false);
        let customer_tasks: Vec<_> = (0..CUSTOMERS)
            .map(|i| {
                tokio::spawn(run_customer(
                    srv.clone(),
                    i,
                    MESSAGES,
                    progress.clone(),
                    slots.clone(),
                    go_rx.clone(),
                ))
            })
            .collect();
        wait_for(&progress, || {
            progress.customers_connected.load(Ordering::Relaxed) == CUSTOMERS
        })
        .await;
        go_tx.send(true).expect("go");
        let mut customers = Vec::with_capacity(CUSTOMERS);
        for t in customer_tasks {
            customers.push(t.await.expect("customer task"));
        }
        wait_for(&progress, || {
            progress.tasks_completed.load(Ordering::Relaxed) == CUSTOMERS
        })
        .await;

        stop_tx.send(true).expect("stop");
        poller.await.expect("poller");
        let mut agents = Vec::with_capacity(AGENTS);
        for t in agent_tasks {
            agents.push(t.await.expect("agent task"));
        }
        (agents, customers)
    })
    .await;
    let elapsed = started.elapsed();
    assert!(!progress.has_errors(), "errors: {}", progress.errors_text());

    for c in &customers {
        check_customer(c, MESSAGES);
    }
    check_agents(&agents, &customers, MESSAGES, CAPACITY);
    let completed: usize = agents.iter().map(|a| a.completed).sum();
    assert_eq!(completed, CUSTOMERS, "task.completed across agents");
    let polls = progress.agent_polls.load(Ordering::Relaxed);
    assert!(polls > 0, "GET /v1/agents was never polled");
    let busiest = agents.iter().map(|a| a.max_load).max().unwrap_or(0);
    assert_eq!(
        busiest, CAPACITY,
        "with twice as many conversations as slots some agent should be full"
    );

    let max_queue = progress.max_queue.load(Ordering::Relaxed);
    assert!(
        max_queue > 0,
        "the queue was never seen non-empty: tasks did not have to wait"
    );
    let stats = check_stats(&srv, CUSTOMERS as u64, MESSAGES as u64).await;
    for c in customers.iter().step_by(97) {
        let v = srv
            .admin_get(&format!("/v1/conversations/{}", c.conversation_id))
            .await
            .expect("conversation");
        assert_eq!(v["disposition"], "resolved", "conversation {v}");
        assert_eq!(v["task"]["state"], "completed", "conversation {v}");
        assert_eq!(v["message_count"], 2 * MESSAGES, "conversation {v}");
    }

    println!(
        "concurrency: {CUSTOMERS} conversations via {AGENTS} agents, {} messages \
         ({} in / {} out), {} offers, max queue {max_queue}, {polls} agent-list polls, elapsed {:.1}s (routing p99 {} ms)",
        2 * CUSTOMERS * MESSAGES,
        stats["messages"]["in"],
        stats["messages"]["out"],
        progress.offers.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        stats["routing_latency_ms"]["p99"],
    );
}

/// 20 agents with capacity 1, half of which never answer offers (200 ms offer
/// timeout), 100 conversations: each is assigned exactly once, to a responsive
/// agent, and completed; no task is offered twice to the same agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_double_assignment_under_offer_timeouts() {
    const AGENTS: usize = 20;
    const CUSTOMERS: usize = 100;
    const MESSAGES: usize = 2;

    let started = Instant::now();
    let mut cfg = Config::for_tests();
    cfg.offer_timeout = Duration::from_millis(200);
    let srv = Srv::start(cfg);
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let (agents, customers) = bounded(
        "offer-timeout run",
        Duration::from_secs(60),
        &progress,
        async {
            let mut agent_tasks = Vec::new();
            for i in 0..AGENTS {
                let responsive = i % 2 == 0;
                let id = format!("{}-{i:02}", if responsive { "quick" } else { "silent" });
                let token = srv.create_agent(&id, 1).await;
                let spec = AgentSpec {
                    id,
                    token,
                    capacity: 1,
                    responsive,
                    replies: MESSAGES,
                };
                agent_tasks.push(tokio::spawn(run_agent(
                    srv.clone(),
                    spec,
                    progress.clone(),
                    stop_rx.clone(),
                )));
            }
            wait_for(&progress, || {
                progress.agents_ready.load(Ordering::Relaxed) == AGENTS
            })
            .await;
            let poller = tokio::spawn(poll_agents(srv.clone(), progress.clone(), stop_rx.clone()));

            let slots = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
            let (go_tx, go_rx) = watch::channel(false);
            let customer_tasks: Vec<_> = (0..CUSTOMERS)
                .map(|i| {
                    tokio::spawn(run_customer(
                        srv.clone(),
                        i,
                        MESSAGES,
                        progress.clone(),
                        slots.clone(),
                        go_rx.clone(),
                    ))
                })
                .collect();
            wait_for(&progress, || {
                progress.customers_connected.load(Ordering::Relaxed) == CUSTOMERS
            })
            .await;
            go_tx.send(true).expect("go");
            let mut customers = Vec::new();
            for t in customer_tasks {
                customers.push(t.await.expect("customer task"));
            }
            wait_for(&progress, || {
                progress.tasks_completed.load(Ordering::Relaxed) == CUSTOMERS
            })
            .await;
            stop_tx.send(true).expect("stop");
            poller.await.expect("poller");
            let mut agents = Vec::new();
            for t in agent_tasks {
                agents.push(t.await.expect("agent task"));
            }
            (agents, customers)
        },
    )
    .await;
    assert!(!progress.has_errors(), "errors: {}", progress.errors_text());

    for c in &customers {
        check_customer(c, MESSAGES);
    }
    check_agents(&agents, &customers, MESSAGES, 1);

    // Each task assigned exactly once, always to a responsive agent.
    let assignments = progress.assignments.lock().unwrap().clone();
    assert_eq!(assignments.len(), CUSTOMERS, "tasks assigned");
    for (tid, who) in &assignments {
        assert_eq!(who.len(), 1, "task {tid} assigned to {who:?}");
        assert!(
            who[0].starts_with("quick-"),
            "task {tid} assigned to {who:?}"
        );
    }
    let silent_offers: usize = agents
        .iter()
        .filter(|a| !a.responsive)
        .map(|a| a.offers.len())
        .sum();
    for a in agents.iter().filter(|a| !a.responsive) {
        assert!(a.convs.is_empty(), "silent agent {} got tasks", a.id);
        assert_eq!(
            a.rescinds.len(),
            a.offers.len(),
            "silent agent {}: every offer rescinded",
            a.id
        );
        for (tid, reason) in &a.rescinds {
            assert_eq!(reason, "timeout", "silent agent {} task {tid}", a.id);
        }
    }
    assert!(
        silent_offers > 0,
        "the silent agents were never offered anything: the test proves nothing"
    );
    let completed: usize = agents.iter().map(|a| a.completed).sum();
    assert_eq!(completed, CUSTOMERS, "task.completed across agents");

    check_stats(&srv, CUSTOMERS as u64, MESSAGES as u64).await;
    for c in &customers {
        let v = srv
            .admin_get(&format!("/v1/conversations/{}", c.conversation_id))
            .await
            .expect("conversation");
        assert_eq!(v["disposition"], "resolved", "conversation {v}");
        let agent = v["agent_id"].as_str().unwrap_or_default();
        assert!(agent.starts_with("quick-"), "conversation {v}");
    }
    println!(
        "offer timeouts: {CUSTOMERS} conversations, {} offers ({silent_offers} to silent agents, \
         all timed out), {} rescinds, elapsed {:.1}s",
        progress.offers.load(Ordering::Relaxed),
        progress.rescinds.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

//! `--workflow`: the conversation workflow under concurrency, at the issue's
//! size (300 agents, 3,000 webchat conversations by default), against a
//! running broker. Agents accept, reject and let offers run out (answering
//! some after they did), reply, transfer cold (to agents and queues) and
//! warm (some canceled), park (some until a time), end in the middle of
//! transfers, take breaks, drop their sockets and come back within their
//! disconnect grace or around its end (their tasks then withdrawn as they
//! return); a supervisor force-completes tasks, transfers them and sets
//! agents offline; customers keep writing,
//! leave, and drop their sockets for about their grace (a waiting task
//! canceled as they return). Then everything is wound down and checked, each
//! check a hard failure (exit code 1):
//!
//! - no agent ever got a frame (`message`, `typing`) of a conversation it
//!   did not hold;
//! - no agent was ever over capacity (sampled from `GET /v1/agents`);
//! - after a pause, the router (`GET /v1/tasks`) and every conversation
//!   (`GET /v1/conversations/{id}`) agree on the one holder of each
//!   assigned task;
//! - every task ends `completed` or `canceled`, all capacity given back;
//! - every customer message the broker acknowledged is in its
//!   conversation's history exactly once, at the acknowledged `seq`;
//! - the run did what it is about (transfers both kinds, parks, ends
//!   mid-transfer, disconnects, withdrawals after the grace, offers run
//!   out and answered late, breaks, customers leaving and coming back,
//!   outbound chats started and refused, force-completes all happened).
//!
//! `tests/transfers_concurrency.rs` runs this same code at a fifth of the
//! size in the debug test suite (the library target), `tests/durability.rs`
//! with `kill -9`s of the broker along the way ([`Options::fault`]) and
//! `tests/cluster_workflow.rs` through a cluster whose active node is
//! killed; `--workflow` runs it in release mode in CI's load smoke, with and
//! without kills. The broker it runs against needs short offers
//! and graces (`--offer-timeout 2s --reoffer-cooldown 300ms
//! --disconnect-grace 1s --customer-grace 1s`: [`GRACE`]) and no per-client
//! limits (`--client-limits false`), as `.ci/run` starts it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, Method};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Each agent's webchat capacity.
const CAPACITY: u64 = 3;
/// How long everyone acts once every customer is connected, at full size.
pub const CHAOS: Duration = Duration::from_secs(10);
/// How long the pause lets what is in flight land before the holder check:
/// longer than [`GRACE`], so a desk that left just before the pause has had
/// its tasks withdrawn by then.
const PAUSE: Duration = Duration::from_millis(1800);
/// The broker's `disconnect_grace` and `customer_grace`, as the run expects
/// them: desks and customers stay away around this long.
pub const GRACE: Duration = Duration::from_secs(1);
/// The broker's `offer_timeout`, as the run expects it: a late answer comes
/// after this.
const OFFER_TIMEOUT: Duration = Duration::from_secs(2);

/// What one run is asked for.
pub struct Options {
    /// Where the desks connect and the admin calls go.
    pub base: String,
    /// Where the customers connect, when not `base` (another node of a
    /// cluster).
    pub customer_base: Option<String>,
    pub admin: String,
    pub agents: usize,
    pub conversations: usize,
    /// Setup, chaos and drain together must end within this.
    pub limit: Duration,
    pub seed: u64,
    /// How long everyone acts once every customer is connected.
    pub chaos: Duration,
    /// Faults during the chaos, `kills` of them spread evenly over it: the
    /// broker killed and started again on the same address and data dir
    /// (what `tests/durability.rs` passes). Every client then reconnects as
    /// after a network drop, and customers resend what was not
    /// acknowledged, with the same `client_msg_id`; the checks are the same.
    pub fault: Option<(Fault, usize)>,
}

/// The run's seed: `FLOW_SEED` from the environment (a soak by hand tries
/// one seed after another), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("FLOW_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kills the broker and brings it back, resolving once it serves again.
pub type Fault = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long a desk or customer going away around the end of its grace
/// stays away: 0.7 to 1.5 s with [`GRACE`] at 1 s, so it comes back just
/// before the grace ends, or as or after it ends.
fn about_the_grace(rng: &mut StdRng) -> Duration {
    GRACE - Duration::from_millis(300) + Duration::from_millis(rng.random_range(0..800))
}

/// How long clients keep trying to reconnect while the broker is restarted.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Shared {
    /// 0: chaos; 1: pause (nobody acts); 2: drain (wind everything down);
    /// 3: done.
    phase: AtomicUsize,
    violations: Mutex<Vec<String>>,
    customers_done: AtomicUsize,
    counts: Counts,
    /// Every customer message the broker acknowledged: (conversation,
    /// message id, seq), checked against the stored histories at the end.
    acked: Mutex<Vec<(String, String, u64)>>,
    /// Every customer's webchat session, and those whose customer is done,
    /// for agents' outbound conversations.
    sessions: Mutex<Vec<String>>,
    done_sessions: Mutex<Vec<String>>,
    sampler_stop: AtomicBool,
    /// The broker is being restarted (the fault): from just before the kill
    /// until a while after it serves again, a refused connection or a
    /// closed socket is expected, and clients retry.
    restarting: AtomicBool,
    /// When the run began.
    started: std::sync::OnceLock<Instant>,
}

/// What the run did, counted as it goes: the summary line, and the proof
/// that it did what it is about.
#[derive(Default)]
struct Counts {
    transfers: AtomicUsize,
    warm: AtomicUsize,
    parks: AtomicUsize,
    ends_mid_transfer: AtomicUsize,
    disconnects: AtomicUsize,
    /// Desks away for about their grace, and tasks they found gone (withdrawn,
    /// or completed meanwhile by the supervisor) when they came back.
    long_disconnects: AtomicUsize,
    withdrawn: AtomicUsize,
    /// Offers let run out, and the answers sent after they had.
    ignored_offers: AtomicUsize,
    late_answers: AtomicUsize,
    not_responding: AtomicUsize,
    breaks: AtomicUsize,
    /// Customers who left, who dropped their socket for about their grace,
    /// and who found their conversation ended when they came back.
    leaves: AtomicUsize,
    customer_aways: AtomicUsize,
    ended_while_away: AtomicUsize,
    /// Outbound conversations asked for, started, and refused because the
    /// customer had one open.
    outbound: AtomicUsize,
    outbound_started: AtomicUsize,
    outbound_conflict: AtomicUsize,
    force_completes: AtomicUsize,
    supervisor_transfers: AtomicUsize,
    set_offline: AtomicUsize,
    /// `503` answers outside the faults (a (re)connect, the sampler's list,
    /// a supervisor's move), retried.
    unavailable: AtomicUsize,
}

impl Counts {
    /// Each count with its name in the summary and how many the run must
    /// have made (0: none required).
    fn table(&self) -> [(&'static str, &AtomicUsize, usize); 21] {
        [
            ("cold transfers", &self.transfers, 21),
            ("warm", &self.warm, 21),
            ("parks", &self.parks, 11),
            ("ends mid-transfer", &self.ends_mid_transfer, 1),
            ("disconnects", &self.disconnects, 1),
            ("away about the grace", &self.long_disconnects, 1),
            ("tasks gone on return", &self.withdrawn, 1),
            ("offers let run out", &self.ignored_offers, 1),
            ("answered late", &self.late_answers, 1),
            ("not_responding", &self.not_responding, 0),
            ("breaks", &self.breaks, 1),
            ("customers leaving", &self.leaves, 1),
            ("customers away about the grace", &self.customer_aways, 1),
            (
                "their conversation ended meanwhile",
                &self.ended_while_away,
                0,
            ),
            ("outbound", &self.outbound, 1),
            ("started", &self.outbound_started, 1),
            (
                "refused as the customer had a conversation open",
                &self.outbound_conflict,
                0,
            ),
            ("force-completes", &self.force_completes, 1),
            ("supervisor transfers", &self.supervisor_transfers, 1),
            ("set offline", &self.set_offline, 1),
            ("503s outside the faults", &self.unavailable, 0),
        ]
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .table()
            .iter()
            .map(|(name, count, _)| format!("{name} {}", count.load(Ordering::Relaxed)))
            .collect();
        parts.join(", ")
    }

    /// What the run did too little of (empty: it did what it is about).
    fn shortfall(&self) -> Vec<String> {
        let mut short: Vec<String> = self
            .table()
            .iter()
            .filter(|(_, count, need)| count.load(Ordering::Relaxed) < *need)
            .map(|(name, count, need)| {
                format!(
                    "{name}: {} (at least {need})",
                    count.load(Ordering::Relaxed)
                )
            })
            .collect();
        let (asked, started) = (
            self.outbound.load(Ordering::Relaxed),
            self.outbound_started.load(Ordering::Relaxed),
        );
        if started >= asked {
            short.push(format!(
                "no outbound chat was refused ({started} of {asked} started)"
            ));
        }
        short
    }
}

impl Shared {
    fn restarting(&self) -> bool {
        self.restarting.load(Ordering::SeqCst)
    }

    fn phase(&self) -> usize {
        self.phase.load(Ordering::SeqCst)
    }

    /// A failed check, with when it happened (since the run began), to
    /// set beside the faults' times in the summary.
    fn violation(&self, what: String) {
        let at = self
            .started
            .get()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        if let Ok(mut v) = self.violations.lock() {
            v.push(format!("[{at:.2}s] {what}"));
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The broker over HTTP, as the admin.
#[derive(Clone)]
struct Api {
    http: Client,
    base: String,
    admin: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = r.status().as_u16();
        let text = r
            .text()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// A `200` answer's body, else an error naming the call.
    async fn get_ok(&self, path: &str) -> Result<Value, String> {
        match self.call(Method::GET, path, None).await? {
            (200, v) => Ok(v),
            (status, v) => Err(format!("GET {path}: {status} {v}")),
        }
    }

    fn ws_base(&self) -> String {
        ws_base(&self.base)
    }
}

/// The WebSocket base of an HTTP base URL.
fn ws_base(base: &str) -> String {
    base.trim_end_matches('/').replacen("http", "ws", 1)
}

async fn connect(url: &str) -> Result<Raw, String> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(ws)
}

/// Connect and read the first frame (`hello`, `history`); while the broker
/// is being restarted, again and again until it answers. A `503` is retried
/// at any time, as the docs ask of clients (a cluster's node relaying to an
/// active node that is busy or changing), and counted.
async fn connect_first(url: &str, shared: &Shared) -> Result<(Raw, Value), String> {
    let until = Instant::now() + RECONNECT_FOR;
    loop {
        let outcome = match connect(url).await {
            Ok(mut ws) => match next_json(&mut ws).await {
                Some(first) => return Ok((ws, first)),
                None => Err(format!("{url}: closed before its first frame")),
            },
            Err(e) => Err(e),
        };
        let unavailable = outcome
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("503 Service Unavailable"));
        if Instant::now() >= until {
            return outcome;
        }
        if !shared.restarting() {
            if !unavailable {
                return outcome;
            }
            shared.counts.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn send(ws: &mut Raw, v: Value) {
    // A socket the broker closed (a replaced desk) makes this fail; the
    // loop notices on its next read.
    let _ = ws.send(Message::text(v.to_string())).await;
}

/// The next JSON frame, None when the socket ends.
async fn next_json(ws: &mut Raw) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// One agent's desk: what it holds (by conversation), its tasks.
struct Desk {
    id: String,
    url: String,
    others: Vec<String>,
    rng: StdRng,
    /// Conversations this desk holds (assigned or wrapping).
    held: HashSet<String>,
    ended: HashSet<String>,
    /// task → conversation, for tasks offered or held.
    tasks: HashMap<String, String>,
    /// Tasks with a warm transfer of ours pending.
    warm: HashSet<String>,
    /// Offers let run out, to be accepted anyway once this time has come.
    late: Vec<(Instant, String)>,
    /// On a break until then.
    break_until: Option<Instant>,
    /// `not_responding`: say `available` again at the next tick.
    wake: bool,
    /// One desk in ten takes no offers during the chaos (on a break all
    /// along): it starts outbound conversations and ends them.
    outbound_desk: bool,
    /// The last frames this desk read (type, task, conversation, ref),
    /// named in a violation of its own.
    trail: std::collections::VecDeque<String>,
    shared: Arc<Shared>,
}

/// Frames a desk's trail keeps.
const TRAIL: usize = 40;

impl Desk {
    fn note(&mut self, what: String) {
        if self.trail.len() == TRAIL {
            self.trail.pop_front();
        }
        self.trail.push_back(what);
    }

    /// (Re)connect; None (and a violation) if the broker refuses.
    /// `after_grace`: back from a long absence, counting the tasks gone.
    async fn open(&mut self, after_grace: bool) -> Option<Raw> {
        let (mut ws, hello) = match connect_first(&self.url, &self.shared).await {
            Ok(first) => first,
            Err(e) => {
                self.shared.violation(format!("{}: {e}", self.id));
                return None;
            }
        };
        if hello["type"] != "hello" {
            self.shared
                .violation(format!("{}: first frame not hello: {hello}", self.id));
            return None;
        }
        let listed: Vec<String> = hello["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                format!(
                    "{}/{}/{}",
                    s(&t["id"]),
                    s(&t["conversation_id"]),
                    s(&t["state"])
                )
            })
            .collect();
        self.note(format!("hello {listed:?}"));
        // A reconnect: what the broker says we hold is what we hold.
        let before = std::mem::take(&mut self.held);
        self.tasks.clear();
        self.ended.clear();
        self.warm.clear();
        self.late.clear();
        self.break_until = None;
        self.wake = false;
        for t in hello["tasks"].as_array().into_iter().flatten() {
            if t["state"] == "assigned" || t["state"] == "wrapping" {
                self.held.insert(s(&t["conversation_id"]));
                self.tasks.insert(s(&t["id"]), s(&t["conversation_id"]));
            }
        }
        if after_grace {
            // Back after about the grace: what is gone was withdrawn (or
            // completed meanwhile by the supervisor).
            let n = before.difference(&self.held).count();
            self.shared.counts.withdrawn.fetch_add(n, Ordering::Relaxed);
        }
        // Back with room (an offline agent takes no offers, and an
        // outbound takes capacity whatever the activity): start one first.
        if self.shared.phase() == 0 && self.held.len() < CAPACITY as usize {
            self.outbound(&mut ws, 1.0).await;
        }
        if self.outbound_desk && self.shared.phase() == 0 {
            self.break_until = Some(Instant::now() + Duration::from_secs(3600));
            send(&mut ws, json!({"type": "activity", "activity": "break"})).await;
        } else {
            send(
                &mut ws,
                json!({"type": "activity", "activity": "available"}),
            )
            .await;
        }
        Some(ws)
    }

    fn task_of(&self, conv: &str) -> Option<String> {
        self.tasks
            .iter()
            .find(|(_, c)| c.as_str() == conv)
            .map(|(t, _)| t.clone())
    }

    fn let_go(&mut self, task: &str) {
        if let Some(conv) = self.tasks.remove(task) {
            self.held.remove(&conv);
            self.ended.remove(&conv);
        }
        self.warm.remove(task);
    }

    async fn on_frame(&mut self, ws: &mut Raw, v: Value) {
        let phase = self.shared.phase();
        let ty = v["type"].as_str().unwrap_or_default();
        self.note(format!(
            "{ty} task={} conv={} ref={}",
            v["task"]["id"]
                .as_str()
                .or(v["task_id"].as_str())
                .unwrap_or("-"),
            v["task"]["conversation_id"]
                .as_str()
                .or(v["conversation_id"].as_str())
                .unwrap_or("-"),
            v["ref"].as_str().unwrap_or("-"),
        ));
        match ty {
            "task.offered" => {
                let task = s(&v["task"]["id"]);
                self.tasks
                    .insert(task.clone(), s(&v["task"]["conversation_id"]));
                if phase == 1 {
                    return;
                }
                let roll = if phase == 2 {
                    0
                } else {
                    self.rng.random_range(0..100)
                };
                match roll {
                    0..80 => send(ws, json!({"type": "accept", "task_id": task})).await,
                    80..92 => {
                        send(ws, json!({"type": "reject", "task_id": task})).await;
                        self.tasks.remove(&task);
                    }
                    _ => {
                        // Let it run out; answer half of them after it has
                        // (refused, or taken if it came back to this desk).
                        self.shared
                            .counts
                            .ignored_offers
                            .fetch_add(1, Ordering::Relaxed);
                        if self.rng.random_bool(0.5) {
                            let ms = self.rng.random_range(0..500);
                            let at = Instant::now() + OFFER_TIMEOUT + Duration::from_millis(ms);
                            self.late.push((at, task));
                        }
                    }
                }
            }
            "task.assigned" => {
                if v["ref"] == "outbound" {
                    self.shared
                        .counts
                        .outbound_started
                        .fetch_add(1, Ordering::Relaxed);
                }
                let conv = s(&v["task"]["conversation_id"]);
                let task = s(&v["task"]["id"]);
                self.held.insert(conv.clone());
                self.tasks.insert(task.clone(), conv.clone());
                if v["task"]["state"] == "wrapping" {
                    // Ended while this desk was away: wrap it up now.
                    self.ended.insert(conv);
                    send(
                        ws,
                        json!({"type": "complete", "task_id": task, "disposition": "resolved"}),
                    )
                    .await;
                }
            }
            "message" | "typing" => {
                let conv = s(&v["conversation_id"]);
                if !self.held.contains(&conv) {
                    self.shared.violation(format!(
                        "{} got a {ty} of {conv}, which it does not hold: {v}; what it read last: {:#?}",
                        self.id, self.trail
                    ));
                    return;
                }
                if ty == "message" && v["message"]["from"] == "customer" && phase == 0 {
                    self.act(ws, &conv).await;
                }
            }
            "conversation.ended" => {
                let conv = s(&v["conversation_id"]);
                self.ended.insert(conv);
                send(
                    ws,
                    json!({"type": "complete", "task_id": v["task_id"], "disposition": "resolved"}),
                )
                .await;
            }
            "task.completed" | "task.transferred" | "task.parked" | "task.rescinded" => {
                self.let_go(&s(&v["task_id"]));
                if ty == "task.completed" && phase == 0 && self.rng.random_bool(0.3) {
                    self.outbound(ws, 0.75).await;
                }
            }
            "transfer.failed" => {
                self.warm.remove(&s(&v["task_id"]));
            }
            "error" if v["ref"] == "outbound" => {
                // The customer has an open conversation, or this desk no
                // free capacity: refused, nothing else.
                let code = v["code"].as_str().unwrap_or_default();
                if code == "conflict" {
                    self.shared
                        .counts
                        .outbound_conflict
                        .fetch_add(1, Ordering::Relaxed);
                } else if code != "capacity_exceeded" {
                    self.shared
                        .violation(format!("{}: outbound refused: {v}", self.id));
                }
            }
            "activity.changed" if v["activity"] == "not_responding" => {
                self.shared
                    .counts
                    .not_responding
                    .fetch_add(1, Ordering::Relaxed);
                self.wake = true;
            }
            _ => {}
        }
    }

    /// What an agent does with a customer's message in a held conversation.
    async fn act(&mut self, ws: &mut Raw, conv: &str) {
        if self.ended.contains(conv) {
            return;
        }
        let Some(task) = self.task_of(conv) else {
            return;
        };
        let other = self.others[self.rng.random_range(0..self.others.len())].clone();
        let roll = self.rng.random_range(0..100);
        let shared = self.shared.clone();
        match roll {
            0..35 => {
                send(
                    ws,
                    json!({"type": "send", "conversation_id": conv, "text": "ok"}),
                )
                .await;
            }
            35..45 => {
                shared.counts.transfers.fetch_add(1, Ordering::Relaxed);
                send(
                    ws,
                    json!({"type": "transfer", "task_id": task, "to": {"agent": other}, "mode": "cold", "note": "over to you"}),
                )
                .await;
            }
            45..50 => {
                shared.counts.transfers.fetch_add(1, Ordering::Relaxed);
                let queue = if self.rng.random_bool(0.5) {
                    "default"
                } else {
                    "second"
                };
                send(
                    ws,
                    json!({"type": "transfer", "task_id": task, "to": {"queue": queue}, "mode": "cold"}),
                )
                .await;
            }
            50..62 => {
                shared.counts.warm.fetch_add(1, Ordering::Relaxed);
                self.warm.insert(task.clone());
                send(
                    ws,
                    json!({"type": "transfer", "task_id": task, "to": {"agent": other}, "mode": "warm", "note": "consult"}),
                )
                .await;
                if self.rng.random_bool(0.25) {
                    send(ws, json!({"type": "transfer.cancel", "task_id": task})).await;
                }
            }
            62..67 => {
                shared.counts.parks.fetch_add(1, Ordering::Relaxed);
                let until = self.rng.random_bool(0.5).then(|| {
                    let ms = self.rng.random_range(300..800);
                    rfc3339(SystemTime::now() + Duration::from_millis(ms))
                });
                send(ws, json!({"type": "park", "task_id": task, "until": until})).await;
            }
            67..77 => {
                if self.warm.contains(&task) {
                    shared
                        .counts
                        .ends_mid_transfer
                        .fetch_add(1, Ordering::Relaxed);
                }
                send(ws, json!({"type": "end", "conversation_id": conv})).await;
            }
            _ => {}
        }
    }

    /// An outbound conversation to some customer: one who is done (a new
    /// conversation) with odds `to_done`, else any (one still writing:
    /// `conflict`). Asked
    /// right as a task completes, it races the router's next offer for the
    /// slot that freed (`capacity_exceeded` when the offer wins).
    async fn outbound(&mut self, ws: &mut Raw, to_done: f64) {
        let from = if self.rng.random_bool(to_done) {
            &self.shared.done_sessions
        } else {
            &self.shared.sessions
        };
        let to = from.lock().ok().and_then(|all| {
            (!all.is_empty()).then(|| all[self.rng.random_range(0..all.len())].clone())
        });
        if let Some(to) = to {
            self.shared.counts.outbound.fetch_add(1, Ordering::Relaxed);
            let text = "We have news about your request";
            send(
                ws,
                json!({"type": "outbound", "channel": "webchat", "to": to, "text": text, "ref": "outbound"}),
            )
            .await;
        }
    }

    /// Late answers, breaks and their ends, and the drain's work.
    async fn on_tick(&mut self, ws: &mut Raw, phase: usize) {
        let now = Instant::now();
        if phase != 1 {
            let (due, later): (Vec<_>, Vec<_>) =
                self.late.drain(..).partition(|(at, _)| *at <= now);
            self.late = later;
            for (_, task) in due {
                self.shared
                    .counts
                    .late_answers
                    .fetch_add(1, Ordering::Relaxed);
                send(ws, json!({"type": "accept", "task_id": task})).await;
            }
        }
        let break_over = self
            .break_until
            .is_some_and(|until| until <= now || phase == 2);
        if self.wake || break_over {
            self.wake = false;
            self.break_until = None;
            send(ws, json!({"type": "activity", "activity": "available"})).await;
        } else if phase == 0
            && !self.outbound_desk
            && self.break_until.is_none()
            && self.rng.random_bool(0.01)
        {
            self.shared.counts.breaks.fetch_add(1, Ordering::Relaxed);
            let ms = self.rng.random_range(200..600);
            self.break_until = Some(now + Duration::from_millis(ms));
            send(ws, json!({"type": "activity", "activity": "break"})).await;
        }
        if self.outbound_desk && phase == 0 {
            if self.tasks.len() < CAPACITY as usize && self.rng.random_bool(0.5) {
                self.outbound(ws, 0.9).await;
            }
            let open: Vec<String> = self.held.difference(&self.ended).cloned().collect();
            for conv in open {
                if self.rng.random_bool(0.25) {
                    send(ws, json!({"type": "end", "conversation_id": conv})).await;
                }
            }
        }
        if phase == 2 {
            self.wind_down(ws).await;
        }
    }

    /// End everything held that has not ended (the drain).
    async fn wind_down(&mut self, ws: &mut Raw) {
        let open: Vec<String> = self.held.difference(&self.ended).cloned().collect();
        for conv in open {
            send(ws, json!({"type": "end", "conversation_id": conv})).await;
        }
    }

    async fn run(mut self) {
        let Some(mut ws) = self.open(false).await else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let phase = self.shared.phase();
            if phase == 3 {
                return;
            }
            tokio::select! {
                frame = next_json(&mut ws) => match frame {
                    Some(v) => self.on_frame(&mut ws, v).await,
                    None => match self.open(false).await {
                        Some(again) => ws = again,
                        None => return,
                    },
                },
                _ = tick.tick() => {
                    if phase == 0 && self.rng.random_bool(0.02) {
                        // Drop the socket and come back within the grace.
                        self.shared.counts.disconnects.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.close(None).await;
                        sleep(Duration::from_millis(self.rng.random_range(50..300))).await;
                        match self.open(false).await {
                            Some(again) => ws = again,
                            None => return,
                        }
                    } else if phase == 0 && self.rng.random_bool(0.012) {
                        // Away for about the grace: back just before its
                        // end, or after it (the tasks withdrawn, maybe just
                        // as the desk returns).
                        self.shared.counts.long_disconnects.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.close(None).await;
                        sleep(about_the_grace(&mut self.rng)).await;
                        match self.open(true).await {
                            Some(again) => ws = again,
                            None => return,
                        }
                    } else {
                        self.on_tick(&mut ws, phase).await;
                    }
                }
            }
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as the broker reads `until`.
fn rfc3339(at: SystemTime) -> String {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// One customer's socket and what it is waiting for.
struct Customer {
    url: String,
    /// The broker as the admin: to look up what became of its
    /// conversation.
    api: Api,
    shared: Arc<Shared>,
    rng: StdRng,
    ws: Raw,
    sent: u32,
    /// Messages sent and not acknowledged yet (by `client_msg_id`): sent
    /// again after a reconnect, and stored once whatever became of the
    /// first try.
    pending: Vec<(String, Value)>,
    conv: Option<String>,
    convs: Arc<Mutex<Vec<String>>>,
    /// After `leave` the customer only waits for the end: a message now
    /// would open a new conversation.
    left: bool,
}

impl Customer {
    async fn say(&mut self, text: &str) {
        self.sent += 1;
        let id = format!("m{}", self.sent);
        let v = json!({"type": "message", "text": text, "client_msg_id": id});
        self.pending.push((id, v.clone()));
        send(&mut self.ws, v).await;
    }

    fn acked(&mut self, v: &Value) {
        let id = s(&v["conversation_id"]);
        if let Ok(mut acked) = self.shared.acked.lock() {
            acked.push((
                id.clone(),
                s(&v["message_id"]),
                v["seq"].as_u64().unwrap_or(0),
            ));
        }
        self.pending
            .retain(|(m, _)| v["client_msg_id"] != m.as_str());
        if self.conv.is_none() {
            if let Ok(mut c) = self.convs.lock() {
                c.push(id.clone());
            }
            self.conv = Some(id);
        }
    }

    /// Back on a new socket: `Ok(true)` when the conversation ended
    /// meanwhile; else what was not acknowledged (or the `leave`) goes again.
    async fn reconnect(&mut self) -> Result<bool, String> {
        let (ws, history) = connect_first(&self.url, &self.shared).await?;
        self.ws = ws;
        if history["type"] != "history" {
            return Err(format!("a customer back got {history} first"));
        }
        if history["ended"] == true {
            if let Some(own) = self
                .conv
                .clone()
                .filter(|c| history["conversation_id"] != c.as_str())
            {
                // Its own ended while it was away, and an agent then
                // started an outbound conversation to its session (and
                // ended it): the session's newest is what it sees. Only
                // with its own ended.
                let path = format!("/v1/conversations/{own}");
                let until = Instant::now() + RECONNECT_FOR;
                let state = loop {
                    match self.api.get_ok(&path).await {
                        // Between two active nodes, or just after.
                        Err(e) if e.contains(": 503 ") && Instant::now() < until => {
                            sleep(Duration::from_millis(100)).await;
                        }
                        other => break other?,
                    }
                };
                if state["state"] != "ended" {
                    return Err(format!(
                        "a customer of {own} ({}) came back to another conversation: {history}",
                        state["state"]
                    ));
                }
            }
            return Ok(true);
        }
        for (_, v) in self.pending.clone() {
            send(&mut self.ws, v).await;
        }
        if self.left {
            send(&mut self.ws, json!({"type": "leave"})).await;
        }
        Ok(false)
    }

    /// Writes until the conversation ends; true once it has.
    async fn run(&mut self) -> bool {
        self.say("hello").await;
        loop {
            let wait = Duration::from_millis(self.rng.random_range(400..1200));
            tokio::select! {
                frame = next_json(&mut self.ws) => match frame {
                    Some(v) if v["type"] == "ack" => self.acked(&v),
                    Some(v) if v["type"] == "conversation.ended" => return true,
                    Some(_) => {}
                    None if self.shared.restarting() => match self.reconnect().await {
                        Ok(true) => return true,
                        Ok(false) => {}
                        Err(e) => {
                            self.shared.violation(format!("customer back after the restart: {e}"));
                            return false;
                        }
                    },
                    None => {
                        self.shared.violation("a customer socket closed before its conversation ended".into());
                        return false;
                    }
                },
                _ = sleep(wait) => {
                    let phase = self.shared.phase();
                    if phase == 3 {
                        return false;
                    }
                    if self.left {
                        continue;
                    }
                    if phase != 0 || self.conv.is_none() {
                        if phase == 2 && self.conv.is_some() {
                            self.say("any news?").await;
                        }
                        continue;
                    }
                    match self.rng.random_range(0..100) {
                        0..3 => {
                            // Leave: a waiting task is canceled, an assigned
                            // one ends; either way `conversation.ended` comes.
                            self.shared.counts.leaves.fetch_add(1, Ordering::Relaxed);
                            self.left = true;
                            send(&mut self.ws, json!({"type": "leave"})).await;
                        }
                        3..5 => {
                            // Away for about the grace: a task still waiting
                            // when it runs out is canceled, maybe just as the
                            // customer returns.
                            self.shared.counts.customer_aways.fetch_add(1, Ordering::Relaxed);
                            let _ = self.ws.close(None).await;
                            sleep(about_the_grace(&mut self.rng)).await;
                            match self.reconnect().await {
                                Ok(true) => {
                                    self.shared.counts.ended_while_away.fetch_add(1, Ordering::Relaxed);
                                    return true;
                                }
                                Ok(false) => {}
                                Err(e) => {
                                    self.shared.violation(format!("customer back: {e}"));
                                    return false;
                                }
                            }
                        }
                        _ => self.say("any news?").await,
                    }
                }
            }
        }
    }
}

/// One customer: writes now and then until its conversation ends; now and
/// then leaves, or drops its socket for about its grace and comes back.
async fn customer(
    url: String,
    api: Api,
    session: String,
    shared: Arc<Shared>,
    seed: u64,
    convs: Arc<Mutex<Vec<String>>>,
) {
    let ws = match connect_first(&url, &shared).await {
        Ok((ws, _history)) => ws,
        Err(e) => {
            shared.violation(format!("customer: {e}"));
            return;
        }
    };
    let mut c = Customer {
        url,
        api,
        shared: shared.clone(),
        rng: StdRng::seed_from_u64(seed),
        ws,
        sent: 0,
        pending: Vec::new(),
        conv: None,
        convs,
        left: false,
    };
    if !c.run().await {
        return;
    }
    if let Ok(mut done) = shared.done_sessions.lock() {
        done.push(session);
    }
    shared.customers_done.fetch_add(1, Ordering::SeqCst);
}

/// Every acknowledged customer message is in its conversation's stored
/// history exactly once, at the `seq` its `ack` gave, and each history's
/// `seq` runs 1, 2, 3… without a gap.
async fn acked_stored_once(
    api: &Api,
    acked: &[(String, String, u64)],
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let mut by_conv: HashMap<&str, HashMap<&str, u64>> = HashMap::new();
    for (conv, id, seq) in acked {
        by_conv.entry(conv).or_default().insert(id, *seq);
    }
    for (conv, acks) in by_conv {
        let mut stored: HashMap<String, (u64, usize)> = HashMap::new();
        let mut after = 0u64;
        loop {
            let page = api
                .get_ok(&format!(
                    "/v1/conversations/{conv}/messages?after_seq={after}&limit=1000"
                ))
                .await?;
            for m in page["messages"].as_array().into_iter().flatten() {
                let seq = m["seq"].as_u64().unwrap_or(0);
                if seq != after + 1 {
                    failures.push(format!("{conv}: seq {seq} follows {after}"));
                }
                after = seq;
                stored.entry(s(&m["id"])).or_insert((seq, 0)).1 += 1;
            }
            if page["has_more"] != true {
                break;
            }
        }
        for (id, seq) in acks {
            match stored.get(id) {
                Some((at, 1)) if at == &seq => {}
                Some((at, n)) => failures.push(format!(
                    "{conv}: acknowledged message {id} (seq {seq}) stored {n} times, at seq {at}"
                )),
                None => failures.push(format!(
                    "{conv}: acknowledged message {id} (seq {seq}) not stored"
                )),
            }
        }
    }
    Ok(())
}

/// Run it; `Err` lists what failed.
pub async fn run(opts: Options) -> Result<(), String> {
    let api = Api {
        http: Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?,
        base: opts.base.trim_end_matches('/').to_owned(),
        admin: opts.admin.clone(),
    };
    let started = Instant::now();
    let deadline = started + opts.limit;
    let run = format!("{:x}", opts.seed % 0xffff);
    match api
        .call(Method::POST, "/v1/queues", Some(json!({"id": "second"})))
        .await?
    {
        (201 | 409, _) => {}
        (status, v) => return Err(format!("create queue second: {status} {v}")),
    }
    let shared = Arc::new(Shared::default());
    let _ = shared.started.set(started);

    let ids: Vec<String> = (0..opts.agents)
        .map(|i| format!("wf{run}-{i:03}"))
        .collect();
    let mut desks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let body = json!({"id": id, "capacity": {"webchat": CAPACITY}});
        let token = match api.call(Method::POST, "/v1/agents", Some(body)).await? {
            (201, v) => s(&v["token"]),
            (status, v) => return Err(format!("create agent {id}: {status} {v}")),
        };
        let desk = Desk {
            id: id.clone(),
            url: format!("{}/v1/agents/{id}/ws?token={token}", api.ws_base()),
            others: ids.iter().filter(|o| *o != id).cloned().collect(),
            rng: StdRng::seed_from_u64(opts.seed + i as u64),
            held: HashSet::new(),
            ended: HashSet::new(),
            tasks: HashMap::new(),
            warm: HashSet::new(),
            late: Vec::new(),
            break_until: None,
            wake: false,
            outbound_desk: i % 10 == 9,
            trail: Default::default(),
            shared: shared.clone(),
        };
        desks.push(tokio::spawn(desk.run()));
    }

    // No agent ever over capacity, as the router counts it.
    let sampler = {
        let (api, shared, ids) = (api.clone(), shared.clone(), ids.clone());
        let ours: HashSet<String> = ids.into_iter().collect();
        tokio::spawn(async move {
            while !shared.sampler_stop.load(Ordering::SeqCst) {
                match api.get_ok("/v1/agents").await {
                    Ok(agents) => {
                        for a in agents.as_array().into_iter().flatten() {
                            if ours.contains(&s(&a["id"]))
                                && a["load"]["webchat"].as_u64() > a["capacity"]["webchat"].as_u64()
                            {
                                shared.violation(format!("over capacity: {a}"));
                            }
                        }
                    }
                    Err(_) if shared.restarting() => {}
                    // A cluster's standby relaying to an active node that
                    // is busy or just took over: retried, as clients do.
                    Err(e) if e.contains(": 503 ") => {
                        shared.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => shared.violation(e),
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let convs = Arc::new(Mutex::new(Vec::new()));
    let mut customers = Vec::new();
    let customer_ws = match &opts.customer_base {
        Some(base) => ws_base(base),
        None => api.ws_base(),
    };
    for i in 0..opts.conversations {
        let name = format!("C{i}");
        let (token, session) = match api
            .call(
                Method::POST,
                "/v1/webchat/sessions",
                Some(json!({"name": name})),
            )
            .await?
        {
            (201, v) => {
                if let Ok(mut sessions) = shared.sessions.lock() {
                    sessions.push(s(&v["session_id"]));
                }
                (s(&v["token"]), s(&v["session_id"]))
            }
            (status, v) => return Err(format!("create session {name}: {status} {v}")),
        };
        customers.push(tokio::spawn(customer(
            format!("{customer_ws}/v1/webchat/ws?token={token}"),
            api.clone(),
            session,
            shared.clone(),
            opts.seed + 100_000 + i as u64,
            convs.clone(),
        )));
    }
    let setup = started.elapsed();

    // A supervisor completing and transferring assigned tasks now and then,
    // whatever their agents are doing with them (a transfer pending, an end
    // on its way), and setting agents offline (their desks closed, their
    // assigned tasks back in the queue; the desks come back).
    let supervisor = {
        let (api, shared, ids) = (api.clone(), shared.clone(), ids.clone());
        let mut rng = StdRng::seed_from_u64(opts.seed + 7);
        tokio::spawn(async move {
            while shared.phase() == 0 {
                sleep(Duration::from_millis(100)).await;
                let Ok(tasks) = api.get_ok("/v1/tasks?state=assigned&limit=500").await else {
                    continue;
                };
                let Some(list) = tasks.as_array().filter(|l| !l.is_empty()) else {
                    continue;
                };
                let listed = &list[rng.random_range(0..list.len())];
                let task = s(&listed["id"]);
                // Another agent than the one holding it as listed.
                let mut at = rng.random_range(0..ids.len());
                if listed["agent_id"].as_str() == Some(ids[at].as_str()) {
                    at = (at + 1) % ids.len();
                }
                let agent = ids[at].clone();
                let moved_to_agent = format!("is already {agent}'s");
                let (what, method, path, body, counter) = match rng.random_range(0..100) {
                    0..50 => (
                        "force-complete",
                        Method::POST,
                        format!("/v1/tasks/{task}/complete"),
                        json!({"disposition": "spam", "notes": "closed by the supervisor"}),
                        &shared.counts.force_completes,
                    ),
                    50..85 => {
                        let to = match rng.random_range(0..3) {
                            0 => json!({"queue": "default"}),
                            1 => json!({"queue": "second"}),
                            _ => json!({"agent": agent}),
                        };
                        (
                            "supervisor transfer",
                            Method::POST,
                            format!("/v1/tasks/{task}/transfer"),
                            json!({"to": to, "note": "escalated"}),
                            &shared.counts.supervisor_transfers,
                        )
                    }
                    _ => (
                        "set offline",
                        Method::PATCH,
                        format!("/v1/agents/{agent}"),
                        json!({"activity": "offline"}),
                        &shared.counts.set_offline,
                    ),
                };
                match api.call(method, &path, Some(body)).await {
                    Ok((200, _)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    // It moved since the list: refused, never broken.
                    Ok((404 | 409, _)) => {}
                    // It moved to that very agent since the list: a
                    // transfer to its own holder is refused as such.
                    Ok((400, v)) if v.to_string().contains(&moved_to_agent) => {}
                    // A cluster's node between two active ones, or
                    // relaying to one that is busy or just took over:
                    // another move next time, as a supervisor would.
                    Ok((503, _)) => {
                        if !shared.restarting() {
                            shared.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok((status, v)) => shared.violation(format!("{what} {path}: {status} {v}")),
                    Err(_) if shared.restarting() => {}
                    Err(e) => shared.violation(e),
                }
            }
        })
    };

    // The faults, spread over the chaos.
    let fault = opts.fault.map(|(fault, kills)| {
        let shared = shared.clone();
        let every = opts.chaos / (kills as u32 + 1);
        tokio::spawn(async move {
            let mut back = Vec::new();
            for _ in 0..kills {
                sleep(every).await;
                shared.restarting.store(true, Ordering::SeqCst);
                let down = Instant::now();
                fault().await;
                back.push((down - started, down.elapsed()));
            }
            // Clients that noticed late are still reconnecting.
            sleep(Duration::from_secs(2)).await;
            shared.restarting.store(false, Ordering::SeqCst);
            back
        })
    });

    sleep(opts.chaos).await;
    let restarts = match fault {
        Some(task) => task.await.map_err(|e| format!("the faults: {e}"))?,
        None => Vec::new(),
    };

    // Pause: nobody acts; once what is in flight has landed, the router and
    // every conversation agree on who holds each assigned task.
    shared.phase.store(1, Ordering::SeqCst);
    let _ = supervisor.await;
    sleep(PAUSE).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut offset = 0;
    loop {
        let page = api
            .get_ok(&format!(
                "/v1/tasks?state=assigned&limit=500&offset={offset}"
            ))
            .await?;
        let list = page.as_array().cloned().unwrap_or_default();
        for t in &list {
            let conv = api
                .get_ok(&format!("/v1/conversations/{}", s(&t["conversation_id"])))
                .await?;
            if !t["agent_id"].is_string() {
                failures.push(format!("an assigned task with no holder: {t}"));
            } else if conv["agent_id"] != t["agent_id"] || conv["task"]["state"] != "assigned" {
                failures.push(format!(
                    "router and conversation disagree on the holder: {t} / {conv}"
                ));
            }
            checked += 1;
        }
        if list.len() < 500 {
            break;
        }
        offset += 500;
    }

    // Drain: every conversation is ended and wrapped up.
    shared.phase.store(2, Ordering::SeqCst);
    let drained = loop {
        let done = shared.customers_done.load(Ordering::SeqCst);
        let open = api.get_ok("/v1/tasks?limit=1").await?;
        if done >= opts.conversations && open.as_array().is_some_and(|a| a.is_empty()) {
            break true;
        }
        if Instant::now() >= deadline {
            failures.push(format!(
                "drain: {done} of {} conversations ended when the {:?} limit came; an open task: {open}",
                opts.conversations, opts.limit
            ));
            break false;
        }
        sleep(Duration::from_millis(100)).await;
    };
    shared.sampler_stop.store(true, Ordering::SeqCst);
    shared.phase.store(3, Ordering::SeqCst);
    let _ = sampler.await;
    for c in customers {
        let _ = c.await;
    }
    for d in desks {
        let _ = d.await;
    }

    if drained {
        let convs = convs.lock().map(|c| c.clone()).unwrap_or_default();
        if convs.len() != opts.conversations {
            failures.push(format!(
                "{} of {} conversations opened",
                convs.len(),
                opts.conversations
            ));
        }
        for id in &convs {
            let v = api.get_ok(&format!("/v1/conversations/{id}")).await?;
            let state = s(&v["task"]["state"]);
            if state != "completed" && state != "canceled" {
                failures.push(format!("conversation {id} not final: {v}"));
            }
        }
        let agents = api.get_ok("/v1/agents").await?;
        for a in agents.as_array().into_iter().flatten() {
            if ids.contains(&s(&a["id"])) && a["load"]["webchat"] != 0 {
                failures.push(format!("capacity not given back: {a}"));
            }
        }
        let acked = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
        let mut lost = Vec::new();
        acked_stored_once(&api, &acked, &mut lost).await?;
        if !lost.is_empty() {
            failures.push(format!(
                "{} acknowledged messages not stored once at their seq, first: {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            ));
        }
    }
    // Leave the broker as it was found.
    for id in &ids {
        let _ = api
            .call(Method::DELETE, &format!("/v1/agents/{id}"), None)
            .await;
    }

    let faults = if restarts.is_empty() {
        String::new()
    } else {
        let secs: Vec<String> = restarts
            .iter()
            .map(|(at, took)| {
                format!(
                    "at {:.2}s, back in {:.2}s",
                    at.as_secs_f64(),
                    took.as_secs_f64()
                )
            })
            .collect();
        format!(
            ", broker killed {} times ({})",
            restarts.len(),
            secs.join("; ")
        )
    };
    println!(
        "workflow: {} agents, {} conversations: {}, holders checked {checked}{faults}; \
         setup {:.1}s, total {:.1}s",
        opts.agents,
        opts.conversations,
        shared.counts.summary(),
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let mut short = shared.counts.shortfall();
    if checked == 0 {
        short.push("no holder checked".into());
    }
    if !short.is_empty() {
        failures.push(format!(
            "the run did not do what it is about: {}",
            short.join("; ")
        ));
    }
    let violations = shared
        .violations
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    if !violations.is_empty() {
        failures.push(format!(
            "{} violations, first: {:?}",
            violations.len(),
            &violations[..violations.len().min(5)]
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_795_996_434);
        assert_eq!(rfc3339(at), "2026-11-27T16:13:16.434Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}

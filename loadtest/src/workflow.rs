//! `--workflow`: the conversation workflow under concurrency, at the issue's
//! size (300 agents, 3,000 webchat conversations by default), against a
//! running broker. Agents accept and reject, reply, transfer cold (to agents
//! and queues) and warm (some canceled), park (some until a time), end in
//! the middle of transfers and drop their sockets; a supervisor
//! force-completes tasks; customers keep writing. Then everything is wound
//! down and checked, each check a hard failure (exit code 1):
//!
//! - no agent ever got a frame (`message`, `typing`) of a conversation it
//!   did not hold;
//! - no agent was ever over capacity (sampled from `GET /v1/agents`);
//! - after a pause, the router (`GET /v1/tasks`) and every conversation
//!   (`GET /v1/conversations/{id}`) agree on the one holder of each
//!   assigned task;
//! - every task ends `completed` or `canceled`, all capacity given back;
//! - the run did what it is about (transfers both kinds, parks, ends
//!   mid-transfer, disconnects, force-completes all happened).
//!
//! `tests/transfers_concurrency.rs` runs this same code at a tenth of the
//! size in the debug test suite (the library target); `--workflow` runs it
//! in release mode in CI's load smoke. The broker it runs against needs short offers
//! (`--offer-timeout 2s --reoffer-cooldown 300ms`) and no per-client limits
//! (`--client-limits false`), as `.ci/run` starts it.

use std::collections::{HashMap, HashSet};
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
/// How long the pause lets what is in flight land before the holder check.
const PAUSE: Duration = Duration::from_millis(1500);

/// What one run is asked for.
pub struct Options {
    pub base: String,
    pub admin: String,
    pub agents: usize,
    pub conversations: usize,
    /// Setup, chaos and drain together must end within this.
    pub limit: Duration,
    pub seed: u64,
    /// How long everyone acts once every customer is connected.
    pub chaos: Duration,
}

#[derive(Default)]
struct Shared {
    /// 0: chaos; 1: pause (nobody acts); 2: drain (wind everything down);
    /// 3: done.
    phase: AtomicUsize,
    violations: Mutex<Vec<String>>,
    customers_done: AtomicUsize,
    transfers: AtomicUsize,
    warm: AtomicUsize,
    parks: AtomicUsize,
    ends_mid_transfer: AtomicUsize,
    disconnects: AtomicUsize,
    force_completes: AtomicUsize,
    sampler_stop: AtomicBool,
}

impl Shared {
    fn phase(&self) -> usize {
        self.phase.load(Ordering::SeqCst)
    }

    fn violation(&self, what: String) {
        if let Ok(mut v) = self.violations.lock() {
            v.push(what);
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
        self.base.replacen("http", "ws", 1)
    }
}

async fn connect(url: &str) -> Result<Raw, String> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(ws)
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
    shared: Arc<Shared>,
}

impl Desk {
    /// (Re)connect; None (and a violation) if the broker refuses.
    async fn open(&mut self) -> Option<Raw> {
        let mut ws = match connect(&self.url).await {
            Ok(ws) => ws,
            Err(e) => {
                self.shared.violation(format!("{}: {e}", self.id));
                return None;
            }
        };
        let hello = next_json(&mut ws).await.unwrap_or_default();
        if hello["type"] != "hello" {
            self.shared
                .violation(format!("{}: first frame not hello: {hello}", self.id));
            return None;
        }
        // A reconnect: what the broker says we hold is what we hold.
        self.held.clear();
        self.tasks.clear();
        self.ended.clear();
        self.warm.clear();
        for t in hello["tasks"].as_array().into_iter().flatten() {
            if t["state"] == "assigned" || t["state"] == "wrapping" {
                self.held.insert(s(&t["conversation_id"]));
                self.tasks.insert(s(&t["id"]), s(&t["conversation_id"]));
            }
        }
        send(
            &mut ws,
            json!({"type": "activity", "activity": "available"}),
        )
        .await;
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
        match ty {
            "task.offered" => {
                let task = s(&v["task"]["id"]);
                self.tasks
                    .insert(task.clone(), s(&v["task"]["conversation_id"]));
                if phase == 1 {
                    return;
                }
                let accept = phase == 2 || self.rng.random_bool(0.85);
                let ty = if accept { "accept" } else { "reject" };
                send(ws, json!({"type": ty, "task_id": task})).await;
                if !accept {
                    self.tasks.remove(&task);
                }
            }
            "task.assigned" => {
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
                        "{} got a {ty} of {conv}, which it does not hold: {v}",
                        self.id
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
            }
            "transfer.failed" => {
                self.warm.remove(&s(&v["task_id"]));
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
                shared.transfers.fetch_add(1, Ordering::Relaxed);
                send(
                    ws,
                    json!({"type": "transfer", "task_id": task, "to": {"agent": other}, "mode": "cold", "note": "over to you"}),
                )
                .await;
            }
            45..50 => {
                shared.transfers.fetch_add(1, Ordering::Relaxed);
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
                shared.warm.fetch_add(1, Ordering::Relaxed);
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
                shared.parks.fetch_add(1, Ordering::Relaxed);
                let until = self.rng.random_bool(0.5).then(|| {
                    let ms = self.rng.random_range(300..800);
                    rfc3339(SystemTime::now() + Duration::from_millis(ms))
                });
                send(ws, json!({"type": "park", "task_id": task, "until": until})).await;
            }
            67..77 => {
                if self.warm.contains(&task) {
                    shared.ends_mid_transfer.fetch_add(1, Ordering::Relaxed);
                }
                send(ws, json!({"type": "end", "conversation_id": conv})).await;
            }
            _ => {}
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
        let Some(mut ws) = self.open().await else {
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
                    None => match self.open().await {
                        Some(again) => ws = again,
                        None => return,
                    },
                },
                _ = tick.tick() => {
                    if phase == 0 && self.rng.random_bool(0.02) {
                        // Drop the socket and come back within the grace.
                        self.shared.disconnects.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.close(None).await;
                        sleep(Duration::from_millis(self.rng.random_range(50..300))).await;
                        match self.open().await {
                            Some(again) => ws = again,
                            None => return,
                        }
                    } else if phase == 2 {
                        self.wind_down(&mut ws).await;
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

/// One customer: writes now and then until its conversation ends.
async fn customer(url: String, shared: Arc<Shared>, seed: u64, convs: Arc<Mutex<Vec<String>>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ws = match connect(&url).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.violation(format!("customer: {e}"));
            return;
        }
    };
    let _history = next_json(&mut ws).await;
    send(&mut ws, json!({"type": "message", "text": "hello"})).await;
    let mut conv = None;
    loop {
        let wait = Duration::from_millis(rng.random_range(400..1200));
        tokio::select! {
            frame = next_json(&mut ws) => match frame {
                Some(v) if v["type"] == "ack" && conv.is_none() => {
                    let id = s(&v["conversation_id"]);
                    if let Ok(mut c) = convs.lock() {
                        c.push(id.clone());
                    }
                    conv = Some(id);
                }
                Some(v) if v["type"] == "conversation.ended" => break,
                Some(_) => {}
                None => {
                    shared.violation("a customer socket closed before its conversation ended".into());
                    return;
                }
            },
            _ = sleep(wait) => {
                if shared.phase() == 3 {
                    return;
                }
                if shared.phase() != 1 && conv.is_some() {
                    send(&mut ws, json!({"type": "message", "text": "any news?"})).await;
                }
            }
        }
    }
    shared.customers_done.fetch_add(1, Ordering::SeqCst);
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
                    Err(e) => shared.violation(e),
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let convs = Arc::new(Mutex::new(Vec::new()));
    let mut customers = Vec::new();
    for i in 0..opts.conversations {
        let name = format!("C{i}");
        let token = match api
            .call(
                Method::POST,
                "/v1/webchat/sessions",
                Some(json!({"name": name})),
            )
            .await?
        {
            (201, v) => s(&v["token"]),
            (status, v) => return Err(format!("create session {name}: {status} {v}")),
        };
        customers.push(tokio::spawn(customer(
            format!("{}/v1/webchat/ws?token={token}", api.ws_base()),
            shared.clone(),
            opts.seed + 100_000 + i as u64,
            convs.clone(),
        )));
    }
    let setup = started.elapsed();

    // A supervisor completing assigned tasks now and then, whatever their
    // agents are doing with them (a transfer pending, an end on its way).
    let supervisor = {
        let (api, shared) = (api.clone(), shared.clone());
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
                let task = s(&list[rng.random_range(0..list.len())]["id"]);
                let body = json!({"disposition": "spam", "notes": "closed by the supervisor"});
                match api
                    .call(
                        Method::POST,
                        &format!("/v1/tasks/{task}/complete"),
                        Some(body),
                    )
                    .await
                {
                    Ok((200, _)) => {
                        shared.force_completes.fetch_add(1, Ordering::Relaxed);
                    }
                    // It moved since the list: refused, never broken.
                    Ok((404 | 409, _)) => {}
                    Ok((status, v)) => {
                        shared.violation(format!("force-complete of {task}: {status} {v}"))
                    }
                    Err(e) => shared.violation(e),
                }
            }
        })
    };

    sleep(opts.chaos).await;

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
    }
    // Leave the broker as it was found.
    for id in &ids {
        let _ = api
            .call(Method::DELETE, &format!("/v1/agents/{id}"), None)
            .await;
    }

    let (t, w, p, e, d, f) = (
        shared.transfers.load(Ordering::Relaxed),
        shared.warm.load(Ordering::Relaxed),
        shared.parks.load(Ordering::Relaxed),
        shared.ends_mid_transfer.load(Ordering::Relaxed),
        shared.disconnects.load(Ordering::Relaxed),
        shared.force_completes.load(Ordering::Relaxed),
    );
    println!(
        "workflow: {} agents, {} conversations: cold transfers {t}, warm {w}, parks {p}, \
         ends mid-transfer {e}, disconnects {d}, force-completes {f}, holders checked {checked}; \
         setup {:.1}s, total {:.1}s",
        opts.agents,
        opts.conversations,
        setup.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if !(t > 20 && w > 20 && p > 10 && e > 0 && d > 0 && f > 0 && checked > 0) {
        failures.push("the run did not do what it is about (see the counts)".into());
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

//! Transfers, parking and ends under concurrency over real sockets: 60
//! agents and 600 webchat conversations, agents accepting and rejecting,
//! replying, transferring cold (to agents and queues) and warm (some
//! canceled), parking (some until a time), ending in the middle of
//! transfers and dropping their sockets, a supervisor force-completing
//! tasks, while customers keep writing. Then everything is wound down and
//! checked: no agent ever got a frame of a conversation it did not hold, no
//! agent was ever over capacity, the router and the conversations agreed on
//! every holder, and every task ended in a final state with all capacity
//! given back.
//!
//! `FLOW_AGENTS` and `FLOW_CONVERSATIONS` change the size (the full
//! size, 300 and 3,000, takes longer than a debug test should: see
//! `docs/performance.md`).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

const AGENTS: usize = 60;
const CONVERSATIONS: usize = 600;
const CAPACITY: u64 = 3;
const CHAOS: Duration = Duration::from_secs(8);
const RUN_TIMEOUT: Duration = Duration::from_secs(50);

/// A size from the environment, else its default.
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v:?}: not a number"))
        })
        .unwrap_or(default)
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
        self.violations.lock().expect("lock").push(what);
    }
}

async fn connect(url: &str) -> Raw {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
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
    async fn open(&mut self) -> Raw {
        let mut ws = connect(&self.url).await;
        let hello = next_json(&mut ws).await.expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
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
        ws
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
                    // Ended while this desk was away (a reconnect's
                    // resync): wrap it up now, as `conversation.ended` does.
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
            "task.completed" | "task.transferred" | "task.parked" => {
                self.let_go(&s(&v["task_id"]));
            }
            "task.rescinded" => self.let_go(&s(&v["task_id"])),
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
                    humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_millis(ms))
                        .to_string()
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
        let mut ws = self.open().await;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            let phase = self.shared.phase();
            if phase == 3 {
                return;
            }
            tokio::select! {
                frame = next_json(&mut ws) => match frame {
                    Some(v) => self.on_frame(&mut ws, v).await,
                    None => ws = self.open().await,
                },
                _ = tick.tick() => {
                    if phase == 0 && self.rng.random_bool(0.02) {
                        // Drop the socket and come back within the grace.
                        self.shared.disconnects.fetch_add(1, Ordering::Relaxed);
                        let _ = ws.close(None).await;
                        sleep(Duration::from_millis(self.rng.random_range(50..300))).await;
                        ws = self.open().await;
                    } else if phase == 2 {
                        self.wind_down(&mut ws).await;
                    }
                }
            }
        }
    }
}

/// One customer: writes now and then until its conversation ends.
async fn customer(url: String, shared: Arc<Shared>, seed: u64, convs: Arc<Mutex<Vec<String>>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ws = connect(&url).await;
    let _history = next_json(&mut ws).await;
    send(&mut ws, json!({"type": "message", "text": "hello"})).await;
    let mut conv = None;
    loop {
        let wait = Duration::from_millis(rng.random_range(400..1200));
        tokio::select! {
            frame = next_json(&mut ws) => match frame {
                Some(v) if v["type"] == "ack" && conv.is_none() => {
                    let id = s(&v["conversation_id"]);
                    convs.lock().expect("lock").push(id.clone());
                    conv = Some(id);
                }
                Some(v) if v["type"] == "conversation.ended" => break,
                Some(_) => {}
                None => panic!("customer socket closed"),
            },
            _ = sleep(wait) => {
                if shared.phase() != 1 && conv.is_some() {
                    send(&mut ws, json!({"type": "message", "text": "any news?"})).await;
                }
            }
        }
    }
    shared.customers_done.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_parks_and_ends_keep_one_holder_under_load() {
    let agents_n = size("FLOW_AGENTS", AGENTS);
    let conversations_n = size("FLOW_CONVERSATIONS", CONVERSATIONS);
    // Room to open the sessions and wind down, growing with the size.
    let run_timeout = RUN_TIMEOUT * (conversations_n.div_ceil(CONVERSATIONS)) as u32;
    let mut cfg = test_config().without_client_limits();
    cfg.offer_timeout = Duration::from_secs(2);
    cfg.reoffer_cooldown = Duration::from_millis(300);
    let h = start_with(cfg);
    let r = h
        .request(
            Method::POST,
            "/v1/queues",
            Some(&h.admin),
            Some(&json!({"id": "second"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let shared = Arc::new(Shared::default());
    let started = Instant::now();

    let ids: Vec<String> = (0..agents_n).map(|i| format!("ag{i:03}")).collect();
    let mut desks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let agent = h.create_agent(id, CAPACITY, &[]).await;
        let desk = Desk {
            id: id.clone(),
            url: h.agent_ws_url(&agent),
            others: ids.iter().filter(|o| *o != id).cloned().collect(),
            rng: StdRng::seed_from_u64(i as u64),
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
        let (http, base, admin, shared) = (
            h.http.clone(),
            h.url("/v1/agents"),
            h.admin.clone(),
            shared.clone(),
        );
        tokio::spawn(async move {
            while !shared.sampler_stop.load(Ordering::SeqCst) {
                let agents: Value = http
                    .get(&base)
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .expect("GET /v1/agents")
                    .json()
                    .await
                    .expect("agents json");
                for a in agents.as_array().into_iter().flatten() {
                    if a["load"]["webchat"].as_u64() > a["capacity"]["webchat"].as_u64() {
                        shared.violation(format!("over capacity: {a}"));
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // A supervisor completing assigned tasks now and then, whatever their
    // agents are doing with them (a transfer pending, an end on its way).
    let supervisor = {
        let (http, base, admin, shared) =
            (h.http.clone(), h.url(""), h.admin.clone(), shared.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            while shared.phase() == 0 {
                sleep(Duration::from_millis(200)).await;
                let Ok(r) = http
                    .get(format!("{base}/v1/tasks?state=assigned"))
                    .bearer_auth(&admin)
                    .send()
                    .await
                else {
                    continue;
                };
                let tasks: Value = r.json().await.expect("tasks json");
                let Some(list) = tasks.as_array().filter(|l| !l.is_empty()) else {
                    continue;
                };
                let task = s(&list[rng.random_range(0..list.len())]["id"]);
                let r = http
                    .post(format!("{base}/v1/tasks/{task}/complete"))
                    .bearer_auth(&admin)
                    .json(&json!({"disposition": "spam", "notes": "closed by the supervisor"}))
                    .send()
                    .await
                    .expect("POST complete");
                // It may have moved since the list: refused, never broken.
                match r.status().as_u16() {
                    200 => {
                        shared.force_completes.fetch_add(1, Ordering::Relaxed);
                    }
                    404 | 409 => {}
                    other => shared.violation(format!(
                        "force-complete of {task}: {other} {}",
                        r.text().await.unwrap_or_default()
                    )),
                }
            }
        })
    };

    let convs = Arc::new(Mutex::new(Vec::new()));
    let mut customers = Vec::new();
    for i in 0..conversations_n {
        let session = h.create_session(&format!("C{i}"), None).await;
        customers.push(tokio::spawn(customer(
            h.customer_ws_url(&session),
            shared.clone(),
            1000 + i as u64,
            convs.clone(),
        )));
    }

    sleep(
        CHAOS
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(3)),
    )
    .await;

    // Pause: nobody acts; once what is in flight has landed, the router and
    // every conversation agree on who holds each assigned task.
    shared.phase.store(1, Ordering::SeqCst);
    supervisor.await.expect("supervisor");
    sleep(Duration::from_millis(1500)).await;
    let tasks = h.admin_get_ok("/v1/tasks?state=assigned").await;
    let mut checked = 0;
    for t in tasks.as_array().into_iter().flatten() {
        let conv = h.conversation(&s(&t["conversation_id"])).await;
        assert!(
            t["agent_id"].is_string(),
            "an assigned task with no holder: {t}"
        );
        assert_eq!(
            conv["agent_id"], t["agent_id"],
            "router and conversation disagree on the holder: {t} / {conv}"
        );
        assert_eq!(conv["task"]["state"], "assigned", "{conv}");
        checked += 1;
    }

    // Drain: every conversation is ended and wrapped up.
    shared.phase.store(2, Ordering::SeqCst);
    let deadline = started + run_timeout;
    while shared.customers_done.load(Ordering::SeqCst) < conversations_n {
        assert!(
            Instant::now() < deadline,
            "drain: {} of {conversations_n} conversations ended; open tasks: {}",
            shared.customers_done.load(Ordering::SeqCst),
            h.admin_get_ok("/v1/tasks").await
        );
        sleep(Duration::from_millis(100)).await;
    }
    loop {
        let open = h.admin_get_ok("/v1/tasks").await;
        if open.as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "tasks still open: {open}");
        sleep(Duration::from_millis(100)).await;
    }
    shared.sampler_stop.store(true, Ordering::SeqCst);
    shared.phase.store(3, Ordering::SeqCst);
    sampler.await.expect("sampler");
    for c in customers {
        c.await.expect("customer");
    }

    let convs = convs.lock().expect("lock").clone();
    assert_eq!(convs.len(), conversations_n);
    for id in &convs {
        let v = h.conversation(id).await;
        let state = v["task"]["state"].as_str().unwrap_or_default().to_owned();
        assert!(
            state == "completed" || state == "canceled",
            "conversation {id} not final: {v}"
        );
    }
    let agents = h.admin_get_ok("/v1/agents").await;
    for a in agents.as_array().into_iter().flatten() {
        assert_eq!(a["load"]["webchat"], 0, "capacity not given back: {a}");
    }
    let violations = shared.violations.lock().expect("lock").clone();
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    for d in desks {
        d.await.expect("desk");
    }
    let (t, w, p, e, d, f) = (
        shared.transfers.load(Ordering::Relaxed),
        shared.warm.load(Ordering::Relaxed),
        shared.parks.load(Ordering::Relaxed),
        shared.ends_mid_transfer.load(Ordering::Relaxed),
        shared.disconnects.load(Ordering::Relaxed),
        shared.force_completes.load(Ordering::Relaxed),
    );
    eprintln!(
        "{agents_n} agents, {conversations_n} conversations: cold transfers {t}, warm {w}, \
         parks {p}, ends mid-transfer {e}, disconnects {d}, force-completes {f}, \
         holders checked {checked}, in {:?}",
        started.elapsed()
    );
    // The run did what it is about.
    assert!(t > 20 && w > 20 && p > 10 && e > 0 && d > 0 && f > 0 && checked > 0);
}

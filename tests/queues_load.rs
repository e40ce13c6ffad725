//! Queues under concurrency, over real sockets: 500 agent desks and 5,000
//! webchat tasks across 5 queues of mixed priorities, the agents rejecting
//! some offers and letting others time out at random. Checks: no task
//! assigned to two agents, no agent ever holding more than its capacity, every
//! task completed, the broker's stats equal to the test's own count, and the
//! order of offers within each queue.
//!
//! The order, from what desks see. Each offer travels router → the task's
//! conversation (on its own worker thread) → the desk, so the order in which
//! 500 desks *receive* offers is not the order the router made them; each
//! `task.offered` carries the router's offer number, which is. With it the
//! test replays the router's decisions: a task that was never offered is
//! waiting (all 5,000 wait before any agent is available) and eligible for
//! every agent (no skills, one channel, no declines yet), and with `aging`
//! above zero a task of the same queue created in an earlier millisecond has
//! a better place (`waiting_since`, to the millisecond, is in the payload).
//! So no offer of a task may come before the first offer of an older task of
//! its queue and priority ([`check_order`]). Ties within one millisecond are
//! broken by arrival, which desks cannot see, and are not judged. The rest of
//! the rule (declined tasks, cool-downs) is checked exactly where it is
//! decided: `src/router/props.rs` and `tests/queues.rs`.
//!
//! The 5,000 tasks are all waiting before any agent is available, so the
//! router hands out a deep, mixed queue. Customers close their socket once
//! their message is acknowledged (the customer grace is long), so the test
//! holds about 500 sockets, not 5,500.
//!
//! Self-contained: a lean WebSocket client, shared counters so a timeout says
//! how far the run got.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::Config;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const AGENTS: usize = 500;
const TASKS: usize = 5_000;
const CAPACITY: usize = 2;
const QUEUES: [(&str, u8); 5] = [("q0", 0), ("q1", 10), ("q2", 20), ("q3", 0), ("q4", 10)];
const ADMIN: &str = "queues-load-admin-token-0123456789abcdef";
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Default)]
struct Shared {
    sessions: AtomicUsize,
    completed: AtomicUsize,
    rejected: AtomicUsize,
    ignored: AtomicUsize,
    /// Accepts and rejects that arrived after their offer timed out.
    late: AtomicUsize,
    /// Tasks offered at least once.
    offered: Mutex<HashSet<String>>,
    /// task → agents it was assigned to.
    assigned: Mutex<HashMap<String, Vec<String>>>,
    /// Every offer desks received.
    offers: Mutex<Vec<Offer>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < 20 {
                errors.push(e);
            }
        }
    }
}

/// A `task.offered` as a desk received it.
#[derive(Clone, Debug)]
struct Offer {
    /// The router's offer number.
    number: u64,
    task: String,
    queue: String,
    priority: u64,
    /// `waiting_since` in milliseconds since the epoch.
    since_ms: u128,
    agent: String,
}

impl Offer {
    fn read(v: &Value, agent: &str) -> Result<Offer, String> {
        let t = &v["task"];
        let since = t["waiting_since"].as_str().unwrap_or_default();
        let since_ms = humantime::parse_rfc3339(since)
            .map_err(|e| format!("waiting_since {since:?}: {e}"))?
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_millis();
        Ok(Offer {
            number: v["offer"].as_u64().ok_or(format!("no offer number: {v}"))?,
            task: t["id"].as_str().unwrap_or_default().to_owned(),
            queue: t["queue"].as_str().unwrap_or_default().to_owned(),
            priority: t["priority"].as_u64().ok_or(format!("no priority: {v}"))?,
            since_ms,
            agent: agent.to_owned(),
        })
    }
}

/// One task of a (queue, priority) line: waiting since (ms), first offer
/// number, id.
type Line<'a> = (u128, u64, &'a str);

/// Offers that broke the order: an offer of a task of (queue, priority)
/// made while an older task of the same (queue, priority) — created in an
/// earlier millisecond — had not been offered to anyone yet. Meant for a
/// run where every task waits before the first offer and any agent may take
/// any task it has not declined.
fn check_order(offers: &[Offer]) -> Vec<String> {
    let mut first: HashMap<&str, &Offer> = HashMap::new();
    for o in offers {
        let f = first.entry(&o.task).or_insert(o);
        if o.number < f.number {
            *f = o;
        }
    }
    // Per (queue, priority): (waiting_since, first offer number, task), oldest
    // first, and the latest first offer among each prefix.
    let mut lines: BTreeMap<(&str, u64), Vec<Line<'_>>> = BTreeMap::new();
    for f in first.values() {
        lines
            .entry((f.queue.as_str(), f.priority))
            .or_default()
            .push((f.since_ms, f.number, f.task.as_str()));
    }
    // `latest[k]`: the latest first offer among the `k` oldest of a line.
    let mut latest: HashMap<(&str, u64), Vec<(u64, &str)>> = HashMap::new();
    for (key, line) in lines.iter_mut() {
        line.sort_unstable();
        let mut prefix = vec![(0, "")];
        for &(_, number, task) in line.iter() {
            let before = prefix[prefix.len() - 1];
            prefix.push(if number > before.0 {
                (number, task)
            } else {
                before
            });
        }
        latest.insert(*key, prefix);
    }
    let mut broken = Vec::new();
    for o in offers {
        let key = (o.queue.as_str(), o.priority);
        let (Some(line), Some(prefix)) = (lines.get(&key), latest.get(&key)) else {
            continue;
        };
        // How many tasks of the line were created in an earlier millisecond.
        let older = line.partition_point(|&(since, _, _)| since < o.since_ms);
        let (number, task) = prefix[older];
        if number > o.number {
            broken.push(format!(
                "offer {} of {} ({} priority {}, to {}) came before the first offer ({number}) of the older {task}",
                o.number, o.task, o.queue, o.priority, o.agent
            ));
        }
    }
    broken
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), String> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

async fn recv(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| e.to_string())
            }
            Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        }
    }
}

/// A tiny deterministic generator per agent (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One desk: rejects about 1 in 10 offers, ignores about 1 in 20 (they time
/// out), accepts the rest and ends and completes them at once.
async fn run_agent(id: String, mut ws: Ws, shared: Arc<Shared>, mut rng: Rng) {
    let mut holding: HashSet<String> = HashSet::new();
    let mut n = 0u64;
    if let Err(e) = send(&mut ws, json!({"type":"activity","activity":"available"})).await {
        shared.fail(format!("{id}: {e}"));
    }
    while shared.completed.load(Ordering::Relaxed) < TASKS
        && shared.errors.lock().map_or(true, |e| e.is_empty())
    {
        let v = tokio::select! {
            v = recv(&mut ws) => v,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                shared.fail(format!("{id}: {e}"));
                break;
            }
        };
        let task = v["task"]["id"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str().unwrap_or_default() {
            "task.offered" => {
                match Offer::read(&v, &id) {
                    Ok(o) => shared.offers.lock().unwrap().push(o),
                    Err(e) => shared.fail(format!("{id}: {e}")),
                }
                holding.insert(task.clone());
                if holding.len() > CAPACITY {
                    shared.fail(format!("{id} holds {holding:?}, over its capacity"));
                }
                if let Ok(mut offered) = shared.offered.lock() {
                    offered.insert(task.clone());
                }
                n += 1;
                match rng.below(20) {
                    0 | 1 => {
                        // The router forgets it at once: so does the desk.
                        holding.remove(&task);
                        shared.rejected.fetch_add(1, Ordering::Relaxed);
                        let r = format!("rj{n}");
                        let cmd = json!({"type":"reject","task_id":task,"ref":r});
                        if let Err(e) = send(&mut ws, cmd).await {
                            shared.fail(format!("{id}: {e}"));
                        }
                    }
                    2 => {
                        shared.ignored.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        let cmd = json!({"type":"accept","task_id":task});
                        if let Err(e) = send(&mut ws, cmd).await {
                            shared.fail(format!("{id}: {e}"));
                        }
                    }
                }
            }
            "task.assigned" => {
                shared
                    .assigned
                    .lock()
                    .unwrap()
                    .entry(task)
                    .or_default()
                    .push(id.clone());
                let conv = v["task"]["conversation_id"].clone();
                if let Err(e) = send(&mut ws, json!({"type":"end","conversation_id":conv})).await {
                    shared.fail(format!("{id}: {e}"));
                }
            }
            "conversation.ended" => {
                let task = v["task_id"].clone();
                let cmd = json!({"type":"complete","task_id":task,"disposition":"resolved"});
                if let Err(e) = send(&mut ws, cmd).await {
                    shared.fail(format!("{id}: {e}"));
                }
            }
            "task.completed" => {
                holding.remove(v["task_id"].as_str().unwrap_or_default());
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            "task.rescinded" => {
                holding.remove(v["task_id"].as_str().unwrap_or_default());
            }
            // An accept or reject that crossed its offer's timeout: the
            // offer is gone (the desk gets `task.rescinded`).
            "error" if v["code"] == "not_your_task" || v["code"] == "invalid_state" => {
                shared.late.fetch_add(1, Ordering::Relaxed);
            }
            "error" => shared.fail(format!("{id}: {v}")),
            _ => {}
        }
    }
    // An offer that timed out unread may still be on its way to this desk
    // after the last task completed elsewhere: read what is left, so the
    // order check sees every offer the router made.
    while let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(1), recv(&mut ws)).await {
        if v["type"] == "task.offered" {
            match Offer::read(&v, &id) {
                Ok(o) => shared.offers.lock().unwrap().push(o),
                Err(e) => shared.fail(format!("{id}: {e}")),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_tasks_in_five_queues_through_five_hundred_agents() {
    let mut cfg = Config::for_tests();
    cfg.admin_token = Some(ADMIN.into());
    // Tasks of one queue ordered by `waiting_since`, which desks see (with no
    // aging, by arrival at the router, which they do not): see the module doc.
    cfg.aging = 1;
    cfg.offer_timeout = Duration::from_secs(1);
    cfg.reoffer_cooldown = Duration::from_millis(200);
    cfg.customer_grace = Duration::from_secs(3600);
    // Ignored offers are random here, not an agent gone quiet.
    cfg.max_missed_offers = 0;
    let srv = switchboard::server::spawn(cfg).expect("server starts");
    let base = srv.base_url();
    let ws_base = srv.ws_url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let shared = Arc::new(Shared::default());

    let run = async {
        for (id, priority) in QUEUES {
            let r = http
                .post(format!("{base}/v1/queues"))
                .bearer_auth(ADMIN)
                .json(&json!({"id": id, "priority": priority}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        // Desks connect (offline until they say otherwise).
        let mut desks = Vec::new();
        for i in 0..AGENTS {
            let id = format!("ag{i:03}");
            let r: Value = http
                .post(format!("{base}/v1/agents"))
                .bearer_auth(ADMIN)
                .json(&json!({"id": id, "capacity": {"webchat": CAPACITY}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = r["token"].as_str().expect("token").to_owned();
            let url = format!("{ws_base}/v1/agents/{id}/ws?token={token}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("desk");
            let hello = recv(&mut ws).await.expect("hello");
            assert_eq!(hello["type"], "hello");
            desks.push((id, ws));
        }
        // Every task waits before anyone is available.
        let gate = Arc::new(Semaphore::new(64));
        let mut customers = Vec::new();
        for i in 0..TASKS {
            let (http, base, ws_base, gate, shared) = (
                http.clone(),
                base.clone(),
                ws_base.clone(),
                gate.clone(),
                shared.clone(),
            );
            customers.push(tokio::spawn(async move {
                let _permit = gate.acquire().await.unwrap();
                let queue = QUEUES[i % QUEUES.len()].0;
                let r: Value = http
                    .post(format!("{base}/v1/webchat/sessions"))
                    .json(&json!({"name": format!("C{i}"), "queue": queue}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let token = r["token"].as_str().expect("session token").to_owned();
                let url = format!("{ws_base}/v1/webchat/ws?token={token}");
                let (mut ws, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .expect("customer");
                send(
                    &mut ws,
                    json!({"type":"message","text":"hi","client_msg_id":"m1"}),
                )
                .await
                .unwrap();
                loop {
                    let v = recv(&mut ws).await.expect("ack");
                    if v["type"] == "ack" {
                        break;
                    }
                }
                let _ = ws.close(None).await;
                shared.sessions.fetch_add(1, Ordering::Relaxed);
            }));
        }
        for c in customers {
            c.await.expect("customer task");
        }
        // All 5,000 wait.
        loop {
            let s: Value = http
                .get(format!("{base}/v1/stats"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["queue"]["length"] == TASKS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let agents: Vec<_> = desks
            .into_iter()
            .enumerate()
            .map(|(i, (id, ws))| {
                tokio::spawn(run_agent(id, ws, shared.clone(), Rng(i as u64 * 7919 + 17)))
            })
            .collect();
        for a in agents {
            a.await.expect("agent task");
        }
    };
    match tokio::time::timeout(RUN_TIMEOUT, run).await {
        Ok(()) => {}
        Err(_) => panic!(
            "timed out: {} sessions, {} completed, {} offered, errors {:?}",
            shared.sessions.load(Ordering::Relaxed),
            shared.completed.load(Ordering::Relaxed),
            shared.offered.lock().unwrap().len(),
            shared.errors.lock().unwrap()
        ),
    }
    let errors = shared.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(shared.rejected.load(Ordering::Relaxed) > 0);
    assert!(shared.ignored.load(Ordering::Relaxed) > 0);

    // No double assignment; every task assigned once and completed.
    {
        let assigned = shared.assigned.lock().unwrap();
        assert_eq!(assigned.len(), TASKS);
        for (task, agents) in assigned.iter() {
            assert_eq!(agents.len(), 1, "{task} assigned to {agents:?}");
        }
    }
    assert_eq!(shared.completed.load(Ordering::Relaxed), TASKS);
    assert_eq!(shared.offered.lock().unwrap().len(), TASKS);

    // Every offer the router made reached a desk once (numbers 1..=n, none
    // twice), so the order check below sees each task's first offer.
    let offers = shared.offers.lock().unwrap().clone();
    let mut numbers: Vec<u64> = offers.iter().map(|o| o.number).collect();
    numbers.sort_unstable();
    let expected: Vec<u64> = (1..=offers.len() as u64).collect();
    assert!(
        numbers == expected,
        "offer numbers are not 1..={}: {:?}…",
        offers.len(),
        &numbers[..numbers.len().min(20)]
    );
    // Within each queue, oldest first.
    let broken = check_order(&offers);
    assert!(
        broken.is_empty(),
        "{} offers out of order: {:#?}",
        broken.len(),
        &broken[..broken.len().min(10)]
    );

    // The broker's counts equal the test's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s: Value = http
            .get(format!("{base}/v1/stats"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let settled = s["tasks"]["completed"] == TASKS
            && s["tasks"]["canceled"] == 0
            && s["tasks"]["queued"] == 0
            && s["queue"]["length"] == 0;
        if settled {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stats: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(srv);
}

/// The order check itself: it finds an offer made while an older task of the
/// same queue had not been offered, and nothing else.
#[test]
fn the_order_check_finds_an_offer_made_before_an_older_tasks_first_offer() {
    let offer = |number, task: &str, queue: &str, since_ms| Offer {
        number,
        task: task.into(),
        queue: queue.into(),
        priority: 0,
        since_ms,
        agent: "ag".into(),
    };
    let in_order = vec![
        offer(1, "a", "q0", 10),
        offer(2, "x", "q1", 5),
        offer(3, "b", "q0", 20),
        // `a` again after a decline: a new, later offer of an older task.
        offer(4, "a", "q0", 10),
        // Same millisecond: arrival decides, which desks cannot see.
        offer(5, "d", "q0", 30),
        offer(6, "c", "q0", 30),
    ];
    assert!(
        check_order(&in_order).is_empty(),
        "{:?}",
        check_order(&in_order)
    );
    let skipped = vec![
        offer(1, "b", "q0", 20),
        offer(2, "x", "q1", 5),
        offer(3, "a", "q0", 10),
    ];
    let broken = check_order(&skipped);
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(broken[0].starts_with("offer 1 of b"), "{broken:?}");
    // A priority change between offers is a different line, not a skip.
    let mut moved = skipped.clone();
    moved[2].priority = 5;
    assert!(check_order(&moved).is_empty());
}

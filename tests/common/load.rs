//! A load of desks and webchat customers against a broker that is going to
//! die (a `kill -9`, a failover), and the checks made once a broker serves
//! the same data again: every acknowledged message stored exactly once at
//! its `seq`, no conversation held by two desks, life cycles that go on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::{assert_gap_free, s, Agent, Harness, Session, Ws};

/// What a client was told was stored: by conversation, `client_msg_id` →
/// `seq`.
pub type Acked = BTreeMap<String, BTreeMap<String, u64>>;

/// One customer's run: its session, its conversation (once an ack named
/// it) and every ack it got, in order.
pub type CustomerRun = (Session, Option<String>, Vec<(String, u64)>);

/// How long a customer waits for an ack before it takes the broker for
/// gone, and a desk waits for anything before it stops.
const PATIENCE: Duration = Duration::from_secs(5);

/// One customer: opens a conversation and sends `n` messages, each after
/// the previous one's ack, recording every ack; stops at the first failure
/// (the broker died, or answered nothing within [`PATIENCE`]). Before the
/// test has marked the broker `gone`, a failure to create the session or to
/// connect is a failure of the test; after, it ends the customer (None when
/// it got no session).
pub async fn customer(
    h: &Harness,
    i: usize,
    n: usize,
    count: &AtomicUsize,
    gone: &AtomicBool,
) -> Option<CustomerRun> {
    let fail = |what: String| {
        assert!(gone.load(Ordering::SeqCst), "customer c{i}: {what}");
    };
    let created = h
        .http
        .post(h.url("/v1/webchat/sessions"))
        .json(&json!({ "name": format!("c{i}") }))
        .send()
        .await;
    let body: Value = match created {
        Ok(r) if r.status() == 201 => r.json().await.unwrap_or(Value::Null),
        Ok(r) => {
            fail(format!("creating the session: {}", r.status()));
            return None;
        }
        Err(e) => {
            fail(format!("creating the session: {e}"));
            return None;
        }
    };
    let session = Session {
        id: s(&body["session_id"]),
        token: s(&body["token"]),
        name: format!("c{i}"),
    };
    let mut acks = Vec::new();
    let mut conv = None;
    let mut ws = match connect(&h.customer_ws_url(&session)).await {
        Ok(ws) => ws,
        Err(e) => {
            fail(format!("connecting: {e}"));
            return Some((session, conv, acks));
        }
    };
    for k in 0..n {
        let id = format!("c{i}-{k}");
        let sent = ws
            .try_send(json!({"type": "message", "text": format!("m{k}"), "client_msg_id": id}))
            .await;
        if !sent {
            break;
        }
        let deadline = Instant::now() + PATIENCE;
        let ack = loop {
            match ws
                .try_recv_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(v) if v["type"] == "ack" => break Some(v),
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(ack) = ack else { break };
        conv = ack["conversation_id"].as_str().map(str::to_owned).or(conv);
        acks.push((id, ack["seq"].as_u64().expect("ack seq")));
        count.fetch_add(1, Ordering::Relaxed);
    }
    Some((session, conv, acks))
}

/// A WebSocket handshake within [`PATIENCE`]; any failure (refused, reset,
/// no answer from a paused process) is an error, not a panic.
async fn connect(url: &str) -> Result<Ws, String> {
    let handshake = tokio_tungstenite::connect_async(url);
    match tokio::time::timeout(PATIENCE, handshake).await {
        Ok(Ok((inner, _))) => Ok(Ws {
            inner,
            pending: Default::default(),
            closed: None,
            seen: Vec::new(),
        }),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {PATIENCE:?}")),
    }
}

/// What a load's desks do with the tasks they accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Desks {
    /// Keep every one.
    Keep,
    /// Of every four accepted, park one (its customer's next message brings
    /// it back) and send one back to the `default` queue (a cold transfer):
    /// a fault then also falls in the middle of those moves, each recorded
    /// by the router first and by the conversation second.
    Move,
}

/// A desk that accepts whatever it is offered until its socket closes or
/// nothing comes for [`PATIENCE`]; how many it accepted. Each task it parked
/// or transferred (the broker's answer) is counted in `moved`.
pub async fn accepting_desk(mut desk: Ws, desks: Desks, moved: Arc<AtomicUsize>) -> usize {
    let mut accepted = 0usize;
    while let Some(v) = desk.try_recv_within(PATIENCE).await {
        if (v["type"] == "task.parked" || v["type"] == "task.transferred")
            && v["ref"].as_str().is_some_and(|r| r.starts_with("move-"))
        {
            moved.fetch_add(1, Ordering::Relaxed);
        }
        let command = if v["type"] == "task.offered" {
            accepted += 1;
            json!({"type": "accept", "task_id": v["task"]["id"], "ref": format!("accept-{accepted}")})
        } else if desks == Desks::Move
            && v["type"] == "task.assigned"
            && v["ref"].as_str().is_some_and(|r| r.starts_with("accept-"))
        {
            let task = &v["task"]["id"];
            let r = format!("move-{accepted}");
            match accepted % 4 {
                1 => json!({"type": "park", "task_id": task, "ref": r}),
                2 => json!({
                    "type": "transfer", "task_id": task, "to": {"queue": "default"},
                    "mode": "cold", "note": "back to the queue", "ref": r,
                }),
                _ => continue,
            }
        } else {
            continue;
        };
        if !desk.try_send(command).await {
            break;
        }
    }
    accepted
}

/// Desks accepting everything and customers each sending `messages`
/// messages, all running as tasks against one broker.
pub struct Load {
    pub agents: Vec<Agent>,
    /// Each agent's webchat capacity.
    pub capacity: u64,
    /// Messages acknowledged so far, by every customer together.
    pub acked: Arc<AtomicUsize>,
    /// Set by [`Load::broker_gone`]: failures are expected from then on.
    gone: Arc<AtomicBool>,
    pub customers: usize,
    pub messages: usize,
    desks: Vec<JoinHandle<usize>>,
    /// Tasks the desks parked or transferred so far.
    moved: Arc<AtomicUsize>,
    runs: Vec<JoinHandle<Option<CustomerRun>>>,
}

/// A customer as a [`Load`] left it.
pub struct Customer {
    /// Its number: its messages' `client_msg_id`s are `c<index>-<k>`.
    pub index: usize,
    pub session: Session,
    /// Its conversation, once an ack named it.
    pub conv: Option<String>,
    /// How many of its messages were acknowledged (the first ones).
    pub acked: usize,
}

/// What a [`Load`] left: every customer that got a session, and every ack.
pub struct Outcome {
    pub customers: Vec<Customer>,
    pub acked: Acked,
    /// How many messages each customer meant to send.
    pub messages: usize,
    /// Tasks the desks parked or transferred ([`Desks::Move`]).
    pub moved: usize,
}

impl Outcome {
    /// How many messages were acknowledged.
    pub fn total(&self) -> usize {
        self.acked.values().map(BTreeMap::len).sum()
    }
}

impl Load {
    /// Create `agents` agents of `capacity` (named `a0`, `a1`, …), bring
    /// their desks online, then start `customers` customers.
    pub async fn start(
        h: &Harness,
        agents: usize,
        capacity: u64,
        customers: usize,
        messages: usize,
    ) -> Load {
        Load::start_named(h, "a", Desks::Keep, agents, capacity, customers, messages).await
    }

    /// As [`Load::start`], the agents named `<prefix>0`, `<prefix>1`, …
    /// (several loads against one broker), their desks doing `desks`.
    pub async fn start_named(
        h: &Harness,
        prefix: &str,
        desks_do: Desks,
        agents: usize,
        capacity: u64,
        customers: usize,
        messages: usize,
    ) -> Load {
        let mut created = Vec::new();
        for a in 0..agents {
            created.push(h.create_agent(&format!("{prefix}{a}"), capacity, &[]).await);
        }
        let mut desks = Vec::new();
        let moved = Arc::new(AtomicUsize::new(0));
        for agent in &created {
            desks.push(tokio::spawn(accepting_desk(
                h.agent_online(agent).await,
                desks_do,
                moved.clone(),
            )));
        }
        let acked = Arc::new(AtomicUsize::new(0));
        let gone = Arc::new(AtomicBool::new(false));
        let mut runs = Vec::new();
        for i in 0..customers {
            let (base, admin) = (h.base.clone(), h.admin.clone());
            let (count, gone) = (acked.clone(), gone.clone());
            runs.push(tokio::spawn(async move {
                let h = Harness::external(&base, &admin);
                customer(&h, i, messages, &count, &gone).await
            }));
        }
        Load {
            agents: created,
            capacity,
            acked,
            gone,
            customers,
            messages,
            desks,
            moved,
            runs,
        }
    }

    /// The broker is about to be killed, paused or cut off: from now on a
    /// customer that cannot create its session or connect just stops.
    pub fn broker_gone(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    /// Wait until the desks have parked or transferred a task (or `within`
    /// passed); whether they have.
    pub async fn wait_moved(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.moved.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.moved.load(Ordering::Relaxed) > 0
    }

    /// Messages acknowledged so far.
    pub fn acked_now(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Wait until `n` messages are acknowledged (or `within` passed, or every
    /// customer is done); how many are.
    pub async fn wait_acked(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while self.acked_now() < n
            && Instant::now() < deadline
            && self.runs.iter().any(|r| !r.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.acked_now()
    }

    /// Wait for every customer and desk to stop; what they were told.
    pub async fn finish(self) -> Outcome {
        let mut customers = Vec::new();
        let mut acked: Acked = BTreeMap::new();
        for (index, run) in self.runs.into_iter().enumerate() {
            let Some((session, conv, acks)) = run.await.expect("customer task") else {
                continue;
            };
            customers.push(Customer {
                index,
                session,
                conv: conv.clone(),
                acked: acks.len(),
            });
            if let Some(conv) = conv {
                acked.entry(conv).or_default().extend(acks);
            }
        }
        for desk in self.desks {
            let _ = desk.await;
        }
        Outcome {
            moved: self.moved.load(Ordering::Relaxed),
            customers,
            acked,
            messages: self.messages,
        }
    }
}

/// Every acknowledged message is stored exactly once, at the `seq` its ack
/// gave; each conversation's `seq`s run 1..n without gaps; no
/// `client_msg_id` is stored twice.
pub async fn assert_acked_stored_once(h: &Harness, acked: &Acked) {
    for (conv, acks) in acked {
        let messages = h.messages(conv).await;
        let list = messages["messages"].as_array().expect("messages");
        assert_gap_free(&messages["messages"]);
        let mut seen = BTreeSet::new();
        for m in list {
            let id = m["client_msg_id"].as_str().unwrap_or_default().to_owned();
            assert!(seen.insert(id.clone()), "{conv}: {id} stored twice");
        }
        for (id, seq) in acks {
            let stored: Vec<&Value> = list
                .iter()
                .filter(|m| m["client_msg_id"] == id.as_str())
                .collect();
            assert_eq!(
                stored.len(),
                1,
                "{conv}: acknowledged {id} not stored exactly once"
            );
            assert_eq!(stored[0]["seq"].as_u64(), Some(*seq), "{conv}: {id} moved");
        }
    }
}

/// The offer of `conv` at any of `desks` within `within`: the desk's index
/// and the offer (other frames are kept).
async fn offer_of(desks: &mut [Ws], conv: &str, within: Duration) -> Option<(usize, Value)> {
    let deadline = Instant::now() + within;
    let offered = |v: &Value| v["type"] == "task.offered" && v["task"]["conversation_id"] == conv;
    while Instant::now() < deadline {
        for (a, desk) in desks.iter_mut().enumerate() {
            if let Some(v) = desk
                .try_recv_where_within(Duration::from_millis(10), offered)
                .await
            {
                return Some((a, v));
            }
        }
    }
    None
}

/// The desks, reconnected: each agent's socket, and which agent holds which
/// conversation (conversation → (agent index, task)). Asserts that no agent
/// holds more than its capacity and no conversation is held twice.
pub async fn reconnect_desks(
    h: &Harness,
    agents: &[Agent],
    capacity: u64,
) -> (Vec<Ws>, BTreeMap<String, (usize, Value)>) {
    let mut desks = Vec::new();
    let mut held: BTreeMap<String, (usize, Value)> = BTreeMap::new();
    for (a, agent) in agents.iter().enumerate() {
        let (desk, hello) = h.connect_agent(agent).await;
        let tasks = hello["tasks"].as_array().cloned().unwrap_or_default();
        assert!(
            tasks.len() as u64 <= capacity,
            "{} holds {} tasks: {hello}",
            agent.id,
            tasks.len()
        );
        for task in tasks {
            let conv = s(&task["conversation_id"]);
            if let Some((other, before)) = held.insert(conv.clone(), (a, task.clone())) {
                panic!(
                    "{conv} is held by both {} ({before}) and {} ({task})",
                    agents[other].id, agent.id
                );
            }
        }
        desks.push(desk);
    }
    (desks, held)
}

/// After the broker came back (restarted, or another node took over):
/// everything acknowledged is stored once; every desk reconnects with no
/// conversation held twice; every customer reconnects with the same token,
/// finds its conversation, and sends again the message whose ack it was
/// waiting for (the same `client_msg_id`: stored once, whether it had been
/// stored before or not); and `life_cycles` conversations go on to the end
/// with a desk: a message each way, end, wrap-up with a disposition,
/// completed. A conversation a desk holds goes on with it; one no desk
/// holds (its assignment was not copied before the fault, so its task is
/// back in the queue) is offered again to the desks, now available, and
/// goes on with the desk that takes it.
pub async fn assert_recovered(
    h: &Harness,
    load: &Outcome,
    agents: &[Agent],
    capacity: u64,
    life_cycles: usize,
) {
    assert_acked_stored_once(h, &load.acked).await;
    let (mut desks, held) = reconnect_desks(h, agents, capacity).await;
    for desk in &mut desks {
        desk.set_activity("available").await;
    }
    let mut acked = load.acked.clone();
    let mut done = 0;
    for customer in &load.customers {
        let (i, conv, sent) = (customer.index, &customer.conv, &customer.acked);
        let (mut ws, history) = h.connect_customer(&customer.session).await;
        if let Some(conv) = conv {
            assert_eq!(history["conversation_id"], conv.as_str(), "{history}");
        }
        // The last message this customer knows is stored: the last one
        // acknowledged, or the one sent again now.
        let mut last = conv.as_ref().and_then(|conv| {
            let id = format!("c{i}-{}", sent.checked_sub(1)?);
            Some((conv.clone(), load.acked[conv][&id]))
        });
        if *sent < load.messages {
            let id = format!("c{i}-{sent}");
            let ack = ws.say_with_id(&format!("m{sent}"), &id).await;
            let resent_in = s(&ack["conversation_id"]);
            if let Some(conv) = conv {
                assert_eq!(&resent_in, conv, "{id} resent into another conversation");
            }
            let seq = ack["seq"].as_u64().expect("ack seq");
            acked.entry(resent_in.clone()).or_default().insert(id, seq);
            last = Some((resent_in, seq));
        }
        let Some((conv, seq)) = last else { continue };
        if done == life_cycles {
            continue;
        }
        let (a, task) = match held.get(&conv) {
            Some((a, task)) if task["state"] == "assigned" => (*a, task.clone()),
            Some(_) => continue,
            None => match offer_of(&mut desks, &conv, Duration::from_millis(500)).await {
                Some((a, offer)) => {
                    let assigned = desks[a].accept(&s(&offer["task"]["id"])).await;
                    (a, assigned["task"].clone())
                }
                None => continue,
            },
        };
        let text = format!("after the failover {i}");
        let ack = ws.say(&text).await;
        assert_eq!(ack["seq"].as_u64(), Some(seq + 1), "{ack}");
        let desk = &mut desks[a];
        desk.recv_message_text(&text).await;
        desk.agent_send(&conv, &format!("reply {i}"), &format!("r{i}"))
            .await;
        ws.recv_message_text(&format!("reply {i}")).await;
        desk.end(&conv).await;
        desk.complete(&s(&task["id"]), "resolved", "after the failover")
            .await;
        let completed = h.conversation(&conv).await;
        assert_eq!(completed["task"]["state"], "completed", "{completed}");
        assert_eq!(completed["disposition"], "resolved", "{completed}");
        done += 1;
    }
    let states: Vec<String> = held
        .iter()
        .map(|(conv, (a, task))| format!("{conv}: {} {}", agents[*a].id, task["state"]))
        .collect();
    assert_eq!(
        done, life_cycles,
        "fewer conversations than wanted were assigned to go on; the desks hold {states:?}"
    );
    // The resent messages too are stored once each.
    assert_acked_stored_once(h, &acked).await;
}

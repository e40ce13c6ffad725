//! What the router decides on, apart from the actor that runs it: the queue
//! definitions, the waiting and held tasks and every agent's routing state
//! ([`RouterState`]), every change made to them ([`RouterEvent`]),
//! [`RouterState::apply`], the one place they change, and the decisions read
//! from them: who gets a task ([`RouterState::pick`]) and which task a freed
//! agent gets ([`RouterState::best_task_for`]).
//!
//! Pure data, no actors, no clocks of its own: addresses, offer timers and
//! cool-down wake-ups are the router's wiring (`mod.rs`, `dispatch.rs`); the
//! time a decision is made at is an argument. So a replay of the events calls
//! the same `apply`, and the unit tests below drive it alone.
//!
//! Order. Waiting tasks sit in buckets, one per (queue, channel, skills
//! relaxed or not), each a `BTreeMap` by [`WaitKey`]. Effective priority is
//! `priority + aging × minutes waited`; since every task ages at the same
//! rate, comparing two tasks' effective priorities does not depend on when
//! one compares them, so `aging × waiting_since − priority × 1 minute` is a
//! fixed sort key (lower first; arrival order breaks ties). A task put back
//! after a decline keeps its key, so it goes back ahead of newer tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::index::{AgentIndex, Standing};
use super::queue::{Policy, Queue, DEFAULT_QUEUE};
use super::stats::{Outcome, Tally};
pub use crate::protocol::AgentCounts;
use crate::protocol::{
    Activity, AgentView, ChannelKind, Customer, Id, PerChannel, QueueStats, TaskState, TaskSummary,
    Transfer, TransferTarget,
};

/// A task waiting for, or held by, an agent: what the router needs to route it
/// and to put it back, and what supervisors see of it. (The conversation's
/// address is wiring, kept apart.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoutableTask {
    pub task_id: Id,
    pub conversation_id: Id,
    pub channel: ChannelKind,
    /// Skills this task needs besides its queue's.
    pub skills: Arc<[String]>,
    pub customer: Customer,
    pub queue: String,
    /// Its queue's priority (set by the router as it enters a queue).
    pub priority: u8,
    /// When the conversation was created: the task's `waiting_since`.
    pub created_at: SystemTime,
    /// When it entered its current queue (overflow counts from here).
    pub entered_queue_at: SystemTime,
    /// Overflowed by relaxing skills: any agent on the channel may take it.
    pub relaxed: bool,
    /// Arrival order: breaks ties of effective priority, kept across re-queues.
    pub order: u64,
    /// For the wait and routing-latency figures only.
    #[serde(skip, default = "Instant::now")]
    pub enqueued_at: Instant,
    /// Agents who rejected it or let its offer time out, oldest decline first
    /// (one entry per agent). Passed over while anyone else can take the task;
    /// offered it again `reoffer_cooldown` after their decline.
    pub declined: Vec<Decline>,
    pub offered_before: bool,
    /// Its transfers and parking (`transfers.rs`).
    #[serde(default)]
    pub handoff: Handoff,
}

#[cfg(test)]
impl RoutableTask {
    /// A webchat task in the default queue, for tests.
    pub(crate) fn sample(id: &str, order: u64) -> Self {
        RoutableTask {
            task_id: id.into(),
            conversation_id: format!("cv_{id}").as_str().into(),
            channel: ChannelKind::Webchat,
            skills: Arc::from(Vec::new()),
            customer: crate::protocol::samples::customer(),
            queue: crate::protocol::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            created_at: SystemTime::UNIX_EPOCH,
            entered_queue_at: SystemTime::UNIX_EPOCH,
            relaxed: false,
            order,
            enqueued_at: Instant::now(),
            declined: Vec::new(),
            offered_before: false,
            handoff: Default::default(),
        }
    }
}

/// What a task carries through transfers and parking: the transfer chain,
/// whether the latest transfer is still on its way to an agent (its offers
/// then carry it), and the agent to offer it to first (the one who parked
/// it, under the last-agent rule).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Handoff {
    pub transfers: Vec<Transfer>,
    pub in_transfer: bool,
    pub prefer: Option<Id>,
    /// When it last came back to a queue by a transfer or from parking:
    /// the queue's `max_wait` counts from here, not from its creation.
    pub requeued_at: Option<SystemTime>,
}

/// A warm transfer on offer: the task stays held by its agent while
/// `target` is offered it, with its capacity counted from the offer. Once
/// the target accepted (`accepted`), the router waits for the conversation
/// to make the move (or to have ended first).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Consult {
    pub target: Id,
    pub offer: u64,
    pub accepted: bool,
    pub transfer: Transfer,
}

/// A parked task: nobody holds it, no capacity counts; the customer's next
/// message or its time (the router's `parks` timer) puts it back in its
/// queue. `agent` parked it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParkedTask {
    pub task: RoutableTask,
    pub agent: Id,
    /// When it comes back by itself, if it does (its timer is armed again
    /// from this after a restart).
    pub until: Option<SystemTime>,
}

/// An agent declined a task (reject or offer timeout) at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decline {
    pub agent: Id,
    pub at: SystemTime,
}

impl RoutableTask {
    pub(super) fn declined_by(&self, agent: &Id) -> bool {
        self.declined.iter().any(|d| &d.agent == agent)
    }

    /// What supervisors see of it in `state`, held by `agent`.
    pub(super) fn summary(&self, state: TaskState, agent: Option<&Id>) -> TaskSummary {
        TaskSummary {
            id: self.task_id.clone(),
            conversation_id: self.conversation_id.clone(),
            channel: self.channel,
            customer: self.customer.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            state,
            agent_id: agent.cloned(),
            created_at: self.created_at,
            waiting_since: self.created_at,
            reason: None,
        }
    }

    fn bucket(&self) -> Bucket {
        Bucket {
            queue: self.queue.clone(),
            channel: self.channel,
            relaxed: self.relaxed,
        }
    }
}

/// Waiting tasks that share a queue, a channel and whether skills were relaxed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bucket {
    pub queue: String,
    pub channel: ChannelKind,
    pub relaxed: bool,
}

/// A waiting task's place: `aging × waiting_since(ms) − priority × 60,000`,
/// then arrival order. Lower first.
pub type WaitKey = (i64, u64);

/// What one routing decision makes: the offer, if any, as the
/// [`RouterEvent::Offered`] the caller applies (and so journals) before
/// deciding again, and the tasks only decliners in their cool-down could
/// take, with when the first cool-down ends. The decision changes nothing.
#[derive(Debug, Default)]
pub struct Routed {
    pub offer: Option<RouterEvent>,
    pub cooling: Vec<(Id, SystemTime)>,
}

/// Who, if anyone, should be offered a task now.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    Agent(Id),
    /// Only agents who declined it could take it, and the first of them may
    /// be offered it again at this time.
    CoolingDown(SystemTime),
    Nobody,
}

/// How a held task is held: offered (the offer's number, to match its
/// timer), assigned, or in wrap-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Hold {
    Reserved { offer: u64 },
    Assigned,
    Wrapping,
}

/// A task out of the queue: offered to, assigned to or wrapped up by `agent`.
#[derive(Serialize, Deserialize)]
pub(super) struct HeldTask {
    pub(super) task: RoutableTask,
    pub(super) agent: Id,
    pub(super) hold: Hold,
}

/// An agent as the router sees it. Its address is wiring, kept in the
/// router apart.
#[derive(Serialize, Deserialize)]
pub(super) struct RoutedAgent {
    pub(super) view: AgentView,
    /// Tick of its last offer (or of becoming available).
    pub(super) last_offer: u64,
    /// Tick its open work last dropped to none (or it became available).
    pub(super) idle_since: u64,
    /// Tasks this agent holds (reserved, assigned or wrapping).
    pub(super) held: Vec<Id>,
    /// Offers in a row that timed out.
    pub(super) missed: u32,
}

impl RoutedAgent {
    /// Free capacity on `ch`: its own cap there, and the `total` cap across
    /// channels if it has one.
    pub(super) fn free(&self, ch: ChannelKind) -> u32 {
        let cap = &self.view.capacity;
        let own = cap.get(ch).saturating_sub(self.view.load.get(ch));
        match cap.total {
            Some(total) => own.min(total.saturating_sub(self.view.load.sum())),
            None => own,
        }
    }

    fn eligible(&self, ch: ChannelKind) -> bool {
        self.view.connected && self.view.activity == Activity::Available && self.free(ch) > 0
    }

    fn has_skills(&self, skills: &[String]) -> bool {
        skills.iter().all(|s| self.view.skills.contains(s))
    }

    fn standing(&self) -> Standing {
        Standing {
            last_offer: self.last_offer,
            idle_since: self.idle_since,
            busy: !self.held.is_empty(),
        }
    }
}

/// Every change the router makes to its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RouterEvent {
    AgentUpserted {
        id: Id,
        name: String,
        capacity: PerChannel,
        skills: Vec<String>,
    },
    AgentRemoved {
        id: Id,
    },
    PresenceChanged {
        id: Id,
        connected: bool,
    },
    ActivityChanged {
        id: Id,
        activity: Activity,
    },
    /// A queue defined or changed: its waiting tasks take its priority at once.
    QueueUpserted {
        queue: Queue,
    },
    /// A queue with no waiting task removed.
    QueueRemoved {
        id: String,
    },
    Enqueued {
        task: RoutableTask,
        /// The router clock's time (`Config.clock`), which the statistics
        /// count by (as in every `clock_at`).
        clock_at: SystemTime,
    },
    /// A waiting task moved to another queue, or had its skills relaxed.
    Overflowed {
        task_id: Id,
        to: Option<String>,
        at: SystemTime,
    },
    Offered {
        task_id: Id,
        agent_id: Id,
        offer: u64,
    },
    Accepted {
        task_id: Id,
        clock_at: SystemTime,
    },
    /// Offer declined (reject/timeout) or assignment withdrawn: back to the queue.
    Requeued {
        task_id: Id,
        declined_by: Option<Id>,
        /// The decline was an offer timing out (counts towards
        /// `max_missed_offers`); a reject resets the count.
        missed: bool,
        at: SystemTime,
    },
    /// The conversation ended: wrap-up.
    Wrapping {
        task_id: Id,
        clock_at: SystemTime,
    },
    /// Completed, canceled, or dropped with its agent: no longer routed. An
    /// agent who held it is remembered as the customer's last agent (from
    /// `at`, the system time routing runs on).
    Closed {
        task_id: Id,
        at: SystemTime,
        outcome: Outcome,
        clock_at: SystemTime,
    },
    AssignedDirect {
        task_id: Id,
        agent_id: Id,
        channel: ChannelKind,
        customer: Customer,
        queue: String,
        at: SystemTime,
    },
    /// The outbound conversation behind a direct assignment exists.
    OutboundBound {
        task_id: Id,
        conversation_id: Id,
        customer: Customer,
    },
    /// A cold transfer: its agent lets go at once (and counts as having
    /// declined it), the transfer joins the chain; the task goes to the
    /// target queue (keeping its place by age) or, when `offer` is set, is
    /// offered to the target agent under that offer number.
    TransferredCold {
        task_id: Id,
        transfer: Transfer,
        offer: Option<u64>,
        at: SystemTime,
    },
    /// A warm transfer offered to `consult.target`: capacity counted for it
    /// from now, the task still held by its agent.
    ConsultOffered {
        task_id: Id,
        consult: Consult,
    },
    /// The warm transfer's target accepted; the conversation makes the move.
    ConsultAccepted {
        task_id: Id,
    },
    /// The warm transfer is over without a move (rejected, timed out,
    /// canceled, or its task ended, was re-queued or closed): the target's
    /// capacity is given back.
    ConsultEnded {
        task_id: Id,
    },
    /// The warm transfer happened: the target holds the task (assigned),
    /// the first agent's capacity is given back.
    TransferredWarm {
        task_id: Id,
    },
    /// The agent parked its task: capacity given back, the task aside.
    Parked {
        task_id: Id,
        until: Option<SystemTime>,
    },
    /// A parked task is back in its queue (the customer wrote, or its time
    /// came), to be offered first to the agent who parked it.
    Unparked {
        task_id: Id,
        at: SystemTime,
    },
}

/// The state the router owns: everything needed to rebuild it by replaying
/// its events. Serializable for snapshots: the eligible-agent index is
/// rebuilt from the agents ([`RouterState::reindex_all`]) and the latency
/// histogram (a live figure, not replayed state) starts empty.
#[derive(Serialize, Deserialize)]
pub struct RouterState {
    /// Every agent's routing state: profile, presence, activity, load.
    pub(super) agents: HashMap<Id, RoutedAgent>,
    /// Per channel and policy, the agents eligible there, best first (kept in
    /// step with `agents` by `reindex`).
    #[serde(skip)]
    pub(super) index: AgentIndex,
    /// Queue definitions by id; `default` always among them.
    pub(super) queues: HashMap<String, Queue>,
    /// Waiting tasks by bucket, each in [`WaitKey`] order. Empty buckets go.
    pub(super) waiting: BTreeMap<Bucket, BTreeMap<WaitKey, RoutableTask>>,
    /// task id → where it waits.
    pub(super) queued: HashMap<Id, (Bucket, WaitKey)>,
    /// Tasks out of the queue (offered, assigned, wrapping), by id.
    pub(super) held: HashMap<Id, HeldTask>,
    /// The arrival order the next new task gets.
    pub(super) next_order: u64,
    /// A counter that orders offers and idleness among agents.
    tick: u64,
    /// Points of priority a task gains per minute waited.
    aging: i64,
    /// (channel, customer address) → the agent who last held their task, and
    /// when it closed.
    pub(super) last_agents: HashMap<(ChannelKind, String), (Id, SystemTime)>,
    /// Size of `last_agents` after its last pruning.
    last_agents_pruned: usize,
    /// Arrival → first offer, in microseconds.
    #[serde(skip, default = "new_latency")]
    pub(super) latency: Histogram<u64>,
    /// Each queue's day so far (`stats.rs`).
    pub(super) tally: Tally,
    /// Warm transfers on offer, by task.
    pub(super) consults: HashMap<Id, Consult>,
    /// Parked tasks, by id.
    pub(super) parked: HashMap<Id, ParkedTask>,
}

/// The latency histogram: 1 µs to an hour, 3 significant figures.
fn new_latency() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures is valid"))
}

impl Default for RouterState {
    fn default() -> Self {
        RouterState::new(1)
    }
}

impl RouterState {
    /// An empty state with only the `default` queue; tasks gain `aging`
    /// points of priority per minute waited.
    pub fn new(aging: u32) -> Self {
        let mut queues = HashMap::new();
        queues.insert(DEFAULT_QUEUE.to_owned(), Queue::default_queue());
        RouterState {
            agents: HashMap::new(),
            index: AgentIndex::default(),
            queues,
            waiting: BTreeMap::new(),
            queued: HashMap::new(),
            held: HashMap::new(),
            next_order: 0,
            tick: 0,
            aging: i64::from(aging),
            last_agents: HashMap::new(),
            last_agents_pruned: 0,
            latency: new_latency(),
            tally: Tally::default(),
            consults: HashMap::new(),
            parked: HashMap::new(),
        }
    }

    /// After reading the state back from a snapshot: the eligible-agent
    /// index rebuilt from the agents (a snapshot does not hold it), and the
    /// waiting tasks put in order again if `aging` is not the snapshot's.
    pub fn restored(&mut self, aging: u32) {
        let ids: Vec<Id> = self.agents.keys().cloned().collect();
        for id in &ids {
            self.reindex(id);
        }
        let aging = i64::from(aging);
        if aging != self.aging {
            self.aging = aging;
            let waiting: Vec<Id> = self.queued.keys().cloned().collect();
            for task_id in waiting {
                if let Some(task) = self.take_waiting(&task_id) {
                    self.insert_waiting(task);
                }
            }
        }
    }

    /// Every task routed (waiting, held, parked): id, state and the agent
    /// holding it, unordered.
    pub fn task_states(&self) -> Vec<(Id, TaskState, Option<Id>)> {
        let waiting = self
            .queued
            .keys()
            .map(|id| (id.clone(), TaskState::Queued, None));
        let held = self.held.iter().map(|(id, h)| {
            let state = match h.hold {
                Hold::Reserved { .. } => TaskState::Reserved,
                Hold::Assigned => TaskState::Assigned,
                Hold::Wrapping => TaskState::Wrapping,
            };
            (id.clone(), state, Some(h.agent.clone()))
        });
        let parked = self
            .parked
            .iter()
            .map(|(id, p)| (id.clone(), TaskState::Parked, Some(p.agent.clone())));
        waiting.chain(held).chain(parked).collect()
    }

    /// A queue's definition.
    pub fn queue(&self, id: &str) -> Option<&Queue> {
        self.queues.get(id)
    }

    /// Every queue, by id.
    pub fn queue_list(&self) -> Vec<Queue> {
        let mut all: Vec<Queue> = self.queues.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Tasks waiting in a queue.
    pub fn waiting_in(&self, queue: &str) -> usize {
        self.waiting
            .iter()
            .filter(|(b, _)| b.queue == queue)
            .map(|(_, t)| t.len())
            .sum()
    }

    /// How many tasks wait, in all.
    pub fn waiting_len(&self) -> usize {
        self.queued.len()
    }

    pub(super) fn wait_key(&self, task: &RoutableTask) -> WaitKey {
        let since = task
            .created_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        (
            self.aging * since - i64::from(task.priority) * 60_000,
            task.order,
        )
    }

    fn insert_waiting(&mut self, task: RoutableTask) {
        let bucket = task.bucket();
        let key = self.wait_key(&task);
        self.queued
            .insert(task.task_id.clone(), (bucket.clone(), key));
        self.waiting.entry(bucket).or_default().insert(key, task);
    }

    fn take_waiting(&mut self, task_id: &Id) -> Option<RoutableTask> {
        let (bucket, key) = self.queued.remove(task_id)?;
        let tasks = self.waiting.get_mut(&bucket)?;
        let task = tasks.remove(&key);
        if tasks.is_empty() {
            self.waiting.remove(&bucket);
        }
        task
    }

    /// Whether the router holds this task (offered, assigned, wrapping).
    pub fn holds(&self, task_id: &Id) -> bool {
        self.held.contains_key(task_id)
    }

    /// A waiting task, by id.
    pub fn waiting_task(&self, task_id: &Id) -> Option<&RoutableTask> {
        let (bucket, key) = self.queued.get(task_id)?;
        self.waiting.get(bucket)?.get(key)
    }

    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn reindex(&mut self, id: &Id) {
        match self.agents.get(id) {
            Some(agent) => {
                let free = ChannelKind::ALL.map(|ch| agent.eligible(ch).then(|| agent.free(ch)));
                self.index.update(id, free, agent.standing());
            }
            None => self.index.remove(id),
        }
    }

    fn change_load(&mut self, agent_id: &Id, ch: ChannelKind, up: bool) {
        if let Some(agent) = self.agents.get_mut(agent_id) {
            let load = agent.view.load.get_mut(ch);
            *load = if up {
                *load + 1
            } else {
                load.saturating_sub(1)
            };
        }
    }

    /// An agent takes a task (offer or direct assignment).
    fn hold(&mut self, task: RoutableTask, agent_id: Id, hold: Hold) {
        let tick = self.tick();
        self.change_load(&agent_id, task.channel, true);
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.last_offer = tick;
            agent.held.push(task.task_id.clone());
        }
        self.reindex(&agent_id);
        self.held.insert(
            task.task_id.clone(),
            HeldTask {
                task,
                agent: agent_id,
                hold,
            },
        );
    }

    /// The one place routing state changes.
    pub fn apply(&mut self, event: RouterEvent) {
        match event {
            RouterEvent::AgentUpserted {
                id,
                name,
                capacity,
                skills,
            } => {
                let tick = self.tick();
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.view.name = name;
                    agent.view.capacity = capacity;
                    agent.view.skills = skills;
                } else {
                    self.agents.insert(
                        id.clone(),
                        RoutedAgent {
                            view: AgentView {
                                id: id.clone(),
                                name,
                                capacity,
                                skills,
                                activity: Activity::Offline,
                                connected: false,
                                load: PerChannel::default(),
                            },
                            last_offer: tick,
                            idle_since: tick,
                            held: Vec::new(),
                            missed: 0,
                        },
                    );
                }
                self.reindex(&id);
            }
            RouterEvent::AgentRemoved { id } => {
                self.index.remove(&id);
                self.agents.remove(&id);
            }
            RouterEvent::PresenceChanged { id, connected } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.view.connected = connected;
                }
                self.reindex(&id);
            }
            RouterEvent::ActivityChanged { id, activity } => {
                let tick = self.tick();
                if let Some(agent) = self.agents.get_mut(&id) {
                    if activity == Activity::Available && agent.view.activity != activity {
                        agent.last_offer = tick;
                        agent.idle_since = tick;
                        agent.missed = 0;
                    }
                    agent.view.activity = activity;
                }
                self.reindex(&id);
            }
            RouterEvent::QueueUpserted { queue } => {
                let id = queue.id.clone();
                let priority = queue.priority;
                self.queues.insert(id.clone(), queue);
                let moved: Vec<Id> = self
                    .waiting
                    .iter()
                    .filter(|(b, _)| b.queue == id)
                    .flat_map(|(_, tasks)| tasks.values().map(|t| t.task_id.clone()))
                    .collect();
                for task_id in moved {
                    if let Some(mut task) = self.take_waiting(&task_id) {
                        task.priority = priority;
                        self.insert_waiting(task);
                    }
                }
                for h in self.held.values_mut().filter(|h| h.task.queue == id) {
                    h.task.priority = priority;
                }
            }
            RouterEvent::QueueRemoved { id } => {
                if id != DEFAULT_QUEUE {
                    self.queues.remove(&id);
                }
            }
            RouterEvent::Enqueued { task, clock_at } => {
                self.next_order = self.next_order.max(task.order + 1);
                self.tally.arrived(&task.task_id, &task.queue, clock_at);
                self.insert_waiting(task);
            }
            RouterEvent::Overflowed { task_id, to, at } => {
                if let Some(mut task) = self.take_waiting(&task_id) {
                    match to.and_then(|q| self.queues.get(&q)) {
                        Some(queue) => {
                            task.queue = queue.id.clone();
                            task.priority = queue.priority;
                            task.relaxed = false;
                        }
                        None => task.relaxed = true,
                    }
                    task.entered_queue_at = at;
                    self.tally.moved(&task.task_id, &task.queue);
                    self.insert_waiting(task);
                }
            }
            RouterEvent::Offered {
                task_id,
                agent_id,
                offer,
            } => {
                let Some(mut task) = self.take_waiting(&task_id) else {
                    return;
                };
                task.handoff.prefer = None;
                if !task.offered_before {
                    task.offered_before = true;
                    let micros = task.enqueued_at.elapsed().as_micros() as u64;
                    let _ = self.latency.record(micros.max(1));
                }
                self.hold(task, agent_id, Hold::Reserved { offer });
            }
            RouterEvent::Accepted { task_id, clock_at } => {
                let Some(h) = self.held.get_mut(&task_id) else {
                    return;
                };
                h.hold = Hold::Assigned;
                h.task.handoff.in_transfer = false;
                let queue = h.task.queue.clone();
                if let Some(agent) = self.agents.get_mut(&h.agent) {
                    agent.missed = 0;
                }
                let target = self.sla_target(&queue);
                self.tally.accepted(&task_id, clock_at, target);
            }
            RouterEvent::Requeued {
                task_id,
                declined_by,
                missed,
                at,
            } => {
                self.end_consult(&task_id);
                if let Some(h) = self.release(&task_id) {
                    let mut task = h.task;
                    if let Some(agent) = declined_by {
                        if let Some(a) = self.agents.get_mut(&agent) {
                            a.missed = if missed { a.missed + 1 } else { 0 };
                        }
                        task.declined.retain(|d| d.agent != agent);
                        task.declined.push(Decline { agent, at });
                    }
                    // An outbound reservation whose conversation never came
                    // has nothing to route.
                    if !task.conversation_id.is_empty() {
                        self.insert_waiting(task);
                    }
                }
            }
            RouterEvent::Wrapping { task_id, clock_at } => {
                self.end_consult(&task_id);
                // Only an assigned task wraps up: one transferred or parked
                // while its end was on the way is no longer its agent's.
                if let Some(h) = self.held.get_mut(&task_id) {
                    if h.hold == Hold::Assigned {
                        h.hold = Hold::Wrapping;
                        self.tally.ended(&task_id, clock_at);
                    }
                }
            }
            RouterEvent::Closed {
                task_id,
                at,
                outcome,
                clock_at,
            } => {
                self.end_consult(&task_id);
                let queue = self
                    .take_waiting(&task_id)
                    .map(|t| t.queue)
                    .or_else(|| self.parked.remove(&task_id).map(|p| p.task.queue))
                    .or_else(|| self.held.get(&task_id).map(|h| h.task.queue.clone()));
                let target = queue.and_then(|q| self.sla_target(&q));
                self.tally.closed(&task_id, outcome, clock_at, target);
                if let Some(h) = self.release(&task_id) {
                    if !matches!(h.hold, Hold::Reserved { .. }) {
                        self.remember_last_agent(&h, at);
                    }
                }
            }
            RouterEvent::AssignedDirect {
                task_id,
                agent_id,
                channel,
                customer,
                queue,
                at,
            } => {
                let order = self.next_order;
                self.next_order += 1;
                let priority = self.queues.get(&queue).map_or(0, |q| q.priority);
                let task = RoutableTask {
                    task_id,
                    conversation_id: Id::from(""),
                    channel,
                    skills: Arc::from(Vec::new()),
                    customer,
                    queue,
                    priority,
                    created_at: at,
                    entered_queue_at: at,
                    relaxed: false,
                    order,
                    enqueued_at: Instant::now(),
                    declined: Vec::new(),
                    offered_before: true,
                    handoff: Default::default(),
                };
                self.hold(task, agent_id, Hold::Assigned);
            }
            RouterEvent::OutboundBound {
                task_id,
                conversation_id,
                customer,
            } => {
                if let Some(h) = self.held.get_mut(&task_id) {
                    h.task.conversation_id = conversation_id;
                    h.task.customer = customer;
                }
            }
            RouterEvent::TransferredCold {
                task_id,
                transfer,
                offer,
                at,
            } => {
                self.end_consult(&task_id);
                let Some(h) = self.release(&task_id) else {
                    return;
                };
                let mut task = h.task;
                task.declined.retain(|d| d.agent != h.agent);
                task.declined.push(Decline { agent: h.agent, at });
                task.handoff.in_transfer = true;
                task.handoff.prefer = None;
                task.handoff.requeued_at = Some(at);
                let target = transfer.to.clone();
                task.handoff.transfers.push(transfer);
                match target {
                    TransferTarget::Agent(agent) => match offer {
                        Some(offer) => self.hold(task, agent.into(), Hold::Reserved { offer }),
                        None => self.insert_waiting(task),
                    },
                    TransferTarget::Queue(queue) => {
                        if let Some(q) = self.queues.get(&queue) {
                            task.queue = q.id.clone();
                            task.priority = q.priority;
                        }
                        task.relaxed = false;
                        task.entered_queue_at = at;
                        self.tally.moved(&task.task_id, &task.queue);
                        self.insert_waiting(task);
                    }
                }
            }
            RouterEvent::ConsultOffered { task_id, consult } => {
                let Some(channel) = self.held.get(&task_id).map(|h| h.task.channel) else {
                    return;
                };
                self.end_consult(&task_id);
                let target = consult.target.clone();
                self.change_load(&target, channel, true);
                let tick = self.tick();
                if let Some(agent) = self.agents.get_mut(&target) {
                    agent.last_offer = tick;
                }
                self.reindex(&target);
                self.consults.insert(task_id, consult);
            }
            RouterEvent::ConsultAccepted { task_id } => {
                if let Some(c) = self.consults.get_mut(&task_id) {
                    c.accepted = true;
                }
            }
            RouterEvent::ConsultEnded { task_id } => self.end_consult(&task_id),
            RouterEvent::TransferredWarm { task_id } => {
                let Some(consult) = self.consults.remove(&task_id) else {
                    return;
                };
                let Some(h) = self.held.get_mut(&task_id) else {
                    return;
                };
                let from = std::mem::replace(&mut h.agent, consult.target.clone());
                h.hold = Hold::Assigned;
                h.task.handoff.transfers.push(consult.transfer);
                let channel = h.task.channel;
                // The target's capacity was counted from the offer.
                self.change_load(&from, channel, false);
                let tick = self.tick();
                if let Some(agent) = self.agents.get_mut(&from) {
                    agent.held.retain(|t| t != &task_id);
                    if agent.held.is_empty() {
                        agent.idle_since = tick;
                    }
                }
                if let Some(agent) = self.agents.get_mut(&consult.target) {
                    agent.held.push(task_id.clone());
                    agent.missed = 0;
                }
                self.reindex(&from);
                self.reindex(&consult.target);
            }
            RouterEvent::Parked { task_id, until } => {
                self.end_consult(&task_id);
                if let Some(h) = self.release(&task_id) {
                    let mut task = h.task;
                    task.handoff.prefer = Some(h.agent.clone());
                    task.declined.clear();
                    self.parked.insert(
                        task_id,
                        ParkedTask {
                            task,
                            agent: h.agent,
                            until,
                        },
                    );
                }
            }
            RouterEvent::Unparked { task_id, at } => {
                if let Some(p) = self.parked.remove(&task_id) {
                    let mut task = p.task;
                    task.entered_queue_at = at;
                    task.handoff.requeued_at = Some(at);
                    self.insert_waiting(task);
                }
            }
        }
    }

    /// A warm transfer's target gives its capacity back.
    fn end_consult(&mut self, task_id: &Id) {
        let Some(consult) = self.consults.remove(task_id) else {
            return;
        };
        let channel = self
            .held
            .get(task_id)
            .map(|h| h.task.channel)
            .or_else(|| self.waiting_task(task_id).map(|t| t.channel));
        if let Some(channel) = channel {
            self.change_load(&consult.target, channel, false);
        }
        self.reindex(&consult.target);
    }

    fn sla_target(&self, queue: &str) -> Option<Duration> {
        self.queues
            .get(queue)
            .and_then(|q| q.sla.as_ref())
            .map(|s| s.first_response)
    }

    /// Every queue's live figures and its day so far, at `now` on the
    /// router's clock, by queue id.
    pub fn queue_stats(&self, now: SystemTime) -> Vec<QueueStats> {
        let mut all: Vec<QueueStats> = self
            .queue_list()
            .iter()
            .map(|q| {
                let takes = |ch: ChannelKind| q.channels.is_empty() || q.channels.contains(&ch);
                let mut agents = AgentCounts::default();
                for a in self.agents.values() {
                    let serves = |ch: ChannelKind| takes(ch) && a.view.capacity.get(ch) > 0;
                    if a.has_skills(&q.skills) && ChannelKind::ALL.into_iter().any(serves) {
                        let free = ChannelKind::ALL
                            .into_iter()
                            .any(|ch| serves(ch) && a.free(ch) > 0);
                        agents.count(&a.view, free);
                    }
                }
                QueueStats {
                    id: q.id.clone(),
                    waiting: 0,
                    longest_wait_ms: 0,
                    offered: 0,
                    capacity_in_use: 0,
                    agents,
                    today: self.tally.today(&q.id, now),
                }
            })
            .collect();
        let index: HashMap<String, usize> = all
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.clone(), i))
            .collect();
        for (bucket, tasks) in &self.waiting {
            let Some(q) = index.get(&bucket.queue).map(|&i| &mut all[i]) else {
                continue;
            };
            q.waiting += tasks.len();
            for task in tasks.values() {
                let arrived = self.tally.arrival(&task.task_id).unwrap_or(now);
                let waited = now.duration_since(arrived).unwrap_or_default().as_millis() as u64;
                q.longest_wait_ms = q.longest_wait_ms.max(waited);
            }
        }
        for h in self.held.values() {
            if let Some(q) = index.get(&h.task.queue).map(|&i| &mut all[i]) {
                q.capacity_in_use += 1;
                if matches!(h.hold, Hold::Reserved { .. }) {
                    q.offered += 1;
                }
            }
        }
        all
    }

    /// Remember who served this customer, for last-agent routing; forget
    /// entries older than any queue's window now and then, so the map follows
    /// recent customers, not all ever served.
    fn remember_last_agent(&mut self, h: &HeldTask, at: SystemTime) {
        if h.task.conversation_id.is_empty() {
            return;
        }
        self.last_agents.insert(
            (h.task.channel, h.task.customer.address.clone()),
            (h.agent.clone(), at),
        );
        if self.last_agents.len() > 1024 && self.last_agents.len() > 2 * self.last_agents_pruned {
            let window = self
                .queues
                .values()
                .filter_map(|q| q.last_agent_window)
                .max()
                .unwrap_or_default();
            self.last_agents.retain(|_, (_, when)| *when + window >= at);
            self.last_agents_pruned = self.last_agents.len();
        }
    }

    /// Drop a held task and give its capacity back.
    fn release(&mut self, task_id: &Id) -> Option<HeldTask> {
        let h = self.held.remove(task_id)?;
        self.change_load(&h.agent, h.task.channel, false);
        let tick = self.tick();
        if let Some(agent) = self.agents.get_mut(&h.agent) {
            agent.held.retain(|t| t != task_id);
            if agent.held.is_empty() {
                agent.idle_since = tick;
            }
        }
        self.reindex(&h.agent);
        Some(h)
    }

    /// Does `agent` have what `task` needs (its queue's skills and its own,
    /// unless relaxed)?
    pub(super) fn qualifies(&self, agent: &RoutedAgent, task: &RoutableTask) -> bool {
        task.relaxed
            || (agent.has_skills(&task.skills)
                && self
                    .queues
                    .get(&task.queue)
                    .is_none_or(|q| agent.has_skills(&q.skills)))
    }

    fn policy_of(&self, queue: &str) -> Policy {
        self.queues.get(queue).map(|q| q.policy).unwrap_or_default()
    }

    /// Who gets a task at `now`: the best eligible agent under its queue's
    /// policy with the skills who has not declined it; failing that, the
    /// eligible agent who declined it longest ago, once `cooldown` (the
    /// `reoffer_cooldown` setting) has passed since that decline. So a decline
    /// passes an agent over while someone else can take the task, and never
    /// strands the task when nobody else can.
    pub fn pick(&self, task: &RoutableTask, now: SystemTime, cooldown: Duration) -> Pick {
        let skilled = |id: &Id| self.agents.get(id).is_some_and(|a| self.qualifies(a, task));
        let policy = self.policy_of(&task.queue);
        if let Some(id) = self.index.best(task.channel, policy, |id| {
            !task.declined_by(id) && skilled(id)
        }) {
            return Pick::Agent(id);
        }
        let first_eligible = task
            .declined
            .iter()
            .find(|d| self.index.contains(task.channel, &d.agent) && skilled(&d.agent));
        match first_eligible {
            Some(d) if d.at + cooldown <= now => Pick::Agent(d.agent.clone()),
            Some(d) => Pick::CoolingDown(d.at + cooldown),
            None => Pick::Nobody,
        }
    }

    /// The customer's last agent, if the task's queue routes to it, it
    /// served them within the queue's window and it could take the task now.
    pub fn last_agent_for(&self, task: &RoutableTask, now: SystemTime) -> Option<Id> {
        let window = self.queues.get(&task.queue)?.last_agent_window?;
        let (agent_id, at) = self
            .last_agents
            .get(&(task.channel, task.customer.address.clone()))?;
        let fresh = now.duration_since(*at).map_or(true, |d| d <= window);
        let agent = self.agents.get(agent_id)?;
        (fresh
            && self.index.contains(task.channel, agent_id)
            && !task.declined_by(agent_id)
            && self.qualifies(agent, task))
        .then(|| agent_id.clone())
    }

    /// The agent a task goes to first, if eligible now: the one who parked
    /// it (the last-agent rule, whatever the queue's window).
    pub fn preferred_agent(&self, task: &RoutableTask) -> Option<Id> {
        let agent_id = task.handoff.prefer.as_ref()?;
        let agent = self.agents.get(agent_id)?;
        (self.index.contains(task.channel, agent_id)
            && !task.declined_by(agent_id)
            && self.qualifies(agent, task))
        .then(|| agent_id.clone())
    }

    /// The best waiting task across every queue `agent_id` serves that it may
    /// be offered at `now` (effective priority, then arrival), and the tasks
    /// it passed over because it declined them less than `cooldown` ago, with
    /// when that ends. Looks at the head of each bucket the agent could serve,
    /// not at every waiting task.
    pub fn best_task_for(
        &self,
        agent_id: &Id,
        now: SystemTime,
        cooldown: Duration,
    ) -> (Option<Id>, Vec<(Id, SystemTime)>) {
        let mut best: Option<(WaitKey, &Id)> = None;
        let mut cooling = Vec::new();
        let Some(agent) = self.agents.get(agent_id) else {
            return (None, cooling);
        };
        for (bucket, tasks) in &self.waiting {
            if !self.index.contains(bucket.channel, agent_id) {
                continue;
            }
            if !bucket.relaxed
                && !self
                    .queues
                    .get(&bucket.queue)
                    .is_none_or(|q| agent.has_skills(&q.skills))
            {
                continue;
            }
            if best.is_some_and(|(k, _)| tasks.keys().next().is_some_and(|first| *first > k)) {
                continue;
            }
            for (key, task) in tasks {
                if best.is_some_and(|(k, _)| *key > k) {
                    break;
                }
                if !task.relaxed && !agent.has_skills(&task.skills) {
                    continue;
                }
                if let Some(d) = task.declined.iter().find(|d| &d.agent == agent_id) {
                    if d.at + cooldown > now {
                        cooling.push((task.task_id.clone(), d.at + cooldown));
                        continue;
                    }
                }
                best = Some((*key, &task.task_id));
                break;
            }
        }
        (best.map(|(_, id)| id.clone()), cooling)
    }

    /// A task that starts waiting looks for an agent: the customer's last
    /// agent if its queue routes to it and it is eligible now, else whoever
    /// [`RouterState::pick`] says. The offer, if any, is numbered `offer`.
    pub fn route_task(
        &self,
        task_id: &Id,
        now: SystemTime,
        cooldown: Duration,
        offer: u64,
    ) -> Routed {
        let mut routed = Routed::default();
        let Some(task) = self.waiting_task(task_id) else {
            return routed;
        };
        let to = match self
            .preferred_agent(task)
            .or_else(|| self.last_agent_for(task, now))
        {
            Some(agent) => Some(agent),
            None => match self.pick(task, now, cooldown) {
                Pick::Agent(agent) => Some(agent),
                Pick::CoolingDown(at) => {
                    routed.cooling.push((task_id.clone(), at));
                    None
                }
                Pick::Nobody => None,
            },
        };
        routed.offer = to.map(|agent_id| RouterEvent::Offered {
            task_id: task_id.clone(),
            agent_id,
            offer,
        });
        routed
    }

    /// An agent who can take more gets the best waiting task across every
    /// queue it serves, numbered `offer`. It goes to whoever `pick` prefers
    /// (this agent, unless someone else could take it all along), or to this
    /// agent if only decliners remain, or if the one `pick` prefers has a
    /// better task of its own waiting (freed in the same step as this agent,
    /// and not asked yet): nobody is offered a task while a better one it
    /// could take waits. Asked again once that offer is applied, until it
    /// makes none: the agent is full or no task fits.
    pub fn route_agent(
        &self,
        agent_id: &Id,
        now: SystemTime,
        cooldown: Duration,
        offer: u64,
    ) -> Routed {
        let (best, cooling) = self.best_task_for(agent_id, now, cooldown);
        let offer = best.map(|task_id| {
            let to = match self
                .waiting_task(&task_id)
                .map(|t| self.pick(t, now, cooldown))
            {
                Some(Pick::Agent(a))
                    if a == *agent_id
                        || self.best_task_for(&a, now, cooldown).0.as_ref() == Some(&task_id) =>
                {
                    a
                }
                _ => agent_id.clone(),
            };
            RouterEvent::Offered {
                task_id,
                agent_id: to,
                offer,
            }
        });
        Routed { offer, cooling }
    }

    /// Every waiting task id, best first across all queues.
    pub fn waiting_in_order(&self) -> Vec<Id> {
        let mut all: Vec<(WaitKey, Id)> = self
            .waiting
            .values()
            .flat_map(|t| t.iter().map(|(k, t)| (*k, t.task_id.clone())))
            .collect();
        all.sort();
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// These tasks, the waiting ones only, best first.
    pub fn in_wait_order(&self, ids: &[Id]) -> Vec<Id> {
        let mut keyed: Vec<((i64, u64), Id)> = ids
            .iter()
            .filter_map(|id| self.queued.get(id).map(|(_, k)| (*k, id.clone())))
            .collect();
        keyed.sort();
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// An agent's missed offers in a row.
    pub fn missed_offers(&self, agent_id: &Id) -> u32 {
        self.agents.get(agent_id).map_or(0, |a| a.missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(30);

    fn agent_event(id: &str) -> RouterEvent {
        RouterEvent::AgentUpserted {
            id: id.into(),
            name: id.to_uppercase(),
            capacity: PerChannel {
                webchat: 1,
                ..PerChannel::default()
            },
            skills: vec![],
        }
    }

    /// `ids` on webchat with capacity 1, connected and available, in that
    /// order (so the first has been idle longest).
    fn with_agents(ids: &[&str]) -> RouterState {
        let mut s = RouterState::default();
        for id in ids {
            s.apply(agent_event(id));
            s.apply(RouterEvent::PresenceChanged {
                id: (*id).into(),
                connected: true,
            });
            s.apply(RouterEvent::ActivityChanged {
                id: (*id).into(),
                activity: Activity::Available,
            });
        }
        s
    }

    fn task(id: &str, order: u64) -> RoutableTask {
        RoutableTask::sample(id, order)
    }

    fn queued(s: &RouterState, id: &str) -> RoutableTask {
        s.waiting_task(&Id::from(id)).unwrap().clone()
    }

    fn load(s: &RouterState, id: &str) -> u32 {
        s.agents[&Id::from(id)].view.load.webchat
    }

    #[test]
    fn an_offer_takes_capacity_and_a_decline_gives_it_back_in_place() {
        let mut s = with_agents(&["ann"]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let events = vec![
            RouterEvent::Enqueued {
                task: task("tk_1", 0),
                clock_at: SystemTime::UNIX_EPOCH,
            },
            RouterEvent::Enqueued {
                task: task("tk_2", 1),
                clock_at: SystemTime::UNIX_EPOCH,
            },
            RouterEvent::Offered {
                task_id: "tk_1".into(),
                agent_id: "ann".into(),
                offer: 1,
            },
        ];
        let mut replayed = with_agents(&["ann"]);
        for ev in events {
            let bytes = crate::codec::encode(&ev).unwrap();
            replayed.apply(crate::codec::decode(&bytes).unwrap());
            s.apply(ev);
        }
        for st in [&s, &replayed] {
            assert_eq!(load(st, "ann"), 1);
            // Full: no longer eligible.
            assert!(!st.index.contains(ChannelKind::Webchat, &"ann".into()));
            assert!(matches!(
                st.held[&Id::from("tk_1")].hold,
                Hold::Reserved { offer: 1 }
            ));
            assert_eq!(st.queued.len(), 1);
        }

        s.apply(RouterEvent::Requeued {
            task_id: "tk_1".into(),
            declined_by: Some("ann".into()),
            missed: true,
            at: t0,
        });
        assert_eq!(s.missed_offers(&"ann".into()), 1);
        assert_eq!(load(&s, "ann"), 0);
        assert!(s.held.is_empty());
        assert!(s.index.contains(ChannelKind::Webchat, &"ann".into()));
        // Back ahead of the newer task, with the decline recorded.
        assert_eq!(s.waiting_in_order()[0], Id::from("tk_1"));
        let first = queued(&s, "tk_1");
        assert_eq!(
            first.declined,
            vec![Decline {
                agent: "ann".into(),
                at: t0
            }]
        );
        assert!(s.agents[&Id::from("ann")].held.is_empty());

        s.apply(RouterEvent::Closed {
            task_id: "tk_1".into(),
            at: t0,
            outcome: Outcome::Abandoned,
            clock_at: t0,
        });
        assert_eq!(s.queued.len(), 1);
        assert!(!s.queued.contains_key("tk_1"));
    }

    #[test]
    fn an_agent_freed_with_another_gets_its_best_task_not_the_others() {
        // Ann (idle longest, skilled) and Bob free up in the same step, with
        // a skilled task waiting ahead of a plain one. Routing for Bob first
        // finds the plain task; the policy would prefer Ann for it, but Ann
        // has a better task of her own waiting: Bob takes the plain one.
        let mut s = RouterState::default();
        for (id, skills) in [("ann", vec!["x".to_owned()]), ("bob", vec![])] {
            s.apply(RouterEvent::AgentUpserted {
                id: id.into(),
                name: id.to_uppercase(),
                capacity: PerChannel {
                    webchat: 1,
                    ..PerChannel::default()
                },
                skills,
            });
            s.apply(RouterEvent::PresenceChanged {
                id: id.into(),
                connected: true,
            });
            s.apply(RouterEvent::ActivityChanged {
                id: id.into(),
                activity: Activity::Available,
            });
        }
        let mut skilled = task("tk_1", 0);
        skilled.skills = Arc::from(vec!["x".to_owned()]);
        for t in [skilled, task("tk_2", 1)] {
            s.apply(RouterEvent::Enqueued {
                task: t,
                clock_at: SystemTime::UNIX_EPOCH,
            });
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        // The policy alone prefers Ann for the plain task.
        assert_eq!(
            s.pick(&queued(&s, "tk_2"), now, COOLDOWN),
            Pick::Agent("ann".into())
        );
        let offered = |r: Routed| match r.offer {
            Some(RouterEvent::Offered {
                task_id, agent_id, ..
            }) => (task_id, agent_id),
            other => panic!("no offer: {other:?}"),
        };
        let bobs = s.route_agent(&"bob".into(), now, COOLDOWN, 1);
        assert_eq!(offered(bobs), (Id::from("tk_2"), Id::from("bob")));
        let anns = s.route_agent(&"ann".into(), now, COOLDOWN, 2);
        assert_eq!(offered(anns), (Id::from("tk_1"), Id::from("ann")));
    }

    #[test]
    fn a_decliner_is_passed_over_while_another_can_take_it_then_picked_after_the_cooldown() {
        // Ann has been idle longest, so she would be first.
        let mut s = with_agents(&["ann", "bob"]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        s.apply(RouterEvent::Enqueued {
            task: task("tk_1", 0),
            clock_at: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(
            s.pick(&queued(&s, "tk_1"), t0, COOLDOWN),
            Pick::Agent("ann".into())
        );
        s.apply(RouterEvent::Offered {
            task_id: "tk_1".into(),
            agent_id: "ann".into(),
            offer: 1,
        });
        s.apply(RouterEvent::Requeued {
            task_id: "tk_1".into(),
            declined_by: Some("ann".into()),
            missed: false,
            at: t0,
        });
        let t = queued(&s, "tk_1");
        // Bob is eligible: Ann is passed over.
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(s.pick(&t, soon, COOLDOWN), Pick::Agent("bob".into()));
        // Bob goes on break: only Ann could take it, once her cool-down ends.
        s.apply(RouterEvent::ActivityChanged {
            id: "bob".into(),
            activity: Activity::Break,
        });
        assert_eq!(s.pick(&t, soon, COOLDOWN), Pick::CoolingDown(t0 + COOLDOWN));
        assert_eq!(
            s.pick(&t, t0 + COOLDOWN, COOLDOWN),
            Pick::Agent("ann".into())
        );
        // Ann away as well: nobody.
        s.apply(RouterEvent::PresenceChanged {
            id: "ann".into(),
            connected: false,
        });
        assert_eq!(s.pick(&t, t0 + COOLDOWN, COOLDOWN), Pick::Nobody);
    }

    #[test]
    fn pick_needs_every_skill_of_the_task() {
        let mut s = with_agents(&["ann", "bob"]);
        s.apply(RouterEvent::AgentUpserted {
            id: "bob".into(),
            name: "Bob".into(),
            capacity: PerChannel {
                webchat: 1,
                ..PerChannel::default()
            },
            skills: vec!["billing".into(), "spanish".into()],
        });
        let mut t = task("tk_1", 0);
        t.skills = Arc::from(vec!["billing".to_owned()]);
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(s.pick(&t, now, COOLDOWN), Pick::Agent("bob".into()));
        t.skills = Arc::from(vec!["billing".to_owned(), "french".to_owned()]);
        assert_eq!(s.pick(&t, now, COOLDOWN), Pick::Nobody);
    }

    #[test]
    fn effective_priority_ages_by_the_minute_then_arrival_breaks_ties() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = RouterState::new(1);
        let mut low = task("low", 0);
        low.created_at = t0;
        // Ten points more, five minutes later: still ahead of the old one.
        let mut high = task("high", 1);
        high.priority = 10;
        high.created_at = t0 + Duration::from_secs(300);
        // Ten points more, eleven minutes later: the old one has aged past it.
        let mut later = task("later", 2);
        later.priority = 10;
        later.created_at = t0 + Duration::from_secs(660);
        // Same effective priority as `low` and same time: arrival decides.
        let mut twin = task("twin", 3);
        twin.created_at = t0;
        for t in [twin.clone(), later.clone(), high.clone(), low.clone()] {
            s.apply(RouterEvent::Enqueued {
                task: t,
                clock_at: SystemTime::UNIX_EPOCH,
            });
        }
        let order: Vec<String> = s.waiting_in_order().iter().map(|i| i.to_string()).collect();
        assert_eq!(order, ["high", "low", "twin", "later"]);

        // Without aging, priority then arrival.
        let mut s = RouterState::new(0);
        for t in [twin, later, high, low] {
            s.apply(RouterEvent::Enqueued {
                task: t,
                clock_at: SystemTime::UNIX_EPOCH,
            });
        }
        let order: Vec<String> = s.waiting_in_order().iter().map(|i| i.to_string()).collect();
        assert_eq!(order, ["high", "later", "low", "twin"]);
    }

    #[test]
    fn a_total_capacity_caps_every_channel() {
        let mut s = with_agents(&["ann"]);
        s.apply(RouterEvent::AgentUpserted {
            id: "ann".into(),
            name: "Ann".into(),
            capacity: PerChannel {
                webchat: 3,
                sms: 2,
                total: Some(2),
                ..PerChannel::default()
            },
            skills: vec![],
        });
        let now = SystemTime::UNIX_EPOCH;
        for (i, ch) in [ChannelKind::Webchat, ChannelKind::Sms, ChannelKind::Webchat]
            .into_iter()
            .enumerate()
        {
            let mut t = task(&format!("tk_{i}"), i as u64);
            t.channel = ch;
            s.apply(RouterEvent::Enqueued {
                task: t.clone(),
                clock_at: SystemTime::UNIX_EPOCH,
            });
            if let Some(offer) = s.route_task(&t.task_id, now, COOLDOWN, i as u64 + 1).offer {
                s.apply(offer);
            }
        }
        assert_eq!(s.held.len(), 2);
        assert_eq!(s.waiting_in_order(), vec![Id::from("tk_2")]);
        // The journal keeps the total; JSON shows it only when set.
        let ev = RouterEvent::AgentUpserted {
            id: "ann".into(),
            name: "Ann".into(),
            capacity: s.agents[&Id::from("ann")].view.capacity,
            skills: vec![],
        };
        let back: RouterEvent = crate::codec::decode(&crate::codec::encode(&ev).unwrap()).unwrap();
        assert!(
            matches!(back, RouterEvent::AgentUpserted { capacity, .. } if capacity.total == Some(2))
        );
        let json = serde_json::to_value(PerChannel::default()).unwrap();
        assert!(json.get("total").is_none(), "{json}");
        assert!(!s.index.contains(ChannelKind::Webchat, &"ann".into()));
    }

    #[test]
    fn every_agent_is_counted_once() {
        let mut counts = AgentCounts::default();
        let s = with_agents(&["ann"]);
        let mut view = s.agents[&Id::from("ann")].view.clone();
        counts.count(&view, true);
        counts.count(&view, false);
        view.activity = Activity::Break;
        counts.count(&view, true);
        view.connected = false;
        counts.count(&view, true);
        view.activity = Activity::Offline;
        counts.count(&view, true);
        assert_eq!(
            counts,
            AgentCounts {
                available: 1,
                busy: 1,
                on_break: 1,
                offline: 1,
                disconnected: 1,
                not_responding: 0,
            }
        );
    }

    #[test]
    fn queue_figures_come_from_the_events_and_a_replay_counts_the_same() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_737_600 + 3_600);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut billing = Queue::named("billing");
        billing.sla = Some(super::super::queue::Sla {
            first_response: Duration::from_secs(60),
        });
        let in_billing = |id: &str, order: u64| {
            let mut t = task(id, order);
            t.queue = "billing".into();
            t
        };
        let events = vec![
            RouterEvent::QueueUpserted { queue: billing },
            RouterEvent::Enqueued {
                task: in_billing("tk_1", 0),
                clock_at: at(0),
            },
            RouterEvent::Enqueued {
                task: in_billing("tk_2", 1),
                clock_at: at(10),
            },
            RouterEvent::Offered {
                task_id: "tk_1".into(),
                agent_id: "ann".into(),
                offer: 1,
            },
            RouterEvent::Accepted {
                task_id: "tk_1".into(),
                clock_at: at(45),
            },
            RouterEvent::Wrapping {
                task_id: "tk_1".into(),
                clock_at: at(105),
            },
            RouterEvent::Closed {
                task_id: "tk_1".into(),
                at: at(115),
                outcome: Outcome::Completed,
                clock_at: at(115),
            },
            RouterEvent::Closed {
                task_id: "tk_2".into(),
                at: at(100),
                outcome: Outcome::Abandoned,
                clock_at: at(100),
            },
        ];
        let mut s = with_agents(&["ann"]);
        let mut replayed = with_agents(&["ann"]);
        for (i, ev) in events.into_iter().enumerate() {
            let bytes = crate::codec::encode(&ev).unwrap();
            replayed.apply(crate::codec::decode(&bytes).unwrap());
            s.apply(ev);
            if i == 3 {
                // tk_1 on offer, tk_2 waiting since 10 s.
                let q = s.queue_stats(at(40));
                assert_eq!(q[0].id, "billing");
                assert_eq!((q[0].waiting, q[0].longest_wait_ms), (1, 30_000));
                assert_eq!((q[0].offered, q[0].capacity_in_use), (1, 1));
                assert_eq!(q[0].agents.busy, 1);
            }
        }
        let stats = s.queue_stats(at(120));
        assert_eq!(stats, replayed.queue_stats(at(120)));
        let today = &stats[0].today;
        assert_eq!((today.created, today.completed), (2, 1));
        assert_eq!((today.canceled, today.abandoned), (1, 1));
        assert_eq!(today.avg_wait_ms, Some(45_000));
        assert_eq!(today.avg_handle_ms, Some(60_000));
        assert_eq!(today.avg_wrapup_ms, Some(10_000));
        // Met once; the task abandoned after 90 s missed.
        assert_eq!(today.sla_met_pct, Some(50.0));
        assert_eq!(stats[0].agents.available, 1);
        // `default` serves every channel: Ann counts there too.
        assert_eq!(
            (stats[1].id.as_str(), stats[1].agents.available),
            ("default", 1)
        );
    }

    fn handoff(from: &str, to: TransferTarget, mode: crate::protocol::TransferMode) -> Transfer {
        Transfer {
            from: from.into(),
            to,
            mode,
            note: "n".into(),
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn transfers_and_parking_move_capacity_and_replay_through_the_codec() {
        use crate::protocol::TransferMode::{Cold, Warm};
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let base = with_agents(&["ann", "bob", "cy"]);
        let events = vec![
            RouterEvent::Enqueued {
                task: task("tk_1", 0),
                clock_at: t0,
            },
            RouterEvent::Offered {
                task_id: "tk_1".into(),
                agent_id: "ann".into(),
                offer: 1,
            },
            RouterEvent::Accepted {
                task_id: "tk_1".into(),
                clock_at: t0,
            },
            // Warm to bob: both hold capacity until the move.
            RouterEvent::ConsultOffered {
                task_id: "tk_1".into(),
                consult: Consult {
                    target: "bob".into(),
                    offer: 2,
                    accepted: false,
                    transfer: handoff("ann", TransferTarget::Agent("bob".into()), Warm),
                },
            },
            RouterEvent::ConsultAccepted {
                task_id: "tk_1".into(),
            },
            RouterEvent::TransferredWarm {
                task_id: "tk_1".into(),
            },
            // Cold from bob to cy: bob lets go, cy is offered it.
            RouterEvent::TransferredCold {
                task_id: "tk_1".into(),
                transfer: handoff("bob", TransferTarget::Agent("cy".into()), Cold),
                offer: Some(3),
                at: t0,
            },
            RouterEvent::Accepted {
                task_id: "tk_1".into(),
                clock_at: t0,
            },
            RouterEvent::Parked {
                task_id: "tk_1".into(),
                until: None,
            },
        ];
        let (mut s, mut replayed) = (base, with_agents(&["ann", "bob", "cy"]));
        for (i, ev) in events.into_iter().enumerate() {
            let bytes = crate::codec::encode(&ev).unwrap();
            replayed.apply(crate::codec::decode(&bytes).unwrap());
            s.apply(ev);
            let loads: Vec<u32> = ["ann", "bob", "cy"].iter().map(|a| load(&s, a)).collect();
            let want: &[u32] = match i {
                0 => &[0, 0, 0],
                1 | 2 => &[1, 0, 0],
                3 | 4 => &[1, 1, 0],
                5 => &[0, 1, 0],
                6 | 7 => &[0, 0, 1],
                _ => &[0, 0, 0],
            };
            assert_eq!(loads, want, "after event {i}");
        }
        let parked = s.parked[&Id::from("tk_1")].clone();
        assert_eq!(parked.agent, Id::from("cy"));
        assert_eq!(parked.task.handoff.transfers.len(), 2);
        assert_eq!(parked.task.handoff.prefer, Some(Id::from("cy")));
        // Bob let go cold: he counts as having declined it.
        assert!(parked.task.declined.is_empty(), "parking starts afresh");
        s.apply(RouterEvent::Unparked {
            task_id: "tk_1".into(),
            at: t0,
        });
        let back = queued(&s, "tk_1");
        assert_eq!(s.preferred_agent(&back), Some(Id::from("cy")));
        assert_eq!(back.handoff.requeued_at, Some(t0));
        // The replay through the codec reached the same state.
        assert_eq!(
            replayed.parked[&Id::from("tk_1")].task.handoff.transfers,
            parked.task.handoff.transfers
        );
        for a in ["ann", "bob", "cy"] {
            assert_eq!(load(&replayed, a), 0);
        }
        assert!(replayed.consults.is_empty() && replayed.held.is_empty());
    }

    #[test]
    fn a_cold_transfer_to_a_queue_keeps_its_place_and_declines_the_sender() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut s = with_agents(&["ann"]);
        s.apply(RouterEvent::QueueUpserted {
            queue: Queue {
                id: "billing".into(),
                ..Queue::default_queue()
            },
        });
        s.apply(RouterEvent::Enqueued {
            task: task("tk_1", 0),
            clock_at: t0,
        });
        let mut newer = task("tk_2", 1);
        newer.queue = "billing".into();
        newer.created_at = t0;
        s.apply(RouterEvent::Enqueued {
            task: newer,
            clock_at: t0,
        });
        s.apply(RouterEvent::Offered {
            task_id: "tk_1".into(),
            agent_id: "ann".into(),
            offer: 1,
        });
        s.apply(RouterEvent::Accepted {
            task_id: "tk_1".into(),
            clock_at: t0,
        });
        s.apply(RouterEvent::TransferredCold {
            task_id: "tk_1".into(),
            transfer: handoff(
                "ann",
                TransferTarget::Queue("billing".into()),
                crate::protocol::TransferMode::Cold,
            ),
            offer: None,
            at: t0,
        });
        assert_eq!(load(&s, "ann"), 0);
        let moved = queued(&s, "tk_1");
        assert_eq!(moved.queue, "billing");
        assert!(moved.declined_by(&"ann".into()));
        assert!(moved.handoff.in_transfer);
        assert_eq!(
            s.waiting_in_order()[0],
            Id::from("tk_1"),
            "ahead of the newer task"
        );
    }
}

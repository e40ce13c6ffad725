//! What the router decides on, apart from the actor that runs it: the queue,
//! the held tasks and every agent's routing state ([`RouterState`]), every
//! change made to them ([`RouterEvent`]), [`RouterState::apply`], the one place
//! they change, and the decisions read from them (who gets a task: `pick`).
//!
//! Pure data, no actors, no clocks of its own: addresses, offer timers and
//! cool-down wake-ups are the router's wiring (`mod.rs`, `dispatch.rs`); the
//! time a decision is made at is an argument. So a replay of the events calls
//! the same `apply`, and the unit tests below drive it alone.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::index::AgentIndex;
use crate::protocol::{
    Activity, AgentView, ChannelKind, Customer, Id, PerChannel, TaskState, TaskSummary,
};

/// A task waiting for, or held by, an agent: what the router needs to route it
/// and to put it back, and what supervisors see of it. (The conversation's
/// address is wiring, kept apart.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoutableTask {
    pub task_id: Id,
    pub conversation_id: Id,
    pub channel: ChannelKind,
    pub skills: Arc<[String]>,
    pub customer: Customer,
    pub queue: String,
    pub priority: u8,
    /// When the conversation was created: the task's `waiting_since`.
    pub created_at: SystemTime,
    /// Arrival order: position in the queue, kept across re-queues.
    pub order: u64,
    /// For the wait and routing-latency figures only.
    #[serde(skip, default = "Instant::now")]
    pub enqueued_at: Instant,
    /// Agents who rejected it or let its offer time out, oldest decline first
    /// (one entry per agent). Passed over while anyone else can take the task;
    /// offered it again `reoffer_cooldown` after their decline.
    pub declined: Vec<Decline>,
    pub offered_before: bool,
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
        }
    }
}

/// Who, if anyone, should be offered a task now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pick {
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
pub(super) struct HeldTask {
    pub(super) task: RoutableTask,
    pub(super) agent: Id,
    pub(super) hold: Hold,
}

/// An agent as the router sees it. Its address is wiring, kept in the
/// router apart.
pub(super) struct RoutedAgent {
    pub(super) view: AgentView,
    /// Monotonic tick of the agent's last offer or of becoming available.
    pub(super) idle_since: u64,
    /// Tasks this agent holds (reserved, assigned or wrapping).
    pub(super) held: Vec<Id>,
}

impl RoutedAgent {
    pub(super) fn free(&self, ch: ChannelKind) -> u32 {
        self.view
            .capacity
            .get(ch)
            .saturating_sub(self.view.load.get(ch))
    }

    fn eligible(&self, ch: ChannelKind) -> bool {
        self.view.connected && self.view.activity == Activity::Available && self.free(ch) > 0
    }

    fn has_skills(&self, skills: &[String]) -> bool {
        skills.iter().all(|s| self.view.skills.contains(s))
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
    Enqueued {
        task: RoutableTask,
    },
    Offered {
        task_id: Id,
        agent_id: Id,
        offer: u64,
    },
    Accepted {
        task_id: Id,
    },
    /// Offer declined (reject/timeout) or assignment withdrawn: back to the queue.
    Requeued {
        task_id: Id,
        declined_by: Option<Id>,
        at: SystemTime,
    },
    Wrapping {
        task_id: Id,
    },
    /// Completed, canceled, or dropped with its agent: no longer routed.
    Closed {
        task_id: Id,
    },
    AssignedDirect {
        task_id: Id,
        agent_id: Id,
        channel: ChannelKind,
        customer: Customer,
    },
    /// The outbound conversation behind a direct assignment exists.
    OutboundBound {
        task_id: Id,
        conversation_id: Id,
        customer: Customer,
    },
}

/// The state the router owns: everything needed to rebuild it by replaying
/// its events.
pub struct RouterState {
    /// Every agent's routing state: profile, presence, activity, load.
    pub(super) agents: HashMap<Id, RoutedAgent>,
    /// Per channel, the agents eligible there, best first (kept in step with
    /// `agents` by `reindex`).
    pub(super) index: AgentIndex,
    /// Per channel, the queued tasks by arrival order.
    pub(super) queues: [BTreeMap<u64, RoutableTask>; 4],
    /// task id → (channel, order) while queued.
    pub(super) queued: HashMap<Id, (ChannelKind, u64)>,
    /// Tasks out of the queue (offered, assigned, wrapping), by id.
    pub(super) held: HashMap<Id, HeldTask>,
    /// The arrival order the next new task gets.
    pub(super) next_order: u64,
    /// A counter that orders "idle since" among agents.
    tick: u64,
    /// Arrival → first offer, in microseconds.
    pub(super) latency: Histogram<u64>,
}

impl Default for RouterState {
    fn default() -> Self {
        RouterState {
            agents: HashMap::new(),
            index: AgentIndex::default(),
            queues: Default::default(),
            queued: HashMap::new(),
            held: HashMap::new(),
            next_order: 0,
            tick: 0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures is valid")),
        }
    }
}

impl RouterState {
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn unindex(&mut self, id: &Id) {
        self.index.remove(id);
    }

    fn reindex(&mut self, id: &Id) {
        match self.agents.get(id) {
            Some(agent) => {
                let free = ChannelKind::ALL.map(|ch| agent.eligible(ch).then(|| agent.free(ch)));
                self.index.update(id, free, agent.idle_since);
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
                            idle_since: tick,
                            held: Vec::new(),
                        },
                    );
                }
                self.reindex(&id);
            }
            RouterEvent::AgentRemoved { id } => {
                self.unindex(&id);
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
                        agent.idle_since = tick;
                    }
                    agent.view.activity = activity;
                }
                self.reindex(&id);
            }
            RouterEvent::Enqueued { task } => {
                self.next_order = self.next_order.max(task.order + 1);
                self.queued
                    .insert(task.task_id.clone(), (task.channel, task.order));
                self.queues[task.channel.index()].insert(task.order, task);
            }
            RouterEvent::Offered {
                task_id,
                agent_id,
                offer,
            } => {
                let Some((ch, order)) = self.queued.remove(&task_id) else {
                    return;
                };
                let Some(mut task) = self.queues[ch.index()].remove(&order) else {
                    return;
                };
                if !task.offered_before {
                    task.offered_before = true;
                    let micros = task.enqueued_at.elapsed().as_micros() as u64;
                    let _ = self.latency.record(micros.max(1));
                }
                let tick = self.tick();
                self.change_load(&agent_id, ch, true);
                if let Some(agent) = self.agents.get_mut(&agent_id) {
                    agent.idle_since = tick;
                    agent.held.push(task_id.clone());
                }
                self.reindex(&agent_id);
                self.held.insert(
                    task_id,
                    HeldTask {
                        task,
                        agent: agent_id,
                        hold: Hold::Reserved { offer },
                    },
                );
            }
            RouterEvent::Accepted { task_id } => {
                if let Some(h) = self.held.get_mut(&task_id) {
                    h.hold = Hold::Assigned;
                }
            }
            RouterEvent::Requeued {
                task_id,
                declined_by,
                at,
            } => {
                if let Some(h) = self.release(&task_id) {
                    let mut task = h.task;
                    if let Some(agent) = declined_by {
                        task.declined.retain(|d| d.agent != agent);
                        task.declined.push(Decline { agent, at });
                    }
                    // An outbound reservation whose conversation never came
                    // has nothing to route.
                    if !task.conversation_id.is_empty() {
                        self.queued
                            .insert(task.task_id.clone(), (task.channel, task.order));
                        self.queues[task.channel.index()].insert(task.order, task);
                    }
                }
            }
            RouterEvent::Wrapping { task_id } => {
                if let Some(h) = self.held.get_mut(&task_id) {
                    h.hold = Hold::Wrapping;
                }
            }
            RouterEvent::Closed { task_id } => {
                if let Some((ch, order)) = self.queued.remove(&task_id) {
                    self.queues[ch.index()].remove(&order);
                }
                self.release(&task_id);
            }
            RouterEvent::AssignedDirect {
                task_id,
                agent_id,
                channel,
                customer,
            } => {
                let order = self.next_order;
                self.next_order += 1;
                self.change_load(&agent_id, channel, true);
                if let Some(agent) = self.agents.get_mut(&agent_id) {
                    agent.held.push(task_id.clone());
                }
                self.reindex(&agent_id);
                self.held.insert(
                    task_id.clone(),
                    HeldTask {
                        task: RoutableTask {
                            task_id,
                            conversation_id: Id::from(""),
                            channel,
                            skills: Arc::from(Vec::new()),
                            customer,
                            queue: crate::protocol::DEFAULT_QUEUE.to_owned(),
                            priority: 0,
                            created_at: SystemTime::now(),
                            order,
                            enqueued_at: Instant::now(),
                            declined: Vec::new(),
                            offered_before: true,
                        },
                        agent: agent_id,
                        hold: Hold::Assigned,
                    },
                );
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
        }
    }

    /// Drop a held task and give its capacity back.
    fn release(&mut self, task_id: &Id) -> Option<HeldTask> {
        let h = self.held.remove(task_id)?;
        self.change_load(&h.agent, h.task.channel, false);
        if let Some(agent) = self.agents.get_mut(&h.agent) {
            agent.held.retain(|t| t != task_id);
        }
        self.reindex(&h.agent);
        Some(h)
    }

    /// Who gets a task at `now`: the best eligible agent in index order with
    /// the skills who has not declined it; failing that, the eligible agent who
    /// declined it longest ago, once `cooldown` (the `reoffer_cooldown`
    /// setting) has passed since that decline. So a decline passes an agent
    /// over while someone else can take the task, and never strands the task
    /// when nobody else can.
    pub(super) fn pick(&self, task: &RoutableTask, now: SystemTime, cooldown: Duration) -> Pick {
        let skilled = |id: &Id| {
            self.agents
                .get(id)
                .is_some_and(|a| a.has_skills(&task.skills))
        };
        if let Some(id) = self
            .index
            .best(task.channel, |id| !task.declined_by(id) && skilled(id))
        {
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
}

/// Agents by what they can do now. Every agent is in exactly one of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AgentCounts {
    /// Connected, available, with free capacity.
    pub available: usize,
    /// Connected and available, but full.
    pub busy: usize,
    /// Connected, on break.
    #[serde(rename = "break")]
    pub on_break: usize,
    /// Logged out (activity `offline`).
    pub offline: usize,
    /// Socket gone, tasks kept for the disconnect grace period.
    pub disconnected: usize,
}

impl AgentCounts {
    /// Count `agent`, as able to take work if `free` (on the channel counted).
    pub(super) fn count(&mut self, view: &AgentView, free: bool) {
        let slot = match (view.activity, view.connected) {
            (Activity::Offline, _) => &mut self.offline,
            (_, false) => &mut self.disconnected,
            (Activity::Break, true) => &mut self.on_break,
            (Activity::Available, true) if free => &mut self.available,
            (Activity::Available, true) => &mut self.busy,
        };
        *slot += 1;
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
        RoutableTask {
            task_id: id.into(),
            conversation_id: format!("cv_{id}").as_str().into(),
            channel: ChannelKind::Webchat,
            skills: Arc::from(Vec::new()),
            customer: Customer {
                address: "wc_1".into(),
                name: "Dana".into(),
            },
            queue: crate::protocol::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            created_at: SystemTime::UNIX_EPOCH,
            order,
            enqueued_at: Instant::now(),
            declined: Vec::new(),
            offered_before: false,
        }
    }

    fn queued(s: &RouterState, order: u64) -> RoutableTask {
        s.queues[ChannelKind::Webchat.index()][&order].clone()
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
            },
            RouterEvent::Enqueued {
                task: task("tk_2", 1),
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
            at: t0,
        });
        assert_eq!(load(&s, "ann"), 0);
        assert!(s.held.is_empty());
        assert!(s.index.contains(ChannelKind::Webchat, &"ann".into()));
        // Back ahead of the newer task, with the decline recorded.
        let first = s.queues[ChannelKind::Webchat.index()]
            .values()
            .next()
            .unwrap();
        assert_eq!(first.task_id, Id::from("tk_1"));
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
        });
        assert_eq!(s.queued.len(), 1);
        assert!(!s.queued.contains_key("tk_1"));
    }

    #[test]
    fn a_decliner_is_passed_over_while_another_can_take_it_then_picked_after_the_cooldown() {
        // Ann has been idle longest, so she would be first.
        let mut s = with_agents(&["ann", "bob"]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        s.apply(RouterEvent::Enqueued {
            task: task("tk_1", 0),
        });
        assert_eq!(
            s.pick(&queued(&s, 0), t0, COOLDOWN),
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
            at: t0,
        });
        let t = queued(&s, 0);
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
            }
        );
    }
}

//! The router: the single owner of the queues (their definitions and waiting
//! tasks) and of every agent's routing state (activity, presence, capacity,
//! load). It decides who gets which task; nothing else changes load, so there
//! is no double assignment and no capacity overrun.
//!
//! It sees every new task, accept, reject, offer timeout and capacity change —
//! never chat messages: once a task is assigned the conversation talks to the
//! agent directly.
//!
//! Data structures, chosen for the access pattern:
//! - per channel and routing policy, an ordered index of *eligible* agents,
//!   so the best agent is the first entry that passes the task's filter, found
//!   without scanning all agents (`index.rs`);
//! - waiting tasks in buckets per (queue, channel, skills relaxed), each a
//!   `BTreeMap` by a key that orders by effective priority (priority plus
//!   aging) for good, then arrival, so a task re-queued after a reject or
//!   timeout goes back ahead of newer ones, and a freed agent looks only at
//!   the head of each bucket it serves (`state.rs`).
//!
//! Every state change is a [`RouterEvent`] applied by [`RouterState::apply`]
//! through `Router::apply`, the one place routing state changes and is
//! journaled; queue definitions change that way too, and so do offers, which
//! the routing decisions return as events rather than apply. Messages
//! handled, by sender:
//! - the agents: [`UpsertAgent`], [`RemoveAgent`], [`AgentPresence`],
//!   [`AgentActivity`], [`GraceExpired`], [`Accept`], [`Reject`],
//!   [`ReserveOutbound`], and [`TaskClosed`] when an outbound conversation
//!   fails to open;
//! - the conversations: [`EnqueueTask`], [`BindOutbound`], [`TaskWrapping`],
//!   [`TaskClosed`];
//! - transfers and parking (`transfers.rs`): [`TransferTask`],
//!   [`CancelTransfer`], [`ParkTask`] from the agents (and the supervisors'
//!   route), [`TransferDone`] and [`UnparkTask`] from the conversations;
//! - the HTTP routes: [`GetAgents`], [`ListTasks`], [`GetStats`] (answered
//!   with [`RouterStats`]), and the queue API's [`GetQueues`],
//!   [`UpsertQueue`], [`DeleteQueue`] (`queues.rs`).
//!
//! It sends the conversations `Reserve`, `Assign`, `Requeued`, `RouterCancel`
//! (maximum wait, closed) and `RouterNotice` (closed message), the agents
//! `Rescind` and `ActivitySet` (`not_responding`), and supervisors
//! `agent.state`, `agent.removed` and `stats` (every queue's figures when
//! they changed, at most once a second, checked by an interval timer).
//!
//! Declines: an agent who rejects a task or lets its offer time out is passed
//! over for it while anyone else eligible can take it, and is offered it again
//! `reoffer_cooldown` after its decline if nobody has (longest-ago decline
//! first): a task never waits forever on the one agent who once let it lapse.
//! `max_missed_offers` timeouts in a row make the agent `not_responding`.
//!
//! Where things are: this file is the actor and its wiring (addresses, timers,
//! the offer counter); `state.rs` the state, its events, `apply` and the
//! routing decisions (pure, unit-tested, and property-tested in `props.rs`);
//! `stats.rs` each queue's day, counted from those events;
//! `queue.rs` a queue's definition and checks; `dispatch.rs` the wiring of
//! offers, timers, cool-downs, overflow, maximum wait and taking tasks back;
//! `messages.rs` and `queues.rs` every message with its handler;
//! `transfers.rs` transfers (cold and warm) and parking; `index.rs`
//! the eligible-agent index.

mod dispatch;
pub mod index;
mod messages;
#[cfg(test)]
mod props;
pub mod queue;
mod queues;
mod restore;
mod state;
mod stats;
mod transfers;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;

use crate::agent::Agent;
use crate::conversation::Conversation;
use crate::deadlines::Deadlines;
use crate::journal::record::{self, RecordRef};
use crate::protocol::{Event, Id, QueueStats};
use crate::webhooks::payload::ActivityData;
use crate::webhooks::EventKind;
use crate::wiring::Broker;

pub use crate::protocol::RescindReason;
pub use messages::{
    Accept, AgentActivity, AgentPresence, BindOutbound, EnqueueTask, GetAgents, GetStats,
    GraceExpired, ListTasks, Reject, RemoveAgent, ReserveOutbound, RouterStats, TaskClosed,
    TaskWrapping, UpsertAgent,
};
pub use queue::{Policy, Queue};
pub use queues::{DeleteQueue, GetQueues, QueueChange, UpsertQueue};
pub use restore::{Restored, RestoredTask};
pub use state::{
    AgentCounts, Bucket, Decline, Pick, RoutableTask, Routed, RouterEvent, RouterState,
};
pub use stats::Outcome;
pub use transfers::{
    CancelTransfer, ParkTask, TransferBy, TransferDone, TransferTask, UnparkTask, SUPERVISOR,
};

/// The actor: the routing state, and the wiring around it (addresses, timers,
/// the offer counter).
pub struct Router {
    broker: Arc<Broker>,
    state: RouterState,
    /// Agents' addresses, as each first registered (wiring, not state).
    addrs: HashMap<Id, Addr<Agent>>,
    /// Wiring, not state: each routed task's conversation, and the running
    /// offers' timeouts (task → offer number).
    conversations: HashMap<Id, Addr<Conversation>>,
    timers: Deadlines<Id, u64>,
    /// Tasks that only agents in their re-offer cool-down could take, and
    /// when the first cool-down ends: route them again then.
    cooldowns: Deadlines<Id, ()>,
    /// Waiting tasks' overflow and maximum-wait deadlines.
    overflows: Deadlines<Id, ()>,
    max_waits: Deadlines<Id, ()>,
    /// Warm transfers' offer timeouts (task → offer number), and parked
    /// tasks' `until` (`transfers.rs`).
    consult_timers: Deadlines<Id, u64>,
    parks: Deadlines<Id, ()>,
    next_offer: u64,
    /// Something changed since the last `stats` frame.
    stats_dirty: bool,
    /// When the last `stats` frame went, and its figures.
    stats_sent: Option<(Instant, Vec<QueueStats>)>,
    /// The UTC day (on the router's clock) of the last look: a new day
    /// zeroes the `today` figures, a change supervisors are told of.
    stats_day: u64,
}

/// At most one `stats` frame per this.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often the router looks whether a `stats` frame is due.
const STATS_CHECK: Duration = Duration::from_millis(250);

impl Router {
    pub fn new(broker: Arc<Broker>) -> Self {
        Router {
            state: RouterState::new(broker.config.aging),
            addrs: HashMap::new(),
            conversations: HashMap::new(),
            timers: Deadlines::default(),
            cooldowns: Deadlines::default(),
            overflows: Deadlines::default(),
            max_waits: Deadlines::default(),
            consult_timers: Deadlines::default(),
            parks: Deadlines::default(),
            next_offer: 0,
            stats_dirty: false,
            stats_sent: None,
            stats_day: 0,
            broker,
        }
    }

    /// The router with the configured queues (`[[queues]]`) defined.
    pub fn with_queues(broker: Arc<Broker>) -> Self {
        let mut router = Router::new(broker);
        router.define_configured_queues();
        router
    }

    /// Define (or redefine) the configured queues: at start, and after a
    /// replay, where the configuration file wins over the journal.
    pub fn define_configured_queues(&mut self) {
        let broker = self.broker.clone();
        let router = self;
        let ids: Vec<&str> = broker.config.queues.iter().map(|q| q.id.as_str()).collect();
        for queue in &broker.config.queues {
            // Checked when the configuration loaded; again here (it fills the
            // name in) for configurations built in code.
            let mut queue = queue.clone();
            match queue.validate(|id| id == queue::DEFAULT_QUEUE || ids.contains(&id)) {
                Ok(()) => router.apply(RouterEvent::QueueUpserted { queue }),
                Err(e) => tracing::error!("queue {} not defined: {e}", queue.id),
            }
        }
    }

    /// The one place routing state changes: [`RouterState::apply`]. Queue
    /// definitions also update the registry's copy of their names (what a
    /// canned response's `{{queue.name}}` becomes).
    fn apply(&mut self, event: RouterEvent) {
        record::write(self.broker.journal.as_ref(), RecordRef::Router(&event));
        // An activity change is an `agent.activity` webhook event, keyed by
        // the agent (the router applies them in order).
        let activity_before = match &event {
            RouterEvent::ActivityChanged { id, .. }
                if self.broker.webhooks.wants(EventKind::AgentActivity) =>
            {
                self.state
                    .agents
                    .get(id)
                    .map(|a| (id.clone(), a.view.activity))
            }
            _ => None,
        };
        match &event {
            RouterEvent::QueueUpserted { queue } => {
                self.broker.queue_names.set(&queue.id, &queue.name)
            }
            RouterEvent::QueueRemoved { id } => self.broker.queue_names.remove(id),
            _ => {}
        }
        self.state.apply(event);
        self.stats_dirty = true;
        if let Some((id, previous)) = activity_before {
            if let Some(agent) = self.state.agents.get(&id) {
                if agent.view.activity != previous {
                    self.broker
                        .webhooks
                        .emit(EventKind::AgentActivity, &id, || ActivityData {
                            agent: &agent.view,
                            previous,
                        });
                }
            }
        }
    }

    /// The router's clock (`Config.clock`): what the statistics count by.
    fn clock_now(&self) -> SystemTime {
        self.broker.config.clock.now()
    }

    /// Push `stats` to supervisors if something changed, at most once per
    /// [`STATS_EVERY`], with the figures of now (changes in between are
    /// coalesced). Skipped when the figures equal the last frame's. Never
    /// waits: the frame goes to the hub with `do_send`.
    fn push_stats(&mut self) {
        let day = stats::day_of(self.clock_now());
        if day != self.stats_day {
            self.stats_day = day;
            self.stats_dirty = true;
        }
        if !self.stats_dirty
            || self
                .stats_sent
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < STATS_EVERY)
            || self.broker.supervisors.load(Ordering::Relaxed) == 0
        {
            return;
        }
        self.stats_dirty = false;
        let queues = self.state.queue_stats(self.clock_now());
        if self.stats_sent.as_ref().is_some_and(|(_, q)| *q == queues) {
            return;
        }
        self.broker.publish(|| Event::Stats {
            queues: Cow::Borrowed(&queues),
        });
        self.stats_sent = Some((Instant::now(), queues));
    }

    fn conversation_of(&self, task_id: &Id) -> Option<Addr<Conversation>> {
        self.conversations.get(task_id).cloned()
    }

    /// Find a task's conversation by its id, once, as the task arrives:
    /// messages between actors carry ids, and the registry is where an id
    /// becomes an address. (A conversation registers before its first act,
    /// so it is found unless it has already left memory.)
    fn locate(&mut self, task_id: &Id, conversation_id: &str) {
        if let Some(addr) = self.broker.conversation(conversation_id) {
            self.conversations.insert(task_id.clone(), addr);
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The router is fed by every agent and conversation; a small bounded
        // mailbox would only make senders that use `send` wait.
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(STATS_CHECK, |act, _| act.push_stats());
    }
}

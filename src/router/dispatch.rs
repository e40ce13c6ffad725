//! How the router moves tasks: queueing them, offering each to the agent
//! `pick` chooses, the offer timers and the re-offer cool-downs, and taking
//! tasks back (withdraw on timeout, disconnect or logout; close when done).
//!
//! A change to a task dispatches its channel, a change to an agent every
//! channel. The timers are two deadline queues (`crate::deadlines`), each one
//! actix timer armed for its earliest deadline rather than one timer per
//! offer: offer timeouts, and the end of the first cool-down of a task only
//! decliners could take, so such a task never waits on nobody while its
//! decliner sits idle.

use std::time::{Instant, SystemTime};

use actix::prelude::*;

use super::state::{Hold, Pick, RoutableTask, RouterEvent};
use super::{RescindReason, Router};
use crate::agent::Rescind;
use crate::conversation::{Requeued, Reserve};
use crate::protocol::{ChannelKind, Id};

impl Router {
    /// Queue a new task behind those already waiting (its arrival order).
    pub(super) fn enqueue(&mut self, mut task: RoutableTask) {
        task.order = self.state.next_order;
        self.apply(RouterEvent::Enqueued { task });
    }

    /// Offer as many queued tasks of `ch` as there are eligible agents, oldest
    /// first. Tasks nobody eligible can take are skipped, not blocking newer
    /// ones; a task only decliners in their cool-down could take is looked at
    /// again when the first cool-down ends.
    pub(super) fn dispatch(&mut self, ch: ChannelKind, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let mut cursor = 0u64;
        let mut cooling = Vec::new();
        while !self.state.index.is_empty(ch) {
            let Some((order, task)) = self.state.queues[ch.index()].range(cursor..).next() else {
                break;
            };
            cursor = order + 1;
            match self
                .state
                .pick(task, now, self.broker.config.reoffer_cooldown)
            {
                Pick::Agent(agent_id) => {
                    let task_id = task.task_id.clone();
                    self.offer(task_id, agent_id, ctx);
                }
                Pick::CoolingDown(at) => cooling.push((task.task_id.clone(), at)),
                Pick::Nobody => {}
            }
        }
        if !cooling.is_empty() {
            let base = Instant::now();
            for (task_id, at) in cooling {
                let wait = at.duration_since(now).unwrap_or_default();
                self.cooldowns.insert(task_id, base + wait, ch);
            }
            self.cooldowns.arm(ctx, Router::cooldowns_ended);
        }
    }

    /// A re-offer cool-down ended: those tasks' decliners may take them now.
    fn cooldowns_ended(&mut self, ctx: &mut Context<Self>) {
        let mut channels = [false; 4];
        for (_, ch) in self.cooldowns.take_expired() {
            channels[ch.index()] = true;
        }
        for ch in ChannelKind::ALL {
            if channels[ch.index()] {
                self.dispatch(ch, ctx);
            }
        }
        self.cooldowns.arm(ctx, Router::cooldowns_ended);
    }

    pub(super) fn dispatch_all(&mut self, ctx: &mut Context<Self>) {
        for ch in ChannelKind::ALL {
            self.dispatch(ch, ctx);
        }
    }

    fn offer(&mut self, task_id: Id, agent_id: Id, ctx: &mut Context<Self>) {
        self.next_offer += 1;
        let offer = self.next_offer;
        self.apply(RouterEvent::Offered {
            task_id: task_id.clone(),
            agent_id: agent_id.clone(),
            offer,
        });
        let timeout = self.broker.config.offer_timeout;
        self.timers
            .insert(task_id.clone(), Instant::now() + timeout, offer);
        self.timers.arm(ctx, Router::offers_expired);
        let Some(agent) = self.addrs.get(&agent_id) else {
            return;
        };
        if let Some(conv) = self.conversations.get(&task_id) {
            conv.do_send(Reserve {
                agent_id: agent_id.clone(),
                agent: agent.clone(),
                expires_at: crate::protocol::now() + timeout,
            });
        }
    }

    /// The offer timer fired: withdraw every offer whose time is up.
    fn offers_expired(&mut self, ctx: &mut Context<Self>) {
        for (task_id, offer) in self.timers.take_expired() {
            self.offer_expired(task_id, offer, ctx);
        }
        self.timers.arm(ctx, Router::offers_expired);
    }

    fn offer_expired(&mut self, task_id: Id, offer: u64, ctx: &mut Context<Self>) {
        let current = self
            .state
            .held
            .get(&task_id)
            .is_some_and(|h| h.hold == Hold::Reserved { offer });
        if current {
            self.withdraw(&task_id, RescindReason::Timeout, true, ctx);
        }
    }

    /// Take a held task away from its agent and put it back in the queue.
    fn withdraw(
        &mut self,
        task_id: &Id,
        reason: RescindReason,
        decline: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(h) = self.state.held.get(task_id) else {
            return;
        };
        let agent_id = h.agent.clone();
        let channel = h.task.channel;
        self.timers.remove(task_id);
        let conversation = self.conversation_of(task_id);
        if let Some(agent) = self.addrs.get(&agent_id) {
            agent.do_send(Rescind {
                task_id: task_id.clone(),
                reason,
            });
        }
        self.apply(RouterEvent::Requeued {
            task_id: task_id.clone(),
            declined_by: decline.then(|| agent_id.clone()),
            at: SystemTime::now(),
        });
        if let Some(conv) = conversation {
            conv.do_send(Requeued { reason });
        }
        self.dispatch(channel, ctx);
    }

    /// Withdraw an agent's offers (and, when `assigned_too`, its assigned tasks).
    pub(super) fn withdraw_agent_tasks(
        &mut self,
        agent_id: &Id,
        assigned_too: bool,
        ctx: &mut Context<Self>,
    ) {
        let held: Vec<Id> = self
            .state
            .agents
            .get(agent_id)
            .map(|a| a.held.clone())
            .unwrap_or_default();
        for task_id in held {
            let hold = self.state.held.get(&task_id).map(|h| h.hold);
            match hold {
                Some(Hold::Reserved { .. }) => {
                    self.withdraw(&task_id, RescindReason::Reassigned, false, ctx)
                }
                Some(Hold::Assigned) if assigned_too => {
                    self.withdraw(&task_id, RescindReason::Reassigned, false, ctx)
                }
                _ => {}
            }
        }
    }

    /// Stop routing a task: state first, then its wiring.
    pub(super) fn close(&mut self, task_id: Id) {
        self.timers.remove(&task_id);
        self.cooldowns.remove(&task_id);
        self.conversations.remove(&task_id);
        self.apply(RouterEvent::Closed { task_id });
    }
}

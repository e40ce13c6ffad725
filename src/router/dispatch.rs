//! How the router moves tasks: queueing them (business hours first), offering
//! each to the agent `pick` chooses (the customer's last agent first where the
//! queue says so), giving a freed agent the best task across the queues it
//! serves, the offer timers, re-offer cool-downs, overflow and maximum-wait
//! timers, and taking tasks back (withdraw on timeout, disconnect or logout;
//! cancel past the maximum wait; close when done).
//!
//! Two ways in, so that no waiting task ever has an eligible agent that was
//! not considered: a task that starts waiting (arrival, re-queue, overflow,
//! cool-down end) looks for an agent ([`Router::route_task`]); an agent that
//! can take more (available, connected, capacity freed or raised) looks for
//! the best task ([`Router::route_agent`]). A queue edit looks again at every
//! waiting task, best first.
//!
//! The timers are deadline queues (`crate::deadlines`), each one actix timer
//! armed for its earliest deadline rather than one timer per task.

use std::time::{Instant, SystemTime};

use actix::prelude::*;

use super::queue::Outside;
use super::state::{Hold, RoutableTask, Routed, RouterEvent, RouterState};
use super::stats::Outcome;
use super::{RescindReason, Router};
use crate::agent::{ActivitySet, Rescind};
use crate::conversation::{RequeueCause, Requeued, Reserve, RouterCancel, RouterNotice};
use crate::protocol::event::TransferFailure;
use crate::protocol::{Activity, CancelReason, Id, DEFAULT_QUEUE};

impl Router {
    /// A new task: into its queue (the `default` one if its queue is gone),
    /// unless the queue is closed and cancels; then find it an agent.
    pub(super) fn enqueue(&mut self, mut task: RoutableTask, ctx: &mut Context<Self>) {
        let queue = match self.state.queue(&task.queue) {
            Some(q) => q.clone(),
            None => {
                task.queue = DEFAULT_QUEUE.to_owned();
                self.state
                    .queue(DEFAULT_QUEUE)
                    .cloned()
                    .unwrap_or_else(super::Queue::default_queue)
            }
        };
        task.priority = queue.priority;
        task.order = self.state.next_order;
        task.entered_queue_at = task.created_at;
        task.relaxed = false;
        if let Some(hours) = &queue.business_hours {
            if !hours.is_open(self.broker.config.clock.now()) {
                if hours.outside == Outside::Cancel {
                    // Counted as created and canceled in its queue.
                    let task_id = task.task_id.clone();
                    let conversation = self.conversations.remove(&task_id);
                    self.apply(RouterEvent::Enqueued {
                        task,
                        clock_at: self.clock_now(),
                    });
                    self.close(task_id, Outcome::Canceled);
                    if let Some(conv) = conversation {
                        conv.do_send(RouterCancel {
                            reason: CancelReason::Closed,
                            message: hours.closed_message.clone(),
                        });
                    }
                    return;
                }
                if !hours.closed_message.is_empty() {
                    if let Some(conv) = self.conversations.get(&task.task_id) {
                        conv.do_send(RouterNotice {
                            message: hours.closed_message.clone(),
                        });
                    }
                }
            }
        }
        let task_id = task.task_id.clone();
        self.apply(RouterEvent::Enqueued {
            task,
            clock_at: self.clock_now(),
        });
        self.schedule_waits(&task_id, ctx);
        self.route_task(&task_id, ctx);
    }

    /// A waiting task looks for an agent ([`RouterState::route_task`]).
    pub(super) fn route_task(&mut self, task_id: &Id, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let cooldown = self.broker.config.reoffer_cooldown;
        self.route(now, ctx, |state, offer| {
            state.route_task(task_id, now, cooldown, offer)
        });
    }

    /// An agent who can take more gets the best waiting tasks across every
    /// queue it serves ([`RouterState::route_agent`]), one at a time.
    pub(super) fn route_agent(&mut self, agent_id: &Id, ctx: &mut Context<Self>) {
        let now = SystemTime::now();
        let cooldown = self.broker.config.reoffer_cooldown;
        self.route(now, ctx, |state, offer| {
            state.route_agent(agent_id, now, cooldown, offer)
        });
    }

    /// Make routing decisions until one offers nothing, each offer applied
    /// (and so journaled) through [`Router::apply`] before the next decision
    /// looks at the state, in the order made; then the wiring of what they
    /// decided: each offer's timer and its `Reserve` to the conversation,
    /// cool-down wake-ups. Nobody hears of an offer before all are applied.
    fn route(
        &mut self,
        now: SystemTime,
        ctx: &mut Context<Self>,
        decide: impl Fn(&RouterState, u64) -> Routed,
    ) {
        let mut offers = Vec::new();
        let mut cooling = Vec::new();
        loop {
            let routed = decide(&self.state, self.next_offer + 1);
            cooling.extend(routed.cooling);
            let Some(event) = routed.offer else {
                break;
            };
            self.next_offer += 1;
            if let RouterEvent::Offered {
                task_id,
                agent_id,
                offer,
            } = &event
            {
                offers.push((task_id.clone(), agent_id.clone(), *offer));
            }
            self.apply(event);
        }
        for (task_id, agent_id, offer) in offers {
            self.offered(task_id, agent_id, offer, ctx);
        }
        if !cooling.is_empty() {
            self.cool_down(cooling, now, ctx);
        }
    }

    /// Look at every waiting task again, best first (after a queue edit).
    pub(super) fn route_all(&mut self, ctx: &mut Context<Self>) {
        for task_id in self.state.waiting_in_order() {
            self.schedule_waits(&task_id, ctx);
            self.route_task(&task_id, ctx);
        }
    }

    /// Look again at these tasks when their first decliner's cool-down ends.
    fn cool_down(
        &mut self,
        tasks: Vec<(Id, SystemTime)>,
        now: SystemTime,
        ctx: &mut Context<Self>,
    ) {
        let base = Instant::now();
        for (task_id, at) in tasks {
            let wait = at.duration_since(now).unwrap_or_default();
            self.cooldowns.insert(task_id, base + wait, ());
        }
        self.cooldowns.arm(ctx, Router::cooldowns_ended);
    }

    /// A re-offer cool-down ended: those tasks' decliners may take them now.
    fn cooldowns_ended(&mut self, ctx: &mut Context<Self>) {
        for (task_id, ()) in self.cooldowns.take_expired() {
            self.route_task(&task_id, ctx);
        }
        self.cooldowns.arm(ctx, Router::cooldowns_ended);
    }

    /// (Re)arm a waiting task's overflow and maximum-wait timers from its
    /// queue's settings; a deadline already past fires at once.
    pub(super) fn schedule_waits(&mut self, task_id: &Id, ctx: &mut Context<Self>) {
        let Some(task) = self.state.waiting_task(task_id) else {
            return;
        };
        let queue = self.state.queue(&task.queue);
        let (now, base) = (SystemTime::now(), Instant::now());
        let at = |t: SystemTime| base + t.duration_since(now).unwrap_or_default();
        match queue.and_then(|q| q.overflow.as_ref()) {
            Some(o) if !task.relaxed => {
                self.overflows
                    .insert(task_id.clone(), at(task.entered_queue_at + o.after), ())
            }
            _ => {
                self.overflows.remove(task_id);
            }
        }
        match queue.and_then(|q| q.max_wait) {
            Some(max) => {
                let since = task.handoff.requeued_at.unwrap_or(task.created_at);
                self.max_waits.insert(task_id.clone(), at(since + max), ())
            }
            None => {
                self.max_waits.remove(task_id);
            }
        }
        self.overflows.arm(ctx, Router::overflows_due);
        self.max_waits.arm(ctx, Router::max_waits_due);
    }

    /// Tasks that waited their queue's `overflow.after`: to the next queue,
    /// or the same one with skills relaxed. (A task on offer then is looked
    /// at again if it comes back.)
    fn overflows_due(&mut self, ctx: &mut Context<Self>) {
        for (task_id, ()) in self.overflows.take_expired() {
            let Some(task) = self.state.waiting_task(&task_id) else {
                continue;
            };
            let Some(overflow) = self
                .state
                .queue(&task.queue)
                .and_then(|q| q.overflow.clone())
            else {
                continue;
            };
            let to = overflow.to.filter(|q| self.state.queue(q).is_some());
            if to.is_none() && !overflow.relax_skills {
                continue;
            }
            self.apply(RouterEvent::Overflowed {
                task_id: task_id.clone(),
                to,
                at: SystemTime::now(),
            });
            self.schedule_waits(&task_id, ctx);
            self.route_task(&task_id, ctx);
        }
        self.overflows.arm(ctx, Router::overflows_due);
    }

    /// Tasks still waiting past their queue's `max_wait`: canceled, and the
    /// customer told the queue's message.
    fn max_waits_due(&mut self, ctx: &mut Context<Self>) {
        for (task_id, ()) in self.max_waits.take_expired() {
            let Some(task) = self.state.waiting_task(&task_id) else {
                continue;
            };
            let message = self
                .state
                .queue(&task.queue)
                .map(|q| q.max_wait_message.clone())
                .unwrap_or_default();
            let conversation = self.conversation_of(&task_id);
            self.close(task_id, Outcome::Abandoned);
            if let Some(conv) = conversation {
                conv.do_send(RouterCancel {
                    reason: CancelReason::MaxWait,
                    message,
                });
            }
        }
        self.max_waits.arm(ctx, Router::max_waits_due);
    }

    /// An offer was made: its timer, and the conversation told.
    pub(super) fn offered(
        &mut self,
        task_id: Id,
        agent_id: Id,
        offer: u64,
        ctx: &mut Context<Self>,
    ) {
        let timeout = self.broker.config.offer_timeout;
        self.timers
            .insert(task_id.clone(), Instant::now() + timeout, offer);
        self.timers.arm(ctx, Router::offers_expired);
        if !self.addrs.contains_key(&agent_id) {
            return;
        }
        let Some(held) = self.state.held.get(&task_id) else {
            return;
        };
        if let Some(conv) = self.conversations.get(&task_id) {
            conv.do_send(Reserve {
                agent_id: agent_id.clone(),
                expires_at: crate::protocol::now() + timeout,
                queue: held.task.queue.clone(),
                priority: held.task.priority,
                offer,
                transfer: held
                    .task
                    .handoff
                    .in_transfer
                    .then(|| held.task.handoff.transfers.last().cloned())
                    .flatten(),
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

    /// An offer lapsed: back to the queue, the agent counted as having missed
    /// it; at `max_missed_offers` in a row the agent is set `not_responding`
    /// (its other offers withdrawn) before anything is routed again.
    fn offer_expired(&mut self, task_id: Id, offer: u64, ctx: &mut Context<Self>) {
        let current = self
            .state
            .held
            .get(&task_id)
            .filter(|h| h.hold == Hold::Reserved { offer })
            .map(|h| h.agent.clone());
        let Some(agent_id) = current else {
            return;
        };
        self.take_back(&task_id, RescindReason::Timeout, Some(true));
        let mut back = vec![task_id];
        let max = self.broker.config.max_missed_offers;
        if max > 0 && self.state.missed_offers(&agent_id) >= max {
            self.apply(RouterEvent::ActivityChanged {
                id: agent_id.clone(),
                activity: Activity::NotResponding,
            });
            if let Some(agent) = self.addrs.get(&agent_id) {
                agent.do_send(ActivitySet {
                    activity: Activity::NotResponding,
                    reason: "missed_offers",
                });
            }
            self.publish_agent(&agent_id);
            back.extend(self.take_back_agent(&agent_id, false, ctx));
        }
        self.route_back(back, ctx);
        self.route_agent(&agent_id, ctx);
    }

    /// Take a held task from its agent and put it back in the queue, without
    /// routing anything yet. `decline`: None (withdrawn: the agent left),
    /// Some(true) (its offer timed out), Some(false) (rejected).
    pub(super) fn take_back(&mut self, task_id: &Id, reason: RescindReason, decline: Option<bool>) {
        let Some(h) = self.state.held.get(task_id) else {
            return;
        };
        let agent_id = h.agent.clone();
        self.timers.remove(task_id);
        // A rejecting agent has dropped the offer already.
        if decline != Some(false) {
            if let Some(agent) = self.addrs.get(&agent_id) {
                agent.do_send(Rescind {
                    task_id: task_id.clone(),
                    reason,
                });
            }
        }
        self.apply(RouterEvent::Requeued {
            task_id: task_id.clone(),
            declined_by: decline.map(|_| agent_id.clone()),
            missed: decline == Some(true),
            at: SystemTime::now(),
        });
        if let Some(conv) = self.conversation_of(task_id) {
            let cause = match decline {
                Some(false) => RequeueCause::Rejected,
                Some(true) => RequeueCause::TimedOut,
                None => RequeueCause::Withdrawn,
            };
            conv.do_send(Requeued { reason, cause });
        }
    }

    /// Withdraw an agent's offers (and, when `assigned_too`, its assigned
    /// tasks) and route them again.
    pub(super) fn withdraw_agent_tasks(
        &mut self,
        agent_id: &Id,
        assigned_too: bool,
        ctx: &mut Context<Self>,
    ) {
        let back = self.take_back_agent(agent_id, assigned_too, ctx);
        self.route_back(back, ctx);
    }

    /// Put an agent's offers (and, when `assigned_too`, its assigned tasks)
    /// back in the queue, without routing them yet.
    fn take_back_agent(
        &mut self,
        agent_id: &Id,
        assigned_too: bool,
        ctx: &mut Context<Self>,
    ) -> Vec<Id> {
        let held: Vec<Id> = self
            .state
            .agents
            .get(agent_id)
            .map(|a| a.held.clone())
            .unwrap_or_default();
        let mut back = Vec::new();
        let mut freed_targets = Vec::new();
        // Warm transfers on offer to it fail: it will not answer.
        for task_id in self.consults_to(agent_id) {
            self.consult_failed(&task_id, TransferFailure::Unavailable, ctx);
        }
        for task_id in held {
            let hold = self.state.held.get(&task_id).map(|h| h.hold);
            let take = match hold {
                Some(Hold::Reserved { .. }) => true,
                Some(Hold::Assigned) => assigned_too,
                _ => false,
            };
            // Its warm transfer was accepted: the target takes it instead.
            if take && hold == Some(Hold::Assigned) && self.finish_accepted_consult(&task_id) {
                continue;
            }
            if take {
                // A warm transfer of it fails: its target's capacity comes
                // back (routed once the tasks are back, below).
                let freed = self.drop_consult(&task_id);
                self.take_back(&task_id, RescindReason::Reassigned, None);
                back.push(task_id);
                freed_targets.extend(freed);
            }
        }
        for target in freed_targets {
            self.route_agent(&target, ctx);
        }
        back
    }

    /// Route tasks just put back, best first: routing each as it came back
    /// could give a newer one the place an older one needed.
    fn route_back(&mut self, back: Vec<Id>, ctx: &mut Context<Self>) {
        // All back first, then routed best first: routing each as it comes
        // back could give a newer one the place an older one needed.
        for task_id in self.state.in_wait_order(&back) {
            self.schedule_waits(&task_id, ctx);
            self.route_task(&task_id, ctx);
        }
    }

    /// Stop routing a task: state first, then its wiring.
    pub(super) fn close(&mut self, task_id: Id, outcome: Outcome) {
        self.timers.remove(&task_id);
        self.cooldowns.remove(&task_id);
        self.overflows.remove(&task_id);
        self.max_waits.remove(&task_id);
        self.conversations.remove(&task_id);
        self.apply(RouterEvent::Closed {
            task_id,
            at: SystemTime::now(),
            outcome,
            clock_at: self.clock_now(),
        });
    }
}

//! Transfers and parking, as the router decides them: who may hand a task
//! on, to what, and the capacity of everyone involved. The conversation
//! follows (it moves its task and tells the agents and the customer); the
//! router never lets a task have two holders or none.
//!
//! Messages handled, by sender:
//! - the agents: [`TransferTask`] (cold or warm, to a queue or an agent;
//!   also the supervisor's cold transfer over HTTP), [`CancelTransfer`],
//!   [`ParkTask`]; a warm transfer's target answers with the ordinary
//!   `Accept` and `Reject` (`messages.rs` hands those here first);
//! - the conversations: [`TransferDone`] (a warm transfer's move made),
//!   [`UnparkTask`] (the customer wrote to a parked conversation).
//!
//! It sends the conversations `TransferredAway`, `ConsultOffer`,
//! `TransferAccept`, `TransferNotMade`, `ParkedAway` and `BackFromPark`, and
//! the target agents `Rescind` when a warm transfer offered to them is
//! withdrawn.
//!
//! Capacity: a cold transfer gives the sender's back at once; a warm one
//! counts the target's from its offer and the sender's until the move; a
//! parked task counts for nobody.

use serde::{Deserialize, Serialize};
use std::time::{Instant, SystemTime};

use actix::prelude::*;

use super::state::{Consult, Hold, Pick, RouterEvent};
use super::{RescindReason, Router};
use crate::agent::Rescind;
use crate::conversation::{
    BackFromPark, ConsultOffer, ParkedAway, TransferAccept, TransferNotMade, TransferredAway,
};
use crate::error::ApiError;
use crate::protocol::event::TransferFailure;
use crate::protocol::{Id, Transfer, TransferMode, TransferTarget, MAX_TRANSFER_NOTE};

/// Who asks for a transfer: an agent that must hold the task, or a
/// supervisor (`POST /v1/tasks/{id}/transfer`), who may move any assigned
/// task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferBy {
    Agent(Id),
    Supervisor,
}

/// The name a supervisor's transfer carries as its `from`.
pub const SUPERVISOR: &str = "supervisor";

/// Hand a task to a queue or an agent.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct TransferTask {
    pub by: TransferBy,
    pub task_id: String,
    pub to: TransferTarget,
    pub mode: TransferMode,
    pub note: String,
    /// Travels on to the sender's `task.transferred` (cold).
    pub reference: Option<String>,
}

impl Handler<TransferTask> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: TransferTask, ctx: &mut Context<Self>) -> Self::Result {
        if msg.by == TransferBy::Supervisor && msg.mode == TransferMode::Warm {
            return Err(ApiError::BadRequest(
                "a supervisor's transfer is cold; only the agent holding a task transfers it warm"
                    .into(),
            ));
        }
        let chars = msg.note.chars().count();
        if chars > MAX_TRANSFER_NOTE {
            return Err(ApiError::TextTooLong(format!(
                "the note has {chars} characters; the limit is {MAX_TRANSFER_NOTE}"
            )));
        }
        let (task_id, holder) = self.held_for_handoff(&msg.by, &msg.task_id)?;
        let target = self.check_target(&task_id, &holder, &msg.to, msg.mode)?;
        let from = match &msg.by {
            TransferBy::Agent(id) => id.clone(),
            TransferBy::Supervisor => Id::from(SUPERVISOR),
        };
        let transfer = Transfer {
            from,
            to: msg.to,
            mode: msg.mode,
            note: msg.note,
            at: crate::protocol::now(),
        };
        match msg.mode {
            TransferMode::Cold => self.cold(task_id, holder, target, transfer, msg.reference, ctx),
            TransferMode::Warm => {
                let target = target.ok_or_else(|| {
                    ApiError::InvalidState("no agent can take a warm transfer now".into())
                })?;
                self.warm(task_id, target, transfer, ctx);
            }
        }
        Ok(())
    }
}

/// The sender withdraws its pending warm transfer.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct CancelTransfer {
    pub agent_id: Id,
    pub task_id: String,
}

impl Handler<CancelTransfer> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: CancelTransfer, ctx: &mut Context<Self>) -> Self::Result {
        let (task_id, _) = self.held_by_agent(&msg.agent_id, &msg.task_id)?;
        match self.state.consults.get(&task_id) {
            None => Err(ApiError::InvalidState(format!(
                "task {task_id} has no transfer pending"
            ))),
            Some(c) if c.accepted => Err(ApiError::InvalidState(format!(
                "{} already accepted task {task_id}",
                c.target
            ))),
            Some(_) => {
                self.consult_failed(&task_id, TransferFailure::Canceled, ctx);
                Ok(())
            }
        }
    }
}

/// Conversation: the warm transfer's target holds the conversation now.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct TransferDone {
    pub task_id: Id,
    pub offer: u64,
}

impl Handler<TransferDone> for Router {
    type Result = ();

    fn handle(&mut self, msg: TransferDone, ctx: &mut Context<Self>) {
        let current = self
            .state
            .consults
            .get(&msg.task_id)
            .is_some_and(|c| c.offer == msg.offer && c.accepted);
        let Some(from) = self.state.held.get(&msg.task_id).map(|h| h.agent.clone()) else {
            return;
        };
        if current {
            self.apply(RouterEvent::TransferredWarm {
                task_id: msg.task_id,
            });
            self.route_agent(&from, ctx);
        }
    }
}

/// Park a task: its agent lets go, capacity is given back, and the task
/// waits aside until the customer writes or `until`.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct ParkTask {
    pub agent_id: Id,
    pub task_id: String,
    pub until: Option<SystemTime>,
    pub reference: Option<String>,
}

impl Handler<ParkTask> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: ParkTask, ctx: &mut Context<Self>) -> Self::Result {
        let (task_id, holder) = self.held_by_agent(&msg.agent_id, &msg.task_id)?;
        if self.state.consults.contains_key(&task_id) {
            return Err(ApiError::InvalidState(format!(
                "task {task_id} has a transfer pending: cancel it first"
            )));
        }
        if let Some(until) = msg.until {
            if until <= SystemTime::now() {
                return Err(ApiError::BadRequest(
                    "until is in the past; leave it out to park until the customer writes".into(),
                ));
            }
        }
        self.apply(RouterEvent::Parked {
            task_id: task_id.clone(),
            until: msg.until,
        });
        if let Some(conv) = self.conversation_of(&task_id) {
            conv.do_send(ParkedAway {
                from: holder.clone(),
                until: msg.until,
                reference: msg.reference,
            });
        }
        if let Some(until) = msg.until {
            let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
            self.parks.insert(task_id, Instant::now() + wait, ());
            self.parks.arm(ctx, Router::parks_due);
        }
        self.route_agent(&holder, ctx);
        Ok(())
    }
}

/// Conversation: the customer wrote to a parked conversation (which has
/// moved its task to `queued`): back to the queue.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct UnparkTask {
    pub task_id: Id,
}

impl Handler<UnparkTask> for Router {
    type Result = ();

    fn handle(&mut self, msg: UnparkTask, ctx: &mut Context<Self>) {
        self.unpark(&msg.task_id, ctx);
    }
}

impl Router {
    /// The task `by` may hand on (transfer), and its holder: an agent must
    /// hold it assigned; a supervisor may move any assigned task.
    fn held_for_handoff(&self, by: &TransferBy, task_id: &str) -> Result<(Id, Id), ApiError> {
        match by {
            TransferBy::Agent(agent) => self.held_by_agent(agent, task_id),
            TransferBy::Supervisor => match self.state.held.get(task_id) {
                Some(h) if h.hold == Hold::Assigned => Ok((task_id.into(), h.agent.clone())),
                Some(_) => Err(ApiError::InvalidState(format!(
                    "task {task_id} is not assigned: only an assigned task is transferred"
                ))),
                None if self.state.queued.contains_key(task_id)
                    || self.state.parked.contains_key(task_id)
                    || self.broker.task_exists(task_id) =>
                {
                    Err(ApiError::InvalidState(format!(
                        "task {task_id} is not assigned: only an assigned task is transferred"
                    )))
                }
                None => Err(ApiError::UnknownTask(task_id.to_owned())),
            },
        }
    }

    /// The task, if `agent` holds it assigned; why not otherwise.
    fn held_by_agent(&self, agent: &Id, task_id: &str) -> Result<(Id, Id), ApiError> {
        match self.state.held.get(task_id) {
            Some(h) if &h.agent == agent && h.hold == Hold::Assigned => {
                Ok((task_id.into(), agent.clone()))
            }
            Some(h) if &h.agent == agent => Err(ApiError::InvalidState(format!(
                "task {task_id} is not assigned to you yet, or has ended"
            ))),
            None if !self.state.queued.contains_key(task_id)
                && !self.state.parked.contains_key(task_id)
                && !self.broker.task_exists(task_id) =>
            {
                Err(ApiError::UnknownTask(task_id.to_owned()))
            }
            _ => Err(ApiError::NotYourTask(format!(
                "task {task_id} is not assigned to you"
            ))),
        }
    }

    /// Check a transfer's target. Returns the agent to offer the task to
    /// now: the named agent, or (warm, to a queue) the best agent of that
    /// queue other than the holder; `None` for a cold transfer to a queue.
    fn check_target(
        &self,
        task_id: &Id,
        holder: &Id,
        to: &TransferTarget,
        mode: TransferMode,
    ) -> Result<Option<Id>, ApiError> {
        let Some(h) = self.state.held.get(task_id) else {
            return Err(ApiError::UnknownTask(task_id.to_string()));
        };
        if self.state.consults.contains_key(task_id) {
            return Err(ApiError::InvalidState(format!(
                "task {task_id} has a transfer pending already"
            )));
        }
        let channel = h.task.channel;
        match to {
            TransferTarget::Queue(queue) => {
                let q = self
                    .state
                    .queue(queue)
                    .ok_or_else(|| ApiError::NotFound(format!("queue {queue} does not exist")))?;
                if !q.takes(channel) {
                    return Err(ApiError::BadRequest(format!(
                        "queue {queue} does not take {} conversations",
                        channel.as_str()
                    )));
                }
                if mode == TransferMode::Cold {
                    return Ok(None);
                }
                let mut probe = h.task.clone();
                probe.queue = q.id.clone();
                probe.relaxed = false;
                probe.declined.clear();
                probe.declined.push(super::Decline {
                    agent: holder.clone(),
                    at: SystemTime::now(),
                });
                let cooldown = self.broker.config.reoffer_cooldown;
                match self.state.pick(&probe, SystemTime::now(), cooldown) {
                    Pick::Agent(a) if &a != holder => Ok(Some(a)),
                    _ => Err(ApiError::InvalidState(format!(
                        "no agent of queue {queue} can take a warm transfer now"
                    ))),
                }
            }
            TransferTarget::Agent(agent) => {
                let a =
                    self.state.agents.get(agent.as_str()).ok_or_else(|| {
                        ApiError::NotFound(format!("agent {agent} does not exist"))
                    })?;
                if agent.as_str() == &**holder {
                    return Err(ApiError::BadRequest(format!(
                        "task {task_id} is already {agent}'s"
                    )));
                }
                if a.view.capacity.get(channel) == 0 {
                    return Err(ApiError::BadRequest(format!(
                        "agent {agent} does not take {} conversations",
                        channel.as_str()
                    )));
                }
                if !self.state.qualifies(a, &h.task) {
                    return Err(ApiError::BadRequest(format!(
                        "agent {agent} lacks the skills task {task_id} needs"
                    )));
                }
                if !a.view.connected || a.view.activity != crate::protocol::Activity::Available {
                    return Err(ApiError::InvalidState(format!(
                        "agent {agent} is not available ({})",
                        if a.view.connected {
                            format!("{:?}", a.view.activity).to_lowercase()
                        } else {
                            "disconnected".to_owned()
                        }
                    )));
                }
                if a.free(channel) == 0 {
                    return Err(ApiError::CapacityExceeded(format!(
                        "agent {agent} has no free {} capacity",
                        channel.as_str()
                    )));
                }
                Ok(Some(Id::from(agent.as_str())))
            }
        }
    }

    /// Cold: the holder lets go now; the task is offered to the named agent
    /// or waits in the target queue by its age.
    fn cold(
        &mut self,
        task_id: Id,
        holder: Id,
        target: Option<Id>,
        transfer: Transfer,
        reference: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let offer = target.as_ref().map(|_| {
            self.next_offer += 1;
            self.next_offer
        });
        self.apply(RouterEvent::TransferredCold {
            task_id: task_id.clone(),
            transfer: transfer.clone(),
            offer,
            at: SystemTime::now(),
        });
        // The conversation lets the holder go before the offer reaches it.
        if let Some(conv) = self.conversation_of(&task_id) {
            conv.do_send(TransferredAway {
                from: holder.clone(),
                transfer,
                reference,
            });
        }
        match (target, offer) {
            (Some(agent), Some(offer)) => self.offered(task_id, agent, offer, ctx),
            _ => {
                self.schedule_waits(&task_id, ctx);
                self.route_task(&task_id, ctx);
            }
        }
        self.publish_agent(&holder);
        self.route_agent(&holder, ctx);
    }

    /// Warm: the target is offered the task, its capacity counted now; the
    /// holder keeps it until the target accepts.
    fn warm(&mut self, task_id: Id, target: Id, transfer: Transfer, ctx: &mut Context<Self>) {
        self.next_offer += 1;
        let offer = self.next_offer;
        self.apply(RouterEvent::ConsultOffered {
            task_id: task_id.clone(),
            consult: Consult {
                target: target.clone(),
                offer,
                accepted: false,
                transfer: transfer.clone(),
            },
        });
        let timeout = self.broker.config.offer_timeout;
        self.consult_timers
            .insert(task_id.clone(), Instant::now() + timeout, offer);
        self.consult_timers.arm(ctx, Router::consults_expired);
        let known = self.addrs.contains_key(&target);
        if let Some(conv) = self.conversation_of(&task_id).filter(|_| known) {
            conv.do_send(ConsultOffer {
                agent_id: target.clone(),
                expires_at: crate::protocol::now() + timeout,
                offer,
                transfer,
            });
        }
        self.publish_agent(&target);
    }

    /// A warm transfer's target accepts (from `Accept`): the conversation
    /// makes the move and answers [`TransferDone`].
    pub(super) fn consult_accept(
        &mut self,
        agent_id: &Id,
        task_id: &Id,
        reference: Option<String>,
    ) -> Result<(), ApiError> {
        let Some(consult) = self.state.consults.get(task_id) else {
            return Err(ApiError::UnknownTask(task_id.to_string()));
        };
        if consult.accepted {
            return Err(ApiError::InvalidState(format!(
                "task {task_id} is already accepted"
            )));
        }
        let offer = consult.offer;
        self.consult_timers.remove(task_id);
        self.apply(RouterEvent::ConsultAccepted {
            task_id: task_id.clone(),
        });
        let name = self
            .state
            .agents
            .get(agent_id)
            .map(|a| a.view.name.clone())
            .unwrap_or_default();
        let known = self.addrs.contains_key(agent_id);
        if let Some(conv) = self.conversation_of(task_id).filter(|_| known) {
            let inactivity = self.inactivity_of(task_id);
            conv.do_send(TransferAccept {
                offer,
                agent_id: agent_id.clone(),
                agent_name: name,
                reference,
                inactivity,
            });
        }
        Ok(())
    }

    /// Is `agent_id` the target of `task_id`'s warm transfer, not yet
    /// accepted?
    pub(super) fn consulting(&self, agent_id: &Id, task_id: &str) -> bool {
        self.state
            .consults
            .get(task_id)
            .is_some_and(|c| &c.target == agent_id)
    }

    /// A warm transfer failed (reject, timeout, cancel, target gone): the
    /// target's capacity back, the target told unless it rejected, the
    /// sender told through the conversation.
    pub(super) fn consult_failed(
        &mut self,
        task_id: &Id,
        reason: TransferFailure,
        ctx: &mut Context<Self>,
    ) {
        let Some(consult) = self.state.consults.get(task_id).cloned() else {
            return;
        };
        self.consult_timers.remove(task_id);
        self.apply(RouterEvent::ConsultEnded {
            task_id: task_id.clone(),
        });
        let rescind = match reason {
            TransferFailure::Rejected => None,
            TransferFailure::Timeout => Some(RescindReason::Timeout),
            _ => Some(RescindReason::TransferCanceled),
        };
        if let (Some(reason), Some(agent)) = (rescind, self.addrs.get(&consult.target)) {
            agent.do_send(Rescind {
                task_id: task_id.clone(),
                reason,
            });
        }
        if let Some(conv) = self.conversation_of(task_id) {
            conv.do_send(TransferNotMade {
                offer: consult.offer,
                reason,
            });
        }
        self.publish_agent(&consult.target);
        self.route_agent(&consult.target, ctx);
    }

    /// The task ends, is re-queued or closed while a warm transfer is on
    /// offer: the offer is withdrawn (`transfer_canceled`), accepted or
    /// not (a conversation that ended first ignores the accept).
    pub(super) fn drop_consult(&mut self, task_id: &Id) -> Option<Id> {
        let consult = self.state.consults.get(task_id).cloned()?;
        self.consult_timers.remove(task_id);
        self.apply(RouterEvent::ConsultEnded {
            task_id: task_id.clone(),
        });
        if let Some(agent) = self.addrs.get(&consult.target) {
            agent.do_send(Rescind {
                task_id: task_id.clone(),
                reason: RescindReason::TransferCanceled,
            });
        }
        if let Some(conv) = self.conversation_of(task_id) {
            conv.do_send(TransferNotMade {
                offer: consult.offer,
                reason: TransferFailure::Ended,
            });
        }
        Some(consult.target)
    }

    /// The warm transfers on offer to `agent_id`, not yet accepted: they
    /// fail when it goes away.
    pub(super) fn consults_to(&self, agent_id: &Id) -> Vec<Id> {
        self.state
            .consults
            .iter()
            .filter(|(_, c)| &c.target == agent_id && !c.accepted)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// A task's holder goes away while its warm transfer was accepted: the
    /// target takes it, as the conversation is making it so.
    pub(super) fn finish_accepted_consult(&mut self, task_id: &Id) -> bool {
        if self.state.consults.get(task_id).is_some_and(|c| c.accepted) {
            self.apply(RouterEvent::TransferredWarm {
                task_id: task_id.clone(),
            });
            true
        } else {
            false
        }
    }

    /// The warm transfers whose offer ran out.
    fn consults_expired(&mut self, ctx: &mut Context<Self>) {
        for (task_id, offer) in self.consult_timers.take_expired() {
            let current = self
                .state
                .consults
                .get(&task_id)
                .is_some_and(|c| c.offer == offer && !c.accepted);
            if current {
                self.consult_failed(&task_id, TransferFailure::Timeout, ctx);
            }
        }
        self.consult_timers.arm(ctx, Router::consults_expired);
    }

    /// Parked tasks whose time came.
    pub(super) fn parks_due(&mut self, ctx: &mut Context<Self>) {
        for (task_id, ()) in self.parks.take_expired() {
            if self.state.parked.contains_key(&task_id) {
                if let Some(conv) = self.conversation_of(&task_id) {
                    conv.do_send(BackFromPark);
                }
                self.unpark(&task_id, ctx);
            }
        }
        self.parks.arm(ctx, Router::parks_due);
    }

    /// A parked task back in its queue, offered first to the agent who
    /// parked it if it can take it now.
    fn unpark(&mut self, task_id: &Id, ctx: &mut Context<Self>) {
        if !self.state.parked.contains_key(task_id) {
            return;
        }
        self.parks.remove(task_id);
        self.apply(RouterEvent::Unparked {
            task_id: task_id.clone(),
            at: SystemTime::now(),
        });
        self.schedule_waits(task_id, ctx);
        self.route_task(task_id, ctx);
    }

    /// The inactivity settings of a held task's queue.
    pub(super) fn inactivity_of(&self, task_id: &Id) -> Option<super::queue::Inactivity> {
        let queue = &self.state.held.get(task_id)?.task.queue;
        self.state.queue(queue)?.inactivity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a conversation tells the router of a transfer can cross
    /// between nodes.
    #[test]
    fn a_transfers_news_crosses_between_nodes() {
        crate::codec::assert_crosses(&TransferDone {
            task_id: "tk_1".into(),
            offer: 12,
        });
        crate::codec::assert_crosses(&UnparkTask {
            task_id: "tk_1".into(),
        });
    }
}

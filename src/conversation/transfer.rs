//! What the router tells a conversation about transfers and parking, and
//! how the conversation follows: it moves its task, and tells the agents
//! and the customer. The router has decided (and counted capacity); the
//! conversation makes sure one agent at a time writes to it.
//!
//! From the router: [`TransferredAway`] (cold: the holder lets go now),
//! [`ConsultOffer`] (warm: offer the task to another agent while the holder
//! keeps it), [`TransferAccept`] (that agent accepted: the move),
//! [`TransferNotMade`] (rejected, timed out, canceled, target gone),
//! [`ParkedAway`] (parked: the holder lets go) and [`BackFromPark`] (the
//! parked task's time came). To the router: `TransferDone` once a warm move
//! is made, `UnparkTask` when the customer writes to a parked conversation.
//!
//! An end that crossed a transfer or park on its way wins for the ending
//! agent's view: the conversation has ended, so the task is completed at
//! once with the default disposition and the agent told it no longer holds
//! it (the router let go of it already).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::SystemTime;

use actix::prelude::*;

use super::state::PendingTransfer;
use super::{frame_agent_joined, Conversation, ConversationEvent};
use crate::agent::AgentFrameKind;
use crate::channel::CustomerEvent;
use crate::protocol::event::{self, TransferFailure};
use crate::protocol::{Event, Frame, Id, TaskState, Transfer};
use crate::router::queue::Inactivity;
use crate::router::{TransferDone, UnparkTask};
use crate::webhooks::EventKind;

/// Router: a cold transfer; `from` lets go of the task now.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct TransferredAway {
    pub from: Id,
    pub transfer: Transfer,
    pub reference: Option<String>,
}

impl Handler<TransferredAway> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: TransferredAway, ctx: &mut Context<Self>) {
        if self.state.agent_id.as_ref() != Some(&msg.from) {
            return;
        }
        let frame = Event::TaskTransferred {
            task_id: self.state.task_id.clone(),
            conversation_id: self.state.id.clone(),
            to: msg.transfer.to.clone(),
            reference: event::reference(msg.reference.as_deref()),
        }
        .frame();
        match self.state.task_state {
            TaskState::Assigned => {
                self.let_go(AgentFrameKind::Transferred, frame, ctx);
                self.apply(ConversationEvent::Transferred {
                    transfer: msg.transfer,
                });
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Queued,
                    agent_id: None,
                    agent_name: None,
                });
                self.hook_task(EventKind::TaskTransferred, |d| {
                    d.agent_id = Some(&msg.from);
                    d.reason = Some("cold");
                });
            }
            TaskState::Wrapping => {
                self.let_go(AgentFrameKind::Transferred, frame, ctx);
                self.complete_ended(ctx);
            }
            _ => {}
        }
    }
}

/// Router: a warm transfer offered to `agent_id`; the holder keeps the task.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ConsultOffer {
    pub agent_id: Id,
    pub expires_at: SystemTime,
    pub offer: u64,
    pub transfer: Transfer,
}

impl Handler<ConsultOffer> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: ConsultOffer, _: &mut Context<Self>) {
        // Ended meanwhile: the router withdraws the offer on the end.
        if self.state.task_state != TaskState::Assigned {
            return;
        }
        self.apply(ConversationEvent::TransferPending {
            pending: Some(PendingTransfer {
                target: msg.agent_id.clone(),
                offer: msg.offer,
                transfer: msg.transfer.clone(),
            }),
        });
        let mut task = self.state.task_view();
        task.state = TaskState::Reserved;
        let frame = Event::TaskOffered {
            task: Cow::Borrowed(&task),
            expires_at: msg.expires_at,
            offer: msg.offer,
            transfer: Some(Cow::Borrowed(&msg.transfer)),
        }
        .frame();
        self.to_agent_named(&msg.agent_id, AgentFrameKind::Offered(task.clone()), frame);
    }
}

/// Router: the warm transfer's target accepted. The move is made here, if
/// the transfer is still pending (the conversation may have ended first).
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct TransferAccept {
    pub offer: u64,
    pub agent_id: Id,
    pub agent_name: String,
    pub reference: Option<String>,
    pub inactivity: Option<Inactivity>,
}

impl Handler<TransferAccept> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: TransferAccept, ctx: &mut Context<Self>) {
        let pending = match &self.state.pending_transfer {
            Some(p) if p.offer == msg.offer && self.state.task_state == TaskState::Assigned => {
                p.clone()
            }
            _ => return,
        };
        self.apply(ConversationEvent::TransferPending { pending: None });
        let frame = Event::TaskTransferred {
            task_id: self.state.task_id.clone(),
            conversation_id: self.state.id.clone(),
            to: pending.transfer.to.clone(),
            reference: None,
        }
        .frame();
        let from = self.state.agent_id.clone();
        self.let_go(AgentFrameKind::Transferred, frame, ctx);
        self.apply(ConversationEvent::Transferred {
            transfer: pending.transfer,
        });
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Assigned,
            agent_id: Some(msg.agent_id.clone()),
            agent_name: Some(msg.agent_name.clone()),
        });
        self.apply(ConversationEvent::AssignedAt {
            at: crate::protocol::now(),
        });
        self.hook_task(EventKind::TaskTransferred, |d| {
            d.agent_id = from.as_deref();
            d.reason = Some("warm");
        });
        self.held_by(
            &msg.agent_id,
            AgentFrameKind::Assigned(self.state.task_view()),
            self.assigned_frame(msg.reference.as_deref()),
        );
        self.to_customer(CustomerEvent::Broadcast(frame_agent_joined(
            &self.state.id,
            &msg.agent_name,
        )));
        self.broker.router.do_send(TransferDone {
            task_id: self.state.task_id.clone(),
            offer: msg.offer,
        });
        self.inactivity = msg.inactivity;
        self.arm_inactivity(ctx);
    }
}

/// Router: the warm transfer did not happen; the holder keeps the task.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct TransferNotMade {
    pub offer: u64,
    pub reason: TransferFailure,
}

impl Handler<TransferNotMade> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: TransferNotMade, _: &mut Context<Self>) {
        if self
            .state
            .pending_transfer
            .as_ref()
            .is_some_and(|p| p.offer == msg.offer)
        {
            self.transfer_failed(msg.reason);
        }
    }
}

/// Router: the holder parked the task.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ParkedAway {
    pub from: Id,
    pub until: Option<SystemTime>,
    pub reference: Option<String>,
}

impl Handler<ParkedAway> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: ParkedAway, ctx: &mut Context<Self>) {
        if self.state.agent_id.as_ref() != Some(&msg.from) {
            return;
        }
        let frame = Event::TaskParked {
            task_id: self.state.task_id.clone(),
            conversation_id: self.state.id.clone(),
            until: msg.until,
            reference: event::reference(msg.reference.as_deref()),
        }
        .frame();
        match self.state.task_state {
            TaskState::Assigned => {
                self.let_go(AgentFrameKind::Parked, frame, ctx);
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Parked,
                    agent_id: None,
                    agent_name: None,
                });
                self.hook_task(EventKind::TaskParked, |d| d.agent_id = Some(&msg.from));
            }
            TaskState::Wrapping => {
                self.let_go(AgentFrameKind::Parked, frame, ctx);
                self.complete_ended(ctx);
            }
            _ => {}
        }
    }
}

/// Router: a parked task's `until` came; it is back in its queue.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct BackFromPark;

impl Handler<BackFromPark> for Conversation {
    type Result = ();

    fn handle(&mut self, _: BackFromPark, _: &mut Context<Self>) {
        if self.state.task_state == TaskState::Parked {
            self.apply(ConversationEvent::TaskMoved {
                state: TaskState::Queued,
                agent_id: None,
                agent_name: None,
            });
        }
    }
}

impl Conversation {
    /// The holding agent lets go: its last frame of this conversation, then
    /// nothing more reaches it.
    fn let_go(&mut self, kind: AgentFrameKind, frame: Frame, ctx: &mut Context<Self>) {
        if let Some(agent) = self.agent.take() {
            self.to_agent(&agent, kind, frame);
        }
        self.stop_inactivity(ctx);
    }

    /// The conversation had ended when its agent let go of it: complete it
    /// now with the default disposition (its wrap-up has nobody to do it).
    pub(super) fn complete_ended(&mut self, ctx: &mut Context<Self>) {
        let disposition = self.broker.config.wrapup_disposition.clone();
        self.complete(disposition, String::new(), None, ctx);
    }

    /// A pending warm transfer is over: the holder is told why.
    pub(super) fn transfer_failed(&mut self, reason: TransferFailure) {
        self.apply(ConversationEvent::TransferPending { pending: None });
        let frame = Event::TransferFailed {
            task_id: self.state.task_id.clone(),
            reason,
        }
        .frame();
        if let Some(agent) = &self.agent {
            self.to_agent(agent, AgentFrameKind::Other, frame);
        }
    }

    /// The customer wrote to a parked conversation: back to the queue.
    pub(super) fn unpark(&mut self) {
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
        });
        self.broker.router.do_send(UnparkTask {
            task_id: self.state.task_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::assert_crosses;
    use crate::protocol::samples;

    /// A transfer's messages between the router and a conversation can
    /// cross between nodes: ids, no addresses.
    #[test]
    fn a_transfers_messages_cross_between_nodes() {
        for reference in [None, Some("r-2".to_owned())] {
            assert_crosses(&TransferredAway {
                from: "alice".into(),
                transfer: samples::transfer(),
                reference: reference.clone(),
            });
            assert_crosses(&ParkedAway {
                from: "alice".into(),
                until: Some(crate::protocol::now()),
                reference,
            });
        }
        assert_crosses(&ConsultOffer {
            agent_id: "bob".into(),
            expires_at: crate::protocol::now(),
            offer: 9,
            transfer: samples::transfer(),
        });
        assert_crosses(&TransferAccept {
            offer: 9,
            agent_id: "bob".into(),
            agent_name: "Bob".into(),
            reference: Some("r-3".into()),
            inactivity: None,
        });
        for reason in [
            TransferFailure::Rejected,
            TransferFailure::Timeout,
            TransferFailure::Canceled,
            TransferFailure::Ended,
        ] {
            assert_crosses(&TransferNotMade { offer: 9, reason });
        }
        assert_crosses(&BackFromPark);
    }
}

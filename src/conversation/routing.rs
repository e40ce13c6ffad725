//! What the router tells a conversation about its task, and what the
//! conversation tells the router about itself.
//!
//! From the router: [`Reserve`] (offer the task to an agent), [`Assign`] (the
//! agent accepted) and [`Requeued`] (back in the queue after a reject, an offer
//! timeout or the agent leaving). The conversation only mirrors these moves in
//! its task state and tells the agent and customer; the router decides them.
//! To the router: the [`RoutableTask`] an inbound conversation enqueues as its
//! first act.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;

use super::{frame_agent_joined, Conversation, ConversationEvent};
use crate::agent::AgentFrameKind;
use crate::channel::CustomerEvent;
use crate::protocol::{
    Author, CancelReason, ChannelKind, DeliveryStatus, Event, Frame, Id, TaskState, Transfer,
};
use crate::router::queue::Inactivity;
use crate::router::{RescindReason, RoutableTask};
use crate::webhooks::EventKind;

/// Router: the task is offered to `agent_id`.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Reserve {
    pub agent_id: Id,
    pub expires_at: SystemTime,
    /// The queue it is offered from and its priority there.
    pub queue: String,
    pub priority: u8,
    /// The router's number for this offer (one counter for every offer it
    /// makes, so numbers order offers as the router made them).
    pub offer: u64,
    /// The transfer this offer carries on (`task.offered`'s `transfer`).
    pub transfer: Option<Transfer>,
}

impl Handler<Reserve> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Reserve, _: &mut Context<Self>) {
        if self.state.task_state != TaskState::Queued {
            return;
        }
        if self.state.queue != msg.queue || self.state.priority != msg.priority {
            self.apply(ConversationEvent::Routed {
                queue: msg.queue,
                priority: msg.priority,
            });
        }
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Reserved,
            agent_id: Some(msg.agent_id.clone()),
            agent_name: None,
        });
        self.hook_task(EventKind::TaskOffered, |d| {
            d.agent_id = self.state.agent_id.as_deref();
            d.expires_at = Some(msg.expires_at);
        });
        let task = self.state.task_view();
        let offered = Event::TaskOffered {
            task: Cow::Borrowed(&task),
            expires_at: msg.expires_at,
            offer: msg.offer,
            transfer: msg.transfer.as_ref().map(Cow::Borrowed),
        }
        .frame();
        self.to_agent_named(
            &msg.agent_id,
            AgentFrameKind::Offered(task.clone()),
            offered,
        );
    }
}

/// Router: the agent accepted; from now on this conversation talks to it directly.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Assign {
    pub agent_id: Id,
    pub agent_name: String,
    pub reference: Option<String>,
    /// The task's queue's inactivity settings.
    pub inactivity: Option<Inactivity>,
}

impl Handler<Assign> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Assign, ctx: &mut Context<Self>) {
        if self.state.task_state != TaskState::Reserved {
            // The customer left while the accept was on its way.
            let gone = self.rescinded_frame(RescindReason::CustomerLeft);
            self.to_agent_named(&msg.agent_id, AgentFrameKind::Rescinded, gone);
            return;
        }
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Assigned,
            agent_id: Some(msg.agent_id.clone()),
            agent_name: Some(msg.agent_name.clone()),
        });
        self.apply(ConversationEvent::AssignedAt {
            at: crate::protocol::now(),
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
        self.inactivity = msg.inactivity;
        self.arm_inactivity(ctx);
    }
}

/// Router: the task is back in the queue (reject, timeout, or its agent left).
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Requeued {
    pub reason: RescindReason,
    /// Why, as the webhook event tells it.
    pub cause: RequeueCause,
}

/// Why a task went back to the queue: each is its own webhook event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequeueCause {
    /// The agent rejected the offer (`task.rejected`).
    Rejected,
    /// The offer timed out (`task.timeout`).
    TimedOut,
    /// The broker took it back: the agent went offline, away or was removed
    /// (`task.requeued`).
    Withdrawn,
}

impl Handler<Requeued> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Requeued, ctx: &mut Context<Self>) {
        if self.state.task_state == TaskState::Wrapping && msg.cause == RequeueCause::Withdrawn {
            // The router took the task from its agent (gone past its grace,
            // or removed) as the chat ended, and has it waiting again. Its
            // wrap-up has nobody to do it: completed now with the default
            // disposition, as when a transfer or a park crosses an end, and
            // the router closes it. (Left waiting, it would be offered to
            // agent after agent, each offer going nowhere and counted as
            // missed.)
            self.complete_ended(ctx);
            return;
        }
        if !matches!(
            self.state.task_state,
            TaskState::Reserved | TaskState::Assigned
        ) {
            return;
        }
        let from = self.state.agent_id.clone();
        self.stop_inactivity(ctx);
        self.agent = None;
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
        });
        let kind = match msg.cause {
            RequeueCause::Rejected => EventKind::TaskRejected,
            RequeueCause::TimedOut => EventKind::TaskTimeout,
            RequeueCause::Withdrawn => EventKind::TaskRequeued,
        };
        self.hook_task(kind, |d| {
            d.agent_id = from.as_deref();
            if msg.cause == RequeueCause::Withdrawn {
                d.reason = Some(msg.reason.as_str());
            }
        });
    }
}

/// Router: the task is canceled while waiting (past its queue's `max_wait`,
/// or arrived while the queue is closed and cancels). The customer gets the
/// queue's message as a `system` message, then `conversation.ended`. The
/// router has already stopped routing it.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct RouterCancel {
    pub reason: CancelReason,
    pub message: String,
}

impl Handler<RouterCancel> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: RouterCancel, ctx: &mut Context<Self>) {
        if !matches!(
            self.state.task_state,
            TaskState::Queued | TaskState::Reserved
        ) {
            return;
        }
        if !msg.message.is_empty() {
            self.system_message(msg.message);
        }
        self.apply(ConversationEvent::Canceled { reason: msg.reason });
        self.to_customer(CustomerEvent::Ended(self.ended_frame()));
        self.schedule_eviction(ctx);
    }
}

/// Router: tell the customer something about the wait (the closed message of
/// a queue outside its business hours that lets tasks wait).
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct RouterNotice {
    pub message: String,
}

impl Handler<RouterNotice> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: RouterNotice, _: &mut Context<Self>) {
        if !self.state.ended() {
            self.system_message(msg.message);
        }
    }
}

impl Conversation {
    /// Store a `system` message addressed to the customer (a queue's
    /// maximum-wait or closed message) and send it: webchat shows it, and a
    /// provider channel sends it on the same outbound path as an agent's
    /// reply (messaging window, a place in the outbound queue, delivery
    /// reports). One that cannot go now (outside the messaging window, or
    /// the outbound queue full) stays in the history with status `failed`.
    fn system_message(&mut self, text: String) {
        self.append(Author::System, text, Vec::new(), None);
        let frame = self.message_frame(self.last_message(), None);
        self.system_message_out(frame);
    }

    /// Send the `system` message just stored (its `frame`) to the customer,
    /// as [`Conversation::system_message`] says: the queue's maximum-wait,
    /// closed and inactivity-warning messages all go this way.
    pub(super) fn system_message_out(&mut self, frame: Frame) {
        if self.state.channel == ChannelKind::Webchat {
            self.message_to_customer(frame, None, true);
            return;
        }
        match self
            .check_provider_rules()
            .and_then(|()| self.reserve_outbound())
        {
            Ok(()) => self.message_to_customer(frame, None, true),
            Err(why) => {
                let seq = self.last_message().seq;
                tracing::info!(
                    conversation = %self.state.id,
                    %why,
                    "a queue's message to the customer was not sent"
                );
                self.set_status(seq, DeliveryStatus::Failed, Some(why.to_string()));
            }
        }
    }

    /// What the router needs to route this conversation's task.
    pub(super) fn routable(&self) -> RoutableTask {
        RoutableTask {
            task_id: self.state.task_id.clone(),
            conversation_id: self.state.id.clone(),
            channel: self.state.channel,
            skills: Arc::from(self.state.skills.clone()),
            customer: self.state.customer.clone(),
            queue: self.state.queue.clone(),
            priority: self.state.priority,
            created_at: self.state.created_at,
            entered_queue_at: self.state.created_at,
            relaxed: false,
            order: 0,
            enqueued_at: std::time::Instant::now(),
            declined: Vec::new(),
            offered_before: false,
            handoff: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::codec::assert_crosses;
    use crate::protocol::samples;

    /// What the router tells a conversation can cross between nodes (a
    /// partitioned cluster would run them on different ones): ids, no
    /// addresses.
    #[test]
    fn the_routers_moves_cross_between_nodes() {
        for transfer in [None, Some(samples::transfer())] {
            assert_crosses(&Reserve {
                agent_id: "alice".into(),
                expires_at: crate::protocol::now(),
                queue: "billing".into(),
                priority: 3,
                offer: 7,
                transfer,
            });
        }
        let inactivity = Inactivity {
            warn_after: Duration::from_millis(90_500),
            warning: "Still there?".into(),
            close_after: Duration::from_secs(300),
        };
        for (inactivity, reference) in [(None, None), (Some(inactivity), Some("r-1".into()))] {
            assert_crosses(&Assign {
                agent_id: "alice".into(),
                agent_name: "Alice Ö".into(),
                reference,
                inactivity,
            });
        }
        for cause in [
            RequeueCause::Rejected,
            RequeueCause::TimedOut,
            RequeueCause::Withdrawn,
        ] {
            assert_crosses(&Requeued {
                reason: RescindReason::Timeout,
                cause,
            });
        }
        assert_crosses(&RouterCancel {
            reason: CancelReason::MaxWait,
            message: "waited too long".into(),
        });
        assert_crosses(&RouterNotice {
            message: "moved to billing".into(),
        });
    }
}

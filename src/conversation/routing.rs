//! What the router tells a conversation about its task, and what the
//! conversation tells the router about itself.
//!
//! From the router: [`Reserve`] (offer the task to an agent), [`Assign`] (the
//! agent accepted) and [`Requeued`] (back in the queue after a reject, an offer
//! timeout or the agent leaving). The conversation only mirrors these moves in
//! its task state and tells the agent and customer; the router decides them.
//! To the router: the [`RoutableTask`] an inbound conversation enqueues as its
//! first act.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;

use super::{frame_agent_joined, Conversation, ConversationEvent};
use crate::agent::{Agent, AgentFrameKind};
use crate::channel::CustomerEvent;
use crate::protocol::{Author, CancelReason, ChannelKind, Event, Id, TaskState, Transfer};
use crate::router::queue::Inactivity;
use crate::router::{RescindReason, RoutableTask};

/// Router: the task is offered to `agent_id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reserve {
    pub agent_id: Id,
    pub agent: Addr<Agent>,
    pub expires_at: SystemTime,
    /// The queue it is offered from and its priority there.
    pub queue: String,
    pub priority: u8,
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
            agent_id: Some(msg.agent_id),
            agent_name: None,
        });
        let task = self.state.task_view();
        let offered = Event::TaskOffered {
            task: Cow::Borrowed(&task),
            expires_at: msg.expires_at,
            transfer: msg.transfer.as_ref().map(Cow::Borrowed),
        }
        .frame();
        self.to_agent(&msg.agent, AgentFrameKind::Offered(task.clone()), offered);
    }
}

/// Router: the agent accepted; from now on this conversation talks to it directly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Assign {
    pub agent_id: Id,
    pub agent_name: String,
    pub agent: Addr<Agent>,
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
            self.to_agent(&msg.agent, AgentFrameKind::Rescinded, gone);
            return;
        }
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Assigned,
            agent_id: Some(msg.agent_id),
            agent_name: Some(msg.agent_name.clone()),
        });
        self.to_agent(
            &msg.agent,
            AgentFrameKind::Assigned(self.state.task_view()),
            self.assigned_frame(msg.reference.as_deref()),
        );
        self.agent = Some(msg.agent);
        self.to_customer(CustomerEvent::Broadcast(frame_agent_joined(
            &self.state.id,
            &msg.agent_name,
        )));
        self.inactivity = msg.inactivity;
        self.arm_inactivity(ctx);
    }
}

/// Router: the task is back in the queue (reject, timeout, or its agent left).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Requeued {
    pub reason: RescindReason,
}

impl Handler<Requeued> for Conversation {
    type Result = ();

    fn handle(&mut self, _: Requeued, ctx: &mut Context<Self>) {
        if !matches!(
            self.state.task_state,
            TaskState::Reserved | TaskState::Assigned
        ) {
            return;
        }
        self.stop_inactivity(ctx);
        self.agent = None;
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
        });
    }
}

/// Router: the task is canceled while waiting (past its queue's `max_wait`,
/// or arrived while the queue is closed and cancels). The customer gets the
/// queue's message as a `system` message, then `conversation.ended`. The
/// router has already stopped routing it.
#[derive(Message)]
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
#[derive(Message)]
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
    /// Store a `system` message and show it to a webchat customer (provider
    /// channels send agents' messages only: there it stays in the history).
    fn system_message(&mut self, text: String) {
        self.append(Author::System, text, Vec::new(), None);
        if self.state.channel == ChannelKind::Webchat {
            let frame = self.message_frame(self.last_message(), None);
            self.to_customer(CustomerEvent::Broadcast(frame));
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

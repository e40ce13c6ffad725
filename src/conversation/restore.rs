//! A conversation rebuilt from the journal: its state is the replayed
//! [`ConversationState`]; once started it resumes what its timers did
//! (the wrap-up timeout of a task in wrap-up, the history retention of a
//! finished one; for an assigned task, the inactivity timers of its queue
//! once the router sends [`ResumeInactivity`]), each counted from when it
//! began, not from the restart.
//! Everything else comes back the way it does after a network drop: the
//! agent's desktop gets the task with its history on reconnect, the
//! customer the history.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use super::{Conversation, ConversationEvent, ConversationState};
use crate::agent::Agent;
use crate::channel::CustomerEvent;
use crate::channel::ToCustomer;
use crate::protocol::{Author, ChannelKind, DeliveryStatus, Message, TaskState};
use crate::router::queue::Inactivity;
use crate::router::EnqueueTask;
use crate::wiring::Broker;

impl Conversation {
    /// Provider sends that had not been answered when the broker stopped
    /// (the reply still `accepted`) go out again, in order, through the
    /// channel's outbound queue. At least once: a send the provider took
    /// just before a crash, with no answer recorded, is sent twice.
    fn resend_pending(&mut self) {
        if self.state.channel == ChannelKind::Webchat {
            return;
        }
        let pending: Vec<Message> = self
            .state
            .messages
            .iter()
            .filter(|m| m.from == Author::Agent && m.status == DeliveryStatus::Accepted)
            .cloned()
            .collect();
        for message in pending {
            if let Some(budget) = self.broker.channels.budget(self.state.channel) {
                // Its place in the queue was taken before the restart.
                budget.force_reserve();
            }
            let frame = self.message_frame(&message, None);
            self.to_customer(CustomerEvent::Message {
                message: Box::new(message),
                frame,
                template: None,
                send_out: true,
            });
        }
    }

    /// The actor for a replayed state, not yet started.
    pub fn restored(
        broker: &Arc<Broker>,
        state: ConversationState,
        channel: Recipient<ToCustomer>,
        agent: Option<Addr<Agent>>,
        enqueue: bool,
    ) -> Self {
        // Counted now, while the journal is replayed, not when the actor
        // starts on its worker: `/v1/stats` right after the start sees every
        // restored task.
        broker.metrics.task_moved(None, state.task_state);
        Conversation {
            enqueue_on_start: enqueue,
            broker: broker.clone(),
            channel,
            customer: state.customer.address.as_str().into(),
            business: state.business.as_deref().map(Into::into),
            state,
            agent,
            wrapup: None,
            opening: None,
            // The router knows the queue's settings: `ResumeInactivity`.
            inactivity: None,
            inactivity_timers: Vec::new(),
            monitors: Vec::new(),
            resend: Default::default(),
        }
    }

    /// Started from the journal (it has no opening to process): start the
    /// timers its state had (the task was counted when it was restored).
    pub(super) fn resume(&mut self, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.enqueue_on_start) {
            // Its arrival never reached the router's journal: arrive again
            // (an offer the router never recorded was never answered).
            if self.state.task_state == TaskState::Reserved {
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Queued,
                    agent_id: None,
                    agent_name: None,
                });
            }
            self.broker.router.do_send(EnqueueTask {
                task: self.routable(),
            });
        }
        self.resend_pending();
        let since_end = |total: Duration| {
            let ended = self.state.ended_at.unwrap_or_else(SystemTime::now);
            let gone = ended.elapsed().unwrap_or_default();
            total.saturating_sub(gone)
        };
        match self.state.task_state {
            TaskState::Wrapping => {
                let left = since_end(self.broker.config.wrapup_timeout);
                self.start_wrapup_timer(left, ctx);
            }
            TaskState::Completed | TaskState::Canceled => {
                let left = since_end(self.broker.config.history_retention);
                self.schedule_eviction_in(left, ctx);
            }
            _ => {}
        }
    }
}

/// Router, after a restart: the assigned task's queue has inactivity
/// settings. The timers start again from the customer's last message or the
/// assignment, whichever is later (not from the restart): what had run of
/// them before the stop counts, a warning due meanwhile is given at once,
/// one already given is not repeated, and a conversation silent past
/// `close_after` ends at once (with no warning just before).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ResumeInactivity {
    pub inactivity: Inactivity,
}

impl Handler<ResumeInactivity> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: ResumeInactivity, ctx: &mut Context<Self>) {
        if self.state.task_state != TaskState::Assigned {
            return;
        }
        let since = [self.state.last_customer_at, self.state.assigned_at]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.state.created_at);
        let elapsed = since.elapsed().unwrap_or_default();
        let warned = self
            .state
            .messages
            .iter()
            .rev()
            .take_while(|m| m.created_at >= since)
            .any(|m| m.from == Author::System && m.text == msg.inactivity.warning);
        self.inactivity = Some(msg.inactivity);
        self.arm_inactivity_after(elapsed, warned, ctx);
    }
}

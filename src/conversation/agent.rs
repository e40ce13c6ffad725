//! What the assigned agent asks of a conversation, all from the `Agent` actor
//! on its desktop's behalf: [`AgentSend`] (a reply), [`AgentTyping`],
//! [`AgentEnd`] (End Chat: into wrap-up), [`AgentComplete`] (disposition and
//! notes: capacity freed) and [`Resync`] (the desktop reconnected).
//!
//! Each checks that the sender holds the conversation (`check_agent`); a
//! refusal goes to that agent only, with the command's `ref`, and a resync
//! that finds the task gone answers `task.rescinded`.

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::{validate_content, Conversation};
use crate::agent::AgentFrameKind;
use crate::attachments::Sender;
use crate::channel::{has_messaging_window, CustomerEvent};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::{Author, ChannelKind, Event, Id, TaskState};
use crate::router::RescindReason;

/// An agent's reply.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct AgentSend {
    pub agent_id: Id,
    pub text: String,
    pub attachments: Vec<String>,
    pub client_msg_id: Option<String>,
    /// Send this canned response, filled in, as the text (`canned.rs`).
    pub canned_id: Option<String>,
    pub reference: Option<String>,
}

impl Handler<AgentSend> for Conversation {
    type Result = ();

    fn handle(&mut self, mut msg: AgentSend, _: &mut Context<Self>) {
        if self.check_agent(&msg.agent_id).is_ok() {
            let resent = msg.client_msg_id.as_deref().and_then(|id| {
                let history = &self.state.messages;
                self.resend
                    .find(history, Author::Agent, Some(&msg.agent_id), id)
            });
            if let Some(stored) = resent {
                // Stored before: echoed again to its sender only.
                let echo = self.message_frame(stored, msg.reference.as_deref());
                return self.to_agent_named(&msg.agent_id, AgentFrameKind::Echo, echo);
            }
        }
        let checked = self.check_agent(&msg.agent_id).and_then(|_| {
            if self.state.task_state != TaskState::Assigned {
                return Err(ApiError::InvalidState(format!(
                    "conversation {} has ended",
                    self.state.id
                )));
            }
            self.check_provider_rules()?;
            if let Some(id) = &msg.canned_id {
                msg.text = self.canned_text(id)?;
            }
            let attachments = validate_content(
                &self.broker,
                self.state.channel,
                &msg.text,
                &msg.attachments,
                Sender::Agent(&msg.agent_id),
                &|id| self.carries(id),
            )?;
            self.history_room(&msg.text, &attachments)?;
            // Last: a place in the provider's outbound queue, taken only
            // for a message that will be stored.
            self.reserve_outbound()?;
            Ok(attachments)
        });
        let attachments = match checked {
            Ok(a) => a,
            Err(e) => return self.agent_error(&msg.agent_id, e, msg.reference.as_deref()),
        };
        self.append(Author::Agent, msg.text, attachments, msg.client_msg_id);
        Metrics::bump(&self.broker.metrics.messages_out);
        let message = self.last_message();
        let (to_customer, echo) =
            Event::message_frames(&self.state.id, message, msg.reference.as_deref());
        self.to_agent_named(&msg.agent_id, AgentFrameKind::Echo, echo);
        self.message_to_customer(to_customer, None, true);
    }
}

#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct AgentTyping {
    pub agent_id: Id,
    pub reference: Option<String>,
}

impl Handler<AgentTyping> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentTyping, _: &mut Context<Self>) {
        match self.check_agent(&msg.agent_id) {
            Ok(()) if self.state.task_state == TaskState::Assigned => {
                self.to_customer(CustomerEvent::Broadcast(self.typing_frame()));
            }
            Ok(()) => {}
            Err(e) => self.agent_error(&msg.agent_id, e, msg.reference.as_deref()),
        }
    }
}

/// End Chat: the task goes to wrap-up, capacity still held.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct AgentEnd {
    pub agent_id: Id,
    pub reference: Option<String>,
}

impl Handler<AgentEnd> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentEnd, ctx: &mut Context<Self>) {
        let checked = self.check_agent(&msg.agent_id).and_then(|_| {
            if self.state.task_state == TaskState::Assigned {
                Ok(())
            } else {
                Err(ApiError::InvalidState(format!(
                    "conversation {} has already ended",
                    self.state.id
                )))
            }
        });
        match checked {
            Ok(()) => self.end(msg.reference.as_deref(), ctx),
            Err(e) => self.agent_error(&msg.agent_id, e, msg.reference.as_deref()),
        }
    }
}

/// Complete: disposition and notes, then capacity is freed.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct AgentComplete {
    pub agent_id: Id,
    pub disposition: String,
    pub notes: String,
    pub reference: Option<String>,
}

impl Handler<AgentComplete> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentComplete, ctx: &mut Context<Self>) {
        let config = &self.broker.config;
        let checked = self.check_agent(&msg.agent_id).and_then(|_| {
            if self.state.task_state != TaskState::Wrapping {
                return Err(ApiError::InvalidState(format!(
                    "task {} is {}: end the conversation before completing it",
                    self.state.task_id,
                    self.state.task_state.as_str()
                )));
            }
            if !config.dispositions.contains(&msg.disposition) {
                return Err(ApiError::InvalidDisposition(format!(
                    "{:?} is not a disposition; use one of: {}",
                    msg.disposition,
                    config.dispositions.join(", ")
                )));
            }
            let chars = msg.notes.chars().count();
            if chars > config.max_notes {
                return Err(ApiError::TextTooLong(format!(
                    "notes have {chars} characters; the limit is {}",
                    config.max_notes
                )));
            }
            Ok(())
        });
        match checked {
            Ok(()) => self.complete(msg.disposition, msg.notes, msg.reference.as_deref(), ctx),
            Err(e) => self.agent_error(&msg.agent_id, e, msg.reference.as_deref()),
        }
    }
}

/// The agent reconnected: send its task again with the full history.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Resync {
    pub agent_id: Id,
}

impl Handler<Resync> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Resync, _: &mut Context<Self>) {
        if self.check_agent(&msg.agent_id).is_ok() {
            self.held_by(
                &msg.agent_id,
                AgentFrameKind::Resync(self.state.task_view()),
                self.assigned_frame(None),
            );
        } else {
            // Lost the task meanwhile (re-queued): tell the desktop.
            let gone = self.rescinded_frame(RescindReason::Reassigned);
            self.to_agent_named(&msg.agent_id, AgentFrameKind::Rescinded, gone);
        }
    }
}

impl Conversation {
    /// Take a place in the provider channel's outbound queue for an agent's
    /// message (nothing to take on webchat); `rate_limited` when it is full.
    pub(super) fn reserve_outbound(&self) -> Result<(), ApiError> {
        let channel = self.state.channel;
        let Some(budget) = self.broker.channels.budget(channel) else {
            return Ok(());
        };
        // The count covers sends in flight as well as those waiting for a slot.
        budget.try_reserve().map_err(|pending| {
            ApiError::RateLimited(format!(
                "{} has {pending} messages in flight or waiting for the provider; try again shortly",
                channel.as_str()
            ))
        })
    }

    /// Provider-channel rules an agent's free-form message must meet.
    pub(super) fn check_provider_rules(&self) -> Result<(), ApiError> {
        let channel = self.state.channel;
        if channel == ChannelKind::Webchat {
            return Ok(());
        }
        if has_messaging_window(channel) {
            let window = self.broker.config.messaging_window;
            let inside = self
                .state
                .last_customer_at
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age <= window);
            if !inside {
                return Err(ApiError::OutsideMessagingWindow(format!(
                    "the customer has not written in the last {}: {} allows no free-form message now",
                    humantime::format_duration(window),
                    channel.as_str()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::assert_crosses;

    /// What an agent asks of a conversation can cross between nodes (the
    /// desk's agent and the conversation on different ones): the agent is
    /// named by its id, and the answer goes to the agent of that id.
    #[test]
    fn an_agents_commands_cross_between_nodes() {
        for (canned_id, client_msg_id) in [(None, None), (Some("greeting"), Some("c-1"))] {
            assert_crosses(&AgentSend {
                agent_id: "alice".into(),
                text: "Hello «there»".into(),
                attachments: vec!["f_1".into(), "f_2".into()],
                client_msg_id: client_msg_id.map(Into::into),
                canned_id: canned_id.map(Into::into),
                reference: Some("r-1".into()),
            });
        }
        assert_crosses(&AgentTyping {
            agent_id: "alice".into(),
            reference: None,
        });
        assert_crosses(&AgentEnd {
            agent_id: "alice".into(),
            reference: Some("r-2".into()),
        });
        assert_crosses(&AgentComplete {
            agent_id: "alice".into(),
            disposition: "resolved".into(),
            notes: "refund issued\nnext: call back".into(),
            reference: None,
        });
        assert_crosses(&Resync {
            agent_id: "alice".into(),
        });
    }
}

//! What a supervisor asks of a conversation: [`SupervisorComplete`] (end it
//! if it is still going, then complete its task with a disposition, as the
//! agent's wrap-up would) from `POST /v1/tasks/{id}/complete`, and
//! [`Monitor`] / [`Unmonitor`] from a supervisor socket that streams the
//! conversation's `message` events read-only.
//!
//! The state changes are the agent's own (`end`, `complete`: the same
//! `ConversationEvent`s, the same frames to the agent and the customer, the
//! same `TaskWrapping`/`TaskClosed` to the router). The monitors are wiring,
//! not state: socket links, each bounded by the socket's slow-consumer
//! policy, dropped when their socket is gone.

use std::borrow::Cow;

use actix::prelude::*;

use super::Conversation;
use crate::error::ApiError;
use crate::protocol::{event, Event, Id, TaskState};
use crate::ws::SocketLink;

/// Admin: complete the task, ending the conversation first if it is active.
#[derive(Message, Debug, serde::Serialize, serde::Deserialize)]
#[rtype(result = "Result<Id, ApiError>")]
pub struct SupervisorComplete {
    pub disposition: String,
    pub notes: String,
}

impl Handler<SupervisorComplete> for Conversation {
    /// The conversation's id.
    type Result = Result<Id, ApiError>;

    fn handle(&mut self, msg: SupervisorComplete, ctx: &mut Context<Self>) -> Self::Result {
        let config = &self.broker.config;
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
        match self.state.task_state {
            TaskState::Assigned => {
                self.end(None, ctx);
                self.complete(msg.disposition, msg.notes, None, ctx);
            }
            TaskState::Wrapping => self.complete(msg.disposition, msg.notes, None, ctx),
            other => {
                return Err(ApiError::InvalidState(format!(
                    "task {} is {}: only an assigned or wrapping task can be completed",
                    self.state.task_id,
                    other.as_str()
                )))
            }
        }
        Ok(self.state.id.clone())
    }
}

/// A supervisor socket watches this conversation: it gets the newest
/// messages at once (`monitoring`), then every new `message` event.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Monitor {
    pub link: SocketLink,
    pub reference: Option<String>,
}

impl Handler<Monitor> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Monitor, _: &mut Context<Self>) {
        let (messages, has_earlier) = self.replay();
        let frame = Event::Monitoring {
            conversation_id: self.state.id.clone(),
            messages: Cow::Borrowed(messages),
            has_earlier,
            reference: event::reference(msg.reference.as_deref()),
        }
        .frame();
        self.monitors.retain(|m| m.id != msg.link.id);
        // Through the link, like what follows: the history comes first.
        if msg.link.send(frame, &self.broker.metrics).is_ok() {
            self.monitors.push(msg.link);
        }
    }
}

/// A supervisor socket stops watching (or closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unmonitor {
    pub session_id: u64,
}

impl Handler<Unmonitor> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Unmonitor, _: &mut Context<Self>) {
        self.monitors.retain(|m| m.id != msg.session_id);
    }
}

impl Conversation {
    /// Show the message just stored to the monitoring sockets; one that
    /// cannot keep up (or is gone) is dropped from the list.
    pub(super) fn show_monitors(&mut self) {
        if self.monitors.is_empty() {
            return;
        }
        let frame = self.message_frame(self.last_message(), None);
        let metrics = &self.broker.metrics;
        self.monitors
            .retain(|m| m.send(frame.clone(), metrics).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A supervisor's completion can cross to the node that runs the
    /// conversation, and its answer, the task's id or the refusal, back.
    #[test]
    fn a_supervisors_completion_crosses_between_nodes() {
        crate::codec::assert_crosses(&SupervisorComplete {
            disposition: "resolved".into(),
            notes: "closed by the supervisor".into(),
        });
        let answers: [Result<Id, ApiError>; 2] = [
            Ok("tk_1".into()),
            Err(ApiError::InvalidDisposition("unknown code".into())),
        ];
        for answer in answers {
            crate::codec::assert_crosses(&answer);
        }
    }
}

//! What the customer's channel tells a conversation, and how it answers.
//!
//! [`CustomerMessage`] comes from either kind of channel (a webchat shard, or a
//! provider channel for SMS, WhatsApp and Messenger); [`CustomerTyping`],
//! [`CustomerLeft`], [`CustomerAbandoned`] and [`SendHistory`] come from the
//! webchat shard only, since only webchat has sockets, typing and a Leave
//! button. Answers go back through the channel as `ToCustomer`.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

use actix::prelude::*;

use super::{frame_agent_joined, validate_content, Conversation, ConversationEvent};
use crate::agent::AgentFrameKind;
use crate::attachments::Sender;
use crate::channel::{CustomerEvent, SocketId};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::{AttachmentMeta, Author, ChannelKind, Event, TaskState};
use crate::router::{Outcome, TaskClosed};

/// A customer message from the channel.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct CustomerMessage {
    /// The socket to acknowledge (webchat); None for provider channels,
    /// whose messages are stored as their channel fitted them
    /// (`channel/inbound.rs`), never refused.
    pub socket: Option<SocketId>,
    /// `customer`, or `system` for a provider event shown as a note.
    pub author: Author,
    pub text: String,
    /// Uploaded files the customer refers to by id (webchat).
    pub attachments: Vec<String>,
    /// Files a provider delivered with the message, already stored.
    pub provided: Vec<AttachmentMeta>,
    pub client_msg_id: Option<String>,
    pub reference: Option<String>,
}

impl Handler<CustomerMessage> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: CustomerMessage, ctx: &mut Context<Self>) {
        if self.state.ended() {
            // Writing again after the end opens a new conversation.
            self.to_customer(CustomerEvent::Reopen(Box::new(msg)));
            return;
        }
        let before = self.state.messages.len();
        self.accept_customer_message(msg);
        if self.state.messages.len() > before {
            match self.state.task_state {
                TaskState::Assigned => self.arm_inactivity(ctx),
                TaskState::Parked => self.unpark(),
                _ => {}
            }
        }
    }
}

#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct CustomerTyping;

impl Handler<CustomerTyping> for Conversation {
    type Result = ();

    fn handle(&mut self, _: CustomerTyping, _: &mut Context<Self>) {
        if self.state.task_state == TaskState::Assigned {
            if let Some(agent) = &self.agent {
                self.to_agent(agent, AgentFrameKind::Message, self.typing_frame());
            }
        }
    }
}

/// The customer leaves: cancel before assignment, end after.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct CustomerLeft {
    pub socket: Option<SocketId>,
    pub reference: Option<String>,
}

impl Handler<CustomerLeft> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: CustomerLeft, ctx: &mut Context<Self>) {
        match self.state.task_state {
            TaskState::Queued | TaskState::Reserved | TaskState::Parked => {
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Canceled,
                    agent_id: None,
                    agent_name: None,
                });
                self.broker.router.do_send(TaskClosed {
                    task_id: self.state.task_id.clone(),
                    outcome: Outcome::Abandoned,
                });
                self.to_customer(CustomerEvent::Ended(self.ended_frame()));
                self.schedule_eviction(ctx);
            }
            TaskState::Assigned => self.end(None, ctx),
            _ => {
                if let Some(socket) = msg.socket {
                    let err = ApiError::InvalidState("the conversation has already ended".into());
                    self.to_customer(CustomerEvent::Direct {
                        socket,
                        frame: err.to_frame(msg.reference.as_deref()),
                    });
                }
            }
        }
    }
}

/// The customer's last socket has been gone for the customer grace period:
/// a task still waiting for an agent is canceled (an assigned conversation is
/// left to its agent).
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct CustomerAbandoned;

impl Handler<CustomerAbandoned> for Conversation {
    type Result = ();

    fn handle(&mut self, _: CustomerAbandoned, ctx: &mut Context<Self>) {
        if matches!(
            self.state.task_state,
            TaskState::Queued | TaskState::Reserved
        ) {
            self.handle(
                CustomerLeft {
                    socket: None,
                    reference: None,
                },
                ctx,
            );
        }
    }
}

/// A customer socket connected: send it the history.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct SendHistory {
    pub socket: SocketId,
}

impl Handler<SendHistory> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: SendHistory, _: &mut Context<Self>) {
        let (messages, has_earlier) = self.replay();
        let frame = Event::History {
            conversation_id: Some(self.state.id.clone()),
            ended: self.state.ended(),
            messages: Cow::Borrowed(messages),
            has_earlier,
        }
        .frame();
        self.to_customer(CustomerEvent::History {
            socket: msg.socket,
            frame,
        });
        if self.state.task_state == TaskState::Assigned {
            if let Some(name) = &self.state.agent_name {
                let joined = frame_agent_joined(&self.state.id, name);
                self.to_customer(CustomerEvent::Direct {
                    socket: msg.socket,
                    frame: joined,
                });
            }
        }
    }
}

impl Conversation {
    pub(super) fn accept_customer_message(&mut self, mut msg: CustomerMessage) {
        if let Some(socket) = msg.socket {
            let resent = msg.client_msg_id.as_deref().and_then(|id| {
                let history = &self.state.messages;
                self.resend.find(history, Author::Customer, None, id)
            });
            if let Some(stored) = resent {
                // Stored before: acknowledged again, told to nobody else.
                let ack = Event::ack_frame(&self.state.id, stored, msg.reference.as_deref());
                self.to_customer(CustomerEvent::Direct { socket, frame: ack });
                return;
            }
        }
        let content = if msg.socket.is_none() {
            // From a provider, which has been answered `200` and will not
            // send it again: stored as its channel fitted it
            // (`channel/inbound.rs`), files stored (or failed) already.
            Ok(std::mem::take(&mut msg.provided))
        } else {
            validate_content(
                &self.broker,
                self.state.channel,
                &msg.text,
                &msg.attachments,
                Sender::Customer(&self.customer),
                &|id| self.carries(id),
            )
        };
        // The history cap: a webchat customer is refused (`history_full`); a
        // provider's message is kept all the same, since the provider was
        // answered already and refusing would lose it (the note still goes
        // out once).
        let content = content.and_then(|a| match self.history_room(&msg.text, &a) {
            Err(e) if self.state.channel == ChannelKind::Webchat => Err(e),
            _ => Ok(a),
        });
        let attachments = match content {
            Ok(a) => a,
            Err(e) => {
                if let Some(socket) = msg.socket {
                    let frame = e.to_frame(msg.reference.as_deref());
                    self.to_customer(CustomerEvent::Direct { socket, frame });
                }
                return;
            }
        };
        self.append(msg.author, msg.text, attachments, msg.client_msg_id);
        Metrics::bump(&self.broker.metrics.messages_in);
        let message = self.last_message();
        let ack = msg.socket.map(|socket| {
            let ack = Event::ack_frame(&self.state.id, message, msg.reference.as_deref());
            (socket, ack)
        });
        let frame = self.message_frame(message, None);
        let for_customer = match ack {
            // The ack and the message for the customer's sockets in one go.
            Some((socket, ack)) if self.state.channel == ChannelKind::Webchat => {
                self.to_customer(CustomerEvent::Accepted {
                    socket,
                    ack,
                    frame: frame.clone(),
                });
                None
            }
            Some((socket, ack)) => {
                self.to_customer(CustomerEvent::Direct { socket, frame: ack });
                Some(frame.clone())
            }
            None => Some(frame.clone()),
        };
        if self.state.task_state == TaskState::Assigned {
            if let Some(agent) = &self.agent {
                self.to_agent(agent, AgentFrameKind::Message, frame);
            }
        }
        if let Some(frame) = for_customer {
            // The customer's own words: shown in their other tabs, never
            // sent back to them by a provider.
            self.message_to_customer(frame, None, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::assert_crosses;

    /// What a customer's socket or a provider's webhook hands a
    /// conversation can cross from the node that took it to the one that
    /// runs the conversation.
    #[test]
    fn a_customers_messages_cross_between_nodes() {
        let picture = AttachmentMeta {
            id: "f_1".into(),
            content_type: "image/png".into(),
            size: 2048,
            filename: "receipt.png".into(),
            url: "https://example.com/f_1".into(),
            error: None,
        };
        let unfetched = AttachmentMeta {
            error: Some("the provider answered 404".into()),
            ..picture.clone()
        };
        for (socket, author) in [(None, Author::Customer), (Some(42), Author::System)] {
            assert_crosses(&CustomerMessage {
                socket,
                author,
                text: "my order 🙂".into(),
                attachments: vec!["f_9".into()],
                provided: vec![picture.clone(), unfetched.clone()],
                client_msg_id: Some("c-7".into()),
                reference: None,
            });
        }
        assert_crosses(&CustomerTyping);
        assert_crosses(&CustomerLeft {
            socket: Some(3),
            reference: Some("r-1".into()),
        });
        assert_crosses(&CustomerAbandoned);
        assert_crosses(&SendHistory { socket: 3 });
    }
}

//! What provider channels report about the agent's messages once sent:
//! [`DeliveryUpdate`] (sent, delivered, read or failed, per message) and
//! [`ReadUpTo`] (a Messenger read receipt covering everything before a time).
//!
//! Statuses only move forward (`accepted` < `sent` < `delivered` < `read`, and
//! `failed` is final), since providers' callbacks arrive in any order; each
//! change reaches the agent as `message.status`.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::SystemTime;

use actix::prelude::*;

use super::{Conversation, ConversationEvent};
use crate::agent::AgentFrameKind;
use crate::protocol::{Author, DeliveryStatus, Event};
use crate::webhooks::payload::StatusData;
use crate::webhooks::EventKind;

/// A provider reported a new delivery status for one of the agent's messages.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct DeliveryUpdate {
    pub message_id: String,
    pub status: DeliveryStatus,
    pub error: Option<String>,
}

impl Handler<DeliveryUpdate> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: DeliveryUpdate, _: &mut Context<Self>) {
        let seq = self
            .state
            .messages
            .iter()
            .rev()
            .find(|m| m.id == msg.message_id)
            .map(|m| m.seq);
        if let Some(seq) = seq {
            self.set_status(seq, msg.status, msg.error);
        }
    }
}

/// Messenger read receipt: every message sent out (agent replies, notices to
/// the customer) before `watermark` is read.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ReadUpTo {
    pub watermark: SystemTime,
}

impl Handler<ReadUpTo> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: ReadUpTo, _: &mut Context<Self>) {
        let seqs: Vec<u64> = self
            .state
            .messages
            .iter()
            .filter(|m| m.from != Author::Customer && m.created_at <= msg.watermark)
            .filter(|m| matches!(m.status, DeliveryStatus::Sent | DeliveryStatus::Delivered))
            .map(|m| m.seq)
            .collect();
        for seq in seqs {
            self.set_status(seq, DeliveryStatus::Read, None);
        }
    }
}

impl Conversation {
    /// Move message `seq` to `status` if that is forward, and tell the agent.
    pub(super) fn set_status(&mut self, seq: u64, status: DeliveryStatus, error: Option<String>) {
        let Some(current) = seq
            .checked_sub(1)
            .and_then(|i| self.state.messages.get(i as usize))
            .map(|m| m.status)
        else {
            return;
        };
        if !moves_forward(current, status) {
            return;
        }
        let message_id = self.state.messages[(seq - 1) as usize].id.clone();
        self.apply(ConversationEvent::StatusChanged { seq, status });
        self.hook(EventKind::MessageStatus, || StatusData {
            conversation_id: &self.state.id,
            task_id: &self.state.task_id,
            message_id: &message_id,
            seq,
            status,
            error: error.as_deref(),
        });
        if let Some(agent) = &self.agent {
            let f = Event::MessageStatus {
                conversation_id: self.state.id.clone(),
                message_id: Cow::Borrowed(&message_id),
                status,
                error: error.as_deref().map(Cow::Borrowed),
            }
            .frame();
            self.to_agent(agent, AgentFrameKind::Other, f);
        }
    }
}

/// Does a report of `status` move a message now at `current` forward? Reports
/// arrive in any order: a late `sent` never overrides `delivered`, and
/// `failed` is final.
fn moves_forward(current: DeliveryStatus, status: DeliveryStatus) -> bool {
    status_rank(status) > status_rank(current) && current != DeliveryStatus::Failed
}

/// Status order: accepted < sent < delivered < read < failed.
fn status_rank(s: DeliveryStatus) -> u8 {
    match s {
        DeliveryStatus::Accepted => 0,
        DeliveryStatus::Sent => 1,
        DeliveryStatus::Delivered => 2,
        DeliveryStatus::Read => 3,
        DeliveryStatus::Failed => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus::*;

    /// A provider's delivery reports can cross from the node that took the
    /// callback to the one that runs the conversation.
    #[test]
    fn delivery_reports_cross_between_nodes() {
        for (status, error) in [(Delivered, None), (Failed, Some("30003 unreachable"))] {
            crate::codec::assert_crosses(&DeliveryUpdate {
                message_id: "SM123".into(),
                status,
                error: error.map(Into::into),
            });
        }
        crate::codec::assert_crosses(&ReadUpTo {
            watermark: crate::protocol::now(),
        });
    }

    #[test]
    fn statuses_only_move_forward_and_failed_is_final() {
        assert!(moves_forward(Accepted, Sent));
        assert!(moves_forward(Sent, Read));
        assert!(moves_forward(Delivered, Failed));
        // A late `sent` after `delivered`, or a repeat, changes nothing.
        assert!(!moves_forward(Delivered, Sent));
        assert!(!moves_forward(Read, Read));
        for later in [Accepted, Sent, Delivered, Read, Failed] {
            assert!(!moves_forward(Failed, later));
        }
    }
}

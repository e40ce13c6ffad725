//! What HTTP routes read of a conversation (`GET /v1/conversations/{id}` and
//! its messages): [`GetSnapshot`] and [`GetMessages`]. Read-only.

use std::time::SystemTime;

use actix::prelude::*;
use serde::Serialize;

use super::Conversation;
use crate::protocol::{rfc3339, CancelReason, ChannelKind, Customer, Id, Message, TaskState};

/// `GET /v1/conversations/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationSnapshot {
    pub id: Id,
    pub channel: ChannelKind,
    pub state: &'static str,
    pub customer: Customer,
    pub agent_id: Option<Id>,
    pub task: TaskRef,
    pub disposition: Option<String>,
    pub notes: Option<String>,
    pub previous_conversation_id: Option<Id>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "rfc3339::option")]
    pub ended_at: Option<SystemTime>,
    pub message_count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRef {
    pub id: Id,
    pub state: TaskState,
    /// Why the broker canceled it (`max_wait`, `closed`), else null.
    pub reason: Option<CancelReason>,
}

#[derive(Message)]
#[rtype(result = "ConversationSnapshot")]
pub struct GetSnapshot;

impl Handler<GetSnapshot> for Conversation {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        let s = &self.state;
        MessageResult(ConversationSnapshot {
            id: s.id.clone(),
            channel: s.channel,
            state: if s.ended() { "ended" } else { "open" },
            customer: s.customer.clone(),
            agent_id: s.agent_id.clone(),
            task: TaskRef {
                id: s.task_id.clone(),
                state: s.task_state,
                reason: s.cancel_reason,
            },
            disposition: s.disposition.clone(),
            notes: s.notes.clone(),
            previous_conversation_id: s.previous.clone(),
            created_at: s.created_at,
            ended_at: s.ended_at,
            message_count: s.messages.len(),
        })
    }
}

/// A page of history: messages with `seq > after_seq`, at most `limit`.
#[derive(Message)]
#[rtype(result = "(Vec<Message>, bool)")]
pub struct GetMessages {
    pub after_seq: u64,
    pub limit: usize,
}

impl Handler<GetMessages> for Conversation {
    type Result = MessageResult<GetMessages>;

    fn handle(&mut self, msg: GetMessages, _: &mut Context<Self>) -> Self::Result {
        // seq n sits at index n-1: paging is a slice, not a search.
        let start = (msg.after_seq as usize).min(self.state.messages.len());
        let end = start
            .saturating_add(msg.limit)
            .min(self.state.messages.len());
        let page = self.state.messages[start..end].to_vec();
        MessageResult((page, end < self.state.messages.len()))
    }
}

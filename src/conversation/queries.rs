//! What HTTP routes read of a conversation (`GET /v1/conversations/{id}` and
//! its messages): [`GetSnapshot`] and [`GetMessages`]. Read-only.

use std::time::SystemTime;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::Conversation;
use crate::protocol::{rfc3339, CancelReason, ChannelKind, Customer, Id, Message, TaskState};

/// `GET /v1/conversations/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSnapshot {
    pub id: Id,
    pub channel: ChannelKind,
    pub state: ConversationStatus,
    pub customer: Customer,
    pub agent_id: Option<Id>,
    /// The queue its task is (or was last) in.
    pub queue: String,
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

/// Whether a conversation is still open: its `state` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    Open,
    Ended,
}

impl ConversationStatus {
    /// From its name on the wire (`open`, `ended`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "open" => Some(ConversationStatus::Open),
            "ended" => Some(ConversationStatus::Ended),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    pub id: Id,
    pub state: TaskState,
    /// Why the broker canceled it (`max_wait`, `closed`), else null.
    pub reason: Option<CancelReason>,
}

#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "ConversationSnapshot")]
pub struct GetSnapshot;

impl Handler<GetSnapshot> for Conversation {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        let s = &self.state;
        MessageResult(ConversationSnapshot {
            id: s.id.clone(),
            channel: s.channel,
            state: if s.ended() {
                ConversationStatus::Ended
            } else {
                ConversationStatus::Open
            },
            customer: s.customer.clone(),
            agent_id: s.agent_id.clone(),
            queue: s.queue.clone(),
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

/// A page of history, in `seq` order, at most `limit` messages, and whether
/// more lie beyond it:
/// - without `before_seq`: the oldest messages with `seq > after_seq`; more
///   means newer ones follow (page forward from the last `seq`);
/// - with `before_seq`: the newest messages with
///   `after_seq < seq < before_seq`; more means older ones precede (page back
///   from the first `seq`).
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "(Vec<Message>, bool)")]
pub struct GetMessages {
    pub after_seq: u64,
    pub before_seq: Option<u64>,
    pub limit: usize,
}

impl Handler<GetMessages> for Conversation {
    type Result = MessageResult<GetMessages>;

    fn handle(&mut self, msg: GetMessages, _: &mut Context<Self>) -> Self::Result {
        let (range, more) = page(
            self.state.messages.len(),
            msg.after_seq,
            msg.before_seq,
            msg.limit,
        );
        MessageResult((self.state.messages[range].to_vec(), more))
    }
}

/// The indexes of a page of `len` messages (seq n sits at index n-1: paging
/// is a slice, not a search) and whether more lie beyond it; see
/// [`GetMessages`].
fn page(
    len: usize,
    after_seq: u64,
    before_seq: Option<u64>,
    limit: usize,
) -> (std::ops::Range<usize>, bool) {
    let clamp = |seq: u64| usize::try_from(seq).unwrap_or(usize::MAX).min(len);
    let low = clamp(after_seq);
    match before_seq {
        None => {
            let end = low.saturating_add(limit).min(len);
            (low..end, end < len)
        }
        Some(before) => {
            // seq < before: indexes below before - 1.
            let high = clamp(before.saturating_sub(1)).max(low);
            let start = high.saturating_sub(limit).max(low);
            (start..high, start > low)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::assert_crosses;
    use crate::protocol::samples;

    #[test]
    fn pages_forward_and_back_without_gap_or_overlap() {
        // Forward from the start, 10 messages by 4.
        assert_eq!(page(10, 0, None, 4), (0..4, true));
        assert_eq!(page(10, 4, None, 4), (4..8, true));
        assert_eq!(page(10, 8, None, 4), (8..10, false));
        assert_eq!(page(10, 10, None, 4), (10..10, false));
        // Back from the end (before_seq = 11: everything), by 4.
        assert_eq!(page(10, 0, Some(11), 4), (6..10, true));
        assert_eq!(page(10, 0, Some(7), 4), (2..6, true));
        assert_eq!(page(10, 0, Some(3), 4), (0..2, false));
        assert_eq!(page(10, 0, Some(1), 4), (0..0, false));
        assert_eq!(page(10, 0, Some(0), 4), (0..0, false));
        // A window: after 2, before 9 (seqs 3..=8), newest 4 of them.
        assert_eq!(page(10, 2, Some(9), 4), (4..8, true));
        assert_eq!(page(10, 2, Some(5), 4), (2..4, false));
        // Beyond the end, and a window that is empty.
        assert_eq!(page(10, 0, Some(u64::MAX), 3), (7..10, true));
        assert_eq!(page(10, 7, Some(5), 3), (7..7, false));
    }

    fn snapshot(state: ConversationStatus) -> ConversationSnapshot {
        ConversationSnapshot {
            id: "cv_1".into(),
            channel: ChannelKind::Sms,
            state,
            customer: samples::customer(),
            agent_id: Some("alice".into()),
            queue: "billing".into(),
            task: TaskRef {
                id: "tk_1".into(),
                state: TaskState::Canceled,
                reason: Some(CancelReason::MaxWait),
            },
            disposition: None,
            notes: Some("called back".into()),
            previous_conversation_id: Some("cv_0".into()),
            created_at: crate::protocol::now(),
            ended_at: (state == ConversationStatus::Ended).then(crate::protocol::now),
            message_count: 3,
        }
    }

    /// What HTTP routes read of a conversation can cross from the node
    /// that runs it to the node that took the request.
    #[test]
    fn the_routes_reads_cross_between_nodes() {
        assert_crosses(&GetSnapshot);
        for state in [ConversationStatus::Open, ConversationStatus::Ended] {
            assert_crosses(&snapshot(state));
        }
        assert_crosses(&GetMessages {
            after_seq: 4,
            before_seq: Some(9),
            limit: 50,
        });
        let mut from_agent = samples::message();
        from_agent.from = crate::protocol::Author::Agent;
        from_agent.agent_id = Some("alice".into());
        from_agent.client_msg_id = Some("c-1".into());
        assert_crosses(&(vec![samples::message(), from_agent], true));
    }

    #[test]
    fn a_conversations_state_is_named_on_the_wire_as_before() {
        for (state, name) in [
            (ConversationStatus::Open, "open"),
            (ConversationStatus::Ended, "ended"),
        ] {
            let json = serde_json::to_value(snapshot(state)).expect("json");
            assert_eq!(json["state"], name);
            assert_eq!(ConversationStatus::named(name), Some(state));
        }
        assert_eq!(ConversationStatus::named("closed"), None);
    }
}

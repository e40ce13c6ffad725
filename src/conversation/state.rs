//! What a conversation is, apart from the actor that runs it: the state it
//! owns ([`ConversationState`]), every change it can make to it
//! ([`ConversationEvent`]), and [`ConversationState::apply`], the one place the
//! state changes. Also what others see of it: the supervisors' task summary
//! and the desktop's task view.
//!
//! Pure data, no actors: the events derive serde and go through the journal
//! codec, so a replay calls the same `apply` (the unit tests below do), and the
//! benches drive it alone.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::protocol::{
    Author, CancelReason, ChannelKind, Customer, DeliveryStatus, Id, Message, TaskState,
    TaskSummary, TaskView, Transfer,
};

/// The state a conversation owns: everything needed to rebuild it by replaying
/// its events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationState {
    pub id: Id,
    pub task_id: Id,
    pub channel: ChannelKind,
    pub customer: Customer,
    /// The business address the customer wrote to (provider channels).
    pub business: Option<String>,
    pub skills: Vec<String>,
    /// The queue its task waits in, and the task's priority there.
    pub queue: String,
    pub priority: u8,
    pub previous: Option<Id>,
    /// When the customer last wrote (opens the WhatsApp/Messenger window).
    pub last_customer_at: Option<SystemTime>,
    pub created_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub task_state: TaskState,
    pub agent_id: Option<Id>,
    pub agent_name: Option<String>,
    pub disposition: Option<String>,
    pub notes: Option<String>,
    /// Why the broker canceled the task, if it did.
    pub cancel_reason: Option<CancelReason>,
    pub messages: Vec<Message>,
    /// What the messages weigh, by [`message_bytes`]: the history cap counts it.
    #[serde(default)]
    pub history_bytes: u64,
    /// The history reached its cap and the note saying so was added: the
    /// conversation takes no more messages from its customer or agent.
    #[serde(default)]
    pub history_full: bool,
    /// The transfer chain, oldest first.
    #[serde(default)]
    pub transfers: Vec<Transfer>,
    /// A warm transfer on offer to another agent while this one keeps it.
    #[serde(default)]
    pub pending_transfer: Option<PendingTransfer>,
    /// When the task was last assigned (an accept, or a warm transfer's):
    /// the inactivity clock counts from it or the customer's last message,
    /// whichever is later, also after a restart.
    #[serde(default)]
    pub assigned_at: Option<SystemTime>,
}

/// A warm transfer on offer: to which agent, under which offer number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingTransfer {
    pub target: Id,
    pub offer: u64,
    pub transfer: Transfer,
}

/// What one message weighs against `max_history_bytes`: its text and its
/// files' names, types and URLs (the bytes a history holds and replays;
/// fixed-size fields are left out, the message count bounds those).
pub fn message_bytes(text: &str, attachments: &[crate::protocol::AttachmentMeta]) -> u64 {
    let files: usize = attachments
        .iter()
        .map(|a| a.id.len() + a.filename.len() + a.content_type.len() + a.url.len())
        .sum();
    (text.len() + files) as u64
}

/// Every change a conversation makes to its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConversationEvent {
    MessageAppended(Message),
    TaskMoved {
        state: TaskState,
        agent_id: Option<Id>,
        agent_name: Option<String>,
    },
    Ended {
        at: SystemTime,
    },
    Completed {
        disposition: String,
        notes: String,
        at: SystemTime,
    },
    StatusChanged {
        seq: u64,
        status: DeliveryStatus,
    },
    /// The history reached its cap (`max_history_messages`,
    /// `max_history_bytes`); the note saying so follows as a message.
    HistoryFull,
    /// The router offered the task from this queue, at this priority (it
    /// may have overflowed, or its queue changed, since it arrived).
    Routed {
        queue: String,
        priority: u8,
    },
    /// The broker canceled the waiting task.
    Canceled {
        reason: CancelReason,
    },
    /// The task was transferred (cold at once, warm on the target's
    /// accept): the transfer joins the chain; the move itself follows as
    /// `TaskMoved`.
    Transferred {
        transfer: Transfer,
    },
    /// A warm transfer is offered (`Some`) or over (`None`).
    TransferPending {
        pending: Option<PendingTransfer>,
    },
    /// The task was assigned at `at` (after its `TaskMoved` to assigned):
    /// where the inactivity clock starts, kept so a restart counts from it.
    AssignedAt {
        at: SystemTime,
    },
}

impl ConversationState {
    /// A conversation as it opens: its task queued in `queue` at priority 0,
    /// nothing written, assigned or transferred yet. The one place that
    /// lists every field; whoever opens one (the actor, tests, benches) sets
    /// what it knows more with struct update syntax.
    pub fn new(
        id: Id,
        task_id: Id,
        channel: ChannelKind,
        customer: Customer,
        queue: String,
        created_at: SystemTime,
    ) -> Self {
        ConversationState {
            id,
            task_id,
            channel,
            customer,
            business: None,
            skills: Vec::new(),
            queue,
            priority: 0,
            previous: None,
            last_customer_at: None,
            created_at,
            ended_at: None,
            task_state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
            disposition: None,
            notes: None,
            cancel_reason: None,
            messages: Vec::new(),
            history_bytes: 0,
            history_full: false,
            transfers: Vec::new(),
            pending_transfer: None,
            assigned_at: None,
        }
    }

    /// The one place conversation state changes.
    pub fn apply(&mut self, event: ConversationEvent) {
        match event {
            ConversationEvent::MessageAppended(m) => {
                if m.from == Author::Customer {
                    self.last_customer_at = Some(m.created_at);
                }
                // Room for the first message only: many conversations wait
                // with one, and a Vec's first push keeps room for four.
                if self.messages.capacity() == 0 {
                    self.messages.reserve_exact(1);
                }
                self.history_bytes += message_bytes(&m.text, &m.attachments);
                self.messages.push(m);
            }
            ConversationEvent::StatusChanged { seq, status } => {
                if let Some(m) = seq
                    .checked_sub(1)
                    .and_then(|i| self.messages.get_mut(i as usize))
                {
                    m.status = status;
                }
            }
            ConversationEvent::TaskMoved {
                state,
                agent_id,
                agent_name,
            } => {
                self.task_state = state;
                self.agent_id = agent_id;
                self.agent_name = agent_name;
                if state == TaskState::Canceled {
                    self.ended_at.get_or_insert_with(SystemTime::now);
                }
            }
            ConversationEvent::HistoryFull => self.history_full = true,
            ConversationEvent::Routed { queue, priority } => {
                self.queue = queue;
                self.priority = priority;
            }
            ConversationEvent::Canceled { reason } => {
                self.task_state = TaskState::Canceled;
                self.agent_id = None;
                self.agent_name = None;
                self.cancel_reason = Some(reason);
                self.ended_at.get_or_insert_with(SystemTime::now);
            }
            ConversationEvent::Transferred { transfer } => self.transfers.push(transfer),
            ConversationEvent::TransferPending { pending } => self.pending_transfer = pending,
            ConversationEvent::AssignedAt { at } => self.assigned_at = Some(at),
            ConversationEvent::Ended { at } => {
                self.task_state = TaskState::Wrapping;
                self.ended_at = Some(at);
            }
            ConversationEvent::Completed {
                disposition,
                notes,
                at,
            } => {
                self.task_state = TaskState::Completed;
                self.disposition = Some(disposition);
                self.notes = Some(notes);
                self.ended_at.get_or_insert(at);
            }
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.messages.len() as u64 + 1
    }

    /// Has the conversation ended for the customer?
    pub fn ended(&self) -> bool {
        self.ended_at.is_some()
    }

    /// What supervisors see of the task.
    pub fn task_summary(&self) -> TaskSummary {
        TaskSummary {
            id: self.task_id.clone(),
            conversation_id: self.id.clone(),
            channel: self.channel,
            customer: self.customer.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            state: self.task_state,
            agent_id: self.agent_id.clone(),
            created_at: self.created_at,
            waiting_since: self.created_at,
            reason: self.cancel_reason,
        }
    }

    /// The agent holding the task (assigned, or in wrap-up), if any.
    pub fn holder(&self) -> Option<&Id> {
        self.agent_id
            .as_ref()
            .filter(|_| matches!(self.task_state, TaskState::Assigned | TaskState::Wrapping))
    }

    pub fn task_view(&self) -> TaskView {
        let preview = self
            .messages
            .iter()
            .rev()
            .find(|m| m.from == Author::Customer)
            .or(self.messages.last())
            .map(|m| preview_of(&m.text))
            .unwrap_or_default();
        TaskView {
            id: self.task_id.clone(),
            conversation_id: self.id.clone(),
            channel: self.channel,
            customer: self.customer.clone(),
            preview,
            created_at: self.created_at,
            state: self.task_state,
            queue: self.queue.clone(),
            priority: self.priority,
            waiting_since: self.created_at,
            transfers: self.transfers.clone(),
        }
    }
}

fn preview_of(text: &str) -> String {
    const MAX: usize = 140;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ConversationState {
        ConversationState::new(
            "cv_1".into(),
            "tk_1".into(),
            ChannelKind::Webchat,
            Customer {
                address: "wc_1".into(),
                name: "Dana".into(),
            },
            crate::protocol::DEFAULT_QUEUE.to_owned(),
            crate::protocol::now(),
        )
    }

    fn msg(seq: u64, from: Author, text: &str) -> Message {
        Message {
            id: format!("m_{seq}"),
            conversation_id: "cv_1".into(),
            seq,
            from,
            agent_id: None,
            text: text.into(),
            attachments: vec![],
            created_at: crate::protocol::now(),
            status: DeliveryStatus::Accepted,
            client_msg_id: None,
        }
    }

    #[test]
    fn events_drive_the_state_and_round_trip_through_the_codec() {
        let mut s = state();
        let assigned_at = crate::protocol::now();
        let events = vec![
            ConversationEvent::MessageAppended(msg(1, Author::Customer, "hello")),
            ConversationEvent::TaskMoved {
                state: TaskState::Assigned,
                agent_id: Some("alice".into()),
                agent_name: Some("Alice".into()),
            },
            ConversationEvent::AssignedAt { at: assigned_at },
            ConversationEvent::MessageAppended(msg(2, Author::Agent, "hi!")),
            ConversationEvent::Ended {
                at: crate::protocol::now(),
            },
            ConversationEvent::Completed {
                disposition: "resolved".into(),
                notes: "ok".into(),
                at: crate::protocol::now(),
            },
        ];
        let mut replayed = state();
        for ev in events {
            let bytes = crate::codec::encode(&ev).unwrap();
            replayed.apply(crate::codec::decode(&bytes).unwrap());
            s.apply(ev);
        }
        assert_eq!(s.task_state, TaskState::Completed);
        assert_eq!(s.next_seq(), 3);
        assert_eq!(s.task_view().preview, "hello");
        assert_eq!(replayed.messages, s.messages);
        assert_eq!(replayed.disposition.as_deref(), Some("resolved"));
        assert!(replayed.ended());
        assert_eq!(
            replayed.history_bytes,
            "hello".len() as u64 + "hi!".len() as u64
        );
        assert_eq!(replayed.history_bytes, s.history_bytes);
        assert_eq!(replayed.assigned_at, Some(assigned_at));
    }

    #[test]
    fn preview_is_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let p = preview_of(&long);
        assert_eq!(p.chars().count(), 141);
        assert!(p.ends_with('…'));
    }
}

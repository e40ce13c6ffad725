//! The `data` of each webhook event type, as `docs/webhooks.md` shows them.
//! Borrowed from the emitting actor's state where it can be, so an event
//! nobody wants costs nothing and one that is wanted is encoded straight from
//! the state.

use std::time::SystemTime;

use serde::Serialize;

use crate::protocol::{
    Activity, AgentView, ChannelKind, DeliveryStatus, Id, Message, SupervisorAction, TaskSummary,
};

/// `task.*`: the task as supervisors see it (`task.state`'s `task`), and
/// what the event adds.
#[derive(Debug, Serialize)]
pub struct TaskData<'a> {
    pub task: TaskSummary,
    /// The agent the event is about: offered to, accepted by, rejected by,
    /// timed out at, taken back from, completed by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<&'a str>,
    /// `task.offered`: when the offer lapses.
    #[serde(
        with = "crate::protocol::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<SystemTime>,
    /// `task.requeued`: why the agent no longer holds it; `task.transferred`:
    /// `cold` or `warm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// `task.completed`: the disposition and the wrap-up notes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposition: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<&'a str>,
}

impl<'a> TaskData<'a> {
    pub fn new(task: TaskSummary) -> Self {
        TaskData {
            task,
            agent_id: None,
            expires_at: None,
            reason: None,
            disposition: None,
            notes: None,
        }
    }
}

/// `message.created`: every message stored in a conversation (customer,
/// agent or system), as the history holds it.
#[derive(Debug, Serialize)]
pub struct MessageData<'a> {
    pub conversation_id: &'a Id,
    pub task_id: &'a Id,
    pub channel: ChannelKind,
    pub message: &'a Message,
}

/// `message.status`: a provider's delivery report moved an agent message on.
#[derive(Debug, Serialize)]
pub struct StatusData<'a> {
    pub conversation_id: &'a Id,
    pub task_id: &'a Id,
    pub message_id: &'a str,
    pub seq: u64,
    pub status: DeliveryStatus,
    pub error: Option<&'a str>,
}

/// `conversation.ended`: the chat is over for the customer (ended by either
/// side, or its waiting task canceled).
#[derive(Debug, Serialize)]
pub struct EndedData<'a> {
    pub conversation_id: &'a Id,
    pub task_id: &'a Id,
    pub channel: ChannelKind,
    pub agent_id: Option<&'a Id>,
    #[serde(with = "crate::protocol::rfc3339::option")]
    pub ended_at: Option<SystemTime>,
}

/// `agent.activity`: an agent's activity changed (by its desk, an admin, or
/// the broker after missed offers).
#[derive(Debug, Serialize)]
pub struct ActivityData<'a> {
    pub agent: &'a AgentView,
    pub previous: Activity,
}

/// `supervisor.action`: a supervisor acted (force-transfer, force-complete,
/// an agent's activity or capacity, monitoring): who (`by`), the `action`
/// and its fields as the supervisor stream shows them, and when.
#[derive(Debug, Serialize)]
pub struct SupervisorActionData<'a> {
    pub by: &'a str,
    #[serde(flatten)]
    pub action: &'a SupervisorAction,
    #[serde(with = "crate::protocol::rfc3339")]
    pub at: SystemTime,
}

//! Serde types of the wire protocol (HTTP and WebSocket JSON) as the broker
//! builds and reads them. (Tests and the load harness are clients: they speak
//! the JSON of `docs/protocol.md` on their own, as any client would.)
//!
//! Inbound commands are typed enums parsed once at the socket edge; outbound
//! events are the [`Event`] enum (`event.rs`), encoded to JSON exactly once
//! (see [`Frame`]) so the same bytes go to every recipient.

pub mod event;
mod stats;

pub use event::{Event, RescindReason, SupervisorAction};
pub use stats::{AgentCounts, QueueStats, QueueToday};

use std::sync::Arc;
use std::time::SystemTime;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

/// Shared, immutable id string. Ids are cloned into many messages; an `Arc<str>`
/// makes that a pointer copy.
pub type Id = Arc<str>;

/// The channels a customer can write in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Webchat,
    Sms,
    Whatsapp,
    Messenger,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 4] = [
        ChannelKind::Webchat,
        ChannelKind::Sms,
        ChannelKind::Whatsapp,
        ChannelKind::Messenger,
    ];

    /// Dense index for per-channel arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webchat => "webchat",
            ChannelKind::Sms => "sms",
            ChannelKind::Whatsapp => "whatsapp",
            ChannelKind::Messenger => "messenger",
        }
    }
}

/// A number per channel (capacity, load). Serialized as
/// `{"webchat":n,"sms":n,"whatsapp":n,"messenger":n}`; missing keys are 0.
/// As a capacity it may also carry `total`, a cap on the open tasks across
/// channels (never set in a load); JSON leaves it out when absent, the
/// journal codec (not human-readable) always writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerChannel {
    pub webchat: u32,
    pub sms: u32,
    pub whatsapp: u32,
    pub messenger: u32,
    pub total: Option<u32>,
}

impl Serialize for PerChannel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_total = self.total.is_some() || !s.is_human_readable();
        let mut st = s.serialize_struct("PerChannel", 4 + usize::from(with_total))?;
        st.serialize_field("webchat", &self.webchat)?;
        st.serialize_field("sms", &self.sms)?;
        st.serialize_field("whatsapp", &self.whatsapp)?;
        st.serialize_field("messenger", &self.messenger)?;
        if with_total {
            st.serialize_field("total", &self.total)?;
        }
        st.end()
    }
}

impl PerChannel {
    pub fn get(&self, ch: ChannelKind) -> u32 {
        match ch {
            ChannelKind::Webchat => self.webchat,
            ChannelKind::Sms => self.sms,
            ChannelKind::Whatsapp => self.whatsapp,
            ChannelKind::Messenger => self.messenger,
        }
    }

    pub fn get_mut(&mut self, ch: ChannelKind) -> &mut u32 {
        match ch {
            ChannelKind::Webchat => &mut self.webchat,
            ChannelKind::Sms => &mut self.sms,
            ChannelKind::Whatsapp => &mut self.whatsapp,
            ChannelKind::Messenger => &mut self.messenger,
        }
    }

    /// The sum over channels.
    pub fn sum(&self) -> u32 {
        self.webchat + self.sms + self.whatsapp + self.messenger
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Available,
    Break,
    Offline,
    /// Set by the broker after `max_missed_offers` offers in a row timed out;
    /// not eligible until the agent sets itself available again.
    NotResponding,
}

/// Task life cycle: `queued → reserved → assigned → wrapping → completed`, or
/// `canceled` when the customer leaves before assignment; an assigned task
/// may be `parked` (no agent, no capacity) until the customer writes or its
/// time comes, then it is `queued` again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Reserved,
    Assigned,
    Wrapping,
    Completed,
    Canceled,
    Parked,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Reserved,
        TaskState::Assigned,
        TaskState::Wrapping,
        TaskState::Completed,
        TaskState::Canceled,
        TaskState::Parked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Reserved => "reserved",
            TaskState::Assigned => "assigned",
            TaskState::Wrapping => "wrapping",
            TaskState::Completed => "completed",
            TaskState::Canceled => "canceled",
            TaskState::Parked => "parked",
        }
    }

    /// Still holds (or waits for) an agent's attention.
    pub fn is_open(self) -> bool {
        !matches!(self, TaskState::Completed | TaskState::Canceled)
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Author {
    Customer,
    Agent,
    System,
}

/// A WhatsApp message template (needed to write first, outside the window).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub language: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Accepted,
    Sent,
    Delivered,
    Read,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub address: String,
    pub name: String,
}

/// Metadata of an uploaded file, as it appears in messages and upload replies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub id: String,
    pub content_type: String,
    pub size: u64,
    pub filename: String,
    pub url: String,
    /// Set when a provider's file could not be fetched (then `id` and `url`
    /// are empty); null otherwise.
    #[serde(default)]
    pub error: Option<String>,
}

/// One message of a conversation's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conversation_id: Id,
    pub seq: u64,
    pub from: Author,
    /// Null unless `from` is `agent`. Optional fields are written as null,
    /// never skipped, so the same type also encodes with the journal codec.
    #[serde(default)]
    pub agent_id: Option<Id>,
    pub text: String,
    pub attachments: Vec<AttachmentMeta>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    pub status: DeliveryStatus,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

/// A task as shown to agents (`task.offered`, `task.assigned`, `hello`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: Id,
    pub conversation_id: Id,
    pub channel: ChannelKind,
    pub customer: Customer,
    pub preview: String,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    pub state: TaskState,
    /// The queue it came from, its priority there, and since when it waits.
    pub queue: String,
    pub priority: u8,
    #[serde(with = "rfc3339")]
    pub waiting_since: SystemTime,
    /// Every transfer of this task so far, oldest first: the transfer chain,
    /// each with its note (empty when never transferred; always written, so
    /// the same type also encodes with the journal codec).
    #[serde(default)]
    pub transfers: Vec<Transfer>,
}

/// Where a task is transferred: a queue, or one agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferTarget {
    Queue(String),
    Agent(String),
}

/// Cold: the sender lets go at once. Warm: the sender keeps the task until
/// the target accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    Cold,
    Warm,
}

/// One transfer of a task: who handed it on, to what, how, with which note.
/// `from` is an agent id, or `supervisor` for `POST /v1/tasks/{id}/transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub from: Id,
    pub to: TransferTarget,
    pub mode: TransferMode,
    pub note: String,
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
}

/// The longest transfer note accepted, in characters.
pub const MAX_TRANSFER_NOTE: usize = 2000;

/// The queue that always exists: every channel, no skills.
pub const DEFAULT_QUEUE: &str = "default";

/// Why the broker canceled a task that was still waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer left or went away.
    CustomerLeft,
    /// It waited past its queue's `max_wait`.
    MaxWait,
    /// It arrived outside its queue's business hours, which cancel.
    Closed,
}

/// A task as supervisors and integrations see it (`GET /v1/tasks`, the
/// supervisor stream's `task.state`): who waits, where, how long, and who
/// holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub id: Id,
    pub conversation_id: Id,
    pub channel: ChannelKind,
    pub customer: Customer,
    pub queue: String,
    pub priority: u8,
    pub state: TaskState,
    pub agent_id: Option<Id>,
    #[serde(with = "rfc3339")]
    pub created_at: SystemTime,
    /// When the task first entered the queue; kept when it is re-queued
    /// (it keeps its place, too).
    #[serde(with = "rfc3339")]
    pub waiting_since: SystemTime,
    /// Why it was canceled (null unless `state` is `canceled`).
    pub reason: Option<CancelReason>,
}

/// An agent as shown over HTTP and in `hello`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub id: Id,
    pub name: String,
    pub capacity: PerChannel,
    pub skills: Vec<String>,
    pub activity: Activity,
    pub connected: bool,
    pub load: PerChannel,
}

/// Commands a supervisor socket takes.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SupervisorCommand {
    /// Stream this conversation's `message` events, read-only.
    Monitor {
        conversation_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Stop streaming it.
    Unmonitor {
        conversation_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
}

/// Commands an agent desktop sends over its socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AgentCommand {
    Activity {
        activity: Activity,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Accept {
        task_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Reject {
        task_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Send {
        conversation_id: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        attachments: Vec<String>,
        #[serde(default)]
        client_msg_id: Option<String>,
        /// A canned response to send, filled in, instead of `text`.
        #[serde(default)]
        canned_id: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    End {
        conversation_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Complete {
        task_id: String,
        disposition: String,
        #[serde(default)]
        notes: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Outbound {
        channel: ChannelKind,
        to: String,
        #[serde(default)]
        text: String,
        #[serde(default)]
        attachments: Vec<String>,
        #[serde(default)]
        client_msg_id: Option<String>,
        /// WhatsApp: a template to write first outside the messaging window.
        #[serde(default)]
        template: Option<Template>,
        /// The queue the conversation counts in (`default` when absent).
        #[serde(default)]
        queue: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Typing {
        conversation_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Hand the task to a queue or an agent (`mode` defaults to cold).
    Transfer {
        task_id: String,
        to: TransferTarget,
        #[serde(default = "cold")]
        mode: TransferMode,
        #[serde(default)]
        note: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Withdraw a pending warm transfer.
    #[serde(rename = "transfer.cancel")]
    TransferCancel {
        task_id: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Put the task aside, capacity freed, until the customer writes or
    /// `until`.
    Park {
        task_id: String,
        #[serde(default, with = "rfc3339::option")]
        until: Option<SystemTime>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
}

fn cold() -> TransferMode {
    TransferMode::Cold
}

/// Commands a webchat customer sends over its socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CustomerCommand {
    Message {
        #[serde(default)]
        text: String,
        #[serde(default)]
        attachments: Vec<String>,
        #[serde(default)]
        client_msg_id: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Typing {
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    Leave {
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
}

/// Pull the client's `ref` out of a frame that failed typed parsing, so even a
/// rejected command's error carries it.
pub fn salvage_ref(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("ref")?.as_str().map(str::to_owned)
}

/// An encoded JSON text frame. Cloning shares the bytes.
pub type Frame = ByteString;

/// Encode any serializable event once.
pub fn frame<T: Serialize>(value: &T) -> Frame {
    // Serializing our own plain structs cannot fail (no maps with non-string
    // keys, no failing Serialize impls); fall back to an error frame regardless.
    match serde_json::to_string(value) {
        Ok(s) => ByteString::from(s),
        Err(e) => ByteString::from(format!(
            r#"{{"type":"error","code":"internal","message":"encode failed: {e}","ref":null}}"#
        )),
    }
}

/// Build a `{"type":"error",...}` frame.
pub fn error_frame(code: &str, message: &str, reference: Option<&str>) -> Frame {
    Event::Error {
        code: code.into(),
        message: message.into(),
        reference: event::reference(reference),
    }
    .frame()
}

/// Build a `{"type":"ok","ref":...}` frame.
pub fn ok_frame(reference: Option<&str>) -> Frame {
    Event::Ok {
        reference: event::reference(reference),
    }
    .frame()
}

/// Now, truncated to whole milliseconds: the precision of the wire format, so a
/// time survives encoding (JSON or journal) unchanged.
pub fn now() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(since.as_millis() as u64)
}

/// Serde adapter: `SystemTime` as an RFC 3339 UTC string.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }

    /// Same for `Option<SystemTime>` (null when absent).
    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_command_parses_with_ref() {
        let cmd: AgentCommand =
            serde_json::from_str(r#"{"type":"accept","task_id":"t1","ref":"r9"}"#).unwrap();
        match cmd {
            AgentCommand::Accept { task_id, reference } => {
                assert_eq!(task_id, "t1");
                assert_eq!(reference.as_deref(), Some("r9"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_command_is_an_error_and_ref_is_salvaged() {
        let text = r#"{"type":"dance","ref":"x"}"#;
        assert!(serde_json::from_str::<AgentCommand>(text).is_err());
        assert_eq!(salvage_ref(text).as_deref(), Some("x"));
    }

    #[test]
    fn per_channel_defaults_missing_keys() {
        let p: PerChannel = serde_json::from_str(r#"{"sms":2}"#).unwrap();
        assert_eq!(p.get(ChannelKind::Sms), 2);
        assert_eq!(p.get(ChannelKind::Webchat), 0);
    }

    #[test]
    fn message_time_round_trips() {
        let m = Message {
            id: "m1".into(),
            conversation_id: "c1".into(),
            seq: 1,
            from: Author::Customer,
            agent_id: None,
            text: "hi".into(),
            attachments: vec![],
            created_at: SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(1_700_000_000_123),
            status: DeliveryStatus::Accepted,
            client_msg_id: None,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"created_at\":\"2023-11-14T22:13:20.123Z\""));
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}

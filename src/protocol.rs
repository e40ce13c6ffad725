//! Serde types of the wire protocol (HTTP and WebSocket JSON) as the broker
//! builds and reads them. (Tests and the load harness are clients: they speak
//! the JSON of `docs/protocol.md` on their own, as any client would.)
//!
//! Inbound commands are typed enums parsed once at the socket edge; outbound
//! events are the [`Event`] enum (`event.rs`), encoded to JSON exactly once
//! (see [`Frame`]) so the same bytes go to every recipient.

pub mod event;
mod hot_json;
#[cfg(test)]
pub(crate) mod samples;
mod stats;

pub use event::{Event, RescindReason, SupervisorAction};
pub use stats::{AgentCounts, QueueStats, QueueToday};

use std::borrow::Cow;
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

impl AgentCommand {
    /// Parse a desk's command. The one sent per chat message, `send`, is read
    /// straight into its fields; serde's internally tagged enums first buffer
    /// every field into a tree of their own to find `type`, which cost more
    /// than the rest of the command's handling. Anything else, or a `send`
    /// that does not read that way, goes through the enum, whose errors are
    /// the ones documented.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Send<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            conversation_id: String,
            #[serde(default)]
            text: String,
            #[serde(default)]
            attachments: Vec<String>,
            #[serde(default)]
            client_msg_id: Option<String>,
            #[serde(default)]
            canned_id: Option<String>,
            #[serde(default, rename = "ref")]
            reference: Option<String>,
        }
        match serde_json::from_str::<Send>(text) {
            Ok(s) if s.kind == "send" => Ok(AgentCommand::Send {
                conversation_id: s.conversation_id,
                text: s.text,
                attachments: s.attachments,
                client_msg_id: s.client_msg_id,
                canned_id: s.canned_id,
                reference: s.reference,
            }),
            _ => serde_json::from_str(text),
        }
    }
}

impl CustomerCommand {
    /// Parse a widget's command; `message` is read straight into its fields
    /// (see [`AgentCommand::parse`]).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Message<'a> {
            #[serde(rename = "type", borrow)]
            kind: Cow<'a, str>,
            #[serde(default)]
            text: String,
            #[serde(default)]
            attachments: Vec<String>,
            #[serde(default)]
            client_msg_id: Option<String>,
            #[serde(default, rename = "ref")]
            reference: Option<String>,
        }
        match serde_json::from_str::<Message>(text) {
            Ok(m) if m.kind == "message" => Ok(CustomerCommand::Message {
                text: m.text,
                attachments: m.attachments,
                client_msg_id: m.client_msg_id,
                reference: m.reference,
            }),
            _ => serde_json::from_str(text),
        }
    }
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
    // Room for a `message` event at once: growing the buffer 128 → 256 → 512
    // as the encoder goes was a realloc chain per frame.
    let mut out = Vec::with_capacity(FRAME_CAPACITY);
    // Serializing our own plain structs cannot fail (no maps with non-string
    // keys, no failing Serialize impls); fall back to an error frame regardless.
    let encoded = serde_json::to_writer(&mut out, value)
        .map_err(|e| e.to_string())
        .and_then(|()| String::from_utf8(out).map_err(|e| e.to_string()));
    match encoded {
        Ok(s) => ByteString::from(s),
        Err(e) => ByteString::from(format!(
            r#"{{"type":"error","code":"internal","message":"encode failed: {e}","ref":null}}"#
        )),
    }
}

/// The buffer a frame is encoded into starts this large: a chat `message`
/// event with a short text fits.
const FRAME_CAPACITY: usize = 512;

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
        let mut buf = [0u8; MILLIS_LEN];
        match format_millis(*t, &mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`
    pub(super) const MILLIS_LEN: usize = 24;

    /// A time as `YYYY-MM-DDTHH:MM:SS.mmmZ`, written without the formatting
    /// machinery: every message event carries one, and `collect_str` with
    /// humantime's `Display` cost more than the rest of the event's fields.
    /// None outside 1970..=9999 (those go through humantime).
    pub(super) fn format_millis(t: SystemTime, buf: &mut [u8; MILLIS_LEN]) -> Option<&str> {
        let since = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        let secs = since.as_secs();
        let days = secs / 86_400;
        if days >= 2_932_897 {
            return None; // 10000-01-01 and after
        }
        let (year, month, day) = civil_from_days(days);
        let rem = secs % 86_400;
        let fields = [
            (0, 4, u64::from(year)),
            (5, 2, u64::from(month)),
            (8, 2, u64::from(day)),
            (11, 2, rem / 3_600),
            (14, 2, rem / 60 % 60),
            (17, 2, rem % 60),
            (20, 3, u64::from(since.subsec_millis())),
        ];
        *buf = *b"0000-00-00T00:00:00.000Z";
        for (at, width, mut value) in fields {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        std::str::from_utf8(buf).ok()
    }

    /// The proleptic Gregorian date of a day count since 1970-01-01
    /// (days ≥ 0), by eras of 400 years.
    fn civil_from_days(days: u64) -> (u32, u32, u32) {
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400) as u32 + u32::from(month <= 2);
        (year, month, day)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }

    /// Same for `Option<SystemTime>` (null when absent).
    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        /// Written as an option (`serialize_some`), which JSON writes as the
        /// bare string and a format without field types (the codec between
        /// nodes) needs to read it back.
        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            struct At<'a>(&'a SystemTime);
            impl Serialize for At<'_> {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    super::serialize(self.0, s)
                }
            }
            match t {
                Some(t) => s.serialize_some(&At(t)),
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

    /// An optional time is the bare string (or null) in JSON, and reads
    /// back from the codec between nodes, which needs to be told it is an
    /// option.
    #[test]
    fn an_optional_time_is_a_string_in_json_and_crosses_the_codec() {
        #[derive(Serialize, Deserialize)]
        struct Stamp {
            #[serde(with = "rfc3339::option")]
            at: Option<SystemTime>,
            after: u8,
        }
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_417_600_123);
        let json = serde_json::to_value(Stamp {
            at: Some(at),
            after: 1,
        })
        .expect("json");
        assert_eq!(json["at"], "2025-11-29T12:00:00.123Z");
        let none = serde_json::to_value(Stamp { at: None, after: 1 }).expect("json");
        assert!(none["at"].is_null());
        for at in [Some(at), None] {
            crate::codec::assert_crosses(&Stamp { at, after: 7 });
            let bytes = crate::codec::encode(&Stamp { at, after: 7 }).expect("encode");
            let back: Stamp = crate::codec::decode(&bytes).expect("decode");
            assert_eq!((back.at, back.after), (at, 7));
        }
    }

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
    fn the_fast_parse_reads_what_the_enum_reads_and_fails_as_it_fails() {
        let agent = [
            r#"{"type":"send","conversation_id":"cv_1","text":"hi","ref":"r1"}"#,
            r#"{"conversation_id":"cv_1","client_msg_id":"c1","type":"send","attachments":["f_1"]}"#,
            r#"{"type":"send","conversation_id":"cv_1","canned_id":"greet","extra":1}"#,
            r#"{"type":"s\u0065nd","conversation_id":"cv_1","text":"esc\"aped"}"#,
            r#"{"type":"send","text":"no conversation"}"#,
            r#"{"type":"send","conversation_id":7}"#,
            r#"{"type":"send","conversation_id":"cv_1","text":"a","text":"b"}"#,
            r#"{"type":"accept","task_id":"t_1"}"#,
            r#"{"type":"dance"}"#,
            r#"{"conversation_id":"cv_1"}"#,
            r#"not json"#,
        ];
        for text in agent {
            let fast = AgentCommand::parse(text).map(|c| format!("{c:?}"));
            let slow = serde_json::from_str::<AgentCommand>(text).map(|c| format!("{c:?}"));
            assert_eq!(
                fast.map_err(|e| e.to_string()),
                slow.map_err(|e| e.to_string()),
                "{text}"
            );
        }
        let customer = [
            r#"{"type":"message","text":"hi","client_msg_id":"c1","ref":"r"}"#,
            r#"{"text":"type last","type":"message"}"#,
            r#"{"type":"message","attachments":"f_1"}"#,
            r#"{"type":"typing"}"#,
            r#"{"type":"leave","ref":"x"}"#,
            r#"{"type":"shout"}"#,
            r#"[]"#,
        ];
        for text in customer {
            let fast = CustomerCommand::parse(text).map(|c| format!("{c:?}"));
            let slow = serde_json::from_str::<CustomerCommand>(text).map(|c| format!("{c:?}"));
            assert_eq!(
                fast.map_err(|e| e.to_string()),
                slow.map_err(|e| e.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn times_are_written_as_humantime_writes_them() {
        use std::time::Duration;
        let mut buf = [0u8; 24];
        let mut check = |ms: u64| {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            let ours = rfc3339::format_millis(t, &mut buf).map(str::to_owned);
            assert_eq!(
                ours.as_deref(),
                Some(humantime::format_rfc3339_millis(t).to_string().as_str()),
                "{ms} ms"
            );
        };
        // Epoch, leap days, century and 400-year rules, ends of years, the
        // last millisecond of 9999.
        for ms in [
            0,
            1,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            951_868_799_999,   // 2000-02-29T23:59:59.999
            4_107_542_400_000, // 2100-03-01
            1_700_000_000_123,
            253_402_300_799_999,
        ] {
            check(ms);
        }
        // A spread of times from 1970 to 9999.
        let mut ms: u64 = 12_345;
        while ms < 253_402_300_799_999 {
            check(ms);
            ms = ms * 3 / 2 + 86_399_997;
        }
        let after = SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_800_000);
        assert_eq!(rfc3339::format_millis(after, &mut buf), None);
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

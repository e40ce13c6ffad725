//! Every frame the broker sends to a client: one enum, tagged on `type`, one
//! variant per event of `docs/protocol.md`. Actors build an [`Event`] and
//! encode it once with [`Event::frame`]; the in-process simulated agents read
//! the same enum back. The two events of every chat message are written by
//! hand for speed, `message` and `ack` ([`Event::message_frame`],
//! [`Event::ack_frame`], `hot_json.rs`), and tested byte for byte against
//! this enum's encoding, so the wire still has one source.
//!
//! Large parts (a message, the history, a task) are borrowed where the sender
//! has them, so building an event copies no text; decoding yields owned
//! values.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{
    rfc3339, Activity, AgentView, ChannelKind, DeliveryStatus, Frame, Id, Message, QueueStats,
    TaskState, TaskSummary, TaskView, Transfer, TransferTarget,
};

/// Why a task left an agent before completion (the `task.rescinded` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RescindReason {
    Timeout,
    CustomerLeft,
    Reassigned,
    /// A warm transfer offered to this agent was withdrawn (its sender
    /// canceled it, or the conversation ended first).
    TransferCanceled,
}

impl RescindReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RescindReason::Timeout => "timeout",
            RescindReason::CustomerLeft => "customer_left",
            RescindReason::Reassigned => "reassigned",
            RescindReason::TransferCanceled => "transfer_canceled",
        }
    }
}

/// Why a warm transfer failed (`transfer.failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferFailure {
    /// The target rejected the offer.
    Rejected,
    /// The target let the offer time out.
    Timeout,
    /// The sender canceled it (`transfer.cancel`).
    Canceled,
    /// The conversation ended first (`end`, or the customer left).
    Ended,
    /// The target went offline or disconnected.
    Unavailable,
}

/// The agent named in `agent.joined`: customers see only the name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentName<'a> {
    pub name: Cow<'a, str>,
}

/// What the agent's `conversation.ended` adds: the task now in wrap-up, and
/// the `ref` of the `end` that ended it (`null` when the customer did).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedTask<'a> {
    pub task_id: Id,
    #[serde(rename = "ref", default)]
    pub reference: Option<Cow<'a, str>>,
}

/// What a supervisor did (the `action` of `supervisor.action`), with what it
/// acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action")]
pub enum SupervisorAction {
    /// `POST /v1/tasks/{id}/complete`.
    #[serde(rename = "task.complete")]
    CompleteTask {
        task_id: Id,
        conversation_id: Id,
        disposition: String,
    },
    /// `POST /v1/tasks/{id}/transfer`: a cold transfer, with its note.
    #[serde(rename = "task.transfer")]
    TransferTask {
        task_id: Id,
        conversation_id: Id,
        to: TransferTarget,
        note: String,
    },
    /// `PATCH /v1/agents/{id}` with `activity`.
    #[serde(rename = "agent.activity")]
    SetActivity { agent_id: Id, activity: Activity },
    /// `PATCH /v1/agents/{id}` with `capacity`.
    #[serde(rename = "agent.capacity")]
    SetCapacity {
        agent_id: Id,
        capacity: super::PerChannel,
    },
    /// `monitor` on the supervisor socket.
    #[serde(rename = "conversation.monitor")]
    Monitor { conversation_id: Id },
    /// `unmonitor` on the supervisor socket (or its socket closing).
    #[serde(rename = "conversation.unmonitor")]
    Unmonitor { conversation_id: Id },
}

impl SupervisorAction {
    /// What the action is about, as the webhooks order it: the
    /// conversation (task and monitor actions, in line with that
    /// conversation's other events) or the agent.
    pub fn subject(&self) -> &Id {
        match self {
            SupervisorAction::CompleteTask {
                conversation_id, ..
            }
            | SupervisorAction::TransferTask {
                conversation_id, ..
            }
            | SupervisorAction::Monitor { conversation_id }
            | SupervisorAction::Unmonitor { conversation_id } => conversation_id,
            SupervisorAction::SetActivity { agent_id, .. }
            | SupervisorAction::SetCapacity { agent_id, .. } => agent_id,
        }
    }
}

/// A client's `ref`, echoed as given (`null` when the command had none).
type Ref<'a> = Option<Cow<'a, str>>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event<'a> {
    // -- agent desktop --------------------------------------------------
    /// On connect: the agent, its activity and its open tasks.
    #[serde(rename = "hello")]
    Hello {
        agent: Cow<'a, AgentView>,
        activity: Activity,
        tasks: Vec<TaskView>,
    },
    #[serde(rename = "task.offered")]
    TaskOffered {
        task: Cow<'a, TaskView>,
        #[serde(with = "rfc3339")]
        expires_at: SystemTime,
        /// The router's offer number: one counter for every offer it makes,
        /// from 1 at start, so it orders offers as the router made them
        /// whatever order desks receive them in.
        offer: u64,
        /// Set when the offer is a transfer: who sent it, how, the note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transfer: Option<Cow<'a, Transfer>>,
    },
    /// The agent no longer holds the task: it was transferred (at once for
    /// a cold transfer, on the target's accept for a warm one).
    #[serde(rename = "task.transferred")]
    TaskTransferred {
        task_id: Id,
        conversation_id: Id,
        to: TransferTarget,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },
    /// A warm transfer did not happen; the agent keeps the task.
    #[serde(rename = "transfer.failed")]
    TransferFailed {
        task_id: Id,
        reason: TransferFailure,
    },
    /// The task is parked: the agent no longer holds it.
    #[serde(rename = "task.parked")]
    TaskParked {
        task_id: Id,
        conversation_id: Id,
        #[serde(with = "rfc3339::option", default)]
        until: Option<SystemTime>,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },
    #[serde(rename = "task.rescinded")]
    TaskRescinded { task_id: Id, reason: RescindReason },
    /// The broker changed the agent's activity (`not_responding` after
    /// missed offers: `reason` is `missed_offers`).
    #[serde(rename = "activity.changed")]
    ActivityChanged {
        activity: Activity,
        reason: Cow<'a, str>,
    },
    /// After accept (and on a reconnect's resync): the task and its history.
    #[serde(rename = "task.assigned")]
    TaskAssigned {
        task: Cow<'a, TaskView>,
        /// The newest messages, at most `history_replay` and
        /// `history_frame_bytes` of them, oldest first.
        history: Cow<'a, [Message]>,
        /// Older messages exist than `history` holds: read them with
        /// `GET /v1/conversations/{id}/messages?before_seq=`.
        #[serde(default)]
        history_has_earlier: bool,
        /// A warm transfer this agent started that its target has not
        /// answered yet (the agent still holds the task and may cancel
        /// it): set on a reconnect's resync, so a reloaded desk knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending_transfer: Option<Cow<'a, Transfer>>,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },
    #[serde(rename = "message.status")]
    MessageStatus {
        conversation_id: Id,
        message_id: Cow<'a, str>,
        status: DeliveryStatus,
        error: Option<Cow<'a, str>>,
    },
    #[serde(rename = "task.completed")]
    TaskCompleted {
        task_id: Id,
        conversation_id: Id,
        disposition: Cow<'a, str>,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },
    /// A command's success, for commands that answer nothing else.
    #[serde(rename = "ok")]
    Ok {
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },

    // -- both sides of a conversation ------------------------------------
    /// A new message in the conversation (to the customer, and to the agent
    /// with its own replies echoed carrying the send's `ref`).
    #[serde(rename = "message")]
    Message {
        conversation_id: Id,
        message: Cow<'a, Message>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Ref<'a>,
    },
    #[serde(rename = "typing")]
    Typing { conversation_id: Id },
    /// The chat ended. The agent's carries its task and the `end`'s `ref`;
    /// the customer's neither.
    #[serde(rename = "conversation.ended")]
    ConversationEnded {
        conversation_id: Id,
        #[serde(flatten)]
        task: Option<EndedTask<'a>>,
        /// Set when the broker ended it: `inactivity`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Cow<'a, str>>,
    },
    #[serde(rename = "error")]
    Error {
        code: Cow<'a, str>,
        message: Cow<'a, str>,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },

    // -- webchat customer --------------------------------------------------
    /// On connect: the session's current (or last) conversation, if any.
    #[serde(rename = "history")]
    History {
        conversation_id: Option<Id>,
        ended: bool,
        /// The newest messages, as in `task.assigned`.
        messages: Cow<'a, [Message]>,
        /// Older messages exist: page back with `before_seq`.
        #[serde(default)]
        has_earlier: bool,
    },
    /// The broker holds the customer's message.
    #[serde(rename = "ack")]
    Ack {
        conversation_id: Id,
        client_msg_id: Option<Cow<'a, str>>,
        message_id: Cow<'a, str>,
        seq: u64,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },
    #[serde(rename = "agent.joined")]
    AgentJoined {
        conversation_id: Id,
        agent: AgentName<'a>,
    },

    // -- supervisors ---------------------------------------------------------
    #[serde(rename = "agent.state")]
    AgentState { agent: Cow<'a, AgentView> },
    #[serde(rename = "agent.removed")]
    AgentRemoved { agent_id: Id },
    /// Every queue's figures, when they changed (at most once a second).
    #[serde(rename = "stats")]
    Stats { queues: Cow<'a, [QueueStats]> },
    /// A task was created or moved. The flat fields predate `task`.
    #[serde(rename = "task.state")]
    TaskStateChanged {
        task_id: Id,
        conversation_id: Id,
        channel: ChannelKind,
        state: TaskState,
        agent_id: Option<Id>,
        task: TaskSummary,
    },
    /// A supervisor acted: who (`by`), what and on what, and when.
    #[serde(rename = "supervisor.action")]
    SupervisorAction {
        by: Cow<'a, str>,
        #[serde(flatten)]
        action: SupervisorAction,
        #[serde(with = "rfc3339")]
        at: SystemTime,
    },
    /// The answer to `monitor`: the conversation's newest messages (as a
    /// desk's history replay); its `message` events follow.
    #[serde(rename = "monitoring")]
    Monitoring {
        conversation_id: Id,
        messages: Cow<'a, [Message]>,
        has_earlier: bool,
        #[serde(rename = "ref", default)]
        reference: Ref<'a>,
    },
}

impl Event<'_> {
    /// Encode once; every recipient shares the bytes.
    pub fn frame(&self) -> Frame {
        super::frame(self)
    }

    /// A `message` event twice: as everyone gets it (no `ref`) and as the
    /// sender gets it, with its command's `ref`. Encoded once: the `ref`,
    /// the event's last field, is written onto the end of the first.
    pub fn message_frames(
        conversation_id: &Id,
        message: &Message,
        reference: Option<&str>,
    ) -> (Frame, Frame) {
        let plain = Event::message_frame(conversation_id, message, None);
        let Some(r) = reference else {
            return (plain.clone(), plain);
        };
        let spliced = splice_ref(&plain, r).map(Frame::from);
        let with_ref = spliced.unwrap_or_else(|| {
            Event::Message {
                conversation_id: conversation_id.clone(),
                message: Cow::Borrowed(message),
                reference: Some(Cow::Borrowed(r)),
            }
            .frame()
        });
        (plain, with_ref)
    }

    /// A `message` event, as [`Event::frame`] encodes it but written by
    /// hand (`hot_json.rs`: the event of every chat message).
    pub fn message_frame(
        conversation_id: &Id,
        message: &Message,
        reference: Option<&str>,
    ) -> Frame {
        match super::hot_json::message_event(conversation_id, message, reference) {
            Some(json) => Frame::from(json),
            None => Event::Message {
                conversation_id: conversation_id.clone(),
                message: Cow::Borrowed(message),
                reference: reference.map(Cow::Borrowed),
            }
            .frame(),
        }
    }

    /// The `ack` of a stored `message`, as [`Event::frame`] encodes it but
    /// written by hand (`hot_json.rs`: one for every customer message).
    pub fn ack_frame(conversation_id: &Id, message: &Message, reference: Option<&str>) -> Frame {
        Frame::from(super::hot_json::ack_event(
            conversation_id,
            message.client_msg_id.as_deref(),
            &message.id,
            message.seq,
            reference,
        ))
    }

    /// Decode a frame the broker wrote.
    pub fn parse(text: &str) -> Result<Event<'static>, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A `message` event's frame without a `ref`, with `r` added as its last
/// field (where serde writes it); None if the frame is not an object.
fn splice_ref(plain: &str, r: &str) -> Option<String> {
    let head = plain.strip_suffix('}')?;
    let r = serde_json::to_string(r).ok()?;
    let mut s = String::with_capacity(head.len() + r.len() + 8);
    s.push_str(head);
    s.push_str(r#","ref":"#);
    s.push_str(&r);
    s.push('}');
    Some(s)
}

/// A borrowed `ref` from a command's optional one.
pub fn reference(r: Option<&str>) -> Ref<'_> {
    r.map(Cow::Borrowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::samples::{message, task_view as task, transfer};
    use crate::protocol::{Customer, PerChannel};
    use serde_json::{json, Value};

    #[test]
    fn a_message_with_ref_is_the_message_encoded_with_it() {
        let m = message();
        let id: Id = "cv_1".into();
        for r in [None, Some("r-1"), Some("quote \" back \\ slash \n é")] {
            let (plain, with_ref) = Event::message_frames(&id, &m, r);
            let full = |reference: Option<&str>| {
                Event::Message {
                    conversation_id: id.clone(),
                    message: Cow::Borrowed(&m),
                    reference: reference.map(Cow::Borrowed),
                }
                .frame()
            };
            assert_eq!(plain, full(None));
            assert_eq!(with_ref, full(r), "{r:?}");
            // By the splice, not by encoding it again.
            if let Some(r) = r {
                assert_eq!(splice_ref(&plain, r).as_deref(), Some(&*full(Some(r))));
            }
        }
    }

    fn agent() -> AgentView {
        AgentView {
            id: "alice".into(),
            name: "Alice".into(),
            capacity: PerChannel::default(),
            skills: vec![],
            activity: Activity::Available,
            connected: true,
            load: PerChannel::default(),
        }
    }

    /// One of every variant.
    fn every_event() -> Vec<Event<'static>> {
        let summary = TaskSummary {
            id: "tk_1".into(),
            conversation_id: "cv_1".into(),
            channel: ChannelKind::Webchat,
            customer: Customer {
                address: "wc_1".into(),
                name: "Dana".into(),
            },
            queue: "default".into(),
            priority: 0,
            state: TaskState::Queued,
            agent_id: None,
            created_at: crate::protocol::now(),
            waiting_since: crate::protocol::now(),
            reason: None,
        };
        vec![
            Event::Hello {
                agent: Cow::Owned(agent()),
                activity: Activity::Offline,
                tasks: vec![task()],
            },
            Event::TaskOffered {
                task: Cow::Owned(task()),
                expires_at: crate::protocol::now(),
                offer: 1,
                transfer: None,
            },
            Event::TaskOffered {
                task: Cow::Owned(task()),
                expires_at: crate::protocol::now(),
                offer: 2,
                transfer: Some(Cow::Owned(transfer())),
            },
            Event::TaskTransferred {
                task_id: "tk_1".into(),
                conversation_id: "cv_1".into(),
                to: TransferTarget::Agent("bob".into()),
                reference: Some("t1".into()),
            },
            Event::TransferFailed {
                task_id: "tk_1".into(),
                reason: TransferFailure::Timeout,
            },
            Event::TaskParked {
                task_id: "tk_1".into(),
                conversation_id: "cv_1".into(),
                until: Some(crate::protocol::now()),
                reference: None,
            },
            Event::TaskRescinded {
                task_id: "tk_1".into(),
                reason: RescindReason::CustomerLeft,
            },
            Event::ActivityChanged {
                activity: Activity::NotResponding,
                reason: "missed_offers".into(),
            },
            Event::TaskAssigned {
                task: Cow::Owned(task()),
                history: Cow::Owned(vec![message()]),
                history_has_earlier: true,
                pending_transfer: Some(Cow::Owned(Transfer {
                    from: "alice".into(),
                    to: TransferTarget::Agent("bob".into()),
                    mode: crate::protocol::TransferMode::Warm,
                    note: "consult".into(),
                    at: crate::protocol::now(),
                })),
                reference: Some("r1".into()),
            },
            Event::MessageStatus {
                conversation_id: "cv_1".into(),
                message_id: "m_1".into(),
                status: DeliveryStatus::Failed,
                error: Some("unreachable".into()),
            },
            Event::TaskCompleted {
                task_id: "tk_1".into(),
                conversation_id: "cv_1".into(),
                disposition: "resolved".into(),
                reference: None,
            },
            Event::Ok { reference: None },
            Event::Message {
                conversation_id: "cv_1".into(),
                message: Cow::Owned(message()),
                reference: None,
            },
            Event::Typing {
                conversation_id: "cv_1".into(),
            },
            Event::ConversationEnded {
                conversation_id: "cv_1".into(),
                task: Some(EndedTask {
                    task_id: "tk_1".into(),
                    reference: Some("e1".into()),
                }),
                reason: None,
            },
            Event::ConversationEnded {
                conversation_id: "cv_1".into(),
                task: Some(EndedTask {
                    task_id: "tk_1".into(),
                    reference: None,
                }),
                reason: None,
            },
            Event::ConversationEnded {
                conversation_id: "cv_1".into(),
                task: None,
                reason: None,
            },
            Event::ConversationEnded {
                conversation_id: "cv_1".into(),
                task: Some(EndedTask {
                    task_id: "tk_1".into(),
                    reference: None,
                }),
                reason: Some("inactivity".into()),
            },
            Event::Error {
                code: "bad_request".into(),
                message: "no".into(),
                reference: None,
            },
            Event::History {
                conversation_id: None,
                ended: false,
                messages: Cow::Owned(vec![]),
                has_earlier: false,
            },
            Event::Ack {
                conversation_id: "cv_1".into(),
                client_msg_id: Some("c1".into()),
                message_id: "m_1".into(),
                seq: 1,
                reference: None,
            },
            Event::AgentJoined {
                conversation_id: "cv_1".into(),
                agent: AgentName {
                    name: "Alice".into(),
                },
            },
            Event::AgentState {
                agent: Cow::Owned(agent()),
            },
            Event::AgentRemoved {
                agent_id: "alice".into(),
            },
            Event::Stats {
                queues: Cow::Owned(vec![crate::protocol::QueueStats {
                    id: "billing".into(),
                    waiting: 2,
                    longest_wait_ms: 61_000,
                    offered: 1,
                    capacity_in_use: 3,
                    agents: crate::protocol::AgentCounts {
                        available: 1,
                        busy: 2,
                        ..Default::default()
                    },
                    today: crate::protocol::QueueToday {
                        created: 7,
                        sla_met_pct: Some(50.0),
                        avg_wait_ms: Some(1_500),
                        ..Default::default()
                    },
                }]),
            },
            Event::TaskStateChanged {
                task_id: "tk_1".into(),
                conversation_id: "cv_1".into(),
                channel: ChannelKind::Webchat,
                state: TaskState::Queued,
                agent_id: None,
                task: summary,
            },
            Event::SupervisorAction {
                by: "admin".into(),
                action: SupervisorAction::CompleteTask {
                    task_id: "tk_1".into(),
                    conversation_id: "cv_1".into(),
                    disposition: "spam".into(),
                },
                at: crate::protocol::now(),
            },
            Event::SupervisorAction {
                by: "admin".into(),
                action: SupervisorAction::TransferTask {
                    task_id: "tk_1".into(),
                    conversation_id: "cv_1".into(),
                    to: TransferTarget::Queue("billing".into()),
                    note: "VIP".into(),
                },
                at: crate::protocol::now(),
            },
            Event::SupervisorAction {
                by: "admin".into(),
                action: SupervisorAction::SetActivity {
                    agent_id: "alice".into(),
                    activity: Activity::Offline,
                },
                at: crate::protocol::now(),
            },
            Event::SupervisorAction {
                by: "admin".into(),
                action: SupervisorAction::SetCapacity {
                    agent_id: "alice".into(),
                    capacity: PerChannel::default(),
                },
                at: crate::protocol::now(),
            },
            Event::SupervisorAction {
                by: "admin".into(),
                action: SupervisorAction::Monitor {
                    conversation_id: "cv_1".into(),
                },
                at: crate::protocol::now(),
            },
            Event::Monitoring {
                conversation_id: "cv_1".into(),
                messages: Cow::Owned(vec![message()]),
                has_earlier: false,
                reference: Some("m1".into()),
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_frame() {
        for event in every_event() {
            let frame = event.frame();
            let back = Event::parse(&frame).unwrap_or_else(|e| panic!("{frame}: {e}"));
            assert_eq!(back, event, "{frame}");
        }
    }

    #[test]
    fn frames_keep_the_documented_shape() {
        let v: Value = serde_json::from_str(
            &Event::TaskRescinded {
                task_id: "tk_1".into(),
                reason: RescindReason::CustomerLeft,
            }
            .frame(),
        )
        .expect("json");
        assert_eq!(
            v,
            json!({"type": "task.rescinded", "task_id": "tk_1", "reason": "customer_left"})
        );
        // Errors and accepts always carry `ref`, null when the command had none.
        let v: Value = serde_json::from_str(
            &Event::Error {
                code: "bad_request".into(),
                message: "no".into(),
                reference: None,
            }
            .frame(),
        )
        .expect("json");
        assert_eq!(
            v,
            json!({"type": "error", "code": "bad_request", "message": "no", "ref": null})
        );
        // The customer's `conversation.ended` names only the conversation.
        let v: Value = serde_json::from_str(
            &Event::ConversationEnded {
                conversation_id: "cv_1".into(),
                task: None,
                reason: None,
            }
            .frame(),
        )
        .expect("json");
        assert_eq!(
            v,
            json!({"type": "conversation.ended", "conversation_id": "cv_1"})
        );
        // The agent's always says which `end` it answers, null if none.
        let v: Value = serde_json::from_str(
            &Event::ConversationEnded {
                conversation_id: "cv_1".into(),
                task: Some(EndedTask {
                    task_id: "tk_1".into(),
                    reference: None,
                }),
                reason: None,
            }
            .frame(),
        )
        .expect("json");
        assert_eq!(
            v,
            json!({"type": "conversation.ended", "conversation_id": "cv_1",
                   "task_id": "tk_1", "ref": null})
        );
    }
}

//! One actor per conversation: it owns the ordered history (gap-free `seq`),
//! the task's state machine, disposition and notes, and the wrap-up timer, and
//! fans every new message out to the assigned agent and to the customer's
//! channel.
//!
//! It is the serialisation point of a chat: a customer message goes
//! channel → conversation → agent; a reply goes agent → conversation → channel.
//! Each message is encoded to JSON once and the same bytes go to every recipient.
//!
//! Every state change is a [`ConversationEvent`] applied by
//! [`ConversationState::apply`], the one place the state changes (ready for the
//! journal); both live in `state.rs`, apart from the actor. The messages it
//! handles, by sender, each in its counterpart's file with its handler:
//! - the customer's channel (`customer.rs`): [`CustomerMessage`] from webchat
//!   and provider channels; [`CustomerTyping`], [`CustomerLeft`],
//!   [`CustomerAbandoned`] and [`SendHistory`] from webchat;
//! - the router (`routing.rs`): [`Reserve`], [`Assign`], [`Requeued`],
//!   [`RouterCancel`] (past the queue's maximum wait, or closed),
//!   [`RouterNotice`] (the closed message of a queue outside its hours);
//!   about transfers and parking (`transfer.rs`): [`TransferredAway`],
//!   [`ConsultOffer`], [`TransferAccept`], [`TransferNotMade`],
//!   [`ParkedAway`], [`BackFromPark`];
//! - the agent (`agent.rs`): [`AgentSend`], [`AgentTyping`], [`AgentEnd`],
//!   [`AgentComplete`], [`Resync`];
//! - provider channels, on delivery (`delivery.rs`): [`DeliveryUpdate`],
//!   [`ReadUpTo`];
//! - HTTP routes (`queries.rs`): [`GetSnapshot`], [`GetMessages`]; and
//!   (`canned.rs`) [`GetCannedContext`], what canned responses are filled
//!   with there, which `AgentSend` by `canned_id` uses too;
//! - supervisors (`supervision.rs`): [`SupervisorComplete`] (HTTP),
//!   [`Monitor`] and [`Unmonitor`] (their socket).
//!
//! It sends `ToCustomer` to its channel, `ToAgent` to its agent, and to the
//! router `EnqueueTask` or `BindOutbound` (as it opens), `TaskWrapping`,
//! `TaskClosed`, `TransferDone` and `UnparkTask`; supervisors get
//! `task.state` on every move of the task, and webhook endpoints the
//! `task.*`, `message.*` and `conversation.ended` events
//! (`Conversation::hook`, from `apply` and the routing handlers).
//!
//! Inactivity: while the task is assigned and its queue has `inactivity`
//! settings, no customer message for `warn_after` sends the customer the
//! warning (a `system` message, sent out on provider channels as the
//! queue's other messages are), and for `close_after` ends the
//! conversation with reason `inactivity` (both counted from the customer's
//! last message or the assignment, whichever is later).
//!
//! This file is the actor itself: opening, the first act, and what every
//! counterpart's handlers share — applying and publishing, frames, the sends to
//! customer and agent, appending a message, and ending, completing and
//! forgetting the conversation (both the customer and the agent can end it).

mod agent;
mod canned;
mod customer;
mod delivery;
mod queries;
mod resend;
mod restore;
mod routing;
mod state;
mod supervision;
mod transfer;

pub use agent::{AgentComplete, AgentEnd, AgentSend, AgentTyping, Resync};
pub use canned::{usable_in, CannedContext, GetCannedContext};
pub use customer::{CustomerAbandoned, CustomerLeft, CustomerMessage, CustomerTyping, SendHistory};
pub use delivery::{DeliveryUpdate, ReadUpTo};
pub use queries::{ConversationSnapshot, ConversationStatus, GetMessages, GetSnapshot, TaskRef};
pub use restore::ResumeInactivity;
pub use routing::{Assign, RequeueCause, Requeued, Reserve, RouterCancel, RouterNotice};
pub use state::{ConversationEvent, ConversationState, PendingTransfer};
pub use supervision::{Monitor, SupervisorComplete, Unmonitor};
pub use transfer::{
    BackFromPark, ConsultOffer, ParkedAway, TransferAccept, TransferNotMade, TransferredAway,
};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use crate::agent::{Agent, AgentFrameKind, ToAgent};
use crate::attachments::Sender;
use crate::channel::{check_attachment, text_limit, CustomerEvent, Template, ToCustomer};
use crate::error::ApiError;
use crate::journal::record::{self, RecordRef};
use crate::metrics::Metrics;
use crate::protocol::event::{self, AgentName, EndedTask};
use crate::protocol::{
    AttachmentMeta, Author, ChannelKind, Customer, DeliveryStatus, Event, Frame, Id, Message,
    TaskState,
};
use crate::router::{BindOutbound, EnqueueTask, Outcome, RescindReason, TaskClosed, TaskWrapping};
use crate::webhooks::payload::{EndedData, MessageData, TaskData};
use crate::webhooks::EventKind;
use crate::wiring::Broker;
use resend::ResendIndex;

/// Check a message's text and attachments against the limits and the channel's
/// rules before anything is stored or sent. `sender` may name only files it
/// uploaded or that `carried` says the conversation already holds (see
/// [`AttachmentStore::resolve_for`](crate::attachments::AttachmentStore::resolve_for)).
pub fn validate_content(
    broker: &Broker,
    channel: ChannelKind,
    text: &str,
    attachments: &[String],
    sender: Sender<'_>,
    carried: &dyn Fn(&str) -> bool,
) -> Result<Vec<AttachmentMeta>, ApiError> {
    if let Some(Err(e)) = broker.journal.as_ref().map(crate::journal::Journal::health) {
        // Nothing is taken that could not be written down.
        return Err(ApiError::Unavailable(e.to_string()));
    }
    let max = text_limit(channel).map_or(broker.config.max_text, |l| l.min(broker.config.max_text));
    let chars = text.chars().count();
    if chars > max {
        return Err(ApiError::TextTooLong(format!(
            "text has {chars} characters; the limit on {} is {max}",
            channel.as_str()
        )));
    }
    if text.trim().is_empty() && attachments.is_empty() {
        return Err(ApiError::BadRequest(
            "a message needs text or at least one attachment".into(),
        ));
    }
    let files = broker
        .attachments
        .resolve_for(attachments, sender, carried)?;
    for f in &files {
        check_attachment(
            channel,
            &f.meta.content_type,
            f.meta.size,
            broker.config.max_upload,
        )?;
    }
    Ok(files.iter().map(|f| f.meta.clone()).collect())
}

pub use resend::RESEND_WINDOW;

/// How a conversation starts.
pub enum Opening {
    /// A customer wrote in: the task goes to the router.
    Inbound(CustomerMessage),
    /// An agent starts it: assigned to that agent at once (capacity already
    /// reserved with the router).
    Outbound {
        agent_id: Id,
        agent_name: String,
        text: String,
        attachments: Vec<AttachmentMeta>,
        client_msg_id: Option<String>,
        reference: Option<String>,
        template: Option<Template>,
        /// The queue it counts in.
        queue: String,
    },
}

/// What a channel needs to open a conversation.
pub struct OpenSpec {
    pub channel: ChannelKind,
    pub customer: Customer,
    pub business: Option<String>,
    pub skills: Vec<String>,
    /// The queue its task waits in (`default` if it names none that exists).
    pub queue: String,
    pub previous: Option<Id>,
    /// When the customer last wrote on this thread, if known.
    pub window_opened_at: Option<SystemTime>,
    pub channel_addr: Recipient<ToCustomer>,
    pub opening: Opening,
    /// For outbound: the task id the router already reserved capacity under.
    pub task_id: Option<Id>,
    /// The arbiter to run on (its channel's, to keep their messages on one
    /// thread); None: the next shard, round robin.
    pub home: Option<ArbiterHandle>,
}
/// The actor: its state, and the wiring around it (broker, channel, the
/// assigned agent's address, the wrap-up timer, the opening still to process).
pub struct Conversation {
    broker: Arc<Broker>,
    channel: Recipient<ToCustomer>,
    /// The customer's and business's addresses as ids, made once: every
    /// message to the channel names them.
    customer: Id,
    business: Option<Id>,
    state: ConversationState,
    agent: Option<Addr<Agent>>,
    wrapup: Option<SpawnHandle>,
    /// The task's queue's inactivity settings (from the router on
    /// assignment), and the running warn and close timers.
    inactivity: Option<crate::router::queue::Inactivity>,
    inactivity_timers: Vec<SpawnHandle>,
    /// Boxed: taken at start, so it should not keep its room in the actor.
    opening: Option<Box<Opening>>,
    /// Supervisor sockets streaming its messages (`supervision.rs`).
    monitors: Vec<crate::ws::SocketLink>,
    /// Restored from the journal waiting, unknown to the router: enqueue
    /// the task as it starts.
    enqueue_on_start: bool,
    /// Where a resent `client_msg_id` is looked up (`resend.rs`).
    resend: ResendIndex,
}

impl Conversation {
    /// Create the actor on a shard arbiter and register it. Returns at once; the
    /// opening message is processed as the actor's first act.
    pub fn open(broker: &Arc<Broker>, spec: OpenSpec) -> (Id, Addr<Conversation>) {
        let id = broker.ids.conversation();
        let task_id = spec.task_id.unwrap_or_else(|| broker.ids.task());
        let queue = match &spec.opening {
            Opening::Outbound { queue, .. } => queue.clone(),
            Opening::Inbound(_) => spec.queue,
        };
        let state = ConversationState {
            business: spec.business,
            skills: spec.skills,
            previous: spec.previous,
            last_customer_at: spec.window_opened_at,
            ..ConversationState::new(
                id.clone(),
                task_id.clone(),
                spec.channel,
                spec.customer,
                queue,
                crate::protocol::now(),
            )
        };
        record::write(
            broker.journal.as_ref(),
            RecordRef::ConversationOpened(&state),
        );
        broker.metrics.task_moved(None, TaskState::Queued);
        Metrics::bump(&broker.metrics.conversations_opened);
        let actor = Conversation {
            broker: broker.clone(),
            channel: spec.channel_addr,
            customer: state.customer.address.as_str().into(),
            business: state.business.as_deref().map(Id::from),
            state,
            agent: None,
            wrapup: None,
            inactivity: None,
            inactivity_timers: Vec::new(),
            opening: Some(Box::new(spec.opening)),
            monitors: Vec::new(),
            enqueue_on_start: false,
            resend: ResendIndex::default(),
        };
        // Registered before it runs: its first act queues the task, and the
        // agent who accepts must find it by id.
        let (addr, mailbox) = crate::shards::mailbox::<Conversation>();
        broker.register_conversation(id.clone(), task_id, addr.clone());
        match spec.home {
            Some(arbiter) => mailbox.run_on(&arbiter, actor),
            None => broker
                .shards
                .place(move |arbiter| mailbox.run_on(arbiter, actor)),
        }
        (id, addr)
    }

    fn apply(&mut self, event: ConversationEvent) {
        record::write(
            self.broker.journal.as_ref(),
            RecordRef::Conversation {
                id: &self.state.id,
                event: &event,
            },
        );
        let before = self.state.task_state;
        let was_ended = self.state.ended();
        let appended = matches!(event, ConversationEvent::MessageAppended(_));
        self.state.apply(event);
        let after = self.state.task_state;
        if before != after {
            self.broker.metrics.task_moved(Some(before), after);
            self.publish_task_state();
            self.hook_task_moved(after);
        }
        if appended {
            self.hook(EventKind::MessageCreated, || {
                let state = &self.state;
                MessageData {
                    conversation_id: &state.id,
                    task_id: &state.task_id,
                    channel: state.channel,
                    message: &state.messages[state.messages.len() - 1],
                }
            });
        }
        if !was_ended && self.state.ended() {
            self.hook(EventKind::ConversationEnded, || EndedData {
                conversation_id: &self.state.id,
                task_id: &self.state.task_id,
                channel: self.state.channel,
                agent_id: self.state.agent_id.as_ref(),
                ended_at: self.state.ended_at,
            });
        }
    }

    /// Hand a webhook event of this conversation to the endpoints that want
    /// it (nothing is built when none does). Keyed by the conversation: its
    /// events reach each endpoint in the order they are emitted here.
    fn hook<D: serde::Serialize>(&self, kind: EventKind, data: impl FnOnce() -> D) {
        self.broker.webhooks.emit(kind, &self.state.id, data);
    }

    /// A `task.*` webhook event: the task as it stands, and what `detail`
    /// adds.
    fn hook_task<'a>(&self, kind: EventKind, detail: impl FnOnce(&mut TaskData<'a>)) {
        self.hook(kind, || {
            let mut data = TaskData::new(self.state.task_summary());
            detail(&mut data);
            data
        });
    }

    /// The `task.*` webhook event of a move into `state` that says all it
    /// needs by itself. Offers and requeues are told by their handlers, which
    /// know the offer's deadline and why the task came back.
    fn hook_task_moved(&self, state: TaskState) {
        let agent_id = self.state.agent_id.as_deref();
        match state {
            TaskState::Assigned => {
                self.hook_task(EventKind::TaskAccepted, |d| d.agent_id = agent_id)
            }
            TaskState::Wrapping => {
                self.hook_task(EventKind::TaskWrapping, |d| d.agent_id = agent_id)
            }
            TaskState::Completed => self.hook_task(EventKind::TaskCompleted, |d| {
                d.agent_id = agent_id;
                d.disposition = self.state.disposition.as_deref();
                d.notes = self.state.notes.as_deref();
            }),
            TaskState::Canceled => self.hook_task(EventKind::TaskCanceled, |_| {}),
            // Transfers and parking are told by their handlers
            // (`task.transferred`, `task.parked`), which know who let go.
            TaskState::Queued | TaskState::Reserved | TaskState::Parked => {}
        }
    }

    /// Tell supervisors where the task stands (on creation and every move).
    fn publish_task_state(&self) {
        self.broker.publish(|| {
            let task = self.state.task_summary();
            Event::TaskStateChanged {
                task_id: task.id.clone(),
                conversation_id: task.conversation_id.clone(),
                channel: task.channel,
                state: task.state,
                agent_id: task.agent_id.clone(),
                task,
            }
        });
    }

    fn to_customer(&self, event: CustomerEvent) {
        self.channel.do_send(ToCustomer {
            customer: self.customer.clone(),
            business: self.business.clone(),
            conversation_id: self.state.id.clone(),
            event,
        });
    }

    fn to_agent(&self, agent: &Addr<Agent>, kind: AgentFrameKind, frame: Frame) {
        agent.do_send(ToAgent {
            conversation_id: self.state.id.clone(),
            task_id: self.state.task_id.clone(),
            kind,
            frame,
        });
    }

    /// The actor of agent `id`, found by its id: messages between actors
    /// name agents by id (so they can cross between nodes), and the registry
    /// is where an id becomes an address. `None`: the agent was removed.
    fn agent_named(&self, id: &str) -> Option<Addr<Agent>> {
        self.broker.agent_addr(id)
    }

    /// A frame to agent `id` (the sender of a command, the agent offered the
    /// task): found by its id, and dropped with the agent if it was removed.
    /// The holder's address is kept from its assignment, so its echoes cost
    /// no lookup (and no copy of an address: two allocations each).
    fn to_agent_named(&self, id: &str, kind: AgentFrameKind, frame: Frame) {
        match &self.agent {
            Some(holder) if self.state.holder().is_some_and(|h| &**h == id) => {
                self.to_agent(holder, kind, frame)
            }
            _ => {
                if let Some(agent) = self.agent_named(id) {
                    self.to_agent(&agent, kind, frame);
                }
            }
        }
    }

    /// The conversation is agent `id`'s now (assigned to it, moved to it,
    /// its desk back): its actor, found by id, is kept for the frames that
    /// follow, and gets `frame` first.
    fn held_by(&mut self, id: &str, kind: AgentFrameKind, frame: Frame) {
        self.agent = self.agent_named(id);
        if let Some(agent) = &self.agent {
            self.to_agent(agent, kind, frame);
        }
    }

    fn agent_error(&self, agent_id: &str, err: ApiError, reference: Option<&str>) {
        self.to_agent_named(agent_id, AgentFrameKind::Other, err.to_frame(reference));
    }

    /// Is `agent_id` the agent holding this conversation?
    fn check_agent(&self, agent_id: &Id) -> Result<(), ApiError> {
        if self.state.holder() == Some(agent_id) {
            Ok(())
        } else {
            Err(ApiError::NotYourTask(format!(
                "conversation {} is not assigned to you",
                self.state.id
            )))
        }
    }

    /// Whether a message of this conversation carries file `id` (anyone in
    /// the conversation may send it again).
    fn carries(&self, id: &str) -> bool {
        self.state
            .messages
            .iter()
            .any(|m| m.attachments.iter().any(|a| a.id == id))
    }

    /// Store a new message with the next `seq`; [`Conversation::last_message`]
    /// is it. (Moved into the state, not copied: the frames are made from the
    /// stored message.)
    fn append(
        &mut self,
        from: Author,
        text: String,
        attachments: Vec<AttachmentMeta>,
        client_msg_id: Option<String>,
    ) {
        for a in &attachments {
            self.broker.attachments.acquire(&a.id);
            if self.state.channel == ChannelKind::Webchat {
                if let Some(stored) = self.broker.attachments.get(&a.id) {
                    stored.grant(&self.customer);
                }
            }
        }
        let message = Message {
            id: self.broker.ids.message(),
            conversation_id: self.state.id.clone(),
            seq: self.state.next_seq(),
            from,
            agent_id: match from {
                Author::Agent => self.state.agent_id.clone(),
                _ => None,
            },
            text,
            attachments,
            created_at: crate::protocol::now(),
            status: DeliveryStatus::Accepted,
            client_msg_id,
        };
        self.apply(ConversationEvent::MessageAppended(message));
        self.show_monitors();
    }

    fn last_message(&self) -> &Message {
        // `append` pushed one: the history is not empty.
        &self.state.messages[self.state.messages.len() - 1]
    }

    fn message_frame(&self, message: &Message, reference: Option<&str>) -> Frame {
        Event::message_frame(&self.state.id, message, reference)
    }

    fn assigned_frame(&self, reference: Option<&str>) -> Frame {
        let (history, history_has_earlier) = self.replay();
        Event::TaskAssigned {
            task: Cow::Owned(self.state.task_view()),
            history: Cow::Borrowed(history),
            history_has_earlier,
            pending_transfer: self
                .state
                .pending_transfer
                .as_ref()
                .map(|p| Cow::Borrowed(&p.transfer)),
            reference: event::reference(reference),
        }
        .frame()
    }

    /// What a (re)connecting desk or widget is sent of the history: the
    /// newest messages, at most `history_replay` of them and
    /// `history_frame_bytes` of their JSON (always the newest one, whatever
    /// it weighs), and whether older ones exist. The rest is read page by
    /// page (`GET …/messages?before_seq=`), so a long conversation never
    /// becomes one huge frame.
    fn replay(&self) -> (&[Message], bool) {
        let config = &self.broker.config;
        let tail = replay_tail(
            &self.state.messages,
            config.history_replay,
            config.history_frame_bytes,
        );
        (tail, tail.len() < self.state.messages.len())
    }

    /// Room for one more message from the customer or the agent? At the cap,
    /// the first refusal adds the note that says so (a `system` message both
    /// sides see); every refusal answers `history_full`.
    fn history_room(&mut self, text: &str, attachments: &[AttachmentMeta]) -> Result<(), ApiError> {
        let config = &self.broker.config;
        let count = self.state.messages.len() + 1;
        let bytes = self.state.history_bytes + state::message_bytes(text, attachments);
        if !self.state.history_full
            && count <= config.max_history_messages
            && bytes <= config.max_history_bytes
        {
            return Ok(());
        }
        let limits = format!(
            "{} messages or {} of text",
            config.max_history_messages,
            bytesize::ByteSize(config.max_history_bytes)
        );
        if !self.state.history_full {
            self.apply(ConversationEvent::HistoryFull);
            let note = format!(
                "This conversation has reached its size limit ({limits}) and takes no more \
                 messages. End it; the customer's next message starts a new conversation."
            );
            self.append(Author::System, note, Vec::new(), None);
            let frame = self.message_frame(self.last_message(), None);
            if let Some(agent) = &self.agent {
                if self.state.task_state == TaskState::Assigned {
                    self.to_agent(agent, AgentFrameKind::Message, frame.clone());
                }
            }
            // A note for both sides of the chat, not sent out by providers.
            self.message_to_customer(frame, None, false);
        }
        Err(ApiError::HistoryFull(format!(
            "conversation {} is full ({limits}); it takes no more messages",
            self.state.id
        )))
    }

    /// `conversation.ended` as the customer gets it (no task, no `ref`).
    fn ended_frame(&self) -> Frame {
        self.ended_frame_for(None)
    }

    fn ended_frame_for(&self, reason: Option<&'static str>) -> Frame {
        Event::ConversationEnded {
            conversation_id: self.state.id.clone(),
            task: None,
            reason: reason.map(Cow::Borrowed),
        }
        .frame()
    }

    fn typing_frame(&self) -> Frame {
        Event::Typing {
            conversation_id: self.state.id.clone(),
        }
        .frame()
    }

    fn rescinded_frame(&self, reason: RescindReason) -> Frame {
        Event::TaskRescinded {
            task_id: self.state.task_id.clone(),
            reason,
        }
        .frame()
    }

    /// Hand the message just stored to the channel: webchat sockets show its
    /// frame (the customer's own too, for their other tabs); providers send
    /// it out when `send_out` (an agent's reply or a notice addressed to the
    /// customer, whose place in the outbound queue was taken before it was
    /// stored) and have nowhere to show the rest.
    fn message_to_customer(&self, frame: Frame, template: Option<Template>, send_out: bool) {
        if self.state.channel == ChannelKind::Webchat {
            self.to_customer(CustomerEvent::Broadcast(frame));
        } else if send_out {
            self.to_customer(CustomerEvent::Message {
                message: Box::new(self.last_message().clone()),
                frame,
                template,
                send_out,
            });
        }
    }

    /// End the chat (the agent's End Chat, or the customer leaving once
    /// assigned): the task goes to wrap-up, capacity still held, and the
    /// wrap-up timer completes it with the default disposition if the agent
    /// does not.
    fn end(&mut self, reference: Option<&str>, ctx: &mut Context<Self>) {
        self.end_for(reference, None, ctx);
    }

    /// [`Conversation::end`], saying why when the broker ended it
    /// (`inactivity`). A warm transfer still pending is canceled first (the
    /// holder gets `transfer.failed` with `ended`; the router withdraws the
    /// offer when it hears of the end).
    fn end_for(
        &mut self,
        reference: Option<&str>,
        reason: Option<&'static str>,
        ctx: &mut Context<Self>,
    ) {
        if self.state.pending_transfer.is_some() {
            self.transfer_failed(crate::protocol::event::TransferFailure::Ended);
        }
        self.stop_inactivity(ctx);
        self.apply(ConversationEvent::Ended {
            at: crate::protocol::now(),
        });
        // The router first: whoever hears of the end from the agent's
        // frames and asks the router (`GET /v1/tasks`) finds it moved.
        self.broker.router.do_send(TaskWrapping {
            task_id: self.state.task_id.clone(),
        });
        let agent_frame = Event::ConversationEnded {
            conversation_id: self.state.id.clone(),
            task: Some(EndedTask {
                task_id: self.state.task_id.clone(),
                reference: event::reference(reference),
            }),
            reason: reason.map(Cow::Borrowed),
        }
        .frame();
        if let Some(agent) = &self.agent {
            self.to_agent(agent, AgentFrameKind::Ended, agent_frame);
        }
        self.to_customer(CustomerEvent::Ended(self.ended_frame_for(reason)));
        let timeout = self.broker.config.wrapup_timeout;
        self.start_wrapup_timer(timeout, ctx);
    }

    /// Complete with the configured disposition when `timeout` has passed.
    fn start_wrapup_timer(&mut self, timeout: std::time::Duration, ctx: &mut Context<Self>) {
        self.wrapup = Some(ctx.run_later(timeout, |act, ctx| {
            act.wrapup = None;
            let disposition = act.broker.config.wrapup_disposition.clone();
            act.complete(disposition, String::new(), None, ctx);
        }));
    }

    /// (Re)start the inactivity timers: on assignment and on every
    /// customer message while assigned, if the task's queue has settings.
    fn arm_inactivity(&mut self, ctx: &mut Context<Self>) {
        self.arm_inactivity_after(Duration::ZERO, false, ctx);
    }

    /// Start the inactivity timers as if `elapsed` of the clock had already
    /// run (after a restart): without the warning if it was already given or
    /// the end is due too; what is due fires at once.
    fn arm_inactivity_after(&mut self, elapsed: Duration, warned: bool, ctx: &mut Context<Self>) {
        self.stop_inactivity(ctx);
        let Some(settings) = self.inactivity.clone() else {
            return;
        };
        if self.state.task_state != TaskState::Assigned {
            return;
        }
        // Past `close_after` already (a restart after a long stop): the end
        // alone, a warning just before it would tell nothing.
        let warn = settings.warn_after < settings.close_after
            && !settings.warning.is_empty()
            && !warned
            && elapsed < settings.close_after;
        if warn {
            let warning = settings.warning.clone();
            let wait = settings.warn_after.saturating_sub(elapsed);
            self.inactivity_timers
                .push(ctx.run_later(wait, move |act, _| {
                    if act.state.task_state == TaskState::Assigned {
                        act.inactivity_warning(warning);
                    }
                }));
        }
        let wait = settings.close_after.saturating_sub(elapsed);
        self.inactivity_timers.push(ctx.run_later(wait, |act, ctx| {
            act.inactivity_timers.clear();
            if act.state.task_state == TaskState::Assigned {
                act.end_for(None, Some("inactivity"), ctx);
            }
        }));
    }

    fn stop_inactivity(&mut self, ctx: &mut Context<Self>) {
        for timer in self.inactivity_timers.drain(..) {
            ctx.cancel_future(timer);
        }
    }

    /// The queue's warning to a customer who has not written for
    /// `warn_after`: a `system` message the agent sees and the customer is
    /// sent as the queue's other messages are (webchat shows it; a provider
    /// channel sends it out within the messaging window and the outbound
    /// budget, else it stays in the history as `failed`).
    fn inactivity_warning(&mut self, text: String) {
        if self.state.history_full {
            return;
        }
        self.append(Author::System, text, Vec::new(), None);
        let frame = self.message_frame(self.last_message(), None);
        if let Some(agent) = &self.agent {
            self.to_agent(agent, AgentFrameKind::Message, frame.clone());
        }
        self.system_message_out(frame);
    }

    /// Record the disposition and notes, tell the agent, then free the
    /// capacity with the router.
    fn complete(
        &mut self,
        disposition: String,
        notes: String,
        reference: Option<&str>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(timer) = self.wrapup.take() {
            ctx.cancel_future(timer);
        }
        self.apply(ConversationEvent::Completed {
            disposition: disposition.clone(),
            notes,
            at: crate::protocol::now(),
        });
        if let Some(agent) = &self.agent {
            let done = Event::TaskCompleted {
                task_id: self.state.task_id.clone(),
                conversation_id: self.state.id.clone(),
                disposition: Cow::Borrowed(&disposition),
                reference: event::reference(reference),
            }
            .frame();
            self.to_agent(agent, AgentFrameKind::Completed, done);
        }
        // The agent first, then the router: the capacity this frees may bring
        // the agent its next offer at once, and that offer (router →
        // conversation → agent) must not overtake this `task.completed`, or
        // the desk would see itself over capacity.
        self.broker.router.do_send(TaskClosed {
            task_id: self.state.task_id.clone(),
            outcome: Outcome::Completed,
        });
        self.schedule_eviction(ctx);
    }

    /// A finished conversation stays readable for the history retention, then
    /// is forgotten: unregistered, its channel told, its actor stopped. This
    /// is what keeps an in-memory broker's memory flat under churn.
    fn schedule_eviction(&mut self, ctx: &mut Context<Self>) {
        let retention = self.broker.config.history_retention;
        self.schedule_eviction_in(retention, ctx);
    }

    /// Forget the conversation after `delay` (what is left of its retention).
    fn schedule_eviction_in(&mut self, delay: std::time::Duration, ctx: &mut Context<Self>) {
        ctx.run_later(delay, |act, ctx| {
            record::write(
                act.broker.journal.as_ref(),
                RecordRef::ConversationForgotten { id: &act.state.id },
            );
            act.broker
                .forget_conversation(&act.state.id, &act.state.task_id);
            for a in act.state.messages.iter().flat_map(|m| &m.attachments) {
                act.broker.attachments.release(&a.id);
            }
            act.to_customer(CustomerEvent::Forgotten);
            ctx.stop();
        });
    }
}

impl Actor for Conversation {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.opening.take().map(|o| *o) {
            Some(Opening::Inbound(first)) => {
                self.publish_task_state();
                self.hook_task(EventKind::TaskCreated, |_| {});
                self.accept_customer_message(first);
                if self.state.messages.is_empty() {
                    // Its first message was refused (the channel checks
                    // before opening, so only a race gets here): no agent
                    // is ever offered an empty conversation.
                    self.apply(ConversationEvent::TaskMoved {
                        state: TaskState::Canceled,
                        agent_id: None,
                        agent_name: None,
                    });
                    self.to_customer(CustomerEvent::Ended(self.ended_frame()));
                    self.schedule_eviction(ctx);
                    return;
                }
                self.broker.router.do_send(EnqueueTask {
                    task: self.routable(),
                });
            }
            Some(Opening::Outbound {
                agent_id,
                agent_name,
                text,
                attachments,
                client_msg_id,
                reference,
                template,
                queue: _,
            }) => {
                // Created, then accepted by its agent at once.
                self.hook_task(EventKind::TaskCreated, |_| {});
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Assigned,
                    agent_id: Some(agent_id.clone()),
                    agent_name: Some(agent_name.clone()),
                });
                self.broker.router.do_send(BindOutbound {
                    task_id: self.state.task_id.clone(),
                    conversation_id: self.state.id.clone(),
                    customer: self.state.customer.clone(),
                });
                let text = match (&template, text.is_empty()) {
                    (Some(t), true) => format!("Template {} ({})", t.name, t.language),
                    _ => text,
                };
                if let Some(budget) = self.broker.channels.budget(self.state.channel) {
                    // The opening message goes whatever the queue holds: the
                    // agent already holds the conversation's capacity.
                    budget.force_reserve();
                }
                self.append(Author::Agent, text, attachments, client_msg_id);
                Metrics::bump(&self.broker.metrics.messages_out);
                self.held_by(
                    &agent_id,
                    AgentFrameKind::Assigned(self.state.task_view()),
                    self.assigned_frame(reference.as_deref()),
                );
                self.to_customer(CustomerEvent::Broadcast(frame_agent_joined(
                    &self.state.id,
                    &agent_name,
                )));
                let frame = self.message_frame(self.last_message(), None);
                self.message_to_customer(frame, template, true);
            }
            // Started from the journal.
            None => self.resume(ctx),
        }
    }
}

/// The newest messages of `messages`: at most `max_count`, and no more than
/// `max_bytes` of their JSON once the newest is in.
fn replay_tail(messages: &[Message], max_count: usize, max_bytes: u64) -> &[Message] {
    /// Counts what is written, keeps nothing.
    struct Weigh(u64);
    impl std::io::Write for Weigh {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut start = messages.len();
    let mut weight = Weigh(0);
    for m in messages.iter().rev().take(max_count) {
        // Writing to a counter does not fail; a message that cannot be
        // encoded could not be sent either, so it weighs nothing here.
        let _ = serde_json::to_writer(&mut weight, m);
        if start < messages.len() && weight.0 > max_bytes {
            break;
        }
        start -= 1;
    }
    &messages[start..]
}

/// `agent.joined` for the customer: on assignment, and again with the history
/// to a socket that connects later.
fn frame_agent_joined(conversation_id: &Id, name: &str) -> Frame {
    Event::AgentJoined {
        conversation_id: conversation_id.clone(),
        agent: AgentName {
            name: Cow::Borrowed(name),
        },
    }
    .frame()
}

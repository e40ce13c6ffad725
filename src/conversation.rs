//! One actor per conversation: it owns the ordered history (gap-free `seq`),
//! the task's state machine, disposition and notes, and fans every new message
//! out to the assigned agent and to the customer's channel.
//!
//! It is the serialisation point of a chat: a customer message goes
//! channel → conversation → agent; a reply goes agent → conversation → channel.
//! Each message is encoded to JSON once and the same bytes go to every recipient.
//!
//! Every state change is a [`ConversationEvent`] applied by
//! [`ConversationState::apply`], the one place the state changes (ready for the
//! journal). Handles: [`CustomerMessage`], [`CustomerTyping`], [`CustomerLeft`],
//! [`SendHistory`], [`Reserve`], [`Assign`], [`Requeued`], [`AgentSend`],
//! [`AgentTyping`], [`AgentEnd`], [`AgentComplete`], [`Resync`], [`GetSnapshot`],
//! [`GetMessages`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentFrameKind, ToAgent};
use crate::broker::Broker;
use crate::channel::{
    check_attachment, has_messaging_window, text_limit, CustomerEvent, SocketId, Template,
    ToCustomer,
};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::event::{self, AgentName, EndedTask};
use crate::protocol::{
    rfc3339, AttachmentMeta, Author, ChannelKind, Customer, DeliveryStatus, Event, Frame, Id,
    Message, TaskState, TaskSummary, TaskView,
};
use crate::router::{
    BindOutbound, EnqueueTask, RescindReason, RoutableTask, TaskClosed, TaskWrapping,
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
    pub messages: Vec<Message>,
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
}

impl ConversationState {
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
        }
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

/// Check a message's text and attachments against the limits and the channel's
/// rules before anything is stored or sent.
pub fn validate_content(
    broker: &Broker,
    channel: ChannelKind,
    text: &str,
    attachments: &[String],
) -> Result<Vec<AttachmentMeta>, ApiError> {
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
    let files = broker.attachments.resolve(attachments)?;
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

/// How a conversation starts.
pub enum Opening {
    /// A customer wrote in: the task goes to the router.
    Inbound(CustomerMessage),
    /// An agent starts it: assigned to that agent at once (capacity already
    /// reserved with the router).
    Outbound {
        agent_id: Id,
        agent_name: String,
        agent: Addr<Agent>,
        text: String,
        attachments: Vec<AttachmentMeta>,
        client_msg_id: Option<String>,
        reference: Option<String>,
        template: Option<Template>,
    },
}

/// What a channel needs to open a conversation.
pub struct OpenSpec {
    pub channel: ChannelKind,
    pub customer: Customer,
    pub business: Option<String>,
    pub skills: Vec<String>,
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

pub struct Conversation {
    broker: Arc<Broker>,
    channel: Recipient<ToCustomer>,
    state: ConversationState,
    agent: Option<Addr<Agent>>,
    wrapup: Option<SpawnHandle>,
    /// Boxed: taken at start, so it should not keep its room in the actor.
    opening: Option<Box<Opening>>,
}

impl Conversation {
    /// Create the actor on a shard arbiter and register it. Returns at once; the
    /// opening message is processed as the actor's first act.
    pub fn open(broker: &Arc<Broker>, spec: OpenSpec) -> (Id, Addr<Conversation>) {
        let id = broker.ids.conversation();
        let task_id = spec.task_id.unwrap_or_else(|| broker.ids.task());
        let state = ConversationState {
            id: id.clone(),
            task_id: task_id.clone(),
            channel: spec.channel,
            customer: spec.customer,
            business: spec.business,
            skills: spec.skills,
            queue: crate::protocol::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            previous: spec.previous,
            last_customer_at: spec.window_opened_at,
            created_at: crate::protocol::now(),
            ended_at: None,
            task_state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
            disposition: None,
            notes: None,
            messages: Vec::new(),
        };
        broker.metrics.task_moved(None, TaskState::Queued);
        Metrics::bump(&broker.metrics.conversations_opened);
        let actor = Conversation {
            broker: broker.clone(),
            channel: spec.channel_addr,
            state,
            agent: None,
            wrapup: None,
            opening: Some(Box::new(spec.opening)),
        };
        // Registered before it runs: its first act queues the task, and the
        // agent who accepts must find it by id.
        let (addr, mailbox) = crate::shards::mailbox::<Conversation>();
        broker.conversations.insert(id.clone(), addr.clone());
        broker.tasks.insert(task_id, id.clone());
        match spec.home {
            Some(arbiter) => mailbox.run_on(&arbiter, actor),
            None => broker
                .shards
                .place(move |arbiter| mailbox.run_on(arbiter, actor)),
        }
        (id, addr)
    }

    fn apply(&mut self, event: ConversationEvent) {
        let before = self.state.task_state;
        self.state.apply(event);
        let after = self.state.task_state;
        if before != after {
            self.broker.metrics.task_moved(Some(before), after);
            self.publish_task_state();
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
            customer: self.state.customer.address.as_str().into(),
            business: self.state.business.as_deref().map(Id::from),
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

    fn agent_error(&self, agent: &Addr<Agent>, err: ApiError, reference: Option<&str>) {
        self.to_agent(agent, AgentFrameKind::Other, err.to_frame(reference));
    }

    /// Is `agent_id` the agent holding this conversation?
    fn check_agent(&self, agent_id: &Id) -> Result<(), ApiError> {
        let holds = self.state.agent_id.as_ref() == Some(agent_id)
            && matches!(
                self.state.task_state,
                TaskState::Assigned | TaskState::Wrapping
            );
        if holds {
            Ok(())
        } else {
            Err(ApiError::NotYourTask(format!(
                "conversation {} is not assigned to you",
                self.state.id
            )))
        }
    }

    fn append(
        &mut self,
        from: Author,
        text: String,
        attachments: Vec<AttachmentMeta>,
        client_msg_id: Option<String>,
    ) -> Message {
        for a in &attachments {
            self.broker.attachments.acquire(&a.id);
        }
        if self.state.channel == ChannelKind::Webchat {
            let session: Id = self.state.customer.address.as_str().into();
            for a in &attachments {
                if let Some(stored) = self.broker.attachments.get(&a.id) {
                    stored.grant(&session);
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
        self.apply(ConversationEvent::MessageAppended(message.clone()));
        message
    }

    fn message_frame(&self, message: &Message, reference: Option<&str>) -> Frame {
        Event::Message {
            conversation_id: self.state.id.clone(),
            message: Cow::Borrowed(message),
            reference: event::reference(reference),
        }
        .frame()
    }

    fn assigned_frame(&self, reference: Option<&str>) -> Frame {
        Event::TaskAssigned {
            task: Cow::Owned(self.state.task_view()),
            history: Cow::Borrowed(&self.state.messages),
            reference: event::reference(reference),
        }
        .frame()
    }

    /// `conversation.ended` as the customer gets it (no task, no `ref`).
    fn ended_frame(&self) -> Frame {
        Event::ConversationEnded {
            conversation_id: self.state.id.clone(),
            task: None,
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

    fn accept_customer_message(&mut self, msg: CustomerMessage) {
        let content = if msg.provided.is_empty()
            && msg.attachments.is_empty()
            && msg.author == Author::System
        {
            Ok(Vec::new())
        } else if !msg.provided.is_empty() {
            // Files a provider sent: stored (or failed) already, shown as they are.
            Ok(msg.provided.clone())
        } else {
            validate_content(
                &self.broker,
                self.state.channel,
                &msg.text,
                &msg.attachments,
            )
        };
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
        let message = self.append(msg.author, msg.text, attachments, msg.client_msg_id.clone());
        Metrics::bump(&self.broker.metrics.messages_in);
        if let Some(socket) = msg.socket {
            let ack = Event::Ack {
                conversation_id: self.state.id.clone(),
                client_msg_id: msg.client_msg_id.as_deref().map(Cow::Borrowed),
                message_id: Cow::Borrowed(&message.id),
                seq: message.seq,
                reference: event::reference(msg.reference.as_deref()),
            }
            .frame();
            self.to_customer(CustomerEvent::Direct { socket, frame: ack });
        }
        let frame = self.message_frame(&message, None);
        if self.state.task_state == TaskState::Assigned {
            if let Some(agent) = &self.agent {
                self.to_agent(agent, AgentFrameKind::Message, frame.clone());
            }
        }
        self.message_to_customer(message, frame, None);
    }

    /// Hand a new message to the channel: sockets show it, providers send
    /// agent messages out (counted against the channel's outbound queue).
    fn message_to_customer(&self, message: Message, frame: Frame, template: Option<Template>) {
        if message.from == Author::Agent && self.state.channel != ChannelKind::Webchat {
            self.broker.outbound_pending[self.state.channel.index()]
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.to_customer(CustomerEvent::Message {
            message: Box::new(message),
            frame,
            template,
        });
    }

    /// Provider-channel rules an agent's free-form message must meet.
    fn check_provider_rules(&self) -> Result<(), ApiError> {
        let channel = self.state.channel;
        if channel == ChannelKind::Webchat {
            return Ok(());
        }
        let pending = self.broker.outbound_pending[channel.index()]
            .load(std::sync::atomic::Ordering::Relaxed);
        // `pending` counts sends in flight as well as those waiting for a slot.
        let config = &self.broker.config;
        if pending >= config.provider_queue + config.provider_in_flight {
            return Err(ApiError::RateLimited(format!(
                "{} has {pending} messages in flight or waiting for the provider; try again shortly",
                channel.as_str()
            )));
        }
        if has_messaging_window(channel) {
            let window = self.broker.config.messaging_window;
            let inside = self
                .state
                .last_customer_at
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age <= window);
            if !inside {
                return Err(ApiError::OutsideMessagingWindow(format!(
                    "the customer has not written in the last {}: {} allows no free-form message now",
                    humantime::format_duration(window),
                    channel.as_str()
                )));
            }
        }
        Ok(())
    }

    fn end(&mut self, reference: Option<&str>, ctx: &mut Context<Self>) {
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
        }
        .frame();
        if let Some(agent) = &self.agent {
            self.to_agent(agent, AgentFrameKind::Ended, agent_frame);
        }
        self.to_customer(CustomerEvent::Ended(self.ended_frame()));
        let timeout = self.broker.config.wrapup_timeout;
        self.wrapup = Some(ctx.run_later(timeout, |act, ctx| {
            act.wrapup = None;
            let disposition = act.broker.config.wrapup_disposition.clone();
            act.complete(disposition, String::new(), None, ctx);
        }));
    }

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
        });
        self.schedule_eviction(ctx);
    }

    /// A finished conversation stays readable for the history retention, then
    /// is forgotten: unregistered, its channel told, its actor stopped. This
    /// is what keeps an in-memory broker's memory flat under churn.
    fn schedule_eviction(&mut self, ctx: &mut Context<Self>) {
        let retention = self.broker.config.history_retention;
        ctx.run_later(retention, |act, ctx| {
            act.broker.conversations.remove(&act.state.id);
            act.broker.tasks.remove(&act.state.task_id);
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
                self.accept_customer_message(first);
                self.broker.router.do_send(EnqueueTask {
                    task: self.routable(),
                    conversation: ctx.address(),
                });
            }
            Some(Opening::Outbound {
                agent_id,
                agent_name,
                agent,
                text,
                attachments,
                client_msg_id,
                reference,
                template,
            }) => {
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Assigned,
                    agent_id: Some(agent_id),
                    agent_name: Some(agent_name.clone()),
                });
                self.broker.router.do_send(BindOutbound {
                    task_id: self.state.task_id.clone(),
                    conversation_id: self.state.id.clone(),
                    conversation: ctx.address(),
                    customer: self.state.customer.clone(),
                });
                let text = match (&template, text.is_empty()) {
                    (Some(t), true) => format!("Template {} ({})", t.name, t.language),
                    _ => text,
                };
                let message = self.append(Author::Agent, text, attachments, client_msg_id);
                Metrics::bump(&self.broker.metrics.messages_out);
                self.to_agent(
                    &agent,
                    AgentFrameKind::Assigned(self.state.task_view()),
                    self.assigned_frame(reference.as_deref()),
                );
                self.agent = Some(agent);
                self.to_customer(CustomerEvent::Broadcast(frame_agent_joined(
                    &self.state.id,
                    &agent_name,
                )));
                let frame = self.message_frame(&message, None);
                self.message_to_customer(message, frame, template);
            }
            None => {}
        }
    }
}

impl Conversation {
    /// What the router needs to route this conversation's task.
    fn routable(&self) -> RoutableTask {
        RoutableTask {
            task_id: self.state.task_id.clone(),
            conversation_id: self.state.id.clone(),
            channel: self.state.channel,
            skills: Arc::from(self.state.skills.clone()),
            customer: self.state.customer.clone(),
            queue: self.state.queue.clone(),
            priority: self.state.priority,
            created_at: self.state.created_at,
            order: 0,
            enqueued_at: std::time::Instant::now(),
            declined: Vec::new(),
            offered_before: false,
        }
    }
}

/// A customer message from the channel.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CustomerMessage {
    /// The socket to acknowledge (webchat); None for provider channels.
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

    fn handle(&mut self, msg: CustomerMessage, _: &mut Context<Self>) {
        if self.state.ended() {
            // Writing again after the end opens a new conversation.
            self.to_customer(CustomerEvent::Reopen(Box::new(msg)));
            return;
        }
        self.accept_customer_message(msg);
    }
}

#[derive(Message)]
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
#[derive(Message)]
#[rtype(result = "()")]
pub struct CustomerLeft {
    pub socket: Option<SocketId>,
    pub reference: Option<String>,
}

impl Handler<CustomerLeft> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: CustomerLeft, ctx: &mut Context<Self>) {
        match self.state.task_state {
            TaskState::Queued | TaskState::Reserved => {
                self.apply(ConversationEvent::TaskMoved {
                    state: TaskState::Canceled,
                    agent_id: None,
                    agent_name: None,
                });
                self.broker.router.do_send(TaskClosed {
                    task_id: self.state.task_id.clone(),
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
#[derive(Message)]
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
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendHistory {
    pub socket: SocketId,
}

impl Handler<SendHistory> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: SendHistory, _: &mut Context<Self>) {
        let frame = Event::History {
            conversation_id: Some(self.state.id.clone()),
            ended: self.state.ended(),
            messages: Cow::Borrowed(&self.state.messages),
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

fn frame_agent_joined(conversation_id: &Id, name: &str) -> Frame {
    Event::AgentJoined {
        conversation_id: conversation_id.clone(),
        agent: AgentName {
            name: Cow::Borrowed(name),
        },
    }
    .frame()
}

/// Router: the task is offered to `agent_id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reserve {
    pub agent_id: Id,
    pub agent: Addr<Agent>,
    pub expires_at: SystemTime,
}

impl Handler<Reserve> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Reserve, _: &mut Context<Self>) {
        if self.state.task_state != TaskState::Queued {
            return;
        }
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Reserved,
            agent_id: Some(msg.agent_id),
            agent_name: None,
        });
        let task = self.state.task_view();
        let offered = Event::TaskOffered {
            task: Cow::Borrowed(&task),
            expires_at: msg.expires_at,
        }
        .frame();
        self.to_agent(&msg.agent, AgentFrameKind::Offered(task.clone()), offered);
    }
}

/// Router: the agent accepted; from now on this conversation talks to it directly.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Assign {
    pub agent_id: Id,
    pub agent_name: String,
    pub agent: Addr<Agent>,
    pub reference: Option<String>,
}

impl Handler<Assign> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Assign, _: &mut Context<Self>) {
        if self.state.task_state != TaskState::Reserved {
            // The customer left while the accept was on its way.
            let gone = self.rescinded_frame(RescindReason::CustomerLeft);
            self.to_agent(&msg.agent, AgentFrameKind::Rescinded, gone);
            return;
        }
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Assigned,
            agent_id: Some(msg.agent_id),
            agent_name: Some(msg.agent_name.clone()),
        });
        self.to_agent(
            &msg.agent,
            AgentFrameKind::Assigned(self.state.task_view()),
            self.assigned_frame(msg.reference.as_deref()),
        );
        self.agent = Some(msg.agent);
        self.to_customer(CustomerEvent::Broadcast(frame_agent_joined(
            &self.state.id,
            &msg.agent_name,
        )));
    }
}

/// Router: the task is back in the queue (reject, timeout, or its agent left).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Requeued {
    pub reason: RescindReason,
}

impl Handler<Requeued> for Conversation {
    type Result = ();

    fn handle(&mut self, _: Requeued, _: &mut Context<Self>) {
        if !matches!(
            self.state.task_state,
            TaskState::Reserved | TaskState::Assigned
        ) {
            return;
        }
        self.agent = None;
        self.apply(ConversationEvent::TaskMoved {
            state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
        });
    }
}

/// An agent's reply.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentSend {
    pub agent_id: Id,
    pub from: Addr<Agent>,
    pub text: String,
    pub attachments: Vec<String>,
    pub client_msg_id: Option<String>,
    pub reference: Option<String>,
}

impl Handler<AgentSend> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentSend, _: &mut Context<Self>) {
        let checked = self.check_agent(&msg.agent_id).and_then(|_| {
            if self.state.task_state != TaskState::Assigned {
                return Err(ApiError::InvalidState(format!(
                    "conversation {} has ended",
                    self.state.id
                )));
            }
            self.check_provider_rules()?;
            validate_content(
                &self.broker,
                self.state.channel,
                &msg.text,
                &msg.attachments,
            )
        });
        let attachments = match checked {
            Ok(a) => a,
            Err(e) => return self.agent_error(&msg.from, e, msg.reference.as_deref()),
        };
        let message = self.append(Author::Agent, msg.text, attachments, msg.client_msg_id);
        Metrics::bump(&self.broker.metrics.messages_out);
        let to_customer = self.message_frame(&message, None);
        let echo = match msg.reference.as_deref() {
            Some(r) => self.message_frame(&message, Some(r)),
            None => to_customer.clone(),
        };
        self.to_agent(&msg.from, AgentFrameKind::Message, echo);
        self.message_to_customer(message, to_customer, None);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentTyping {
    pub agent_id: Id,
    pub from: Addr<Agent>,
    pub reference: Option<String>,
}

impl Handler<AgentTyping> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentTyping, _: &mut Context<Self>) {
        match self.check_agent(&msg.agent_id) {
            Ok(()) if self.state.task_state == TaskState::Assigned => {
                self.to_customer(CustomerEvent::Broadcast(self.typing_frame()));
            }
            Ok(()) => {}
            Err(e) => self.agent_error(&msg.from, e, msg.reference.as_deref()),
        }
    }
}

/// End Chat: the task goes to wrap-up, capacity still held.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentEnd {
    pub agent_id: Id,
    pub from: Addr<Agent>,
    pub reference: Option<String>,
}

impl Handler<AgentEnd> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentEnd, ctx: &mut Context<Self>) {
        let checked = self.check_agent(&msg.agent_id).and_then(|_| {
            if self.state.task_state == TaskState::Assigned {
                Ok(())
            } else {
                Err(ApiError::InvalidState(format!(
                    "conversation {} has already ended",
                    self.state.id
                )))
            }
        });
        match checked {
            Ok(()) => self.end(msg.reference.as_deref(), ctx),
            Err(e) => self.agent_error(&msg.from, e, msg.reference.as_deref()),
        }
    }
}

/// Complete: disposition and notes, then capacity is freed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentComplete {
    pub agent_id: Id,
    pub from: Addr<Agent>,
    pub disposition: String,
    pub notes: String,
    pub reference: Option<String>,
}

impl Handler<AgentComplete> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: AgentComplete, ctx: &mut Context<Self>) {
        let config = &self.broker.config;
        let checked = self.check_agent(&msg.agent_id).and_then(|_| {
            if self.state.task_state != TaskState::Wrapping {
                return Err(ApiError::InvalidState(format!(
                    "task {} is {}: end the conversation before completing it",
                    self.state.task_id,
                    self.state.task_state.as_str()
                )));
            }
            if !config.dispositions.contains(&msg.disposition) {
                return Err(ApiError::InvalidDisposition(format!(
                    "{:?} is not a disposition; use one of: {}",
                    msg.disposition,
                    config.dispositions.join(", ")
                )));
            }
            let chars = msg.notes.chars().count();
            if chars > config.max_notes {
                return Err(ApiError::TextTooLong(format!(
                    "notes have {chars} characters; the limit is {}",
                    config.max_notes
                )));
            }
            Ok(())
        });
        match checked {
            Ok(()) => self.complete(msg.disposition, msg.notes, msg.reference.as_deref(), ctx),
            Err(e) => self.agent_error(&msg.from, e, msg.reference.as_deref()),
        }
    }
}

/// The agent reconnected: send its task again with the full history.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    pub agent_id: Id,
    pub agent: Addr<Agent>,
}

impl Handler<Resync> for Conversation {
    type Result = ();

    fn handle(&mut self, msg: Resync, _: &mut Context<Self>) {
        if self.check_agent(&msg.agent_id).is_ok() {
            self.agent = Some(msg.agent.clone());
            self.to_agent(
                &msg.agent,
                AgentFrameKind::Resync(self.state.task_view()),
                self.assigned_frame(None),
            );
        } else {
            // Lost the task meanwhile (re-queued): tell the desktop.
            let gone = self.rescinded_frame(RescindReason::Reassigned);
            self.to_agent(&msg.agent, AgentFrameKind::Rescinded, gone);
        }
    }
}

/// A provider reported a new delivery status for one of the agent's messages.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliveryUpdate {
    pub message_id: String,
    pub status: DeliveryStatus,
    pub error: Option<String>,
}

/// Status order: a late `sent` never overrides `delivered`; `failed` is final.
fn status_rank(s: DeliveryStatus) -> u8 {
    match s {
        DeliveryStatus::Accepted => 0,
        DeliveryStatus::Sent => 1,
        DeliveryStatus::Delivered => 2,
        DeliveryStatus::Read => 3,
        DeliveryStatus::Failed => 4,
    }
}

impl Conversation {
    fn set_status(&mut self, seq: u64, status: DeliveryStatus, error: Option<String>) {
        let Some(current) = seq
            .checked_sub(1)
            .and_then(|i| self.state.messages.get(i as usize))
            .map(|m| m.status)
        else {
            return;
        };
        let forward =
            status_rank(status) > status_rank(current) && current != DeliveryStatus::Failed;
        if !forward {
            return;
        }
        let message_id = self.state.messages[(seq - 1) as usize].id.clone();
        self.apply(ConversationEvent::StatusChanged { seq, status });
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

/// Messenger read receipt: every agent message sent before `watermark` is read.
#[derive(Message)]
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
            .filter(|m| m.from == Author::Agent && m.created_at <= msg.watermark)
            .filter(|m| matches!(m.status, DeliveryStatus::Sent | DeliveryStatus::Delivered))
            .map(|m| m.seq)
            .collect();
        for seq in seqs {
            self.set_status(seq, DeliveryStatus::Read, None);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ConversationState {
        ConversationState {
            id: "cv_1".into(),
            task_id: "tk_1".into(),
            channel: ChannelKind::Webchat,
            customer: Customer {
                address: "wc_1".into(),
                name: "Dana".into(),
            },
            business: None,
            skills: vec![],
            queue: crate::protocol::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            previous: None,
            last_customer_at: None,
            created_at: crate::protocol::now(),
            ended_at: None,
            task_state: TaskState::Queued,
            agent_id: None,
            agent_name: None,
            disposition: None,
            notes: None,
            messages: vec![],
        }
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
        let events = vec![
            ConversationEvent::MessageAppended(msg(1, Author::Customer, "hello")),
            ConversationEvent::TaskMoved {
                state: TaskState::Assigned,
                agent_id: Some("alice".into()),
                agent_name: Some("Alice".into()),
            },
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
    }

    #[test]
    fn preview_is_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let p = preview_of(&long);
        assert_eq!(p.chars().count(), 141);
        assert!(p.ends_with('…'));
    }
}

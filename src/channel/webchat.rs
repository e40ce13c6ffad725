//! The webchat channel actors: own webchat customer sessions (name, required
//! skills, open and last conversation, connected sockets), open conversations
//! for them, and deliver what conversations say to every socket of the
//! customer.
//!
//! One actor per shard arbiter, not one for the broker: every customer message
//! passes its channel three times (in, `ack` out, echo out), so a single
//! channel actor would carry every chat on one thread. A session lives in the
//! shard its id hashes to ([`WebchatShards::for_session`]) and its
//! conversations are started on that shard's arbiter, so the channel and the
//! conversation it feeds never cross a thread to talk to each other.
//!
//! Handles: [`CreateSession`], [`SocketsOf`], [`CustomerConnected`],
//! [`CustomerDisconnected`], [`FromCustomer`], [`OpenOutbound`], and
//! [`ToCustomer`] from conversations.
//!
//! Session state changes through one function, `apply_event`, for the live
//! shard (conversations reached by address) and for [`WebchatState`], the
//! plain copy of every session that recovery and snapshots use.
//!
//! Limits held here: `sockets_per_session` (a socket more is told
//! `rate_limited` and closed 1008) and `conversation_messages_per_second` (a
//! message over it is answered `rate_limited` and not stored), so one
//! customer cannot flood its agent or crowd out the shard's other customers.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attachments::Sender;
use crate::channel::{CustomerEvent, OpenOutbound, SocketId, ToCustomer};
use crate::ids::IdMap;
use crate::journal::record::{self, RecordRef};
use crate::wiring::Broker;
use std::hash::BuildHasher;

use crate::conversation::{
    validate_content, Conversation, CustomerAbandoned, CustomerLeft, CustomerMessage,
    CustomerTyping, OpenSpec, Opening, SendHistory,
};
use crate::deadlines::Deadlines;
use crate::error::ApiError;
use crate::limits::KeyedRate;
use crate::protocol::{error_frame, ChannelKind, Customer, CustomerCommand, Event, Id};
use crate::ws::SocketLink;

pub(crate) struct Socket {
    link: SocketLink,
    /// False until its history has been sent: live events before that are
    /// already in the history.
    ready: bool,
}

/// A webchat session. `A` is how its latest conversation is reached: the
/// conversation's address in the live channel, `()` in the plain copy a
/// snapshot holds ([`WebchatState`]), so both change through the same
/// `apply_event`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Session<A = Addr<Conversation>> {
    token: String,
    name: String,
    skills: Vec<String>,
    /// The queue its conversations wait in (None: `default`).
    queue: Option<Id>,
    /// The address that created it, counted against `open_sessions_per_ip`
    /// until the session is forgotten.
    client_ip: Option<IpAddr>,
    /// The session's latest conversation until it is forgotten: the open
    /// one, if any. One address for both (each clone of an actix address
    /// is an allocation of its own).
    latest: Option<(Id, A)>,
    /// Whether `latest` is still open.
    latest_open: bool,
    /// Connections, not state: never in a snapshot.
    #[serde(skip)]
    sockets: Vec<Socket>,
}

impl<A> Session<A> {
    /// The open conversation, if any.
    fn open(&self) -> Option<&(Id, A)> {
        self.latest.as_ref().filter(|_| self.latest_open)
    }

    /// Sockets are one or two per customer: no room kept for more.
    fn add_socket(&mut self, socket: Socket) {
        self.sockets.reserve_exact(1);
        self.sockets.push(socket);
    }
}

/// The one place session state changes: `addr` is the handle of the
/// conversation the event names, when that conversation exists. Returns the
/// session a `SessionForgotten` removed (its token and address counts are
/// the caller's to release).
fn apply_event<A>(
    sessions: &mut IdMap<Id, Box<Session<A>>>,
    event: WebchatEvent,
    addr: Option<A>,
) -> Option<Box<Session<A>>> {
    match event {
        WebchatEvent::SessionCreated {
            id,
            token,
            name,
            skills,
            queue,
            client_ip,
        } => {
            sessions.insert(
                id,
                Box::new(Session {
                    token,
                    name,
                    skills,
                    queue,
                    client_ip,
                    latest: None,
                    latest_open: false,
                    sockets: Vec::new(),
                }),
            );
        }
        WebchatEvent::ConversationOpened {
            session,
            conversation,
        } => {
            if let (Some(s), Some(addr)) = (sessions.get_mut(&session), addr) {
                s.latest = Some((conversation, addr));
                s.latest_open = true;
            }
        }
        WebchatEvent::ConversationEnded {
            session,
            conversation,
        } => {
            if let Some(s) = sessions.get_mut(&session) {
                if s.open().is_some_and(|(id, _)| *id == conversation) {
                    s.latest_open = false;
                }
            }
        }
        WebchatEvent::ConversationForgotten {
            session,
            conversation,
        } => {
            if let Some(s) = sessions.get_mut(&session) {
                if s.latest.as_ref().is_some_and(|(id, _)| *id == conversation) {
                    s.latest = None;
                    s.latest_open = false;
                }
            }
        }
        WebchatEvent::SessionForgotten { session } => return sessions.remove(&session),
    }
    None
}

/// Every webchat session as plain data, whatever the shard that holds it:
/// what a snapshot keeps of the channel. Changed by the channel's own
/// `apply_event`; split into the shards at start
/// ([`WebchatChannel::restore_sessions`]).
#[derive(Default, Serialize, Deserialize)]
pub struct WebchatState {
    sessions: IdMap<Id, Box<Session<()>>>,
}

impl WebchatState {
    /// Apply one event; `known` says whether the conversation it names
    /// exists (a live channel would hold its address).
    pub fn apply(&mut self, event: WebchatEvent, known: bool) {
        apply_event(&mut self.sessions, event, known.then_some(()));
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session, to be split into the shards.
    pub(crate) fn into_sessions(self) -> impl Iterator<Item = (Id, Session<()>)> {
        self.sessions.into_iter().map(|(id, s)| (id, *s))
    }

    /// The id of a session's latest conversation (the one to give an
    /// address to).
    pub(crate) fn latest_of(session: &Session<()>) -> Option<&Id> {
        session.latest.as_ref().map(|(c, ())| c)
    }

    /// Each session's id and the id of its latest conversation.
    pub fn latest(&self) -> impl Iterator<Item = (&Id, Option<&Id>)> {
        self.sessions
            .iter()
            .map(|(id, s)| (id, s.latest.as_ref().map(|(c, ())| c)))
    }
}

/// Every change the webchat channel makes to its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WebchatEvent {
    SessionCreated {
        id: Id,
        token: String,
        name: String,
        skills: Vec<String>,
        queue: Option<Id>,
        client_ip: Option<IpAddr>,
    },
    ConversationOpened {
        session: Id,
        conversation: Id,
    },
    ConversationEnded {
        session: Id,
        conversation: Id,
    },
    /// The conversation left memory (history retention): nothing to show.
    ConversationForgotten {
        session: Id,
        conversation: Id,
    },
    /// The session and its token are gone.
    SessionForgotten {
        session: Id,
    },
}

impl WebchatEvent {
    /// The session it changes (which shard applies it).
    pub fn session(&self) -> &Id {
        match self {
            WebchatEvent::SessionCreated { id, .. } => id,
            WebchatEvent::ConversationOpened { session, .. }
            | WebchatEvent::ConversationEnded { session, .. }
            | WebchatEvent::ConversationForgotten { session, .. }
            | WebchatEvent::SessionForgotten { session } => session,
        }
    }

    /// The conversation it names, if any.
    pub fn conversation(&self) -> Option<&Id> {
        match self {
            WebchatEvent::ConversationOpened { conversation, .. }
            | WebchatEvent::ConversationEnded { conversation, .. }
            | WebchatEvent::ConversationForgotten { conversation, .. } => Some(conversation),
            WebchatEvent::SessionCreated { .. } | WebchatEvent::SessionForgotten { .. } => None,
        }
    }
}

/// The webchat channel's shards, and which one holds a session.
#[derive(Clone)]
pub struct WebchatShards {
    shards: Arc<[Addr<WebchatChannel>]>,
}

impl WebchatShards {
    /// At least one shard.
    pub fn new(shards: Vec<Addr<WebchatChannel>>) -> Self {
        assert!(!shards.is_empty(), "the webchat channel needs a shard");
        WebchatShards {
            shards: shards.into(),
        }
    }

    /// The shard that holds `session` (a hash of its id, the same for the
    /// life of the process). Asked on every frame a customer sends.
    pub fn for_session(&self, session: &str) -> &Addr<WebchatChannel> {
        &self.shards[self.index_of(session)]
    }

    /// Which shard (by position) holds `session`.
    pub fn index_of(&self, session: &str) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        let h = foldhash::fast::FixedState::default().hash_one(session);
        (h % self.shards.len() as u64) as usize
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Addr<WebchatChannel>> {
        self.shards.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

pub struct WebchatChannel {
    broker: Arc<Broker>,
    /// Boxed: a session lives for the history retention after its last
    /// conversation, so under churn the map holds many thousands, and
    /// removals leave tombstones that make it double now and then. With the
    /// sessions inline each doubling was a 192-byte slot per bucket (an 11 MiB
    /// RSS step at 65,536 buckets in the 11-minute churn run); boxed, 24 bytes.
    sessions: IdMap<Id, Box<Session>>,
    /// Sessions whose customer has no socket while a conversation is open:
    /// when the grace period ends, the conversation hears the customer left.
    away: Deadlines<Id, ()>,
    /// Sessions with no socket and nothing to show: forgotten when their time
    /// (`webchat_session_idle`) is up, unless they were used again.
    idle: Deadlines<Id, ()>,
    /// Customer messages per second into each session's conversation
    /// (`conversation_messages_per_second`), all its sockets together; only
    /// sessions that wrote lately hold an entry.
    message_rate: KeyedRate<Id>,
    /// Rebuilt from the journal: the away and idle timers start as it starts.
    restored: bool,
}

impl WebchatChannel {
    pub fn new(broker: Arc<Broker>) -> Self {
        WebchatChannel {
            sessions: IdMap::default(),
            away: Deadlines::default(),
            idle: Deadlines::default(),
            message_rate: KeyedRate::per_second(broker.config.conversation_messages_per_second),
            broker,
            restored: false,
        }
    }

    /// After a replay: the surviving sessions' tokens work again and count
    /// against their address's open sessions; the timers start with the
    /// shard ([`WebchatChannel::resume`]).
    pub(crate) fn restored(&mut self) {
        for (id, s) in &self.sessions {
            self.broker
                .register_webchat_token(s.token.clone(), id.clone());
            self.broker.limits.session_restored(s.client_ip);
        }
        self.restored = true;
    }

    /// No customer has a socket after a restart: a session with an open
    /// conversation is away (its customer has `customer_grace` to come
    /// back), one with nothing to show is idle.
    fn resume(&mut self, ctx: &mut Context<Self>) {
        let now = std::time::Instant::now();
        let grace = self.broker.config.customer_grace;
        let idle = self.broker.config.webchat_session_idle;
        for (id, s) in &self.sessions {
            if s.open().is_some() {
                self.away.insert(id.clone(), now + grace, ());
            } else if s.latest.is_none() {
                self.idle.insert(id.clone(), now + idle, ());
            }
        }
        self.away.arm(ctx, WebchatChannel::grace_ended);
        self.idle.arm(ctx, WebchatChannel::idle_expired);
    }

    /// The one place session state changes (socket lists aside: sockets are
    /// connections, not state to journal).
    fn apply(&mut self, event: WebchatEvent, addr: Option<Addr<Conversation>>) {
        record::write(self.broker.journal.as_ref(), RecordRef::Webchat(&event));
        self.replay(event, addr);
    }

    /// Apply an event without writing it (`apply`).
    fn replay(&mut self, event: WebchatEvent, addr: Option<Addr<Conversation>>) {
        if let Some(s) = apply_event(&mut self.sessions, event, addr) {
            self.broker.forget_webchat_token(&s.token);
            self.broker.limits.session_closed(s.client_ip);
        }
    }

    /// Sessions rebuilt from the journal for this shard, with the address
    /// of their latest conversation (None: it is not in memory any more).
    /// [`WebchatChannel::restored`] follows.
    pub(crate) fn restore_session(
        &mut self,
        id: Id,
        session: Session<()>,
        latest: Option<Addr<Conversation>>,
    ) {
        let Session {
            token,
            name,
            skills,
            queue,
            client_ip,
            latest: conversation,
            latest_open,
            sockets: _,
        } = session;
        let latest = conversation.zip(latest).map(|((c, ()), addr)| (c, addr));
        let latest_open = latest_open && latest.is_some();
        self.sessions.insert(
            id,
            Box::new(Session {
                token,
                name,
                skills,
                queue,
                client_ip,
                latest,
                latest_open,
                sockets: Vec::new(),
            }),
        );
    }

    /// True when the session has no socket and nothing to show.
    fn is_idle(&self, session: &Id) -> bool {
        self.sessions
            .get(session)
            .is_some_and(|s| s.sockets.is_empty() && s.latest.is_none())
    }

    /// Starts the idle clock of a session that has just become idle.
    fn watch_idle(&mut self, session: &Id, ctx: &mut Context<Self>) {
        if self.is_idle(session) {
            let at = std::time::Instant::now() + self.broker.config.webchat_session_idle;
            self.idle.insert(session.clone(), at, ());
            self.idle.arm(ctx, WebchatChannel::idle_expired);
        }
    }

    /// The idle timer fired: sessions still unused are forgotten.
    fn idle_expired(&mut self, ctx: &mut Context<Self>) {
        for (session, ()) in self.idle.take_expired() {
            if self.is_idle(&session) {
                self.apply(WebchatEvent::SessionForgotten { session }, None);
            }
        }
        self.idle.arm(ctx, WebchatChannel::idle_expired);
    }

    fn open_conversation(
        &mut self,
        session_id: &Id,
        opening: Opening,
        previous: Option<Id>,
        task_id: Option<Id>,
        ctx: &mut Context<Self>,
    ) -> Option<(Id, Addr<Conversation>)> {
        let session = self.sessions.get(session_id)?;
        let spec = OpenSpec {
            channel: ChannelKind::Webchat,
            customer: Customer {
                address: session_id.to_string(),
                name: session.name.clone(),
            },
            business: None,
            skills: session.skills.clone(),
            queue: session
                .queue
                .as_deref()
                .unwrap_or(crate::protocol::DEFAULT_QUEUE)
                .to_owned(),
            previous,
            window_opened_at: None,
            channel_addr: ctx.address().recipient(),
            opening,
            task_id,
            // Next to this shard: channel ↔ conversation stays on one thread.
            home: Some(Arbiter::current()),
        };
        let (id, addr) = Conversation::open(&self.broker, spec);
        self.apply(
            WebchatEvent::ConversationOpened {
                session: session_id.clone(),
                conversation: id.clone(),
            },
            Some(addr.clone()),
        );
        Some((id, addr))
    }

    /// Send to one socket of a session; drop the socket if it is gone or slow.
    fn send_to(&mut self, session_id: &Id, socket: SocketId, frame: crate::protocol::Frame) {
        let metrics = &self.broker.metrics;
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.sockets.retain(|sock| {
                sock.link.id != socket || sock.link.send(frame.clone(), metrics).is_ok()
            });
        }
    }

    /// `send_to` the `ack`, then `broadcast` the message, with the two frames
    /// for the socket that sent it in one push.
    fn accepted(
        &mut self,
        session_id: &Id,
        socket: SocketId,
        ack: crate::protocol::Frame,
        frame: crate::protocol::Frame,
    ) {
        let metrics = &self.broker.metrics;
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.sockets.retain(|sock| {
                let sent = match (sock.link.id == socket, sock.ready) {
                    (true, true) => sock.link.send_two(ack.clone(), frame.clone(), metrics),
                    (true, false) => sock.link.send(ack.clone(), metrics),
                    (false, true) => sock.link.send(frame.clone(), metrics),
                    (false, false) => Ok(()),
                };
                sent.is_ok()
            });
        }
    }

    fn broadcast(&mut self, session_id: &Id, frame: crate::protocol::Frame) {
        let metrics = &self.broker.metrics;
        if let Some(s) = self.sessions.get_mut(session_id) {
            s.sockets
                .retain(|sock| !sock.ready || sock.link.send(frame.clone(), metrics).is_ok());
        }
    }
}

impl Actor for WebchatChannel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(std::time::Duration::from_secs(10), |act, _| {
            act.message_rate.sweep();
        });
        if self.restored {
            self.resume(ctx);
        }
    }
}

impl Handler<crate::ws::CloseAll> for WebchatChannel {
    type Result = ();

    fn handle(&mut self, msg: crate::ws::CloseAll, _: &mut Context<Self>) {
        for s in self.sessions.values_mut() {
            for socket in s.sockets.drain(..) {
                socket.link.close(msg.code, &msg.reason);
            }
        }
    }
}

/// `POST /v1/webchat/sessions`, sent to the shard of the new session's id:
/// returns its token.
#[derive(Message)]
#[rtype(result = "String")]
pub struct CreateSession {
    pub id: Id,
    pub name: String,
    pub skills: Vec<String>,
    /// Checked by the route: a queue that exists and takes webchat.
    pub queue: Option<Id>,
    /// Counted against `open_sessions_per_ip` already (`Limits::open_session`).
    pub client_ip: Option<IpAddr>,
}

impl Handler<CreateSession> for WebchatChannel {
    type Result = MessageResult<CreateSession>;

    fn handle(&mut self, msg: CreateSession, ctx: &mut Context<Self>) -> Self::Result {
        let id = msg.id;
        let token = crate::ids::token();
        self.apply(
            WebchatEvent::SessionCreated {
                id: id.clone(),
                token: token.clone(),
                name: msg.name,
                skills: msg.skills,
                queue: msg.queue,
                client_ip: msg.client_ip,
            },
            None,
        );
        self.broker
            .register_webchat_token(token.clone(), id.clone());
        self.watch_idle(&id, ctx);
        MessageResult(token)
    }
}

/// `GET /v1/webchat/session`: the session behind a customer token.
#[derive(Message)]
#[rtype(result = "Option<serde_json::Value>")]
pub struct GetSession {
    pub session: Id,
}

impl Handler<GetSession> for WebchatChannel {
    type Result = Option<serde_json::Value>;

    fn handle(&mut self, msg: GetSession, _: &mut Context<Self>) -> Self::Result {
        let s = self.sessions.get(&msg.session)?;
        Some(serde_json::json!({
            "session_id": msg.session,
            "name": s.name,
            "conversation_id": s.latest.as_ref().map(|(id, _)| id.clone()),
            "open": s.open().is_some(),
            "connected_sockets": s.sockets.len(),
        }))
    }
}

/// A customer socket connected.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CustomerConnected {
    pub session: Id,
    pub link: SocketLink,
}

/// The refusal of one socket more than `sockets_per_session`.
pub fn too_many_sockets(max: usize) -> ApiError {
    ApiError::RateLimitedFor {
        message: format!("at most {max} sockets on one webchat session; close one first"),
        retry_after: std::time::Duration::from_secs(5),
    }
}

/// The upgrade of a customer socket asks how many the session has open
/// (None: no such session).
#[derive(Message)]
#[rtype(result = "Option<usize>")]
pub struct SocketsOf {
    pub session: Id,
}

impl Handler<SocketsOf> for WebchatChannel {
    type Result = Option<usize>;

    fn handle(&mut self, msg: SocketsOf, _: &mut Context<Self>) -> Option<usize> {
        self.sessions.get(&msg.session).map(|s| s.sockets.len())
    }
}

impl Handler<CustomerConnected> for WebchatChannel {
    type Result = ();

    fn handle(&mut self, msg: CustomerConnected, ctx: &mut Context<Self>) {
        self.idle.remove(&msg.session);
        let Some(s) = self.sessions.get_mut(&msg.session) else {
            msg.link.close(
                actix_web_actors::ws::CloseCode::Policy,
                "unknown webchat session",
            );
            return;
        };
        let max = self.broker.config.sockets_per_session;
        if max > 0 && s.sockets.len() >= max {
            // Checked at the upgrade already (`SocketsOf`); two racing
            // upgrades can both pass there, not here.
            let e = too_many_sockets(max);
            let _ = msg.link.send(e.to_frame(None), &self.broker.metrics);
            msg.link
                .close(actix_web_actors::ws::CloseCode::Policy, "rate_limited");
            self.watch_idle(&msg.session, ctx);
            return;
        }
        let socket = msg.link.id;
        self.away.remove(&msg.session);
        match s.latest.as_ref().map(|(_, conv)| conv.clone()) {
            Some(conv) => {
                s.add_socket(Socket {
                    link: msg.link,
                    ready: false,
                });
                conv.do_send(SendHistory { socket });
            }
            None => {
                s.add_socket(Socket {
                    link: msg.link,
                    ready: true,
                });
                let empty = Event::History {
                    conversation_id: None,
                    ended: false,
                    messages: Cow::Borrowed(&[]),
                    has_earlier: false,
                }
                .frame();
                self.send_to(&msg.session, socket, empty);
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CustomerDisconnected {
    pub session: Id,
    pub socket: SocketId,
}

impl Handler<CustomerDisconnected> for WebchatChannel {
    type Result = ();

    fn handle(&mut self, msg: CustomerDisconnected, ctx: &mut Context<Self>) {
        if self.broker.draining() {
            // Closed by the shutdown, not gone: no away or idle clock.
            return;
        }
        let grace = self.broker.config.customer_grace;
        if let Some(s) = self.sessions.get_mut(&msg.session) {
            s.sockets.retain(|sock| sock.link.id != msg.socket);
            if s.sockets.is_empty() && s.open().is_some() && !self.away.contains(&msg.session) {
                self.away
                    .insert(msg.session.clone(), std::time::Instant::now() + grace, ());
                self.away.arm(ctx, WebchatChannel::grace_ended);
            }
        }
        self.watch_idle(&msg.session, ctx);
    }
}

impl WebchatChannel {
    /// The away timer fired: conversations whose customer did not come back
    /// within the grace period hear that the customer left.
    fn grace_ended(&mut self, ctx: &mut Context<Self>) {
        for (session, ()) in self.away.take_expired() {
            if let Some(s) = self.sessions.get(&session) {
                if let (true, Some((_, conv))) = (s.sockets.is_empty(), s.open()) {
                    conv.do_send(CustomerAbandoned);
                }
            }
        }
        self.away.arm(ctx, WebchatChannel::grace_ended);
    }
}

/// A command from a customer socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromCustomer {
    pub session: Id,
    pub socket: SocketId,
    pub command: CustomerCommand,
}

impl Handler<FromCustomer> for WebchatChannel {
    type Result = ();

    fn handle(&mut self, msg: FromCustomer, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get(&msg.session) else {
            return;
        };
        let open = s.open().cloned();
        match msg.command {
            CustomerCommand::Message {
                text,
                attachments,
                client_msg_id,
                reference,
            } => {
                let per_second = self.broker.config.conversation_messages_per_second;
                if let Err(e) = self.message_rate.check(&msg.session, || {
                    format!(
                        "at most {per_second} messages per second in one conversation; \
                         this one was not taken"
                    )
                }) {
                    self.send_to(&msg.session, msg.socket, e.to_frame(reference.as_deref()));
                    return;
                }
                let message = CustomerMessage {
                    socket: Some(msg.socket),
                    author: crate::protocol::Author::Customer,
                    text,
                    attachments,
                    provided: Vec::new(),
                    client_msg_id,
                    reference,
                };
                match open {
                    Some((_, conv)) => conv.do_send(message),
                    None => self.start_inbound(&msg.session, message, ctx),
                }
            }
            CustomerCommand::Typing { .. } => {
                if let Some((_, conv)) = open {
                    conv.do_send(CustomerTyping);
                }
            }
            CustomerCommand::Leave { reference } => match open {
                Some((_, conv)) => conv.do_send(CustomerLeft {
                    socket: Some(msg.socket),
                    reference,
                }),
                None => {
                    let f = error_frame(
                        "invalid_state",
                        "there is no open conversation to leave",
                        reference.as_deref(),
                    );
                    self.send_to(&msg.session, msg.socket, f);
                }
            },
        }
    }
}

impl WebchatChannel {
    /// A first message with no open conversation: validate, then open one
    /// (linked to the last, if any).
    fn start_inbound(&mut self, session: &Id, message: CustomerMessage, ctx: &mut Context<Self>) {
        if let Err(e) = validate_content(
            &self.broker,
            ChannelKind::Webchat,
            &message.text,
            &message.attachments,
            Sender::Customer(session),
            &|_| false,
        ) {
            if let Some(socket) = message.socket {
                self.send_to(session, socket, e.to_frame(message.reference.as_deref()));
            }
            return;
        }
        let previous = self
            .sessions
            .get(session)
            .and_then(|s| s.latest.as_ref().map(|(id, _)| id.clone()));
        // Sockets see the new conversation's events live: its history starts
        // with the message they are about to be acknowledged for.
        if let Some(s) = self.sessions.get_mut(session) {
            for sock in &mut s.sockets {
                sock.ready = true;
            }
        }
        self.open_conversation(session, Opening::Inbound(message), previous, None, ctx);
    }
}

impl Handler<OpenOutbound> for WebchatChannel {
    type Result = Result<(Id, Addr<Conversation>), ApiError>;

    fn handle(&mut self, msg: OpenOutbound, ctx: &mut Context<Self>) -> Self::Result {
        if msg.template.is_some() {
            return Err(ApiError::BadRequest(
                "templates are only for whatsapp".into(),
            ));
        }
        let session: Id = msg.to.as_str().into();
        let s = self.sessions.get(&session).ok_or_else(|| {
            ApiError::NotFound(format!("webchat session {} does not exist", msg.to))
        })?;
        if let Some((open, _)) = s.open() {
            return Err(ApiError::Conflict(format!(
                "webchat session {} already has an open conversation ({open})",
                msg.to
            )));
        }
        let previous = s.latest.as_ref().map(|(id, _)| id.clone());
        let task_id = msg.task_id.clone();
        let opening = msg.into_opening();
        if let Some(s) = self.sessions.get_mut(&session) {
            for sock in &mut s.sockets {
                sock.ready = true;
            }
        }
        self.open_conversation(&session, opening, previous, Some(task_id), ctx)
            .ok_or_else(|| ApiError::NotFound(format!("webchat session {session} does not exist")))
    }
}

impl Handler<ToCustomer> for WebchatChannel {
    type Result = ();

    fn handle(&mut self, msg: ToCustomer, ctx: &mut Context<Self>) {
        let session = msg.customer;
        match msg.event {
            CustomerEvent::History { socket, frame } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    for sock in &mut s.sockets {
                        if sock.link.id == socket {
                            sock.ready = true;
                        }
                    }
                }
                self.send_to(&session, socket, frame);
            }
            CustomerEvent::Direct { socket, frame } => self.send_to(&session, socket, frame),
            CustomerEvent::Accepted { socket, ack, frame } => {
                self.accepted(&session, socket, ack, frame)
            }
            CustomerEvent::Broadcast(frame) | CustomerEvent::Message { frame, .. } => {
                self.broadcast(&session, frame)
            }
            CustomerEvent::Ended(frame) => {
                self.apply(
                    WebchatEvent::ConversationEnded {
                        session: session.clone(),
                        conversation: msg.conversation_id,
                    },
                    None,
                );
                self.broadcast(&session, frame);
            }
            CustomerEvent::Forgotten => {
                self.apply(
                    WebchatEvent::ConversationForgotten {
                        session: session.clone(),
                        conversation: msg.conversation_id,
                    },
                    None,
                );
                if self.is_idle(&session) {
                    // Nothing left to show: the session and its token go too.
                    self.apply(WebchatEvent::SessionForgotten { session }, None);
                }
            }
            CustomerEvent::Reopen(message) => {
                let open = self.sessions.get(&session).and_then(|s| s.open().cloned());
                match open {
                    // Another message already opened the follow-up conversation.
                    Some((_, conv)) => conv.do_send(*message),
                    None => self.start_inbound(&session, *message, ctx),
                }
            }
        }
    }
}

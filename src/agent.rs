//! One actor per agent: its profile, activity, open tasks (as the desktop sees
//! them), its desktop socket and the disconnect-grace timer. It turns desktop
//! commands into messages for the router (accept, reject, activity, outbound,
//! transfer, transfer.cancel, park) and for conversations (send, typing, end,
//! complete), and forwards what
//! conversations and the router tell it to the socket.
//!
//! Its journaled state (profile, activity, open tasks) is an [`AgentState`],
//! changed only by [`AgentState::apply`]: the actor, recovery and snapshots
//! share it.
//!
//! Capacity and load are *not* decided here: the router owns them. The load
//! this actor reports is the count of tasks it has been told about.
//!
//! Handles: [`Connect`], [`Disconnect`], [`FromDesk`], [`ToAgent`],
//! [`Rescind`], [`ActivitySet`], [`SupervisorActivity`], [`UpdateProfile`],
//! [`TokenRotated`], [`Retire`].

use std::borrow::Cow;
use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws::CloseCode;
use serde::{Deserialize, Serialize};

use crate::attachments::Sender;
use crate::channel::{OpenOutbound, Template};
use crate::conversation::{
    validate_content, AgentComplete, AgentEnd, AgentSend, AgentTyping, Conversation, Resync,
};
use crate::error::ApiError;
use crate::http::same_secret;
use crate::ids::IdMap;
use crate::journal::record::{self, RecordRef};
use crate::protocol::{
    ok_frame, Activity, AgentCommand, AgentView, ChannelKind, Customer, Event, Frame, Id,
    PerChannel, TaskState, TaskView, TransferMode,
};
use crate::router::{self, RescindReason};
use crate::wiring::Broker;
use crate::ws::{LinkDown, SocketLink};

pub use crate::profile::{
    valid_capacity, valid_id, valid_name, valid_token, AgentProfile, MAX_CAPACITY, MIN_TOKEN_LEN,
};

/// Close reason of a desktop socket whose agent's token was rotated
/// (`POST /v1/agents/{id}/token`); code 1008.
pub const TOKEN_ROTATED: &str = "token rotated";

/// Close reason of a desktop socket whose token reached the end of its
/// lifetime (`agent_token_ttl`); code 1008.
pub const TOKEN_EXPIRED: &str = "token expired";
/// Close reason of a desktop socket whose agent was deleted; code 1000.
pub const AGENT_DELETED: &str = "agent deleted";
/// Close reason of a desk whose agent a supervisor set `offline`.
pub const LOGGED_OUT: &str = "logged out by a supervisor";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenTask {
    view: TaskView,
    /// After a reconnect, until the conversation re-sends the task with its
    /// history: live frames for it are dropped (the history will hold them).
    #[serde(skip)]
    resyncing: bool,
}

/// What an agent actor holds that its events change, apart from the actor's
/// wiring (socket, timers): plain data, so a snapshot can hold it and the
/// compactor can apply events to it without an actor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentState {
    pub profile: AgentProfile,
    pub activity: Activity,
    tasks: IdMap<Id, OpenTask>,
    by_conversation: IdMap<Id, Id>,
}

impl AgentState {
    /// A new agent's state: offline, no task.
    pub fn new(profile: AgentProfile) -> Self {
        AgentState {
            profile,
            activity: Activity::Offline,
            tasks: IdMap::default(),
            by_conversation: IdMap::default(),
        }
    }

    /// The one place an agent's state changes (the live actor's `apply`,
    /// journal replay and the snapshot compactor all come here).
    pub fn apply(&mut self, event: AgentEvent) {
        match event {
            AgentEvent::ProfileChanged(p) => self.profile = p,
            AgentEvent::ActivityChanged(a) => self.activity = a,
            AgentEvent::TaskTracked(view) => {
                self.by_conversation
                    .insert(view.conversation_id.clone(), view.id.clone());
                self.tasks.insert(
                    view.id.clone(),
                    OpenTask {
                        view,
                        resyncing: false,
                    },
                );
            }
            AgentEvent::TaskStateChanged { task_id, state } => {
                if let Some(t) = self.tasks.get_mut(&task_id) {
                    t.view.state = state;
                }
            }
            AgentEvent::TaskDropped { task_id } => {
                if let Some(t) = self.tasks.remove(&task_id) {
                    self.by_conversation.remove(&t.view.conversation_id);
                }
            }
        }
    }

    /// Its open tasks' ids (for tests and checks).
    pub fn task_ids(&self) -> impl Iterator<Item = &Id> {
        self.tasks.keys()
    }
}

/// Every change the agent actor makes to its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AgentEvent {
    ProfileChanged(AgentProfile),
    ActivityChanged(Activity),
    TaskTracked(TaskView),
    TaskStateChanged { task_id: Id, state: TaskState },
    TaskDropped { task_id: Id },
}

pub struct Agent {
    broker: Arc<Broker>,
    state: AgentState,
    session: Option<SocketLink>,
    /// The token the current desktop authenticated with (`None` for
    /// in-process desks): a rotation closes it.
    session_token: Option<String>,
    /// Running while disconnected and within the grace period.
    grace: Option<SpawnHandle>,
    /// Rebuilt from the journal: its disconnect grace starts as it starts.
    restored: bool,
}

impl Agent {
    /// Register a new agent: start its actor on a shard, index it under its
    /// id and token, tell the router. The one way agents are made:
    /// `POST /v1/agents`, `[[agents]]` in the configuration file and the
    /// simulated agents all come here. `token` is generated when `None`.
    /// Returns the token; `conflict` if the id is taken.
    pub fn create(
        broker: &Arc<Broker>,
        profile: AgentProfile,
        token: Option<String>,
    ) -> Result<String, ApiError> {
        let token = token.unwrap_or_else(crate::ids::token);
        let profile_id = profile.id.clone();
        let recorded = profile.clone();
        broker.insert_agent(profile.id.clone(), token.clone(), || {
            let actor = Agent::new(broker, profile.clone());
            let addr = broker.shards.start(actor);
            broker.router.do_send(router::UpsertAgent {
                id: profile.id,
                name: profile.name,
                capacity: profile.capacity,
                skills: profile.skills,
                addr: addr.clone(),
            });
            addr
        })?;
        if let Some(journal) = &broker.journal {
            let expires_at = broker.agent(&profile_id).and_then(|e| e.expires_at);
            record::write(
                Some(journal),
                RecordRef::AgentCreated {
                    profile: &recorded,
                    token: &token,
                    expires_at,
                },
            );
        }
        Ok(token)
    }

    /// The actor for a profile, offline, not yet started.
    fn new(broker: &Arc<Broker>, profile: AgentProfile) -> Self {
        Agent {
            broker: broker.clone(),
            state: AgentState::new(profile),
            session: None,
            session_token: None,
            grace: None,
            restored: false,
        }
    }

    /// An agent rebuilt from the journal (its state replayed, or read from
    /// a snapshot), not yet started: disconnected, its disconnect grace
    /// running from the start.
    pub fn restored(broker: &Arc<Broker>, state: AgentState) -> Self {
        Agent {
            broker: broker.clone(),
            state,
            session: None,
            session_token: None,
            grace: None,
            restored: true,
        }
    }

    /// Its id.
    pub fn id(&self) -> &Id {
        &self.state.profile.id
    }

    /// Whether a desktop that authenticated with `token` may stay: `None` if
    /// so, else the close code and reason to give it.
    fn stale_credential(&self, token: &str) -> Option<(CloseCode, &'static str)> {
        match self.broker.agent(&self.state.profile.id) {
            None => Some((CloseCode::Normal, AGENT_DELETED)),
            Some(entry) if !same_secret(&entry.token, token) => {
                Some((CloseCode::Policy, TOKEN_ROTATED))
            }
            Some(entry) if entry.expired() => Some((CloseCode::Policy, TOKEN_EXPIRED)),
            Some(_) => None,
        }
    }

    /// The one place agent state changes: written to the journal, then
    /// applied.
    fn apply(&mut self, event: AgentEvent) {
        record::write(
            self.broker.journal.as_ref(),
            RecordRef::Agent {
                id: &self.state.profile.id,
                event: &event,
            },
        );
        self.state.apply(event);
    }

    fn view(&self) -> AgentView {
        let mut load = PerChannel::default();
        for t in self.state.tasks.values() {
            *load.get_mut(t.view.channel) += 1;
        }
        AgentView {
            id: self.state.profile.id.clone(),
            name: self.state.profile.name.clone(),
            capacity: self.state.profile.capacity,
            skills: self.state.profile.skills.clone(),
            activity: self.state.activity,
            connected: self.session.is_some(),
            load,
        }
    }

    /// Hand a frame to the desktop, applying the slow-consumer policy.
    fn push(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        let Some(link) = &self.session else {
            // Disconnected: the history keeps everything; the desktop gets it
            // back with `task.assigned` on reconnect.
            return;
        };
        if let Err(down) = link.send(frame, &self.broker.metrics) {
            if down == LinkDown::Slow {
                tracing::warn!(agent = %self.state.profile.id, "desktop socket is a slow consumer; disconnected");
            }
            let id = link.id;
            self.session_lost(id, ctx);
        }
    }

    fn push_error(&mut self, err: ApiError, reference: Option<&str>, ctx: &mut Context<Self>) {
        self.push(err.to_frame(reference), ctx);
    }

    fn session_lost(&mut self, session_id: u64, ctx: &mut Context<Self>) {
        if self.session.as_ref().map(|s| s.id) != Some(session_id) {
            return;
        }
        self.session = None;
        self.session_token = None;
        self.broker.router.do_send(router::AgentPresence {
            id: self.state.profile.id.clone(),
            connected: false,
            activity: self.state.activity,
        });
        self.start_grace(ctx);
    }

    /// Disconnected: the tasks stay for `disconnect_grace`, then go back to
    /// the queue and the agent is offline.
    fn start_grace(&mut self, ctx: &mut Context<Self>) {
        let grace = self.broker.config.disconnect_grace;
        self.grace = Some(ctx.run_later(grace, |act, _| {
            act.grace = None;
            act.apply(AgentEvent::ActivityChanged(Activity::Offline));
            act.broker.router.do_send(router::GraceExpired {
                id: act.state.profile.id.clone(),
            });
        }));
    }

    /// The conversation this agent holds, or why not.
    fn conversation(&self, conversation_id: &str) -> Result<Addr<Conversation>, ApiError> {
        if self.state.by_conversation.contains_key(conversation_id) {
            if let Some(addr) = self.broker.conversation(conversation_id) {
                return Ok(addr);
            }
        }
        if self.broker.conversation_exists(conversation_id) {
            Err(ApiError::NotYourTask(format!(
                "conversation {conversation_id} is not assigned to you"
            )))
        } else {
            Err(ApiError::NotFound(format!(
                "conversation {conversation_id} does not exist"
            )))
        }
    }

    /// Run a router request and report its error on the socket (success
    /// shows in the frames that follow).
    fn ask_router<M>(&mut self, msg: M, reference: Option<String>, ctx: &mut Context<Self>)
    where
        M: Message<Result = Result<(), ApiError>> + Send + 'static,
        router::Router: Handler<M>,
    {
        let fut = self.broker.router.send(msg);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res.map_err(ApiError::mailbox).and_then(|r| r) {
                act.push_error(e, reference.as_deref(), ctx);
            }
        }));
    }

    /// [`Agent::ask_router`], answering `ok` on success when `ok` is set.
    fn ask_router_then<M>(
        &mut self,
        msg: M,
        reference: Option<String>,
        ok: bool,
        ctx: &mut Context<Self>,
    ) where
        M: Message<Result = Result<(), ApiError>> + Send + 'static,
        router::Router: Handler<M>,
    {
        let fut = self.broker.router.send(msg);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res.map_err(ApiError::mailbox).and_then(|r| r) {
                Ok(()) if ok => act.push(ok_frame(reference.as_deref()), ctx),
                Ok(()) => {}
                Err(e) => act.push_error(e, reference.as_deref(), ctx),
            }
        }));
    }

    fn command(&mut self, cmd: AgentCommand, ctx: &mut Context<Self>) {
        let me = self.state.profile.id.clone();
        match cmd {
            AgentCommand::Activity {
                activity: Activity::NotResponding,
                reference,
            } => self.push_error(
                ApiError::BadRequest(
                    "not_responding is set by the broker; choose available, break or offline"
                        .into(),
                ),
                reference.as_deref(),
                ctx,
            ),
            AgentCommand::Activity {
                activity,
                reference,
            } => {
                self.apply(AgentEvent::ActivityChanged(activity));
                self.broker
                    .router
                    .do_send(router::AgentActivity { id: me, activity });
                self.push(ok_frame(reference.as_deref()), ctx);
            }
            AgentCommand::Accept { task_id, reference } => {
                let msg = router::Accept {
                    agent_id: me,
                    task_id,
                    reference: reference.clone(),
                };
                self.ask_router(msg, reference, ctx);
            }
            AgentCommand::Reject { task_id, reference } => {
                let dropped: Id = task_id.as_str().into();
                let fut = self.broker.router.send(router::Reject {
                    agent_id: me,
                    task_id,
                });
                ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                    match res.map_err(ApiError::mailbox).and_then(|r| r) {
                        // The desk forgets the offer too: a reconnect's
                        // `hello` must not list it.
                        Ok(()) => {
                            act.apply(AgentEvent::TaskDropped { task_id: dropped });
                            act.push(ok_frame(reference.as_deref()), ctx);
                        }
                        Err(e) => act.push_error(e, reference.as_deref(), ctx),
                    }
                }));
            }
            AgentCommand::Send {
                conversation_id,
                text,
                attachments,
                client_msg_id,
                canned_id,
                reference,
            } => match self.conversation(&conversation_id) {
                Ok(_) if canned_id.is_some() && !text.is_empty() => self.push_error(
                    ApiError::BadRequest(
                        "send takes text or canned_id, not both: leave text out to send a \
                         canned response"
                            .into(),
                    ),
                    reference.as_deref(),
                    ctx,
                ),
                Ok(conv) => conv.do_send(AgentSend {
                    agent_id: me,
                    text,
                    attachments,
                    client_msg_id,
                    canned_id,
                    reference,
                }),
                Err(e) => self.push_error(e, reference.as_deref(), ctx),
            },
            AgentCommand::Typing {
                conversation_id,
                reference,
            } => match self.conversation(&conversation_id) {
                Ok(conv) => conv.do_send(AgentTyping {
                    agent_id: me,
                    reference,
                }),
                Err(e) => self.push_error(e, reference.as_deref(), ctx),
            },
            AgentCommand::End {
                conversation_id,
                reference,
            } => match self.conversation(&conversation_id) {
                Ok(conv) => conv.do_send(AgentEnd {
                    agent_id: me,
                    reference,
                }),
                Err(e) => self.push_error(e, reference.as_deref(), ctx),
            },
            AgentCommand::Complete {
                task_id,
                disposition,
                notes,
                reference,
            } => {
                let conv = match self.state.tasks.get(task_id.as_str()) {
                    Some(t) => self.conversation(&t.view.conversation_id),
                    None if self.broker.task_exists(task_id.as_str()) => Err(
                        ApiError::NotYourTask(format!("task {task_id} is not yours")),
                    ),
                    None => Err(ApiError::UnknownTask(task_id)),
                };
                match conv {
                    Ok(conv) => conv.do_send(AgentComplete {
                        agent_id: me,
                        disposition,
                        notes,
                        reference,
                    }),
                    Err(e) => self.push_error(e, reference.as_deref(), ctx),
                }
            }
            AgentCommand::Transfer {
                task_id,
                to,
                mode,
                note,
                reference,
            } => {
                let msg = router::TransferTask {
                    by: router::TransferBy::Agent(me),
                    task_id,
                    to,
                    mode,
                    note,
                    reference: reference.clone(),
                };
                // Cold: `task.transferred` carries the `ref`; warm: `ok`
                // once the target is offered the task.
                let warm = mode == TransferMode::Warm;
                self.ask_router_then(msg, reference, warm, ctx);
            }
            AgentCommand::TransferCancel { task_id, reference } => {
                let msg = router::CancelTransfer {
                    agent_id: me,
                    task_id,
                };
                self.ask_router_then(msg, reference, true, ctx);
            }
            AgentCommand::Park {
                task_id,
                until,
                reference,
            } => {
                let msg = router::ParkTask {
                    agent_id: me,
                    task_id,
                    until,
                    reference: reference.clone(),
                };
                self.ask_router(msg, reference, ctx);
            }
            AgentCommand::Outbound {
                channel,
                to,
                text,
                attachments,
                client_msg_id,
                template,
                queue,
                reference,
            } => self.outbound(
                OutboundRequest {
                    channel,
                    to,
                    text,
                    attachments,
                    client_msg_id,
                    template,
                    queue,
                },
                reference,
                ctx,
            ),
        }
    }

    /// Start a conversation: reserve capacity with the router, then have the
    /// channel open it (already assigned to this agent).
    fn outbound(
        &mut self,
        req: OutboundRequest,
        reference: Option<String>,
        ctx: &mut Context<Self>,
    ) {
        let target = match self.broker.channels.outbound(req.channel, &req.to) {
            Ok(t) => t,
            Err(e) => return self.push_error(e, reference.as_deref(), ctx),
        };
        let template_only =
            req.template.is_some() && req.text.trim().is_empty() && req.attachments.is_empty();
        let attachments = if template_only {
            Ok(Vec::new())
        } else {
            validate_content(
                &self.broker,
                req.channel,
                &req.text,
                &req.attachments,
                Sender::Agent(&self.state.profile.id),
                &|_| false,
            )
        };
        let attachments = match attachments {
            Ok(a) => a,
            Err(e) => return self.push_error(e, reference.as_deref(), ctx),
        };
        let broker = self.broker.clone();
        let task_id = broker.ids.task();
        let open = OpenOutbound {
            to: req.to,
            task_id: task_id.clone(),
            agent_id: self.state.profile.id.clone(),
            agent_name: self.state.profile.name.clone(),
            text: req.text,
            attachments,
            client_msg_id: req.client_msg_id,
            reference: reference.clone(),
            template: req.template,
            queue: req
                .queue
                .clone()
                .unwrap_or_else(|| crate::protocol::DEFAULT_QUEUE.to_owned()),
        };
        let reserve = router::ReserveOutbound {
            agent_id: self.state.profile.id.clone(),
            task_id: task_id.clone(),
            channel: req.channel,
            customer: Customer {
                name: open.to.clone(),
                address: open.to.clone(),
            },
            queue: req.queue,
        };
        let fut = async move {
            broker
                .router
                .send(reserve)
                .await
                .map_err(ApiError::mailbox)??;
            let opened = target
                .send(open)
                .await
                .map_err(ApiError::mailbox)
                .and_then(|r| r);
            // The conversation binds itself to the reservation when it starts.
            match opened {
                Ok(_) => Ok(()),
                Err(e) => {
                    broker.router.do_send(router::TaskClosed {
                        task_id,
                        outcome: router::Outcome::Canceled,
                    });
                    Err(e)
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = res {
                act.push_error(e, reference.as_deref(), ctx);
            }
        }));
    }
}

/// An agent's `outbound` command, minus its `ref`.
struct OutboundRequest {
    channel: ChannelKind,
    to: String,
    text: String,
    attachments: Vec<String>,
    client_msg_id: Option<String>,
    template: Option<Template>,
    queue: Option<String>,
}

impl Actor for Agent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Conversations and the router send with do_send; the bound matters
        // only for `send` callers (HTTP), which may wait.
        ctx.set_mailbox_capacity(1024);
        if self.restored {
            self.drop_stale_offers();
        }
        if self.restored && self.session.is_none() {
            self.start_grace(ctx);
        }
    }
}

impl Agent {
    /// Restored from the journal, before it starts: make its tasks what the
    /// conversations' own states say this agent holds (assigned or in
    /// wrap-up). Each actor records its side of a change after the other
    /// (the conversation an assignment, or the state a task moves to,
    /// before the agent; an end before the agent drops the task), so a
    /// crash between the two left the agent out of step:
    /// - without a task the router and the conversation give it: its desk
    ///   never showed it, the agent could neither answer nor end it, and
    ///   the customer waited for ever. Tracked again (`TaskTracked`, also
    ///   for a task it shows in another state).
    /// - with a task its conversation has since finished or given to
    ///   someone else: shown in `hello`, counted in its load. Dropped
    ///   (`TaskDropped`).
    pub fn settle_tasks(&mut self, held: Vec<TaskView>) {
        let stale: Vec<Id> = self
            .state
            .tasks
            .values()
            .filter(|t| matches!(t.view.state, TaskState::Assigned | TaskState::Wrapping))
            .filter(|t| !held.iter().any(|h| h.id == t.view.id))
            .map(|t| t.view.id.clone())
            .collect();
        for task_id in stale {
            tracing::info!(
                agent = %self.state.profile.id,
                task = %task_id,
                "a task the agent's records kept after its conversation let it go is dropped"
            );
            self.apply(AgentEvent::TaskDropped { task_id });
        }
        for view in held {
            let tracked = self
                .state
                .tasks
                .get(&view.id)
                .is_some_and(|t| t.view.state == view.state);
            if !tracked {
                tracing::info!(
                    agent = %self.state.profile.id,
                    task = %view.id,
                    state = ?view.state,
                    "a task the agent's records missed is back on its desk"
                );
                self.apply(AgentEvent::TaskTracked(view));
            }
        }
    }

    /// Restored from the journal: the router takes back every offer at a
    /// restart (its `Restored`), so an offer this agent still holds is stale.
    /// It can be (a crash, or a failover, between the router's record that
    /// an offer ended and this agent's): without this the desk would be
    /// shown, on every reconnect, an offer of a task the router has since
    /// given to someone else.
    fn drop_stale_offers(&mut self) {
        let offers: Vec<Id> = self
            .state
            .tasks
            .values()
            .filter(|t| t.view.state == TaskState::Reserved)
            .map(|t| t.view.id.clone())
            .collect();
        for task_id in offers {
            self.apply(AgentEvent::TaskDropped { task_id });
        }
    }
}

impl Handler<crate::ws::CloseAll> for Agent {
    type Result = ();

    /// The desktop is closed; the agent stays as it is (the journal keeps
    /// it, and the restarted broker gives it its disconnect grace).
    fn handle(&mut self, msg: crate::ws::CloseAll, _: &mut Context<Self>) {
        if let Some(link) = self.session.take() {
            link.close(msg.code, &msg.reason);
        }
        self.session_token = None;
    }
}

/// A desktop socket opened for this agent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub link: SocketLink,
    /// The agent token the socket was opened with, checked again here: it may
    /// have been rotated since the upgrade. `None` for in-process desks.
    pub token: Option<String>,
}

impl Handler<Connect> for Agent {
    type Result = ();

    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) {
        if let Some(token) = &msg.token {
            if let Some((code, reason)) = self.stale_credential(token) {
                msg.link.close(code, reason);
                return;
            }
        }
        if let Some(old) = self.session.take() {
            old.close(CloseCode::Policy, "replaced by a new connection");
        }
        // Back within the grace period: keep the activity. Otherwise a fresh
        // connection starts offline until the agent says otherwise.
        if let Some(grace) = self.grace.take() {
            ctx.cancel_future(grace);
        } else {
            self.apply(AgentEvent::ActivityChanged(Activity::Offline));
        }
        self.session = Some(msg.link);
        // A token with a lifetime closes the desk when it ends: check again
        // then (a rotation meanwhile makes that check a no-op for this desk,
        // which was closed already, or for a newer desk with a newer token).
        if msg.token.is_some() {
            let expires = self
                .broker
                .agent(&self.state.profile.id)
                .and_then(|e| e.expires_at)
                .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok());
            if let Some(left) = expires {
                ctx.run_later(left + std::time::Duration::from_millis(10), |agent, ctx| {
                    agent.close_if_stale(ctx);
                });
            }
        }
        self.session_token = msg.token;
        self.broker.router.do_send(router::AgentPresence {
            id: self.state.profile.id.clone(),
            connected: true,
            activity: self.state.activity,
        });
        let mut tasks: Vec<TaskView> = self.state.tasks.values().map(|t| t.view.clone()).collect();
        tasks.sort_by_key(|t| t.created_at);
        let hello = Event::Hello {
            agent: Cow::Owned(self.view()),
            activity: self.state.activity,
            tasks,
        }
        .frame();
        self.push(hello, ctx);
        let me = self.state.profile.id.clone();
        for task in self.state.tasks.values_mut() {
            if matches!(task.view.state, TaskState::Assigned | TaskState::Wrapping) {
                task.resyncing = true;
                if let Some(conv) = self.broker.conversation(&task.view.conversation_id) {
                    conv.do_send(Resync {
                        agent_id: me.clone(),
                    });
                }
            }
        }
    }
}

/// The desktop socket closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub session_id: u64,
}

impl Handler<Disconnect> for Agent {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        self.session_lost(msg.session_id, ctx);
    }
}

/// A command from the desktop socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromDesk {
    pub session_id: u64,
    pub command: AgentCommand,
}

impl Handler<FromDesk> for Agent {
    type Result = ();

    fn handle(&mut self, msg: FromDesk, ctx: &mut Context<Self>) {
        // A replaced socket's late frames are ignored.
        if self.session.as_ref().map(|s| s.id) == Some(msg.session_id) {
            self.command(msg.command, ctx);
        }
    }
}

/// What a frame from a conversation means for the agent's task list.
#[derive(Debug, Serialize, Deserialize)]
pub enum AgentFrameKind {
    Offered(TaskView),
    Assigned(TaskView),
    Resync(TaskView),
    /// A customer's message or typing, or a note for both sides: only to
    /// an agent that holds the task.
    Message,
    /// The agent's own message, echoed: the answer to its desk's command.
    Echo,
    Ended,
    Completed,
    Rescinded,
    /// The agent let go of the task (transferred, parked): dropped, and
    /// nothing more of the conversation reaches it.
    Transferred,
    Parked,
    /// Errors and other replies: always delivered.
    Other,
}

/// A frame from one of the agent's conversations.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct ToAgent {
    pub conversation_id: Id,
    pub task_id: Id,
    pub kind: AgentFrameKind,
    pub frame: Frame,
}

impl Handler<ToAgent> for Agent {
    type Result = ();

    fn handle(&mut self, msg: ToAgent, ctx: &mut Context<Self>) {
        let resyncing = self
            .state
            .tasks
            .get(&msg.task_id)
            .is_some_and(|t| t.resyncing);
        match msg.kind {
            AgentFrameKind::Offered(view) | AgentFrameKind::Assigned(view) => {
                self.apply(AgentEvent::TaskTracked(view))
            }
            AgentFrameKind::Resync(view) => self.apply(AgentEvent::TaskTracked(view)),
            AgentFrameKind::Message | AgentFrameKind::Echo if resyncing => return,
            // Of a task this agent no longer holds: the router took it back
            // (past the disconnect grace, set offline) and told this agent
            // first, while the conversation, not told yet, still sent here.
            // Its desk does not hold the conversation, so it is not told;
            // the message is stored, and whoever takes the task next gets
            // it in the history.
            AgentFrameKind::Message if !self.state.tasks.contains_key(&msg.task_id) => return,
            AgentFrameKind::Message | AgentFrameKind::Echo | AgentFrameKind::Other => {}
            AgentFrameKind::Ended => {
                self.apply(AgentEvent::TaskStateChanged {
                    task_id: msg.task_id.clone(),
                    state: TaskState::Wrapping,
                });
                if resyncing {
                    return;
                }
            }
            AgentFrameKind::Completed
            | AgentFrameKind::Rescinded
            | AgentFrameKind::Transferred
            | AgentFrameKind::Parked => self.apply(AgentEvent::TaskDropped {
                task_id: msg.task_id.clone(),
            }),
        }
        self.push(msg.frame, ctx);
    }
}

/// Router: a task left this agent (offer timeout, customer left, re-queued).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Rescind {
    pub task_id: Id,
    pub reason: RescindReason,
}

impl Handler<Rescind> for Agent {
    type Result = ();

    fn handle(&mut self, msg: Rescind, ctx: &mut Context<Self>) {
        self.apply(AgentEvent::TaskDropped {
            task_id: msg.task_id.clone(),
        });
        let f = Event::TaskRescinded {
            task_id: msg.task_id,
            reason: msg.reason,
        }
        .frame();
        self.push(f, ctx);
    }
}

/// Router: the broker set the agent's activity (`not_responding` after
/// missed offers); the desktop is told why.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ActivitySet {
    pub activity: Activity,
    pub reason: &'static str,
}

impl Handler<ActivitySet> for Agent {
    type Result = ();

    fn handle(&mut self, msg: ActivitySet, ctx: &mut Context<Self>) {
        self.apply(AgentEvent::ActivityChanged(msg.activity));
        let frame = Event::ActivityChanged {
            activity: msg.activity,
            reason: Cow::Borrowed(msg.reason),
        }
        .frame();
        self.push(frame, ctx);
    }
}

/// `PATCH /v1/agents/{id}` with `activity`: a supervisor sets the agent's
/// activity. The desk is told (`activity.changed`, reason `supervisor`);
/// `offline` also logs the agent out: its desk is closed with
/// [`LOGGED_OUT`], no disconnect grace runs, and the router takes back its
/// offers and tasks as when an agent goes offline itself.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct SupervisorActivity {
    pub activity: Activity,
}

impl Handler<SupervisorActivity> for Agent {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: SupervisorActivity, ctx: &mut Context<Self>) -> Self::Result {
        if msg.activity == Activity::NotResponding {
            return Err(ApiError::BadRequest(
                "activity: not_responding is set by the broker; choose available, break or offline"
                    .into(),
            ));
        }
        self.apply(AgentEvent::ActivityChanged(msg.activity));
        let frame = Event::ActivityChanged {
            activity: msg.activity,
            reason: Cow::Borrowed("supervisor"),
        }
        .frame();
        self.push(frame, ctx);
        if msg.activity == Activity::Offline {
            if let Some(grace) = self.grace.take() {
                ctx.cancel_future(grace);
            }
            if let Some(link) = self.session.take() {
                link.close(CloseCode::Normal, LOGGED_OUT);
                self.session_token = None;
                self.broker.router.do_send(router::AgentPresence {
                    id: self.state.profile.id.clone(),
                    connected: false,
                    activity: Activity::Offline,
                });
            }
        }
        self.broker.router.do_send(router::AgentActivity {
            id: self.state.profile.id.clone(),
            activity: msg.activity,
        });
        Ok(())
    }
}

/// `PATCH /v1/agents/{id}`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateProfile {
    pub name: Option<String>,
    pub capacity: Option<PerChannel>,
    pub skills: Option<Vec<String>>,
}

impl Handler<UpdateProfile> for Agent {
    type Result = ();

    fn handle(&mut self, msg: UpdateProfile, ctx: &mut Context<Self>) {
        let mut profile = self.state.profile.clone();
        if let Some(name) = msg.name {
            profile.name = name;
        }
        if let Some(capacity) = msg.capacity {
            profile.capacity = capacity;
        }
        if let Some(skills) = msg.skills {
            profile.skills = skills;
        }
        self.apply(AgentEvent::ProfileChanged(profile.clone()));
        self.broker.router.do_send(router::UpsertAgent {
            id: profile.id,
            name: profile.name,
            capacity: profile.capacity,
            skills: profile.skills,
            addr: ctx.address(),
        });
    }
}

/// `POST /v1/agents/{id}/token`: the broker's token map already holds the new
/// token; a desktop opened with an older one is closed (`1008 token rotated`)
/// and the agent counts as disconnected (grace period) until it comes back
/// with the new token.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TokenRotated;

impl Handler<TokenRotated> for Agent {
    type Result = ();

    fn handle(&mut self, _: TokenRotated, ctx: &mut Context<Self>) {
        self.close_if_stale(ctx);
    }
}

impl Agent {
    /// Close the desktop if the token it was opened with no longer works
    /// (rotated, expired): 1008 with the reason, then the disconnect grace.
    fn close_if_stale(&mut self, ctx: &mut Context<Self>) {
        let stale = match (&self.session, &self.session_token) {
            (Some(link), Some(token)) => self
                .stale_credential(token)
                .map(|(code, reason)| (link.clone(), code, reason)),
            _ => None,
        };
        if let Some((link, code, reason)) = stale {
            link.close(code, reason);
            self.session_lost(link.id, ctx);
        }
    }
}

/// `DELETE /v1/agents/{id}`: close the desktop, hand the tasks back, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl Handler<Retire> for Agent {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        if let Some(link) = self.session.take() {
            link.close(CloseCode::Normal, AGENT_DELETED);
        }
        self.broker.router.do_send(router::RemoveAgent {
            id: self.state.profile.id.clone(),
        });
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    //! The agent actor on a broker of its own (no socket: its desk is a
    //! recorder), where the order of two actors' messages can be set: what
    //! the workflow through a cluster found only about once in 20 runs.

    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use actix::prelude::*;
    use parking_lot::Mutex;

    use super::{Agent, AgentFrameKind, Connect, ToAgent};
    use crate::config::Config;
    use crate::protocol::{ChannelKind, Customer, PerChannel, TaskState, TaskView};
    use crate::ws::{Backlog, CloseSession, Push, SocketLink};

    /// A desk that keeps every frame it is sent.
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<Push> for Recorder {
        type Result = ();

        fn handle(&mut self, msg: Push, _: &mut Self::Context) {
            self.0
                .lock()
                .extend(msg.0.into_iter().map(|f| f.to_string()));
        }
    }

    impl Handler<CloseSession> for Recorder {
        type Result = ();

        fn handle(&mut self, msg: CloseSession, _: &mut Self::Context) {
            self.0.lock().push(format!("closed: {}", msg.reason));
        }
    }

    fn view(task: &str, conversation: &str) -> TaskView {
        let now = SystemTime::now();
        TaskView {
            id: task.into(),
            conversation_id: conversation.into(),
            channel: ChannelKind::Webchat,
            customer: Customer {
                address: "ws_1".into(),
                name: "Dana".into(),
            },
            preview: "hello".into(),
            created_at: now,
            state: TaskState::Assigned,
            queue: crate::protocol::DEFAULT_QUEUE.into(),
            priority: 0,
            waiting_since: now,
            transfers: Vec::new(),
        }
    }

    /// A conversation's frames to an agent can cross from the node that
    /// runs the conversation to the agent's: the frame's bytes as encoded
    /// once, and what it means for the task list.
    #[test]
    fn a_frame_to_an_agent_crosses_between_nodes() {
        let kinds = [
            AgentFrameKind::Offered(crate::protocol::samples::task_view()),
            AgentFrameKind::Assigned(view("tk_1", "cv_1")),
            AgentFrameKind::Resync(view("tk_1", "cv_1")),
            AgentFrameKind::Message,
            AgentFrameKind::Echo,
            AgentFrameKind::Ended,
            AgentFrameKind::Completed,
            AgentFrameKind::Rescinded,
            AgentFrameKind::Transferred,
            AgentFrameKind::Parked,
            AgentFrameKind::Other,
        ];
        for kind in kinds {
            crate::codec::assert_crosses(&frame("tk_1", kind, "é \"quoted\" 🙂"));
        }
    }

    fn frame(task: &str, kind: AgentFrameKind, text: &str) -> ToAgent {
        ToAgent {
            conversation_id: format!("cv_{task}").into(),
            task_id: task.into(),
            kind,
            frame: text.into(),
        }
    }

    #[actix_web::test]
    async fn a_customers_message_reaches_the_desk_only_while_the_agent_holds_the_task() {
        let started = crate::server::start(Config::for_tests()).expect("a broker");
        let broker = started.broker.clone();
        // Its workers' arbiters, where agents run, start with the server.
        actix_web::rt::spawn(started.server);
        let capacity = PerChannel {
            webchat: 2,
            sms: 0,
            whatsapp: 0,
            messenger: 0,
            total: None,
        };
        let profile = crate::profile::AgentProfile::new("alice", None, capacity, Vec::new())
            .expect("a profile");
        let token = Agent::create(&broker, profile, None).expect("created");
        let agent = broker.agent("alice").expect("registered").addr;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let desk = Recorder(seen.clone()).start();
        let link = SocketLink::new(
            crate::ws::next_session_id(),
            desk,
            &Backlog::new(1 << 20),
            None,
        );
        agent
            .send(Connect {
                link,
                token: Some(token),
            })
            .await
            .expect("connected");

        // The agent holds tk_a; tk_b was taken back (or never held).
        let assigned = AgentFrameKind::Assigned(view("tk_a", "cv_tk_a"));
        for msg in [
            frame("tk_a", assigned, "assigned tk_a"),
            frame("tk_b", AgentFrameKind::Message, "message of tk_b"),
            frame("tk_a", AgentFrameKind::Message, "message of tk_a"),
            frame("tk_b", AgentFrameKind::Echo, "echo for tk_b"),
            frame("tk_a", AgentFrameKind::Rescinded, "rescinded tk_a"),
            frame("tk_a", AgentFrameKind::Message, "late message of tk_a"),
            frame("tk_a", AgentFrameKind::Echo, "last"),
        ] {
            agent.send(msg).await.expect("delivered");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !seen.lock().iter().any(|f| f == "last") {
            assert!(std::time::Instant::now() < deadline, "{:?}", seen.lock());
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        let seen: Vec<String> = seen
            .lock()
            .iter()
            .filter(|f| !f.starts_with('{'))
            .cloned()
            .collect();
        assert_eq!(
            seen,
            [
                "assigned tk_a",
                "message of tk_a",
                "echo for tk_b",
                "rescinded tk_a",
                "last"
            ],
            "a customer's message of a task not held is not sent; the agent's own echo always is"
        );
    }
}

//! The registry every actor and HTTP route shares: configuration, actor
//! addresses, id lookups and counters. Built once at start-up, then read-only
//! apart from the lookup maps and the canned-response library (which changes
//! only by its events, see `crate::canned`).
//!
//! It names no actor type: [`Registry`] is generic over a [`Wiring`], which
//! says which actor plays each part (the agents, conversations, router,
//! supervisor hub, and the channels' handles), and `crate::wiring` is the one
//! file that fills it in, as `wiring::Broker`. So this file depends
//! on plain data only (configuration, ids, counters, the attachment store,
//! placement), every actor module depends on it, and it depends on none of
//! them: no import cycle runs through it. Generic, not boxed: each address
//! stays a typed `Addr`, so a lookup or a send costs what it did.
//!
//! The lookup maps are *indexes* (id → address, token → id), private to this
//! module: each entry is written when its actor is created and removed when it
//! goes, through the methods here, so maps that change together change in one
//! place. The two agent maps (`agents`, `agent_tokens`) change only through
//! [`Registry::insert_agent`], [`Registry::remove_agent`] and
//! [`Registry::rotate_agent_token`], which take the `agents` entry first and the
//! `agent_tokens` entry second, so a token always points at a registered agent
//! and an agent's token is always in the token map; a conversation and its
//! task are registered and forgotten together
//! ([`Registry::register_conversation`], [`Registry::forget_conversation`]).
//! Looking an address up in a sharded map beats asking a registry actor, which
//! would put every lookup from every worker thread through one mailbox.
//!
//! Handles nothing itself; defines [`Publish`], which the supervisor hub
//! handles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::attachments::AttachmentStore;
use crate::canned::{CannedLibrary, QueueNames};
use crate::config::Config;
use crate::error::ApiError;
use crate::http::throttle::AuthThrottle;
use crate::ids::{IdGen, IdHasher};
use crate::metrics::Metrics;
use crate::protocol::{Frame, Id};
use crate::shards::Shards;

/// Which actor plays each part of the registry. One implementation, in
/// `crate::wiring`.
pub trait Wiring: 'static {
    /// One per agent.
    type Agent: Actor<Context = Context<Self::Agent>>;
    /// One per conversation.
    type Conversation: Actor<Context = Context<Self::Conversation>>;
    /// The router.
    type Router: Actor<Context = Context<Self::Router>>;
    /// Fans [`Publish`]ed events out to supervisors.
    type Supervisor: Actor<Context = Context<Self::Supervisor>> + Handler<Publish>;
    /// The channels' handles (shards, outbound budgets).
    type Channels;
}

/// One event for every supervisor, encoded once; a supervisor that cannot
/// keep up is disconnected as a slow consumer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub Frame);

/// Create an actor's address before the actor runs, so it can be registered
/// (or handed to other actors) first; call the returned function to start it
/// on `arbiter`.
pub fn prepare<A>(arbiter: &ArbiterHandle) -> (Addr<A>, impl FnOnce(A) + Send)
where
    A: Actor<Context = Context<A>> + Send,
{
    let (tx, rx) = actix::dev::channel::channel::<A>(16);
    let addr = Addr::new(tx);
    let arbiter = arbiter.clone();
    let run = move |actor: A| {
        arbiter.spawn_fn(move || {
            Context::with_receiver(rx).run(actor);
        });
    };
    (addr, run)
}

/// One registered agent: its actor and its credential.
pub struct AgentEntry<A: Actor> {
    pub addr: Addr<A>,
    pub token: String,
    /// When the token stops working (`agent_token_ttl`); `None`: never.
    pub expires_at: Option<SystemTime>,
}

impl<A: Actor> AgentEntry<A> {
    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|t| t <= SystemTime::now())
    }
}

/// What an agent token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentToken {
    Valid(Id),
    /// The agent's current token, past its lifetime: `401 token_expired`.
    Expired(Id),
}

impl<A: Actor> Clone for AgentEntry<A> {
    fn clone(&self) -> Self {
        AgentEntry {
            addr: self.addr.clone(),
            token: self.token.clone(),
            expires_at: self.expires_at,
        }
    }
}

pub struct Registry<W: Wiring> {
    pub config: Config,
    pub admin_token: String,
    pub ids: IdGen,
    pub metrics: Metrics,
    pub attachments: AttachmentStore,
    /// Failed authentications per client address.
    pub auth_throttle: AuthThrottle,
    /// Per-client limits (rates, sessions and connections per address).
    pub limits: crate::limits::Limits,
    /// The canned responses (`crate::canned`: why they live here).
    pub canned: CannedLibrary,
    /// Each queue's name for `{{queue.name}}`, written by the router only.
    pub queue_names: QueueNames,

    pub router: Addr<W::Router>,
    pub channels: W::Channels,
    pub supervisor: Addr<W::Supervisor>,
    /// Pooled HTTP client for provider APIs and media (timeouts set).
    pub http: reqwest::Client,
    /// Event webhook endpoints: actors [`emit`](crate::webhooks::Webhooks::emit)
    /// their task, agent and conversation events here.
    pub webhooks: crate::webhooks::Webhooks,
    /// Key of signed attachment links (random per process: links die with it,
    /// as do the files).
    pub link_key: [u8; 32],
    /// The journal every state change is written to (`data_dir`); `None`:
    /// purely in memory.
    pub journal: Option<crate::journal::Journal>,

    /// agent id → actor and token.
    agents: DashMap<Id, AgentEntry<W::Agent>, IdHasher>,
    /// agent token → agent id (bearer auth on agent HTTP calls).
    agent_tokens: DashMap<String, Id>,
    /// conversation id → actor.
    conversations: DashMap<Id, Addr<W::Conversation>, IdHasher>,
    /// task id → conversation id.
    tasks: DashMap<Id, Id, IdHasher>,
    /// webchat token → session id.
    webchat_tokens: DashMap<String, Id>,
    /// Supervisors connected: events are only encoded when someone listens.
    pub supervisors: AtomicUsize,
    /// Set when shutdown begins ([`Registry::draining`]).
    draining: std::sync::atomic::AtomicBool,

    /// Where conversations and agents run: the HTTP workers' arbiters.
    pub shards: Shards,
    /// In cluster mode, this (active) node's figures for `GET /v1/cluster`;
    /// set once it replicates.
    pub cluster: std::sync::OnceLock<Arc<dyn ClusterView>>,
}

/// What `GET /v1/cluster` shows about this node (`cluster::node::NodeStatus`
/// in cluster mode): a trait, so the registry names nothing of the
/// cluster's, which reaches the journal's records and so the actors.
pub trait ClusterView: Send + Sync {
    fn to_json(&self) -> serde_json::Value;
}

/// The parts of a [`Registry`] fixed before its actors start.
pub struct RegistryParts<W: Wiring> {
    pub config: Config,
    pub admin_token: String,
    pub router: Addr<W::Router>,
    pub channels: W::Channels,
    pub supervisor: Addr<W::Supervisor>,
    pub http: reqwest::Client,
    pub webhooks: crate::webhooks::Webhooks,
    pub journal: Option<crate::journal::Journal>,
}

/// The key of signed attachment links: random per process, or, with a data
/// dir, kept there (`link.key`, readable by its owner only) so links handed
/// to providers survive a restart as the files do. Start-up only (disk).
fn link_key(data_dir: Option<&std::path::Path>) -> [u8; 32] {
    let Some(dir) = data_dir else {
        return rand::random();
    };
    let path = dir.join("link.key");
    if let Some(key) = std::fs::read(&path)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
    {
        return key;
    }
    let key: [u8; 32] = rand::random();
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(&path)?, &key)
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %path.display(), "attachment link key not kept; links die with the process");
    }
    key
}

impl<W: Wiring> Registry<W> {
    pub fn new(parts: RegistryParts<W>) -> Arc<Self> {
        let auth_throttle = AuthThrottle::new(parts.config.auth_failures_per_minute);
        let link_key = link_key(parts.config.data_dir.as_deref());
        Arc::new(Registry {
            attachments: AttachmentStore::new(&parts.config),
            limits: crate::limits::Limits::new(&parts.config),
            canned: CannedLibrary::from_config(&parts.config),
            queue_names: QueueNames::default(),
            config: parts.config,
            admin_token: parts.admin_token,
            ids: IdGen,
            metrics: Metrics::default(),
            auth_throttle,
            router: parts.router,
            channels: parts.channels,
            supervisor: parts.supervisor,
            http: parts.http,
            webhooks: parts.webhooks,
            link_key,
            journal: parts.journal,
            agents: DashMap::default(),
            agent_tokens: DashMap::new(),
            conversations: DashMap::default(),
            tasks: DashMap::default(),
            webchat_tokens: DashMap::new(),
            supervisors: AtomicUsize::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            shards: Shards::new(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    pub fn conversation(&self, id: &str) -> Option<Addr<W::Conversation>> {
        self.conversations.get(id).map(|e| e.value().clone())
    }

    /// A conversation and its task are known by id from now on.
    pub fn register_conversation(&self, id: Id, task_id: Id, addr: Addr<W::Conversation>) {
        self.conversations.insert(id.clone(), addr);
        self.tasks.insert(task_id, id);
    }

    /// The conversation and its task left memory: their ids answer 404.
    pub fn forget_conversation(&self, id: &str, task_id: &str) {
        self.conversations.remove(id);
        self.tasks.remove(task_id);
    }

    /// The id of a task's conversation, while it is in memory.
    pub fn conversation_id_of_task(&self, task_id: &str) -> Option<Id> {
        self.tasks.get(task_id).map(|e| e.value().clone())
    }

    /// The conversation of a task, while it is in memory.
    pub fn conversation_of_task(&self, task_id: &str) -> Option<Addr<W::Conversation>> {
        let id = self.tasks.get(task_id).map(|e| e.value().clone())?;
        self.conversation(&id)
    }

    /// Every conversation in memory (open, or finished and within the
    /// history retention), for the admin list: a copy of the addresses, no
    /// lock held once it returns.
    pub fn all_conversations(&self) -> Vec<Addr<W::Conversation>> {
        self.conversations
            .iter()
            .map(|e| e.value().clone())
            .collect()
    }

    pub fn conversation_exists(&self, id: &str) -> bool {
        self.conversations.contains_key(id)
    }

    pub fn task_exists(&self, task_id: &str) -> bool {
        self.tasks.contains_key(task_id)
    }

    /// The agent a token belongs to, and whether the token is still valid.
    pub fn agent_by_token(&self, token: &str) -> Option<AgentToken> {
        let id = self.agent_tokens.get(token).map(|e| e.value().clone())?;
        Some(match self.agents.get(&id) {
            Some(entry) if entry.expired() => AgentToken::Expired(id),
            _ => AgentToken::Valid(id),
        })
    }

    /// When a token issued now expires.
    fn token_expiry(&self) -> Option<SystemTime> {
        self.config
            .agent_token_ttl
            .map(|ttl| SystemTime::now() + ttl)
    }

    /// A webchat session's token works from now on.
    pub fn register_webchat_token(&self, token: String, session: Id) {
        self.webchat_tokens.insert(token, session);
    }

    /// The session is forgotten: its token answers 401.
    pub fn forget_webchat_token(&self, token: &str) {
        self.webchat_tokens.remove(token);
    }

    /// The webchat session a token belongs to.
    pub fn webchat_session(&self, token: &str) -> Option<Id> {
        self.webchat_tokens.get(token).map(|e| e.value().clone())
    }

    pub fn agent(&self, id: &str) -> Option<AgentEntry<W::Agent>> {
        self.agents.get(id).map(|e| e.value().clone())
    }

    /// The actor of agent `id`: how a conversation finds the agent a
    /// message names (messages between actors carry ids, not addresses).
    pub fn agent_addr(&self, id: &str) -> Option<Addr<W::Agent>> {
        self.agents.get(id).map(|e| e.value().addr.clone())
    }

    /// Register a new agent under its id and token. `start` runs only when
    /// both are free, and returns the agent's actor. `conflict` if the id (or
    /// the token) is taken.
    pub fn insert_agent(
        &self,
        id: Id,
        token: String,
        start: impl FnOnce() -> Addr<W::Agent>,
    ) -> Result<(), ApiError> {
        let Entry::Vacant(slot) = self.agents.entry(id.clone()) else {
            return Err(ApiError::Conflict(format!("agent {id} already exists")));
        };
        let Entry::Vacant(by_token) = self.agent_tokens.entry(token.clone()) else {
            return Err(ApiError::Conflict(format!(
                "agent {id}: that token is already in use"
            )));
        };
        let addr = start();
        by_token.insert(id);
        slot.insert(AgentEntry {
            addr,
            token,
            expires_at: self.token_expiry(),
        });
        Ok(())
    }

    /// An agent rebuilt from the journal, with the token and expiry it had.
    pub fn restore_agent(
        &self,
        id: Id,
        token: String,
        expires_at: Option<SystemTime>,
        addr: Addr<W::Agent>,
    ) {
        self.agent_tokens.insert(token.clone(), id.clone());
        self.agents.insert(
            id,
            AgentEntry {
                addr,
                token,
                expires_at,
            },
        );
    }

    /// Every agent's actor (to tell them all something, e.g. at shutdown).
    pub fn agent_addrs(&self) -> Vec<Addr<W::Agent>> {
        self.agents.iter().map(|e| e.value().addr.clone()).collect()
    }

    /// Shutting down: new requests are refused (`503 unavailable`).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Forget an agent: its id and its token stop working together.
    pub fn remove_agent(&self, id: &str) -> Option<AgentEntry<W::Agent>> {
        match self.agents.entry(id.into()) {
            Entry::Occupied(slot) => {
                self.agent_tokens.remove(&slot.get().token);
                Some(slot.remove())
            }
            Entry::Vacant(_) => None,
        }
    }

    /// Give an agent a new token; the old one stops working at once.
    /// `not_found` for an unknown agent.
    pub fn rotate_agent_token(
        &self,
        id: &str,
        token: String,
    ) -> Result<AgentEntry<W::Agent>, ApiError> {
        let Entry::Occupied(mut slot) = self.agents.entry(id.into()) else {
            return Err(ApiError::NotFound(format!("agent {id} does not exist")));
        };
        let Entry::Vacant(by_token) = self.agent_tokens.entry(token.clone()) else {
            return Err(ApiError::Conflict(format!(
                "agent {id}: that token is already in use"
            )));
        };
        by_token.insert(slot.key().clone());
        let entry = slot.get_mut();
        self.agent_tokens.remove(&entry.token);
        entry.token = token;
        entry.expires_at = self.token_expiry();
        Ok(entry.clone())
    }

    /// A supervisor acted: tell the supervisor stream (if anyone listens)
    /// and the webhooks (if an endpoint wants `supervisor.action`), with who
    /// did it.
    pub fn supervisor_action(&self, by: &str, action: crate::protocol::SupervisorAction) {
        let at = crate::protocol::now();
        self.supervisor_action_to_webhooks(by, &action, at);
        self.publish(|| crate::protocol::Event::SupervisorAction {
            by: by.to_owned().into(),
            action,
            at,
        });
    }

    /// The webhook half of [`Registry::supervisor_action`], for a sender
    /// that tells the supervisor stream itself. Ordered with the events of
    /// the conversation (or agent) it acted on.
    pub fn supervisor_action_to_webhooks(
        &self,
        by: &str,
        action: &crate::protocol::SupervisorAction,
        at: SystemTime,
    ) {
        self.webhooks.emit(
            crate::webhooks::EventKind::SupervisorAction,
            action.subject(),
            || crate::webhooks::payload::SupervisorActionData { by, action, at },
        );
    }

    /// Publish a supervisor event, building and encoding it only if someone
    /// listens.
    pub fn publish<'a>(&self, event: impl FnOnce() -> crate::protocol::Event<'a>) {
        if self.supervisors.load(Ordering::Relaxed) > 0 {
            self.supervisor.do_send(Publish(event().frame()));
        }
    }
}

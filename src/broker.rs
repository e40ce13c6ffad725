//! The handles every actor and HTTP route shares: configuration, actor
//! addresses, id lookups and counters. Built once at start-up, then read-only
//! apart from the lookup maps.
//!
//! The lookup maps are *indexes* (id → address, token → id), private to this
//! module: each entry is written when its actor is created and removed when it
//! goes, through the methods here, so maps that change together change in one
//! place. The two agent maps (`agents`, `agent_tokens`) change only through
//! [`Broker::insert_agent`], [`Broker::remove_agent`] and
//! [`Broker::rotate_agent_token`], which take the `agents` entry first and the
//! `agent_tokens` entry second, so a token always points at a registered agent
//! and an agent's token is always in the token map; a conversation and its
//! task are registered and forgotten together
//! ([`Broker::register_conversation`], [`Broker::forget_conversation`]).
//! Looking an address up in a sharded map beats asking a registry actor, which
//! would put every lookup from every worker thread through one mailbox.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::agent::Agent;
use crate::attachments::AttachmentStore;
use crate::channel::Channels;
use crate::config::Config;
use crate::conversation::Conversation;
use crate::error::ApiError;
use crate::ids::IdGen;
use crate::metrics::Metrics;
use crate::protocol::Id;
use crate::router::Router;
use crate::shards::Shards;
use crate::supervisor::SupervisorHub;

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
#[derive(Clone)]
pub struct AgentEntry {
    pub addr: Addr<Agent>,
    pub token: String,
}

pub struct Broker {
    pub config: Config,
    pub admin_token: String,
    pub ids: IdGen,
    pub metrics: Metrics,
    pub attachments: AttachmentStore,
    /// Per-client limits (rates, sessions and connections per address).
    pub limits: crate::limits::Limits,

    pub router: Addr<Router>,
    pub channels: Channels,
    pub supervisor: Addr<SupervisorHub>,
    /// Pooled HTTP client for provider APIs and media (timeouts set).
    pub http: reqwest::Client,
    /// Key of signed attachment links (random per process: links die with it,
    /// as do the files).
    pub link_key: [u8; 32],

    /// agent id → actor and token.
    agents: DashMap<Id, AgentEntry>,
    /// agent token → agent id (bearer auth on agent HTTP calls).
    agent_tokens: DashMap<String, Id>,
    /// conversation id → actor.
    conversations: DashMap<Id, Addr<Conversation>>,
    /// task id → conversation id.
    tasks: DashMap<Id, Id>,
    /// webchat token → session id.
    webchat_tokens: DashMap<String, Id>,
    /// Supervisors connected: events are only encoded when someone listens.
    pub supervisors: AtomicUsize,

    /// Where conversations and agents run: the HTTP workers' arbiters.
    pub shards: Shards,
}

/// The parts of a [`Broker`] fixed before its actors start.
pub struct BrokerParts {
    pub config: Config,
    pub admin_token: String,
    pub router: Addr<Router>,
    pub channels: Channels,
    pub supervisor: Addr<SupervisorHub>,
    pub http: reqwest::Client,
}

impl Broker {
    pub fn new(parts: BrokerParts) -> Arc<Broker> {
        Arc::new(Broker {
            attachments: AttachmentStore::new(&parts.config),
            limits: crate::limits::Limits::new(&parts.config),
            config: parts.config,
            admin_token: parts.admin_token,
            ids: IdGen::default(),
            metrics: Metrics::default(),
            router: parts.router,
            channels: parts.channels,
            supervisor: parts.supervisor,
            http: parts.http,
            link_key: rand::random(),
            agents: DashMap::new(),
            agent_tokens: DashMap::new(),
            conversations: DashMap::new(),
            tasks: DashMap::new(),
            webchat_tokens: DashMap::new(),
            supervisors: AtomicUsize::new(0),
            shards: Shards::new(),
        })
    }

    pub fn conversation(&self, id: &str) -> Option<Addr<Conversation>> {
        self.conversations.get(id).map(|e| e.value().clone())
    }

    /// A conversation and its task are known by id from now on.
    pub fn register_conversation(&self, id: Id, task_id: Id, addr: Addr<Conversation>) {
        self.conversations.insert(id.clone(), addr);
        self.tasks.insert(task_id, id);
    }

    /// The conversation and its task left memory: their ids answer 404.
    pub fn forget_conversation(&self, id: &str, task_id: &str) {
        self.conversations.remove(id);
        self.tasks.remove(task_id);
    }

    pub fn conversation_exists(&self, id: &str) -> bool {
        self.conversations.contains_key(id)
    }

    pub fn task_exists(&self, task_id: &str) -> bool {
        self.tasks.contains_key(task_id)
    }

    /// The agent a token belongs to.
    pub fn agent_by_token(&self, token: &str) -> Option<Id> {
        self.agent_tokens.get(token).map(|e| e.value().clone())
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

    pub fn agent(&self, id: &str) -> Option<AgentEntry> {
        self.agents.get(id).map(|e| e.value().clone())
    }

    /// Register a new agent under its id and token. `start` runs only when
    /// both are free, and returns the agent's actor. `conflict` if the id (or
    /// the token) is taken.
    pub fn insert_agent(
        &self,
        id: Id,
        token: String,
        start: impl FnOnce() -> Addr<Agent>,
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
        slot.insert(AgentEntry { addr, token });
        Ok(())
    }

    /// Forget an agent: its id and its token stop working together.
    pub fn remove_agent(&self, id: &str) -> Option<AgentEntry> {
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
    pub fn rotate_agent_token(&self, id: &str, token: String) -> Result<AgentEntry, ApiError> {
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
        Ok(entry.clone())
    }

    /// Publish a supervisor event, building and encoding it only if someone
    /// listens.
    pub fn publish<'a>(&self, event: impl FnOnce() -> crate::protocol::Event<'a>) {
        if self.supervisors.load(Ordering::Relaxed) > 0 {
            self.supervisor
                .do_send(crate::supervisor::Publish(event().frame()));
        }
    }
}

//! Rebuilding the broker from its journal (`data_dir`) as it starts, before
//! it takes a connection: every record is decoded and applied, in the order
//! written, with the same `apply` the live actor uses (the actors' `replay`
//! entry points skip only the write), to actors that are built but not yet
//! started; then they start and resume their timers (see each actor's
//! `restore` module and `docs/operations.md`, "Recovery").
//!
//! What comes back: agents (profile, token and its expiry, activity, open
//! tasks; all disconnected until their desktops reconnect), the router
//! (queues, waiting tasks in their order, offers, assignments, the day's
//! statistics, last agents), conversations (history with `seq`, task state,
//! disposition, notes) and webchat sessions (token, name, skills, queue,
//! latest conversation), provider threads, and stored files (their bytes
//! kept in the data dir), and webhook deliveries not yet done. A
//! conversation that had left memory (history retention) stays gone, and
//! so does a file no message held any more.

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;

use crate::agent::Agent;
use crate::channel::provider::{shard_index, ProviderChannel, ProviderEvent};
use crate::channel::webchat::WebchatChannel;
use crate::channel::ToCustomer;
use crate::codec::CodecError;
use crate::conversation::{Conversation, ConversationState};
use crate::ids::IdMap;
use crate::journal::record::{self, Record};
use crate::journal::Lsn;
use crate::protocol::{ChannelKind, Id, TaskState};
use crate::router::{Restored, Router};
use crate::shards::{mailbox, Mailbox};
use crate::wiring::Broker;

/// Why the journal could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A record passed its checksum but is not one this version writes: a
    /// journal from another, incompatible build.
    #[error("journal record {lsn} cannot be read by this version: {source}")]
    Undecodable { lsn: Lsn, source: CodecError },
}

/// A conversation being rebuilt: its state, and the address it will run at
/// (made at its first record, so channels can hold it before it starts).
struct Rebuilt {
    state: ConversationState,
    addr: Addr<Conversation>,
    mailbox: Mailbox<Conversation>,
    /// Waiting, but the router never recorded its arrival (the crash fell
    /// in between): it enqueues its task again as it starts.
    enqueue: bool,
}

/// An agent being rebuilt, with its credential.
struct RebuiltAgent {
    actor: Agent,
    token: String,
    expires_at: Option<SystemTime>,
}

/// What a replay built, to be started with [`Replayed::start`].
pub struct Replayed {
    conversations: IdMap<Id, Rebuilt>,
    agents: IdMap<Id, RebuiltAgent>,
    /// Webhook deliveries queued and not done.
    webhooks: crate::webhooks::Replay,
    /// Records applied, and records of channels not enabled now.
    pub applied: u64,
    pub skipped: u64,
}

/// The actors a replay applies records to, built and not yet started.
pub struct Channels<'a> {
    pub router: &'a mut Router,
    /// `webchat[i]` is shard `i` of `broker.channels.webchat`.
    pub webchat: &'a mut [WebchatChannel],
    /// Each enabled provider's shards, in the order of its `ProviderShards`.
    pub providers: &'a mut [(ChannelKind, Vec<ProviderChannel>)],
}

/// Apply `records` to the router and the channels' shards, building the
/// agents and conversations they name.
pub fn replay(
    broker: &Arc<Broker>,
    records: impl IntoIterator<Item = (Lsn, Vec<u8>)>,
    actors: Channels<'_>,
) -> Result<Replayed, RecoveryError> {
    let Channels {
        router,
        webchat,
        providers,
    } = actors;
    // A provider conversation's customer (which shard holds its thread),
    // until the channel forgets it.
    let mut provider_customers: IdMap<Id, String> = IdMap::default();
    let mut out = Replayed {
        conversations: IdMap::default(),
        agents: IdMap::default(),
        webhooks: crate::webhooks::Replay::default(),
        applied: 0,
        skipped: 0,
    };
    for (lsn, bytes) in records {
        let record =
            record::read(&bytes).map_err(|source| RecoveryError::Undecodable { lsn, source })?;
        out.applied += 1;
        match record {
            Record::Router(event) => router.replay(event),
            Record::ConversationOpened(state) => {
                let (addr, mailbox) = mailbox::<Conversation>();
                out.conversations.insert(
                    state.id.clone(),
                    Rebuilt {
                        state: *state,
                        addr,
                        mailbox,
                        enqueue: false,
                    },
                );
            }
            Record::Conversation { id, event } => {
                if let Some(c) = out.conversations.get_mut(&id) {
                    c.state.apply(event);
                }
            }
            Record::ConversationForgotten { id } => {
                out.conversations.remove(&id);
            }
            Record::AgentCreated {
                profile,
                token,
                expires_at,
            } => {
                out.agents.insert(
                    profile.id.clone(),
                    RebuiltAgent {
                        actor: Agent::restored(broker, profile),
                        token,
                        expires_at,
                    },
                );
            }
            Record::AgentTokenRotated {
                id,
                token,
                expires_at,
            } => {
                if let Some(a) = out.agents.get_mut(&id) {
                    a.token = token;
                    a.expires_at = expires_at;
                }
            }
            Record::AgentRemoved { id } => {
                out.agents.remove(&id);
            }
            Record::Agent { id, event } => {
                if let Some(a) = out.agents.get_mut(&id) {
                    a.actor.replay(event);
                }
            }
            Record::Webchat(event) => {
                let session = event.session();
                let shard = broker.channels.webchat.index_of(session);
                let addr = event
                    .conversation()
                    .and_then(|c| out.conversations.get(c))
                    .map(|c| c.addr.clone());
                if let Some(channel) = webchat.get_mut(shard) {
                    channel.replay(event, addr);
                }
            }
            Record::Canned(event) => broker.canned.replay(event),
            Record::WebhookQueued {
                url,
                id,
                lane,
                body,
                at,
            } => out.webhooks.queued(url, id, lane, body, at),
            Record::WebhookDone { url, id } => out.webhooks.done(url, id),
            Record::AttachmentStored {
                meta,
                uploader,
                quota,
                at,
            } => {
                // False when the file left the store before the restart.
                broker.attachments.restore(meta, uploader, quota, at);
            }
            Record::Provider { channel, event } => {
                let Some((_, shards)) = providers.iter_mut().find(|(k, _)| *k == channel) else {
                    // A channel that is not enabled now.
                    out.skipped += 1;
                    continue;
                };
                let conversation = event.conversation().cloned();
                let customer = match event.customer() {
                    Some(c) => c.to_owned(),
                    None => match conversation
                        .as_ref()
                        .and_then(|c| provider_customers.get(c))
                    {
                        Some(c) => c.clone(),
                        None => continue,
                    },
                };
                match &event {
                    ProviderEvent::ConversationOpened { conversation, .. } => {
                        provider_customers.insert(conversation.clone(), customer.clone());
                    }
                    ProviderEvent::ConversationForgotten { conversation } => {
                        provider_customers.remove(conversation);
                    }
                    _ => {}
                }
                let addr = conversation
                    .as_ref()
                    .and_then(|c| out.conversations.get(c))
                    .map(|c| c.addr.clone());
                let shard = shard_index(&customer, shards.len());
                if let Some(channel) = shards.get_mut(shard) {
                    channel.replay(event, addr);
                }
            }
        }
    }
    for channel in webchat.iter_mut() {
        channel.restored();
    }
    // Each message in memory holds a use of its files; a webchat customer
    // may read what was sent in their conversations.
    for c in out.conversations.values() {
        let customer: Id = c.state.customer.address.as_str().into();
        for a in c.state.messages.iter().flat_map(|m| &m.attachments) {
            broker.attachments.acquire(&a.id);
            if c.state.channel == ChannelKind::Webchat {
                if let Some(stored) = broker.attachments.get(&a.id) {
                    stored.grant(&customer);
                }
            }
        }
    }
    for c in out.conversations.values_mut() {
        c.enqueue = matches!(c.state.task_state, TaskState::Queued | TaskState::Reserved)
            && !router.routes(&c.state.task_id);
    }
    router.define_configured_queues();
    Ok(out)
}

impl Replayed {
    /// Start the rebuilt agents and conversations on the shards, register
    /// them, and hand the router their addresses (its first message).
    pub fn start(self, broker: &Arc<Broker>) {
        // Before any actor can emit a newer event of the same key.
        broker.webhooks.restore(self.webhooks);
        let mut agents: IdMap<Id, Addr<Agent>> = IdMap::default();
        for (id, a) in self.agents {
            let addr = broker.shards.start(a.actor);
            broker.restore_agent(id.clone(), a.token, a.expires_at, addr.clone());
            agents.insert(id, addr);
        }
        let agent_addr = |id: &Id| agents.get(id).cloned();
        let mut conversations = Vec::with_capacity(self.conversations.len());
        let count = self.conversations.len();
        for (_, c) in self.conversations {
            let Some(channel) = channel_of(broker, &c.state) else {
                tracing::warn!(
                    conversation = %c.state.id,
                    channel = c.state.channel.as_str(),
                    "conversation of a channel not enabled now; not restored"
                );
                continue;
            };
            let holds_agent = matches!(
                c.state.task_state,
                TaskState::Assigned | TaskState::Wrapping
            );
            let agent = c
                .state
                .agent_id
                .as_ref()
                .filter(|_| holds_agent)
                .and_then(agent_addr);
            broker.register_conversation(
                c.state.id.clone(),
                c.state.task_id.clone(),
                c.addr.clone(),
            );
            conversations.push((c.state.task_id.clone(), c.addr, c.state.task_state));
            let actor = Conversation::restored(broker, c.state, channel, agent, c.enqueue);
            let mailbox = c.mailbox;
            broker
                .shards
                .place(move |arbiter| mailbox.run_on(arbiter, actor));
        }
        tracing::info!(
            agents = agents.len(),
            conversations = count,
            records = self.applied,
            "state restored from the journal"
        );
        broker.router.do_send(Restored {
            agents: agents.into_iter().collect(),
            conversations,
        });
    }
}

/// The channel actor a conversation's customer is reached through.
fn channel_of(broker: &Broker, state: &ConversationState) -> Option<Recipient<ToCustomer>> {
    let customer = state.customer.address.as_str();
    match state.channel {
        ChannelKind::Webchat => Some(
            broker
                .channels
                .webchat
                .for_session(customer)
                .clone()
                .recipient(),
        ),
        kind => broker
            .channels
            .provider(kind)
            .ok()
            .map(|p| p.for_customer(customer).clone().recipient()),
    }
}

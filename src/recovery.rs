//! Rebuilding the broker from its journal (`data_dir`) as it starts, before
//! it takes a connection: the newest snapshot is decoded (or the empty state
//! taken), every record after it decoded and applied, in the order written,
//! through [`BrokerState::apply`] (each owner's own `apply`, the code the live
//! actors and the snapshot compactor run); then the actors are built from
//! that state, not yet started; then they start and resume their timers (see
//! each actor's `restore` module and `docs/operations.md`, "Recovery").
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
use crate::channel::provider::ProviderChannel;
use crate::channel::webchat::{WebchatChannel, WebchatState};
use crate::channel::ToCustomer;
use crate::codec::CodecError;
use crate::conversation::{Conversation, ConversationState};
use crate::ids::IdMap;
use crate::journal::Lsn;
use crate::protocol::{ChannelKind, Id, TaskState};
use crate::router::{Restored, RestoredTask, Router};
use crate::shards::{mailbox, Mailbox};
use crate::snapshot::{BrokerState, ReplaySettings};
use crate::wiring::Broker;

/// Why the journal could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A record passed its checksum but is not one this version writes: a
    /// journal from another, incompatible build.
    #[error("journal record {lsn} cannot be read by this version: {source}")]
    Undecodable { lsn: Lsn, source: CodecError },
    /// The snapshot passed its checksum but does not decode.
    #[error("journal snapshot at Lsn {lsn} cannot be read by this version: {source}")]
    Snapshot { lsn: Lsn, source: CodecError },
}

/// A conversation being rebuilt: its state, and the address it will run at
/// (made before any channel is rebuilt, so channels can hold it before it
/// starts).
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
    /// The snapshot's Lsn (0: none) and the records applied after it.
    pub snapshot: Lsn,
    pub applied: u64,
    /// Webhook deliveries queued and not done.
    webhooks: crate::webhooks::Replay,
}

/// The actors a replay applies records to, built and not yet started.
pub struct Channels<'a> {
    pub router: &'a mut Router,
    /// `webchat[i]` is shard `i` of `broker.channels.webchat`.
    pub webchat: &'a mut [WebchatChannel],
    /// Each enabled provider's shards, in the order of its `ProviderShards`.
    pub providers: &'a mut [(ChannelKind, Vec<ProviderChannel>)],
}

/// The state the journal holds: the snapshot's (or the empty state), with
/// every record after it applied ([`BrokerState::apply`], the code the
/// snapshot compactor runs too).
pub fn replay_state(
    settings: &ReplaySettings,
    snapshot: Option<(Lsn, Vec<u8>)>,
    records: impl IntoIterator<Item = (Lsn, Vec<u8>)>,
) -> Result<BrokerState, RecoveryError> {
    let mut state = match snapshot {
        Some((lsn, bytes)) => BrokerState::decode(&bytes, settings)
            .map_err(|source| RecoveryError::Snapshot { lsn, source })?,
        None => BrokerState::new(settings),
    };
    for (lsn, bytes) in records {
        state
            .apply_bytes(&bytes, settings)
            .map_err(|source| RecoveryError::Undecodable { lsn, source })?;
    }
    Ok(state)
}

/// The journal's state replayed, before any actor exists: the long part of
/// a start (decoding the snapshot and applying every record after it), so
/// it can run off the thread that keeps the node's other work going (in
/// cluster mode, the renewal of its lease).
pub struct Prepared {
    state: BrokerState,
    /// The snapshot's Lsn (0: none) and the records applied after it.
    snapshot: Lsn,
    applied: u64,
}

/// Replay the newest snapshot and the records after it ([`replay_state`]).
pub fn prepare(
    settings: &ReplaySettings,
    snapshot: Option<(Lsn, Vec<u8>)>,
    records: Vec<(Lsn, Vec<u8>)>,
) -> Result<Prepared, RecoveryError> {
    let base = snapshot.as_ref().map_or(0, |(lsn, _)| *lsn);
    let applied = records.len() as u64;
    let state = replay_state(settings, snapshot, records)?;
    Ok(Prepared {
        state,
        snapshot: base,
        applied,
    })
}

/// Rebuild the broker from a replayed state ([`prepare`]): handed to the
/// router and the channels' shards, and the agents and conversations built
/// from it (not started: [`Replayed::start`]).
pub fn rebuild(broker: &Arc<Broker>, prepared: Prepared, actors: Channels<'_>) -> Replayed {
    let Prepared {
        mut state,
        snapshot,
        applied,
    } = prepared;
    // Conversations a crash left before they started are dropped, each
    // with its records journaled and applied as replay applies them.
    let settings = crate::snapshot::ReplaySettings::of(&broker.config);
    for record in state.unstarted_conversations() {
        if let crate::journal::record::Record::ConversationForgotten { id } = &record {
            tracing::warn!(
                conversation = %id,
                "a conversation opened just before the stop and never started is dropped: \
                 its customer or agent was never answered and sends again"
            );
        }
        crate::journal::record::write_record(broker.journal.as_ref(), &record);
        state.apply(record, &settings);
    }
    let Channels {
        router,
        webchat,
        providers,
    } = actors;
    let BrokerState {
        router: routing,
        conversations,
        agents,
        webchat: sessions,
        providers: mut threads,
        canned,
        attachments,
        webhooks,
        records: _,
    } = state;
    router.restore_state(routing);
    let mut out = Replayed {
        conversations: IdMap::default(),
        agents: IdMap::default(),
        snapshot,
        applied,
        webhooks,
    };
    for (id, state) in conversations {
        let (addr, mailbox) = mailbox::<Conversation>();
        out.conversations.insert(
            id,
            Rebuilt {
                state,
                addr,
                mailbox,
                enqueue: false,
            },
        );
    }
    for (id, a) in agents {
        out.agents.insert(
            id,
            RebuiltAgent {
                actor: Agent::restored(broker, a.state),
                token: a.token,
                expires_at: a.expires_at,
            },
        );
    }
    let addr_of = |c: &Id| out.conversations.get(c).map(|c| c.addr.clone());
    for (id, session) in sessions.into_sessions() {
        let shard = broker.channels.webchat.index_of(&id);
        let latest = WebchatState::latest_of(&session).and_then(addr_of);
        if let Some(channel) = webchat.get_mut(shard) {
            channel.restore_session(id, session, latest);
        }
    }
    for channel in webchat.iter_mut() {
        channel.restored();
    }
    for (kind, shards) in providers.iter_mut() {
        let Some(state) = threads.remove(kind) else {
            continue;
        };
        let parts = state.split(shards.len());
        for (shard, part) in shards.iter_mut().zip(parts) {
            shard.restore(part, addr_of);
        }
    }
    for (kind, state) in &threads {
        if state.threads() > 0 {
            tracing::warn!(
                channel = kind.as_str(),
                threads = state.threads(),
                "threads of a channel not enabled now; not restored"
            );
        }
    }
    for event in canned.into_values() {
        broker.canned.replay(event);
    }
    for (_, f) in attachments {
        // False when the file left the store before the restart.
        broker
            .attachments
            .restore(f.meta, f.uploader, f.quota, f.at);
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
    out
}

impl Replayed {
    /// Start the rebuilt agents and conversations on the shards, register
    /// them, and hand the router their addresses (its first message).
    pub fn start(self, broker: &Arc<Broker>) {
        // Before any actor can emit a newer event of the same key.
        broker.webhooks.restore(self.webhooks);
        // What each conversation says its agent holds: a crash between a
        // conversation's record of a change and the agent's own leaves the
        // agent out of step (`Agent::settle_tasks`).
        let mut held: IdMap<Id, Vec<crate::protocol::TaskView>> = IdMap::default();
        for c in self.conversations.values() {
            if let Some(agent) = c.state.holder() {
                held.entry(agent.clone())
                    .or_default()
                    .push(c.state.task_view());
            }
        }
        let mut agents: IdMap<Id, Addr<Agent>> = IdMap::default();
        for (id, mut a) in self.agents {
            a.actor.settle_tasks(held.remove(&id).unwrap_or_default());
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
            let holder = c.state.holder().cloned();
            let agent = holder.as_ref().and_then(agent_addr);
            broker.register_conversation(
                c.state.id.clone(),
                c.state.task_id.clone(),
                c.addr.clone(),
            );
            conversations.push(RestoredTask {
                task_id: c.state.task_id.clone(),
                addr: c.addr,
                state: c.state.task_state,
                agent: holder,
            });
            let actor = Conversation::restored(broker, c.state, channel, agent, c.enqueue);
            let mailbox = c.mailbox;
            broker
                .shards
                .place(move |arbiter| mailbox.run_on(arbiter, actor));
        }
        tracing::info!(
            agents = agents.len(),
            conversations = count,
            snapshot = self.snapshot,
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

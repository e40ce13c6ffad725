//! The broker's whole replayable state as plain data ([`BrokerState`]): what
//! a journal snapshot holds, and what recovery rebuilds the actors from.
//!
//! Each part changes through its owner's own `apply` (the router's
//! [`RouterState::apply`], [`ConversationState::apply`], [`AgentState::apply`],
//! the webchat and provider channels' event functions behind
//! [`WebchatState`] and [`ProviderState`]): [`BrokerState::apply`] only routes
//! a journal record to the part it names. Recovery and the snapshot
//! compactor (`compactor.rs`) both replay records through it, so the state a
//! snapshot at Lsn N holds is, by construction, the state replaying records
//! 1..N gives; recovery then replays the records after N on top of it and
//! starts the actors from the result (`recovery.rs`).
//!
//! Addresses, sockets and timers are not state: conversations are reached by
//! id here, deadlines are wall-clock times in the states themselves (as the
//! records carry them), and every actor re-arms its timers as it starts.
//!
//! A conversation that left memory (`ConversationForgotten`, history
//! retention) leaves this state with every trace of it, so a snapshot never
//! holds it and nothing of it is replayed after a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::agent::AgentState;
use crate::attachments::{Quota, Uploader};
use crate::canned::CannedEvent;
use crate::channel::provider::{ProviderEvent, ProviderState};
use crate::channel::webchat::{WebchatEvent, WebchatState};
use crate::codec::CodecError;
use crate::config::Config;
use crate::conversation::ConversationState;
use crate::ids::IdMap;
use crate::journal::record::Record;
use crate::protocol::{AttachmentMeta, ChannelKind, Id, TaskState};
use crate::router::RouterState;

/// The settings replay depends on (the rest of the configuration is read
/// when the actors start).
#[derive(Clone, Copy, Debug)]
pub struct ReplaySettings {
    /// Router: priority points per minute waited (orders waiting tasks).
    pub aging: u32,
    /// Provider channels: webhook ids remembered, per provider.
    pub webhook_dedupe: usize,
    /// Provider channels: how long a thread is kept after its last inbound
    /// message once its conversations left memory.
    pub messaging_window: Duration,
}

impl ReplaySettings {
    pub fn of(config: &Config) -> Self {
        ReplaySettings {
            aging: config.aging,
            webhook_dedupe: config.webhook_dedupe,
            messaging_window: config.messaging_window,
        }
    }
}

/// An agent as replay builds it: its actor's state and its credential.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentEntry {
    pub state: AgentState,
    pub token: String,
    pub expires_at: Option<SystemTime>,
}

/// A stored file, as its record says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredFile {
    pub meta: AttachmentMeta,
    pub uploader: Uploader,
    pub quota: Option<Quota>,
    pub at: SystemTime,
}

/// Everything replaying the journal builds, as plain data.
#[derive(Serialize, Deserialize)]
pub struct BrokerState {
    pub router: RouterState,
    pub conversations: IdMap<Id, ConversationState>,
    pub agents: IdMap<Id, AgentEntry>,
    pub webchat: WebchatState,
    /// Each provider channel's threads, by channel (whether it is enabled
    /// now or not: a channel enabled again finds its threads).
    pub providers: BTreeMap<ChannelKind, ProviderState>,
    /// The canned-response library's changes: the latest event per
    /// response id (each event sets or removes its response whole, so
    /// replaying only the latest one per id gives the same library).
    pub canned: BTreeMap<String, CannedEvent>,
    /// Stored files by id.
    pub attachments: BTreeMap<String, StoredFile>,
    /// Webhook deliveries queued and not yet done (or given up).
    pub webhooks: crate::webhooks::Replay,
    /// Records applied to reach this state (since Lsn 1).
    pub records: u64,
}

impl BrokerState {
    /// The state before the first record.
    pub fn new(settings: &ReplaySettings) -> Self {
        BrokerState {
            router: RouterState::new(settings.aging),
            conversations: IdMap::default(),
            agents: IdMap::default(),
            webchat: WebchatState::default(),
            providers: BTreeMap::new(),
            canned: BTreeMap::new(),
            attachments: BTreeMap::new(),
            webhooks: crate::webhooks::Replay::default(),
            records: 0,
        }
    }

    /// Conversations a crash left before they started, and the records
    /// that drop each one (its channel's, then its own
    /// `ConversationForgotten`), to be journaled and applied. A channel
    /// opens a conversation (its first record, waiting, empty), names it
    /// under the customer's session or thread (the channel's record), and
    /// the conversation's first act writes the rest (the customer's
    /// message, or the agent's for an outbound one). A crash between those
    /// leaves, waiting and empty:
    /// - a conversation no session or thread leads to. Its customer was
    ///   never answered and writes again, into a conversation of its own;
    ///   restored, this one would be an empty task offered to an agent,
    ///   its replies going nowhere.
    /// - an outbound conversation the router holds for the agent who
    ///   started it, never started. Restored, it would go back to the
    ///   queue as an empty task, and the open conversation it leaves on the
    ///   session or thread would refuse the agent's retry (`conflict`).
    ///   Its channel lets it go too.
    pub fn unstarted_conversations(&self) -> Vec<Record> {
        let webchat: std::collections::HashSet<&Id> =
            self.webchat.latest().filter_map(|(_, c)| c).collect();
        let mut out = Vec::new();
        for c in self.conversations.values() {
            if c.task_state != TaskState::Queued || !c.messages.is_empty() {
                continue;
            }
            let named = match c.channel {
                ChannelKind::Webchat => webchat.contains(&c.id),
                kind => self.providers.get(&kind).is_some_and(|p| p.names(&c.id)),
            };
            if named {
                if !self.router.holds(&c.task_id) {
                    continue;
                }
                match c.channel {
                    ChannelKind::Webchat => {
                        out.push(Record::Webchat(WebchatEvent::ConversationForgotten {
                            session: c.customer.address.as_str().into(),
                            conversation: c.id.clone(),
                        }))
                    }
                    channel => {
                        for event in [
                            ProviderEvent::ConversationEnded {
                                conversation: c.id.clone(),
                            },
                            ProviderEvent::ConversationForgotten {
                                conversation: c.id.clone(),
                            },
                        ] {
                            out.push(Record::Provider { channel, event });
                        }
                    }
                }
            }
            out.push(Record::ConversationForgotten { id: c.id.clone() });
        }
        out
    }

    /// Apply one journal record to the part it names.
    pub fn apply(&mut self, record: Record, settings: &ReplaySettings) {
        self.records += 1;
        match record {
            Record::Router(event) => self.router.apply(event),
            Record::ConversationOpened(state) => {
                self.conversations.insert(state.id.clone(), *state);
            }
            Record::Conversation { id, event } => {
                if let Some(c) = self.conversations.get_mut(&id) {
                    c.apply(event);
                }
            }
            Record::ConversationForgotten { id } => {
                self.conversations.remove(&id);
            }
            Record::AgentCreated {
                profile,
                token,
                expires_at,
            } => {
                self.agents.insert(
                    profile.id.clone(),
                    AgentEntry {
                        state: AgentState::new(profile),
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
                if let Some(a) = self.agents.get_mut(&id) {
                    a.token = token;
                    a.expires_at = expires_at;
                }
            }
            Record::AgentRemoved { id } => {
                self.agents.remove(&id);
            }
            Record::Agent { id, event } => {
                if let Some(a) = self.agents.get_mut(&id) {
                    a.state.apply(event);
                }
            }
            Record::Webchat(event) => {
                let known = event
                    .conversation()
                    .is_some_and(|c| self.conversations.contains_key(c));
                self.webchat.apply(event, known);
            }
            Record::Provider { channel, event } => {
                let known = event
                    .conversation()
                    .is_some_and(|c| self.conversations.contains_key(c));
                self.providers.entry(channel).or_default().apply(
                    event,
                    known,
                    settings.webhook_dedupe,
                    settings.messaging_window,
                );
            }
            Record::Canned(event) => {
                let id = match &event {
                    CannedEvent::Saved(r) => r.id.clone(),
                    CannedEvent::Deleted { id } => id.clone(),
                };
                self.canned.insert(id, event);
            }
            Record::WebhookQueued {
                url,
                id,
                lane,
                body,
                at,
            } => self.webhooks.queued(url, id, lane, body, at),
            Record::WebhookDone { url, id } => self.webhooks.done(url, id),
            Record::AttachmentStored {
                meta,
                uploader,
                quota,
                at,
            } => {
                self.attachments.insert(
                    meta.id.clone(),
                    StoredFile {
                        meta,
                        uploader,
                        quota,
                        at,
                    },
                );
            }
        }
    }

    /// Decode and apply one record's bytes.
    pub fn apply_bytes(
        &mut self,
        bytes: &[u8],
        settings: &ReplaySettings,
    ) -> Result<(), CodecError> {
        let record = crate::journal::record::read(bytes)?;
        self.apply(record, settings);
        Ok(())
    }

    /// Drop the files whose bytes are gone from `files_dir` (swept after no
    /// message held them): restoring them would find nothing, and keeping
    /// them would let every file ever stored pile up in the snapshots.
    pub fn drop_missing_files(&mut self, files_dir: &Path) {
        self.attachments
            .retain(|id, _| files_dir.join(id).is_file());
    }

    /// The snapshot's bytes (the journal codec).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        crate::codec::encode_unbounded(self)
    }

    /// Read a snapshot's bytes back, with the settings of this start (the
    /// router's waiting order follows `aging` as configured now).
    pub fn decode(bytes: &[u8], settings: &ReplaySettings) -> Result<Self, CodecError> {
        let mut state: BrokerState = crate::codec::decode_unbounded(bytes)?;
        state.router.restored(settings.aging);
        Ok(state)
    }
}

#[cfg(test)]
mod tests;

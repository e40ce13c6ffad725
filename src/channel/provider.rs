//! The provider channel actors, several shards per configured provider (SMS,
//! WhatsApp, Messenger), and what the three share: webhook signature checks,
//! media download, signed attachment links, and outbound delivery with retries.
//!
//! One shard per HTTP worker, not one actor per provider: every inbound
//! message, every agent reply and its delivery report of a provider passed
//! through one mailbox on one thread. A customer address lives in the shard
//! it hashes to ([`ProviderShards::for_customer`]); that shard owns the
//! customer's (customer, business address) threads and their
//! messaging-window clock, the memory of the customer's webhook ids already
//! applied (retries are answered but not stored twice), and the outbound
//! delivery of the customer's conversations, which it opens on its own
//! thread. Provider-specific formats live in `sms.rs`, `whatsapp.rs` and
//! `messenger.rs`.
//!
//! Status callbacks carry only the provider's message id, not the customer,
//! so they do not go through a shard at all: [`DeliveryIndex`], shared by a
//! provider's shards, maps the id to its conversation and message, and the
//! webhook route sends the update straight to the conversation.
//!
//! Outbound isolation: every send runs as a future on its shard's thread,
//! holding one of `provider_in_flight` permits (one semaphore per provider,
//! shared by its shards) while it talks to the provider. A slow or failing
//! provider therefore fills only its own channel's permits and queue
//! (`provider_queue`, beyond which agents get `rate_limited`); other
//! channels and conversations never wait for it, and no actor blocks.
//!
//! State changes: [`ProviderEvent`]s through one function, `apply_event`,
//! for the live shard (conversations reached by address) and for
//! [`ProviderState`], the plain copy of a provider's threads that recovery
//! and snapshots use (conversations by id).
//!
//! Handles: [`Inbound`], [`ToCustomer`](crate::channel::ToCustomer),
//! [`OpenOutbound`].

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use bytes::BytesMut;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::channel::{
    inbound, messenger, sms, whatsapp, CustomerEvent, OpenOutbound, Template, ToCustomer,
};
use crate::conversation::{Conversation, DeliveryUpdate, OpenSpec, Opening, ReadUpTo};
use crate::error::ApiError;
use crate::journal::record::{self, RecordRef};
use crate::protocol::{AttachmentMeta, ChannelKind, Customer, DeliveryStatus, Id};
use crate::wiring::Broker;

/// A provider channel's outbound queue, counted: agent messages taken for
/// sending and not yet finished (in flight, or waiting for one of the
/// `provider_in_flight` slots). A conversation reserves a place before it
/// stores an agent's message, so a full queue refuses the message
/// (`rate_limited`) instead of storing what cannot be sent soon; the channel
/// releases the place when the send is over. One counter, owned by the
/// channel, shared with its conversations through [`Channels`](crate::channel::Channels).
#[derive(Debug)]
pub struct OutboundBudget {
    pending: AtomicUsize,
    limit: usize,
}

impl OutboundBudget {
    /// Room for `limit` messages at once.
    pub fn new(limit: usize) -> Self {
        OutboundBudget {
            pending: AtomicUsize::new(0),
            limit,
        }
    }

    /// Take a place, or say how many are taken when none is free.
    pub fn try_reserve(&self) -> Result<(), usize> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .map(drop)
    }

    /// Take a place whatever the count (an outbound conversation's opening
    /// message, whose capacity the agent already holds).
    pub fn force_reserve(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A send is over (delivered, failed or given up).
    pub fn release(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// A provider's channel shards, the index its status callbacks are looked up
/// in, and which shard holds a customer.
#[derive(Clone)]
pub struct ProviderShards {
    shards: Arc<[Addr<ProviderChannel>]>,
    index: Arc<DeliveryIndex>,
}

impl ProviderShards {
    /// At least one shard.
    pub fn new(shards: Vec<Addr<ProviderChannel>>, index: Arc<DeliveryIndex>) -> Self {
        assert!(!shards.is_empty(), "a provider channel needs a shard");
        ProviderShards {
            shards: shards.into(),
            index,
        }
    }

    fn shard_of(&self, customer: &str) -> usize {
        shard_index(customer, self.shards.len())
    }

    /// The shard that holds `customer`'s threads (a stable hash of the
    /// address, whatever the business address: a customer's threads on every
    /// business number or page live together).
    pub fn for_customer(&self, customer: &str) -> &Addr<ProviderChannel> {
        &self.shards[self.shard_of(customer)]
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Apply a checked, parsed webhook: each customer's messages and read
    /// receipts go, in order, to that customer's shard, all shards at once;
    /// delivery statuses go through the index straight to their conversation.
    /// Ok only once every shard holds its part: a failure answers the
    /// provider non-2xx, it sends the whole batch again, and each shard drops
    /// the webhook ids it already applied.
    pub async fn submit(
        &self,
        broker: &Broker,
        events: Vec<InboundEvent>,
    ) -> Result<(), MailboxError> {
        let mut parts: Vec<Vec<InboundEvent>> = Vec::new();
        parts.resize_with(self.shards.len(), Vec::new);
        for event in events {
            let customer = match &event {
                InboundEvent::Message(m) => &m.customer,
                InboundEvent::ReadUpTo { customer, .. } => customer,
                InboundEvent::Status {
                    provider_id,
                    status,
                    error,
                } => {
                    self.index
                        .apply_status(broker, provider_id, *status, error.clone());
                    continue;
                }
            };
            let shard = self.shard_of(customer);
            parts[shard].push(event);
        }
        let sends = parts
            .into_iter()
            .enumerate()
            .filter(|(_, part)| !part.is_empty())
            .map(|(shard, part)| self.shards[shard].send(Inbound(part)));
        for answer in futures_util::future::join_all(sends).await {
            answer?;
        }
        Ok(())
    }
}

/// Which of `shards` shards holds `customer` (a stable hash of the address).
pub(crate) fn shard_index(customer: &str, shards: usize) -> usize {
    let mut h = DefaultHasher::new();
    customer.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// Where a provider message id belongs, or the status that came for it
/// before the send's own answer did.
#[derive(Debug)]
enum Delivery {
    Sent {
        conversation: Id,
        message_id: String,
    },
    Early {
        status: DeliveryStatus,
        error: Option<String>,
    },
}

/// A provider's message ids → (conversation, message), shared by the
/// provider's shards, for status callbacks.
///
/// A concurrent map, not an actor, and not one map per shard: a callback
/// names only the provider's message id, so without a shared index it would
/// have to visit every shard, or go through one actor again. A `DashMap`
/// locks one of its shards for a few instructions per lookup (no lock is held
/// across an `.await`), so the callback route finds the conversation itself
/// and sends it the update, passing no channel actor. The shard that sent a
/// message records its ids when the provider answers ([`ProviderEvent::MessageSent`])
/// and removes them when the conversation leaves memory
/// ([`ProviderEvent::ConversationForgotten`]), so the map follows the
/// conversations in memory. A status that comes before the send's answer
/// waits here, in one entry with the id, and is handed over when the answer
/// comes: the two sides meet under the entry's lock, so neither can miss the
/// other.
#[derive(Debug)]
pub struct DeliveryIndex {
    ids: DashMap<String, Delivery>,
    /// Statuses waiting for their send's answer, and how many may.
    early: AtomicUsize,
    early_limit: usize,
}

/// A delivery status reported before the send's answer was in.
pub type EarlyStatus = (DeliveryStatus, Option<String>);

impl DeliveryIndex {
    /// Room for `early_limit` statuses waiting for their send's answer.
    pub fn new(early_limit: usize) -> Self {
        DeliveryIndex {
            ids: DashMap::new(),
            early: AtomicUsize::new(0),
            early_limit: early_limit.max(1),
        }
    }

    /// The provider answered a send with `provider_id`: from now on its
    /// statuses go to this message. A status that was waiting is returned.
    fn record_sent(
        &self,
        provider_id: String,
        conversation: Id,
        message_id: String,
    ) -> Option<EarlyStatus> {
        let sent = Delivery::Sent {
            conversation,
            message_id,
        };
        match self.ids.entry(provider_id) {
            Entry::Vacant(slot) => {
                slot.insert(sent);
                None
            }
            Entry::Occupied(mut slot) => match std::mem::replace(slot.get_mut(), sent) {
                Delivery::Early { status, error } => {
                    let _ = self
                        .early
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    Some((status, error))
                }
                Delivery::Sent { .. } => None,
            },
        }
    }

    /// A status callback: to the message's conversation, or kept until the
    /// send's answer comes.
    fn apply_status(
        &self,
        broker: &Broker,
        provider_id: &str,
        status: DeliveryStatus,
        error: Option<String>,
    ) {
        let Some((conversation, message_id)) = self.status(provider_id, status, error.clone())
        else {
            return;
        };
        if let Some(conv) = broker.conversation(&conversation) {
            conv.do_send(DeliveryUpdate {
                message_id,
                status,
                error,
            });
        }
    }

    /// Where a status for `provider_id` goes: the (conversation, message) it
    /// was sent as, or None when no send has been answered with that id yet
    /// (the status then waits for it).
    fn status(
        &self,
        provider_id: &str,
        status: DeliveryStatus,
        error: Option<String>,
    ) -> Option<(Id, String)> {
        let target = match self.ids.get(provider_id).as_deref() {
            Some(Delivery::Sent {
                conversation,
                message_id,
            }) => Some((conversation.clone(), message_id.clone())),
            _ => None,
        };
        match target {
            Some(target) => Some(target),
            None => match self.ids.entry(provider_id.to_owned()) {
                // The send's answer came in between.
                Entry::Occupied(mut slot) => {
                    if let Delivery::Sent {
                        conversation,
                        message_id,
                    } = slot.get()
                    {
                        Some((conversation.clone(), message_id.clone()))
                    } else {
                        // The latest status wins.
                        slot.insert(Delivery::Early { status, error });
                        None
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(Delivery::Early { status, error });
                    if self.early.fetch_add(1, Ordering::Relaxed) + 1 > self.early_limit {
                        self.drop_early();
                    }
                    None
                }
            },
        }
    }

    /// Too many statuses for ids no send has been answered with (a provider
    /// reporting on messages this broker did not send, or that it forgot):
    /// drop them all. Rare, and a sweep of the map each `early_limit` such
    /// statuses.
    fn drop_early(&self) {
        self.ids.retain(|_, d| matches!(d, Delivery::Sent { .. }));
        self.early.store(0, Ordering::Relaxed);
    }

    /// A conversation left memory: its messages' ids are forgotten.
    fn forget(&self, provider_ids: &[String]) {
        for id in provider_ids {
            self.ids.remove(id);
        }
    }

    /// How many provider message ids are known (sent or waiting).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One provider's send API.
pub enum ProviderApi {
    Sms(sms::SmsApi),
    Whatsapp(whatsapp::WhatsappApi),
    Messenger(messenger::MessengerApi),
}

impl ProviderApi {
    pub fn kind(&self) -> ChannelKind {
        match self {
            ProviderApi::Sms(_) => ChannelKind::Sms,
            ProviderApi::Whatsapp(_) => ChannelKind::Whatsapp,
            ProviderApi::Messenger(_) => ChannelKind::Messenger,
        }
    }

    /// Send one agent message; the provider's message id(s) on success.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        out: &Outgoing,
    ) -> Result<Vec<String>, SendError> {
        match self {
            ProviderApi::Sms(api) => api.send(client, out).await,
            ProviderApi::Whatsapp(api) => api.send(client, out).await,
            ProviderApi::Messenger(api) => api.send(client, out).await,
        }
    }
}

/// An agent message, ready for a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub to: String,
    pub from: String,
    pub text: String,
    pub media: Vec<OutgoingMedia>,
    pub template: Option<Template>,
}

#[derive(Debug, Clone)]
pub struct OutgoingMedia {
    /// Signed, expiring link the provider fetches the file from.
    pub url: String,
    pub content_type: String,
    pub filename: String,
}

/// The family of a file for provider APIs that type attachments: `image`,
/// `audio` or `video`; None for anything else (a document / file).
pub fn media_family(content_type: &str) -> Option<&'static str> {
    let ct = content_type.to_ascii_lowercase();
    ["image", "audio", "video"]
        .into_iter()
        .find(|family| ct.starts_with(&format!("{family}/")))
}

/// Why a send did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Connect error, timeout, 429 or 5xx: worth retrying.
    Transient(String),
    /// Any other refusal: fails at once, with the provider's reason.
    Permanent(String),
}

/// Turn a provider's HTTP answer into the JSON body or a classified error.
/// `reason` extracts the provider's own error code and message from a body.
pub async fn classify(
    response: Result<reqwest::Response, reqwest::Error>,
    reason: fn(&serde_json::Value) -> Option<String>,
) -> Result<serde_json::Value, SendError> {
    let response = match response {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(SendError::Transient("provider timed out".into())),
        Err(e) => return Err(SendError::Transient(format!("provider unreachable: {e}"))),
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let why = reason(&body).unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    if status.as_u16() == 429 || status.is_server_error() {
        Err(SendError::Transient(why))
    } else {
        Err(SendError::Permanent(why))
    }
}

/// A message, delivery status or read marker from a provider webhook
/// (serde: a cluster's standby hands what it parsed to the active node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboundEvent {
    Message(InboundMessage),
    Status {
        provider_id: String,
        status: DeliveryStatus,
        error: Option<String>,
    },
    /// Messenger read receipts: everything the page sent before `watermark`.
    ReadUpTo {
        customer: String,
        business: String,
        watermark: SystemTime,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub provider_id: String,
    pub customer: String,
    pub customer_name: Option<String>,
    pub business: String,
    pub text: String,
    /// Media still to download.
    pub media: Vec<MediaRef>,
    /// Downloaded (or failed) attachment entries.
    pub attachments: Vec<AttachmentMeta>,
    /// Not a customer message we can show as such (e.g. a sticker): stored as
    /// a system note.
    pub system_note: bool,
}

/// Where an inbound file can be downloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaRef {
    pub source: MediaSource,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MediaSource {
    /// A URL, with optional HTTP Basic credentials (Twilio).
    Url {
        url: String,
        basic: Option<(String, String)>,
    },
    /// A WhatsApp media id: look it up on the Graph API, then download.
    GraphMedia { id: String, token: String },
}

/// Download every pending file of the messages and store it as an attachment.
/// A download that fails leaves an entry whose `error` says why.
pub async fn fetch_all_media(
    broker: &Broker,
    client: &reqwest::Client,
    events: &mut [InboundEvent],
) {
    for event in events.iter_mut() {
        if let InboundEvent::Message(m) = event {
            for media in std::mem::take(&mut m.media) {
                let entry = match fetch_media(broker, client, &media).await {
                    Ok(meta) => meta,
                    Err(why) => AttachmentMeta {
                        id: String::new(),
                        content_type: media
                            .content_type
                            .clone()
                            .unwrap_or_else(|| "application/octet-stream".into()),
                        size: 0,
                        filename: media.filename.clone().unwrap_or_default(),
                        url: String::new(),
                        error: Some(format!("could not fetch media: {why}")),
                    },
                };
                m.attachments.push(entry);
            }
        }
    }
}

async fn fetch_media(
    broker: &Broker,
    client: &reqwest::Client,
    media: &MediaRef,
) -> Result<AttachmentMeta, String> {
    let (url, request) = match &media.source {
        MediaSource::Url { url, basic } => {
            let mut req = client.get(url);
            if let Some((user, pass)) = basic {
                req = req.basic_auth(user, Some(pass));
            }
            (url.clone(), req)
        }
        MediaSource::GraphMedia { id, token } => {
            let lookup = format!(
                "{}/{id}",
                broker.config.graph_api_base.trim_end_matches('/')
            );
            let info: serde_json::Value = client
                .get(&lookup)
                .bearer_auth(token)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("media lookup: {e}"))?
                .json()
                .await
                .map_err(|e| format!("media lookup: {e}"))?;
            let url = info["url"]
                .as_str()
                .ok_or("media lookup answered no url")?
                .to_owned();
            (url.clone(), client.get(&url).bearer_auth(token))
        }
    };
    let mut response = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?;
    let limit = broker.config.max_upload;
    let content_type = media
        .content_type
        .clone()
        .or_else(|| {
            response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut bytes = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(format!("file larger than {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    let id = crate::ids::attachment_id();
    let filename =
        crate::attachments::sanitize_filename(Some(&media.filename.clone().unwrap_or_else(|| {
            url.rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("file")
                .split('?')
                .next()
                .unwrap_or("file")
                .to_owned()
        })));
    let meta = AttachmentMeta {
        url: format!("/v1/attachments/{id}"),
        id,
        content_type,
        size: bytes.len() as u64,
        filename,
        error: None,
    };
    let bytes = bytes.freeze();
    broker
        .attachments
        .persist(&meta.id, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    let uploader = crate::attachments::Uploader::Provider;
    record::write(
        broker.journal.as_ref(),
        RecordRef::AttachmentStored {
            meta: &meta,
            uploader: &uploader,
            quota: None,
            at: std::time::SystemTime::now(),
        },
    );
    // No uploading session: no quota to be over.
    broker
        .attachments
        .insert_persisted(meta.clone(), bytes, uploader, None)
        .map_err(|e| e.to_string())?;
    Ok(meta)
}

type HmacSha256 = Hmac<Sha256>;

/// Meta's `X-Hub-Signature-256`: `sha256=` + hex HMAC-SHA256 of the raw body,
/// compared in constant time.
pub fn verify_meta_signature(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A link a provider can fetch an attachment from without a token, valid
/// until `ttl` from now.
pub fn signed_link(broker: &Broker, attachment_id: &str) -> String {
    let expires = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + broker.config.attachment_link_ttl.as_secs();
    let signature = link_signature(&broker.link_key, attachment_id, expires);
    format!(
        "{}/v1/attachments/{attachment_id}?expires={expires}&signature={signature}",
        broker.config.public_base()
    )
}

fn link_signature(key: &[u8], attachment_id: &str, expires: u64) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{attachment_id}.{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Check a signed link: right signature (constant time) and not expired.
pub fn verify_link(key: &[u8], attachment_id: &str, expires: u64, signature: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{attachment_id}.{expires}").as_bytes());
    now <= expires && mac.verify_slice(&given).is_ok()
}

impl ProviderEvent {
    /// The customer whose shard applies it, when the event names one
    /// (the others name a conversation of a thread opened before).
    pub fn customer(&self) -> Option<&str> {
        match self {
            ProviderEvent::WebhookApplied { customer, .. }
            | ProviderEvent::CustomerWrote { customer, .. }
            | ProviderEvent::ConversationOpened { customer, .. } => Some(customer),
            ProviderEvent::ConversationEnded { .. }
            | ProviderEvent::MessageSent { .. }
            | ProviderEvent::ConversationForgotten { .. } => None,
        }
    }

    /// The conversation it names, if any.
    pub fn conversation(&self) -> Option<&Id> {
        match self {
            ProviderEvent::ConversationOpened { conversation, .. }
            | ProviderEvent::ConversationEnded { conversation }
            | ProviderEvent::MessageSent { conversation, .. }
            | ProviderEvent::ConversationForgotten { conversation } => Some(conversation),
            ProviderEvent::WebhookApplied { .. } | ProviderEvent::CustomerWrote { .. } => None,
        }
    }
}

/// One (customer, business address) thread on a provider channel. `A` is
/// how its conversations are reached: their addresses in the live channel,
/// `()` in the plain copy a snapshot holds ([`ProviderState`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Thread<A = Addr<Conversation>> {
    name: String,
    open: Option<(Id, A)>,
    last: Option<(Id, A)>,
    last_inbound: Option<SystemTime>,
}

/// Every change a provider channel makes to its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProviderEvent {
    WebhookApplied {
        provider_id: String,
        /// Whose message it was: the shard that remembers the id.
        customer: String,
    },
    CustomerWrote {
        customer: String,
        business: String,
        name: String,
        at: SystemTime,
    },
    ConversationOpened {
        customer: String,
        business: String,
        conversation: Id,
    },
    ConversationEnded {
        conversation: Id,
    },
    MessageSent {
        provider_id: String,
        conversation: Id,
        message_id: String,
    },
    /// The conversation left memory (history retention).
    ConversationForgotten {
        conversation: Id,
    },
}

/// A conversation of this shard: its thread, and the provider ids of its
/// sent messages (in the [`DeliveryIndex`] until it leaves memory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Opened {
    key: (String, String),
    provider_ids: Vec<String>,
}

/// What the shards of one provider share: its API, the in-flight permits,
/// the outbound queue's count and the status callback index.
#[derive(Clone)]
pub struct ProviderShared {
    pub api: Arc<ProviderApi>,
    pub client: reqwest::Client,
    /// `provider_in_flight` permits for the whole provider, not per shard.
    pub slots: Arc<Semaphore>,
    pub budget: Arc<OutboundBudget>,
    pub index: Arc<DeliveryIndex>,
}

/// Statuses that may wait for their send's answer, per provider.
pub const EARLY_STATUSES: usize = 1024;

impl ProviderShared {
    pub fn new(
        api: ProviderApi,
        client: reqwest::Client,
        in_flight: usize,
        budget: Arc<OutboundBudget>,
    ) -> Self {
        ProviderShared {
            api: Arc::new(api),
            client,
            slots: Arc::new(Semaphore::new(in_flight.max(1))),
            budget,
            index: Arc::new(DeliveryIndex::new(EARLY_STATUSES)),
        }
    }
}

/// What an event did besides changing the threads: for the caller to
/// follow in the webhook-id memory and the delivery index.
enum Applied {
    Nothing,
    Seen {
        provider_id: String,
        customer: String,
    },
    Sent {
        provider_id: String,
        conversation: Id,
        message_id: String,
    },
    /// The conversation left memory with these sent ids.
    Forgot(Vec<String>),
}

/// The one place a provider's threads change (the live shard's `apply`
/// and the snapshot's [`ProviderState`] both come here). `addr` is the
/// handle of the conversation the event names, when it exists.
fn apply_event<A: Clone>(
    threads: &mut HashMap<(String, String), Thread<A>>,
    by_conversation: &mut HashMap<Id, Opened>,
    event: ProviderEvent,
    addr: Option<A>,
    window: Duration,
) -> Applied {
    match event {
        ProviderEvent::WebhookApplied {
            provider_id,
            customer,
        } => {
            return Applied::Seen {
                provider_id,
                customer,
            }
        }
        ProviderEvent::CustomerWrote {
            customer,
            business,
            name,
            at,
        } => {
            let t = threads
                .entry((customer, business))
                .or_insert_with(|| Thread {
                    name: name.clone(),
                    open: None,
                    last: None,
                    last_inbound: None,
                });
            t.name = name;
            t.last_inbound = Some(at);
        }
        ProviderEvent::ConversationOpened {
            customer,
            business,
            conversation,
        } => {
            let key = (customer, business);
            let t = threads.entry(key.clone()).or_insert_with(|| Thread {
                name: key.0.clone(),
                open: None,
                last: None,
                last_inbound: None,
            });
            if let Some(addr) = addr {
                t.open = Some((conversation.clone(), addr.clone()));
                t.last = Some((conversation.clone(), addr));
            }
            by_conversation.insert(
                conversation,
                Opened {
                    key,
                    provider_ids: Vec::new(),
                },
            );
        }
        ProviderEvent::ConversationEnded { conversation } => {
            if let Some(opened) = by_conversation.get(&conversation) {
                if let Some(t) = threads.get_mut(&opened.key) {
                    if t.open.as_ref().is_some_and(|(id, _)| *id == conversation) {
                        t.open = None;
                    }
                }
            }
        }
        ProviderEvent::MessageSent {
            provider_id,
            conversation,
            message_id,
        } => {
            // Only for a conversation still in memory: its ids leave the
            // index with it.
            let Some(opened) = by_conversation.get_mut(&conversation) else {
                return Applied::Nothing;
            };
            opened.provider_ids.push(provider_id.clone());
            return Applied::Sent {
                provider_id,
                conversation,
                message_id,
            };
        }
        ProviderEvent::ConversationForgotten { conversation } => {
            let Some(opened) = by_conversation.remove(&conversation) else {
                return Applied::Nothing;
            };
            let empty = threads.get_mut(&opened.key).is_some_and(|t| {
                if t.last.as_ref().is_some_and(|(id, _)| *id == conversation) {
                    t.last = None;
                }
                // Keep the window clock while it still matters.
                let window_over = t
                    .last_inbound
                    .and_then(|at| at.elapsed().ok())
                    .is_none_or(|age| age > window);
                t.open.is_none() && t.last.is_none() && window_over
            });
            if empty {
                threads.remove(&opened.key);
            }
            return Applied::Forgot(opened.provider_ids);
        }
    }
    Applied::Nothing
}

/// One provider's threads as plain data, whatever the shard that holds
/// them: what a snapshot keeps of the channel. Changed by the channel's own
/// `apply_event`; split into the shards (by customer) at start. The
/// webhook ids are kept newest last, at most `webhook_dedupe` of them; the
/// sent ids are what the [`DeliveryIndex`] held.
#[derive(Default, Serialize, Deserialize)]
pub struct ProviderState {
    threads: HashMap<(String, String), Thread<()>>,
    by_conversation: HashMap<Id, Opened>,
    /// (webhook id, customer), oldest first.
    seen: std::collections::VecDeque<(String, String)>,
    /// provider message id → (conversation, message id).
    sent: HashMap<String, (Id, String)>,
}

impl ProviderState {
    /// Apply one event; `known` says whether the conversation it names
    /// exists. `dedupe` bounds the webhook ids kept, `window` is the
    /// messaging window (a thread leaves with its last conversation once its
    /// window is over).
    pub fn apply(&mut self, event: ProviderEvent, known: bool, dedupe: usize, window: Duration) {
        match apply_event(
            &mut self.threads,
            &mut self.by_conversation,
            event,
            known.then_some(()),
            window,
        ) {
            Applied::Nothing => {}
            Applied::Seen {
                provider_id,
                customer,
            } => {
                self.seen.push_back((provider_id, customer));
                while self.seen.len() > dedupe.max(1) {
                    self.seen.pop_front();
                }
            }
            Applied::Sent {
                provider_id,
                conversation,
                message_id,
            } => {
                self.sent.insert(provider_id, (conversation, message_id));
            }
            Applied::Forgot(ids) => {
                for id in ids {
                    self.sent.remove(&id);
                }
            }
        }
    }

    /// Threads kept.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Whether a thread names this conversation (its channel recorded that
    /// it opened it).
    pub fn names(&self, conversation: &Id) -> bool {
        self.by_conversation.contains_key(conversation)
    }

    /// The webhook ids remembered, oldest first.
    pub fn seen_ids(&self) -> Vec<&str> {
        self.seen.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// The provider message ids of sends in memory, sorted.
    pub fn sent_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.sent.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// The conversation of a thread's latest, if any.
    pub fn latest(&self, customer: &str, business: &str) -> Option<&Id> {
        self.threads
            .get(&(customer.to_owned(), business.to_owned()))
            .and_then(|t| t.last.as_ref().map(|(id, ())| id))
    }

    /// Split into `shards` parts by customer (as [`shard_index`] places
    /// them): threads, conversations, webhook ids (oldest first) and sent
    /// ids of each shard.
    pub(crate) fn split(self, shards: usize) -> Vec<ShardPart> {
        let mut parts: Vec<ShardPart> = (0..shards.max(1)).map(|_| ShardPart::default()).collect();
        let n = parts.len();
        for (key, t) in self.threads {
            parts[shard_index(&key.0, n)].threads.push((key, t));
        }
        let mut customer_of: HashMap<Id, String> = HashMap::new();
        for (id, o) in self.by_conversation {
            customer_of.insert(id.clone(), o.key.0.clone());
            parts[shard_index(&o.key.0, n)].opened.push((id, o));
        }
        for (provider_id, customer) in self.seen {
            parts[shard_index(&customer, n)].seen.push(provider_id);
        }
        for (provider_id, (conversation, message_id)) in self.sent {
            let shard = customer_of
                .get(&conversation)
                .map_or(0, |c| shard_index(c, n));
            parts[shard]
                .sent
                .push((provider_id, conversation, message_id));
        }
        parts
    }
}

/// One shard's share of a [`ProviderState`].
#[derive(Default)]
pub(crate) struct ShardPart {
    pub threads: Vec<((String, String), Thread<()>)>,
    pub opened: Vec<(Id, Opened)>,
    pub seen: Vec<String>,
    pub sent: Vec<(String, Id, String)>,
}

pub struct ProviderChannel {
    broker: Arc<Broker>,
    shared: ProviderShared,
    threads: HashMap<(String, String), Thread>,
    /// conversation id → its thread and sent ids.
    by_conversation: HashMap<Id, Opened>,
    seen: LruCache<String, ()>,
}

impl ProviderChannel {
    /// One of `shards` shards: each remembers its share of the
    /// `webhook_dedupe` webhook ids (its customers' ids only).
    pub fn new(broker: Arc<Broker>, shared: ProviderShared, shards: usize) -> Self {
        let share = broker.config.webhook_dedupe.div_ceil(shards.max(1));
        let cap = NonZeroUsize::new(share.max(1)).unwrap_or(NonZeroUsize::MIN);
        ProviderChannel {
            broker,
            shared,
            threads: HashMap::new(),
            by_conversation: HashMap::new(),
            seen: LruCache::new(cap),
        }
    }

    fn kind(&self) -> ChannelKind {
        self.shared.api.kind()
    }

    /// The one place provider channel state changes (connections aside).
    /// `MessageSent` hands back a status that came before the send's answer.
    fn apply(
        &mut self,
        event: ProviderEvent,
        addr: Option<Addr<Conversation>>,
    ) -> Option<EarlyStatus> {
        record::write(
            self.broker.journal.as_ref(),
            RecordRef::Provider {
                channel: self.kind(),
                event: &event,
            },
        );
        self.replay(event, addr)
    }

    /// Apply an event without writing it (`apply`): the threads change in
    /// `apply_event`, the webhook-id memory and the delivery index here.
    fn replay(
        &mut self,
        event: ProviderEvent,
        addr: Option<Addr<Conversation>>,
    ) -> Option<EarlyStatus> {
        let window = self.broker.config.messaging_window;
        match apply_event(
            &mut self.threads,
            &mut self.by_conversation,
            event,
            addr,
            window,
        ) {
            Applied::Nothing => None,
            Applied::Seen { provider_id, .. } => {
                self.seen.put(provider_id, ());
                None
            }
            Applied::Sent {
                provider_id,
                conversation,
                message_id,
            } => self
                .shared
                .index
                .record_sent(provider_id, conversation, message_id),
            Applied::Forgot(ids) => {
                self.shared.index.forget(&ids);
                None
            }
        }
    }

    /// Rebuild this shard from a snapshot's plain copy: its customers'
    /// threads with their conversations' addresses (`addr_of`; None: not in
    /// memory any more), their conversations, webhook ids and sent ids.
    pub(crate) fn restore(
        &mut self,
        part: ShardPart,
        addr_of: impl Fn(&Id) -> Option<Addr<Conversation>>,
    ) {
        let ShardPart {
            threads,
            opened,
            seen,
            sent,
        } = part;
        let give = |c: Option<(Id, ())>| c.and_then(|(id, ())| addr_of(&id).map(|addr| (id, addr)));
        for (key, t) in threads {
            self.threads.insert(
                key,
                Thread {
                    name: t.name,
                    open: give(t.open),
                    last: give(t.last),
                    last_inbound: t.last_inbound,
                },
            );
        }
        self.by_conversation.extend(opened);
        for id in seen {
            self.seen.put(id, ());
        }
        for (provider_id, conversation, message_id) in sent {
            let _ = self
                .shared
                .index
                .record_sent(provider_id, conversation, message_id);
        }
    }

    fn open_conversation(
        &mut self,
        customer: &str,
        business: &str,
        opening: Opening,
        task_id: Option<Id>,
        ctx: &mut Context<Self>,
    ) -> (Id, Addr<Conversation>) {
        let key = (customer.to_owned(), business.to_owned());
        let (name, previous, window) = match self.threads.get(&key) {
            Some(t) => (
                t.name.clone(),
                t.last.as_ref().map(|(id, _)| id.clone()),
                t.last_inbound,
            ),
            None => (customer.to_owned(), None, None),
        };
        let spec = OpenSpec {
            channel: self.kind(),
            customer: Customer {
                address: customer.to_owned(),
                name,
            },
            business: Some(business.to_owned()),
            skills: Vec::new(),
            queue: self.broker.config.route_queue(self.kind(), business),
            previous,
            window_opened_at: window,
            channel_addr: ctx.address().recipient(),
            opening,
            task_id,
            // On this shard's thread: the conversation and its channel
            // never cross a thread to talk to each other.
            home: Some(Arbiter::current()),
        };
        let (id, addr) = Conversation::open(&self.broker, spec);
        self.apply(
            ProviderEvent::ConversationOpened {
                customer: key.0,
                business: key.1,
                conversation: id.clone(),
            },
            Some(addr.clone()),
        );
        (id, addr)
    }

    /// Store an inbound message: as one message, or as the parts and note
    /// of `channel/inbound.rs` when its text is longer than the channel holds.
    fn customer_message(&mut self, m: InboundMessage, ctx: &mut Context<Self>) {
        let (customer, business) = (m.customer.clone(), m.business.clone());
        let mut messages =
            inbound::customer_messages(m, self.kind(), self.broker.config.max_text).into_iter();
        let Some(first) = messages.next() else {
            return;
        };
        let open = self
            .threads
            .get(&(customer.clone(), business.clone()))
            .and_then(|t| t.open.clone());
        let conv = match open {
            Some((_, conv)) => {
                conv.do_send(first);
                conv
            }
            None => {
                self.open_conversation(&customer, &business, Opening::Inbound(first), None, ctx)
                    .1
            }
        };
        for rest in messages {
            conv.do_send(rest);
        }
    }

    /// Send a message out (an agent's reply or a notice addressed to the
    /// customer), with retries, off the actor's turn.
    fn deliver(
        &mut self,
        conversation: Id,
        message_id: String,
        out: Outgoing,
        ctx: &mut Context<Self>,
    ) {
        let api = self.shared.api.clone();
        let client = self.shared.client.clone();
        let slots = self.shared.slots.clone();
        let retries = self.broker.config.provider_retries;
        let backoff = self.broker.config.provider_backoff;
        let work = async move {
            // Closed only at shutdown; then the send is reported failed below.
            let _permit = slots.acquire_owned().await.ok();
            let mut attempt = 0u32;
            loop {
                match api.send(&client, &out).await {
                    Ok(ids) => return Ok(ids),
                    Err(SendError::Transient(why)) if attempt < retries => {
                        tracing::debug!(%why, attempt, "provider send failed; retrying");
                        tokio::time::sleep(backoff_delay(backoff, attempt)).await;
                        attempt += 1;
                    }
                    Err(SendError::Transient(why)) => {
                        return Err(format!("{why} (gave up after {} attempts)", attempt + 1))
                    }
                    Err(SendError::Permanent(why)) => return Err(why),
                }
            }
        };
        ctx.spawn(work.into_actor(self).map(move |result, act, _| {
            act.shared.budget.release();
            let Some(conv) = act.broker.conversation(&conversation) else {
                return;
            };
            match result {
                Ok(ids) => {
                    conv.do_send(DeliveryUpdate {
                        message_id: message_id.clone(),
                        status: DeliveryStatus::Sent,
                        error: None,
                    });
                    for id in ids {
                        let early = act.apply(
                            ProviderEvent::MessageSent {
                                provider_id: id,
                                conversation: conversation.clone(),
                                message_id: message_id.clone(),
                            },
                            None,
                        );
                        if let Some((status, error)) = early {
                            conv.do_send(DeliveryUpdate {
                                message_id: message_id.clone(),
                                status,
                                error,
                            });
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(channel = act.kind().as_str(), %why, "provider send failed");
                    conv.do_send(DeliveryUpdate {
                        message_id,
                        status: DeliveryStatus::Failed,
                        error: Some(why),
                    });
                }
            }
        }));
    }
}

/// Exponential backoff with jitter: base × 2^attempt × [0.5, 1.5).
fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(16));
    let jitter: f64 = 0.5 + rand::random::<f64>();
    base.saturating_mul(factor).mul_f64(jitter)
}

impl Actor for ProviderChannel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// Checked, parsed webhook events of this shard's customers, applied in
/// order in one step (the webhook was parsed whole before any part is sent;
/// see [`ProviderShards::submit`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound(pub Vec<InboundEvent>);

impl Handler<Inbound> for ProviderChannel {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        for event in msg.0 {
            match event {
                InboundEvent::Message(m) => {
                    if self.seen.contains(&m.provider_id) {
                        continue;
                    }
                    self.apply(
                        ProviderEvent::WebhookApplied {
                            provider_id: m.provider_id.clone(),
                            customer: m.customer.clone(),
                        },
                        None,
                    );
                    if !m.system_note {
                        self.apply(
                            ProviderEvent::CustomerWrote {
                                customer: m.customer.clone(),
                                business: m.business.clone(),
                                name: m
                                    .customer_name
                                    .clone()
                                    .unwrap_or_else(|| m.customer.clone()),
                                at: crate::protocol::now(),
                            },
                            None,
                        );
                    }
                    self.customer_message(m, ctx);
                }
                // Statuses go through the index (see `ProviderShards::submit`);
                // one sent here is looked up the same way.
                InboundEvent::Status {
                    provider_id,
                    status,
                    error,
                } => self
                    .shared
                    .index
                    .apply_status(&self.broker, &provider_id, status, error),
                InboundEvent::ReadUpTo {
                    customer,
                    business,
                    watermark,
                } => {
                    let conv = self
                        .threads
                        .get(&(customer, business))
                        .and_then(|t| t.open.clone().or_else(|| t.last.clone()));
                    if let Some((_, conv)) = conv {
                        conv.do_send(ReadUpTo { watermark });
                    }
                }
            }
        }
    }
}

impl Handler<ToCustomer> for ProviderChannel {
    type Result = ();

    fn handle(&mut self, msg: ToCustomer, ctx: &mut Context<Self>) {
        match msg.event {
            CustomerEvent::Message {
                message,
                template,
                send_out: true,
                ..
            } => {
                let business = msg.business.map(|b| b.to_string()).unwrap_or_default();
                let out = Outgoing {
                    to: msg.customer.to_string(),
                    from: business,
                    text: message.text.clone(),
                    media: message
                        .attachments
                        .iter()
                        .map(|a| OutgoingMedia {
                            url: signed_link(&self.broker, &a.id),
                            content_type: a.content_type.clone(),
                            filename: a.filename.clone(),
                        })
                        .collect(),
                    template,
                };
                self.deliver(msg.conversation_id, message.id.clone(), out, ctx);
            }
            CustomerEvent::Ended(_) => {
                self.apply(
                    ProviderEvent::ConversationEnded {
                        conversation: msg.conversation_id,
                    },
                    None,
                );
            }
            CustomerEvent::Reopen(message) => {
                let key = self
                    .by_conversation
                    .get(&msg.conversation_id)
                    .map(|o| o.key.clone());
                if let Some((customer, business)) = key {
                    let open = self
                        .threads
                        .get(&(customer.clone(), business.clone()))
                        .and_then(|t| t.open.clone());
                    match open {
                        Some((_, conv)) => conv.do_send(*message),
                        None => {
                            self.open_conversation(
                                &customer,
                                &business,
                                Opening::Inbound(*message),
                                None,
                                ctx,
                            );
                        }
                    }
                }
            }
            CustomerEvent::Forgotten => {
                self.apply(
                    ProviderEvent::ConversationForgotten {
                        conversation: msg.conversation_id,
                    },
                    None,
                );
            }
            // No sockets: customer-side echoes, typing, joins and histories
            // have nowhere to go on a provider channel.
            _ => {}
        }
    }
}

impl Handler<OpenOutbound> for ProviderChannel {
    type Result = Result<(Id, Addr<Conversation>), ApiError>;

    fn handle(&mut self, msg: OpenOutbound, ctx: &mut Context<Self>) -> Self::Result {
        let kind = self.kind();
        let to = msg.to.trim().to_owned();
        let valid = match kind {
            ChannelKind::Sms => sms::valid_number(&to),
            ChannelKind::Whatsapp => {
                to.chars().all(|c| c.is_ascii_digit()) && (7..=15).contains(&to.len())
            }
            _ => !to.is_empty() && to.len() <= 64,
        };
        if !valid {
            return Err(ApiError::BadRequest(format!(
                "{to:?} is not a valid {} address",
                kind.as_str()
            )));
        }
        if msg.template.is_some() && kind != ChannelKind::Whatsapp {
            return Err(ApiError::BadRequest(
                "templates are only for whatsapp".into(),
            ));
        }
        let business = match kind {
            ChannelKind::Sms => self.broker.config.sms_from.first().cloned(),
            ChannelKind::Whatsapp => self.broker.config.whatsapp_phone_number_id.clone(),
            _ => self
                .threads
                .keys()
                .find(|(c, _)| *c == to)
                .map(|(_, b)| b.clone()),
        }
        .unwrap_or_default();
        let key = (to.clone(), business.clone());
        let thread = self.threads.get(&key);
        if let Some((open, _)) = thread.and_then(|t| t.open.as_ref()) {
            return Err(ApiError::Conflict(format!(
                "{to} already has an open conversation ({open})"
            )));
        }
        if crate::channel::has_messaging_window(kind) && msg.template.is_none() {
            let window = self.broker.config.messaging_window;
            let inside = thread
                .and_then(|t| t.last_inbound)
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age <= window);
            if !inside {
                return Err(ApiError::OutsideMessagingWindow(format!(
                    "{to} has not written in the last {}: {}",
                    humantime::format_duration(window),
                    if kind == ChannelKind::Whatsapp {
                        "start with a template"
                    } else {
                        "messenger allows no free-form message outside the window"
                    }
                )));
            }
        }
        let task_id = msg.task_id.clone();
        Ok(self.open_conversation(&to, &business, msg.into_opening(), Some(task_id), ctx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbound_budget_refuses_past_its_limit_and_frees_on_release() {
        let b = OutboundBudget::new(2);
        assert_eq!(b.try_reserve(), Ok(()));
        assert_eq!(b.try_reserve(), Ok(()));
        assert_eq!(b.try_reserve(), Err(2));
        b.release();
        assert_eq!(b.pending(), 1);
        assert_eq!(b.try_reserve(), Ok(()));
        // An opening message goes in whatever the count.
        b.force_reserve();
        assert_eq!(b.pending(), 3);
        for _ in 0..5 {
            b.release();
        }
        assert_eq!(b.pending(), 0, "never below zero");
    }

    #[test]
    fn customers_spread_over_every_shard_and_stay_put() {
        let customers: Vec<String> = (0..200).map(|i| format!("+1555000{i:04}")).collect();
        let mut used = [0usize; 4];
        for c in &customers {
            let shard = shard_index(c, 4);
            assert_eq!(shard, shard_index(c, 4), "stable");
            used[shard] += 1;
        }
        assert!(used.iter().all(|&n| n > 0), "every shard used: {used:?}");
        assert!(customers.iter().all(|c| shard_index(c, 1) == 0));
    }

    #[test]
    fn a_status_finds_its_message_whichever_comes_first() {
        let index = DeliveryIndex::new(8);
        // The send's answer first: the status goes to the message.
        assert_eq!(
            index.record_sent("p1".into(), "c1".into(), "m1".into()),
            None
        );
        assert_eq!(
            index.status("p1", DeliveryStatus::Delivered, None),
            Some(("c1".into(), "m1".to_owned()))
        );
        // The status first: it waits, the latest one wins, and the send's
        // answer takes it.
        assert_eq!(index.status("p2", DeliveryStatus::Delivered, None), None);
        assert_eq!(index.status("p2", DeliveryStatus::Read, None), None);
        assert_eq!(
            index.record_sent("p2".into(), "c1".into(), "m2".into()),
            Some((DeliveryStatus::Read, None))
        );
        assert_eq!(
            index.status("p2", DeliveryStatus::Read, None),
            Some(("c1".into(), "m2".to_owned()))
        );
        // Forgotten with the conversation.
        index.forget(&["p1".into(), "p2".into()]);
        assert!(index.is_empty());
    }

    #[test]
    fn statuses_for_unknown_ids_are_bounded() {
        let index = DeliveryIndex::new(4);
        index.record_sent("sent".into(), "c".into(), "m".into());
        for i in 0..100 {
            index.status(&format!("junk{i}"), DeliveryStatus::Delivered, None);
            assert!(index.len() <= 1 + 4, "{} ids kept", index.len());
        }
        // What was sent is kept.
        assert!(index.status("sent", DeliveryStatus::Read, None).is_some());
    }

    #[test]
    fn racing_reservations_never_overrun_the_limit() {
        let b = Arc::new(OutboundBudget::new(100));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_reserve().is_ok()).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(taken, 100);
        assert_eq!(b.pending(), 100);
    }
}

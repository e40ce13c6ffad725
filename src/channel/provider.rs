//! The provider channel actor, one instance per configured provider (SMS,
//! WhatsApp, Messenger), and what the three share: webhook signature checks,
//! media download, signed attachment links, and outbound delivery with retries.
//!
//! The actor owns, for its channel: which conversation is open for each
//! (customer, business address) thread, the messaging-window clock per thread,
//! the memory of webhook ids already applied (retries are answered but not
//! stored twice), and which provider message id belongs to which message (for
//! status callbacks). Provider-specific formats live in `sms.rs`,
//! `whatsapp.rs` and `messenger.rs`.
//!
//! Outbound isolation: every send runs as a future on this actor's arbiter,
//! holding one of `provider_in_flight` permits while it talks to the provider.
//! A slow or failing provider therefore fills only its own channel's permits
//! and queue (`provider_queue`, beyond which agents get `rate_limited`); other
//! channels and conversations never wait for it, and no actor blocks.
//!
//! Handles: [`Inbound`], [`ToCustomer`](crate::channel::ToCustomer),
//! [`OpenOutbound`].

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::channel::{messenger, sms, whatsapp, CustomerEvent, OpenOutbound, Template, ToCustomer};
use crate::conversation::{
    Conversation, CustomerMessage, DeliveryUpdate, OpenSpec, Opening, ReadUpTo,
};
use crate::error::ApiError;
use crate::protocol::{AttachmentMeta, Author, ChannelKind, Customer, DeliveryStatus, Id};

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

/// A message, delivery status or read marker from a provider webhook.
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
pub struct MediaRef {
    pub source: MediaSource,
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone)]
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
    let filename = media.filename.clone().unwrap_or_else(|| {
        url.rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("file")
            .split('?')
            .next()
            .unwrap_or("file")
            .to_owned()
    });
    let meta = AttachmentMeta {
        url: format!("/v1/attachments/{id}"),
        id,
        content_type,
        size: bytes.len() as u64,
        filename,
        error: None,
    };
    // No uploading session: no quota to be over.
    broker
        .attachments
        .insert(meta.clone(), bytes.freeze(), None)
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

/// One (customer, business address) thread on a provider channel.
struct Thread {
    name: String,
    open: Option<(Id, Addr<Conversation>)>,
    last: Option<(Id, Addr<Conversation>)>,
    last_inbound: Option<SystemTime>,
}

/// Every change a provider channel makes to its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProviderEvent {
    WebhookApplied {
        provider_id: String,
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
}

pub struct ProviderChannel {
    broker: Arc<Broker>,
    api: Arc<ProviderApi>,
    client: reqwest::Client,
    threads: HashMap<(String, String), Thread>,
    /// conversation id → its thread.
    by_conversation: HashMap<Id, (String, String)>,
    seen: LruCache<String, ()>,
    sent: LruCache<String, (Id, String)>,
    /// Statuses that arrived before the send's own answer.
    early: LruCache<String, (DeliveryStatus, Option<String>)>,
    slots: Arc<Semaphore>,
    budget: Arc<OutboundBudget>,
}

impl ProviderChannel {
    pub fn new(
        broker: Arc<Broker>,
        api: ProviderApi,
        client: reqwest::Client,
        budget: Arc<OutboundBudget>,
    ) -> Self {
        let cap =
            NonZeroUsize::new(broker.config.webhook_dedupe.max(1)).unwrap_or(NonZeroUsize::MIN);
        let slots = Arc::new(Semaphore::new(broker.config.provider_in_flight.max(1)));
        ProviderChannel {
            broker,
            api: Arc::new(api),
            client,
            threads: HashMap::new(),
            by_conversation: HashMap::new(),
            seen: LruCache::new(cap),
            sent: LruCache::new(cap),
            early: LruCache::new(NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)),
            slots,
            budget,
        }
    }

    fn kind(&self) -> ChannelKind {
        self.api.kind()
    }

    /// The one place provider channel state changes (connections aside).
    fn apply(&mut self, event: ProviderEvent, addr: Option<Addr<Conversation>>) {
        match event {
            ProviderEvent::WebhookApplied { provider_id } => {
                self.seen.put(provider_id, ());
            }
            ProviderEvent::CustomerWrote {
                customer,
                business,
                name,
                at,
            } => {
                let t = self
                    .threads
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
                let t = self.threads.entry(key.clone()).or_insert_with(|| Thread {
                    name: key.0.clone(),
                    open: None,
                    last: None,
                    last_inbound: None,
                });
                if let Some(addr) = addr {
                    t.open = Some((conversation.clone(), addr.clone()));
                    t.last = Some((conversation.clone(), addr));
                }
                self.by_conversation.insert(conversation, key);
            }
            ProviderEvent::ConversationEnded { conversation } => {
                if let Some(key) = self.by_conversation.get(&conversation) {
                    if let Some(t) = self.threads.get_mut(key) {
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
                self.sent.put(provider_id, (conversation, message_id));
            }
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
            previous,
            window_opened_at: window,
            channel_addr: ctx.address().recipient(),
            opening,
            task_id,
            home: None,
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

    fn customer_message(&mut self, m: InboundMessage, ctx: &mut Context<Self>) {
        let message = CustomerMessage {
            socket: None,
            author: if m.system_note {
                Author::System
            } else {
                Author::Customer
            },
            text: m.text,
            attachments: Vec::new(),
            provided: m.attachments,
            client_msg_id: None,
            reference: None,
        };
        let open = self
            .threads
            .get(&(m.customer.clone(), m.business.clone()))
            .and_then(|t| t.open.clone());
        match open {
            Some((_, conv)) => conv.do_send(message),
            None => {
                self.open_conversation(
                    &m.customer,
                    &m.business,
                    Opening::Inbound(message),
                    None,
                    ctx,
                );
            }
        }
    }

    /// Send an agent message out, with retries, off the actor's turn.
    fn deliver(
        &mut self,
        conversation: Id,
        message_id: String,
        out: Outgoing,
        ctx: &mut Context<Self>,
    ) {
        let api = self.api.clone();
        let client = self.client.clone();
        let slots = self.slots.clone();
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
            act.budget.release();
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
                        act.apply(
                            ProviderEvent::MessageSent {
                                provider_id: id.clone(),
                                conversation: conversation.clone(),
                                message_id: message_id.clone(),
                            },
                            None,
                        );
                        if let Some((status, error)) = act.early.pop(&id) {
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

/// Checked, parsed webhook events, applied in order in one step (a batch is
/// all or nothing: it was parsed whole before this is sent).
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
                InboundEvent::Status {
                    provider_id,
                    status,
                    error,
                } => match self.sent.get(&provider_id).cloned() {
                    Some((conversation, message_id)) => {
                        if let Some(conv) = self.broker.conversation(&conversation) {
                            conv.do_send(DeliveryUpdate {
                                message_id,
                                status,
                                error,
                            });
                        }
                    }
                    None => {
                        self.early.put(provider_id, (status, error));
                    }
                },
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
                message, template, ..
            } if message.from == Author::Agent => {
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
            CustomerEvent::Ended(_) => self.apply(
                ProviderEvent::ConversationEnded {
                    conversation: msg.conversation_id,
                },
                None,
            ),
            CustomerEvent::Reopen(message) => {
                let key = self.by_conversation.get(&msg.conversation_id).cloned();
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
                if let Some(key) = self.by_conversation.remove(&msg.conversation_id) {
                    let window = self.broker.config.messaging_window;
                    let empty = self.threads.get_mut(&key).is_some_and(|t| {
                        if t.last
                            .as_ref()
                            .is_some_and(|(id, _)| *id == msg.conversation_id)
                        {
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
                        self.threads.remove(&key);
                    }
                }
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

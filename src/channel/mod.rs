//! Channels: how conversations reach customers, and what each channel accepts.
//!
//! Every channel kind is one actor (`webchat.rs` now; SMS, WhatsApp and
//! Messenger follow the same shape). A channel actor owns the mapping from a
//! customer (address or session) to that customer's open conversation, opens new
//! conversations, and delivers everything a conversation says to its customer.
//! Conversations talk to their channel only through [`ToCustomer`], so a new
//! channel kind is a new actor that handles that message — the channel "trait"
//! is that message contract plus the rule table below.

pub mod inbound;
pub mod messenger;
pub mod prechat;
pub mod provider;
pub mod sms;
pub mod webchat;
pub mod whatsapp;

use actix::prelude::*;

use crate::conversation::Conversation;
use crate::error::ApiError;
use crate::protocol::{AttachmentMeta, ChannelKind, Frame, Id, Message};

/// Identifies one customer socket within a channel (webchat can have several
/// tabs open for one session).
pub type SocketId = u64;

/// What a conversation asks its channel to deliver to the customer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ToCustomer {
    /// Channel-specific customer address (the webchat session id, a phone number…).
    pub customer: Id,
    /// The business address (number, page) the conversation runs on.
    pub business: Option<Id>,
    pub conversation_id: Id,
    pub event: CustomerEvent,
}

pub enum CustomerEvent {
    /// The conversation's history for one socket that just connected; until it
    /// arrives that socket gets no live events (they are in this history).
    History { socket: SocketId, frame: Frame },
    /// A reply meant for one socket only (`ack`, `error`).
    Direct { socket: SocketId, frame: Frame },
    /// A webchat customer's message was stored: `ack` for the socket that
    /// sent it, then the message `frame` for every socket of the session, as
    /// `Direct` followed by `Broadcast` would, in one message (this is on
    /// every customer message's path).
    Accepted {
        socket: SocketId,
        ack: Frame,
        frame: Frame,
    },
    /// A new message of the conversation. Socket channels broadcast the
    /// frame; provider channels send it out when `send_out` says so.
    Message {
        message: Box<Message>,
        frame: Frame,
        /// WhatsApp template that opens an outbound conversation.
        template: Option<Template>,
        /// Addressed to the customer and given a place in the provider's
        /// outbound queue: an agent's reply, or a system message the queue
        /// sends the customer (maximum-wait and closed messages). Internal
        /// notes (an inbound message split in parts, the history cap) are
        /// not: the flag, never the text or author, decides.
        send_out: bool,
    },
    /// A live event for every socket of the customer (`typing`,
    /// `agent.joined`).
    Broadcast(Frame),
    /// The conversation ended: broadcast, and the customer's next message opens a
    /// new conversation.
    Ended(Frame),
    /// A message that reached the conversation after it ended: the channel opens
    /// a new conversation with it, linked to this one.
    Reopen(Box<crate::conversation::CustomerMessage>),
    /// The conversation is past its history retention and gone: forget it.
    Forgotten,
}

/// Wire type; here too because a channel is what sends it.
pub use crate::protocol::Template;

/// An agent starts a conversation on a channel. Every channel actor handles
/// it: it checks the address, then opens the conversation, already assigned.
#[derive(Message)]
#[rtype(result = "Result<(Id, Addr<Conversation>), ApiError>")]
pub struct OpenOutbound {
    pub to: String,
    pub task_id: Id,
    pub agent_id: Id,
    pub agent_name: String,
    pub text: String,
    pub attachments: Vec<AttachmentMeta>,
    pub client_msg_id: Option<String>,
    pub reference: Option<String>,
    pub template: Option<Template>,
    /// The queue the agent named (`default` if none).
    pub queue: String,
}

impl OpenOutbound {
    /// The conversation's opening: assigned to the agent, first message theirs.
    pub fn into_opening(self) -> crate::conversation::Opening {
        crate::conversation::Opening::Outbound {
            agent_id: self.agent_id,
            agent_name: self.agent_name,
            text: self.text,
            attachments: self.attachments,
            client_msg_id: self.client_msg_id,
            reference: self.reference,
            template: self.template,
            queue: self.queue,
        }
    }
}

/// The channel actors running on this broker; provider channels are `None`
/// until configured.
#[derive(Clone)]
pub struct Channels {
    pub webchat: webchat::WebchatShards,
    pub sms: Option<provider::ProviderShards>,
    pub whatsapp: Option<provider::ProviderShards>,
    pub messenger: Option<provider::ProviderShards>,
    /// Each provider channel's outbound queue (by `ChannelKind::index`; none
    /// for webchat and for disabled channels).
    pub budgets: [Option<std::sync::Arc<provider::OutboundBudget>>; 4],
}

impl Channels {
    /// The outbound queue of a provider channel.
    pub fn budget(&self, kind: ChannelKind) -> Option<&provider::OutboundBudget> {
        self.budgets[kind.index()].as_deref()
    }

    /// The provider channel shards of `kind`, or `channel_disabled`.
    pub fn provider(&self, kind: ChannelKind) -> Result<&provider::ProviderShards, ApiError> {
        let addr = match kind {
            ChannelKind::Webchat => None,
            ChannelKind::Sms => self.sms.as_ref(),
            ChannelKind::Whatsapp => self.whatsapp.as_ref(),
            ChannelKind::Messenger => self.messenger.as_ref(),
        };
        addr.ok_or_else(|| disabled(kind))
    }

    /// Where an agent's outbound conversation on `kind` to `to` is opened.
    pub fn outbound(
        &self,
        kind: ChannelKind,
        to: &str,
    ) -> Result<Recipient<OpenOutbound>, ApiError> {
        match kind {
            ChannelKind::Webchat => Ok(self.webchat.for_session(to).clone().recipient()),
            other => Ok(self
                .provider(other)?
                .for_customer(to.trim())
                .clone()
                .recipient()),
        }
    }
}

/// Longest text a channel carries, in characters (None: the broker's limit).
pub fn text_limit(channel: ChannelKind) -> Option<usize> {
    match channel {
        ChannelKind::Webchat => None,
        ChannelKind::Sms => Some(1600),
        ChannelKind::Whatsapp => Some(4096),
        ChannelKind::Messenger => Some(2000),
    }
}

/// Channels where free-form messages are allowed only within the messaging
/// window after the customer's last message.
pub fn has_messaging_window(channel: ChannelKind) -> bool {
    matches!(channel, ChannelKind::Whatsapp | ChannelKind::Messenger)
}

/// What a channel accepts as attachments, checked before anything is sent.
#[derive(Debug, Clone, Copy)]
pub struct AttachmentRule {
    /// Human name of the class, for error messages.
    pub class: &'static str,
    /// Content types: exact (`image/png`) or a whole family (`audio/*`).
    pub types: &'static [&'static str],
    /// Largest size in bytes for this class (None: the upload limit).
    pub max: Option<u64>,
}

const MB: u64 = 1_000_000;

const OFFICE: &[&str] = &[
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "text/*",
];

/// The defaults of the wire contract.
pub fn attachment_rules(channel: ChannelKind) -> &'static [AttachmentRule] {
    const WEBCHAT: &[AttachmentRule] = &[AttachmentRule {
        class: "any file",
        types: &["*"],
        max: None,
    }];
    const SMS: &[AttachmentRule] = &[AttachmentRule {
        class: "images",
        types: &["image/jpeg", "image/png", "image/gif"],
        max: Some(5 * MB),
    }];
    const WHATSAPP: &[AttachmentRule] = &[
        AttachmentRule {
            class: "images",
            types: &["image/jpeg", "image/png"],
            max: Some(5 * MB),
        },
        AttachmentRule {
            class: "documents",
            types: OFFICE,
            max: Some(100 * MB),
        },
        AttachmentRule {
            class: "audio and video",
            types: &["audio/*", "video/*"],
            max: Some(16 * MB),
        },
    ];
    const MESSENGER: &[AttachmentRule] = &[AttachmentRule {
        class: "images, video, audio and files",
        types: &["*"],
        max: Some(25 * MB),
    }];
    match channel {
        ChannelKind::Webchat => WEBCHAT,
        ChannelKind::Sms => SMS,
        ChannelKind::Whatsapp => WHATSAPP,
        ChannelKind::Messenger => MESSENGER,
    }
}

fn type_matches(pattern: &str, content_type: &str) -> bool {
    // Ignore parameters such as "; charset=utf-8".
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match pattern {
        "*" => true,
        p if p.ends_with("/*") => ct.starts_with(&p[..p.len() - 1]),
        p => ct == p,
    }
}

fn describe(channel: ChannelKind, upload_limit: u64) -> String {
    let parts: Vec<String> = attachment_rules(channel)
        .iter()
        .map(|r| {
            let max = r.max.unwrap_or(upload_limit);
            let types = if r.types == ["*"] {
                String::new()
            } else {
                format!(" ({})", r.types.join(", "))
            };
            format!("{}{} up to {}", r.class, types, human_size(max))
        })
        .collect();
    format!("{} accepts {}", channel.as_str(), parts.join("; "))
}

fn human_size(bytes: u64) -> String {
    if bytes.is_multiple_of(MB) {
        format!("{} MB", bytes / MB)
    } else if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{bytes} bytes")
    }
}

/// Check one file against the channel's rules: `attachment_not_supported` when
/// no class takes its type, `attachment_too_large` when the class's limit is
/// smaller than the file. Both messages name what the channel accepts.
pub fn check_attachment(
    channel: ChannelKind,
    content_type: &str,
    size: u64,
    upload_limit: u64,
) -> Result<(), ApiError> {
    let rules = attachment_rules(channel);
    let matching: Vec<&AttachmentRule> = rules
        .iter()
        .filter(|r| r.types.iter().any(|p| type_matches(p, content_type)))
        .collect();
    if matching.is_empty() {
        return Err(ApiError::AttachmentNotSupported(format!(
            "{content_type} is not supported: {}",
            describe(channel, upload_limit)
        )));
    }
    if matching
        .iter()
        .any(|r| size <= r.max.unwrap_or(upload_limit).min(upload_limit))
    {
        Ok(())
    } else {
        Err(ApiError::AttachmentTooLarge(format!(
            "{content_type} of {size} bytes is too large: {}",
            describe(channel, upload_limit)
        )))
    }
}

/// A provider channel that is not configured answers `channel_disabled`.
pub fn disabled(channel: ChannelKind) -> ApiError {
    ApiError::ChannelDisabled(format!(
        "the {} channel is not configured on this broker",
        channel.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 25 * 1024 * 1024;

    #[test]
    fn sms_takes_small_images_only() {
        assert!(check_attachment(ChannelKind::Sms, "image/png", 1000, LIMIT).is_ok());
        let e = check_attachment(ChannelKind::Sms, "application/pdf", 1000, LIMIT).unwrap_err();
        assert_eq!(e.code(), "attachment_not_supported");
        assert!(e.to_string().contains("image/jpeg"), "{e}");
        let e = check_attachment(ChannelKind::Sms, "image/gif", 6 * MB, LIMIT).unwrap_err();
        assert_eq!(e.code(), "attachment_too_large");
        assert!(e.to_string().contains("5 MB"), "{e}");
    }

    #[test]
    fn whatsapp_classes() {
        let ok = |ct, size| check_attachment(ChannelKind::Whatsapp, ct, size, 200 * MB);
        assert!(ok("image/jpeg", 5 * MB).is_ok());
        assert_eq!(
            ok("image/gif", 10).unwrap_err().code(),
            "attachment_not_supported"
        );
        assert!(ok("application/pdf", 90 * MB).is_ok());
        assert!(ok("text/plain; charset=utf-8", 10).is_ok());
        assert!(ok("video/mp4", 16 * MB).is_ok());
        assert_eq!(
            ok("audio/ogg", 17 * MB).unwrap_err().code(),
            "attachment_too_large"
        );
    }

    #[test]
    fn webchat_takes_anything_up_to_the_upload_limit() {
        assert!(check_attachment(ChannelKind::Webchat, "application/x-foo", LIMIT, LIMIT).is_ok());
        assert_eq!(
            check_attachment(ChannelKind::Webchat, "a/b", LIMIT + 1, LIMIT)
                .unwrap_err()
                .code(),
            "attachment_too_large"
        );
    }

    #[test]
    fn messenger_limit() {
        assert!(check_attachment(ChannelKind::Messenger, "video/mp4", 25 * MB, LIMIT).is_ok());
        assert_eq!(
            check_attachment(ChannelKind::Messenger, "video/mp4", 26 * MB, 100 * MB)
                .unwrap_err()
                .code(),
            "attachment_too_large"
        );
    }
}

//! What the journal holds: one [`Record`] per state change, each an actor's
//! own event value (the same value its `apply` takes) with the key that
//! names the actor, plus the few changes the shared registry makes (an
//! agent created, its token rotated, it or a conversation removed).
//!
//! Actors write with [`write`] and a [`RecordRef`] that borrows the event
//! they are about to apply, so journaling encodes but never clones; replay
//! decodes the owned [`Record`]. The two enums must list the same variants
//! in the same order with the same field types (a borrowed `&T` encodes as
//! `T`): the unit tests below check each variant's round trip, both ways.
//!
//! The encoding is the journal codec's (`crate::codec`). A record is
//! self-contained: it needs nothing but the records before it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::agent::{AgentEvent, AgentProfile};
use crate::attachments::{Quota, Uploader};
use crate::canned::CannedEvent;
use crate::channel::provider::ProviderEvent;
use crate::channel::webchat::WebchatEvent;
use crate::conversation::{ConversationEvent, ConversationState};
use crate::journal::Journal;
use crate::protocol::{AttachmentMeta, ChannelKind, Id};
use crate::router::RouterEvent;

/// One state change, as written (borrowed from the actor that makes it).
#[derive(Debug, Serialize)]
pub enum RecordRef<'a> {
    /// The router's routing state changed.
    Router(&'a RouterEvent),
    /// A conversation opened, in this state (its first message follows as
    /// an event of its own).
    ConversationOpened(&'a ConversationState),
    Conversation {
        id: &'a Id,
        event: &'a ConversationEvent,
    },
    /// The conversation left memory (history retention): not replayed.
    ConversationForgotten {
        id: &'a Id,
    },
    /// An agent was registered with this token.
    AgentCreated {
        profile: &'a AgentProfile,
        token: &'a str,
        expires_at: Option<SystemTime>,
    },
    AgentTokenRotated {
        id: &'a Id,
        token: &'a str,
        expires_at: Option<SystemTime>,
    },
    AgentRemoved {
        id: &'a Id,
    },
    Agent {
        id: &'a Id,
        event: &'a AgentEvent,
    },
    Webchat(&'a WebchatEvent),
    Provider {
        channel: ChannelKind,
        event: &'a ProviderEvent,
    },
    /// The canned-response library changed.
    Canned(&'a CannedEvent),
    /// A file was stored (its bytes written to the data dir before this).
    AttachmentStored {
        meta: &'a AttachmentMeta,
        uploader: &'a Uploader,
        quota: Option<&'a Quota>,
        at: SystemTime,
    },
    /// A webhook event queued for the endpoint at `url`: delivered again
    /// after a restart unless its `WebhookDone` follows. `lane` orders it
    /// with the other events of its key; `at` is when it happened.
    WebhookQueued {
        url: &'a str,
        id: &'a str,
        lane: u64,
        body: &'a [u8],
        at: SystemTime,
    },
    /// The event was delivered to the endpoint at `url`, or given up.
    WebhookDone {
        url: &'a str,
        id: &'a str,
    },
}

/// One state change, as read back for replay. It encodes as its
/// [`RecordRef`] does, so a record made from state rather than by an actor
/// (recovery's amendments) is written as it is: [`write_record`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Record {
    Router(RouterEvent),
    ConversationOpened(Box<ConversationState>),
    Conversation {
        id: Id,
        event: ConversationEvent,
    },
    ConversationForgotten {
        id: Id,
    },
    AgentCreated {
        profile: AgentProfile,
        token: String,
        expires_at: Option<SystemTime>,
    },
    AgentTokenRotated {
        id: Id,
        token: String,
        expires_at: Option<SystemTime>,
    },
    AgentRemoved {
        id: Id,
    },
    Agent {
        id: Id,
        event: AgentEvent,
    },
    Webchat(WebchatEvent),
    Provider {
        channel: ChannelKind,
        event: ProviderEvent,
    },
    Canned(CannedEvent),
    AttachmentStored {
        meta: AttachmentMeta,
        uploader: Uploader,
        quota: Option<Quota>,
        at: SystemTime,
    },
    WebhookQueued {
        url: String,
        id: String,
        lane: u64,
        body: Vec<u8>,
        at: SystemTime,
    },
    WebhookDone {
        url: String,
        id: String,
    },
}

/// Append `record` to the journal, if the broker keeps one. Never blocks
/// (the journal's writer thread does the I/O). An append the journal
/// refuses is logged and counted: the state change has happened in memory,
/// and the frames it causes stay held until the journal is durable again
/// (see `docs/operations.md`), so nothing is acknowledged that was not
/// written; the entry points refuse new work with `unavailable` while the
/// journal is unhealthy.
pub fn write(journal: Option<&Journal>, record: RecordRef<'_>) {
    append(journal, &record);
}

/// Append an owned `record`, as [`write`] does.
pub fn write_record(journal: Option<&Journal>, record: &Record) {
    append(journal, record);
}

fn append<T: Serialize>(journal: Option<&Journal>, record: &T) {
    let Some(journal) = journal else {
        return;
    };
    match crate::codec::encode(record) {
        Ok(bytes) => {
            if let Err(e) = journal.append(&bytes) {
                tracing::error!(error = %e, "journal append refused; the change is in memory only");
            }
        }
        Err(e) => tracing::error!(error = %e, "journal record could not be encoded"),
    }
}

/// Decode one record read back from the journal.
pub fn read(bytes: &[u8]) -> Result<Record, crate::codec::CodecError> {
    crate::codec::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Activity, Customer, PerChannel};

    /// Written, read back, and written again from what was read (the
    /// owned `Record`, as `write_record` writes it): the same bytes both
    /// times.
    fn round_trip(record: RecordRef<'_>) -> Record {
        let bytes = crate::codec::encode(&record).expect("encode");
        let back = read(&bytes).expect("decode");
        let again = crate::codec::encode(&back).expect("encode again");
        assert_eq!(again, bytes, "{back:?} written again");
        back
    }

    fn state() -> ConversationState {
        ConversationState {
            skills: vec!["fr".into()],
            priority: 3,
            ..ConversationState::new(
                "c1".into(),
                "t1".into(),
                ChannelKind::Webchat,
                Customer {
                    address: "web-1".into(),
                    name: "Ann".into(),
                },
                "default".into(),
                SystemTime::UNIX_EPOCH,
            )
        }
    }

    #[test]
    fn every_variant_reads_back_as_written() {
        let ev = RouterEvent::PresenceChanged {
            id: "a1".into(),
            connected: true,
        };
        assert!(matches!(
            round_trip(RecordRef::Router(&ev)),
            Record::Router(RouterEvent::PresenceChanged {
                connected: true,
                ..
            })
        ));
        let s = state();
        match round_trip(RecordRef::ConversationOpened(&s)) {
            Record::ConversationOpened(back) => {
                assert_eq!(back.id, s.id);
                assert_eq!(back.customer.name, "Ann");
                assert_eq!(back.priority, 3);
                assert_eq!(back.skills, s.skills);
            }
            other => panic!("{other:?}"),
        }
        let id: Id = "c1".into();
        let ev = ConversationEvent::HistoryFull;
        assert!(matches!(
            round_trip(RecordRef::Conversation { id: &id, event: &ev }),
            Record::Conversation { id, event: ConversationEvent::HistoryFull } if &*id == "c1"
        ));
        assert!(matches!(
            round_trip(RecordRef::ConversationForgotten { id: &id }),
            Record::ConversationForgotten { id } if &*id == "c1"
        ));
        let profile = AgentProfile {
            id: "alice".into(),
            name: "Alice".into(),
            capacity: PerChannel::default(),
            skills: vec![],
        };
        let at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5));
        match round_trip(RecordRef::AgentCreated {
            profile: &profile,
            token: "tok",
            expires_at: at,
        }) {
            Record::AgentCreated {
                profile: p,
                token,
                expires_at,
            } => {
                assert_eq!(&*p.id, "alice");
                assert_eq!(token, "tok");
                assert_eq!(expires_at, at);
            }
            other => panic!("{other:?}"),
        }
        let alice: Id = "alice".into();
        assert!(matches!(
            round_trip(RecordRef::AgentTokenRotated { id: &alice, token: "t2", expires_at: None }),
            Record::AgentTokenRotated { token, expires_at: None, .. } if token == "t2"
        ));
        assert!(matches!(
            round_trip(RecordRef::AgentRemoved { id: &alice }),
            Record::AgentRemoved { id } if &*id == "alice"
        ));
        let ev = AgentEvent::ActivityChanged(Activity::Break);
        assert!(matches!(
            round_trip(RecordRef::Agent {
                id: &alice,
                event: &ev
            }),
            Record::Agent {
                event: AgentEvent::ActivityChanged(Activity::Break),
                ..
            }
        ));
        let ev = WebchatEvent::SessionForgotten {
            session: "s1".into(),
        };
        assert!(matches!(
            round_trip(RecordRef::Webchat(&ev)),
            Record::Webchat(WebchatEvent::SessionForgotten { session }) if &*session == "s1"
        ));
        let ev = CannedEvent::Deleted { id: "greet".into() };
        assert!(matches!(
            round_trip(RecordRef::Canned(&ev)),
            Record::Canned(CannedEvent::Deleted { id }) if id == "greet"
        ));
        let ev = ProviderEvent::ConversationEnded {
            conversation: "c1".into(),
        };
        assert!(matches!(
            round_trip(RecordRef::Provider {
                channel: ChannelKind::Sms,
                event: &ev
            }),
            Record::Provider {
                channel: ChannelKind::Sms,
                event: ProviderEvent::ConversationEnded { .. }
            }
        ));
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7);
        match round_trip(RecordRef::WebhookQueued {
            url: "http://hooks",
            id: "evt_1",
            lane: 42,
            body: b"{}",
            at,
        }) {
            Record::WebhookQueued {
                url,
                id,
                lane,
                body,
                at: back,
            } => {
                assert_eq!(
                    (url.as_str(), id.as_str(), lane),
                    ("http://hooks", "evt_1", 42)
                );
                assert_eq!((body.as_slice(), back), (&b"{}"[..], at));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            round_trip(RecordRef::WebhookDone { url: "http://hooks", id: "evt_1" }),
            Record::WebhookDone { url, id } if url == "http://hooks" && id == "evt_1"
        ));
    }
}

//! The JSON of the two events every chat message makes, written by hand:
//! `message` (twice per round trip: to the other party, and echoed to the
//! sender) and the customer's `ack`. serde_json escapes every key and value
//! byte by byte and goes through its serializer for each field: about 4,000
//! instructions for one `message` event and 2,300 for an `ack` (callgrind,
//! `loadtest/callgrind-round-trip.sh`), together 20 % of the broker's own
//! instructions per round trip. Here the keys are constants and a value
//! with nothing to escape is copied whole.
//!
//! The output is byte for byte what serde writes for [`super::Event::Message`]
//! and [`super::Event::Ack`] (the tests below compare them on every variant
//! and on random text), so the [`super::Event`] enum stays the one
//! definition of the wire; what this writer does not cover (a time outside
//! 1970..=9999) is left to serde.

use std::fmt::Write;

use super::{rfc3339, Author, DeliveryStatus, Message};

/// `{"type":"message","conversation_id":…,"message":{…}[,"ref":…]}`, or
/// `None` for what only serde writes.
pub(super) fn message_event(
    conversation_id: &str,
    message: &Message,
    reference: Option<&str>,
) -> Option<String> {
    let mut time = [0u8; rfc3339::MILLIS_LEN];
    let created_at = rfc3339::format_millis(message.created_at, &mut time)?;
    let mut out = String::with_capacity(
        200 + conversation_id.len() * 2
            + message.id.len()
            + message.text.len()
            + message.client_msg_id.as_ref().map_or(0, String::len)
            + reference.map_or(0, str::len),
    );
    out.push_str(r#"{"type":"message","conversation_id":"#);
    push_str(&mut out, conversation_id);
    out.push_str(r#","message":{"id":"#);
    push_str(&mut out, &message.id);
    out.push_str(r#","conversation_id":"#);
    push_str(&mut out, &message.conversation_id);
    out.push_str(r#","seq":"#);
    // Writing into a String cannot fail.
    let _ = write!(out, "{}", message.seq);
    out.push_str(r#","from":""#);
    out.push_str(author(message.from));
    out.push_str(r#"","agent_id":"#);
    push_opt(&mut out, message.agent_id.as_deref());
    out.push_str(r#","text":"#);
    push_str(&mut out, &message.text);
    out.push_str(r#","attachments":"#);
    if message.attachments.is_empty() {
        out.push_str("[]");
    } else {
        out.push_str(&serde_json::to_string(&message.attachments).ok()?);
    }
    out.push_str(r#","created_at":""#);
    out.push_str(created_at);
    out.push_str(r#"","status":""#);
    out.push_str(status(message.status));
    out.push_str(r#"","client_msg_id":"#);
    push_opt(&mut out, message.client_msg_id.as_deref());
    out.push('}');
    if let Some(r) = reference {
        out.push_str(r#","ref":"#);
        push_str(&mut out, r);
    }
    out.push('}');
    Some(out)
}

/// `{"type":"ack","conversation_id":…,"client_msg_id":…,"message_id":…,"seq":…,"ref":…}`.
pub(super) fn ack_event(
    conversation_id: &str,
    client_msg_id: Option<&str>,
    message_id: &str,
    seq: u64,
    reference: Option<&str>,
) -> String {
    let mut out = String::with_capacity(
        96 + conversation_id.len()
            + client_msg_id.map_or(0, str::len)
            + message_id.len()
            + reference.map_or(0, str::len),
    );
    out.push_str(r#"{"type":"ack","conversation_id":"#);
    push_str(&mut out, conversation_id);
    out.push_str(r#","client_msg_id":"#);
    push_opt(&mut out, client_msg_id);
    out.push_str(r#","message_id":"#);
    push_str(&mut out, message_id);
    out.push_str(r#","seq":"#);
    // Writing into a String cannot fail.
    let _ = write!(out, "{seq}");
    out.push_str(r#","ref":"#);
    push_opt(&mut out, reference);
    out.push('}');
    out
}

fn author(a: Author) -> &'static str {
    match a {
        Author::Customer => "customer",
        Author::Agent => "agent",
        Author::System => "system",
    }
}

fn status(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Accepted => "accepted",
        DeliveryStatus::Sent => "sent",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Read => "read",
        DeliveryStatus::Failed => "failed",
    }
}

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// `s` as a JSON string: copied whole when nothing in it needs escaping
/// (no `"`, `\` or control character), else escaped as serde_json does.
fn push_str(out: &mut String, s: &str) {
    // No early exit: the whole string is checked in one pass the compiler
    // vectorizes (ids and chat lines are short).
    let plain = !s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    // Writing a &str into a String cannot fail.
    if let Ok(escaped) = serde_json::to_string(s) {
        out.push_str(&escaped);
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::event::Event;
    use crate::protocol::AttachmentMeta;

    fn by_serde(conversation_id: &str, m: &Message, reference: Option<&str>) -> String {
        serde_json::to_string(&Event::Message {
            conversation_id: conversation_id.into(),
            message: Cow::Borrowed(m),
            reference: reference.map(Cow::Borrowed),
        })
        .expect("serde writes it")
    }

    fn message(text: &str) -> Message {
        Message {
            id: "m_8f3a".into(),
            conversation_id: "cv_1".into(),
            seq: 42,
            from: Author::Customer,
            agent_id: None,
            text: text.into(),
            attachments: Vec::new(),
            created_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            status: DeliveryStatus::Sent,
            client_msg_id: None,
        }
    }

    #[test]
    fn every_field_and_variant_is_written_as_serde_writes_it() {
        let authors = [Author::Customer, Author::Agent, Author::System];
        let statuses = [
            DeliveryStatus::Accepted,
            DeliveryStatus::Sent,
            DeliveryStatus::Delivered,
            DeliveryStatus::Read,
            DeliveryStatus::Failed,
        ];
        for (i, (from, status)) in authors
            .iter()
            .flat_map(|a| statuses.iter().map(move |s| (*a, *s)))
            .enumerate()
        {
            let mut m = message("hello \"there\"\n\\ é 😀 \u{1}");
            m.from = from;
            m.status = status;
            if i % 2 == 0 {
                m.agent_id = Some("ag_7".into());
                m.client_msg_id = Some("c-1".into());
            }
            if i % 3 == 0 {
                m.attachments.push(AttachmentMeta {
                    id: "f_1".into(),
                    filename: "a \"b\".pdf".into(),
                    content_type: "application/pdf".into(),
                    size: 12,
                    url: "/v1/attachments/f_1".into(),
                    error: None,
                });
            }
            for reference in [None, Some("r-1"), Some("q\"\\\u{7f}")] {
                assert_eq!(
                    message_event("cv_1", &m, reference).as_deref(),
                    Some(by_serde("cv_1", &m, reference).as_str()),
                    "{from:?} {status:?} {reference:?}"
                );
            }
        }
    }

    #[test]
    fn a_time_only_serde_writes_is_left_to_it() {
        let mut m = message("x");
        m.created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(message_event("cv_1", &m, None), None);
    }

    #[test]
    fn an_ack_is_written_as_serde_writes_it() {
        for (cmid, reference) in [
            (None, None),
            (Some("c1-7"), None),
            (None, Some("r\"1")),
            (Some("c\n\u{1}"), Some("r-2")),
        ] {
            let serde = serde_json::to_string(&Event::Ack {
                conversation_id: "cv_1".into(),
                client_msg_id: cmid.map(Cow::Borrowed),
                message_id: Cow::Borrowed("m_2"),
                seq: 9,
                reference: reference.map(Cow::Borrowed),
            })
            .expect("serde writes it");
            assert_eq!(ack_event("cv_1", cmid, "m_2", 9, reference), serde);
        }
    }

    proptest! {
        #[test]
        fn any_ack_is_written_as_serde_writes_it(
            cmid in proptest::option::of(any::<String>()),
            id in any::<String>(),
            seq in any::<u64>(),
            reference in proptest::option::of(any::<String>()),
        ) {
            let serde = serde_json::to_string(&Event::Ack {
                conversation_id: "cv_9".into(),
                client_msg_id: cmid.as_deref().map(Cow::Borrowed),
                message_id: Cow::Borrowed(&id),
                seq,
                reference: reference.as_deref().map(Cow::Borrowed),
            })
            .expect("serde writes it");
            prop_assert_eq!(
                ack_event("cv_9", cmid.as_deref(), &id, seq, reference.as_deref()),
                serde
            );
        }

        #[test]
        fn any_text_is_written_as_serde_writes_it(
            text in any::<String>(),
            cmid in proptest::option::of(any::<String>()),
            conv in "[a-z_0-9\"\\\\]{0,12}",
            seq in any::<u64>(),
        ) {
            let mut m = message(&text);
            m.seq = seq;
            m.client_msg_id = cmid;
            prop_assert_eq!(
                message_event(&conv, &m, None),
                Some(by_serde(&conv, &m, None))
            );
        }
    }
}

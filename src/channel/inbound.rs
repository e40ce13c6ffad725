//! How a provider's inbound message becomes stored messages: the one rule
//! for texts a channel cannot hold as they are, shared by SMS, WhatsApp and
//! Messenger. A provider that got `200` never sends the message again, so
//! whatever it delivered is stored, never refused:
//!
//! - A text within the channel's limit (the smaller of the channel's text
//!   limit and `max_text`), whitespace-only ones included, is one customer
//!   message, exactly as it arrived.
//! - A longer text is split into parts of at most that many characters, each
//!   cut after the last whitespace of its second half when there is one (else
//!   at the limit), so the parts joined give the text back exactly; then a
//!   system note tells the agent the message was split. At most
//!   [`MAX_PARTS`] parts are stored: past them the text is cut and the note
//!   says how many characters were left out.
//! - An empty text with no file is a system note saying so.
//!
//! Files the provider sent go with the first part.

use crate::channel::provider::InboundMessage;
use crate::channel::text_limit;
use crate::conversation::CustomerMessage;
use crate::protocol::{Author, ChannelKind};

/// Most parts one inbound text is stored as (WhatsApp's 65,536 characters
/// are 16 parts of its 4,096).
pub const MAX_PARTS: usize = 16;

/// The longest text one stored message of `channel` holds, in characters.
pub fn limit(channel: ChannelKind, max_text: usize) -> usize {
    text_limit(channel)
        .map_or(max_text, |l| l.min(max_text))
        .max(1)
}

/// Cut `text` into parts of at most `limit` characters (see the module doc);
/// the second value counts the characters past [`MAX_PARTS`] parts.
pub fn split(text: &str, limit: usize) -> (Vec<String>, usize) {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() && parts.len() < MAX_PARTS {
        // Byte offset just past `limit` characters, or the whole rest.
        let Some((window_end, _)) = rest.char_indices().nth(limit) else {
            parts.push(rest.to_owned());
            rest = "";
            break;
        };
        let window = &rest[..window_end];
        let half = window.char_indices().nth(limit / 2).map_or(0, |(i, _)| i);
        let cut = window[half..]
            .char_indices()
            .rfind(|(_, c)| c.is_whitespace())
            .map_or(window_end, |(i, c)| half + i + c.len_utf8());
        parts.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    (parts, rest.chars().count())
}

/// The messages to store for one inbound provider message, in order.
pub fn customer_messages(
    m: InboundMessage,
    channel: ChannelKind,
    max_text: usize,
) -> Vec<CustomerMessage> {
    let message = |author, text, provided| CustomerMessage {
        socket: None,
        author,
        text,
        attachments: Vec::new(),
        provided,
        client_msg_id: None,
        reference: None,
    };
    let note = |text| message(Author::System, text, Vec::new());
    if m.system_note {
        return vec![message(Author::System, m.text, m.attachments)];
    }
    if m.text.is_empty() && m.attachments.is_empty() {
        return vec![note(format!(
            "The customer sent an empty {} message.",
            channel.as_str()
        ))];
    }
    let limit = limit(channel, max_text);
    let chars = m.text.chars().count();
    if chars <= limit {
        return vec![message(Author::Customer, m.text, m.attachments)];
    }
    let (parts, left_out) = split(&m.text, limit);
    let count = parts.len();
    let mut files = Some(m.attachments);
    let mut out: Vec<CustomerMessage> = parts
        .into_iter()
        .map(|p| message(Author::Customer, p, files.take().unwrap_or_default()))
        .collect();
    let mut text = format!(
        "The customer's message of {chars} characters is longer than {limit}, the most one \
         {} message holds here: it is shown in {count} parts.",
        channel.as_str()
    );
    if left_out > 0 {
        text.push_str(&format!(
            " Its last {left_out} characters (past {MAX_PARTS} parts) were not stored."
        ));
    }
    out.push(note(text));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(text: &str) -> InboundMessage {
        InboundMessage {
            provider_id: "p1".into(),
            customer: "+15551230000".into(),
            customer_name: None,
            business: "+15550001111".into(),
            text: text.into(),
            media: Vec::new(),
            attachments: Vec::new(),
            system_note: false,
        }
    }

    #[test]
    fn parts_join_back_exactly_and_respect_the_limit() {
        let text = "lorem ipsum dolor sit amet ".repeat(200);
        let (parts, left) = split(&text, 1600);
        assert_eq!(left, 0);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.chars().count() <= 1600));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.ends_with(' ')));
        // No whitespace: cut at the limit, counting characters not bytes.
        let (parts, _) = split(&"é".repeat(5), 2);
        assert_eq!(parts, ["éé", "éé", "é"]);
        // Whitespace only in the first half is not used.
        let (parts, _) = split("a bcdefghij", 4);
        assert_eq!(parts, ["a bc", "defg", "hij"]);
    }

    #[test]
    fn past_the_most_parts_the_rest_is_counted() {
        let (parts, left) = split(&"x".repeat(MAX_PARTS * 10 + 7), 10);
        assert_eq!(parts.len(), MAX_PARTS);
        assert_eq!(left, 7);
    }

    #[test]
    fn a_long_whatsapp_text_is_stored_in_parts_with_a_note() {
        let text = "word ".repeat(1000); // 5,000 characters
        let out = customer_messages(inbound(&text), ChannelKind::Whatsapp, 4096);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].author, Author::Customer);
        assert_eq!(format!("{}{}", out[0].text, out[1].text), text);
        assert_eq!(out[2].author, Author::System);
        assert!(out[2].text.contains("5000 characters"), "{}", out[2].text);
        assert!(out[2].text.contains("2 parts"), "{}", out[2].text);
    }

    #[test]
    fn whitespace_is_kept_and_empty_is_a_note() {
        let out = customer_messages(inbound(" \n\t "), ChannelKind::Sms, 4096);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].author, Author::Customer);
        assert_eq!(out[0].text, " \n\t ");
        let out = customer_messages(inbound(""), ChannelKind::Sms, 4096);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].author, Author::System);
        assert!(out[0].text.contains("empty sms"), "{}", out[0].text);
    }

    #[test]
    fn the_limit_is_the_smaller_of_channel_and_broker() {
        assert_eq!(limit(ChannelKind::Sms, 4096), 1600);
        assert_eq!(limit(ChannelKind::Whatsapp, 100), 100);
        assert_eq!(limit(ChannelKind::Webchat, 4096), 4096);
    }
}

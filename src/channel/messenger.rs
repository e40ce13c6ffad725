//! Facebook Messenger through the Graph API's Send API: the webhook's
//! `messaging` events (messages, deliveries, reads) and the send requests.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::channel::provider::{
    classify, media_family, InboundEvent, InboundMessage, MediaRef, MediaSource, Outgoing,
    SendError,
};
use crate::channel::whatsapp::graph_reason;
use crate::error::ApiError;
use crate::protocol::DeliveryStatus;

fn bad(what: impl Into<String>) -> ApiError {
    ApiError::BadRequest(what.into())
}

/// Parse a whole webhook body; any malformed part fails the whole batch.
pub fn parse(body: &Value) -> Result<Vec<InboundEvent>, ApiError> {
    if body["object"] != "page" {
        return Err(bad("object must be \"page\""));
    }
    let entries = body["entry"]
        .as_array()
        .ok_or_else(|| bad("entry must be an array"))?;
    let mut events = Vec::new();
    for entry in entries {
        let messaging = entry["messaging"]
            .as_array()
            .ok_or_else(|| bad("entry.messaging must be an array"))?;
        for event in messaging {
            let sender = event["sender"]["id"]
                .as_str()
                .ok_or_else(|| bad("messaging event without sender.id"))?;
            let recipient = event["recipient"]["id"]
                .as_str()
                .ok_or_else(|| bad("messaging event without recipient.id"))?;
            if let Some(message) = event.get("message") {
                if message["is_echo"].as_bool() == Some(true) {
                    continue; // the page's own send, echoed back
                }
                events.push(parse_message(message, sender, recipient)?);
            } else if let Some(delivery) = event.get("delivery") {
                for mid in delivery["mids"].as_array().into_iter().flatten() {
                    let mid = mid
                        .as_str()
                        .ok_or_else(|| bad("delivery.mids must be strings"))?;
                    events.push(InboundEvent::Status {
                        provider_id: mid.to_owned(),
                        status: DeliveryStatus::Delivered,
                        error: None,
                    });
                }
            } else if let Some(read) = event.get("read") {
                let watermark = read["watermark"]
                    .as_u64()
                    .ok_or_else(|| bad("read.watermark must be a number"))?;
                events.push(InboundEvent::ReadUpTo {
                    // Sent by the customer: they are the sender.
                    customer: sender.to_owned(),
                    business: recipient.to_owned(),
                    watermark: SystemTime::UNIX_EPOCH + Duration::from_millis(watermark),
                });
            }
        }
    }
    Ok(events)
}

fn parse_message(m: &Value, sender: &str, recipient: &str) -> Result<InboundEvent, ApiError> {
    let mid = m["mid"]
        .as_str()
        .ok_or_else(|| bad("message without mid"))?;
    let mut message = InboundMessage {
        provider_id: mid.to_owned(),
        customer: sender.to_owned(),
        customer_name: None,
        business: recipient.to_owned(),
        text: m["text"].as_str().unwrap_or_default().to_owned(),
        media: Vec::new(),
        attachments: Vec::new(),
        system_note: false,
    };
    let mut unsupported = Vec::new();
    for a in m["attachments"].as_array().into_iter().flatten() {
        match (a["type"].as_str(), a["payload"]["url"].as_str()) {
            (Some(kind @ ("image" | "video" | "audio" | "file")), Some(url)) => {
                message.media.push(MediaRef {
                    source: MediaSource::Url {
                        url: url.to_owned(),
                        basic: None,
                    },
                    content_type: None,
                    filename: (kind == "file").then(|| {
                        url.split('?')
                            .next()
                            .and_then(|u| u.rsplit('/').next())
                            .unwrap_or("file")
                            .to_owned()
                    }),
                });
            }
            (kind, _) => unsupported.push(kind.unwrap_or("unknown").to_owned()),
        }
    }
    if message.text.is_empty() && message.media.is_empty() {
        message.system_note = true;
        message.text = format!(
            "The customer sent a Messenger {} message, which this channel does not show.",
            if unsupported.is_empty() {
                "empty".to_owned()
            } else {
                unsupported.join(", ")
            }
        );
    }
    Ok(InboundEvent::Message(message))
}

fn attachment_kind(content_type: &str) -> &'static str {
    media_family(content_type).unwrap_or("file")
}

pub struct MessengerApi {
    pub graph_base: String,
    pub page_token: String,
}

impl MessengerApi {
    /// Messenger takes text and each attachment as separate sends.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        out: &Outgoing,
    ) -> Result<Vec<String>, SendError> {
        let mut bodies = Vec::new();
        let envelope = |message: Value| {
            json!({
                "recipient": {"id": out.to},
                "messaging_type": "RESPONSE",
                "message": message,
            })
        };
        if !out.text.is_empty() {
            bodies.push(envelope(json!({"text": out.text})));
        }
        for m in &out.media {
            bodies.push(envelope(json!({
                "attachment": {
                    "type": attachment_kind(&m.content_type),
                    "payload": {"url": m.url, "is_reusable": false},
                }
            })));
        }
        let url = format!("{}/me/messages", self.graph_base.trim_end_matches('/'));
        let mut ids = Vec::new();
        for body in bodies {
            let response = client
                .post(&url)
                .query(&[("access_token", &self.page_token)])
                .json(&body)
                .send()
                .await;
            let answer = classify(response, graph_reason).await?;
            let id = answer["message_id"].as_str().ok_or_else(|| {
                SendError::Permanent("Messenger answered without a message_id".into())
            })?;
            ids.push(id.to_owned());
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_echoes_deliveries_and_reads() {
        let body = json!({"object": "page", "entry": [{"id": "P", "time": 1, "messaging": [
            {"sender": {"id": "U1"}, "recipient": {"id": "P"}, "message": {"mid": "m1", "text": "hi"}},
            {"sender": {"id": "P"}, "recipient": {"id": "U1"}, "message": {"mid": "m2", "text": "echo", "is_echo": true}},
            {"sender": {"id": "U1"}, "recipient": {"id": "P"}, "message": {"mid": "m3",
                "attachments": [{"type": "image", "payload": {"url": "http://x/a.png"}}]}},
            {"sender": {"id": "U1"}, "recipient": {"id": "P"}, "delivery": {"mids": ["m9"], "watermark": 5}},
            {"sender": {"id": "U1"}, "recipient": {"id": "P"}, "read": {"watermark": 1700000000000u64}}
        ]}]});
        let events = parse(&body).unwrap();
        assert_eq!(events.len(), 4);
        assert!(
            matches!(&events[0], InboundEvent::Message(m) if m.text == "hi" && m.customer == "U1")
        );
        assert!(matches!(&events[1], InboundEvent::Message(m) if m.media.len() == 1));
        assert!(matches!(
            &events[2],
            InboundEvent::Status {
                status: DeliveryStatus::Delivered,
                ..
            }
        ));
        assert!(matches!(&events[3], InboundEvent::ReadUpTo { .. }));
        assert!(
            parse(&json!({"object": "page", "entry": [{"messaging": [{"message": {}}]}]})).is_err()
        );
    }
}

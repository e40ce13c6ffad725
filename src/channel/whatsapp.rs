//! WhatsApp through Meta's Cloud API: the webhook envelope (messages and
//! statuses) and the send request. Signatures are Meta's, shared with
//! Messenger (`provider::verify_meta_signature`).

use serde_json::{json, Value};

use crate::channel::provider::{
    classify, media_family, InboundEvent, InboundMessage, MediaRef, MediaSource, Outgoing,
    SendError,
};
use crate::error::ApiError;
use crate::protocol::DeliveryStatus;

fn bad(what: impl Into<String>) -> ApiError {
    ApiError::BadRequest(what.into())
}

fn str_at<'a>(v: &'a Value, key: &str, context: &str) -> Result<&'a str, ApiError> {
    v[key]
        .as_str()
        .ok_or_else(|| bad(format!("{context}: missing {key}")))
}

/// Parse a whole webhook body; any malformed part fails the whole batch
/// before anything is applied.
pub fn parse(body: &Value, token: &str) -> Result<Vec<InboundEvent>, ApiError> {
    if body["object"] != "whatsapp_business_account" {
        return Err(bad("object must be \"whatsapp_business_account\""));
    }
    let entries = body["entry"]
        .as_array()
        .ok_or_else(|| bad("entry must be an array"))?;
    let mut events = Vec::new();
    for entry in entries {
        let changes = entry["changes"]
            .as_array()
            .ok_or_else(|| bad("entry.changes must be an array"))?;
        for change in changes {
            if change["field"] != "messages" {
                continue;
            }
            let value = &change["value"];
            let business = value["metadata"]["phone_number_id"]
                .as_str()
                .ok_or_else(|| bad("value.metadata.phone_number_id is missing"))?;
            let contacts = value["contacts"].as_array();
            for message in value["messages"].as_array().into_iter().flatten() {
                events.push(parse_message(message, business, contacts, token)?);
            }
            for status in value["statuses"].as_array().into_iter().flatten() {
                if let Some(e) = parse_status(status)? {
                    events.push(e);
                }
            }
        }
    }
    Ok(events)
}

fn parse_message(
    m: &Value,
    business: &str,
    contacts: Option<&Vec<Value>>,
    token: &str,
) -> Result<InboundEvent, ApiError> {
    let id = str_at(m, "id", "message")?;
    let from = str_at(m, "from", "message")?;
    let kind = str_at(m, "type", "message")?;
    let name = contacts
        .and_then(|c| c.iter().find(|c| c["wa_id"] == from))
        .and_then(|c| c["profile"]["name"].as_str())
        .map(str::to_owned);
    let mut message = InboundMessage {
        provider_id: id.to_owned(),
        customer: from.to_owned(),
        customer_name: name,
        business: business.to_owned(),
        text: String::new(),
        media: Vec::new(),
        attachments: Vec::new(),
        system_note: false,
    };
    match kind {
        "text" => {
            message.text = m["text"]["body"]
                .as_str()
                .ok_or_else(|| bad("text message without text.body"))?
                .to_owned();
        }
        "image" | "document" | "audio" | "video" => {
            let media = &m[kind];
            let media_id = str_at(media, "id", kind)?;
            message.text = media["caption"].as_str().unwrap_or_default().to_owned();
            message.media.push(MediaRef {
                source: MediaSource::GraphMedia {
                    id: media_id.to_owned(),
                    token: token.to_owned(),
                },
                content_type: media["mime_type"].as_str().map(str::to_owned),
                filename: media["filename"].as_str().map(str::to_owned),
            });
        }
        other => {
            message.system_note = true;
            message.text = format!(
                "The customer sent a WhatsApp {other} message, which this channel does not show."
            );
        }
    }
    Ok(InboundEvent::Message(message))
}

fn parse_status(s: &Value) -> Result<Option<InboundEvent>, ApiError> {
    let id = str_at(s, "id", "status")?;
    let status = match str_at(s, "status", "status")? {
        "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "read" => DeliveryStatus::Read,
        "failed" => DeliveryStatus::Failed,
        _ => return Ok(None),
    };
    let error = (status == DeliveryStatus::Failed).then(|| {
        let e = &s["errors"][0];
        match (
            e["code"].as_u64(),
            e["title"].as_str().or(e["message"].as_str()),
        ) {
            (Some(code), Some(title)) => format!("{code}: {title}"),
            (Some(code), None) => format!("WhatsApp error {code}"),
            (None, Some(title)) => title.to_owned(),
            (None, None) => "failed".to_owned(),
        }
    });
    Ok(Some(InboundEvent::Status {
        provider_id: id.to_owned(),
        status,
        error,
    }))
}

/// Graph API error body: `{"error":{"message","code"}}`.
pub fn graph_reason(body: &Value) -> Option<String> {
    let e = &body["error"];
    let message = e["message"].as_str()?;
    Some(match e["code"].as_u64() {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    })
}

fn media_kind(content_type: &str) -> &'static str {
    media_family(content_type).unwrap_or("document")
}

pub struct WhatsappApi {
    pub graph_base: String,
    pub token: String,
    pub phone_number_id: String,
}

impl WhatsappApi {
    /// Text alone, a template, or one request per attachment with the text as
    /// the first one's caption (audio takes no caption: text goes first then).
    pub async fn send(
        &self,
        client: &reqwest::Client,
        out: &Outgoing,
    ) -> Result<Vec<String>, SendError> {
        let mut bodies: Vec<Value> = Vec::new();
        let base = |kind: &str, payload: Value| {
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": out.to,
                "type": kind,
                kind: payload,
            })
        };
        if let Some(t) = &out.template {
            bodies.push(base(
                "template",
                json!({"name": t.name, "language": {"code": t.language}}),
            ));
        } else {
            let mut caption = (!out.text.is_empty()).then(|| out.text.clone());
            let first_takes_caption = out
                .media
                .first()
                .is_some_and(|m| media_kind(&m.content_type) != "audio");
            if caption.is_some() && !first_takes_caption {
                bodies.push(base("text", json!({"body": out.text})));
                caption = None;
            }
            for m in &out.media {
                let kind = media_kind(&m.content_type);
                let mut payload = json!({"link": m.url});
                if let Some(c) = caption.take() {
                    payload["caption"] = json!(c);
                }
                if kind == "document" {
                    payload["filename"] = json!(m.filename);
                }
                bodies.push(base(kind, payload));
            }
            if let Some(text) = caption {
                bodies.push(base("text", json!({"body": text})));
            }
        }
        let url = format!(
            "{}/{}/messages",
            self.graph_base.trim_end_matches('/'),
            self.phone_number_id
        );
        let mut ids = Vec::new();
        for body in bodies {
            let response = client
                .post(&url)
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await;
            let answer = classify(response, graph_reason).await?;
            let id = answer["messages"][0]["id"].as_str().ok_or_else(|| {
                SendError::Permanent("WhatsApp answered without a message id".into())
            })?;
            ids.push(id.to_owned());
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(value: Value) -> Value {
        json!({"object": "whatsapp_business_account",
               "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]})
    }

    #[test]
    fn parses_text_media_unsupported_and_statuses() {
        let body = envelope(json!({
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "1555", "phone_number_id": "1099"},
            "contacts": [{"profile": {"name": "Dana"}, "wa_id": "15551230000"}],
            "messages": [
                {"from": "15551230000", "id": "wamid.1", "type": "text", "text": {"body": "hi"}},
                {"from": "15551230000", "id": "wamid.2", "type": "image", "image": {"id": "M1", "mime_type": "image/jpeg", "caption": "look"}},
                {"from": "15551230000", "id": "wamid.3", "type": "sticker", "sticker": {"id": "S"}}
            ],
            "statuses": [{"id": "wamid.9", "status": "failed", "errors": [{"code": 131047, "title": "Re-engagement message"}]}]
        }));
        let events = parse(&body, "tok").unwrap();
        assert_eq!(events.len(), 4);
        match &events[0] {
            InboundEvent::Message(m) => {
                assert_eq!(m.text, "hi");
                assert_eq!(m.customer_name.as_deref(), Some("Dana"));
                assert_eq!(m.business, "1099");
            }
            other => panic!("{other:?}"),
        }
        match &events[1] {
            InboundEvent::Message(m) => {
                assert_eq!(m.text, "look");
                assert_eq!(m.media.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        match &events[2] {
            InboundEvent::Message(m) => assert!(m.system_note && m.text.contains("sticker")),
            other => panic!("{other:?}"),
        }
        match &events[3] {
            InboundEvent::Status { status, error, .. } => {
                assert_eq!(*status, DeliveryStatus::Failed);
                assert_eq!(error.as_deref(), Some("131047: Re-engagement message"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_bad_message_fails_the_batch() {
        let body = envelope(json!({
            "metadata": {"phone_number_id": "1099"},
            "messages": [
                {"from": "1", "id": "wamid.1", "type": "text", "text": {"body": "ok"}},
                {"from": "1", "type": "text", "text": {"body": "no id"}}
            ]
        }));
        assert!(parse(&body, "t").is_err());
        assert!(parse(&json!({"object": "page"}), "t").is_err());
    }
}

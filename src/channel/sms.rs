//! SMS through Twilio's Messaging API: the inbound webhook's form and
//! signature, status callbacks, and the send request.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::channel::provider::{
    classify, InboundEvent, InboundMessage, MediaRef, MediaSource, Outgoing, SendError,
};
use crate::error::ApiError;
use crate::protocol::DeliveryStatus;

/// Twilio's signature: Base64 of HMAC-SHA1 (auth token) over the full URL
/// followed by every POST parameter's name and value, sorted by name.
pub fn signature(url: &str, params: &[(String, String)], auth_token: &str) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Check `X-Twilio-Signature` in constant time.
pub fn verify(
    url: &str,
    params: &[(String, String)],
    auth_token: &str,
    header: Option<&str>,
) -> bool {
    let Some(given) = header else {
        return false;
    };
    crate::http::same_secret(&signature(url, params, auth_token), given.trim())
}

fn field<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    field(params, name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("missing {name}")))
}

/// An inbound SMS/MMS webhook.
pub fn parse_inbound(
    params: &[(String, String)],
    account_sid: &str,
    auth_token: &str,
) -> Result<InboundEvent, ApiError> {
    let sid = required(params, "MessageSid")?;
    let from = required(params, "From")?;
    let to = required(params, "To")?;
    let body = field(params, "Body").unwrap_or_default();
    let count: usize = match field(params, "NumMedia") {
        None | Some("") => 0,
        Some(n) => n
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("NumMedia is not a number: {n:?}")))?,
    };
    if count > 10 {
        return Err(ApiError::BadRequest(format!(
            "NumMedia is {count}; Twilio sends at most 10"
        )));
    }
    let mut media = Vec::with_capacity(count);
    for i in 0..count {
        let url = required(params, &format!("MediaUrl{i}"))?;
        media.push(MediaRef {
            source: MediaSource::Url {
                url: url.to_owned(),
                basic: Some((account_sid.to_owned(), auth_token.to_owned())),
            },
            content_type: field(params, &format!("MediaContentType{i}")).map(str::to_owned),
            filename: None,
        });
    }
    Ok(InboundEvent::Message(InboundMessage {
        provider_id: sid.to_owned(),
        customer: from.to_owned(),
        customer_name: None,
        business: to.to_owned(),
        text: body.to_owned(),
        media,
        attachments: Vec::new(),
        system_note: false,
    }))
}

/// A status callback (`MessageStatus` of a message we sent).
pub fn parse_status(params: &[(String, String)]) -> Result<Option<InboundEvent>, ApiError> {
    let sid = required(params, "MessageSid")?;
    let status = required(params, "MessageStatus")?;
    let status = match status {
        "sent" => DeliveryStatus::Sent,
        "delivered" => DeliveryStatus::Delivered,
        "read" => DeliveryStatus::Read,
        "failed" | "undelivered" => DeliveryStatus::Failed,
        // queued, accepted, sending, scheduled…: nothing new for the agent.
        _ => return Ok(None),
    };
    let error = (status == DeliveryStatus::Failed).then(|| {
        match field(params, "ErrorCode").filter(|c| !c.is_empty()) {
            Some(code) => format!("Twilio error {code}"),
            None => "undelivered".to_owned(),
        }
    });
    Ok(Some(InboundEvent::Status {
        provider_id: sid.to_owned(),
        status,
        error,
    }))
}

/// E.164: a plus and 7 to 15 digits.
pub fn valid_number(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

/// Twilio's error body: `{"code": 21211, "message": "…"}`.
fn reason(body: &serde_json::Value) -> Option<String> {
    let message = body["message"].as_str()?;
    Some(match body["code"].as_u64() {
        Some(code) => format!("{code}: {message}"),
        None => message.to_owned(),
    })
}

pub struct SmsApi {
    pub api_base: String,
    pub account_sid: String,
    pub auth_token: String,
    /// Where Twilio posts status callbacks.
    pub status_callback: String,
}

impl SmsApi {
    pub async fn send(
        &self,
        client: &reqwest::Client,
        out: &Outgoing,
    ) -> Result<Vec<String>, SendError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.api_base.trim_end_matches('/'),
            self.account_sid
        );
        let mut form: Vec<(&str, &str)> = vec![
            ("To", &out.to),
            ("From", &out.from),
            ("StatusCallback", &self.status_callback),
        ];
        if !out.text.is_empty() {
            form.push(("Body", &out.text));
        }
        for m in &out.media {
            form.push(("MediaUrl", &m.url));
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| SendError::Permanent(format!("cannot encode request: {e}")))?;
        let response = client
            .post(url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await;
        let body = classify(response, reason).await?;
        body["sid"]
            .as_str()
            .map(|sid| vec![sid.to_owned()])
            .ok_or_else(|| SendError::Permanent("Twilio answered without a sid".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn signature_matches_an_independent_computation() {
        // HMAC-SHA1 over "url" + sorted "nameValue" pairs, by hand.
        let params = pairs(&[("To", "+1800"), ("Body", "hi"), ("From", "+1555")]);
        let url = "https://example.com/v1/channels/sms/inbound";
        let mut mac = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"https://example.com/v1/channels/sms/inboundBodyhiFrom+1555To+1800");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature(url, &params, "secret"), expected);
        assert!(verify(url, &params, "secret", Some(&expected)));
        assert!(!verify(url, &params, "other", Some(&expected)));
        assert!(!verify(url, &params, "secret", None));
    }

    #[test]
    fn hmac_sha1_rfc2202_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha1>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn inbound_with_media_and_errors() {
        let p = pairs(&[
            ("MessageSid", "SM1"),
            ("From", "+15551230000"),
            ("To", "+15550001111"),
            ("Body", "photo"),
            ("NumMedia", "1"),
            ("MediaUrl0", "http://m/1"),
            ("MediaContentType0", "image/png"),
        ]);
        let InboundEvent::Message(m) = parse_inbound(&p, "AC", "tok").unwrap() else {
            panic!("not a message");
        };
        assert_eq!(m.customer, "+15551230000");
        assert_eq!(m.media.len(), 1);
        let bad = pairs(&[("From", "+1"), ("To", "+2")]);
        assert_eq!(
            parse_inbound(&bad, "AC", "tok").unwrap_err().to_string(),
            "missing MessageSid"
        );
        let bad = pairs(&[
            ("MessageSid", "S"),
            ("From", "+1"),
            ("To", "+2"),
            ("NumMedia", "x"),
        ]);
        assert!(parse_inbound(&bad, "AC", "tok").is_err());
    }

    #[test]
    fn statuses_map() {
        let p = pairs(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
        ]);
        match parse_status(&p).unwrap() {
            Some(InboundEvent::Status { status, error, .. }) => {
                assert_eq!(status, DeliveryStatus::Failed);
                assert_eq!(error.as_deref(), Some("Twilio error 30003"));
            }
            other => panic!("{other:?}"),
        }
        let p = pairs(&[("MessageSid", "SM1"), ("MessageStatus", "queued")]);
        assert!(parse_status(&p).unwrap().is_none());
        assert!(valid_number("+15551230000"));
        assert!(!valid_number("15551230000"));
    }
}

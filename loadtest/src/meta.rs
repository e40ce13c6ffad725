//! Playing Meta's WhatsApp Cloud API: the webhook signature
//! (`X-Hub-Signature-256`), the webhook bodies Meta posts (a customer's text
//! message, a status of a message the business sent), the Graph API send
//! request the broker makes and its answer, and the numbers (`wa_id`) the
//! harness gives its WhatsApp customers.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The broker's WhatsApp webhook (messages and statuses both).
pub const WEBHOOK_PATH: &str = "/v1/channels/whatsapp/webhook";

/// The WhatsApp Business Account id in webhook envelopes (`entry[].id`).
const WABA_ID: &str = "102290129340398";

/// WhatsApp's settings, shared by the harness and the broker under test.
#[derive(Debug, Clone)]
pub struct WhatsappCfg {
    /// The access token the broker sends with (`Authorization: Bearer`).
    pub token: String,
    /// Signs webhooks (`X-Hub-Signature-256`).
    pub app_secret: String,
    /// The webhook handshake's `hub.verify_token`.
    pub verify_token: String,
    /// The business number's id: `metadata.phone_number_id` in webhooks and
    /// the path of the send API.
    pub phone_number_id: String,
    /// The business number customers write to (`metadata.display_phone_number`).
    pub display_number: String,
    /// The Graph API base the broker calls (`SWITCHBOARD_GRAPH_API_BASE`): the
    /// sink, with or without a version segment.
    pub graph_base: String,
}

impl WhatsappCfg {
    /// The environment a broker needs so that it talks to this harness.
    pub fn env_line(&self) -> String {
        format!(
            "SWITCHBOARD_GRAPH_API_BASE={} SWITCHBOARD_WHATSAPP_TOKEN={} \
             SWITCHBOARD_WHATSAPP_APP_SECRET={} SWITCHBOARD_WHATSAPP_VERIFY_TOKEN={} \
             SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID={}",
            self.graph_base, self.token, self.app_secret, self.verify_token, self.phone_number_id
        )
    }
}

/// Hex HMAC-SHA256 of `body` keyed with `key`.
pub fn hmac_sha256_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `X-Hub-Signature-256`: `sha256=` + hex HMAC-SHA256 of the raw body with
/// the app secret.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(app_secret.as_bytes(), body))
}

/// A WhatsApp message id: `wamid.` + 32 hex digits from `salt` and `n`.
pub fn wamid(salt: u64, n: u64) -> String {
    format!("wamid.{salt:016x}{n:016x}")
}

/// Seconds since the epoch, as webhooks' `timestamp` strings carry them.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn envelope(cfg: &WhatsappCfg, value: Value) -> String {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({
        "display_phone_number": cfg.display_number,
        "phone_number_id": cfg.phone_number_id,
    });
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{"value": value, "field": "messages"}],
        }],
    })
    .to_string()
}

/// The body of a webhook carrying one text message from `wa_id`, as Meta
/// posts it.
pub fn inbound_body(
    cfg: &WhatsappCfg,
    wamid: &str,
    wa_id: &str,
    name: &str,
    text: &str,
    timestamp: u64,
) -> String {
    envelope(
        cfg,
        json!({
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{
                "from": wa_id,
                "id": wamid,
                "timestamp": timestamp.to_string(),
                "text": {"body": text},
                "type": "text",
            }],
        }),
    )
}

/// The body of a webhook carrying one status of a message the business sent.
pub fn status_body(
    cfg: &WhatsappCfg,
    wamid: &str,
    recipient: &str,
    status: &str,
    timestamp: u64,
) -> String {
    let mut s = json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp.to_string(),
        "recipient_id": recipient,
    });
    if status == "failed" {
        s["errors"] = json!([{"code": 131026, "title": "Message undeliverable"}]);
    } else if status != "read" {
        s["conversation"] = json!({"id": format!("c{recipient}"), "origin": {"type": "service"}});
        s["pricing"] = json!({"billable": true, "pricing_model": "CBP", "category": "service"});
    }
    envelope(cfg, json!({ "statuses": [s] }))
}

/// A webhook with no message and no status: what the pre-flight posts.
pub fn empty_body(cfg: &WhatsappCfg) -> String {
    envelope(cfg, json!({}))
}

/// `18TTTT` + 8 digits: the `wa_id` of WhatsApp customer `idx` of the run with
/// tag `tag` (14 digits; no `+`, as WhatsApp writes them).
pub fn customer_number(tag: u32, idx: usize) -> String {
    format!("18{tag:04}{idx:08}")
}

/// What every WhatsApp customer number of the run starts with.
pub fn number_prefix(tag: u32) -> String {
    format!("18{tag:04}")
}

/// Whether `path` is the send API of `phone_number_id`:
/// `/{phone_number_id}/messages`, or `/v21.0/{phone_number_id}/messages`
/// (any one version segment), as the Graph base has one or not.
pub fn is_send_path(path: &str, phone_number_id: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let version = |s: &str| {
        s.strip_prefix('v').is_some_and(|v| {
            !v.is_empty()
                && v.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    match segments.as_slice() {
        [id, "messages"] => *id == phone_number_id,
        [v, id, "messages"] => version(v) && *id == phone_number_id,
        _ => false,
    }
}

/// What the sink needs from a send request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// The customer's `wa_id`.
    pub to: String,
    /// `text.body`, or a media caption; empty for a template.
    pub text: String,
    /// `text`, `template`, `image`, ...
    pub kind: String,
}

/// Parses the broker's send request (`{"messaging_product":"whatsapp",
/// "recipient_type":"individual","to":…,"type":"text","text":{"body":…}}`).
pub fn parse_send(body: &[u8]) -> Result<SendRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["messaging_product"] != "whatsapp" {
        return Err("messaging_product must be \"whatsapp\"".into());
    }
    let to = v["to"].as_str().unwrap_or_default();
    if to.is_empty() || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("to must be a wa_id (digits), got {}", v["to"]));
    }
    let kind = v["type"].as_str().unwrap_or("text");
    let text = match kind {
        "text" => v["text"]["body"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("a text message needs text.body")?,
        "template" => {
            if v["template"]["name"].as_str().is_none() {
                return Err("a template needs template.name".into());
            }
            ""
        }
        "image" | "document" | "audio" | "video" => {
            if v[kind]["link"].as_str().is_none() && v[kind]["id"].as_str().is_none() {
                return Err(format!("{kind} needs a link or an id"));
            }
            v[kind]["caption"].as_str().unwrap_or_default()
        }
        other => return Err(format!("unsupported type {other:?}")),
    };
    Ok(SendRequest {
        to: to.to_string(),
        text: text.to_string(),
        kind: kind.to_string(),
    })
}

/// Checks an `Authorization: Bearer` header against the token.
pub fn bearer_ok(header: Option<&str>, token: &str) -> bool {
    header
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

/// The Graph API's answer to a successful send.
pub fn send_answer(to: &str, wamid: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": wamid}],
    })
}

/// A Graph API error body.
pub fn graph_error(code: u32, kind: &str, message: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "code": code,
            "fbtrace_id": "AbCdEfGhIjKlMnOpQrStUvW",
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WhatsappCfg {
        WhatsappCfg {
            token: "tok".into(),
            app_secret: "secret".into(),
            verify_token: "verify".into(),
            phone_number_id: "1099".into(),
            display_number: "15550001111".into(),
            graph_base: "http://127.0.0.1:2/v21.0".into(),
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_matches_openssl() {
        // BODY='{"object":"whatsapp_business_account","entry":[]}'
        // printf '%s' "$BODY" | openssl dgst -sha256 -hmac app_secret
        assert_eq!(
            signature(
                "app_secret",
                br#"{"object":"whatsapp_business_account","entry":[]}"#
            ),
            "sha256=c236c758c9b2bd40b388a550eeca09eaca72384dd0aa5e7c31d19cddac5bba46"
        );
    }

    #[test]
    fn inbound_body_has_the_cloud_api_shape() {
        let c = cfg();
        let body = inbound_body(
            &c,
            "wamid.1",
            "18123400000007",
            "Dana",
            "lt #1 t=5",
            1_700_000_000,
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["object"], "whatsapp_business_account");
        let change = &v["entry"][0]["changes"][0];
        assert_eq!(change["field"], "messages");
        let value = &change["value"];
        assert_eq!(value["messaging_product"], "whatsapp");
        assert_eq!(value["metadata"]["phone_number_id"], "1099");
        assert_eq!(value["contacts"][0]["wa_id"], "18123400000007");
        assert_eq!(value["contacts"][0]["profile"]["name"], "Dana");
        let m = &value["messages"][0];
        assert_eq!(
            (m["from"].as_str(), m["id"].as_str(), m["type"].as_str()),
            (Some("18123400000007"), Some("wamid.1"), Some("text"))
        );
        assert_eq!(m["text"]["body"], "lt #1 t=5");
        assert_eq!(m["timestamp"], "1700000000");
        // The signature is over exactly these bytes.
        let sig = signature(&c.app_secret, body.as_bytes());
        assert_eq!(
            sig,
            format!("sha256={}", hmac_sha256_hex(b"secret", body.as_bytes()))
        );
        assert_eq!(sig.len(), 7 + 64);

        let st: Value =
            serde_json::from_str(&status_body(&c, "wamid.9", "181", "delivered", 1)).unwrap();
        let s = &st["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(
            (s["id"].as_str(), s["status"].as_str()),
            (Some("wamid.9"), Some("delivered"))
        );
        assert_eq!(s["recipient_id"], "181");
        let empty: Value = serde_json::from_str(&empty_body(&c)).unwrap();
        assert!(empty["entry"][0]["changes"][0]["value"]["messages"].is_null());
    }

    #[test]
    fn parses_the_brokers_send_request() {
        let body = br#"{"messaging_product":"whatsapp","recipient_type":"individual","to":"18123400000007","type":"text","text":{"body":"re: 3 #1 t=42"}}"#;
        assert_eq!(
            parse_send(body).unwrap(),
            SendRequest {
                to: "18123400000007".into(),
                text: "re: 3 #1 t=42".into(),
                kind: "text".into(),
            }
        );
        let template = br#"{"messaging_product":"whatsapp","to":"1555","type":"template","template":{"name":"hi","language":{"code":"en_US"}}}"#;
        assert_eq!(parse_send(template).unwrap().text, "");
        let image = br#"{"messaging_product":"whatsapp","to":"1555","type":"image","image":{"link":"http://x/a","caption":"look"}}"#;
        assert_eq!(parse_send(image).unwrap().text, "look");
        assert!(parse_send(b"{").is_err());
        assert!(parse_send(
            br#"{"messaging_product":"sms","to":"1","type":"text","text":{"body":"x"}}"#
        )
        .is_err());
        assert!(parse_send(
            br#"{"messaging_product":"whatsapp","to":"+1555","type":"text","text":{"body":"x"}}"#
        )
        .is_err());
        assert!(parse_send(
            br#"{"messaging_product":"whatsapp","to":"1555","type":"text","text":{}}"#
        )
        .is_err());
    }

    #[test]
    fn send_paths_auth_and_numbers() {
        assert!(is_send_path("/1099/messages", "1099"));
        assert!(is_send_path("/v21.0/1099/messages", "1099"));
        assert!(is_send_path("/v19/1099/messages", "1099"));
        assert!(!is_send_path("/v21.0/1098/messages", "1099"));
        assert!(!is_send_path("/x/1099/messages", "1099"));
        assert!(!is_send_path(
            "/2010-04-01/Accounts/AC1/Messages.json",
            "1099"
        ));
        assert!(!is_send_path("/1099/media", "1099"));
        assert!(bearer_ok(Some("Bearer tok"), "tok"));
        assert!(!bearer_ok(Some("Bearer tok2"), "tok"));
        assert!(!bearer_ok(Some("Basic tok"), "tok"));
        assert!(!bearer_ok(None, "tok"));
        let n = customer_number(42, 7);
        assert_eq!(n, "18004200000007");
        assert!(n.starts_with(&number_prefix(42)));
        assert_eq!(wamid(1, 2).len(), 6 + 32);
        assert_eq!(send_answer("1", "wamid.x")["messages"][0]["id"], "wamid.x");
        let env = cfg().env_line();
        assert!(env.contains("SWITCHBOARD_GRAPH_API_BASE=http://127.0.0.1:2/v21.0"));
        assert!(env.contains("SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID=1099"));
    }
}

//! Shared helpers for the provider-channel tests (SMS via Twilio, WhatsApp
//! Cloud API, Messenger): a broker configured against the mock provider,
//! signed webhook posts, provider payload builders and agent-side waits.
//!
//! Test files include it with `mod common; mod providers;`.
#![allow(dead_code)]

pub mod mock;
pub mod sign;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use switchboard::Config;

use crate::common::{self, Agent, Harness, Ws};
use mock::Mock;

/// What Twilio signatures are computed over, and the base of attachment links.
pub const PUBLIC: &str = "http://example.test";
pub const SMS_FROM: &str = "+15550001111";
pub const TW_SECRET: &str = mock::AUTH_TOKEN;
pub const WA_SECRET: &str = "wa-secret";
pub const WA_VERIFY: &str = "wa-verify";
pub const FB_SECRET: &str = "fb-secret";
pub const FB_VERIFY: &str = "fb-verify";
pub const PAGE_ID: &str = "PAGE1";
pub const WABA_ID: &str = "WABA";
pub const TWIML_EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

pub const SMS_INBOUND: &str = "/v1/channels/sms/inbound";
pub const SMS_STATUS: &str = "/v1/channels/sms/status";
pub const WA_WEBHOOK: &str = "/v1/channels/whatsapp/webhook";
pub const FB_WEBHOOK: &str = "/v1/channels/messenger/webhook";

/// A broker with all three provider channels configured against `mock`.
pub fn config(mock: &Mock) -> Config {
    let mut cfg = Config::for_tests();
    cfg.public_url = Some(PUBLIC.into());
    cfg.twilio_account_sid = Some(mock::ACCOUNT_SID.into());
    cfg.twilio_auth_token = Some(TW_SECRET.into());
    cfg.sms_from = vec![SMS_FROM.into()];
    cfg.twilio_api_base = mock.base_url();
    cfg.whatsapp_token = Some(mock::WA_TOKEN.into());
    cfg.whatsapp_app_secret = Some(WA_SECRET.into());
    cfg.whatsapp_verify_token = Some(WA_VERIFY.into());
    cfg.whatsapp_phone_number_id = Some(mock::PHONE_NUMBER_ID.into());
    cfg.messenger_page_token = Some(mock::PAGE_TOKEN.into());
    cfg.messenger_app_secret = Some(FB_SECRET.into());
    cfg.messenger_verify_token = Some(FB_VERIFY.into());
    cfg.graph_api_base = mock.base_url();
    cfg.provider_retries = 3;
    cfg.provider_backoff = Duration::from_millis(50);
    cfg.provider_timeout = Duration::from_millis(500);
    cfg.provider_in_flight = 4;
    cfg.provider_queue = 100;
    cfg
}

/// A running broker and its mock provider.
pub struct Env {
    // Dropped first: the broker stops before its provider does.
    pub h: Harness,
    pub mock: Mock,
}

/// A broker configured by `config` and then `tweak`.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Env {
    let mock = Mock::start();
    let mut cfg = config(&mock);
    tweak(&mut cfg);
    let h = common::start_with(cfg);
    Env { h, mock }
}

/// An HTTP answer with its content type.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    /// Asserts a `{"error":{"code"}}` answer with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            (self.status, self.error_code()),
            (status, code),
            "{what}: {}",
            self.text
        );
    }
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        text,
        body,
        bytes,
    }
}

pub type Params = Vec<(String, String)>;

fn pairs(list: &[(&str, &str)]) -> Params {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Env {
    /// Replaces the public base of a link handed to a provider with the
    /// broker's real address.
    pub fn local(&self, link: &str) -> String {
        assert!(
            link.starts_with(PUBLIC),
            "link should start with the public URL {PUBLIC}: {link}"
        );
        format!("{}{}", self.h.base, &link[PUBLIC.len()..])
    }

    /// POSTs a form, with `X-Twilio-Signature` when given.
    pub async fn post_form(&self, path: &str, params: &Params, signature: Option<&str>) -> Answer {
        let body = serde_urlencoded::to_string(params).expect("form encoding");
        let mut req = self
            .h
            .http
            .post(self.h.url(path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("User-Agent", "TwilioProxy/1.1")
            .body(body);
        if let Some(sig) = signature {
            req = req.header("X-Twilio-Signature", sig);
        }
        answer(
            req.send()
                .await
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
        .await
    }

    /// A Twilio webhook to `path`, signed as Twilio does over the public URL.
    pub async fn twilio_post(&self, path: &str, params: &Params) -> Answer {
        let sig = sign::twilio_signature(TW_SECRET, &format!("{PUBLIC}{path}"), params);
        self.post_form(path, params, Some(&sig)).await
    }

    pub async fn sms_inbound(&self, params: &Params) -> Answer {
        self.twilio_post(SMS_INBOUND, params).await
    }

    /// An inbound SMS that must be accepted (200, empty TwiML).
    pub async fn sms_in(&self, params: &Params) {
        let r = self.sms_inbound(params).await;
        assert_eq!(r.status, 200, "SMS inbound webhook: {}", r.text);
    }

    pub async fn sms_status(&self, params: &Params) -> Answer {
        self.twilio_post(SMS_STATUS, params).await
    }

    /// POSTs a raw JSON body with `X-Hub-Signature-256` when given.
    pub async fn post_meta(&self, path: &str, body: &[u8], signature: Option<&str>) -> Answer {
        let mut req = self
            .h
            .http
            .post(self.h.url(path))
            .header("Content-Type", "application/json")
            .header("User-Agent", "facebookexternalua")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("X-Hub-Signature-256", sig);
        }
        answer(
            req.send()
                .await
                .unwrap_or_else(|e| panic!("POST {path}: {e}")),
        )
        .await
    }

    pub async fn wa_webhook(&self, v: &Value) -> Answer {
        let body = v.to_string().into_bytes();
        let sig = sign::meta_signature(WA_SECRET, &body);
        self.post_meta(WA_WEBHOOK, &body, Some(&sig)).await
    }

    /// A WhatsApp webhook that must be accepted.
    pub async fn wa_in(&self, v: &Value) {
        let r = self.wa_webhook(v).await;
        assert_eq!(
            (r.status, &r.body),
            (200, &json!({"status": "received"})),
            "WhatsApp webhook answer: {}",
            r.text
        );
    }

    pub async fn fb_webhook(&self, v: &Value) -> Answer {
        let body = v.to_string().into_bytes();
        let sig = sign::meta_signature(FB_SECRET, &body);
        self.post_meta(FB_WEBHOOK, &body, Some(&sig)).await
    }

    /// A Messenger webhook that must be accepted.
    pub async fn fb_in(&self, v: &Value) {
        let r = self.fb_webhook(v).await;
        assert_eq!(
            (r.status, &r.body),
            (200, &json!({"status": "received"})),
            "Messenger webhook answer: {}",
            r.text
        );
    }

    /// The GET verify handshake with the given query pairs.
    pub async fn verify(&self, path: &str, query: &[(&str, &str)]) -> Answer {
        let q = serde_urlencoded::to_string(query).expect("query");
        let url = self.h.url(&format!("{path}?{q}"));
        answer(self.h.http.get(url).send().await.expect("verify GET")).await
    }

    /// GET with an optional bearer token.
    pub async fn get(&self, url: &str, token: Option<&str>) -> Answer {
        let mut req = self.h.http.get(self.h.url(url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        answer(
            req.send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}")),
        )
        .await
    }

    /// Creates an agent with capacity 2 on every provider channel, connects
    /// it and makes it available.
    pub async fn agent(&self, id: &str) -> (Agent, Ws) {
        let name = format!("Agent {id}");
        let body = json!({
            "id": id,
            "name": name,
            "capacity": {"webchat": 1, "sms": 2, "whatsapp": 2, "messenger": 2},
        });
        let r = self
            .h
            .request(
                reqwest::Method::POST,
                "/v1/agents",
                Some(&self.h.admin),
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 201, "create agent {id}: {}", r.text);
        let agent = Agent {
            id: id.to_string(),
            name,
            token: common::s(&r.body["token"]),
        };
        let ws = self.h.agent_online(&agent).await;
        (agent, ws)
    }

    /// Uploads a file as `token`; returns its id.
    pub async fn upload(&self, token: &str, filename: &str, ct: &str, bytes: Vec<u8>) -> String {
        let r = self
            .h
            .request_raw(
                reqwest::Method::POST,
                &format!("/v1/attachments?filename={filename}"),
                Some(token),
                ct,
                bytes,
            )
            .await;
        assert_eq!(r.status, 201, "upload {filename}: {}", r.text);
        common::s(&r.body["id"])
    }

    /// All messages of a conversation (admin view).
    pub async fn history(&self, conversation_id: &str) -> Vec<Value> {
        self.h.messages(conversation_id).await["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Value {
        self.h.admin_get_ok("/v1/stats").await
    }
}

// ---------------------------------------------------------------------------
// Agent side
// ---------------------------------------------------------------------------

/// Waits for an offer, accepts it; returns (offer, assigned, conversation id, task id).
pub async fn take(ws: &mut Ws) -> (Value, Value, String, String) {
    let (offer, assigned) = ws.take_offer().await;
    let conv = common::s(&offer["task"]["conversation_id"]);
    let task = common::s(&offer["task"]["id"]);
    (offer, assigned, conv, task)
}

/// Agent `send` with attachments; returns the answer (echo or error).
pub async fn send(ws: &mut Ws, conversation_id: &str, text: &str, attachments: &[&str]) -> Value {
    ws.call(json!({
        "type": "send",
        "conversation_id": conversation_id,
        "text": text,
        "attachments": attachments,
        "client_msg_id": common::next_ref("a"),
    }))
    .await
}

/// Agent `send` that must be accepted; returns the message id.
pub async fn send_ok(
    ws: &mut Ws,
    conversation_id: &str,
    text: &str,
    attachments: &[&str],
) -> String {
    let v = send(ws, conversation_id, text, attachments).await;
    assert_eq!(v["type"], "message", "send echo: {v}");
    assert_eq!(v["message"]["from"], "agent", "{v}");
    assert_eq!(
        v["message"]["status"], "accepted",
        "a new agent message: {v}"
    );
    common::s(&v["message"]["id"])
}

/// Agent `send` that must fail with `code`.
pub async fn send_err(
    ws: &mut Ws,
    conversation_id: &str,
    text: &str,
    attachments: &[&str],
    code: &str,
) -> Value {
    let v = send(ws, conversation_id, text, attachments).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some(code)),
        "send should fail with {code}: {v}"
    );
    v
}

/// The `message.status` event moving `message_id` to `status`.
pub async fn wait_status(ws: &mut Ws, message_id: &str, status: &str) -> Value {
    let v = ws
        .recv_where(&format!("message.status {status} for {message_id}"), |v| {
            v["type"] == "message.status" && v["message_id"] == message_id && v["status"] == status
        })
        .await;
    assert!(v["conversation_id"].is_string(), "{v}");
    v
}

/// The next `message.status` event for `message_id`, whatever its status.
pub async fn next_status(ws: &mut Ws, message_id: &str) -> Value {
    ws.recv_where(&format!("message.status for {message_id}"), |v| {
        v["type"] == "message.status" && v["message_id"] == message_id
    })
    .await
}

/// The next `message` event from the customer in `conversation_id`.
pub async fn customer_message(ws: &mut Ws, conversation_id: &str) -> Value {
    ws.recv_where(&format!("customer message in {conversation_id}"), |v| {
        v["type"] == "message"
            && v["conversation_id"] == conversation_id
            && v["message"]["from"] == "customer"
    })
    .await["message"]
        .clone()
}

/// Asserts that no offer and no message event reaches the agent for a while.
pub async fn assert_quiet(ws: &mut Ws, what: &str) {
    ws.expect_none(what, common::QUIET, |v| {
        v["type"] == "task.offered" || v["type"] == "message"
    })
    .await;
}

// ---------------------------------------------------------------------------
// Provider payloads
// ---------------------------------------------------------------------------

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Deterministic sample bytes.
pub fn sample(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// A Twilio inbound SMS webhook, with the fields Twilio sends.
pub fn sms_params(sid: &str, from: &str, body: &str) -> Params {
    sms_media_params(sid, from, body, &[])
}

/// A Twilio inbound MMS webhook with `(url, content type)` media.
pub fn sms_media_params(sid: &str, from: &str, body: &str, media: &[(String, &str)]) -> Params {
    let num_media = media.len().to_string();
    let mut p = pairs(&[
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", sid),
        ("NumMedia", &num_media),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", SMS_FROM),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", sid),
        ("AccountSid", mock::ACCOUNT_SID),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ]);
    for (i, (url, ct)) in media.iter().enumerate() {
        p.push((format!("MediaContentType{i}"), ct.to_string()));
        p.push((format!("MediaUrl{i}"), url.clone()));
    }
    p
}

/// A Twilio status callback for an outbound message `sid` to `to`.
pub fn sms_status_params(sid: &str, to: &str, status: &str, error_code: Option<&str>) -> Params {
    let mut p = pairs(&[
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", to),
        ("MessageSid", sid),
        ("AccountSid", mock::ACCOUNT_SID),
        ("From", SMS_FROM),
        ("ApiVersion", "2010-04-01"),
    ]);
    if let Some(code) = error_code {
        p.push(("ErrorCode".into(), code.into()));
    }
    p
}

/// A WhatsApp text message object.
pub fn wa_text(wamid: &str, from: &str, text: &str) -> Value {
    json!({
        "from": from,
        "id": wamid,
        "timestamp": now_secs().to_string(),
        "type": "text",
        "text": {"body": text},
    })
}

/// A WhatsApp media message object (`kind`: image, document, audio, video).
pub fn wa_media(
    wamid: &str,
    from: &str,
    kind: &str,
    media_id: &str,
    mime: &str,
    caption: Option<&str>,
) -> Value {
    let mut media = json!({"id": media_id, "mime_type": mime, "sha256": "0000"});
    if let Some(c) = caption {
        media["caption"] = json!(c);
    }
    if kind == "document" {
        media["filename"] = json!("receipt.pdf");
    }
    let mut m = json!({
        "from": from,
        "id": wamid,
        "timestamp": now_secs().to_string(),
        "type": kind,
    });
    m[kind] = media;
    m
}

/// One `changes[]` item carrying messages from `contacts` (wa_id, name).
pub fn wa_messages_change(contacts: &[(&str, &str)], messages: Vec<Value>) -> Value {
    let contacts: Vec<Value> = contacts
        .iter()
        .map(|(id, name)| json!({"profile": {"name": name}, "wa_id": id}))
        .collect();
    json!({
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": mock::PHONE_NUMBER_ID},
            "contacts": contacts,
            "messages": messages,
        }
    })
}

/// One `changes[]` item carrying statuses.
pub fn wa_statuses_change(statuses: Vec<Value>) -> Value {
    json!({
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": mock::PHONE_NUMBER_ID},
            "statuses": statuses,
        }
    })
}

/// A WhatsApp status object for an outbound message.
pub fn wa_status(wamid: &str, status: &str, recipient: &str) -> Value {
    json!({
        "id": wamid,
        "status": status,
        "timestamp": now_secs().to_string(),
        "recipient_id": recipient,
        "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "service"}},
        "pricing": {"billable": true, "pricing_model": "CBP", "category": "service"},
    })
}

/// The webhook envelope: one entry per item of `entries`, each a list of changes.
pub fn wa_envelope(entries: Vec<Vec<Value>>) -> Value {
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|changes| json!({"id": WABA_ID, "changes": changes}))
        .collect();
    json!({"object": "whatsapp_business_account", "entry": entries})
}

/// A whole WhatsApp webhook with one text message.
pub fn wa_text_webhook(wamid: &str, from: &str, name: &str, text: &str) -> Value {
    wa_envelope(vec![vec![wa_messages_change(
        &[(from, name)],
        vec![wa_text(wamid, from, text)],
    )]])
}

/// A whole WhatsApp webhook with one status.
pub fn wa_status_webhook(status: Value) -> Value {
    wa_envelope(vec![vec![wa_statuses_change(vec![status])]])
}

/// A Messenger webhook: one entry per list of messaging events.
pub fn fb_envelope(entries: Vec<Vec<Value>>) -> Value {
    let t = now_ms();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|events| json!({"id": PAGE_ID, "time": t, "messaging": events}))
        .collect();
    json!({"object": "page", "entry": entries})
}

/// A Messenger messaging event from `psid` carrying `message`.
pub fn fb_event(psid: &str, message: Value) -> Value {
    json!({
        "sender": {"id": psid},
        "recipient": {"id": PAGE_ID},
        "timestamp": now_ms(),
        "message": message,
    })
}

pub fn fb_text(mid: &str, psid: &str, text: &str) -> Value {
    fb_event(psid, json!({"mid": mid, "text": text}))
}

/// The echo of a message the page itself sent to `psid` (from the page inbox
/// or another app): sender and recipient are swapped.
pub fn fb_echo(mid: &str, psid: &str, text: &str) -> Value {
    json!({
        "sender": {"id": PAGE_ID},
        "recipient": {"id": psid},
        "timestamp": now_ms(),
        "message": {"is_echo": true, "app_id": 1517776481860111u64, "mid": mid, "text": text},
    })
}

/// A whole Messenger webhook with one text message.
pub fn fb_text_webhook(mid: &str, psid: &str, text: &str) -> Value {
    fb_envelope(vec![vec![fb_text(mid, psid, text)]])
}

/// A delivery receipt for `mids`.
pub fn fb_delivery(psid: &str, mids: &[&str]) -> Value {
    json!({
        "sender": {"id": psid},
        "recipient": {"id": PAGE_ID},
        "timestamp": now_ms(),
        "delivery": {"mids": mids, "watermark": now_ms()},
    })
}

/// A read receipt: everything sent before `watermark` (ms) was read.
pub fn fb_read(psid: &str, watermark: u64) -> Value {
    json!({
        "sender": {"id": psid},
        "recipient": {"id": PAGE_ID},
        "timestamp": now_ms(),
        "read": {"watermark": watermark},
    })
}

/// Splits an attachment link handed to a provider into (id, expires, signature),
/// checking its shape: `{PUBLIC}/v1/attachments/{id}?expires={secs}&signature={hex}`.
pub fn parse_link(link: &str) -> (String, u64, String) {
    let rest = link
        .strip_prefix(&format!("{PUBLIC}/v1/attachments/"))
        .unwrap_or_else(|| panic!("attachment link shape: {link}"));
    let (id, query) = rest
        .split_once('?')
        .unwrap_or_else(|| panic!("attachment link without query: {link}"));
    let q: Vec<(String, String)> = serde_urlencoded::from_str(query).expect("link query");
    let get = |k: &str| {
        q.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing in {link}"))
    };
    let expires: u64 = get("expires")
        .parse()
        .unwrap_or_else(|e| panic!("expires in {link}: {e}"));
    let signature = get("signature");
    assert!(
        signature.len() == 64 && signature.bytes().all(|b| b.is_ascii_hexdigit()),
        "signature should be hex HMAC-SHA256: {link}"
    );
    (id.to_string(), expires, signature)
}

/// An attachment link with the given parts.
pub fn link_with(id: &str, expires: u64, signature: &str) -> String {
    format!("{PUBLIC}/v1/attachments/{id}?expires={expires}&signature={signature}")
}

/// The same link with one hex digit of the signature changed.
pub fn tamper_signature(link: &str) -> String {
    let (id, expires, sig) = parse_link(link);
    let mut chars: Vec<char> = sig.chars().collect();
    chars[0] = if chars[0] == '0' { '1' } else { '0' };
    link_with(&id, expires, &chars.into_iter().collect::<String>())
}

/// The same link with a later expiry (the signature no longer matches).
pub fn tamper_expires(link: &str) -> String {
    let (id, expires, sig) = parse_link(link);
    link_with(&id, expires + 3600, &sig)
}

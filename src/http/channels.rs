//! Provider webhooks: `/v1/channels/sms/{inbound,status}`,
//! `/v1/channels/whatsapp/webhook`, `/v1/channels/messenger/webhook`.
//!
//! Each handler: channel enabled? → body within the limit → signature →
//! parse the whole body (a batch fails whole) → download media → hand each
//! customer's events to that customer's channel shard and wait until every
//! shard holds its part → answer 200. The provider gets its 200 only once the
//! broker has every message of the batch.
//!
//! The checks up to the parse need only the configuration ([`Webhook`]), so
//! a cluster's standby makes them where the webhook arrived and hands the
//! events to the active node over the bus (`http::standby`,
//! `cluster::node_bus`), which downloads the media and takes them
//! ([`take`]) as for its own webhooks.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::channel::provider::{fetch_all_media, verify_meta_signature, InboundEvent};
use crate::channel::{disabled, messenger, sms, whatsapp};
use crate::config::Config;
use crate::error::ApiError;
use crate::http::{same_secret, State};
use crate::protocol::ChannelKind;
use crate::wiring::Broker;

const TWIML_EMPTY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#;

async fn read_body(mut payload: web::Payload, limit: u64) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(ApiError::body)?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "webhook body larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The providers' webhooks: where each is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `POST /v1/channels/sms/inbound`
    SmsInbound,
    /// `POST /v1/channels/sms/status`
    SmsStatus,
    /// `POST /v1/channels/whatsapp/webhook`
    Whatsapp,
    /// `POST /v1/channels/messenger/webhook`
    Messenger,
}

/// A provider's webhook, checked and parsed: its events, and how the
/// provider is answered once the broker holds them.
pub struct Webhook {
    pub kind: ChannelKind,
    pub events: Vec<InboundEvent>,
}

impl Webhook {
    /// The answer the provider expects: TwiML for Twilio, JSON for Meta.
    pub fn answer(kind: ChannelKind) -> HttpResponse {
        match kind {
            ChannelKind::Sms => HttpResponse::Ok()
                .content_type("text/xml; charset=utf-8")
                .body(TWIML_EMPTY),
            _ => HttpResponse::Ok().json(serde_json::json!({"status": "received"})),
        }
    }

    /// The webhook posted to `hook`, checked and parsed.
    pub async fn check(
        hook: Hook,
        config: &Config,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<Webhook, ApiError> {
        match hook {
            Hook::SmsInbound => Webhook::sms_inbound(config, req, payload).await,
            Hook::SmsStatus => Webhook::sms_status(config, req, payload).await,
            Hook::Whatsapp => Webhook::whatsapp(config, req, payload).await,
            Hook::Messenger => Webhook::messenger(config, req, payload).await,
        }
    }

    /// `POST /v1/channels/sms/inbound`, checked: an incoming text.
    async fn sms_inbound(
        config: &Config,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<Webhook, ApiError> {
        let params = twilio_params(config, req, payload, "/v1/channels/sms/inbound").await?;
        let event = sms::parse_inbound(
            &params,
            config.twilio_account_sid.as_deref().unwrap_or_default(),
            config.twilio_auth_token.as_deref().unwrap_or_default(),
        )?;
        Ok(Webhook {
            kind: ChannelKind::Sms,
            events: vec![event],
        })
    }

    /// `POST /v1/channels/sms/status`, checked: a delivery report (none
    /// for a status the broker does not track).
    async fn sms_status(
        config: &Config,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<Webhook, ApiError> {
        let params = twilio_params(config, req, payload, "/v1/channels/sms/status").await?;
        Ok(Webhook {
            kind: ChannelKind::Sms,
            events: sms::parse_status(&params)?.into_iter().collect(),
        })
    }

    /// `POST /v1/channels/whatsapp/webhook`, checked.
    async fn whatsapp(
        config: &Config,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<Webhook, ApiError> {
        let kind = ChannelKind::Whatsapp;
        let body = meta_body(config, req, payload, kind, &config.whatsapp_app_secret).await?;
        let token = config.whatsapp_token.as_deref().unwrap_or_default();
        Ok(Webhook {
            kind,
            events: whatsapp::parse(&body, token)?,
        })
    }

    /// `POST /v1/channels/messenger/webhook`, checked.
    async fn messenger(
        config: &Config,
        req: &HttpRequest,
        payload: web::Payload,
    ) -> Result<Webhook, ApiError> {
        let kind = ChannelKind::Messenger;
        let body = meta_body(config, req, payload, kind, &config.messenger_app_secret).await?;
        Ok(Webhook {
            kind,
            events: messenger::parse(&body)?,
        })
    }
}

/// `404 channel_disabled` unless `kind` is configured.
fn enabled(config: &Config, kind: ChannelKind) -> Result<(), ApiError> {
    let on = match kind {
        ChannelKind::Sms => config.sms_enabled(),
        ChannelKind::Whatsapp => config.whatsapp_enabled(),
        ChannelKind::Messenger => config.messenger_enabled(),
        ChannelKind::Webchat => false,
    };
    if on {
        Ok(())
    } else {
        Err(disabled(kind))
    }
}

/// Hand a webhook's events to their channel: their media downloaded, every
/// customer's part held by its shard. On the node that runs the channels,
/// for its own webhooks and for those a standby took.
pub async fn take(
    broker: &Broker,
    kind: ChannelKind,
    mut events: Vec<InboundEvent>,
) -> Result<(), ApiError> {
    let channel = broker.channels.provider(kind)?.clone();
    fetch_all_media(broker, &broker.http, &mut events).await;
    channel
        .submit(broker, events)
        .await
        .map_err(ApiError::mailbox)
}

/// Take a webhook here and answer the provider.
async fn taken(state: &State, webhook: Webhook) -> Result<HttpResponse, ApiError> {
    if !webhook.events.is_empty() {
        take(state, webhook.kind, webhook.events).await?;
    }
    Ok(Webhook::answer(webhook.kind))
}

/// Twilio posts form parameters, signed over the public URL it called.
async fn twilio_params(
    config: &Config,
    req: &HttpRequest,
    payload: web::Payload,
    path: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    enabled(config, ChannelKind::Sms)?;
    let body = read_body(payload, config.max_webhook_body).await?;
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))?;
    let url = format!("{}{path}", config.public_base());
    let token = config.twilio_auth_token.as_deref().unwrap_or_default();
    if !sms::verify(&url, &params, token, header(req, "X-Twilio-Signature")) {
        return Err(ApiError::BadSignature(
            "X-Twilio-Signature is missing or does not match".into(),
        ));
    }
    Ok(params)
}

#[derive(Debug, Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

/// Meta's subscription check (`GET` on a webhook's URL): the challenge back
/// when the verify token matches. Needs only the configuration.
pub fn handshake(
    config: &Config,
    kind: ChannelKind,
    q: &Handshake,
) -> Result<HttpResponse, ApiError> {
    enabled(config, kind)?;
    let expected = match kind {
        ChannelKind::Whatsapp => config.whatsapp_verify_token.as_deref(),
        ChannelKind::Messenger => config.messenger_verify_token.as_deref(),
        _ => None,
    };
    let ok = q.mode.as_deref() == Some("subscribe")
        && matches!((expected, q.verify_token.as_deref()), (Some(e), Some(g)) if same_secret(e, g));
    if !ok {
        return Err(ApiError::BadSignature(
            "hub.mode must be subscribe and hub.verify_token must match".into(),
        ));
    }
    Ok(HttpResponse::Ok()
        .insert_header(ContentType::plaintext())
        .body(q.challenge.clone().unwrap_or_default()))
}

/// Meta posts JSON signed with the app secret.
async fn meta_body(
    config: &Config,
    req: &HttpRequest,
    payload: web::Payload,
    kind: ChannelKind,
    secret: &Option<String>,
) -> Result<serde_json::Value, ApiError> {
    enabled(config, kind)?;
    let body = read_body(payload, config.max_webhook_body).await?;
    if !verify_meta_signature(
        secret.as_deref().unwrap_or_default(),
        &body,
        header(req, "X-Hub-Signature-256"),
    ) {
        return Err(ApiError::BadSignature(
            "X-Hub-Signature-256 is missing or does not match".into(),
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The webhooks' routes under `/v1/channels`, each `POST` to `post` and
/// each of Meta's subscription checks to `get`: the broker's and a
/// standby's.
pub fn routes(
    scope: &mut web::ServiceConfig,
    post: impl Fn(Hook) -> actix_web::Route,
    get: impl Fn(ChannelKind) -> actix_web::Route,
) {
    scope
        .route("/sms/inbound", post(Hook::SmsInbound))
        .route("/sms/status", post(Hook::SmsStatus))
        .route("/whatsapp/webhook", get(ChannelKind::Whatsapp))
        .route("/whatsapp/webhook", post(Hook::Whatsapp))
        .route("/messenger/webhook", get(ChannelKind::Messenger))
        .route("/messenger/webhook", post(Hook::Messenger));
}

/// `POST` to a provider's webhook (`hook`): checked and taken here.
pub async fn receive(
    hook: Hook,
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let webhook = Webhook::check(hook, &state.config, &req, payload).await?;
    taken(&state, webhook).await
}

/// `GET` on Meta's webhooks (`kind`): the subscription check.
pub async fn verify(
    kind: ChannelKind,
    state: State,
    q: web::Query<Handshake>,
) -> Result<HttpResponse, ApiError> {
    handshake(&state.config, kind, &q)
}

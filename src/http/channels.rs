//! Provider webhooks: `/v1/channels/sms/{inbound,status}`,
//! `/v1/channels/whatsapp/webhook`, `/v1/channels/messenger/webhook`.
//!
//! Each handler: channel enabled? → body within the limit → signature →
//! parse the whole body (a batch fails whole) → download media → hand each
//! customer's events to that customer's channel shard and wait until every
//! shard holds its part → answer 200. The provider gets its 200 only once the
//! broker has every message of the batch.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::channel::provider::{fetch_all_media, verify_meta_signature, InboundEvent};
use crate::channel::{messenger, sms, whatsapp};
use crate::error::ApiError;
use crate::http::{same_secret, State};
use crate::protocol::ChannelKind;

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

async fn submit(
    state: &State,
    kind: ChannelKind,
    mut events: Vec<InboundEvent>,
) -> Result<(), ApiError> {
    let channel = state.channels.provider(kind)?.clone();
    fetch_all_media(state, &state.http, &mut events).await;
    channel
        .submit(state, events)
        .await
        .map_err(ApiError::mailbox)
}

fn twiml() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/xml; charset=utf-8")
        .body(TWIML_EMPTY)
}

/// Twilio posts form parameters, signed over the public URL it called.
async fn twilio_params(
    req: &HttpRequest,
    state: &State,
    payload: web::Payload,
    path: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    state.channels.provider(ChannelKind::Sms)?;
    let body = read_body(payload, state.config.max_webhook_body).await?;
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))?;
    let url = format!("{}{path}", state.config.public_base());
    let token = state
        .config
        .twilio_auth_token
        .as_deref()
        .unwrap_or_default();
    if !sms::verify(&url, &params, token, header(req, "X-Twilio-Signature")) {
        return Err(ApiError::BadSignature(
            "X-Twilio-Signature is missing or does not match".into(),
        ));
    }
    Ok(params)
}

/// `POST /v1/channels/sms/inbound`
pub async fn sms_inbound(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let params = twilio_params(&req, &state, payload, "/v1/channels/sms/inbound").await?;
    let event = sms::parse_inbound(
        &params,
        state
            .config
            .twilio_account_sid
            .as_deref()
            .unwrap_or_default(),
        state
            .config
            .twilio_auth_token
            .as_deref()
            .unwrap_or_default(),
    )?;
    submit(&state, ChannelKind::Sms, vec![event]).await?;
    Ok(twiml())
}

/// `POST /v1/channels/sms/status`
pub async fn sms_status(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let params = twilio_params(&req, &state, payload, "/v1/channels/sms/status").await?;
    if let Some(event) = sms::parse_status(&params)? {
        submit(&state, ChannelKind::Sms, vec![event]).await?;
    }
    Ok(twiml())
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

fn handshake(expected: Option<&str>, q: &Handshake) -> Result<HttpResponse, ApiError> {
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
    req: &HttpRequest,
    state: &State,
    payload: web::Payload,
    kind: ChannelKind,
    secret: Option<&str>,
) -> Result<serde_json::Value, ApiError> {
    state.channels.provider(kind)?;
    let body = read_body(payload, state.config.max_webhook_body).await?;
    if !verify_meta_signature(
        secret.unwrap_or_default(),
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

fn received() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "received"}))
}

/// `GET /v1/channels/whatsapp/webhook`
pub async fn whatsapp_verify(
    state: State,
    q: web::Query<Handshake>,
) -> Result<HttpResponse, ApiError> {
    state.channels.provider(ChannelKind::Whatsapp)?;
    handshake(state.config.whatsapp_verify_token.as_deref(), &q)
}

/// `POST /v1/channels/whatsapp/webhook`
pub async fn whatsapp_webhook(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let secret = state.config.whatsapp_app_secret.clone();
    let body = meta_body(
        &req,
        &state,
        payload,
        ChannelKind::Whatsapp,
        secret.as_deref(),
    )
    .await?;
    let token = state.config.whatsapp_token.clone().unwrap_or_default();
    let events = whatsapp::parse(&body, &token)?;
    submit(&state, ChannelKind::Whatsapp, events).await?;
    Ok(received())
}

/// `GET /v1/channels/messenger/webhook`
pub async fn messenger_verify(
    state: State,
    q: web::Query<Handshake>,
) -> Result<HttpResponse, ApiError> {
    state.channels.provider(ChannelKind::Messenger)?;
    handshake(state.config.messenger_verify_token.as_deref(), &q)
}

/// `POST /v1/channels/messenger/webhook`
pub async fn messenger_webhook(
    req: HttpRequest,
    state: State,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let secret = state.config.messenger_app_secret.clone();
    let body = meta_body(
        &req,
        &state,
        payload,
        ChannelKind::Messenger,
        secret.as_deref(),
    )
    .await?;
    let events = messenger::parse(&body)?;
    submit(&state, ChannelKind::Messenger, events).await?;
    Ok(received())
}

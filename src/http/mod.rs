//! HTTP routes: thin handlers that authenticate, parse, ask an actor and
//! translate its answer. One file per resource:
//! `agents.rs`, `conversations.rs`, `attachments.rs`, `webchat.rs`,
//! `tasks.rs`, `sockets.rs` (WebSocket upgrades) and `ops.rs` (health, stats,
//! metrics, dispositions). Errors are [`ApiError`]s, rendered as
//! `{"error":{"code","message"}}`.

pub mod agents;
pub mod attachments;
pub mod body;
pub mod channels;
pub mod conversations;
pub mod ops;
pub mod sockets;
pub mod tasks;
pub mod upgrade;
pub mod webchat;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::broker::Broker;
use crate::error::ApiError;
use crate::protocol::Id;

/// The shared state every handler gets.
pub type State = web::Data<Arc<Broker>>;

/// Largest JSON body accepted on the HTTP API.
const JSON_LIMIT: usize = 256 * 1024;

/// Mount every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default()
        .limit(JSON_LIMIT)
        .error_handler(|err, _| {
            use actix_web::error::JsonPayloadError as E;
            let api = match err {
                E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => {
                    ApiError::PayloadTooLarge(format!("JSON body larger than {limit} bytes"))
                }
                E::ContentType => {
                    ApiError::BadRequest("expected Content-Type: application/json".into())
                }
                E::Deserialize(e) => ApiError::BadRequest(format!("invalid JSON body: {e}")),
                E::Payload(e) => ApiError::body(e),
                other => ApiError::BadRequest(format!("invalid JSON body: {other}")),
            };
            api.into()
        });
    let query = web::QueryConfig::default()
        .error_handler(|err, _| ApiError::BadRequest(format!("invalid query: {err}")).into());
    let path = web::PathConfig::default()
        .error_handler(|err, _| ApiError::BadRequest(format!("invalid path: {err}")).into());
    cfg.app_data(json)
        .app_data(query)
        .app_data(path)
        .route("/healthz", web::get().to(ops::healthz))
        .route("/metrics", web::get().to(ops::metrics))
        .service(
            web::scope("/v1")
                .route("/stats", web::get().to(ops::stats))
                .route("/dispositions", web::get().to(ops::dispositions))
                .route("/agents", web::post().to(agents::create))
                .route("/agents", web::get().to(agents::list))
                .route("/agents/{id}", web::get().to(agents::get))
                .route("/agents/{id}", web::patch().to(agents::update))
                .route("/agents/{id}", web::delete().to(agents::delete))
                .route("/agents/{id}/token", web::post().to(agents::rotate_token))
                .route("/agents/{id}/ws", web::get().to(sockets::agent))
                .route("/tasks", web::get().to(tasks::list))
                .route("/conversations/{id}", web::get().to(conversations::get))
                .route(
                    "/conversations/{id}/messages",
                    web::get().to(conversations::messages),
                )
                .route("/attachments", web::post().to(attachments::upload))
                .route("/attachments/{id}", web::get().to(attachments::download))
                .route("/webchat/sessions", web::post().to(webchat::create_session))
                .route("/webchat/session", web::get().to(webchat::get_session))
                .route("/webchat/ws", web::get().to(sockets::webchat))
                .route("/supervisor/ws", web::get().to(sockets::supervisor))
                .route(
                    "/channels/sms/inbound",
                    web::post().to(channels::sms_inbound),
                )
                .route("/channels/sms/status", web::post().to(channels::sms_status))
                .route(
                    "/channels/whatsapp/webhook",
                    web::get().to(channels::whatsapp_verify),
                )
                .route(
                    "/channels/whatsapp/webhook",
                    web::post().to(channels::whatsapp_webhook),
                )
                .route(
                    "/channels/messenger/webhook",
                    web::get().to(channels::messenger_verify),
                )
                .route(
                    "/channels/messenger/webhook",
                    web::post().to(channels::messenger_webhook),
                ),
        )
        .configure(crate::web::routes)
        .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Read a JSON body after the caller has been authenticated (the `Json`
/// extractor would parse before the handler runs, so an unauthenticated caller
/// would learn about validation instead of getting `unauthorized`).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    mut payload: web::Payload,
) -> Result<T, ApiError> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(ApiError::body)?;
        if body.len() + chunk.len() > JSON_LIMIT {
            return Err(ApiError::PayloadTooLarge(format!(
                "JSON body larger than {JSON_LIMIT} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The client's address as the limits see it: the peer, or through a
/// trusted proxy its `X-Forwarded-For` (`limits::Limits::client_ip`).
pub fn client_ip(req: &HttpRequest, broker: &Broker) -> Option<std::net::IpAddr> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    broker.limits.client_ip(req.peer_addr(), forwarded)
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Agent(Id),
    Customer(Id),
}

/// The bearer token of a request: `Authorization: Bearer …`, else `?token=`.
pub fn bearer(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

/// Compare secrets without an early exit, so timing tells nothing.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn authenticate(req: &HttpRequest, broker: &Broker) -> Result<Principal, ApiError> {
    let token = bearer(req).ok_or_else(|| {
        ApiError::Unauthorized("missing credentials: send Authorization: Bearer <token>".into())
    })?;
    if same_secret(&token, &broker.admin_token) {
        return Ok(Principal::Admin);
    }
    if let Some(agent) = broker.agent_by_token(&token) {
        return Ok(Principal::Agent(agent));
    }
    if let Some(session) = broker.webchat_session(&token) {
        return Ok(Principal::Customer(session));
    }
    Err(ApiError::Unauthorized("invalid token".into()))
}

pub fn require_admin(req: &HttpRequest, broker: &Broker) -> Result<(), ApiError> {
    match authenticate(req, broker)? {
        Principal::Admin => Ok(()),
        _ => Err(ApiError::Unauthorized(
            "this endpoint needs the admin token".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }

    #[test]
    fn bearer_from_header_or_query() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer t1"))
            .to_http_request();
        assert_eq!(bearer(&req).as_deref(), Some("t1"));
        let req = actix_web::test::TestRequest::with_uri("/x?token=t2").to_http_request();
        assert_eq!(bearer(&req).as_deref(), Some("t2"));
        let req = actix_web::test::TestRequest::default().to_http_request();
        assert_eq!(bearer(&req), None);
    }
}

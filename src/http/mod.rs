//! HTTP routes: thin handlers that authenticate, parse, ask an actor and
//! translate its answer. One file per resource:
//! `agents.rs`, `conversations.rs`, `attachments.rs`, `webchat.rs`,
//! `tasks.rs`, `transfers.rs` (a supervisor's transfer), `queues.rs`,
//! `sockets.rs` (WebSocket upgrades) and `ops.rs`
//! (health, stats, metrics, dispositions); `request_line.rs` limits URL length
//! before any route runs. Errors are [`ApiError`]s, rendered as
//! `{"error":{"code","message"}}`.
//!
//! Authentication lives here: a token comes in `Authorization: Bearer`, or
//! as `?token=` on WebSocket upgrades only ([`bearer`]); a token that matches
//! nothing counts against the caller's address (`throttle.rs`), which is
//! refused with `429` while over the limit ([`throttle_gate`],
//! [`auth_failed`]).

pub mod agents;
pub mod attachments;
pub mod body;
pub mod canned;
pub mod channels;
pub mod conversations;
pub mod ops;
pub mod queues;
pub mod request_line;
pub mod sockets;
pub mod standby;
pub mod tasks;
pub mod throttle;
pub mod transfers;
pub mod upgrade;
pub mod webchat;

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::broker::AgentToken;
use crate::error::ApiError;
use crate::protocol::Id;
use crate::wiring::Broker;

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
                .route("/cluster", web::get().to(ops::cluster))
                .route("/dispositions", web::get().to(ops::dispositions))
                .route("/agents", web::post().to(agents::create))
                .route("/agents", web::get().to(agents::list))
                .route("/agents/{id}", web::get().to(agents::get))
                .route("/agents/{id}", web::patch().to(agents::update))
                .route("/agents/{id}", web::delete().to(agents::delete))
                .route("/agents/{id}/token", web::post().to(agents::rotate_token))
                .route("/agents/{id}/ws", web::get().to(sockets::agent))
                .route("/tasks", web::get().to(tasks::list))
                .route("/tasks/{id}/complete", web::post().to(tasks::complete))
                .route("/tasks/{id}/transfer", web::post().to(transfers::transfer))
                .route("/queues", web::post().to(queues::create))
                .route("/queues", web::get().to(queues::list))
                .route("/queues/{id}", web::get().to(queues::get))
                .route("/queues/{id}", web::patch().to(queues::update))
                .route("/queues/{id}", web::delete().to(queues::delete))
                .route("/canned-responses", web::post().to(canned::create))
                .route("/canned-responses", web::get().to(canned::list))
                .route("/canned-responses/{id}", web::patch().to(canned::update))
                .route("/canned-responses/{id}", web::delete().to(canned::delete))
                .route("/conversations", web::get().to(conversations::list))
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
                .service(web::scope("/channels").configure(|scope| {
                    channels::routes(
                        scope,
                        |hook| {
                            web::post().to(move |req, state, payload| {
                                channels::receive(hook, req, state, payload)
                            })
                        },
                        |kind| web::get().to(move |state, q| channels::verify(kind, state, q)),
                    )
                })),
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

/// Is this a WebSocket upgrade request (`Upgrade: websocket`)?
fn is_websocket_upgrade(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The bearer token of a request: `Authorization: Bearer …`, else, on a
/// WebSocket upgrade only, `?token=` (browsers cannot set headers on a
/// WebSocket). Anywhere else `?token=` is refused rather than ignored, so a
/// client that put its token in a URL (where proxies and browsers log it)
/// learns to move it to the header.
pub fn bearer(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "malformed Authorization header: send Authorization: Bearer <token>".into(),
                )
            })?;
        return Ok(Some(token.trim().to_owned()));
    }
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned());
    match query {
        Some(_) if !is_websocket_upgrade(req) => Err(ApiError::Unauthorized(
            "?token= is accepted only on WebSocket upgrades: send the token in an \
             Authorization: Bearer <token> header"
                .into(),
        )),
        other => Ok(other),
    }
}

/// The address failed authentications are counted against.
fn client_key(req: &HttpRequest) -> Option<throttle::ClientKey> {
    req.peer_addr().map(|a| throttle::ClientKey::of(a.ip()))
}

/// Before a presented token is looked at: `429 rate_limited` while the
/// caller's address is throttled (see [`throttle`]).
pub fn throttle_gate(req: &HttpRequest, broker: &Broker) -> Result<(), ApiError> {
    throttle_gate_of(client_key(req), req.path(), broker)
}

/// [`throttle_gate`] for a caller known by its address alone (a socket
/// another node holds, `cluster::node_bus`).
pub fn throttle_gate_of(
    key: Option<throttle::ClientKey>,
    route: &str,
    broker: &Broker,
) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    broker.auth_throttle.check(key).map_err(|wait| {
        tracing::debug!(ip = %key, route = %route, "authentication refused: address throttled");
        ApiError::AuthThrottled {
            retry_after: wait.as_secs_f64().ceil() as u64,
        }
    })
}

/// A presented token matched nothing: count it against the caller's address
/// and write the audit line (address, method and path; never the token or
/// the query string, which may hold it). `401 unauthorized` with `message`,
/// or `429 rate_limited` once the address is over the limit.
pub fn auth_failed(req: &HttpRequest, broker: &Broker, message: &str) -> ApiError {
    auth_failed_of(
        client_key(req),
        req.method().as_str(),
        req.path(),
        broker,
        message,
    )
}

/// [`auth_failed`] for a caller known by its address alone.
pub fn auth_failed_of(
    key: Option<throttle::ClientKey>,
    method: &str,
    route: &str,
    broker: &Broker,
    message: &str,
) -> ApiError {
    let Some(key) = key else {
        return ApiError::Unauthorized(message.into());
    };
    match broker.auth_throttle.failed(key) {
        throttle::Failure::Counted => {
            tracing::warn!(
                ip = %key,
                method = %method,
                route = %route,
                "authentication failed: unknown token"
            );
            ApiError::Unauthorized(message.into())
        }
        throttle::Failure::Blocked(wait) => {
            let retry_after = wait.as_secs_f64().ceil() as u64;
            tracing::warn!(
                ip = %key,
                method = %method,
                route = %route,
                retry_after_s = retry_after,
                limit_per_minute = broker.config.auth_failures_per_minute,
                "authentication throttled: too many failed attempts from this address"
            );
            ApiError::AuthThrottled { retry_after }
        }
    }
}

/// Compare secrets without an early exit, so timing tells nothing.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `401 unauthorized`: a request that presented no token.
pub fn missing_credentials() -> ApiError {
    ApiError::Unauthorized("missing credentials: send Authorization: Bearer <token>".into())
}

/// Who a request's token names. Throttled per address: see [`throttle`].
pub fn authenticate(req: &HttpRequest, broker: &Broker) -> Result<Principal, ApiError> {
    let token = bearer(req)?.ok_or_else(missing_credentials)?;
    authenticate_of(
        &token,
        client_key(req),
        req.method().as_str(),
        req.path(),
        broker,
    )
}

/// [`authenticate`] for a token presented by a caller known by its address
/// alone (a socket another node holds, `cluster::node_bus`).
pub fn authenticate_of(
    token: &str,
    key: Option<throttle::ClientKey>,
    method: &str,
    route: &str,
    broker: &Broker,
) -> Result<Principal, ApiError> {
    throttle_gate_of(key, route, broker)?;
    if same_secret(token, &broker.admin_token) {
        return Ok(Principal::Admin);
    }
    if let Some(agent) = broker.agent_by_token(token) {
        return match agent {
            AgentToken::Valid(id) => Ok(Principal::Agent(id)),
            AgentToken::Expired(id) => Err(token_expired(&id)),
        };
    }
    if let Some(session) = broker.webchat_session(token) {
        return Ok(Principal::Customer(session));
    }
    Err(auth_failed_of(key, method, route, broker, "invalid token"))
}

/// `401 token_expired` for agent `id`.
pub fn token_expired(id: &str) -> ApiError {
    ApiError::TokenExpired(format!(
        "the token of agent {id} has expired: an admin gives it a new one with \
         POST /v1/agents/{id}/token"
    ))
}

/// Who a supervisor action was done by, as `supervisor.action` names it: the
/// admin token is the one supervisor identity the broker knows.
pub const ADMIN_ACTOR: &str = "admin";

pub fn require_admin(req: &HttpRequest, broker: &Broker) -> Result<(), ApiError> {
    admin_only(authenticate(req, broker)?)
}

/// Ok for the admin; `401 unauthorized` for anyone else.
pub fn admin_only(principal: Principal) -> Result<(), ApiError> {
    match principal {
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
    fn bearer_from_header_or_query_on_upgrades_only() {
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Bearer t1"))
            .to_http_request();
        assert_eq!(bearer(&req), Ok(Some("t1".into())));
        let req = actix_web::test::TestRequest::with_uri("/x?token=t2")
            .insert_header(("Upgrade", "websocket"))
            .to_http_request();
        assert_eq!(bearer(&req), Ok(Some("t2".into())));
        let req = actix_web::test::TestRequest::with_uri("/x?token=t2").to_http_request();
        let err = bearer(&req).unwrap_err();
        assert_eq!(err.code(), "unauthorized");
        assert!(err.to_string().contains("Authorization: Bearer"), "{err}");
        let req = actix_web::test::TestRequest::default().to_http_request();
        assert_eq!(bearer(&req), Ok(None));
        let req = actix_web::test::TestRequest::default()
            .insert_header(("Authorization", "Basic dTpw"))
            .to_http_request();
        assert!(bearer(&req).is_err());
    }
}

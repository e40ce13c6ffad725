//! WebSocket upgrades: authenticate, then hand the socket to its session actor.
//! A token that matches nothing counts against the caller's address like any
//! other failed authentication (`super::throttle`).

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::channel::webchat::{too_many_sockets, SocketsOf};
use crate::error::ApiError;
use crate::http::{auth_failed, bearer, require_admin, same_secret, throttle_gate, State};
use crate::ws::agent_session::AgentSession;
use crate::ws::customer_session::CustomerSession;
use crate::ws::supervisor_session::SupervisorSession;

fn upgrade_failed(e: actix_web::Error) -> ApiError {
    ApiError::BadRequest(format!("WebSocket upgrade failed: {e}"))
}

/// `GET /v1/agents/{id}/ws?token=…`
pub async fn agent(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    stream: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req)?.ok_or_else(|| ApiError::Unauthorized("missing ?token=".into()))?;
    throttle_gate(&req, &state)?;
    let entry = state
        .agent(&id)
        .filter(|e| same_secret(&e.token, &token))
        .ok_or_else(|| auth_failed(&req, &state, "invalid agent id or token"))?;
    if entry.expired() {
        return Err(crate::http::token_expired(&id));
    }
    let session = AgentSession::new(entry.addr, token, &state.config, state.journal.clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_frame)
        .start()
        .map_err(upgrade_failed)
}

/// `GET /v1/webchat/ws?token=…`
pub async fn webchat(
    req: HttpRequest,
    state: State,
    stream: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req)?.ok_or_else(|| ApiError::Unauthorized("missing ?token=".into()))?;
    throttle_gate(&req, &state)?;
    let session_id = state
        .webchat_session(&token)
        .ok_or_else(|| auth_failed(&req, &state, "invalid webchat token"))?;
    let max = state.config.sockets_per_session;
    if max > 0 {
        let open = state
            .channels
            .webchat
            .for_session(&session_id)
            .send(SocketsOf {
                session: session_id.clone(),
            })
            .await
            .map_err(ApiError::mailbox)?;
        if open.is_some_and(|n| n >= max) {
            return Err(too_many_sockets(max));
        }
    }
    let shards = state.channels.webchat.clone();
    let session = CustomerSession::new(session_id, shards, &state.config, state.journal.clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_frame)
        .start()
        .map_err(upgrade_failed)
}

/// `GET /v1/supervisor/ws` (admin).
pub async fn supervisor(
    req: HttpRequest,
    state: State,
    stream: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let session = SupervisorSession::new(state.get_ref().clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_frame)
        .start()
        .map_err(upgrade_failed)
}

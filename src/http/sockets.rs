//! WebSocket upgrades: authenticate, then hand the socket to its session actor.
//! A token that matches nothing counts against the caller's address like any
//! other failed authentication (`super::throttle`).

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::channel::webchat::{too_many_sockets, SocketsOf};
use crate::error::ApiError;
use std::net::IpAddr;

use crate::agent::Agent;
use crate::http::throttle::ClientKey;
use crate::http::{
    admin_only, auth_failed_of, authenticate_of, bearer, missing_credentials, same_secret,
    throttle_gate_of, State,
};
use crate::protocol::Id;
use crate::wiring::Broker;
use crate::ws::agent_session::AgentSession;
use crate::ws::customer_session::CustomerSession;
use crate::ws::supervisor_session::SupervisorSession;

/// A WebSocket handshake the codec refused.
pub(crate) fn upgrade_failed(e: actix_web::Error) -> ApiError {
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
    let client = req.peer_addr().map(|a| a.ip());
    let agent = admit_desk(&state, &id, &token, client)?;
    let session = AgentSession::new(agent, token, &state.config, state.journal.clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_frame)
        .start()
        .map_err(upgrade_failed)
}

/// Whether a desk from `client` may open agent `id`'s socket with `token`:
/// the agent's actor, or the refusal (throttled address, unknown agent or
/// wrong token, expired token). For this node's own sockets and for those
/// another node holds (`cluster::node_bus`) alike.
pub fn admit_desk(
    broker: &Broker,
    id: &str,
    token: &str,
    client: Option<IpAddr>,
) -> Result<Addr<Agent>, ApiError> {
    let route = format!("/v1/agents/{id}/ws");
    let key = client.map(ClientKey::of);
    throttle_gate_of(key, &route, broker)?;
    let entry = broker
        .agent(id)
        .filter(|e| same_secret(&e.token, token))
        .ok_or_else(|| auth_failed_of(key, "GET", &route, broker, "invalid agent id or token"))?;
    if entry.expired() {
        return Err(crate::http::token_expired(id));
    }
    Ok(entry.addr)
}

/// `GET /v1/webchat/ws?token=…`
pub async fn webchat(
    req: HttpRequest,
    state: State,
    stream: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req)?.ok_or_else(|| ApiError::Unauthorized("missing ?token=".into()))?;
    let client = req.peer_addr().map(|a| a.ip());
    let session_id = admit_webchat(&state, &token, client).await?;
    let shards = state.channels.webchat.clone();
    let session = CustomerSession::new(session_id, shards, &state.config, state.journal.clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_frame)
        .start()
        .map_err(upgrade_failed)
}

/// Whether a customer from `client` may open one more socket with webchat
/// `token`: its session, or the refusal (throttled address, unknown token,
/// `sockets_per_session` reached). For this node's own sockets and for
/// those another node holds (`cluster::node_bus`) alike.
pub async fn admit_webchat(
    broker: &Broker,
    token: &str,
    client: Option<IpAddr>,
) -> Result<Id, ApiError> {
    const ROUTE: &str = "/v1/webchat/ws";
    let key = client.map(ClientKey::of);
    throttle_gate_of(key, ROUTE, broker)?;
    let session_id = broker
        .webchat_session(token)
        .ok_or_else(|| auth_failed_of(key, "GET", ROUTE, broker, "invalid webchat token"))?;
    let max = broker.config.sockets_per_session;
    if max > 0 {
        let open = broker
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
    Ok(session_id)
}

/// `GET /v1/supervisor/ws` (admin).
pub async fn supervisor(
    req: HttpRequest,
    state: State,
    stream: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let token = bearer(&req)?.ok_or_else(missing_credentials)?;
    admit_supervisor(&state, &token, req.peer_addr().map(|a| a.ip()))?;
    let session = SupervisorSession::new(state.get_ref().clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(state.config.max_frame)
        .start()
        .map_err(upgrade_failed)
}

/// Whether a supervisor from `client` may open a socket with `token`: only
/// the admin token opens one (throttled address, unknown token, another
/// kind of token are refused). For this node's own sockets and for those
/// another node holds (`cluster::node_bus`) alike.
pub fn admit_supervisor(
    broker: &Broker,
    token: &str,
    client: Option<IpAddr>,
) -> Result<(), ApiError> {
    let key = client.map(ClientKey::of);
    admin_only(authenticate_of(
        token,
        key,
        "GET",
        "/v1/supervisor/ws",
        broker,
    )?)
}

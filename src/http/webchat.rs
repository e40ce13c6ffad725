//! `POST /v1/webchat/sessions`: a customer opens the widget (no auth: the
//! returned token is the customer's credential from then on).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use actix_web::HttpRequest;

use crate::channel::webchat::{CreateSession, GetSession};
use crate::error::ApiError;
use crate::http::{authenticate, client_ip, Principal, State};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub skills: Vec<String>,
}

/// `GET /v1/webchat/session` with the customer's token: is the session
/// still known (a widget checks after a reconnect), and its current
/// conversation.
pub async fn get_session(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    let Principal::Customer(session) = authenticate(&req, &state)? else {
        return Err(ApiError::Unauthorized(
            "this endpoint takes a webchat session token".into(),
        ));
    };
    state
        .channels
        .webchat
        .for_session(&session)
        .clone()
        .send(GetSession { session })
        .await
        .map_err(ApiError::mailbox)?
        .map(|v| HttpResponse::Ok().json(v))
        .ok_or_else(|| ApiError::Unauthorized("unknown webchat session".into()))
}

/// Anyone may call it, so it is held to the per-address limits
/// (`sessions_per_ip_per_minute`, `open_sessions_per_ip`): a session lives
/// until it has been unused for `webchat_session_idle`.
pub async fn create_session(
    req: HttpRequest,
    state: State,
    body: web::Json<NewSession>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body.name.unwrap_or_else(|| "Guest".into());
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(ApiError::BadRequest("name must be 1-100 characters".into()));
    }
    let ip = client_ip(&req, &state);
    state.limits.open_session(ip)?;
    let session_id = state.ids.webchat_session();
    let token = state
        .channels
        .webchat
        .for_session(&session_id)
        .send(CreateSession {
            id: session_id.clone(),
            name,
            skills: body.skills,
            client_ip: ip,
        })
        .await
        .map_err(|e| {
            state.limits.session_closed(ip);
            ApiError::mailbox(e)
        })?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "session_id": session_id,
        "token": token,
    })))
}

//! `POST /v1/webchat/sessions`: a customer opens the widget (no auth: the
//! returned token is the customer's credential from then on). The browser
//! sets no routing attributes: skills come only from a pre-chat context
//! signed by the site's backend (`channel/prechat.rs`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use actix_web::HttpRequest;

use crate::channel::prechat::{self, PreChat};
use crate::channel::webchat::{CreateSession, GetSession};
use crate::error::ApiError;
use crate::http::{authenticate, client_ip, Principal, State};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    #[serde(default)]
    pub name: Option<String>,
    /// Refused whatever its value: read only to say what to do instead.
    #[serde(default)]
    pub skills: Option<serde_json::Value>,
    /// A pre-chat context (JSON text) and its signature, both or neither.
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub context_signature: Option<String>,
    /// The queue its conversations wait in (`default` when absent).
    #[serde(default)]
    pub queue: Option<String>,
}

/// The skills (and name, if it sets one) of a session's signed context.
fn pre_chat(state: &State, body: &NewSession) -> Result<Option<PreChat>, ApiError> {
    if body.skills.is_some() {
        return Err(ApiError::BadRequest(
            "skills cannot be set by the client: have the site's backend sign a pre-chat \
             context (context and context_signature)"
                .into(),
        ));
    }
    let (context, signature) = match (&body.context, &body.context_signature) {
        (None, None) => return Ok(None),
        (Some(c), Some(s)) => (c, s),
        _ => {
            return Err(ApiError::BadRequest(
                "context and context_signature go together".into(),
            ))
        }
    };
    let Some(secret) = &state.config.webchat_context_secret else {
        return Err(ApiError::BadRequest(
            "this broker takes no pre-chat context (no webchat_context_secret is set)".into(),
        ));
    };
    prechat::verify(secret, context, signature, crate::protocol::now()).map(Some)
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
    let pre = pre_chat(&state, &body)?;
    let (skills, signed_name) = match pre {
        Some(p) => (p.skills, p.name),
        None => (Vec::new(), None),
    };
    let name = signed_name.or(body.name).unwrap_or_else(|| "Guest".into());
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(ApiError::BadRequest("name must be 1-100 characters".into()));
    }
    if let Some(queue) = &body.queue {
        crate::http::queues::check_entry(&state, queue, crate::protocol::ChannelKind::Webchat)
            .await?;
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
            skills,
            queue: body.queue.as_deref().map(Into::into),
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

//! `/v1/conversations/{id}` and its `/messages` history pages.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::conversation::{GetMessages, GetSnapshot};
use crate::error::ApiError;
use crate::http::{authenticate, Principal, State};
use crate::protocol::ChannelKind;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub after_seq: u64,
    /// Page back: the newest messages before this `seq`.
    pub before_seq: Option<u64>,
    pub limit: Option<usize>,
}

/// The one answer for a conversation the caller may not read and for one
/// that does not exist: telling them apart would confirm which ids exist.
fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("conversation {id} does not exist"))
}

/// Admin or the conversation's agent. Internal notes are in the answer, so
/// customers are not allowed here (they read `/messages`), whatever the id.
pub async fn get(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&req, &state)?;
    if let Principal::Customer(_) = who {
        return Err(ApiError::Unauthorized(
            "customers read their history at /messages".into(),
        ));
    }
    let conv = state.conversation(&id).ok_or_else(|| not_found(&id))?;
    let snapshot = conv.send(GetSnapshot).await.map_err(ApiError::mailbox)?;
    match who {
        Principal::Admin => {}
        Principal::Agent(me) if snapshot.agent_id.as_ref() == Some(&me) => {}
        _ => return Err(not_found(&id)),
    }
    Ok(HttpResponse::Ok().json(snapshot))
}

/// Admin, the conversation's agent, or its webchat customer (history stays
/// readable after the end).
pub async fn messages(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    page: web::Query<Page>,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&req, &state)?;
    let conv = state.conversation(&id).ok_or_else(|| not_found(&id))?;
    let snapshot = conv.send(GetSnapshot).await.map_err(ApiError::mailbox)?;
    let allowed = match &who {
        Principal::Admin => true,
        Principal::Agent(me) => snapshot.agent_id.as_ref() == Some(me),
        Principal::Customer(session) => {
            snapshot.channel == ChannelKind::Webchat && *snapshot.customer.address == **session
        }
    };
    if !allowed {
        return Err(not_found(&id));
    }
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let (messages, has_more) = conv
        .send(GetMessages {
            after_seq: page.after_seq,
            before_seq: page.before_seq,
            limit,
        })
        .await
        .map_err(ApiError::mailbox)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "conversation_id": snapshot.id,
        "messages": messages,
        "has_more": has_more,
    })))
}

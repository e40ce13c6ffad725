//! `/v1/conversations` (the admin list), `/v1/conversations/{id}` and its
//! `/messages` history pages.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::conversation::{ConversationStatus, GetMessages, GetSnapshot};
use crate::error::ApiError;
use crate::http::tasks::{channel_filter, task_state, Paging};
use crate::http::{authenticate, require_admin, Principal, State};
use crate::protocol::ChannelKind;

/// Snapshots asked for at once while listing: enough to keep every worker
/// busy, few enough not to flood the conversations' mailboxes.
const LIST_CONCURRENCY: usize = 64;

/// `?state=open|ended|<task state>&queue=&channel=`, each optional.
#[derive(Debug, Deserialize)]
pub struct ListFilter {
    pub state: Option<String>,
    pub queue: Option<String>,
    pub channel: Option<String>,
}

/// Admin: the conversations in memory (open, and finished ones within the
/// history retention), oldest first, filtered, a page at a time.
pub async fn list(
    req: HttpRequest,
    state: State,
    filter: web::Query<ListFilter>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let filter = filter.into_inner();
    // `open`/`ended` are the conversation's; anything else its task's.
    let mut conv_states = Vec::new();
    let mut task_states = Vec::new();
    for name in filter
        .state
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
    {
        match (name, ConversationStatus::named(name)) {
            ("", _) => {}
            (_, Some(status)) => conv_states.push(status),
            _ => task_states.push(task_state(name).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "state: unknown state {name:?} (open, ended, or a task state: waiting, \
                     queued, reserved, assigned, wrapping, completed, canceled)"
                ))
            })?),
        }
    }
    let channel = channel_filter(filter.channel.as_deref())?;
    let queue = filter.queue.filter(|q| !q.is_empty());
    // Checked before the walk, so a bad limit costs nothing.
    paging.range(0)?;
    let mut found: Vec<_> = futures_util::stream::iter(state.all_conversations())
        .map(|conv| async move { conv.send(GetSnapshot).await.ok() })
        .buffer_unordered(LIST_CONCURRENCY)
        .filter_map(|s| async move { s })
        .filter(|s| {
            let keep = (conv_states.is_empty() && task_states.is_empty()
                || conv_states.contains(&s.state)
                || task_states.contains(&s.task.state))
                && queue.as_ref().is_none_or(|q| *q == s.queue)
                && channel.is_none_or(|c| c == s.channel);
            async move { keep }
        })
        .collect()
        .await;
    found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let total = found.len();
    let range = paging.range(total)?;
    let next_offset = (range.end < total).then_some(range.end);
    found.truncate(range.end);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "conversations": &found[range.start..],
        "total": total,
        "next_offset": next_offset,
    })))
}

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

//! `/v1/canned-responses`: the admin saves, changes and deletes canned
//! responses; agents (with their own token) and the admin list them. The
//! library is the registry's (`crate::canned`); the router is asked which
//! queues exist and which ones an agent serves, a conversation what its
//! placeholders become.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::canned::{fill, CannedDraft, CannedPatch, CannedResponse};
use crate::conversation::{usable_in, GetCannedContext};
use crate::error::ApiError;
use crate::http::agents::view_of;
use crate::http::queues::queue_of;
use crate::http::{authenticate, read_json, require_admin, Principal, State};
use crate::protocol::{AgentView, Id};
use crate::router::{GetQueues, Queue};

/// A response as listed: the stored fields and, when listed for a
/// conversation, the text filled in for it (null otherwise).
#[derive(Serialize)]
struct Listed<'a> {
    id: &'a str,
    title: &'a str,
    text: &'a str,
    queue: Option<&'a str>,
    filled: Option<String>,
}

/// `?queue=` or `?conversation_id=` (not both).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    pub queue: Option<String>,
    pub conversation_id: Option<String>,
}

async fn queues(state: &State) -> Result<Vec<Queue>, ApiError> {
    state
        .router
        .send(GetQueues { id: None })
        .await
        .map_err(ApiError::mailbox)
}

/// `not_found` unless queue `id` exists.
async fn queue_exists(state: &State, id: &str) -> Result<(), ApiError> {
    queue_of(state, id).await?;
    Ok(())
}

/// Whether an agent serves a queue: it has the queue's skills and capacity
/// on one of the queue's channels (the rule the queues' agent counts use).
fn serves(agent: &AgentView, queue: &Queue) -> bool {
    queue.skills.iter().all(|s| agent.skills.contains(s))
        && crate::protocol::ChannelKind::ALL
            .into_iter()
            .any(|ch| queue.takes(ch) && agent.capacity.get(ch) > 0)
}

/// The ids of the queues agent `id` serves.
async fn queues_of(state: &State, id: &Id) -> Result<Vec<String>, ApiError> {
    let agent = view_of(state, id).await?;
    Ok(queues(state)
        .await?
        .into_iter()
        .filter(|q| serves(&agent, q))
        .map(|q| q.id)
        .collect())
}

fn listed(r: &CannedResponse, filled: Option<String>) -> Listed<'_> {
    Listed {
        id: &r.id,
        title: &r.title,
        text: &r.text,
        queue: r.queue.as_deref(),
        filled,
    }
}

/// `GET /v1/canned-responses`: admin or agent.
/// - no filter: the admin gets every response; an agent the global ones and
///   those of the queues it serves;
/// - `queue=`: that queue's and the global ones (an agent: only a queue it
///   serves, else `404`);
/// - `conversation_id=`: those usable in that conversation (its queue's and
///   the global ones), each `filled` in for it (an agent: only its own
///   conversation, else `404`).
pub async fn list(
    req: HttpRequest,
    state: State,
    filter: web::Query<ListFilter>,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&req, &state)?;
    if let Principal::Customer(_) = who {
        return Err(ApiError::Unauthorized(
            "canned responses are for agents: use an agent's token or the admin token".into(),
        ));
    }
    let ListFilter {
        queue,
        conversation_id,
    } = filter.into_inner();
    let queue = queue.filter(|q| !q.is_empty());
    let conversation_id = conversation_id.filter(|c| !c.is_empty());
    let library = &state.canned;
    let body = match (queue, conversation_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give queue or conversation_id, not both".into(),
            ))
        }
        (None, Some(id)) => {
            let gone = || ApiError::NotFound(format!("conversation {id} does not exist"));
            let conv = state.conversation(&id).ok_or_else(gone)?;
            let context = conv
                .send(GetCannedContext)
                .await
                .map_err(ApiError::mailbox)?;
            if let Principal::Agent(me) = &who {
                if context.agent_id.as_ref() != Some(me) {
                    return Err(gone());
                }
            }
            let found = library.list(|r| usable_in(r, &context.queue));
            let items: Vec<Listed> = found
                .iter()
                .map(|r| listed(r, Some(fill(&r.text, &context.values))))
                .collect();
            HttpResponse::Ok().json(items)
        }
        (Some(q), None) => {
            match &who {
                Principal::Agent(me) => {
                    if !queues_of(&state, me).await?.contains(&q) {
                        return Err(ApiError::NotFound(format!(
                            "queue {q} is not one of yours (you lack its skills or its channels)"
                        )));
                    }
                }
                _ => queue_exists(&state, &q).await?,
            }
            let found = library.list(|r| usable_in(r, &q));
            let items: Vec<Listed> = found.iter().map(|r| listed(r, None)).collect();
            HttpResponse::Ok().json(items)
        }
        (None, None) => {
            let found: Vec<Arc<CannedResponse>> = match &who {
                Principal::Agent(me) => {
                    let mine = queues_of(&state, me).await?;
                    library.list(|r| r.queue.as_ref().is_none_or(|q| mine.contains(q)))
                }
                _ => library.list(|_| true),
            };
            let items: Vec<Listed> = found.iter().map(|r| listed(r, None)).collect();
            HttpResponse::Ok().json(items)
        }
    };
    Ok(body)
}

/// `POST /v1/canned-responses` (admin): `201` the response as stored.
pub async fn create(
    req: HttpRequest,
    state: State,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let draft: CannedDraft = read_json(body).await?;
    if let Some(q) = &draft.queue {
        queue_exists(&state, q).await?;
    }
    let saved = state.canned.create(draft)?;
    Ok(HttpResponse::Created().json(saved))
}

/// `PATCH /v1/canned-responses/{id}` (admin): `200` the response as stored.
pub async fn update(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let patch: CannedPatch = read_json(body).await?;
    if let Some(Some(q)) = &patch.queue {
        queue_exists(&state, q).await?;
    }
    let saved = state.canned.patch(&id, patch)?;
    Ok(HttpResponse::Ok().json(saved))
}

/// `DELETE /v1/canned-responses/{id}` (admin): `204`.
pub async fn delete(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    state.canned.delete(&id)?;
    Ok(HttpResponse::NoContent().finish())
}

//! `/v1/queues`: create, list, get, patch and delete queues (admin). The
//! router holds the definitions; these routes only translate.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::ApiError;
use crate::http::{read_json, require_admin, State};
use crate::router::{DeleteQueue, GetQueues, Queue, QueueChange, UpsertQueue};

pub async fn create(
    req: HttpRequest,
    state: State,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let queue: Queue = read_json(body).await?;
    let stored = state
        .router
        .send(UpsertQueue(QueueChange::Create(Box::new(queue))))
        .await
        .map_err(ApiError::mailbox)??;
    Ok(HttpResponse::Created().json(stored))
}

pub async fn list(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let queues = state
        .router
        .send(GetQueues { id: None })
        .await
        .map_err(ApiError::mailbox)?;
    Ok(HttpResponse::Ok().json(queues))
}

pub async fn get(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(queue_of(&state, &id).await?))
}

/// Queue `id` as the router has it; `not_found` if there is none.
pub async fn queue_of(state: &State, id: &str) -> Result<Queue, ApiError> {
    state
        .router
        .send(GetQueues {
            id: Some(id.to_owned()),
        })
        .await
        .map_err(ApiError::mailbox)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("queue {id} does not exist")))
}

pub async fn update(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let fields: serde_json::Map<String, serde_json::Value> = read_json(body).await?;
    let stored = state
        .router
        .send(UpsertQueue(QueueChange::Patch {
            id: id.to_string(),
            fields,
        }))
        .await
        .map_err(ApiError::mailbox)??;
    Ok(HttpResponse::Ok().json(stored))
}

pub async fn delete(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    state
        .router
        .send(DeleteQueue { id: id.to_string() })
        .await
        .map_err(ApiError::mailbox)??;
    Ok(HttpResponse::NoContent().finish())
}

/// The queue a new task may enter on `channel`: it exists and takes that
/// channel (`not_found`, `bad_request` otherwise).
pub async fn check_entry(
    state: &State,
    id: &str,
    channel: crate::protocol::ChannelKind,
) -> Result<(), ApiError> {
    let queue = state
        .router
        .send(GetQueues {
            id: Some(id.to_owned()),
        })
        .await
        .map_err(ApiError::mailbox)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("queue {id} does not exist")))?;
    if queue.takes(channel) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "queue {id} does not take {} conversations",
            channel.as_str()
        )))
    }
}

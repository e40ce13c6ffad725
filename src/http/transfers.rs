//! `POST /v1/tasks/{id}/transfer`: a supervisor's cold transfer of an
//! assigned task to a queue or an agent, with a note. The router decides it
//! exactly as an agent's cold transfer (`router/transfers.rs`); the
//! transfer's `from` is `supervisor`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::http::{read_json, require_admin, State};
use crate::protocol::{TransferMode, TransferTarget};
use crate::router::{TransferBy, TransferTask};

/// The body: where to, and the note (optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: TransferTarget,
    #[serde(default)]
    note: String,
}

/// Admin: transfer an assigned task, cold. Answers `200` with where it went.
pub async fn transfer(
    req: HttpRequest,
    state: State,
    path: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let body: TransferBody = read_json(body).await?;
    let task_id = path.into_inner();
    state
        .router
        .send(TransferTask {
            by: TransferBy::Supervisor,
            task_id: task_id.clone(),
            to: body.to.clone(),
            mode: TransferMode::Cold,
            note: body.note,
            reference: None,
        })
        .await
        .map_err(ApiError::mailbox)??;
    Ok(HttpResponse::Ok().json(json!({"task_id": task_id, "to": body.to, "mode": "cold"})))
}

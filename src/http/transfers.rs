//! `POST /v1/tasks/{id}/transfer`: a supervisor's cold transfer of an
//! assigned task to a queue or an agent, with a note. The router decides it
//! exactly as an agent's cold transfer (`router/transfers.rs`); the
//! transfer's `from` is `supervisor`. Done, it is a `supervisor.action`
//! (`task.transfer`) on the supervisor stream and to the webhooks.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::http::{read_json, require_admin, State};
use crate::protocol::{SupervisorAction, TransferMode, TransferTarget};
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
    // Looked up first: a task the transfer completes at once (its
    // conversation ended on the way) may leave memory before the answer.
    let conversation_id = state.conversation_id_of_task(&task_id);
    state
        .router
        .send(TransferTask {
            by: TransferBy::Supervisor,
            task_id: task_id.clone(),
            to: body.to.clone(),
            mode: TransferMode::Cold,
            note: body.note.clone(),
            reference: None,
        })
        .await
        .map_err(ApiError::mailbox)??;
    if let Some(conversation_id) = conversation_id {
        state.supervisor_action(
            crate::http::ADMIN_ACTOR,
            SupervisorAction::TransferTask {
                task_id: task_id.as_str().into(),
                conversation_id,
                to: body.to.clone(),
                note: body.note,
            },
        );
    }
    Ok(HttpResponse::Ok().json(json!({"task_id": task_id, "to": body.to, "mode": "cold"})))
}

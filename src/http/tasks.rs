//! `/v1/tasks`: the open tasks as the router holds them, for supervisor boards
//! and integrations (a snapshot to start from; the supervisor socket's
//! `task.state` frames keep it current), a page at a time; and a
//! supervisor's `POST /v1/tasks/{id}/complete`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::conversation::{GetSnapshot, SupervisorComplete};
use crate::error::ApiError;
use crate::http::{read_json, require_admin, State};
use crate::protocol::{ChannelKind, SupervisorAction, TaskState};
use crate::router::ListTasks;

/// A page of an admin list when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The largest page an admin list gives.
pub const MAX_PAGE: usize = 1000;

/// `?limit=&offset=`: which part of a list to answer.
#[derive(Debug, Deserialize)]
pub struct Paging {
    pub limit: Option<usize>,
    #[serde(default)]
    pub offset: usize,
}

impl Paging {
    /// The range of a list of `len` items this page covers; `bad_request`
    /// for a limit of 0 or above [`MAX_PAGE`].
    pub fn range(&self, len: usize) -> Result<std::ops::Range<usize>, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}"
            )));
        }
        let start = self.offset.min(len);
        Ok(start..start.saturating_add(limit).min(len))
    }
}

/// The name `waiting` is taken for `queued` (what a supervisor calls it).
pub fn task_state(name: &str) -> Option<TaskState> {
    match name {
        "waiting" => Some(TaskState::Queued),
        _ => TaskState::parse(name),
    }
}

/// A list's `?channel=` filter: any channel when absent or empty, else the
/// one named; `bad_request` for a name that is not a channel.
pub fn channel_filter(name: Option<&str>) -> Result<Option<ChannelKind>, ApiError> {
    let Some(name) = name.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    ChannelKind::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "channel: unknown channel {name:?} (webchat, sms, whatsapp, messenger)"
            ))
        })
}

/// `?state=queued,reserved&channel=webchat&queue=default`, each optional.
#[derive(Debug, Deserialize)]
pub struct Filter {
    pub state: Option<String>,
    pub channel: Option<String>,
    pub queue: Option<String>,
}

impl Filter {
    fn parse(self) -> Result<ListTasks, ApiError> {
        let mut states = Vec::new();
        for name in self.state.iter().flat_map(|s| s.split(',')).map(str::trim) {
            if name.is_empty() {
                continue;
            }
            match task_state(name) {
                Some(s) if s.is_open() => states.push(s),
                Some(_) => {
                    return Err(ApiError::BadRequest(format!(
                        "state: {name} tasks are finished; this lists open tasks \
                         (queued, reserved, assigned, wrapping, parked)"
                    )))
                }
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "state: unknown task state {name:?} (queued, reserved, assigned, wrapping, parked)"
                    )))
                }
            }
        }
        let channel = channel_filter(self.channel.as_deref())?;
        Ok(ListTasks {
            states,
            channel,
            queue: self.queue.filter(|q| !q.is_empty()),
        })
    }
}

/// Admin: open tasks, longest waiting first, a page at a time.
pub async fn list(
    req: HttpRequest,
    state: State,
    filter: web::Query<Filter>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let query = filter.into_inner().parse()?;
    let mut tasks = state.router.send(query).await.map_err(ApiError::mailbox)?;
    let range = paging.range(tasks.len())?;
    tasks.truncate(range.end);
    Ok(HttpResponse::Ok().json(&tasks[range.start..]))
}

/// `POST /v1/tasks/{id}/complete` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub disposition: String,
    #[serde(default)]
    pub notes: String,
}

/// Admin: end the task's conversation if it is active, then complete the
/// task with the disposition (the agent's wrap-up rules). Answers the
/// conversation as `GET /v1/conversations/{id}` does.
pub async fn complete(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let body: CompleteBody = read_json(body).await?;
    let conv = state
        .conversation_of_task(&id)
        .ok_or_else(|| ApiError::NotFound(format!("task {id} does not exist")))?;
    let disposition = body.disposition.clone();
    let conversation_id = conv
        .send(SupervisorComplete {
            disposition: body.disposition,
            notes: body.notes,
        })
        .await
        .map_err(ApiError::mailbox)??;
    state.supervisor_action(
        crate::http::ADMIN_ACTOR,
        SupervisorAction::CompleteTask {
            task_id: id.as_str().into(),
            conversation_id,
            disposition,
        },
    );
    let snapshot = conv.send(GetSnapshot).await.map_err(ApiError::mailbox)?;
    Ok(HttpResponse::Ok().json(snapshot))
}

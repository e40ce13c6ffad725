//! `/v1/tasks`: the open tasks as the router holds them, for supervisor boards
//! and integrations (a snapshot to start from; the supervisor socket's
//! `task.state` frames keep it current).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::error::ApiError;
use crate::http::{require_admin, State};
use crate::protocol::{ChannelKind, TaskState};
use crate::router::ListTasks;

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
            match TaskState::parse(name) {
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
        let channel = match self.channel.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(name) => Some(
                ChannelKind::ALL
                    .into_iter()
                    .find(|c| c.as_str() == name)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "channel: unknown channel {name:?} (webchat, sms, whatsapp, messenger)"
                        ))
                    })?,
            ),
        };
        Ok(ListTasks {
            states,
            channel,
            queue: self.queue.filter(|q| !q.is_empty()),
        })
    }
}

/// Admin: open tasks, longest waiting first.
pub async fn list(
    req: HttpRequest,
    state: State,
    filter: web::Query<Filter>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let query = filter.into_inner().parse()?;
    let tasks = state.router.send(query).await.map_err(ApiError::mailbox)?;
    Ok(HttpResponse::Ok().json(tasks))
}

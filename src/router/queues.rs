//! The admin API's queue messages, each next to its handler: [`GetQueues`],
//! [`UpsertQueue`] (create or replace, and `PATCH` as a merge onto the
//! current definition) and [`DeleteQueue`]. Definitions change only through
//! `RouterEvent::QueueUpserted` / `QueueRemoved`; waiting tasks feel a change
//! at once (their priority, policy and skills are read from the queue, and
//! every waiting task is looked at again).

use actix::prelude::*;

use super::queue::{Queue, DEFAULT_QUEUE};
use super::state::RouterEvent;
use super::Router;
use crate::error::ApiError;

/// All queues (`id: None`) or one.
#[derive(Message)]
#[rtype(result = "Vec<Queue>")]
pub struct GetQueues {
    pub id: Option<String>,
}

impl Handler<GetQueues> for Router {
    type Result = MessageResult<GetQueues>;

    fn handle(&mut self, msg: GetQueues, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match msg.id {
            Some(id) => self.state.queue(&id).cloned().into_iter().collect(),
            None => self.state.queue_list(),
        })
    }
}

/// How [`UpsertQueue`] changes the definitions.
pub enum QueueChange {
    /// `POST`: a new queue; `conflict` if the id is taken.
    Create(Box<Queue>),
    /// `PATCH`: these fields over the current definition.
    Patch {
        id: String,
        fields: serde_json::Map<String, serde_json::Value>,
    },
}

/// Create or change a queue; answers the definition as stored.
#[derive(Message)]
#[rtype(result = "Result<Queue, ApiError>")]
pub struct UpsertQueue(pub QueueChange);

impl Handler<UpsertQueue> for Router {
    type Result = Result<Queue, ApiError>;

    fn handle(&mut self, msg: UpsertQueue, ctx: &mut Context<Self>) -> Self::Result {
        let mut queue = match msg.0 {
            QueueChange::Create(q) => {
                if self.state.queue(&q.id).is_some() {
                    return Err(ApiError::Conflict(format!("queue {} already exists", q.id)));
                }
                *q
            }
            QueueChange::Patch { id, fields } => {
                let current = self
                    .state
                    .queue(&id)
                    .ok_or_else(|| ApiError::NotFound(format!("queue {id} does not exist")))?;
                if fields
                    .get("id")
                    .is_some_and(|v| v.as_str() != Some(id.as_str()))
                {
                    return Err(ApiError::BadRequest(
                        "id cannot be changed; create a new queue instead".into(),
                    ));
                }
                let mut value = serde_json::to_value(current)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                if let Some(obj) = value.as_object_mut() {
                    obj.extend(fields);
                }
                serde_json::from_value(value)
                    .map_err(|e| ApiError::BadRequest(format!("invalid queue: {e}")))?
            }
        };
        queue.validate(|id| self.state.queue(id).is_some())?;
        self.apply(RouterEvent::QueueUpserted {
            queue: queue.clone(),
        });
        self.route_all(ctx);
        Ok(queue)
    }
}

/// Delete a queue: not `default`, not one with waiting tasks, not one another
/// queue overflows to.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct DeleteQueue {
    pub id: String,
}

impl Handler<DeleteQueue> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: DeleteQueue, _: &mut Context<Self>) -> Self::Result {
        let id = msg.id;
        if self.state.queue(&id).is_none() {
            return Err(ApiError::NotFound(format!("queue {id} does not exist")));
        }
        if id == DEFAULT_QUEUE {
            return Err(ApiError::Conflict("the default queue always exists".into()));
        }
        let waiting = self.state.waiting_in(&id);
        if waiting > 0 {
            return Err(ApiError::Conflict(format!(
                "queue {id} has {waiting} waiting task(s); move or finish them first"
            )));
        }
        if let Some(from) = self
            .state
            .queue_list()
            .into_iter()
            .find(|q| q.overflow.as_ref().and_then(|o| o.to.as_deref()) == Some(id.as_str()))
        {
            return Err(ApiError::Conflict(format!(
                "queue {} overflows to {id}; change its overflow first",
                from.id
            )));
        }
        self.apply(RouterEvent::QueueRemoved { id });
        Ok(())
    }
}

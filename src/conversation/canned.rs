//! Canned responses in a conversation: what their placeholders become here
//! (the customer's name, the agent's, the queue's), for the agent's `send`
//! by `canned_id` (`AgentSend`) and for the HTTP listing that shows them
//! filled in ([`GetCannedContext`]). One filling for both, so what the desk
//! inserts into its composer is what a send by id would have sent.
//!
//! A response may be used in a conversation of its own queue, or anywhere
//! when it is global; the queue is the conversation's current one (after
//! any overflow).

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::Conversation;
use crate::canned::{fill, not_found, CannedResponse, FillValues};
use crate::error::ApiError;
use crate::protocol::Id;

/// What canned responses are filled with in this conversation, and who may
/// use them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CannedContext {
    /// The agent holding the conversation (null while it waits).
    pub agent_id: Option<Id>,
    /// The conversation's queue: its responses and the global ones apply.
    pub queue: String,
    pub values: FillValues,
}

/// `GET /v1/canned-responses?conversation_id=`.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "CannedContext")]
pub struct GetCannedContext;

impl Handler<GetCannedContext> for Conversation {
    type Result = MessageResult<GetCannedContext>;

    fn handle(&mut self, _: GetCannedContext, _: &mut Context<Self>) -> Self::Result {
        MessageResult(CannedContext {
            agent_id: self.state.agent_id.clone(),
            queue: self.state.queue.clone(),
            values: self.canned_values(),
        })
    }
}

/// Whether `response` may be used in a conversation of `queue`.
pub fn usable_in(response: &CannedResponse, queue: &str) -> bool {
    response.queue.as_deref().is_none_or(|q| q == queue)
}

impl Conversation {
    fn canned_values(&self) -> FillValues {
        let s = &self.state;
        FillValues {
            customer_name: FillValues::customer(&s.customer.name, &s.customer.address),
            agent_name: s.agent_name.clone().unwrap_or_default(),
            queue_name: self.broker.queue_names.name(&s.queue),
        }
    }

    /// The text of canned response `id`, filled in for this conversation:
    /// `not_found` if there is no such response, `bad_request` if it belongs
    /// to another queue.
    pub(super) fn canned_text(&self, id: &str) -> Result<String, ApiError> {
        let response = self.broker.canned.get(id).ok_or_else(|| not_found(id))?;
        if !usable_in(&response, &self.state.queue) {
            return Err(ApiError::BadRequest(format!(
                "canned response {id} is for queue {}; this conversation is in queue {}",
                response.queue.as_deref().unwrap_or_default(),
                self.state.queue
            )));
        }
        Ok(fill(&response.text, &self.canned_values()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the canned-responses route reads of a conversation can cross
    /// from the node that runs it.
    #[test]
    fn a_conversations_canned_context_crosses_between_nodes() {
        crate::codec::assert_crosses(&GetCannedContext);
        for (agent_id, customer_name) in [(None, None), (Some("alice"), Some("Dana"))] {
            crate::codec::assert_crosses(&CannedContext {
                agent_id: agent_id.map(Into::into),
                queue: "billing".into(),
                values: FillValues {
                    customer_name: customer_name.map(Into::into),
                    agent_name: "Alice".into(),
                    queue_name: "Billing".into(),
                },
            });
        }
    }
}

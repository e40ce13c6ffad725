//! A conversation rebuilt from the journal: its state is the replayed
//! [`ConversationState`]; once started it resumes what its timers did
//! (the wrap-up timeout of a task in wrap-up, the history retention of a
//! finished one), each counted from when it began, not from the restart.
//! Everything else comes back the way it does after a network drop: the
//! agent's desktop gets the task with its history on reconnect, the
//! customer the history.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;

use super::{Conversation, ConversationState};
use crate::agent::Agent;
use crate::channel::ToCustomer;
use crate::protocol::TaskState;
use crate::wiring::Broker;

impl Conversation {
    /// The actor for a replayed state, not yet started.
    pub fn restored(
        broker: &Arc<Broker>,
        state: ConversationState,
        channel: Recipient<ToCustomer>,
        agent: Option<Addr<Agent>>,
    ) -> Self {
        Conversation {
            broker: broker.clone(),
            channel,
            customer: state.customer.address.as_str().into(),
            business: state.business.as_deref().map(Into::into),
            state,
            agent,
            wrapup: None,
            opening: None,
        }
    }

    /// Started from the journal (it has no opening to process): count the
    /// task and start the timers its state had.
    pub(super) fn resume(&mut self, ctx: &mut Context<Self>) {
        self.broker.metrics.task_moved(None, self.state.task_state);
        let since_end = |total: Duration| {
            let ended = self.state.ended_at.unwrap_or_else(SystemTime::now);
            let gone = ended.elapsed().unwrap_or_default();
            total.saturating_sub(gone)
        };
        match self.state.task_state {
            TaskState::Wrapping => {
                let left = since_end(self.broker.config.wrapup_timeout);
                self.start_wrapup_timer(left, ctx);
            }
            TaskState::Completed | TaskState::Canceled => {
                let left = since_end(self.broker.config.history_retention);
                self.schedule_eviction_in(left, ctx);
            }
            _ => {}
        }
    }
}

//! The router rebuilt from the journal: its state is replayed before it
//! starts ([`Router::replay`]); [`Restored`], its first message, hands it
//! the addresses of the agents and conversations started from the same
//! journal and resumes routing (see `docs/operations.md`, "Recovery"):
//! every agent is disconnected until its desktop comes back; an offer that
//! was open goes back to the queue in its original order (the agent never
//! answered it); waiting tasks get their overflow and maximum-wait timers
//! again; assigned tasks stay with their agents, whose disconnect grace
//! starts with the restart.

use actix::prelude::*;

use super::state::Hold;
use super::{Router, RouterEvent};
use crate::agent::Agent;
use crate::conversation::Conversation;
use crate::protocol::{Id, RescindReason};

impl Router {
    /// Apply a journaled event without writing it again (replay).
    pub(crate) fn replay(&mut self, event: RouterEvent) {
        self.state.apply(event);
    }
}

/// The agents and conversations started from the journal, by id and task id.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restored {
    pub agents: Vec<(Id, Addr<Agent>)>,
    pub conversations: Vec<(Id, Addr<Conversation>)>,
}

impl Handler<Restored> for Router {
    type Result = ();

    fn handle(&mut self, msg: Restored, ctx: &mut Context<Self>) {
        self.addrs.extend(msg.agents);
        self.conversations.extend(msg.conversations);
        let connected: Vec<Id> = self
            .state
            .agents
            .iter()
            .filter(|(_, a)| a.view.connected)
            .map(|(id, _)| id.clone())
            .collect();
        for id in connected {
            self.apply(RouterEvent::PresenceChanged {
                id,
                connected: false,
            });
        }
        let offered: Vec<Id> = self
            .state
            .held
            .iter()
            .filter(|(_, h)| matches!(h.hold, Hold::Reserved { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for task_id in offered {
            self.take_back(&task_id, RescindReason::Reassigned, None);
        }
        let waiting: Vec<Id> = self.state.queued.keys().cloned().collect();
        for task_id in &waiting {
            self.schedule_waits(task_id, ctx);
        }
        tracing::info!(
            agents = self.state.agents.len(),
            waiting = waiting.len(),
            held = self.state.held.len(),
            "router restored from the journal"
        );
        self.route_all(ctx);
    }
}

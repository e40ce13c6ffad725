//! The router rebuilt from the journal: its state is replayed before it
//! starts (`crate::snapshot`, then [`Router::restore_state`]); [`Restored`], its first message, hands it
//! the addresses of the agents and conversations started from the same
//! journal and resumes routing (see `docs/operations.md`, "Recovery"):
//! every agent is disconnected until its desktop comes back; an offer that
//! was open goes back to the queue in its original order (the agent never
//! answered it); waiting tasks get their overflow and maximum-wait timers
//! again; assigned tasks stay with their agents, whose disconnect grace
//! starts with the restart; a warm transfer pending fails, unless its
//! conversation had made the move; a move of a task (a cold transfer, a
//! parking, a withdrawal) its conversation had not recorded is sent to it
//! again (`redrive`).

use actix::prelude::*;

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use super::state::Hold;
use super::{Outcome, Router, RouterEvent, RouterState};
use crate::agent::{Agent, Rescind};
use crate::conversation::{
    Conversation, ParkedAway, RequeueCause, Requeued, ResumeInactivity, TransferredAway,
};
use crate::protocol::event::TransferFailure;
use crate::protocol::{Id, RescindReason, TaskState, TransferMode};

impl Router {
    /// Take the routing state rebuilt from the journal (before starting).
    /// The queues' names are the registry's too (what `{{queue.name}}` of a
    /// canned response becomes).
    pub(crate) fn restore_state(&mut self, state: RouterState) {
        for queue in state.queues.values() {
            self.broker.queue_names.set(&queue.id, &queue.name);
        }
        self.state = state;
    }

    /// Whether the replayed state knows this task (waiting or held).
    pub(crate) fn routes(&self, task_id: &Id) -> bool {
        self.state.held.contains_key(task_id) || self.state.queued.contains_key(task_id)
    }
}

/// The agents and conversations started from the journal: agents by id,
/// conversations by task id with their task as the conversation has it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restored {
    pub agents: Vec<(Id, Addr<Agent>)>,
    pub conversations: Vec<RestoredTask>,
}

/// A restored conversation's task, as the conversation's own state has it.
pub struct RestoredTask {
    pub task_id: Id,
    pub addr: Addr<Conversation>,
    pub state: TaskState,
    /// The agent holding it (assigned or in wrap-up).
    pub agent: Option<Id>,
}

impl Router {
    /// A crash can fall between the router's record of a change and the
    /// conversation's record of the same change (each writes its own, one
    /// after the other). Make them agree again, taking the side that is
    /// safe: a task finished in its conversation is finished here; a task
    /// its conversation still sees waiting or offered goes back to the
    /// queue; a task with no conversation left is closed. (A conversation
    /// whose task the router never heard of enqueues it itself: see
    /// `Conversation::restored`.)
    fn reconcile(&mut self, conversations: &[RestoredTask]) {
        let states: HashMap<&Id, TaskState> = conversations
            .iter()
            .map(|t| (&t.task_id, t.state))
            .collect();
        let known: Vec<Id> = self
            .state
            .held
            .keys()
            .chain(self.state.queued.keys())
            .cloned()
            .collect();
        for task_id in known {
            match states.get(&task_id) {
                None => self.close(task_id, Outcome::Canceled),
                Some(TaskState::Completed) => self.close(task_id, Outcome::Completed),
                Some(TaskState::Canceled) => self.close(task_id, Outcome::Canceled),
                Some(TaskState::Queued | TaskState::Reserved) => {
                    let assigned = self
                        .state
                        .held
                        .get(&task_id)
                        .is_some_and(|h| !matches!(h.hold, Hold::Reserved { .. }));
                    if assigned {
                        self.take_back(&task_id, RescindReason::Reassigned, None);
                    }
                }
                Some(_) => {}
            }
        }
        for t in conversations {
            self.redrive(t);
        }
    }

    /// The router records a move of an assigned task (a cold transfer,
    /// parking, a withdrawal) before the conversation does: a crash
    /// between the two left the conversation giving the task to an agent
    /// the router had let go of (and that agent's desk showing it, its
    /// capacity free for another task). The conversation is told again
    /// what it missed, as the router told it then.
    fn redrive(&self, t: &RestoredTask) {
        let Some(agent) = t.agent.as_ref() else {
            return;
        };
        let held = self.state.held.get(&t.task_id);
        if held.is_some_and(|h| h.agent == *agent && !matches!(h.hold, Hold::Reserved { .. })) {
            return;
        }
        // A warm transfer to this agent: settled with the consults.
        if self
            .state
            .consults
            .get(&t.task_id)
            .is_some_and(|c| c.target == *agent)
        {
            return;
        }
        if let Some(parked) = self.state.parked.get(&t.task_id) {
            if parked.agent == *agent {
                tracing::info!(
                    task = %t.task_id,
                    agent = %agent,
                    "a parking its conversation had not recorded before the stop is made again"
                );
                t.addr.do_send(ParkedAway {
                    from: agent.clone(),
                    until: parked.until,
                    reference: None,
                });
            }
            return;
        }
        let waiting = self.state.waiting_task(&t.task_id);
        let Some(task) = held.map(|h| &h.task).or(waiting) else {
            return;
        };
        let cold = task
            .handoff
            .transfers
            .last()
            .filter(|tr| tr.from == *agent && tr.mode == TransferMode::Cold);
        if let Some(transfer) = cold {
            t.addr.do_send(TransferredAway {
                from: agent.clone(),
                transfer: transfer.clone(),
                reference: None,
            });
        } else if waiting.is_some() {
            // Withdrawn from its agent: an assigned task goes back to the
            // queue, one in wrap-up is completed (the conversation decides).
            t.addr.do_send(Requeued {
                reason: RescindReason::Reassigned,
                cause: RequeueCause::Withdrawn,
            });
            if t.state == TaskState::Assigned {
                if let Some(addr) = self.addrs.get(agent) {
                    addr.do_send(Rescind {
                        task_id: t.task_id.clone(),
                        reason: RescindReason::Reassigned,
                    });
                }
            }
        } else {
            return;
        }
        tracing::info!(
            task = %t.task_id,
            agent = %agent,
            "a move of the task its conversation had not recorded before the stop is made again"
        );
    }
}

impl Handler<Restored> for Router {
    type Result = ();

    fn handle(&mut self, msg: Restored, ctx: &mut Context<Self>) {
        self.addrs.extend(msg.agents);
        self.conversations.extend(
            msg.conversations
                .iter()
                .map(|t| (t.task_id.clone(), t.addr.clone())),
        );
        self.reconcile(&msg.conversations);
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
        // A warm transfer's target is disconnected like everyone: it fails
        // (the sender keeps the task, as on any failed transfer). Unless
        // the conversation had made the move already: the router's record
        // of it follows the conversation's, and a crash between the two
        // left the target holding the task in the conversation and the
        // sender holding it here. The move stands.
        let holders: HashMap<&Id, &Id> = msg
            .conversations
            .iter()
            .filter_map(|t| t.agent.as_ref().map(|a| (&t.task_id, a)))
            .collect();
        let consults: Vec<(Id, bool)> = self
            .state
            .consults
            .iter()
            .map(|(task_id, c)| {
                let made = c.accepted && holders.get(task_id) == Some(&&c.target);
                (task_id.clone(), made)
            })
            .collect();
        for (task_id, made) in consults {
            if !(made && self.finish_accepted_consult(&task_id)) {
                self.consult_failed(&task_id, TransferFailure::Unavailable, ctx);
            }
        }
        // Parked tasks with a time come back at it.
        let now = SystemTime::now();
        let parked: Vec<(Id, SystemTime)> = self
            .state
            .parked
            .iter()
            .filter_map(|(id, p)| p.until.map(|u| (id.clone(), u)))
            .collect();
        for (task_id, until) in parked {
            let wait = until.duration_since(now).unwrap_or_default();
            self.parks.insert(task_id, Instant::now() + wait, ());
        }
        self.parks.arm(ctx, Router::parks_due);
        // Assigned tasks of queues with inactivity settings: their timers
        // resume, counted from before the stop.
        for (task_id, conversation) in &self.conversations {
            let assigned = self
                .state
                .held
                .get(task_id)
                .is_some_and(|h| matches!(h.hold, Hold::Assigned));
            if let Some(inactivity) = self.inactivity_of(task_id).filter(|_| assigned) {
                conversation.do_send(ResumeInactivity { inactivity });
            }
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

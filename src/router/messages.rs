//! Every message the router handles, each next to its handler, grouped by
//! sender: the `Agent` actors (profile, presence, activity, accept and
//! reject, outbound reservations), the conversations (a new task, wrap-up,
//! closing, binding an outbound conversation), and the HTTP routes (agents,
//! open tasks, stats). Handlers change state only through `apply` and leave
//! offering to `dispatch.rs`.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::state::{AgentCounts, Hold, RoutableTask, RouterEvent};
use super::stats::Outcome;
use super::{RescindReason, Router};
use crate::agent::{Agent, Rescind};
use crate::conversation::Assign;
use crate::error::ApiError;
use crate::protocol::event::TransferFailure;
use crate::protocol::{
    Activity, AgentView, ChannelKind, Customer, Event, Id, PerChannel, QueueStats, TaskState,
    TaskSummary, DEFAULT_QUEUE,
};

/// Create or update an agent's routing profile.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpsertAgent {
    pub id: Id,
    pub name: String,
    pub capacity: PerChannel,
    pub skills: Vec<String>,
    pub addr: Addr<Agent>,
}

impl Handler<UpsertAgent> for Router {
    type Result = ();

    fn handle(&mut self, msg: UpsertAgent, ctx: &mut Context<Self>) {
        self.addrs.entry(msg.id.clone()).or_insert(msg.addr);
        let id = msg.id.clone();
        self.apply(RouterEvent::AgentUpserted {
            id: msg.id,
            name: msg.name,
            capacity: msg.capacity,
            skills: msg.skills,
        });
        self.publish_agent(&id);
        self.route_agent(&id, ctx);
    }
}

/// An agent was deleted: its open tasks go back to the queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoveAgent {
    pub id: Id,
}

impl Handler<RemoveAgent> for Router {
    type Result = ();

    fn handle(&mut self, msg: RemoveAgent, ctx: &mut Context<Self>) {
        // Make it ineligible first, so the withdrawn tasks are not offered
        // straight back to the agent being removed.
        self.apply(RouterEvent::PresenceChanged {
            id: msg.id.clone(),
            connected: false,
        });
        self.withdraw_agent_tasks(&msg.id, true, ctx);
        // Wrapping tasks stay with their conversations (the wrap-up timeout
        // completes them); the router just stops counting them.
        let rest: Vec<Id> = self
            .state
            .agents
            .get(&msg.id)
            .map(|a| a.held.clone())
            .unwrap_or_default();
        for task_id in rest {
            self.close(task_id, Outcome::Dropped);
        }
        self.apply(RouterEvent::AgentRemoved { id: msg.id.clone() });
        self.addrs.remove(&msg.id);
        self.broker
            .publish(|| Event::AgentRemoved { agent_id: msg.id });
    }
}

/// The agent's desktop socket connected or went away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentPresence {
    pub id: Id,
    pub connected: bool,
    pub activity: Activity,
}

impl Handler<AgentPresence> for Router {
    type Result = ();

    fn handle(&mut self, msg: AgentPresence, ctx: &mut Context<Self>) {
        self.apply(RouterEvent::ActivityChanged {
            id: msg.id.clone(),
            activity: msg.activity,
        });
        self.apply(RouterEvent::PresenceChanged {
            id: msg.id.clone(),
            connected: msg.connected,
        });
        if !msg.connected {
            // Nobody will answer these offers: give them to someone else now.
            self.withdraw_agent_tasks(&msg.id, false, ctx);
        }
        self.publish_agent(&msg.id);
        self.route_agent(&msg.id, ctx);
    }
}

/// The agent chose an activity.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AgentActivity {
    pub id: Id,
    pub activity: Activity,
}

impl Handler<AgentActivity> for Router {
    type Result = ();

    fn handle(&mut self, msg: AgentActivity, ctx: &mut Context<Self>) {
        self.apply(RouterEvent::ActivityChanged {
            id: msg.id.clone(),
            activity: msg.activity,
        });
        if msg.activity == Activity::Offline {
            self.withdraw_agent_tasks(&msg.id, true, ctx);
        }
        self.publish_agent(&msg.id);
        self.route_agent(&msg.id, ctx);
    }
}

/// A disconnected agent did not come back in time: re-queue its tasks.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GraceExpired {
    pub id: Id,
}

impl Handler<GraceExpired> for Router {
    type Result = ();

    fn handle(&mut self, msg: GraceExpired, ctx: &mut Context<Self>) {
        // Same as the agent going offline.
        self.handle(
            AgentActivity {
                id: msg.id,
                activity: Activity::Offline,
            },
            ctx,
        );
    }
}

/// A new task waits for an agent.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct EnqueueTask {
    pub task: RoutableTask,
}

impl Handler<EnqueueTask> for Router {
    type Result = ();

    fn handle(&mut self, msg: EnqueueTask, ctx: &mut Context<Self>) {
        self.locate(&msg.task.task_id, &msg.task.conversation_id);
        self.enqueue(msg.task, ctx);
    }
}

/// The agent accepts its offer. `reference` travels on to `task.assigned`.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Accept {
    pub agent_id: Id,
    pub task_id: String,
    pub reference: Option<String>,
}

impl Handler<Accept> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: Accept, _: &mut Context<Self>) -> Self::Result {
        if self.consulting(&msg.agent_id, &msg.task_id) {
            let task_id = Id::from(msg.task_id.as_str());
            return self.consult_accept(&msg.agent_id, &task_id, msg.reference);
        }
        let task_id = self.offered_to(&msg.agent_id, &msg.task_id)?;
        self.timers.remove(&task_id);
        self.apply(RouterEvent::Accepted {
            task_id: task_id.clone(),
            clock_at: self.clock_now(),
        });
        let known = self.addrs.contains_key(&msg.agent_id);
        let Some(agent) = self.state.agents.get(&msg.agent_id).filter(|_| known) else {
            return Err(ApiError::UnknownTask(msg.task_id));
        };
        if let Some(conv) = self.conversations.get(&task_id) {
            conv.do_send(Assign {
                agent_id: msg.agent_id.clone(),
                agent_name: agent.view.name.clone(),
                reference: msg.reference,
                inactivity: self.inactivity_of(&task_id),
            });
        }
        Ok(())
    }
}

/// The agent declines its offer: the task goes to someone else, and comes back
/// to this agent only when nobody else took it within `reoffer_cooldown`.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Reject {
    pub agent_id: Id,
    pub task_id: String,
}

impl Handler<Reject> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: Reject, ctx: &mut Context<Self>) -> Self::Result {
        if self.consulting(&msg.agent_id, &msg.task_id) {
            let task_id = Id::from(msg.task_id.as_str());
            if self
                .state
                .consults
                .get(&task_id)
                .is_some_and(|c| c.accepted)
            {
                return Err(ApiError::InvalidState(format!(
                    "task {task_id} is already accepted"
                )));
            }
            self.consult_failed(&task_id, TransferFailure::Rejected, ctx);
            return Ok(());
        }
        let task_id = self.offered_to(&msg.agent_id, &msg.task_id)?;
        self.take_back(&task_id, RescindReason::Reassigned, Some(false));
        self.schedule_waits(&task_id, ctx);
        self.route_task(&task_id, ctx);
        self.route_agent(&msg.agent_id, ctx);
        Ok(())
    }
}

/// The conversation ended: the task is in wrap-up (capacity still held) and is
/// no longer re-queued if its agent goes away.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct TaskWrapping {
    pub task_id: Id,
}

impl Handler<TaskWrapping> for Router {
    type Result = ();

    fn handle(&mut self, msg: TaskWrapping, ctx: &mut Context<Self>) {
        // Ending cancels a pending transfer first.
        if let Some(target) = self.drop_consult(&msg.task_id) {
            self.route_agent(&target, ctx);
        }
        self.apply(RouterEvent::Wrapping {
            task_id: msg.task_id,
            clock_at: self.clock_now(),
        });
    }
}

/// The task is completed or canceled: stop routing it and free its capacity.
/// A pending offer is rescinded with `customer_left`.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct TaskClosed {
    pub task_id: Id,
    /// How, for the queue statistics.
    pub outcome: Outcome,
}

impl Handler<TaskClosed> for Router {
    type Result = ();

    fn handle(&mut self, msg: TaskClosed, ctx: &mut Context<Self>) {
        let consulted = self.drop_consult(&msg.task_id);
        self.parks.remove(&msg.task_id);
        let mut holder = None;
        if let Some(h) = self.state.held.get(&msg.task_id) {
            holder = Some(h.agent.clone());
            if matches!(h.hold, Hold::Reserved { .. }) {
                if let Some(agent) = self.addrs.get(&h.agent) {
                    agent.do_send(Rescind {
                        task_id: msg.task_id.clone(),
                        reason: RescindReason::CustomerLeft,
                    });
                }
            }
        }
        self.close(msg.task_id, msg.outcome);
        for agent in holder.into_iter().chain(consulted) {
            self.route_agent(&agent, ctx);
        }
    }
}

/// An agent starts an outbound conversation: take one unit of its capacity on
/// that channel now, or answer `capacity_exceeded`.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct ReserveOutbound {
    pub agent_id: Id,
    pub task_id: Id,
    pub channel: ChannelKind,
    pub customer: Customer,
    /// The queue it counts in (`default` when not given).
    pub queue: Option<String>,
}

impl Handler<ReserveOutbound> for Router {
    type Result = Result<(), ApiError>;

    fn handle(&mut self, msg: ReserveOutbound, _: &mut Context<Self>) -> Self::Result {
        let queue = msg.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        let q = self
            .state
            .queue(&queue)
            .ok_or_else(|| ApiError::NotFound(format!("queue {queue} does not exist")))?;
        if !q.takes(msg.channel) {
            return Err(ApiError::BadRequest(format!(
                "queue {queue} does not take {} conversations",
                msg.channel.as_str()
            )));
        }
        let agent =
            self.state.agents.get(&msg.agent_id).ok_or_else(|| {
                ApiError::NotFound(format!("agent {} does not exist", msg.agent_id))
            })?;
        if agent.free(msg.channel) == 0 {
            return Err(ApiError::CapacityExceeded(format!(
                "no free {} capacity: {} of {} in use",
                msg.channel.as_str(),
                agent.view.load.get(msg.channel),
                agent.view.capacity.get(msg.channel)
            )));
        }
        self.apply(RouterEvent::AssignedDirect {
            task_id: msg.task_id,
            agent_id: msg.agent_id,
            channel: msg.channel,
            customer: msg.customer,
            queue,
            at: crate::protocol::now(),
        });
        Ok(())
    }
}

/// The outbound conversation exists: attach it to the reservation so it can be
/// re-queued like any task if its agent goes away.
#[derive(Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct BindOutbound {
    pub task_id: Id,
    pub conversation_id: Id,
    /// As the channel knows them (a returning customer's name).
    pub customer: Customer,
}

impl Handler<BindOutbound> for Router {
    type Result = ();

    fn handle(&mut self, msg: BindOutbound, _: &mut Context<Self>) {
        if self.state.held.contains_key(&msg.task_id) {
            self.locate(&msg.task_id, &msg.conversation_id);
            self.apply(RouterEvent::OutboundBound {
                task_id: msg.task_id,
                conversation_id: msg.conversation_id,
                customer: msg.customer,
            });
        }
    }
}

/// Open tasks (queued, reserved, assigned, wrapping, parked) that pass the filters,
/// longest waiting first.
#[derive(Message, Default)]
#[rtype(result = "Vec<TaskSummary>")]
pub struct ListTasks {
    /// Only these states (all open ones when empty).
    pub states: Vec<TaskState>,
    pub channel: Option<ChannelKind>,
    pub queue: Option<String>,
}

impl Handler<ListTasks> for Router {
    type Result = MessageResult<ListTasks>;

    fn handle(&mut self, msg: ListTasks, _: &mut Context<Self>) -> Self::Result {
        let wanted = |t: &RoutableTask, state: TaskState| {
            (msg.states.is_empty() || msg.states.contains(&state))
                && msg.channel.is_none_or(|ch| ch == t.channel)
                && msg.queue.as_ref().is_none_or(|q| *q == t.queue)
        };
        let queued = self
            .state
            .waiting
            .values()
            .flat_map(|q| q.values())
            .filter(|t| wanted(t, TaskState::Queued))
            .map(|t| (t.order, t.summary(TaskState::Queued, None)));
        let held = self.state.held.values().filter_map(|h| {
            let state = match h.hold {
                Hold::Reserved { .. } => TaskState::Reserved,
                Hold::Assigned => TaskState::Assigned,
                Hold::Wrapping => TaskState::Wrapping,
            };
            // An outbound reservation whose conversation is not open yet.
            let bound = !h.task.conversation_id.is_empty();
            (bound && wanted(&h.task, state))
                .then(|| (h.task.order, h.task.summary(state, Some(&h.agent))))
        });
        let parked = self
            .state
            .parked
            .values()
            .filter(|p| wanted(&p.task, TaskState::Parked))
            .map(|p| {
                (
                    p.task.order,
                    p.task.summary(TaskState::Parked, Some(&p.agent)),
                )
            });
        let mut tasks: Vec<(u64, TaskSummary)> = queued.chain(held).chain(parked).collect();
        tasks.sort_by_key(|(order, t)| (t.waiting_since, *order));
        MessageResult(tasks.into_iter().map(|(_, t)| t).collect())
    }
}

/// Agent views (with live load), all or one.
#[derive(Message)]
#[rtype(result = "Vec<AgentView>")]
pub struct GetAgents {
    pub id: Option<Id>,
}

impl Handler<GetAgents> for Router {
    type Result = MessageResult<GetAgents>;

    fn handle(&mut self, msg: GetAgents, _: &mut Context<Self>) -> Self::Result {
        let mut views: Vec<AgentView> = match msg.id {
            Some(id) => self
                .state
                .agents
                .get(&id)
                .map(|a| a.view.clone())
                .into_iter()
                .collect(),
            None => self.state.agents.values().map(|a| a.view.clone()).collect(),
        };
        views.sort_by(|a, b| a.id.cmp(&b.id));
        MessageResult(views)
    }
}

/// Routing figures for `/v1/stats` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct RouterStats {
    pub agents_total: usize,
    pub agents_connected: usize,
    pub agents: AgentCounts,
    /// Per channel, the agents with capacity on it.
    pub agents_by_channel: [AgentCounts; 4],
    pub queue_length: usize,
    pub queue_by_channel: PerChannel,
    pub oldest_wait: Duration,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub latency_count: u64,
    /// Each queue's live figures and its day so far.
    pub queues: Vec<QueueStats>,
}

#[derive(Message)]
#[rtype(result = "RouterStats")]
pub struct GetStats;

impl Handler<GetStats> for Router {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let mut agents = AgentCounts::default();
        let mut agents_by_channel = [AgentCounts::default(); 4];
        for a in self.state.agents.values() {
            let has = |ch: ChannelKind| a.view.capacity.get(ch) > 0;
            agents.count(
                &a.view,
                ChannelKind::ALL.iter().any(|&ch| has(ch) && a.free(ch) > 0),
            );
            for ch in ChannelKind::ALL.into_iter().filter(|&ch| has(ch)) {
                agents_by_channel[ch.index()].count(&a.view, a.free(ch) > 0);
            }
        }
        let mut by_channel = PerChannel::default();
        let mut oldest: Option<Instant> = None;
        for t in self.state.waiting.values().flat_map(|q| q.values()) {
            *by_channel.get_mut(t.channel) += 1;
            oldest = Some(oldest.map_or(t.enqueued_at, |o| o.min(t.enqueued_at)));
        }
        let ms = |q: f64| self.state.latency.value_at_quantile(q) as f64 / 1000.0;
        MessageResult(RouterStats {
            agents_total: self.state.agents.len(),
            agents_connected: self
                .state
                .agents
                .values()
                .filter(|a| a.view.connected)
                .count(),
            agents,
            agents_by_channel,
            queue_length: self.state.queued.len(),
            queue_by_channel: by_channel,
            oldest_wait: oldest.map(|o| o.elapsed()).unwrap_or_default(),
            latency_p50_ms: ms(0.5),
            latency_p90_ms: ms(0.9),
            latency_p99_ms: ms(0.99),
            latency_max_ms: self.state.latency.max() as f64 / 1000.0,
            latency_count: self.state.latency.len(),
            queues: self.state.queue_stats(self.clock_now()),
        })
    }
}

impl Router {
    /// Tell supervisors where an agent stands (`agent.state`).
    pub(super) fn publish_agent(&self, id: &Id) {
        if let Some(agent) = self.state.agents.get(id) {
            self.broker.publish(|| Event::AgentState {
                agent: Cow::Borrowed(&agent.view),
            });
        }
    }

    /// The task, if it is currently offered to `agent_id`; why not otherwise.
    fn offered_to(&self, agent_id: &Id, task_id: &str) -> Result<Id, ApiError> {
        match self.state.held.get(task_id) {
            Some(h) if &h.agent == agent_id && matches!(h.hold, Hold::Reserved { .. }) => {
                Ok(task_id.into())
            }
            _ => Err(self.offer_error(agent_id, task_id)),
        }
    }

    /// Classify why `agent_id` cannot act on `task_id`'s offer.
    fn offer_error(&self, agent_id: &Id, task_id: &str) -> ApiError {
        match self.state.held.get(task_id) {
            Some(h) if &h.agent != agent_id => {
                ApiError::NotYourTask(format!("task {task_id} is not offered to you"))
            }
            Some(_) => ApiError::InvalidState(format!("task {task_id} is already accepted")),
            None if self.state.queued.contains_key(task_id) || self.broker.task_exists(task_id) => {
                ApiError::InvalidState(format!(
                    "task {task_id} is not offered to you: the offer expired or was withdrawn"
                ))
            }
            None => ApiError::UnknownTask(task_id.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::codec::assert_crosses;
    use crate::router::state::Decline;

    /// What a conversation tells the router can cross between nodes (a
    /// partitioned cluster would run them on different ones): the router
    /// finds the conversation by the id it names.
    #[test]
    fn a_conversations_news_crosses_between_nodes() {
        let mut task = RoutableTask::sample("tk_1", 4);
        assert_crosses(&EnqueueTask { task: task.clone() });
        task.skills = vec!["french".to_owned(), "billing".to_owned()].into();
        task.declined = vec![Decline {
            agent: "alice".into(),
            at: SystemTime::UNIX_EPOCH,
        }];
        task.handoff.transfers = vec![crate::protocol::samples::transfer()];
        task.handoff.in_transfer = true;
        task.handoff.prefer = Some("bob".into());
        task.handoff.requeued_at = Some(SystemTime::UNIX_EPOCH);
        task.relaxed = true;
        assert_crosses(&EnqueueTask { task });
        assert_crosses(&BindOutbound {
            task_id: "tk_2".into(),
            conversation_id: "cv_2".into(),
            customer: crate::protocol::samples::customer(),
        });
        assert_crosses(&TaskWrapping {
            task_id: "tk_1".into(),
        });
        for outcome in [
            Outcome::Completed,
            Outcome::Abandoned,
            Outcome::Canceled,
            Outcome::Dropped,
        ] {
            assert_crosses(&TaskClosed {
                task_id: "tk_1".into(),
                outcome,
            });
        }
    }
}

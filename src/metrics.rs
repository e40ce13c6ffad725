//! Broker-wide counters and gauges that many actors bump: plain atomics, no
//! locks, read by `/v1/stats` and `/metrics`.
//!
//! Per-state task gauges are moved by the conversation actor in the one place
//! it applies a task transition, so they cannot drift from the real states.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::protocol::TaskState;

#[derive(Debug, Default)]
pub struct Metrics {
    tasks: [AtomicI64; TaskState::ALL.len()],
    /// Customer messages accepted.
    pub messages_in: AtomicU64,
    /// Agent messages accepted.
    pub messages_out: AtomicU64,
    /// Frames that found a socket's queue full (each disconnects that socket).
    pub slow_consumers: AtomicU64,
    /// Conversations opened since start.
    pub conversations_opened: AtomicU64,
}

impl Metrics {
    fn slot(state: TaskState) -> usize {
        TaskState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or_default()
    }

    /// A task moved from `from` (None when new) to `to`.
    pub fn task_moved(&self, from: Option<TaskState>, to: TaskState) {
        if let Some(from) = from {
            self.tasks[Self::slot(from)].fetch_sub(1, Ordering::Relaxed);
        }
        self.tasks[Self::slot(to)].fetch_add(1, Ordering::Relaxed);
    }

    /// Tasks currently in `state` (for completed/canceled: since start).
    pub fn tasks_in(&self, state: TaskState) -> i64 {
        self.tasks[Self::slot(state)].load(Ordering::Relaxed)
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_gauges_follow_transitions() {
        let m = Metrics::default();
        m.task_moved(None, TaskState::Queued);
        m.task_moved(Some(TaskState::Queued), TaskState::Reserved);
        assert_eq!(m.tasks_in(TaskState::Queued), 0);
        assert_eq!(m.tasks_in(TaskState::Reserved), 1);
    }
}

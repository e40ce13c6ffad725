//! Live figures supervisors read: agents counted by what they can do now, and
//! each queue's statistics (`GET /v1/stats` → `queues`, the supervisor
//! stream's `stats` frame).

use serde::{Deserialize, Serialize};

use super::{Activity, AgentView};

/// Agents by what they can do now. Every agent is in exactly one of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounts {
    /// Connected, available, with free capacity.
    pub available: usize,
    /// Connected and available, but full.
    pub busy: usize,
    /// Connected, on break.
    #[serde(rename = "break")]
    pub on_break: usize,
    /// Logged out (activity `offline`).
    pub offline: usize,
    /// Socket gone, tasks kept for the disconnect grace period.
    pub disconnected: usize,
    /// Let `max_missed_offers` offers in a row time out; not eligible.
    pub not_responding: usize,
}

impl AgentCounts {
    /// Count `agent`, as able to take work if `free` (on what is counted).
    pub fn count(&mut self, view: &AgentView, free: bool) {
        let slot = match (view.activity, view.connected) {
            (Activity::Offline, _) => &mut self.offline,
            (Activity::NotResponding, _) => &mut self.not_responding,
            (_, false) => &mut self.disconnected,
            (Activity::Break, true) => &mut self.on_break,
            (Activity::Available, true) if free => &mut self.available,
            (Activity::Available, true) => &mut self.busy,
        };
        *slot += 1;
    }
}

/// One queue's live figures and its day so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub id: String,
    /// Tasks waiting in it now.
    pub waiting: usize,
    /// How long the longest-waiting of them has waited (0 when none waits).
    pub longest_wait_ms: u64,
    /// Its tasks offered to an agent now, awaiting an answer.
    pub offered: usize,
    /// Its tasks holding an agent's capacity now (offered, assigned or in
    /// wrap-up).
    pub capacity_in_use: usize,
    /// The agents who serve it (capacity on one of its channels and its
    /// skills), by activity; `available` means with free capacity on one of
    /// its channels. An agent counts in every queue it serves.
    pub agents: AgentCounts,
    pub today: QueueToday,
}

/// A queue's figures since midnight (UTC, on the router's clock).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueToday {
    /// Tasks that entered it (arrived in it; overflow does not count again).
    pub created: u64,
    pub completed: u64,
    /// Ended before any agent accepted them, for any reason (`abandoned`
    /// ones included).
    pub canceled: u64,
    /// Of those, the customer left or the task waited past `max_wait`.
    pub abandoned: u64,
    /// Average arrival → first accept, of tasks accepted today (ASA).
    pub avg_wait_ms: Option<u64>,
    /// Average accept → end of conversation, of conversations ended today.
    pub avg_handle_ms: Option<u64>,
    /// Average end → complete, of tasks completed today.
    pub avg_wrapup_ms: Option<u64>,
    /// Of today's tasks accepted or abandoned after the target, the share
    /// (0–100) accepted within the queue's `sla.first_response`; `null`
    /// without a target or before any such task.
    pub sla_met_pct: Option<f64>,
}

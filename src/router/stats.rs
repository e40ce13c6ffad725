//! Each queue's day, counted from the router's events: tasks created,
//! completed, canceled and abandoned, the waits to accept (ASA), handle and
//! wrap-up times, and the SLA. Owned by [`super::RouterState`] and changed
//! only from its `apply`, so a replay of the events counts the same.
//!
//! Times are the router clock's (`Config.clock`), carried in the events.
//! The day is the UTC day: figures count on the day their event happened
//! (a task accepted after midnight counts in the new day's ASA), and the
//! first event of a new day, or a read on it, starts from zero.
//!
//! SLA: a task accepted within its queue's `sla.first_response` of arriving
//! meets it, one accepted later misses it; a task abandoned (customer left,
//! `max_wait`) after the target misses it, one abandoned before the target
//! counts neither way (it left before the promise was due). Only the first
//! accept of a task counts; a queue without a target has no SLA figure.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::protocol::{Id, QueueToday};

/// How a task stopped being routed, as the statistics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Its agent completed it.
    Completed,
    /// Before an agent accepted it: the customer left, or it waited past
    /// its queue's `max_wait`.
    Abandoned,
    /// Before an agent accepted it, for another reason (closed queue that
    /// cancels, an outbound conversation that failed to open).
    Canceled,
    /// The router stops holding it but the conversation goes on (its agent
    /// was deleted during wrap-up): counted when the conversation completes.
    Dropped,
}

/// One queue's counters for a day.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Day {
    created: u64,
    completed: u64,
    canceled: u64,
    abandoned: u64,
    wait: Mean,
    handle: Mean,
    wrapup: Mean,
    sla_met: u64,
    sla_counted: u64,
}

/// A sum of durations and how many.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Mean {
    total_ms: u64,
    count: u64,
}

impl Mean {
    fn add(&mut self, d: Duration) {
        self.total_ms += d.as_millis() as u64;
        self.count += 1;
    }

    fn get(&self) -> Option<u64> {
        (self.count > 0).then(|| self.total_ms / self.count)
    }
}

/// What the statistics remember of a task until it closes.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Times {
    /// The queue it is in now.
    queue: String,
    arrived: SystemTime,
    /// Accepted at least once (only the first counts for ASA and SLA).
    accepted: bool,
    /// Its latest accept, and the end of its conversation.
    assigned: Option<SystemTime>,
    ended: Option<SystemTime>,
}

/// Every queue's day so far, and the times of the tasks open now.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// The UTC day (days since the epoch) the counters are of.
    day: u64,
    days: HashMap<String, Day>,
    tasks: HashMap<Id, Times>,
}

/// The UTC day of `t`, in days since the epoch.
pub(super) fn day_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

impl Tally {
    /// The counters of `queue` for the day of `at`, a new day starting from
    /// zero. (An event dated before the current day counts in it.)
    fn day_mut(&mut self, queue: &str, at: SystemTime) -> &mut Day {
        let day = day_of(at);
        if day > self.day {
            self.day = day;
            self.days.clear();
        }
        self.days.entry(queue.to_owned()).or_default()
    }

    /// A task entered `queue` at `at`.
    pub fn arrived(&mut self, task_id: &Id, queue: &str, at: SystemTime) {
        self.day_mut(queue, at).created += 1;
        self.tasks.insert(
            task_id.clone(),
            Times {
                queue: queue.to_owned(),
                arrived: at,
                accepted: false,
                assigned: None,
                ended: None,
            },
        );
    }

    /// A waiting task moved to another queue.
    pub fn moved(&mut self, task_id: &Id, queue: &str) {
        if let Some(t) = self.tasks.get_mut(task_id) {
            t.queue = queue.to_owned();
        }
    }

    /// When a task arrived, if the statistics follow it.
    pub fn arrival(&self, task_id: &Id) -> Option<SystemTime> {
        self.tasks.get(task_id).map(|t| t.arrived)
    }

    /// An agent accepted it at `at`; `target` is its queue's SLA target.
    pub fn accepted(&mut self, task_id: &Id, at: SystemTime, target: Option<Duration>) {
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        t.assigned = Some(at);
        if t.accepted {
            return;
        }
        t.accepted = true;
        let (queue, wait) = (t.queue.clone(), since(at, t.arrived));
        let day = self.day_mut(&queue, at);
        day.wait.add(wait);
        if let Some(target) = target {
            day.sla_counted += 1;
            if wait <= target {
                day.sla_met += 1;
            }
        }
    }

    /// Its conversation ended at `at`: wrap-up starts.
    pub fn ended(&mut self, task_id: &Id, at: SystemTime) {
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        t.ended = Some(at);
        let (queue, assigned) = (t.queue.clone(), t.assigned);
        if let Some(assigned) = assigned {
            self.day_mut(&queue, at).handle.add(since(at, assigned));
        }
    }

    /// It closed at `at` with `outcome`; `target` is its queue's SLA target.
    pub fn closed(
        &mut self,
        task_id: &Id,
        outcome: Outcome,
        at: SystemTime,
        target: Option<Duration>,
    ) {
        if outcome == Outcome::Dropped {
            return;
        }
        let Some(t) = self.tasks.remove(task_id) else {
            return;
        };
        let day = self.day_mut(&t.queue, at);
        match outcome {
            Outcome::Completed => {
                day.completed += 1;
                if let Some(ended) = t.ended {
                    day.wrapup.add(since(at, ended));
                }
            }
            Outcome::Abandoned => {
                day.canceled += 1;
                day.abandoned += 1;
                if target.is_some_and(|target| since(at, t.arrived) > target) && !t.accepted {
                    day.sla_counted += 1;
                }
            }
            Outcome::Canceled => day.canceled += 1,
            Outcome::Dropped => {}
        }
    }

    /// `queue`'s figures for the day of `now` (zero if nothing happened on
    /// it yet).
    pub fn today(&self, queue: &str, now: SystemTime) -> QueueToday {
        let Some(day) = self.days.get(queue).filter(|_| day_of(now) <= self.day) else {
            return QueueToday::default();
        };
        QueueToday {
            created: day.created,
            completed: day.completed,
            canceled: day.canceled,
            abandoned: day.abandoned,
            avg_wait_ms: day.wait.get(),
            avg_handle_ms: day.handle.get(),
            avg_wrapup_ms: day.wrapup.get(),
            sla_met_pct: (day.sla_counted > 0)
                .then(|| (day.sla_met as f64 * 1000.0 / day.sla_counted as f64).round() / 10.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Option<Duration> = Some(Duration::from_secs(60));

    fn t(secs: u64) -> SystemTime {
        // 2026-11-27 00:00:00 UTC, plus `secs`.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_737_600 + secs)
    }

    fn id(s: &str) -> Id {
        Id::from(s)
    }

    #[test]
    fn waits_handle_and_wrapup_average_and_the_sla_counts_accepts() {
        let mut tally = Tally::default();
        tally.arrived(&id("a"), "billing", t(100));
        tally.arrived(&id("b"), "billing", t(100));
        // Within the 60 s target, then after it.
        tally.accepted(&id("a"), t(130), TARGET);
        tally.accepted(&id("b"), t(190), TARGET);
        tally.ended(&id("a"), t(230));
        tally.closed(&id("a"), Outcome::Completed, t(250), TARGET);
        let today = tally.today("billing", t(300));
        assert_eq!(today.created, 2);
        assert_eq!(today.completed, 1);
        assert_eq!(today.avg_wait_ms, Some(60_000));
        assert_eq!(today.avg_handle_ms, Some(100_000));
        assert_eq!(today.avg_wrapup_ms, Some(20_000));
        assert_eq!(today.sla_met_pct, Some(50.0));
        assert_eq!(tally.today("sales", t(300)), QueueToday::default());
    }

    #[test]
    fn an_abandon_misses_the_sla_only_after_the_target() {
        let mut tally = Tally::default();
        for task in ["met", "early", "late", "other"] {
            tally.arrived(&id(task), "q", t(0));
        }
        tally.accepted(&id("met"), t(10), TARGET);
        tally.closed(&id("early"), Outcome::Abandoned, t(59), TARGET);
        tally.closed(&id("late"), Outcome::Abandoned, t(61), TARGET);
        tally.closed(&id("other"), Outcome::Canceled, t(61), TARGET);
        let today = tally.today("q", t(100));
        assert_eq!((today.canceled, today.abandoned), (3, 2));
        // One met of two counted: the early abandon counts neither way.
        assert_eq!(today.sla_met_pct, Some(50.0));
        // No target: no SLA figure.
        let mut tally = Tally::default();
        tally.arrived(&id("x"), "q", t(0));
        tally.accepted(&id("x"), t(10), None);
        assert_eq!(tally.today("q", t(10)).sla_met_pct, None);
    }

    #[test]
    fn only_the_first_accept_counts_and_a_re_accept_restarts_the_handle_time() {
        let mut tally = Tally::default();
        tally.arrived(&id("a"), "q", t(0));
        tally.accepted(&id("a"), t(10), TARGET);
        // Its agent left; accepted again much later by another.
        tally.accepted(&id("a"), t(500), TARGET);
        tally.ended(&id("a"), t(530));
        let today = tally.today("q", t(600));
        assert_eq!(today.avg_wait_ms, Some(10_000));
        assert_eq!(today.sla_met_pct, Some(100.0));
        assert_eq!(today.avg_handle_ms, Some(30_000));
    }

    #[test]
    fn a_task_counts_in_the_queue_it_moved_to_and_a_dropped_one_when_it_completes() {
        let mut tally = Tally::default();
        tally.arrived(&id("a"), "first", t(0));
        tally.moved(&id("a"), "second");
        tally.accepted(&id("a"), t(5), TARGET);
        tally.ended(&id("a"), t(10));
        tally.closed(&id("a"), Outcome::Dropped, t(11), TARGET);
        tally.closed(&id("a"), Outcome::Completed, t(20), TARGET);
        assert_eq!(tally.today("first", t(30)).created, 1);
        let second = tally.today("second", t(30));
        assert_eq!((second.created, second.completed), (0, 1));
        assert_eq!(second.avg_wrapup_ms, Some(10_000));
        assert!(tally.tasks.is_empty());
    }

    #[test]
    fn the_day_rolls_over_at_midnight_utc() {
        let mut tally = Tally::default();
        tally.arrived(&id("a"), "q", t(86_000));
        tally.arrived(&id("b"), "q", t(86_000));
        assert_eq!(tally.today("q", t(86_399)).created, 2);
        // Read on the next day: nothing yet.
        assert_eq!(tally.today("q", t(86_400)), QueueToday::default());
        // Accepted after midnight: counts in the new day, which starts clean.
        tally.accepted(&id("a"), t(86_410), TARGET);
        let today = tally.today("q", t(86_420));
        assert_eq!(today.created, 0);
        assert_eq!(today.avg_wait_ms, Some(410_000));
        assert_eq!(today.sla_met_pct, Some(0.0));
        // The task from yesterday still closes and counts today.
        tally.closed(&id("b"), Outcome::Abandoned, t(86_430), TARGET);
        assert_eq!(tally.today("q", t(86_430)).abandoned, 1);
    }
}

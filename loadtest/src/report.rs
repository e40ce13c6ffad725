//! Measurement and reporting: the shared clock and the timestamps the harness
//! puts into message texts, the run-wide counters and HDR latency histograms,
//! errors by code, and the human and JSON summaries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::net::Failure;

// ---------------------------------------------------------------------------
// Clock and text stamps

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide base instant. Agents and customers run in
/// this one process, so a stamp written by one side is comparable on the other.
pub fn now_nanos() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The `t=<nanos>` stamp in a harness text, if any.
pub fn stamp_of(text: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("t=")?.parse().ok())
}

/// The `#<n>` message number in a harness text, if any.
pub fn tag_of(text: &str) -> Option<u32> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('#')?.parse().ok())
}

/// The `<seq>` in an agent reply `re: <seq> #<n> t=<nanos>`.
pub fn replied_seq_of(text: &str) -> Option<u64> {
    text.strip_prefix("re: ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Histograms

/// The latencies the harness measures.
#[derive(Debug, Clone, Copy)]
pub enum Lat {
    /// Customer `message` sent → the agent's `message` event (live, not history).
    CustomerToAgent,
    /// Agent `send` → the customer's `message` event.
    AgentToCustomer,
    /// Customer's first message sent → `task.offered` at the agent.
    FirstToOffered,
    /// Agent `accept` sent → `task.assigned`.
    AcceptToAssigned,
    /// Customer's first message sent → `task.assigned` (queue wait + offer + accept).
    FirstToAssigned,
}

impl Lat {
    pub const ALL: [Lat; 5] = [
        Lat::CustomerToAgent,
        Lat::AgentToCustomer,
        Lat::FirstToOffered,
        Lat::AcceptToAssigned,
        Lat::FirstToAssigned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lat::CustomerToAgent => "customer_to_agent",
            Lat::AgentToCustomer => "agent_to_customer",
            Lat::FirstToOffered => "first_message_to_offered",
            Lat::AcceptToAssigned => "accept_to_assigned",
            Lat::FirstToAssigned => "first_message_to_assigned",
        }
    }
}

/// Histograms hold microseconds from 1 µs to 1 h with 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

// ---------------------------------------------------------------------------
// Run-wide state

/// Counters shared by every task of the run.
#[derive(Default)]
pub struct Counters {
    pub agents_ready: AtomicU64,
    pub offers: AtomicU64,
    pub foreign_offers_rejected: AtomicU64,
    pub accepts_sent: AtomicU64,
    pub assigned: AtomicU64,
    pub ends_sent: AtomicU64,
    pub completes_sent: AtomicU64,
    pub tasks_completed: AtomicU64,
    /// Tasks assigned to this run's agents and not completed yet.
    pub open_tasks: AtomicU64,
    pub customer_to_agent: AtomicU64,
    pub agent_to_customer: AtomicU64,
    pub conversations_started: AtomicU64,
    pub conversations_ended: AtomicU64,
    pub conversations_completed: AtomicU64,
    pub conversations_failed: AtomicU64,
    pub aborted_at_deadline: AtomicU64,
    /// [`now_nanos`] when the latest conversation completed.
    pub last_completion_nanos: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    /// Counts a completed conversation and notes when.
    pub fn conversation_completed(&self) {
        Counters::inc(&self.conversations_completed);
        self.last_completion_nanos
            .fetch_max(now_nanos(), Ordering::Relaxed);
    }
}

struct Inner {
    hist: Vec<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
    rescinded: BTreeMap<String, u64>,
}

/// Everything measured during a run.
pub struct Stats {
    pub c: Counters,
    inner: Mutex<Inner>,
}

const MAX_SAMPLES: usize = 20;

impl Stats {
    pub fn new() -> Stats {
        Stats {
            c: Counters::default(),
            inner: Mutex::new(Inner {
                hist: Lat::ALL.iter().map(|_| new_histogram()).collect(),
                errors: BTreeMap::new(),
                samples: Vec::new(),
                rescinded: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("stats lock")
    }

    /// Records the time from `sent_nanos` (a stamp from [`now_nanos`]) to now.
    pub fn record_since(&self, lat: Lat, sent_nanos: u64) {
        let micros = now_nanos().saturating_sub(sent_nanos) / 1_000;
        self.lock().hist[lat as usize].saturating_record(micros.max(1));
    }

    /// Counts an error by its code and keeps the first few for the report.
    pub fn error(&self, f: &Failure) {
        let mut inner = self.lock();
        *inner.errors.entry(f.code.clone()).or_default() += 1;
        if inner.samples.len() < MAX_SAMPLES {
            inner.samples.push(f.to_string());
        }
    }

    pub fn rescinded(&self, reason: &str) {
        *self.lock().rescinded.entry(reason.to_string()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.lock().errors.values().sum()
    }
}

// ---------------------------------------------------------------------------
// Summary

/// What the report says about the run besides the measurements.
pub struct RunInfo {
    pub run_id: String,
    pub config: Value,
    pub wall: Duration,
    pub phase: Duration,
    /// [`now_nanos`] when the conversation phase started.
    pub phase_start_nanos: u64,
    pub requested: u64,
    pub agents_created: u64,
    pub agents_open_tasks_at_end: u64,
    pub server_stats: Option<Value>,
}

/// Builds the JSON report; `ok` is the run's verdict.
pub fn to_json(stats: &Stats, info: &RunInfo, ok: bool) -> Value {
    let c = &stats.c;
    let g = Counters::get;
    let inner = stats.lock();
    let mut latency = serde_json::Map::new();
    for lat in Lat::ALL {
        latency.insert(lat.name().to_string(), hist_json(&inner.hist[lat as usize]));
    }
    let c2a = g(&c.customer_to_agent);
    let a2c = g(&c.agent_to_customer);
    let secs = info.phase.as_secs_f64().max(1e-9);
    let started = g(&c.conversations_started);
    let completed = g(&c.conversations_completed);
    // Until the last completion: a straggler waiting out --step-timeout does not
    // dilute the rate the rest achieved.
    let active =
        Duration::from_nanos(g(&c.last_completion_nanos).saturating_sub(info.phase_start_nanos))
            .as_secs_f64()
            .max(1e-9);
    json!({
        "ok": ok,
        "run_id": info.run_id,
        "config": info.config,
        "wall_seconds": info.wall.as_secs_f64(),
        "phase_seconds": info.phase.as_secs_f64(),
        "conversations": {
            "requested": info.requested,
            "started": started,
            "completed": completed,
            "ended_seen_by_customer": g(&c.conversations_ended),
            "failed": g(&c.conversations_failed),
            "aborted_at_deadline": g(&c.aborted_at_deadline),
            "not_started": info.requested.saturating_sub(started),
            "per_second": completed as f64 / secs,
            "seconds_to_last_completion": if completed > 0 { active } else { 0.0 },
            "per_second_to_last_completion": if completed > 0 { completed as f64 / active } else { 0.0 },
        },
        "agents": {
            "created": info.agents_created,
            "ready": g(&c.agents_ready),
            "offers": g(&c.offers),
            "foreign_offers_rejected": g(&c.foreign_offers_rejected),
            "accepts_sent": g(&c.accepts_sent),
            "assigned": g(&c.assigned),
            "ends_sent": g(&c.ends_sent),
            "completes_sent": g(&c.completes_sent),
            "tasks_completed": g(&c.tasks_completed),
            "open_tasks_at_end": info.agents_open_tasks_at_end,
            "rescinded": inner.rescinded,
        },
        "messages": {
            "customer_to_agent": c2a,
            "agent_to_customer": a2c,
            "total": c2a + a2c,
            "per_second": (c2a + a2c) as f64 / secs,
            "per_second_to_last_completion": if completed > 0 { (c2a + a2c) as f64 / active } else { 0.0 },
        },
        "latency_ms": latency,
        "errors": inner.errors,
        "error_samples": inner.samples,
        "server_stats": info.server_stats,
    })
}

fn hist_json(h: &Histogram<u64>) -> Value {
    let ms = |micros: u64| micros as f64 / 1000.0;
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "mean": h.mean() / 1000.0,
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

/// Renders the JSON report for a human.
pub fn human(report: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let r = report;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let conv = &r["conversations"];
    let agents = &r["agents"];
    let msgs = &r["messages"];
    let _ = writeln!(
        s,
        "== Switchboard load test {} ==",
        r["run_id"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "verdict: {}   wall {:.2}s, conversation phase {:.2}s",
        if r["ok"].as_bool() == Some(true) {
            "OK"
        } else {
            "FAILED"
        },
        f(&r["wall_seconds"]),
        f(&r["phase_seconds"]),
    );
    let _ = writeln!(
        s,
        "conversations: {} completed of {} requested ({} started, {} failed, {} aborted at deadline, {} not started), {:.1}/s",
        n(&conv["completed"]),
        n(&conv["requested"]),
        n(&conv["started"]),
        n(&conv["failed"]),
        n(&conv["aborted_at_deadline"]),
        n(&conv["not_started"]),
        f(&conv["per_second"]),
    );
    let _ = writeln!(
        s,
        "agents: {} created, {} ready; offers {} ({} from other runs rejected), assigned {}, tasks completed {}, open at end {}",
        n(&agents["created"]),
        n(&agents["ready"]),
        n(&agents["offers"]),
        n(&agents["foreign_offers_rejected"]),
        n(&agents["assigned"]),
        n(&agents["tasks_completed"]),
        n(&agents["open_tasks_at_end"]),
    );
    if let Some(m) = agents["rescinded"].as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "rescinded offers: {}", parts.join(", "));
    }
    let _ = writeln!(
        s,
        "messages: {} customer->agent + {} agent->customer = {}, {:.1} msg/s end to end",
        n(&msgs["customer_to_agent"]),
        n(&msgs["agent_to_customer"]),
        n(&msgs["total"]),
        f(&msgs["per_second"]),
    );
    if f(&conv["seconds_to_last_completion"]) + 0.5 < f(&r["phase_seconds"]) {
        let _ = writeln!(
            s,
            "  until the last completion ({:.2}s): {:.1} conversations/s, {:.1} msg/s",
            f(&conv["seconds_to_last_completion"]),
            f(&conv["per_second_to_last_completion"]),
            f(&msgs["per_second_to_last_completion"]),
        );
    }
    let _ = writeln!(
        s,
        "latency (ms)                   count      p50      p90      p99    p99.9      max"
    );
    for lat in Lat::ALL {
        let h = &r["latency_ms"][lat.name()];
        if n(&h["count"]) == 0 {
            let _ = writeln!(s, "  {:<27} {:>6}        -", lat.name(), 0);
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<27} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            lat.name(),
            n(&h["count"]),
            f(&h["p50"]),
            f(&h["p90"]),
            f(&h["p99"]),
            f(&h["p99_9"]),
            f(&h["max"]),
        );
    }
    match r["errors"].as_object() {
        Some(m) if !m.is_empty() => {
            let _ = writeln!(s, "errors by code:");
            for (code, count) in m {
                let _ = writeln!(s, "  {code:<40} {count}");
            }
            if let Some(samples) = r["error_samples"].as_array() {
                let _ = writeln!(s, "first errors:");
                for e in samples {
                    let _ = writeln!(s, "  {}", e.as_str().unwrap_or(""));
                }
            }
        }
        _ => {
            let _ = writeln!(s, "errors: none");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stamps_tags_and_seqs() {
        let text = "re: 17 #3 t=123456789";
        assert_eq!(stamp_of(text), Some(123_456_789));
        assert_eq!(tag_of(text), Some(3));
        assert_eq!(replied_seq_of(text), Some(17));
        assert_eq!(stamp_of("bye"), None);
        assert_eq!(tag_of("lt #x t=1"), None);
        assert_eq!(replied_seq_of("lt #1 t=5"), None);
    }

    #[test]
    fn report_counts_errors_by_code() {
        let stats = Stats::new();
        stats.error(&Failure::new("capacity_exceeded", "x"));
        stats.error(&Failure::new("capacity_exceeded", "y"));
        stats.record_since(Lat::CustomerToAgent, now_nanos());
        let info = RunInfo {
            run_id: "t".into(),
            config: json!({}),
            wall: Duration::from_secs(1),
            phase: Duration::from_secs(1),
            phase_start_nanos: 0,
            requested: 1,
            agents_created: 1,
            agents_open_tasks_at_end: 0,
            server_stats: None,
        };
        let r = to_json(&stats, &info, false);
        assert_eq!(r["errors"]["capacity_exceeded"], 2);
        assert_eq!(r["latency_ms"]["customer_to_agent"]["count"], 1);
        assert!(human(&r).contains("capacity_exceeded"));
    }
}

//! Measurement and reporting: the shared clock and the timestamps the harness
//! puts into message texts, the run-wide counters and HDR latency histograms,
//! errors by code, snapshots that worker processes hand to their parent and
//! that merge, and the human and JSON summaries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::net::Failure;

// ---------------------------------------------------------------------------
// Clock and text stamps

/// Nanoseconds on the machine's monotonic clock (`CLOCK_MONOTONIC`). Every
/// process on this machine reads the same clock, so a stamp written by one
/// worker process (or the provider sink) is comparable in another.
pub fn now_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How late a timer may wake (tokio's timers round up to whole milliseconds) before
/// the lateness counts against the run.
pub const TIMER_SLACK_NANOS: u64 = 2_500_000;

/// The stamp for a message meant for `intended` and sent now: now, when the
/// wake-up was within the timer's granularity; otherwise `intended`, so that a
/// harness or machine that fell behind shows up as latency.
pub fn send_stamp(intended: u64) -> u64 {
    let now = now_nanos();
    if now <= intended.saturating_add(TIMER_SLACK_NANOS) {
        now
    } else {
        intended
    }
}

/// A tokio instant for a [`now_nanos`] time (now, if it has passed).
pub fn instant_at(nanos: u64) -> tokio::time::Instant {
    let now = now_nanos();
    tokio::time::Instant::now() + std::time::Duration::from_nanos(nanos.saturating_sub(now))
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lat {
    /// Customer message (its intended send time) → the agent's `message` event.
    CustomerToAgent,
    /// Agent `send` (its intended time) → the customer's `message` event (or the
    /// provider sink's receipt, on SMS).
    AgentToCustomer,
    /// Customer's first message → `task.offered` at the agent.
    FirstToOffered,
    /// Agent `accept` sent → `task.assigned`.
    AcceptToAssigned,
    /// Customer's first message → `task.assigned` (queue wait + offer + accept).
    FirstToAssigned,
    /// SMS: agent `send` → `message.status` `delivered` at the agent (through the
    /// sink and its signed status callback).
    SendToDelivered,
    /// WhatsApp: the same, through the sink's Graph API and its signed
    /// `statuses` webhook.
    WhatsappSendToDelivered,
    /// Webchat: `POST /v1/webchat/sessions` → its answer.
    Session,
    /// Webchat: the connection's start (its `--ramp` slot, if paced) → session
    /// created and socket open.
    Connect,
}

impl Lat {
    pub const ALL: [Lat; 9] = [
        Lat::CustomerToAgent,
        Lat::AgentToCustomer,
        Lat::FirstToOffered,
        Lat::AcceptToAssigned,
        Lat::FirstToAssigned,
        Lat::SendToDelivered,
        Lat::WhatsappSendToDelivered,
        Lat::Session,
        Lat::Connect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lat::CustomerToAgent => "customer_to_agent",
            Lat::AgentToCustomer => "agent_to_customer",
            Lat::FirstToOffered => "first_message_to_offered",
            Lat::AcceptToAssigned => "accept_to_assigned",
            Lat::FirstToAssigned => "first_message_to_assigned",
            Lat::SendToDelivered => "sms_send_to_delivered",
            Lat::WhatsappSendToDelivered => "whatsapp_send_to_delivered",
            Lat::Session => "webchat_session",
            Lat::Connect => "webchat_connect",
        }
    }

    fn is_message(self) -> bool {
        matches!(self, Lat::CustomerToAgent | Lat::AgentToCustomer)
    }
}

/// Histograms hold microseconds from 1 µs to 1 h with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as `[[value, count], ...]`, for worker reports.
pub fn hist_to_raw(h: &Histogram<u64>) -> Value {
    Value::Array(
        h.iter_recorded()
            .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
            .collect(),
    )
}

/// Adds `[[value, count], ...]` into `h`.
pub fn hist_add_raw(h: &mut Histogram<u64>, raw: &Value) {
    for pair in raw.as_array().into_iter().flatten() {
        if let (Some(v), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = h.record_n(v.max(1), c);
        }
    }
}

/// What was recorded between two copies of one histogram, `earlier` taken
/// before `later` (empty if they do not fit: a copy of another histogram).
pub fn hist_between(earlier: &Histogram<u64>, later: &Histogram<u64>) -> Histogram<u64> {
    let mut h = later.clone();
    if h.subtract(earlier).is_err() {
        h.reset();
    }
    h
}

pub fn hist_json(h: &Histogram<u64>) -> Value {
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

// ---------------------------------------------------------------------------
// Run-wide state

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Counters shared by every task of the run.
        #[derive(Default)]
        pub struct Counters {
            $(pub $name: AtomicU64,)*
        }

        impl Counters {
            pub fn to_map(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}

counters!(
    agents_ready,
    offers,
    foreign_offers_rejected,
    accepts_sent,
    assigned,
    ends_sent,
    completes_sent,
    tasks_completed,
    // Tasks assigned to this run's agents and not completed yet.
    open_tasks,
    // Every customer message an agent received, and of those: the ones timed
    // in the customer_to_agent histogram (received live, stamped), the ones
    // that came with task.assigned (the first), and the closing "bye".
    customer_to_agent,
    customer_to_agent_timed,
    customer_to_agent_with_assignment,
    customer_to_agent_closing,
    // Every agent reply a customer received (all timed in agent_to_customer).
    agent_to_customer,
    conversations_started,
    conversations_ended,
    conversations_completed,
    conversations_failed,
    aborted_at_deadline,
    // Open loop: arrivals not started because --max-in-flight were running.
    arrivals_dropped,
    // Conversations running now (gauge).
    in_flight,
    // WebSocket connections open now (gauge).
    connections,
    // SMS and WhatsApp replies whose `delivered` status agents still wait
    // for (gauge; only with delivered status callbacks).
    awaiting_delivery,
    // Webchat customer sockets opened, and now_nanos() of the latest.
    customer_sockets_opened,
    last_socket_open_nanos,
    // Signed Twilio webhooks (SMS customers) and Cloud API webhooks
    // (WhatsApp customers) the broker accepted.
    webhooks_sent,
    whatsapp_webhooks_sent,
    // now_nanos() when the latest conversation completed.
    last_completion_nanos,
);

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
    /// Counts an opened customer socket and notes when.
    pub fn customer_socket_opened(&self) {
        Counters::inc(&self.customer_sockets_opened);
        self.last_socket_open_nanos
            .fetch_max(now_nanos(), Ordering::Relaxed);
    }
    /// Counts a completed conversation and notes when.
    pub fn conversation_completed(&self) {
        Counters::inc(&self.conversations_completed);
        self.last_completion_nanos
            .fetch_max(now_nanos(), Ordering::Relaxed);
    }
}

/// Holds a gauge up while alive.
pub struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub fn up(c: &'a AtomicU64) -> Gauge<'a> {
        Counters::inc(c);
        Gauge(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        Counters::dec(self.0);
    }
}

struct Inner {
    hist: Vec<Histogram<u64>>,
    /// Message latencies since the last [`Stats::take_interval`].
    interval: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    samples: Vec<String>,
    rescinded: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
}

/// Everything measured during a run by one process.
pub struct Stats {
    pub c: Counters,
    inner: Mutex<Inner>,
}

const MAX_SAMPLES: usize = 20;

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            c: Counters::default(),
            inner: Mutex::new(Inner {
                hist: Lat::ALL.iter().map(|_| new_histogram()).collect(),
                interval: new_histogram(),
                errors: BTreeMap::new(),
                samples: Vec::new(),
                rescinded: BTreeMap::new(),
                statuses: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("stats lock")
    }

    /// Records the time from `sent_nanos` (a stamp from [`now_nanos`]) to now.
    pub fn record_since(&self, lat: Lat, sent_nanos: u64) {
        self.record_between(lat, sent_nanos, now_nanos());
    }

    /// Records the time from `from` to `to` (both [`now_nanos`] stamps).
    pub fn record_between(&self, lat: Lat, from: u64, to: u64) {
        let micros = (to.saturating_sub(from) / 1_000).max(1);
        let mut inner = self.lock();
        inner.hist[lat as usize].saturating_record(micros);
        if lat.is_message() {
            inner.interval.saturating_record(micros);
        }
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

    /// Counts a `message.status` seen by an agent.
    pub fn status(&self, status: &str) {
        *self.lock().statuses.entry(status.to_string()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.lock().errors.values().sum()
    }

    /// One latency's histogram so far (a copy): two of them, taken at both
    /// ends of a window, give the window's by subtraction ([`hist_between`]).
    pub fn latency(&self, lat: Lat) -> Histogram<u64> {
        self.lock().hist[lat as usize].clone()
    }

    /// The message-latency histogram since the last call, and a fresh one.
    pub fn take_interval(&self) -> Histogram<u64> {
        std::mem::replace(&mut self.lock().interval, new_histogram())
    }

    /// Everything measured so far, in mergeable form.
    pub fn snapshot(&self, phase_seconds: f64, phase_start_nanos: u64) -> Snapshot {
        let counters = self.c.to_map();
        let inner = self.lock();
        let last = counters["last_completion_nanos"];
        let last_open = counters["last_socket_open_nanos"];
        Snapshot {
            counters,
            errors: inner.errors.clone(),
            samples: inner.samples.clone(),
            rescinded: inner.rescinded.clone(),
            statuses: inner.statuses.clone(),
            hists: Lat::ALL
                .iter()
                .map(|l| (l.name().to_string(), inner.hist[*l as usize].clone()))
                .collect(),
            phase_seconds,
            active_seconds: if last > phase_start_nanos {
                (last - phase_start_nanos) as f64 / 1e9
            } else {
                0.0
            },
            connect_seconds: if last_open > phase_start_nanos {
                (last_open - phase_start_nanos) as f64 / 1e9
            } else {
                0.0
            },
            extra: Map::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Snapshots

/// The measurements of one process (or several, merged).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub counters: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub samples: Vec<String>,
    pub rescinded: BTreeMap<String, u64>,
    pub statuses: BTreeMap<String, u64>,
    pub hists: BTreeMap<String, Histogram<u64>>,
    pub phase_seconds: f64,
    /// Phase start → the latest conversation completion.
    pub active_seconds: f64,
    /// Phase start → the latest customer socket opened.
    pub connect_seconds: f64,
    /// Numbers added by the process outside the counters (agents created,
    /// open tasks at the end, sink figures): summed on merge.
    pub extra: Map<String, Value>,
}

fn map_json(m: &BTreeMap<String, u64>) -> Value {
    json!(m)
}

fn map_from(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect()
}

impl Snapshot {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub fn extra_u64(&self, name: &str) -> u64 {
        self.extra.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Counts an error found after the run (cleanup, sink mismatch).
    pub fn add_error(&mut self, f: &Failure) {
        *self.errors.entry(f.code.clone()).or_default() += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(f.to_string());
        }
    }

    /// The lossless form a worker process writes for its parent.
    pub fn to_raw(&self) -> Value {
        json!({
            "counters": map_json(&self.counters),
            "errors": map_json(&self.errors),
            "samples": self.samples,
            "rescinded": map_json(&self.rescinded),
            "statuses": map_json(&self.statuses),
            "hists": self.hists.iter().map(|(k, h)| (k.clone(), hist_to_raw(h))).collect::<Map<_, _>>(),
            "phase_seconds": self.phase_seconds,
            "active_seconds": self.active_seconds,
            "connect_seconds": self.connect_seconds,
            "extra": self.extra,
        })
    }

    pub fn from_raw(v: &Value) -> Snapshot {
        let mut hists = BTreeMap::new();
        for lat in Lat::ALL {
            let mut h = new_histogram();
            hist_add_raw(&mut h, &v["hists"][lat.name()]);
            hists.insert(lat.name().to_string(), h);
        }
        Snapshot {
            counters: map_from(&v["counters"]),
            errors: map_from(&v["errors"]),
            samples: v["samples"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            rescinded: map_from(&v["rescinded"]),
            statuses: map_from(&v["statuses"]),
            hists,
            phase_seconds: v["phase_seconds"].as_f64().unwrap_or(0.0),
            active_seconds: v["active_seconds"].as_f64().unwrap_or(0.0),
            connect_seconds: v["connect_seconds"].as_f64().unwrap_or(0.0),
            extra: v["extra"].as_object().cloned().unwrap_or_default(),
        }
    }

    /// Adds another process's measurements: counts add, histograms merge,
    /// durations take the longest (the processes ran at the same time).
    pub fn merge(&mut self, other: &Snapshot) {
        let add = |a: &mut BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            for (k, v) in b {
                *a.entry(k.clone()).or_default() += v;
            }
        };
        // A time, not a count: the latest wins.
        let times = ["last_completion_nanos", "last_socket_open_nanos"]
            .map(|k| (k, self.counter(k).max(other.counter(k))));
        add(&mut self.counters, &other.counters);
        for (k, t) in times {
            self.counters.insert(k.into(), t);
        }
        add(&mut self.errors, &other.errors);
        add(&mut self.rescinded, &other.rescinded);
        add(&mut self.statuses, &other.statuses);
        for s in &other.samples {
            if self.samples.len() < MAX_SAMPLES {
                self.samples.push(s.clone());
            }
        }
        for (k, h) in &other.hists {
            match self.hists.get_mut(k) {
                Some(mine) => {
                    let _ = mine.add(h);
                }
                None => {
                    self.hists.insert(k.clone(), h.clone());
                }
            }
        }
        self.phase_seconds = self.phase_seconds.max(other.phase_seconds);
        self.active_seconds = self.active_seconds.max(other.active_seconds);
        self.connect_seconds = self.connect_seconds.max(other.connect_seconds);
        for (k, v) in &other.extra {
            let sum = match (self.extra.get(k).and_then(Value::as_u64), v.as_u64()) {
                (Some(a), Some(b)) => json!(a + b),
                (None, _) => v.clone(),
                (Some(_), None) => continue,
            };
            self.extra.insert(k.clone(), sum);
        }
    }

    /// Customer→agent and agent→customer together.
    pub fn message_hist(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for lat in [Lat::CustomerToAgent, Lat::AgentToCustomer] {
            if let Some(x) = self.hists.get(lat.name()) {
                let _ = h.add(x);
            }
        }
        h
    }
}

// ---------------------------------------------------------------------------
// Summary

/// Which messages the counts and the latency histograms hold, for the JSON
/// report (the README says the same).
pub const MESSAGES_NOTE: &str = "customer_to_agent and agent_to_customer count every message \
an agent or a customer received (throughput counts them all); the latency histograms of the \
same names (and message, both together) count the timed ones only: every agent reply, and \
every customer message an agent received live except the closing bye. A conversation's \
first message reaches the agent with task.assigned, after the offer and the accept, so it \
is timed as first_message_to_assigned instead; the bye is not stamped.";

/// Builds the measurement part of the JSON report from a (merged) snapshot.
/// `requested` is the number of conversations the run asked for.
pub fn measurements_json(s: &Snapshot, requested: u64) -> Value {
    let g = |k: &str| s.counter(k);
    let mut latency = Map::new();
    latency.insert("message".into(), hist_json(&s.message_hist()));
    for lat in Lat::ALL {
        if let Some(h) = s.hists.get(lat.name()) {
            latency.insert(lat.name().to_string(), hist_json(h));
        }
    }
    let c2a = g("customer_to_agent");
    let a2c = g("agent_to_customer");
    let timed_c2a = g("customer_to_agent_timed");
    let with_assignment = g("customer_to_agent_with_assignment");
    let closing = g("customer_to_agent_closing");
    let hist_count = |lat: Lat| s.hists.get(lat.name()).map_or(0, Histogram::len);
    let timed_a2c = hist_count(Lat::AgentToCustomer);
    let secs = s.phase_seconds.max(1e-9);
    let started = g("conversations_started");
    let completed = g("conversations_completed");
    let active = s.active_seconds.max(1e-9);
    // Until the last completion: a straggler waiting out --step-timeout does not
    // dilute the rate the rest achieved.
    let rate = |n: u64| {
        if completed > 0 {
            n as f64 / active
        } else {
            n as f64 / secs
        }
    };
    json!({
        "phase_seconds": s.phase_seconds,
        "conversations": {
            "requested": requested,
            "started": started,
            "completed": completed,
            "ended_seen_by_customer": g("conversations_ended"),
            "failed": g("conversations_failed"),
            "aborted_at_deadline": g("aborted_at_deadline"),
            "arrivals_dropped": g("arrivals_dropped"),
            "not_started": requested.saturating_sub(started),
            "per_second": rate(completed),
            "seconds_to_last_completion": if completed > 0 { active } else { 0.0 },
        },
        "agents": {
            "created": s.extra_u64("agents_created"),
            "ready": g("agents_ready"),
            "offers": g("offers"),
            "foreign_offers_rejected": g("foreign_offers_rejected"),
            "accepts_sent": g("accepts_sent"),
            "assigned": g("assigned"),
            "ends_sent": g("ends_sent"),
            "completes_sent": g("completes_sent"),
            "tasks_completed": g("tasks_completed"),
            "open_tasks_at_end": s.extra_u64("open_tasks_at_end"),
            "rescinded": s.rescinded,
            "message_statuses": s.statuses,
        },
        "messages": {
            "customer_to_agent": c2a,
            "agent_to_customer": a2c,
            "total": c2a + a2c,
            // What the latency histograms count (customer_to_agent,
            // agent_to_customer, message), and what they leave out.
            "timed": {
                "customer_to_agent": timed_c2a,
                "agent_to_customer": timed_a2c,
                "total": timed_c2a + timed_a2c,
            },
            "untimed": {
                "customer_to_agent_with_assignment": with_assignment,
                "customer_to_agent_closing": closing,
                "customer_to_agent_other": c2a.saturating_sub(timed_c2a + with_assignment + closing),
                "agent_to_customer": a2c.saturating_sub(timed_a2c),
            },
            "note": MESSAGES_NOTE,
            "per_second": rate(c2a + a2c),
            "per_second_whole_phase": (c2a + a2c) as f64 / secs,
            "webhooks_sent": g("webhooks_sent"),
            "whatsapp_webhooks_sent": g("whatsapp_webhooks_sent"),
        },
        "connections": {
            "customer_sockets_opened": g("customer_sockets_opened"),
            "seconds_to_last_open": s.connect_seconds,
            // The ramp: meaningful when every customer connects at the start
            // (closed loop, or a --hold longer than the ramp).
            "per_second": if s.connect_seconds > 0.0 {
                g("customer_sockets_opened") as f64 / s.connect_seconds
            } else {
                0.0
            },
        },
        "latency_ms": latency,
        "errors": s.errors,
        "errors_total": s.error_total(),
        "error_samples": s.samples,
    })
}

/// The run's verdict before SLOs: every conversation completed, `tasks` tasks
/// completed (every conversation's, or none with `--queued`), every agent
/// ready, no error.
pub fn complete(s: &Snapshot, requested: u64, tasks: u64, agents: u64) -> bool {
    s.counter("agents_ready") == agents
        && s.counter("conversations_completed") == requested
        && s.counter("tasks_completed") == tasks
        && s.extra_u64("open_tasks_at_end") == 0
        && s.error_total() == 0
}

/// Renders one target's JSON report for a human.
pub fn human(r: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let conv = &r["conversations"];
    let agents = &r["agents"];
    let msgs = &r["messages"];
    let _ = writeln!(
        s,
        "== {} ({} loop) run {} seed {} ==",
        r["target"].as_str().unwrap_or("?"),
        r["mode"].as_str().unwrap_or("?"),
        r["run_id"].as_str().unwrap_or(""),
        r["seed"],
    );
    let _ = writeln!(
        s,
        "verdict: {}   wall {:.2}s, load phase {:.2}s",
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
        "conversations: {} completed of {} ({} started, {} failed, {} aborted at deadline, {} dropped arrivals, {} not started), {:.1}/s",
        n(&conv["completed"]),
        n(&conv["requested"]),
        n(&conv["started"]),
        n(&conv["failed"]),
        n(&conv["aborted_at_deadline"]),
        n(&conv["arrivals_dropped"]),
        n(&conv["not_started"]),
        f(&conv["per_second"]),
    );
    let _ = writeln!(
        s,
        "agents: {} created, {} ready; offers {} ({} foreign rejected), assigned {}, tasks completed {}, open at end {}",
        n(&agents["created"]),
        n(&agents["ready"]),
        n(&agents["offers"]),
        n(&agents["foreign_offers_rejected"]),
        n(&agents["assigned"]),
        n(&agents["tasks_completed"]),
        n(&agents["open_tasks_at_end"]),
    );
    for (label, key) in [
        ("rescinded offers", "rescinded"),
        ("message statuses", "message_statuses"),
    ] {
        if let Some(m) = agents[key].as_object().filter(|m| !m.is_empty()) {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "{label}: {}", parts.join(", "));
        }
    }
    let _ = writeln!(
        s,
        "messages: {} customer->agent + {} agent->customer = {}, {:.1} msg/s end to end{}",
        n(&msgs["customer_to_agent"]),
        n(&msgs["agent_to_customer"]),
        n(&msgs["total"]),
        f(&msgs["per_second"]),
        {
            let hooks: Vec<String> = [
                ("SMS", "webhooks_sent"),
                ("WhatsApp", "whatsapp_webhooks_sent"),
            ]
            .iter()
            .filter(|(_, k)| n(&msgs[*k]) > 0)
            .map(|(label, k)| format!("{} {label} webhooks", n(&msgs[*k])))
            .collect();
            if hooks.is_empty() {
                String::new()
            } else {
                format!(" ({})", hooks.join(", "))
            }
        },
    );
    let timed = &msgs["timed"];
    let untimed = &msgs["untimed"];
    if timed.is_object() {
        let mut left_out = Vec::new();
        for (key, what) in [
            (
                "customer_to_agent_with_assignment",
                "first messages (they reach the agent with task.assigned: see first_message_to_assigned)",
            ),
            ("customer_to_agent_closing", "closing \"bye\""),
            ("customer_to_agent_other", "other customer->agent"),
            ("agent_to_customer", "agent->customer"),
        ] {
            if n(&untimed[key]) > 0 {
                left_out.push(format!("{} {what}", n(&untimed[key])));
            }
        }
        let _ = writeln!(
            s,
            "  timed in the latency histograms: {} customer->agent + {} agent->customer = {}{}",
            n(&timed["customer_to_agent"]),
            n(&timed["agent_to_customer"]),
            n(&timed["total"]),
            if left_out.is_empty() {
                String::new()
            } else {
                format!("; not timed: {}", left_out.join(", "))
            },
        );
    }
    let conns = &r["connections"];
    if n(&conns["customer_sockets_opened"]) > 0 {
        let _ = writeln!(
            s,
            "customer sockets: {} opened, the last {:.2}s into the load phase ({:.0}/s)",
            n(&conns["customer_sockets_opened"]),
            f(&conns["seconds_to_last_open"]),
            f(&conns["per_second"]),
        );
    }
    for (label, key) in [
        ("provider sink", "sms"),
        ("provider sink, WhatsApp (Graph API)", "whatsapp"),
    ] {
        if let Some(sink) = r[key]["sink"].as_object() {
            let parts: Vec<String> = sink.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(s, "{label}: {}", parts.join(", "));
        }
    }
    let _ = writeln!(
        s,
        "latency (ms)                   count      p50      p90      p99    p99.9      max"
    );
    let lat = &r["latency_ms"];
    for name in std::iter::once("message").chain(Lat::ALL.iter().map(|l| l.name())) {
        let h = &lat[name];
        if h.is_null() {
            continue;
        }
        if n(&h["count"]) == 0 {
            if !matches!(
                name,
                "sms_send_to_delivered"
                    | "whatsapp_send_to_delivered"
                    | "webchat_session"
                    | "webchat_connect"
            ) {
                let _ = writeln!(s, "  {name:<27} {:>6}        -", 0);
            }
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<27} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            n(&h["count"]),
            f(&h["p50"]),
            f(&h["p90"]),
            f(&h["p99"]),
            f(&h["p99_9"]),
            f(&h["max"]),
        );
    }
    // The broker's own routing latency (task arrival → first offer, since it
    // started) and its event webhook endpoints, from its /v1/stats.
    let routing = &r["server_stats"]["routing_latency_ms"];
    if n(&routing["count"]) > 0 {
        let _ = writeln!(
            s,
            "broker routing latency (ms, since start): p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2} over {} tasks",
            f(&routing["p50"]),
            f(&routing["p90"]),
            f(&routing["p99"]),
            f(&routing["max"]),
            n(&routing["count"]),
        );
    }
    for hook in r["server_stats"]["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            s,
            "broker webhook {}: pending {}, delivered {}, failed {}, dropped {}, failed attempts {}, last error {}",
            hook["url"].as_str().unwrap_or("?"),
            n(&hook["pending"]),
            n(&hook["delivered"]),
            n(&hook["failed"]),
            n(&hook["dropped"]),
            n(&hook["failed_attempts"]),
            hook["last_error"],
        );
    }
    if let Some(sink) = r["webhook_sink"].as_object() {
        let parts: Vec<String> = sink.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "webhook sink: {}", parts.join(", "));
    }
    // The broker's process, or the Socket.IO peer's node.
    let (who, b) = if r["broker"].is_object() {
        ("broker", &r["broker"])
    } else {
        ("Socket.IO peer", &r["peer_process"])
    };
    if b["samples"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            s,
            "{who} pid {}: RSS {:.1} MiB at start, {:.1} max, {:.1} at end; CPU {:.0}% mean, {:.0}% max{}",
            b["pid"],
            f(&b["rss_kib"]["start"]) / 1024.0,
            f(&b["rss_kib"]["max"]) / 1024.0,
            f(&b["rss_kib"]["end"]) / 1024.0,
            f(&b["cpu_percent"]["mean"]),
            f(&b["cpu_percent"]["max"]),
            match b["rss_growth_kib_per_min_after_warmup"].as_f64() {
                Some(g) => format!("; RSS growth after warm-up {g:.0} KiB/min"),
                None => String::new(),
            }
        );
        if let Some(per) = b["rss_kib_per_open_conversation"].as_f64() {
            let _ = writeln!(
                s,
                "  RSS per open conversation: {:.2} KiB (peak {} open)",
                per, b["peak_open_conversations"]
            );
        }
    }
    if b["thread_shares"].is_object() {
        s.push_str(&crate::cpuwin::human(who, &b["thread_shares"]));
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
    if let Some(slo) = r["slo"].as_array().filter(|a| !a.is_empty()) {
        let parts: Vec<String> = slo
            .iter()
            .map(|t| {
                format!(
                    "{} {} (target {}, got {})",
                    t["name"].as_str().unwrap_or("?"),
                    if t["pass"].as_bool() == Some(true) {
                        "ok"
                    } else {
                        "MISSED"
                    },
                    t["target"],
                    match t["actual"].as_f64() {
                        Some(x) => format!("{x:.3}"),
                        None => "nothing".into(),
                    }
                )
            })
            .collect();
        let _ = writeln!(s, "SLO: {}", parts.join("; "));
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
    fn send_stamps_forgive_timer_granularity_only() {
        let now = now_nanos();
        let s = send_stamp(now - 500_000);
        assert!(s >= now, "0.5 ms late: stamped when sent");
        assert_eq!(
            send_stamp(now - 50_000_000),
            now - 50_000_000,
            "50 ms late: counts"
        );
    }

    #[test]
    fn report_counts_errors_by_code() {
        let stats = Stats::new();
        stats.error(&Failure::new("capacity_exceeded", "x"));
        stats.error(&Failure::new("capacity_exceeded", "y"));
        stats.record_since(Lat::CustomerToAgent, now_nanos());
        let snap = stats.snapshot(1.0, 0);
        let r = measurements_json(&snap, 1);
        assert_eq!(r["errors"]["capacity_exceeded"], 2);
        assert_eq!(r["errors_total"], 2);
        assert_eq!(r["latency_ms"]["customer_to_agent"]["count"], 1);
        assert_eq!(r["latency_ms"]["message"]["count"], 1);
        assert!(human(&r).contains("capacity_exceeded"));
        assert_eq!(stats.take_interval().len(), 1);
        assert_eq!(stats.take_interval().len(), 0);
    }

    #[test]
    fn a_window_holds_what_was_recorded_in_it() {
        let stats = Stats::new();
        stats.record_between(Lat::CustomerToAgent, 0, 90_000_000);
        let a = stats.latency(Lat::CustomerToAgent);
        for ms in [1u64, 2, 3] {
            stats.record_between(Lat::CustomerToAgent, 0, ms * 1_000_000);
        }
        let b = stats.latency(Lat::CustomerToAgent);
        let w = hist_between(&a, &b);
        assert_eq!(w.len(), 3);
        assert_eq!(w.max() / 1000, 3, "the 90 ms before the window is left out");
        assert_eq!(b.len(), 4);
        // Copies the wrong way round give nothing rather than garbage.
        assert!(hist_between(&b, &a).is_empty());
    }

    #[test]
    fn thread_shares_follow_the_broker_line() {
        let stats = Stats::new();
        let mut r = measurements_json(&stats.snapshot(1.0, 0), 0);
        r["broker"] = json!({
            "pid": 42, "samples": 3,
            "rss_kib": {"start": 1024.0, "max": 2048.0, "end": 2048.0},
            "cpu_percent": {"mean": 150.0, "max": 190.0},
            "thread_shares": {
                "window_seconds": 10.0, "cpu_seconds": 15.0, "core_percent": 150.0,
                "unattributed_cpu_seconds": 0.0,
                "threads": [
                    {"tid": 43, "name": "actix-rt|system", "cpu_seconds": 9.9, "share": 0.66,
                     "core_percent": 99.0, "started_in_window": false},
                    {"tid": 44, "name": "actix-rt|system", "cpu_seconds": 5.1, "share": 0.34,
                     "core_percent": 51.0, "started_in_window": false},
                ],
            },
        });
        let text = human(&r);
        let broker = text.find("broker pid 42").expect("broker line");
        let threads = text
            .find("broker threads over 10.0s: 15.00 CPU-s (150% of one core), 2 threads")
            .unwrap_or_else(|| panic!("{text}"));
        assert!(broker < threads, "{text}");
        assert!(
            text.contains("   66.0%   99.0       43  actix-rt|system"),
            "{text}"
        );
    }

    #[test]
    fn whatsapp_counts_next_to_sms() {
        let stats = Stats::new();
        Counters::inc(&stats.c.webhooks_sent);
        for _ in 0..2 {
            Counters::inc(&stats.c.whatsapp_webhooks_sent);
        }
        stats.record_since(Lat::WhatsappSendToDelivered, now_nanos());
        let snap = Snapshot::from_raw(&stats.snapshot(1.0, 0).to_raw());
        let mut r = measurements_json(&snap, 2);
        assert_eq!(r["messages"]["webhooks_sent"], 1);
        assert_eq!(r["messages"]["whatsapp_webhooks_sent"], 2);
        assert_eq!(r["latency_ms"]["whatsapp_send_to_delivered"]["count"], 1);
        assert_eq!(r["latency_ms"]["sms_send_to_delivered"]["count"], 0);
        r["sms"] = json!({"sink": {"requests": 1}});
        r["whatsapp"] = json!({"sink": {"requests": 2}});
        let text = human(&r);
        assert!(
            text.contains("(1 SMS webhooks, 2 WhatsApp webhooks)"),
            "{text}"
        );
        assert!(text.contains("provider sink: requests=1"), "{text}");
        assert!(
            text.contains("provider sink, WhatsApp (Graph API): requests=2"),
            "{text}"
        );
        assert!(text.contains("whatsapp_send_to_delivered"), "{text}");
        assert!(!text.contains("sms_send_to_delivered"), "{text}");
    }

    #[test]
    fn snapshots_merge_through_their_raw_form() {
        let a = Stats::new();
        let b = Stats::new();
        for _ in 0..3 {
            Counters::inc(&a.c.customer_to_agent);
        }
        Counters::inc(&b.c.customer_to_agent);
        a.c.last_completion_nanos
            .store(5_000_000_000, Ordering::Relaxed);
        b.c.last_completion_nanos
            .store(7_000_000_000, Ordering::Relaxed);
        a.error(&Failure::new("io.closed", "x"));
        b.error(&Failure::new("io.closed", "y"));
        b.error(&Failure::new("rate_limited", "z"));
        b.status("delivered");
        // a: 1 ms and 2 ms; b: 100 ms.
        {
            let mut i = a.lock();
            i.hist[Lat::CustomerToAgent as usize].record(1_000).unwrap();
            i.hist[Lat::CustomerToAgent as usize].record(2_000).unwrap();
        }
        b.lock().hist[Lat::AgentToCustomer as usize]
            .record(100_000)
            .unwrap();
        let mut sa = a.snapshot(10.0, 1_000_000_000);
        sa.extra.insert("agents_created".into(), json!(2));
        let mut sb = b.snapshot(12.0, 1_000_000_000);
        sb.extra.insert("agents_created".into(), json!(3));
        // Through JSON text, as between processes.
        let ra = Snapshot::from_raw(&serde_json::from_str(&sa.to_raw().to_string()).unwrap());
        let rb = Snapshot::from_raw(&serde_json::from_str(&sb.to_raw().to_string()).unwrap());
        let mut m = ra;
        m.merge(&rb);
        assert_eq!(m.counter("customer_to_agent"), 4);
        assert_eq!(m.counter("last_completion_nanos"), 7_000_000_000);
        assert_eq!(m.errors["io.closed"], 2);
        assert_eq!(m.errors["rate_limited"], 1);
        assert_eq!(m.statuses["delivered"], 1);
        assert_eq!(m.extra_u64("agents_created"), 5);
        assert_eq!(m.phase_seconds, 12.0);
        assert_eq!(m.active_seconds, 6.0);
        let h = m.message_hist();
        assert_eq!(h.len(), 3);
        assert!(h.max() >= 100_000 && h.max() < 100_100);
        assert_eq!(h.value_at_quantile(0.5) / 100, 20);
        let r = measurements_json(&m, 4);
        assert_eq!(r["messages"]["customer_to_agent"], 4);
        assert_eq!(r["latency_ms"]["message"]["count"], 3);
    }
}

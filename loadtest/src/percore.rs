//! `--per-core`: what a round trip costs each target on one core of its own.
//!
//! Each target — Switchboard (`--workers 1`), and the relays asked for: the
//! bare tokio-tungstenite relay (`--baseline-relay`, here a process of its
//! own), the Node.js `ws` relay (`--ws-peer`) and the Socket.IO one
//! (`--socketio-peer`) — runs pinned to `--target-cpu`, one after another,
//! while the harness runs pinned to the other CPUs. When both share the same
//! cores, the harness's own cost hides the target's and every ratio drifts
//! toward 1; pinned, the target's CPU time is its own.
//!
//! The load is closed loop and never ends by itself: `--conversations`
//! customers at once, each sending its next message when the agent's reply
//! arrives (agents reply at once). After `--warmup`, the window of
//! `--measure` counts round trips (an agent reply received by its customer)
//! and reads the target's CPU time (utime + stime of the whole process from
//! `/proc/<pid>/stat`, every thread included) and the harness's at both
//! ends; then the customers say `bye` and the run drains. Figures: round
//! trips/s, the target's CPU µs per round trip, how busy the target's core
//! and the harness's were (which of the two bound the rate), and the ratios
//! Switchboard / each relay.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cpuwin::{self, per_second, ratio, Reading, Spent};
use crate::peer::{self, Peer};
use crate::progress::{Collector, Tick};
use crate::report::{self, Counters, Lat};
use crate::run::{Kind, Local};
use crate::{affinity, echo, procstat, scenario, socketio, Args};

/// How long after the window a target's run may take to drain (the
/// customers' last round trip, `bye`, end, complete) before its deadline.
const DRAIN: Duration = Duration::from_secs(60);

/// A core at least this busy over the window bound the rate.
const BUSY_PERCENT: f64 = 90.0;

/// Other processes using more than this (% of one core) of the targets' CPU,
/// or of each harness CPU, disturbed the window.
const DISTURBED_PERCENT: f64 = 10.0;

/// Goals the restructured broker is measured against.
pub const GOAL_CPU_VS_BASELINE: f64 = 2.0;
pub const GOAL_THROUGHPUT_VS_WS: f64 = 1.2;

/// The CPUs this process could use before it pinned itself, and those it
/// kept for the harness (set by [`pin_early`]).
struct Early {
    allowed: Vec<usize>,
    harness: Vec<usize>,
}

static EARLY: OnceLock<Early> = OnceLock::new();

/// Before the runtime starts its threads: when this invocation runs the
/// per-core mode, pins the (still single-threaded) process to every CPU it
/// may use but the targets', so that the runtime sizes itself to them and
/// every thread it starts stays off the targets' core. Anything it cannot
/// work out is left to [`run`], which says what is wrong.
pub fn pin_early(argv: &[String]) {
    let Some(target_cpu) = per_core_target_cpu(argv) else {
        return;
    };
    let Ok(allowed) = affinity::allowed_cpus() else {
        return;
    };
    let harness = harness_cpus(&allowed, target_cpu);
    if !allowed.contains(&target_cpu) || harness.is_empty() {
        return;
    }
    if affinity::pin_this_thread(&harness).is_ok() {
        let _ = EARLY.set(Early { allowed, harness });
    }
}

/// `--target-cpu` of the first run of this invocation that is per-core.
pub fn per_core_target_cpu(argv: &[String]) -> Option<usize> {
    let first = Args::try_parse_from(argv).ok()?;
    if first.worker.is_some() || first.serve_relay || first.print_env {
        return None;
    }
    let specs = match &first.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path).ok()?;
            scenario::parse(&text, "scenario", &crate::scenario_flags()).ok()?
        }
        None => vec![scenario::RunSpec {
            name: "run".into(),
            args: Vec::new(),
        }],
    };
    specs.into_iter().find_map(|spec| {
        let mut full = vec![argv[0].clone()];
        full.extend(spec.args);
        full.extend(argv[1..].iter().cloned());
        let args = Args::try_parse_from(&full).ok()?;
        (args.per_core || args.durability).then_some(args.target_cpu)
    })
}

/// The CPUs left to the harness.
pub fn harness_cpus(allowed: &[usize], target_cpu: usize) -> Vec<usize> {
    allowed
        .iter()
        .copied()
        .filter(|&c| c != target_cpu)
        .collect()
}

/// Which side bound the rate over the window: the target when its core was
/// busy; else the harness when its cores were (`harness_cpus` of them);
/// else neither (the loop waited on latency).
pub fn bound_by(
    target_percent: Option<f64>,
    harness_percent: Option<f64>,
    harness_cpus: usize,
) -> &'static str {
    match (target_percent, harness_percent) {
        (Some(t), _) if t >= BUSY_PERCENT => "target",
        (_, Some(h)) if h >= BUSY_PERCENT * harness_cpus.max(1) as f64 => "harness",
        (None, _) => "unknown",
        _ => "neither",
    }
}

/// What a target's name is in the summary.
pub fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Switchboard => "Switchboard",
        Kind::Baseline => "Rust relay (tokio-tungstenite)",
        Kind::Ws => "Node ws relay",
        Kind::SocketIo => "Node Socket.IO relay",
        Kind::Echo => "Lean echo relay (2 frames/rt)",
    }
}

/// One target's window, as read.
#[derive(Debug, Clone)]
pub struct Window {
    pub round_trips: u64,
    pub errors: u64,
    /// Conversations running, and customer sockets open, when it began.
    pub running_at_start: u64,
    pub target: Option<Spent>,
    pub harness: Option<Spent>,
    /// The kernel's softirq threads (`ksoftirqd/N`) on the target's CPU and
    /// on the harness's: network work deferred out of the processes there.
    pub target_softirq: Option<Spent>,
    pub harness_softirq: Option<Spent>,
    pub wall_seconds: f64,
    /// Other processes' work on the target's CPU and on the harness's (% of
    /// one core), from `/proc/stat`.
    pub others_on_target: Option<f64>,
    pub others_on_harness: Option<f64>,
}

impl Window {
    pub fn round_trips_per_second(&self) -> Option<f64> {
        per_second(self.round_trips, self.wall_seconds)
    }

    pub fn target_micros_per_round_trip(&self) -> Option<f64> {
        self.target?.micros_per(self.round_trips)
    }

    /// How busy the target's core was with the target and the softirq
    /// thread serving it (% of one core).
    fn target_core_busy(&self) -> Option<f64> {
        busy_with_softirq(self.target, self.target_softirq)
    }

    fn harness_core_busy(&self) -> Option<f64> {
        busy_with_softirq(self.harness, self.harness_softirq)
    }

    /// Whether other work on the machine took a noticeable part of the
    /// target's CPU or of the harness's (`harness_cpus` of them).
    pub fn disturbed(&self, harness_cpus: usize) -> bool {
        self.others_on_target.is_some_and(|p| p > DISTURBED_PERCENT)
            || self
                .others_on_harness
                .is_some_and(|p| p > DISTURBED_PERCENT * harness_cpus.max(1) as f64)
    }

    /// The window's figures as JSON.
    pub fn to_json(&self, harness_cpus: usize) -> Value {
        let t_pct = self.target.and_then(|s| s.core_percent());
        let h_pct = self.harness.and_then(|s| s.core_percent());
        let softirq_us = self
            .target_softirq
            .and_then(|s| s.micros_per(self.round_trips));
        let system_us = self
            .target
            .and_then(|s| s.system_micros_per(self.round_trips));
        json!({
            "seconds": self.wall_seconds,
            "round_trips": self.round_trips,
            "round_trips_per_second": self.round_trips_per_second(),
            "conversations_running_at_start": self.running_at_start,
            "errors": self.errors,
            "target_cpu_seconds": self.target.map(|s| s.cpu_seconds),
            "target_cpu_us_per_round_trip": self.target_micros_per_round_trip(),
            "target_system_us_per_round_trip": system_us,
            "target_user_us_per_round_trip": self
                .target_micros_per_round_trip()
                .zip(system_us)
                .map(|(all, system)| all - system),
            "target_core_percent": t_pct,
            "harness_cpu_seconds": self.harness.map(|s| s.cpu_seconds),
            "harness_cpu_us_per_round_trip": self.harness.and_then(|s| s.micros_per(self.round_trips)),
            "harness_core_percent": h_pct,
            "target_softirq_thread_cpu_seconds": self.target_softirq.map(|s| s.cpu_seconds),
            "target_softirq_thread_us_per_round_trip": softirq_us,
            "target_with_softirq_thread_us_per_round_trip": self
                .target_micros_per_round_trip()
                .map(|t| t + softirq_us.unwrap_or(0.0)),
            "harness_softirq_thread_cpu_seconds": self.harness_softirq.map(|s| s.cpu_seconds),
            "bound_by": bound_by(self.target_core_busy(), self.harness_core_busy(), harness_cpus),
            "others_on_target_cpu_percent": self.others_on_target,
            "others_on_harness_cpus_percent": self.others_on_harness,
            "disturbed": self.disturbed(harness_cpus),
        })
    }
}

/// Switchboard / each relay measured: CPU per round trip and round trips/s.
pub fn ratios(targets: &Value) -> Value {
    let sb = &targets[Kind::Switchboard.name()]["window"];
    let mut out = serde_json::Map::new();
    for kind in [Kind::Echo, Kind::Baseline, Kind::Ws, Kind::SocketIo] {
        let w = &targets[kind.name()]["window"];
        if !w.is_object() || !sb.is_object() {
            continue;
        }
        out.insert(
            kind.name().to_string(),
            json!({
                "cpu_per_round_trip": ratio(sb["target_cpu_us_per_round_trip"].as_f64(), w["target_cpu_us_per_round_trip"].as_f64()),
                "system_cpu_per_round_trip": ratio(sb["target_system_us_per_round_trip"].as_f64(), w["target_system_us_per_round_trip"].as_f64()),
                "user_cpu_per_round_trip": ratio(sb["target_user_us_per_round_trip"].as_f64(), w["target_user_us_per_round_trip"].as_f64()),
                "cpu_with_softirq_thread_per_round_trip": ratio(
                    sb["target_with_softirq_thread_us_per_round_trip"].as_f64(),
                    w["target_with_softirq_thread_us_per_round_trip"].as_f64(),
                ),
                "round_trips_per_second": ratio(sb["round_trips_per_second"].as_f64(), w["round_trips_per_second"].as_f64()),
                "rounds_cpu_per_round_trip": per_round(
                    &targets[Kind::Switchboard.name()]["rounds_cpu_us_per_round_trip"],
                    &targets[kind.name()]["rounds_cpu_us_per_round_trip"],
                ),
            }),
        );
    }
    Value::Object(out)
}

/// Switchboard / the other target, round by round (the two measured in the
/// same round, minutes apart at most).
fn per_round(sb: &Value, other: &Value) -> Value {
    let (Some(sb), Some(other)) = (sb.as_array(), other.as_array()) else {
        return json!([]);
    };
    sb.iter()
        .zip(other)
        .map(|(a, b)| json!(ratio(a.as_f64(), b.as_f64())))
        .collect()
}

/// The goals, evaluated on the ratios (`met` null: a target missing).
pub fn goals(ratios: &Value) -> Value {
    let goal = |name: &str, value: Option<f64>, limit: f64, at_most: bool| {
        json!({
            "goal": name,
            "value": value,
            "limit": limit,
            "met": value.map(|v| if at_most { v <= limit } else { v >= limit }),
        })
    };
    json!([
        goal(
            "Switchboard CPU per round trip <= 2x the lean echo relay's (2 frames per round trip)",
            ratios["echo"]["cpu_per_round_trip"].as_f64(),
            GOAL_CPU_VS_BASELINE,
            true,
        ),
        goal(
            "Switchboard CPU per round trip <= 2x the Rust relay's (Switchboard's own frames)",
            ratios["baseline"]["cpu_per_round_trip"].as_f64(),
            GOAL_CPU_VS_BASELINE,
            true,
        ),
        goal(
            "Switchboard round trips/s >= 1.2x the Node ws relay's",
            ratios["ws"]["round_trips_per_second"].as_f64(),
            GOAL_THROUGHPUT_VS_WS,
            false,
        ),
    ])
}

/// The summary for a human.
pub fn human(report: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let c = &report["config"];
    let _ = writeln!(
        s,
        "== per-core: targets pinned to CPU {}, the harness to CPU {}; {} conversations, {} agents x {}; {}s warm-up, {}s measured ==",
        c["target_cpu"],
        c["harness_cpus"].as_str().unwrap_or("?"),
        c["conversations"],
        c["agents"],
        c["capacity"],
        c["warmup_seconds"],
        c["measure_seconds"],
    );
    let _ = writeln!(
        s,
        "{:<32} {:>13} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "target",
        "round trips/s",
        "CPU us/rt",
        "kernel",
        "+softirq",
        "target %",
        "harness %",
        "others %",
        "bound by",
        "errors"
    );
    let num = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    };
    for kind in [
        Kind::Switchboard,
        Kind::Echo,
        Kind::Baseline,
        Kind::Ws,
        Kind::SocketIo,
    ] {
        let t = &report["targets"][kind.name()];
        let w = &t["window"];
        if !w.is_object() {
            continue;
        }
        let _ = writeln!(
            s,
            "{:<32} {:>13} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}{}",
            label(kind),
            num(&w["round_trips_per_second"], 0),
            num(&w["target_cpu_us_per_round_trip"], 1),
            num(&w["target_system_us_per_round_trip"], 1),
            num(&w["target_softirq_thread_us_per_round_trip"], 1),
            num(&w["target_core_percent"], 0),
            num(&w["harness_core_percent"], 0),
            num(&w["others_on_target_cpu_percent"], 0),
            w["bound_by"].as_str().unwrap_or("-"),
            t["run"]["errors_total"].as_u64().unwrap_or(0),
            if t["ok"].as_bool() == Some(true) {
                String::new()
            } else {
                format!(
                    "  FAILED: {}",
                    t["problem"].as_str().unwrap_or("see the report")
                )
            },
        );
    }
    for (kind, r) in report["ratios"].as_object().into_iter().flatten() {
        let _ = writeln!(
            s,
            "Switchboard / {}: CPU per round trip {}x (kernel {}x, user {}x; {}x with the softirq threads), round trips/s {}x",
            label(Kind::from_name(kind)),
            num(&r["cpu_per_round_trip"], 2),
            num(&r["system_cpu_per_round_trip"], 2),
            num(&r["user_cpu_per_round_trip"], 2),
            num(&r["cpu_with_softirq_thread_per_round_trip"], 2),
            num(&r["round_trips_per_second"], 2),
        );
        if let Some(each) = r["rounds_cpu_per_round_trip"]
            .as_array()
            .filter(|e| e.len() > 1)
        {
            let each: Vec<String> = each.iter().map(|v| format!("{}x", num(v, 2))).collect();
            let _ = writeln!(
                s,
                "  CPU per round trip, round by round: {} (the line above: median of each target's rounds)",
                each.join(", ")
            );
        }
    }
    for g in report["goals"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "goal: {}: {}",
            g["goal"].as_str().unwrap_or("?"),
            match (g["value"].as_f64(), g["met"].as_bool()) {
                (Some(v), Some(true)) => format!("{v:.2}x, met"),
                (Some(v), _) => format!("{v:.2}x, NOT MET"),
                _ => "not measured (a target is missing)".into(),
            }
        );
    }
    for (kind, why) in report["skipped"].as_object().into_iter().flatten() {
        let _ = writeln!(
            s,
            "SKIPPED {}: {}",
            label(Kind::from_name(kind)),
            why.as_str().unwrap_or("?")
        );
    }
    let disturbed: Vec<&str> = [
        Kind::Switchboard,
        Kind::Echo,
        Kind::Baseline,
        Kind::Ws,
        Kind::SocketIo,
    ]
    .into_iter()
    .filter(|k| report["targets"][k.name()]["window"]["disturbed"] == true)
    .map(label)
    .collect();
    if !disturbed.is_empty() {
        let _ = writeln!(
            s,
            "WARNING: other processes took more than {DISTURBED_PERCENT:.0}% of a core on the target's or the harness's CPUs during the window of {}: those figures are disturbed; measure on a quiet machine",
            disturbed.join(", ")
        );
    }
    let limited: Vec<&str> = [
        Kind::Switchboard,
        Kind::Echo,
        Kind::Baseline,
        Kind::Ws,
        Kind::SocketIo,
    ]
    .into_iter()
    .filter(|k| report["targets"][k.name()]["window"]["bound_by"] != "target")
    .filter(|k| report["targets"][k.name()]["window"].is_object())
    .map(label)
    .collect();
    if !limited.is_empty() {
        let _ = writeln!(
            s,
            "note: the core of {} was not saturated: its round trips/s is what the harness drove, not its ceiling, and its CPU per round trip is somewhat higher than at saturation (less work per wake-up)",
            limited.join(", ")
        );
    }
    s
}

/// A target process, started here or found.
enum Proc {
    Peer(Peer),
    Broker(peer::Broker),
    /// Started by the user (`--broker-pid`, or listening on `--url`).
    Attached,
}

impl Proc {
    async fn stop(self) {
        match self {
            Proc::Peer(p) => p.stop().await,
            Proc::Broker(b) => b.stop().await,
            Proc::Attached => {}
        }
    }
}

/// A target ready to load: its URL, pid, admin token and how it runs.
struct Started {
    url: String,
    pid: u32,
    token: String,
    how: String,
    proc: Proc,
}

/// The CPUs this process may use and those left to the harness (this
/// process pinned to them), or why the mode cannot run: the targets' CPU
/// not allowed, or no other CPU for the harness.
pub fn split_cpus(args: &Args) -> Result<(Vec<usize>, Vec<usize>), String> {
    let (allowed, harness) = match EARLY.get() {
        Some(e) => (e.allowed.clone(), e.harness.clone()),
        None => {
            let allowed = affinity::allowed_cpus()?;
            let harness = harness_cpus(&allowed, args.target_cpu);
            if !harness.is_empty() && allowed.contains(&args.target_cpu) {
                affinity::pin_process(std::process::id(), &harness)?;
            }
            (allowed, harness)
        }
    };
    if !allowed.contains(&args.target_cpu) {
        return Err(format!(
            "--per-core: --target-cpu {} is not among the CPUs this process may use ({})",
            args.target_cpu,
            affinity::format_cpu_list(&allowed)
        ));
    }
    if harness.is_empty() {
        return Err(format!(
            "--per-core needs at least 2 CPUs, one for the targets and one for the harness; \
             this process may use only CPU {}",
            affinity::format_cpu_list(&allowed)
        ));
    }
    Ok((allowed, harness))
}

/// Runs the per-core comparison; returns the report.
pub async fn run(name: &str, args: &Args) -> Result<Value, String> {
    let (allowed, harness) = split_cpus(args)?;
    let target_cpus = [args.target_cpu];
    let harness_list = affinity::format_cpu_list(&harness);
    let run_id = args.run_id.clone().unwrap_or_else(crate::new_run_id);
    let seed = args.seed.unwrap_or(1);
    println!(
        "per-core run {run_id}: targets pinned to CPU {}, this harness to CPU {harness_list}; \
         {} conversations at once ({} agents x {}), {}s warm-up, {}s measured per target",
        args.target_cpu,
        args.concurrency(),
        args.agents,
        args.capacity,
        args.warmup.as_secs_f64(),
        args.measure.as_secs_f64(),
    );

    let mut kinds = vec![Kind::Switchboard];
    kinds.extend(
        [
            (Kind::Echo, args.echo_relay),
            (Kind::Baseline, args.baseline_relay),
            (Kind::Ws, args.ws_peer),
            (Kind::SocketIo, args.socketio_peer),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| k),
    );
    let rounds = args.rounds.max(1) as usize;
    // Each target's measurements, round by round.
    let mut runs: std::collections::BTreeMap<&'static str, Vec<Value>> = Default::default();
    let mut skipped = serde_json::Map::new();
    for round in 0..rounds {
        if rounds > 1 {
            println!("-- round {} of {rounds}", round + 1);
        }
        // Rotated each round, so no target always runs first (on a machine
        // whose speed drifts, that target would take the drift alone).
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        for kind in order {
            if skipped.contains_key(kind.name()) {
                continue;
            }
            let measured = measure_target(
                args,
                kind,
                &allowed,
                (&target_cpus, &harness),
                &run_id,
                round,
                seed,
            )
            .await;
            match measured {
                Ok(t) => runs.entry(kind.name()).or_default().push(t),
                Err(e) if kind == Kind::Switchboard => return Err(e),
                Err(e) => {
                    eprintln!(
                        "loadtest: WARNING: per-core: skipping the {}: {e}",
                        label(kind)
                    );
                    skipped.insert(kind.name().into(), json!(e));
                }
            }
        }
    }
    let targets = Value::Object(
        runs.into_iter()
            .map(|(kind, runs)| (kind.to_string(), median_run(runs)))
            .collect(),
    );
    let ratios = ratios(&targets);
    let goals = goals(&ratios);
    let ok = targets
        .as_object()
        .into_iter()
        .flatten()
        .all(|(_, t)| t["ok"].as_bool() == Some(true));
    let report = json!({
        "name": name,
        "mode": "per_core",
        "run_id": run_id,
        "seed": seed,
        "ok": ok,
        "config": {
            "conversations": args.concurrency(),
            "agents": args.agents,
            "capacity": args.capacity,
            "warmup_seconds": args.warmup.as_secs_f64(),
            "measure_seconds": args.measure.as_secs_f64(),
            "target_cpu": args.target_cpu,
            "harness_cpus": harness_list,
            "cpus_allowed": affinity::format_cpu_list(&allowed),
            "ramp_per_second": args.ramp,
            "rounds": rounds,
        },
        "targets": targets,
        "skipped": skipped,
        "ratios": ratios,
        "goals": goals,
        "note": "round trip: a customer message, the agent's reply received by the customer; \
                 CPU: utime + stime of the target's whole process over the measured window; \
                 bound_by: target when its core was at least 90% busy, harness when the \
                 harness's were, neither when the loop waited on latency",
    });
    print!("{}", human(&report));
    Ok(report)
}

/// One target measured once (again, up to `--retry-disturbed` times, when
/// other processes disturbed its window). Err: it could not be started.
async fn measure_target(
    args: &Args,
    kind: Kind,
    allowed: &[usize],
    (target_cpus, harness): (&[usize], &[usize]),
    run_id: &str,
    round: usize,
    seed: u64,
) -> Result<Value, String> {
    let mut attempt = 0;
    loop {
        wait_quiet(allowed, args.quiet_wait).await;
        // Each round and attempt names its agents and customers afresh.
        let attempt_id = match (round, attempt) {
            (0, 0) => run_id.to_owned(),
            (0, a) => format!("{run_id}a{a}"),
            (r, 0) => format!("{run_id}r{r}"),
            (r, a) => format!("{run_id}r{r}a{a}"),
        };
        let started = start(args, kind, target_cpus, &attempt_id, &[]).await?;
        println!("[{}] {}", kind.name(), started.how);
        let measured = measure(
            args,
            kind,
            &started,
            &attempt_id,
            seed,
            (target_cpus, harness),
        )
        .await;
        started.proc.stop().await;
        let mut t = measured?;
        t["how"] = json!(started.how);
        t["pid"] = json!(started.pid);
        t["attempts"] = json!(attempt + 1);
        let w = &t["window"];
        println!(
            "[{}] {} round trips/s, {} CPU us per round trip, target core {}%, harness {}%, others {}% / {}%",
            kind.name(),
            fmt(&w["round_trips_per_second"], 0),
            fmt(&w["target_cpu_us_per_round_trip"], 1),
            fmt(&w["target_core_percent"], 0),
            fmt(&w["harness_core_percent"], 0),
            fmt(&w["others_on_target_cpu_percent"], 0),
            fmt(&w["others_on_harness_cpus_percent"], 0),
        );
        if w["disturbed"] == true && attempt < args.retry_disturbed {
            attempt += 1;
            eprintln!(
                "loadtest: per-core: other processes disturbed the {}'s window; again \
                 (attempt {} of {})",
                label(kind),
                attempt + 1,
                args.retry_disturbed + 1
            );
            continue;
        }
        return Ok(t);
    }
}

/// A target's measurement of median CPU per round trip over the rounds
/// (the lower middle one of an even count), with every round's figure beside
/// it (`rounds_cpu_us_per_round_trip`, in round order).
pub fn median_run(runs: Vec<Value>) -> Value {
    let cpu = |t: &Value| t["window"]["target_cpu_us_per_round_trip"].as_f64();
    let each: Vec<Value> = runs.iter().map(|t| json!(cpu(t))).collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (cpu(&runs[*a]), cpu(&runs[*b]));
        a.unwrap_or(f64::INFINITY)
            .total_cmp(&b.unwrap_or(f64::INFINITY))
    });
    let pick = order.get(runs.len().saturating_sub(1) / 2).copied();
    let mut chosen = pick
        .and_then(|i| runs.into_iter().nth(i))
        .unwrap_or(Value::Null);
    if chosen.is_object() {
        chosen["rounds_cpu_us_per_round_trip"] = Value::Array(each);
    }
    chosen
}

fn fmt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// Starts Switchboard from `--broker-bin` with `broker_args` added (its
/// durability settings), pinned to `--target-cpu`; measures it as [`run`]
/// does; stops it. Its part of the report, with `how` and `pid`.
pub async fn measure_broker(
    args: &Args,
    broker_args: &[String],
    run_id: &str,
    seed: u64,
    harness: &[usize],
) -> Result<Value, String> {
    let target_cpus = [args.target_cpu];
    let started = start(args, Kind::Switchboard, &target_cpus, run_id, broker_args).await?;
    let measured = measure(
        args,
        Kind::Switchboard,
        &started,
        run_id,
        seed,
        (&target_cpus, harness),
    )
    .await;
    started.proc.stop().await;
    let mut t = measured?;
    t["how"] = json!(started.how);
    t["pid"] = json!(started.pid);
    Ok(t)
}

/// Starts (or finds) the target `kind`, pinned to `cpus`; a broker started
/// here gets `broker_args` after `--workers 1`.
async fn start(
    args: &Args,
    kind: Kind,
    cpus: &[usize],
    run_id: &str,
    broker_args: &[String],
) -> Result<Started, String> {
    let cpu_list = affinity::format_cpu_list(cpus);
    let relay = |p: Peer, what: &str| Started {
        url: format!("http://{}", p.addr),
        pid: p.pid,
        token: String::new(),
        how: format!(
            "{what} pid {} on {}, pinned to CPU {cpu_list}",
            p.pid, p.addr
        ),
        proc: Proc::Peer(p),
    };
    match kind {
        Kind::Echo => Ok(relay(
            peer::start_echo(Some(cpus)).await?,
            "the echo relay's own process",
        )),
        Kind::Baseline => Ok(relay(
            peer::start_relay(args.capacity, Some(cpus)).await?,
            "the baseline relay's own process",
        )),
        Kind::Ws => Ok(relay(
            peer::start_ws(args.ws_peer_dir.as_deref(), args.capacity, Some(cpus)).await?,
            "node (ws relay)",
        )),
        Kind::SocketIo => Ok(relay(
            socketio::start(args.socketio_peer_dir.as_deref(), args.capacity, Some(cpus)).await?,
            "node (Socket.IO relay)",
        )),
        Kind::Switchboard => match &args.broker_bin {
            Some(bin) => {
                let log = broker_log(run_id);
                let mut extra = vec!["--workers", "1"];
                extra.extend(broker_args.iter().map(String::as_str));
                let b = peer::start_broker(bin, &extra, cpus, &log).await?;
                Ok(Started {
                    url: b.url.clone(),
                    pid: b.pid,
                    token: b.token.clone(),
                    how: format!(
                        "switchboard pid {} on {} ({}), pinned to CPU {cpu_list}; its log: {}",
                        b.pid,
                        b.url,
                        extra.join(" "),
                        log.display()
                    ),
                    proc: Proc::Broker(b),
                })
            }
            None => attach(args, cpus).await,
        },
    }
}

/// A broker the user started: found by `--broker-pid` or `--url`'s port,
/// pinned here if it is not yet.
async fn attach(args: &Args, cpus: &[usize]) -> Result<Started, String> {
    if args.admin_token.is_empty() {
        return Err(
            "--per-core against a running broker needs --admin-token or SWITCHBOARD_ADMIN_TOKEN \
             (or give --broker-bin to start one)"
                .into(),
        );
    }
    let target = args.target(&args.url)?;
    let pid = args
        .broker_pid
        .or_else(|| procstat::pid_listening_on(target.addr.port()))
        .ok_or_else(|| {
            format!(
                "--per-core needs the broker's pid to read its CPU time: give --broker-pid, or \
                 --broker-bin to start it (no process of this user listens on {})",
                target.base
            )
        })?;
    let want = affinity::format_cpu_list(cpus);
    let had = affinity::process_cpus(pid)
        .map(|c| affinity::format_cpu_list(&c))
        .ok_or_else(|| format!("cannot read pid {pid}'s threads in /proc"))?;
    let how = if had == want {
        format!(
            "switchboard pid {pid} at {}, already pinned to CPU {want}",
            target.base
        )
    } else {
        let n = affinity::pin_process(pid, cpus)?;
        format!(
            "switchboard pid {pid} at {}: was on CPU {had}, its {n} threads now pinned to CPU {want}",
            target.base
        )
    };
    println!(
        "per-core: a broker started by hand must run with --workers 1 (e.g. `taskset -c {want} \
         switchboard --workers 1`); this one's threads are not checked for it"
    );
    Ok(Started {
        url: args.url.clone(),
        pid,
        token: args.admin_token.clone(),
        how,
        proc: Proc::Attached,
    })
}

/// A reading of the run, both processes, the softirq threads and the CPUs
/// at one end of the window.
struct Mark {
    round_trips: u64,
    errors: u64,
    running: u64,
    target: Reading,
    harness: Reading,
    target_softirq: Option<f64>,
    harness_softirq: Option<f64>,
    cpus: Vec<procstat::CpuTime>,
}

/// The `ksoftirqd/N` threads of the targets' CPUs and of the harness's.
struct SoftirqThreads {
    target: Vec<u32>,
    harness: Vec<u32>,
}

impl SoftirqThreads {
    fn find(target_cpus: &[usize], harness_cpus: &[usize]) -> SoftirqThreads {
        let names = |cpus: &[usize]| -> Vec<String> {
            cpus.iter().map(|c| format!("ksoftirqd/{c}")).collect()
        };
        SoftirqThreads {
            target: procstat::kernel_threads(&names(target_cpus)),
            harness: procstat::kernel_threads(&names(harness_cpus)),
        }
    }
}

/// Their CPU seconds together (None: none found or one not readable).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| procstat::cpu_seconds(p)).sum()
}

/// The load's own counters at one end of the window.
struct Load {
    round_trips: u64,
    errors: u64,
    running: u64,
}

impl Load {
    fn of(ctx: &crate::run::Ctx) -> Load {
        let c = &ctx.stats.c;
        Load {
            round_trips: Counters::get(&c.agent_to_customer),
            errors: ctx.stats.error_count(),
            running: Counters::get(&c.in_flight),
        }
    }

    fn of_probe(p: &echo::Probe) -> Load {
        use std::sync::atomic::Ordering::Relaxed;
        Load {
            round_trips: p.round_trips.load(Relaxed),
            errors: p.errors.load(Relaxed),
            running: p.running.load(Relaxed),
        }
    }
}

fn mark(load: Load, pid: u32, threads: bool, softirq: &SoftirqThreads) -> Mark {
    Mark {
        round_trips: load.round_trips,
        errors: load.errors,
        running: load.running,
        target: Reading::take(pid, threads),
        harness: Reading::take(std::process::id(), false),
        target_softirq: cpu_of(&softirq.target),
        harness_softirq: cpu_of(&softirq.harness),
        cpus: procstat::cpu_times(),
    }
}

/// The window between two marks; the targets ran on `target_cpus`, the
/// harness on `harness_cpus`.
fn window(a: &Mark, b: &Mark, target_cpus: &[usize], harness_cpus: &[usize]) -> Window {
    let target = Spent::between(&a.target, &b.target);
    let harness = Spent::between(&a.harness, &b.harness);
    let wall = b
        .target
        .at
        .saturating_duration_since(a.target.at)
        .as_secs_f64();
    let softirq = |x: Option<f64>, y: Option<f64>| Some(Spent::of(wall, x?, y?));
    let target_softirq = softirq(a.target_softirq, b.target_softirq);
    let harness_softirq = softirq(a.harness_softirq, b.harness_softirq);
    // The softirq threads serve this run's sockets: not other work.
    let others = |cpus: &[usize], own: Option<Spent>, kernel: Option<Spent>| {
        let own = own?.cpu_seconds + kernel.map_or(0.0, |k| k.cpu_seconds);
        cpuwin::others_percent(&a.cpus, &b.cpus, cpus, own, wall)
    };
    Window {
        round_trips: b.round_trips.saturating_sub(a.round_trips),
        errors: b.errors.saturating_sub(a.errors),
        running_at_start: a.running,
        target,
        harness,
        target_softirq,
        harness_softirq,
        wall_seconds: wall,
        others_on_target: others(target_cpus, target, target_softirq),
        others_on_harness: others(harness_cpus, harness, harness_softirq),
    }
}

/// Waits until other work leaves every CPU in `cpus` (nothing of this run
/// is busy now) below [`DISTURBED_PERCENT`] of a core over 2 s, at most
/// `limit`; warns when it gives up, or when `limit` is zero and the machine
/// is busy.
pub async fn wait_quiet(cpus: &[usize], limit: Duration) {
    let until = Instant::now() + limit;
    let mut waited = false;
    loop {
        let a = procstat::cpu_times();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let b = procstat::cpu_times();
        let busy = busy_cpus(&a, &b, cpus, 2.0);
        if busy.is_empty() {
            if waited {
                println!("per-core: the machine is quiet again");
            }
            return;
        }
        if Instant::now() >= until {
            eprintln!(
                "loadtest: WARNING: per-core: other processes are busy on this machine ({}){}; \
                 the figures will be disturbed: run it on a quiet machine",
                busy.join(", "),
                if limit.is_zero() {
                    String::new()
                } else {
                    format!(" after waiting {}s", limit.as_secs())
                }
            );
            return;
        }
        if !waited {
            println!(
                "per-core: waiting (up to {}s) for other processes to leave the CPUs ({})",
                limit.as_secs(),
                busy.join(", ")
            );
            waited = true;
        }
    }
}

/// The CPUs of `cpus` that other work kept busy over `seconds` between two
/// `/proc/stat` readings, as `CPU n x%`.
fn busy_cpus(
    a: &[procstat::CpuTime],
    b: &[procstat::CpuTime],
    cpus: &[usize],
    seconds: f64,
) -> Vec<String> {
    cpus.iter()
        .filter_map(|&c| Some((c, cpuwin::others_percent(a, b, &[c], 0.0, seconds)?)))
        .filter(|(_, p)| *p > DISTURBED_PERCENT)
        .map(|(c, p)| format!("CPU {c} {p:.0}%"))
        .collect()
}

/// Loads one target: warm-up, the window, then the drain; returns its part
/// of the report.
async fn measure(
    args: &Args,
    kind: Kind,
    started: &Started,
    run_id: &str,
    seed: u64,
    cpus: (&[usize], &[usize]),
) -> Result<Value, String> {
    let (target_cpus, harness_cpus) = cpus;
    if kind == Kind::Echo {
        return measure_echo(args, started, cpus).await;
    }
    let run_id = crate::run_id_for(run_id, kind);
    let mut setup = args.setup(kind, &started.url, &run_id, seed, None)?;
    setup.admin_token = started.token.clone();
    // No conversation ends by itself: the customers stop when told.
    setup.plan.messages = u32::MAX;
    setup.duration = args.warmup + args.measure + DRAIN;
    let slice = args.slice(0, 1, kind);
    let concurrency = slice.web_concurrency as u64;
    let requested = args.requested(kind);
    let local = Local::setup(setup, slice).await?;
    let ctx = local.ctx.clone();
    let source_ctx = ctx.clone();
    let source: crate::progress::Source = Arc::new(move || Tick {
        counters: source_ctx.stats.c.to_map(),
        errors: source_ctx.stats.error_count(),
        hist: source_ctx.stats.take_interval(),
    });
    let collector = Collector::start(
        kind.name().to_string(),
        source,
        Some(started.pid),
        args.progress,
        requested,
    );
    let mut local = local;
    let load = tokio::spawn(async move {
        local.load().await;
        local
    });
    let softirq = SoftirqThreads::find(target_cpus, harness_cpus);
    let latencies = |ctx: &crate::run::Ctx| {
        [Lat::CustomerToAgent, Lat::AgentToCustomer].map(|l| ctx.stats.latency(l))
    };
    tokio::time::sleep(args.warmup).await;
    let a = mark(Load::of(&ctx), started.pid, args.thread_shares, &softirq);
    let lat_a = latencies(&ctx);
    tokio::time::sleep(args.measure).await;
    let b = mark(Load::of(&ctx), started.pid, args.thread_shares, &softirq);
    let lat_b = latencies(&ctx);
    let ended_early = load.is_finished();
    ctx.wind_down();
    let limit = Instant::now() + DRAIN;
    let local = tokio::time::timeout_at(limit, load)
        .await
        .map_err(|_| {
            format!(
                "{}: the load did not drain in {}s",
                kind.name(),
                DRAIN.as_secs()
            )
        })?
        .map_err(|e| format!("{}: the load task failed: {e}", kind.name()))?;
    let _ = collector.stop().await;
    let snap = local.finish().await;

    let w = window(&a, &b, target_cpus, harness_cpus);
    let mut run = report::measurements_json(&snap, requested);
    run["complete"] = json!(report::complete(
        &snap,
        requested,
        requested,
        args.agents as u64
    ));
    let problem = window_problem(ended_early, &w, concurrency, started.pid).or_else(|| {
        (run["complete"] != true)
            .then(|| "not every conversation completed cleanly (see the errors)".to_string())
    });
    let mut out = json!({
        "target": kind.name(),
        "label": label(kind),
        "ok": problem.is_none(),
        "problem": problem,
        "window": w.to_json(harness_cpus.len()),
        // The message latencies of the window alone (the run's, under
        // `run`, include the ramp and the drain).
        "window_latency_ms": {
            "customer_to_agent": report::hist_json(&report::hist_between(&lat_a[0], &lat_b[0])),
            "agent_to_customer": report::hist_json(&report::hist_between(&lat_a[1], &lat_b[1])),
        },
        "run": run,
    });
    if args.thread_shares {
        out["thread_shares"] = cpuwin::thread_shares(&a.target, &b.target).to_json();
        print!(
            "{}",
            cpuwin::human(&format!("[{}] target", kind.name()), &out["thread_shares"])
        );
    }
    Ok(out)
}

/// A process's CPU over the window and its CPUs' softirq thread's, as % of
/// one core (None: the process's was not read).
fn busy_with_softirq(own: Option<Spent>, softirq: Option<Spent>) -> Option<f64> {
    Some(own?.core_percent()? + softirq.and_then(|s| s.core_percent()).unwrap_or(0.0))
}

/// What makes a target's window unusable, if anything: the load ended
/// early, not every conversation was running, no round trip, or the
/// target's CPU time unreadable.
fn window_problem(ended_early: bool, w: &Window, concurrency: u64, pid: u32) -> Option<String> {
    if ended_early {
        Some("the load ended before the window did (see the errors)".to_string())
    } else if w.running_at_start < concurrency {
        Some(format!(
            "{} of {concurrency} conversations were running when the window began: lengthen --warmup or raise --ramp",
            w.running_at_start
        ))
    } else if w.round_trips == 0 {
        Some("no round trip in the window".into())
    } else if w.target.is_none() {
        Some(format!("pid {pid}'s CPU time could not be read"))
    } else {
        None
    }
}

/// Loads the lean echo relay with its own probe ([`echo::drive`]): the same
/// conversations, agents, warm-up and window as the other targets.
async fn measure_echo(
    args: &Args,
    started: &Started,
    (target_cpus, harness_cpus): (&[usize], &[usize]),
) -> Result<Value, String> {
    let concurrency = args.concurrency() as u64;
    let (probe, done) = echo::drive(&started.url, args.concurrency(), args.agents, args.ramp)?;
    let softirq = SoftirqThreads::find(target_cpus, harness_cpus);
    tokio::time::sleep(args.warmup).await;
    let a = mark(
        Load::of_probe(&probe),
        started.pid,
        args.thread_shares,
        &softirq,
    );
    tokio::time::sleep(args.measure).await;
    let b = mark(
        Load::of_probe(&probe),
        started.pid,
        args.thread_shares,
        &softirq,
    );
    let ended_early = done.is_finished();
    probe.stop();
    tokio::time::timeout(DRAIN, done)
        .await
        .map_err(|_| format!("echo: the probe did not drain in {}s", DRAIN.as_secs()))?
        .map_err(|e| format!("echo: the probe failed: {e}"))?;
    let w = window(&a, &b, target_cpus, harness_cpus);
    let errors = probe.errors.load(std::sync::atomic::Ordering::Relaxed);
    let problem = window_problem(ended_early, &w, concurrency, started.pid)
        .or_else(|| (errors > 0).then(|| format!("{errors} probe errors (see the log)")));
    let mut out = json!({
        "target": Kind::Echo.name(),
        "label": label(Kind::Echo),
        "ok": problem.is_none(),
        "problem": problem,
        "window": w.to_json(harness_cpus.len()),
        "run": {"errors_total": errors},
    });
    if args.thread_shares {
        out["thread_shares"] = cpuwin::thread_shares(&a.target, &b.target).to_json();
    }
    Ok(out)
}

/// Where a broker started here writes its output.
fn broker_log(run_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadtest-{run_id}-switchboard.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn window(round_trips: u64, target_cpu: f64, harness_cpu: f64) -> Window {
        Window {
            round_trips,
            errors: 0,
            running_at_start: 1000,
            // Half of it in the kernel.
            target: Some(Spent {
                system_seconds: Some(target_cpu / 2.0),
                ..Spent::of(20.0, 0.0, target_cpu)
            }),
            harness: Some(Spent::of(20.0, 0.0, harness_cpu)),
            target_softirq: Some(Spent::of(20.0, 0.0, 0.2)),
            harness_softirq: None,
            wall_seconds: 20.0,
            others_on_target: Some(1.0),
            others_on_harness: Some(2.0),
        }
    }

    #[test]
    fn window_figures() {
        // 380,000 round trips in 20 s on 19.6 CPU-s: 19,000/s, 51.6 µs each.
        let w = window(380_000, 19.6, 12.0);
        assert!(close(w.round_trips_per_second().unwrap(), 19_000.0));
        assert!(close(
            w.target_micros_per_round_trip().unwrap(),
            19.6e6 / 380_000.0
        ));
        let j = w.to_json(1);
        assert!(close(j["target_core_percent"].as_f64().unwrap(), 98.0));
        assert!(close(j["harness_core_percent"].as_f64().unwrap(), 60.0));
        assert_eq!(j["bound_by"], "target");
        assert_eq!(j["disturbed"], false);
        // The softirq thread: 0.2 CPU-s over 380,000 round trips.
        let softirq = j["target_softirq_thread_us_per_round_trip"]
            .as_f64()
            .unwrap();
        assert!(close(softirq, 0.2e6 / 380_000.0));
        assert!(close(
            j["target_with_softirq_thread_us_per_round_trip"]
                .as_f64()
                .unwrap(),
            (19.6e6 + 0.2e6) / 380_000.0
        ));
        assert_eq!(j["harness_softirq_thread_cpu_seconds"], Value::Null);
        // 85 % in the target and 6 % in its softirq thread: the core was full.
        let mut full = window(300_000, 17.0, 10.0);
        full.target_softirq = Some(Spent::of(20.0, 0.0, 1.2));
        assert_eq!(full.to_json(1)["bound_by"], "target");
        full.target_softirq = None;
        assert_eq!(full.to_json(1)["bound_by"], "neither");
        let mut busy = w.clone();
        busy.others_on_target = Some(12.0);
        assert!(busy.disturbed(1));
        busy.others_on_target = Some(3.0);
        busy.others_on_harness = Some(15.0);
        assert!(busy.disturbed(1) && !busy.disturbed(2));
        // Nothing done: no CPU per round trip, no division by zero.
        let idle = window(0, 1.0, 1.0);
        assert_eq!(idle.target_micros_per_round_trip(), None);
        assert_eq!(idle.to_json(1)["target_cpu_us_per_round_trip"], Value::Null);
    }

    #[test]
    fn busy_cpus_are_named() {
        use procstat::CpuTime;
        let c = |cpu, busy| CpuTime {
            cpu,
            busy,
            total: 0.0,
        };
        let a = [c(0, 10.0), c(1, 10.0)];
        let b = [c(0, 10.1), c(1, 11.5)];
        // Over 2 s: CPU 0 5 % busy, CPU 1 75 %.
        assert_eq!(busy_cpus(&a, &b, &[0, 1], 2.0), ["CPU 1 75%"]);
        assert!(busy_cpus(&a, &b, &[0], 2.0).is_empty());
    }

    #[test]
    fn which_side_bound_the_rate() {
        assert_eq!(bound_by(Some(97.0), Some(99.0), 1), "target");
        assert_eq!(bound_by(Some(60.0), Some(95.0), 1), "harness");
        // Three harness CPUs at 95 % of one core each would be 285 %.
        assert_eq!(bound_by(Some(60.0), Some(150.0), 3), "neither");
        assert_eq!(bound_by(Some(60.0), Some(280.0), 3), "harness");
        assert_eq!(bound_by(Some(50.0), Some(50.0), 1), "neither");
        assert_eq!(bound_by(None, Some(50.0), 1), "unknown");
        assert_eq!(harness_cpus(&[0, 1, 2], 1), [0, 2]);
        assert!(harness_cpus(&[0], 0).is_empty());
    }

    fn targets(
        sb: &Window,
        echo: Option<&Window>,
        baseline: Option<&Window>,
        ws: Option<&Window>,
    ) -> Value {
        let mut t = json!({ "switchboard": { "window": sb.to_json(1) } });
        for (name, w) in [("echo", echo), ("baseline", baseline), ("ws", ws)] {
            if let Some(w) = w {
                t[name] = json!({ "window": w.to_json(1) });
            }
        }
        t
    }

    #[test]
    fn ratios_and_goals() {
        // The outside probe's shape: Switchboard 53 µs, the bare 2-frame
        // relay 16 µs; the relay writing Switchboard's frames 30 µs.
        let sb = window(20_000 * 20, 0.053 * 20_000.0 * 20.0, 10.0);
        let echo = window(40_000 * 20, 0.016 * 40_000.0 * 20.0, 19.0);
        let base = window(30_000 * 20, 0.030 * 30_000.0 * 20.0, 19.0);
        let ws = window(17_000 * 20, 0.058 * 17_000.0 * 20.0, 8.0);
        let t = targets(&sb, Some(&echo), Some(&base), Some(&ws));
        let r = ratios(&t);
        assert!(close(
            r["echo"]["cpu_per_round_trip"].as_f64().unwrap(),
            53.0 / 16.0
        ));
        assert!(close(
            r["echo"]["round_trips_per_second"].as_f64().unwrap(),
            0.5
        ));
        assert!(close(
            r["baseline"]["cpu_per_round_trip"].as_f64().unwrap(),
            53.0 / 30.0
        ));
        assert!(close(
            r["ws"]["round_trips_per_second"].as_f64().unwrap(),
            20.0 / 17.0
        ));
        assert!(r.get("socketio").is_none());
        let g = goals(&r);
        assert_eq!(g[0]["met"], false, "3.3x the echo relay is over 2x");
        assert!(close(g[0]["limit"].as_f64().unwrap(), 2.0));
        assert_eq!(g[1]["met"], true, "1.77x the same-frames relay is under 2x");
        assert_eq!(g[2]["met"], false, "1.18x is under 1.2x");
        // Exactly at the limits counts as met.
        let sb2 = window(12_000 * 20, 0.032 * 12_000.0 * 20.0, 5.0);
        let echo2 = window(12_000 * 20, 0.016 * 12_000.0 * 20.0, 5.0);
        let ws2 = window(10_000 * 20, 0.05 * 10_000.0 * 20.0, 5.0);
        let g = goals(&ratios(&targets(
            &sb2,
            Some(&echo2),
            Some(&echo2),
            Some(&ws2),
        )));
        assert_eq!(
            (
                g[0]["met"].clone(),
                g[1]["met"].clone(),
                g[2]["met"].clone()
            ),
            (json!(true), json!(true), json!(true))
        );
        // A skipped target leaves its goal unmeasured.
        let g = goals(&ratios(&targets(&sb, None, Some(&base), None)));
        assert_eq!(g[0]["met"], Value::Null);
        assert_eq!(g[2]["met"], Value::Null);
        assert_eq!(g[2]["value"], Value::Null);
        // A relay with no round trip gives no ratio rather than infinity.
        let dead = window(0, 1.0, 1.0);
        let r = ratios(&targets(&sb, Some(&dead), Some(&dead), None));
        assert_eq!(r["echo"]["cpu_per_round_trip"], Value::Null);
        assert_eq!(r["baseline"]["round_trips_per_second"], Value::Null);
    }

    #[test]
    fn summary_names_figures_goals_and_skips() {
        let sb = window(400_000, 21.2, 10.0);
        let base = window(800_000, 12.8, 19.0);
        let t = targets(&sb, None, Some(&base), None);
        let mut report = json!({
            "config": {"target_cpu": 0, "harness_cpus": "1", "conversations": 1000, "agents": 200,
                       "capacity": 5, "warmup_seconds": 10.0, "measure_seconds": 20.0},
            "targets": t,
            "skipped": {"ws": "the Node.js ws peer needs Node.js and npm on PATH"},
        });
        report["targets"]["switchboard"]["ok"] = json!(true);
        report["targets"]["baseline"]["ok"] = json!(true);
        report["ratios"] = ratios(&report["targets"]);
        report["goals"] = goals(&report["ratios"]);
        let text = human(&report);
        assert!(
            text.contains("targets pinned to CPU 0, the harness to CPU 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "Switchboard                              20000       53.0      26.5       0.5       106         50         1    target       0"
            ),
            "{text}"
        );
        assert!(text.contains("Switchboard / Rust relay (tokio-tungstenite): CPU per round trip 3.31x (kernel 3.31x, user 3.31x; 3.29x with the softirq threads), round trips/s 0.50x"), "{text}");
        assert!(
            text.contains("<= 2x the Rust relay's (Switchboard's own frames): 3.31x, NOT MET"),
            "{text}"
        );
        assert!(text.contains("Node ws relay's: not measured"), "{text}");
        assert!(
            text.contains("the lean echo relay's (2 frames per round trip): not measured"),
            "{text}"
        );
        assert!(!text.contains("WARNING"), "{text}");
        report["targets"]["baseline"]["window"]["disturbed"] = json!(true);
        let text = human(&report);
        assert!(
            text.contains("WARNING: other processes took more than 10% of a core on the target's or the harness's CPUs during the window of Rust relay"),
            "{text}"
        );
        assert!(
            text.contains("SKIPPED Node ws relay: the Node.js ws peer needs Node.js"),
            "{text}"
        );
        // The Rust relay's core was 64 % busy: its rate is the harness's.
        assert!(
            text.contains("the core of Rust relay (tokio-tungstenite) was not saturated"),
            "{text}"
        );
        assert!(text.contains("+softirq"), "{text}");
    }

    #[test]
    fn rounds_give_each_target_its_median_round_and_ratios_round_by_round() {
        let run = |us: f64| json!({"ok": true, "window": {"target_cpu_us_per_round_trip": us}});
        // Rounds in order: 40, 30, 34 µs; the median is the third round.
        let sb = median_run(vec![run(40.0), run(30.0), run(34.0)]);
        assert_eq!(sb["window"]["target_cpu_us_per_round_trip"], json!(34.0));
        assert_eq!(
            sb["rounds_cpu_us_per_round_trip"],
            json!([40.0, 30.0, 34.0]),
            "every round, in round order"
        );
        let echo = median_run(vec![run(20.0), run(15.0), run(16.0)]);
        assert_eq!(echo["window"]["target_cpu_us_per_round_trip"], json!(16.0));
        // Two rounds: the lower one; one round: itself; none: nothing.
        let two = median_run(vec![run(12.0), run(10.0)]);
        assert_eq!(two["window"]["target_cpu_us_per_round_trip"], json!(10.0));
        assert_eq!(
            median_run(vec![run(7.0)])["rounds_cpu_us_per_round_trip"],
            json!([7.0])
        );
        assert_eq!(median_run(Vec::new()), Value::Null);

        let t = json!({"switchboard": sb, "echo": echo});
        let r = ratios(&t);
        assert!(close(
            r["echo"]["cpu_per_round_trip"].as_f64().unwrap(),
            34.0 / 16.0
        ));
        let each: Vec<f64> = r["echo"]["rounds_cpu_per_round_trip"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(each.len(), 3);
        for (got, want) in each.iter().zip([2.0, 2.0, 34.0 / 16.0]) {
            assert!(close(*got, want), "{each:?}");
        }
        let report = json!({
            "config": {"target_cpu": 0, "harness_cpus": "1", "conversations": 1000, "agents": 200,
                       "capacity": 5, "warmup_seconds": 10.0, "measure_seconds": 20.0, "rounds": 3},
            "targets": t,
            "skipped": {},
            "ratios": r,
            "goals": goals(&r),
        });
        let text = human(&report);
        assert!(
            text.contains("CPU per round trip, round by round: 2.00x, 2.00x, 2.12x"),
            "{text}"
        );
    }
}

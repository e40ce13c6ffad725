//! Every 250 ms during the load: what the run did in that time (messages,
//! completions, latency percentiles, connections) and the broker's RSS and CPU,
//! kept as the run's timeline and shown as a live line (`indicatif` on a
//! terminal, plain lines otherwise).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::procstat;

/// What a source reports each sample: its counters so far and the message
/// latencies since the last tick.
pub struct Tick {
    pub counters: BTreeMap<String, u64>,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

pub type Source = Arc<dyn Fn() -> Tick + Send + Sync>;

/// How often the timeline is sampled (and workers report).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// Plain progress lines are printed every this many seconds of the run, and
/// once when it stops.
const PLAIN_EVERY_SECONDS: f64 = 2.0;

/// When a plain progress line is due.
#[derive(Debug)]
struct PlainLines {
    /// Seconds into the run of the next line.
    next: f64,
}

impl PlainLines {
    fn new() -> PlainLines {
        PlainLines {
            next: PLAIN_EVERY_SECONDS,
        }
    }

    /// Whether the sample at `t` seconds gets a line: the first at or after
    /// each multiple of [`PLAIN_EVERY_SECONDS`] (late ticks under load
    /// included), and the last one (`stopping`), so that even a run shorter
    /// than the interval prints one.
    fn due(&mut self, t: f64, stopping: bool) -> bool {
        if t < self.next {
            return stopping;
        }
        while self.next <= t {
            self.next += PLAIN_EVERY_SECONDS;
        }
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Bar,
    Plain,
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "bar" => Ok(Mode::Bar),
            "plain" => Ok(Mode::Plain),
            "off" => Ok(Mode::Off),
            _ => Err(format!("--progress {s:?}: use auto, bar, plain or off")),
        }
    }
}

/// One sample of the run (rates per second).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub t: f64,
    pub msgs_per_s: f64,
    pub convs_per_s: f64,
    pub connections: u64,
    pub in_flight: u64,
    pub completed: u64,
    pub errors: u64,
    /// Message latency percentiles in this sample, ms (None: no message).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub rss_kib: Option<u64>,
    pub cpu_percent: Option<f64>,
}

impl Sample {
    pub fn to_json(&self) -> Value {
        json!({
            "t": (self.t * 1000.0).round() / 1000.0,
            "msgs_per_s": self.msgs_per_s,
            "conversations_per_s": self.convs_per_s,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "completed": self.completed,
            "errors": self.errors,
            "p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999,
            "broker_rss_kib": self.rss_kib,
            "broker_cpu_percent": self.cpu_percent,
        })
    }
}

pub struct Collector {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Vec<Sample>>,
}

fn msgs(c: &BTreeMap<String, u64>) -> u64 {
    c.get("customer_to_agent").copied().unwrap_or(0)
        + c.get("agent_to_customer").copied().unwrap_or(0)
}

fn get(c: &BTreeMap<String, u64>, k: &str) -> u64 {
    c.get(k).copied().unwrap_or(0)
}

fn fmt_rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

impl Collector {
    /// Starts sampling `source` (and the broker `pid`) every [`SAMPLE_INTERVAL`].
    /// `requested` is the conversations the run will start, for the display.
    pub fn start(
        label: String,
        source: Source,
        pid: Option<u32>,
        mode: Mode,
        requested: u64,
    ) -> Collector {
        let (stop, mut stop_rx) = watch::channel(false);
        let mode = match mode {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Bar,
            Mode::Auto => Mode::Plain,
            m => m,
        };
        let handle = tokio::spawn(async move {
            let bar = (mode == Mode::Bar).then(|| {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(Duration::from_millis(200));
                b
            });
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut last = (source)();
            let first = pid.and_then(procstat::read);
            samples.push(Sample {
                rss_kib: first.map(|r| r.rss_kib),
                ..Sample::default()
            });
            let mut last_cpu = first.map(|r| (r.cpu_seconds, Instant::now()));
            let mut interval = tokio::time::interval_at(start + SAMPLE_INTERVAL, SAMPLE_INTERVAL);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last_t = start;
            let mut plain = PlainLines::new();
            loop {
                let stopping = tokio::select! {
                    _ = interval.tick() => false,
                    _ = stop_rx.changed() => true,
                };
                let now = Instant::now();
                let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
                last_t = now;
                let tick = (source)();
                let reading = pid.and_then(procstat::read);
                let cpu_percent = match (reading, last_cpu) {
                    (Some(r), Some((c0, t0))) => {
                        let d = now.duration_since(t0).as_secs_f64().max(1e-3);
                        Some(((r.cpu_seconds - c0) / d * 100.0).max(0.0))
                    }
                    _ => None,
                };
                if let Some(r) = reading {
                    last_cpu = Some((r.cpu_seconds, now));
                }
                let q = |h: &Histogram<u64>, q: f64| {
                    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
                };
                let s = Sample {
                    t: now.duration_since(start).as_secs_f64(),
                    msgs_per_s: msgs(&tick.counters).saturating_sub(msgs(&last.counters)) as f64
                        / dt,
                    convs_per_s: get(&tick.counters, "conversations_completed")
                        .saturating_sub(get(&last.counters, "conversations_completed"))
                        as f64
                        / dt,
                    connections: get(&tick.counters, "connections"),
                    in_flight: get(&tick.counters, "in_flight"),
                    completed: get(&tick.counters, "conversations_completed"),
                    errors: tick.errors,
                    p50: q(&tick.hist, 0.5),
                    p99: q(&tick.hist, 0.99),
                    p999: q(&tick.hist, 0.999),
                    rss_kib: reading.map(|r| r.rss_kib),
                    cpu_percent,
                };
                let line = format!(
                    "[{label}] {:>5.1}s  conns {:>6}  running {:>6}  done {}/{}  {:>7} msg/s  p99 {}  errors {}{}",
                    s.t,
                    s.connections,
                    s.in_flight,
                    s.completed,
                    requested,
                    fmt_rate(s.msgs_per_s),
                    s.p99.map(|p| format!("{p:.2}ms")).unwrap_or_else(|| "-".into()),
                    s.errors,
                    match (s.rss_kib, s.cpu_percent) {
                        (Some(r), Some(c)) => format!("  broker {:.0} MiB {c:.0}% CPU", r as f64 / 1024.0),
                        (Some(r), None) => format!("  broker {:.0} MiB", r as f64 / 1024.0),
                        _ => String::new(),
                    }
                );
                match (&bar, mode) {
                    (Some(b), _) => b.set_message(line),
                    (None, Mode::Plain) if plain.due(s.t, stopping) => eprintln!("{line}"),
                    _ => {}
                }
                samples.push(s);
                last = tick;
                if stopping {
                    break;
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            samples
        });
        Collector { stop, handle }
    }

    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.handle.await.unwrap_or_default()
    }
}

/// The broker's resource figures from a timeline. `warmup` is the share of
/// the run (0..1) after which RSS growth is measured.
pub fn broker_json(pid: Option<u32>, samples: &[Sample], warmup: f64) -> Value {
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s.t, s.rss_kib? as f64)))
        .collect();
    let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_percent).collect();
    if rss.is_empty() {
        return json!({ "pid": pid, "samples": 0 });
    }
    let start = rss[0].1;
    let max = rss.iter().map(|r| r.1).fold(0.0, f64::max);
    let end = rss[rss.len() - 1].1;
    let peak_open = samples.iter().map(|s| s.in_flight).max().unwrap_or(0);
    let total_t = rss[rss.len() - 1].0;
    let after: Vec<(f64, f64)> = rss
        .iter()
        .copied()
        .filter(|(t, _)| *t >= total_t * warmup)
        .collect();
    // Least-squares slope, KiB per minute, over at least 20 s of samples.
    let span = after.last().map(|l| l.0).unwrap_or(0.0) - after.first().map(|f| f.0).unwrap_or(0.0);
    let growth = (span >= 20.0).then(|| slope(&after) * 60.0);
    json!({
        "pid": pid,
        "samples": rss.len(),
        "rss_kib": {"start": start, "max": max, "end": end},
        "cpu_percent": {
            "mean": if cpu.is_empty() { 0.0 } else { cpu.iter().sum::<f64>() / cpu.len() as f64 },
            "max": cpu.iter().copied().fold(0.0, f64::max),
        },
        "peak_open_conversations": peak_open,
        "rss_kib_per_open_conversation": (peak_open >= 1000).then(|| (max - start).max(0.0) / peak_open as f64),
        "rss_growth_kib_per_min_after_warmup": growth,
    })
}

/// Slope of y over x by least squares.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_every_two_seconds_and_at_the_end() {
        let mut p = PlainLines::new();
        // A 5.1 s run sampled every 250 ms: lines at 2 s, 4 s and the end.
        let ticks: Vec<f64> = (1..=20).map(|i| i as f64 * 0.25).collect();
        let mut at: Vec<f64> = ticks.iter().copied().filter(|t| p.due(*t, false)).collect();
        if p.due(5.1, true) {
            at.push(5.1);
        }
        assert_eq!(at, [2.0, 4.0, 5.1]);
        // Late ticks (a loaded machine) still give one line per interval.
        let mut p = PlainLines::new();
        let late: Vec<bool> = [1.9, 2.3, 3.1, 6.7, 6.9, 8.0]
            .iter()
            .map(|t| p.due(*t, false))
            .collect();
        assert_eq!(late, [false, true, false, true, false, true]);
        // A run shorter than the interval prints its last sample.
        let mut p = PlainLines::new();
        assert!(!p.due(0.25, false) && !p.due(0.5, false) && p.due(0.78, true));
    }

    #[test]
    fn slope_and_broker_figures() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        let samples: Vec<Sample> = (0..60)
            .map(|i| Sample {
                t: i as f64,
                rss_kib: Some(if i < 10 { 1000 + i * 100 } else { 2000 }),
                in_flight: if i < 10 { 0 } else { 2000 },
                cpu_percent: Some(50.0),
                ..Sample::default()
            })
            .collect();
        let b = broker_json(Some(1), &samples, 0.2);
        assert_eq!(b["rss_kib"]["start"], 1000.0);
        assert_eq!(b["rss_kib"]["max"], 2000.0);
        assert_eq!(b["rss_growth_kib_per_min_after_warmup"], 0.0);
        assert_eq!(b["rss_kib_per_open_conversation"], 0.5);
        assert_eq!(b["cpu_percent"]["mean"], 50.0);
    }
}

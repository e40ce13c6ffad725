//! CPU over a measured window: a process's CPU seconds (utime + stime from
//! `/proc/<pid>/stat`, every thread included) and its threads' (from
//! `/proc/<pid>/task/*/stat` and `comm`), read at both ends of the window,
//! and what they come to: CPU per unit of work, the share of one core used,
//! and each thread's share of the process's CPU.

use std::time::Instant;

use serde_json::{json, Value};

use crate::procstat::{self, ThreadCpu};

/// One end of a window: when, and the CPU seconds read then.
#[derive(Debug, Clone)]
pub struct Reading {
    pub at: Instant,
    /// The whole process's CPU seconds (None: not readable).
    pub process: Option<f64>,
    /// The part of them in the kernel (stime).
    pub process_system: Option<f64>,
    /// Each live thread's (empty when not asked for).
    pub threads: Vec<ThreadCpu>,
}

impl Reading {
    /// Reads `pid` now; its threads too when `threads`.
    pub fn take(pid: u32, threads: bool) -> Reading {
        let times = procstat::cpu_and_system_seconds(pid);
        Reading {
            at: Instant::now(),
            process: times.map(|t| t.0),
            process_system: times.map(|t| t.1),
            threads: if threads {
                procstat::threads(pid)
            } else {
                Vec::new()
            },
        }
    }
}

/// What a process spent between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// The part of `cpu_seconds` in the kernel, where it was read apart.
    pub system_seconds: Option<f64>,
}

impl Spent {
    /// Between `a` and `b` (None when either could not read the process).
    pub fn between(a: &Reading, b: &Reading) -> Option<Spent> {
        let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
        let mut spent = Spent::of(wall, a.process?, b.process?);
        spent.system_seconds = a
            .process_system
            .zip(b.process_system)
            .map(|(x, y)| (y - x).clamp(0.0, spent.cpu_seconds));
        Some(spent)
    }

    /// From wall seconds and the CPU seconds at both ends. CPU time never
    /// goes back; a smaller second figure (another process under a reused
    /// pid) counts as nothing spent.
    pub fn of(wall_seconds: f64, cpu_start: f64, cpu_end: f64) -> Spent {
        Spent {
            wall_seconds,
            cpu_seconds: (cpu_end - cpu_start).max(0.0),
            system_seconds: None,
        }
    }

    /// CPU microseconds per unit of work done in the window (None: none done).
    pub fn micros_per(&self, units: u64) -> Option<f64> {
        (units > 0).then(|| self.cpu_seconds * 1e6 / units as f64)
    }

    /// Kernel CPU microseconds per unit of work (None: not read apart, or
    /// none done).
    pub fn system_micros_per(&self, units: u64) -> Option<f64> {
        (units > 0).then(|| self.system_seconds.map(|s| s * 1e6 / units as f64))?
    }

    /// CPU used as a percentage of one core (100: one core busy all the window).
    pub fn core_percent(&self) -> Option<f64> {
        (self.wall_seconds > 0.0).then(|| self.cpu_seconds / self.wall_seconds * 100.0)
    }
}

/// Units of work per second over `wall_seconds`.
pub fn per_second(units: u64, wall_seconds: f64) -> Option<f64> {
    (wall_seconds > 0.0).then(|| units as f64 / wall_seconds)
}

/// The other work on `cpus` between two `/proc/stat` readings: their busy
/// time less `own` CPU seconds (what the processes pinned there spent), as a
/// percentage of one core over `wall` seconds. None when a CPU is missing.
pub fn others_percent(
    a: &[procstat::CpuTime],
    b: &[procstat::CpuTime],
    cpus: &[usize],
    own: f64,
    wall: f64,
) -> Option<f64> {
    if wall <= 0.0 || cpus.is_empty() {
        return None;
    }
    let mut busy = 0.0;
    for &c in cpus {
        let x = a.iter().find(|t| t.cpu == c)?;
        let y = b.iter().find(|t| t.cpu == c)?;
        busy += (y.busy - x.busy).max(0.0);
    }
    Some(((busy - own) / wall * 100.0).max(0.0))
}

/// `a / b` when both are known and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// One thread's part of the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadShare {
    pub tid: u32,
    pub name: String,
    pub cpu_seconds: f64,
    /// Of the process's CPU in the window (0..1).
    pub share: f64,
    /// Of one core over the window (100: the thread never rested).
    pub core_percent: f64,
    /// Started during the window.
    pub new: bool,
}

/// Every thread's share of a process's CPU over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadShares {
    pub wall_seconds: f64,
    /// The process's CPU in the window (its own figure when readable at both
    /// ends, else the threads' sum).
    pub cpu_seconds: f64,
    /// Threads by share, largest first (ties by tid).
    pub threads: Vec<ThreadShare>,
    /// CPU no live thread accounts for: threads that exited during the
    /// window, and rounding between the process's and its threads' figures.
    pub unattributed_seconds: f64,
}

/// Each thread's CPU between two readings of one process. A thread in both
/// counts the difference; a thread only at the end started in the window and
/// counts all of its time; a thread only at the start exited, and its time
/// in the window shows only in the process's figure (`unattributed`). A tid
/// whose time went back is a new thread under a reused tid.
pub fn thread_shares(a: &Reading, b: &Reading) -> ThreadShares {
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    shares_of(wall, a.process.zip(b.process), &a.threads, &b.threads)
}

fn shares_of(
    wall: f64,
    process: Option<(f64, f64)>,
    start: &[ThreadCpu],
    end: &[ThreadCpu],
) -> ThreadShares {
    let mut rows: Vec<ThreadShare> = end
        .iter()
        .map(|t| {
            let before = start.iter().find(|s| s.tid == t.tid);
            let (spent, new) = match before {
                Some(s) if t.cpu_seconds >= s.cpu_seconds => (t.cpu_seconds - s.cpu_seconds, false),
                _ => (t.cpu_seconds, true),
            };
            ThreadShare {
                tid: t.tid,
                name: t.name.clone(),
                cpu_seconds: spent,
                share: 0.0,
                core_percent: if wall > 0.0 {
                    spent / wall * 100.0
                } else {
                    0.0
                },
                new,
            }
        })
        .collect();
    let sum: f64 = rows.iter().map(|r| r.cpu_seconds).sum();
    let total = match process {
        Some((p0, p1)) => Spent::of(wall, p0, p1).cpu_seconds,
        None => sum,
    };
    // Shares of the larger of the two, so that they never add up past 1.
    let base = total.max(sum);
    for r in &mut rows {
        r.share = if base > 0.0 {
            r.cpu_seconds / base
        } else {
            0.0
        };
    }
    rows.sort_by(|x, y| {
        y.cpu_seconds
            .total_cmp(&x.cpu_seconds)
            .then(x.tid.cmp(&y.tid))
    });
    ThreadShares {
        wall_seconds: wall,
        cpu_seconds: total,
        threads: rows,
        unattributed_seconds: (total - sum).max(0.0),
    }
}

impl ThreadShares {
    pub fn to_json(&self) -> Value {
        json!({
            "window_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "core_percent": if self.wall_seconds > 0.0 { self.cpu_seconds / self.wall_seconds * 100.0 } else { 0.0 },
            "unattributed_cpu_seconds": self.unattributed_seconds,
            "note": "share: of the process's CPU over the window; core_percent: of one core \
                     (100 = the thread never rested); names as /proc gives them (15 bytes at most, \
                     so threads named alike are told apart by tid, which follows creation order); \
                     unattributed: threads that exited during the window",
            "threads": self.threads.iter().map(|t| json!({
                "tid": t.tid,
                "name": t.name,
                "cpu_seconds": t.cpu_seconds,
                "share": t.share,
                "core_percent": t.core_percent,
                "started_in_window": t.new,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The human lines for a `thread_shares` JSON object (`who`: whose threads).
/// Threads with no CPU in the window are counted, not listed.
pub fn human(who: &str, v: &Value) -> String {
    use std::fmt::Write;
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut s = String::new();
    let threads = v["threads"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(
        s,
        "{who} threads over {:.1}s: {:.2} CPU-s ({:.0}% of one core), {} threads",
        f(&v["window_seconds"]),
        f(&v["cpu_seconds"]),
        f(&v["core_percent"]),
        threads.len(),
    );
    let _ = writeln!(s, "   share  %core      tid  name");
    let mut idle = 0;
    for t in threads {
        if f(&t["cpu_seconds"]) <= 0.0 {
            idle += 1;
            continue;
        }
        let _ = writeln!(
            s,
            "  {:>5.1}%  {:>5.1}  {:>7}  {}{}",
            f(&t["share"]) * 100.0,
            f(&t["core_percent"]),
            t["tid"].as_u64().unwrap_or(0),
            t["name"].as_str().unwrap_or("?"),
            if t["started_in_window"].as_bool() == Some(true) {
                " (started in the window)"
            } else {
                ""
            },
        );
    }
    let unattributed = f(&v["unattributed_cpu_seconds"]);
    let total = f(&v["cpu_seconds"]);
    if idle > 0 || (total > 0.0 && unattributed / total >= 0.005) {
        let _ =
            writeln!(
            s,
            "  ({idle} threads with no CPU in the window; {:.1}% not attributed to a live thread)",
            if total > 0.0 { unattributed / total * 100.0 } else { 0.0 },
        );
    }
    s
}

/// A thread-shares window over a run (`--thread-shares`): begun before the
/// load, ended after it.
pub struct ThreadWindow {
    pid: u32,
    start: Reading,
}

impl ThreadWindow {
    pub fn begin(pid: u32) -> ThreadWindow {
        ThreadWindow {
            pid,
            start: Reading::take(pid, true),
        }
    }

    /// The shares as JSON (null when the process could not be read).
    pub fn end(self) -> Value {
        let end = Reading::take(self.pid, true);
        if end.threads.is_empty() {
            return Value::Null;
        }
        thread_shares(&self.start, &end).to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: u32, name: &str, cpu: f64) -> ThreadCpu {
        ThreadCpu {
            tid,
            name: name.into(),
            cpu_seconds: cpu,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn spent_per_unit_and_per_core() {
        let s = Spent::of(20.0, 100.0, 119.0);
        assert!(close(s.cpu_seconds, 19.0));
        assert!(close(s.core_percent().unwrap(), 95.0));
        // 19 CPU-s over 380,000 round trips: 50 µs each.
        assert!(close(s.micros_per(380_000).unwrap(), 50.0));
        assert_eq!(s.micros_per(0), None);
        assert_eq!(Spent::of(0.0, 1.0, 2.0).core_percent(), None);
        // Time going back is another process: nothing spent.
        assert_eq!(Spent::of(1.0, 5.0, 3.0).cpu_seconds, 0.0);
        assert!(close(per_second(380_000, 20.0).unwrap(), 19_000.0));
        assert_eq!(per_second(5, 0.0), None);
    }

    #[test]
    fn the_kernel_part_is_read_apart() {
        let at = Instant::now();
        let reading = |secs: u64, cpu: f64, system: Option<f64>| Reading {
            at: at + std::time::Duration::from_secs(secs),
            process: Some(cpu),
            process_system: system,
            threads: Vec::new(),
        };
        let s = Spent::between(
            &reading(0, 100.0, Some(40.0)),
            &reading(20, 119.0, Some(52.0)),
        )
        .expect("both read");
        assert!(close(s.cpu_seconds, 19.0));
        assert!(close(s.system_seconds.unwrap(), 12.0));
        // 12 kernel CPU-s over 400,000 round trips: 30 µs each.
        assert!(close(s.system_micros_per(400_000).unwrap(), 30.0));
        assert_eq!(s.system_micros_per(0), None);
        let unknown = Spent::between(&reading(0, 1.0, None), &reading(1, 2.0, Some(1.0)));
        assert_eq!(unknown.unwrap().system_micros_per(10), None);
    }

    #[test]
    fn other_work_on_the_cpus() {
        use procstat::CpuTime;
        let c = |cpu, busy| CpuTime {
            cpu,
            busy,
            total: 0.0,
        };
        let a = [c(0, 100.0), c(1, 50.0), c(2, 10.0)];
        let b = [c(0, 119.5), c(1, 58.0), c(2, 20.0)];
        // CPU 0 was busy 19.5 s of 20; the target spent 18.5: 5 % of a core.
        assert!(close(
            others_percent(&a, &b, &[0], 18.5, 20.0).unwrap(),
            5.0
        ));
        // CPUs 1 and 2 together: 18 s busy, the harness 12 s: 30 %.
        assert!(close(
            others_percent(&a, &b, &[1, 2], 12.0, 20.0).unwrap(),
            30.0
        ));
        // Rounding never makes it negative.
        assert_eq!(others_percent(&a, &b, &[0], 19.6, 20.0), Some(0.0));
        assert_eq!(others_percent(&a, &b, &[7], 0.0, 20.0), None);
        assert_eq!(others_percent(&a, &b, &[0], 0.0, 0.0), None);
    }

    #[test]
    fn ratios() {
        assert!(close(ratio(Some(53.0), Some(16.0)).unwrap(), 3.3125));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(ratio(Some(2.0), None), None);
        assert_eq!(ratio(Some(f64::NAN), Some(2.0)), None);
        assert!(close(ratio(Some(0.0), Some(2.0)).unwrap(), 0.0));
    }

    #[test]
    fn thread_accounting_over_a_window() {
        let start = [
            t(10, "switchboard", 1.0),
            t(11, "actix-rt|system", 5.0),
            t(12, "actix-rt|system", 2.0),
            // Exits during the window.
            t(13, "gone", 4.0),
        ];
        let end = [
            t(10, "switchboard", 1.0),
            t(11, "actix-rt|system", 14.5),
            t(12, "actix-rt|system", 4.0),
            // Started during the window.
            t(20, "new one", 0.5),
        ];
        // The process spent 13 CPU-s in 10 s; the live threads account for 12.
        let s = shares_of(10.0, Some((20.0, 33.0)), &start, &end);
        assert!(close(s.cpu_seconds, 13.0));
        assert!(close(s.unattributed_seconds, 1.0));
        let tids: Vec<u32> = s.threads.iter().map(|r| r.tid).collect();
        assert_eq!(tids, [11, 12, 20, 10], "largest first, idle last");
        let busy = &s.threads[0];
        assert!(close(busy.cpu_seconds, 9.5));
        assert!(close(busy.share, 9.5 / 13.0));
        assert!(close(busy.core_percent, 95.0));
        assert!(!busy.new);
        assert!(s.threads[2].new && close(s.threads[2].cpu_seconds, 0.5));
        assert_eq!(s.threads[3].cpu_seconds, 0.0);
        let sum: f64 = s.threads.iter().map(|r| r.share).sum();
        assert!(close(sum + s.unattributed_seconds / 13.0, 1.0));

        // Without the process's own figure the threads' sum is the total.
        let s = shares_of(10.0, None, &start, &end);
        assert!(close(s.cpu_seconds, 12.0));
        assert_eq!(s.unattributed_seconds, 0.0);
        // Rounding may leave the process's figure below the threads' sum:
        // shares still add up to at most 1.
        let s = shares_of(10.0, Some((0.0, 11.9)), &start, &end);
        let sum: f64 = s.threads.iter().map(|r| r.share).sum();
        assert!(close(sum, 1.0));
        assert_eq!(s.unattributed_seconds, 0.0);
        // A reused tid whose time went back is a new thread.
        let s = shares_of(1.0, None, &[t(30, "old", 9.0)], &[t(30, "reused", 0.25)]);
        assert!(s.threads[0].new && close(s.threads[0].cpu_seconds, 0.25));
        // Ties: by tid.
        let s = shares_of(1.0, None, &[], &[t(5, "b", 1.0), t(4, "a", 1.0)]);
        assert_eq!(s.threads[0].tid, 4);
        // An empty window.
        let s = shares_of(0.0, Some((1.0, 1.0)), &start, &start);
        assert!(s
            .threads
            .iter()
            .all(|r| r.share == 0.0 && r.core_percent == 0.0));
    }

    #[test]
    fn json_and_human_lines() {
        let start = [t(11, "actix-rt|system", 0.0), t(12, "idle", 0.0)];
        let end = [t(11, "actix-rt|system", 9.5), t(12, "idle", 0.0)];
        let v = shares_of(10.0, Some((0.0, 10.0)), &start, &end).to_json();
        assert_eq!(v["threads"][0]["name"], "actix-rt|system");
        assert_eq!(v["threads"][0]["tid"], 11);
        assert!(close(v["threads"][0]["share"].as_f64().unwrap(), 0.95));
        assert!(close(v["core_percent"].as_f64().unwrap(), 100.0));
        let text = human("broker", &v);
        assert!(
            text.contains("broker threads over 10.0s: 10.00 CPU-s (100% of one core), 2 threads"),
            "{text}"
        );
        assert!(
            text.contains("   95.0%   95.0       11  actix-rt|system"),
            "{text}"
        );
        assert!(text.contains("1 threads with no CPU"), "{text}");
        assert!(text.contains("5.0% not attributed"), "{text}");
    }

    #[test]
    fn a_window_over_this_process() {
        let me = std::process::id();
        let w = ThreadWindow::begin(me);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let v = w.end();
        assert!(v["threads"].as_array().is_some_and(|a| !a.is_empty()));
        assert!(v["cpu_seconds"].as_f64().unwrap() >= 0.0);
    }
}

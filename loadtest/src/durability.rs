//! `--durability`: what the journal costs Switchboard, measured against the
//! in-memory mode in the same run.
//!
//! Each mode is a broker started from `--broker-bin` with `--workers 1`:
//! `memory` (no data directory), `batch` (`--data-dir <fresh dir> --fsync
//! batch`: group commit), `always` (`--fsync always`) and, when asked for,
//! `never` (page cache only) and `cluster` (`batch` as the active node of a
//! cluster: every record also stored in NATS before it counts as durable;
//! the harness starts one `nats-server -js`, pinned to its own CPUs like a
//! server on another machine, and gives each run a cluster of its own). They run as the per-core mode runs Switchboard
//! ([`percore::measure_broker`]): the broker pinned to `--target-cpu`, the
//! harness to the other CPUs, a closed loop of `--conversations` customers,
//! `--warmup` then a window of `--measure`.
//!
//! A machine shared with other work drifts over minutes, so one run per mode
//! compares moments more than modes. The modes are interleaved instead:
//! `--rounds` rounds, each running every mode once, the order rotated from
//! round to round (memory, batch, always; then batch, always, memory; ...).
//! Per mode the summary gives the median of the rounds and their spread;
//! the ratio to the in-memory mode is taken round by round (each mode
//! against the in-memory run of its own round) and its median given, with
//! the ratio of the medians beside it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cpuwin::ratio;
use crate::{affinity, percore, Args};

/// `batch` is within target when its round trips/s is at least the in-memory
/// mode's divided by this.
pub const GOAL_BATCH_SLOWDOWN: f64 = 1.5;

/// How a broker keeps (or does not keep) what it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Memory,
    Batch,
    Always,
    Never,
    Cluster,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Memory => "memory",
            Mode::Batch => "batch",
            Mode::Always => "always",
            Mode::Never => "never",
            Mode::Cluster => "cluster",
        }
    }

    fn from_name(name: &str) -> Option<Mode> {
        [
            Mode::Memory,
            Mode::Batch,
            Mode::Always,
            Mode::Never,
            Mode::Cluster,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }

    /// The broker's flags for this mode, with `data_dir` its data directory
    /// and (`cluster`) `nats` the NATS server's URL.
    pub fn broker_args(self, data_dir: &Path, nats: Option<&str>) -> Vec<String> {
        match self {
            Mode::Memory => Vec::new(),
            Mode::Cluster => {
                // A cluster of its own per run (prefix from the data dir's
                // name), so no run sees another's journal.
                let name = data_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let prefix: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .take(64)
                    .collect();
                vec![
                    "--data-dir".into(),
                    data_dir.display().to_string(),
                    "--fsync".into(),
                    "batch".into(),
                    "--cluster".into(),
                    nats.unwrap_or("nats://127.0.0.1:4222").into(),
                    "--node-id".into(),
                    "loadtest".into(),
                    "--cluster-prefix".into(),
                    prefix,
                ]
            }
            _ => vec![
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--fsync".into(),
                self.name().into(),
            ],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Memory => "in memory (no data dir)",
            Mode::Batch => "fsync = \"batch\"",
            Mode::Always => "fsync = \"always\"",
            Mode::Never => "fsync = \"never\"",
            Mode::Cluster => "cluster (batch + NATS)",
        }
    }
}

/// `--durability-modes`: a comma-separated list of distinct modes, `memory`
/// among them.
pub fn parse_modes(list: &str) -> Result<Vec<Mode>, String> {
    let mut modes = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mode = Mode::from_name(name).ok_or_else(|| {
            format!("{name:?} is not a mode (memory, batch, always, never, cluster)")
        })?;
        if modes.contains(&mode) {
            return Err(format!("{name} is given twice"));
        }
        modes.push(mode);
    }
    if !modes.contains(&Mode::Memory) {
        return Err("memory (the reference) must be one of the modes".into());
    }
    if modes.len() < 2 {
        return Err("give memory and at least one durable mode".into());
    }
    Ok(modes)
}

/// The order of round `round` (from 0): the modes rotated by `round`.
pub fn order(modes: &[Mode], round: usize) -> Vec<Mode> {
    let mut o = modes.to_vec();
    if !o.is_empty() {
        let by = round % o.len();
        o.rotate_left(by);
    }
    o
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median, min, max and the spread ((max - min) / median, in %) of `values`.
pub fn spread(values: &[f64]) -> Value {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let Some(mid) = median(&v) else {
        return json!({ "n": 0 });
    };
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({
        "n": v.len(),
        "median": mid,
        "min": min,
        "max": max,
        "spread_percent": (mid != 0.0).then(|| (max - min) / mid * 100.0),
    })
}

/// One run's figures, from the per-core measurement of it.
fn figures(t: &Value) -> Value {
    let w = &t["window"];
    let c2a = &t["window_latency_ms"]["customer_to_agent"];
    json!({
        "round_trips_per_second": w["round_trips_per_second"],
        "customer_to_agent_p50_ms": c2a["p50"],
        "customer_to_agent_p99_ms": c2a["p99"],
        "cpu_us_per_round_trip": w["target_cpu_us_per_round_trip"],
        "target_core_percent": w["target_core_percent"],
        "bound_by": w["bound_by"],
        "disturbed": w["disturbed"],
        "ok": t["ok"],
    })
}

/// Per mode: the spread of each figure over the rounds, and the ratios to
/// the in-memory mode (round by round, and of the medians). `runs` holds
/// every kept run with its `mode`, `round` and `figures`.
pub fn summarize(modes: &[Mode], runs: &[Value]) -> Value {
    let of = |mode: Mode, round: Option<u64>, key: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r["mode"] == mode.name())
            .filter(|r| round.is_none_or(|n| r["round"].as_u64() == Some(n)))
            .filter_map(|r| r["figures"][key].as_f64())
            .collect()
    };
    let rounds: Vec<u64> = {
        let mut r: Vec<u64> = runs.iter().filter_map(|r| r["round"].as_u64()).collect();
        r.sort_unstable();
        r.dedup();
        r
    };
    let keys = [
        "round_trips_per_second",
        "customer_to_agent_p50_ms",
        "customer_to_agent_p99_ms",
        "cpu_us_per_round_trip",
    ];
    let mut out = serde_json::Map::new();
    for &mode in modes {
        let mut m = serde_json::Map::new();
        for key in keys {
            m.insert(key.into(), spread(&of(mode, None, key)));
        }
        if mode != Mode::Memory {
            let mut vs = serde_json::Map::new();
            for key in keys {
                // Round by round: this mode's run against its round's
                // in-memory run.
                let paired: Vec<f64> = rounds
                    .iter()
                    .filter_map(|&n| {
                        let a = of(mode, Some(n), key);
                        let b = of(Mode::Memory, Some(n), key);
                        ratio(a.first().copied(), b.first().copied())
                    })
                    .collect();
                let medians = ratio(
                    median(&of(mode, None, key)),
                    median(&of(Mode::Memory, None, key)),
                );
                vs.insert(
                    key.into(),
                    json!({ "per_round": spread(&paired), "of_medians": medians }),
                );
            }
            m.insert("vs_memory".into(), Value::Object(vs));
        }
        out.insert(mode.name().into(), Value::Object(m));
    }
    Value::Object(out)
}

/// The goal: `batch`'s round trips/s (median of the per-round ratios) at
/// least the in-memory mode's / [`GOAL_BATCH_SLOWDOWN`].
pub fn goal(summary: &Value) -> Value {
    let value =
        summary["batch"]["vs_memory"]["round_trips_per_second"]["per_round"]["median"].as_f64();
    let limit = 1.0 / GOAL_BATCH_SLOWDOWN;
    json!({
        "goal": format!(
            "fsync = \"batch\" round trips/s within {GOAL_BATCH_SLOWDOWN}x of in memory (ratio >= {limit:.3})"
        ),
        "value": value,
        "limit": limit,
        "met": value.map(|v| v >= limit),
    })
}

/// The summary for a human: one line per mode.
pub fn human(report: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let c = &report["config"];
    let _ = writeln!(
        s,
        "== durability: the broker pinned to CPU {}, the harness to CPU {}; {} conversations, {} agents x {}; {} rounds of {}s warm-up + {}s measured per mode; data dirs in {} ==",
        c["target_cpu"],
        c["harness_cpus"].as_str().unwrap_or("?"),
        c["conversations"],
        c["agents"],
        c["capacity"],
        c["rounds"],
        c["warmup_seconds"],
        c["measure_seconds"],
        c["durability_dir"].as_str().unwrap_or("?"),
    );
    let num = |v: &Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    };
    let range = |v: &Value, digits: usize| {
        format!(
            "{} [{}..{}]",
            num(&v["median"], digits),
            num(&v["min"], digits),
            num(&v["max"], digits)
        )
    };
    let _ = writeln!(
        s,
        "{:<24} {:>28} {:>7} {:>22} {:>22} {:>10} {:>20} {:>20} {:>20}",
        "mode",
        "round trips/s [min..max]",
        "spread",
        "c->a p50 ms [min..max]",
        "c->a p99 ms [min..max]",
        "CPU us/rt",
        "rt/s vs memory",
        "p99 vs memory",
        "CPU/rt vs memory"
    );
    let summary = &report["summary"];
    for name in c["modes"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or("?");
        let m = &summary[name];
        let label: &str = match Mode::from_name(name) {
            Some(m) => m.label(),
            None => name,
        };
        let rt = &m["round_trips_per_second"];
        let vs = |key: &str| {
            let r = &m["vs_memory"][key]["per_round"];
            if r["median"].is_null() {
                "1 (reference)".to_string()
            } else {
                format!(
                    "{}x [{}..{}]",
                    num(&r["median"], 2),
                    num(&r["min"], 2),
                    num(&r["max"], 2)
                )
            }
        };
        let _ = writeln!(
            s,
            "{:<24} {:>28} {:>6}% {:>22} {:>22} {:>10} {:>20} {:>20} {:>20}",
            label,
            range(rt, 0),
            num(&rt["spread_percent"], 0),
            range(&m["customer_to_agent_p50_ms"], 1),
            range(&m["customer_to_agent_p99_ms"], 1),
            num(&m["cpu_us_per_round_trip"]["median"], 1),
            vs("round_trips_per_second"),
            vs("customer_to_agent_p99_ms"),
            vs("cpu_us_per_round_trip"),
        );
    }
    let g = &report["goal"];
    let _ = writeln!(
        s,
        "goal: {}: {}",
        g["goal"].as_str().unwrap_or("?"),
        match (g["value"].as_f64(), g["met"].as_bool()) {
            (Some(v), Some(true)) => format!("{v:.2}x, met"),
            (Some(v), _) => format!("{v:.2}x, NOT MET"),
            _ => "not measured".into(),
        }
    );
    let failed: Vec<String> = report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["figures"]["ok"] != true)
        .map(|r| {
            format!(
                "{} round {}: {}",
                r["mode"].as_str().unwrap_or("?"),
                r["round"],
                r["problem"].as_str().unwrap_or("see the report")
            )
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "FAILED runs: {}", failed.join("; "));
    }
    let disturbed = report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["figures"]["disturbed"] == true)
        .count();
    if disturbed > 0 {
        let _ = writeln!(
            s,
            "WARNING: other processes took more than 10% of a core during {disturbed} of the windows: compare the spread before the medians"
        );
    }
    let unsaturated = report["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["figures"]["bound_by"] != "target")
        .count();
    if unsaturated > 0 {
        let _ = writeln!(
            s,
            "note: in {unsaturated} run(s) the broker's core was not saturated: that round trips/s is what the closed loop reached at the latency it met (or the share of the core other processes left), not the broker's ceiling; the CPU per round trip ratio is what the round trips/s ratio comes to on a saturated core"
        );
    }
    if report["config"]["durability_dir_is_tmpfs"] == true {
        let _ = writeln!(
            s,
            "WARNING: the data dirs were on a tmpfs, where fsync costs nothing: give --durability-dir on a disk"
        );
    }
    s
}

/// Whether `dir` is on a tmpfs (RAM: fsync there measures nothing).
fn on_tmpfs(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: statfs fills the zeroed struct it is given; the path is a
        // valid NUL-terminated string that outlives the call.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
        rc == 0 && st.f_type as i64 == TMPFS_MAGIC
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// Bytes of the files under `dir` (what the run's journal wrote).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the comparison; returns the report.
pub async fn run(name: &str, args: &Args) -> Result<Value, String> {
    let modes = parse_modes(&args.durability_modes)?;
    let (allowed, harness) = percore::split_cpus(args)?;
    let harness_list = affinity::format_cpu_list(&harness);
    let root: PathBuf = args
        .durability_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&root)
        .map_err(|e| format!("--durability-dir {}: {e}", root.display()))?;
    let tmpfs = on_tmpfs(&root);
    if tmpfs {
        eprintln!(
            "loadtest: WARNING: --durability: {} is on a tmpfs, where fsync costs nothing; \
             give --durability-dir on a disk",
            root.display()
        );
    }
    let run_id = args.run_id.clone().unwrap_or_else(crate::new_run_id);
    let seed = args.seed.unwrap_or(1);
    let nats = if modes.contains(&Mode::Cluster) {
        Some(
            Nats::start(
                args,
                &root.join(format!("loadtest-{run_id}-nats")),
                &harness,
            )
            .await?,
        )
    } else {
        None
    };
    println!(
        "durability run {run_id}: the broker pinned to CPU {}, this harness to CPU {harness_list}; \
         {} conversations at once ({} agents x {}); {} rounds of {} ({}s warm-up, {}s measured \
         each); data dirs in {}",
        args.target_cpu,
        args.concurrency(),
        args.agents,
        args.capacity,
        args.rounds,
        modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        args.warmup.as_secs_f64(),
        args.measure.as_secs_f64(),
        root.display(),
    );
    let mut runs = Vec::new();
    for round in 0..args.rounds as usize {
        for mode in order(&modes, round) {
            let mut attempt = 0;
            loop {
                percore::wait_quiet(&allowed, args.quiet_wait).await;
                let id = format!("{run_id}-{}-r{}a{attempt}", mode.name(), round + 1);
                let data_dir = root.join(format!("loadtest-{id}"));
                let broker_args =
                    mode.broker_args(&data_dir, nats.as_ref().map(|n| n.url.as_str()));
                let measured =
                    percore::measure_broker(args, &broker_args, &id, seed, &harness).await;
                let journal_bytes = (mode != Mode::Memory).then(|| bytes_under(&data_dir));
                if mode != Mode::Memory {
                    if let Err(e) = std::fs::remove_dir_all(&data_dir) {
                        eprintln!(
                            "loadtest: WARNING: --durability: cannot remove {}: {e}",
                            data_dir.display()
                        );
                    }
                }
                let t = measured?;
                let f = figures(&t);
                println!(
                    "[{} round {}] {} round trips/s, customer->agent p50 {} ms p99 {} ms, \
                     {} CPU us per round trip, broker core {}%{}",
                    mode.name(),
                    round + 1,
                    fmt(&f["round_trips_per_second"], 0),
                    fmt(&f["customer_to_agent_p50_ms"], 1),
                    fmt(&f["customer_to_agent_p99_ms"], 1),
                    fmt(&f["cpu_us_per_round_trip"], 1),
                    fmt(&f["target_core_percent"], 0),
                    if f["disturbed"] == true {
                        " (disturbed)"
                    } else {
                        ""
                    },
                );
                if f["disturbed"] == true && attempt < args.retry_disturbed {
                    attempt += 1;
                    eprintln!(
                        "loadtest: --durability: other processes disturbed the window; again \
                         (attempt {} of {})",
                        attempt + 1,
                        args.retry_disturbed + 1
                    );
                    continue;
                }
                runs.push(json!({
                    "mode": mode.name(),
                    "round": round + 1,
                    "attempts": attempt + 1,
                    "broker_args": broker_args,
                    "journal_bytes": journal_bytes,
                    "figures": f,
                    "problem": t["problem"],
                    "measured": t,
                }));
                break;
            }
        }
    }
    if let Some(nats) = nats {
        nats.stop().await;
    }
    let summary = summarize(&modes, &runs);
    let goal = goal(&summary);
    let ok = runs.iter().all(|r| r["figures"]["ok"] == true);
    let report = json!({
        "name": name,
        "mode": "durability",
        "run_id": run_id,
        "seed": seed,
        "ok": ok,
        "config": {
            "conversations": args.concurrency(),
            "agents": args.agents,
            "capacity": args.capacity,
            "rounds": args.rounds,
            "modes": modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "warmup_seconds": args.warmup.as_secs_f64(),
            "measure_seconds": args.measure.as_secs_f64(),
            "target_cpu": args.target_cpu,
            "harness_cpus": harness_list,
            "cpus_allowed": affinity::format_cpu_list(&allowed),
            "durability_dir": root.display().to_string(),
            "durability_dir_is_tmpfs": tmpfs,
        },
        "runs": runs,
        "summary": summary,
        "goal": goal,
        "note": "round trip: a customer message and the agent's reply received by the \
                 customer (closed loop); customer_to_agent: a customer's send to its agent's \
                 receipt, over the measured window only; vs_memory.per_round: each run against \
                 the in-memory run of its own round; spread_percent: (max - min) / median",
    });
    print!("{}", human(&report));
    Ok(report)
}

/// The NATS server (with JetStream) the `cluster` mode's brokers share:
/// started from `--nats-server` (default: `nats-server` on the `PATH`, else
/// `/usr/sbin/nats-server`), on a free loopback port, its store in `dir`
/// (removed at the end), pinned to the harness's CPUs.
struct Nats {
    child: tokio::process::Child,
    url: String,
    dir: PathBuf,
}

impl Nats {
    async fn start(args: &Args, dir: &Path, cpus: &[usize]) -> Result<Nats, String> {
        let bin = match &args.nats_server {
            Some(bin) => bin.clone(),
            None => ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("nats-server")),
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free loopback port: {e}"))?
            .port();
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        affinity::pin_command(&mut cmd, cpus)?;
        let child = cmd.spawn().map_err(|e| {
            format!(
                "--durability-modes cluster needs nats-server (apt-get install nats-server, or                  --nats-server PATH): {}: {e}",
                bin.display()
            )
        })?;
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "nats-server on port {port} did not listen within 10 s"
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        println!(
            "durability: nats-server {} on 127.0.0.1:{port}, pinned to the harness's CPUs",
            bin.display()
        );
        Ok(Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir: dir.to_owned(),
        })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "loadtest: WARNING: --durability: cannot remove {}: {e}",
                self.dir.display()
            );
        }
    }
}

fn fmt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn modes_are_parsed_and_checked() {
        assert_eq!(
            parse_modes("memory,batch,always").unwrap(),
            [Mode::Memory, Mode::Batch, Mode::Always]
        );
        assert_eq!(
            parse_modes(" batch , memory ").unwrap(),
            [Mode::Batch, Mode::Memory]
        );
        assert!(parse_modes("batch,always").unwrap_err().contains("memory"));
        assert!(parse_modes("memory").unwrap_err().contains("durable"));
        assert!(parse_modes("memory,memory,batch")
            .unwrap_err()
            .contains("twice"));
        assert!(parse_modes("memory,sometimes")
            .unwrap_err()
            .contains("\"sometimes\""));
        let dir = Path::new("/data/x");
        assert!(Mode::Memory.broker_args(dir, None).is_empty());
        assert_eq!(
            Mode::Always.broker_args(dir, None),
            ["--data-dir", "/data/x", "--fsync", "always"]
        );
        let cluster = Mode::Cluster.broker_args(
            Path::new("/tmp/loadtest-r1.cluster"),
            Some("nats://127.0.0.1:5000"),
        );
        assert_eq!(
            cluster,
            [
                "--data-dir",
                "/tmp/loadtest-r1.cluster",
                "--fsync",
                "batch",
                "--cluster",
                "nats://127.0.0.1:5000",
                "--node-id",
                "loadtest",
                "--cluster-prefix",
                "loadtest-r1-cluster"
            ]
        );
        assert_eq!(
            parse_modes("memory,cluster").unwrap(),
            [Mode::Memory, Mode::Cluster]
        );
    }

    #[test]
    fn rounds_rotate_the_order() {
        let m = [Mode::Memory, Mode::Batch, Mode::Always];
        assert_eq!(order(&m, 0), m);
        assert_eq!(order(&m, 1), [Mode::Batch, Mode::Always, Mode::Memory]);
        assert_eq!(order(&m, 2), [Mode::Always, Mode::Memory, Mode::Batch]);
        assert_eq!(order(&m, 3), m);
    }

    #[test]
    fn medians_and_spread() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let s = spread(&[90.0, 100.0, 110.0]);
        assert!(close(s["median"].as_f64().unwrap(), 100.0));
        assert!(close(s["spread_percent"].as_f64().unwrap(), 20.0));
        assert_eq!(spread(&[])["n"], 0);
    }

    fn run(mode: &str, round: u64, rt: f64, p99: f64) -> Value {
        json!({
            "mode": mode,
            "round": round,
            "figures": {
                "round_trips_per_second": rt,
                "customer_to_agent_p50_ms": p99 / 4.0,
                "customer_to_agent_p99_ms": p99,
                "cpu_us_per_round_trip": 1e6 / rt,
                "bound_by": "target",
                "disturbed": false,
                "ok": true,
            },
        })
    }

    #[test]
    fn ratios_pair_each_run_with_its_rounds_memory_run() {
        let modes = [Mode::Memory, Mode::Batch, Mode::Always];
        // Round 2 ran while the machine was slower: paired ratios see
        // through it.
        let runs = [
            run("memory", 1, 20_000.0, 40.0),
            run("batch", 1, 16_000.0, 50.0),
            run("always", 1, 5_000.0, 200.0),
            run("batch", 2, 12_000.0, 60.0),
            run("always", 2, 3_750.0, 240.0),
            run("memory", 2, 15_000.0, 48.0),
            run("always", 3, 5_200.0, 190.0),
            run("memory", 3, 20_800.0, 41.0),
            run("batch", 3, 16_640.0, 52.0),
        ];
        let s = summarize(&modes, &runs);
        let batch = &s["batch"]["vs_memory"]["round_trips_per_second"];
        assert!(close(batch["per_round"]["median"].as_f64().unwrap(), 0.8));
        assert!(close(batch["per_round"]["min"].as_f64().unwrap(), 0.8));
        assert!(close(
            batch["of_medians"].as_f64().unwrap(),
            16_000.0 / 20_000.0
        ));
        let always = &s["always"]["vs_memory"]["round_trips_per_second"]["per_round"];
        assert!(close(always["median"].as_f64().unwrap(), 0.25));
        assert!(close(
            s["memory"]["round_trips_per_second"]["median"]
                .as_f64()
                .unwrap(),
            20_000.0
        ));
        assert!(s["memory"].get("vs_memory").is_none());
        let g = goal(&s);
        assert_eq!(g["met"], true, "0.8 is within 1.5x");
        assert!(close(g["limit"].as_f64().unwrap(), 1.0 / 1.5));

        let slow = [
            run("memory", 1, 20_000.0, 40.0),
            run("batch", 1, 12_000.0, 60.0),
        ];
        let s2 = summarize(&[Mode::Memory, Mode::Batch], &slow);
        assert_eq!(goal(&s2)["met"], false, "0.6 is over 1.5x slower");
        // No batch run: not measured rather than met.
        let s3 = summarize(&[Mode::Memory, Mode::Always], &runs[..3]);
        assert_eq!(goal(&s3)["met"], Value::Null);
    }

    #[test]
    fn summary_gives_a_line_per_mode() {
        let modes = [Mode::Memory, Mode::Batch];
        let runs = vec![
            run("memory", 1, 20_000.0, 40.0),
            run("batch", 1, 16_000.0, 50.0),
        ];
        let summary = summarize(&modes, &runs);
        let report = json!({
            "config": {"target_cpu": 0, "harness_cpus": "1", "conversations": 1000,
                       "modes": ["memory", "batch"],
                       "agents": 200, "capacity": 5, "rounds": 1, "warmup_seconds": 5.0,
                       "measure_seconds": 20.0, "durability_dir": "/var/tmp",
                       "durability_dir_is_tmpfs": false},
            "goal": goal(&summary),
            "summary": summary,
            "runs": runs,
        });
        let text = human(&report);
        assert!(text.contains("in memory (no data dir)"), "{text}");
        assert!(text.contains("1 (reference)"), "{text}");
        assert!(
            text.contains("fsync = \"batch\"                  16000 [16000..16000]"),
            "{text}"
        );
        assert!(text.contains("0.80x [0.80..0.80]"), "{text}");
        assert!(text.contains("1.25x [1.25..1.25]"), "p99 ratio: {text}");
        // CPU per round trip: 62.5 µs against 50.
        assert!(
            text.contains("1.25x [1.25..1.25]   1.25x [1.25..1.25]"),
            "CPU ratio: {text}"
        );
        assert!(text.contains("0.80x, met"), "{text}");
        assert!(!text.contains("WARNING"), "{text}");
        assert!(!text.contains("FAILED"), "{text}");
    }

    #[test]
    fn proc_and_a_missing_dir_are_no_tmpfs() {
        assert!(!on_tmpfs(Path::new("/proc")));
        assert!(!on_tmpfs(Path::new("/no/such/dir")));
    }
}

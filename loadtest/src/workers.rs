//! `--workers N`: the harness re-executes itself N times, each child with a
//! slice of the load (agents and webchat conversations by index modulo N; all
//! SMS and WhatsApp conversations and the provider sink in worker 0), and merges their
//! measurements. Latency stamps use the machine's monotonic clock, so a
//! customer in one process and an agent in another measure correctly.
//!
//! Parent and children talk over the children's stdin/stdout, one line each:
//! child → `LT READY` (agents available), `LT P <json>` (every 250 ms: counters
//! and the second's latencies), `LT LOADDONE`, `LT ERR <text>`; parent →
//! `GO` (start the conversations), `STOP` (drain, clean up, write the report
//! to `--worker-report`, exit).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::net::Failure;
use crate::progress::{Collector, Sample, Source, Tick};
use crate::report::{hist_add_raw, hist_to_raw, new_histogram, Snapshot};
use crate::run::{Kind, Local};
use crate::Args;

/// What the workers produced together.
pub struct Merged {
    pub snap: Snapshot,
    pub samples: Vec<Sample>,
    /// The sink's figures and problems, from worker 0.
    pub sink: Option<(Value, Vec<String>)>,
    /// `--thread-shares`: the sampled process's threads over the load phase.
    pub threads: Value,
}

#[derive(Default)]
struct Agg {
    counters: Vec<BTreeMap<String, u64>>,
    errors: Vec<u64>,
    hist: Option<Histogram<u64>>,
}

enum Event {
    Ready,
    LoadDone,
    Failed(usize, String),
    Exited(usize),
}

/// Runs `n` worker processes against `url` and merges their results.
#[allow(clippy::too_many_arguments)]
pub async fn run_parent(
    args: &Args,
    argv: &[String],
    kind: Kind,
    url: &str,
    run_id: &str,
    seed: u64,
    pid: Option<u32>,
    n: usize,
    requested: u64,
) -> Result<Merged, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let dir = std::env::temp_dir().join(format!("loadtest-{run_id}-{}", kind.name()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let agg = Arc::new(Mutex::new(Agg {
        counters: vec![BTreeMap::new(); n],
        errors: vec![0; n],
        hist: Some(new_histogram()),
    }));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut children: Vec<Child> = Vec::new();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let mut paths = Vec::new();
    for i in 0..n {
        let path = dir.join(format!("worker-{i}.json"));
        let _ = std::fs::remove_file(&path);
        let mut cmd = Command::new(&exe);
        cmd.args(&argv[1..])
            .args(args.resolved_flags())
            .args(["--worker", &format!("{i}/{n}")])
            .arg("--worker-report")
            .arg(&path)
            .args([
                "--run-id",
                run_id,
                "--seed",
                &seed.to_string(),
                "--url",
                url,
            ])
            .args([
                "--target-kind",
                kind.name(),
                "--progress",
                "off",
                "--workers",
                "1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting worker {i}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        stdins.push(child.stdin.take().expect("piped stdin"));
        children.push(child);
        paths.push(path);
        let (tx, agg) = (tx.clone(), agg.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "LT READY" {
                    let _ = tx.send(Event::Ready);
                } else if line == "LT LOADDONE" {
                    let _ = tx.send(Event::LoadDone);
                } else if let Some(e) = line.strip_prefix("LT ERR ") {
                    let _ = tx.send(Event::Failed(i, e.to_string()));
                } else if let Some(p) = line.strip_prefix("LT P ") {
                    if let Ok(v) = serde_json::from_str::<Value>(p) {
                        let mut a = agg.lock().expect("agg lock");
                        a.counters[i] = v["counters"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                            .collect();
                        a.errors[i] = v["errors"].as_u64().unwrap_or(0);
                        if let Some(h) = a.hist.as_mut() {
                            hist_add_raw(h, &v["hist"]);
                        }
                    }
                } else {
                    eprintln!("[worker {i}] {line}");
                }
            }
            let _ = tx.send(Event::Exited(i));
        });
    }
    drop(tx);

    // Setup: every worker's agents available.
    let setup_limit = Instant::now() + args.duration;
    let mut ready = 0;
    while ready < n {
        match tokio::time::timeout_at(setup_limit, rx.recv()).await {
            Ok(Some(Event::Ready)) => ready += 1,
            Ok(Some(Event::Failed(i, e))) => return Err(format!("worker {i}: {e}")),
            Ok(Some(Event::Exited(i))) => return Err(format!("worker {i} exited during setup")),
            Ok(Some(Event::LoadDone)) => {}
            Ok(None) | Err(_) => return Err("workers did not get ready in time".into()),
        }
    }
    println!("[{}] {n} workers ready", kind.name());
    let source: Source = {
        let agg = agg.clone();
        Arc::new(move || {
            let mut a = agg.lock().expect("agg lock");
            let mut counters = BTreeMap::new();
            for c in &a.counters {
                for (k, v) in c {
                    *counters.entry(k.clone()).or_default() += v;
                }
            }
            let errors = a.errors.iter().sum();
            let hist = a
                .hist
                .replace(new_histogram())
                .unwrap_or_else(new_histogram);
            Tick {
                counters,
                errors,
                hist,
            }
        })
    };
    let window = pid
        .filter(|_| args.thread_shares)
        .map(crate::cpuwin::ThreadWindow::begin);
    let collector = Collector::start(
        kind.name().to_string(),
        source,
        pid,
        args.progress,
        requested,
    );
    send_all(&mut stdins, "GO").await;
    let mut done = 0;
    let mut exited = 0;
    let load_limit = Instant::now() + args.duration + args.step_timeout + Duration::from_secs(30);
    while done + exited < n {
        match tokio::time::timeout_at(load_limit, rx.recv()).await {
            Ok(Some(Event::LoadDone)) => done += 1,
            Ok(Some(Event::Exited(i))) => {
                eprintln!("[worker {i}] exited during the load");
                exited += 1;
            }
            Ok(Some(Event::Failed(i, e))) => eprintln!("[worker {i}] {e}"),
            Ok(Some(Event::Ready)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Let the last progress lines arrive before the timeline closes.
    tokio::time::sleep(crate::progress::SAMPLE_INTERVAL + Duration::from_millis(100)).await;
    let samples = collector.stop().await;
    let threads = window.map_or(Value::Null, crate::cpuwin::ThreadWindow::end);
    send_all(&mut stdins, "STOP").await;
    drop(stdins);
    for (i, c) in children.iter_mut().enumerate() {
        if timeout(Duration::from_secs(60), c.wait()).await.is_err() {
            eprintln!("[worker {i}] did not stop; killing it");
            let _ = c.kill().await;
        }
    }
    let mut merged: Option<Snapshot> = None;
    for (i, p) in paths.iter().enumerate() {
        let snap = match std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        {
            Some(v) => Snapshot::from_raw(&v),
            None => {
                let mut s = Snapshot::from_raw(&json!({}));
                s.add_error(&Failure::new(
                    "harness.worker_report_missing",
                    format!("worker {i}: no report at {}", p.display()),
                ));
                s
            }
        };
        match merged.as_mut() {
            Some(m) => m.merge(&snap),
            None => merged = Some(snap),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut snap = merged.unwrap_or_else(|| Snapshot::from_raw(&json!({})));
    // Worker 0's sink figures travel as extra `sink.*` numbers.
    let sink_keys: Vec<String> = snap
        .extra
        .keys()
        .filter(|k| k.starts_with("sink."))
        .cloned()
        .collect();
    let sink = (!sink_keys.is_empty()).then(|| {
        let mut m = serde_json::Map::new();
        for k in sink_keys {
            if let Some(v) = snap.extra.remove(&k) {
                m.insert(k.trim_start_matches("sink.").to_string(), v);
            }
        }
        (Value::Object(m), Vec::new())
    });
    Ok(Merged {
        snap,
        samples,
        sink,
        threads,
    })
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A worker process: its slice of one target's load, driven by the parent.
pub async fn child_main(mut args: Args) -> ExitCode {
    args.apply_scale();
    let (i, n) = match args.worker_part() {
        Some(part) => part,
        None => {
            say("LT ERR bad --worker");
            return ExitCode::from(2);
        }
    };
    let kind = Kind::from_name(&args.target_kind);
    let (Some(run_id), Some(seed), Some(report_path)) =
        (args.run_id.clone(), args.seed, args.worker_report.clone())
    else {
        say("LT ERR a worker needs --run-id, --seed and --worker-report");
        return ExitCode::from(2);
    };
    match child(&args, i, n, kind, &run_id, seed, report_path).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("LT ERR {}", e.replace('\n', " ")));
            ExitCode::from(2)
        }
    }
}

async fn child(
    args: &Args,
    i: usize,
    n: usize,
    kind: Kind,
    run_id: &str,
    seed: u64,
    report_path: PathBuf,
) -> Result<(), String> {
    let slice = args.slice(i, n, kind);
    let target = args.target(&args.url)?;
    let sink = if !slice.sms.is_empty() || !slice.whatsapp.is_empty() {
        Some(crate::sink_for(args, &target).await?)
    } else {
        None
    };
    let mut local = Local::setup(
        args.setup(kind, &args.url, run_id, seed, sink.clone())?,
        slice,
    )
    .await?;
    say("LT READY");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await {
        Ok(Some(l)) if l.trim() == "GO" => {}
        _ => return Err("expected GO from the parent".into()),
    }
    let ctx = local.ctx.clone();
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::progress::SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            let line = json!({
                "counters": ctx.stats.c.to_map(),
                "errors": ctx.stats.error_count(),
                "hist": hist_to_raw(&ctx.stats.take_interval()),
            });
            say(&format!("LT P {line}"));
        }
    });
    local.load().await;
    say("LT LOADDONE");
    // STOP, or the parent went away: finish either way.
    let _ = timeout(args.duration, stdin.next_line()).await;
    // One last progress line so the parent's counters are complete.
    tokio::time::sleep(Duration::from_millis(10)).await;
    reporter.abort();
    let mut snap = local.finish().await;
    if let Some(sink) = sink {
        let (figures, problems) = sink.figures();
        for (k, v) in figures {
            snap.extra.insert(format!("sink.{k}"), v.into());
        }
        for p in problems {
            snap.add_error(&Failure::new("sink.problem", p));
        }
    }
    std::fs::write(&report_path, snap.to_raw().to_string())
        .map_err(|e| format!("writing {}: {e}", report_path.display()))?;
    Ok(())
}

/// Writes `word` and a newline to every child.
async fn send_all(stdins: &mut [ChildStdin], word: &str) {
    for s in stdins.iter_mut() {
        let _ = s.write_all(format!("{word}\n").as_bytes()).await;
        let _ = s.flush().await;
    }
}

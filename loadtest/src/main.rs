//! Closed-loop load test for a Switchboard broker on loopback: creates agents,
//! connects their desktops, runs webchat conversations through them and reports
//! throughput, latency percentiles and errors by code.
//!
//! `cargo run --release -p loadtest -- --url http://127.0.0.1:8080 --admin-token T`

mod agent;
mod customer;
mod net;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use reqwest::{Client, Method};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout, timeout_at, Instant};

use net::{Failure, Pacer, SourcePool, Target};
use report::{Counters, RunInfo, Stats};

/// Closed-loop load test for Switchboard (webchat customers ↔ agent desktops).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Base URL of the broker; loopback addresses only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin token for creating and deleting agents.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Number of agents (M).
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Webchat capacity of each agent (K).
    #[arg(long, default_value_t = 5)]
    capacity: u32,
    /// Conversations to run in total (N).
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// Messages per direction per conversation (X), before the closing "bye".
    #[arg(long, default_value_t = 5)]
    messages: u32,
    /// Customers in flight at once [default: min(conversations, agents × capacity)].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Hard limit for the run (setup and conversations), e.g. 90s, 10m.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: Duration,
    /// New WebSocket connections per second while ramping up (agents, then the
    /// first connection of each customer slot); 0 = no pacing.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Longest wait for any single expected event (reply, end, readiness).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    step_timeout: Duration,
    /// Loopback source addresses to spread client sockets over (127.0.0.1, .2, ...)
    /// [default: one per 10,000 connections, at most 64].
    #[arg(long)]
    source_addrs: Option<usize>,
    /// Tag for agent ids (lt-agent-<run>-<n>) [default: derived from the clock and pid].
    #[arg(long)]
    run_id: Option<String>,
    /// Leave the run's agents on the server instead of deleting them at the end.
    #[arg(long)]
    keep_agents: bool,
    /// Print the first N WebSocket frames sent or received to stderr (debugging).
    #[arg(long, default_value_t = 0)]
    trace_frames: usize,
    /// Also write the report as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Parses `500ms`, `30s`, `10m`, `1h` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(|| self.conversations.min(self.agents * self.capacity as usize))
    }

    /// Keeps every count and time bounded.
    fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            (1..=10_000).contains(&self.agents),
            "--agents must be 1..=10000",
        )?;
        check(
            (1..=1_000).contains(&self.capacity),
            "--capacity must be 1..=1000",
        )?;
        check(
            (1..=10_000_000).contains(&self.conversations),
            "--conversations must be 1..=10000000",
        )?;
        check(self.messages <= 10_000, "--messages must be at most 10000")?;
        check(
            (1..=100_000).contains(&self.concurrency()),
            "--concurrency must be 1..=100000",
        )?;
        check(
            self.duration <= Duration::from_secs(24 * 3600),
            "--duration must be at most 24h",
        )?;
        check(
            self.step_timeout <= Duration::from_secs(600),
            "--step-timeout must be at most 10m",
        )?;
        check(
            self.ramp.is_finite() && self.ramp >= 0.0,
            "--ramp must be a number >= 0",
        )?;
        check(
            self.source_addrs.is_none_or(|n| (1..=250).contains(&n)),
            "--source-addrs must be 1..=250",
        )?;
        if let Some(id) = &self.run_id {
            check(
                !id.is_empty()
                    && id.len() <= 40
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "--run-id must be 1..=40 of [A-Za-z0-9_-]",
            )?;
        }
        Ok(())
    }
}

/// What every agent and customer task shares.
pub struct Ctx {
    pub target: Target,
    pub admin_token: String,
    pub run_id: String,
    pub messages: u32,
    pub step_timeout: Duration,
    /// The run stops by itself here.
    pub deadline: Instant,
    pub stats: Stats,
    pub pacer: Pacer,
    pub sources: SourcePool,
    clients: Vec<Client>,
}

impl Ctx {
    /// An HTTP client, one per source address, chosen by `n`.
    pub fn http(&self, n: usize) -> &Client {
        &self.clients[n % self.clients.len()]
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadtest: {e}");
        return ExitCode::from(2);
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the test; `Ok(verdict)` once a report was made, `Err` when the run could
/// not start.
async fn run(args: Args) -> Result<bool, String> {
    let wall_start = Instant::now();
    report::now_nanos();
    net::trace_frames(args.trace_frames);
    let target = Target::parse(&args.url)?;
    let concurrency = args.concurrency();

    let nofile = net::raise_nofile_limit()?;
    println!(
        "RLIMIT_NOFILE: soft {} -> {} (hard {})",
        nofile.before, nofile.after, nofile.hard
    );
    let sockets_needed = (args.agents + concurrency) as u64 + 64;
    if sockets_needed > nofile.after {
        return Err(format!(
            "needs about {sockets_needed} open files for {} agents + {concurrency} customers; \
             the limit is {}",
            args.agents, nofile.after
        ));
    }

    let source_count = args.source_addrs.unwrap_or_else(|| {
        (args.agents + args.conversations)
            .div_ceil(10_000)
            .clamp(1, 64)
    });
    let sources = SourcePool::new(&target, source_count);
    let mut clients = Vec::new();
    let locals: Vec<Option<std::net::IpAddr>> = if sources.addrs().is_empty() {
        vec![None]
    } else {
        sources.addrs().iter().copied().map(Some).collect()
    };
    for local in locals {
        clients.push(
            Client::builder()
                .local_address(local)
                .timeout(args.step_timeout)
                .tcp_nodelay(true)
                .build()
                .map_err(|e| format!("http client: {e}"))?,
        );
    }

    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("{secs:x}-{:x}", std::process::id())
    });
    let config = json!({
        "url": args.url,
        "agents": args.agents,
        "capacity": args.capacity,
        "conversations": args.conversations,
        "messages": args.messages,
        "concurrency": concurrency,
        "duration_seconds": args.duration.as_secs_f64(),
        "ramp_per_second": args.ramp,
        "step_timeout_seconds": args.step_timeout.as_secs_f64(),
        "source_addresses": sources.addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "nofile": { "before": nofile.before, "after": nofile.after, "hard": nofile.hard },
    });
    println!(
        "run {run_id}: {} agents x cap {}, {} conversations x {} messages, concurrency {concurrency}, \
         limit {:?}, ramp {}/s, {} source address(es) -> {}",
        args.agents,
        args.capacity,
        args.conversations,
        args.messages,
        args.duration,
        args.ramp,
        sources.addrs().len().max(1),
        target.base,
    );

    let ctx = Arc::new(Ctx {
        target,
        admin_token: args.admin_token.clone(),
        run_id: run_id.clone(),
        messages: args.messages,
        step_timeout: args.step_timeout,
        deadline: wall_start + args.duration,
        stats: Stats::new(),
        pacer: Pacer::new(args.ramp),
        sources,
        clients,
    });

    // The server must answer before anything is created.
    let health = net::http_json(
        ctx.http(0),
        Method::GET,
        ctx.target.http("/healthz"),
        None,
        None,
    )
    .await
    .map_err(|f| format!("server not healthy at {}: {f}", ctx.target.base))?;
    if health.1["status"] != "ok" {
        return Err(format!("GET /healthz answered {}", health.1));
    }

    // Agents: create, connect, wait until every one is available.
    let (creds, create_errors) = agent::create_agents(&ctx, args.agents, args.capacity).await;
    if let Some(f) = create_errors.first() {
        let failed = agent::delete_agents(&ctx, &creds).await;
        return Err(format!(
            "creating agents failed ({} of {}): {f}{}",
            create_errors.len(),
            args.agents,
            if failed > 0 {
                format!("; {failed} created agents could not be deleted")
            } else {
                String::new()
            },
        ));
    }
    println!("created {} agents", creds.len());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut agent_tasks = Vec::new();
    let mut readies = Vec::new();
    for c in &creds {
        let (tx, rx) = oneshot::channel();
        readies.push(rx);
        agent_tasks.push(tokio::spawn(agent::run(
            ctx.clone(),
            c.clone(),
            tx,
            shutdown_rx.clone(),
        )));
    }
    let ramp_time = if args.ramp > 0.0 {
        Duration::from_secs_f64(args.agents as f64 / args.ramp)
    } else {
        Duration::ZERO
    };
    let ready_limit = (Instant::now() + ramp_time + args.step_timeout).min(ctx.deadline);
    let mut ready = 0usize;
    for rx in readies {
        if let Ok(Ok(true)) = timeout_at(ready_limit, rx).await {
            ready += 1;
        }
    }
    println!("{ready} of {} agents available", creds.len());
    if ready < creds.len() {
        ctx.stats.error(&Failure::new(
            "harness.agents_not_ready",
            format!(
                "{} of {} agents did not become available",
                creds.len() - ready,
                creds.len()
            ),
        ));
    }

    // Conversations.
    let phase_start = Instant::now();
    let phase_start_nanos = report::now_nanos();
    if ready == creds.len() {
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                tokio::spawn(customer::worker(
                    ctx.clone(),
                    next.clone(),
                    args.conversations,
                ))
            })
            .collect();
        for w in workers {
            if let Err(e) = w.await {
                ctx.stats
                    .error(&Failure::new("harness.task_panicked", e.to_string()));
            }
        }
    }
    let phase = phase_start.elapsed();

    // Let the last `complete`s land (also for conversations whose customer gave
    // up and left), then take the agents down.
    let c = &ctx.stats.c;
    let drain_until = Instant::now() + args.step_timeout.min(Duration::from_secs(10));
    while (Counters::get(&c.tasks_completed) < Counters::get(&c.conversations_ended)
        || Counters::get(&c.open_tasks) > 0)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = shutdown_tx.send(true);
    let mut open_tasks = 0u64;
    for t in agent_tasks {
        match timeout(Duration::from_secs(10), t).await {
            Ok(Ok(n)) => open_tasks += n as u64,
            Ok(Err(e)) => ctx
                .stats
                .error(&Failure::new("harness.task_panicked", e.to_string())),
            Err(_) => ctx.stats.error(&Failure::new(
                "harness.agent_stuck",
                "agent did not stop in 10s",
            )),
        }
    }

    let server_stats = net::http_json(
        ctx.http(0),
        Method::GET,
        ctx.target.http("/v1/stats"),
        Some(&ctx.admin_token),
        None,
    )
    .await
    .ok()
    .map(|(_, v)| v);

    if !args.keep_agents {
        let failed = agent::delete_agents(&ctx, &creds).await;
        if failed > 0 {
            ctx.stats.error(&Failure::new(
                "harness.cleanup",
                format!("{failed} agents could not be deleted"),
            ));
        }
    }

    let requested = args.conversations as u64;
    let ok = ready == creds.len()
        && Counters::get(&c.conversations_completed) == requested
        && Counters::get(&c.tasks_completed) == requested
        && open_tasks == 0
        && ctx.stats.error_count() == 0;
    let info = RunInfo {
        run_id,
        config,
        wall: wall_start.elapsed(),
        phase,
        phase_start_nanos,
        requested,
        agents_created: creds.len() as u64,
        agents_open_tasks_at_end: open_tasks,
        server_stats,
    };
    let json = report::to_json(&ctx.stats, &info, ok);
    print!("{}", report::human(&json));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&json).expect("report serializes");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn only_loopback_targets() {
        assert!(Target::parse("http://127.0.0.1:8080").is_ok());
        assert!(Target::parse("http://localhost:1").is_ok());
        assert!(Target::parse("http://[::1]:8080").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("http://example.com/").is_err());
        assert!(Target::parse("https://127.0.0.1/").is_err());
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            t.ws("/v1/webchat/ws", "a b").as_str(),
            "ws://127.0.0.1:8080/v1/webchat/ws?token=a+b"
        );
    }

    #[test]
    fn defaults_validate() {
        let args = Args::parse_from(["loadtest", "--admin-token", "x"]);
        assert_eq!(args.concurrency(), 100);
        assert!(args.validate().is_ok());
        let bad = Args::parse_from(["loadtest", "--admin-token", "x", "--agents", "0"]);
        assert!(bad.validate().is_err());
    }
}

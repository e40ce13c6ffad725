//! Load harness for a Switchboard broker on loopback: agents on desktop
//! sockets, webchat customers on sockets, SMS customers through signed
//! Twilio webhooks and WhatsApp customers through signed Cloud API webhooks
//! (with a provider sink playing Twilio's and the Graph API's send APIs), in closed
//! loop (max throughput) or open loop (Poisson arrivals, no coordinated
//! omission); optionally the same load against a bare tokio-tungstenite relay
//! and a Node.js Socket.IO relay for comparison. Reports throughput, latency
//! percentiles, errors by code and the broker's RSS/CPU (and, with
//! `--thread-shares`, each broker thread's share of it); checks SLOs; draws
//! a chart; spreads its sockets over worker processes when one process would
//! hold too many. `--per-core` measures instead what a round trip costs each
//! target on one pinned core of its own (`percore`); `--durability` what
//! the journal costs Switchboard, each fsync policy against the in-memory
//! mode in the same run (`durability`).
//!
//! `cargo run --release -p loadtest -- --scenario loadtest/scenarios/smoke.toml`

mod affinity;
mod agent;
mod chart;
mod cpuwin;
mod customer;
mod dist;
mod durability;
mod echo;
mod hooksink;
mod meta;
mod net;
mod peer;
mod percore;
mod procstat;
mod progress;
mod relay;
mod report;
mod run;
mod scenario;
mod sink;
mod slo;
mod sms;
mod socketio;
mod texting;
mod twilio;
mod whatsapp;
mod workers;

use loadtest::workflow;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::parser::ValueSource;
use clap::{CommandFactory, Parser};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use dist::{parse_duration, parse_duration_or_zero, Dist};
use meta::WhatsappCfg;
use net::{Failure, Target};
use progress::{Collector, Mode, Sample, Tick};
use report::Snapshot;
use run::{Kind, Local, Plan, Setup, Slice};
use sink::{Callbacks, Sink};
use sms::SmsSide;
use twilio::TwilioCfg;
use whatsapp::WhatsappSide;

/// Sockets one harness process holds at most before `--workers auto` splits
/// the load (a process may open 20,000 files here).
const SOCKETS_PER_PROCESS: usize = 18_000;

/// The WhatsApp business number in the webhooks' metadata (the broker keys
/// threads by `phone_number_id`; this is for show).
const WHATSAPP_DISPLAY_NUMBER: &str = "15550002222";

/// Load harness for Switchboard: webchat, SMS and WhatsApp customers, agent desktops,
/// closed or open loop, with an optional baseline relay and Socket.IO peer for
/// comparison.
#[derive(Parser, Debug, Clone)]
#[command(version, args_override_self = true)]
pub struct Args {
    /// Scenario file (TOML, keys are these flags' long names in snake_case,
    /// e.g. think_time; kebab-case is accepted too); flags given on
    /// the command line override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Multiplies agents, conversations, concurrency, rates and --max-in-flight
    /// (e.g. 0.02 to try a big scenario small).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Base URL of the broker; loopback addresses only, unless --allow-remote.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Allow a --url that is not a loopback address (a staging broker, never
    /// one in production); a warning on stderr names it. Webchat only: the
    /// provider sink listens on loopback, out of a remote broker's reach.
    #[arg(long)]
    allow_remote: bool,
    /// Admin token for creating and deleting agents.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    admin_token: String,

    // --- Agents
    /// Number of agents.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Webchat capacity of each agent.
    #[arg(long, default_value_t = 5)]
    capacity: u32,
    /// SMS capacity of each agent [default: --capacity when there is SMS traffic].
    #[arg(long)]
    sms_capacity: Option<u32>,
    /// WhatsApp capacity of each agent [default: --capacity when there is
    /// WhatsApp traffic].
    #[arg(long)]
    whatsapp_capacity: Option<u32>,
    /// Offer → accept, e.g. fixed:50ms, exp:200ms, uniform:10ms..100ms.
    #[arg(long, default_value = "fixed:0ms")]
    accept_delay: Dist,
    /// Customer message → the agent's reply.
    #[arg(long, default_value = "fixed:0ms")]
    reply_delay: Dist,
    /// Wrap-up: conversation ended → complete.
    #[arg(long, default_value = "fixed:0ms")]
    handle_time: Dist,
    /// Disposition(s) for complete; several (comma-separated) are drawn at random.
    #[arg(long, default_value = "resolved")]
    disposition: String,

    // --- Customers
    /// Webchat conversations to run in total.
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// Messages per conversation (each answered by the agent) before "bye".
    #[arg(long, default_value_t = 5)]
    messages: u32,
    /// Reply received → the customer's next message.
    #[arg(long, default_value = "fixed:0ms")]
    think_time: Dist,
    /// Idle time after the last reply, before "bye" (webchat sockets stay open
    /// with heartbeats): holds conversations open for scale runs.
    #[arg(long, default_value = "0", value_parser = parse_duration_or_zero)]
    hold: Duration,
    /// WebSocket ping interval of idle customers during --hold.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Webchat customers wait only for the ack of each message, not for a
    /// reply, hold, then leave: their conversations wait in the queue. With
    /// --agents 0 the run measures the broker's memory per queued webchat
    /// conversation (session, socket, acknowledged message).
    #[arg(long)]
    queued: bool,

    // --- Load model
    /// Open loop: new webchat conversations per second (Poisson). Without it
    /// (and without --sms-rate) the run is closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: webchat customers at once [default: min(conversations, agents × capacity)].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: conversations running at once per process, at most; later
    /// arrivals are dropped and counted as errors.
    #[arg(long, default_value_t = 18_000)]
    max_in_flight: usize,
    /// SMS conversations, through signed Twilio webhooks and the provider sink.
    #[arg(long, default_value_t = 0)]
    sms_conversations: usize,
    /// Open loop: new SMS conversations per second [default: --rate].
    #[arg(long)]
    sms_rate: Option<f64>,
    /// Closed loop: SMS customers at once [default: min(sms conversations, agents × sms capacity)].
    #[arg(long)]
    sms_concurrency: Option<usize>,
    /// WhatsApp conversations, through signed Cloud API webhooks and the
    /// provider sink's Graph API.
    #[arg(long, default_value_t = 0)]
    whatsapp_conversations: usize,
    /// Open loop: new WhatsApp conversations per second [default: --rate].
    #[arg(long)]
    whatsapp_rate: Option<f64>,
    /// Closed loop: WhatsApp customers at once [default: min(whatsapp
    /// conversations, agents × whatsapp capacity)].
    #[arg(long)]
    whatsapp_concurrency: Option<usize>,
    /// Seed for arrivals and delays [default: from the clock; printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Hard limit for one target's run (setup and conversations), e.g. 90s, 10m.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: Duration,
    /// New WebSocket connections per second while ramping up (agents, then the
    /// first connection of each closed-loop customer slot); 0 = no pacing.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Longest wait for any single expected event (reply, end, readiness).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    step_timeout: Duration,
    /// Loopback source addresses to spread client sockets over (127.0.0.1, .2, ...;
    /// worker process w uses 127.0.w.1, ...) [default: one per 2,000 sockets].
    #[arg(long)]
    source_addrs: Option<usize>,
    /// Tag for agent ids and customer names [default: from the clock and pid].
    #[arg(long)]
    run_id: Option<String>,
    /// Leave the run's agents on the server instead of deleting them.
    #[arg(long)]
    keep_agents: bool,
    /// Print the first N WebSocket frames sent or received to stderr (debugging).
    #[arg(long, default_value_t = 0)]
    trace_frames: usize,

    // --- Event webhooks
    /// Serve an event webhook receiver on this loopback address for the
    /// runs against Switchboard; point the broker's `[[webhooks]]` at
    /// http://ADDR/hooks (loadtest/scenarios/webhook-broker.toml does, for
    /// 127.0.0.1:18095).
    #[arg(long)]
    webhook_sink: Option<std::net::SocketAddr>,
    /// The status the webhook sink answers every event with: 503 plays an
    /// endpoint that keeps failing, 200 a healthy one.
    #[arg(long, default_value_t = 503)]
    webhook_sink_status: u16,
    /// The secret the webhook sink checks signatures with (the broker's
    /// `[[webhooks]]` secret).
    #[arg(long, default_value = "loadtest-webhook-secret-0123456789abcdef")]
    webhook_secret: String,

    // --- Playing Twilio
    /// The provider sink's base URL; the broker's SWITCHBOARD_TWILIO_API_BASE.
    #[arg(
        long,
        env = "SWITCHBOARD_TWILIO_API_BASE",
        default_value = "http://127.0.0.1:18090"
    )]
    twilio_api_base: String,
    #[arg(
        long,
        env = "SWITCHBOARD_TWILIO_ACCOUNT_SID",
        default_value = "AC10ad7e5700000000000000000000000f"
    )]
    twilio_account_sid: String,
    #[arg(
        long,
        env = "SWITCHBOARD_TWILIO_AUTH_TOKEN",
        default_value = "loadtest-twilio-auth-token"
    )]
    twilio_auth_token: String,
    /// The business number (first of a comma-separated list).
    #[arg(long, env = "SWITCHBOARD_SMS_FROM", default_value = "+15550001111")]
    sms_from: String,
    /// The broker's public URL, which webhooks are signed over [default: --url].
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
    public_url: Option<String>,
    /// Status callbacks the sink posts back per sent SMS or WhatsApp message:
    /// none, delivered, or sent,delivered (WhatsApp: as `statuses` webhooks;
    /// read and failed too).
    #[arg(long, default_value = "delivered")]
    status_callbacks: String,
    /// Delay before each status callback.
    #[arg(long, default_value = "fixed:10ms")]
    status_delay: Dist,
    /// Print the environment the broker needs for SMS and WhatsApp runs, and exit.
    #[arg(long)]
    print_env: bool,

    // --- Playing WhatsApp (Cloud API)
    /// The Graph API base the broker calls; the broker's
    /// SWITCHBOARD_GRAPH_API_BASE [default: --twilio-api-base + /v21.0, the
    /// same sink].
    #[arg(long, env = "SWITCHBOARD_GRAPH_API_BASE")]
    graph_api_base: Option<String>,
    #[arg(
        long,
        env = "SWITCHBOARD_WHATSAPP_TOKEN",
        default_value = "loadtest-whatsapp-token"
    )]
    whatsapp_token: String,
    #[arg(
        long,
        env = "SWITCHBOARD_WHATSAPP_APP_SECRET",
        default_value = "loadtest-whatsapp-app-secret"
    )]
    whatsapp_app_secret: String,
    #[arg(
        long,
        env = "SWITCHBOARD_WHATSAPP_VERIFY_TOKEN",
        default_value = "loadtest-whatsapp-verify-token"
    )]
    whatsapp_verify_token: String,
    #[arg(
        long,
        env = "SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID",
        default_value = "109900000000001"
    )]
    whatsapp_phone_number_id: String,

    // --- Comparison and measures
    /// Run the same load against a bare tokio-tungstenite relay first (webchat
    /// only) and report Switchboard / baseline.
    #[arg(long)]
    baseline_relay: bool,
    /// Port of the baseline relay (0: any free port).
    #[arg(long, default_value_t = 0)]
    baseline_port: u16,
    /// Run the same load against a Node.js Socket.IO relay too (webchat only;
    /// needs node and npm) and report Switchboard / Socket.IO peer.
    #[arg(long)]
    socketio_peer: bool,
    /// The Socket.IO peer's directory (relay.js, package.json) [default:
    /// loadtest/peers/socketio].
    #[arg(long)]
    socketio_peer_dir: Option<PathBuf>,
    /// The broker's pid for RSS/CPU sampling [default: found by --url's port].
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Each broker thread's name and share of the broker's CPU over the
    /// measured window (the load phase; --per-core: the window), from
    /// /proc/<pid>/task; needs the broker's pid (a broker on this machine).
    #[arg(long)]
    thread_shares: bool,

    // --- Per-core mode
    /// Measure what a round trip costs each target on one core: every target
    /// (Switchboard with --workers 1, and the relays asked for) pinned to
    /// --target-cpu, the harness to the other CPUs; closed loop, round trips
    /// counted over --measure after --warmup. Reports round trips/s, the
    /// target's CPU per round trip and Switchboard / relay ratios.
    #[arg(long)]
    per_core: bool,
    /// Per-core: the load before the measured window, not counted.
    #[arg(long, default_value = "10s", value_parser = parse_duration_or_zero)]
    warmup: Duration,
    /// Per-core: the measured window.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    measure: Duration,
    /// Per-core: the CPU the targets are pinned to; the harness takes every
    /// other CPU it may use.
    #[arg(long, default_value_t = 0)]
    target_cpu: usize,
    /// Per-core: before each target, wait up to this long for other
    /// processes to leave the CPUs (under 10% of a core each); 0: only warn.
    #[arg(long, default_value = "0", value_parser = parse_duration_or_zero)]
    quiet_wait: Duration,
    /// Per-core: run a target again, up to this many times, when other
    /// processes took more than 10% of a core during its window.
    #[arg(long, default_value_t = 0)]
    retry_disturbed: u32,
    /// Per-core: start the broker from this executable (a free loopback
    /// port, a generated admin token, --workers 1, pinned) instead of using
    /// the one at --url.
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Per-core: also measure the Node.js relay on the bare `ws` package
    /// (needs node and npm).
    #[arg(long)]
    ws_peer: bool,
    /// Per-core: also measure the lean echo relay (two frames per round
    /// trip: no routing, history or acks), driven by its own probe.
    #[arg(long)]
    echo_relay: bool,
    /// The ws peer's directory (relay.js, package.json) [default:
    /// loadtest/peers/ws].
    #[arg(long)]
    ws_peer_dir: Option<PathBuf>,

    // --- Durability mode
    /// What the journal costs: Switchboard alone, started from --broker-bin
    /// once per --durability-modes mode (in memory; --data-dir with --fsync
    /// batch; with --fsync always), pinned as in --per-core, the modes
    /// interleaved over --rounds rounds; medians, spread and ratios to the
    /// in-memory mode.
    #[arg(long)]
    durability: bool,
    /// Durability and per-core: how many rounds (each runs every mode, or
    /// every target, once, in a rotated order); the figures are each one's
    /// median over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Durability: the modes compared, among memory, batch, always, never,
    /// cluster (memory is the reference and must be one).
    #[arg(long, default_value = "memory,batch,always")]
    durability_modes: String,
    /// Durability: where each run's fresh data directory is made (and
    /// removed after it) [default: the system's temp directory]. Give a
    /// directory on the disk whose fsync you want measured, not a tmpfs.
    #[arg(long)]
    durability_dir: Option<PathBuf>,
    /// Durability, mode `cluster`: the nats-server binary [default:
    /// /usr/sbin/nats-server, /usr/local/bin/nats-server, else on the PATH].
    #[arg(long)]
    nats_server: Option<PathBuf>,

    // --- Output
    /// Write the JSON report here.
    #[arg(long, alias = "json")]
    report: Option<PathBuf>,
    /// Draw throughput and latency over time as SVG here.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Targets that make the run fail, e.g. p99=5ms,p999=20ms,errors=0,min-throughput=5000,max-rss=512.
    #[arg(long)]
    slo: Option<String>,
    /// Live progress: auto (a bar on a terminal, plain lines otherwise), bar, plain, off.
    #[arg(long, default_value = "auto")]
    progress: Mode,
    /// Harness processes: auto (one per 18,000 sockets) or a number.
    #[arg(long, default_value = "auto")]
    workers: String,

    // --- Internal: a worker process's part.
    #[arg(long, hide = true)]
    worker: Option<String>,
    #[arg(long, hide = true)]
    worker_report: Option<PathBuf>,
    #[arg(long, hide = true, default_value = "switchboard")]
    target_kind: String,
    /// Internal: serve the baseline relay in this process (on
    /// --baseline-port) until stdin closes.
    #[arg(long, hide = true)]
    serve_relay: bool,
    /// Internal: serve the lean echo relay in this process until stdin
    /// closes.
    #[arg(long, hide = true)]
    serve_echo_relay: bool,
    /// Run the conversation-workflow check instead of a load
    /// (`workflow.rs`): --agents agents and --conversations webchat
    /// conversations transferring, parking, ending and being force-completed
    /// at random, then checked (one holder, no capacity overrun, no frame of
    /// a conversation not held, every task final) within --duration; exits 1
    /// on any violation.
    #[arg(long)]
    workflow: bool,
    /// With --workflow and --broker-bin (which then starts the broker with
    /// the short offers and graces the workflow needs, on a fresh data dir
    /// under the system's temp dir): kill it (`kill -9`) this many times
    /// during the chaos, each time starting it again on the same address
    /// and data dir.
    #[arg(long, default_value_t = 0)]
    kills: usize,
}

impl Args {
    /// `--url` as a target (or `url`, another target of this run: a relay).
    fn target(&self, url: &str) -> Result<Target, String> {
        Target::parse_with(url, self.allow_remote)
    }

    fn apply_scale(&mut self) {
        let f = self.scale;
        if f == 1.0 {
            return;
        }
        let n = |x: usize| ((x as f64 * f).round() as usize).max(1);
        // No agents (--queued) stays none.
        self.agents = if self.agents == 0 { 0 } else { n(self.agents) };
        self.conversations = if self.conversations == 0 {
            0
        } else {
            n(self.conversations)
        };
        self.sms_conversations = if self.sms_conversations == 0 {
            0
        } else {
            n(self.sms_conversations)
        };
        self.whatsapp_conversations = if self.whatsapp_conversations == 0 {
            0
        } else {
            n(self.whatsapp_conversations)
        };
        self.concurrency = self.concurrency.map(n);
        self.sms_concurrency = self.sms_concurrency.map(n);
        self.whatsapp_concurrency = self.whatsapp_concurrency.map(n);
        self.max_in_flight = n(self.max_in_flight);
        self.rate = self.rate.map(|r| r * f);
        self.sms_rate = self.sms_rate.map(|r| r * f);
        self.whatsapp_rate = self.whatsapp_rate.map(|r| r * f);
    }

    /// Takes the scaled value of every count and rate the command line did
    /// not give itself: `--scale` applies to the scenario and the defaults,
    /// never to a flag typed on the command line.
    fn scale_from(&mut self, scaled: &Args, given: impl Fn(&str) -> bool) {
        macro_rules! take {
            ($($f:ident),*) => {$(
                if !given(stringify!($f)) {
                    self.$f = scaled.$f.clone();
                }
            )*};
        }
        take!(
            agents,
            conversations,
            sms_conversations,
            whatsapp_conversations,
            concurrency,
            sms_concurrency,
            whatsapp_concurrency,
            max_in_flight,
            rate,
            sms_rate,
            whatsapp_rate
        );
    }

    /// The resolved counts and rates as flags, for worker processes (which
    /// then run with `--scale 1`).
    fn resolved_flags(&self) -> Vec<String> {
        let mut v = vec![
            "--scale".to_string(),
            "1".to_string(),
            "--agents".to_string(),
            self.agents.to_string(),
            "--conversations".to_string(),
            self.conversations.to_string(),
            "--sms-conversations".to_string(),
            self.sms_conversations.to_string(),
            "--whatsapp-conversations".to_string(),
            self.whatsapp_conversations.to_string(),
            "--max-in-flight".to_string(),
            self.max_in_flight.to_string(),
        ];
        for (flag, value) in [
            ("--concurrency", self.concurrency.map(|c| c.to_string())),
            (
                "--sms-concurrency",
                self.sms_concurrency.map(|c| c.to_string()),
            ),
            (
                "--whatsapp-concurrency",
                self.whatsapp_concurrency.map(|c| c.to_string()),
            ),
            ("--rate", self.rate.map(|r| r.to_string())),
            ("--sms-rate", self.sms_rate.map(|r| r.to_string())),
            ("--whatsapp-rate", self.whatsapp_rate.map(|r| r.to_string())),
        ] {
            if let Some(value) = value {
                v.push(flag.to_string());
                v.push(value);
            }
        }
        v
    }

    /// This worker process's part `(index, of)` from `--worker i/n`, if valid.
    pub fn worker_part(&self) -> Option<(usize, usize)> {
        let (i, n) = self.worker.as_deref()?.split_once('/')?;
        let (i, n) = (i.parse().ok()?, n.parse().ok()?);
        (i < n).then_some((i, n))
    }

    fn sms_capacity(&self) -> u32 {
        self.sms_capacity.unwrap_or(if self.sms_conversations > 0 {
            self.capacity
        } else {
            0
        })
    }

    fn whatsapp_capacity(&self) -> u32 {
        self.whatsapp_capacity
            .unwrap_or(if self.whatsapp_conversations > 0 {
                self.capacity
            } else {
                0
            })
    }

    fn open_loop(&self) -> bool {
        self.rate.is_some() || self.sms_rate.is_some() || self.whatsapp_rate.is_some()
    }

    /// Open loop: the SMS arrival rate (its own, else --rate, else WhatsApp's).
    fn sms_rate(&self) -> Option<f64> {
        self.sms_rate.or(self.rate).or(self.whatsapp_rate)
    }

    /// Open loop: the WhatsApp arrival rate (its own, else --rate, else SMS's).
    fn whatsapp_rate(&self) -> Option<f64> {
        self.whatsapp_rate.or(self.rate).or(self.sms_rate)
    }

    /// Whether the run has provider traffic, which needs the sink.
    fn provider_traffic(&self) -> bool {
        self.sms_conversations + self.whatsapp_conversations > 0
    }

    fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or_else(|| {
            if self.queued {
                // Nobody answers: all of them wait at once.
                self.conversations
            } else {
                self.conversations.min(self.agents * self.capacity as usize)
            }
        })
    }

    fn sms_concurrency(&self) -> usize {
        self.sms_concurrency.unwrap_or_else(|| {
            self.sms_conversations
                .min(self.agents * self.sms_capacity() as usize)
        })
    }

    fn whatsapp_concurrency(&self) -> usize {
        self.whatsapp_concurrency.unwrap_or_else(|| {
            self.whatsapp_conversations
                .min(self.agents * self.whatsapp_capacity() as usize)
        })
    }

    fn whatsapp(&self) -> WhatsappCfg {
        WhatsappCfg {
            token: self.whatsapp_token.clone(),
            app_secret: self.whatsapp_app_secret.clone(),
            verify_token: self.whatsapp_verify_token.clone(),
            phone_number_id: self.whatsapp_phone_number_id.clone(),
            display_number: WHATSAPP_DISPLAY_NUMBER.to_string(),
            graph_base: self
                .graph_api_base
                .clone()
                .unwrap_or_else(|| format!("{}/v21.0", self.twilio_api_base.trim_end_matches('/')))
                .trim_end_matches('/')
                .to_string(),
        }
    }

    /// The environment a broker needs for this harness's SMS and WhatsApp.
    fn env_line(&self) -> String {
        format!(
            "{} {}",
            self.twilio().env_line(),
            self.whatsapp().env_line()
        )
    }

    fn twilio(&self) -> TwilioCfg {
        TwilioCfg {
            account_sid: self.twilio_account_sid.clone(),
            auth_token: self.twilio_auth_token.clone(),
            from: self
                .sms_from
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            public_url: self
                .public_url
                .clone()
                .unwrap_or_else(|| self.url.clone())
                .trim_end_matches('/')
                .to_string(),
            api_base: self.twilio_api_base.trim_end_matches('/').to_string(),
        }
    }

    fn statuses(&self) -> Vec<String> {
        self.status_callbacks
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "none")
            .map(str::to_string)
            .collect()
    }

    /// WebSocket client sockets the whole run holds at most.
    fn sockets(&self) -> usize {
        self.agents
            + if self.open_loop() {
                self.conversations.min(self.max_in_flight)
            } else {
                self.concurrency()
            }
    }

    /// Worker processes for this run.
    fn worker_count(&self) -> Result<usize, String> {
        if self.workers == "auto" {
            let sockets = self.sockets();
            let n = sockets.div_ceil(SOCKETS_PER_PROCESS).max(1);
            // The baseline relay runs in this process and holds the other end
            // of every client socket: alone, this process would need both.
            let relay_too = self.baseline_relay && 2 * sockets > SOCKETS_PER_PROCESS;
            return Ok(if relay_too { n.max(2) } else { n });
        }
        let n = self
            .workers
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| format!("--workers {:?}: use auto or 1..=64", self.workers))?;
        if n == 1 && self.baseline_relay && 2 * self.sockets() > SOCKETS_PER_PROCESS {
            return Err(format!(
                "--baseline-relay with --workers 1: this process would hold both ends of \
                 {} sockets, past its open-file limit; use --workers 2 or more (or auto)",
                self.sockets()
            ));
        }
        Ok(n)
    }

    /// Keeps every count and time bounded.
    fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            self.webhook_sink.is_none_or(|a| a.ip().is_loopback()),
            "--webhook-sink must be a loopback address (127.0.0.1:PORT)",
        )?;
        check(
            self.scale > 0.0 && self.scale <= 100.0,
            "--scale must be in (0, 100]",
        )?;
        check(
            (1..=100_000).contains(&self.agents) || (self.queued && self.agents == 0),
            "--agents must be 1..=100000 (0 only with --queued)",
        )?;
        check(
            !(self.queued && (self.baseline_relay || self.socketio_peer)),
            "--queued is for the broker alone: the relays have no queue",
        )?;
        check(
            !(self.queued && self.provider_traffic()),
            "--queued is for webchat customers: run it without SMS or WhatsApp conversations",
        )?;
        check(
            (1..=1_000).contains(&self.capacity),
            "--capacity must be 1..=1000",
        )?;
        check(
            self.sms_capacity() <= 1_000,
            "--sms-capacity must be at most 1000",
        )?;
        check(
            self.whatsapp_capacity() <= 1_000,
            "--whatsapp-capacity must be at most 1000",
        )?;
        check(
            self.conversations <= 10_000_000
                && self.sms_conversations <= 10_000_000
                && self.whatsapp_conversations <= 10_000_000,
            "--conversations, --sms-conversations and --whatsapp-conversations must be at most 10000000",
        )?;
        check(
            self.conversations + self.sms_conversations + self.whatsapp_conversations > 0,
            "nothing to do: --conversations, --sms-conversations and --whatsapp-conversations are all 0",
        )?;
        check(
            (1..=10_000).contains(&self.messages),
            "--messages must be 1..=10000",
        )?;
        check(
            self.concurrency() <= 1_000_000,
            "--concurrency must be at most 1000000",
        )?;
        check(
            self.conversations == 0 || self.open_loop() || self.concurrency() >= 1,
            "--concurrency must be at least 1",
        )?;
        check(
            (1..=1_000_000).contains(&self.max_in_flight),
            "--max-in-flight must be 1..=1000000",
        )?;
        for (name, r) in [
            ("--rate", self.rate),
            ("--sms-rate", self.sms_rate),
            ("--whatsapp-rate", self.whatsapp_rate),
        ] {
            if let Some(r) = r {
                check(
                    r.is_finite() && r > 0.0 && r <= 1_000_000.0,
                    &format!("{name} must be in (0, 1000000]"),
                )?;
            }
        }
        check(
            self.duration <= Duration::from_secs(24 * 3600),
            "--duration must be at most 24h",
        )?;
        check(
            self.hold < self.duration,
            "--hold must be shorter than --duration",
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
        check(
            !self.disposition.trim().is_empty(),
            "--disposition must not be empty",
        )?;
        for s in self.statuses() {
            check(
                ["sent", "delivered", "read", "failed", "undelivered"].contains(&s.as_str()),
                "--status-callbacks: use none or a list of sent, delivered, read, failed, undelivered",
            )?;
        }
        if let Some(slo) = &self.slo {
            slo::parse(slo)?;
        }
        if self.durability {
            self.validate_per_core()?;
            self.validate_durability()?;
        } else if self.per_core {
            self.validate_per_core()?;
        } else {
            check(
                self.broker_bin.is_none(),
                "--broker-bin starts the broker for the per-core and durability modes only \
                 (--per-core, --durability); otherwise start it yourself and give --url",
            )?;
            check(
                !self.ws_peer,
                "--ws-peer runs in the per-core mode only (--per-core)",
            )?;
            self.worker_count()?;
        }
        let target = self.target(&self.url)?;
        check(
            !(target.remote && self.thread_shares),
            "--thread-shares reads the broker's threads in /proc on this machine: not for a \
             remote broker",
        )?;
        check(
            !(target.remote && self.provider_traffic()),
            "SMS and WhatsApp runs need the broker to reach the harness's provider sink, \
             which listens on loopback only: against a remote broker (--allow-remote) run \
             webchat only",
        )?;
        if self.sms_conversations > 0 {
            Target::parse(&self.twilio_api_base).map_err(|e| format!("--twilio-api-base: {e}"))?;
            check(
                twilio::valid_e164(&self.twilio().from),
                "--sms-from must be an E.164 number (+ and 7 to 15 digits)",
            )?;
        }
        if self.provider_traffic() {
            // The sink serves both APIs, whichever the run uses.
            Target::parse(&self.twilio_api_base).map_err(|e| format!("--twilio-api-base: {e}"))?;
            let wa = self.whatsapp();
            let graph =
                Target::parse(&wa.graph_base).map_err(|e| format!("--graph-api-base: {e}"))?;
            // The broker posts to {base}/{phone_number_id}/messages; the sink
            // takes an optional version segment before the id.
            let id = &wa.phone_number_id;
            check(
                (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()),
                "--whatsapp-phone-number-id must be 1 to 32 digits",
            )?;
            check(
                meta::is_send_path(
                    &format!("{}/{id}/messages", graph.base.path().trim_end_matches('/')),
                    id,
                ),
                "--graph-api-base: its path must be empty or one version segment like /v21.0",
            )?;
            for (name, v) in [
                ("--whatsapp-token", &wa.token),
                ("--whatsapp-app-secret", &wa.app_secret),
                ("--whatsapp-verify-token", &wa.verify_token),
            ] {
                check(
                    !v.is_empty() && v.len() <= 1_000 && !v.contains(char::is_whitespace),
                    &format!("{name} must be 1 to 1000 characters without spaces"),
                )?;
            }
        }
        check(self.admin_token.len() <= 1_000, "--admin-token is too long")?;
        Ok(())
    }

    /// What the durability mode needs beyond the per-core mode's checks.
    fn validate_durability(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("--durability: {what}"))
            }
        };
        check(!self.per_core, "a mode of its own: not with --per-core")?;
        check(
            self.broker_bin.is_some(),
            "needs --broker-bin (it starts the broker once per mode and round)",
        )?;
        check(
            !(self.baseline_relay || self.echo_relay || self.ws_peer || self.socketio_peer),
            "Switchboard only: no --baseline-relay, --echo-relay, --ws-peer or --socketio-peer",
        )?;
        check((1..=20).contains(&self.rounds), "--rounds must be 1..=20")?;
        durability::parse_modes(&self.durability_modes)
            .map_err(|e| format!("--durability: --durability-modes: {e}"))?;
        Ok(())
    }

    /// What the per-core mode (and the durability mode, which runs like it)
    /// cannot do.
    fn validate_per_core(&self) -> Result<(), String> {
        let mode = if self.durability {
            "--durability"
        } else {
            "--per-core"
        };
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{mode}: {what}"))
            }
        };
        check(
            !self.open_loop(),
            "the load is closed loop: no --rate, --sms-rate or --whatsapp-rate",
        )?;
        check(
            !self.provider_traffic(),
            "webchat only: no --sms-conversations or --whatsapp-conversations",
        )?;
        check(
            !self.allow_remote,
            "it measures processes on this machine: no --allow-remote",
        )?;
        check(
            self.conversations > 0,
            "needs --conversations (the customers at once)",
        )?;
        check(
            !(self.broker_bin.is_some() && self.broker_pid.is_some()),
            "give --broker-bin (the harness starts the broker) or --broker-pid (you did), not both",
        )?;
        check(
            self.measure >= Duration::from_secs(1) && self.measure <= Duration::from_secs(3600),
            "--measure must be 1s..=1h",
        )?;
        check(
            self.warmup <= Duration::from_secs(3600),
            "--warmup must be at most 1h",
        )?;
        check(self.target_cpu < 1024, "--target-cpu must be below 1024")?;
        check(
            self.quiet_wait <= Duration::from_secs(3600) && self.retry_disturbed <= 10,
            "--quiet-wait must be at most 1h and --retry-disturbed at most 10",
        )?;
        check(
            self.sockets() <= SOCKETS_PER_PROCESS,
            &format!(
                "the harness runs in one process here: at most {SOCKETS_PER_PROCESS} sockets \
                 (agents + conversations), this run needs {}",
                self.sockets()
            ),
        )?;
        check(
            self.chart.is_none(),
            "no --chart (the report is figures per target)",
        )?;
        check(
            self.slo.is_none(),
            "no --slo (the goals are the ratios in the report)",
        )
    }

    fn plan(&self) -> Plan {
        Plan {
            messages: self.messages,
            think: self.think_time,
            hold: self.hold,
            heartbeat: self.heartbeat,
            queued: self.queued,
            accept_delay: self.accept_delay,
            reply_delay: self.reply_delay,
            handle_time: self.handle_time,
            dispositions: self
                .disposition
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            capacity: self.capacity,
            sms_capacity: self.sms_capacity(),
            whatsapp_capacity: self.whatsapp_capacity(),
            track_delivery: self.statuses().iter().any(|s| s == "delivered"),
        }
    }

    /// Worker `i` of `n`'s share of the load against `kind`.
    fn slice(&self, i: usize, n: usize, kind: Kind) -> Slice {
        let share = |total: usize| total / n + usize::from(i < total % n);
        // Provider customers hold no socket: all in worker 0, with the sink.
        let sms_here = kind == Kind::Switchboard && i == 0;
        let web_rate = self
            .rate
            .or(self.sms_rate)
            .or(self.whatsapp_rate)
            .map(|r| r / n as f64);
        Slice {
            agents: (0..self.agents).filter(|a| a % n == i).collect(),
            webchat: (0..self.conversations).filter(|c| c % n == i).collect(),
            sms: if sms_here {
                (0..self.sms_conversations).collect()
            } else {
                Vec::new()
            },
            web_concurrency: share(self.concurrency()),
            whatsapp: if sms_here {
                (0..self.whatsapp_conversations).collect()
            } else {
                Vec::new()
            },
            sms_concurrency: if sms_here { self.sms_concurrency() } else { 0 },
            whatsapp_concurrency: if sms_here {
                self.whatsapp_concurrency()
            } else {
                0
            },
            web_rate: if self.open_loop() { web_rate } else { None },
            sms_rate: if self.open_loop() {
                self.sms_rate()
            } else {
                None
            },
            whatsapp_rate: if self.open_loop() {
                self.whatsapp_rate()
            } else {
                None
            },
            max_in_flight: self.max_in_flight,
        }
    }

    /// The run's conversations against `kind` (the relays run no SMS or WhatsApp).
    fn requested(&self, kind: Kind) -> u64 {
        (self.conversations
            + if kind == Kind::Switchboard {
                self.sms_conversations + self.whatsapp_conversations
            } else {
                0
            }) as u64
    }

    fn config_json(&self, workers: usize) -> Value {
        json!({
            "url": self.url,
            "mode": if self.open_loop() { "open" } else { "closed" },
            "agents": self.agents,
            "capacity": self.capacity,
            "sms_capacity": self.sms_capacity(),
            "whatsapp_capacity": self.whatsapp_capacity(),
            "conversations": self.conversations,
            "sms_conversations": self.sms_conversations,
            "whatsapp_conversations": self.whatsapp_conversations,
            "messages": self.messages,
            "concurrency": (!self.open_loop()).then(|| self.concurrency()),
            "sms_concurrency": (!self.open_loop() && self.sms_conversations > 0).then(|| self.sms_concurrency()),
            "rate": self.rate,
            "whatsapp_concurrency": (!self.open_loop() && self.whatsapp_conversations > 0).then(|| self.whatsapp_concurrency()),
            "sms_rate": if self.open_loop() && self.sms_conversations > 0 { self.sms_rate() } else { None },
            "whatsapp_rate": if self.open_loop() && self.whatsapp_conversations > 0 { self.whatsapp_rate() } else { None },
            "max_in_flight": self.max_in_flight,
            "think_time": self.think_time.to_string(),
            "hold_seconds": self.hold.as_secs_f64(),
            "queued": self.queued,
            "accept_delay": self.accept_delay.to_string(),
            "reply_delay": self.reply_delay.to_string(),
            "handle_time": self.handle_time.to_string(),
            "disposition": self.disposition,
            "duration_seconds": self.duration.as_secs_f64(),
            "ramp_per_second": self.ramp,
            "step_timeout_seconds": self.step_timeout.as_secs_f64(),
            "status_callbacks": self.statuses(),
            "scale": self.scale,
            "workers": workers,
            "slo": self.slo,
        })
    }

    fn setup(
        &self,
        kind: Kind,
        url: &str,
        run_id: &str,
        seed: u64,
        sink: Option<Arc<Sink>>,
    ) -> Result<Setup, String> {
        let mut target = self.target(url)?;
        target.socketio = kind == Kind::SocketIo;
        Ok(Setup {
            target,
            kind,
            admin_token: self.admin_token.clone(),
            run_id: run_id.to_string(),
            seed,
            plan: self.plan(),
            step_timeout: self.step_timeout,
            duration: self.duration,
            // --ramp is the whole harness's rate: each worker paces its share.
            ramp: self.ramp / self.worker_part().map_or(1, |(_, n)| n) as f64,
            source_addrs: self.source_addrs,
            worker_index: self.worker_part().map_or(0, |(i, _)| i),
            keep_agents: self.keep_agents,
            sms: sink
                .clone()
                .filter(|_| self.sms_conversations > 0)
                .map(|sink| SmsSide {
                    cfg: self.twilio(),
                    sink,
                }),
            whatsapp: sink
                .filter(|_| self.whatsapp_conversations > 0)
                .map(|sink| WhatsappSide {
                    cfg: self.whatsapp(),
                    sink,
                }),
        })
    }
}

/// The webhook sink, one per process, started on first use (`--webhook-sink`).
static HOOK_SINK: OnceCell<Arc<hooksink::HookSink>> = OnceCell::const_new();

/// The webhook sink, its counts starting from now, if the run has one.
async fn hook_sink_for(args: &Args) -> Result<Option<Arc<hooksink::HookSink>>, String> {
    let Some(addr) = args.webhook_sink else {
        return Ok(None);
    };
    let sink = HOOK_SINK
        .get_or_try_init(|| {
            hooksink::HookSink::start(addr, args.webhook_sink_status, args.webhook_secret.clone())
        })
        .await?
        .clone();
    println!(
        "webhook sink on http://{}/hooks, answering {}",
        sink.addr, args.webhook_sink_status
    );
    sink.begin_run();
    Ok(Some(sink))
}

/// The provider sink, one per process, started on first use.
static SINK: OnceCell<Arc<Sink>> = OnceCell::const_new();

/// The sink, ready for a run against `target` with this run's callbacks.
async fn sink_for(args: &Args, target: &Target) -> Result<Arc<Sink>, String> {
    let sink = SINK
        .get_or_try_init(|| Sink::start(args.twilio(), args.whatsapp()))
        .await?
        .clone();
    let (cfg, wa) = (args.twilio(), args.whatsapp());
    if sink.addr == sink.graph_addr {
        println!(
            "provider sink (Twilio and WhatsApp Graph send APIs) on http://{}",
            sink.addr
        );
    } else {
        println!(
            "provider sink: Twilio send API on http://{}, WhatsApp Graph send API on http://{}",
            sink.addr, sink.graph_addr
        );
    }
    if sink.cfg.api_base != cfg.api_base || sink.cfg.auth_token != cfg.auth_token {
        return Err("a scenario's runs must share one Twilio configuration".into());
    }
    if sink.wa.graph_base != wa.graph_base
        || sink.wa.token != wa.token
        || sink.wa.app_secret != wa.app_secret
        || sink.wa.phone_number_id != wa.phone_number_id
    {
        return Err("a scenario's runs must share one WhatsApp configuration".into());
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    sink.begin_run(Some(Callbacks {
        target: target.clone(),
        statuses: args.statuses(),
        delay: args.status_delay,
        client,
    }));
    Ok(sink)
}

/// The long flag names a scenario key may name (snake_case or as here):
/// every visible flag and alias but `--scenario`.
fn scenario_flags() -> Vec<String> {
    Args::command()
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().into_iter().flatten())
        })
        .filter(|l| !matches!(*l, "scenario" | "help" | "version"))
        .map(str::to_string)
        .collect()
}

/// The warning for a target that is not on loopback (`--allow-remote`).
fn remote_warning(target: &Target) -> Option<String> {
    target.remote.then(|| {
        format!(
            "loadtest: WARNING: --allow-remote: the load goes to {} ({}), not to this \
             machine's loopback. Make sure it is a broker you may load (staging, never \
             production); the run creates and deletes agents there.",
            target.base, target.addr
        )
    })
}

fn new_run_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs:x}-{:x}", std::process::id())
}

/// The flags the workflow needs of a broker it starts itself.
const WORKFLOW_BROKER_FLAGS: &[&str] = &[
    "--offer-timeout",
    "2s",
    "--reoffer-cooldown",
    "300ms",
    "--disconnect-grace",
    "1s",
    "--customer-grace",
    "1s",
];

/// Run it against a broker of its own (`bin`, on a fresh data dir under the
/// system's temp dir, on a free loopback port), killed `kills` times during
/// the chaos and started again each time on the same port, token and data
/// dir. `options` makes the run's options from the broker's URL, its admin
/// token and the fault.
async fn workflow_with_own_broker(
    bin: &std::path::Path,
    kills: usize,
    options: impl FnOnce(String, String, Option<(workflow::Fault, usize)>) -> workflow::Options,
) -> Result<(), String> {
    let root = std::env::temp_dir().join(format!("switchboard-workflow-{}", new_run_id()));
    let data = root.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let log = root.join("broker.log");
    let data_arg = data.display().to_string();
    let mut flags: Vec<String> = WORKFLOW_BROKER_FLAGS
        .iter()
        .map(|f| f.to_string())
        .collect();
    flags.extend(["--data-dir".into(), data_arg]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = peer::start_broker(bin, &args, &[], &log).await?;
    let (url, token, port) = (first.url.clone(), first.token.clone(), first.port);
    let broker = std::sync::Arc::new(tokio::sync::Mutex::new(Some(first)));
    let fault: Option<(workflow::Fault, usize)> = (kills > 0).then(|| {
        let (broker, bin, token, log) =
            (broker.clone(), bin.to_owned(), token.clone(), log.clone());
        let fault: workflow::Fault = Box::new(move || {
            let (broker, bin, token, log, flags) = (
                broker.clone(),
                bin.clone(),
                token.clone(),
                log.clone(),
                flags.clone(),
            );
            Box::pin(async move {
                let mut slot = broker.lock().await;
                if let Some(mut old) = slot.take() {
                    old.kill().await;
                }
                let args: Vec<&str> = flags.iter().map(String::as_str).collect();
                match peer::start_broker_on(&bin, port, &token, &args, &[], &log).await {
                    Ok(again) => *slot = Some(again),
                    // Reported by the clients, which then find no broker.
                    Err(e) => eprintln!("loadtest: --workflow: restarting the broker: {e}"),
                }
            })
        });
        (fault, kills)
    });
    let outcome = workflow::run(options(url, token, fault)).await;
    if let Some(last) = broker.lock().await.take() {
        last.stop().await;
    }
    if outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!(
            "loadtest: --workflow: the broker's log and data dir are kept in {}",
            root.display()
        );
    }
    outcome
}

/// `--workflow`: against the broker at --url, or one of its own
/// (`--broker-bin`, killed `--kills` times along the way).
async fn workflow_main(args: &Args) -> ExitCode {
    let options = |base, admin, fault| workflow::Options {
        base,
        customer_base: None,
        admin,
        agents: args.agents,
        conversations: args.conversations,
        limit: args.duration,
        seed: args.seed.unwrap_or(1),
        chaos: workflow::CHAOS,
        fault,
    };
    let outcome = match &args.broker_bin {
        Some(bin) => workflow_with_own_broker(bin, args.kills, options).await,
        None => {
            if args.admin_token.is_empty() {
                eprintln!("loadtest: --workflow needs --admin-token or SWITCHBOARD_ADMIN_TOKEN");
                return ExitCode::from(2);
            }
            if args.kills > 0 {
                eprintln!("loadtest: --kills needs --broker-bin (the harness restarts the broker)");
                return ExitCode::from(2);
            }
            if let Err(e) = args.target(&args.url) {
                eprintln!("loadtest: --url: {e}");
                return ExitCode::from(2);
            }
            workflow::run(options(args.url.clone(), args.admin_token.clone(), None)).await
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: --workflow failed:\n{e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Before the runtime starts its threads, so that it sizes itself to the
    // CPUs the per-core mode leaves to the harness.
    percore::pin_early(&argv);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(real_main(argv))
}

async fn real_main(argv: Vec<String>) -> ExitCode {
    report::now_nanos();
    let first = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    net::trace_frames(first.trace_frames);
    if first.serve_relay {
        return match relay::serve_main(first.baseline_port, first.capacity).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest: --serve-relay: {e}");
                ExitCode::from(2)
            }
        };
    }
    if first.serve_echo_relay {
        return match echo::serve_main().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest: --serve-echo-relay: {e}");
                ExitCode::from(2)
            }
        };
    }
    if first.worker.is_some() {
        return workers::child_main(first).await;
    }
    if first.workflow {
        return workflow_main(&first).await;
    }
    let specs = match &first.scenario {
        Some(path) => {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("scenario")
                .to_string();
            match std::fs::read_to_string(path)
                .map_err(|e| format!("--scenario {}: {e}", path.display()))
                .and_then(|text| scenario::parse(&text, &name, &scenario_flags()))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("loadtest: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => vec![scenario::RunSpec {
            name: "run".into(),
            args: Vec::new(),
        }],
    };
    let multi = specs.len() > 1;
    // What the command line itself gave (not the scenario, env or defaults).
    let user = match Args::command().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let mut worst = 0u8;
    let mut all = Vec::new();
    for spec in specs {
        // Scenario flags first, then the command line's, which win.
        let mut full = vec![argv[0].clone()];
        full.extend(spec.args.iter().cloned());
        full.extend(argv[1..].iter().cloned());
        let mut args = match Args::try_parse_from(&full) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("loadtest: scenario run {}: {e}", spec.name);
                return ExitCode::from(2);
            }
        };
        if args.scale != 1.0 {
            // The scenario and defaults alone, scaled.
            let mut base = vec![argv[0].clone()];
            base.extend(spec.args.iter().cloned());
            base.extend(["--scale".to_string(), args.scale.to_string()]);
            match Args::try_parse_from(&base) {
                Ok(mut scaled) => {
                    scaled.apply_scale();
                    args.scale_from(&scaled, |id| {
                        user.value_source(id) == Some(ValueSource::CommandLine)
                    });
                }
                Err(e) => {
                    eprintln!("loadtest: scenario run {}: {e}", spec.name);
                    return ExitCode::from(2);
                }
            }
        }
        if let Err(e) = args.validate() {
            eprintln!(
                "loadtest: {}{e}",
                if multi {
                    format!("run {}: ", spec.name)
                } else {
                    String::new()
                }
            );
            return ExitCode::from(2);
        }
        if args.print_env {
            println!("{}", args.env_line());
            return ExitCode::SUCCESS;
        }
        if multi {
            println!("=== scenario run {} ===", spec.name);
        }
        let outcome = if args.durability {
            durability::run(&spec.name, &args).await
        } else if args.per_core {
            percore::run(&spec.name, &args).await
        } else {
            orchestrate(&spec.name, &args, &full).await
        };
        match outcome {
            Ok(report) => {
                let ok = report["ok"].as_bool() == Some(true);
                if !ok {
                    worst = worst.max(1);
                }
                if let Err(e) = write_outputs(&args, &report, multi.then_some(spec.name.as_str())) {
                    eprintln!("loadtest: {e}");
                    worst = 2;
                }
                all.push(report);
            }
            Err(e) => {
                eprintln!("loadtest: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if multi {
        let verdicts: Vec<String> = all
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["name"].as_str().unwrap_or("?"),
                    if r["ok"].as_bool() == Some(true) {
                        "OK"
                    } else {
                        "FAILED"
                    }
                )
            })
            .collect();
        println!("scenario: {}", verdicts.join(", "));
    }
    ExitCode::from(worst)
}

/// `out.json` → `out-<name>.json` when a scenario has several runs.
fn with_suffix(path: &Path, name: Option<&str>) -> PathBuf {
    let Some(name) = name else {
        return path.to_path_buf();
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let file = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{name}.{ext}"),
        None => format!("{stem}-{name}"),
    };
    path.with_file_name(file)
}

fn write_outputs(args: &Args, report: &Value, name: Option<&str>) -> Result<(), String> {
    if let Some(path) = &args.report {
        let path = with_suffix(path, name);
        let text = serde_json::to_string_pretty(report).expect("report serializes");
        std::fs::write(&path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    if let Some(path) = &args.chart {
        let path = with_suffix(path, name);
        let timeline = |r: &Value| -> Vec<Sample> {
            r["timeline"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample {
                    t: s["t"].as_f64().unwrap_or(0.0),
                    msgs_per_s: s["msgs_per_s"].as_f64().unwrap_or(0.0),
                    p50: s["p50_ms"].as_f64(),
                    p99: s["p99_ms"].as_f64(),
                    p999: s["p999_ms"].as_f64(),
                    ..Sample::default()
                })
                .collect()
        };
        let mut series = Vec::new();
        if report["switchboard"].is_object() {
            series.push(("switchboard".to_string(), timeline(&report["switchboard"])));
            for (kind, label) in [
                (Kind::Baseline, "baseline relay"),
                (Kind::SocketIo, "Socket.IO peer"),
            ] {
                if report[kind.name()].is_object() {
                    series.push((label.to_string(), timeline(&report[kind.name()])));
                }
            }
        } else {
            series.push(("switchboard".to_string(), timeline(report)));
        }
        chart::draw(&path, report["name"].as_str().unwrap_or("run"), &series)?;
        println!("chart: {}", path.display());
    }
    Ok(())
}

/// One run of a scenario: the baseline relay and the Socket.IO peer (if asked)
/// and Switchboard, each with the same load; returns the report.
async fn orchestrate(name: &str, args: &Args, argv: &[String]) -> Result<Value, String> {
    let run_id = args.run_id.clone().unwrap_or_else(new_run_id);
    let seed = args
        .seed
        .unwrap_or_else(|| report::now_nanos() % 1_000_000_007);
    let workers = args.worker_count()?;
    let target = args.target(&args.url)?;
    if args.admin_token.is_empty() {
        return Err("needs --admin-token or SWITCHBOARD_ADMIN_TOKEN".into());
    }
    if let Some(warning) = remote_warning(&target) {
        eprintln!("{warning}");
    }
    println!(
        "run {run_id} seed {seed}: {} agents x cap {} (sms {}, whatsapp {}), {} webchat + {} SMS + {} WhatsApp conversations x {} messages, {}, {} worker process(es) -> {}",
        args.agents,
        args.capacity,
        args.sms_capacity(),
        args.whatsapp_capacity(),
        args.conversations,
        args.sms_conversations,
        args.whatsapp_conversations,
        args.messages,
        if args.open_loop() {
            format!(
                "open loop at {}/s webchat{}{}",
                args.rate.or(args.sms_rate).or(args.whatsapp_rate).unwrap_or(0.0),
                if args.sms_conversations > 0 {
                    format!(" + {}/s SMS", args.sms_rate().unwrap_or(0.0))
                } else {
                    String::new()
                },
                if args.whatsapp_conversations > 0 {
                    format!(" + {}/s WhatsApp", args.whatsapp_rate().unwrap_or(0.0))
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "closed loop, {} customers at once",
                args.concurrency()
                    + if args.sms_conversations > 0 { args.sms_concurrency() } else { 0 }
                    + if args.whatsapp_conversations > 0 { args.whatsapp_concurrency() } else { 0 }
            )
        },
        workers,
        target.base,
    );
    if args.sms_conversations > 0 {
        println!(
            "SMS: the broker must run with\n  {}",
            args.twilio().env_line()
        );
    }
    if args.whatsapp_conversations > 0 {
        println!(
            "WhatsApp: the broker must run with\n  {}",
            args.whatsapp().env_line()
        );
    }
    // A remote broker's port says nothing about the processes here.
    let pid = args.broker_pid.or_else(|| {
        (!target.remote)
            .then(|| procstat::pid_listening_on(target.addr.port()))
            .flatten()
    });
    match pid {
        Some(p) => println!("sampling broker pid {p} (RSS, CPU)"),
        None if target.remote => println!("remote broker: its RSS and CPU are not sampled"),
        None => println!("broker pid not found (give --broker-pid to sample RSS and CPU)"),
    }

    // (kind, run, the pid sampled for RSS and CPU), the relays first.
    let mut runs: Vec<(Kind, TargetRun, Option<u32>)> = Vec::new();
    if args.baseline_relay {
        if args.conversations == 0 {
            println!("baseline relay skipped: it runs webchat only and this run has none");
        } else {
            let relay = relay::start(args.baseline_port, args.capacity).await?;
            let url = format!("http://{}", relay.addr);
            println!("baseline relay on {url}");
            let r = run_target(
                args,
                argv,
                Kind::Baseline,
                &url,
                &run_id_for(&run_id, Kind::Baseline),
                seed,
                None,
                workers,
            )
            .await?;
            drop(relay);
            runs.push((Kind::Baseline, r, None));
        }
    }
    if args.socketio_peer {
        if args.conversations == 0 {
            println!("Socket.IO peer skipped: it runs webchat only and this run has none");
        } else {
            let peer =
                socketio::start(args.socketio_peer_dir.as_deref(), args.capacity, None).await?;
            let url = format!("http://{}", peer.addr);
            println!("Socket.IO peer (node pid {}) on {url}", peer.pid);
            let peer_pid = Some(peer.pid);
            let r = run_target(
                args,
                argv,
                Kind::SocketIo,
                &url,
                &run_id_for(&run_id, Kind::SocketIo),
                seed,
                peer_pid,
                workers,
            )
            .await;
            peer.stop().await;
            runs.push((Kind::SocketIo, r?, peer_pid));
        }
    }
    let sw = run_target(
        args,
        argv,
        Kind::Switchboard,
        &args.url,
        &run_id,
        seed,
        pid,
        workers,
    )
    .await?;
    runs.push((Kind::Switchboard, sw, pid));

    let mut out = Vec::new();
    for (kind, r, pid) in &runs {
        let (kind, pid) = (*kind, *pid);
        let mut rep = report::measurements_json(&r.snap, args.requested(kind));
        rep["name"] = json!(name);
        rep["target"] = json!(kind.name());
        rep["mode"] = json!(if args.open_loop() { "open" } else { "closed" });
        rep["run_id"] = json!(run_id_for(&run_id, kind));
        rep["seed"] = json!(seed);
        rep["config"] = args.config_json(workers);
        rep["wall_seconds"] = json!(r.wall.as_secs_f64());
        rep["timeline"] = Value::Array(r.samples.iter().map(Sample::to_json).collect());
        match kind {
            Kind::Switchboard => {
                rep["broker"] = progress::broker_json(pid, &r.samples, 0.2);
                if !r.threads.is_null() {
                    rep["broker"]["thread_shares"] = r.threads.clone();
                }
                rep["server_stats"] = r.server_stats.clone().unwrap_or(Value::Null);
                if let Some(hooks) = &r.webhook_sink {
                    rep["webhook_sink"] = hooks.clone();
                }
                if let Some(sink) = &r.sink {
                    let (sms, wa) = split_sink_figures(sink);
                    if args.sms_conversations > 0 {
                        rep["sms"] = json!({"sink": sms, "broker_env": args.twilio().env_line()});
                    }
                    if args.whatsapp_conversations > 0 {
                        rep["whatsapp"] =
                            json!({"sink": wa, "broker_env": args.whatsapp().env_line()});
                    }
                }
            }
            // The node process's RSS and CPU, sampled like the broker's.
            Kind::SocketIo => {
                rep["peer_process"] = progress::broker_json(pid, &r.samples, 0.2);
                if !r.threads.is_null() {
                    rep["peer_process"]["thread_shares"] = r.threads.clone();
                }
            }
            Kind::Baseline | Kind::Ws | Kind::Echo => {}
        }
        // Queued conversations are left by their customers: no task completes.
        let tasks = if args.queued { 0 } else { args.requested(kind) };
        let complete = report::complete(&r.snap, args.requested(kind), tasks, args.agents as u64);
        let slo_results = match (&args.slo, kind) {
            (Some(s), Kind::Switchboard) => slo::evaluate(&slo::parse(s)?, &rep),
            _ => Vec::new(),
        };
        let slo_ok = slo_results
            .iter()
            .all(|t| t["pass"].as_bool() == Some(true));
        rep["complete"] = json!(complete);
        rep["slo"] = Value::Array(slo_results);
        rep["ok"] = json!(complete && slo_ok);
        print!("{}", report::human(&rep));
        out.push((kind, rep));
    }
    let (_, sw_rep) = out.pop().expect("switchboard report");
    if out.is_empty() {
        return Ok(sw_rep);
    }
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let figures = |r: &Value| json!({"msgs_per_s": r["messages"]["per_second"], "p50_ms": r["latency_ms"]["message"]["p50"], "p99_ms": r["latency_ms"]["message"]["p99"]});
    let pick = |r: &Value, q: &str| match q {
        "throughput" => r["messages"]["per_second"].clone(),
        p => r["latency_ms"]["message"][p].clone(),
    };
    let mut comparison = json!({ "switchboard": figures(&sw_rep) });
    let mut notes = Vec::new();
    let mut top = json!({ "name": name, "ok": sw_rep["ok"] });
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for (kind, rep) in out {
        // The baseline's ratios keep their original, unprefixed keys.
        let (prefix, label, note) = match kind {
            Kind::SocketIo => (
                "socketio_",
                "Socket.IO peer",
                "socketio: Node.js relay on socket.io (loadtest/peers/socketio) in its own process, WebSocket transport only, webchat only",
            ),
            _ => (
                "",
                "baseline",
                "baseline: bare tokio-tungstenite relay in the harness process, webchat only",
            ),
        };
        for q in ["throughput", "p50", "p99"] {
            comparison[format!("{prefix}{q}_ratio")] = ratio(&pick(&sw_rep, q), &pick(&rep, q));
        }
        comparison[kind.name()] = figures(&rep);
        notes.push(note);
        println!(
            "Switchboard / {label}: throughput {:.0} / {:.0} msg/s = {:.2}x; p50 {:.2} / {:.2} ms = {:.2}x; p99 {:.2} / {:.2} ms = {:.2}x",
            f(&sw_rep["messages"]["per_second"]),
            f(&rep["messages"]["per_second"]),
            f(&comparison[format!("{prefix}throughput_ratio")]),
            f(&sw_rep["latency_ms"]["message"]["p50"]),
            f(&rep["latency_ms"]["message"]["p50"]),
            f(&comparison[format!("{prefix}p50_ratio")]),
            f(&sw_rep["latency_ms"]["message"]["p99"]),
            f(&rep["latency_ms"]["message"]["p99"]),
            f(&comparison[format!("{prefix}p99_ratio")]),
        );
        top[kind.name()] = rep;
    }
    notes.push("SMS and WhatsApp traffic is not part of the comparison");
    comparison["note"] = json!(notes.join("; "));
    top["switchboard"] = sw_rep;
    top["comparison"] = comparison;
    Ok(top)
}

/// The sink's figures as (Twilio's, WhatsApp's), the latter without their
/// prefix.
fn split_sink_figures(figures: &Value) -> (Value, Value) {
    let mut sms = serde_json::Map::new();
    let mut wa = serde_json::Map::new();
    for (k, v) in figures.as_object().into_iter().flatten() {
        match k.strip_prefix(sink::WHATSAPP_PREFIX) {
            Some(rest) => wa.insert(rest.to_string(), v.clone()),
            None => sms.insert(k.clone(), v.clone()),
        };
    }
    (Value::Object(sms), Value::Object(wa))
}

/// The run id a target's agents and customers are named with: the relays'
/// get a suffix, so that no two targets of one run share names.
fn run_id_for(run_id: &str, kind: Kind) -> String {
    match kind {
        Kind::Switchboard => run_id.to_string(),
        Kind::Baseline => format!("{run_id}b"),
        Kind::SocketIo => format!("{run_id}s"),
        Kind::Ws => format!("{run_id}w"),
        Kind::Echo => format!("{run_id}e"),
    }
}

/// What one target's run produced.
pub struct TargetRun {
    snap: Snapshot,
    samples: Vec<Sample>,
    wall: Duration,
    server_stats: Option<Value>,
    sink: Option<Value>,
    /// `--webhook-sink`: what the event webhook receiver got.
    webhook_sink: Option<Value>,
    /// `--thread-shares`: the sampled process's threads over the load phase.
    threads: Value,
}

/// Runs the load against one target; `pid` is the process whose RSS and CPU
/// are sampled (the broker, or the Socket.IO peer's node).
#[allow(clippy::too_many_arguments)]
async fn run_target(
    args: &Args,
    argv: &[String],
    kind: Kind,
    url: &str,
    run_id: &str,
    seed: u64,
    pid: Option<u32>,
    workers: usize,
) -> Result<TargetRun, String> {
    let wall = Instant::now();
    let target = args.target(url)?;
    let requested = args.requested(kind);
    let label = kind.name().to_string();
    let threads_of = pid.filter(|_| args.thread_shares);
    let hooks = if kind == Kind::Switchboard {
        hook_sink_for(args).await?
    } else {
        None
    };
    let (mut snap, samples, sink, threads) = if workers <= 1 {
        let sink = if kind == Kind::Switchboard && args.provider_traffic() {
            Some(sink_for(args, &target).await?)
        } else {
            None
        };
        let mut local = Local::setup(
            args.setup(kind, url, run_id, seed, sink.clone())?,
            args.slice(0, 1, kind),
        )
        .await?;
        println!(
            "[{label}] {} agents ready",
            local.ctx.stats.c.to_map()["agents_ready"]
        );
        let ctx = local.ctx.clone();
        let source: progress::Source = Arc::new(move || Tick {
            counters: ctx.stats.c.to_map(),
            errors: ctx.stats.error_count(),
            hist: ctx.stats.take_interval(),
        });
        let window = threads_of.map(cpuwin::ThreadWindow::begin);
        let collector = Collector::start(label, source, pid, args.progress, requested);
        local.load().await;
        let samples = collector.stop().await;
        let threads = window.map_or(Value::Null, cpuwin::ThreadWindow::end);
        let snap = local.finish().await;
        let sink_figures = sink.map(|s| {
            let (m, problems) = s.figures();
            (json!(m), problems)
        });
        (snap, samples, sink_figures, threads)
    } else {
        let w = workers::run_parent(args, argv, kind, url, run_id, seed, pid, workers, requested)
            .await?;
        (w.snap, w.samples, w.sink, w.threads)
    };
    let sink = sink.map(|(figures, problems)| {
        for p in &problems {
            snap.add_error(&Failure::new("sink.problem", p.clone()));
        }
        figures
    });
    let server_stats = if kind == Kind::Switchboard {
        let client = reqwest::Client::new();
        net::http_json(
            &client,
            Method::GET,
            target.http("/v1/stats"),
            Some(&args.admin_token),
            None,
        )
        .await
        .ok()
        .map(|(_, v)| v)
    } else {
        None
    };
    Ok(TargetRun {
        snap,
        samples,
        wall: wall.elapsed(),
        server_stats,
        sink,
        webhook_sink: hooks.map(|h| h.figures()),
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin token the broker would accept (at least 32 characters).
    const ADMIN: &str = "loadtest-token-0123456789abcdef0123456789";

    #[test]
    fn remote_targets_only_with_allow_remote() {
        use std::net::IpAddr;
        let lan: IpAddr = "10.0.0.1".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(net::check_reach("u", lo, false), Ok(false));
        assert_eq!(net::check_reach("u", lo, true), Ok(false));
        assert_eq!(net::check_reach("u", lan, true), Ok(true));
        let e = net::check_reach("http://10.0.0.1:8080", lan, false).unwrap_err();
        assert!(
            e.contains("--allow-remote") && e.contains("10.0.0.1"),
            "{e}"
        );
        // Without the flag: refused, naming the flag (names are not even resolved).
        for url in [
            "http://10.0.0.1:8080",
            "http://staging.example.invalid:8080",
        ] {
            let e = parse(&["--url", url]).validate().unwrap_err();
            assert!(e.contains("--allow-remote"), "{e}");
        }
        // With it: allowed, marked remote, warned about by name.
        let args = parse(&["--url", "http://10.0.0.1:8080", "--allow-remote"]);
        assert!(args.validate().is_ok());
        let t = args.target(&args.url).unwrap();
        assert!(t.remote);
        let w = remote_warning(&t).unwrap();
        assert!(
            w.contains("WARNING") && w.contains("http://10.0.0.1:8080/"),
            "{w}"
        );
        // Sockets to it are not bound to loopback source addresses.
        assert!(net::SourcePool::new(&t, 4, 0).addrs().is_empty());
        // Loopback stays loopback, with no warning, flag or not.
        let local = parse(&["--allow-remote"]);
        let t = local.target(&local.url).unwrap();
        assert!(!t.remote && remote_warning(&t).is_none());
        assert_eq!(net::SourcePool::new(&t, 4, 0).addrs().len(), 4);
        // The provider sink listens on loopback: no SMS or WhatsApp to a remote broker.
        let e = parse(&[
            "--url",
            "http://10.0.0.1:8080",
            "--allow-remote",
            "--sms-conversations",
            "1",
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("webchat only"), "{e}");
        // The relays and the sink stay on loopback whatever the flag.
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
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

    fn parse(extra: &[&str]) -> Args {
        let mut v = vec!["loadtest", "--admin-token", ADMIN];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_validate_and_later_flags_win() {
        let args = parse(&[]);
        assert_eq!(args.concurrency(), 100);
        assert!(args.validate().is_ok());
        assert!(parse(&["--agents", "0"]).validate().is_err());
        assert!(parse(&[
            "--sms-conversations",
            "1",
            "--twilio-api-base",
            "http://10.1.1.1:1"
        ])
        .validate()
        .is_err());
        // Queued customers need no agent, and all wait at once.
        let q = parse(&["--queued", "--agents", "0", "--conversations", "300"]);
        assert!(q.validate().is_ok());
        assert_eq!(q.concurrency(), 300);
        assert!(parse(&["--queued", "--agents", "0", "--baseline-relay"])
            .validate()
            .is_err());
        assert!(parse(&["--queued", "--sms-conversations", "5"])
            .validate()
            .is_err());
        let mut small = parse(&["--queued", "--agents", "0", "--scale", "0.1"]);
        small.apply_scale();
        assert_eq!(small.agents, 0);
        // Scenario flags come first; the command line's override them.
        let a = parse(&["--agents", "7", "--agents", "9"]);
        assert_eq!(a.agents, 9);
        assert_eq!(a.worker_count().unwrap(), 1);
    }

    #[test]
    fn slices_cover_the_load_once() {
        let mut a = parse(&[
            "--agents",
            "10",
            "--conversations",
            "101",
            "--sms-conversations",
            "7",
            "--whatsapp-conversations",
            "5",
            "--rate",
            "30",
        ]);
        a.apply_scale();
        let slices: Vec<Slice> = (0..3).map(|i| a.slice(i, 3, Kind::Switchboard)).collect();
        let mut agents: Vec<usize> = slices.iter().flat_map(|s| s.agents.clone()).collect();
        agents.sort();
        assert_eq!(agents, (0..10).collect::<Vec<_>>());
        assert_eq!(slices.iter().map(|s| s.webchat.len()).sum::<usize>(), 101);
        assert_eq!(slices[0].sms.len(), 7);
        assert_eq!(slices[0].whatsapp.len(), 5);
        assert!(slices[1].sms.is_empty() && slices[2].whatsapp.is_empty());
        assert_eq!(slices[1].web_rate, Some(10.0));
        assert_eq!(slices[0].sms_rate, Some(30.0));
        assert_eq!(slices[0].whatsapp_rate, Some(30.0));
        assert!(a.slice(0, 1, Kind::Baseline).sms.is_empty());
        assert!(a.slice(0, 1, Kind::Baseline).whatsapp.is_empty());
        assert_eq!(a.requested(Kind::Switchboard), 113);
        assert_eq!(a.requested(Kind::Baseline), 101);
        let mut s = parse(&[
            "--agents",
            "1000",
            "--conversations",
            "5000",
            "--scale",
            "0.02",
        ]);
        s.apply_scale();
        assert_eq!((s.agents, s.conversations), (20, 100));
        let big = parse(&[
            "--agents",
            "1000",
            "--conversations",
            "40000",
            "--rate",
            "100",
            "--max-in-flight",
            "40000",
        ]);
        assert_eq!(big.worker_count().unwrap(), 3);
    }

    #[test]
    fn socketio_peer_is_a_relay_target_of_its_own() {
        let specs = scenario::parse(
            "socketio-peer = true\nsms-conversations = 3\n",
            "t",
            &scenario_flags(),
        )
        .unwrap();
        let mut argv = vec!["loadtest".to_string(), "--admin-token".into(), ADMIN.into()];
        argv.extend(specs[0].args.iter().cloned());
        argv.extend(["--socketio-peer-dir".into(), "peer".into()]);
        let args = Args::try_parse_from(&argv).unwrap();
        assert!(args.socketio_peer && !args.baseline_relay);
        assert_eq!(args.socketio_peer_dir, Some(PathBuf::from("peer")));
        for kind in [Kind::Switchboard, Kind::Baseline, Kind::SocketIo] {
            assert_eq!(Kind::from_name(kind.name()), kind);
            assert_eq!(kind.is_relay(), kind != Kind::Switchboard);
        }
        // Webchat only, like the baseline.
        assert!(args.slice(0, 1, Kind::SocketIo).sms.is_empty());
        assert_eq!(args.requested(Kind::SocketIo), 200);
        assert_eq!(args.requested(Kind::Switchboard), 203);
        // Its sockets speak Socket.IO; the others' do not.
        let peer = args
            .setup(Kind::SocketIo, "http://127.0.0.1:4000", "r1s", 1, None)
            .unwrap();
        assert!(peer
            .target
            .ws("/v1/webchat/ws", "t")
            .as_str()
            .starts_with("ws://127.0.0.1:4000/socket.io/?EIO=4&transport=websocket&path="));
        let sw = args
            .setup(Kind::Switchboard, "http://127.0.0.1:4000", "r1", 1, None)
            .unwrap();
        assert!(!sw.target.socketio);
        let ids: Vec<String> = [Kind::Switchboard, Kind::Baseline, Kind::SocketIo]
            .into_iter()
            .map(|k| run_id_for("r1", k))
            .collect();
        assert_eq!(ids, ["r1", "r1b", "r1s"]);
    }

    #[test]
    fn baseline_relay_keeps_its_sockets_out_of_the_clients_process() {
        let sockets = [
            "--agents",
            "1000",
            "--capacity",
            "15",
            "--conversations",
            "15000",
        ];
        assert_eq!(parse(&sockets).worker_count().unwrap(), 1);
        let mut with_relay = sockets.to_vec();
        with_relay.push("--baseline-relay");
        assert_eq!(parse(&with_relay).worker_count().unwrap(), 2);
        with_relay.extend(["--workers", "1"]);
        let err = parse(&with_relay).worker_count().unwrap_err();
        assert!(err.contains("--workers 2"), "{err}");
        // Small runs fit in one process with their relay.
        let small = parse(&["--conversations", "2000", "--baseline-relay"]);
        assert_eq!(small.worker_count().unwrap(), 1);
    }

    #[test]
    fn scale_spares_flags_typed_on_the_command_line() {
        let mut scaled = parse(&[
            "--agents",
            "1000",
            "--conversations",
            "5000",
            "--rate",
            "500",
            "--scale",
            "0.02",
        ]);
        scaled.apply_scale();
        let mut args = parse(&[
            "--agents",
            "1000",
            "--conversations",
            "300",
            "--rate",
            "500",
        ]);
        args.scale_from(&scaled, |id| id == "conversations");
        assert_eq!(
            (args.agents, args.conversations, args.rate),
            (20, 300, Some(10.0))
        );
        let flags = args.resolved_flags();
        let again = parse(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            (again.agents, again.conversations, again.rate),
            (20, 300, Some(10.0))
        );
        assert_eq!(again.scale, 1.0);
    }

    #[test]
    fn whatsapp_flags_capacity_and_environment() {
        let a = parse(&[
            "--agents",
            "4",
            "--capacity",
            "3",
            "--whatsapp-conversations",
            "100",
            "--whatsapp-rate",
            "50",
        ]);
        assert!(a.validate().is_ok());
        assert_eq!((a.sms_capacity(), a.whatsapp_capacity()), (0, 3));
        assert_eq!(a.plan().whatsapp_capacity, 3);
        assert!(a.open_loop());
        // Webchat, with no --rate of its own, arrives at the other channels' rate.
        assert_eq!(a.slice(0, 1, Kind::Switchboard).web_rate, Some(50.0));
        let closed = parse(&["--agents", "4", "--whatsapp-conversations", "100"]);
        assert_eq!(closed.whatsapp_concurrency(), 20);
        assert_eq!(
            closed.slice(0, 1, Kind::Switchboard).whatsapp_concurrency,
            20
        );
        // The Graph base defaults to the sink (the Twilio base) with a version.
        let wa = a.whatsapp();
        assert_eq!(wa.graph_base, "http://127.0.0.1:18090/v21.0");
        let env = a.env_line();
        for key in [
            "SWITCHBOARD_TWILIO_API_BASE=http://127.0.0.1:18090 ",
            "SWITCHBOARD_GRAPH_API_BASE=http://127.0.0.1:18090/v21.0 ",
            "SWITCHBOARD_WHATSAPP_TOKEN=",
            "SWITCHBOARD_WHATSAPP_APP_SECRET=",
            "SWITCHBOARD_WHATSAPP_VERIFY_TOKEN=",
            "SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID=109900000000001",
        ] {
            assert!(env.contains(key), "{key} in {env}");
        }
        assert!(parse(&[
            "--whatsapp-conversations",
            "1",
            "--graph-api-base",
            "http://10.0.0.1:1"
        ])
        .validate()
        .is_err());
        assert!(parse(&[
            "--whatsapp-conversations",
            "1",
            "--graph-api-base",
            "http://127.0.0.1:1/graph/x"
        ])
        .validate()
        .is_err());
        assert!(parse(&[
            "--whatsapp-conversations",
            "1",
            "--whatsapp-phone-number-id",
            "ab"
        ])
        .validate()
        .is_err());
        let specs = scenario::parse(
            "whatsapp_conversations = 1000\nwhatsapp_rate = 100\n",
            "t",
            &scenario_flags(),
        )
        .unwrap();
        let mut argv = vec!["loadtest".to_string(), "--admin-token".into(), ADMIN.into()];
        argv.extend(specs[0].args.iter().cloned());
        argv.extend(["--scale".into(), "0.1".into()]);
        let mut scaled = Args::try_parse_from(&argv).unwrap();
        scaled.apply_scale();
        assert_eq!(
            (scaled.whatsapp_conversations, scaled.whatsapp_rate),
            (100, Some(10.0))
        );
        let flags = scaled.resolved_flags();
        let again = parse(&flags.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            (again.whatsapp_conversations, again.whatsapp_rate),
            (100, Some(10.0))
        );
        let (sms, wa) = split_sink_figures(&json!({"requests": 2, "whatsapp_requests": 3}));
        assert_eq!(
            (sms["requests"].as_u64(), wa["requests"].as_u64()),
            (Some(2), Some(3))
        );
    }

    #[test]
    fn the_webhook_scenario_and_its_broker_configuration_agree() {
        let flags = scenario_flags();
        let text = include_str!("../scenarios/webhooks.toml");
        let spec = &scenario::parse(text, "webhooks", &flags).unwrap()[0];
        let mut argv = vec!["loadtest".to_string(), "--admin-token".into(), ADMIN.into()];
        argv.extend(spec.args.iter().cloned());
        let args = Args::try_parse_from(&argv).unwrap();
        let sink = args
            .webhook_sink
            .expect("the scenario serves a webhook sink");
        let broker: toml::Table = include_str!("../webhook-broker.toml").parse().unwrap();
        let hook = &broker["webhooks"].as_array().unwrap()[0];
        assert_eq!(
            hook["url"].as_str(),
            Some(format!("http://{sink}/hooks").as_str())
        );
        assert_eq!(hook["secret"].as_str(), Some(args.webhook_secret.as_str()));
        assert_eq!(args.webhook_sink_status, 503);
        // Only loopback.
        let e = parse(&["--webhook-sink", "10.0.0.1:18095"])
            .validate()
            .unwrap_err();
        assert!(e.contains("--webhook-sink"), "{e}");
    }

    #[test]
    fn every_scenario_file_parses_with_snake_case_keys() {
        let files = [
            ("churn", include_str!("../scenarios/churn.toml")),
            ("durability", include_str!("../scenarios/durability.toml")),
            ("latency", include_str!("../scenarios/latency.toml")),
            ("memory", include_str!("../scenarios/memory.toml")),
            ("per_core", include_str!("../scenarios/per_core.toml")),
            ("ramp", include_str!("../scenarios/ramp.toml")),
            ("scale", include_str!("../scenarios/scale.toml")),
            ("smoke", include_str!("../scenarios/smoke.toml")),
            ("throughput", include_str!("../scenarios/throughput.toml")),
            ("webhooks", include_str!("../scenarios/webhooks.toml")),
        ];
        let flags = scenario_flags();
        assert!(flags.iter().any(|f| f == "step-timeout"));
        assert!(flags.iter().any(|f| f == "json"), "aliases count too");
        assert!(!flags.iter().any(|f| f == "worker" || f == "scenario"));
        for (name, text) in files {
            let table: toml::Table = text.parse().unwrap();
            let mut keys: Vec<&String> = table.keys().collect();
            for run in table
                .get("run")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                keys.extend(run.as_table().unwrap().keys());
            }
            assert!(
                keys.iter().all(|k| !k.contains('-')),
                "{name}: kebab-case key in {keys:?}"
            );
            for spec in scenario::parse(text, name, &flags).unwrap() {
                let mut argv = vec!["loadtest".to_string(), "--admin-token".into(), ADMIN.into()];
                argv.extend(spec.args.iter().cloned());
                if name == "durability" {
                    // It starts its brokers: its command line names the binary.
                    argv.extend(["--broker-bin".into(), "switchboard".into()]);
                }
                let args = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{name}: {e}"));
                args.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        // A key that is no flag is refused with its name.
        let e = scenario::parse("agents = 2\nthink_tiem = \"1s\"\n", "t", &flags).unwrap_err();
        assert!(e.contains("\"think_tiem\""), "{e}");
    }

    #[test]
    fn per_core_flags() {
        let a = parse(&["--per-core", "--agents", "200", "--conversations", "1000"]);
        assert!(a.validate().is_ok());
        assert_eq!(
            (a.warmup, a.measure),
            (Duration::from_secs(10), Duration::from_secs(20))
        );
        assert_eq!(a.concurrency(), 1000);
        for (extra, says) in [
            (&["--rate", "5"][..], "closed loop"),
            (&["--sms-conversations", "5"][..], "webchat only"),
            (&["--measure", "500ms"][..], "--measure"),
            (&["--chart", "x.svg"][..], "--chart"),
            (&["--slo", "errors=0"][..], "--slo"),
            (&["--broker-bin", "sb", "--broker-pid", "7"][..], "not both"),
            (&["--retry-disturbed", "11"][..], "--retry-disturbed"),
            (
                &["--agents", "5000", "--conversations", "30000"][..],
                "one process",
            ),
        ] {
            let mut v = vec!["--per-core"];
            v.extend_from_slice(extra);
            let e = parse(&v).validate().unwrap_err();
            assert!(
                e.contains("--per-core") && e.contains(says),
                "{extra:?}: {e}"
            );
        }
        // Its own flags outside it.
        let e = parse(&["--broker-bin", "sb"]).validate().unwrap_err();
        assert!(e.contains("--per-core"), "{e}");
        let e = parse(&["--ws-peer"]).validate().unwrap_err();
        assert!(e.contains("--per-core"), "{e}");
        // The per-core scenario, as the early pinning reads it, and a plain run.
        let argv: Vec<String> = [
            "loadtest",
            "--scenario",
            "scenarios/per_core.toml",
            "--target-cpu",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut from_manifest = argv.clone();
        from_manifest[2] = manifest
            .join("scenarios/per_core.toml")
            .display()
            .to_string();
        assert_eq!(percore::per_core_target_cpu(&from_manifest), Some(1));
        let plain: Vec<String> = vec!["loadtest".into(), "--agents".into(), "3".into()];
        assert_eq!(percore::per_core_target_cpu(&plain), None);
        let relay: Vec<String> = vec![
            "loadtest".into(),
            "--serve-relay".into(),
            "--per-core".into(),
        ];
        assert_eq!(percore::per_core_target_cpu(&relay), None);
        // Thread shares read /proc here: not for a remote broker.
        let e = parse(&[
            "--url",
            "http://10.0.0.1:8080",
            "--allow-remote",
            "--thread-shares",
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("--thread-shares"), "{e}");
    }

    #[test]
    fn durability_flags() {
        let base = [
            "--durability",
            "--broker-bin",
            "sb",
            "--conversations",
            "100",
        ];
        let a = parse(&base);
        assert!(a.validate().is_ok(), "{:?}", a.validate());
        assert_eq!(a.rounds, 3);
        assert_eq!(
            durability::parse_modes(&a.durability_modes).unwrap().len(),
            3
        );
        for (extra, says) in [
            (&["--rounds", "0"][..], "--rounds"),
            (&["--durability-modes", "batch,always"][..], "memory"),
            (&["--per-core"][..], "not with --per-core"),
            (&["--baseline-relay"][..], "Switchboard only"),
            (&["--rate", "5"][..], "closed loop"),
        ] {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            let e = parse(&v).validate().unwrap_err();
            assert!(
                e.starts_with("--durability: ") && e.contains(says),
                "{extra:?}: {e}"
            );
        }
        let e = parse(&["--durability", "--conversations", "100"])
            .validate()
            .unwrap_err();
        assert!(e.contains("--broker-bin"), "{e}");
        // Pinned early like the per-core mode.
        let argv: Vec<String> = ["loadtest", "--durability", "--target-cpu", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(percore::per_core_target_cpu(&argv), Some(1));
    }

    #[test]
    fn output_names_per_run() {
        assert_eq!(
            with_suffix(Path::new("/tmp/r.json"), Some("closed")),
            PathBuf::from("/tmp/r-closed.json")
        );
        assert_eq!(
            with_suffix(Path::new("r.json"), None),
            PathBuf::from("r.json")
        );
    }
}

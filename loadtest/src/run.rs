//! One process's part of one run against one target: set up agents, run the
//! conversations (closed loop: a fixed number of customers back to back; open
//! loop: Poisson arrivals at a set rate), drain, clean up, and hand back a
//! snapshot of the measurements.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, Method};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at, Instant};

use crate::agent::{self, Creds};
use crate::dist::Dist;
use crate::net::{self, Failure, Pacer, SourcePool, Target};
use crate::report::{instant_at, now_nanos, Counters, Gauge, Snapshot, Stats};
use crate::sms::{self, SmsSide};
use crate::texting;
use crate::whatsapp::{self, WhatsappSide};
use crate::{customer, twilio};

/// What a run targets: the broker, or one of the relays it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switchboard,
    /// The bare tokio-tungstenite relay inside the harness (`relay`).
    Baseline,
    /// The Node.js Socket.IO relay (`socketio`).
    SocketIo,
    /// The Node.js relay on the bare `ws` package (`peers/ws`).
    Ws,
    /// The lean two-frame echo relay (`echo`), driven by its own probe.
    Echo,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Switchboard => "switchboard",
            Kind::Baseline => "baseline",
            Kind::SocketIo => "socketio",
            Kind::Ws => "ws",
            Kind::Echo => "echo",
        }
    }

    /// The kind called `name` (unknown names: Switchboard).
    pub fn from_name(name: &str) -> Kind {
        [Kind::Baseline, Kind::SocketIo, Kind::Ws, Kind::Echo]
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or(Kind::Switchboard)
    }

    /// A comparison relay: no HTTP API (the harness makes up agents and
    /// tokens), any token accepted, only this run's customers, webchat only.
    pub fn is_relay(self) -> bool {
        self != Kind::Switchboard
    }
}

pub enum Outcome {
    Completed,
    /// The run's deadline came first.
    Aborted,
}

/// How customers and agents behave.
#[derive(Debug, Clone)]
pub struct Plan {
    pub messages: u32,
    pub think: Dist,
    pub hold: Duration,
    pub heartbeat: Duration,
    /// Webchat customers wait only for their acks, not for replies, and
    /// leave after `hold`: their conversations stay queued (`--queued`).
    pub queued: bool,
    pub accept_delay: Dist,
    pub reply_delay: Dist,
    pub handle_time: Dist,
    pub dispositions: Vec<String>,
    pub capacity: u32,
    pub sms_capacity: u32,
    pub whatsapp_capacity: u32,
    /// Agents time SMS and WhatsApp sends until `delivered` (status callbacks
    /// are on).
    pub track_delivery: bool,
}

/// What every agent and customer task of this process shares.
pub struct Ctx {
    pub target: Target,
    pub kind: Kind,
    pub admin_token: String,
    pub run_id: String,
    pub seed: u64,
    /// Tag in this run's SMS and WhatsApp customer numbers.
    pub sms_tag: u32,
    pub plan: Plan,
    pub step_timeout: Duration,
    /// The run stops by itself here.
    pub deadline: Instant,
    pub stats: Stats,
    pub pacer: Pacer,
    pub sources: SourcePool,
    pub sms: Option<SmsSide>,
    pub whatsapp: Option<WhatsappSide>,
    clients: Vec<Client>,
    /// Set by [`Ctx::wind_down`]: customers finish the conversation they are in.
    winding_down: AtomicBool,
}

impl Ctx {
    /// From now on, closed-loop customers send no next message: each says
    /// `bye` after the reply it waits for, and starts no new conversation
    /// (the per-core mode's end of the measured window).
    pub fn wind_down(&self) {
        self.winding_down.store(true, Ordering::Relaxed);
    }

    pub fn winding_down(&self) -> bool {
        self.winding_down.load(Ordering::Relaxed)
    }

    /// An HTTP client, one per source address, chosen by `n`.
    pub fn http(&self, n: usize) -> &Client {
        &self.clients[n % self.clients.len()]
    }
}

#[cfg(test)]
impl Ctx {
    /// A context for unit tests of what agents and customers count: no
    /// server, no socket, nothing sent.
    pub fn for_test(messages: u32) -> Ctx {
        let target = Target::parse("http://127.0.0.1:9").expect("loopback");
        let zero: Dist = "0ms".parse().expect("a duration");
        Ctx {
            sources: SourcePool::new(&target, 0, 0),
            target,
            kind: Kind::Switchboard,
            admin_token: String::new(),
            run_id: "t1".into(),
            seed: 1,
            sms_tag: twilio::run_tag("t1"),
            plan: Plan {
                messages,
                think: zero,
                hold: Duration::ZERO,
                heartbeat: Duration::from_secs(15),
                queued: false,
                accept_delay: zero,
                reply_delay: zero,
                handle_time: zero,
                dispositions: vec!["resolved".into()],
                capacity: 5,
                sms_capacity: 0,
                whatsapp_capacity: 0,
                track_delivery: false,
            },
            step_timeout: Duration::from_secs(1),
            deadline: Instant::now() + Duration::from_secs(60),
            stats: Stats::new(),
            pacer: Pacer::new(0.0),
            sms: None,
            whatsapp: None,
            clients: vec![Client::new()],
            winding_down: AtomicBool::new(false),
        }
    }
}

/// Client sockets per loopback source address by default. The kernel finds a
/// free port for a (source, destination) pair by probing the 28,000 or so
/// ephemeral ports, and sockets in TIME_WAIT from a previous run still count:
/// past about half full the probing shows up in profiles as the ramp's cost.
const SOCKETS_PER_SOURCE: usize = 2_000;

/// This process's share of the load.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    pub agents: Vec<usize>,
    pub webchat: Vec<usize>,
    pub sms: Vec<usize>,
    pub whatsapp: Vec<usize>,
    /// Closed loop: customers at once, per channel.
    pub web_concurrency: usize,
    pub sms_concurrency: usize,
    pub whatsapp_concurrency: usize,
    /// Open loop: arrivals per second, per channel.
    pub web_rate: Option<f64>,
    pub sms_rate: Option<f64>,
    pub whatsapp_rate: Option<f64>,
    /// Open loop: conversations running at once, at most.
    pub max_in_flight: usize,
}

impl Slice {
    pub fn open_loop(&self) -> bool {
        self.web_rate.is_some() || self.sms_rate.is_some() || self.whatsapp_rate.is_some()
    }

    /// Sockets this slice holds at most (agents + webchat customers).
    pub fn sockets(&self) -> usize {
        let web = if self.open_loop() {
            self.webchat.len().min(self.max_in_flight)
        } else {
            self.web_concurrency
        };
        self.agents.len() + web
    }
}

/// Settings to build a [`Ctx`].
pub struct Setup {
    pub target: Target,
    pub kind: Kind,
    pub admin_token: String,
    pub run_id: String,
    pub seed: u64,
    pub plan: Plan,
    pub step_timeout: Duration,
    pub duration: Duration,
    pub ramp: f64,
    pub source_addrs: Option<usize>,
    /// This worker process's index (0 without workers): picks its source addresses.
    pub worker_index: usize,
    pub keep_agents: bool,
    pub sms: Option<SmsSide>,
    pub whatsapp: Option<WhatsappSide>,
}

/// A process's run, between its phases.
pub struct Local {
    pub ctx: Arc<Ctx>,
    slice: Slice,
    creds: Vec<Creds>,
    agent_tasks: Vec<JoinHandle<usize>>,
    shutdown: watch::Sender<bool>,
    ready: usize,
    phase_start: Instant,
    phase_start_nanos: u64,
    phase: Duration,
    keep_agents: bool,
}

impl Local {
    /// Checks the target, creates and connects the slice's agents and waits
    /// until they are available. `Err` when the run cannot start.
    pub async fn setup(s: Setup, slice: Slice) -> Result<Local, String> {
        let start = Instant::now();
        let nofile = net::raise_nofile_limit()?;
        let needed = slice.sockets() as u64 + 256;
        if needed > nofile.after {
            return Err(format!(
                "needs about {needed} open files for {} agents and the customers' sockets; \
                 the limit is {} (soft limit was {}, hard {}; use --workers)",
                slice.agents.len(),
                nofile.after,
                nofile.before,
                nofile.hard
            ));
        }
        let keep_agents = s.keep_agents;
        let source_count = s
            .source_addrs
            .unwrap_or_else(|| slice.sockets().div_ceil(SOCKETS_PER_SOURCE).clamp(1, 64));
        let sources = SourcePool::new(&s.target, source_count, s.worker_index);
        let locals: Vec<Option<std::net::IpAddr>> = if sources.addrs().is_empty() {
            vec![None]
        } else {
            // The kernel picks 127.0.0.1 for a loopback peer by itself, and an
            // unbound socket gets its port at connect (cheap), not at bind (a
            // search over every socket on the address; see net::connect_ws).
            sources
                .addrs()
                .iter()
                .map(|ip| (*ip != std::net::Ipv4Addr::LOCALHOST).then_some(*ip))
                .collect()
        };
        let mut clients = Vec::new();
        for local in locals {
            clients.push(
                Client::builder()
                    .local_address(local)
                    .timeout(s.step_timeout)
                    .tcp_nodelay(true)
                    .pool_max_idle_per_host(256)
                    .build()
                    .map_err(|e| format!("http client: {e}"))?,
            );
        }
        let ctx = Arc::new(Ctx {
            target: s.target,
            kind: s.kind,
            admin_token: s.admin_token,
            sms_tag: twilio::run_tag(&s.run_id),
            run_id: s.run_id,
            seed: s.seed,
            plan: s.plan,
            step_timeout: s.step_timeout,
            deadline: start + s.duration,
            stats: Stats::new(),
            pacer: Pacer::new(s.ramp),
            sources,
            sms: s.sms,
            whatsapp: s.whatsapp,
            clients,
            winding_down: AtomicBool::new(false),
        });

        if ctx.kind == Kind::Switchboard {
            check_health(&ctx).await?;
            if let Some(sms) = &ctx.sms {
                if !slice.sms.is_empty() {
                    sms::preflight(&ctx, sms).await?;
                }
            }
            if let Some(wa) = &ctx.whatsapp {
                if !slice.whatsapp.is_empty() {
                    whatsapp::preflight(&ctx, wa).await?;
                }
            }
        }

        let (creds, create_errors) = agent::create_agents(&ctx, &slice.agents).await;
        if let Some(f) = create_errors.first() {
            let failed = agent::delete_agents(&ctx, &creds).await;
            return Err(format!(
                "creating agents failed ({} of {}): {f}{}{}",
                create_errors.len(),
                slice.agents.len(),
                if failed > 0 {
                    format!("; {failed} created agents could not be deleted")
                } else {
                    String::new()
                },
                if is_auth_failure(&f.code) {
                    "; the harness's SWITCHBOARD_ADMIN_TOKEN (or --admin-token) must be the \
                     broker's admin token"
                } else {
                    ""
                },
            ));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
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
        let ramp_time = if ctx.pacer.per_second() > 0.0 {
            Duration::from_secs_f64(creds.len() as f64 / ctx.pacer.per_second())
        } else {
            Duration::ZERO
        };
        let ready_limit = (Instant::now() + ramp_time + ctx.step_timeout).min(ctx.deadline);
        let mut ready = 0usize;
        for rx in readies {
            if let Ok(Ok(true)) = timeout_at(ready_limit, rx).await {
                ready += 1;
            }
        }
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
        Ok(Local {
            ctx,
            slice,
            creds,
            agent_tasks,
            shutdown,
            ready,
            phase_start: Instant::now(),
            phase_start_nanos: now_nanos(),
            phase: Duration::ZERO,
            keep_agents,
        })
    }

    pub fn agents_ready(&self) -> bool {
        self.ready == self.creds.len()
    }

    /// Runs every conversation of the slice; returns when all are done or the
    /// deadline passed.
    pub async fn load(&mut self) {
        self.phase_start = Instant::now();
        self.phase_start_nanos = now_nanos();
        if self.agents_ready() {
            let ctx = &self.ctx;
            let s = &self.slice;
            let mut set = JoinSet::new();
            let channels = [
                (Ch::Web, s.webchat.clone(), s.web_rate, s.web_concurrency),
                (Ch::Sms, s.sms.clone(), s.sms_rate, s.sms_concurrency),
                (
                    Ch::Whatsapp,
                    s.whatsapp.clone(),
                    s.whatsapp_rate,
                    s.whatsapp_concurrency,
                ),
            ];
            for (ch, idxs, rate, concurrency) in channels {
                if idxs.is_empty() {
                    continue;
                }
                if s.open_loop() {
                    let rate = rate.unwrap_or(1.0);
                    set.spawn(open_loop(ctx.clone(), ch, idxs, rate, s.max_in_flight));
                } else {
                    let idxs = Arc::new(idxs);
                    let next = Arc::new(AtomicUsize::new(0));
                    for _ in 0..concurrency.max(1) {
                        set.spawn(closed_worker(ctx.clone(), ch, idxs.clone(), next.clone()));
                    }
                }
            }
            while let Some(r) = set.join_next().await {
                if let Err(e) = r {
                    ctx.stats
                        .error(&Failure::new("harness.task_panicked", e.to_string()));
                }
            }
        }
        self.phase = self.phase_start.elapsed();
    }

    /// Waits for the agents' last `complete`s and the `delivered` statuses
    /// of the last provider replies (at most 10 s), takes them down, deletes
    /// them, and returns the measurements.
    pub async fn finish(self) -> Snapshot {
        let ctx = self.ctx;
        let c = &ctx.stats.c;
        let drain_until = Instant::now() + ctx.step_timeout.min(Duration::from_secs(10));
        while (Counters::get(&c.open_tasks) > 0 || Counters::get(&c.awaiting_delivery) > 0)
            && Instant::now() < drain_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shutdown.send(true);
        let mut open_tasks = 0u64;
        for t in self.agent_tasks {
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
        let failed = if self.keep_agents {
            0
        } else {
            agent::delete_agents(&ctx, &self.creds).await
        };
        if failed > 0 {
            ctx.stats.error(&Failure::new(
                "harness.cleanup",
                format!("{failed} agents could not be deleted"),
            ));
        }
        let mut snap = ctx
            .stats
            .snapshot(self.phase.as_secs_f64(), self.phase_start_nanos);
        snap.extra
            .insert("agents_created".into(), self.creds.len().into());
        snap.extra
            .insert("open_tasks_at_end".into(), open_tasks.into());
        snap
    }
}

/// How long the harness waits for a broker that does not answer yet (one
/// started in the background a moment before the harness).
const HEALTH_WAIT: Duration = Duration::from_secs(5);

/// `GET /healthz` must answer `{"status":"ok"}`; a broker that refuses
/// connections is retried for [`HEALTH_WAIT`].
async fn check_health(ctx: &Ctx) -> Result<(), String> {
    let until = Instant::now() + HEALTH_WAIT;
    loop {
        let answer = net::http_json(
            ctx.http(0),
            Method::GET,
            ctx.target.http("/healthz"),
            None,
            None,
        )
        .await;
        match answer {
            Ok((_, body)) if body["status"] == "ok" => return Ok(()),
            Ok((status, body)) => {
                return Err(unhealthy(
                    ctx.target.base.as_str(),
                    &format!("GET /healthz answered {status} {body}"),
                    &ctx.admin_token,
                ))
            }
            Err(f) if f.code == "io.http" && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(f) => {
                return Err(unhealthy(
                    ctx.target.base.as_str(),
                    &f.to_string(),
                    &ctx.admin_token,
                ))
            }
        }
    }
}

/// The broker's admin token must be at least this long, or it does not start.
const MIN_ADMIN_TOKEN: usize = 32;

/// What to say when the broker at `url` is not reachable or not healthy.
fn unhealthy(url: &str, detail: &str, admin_token: &str) -> String {
    let mut s = format!(
        "the broker at {url} is not reachable or not healthy ({detail}).\n  \
         Check that it started and still runs (its log: a broker that refuses its \
         settings stops at start) and that it listens on that address, and that \
         SWITCHBOARD_ADMIN_TOKEN is the same for the broker and the harness."
    );
    if admin_token.len() < MIN_ADMIN_TOKEN {
        s.push_str(&format!(
            "\n  This SWITCHBOARD_ADMIN_TOKEN has {} characters: the broker refuses one \
             shorter than {MIN_ADMIN_TOKEN} and does not start.",
            admin_token.len()
        ));
    }
    s
}

/// A failure that says the admin token was not accepted.
fn is_auth_failure(code: &str) -> bool {
    matches!(code, "unauthorized" | "forbidden" | "http.401" | "http.403")
}

#[derive(Debug, Clone, Copy)]
enum Ch {
    Web,
    Sms,
    Whatsapp,
}

/// One conversation, counted.
/// `start`: open loop, the arrival time the first message is stamped with;
/// closed loop (None), the customer sends as soon as it is connected.
async fn one(ctx: Arc<Ctx>, ch: Ch, idx: usize, start: Option<u64>, paced: bool) {
    let c = &ctx.stats.c;
    Counters::inc(&c.conversations_started);
    let _running = Gauge::up(&c.in_flight);
    let result = match (ch, &ctx.sms, &ctx.whatsapp) {
        (Ch::Web, _, _) => customer::conversation(&ctx, idx, start, paced).await,
        (Ch::Sms, Some(sms), _) => texting::conversation(&ctx, sms, idx, start).await,
        (Ch::Whatsapp, _, Some(wa)) => texting::conversation(&ctx, wa, idx, start).await,
        (Ch::Sms | Ch::Whatsapp, _, _) => Err(Failure::new(
            "harness.no_sink",
            "SMS or WhatsApp conversation without a provider sink in this process",
        )),
    };
    match result {
        Ok(Outcome::Completed) => c.conversation_completed(),
        Ok(Outcome::Aborted) => Counters::inc(&c.aborted_at_deadline),
        Err(f) => {
            Counters::inc(&c.conversations_failed);
            let who = match ch {
                Ch::Web => "customer",
                Ch::Sms => "sms customer",
                Ch::Whatsapp => "whatsapp customer",
            };
            ctx.stats
                .error(&Failure::new(f.code, format!("{who} {idx}: {}", f.detail)));
        }
    }
}

/// Closed loop: one customer slot taking conversations from `idxs` one after
/// another until none is left or the deadline passed. Only the slot's first
/// socket waits for a `--ramp` slot.
async fn closed_worker(ctx: Arc<Ctx>, ch: Ch, idxs: Arc<Vec<usize>>, next: Arc<AtomicUsize>) {
    let mut first = true;
    while Instant::now() < ctx.deadline && !ctx.winding_down() {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&idx) = idxs.get(i) else {
            break;
        };
        one(ctx.clone(), ch, idx, None, first).await;
        first = false;
    }
}

/// Open loop: conversations arrive as a Poisson process at `rate` per second
/// (seeded), whatever the broker does; each is stamped from its arrival time.
/// An arrival finding `max_in_flight` conversations of its channel running is
/// dropped and counted (as an error) rather than delayed.
async fn open_loop(ctx: Arc<Ctx>, ch: Ch, idxs: Vec<usize>, rate: f64, max_in_flight: usize) {
    let salt = match ch {
        Ch::Web => 0x0A11_0000_0000_0001,
        Ch::Sms => 0x0A11_0000_0000_0002,
        Ch::Whatsapp => 0x0A11_0000_0000_0003,
    };
    let mut rng =
        StdRng::seed_from_u64(ctx.seed ^ salt ^ idxs.first().copied().unwrap_or(0) as u64);
    let deadline_nanos = now_nanos()
        + ctx
            .deadline
            .saturating_duration_since(Instant::now())
            .as_nanos() as u64;
    let mut t = now_nanos();
    let mut set = JoinSet::new();
    for idx in idxs {
        let u: f64 = rng.random::<f64>();
        let gap = -(1.0 - u).ln() / rate.max(1e-9);
        t += (gap * 1e9) as u64;
        if t >= deadline_nanos || ctx.winding_down() {
            break;
        }
        tokio::time::sleep_until(instant_at(t)).await;
        while set.try_join_next().is_some() {}
        if set.len() >= max_in_flight {
            Counters::inc(&ctx.stats.c.arrivals_dropped);
            ctx.stats.error(&Failure::new(
                "harness.arrival_dropped",
                format!("conversation {idx}: {max_in_flight} conversations already running (--max-in-flight)"),
            ));
            continue;
        }
        set.spawn(one(ctx.clone(), ch, idx, Some(t), false));
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_broker_message_names_the_url_and_what_to_check() {
        let m = unhealthy(
            "http://127.0.0.1:8080/",
            "io.http: GET /healthz: connection refused",
            "loadtest-token-0123456789abcdef0123456789",
        );
        assert!(m.contains("http://127.0.0.1:8080/"), "{m}");
        assert!(m.contains("connection refused"), "{m}");
        assert!(m.contains("its log"), "{m}");
        assert!(m.contains("SWITCHBOARD_ADMIN_TOKEN is the same"), "{m}");
        assert!(!m.contains("characters"), "{m}");
        // A token the broker refuses at start is named as the likely cause.
        let short = unhealthy("http://127.0.0.1:8080/", "x", "lt");
        assert!(short.contains("has 2 characters"), "{short}");
        assert!(short.contains("shorter than 32"), "{short}");
        assert!(is_auth_failure("unauthorized") && is_auth_failure("http.401"));
        assert!(!is_auth_failure("io.http"));
    }

    #[tokio::test]
    async fn health_check_of_a_closed_port_says_where_it_looked() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let client = Client::new();
        let f = net::http_json(
            &client,
            Method::GET,
            Target::parse(&url).unwrap().http("/healthz"),
            None,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(f.code, "io.http");
        let m = unhealthy(&url, &f.to_string(), "");
        assert!(m.contains(&url) && m.contains("has 0 characters"), "{m}");
    }
}

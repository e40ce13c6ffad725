//! Start-up and shutdown: builds the arbiters and actors, wires the broker's
//! handles, binds the HTTP server: actix-server and actix-http set up as
//! actix-web's `HttpServer` would, plus actix-http's upgrade hook, through
//! which WebSocket connections leave the HTTP/1 dispatcher and its buffers
//! (`http/upgrade.rs`).
//!
//! Threads: one HTTP worker per core (socket session actors
//! live on the worker that accepted them), and the workers are the shards
//! (`shards.rs`): each runs one shard of the webchat channel and one of each
//! provider channel, with the conversations of their customers, and a share
//! of the agents; the router gets an arbiter of its own, so it never waits
//! behind chat traffic; a channel arbiter sweeps unused uploads; the
//! supervisor hub lives on the system arbiter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use std::rc::Rc;

use actix::prelude::*;
use actix_codec::Framed;
use actix_http::body::BoxBody;
use actix_http::{h1, HttpService};
use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{
    fn_factory, fn_service, AppConfig, ServerHandle, Service, ServiceFactory, ServiceRequest,
    ServiceResponse,
};
use actix_web::{web, App};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::agent::{Agent, AgentProfile};
use crate::broker::prepare;
use crate::channel::messenger::MessengerApi;
use crate::channel::provider::{
    OutboundBudget, ProviderApi, ProviderChannel, ProviderShards, ProviderShared,
};
use crate::channel::sms::SmsApi;
use crate::channel::webchat::{WebchatChannel, WebchatShards};
use crate::channel::whatsapp::WhatsappApi;
use crate::channel::Channels;
use crate::config::Config;
use crate::http::body::BodyDeadline;
use crate::http::request_line::{self, Prefixed};
use crate::limits::{Connections, Refused};
use crate::protocol::ChannelKind;
use crate::router::Router;
use crate::shards::{mailbox, Mailbox};
use crate::supervisor::{Attach, SupervisorHub};
use crate::webhooks::Webhooks;
use crate::wiring::{Broker, BrokerParts};

/// A broker bound and running, with what a client needs to reach it.
pub struct Started {
    pub server: actix_web::dev::Server,
    pub addrs: Vec<SocketAddr>,
    pub admin_token: String,
    /// Tokens generated for `[[agents]]` configured without one: (id, token).
    pub generated_agent_tokens: Vec<(String, String)>,
    pub arbiters: Vec<Arbiter>,
    /// The registry, for the shutdown.
    pub broker: Arc<Broker>,
}

/// Create the `[[agents]]` of the configuration, as `POST /v1/agents` does.
/// Returns the tokens generated for those configured without one.
fn seed_agents(broker: &Arc<Broker>, config: &Config) -> std::io::Result<Vec<(String, String)>> {
    let mut generated = Vec::new();
    for (i, seed) in config.agents.iter().enumerate() {
        let invalid =
            |e: crate::ApiError| std::io::Error::other(format!("agents[{i}] ({:?}): {e}", seed.id));
        let profile = AgentProfile::new(
            &seed.id,
            seed.name.clone(),
            seed.capacity,
            seed.skills.clone(),
        )
        .map_err(invalid)?;
        if broker.agent(&seed.id).is_some() {
            // Restored from the journal, with the token it had.
            continue;
        }
        let token = Agent::create(broker, profile, seed.token.clone()).map_err(invalid)?;
        if seed.token.is_none() {
            generated.push((seed.id.clone(), token));
        }
    }
    if !config.agents.is_empty() {
        tracing::info!(count = config.agents.len(), "configured agents created");
    }
    Ok(generated)
}

/// `bind` failed: say which address and which setting.
pub(crate) fn bind_error(bind: &str, e: std::io::Error) -> std::io::Error {
    let mut why = e.to_string();
    if let Some(code) = e.raw_os_error() {
        // "Address already in use (os error 98)": the number says nothing more.
        let suffix = format!(" (os error {code})");
        if why.ends_with(&suffix) {
            why.truncate(why.len() - suffix.len());
        }
    }
    std::io::Error::new(e.kind(), format!("cannot listen on {bind} (bind): {why}"))
}

/// What `switchboard` prints on stdout once it listens on `addr`: one line per
/// page or API with its URL, then one per channel saying whether it is on and,
/// if not, what to set.
pub fn banner(config: &Config, addr: SocketAddr) -> Vec<String> {
    let line = |label: &str, value: String| format!("{:<11}{value}", format!("{label}:"));
    let base = format!("http://{addr}");
    let mut lines: Vec<String> = [
        ("desk", "/desk"),
        ("chat", "/chat"),
        ("board", "/board"),
        ("api", "/v1"),
        ("health", "/healthz"),
    ]
    .into_iter()
    .map(|(label, path)| line(label, format!("{base}{path}")))
    .collect();
    // Where providers reach us: the public URL, else the address bound.
    let public = match &config.public_url {
        Some(_) => config.public_base(),
        None => base.clone(),
    };
    for (channel, webhook) in [
        (ChannelKind::Webchat, None),
        (ChannelKind::Sms, Some("/v1/channels/sms/inbound")),
        (ChannelKind::Whatsapp, Some("/v1/channels/whatsapp/webhook")),
        (
            ChannelKind::Messenger,
            Some("/v1/channels/messenger/webhook"),
        ),
    ] {
        let missing = config.channel_missing(channel);
        let state = match (missing.as_slice(), webhook) {
            ([], None) => "on".to_owned(),
            ([], Some(path)) => format!("on (webhook {public}{path})"),
            (missing, _) => format!("off (set {})", and_list(missing)),
        };
        lines.push(line(channel.as_str(), state));
    }
    lines
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Drops uploads that were never sent once they are older than the history
/// retention (files that were sent go with their conversations). Ends with
/// the broker.
async fn sweep_unused_attachments(broker: std::sync::Weak<Broker>) {
    let Some(retention) = broker.upgrade().map(|b| b.config.history_retention) else {
        return;
    };
    let period = (retention / 2).clamp(
        std::time::Duration::from_millis(10),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let swept = broker.attachments.sweep_unused(retention);
        if swept > 0 {
            tracing::debug!(swept, "unused uploads dropped");
        }
    }
}

/// Forgets per-address rate state that is as good as fresh, so the keyed
/// limiters hold only addresses seen lately. Ends with the broker.
async fn sweep_limits(broker: std::sync::Weak<Broker>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.limits.sweep();
    }
}

thread_local! {
    /// Whether this thread's arbiter is a shard already: the HTTP service is
    /// built per worker and per listening address.
    static IS_SHARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The channel shards one HTTP worker runs, waiting for it to start.
struct WorkerShards {
    webchat: (Mailbox<WebchatChannel>, WebchatChannel),
    /// One shard of each enabled provider channel.
    providers: Vec<(Mailbox<ProviderChannel>, ProviderChannel)>,
}

/// Run on each HTTP worker as it builds its app: the worker's arbiter becomes
/// a home for conversations and agents, and runs one webchat channel shard
/// and one shard of each provider channel; in cluster mode, its own
/// endpoint on the bus between nodes.
fn join_as_shard(
    broker: &web::Data<Arc<Broker>>,
    waiting: &Mutex<Vec<Option<WorkerShards>>>,
    next: &AtomicUsize,
    node_bus: Option<&Arc<crate::cluster::node_bus::NodeBus>>,
) {
    if IS_SHARD.with(|s| s.replace(true)) {
        return;
    }
    let i = next.fetch_add(1, Ordering::Relaxed);
    if let Some(shards) = waiting.lock().get_mut(i).and_then(Option::take) {
        let (mailbox, channel) = shards.webchat;
        mailbox.run_here(channel);
        for (mailbox, channel) in shards.providers {
            mailbox.run_here(channel);
        }
    }
    broker.shards.register(Arbiter::current());
    if let Some(node_bus) = node_bus {
        node_bus.on_this_worker(Some(broker.get_ref().clone()));
    }
}

/// Pending connections the kernel queues before `accept`. Bursts of new
/// sockets (a shift starting, a load test ramping) queue and wait instead of
/// failing; with `client_request_timeout` below, slow handshakes under load
/// get a generous time too.
const BACKLOG: u32 = 4096;

/// A listening socket on `addr`, as actix-web's `HttpServer::bind` makes it.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG as i32)?;
    Ok(socket.into())
}

/// The HTTP API and pages, one instance per worker (and one more per worker
/// for WebSocket upgrades). Every request body is read at a minimum rate
/// (`http/body.rs`).
fn app(
    data: web::Data<Arc<Broker>>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    use actix_web::ResponseError;
    use futures_util::future::{ready, Either};
    let deadline = BodyDeadline {
        timeout: data.config.request_body_timeout,
        min_rate: data.config.request_body_min_rate,
    };
    let journal = data.journal.clone();
    let registry = data.get_ref().clone();
    App::new()
        .app_data(data)
        // What a request changed is durable before it is answered: the
        // journal's end when the handler returns covers every record it
        // caused (a webhook's `200`, a created session or agent).
        .wrap_fn(move |req, srv| {
            if registry.draining() {
                let refusal = crate::ApiError::Unavailable(crate::shutdown::SHUTTING_DOWN.into())
                    .error_response();
                return Either::Left(ready(Ok(req.into_response(refusal))));
            }
            let journal = journal.clone().filter(|_| !req.method().is_safe());
            // A journal that cannot write (a full disk) takes no new change.
            if let Some(Err(e)) = journal.as_ref().map(crate::journal::Journal::health) {
                let refusal = crate::ApiError::Unavailable(e.to_string()).error_response();
                return Either::Left(ready(Ok(req.into_response(refusal))));
            }
            let answer = actix_service::Service::call(srv, req);
            let answer = async move {
                let res = answer.await?;
                let Some(journal) = journal else {
                    return Ok::<_, actix_web::Error>(res);
                };
                match journal.wait_durable(journal.appended()).await {
                    Ok(()) => Ok(res),
                    Err(e) => {
                        let refusal = crate::ApiError::Unavailable(format!(
                            "the change may not have been stored: {e}"
                        ))
                        .error_response();
                        Ok(res.into_response(refusal))
                    }
                }
            };
            Either::Right(answer)
        })
        // A connection's first request line is checked before the
        // dispatcher (`http/request_line.rs`); later ones here. Bodies are
        // held to a minimum data rate (`http/body.rs`).
        .wrap_fn(move |mut req, srv| {
            if crate::http::request_line::uri_too_long(req.uri()) {
                let refusal = crate::http::request_line::too_long().error_response();
                Either::Left(ready(Ok(req.into_response(refusal))))
            } else {
                deadline.apply(&mut req);
                Either::Right(actix_service::Service::call(srv, req))
            }
        })
        .configure(crate::http::routes)
}

/// What handlers see of the server (`HttpRequest::app_config`, the fallback
/// host of `connection_info`). actix-web's own server fills in the bound
/// address, which it alone can; no handler here reads it, and the URLs the
/// broker gives out come from `public_url`.
fn app_config() -> AppConfig {
    AppConfig::default()
}

/// The HTTP service's upgrade hook: each WebSocket upgrade request, with its
/// socket, becomes a task of its own on this worker, served by
/// `http::upgrade` through this worker's second instance of the app.
fn upgrades(
    data: web::Data<Arc<Broker>>,
) -> impl ServiceFactory<
    (actix_http::Request, Framed<Prefixed, h1::Codec>),
    Config = (),
    Response = (),
    Error = std::convert::Infallible,
    InitError = (),
> {
    fn_factory(move || {
        let app = app(data.clone());
        let connections = data.limits.connections.clone();
        let write_timeout = data.config.socket_write_timeout;
        let cluster = data.config.cluster();
        async move {
            let app = Rc::new(app.into_factory().new_service(app_config()).await?);
            // Cluster mode: this worker also serves what standbys relay
            // (`cluster::relay::host`), through the same app.
            if let Some(settings) = cluster {
                crate::cluster::relay::host::start(app.clone(), settings, write_timeout);
            }
            Ok(fn_service(
                move |(req, framed): (actix_http::Request, Framed<Prefixed, h1::Codec>)| {
                    // Counted again before the HTTP connection's count goes
                    // with its dispatcher: a WebSocket stays in
                    // `max_connections` for as long as it is open.
                    let peer = framed.io_ref().peer_addr().ok().map(|a| a.ip());
                    let socket = crate::http::upgrade::Socket {
                        _slot: Some(connections.adopt(peer)),
                        write_timeout,
                    };
                    actix_web::rt::spawn(crate::http::upgrade::serve(
                        app.clone(),
                        req,
                        framed,
                        socket,
                    ));
                    std::future::ready(Ok(()))
                },
            ))
        }
    })
}

/// Every accepted connection is counted (`max_connections`,
/// `max_connections_per_ip`) for as long as its HTTP dispatcher runs; one over
/// a limit gets a short answer (`503 unavailable` or `429 rate_limited`) and is
/// closed without being read.
fn admit_connections<S>(
    http: S,
    connections: Arc<Connections>,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = S::Error, InitError = S::InitError>
where
    S: ServiceFactory<TcpStream, Config = (), Response = ()>,
{
    actix_service::apply_fn_factory(http, move |io: TcpStream, srv: &S::Service| {
        let peer = io.peer_addr().ok().map(|a| a.ip());
        let admitted = match connections.admit(peer) {
            Ok(slot) => Ok((srv.call(io), slot)),
            Err(why) => Err((io, why)),
        };
        async move {
            match admitted {
                Ok((call, slot)) => {
                    let served = call.await;
                    drop(slot);
                    served
                }
                Err((io, why)) => {
                    refuse(io, why).await;
                    Ok(())
                }
            }
        }
    })
}

/// The whole answer to a connection over a limit: a status line, a JSON
/// error and `Connection: close`, written without waiting on a client that
/// does not read; then a short wait for the client's request to arrive and
/// be discarded (closing with unread bytes would reset the connection and
/// could lose the answer).
async fn refuse(io: TcpStream, why: Refused) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (status, code, message) = match why {
        Refused::Full => (
            "503 Service Unavailable",
            "unavailable",
            "the broker is at max_connections; try again shortly",
        ),
        Refused::PerIp => (
            "429 Too Many Requests",
            "rate_limited",
            "too many open connections from this address (max_connections_per_ip)",
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let linger = std::time::Duration::from_millis(200);
    let mut io = io;
    let _ = tokio::time::timeout(linger, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Build everything inside the current actix system and bind.
pub fn start(config: Config) -> std::io::Result<Started> {
    start_with(config, None)
}

/// [`start`], with the stored files' bytes also kept in `files` from the
/// first upload on (cluster mode: `cluster::Files`, so a node that takes
/// over has them).
pub fn start_with(
    config: Config,
    files: Option<Arc<dyn crate::attachments::FileReplica>>,
) -> std::io::Result<Started> {
    let opened = open_and_replay(&config)?;
    start_opened(config, files, opened, None)
}

/// The journal opened and its state replayed ([`open_and_replay`]): the
/// part of a start that reads the disk and may take seconds.
pub struct Opened {
    journal: crate::journal::Journal,
    prepared: crate::recovery::Prepared,
}

/// Open the journal the configuration names (None without one), read it
/// back and replay its state. Blocking, and long with a long journal: `run`
/// calls it on a blocking thread, so the system's thread goes on with its
/// other work meanwhile (in cluster mode, renewing the lease the node has
/// just taken over).
pub fn open_and_replay(config: &Config) -> std::io::Result<Option<Opened>> {
    let Some((journal, recovered)) = open_journal(config)? else {
        return Ok(None);
    };
    let prepared = crate::recovery::prepare(
        &crate::snapshot::ReplaySettings::of(config),
        recovered.snapshot,
        recovered.records,
    )
    .map_err(std::io::Error::other)?;
    Ok(Some(Opened { journal, prepared }))
}

/// [`start_with`], the journal opened and replayed already. In cluster
/// mode, `node_bus` is the node's own endpoint on the bus: each worker
/// starts one of its own, which runs the stand-ins of the sockets other
/// nodes hold (`cluster::node_bus`).
pub fn start_opened(
    config: Config,
    files: Option<Arc<dyn crate::attachments::FileReplica>>,
    opened: Option<Opened>,
    node_bus: Option<Arc<crate::cluster::node_bus::NodeBus>>,
) -> std::io::Result<Started> {
    let workers = config.effective_workers();
    let admin_token = config.admin_token.clone().unwrap_or_else(crate::ids::token);
    let mut arbiters: Vec<Arbiter> = Vec::new();
    let mut arbiter = || {
        let a = Arbiter::new();
        let h = a.handle();
        arbiters.push(a);
        h
    };
    let router_arbiter = arbiter();
    let channel_arbiter = arbiter();

    let supervisor = SupervisorHub::new().start();
    let (router, run_router) = prepare::<Router>(&router_arbiter);
    // One webchat channel shard per HTTP worker (see channel/webchat.rs),
    // started by the worker itself on its own thread (see shards.rs).
    let (webchat, webchat_mailboxes): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mailbox::<WebchatChannel>()).unzip();
    // One shard of each enabled provider channel per HTTP worker too (see
    // channel/provider.rs), started the same way.
    let provider = |enabled: bool| {
        enabled.then(|| {
            (0..workers)
                .map(|_| mailbox::<ProviderChannel>())
                .unzip::<_, _, Vec<_>, Vec<_>>()
        })
    };
    let sms = provider(config.sms_enabled());
    let whatsapp = provider(config.whatsapp_enabled());
    let messenger = provider(config.messenger_enabled());
    // Each enabled provider's outbound queue: in flight plus waiting.
    let outbound = config.provider_queue + config.provider_in_flight;
    let http = reqwest::Client::builder()
        .timeout(config.provider_timeout)
        .connect_timeout(config.provider_timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build()
        .map_err(std::io::Error::other)?;
    let graph = config.graph_api_base.clone();
    // What each provider's shards share: API, in-flight permits, outbound
    // queue, status index.
    let shared = |api: ProviderApi| {
        ProviderShared::new(
            api,
            http.clone(),
            config.provider_in_flight,
            Arc::new(OutboundBudget::new(outbound)),
        )
    };
    let sms_shared = sms.as_ref().map(|_| {
        shared(ProviderApi::Sms(SmsApi {
            api_base: config.twilio_api_base.clone(),
            account_sid: config.twilio_account_sid.clone().unwrap_or_default(),
            auth_token: config.twilio_auth_token.clone().unwrap_or_default(),
            status_callback: format!("{}/v1/channels/sms/status", config.public_base()),
        }))
    });
    let whatsapp_shared = whatsapp.as_ref().map(|_| {
        shared(ProviderApi::Whatsapp(WhatsappApi {
            graph_base: graph.clone(),
            token: config.whatsapp_token.clone().unwrap_or_default(),
            phone_number_id: config.whatsapp_phone_number_id.clone().unwrap_or_default(),
        }))
    });
    let messenger_shared = messenger.as_ref().map(|_| {
        shared(ProviderApi::Messenger(MessengerApi {
            graph_base: graph.clone(),
            page_token: config.messenger_page_token.clone().unwrap_or_default(),
        }))
    });
    let enabled = [
        (ChannelKind::Sms, sms, sms_shared),
        (ChannelKind::Whatsapp, whatsapp, whatsapp_shared),
        (ChannelKind::Messenger, messenger, messenger_shared),
    ];
    let mut budgets: [Option<Arc<OutboundBudget>>; 4] = Default::default();
    let mut channels = Channels {
        webchat: WebchatShards::new(webchat),
        sms: None,
        whatsapp: None,
        messenger: None,
        budgets: Default::default(),
    };
    // Per provider: its kind, shared part and each worker's mailbox.
    let mut to_start: Vec<(ChannelKind, ProviderShared, Vec<Mailbox<ProviderChannel>>)> =
        Vec::new();
    for (kind, shards, shared) in enabled {
        let (Some((addrs, mailboxes)), Some(shared)) = (shards, shared) else {
            continue;
        };
        budgets[kind.index()] = Some(shared.budget.clone());
        let handle = Some(ProviderShards::new(addrs, shared.index.clone()));
        match kind {
            ChannelKind::Sms => channels.sms = handle,
            ChannelKind::Whatsapp => channels.whatsapp = handle,
            ChannelKind::Messenger => channels.messenger = handle,
            ChannelKind::Webchat => {}
        }
        to_start.push((kind, shared, mailboxes));
    }
    channels.budgets = budgets;
    // Webhook deliveries on an arbiter of their own (only when configured):
    // a slow receiver's requests and retries never run on an actor's thread.
    let webhook_arbiter = (!config.webhooks.is_empty()).then(&mut arbiter);
    let webhooks = Webhooks::start(&config, webhook_arbiter.as_ref())?;
    let (journal, prepared) = match opened {
        Some(Opened { journal, prepared }) => (Some(journal), Some(prepared)),
        None => (None, None),
    };
    let broker = Broker::new(BrokerParts {
        config: config.clone(),
        admin_token: admin_token.clone(),
        router,
        channels,
        supervisor: supervisor.clone(),
        http: http.clone(),
        webhooks,
        journal,
    });
    supervisor.do_send(Attach(Arc::downgrade(&broker)));
    if let Some(files) = files {
        broker.attachments.set_replica(files);
    }
    if let Some(journal) = broker.journal.clone() {
        let webhook_journal = journal.clone();
        broker.webhooks.journal_to(move |entry| {
            use crate::journal::record::RecordRef;
            use crate::webhooks::JournalEntry;
            let record = match entry {
                JournalEntry::Queued {
                    url,
                    id,
                    lane,
                    body,
                    at,
                } => RecordRef::WebhookQueued {
                    url,
                    id,
                    lane,
                    body,
                    at,
                },
                JournalEntry::Done { url, id } => RecordRef::WebhookDone { url, id },
            };
            crate::journal::record::write(Some(&webhook_journal), record);
        });
        broker.canned.journal_to(move |event| {
            crate::journal::record::write(
                Some(&journal),
                crate::journal::record::RecordRef::Canned(event),
            )
        });
    }
    let mut router = Router::new(broker.clone());
    let mut webchat_shards: Vec<WebchatChannel> = (0..workers)
        .map(|_| WebchatChannel::new(broker.clone()))
        .collect();
    let mut provider_shards: Vec<(ChannelKind, Vec<ProviderChannel>)> = to_start
        .iter()
        .map(|(kind, shared, _)| {
            let shards = (0..workers)
                .map(|_| ProviderChannel::new(broker.clone(), shared.clone(), workers))
                .collect();
            (*kind, shards)
        })
        .collect();
    let replayed = match prepared {
        Some(prepared) => Some(crate::recovery::rebuild(
            &broker,
            prepared,
            crate::recovery::Channels {
                router: &mut router,
                webchat: &mut webchat_shards,
                providers: &mut provider_shards,
            },
        )),
        None => {
            router.define_configured_queues();
            None
        }
    };
    run_router(router);
    if let Some(replayed) = replayed {
        replayed.start(&broker);
    }
    if let Some(journal) = &broker.journal {
        crate::compactor::start(
            journal,
            crate::snapshot::ReplaySettings::of(&config),
            config.data_dir.as_ref().map(|d| d.join("files")),
            crate::compactor::Schedule {
                every_records: config.snapshot_every_records,
                interval: config.snapshot_interval,
            },
        )?;
    }
    let mut per_worker: Vec<WorkerShards> = webchat_mailboxes
        .into_iter()
        .zip(webchat_shards)
        .map(|webchat| WorkerShards {
            webchat,
            providers: Vec::new(),
        })
        .collect();
    for ((_, _, mailboxes), (_, channels)) in to_start.into_iter().zip(provider_shards) {
        for ((worker, mailbox), channel) in per_worker.iter_mut().zip(mailboxes).zip(channels) {
            worker.providers.push((mailbox, channel));
        }
    }
    let waiting_shards: Arc<Mutex<Vec<_>>> =
        Arc::new(Mutex::new(per_worker.into_iter().map(Some).collect()));
    let next_worker = Arc::new(AtomicUsize::new(0));
    channel_arbiter.spawn(sweep_unused_attachments(Arc::downgrade(&broker)));
    channel_arbiter.spawn(sweep_limits(Arc::downgrade(&broker)));

    let generated_agent_tokens = seed_agents(&broker, &config)?;
    if config.sim_agents > 0 {
        crate::sim::start(
            &broker,
            config.sim_agents,
            crate::sim::SimBehaviour {
                capacity: config.sim_capacity,
                accept_delay: config.sim_accept_delay,
                reply_delay: config.sim_reply_delay,
                wrapup_delay: config.sim_wrapup_delay,
                replies: config.sim_replies,
                disposition: config.sim_disposition.clone(),
                seed: config.sim_seed,
            },
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!(count = config.sim_agents, "simulated agents started");
    }

    let data = web::Data::new(broker.clone());
    let mut builder = actix_web::dev::Server::build()
        .workers(workers)
        // Signals are the shutdown's (`shutdown.rs`): it closes the sockets
        // and flushes the journal before the server stops.
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs().max(1));
    let shutdown = builder.graceful_shutdown_signal();
    let mut addrs = Vec::new();
    let mut last_error = None;
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(config.bind.as_str())
        .map_err(|e| bind_error(&config.bind, e))?;
    for addr in resolved {
        let listener = match listen(addr) {
            Ok(l) => l,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let local = listener.local_addr()?;
        addrs.push(local);
        let data = data.clone();
        let waiting_shards = waiting_shards.clone();
        let next_worker = next_worker.clone();
        let shutdown = shutdown.clone();
        let header_timeout = config.request_header_timeout;
        let node_bus = node_bus.clone();
        builder = builder.listen(format!("switchboard-{local}"), listener, move || {
            join_as_shard(&data, &waiting_shards, &next_worker, node_bus.as_ref());
            let stop = shutdown.clone();
            let shutdown = shutdown.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = shutdown.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(actix_http::KeepAlive::default())
                // Slow headers (slowloris): closed when not complete in time.
                .client_request_timeout(header_timeout)
                .client_disconnect_timeout(std::time::Duration::from_secs(1))
                // Chat frames are small: send them at once instead of waiting
                // to coalesce (Nagle + delayed ACK would add ~40 ms per frame).
                .tcp_nodelay(true)
                .local_addr(local)
                // WebSockets leave the HTTP/1 dispatcher and its buffers at
                // the upgrade (src/http/upgrade.rs).
                .upgrade(upgrades(data.clone()))
                .finish(map_config(app(data.clone()), |_| app_config()));
            // As `HttpService::tcp` does, with the first request line read
            // (and a URL past the limit refused) before the dispatcher, and
            // every connection counted (`max_connections`, per address).
            let http = fn_service(move |io: TcpStream| {
                let stop = stop.clone();
                async move {
                    let _ = io.set_nodelay(true);
                    let peer = io.peer_addr().ok();
                    let io = request_line::screen(io, header_timeout, stop.notified()).await;
                    Ok::<_, actix_http::error::DispatchError>((
                        io,
                        actix_http::Protocol::Http1,
                        peer,
                    ))
                }
            })
            .and_then(http);
            admit_connections(http, data.limits.connections.clone())
        })?;
    }
    if addrs.is_empty() {
        let e = last_error.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the address resolves to nothing",
            )
        });
        return Err(bind_error(&config.bind, e));
    }
    let server = builder.run();
    Ok(Started {
        server,
        addrs,
        admin_token,
        generated_agent_tokens,
        arbiters,
        broker,
    })
}

/// Open the journal the configuration names, and read it back.
fn open_journal(
    config: &Config,
) -> std::io::Result<Option<(crate::journal::Journal, crate::journal::Recovered)>> {
    let Some(cfg) = config.journal() else {
        return Ok(None);
    };
    let dir = cfg.dir.clone();
    let (journal, recovered) = crate::journal::Journal::open(cfg)
        .map_err(|e| std::io::Error::other(format!("data dir {}: {e}", dir.display())))?;
    if let Some(cut) = &recovered.cut {
        tracing::warn!(?cut, "the journal's torn tail was cut");
    }
    Ok(Some((journal, recovered)))
}

/// Connections need a file each, and the broker a few more for itself.
const SPARE_FILES: u64 = 64;

/// Raise the open-files limit to its hard limit, and warn when
/// `max_connections` would still not fit: past the limit `accept` fails with
/// "Too many open files" and every client, `/healthz` too, waits.
fn open_files_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + SPARE_FILES => tracing::warn!(
            open_files_limit = limit,
            max_connections,
            "the open-files limit is below max_connections: raise it (ulimit -n, \
             LimitNOFILE=) or lower max_connections"
        ),
        Ok(limit) => tracing::debug!(open_files_limit = limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// Run until Ctrl-C / SIGTERM. Used by `main`.
///
/// Prints on stdout, once listening: the [`banner`] (URLs and channels), then
/// `admin token: …` when it was generated and `agent <id> token: …` for each
/// configured agent whose token was generated. Logs go to stderr.
pub fn run(config: Config) -> std::io::Result<()> {
    let generated = config.admin_token.is_none();
    open_files_limit(config.max_connections);
    let system = actix::System::new();
    system.block_on(async move {
        // Cluster mode: a standby until this node holds the core lease
        // (`cluster::node`); it listens only once it is the active node.
        let promoted = match (config.cluster(), config.journal()) {
            (Some(settings), Some(journal)) => {
                // While a standby it relays clients to the active node, or
                // answers `503 standby` (`http/standby.rs`), on the address
                // it will serve on.
                let view = Arc::new(crate::cluster::node::StandbyView::new(&settings.node_id));
                // The bus between nodes, for as long as the node runs: as a
                // standby it carries its customers' sockets to the active
                // node; once active, the sockets standbys hold for it.
                let node_bus = crate::cluster::node_bus::NodeBus::start(settings.clone());
                let http = crate::http::standby::start(&config, view.clone(), node_bus.clone())?;
                for addr in &http.addrs {
                    if config.cluster_relay {
                        tracing::info!(
                            "standby listening on http://{addr} (relaying to the active node)"
                        );
                    } else {
                        tracing::info!(
                            "standby listening on http://{addr} (503 standby until active)"
                        );
                    }
                    println!("standby: http://{addr}");
                }
                let promoted = tokio::select! {
                    promoted = crate::cluster::node::standby(
                        settings,
                        journal,
                        crate::cluster::node::Compaction {
                            settings: crate::snapshot::ReplaySettings::of(&config),
                            files: config.data_dir.as_ref().map(|d| d.join("files")),
                            schedule: crate::compactor::Schedule {
                                every_records: config.snapshot_every_records,
                                interval: config.snapshot_interval,
                            },
                        },
                        view,
                    ) => promoted,
                    () = crate::shutdown::signalled() => {
                        tracing::info!("stopped while a standby");
                        http.stop().await;
                        return Ok(());
                    }
                };
                http.stop().await;
                Some((promoted.map_err(std::io::Error::other)?, node_bus))
            }
            _ => None,
        };
        let (promoted, node_bus) = promoted.unzip();
        let files = promoted.as_ref().map(|p| p.files());
        // Reading the journal back and replaying it may take seconds: on a
        // blocking thread, while this one goes on (a node that has just
        // taken over must keep renewing its lease meanwhile).
        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || open_and_replay(&config))
                .await
                .map_err(std::io::Error::other)??
        };
        let started = start_opened(config.clone(), files, opened, node_bus.clone())?;
        if let Some(node_bus) = &node_bus {
            node_bus.serve(started.broker.clone());
        }
        let active = match (promoted, &started.broker.journal) {
            (Some(promoted), Some(journal)) => {
                let active = crate::cluster::node::Active::start(promoted, journal)
                    .map_err(std::io::Error::other)?;
                let _ = started
                    .broker
                    .cluster
                    .set(active.status() as Arc<dyn crate::broker::ClusterView>);
                Some(active)
            }
            _ => None,
        };
        for addr in &started.addrs {
            tracing::info!("switchboard listening on http://{addr}");
        }
        if let Some(addr) = started.addrs.first() {
            for line in banner(&config, *addr) {
                println!("{line}");
            }
        }
        if generated {
            println!("admin token: {}", started.admin_token);
        }
        for (id, token) in &started.generated_agent_tokens {
            println!("agent {id} token: {token}");
        }
        let handle = started.server.handle();
        let broker = started.broker.clone();
        let timeout = config.shutdown_timeout;
        actix_web::rt::spawn(async move {
            let lost = match &active {
                Some(active) => tokio::select! {
                    () = crate::shutdown::signalled() => None,
                    why = active.lost() => Some(why),
                },
                None => {
                    crate::shutdown::signalled().await;
                    None
                }
            };
            if let Some(why) = lost {
                return fail_stop(broker, &why, timeout).await;
            }
            crate::shutdown::drain(broker, timeout).await;
            if let Some(active) = active {
                active.stop(timeout).await;
            }
            handle.stop(true).await;
        });
        let result = started.server.await;
        for a in started.arbiters {
            a.stop();
        }
        result
    })
}

/// An active node that may no longer act as one (`cluster::node`): from
/// now on the journal refuses every change, so nothing more is
/// acknowledged; the sockets are closed (their clients reconnect to the new
/// active node) and the process exits with `EXIT_LOST` for its supervisor
/// to restart it as a standby.
async fn fail_stop(broker: Arc<Broker>, why: &str, timeout: std::time::Duration) {
    tracing::error!(
        reason = why,
        "no longer the active node: refusing every change and stopping"
    );
    if let Some(journal) = &broker.journal {
        journal.fail(&format!("this node is no longer the active one ({why})"));
    }
    crate::shutdown::drain(broker, timeout).await;
    std::process::exit(crate::cluster::node::EXIT_LOST)
}

/// A broker running on its own thread, for tests and embedding.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub admin_token: String,
    handle: Option<ServerHandle>,
    system: Option<actix::System>,
    thread: Option<JoinHandle<()>>,
    /// Closed on stop, so the data dir is free for the next broker at once.
    journal: Option<crate::journal::Journal>,
}

impl RunningServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stop the server and wait for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Not graceful: tests want a fast stop, and open sockets would
            // otherwise hold it for the shutdown timeout.
            drop(handle.stop(false));
        }
        if let Some(system) = self.system.take() {
            system.stop();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(journal) = self.journal.take() {
            if let Err(e) = journal.close(std::time::Duration::from_secs(5)) {
                tracing::error!(error = %e, "journal not closed cleanly");
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start a broker on a new thread; returns once it listens.
pub fn spawn(config: Config) -> std::io::Result<RunningServer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("switchboard".into())
        .spawn(move || {
            let system = actix::System::new();
            let sys = actix::System::current();
            system.block_on(async move {
                match start(config) {
                    Ok(started) => {
                        let handle = started.server.handle();
                        let journal = started.broker.journal.clone();
                        let _ = tx.send(Ok((
                            started.addrs,
                            started.admin_token,
                            handle,
                            sys,
                            journal,
                        )));
                        let _ = started.server.await;
                        for a in started.arbiters {
                            a.stop();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    let (addrs, admin_token, handle, system, journal) = rx
        .recv()
        .map_err(|_| std::io::Error::other("server thread died during start-up"))??;
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("server bound no address"))?;
    Ok(RunningServer {
        addr,
        admin_token,
        handle: Some(handle),
        system: Some(system),
        thread: Some(thread),
        journal,
    })
}

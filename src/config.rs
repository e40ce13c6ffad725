//! Configuration: embedded defaults, an optional TOML file (`--config`),
//! environment variables (`SWITCHBOARD_*`) and flags, later ones winning:
//! flag > env > file > default. Any bad value stops start-up with a message
//! naming the setting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Deserialize;

use crate::canned::{CannedDraft, CannedLimits};
use crate::clock::Clock;
use crate::profile::{valid_token, AgentProfile};
use crate::protocol::{ChannelKind, PerChannel};
use crate::router::queue::Queue;

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    // One readable line per event; coloured only when stderr is a terminal.
    // (Plain comments: doc comments here would switch `--help` to its long
    // layout.)
    #[default]
    Text,
    // One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// When journal records are fsynced (`fsync`); see [`crate::journal::Fsync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    // Every batch of records fsynced before any is acknowledged.
    Always,
    // Group commit: one fsync per fsync_interval at most.
    #[default]
    Batch,
    // Written to the OS only: a machine crash loses what it had not written.
    Never,
}

impl FsyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Batch => "batch",
            FsyncMode::Never => "never",
        }
    }
}

/// An agent created at start: an `[[agents]]` table of the configuration
/// file. Checked like `POST /v1/agents`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSeed {
    pub id: String,
    /// Defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub capacity: PerChannel,
    #[serde(default)]
    pub skills: Vec<String>,
    /// At least 16 characters; generated and printed at start when absent.
    #[serde(default)]
    pub token: Option<String>,
}

/// The shortest admin token accepted when one is set by hand: long enough
/// that guessing it is hopeless even before failed attempts are throttled
/// (generated tokens are 32 hex digits, 128 bits).
pub const MIN_ADMIN_TOKEN: usize = 32;
/// A provider inbound rule (`[[routes]]`): messages written to `to` (the
/// business number, phone number id or page id) on `channel` wait in `queue`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub channel: ChannelKind,
    pub to: String,
    pub queue: String,
}

/// An event webhook endpoint (`[[webhooks]]`, `docs/webhooks.md`): where
/// events are POSTed, the key they are signed with, and which types it hears
/// (names or `prefix.*` globs; empty or absent: every type).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    pub url: String,
    pub secret: String,
    #[serde(default)]
    pub events: Vec<String>,
}

/// The secret stays out of logs and panics.
impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field("secret", &"…")
            .field("events", &self.events)
            .finish()
    }
}

/// The shortest webhook secret accepted: as long as the other signing keys.
pub const MIN_WEBHOOK_SECRET: usize = 32;

/// Everything the broker can be tuned with. Public fields so tests and embedders
/// can build one directly.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Listen address.
    pub bind: String,
    /// Admin bearer token; generated and printed at start-up when absent.
    pub admin_token: Option<String>,
    /// Failed authentications (a token that matches nothing) per client
    /// address per minute before it answers `429 rate_limited`.
    pub auth_failures_per_minute: u32,
    /// Lifetime of an agent token from when it is issued (created, rotated,
    /// or the start for one from the file); `None`: tokens do not expire.
    pub agent_token_ttl: Option<Duration>,
    /// A token that reads `/metrics` only (the admin token reads it too).
    pub metrics_token: Option<String>,
    /// `/metrics` without any token.
    pub metrics_public: bool,
    /// How long an offer waits for accept/reject before it goes to the next agent.
    pub offer_timeout: Duration,
    /// How long an agent who declined a task (reject or offer timeout) is
    /// passed over for it while nobody else takes it; after that it is offered
    /// the task again, the longest-ago decline first.
    pub reoffer_cooldown: Duration,
    /// How long a disconnected agent keeps its tasks.
    pub disconnect_grace: Duration,
    /// How long a webchat customer with no socket left may stay away before
    /// a conversation still waiting for an agent is canceled.
    pub customer_grace: Duration,
    /// How long a webchat session with no socket and nothing to show (no open
    /// or retained conversation) is kept before it and its token are forgotten.
    pub webchat_session_idle: Duration,
    /// How long a task may stay in wrap-up before it is completed automatically.
    pub wrapup_timeout: Duration,
    /// SIGTERM/SIGINT: how long the broker has to close sockets, finish
    /// provider sends and flush the journal before it exits.
    pub shutdown_timeout: Duration,
    /// Disposition used when the wrap-up timeout completes a task.
    pub wrapup_disposition: String,
    /// How long a finished conversation stays readable before it is dropped
    /// from memory.
    pub history_retention: Duration,
    /// Largest accepted upload, in bytes.
    pub max_upload: u64,
    /// Longest message text, in characters.
    pub max_text: usize,
    /// Longest wrap-up notes, in characters.
    pub max_notes: usize,
    /// Most canned responses in the library.
    pub max_canned_responses: usize,
    /// Longest canned response text (the template), in characters.
    pub max_canned_text: usize,
    /// Largest WebSocket frame a client may send, in bytes.
    pub max_frame: usize,
    /// Frames queued for one socket before its client counts as a slow consumer.
    pub socket_backlog: usize,
    /// Content types a webchat customer may upload: exact (`image/png`) or a
    /// whole family (`image/*`).
    pub webchat_upload_types: Vec<String>,
    /// Key of the signed pre-chat context a customer's own backend gives its
    /// widget (HMAC-SHA256); None: sessions with a context are refused.
    pub webchat_context_secret: Option<String>,
    /// Most messages one conversation holds; at the cap it takes no more
    /// (`history_full`) and says so in a system message.
    pub max_history_messages: usize,
    /// Most bytes of message text and file metadata one conversation holds;
    /// the same rule as `max_history_messages`.
    pub max_history_bytes: u64,
    /// Most messages a (re)connecting desk or widget is sent at once; older
    /// ones are read page by page (`before_seq`).
    pub history_replay: usize,
    /// Most bytes of messages in one replay (`history`, `task.assigned`).
    pub history_frame_bytes: u64,
    /// Bytes queued for one socket before its client counts as a slow consumer
    /// (a single frame larger than this still goes to a socket with nothing
    /// queued).
    pub socket_backlog_bytes: u64,
    /// A socket whose client reads nothing of a pending write for this long is
    /// closed and its memory freed.
    pub socket_write_timeout: Duration,

    /// Addresses (IPs or CIDR ranges) of reverse proxies whose
    /// `X-Forwarded-For` names the client; empty: the peer address is the client.
    pub trusted_proxies: Vec<String>,
    /// Open connections (HTTP and WebSocket) at once; over it new connections
    /// get `503` and a warning is logged.
    pub max_connections: usize,
    /// Open connections from one client address (0: no limit); over it `429`.
    pub max_connections_per_ip: usize,
    /// Time for a request's headers to arrive in full.
    pub request_header_timeout: Duration,
    /// Time for a request body's first bytes; then each `request_body_min_rate`
    /// bytes received give one more second.
    pub request_body_timeout: Duration,
    /// Slowest accepted body upload, in bytes per second (see above).
    pub request_body_min_rate: u64,
    /// `POST /v1/webchat/sessions` per client address per minute (0: no limit).
    pub sessions_per_ip_per_minute: u32,
    /// Webchat sessions alive at once created from one client address (0: no limit).
    pub open_sessions_per_ip: usize,
    /// Sockets open at once on one webchat session (0: no limit).
    pub sockets_per_session: usize,
    /// Commands a customer socket may send per second (burst: as many at once).
    pub socket_messages_per_second: u32,
    /// Customer messages per second into one webchat conversation, all of the
    /// customer's sockets together (burst: as many at once).
    pub conversation_messages_per_second: u32,
    /// Files one webchat session may hold at once (uploaded and still in memory).
    pub uploads_per_session: usize,
    /// Bytes of files one webchat session may hold at once.
    pub upload_bytes_per_session: u64,
    /// Customer uploads per client address per minute (0: no limit).
    pub uploads_per_ip_per_minute: u32,
    /// Bytes of files the webchat sessions of one client address may hold at
    /// once (0: no limit).
    pub upload_bytes_per_ip: u64,
    /// Closing codes an agent may pick in wrap-up.
    pub dispositions: Vec<String>,
    /// HTTP worker threads and conversation shards (0 = one per core).
    pub workers: usize,
    /// Let the kernel back the heap with transparent huge pages. Off by
    /// default: the broker's heap is many small objects touched sparsely,
    /// and a huge page zeroes 2 MiB on its first touch (`main.rs`).
    pub transparent_huge_pages: bool,
    /// Ping interval on every socket.
    pub heartbeat_interval: Duration,
    /// A socket silent (no frame, no pong) for this long is closed.
    pub client_timeout: Duration,
    /// Log lines as text or JSON.
    pub log_format: LogFormat,
    /// Directory of the journal and snapshots; None: purely in memory,
    /// nothing survives a restart.
    pub data_dir: Option<PathBuf>,
    /// When journal records are fsynced (and so acknowledged).
    pub fsync: FsyncMode,
    /// Under `fsync = "batch"`: most time between a record's write and its fsync.
    pub fsync_interval: Duration,
    /// Size at which the journal starts a new segment file.
    pub journal_segment_bytes: u64,
    /// Bytes of records waiting for the journal's writer before new ones are
    /// refused (`unavailable`).
    pub journal_queue_bytes: u64,
    /// A snapshot is written once this many records follow the last one.
    pub snapshot_every_records: u64,
    /// A snapshot is written at least this often while records come in.
    pub snapshot_interval: Duration,
    /// Cluster mode: the NATS server(s) the nodes share (`docs/cluster.md`);
    /// None: a single node.
    pub cluster: Option<String>,
    /// This node's id in the cluster (required with `cluster`).
    pub node_id: Option<String>,
    /// How long the active node's lease lasts without renewal.
    pub cluster_lease_ttl: Duration,
    /// JetStream replicas of the cluster's buckets and stream.
    pub cluster_replicas: usize,
    /// Names of the cluster's buckets and stream, and its subjects' first token.
    pub cluster_prefix: String,
    /// A standby relays the clients it accepts to the active node
    /// (`cluster::relay`); false: it refuses them (`503 standby`).
    pub cluster_relay: bool,
    /// TLS to NATS: CA certificate(s) to trust (PEM); requires TLS.
    pub cluster_tls_ca: Option<PathBuf>,
    /// TLS to NATS: this node's client certificate and key (PEM), for a
    /// NATS that verifies clients; both or neither.
    pub cluster_tls_cert: Option<PathBuf>,
    pub cluster_tls_key: Option<PathBuf>,
    /// A file holding this node's NKey seed, for a NATS that knows the
    /// nodes by their NKeys.
    pub cluster_nkey: Option<PathBuf>,
    /// A NATS credentials file (`.creds`), for a NATS in operator mode.
    pub cluster_credentials: Option<PathBuf>,
    /// Agents created at start.
    pub agents: Vec<AgentSeed>,
    /// Queues defined at start (`default` is always there too).
    pub queues: Vec<Queue>,
    /// Provider inbound → queue by business address.
    pub routes: Vec<Route>,
    /// Event webhook endpoints.
    pub webhooks: Vec<WebhookEndpoint>,
    /// One webhook request's deadline.
    pub webhook_timeout: Duration,
    /// First webhook retry delay; doubles each time, with jitter.
    pub webhook_backoff: Duration,
    /// How long after an event its delivery is retried before it is given up.
    pub webhook_retry_for: Duration,
    /// Events queued (in flight included) per webhook endpoint; more are dropped.
    pub webhook_queue: usize,
    /// Deliveries in flight at once per webhook endpoint (one per lane).
    pub webhook_in_flight: usize,
    /// Canned responses in the library at start.
    pub canned_responses: Vec<CannedDraft>,
    /// Points of priority a waiting task gains per minute.
    pub aging: u32,
    /// Offers in a row an agent may let time out before it is set
    /// `not_responding` (0: never).
    pub max_missed_offers: u32,
    /// The wall clock business hours are read from: the system's, unless an
    /// embedder or test passes a manual one (no setting reaches it).
    pub clock: Clock,

    /// Externally visible base URL (Twilio signs it; provider links use it).
    /// Default: `http://<bind>`.
    pub public_url: Option<String>,
    /// SMS (Twilio): enabled when SID, auth token and a from-number are set.
    pub twilio_account_sid: Option<String>,
    pub twilio_auth_token: Option<String>,
    /// Business number(s) replies come from; the first starts outbound SMS.
    pub sms_from: Vec<String>,
    pub twilio_api_base: String,
    /// WhatsApp (Cloud API): enabled when token, app secret, verify token and
    /// phone number id are set.
    pub whatsapp_token: Option<String>,
    pub whatsapp_app_secret: Option<String>,
    pub whatsapp_verify_token: Option<String>,
    pub whatsapp_phone_number_id: Option<String>,
    /// Messenger: enabled when page token, app secret and verify token are set.
    pub messenger_page_token: Option<String>,
    pub messenger_app_secret: Option<String>,
    pub messenger_verify_token: Option<String>,
    /// Graph API base for both Meta channels.
    pub graph_api_base: String,
    /// WhatsApp/Messenger free-form window after the customer's last message.
    pub messaging_window: Duration,
    /// Per-request timeout towards providers.
    pub provider_timeout: Duration,
    /// Retries of a transient send failure before it is reported failed.
    pub provider_retries: u32,
    /// First retry delay; doubles each time, with jitter.
    pub provider_backoff: Duration,
    /// Sends in flight at once per provider channel.
    pub provider_in_flight: usize,
    /// Sends waiting per provider channel before agents get `rate_limited`.
    pub provider_queue: usize,
    /// Provider message ids remembered to drop webhook retries.
    pub webhook_dedupe: usize,
    /// Largest webhook body, in bytes.
    pub max_webhook_body: u64,
    /// Lifetime of signed attachment links handed to providers.
    pub attachment_link_ttl: Duration,

    /// Simulated agents started inside the broker (0: none).
    pub sim_agents: usize,
    /// Their capacity on every channel.
    pub sim_capacity: u32,
    /// Mean delays (exponentially distributed) before accepting, replying and
    /// completing.
    pub sim_accept_delay: Duration,
    pub sim_reply_delay: Duration,
    pub sim_wrapup_delay: Duration,
    /// Replies per conversation before a simulated agent ends it.
    pub sim_replies: u32,
    pub sim_disposition: String,
    /// Seed of the simulated agents' random draws.
    pub sim_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:8080".into(),
            admin_token: None,
            auth_failures_per_minute: 10,
            agent_token_ttl: None,
            metrics_token: None,
            metrics_public: false,
            offer_timeout: Duration::from_secs(30),
            reoffer_cooldown: Duration::from_secs(30),
            disconnect_grace: Duration::from_secs(60),
            customer_grace: Duration::from_secs(60),
            webchat_session_idle: Duration::from_secs(30 * 60),
            wrapup_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(10),
            wrapup_disposition: "no_response".into(),
            history_retention: Duration::from_secs(3600),
            max_upload: 25 * 1024 * 1024,
            max_text: 4096,
            max_notes: 4000,
            max_canned_responses: 1000,
            max_canned_text: 4096,
            max_frame: 64 * 1024,
            socket_backlog: 512,
            webchat_upload_types: [
                "image/jpeg",
                "image/png",
                "image/gif",
                "image/webp",
                "application/pdf",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            webchat_context_secret: None,
            max_history_messages: 10_000,
            max_history_bytes: 4 * 1024 * 1024,
            history_replay: 200,
            history_frame_bytes: 128 * 1024,
            socket_backlog_bytes: 4 * 1024 * 1024,
            socket_write_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            max_connections_per_ip: 500,
            request_header_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(10),
            request_body_min_rate: 1024,
            sessions_per_ip_per_minute: 60,
            open_sessions_per_ip: 300,
            sockets_per_session: 8,
            socket_messages_per_second: 10,
            conversation_messages_per_second: 5,
            uploads_per_session: 50,
            upload_bytes_per_session: 100 * 1024 * 1024,
            uploads_per_ip_per_minute: 30,
            upload_bytes_per_ip: 200 * 1024 * 1024,
            dispositions: ["resolved", "follow_up", "escalated", "spam", "no_response"]
                .map(String::from)
                .to_vec(),
            workers: 0,
            transparent_huge_pages: false,
            heartbeat_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(60),
            log_format: LogFormat::Text,
            data_dir: None,
            fsync: FsyncMode::Batch,
            fsync_interval: crate::journal::DEFAULT_BATCH_DELAY,
            journal_segment_bytes: crate::journal::DEFAULT_SEGMENT_BYTES,
            journal_queue_bytes: crate::journal::DEFAULT_QUEUE_BYTES as u64,
            snapshot_every_records: 1_000_000,
            snapshot_interval: Duration::from_secs(600),
            cluster: None,
            node_id: None,
            cluster_lease_ttl: Duration::from_secs(10),
            cluster_replicas: 1,
            cluster_prefix: "switchboard".into(),
            cluster_relay: true,
            cluster_tls_ca: None,
            cluster_tls_cert: None,
            cluster_tls_key: None,
            cluster_nkey: None,
            cluster_credentials: None,
            agents: Vec::new(),
            queues: Vec::new(),
            routes: Vec::new(),
            webhooks: Vec::new(),
            webhook_timeout: Duration::from_secs(10),
            webhook_backoff: Duration::from_secs(1),
            webhook_retry_for: Duration::from_secs(3600),
            webhook_queue: 10_000,
            webhook_in_flight: 4,
            canned_responses: Vec::new(),
            aging: 1,
            max_missed_offers: 3,
            clock: Clock::system(),
            public_url: None,
            twilio_account_sid: None,
            twilio_auth_token: None,
            sms_from: Vec::new(),
            twilio_api_base: "https://api.twilio.com".into(),
            whatsapp_token: None,
            whatsapp_app_secret: None,
            whatsapp_verify_token: None,
            whatsapp_phone_number_id: None,
            messenger_page_token: None,
            messenger_app_secret: None,
            messenger_verify_token: None,
            graph_api_base: "https://graph.facebook.com/v21.0".into(),
            messaging_window: Duration::from_secs(24 * 3600),
            provider_timeout: Duration::from_secs(10),
            provider_retries: 5,
            provider_backoff: Duration::from_millis(500),
            provider_in_flight: 64,
            provider_queue: 10_000,
            webhook_dedupe: 100_000,
            max_webhook_body: 1024 * 1024,
            attachment_link_ttl: Duration::from_secs(3600),
            sim_agents: 0,
            sim_capacity: 5,
            sim_accept_delay: Duration::from_millis(500),
            sim_reply_delay: Duration::from_secs(2),
            sim_wrapup_delay: Duration::from_secs(1),
            sim_replies: 3,
            sim_disposition: "resolved".into(),
            sim_seed: 1,
        }
    }
}

/// The pre-chat context secret of [`Config::for_tests`].
pub const TEST_CONTEXT_SECRET: &str = "test-context-secret-0123456789abcdef";

impl Config {
    /// Defaults for in-process tests: an ephemeral loopback port, a known admin
    /// token, two workers, and the per-client limits out of the way (every
    /// test client is the one loopback address; the abuse tests set their own).
    pub fn for_tests() -> Self {
        Config {
            bind: "127.0.0.1:0".into(),
            admin_token: Some("test-admin-0123456789abcdef0123456789".into()),
            webchat_context_secret: Some(TEST_CONTEXT_SECRET.into()),
            workers: 2,
            ..Config::default().without_client_limits()
        }
    }

    /// The per-client limits as high as they go, for a load test that drives
    /// thousands of customers from one address.
    pub fn without_client_limits(self) -> Self {
        Config {
            max_connections_per_ip: 0,
            sessions_per_ip_per_minute: 0,
            open_sessions_per_ip: 0,
            sockets_per_session: 0,
            socket_messages_per_second: 1_000_000,
            conversation_messages_per_second: 1_000_000,
            uploads_per_ip_per_minute: 0,
            upload_bytes_per_ip: 0,
            ..self
        }
    }

    /// Number of worker threads / shards to run.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }

    /// Layer file, env and flags over the defaults.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
            let file: Args = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
            file.apply(&mut cfg);
        }
        args.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cluster mode's settings, or None for a single node (no `cluster`).
    pub fn cluster(&self) -> Option<crate::cluster::ClusterSettings> {
        let url = self.cluster.as_ref()?;
        Some(crate::cluster::ClusterSettings {
            url: url.clone(),
            node_id: self.node_id.clone().unwrap_or_default(),
            prefix: self.cluster_prefix.clone(),
            lease_ttl: self.cluster_lease_ttl,
            replicas: self.cluster_replicas,
            tls_ca: self.cluster_tls_ca.clone(),
            tls_cert: self.cluster_tls_cert.clone(),
            tls_key: self.cluster_tls_key.clone(),
            nkey: self.cluster_nkey.clone(),
            credentials: self.cluster_credentials.clone(),
        })
    }

    /// The journal's settings, or None without a `data_dir` (purely in
    /// memory). The journal lives in `<data_dir>/journal/`, leaving the rest
    /// of the data dir to other files (attachments).
    pub fn journal(&self) -> Option<crate::journal::JournalConfig> {
        let dir = self.data_dir.as_ref()?.join("journal");
        Some(crate::journal::JournalConfig {
            fsync: match self.fsync {
                FsyncMode::Always => crate::journal::Fsync::Always,
                FsyncMode::Batch => crate::journal::Fsync::Batch {
                    max_delay: self.fsync_interval,
                },
                FsyncMode::Never => crate::journal::Fsync::Never,
            },
            segment_bytes: self.journal_segment_bytes,
            queue_bytes: usize::try_from(self.journal_queue_bytes).unwrap_or(usize::MAX),
            // Cluster mode: durable once in NATS too (`cluster::replicate`).
            replicated: self.cluster.is_some(),
            ..crate::journal::JournalConfig::new(dir)
        })
    }

    /// The base URL providers see.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }

    /// The settings a channel still needs, by their environment names
    /// (empty: the channel is enabled; webchat always is).
    pub fn channel_missing(&self, channel: ChannelKind) -> Vec<&'static str> {
        let needs = match channel {
            ChannelKind::Webchat => vec![],
            ChannelKind::Sms => vec![
                (
                    self.twilio_account_sid.is_some(),
                    "SWITCHBOARD_TWILIO_ACCOUNT_SID",
                ),
                (
                    self.twilio_auth_token.is_some(),
                    "SWITCHBOARD_TWILIO_AUTH_TOKEN",
                ),
                (!self.sms_from.is_empty(), "SWITCHBOARD_SMS_FROM"),
            ],
            ChannelKind::Whatsapp => vec![
                (self.whatsapp_token.is_some(), "SWITCHBOARD_WHATSAPP_TOKEN"),
                (
                    self.whatsapp_app_secret.is_some(),
                    "SWITCHBOARD_WHATSAPP_APP_SECRET",
                ),
                (
                    self.whatsapp_verify_token.is_some(),
                    "SWITCHBOARD_WHATSAPP_VERIFY_TOKEN",
                ),
                (
                    self.whatsapp_phone_number_id.is_some(),
                    "SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID",
                ),
            ],
            ChannelKind::Messenger => vec![
                (
                    self.messenger_page_token.is_some(),
                    "SWITCHBOARD_MESSENGER_PAGE_TOKEN",
                ),
                (
                    self.messenger_app_secret.is_some(),
                    "SWITCHBOARD_MESSENGER_APP_SECRET",
                ),
                (
                    self.messenger_verify_token.is_some(),
                    "SWITCHBOARD_MESSENGER_VERIFY_TOKEN",
                ),
            ],
        };
        needs
            .into_iter()
            .filter(|(set, _)| !set)
            .map(|(_, name)| name)
            .collect()
    }

    /// The queue a provider message written to `business` on `channel`
    /// waits in: the first matching `[[routes]]` rule, else `default`.
    pub fn route_queue(&self, channel: ChannelKind, business: &str) -> String {
        self.routes
            .iter()
            .find(|r| r.channel == channel && r.to == business)
            .map_or_else(
                || crate::protocol::DEFAULT_QUEUE.to_owned(),
                |r| r.queue.clone(),
            )
    }

    pub fn sms_enabled(&self) -> bool {
        self.channel_missing(ChannelKind::Sms).is_empty()
    }

    pub fn whatsapp_enabled(&self) -> bool {
        self.channel_missing(ChannelKind::Whatsapp).is_empty()
    }

    pub fn messenger_enabled(&self) -> bool {
        self.channel_missing(ChannelKind::Messenger).is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        valid_bind(&self.bind)?;
        if self.dispositions.is_empty() {
            return Err(ConfigError("dispositions: at least one is needed".into()));
        }
        // Say which setting the value comes from and what to change: the user
        // may have touched only one of the two.
        let missing_disposition = |what: &str, setting: &str, code: &str| {
            ConfigError(format!(
                "dispositions: {} does not include {what} {code:?} ({setting}); \
                 add it to dispositions or set {setting} to one of them",
                show_list(&self.dispositions)
            ))
        };
        if !self.dispositions.contains(&self.wrapup_disposition) {
            return Err(missing_disposition(
                "the wrap-up timeout's disposition",
                "wrapup_disposition",
                &self.wrapup_disposition,
            ));
        }
        if self.sim_agents > 0 && !self.dispositions.contains(&self.sim_disposition) {
            return Err(missing_disposition(
                "the simulated agents' disposition",
                "sim_disposition",
                &self.sim_disposition,
            ));
        }
        if self.provider_in_flight == 0 {
            return Err(ConfigError("provider_in_flight: must be at least 1".into()));
        }
        if self.socket_backlog == 0 {
            return Err(ConfigError("socket_backlog: must be at least 1".into()));
        }
        self.validate_limits()?;
        if self.offer_timeout.is_zero() {
            return Err(ConfigError("offer_timeout: must be more than 0".into()));
        }
        if let Some(secret) = &self.webchat_context_secret {
            if secret.len() < 32 {
                return Err(ConfigError(
                    "webchat_context_secret: must be at least 32 characters".into(),
                ));
            }
        }
        for t in &self.webchat_upload_types {
            let valid = t.split_once('/').is_some_and(|(family, sub)| {
                !family.is_empty()
                    && family != "*"
                    && !sub.is_empty()
                    && !t.contains([';', ' ', ','])
            });
            if !valid {
                return Err(ConfigError(format!(
                    "webchat_upload_types: {t:?} is not a content type such as \"image/png\" or \"image/*\""
                )));
            }
        }
        if let Some(t) = &self.admin_token {
            let len = t.chars().count();
            if len < MIN_ADMIN_TOKEN {
                return Err(ConfigError(format!(
                    "admin_token: must be at least {MIN_ADMIN_TOKEN} characters (this one has \
                     {len}); set a long random one (e.g. `openssl rand -hex 24`) or leave it \
                     unset to have one generated and printed at start"
                )));
            }
        }
        if let Some(t) = &self.metrics_token {
            let len = t.chars().count();
            if len < MIN_ADMIN_TOKEN {
                return Err(ConfigError(format!(
                    "metrics_token: must be at least {MIN_ADMIN_TOKEN} characters (this one has \
                     {len})"
                )));
            }
            if self.admin_token.as_deref() == Some(t.as_str()) {
                return Err(ConfigError(
                    "metrics_token: the same as admin_token; give the scraper its own token \
                     (or use the admin token and leave metrics_token unset)"
                        .into(),
                ));
            }
        }
        if self.auth_failures_per_minute == 0 {
            return Err(ConfigError(
                "auth_failures_per_minute: must be at least 1".into(),
            ));
        }
        if self
            .agent_token_ttl
            .is_some_and(|d| d < Duration::from_secs(1))
        {
            return Err(ConfigError(
                "agent_token_ttl: must be at least 1s (leave it unset for tokens that do not \
                 expire)"
                    .into(),
            ));
        }
        if self.max_history_messages < 2 {
            return Err(ConfigError(
                "max_history_messages: must be at least 2".into(),
            ));
        }
        let one_message = 4 * self.max_text as u64 + 1024;
        if self.max_history_bytes < one_message {
            return Err(ConfigError(format!(
                "max_history_bytes: must hold at least one message of max_text characters \
                 ({one_message} bytes)"
            )));
        }
        if self.history_replay == 0 {
            return Err(ConfigError("history_replay: must be at least 1".into()));
        }
        if self.history_frame_bytes < 16 * 1024 {
            return Err(ConfigError(
                "history_frame_bytes: must be at least 16KiB".into(),
            ));
        }
        if self.aging > 1000 {
            return Err(ConfigError(
                "aging: must be at most 1000 points per minute".into(),
            ));
        }
        self.validate_journal()?;
        self.validate_cluster()?;
        self.validate_agents()?;
        self.validate_webhooks()?;
        self.validate_queues()?;
        self.validate_canned()
    }

    /// The limits of the canned-response library.
    pub fn canned_limits(&self) -> CannedLimits {
        CannedLimits {
            max_responses: self.max_canned_responses,
            max_text: self.max_canned_text,
        }
    }

    /// `[[canned_responses]]` as `POST /v1/canned-responses` would check
    /// them: ids unique, queues defined, within the library's limits.
    fn validate_canned(&self) -> Result<(), ConfigError> {
        if self.max_canned_text == 0 {
            return Err(ConfigError("max_canned_text: must be at least 1".into()));
        }
        let library = crate::canned::CannedLibrary::new(self.canned_limits());
        for (i, draft) in self.canned_responses.iter().enumerate() {
            if let Some(queue) = &draft.queue {
                let known = queue == crate::protocol::DEFAULT_QUEUE
                    || self.queues.iter().any(|q| &q.id == queue);
                if !known {
                    return Err(ConfigError(format!(
                        "canned_responses[{i}].queue: {queue:?} is not a queue; define it in [[queues]]"
                    )));
                }
            }
            library
                .create(draft.clone())
                .map_err(|e| ConfigError(format!("canned_responses[{i}]: {e}")))?;
        }
        Ok(())
    }

    /// `[[webhooks]]`: an http(s) URL with a host, a secret long enough to
    /// sign with, event names or globs that name known types; and settings
    /// that let a delivery happen at all.
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        if self.webhook_timeout.is_zero() {
            return Err(ConfigError("webhook_timeout: must be more than 0".into()));
        }
        if self.webhook_backoff.is_zero() {
            return Err(ConfigError("webhook_backoff: must be more than 0".into()));
        }
        if self.webhook_queue == 0 {
            return Err(ConfigError("webhook_queue: must be at least 1".into()));
        }
        if !(1..=64).contains(&self.webhook_in_flight) {
            return Err(ConfigError("webhook_in_flight: must be 1-64".into()));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            let url = hook.url.as_str();
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let host = rest
                .map(|r| r.split(['/', '?', '#']).next().unwrap_or_default())
                .unwrap_or_default();
            let parses = reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some());
            if rest.is_none() || host.is_empty() || !parses {
                return Err(ConfigError(format!(
                    "webhooks[{i}].url: {url:?} is not an http:// or https:// URL with a host"
                )));
            }
            if url.contains('#') {
                return Err(ConfigError(format!(
                    "webhooks[{i}].url: {url:?} has a #fragment, which is never sent; remove it"
                )));
            }
            let len = hook.secret.chars().count();
            if len < MIN_WEBHOOK_SECRET {
                return Err(ConfigError(format!(
                    "webhooks[{i}].secret: must be at least {MIN_WEBHOOK_SECRET} characters \
                     (this one has {len}); set a long random one (e.g. `openssl rand -hex 24`)"
                )));
            }
            crate::webhooks::EventFilter::parse(&hook.events)
                .map_err(|e| ConfigError(format!("webhooks[{i}].events: {e}")))?;
        }
        Ok(())
    }

    /// With `cluster`: a `node_id` and a `data_dir` (the node's copy of the
    /// journal), and settings `ClusterSettings` accepts. Without it, none of
    /// the other cluster settings may be set to something that would be
    /// silently ignored (`node_id`).
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(settings) = self.cluster() else {
            if self.node_id.is_some() {
                return Err(ConfigError(
                    "node_id: set, but cluster is not: a node id means nothing to a single node \
                     (set cluster = \"nats://…\" too, or remove node_id)"
                        .into(),
                ));
            }
            return Ok(());
        };
        if settings.url.trim().is_empty() {
            return Err(ConfigError(
                "cluster: empty; set the NATS URL (e.g. nats://127.0.0.1:4222) or leave it unset \
                 for a single node"
                    .into(),
            ));
        }
        if self.node_id.is_none() {
            return Err(ConfigError(
                "node_id: required in cluster mode (e.g. --node-id node-1), unique among the nodes"
                    .into(),
            ));
        }
        if self.data_dir.is_none() {
            return Err(ConfigError(
                "data_dir: required in cluster mode: each node keeps its copy of the journal there"
                    .into(),
            ));
        }
        if self.admin_token.is_none() {
            return Err(ConfigError(
                "admin_token: required in cluster mode: every node must accept the same one (a \
                 generated token would change at every failover)"
                    .into(),
            ));
        }
        settings.check().map_err(|e| ConfigError(e.to_string()))
    }

    /// `data_dir` a directory or one that can be created; the journal's
    /// sizes and delays in sane ranges.
    fn validate_journal(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.data_dir {
            valid_data_dir(dir)?;
        }
        if self.fsync_interval.is_zero() || self.fsync_interval > Duration::from_secs(1) {
            return Err(ConfigError(format!(
                "fsync_interval: {} must be more than 0 and at most 1s (fsync = \"always\" \
                 fsyncs every batch)",
                show_duration(self.fsync_interval)
            )));
        }
        if self.snapshot_every_records == 0 {
            return Err(ConfigError(
                "snapshot_every_records: must be at least 1".into(),
            ));
        }
        if self.snapshot_interval < Duration::from_secs(1) {
            return Err(ConfigError(format!(
                "snapshot_interval: {} is less than the smallest accepted, 1s",
                show_duration(self.snapshot_interval)
            )));
        }
        for (name, value) in [
            ("journal_segment_bytes", self.journal_segment_bytes),
            ("journal_queue_bytes", self.journal_queue_bytes),
        ] {
            if value < 64 * 1024 {
                return Err(ConfigError(format!(
                    "{name}: {} is less than the smallest accepted, 64KiB",
                    show_size(value)
                )));
            }
        }
        Ok(())
    }

    /// `[[queues]]` as `POST /v1/queues` would check them (ids unique,
    /// overflow targets defined), and `[[routes]]` naming defined queues that
    /// take the channel.
    fn validate_queues(&self) -> Result<(), ConfigError> {
        let ids: Vec<&str> = self.queues.iter().map(|q| q.id.as_str()).collect();
        let exists = |id: &str| id == crate::protocol::DEFAULT_QUEUE || ids.contains(&id);
        for (i, queue) in self.queues.iter().enumerate() {
            if ids[..i].contains(&queue.id.as_str()) {
                return Err(ConfigError(format!(
                    "queues[{i}].id: {:?} is defined twice",
                    queue.id
                )));
            }
        }
        for (i, queue) in self.queues.iter().enumerate() {
            queue
                .clone()
                .validate(exists)
                .map_err(|e| ConfigError(format!("queues[{i}]: {e}")))?;
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !exists(&route.queue) {
                return Err(ConfigError(format!(
                    "routes[{i}].queue: {:?} is not a queue; define it in [[queues]]",
                    route.queue
                )));
            }
            let takes = self
                .queues
                .iter()
                .find(|q| q.id == route.queue)
                .is_none_or(|q| q.takes(route.channel));
            if !takes || route.channel == ChannelKind::Webchat {
                return Err(ConfigError(format!(
                    "routes[{i}]: queue {:?} does not take {} (routes are for sms, whatsapp and messenger)",
                    route.queue,
                    route.channel.as_str()
                )));
            }
        }
        Ok(())
    }

    /// The abuse limits (docs/security.md): the ones that cannot be switched
    /// off are at least 1, and every trusted proxy parses.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("socket_backlog_bytes", self.socket_backlog_bytes),
            ("max_connections", self.max_connections as u64),
            ("request_body_min_rate", self.request_body_min_rate),
            (
                "socket_messages_per_second",
                self.socket_messages_per_second.into(),
            ),
            (
                "conversation_messages_per_second",
                self.conversation_messages_per_second.into(),
            ),
            ("uploads_per_session", self.uploads_per_session as u64),
            ("upload_bytes_per_session", self.upload_bytes_per_session),
        ];
        for (name, value) in at_least_one {
            if value == 0 {
                return Err(ConfigError(format!("{name}: must be at least 1")));
            }
        }
        for (name, d) in [
            ("socket_write_timeout", self.socket_write_timeout),
            ("request_header_timeout", self.request_header_timeout),
            ("request_body_timeout", self.request_body_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name}: must be more than 0")));
            }
        }
        if self.upload_bytes_per_ip > 0 && self.upload_bytes_per_ip < self.max_upload {
            return Err(ConfigError(format!(
                "upload_bytes_per_ip: {} is less than max_upload ({}): \
                 no upload of the largest size could pass; raise it, or set 0 for no limit",
                show_size(self.upload_bytes_per_ip),
                show_size(self.max_upload)
            )));
        }
        crate::limits::parse_proxies(&self.trusted_proxies)
            .map_err(|e| ConfigError(format!("trusted_proxies: {e}")))?;
        Ok(())
    }

    /// `[[agents]]`: each one as `POST /v1/agents` would check it, ids and
    /// tokens unique.
    fn validate_agents(&self) -> Result<(), ConfigError> {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        let mut tokens: HashMap<&str, usize> = HashMap::new();
        for (i, seed) in self.agents.iter().enumerate() {
            AgentProfile::new(
                &seed.id,
                seed.name.clone(),
                seed.capacity,
                seed.skills.clone(),
            )
            .map_err(|e| ConfigError(format!("agents[{i}] ({:?}): {e}", seed.id)))?;
            if let Some(first) = ids.insert(&seed.id, i) {
                return Err(ConfigError(format!(
                    "agents[{i}].id: {:?} is already the id of agents[{first}]; \
                     each agent needs its own id",
                    seed.id
                )));
            }
            if is_sim_id(&seed.id, self.sim_agents) {
                return Err(ConfigError(format!(
                    "agents[{i}].id: {:?} is the id of a simulated agent \
                     (sim_agents = {}); choose another id",
                    seed.id, self.sim_agents
                )));
            }
            let Some(token) = &seed.token else {
                continue;
            };
            valid_token(token).map_err(|e| ConfigError(format!("agents[{i}].token: {e}")))?;
            if let Some(first) = tokens.insert(token, i) {
                return Err(ConfigError(format!(
                    "agents[{i}].token: the same as agents[{first}].token; \
                     each agent needs its own token"
                )));
            }
            if self.admin_token.as_deref() == Some(token.as_str()) {
                return Err(ConfigError(format!(
                    "agents[{i}].token: the same as admin_token; an agent needs its own token"
                )));
            }
        }
        Ok(())
    }
}

/// `sim-00001` … `sim-<n>`: the ids `--sim-agents n` takes.
fn is_sim_id(id: &str, sim_agents: usize) -> bool {
    id.strip_prefix("sim-")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| (1..=sim_agents).contains(&n) && id == format!("sim-{n:05}"))
}

/// An address:port, or a host name and a port (resolved when binding).
fn valid_bind(bind: &str) -> Result<(), ConfigError> {
    let named_host = |host: &str| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    };
    let ok = bind.parse::<SocketAddr>().is_ok()
        || bind
            .rsplit_once(':')
            .is_some_and(|(host, port)| named_host(host) && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "bind: {bind:?} is not an address:port, e.g. 127.0.0.1:8080"
        )))
    }
}

/// An existing directory, or a path whose nearest existing ancestor is a
/// directory (the journal creates the rest at start).
fn valid_data_dir(dir: &std::path::Path) -> Result<(), ConfigError> {
    let shown = dir.display();
    if dir.as_os_str().is_empty() {
        return Err(ConfigError(
            "data_dir: empty; leave it unset to run purely in memory".into(),
        ));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(ConfigError(format!(
                "data_dir: {shown} exists and is not a directory"
            )))
        }
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Err(ConfigError(format!("data_dir: {shown}: {e}")))
        }
        Err(_) => {}
    }
    let mut ancestor = dir.parent();
    while let Some(a) = ancestor {
        let probe = if a.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            a
        };
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(ConfigError(format!(
                    "data_dir: {shown} cannot be created: {} is not a directory",
                    probe.display()
                )))
            }
            Err(_) => ancestor = a.parent(),
        }
    }
    Err(ConfigError(format!("data_dir: {shown} cannot be created")))
}

/// `["a","b"]`, as the list would be written in the file.
fn show_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(","))
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 30s, 10m)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (use e.g. 512KiB, 25MiB)"))
}

/// A comma-separated list on the command line, a list (or such a string) in
/// the file. A newtype, so clap takes it as one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

fn parse_list(s: &str) -> Result<List, String> {
    Ok(List(
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    ))
}

/// Every setting, as a flag, a `SWITCHBOARD_*` variable (clap reads both, flag
/// first) and a key of the TOML file (the same struct, deserialized). One list,
/// so the three ways to configure cannot drift apart.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "switchboard",
    version,
    about = "Actor-based chat broker for contact centers",
    after_help = "In the --config file, each key is the flag's name with _ for - \
                  (--offer-timeout: offer_timeout); switchboard.example.toml has them all. \
                  Flag > env > file > default."
)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Listen address (address:port; port 0 picks a free one).
    #[arg(long, env = "SWITCHBOARD_BIND")]
    pub bind: Option<String>,
    /// Admin bearer token, at least 32 characters.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Failed authentications per client address per minute before 429.
    #[arg(long, env = "SWITCHBOARD_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Lifetime of agent tokens (unset: they do not expire).
    #[arg(long, env = "SWITCHBOARD_AGENT_TOKEN_TTL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub agent_token_ttl: Option<Duration>,
    /// Token that reads /metrics (the admin token does too), at least 32 characters.
    #[arg(long, env = "SWITCHBOARD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Per-client limits (sessions, uploads, sockets, message rates and
    /// connections per address); false: all off, for a load test whose
    /// clients share one address.
    #[arg(
        long,
        env = "SWITCHBOARD_CLIENT_LIMITS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub client_limits: Option<bool>,
    /// Serve /metrics without a token.
    #[arg(
        long,
        env = "SWITCHBOARD_METRICS_PUBLIC",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub metrics_public: Option<bool>,
    /// How long an offer waits for accept or reject.
    #[arg(long, env = "SWITCHBOARD_OFFER_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub offer_timeout: Option<Duration>,
    /// An agent who declined a task is offered it again after this, if nobody else took it.
    #[arg(long, env = "SWITCHBOARD_REOFFER_COOLDOWN", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub reoffer_cooldown: Option<Duration>,
    /// How long a disconnected agent keeps its tasks.
    #[arg(long, env = "SWITCHBOARD_DISCONNECT_GRACE", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub disconnect_grace: Option<Duration>,
    /// Webchat customer away this long before a waiting task is canceled.
    #[arg(long, env = "SWITCHBOARD_CUSTOMER_GRACE", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub customer_grace: Option<Duration>,
    /// Unused webchat session (no socket, no conversation) forgotten after.
    #[arg(long, env = "SWITCHBOARD_WEBCHAT_SESSION_IDLE", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub webchat_session_idle: Option<Duration>,
    /// Wrap-up after which a task is completed automatically.
    #[arg(long, env = "SWITCHBOARD_WRAPUP_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub wrapup_timeout: Option<Duration>,
    /// Time a graceful shutdown (SIGTERM, SIGINT) may take.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub shutdown_timeout: Option<Duration>,
    /// Disposition used by the wrap-up timeout.
    #[arg(long, env = "SWITCHBOARD_WRAPUP_DISPOSITION")]
    pub wrapup_disposition: Option<String>,
    /// How long a finished conversation stays readable.
    #[arg(long, env = "SWITCHBOARD_HISTORY_RETENTION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub history_retention: Option<Duration>,
    /// Largest upload.
    #[arg(long, env = "SWITCHBOARD_MAX_UPLOAD", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub max_upload: Option<u64>,
    /// Longest message text in characters.
    #[arg(long, env = "SWITCHBOARD_MAX_TEXT")]
    pub max_text: Option<usize>,
    /// Longest wrap-up notes in characters.
    #[arg(long, env = "SWITCHBOARD_MAX_NOTES")]
    pub max_notes: Option<usize>,
    /// Most canned responses in the library.
    #[arg(long, env = "SWITCHBOARD_MAX_CANNED_RESPONSES")]
    pub max_canned_responses: Option<usize>,
    /// Longest canned response text (the template) in characters.
    #[arg(long, env = "SWITCHBOARD_MAX_CANNED_TEXT")]
    pub max_canned_text: Option<usize>,
    /// Largest WebSocket frame from a client.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub max_frame: Option<u64>,
    /// Frames queued per socket before the client is a slow consumer.
    #[arg(long, env = "SWITCHBOARD_SOCKET_BACKLOG")]
    pub socket_backlog: Option<usize>,
    /// Content types webchat customers may upload, comma-separated (image/* for a family).
    #[arg(long, env = "SWITCHBOARD_WEBCHAT_UPLOAD_TYPES", value_parser = parse_list)]
    #[serde(default, deserialize_with = "de::list")]
    pub webchat_upload_types: Option<List>,
    /// Secret of signed webchat pre-chat contexts (HMAC-SHA256), at least 32 characters.
    #[arg(
        long,
        env = "SWITCHBOARD_WEBCHAT_CONTEXT_SECRET",
        hide_env_values = true
    )]
    pub webchat_context_secret: Option<String>,
    /// Most messages in one conversation.
    #[arg(long, env = "SWITCHBOARD_MAX_HISTORY_MESSAGES")]
    pub max_history_messages: Option<usize>,
    /// Most bytes of messages in one conversation.
    #[arg(long, env = "SWITCHBOARD_MAX_HISTORY_BYTES", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub max_history_bytes: Option<u64>,
    /// Most messages replayed to a (re)connecting desk or widget.
    #[arg(long, env = "SWITCHBOARD_HISTORY_REPLAY")]
    pub history_replay: Option<usize>,
    /// Most bytes of messages in one replay frame.
    #[arg(long, env = "SWITCHBOARD_HISTORY_FRAME_BYTES", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub history_frame_bytes: Option<u64>,
    /// Bytes queued per socket before the client is a slow consumer.
    #[arg(long, env = "SWITCHBOARD_SOCKET_BACKLOG_BYTES", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub socket_backlog_bytes: Option<u64>,
    /// Close a socket whose client has read nothing of a pending write for this long.
    #[arg(long, env = "SWITCHBOARD_SOCKET_WRITE_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub socket_write_timeout: Option<Duration>,
    /// Comma-separated reverse proxies (IPs or CIDRs) whose X-Forwarded-For is believed.
    #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_parser = parse_list)]
    #[serde(default, deserialize_with = "de::list")]
    pub trusted_proxies: Option<List>,
    /// Open connections at once (HTTP and WebSocket).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections from one client address (0: no limit).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Time for a request's headers to arrive.
    #[arg(long, env = "SWITCHBOARD_REQUEST_HEADER_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub request_header_timeout: Option<Duration>,
    /// Time for a request body's first bytes (more with each request_body_min_rate bytes).
    #[arg(long, env = "SWITCHBOARD_REQUEST_BODY_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub request_body_timeout: Option<Duration>,
    /// Slowest accepted request body, bytes per second.
    #[arg(long, env = "SWITCHBOARD_REQUEST_BODY_MIN_RATE", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub request_body_min_rate: Option<u64>,
    /// Webchat sessions created per client address per minute (0: no limit).
    #[arg(long, env = "SWITCHBOARD_SESSIONS_PER_IP_PER_MINUTE")]
    pub sessions_per_ip_per_minute: Option<u32>,
    /// Webchat sessions alive at once per client address (0: no limit).
    #[arg(long, env = "SWITCHBOARD_OPEN_SESSIONS_PER_IP")]
    pub open_sessions_per_ip: Option<usize>,
    /// Sockets open at once on one webchat session (0: no limit).
    #[arg(long, env = "SWITCHBOARD_SOCKETS_PER_SESSION")]
    pub sockets_per_session: Option<usize>,
    /// Commands per second from one customer socket.
    #[arg(long, env = "SWITCHBOARD_SOCKET_MESSAGES_PER_SECOND")]
    pub socket_messages_per_second: Option<u32>,
    /// Customer messages per second into one webchat conversation.
    #[arg(long, env = "SWITCHBOARD_CONVERSATION_MESSAGES_PER_SECOND")]
    pub conversation_messages_per_second: Option<u32>,
    /// Files one webchat session may hold at once.
    #[arg(long, env = "SWITCHBOARD_UPLOADS_PER_SESSION")]
    pub uploads_per_session: Option<usize>,
    /// Bytes of files one webchat session may hold at once.
    #[arg(long, env = "SWITCHBOARD_UPLOAD_BYTES_PER_SESSION", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub upload_bytes_per_session: Option<u64>,
    /// Customer uploads per client address per minute (0: no limit).
    #[arg(long, env = "SWITCHBOARD_UPLOADS_PER_IP_PER_MINUTE")]
    pub uploads_per_ip_per_minute: Option<u32>,
    /// Bytes of files one client address's webchat sessions may hold at once (0: no limit).
    #[arg(long, env = "SWITCHBOARD_UPLOAD_BYTES_PER_IP", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub upload_bytes_per_ip: Option<u64>,
    /// Comma-separated disposition codes (a list in the TOML file).
    #[arg(long, env = "SWITCHBOARD_DISPOSITIONS", value_parser = parse_list)]
    #[serde(default, deserialize_with = "de::list")]
    pub dispositions: Option<List>,
    /// Worker threads (0 = one per core).
    #[arg(long, env = "SWITCHBOARD_WORKERS")]
    pub workers: Option<usize>,
    /// Let the kernel back the heap with transparent huge pages.
    #[arg(
        long,
        env = "SWITCHBOARD_TRANSPARENT_HUGE_PAGES",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub transparent_huge_pages: Option<bool>,
    /// Socket ping interval.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub heartbeat_interval: Option<Duration>,
    /// Close sockets silent for this long.
    #[arg(long, env = "SWITCHBOARD_CLIENT_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub client_timeout: Option<Duration>,
    /// Log lines on stderr: text (coloured only on a terminal) or json (one object per line).
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Directory of the journal and snapshots (unset: purely in memory).
    #[arg(long, env = "SWITCHBOARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// When journal records are fsynced before they are acknowledged.
    #[arg(long, env = "SWITCHBOARD_FSYNC", value_enum)]
    pub fsync: Option<FsyncMode>,
    /// Under fsync = batch: most time from a record's write to its fsync.
    #[arg(long, env = "SWITCHBOARD_FSYNC_INTERVAL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub fsync_interval: Option<Duration>,
    /// Size at which the journal starts a new segment file.
    #[arg(long, env = "SWITCHBOARD_JOURNAL_SEGMENT_BYTES", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub journal_segment_bytes: Option<u64>,
    /// Bytes of records waiting for the disk before new ones are refused.
    #[arg(long, env = "SWITCHBOARD_JOURNAL_QUEUE_BYTES", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub journal_queue_bytes: Option<u64>,
    /// A snapshot is written once this many records follow the last one.
    #[arg(long, env = "SWITCHBOARD_SNAPSHOT_EVERY_RECORDS")]
    pub snapshot_every_records: Option<u64>,
    /// A snapshot is written at least this often while records come in.
    #[arg(long, env = "SWITCHBOARD_SNAPSHOT_INTERVAL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub snapshot_interval: Option<Duration>,

    /// Cluster mode: the NATS server(s), e.g. nats://127.0.0.1:4222 (comma-separated for several).
    #[arg(long, env = "SWITCHBOARD_CLUSTER")]
    pub cluster: Option<String>,
    /// This node's id in the cluster: 1 to 64 letters, digits, '-' or '_', unique among the nodes.
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    pub node_id: Option<String>,
    /// How long the active node's lease lasts without renewal (the same on every node).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_LEASE_TTL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub cluster_lease_ttl: Option<Duration>,
    /// JetStream replicas of the cluster's buckets and stream (1 to 5).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_REPLICAS")]
    pub cluster_replicas: Option<usize>,
    /// Names of the cluster's buckets and stream (the same on every node).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_PREFIX")]
    pub cluster_prefix: Option<String>,
    /// A standby relays the clients it accepts to the active node (false: it refuses them, 503 standby).
    #[arg(
        long,
        env = "SWITCHBOARD_CLUSTER_RELAY",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub cluster_relay: Option<bool>,
    /// TLS to NATS: CA certificate(s) to trust, a PEM file (for a NATS whose certificate no system root signs); requires TLS.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// TLS to NATS: this node's client certificate, a PEM file (with --cluster-tls-key; for a NATS that verifies clients).
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// TLS to NATS: the private key of --cluster-tls-cert, a PEM file.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,
    /// A file holding this node's NKey seed (SU…), for a NATS that knows the nodes by their NKeys.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_NKEY")]
    pub cluster_nkey: Option<PathBuf>,
    /// A NATS credentials file (.creds: a user JWT and its seed), for a NATS in operator mode.
    #[arg(long, env = "SWITCHBOARD_CLUSTER_CREDENTIALS")]
    pub cluster_credentials: Option<PathBuf>,

    /// Externally visible base URL, e.g. https://chat.example.com.
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Twilio account SID (SMS).
    #[arg(long, env = "SWITCHBOARD_TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token (SMS).
    #[arg(long, env = "SWITCHBOARD_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// Business number(s) SMS replies come from, comma-separated.
    #[arg(long, env = "SWITCHBOARD_SMS_FROM", value_parser = parse_list)]
    #[serde(default, deserialize_with = "de::list")]
    pub sms_from: Option<List>,
    /// Twilio API base URL.
    #[arg(long, env = "SWITCHBOARD_TWILIO_API_BASE")]
    pub twilio_api_base: Option<String>,
    /// WhatsApp Cloud API access token.
    #[arg(long, env = "SWITCHBOARD_WHATSAPP_TOKEN", hide_env_values = true)]
    pub whatsapp_token: Option<String>,
    /// WhatsApp app secret (webhook signatures).
    #[arg(long, env = "SWITCHBOARD_WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub whatsapp_app_secret: Option<String>,
    /// WhatsApp webhook verify token.
    #[arg(
        long,
        env = "SWITCHBOARD_WHATSAPP_VERIFY_TOKEN",
        hide_env_values = true
    )]
    pub whatsapp_verify_token: Option<String>,
    /// WhatsApp business phone number id.
    #[arg(long, env = "SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID")]
    pub whatsapp_phone_number_id: Option<String>,
    /// Messenger page access token.
    #[arg(long, env = "SWITCHBOARD_MESSENGER_PAGE_TOKEN", hide_env_values = true)]
    pub messenger_page_token: Option<String>,
    /// Messenger app secret (webhook signatures).
    #[arg(long, env = "SWITCHBOARD_MESSENGER_APP_SECRET", hide_env_values = true)]
    pub messenger_app_secret: Option<String>,
    /// Messenger webhook verify token.
    #[arg(
        long,
        env = "SWITCHBOARD_MESSENGER_VERIFY_TOKEN",
        hide_env_values = true
    )]
    pub messenger_verify_token: Option<String>,
    /// Graph API base URL for WhatsApp and Messenger.
    #[arg(long, env = "SWITCHBOARD_GRAPH_API_BASE")]
    pub graph_api_base: Option<String>,
    /// WhatsApp/Messenger free-form messaging window.
    #[arg(long, env = "SWITCHBOARD_MESSAGING_WINDOW", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub messaging_window: Option<Duration>,
    /// Timeout of one provider request.
    #[arg(long, env = "SWITCHBOARD_PROVIDER_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub provider_timeout: Option<Duration>,
    /// Retries of a transient provider failure.
    #[arg(long, env = "SWITCHBOARD_PROVIDER_RETRIES")]
    pub provider_retries: Option<u32>,
    /// First retry delay (doubles each retry, with jitter).
    #[arg(long, env = "SWITCHBOARD_PROVIDER_BACKOFF", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub provider_backoff: Option<Duration>,
    /// Provider sends in flight at once, per channel.
    #[arg(long, env = "SWITCHBOARD_PROVIDER_IN_FLIGHT")]
    pub provider_in_flight: Option<usize>,
    /// Provider sends waiting per channel before `rate_limited`.
    #[arg(long, env = "SWITCHBOARD_PROVIDER_QUEUE")]
    pub provider_queue: Option<usize>,
    /// Provider message ids remembered to drop webhook retries.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_DEDUPE")]
    pub webhook_dedupe: Option<usize>,
    /// Largest webhook body.
    #[arg(long, env = "SWITCHBOARD_MAX_WEBHOOK_BODY", value_parser = parse_size)]
    #[serde(default, deserialize_with = "de::size")]
    pub max_webhook_body: Option<u64>,
    /// Lifetime of signed attachment links given to providers.
    #[arg(long, env = "SWITCHBOARD_ATTACHMENT_LINK_TTL", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub attachment_link_ttl: Option<Duration>,

    /// Simulated agents to start inside the broker.
    #[arg(long, env = "SWITCHBOARD_SIM_AGENTS")]
    pub sim_agents: Option<usize>,
    /// Simulated agents' capacity on every channel.
    #[arg(long, env = "SWITCHBOARD_SIM_CAPACITY")]
    pub sim_capacity: Option<u32>,
    /// Mean delay before a simulated agent accepts.
    #[arg(long, env = "SWITCHBOARD_SIM_ACCEPT_DELAY", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub sim_accept_delay: Option<Duration>,
    /// Mean delay before a simulated agent replies.
    #[arg(long, env = "SWITCHBOARD_SIM_REPLY_DELAY", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub sim_reply_delay: Option<Duration>,
    /// Mean wrap-up time of a simulated agent.
    #[arg(long, env = "SWITCHBOARD_SIM_WRAPUP_DELAY", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub sim_wrapup_delay: Option<Duration>,
    /// Replies per conversation before a simulated agent ends it.
    #[arg(long, env = "SWITCHBOARD_SIM_REPLIES")]
    pub sim_replies: Option<u32>,
    /// Disposition simulated agents choose.
    #[arg(long, env = "SWITCHBOARD_SIM_DISPOSITION")]
    pub sim_disposition: Option<String>,
    /// Seed of the simulated agents' random draws.
    #[arg(long, env = "SWITCHBOARD_SIM_SEED")]
    pub sim_seed: Option<u64>,

    /// Deadline of one event webhook request.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub webhook_timeout: Option<Duration>,
    /// First event webhook retry delay (doubles each retry, with jitter).
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_BACKOFF", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub webhook_backoff: Option<Duration>,
    /// How long after an event its webhook delivery is retried.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_RETRY_FOR", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de::duration")]
    pub webhook_retry_for: Option<Duration>,
    /// Events queued per webhook endpoint before new ones are dropped.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_QUEUE")]
    pub webhook_queue: Option<usize>,
    /// Webhook deliveries in flight at once per endpoint.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_IN_FLIGHT")]
    pub webhook_in_flight: Option<usize>,

    /// Points of priority a waiting task gains per minute waited.
    #[arg(long, env = "SWITCHBOARD_AGING")]
    pub aging: Option<u32>,
    /// Offers in a row an agent may let time out before it is set not_responding (0: never).
    #[arg(long, env = "SWITCHBOARD_MAX_MISSED_OFFERS")]
    pub max_missed_offers: Option<u32>,

    /// Agents created at start: `[[agents]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub agents: Vec<AgentSeed>,
    /// Queues: `[[queues]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub queues: Vec<Queue>,
    /// Provider inbound rules: `[[routes]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Event webhook endpoints: `[[webhooks]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub webhooks: Vec<WebhookEndpoint>,
    /// Canned responses: `[[canned_responses]]` tables, in the file only.
    #[arg(skip)]
    #[serde(default)]
    pub canned_responses: Vec<CannedDraft>,
}

impl Args {
    /// The command line, each setting's default at the end of its help. The
    /// default is only shown: clap does not apply it, so every field stays
    /// `None` unless given, and a file or env value still beats a default.
    pub fn command_with_defaults() -> clap::Command {
        let defaults = Config::default();
        Args::command().mut_args(|arg| {
            let text = match shown_default(&defaults, arg.get_id().as_str()) {
                Some(Shown::Value(v)) => v,
                Some(Shown::Note(n)) => n.to_owned(),
                None => return arg,
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [default: {text}]"))
        })
    }

    /// Flags and `SWITCHBOARD_*` variables of this process; on a bad value,
    /// `--help` or `--version`, prints and exits as clap does.
    pub fn from_command_line() -> Args {
        let matches = Self::command_with_defaults().get_matches();
        Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// A default as `--help` shows it.
enum Shown {
    /// What one would write on the command line to get it.
    Value(String),
    /// Computed or generated at start.
    Note(&'static str),
}

/// Each setting's default, from [`Config::default`] so the help cannot drift
/// from it. `None`: no default (provider credentials, the file itself).
fn shown_default(c: &Config, id: &str) -> Option<Shown> {
    let value = |v: String| Some(Shown::Value(v));
    let duration = |d: Duration| value(show_duration(d));
    match id {
        "bind" => value(c.bind.clone()),
        "admin_token" => Some(Shown::Note("generated, printed at start")),
        "auth_failures_per_minute" => value(c.auth_failures_per_minute.to_string()),
        "agent_token_ttl" => Some(Shown::Note("none: agent tokens do not expire")),
        "metrics_token" => Some(Shown::Note("none: the admin token reads /metrics")),
        "metrics_public" => value(c.metrics_public.to_string()),
        "client_limits" => value("true".to_string()),
        "offer_timeout" => duration(c.offer_timeout),
        "reoffer_cooldown" => duration(c.reoffer_cooldown),
        "disconnect_grace" => duration(c.disconnect_grace),
        "customer_grace" => duration(c.customer_grace),
        "webchat_session_idle" => duration(c.webchat_session_idle),
        "wrapup_timeout" => duration(c.wrapup_timeout),
        "wrapup_disposition" => value(c.wrapup_disposition.clone()),
        "shutdown_timeout" => duration(c.shutdown_timeout),
        "history_retention" => duration(c.history_retention),
        "max_upload" => value(show_size(c.max_upload)),
        "max_text" => value(c.max_text.to_string()),
        "max_notes" => value(c.max_notes.to_string()),
        "max_canned_responses" => value(c.max_canned_responses.to_string()),
        "max_canned_text" => value(c.max_canned_text.to_string()),
        "max_frame" => value(show_size(c.max_frame as u64)),
        "socket_backlog" => value(c.socket_backlog.to_string()),
        "webchat_upload_types" => value(c.webchat_upload_types.join(",")),
        "webchat_context_secret" => Some(Shown::Note("none: a context is refused")),
        "max_history_messages" => value(c.max_history_messages.to_string()),
        "max_history_bytes" => value(show_size(c.max_history_bytes)),
        "history_replay" => value(c.history_replay.to_string()),
        "history_frame_bytes" => value(show_size(c.history_frame_bytes)),
        "socket_backlog_bytes" => value(show_size(c.socket_backlog_bytes)),
        "socket_write_timeout" => duration(c.socket_write_timeout),
        "trusted_proxies" => Some(Shown::Note("none")),
        "max_connections" => value(c.max_connections.to_string()),
        "max_connections_per_ip" => value(c.max_connections_per_ip.to_string()),
        "request_header_timeout" => duration(c.request_header_timeout),
        "request_body_timeout" => duration(c.request_body_timeout),
        "request_body_min_rate" => value(show_size(c.request_body_min_rate)),
        "sessions_per_ip_per_minute" => value(c.sessions_per_ip_per_minute.to_string()),
        "open_sessions_per_ip" => value(c.open_sessions_per_ip.to_string()),
        "sockets_per_session" => value(c.sockets_per_session.to_string()),
        "socket_messages_per_second" => value(c.socket_messages_per_second.to_string()),
        "conversation_messages_per_second" => value(c.conversation_messages_per_second.to_string()),
        "uploads_per_session" => value(c.uploads_per_session.to_string()),
        "upload_bytes_per_session" => value(show_size(c.upload_bytes_per_session)),
        "uploads_per_ip_per_minute" => value(c.uploads_per_ip_per_minute.to_string()),
        "upload_bytes_per_ip" => value(show_size(c.upload_bytes_per_ip)),
        "dispositions" => value(c.dispositions.join(",")),
        "workers" => value(c.workers.to_string()),
        "transparent_huge_pages" => value(c.transparent_huge_pages.to_string()),
        "heartbeat_interval" => duration(c.heartbeat_interval),
        "client_timeout" => duration(c.client_timeout),
        "log_format" => value(c.log_format.as_str().to_owned()),
        "data_dir" => Some(Shown::Note("none: purely in memory")),
        "fsync" => value(c.fsync.as_str().to_owned()),
        "fsync_interval" => duration(c.fsync_interval),
        "journal_segment_bytes" => value(show_size(c.journal_segment_bytes)),
        "journal_queue_bytes" => value(show_size(c.journal_queue_bytes)),
        "snapshot_every_records" => value(c.snapshot_every_records.to_string()),
        "snapshot_interval" => duration(c.snapshot_interval),
        "cluster" => Some(Shown::Note("none: a single node")),
        "node_id" => Some(Shown::Note("none; required with --cluster")),
        "cluster_lease_ttl" => duration(c.cluster_lease_ttl),
        "cluster_replicas" => value(c.cluster_replicas.to_string()),
        "cluster_prefix" => value(c.cluster_prefix.clone()),
        "cluster_relay" => value(c.cluster_relay.to_string()),
        "cluster_tls_ca" => Some(Shown::Note("none: the system's roots, for tls:// URLs")),
        "cluster_tls_cert" => Some(Shown::Note("none: no client certificate")),
        "cluster_tls_key" => Some(Shown::Note("none")),
        "cluster_nkey" => Some(Shown::Note("none")),
        "cluster_credentials" => Some(Shown::Note("none")),
        "public_url" => Some(Shown::Note("http://<bind>")),
        "twilio_api_base" => value(c.twilio_api_base.clone()),
        "graph_api_base" => value(c.graph_api_base.clone()),
        "messaging_window" => duration(c.messaging_window),
        "provider_timeout" => duration(c.provider_timeout),
        "provider_retries" => value(c.provider_retries.to_string()),
        "provider_backoff" => duration(c.provider_backoff),
        "provider_in_flight" => value(c.provider_in_flight.to_string()),
        "provider_queue" => value(c.provider_queue.to_string()),
        "webhook_dedupe" => value(c.webhook_dedupe.to_string()),
        "max_webhook_body" => value(show_size(c.max_webhook_body)),
        "attachment_link_ttl" => duration(c.attachment_link_ttl),
        "sim_agents" => value(c.sim_agents.to_string()),
        "sim_capacity" => value(c.sim_capacity.to_string()),
        "sim_accept_delay" => duration(c.sim_accept_delay),
        "sim_reply_delay" => duration(c.sim_reply_delay),
        "sim_wrapup_delay" => duration(c.sim_wrapup_delay),
        "sim_replies" => value(c.sim_replies.to_string()),
        "sim_disposition" => value(c.sim_disposition.clone()),
        "sim_seed" => value(c.sim_seed.to_string()),
        "aging" => value(c.aging.to_string()),
        "max_missed_offers" => value(c.max_missed_offers.to_string()),
        "webhook_timeout" => duration(c.webhook_timeout),
        "webhook_backoff" => duration(c.webhook_backoff),
        "webhook_retry_for" => duration(c.webhook_retry_for),
        "webhook_queue" => value(c.webhook_queue.to_string()),
        "webhook_in_flight" => value(c.webhook_in_flight.to_string()),
        _ => None,
    }
}

/// `500ms`, `60s`, `10m`, `24h`: the largest unit that divides it (seconds
/// up to two minutes).
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 120 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `25MiB`, `64KiB`, or bytes.
fn show_size(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    match n {
        0 => "0".into(),
        n if n % MIB == 0 => format!("{}MiB", n / MIB),
        n if n % KIB == 0 => format!("{}KiB", n / KIB),
        n => n.to_string(),
    }
}

/// Copy every setting that is present over the configuration.
macro_rules! overlay {
    ($from:ident, $cfg:ident; $($field:ident),* ; $($opt:ident),*) => {
        $( if let Some(v) = $from.$field { $cfg.$field = v; } )*
        $( if let Some(v) = $from.$opt { $cfg.$opt = Some(v); } )*
    };
}

impl Args {
    fn apply(self, cfg: &mut Config) {
        let max_frame = self.max_frame;
        // First, so that a limit this same layer sets still applies.
        if self.client_limits == Some(false) {
            *cfg = std::mem::take(cfg).without_client_limits();
        }
        if let Some(v) = self.metrics_public {
            cfg.metrics_public = v;
        }
        if let Some(v) = self.transparent_huge_pages {
            cfg.transparent_huge_pages = v;
        }
        if !self.agents.is_empty() {
            cfg.agents = self.agents;
        }
        if !self.queues.is_empty() {
            cfg.queues = self.queues;
        }
        if !self.routes.is_empty() {
            cfg.routes = self.routes;
        }
        if !self.webhooks.is_empty() {
            cfg.webhooks = self.webhooks;
        }
        if !self.canned_responses.is_empty() {
            cfg.canned_responses = self.canned_responses;
        }
        if let Some(List(v)) = self.dispositions {
            cfg.dispositions = v;
        }
        if let Some(List(v)) = self.sms_from {
            cfg.sms_from = v;
        }
        if let Some(List(v)) = self.webchat_upload_types {
            cfg.webchat_upload_types = v;
        }
        if let Some(List(v)) = self.trusted_proxies {
            cfg.trusted_proxies = v;
        }
        overlay!(self, cfg;
            bind, offer_timeout, reoffer_cooldown, disconnect_grace, customer_grace, webchat_session_idle,
            wrapup_timeout, wrapup_disposition, shutdown_timeout,
            history_retention, auth_failures_per_minute, max_history_messages, max_history_bytes,
            history_replay, history_frame_bytes,
            max_upload, max_text, max_notes, max_canned_responses, max_canned_text,
            socket_backlog, workers,
            socket_backlog_bytes, socket_write_timeout, max_connections, max_connections_per_ip,
            request_header_timeout, request_body_timeout, request_body_min_rate,
            sessions_per_ip_per_minute, open_sessions_per_ip, sockets_per_session,
            socket_messages_per_second, conversation_messages_per_second, uploads_per_session,
            upload_bytes_per_session, uploads_per_ip_per_minute, upload_bytes_per_ip,
            heartbeat_interval, client_timeout, log_format, twilio_api_base, graph_api_base,
            messaging_window, provider_timeout, provider_retries, provider_backoff,
            provider_in_flight, provider_queue, webhook_dedupe, max_webhook_body,
            attachment_link_ttl, sim_agents, sim_capacity, sim_accept_delay, sim_reply_delay,
            sim_wrapup_delay, sim_replies, sim_disposition, sim_seed, aging, max_missed_offers,
            webhook_timeout, webhook_backoff, webhook_retry_for, webhook_queue, webhook_in_flight,
            fsync, fsync_interval, journal_segment_bytes, journal_queue_bytes,
            snapshot_every_records, snapshot_interval, cluster_lease_ttl, cluster_replicas,
            cluster_prefix, cluster_relay;
            admin_token, data_dir, cluster, node_id, cluster_tls_ca, cluster_tls_cert, cluster_tls_key, cluster_nkey, cluster_credentials, agent_token_ttl, metrics_token, public_url, twilio_account_sid, twilio_auth_token, whatsapp_token,
            whatsapp_app_secret, whatsapp_verify_token, whatsapp_phone_number_id,
            messenger_page_token, messenger_app_secret, messenger_verify_token,
            webchat_context_secret
        );
        if let Some(v) = max_frame {
            cfg.max_frame = v as usize;
        }
    }
}

/// TOML deserializers that share the flags' parsers, so a file value and a
/// flag value mean the same thing and fail with the same message.
mod de {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Size::deserialize(d)? {
            Size::Bytes(n) => Ok(Some(n)),
            Size::Text(s) => super::parse_size(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<super::List>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum List {
            Items(Vec<String>),
            Text(String),
        }
        Ok(Some(match List::deserialize(d)? {
            List::Items(v) => super::List(v),
            List::Text(s) => super::parse_list(&s).unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_protocol() {
        let c = Config::default();
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert_eq!(c.offer_timeout, Duration::from_secs(30));
        assert_eq!(c.reoffer_cooldown, Duration::from_secs(30));
        assert_eq!(c.disconnect_grace, Duration::from_secs(60));
        assert_eq!(c.wrapup_timeout, Duration::from_secs(600));
        assert_eq!(c.max_upload, 25 * 1024 * 1024);
        assert_eq!(c.dispositions.len(), 5);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switchboard.toml");
        std::fs::write(
            &path,
            "offer_timeout = \"5s\"\nbind = \"127.0.0.1:9000\"\nmax_upload = \"1MiB\"\n",
        )
        .unwrap();
        let args = Args::try_parse_from([
            "switchboard",
            "--config",
            path.to_str().unwrap(),
            "--bind",
            "127.0.0.1:9100",
        ])
        .unwrap();
        let cfg = Config::load(args).unwrap();
        assert_eq!(cfg.bind, "127.0.0.1:9100");
        assert_eq!(cfg.offer_timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_upload, 1024 * 1024);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Args::try_parse_from(["switchboard", "--offer-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--offer-timeout"), "{err}");

        let err = toml::from_str::<Args>("wrapup_timeout = \"ten\"").unwrap_err();
        assert!(err.to_string().contains("wrapup_timeout"), "{err}");

        let file: Result<Args, _> = toml::from_str("offer_timout = \"1s\"");
        assert!(file.is_err(), "unknown keys are rejected");

        let cfg = Config {
            wrapup_disposition: "gone".into(),
            ..Config::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("wrapup_disposition"));
    }

    /// Load `text` as the configuration file, plus these flags.
    fn load_file(name: &str, text: &str, flags: &[&str]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut argv = vec!["switchboard", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(flags);
        Config::load(Args::try_parse_from(argv).unwrap())
    }

    const EXAMPLE_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/switchboard.example.toml");

    fn example() -> String {
        std::fs::read_to_string(EXAMPLE_PATH).unwrap()
    }

    /// The key of a `key = value` line, commented out or not.
    fn setting_key(line: &str) -> Option<&str> {
        let line = line.strip_prefix("# ").unwrap_or(line);
        let (key, _) = line.split_once(" = ")?;
        (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then_some(key)
    }

    /// Every setting of the command line, by its TOML key.
    fn setting_ids() -> Vec<String> {
        Args::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| !matches!(id.as_str(), "config" | "help" | "version"))
            .collect()
    }

    #[test]
    fn example_file_loads_and_holds_the_defaults() {
        let args = Args::try_parse_from(["switchboard", "--config", EXAMPLE_PATH]).unwrap();
        let cfg = Config::load(args).unwrap();
        assert_eq!(
            cfg,
            Config::default(),
            "switchboard.example.toml must show the defaults"
        );
    }

    #[test]
    fn example_file_documents_every_setting() {
        let text = example();
        let lines: Vec<&str> = text.lines().collect();
        let ids = setting_ids();
        assert!(ids.len() > 40, "{ids:?}");
        for id in &ids {
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| setting_key(lines[i]) == Some(id.as_str()))
                .collect();
            assert_eq!(
                at.len(),
                1,
                "switchboard.example.toml must have `{id} = …` (or `# {id} = …`) exactly once, \
                 with a comment above it"
            );
            let above = lines[..at[0]]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .copied()
                .unwrap_or_default();
            assert!(
                above.starts_with('#') && setting_key(above).is_none(),
                "{id}: the line above it must be a comment describing it, not {above:?}"
            );
        }
        // Every top-level key is a setting (the [[agents]] example aside).
        let agents_at = lines
            .iter()
            .position(|l| l.contains("[[agents]]"))
            .expect("an [[agents]] example");
        for line in &lines[..agents_at] {
            if let Some(key) = setting_key(line) {
                assert!(ids.iter().any(|id| id == key), "{key} is not a setting");
            }
        }
        assert!(
            text.contains("with `_` for `-`"),
            "the header says how keys are named"
        );
    }

    #[test]
    fn example_file_commented_values_are_valid_too() {
        let text = example();
        let uncommented: Vec<&str> = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if setting_key(rest).is_some()
                        || [
                            "[[agents]]",
                            "[[queues]]",
                            "[[routes]]",
                            "[[webhooks]]",
                            "[[canned_responses]]",
                        ]
                        .contains(&rest) =>
                {
                    rest
                }
                _ => l,
            })
            .collect();
        let cfg = load_file("example-uncommented", &uncommented.join("\n"), &[]).unwrap();
        assert!(cfg.admin_token.is_some() && cfg.public_url.is_some());
        assert!(cfg.sms_enabled() && cfg.whatsapp_enabled() && cfg.messenger_enabled());
        let ids: Vec<&str> = cfg.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["alice", "bob"]);
        assert_eq!(cfg.agents[0].capacity.sms, 2);
        assert_eq!(cfg.agents[1].token, None);
        assert_eq!(cfg.queues[0].id, "billing");
        assert_eq!(cfg.route_queue(ChannelKind::Sms, "+15550100"), "billing");
        assert_eq!(cfg.route_queue(ChannelKind::Sms, "+15550199"), "default");
        assert_eq!(cfg.webhooks.len(), 1);
        assert_eq!(cfg.webhooks[0].events[0], "task.*");
        let canned: Vec<&str> = cfg
            .canned_responses
            .iter()
            .filter_map(|c| c.id.as_deref())
            .collect();
        assert_eq!(canned, ["greet", "billing-hours"]);
    }

    #[test]
    fn the_load_harness_webhook_configuration_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/loadtest/webhook-broker.toml");
        let args = Args::try_parse_from(["switchboard", "--config", path]).unwrap();
        let cfg = Config::load(args).unwrap();
        assert_eq!(cfg.webhooks[0].url, "http://127.0.0.1:18095/hooks");
        assert!(cfg.webhooks[0].events.is_empty(), "every event type");
    }

    #[test]
    fn webhooks_come_from_the_file_and_bad_ones_name_the_entry_and_field() {
        let good = r#"
webhook_retry_for = "10m"

[[webhooks]]
url = "https://crm.example.com/hooks"
secret = "0123456789abcdef0123456789abcdef"
events = ["task.*", "message.created"]

[[webhooks]]
url = "http://127.0.0.1:9000/all"
secret = "0123456789abcdef0123456789abcdef"
"#;
        let cfg = load_file("webhooks", good, &["--webhook-queue", "50"]).unwrap();
        assert_eq!(cfg.webhooks.len(), 2);
        assert!(cfg.webhooks[1].events.is_empty());
        assert_eq!(cfg.webhook_retry_for, Duration::from_secs(600));
        assert_eq!(cfg.webhook_queue, 50);
        assert!(!format!("{:?}", cfg.webhooks[0]).contains("0123456789abcdef"));
        let entry = |url: &str, secret: &str, events: &str| {
            format!("[[webhooks]]\nurl = {url:?}\nsecret = {secret:?}\nevents = {events}\n")
        };
        let secret = "0123456789abcdef0123456789abcdef";
        for (text, expected) in [
            (
                entry("ftp://example.com/x", secret, "[]"),
                "webhooks[0].url: \"ftp://example.com/x\" is not an http:// or https:// URL",
            ),
            (
                entry("https:///nohost", secret, "[]"),
                "is not an http:// or https:// URL with a host",
            ),
            (
                entry("https://example.com/x#frag", secret, "[]"),
                "has a #fragment",
            ),
            (
                entry("https://example.com/x", "short", "[]"),
                "webhooks[0].secret: must be at least 32 characters (this one has 5)",
            ),
            (
                entry("https://example.com/x", secret, r#"["task.done"]"#),
                "webhooks[0].events: \"task.done\" names no event type; known types: task.created",
            ),
            (
                entry("https://example.com/x", secret, r#"["task*"]"#),
                "webhooks[0].events: \"task*\" is not an event type or a glob",
            ),
            (
                "webhook_in_flight = 0".to_owned(),
                "webhook_in_flight: must be 1-64",
            ),
            (
                "webhook_queue = 0".to_owned(),
                "webhook_queue: must be at least 1",
            ),
            (
                "webhook_timeout = \"0s\"".to_owned(),
                "webhook_timeout: must be more than 0",
            ),
        ] {
            let err = load_file("bad-webhooks", &text, &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let unknown = "[[webhooks]]\nurl = \"https://e.com\"\nsecret = \"x\"\nfilter = []\n";
        let err = load_file("bad-webhooks", unknown, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `filter`"), "{err}");
    }

    #[test]
    fn canned_responses_come_from_the_file_and_bad_ones_name_the_entry() {
        let file = r#"
max_canned_text = 60

[[queues]]
id = "billing"

[[canned_responses]]
id = "greet"
title = "Greeting"
text = "Hi {{customer.name|there}}, {{agent.name}} here."

[[canned_responses]]
title = "Hours"
text = "{{queue.name}} is open 9-17."
queue = "billing"
"#;
        let cfg = load_file("canned", file, &[]).unwrap();
        assert_eq!(cfg.canned_responses.len(), 2);
        assert_eq!(cfg.canned_responses[1].queue.as_deref(), Some("billing"));
        assert_eq!(cfg.canned_limits().max_text, 60);
        let cases = [
            (
                file.replace("{{agent.name}}", "{{agent.email}}"),
                "canned_responses[0]: unknown placeholder {{agent.email}}",
            ),
            (
                file.replace("queue = \"billing\"", "queue = \"sales\""),
                "canned_responses[1].queue: \"sales\" is not a queue",
            ),
            (
                file.replace("title = \"Hours\"", "id = \"greet\"\ntitle = \"Hours\""),
                "canned_responses[1]: canned response greet already exists",
            ),
            (
                file.replace("9-17.", &"x".repeat(60)),
                "canned_responses[1]: text has",
            ),
            (
                file.replace("max_canned_text = 60", "max_canned_responses = 1"),
                "canned_responses[1]: the library holds 1 canned responses",
            ),
            (
                file.replace("title = \"Greeting\"\n", ""),
                "missing field `title`",
            ),
        ];
        for (text, want) in cases {
            let err = load_file("bad-canned", &text, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    #[test]
    fn help_shows_each_default_without_applying_it() {
        let defaults = Config::default();
        let no_default: Vec<String> = setting_ids()
            .into_iter()
            .filter(|id| shown_default(&defaults, id).is_none())
            .collect();
        assert_eq!(
            no_default,
            [
                "twilio_account_sid",
                "twilio_auth_token",
                "sms_from",
                "whatsapp_token",
                "whatsapp_app_secret",
                "whatsapp_verify_token",
                "whatsapp_phone_number_id",
                "messenger_page_token",
                "messenger_app_secret",
                "messenger_verify_token",
            ],
            "a new setting needs its default in shown_default"
        );

        let help = Args::command_with_defaults().render_help().to_string();
        for shown in [
            "[default: 127.0.0.1:8080]",
            "[default: 30s]",
            "[default: 25MiB]",
            "[default: text]",
            "[default: resolved,follow_up,escalated,spam,no_response]",
        ] {
            assert!(help.contains(shown), "{shown} missing from:\n{help}");
        }

        // Shown, not applied: nothing given, nothing set, so a file still wins.
        let matches = Args::command_with_defaults()
            .try_get_matches_from(["switchboard"])
            .unwrap();
        let args = Args::from_arg_matches(&matches).unwrap();
        assert!(args.bind.is_none() && args.offer_timeout.is_none() && args.log_format.is_none());

        // And what is shown is the default: passing every shown value as a
        // flag changes nothing.
        let mut argv = vec!["switchboard".to_owned()];
        for arg in Args::command().get_arguments() {
            if let Some(Shown::Value(v)) = shown_default(&defaults, arg.get_id().as_str()) {
                argv.push(format!("--{}", arg.get_long().unwrap()));
                argv.push(v);
            }
        }
        let cfg = Config::load(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(cfg, defaults);
    }

    #[test]
    fn durations_and_sizes_show_as_typed() {
        let shown: Vec<String> = [500, 1_000, 60_000, 90_000, 600_000, 3_600_000, 86_400_000]
            .map(|ms| show_duration(Duration::from_millis(ms)))
            .to_vec();
        assert_eq!(shown, ["500ms", "1s", "60s", "90s", "10m", "1h", "24h"]);
        assert_eq!(show_size(25 * 1024 * 1024), "25MiB");
        assert_eq!(show_size(64 * 1024), "64KiB");
        assert_eq!(show_size(1000), "1000");
    }

    #[test]
    fn a_missing_disposition_names_both_settings_and_the_fix() {
        let err = load_file(
            "dispositions",
            "dispositions = [\"resolved\", \"callback\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: dispositions: [\"resolved\",\"callback\"] does not include \
             the wrap-up timeout's disposition \"no_response\" (wrapup_disposition); add it to \
             dispositions or set wrapup_disposition to one of them"
        );
        let err = load_file(
            "sim-dispositions",
            "dispositions = [\"no_response\", \"callback\"]\nsim_agents = 2\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: dispositions: [\"no_response\",\"callback\"] does not include \
             the simulated agents' disposition \"resolved\" (sim_disposition); add it to \
             dispositions or set sim_disposition to one of them"
        );
        // Without simulated agents their disposition does not matter.
        assert!(load_file("no-sim", "dispositions = [\"no_response\"]\n", &[]).is_ok());
    }

    #[test]
    fn bind_must_be_an_address_and_port() {
        for ok in [
            "127.0.0.1:0",
            "0.0.0.0:8080",
            "[::1]:8080",
            "localhost:8080",
        ] {
            let cfg = Config {
                bind: ok.into(),
                ..Config::default()
            };
            assert!(cfg.validate().is_ok(), "{ok}");
        }
        for bad in [
            "19240",
            "localhost",
            ":8080",
            "127.0.0.1:99999",
            "http://127.0.0.1:8080",
        ] {
            let cfg = Config {
                bind: bad.into(),
                ..Config::default()
            };
            let err = cfg.validate().unwrap_err().to_string();
            assert_eq!(
                err,
                format!("invalid configuration: bind: {bad:?} is not an address:port, e.g. 127.0.0.1:8080")
            );
        }
    }

    #[test]
    fn admin_token_set_by_hand_needs_32_characters() {
        let with = |t: &str| Config {
            admin_token: Some(t.into()),
            ..Config::default()
        };
        let err = with("admin-secret-1").validate().unwrap_err().to_string();
        assert!(
            err.starts_with(
                "invalid configuration: admin_token: must be at least 32 characters \
                 (this one has 14)"
            ),
            "{err}"
        );
        assert!(with(&"x".repeat(31)).validate().is_err());
        assert!(with(&"x".repeat(32)).validate().is_ok());
        // Characters, not bytes: 16 two-byte letters are 16 characters.
        assert!(with(&"é".repeat(16)).validate().is_err());
        assert!(Config::for_tests().validate().is_ok());
    }

    #[test]
    fn log_format_from_file_env_or_flag() {
        let cfg = load_file("log-json", "log_format = \"json\"\n", &[]).unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        let cfg = load_file(
            "log-flag",
            "log_format = \"json\"\n",
            &["--log-format", "text"],
        )
        .unwrap();
        assert_eq!(cfg.log_format, LogFormat::Text);
        let err = toml::from_str::<Args>("log_format = \"xml\"").unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
        let err = Args::try_parse_from(["switchboard", "--log-format", "xml"]).unwrap_err();
        assert!(err.to_string().contains("--log-format"), "{err}");
    }

    const TWO_AGENTS: &str = r#"
[[agents]]
id = "alice"
name = "Alice"
capacity = { webchat = 3, sms = 2 }
skills = ["spanish"]
token = "alice-token-0123456789"

[[agents]]
id = "bob"
"#;

    #[test]
    fn agents_come_from_the_file() {
        let cfg = load_file("agents", TWO_AGENTS, &[]).unwrap();
        assert_eq!(
            cfg.agents,
            vec![
                AgentSeed {
                    id: "alice".into(),
                    name: Some("Alice".into()),
                    capacity: PerChannel {
                        webchat: 3,
                        sms: 2,
                        ..PerChannel::default()
                    },
                    skills: vec!["spanish".into()],
                    token: Some("alice-token-0123456789".into()),
                },
                AgentSeed {
                    id: "bob".into(),
                    name: None,
                    capacity: PerChannel::default(),
                    skills: vec![],
                    token: None,
                },
            ]
        );
    }

    #[test]
    fn bad_agents_name_the_entry_and_field() {
        let cases = [
            (
                TWO_AGENTS.replace("alice-token-0123456789", "short"),
                "agents[0].token: must be at least 16 characters (this one has 5)",
            ),
            (
                TWO_AGENTS.replace("alice-token-0123456789", "has spaces in it, sadly"),
                "agents[0].token: use only letters, digits",
            ),
            (
                TWO_AGENTS.replace("id = \"bob\"", "id = \"alice\""),
                "agents[1].id: \"alice\" is already the id of agents[0]; each agent needs its own id",
            ),
            (
                TWO_AGENTS.replace("id = \"bob\"", "id = \"bob\"\ntoken = \"alice-token-0123456789\""),
                "agents[1].token: the same as agents[0].token",
            ),
            (
                TWO_AGENTS.replace("id = \"bob\"", "id = \"b o b\""),
                "agents[1] (\"b o b\"): id must be",
            ),
            (
                TWO_AGENTS.replace("webchat = 3", "webchat = 3000"),
                "agents[0] (\"alice\"): capacity per channel must be at most 1000",
            ),
        ];
        for (file, want) in cases {
            let err = load_file("bad-agents", &file, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let err = load_file(
            "sim-clash",
            "[[agents]]\nid = \"sim-00002\"\n",
            &["--sim-agents", "3"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("agents[0].id: \"sim-00002\" is the id of a simulated agent"),
            "{err}"
        );
        // Unknown keys in an agent are refused, naming them.
        let err = load_file("agent-typo", "[[agents]]\nid = \"a\"\ncapacty = {}\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("capacty"), "{err}");
    }

    #[test]
    fn queues_and_routes_come_from_the_file_and_bad_ones_name_the_entry() {
        let file = r#"
[[queues]]
id = "billing"
priority = 10
overflow = { after = "90s", to = "general" }
max_wait = "15m"

[[queues]]
id = "general"

[[routes]]
channel = "sms"
to = "+15550100"
queue = "billing"
"#;
        let cfg = load_file("queues", file, &[]).unwrap();
        assert_eq!(cfg.queues.len(), 2);
        assert_eq!(cfg.queues[0].max_wait, Some(Duration::from_secs(900)));
        assert_eq!(cfg.route_queue(ChannelKind::Sms, "+15550100"), "billing");
        assert_eq!(
            cfg.route_queue(ChannelKind::Whatsapp, "+15550100"),
            "default"
        );
        let cases = [
            (
                file.replace("priority = 10", "priority = 101"),
                "queues[0]: queue \"billing\": priority must be 0-100",
            ),
            (
                file.replace("to = \"general\"", "to = \"nowhere\""),
                "queues[0]: queue \"billing\": overflow.to: queue \"nowhere\" does not exist",
            ),
            (
                file.replace("id = \"general\"", "id = \"billing\""),
                "queues[1].id: \"billing\" is defined twice",
            ),
            (
                file.replace("queue = \"billing\"", "queue = \"sales\""),
                "routes[0].queue: \"sales\" is not a queue",
            ),
            (
                file.replace("channel = \"sms\"", "channel = \"webchat\""),
                "routes[0]: queue \"billing\" does not take webchat",
            ),
            (
                file.replace("max_wait = \"15m\"", "max_wait = \"soon\""),
                "max_wait",
            ),
        ];
        for (text, want) in cases {
            let err = load_file("bad-queues", &text, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let err = load_file("bad-aging", "aging = 5000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("aging: must be at most 1000"), "{err}");
    }

    #[test]
    fn channels_say_what_they_miss() {
        let cfg = Config {
            twilio_account_sid: Some("AC1".into()),
            ..Config::default()
        };
        assert_eq!(
            cfg.channel_missing(ChannelKind::Webchat),
            Vec::<&str>::new()
        );
        assert_eq!(
            cfg.channel_missing(ChannelKind::Sms),
            ["SWITCHBOARD_TWILIO_AUTH_TOKEN", "SWITCHBOARD_SMS_FROM"]
        );
        assert!(!cfg.sms_enabled());
    }

    #[test]
    fn journal_settings_from_file_and_flag_and_what_the_journal_gets() {
        let cfg = Config::default();
        assert!(cfg.journal().is_none(), "no data_dir: purely in memory");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new").join("data");
        let file = format!(
            "data_dir = {:?}\nfsync = \"always\"\njournal_segment_bytes = \"8MiB\"\n\
             journal_queue_bytes = \"1MiB\"\nsnapshot_every_records = 5000\n\
             snapshot_interval = \"1m\"\n",
            data.to_str().unwrap()
        );
        let cfg = load_file(
            "journal",
            &file,
            &[
                "--fsync",
                "batch",
                "--fsync-interval",
                "5ms",
                "--snapshot-interval",
                "30s",
            ],
        )
        .unwrap();
        assert_eq!(cfg.data_dir.as_deref(), Some(data.as_path()));
        assert_eq!(cfg.snapshot_every_records, 5000);
        assert_eq!(
            cfg.snapshot_interval,
            Duration::from_secs(30),
            "the flag wins"
        );
        let defaults = Config::default();
        assert_eq!(
            (defaults.snapshot_every_records, defaults.snapshot_interval),
            (1_000_000, Duration::from_secs(600))
        );
        assert_eq!(cfg.fsync, FsyncMode::Batch);
        let j = cfg.journal().unwrap();
        assert_eq!(j.dir, data.join("journal"));
        assert_eq!(
            j.fsync,
            crate::journal::Fsync::Batch {
                max_delay: Duration::from_millis(5)
            }
        );
        assert_eq!((j.segment_bytes, j.queue_bytes), (8 << 20, 1 << 20));
        let err = Args::try_parse_from(["switchboard", "--fsync", "sometimes"]).unwrap_err();
        assert!(err.to_string().contains("--fsync"), "{err}");
    }

    #[test]
    fn bad_journal_settings_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let a_file = dir.path().join("file");
        std::fs::write(&a_file, "x").unwrap();
        let with = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let err = with(&|c| c.data_dir = Some(a_file.clone()));
        assert!(err.contains("exists and is not a directory"), "{err}");
        let err = with(&|c| c.data_dir = Some(a_file.join("below")));
        assert!(err.contains("cannot be created"), "{err}");
        assert_eq!(with(&|c| c.data_dir = Some(dir.path().join("a/b"))), "");
        assert_eq!(with(&|c| c.data_dir = Some(dir.path().into())), "");
        let err = with(&|c| c.fsync_interval = Duration::ZERO);
        assert!(err.contains("fsync_interval"), "{err}");
        let err = with(&|c| c.fsync_interval = Duration::from_secs(2));
        assert!(err.contains("fsync_interval: 2s"), "{err}");
        let err = with(&|c| c.snapshot_every_records = 0);
        assert!(err.contains("snapshot_every_records"), "{err}");
        let err = with(&|c| c.snapshot_interval = Duration::from_millis(500));
        assert!(err.contains("snapshot_interval: 500ms"), "{err}");
        let err = with(&|c| c.journal_segment_bytes = 1000);
        assert!(err.contains("journal_segment_bytes: 1000"), "{err}");
        let err = with(&|c| c.journal_queue_bytes = 0);
        assert!(err.contains("journal_queue_bytes"), "{err}");
    }

    #[test]
    fn cluster_settings_from_file_env_and_flags() {
        assert!(
            Config::default().cluster().is_none(),
            "a single node by default"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = format!(
            "data_dir = {:?}\ncluster = \"nats://127.0.0.1:4222\"\nnode_id = \"node-1\"\n\
             admin_token = \"cluster-admin-token-0123456789abcdef\"\n\
             cluster_lease_ttl = \"4s\"\n",
            dir.path().to_str().unwrap()
        );
        let cfg = load_file(
            "cluster",
            &file,
            &["--node-id", "node-2", "--cluster-replicas", "3"],
        )
        .unwrap();
        let c = cfg.cluster().expect("cluster mode");
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        assert_eq!(c.node_id, "node-2", "the flag wins");
        assert_eq!(c.lease_ttl, Duration::from_secs(4));
        assert_eq!(c.replicas, 3);
        assert_eq!(c.prefix, "switchboard");
    }

    #[test]
    fn bad_cluster_settings_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let with = |f: &dyn Fn(&mut Config)| {
            let mut c = Config {
                cluster: Some("nats://127.0.0.1:4222".into()),
                node_id: Some("node-1".into()),
                data_dir: Some(data.clone()),
                admin_token: Some("cluster-admin-token-0123456789abcdef".into()),
                ..Config::default()
            };
            f(&mut c);
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(with(&|_| {}), "");
        let err = with(&|c| c.node_id = None);
        assert!(err.contains("node_id: required in cluster mode"), "{err}");
        let err = with(&|c| c.data_dir = None);
        assert!(err.contains("data_dir: required in cluster mode"), "{err}");
        let err = with(&|c| c.admin_token = None);
        assert!(
            err.contains("admin_token: required in cluster mode"),
            "{err}"
        );
        let err = with(&|c| c.node_id = Some("node 1".into()));
        assert!(err.contains("node_id \"node 1\""), "{err}");
        let err = with(&|c| c.cluster_lease_ttl = Duration::from_millis(500));
        assert!(err.contains("cluster_lease_ttl"), "{err}");
        let err = with(&|c| c.cluster_replicas = 7);
        assert!(err.contains("cluster_replicas 7"), "{err}");
        let err = with(&|c| c.cluster_prefix = "a.b".into());
        assert!(err.contains("cluster_prefix \"a.b\""), "{err}");
        let err = with(&|c| c.cluster = Some(" ".into()));
        assert!(err.contains("cluster: empty"), "{err}");
        let err = with(&|c| c.cluster = None);
        assert!(err.contains("node_id: set, but cluster is not"), "{err}");
    }

    #[test]
    fn dispositions_list_parses() {
        assert_eq!(parse_list(" a, b ,,c").unwrap().0, vec!["a", "b", "c"]);
        let file: Args =
            toml::from_str("dispositions = [\"x\", \"y\"]\nsms_from = \"+1555,+1666\"").unwrap();
        assert_eq!(file.dispositions.unwrap().0, vec!["x", "y"]);
        assert_eq!(file.sms_from.unwrap().0, vec!["+1555", "+1666"]);
        let args =
            Args::try_parse_from(["switchboard", "--dispositions", "a,b", "--sms-from", "+1"])
                .unwrap();
        assert_eq!(args.dispositions.unwrap().0, vec!["a", "b"]);
    }
}

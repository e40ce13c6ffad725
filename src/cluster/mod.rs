//! Cluster mode on NATS (`docs/cluster.md`): the connection to a NATS server
//! with JetStream, and the buckets and stream several Switchboard nodes
//! share.
//!
//! One active node, whose journal is replicated to NATS, and hot standbys
//! that copy it, take clients as edges and take over (`node`). The
//! partitions and their leases were laid for spreading conversations over
//! the nodes, which measurement showed not worth it (`ARCHITECTURE.md`,
//! "Why conversations are not spread over nodes"): tested, not used by the
//! broker. What is here, tested against a real `nats-server`:
//! - [`Cluster`]: connect (with reconnection), then create or open what the
//!   design needs, with the settings below;
//! - [`lease`]: which partition a conversation belongs to, and the
//!   [`LeaseKeeper`] that holds a node's fair share of
//!   the partitions by lease;
//! - [`fence`]: the owner's fenced appends to a partition's events (or to
//!   the core's journal records), and reading them back;
//! - [`replicate`]: the active node's [`Replicator`], which ships every
//!   journal record to `<prefix>.core` and marks it replicated once stored;
//! - [`core_lease`]: the `core` lease naming the active node ([`CoreLease`]);
//! - [`standby`]: a standby's [`Follower`], copying the active node's
//!   replicated journal (`<prefix>.core`) into its own;
//! - [`files`]: uploaded files in the `<prefix>-files` object store;
//! - [`snapshots`]: the journal's snapshots in `<prefix>-snapshots`, a fresh
//!   standby seeded from them, and `<prefix>.core` trimmed behind them;
//! - [`node`]: a node's life: standby, then active, fail-stop;
//! - [`carry_over`]: a single node's journal carried into a new cluster;
//! - [`relay`]: every node takes clients: a standby relays HTTP requests and
//!   WebSockets to the active node over core NATS
//!   (`<prefix>.relay.open`, `<prefix>.relay.to.<endpoint>`; nothing
//!   stored);
//! - [`bus`]: typed messages from node to node (`<prefix>.bus.<node>`), in
//!   order, with every loss, restart and silence told;
//! - [`node_bus`]: what the running broker sends on it: a webchat
//!   customer's socket or a desk held by a standby (the edge) and its
//!   stand-in on the active node ([`remote_socket`]), which runs the
//!   conversations and the agents;
//! - [`packing`]: many small frames in one NATS message, for the relay and
//!   the bus.
//!
//! What lives in NATS, for a cluster named by its `prefix` (`switchboard` by
//! default); `docs/cluster.md` explains each setting:
//!
//! | name | kind | holds | settings |
//! |---|---|---|---|
//! | `<prefix>-nodes` | KV bucket | one key per live node, rewritten every renewal | history 1, max age = lease TTL |
//! | `<prefix>-leases` | KV bucket | one key per partition (`0` … `63`), value = the owner's node id | history 1, max age = lease TTL |
//! | `<prefix>-events` | stream | each partition's events on `<prefix>.p.<n>`; the active node's journal records on `<prefix>.core` | file storage, limits retention, no age limit, direct get |
//! | `<prefix>-files` | object store | uploaded files' bytes, by id | no age limit |
//! | `<prefix>-snapshots` | object store | the active node's two newest journal snapshots, `snap-<Lsn>` | no age limit |
//! | `<prefix>-status` | KV bucket | one key per live node: its role and progress (`node`'s roster) | history 1, max age = lease TTL |
//! | `<prefix>-shared` | KV bucket | what every node must agree on (the attachment link key) | history 1, no age limit |
//!
//! A KV bucket's max age is what makes a lease expire: an entry not
//! rewritten within the TTL is removed by the server, so a node that dies or
//! stalls loses its leases and its membership without anyone deleting them.
//! Replicas are 1 by default (one `nats-server`); a NATS cluster of three
//! would use 3, so a lease or an event survives a NATS node's loss.

pub mod bus;
pub mod carry_over;
pub mod core_lease;
pub mod fence;
pub mod files;
pub mod lease;
pub mod node;
pub mod node_bus;
pub mod packing;
pub mod relay;
pub mod remote_socket;
pub mod replicate;
pub mod snapshots;
pub mod standby;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

pub use bus::{Bus, BusError, BusOptions, Delivery, Responder};
pub use core_lease::{CoreLease, CORE_KEY};
pub use fence::{
    EventLog, FenceError, FencedWriter, Log, PartitionWriter, StoredEvent, CLAIM_HEADER,
    LSN_HEADER, NODE_HEADER,
};
pub use files::{Files, FilesError};
pub use lease::{
    partition_of, LeaseError, LeaseKeeper, LossCause, OwnershipChange, Partition, PARTITIONS,
};
pub use replicate::{ReplicationError, ReplicationStatus, Replicator, ReplicatorHandle};
pub use snapshots::{CoreSubject, SeedError, Snapshots, SnapshotsError};
pub use standby::{FollowError, Follower};

/// How a node joins the cluster. Every node of one cluster must use the same
/// `prefix`, `lease_ttl` and `replicas`; [`Cluster::connect`] refuses to
/// start against buckets made with another TTL.
#[derive(Clone)]
pub struct ClusterSettings {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for
    /// several).
    pub url: String,
    /// This node's id: letters, digits, `-` and `_`, at most 64; unique
    /// among the live nodes (a node that restarts with the same id takes
    /// back the leases still naming it).
    pub node_id: String,
    /// Names of the buckets and stream, and the subjects' first token.
    pub prefix: String,
    /// How long a lease (and a node's membership) lasts without renewal.
    /// A dead node's partitions are served again within this plus one
    /// renewal interval.
    pub lease_ttl: Duration,
    /// JetStream replicas of the buckets and the stream.
    pub replicas: usize,
    /// TLS to NATS: the CA certificate(s) to trust (PEM), for a NATS whose
    /// certificate no system root signs; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// TLS to NATS: this node's certificate and private key (PEM), for a
    /// NATS that verifies its clients (mutual TLS); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A file holding this node's NKey seed (`SU…`), for a NATS that knows
    /// the nodes by their NKeys; instead of credentials in the URL.
    pub nkey: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed),
    /// for a NATS in operator mode (decentralised authentication, as
    /// managed NATS services use).
    pub credentials: Option<PathBuf>,
}

/// Shows the URLs without their credentials.
impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("url", &self.shown_url())
            .field("node_id", &self.node_id)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("replicas", &self.replicas)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("nkey", &self.nkey)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// How a node proves itself to NATS, taken from the URLs as NATS clients
/// do: `nats://user:password@host` (user and password) or
/// `nats://token@host` (a token), percent-encoded where needed.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

/// Never shows a password or a token.
impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, …)"),
            NatsAuth::Token(_) => f.write_str("Token(…)"),
        }
    }
}

/// `url` (one or several, comma-separated) with any credentials replaced
/// by `***`: what logs and errors show.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let start = part.find("://").map_or(0, |i| i + 3);
            let authority_end = part[start..]
                .find(['/', '?', '#'])
                .map_or(part.len(), |i| start + i);
            match part[start..authority_end].rfind('@') {
                Some(at) => format!("{}***{}", &part[..start], &part[start + at..]),
                None => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn decoded(field: &str, what: &str) -> Result<String, ClusterError> {
    percent_encoding::percent_decode_str(field)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ClusterError::Setting(format!("cluster: the URL's {what} is not UTF-8")))
}

impl ClusterSettings {
    /// The defaults for everything but where NATS is and who this node is:
    /// prefix `switchboard`, a 10 s lease, one replica.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> ClusterSettings {
        ClusterSettings {
            url: url.into(),
            node_id: node_id.into(),
            prefix: "switchboard".to_owned(),
            lease_ttl: Duration::from_secs(10),
            replicas: 1,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            nkey: None,
            credentials: None,
        }
    }

    /// The credentials the URLs carry ([`NatsAuth`]): the same on every
    /// URL that has any (a node has one identity), none if no URL has.
    pub fn auth(&self) -> Result<NatsAuth, ClusterError> {
        let mut found: Option<NatsAuth> = None;
        for server in self.servers()? {
            let this = match (server.username(), server.password()) {
                (None, _) => continue,
                (Some(user), Some(password)) => NatsAuth::UserPassword {
                    user: decoded(user, "user")?,
                    password: decoded(password, "password")?,
                },
                (Some(token), None) => NatsAuth::Token(decoded(token, "token")?),
            };
            match &found {
                Some(earlier) if *earlier != this => {
                    return Err(ClusterError::Setting(
                        "cluster: the URLs carry different credentials; give the same on every \
                         URL that has any (a node connects to each server as one identity)"
                            .into(),
                    ))
                }
                _ => found = Some(this),
            }
        }
        Ok(found.unwrap_or(NatsAuth::None))
    }

    /// The NATS servers of `url`, comma-separated (the client tries them in
    /// turn, and learns the rest of a NATS cluster from the one it reaches).
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<async_nats::ServerAddr>().map_err(|e| {
                    ClusterError::Setting(format!(
                        "cluster: {:?} is not a NATS URL: {e}",
                        redact_url(u)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|servers| {
                if servers.is_empty() {
                    Err(ClusterError::Setting(
                        "cluster: no NATS server given".into(),
                    ))
                } else {
                    Ok(servers)
                }
            })
    }

    /// How often a node renews its leases and its membership: a quarter of
    /// the TTL, so three renewals in a row may fail (a NATS restart, a slow
    /// disk) before a lease lapses.
    pub fn renew_every(&self) -> Duration {
        self.lease_ttl / 4
    }

    /// How every NATS connection of this node is made (`what` names it in
    /// the server's view): reconnecting for ever, with a delay growing by
    /// 100 ms per attempt up to the renewal interval; proving itself the one
    /// way set (credentials in the URL, an NKey or a credentials file, whose
    /// files are read here, at start, once per connection), over TLS as set.
    /// Refused when more than one way is set or a file cannot be used.
    pub fn connect_options(&self, what: &str) -> Result<async_nats::ConnectOptions, ClusterError> {
        let max_delay = self.renew_every();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("switchboard {}{what}", self.node_id))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(move |attempts| {
                (Duration::from_millis(100) * attempts as u32).min(max_delay)
            });
        let auth = self.auth()?;
        let ways = [
            auth != NatsAuth::None,
            self.nkey.is_some(),
            self.credentials.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(ClusterError::Setting(
                "cluster: credentials in the URL, cluster_nkey and cluster_credentials: a node \
                 proves itself to NATS one way; set only one"
                    .into(),
            ));
        }
        match auth {
            NatsAuth::UserPassword { user, password } => {
                options = options.user_and_password(user, password);
            }
            NatsAuth::Token(token) => options = options.token(token),
            NatsAuth::None => {}
        }
        if let Some(seed) = self.nkey_seed()? {
            options = options.nkey(seed);
        }
        if let Some(path) = &self.credentials {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ClusterError::Setting(format!("cluster_credentials: {}: {e}", path.display()))
            })?;
            options = options.credentials(&text).map_err(|e| {
                ClusterError::Setting(format!(
                    "cluster_credentials: {}: not a NATS credentials file (a user JWT and \
                     its NKey seed, as `nsc generate creds` writes it): {e}",
                    path.display()
                ))
            })?;
        }
        // async-nats reads the TLS files when it connects: say which one
        // is wrong before that.
        for (name, path) in [
            ("cluster_tls_ca", &self.tls_ca),
            ("cluster_tls_cert", &self.tls_cert),
            ("cluster_tls_key", &self.tls_key),
        ] {
            if let Some(path) = path {
                std::fs::File::open(path).map_err(|e| {
                    ClusterError::Setting(format!("{name}: {}: {e}", path.display()))
                })?;
            }
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }

    /// A NATS connection of this node's own (`what` names it), holding at
    /// most `client_capacity` messages going out and `subscription_capacity`
    /// received per subscription; the receiver hears of every
    /// (re)connection and of every message NATS dropped for it (a slow
    /// consumer): the moments core NATS messages may have been lost.
    pub async fn connect_watched(
        &self,
        what: &str,
        client_capacity: usize,
        subscription_capacity: usize,
    ) -> Result<(async_nats::Client, tokio::sync::mpsc::UnboundedReceiver<()>), ClusterError> {
        let (tell, lost) = tokio::sync::mpsc::unbounded_channel();
        let client = self
            .connect_options(what)?
            .client_capacity(client_capacity)
            .subscription_capacity(subscription_capacity)
            .event_callback(move |event| {
                if matches!(
                    event,
                    async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                ) {
                    let _ = tell.send(());
                }
                std::future::ready(())
            })
            .connect(self.servers()?)
            .await
            .map_err(|source| ClusterError::Connect {
                url: self.shown_url(),
                source,
            })?;
        Ok((client, lost))
    }

    /// The NKey seed in the `nkey` file, if set: one line, `SU` and 56
    /// more characters.
    pub fn nkey_seed(&self) -> Result<Option<String>, ClusterError> {
        let Some(path) = &self.nkey else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClusterError::Setting(format!("cluster_nkey: {}: {e}", path.display())))?;
        let seed = text.trim();
        if seed.len() != 58 || !seed.starts_with("SU") {
            return Err(ClusterError::Setting(format!(
                "cluster_nkey: {}: not a user NKey seed (one line, SU and 56 more characters, \
                 as `nk -gen user` writes it)",
                path.display()
            )));
        }
        Ok(Some(seed.to_owned()))
    }

    /// The URLs as logs and errors may show them (no credentials).
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The object store of the journal's snapshots (`snapshots`).
    pub fn snapshots_bucket(&self) -> String {
        format!("{}-snapshots", self.prefix)
    }

    /// The bucket where every node says what it is doing (role, progress).
    pub fn status_bucket(&self) -> String {
        format!("{}-status", self.prefix)
    }

    /// The membership bucket's name.
    pub fn nodes_bucket(&self) -> String {
        format!("{}-nodes", self.prefix)
    }

    /// The lease bucket's name.
    pub fn leases_bucket(&self) -> String {
        format!("{}-leases", self.prefix)
    }

    /// The events stream's name.
    pub fn events_stream(&self) -> String {
        format!("{}-events", self.prefix)
    }

    /// The subject partition `p`'s events are written on.
    pub fn partition_subject(&self, p: Partition) -> String {
        format!("{}.p.{}", self.prefix, p.index())
    }

    /// The subject the active node's journal records are written on.
    pub fn core_subject(&self) -> String {
        format!("{}.core", self.prefix)
    }

    /// Every subject of the events stream.
    pub fn events_subjects(&self) -> Vec<String> {
        vec![format!("{}.p.*", self.prefix), self.core_subject()]
    }

    /// The checks [`Cluster::connect`] makes first: the node id and prefix
    /// are names NATS accepts, the TTL and replicas in range.
    pub fn check(&self) -> Result<(), ClusterError> {
        let name_ok = valid_node_id;
        if !name_ok(&self.node_id) {
            return Err(ClusterError::Setting(format!(
                "node_id {:?}: 1 to 64 letters, digits, '-' or '_'",
                self.node_id
            )));
        }
        if !name_ok(&self.prefix) {
            return Err(ClusterError::Setting(format!(
                "cluster_prefix {:?}: 1 to 64 letters, digits, '-' or '_'",
                self.prefix
            )));
        }
        self.servers()?;
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ClusterError::Setting(format!(
                "cluster_lease_ttl {:?}: at least 1s (the server expires entries with a coarse timer)",
                self.lease_ttl
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ClusterError::Setting(format!(
                "cluster_replicas {}: 1 to 5",
                self.replicas
            )));
        }
        self.auth()?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ClusterError::Setting(
                "cluster_tls_cert and cluster_tls_key: both or neither (a client certificate \
                 needs its private key)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A node id (or a prefix): 1 to 64 letters, digits, `-` or `_`, so it is
/// one token of a NATS subject and a KV key.
pub fn valid_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster setting: {0}")]
    Setting(String),
    #[error("connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("bucket {bucket} expires entries after {found:?}, this node's lease TTL is {want:?}: every node must use the same TTL")]
    TtlDiffers {
        bucket: String,
        found: Duration,
        want: Duration,
    },
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
}

/// A node's connection to the cluster: the NATS client, JetStream, and the
/// buckets and stream every node shares. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    settings: ClusterSettings,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    nodes: kv::Store,
    leases: kv::Store,
    events: stream::Stream,
}

impl Cluster {
    /// Connect and create (or open) the buckets and the stream.
    ///
    /// The first connection must succeed (a node that cannot reach NATS at
    /// start says so at once); after that the client reconnects for ever,
    /// with a delay growing by 100 ms per attempt up to a quarter of the
    /// lease TTL, so a NATS restart is noticed well within one lease.
    pub async fn connect(settings: ClusterSettings) -> Result<Cluster, ClusterError> {
        settings.check()?;
        let client = settings
            .connect_options("")?
            .connect(settings.servers()?)
            .await
            .map_err(|source| ClusterError::Connect {
                url: settings.shown_url(),
                source,
            })?;
        let jetstream = jetstream::new(client.clone());
        let nodes =
            open_bucket(&jetstream, &settings, settings.nodes_bucket(), "live nodes").await?;
        let leases = open_bucket(
            &jetstream,
            &settings,
            settings.leases_bucket(),
            "partition leases",
        )
        .await?;
        let events = open_events(&jetstream, &settings).await?;
        Ok(Cluster {
            settings,
            client,
            jetstream,
            nodes,
            leases,
            events,
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The NATS client (for the next steps' request-reply between nodes).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The membership bucket: one key per live node.
    pub fn nodes(&self) -> &kv::Store {
        &self.nodes
    }

    /// The lease bucket: one key per held partition, naming its owner.
    pub fn leases(&self) -> &kv::Store {
        &self.leases
    }

    /// The partitions' events.
    /// The events stream (`<prefix>-events`).
    pub fn events(&self) -> &stream::Stream {
        &self.events
    }

    pub fn event_log(&self) -> EventLog {
        EventLog::new(
            self.jetstream.clone(),
            self.events.clone(),
            self.settings.clone(),
        )
    }
}

/// Open the bucket if it exists (refusing one whose TTL differs), else
/// create it. Two nodes creating it at once both succeed: the server
/// accepts an identical configuration.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    settings: &ClusterSettings,
    bucket: String,
    what: &str,
) -> Result<kv::Store, ClusterError> {
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(mut existing) => {
            let found = existing
                .info()
                .await
                .map_err(|e| bucket_error(&bucket, e.into()))?
                .config
                .max_age;
            if found != settings.lease_ttl {
                return Err(ClusterError::TtlDiffers {
                    bucket,
                    found,
                    want: settings.lease_ttl,
                });
            }
            js.get_key_value(bucket.clone())
                .await
                .map_err(|e| bucket_error(&bucket, e.into()))
        }
        Err(e) if !is_not_found(&e) => Err(bucket_error(&bucket, e.into())),
        Err(_) => create_bucket(js, settings, bucket, what, settings.lease_ttl).await,
    }
}

/// Create (or open) a KV bucket whose entries never expire (`<prefix>-shared`:
/// what every node must agree on, such as the attachment link key).
pub(crate) async fn open_lasting_bucket(
    js: &jetstream::Context,
    settings: &ClusterSettings,
    bucket: String,
    what: &str,
) -> Result<kv::Store, ClusterError> {
    create_bucket(js, settings, bucket, what, Duration::ZERO).await
}

/// Create a KV bucket (or open it, made the same way), its entries expiring
/// after `max_age` (zero: never).
async fn create_bucket(
    js: &jetstream::Context,
    settings: &ClusterSettings,
    bucket: String,
    what: &str,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    // The bucket's stream made here rather than with `create_key_value`,
    // which first asks for the account's info in a form nats-server 2.9
    // does not send. The same settings as async-nats gives a KV bucket (so
    // `get_key_value` opens it).
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(format!("Switchboard {what}")),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| bucket_error(&bucket, e.into()))?;
    js.get_key_value(bucket.clone())
        .await
        .map_err(|e| bucket_error(&bucket, e.into()))
}

fn bucket_error(bucket: &str, source: async_nats::Error) -> ClusterError {
    ClusterError::Bucket {
        bucket: bucket.to_owned(),
        source,
    }
}

/// Create (or open) the events stream; one made before the core's subject
/// existed is updated to take it too (its other settings kept).
async fn open_events(
    js: &jetstream::Context,
    settings: &ClusterSettings,
) -> Result<stream::Stream, ClusterError> {
    let name = settings.events_stream();
    let err = |source: async_nats::Error| ClusterError::Stream {
        stream: name.clone(),
        source,
    };
    let mut events = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            description: Some("Switchboard's events: partitions and the core".to_owned()),
            subjects: settings.events_subjects(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: settings.replicas,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    let config = events
        .info()
        .await
        .map_err(|e| err(e.into()))?
        .config
        .clone();
    let missing: Vec<String> = settings
        .events_subjects()
        .into_iter()
        .filter(|s| !config.subjects.contains(s))
        .collect();
    if missing.is_empty() {
        return Ok(events);
    }
    tracing::info!(stream = %name, ?missing, "adding subjects to the events stream");
    let mut config = config;
    config.subjects.extend(missing);
    js.update_stream(config).await.map_err(|e| err(e.into()))?;
    js.get_stream(name.clone()).await.map_err(|e| err(e.into()))
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_setting_takes_several_servers_comma_separated() {
        let mut settings = ClusterSettings::new(
            "nats://10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3",
            "node-1",
        );
        let servers = settings.servers().expect("three servers");
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[1].port(), 4222);
        assert!(settings.check().is_ok());
        settings.url = "nats://10.0.0.1:4222,nats://10.0.0.2:port".into();
        let err = settings.check().expect_err("a bad URL").to_string();
        assert!(err.contains("nats://10.0.0.2:port"), "{err}");
        settings.url = " , ".into();
        assert!(settings.check().is_err(), "no server");
    }

    #[test]
    fn credentials_come_from_the_urls_decoded_and_the_same_on_each() {
        let auth = |url: &str| ClusterSettings::new(url, "node-1").auth();
        assert_eq!(auth("nats://10.0.0.1:4222").unwrap(), NatsAuth::None);
        assert_eq!(
            auth("nats://sb:p%40ss%3Aw%2Frd@10.0.0.1:4222").unwrap(),
            NatsAuth::UserPassword {
                user: "sb".into(),
                password: "p@ss:w/rd".into()
            }
        );
        assert_eq!(
            auth("tls://t0ken@10.0.0.1").unwrap(),
            NatsAuth::Token("t0ken".into())
        );
        // The same on every URL, or on some only (those without take them).
        assert_eq!(
            auth("nats://a:b@10.0.0.1,nats://10.0.0.2,nats://a:b@10.0.0.3").unwrap(),
            NatsAuth::UserPassword {
                user: "a".into(),
                password: "b".into()
            }
        );
        let err = auth("nats://a:b@10.0.0.1,nats://a:c@10.0.0.2")
            .expect_err("two identities")
            .to_string();
        assert!(err.contains("different credentials"), "{err}");
        assert!(
            ClusterSettings::new("nats://a:b@10.0.0.1,nats://a:c@10.0.0.2", "n")
                .check()
                .is_err()
        );
        let shown = format!("{:?}", auth("nats://u:hunter2@h").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn urls_are_shown_without_their_credentials() {
        assert_eq!(
            redact_url("nats://u:p@10.0.0.1:4222, tls://tok@h2,nats://h3:4222"),
            "nats://***@10.0.0.1:4222, tls://***@h2,nats://h3:4222"
        );
        assert_eq!(redact_url("u:p@h:4222"), "***@h:4222");
        assert_eq!(redact_url("nats://h/path@x"), "nats://h/path@x");
        let settings = ClusterSettings::new("nats://u:hunter2@h:4222", "node-1");
        assert_eq!(settings.shown_url(), "nats://***@h:4222");
        assert!(!format!("{settings:?}").contains("hunter2"));
        let err = ClusterSettings::new("nats://u:hunter2@h:port", "n")
            .check()
            .expect_err("a bad port")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn an_nkey_comes_from_its_file_and_not_beside_url_credentials() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.nk");
        let seed = format!("SU{}", "A".repeat(56));
        std::fs::write(&path, format!("{seed}\n")).expect("write");
        let mut settings = ClusterSettings::new("nats://h:4222", "node-1");
        settings.nkey = Some(path.clone());
        assert!(settings.check().is_ok());
        assert_eq!(settings.nkey_seed().expect("read"), Some(seed));
        std::fs::write(&path, "not a seed").expect("write");
        let err = settings
            .connect_options("")
            .map(drop)
            .expect_err("no seed")
            .to_string();
        assert!(err.contains("not a user NKey seed"), "{err}");
        assert!(
            !err.contains("not a seed"),
            "the file's text is not shown: {err}"
        );
        settings.url = "nats://u:p@h:4222".into();
        let err = settings
            .connect_options("")
            .map(drop)
            .expect_err("two ways")
            .to_string();
        assert!(err.contains("one way"), "{err}");
    }

    #[test]
    fn a_credentials_file_must_be_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.creds");
        std::fs::write(&path, "no JWT in here").expect("write");
        let mut settings = ClusterSettings::new("nats://h:4222", "node-1");
        settings.credentials = Some(path);
        assert!(settings.check().is_ok());
        let err = settings
            .connect_options("")
            .map(drop)
            .expect_err("not creds")
            .to_string();
        assert!(err.contains("not a NATS credentials file"), "{err}");
        settings.nkey = Some("node.nk".into());
        let err = settings
            .connect_options("")
            .map(drop)
            .expect_err("two ways")
            .to_string();
        assert!(err.contains("one way"), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let mut settings = ClusterSettings::new("tls://h:4222", "node-1");
        settings.tls_cert = Some("node.pem".into());
        let err = settings.check().expect_err("no key").to_string();
        assert!(err.contains("cluster_tls_key"), "{err}");
        settings.tls_key = Some("node-key.pem".into());
        assert!(settings.check().is_ok());
        let err = settings
            .connect_options("")
            .map(drop)
            .expect_err("no such file")
            .to_string();
        assert!(err.contains("cluster_tls_cert: node.pem"), "{err}");
    }
}

//! A cluster of real `switchboard` processes on one real `nats-server`:
//! nodes started with `--cluster`, each on its own data dir, and a way to
//! find which one is active (the one that printed its `api` line).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;

use super::nats::NatsServer;
use super::process::{binary, Broker};
use super::{Harness, Ws};

/// The admin token every node accepts (at least 32 characters).
pub const ADMIN: &str = "cluster-failover-admin-0123456789abcdef";

/// The lease TTL the test clusters run with; a renewal every quarter of it.
pub const TTL: Duration = Duration::from_secs(2);

/// The names the nodes use (the default prefix).
pub const PREFIX: &str = "switchboard";

/// One node: its id, its data dir (kept across restarts), its process.
pub struct Node {
    pub id: String,
    pub dir: tempfile::TempDir,
    /// Its `--bind` (`127.0.0.1:0` unless a test sets a port).
    pub bind: String,
    pub process: Option<Broker>,
}

/// The active node, found by its `api` line.
pub struct Active {
    /// Its index in [`TestCluster::nodes`].
    pub index: usize,
    /// A client of it.
    pub h: Harness,
}

/// `n` nodes (`node-0`, `node-1`, …) on one nats-server; every process is
/// killed when this is dropped.
pub struct TestCluster {
    pub nodes: Vec<Node>,
    // Declared last: stopped after the nodes.
    pub nats: NatsServer,
    /// The other servers of a NATS cluster ([`TestCluster::on_nats`]).
    pub more_nats: Vec<NatsServer>,
    /// The lease TTL nodes are started with ([`TTL`] unless a test sets it).
    pub ttl: Duration,
    /// What nodes are given as `--cluster` instead of the servers' plain
    /// URLs (credentials, `tls://`), when a test sets it.
    pub cluster_url: Option<String>,
}

impl TestCluster {
    /// A nats-server and `n` nodes' data dirs; no node started yet.
    pub fn new(n: usize) -> TestCluster {
        TestCluster::new_on(n, NatsServer::start())
    }

    /// `n` nodes' data dirs on the given NATS servers (a NATS cluster); no
    /// node started yet. The nodes are given every server's URL.
    pub fn on_nats(n: usize, mut servers: Vec<NatsServer>) -> TestCluster {
        assert!(!servers.is_empty(), "at least one NATS server");
        let nats = servers.remove(0);
        let mut cluster = TestCluster::new_on(n, nats);
        cluster.more_nats = servers;
        cluster
    }

    /// `n` nodes' data dirs on the given NATS server; no node started yet.
    pub fn new_on(n: usize, nats: NatsServer) -> TestCluster {
        TestCluster {
            nodes: (0..n)
                .map(|i| Node {
                    id: format!("node-{i}"),
                    dir: tempfile::tempdir().expect("temp dir"),
                    bind: "127.0.0.1:0".to_owned(),
                    process: None,
                })
                .collect(),
            nats,
            more_nats: Vec::new(),
            ttl: TTL,
            cluster_url: None,
        }
    }

    /// The URL of every NATS server that is up, comma-separated (what
    /// `--cluster` takes).
    pub fn nats_urls(&self) -> String {
        self.nats_url_list().join(",")
    }

    fn nats_url_list(&self) -> Vec<String> {
        std::iter::once(&self.nats)
            .chain(&self.more_nats)
            .filter(|s| s.is_up())
            .map(NatsServer::url)
            .collect()
    }

    /// Start node 0 and wait until it is active (the first node against an
    /// empty NATS takes the lease at once), then the others as standbys.
    pub fn start(n: usize) -> (TestCluster, Active) {
        let mut cluster = TestCluster::new(n);
        cluster.start_node(0);
        let active = cluster.wait_active(&[], Duration::from_secs(20));
        assert_eq!(active.index, 0, "the first node is the active one");
        for i in 1..n {
            cluster.start_node(i);
        }
        (cluster, active)
    }

    /// Start node `i` (again: its previous process must have exited).
    pub fn start_node(&mut self, i: usize) {
        self.start_node_with(i, &[]);
    }

    /// Start node `i` with more environment variables (settings).
    pub fn start_node_with(&mut self, i: usize, env: &[(&str, &str)]) {
        let url = self.cluster_url.clone().unwrap_or_else(|| self.nats_urls());
        let ttl = self.ttl;
        let node = &mut self.nodes[i];
        if let Some(old) = node.process.as_mut() {
            assert!(!old.running(), "{} is still running", node.id);
        }
        node.process = Some(Broker::start(
            binary()
                .args(["--cluster", &url, "--node-id", &node.id, "--data-dir"])
                .arg(node.dir.path())
                .args(["--bind", &node.bind, "--cluster-lease-ttl"])
                .arg(format!("{}ms", ttl.as_millis()))
                .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN)
                .env("SWITCHBOARD_CLIENT_LIMITS", "false")
                .env("SWITCHBOARD_SHUTDOWN_TIMEOUT", "5s")
                .envs(env.iter().copied()),
        ));
    }

    /// Node `i`'s process.
    pub fn process(&mut self, i: usize) -> &mut Broker {
        self.nodes[i].process.as_mut().expect("node started")
    }

    /// Wait until a running node other than those in `except` has printed
    /// its `api` line: the active one.
    pub fn wait_active(&mut self, except: &[usize], within: Duration) -> Active {
        let deadline = Instant::now() + within;
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if except.contains(&i) {
                    continue;
                }
                let Some(process) = node.process.as_mut() else {
                    continue;
                };
                if let Some(api) = process.printed_value("api") {
                    let base = api.trim_end_matches("/v1").to_owned();
                    return Active {
                        index: i,
                        h: Harness::external(&base, ADMIN),
                    };
                }
            }
            if Instant::now() > deadline {
                let printed: Vec<_> = self
                    .nodes
                    .iter_mut()
                    .filter_map(|n| n.process.as_mut().map(|p| (n.id.clone(), p.seen.clone())))
                    .collect();
                panic!("no node became active within {within:?}: {printed:#?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Node `i` is running and has not become active (printed no `api`
    /// line, so it answers only `503 standby`).
    pub fn assert_standby(&mut self, i: usize) {
        let id = self.nodes[i].id.clone();
        let process = self.process(i);
        assert!(process.running(), "{id} exited: {:#?}", process.seen);
        assert_eq!(
            process.printed_value("api"),
            None,
            "{id} became active: {:#?}",
            process.seen
        );
        assert!(
            process
                .printed(super::process::Stream::Out, |l| !l.starts_with("standby:"))
                .is_none(),
            "a standby prints only its `standby:` line on stdout: {:#?}",
            process.seen
        );
    }

    /// The base URL node `i` printed as a standby (`standby: http://…`).
    pub fn standby_url(&mut self, i: usize) -> String {
        self.process(i).stdout_value("standby")
    }

    /// The last `n` lines node `i` printed, for failure messages.
    pub fn last_lines(&mut self, i: usize, n: usize) -> String {
        let process = self.process(i);
        process.drain();
        let skip = process.seen.len().saturating_sub(n);
        process.seen[skip..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait until node `i` logs that it follows the active node's journal
    /// (a standby that has moved its old journal aside and started copying).
    pub fn wait_following(&mut self, i: usize) {
        self.process(i)
            .wait_for(super::process::Stream::Err, "the standby's start", |l| {
                l.contains("following the active node's journal")
            });
    }

    /// A client of the cluster's NATS.
    pub async fn nats_client(&self) -> async_nats::Client {
        async_nats::connect(self.nats_url_list().as_slice())
            .await
            .expect("connect to nats-server")
    }

    /// The `core` lease bucket.
    pub async fn leases(&self) -> jetstream::kv::Store {
        jetstream::new(self.nats_client().await)
            .get_key_value(format!("{PREFIX}-leases"))
            .await
            .expect("the leases bucket")
    }
}

/// `GET /v1/cluster` on a node: asserts it answers as the active node
/// `node_id` with the cluster's TTL; the answer.
pub async fn assert_active(h: &Harness, node_id: &str) -> Value {
    let v = h.admin_get_ok("/v1/cluster").await;
    assert_eq!(v["node_id"], node_id, "{v}");
    assert_eq!(v["role"], "active", "{v}");
    assert_eq!(
        v["lease_ttl_ms"].as_u64(),
        Some(TTL.as_millis() as u64),
        "{v}"
    );
    let (appended, replicated) = (v["appended_lsn"].as_u64(), v["replicated_lsn"].as_u64());
    assert!(
        appended.is_some() && replicated.is_some() && replicated <= appended,
        "appended_lsn and replicated_lsn: {v}"
    );
    v
}

/// Wait until the active node says every record it appended is replicated
/// (nothing in flight); that LSN.
pub async fn wait_replicated(h: &Harness) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = h.admin_get_ok("/v1/cluster").await;
        if v["appended_lsn"] == v["replicated_lsn"] {
            return v["replicated_lsn"].as_u64().expect("replicated_lsn");
        }
        assert!(Instant::now() < deadline, "still replicating: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upload a 30 kB file (a PDF) as `token`'s; its id and bytes.
pub async fn upload(h: &Harness, token: &str) -> (String, Vec<u8>) {
    let bytes: Vec<u8> = (0..30_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let r = h
        .request_raw(
            reqwest::Method::POST,
            "/v1/attachments?filename=terms.pdf",
            Some(token),
            "application/pdf",
            bytes.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().expect("an attachment id").to_owned();
    (id, bytes)
}

/// File `id` as `token` downloads it: the same `bytes`.
pub async fn assert_served(h: &Harness, token: &str, id: &str, bytes: &[u8]) {
    let got = h
        .http
        .get(h.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("download");
    assert_eq!(got.status().as_u16(), 200, "file {id} is served");
    assert_eq!(
        got.bytes().await.expect("bytes").to_vec(),
        bytes,
        "file {id}"
    );
}

/// The Lsns of the snapshots in `<prefix>-snapshots`, oldest first, read
/// through `client` (none when the store does not exist yet). A listing is
/// an ordered consumer that reads until it is told nothing is pending: one
/// that has not ended within 5 s (the store changed under it) is made again,
/// for at most 30 s, so a test never waits on it for ever.
pub async fn snapshots_in(client: async_nats::Client) -> Vec<u64> {
    use futures_util::TryStreamExt;
    let js = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    let infos: Vec<jetstream::object_store::ObjectInfo> = loop {
        let listing = async {
            let Ok(store) = js.get_object_store(format!("{PREFIX}-snapshots")).await else {
                return Vec::new();
            };
            store
                .list()
                .await
                .expect("list")
                .try_collect()
                .await
                .expect("list")
        };
        match tokio::time::timeout(Duration::from_secs(5), listing).await {
            Ok(infos) => break infos,
            Err(_) => assert!(
                Instant::now() < deadline,
                "listing the snapshots never ended within 30 s"
            ),
        }
    };
    let mut lsns: Vec<u64> = infos
        .iter()
        .map(|i| {
            i.name
                .strip_prefix("snap-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a snapshot's name: {}", i.name))
        })
        .collect();
    lsns.sort_unstable();
    lsns
}

/// Wait until the active node's roster (at `h`) shows `node` as a standby
/// that has copied at least `lsn`.
pub async fn wait_copied(h: &Harness, node: &str, lsn: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = h.admin_get_ok("/v1/cluster").await;
        let copied = v["nodes"].as_array().and_then(|nodes| {
            nodes
                .iter()
                .find(|n| n["node_id"] == node && n["role"] == "standby")
                .and_then(|n| n["copied_lsn"].as_u64())
        });
        if copied >= Some(lsn) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} has not copied Lsn {lsn}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of node `i` while it is a standby, once it knows the active
/// node (its `/healthz` says `200`): what it relays, and the customers'
/// sockets it holds.
pub async fn edge(cluster: &mut TestCluster, i: usize) -> Harness {
    let h = Harness::external(&cluster.standby_url(i), ADMIN);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.get("/healthz", None).await;
        if r.status == 200 {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "node-{i} never relaying: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An active node-0 and a standby node-1, both with `env`, and a client of
/// the standby.
pub async fn active_and_edge(env: &[(&str, &str)]) -> (TestCluster, Active, Harness) {
    let mut cluster = TestCluster::new(2);
    cluster.start_node_with(0, env);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node_with(1, env);
    let edge = edge(&mut cluster, 1).await;
    (cluster, active, edge)
}

/// The settings of a test whose client stops reading: small queues (16
/// pushes, 256 KiB), messages of up to 20,000 bytes ([`bulky`]), long
/// histories, and heartbeats too slow to end the socket first.
pub const SLOW_READER: [(&str, &str); 7] = [
    ("SWITCHBOARD_SOCKET_BACKLOG", "16"),
    ("SWITCHBOARD_SOCKET_BACKLOG_BYTES", "256KiB"),
    ("SWITCHBOARD_MAX_TEXT", "20000"),
    ("SWITCHBOARD_MAX_HISTORY_BYTES", "64MiB"),
    ("SWITCHBOARD_HEARTBEAT_INTERVAL", "30s"),
    ("SWITCHBOARD_CLIENT_TIMEOUT", "120s"),
    ("SWITCHBOARD_DISCONNECT_GRACE", "30s"),
];

/// What is opened on the relay from now on (each relayed request), on a
/// connection of `cluster`'s own: the connection, for more subscriptions,
/// and the opens.
pub async fn relay_opens(cluster: &TestCluster) -> (async_nats::Client, async_nats::Subscriber) {
    let nats = cluster.nats_client().await;
    let opens = nats
        .subscribe(format!("{PREFIX}.relay.open"))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    (nats, opens)
}

/// Message `i` of a flood: 20,000 bytes, starting with its number.
pub fn bulky(i: usize) -> String {
    let head = format!("msg-{i:05}-");
    format!("{head}{}", "x".repeat(20_000 - head.len()))
}

/// A flood's next ten messages from `customer`, who had written one
/// before it: each `bulky`, each acknowledged in turn (message `i` at seq
/// `i + 2`). How many the flood has sent now, `sent` before.
pub async fn flood_ten(customer: &mut Ws, sent: usize) -> usize {
    for i in sent..sent + 10 {
        let ack = customer.say(&bulky(i)).await;
        assert_eq!(ack["seq"], (i + 2) as u64, "{ack}");
    }
    sent + 10
}

//! A node's life in cluster mode (`docs/cluster.md`): a **standby** follows
//! the active node's journal until it holds the `core` lease, then it is
//! **active**, replicating its own journal, until it stops or loses the lease.
//!
//! - [`standby`]: connect, follow `<prefix>.core` into the local journal,
//!   wait for the lease, claim the subject (from then on the old active's
//!   writes are refused), copy everything before the claim. What it returns,
//!   [`Promoted`], is what the server needs to start as the active node: it
//!   then opens the local journal and replays it as after any restart.
//! - [`Active`]: the lease and the replicator of a started active node;
//!   [`Active::lost`] resolves when the node must stop (lease lost or a
//!   replicated write fenced), [`Active::stop`] hands over cleanly.
//! - [`NodeStatus`]: what `GET /v1/cluster` shows, every node's line in the
//!   roster among it.
//! - The roster: each node rewrites its line in the `<prefix>-status` bucket
//!   every renewal interval (a standby the Lsn it has copied, the active node
//!   the Lsn that is durable); the bucket's max age is the lease TTL, so a
//!   node gone for longer drops out. Standbys only refuse requests, so this is
//!   how an operator sees them.
//!
//! An active node that loses its lease never acts as the active again: the
//! server makes the journal refuse every change, closes the sockets and
//! exits with [`EXIT_LOST`], so a supervisor restarts it as a standby
//! (fail-stop: simpler and safer than stepping down in place, where state
//! decided alone could linger in memory).

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{
    Cluster, ClusterError, ClusterSettings, CoreLease, CoreSubject, FenceError, FencedWriter,
    Files, FollowError, Follower, LeaseError, ReplicationError, Replicator, ReplicatorHandle,
    Snapshots,
};
use crate::journal::{Journal, JournalConfig};

/// The exit status of an active node that lost its lease or was fenced
/// (EX_TEMPFAIL: restart it, it comes back as a standby).
pub const EXIT_LOST: i32 = 75;

/// Becoming the active node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("following the active node's journal: {0}")]
    Follow(#[from] FollowError),
    #[error("the core lease: {0}")]
    Lease(#[from] LeaseError),
    #[error("claiming the journal's subject: {0}")]
    Claim(#[from] FenceError),
    #[error("the cluster's attachment link key: {0}")]
    LinkKey(String),
    #[error("replicating the journal: {0}")]
    Replication(#[from] ReplicationError),
    #[error("carrying this node's journal into the cluster: {0}")]
    CarryOver(String),
    #[error("the core lease lapsed before this node could claim the journal")]
    Lapsed,
}

/// How a standby keeps snapshots of the journal it copies (the same
/// schedule as the active node's compactor), so that taking over replays
/// the newest snapshot and the records after it, not the whole history.
#[derive(Clone)]
pub struct Compaction {
    pub settings: crate::snapshot::ReplaySettings,
    pub files: Option<std::path::PathBuf>,
    pub schedule: crate::compactor::Schedule,
}

/// What a standby shows of itself while it follows (its HTTP answers, in
/// `http/standby.rs`): its id, how far it has copied the journal, and which
/// node is active (from the roster). Updated each renewal interval.
pub struct StandbyView {
    pub node_id: String,
    copied: std::sync::atomic::AtomicU64,
    active: parking_lot::Mutex<Option<String>>,
}

impl StandbyView {
    pub fn new(node_id: &str) -> StandbyView {
        StandbyView {
            node_id: node_id.to_owned(),
            copied: std::sync::atomic::AtomicU64::new(0),
            active: parking_lot::Mutex::new(None),
        }
    }

    /// The active node's id, as the roster last said (`None`: none seen).
    pub fn active(&self) -> Option<String> {
        self.active.lock().clone()
    }

    /// `{"node_id", "role": "standby", "copied_lsn", "active_node"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "node_id": self.node_id,
            "role": "standby",
            "copied_lsn": self.copied.load(std::sync::atomic::Ordering::Relaxed),
            "active_node": self.active(),
        })
    }

    fn update(&self, copied: crate::journal::Lsn, roster: Option<&[serde_json::Value]>) {
        self.copied
            .store(copied, std::sync::atomic::Ordering::Relaxed);
        if let Some(lines) = roster {
            *self.active.lock() = lines
                .iter()
                .find(|l| l["role"] == "active")
                .and_then(|l| l["node_id"].as_str())
                .map(str::to_owned);
        }
    }
}

/// A standby that now holds the lease and has claimed the journal's subject,
/// with every record before its claim in its local journal (closed).
pub struct Promoted {
    cluster: Cluster,
    lease: CoreLease,
    writer: FencedWriter,
    files: Files,
    snapshots: Snapshots,
    roster: Roster,
    /// The last record copied from the previous active node (0: none).
    pub copied: crate::journal::Lsn,
}

/// Follow the active node until this one holds the `core` lease; then claim
/// the journal's subject and copy what is left. Resolves only then (or on
/// an error): a standby waits here for as long as another node is active.
///
/// `view` is kept up to date for the standby's HTTP answers.
pub async fn standby(
    settings: ClusterSettings,
    journal: JournalConfig,
    compaction: Compaction,
    view: Arc<StandbyView>,
) -> Result<Promoted, NodeError> {
    let node_id = settings.node_id.clone();
    let cluster = Cluster::connect(settings).await?;
    // The copy is durable once on the local disk: it is the replica, and
    // nothing it holds is acknowledged by this node.
    let journal = JournalConfig {
        replicated: false,
        ..journal
    };
    if let Some(carried) =
        crate::cluster::carry_over::try_carry_over(&cluster, &journal, &compaction).await?
    {
        share_link_key(&cluster, &journal.dir, carried.link_key).await?;
        let files = Files::open(&cluster).await?;
        let snapshots = Snapshots::open(&cluster).await?;
        let roster = Roster::open(&cluster).await?;
        return Ok(Promoted {
            cluster,
            lease: carried.lease,
            writer: carried.writer,
            files,
            snapshots,
            roster,
            copied: carried.last,
        });
    }
    share_link_key(&cluster, &journal.dir, None).await?;
    let mut follower = follow(&cluster, &journal, &compaction).await?;
    tracing::info!(node_id, "standby: following the active node's journal");
    // A follower that stops (a gap, a bad checksum: never skipped) makes
    // this node unfit to take over: it stops instead of waiting. One left
    // behind by the trimming starts again from the newest snapshot.
    let roster = Roster::open(&cluster).await?;
    let mut tick = tokio::time::interval(cluster.settings().renew_every());
    let (lease, files, snapshots, writer) = loop {
        let mut acquire = Box::pin(CoreLease::acquire(&cluster));
        let lease = loop {
            tokio::select! {
                lease = &mut acquire => break lease?,
                why = follower.failed() => {
                    if !follower.fell_behind() {
                        return Err(NodeError::Follow(FollowError::Task(why)));
                    }
                    tracing::warn!(node_id, %why, "standby: starting again from the newest snapshot");
                    follower.close().await?;
                    follower = follow(&cluster, &journal, &compaction).await?;
                }
                _ = tick.tick() => {
                    roster
                        .announce(serde_json::json!({
                            "node_id": node_id,
                            "role": "standby",
                            "copied_lsn": follower.copied(),
                        }))
                        .await;
                    let lines = roster.read().await;
                    view.update(follower.copied(), lines.as_deref());
                }
            }
        };
        drop(acquire);
        tracing::info!(
            node_id,
            copied = follower.copied(),
            "the core lease is this node's: taking over"
        );
        // What taking over needs of NATS, then the claim, which fences out
        // whoever writes the subject: only while the lease is this node's
        // by its own clock (an answer that came late, while the follower
        // was starting again or NATS was slow, may give a lease that has
        // lapsed already, and another node may be active by now). NATS
        // failing here (a JetStream leader being elected) gives the lease
        // back and waits again, as a standby, rather than stop.
        let taking_over = async {
            let files = Files::open(&cluster).await?;
            let snapshots = Snapshots::open(&cluster).await?;
            if !lease.holds() {
                return Err(NodeError::Lapsed);
            }
            tracing::debug!("files opened; claiming the journal's subject");
            let writer = cluster.event_log().core_writer().await?;
            Ok::<_, NodeError>((files, snapshots, writer))
        };
        match taking_over.await {
            Ok((files, snapshots, writer)) => break (lease, files, snapshots, writer),
            Err(e) => {
                tracing::warn!(node_id, error = %e, "standby: could not take over; the core lease given back, waiting again");
                lease.release().await;
            }
        }
    };
    tracing::debug!(
        claim = writer.last_sequence(),
        "claimed; copying what is left"
    );
    let mut copied = follower.finish(writer.last_sequence()).await?;
    // Every record up to the claim is copied now, so the cluster's newest
    // snapshot is at or before the last one. One beyond it means records
    // this node never saw: it started following from Lsn 1 while another
    // node was carrying its journal into the cluster (the snapshot went up
    // after this node looked), and that node died before writing a record.
    // Start again from that snapshot rather than take over without it.
    let newest = snapshots
        .list()
        .await
        .map_err(|e| NodeError::Follow(FollowError::Task(format!("the snapshots: {e}"))))?
        .first()
        .copied()
        .unwrap_or(0);
    if newest > copied {
        tracing::warn!(
            node_id,
            copied,
            snapshot = newest,
            "standby: the cluster's newest snapshot is beyond what this node copied; starting again from it"
        );
        let again = follow(&cluster, &journal, &compaction).await?;
        copied = again.finish(writer.last_sequence()).await?;
    }
    tracing::info!(
        node_id,
        copied,
        "every record of the previous active node is in the local journal"
    );
    Ok(Promoted {
        cluster,
        lease,
        writer,
        files,
        snapshots,
        roster,
        copied,
    })
}

/// Start a follower on a fresh local journal (seeded from the newest
/// snapshot, if any) and the compactor keeping snapshots of it.
async fn follow(
    cluster: &Cluster,
    journal: &JournalConfig,
    compaction: &Compaction,
) -> Result<Follower, NodeError> {
    let follower = Follower::start(cluster, journal.clone(), &compaction.settings).await?;
    crate::compactor::start(
        follower.journal(),
        compaction.settings,
        compaction.files.clone(),
        compaction.schedule.clone(),
    )
    .map_err(|e| NodeError::Follow(FollowError::Task(format!("the compactor: {e}"))))?;
    Ok(follower)
}

impl Promoted {
    /// Where the active node keeps the stored files' bytes.
    pub fn files(&self) -> Arc<dyn crate::attachments::FileReplica> {
        Arc::new(self.files.clone())
    }
}

/// What `GET /v1/cluster` shows about this node.
pub struct NodeStatus {
    pub node_id: String,
    pub lease_ttl: Duration,
    replicator: Arc<ReplicatorHandle>,
    /// Every node's line in the roster, as last read (renewal interval);
    /// None until the first read.
    nodes: parking_lot::Mutex<Option<Vec<serde_json::Value>>>,
}

impl NodeStatus {
    /// The Lsn each standby in the roster has copied: the core subject is
    /// not trimmed past the lowest. None until the roster has been read
    /// (nothing is trimmed before the standbys are known).
    fn standbys_copied(&self) -> Option<Vec<crate::journal::Lsn>> {
        self.nodes.lock().as_ref().map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["role"] == "standby")
                .filter_map(|n| n["copied_lsn"].as_u64())
                .collect()
        })
    }
}

impl crate::broker::ClusterView for NodeStatus {
    /// `{"node_id", "role", "lease_ttl_ms", "appended_lsn",
    /// "replicated_lsn", "durable_lsn", "unreplicated_bytes",
    /// "stream_sequence", "retrying", "nodes"}`.
    fn to_json(&self) -> serde_json::Value {
        let r = self.replicator.status();
        let nodes = self.nodes.lock().clone().unwrap_or_default();
        serde_json::json!({
            "nodes": nodes,
            "node_id": self.node_id,
            "role": "active",
            "lease_ttl_ms": self.lease_ttl.as_millis() as u64,
            "appended_lsn": r.appended,
            "replicated_lsn": r.replicated,
            "durable_lsn": r.durable,
            "unreplicated_bytes": r.unreplicated_bytes,
            "stream_sequence": r.stream_sequence,
            "retrying": r.retrying,
        })
    }
}

/// A started active node: its lease, the replicator shipping its journal,
/// and its upkeep (the roster; snapshots uploaded and the core subject
/// trimmed, [`crate::cluster::snapshots`]).
pub struct Active {
    lease: CoreLease,
    replicator: Arc<ReplicatorHandle>,
    status: Arc<NodeStatus>,
    /// The roster, and the snapshots and trimming.
    upkeep: Upkeep,
}

/// The active node's background tasks, aborted when it goes: a node that
/// lost its lease stops its upkeep at once (nothing in NATS is its business
/// any more).
struct Upkeep(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Upkeep {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Active {
    /// Start replicating `journal` (the one the server opened, in
    /// replicated mode) through the claimed writer.
    pub fn start(promoted: Promoted, journal: &Journal) -> Result<Active, NodeError> {
        let settings = promoted.cluster.settings().clone();
        let replicator = Arc::new(Replicator::start(journal, promoted.writer)?);
        let status = Arc::new(NodeStatus {
            node_id: settings.node_id.clone(),
            lease_ttl: settings.lease_ttl,
            replicator: replicator.clone(),
            nodes: parking_lot::Mutex::new(None),
        });
        let roster = tokio::spawn(keep_roster(
            promoted.roster,
            Arc::downgrade(&status),
            settings.renew_every(),
        ));
        let core = CoreSubject::new(promoted.cluster.events().clone(), settings.core_subject());
        let weak = Arc::downgrade(&status);
        let trimmer = tokio::spawn(crate::cluster::snapshots::keep_trimmed(
            journal.downgrade(),
            promoted.snapshots,
            core,
            move || weak.upgrade().and_then(|s| s.standbys_copied()),
            settings.renew_every(),
        ));
        Ok(Active {
            lease: promoted.lease,
            replicator,
            status,
            upkeep: Upkeep(vec![roster, trimmer]),
        })
    }

    pub fn status(&self) -> Arc<NodeStatus> {
        self.status.clone()
    }

    /// Resolves, with the reason, when this node may no longer act as the
    /// active one: its lease was refused or lapsed, or a replicated write
    /// was fenced (another node claimed the journal).
    pub async fn lost(&self) -> String {
        tokio::select! {
            cause = self.lease.lost() => format!("the core lease was lost ({cause:?})"),
            ended = self.replicator.stopped() => match ended {
                Err(e) => format!("replication stopped: {e}"),
                Ok(()) => "replication ended: the journal was closed".to_owned(),
            },
        }
    }

    /// A clean stop, after the server drained and closed the journal: ship
    /// what is left (within `timeout`), then release the lease so a standby
    /// takes over at once rather than after the TTL.
    pub async fn stop(self, timeout: Duration) {
        drop(self.upkeep);
        match tokio::time::timeout(timeout, self.replicator.stopped()).await {
            Ok(Ok(())) => tracing::info!("journal replicated to its end"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "replication stopped before the journal's end")
            }
            Err(_) => {
                self.replicator.abort();
                tracing::warn!(
                    "records left unreplicated at the stop deadline; no client was told they were stored"
                );
            }
        }
        self.lease.release().await;
    }
}

/// The key of signed attachment links must be the same on every node, or a
/// link handed to a provider (or a customer) before a failover would be
/// refused after it. The first node to start makes one and stores it in the
/// `<prefix>-shared` bucket (no expiry); every node writes it to
/// `<data_dir>/link.key`, where the registry reads it at start.
///
/// A node carrying its own state into a new cluster offers its own key
/// (`candidate`), so links it handed out before stay valid.
async fn share_link_key(
    cluster: &Cluster,
    journal_dir: &std::path::Path,
    candidate: Option<Vec<u8>>,
) -> Result<(), NodeError> {
    let settings = cluster.settings();
    let bucket = format!("{}-shared", settings.prefix);
    let err = |e: &dyn std::fmt::Display| NodeError::LinkKey(format!("bucket {bucket}: {e}"));
    let store = crate::cluster::open_lasting_bucket(
        cluster.jetstream(),
        settings,
        bucket.clone(),
        "settings every node shares",
    )
    .await?;
    let fresh = candidate.unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec());
    // Create if absent; whoever loses the race reads the winner's key.
    if let Err(e) = store.create("link-key", fresh.into()).await {
        tracing::debug!(error = %e, "link key already in the cluster");
    }
    let key = store
        .get("link-key")
        .await
        .map_err(|e| err(&e))?
        .ok_or_else(|| err(&"no link-key after creating it"))?;
    if key.len() != 32 {
        return Err(err(&format!("link-key holds {} bytes, not 32", key.len())));
    }
    let data_dir = journal_dir
        .parent()
        .ok_or_else(|| err(&"the journal has no parent directory"))?;
    write_private(&data_dir.join("link.key"), &key)
        .map_err(|e| NodeError::LinkKey(format!("{}: {e}", data_dir.join("link.key").display())))
}

/// Write `bytes` to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, bytes)
}

/// The `<prefix>-status` bucket: one line per node (see the module doc).
struct Roster {
    store: async_nats::jetstream::kv::Store,
    node_id: String,
    /// Every call bounded by it: the roster never holds a node up.
    every: Duration,
}

impl Roster {
    async fn open(cluster: &Cluster) -> Result<Roster, NodeError> {
        let settings = cluster.settings();
        let store = crate::cluster::open_bucket(
            cluster.jetstream(),
            settings,
            settings.status_bucket(),
            "nodes' status",
        )
        .await?;
        Ok(Roster {
            store,
            node_id: settings.node_id.clone(),
            every: settings.renew_every(),
        })
    }

    /// Rewrite this node's line (best effort: a failed write only leaves
    /// the line to expire).
    async fn announce(&self, line: serde_json::Value) {
        let put = self
            .store
            .put(self.node_id.as_str(), line.to_string().into());
        match tokio::time::timeout(self.every, put).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "cluster: the node's status not written"),
            Err(_) => tracing::debug!("cluster: the node's status not written in time"),
        }
    }

    /// Every node's line, by node id (best effort: `None` when NATS did
    /// not answer in time).
    async fn read(&self) -> Option<Vec<serde_json::Value>> {
        use futures_util::StreamExt;
        let read = async {
            let mut keys: Vec<String> = self
                .store
                .keys()
                .await
                .ok()?
                .filter_map(|k| async { k.ok() })
                .collect()
                .await;
            keys.sort();
            let mut lines = Vec::with_capacity(keys.len());
            for key in keys {
                if let Ok(Some(bytes)) = self.store.get(&key).await {
                    if let Ok(line) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                        lines.push(line);
                    }
                }
            }
            Some(lines)
        };
        tokio::time::timeout(self.every, read).await.ok().flatten()
    }
}

/// The active node's side of the roster: its own line (the durable Lsn),
/// and everyone's read back for `GET /v1/cluster`, each renewal interval,
/// for as long as the node runs.
async fn keep_roster(roster: Roster, status: std::sync::Weak<NodeStatus>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(status) = status.upgrade() else {
            return;
        };
        let durable = status.replicator.status().durable;
        roster
            .announce(serde_json::json!({
                "node_id": roster.node_id,
                "role": "active",
                "durable_lsn": durable,
            }))
            .await;
        if let Some(lines) = roster.read().await {
            *status.nodes.lock() = Some(lines);
        }
    }
}

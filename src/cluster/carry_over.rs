//! A single node's state carried into a new cluster.
//!
//! A node that ran alone and is restarted with `--cluster` on the same data
//! dir would otherwise start as a standby, move its journal aside and lose
//! its agents, conversations and files to an empty cluster. Instead, when
//! the cluster has never held anything (no records on `<prefix>.core`, no
//! snapshot in `<prefix>-snapshots`) and the `core` lease is free, the node
//! becomes the cluster's first active node **with its own journal**:
//!
//! 1. it takes the lease (one try) and claims the core subject, then checks
//!    again that the subject holds no records (so no other node got there
//!    first);
//! 2. it writes a snapshot of its whole journal (the compactor's code, at
//!    its last Lsn) and uploads it to the snapshots bucket, with every file
//!    that snapshot names to the files bucket, so a standby starts from it
//!    ([`super::snapshots::seed`]);
//! 3. its attachment link key becomes the cluster's, so links handed out
//!    before stay valid;
//! 4. it starts as the active node, replicating from the next Lsn on.
//!
//! A node whose journal is empty, or that joins a cluster holding state,
//! starts as a standby as before (its journal moved aside, with a warning).

use std::path::{Path, PathBuf};

use super::node::{Compaction, NodeError};
use super::snapshots::{CoreSubject, Snapshots};
use super::{Cluster, CoreLease, FencedWriter, Files, FollowError};
use crate::journal::{Journal, JournalConfig, Lsn};
use crate::snapshot::BrokerState;

/// What a carried-over node starts with.
pub struct Carried {
    pub lease: CoreLease,
    pub writer: FencedWriter,
    /// The journal's last Lsn: the snapshot uploaded is at it.
    pub last: Lsn,
    /// The node's own attachment link key, if it had one.
    pub link_key: Option<Vec<u8>>,
}

/// A snapshot of the whole journal, as `(its Lsn, its payload)`: the journal
/// is opened, compacted up to its last record if needed, read back and
/// closed again. `None`: the journal holds nothing.
fn compact_whole(
    journal: &JournalConfig,
    compaction: &Compaction,
) -> Result<Option<(Lsn, Vec<u8>)>, NodeError> {
    if !journal.dir.is_dir() {
        return Ok(None);
    }
    let (opened, recovered) = Journal::open(JournalConfig {
        replicated: false,
        ..journal.clone()
    })
    .map_err(FollowError::from)?;
    let result = (|| -> Result<Option<(Lsn, Vec<u8>)>, NodeError> {
        let last = opened.appended();
        if recovered.snapshot.is_none() && recovered.records.is_empty() {
            return Ok(None);
        }
        drop(recovered);
        if opened.snapshot_lsn() < last {
            crate::compactor::compact(
                &opened,
                &compaction.settings,
                compaction.files.as_deref(),
                last,
            )
            .map_err(|e| carry(format!("a snapshot of the journal: {e}")))?;
        }
        let (lsn, payload) = opened
            .read_snapshot()
            .map_err(FollowError::from)?
            .ok_or_else(|| carry("no snapshot after compacting".to_owned()))?;
        if lsn != last {
            return Err(carry(format!(
                "the snapshot is at Lsn {lsn}, the journal ends at {last}"
            )));
        }
        Ok(Some((lsn, payload)))
    })();
    let closed = opened.close(std::time::Duration::from_secs(30));
    let snapshot = result?;
    closed.map_err(FollowError::from)?;
    Ok(snapshot)
}

/// Carry this node's journal into the cluster if it can (see the module
/// doc); `None`: start as a standby.
pub async fn try_carry_over(
    cluster: &Cluster,
    journal: &JournalConfig,
    compaction: &Compaction,
) -> Result<Option<Carried>, NodeError> {
    // Local work first: a snapshot of the whole journal (harmless if the
    // journal is not carried over: it is moved aside then).
    let (config, settings) = (journal.clone(), compaction.clone());
    let snapshot = tokio::task::spawn_blocking(move || compact_whole(&config, &settings))
        .await
        .map_err(|e| carry(e.to_string()))??;
    let Some((lsn, payload)) = snapshot else {
        return Ok(None);
    };
    let snapshots = Snapshots::open(cluster).await?;
    let core = CoreSubject::new(cluster.events().clone(), cluster.settings().core_subject());
    let empty = |what: &str| {
        tracing::warn!(
            journal = %journal.dir.display(),
            "cluster: this node's own journal is not carried over: {what}"
        );
    };
    if !snapshots.list().await.map_err(follow)?.is_empty()
        || core.next_records(1).await.map_err(follow)?.is_some()
    {
        empty("the cluster already holds state");
        return Ok(None);
    }
    let Some(lease) = CoreLease::try_acquire(cluster).await else {
        empty("another node is active");
        return Ok(None);
    };
    let writer = cluster.event_log().core_writer().await?;
    if core.next_records(1).await.map_err(follow)?.is_some() {
        empty("another node wrote records first");
        lease.release().await;
        return Ok(None);
    }
    tracing::info!(
        journal = %journal.dir.display(),
        "cluster: the cluster is empty: carrying this node's journal into it"
    );
    let state = BrokerState::decode(&payload, &compaction.settings)
        .map_err(|e| carry(format!("the snapshot at Lsn {lsn}: {e}")))?;
    let files = Files::open(cluster).await?;
    let mut uploaded = 0;
    if let Some(dir) = &compaction.files {
        for id in state.attachments.keys() {
            let path = dir.join(id);
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                // Gone from the disk: the node would drop it at start too.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(NodeError::Follow(FollowError::File { path, source })),
            };
            files
                .put(id, &bytes)
                .await
                .map_err(|e| carry(e.to_string()))?;
            uploaded += 1;
        }
    }
    snapshots.put(lsn, &payload).await.map_err(follow)?;
    let link_key = link_key_of(&journal.dir);
    tracing::info!(
        snapshot = lsn,
        files = uploaded,
        "cluster: this node's state is in the cluster; starting as its active node"
    );
    Ok(Some(Carried {
        lease,
        writer,
        last: lsn,
        link_key,
    }))
}

/// The node's own link key (`<data_dir>/link.key`), if it has one.
fn link_key_of(journal_dir: &Path) -> Option<Vec<u8>> {
    let path: PathBuf = journal_dir.parent()?.join("link.key");
    std::fs::read(path).ok().filter(|k| k.len() == 32)
}

fn follow(e: super::SnapshotsError) -> NodeError {
    NodeError::CarryOver(e.to_string())
}

fn carry(why: String) -> NodeError {
    NodeError::CarryOver(why)
}

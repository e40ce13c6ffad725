//! Partitions and their leases: which partition a conversation belongs to,
//! and the [`LeaseKeeper`] that holds a node's fair share of them. Laid for
//! spreading conversations over nodes, which the broker does not do
//! (`ARCHITECTURE.md`, "Why conversations are not spread over nodes"):
//! tested against a real NATS, not started by the broker.
//!
//! Conversations hash into [`PARTITIONS`] partitions; each partition is owned
//! by at most one node at a time through a lease: a key in the lease bucket
//! (`<prefix>-leases`, key = the partition's number, value = the owner's node
//! id) that the bucket's max age (the lease TTL) expires unless the owner
//! rewrites it.
//!
//! Every operation on a lease is a compare-and-set on the key's revision, so
//! two nodes never both succeed:
//! - **acquire**: KV `create` (succeeds only if the key is absent, expired or
//!   deleted);
//! - **renew**: KV `update` at the revision this node holds (refused if
//!   anyone wrote the key since, or it expired);
//! - **release**: KV delete at the held revision; another node can create
//!   the key only after that delete, so a handover has no moment with two
//!   owners.
//!
//! A keeper runs as one tokio task per node, spawned on the runtime it is
//! started from (on an actix arbiter, that arbiter's; it only awaits, never
//! blocks). Every `lease_ttl / 4` it rewrites its membership key, renews its
//! leases, reads who is live (and, when short of its share, the lease
//! bucket), and moves towards its fair share: it gives back
//! surplus partitions when nodes joined and takes free ones when nodes left.
//! It tells its owner what changed through a channel ([`OwnershipChange`]).
//! A renewal that is refused means the partition is gone (another node has
//! it, or it expired): the keeper reports `Lost` and stops renewing; a
//! renewal it cannot get an answer for is retried until the lease would have
//! lapsed by this node's own clock (seven eighths of the TTL after the last
//! confirmed renewal was sent), then reported `Lost` too; every call to NATS
//! is bounded by one renewal interval, so a NATS outage cannot stall the
//! keeper past its leases. The owner must stop acting for a partition when
//! told, and asks [`LeaseKeeper::holds`] (which checks the clock itself)
//! before acting; should it still be late, the fence ([`super::fence`])
//! refuses its writes.
//!
//! The keeper reads the buckets by polling, not through KV watches: an
//! expired key produces no watch event at all, and a watch is not needed for
//! correctness (every write is a compare-and-set).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::fence::{EventLog, FenceError, PartitionWriter};
use super::Cluster;

/// How many partitions conversations hash into. Every node of a cluster
/// must agree on it, and it can never change for a cluster whose stream holds
/// events (a conversation's partition would move and its history stay
/// behind). 64 gives up to 64 nodes something to own and keeps a keeper's
/// round (one read per partition) small.
pub const PARTITIONS: u16 = 64;

/// One of the [`PARTITIONS`] partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(u16);

impl Partition {
    /// The partition numbered `n`, if `n < PARTITIONS`.
    pub fn new(n: u16) -> Option<Partition> {
        (n < PARTITIONS).then_some(Partition(n))
    }

    pub fn index(self) -> u16 {
        self.0
    }

    /// Every partition, in order.
    pub fn all() -> impl Iterator<Item = Partition> {
        (0..PARTITIONS).map(Partition)
    }

    /// Its key in the lease bucket.
    fn key(self) -> String {
        self.0.to_string()
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {}", self.0)
    }
}

/// The partition a conversation belongs to: CRC-32C (Castagnoli) of its
/// id's UTF-8 bytes, modulo [`PARTITIONS`]. Fixed by a standard, so every
/// node, build and platform agrees; never `std`'s hasher, whose output may
/// change between releases.
pub fn partition_of(conversation_id: &str) -> Partition {
    Partition((crc32c::crc32c(conversation_id.as_bytes()) % u32::from(PARTITIONS)) as u16)
}

/// What a keeper tells its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnershipChange {
    /// This node now owns the partition.
    Acquired(Partition),
    /// This node gave the partition back (rebalancing, or stopping); it
    /// no longer owns it.
    Released(Partition),
    /// This node no longer owns the partition, and did not choose to.
    Lost(Partition, LossCause),
}

/// Why a partition was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The renewal was refused: the key was rewritten by another node or
    /// expired.
    Refused,
    /// No renewal was confirmed within the TTL (NATS unreachable): by this
    /// node's clock the lease has lapsed.
    Lapsed,
    /// A write to the partition was fenced off: another node has written.
    Fenced,
}

/// A call on a keeper failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("keeper of node {0} has stopped")]
    Stopped(String),
    #[error("node {node} does not hold {partition}")]
    NotHeld { node: String, partition: Partition },
    #[error(transparent)]
    Fence(#[from] FenceError),
}

/// One held lease.
#[derive(Clone, Copy, Debug)]
struct Held {
    revision: u64,
    /// When the lease lapses by this node's clock: the last confirmed
    /// renewal's *sending* time plus [`Round::valid_for`].
    lapses_at: Instant,
}

enum Command {
    /// A write was fenced: drop the partition now.
    GiveUp(Partition),
    /// Release everything, leave the membership, and end.
    Stop(oneshot::Sender<()>),
}

/// Holds this node's fair share of the partitions. Dropping it ends its task
/// at once without releasing anything, as a crash would: the leases then
/// expire after the TTL. [`LeaseKeeper::stop`] releases them first.
pub struct LeaseKeeper {
    node_id: String,
    owned: Arc<Mutex<BTreeMap<Partition, Instant>>>,
    commands: mpsc::Sender<Command>,
    paused: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseKeeper {
    /// Start keeping leases for this node (its id from the cluster's
    /// settings). Ownership changes arrive on the returned receiver; it
    /// holds up to `4 × PARTITIONS` changes, and a keeper whose owner does
    /// not read them waits (and so stops renewing: its leases then lapse,
    /// which is safe).
    pub fn start(cluster: &Cluster) -> (LeaseKeeper, mpsc::Receiver<OwnershipChange>) {
        let (changes_tx, changes) = mpsc::channel(4 * usize::from(PARTITIONS));
        let (commands, commands_rx) = mpsc::channel(usize::from(PARTITIONS));
        let (paused, paused_rx) = watch::channel(false);
        let owned = Arc::new(Mutex::new(BTreeMap::new()));
        let node_id = cluster.settings().node_id.clone();
        let round = Round {
            node_id: node_id.clone(),
            value: Bytes::from(node_id.clone().into_bytes()),
            nodes: cluster.nodes().clone(),
            leases: cluster.leases().clone(),
            valid_for: cluster.settings().lease_ttl * 7 / 8,
            call_limit: cluster.settings().renew_every(),
            held: BTreeMap::new(),
            owned: owned.clone(),
            changes: changes_tx,
        };
        let task =
            tokio::spawn(round.run(cluster.settings().renew_every(), commands_rx, paused_rx));
        (
            LeaseKeeper {
                node_id,
                owned,
                commands,
                paused,
                task,
            },
            changes,
        )
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The partitions this keeper holds a lease on right now: those it has
    /// not lost, released or let lapse, and whose last confirmed renewal is
    /// recent enough by this node's clock (checked here, on every call, so
    /// a keeper task that has stalled does not make its owner act on stale
    /// leases).
    pub fn owned(&self) -> BTreeSet<Partition> {
        let now = Instant::now();
        self.owned
            .lock()
            .iter()
            .filter(|(_, lapses_at)| now < **lapses_at)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether this keeper holds `p`'s lease right now (as
    /// [`LeaseKeeper::owned`]). An owner asks before it acts for `p`.
    pub fn holds(&self, p: Partition) -> bool {
        self.owned
            .lock()
            .get(&p)
            .is_some_and(|lapses_at| Instant::now() < *lapses_at)
    }

    /// A writer for partition `p`, which this keeper must hold; opening it
    /// claims the partition in the events stream (see
    /// [`EventLog::writer`]), and a write it finds fenced off makes this
    /// keeper drop `p` (reported `Lost` with [`LossCause::Fenced`]).
    pub async fn writer(
        &self,
        log: &EventLog,
        p: Partition,
    ) -> Result<PartitionWriter, LeaseError> {
        if !self.holds(p) {
            return Err(LeaseError::NotHeld {
                node: self.node_id.clone(),
                partition: p,
            });
        }
        let commands = self.commands.clone();
        let on_fenced = Box::new(move |p| {
            // Bounded; should it be full, the keeper's next renewal of `p`
            // is refused anyway (the other owner rewrote the key).
            let _ = commands.try_send(Command::GiveUp(p));
        });
        Ok(log.writer(p, Some(on_fenced)).await?)
    }

    /// Stop renewing anything, as a process stopped by a debugger, a long
    /// pause or `SIGSTOP` would, until [`LeaseKeeper::resume`]. For tests of
    /// what a stalled node does when it wakes.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Go on after [`LeaseKeeper::pause`]: the next round renews at the
    /// revisions held before the pause.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Release every lease (each reported `Released`), leave the
    /// membership and end the task: the other nodes can take the
    /// partitions at once instead of after the TTL.
    pub async fn stop(self) -> Result<(), LeaseError> {
        self.resume();
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Stop(tx))
            .await
            .map_err(|_| LeaseError::Stopped(self.node_id.clone()))?;
        rx.await
            .map_err(|_| LeaseError::Stopped(self.node_id.clone()))
    }
}

/// The keeper's task state.
struct Round {
    node_id: String,
    value: Bytes,
    nodes: kv::Store,
    leases: kv::Store,
    /// How long after sending a confirmed renewal this node goes on
    /// believing it holds the lease: seven eighths of the TTL, so it lets go
    /// before the server can expire the key (which counts from when it
    /// stored the write, later than the sending), with room for clocks that
    /// run at slightly different rates.
    valid_for: Duration,
    /// How long any one call to NATS may take before the round goes on
    /// without its answer: one renewal interval, so a round cannot hang
    /// while NATS is away and leases lapse unnoticed.
    call_limit: Duration,
    held: BTreeMap<Partition, Held>,
    owned: Arc<Mutex<BTreeMap<Partition, Instant>>>,
    changes: mpsc::Sender<OwnershipChange>,
}

/// A renewal's answer, or none in time.
type Renewal = Result<Result<u64, kv::UpdateError>, tokio::time::error::Elapsed>;

/// A partition's lease as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Free,
    Held {
        owner: String,
        revision: u64,
    },
    /// The read failed: neither taken nor given back this round.
    Unknown,
}

impl Round {
    async fn run(
        mut self,
        every: Duration,
        mut commands: mpsc::Receiver<Command>,
        mut paused: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                command = commands.recv() => match command {
                    Some(Command::GiveUp(p)) => {
                        self.give_up(p).await;
                        continue;
                    }
                    Some(Command::Stop(done)) => {
                        self.release_all().await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
            while *paused.borrow_and_update() {
                if paused.changed().await.is_err() {
                    return;
                }
            }
            self.round().await;
        }
    }

    /// One renewal round: membership, renewals, then the share.
    async fn round(&mut self) {
        // Renewals first (a keeper waking from a pause learns at once
        // whether its leases were taken), then anything lapsed meanwhile.
        let ((), renewals) = tokio::join!(self.heartbeat(), self.renewals());
        self.apply_renewals(renewals).await;
        self.let_lapsed_go().await;
        let Some(live) = self.live_nodes().await else {
            return;
        };
        let share = fair_share(&self.node_id, &live);
        if self.held.len() > share {
            self.release_surplus(self.held.len() - share).await;
        } else if self.held.len() < share {
            let seen = self.read_leases().await;
            self.acquire(share - self.held.len(), &seen).await;
        }
    }

    /// Rewrite this node's membership key.
    async fn heartbeat(&self) {
        match timeout(
            self.call_limit,
            self.nodes.put(&self.node_id, self.value.clone()),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(node = %self.node_id, error = %e, "cluster: membership heartbeat failed")
            }
            Err(_) => {
                tracing::warn!(node = %self.node_id, "cluster: membership heartbeat timed out")
            }
        }
    }

    /// Renew every held lease at its revision, all at once.
    async fn renewals(&self) -> Vec<(Partition, Instant, Renewal)> {
        let held: Vec<(Partition, Held)> = self.held.iter().map(|(p, h)| (*p, *h)).collect();
        let leases = &self.leases;
        let value = &self.value;
        let limit = self.call_limit;
        stream::iter(held)
            .map(|(p, h)| async move {
                let sent = Instant::now();
                let r = timeout(limit, leases.update(p.key(), value.clone(), h.revision)).await;
                (p, sent, r)
            })
            .buffer_unordered(16)
            .collect()
            .await
    }

    async fn apply_renewals(&mut self, results: Vec<(Partition, Instant, Renewal)>) {
        for (p, sent, result) in results {
            match result {
                Ok(Ok(revision)) => {
                    self.held.insert(
                        p,
                        Held {
                            revision,
                            lapses_at: sent + self.valid_for,
                        },
                    );
                }
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    self.lose(p, LossCause::Refused).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %self.node_id, %p, error = %e, "cluster: lease renewal failed");
                }
                Err(_) => {
                    tracing::warn!(node = %self.node_id, %p, "cluster: lease renewal timed out");
                }
            }
        }
        self.publish_owned();
    }

    /// Stop owning every lease that has lapsed by this node's clock.
    async fn let_lapsed_go(&mut self) {
        let now = Instant::now();
        let lapsed: Vec<Partition> = self
            .held
            .iter()
            .filter(|(_, h)| now >= h.lapses_at)
            .map(|(p, _)| *p)
            .collect();
        for p in lapsed {
            self.lose(p, LossCause::Lapsed).await;
        }
    }

    /// The ids of the nodes whose membership key has not expired, this
    /// node's own always among them; `None` if the bucket could not be read
    /// in time.
    async fn live_nodes(&self) -> Option<Vec<String>> {
        let live = timeout(self.call_limit, self.read_live_nodes()).await;
        if live.is_err() {
            tracing::warn!(node = %self.node_id, "cluster: reading the live nodes timed out");
        }
        live.ok().flatten()
    }

    async fn read_live_nodes(&self) -> Option<Vec<String>> {
        let prefix = format!("$KV.{}.", self.nodes.name);
        let info = match self
            .nodes
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
        {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(node = %self.node_id, error = %e, "cluster: reading the live nodes failed");
                return None;
            }
        };
        let mut live: Vec<String> = info
            .filter_map(|s| async move { s.ok() })
            .filter_map(|(subject, _)| {
                let id = subject.strip_prefix(prefix.as_str()).map(str::to_owned);
                async move { id }
            })
            .collect()
            .await;
        if !live.contains(&self.node_id) {
            live.push(self.node_id.clone());
        }
        live.sort();
        live.dedup();
        Some(live)
    }

    /// Every partition's lease as it stands.
    async fn read_leases(&self) -> BTreeMap<Partition, Seen> {
        let leases = &self.leases;
        let limit = self.call_limit;
        stream::iter(Partition::all())
            .map(|p| async move {
                let seen = match timeout(limit, leases.entry(p.key())).await {
                    Ok(Ok(None)) => Seen::Free,
                    Ok(Ok(Some(e)))
                        if matches!(e.operation, Operation::Delete | Operation::Purge) =>
                    {
                        Seen::Free
                    }
                    Ok(Ok(Some(e))) => Seen::Held {
                        owner: String::from_utf8_lossy(&e.value).into_owned(),
                        revision: e.revision,
                    },
                    Ok(Err(_)) | Err(_) => Seen::Unknown,
                };
                (p, seen)
            })
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// Give back `n` partitions, the highest-numbered first: each is
    /// reported `Released` before its key is deleted (at the held revision),
    /// so the owner stops acting before anyone can take it.
    async fn release_surplus(&mut self, n: usize) {
        let surplus: Vec<Partition> = self.held.keys().rev().take(n).copied().collect();
        for p in surplus {
            self.release(p).await;
        }
    }

    async fn release(&mut self, p: Partition) {
        let Some(h) = self.held.remove(&p) else {
            return;
        };
        self.publish_owned();
        self.tell(OwnershipChange::Released(p)).await;
        if let Err(e) = self
            .leases
            .delete_expect_revision(p.key(), Some(h.revision))
            .await
        {
            // Refused: it expired or was taken already. Otherwise it
            // expires after the TTL; either way it is no longer ours.
            tracing::warn!(node = %self.node_id, %p, error = %e, "cluster: lease release failed");
        }
    }

    /// Take up to `n` free partitions (starting at a place that depends on
    /// this node's id, so nodes starting together collide less), and take
    /// back any lease that still names this node at the revision read (a
    /// lease this node let lapse by its own clock while NATS was away, or
    /// held before a restart with the same id): that renewal succeeds only if
    /// nobody wrote the key since.
    async fn acquire(&mut self, n: usize, seen: &BTreeMap<Partition, Seen>) {
        let start = crc32c::crc32c(self.node_id.as_bytes()) % u32::from(PARTITIONS);
        let order = (0..PARTITIONS)
            .map(|i| Partition(((u32::from(i) + start) % u32::from(PARTITIONS)) as u16));
        let mut taken = 0;
        for p in order {
            if taken == n {
                break;
            }
            if self.held.contains_key(&p) {
                continue;
            }
            let sent = Instant::now();
            let result = match seen.get(&p) {
                // A create that timed out may have been stored: the key then
                // names this node, and a later round takes it back.
                Some(Seen::Free) => timeout(
                    self.call_limit,
                    self.leases.create(p.key(), self.value.clone()),
                )
                .await
                .map_err(|_| Some("timed out".to_owned()))
                .and_then(|r| {
                    r.map_err(|e| {
                        (e.kind() != CreateErrorKind::AlreadyExists).then_some(e.to_string())
                    })
                }),
                Some(Seen::Held { owner, revision }) if *owner == self.node_id => timeout(
                    self.call_limit,
                    self.leases.update(p.key(), self.value.clone(), *revision),
                )
                .await
                .map_err(|_| Some("timed out".to_owned()))
                .and_then(|r| {
                    r.map_err(|e| {
                        (e.kind() != UpdateErrorKind::WrongLastRevision).then_some(e.to_string())
                    })
                }),
                _ => continue,
            };
            match result {
                Ok(revision) => {
                    self.held.insert(
                        p,
                        Held {
                            revision,
                            lapses_at: sent + self.valid_for,
                        },
                    );
                    self.publish_owned();
                    self.tell(OwnershipChange::Acquired(p)).await;
                    taken += 1;
                }
                Err(None) => {} // someone else was quicker
                Err(Some(e)) => {
                    tracing::warn!(node = %self.node_id, %p, error = %e, "cluster: lease acquisition failed");
                }
            }
        }
    }

    /// A write was fenced: stop owning `p` and free its key if it is still
    /// ours (it is not, normally: the fence means someone else wrote).
    async fn give_up(&mut self, p: Partition) {
        let Some(h) = self.held.get(&p).copied() else {
            return;
        };
        self.lose(p, LossCause::Fenced).await;
        let _ = self
            .leases
            .delete_expect_revision(p.key(), Some(h.revision))
            .await;
    }

    async fn lose(&mut self, p: Partition, cause: LossCause) {
        if self.held.remove(&p).is_some() {
            self.publish_owned();
            tracing::warn!(node = %self.node_id, %p, ?cause, "cluster: lease lost");
            self.tell(OwnershipChange::Lost(p, cause)).await;
        }
    }

    async fn release_all(&mut self) {
        let all: Vec<Partition> = self.held.keys().copied().collect();
        for p in all {
            self.release(p).await;
        }
        // A stream purge of the node's subject, not a KV delete: that would
        // leave a marker, and the node would count as live until it expired.
        let subject = format!("{}{}", self.nodes.prefix, self.node_id);
        if let Err(e) = self.nodes.stream.purge().filter(subject).await {
            tracing::warn!(node = %self.node_id, error = %e, "cluster: leaving the membership failed");
        }
    }

    fn publish_owned(&self) {
        *self.owned.lock() = self.held.iter().map(|(p, h)| (*p, h.lapses_at)).collect();
    }

    async fn tell(&self, change: OwnershipChange) {
        // The owner may have dropped its receiver; the keeper goes on.
        let _ = self.changes.send(change).await;
    }
}

/// This node's fair share among `live` (sorted ids, this node among them):
/// `PARTITIONS / n` each, and one more for the first `PARTITIONS % n` nodes
/// by id, so the shares add up to exactly `PARTITIONS` (64 over 3 nodes:
/// 22, 21, 21) when the nodes agree on who is live.
pub fn fair_share(node_id: &str, live: &[String]) -> usize {
    let n = live.len().max(1);
    let rank = live.iter().position(|id| id == node_id).unwrap_or(n - 1);
    let p = usize::from(PARTITIONS);
    p / n + usize::from(rank < p % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Fixed by CRC-32C: these must never change for a running cluster.
        assert_eq!(partition_of("").index(), 0);
        assert_eq!(
            partition_of("123456789").index(),
            (0xE306_9283u32 % 64) as u16
        );
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..6400 {
            counts[usize::from(partition_of(&format!("cv_{i:024x}")).index())] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50 && c < 150), "{counts:?}");
    }

    #[test]
    fn shares_add_up_to_every_partition() {
        for n in 1..=70usize {
            let live: Vec<String> = (0..n).map(|i| format!("n{i:03}")).collect();
            let shares: Vec<usize> = live.iter().map(|id| fair_share(id, &live)).collect();
            assert_eq!(
                shares.iter().sum::<usize>(),
                usize::from(PARTITIONS),
                "{n} nodes"
            );
            let (min, max) = (shares.iter().min(), shares.iter().max());
            assert!(
                max.zip(min).is_some_and(|(a, b)| a - b <= 1),
                "{n} nodes: {shares:?}"
            );
        }
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            three
                .iter()
                .map(|id| fair_share(id, &three))
                .collect::<Vec<_>>(),
            [22, 21, 21]
        );
    }

    #[test]
    fn partition_numbers_are_bounded() {
        assert!(Partition::new(63).is_some());
        assert!(Partition::new(64).is_none());
        assert_eq!(Partition::all().count(), 64);
    }
}

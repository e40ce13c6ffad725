//! The `core` lease: which node is the active one.
//!
//! One key, `core`, in the lease bucket (`<prefix>-leases`), its value the
//! holder's node id. The holder runs the broker; every other node is a
//! standby that follows the journal ([`super::standby`]) and waits in
//! [`CoreLease::acquire`]. The rules are the partition leases' (see
//! [`super::lease`]), for one key:
//! - **acquire**: KV `create`, which succeeds only when the key is absent,
//!   expired (the bucket's max age, the lease TTL, removed it) or deleted.
//!   A waiting node watches the key (a release shows at once) and tries
//!   again at least every renewal interval (an expiry shows in no watch).
//!   A key that still names this node is **not** taken back: a node that
//!   restarts comes back as a standby, with a journal that may hold records
//!   never replicated, and waits like the others until the key expires;
//!   another standby, whose journal holds exactly what was replicated, is as
//!   likely to win.
//! - **renew**: every `lease_ttl / 4`, KV `update` at the held revision. The
//!   holder trusts the lease for seven eighths of the TTL after sending the
//!   last renewal that was confirmed ([`CoreLease::holds`] checks the clock
//!   on every call). A refused renewal (someone wrote the key, or it
//!   expired) or a lease that lapsed by this clock is lost for good: the
//!   renewal task stops, [`CoreLease::lost`] resolves with the cause, and
//!   nothing is renewed again, even if NATS would still accept it. A renewal
//!   without an answer is tried again at the next interval, so three may
//!   fail in a row (a NATS restart) before the lease lapses. One that was
//!   applied although its answer was lost shows as a refusal of the next
//!   (the key moved on); a key that still names this node at a later
//!   revision is that renewal, and is adopted, not taken for a loss.
//! - **release**: KV delete at the held revision ([`CoreLease::release`], on
//!   a clean stop): a waiting standby sees the delete and takes over at
//!   once instead of after the TTL.
//!
//! There is no churn: the holder never gives the lease up while it can
//! renew it, whoever else is waiting. Every call to NATS is bounded by one
//! renewal interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::lease::{LeaseError, LossCause};
use super::Cluster;

/// The lease bucket's key naming the active node.
pub const CORE_KEY: &str = "core";

/// This node's hold on the `core` lease, from [`CoreLease::acquire`].
///
/// Dropping it stops renewing without releasing (as a crash would: the key
/// expires after the TTL); [`CoreLease::release`] hands over at once.
pub struct CoreLease {
    node_id: String,
    state: Arc<State>,
    leases: kv::Store,
    call_limit: Duration,
    paused: watch::Sender<bool>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: JoinHandle<()>,
}

/// What the holder and its renewal task share.
struct State {
    node_id: String,
    /// When the lease lapses by this node's clock; `None` once it is lost
    /// (it never comes back).
    lapses_at: Mutex<Option<Instant>>,
    /// The revision of the key as this node last wrote it.
    revision: AtomicU64,
    lost: watch::Sender<Option<LossCause>>,
}

impl State {
    /// The lease is gone: say so once, and never hold it again.
    fn lose(&self, cause: LossCause) {
        let mut lapses_at = self.lapses_at.lock();
        if lapses_at.take().is_some() {
            tracing::warn!(node = %self.node_id, ?cause, "cluster: core lease lost");
            self.lost.send_replace(Some(cause));
        }
    }

    /// When the lease lapses, if it is held now; a lease found lapsed is
    /// lost here and then.
    fn lapses_at(&self) -> Option<Instant> {
        let at = *self.lapses_at.lock();
        match at {
            Some(at) if Instant::now() < at => Some(at),
            Some(_) => {
                self.lose(LossCause::Lapsed);
                None
            }
            None => None,
        }
    }
}

impl Drop for CoreLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CoreLease {
    /// Wait until this node holds the `core` lease, then keep it (a renewal
    /// task on the current tokio runtime). Waits as long as it takes: NATS
    /// being unreachable only delays it (each try is bounded by one renewal
    /// interval). A key naming this node, left by an earlier run with the
    /// same id, is waited out like anyone else's (see the module doc); so is
    /// one written by a `create` of this very call whose answer was lost (it
    /// is never renewed, and expires after the TTL).
    pub async fn acquire(cluster: &Cluster) -> Result<CoreLease, LeaseError> {
        let settings = cluster.settings();
        let node_id = settings.node_id.clone();
        let value = Bytes::from(node_id.clone().into_bytes());
        let every = settings.renew_every();
        let valid_for = settings.lease_ttl * 7 / 8;
        let leases = cluster.leases().clone();
        let mut watch: Option<kv::Watch> = None;
        let mut last_holder: Option<String> = None;
        loop {
            if watch.is_none() {
                watch = match timeout(every, leases.watch(CORE_KEY)).await {
                    Ok(Ok(w)) => Some(w),
                    Ok(Err(e)) => {
                        tracing::debug!(node = %node_id, error = %e, "cluster: watching the core lease failed; polling");
                        None
                    }
                    Err(_) => None,
                };
            }
            let sent = Instant::now();
            match timeout(every, leases.create(CORE_KEY, value.clone())).await {
                Ok(Ok(revision)) => {
                    tracing::info!(node = %node_id, revision, "cluster: core lease acquired: this node is the active one");
                    return Ok(CoreLease::hold(
                        cluster,
                        node_id,
                        value,
                        revision,
                        sent + valid_for,
                    ));
                }
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                    let holder = match timeout(every, leases.entry(CORE_KEY)).await {
                        Ok(Ok(Some(e))) if e.operation == Operation::Put => {
                            Some(String::from_utf8_lossy(&e.value).into_owned())
                        }
                        _ => None,
                    };
                    if holder.is_some() && holder != last_holder {
                        let holder = holder.as_deref().unwrap_or_default();
                        if holder == node_id {
                            tracing::info!(node = %node_id, "cluster: the core lease still names this node (an earlier run, or a try whose answer was lost): waiting for it to expire");
                        } else {
                            tracing::info!(node = %node_id, active = %holder, "cluster: standing by; the core lease is held");
                        }
                    }
                    last_holder = holder;
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node_id, error = %e, "cluster: taking the core lease failed");
                }
                Err(_) => {
                    tracing::warn!(node = %node_id, "cluster: taking the core lease timed out");
                }
            }
            // A change of the key (a release) wakes the wait early.
            match watch.as_mut() {
                Some(w) => {
                    tokio::select! {
                        change = w.next() => {
                            if !matches!(change, Some(Ok(_))) {
                                watch = None;
                            }
                        }
                        () = tokio::time::sleep(every) => {}
                    }
                }
                None => tokio::time::sleep(every).await,
            }
        }
    }

    /// One try: the lease if it is free now (kept as by [`CoreLease::acquire`]),
    /// `None` if another node holds it or NATS did not answer within one
    /// renewal interval.
    pub async fn try_acquire(cluster: &Cluster) -> Option<CoreLease> {
        let settings = cluster.settings();
        let node_id = settings.node_id.clone();
        let value = Bytes::from(node_id.clone().into_bytes());
        let sent = Instant::now();
        let create = cluster.leases().create(CORE_KEY, value.clone());
        match timeout(settings.renew_every(), create).await {
            Ok(Ok(revision)) => {
                tracing::info!(node = %node_id, revision, "cluster: core lease acquired: this node is the active one");
                let lapses_at = sent + settings.lease_ttl * 7 / 8;
                Some(CoreLease::hold(
                    cluster, node_id, value, revision, lapses_at,
                ))
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %node_id, error = %e, "cluster: the core lease was not free");
                None
            }
            Err(_) => None,
        }
    }

    /// Start holding at `revision`, renewing in a task.
    fn hold(
        cluster: &Cluster,
        node_id: String,
        value: Bytes,
        revision: u64,
        lapses_at: Instant,
    ) -> CoreLease {
        let settings = cluster.settings();
        let (lost, _) = watch::channel(None);
        let state = Arc::new(State {
            node_id: node_id.clone(),
            lapses_at: Mutex::new(Some(lapses_at)),
            revision: AtomicU64::new(revision),
            lost,
        });
        let (paused, paused_rx) = watch::channel(false);
        let (stop, stop_rx) = oneshot::channel();
        let renewer = Renewer {
            state: state.clone(),
            leases: cluster.leases().clone(),
            value,
            every: settings.renew_every(),
            valid_for: settings.lease_ttl * 7 / 8,
        };
        let task = tokio::spawn(renewer.run(paused_rx, stop_rx));
        CoreLease {
            node_id,
            state,
            leases: cluster.leases().clone(),
            call_limit: settings.renew_every(),
            paused,
            stop: Some(stop),
            task,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node holds the lease right now: not lost, and its last
    /// confirmed renewal recent enough by this node's clock (checked on
    /// every call, so a stalled renewal task cannot make the holder act on
    /// a lapsed lease). Once false, false for ever.
    pub fn holds(&self) -> bool {
        self.state.lapses_at().is_some()
    }

    /// Resolves when the lease is lost, with why: a renewal refused, the
    /// lease lapsed by this node's clock (resolved on time even if the
    /// renewal task is stalled), or [`CoreLease::fenced`]. At once if it is
    /// lost already.
    pub async fn lost(&self) -> LossCause {
        let mut lost = self.state.lost.subscribe();
        loop {
            if let Some(cause) = *lost.borrow_and_update() {
                return cause;
            }
            match self.state.lapses_at() {
                Some(at) => {
                    tokio::select! {
                        _ = lost.changed() => {}
                        () = tokio::time::sleep_until(at) => {
                            // Renewed meanwhile, or lapsed: the next turn says.
                            let _ = self.state.lapses_at();
                        }
                    }
                }
                // Lost between the two reads: the cause is set by now.
                None => {
                    if lost.changed().await.is_err() {
                        return LossCause::Lapsed;
                    }
                }
            }
        }
    }

    /// A replicated write was fenced off (another node has claimed the
    /// core subject): the lease counts as lost from now on
    /// ([`LossCause::Fenced`]) and is not renewed again; the key is left to
    /// whoever wrote it.
    pub fn fenced(&self) {
        self.state.lose(LossCause::Fenced);
    }

    /// Stop renewing, as a process stopped by a debugger or `SIGSTOP` would,
    /// until [`CoreLease::resume`]. For tests.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Go on after [`CoreLease::pause`]: the next renewal is at the held
    /// revision, unless the lease lapsed meanwhile by this node's clock (then
    /// it is lost, and nothing is renewed).
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Give the lease back (a clean stop): stop renewing, then delete the
    /// key at the revision this node last wrote, so a waiting standby takes
    /// over at once. Refused when the key changed since (it expired, or
    /// another node holds it): then it is not ours to delete. A delete
    /// without an answer within one renewal interval leaves the key to
    /// expire after the TTL.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done, stopped) = oneshot::channel();
            if stop.send(done).is_ok() {
                let _ = stopped.await;
            }
        }
        *self.state.lapses_at.lock() = None;
        let revision = self.state.revision.load(Ordering::Acquire);
        let mut refused = self.delete_at(revision).await;
        if matches!(refused, Ok(Err(_))) {
            // A last renewal whose answer was lost moved the key on: still
            // this node's at a later revision, it is deleted at that one.
            let own = self.node_id.as_bytes();
            if let Some(later) = written_since(&self.leases, own, revision, self.call_limit).await {
                refused = self.delete_at(later).await;
            }
        }
        match refused {
            Ok(Ok(())) => {
                tracing::info!(node = %self.node_id, "cluster: core lease released");
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %self.node_id, error = %e, "cluster: releasing the core lease was refused");
            }
            Err(_) => {
                tracing::warn!(node = %self.node_id, "cluster: releasing the core lease timed out; it expires after the TTL");
            }
        }
    }

    /// Delete the key if it is still at `revision`.
    async fn delete_at(
        &self,
        revision: u64,
    ) -> Result<Result<(), kv::DeleteError>, tokio::time::error::Elapsed> {
        timeout(
            self.call_limit,
            self.leases.delete_expect_revision(CORE_KEY, Some(revision)),
        )
        .await
    }
}

/// The key's revision if it is later than `held` and the key still names
/// this node (`own`, its id): only this node writes its own id there, so
/// that is a renewal of its own whose answer was lost. None otherwise, or
/// without an answer within `limit`.
async fn written_since(leases: &kv::Store, own: &[u8], held: u64, limit: Duration) -> Option<u64> {
    match timeout(limit, leases.entry(CORE_KEY)).await {
        Ok(Ok(Some(e))) if e.operation == Operation::Put && e.value == own && e.revision > held => {
            Some(e.revision)
        }
        _ => None,
    }
}

/// The renewal task.
struct Renewer {
    state: Arc<State>,
    leases: kv::Store,
    value: Bytes,
    every: Duration,
    valid_for: Duration,
}

impl Renewer {
    async fn run(
        self,
        mut paused: watch::Receiver<bool>,
        mut stop: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let mut tick = tokio::time::interval_at(Instant::now() + self.every, self.every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                done = &mut stop => {
                    if let Ok(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
            }
            while *paused.borrow_and_update() {
                tokio::select! {
                    changed = paused.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    done = &mut stop => {
                        if let Ok(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                }
            }
            // The clock first: a lease that lapsed (a pause, a stall) is
            // never renewed, even if NATS would still take it.
            if self.state.lapses_at().is_none() {
                return;
            }
            if !self.renew().await {
                return;
            }
        }
    }

    /// One renewal at the held revision; false once the lease is lost.
    async fn renew(&self) -> bool {
        let revision = self.state.revision.load(Ordering::Acquire);
        let sent = Instant::now();
        match timeout(
            self.every,
            self.leases.update(CORE_KEY, self.value.clone(), revision),
        )
        .await
        {
            Ok(Ok(revision)) => {
                let mut lapses_at = self.state.lapses_at.lock();
                self.state.revision.store(revision, Ordering::Release);
                match lapses_at.as_mut() {
                    // Lost meanwhile (lapsed, fenced): it stays lost.
                    None => return false,
                    Some(at) => *at = sent + self.valid_for,
                }
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // A renewal whose answer was lost (timed out here, applied
                // there) moved the key on: still this node's, at a later
                // revision. Adopted, without extending the lease (when it
                // was applied is not known); the next renewal extends it.
                match written_since(&self.leases, &self.value, revision, self.every).await {
                    Some(newer) => {
                        tracing::info!(node = %self.state.node_id, revision = newer, "cluster: a core lease renewal whose answer was lost had been applied");
                        self.state.revision.store(newer, Ordering::Release);
                    }
                    None => {
                        self.state.lose(LossCause::Refused);
                        return false;
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %self.state.node_id, error = %e, "cluster: core lease renewal failed");
            }
            Err(_) => {
                tracing::warn!(node = %self.state.node_id, "cluster: core lease renewal timed out");
            }
        }
        self.state.lapses_at().is_some()
    }
}

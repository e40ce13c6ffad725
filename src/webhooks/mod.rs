//! Event webhooks: every configured `[[webhooks]]` endpoint hears the task,
//! agent and conversation events its filter names, as signed JSON POSTs
//! (`docs/webhooks.md`).
//!
//! It owns the endpoints, their queues and their figures. Actors hand it
//! events with [`Webhooks::emit`], which never waits: with no endpoint (or
//! none that wants the type) it is one bit test and builds nothing; else it
//! encodes the payload once and pushes it onto each interested endpoint's
//! queue. Delivery runs on an arbiter of its own (`delivery.rs`), so no
//! actor's thread ever waits on a receiver.
//!
//! Each endpoint's queue is split into lanes (`webhook_in_flight`), one
//! delivery in flight per lane; an event goes to the lane of its key (the
//! conversation, or the agent), so one conversation's events are delivered
//! one at a time, in the order they happened, while other conversations'
//! events go past a slow one. The queue is bounded (`webhook_queue` events
//! per endpoint, in flight included): an event that finds it full is dropped
//! and counted (`dropped`); what is queued is kept, so the receiver's gap is
//! at the newest end, never in the middle of what it already has.
//!
//! With a data dir, the queues survive a restart: an event taken onto an
//! endpoint's queue is journaled (`WebhookQueued`, its body as sent) and
//! marked done when delivered or given up (`WebhookDone`); a start replays
//! the ones not done ([`Replay`]) onto the queues before any actor runs,
//! with their ids, bodies and order, so delivery is at least once across a
//! restart (`docs/webhooks.md`).
//!
//! Not an actor: the state is atomics and one short lock per endpoint (its
//! last error), never held across an `.await`.

mod delivery;
mod kinds;
pub mod payload;

pub use delivery::sign;
pub use kinds::{EventFilter, EventKind};

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use actix::ArbiterHandle;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Config, WebhookEndpoint};

/// The endpoints and what they want; [`Webhooks::none`] when none is
/// configured.
#[derive(Default)]
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    /// Every type at least one endpoint wants.
    wanted: EventFilter,
}

/// What the queues journal ([`Webhooks::journal_to`]); a replay hands the
/// same back to a [`Replay`].
#[derive(Clone, Copy, Debug)]
pub enum JournalEntry<'a> {
    /// An event taken onto the queue of the endpoint at `url`, in `lane`
    /// (its key's hash), with its body as sent and when it happened.
    Queued {
        url: &'a str,
        id: &'a str,
        lane: u64,
        body: &'a [u8],
        at: SystemTime,
    },
    /// Delivered to that endpoint, or given up.
    Done { url: &'a str, id: &'a str },
}

type Sink = Arc<dyn Fn(JournalEntry<'_>) + Send + Sync>;

/// One event on its way to one endpoint.
struct Delivery {
    id: Arc<str>,
    body: Bytes,
    /// When it happened: retries stop `webhook_retry_for` after it.
    at: Instant,
}

/// One `[[webhooks]]` entry: where, with which key, and how it fares.
pub struct Endpoint {
    url: String,
    secret: Vec<u8>,
    filter: EventFilter,
    lanes: Vec<mpsc::UnboundedSender<Delivery>>,
    capacity: usize,
    /// Queued or in flight.
    pending: AtomicUsize,
    delivered: AtomicU64,
    /// Given up after `webhook_retry_for`.
    failed: AtomicU64,
    /// Where queued and finished deliveries are recorded (with a data dir).
    journal: OnceLock<Sink>,
    /// Found the queue full.
    dropped: AtomicU64,
    /// Attempts that failed (each is retried or given up).
    failed_attempts: AtomicU64,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    /// The first failure since the last success.
    failing_since: Option<SystemTime>,
}

/// An endpoint's figures, as `/v1/stats` shows them.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStats {
    pub url: String,
    pub pending: usize,
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    pub failed_attempts: u64,
    pub last_error: Option<String>,
    #[serde(with = "crate::protocol::rfc3339::option")]
    pub last_error_at: Option<SystemTime>,
    #[serde(with = "crate::protocol::rfc3339::option")]
    pub failing_since: Option<SystemTime>,
}

/// The JSON each endpoint receives.
#[derive(Serialize)]
struct Envelope<'a, D> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(with = "crate::protocol::rfc3339")]
    created_at: SystemTime,
    data: D,
}

impl Webhooks {
    /// No endpoint: every [`Webhooks::emit`] is a no-op.
    pub fn none() -> Self {
        Webhooks::default()
    }

    /// The configured endpoints, their deliveries running on `arbiter`.
    /// `None` arbiter, or no `[[webhooks]]`: [`Webhooks::none`].
    pub fn start(config: &Config, arbiter: Option<&ArbiterHandle>) -> std::io::Result<Self> {
        let Some(arbiter) = arbiter.filter(|_| !config.webhooks.is_empty()) else {
            return Ok(Webhooks::none());
        };
        let client = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .connect_timeout(config.webhook_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchboard-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let policy = delivery::Policy {
            timeout: config.webhook_timeout,
            backoff: config.webhook_backoff,
            retry_for: config.webhook_retry_for,
        };
        let mut webhooks = Webhooks::none();
        for entry in &config.webhooks {
            let (endpoint, lanes) = Endpoint::new(entry, config)?;
            for lane in lanes {
                arbiter.spawn(delivery::run_lane(
                    endpoint.clone(),
                    lane,
                    client.clone(),
                    policy,
                ));
            }
            webhooks.wanted = webhooks.wanted.union(endpoint.filter);
            webhooks.endpoints.push(endpoint);
        }
        Ok(webhooks)
    }

    /// Does any endpoint want events of this type? (Emitters with a costly
    /// payload may ask first; [`Webhooks::emit`] asks too.)
    #[inline]
    pub fn wants(&self, kind: EventKind) -> bool {
        self.wanted.contains(kind)
    }

    /// Queue an event for every endpoint that wants it. `key` orders it: the
    /// events of one key (a conversation id, an agent id) are delivered one
    /// at a time, in emission order. `data` is built only if an endpoint
    /// wants the type. Never waits.
    #[inline]
    pub fn emit<D: Serialize>(&self, kind: EventKind, key: &str, data: impl FnOnce() -> D) {
        if self.wants(kind) {
            self.push(kind, key, &data());
        }
    }

    fn push<D: Serialize>(&self, kind: EventKind, key: &str, data: &D) {
        let id: Arc<str> = crate::ids::IdGen.webhook_event().into();
        let created_at = crate::protocol::now();
        let envelope = Envelope {
            id: &id,
            kind: kind.as_str(),
            created_at,
            data,
        };
        let body = match serde_json::to_vec(&envelope) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                // Our own types: does not happen; say so rather than panic.
                tracing::error!(kind = kind.as_str(), error = %e, "webhook event not encodable");
                return;
            }
        };
        let lane_hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let at = Instant::now();
        for endpoint in self.endpoints.iter().filter(|e| e.filter.contains(kind)) {
            if !endpoint.reserve() {
                continue;
            }
            if let Some(journal) = endpoint.journal.get() {
                journal(JournalEntry::Queued {
                    url: &endpoint.url,
                    id: &id,
                    lane: lane_hash,
                    body: &body,
                    at: created_at,
                });
            }
            endpoint.send(
                lane_hash,
                Delivery {
                    id: id.clone(),
                    body: body.clone(),
                    at,
                },
            );
        }
    }

    /// Hand every endpoint's queued and finished deliveries to `sink` (the
    /// journal, with a data dir) from now on. It is called on the emitting
    /// actor's thread and on the delivery arbiter's, and must not block.
    pub fn journal_to(&self, sink: impl Fn(JournalEntry<'_>) + Send + Sync + 'static) {
        let sink: Sink = Arc::new(sink);
        for endpoint in &self.endpoints {
            let _ = endpoint.journal.set(sink.clone());
        }
    }

    /// Queue again the deliveries a replay found not done, in the order they
    /// were first queued, before any new event: each to the endpoint with
    /// its URL (one no longer configured is skipped and counted in the log),
    /// its deadline (`webhook_retry_for`) still counted from when it
    /// happened. Not journaled again: their records are there.
    pub fn restore(&self, replay: Replay) {
        let mut restored = 0usize;
        let mut unknown = 0usize;
        let now = SystemTime::now();
        for pending in replay.pending.into_values() {
            let Some(endpoint) = self.endpoints.iter().find(|e| e.url == pending.url) else {
                unknown += 1;
                continue;
            };
            if !endpoint.reserve() {
                continue;
            }
            let age = now.duration_since(pending.at).unwrap_or_default();
            let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            endpoint.send(
                pending.lane,
                Delivery {
                    id: pending.id.into(),
                    body: Bytes::from(pending.body),
                    at,
                },
            );
            restored += 1;
        }
        if restored + unknown > 0 {
            tracing::info!(
                restored,
                unknown_endpoint = unknown,
                "webhook events not delivered before the restart queued again"
            );
        }
    }

    /// Every endpoint's figures, in configuration order.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.endpoints.iter().map(|e| e.stats()).collect()
    }
}

impl Endpoint {
    fn new(
        entry: &WebhookEndpoint,
        config: &Config,
    ) -> std::io::Result<(Arc<Endpoint>, Vec<mpsc::UnboundedReceiver<Delivery>>)> {
        let filter = EventFilter::parse(&entry.events).map_err(std::io::Error::other)?;
        let (lanes, receivers): (Vec<_>, Vec<_>) = (0..config.webhook_in_flight.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        let endpoint = Endpoint {
            url: entry.url.clone(),
            secret: entry.secret.as_bytes().to_vec(),
            filter,
            lanes,
            capacity: config.webhook_queue,
            pending: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            journal: OnceLock::new(),
            dropped: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
        };
        Ok((Arc::new(endpoint), receivers))
    }

    /// A place in the queue, if it has room; else the event is dropped and
    /// counted. The lanes' channels are unbounded: `pending` is the bound,
    /// taken before the push ([`Endpoint::send`]), so the channel never
    /// holds more than `capacity`.
    fn reserve(&self) -> bool {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // The first drop, then one line per thousand.
            if dropped % 1000 == 1 {
                tracing::warn!(url = %self.url, dropped, "webhook queue full: event dropped");
            }
            return false;
        }
        true
    }

    /// Onto the key's lane, in the place [`Endpoint::reserve`] took.
    fn send(&self, lane_hash: u64, delivery: Delivery) {
        let lane = &self.lanes[(lane_hash % self.lanes.len() as u64) as usize];
        if lane.send(delivery).is_err() {
            // The delivery arbiter is gone (shutting down).
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The delivery is over (delivered or given up): not to be sent again
    /// after a restart.
    fn finished(&self, id: &str) {
        if let Some(journal) = self.journal.get() {
            journal(JournalEntry::Done { url: &self.url, id });
        }
    }

    fn succeeded(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let mut health = self.health.lock();
        health.failing_since = None;
    }

    fn attempt_failed(&self, error: String) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let mut health = self.health.lock();
        health.failing_since.get_or_insert(now);
        health.last_error = Some(error);
        health.last_error_at = Some(now);
    }

    fn gave_up(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> EndpointStats {
        let health = self.health.lock();
        EndpointStats {
            url: self.url.clone(),
            pending: self.pending.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            last_error: health.last_error.clone(),
            last_error_at: health.last_error_at,
            failing_since: health.failing_since,
        }
    }
}

/// The deliveries a replay of the journal found queued and not done, in
/// the order they were queued ([`Webhooks::restore`]).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Replay {
    /// By the order they were queued in; only those not done.
    pending: std::collections::BTreeMap<u64, Pending>,
    queued: u64,
    /// (url, event id) → its key in `pending`.
    index: std::collections::HashMap<(String, String), u64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pending {
    url: String,
    id: String,
    lane: u64,
    body: Vec<u8>,
    at: SystemTime,
}

impl Replay {
    /// A `WebhookQueued` record.
    pub fn queued(&mut self, url: String, id: String, lane: u64, body: Vec<u8>, at: SystemTime) {
        self.queued += 1;
        self.index.insert((url.clone(), id.clone()), self.queued);
        self.pending.insert(
            self.queued,
            Pending {
                url,
                id,
                lane,
                body,
                at,
            },
        );
    }

    /// A `WebhookDone` record.
    pub fn done(&mut self, url: String, id: String) {
        if let Some(n) = self.index.remove(&(url, id)) {
            self.pending.remove(&n);
        }
    }

    /// The endpoint and event id of each delivery not done, in the order
    /// they were queued.
    pub fn pending_ids(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pending
            .values()
            .map(|p| (p.url.as_str(), p.id.as_str()))
    }

    /// Deliveries not done.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// How long before a retry: `backoff` doubled per failed attempt, capped at
/// five minutes, times a random factor in [0.5, 1.5) so that many events
/// (and many brokers) do not retry in step.
pub(crate) fn retry_delay(backoff: Duration, attempt: u32) -> Duration {
    const CAP: Duration = Duration::from_secs(300);
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    let jitter: f64 = 0.5 + rand::random::<f64>();
    backoff.saturating_mul(factor).min(CAP).mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_and_a_cap() {
        let base = Duration::from_millis(100);
        for _ in 0..50 {
            let first = retry_delay(base, 1);
            assert!(first >= base / 2 && first < base * 3 / 2, "{first:?}");
            let fourth = retry_delay(base, 4);
            assert!(fourth >= base * 4 && fourth < base * 12, "{fourth:?}");
            let late = retry_delay(base, 40);
            assert!(late <= Duration::from_secs(450), "{late:?}");
        }
    }

    #[test]
    fn no_endpoint_wants_nothing_and_builds_nothing() {
        let hooks = Webhooks::none();
        for kind in EventKind::ALL {
            assert!(!hooks.wants(*kind));
            hooks.emit(*kind, "cv_1", || -> u8 {
                panic!("built a payload nobody wants")
            });
        }
        assert!(hooks.stats().is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts_the_newest() {
        let config = Config {
            webhook_queue: 2,
            webhook_in_flight: 1,
            ..Config::for_tests()
        };
        let entry = WebhookEndpoint {
            url: "http://127.0.0.1:9/hook".into(),
            secret: "a-webhook-secret-of-32-characters".into(),
            events: vec!["task.*".into()],
        };
        let (endpoint, mut lanes) = Endpoint::new(&entry, &config).unwrap();
        let hooks = Webhooks {
            wanted: endpoint.filter,
            endpoints: vec![endpoint.clone()],
        };
        for n in 0..5 {
            hooks.emit(EventKind::TaskCreated, "cv_1", || n);
        }
        hooks.emit(EventKind::MessageCreated, "cv_1", || 9);
        let stats = endpoint.stats();
        assert_eq!((stats.pending, stats.dropped), (2, 3));
        // The first two are the ones kept, in order, each with its own id.
        let a = lanes[0].try_recv().unwrap();
        let b = lanes[0].try_recv().unwrap();
        assert!(lanes[0].try_recv().is_err());
        let a: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!((a["data"].as_u64(), b["data"].as_u64()), (Some(0), Some(1)));
        assert_eq!(a["type"], "task.created");
        assert_ne!(a["id"], b["id"]);
        assert!(a["created_at"].is_string());
    }
}

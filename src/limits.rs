//! Per-client limits against abuse: who the client is (its address, through
//! trusted proxies), how fast it may create webchat sessions and upload, how
//! many sessions and connections it may hold, and the per-socket and
//! per-conversation message rates. Every limit answers `429 rate_limited`
//! with `Retry-After` over HTTP, or a `rate_limited` error frame on a socket;
//! what each one is and its default are in `docs/security.md`.
//!
//! Rates are `governor` limiters (GCRA: a burst of `n`, then `n` per period).
//! The keyed ones are keyed by client address and shared by every worker;
//! [`Limits::sweep`] drops the keys that have been idle long enough to be
//! indistinguishable from fresh ones, so an attacker's spread of addresses
//! costs memory only while it is sending. Counts of things held (open
//! sessions and connections per address) are counters that go back to zero
//! and are removed then, so they are bounded by what is open.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;

use crate::config::Config;
use crate::error::ApiError;

/// Parse `trusted_proxies`: each an IP address or a CIDR range.
pub fn parse_proxies(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an IP address or a CIDR range"))
        })
        .collect()
}

/// `n` per `period` with a burst of `n`; None when `n` is 0 (no limit).
fn quota(n: u32, period: Duration) -> Option<Quota> {
    let n = NonZeroU32::new(n)?;
    Quota::with_period(period / n.get()).map(|q| q.allow_burst(n))
}

/// The `429` of a rate, with how long until the next one would pass.
fn too_fast(what: &str, wait: Duration) -> ApiError {
    ApiError::RateLimitedFor {
        message: format!("{what}; try again in {} ms", wait.as_millis().max(1)),
        retry_after: wait,
    }
}

/// A rate per client address.
struct PerIp {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// What the 429 says, e.g. "at most 60 webchat sessions per minute from one address".
    what: String,
}

impl PerIp {
    fn new(n: u32, period: Duration, what: String) -> Option<PerIp> {
        quota(n, period).map(|q| PerIp {
            limiter: governor::RateLimiter::keyed(q),
            what,
        })
    }

    fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.limiter.check_key(&ip).map_err(|not_until| {
            too_fast(
                &self.what,
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }
}

/// A rate for one thing (a socket): `governor`'s direct limiter, a single
/// atomic and the quota, kept small since every socket has one.
pub struct Rate {
    limiter: DefaultDirectRateLimiter,
}

impl Rate {
    /// `per_second` with a burst of as many (at least 1).
    pub fn per_second(per_second: u32) -> Rate {
        let q = quota(per_second.max(1), Duration::from_secs(1))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        Rate {
            limiter: governor::RateLimiter::direct(q),
        }
    }

    /// One more, or the `rate_limited` error to answer it with; `what` says
    /// which limit, e.g. "at most 10 commands per second on one socket".
    pub fn check(&self, what: impl FnOnce() -> String) -> Result<(), ApiError> {
        self.limiter.check().map_err(|not_until| {
            too_fast(
                &what(),
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }
}

/// A rate per key (a webchat session's conversation), for an actor that
/// owns many: only keys used lately take memory ([`KeyedRate::sweep`]).
pub struct KeyedRate<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedRate<K> {
    pub fn per_second(per_second: u32) -> Self {
        let q = quota(per_second.max(1), Duration::from_secs(1))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN));
        KeyedRate {
            limiter: governor::RateLimiter::keyed(q),
        }
    }

    pub fn check(&self, key: &K, what: impl FnOnce() -> String) -> Result<(), ApiError> {
        self.limiter.check_key(key).map_err(|not_until| {
            too_fast(
                &what(),
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }

    /// Forget keys as good as fresh (idle for a second or more).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Counts per client address of things held open, each entry removed when it
/// gets back to zero.
#[derive(Default)]
struct Held(DashMap<IpAddr, usize>);

impl Held {
    /// One more for `ip` unless it holds `max` already (0: no limit).
    fn take(&self, ip: IpAddr, max: usize) -> bool {
        let mut n = self.0.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// One more for `ip`, whatever it holds.
    fn force(&self, ip: IpAddr) {
        *self.0.entry(ip).or_insert(0) += 1;
    }

    fn give_back(&self, ip: IpAddr) {
        self.0.remove_if_mut(&ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    fn get(&self, ip: &IpAddr) -> usize {
        self.0.get(ip).map_or(0, |n| *n)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Every per-address limit of the broker, shared by all workers.
pub struct Limits {
    trusted: Vec<IpNet>,
    sessions: Option<PerIp>,
    open_sessions: Held,
    max_open_sessions: usize,
    uploads: Option<PerIp>,
    pub connections: Arc<Connections>,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            trusted: parse_proxies(&config.trusted_proxies).unwrap_or_default(),
            sessions: PerIp::new(
                config.sessions_per_ip_per_minute,
                Duration::from_secs(60),
                format!(
                    "at most {} webchat sessions per minute from one address",
                    config.sessions_per_ip_per_minute
                ),
            ),
            open_sessions: Held::default(),
            max_open_sessions: config.open_sessions_per_ip,
            uploads: PerIp::new(
                config.uploads_per_ip_per_minute,
                Duration::from_secs(60),
                format!(
                    "at most {} uploads per minute from one address",
                    config.uploads_per_ip_per_minute
                ),
            ),
            connections: Arc::new(Connections::new(
                config,
                parse_proxies(&config.trusted_proxies).unwrap_or_default(),
            )),
        }
    }

    /// The client's address: the peer's, or when the peer is a trusted proxy,
    /// the last address of `X-Forwarded-For` that is not a trusted proxy
    /// (each proxy appends the address it got the request from, so the
    /// addresses left of the last untrusted one could be made up).
    pub fn client_ip(
        &self,
        peer: Option<SocketAddr>,
        forwarded_for: Option<&str>,
    ) -> Option<IpAddr> {
        let peer = peer?.ip();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let Some(list) = forwarded_for else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in list.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // A hop we cannot read: the last good one is all we know.
                Err(_) => break,
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// `POST /v1/webchat/sessions` from `ip`: within the rate and the number
    /// of open sessions, the session is counted (give it back with
    /// [`Limits::session_closed`]).
    pub fn open_session(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = ip else {
            return Ok(());
        };
        // The count first: a refusal for it spends nothing of the rate.
        if !self.open_sessions.take(ip, self.max_open_sessions) {
            return Err(ApiError::RateLimitedFor {
                message: format!(
                    "at most {} open webchat sessions from one address; \
                     sessions end when unused for a while",
                    self.max_open_sessions
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        if let Some(Err(e)) = self.sessions.as_ref().map(|rate| rate.check(ip)) {
            self.open_sessions.give_back(ip);
            return Err(e);
        }
        Ok(())
    }

    /// A webchat session counted by [`Limits::open_session`] is gone.
    /// A session rebuilt from the journal counts as open again (whatever
    /// the limit: it was admitted before the restart).
    pub fn session_restored(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.open_sessions.force(ip);
        }
    }

    pub fn session_closed(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.open_sessions.give_back(ip);
        }
    }

    /// A customer's upload from `ip`, within the per-address rate.
    pub fn upload(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.uploads, ip) {
            (Some(rate), Some(ip)) => rate.check(ip),
            _ => Ok(()),
        }
    }

    /// Open webchat sessions counted for `ip` (tests and metrics).
    pub fn open_sessions_of(&self, ip: &IpAddr) -> usize {
        self.open_sessions.get(ip)
    }

    /// Forget rate state that is as good as fresh; run now and then.
    pub fn sweep(&self) {
        for rate in [&self.sessions, &self.uploads].into_iter().flatten() {
            rate.limiter.retain_recent();
            rate.limiter.shrink_to_fit();
        }
    }

    /// Keys held by the per-address state (bounded-memory checks).
    pub fn tracked_keys(&self) -> usize {
        [&self.sessions, &self.uploads]
            .into_iter()
            .flatten()
            .map(|r| r.limiter.len())
            .sum::<usize>()
            + self.open_sessions.len()
            + self.connections.per_ip.len()
    }
}

/// Open connections, in all and per client address: HTTP connections from
/// their accept, WebSockets (which leave actix-server's own count at the
/// upgrade) until they close.
pub struct Connections {
    open: AtomicUsize,
    /// Of those, WebSockets (counted by [`Connections::adopt`]): a
    /// graceful shutdown waits for them to have sent their close frames.
    sockets: AtomicUsize,
    max: usize,
    per_ip: Held,
    max_per_ip: usize,
    trusted: Vec<IpNet>,
    /// When the last "max_connections reached" warning was logged (ms since
    /// `epoch`), so a flood logs one line per interval, not one per refusal.
    last_warning: AtomicU64,
    refused_since_warning: AtomicU64,
    epoch: Instant,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` open already: 503.
    Full,
    /// Its address holds `max_connections_per_ip`: 429.
    PerIp,
}

/// How often a flood of refused connections logs its warning.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Connections {
    fn new(config: &Config, trusted: Vec<IpNet>) -> Connections {
        Connections {
            open: AtomicUsize::new(0),
            sockets: AtomicUsize::new(0),
            max: config.max_connections,
            per_ip: Held::default(),
            max_per_ip: config.max_connections_per_ip,
            trusted,
            last_warning: AtomicU64::new(0),
            refused_since_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A connection from `peer` was accepted: count it, or say why not.
    /// Trusted proxies carry many clients: only the total applies to them.
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<ConnectionSlot, Refused> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.warn_full();
            return Err(Refused::Full);
        }
        let ip = peer.filter(|ip| !self.trusted.iter().any(|n| n.contains(ip)));
        if let Some(ip) = ip {
            if !self.per_ip.take(ip, self.max_per_ip) {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp);
            }
        }
        Ok(ConnectionSlot {
            connections: Arc::clone(self),
            ip,
            socket: false,
        })
    }

    /// A second count for a connection already admitted, taken before the
    /// first is given back (a WebSocket leaving the HTTP dispatcher), so the
    /// connection is never out of the count. Never refused.
    pub fn adopt(self: &Arc<Self>, peer: Option<IpAddr>) -> ConnectionSlot {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.sockets.fetch_add(1, Ordering::AcqRel);
        let ip = peer.filter(|ip| !self.trusted.iter().any(|n| n.contains(ip)));
        if let Some(ip) = ip {
            self.per_ip.force(ip);
        }
        ConnectionSlot {
            connections: Arc::clone(self),
            ip,
            socket: true,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// WebSockets open now (until their connection is closed, after their
    /// last frame was written).
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    fn warn_full(&self) {
        let refused = self.refused_since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_warning.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warning
                .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.refused_since_warning.store(0, Ordering::Relaxed);
            tracing::warn!(
                max_connections = self.max,
                refused,
                "max_connections reached: new connections are refused with 503 \
                 (raise max_connections, and the open-files limit with it, or \
                 limit connections at the proxy)"
            );
        }
    }
}

/// One open connection in the count; given back on drop.
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
    /// A WebSocket's (from [`Connections::adopt`]).
    socket: bool,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::AcqRel);
        if self.socket {
            self.connections.sockets.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(ip) = self.ip {
            self.connections.per_ip.give_back(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Config)) -> Limits {
        let mut c = Config::default();
        f(&mut c);
        Limits::new(&c)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn client_ip_believes_only_trusted_proxies() {
        let l = limits(|c| c.trusted_proxies = vec!["10.0.0.0/8".into(), "127.0.0.1".into()]);
        let peer = |s: &str| Some(SocketAddr::new(ip(s), 1000));
        // Not a proxy: its own address, whatever it claims.
        assert_eq!(
            l.client_ip(peer("203.0.113.9"), Some("1.2.3.4")),
            Some(ip("203.0.113.9"))
        );
        // Through two trusted proxies: the first untrusted hop from the right.
        assert_eq!(
            l.client_ip(peer("127.0.0.1"), Some("6.6.6.6, 198.51.100.7, 10.1.2.3")),
            Some(ip("198.51.100.7"))
        );
        // A proxy that forwards nothing: the proxy.
        assert_eq!(l.client_ip(peer("10.0.0.1"), None), Some(ip("10.0.0.1")));
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            l.client_ip(peer("10.0.0.1"), Some("1.1.1.1, junk, 10.0.0.2")),
            Some(ip("10.0.0.2"))
        );
        assert!(parse_proxies(&["nonsense".into()]).is_err());
    }

    #[test]
    fn sessions_are_limited_by_rate_and_by_how_many_are_open() {
        let l = limits(|c| {
            c.sessions_per_ip_per_minute = 3;
            c.open_sessions_per_ip = 2;
        });
        let a = Some(ip("192.0.2.1"));
        assert!(l.open_session(a).is_ok());
        assert!(l.open_session(a).is_ok());
        let e = l.open_session(a).unwrap_err();
        assert_eq!(e.code(), "rate_limited");
        assert!(e.to_string().contains("open webchat sessions"), "{e}");
        l.session_closed(a);
        assert!(
            l.open_session(a).is_ok(),
            "a closed session frees its place"
        );
        l.session_closed(a);
        // A fourth of a rate of three per minute (the refusal above spent none).
        let e = l.open_session(a).unwrap_err();
        assert!(e.to_string().contains("per minute"), "{e}");
        assert!(
            matches!(e, ApiError::RateLimitedFor { retry_after, .. } if retry_after > Duration::ZERO)
        );
        // Another address is not affected.
        assert!(l.open_session(Some(ip("192.0.2.2"))).is_ok());
        assert_eq!(
            l.open_sessions_of(&ip("192.0.2.1")),
            1,
            "the refused one is not counted"
        );
        // Counts go back to nothing: no entry is kept for an address with none.
        l.session_closed(a);
        l.session_closed(Some(ip("192.0.2.2")));
        assert_eq!(l.open_sessions_of(&ip("192.0.2.1")), 0);
        assert_eq!(l.open_sessions.len(), 0);
    }

    #[test]
    fn zero_switches_a_rate_off() {
        let l = limits(|c| {
            c.sessions_per_ip_per_minute = 0;
            c.open_sessions_per_ip = 0;
            c.uploads_per_ip_per_minute = 0;
        });
        for _ in 0..1000 {
            l.open_session(Some(ip("192.0.2.1"))).unwrap();
            l.upload(Some(ip("192.0.2.1"))).unwrap();
        }
    }

    #[test]
    fn a_socket_rate_allows_its_burst_then_says_when() {
        let r = Rate::per_second(3);
        let what = || "at most 3 commands per second".to_owned();
        for _ in 0..3 {
            r.check(what).unwrap();
        }
        let e = r.check(what).unwrap_err();
        assert_eq!(e.code(), "rate_limited");
        assert!(
            e.to_string()
                .starts_with("at most 3 commands per second; try again in"),
            "{e}"
        );
        let k = KeyedRate::<u32>::per_second(1);
        k.check(&1, what).unwrap();
        assert!(k.check(&1, what).is_err());
        k.check(&2, what).unwrap();
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn connections_count_in_all_and_per_address() {
        let l = limits(|c| {
            c.max_connections = 3;
            c.max_connections_per_ip = 2;
            c.trusted_proxies = vec!["10.0.0.1".into()];
        });
        let c = &l.connections;
        let a = Some(ip("192.0.2.1"));
        let s1 = c.admit(a).unwrap();
        let _s2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).err(), Some(Refused::PerIp));
        // A WebSocket carried over keeps its place while the HTTP slot goes.
        let ws = c.adopt(a);
        drop(s1);
        assert_eq!(c.open(), 2);
        assert_eq!(c.sockets(), 1, "one of them a WebSocket");
        // A trusted proxy is only held to the total.
        let _p = c.admit(Some(ip("10.0.0.1"))).unwrap();
        assert_eq!(c.admit(Some(ip("192.0.2.9"))).err(), Some(Refused::Full));
        drop(ws);
        assert_eq!(c.open(), 2);
        assert_eq!(c.sockets(), 0);
    }
}

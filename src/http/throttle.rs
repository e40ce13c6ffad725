//! Failed authentications, counted per client address, so that guessing
//! tokens stops after a few tries a minute instead of running at whatever
//! rate the network allows (236,216 guesses in 5 s before this existed).
//!
//! Only a *presented token that matches nothing* counts: a missing header is
//! not a guess, and a valid token of the wrong kind or an expired one names a
//! real credential. Failures go through a keyed GCRA limiter (`governor`):
//! `auth_failures_per_minute` of them in a burst, then one more every
//! `60 s / n`. A failure over that limit blocks the address until the limiter
//! would allow the next one; while blocked, **every** request from it that
//! carries a token answers `429 rate_limited` with `Retry-After`, the right
//! token included. Were the right token let through, a blocked guesser would
//! still learn which of its guesses is right from the different answer, and
//! the throttle would only slow the failures down, not the search.
//!
//! Memory stays bounded: the limiter keeps an entry only per address that
//! failed recently (entries indistinguishable from a fresh one are dropped
//! every minute, or sooner once there are many of them), the block list only
//! addresses blocked now. IPv6 addresses count by their /64, what one
//! customer's network usually gets, so a single host cannot step around the
//! limit by changing the low bits of its address.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

/// How often recovered entries are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Past this many addresses with recent failures, sweep at most once a second
/// instead of once a minute.
const MANY_KEYS: usize = 100_000;

/// An address as failures are counted: IPv4 as is (IPv4-mapped IPv6 too),
/// IPv6 by its /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What a failure did to its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; the address may still try.
    Counted,
    /// Over the limit: the address is blocked for this long.
    Blocked(Duration),
}

pub struct AuthThrottle {
    failures: DefaultKeyedRateLimiter<ClientKey>,
    /// Addresses over the limit, until when.
    blocked: DashMap<ClientKey, Instant>,
    clock: DefaultClock,
    last_sweep: Mutex<Instant>,
}

impl AuthThrottle {
    /// `per_minute` failures per address (at least 1; the configuration
    /// checks it).
    pub fn new(per_minute: u32) -> AuthThrottle {
        let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        AuthThrottle {
            failures: RateLimiter::dashmap(Quota::per_minute(n)),
            blocked: DashMap::new(),
            clock: DefaultClock::default(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// `Err(wait)` while `key` is blocked.
    pub fn check(&self, key: ClientKey) -> Result<(), Duration> {
        let Some(until) = self.blocked.get(&key).map(|e| *e.value()) else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            return Err(until - now);
        }
        self.blocked.remove_if(&key, |_, until| *until <= now);
        Ok(())
    }

    /// A token from `key` matched nothing.
    pub fn failed(&self, key: ClientKey) -> Failure {
        self.sweep();
        match self.failures.check_key(&key) {
            Ok(()) => Failure::Counted,
            Err(not_until) => {
                // At least a second: `Retry-After` counts in whole seconds.
                let wait = not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_secs(1));
                self.blocked.insert(key, Instant::now() + wait);
                Failure::Blocked(wait)
            }
        }
    }

    /// Addresses remembered (with recent failures, or blocked): what memory
    /// this costs.
    pub fn tracked(&self) -> usize {
        self.failures.len() + self.blocked.len()
    }

    /// Drop what no longer matters, once a minute (once a second when many
    /// addresses failed recently). Cheap to call on every failure.
    fn sweep(&self) {
        let now = Instant::now();
        let due = if self.failures.len() > MANY_KEYS {
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        };
        {
            let mut last = self.last_sweep.lock();
            if now.duration_since(*last) < due {
                return;
            }
            *last = now;
        }
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        self.blocked.retain(|_, until| *until > now);
        self.blocked.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(a), ClientKey::of(b));
        assert_ne!(ClientKey::of(a), ClientKey::of(c));
        assert_eq!(ClientKey::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            ClientKey::of(mapped),
            ClientKey::of("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn blocks_after_the_limit_and_only_that_address() {
        let t = AuthThrottle::new(3);
        let bad = ClientKey::of("192.0.2.1".parse().unwrap());
        let other = ClientKey::of("192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(t.check(bad), Ok(()));
            assert_eq!(t.failed(bad), Failure::Counted);
        }
        let Failure::Blocked(wait) = t.failed(bad) else {
            panic!("the fourth failure in a minute blocks");
        };
        // 3 a minute: the next one is allowed 20 s after the first.
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(20));
        assert!(t.check(bad).is_err());
        assert_eq!(t.check(other), Ok(()));
        assert_eq!(t.failed(other), Failure::Counted);
        assert!(t.tracked() >= 2);
    }
}

//! The wall clock the router reads business hours from.
//!
//! In production it is the system clock and nothing can change it. Tests that
//! need "Monday 08:59 in Madrid" build the broker with [`Clock::manual`] in its
//! `Config` (a Rust value only: no setting, flag or endpoint reaches it) and
//! move it with [`Clock::set`], so no test sleeps for hours.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Clone, Default)]
pub struct Clock {
    /// Milliseconds since the epoch, when set by hand.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that shows `at` until it is set again.
    pub fn manual(at: SystemTime) -> Clock {
        let clock = Clock {
            manual: Some(Arc::new(AtomicU64::new(0))),
        };
        clock.set(at);
        clock
    }

    /// Move a manual clock to `at` (a system clock ignores it).
    pub fn set(&self, at: SystemTime) {
        if let Some(ms) = &self.manual {
            let since = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            ms.store(since.as_millis() as u64, Ordering::Relaxed);
        }
    }

    pub fn now(&self) -> SystemTime {
        match &self.manual {
            Some(ms) => SystemTime::UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::Relaxed)),
            None => SystemTime::now(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            Some(_) => write!(f, "Clock::manual({:?})", self.now()),
            None => f.write_str("Clock::system"),
        }
    }
}

/// Two clocks are equal when both are the system clock or both are the same
/// manual clock.
impl PartialEq for Clock {
    fn eq(&self, other: &Clock) -> bool {
        match (&self.manual, &other.manual) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_shows_what_it_was_set_to() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = Clock::manual(t);
        assert_eq!(c.now(), t);
        c.clone().set(t + Duration::from_secs(60));
        assert_eq!(c.now(), t + Duration::from_secs(60));
        assert_eq!(c, c.clone());
        assert_ne!(c, Clock::system());
    }
}

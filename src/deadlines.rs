//! Many timers on one actor, at the cost of one.
//!
//! An actix `run_later` is an item in its actor's context, and the context polls
//! every item each time the actor wakes, and scans them all to cancel one. On an
//! actor that serves the whole broker (the router's offer timeouts, the webchat
//! channel's away timers) thousands of pending timers made every message cost
//! thousands of polls. [`Deadlines`] keeps them in an ordered map instead
//! (insert, cancel and expiry in O(log n)) behind a single `run_later` armed for
//! the earliest deadline.
//!
//! Use: [`Deadlines::insert`] or [`Deadlines::remove`], then [`Deadlines::arm`];
//! the callback given to `arm` calls [`Deadlines::take_expired`], handles what it
//! returns, and arms again.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, SpawnHandle};

/// Keys with a deadline each and a value handed back when it passes.
pub struct Deadlines<K, V> {
    by_time: BTreeMap<(Instant, u64), K>,
    by_key: HashMap<K, ((Instant, u64), V)>,
    /// Tie-breaker for equal instants, so that no entry hides another.
    seq: u64,
    /// The one actix timer, and when it fires.
    armed: Option<(Instant, SpawnHandle)>,
}

impl<K: Eq + Hash + Clone, V> Default for Deadlines<K, V> {
    fn default() -> Self {
        Deadlines {
            by_time: BTreeMap::new(),
            by_key: HashMap::new(),
            seq: 0,
            armed: None,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Deadlines<K, V> {
    /// Sets `key`'s deadline (replacing any it had) with the value to hand back.
    pub fn insert(&mut self, key: K, at: Instant, value: V) {
        self.remove(&key);
        self.seq += 1;
        let slot = (at, self.seq);
        self.by_time.insert(slot, key.clone());
        self.by_key.insert(key, (slot, value));
    }

    /// Cancels `key`'s deadline; its value if it had one.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (slot, value) = self.by_key.remove(key)?;
        self.by_time.remove(&slot);
        Some(value)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns, earliest first, every entry due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Vec<(K, V)> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some((_, value)) = self.by_key.remove(&key) {
                due.push((key, value));
            }
        }
        due
    }

    /// For the callback given to [`Deadlines::arm`]: the timer has fired; every
    /// entry due now.
    pub fn take_expired(&mut self) -> Vec<(K, V)> {
        self.armed = None;
        self.pop_due(Instant::now())
    }

    /// Makes sure the actor's one timer fires by the earliest deadline, and then
    /// calls `fire`. Cheap when it already does: offers all time out after the
    /// same interval, so a new deadline is never the earliest.
    pub fn arm<A>(&mut self, ctx: &mut Context<A>, fire: fn(&mut A, &mut Context<A>))
    where
        A: Actor<Context = Context<A>>,
    {
        let Some(next) = self.next() else {
            return;
        };
        if let Some((at, handle)) = self.armed {
            if at <= next {
                // Fires no later than needed; if that entry was cancelled, the
                // callback finds nothing due and arms for the next one.
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = next.saturating_duration_since(Instant::now());
        // actix rounds timers to its clock's tick; a millisecond late is enough
        // for every entry up to `next` to be due when it fires.
        let handle = ctx.run_later(wait + Duration::from_millis(1), move |act, ctx| {
            fire(act, ctx)
        });
        self.armed = Some((next, handle));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn pops_due_entries_in_deadline_order() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        d.insert("c", at(t, 30), 3);
        d.insert("a", at(t, 10), 1);
        d.insert("b", at(t, 20), 2);
        assert_eq!(d.next(), Some(at(t, 10)));
        assert_eq!(d.pop_due(at(t, 20)), vec![("a", 1), ("b", 2)]);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(at(t, 29)), vec![]);
        assert_eq!(d.pop_due(at(t, 30)), vec![("c", 3)]);
        assert!(d.is_empty());
        assert_eq!(d.next(), None);
    }

    #[test]
    fn insert_replaces_and_remove_cancels() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        d.insert("a", at(t, 10), 1);
        d.insert("a", at(t, 50), 2);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(at(t, 10)), vec![]);
        assert!(d.contains(&"a"));
        assert_eq!(d.remove(&"a"), Some(2));
        assert_eq!(d.remove(&"a"), None);
        assert_eq!(d.pop_due(at(t, 100)), vec![]);
    }

    #[test]
    fn equal_deadlines_all_kept() {
        let t = Instant::now();
        let mut d = Deadlines::default();
        for k in 0..100 {
            d.insert(k, at(t, 5), k * 2);
        }
        d.remove(&50);
        let due = d.pop_due(at(t, 5));
        assert_eq!(due.len(), 99);
        assert!(due.iter().all(|(k, v)| *v == k * 2 && *k != 50));
    }

    struct Probe {
        d: Deadlines<u32, &'static str>,
        fired: Vec<(u32, &'static str)>,
        done: Option<tokio::sync::oneshot::Sender<Vec<(u32, &'static str)>>>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Probe {
        fn fire(&mut self, ctx: &mut Context<Self>) {
            let due = self.d.take_expired();
            self.fired.extend(due);
            self.d.arm(ctx, Probe::fire);
            if self.d.is_empty() {
                if let Some(done) = self.done.take() {
                    let _ = done.send(std::mem::take(&mut self.fired));
                }
            }
        }
    }

    #[actix::test]
    async fn one_timer_fires_every_deadline_once_in_order() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Probe::create(move |ctx| {
            let now = Instant::now();
            let mut p = Probe {
                d: Deadlines::default(),
                fired: Vec::new(),
                done: Some(tx),
            };
            p.d.insert(3, at(now, 60), "late");
            p.d.arm(ctx, Probe::fire);
            // An earlier deadline re-arms; a cancelled one never fires.
            p.d.insert(1, at(now, 20), "early");
            p.d.insert(2, at(now, 40), "cancelled");
            p.d.insert(4, at(now, 40), "middle");
            p.d.arm(ctx, Probe::fire);
            p.d.remove(&2);
            p
        });
        let fired = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("timers fire")
            .expect("probe answers");
        assert_eq!(fired, vec![(1, "early"), (4, "middle"), (3, "late")]);
    }
}

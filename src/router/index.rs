//! The router's index of eligible agents: per channel and per routing policy,
//! an ordered set, so the best agent for a task under its queue's policy is
//! the first entry that passes the task's filter (skills, declined) — O(log n)
//! in the common case, never a scan of all agents.
//!
//! The orders (each ends with the id, so ties are stable):
//! - `most_free_capacity`: most free capacity on the channel, then least
//!   recently offered a task;
//! - `longest_idle`: agents with no open work first, then idle (since their
//!   open work last dropped to none, or they became available) longest;
//! - `round_robin`: offered a task least recently.
//!
//! Pure data, no actors: the router owns one, and the benches drive it alone.

use std::collections::{BTreeSet, HashMap};

use super::queue::Policy;
use crate::protocol::{ChannelKind, Id};

/// Where an agent stands for each policy's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// Tick of its last offer (or of becoming available).
    pub last_offer: u64,
    /// Tick its open work last dropped to none (or it became available).
    pub idle_since: u64,
    /// Does it hold any open work now?
    pub busy: bool,
}

type Entry = (u64, u64, Id);
/// An agent's sort keys, one per policy.
type Keys = [(u64, u64); 3];

#[derive(Debug, Default)]
pub struct AgentIndex {
    sets: [[BTreeSet<Entry>; 3]; 4],
    /// Entries currently inserted per agent, to remove them exactly.
    keys: HashMap<Id, [Option<Keys>; 4]>,
}

fn keys(free: u32, s: Standing) -> Keys {
    let mut k = [(0, 0); 3];
    k[Policy::MostFreeCapacity.index()] = (u64::from(u32::MAX - free), s.last_offer);
    k[Policy::LongestIdle.index()] = (u64::from(s.busy), s.idle_since);
    k[Policy::RoundRobin.index()] = (0, s.last_offer);
    k
}

impl AgentIndex {
    /// Replace an agent's entries: `free[ch]` is its free capacity on each
    /// channel where it is eligible (None where it is not).
    pub fn update(&mut self, id: &Id, free: [Option<u32>; 4], standing: Standing) {
        self.remove(id);
        let mut entries = [None; 4];
        for ch in ChannelKind::ALL {
            if let Some(f) = free[ch.index()].filter(|f| *f > 0) {
                let k = keys(f, standing);
                for p in Policy::ALL {
                    let (a, b) = k[p.index()];
                    self.sets[ch.index()][p.index()].insert((a, b, id.clone()));
                }
                entries[ch.index()] = Some(k);
            }
        }
        if entries.iter().any(Option::is_some) {
            self.keys.insert(id.clone(), entries);
        }
    }

    /// Drop every entry of an agent.
    pub fn remove(&mut self, id: &Id) {
        if let Some(entries) = self.keys.remove(id) {
            for ch in ChannelKind::ALL {
                if let Some(k) = entries[ch.index()] {
                    for p in Policy::ALL {
                        let (a, b) = k[p.index()];
                        self.sets[ch.index()][p.index()].remove(&(a, b, id.clone()));
                    }
                }
            }
        }
    }

    /// The best eligible agent on `channel` under `policy` that `accept` takes.
    pub fn best(
        &self,
        channel: ChannelKind,
        policy: Policy,
        accept: impl Fn(&Id) -> bool,
    ) -> Option<Id> {
        self.sets[channel.index()][policy.index()]
            .iter()
            .find(|(_, _, id)| accept(id))
            .map(|(_, _, id)| id.clone())
    }

    /// Is `id` eligible on `channel` (free capacity there, available, connected)?
    pub fn contains(&self, channel: ChannelKind, id: &Id) -> bool {
        self.keys
            .get(id)
            .is_some_and(|keys| keys[channel.index()].is_some())
    }

    /// Is anyone eligible on `channel`?
    pub fn is_empty(&self, channel: ChannelKind) -> bool {
        self.sets[channel.index()][0].is_empty()
    }

    pub fn len(&self, channel: ChannelKind) -> usize {
        self.sets[channel.index()][0].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        s.into()
    }

    fn at(last_offer: u64, idle_since: u64, busy: bool) -> Standing {
        Standing {
            last_offer,
            idle_since,
            busy,
        }
    }

    #[test]
    fn most_free_then_least_recently_offered_then_filter() {
        let mut ix = AgentIndex::default();
        let web = |f: u32| [Some(f), None, None, None];
        let mf = Policy::MostFreeCapacity;
        ix.update(&id("a"), web(1), at(1, 1, false));
        ix.update(&id("b"), web(3), at(5, 5, false));
        ix.update(&id("c"), web(3), at(2, 2, false));
        assert_eq!(ix.best(ChannelKind::Webchat, mf, |_| true), Some(id("c")));
        assert_eq!(
            ix.best(ChannelKind::Webchat, mf, |x| &**x != "c"),
            Some(id("b"))
        );
        assert_eq!(ix.best(ChannelKind::Sms, mf, |_| true), None);
        // c takes a task: 2 free now, b (3 free) wins.
        ix.update(&id("c"), web(2), at(9, 2, true));
        assert_eq!(ix.best(ChannelKind::Webchat, mf, |_| true), Some(id("b")));
        // No free capacity or ineligible: not indexed at all.
        ix.update(&id("b"), web(0), at(9, 5, true));
        ix.remove(&id("c"));
        assert_eq!(ix.best(ChannelKind::Webchat, mf, |_| true), Some(id("a")));
        assert_eq!(ix.len(ChannelKind::Webchat), 1);
        ix.remove(&id("a"));
        assert!(ix.is_empty(ChannelKind::Webchat));
    }

    #[test]
    fn longest_idle_and_round_robin_count_open_work_only() {
        let mut ix = AgentIndex::default();
        let web = |f: u32| [Some(f), None, None, None];
        // a: idle since tick 3, offered last at 3; b: busy (one task since
        // tick 2), idle since 1, offered at 2; c: idle since 4, offered at 1.
        ix.update(&id("a"), web(2), at(3, 3, false));
        ix.update(&id("b"), web(5), at(2, 1, true));
        ix.update(&id("c"), web(1), at(1, 4, false));
        let best = |p| ix.best(ChannelKind::Webchat, p, |_| true).unwrap();
        assert_eq!(best(Policy::LongestIdle), id("a"));
        assert_eq!(best(Policy::RoundRobin), id("c"));
        assert_eq!(best(Policy::MostFreeCapacity), id("b"));
    }
}

//! The router's index of eligible agents: per channel, an ordered set keyed by
//! (most free capacity, longest idle, id), so the best agent for a task is the
//! first entry that passes the task's filter (skills, declined) — O(log n) in
//! the common case, never a scan of all agents.
//!
//! Pure data, no actors: the router owns one, and the benches drive it alone.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::protocol::{ChannelKind, Id};

type Key = (Reverse<u32>, u64);

#[derive(Debug, Default)]
pub struct AgentIndex {
    sets: [BTreeSet<(Reverse<u32>, u64, Id)>; 4],
    /// Keys currently inserted per agent, to remove them exactly.
    keys: HashMap<Id, [Option<Key>; 4]>,
}

impl AgentIndex {
    /// Replace an agent's entries: `free[ch]` is its free capacity on each
    /// channel where it is eligible (None where it is not), `idle_since` the
    /// tick it became idle.
    pub fn update(&mut self, id: &Id, free: [Option<u32>; 4], idle_since: u64) {
        self.remove(id);
        let mut keys = [None; 4];
        for ch in ChannelKind::ALL {
            if let Some(f) = free[ch.index()].filter(|f| *f > 0) {
                let key = (Reverse(f), idle_since);
                self.sets[ch.index()].insert((key.0, key.1, id.clone()));
                keys[ch.index()] = Some(key);
            }
        }
        if keys.iter().any(Option::is_some) {
            self.keys.insert(id.clone(), keys);
        }
    }

    /// Drop every entry of an agent.
    pub fn remove(&mut self, id: &Id) {
        if let Some(keys) = self.keys.remove(id) {
            for ch in ChannelKind::ALL {
                if let Some((free, idle)) = keys[ch.index()] {
                    self.sets[ch.index()].remove(&(free, idle, id.clone()));
                }
            }
        }
    }

    /// The best eligible agent on `channel` that `accept` takes.
    pub fn best(&self, channel: ChannelKind, accept: impl Fn(&Id) -> bool) -> Option<Id> {
        self.sets[channel.index()]
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
        self.sets[channel.index()].is_empty()
    }

    pub fn len(&self, channel: ChannelKind) -> usize {
        self.sets[channel.index()].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        s.into()
    }

    #[test]
    fn most_free_then_longest_idle_then_filter() {
        let mut ix = AgentIndex::default();
        let web = |f: u32| [Some(f), None, None, None];
        ix.update(&id("a"), web(1), 1);
        ix.update(&id("b"), web(3), 5);
        ix.update(&id("c"), web(3), 2);
        assert_eq!(ix.best(ChannelKind::Webchat, |_| true), Some(id("c")));
        assert_eq!(
            ix.best(ChannelKind::Webchat, |x| &**x != "c"),
            Some(id("b"))
        );
        assert_eq!(ix.best(ChannelKind::Sms, |_| true), None);
        // c takes a task: 2 free now, b (3 free) wins.
        ix.update(&id("c"), web(2), 9);
        assert_eq!(ix.best(ChannelKind::Webchat, |_| true), Some(id("b")));
        // No free capacity or ineligible: not indexed at all.
        ix.update(&id("b"), web(0), 9);
        ix.remove(&id("c"));
        assert_eq!(ix.best(ChannelKind::Webchat, |_| true), Some(id("a")));
        assert_eq!(ix.len(ChannelKind::Webchat), 1);
        ix.remove(&id("a"));
        assert!(ix.is_empty(ChannelKind::Webchat));
    }
}

//! Finding a resent message: a client that lost its socket before the `ack`
//! (or the echo) sends the same `client_msg_id` again, and the conversation
//! answers it with the message it stored instead of storing it twice.
//!
//! The window is the conversation's newest [`RESEND_WINDOW`] messages. An
//! index of fingerprints (author, agent, `client_msg_id` hashed to 64 bits)
//! and positions makes the lookup one hash instead of a comparison with
//! every message of the window: it catches up with the history lazily, so a conversation
//! rebuilt from the journal needs nothing but its messages, and a hit is
//! checked against the message itself, so a fingerprint collision cannot
//! answer with another message.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};

use crate::protocol::{Author, Message};

/// How many of a conversation's newest messages a resent `client_msg_id`
/// is looked for in.
pub const RESEND_WINDOW: usize = 256;

/// Fingerprints of the window's messages that carry a `client_msg_id`:
/// in the order they were appended (to forget them as they leave the
/// window), and by fingerprint (the newest position of each), so a lookup
/// costs one hash, not a scan of the window.
#[derive(Debug, Default)]
pub struct ResendIndex {
    recent: VecDeque<(u64, u32)>,
    newest: HashMap<u64, u32, FixedState>,
    /// The history's length the index has seen.
    seen: usize,
}

impl ResendIndex {
    /// The message of `history` that `from` (and, for an agent, that agent)
    /// already sent with `client_msg_id`, among the newest
    /// [`RESEND_WINDOW`].
    pub fn find<'h>(
        &mut self,
        history: &'h [Message],
        from: Author,
        agent: Option<&str>,
        client_msg_id: &str,
    ) -> Option<&'h Message> {
        self.catch_up(history);
        let wanted = fingerprint(from, agent, client_msg_id);
        let oldest = history.len().saturating_sub(RESEND_WINDOW);
        let is_it = |m: &&Message| {
            m.from == from
                && m.client_msg_id.as_deref() == Some(client_msg_id)
                && (from != Author::Agent || m.agent_id.as_deref() == agent)
        };
        let newest = self.newest.get(&wanted).map(|at| *at as usize)?;
        if let Some(m) = history
            .get(newest)
            .filter(|_| newest >= oldest)
            .filter(is_it)
        {
            return Some(m);
        }
        // Another message has the same fingerprint (a 64-bit collision):
        // look through the window's messages with it.
        self.recent
            .iter()
            .rev()
            .filter(|(print, _)| *print == wanted)
            .map(|(_, at)| *at as usize)
            .filter(|at| *at >= oldest)
            .filter_map(|at| history.get(at))
            .find(is_it)
    }

    /// Index the messages appended since the last call, and forget those
    /// that left the window.
    fn catch_up(&mut self, history: &[Message]) {
        let start = self.seen.max(history.len().saturating_sub(RESEND_WINDOW));
        for (at, m) in history.iter().enumerate().skip(start) {
            if let Some(id) = m.client_msg_id.as_deref() {
                let agent = match m.from {
                    Author::Agent => m.agent_id.as_deref(),
                    _ => None,
                };
                let print = fingerprint(m.from, agent, id);
                self.recent.push_back((print, at as u32));
                self.newest.insert(print, at as u32);
            }
        }
        self.seen = history.len();
        let oldest = history.len().saturating_sub(RESEND_WINDOW);
        while let Some(&(print, at)) = self.recent.front() {
            if (at as usize) >= oldest {
                break;
            }
            self.recent.pop_front();
            if self.newest.get(&print) == Some(&at) {
                self.newest.remove(&print);
            }
        }
    }
}

/// Fingerprints are already hashes: the map keyed by them needs no seed of
/// its own (and a fixed one is fine: they are compared within one process,
/// and every hit is checked against the message).
type FixedState = foldhash::fast::FixedState;

fn fingerprint(from: Author, agent: Option<&str>, client_msg_id: &str) -> u64 {
    let mut h = FixedState::with_seed(0x5b_d1_e9_95).build_hasher();
    std::mem::discriminant(&from).hash(&mut h);
    agent.hash(&mut h);
    client_msg_id.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DeliveryStatus;

    fn message(seq: u64, from: Author, agent: Option<&str>, cmid: Option<&str>) -> Message {
        Message {
            id: format!("m_{seq}"),
            conversation_id: "cv_test".into(),
            seq,
            from,
            agent_id: agent.map(Into::into),
            text: String::new(),
            attachments: Vec::new(),
            created_at: std::time::SystemTime::UNIX_EPOCH,
            status: DeliveryStatus::Accepted,
            client_msg_id: cmid.map(str::to_owned),
        }
    }

    #[test]
    fn finds_the_message_of_the_same_author_and_agent_only() {
        let history = vec![
            message(1, Author::Customer, None, Some("x")),
            message(2, Author::Agent, Some("ag_a"), Some("x")),
            message(3, Author::System, None, None),
        ];
        let mut index = ResendIndex::default();
        let hit =
            |i: &mut ResendIndex, from, agent| i.find(&history, from, agent, "x").map(|m| m.seq);
        assert_eq!(hit(&mut index, Author::Customer, None), Some(1));
        assert_eq!(hit(&mut index, Author::Agent, Some("ag_a")), Some(2));
        assert_eq!(hit(&mut index, Author::Agent, Some("ag_b")), None);
        assert_eq!(index.find(&history, Author::Customer, None, "y"), None);
    }

    #[test]
    fn catches_up_with_messages_appended_after_a_lookup() {
        let mut history = vec![message(1, Author::Customer, None, Some("a"))];
        let mut index = ResendIndex::default();
        assert!(index.find(&history, Author::Customer, None, "b").is_none());
        history.push(message(2, Author::Customer, None, Some("b")));
        let found = index.find(&history, Author::Customer, None, "b");
        assert_eq!(found.map(|m| m.seq), Some(2));
        assert_eq!(index.recent.len(), 2, "each message indexed once");
    }

    #[test]
    fn a_message_older_than_the_window_is_not_found_and_not_kept() {
        let mut history = vec![message(1, Author::Customer, None, Some("old"))];
        let mut index = ResendIndex::default();
        assert!(index
            .find(&history, Author::Customer, None, "old")
            .is_some());
        for seq in 2..=(RESEND_WINDOW as u64) {
            history.push(message(seq, Author::Customer, None, None));
        }
        assert!(
            index
                .find(&history, Author::Customer, None, "old")
                .is_some(),
            "the 256th newest is still in the window"
        );
        history.push(message(
            RESEND_WINDOW as u64 + 1,
            Author::Customer,
            None,
            None,
        ));
        assert!(index
            .find(&history, Author::Customer, None, "old")
            .is_none());
        assert!(index.recent.is_empty(), "{:?}", index.recent);
    }

    #[test]
    fn a_history_rebuilt_from_the_journal_is_indexed_from_its_window() {
        let history: Vec<Message> = (1..=1000)
            .map(|seq| message(seq, Author::Customer, None, Some(&format!("c{seq}"))))
            .collect();
        let mut index = ResendIndex::default();
        assert_eq!(
            index
                .find(&history, Author::Customer, None, "c900")
                .map(|m| m.seq),
            Some(900)
        );
        assert!(index
            .find(&history, Author::Customer, None, "c700")
            .is_none());
        assert_eq!(index.recent.len(), RESEND_WINDOW);
    }
}

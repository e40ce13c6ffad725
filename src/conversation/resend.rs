//! Finding a resent message: a client that lost its socket before the `ack`
//! (or the echo) sends the same `client_msg_id` again, and the conversation
//! answers it with the message it stored instead of storing it twice.
//!
//! The window is the conversation's newest [`RESEND_WINDOW`] messages. The
//! index is a ring of 32-bit fingerprints (author, agent, `client_msg_id`
//! hashed), one slot per message of the window at `position % RESEND_WINDOW`,
//! so a lookup is one hash and a scan of at most 1 KiB that the compiler
//! vectorizes, and a message leaving the window is forgotten by the one that
//! takes its slot. It catches up with the history lazily, so a conversation
//! rebuilt from the journal needs nothing but its messages, and a hit is
//! checked against the message itself, so a fingerprint collision cannot
//! answer with another message.
//!
//! (A hash map of fingerprints did the same with three random accesses per
//! message: insert, lookup, and removal of the one leaving the window. With
//! a thousand conversations at once, each a cache miss: about 4 % of the
//! broker's CPU per round trip, against under 1 % for the ring.)

use std::hash::{BuildHasher, Hash, Hasher};

use crate::protocol::{Author, Message};

/// How many of a conversation's newest messages a resent `client_msg_id`
/// is looked for in.
pub const RESEND_WINDOW: usize = 256;

/// The fingerprints of the window's messages, by position in the history
/// modulo [`RESEND_WINDOW`]; 0 for a message without a `client_msg_id`.
/// It grows with the history up to the window (a short conversation pays
/// for its own messages only), then each new message overwrites the slot of
/// the one that left.
#[derive(Debug, Default)]
pub struct ResendIndex {
    prints: Vec<u32>,
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
        // The slot of `oldest` and the position of slot 0 at or before it.
        let base = oldest - oldest % RESEND_WINDOW;
        let is_it = |m: &&Message| {
            m.from == from
                && m.client_msg_id.as_deref() == Some(client_msg_id)
                && (from != Author::Agent || m.agent_id.as_deref() == agent)
        };
        let mut newest: Option<&'h Message> = None;
        for (chunk_at, chunk) in self.prints.chunks(16).enumerate() {
            // No early exit: this form compiles to a few vector compares.
            if !chunk.iter().fold(false, |any, p| any | (*p == wanted)) {
                continue;
            }
            for (i, _) in chunk.iter().enumerate().filter(|(_, p)| **p == wanted) {
                let slot = chunk_at * 16 + i;
                let mut at = base + slot;
                if at < oldest {
                    at += RESEND_WINDOW;
                }
                // Checked against the message: a fingerprint may collide.
                if let Some(m) = history.get(at).filter(is_it) {
                    if newest.is_none_or(|n| n.seq < m.seq) {
                        newest = Some(m);
                    }
                }
            }
        }
        newest
    }

    /// Fingerprint the messages appended since the last call (those still
    /// in the window).
    fn catch_up(&mut self, history: &[Message]) {
        let start = self.seen.max(history.len().saturating_sub(RESEND_WINDOW));
        for (at, m) in history.iter().enumerate().skip(start) {
            let print = match m.client_msg_id.as_deref() {
                Some(id) => {
                    let agent = match m.from {
                        Author::Agent => m.agent_id.as_deref(),
                        _ => None,
                    };
                    fingerprint(m.from, agent, id)
                }
                None => 0,
            };
            let slot = at % RESEND_WINDOW;
            if slot >= self.prints.len() {
                self.prints.resize(slot + 1, 0);
            }
            self.prints[slot] = print;
        }
        self.seen = history.len();
    }
}

/// 32 bits of a seeded hash, never 0 (which marks a message without a
/// `client_msg_id`). A collision only costs a comparison with the message.
fn fingerprint(from: Author, agent: Option<&str>, client_msg_id: &str) -> u32 {
    let mut h = foldhash::fast::FixedState::with_seed(0x5b_d1_e9_95).build_hasher();
    std::mem::discriminant(&from).hash(&mut h);
    agent.hash(&mut h);
    client_msg_id.hash(&mut h);
    let full = h.finish();
    ((full >> 32) as u32 ^ full as u32).max(1)
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
        assert_eq!(index.prints.len(), 2, "each message indexed once");
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
        assert_eq!(
            index.prints[0], 0,
            "the slot of the message that left is taken"
        );
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
        assert_eq!(index.prints.len(), RESEND_WINDOW);
    }

    #[test]
    fn a_wrapped_ring_finds_exactly_the_window() {
        let mut history: Vec<Message> = Vec::new();
        let mut index = ResendIndex::default();
        for seq in 1..=600u64 {
            history.push(message(
                seq,
                Author::Customer,
                None,
                Some(&format!("c{seq}")),
            ));
            // Looked up as the conversation does, one message at a time.
            let _ = index.find(&history, Author::Customer, None, "none");
        }
        let seq_of = |i: &mut ResendIndex, id: &str| {
            i.find(&history, Author::Customer, None, id).map(|m| m.seq)
        };
        // The window is positions 344..600: seq 345 to 600.
        assert_eq!(seq_of(&mut index, "c600"), Some(600));
        assert_eq!(seq_of(&mut index, "c345"), Some(345));
        assert_eq!(seq_of(&mut index, "c512"), Some(512));
        assert_eq!(seq_of(&mut index, "c344"), None);
        assert_eq!(seq_of(&mut index, "c1"), None);
        assert_eq!(index.prints.len(), RESEND_WINDOW);
    }

    #[test]
    fn a_colliding_fingerprint_is_checked_against_the_message() {
        let history = vec![
            message(1, Author::Customer, None, Some("a")),
            message(2, Author::Customer, None, Some("b")),
        ];
        let mut index = ResendIndex::default();
        assert!(index.find(&history, Author::Customer, None, "b").is_some());
        // Make "a"'s slot carry "b"'s fingerprint, as a collision would.
        index.prints[0] = fingerprint(Author::Customer, None, "b");
        let found = index.find(&history, Author::Customer, None, "b");
        assert_eq!(found.map(|m| m.seq), Some(2), "the message itself decides");
        index.prints[1] = 0;
        assert!(
            index.find(&history, Author::Customer, None, "b").is_none(),
            "a colliding slot alone finds nothing"
        );
    }

    #[test]
    fn the_newest_of_two_matches_answers() {
        let history = vec![
            message(1, Author::Customer, None, Some("x")),
            message(2, Author::Customer, None, None),
            message(3, Author::Customer, None, Some("x")),
        ];
        let mut index = ResendIndex::default();
        let found = index.find(&history, Author::Customer, None, "x");
        assert_eq!(found.map(|m| m.seq), Some(3));
    }

    #[test]
    fn fingerprints_are_never_zero() {
        for i in 0..10_000 {
            assert_ne!(fingerprint(Author::Customer, None, &i.to_string()), 0);
        }
    }
}

//! Id and token generation.
//!
//! Ids are short and sequential per kind (`cv_1f`, `tk_1f`, `m_2a`): they are
//! opaque to clients, cheap to compare, and never grant access on their own.
//! Tokens are 128 random bits, hex-encoded: they are the credentials.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::Id;

/// A hash map keyed by ids (and tokens) this process made: foldhash, seeded
/// per map at random, instead of SipHash. Nobody outside chooses these keys
/// (ids are sequential, tokens random), so the flooding SipHash guards
/// against cannot be aimed at them; keys a client picks (a `client_msg_id`,
/// a webhook's message id) stay on the standard hasher.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdHasher>;

/// The hasher of [`IdMap`] (also for `DashMap`s keyed by ids).
pub type IdHasher = foldhash::fast::RandomState;

/// Per-kind sequential id source, shared by the whole broker.
#[derive(Debug, Default)]
pub struct IdGen {
    conversations: AtomicU64,
    tasks: AtomicU64,
    messages: AtomicU64,
    sessions: AtomicU64,
}

impl IdGen {
    fn next(counter: &AtomicU64, prefix: &str) -> Id {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{prefix}{n:x}").into()
    }

    pub fn conversation(&self) -> Id {
        Self::next(&self.conversations, "cv_")
    }

    pub fn task(&self) -> Id {
        Self::next(&self.tasks, "tk_")
    }

    pub fn message(&self) -> String {
        let n = self.messages.fetch_add(1, Ordering::Relaxed) + 1;
        format!("m_{n:x}")
    }

    pub fn webchat_session(&self) -> Id {
        Self::next(&self.sessions, "wc_")
    }
}

/// A fresh secret: 128 random bits as 32 hex characters.
pub fn token() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// An unguessable id for stored files.
pub fn attachment_id() -> String {
    let bits: u64 = rand::random();
    format!("att_{bits:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let g = IdGen::default();
        assert_eq!(&*g.conversation(), "cv_1");
        assert_eq!(&*g.conversation(), "cv_2");
        assert_eq!(&*g.task(), "tk_1");
        assert_ne!(token(), token());
        assert_eq!(token().len(), 32);
        assert!(attachment_id().starts_with("att_"));
    }
}

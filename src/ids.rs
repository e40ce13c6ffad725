//! Id and token generation.
//!
//! Ids of conversations, tasks, messages and webchat sessions are random
//! (`cv_`, `tk_`, `m_`, `wc_` then 96 random bits in 20 base-32 characters):
//! a sequential id would tell anyone who sees two of them how busy the broker
//! is, and would start again at 1 after a restart, so one id could name two
//! different conversations. At 96 bits two ids of one kind collide with a
//! probability of about n²/2⁹⁷ — for a billion ids, one in 10¹¹. Nothing
//! orders by id: messages by `seq`, tasks by arrival, lists by timestamps.
//! Ids are opaque to clients and never grant access on their own.
//! Tokens are 128 random bits, hex-encoded: they are the credentials.

use crate::protocol::Id;

/// A hash map keyed by ids (and tokens) this process made: foldhash, seeded
/// per map at random, instead of SipHash. Nobody outside chooses these keys
/// (ids and tokens are random), so the flooding SipHash guards
/// against cannot be aimed at them; keys a client picks (a `client_msg_id`,
/// a webhook's message id) stay on the standard hasher.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdHasher>;

/// The hasher of [`IdMap`] (also for `DashMap`s keyed by ids).
pub type IdHasher = foldhash::fast::RandomState;

/// Crockford's base 32, lower case: no `i`, `l`, `o` or `u` to misread.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Random bits in an id.
const ID_BITS: u32 = 96;

/// `prefix` and 96 fresh random bits, base 32.
fn random_id(prefix: &str) -> String {
    let mut bits: u128 = rand::random::<u128>() >> (128 - ID_BITS);
    let digits = ID_BITS.div_ceil(5) as usize;
    let mut out = String::with_capacity(prefix.len() + digits);
    out.push_str(prefix);
    let mut body = [0u8; 20];
    for d in body.iter_mut().take(digits).rev() {
        *d = ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    // The alphabet is ASCII.
    out.extend(body[..digits].iter().map(|&b| b as char));
    out
}

/// Where the broker's ids come from. Stateless: every id is drawn fresh, so
/// none depends on what came before or survives into another process.
#[derive(Debug, Default)]
pub struct IdGen;

impl IdGen {
    pub fn conversation(&self) -> Id {
        random_id("cv_").into()
    }

    pub fn task(&self) -> Id {
        random_id("tk_").into()
    }

    pub fn message(&self) -> String {
        random_id("m_")
    }

    pub fn webchat_session(&self) -> Id {
        random_id("wc_").into()
    }

    /// A webhook event's id: the same on every attempt, new for every event.
    pub fn webhook_event(&self) -> String {
        random_id("evt_")
    }

    /// A canned response saved without an id of the admin's choosing.
    pub fn canned_response(&self) -> String {
        random_id("cr_")
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
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_prefixed_random_and_opaque() {
        let g = IdGen;
        let cv = g.conversation();
        assert!(cv.starts_with("cv_"), "{cv}");
        assert_eq!(cv.len(), 3 + 20);
        assert!(cv[3..].bytes().all(|b| ALPHABET.contains(&b)), "{cv}");
        assert!(g.task().starts_with("tk_"));
        assert!(g.message().starts_with("m_"));
        assert!(g.webchat_session().starts_with("wc_"));
        // A second generator (a restart) does not repeat the first one's ids.
        let first: HashSet<String> = (0..10_000).map(|_| IdGen.message()).collect();
        let second: HashSet<String> = (0..10_000).map(|_| IdGen.message()).collect();
        assert_eq!(first.len(), 10_000);
        assert!(first.is_disjoint(&second));
        // Not a counter: consecutive ids do not sort in creation order.
        let run: Vec<String> = (0..64).map(|_| g.message()).collect();
        let mut sorted = run.clone();
        sorted.sort();
        assert_ne!(run, sorted);
        assert_ne!(token(), token());
        assert_eq!(token().len(), 32);
        assert!(attachment_id().starts_with("att_"));
    }
}

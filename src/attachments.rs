//! In-memory store of uploaded files, shared by the HTTP layer (upload and
//! download) and conversations (which check and attach them to messages).
//!
//! A `DashMap` rather than an actor: uploads and downloads are independent
//! reads/writes by id with no cross-entry invariant, and keeping multi-MiB
//! bodies out of actor mailboxes keeps the hot path light.
//!
//! Files leave memory with the conversations that carry them: each message
//! that carries a file holds a use ([`AttachmentStore::acquire`]); a forgotten
//! conversation gives its uses back ([`AttachmentStore::release`]) and a file
//! with none left is dropped. A file uploaded and never sent is dropped by
//! [`AttachmentStore::sweep_unused`] once it is older than the history
//! retention.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::protocol::{AttachmentMeta, Id};

/// Who may read a stored file besides agents and admins.
#[derive(Debug)]
pub struct StoredAttachment {
    pub meta: AttachmentMeta,
    pub bytes: Bytes,
    /// Webchat sessions allowed to download it: the uploader, and the customer
    /// of every conversation it was sent in.
    readers: Mutex<Vec<Id>>,
    uploaded: Instant,
    /// Messages in conversations still in memory that carry it.
    uses: AtomicUsize,
}

impl StoredAttachment {
    pub fn readable_by(&self, session: &str) -> bool {
        self.readers.lock().iter().any(|r| &**r == session)
    }

    pub fn grant(&self, session: &Id) {
        let mut readers = self.readers.lock();
        if !readers.contains(session) {
            readers.push(session.clone());
        }
    }
}

#[derive(Debug, Default)]
pub struct AttachmentStore {
    files: DashMap<String, Arc<StoredAttachment>>,
}

impl AttachmentStore {
    pub fn insert(&self, meta: AttachmentMeta, bytes: Bytes, uploader_session: Option<Id>) {
        let stored = StoredAttachment {
            meta: meta.clone(),
            bytes,
            readers: Mutex::new(uploader_session.into_iter().collect()),
            uploaded: Instant::now(),
            uses: AtomicUsize::new(0),
        };
        self.files.insert(meta.id, Arc::new(stored));
    }

    pub fn get(&self, id: &str) -> Option<Arc<StoredAttachment>> {
        self.files.get(id).map(|e| e.value().clone())
    }

    /// Resolve the ids a sender listed, in order, or say which one is unknown.
    pub fn resolve(&self, ids: &[String]) -> Result<Vec<Arc<StoredAttachment>>, ApiError> {
        ids.iter()
            .map(|id| {
                self.get(id)
                    .ok_or_else(|| ApiError::NotFound(format!("attachment {id} does not exist")))
            })
            .collect()
    }

    /// A message now carries file `id`.
    pub fn acquire(&self, id: &str) {
        if let Some(f) = self.files.get(id) {
            f.uses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A message that carried file `id` left memory; the file goes when no
    /// message carries it any more.
    pub fn release(&self, id: &str) {
        self.files.remove_if(id, |_, f| {
            let before = f
                .uses
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .unwrap_or(0);
            before == 1
        });
    }

    /// Drops files that no message carries and that were uploaded more than
    /// `older_than` ago; returns how many.
    pub fn sweep_unused(&self, older_than: Duration) -> usize {
        let before = self.files.len();
        self.files
            .retain(|_, f| f.uses.load(Ordering::Relaxed) > 0 || f.uploaded.elapsed() < older_than);
        before.saturating_sub(self.files.len())
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> AttachmentMeta {
        AttachmentMeta {
            id: id.into(),
            content_type: "image/png".into(),
            size: 3,
            filename: "a.png".into(),
            url: format!("/v1/attachments/{id}"),
            error: None,
        }
    }

    #[test]
    fn readers_and_resolve() {
        let store = AttachmentStore::default();
        store.insert(
            meta("att_1"),
            Bytes::from_static(b"abc"),
            Some("wc_1".into()),
        );
        let a = store.get("att_1").unwrap();
        assert!(a.readable_by("wc_1"));
        assert!(!a.readable_by("wc_2"));
        a.grant(&"wc_2".into());
        assert!(a.readable_by("wc_2"));
        assert!(store.resolve(&["att_1".into()]).is_ok());
        let err = store
            .resolve(&["att_1".into(), "att_x".into()])
            .unwrap_err();
        assert_eq!(err.code(), "not_found");
    }

    #[test]
    fn files_go_with_their_last_message_or_unused_after_the_retention() {
        let store = AttachmentStore::default();
        store.insert(meta("att_1"), Bytes::from_static(b"abc"), None);
        store.insert(meta("att_2"), Bytes::from_static(b"abc"), None);
        // Sent twice (two conversations): stays until both are forgotten.
        store.acquire("att_1");
        store.acquire("att_1");
        store.release("att_1");
        assert!(store.get("att_1").is_some());
        // Carried by a message: a sweep leaves it, however old.
        assert_eq!(store.sweep_unused(Duration::ZERO), 1);
        assert!(store.get("att_1").is_some());
        assert!(store.get("att_2").is_none(), "unused upload swept");
        store.release("att_1");
        assert!(store.get("att_1").is_none());
        // Releasing what is gone or was never acquired is harmless.
        store.release("att_1");
        store.insert(meta("att_3"), Bytes::from_static(b"abc"), None);
        assert_eq!(
            store.sweep_unused(Duration::from_secs(3600)),
            0,
            "too young"
        );
        assert!(store.get("att_3").is_some());
    }
}

//! In-memory store of uploaded files, shared by the HTTP layer (upload and
//! download) and conversations (which check and attach them to messages).
//!
//! A `DashMap` rather than an actor: uploads and downloads are independent
//! reads/writes by id with no cross-entry invariant, and keeping multi-MiB
//! bodies out of actor mailboxes keeps the hot path light.

use std::sync::Arc;

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
}

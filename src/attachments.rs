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
//!
//! What a webchat session may hold at once is bounded (`uploads_per_session`
//! files, `upload_bytes_per_session` bytes), and so is what the sessions of
//! one client address hold together (`upload_bytes_per_ip`): an upload over
//! either is refused with `rate_limited` before it is stored, and the shares
//! come back as files leave memory.

use std::net::IpAddr;
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
    /// The webchat session that uploaded it, whose quota it counts against.
    uploader: Option<Uploader>,
}

/// A webchat customer's upload: the session and the client address whose
/// quotas it counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploader {
    pub session: Id,
    pub ip: Option<IpAddr>,
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

/// What one webchat session holds in the store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct AttachmentStore {
    files: DashMap<String, Arc<StoredAttachment>>,
    /// Per uploading webchat session, what it holds; an entry goes with its
    /// last file.
    held: DashMap<Id, Held>,
    /// Per client address, the bytes its sessions hold.
    held_by_ip: DashMap<IpAddr, u64>,
    max_files: usize,
    max_bytes: u64,
    max_ip_bytes: u64,
}

impl AttachmentStore {
    /// A store holding each webchat session to `uploads_per_session` and
    /// `upload_bytes_per_session`.
    pub fn new(config: &crate::config::Config) -> Self {
        AttachmentStore {
            max_files: config.uploads_per_session,
            max_bytes: config.upload_bytes_per_session,
            max_ip_bytes: config.upload_bytes_per_ip,
            ..AttachmentStore::default()
        }
    }

    /// Would `who` stay within its quotas with one more file of `size`
    /// bytes? Asked before reading an upload's body; [`AttachmentStore::insert`]
    /// decides.
    pub fn check_quota(&self, who: &Uploader, size: u64) -> Result<(), ApiError> {
        let held = self.held_by(&who.session);
        self.within(held, size)?;
        self.within_ip(who.ip.map_or(0, |ip| self.held_by_ip(&ip)), size)
    }

    fn within_ip(&self, held: u64, size: u64) -> Result<(), ApiError> {
        if self.max_ip_bytes > 0 && held.saturating_add(size) > self.max_ip_bytes {
            return Err(ApiError::RateLimitedFor {
                message: format!(
                    "the webchat sessions of one address may hold at most {} bytes of \
                     files at once ({held} held)",
                    self.max_ip_bytes
                ),
                retry_after: Duration::from_secs(60),
            });
        }
        Ok(())
    }

    fn within(&self, held: Held, size: u64) -> Result<(), ApiError> {
        let over = if self.max_files > 0 && held.files >= self.max_files {
            Some(format!(
                "a webchat session may hold at most {} files at once",
                self.max_files
            ))
        } else if self.max_bytes > 0 && held.bytes.saturating_add(size) > self.max_bytes {
            Some(format!(
                "a webchat session may hold at most {} bytes of files at once \
                 ({} held)",
                self.max_bytes, held.bytes
            ))
        } else {
            None
        };
        match over {
            // Files leave memory with their conversations, or unused after
            // the history retention: no precise time to give.
            Some(message) => Err(ApiError::RateLimitedFor {
                message,
                retry_after: Duration::from_secs(60),
            }),
            None => Ok(()),
        }
    }

    /// Store a file. An upload by a webchat customer counts against its
    /// session's and its address's quotas and is refused (`rate_limited`)
    /// over either.
    pub fn insert(
        &self,
        meta: AttachmentMeta,
        bytes: Bytes,
        uploader: Option<Uploader>,
    ) -> Result<(), ApiError> {
        if let Some(who) = &uploader {
            self.reserve(who, meta.size)?;
        }
        let stored = StoredAttachment {
            meta: meta.clone(),
            bytes,
            readers: Mutex::new(uploader.iter().map(|u| u.session.clone()).collect()),
            uploaded: Instant::now(),
            uses: AtomicUsize::new(0),
            uploader,
        };
        self.files.insert(meta.id, Arc::new(stored));
        Ok(())
    }

    /// Take `size` bytes and a file of `who`'s quotas, or say which is full.
    /// The address first, then the session, each entry locked alone.
    fn reserve(&self, who: &Uploader, size: u64) -> Result<(), ApiError> {
        if let Some(ip) = who.ip {
            let mut held = self.held_by_ip.entry(ip).or_insert(0);
            if let Err(e) = self.within_ip(*held, size) {
                drop(held);
                self.held_by_ip.remove_if(&ip, |_, h| *h == 0);
                return Err(e);
            }
            *held += size;
        }
        let mut held = self.held.entry(who.session.clone()).or_default();
        if let Err(e) = self.within(*held, size) {
            drop(held);
            self.held.remove_if(&who.session, |_, h| h.files == 0);
            self.give_back_ip(who.ip, size);
            return Err(e);
        }
        held.files += 1;
        held.bytes += size;
        Ok(())
    }

    fn give_back_ip(&self, ip: Option<IpAddr>, size: u64) {
        if let Some(ip) = ip {
            self.held_by_ip.remove_if_mut(&ip, |_, h| {
                *h = h.saturating_sub(size);
                *h == 0
            });
        }
    }

    /// What `session` holds now.
    pub fn held_by(&self, session: &Id) -> Held {
        self.held.get(session).map(|h| *h).unwrap_or_default()
    }

    /// Bytes the sessions of `ip` hold now.
    pub fn held_by_ip(&self, ip: &IpAddr) -> u64 {
        self.held_by_ip.get(ip).map_or(0, |h| *h)
    }

    /// A file left the store: its uploader's shares come back.
    fn gone(&self, file: &StoredAttachment) {
        if let Some(who) = &file.uploader {
            self.held.remove_if_mut(&who.session, |_, h| {
                h.files = h.files.saturating_sub(1);
                h.bytes = h.bytes.saturating_sub(file.meta.size);
                h.files == 0
            });
            self.give_back_ip(who.ip, file.meta.size);
        }
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
        let removed = self.files.remove_if(id, |_, f| {
            let before = f
                .uses
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .unwrap_or(0);
            before == 1
        });
        if let Some((_, file)) = removed {
            self.gone(&file);
        }
    }

    /// Drops files that no message carries and that were uploaded more than
    /// `older_than` ago; returns how many.
    pub fn sweep_unused(&self, older_than: Duration) -> usize {
        let mut swept = Vec::new();
        self.files.retain(|_, f| {
            let keep = f.uses.load(Ordering::Relaxed) > 0 || f.uploaded.elapsed() < older_than;
            if !keep {
                swept.push(Arc::clone(f));
            }
            keep
        });
        // Outside the files map's lock.
        for file in &swept {
            self.gone(file);
        }
        swept.len()
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
        store
            .insert(
                meta("att_1"),
                Bytes::from_static(b"abc"),
                Some(who("wc_1", None)),
            )
            .unwrap();
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
        store
            .insert(meta("att_1"), Bytes::from_static(b"abc"), None)
            .unwrap();
        store
            .insert(meta("att_2"), Bytes::from_static(b"abc"), None)
            .unwrap();
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
        store
            .insert(meta("att_3"), Bytes::from_static(b"abc"), None)
            .unwrap();
        assert_eq!(
            store.sweep_unused(Duration::from_secs(3600)),
            0,
            "too young"
        );
        assert!(store.get("att_3").is_some());
    }

    fn who(session: &str, ip: Option<&str>) -> Uploader {
        Uploader {
            session: session.into(),
            ip: ip.map(|i| i.parse().unwrap()),
        }
    }

    #[test]
    fn a_session_holds_a_bounded_number_of_files_and_bytes() {
        let config = crate::config::Config {
            uploads_per_session: 2,
            upload_bytes_per_session: 5,
            ..crate::config::Config::default()
        };
        let store = AttachmentStore::new(&config);
        let wc: Id = "wc_1".into();
        let me = who("wc_1", None);
        store
            .insert(meta("att_1"), Bytes::from_static(b"abc"), Some(me.clone()))
            .unwrap();
        // 3 + 3 bytes is over 5.
        let e = store
            .insert(meta("att_2"), Bytes::from_static(b"abc"), Some(me.clone()))
            .unwrap_err();
        assert_eq!(e.code(), "rate_limited");
        assert!(store.get("att_2").is_none(), "nothing stored when refused");
        let mut small = meta("att_3");
        small.size = 1;
        store
            .insert(small, Bytes::from_static(b"a"), Some(me.clone()))
            .unwrap();
        assert_eq!(store.held_by(&wc), Held { files: 2, bytes: 4 });
        let mut tiny = meta("att_4");
        tiny.size = 1;
        let e = store.check_quota(&me, 1).unwrap_err();
        assert!(e.to_string().contains("at most 2 files"), "{e}");
        assert!(store
            .insert(tiny, Bytes::from_static(b"a"), Some(me.clone()))
            .is_err());
        // Agents and admins are not held to it.
        store
            .insert(meta("att_5"), Bytes::from_static(b"abc"), None)
            .unwrap();
        // Sent and forgotten, or swept unused: the share comes back.
        store.acquire("att_1");
        store.release("att_1");
        assert_eq!(store.held_by(&wc), Held { files: 1, bytes: 1 });
        assert_eq!(store.sweep_unused(Duration::ZERO), 2);
        assert_eq!(store.held_by(&wc), Held::default());
        assert!(
            store.held.is_empty(),
            "no entry left for a session holding nothing"
        );
    }

    #[test]
    fn the_sessions_of_one_address_hold_a_bounded_number_of_bytes() {
        let config = crate::config::Config {
            upload_bytes_per_ip: 5,
            ..crate::config::Config::default()
        };
        let store = AttachmentStore::new(&config);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        store
            .insert(
                meta("att_1"),
                Bytes::from_static(b"abc"),
                Some(who("wc_1", Some("192.0.2.1"))),
            )
            .unwrap();
        // Another session from the same address: 3 + 3 is over 5.
        let e = store
            .insert(
                meta("att_2"),
                Bytes::from_static(b"abc"),
                Some(who("wc_2", Some("192.0.2.1"))),
            )
            .unwrap_err();
        assert!(e.to_string().contains("of one address"), "{e}");
        assert!(
            store.held.get(&Id::from("wc_2")).is_none(),
            "the refused session holds nothing"
        );
        // Another address is not affected.
        store
            .insert(
                meta("att_3"),
                Bytes::from_static(b"abc"),
                Some(who("wc_3", Some("192.0.2.2"))),
            )
            .unwrap();
        assert_eq!(store.held_by_ip(&ip), 3);
        assert_eq!(store.sweep_unused(Duration::ZERO), 2);
        assert_eq!(store.held_by_ip(&ip), 0);
        assert!(store.held_by_ip.is_empty());
    }
}

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
//! Who may put a stored file into a message is decided here too
//! ([`AttachmentStore::resolve_for`]): its uploader, or anyone in a
//! conversation that already carries it. A file id alone grants nothing.
//! Names of stored files are cleaned once, on the way in
//! ([`sanitize_filename`]), and sent back with [`content_disposition`].
//!
//! With a data dir, each file's bytes are also kept in `<data_dir>/files/<id>`,
//! written and synced before the journal record that stores the file. In
//! cluster mode the server also sets a [`FileReplica`] (the NATS files
//! bucket): a file's bytes are put there before its record too (an upload
//! the replica refuses is refused `unavailable`), and deleted from it when
//! the file leaves the store, so a standby that takes over has every file.
//!
//! What a webchat session may hold at once is bounded (`uploads_per_session`
//! files, `upload_bytes_per_session` bytes), and so is what the sessions of
//! one client address hold together (`upload_bytes_per_ip`): an upload over
//! either is refused with `rate_limited` before it is stored, and the shares
//! come back as files leave memory.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::protocol::{AttachmentMeta, Id};

/// A second home for stored files' bytes besides the data dir: in cluster
/// mode the NATS files bucket (`crate::cluster::Files`), so a standby that
/// takes over has them. Set once with [`AttachmentStore::set_replica`]; a
/// store without one (a single node, tests) works as before.
pub trait FileReplica: Send + Sync {
    /// Keep file `id`'s bytes; an upload is refused if this fails.
    fn put(&self, id: &str, bytes: Bytes) -> BoxFuture<'static, Result<(), String>>;
    /// The file left the store: drop its bytes.
    fn delete(&self, id: &str) -> BoxFuture<'static, Result<(), String>>;
}

/// The store's replica, if one is set.
#[derive(Default)]
struct Replica(OnceLock<Arc<dyn FileReplica>>);

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Replica(set)"
        } else {
            "Replica(none)"
        })
    }
}

/// Who put a file into the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Uploader {
    /// A webchat customer, by session id.
    Customer(Id),
    /// An agent, by agent id.
    Agent(Id),
    /// The admin token: files any agent may send (a shared library).
    Admin,
    /// Downloaded from a provider with an inbound message.
    Provider,
}

/// Who is sending a message that names files by id.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    Customer(&'a str),
    Agent(&'a str),
}

/// Who may read a stored file besides agents and admins.
#[derive(Debug)]
pub struct StoredAttachment {
    pub meta: AttachmentMeta,
    pub bytes: Bytes,
    pub uploader: Uploader,
    /// Webchat sessions allowed to download it: the uploader, and the customer
    /// of every conversation it was sent in.
    readers: Mutex<Vec<Id>>,
    uploaded: Instant,
    /// Messages in conversations still in memory that carry it.
    uses: AtomicUsize,
    /// The webchat session (and address) whose quotas it counts against.
    quota: Option<Quota>,
}

/// A webchat customer's upload: the session and the client address whose
/// quotas it counts against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quota {
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
    /// With a data dir: where each file's bytes are kept (`files/<id>`),
    /// written before the record that stores it.
    dir: Option<PathBuf>,
    /// Cluster mode: where each file's bytes are also put, before the
    /// record that stores it, and deleted from when it leaves the store.
    replica: Replica,
}

impl AttachmentStore {
    /// A store holding each webchat session to `uploads_per_session` and
    /// `upload_bytes_per_session`.
    pub fn new(config: &crate::config::Config) -> Self {
        AttachmentStore {
            max_files: config.uploads_per_session,
            max_bytes: config.upload_bytes_per_session,
            max_ip_bytes: config.upload_bytes_per_ip,
            dir: config.data_dir.as_ref().map(|d| d.join("files")),
            ..AttachmentStore::default()
        }
    }

    /// Also keep every file's bytes in `replica` (cluster mode): put before
    /// the file is stored and recorded, deleted when it leaves the store.
    /// Set once, before the store takes uploads; a second call is ignored
    /// (returns false).
    pub fn set_replica(&self, replica: Arc<dyn FileReplica>) -> bool {
        self.replica.0.set(replica).is_ok()
    }

    /// The file left the store: drop its bytes from the replica, if any,
    /// in the background (a failure leaves an unused copy there, logged).
    fn unreplicate(&self, id: &str) {
        let Some(replica) = self.replica.0.get() else {
            return;
        };
        let (delete, id) = (replica.delete(id), id.to_owned());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move {
                if let Err(e) = delete.await {
                    tracing::warn!(file = %id, error = %e, "deleting a file's replicated copy failed");
                }
            })),
            Err(_) => {
                tracing::warn!(file = %id, "no runtime to delete a file's replicated copy");
            }
        }
    }

    /// Where a file's bytes are kept on disk (with a data dir).
    fn path_of(&self, id: &str) -> Option<PathBuf> {
        // Ids are the broker's own (`ids::attachment_id`): no separators.
        self.dir.as_ref().map(|d| d.join(id))
    }

    /// With a data dir: write a file's bytes to disk and sync them, off the
    /// executor, before the file is stored and recorded (so no record names
    /// a file that is not there). Without one: nothing to do.
    ///
    /// With a replica (cluster mode), the bytes are put there too, after
    /// the local write; if that fails the file is refused (`unavailable`)
    /// and its local copy removed.
    pub async fn persist(&self, id: &str, bytes: &Bytes) -> Result<(), ApiError> {
        self.persist_locally(id, bytes).await?;
        let Some(replica) = self.replica.0.get() else {
            return Ok(());
        };
        if let Err(e) = replica.put(id, bytes.clone()).await {
            if let Some(path) = self.path_of(id) {
                drop(tokio::task::spawn_blocking(move || {
                    std::fs::remove_file(path)
                }));
            }
            return Err(ApiError::Unavailable(format!(
                "the file could not be replicated: {e}"
            )));
        }
        Ok(())
    }

    async fn persist_locally(&self, id: &str, bytes: &Bytes) -> Result<(), ApiError> {
        let (Some(dir), Some(path)) = (self.dir.clone(), self.path_of(id)) else {
            return Ok(());
        };
        let bytes = bytes.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Unavailable(format!(
                "the file could not be stored: {e}"
            ))),
            Err(e) => Err(ApiError::Unavailable(format!(
                "the file could not be stored: {e}"
            ))),
        }
    }

    /// Store a file whose bytes [`AttachmentStore::persist`] wrote: as
    /// [`AttachmentStore::insert`], and if the store refuses it (a quota),
    /// its bytes leave the disk again.
    pub fn insert_persisted(
        &self,
        meta: AttachmentMeta,
        bytes: Bytes,
        uploader: Uploader,
        quota: Option<Quota>,
    ) -> Result<(), ApiError> {
        let id = meta.id.clone();
        self.insert(meta, bytes, uploader, quota).inspect_err(|_| {
            if let Some(path) = self.path_of(&id) {
                drop(tokio::task::spawn_blocking(move || {
                    std::fs::remove_file(path)
                }));
            }
            self.unreplicate(&id);
        })
    }

    /// A file recorded in the journal, back in the store after a restart
    /// with the bytes kept on disk; `false` (nothing stored) if the file
    /// left the store before the restart. Start-up only: it reads the disk.
    pub fn restore(
        &self,
        meta: AttachmentMeta,
        uploader: Uploader,
        quota: Option<Quota>,
        uploaded_at: std::time::SystemTime,
    ) -> bool {
        let Some(bytes) = self.path_of(&meta.id).and_then(|p| std::fs::read(p).ok()) else {
            return false;
        };
        if let Some(who) = &quota {
            // Admitted before the restart: counted whatever the limit now.
            let mut held = self.held.entry(who.session.clone()).or_default();
            held.files += 1;
            held.bytes += meta.size;
            drop(held);
            if let Some(ip) = who.ip {
                *self.held_by_ip.entry(ip).or_insert(0) += meta.size;
            }
        }
        let age = uploaded_at.elapsed().unwrap_or_default();
        let uploaded = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.store(meta, Bytes::from(bytes), uploader, quota, uploaded);
        true
    }

    /// Would `who` stay within its quotas with one more file of `size`
    /// bytes? Asked before reading an upload's body; [`AttachmentStore::insert`]
    /// decides.
    pub fn check_quota(&self, who: &Quota, size: u64) -> Result<(), ApiError> {
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

    /// Store a file, remembering who uploaded it. An upload by a webchat
    /// customer (`quota`) counts against its session's and its address's
    /// quotas and is refused (`rate_limited`) over either.
    pub fn insert(
        &self,
        meta: AttachmentMeta,
        bytes: Bytes,
        uploader: Uploader,
        quota: Option<Quota>,
    ) -> Result<(), ApiError> {
        if let Some(who) = &quota {
            self.reserve(who, meta.size)?;
        }
        self.store(meta, bytes, uploader, quota, Instant::now());
        Ok(())
    }

    /// Put a file in the map: readable by its uploading customer, carried
    /// by no message yet.
    fn store(
        &self,
        meta: AttachmentMeta,
        bytes: Bytes,
        uploader: Uploader,
        quota: Option<Quota>,
        uploaded: Instant,
    ) {
        let readers = match &uploader {
            Uploader::Customer(session) => vec![session.clone()],
            _ => Vec::new(),
        };
        let id = meta.id.clone();
        let stored = StoredAttachment {
            meta,
            bytes,
            uploader,
            readers: Mutex::new(readers),
            uploaded,
            uses: AtomicUsize::new(0),
            quota,
        };
        self.files.insert(id, Arc::new(stored));
    }

    /// Take `size` bytes and a file of `who`'s quotas, or say which is full.
    /// The address first, then the session, each entry locked alone.
    fn reserve(&self, who: &Quota, size: u64) -> Result<(), ApiError> {
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

    /// A file left the store: its uploader's shares come back, and its
    /// bytes leave the disk (off the executor when there is one).
    fn gone(&self, file: &StoredAttachment) {
        self.unreplicate(&file.meta.id);
        if let Some(path) = self.path_of(&file.meta.id) {
            let unlink = move || {
                let _ = std::fs::remove_file(path);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(unlink)),
                Err(_) => unlink(),
            }
        }
        if let Some(who) = &file.quota {
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

    /// Resolve the ids a message names, for its sender: each must be a file
    /// the sender uploaded, one `carried` says its conversation already
    /// holds, or (customers) one sent to them before; agents may also send
    /// what the admin uploaded. Any other id answers exactly as an unknown
    /// one, so ids cannot be probed.
    pub fn resolve_for(
        &self,
        ids: &[String],
        sender: Sender<'_>,
        carried: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Arc<StoredAttachment>>, ApiError> {
        ids.iter()
            .map(|id| {
                self.get(id)
                    .filter(|f| {
                        carried(id)
                            || match (sender, &f.uploader) {
                                (Sender::Customer(me), _) => f.readable_by(me),
                                (Sender::Agent(me), Uploader::Agent(by)) => **by == *me,
                                (Sender::Agent(_), Uploader::Admin) => true,
                                (Sender::Agent(_), _) => false,
                            }
                    })
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

/// Longest stored file name, in bytes (what common file systems allow).
pub const MAX_FILENAME: usize = 255;

/// Characters that change how text around them is shown without being seen
/// themselves: bidirectional controls (`evil\u{202e}gnp.exe` shows as
/// "evilexe.png"), zero-width characters, the byte-order mark, line and
/// paragraph separators.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// A file name as sent by an uploader, made safe to store and show: only
/// its last path component (`/` and `\` both separate), without control
/// and invisible formatting characters, without leading dots or spaces,
/// at most [`MAX_FILENAME`] bytes (cut on a character boundary, keeping
/// an extension of up to 16 bytes); `file` when nothing is left.
pub fn sanitize_filename(name: Option<&str>) -> String {
    let name = name.unwrap_or_default();
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|&c| !c.is_control() && !invisible(c))
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', ' ']).trim_end();
    if cleaned.is_empty() {
        return "file".into();
    }
    if cleaned.len() <= MAX_FILENAME {
        return cleaned.to_owned();
    }
    let ext = cleaned
        .rfind('.')
        .map(|i| &cleaned[i..])
        .filter(|e| e.len() <= 16)
        .unwrap_or_default();
    let mut stem_end = MAX_FILENAME - ext.len();
    while !cleaned.is_char_boundary(stem_end) {
        stem_end -= 1;
    }
    format!("{}{ext}", &cleaned[..stem_end])
}

/// `Content-Disposition` for a download (RFC 6266): `attachment`, an ASCII
/// `filename` for old clients (anything else, quotes and backslashes as
/// `_`) and the exact name as `filename*` (RFC 5987: UTF-8,
/// percent-encoded).
pub fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(filename.len() * 3);
    for b in filename.bytes() {
        let attr_char = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        if attr_char {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
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
                Uploader::Customer("wc_1".into()),
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
    fn a_message_names_only_files_its_sender_may_send() {
        let store = AttachmentStore::default();
        store
            .insert(
                meta("att_c"),
                Bytes::from_static(b"abc"),
                Uploader::Customer("wc_a".into()),
                None,
            )
            .unwrap();
        store
            .insert(
                meta("att_g"),
                Bytes::from_static(b"abc"),
                Uploader::Agent("alice".into()),
                None,
            )
            .unwrap();
        store
            .insert(
                meta("att_lib"),
                Bytes::from_static(b"abc"),
                Uploader::Admin,
                None,
            )
            .unwrap();
        let none = |_: &str| false;
        let ok = |ids: &[&str], sender| {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            store.resolve_for(&ids, sender, &none).is_ok()
        };
        assert!(ok(&["att_c"], Sender::Customer("wc_a")));
        assert!(!ok(&["att_c"], Sender::Customer("wc_b")));
        assert!(!ok(&["att_g"], Sender::Customer("wc_a")));
        assert!(ok(&["att_g", "att_lib"], Sender::Agent("alice")));
        assert!(!ok(&["att_g"], Sender::Agent("bob")));
        assert!(!ok(&["att_c"], Sender::Agent("bob")));
        // Not yours answers as unknown.
        let err = store
            .resolve_for(&["att_c".into()], Sender::Agent("bob"), &none)
            .unwrap_err();
        assert_eq!(
            err,
            ApiError::NotFound("attachment att_c does not exist".into())
        );
        // Already in the conversation: anyone in it may send it again.
        let carried = |id: &str| id == "att_c";
        assert!(store
            .resolve_for(&["att_c".into()], Sender::Agent("bob"), &carried)
            .is_ok());
        // Sent to a customer: theirs to forward.
        store.get("att_g").unwrap().grant(&"wc_b".into());
        assert!(ok(&["att_g"], Sender::Customer("wc_b")));
    }

    #[test]
    fn filenames_are_sanitized() {
        assert_eq!(sanitize_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(sanitize_filename(Some("a\\b\\c.pdf")), "c.pdf");
        assert_eq!(sanitize_filename(None), "file");
        assert_eq!(sanitize_filename(Some("\u{0}")), "file");
        assert_eq!(
            sanitize_filename(Some("evil\u{202e}gnp.exe")),
            "evilgnp.exe"
        );
        assert_eq!(
            sanitize_filename(Some("\u{2066}a\u{200b}b\u{feff}\r\n.txt")),
            "ab.txt"
        );
        assert_eq!(sanitize_filename(Some("..hidden")), "hidden");
        assert_eq!(sanitize_filename(Some("/")), "file");
        assert_eq!(sanitize_filename(Some("résumé.pdf")), "résumé.pdf");
        let long = format!("{}.pdf", "é".repeat(300));
        let cut = sanitize_filename(Some(&long));
        assert!(cut.len() <= MAX_FILENAME, "{}", cut.len());
        assert!(cut.ends_with("é.pdf"), "{cut}");
    }

    #[test]
    fn content_disposition_carries_the_exact_name_encoded() {
        assert_eq!(
            content_disposition("a b.pdf"),
            "attachment; filename=\"a b.pdf\"; filename*=UTF-8''a%20b.pdf"
        );
        assert_eq!(
            content_disposition("ré\"s.png"),
            "attachment; filename=\"r__s.png\"; filename*=UTF-8''r%C3%A9%22s.png"
        );
    }

    /// A replica that records what it is asked, and refuses puts of ids
    /// starting with `bad`.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl FileReplica for Recorder {
        fn put(&self, id: &str, bytes: Bytes) -> BoxFuture<'static, Result<(), String>> {
            self.calls.lock().push(format!("put {id} {}", bytes.len()));
            let refused = id.starts_with("bad");
            Box::pin(async move {
                if refused {
                    Err("the bucket is away".to_owned())
                } else {
                    Ok(())
                }
            })
        }

        fn delete(&self, id: &str) -> BoxFuture<'static, Result<(), String>> {
            self.calls.lock().push(format!("delete {id}"));
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn a_replica_gets_every_file_before_it_is_stored_and_loses_it_after() {
        let data = tempfile::tempdir().expect("temp dir");
        let store = AttachmentStore {
            dir: Some(data.path().join("files")),
            ..AttachmentStore::default()
        };
        let replica = Arc::new(Recorder::default());
        assert!(store.set_replica(replica.clone()));
        let bytes = Bytes::from_static(b"abc");
        store.persist("att_1", &bytes).await.expect("persist");
        assert!(data.path().join("files/att_1").exists());
        // The replica refuses: so is the upload, and the local copy goes.
        let err = store.persist("bad_1", &bytes).await.expect_err("refused");
        assert!(matches!(&err, ApiError::Unavailable(m) if m.contains("the bucket is away")));
        store
            .insert_persisted(meta("att_1"), bytes, Uploader::Admin, None)
            .expect("insert");
        store.acquire("att_1");
        store.release("att_1");
        // The deletes run in the background.
        for _ in 0..100 {
            if replica.calls.lock().len() == 3 && !data.path().join("files/bad_1").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *replica.calls.lock(),
            ["put att_1 3", "put bad_1 3", "delete att_1"]
        );
        assert!(!data.path().join("files/bad_1").exists());
    }

    #[test]
    fn files_go_with_their_last_message_or_unused_after_the_retention() {
        let store = AttachmentStore::default();
        store
            .insert(
                meta("att_1"),
                Bytes::from_static(b"abc"),
                Uploader::Provider,
                None,
            )
            .unwrap();
        store
            .insert(
                meta("att_2"),
                Bytes::from_static(b"abc"),
                Uploader::Provider,
                None,
            )
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
            .insert(
                meta("att_3"),
                Bytes::from_static(b"abc"),
                Uploader::Provider,
                None,
            )
            .unwrap();
        assert_eq!(
            store.sweep_unused(Duration::from_secs(3600)),
            0,
            "too young"
        );
        assert!(store.get("att_3").is_some());
    }

    fn who(session: &str, ip: Option<&str>) -> Quota {
        Quota {
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
            .insert(
                meta("att_1"),
                Bytes::from_static(b"abc"),
                Uploader::Customer(me.session.clone()),
                Some(me.clone()),
            )
            .unwrap();
        // 3 + 3 bytes is over 5.
        let e = store
            .insert(
                meta("att_2"),
                Bytes::from_static(b"abc"),
                Uploader::Customer(me.session.clone()),
                Some(me.clone()),
            )
            .unwrap_err();
        assert_eq!(e.code(), "rate_limited");
        assert!(store.get("att_2").is_none(), "nothing stored when refused");
        let mut small = meta("att_3");
        small.size = 1;
        store
            .insert(
                small,
                Bytes::from_static(b"a"),
                Uploader::Customer(me.session.clone()),
                Some(me.clone()),
            )
            .unwrap();
        assert_eq!(store.held_by(&wc), Held { files: 2, bytes: 4 });
        let mut tiny = meta("att_4");
        tiny.size = 1;
        let e = store.check_quota(&me, 1).unwrap_err();
        assert!(e.to_string().contains("at most 2 files"), "{e}");
        assert!(store
            .insert(
                tiny,
                Bytes::from_static(b"a"),
                Uploader::Customer(me.session.clone()),
                Some(me.clone())
            )
            .is_err());
        // Agents and admins are not held to it.
        store
            .insert(
                meta("att_5"),
                Bytes::from_static(b"abc"),
                Uploader::Provider,
                None,
            )
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
                Uploader::Customer("wc_1".into()),
                Some(who("wc_1", Some("192.0.2.1"))),
            )
            .unwrap();
        // Another session from the same address: 3 + 3 is over 5.
        let e = store
            .insert(
                meta("att_2"),
                Bytes::from_static(b"abc"),
                Uploader::Customer("wc_2".into()),
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
                Uploader::Customer("wc_3".into()),
                Some(who("wc_3", Some("192.0.2.2"))),
            )
            .unwrap();
        assert_eq!(store.held_by_ip(&ip), 3);
        assert_eq!(store.sweep_unused(Duration::ZERO), 2);
        assert_eq!(store.held_by_ip(&ip), 0);
        assert!(store.held_by_ip.is_empty());
    }
}

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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::protocol::{AttachmentMeta, Id};

/// Who put a file into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Store a file a webchat customer uploaded (`Some(session)`) or one
    /// downloaded from a provider (`None`).
    pub fn insert(&self, meta: AttachmentMeta, bytes: Bytes, uploader_session: Option<Id>) {
        let uploader = match uploader_session {
            Some(session) => Uploader::Customer(session),
            None => Uploader::Provider,
        };
        self.insert_by(meta, bytes, uploader);
    }

    /// Store a file, remembering who uploaded it.
    pub fn insert_by(&self, meta: AttachmentMeta, bytes: Bytes, uploader: Uploader) {
        let readers = match &uploader {
            Uploader::Customer(session) => vec![session.clone()],
            _ => Vec::new(),
        };
        let stored = StoredAttachment {
            meta: meta.clone(),
            bytes,
            uploader,
            readers: Mutex::new(readers),
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
    fn a_message_names_only_files_its_sender_may_send() {
        let store = AttachmentStore::default();
        store.insert_by(
            meta("att_c"),
            Bytes::from_static(b"abc"),
            Uploader::Customer("wc_a".into()),
        );
        store.insert_by(
            meta("att_g"),
            Bytes::from_static(b"abc"),
            Uploader::Agent("alice".into()),
        );
        store.insert_by(meta("att_lib"), Bytes::from_static(b"abc"), Uploader::Admin);
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

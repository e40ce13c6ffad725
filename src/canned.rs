//! Canned responses: the library of saved replies agents send by id or
//! insert into the desk's composer, global or for one queue, with
//! placeholders (`{{customer.name}}`, `{{agent.name}}`, `{{queue.name}}`) the
//! broker fills in.
//!
//! The library lives in the registry ([`CannedLibrary`]), not in an actor of
//! its own: a conversation reads it synchronously while it handles an agent's
//! `send`, so a reply by id is checked, filled and stored in the order the
//! agent sent it (a round trip to another actor would let the agent's next
//! plain `send` overtake it), and no mailbox hop is added to the send path.
//! Reads take a `parking_lot` read lock for a map lookup and an `Arc` clone;
//! writes (admin calls, rare) take the write lock for one event. Nothing is
//! awaited under the lock.
//!
//! Every change is a [`CannedEvent`] applied by [`CannedState::apply`], the
//! one place the library changes (the journal records these values). The
//! checks — ids, lengths, the bound on responses, placeholders — run before
//! an event is made, so `apply` takes only events that are valid.
//!
//! [`QueueNames`] is the broker's copy of each queue's display name for
//! `{{queue.name}}`: the router writes it as its queue definitions change
//! (in `Router::apply`), everyone else only reads it.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::profile::valid_id;

/// The placeholders the broker fills in; anything else between `{{` and `}}`
/// is refused when a response is saved.
pub const PLACEHOLDERS: [&str; 3] = ["customer.name", "agent.name", "queue.name"];

/// Longest title, in characters.
pub const MAX_TITLE: usize = 100;

/// One saved reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CannedResponse {
    pub id: String,
    pub title: String,
    /// The template: text with placeholders.
    pub text: String,
    /// The queue whose conversations may use it; `None`: every queue.
    pub queue: Option<String>,
}

/// A response as an admin writes it (`POST`, and `[[canned_responses]]` in
/// the configuration file): the id is generated when absent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedDraft {
    #[serde(default)]
    pub id: Option<String>,
    pub title: String,
    pub text: String,
    #[serde(default)]
    pub queue: Option<String>,
}

/// `PATCH`: the fields given replace the stored ones. `queue: null` makes the
/// response global; an absent `queue` leaves it as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedPatch {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub queue: Option<Option<String>>,
}

/// A field that may be given as null: `Some(None)` when it was.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Every change to the library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CannedEvent {
    /// Created or replaced.
    Saved(CannedResponse),
    Deleted {
        id: String,
    },
}

/// The library's state: every response by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CannedState {
    pub responses: BTreeMap<String, Arc<CannedResponse>>,
}

impl CannedState {
    /// The one place the library changes.
    pub fn apply(&mut self, event: CannedEvent) {
        match event {
            CannedEvent::Saved(r) => {
                self.responses.insert(r.id.clone(), Arc::new(r));
            }
            CannedEvent::Deleted { id } => {
                self.responses.remove(&id);
            }
        }
    }
}

/// The values placeholders are filled with, for one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FillValues {
    /// `None` when the customer has no name of its own.
    pub customer_name: Option<String>,
    pub agent_name: String,
    pub queue_name: String,
}

impl FillValues {
    /// The customer's name, or `None` when it is missing: empty, or only the
    /// customer's address (what provider channels keep for a customer whose
    /// profile gives no name, e.g. every SMS customer).
    pub fn customer(name: &str, address: &str) -> Option<String> {
        let name = name.trim();
        (!name.is_empty() && name != address.trim()).then(|| name.to_owned())
    }
}

/// One piece of a template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    /// A placeholder's name and its fallback (`{{customer.name|there}}`).
    Slot(&'a str, Option<&'a str>),
}

/// Split a template into text and placeholders; an unclosed `{{` or an
/// unknown placeholder is an error naming it.
fn parse(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            let shown: String = rest[start..].chars().take(30).collect();
            return Err(format!(
                "unclosed placeholder {shown:?}: close it with }}}}"
            ));
        };
        let inner = &after[..end];
        let (name, fallback) = match inner.split_once('|') {
            Some((n, f)) => (n.trim(), Some(f)),
            None => (inner.trim(), None),
        };
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{{{inner}}}}}: the broker fills in only {}",
                PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
            ));
        }
        if fallback.is_some_and(|f| f.contains("{{")) {
            return Err(format!(
                "placeholder {{{{{inner}}}}}: a fallback cannot hold another placeholder"
            ));
        }
        pieces.push(Piece::Slot(name, fallback));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// The template filled in for one conversation. A missing value (only the
/// customer's name can be missing) becomes the placeholder's fallback, or
/// nothing. Templates are checked when saved; one that no longer parses
/// (impossible through the library) is sent as written.
pub fn fill(text: &str, values: &FillValues) -> String {
    let Ok(pieces) = parse(text) else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len() + 32);
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Slot(name, fallback) => {
                let value = match name {
                    "customer.name" => values.customer_name.as_deref(),
                    "agent.name" => Some(values.agent_name.as_str()),
                    _ => Some(values.queue_name.as_str()),
                };
                out.push_str(value.or(fallback).unwrap_or(""));
            }
        }
    }
    out
}

/// The limits a response is checked against.
#[derive(Debug, Clone, Copy)]
pub struct CannedLimits {
    /// Most responses in the library.
    pub max_responses: usize,
    /// Longest template, in characters.
    pub max_text: usize,
}

/// Check a response's title, text and placeholders (the queue is checked by
/// the caller, which knows the queues).
pub fn check(response: &CannedResponse, limits: CannedLimits) -> Result<(), ApiError> {
    valid_id(&response.id).map_err(|_| {
        ApiError::BadRequest(format!(
            "canned response id {:?}: must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
            response.id
        ))
    })?;
    let title = response.title.chars().count();
    if response.title.trim().is_empty() || title > MAX_TITLE {
        return Err(ApiError::BadRequest(format!(
            "title must be 1-{MAX_TITLE} characters (it has {title})"
        )));
    }
    if response.text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "text must not be empty: a canned response is sent as a message".into(),
        ));
    }
    let chars = response.text.chars().count();
    if chars > limits.max_text {
        return Err(ApiError::TextTooLong(format!(
            "text has {chars} characters; a canned response holds at most {} (max_canned_text)",
            limits.max_text
        )));
    }
    parse(&response.text).map_err(ApiError::BadRequest)?;
    Ok(())
}

/// The library, as the registry holds it: the state behind a read-write lock
/// and the limits it is checked against. Changes go through the methods
/// here, each one event.
pub struct CannedLibrary {
    state: RwLock<CannedState>,
    limits: CannedLimits,
    /// Where each change is written before it is applied (the journal,
    /// set once at start when the broker keeps one), under the same lock,
    /// so the journal has the changes in the order they were applied.
    journal: std::sync::OnceLock<JournalSink>,
}

/// What writes a library change to the journal.
type JournalSink = Box<dyn Fn(&CannedEvent) + Send + Sync>;

impl CannedLibrary {
    pub fn new(limits: CannedLimits) -> Self {
        CannedLibrary {
            state: RwLock::new(CannedState::default()),
            limits,
            journal: std::sync::OnceLock::new(),
        }
    }

    /// The library with the configured responses (`[[canned_responses]]`,
    /// checked when the configuration loaded; again here for configurations
    /// built in code, where one that fails is left out with an error logged).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let library = CannedLibrary::new(config.canned_limits());
        for draft in &config.canned_responses {
            if let Err(e) = library.create(draft.clone()) {
                tracing::error!("canned response {:?} not loaded: {e}", draft.id);
            }
        }
        library
    }

    /// The one door to [`CannedState::apply`].
    fn apply(&self, event: CannedEvent) {
        let mut state = self.state.write();
        self.write(&event);
        state.apply(event);
    }

    /// Write a change to the journal, if one is set.
    fn write(&self, event: &CannedEvent) {
        if let Some(journal) = self.journal.get() {
            journal(event);
        }
    }

    /// From now on every change is handed to `journal` before it is applied
    /// (the responses of the configuration file, created before, are not:
    /// the file brings them back).
    pub fn journal_to(&self, journal: impl Fn(&CannedEvent) + Send + Sync + 'static) {
        let _ = self.journal.set(Box::new(journal));
    }

    /// A change read back from the journal, applied without writing it.
    pub fn replay(&self, event: CannedEvent) {
        self.state.write().apply(event);
    }

    pub fn get(&self, id: &str) -> Option<Arc<CannedResponse>> {
        self.state.read().responses.get(id).cloned()
    }

    /// Every response `keep` accepts, by title (then id).
    pub fn list(&self, keep: impl Fn(&CannedResponse) -> bool) -> Vec<Arc<CannedResponse>> {
        let mut out: Vec<Arc<CannedResponse>> = self
            .state
            .read()
            .responses
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            a.title
                .to_lowercase()
                .cmp(&b.title.to_lowercase())
                .then_with(|| a.id.cmp(&b.id))
        });
        out
    }

    /// A new response (`POST`, the configuration file). `id`: the draft's
    /// or a fresh `cr_…`. The queue must have been checked by the caller.
    pub fn create(&self, draft: CannedDraft) -> Result<CannedResponse, ApiError> {
        let response = CannedResponse {
            id: draft
                .id
                .unwrap_or_else(|| crate::ids::IdGen.canned_response()),
            title: draft.title,
            text: draft.text,
            queue: draft.queue,
        };
        check(&response, self.limits)?;
        // Count and insert under one lock: two racing creates cannot pass
        // the bound together.
        let mut state = self.state.write();
        if state.responses.contains_key(&response.id) {
            return Err(ApiError::Conflict(format!(
                "canned response {} already exists",
                response.id
            )));
        }
        if state.responses.len() >= self.limits.max_responses {
            return Err(ApiError::Conflict(format!(
                "the library holds {} canned responses, the most it may (max_canned_responses); \
                 delete one first",
                state.responses.len()
            )));
        }
        let event = CannedEvent::Saved(response.clone());
        self.write(&event);
        state.apply(event);
        Ok(response)
    }

    /// `PATCH`: the given fields over the stored response. The new queue
    /// must have been checked by the caller.
    pub fn patch(&self, id: &str, patch: CannedPatch) -> Result<CannedResponse, ApiError> {
        if patch.id.as_deref().is_some_and(|new| new != id) {
            return Err(ApiError::BadRequest(
                "id cannot be changed; create a new canned response instead".into(),
            ));
        }
        let mut state = self.state.write();
        let mut response = state
            .responses
            .get(id)
            .map(|r| CannedResponse::clone(r))
            .ok_or_else(|| not_found(id))?;
        if let Some(title) = patch.title {
            response.title = title;
        }
        if let Some(text) = patch.text {
            response.text = text;
        }
        if let Some(queue) = patch.queue {
            response.queue = queue;
        }
        check(&response, self.limits)?;
        let event = CannedEvent::Saved(response.clone());
        self.write(&event);
        state.apply(event);
        Ok(response)
    }

    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        if self.get(id).is_none() {
            return Err(not_found(id));
        }
        self.apply(CannedEvent::Deleted { id: id.to_owned() });
        Ok(())
    }
}

/// `not_found` for a canned response id.
pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("canned response {id} does not exist"))
}

/// Each queue's display name, as the router last defined it: what
/// `{{queue.name}}` becomes. Written only by the router, as its queue
/// definitions change.
#[derive(Default)]
pub struct QueueNames(DashMap<String, String>);

impl QueueNames {
    pub fn set(&self, id: &str, name: &str) {
        self.0.insert(id.to_owned(), name.to_owned());
    }

    pub fn remove(&self, id: &str) {
        self.0.remove(id);
    }

    /// The queue's name; a queue deleted since (its tasks keep its id) is
    /// named by its id.
    pub fn name(&self, id: &str) -> String {
        self.0
            .get(id)
            .map_or_else(|| id.to_owned(), |e| e.value().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CannedLimits = CannedLimits {
        max_responses: 2,
        max_text: 40,
    };

    fn values(customer: Option<&str>) -> FillValues {
        FillValues {
            customer_name: customer.map(String::from),
            agent_name: "Alice".into(),
            queue_name: "Billing".into(),
        }
    }

    fn draft(id: &str, text: &str) -> CannedDraft {
        CannedDraft {
            id: Some(id.into()),
            title: format!("Title {id}"),
            text: text.into(),
            queue: None,
        }
    }

    #[test]
    fn fills_every_placeholder_and_fallbacks() {
        let t = "Hi {{customer.name|there}}, {{ agent.name }} of {{queue.name}} here.";
        assert_eq!(
            fill(t, &values(Some("Dana"))),
            "Hi Dana, Alice of Billing here."
        );
        assert_eq!(fill(t, &values(None)), "Hi there, Alice of Billing here.");
        assert_eq!(fill("Hi {{customer.name}}!", &values(None)), "Hi !");
        assert_eq!(fill("no placeholders", &values(None)), "no placeholders");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_named() {
        let limits = LIMITS;
        let mut r = CannedResponse {
            id: "x".into(),
            title: "T".into(),
            text: "Hi {{customer.email}}".into(),
            queue: None,
        };
        let err = check(&r, limits).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest(m) if m.contains("{{customer.email}}")),
            "{err:?}"
        );
        r.text = "Hi {{customer.name".into();
        let err = check(&r, limits).unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest(m) if m.contains("unclosed")),
            "{err:?}"
        );
        r.text = "Hi {{customer.name|{{agent.name}}}}".into();
        assert!(check(&r, limits).is_err());
        r.text = "Hi {{customer.name}}".into();
        assert!(check(&r, limits).is_ok());
    }

    #[test]
    fn missing_customer_name_is_empty_or_the_address() {
        assert_eq!(FillValues::customer("Dana", "wc_1"), Some("Dana".into()));
        assert_eq!(FillValues::customer("+15550001", "+15550001"), None);
        assert_eq!(FillValues::customer("  ", "x"), None);
    }

    #[test]
    fn library_bounds_ids_and_lengths() {
        let lib = CannedLibrary::new(LIMITS);
        lib.create(draft("a", "one")).unwrap();
        assert!(matches!(
            lib.create(draft("a", "again")),
            Err(ApiError::Conflict(_))
        ));
        assert!(matches!(
            lib.create(draft("b", &"x".repeat(41))),
            Err(ApiError::TextTooLong(_))
        ));
        assert!(matches!(
            lib.create(draft("no spaces", "x")),
            Err(ApiError::BadRequest(_))
        ));
        lib.create(draft("b", "two")).unwrap();
        assert!(matches!(
            lib.create(draft("c", "three")),
            Err(ApiError::Conflict(m)) if m.contains("max_canned_responses")
        ));
        let generated = CannedLibrary::new(LIMITS)
            .create(CannedDraft {
                id: None,
                ..draft("z", "t")
            })
            .unwrap();
        assert!(generated.id.starts_with("cr_"), "{}", generated.id);
    }

    #[test]
    fn patch_and_delete_are_events_a_replay_repeats() {
        let lib = CannedLibrary::new(LIMITS);
        let mut events = Vec::new();
        let saved = lib.create(draft("a", "one")).unwrap();
        events.push(CannedEvent::Saved(saved));
        let patched = lib
            .patch(
                "a",
                CannedPatch {
                    text: Some("Hello {{agent.name}}".into()),
                    queue: Some(Some("billing".into())),
                    ..CannedPatch::default()
                },
            )
            .unwrap();
        assert_eq!(patched.queue.as_deref(), Some("billing"));
        events.push(CannedEvent::Saved(patched));
        assert!(matches!(
            lib.patch(
                "a",
                CannedPatch {
                    id: Some("b".into()),
                    ..CannedPatch::default()
                }
            ),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            lib.patch(
                "a",
                CannedPatch {
                    text: Some("{{nope}}".into()),
                    ..CannedPatch::default()
                }
            ),
            Err(ApiError::BadRequest(_))
        ));
        lib.delete("a").unwrap();
        events.push(CannedEvent::Deleted { id: "a".into() });
        assert!(matches!(lib.delete("a"), Err(ApiError::NotFound(_))));

        // The same events, through the journal codec, rebuild the same state.
        let mut replayed = CannedState::default();
        for e in &events[..2] {
            let bytes = crate::codec::encode(e).unwrap();
            replayed.apply(crate::codec::decode(&bytes).unwrap());
        }
        assert_eq!(replayed.responses["a"].text, "Hello {{agent.name}}");
        replayed.apply(events[2].clone());
        assert_eq!(replayed, *lib.state.read());
    }

    #[test]
    fn patch_queue_null_makes_it_global() {
        let p: CannedPatch = serde_json::from_str(r#"{"queue":null}"#).unwrap();
        assert_eq!(p.queue, Some(None));
        let p: CannedPatch = serde_json::from_str(r#"{"title":"x"}"#).unwrap();
        assert_eq!(p.queue, None);
    }
}

//! The event types a webhook endpoint can hear, and the `events` filter of a
//! `[[webhooks]]` entry (exact names and `prefix.*` globs) as a bit set.
//!
//! Adding a type is one line in the [`event_kinds!`] list below (then emit it
//! where it happens, with [`Webhooks::emit`](super::Webhooks::emit)): its
//! name, the filter, the configuration check and the documentation test all
//! read this list.

use std::fmt;

/// Declares [`EventKind`] with one variant per `Variant => "name"` line.
macro_rules! event_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// One webhook event type.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($variant,)*
        }

        impl EventKind {
            /// Every type, in the documented order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// The `type` of its payload.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    TaskCreated => "task.created",
    TaskOffered => "task.offered",
    TaskAccepted => "task.accepted",
    TaskRejected => "task.rejected",
    TaskTimeout => "task.timeout",
    TaskRequeued => "task.requeued",
    TaskTransferred => "task.transferred",
    TaskParked => "task.parked",
    TaskWrapping => "task.wrapping",
    TaskCompleted => "task.completed",
    TaskCanceled => "task.canceled",
    MessageCreated => "message.created",
    MessageStatus => "message.status",
    AgentActivity => "agent.activity",
    ConversationEnded => "conversation.ended",
    SupervisorAction => "supervisor.action",
}

// A filter is a u64 bit set.
const _: () = assert!(EventKind::ALL.len() <= 64);

impl EventKind {
    fn bit(self) -> u64 {
        1 << (self as u32)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which event types an endpoint hears.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventFilter(u64);

impl EventFilter {
    /// Every type.
    pub fn all() -> Self {
        EventFilter(EventKind::ALL.iter().fold(0, |m, k| m | k.bit()))
    }

    /// From the `events` list of a `[[webhooks]]` entry: exact names
    /// (`message.created`), `prefix.*` globs (`task.*`) or `*`. An empty
    /// list means every type. A pattern that names no known type is refused,
    /// so a typo never silently filters everything out.
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        if patterns.is_empty() {
            return Ok(Self::all());
        }
        let mut mask = 0;
        for p in patterns {
            let matched = Self::matching(p)?;
            if matched == 0 {
                return Err(format!(
                    "{p:?} names no event type; known types: {}",
                    known_types()
                ));
            }
            mask |= matched;
        }
        Ok(EventFilter(mask))
    }

    fn matching(pattern: &str) -> Result<u64, String> {
        let glob = if pattern == "*" {
            Some("")
        } else {
            pattern.strip_suffix(".*")
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|part| {
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
        };
        match glob {
            Some(prefix) if prefix.is_empty() || valid(prefix) => Ok(EventKind::ALL
                .iter()
                .filter(|k| prefix.is_empty() || k.as_str().starts_with(&format!("{prefix}.")))
                .fold(0, |m, k| m | k.bit())),
            None if valid(pattern) => Ok(EventKind::ALL
                .iter()
                .filter(|k| k.as_str() == pattern)
                .fold(0, |m, k| m | k.bit())),
            _ => Err(format!(
                "{pattern:?} is not an event type or a glob such as \"task.*\"; known types: {}",
                known_types()
            )),
        }
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn union(self, other: EventFilter) -> EventFilter {
        EventFilter(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

fn known_types() -> String {
    EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &[&str]) -> Result<EventFilter, String> {
        EventFilter::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn names_are_unique_and_dotted() {
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(names.iter().all(|n| n.split_once('.').is_some()));
    }

    #[test]
    fn globs_and_names_select_their_types() {
        let f = parse(&["task.*", "message.created"]).unwrap();
        assert!(f.contains(EventKind::TaskCreated));
        assert!(f.contains(EventKind::TaskCompleted));
        assert!(f.contains(EventKind::MessageCreated));
        assert!(!f.contains(EventKind::MessageStatus));
        assert!(!f.contains(EventKind::AgentActivity));
        assert_eq!(parse(&[]).unwrap(), EventFilter::all());
        assert_eq!(parse(&["*"]).unwrap(), EventFilter::all());
        // `task.*` does not reach a type that only starts with the letters.
        let only_agent = parse(&["agent.*"]).unwrap();
        assert!(only_agent.contains(EventKind::AgentActivity));
        assert!(!only_agent.contains(EventKind::TaskAccepted));
    }

    #[test]
    fn unknown_or_malformed_patterns_are_refused() {
        let err = parse(&["task.created", "task.craeted"]).unwrap_err();
        assert!(
            err.contains("\"task.craeted\" names no event type"),
            "{err}"
        );
        assert!(err.contains("task.created, task.offered"), "{err}");
        assert!(parse(&["nothing.*"])
            .unwrap_err()
            .contains("names no event type"));
        for bad in [
            "task*",
            "task.*.x",
            "",
            "Task.Created",
            "*.created",
            "task..created",
        ] {
            let err = parse(&[bad]).unwrap_err();
            assert!(err.contains("is not an event type"), "{bad}: {err}");
        }
    }
}

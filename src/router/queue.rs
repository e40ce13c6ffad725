//! A queue's definition: where its tasks come from (channels), who may take
//! them (skills), how they are ordered (priority) and given out (policy), and
//! what happens while they wait (overflow, maximum wait, business hours,
//! last-agent routing, the SLA target and the inactivity settings the
//! workflow uses).
//!
//! Pure data with its checks, as the configuration file (`[[queues]]`), the
//! admin API (`/v1/queues`) and the router's events carry it: the router owns
//! the definitions and changes them only through `RouterEvent`s.
//!
//! Business hours are read in the queue's IANA time zone with `jiff` (its
//! tz database bundled, so every host agrees on the rules).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::protocol::ChannelKind;

/// The queue every task falls back to; it always exists.
pub const DEFAULT_QUEUE: &str = crate::protocol::DEFAULT_QUEUE;

/// Highest task priority.
pub const MAX_PRIORITY: u8 = 100;

/// How a queue chooses among the agents who could take a task. Each counts
/// open work only (offers, assigned and wrap-up tasks), never lifetime totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Most free capacity on the task's channel, then least recently offered.
    #[default]
    MostFreeCapacity,
    /// The agent idle longest: no open work first, then since its open work
    /// last dropped to none (or it became available).
    LongestIdle,
    /// The agent offered a task least recently.
    RoundRobin,
}

impl Policy {
    pub const ALL: [Policy; 3] = [
        Policy::MostFreeCapacity,
        Policy::LongestIdle,
        Policy::RoundRobin,
    ];

    /// Dense index for per-policy arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where a task goes after waiting `after` in this queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overflow {
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Move to this queue (its priority, its rules; the task keeps its place
    /// in time).
    #[serde(default)]
    pub to: Option<String>,
    /// Or stay, but any agent on the channel may take it.
    #[serde(default)]
    pub relax_skills: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// A task meets the SLA when it is accepted within this of arriving.
    #[serde(with = "humantime_serde")]
    pub first_response: Duration,
}

/// What happens to a task that arrives outside business hours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outside {
    /// It waits (and is routed to whoever is available).
    #[default]
    Wait,
    /// It is canceled with reason `closed`.
    Cancel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// IANA time zone, e.g. `Europe/Madrid`.
    pub tz: String,
    /// `mon`…`sun` → `["09:00-13:00","15:00-18:00"]`; a day not listed is
    /// closed; `24:00` ends a range at midnight.
    #[serde(default)]
    pub weekly: BTreeMap<String, Vec<String>>,
    /// Closed all day (`YYYY-MM-DD`, in the queue's time zone).
    #[serde(default)]
    pub holidays: Vec<String>,
    /// What a customer who writes while closed is told.
    #[serde(default)]
    pub closed_message: String,
    #[serde(default)]
    pub outside: Outside,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inactivity {
    #[serde(with = "humantime_serde")]
    pub warn_after: Duration,
    #[serde(default)]
    pub warning: String,
    #[serde(with = "humantime_serde")]
    pub close_after: Duration,
}

/// A queue, as configured and as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    pub id: String,
    /// Defaults to the id.
    #[serde(default)]
    pub name: String,
    /// Channels whose tasks may enter it; empty: every channel.
    #[serde(default)]
    pub channels: Vec<ChannelKind>,
    /// Skills an agent needs for its tasks.
    #[serde(default)]
    pub skills: Vec<String>,
    /// 0–100: the base priority of its tasks.
    #[serde(default)]
    pub priority: u8,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub overflow: Option<Overflow>,
    #[serde(default, with = "humantime_serde::option")]
    pub max_wait: Option<Duration>,
    #[serde(default)]
    pub max_wait_message: String,
    #[serde(default)]
    pub sla: Option<Sla>,
    #[serde(default)]
    pub business_hours: Option<BusinessHours>,
    #[serde(default, with = "humantime_serde::option")]
    pub last_agent_window: Option<Duration>,
    #[serde(default)]
    pub inactivity: Option<Inactivity>,
}

impl Queue {
    /// The `default` queue as it is unless configured otherwise.
    pub fn default_queue() -> Queue {
        Queue::named(DEFAULT_QUEUE)
    }

    /// A queue with this id and nothing else set.
    pub fn named(id: &str) -> Queue {
        Queue {
            id: id.to_owned(),
            name: id.to_owned(),
            channels: Vec::new(),
            skills: Vec::new(),
            priority: 0,
            policy: Policy::default(),
            overflow: None,
            max_wait: None,
            max_wait_message: String::new(),
            sla: None,
            business_hours: None,
            last_agent_window: None,
            inactivity: None,
        }
    }

    /// Does it take tasks of this channel?
    pub fn takes(&self, channel: ChannelKind) -> bool {
        self.channels.is_empty() || self.channels.contains(&channel)
    }

    /// Check every field; fill the name in. `exists` says whether a queue id
    /// is defined (for `overflow.to`).
    pub fn validate(&mut self, exists: impl Fn(&str) -> bool) -> Result<(), ApiError> {
        let bad = |m: String| Err(ApiError::BadRequest(format!("queue {:?}: {m}", self.id)));
        crate::profile::valid_id(&self.id).map_err(|_| {
            ApiError::BadRequest(format!(
                "queue id {:?} must be 1-64 characters of letters, digits, '-', '_', '.', '@'",
                self.id
            ))
        })?;
        if self.name.trim().is_empty() {
            self.name = self.id.clone();
        }
        if self.name.chars().count() > 100 {
            return bad("name must be 1-100 characters".into());
        }
        if self.priority > MAX_PRIORITY {
            return bad(format!("priority must be 0-{MAX_PRIORITY}"));
        }
        if self.id == DEFAULT_QUEUE && (!self.channels.is_empty() || !self.skills.is_empty()) {
            return bad("the default queue takes every channel and needs no skills".into());
        }
        let mut channels = self.channels.clone();
        channels.sort();
        channels.dedup();
        self.channels = channels;
        if let Some(o) = &self.overflow {
            match (&o.to, o.relax_skills) {
                (Some(_), true) | (None, false) => {
                    return bad(
                        "overflow needs either \"to\" (a queue) or \"relax_skills\": true".into(),
                    )
                }
                (Some(to), false) if to == &self.id => {
                    return bad("overflow.to cannot be the queue itself".into())
                }
                (Some(to), false) if !exists(to) => {
                    return Err(ApiError::NotFound(format!(
                        "queue {:?}: overflow.to: queue {to:?} does not exist",
                        self.id
                    )))
                }
                _ => {}
            }
            if o.after.is_zero() {
                return bad("overflow.after must be more than 0".into());
            }
        }
        if self.max_wait.is_some_and(|d| d.is_zero()) {
            return bad("max_wait must be more than 0".into());
        }
        if self.max_wait_message.chars().count() > 1000
            || self
                .business_hours
                .as_ref()
                .is_some_and(|b| b.closed_message.chars().count() > 1000)
        {
            return bad("messages must be at most 1000 characters".into());
        }
        if let Some(b) = &self.business_hours {
            b.check().or_else(|m| bad(format!("business_hours: {m}")))?;
        }
        if let Some(i) = &self.inactivity {
            if i.warn_after.is_zero() || i.close_after.is_zero() {
                return bad("inactivity: warn_after and close_after must be more than 0".into());
            }
        }
        Ok(())
    }
}

/// Days as written in `weekly`, Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl BusinessHours {
    fn zone(&self) -> Result<jiff::tz::TimeZone, String> {
        jiff::tz::TimeZone::get(&self.tz).map_err(|_| {
            format!(
                "tz: {:?} is not an IANA time zone (e.g. Europe/Madrid)",
                self.tz
            )
        })
    }

    fn check(&self) -> Result<(), String> {
        self.zone()?;
        for (day, ranges) in &self.weekly {
            if !DAYS.contains(&day.as_str()) {
                return Err(format!("weekly: {day:?} is not a day (mon, tue, … sun)"));
            }
            for r in ranges {
                parse_range(r).ok_or_else(|| {
                    format!("weekly.{day}: {r:?} is not a range like \"09:00-18:00\"")
                })?;
            }
        }
        for h in &self.holidays {
            h.parse::<jiff::civil::Date>()
                .map_err(|_| format!("holidays: {h:?} is not a date like \"2026-12-25\""))?;
        }
        Ok(())
    }

    /// Open at `now`?
    pub fn is_open(&self, now: SystemTime) -> bool {
        let Ok(zone) = self.zone() else {
            return true;
        };
        let Ok(ts) = jiff::Timestamp::try_from(now) else {
            return true;
        };
        let local = ts.to_zoned(zone);
        let date = local.date();
        if self
            .holidays
            .iter()
            .any(|h| h.parse::<jiff::civil::Date>().is_ok_and(|d| d == date))
        {
            return false;
        }
        let day = DAYS[date.weekday().to_monday_zero_offset() as usize];
        let minute = i32::from(local.hour()) * 60 + i32::from(local.minute());
        self.weekly
            .get(day)
            .into_iter()
            .flatten()
            .filter_map(|r| parse_range(r))
            .any(|(from, to)| from <= minute && minute < to)
    }
}

/// `"09:00-18:00"` → minutes of the day, start before end; `24:00` may end.
fn parse_range(r: &str) -> Option<(i32, i32)> {
    let (a, b) = r.split_once('-')?;
    let minutes = |t: &str| -> Option<i32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
        ((0..=23).contains(&h) && (0..=59).contains(&m) || (h == 24 && m == 0))
            .then_some(h * 60 + m)
    };
    let (from, to) = (minutes(a)?, minutes(b)?);
    (from < to && from < 24 * 60).then_some((from, to))
}

/// Durations as humantime strings ("60s", "15m") in JSON, TOML and the
/// journal alike.
pub mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e} (use e.g. 60s, 15m, 24h)")))
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| {
                    humantime::parse_duration(&s).map_err(|e| {
                        serde::de::Error::custom(format!("{s:?}: {e} (use e.g. 60s, 15m, 24h)"))
                    })
                })
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours() -> BusinessHours {
        BusinessHours {
            tz: "Europe/Madrid".into(),
            weekly: [("mon".to_owned(), vec!["09:00-18:00".to_owned()])]
                .into_iter()
                .collect(),
            holidays: vec!["2026-12-28".into()],
            closed_message: "closed".into(),
            outside: Outside::Wait,
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn business_hours_are_read_in_the_queues_time_zone() {
        let h = hours();
        // Monday 2026-11-30: Madrid is UTC+1 in winter.
        assert!(!h.is_open(at("2026-11-30T07:59:00Z")));
        assert!(h.is_open(at("2026-11-30T08:00:00Z")));
        assert!(h.is_open(at("2026-11-30T16:59:00Z")));
        assert!(!h.is_open(at("2026-11-30T17:00:00Z")));
        // Summer time: UTC+2.
        assert!(h.is_open(at("2026-06-01T07:00:00Z")));
        assert!(!h.is_open(at("2026-06-01T16:00:00Z")));
        // A Tuesday is not listed; the holiday is a Monday.
        assert!(!h.is_open(at("2026-12-01T10:00:00Z")));
        assert!(!h.is_open(at("2026-12-28T10:00:00Z")));
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let check = |q: &mut Queue| q.validate(|id| id == "default").unwrap_err().to_string();
        let mut q = Queue::named("billing");
        q.priority = 101;
        assert!(check(&mut q).contains("priority must be 0-100"));
        let mut q = Queue::named("billing");
        q.overflow = Some(Overflow {
            after: Duration::from_secs(60),
            to: Some("nowhere".into()),
            relax_skills: false,
        });
        assert!(check(&mut q).contains("\"nowhere\" does not exist"));
        let mut q = Queue::named("billing");
        let mut h = hours();
        h.tz = "Mars/Olympus".into();
        q.business_hours = Some(h);
        assert!(check(&mut q).contains("not an IANA time zone"));
        let mut q = Queue::named("billing");
        let mut h = hours();
        h.weekly.insert("mon".into(), vec!["18:00-09:00".into()]);
        q.business_hours = Some(h);
        assert!(check(&mut q).contains("not a range"));
        let mut q = Queue::named("default");
        q.skills = vec!["es".into()];
        assert!(check(&mut q).contains("default queue"));
        let mut q = Queue::named("billing");
        q.name = String::new();
        q.validate(|_| true).unwrap();
        assert_eq!(q.name, "billing");
    }

    #[test]
    fn the_wire_form_round_trips_and_durations_are_humantime() {
        let json = r#"{"id":"billing","name":"Billing","channels":["webchat","sms"],"skills":["es"],
            "priority":10,"policy":"round_robin","overflow":{"after":"60s","to":"general"},
            "max_wait":"15m","max_wait_message":"Sorry","sla":{"first_response":"60s"},
            "business_hours":{"tz":"Europe/Madrid","weekly":{"mon":["09:00-18:00"]},
            "holidays":["2026-12-25"],"closed_message":"Closed","outside":"cancel"},
            "last_agent_window":"24h",
            "inactivity":{"warn_after":"5m","warning":"Still there?","close_after":"10m"}}"#;
        let q: Queue = serde_json::from_str(json).unwrap();
        assert_eq!(q.max_wait, Some(Duration::from_secs(900)));
        assert_eq!(q.policy, Policy::RoundRobin);
        let back = serde_json::to_value(&q).unwrap();
        assert_eq!(back["max_wait"], "15m");
        assert_eq!(back["overflow"]["after"], "1m");
        let bytes = crate::codec::encode(&q).unwrap();
        let again: Queue = crate::codec::decode(&bytes).unwrap();
        assert_eq!(again, q);
    }
}

//! Switchboard: an actor-based, in-memory chat broker for contact centers.
//!
//! Start at `ARCHITECTURE.md` for the actor map. In short: [`router`] assigns
//! tasks by capacity; [`agent`] is one actor per agent; [`conversation`] one per
//! conversation; [`channel`] one per channel kind; [`ws`] holds the thin socket
//! session actors and [`http`] the thin routes; [`server`] wires it all.

pub mod agent;
pub mod attachments;
pub mod broker;
pub mod canned;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod compactor;
pub mod config;
pub mod conversation;
pub mod deadlines;
pub mod error;
pub mod http;
pub mod ids;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod profile;
pub mod protocol;
pub mod recovery;
pub mod router;
pub mod server;
pub mod shards;
pub mod shutdown;
pub mod sim;
pub mod snapshot;
pub mod supervisor;
pub mod web;
pub mod webhooks;
pub mod wiring;
pub mod ws;

pub use config::Config;
pub use error::ApiError;

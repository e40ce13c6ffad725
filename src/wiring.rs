//! Which actor plays each part of the shared registry: the one file that
//! names them all together, so that the registry (`broker.rs`) names none.
//! Every actor module takes [`Broker`] from here; nothing here but types.

use crate::agent::Agent;
use crate::broker::{AgentEntry as Entry, Registry, RegistryParts, Wiring};
use crate::channel::Channels;
use crate::conversation::Conversation;
use crate::router::Router;
use crate::supervisor::SupervisorHub;

/// This broker's actors.
pub struct Actors;

impl Wiring for Actors {
    type Agent = Agent;
    type Conversation = Conversation;
    type Router = Router;
    type Supervisor = SupervisorHub;
    type Channels = Channels;
}

/// The registry, wired to this broker's actors.
pub type Broker = Registry<Actors>;
/// What [`Broker::new`] takes.
pub type BrokerParts = RegistryParts<Actors>;
/// One registered agent.
pub type AgentEntry = Entry<Agent>;

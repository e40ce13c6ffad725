//! The supervisor hub: fans task and agent events out to every connected
//! supervisor socket (`/v1/supervisor/ws`). Events are published by the router
//! (agent state) and conversations (task state) only while someone listens.
//!
//! Handles: [`Subscribe`], [`Unsubscribe`], [`Publish`].

use std::sync::atomic::Ordering;
use std::sync::Weak;

use actix::prelude::*;

pub use crate::broker::Publish;
use crate::wiring::Broker;
use crate::ws::SocketLink;

#[derive(Default)]
pub struct SupervisorHub {
    /// Weak: the broker owns the hub's address; the hub must not keep the
    /// broker alive. Set once at start-up.
    broker: Weak<Broker>,
    subscribers: Vec<SocketLink>,
}

impl SupervisorHub {
    pub fn new() -> Self {
        SupervisorHub::default()
    }

    fn count_changed(&self) {
        if let Some(b) = self.broker.upgrade() {
            b.supervisors
                .store(self.subscribers.len(), Ordering::Relaxed);
        }
    }
}

impl Actor for SupervisorHub {
    type Context = Context<Self>;
}

/// Hand the hub its broker once everything exists.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Attach(pub Weak<Broker>);

impl Handler<crate::ws::CloseAll> for SupervisorHub {
    type Result = ();

    fn handle(&mut self, msg: crate::ws::CloseAll, _: &mut Context<Self>) {
        for link in self.subscribers.drain(..) {
            link.close(msg.code, &msg.reason);
        }
    }
}

impl Handler<Attach> for SupervisorHub {
    type Result = ();

    fn handle(&mut self, msg: Attach, _: &mut Context<Self>) {
        self.broker = msg.0;
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub SocketLink);

impl Handler<Subscribe> for SupervisorHub {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.push(msg.0);
        self.count_changed();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub u64);

impl Handler<Unsubscribe> for SupervisorHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.retain(|s| s.id != msg.0);
        self.count_changed();
    }
}

impl Handler<Publish> for SupervisorHub {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let before = self.subscribers.len();
        self.subscribers
            .retain(|s| s.send(msg.0.clone(), &broker.metrics).is_ok());
        if self.subscribers.len() != before {
            self.count_changed();
        }
    }
}

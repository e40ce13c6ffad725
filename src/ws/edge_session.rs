//! A client's socket on a node that does not run what it talks to
//! (cluster mode: a standby, whose conversations, agents and supervisor
//! hub the active node runs): a webchat customer's, an agent's desk or a
//! supervisor's. Thin, like every
//! session here: what the client sends is screened where the socket is
//! (fragments, `max_frame`, UTF-8, and a customer socket's command rate,
//! [`Screen`]) and goes to the owner as text over the bus
//! (`cluster::node_bus`), where its stand-in (`cluster::remote_socket`)
//! parses it; what comes back is written out. The client sees the same
//! socket as on the node that runs its conversations.
//!
//! Handles `Push` (frames from the owner, through its [`SocketLink`] held
//! by the node's bus, bounded as every session's: `socket_backlog` pushes,
//! `socket_backlog_bytes` bytes, past either closed `1008
//! slow_consumer`) and `CloseSession` (the owner closed it, or was lost:
//! 1012, reconnect).

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;

use crate::cluster::node_bus::{Door, NodeBus};
use crate::ws::customer_session::Screen;
use crate::ws::{
    close_with, handle_frame, Backlog, CloseSession, Heartbeat, Held, Push, Reassembly, SocketLink,
};

pub struct EdgeSession {
    id: u64,
    /// The owner's endpoint on the bus (one of its workers') that runs
    /// the socket's stand-in.
    owner: String,
    /// Which socket, and its credential (the owner checks it again when
    /// the socket attaches). Taken when it does.
    door: Option<Door>,
    node: Arc<NodeBus>,
    mailbox: usize,
    frames: Reassembly,
    backlog: Backlog,
    /// Nothing waits for a journal here: the owner sends only what is
    /// durable.
    held: Held,
    hb: Heartbeat,
    /// A customer socket's command rate; a desk's and a supervisor's
    /// commands have none, as on the owner.
    screen: Option<Screen>,
}

impl EdgeSession {
    pub fn new(
        owner: String,
        door: Door,
        node: Arc<NodeBus>,
        config: &crate::config::Config,
    ) -> EdgeSession {
        let screen = matches!(door, Door::Webchat { .. }).then(|| Screen::new(config));
        EdgeSession {
            id: crate::ws::next_session_id(),
            owner,
            door: Some(door),
            node,
            mailbox: config.socket_backlog,
            frames: Reassembly::new(config.max_frame),
            backlog: Backlog::new(config.socket_backlog_bytes),
            held: Held::new(None),
            hb: Heartbeat::new(config.heartbeat_interval, config.client_timeout),
            screen,
        }
    }

    /// The bus did not take what this socket sends: its client reconnects.
    fn unavailable(e: impl std::fmt::Display, ctx: &mut ws::WebsocketContext<Self>) {
        close_with(
            CloseSession {
                code: ws::CloseCode::Again,
                reason: format!("unavailable: {e}"),
            },
            ctx,
        );
    }
}

impl Actor for EdgeSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
        self.hb.start(ctx, |s| &mut s.hb);
        let link = SocketLink::new(self.id, ctx.address(), &self.backlog, None);
        let Some(door) = self.door.take() else {
            return;
        };
        if let Err(e) = self.node.attach(self.id, &self.owner, door, link) {
            Self::unavailable(e, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.node.detach(self.id);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for EdgeSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let Some(text) = handle_frame(msg, &mut self.hb, &mut self.frames, ctx) else {
            return;
        };
        if let Some(screen) = &mut self.screen {
            if !screen.pass(&text, ctx) {
                return;
            }
        }
        if let Err(e) = self.node.command(self.id, &self.owner, text.to_string()) {
            Self::unavailable(e, ctx);
        }
    }
}

impl Handler<Push> for EdgeSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        crate::ws::deliver(self, msg, ctx, |s| (&mut s.held, &s.backlog));
    }
}

impl Handler<CloseSession> for EdgeSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        close_with(msg, ctx);
    }
}

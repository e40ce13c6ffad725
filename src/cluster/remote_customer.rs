//! A stand-in, on the node that runs a conversation, for a webchat
//! customer's socket another node holds (the edge,
//! `ws/edge_customer_session.rs`). To the webchat channel it is a socket
//! session like any other (`CustomerConnected` with its [`SocketLink`],
//! `FromCustomer`, `CustomerDisconnected`); what the channel pushes to it
//! goes on the bus to the edge once what it tells of is durable, as a
//! session here writes to its socket once durable ([`crate::ws::Held`]).
//!
//! Handles `Push` and `CloseSession` (from the channel, through its link),
//! [`EdgeCommand`] (a command the customer sent, screened by the edge) and
//! [`EdgeGone`] (the edge's socket closed, or the edge was lost).
//!
//! Started on a worker's arbiter, round robin (`Shards`), as socket
//! sessions land on the workers that accept them.
//!
//! Bounded as a socket session is: its mailbox at `socket_backlog` pushes
//! and its queued bytes at `socket_backlog_bytes` (what waits for the
//! journal); past either, the channel closes it as a slow consumer. Once
//! durable, frames leave at once for the bus, whose own queue is bounded: a
//! push it cannot take closes the socket (1013, the client to reconnect).

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws::CloseCode;

use super::node_bus::NodeBus;
use crate::channel::webchat::{
    CustomerConnected, CustomerDisconnected, FromCustomer, WebchatChannel, WebchatShards,
};
use crate::protocol::Id;
use crate::wiring::Broker;
use crate::ws::customer_session::parse_command;
use crate::ws::{Backlog, CloseSession, Frames, Held, Outlet, Push, SocketLink};

/// A command the customer sent on the edge's socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EdgeCommand(pub String);

/// The edge's socket is gone: stop, without telling the edge.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EdgeGone;

pub struct RemoteCustomer {
    edge: Arc<str>,
    /// The socket's id on the edge.
    socket: u64,
    /// Its id here, as the channel knows it.
    id: u64,
    session: Id,
    shards: WebchatShards,
    node: Arc<NodeBus>,
    mailbox: usize,
    held: Held,
    backlog: Backlog,
    /// Whether the edge still holds the socket (it is told of a close).
    edge_open: bool,
}

impl RemoteCustomer {
    pub fn new(
        edge: Arc<str>,
        socket: u64,
        session: Id,
        broker: &Arc<Broker>,
        node: Arc<NodeBus>,
    ) -> RemoteCustomer {
        RemoteCustomer {
            edge,
            socket,
            id: crate::ws::next_session_id(),
            session,
            shards: broker.channels.webchat.clone(),
            node,
            mailbox: broker.config.socket_backlog,
            held: Held::new(broker.journal.clone()),
            backlog: Backlog::new(broker.config.socket_backlog_bytes),
            edge_open: true,
        }
    }

    fn channel(&self) -> &Addr<WebchatChannel> {
        self.shards.for_session(&self.session)
    }

    /// Where durable frames go: the bus, to the edge.
    fn outlet() -> Outlet<RemoteCustomer> {
        Outlet {
            parts: |s| (&mut s.held, &s.backlog),
            write: |s, frames, ctx| s.send_to_edge(frames, ctx),
            close: |s, msg, ctx| s.close(msg, ctx),
        }
    }

    fn send_to_edge(&mut self, frames: Frames, ctx: &mut Context<Self>) {
        if let Err(e) = self.node.frames(&self.edge, self.socket, frames) {
            self.close(
                CloseSession {
                    code: CloseCode::Again,
                    reason: format!("unavailable: {e}"),
                },
                ctx,
            );
        }
    }

    /// Tell the edge to close the socket, and stop.
    fn close(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.edge_open) {
            self.node
                .close(&self.edge, self.socket, msg.code, &msg.reason);
        }
        ctx.stop();
    }
}

impl Actor for RemoteCustomer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
        self.channel().do_send(CustomerConnected {
            session: self.session.clone(),
            link: SocketLink::new(self.id, ctx.address(), &self.backlog, self.held.journal()),
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.node.forget(&self.edge, self.socket);
        self.channel().do_send(CustomerDisconnected {
            session: self.session.clone(),
            socket: self.id,
        });
    }
}

impl Handler<Push> for RemoteCustomer {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        crate::ws::deliver_to(self, msg, ctx, Self::outlet());
    }
}

impl Handler<CloseSession> for RemoteCustomer {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.close(msg, ctx);
    }
}

impl Handler<EdgeCommand> for RemoteCustomer {
    type Result = ();

    fn handle(&mut self, msg: EdgeCommand, ctx: &mut Self::Context) {
        match parse_command(&msg.0) {
            Ok(command) => self.channel().do_send(FromCustomer {
                session: self.session.clone(),
                socket: self.id,
                command,
            }),
            Err(answer) => self.send_to_edge(Frames::One(answer), ctx),
        }
    }
}

impl Handler<EdgeGone> for RemoteCustomer {
    type Result = ();

    fn handle(&mut self, _: EdgeGone, ctx: &mut Self::Context) {
        self.edge_open = false;
        ctx.stop();
    }
}

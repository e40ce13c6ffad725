//! A stand-in, on the node that runs what a socket talks to (the owner),
//! for a client's socket another node holds (the edge,
//! `ws/edge_session.rs`): a webchat customer's, an agent's desk or a
//! supervisor's. To the webchat channel, or to the agent, it is a socket
//! session like any other (`CustomerConnected` / `Connect` with its
//! [`SocketLink`], then `FromCustomer` / `FromDesk`, and
//! `CustomerDisconnected` / `Disconnect` when it stops); for a supervisor
//! it does what the supervisor's own session does ([`Supervision`]: the
//! hub's stream, monitoring). What they push to it goes on the bus to the
//! edge once what it tells of is durable, as a session here writes to its
//! socket once durable ([`crate::ws::Held`]).
//!
//! Handles `Push` and `CloseSession` (through its link), [`EdgeCommand`] (a
//! command the client sent, screened by the edge; parsed and answered here
//! as the socket's own session does it) and [`EdgeGone`] (the edge's socket
//! closed, or the edge was lost).
//!
//! Started on a worker's arbiter, round robin (`Shards`), as socket
//! sessions land on the workers that accept them.
//!
//! Bounded as a socket session is: its mailbox at `socket_backlog` pushes
//! and its queued bytes at `socket_backlog_bytes` (what waits for the
//! journal); past either, the sender closes it as a slow consumer. Once
//! durable, frames leave at once for the bus, whose own queue is bounded: a
//! push it cannot take closes the socket (1013, the client to reconnect).

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws::CloseCode;

use super::node_bus::NodeBus;
use crate::agent::{Agent, Connect, Disconnect, FromDesk};
use crate::channel::webchat::{
    CustomerConnected, CustomerDisconnected, FromCustomer, WebchatShards,
};
use crate::protocol::Id;
use crate::wiring::Broker;
use crate::ws::supervisor_session::Supervision;
use crate::ws::{agent_session, customer_session};
use crate::ws::{Backlog, CloseSession, Frames, Held, Outlet, Push, SocketLink};

/// A command the client sent on the edge's socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EdgeCommand(pub String);

/// The edge's socket is gone: stop, without telling the edge.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EdgeGone;

/// What the socket talks to.
pub enum Target {
    /// A webchat customer's session, through its channel's shard.
    Customer { session: Id, shards: WebchatShards },
    /// An agent, with the token the desk opened its socket with (the agent
    /// checks it, as for a desk of its own node).
    Desk { agent: Addr<Agent>, token: String },
    /// A supervisor's socket: what it does, as its own session does it.
    Supervisor(Supervision),
}

pub struct RemoteSocket {
    edge: Arc<str>,
    /// The socket's id on the edge.
    socket: u64,
    /// Its id here, as the channel or the agent knows it.
    id: u64,
    target: Target,
    node: Arc<NodeBus>,
    mailbox: usize,
    held: Held,
    backlog: Backlog,
    /// Whether the edge still holds the socket (it is told of a close).
    edge_open: bool,
}

impl RemoteSocket {
    pub fn new(
        edge: Arc<str>,
        socket: u64,
        target: Target,
        broker: &Arc<Broker>,
        node: Arc<NodeBus>,
    ) -> RemoteSocket {
        RemoteSocket {
            edge,
            socket,
            id: crate::ws::next_session_id(),
            target,
            node,
            mailbox: broker.config.socket_backlog,
            held: Held::new(broker.journal.clone()),
            backlog: Backlog::new(broker.config.socket_backlog_bytes),
            edge_open: true,
        }
    }

    /// Where durable frames go: the bus, to the edge.
    fn outlet() -> Outlet<RemoteSocket> {
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

impl Actor for RemoteSocket {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox);
        let link = SocketLink::new(self.id, ctx.address(), &self.backlog, self.held.journal());
        match &mut self.target {
            Target::Customer { session, shards } => {
                shards.for_session(session).do_send(CustomerConnected {
                    session: session.clone(),
                    link,
                })
            }
            Target::Desk { agent, token } => agent.do_send(Connect {
                link,
                token: Some(token.clone()),
            }),
            Target::Supervisor(supervision) => supervision.start(link),
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.node.forget(&self.edge, self.socket);
        match &mut self.target {
            Target::Customer { session, shards } => {
                shards.for_session(session).do_send(CustomerDisconnected {
                    session: session.clone(),
                    socket: self.id,
                })
            }
            Target::Desk { agent, .. } => agent.do_send(Disconnect {
                session_id: self.id,
            }),
            Target::Supervisor(supervision) => supervision.stop(),
        }
    }
}

impl Handler<Push> for RemoteSocket {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        crate::ws::deliver_to(self, msg, ctx, Self::outlet());
    }
}

impl Handler<CloseSession> for RemoteSocket {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        self.close(msg, ctx);
    }
}

impl Handler<EdgeCommand> for RemoteSocket {
    type Result = ();

    fn handle(&mut self, msg: EdgeCommand, ctx: &mut Self::Context) {
        let at_once = match &mut self.target {
            Target::Customer { session, shards } => match customer_session::parse_command(&msg.0) {
                Ok(command) => {
                    shards.for_session(session).do_send(FromCustomer {
                        session: session.clone(),
                        socket: self.id,
                        command,
                    });
                    None
                }
                Err(answer) => Some(answer),
            },
            Target::Desk { agent, .. } => match agent_session::parse_command(&msg.0) {
                Ok(command) => {
                    agent.do_send(FromDesk {
                        session_id: self.id,
                        command,
                    });
                    None
                }
                Err(answer) => Some(answer),
            },
            Target::Supervisor(supervision) => supervision.command(&msg.0),
        };
        if let Some(answer) = at_once {
            self.send_to_edge(Frames::One(answer), ctx);
        }
    }
}

impl Handler<EdgeGone> for RemoteSocket {
    type Result = ();

    fn handle(&mut self, _: EdgeGone, ctx: &mut Self::Context) {
        self.edge_open = false;
        ctx.stop();
    }
}

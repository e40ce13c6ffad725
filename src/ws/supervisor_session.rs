//! A supervisor's socket: receives the event stream from the supervisor hub,
//! and takes two commands, `monitor` and `unmonitor`, which start and stop a
//! read-only stream of one conversation's `message` events (the conversation
//! sends them through this socket's [`SocketLink`], so the slow-consumer
//! policy bounds them like everything else). Any other command gets a
//! `bad_request` error.
//!
//! What the socket does is [`Supervision`], apart from the session, so
//! that a supervisor's socket held by another node of a cluster (its
//! stand-in here, `cluster::remote_socket`) does the same.

use std::collections::HashSet;
use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;

use crate::conversation::{Monitor, Unmonitor};
use crate::protocol::{
    error_frame, ok_frame, salvage_ref, Event, Frame, Id, SupervisorAction, SupervisorCommand,
};
use crate::supervisor::{Subscribe, Unsubscribe};
use crate::wiring::Broker;
use crate::ws::{close_with, handle_frame, CloseSession, Heartbeat, Push, Reassembly, SocketLink};

/// Conversations one supervisor socket may monitor at once.
pub const MAX_MONITORED: usize = 32;

/// What one supervisor's socket does, wherever the socket is held: it
/// follows the hub's stream (from [`Supervision::start`]), monitors
/// conversations at its client's command, and at [`Supervision::stop`]
/// ends each monitoring. Run by the socket's session on the node that
/// runs the conversations, or by the socket's stand-in there when another
/// node holds the socket (`cluster::remote_socket`).
pub struct Supervision {
    broker: Arc<Broker>,
    /// The socket's link (given at start), handed to the hub and to each
    /// monitored conversation.
    link: Option<SocketLink>,
    monitored: HashSet<Id>,
}

impl Supervision {
    pub fn new(broker: Arc<Broker>) -> Supervision {
        Supervision {
            broker,
            link: None,
            monitored: HashSet::new(),
        }
    }

    /// Follow the hub's stream through `link`.
    pub fn start(&mut self, link: SocketLink) {
        self.broker.supervisor.do_send(Subscribe(link.clone()));
        self.link = Some(link);
    }

    /// The socket closed: leave the hub, and end each monitoring with an
    /// `unmonitor` action, so whoever counted the `monitor` sees it end.
    pub fn stop(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        self.broker.supervisor.do_send(Unsubscribe(link.id));
        for id in self.monitored.drain() {
            if let Some(conv) = self.broker.conversation(&id) {
                conv.do_send(Unmonitor {
                    session_id: link.id,
                });
            }
            self.broker.supervisor_action(
                crate::http::ADMIN_ACTOR,
                SupervisorAction::Unmonitor {
                    conversation_id: id,
                },
            );
        }
    }

    /// The client's text: a command, carried out. What to answer at once,
    /// if anything (a refusal, an `ok`), to be written straight to the
    /// socket; a monitoring's answer (`monitoring`, then the messages)
    /// comes through the link, from the conversation.
    pub fn command(&mut self, text: &str) -> Option<Frame> {
        match serde_json::from_str::<SupervisorCommand>(text) {
            Ok(cmd) => self.run(cmd),
            Err(e) => Some(error_frame(
                "bad_request",
                &format!("invalid command (monitor, unmonitor): {e}"),
                salvage_ref(text).as_deref(),
            )),
        }
    }

    /// Tell every supervisor, this one included, and the webhooks. Sent to
    /// the hub whatever its count says (`Registry::publish` skips when
    /// nobody listens): this socket listens, and its `Subscribe`, sent
    /// before, may not have been counted yet; the hub takes both in the
    /// order they were sent.
    fn publish(&self, action: SupervisorAction) {
        let at = crate::protocol::now();
        self.broker
            .supervisor_action_to_webhooks(crate::http::ADMIN_ACTOR, &action, at);
        let frame = Event::SupervisorAction {
            by: crate::http::ADMIN_ACTOR.into(),
            action,
            at,
        }
        .frame();
        self.broker
            .supervisor
            .do_send(crate::broker::Publish(frame));
    }

    fn run(&mut self, cmd: SupervisorCommand) -> Option<Frame> {
        let link = self.link.clone()?;
        match cmd {
            SupervisorCommand::Monitor {
                conversation_id,
                reference,
            } => {
                let Some(conv) = self.broker.conversation(&conversation_id) else {
                    return Some(error_frame(
                        "not_found",
                        &format!("conversation {conversation_id} does not exist"),
                        reference.as_deref(),
                    ));
                };
                let id = Id::from(conversation_id.as_str());
                if !self.monitored.contains(&id) && self.monitored.len() >= MAX_MONITORED {
                    return Some(error_frame(
                        "bad_request",
                        &format!(
                            "this socket already monitors {MAX_MONITORED} conversations; unmonitor one first"
                        ),
                        reference.as_deref(),
                    ));
                }
                conv.do_send(Monitor { link, reference });
                self.monitored.insert(id.clone());
                self.publish(SupervisorAction::Monitor {
                    conversation_id: id,
                });
                None
            }
            SupervisorCommand::Unmonitor {
                conversation_id,
                reference,
            } => {
                let id = Id::from(conversation_id.as_str());
                if !self.monitored.remove(&id) {
                    return Some(error_frame(
                        "not_found",
                        &format!("this socket does not monitor conversation {conversation_id}"),
                        reference.as_deref(),
                    ));
                }
                if let Some(conv) = self.broker.conversation(&id) {
                    conv.do_send(Unmonitor {
                        session_id: link.id,
                    });
                }
                self.publish(SupervisorAction::Unmonitor {
                    conversation_id: id,
                });
                Some(ok_frame(reference.as_deref()))
            }
        }
    }
}

pub struct SupervisorSession {
    id: u64,
    backlog: usize,
    frames: Reassembly,
    backlog_bytes: crate::ws::Backlog,
    /// Frames waiting for the journal.
    held: crate::ws::Held,
    hb: Heartbeat,
    supervision: Supervision,
}

impl SupervisorSession {
    pub fn new(broker: Arc<Broker>) -> Self {
        let config = &broker.config;
        SupervisorSession {
            id: crate::ws::next_session_id(),
            backlog: config.socket_backlog,
            frames: Reassembly::new(config.max_frame),
            backlog_bytes: crate::ws::Backlog::new(config.socket_backlog_bytes),
            held: crate::ws::Held::new(broker.journal.clone()),
            hb: Heartbeat::new(config.heartbeat_interval, config.client_timeout),
            supervision: Supervision::new(broker),
        }
    }
}

impl Actor for SupervisorSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.backlog);
        self.hb.start(ctx, |s| &mut s.hb);
        let link = SocketLink::new(
            self.id,
            ctx.address(),
            &self.backlog_bytes,
            self.held.journal(),
        );
        self.supervision.start(link);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.supervision.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SupervisorSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let Some(text) = handle_frame(msg, &mut self.hb, &mut self.frames, ctx) else {
            return;
        };
        if let Some(answer) = self.supervision.command(&text) {
            ctx.text(answer);
        }
    }
}

impl Handler<Push> for SupervisorSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        crate::ws::deliver(self, msg, ctx, |s| (&mut s.held, &s.backlog_bytes));
    }
}

impl Handler<CloseSession> for SupervisorSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        close_with(msg, ctx);
    }
}

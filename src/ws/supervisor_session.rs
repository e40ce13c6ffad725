//! A supervisor's socket: receives the event stream from the supervisor hub.
//! Supervisors only listen; any command gets a `bad_request` error.

use actix::prelude::*;
use actix_web_actors::ws;

use crate::protocol::{error_frame, salvage_ref};
use crate::supervisor::{Subscribe, SupervisorHub, Unsubscribe};
use crate::ws::{close_with, handle_frame, CloseSession, Heartbeat, Push, Reassembly, SocketLink};

pub struct SupervisorSession {
    id: u64,
    hub: Addr<SupervisorHub>,
    backlog: usize,
    frames: Reassembly,
    backlog_bytes: crate::ws::Backlog,
    /// Frames waiting for the journal.
    held: crate::ws::Held,
    hb: Heartbeat,
}

impl SupervisorSession {
    pub fn new(
        hub: Addr<SupervisorHub>,
        config: &crate::config::Config,
        journal: Option<crate::journal::Journal>,
    ) -> Self {
        SupervisorSession {
            id: crate::ws::next_session_id(),
            hub,
            backlog: config.socket_backlog,
            frames: Reassembly::new(config.max_frame),
            backlog_bytes: crate::ws::Backlog::new(config.socket_backlog_bytes),
            held: crate::ws::Held::new(journal),
            hb: Heartbeat::new(config.heartbeat_interval, config.client_timeout),
        }
    }
}

impl Actor for SupervisorSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.backlog);
        self.hb.start(ctx, |s| &mut s.hb);
        self.hub.do_send(Subscribe(SocketLink::new(
            self.id,
            ctx.address(),
            &self.backlog_bytes,
            self.held.journal(),
        )));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.hub.do_send(Unsubscribe(self.id));
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SupervisorSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        if let Some(text) = handle_frame(msg, &mut self.hb, &mut self.frames, ctx) {
            ctx.text(error_frame(
                "bad_request",
                "the supervisor stream takes no commands",
                salvage_ref(&text).as_deref(),
            ));
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

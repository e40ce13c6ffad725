//! An agent desktop's socket: parses JSON commands and hands them to the
//! agent's actor; writes whatever the agent actor pushes. Nothing else.

use actix::prelude::*;
use actix_web_actors::ws;

use crate::agent::{Agent, Connect, Disconnect, FromDesk};
use crate::protocol::{error_frame, salvage_ref, AgentCommand, Frame};
use crate::ws::{close_with, handle_frame, CloseSession, Heartbeat, Push, Reassembly, SocketLink};

pub struct AgentSession {
    id: u64,
    agent: Addr<Agent>,
    /// The token this socket was opened with; the agent actor checks it again.
    token: String,
    backlog: usize,
    frames: Reassembly,
    backlog_bytes: crate::ws::Backlog,
    /// Frames waiting for the journal.
    held: crate::ws::Held,
    hb: Heartbeat,
}

impl AgentSession {
    pub fn new(
        agent: Addr<Agent>,
        token: String,
        config: &crate::config::Config,
        journal: Option<crate::journal::Journal>,
    ) -> Self {
        AgentSession {
            id: crate::ws::next_session_id(),
            agent,
            token,
            backlog: config.socket_backlog,
            frames: Reassembly::new(config.max_frame),
            backlog_bytes: crate::ws::Backlog::new(config.socket_backlog_bytes),
            held: crate::ws::Held::new(journal),
            hb: Heartbeat::new(config.heartbeat_interval, config.client_timeout),
        }
    }
}

/// A desk's command, or the `bad_request` frame that answers it.
pub fn parse_command(text: &str) -> Result<AgentCommand, Frame> {
    AgentCommand::parse(text).map_err(|e| {
        error_frame(
            "bad_request",
            &format!("invalid command: {e}"),
            salvage_ref(text).as_deref(),
        )
    })
}

impl Actor for AgentSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.backlog);
        self.hb.start(ctx, |s| &mut s.hb);
        self.agent.do_send(Connect {
            link: SocketLink::new(
                self.id,
                ctx.address(),
                &self.backlog_bytes,
                self.held.journal(),
            ),
            token: Some(self.token.clone()),
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.agent.do_send(Disconnect {
            session_id: self.id,
        });
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for AgentSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let Some(text) = handle_frame(msg, &mut self.hb, &mut self.frames, ctx) else {
            return;
        };
        match parse_command(&text) {
            Ok(command) => self.agent.do_send(FromDesk {
                session_id: self.id,
                command,
            }),
            Err(answer) => ctx.text(answer),
        }
    }
}

impl Handler<Push> for AgentSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        crate::ws::deliver(self, msg, ctx, |s| (&mut s.held, &s.backlog_bytes));
    }
}

impl Handler<CloseSession> for AgentSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        close_with(msg, ctx);
    }
}

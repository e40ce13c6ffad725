//! A webchat customer's socket: parses JSON commands and hands them to the
//! webchat channel actor; writes whatever the channel pushes. Holds the
//! socket's command rate (`socket_messages_per_second`, [`Screen`]): a
//! command over it is answered `rate_limited` and not passed on. A client
//! that goes on sending regardless, [`REFUSALS_BEFORE_CLOSE`] refusals in a
//! row, is not a widget waiting to retry but a flood, and costs a parse and
//! an answer per frame: its socket is closed (1008 `rate_limited`).

use actix::prelude::*;
use actix_web_actors::ws;

use crate::channel::webchat::{
    CustomerConnected, CustomerDisconnected, FromCustomer, WebchatChannel, WebchatShards,
};
use crate::limits::Rate;
use crate::protocol::{error_frame, salvage_ref, CustomerCommand, Frame, Id};
use crate::ws::{close_with, handle_frame, CloseSession, Heartbeat, Push, Reassembly, SocketLink};

pub struct CustomerSession {
    id: u64,
    session: Id,
    /// The channel's shards, not a copy of the address of this session's
    /// shard: a copy of an actix address is an allocation of its own, and
    /// the shard is a hash away.
    shards: WebchatShards,
    backlog: usize,
    frames: Reassembly,
    backlog_bytes: crate::ws::Backlog,
    /// Frames waiting for the journal.
    held: crate::ws::Held,
    hb: Heartbeat,
    screen: Screen,
}

/// Refused commands in a row after which a customer socket is closed.
pub const REFUSALS_BEFORE_CLOSE: u32 = 200;

/// A customer socket's command rate (`socket_messages_per_second`), held
/// where the socket is: here, or on the node that holds the socket of a
/// conversation run by another (`ws/edge_session.rs`).
pub struct Screen {
    rate: Rate,
    per_second: u32,
    /// Commands refused since the last one taken.
    refused_in_a_row: u32,
}

/// A command the screen did not let through: the frame that answers it,
/// and whether the socket is to be closed ([`flooded`]) after it.
pub struct Refused {
    pub answer: Frame,
    pub close: bool,
}

impl Screen {
    pub fn new(config: &crate::config::Config) -> Screen {
        Screen {
            rate: Rate::per_second(config.socket_messages_per_second),
            per_second: config.socket_messages_per_second,
            refused_in_a_row: 0,
        }
    }

    /// Let the command `text` through, or refuse it.
    pub fn check(&mut self, text: &str) -> Result<(), Refused> {
        let per_second = self.per_second;
        if let Err(e) = self.rate.check(|| {
            format!(
                "at most {per_second} commands per second on one socket; this one was not taken"
            )
        }) {
            self.refused_in_a_row += 1;
            return Err(Refused {
                answer: e.to_frame(salvage_ref(text).as_deref()),
                close: self.refused_in_a_row >= REFUSALS_BEFORE_CLOSE,
            });
        }
        self.refused_in_a_row = 0;
        Ok(())
    }

    /// [`Screen::check`] on a socket: a refused command is answered on it,
    /// and a flood closes it. Whether `text` may go on.
    pub fn pass<A>(&mut self, text: &str, ctx: &mut ws::WebsocketContext<A>) -> bool
    where
        A: Actor<Context = ws::WebsocketContext<A>>,
    {
        let Err(refused) = self.check(text) else {
            return true;
        };
        ctx.text(refused.answer);
        if refused.close {
            close_with(flooded(), ctx);
        }
        false
    }
}

/// The close that ends a socket whose client went on flooding.
pub fn flooded() -> CloseSession {
    CloseSession {
        code: ws::CloseCode::Policy,
        reason: "rate_limited".into(),
    }
}

/// A customer's command, or the `bad_request` frame that answers it.
pub fn parse_command(text: &str) -> Result<CustomerCommand, Frame> {
    CustomerCommand::parse(text).map_err(|e| {
        error_frame(
            "bad_request",
            &format!("invalid command: {e}"),
            salvage_ref(text).as_deref(),
        )
    })
}

impl CustomerSession {
    pub fn new(
        session: Id,
        shards: WebchatShards,
        config: &crate::config::Config,
        journal: Option<crate::journal::Journal>,
    ) -> Self {
        CustomerSession {
            id: crate::ws::next_session_id(),
            session,
            shards,
            backlog: config.socket_backlog,
            frames: Reassembly::new(config.max_frame),
            backlog_bytes: crate::ws::Backlog::new(config.socket_backlog_bytes),
            held: crate::ws::Held::new(journal),
            hb: Heartbeat::new(config.heartbeat_interval, config.client_timeout),
            screen: Screen::new(config),
        }
    }

    fn channel(&self) -> &Addr<WebchatChannel> {
        self.shards.for_session(&self.session)
    }
}

impl Actor for CustomerSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.backlog);
        self.hb.start(ctx, |s| &mut s.hb);
        self.channel().do_send(CustomerConnected {
            session: self.session.clone(),
            link: SocketLink::new(
                self.id,
                ctx.address(),
                &self.backlog_bytes,
                self.held.journal(),
            ),
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.channel().do_send(CustomerDisconnected {
            session: self.session.clone(),
            socket: self.id,
        });
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for CustomerSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let Some(text) = handle_frame(msg, &mut self.hb, &mut self.frames, ctx) else {
            return;
        };
        if !self.screen.pass(&text, ctx) {
            return;
        }
        match parse_command(&text) {
            Ok(command) => self.channel().do_send(FromCustomer {
                session: self.session.clone(),
                socket: self.id,
                command,
            }),
            Err(answer) => ctx.text(answer),
        }
    }
}

impl Handler<Push> for CustomerSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        crate::ws::deliver(self, msg, ctx, |s| (&mut s.held, &s.backlog_bytes));
    }
}

impl Handler<CloseSession> for CustomerSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        close_with(msg, ctx);
    }
}

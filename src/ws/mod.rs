//! Socket session actors: one per WebSocket, each only translating frames ↔
//! actor messages. They hold no broker state, so moving from
//! `actix-web-actors` to `actix-ws` touches this folder only.
//!
//! - `agent_session.rs`: an agent desktop, talking to its `Agent` actor.
//! - `customer_session.rs`: a webchat customer, talking to the webchat channel.
//! - `supervisor_session.rs`: a supervisor, fed by the supervisor hub.
//!
//! Outbound frames reach a session as [`Push`] through a [`SocketLink`], which
//! enforces the slow-consumer policy: each session's mailbox is bounded at
//! `socket_backlog` pushes (a frame, or a customer's `ack` with its
//! message); when it is full the client is not reading, so the sender
//! closes the socket (`1008 slow_consumer`) and forgets it instead of
//! buffering without bound. A session actor whose client stops reading is not
//! polled at all (actix drives it from the response stream), so the policy has
//! to live on the sending side, here.

pub mod agent_session;
pub mod customer_session;
pub mod supervisor_session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;
use actix_web_actors::ws;

use crate::metrics::Metrics;
use crate::protocol::Frame;

/// Close reason sent to a client that stopped reading.
pub const SLOW_CONSUMER: &str = "slow_consumer";

/// Text frames for the client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Push(pub Frames);

/// What one [`Push`] carries: two frames for one socket at the same moment
/// (a customer's `ack` and the message it acknowledges) go as one mailbox
/// message, one envelope and one wake-up of the session.
pub enum Frames {
    One(Frame),
    Two(Frame, Frame),
}

impl IntoIterator for Frames {
    type Item = Frame;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<Frame>, 2>>;

    /// The frames in the order they are to be written.
    fn into_iter(self) -> Self::IntoIter {
        match self {
            Frames::One(frame) => [Some(frame), None],
            Frames::Two(first, second) => [Some(first), Some(second)],
        }
        .into_iter()
        .flatten()
    }
}

/// Close the socket with this code and reason, then stop.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: ws::CloseCode,
    pub reason: String,
}

/// Unique per socket within the process.
pub fn next_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Why a frame could not be handed to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDown {
    /// The session already stopped.
    Closed,
    /// Its queue was full: it has been told to close as a slow consumer.
    Slow,
}

/// The sending side's handle on one socket session.
#[derive(Clone)]
pub struct SocketLink {
    pub id: u64,
    /// The session's address, shared by the link's clones: each copy of an
    /// actix address (or recipient) is an allocation of its own, and a
    /// webchat session keeps its link for as long as the socket is open.
    session: Arc<dyn SessionAddr>,
}

/// What a link needs of a session actor's address.
trait SessionAddr: Send + Sync {
    fn push(&self, frames: Frames) -> Result<(), SendError<Push>>;
    fn close(&self, msg: CloseSession);
}

impl<A> SessionAddr for Addr<A>
where
    A: Actor + Handler<Push> + Handler<CloseSession>,
    A::Context: actix::dev::ToEnvelope<A, Push> + actix::dev::ToEnvelope<A, CloseSession>,
{
    fn push(&self, frames: Frames) -> Result<(), SendError<Push>> {
        self.try_send(Push(frames))
    }

    fn close(&self, msg: CloseSession) {
        self.do_send(msg);
    }
}

impl SocketLink {
    /// A link to the session at `addr` (e.g. `ctx.address()` in `started`).
    pub fn new<A>(id: u64, addr: Addr<A>) -> Self
    where
        A: Actor + Handler<Push> + Handler<CloseSession>,
        A::Context: actix::dev::ToEnvelope<A, Push> + actix::dev::ToEnvelope<A, CloseSession>,
    {
        SocketLink {
            id,
            session: Arc::new(addr),
        }
    }

    /// Queue a frame, never blocking and never growing past the backlog.
    pub fn send(&self, frame: Frame, metrics: &Metrics) -> Result<(), LinkDown> {
        self.send_frames(Frames::One(frame), metrics)
    }

    /// Queue two frames, in order, as one message of the session's mailbox.
    pub fn send_two(&self, first: Frame, second: Frame, metrics: &Metrics) -> Result<(), LinkDown> {
        self.send_frames(Frames::Two(first, second), metrics)
    }

    fn send_frames(&self, frames: Frames, metrics: &Metrics) -> Result<(), LinkDown> {
        match self.session.push(frames) {
            Ok(()) => Ok(()),
            Err(SendError::Closed(_)) => Err(LinkDown::Closed),
            Err(SendError::Full(_)) => {
                Metrics::bump(&metrics.slow_consumers);
                self.close(ws::CloseCode::Policy, SLOW_CONSUMER);
                Err(LinkDown::Slow)
            }
        }
    }

    /// Ask the session to close (queued past the bound: it must get through).
    pub fn close(&self, code: ws::CloseCode, reason: &str) {
        self.session.close(CloseSession {
            code,
            reason: reason.to_owned(),
        });
    }
}

/// Liveness shared by every session: ping every `interval`, close after
/// `timeout` without any frame from the client.
pub struct Heartbeat {
    pub last_seen: Instant,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Heartbeat {
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Heartbeat {
            last_seen: Instant::now(),
            interval,
            timeout,
        }
    }

    /// Start the ping timer on a session's context.
    pub fn start<A>(&self, ctx: &mut ws::WebsocketContext<A>, beat: fn(&mut A) -> &mut Heartbeat)
    where
        A: Actor<Context = ws::WebsocketContext<A>>,
    {
        ctx.run_interval(self.interval, move |act, ctx| {
            let hb = beat(act);
            if hb.last_seen.elapsed() > hb.timeout {
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Away,
                    description: Some("heartbeat timeout".into()),
                }));
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }
}

/// Shared handling of control frames and protocol errors. Returns the text of a
/// text frame for the session to parse, or None when the frame was handled here.
pub fn handle_frame<A>(
    msg: Result<ws::Message, ws::ProtocolError>,
    hb: &mut Heartbeat,
    max_frame: usize,
    ctx: &mut ws::WebsocketContext<A>,
) -> Option<bytestring::ByteString>
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    hb.last_seen = Instant::now();
    match msg {
        Ok(ws::Message::Text(text)) => Some(text),
        Ok(ws::Message::Ping(p)) => {
            ctx.pong(&p);
            None
        }
        Ok(ws::Message::Pong(_)) => None,
        Ok(ws::Message::Binary(_)) => {
            ctx.text(crate::protocol::error_frame(
                "bad_request",
                "binary frames are not supported: send JSON text frames",
                None,
            ));
            None
        }
        Ok(ws::Message::Close(reason)) => {
            ctx.close(reason);
            ctx.stop();
            None
        }
        Ok(ws::Message::Continuation(_)) | Ok(ws::Message::Nop) => None,
        Err(ws::ProtocolError::Overflow) => {
            ctx.text(crate::protocol::error_frame(
                "payload_too_large",
                &format!("frame larger than {max_frame} bytes"),
                None,
            ));
            ctx.close(Some(ws::CloseReason {
                code: ws::CloseCode::Size,
                description: Some("payload_too_large".into()),
            }));
            ctx.stop();
            None
        }
        Err(e) => {
            ctx.close(Some(ws::CloseReason {
                code: ws::CloseCode::Protocol,
                description: Some(e.to_string()),
            }));
            ctx.stop();
            None
        }
    }
}

/// Shared `Push`/`CloseSession` behaviour.
pub fn push_text<A>(frames: Frames, ctx: &mut ws::WebsocketContext<A>)
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    for frame in frames {
        ctx.text(frame);
    }
}

pub fn close_with<A>(msg: CloseSession, ctx: &mut ws::WebsocketContext<A>)
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    ctx.close(Some(ws::CloseReason {
        code: msg.code,
        description: Some(msg.reason),
    }));
    ctx.stop();
}

//! Socket session actors: one per WebSocket, each only translating frames ↔
//! actor messages. They hold no broker state, so moving from
//! `actix-web-actors` to `actix-ws` touches this folder only.
//!
//! - `agent_session.rs`: an agent desktop, talking to its `Agent` actor.
//! - `customer_session.rs`: a webchat customer, talking to the webchat channel.
//! - `supervisor_session.rs`: a supervisor, fed by the supervisor hub.
//! - `edge_session.rs`: cluster mode, a customer's socket or a desk on a
//!   node that does not run what it talks to; its text and frames cross
//!   the bus (`cluster::node_bus`).
//!
//! Outbound frames reach a session as [`Push`] through a [`SocketLink`], which
//! enforces the slow-consumer policy: each session's mailbox is bounded at
//! `socket_backlog` pushes (a frame, or a customer's `ack` with its message)
//! and its queued frames at `socket_backlog_bytes`
//! bytes ([`Backlog`]: a count of frames alone let a socket that never read
//! hold 512 large frames); when either is full the client is not reading, so
//! the sender closes the socket (`1008 slow_consumer`) and forgets it instead
//! of buffering without bound. A session actor whose client stops reading is
//! not polled at all (actix drives it from the response stream), so the policy
//! has to live on the sending side, here; what the session has already handed
//! to the socket is bounded by the write deadline of `http/upgrade.rs`
//! (`socket_write_timeout`).
//!
//! Inbound, [`handle_frame`] is written once for the three sessions too:
//! control frames, messages sent in fragments ([`Reassembly`], bounded by
//! `max_frame` for the whole message: close 1009 beyond it) and text that is
//! not UTF-8 (close 1007).

pub mod agent_session;
pub mod customer_session;
pub mod edge_session;
pub mod supervisor_session;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::SendError;
use actix::prelude::*;
use actix_http::ws::Item;
use actix_web_actors::ws;

use crate::journal::{Journal, Lsn};
use crate::metrics::Metrics;
use crate::protocol::Frame;

/// Close reason sent to a client that stopped reading.
pub const SLOW_CONSUMER: &str = "slow_consumer";

/// Text frames for the client, and the journal position they wait for: the
/// frames tell of state changes written up to that record (0: none), and
/// go out only once it is durable ([`deliver`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Push(pub Frames, pub Lsn);

/// What one [`Push`] carries: two frames for one socket at the same moment
/// (a customer's `ack` and the message it acknowledges) go as one mailbox
/// message, one envelope and one wake-up of the session.
pub enum Frames {
    One(Frame),
    Two(Frame, Frame),
}

impl Frames {
    /// Bytes of text, both frames together.
    pub fn bytes(&self) -> usize {
        match self {
            Frames::One(frame) => frame.len(),
            Frames::Two(first, second) => first.len() + second.len(),
        }
    }
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

/// The broker is shutting down: close every socket you hold with this code
/// and reason (handled by the webchat shards, the agents and the
/// supervisor hub, the actors that hold sockets).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CloseAll {
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

/// Bytes of frames queued for one session and not yet handed to its socket:
/// added by the [`SocketLink`] that queues a frame, taken off by the session
/// as it writes it ([`deliver`]).
#[derive(Clone)]
pub struct Backlog {
    queued: Arc<AtomicUsize>,
    budget: usize,
}

impl Backlog {
    pub fn new(budget: u64) -> Self {
        Backlog {
            queued: Arc::new(AtomicUsize::new(0)),
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
        }
    }

    /// Room for `len` more bytes? Taken if so. A frame larger than the whole
    /// budget still goes to a socket with nothing queued, or it could never
    /// be sent at all.
    fn reserve(&self, len: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q.saturating_add(len) <= self.budget).then(|| q.saturating_add(len))
            })
            .is_ok()
    }

    /// `len` bytes left the queue (written, or never queued after all).
    pub fn release(&self, len: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(len))
            });
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// The sending side's handle on one socket session.
#[derive(Clone)]
pub struct SocketLink {
    pub id: u64,
    /// The broker's journal, if it keeps one: each push carries how far it
    /// had been written when the push was made.
    journal: Option<Journal>,
    /// The session's address, shared by the link's clones: each copy of an
    /// actix address (or recipient) is an allocation of its own, and a
    /// webchat session keeps its link for as long as the socket is open.
    session: Arc<dyn SessionAddr>,
    backlog: Backlog,
}

/// An `error` frame: the answer to a command that was refused, so changed
/// nothing (`Event` writes its `type` first).
fn is_error_frame(frame: &Frame) -> bool {
    frame.starts_with(r#"{"type":"error""#)
}

/// What a link needs of a session actor's address.
trait SessionAddr: Send + Sync {
    fn push(&self, frames: Frames, after: Lsn) -> Result<(), SendError<Push>>;
    fn close(&self, msg: CloseSession);
}

impl<A> SessionAddr for Addr<A>
where
    A: Actor + Handler<Push> + Handler<CloseSession>,
    A::Context: actix::dev::ToEnvelope<A, Push> + actix::dev::ToEnvelope<A, CloseSession>,
{
    fn push(&self, frames: Frames, after: Lsn) -> Result<(), SendError<Push>> {
        self.try_send(Push(frames, after))
    }

    fn close(&self, msg: CloseSession) {
        self.do_send(msg);
    }
}

impl SocketLink {
    /// A link to the session at `addr` (e.g. `ctx.address()` in `started`),
    /// whose queued bytes are counted in `backlog` (the session's own), and
    /// whose frames wait for `journal` ([`Held::journal`]).
    pub fn new<A>(id: u64, addr: Addr<A>, backlog: &Backlog, journal: Option<&Journal>) -> Self
    where
        A: Actor + Handler<Push> + Handler<CloseSession>,
        A::Context: actix::dev::ToEnvelope<A, Push> + actix::dev::ToEnvelope<A, CloseSession>,
    {
        SocketLink {
            id,
            journal: journal.cloned(),
            session: Arc::new(addr),
            backlog: backlog.clone(),
        }
    }

    /// Queue a frame, never blocking and never growing past the backlog
    /// (frames or bytes).
    pub fn send(&self, frame: Frame, metrics: &Metrics) -> Result<(), LinkDown> {
        self.send_frames(Frames::One(frame), metrics)
    }

    /// Queue two frames, in order, as one message of the session's mailbox.
    pub fn send_two(&self, first: Frame, second: Frame, metrics: &Metrics) -> Result<(), LinkDown> {
        self.send_frames(Frames::Two(first, second), metrics)
    }

    fn send_frames(&self, frames: Frames, metrics: &Metrics) -> Result<(), LinkDown> {
        let len = frames.bytes();
        if !self.backlog.reserve(len) {
            return Err(self.slow(metrics));
        }
        // Every state change these frames tell of was applied, and so
        // appended, before they were made: the journal's end now covers it.
        // A refusal tells of none: it waits only behind the frames held
        // before it, never for others' records (while the disk fails, the
        // error saying so must not wait for the disk).
        let after = match (&self.journal, &frames) {
            (None, _) => 0,
            (Some(_), Frames::One(frame)) if is_error_frame(frame) => 0,
            (Some(journal), _) => journal.appended(),
        };
        match self.session.push(frames, after) {
            Ok(()) => Ok(()),
            Err(SendError::Closed(_)) => {
                self.backlog.release(len);
                Err(LinkDown::Closed)
            }
            Err(SendError::Full(_)) => {
                self.backlog.release(len);
                Err(self.slow(metrics))
            }
        }
    }

    /// The client is not reading: close it as a slow consumer.
    fn slow(&self, metrics: &Metrics) -> LinkDown {
        Metrics::bump(&metrics.slow_consumers);
        self.close(ws::CloseCode::Policy, SLOW_CONSUMER);
        LinkDown::Slow
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

/// A message a client sends in fragments (RFC 6455 §5.4: a first frame
/// without FIN, continuation frames, the last with FIN), put back together.
/// The whole message is bounded by `max_frame`, as one frame is: the buffer
/// exists only while a fragmented message is arriving and never grows past
/// that. The codec already refuses fragments out of order (1002).
pub struct Reassembly {
    max: usize,
    /// The fragments so far, and whether the message is text.
    partial: Option<(bool, bytes::BytesMut)>,
}

/// What a fragment made of the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not complete yet.
    More,
    /// A complete text message.
    Text(bytestring::ByteString),
    /// A complete binary message.
    Binary,
    /// Larger than the limit (close 1009).
    TooLarge,
    /// A text message that is not UTF-8 (close 1007).
    NotUtf8,
}

impl Reassembly {
    pub fn new(max: usize) -> Self {
        Reassembly { max, partial: None }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Take one continuation frame.
    pub fn push(&mut self, item: Item) -> Fragment {
        let (first, text, data, last) = match item {
            Item::FirstText(b) => (true, true, b, false),
            Item::FirstBinary(b) => (true, false, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        if first {
            self.partial = Some((text, bytes::BytesMut::new()));
        }
        let Some((is_text, buf)) = self.partial.as_mut() else {
            // The codec does not let a continuation come first.
            return Fragment::More;
        };
        if buf.len() + data.len() > self.max {
            self.partial = None;
            return Fragment::TooLarge;
        }
        buf.extend_from_slice(&data);
        if !last {
            return Fragment::More;
        }
        let is_text = *is_text;
        let Some((_, whole)) = self.partial.take() else {
            return Fragment::More;
        };
        if !is_text {
            return Fragment::Binary;
        }
        match bytestring::ByteString::try_from(whole.freeze()) {
            Ok(text) => Fragment::Text(text),
            Err(_) => Fragment::NotUtf8,
        }
    }
}

fn binary_refused<A>(ctx: &mut ws::WebsocketContext<A>)
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    ctx.text(crate::protocol::error_frame(
        "bad_request",
        "binary frames are not supported: send JSON text frames",
        None,
    ));
}

fn too_large<A>(max_frame: usize, ctx: &mut ws::WebsocketContext<A>)
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    ctx.text(crate::protocol::error_frame(
        "payload_too_large",
        &format!("message larger than {max_frame} bytes"),
        None,
    ));
    ctx.close(Some(ws::CloseReason {
        code: ws::CloseCode::Size,
        description: Some("payload_too_large".into()),
    }));
    ctx.stop();
}

fn not_utf8<A>(ctx: &mut ws::WebsocketContext<A>)
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    ctx.close(Some(ws::CloseReason {
        code: ws::CloseCode::Invalid,
        description: Some("text frame is not valid UTF-8".into()),
    }));
    ctx.stop();
}

/// Whether a stream error is a text frame that is not UTF-8:
/// actix-web-actors reports that as an I/O error carrying the `Utf8Error`'s
/// text ("invalid utf-8 sequence…", "incomplete utf-8 byte sequence…").
fn is_utf8_error(e: &ws::ProtocolError) -> bool {
    matches!(e, ws::ProtocolError::Io(io) if io.to_string().contains("utf-8"))
}

/// Shared handling of control frames, fragments and protocol errors. Returns
/// the text of a text message (one frame or reassembled fragments) for the
/// session to parse, or None when the frame was handled here.
pub fn handle_frame<A>(
    msg: Result<ws::Message, ws::ProtocolError>,
    hb: &mut Heartbeat,
    frames: &mut Reassembly,
    ctx: &mut ws::WebsocketContext<A>,
) -> Option<bytestring::ByteString>
where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    hb.last_seen = Instant::now();
    let max_frame = frames.max();
    match msg {
        Ok(ws::Message::Text(text)) => Some(text),
        Ok(ws::Message::Continuation(item)) => match frames.push(item) {
            Fragment::Text(text) => Some(text),
            Fragment::More => None,
            Fragment::Binary => {
                binary_refused(ctx);
                None
            }
            Fragment::TooLarge => {
                too_large(max_frame, ctx);
                None
            }
            Fragment::NotUtf8 => {
                not_utf8(ctx);
                None
            }
        },
        Ok(ws::Message::Ping(p)) => {
            ctx.pong(&p);
            None
        }
        Ok(ws::Message::Pong(_)) => None,
        Ok(ws::Message::Binary(_)) => {
            binary_refused(ctx);
            None
        }
        Ok(ws::Message::Close(reason)) => {
            ctx.close(reason);
            ctx.stop();
            None
        }
        Ok(ws::Message::Nop) => None,
        Err(ws::ProtocolError::Overflow) => {
            too_large(max_frame, ctx);
            None
        }
        Err(e) if is_utf8_error(&e) => {
            not_utf8(ctx);
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

/// Shared `Push`/`CloseSession` behaviour: the frames leave the backlog for
/// the socket's write buffer.
/// A session's frames that wait for the journal: what it tells the client is
/// sent only once the state change behind it is durable (the fsync policy's
/// meaning of it), so no client is told of something a crash could lose.
/// Order is kept: a frame waits behind every frame held before it. Bounded
/// by the session's [`Backlog`] (held frames are still counted there).
pub struct Held {
    journal: Option<Journal>,
    frames: VecDeque<(Lsn, Frames)>,
    waiting: bool,
}

impl Held {
    pub fn new(journal: Option<Journal>) -> Self {
        Held {
            journal,
            frames: VecDeque::new(),
            waiting: false,
        }
    }

    /// The journal frames wait for (`None`: purely in memory, no wait).
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }
}

/// Where a session's frames go once what they tell of is durable: a
/// socket session writes them to its WebSocket; a stand-in for a socket
/// held by another node ([`crate::cluster::remote_socket`]) puts them on
/// the bus. `parts` finds the session's [`Held`] and [`Backlog`].
pub struct Outlet<A: Actor> {
    pub parts: fn(&mut A) -> (&mut Held, &Backlog),
    /// Hand durable frames on (they have left the backlog already).
    pub write: fn(&mut A, Frames, &mut A::Context),
    /// The journal closed under held frames: they were never stored.
    pub close: fn(&mut A, CloseSession, &mut A::Context),
}

impl<A: Actor> Clone for Outlet<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A: Actor> Copy for Outlet<A> {}

/// Write a push's frames now if what they tell of is durable, else hold
/// them until it is. `parts` finds the session's [`Held`] and [`Backlog`].
pub fn deliver<A>(
    act: &mut A,
    msg: Push,
    ctx: &mut ws::WebsocketContext<A>,
    parts: fn(&mut A) -> (&mut Held, &Backlog),
) where
    A: Actor<Context = ws::WebsocketContext<A>>,
{
    let outlet = Outlet {
        parts,
        write: |_, frames, ctx: &mut ws::WebsocketContext<A>| {
            for frame in frames {
                ctx.text(frame);
            }
        },
        close: |_, msg, ctx| close_with(msg, ctx),
    };
    deliver_to(act, msg, ctx, outlet);
}

/// [`deliver`] through any [`Outlet`].
pub fn deliver_to<A>(act: &mut A, msg: Push, ctx: &mut A::Context, outlet: Outlet<A>)
where
    A: Actor,
    A::Context: AsyncContext<A>,
{
    let (held, _) = (outlet.parts)(act);
    let durable = match &held.journal {
        None => true,
        Some(journal) => held.frames.is_empty() && msg.1 <= journal.durable(),
    };
    if durable {
        write_out(act, msg.0, ctx, outlet);
        return;
    }
    held.frames.push_back((msg.1, msg.0));
    release(act, ctx, outlet);
}

/// The frames leave the backlog and go out.
fn write_out<A: Actor>(act: &mut A, frames: Frames, ctx: &mut A::Context, outlet: Outlet<A>) {
    (outlet.parts)(act).1.release(frames.bytes());
    (outlet.write)(act, frames, ctx);
}

/// Write the held frames that are durable now; wait for the next.
fn release<A>(act: &mut A, ctx: &mut A::Context, outlet: Outlet<A>)
where
    A: Actor,
    A::Context: AsyncContext<A>,
{
    let Some(journal) = (outlet.parts)(act).0.journal.clone() else {
        return;
    };
    let durable = journal.durable();
    loop {
        let held = (outlet.parts)(act).0;
        if held.frames.front().is_none_or(|(lsn, _)| *lsn > durable) {
            break;
        }
        if let Some((_, frames)) = held.frames.pop_front() {
            write_out(act, frames, ctx, outlet);
        }
    }
    let held = (outlet.parts)(act).0;
    let Some(&(next, _)) = held.frames.front() else {
        return;
    };
    if held.waiting {
        return;
    }
    held.waiting = true;
    let wait = async move { journal.wait_durable(next).await };
    ctx.spawn(wait.into_actor(act).map(move |res, act, ctx| {
        (outlet.parts)(act).0.waiting = false;
        match res {
            Ok(()) => release(act, ctx, outlet),
            // Closed (shutting down): what it holds was never stored.
            Err(e) => (outlet.close)(
                act,
                CloseSession {
                    code: ws::CloseCode::Again,
                    reason: format!("unavailable: {e}"),
                },
                ctx,
            ),
        }
    }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn error_frames_are_told_apart_from_the_rest() {
        let error = crate::protocol::error_frame("unavailable", "disk full", Some("r1"));
        assert!(is_error_frame(&error), "{error}");
        assert!(!is_error_frame(&crate::protocol::ok_frame(Some("r1"))));
        let message = crate::protocol::error_frame("x", "y", None);
        assert!(is_error_frame(&message));
        let text: Frame = r#"{"type":"message","message":{"text":"{\"type\":\"error\""}}"#.into();
        assert!(!is_error_frame(&text));
    }

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    #[test]
    fn fragments_make_one_message() {
        let mut r = Reassembly::new(16);
        assert_eq!(r.push(Item::FirstText(b(b"{\"a\""))), Fragment::More);
        assert_eq!(r.push(Item::Continue(b(b":"))), Fragment::More);
        assert_eq!(
            r.push(Item::Last(b(b"1}"))),
            Fragment::Text("{\"a\":1}".into())
        );
        // A character split across fragments is fine once whole.
        let e = "é".as_bytes();
        assert_eq!(r.push(Item::FirstText(b(&e[..1]))), Fragment::More);
        assert_eq!(r.push(Item::Last(b(&e[1..]))), Fragment::Text("é".into()));
        assert_eq!(r.push(Item::FirstBinary(b(b"x"))), Fragment::More);
        assert_eq!(r.push(Item::Last(b(b"y"))), Fragment::Binary);
    }

    #[test]
    fn the_whole_message_is_bounded_and_checked() {
        let mut r = Reassembly::new(8);
        assert_eq!(r.push(Item::FirstText(b(b"12345"))), Fragment::More);
        assert_eq!(r.push(Item::Continue(b(b"6789"))), Fragment::TooLarge);
        assert!(r.partial.is_none(), "the buffer is let go");
        assert_eq!(r.push(Item::FirstText(b(b"\xff"))), Fragment::More);
        assert_eq!(r.push(Item::Last(b(b"a"))), Fragment::NotUtf8);
    }

    #[test]
    fn a_backlog_counts_bytes_and_lets_one_large_frame_through() {
        let b = Backlog::new(100);
        assert!(b.reserve(60));
        assert!(b.reserve(40));
        assert!(!b.reserve(1), "full");
        b.release(100);
        assert_eq!(b.queued(), 0);
        assert!(b.reserve(500), "alone, a frame over the budget still goes");
        assert!(!b.reserve(1));
        b.release(1000);
        assert_eq!(b.queued(), 0, "never below zero");
    }
}

//! Every node an edge: a standby relays the HTTP requests it accepts to the
//! active node over NATS (`docs/cluster.md`, "Every node takes clients").
//! Its sockets do not take this path: they end at the standby and cross
//! the bus (`cluster::node_bus`). The relay streams any HTTP exchange both
//! ways for as long as it lasts, an upgraded one too (it carried the
//! sockets until they moved to the bus).
//!
//! A relayed connection is a byte stream each way between an **edge** (the
//! standby's worker that holds the client's socket, [`edge`]) and a **host**
//! (a worker of the active node, [`host`]), which runs the request through
//! the same app as its own clients: same routes, tokens and limits. The
//! edge knows nothing of the protocol: it forwards the request head, then
//! the bytes the client sends (a body), and writes back the response head
//! and the bytes the host's app answers.
//!
//! What this module owns, shared by both sides:
//! - the wire format ([`Frame`]: a tag, the connection's id, its sequence
//!   number and the payload, one NATS message each);
//! - an [`Endpoint`] per worker thread: its NATS connection, the subject it
//!   reads (`<prefix>.relay.to.<endpoint id>`), the connections it serves
//!   and one writer task, so a connection's frames go out in the order they
//!   were numbered;
//! - flow control: each side may have at most [`WINDOW`] bytes of data in
//!   flight on a connection until the other side credits them back as it
//!   consumes them, so a client that stops reading stalls its response on
//!   the host as a stalled socket would, and nothing piles up in NATS or in
//!   memory;
//! - loss detection: every frame of a connection carries the next sequence
//!   number; a gap (NATS core messages lost across a NATS reconnect) closes
//!   the connection rather than corrupting its stream; its client tries
//!   again. A lost *last* frame leaves no gap to see, so whenever an
//!   endpoint's NATS connection comes back (or NATS dropped messages for
//!   it) the two sides of each connection tell each other how many frames
//!   they sent ([`Frame::Sent`], asked for with [`Frame::Resync`]), and a
//!   side that got fewer closes the connection. A frame for a connection
//!   the other side no longer holds (it ended there, and its last frames
//!   were lost) is answered with a `Close` that ends it here too;
//! - bounds: a peer that sends past the window is cut off (the connection
//!   closes), an endpoint queues at most [`OUTBOX`] bytes of frames for
//!   NATS (a data frame that does not fit closes its connection, the
//!   newest data losing, never a frame already queued), and the NATS
//!   connection itself holds at most [`CLIENT_CAPACITY`] messages going out
//!   and [`INBOX_CAPACITY`] coming in (beyond that NATS drops them, which
//!   the sequence numbers turn into closed connections, never a corrupt
//!   stream);
//! - liveness: every endpoint pings the endpoints it has connections with
//!   every [`Timing::heartbeat`]; a peer silent for [`Timing::silence`] (a
//!   node killed or paused) has all its connections closed.

pub mod edge;
pub mod host;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::ClusterSettings;

/// Bytes of data one side may send on a connection before the other
/// credits them back.
pub const WINDOW: u64 = 64 * 1024;

/// The largest data frame: a larger chunk is split.
pub const CHUNK: usize = 16 * 1024;

/// The most bytes of frames an endpoint queues for its writer (what NATS
/// has not taken yet). Flow control already bounds each connection to
/// [`WINDOW`] bytes of data in flight; this bounds them all together, for
/// when NATS is slow or away and thousands of connections are sending.
pub const OUTBOX: usize = 32 * 1024 * 1024;

/// The relay's NATS connections hold at most this many messages (each at
/// most [`BATCH`] bytes) waiting to be written to NATS…
pub const CLIENT_CAPACITY: usize = 128;

/// …and at most this many received and not yet read by the endpoint; NATS
/// drops what comes beyond it (a slow consumer, in NATS's terms).
pub const INBOX_CAPACITY: usize = 1024;

/// How long an edge waits for an active node to take a new connection.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a relayed connection could not be opened or went down.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot reach NATS: {0}")]
    Nats(String),
    #[error("no active node is taking connections now; retry shortly")]
    NoActive,
    #[error("the active node refused the connection: {0}")]
    Refused(String),
    #[error("malformed relay frame: {0}")]
    Malformed(String),
    #[error("relayed connection closed: {0}")]
    Closed(String),
}

/// How often endpoints ping their peers, and how long a silent peer is
/// trusted.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub silence: Duration,
}

impl Timing {
    /// From the cluster's lease TTL: a ping every tenth of it, a peer given
    /// up after half of it (5 s with the default 10 s TTL), so a dead active
    /// node's relayed clients are told well before a standby takes over.
    pub fn of(settings: &ClusterSettings) -> Timing {
        Timing {
            heartbeat: (settings.lease_ttl / 10).max(Duration::from_millis(100)),
            silence: (settings.lease_ttl / 2).max(Duration::from_millis(500)),
        }
    }
}

/// The subject a new connection is opened on (the active node's hosts
/// answer it, one of them per request).
pub fn open_subject(prefix: &str) -> String {
    format!("{prefix}.relay.open")
}

/// The subject an endpoint reads.
pub fn endpoint_subject(prefix: &str, endpoint: u64) -> String {
    format!("{prefix}.relay.to.{endpoint:016x}")
}

/// An edge's request to open a connection on the active node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// The edge's endpoint, where the host sends this connection's frames.
    pub edge: u64,
    /// The connection's id, unique within the edge's endpoint.
    pub conn: u64,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's address as the edge saw it.
    pub peer: Option<String>,
}

/// The host's answer to [`Open`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Opened {
    /// Taken: the host's endpoint, where the edge sends this connection's
    /// frames, and the connection's id there.
    Host {
        endpoint: u64,
        conn: u64,
    },
    Refused(String),
}

/// The response head, host to edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body's length when known (the edge sends it as Content-Length).
    pub length: Option<u64>,
}

/// One relay message.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Host to edge: the response head (once, first).
    Head(Head),
    /// Bytes of the request (edge to host) or of the response (host to edge).
    Data(Bytes),
    /// No more data this way.
    End,
    /// The receiver consumed this many more data bytes.
    Credit(u32),
    /// The connection is gone (the client left, a timeout, a gap).
    Close(String),
    /// The sender is alive (connection 0, no sequence).
    Ping,
    /// The sender has sent this connection's frames up to (not including)
    /// this number: the receiver, having got fewer, lost some (not
    /// numbered itself; sent after the sender's NATS connection came back,
    /// or when asked with [`Frame::Resync`]).
    Sent(u32),
    /// Connection 0: "my NATS connection came back (or dropped messages):
    /// tell me with `Sent` what you have sent on each of our connections".
    Resync,
}

impl Frame {
    fn tag(&self) -> u8 {
        match self {
            Frame::Head(_) => 1,
            Frame::Data(_) => 2,
            Frame::End => 3,
            Frame::Credit(_) => 4,
            Frame::Close(_) => 5,
            Frame::Ping => 6,
            Frame::Sent(_) => 7,
            Frame::Resync => 8,
        }
    }
}

/// Who a frame is from and for: the sender's endpoint, the connection's id
/// at the receiver (`to`) and at the sender (`from_conn`), and its number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Address {
    pub from: u64,
    pub to: u64,
    pub from_conn: u64,
    pub seq: u32,
}

/// A frame as sent: `[tag: u8][from: u64][to: u64][from_conn: u64][seq:
/// u32][payload]`, little-endian.
pub fn encode(at: Address, frame: &Frame) -> Result<Bytes, RelayError> {
    let payload: Bytes = match frame {
        Frame::Head(head) => crate::codec::encode(head)
            .map_err(|e| RelayError::Malformed(e.to_string()))?
            .into(),
        Frame::Data(bytes) => bytes.clone(),
        Frame::Credit(n) | Frame::Sent(n) => Bytes::copy_from_slice(&n.to_le_bytes()),
        Frame::Close(why) => Bytes::copy_from_slice(why.as_bytes()),
        Frame::End | Frame::Ping | Frame::Resync => Bytes::new(),
    };
    let mut out = BytesMut::with_capacity(HEADER + payload.len());
    out.put_u8(frame.tag());
    out.put_u64_le(at.from);
    out.put_u64_le(at.to);
    out.put_u64_le(at.from_conn);
    out.put_u32_le(at.seq);
    out.extend_from_slice(&payload);
    Ok(out.freeze())
}

const HEADER: usize = 1 + 8 + 8 + 8 + 4;

/// A received frame and its address.
pub fn decode(mut bytes: Bytes) -> Result<(Address, Frame), RelayError> {
    if bytes.len() < HEADER {
        return Err(RelayError::Malformed(format!(
            "{} bytes, shorter than a header",
            bytes.len()
        )));
    }
    let head = bytes.split_to(HEADER);
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap_or_default());
    let tag = head[0];
    let at = Address {
        from: word(1),
        to: word(9),
        from_conn: word(17),
        seq: u32::from_le_bytes(head[25..29].try_into().unwrap_or_default()),
    };
    let frame = match tag {
        1 => Frame::Head(
            crate::codec::decode(&bytes).map_err(|e| RelayError::Malformed(e.to_string()))?,
        ),
        2 => Frame::Data(bytes),
        3 => Frame::End,
        4 => Frame::Credit(u32::from_le_bytes(bytes[..].try_into().map_err(|_| {
            RelayError::Malformed(format!("credit of {} bytes", bytes.len()))
        })?)),
        5 => Frame::Close(String::from_utf8_lossy(&bytes).into_owned()),
        6 => Frame::Ping,
        7 => Frame::Sent(u32::from_le_bytes(bytes[..].try_into().map_err(|_| {
            RelayError::Malformed(format!("sent count of {} bytes", bytes.len()))
        })?)),
        8 => Frame::Resync,
        other => return Err(RelayError::Malformed(format!("unknown tag {other}"))),
    };
    Ok((at, frame))
}

use super::packing::Batches;
pub use super::packing::{batch, unbatch, BATCH};

/// Why a connection closed when its data did not fit in the endpoint's
/// queue.
pub const QUEUE_FULL: &str = "the relay's queue to NATS is full";

/// What a connection's reader gets: everything but credits and pings,
/// which the endpoint handles itself.
pub type Inbound = Frame;

/// A connection's received frames, for its one reader on the endpoint's
/// thread: a queue and the reader's waker. It allocates nothing until a
/// frame comes and keeps room for [`IDLE_INBOX`] frames once drained, where
/// a tokio channel allocates a block of 32 slots (about 2 KiB with its
/// shared state) for every connection up front: a relayed WebSocket is
/// mostly idle.
#[derive(Default)]
struct Inbox {
    frames: RefCell<VecDeque<Inbound>>,
    waker: RefCell<Option<Waker>>,
}

impl Inbox {
    fn push(&self, frame: Inbound) {
        self.frames.borrow_mut().push_back(frame);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn poll_next(&self, cx: &mut std::task::Context<'_>) -> Poll<Inbound> {
        let mut frames = self.frames.borrow_mut();
        if let Some(frame) = frames.pop_front() {
            if frames.is_empty() && frames.capacity() > IDLE_INBOX {
                // A burst is over: an idle connection keeps no room for it.
                frames.shrink_to(IDLE_INBOX);
            }
            return Poll::Ready(frame);
        }
        let mut waker = self.waker.borrow_mut();
        match waker.as_ref() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Frames an empty inbox keeps room for.
const IDLE_INBOX: usize = 4;

/// One side's reading of a connection: the response head (at the edge),
/// then data, credited back as it is taken, then the end or why it closed.
pub struct Reader {
    endpoint: Rc<Endpoint>,
    conn: Rc<ConnState>,
    /// `End` came: the other side finished cleanly.
    ended: bool,
    /// Nothing more will come.
    done: bool,
}

impl Reader {
    pub fn new(endpoint: Rc<Endpoint>, conn: Rc<ConnState>) -> Reader {
        Reader {
            endpoint,
            conn,
            ended: false,
            done: false,
        }
    }

    pub fn endpoint(&self) -> &Rc<Endpoint> {
        &self.endpoint
    }

    pub fn conn(&self) -> &Rc<ConnState> {
        &self.conn
    }

    /// Whether the other side sent `End`.
    pub fn ended_cleanly(&self) -> bool {
        self.ended
    }

    /// The response head (the edge's first frame from the host).
    pub async fn head(&mut self) -> Result<Head, RelayError> {
        loop {
            match self.conn.next_frame().await {
                Frame::Head(head) => return Ok(head),
                Frame::Close(why) => return Err(RelayError::Closed(why)),
                _ => {}
            }
        }
    }

    /// The next data: `None` at a clean end, an error when the connection
    /// closed before it.
    pub fn poll_data(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Bytes, String>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            return match self.conn.inbox.poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Frame::Data(bytes)) => {
                    self.endpoint.consumed(&self.conn, bytes.len());
                    Poll::Ready(Some(Ok(bytes)))
                }
                Poll::Ready(Frame::End) => {
                    (self.ended, self.done) = (true, true);
                    Poll::Ready(None)
                }
                Poll::Ready(Frame::Close(why)) => {
                    self.done = true;
                    Poll::Ready(Some(Err(why)))
                }
                Poll::Ready(_) => continue,
            };
        }
    }
}

/// One relayed connection as its endpoint keeps it.
pub struct ConnState {
    pub id: u64,
    /// Its id at the other side (0 until known).
    remote: Cell<u64>,
    /// The other side's endpoint (0 until the host answered the open).
    peer: Cell<u64>,
    /// The next sequence number to send, and to receive.
    send_seq: Cell<u32>,
    recv_seq: Cell<u32>,
    /// Data bytes sent and not yet credited back.
    in_flight: Cell<u64>,
    /// Data bytes received and not yet credited back.
    unacked: Cell<u64>,
    /// Data bytes received and not yet taken by the reader: never more than
    /// the window, or the other side ignored its credits.
    buffered: Cell<u64>,
    credit: Notify,
    inbox: Inbox,
    closed: Cell<bool>,
}

impl ConnState {
    pub fn peer(&self) -> u64 {
        self.peer.get()
    }

    pub fn remote(&self) -> u64 {
        self.remote.get()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The next frame received on this connection (after its release, a
    /// `Close` saying why). For its one reader, on the endpoint's thread.
    pub async fn next_frame(&self) -> Inbound {
        std::future::poll_fn(|cx| self.inbox.poll_next(cx)).await
    }
}

/// A relay endpoint: one per worker thread that relays (an edge) or hosts
/// relayed connections (the active node).
pub struct Endpoint {
    pub id: u64,
    pub client: async_nats::Client,
    pub prefix: String,
    timing: Timing,
    conns: RefCell<HashMap<u64, Rc<ConnState>>>,
    /// When each peer endpoint was last heard from.
    heard: RefCell<HashMap<u64, Instant>>,
    next_conn: Cell<u64>,
    out: mpsc::UnboundedSender<(u64, Bytes)>,
    /// Bytes in `out`, bounded by `outbox` for data frames.
    queued: Rc<Cell<usize>>,
    outbox: usize,
}

/// A relay's NATS connection, and word of each time frames may have been
/// lost on it (for [`Endpoint::start`]).
pub struct Connection {
    pub client: async_nats::Client,
    pub lost: mpsc::UnboundedReceiver<()>,
}

/// Connect to NATS for relaying, as the cluster's own connection does
/// (reconnecting for ever). `lost` hears of every (re)connection and of
/// every message NATS dropped for this client (a slow consumer).
pub async fn connect(settings: &ClusterSettings, role: &str) -> Result<Connection, RelayError> {
    let (client, lost) = settings
        .connect_watched(&format!(" relay {role}"), CLIENT_CAPACITY, INBOX_CAPACITY)
        .await
        .map_err(|e| RelayError::Nats(e.to_string()))?;
    Ok(Connection { client, lost })
}

impl Endpoint {
    /// Start an endpoint on this thread: its subject's reader, its writer
    /// and its heartbeat, as local tasks that end with the client. It
    /// queues at most `outbox` bytes of data frames ([`OUTBOX`]). Each word
    /// on `lost` ([`Connection::lost`]) makes it [`Endpoint::resync`].
    pub async fn start(
        client: async_nats::Client,
        lost: Option<mpsc::UnboundedReceiver<()>>,
        prefix: String,
        timing: Timing,
        outbox: usize,
    ) -> Result<Rc<Endpoint>, RelayError> {
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        let mut inbox = client
            .subscribe(endpoint_subject(&prefix, id))
            .await
            .map_err(|e| RelayError::Nats(e.to_string()))?;
        let (out, mut queue) = mpsc::unbounded_channel::<(u64, Bytes)>();
        let queued = Rc::new(Cell::new(0usize));
        let endpoint = Rc::new(Endpoint {
            id,
            client: client.clone(),
            prefix: prefix.clone(),
            timing,
            conns: RefCell::new(HashMap::new()),
            heard: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            out,
            queued: queued.clone(),
            outbox,
        });
        // The writer: one publisher, so frames leave in the order numbered;
        // what queued meanwhile for one peer goes in one NATS message.
        let writer_client = client.clone();
        let writer_prefix = prefix.clone();
        actix_web::rt::spawn(async move {
            let mut batches = Batches::default();
            while let Some((to, bytes)) = queue.recv().await {
                queued.set(queued.get().saturating_sub(bytes.len()));
                batches.add(to, &bytes);
                while batches.size() < BATCH {
                    match queue.try_recv() {
                        Ok((to, bytes)) => {
                            queued.set(queued.get().saturating_sub(bytes.len()));
                            batches.add(to, &bytes);
                        }
                        Err(_) => break,
                    }
                }
                for (to, batch) in batches.take() {
                    let subject = endpoint_subject(&writer_prefix, to);
                    if let Err(e) = writer_client.publish(subject, batch).await {
                        tracing::debug!(error = %e, "relay frames not published");
                    }
                }
            }
        });
        let reader = Rc::downgrade(&endpoint);
        actix_web::rt::spawn(async move {
            while let Some(message) = inbox.next().await {
                let Some(endpoint) = reader.upgrade() else {
                    break;
                };
                for frame in unbatch(message.payload) {
                    match frame {
                        Ok(frame) => endpoint.receive(frame),
                        Err(e) => {
                            tracing::warn!(error = %e, "relay: a message dropped");
                            break;
                        }
                    }
                }
            }
        });
        if let Some(mut lost) = lost {
            let checker = Rc::downgrade(&endpoint);
            actix_web::rt::spawn(async move {
                while lost.recv().await.is_some() {
                    // A burst of drops (NATS reports each dropped message)
                    // or reconnections makes one resync, not one each.
                    while lost.try_recv().is_ok() {}
                    let Some(endpoint) = checker.upgrade() else {
                        break;
                    };
                    endpoint.resync();
                }
            });
        }
        let beat = Rc::downgrade(&endpoint);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(timing.heartbeat);
            loop {
                tick.tick().await;
                let Some(endpoint) = beat.upgrade() else {
                    break;
                };
                endpoint.heartbeat();
            }
        });
        Ok(endpoint)
    }

    /// A new connection of this endpoint's; its frames are read with
    /// [`ConnState::next_frame`] or a [`Reader`]. Its other side is set by
    /// [`Endpoint::bind`].
    pub fn register(&self) -> Rc<ConnState> {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let state = Rc::new(ConnState {
            id,
            remote: Cell::new(0),
            peer: Cell::new(0),
            send_seq: Cell::new(0),
            recv_seq: Cell::new(0),
            in_flight: Cell::new(0),
            unacked: Cell::new(0),
            buffered: Cell::new(0),
            credit: Notify::new(),
            inbox: Inbox::default(),
            closed: Cell::new(false),
        });
        self.conns.borrow_mut().insert(id, state.clone());
        state
    }

    /// The connection's other side: endpoint `peer`, where it is `remote`.
    pub fn bind(&self, conn: &ConnState, peer: u64, remote: u64) {
        conn.peer.set(peer);
        conn.remote.set(remote);
        self.heard
            .borrow_mut()
            .entry(peer)
            .or_insert_with(Instant::now);
    }

    /// Forget a connection; the other side is told with `Close` unless it
    /// ended cleanly (`why` = None). Its local reader gets `Close` too (after
    /// whatever it has not read), so a side still waiting wakes.
    pub fn release(&self, conn: &ConnState, why: Option<&str>) {
        if self.forget(conn, why.unwrap_or("closed")) {
            if let Some(why) = why {
                self.send(conn, &Frame::Close(why.to_owned()));
            }
        }
    }

    /// Drop a connection here, once: its reader gets `Close(why)`, a
    /// sender waiting for credit wakes. Whether it was still open.
    fn forget(&self, conn: &ConnState, why: &str) -> bool {
        if conn.closed.replace(true) {
            return false;
        }
        conn.inbox.push(Frame::Close(why.to_owned()));
        self.conns.borrow_mut().remove(&conn.id);
        conn.credit.notify_waiters();
        true
    }

    /// Queue a frame of `conn` for its peer, numbered; nothing once the
    /// connection is released. A data frame that does not fit in the
    /// endpoint's queue ([`OUTBOX`]) closes the connection instead.
    pub fn post(&self, conn: &ConnState, frame: &Frame) {
        if conn.closed.get() {
            return;
        }
        if let Frame::Data(data) = frame {
            if self.queued.get() + HEADER + data.len() > self.outbox {
                tracing::warn!(
                    conn = conn.id,
                    queued = self.queued.get(),
                    "relay: the queue to NATS is full; closing the connection"
                );
                self.release(conn, Some(QUEUE_FULL));
                return;
            }
        }
        self.send(conn, frame);
    }

    /// Bytes of frames queued for NATS now.
    pub fn queued(&self) -> usize {
        self.queued.get()
    }

    /// Queue a frame whatever the queue holds: control frames (credits,
    /// closes, pings) are a few bytes each, at most a few per connection.
    fn enqueue(&self, peer: u64, bytes: Bytes) {
        self.queued.set(self.queued.get() + bytes.len());
        if self.out.send((peer, bytes)).is_err() {
            self.queued.set(0);
        }
    }

    fn send(&self, conn: &ConnState, frame: &Frame) {
        let peer = conn.peer.get();
        if peer == 0 {
            return;
        }
        let seq = conn.send_seq.get();
        conn.send_seq.set(seq.wrapping_add(1));
        let at = Address {
            from: self.id,
            to: conn.remote.get(),
            from_conn: conn.id,
            seq,
        };
        match encode(at, frame) {
            Ok(bytes) => self.enqueue(peer, bytes),
            Err(e) => tracing::warn!(error = %e, "relay frame not encoded"),
        }
    }

    /// Send data on `conn`, in chunks, each once the window has room.
    /// Fails when the connection closes, or when the peer credits nothing
    /// back for `stall` (a client that stopped reading).
    pub async fn send_data(
        &self,
        conn: &ConnState,
        mut data: Bytes,
        stall: Duration,
    ) -> Result<(), RelayError> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK);
            loop {
                if conn.closed.get() {
                    return Err(RelayError::Closed("closed".into()));
                }
                if conn.in_flight.get() + n as u64 <= WINDOW {
                    break;
                }
                let credited = conn.credit.notified();
                if tokio::time::timeout(stall, credited).await.is_err() {
                    return Err(RelayError::Closed(format!(
                        "the client read nothing for {} s",
                        stall.as_secs_f64()
                    )));
                }
            }
            conn.in_flight.set(conn.in_flight.get() + n as u64);
            self.post(conn, &Frame::Data(data.split_to(n)));
            if conn.closed.get() {
                return Err(RelayError::Closed(QUEUE_FULL.into()));
            }
        }
        Ok(())
    }

    /// The reader of `conn` consumed `n` data bytes: credit them back once
    /// half a window has gathered.
    pub fn consumed(&self, conn: &ConnState, n: usize) {
        conn.buffered
            .set(conn.buffered.get().saturating_sub(n as u64));
        let unacked = conn.unacked.get() + n as u64;
        if unacked >= WINDOW / 2 {
            conn.unacked.set(0);
            self.post(conn, &Frame::Credit(unacked as u32));
        } else {
            conn.unacked.set(unacked);
        }
    }

    fn receive(&self, payload: Bytes) {
        let (at, frame) = match decode(payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(error = %e, "relay: a frame dropped");
                return;
            }
        };
        let (from, seq) = (at.from, at.seq);
        self.heard.borrow_mut().insert(from, Instant::now());
        if frame == Frame::Ping {
            return;
        }
        if frame == Frame::Resync {
            self.report_sent(from);
            return;
        }
        let state = self.conns.borrow().get(&at.to).cloned();
        // An edge's connection learns its host from the open's answer, but
        // the host's first frames may come before it (another subscription):
        // the first frame binds it just the same.
        if let Some(state) = state.as_ref().filter(|s| s.peer.get() == 0) {
            self.bind(state, from, at.from_conn);
        }
        // A close from a peer that no longer holds the connection comes from
        // no connection of its own (`from_conn` 0, [`ConnState::detached`]):
        // it is for ours all the same.
        let detached_close = at.from_conn == 0 && matches!(frame, Frame::Close(_));
        let Some(state) = state
            .filter(|s| s.peer.get() == from && (s.remote.get() == at.from_conn || detached_close))
        else {
            // Not (or no longer) ours: tell the sender to stop.
            if !matches!(frame, Frame::Close(_)) {
                let gone = ConnState::detached(at.from_conn, from);
                self.send(&gone, &Frame::Close("no such connection".into()));
            }
            return;
        };
        if let Frame::Sent(sent) = frame {
            // Everything sent before this came before it on the same path:
            // what has not come was lost.
            if sent != state.recv_seq.get() {
                self.lost(
                    &state,
                    format!(
                        "relay frames up to {sent} were sent and {} came",
                        state.recv_seq.get()
                    ),
                );
            }
            return;
        }
        if let Frame::Close(why) = frame {
            // Told by the other side, in turn or not (an answer for a
            // connection it does not hold is not numbered): nothing to
            // tell it back.
            self.forget(&state, &why);
            return;
        }
        if seq != state.recv_seq.get() {
            self.lost(
                &state,
                format!(
                    "relay frame {seq} arrived where {} was due",
                    state.recv_seq.get()
                ),
            );
            return;
        }
        state.recv_seq.set(seq.wrapping_add(1));
        match frame {
            Frame::Credit(n) => {
                state
                    .in_flight
                    .set(state.in_flight.get().saturating_sub(u64::from(n)));
                state.credit.notify_waiters();
            }
            Frame::Data(data) if state.buffered.get() + data.len() as u64 > WINDOW => {
                let why = format!(
                    "the other side sent {} bytes past the flow-control window",
                    state.buffered.get() + data.len() as u64 - WINDOW
                );
                tracing::warn!(conn = state.id, "relay: {why}");
                self.release(&state, Some(&why));
            }
            other => {
                if let Frame::Data(data) = &other {
                    state.buffered.set(state.buffered.get() + data.len() as u64);
                }
                state.inbox.push(other);
            }
        }
    }

    /// Ping every peer we have connections with; close those of a peer
    /// silent for too long.
    fn heartbeat(&self) {
        let now = Instant::now();
        let peers = self.peers();
        let mut silent = Vec::new();
        {
            let mut heard = self.heard.borrow_mut();
            heard.retain(|p, _| peers.binary_search(p).is_ok());
            for peer in &peers {
                let last = *heard.entry(*peer).or_insert(now);
                if now.duration_since(last) > self.timing.silence {
                    silent.push(*peer);
                }
            }
        }
        for peer in &peers {
            self.to_endpoint(*peer, &Frame::Ping);
        }
        if silent.is_empty() {
            return;
        }
        let gone: Vec<Rc<ConnState>> = self
            .conns
            .borrow()
            .values()
            .filter(|c| silent.contains(&c.peer.get()))
            .cloned()
            .collect();
        for conn in gone {
            let why = format!(
                "the other node was silent for over {} s",
                self.timing.silence.as_secs_f64()
            );
            self.release(&conn, Some(&why));
        }
        for peer in silent {
            self.heard.borrow_mut().remove(&peer);
        }
    }

    /// Tell `peer` what this endpoint has sent on each connection with it
    /// ([`Frame::Sent`]), so it finds what it lost.
    fn report_sent(&self, peer: u64) {
        let conns: Vec<Rc<ConnState>> = self
            .conns
            .borrow()
            .values()
            .filter(|c| c.peer.get() == peer)
            .cloned()
            .collect();
        for conn in conns {
            let at = Address {
                from: self.id,
                to: conn.remote.get(),
                from_conn: conn.id,
                seq: 0,
            };
            if let Ok(bytes) = encode(at, &Frame::Sent(conn.send_seq.get())) {
                self.enqueue(peer, bytes);
            }
        }
    }

    /// Frames of `conn` were lost (`what` says how it shows): close it, so
    /// its client reconnects rather than read a stream with a hole in it.
    fn lost(&self, conn: &ConnState, what: String) {
        let why = format!("{what}: frames were lost");
        tracing::warn!(conn = conn.id, "{why}");
        self.release(conn, Some(&why));
    }

    /// The peer endpoints this one has connections with, each once.
    fn peers(&self) -> Vec<u64> {
        let mut peers: Vec<u64> = self
            .conns
            .borrow()
            .values()
            .map(|c| c.peer.get())
            .filter(|p| *p != 0)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// A frame for endpoint `peer` itself, of no connection and not
    /// numbered ([`Frame::Ping`], [`Frame::Resync`]).
    fn to_endpoint(&self, peer: u64, frame: &Frame) {
        let at = Address {
            from: self.id,
            to: 0,
            from_conn: 0,
            seq: 0,
        };
        if let Ok(bytes) = encode(at, frame) {
            self.enqueue(peer, bytes);
        }
    }

    /// This endpoint's NATS connection came back, or NATS dropped messages
    /// for it: frames may have been lost either way on any connection,
    /// and a lost last frame would leave its connection waiting for good.
    /// Each side tells the other what it sent; a side that got less closes
    /// the connection (its client reconnects and resends, as after any
    /// drop).
    pub fn resync(&self) {
        for peer in self.peers() {
            self.report_sent(peer);
            self.to_endpoint(peer, &Frame::Resync);
        }
    }

    /// How many connections this endpoint holds.
    pub fn connections(&self) -> usize {
        self.conns.borrow().len()
    }
}

impl ConnState {
    /// A connection we do not hold, to answer its sender (at its id
    /// `remote` there).
    fn detached(remote: u64, peer: u64) -> ConnState {
        ConnState {
            id: 0,
            remote: Cell::new(remote),
            peer: Cell::new(peer),
            send_seq: Cell::new(0),
            recv_seq: Cell::new(0),
            in_flight: Cell::new(0),
            unacked: Cell::new(0),
            buffered: Cell::new(0),
            credit: Notify::new(),
            inbox: Inbox::default(),
            closed: Cell::new(true),
        }
    }
}

/// Headers that describe one hop's connection, not the request: never
/// relayed.
pub fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let head = Head {
            status: 101,
            headers: vec![("upgrade".into(), b"websocket".to_vec())],
            length: None,
        };
        for frame in [
            Frame::Head(head),
            Frame::Data(Bytes::from_static(b"\x81\x05hello")),
            Frame::Data(Bytes::new()),
            Frame::End,
            Frame::Credit(32 * 1024),
            Frame::Close("the client left".into()),
            Frame::Ping,
            Frame::Sent(77),
            Frame::Resync,
        ] {
            let at = Address {
                from: 7,
                to: 42,
                from_conn: 3,
                seq: 9,
            };
            let bytes = encode(at, &frame).expect("encodes");
            assert_eq!(decode(bytes).expect("decodes"), (at, frame));
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(matches!(
            decode(Bytes::from_static(b"short")),
            Err(RelayError::Malformed(_))
        ));
        let at = Address {
            from: 1,
            to: 1,
            from_conn: 1,
            seq: 0,
        };
        let mut bad = encode(at, &Frame::End).expect("encodes").to_vec();
        bad[0] = 99;
        assert!(matches!(decode(bad.into()), Err(RelayError::Malformed(_))));
        let mut credit = encode(at, &Frame::Credit(5)).expect("encodes").to_vec();
        credit.pop();
        assert!(matches!(
            decode(credit.into()),
            Err(RelayError::Malformed(_))
        ));
    }

    #[test]
    fn an_inbox_wakes_its_reader_in_order_and_keeps_no_room_once_drained() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::{Context, Wake};

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let inbox = Inbox::default();
        assert_eq!(inbox.frames.borrow().capacity(), 0, "nothing allocated");
        assert!(inbox.poll_next(&mut cx).is_pending());
        inbox.push(Frame::End);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the waiting reader woke");
        inbox.push(Frame::Close("x".into()));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "no waker left to wake");
        assert_eq!(inbox.poll_next(&mut cx), Poll::Ready(Frame::End));
        assert_eq!(
            inbox.poll_next(&mut cx),
            Poll::Ready(Frame::Close("x".into()))
        );
        for _ in 0..100 {
            inbox.push(Frame::Data(Bytes::from_static(b"burst")));
        }
        for _ in 0..100 {
            assert!(inbox.poll_next(&mut cx).is_ready());
        }
        assert!(inbox.frames.borrow().capacity() <= IDLE_INBOX + 1);
        assert!(inbox.poll_next(&mut cx).is_pending());
    }

    #[test]
    fn hop_by_hop_headers_stay() {
        assert!(hop_by_hop("connection") && hop_by_hop("transfer-encoding"));
        assert!(!hop_by_hop("upgrade") && !hop_by_hop("authorization"));
    }
}

//! The bus: typed messages from node to node over core NATS: the sockets
//! and webhooks a standby holds for the active node (`node_bus`;
//! `docs/cluster.md`, "The bus").
//!
//! Each node reads one subject, `<prefix>.bus.<node id>`, and sends to a
//! peer by its node id. A message is any serde type `M` (the codec's
//! bincode); the bus adds what core NATS does not give:
//!
//! - **Order.** One writer task per node numbers each peer's messages and
//!   publishes them on one connection, so a peer sees them in the order they
//!   were sent; what queued meanwhile for one peer leaves in one NATS
//!   message ([`packing`](super::packing)).
//! - **No silent loss.** Core NATS may drop messages (across a reconnection,
//!   or for a slow consumer). A gap in a peer's numbers, a peer's ping
//!   saying it sent more than arrived (a lost *last* message leaves no gap),
//!   or a message that does not decode is told to the consumer as
//!   [`Delivery::Lost`], in order, before what comes after: what it holds of
//!   its exchange with that peer must be made whole again (the journal is
//!   the truth; the bus only carries). A request that does not decode is
//!   refused at once, and nothing is lost. Numbers start at 0 for each
//!   incarnation: what a first contact counts lost may have been meant for
//!   an earlier incarnation of this node, and fails no request of its own.
//! - **Incarnations.** Every start of a bus picks a random incarnation. A
//!   peer that comes back with a new one has lost what was sent to the old
//!   one: [`Delivery::Restarted`]. Peers ping each other, so each side
//!   learns of the other's restart even if only one of them was sending.
//! - **Liveness.** A peer heard from and then silent for [`Timing::silence`]
//!   is told once as [`Delivery::Silent`].
//! - **Request and reply**, numbered like other messages: [`Bus::request`]
//!   waits for the peer's [`Responder::respond`] within a deadline. A
//!   responder dropped unanswered answers [`BusError::NotAnswered`] at once;
//!   a peer that restarts, goes silent or whose messages were lost fails the
//!   requests waiting on it at once, rather than at their deadline, and so
//!   does a request lost on its way: a receiver that finds a gap tells the
//!   sender which numbers never arrived ([`BusError::RequestLost`]).
//! - **Bounds.** At most [`BusOptions::outbox`] bytes of messages wait for
//!   NATS; past it [`Bus::send`] refuses with [`BusError::Full`] and the
//!   sender decides (nothing queued is dropped). A consumer that does not
//!   read its deliveries (at most [`BusOptions::deliveries`] queued) stops
//!   the reader, and NATS then drops for this node, which shows as `Lost`.
//! - **Any length.** A message longer than [`PART`] leaves in pieces
//!   ([`Kind::Part`]), numbered like any frame; the reader puts them
//!   together and hands on the whole, in its place. NATS takes at most
//!   `max_payload` (1 MiB by default) a message.
//!
//! Nothing is stored: the bus is a message plane, not a log. Node ids must be unique among live nodes (two processes with one
//! id would read each other's messages).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::packing::{put, unbatch, Batches, BATCH};
use super::relay::Timing;
use super::{valid_node_id, ClusterSettings};

/// A bus endpoint's id: a node's id, or a node's id and one of its
/// endpoints' (`node-1~2`: each worker of a node has its own endpoint,
/// `cluster::node_bus`).
pub fn valid_endpoint(id: &str) -> bool {
    match id.split_once('~') {
        Some((node, endpoint)) => valid_node_id(node) && valid_node_id(endpoint),
        None => valid_node_id(id),
    }
}

/// Bytes of messages a node queues for NATS, over all peers, by default.
pub const OUTBOX: usize = 16 * 1024 * 1024;

/// Deliveries queued for the consumer by default.
pub const DELIVERIES: usize = 4096;

/// The bus's NATS connection holds at most this many messages (each at most
/// [`BATCH`] bytes) waiting to be written…
const CLIENT_CAPACITY: usize = 128;

/// …and at most this many received and not yet read; NATS drops what comes
/// beyond (a slow consumer), which shows as [`Delivery::Lost`].
const SUBSCRIPTION_CAPACITY: usize = 4096;

/// The wire format's version, first byte of every sender header.
const VERSION: u8 = 1;

/// The subject `node` reads.
pub fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.bus.{node}")
}

/// Why a message could not be sent or a request got no answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BusError {
    #[error("cannot reach NATS: {0}")]
    Nats(String),
    #[error("not a node id: {0:?}")]
    BadNode(String),
    #[error("the bus's queue to NATS is full ({queued} bytes waiting)")]
    Full { queued: usize },
    #[error("message not encoded: {0}")]
    Encode(String),
    #[error("the answer from {peer} does not decode: {why}")]
    Decode { peer: String, why: String },
    #[error("no answer from {peer} within {after:?}")]
    Timeout { peer: String, after: Duration },
    #[error("{peer} restarted before it answered")]
    PeerRestarted { peer: String },
    #[error("{peer} went silent before it answered")]
    PeerSilent { peer: String },
    #[error("messages from {peer} were lost; the answer may be among them")]
    AnswerLost { peer: String },
    #[error("the request never reached {peer} (lost on the way)")]
    RequestLost { peer: String },
    #[error("{peer} did not answer: {why}")]
    NotAnswered { peer: String, why: String },
    #[error("the bus is stopped")]
    Stopped,
}

/// Why messages from a peer are missing.
#[derive(Debug, Clone, PartialEq)]
pub enum Loss {
    /// This many numbered messages never arrived.
    Missing(u64),
    /// A message arrived but does not decode (torn, or from a build that
    /// sends what this one does not know).
    Undecodable(String),
}

/// What the consumer of a node's bus receives, in the order it happened.
#[derive(Debug)]
pub enum Delivery<M> {
    Message {
        from: String,
        body: M,
    },
    /// A request: answer it with `responder` (dropping it answers
    /// [`BusError::NotAnswered`]).
    Request {
        from: String,
        body: M,
        responder: Responder<M>,
    },
    /// Messages from `from` were lost: resynchronise with it.
    Lost {
        from: String,
        loss: Loss,
    },
    /// `from` runs a new incarnation: what it held of this node's messages
    /// is gone.
    Restarted {
        from: String,
        /// The new incarnation ([`Bus::incarnation`] says it from now on).
        incarnation: u64,
    },
    /// Nothing heard from `from` for [`Timing::silence`].
    Silent {
        from: String,
    },
}

/// How a bus is bounded and how often it pings.
#[derive(Clone, Copy, Debug)]
pub struct BusOptions {
    pub outbox: usize,
    pub deliveries: usize,
    pub timing: Timing,
}

impl BusOptions {
    /// The defaults, with the relay's timing for the cluster's lease TTL.
    pub fn of(settings: &ClusterSettings) -> BusOptions {
        BusOptions {
            outbox: OUTBOX,
            deliveries: DELIVERIES,
            timing: Timing::of(settings),
        }
    }
}

/// A frame's kind; the first four are numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Message = 1,
    Request = 2,
    Reply = 3,
    NoReply = 4,
    /// `seq` = how many numbered frames the sender has sent to the
    /// receiver; `corr` = 1 asks for a ping back.
    Ping = 5,
    /// "Your frames numbered `seq` up to (not including) `corr` never
    /// reached me": the receiver fails the requests among them at once.
    Gap = 6,
    /// A piece of a message, request or reply too long for one frame
    /// (over [`PART`] bytes): `corr` is the whole one's; the body is
    /// `[offset: u64][kind: u8][total: u64]` and the piece. Numbered like
    /// any frame, in order, so the receiver puts the pieces together as
    /// they come and handles the whole once its last piece is in.
    Part = 7,
}

/// The most of a body one frame carries. NATS takes at most `max_payload`
/// bytes a message (1 MiB by default) and the writer packs frames into
/// messages of at most [`BATCH`]: a longer body leaves in pieces
/// ([`Kind::Part`]).
const PART: usize = 128 * 1024;

/// The most a body put together from pieces may hold: what the codec
/// decodes at most, and some room.
const MAX_WHOLE: u64 = 32 * 1024 * 1024;

/// A piece's header: where it starts, the whole's kind and length.
const PART_HEADER: usize = 8 + 1 + 8;

impl Kind {
    fn of(tag: u8) -> Option<Kind> {
        Some(match tag {
            1 => Kind::Message,
            2 => Kind::Request,
            3 => Kind::Reply,
            4 => Kind::NoReply,
            5 => Kind::Ping,
            6 => Kind::Gap,
            7 => Kind::Part,
            _ => return None,
        })
    }

    fn numbered(self) -> bool {
        !matches!(self, Kind::Ping | Kind::Gap)
    }
}

/// A frame on the wire: `[kind: u8][seq: u64][corr: u64][body]`, LE.
#[derive(Clone, Debug, PartialEq)]
struct Frame {
    kind: Kind,
    seq: u64,
    corr: u64,
    body: Bytes,
}

const FRAME_HEADER: usize = 1 + 8 + 8;

impl Frame {
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(FRAME_HEADER + self.body.len());
        out.put_u8(self.kind as u8);
        out.put_u64_le(self.seq);
        out.put_u64_le(self.corr);
        out.extend_from_slice(&self.body);
        out.freeze()
    }

    fn decode(mut bytes: Bytes) -> Result<Frame, String> {
        if bytes.len() < FRAME_HEADER {
            return Err(format!("a frame of {} bytes", bytes.len()));
        }
        let tag = bytes.get_u8();
        let kind = Kind::of(tag).ok_or_else(|| format!("unknown frame kind {tag}"))?;
        let seq = bytes.get_u64_le();
        let corr = bytes.get_u64_le();
        Ok(Frame {
            kind,
            seq,
            corr,
            body: bytes,
        })
    }
}

/// The sender header opening each NATS message:
/// `[version: u8][incarnation: u64][node id]`.
fn put_header(batch: &mut BytesMut, node: &str, incarnation: u64) {
    let mut header = BytesMut::with_capacity(9 + node.len());
    header.put_u8(VERSION);
    header.put_u64_le(incarnation);
    header.extend_from_slice(node.as_bytes());
    put(batch, &header);
}

fn read_header(mut bytes: Bytes) -> Result<(String, u64), String> {
    if bytes.len() < 9 {
        return Err(format!("a sender header of {} bytes", bytes.len()));
    }
    let version = bytes.get_u8();
    if version != VERSION {
        return Err(format!("wire version {version}, this node reads {VERSION}"));
    }
    let incarnation = bytes.get_u64_le();
    let node = String::from_utf8(bytes.to_vec()).map_err(|_| "a node id not in UTF-8")?;
    if !valid_endpoint(&node) {
        return Err(format!("not a node id: {node:?}"));
    }
    Ok((node, incarnation))
}

/// The incarnation of a peer sent to but not heard from yet (a real one is
/// never 0).
const UNHEARD: u64 = 0;

/// What the receiver knows of one peer.
struct PeerIn {
    incarnation: u64,
    /// The next numbered frame expected.
    expected: u64,
    heard: Instant,
    silent: bool,
}

/// What a received frame means, in order.
#[derive(Debug, PartialEq)]
enum Step {
    Restarted,
    Lost(u64),
    /// Frames numbered before the first one heard from this incarnation of
    /// the peer: counted lost, though they may have been meant for an
    /// earlier incarnation of this node (over-told, never under-told). No
    /// request of this node's is failed for them: what it sent before the
    /// peer was first heard from may be answered by what comes next (a
    /// restarted node's first request, answered by a peer whose numbers
    /// run on from the earlier incarnation), and one whose answer was among
    /// them runs to its deadline.
    BeforeFirstContact(u64),
    /// A numbered frame, to handle.
    Take(Frame),
    /// The peer asked for a ping.
    PingBack,
}

impl Step {
    /// `n` frames that never came, before a first contact or not.
    fn missing(n: u64, first_contact: bool) -> Step {
        if first_contact {
            Step::BeforeFirstContact(n)
        } else {
            Step::Lost(n)
        }
    }
}

/// The receiving side's bookkeeping of its peers: pure, so its rules are
/// tested without NATS.
#[derive(Default)]
struct Peers {
    peers: HashMap<String, PeerIn>,
}

impl Peers {
    fn on_frame(&mut self, from: &str, incarnation: u64, frame: Frame, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut first = false;
        let peer = match self.peers.get_mut(from) {
            Some(peer) if peer.incarnation == incarnation => peer,
            known => {
                first = true;
                if known.is_some_and(|peer| peer.incarnation != UNHEARD) {
                    steps.push(Step::Restarted);
                }
                // Tell it this incarnation at once (it may have sent to an
                // earlier one, or be waiting to hear from this node).
                steps.push(Step::PingBack);
                // Every incarnation numbers its frames to a peer from 0, so
                // whatever came before this one is counted lost, even when
                // it was meant for an earlier incarnation of this node:
                // over-told (a restarted node resynchronises anyway), never
                // under-told.
                self.peers.insert(
                    from.to_owned(),
                    PeerIn {
                        incarnation,
                        expected: 0,
                        heard: now,
                        silent: false,
                    },
                );
                self.peers.get_mut(from).expect("just inserted")
            }
        };
        peer.heard = now;
        peer.silent = false;
        if frame.kind.numbered() {
            if frame.seq < peer.expected {
                // Already had it (NATS does not redeliver; a retried
                // publish could): never taken twice.
                return steps;
            }
            if frame.seq > peer.expected {
                steps.push(Step::missing(frame.seq - peer.expected, first));
            }
            peer.expected = frame.seq + 1;
            steps.push(Step::Take(frame));
        } else {
            if frame.seq > peer.expected {
                steps.push(Step::missing(frame.seq - peer.expected, first));
                peer.expected = frame.seq;
            }
            if frame.corr == 1 && !steps.contains(&Step::PingBack) {
                steps.push(Step::PingBack);
            }
        }
        steps
    }

    /// This node has started sending to `peer`: if it was never heard
    /// from, its silence counts from now (a peer that dies before it ever
    /// answers is told as silent too).
    fn expect(&mut self, peer: &str, now: Instant) {
        self.peers.entry(peer.to_owned()).or_insert(PeerIn {
            incarnation: UNHEARD,
            expected: 0,
            heard: now,
            silent: false,
        });
    }

    /// Peers heard from (or sent to), silent for longer than `silence` and
    /// not yet told.
    fn newly_silent(&mut self, silence: Duration, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (node, peer) in &mut self.peers {
            if !peer.silent && now.duration_since(peer.heard) > silence {
                peer.silent = true;
                out.push(node.clone());
            }
        }
        out
    }
}

/// A frame queued for the writer, not yet numbered (a gap's first missing
/// number rides in `gap_from`).
struct Out {
    to: Arc<str>,
    kind: Kind,
    corr: u64,
    body: Bytes,
    gap_from: u64,
}

type Answer = Result<Bytes, BusError>;

/// A request waiting for its answer.
struct Waiting {
    peer: Arc<str>,
    /// Its number in this node's frames to `peer`, once the writer has
    /// numbered it.
    seq: Option<u64>,
    tell: oneshot::Sender<Answer>,
}

/// Requests waiting for an answer, by correlation id.
type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

/// Each peer's incarnation as last heard, by node id.
type Incarnations = Arc<Mutex<HashMap<Arc<str>, u64>>>;

/// The writer's queue, with the bytes of bodies in it: bounded by `limit`
/// for messages, requests and replies; pings, gaps and refusals always go
/// (small, and owed).
#[derive(Clone)]
struct Outbox {
    queue: mpsc::UnboundedSender<Out>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Outbox {
    fn push(&self, out: Out) -> Result<(), BusError> {
        let len = out.body.len();
        if matches!(out.kind, Kind::Message | Kind::Request | Kind::Reply) {
            let queued = self.queued.load(Ordering::Relaxed);
            if queued + len > self.limit {
                return Err(BusError::Full { queued });
            }
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.queue.send(out).map_err(|_| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            BusError::Stopped
        })
    }
}

/// What the bus's handles share with its tasks.
struct Shared {
    node: Arc<str>,
    outbox: Outbox,
    pending: Pending,
    /// Each peer's incarnation, as last heard.
    incarnations: Incarnations,
    /// This bus's own.
    incarnation: u64,
    next_corr: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Shared {
    /// Queue a frame for node `to`.
    fn enqueue(&self, to: &str, kind: Kind, corr: u64, body: Bytes) -> Result<(), BusError> {
        if !valid_endpoint(to) {
            return Err(BusError::BadNode(to.to_owned()));
        }
        self.outbox.push(Out {
            to: Arc::from(to),
            kind,
            corr,
            body,
            gap_from: 0,
        })
    }
}

/// A node's handle on the bus; cheap to clone. The bus stops when the last
/// handle (and the last [`Responder`]) is dropped.
pub struct Bus<M> {
    shared: Arc<Shared>,
    _message: PhantomData<fn() -> M>,
}

impl<M> Clone for Bus<M> {
    fn clone(&self) -> Self {
        Bus {
            shared: self.shared.clone(),
            _message: PhantomData,
        }
    }
}

fn encode<M: Serialize>(message: &M) -> Result<Bytes, BusError> {
    crate::codec::encode(message)
        .map(Bytes::from)
        .map_err(|e| BusError::Encode(e.to_string()))
}

impl<M> Bus<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Start this node's bus (its id from `settings`) on its own NATS
    /// connection, in the current tokio runtime.
    pub async fn start(
        settings: &ClusterSettings,
        options: BusOptions,
    ) -> Result<(Bus<M>, mpsc::Receiver<Delivery<M>>), BusError> {
        let node: Arc<str> = Arc::from(settings.node_id.as_str());
        if !valid_endpoint(&node) {
            return Err(BusError::BadNode(node.to_string()));
        }
        let (client, lost) = settings
            .connect_watched(" bus", CLIENT_CAPACITY, SUBSCRIPTION_CAPACITY)
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        let inbox = client
            .subscribe(subject(&settings.prefix, &node))
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        let incarnation = loop {
            let n: u64 = rand::random();
            if n != 0 {
                break n;
            }
        };
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let (deliver, deliveries) = mpsc::channel(options.deliveries.max(1));
        let (expect_tx, expect) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let pending = Arc::new(Mutex::new(HashMap::new()));
        let heard = Arc::new(Mutex::new(HashMap::new()));
        let incarnations: Incarnations = Arc::new(Mutex::new(HashMap::new()));
        let outbox = Outbox {
            queue,
            queued: queued.clone(),
            limit: options.outbox,
        };
        let shared = Arc::new(Shared {
            node: node.clone(),
            outbox: outbox.clone(),
            pending: pending.clone(),
            incarnations: incarnations.clone(),
            incarnation,
            next_corr: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
        });
        let writer = Writer {
            client,
            prefix: settings.prefix.clone(),
            node: node.clone(),
            incarnation,
            queued,
            heard: heard.clone(),
            sent: HashMap::new(),
            expect: expect_tx,
            pending: pending.clone(),
            idle: options.timing.silence * 10,
        };
        let reader = Reader {
            node: node.clone(),
            incarnation,
            outbox,
            pending,
            heard,
            incarnations,
            peers: Peers::default(),
            deliver,
            shared: Arc::downgrade(&shared),
            timing: options.timing,
            parts: HashMap::new(),
        };
        // The server has the subscription once this node's own probe (a
        // sender header and no frame) comes back through it: what peers
        // send from then on reaches this node.
        let (ready, probed) = oneshot::channel();
        let mut probe = BytesMut::new();
        put_header(&mut probe, &node, incarnation);
        let probe_client = writer.client.clone();
        let tasks = vec![
            tokio::spawn(writer.run(queue_rx, lost, options.timing.heartbeat)),
            tokio::spawn(reader.run(inbox, expect, ready)),
        ];
        *shared.tasks.lock() = tasks;
        let own = subject(&settings.prefix, &node);
        let patience = options.timing.silence.max(Duration::from_secs(5));
        let deadline = tokio::time::Instant::now() + patience;
        let mut probed = std::pin::pin!(probed);
        loop {
            probe_client
                .publish(own.clone(), probe.clone().freeze())
                .await
                .map_err(|e| BusError::Nats(e.to_string()))?;
            let retry = tokio::time::Instant::now() + Duration::from_millis(100);
            match tokio::time::timeout_at(retry.min(deadline), &mut probed).await {
                Ok(_) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(BusError::Nats(format!(
                        "this node's subscription not confirmed within {patience:?}"
                    )))
                }
                Err(_) => {}
            }
        }
        Ok((
            Bus {
                shared,
                _message: PhantomData,
            },
            deliveries,
        ))
    }

    /// Stop at once, as a crash would for the peers (no goodbye: they
    /// find the silence). Sends and requests fail with
    /// [`BusError::Stopped`] afterwards.
    pub fn stop(&self) {
        for task in self.shared.tasks.lock().drain(..) {
            task.abort();
        }
        let waiting: Vec<_> = self.shared.pending.lock().drain().collect();
        for (_, waiting) in waiting {
            let _ = waiting.tell.send(Err(BusError::Stopped));
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Bytes waiting for NATS now.
    pub fn queued(&self) -> usize {
        self.shared.outbox.queued.load(Ordering::Relaxed)
    }

    /// This bus's incarnation, as its peers hear it.
    pub fn own_incarnation(&self) -> u64 {
        self.shared.incarnation
    }

    /// `peer`'s incarnation as last heard (`None`: never heard from). What
    /// a [`Delivery::Restarted`] names from then on.
    pub fn incarnation(&self, peer: &str) -> Option<u64> {
        self.shared.incarnations.lock().get(peer).copied()
    }

    /// Send `message` to node `to`; it arrives after everything sent to
    /// `to` before it, or its loss is told there.
    pub fn send(&self, to: &str, message: &M) -> Result<(), BusError> {
        self.shared.enqueue(to, Kind::Message, 0, encode(message)?)
    }

    /// Ask node `to` and wait for its answer, at most `within`.
    pub async fn request(&self, to: &str, message: &M, within: Duration) -> Result<M, BusError> {
        let body = encode(message)?;
        let corr = self.shared.next_corr.fetch_add(1, Ordering::Relaxed);
        let (tell, answer) = oneshot::channel();
        self.shared.pending.lock().insert(
            corr,
            Waiting {
                peer: Arc::from(to),
                seq: None,
                tell,
            },
        );
        if let Err(e) = self.shared.enqueue(to, Kind::Request, corr, body) {
            self.shared.pending.lock().remove(&corr);
            return Err(e);
        }
        let bytes = match tokio::time::timeout(within, answer).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => return Err(BusError::Stopped),
            Err(_) => {
                self.shared.pending.lock().remove(&corr);
                return Err(BusError::Timeout {
                    peer: to.to_owned(),
                    after: within,
                });
            }
        };
        crate::codec::decode(&bytes).map_err(|e| BusError::Decode {
            peer: to.to_owned(),
            why: e.to_string(),
        })
    }
}

/// The answer owed to one request. Dropped unanswered, it tells the
/// requester so at once.
pub struct Responder<M> {
    shared: Arc<Shared>,
    to: Arc<str>,
    corr: u64,
    answered: bool,
    _message: PhantomData<fn(M)>,
}

impl<M> std::fmt::Debug for Responder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("to", &self.to)
            .field("corr", &self.corr)
            .finish()
    }
}

impl<M> Responder<M> {
    fn refuse(&self, why: &str) {
        let _ = self.shared.enqueue(
            &self.to,
            Kind::NoReply,
            self.corr,
            Bytes::copy_from_slice(why.as_bytes()),
        );
    }
}

impl<M: Serialize> Responder<M> {
    /// Answer the request. A full queue answers the requester with
    /// [`BusError::NotAnswered`] instead, and says so here.
    pub fn respond(mut self, answer: &M) -> Result<(), BusError> {
        self.answered = true;
        let sent = encode(answer)
            .and_then(|body| self.shared.enqueue(&self.to, Kind::Reply, self.corr, body));
        if let Err(e) = &sent {
            self.refuse(&e.to_string());
        }
        sent
    }
}

impl<M> Drop for Responder<M> {
    fn drop(&mut self) {
        if !self.answered {
            self.refuse("the request was dropped without an answer");
        }
    }
}

/// The one task that numbers and publishes this node's frames.
struct Writer {
    client: async_nats::Client,
    prefix: String,
    node: Arc<str>,
    incarnation: u64,
    queued: Arc<AtomicUsize>,
    /// Peers heard from (by the reader), and when.
    heard: Arc<Mutex<HashMap<Arc<str>, Instant>>>,
    /// Per peer sent to: the next number, and when a numbered frame last
    /// went to it.
    sent: HashMap<Arc<str>, (u64, Instant)>,
    /// Tells the reader of each peer newly sent to.
    expect: mpsc::UnboundedSender<Arc<str>>,
    /// To number the requests waiting for an answer.
    pending: Pending,
    /// Peers neither sent to nor heard from for this long are pinged no
    /// more (their numbers are kept: a peer's numbering never restarts
    /// within an incarnation).
    idle: Duration,
}

impl Writer {
    async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Out>,
        mut lost: mpsc::UnboundedReceiver<()>,
        heartbeat: Duration,
    ) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batches = Batches::<Arc<str>>::default();
        let mut lost_open = true;
        loop {
            tokio::select! {
                out = queue.recv() => {
                    let Some(out) = out else { break };
                    self.pack(&mut batches, out);
                    while batches.size() < BATCH {
                        match queue.try_recv() {
                            Ok(out) => self.pack(&mut batches, out),
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => self.ping_all(&mut batches, false),
                word = lost.recv(), if lost_open => {
                    if word.is_none() {
                        lost_open = false;
                        continue;
                    }
                    // A burst of drops or reconnections makes one resync.
                    while lost.try_recv().is_ok() {}
                    self.ping_all(&mut batches, true);
                }
            }
            for (to, batch) in batches.take() {
                if let Err(e) = self.client.publish(subject(&self.prefix, &to), batch).await {
                    // The numbers tell the peer what did not arrive.
                    tracing::debug!(error = %e, peer = %to, "bus frames not published");
                }
            }
        }
    }

    fn pack(&mut self, batches: &mut Batches<Arc<str>>, out: Out) {
        self.queued.fetch_sub(out.body.len(), Ordering::Relaxed);
        if out.kind.numbered() && out.body.len() > PART {
            self.pack_in_parts(batches, out);
        } else {
            self.number(batches, out);
        }
    }

    /// Number `out` (if its kind is) and add it to its peer's batch.
    fn number(&mut self, batches: &mut Batches<Arc<str>>, out: Out) {
        let now = Instant::now();
        let entry = self.sent.entry(out.to.clone()).or_insert_with(|| {
            let _ = self.expect.send(out.to.clone());
            (0, now)
        });
        let seq = match out.kind {
            Kind::Ping => entry.0,
            Kind::Gap => out.gap_from,
            _ => {
                entry.1 = now;
                entry.0 += 1;
                entry.0 - 1
            }
        };
        if out.kind == Kind::Request {
            if let Some(waiting) = self.pending.lock().get_mut(&out.corr) {
                waiting.seq = Some(seq);
            }
        }
        let frame = Frame {
            kind: out.kind,
            seq,
            corr: out.corr,
            body: out.body,
        }
        .encode();
        let (node, incarnation) = (&self.node, self.incarnation);
        batches.add_opened(out.to, &frame, |b| put_header(b, node, incarnation));
    }

    /// A body over [`PART`] bytes, in pieces of at most that many, each a
    /// numbered frame of its own ([`Kind::Part`]). A request waits on its
    /// last piece's number (a gap that takes any piece away makes the
    /// receiver refuse the request, see [`Assembly`]).
    fn pack_in_parts(&mut self, batches: &mut Batches<Arc<str>>, out: Out) {
        for piece in pieces(out.kind, &out.body) {
            self.number(
                batches,
                Out {
                    to: out.to.clone(),
                    kind: Kind::Part,
                    corr: out.corr,
                    body: piece,
                    gap_from: 0,
                },
            );
        }
        if out.kind == Kind::Request {
            let last = self.sent.get(&out.to).map(|(n, _)| n - 1);
            if let Some(waiting) = self.pending.lock().get_mut(&out.corr) {
                waiting.seq = last;
            }
        }
    }

    /// Ping every peer sent to or heard from lately: it learns how many
    /// frames were sent to it (a lost last one shows) and this incarnation
    /// (a restart shows). `ask`: "ping me back" (after this node's NATS
    /// connection came back, when frames may have been lost both ways).
    fn ping_all(&mut self, batches: &mut Batches<Arc<str>>, ask: bool) {
        let now = Instant::now();
        let idle = self.idle;
        let mut peers: Vec<Arc<str>> = self
            .sent
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) <= idle)
            .map(|(peer, _)| peer.clone())
            .collect();
        for (peer, at) in self.heard.lock().iter() {
            if now.duration_since(*at) <= idle && !peers.contains(peer) {
                peers.push(peer.clone());
            }
        }
        for peer in peers {
            self.pack(
                batches,
                Out {
                    to: peer,
                    kind: Kind::Ping,
                    corr: u64::from(ask),
                    body: Bytes::new(),
                    gap_from: 0,
                },
            );
        }
    }
}

/// The one task that reads this node's subject.
struct Reader<M> {
    node: Arc<str>,
    incarnation: u64,
    /// To queue pings back, gaps and refusals.
    outbox: Outbox,
    pending: Pending,
    incarnations: Incarnations,
    heard: Arc<Mutex<HashMap<Arc<str>, Instant>>>,
    peers: Peers,
    deliver: mpsc::Sender<Delivery<M>>,
    /// For the responders handed out (weak: the bus ends when its handles
    /// do).
    shared: std::sync::Weak<Shared>,
    timing: Timing,
    /// Each peer's long body being put together from its pieces.
    parts: HashMap<Arc<str>, Assembly>,
}

/// A long body's pieces so far ([`Kind::Part`]), from one peer.
struct Assembly {
    kind: Kind,
    corr: u64,
    total: u64,
    body: BytesMut,
}

/// The bodies of the pieces ([`Kind::Part`]) a `kind` frame's long `body`
/// leaves in, in order: each at most [`PART`] bytes of it, after a header
/// saying where it starts, the whole's kind and length.
fn pieces(kind: Kind, body: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let total = body.len();
    (0..total).step_by(PART).map(move |offset| {
        let end = (offset + PART).min(total);
        let mut piece = BytesMut::with_capacity(PART_HEADER + end - offset);
        piece.put_u64_le(offset as u64);
        piece.put_u8(kind as u8);
        piece.put_u64_le(total as u64);
        piece.extend_from_slice(&body[offset..end]);
        piece.freeze()
    })
}

/// What a piece says: where it starts, the whole's kind and length, and
/// its bytes.
fn read_part(mut body: Bytes) -> Result<(u64, Kind, u64, Bytes), String> {
    if body.len() < PART_HEADER {
        return Err(format!("a piece of {} bytes", body.len()));
    }
    let offset = body.get_u64_le();
    let tag = body.get_u8();
    let kind = Kind::of(tag)
        .filter(|k| matches!(k, Kind::Message | Kind::Request | Kind::Reply))
        .ok_or_else(|| format!("a piece of a frame of kind {tag}"))?;
    let total = body.get_u64_le();
    if total > MAX_WHOLE || offset + body.len() as u64 > total {
        return Err(format!(
            "a piece at {offset} of {} bytes, of {total}",
            body.len()
        ));
    }
    Ok((offset, kind, total, body))
}

impl<M> Reader<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    async fn run(
        mut self,
        mut inbox: async_nats::Subscriber,
        mut expect: mpsc::UnboundedReceiver<Arc<str>>,
        ready: oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut tick = tokio::time::interval(self.timing.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbox.next() => {
                    let Some(message) = message else { break };
                    if !self.receive(message.payload, &mut ready).await {
                        break;
                    }
                }
                Some(peer) = expect.recv() => self.peers.expect(&peer, Instant::now()),
                _ = tick.tick() => {
                    let now = Instant::now();
                    for peer in self.peers.newly_silent(self.timing.silence, now) {
                        if *peer == *self.node {
                            continue; // its frames to itself may just stop
                        }
                        self.parts.remove(peer.as_str());
                        self.fail_pending(&peer, |peer| BusError::PeerSilent { peer });
                        if self.deliver.send(Delivery::Silent { from: peer }).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One NATS message; false once nobody takes deliveries. This node's
    /// own probe makes it `ready`.
    async fn receive(&mut self, payload: Bytes, ready: &mut Option<oneshot::Sender<()>>) -> bool {
        let mut frames = unbatch(payload);
        let header = match frames.next() {
            Some(Ok(header)) => read_header(header),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("an empty message".into()),
        };
        let (from, incarnation) = match header {
            Ok(header) => header,
            Err(why) => {
                // Nobody to tell: the sender's next ping shows the loss.
                tracing::warn!(node = %self.node, %why, "bus: a message without a sender dropped");
                return true;
            }
        };
        let now = Instant::now();
        let from_arc: Arc<str> = Arc::from(from.as_str());
        if *from == *self.node {
            // This node's probe (no frames), or its frames to itself
            // (numbered like any peer's); it does not ping itself.
            if let Some(ready) = ready.take_if(|_| incarnation == self.incarnation) {
                let _ = ready.send(());
            }
        } else {
            self.heard.lock().insert(from_arc.clone(), now);
            // Before any frame of it is handled: whoever an answer in it
            // wakes sees the incarnation that answered.
            self.incarnations
                .lock()
                .insert(from_arc.clone(), incarnation);
        }
        for frame in frames {
            let frame = match frame.map_err(|e| e.to_string()).and_then(Frame::decode) {
                Ok(frame) => frame,
                Err(why) => {
                    return self.lost(&from, Loss::Undecodable(why)).await;
                }
            };
            if frame.kind == Kind::Gap {
                // What this node sent `from` that never arrived there.
                let (first, end) = (frame.seq, frame.corr);
                self.fail_where(
                    &from,
                    |seq| seq.is_some_and(|seq| (first..end).contains(&seq)),
                    |peer| BusError::RequestLost { peer },
                );
                continue;
            }
            // A gap ends where this frame's number (or ping's count) is.
            let end = frame.seq;
            for step in self.peers.on_frame(&from, incarnation, frame, now) {
                let alive = match step {
                    Step::Restarted => {
                        self.parts.remove(from.as_str());
                        self.fail_pending(&from, |peer| BusError::PeerRestarted { peer });
                        self.tell(Delivery::Restarted {
                            from: from.clone(),
                            incarnation,
                        })
                        .await
                    }
                    Step::Lost(n) | Step::BeforeFirstContact(n) => {
                        // Tell the sender too: its requests among them
                        // fail at once.
                        let _ = self.outbox.push(Out {
                            to: from_arc.clone(),
                            kind: Kind::Gap,
                            corr: end,
                            body: Bytes::new(),
                            gap_from: end.saturating_sub(n),
                        });
                        if matches!(step, Step::Lost(_)) {
                            self.fail_pending(&from, |peer| BusError::AnswerLost { peer });
                        }
                        self.told_lost(&from, Loss::Missing(n)).await
                    }
                    Step::PingBack => {
                        self.control(&from_arc, Kind::Ping, 0, Bytes::new());
                        true
                    }
                    Step::Take(frame) if frame.kind == Kind::Part => {
                        match self.assemble(&from_arc, frame) {
                            Ok(Some(whole)) => self.take(&from, &from_arc, whole).await,
                            Ok(None) => true,
                            Err(why) => self.lost(&from, Loss::Undecodable(why)).await,
                        }
                    }
                    Step::Take(frame) => self.take(&from, &from_arc, frame).await,
                };
                if !alive {
                    return false;
                }
            }
        }
        true
    }

    async fn take(&mut self, from: &str, from_arc: &Arc<str>, frame: Frame) -> bool {
        match frame.kind {
            Kind::Reply | Kind::NoReply => {
                let waiting = self.pending.lock().remove(&frame.corr);
                if let Some(Waiting { tell, .. }) = waiting {
                    let answer = if frame.kind == Kind::Reply {
                        Ok(frame.body)
                    } else {
                        Err(BusError::NotAnswered {
                            peer: from.to_owned(),
                            why: String::from_utf8_lossy(&frame.body).into_owned(),
                        })
                    };
                    let _ = tell.send(answer);
                }
                true
            }
            Kind::Message | Kind::Request => {
                let body: M = match crate::codec::decode(&frame.body) {
                    Ok(body) => body,
                    Err(e) if frame.kind == Kind::Request => {
                        // A request of a kind this build does not know (a
                        // newer peer's, while builds are mixed): refused at
                        // once rather than at its deadline. Nothing was
                        // lost: it arrived in order, and its answer tells
                        // the requester what became of it.
                        tracing::debug!(peer = %from, error = %e, "bus: a request that does not decode refused");
                        self.control(
                            from_arc,
                            Kind::NoReply,
                            frame.corr,
                            Bytes::from(format!("the request does not decode: {e}")),
                        );
                        return true;
                    }
                    Err(e) => {
                        return self.lost(from, Loss::Undecodable(e.to_string())).await;
                    }
                };
                let delivery = if frame.kind == Kind::Request {
                    let Some(shared) = self.shared.upgrade() else {
                        return false;
                    };
                    Delivery::Request {
                        from: from.to_owned(),
                        body,
                        responder: Responder {
                            shared,
                            to: from_arc.clone(),
                            corr: frame.corr,
                            answered: false,
                            _message: PhantomData,
                        },
                    }
                } else {
                    Delivery::Message {
                        from: from.to_owned(),
                        body,
                    }
                };
                self.tell(delivery).await
            }
            // Pieces are put together before (`assemble`).
            Kind::Ping | Kind::Gap | Kind::Part => true,
        }
    }

    /// A piece of a long body from `from`: the whole frame once its last
    /// piece is in. A piece that does not follow the one before (pieces
    /// were lost, and the gap told) drops what was put together; a request
    /// among what is dropped is refused at once (`NoReply`), so that its
    /// sender does not wait for its deadline.
    fn assemble(&mut self, from: &Arc<str>, frame: Frame) -> Result<Option<Frame>, String> {
        let (offset, kind, total, piece) = read_part(frame.body)?;
        if offset == 0 {
            if let Some(old) = self.parts.remove(from) {
                self.refuse_incomplete(from, old.kind, old.corr);
            }
            self.parts.insert(
                from.clone(),
                Assembly {
                    kind,
                    corr: frame.corr,
                    total,
                    body: BytesMut::with_capacity(total.min(4 * PART as u64) as usize),
                },
            );
        }
        let follows = |a: &Assembly| {
            a.kind == kind
                && a.corr == frame.corr
                && a.total == total
                && a.body.len() as u64 == offset
        };
        let Some(assembly) = self.parts.get_mut(from).filter(|a| follows(a)) else {
            // Its start was lost.
            if let Some(old) = self.parts.remove(from) {
                self.refuse_incomplete(from, old.kind, old.corr);
            }
            if offset + piece.len() as u64 == total {
                self.refuse_incomplete(from, kind, frame.corr);
            }
            return Ok(None);
        };
        assembly.body.extend_from_slice(&piece);
        if (assembly.body.len() as u64) < total {
            return Ok(None);
        }
        Ok(self.parts.remove(from).map(|whole| Frame {
            kind: whole.kind,
            seq: frame.seq,
            corr: whole.corr,
            body: whole.body.freeze(),
        }))
    }

    /// A long request whose pieces did not all come: refused at once.
    fn refuse_incomplete(&self, to: &Arc<str>, kind: Kind, corr: u64) {
        if kind == Kind::Request {
            self.control(
                to,
                Kind::NoReply,
                corr,
                Bytes::from_static(b"pieces of the request were lost"),
            );
        }
    }

    async fn lost(&mut self, from: &str, loss: Loss) -> bool {
        self.fail_pending(from, |peer| BusError::AnswerLost { peer });
        self.told_lost(from, loss).await
    }

    /// Tell the consumer what was lost from `from` (what was put together
    /// of its pieces goes with it); the requests waiting on it are left to
    /// the caller.
    async fn told_lost(&mut self, from: &str, loss: Loss) -> bool {
        self.parts.remove(from);
        self.tell(Delivery::Lost {
            from: from.to_owned(),
            loss,
        })
        .await
    }

    /// Queue a ping or a refusal for the writer.
    fn control(&self, to: &Arc<str>, kind: Kind, corr: u64, body: Bytes) {
        let _ = self.outbox.push(Out {
            to: to.clone(),
            kind,
            corr,
            body,
            gap_from: 0,
        });
    }

    async fn tell(&self, delivery: Delivery<M>) -> bool {
        self.deliver.send(delivery).await.is_ok()
    }

    /// Fail at once every request waiting on `peer`.
    fn fail_pending(&self, peer: &str, error: impl Fn(String) -> BusError) {
        self.fail_where(peer, |_| true, error);
    }

    /// Fail at once the requests waiting on `peer` whose number `lost`
    /// says never reached it.
    fn fail_where(
        &self,
        peer: &str,
        lost: impl Fn(Option<u64>) -> bool,
        error: impl Fn(String) -> BusError,
    ) {
        let failed: Vec<oneshot::Sender<Answer>> = {
            let mut pending = self.pending.lock();
            let corrs: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| *w.peer == *peer && lost(w.seq))
                .map(|(corr, _)| *corr)
                .collect();
            corrs
                .into_iter()
                .filter_map(|corr| pending.remove(&corr).map(|w| w.tell))
                .collect()
        };
        for tell in failed {
            let _ = tell.send(Err(error(peer.to_owned())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, seq: u64) -> Frame {
        Frame {
            kind,
            seq,
            corr: 0,
            body: Bytes::from_static(b"x"),
        }
    }

    fn ping(count: u64, ask: bool) -> Frame {
        Frame {
            kind: Kind::Ping,
            seq: count,
            corr: u64::from(ask),
            body: Bytes::new(),
        }
    }

    /// One NATS message from `node` carrying `frames`.
    fn message(node: &str, incarnation: u64, frames: &[Frame]) -> Bytes {
        let mut batches = Batches::<()>::default();
        for f in frames {
            batches.add_opened((), &f.encode(), |b| put_header(b, node, incarnation));
        }
        batches.take().remove(0).1
    }

    /// A reader of node "me" with no NATS: what it queues for the writer,
    /// what it delivers, and the requests waiting.
    #[allow(clippy::type_complexity)]
    fn reader<M>() -> (
        Reader<M>,
        mpsc::UnboundedReceiver<Out>,
        mpsc::Receiver<Delivery<M>>,
        Pending,
    ) {
        let (queue, out) = mpsc::unbounded_channel();
        let (deliver, deliveries) = mpsc::channel(16);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let reader = Reader::<M> {
            node: Arc::from("me"),
            incarnation: 1,
            outbox: Outbox {
                queue,
                queued: Arc::new(AtomicUsize::new(0)),
                limit: OUTBOX,
            },
            pending: pending.clone(),
            heard: Arc::new(Mutex::new(HashMap::new())),
            incarnations: Arc::new(Mutex::new(HashMap::new())),
            peers: Peers::default(),
            deliver,
            shared: std::sync::Weak::new(),
            timing: Timing {
                heartbeat: Duration::from_millis(100),
                silence: Duration::from_secs(1),
            },
            parts: HashMap::new(),
        };
        (reader, out, deliveries, pending)
    }

    #[tokio::test]
    async fn a_long_body_is_put_together_from_its_pieces_and_dropped_when_one_is_lost() {
        let (mut reader, mut out, mut deliveries, _) = reader::<String>();
        let long = "é".repeat(200_000);
        let body = encode(&long).expect("encodes");
        let numbered = |kind, corr, first: u64| {
            pieces(kind, &body)
                .enumerate()
                .map(|(i, piece)| Frame {
                    kind: Kind::Part,
                    seq: first + i as u64,
                    corr,
                    body: piece,
                })
                .collect::<Vec<_>>()
        };
        let message_parts = numbered(Kind::Message, 0, 0);
        assert_eq!(message_parts.len(), body.len().div_ceil(PART));
        assert!(message_parts.len() >= 3, "{}", message_parts.len());
        let mut ready = None;
        for part in &message_parts {
            assert!(
                reader
                    .receive(message("z", 7, std::slice::from_ref(part)), &mut ready)
                    .await
            );
        }
        match deliveries.try_recv() {
            Ok(Delivery::Message { from, body }) => assert!(from == "z" && body == long),
            other => panic!("{other:?}"),
        }

        // A request whose second piece never comes: the gap is told, the
        // request refused at once, nothing delivered of it.
        let n = message_parts.len() as u64;
        let request_parts = numbered(Kind::Request, 77, n);
        for (i, part) in request_parts.iter().enumerate() {
            if i != 1 {
                assert!(
                    reader
                        .receive(message("z", 7, std::slice::from_ref(part)), &mut ready)
                        .await
                );
            }
        }
        assert!(matches!(
            deliveries.try_recv(),
            Ok(Delivery::Lost {
                loss: Loss::Missing(1),
                ..
            })
        ));
        assert!(deliveries.try_recv().is_err(), "nothing more delivered");
        let mut refused = false;
        while let Ok(queued) = out.try_recv() {
            refused |= queued.kind == Kind::NoReply && queued.corr == 77;
        }
        assert!(refused, "the request refused");

        // What follows is whole again.
        let again = numbered(Kind::Message, 0, n + request_parts.len() as u64);
        for part in &again {
            assert!(
                reader
                    .receive(message("z", 7, std::slice::from_ref(part)), &mut ready)
                    .await
            );
        }
        assert!(
            matches!(deliveries.try_recv(), Ok(Delivery::Message { body, .. }) if body == long)
        );

        // A piece that says more than it holds does not decode.
        let mut bad = BytesMut::new();
        bad.put_u64_le(0);
        bad.put_u8(Kind::Message as u8);
        bad.put_u64_le(MAX_WHOLE + 1);
        let bad = Frame {
            kind: Kind::Part,
            seq: n + request_parts.len() as u64 + again.len() as u64,
            corr: 0,
            body: bad.freeze(),
        };
        assert!(reader.receive(message("z", 7, &[bad]), &mut ready).await);
        assert!(matches!(
            deliveries.try_recv(),
            Ok(Delivery::Lost {
                loss: Loss::Undecodable(_),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_gap_is_reported_back_and_fails_only_the_requests_it_swallowed() {
        let (mut reader, mut out, mut deliveries, pending) = reader::<u64>();
        let mut waiting = Vec::new();
        for (corr, seq) in [(1, Some(3)), (2, Some(9)), (3, None)] {
            let (tell, answer) = oneshot::channel();
            pending.lock().insert(
                corr,
                Waiting {
                    peer: Arc::from("z"),
                    seq,
                    tell,
                },
            );
            waiting.push(answer);
        }
        // z says our frames 2..5 never reached it: the request numbered 3
        // fails at once; 9 and the one not yet numbered wait on.
        let gap = Frame {
            kind: Kind::Gap,
            seq: 2,
            corr: 5,
            body: Bytes::new(),
        };
        let mut ready = None;
        assert!(reader.receive(message("z", 7, &[gap]), &mut ready).await);
        let mut waiting = waiting.into_iter();
        assert_eq!(
            waiting.next().expect("first").await.expect("told"),
            Err(BusError::RequestLost { peer: "z".into() })
        );
        assert_eq!(pending.lock().len(), 2);

        // A first contact from y at number 4: four lost, told to the
        // consumer and reported back to y as its frames 0..4.
        let body = Bytes::from(crate::codec::encode(&5u64).expect("encodes"));
        let fourth = Frame {
            kind: Kind::Message,
            seq: 4,
            corr: 0,
            body,
        };
        assert!(reader.receive(message("y", 8, &[fourth]), &mut ready).await);
        assert!(matches!(
            deliveries.recv().await,
            Some(Delivery::Lost { ref from, loss: Loss::Missing(4) }) if from == "y"
        ));
        assert!(matches!(
            deliveries.recv().await,
            Some(Delivery::Message { ref from, body: 5 }) if from == "y"
        ));
        let mut queued = Vec::new();
        while let Ok(o) = out.try_recv() {
            queued.push((o.to.to_string(), o.kind, o.gap_from, o.corr));
        }
        assert!(
            queued.contains(&("y".into(), Kind::Gap, 0, 4)),
            "{queued:?}"
        );
        assert!(
            queued.contains(&("y".into(), Kind::Ping, 0, 0)),
            "a first contact pings back"
        );
    }

    #[test]
    fn frames_and_headers_round_trip_and_refuse_what_is_torn() {
        let f = Frame {
            kind: Kind::Request,
            seq: 7,
            corr: 42,
            body: Bytes::from_static(b"body"),
        };
        assert_eq!(Frame::decode(f.encode()), Ok(f));
        assert!(Frame::decode(Bytes::from_static(b"\x01short")).is_err());
        let mut unknown = BytesMut::from(&Frame::encode(&frame(Kind::Message, 0))[..]);
        unknown[0] = 99;
        assert!(Frame::decode(unknown.freeze()).is_err());

        let mut batch = BytesMut::new();
        put_header(&mut batch, "node-1", 5);
        let header = unbatch(batch.freeze())
            .next()
            .expect("a frame")
            .expect("whole");
        assert_eq!(read_header(header.clone()), Ok(("node-1".to_owned(), 5)));
        let mut other_version = BytesMut::from(&header[..]);
        other_version[0] = 2;
        assert!(read_header(other_version.freeze()).is_err());
        let mut bad_id = BytesMut::from(&header[..]);
        bad_id.extend_from_slice(b" x");
        assert!(read_header(bad_id.freeze()).is_err());
        assert!(read_header(Bytes::from_static(b"\x01")).is_err());
    }

    #[test]
    fn numbered_frames_are_taken_in_order_and_a_gap_is_told_before_what_follows() {
        let mut peers = Peers::default();
        let now = Instant::now();
        // Numbers start at 0 for every incarnation: a first contact at 5
        // lost five.
        assert_eq!(
            peers.on_frame("a", 1, frame(Kind::Message, 5), now),
            vec![
                Step::PingBack,
                Step::BeforeFirstContact(5),
                Step::Take(frame(Kind::Message, 5))
            ]
        );
        assert_eq!(
            peers.on_frame("a", 1, frame(Kind::Request, 6), now),
            vec![Step::Take(frame(Kind::Request, 6))]
        );
        assert_eq!(
            peers.on_frame("a", 1, frame(Kind::Message, 9), now),
            vec![Step::Lost(2), Step::Take(frame(Kind::Message, 9))]
        );
        // An old number is never taken twice.
        assert!(peers
            .on_frame("a", 1, frame(Kind::Message, 9), now)
            .is_empty());
    }

    #[test]
    fn a_ping_shows_a_lost_last_frame_and_asks_back_when_told() {
        let mut peers = Peers::default();
        let now = Instant::now();
        peers.on_frame("a", 1, frame(Kind::Message, 0), now);
        assert!(peers.on_frame("a", 1, ping(1, false), now).is_empty());
        assert_eq!(
            peers.on_frame("a", 1, ping(3, true), now),
            vec![Step::Lost(2), Step::PingBack]
        );
        // Counted once: the next frame is the one after.
        assert_eq!(
            peers.on_frame("a", 1, frame(Kind::Message, 3), now),
            vec![Step::Take(frame(Kind::Message, 3))]
        );
        // A first ping sets where the numbers start.
        assert_eq!(
            peers.on_frame("b", 9, ping(40, true), now),
            vec![Step::PingBack, Step::BeforeFirstContact(40)],
            "a first contact pings back once, and counts what it never got"
        );
        assert_eq!(
            peers.on_frame("b", 9, frame(Kind::Message, 41), now),
            vec![Step::Lost(1), Step::Take(frame(Kind::Message, 41))]
        );
    }

    #[test]
    fn a_new_incarnation_is_a_restart_and_starts_the_numbers_again() {
        let mut peers = Peers::default();
        let now = Instant::now();
        peers.on_frame("a", 1, frame(Kind::Message, 0), now);
        peers.on_frame("a", 1, frame(Kind::Message, 1), now);
        assert_eq!(
            peers.on_frame("a", 2, frame(Kind::Message, 0), now),
            vec![
                Step::Restarted,
                Step::PingBack,
                Step::Take(frame(Kind::Message, 0))
            ]
        );
        assert_eq!(
            peers.on_frame("a", 2, ping(1, false), now),
            Vec::<Step>::new()
        );
    }

    #[test]
    fn an_endpoint_is_a_node_or_a_node_and_one_of_its_workers() {
        assert!(valid_endpoint("node-1"));
        assert!(valid_endpoint("node-1~0"));
        assert!(valid_endpoint("node_1~12"));
        assert!(!valid_endpoint("node-1~"));
        assert!(!valid_endpoint("~0"));
        assert!(!valid_endpoint("node-1~0~1"));
        assert!(!valid_endpoint("node.1~0"));
        assert!(!valid_endpoint(""));
    }

    #[test]
    fn a_silent_peer_is_told_once_until_heard_again() {
        let mut peers = Peers::default();
        let start = Instant::now();
        peers.on_frame("a", 1, ping(0, false), start);
        let silence = Duration::from_millis(100);
        assert!(peers.newly_silent(silence, start + silence).is_empty());
        let later = start + silence * 2;
        assert_eq!(peers.newly_silent(silence, later), vec!["a".to_owned()]);
        assert!(peers.newly_silent(silence, later).is_empty(), "told once");
        peers.on_frame("a", 1, ping(0, false), later);
        assert!(peers.newly_silent(silence, later).is_empty());
        let much_later = later + silence * 20;
        assert_eq!(
            peers.newly_silent(silence, much_later),
            vec!["a".to_owned()]
        );
    }

    #[test]
    fn a_peer_sent_to_and_never_heard_from_is_silent_too_but_not_restarted_when_heard() {
        let mut peers = Peers::default();
        let start = Instant::now();
        let silence = Duration::from_millis(100);
        peers.expect("b", start);
        assert_eq!(
            peers.newly_silent(silence, start + silence * 2),
            vec!["b".to_owned()]
        );
        let mut fresh = Peers::default();
        fresh.expect("b", start);
        assert_eq!(
            fresh.on_frame("b", 4, ping(0, false), start),
            vec![Step::PingBack],
            "a first contact, not a restart"
        );
        fresh.expect("b", start);
        assert_eq!(
            fresh.peers["b"].incarnation, 4,
            "expecting a known peer changes nothing"
        );
    }
}

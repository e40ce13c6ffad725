//! This node's end of the bus ([`super::bus`]) as the running broker uses
//! it: what crosses between a client's socket held by one node (the
//! **edge**: a standby that took the client) and the node that runs what
//! the socket talks to (the **owner**: the active node; in the partitioned
//! form, the conversation's partition's owner). Every kind of socket takes
//! this path ([`Door`]): a webchat customer's, an agent's desk and a
//! supervisor's; and so do providers' webhooks, checked at the edge, their
//! events taken by the owner ([`NodeMessage::Inbound`]).
//!
//! **Endpoints.** A node has one endpoint on the bus of its own (named by
//! the node's id: the one other nodes know, which admits sockets) and one
//! per worker (`<node>~<n>`), started on the worker's thread: an edge's
//! socket, accepted on a worker, talks through that worker's endpoint, and
//! the owner's admission names the endpoint of one of its workers
//! (round robin), where the socket's stand-in then runs. So a message
//! between a socket and its stand-in is read, handled and answered on one
//! thread of each node, as a relayed one is (`cluster::relay`), not passed
//! between a node-wide bus and the workers.
//!
//! Each endpoint ([`NodeBus`]) owns its bus handle, the sockets it holds
//! for an owner elsewhere (socket id → the owner's endpoint and the
//! socket's link, `ws/edge_session.rs`), the stand-ins it runs for sockets
//! held elsewhere ((edge's endpoint, socket id) → [`RemoteSocket`]) and the
//! task that hands every delivery to them.
//!
//! Handles the [`NodeMessage`]s (each names its direction) and a peer's
//! loss, restart or silence: every socket between this node and that peer
//! ends, on both sides. After a loss or a silence the peer may still be
//! running (paused, or cut off for a while): it is told which sockets
//! ended ([`NodeMessage::Severed`]), so that it ends them too when it hears
//! it, rather than keep a socket whose other half is gone. The edge closes
//! its client's socket with 1012 (the client reconnects and resynchronises,
//! as after a network drop: a customer's unacknowledged messages are sent
//! again and its history comes back, a desk's `hello` lists its tasks, a
//! supervisor monitors again); the owner stops the stand-in,
//! so the conversation counts the customer gone, or the agent its desk,
//! and its grace starts. A message the bus cannot take (its queue to NATS
//! full) ends its socket the same way, so nothing is dropped unseen.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use actix_web_actors::ws::CloseCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::bus::{Bus, BusError, BusOptions, Delivery};
use super::remote_socket::{EdgeCommand, EdgeGone, RemoteSocket, Target};
use super::ClusterSettings;
use crate::channel::provider::InboundEvent;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::{ChannelKind, Frame};
use crate::wiring::Broker;
use crate::ws::supervisor_session::Supervision;
use crate::ws::{Frames, SocketLink};

/// How long an edge waits for the owner to admit a socket.
pub const ADMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The close an edge's client gets when its conversation's node restarted,
/// went silent or lost messages of this socket: reconnect.
pub const OWNER_LOST: &str = "the node running this conversation was cut off: reconnect";

/// What crosses the bus between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// Edge → owner, a request: may a client at `client` open a socket at
    /// `door`? Answered [`NodeMessage::Admitted`] or
    /// [`NodeMessage::Refused`], as the owner answers its own upgrades.
    Admit {
        door: Door,
        client: Option<IpAddr>,
    },
    /// Admitted: the socket is to be opened at the owner's `endpoint`.
    Admitted {
        endpoint: String,
    },
    Refused(Refusal),
    /// Edge → owner: socket `socket` is open at `door`: attach it to what
    /// it talks to (the token is checked again: it may have gone since).
    Open {
        socket: u64,
        door: Door,
    },
    /// Edge → owner: a text message the client sent, screened at the edge
    /// (whole, UTF-8, within `max_frame`, and for a customer within the
    /// socket's command rate).
    Command {
        socket: u64,
        text: String,
    },
    /// Edge → owner: the socket closed.
    Gone {
        socket: u64,
    },
    /// Owner → edge: frames for the socket, in order (each encoded as it
    /// is, decoded into a frame of its own).
    Frames {
        socket: u64,
        frames: Vec<Frame>,
    },
    /// Owner → edge: close the socket.
    Close {
        socket: u64,
        code: u16,
        reason: String,
    },
    /// Either way, after the sender lost touch with the receiver (lost
    /// messages, or silence) and ended the sockets they shared: those the
    /// sender held as the edge (`held`: the receiver stops their
    /// stand-ins) and those it served as the owner (`served`: the receiver
    /// closes them, 1012). Only for the receiver's `incarnation`: a
    /// restarted node's socket ids start again.
    Severed {
        incarnation: u64,
        held: Vec<u64>,
        served: Vec<u64>,
    },
    /// Edge → owner, a request: a provider's webhook that arrived at the
    /// edge, its signature checked and its body parsed there: its events,
    /// for the owner to download the media of and hand to the channel.
    /// Answered [`NodeMessage::Taken`] once the channel holds every one,
    /// or [`NodeMessage::Refused`], as the owner answers its own webhooks.
    Inbound {
        kind: ChannelKind,
        events: Vec<InboundEvent>,
    },
    /// The webhook's events are held: the provider gets its 200.
    Taken,
}

/// How long an edge waits for the owner to take a webhook's events (their
/// media downloaded meanwhile); a provider that gets no answer sends the
/// webhook again, and its message ids make that harmless.
const INBOUND_PATIENCE: Duration = Duration::from_secs(25);

/// A socket ended here: its id, and the incarnation of the peer it was
/// opened with.
type Ended = (u64, Option<u64>);

/// Which socket a client opens, and with what credential: what the owner
/// admits and attaches.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Door {
    /// `GET /v1/webchat/ws?token=…`: a customer, to the webchat channel.
    Webchat { token: String },
    /// `GET /v1/agents/{agent}/ws?token=…`: an agent's desk, to its agent.
    Desk { agent: String, token: String },
    /// `GET /v1/supervisor/ws` with the admin token: a supervisor's socket.
    Supervisor { token: String },
}

/// Without the token: a door may be logged.
impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Door::Webchat { .. } => f.write_str("Webchat"),
            Door::Desk { agent, .. } => f.debug_struct("Desk").field("agent", agent).finish(),
            Door::Supervisor { .. } => f.write_str("Supervisor"),
        }
    }
}

/// An owner's refusal of a socket: the HTTP answer the edge gives its
/// client, the same the owner gives its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The JSON error body.
    pub body: String,
}

impl Refusal {
    pub fn of(e: &ApiError) -> Refusal {
        use actix_web::ResponseError;
        let answer = e.error_response();
        Refusal {
            status: answer.status().as_u16(),
            retry_after: answer
                .headers()
                .get(actix_web::http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: e.json_body().to_string(),
        }
    }

    /// The HTTP answer.
    pub fn response(&self) -> actix_web::HttpResponse {
        let status = actix_web::http::StatusCode::from_u16(self.status)
            .unwrap_or(actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
        let mut answer = actix_web::HttpResponse::build(status);
        if let Some(after) = &self.retry_after {
            answer.insert_header((actix_web::http::header::RETRY_AFTER, after.as_str()));
        }
        answer
            .content_type("application/json")
            .body(self.body.clone())
    }
}

/// Why an edge could not open a socket through the owner.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("the node running conversations refused: {}", .0.body)]
    Refused(Refusal),
    #[error("the node running conversations cannot be reached yet")]
    NotStarted,
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the node running conversations answered {0:?} to an admission")]
    Unexpected(Box<NodeMessage>),
}

/// A socket this node holds for a conversation run elsewhere.
struct EdgeSocket {
    owner: Arc<str>,
    /// The owner's incarnation when the socket was admitted.
    incarnation: Option<u64>,
    link: SocketLink,
}

/// A stand-in run here, and the edge's incarnation that opened it.
struct StandIn {
    addr: Addr<RemoteSocket>,
    incarnation: Option<u64>,
}

/// One endpoint of this node on the bus, and what it carries for the
/// broker.
pub struct NodeBus {
    settings: ClusterSettings,
    bus: OnceLock<Bus<NodeMessage>>,
    /// Told when the bus is up.
    up: tokio::sync::Notify,
    /// Whether this is a worker's endpoint: its stand-ins run on its own
    /// thread (the node's own endpoint puts them on the workers).
    on_worker: bool,
    /// Sockets held here, by socket id.
    held: Mutex<HashMap<u64, EdgeSocket>>,
    /// Stand-ins run here for sockets other nodes hold.
    stand_ins: Mutex<HashMap<(Arc<str>, u64), StandIn>>,
    /// What this node serves as an owner, once it is active.
    owner: OnceLock<Arc<Broker>>,
    /// The edge's own count of slow consumers (its sockets' links).
    metrics: Metrics,
    /// The node's own endpoint: its workers' endpoints that run stand-ins,
    /// up, for admissions to name one; and how many endpoints it started.
    serving: Mutex<Vec<String>>,
    next_serving: AtomicUsize,
    started: AtomicUsize,
}

impl NodeBus {
    /// This node's bus, connecting in the background (and again, every
    /// second, until NATS takes it): an edge asking before then is told
    /// [`EdgeError::NotStarted`]. To be called on the node's main runtime,
    /// which runs the bus's tasks and the delivery task.
    pub fn start(settings: ClusterSettings) -> Arc<NodeBus> {
        NodeBus::start_endpoint(settings, false, |_| {})
    }

    /// An endpoint of this node (`self`: the node's own) for the worker
    /// whose thread this is: the edge's sockets accepted here talk
    /// through it; with `owner`, it runs the stand-ins of the sockets
    /// admitted to it, and the node's admissions name it once it is up.
    pub fn on_this_worker(self: &Arc<Self>, owner: Option<Arc<Broker>>) -> Arc<NodeBus> {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        let settings = ClusterSettings {
            node_id: format!("{}~{n}", self.settings.node_id),
            ..self.settings.clone()
        };
        let node = Arc::downgrade(self);
        let serves = owner.is_some();
        let endpoint = NodeBus::start_endpoint(settings, true, move |endpoint| {
            if let Some(node) = node.upgrade().filter(|_| serves) {
                node.serving.lock().push(endpoint.settings.node_id.clone());
            }
        });
        if let Some(owner) = owner {
            endpoint.serve(owner);
        }
        endpoint
    }

    /// Connect in the background, on this thread's runtime (and again,
    /// every second, until NATS takes it); `up` once it is.
    fn start_endpoint(
        settings: ClusterSettings,
        on_worker: bool,
        up: impl FnOnce(&Arc<NodeBus>) + 'static,
    ) -> Arc<NodeBus> {
        let node = Arc::new(NodeBus {
            settings,
            bus: OnceLock::new(),
            up: tokio::sync::Notify::new(),
            on_worker,
            held: Mutex::new(HashMap::new()),
            stand_ins: Mutex::new(HashMap::new()),
            owner: OnceLock::new(),
            metrics: Metrics::default(),
            serving: Mutex::new(Vec::new()),
            next_serving: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        });
        let this = node.clone();
        actix_web::rt::spawn(async move {
            let options = BusOptions::of(&this.settings);
            let deliveries = loop {
                match Bus::start(&this.settings, options).await {
                    Ok((bus, deliveries)) => {
                        let _ = this.bus.set(bus);
                        break deliveries;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the bus between nodes is not up yet; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            this.up.notify_waiters();
            up(&this);
            this.run(deliveries).await;
        });
        node
    }

    /// The endpoint an admitted socket is to open at: one of this node's
    /// workers' (round robin), or this one while none is up.
    fn pick_endpoint(&self) -> String {
        let serving = self.serving.lock();
        if serving.is_empty() {
            return self.settings.node_id.clone();
        }
        let n = self.next_serving.fetch_add(1, Ordering::Relaxed);
        serving[n % serving.len()].clone()
    }

    /// From now on this node runs conversations: it admits and serves the
    /// sockets edges hold for them.
    pub fn serve(&self, broker: Arc<Broker>) {
        let _ = self.owner.set(broker);
    }

    fn bus(&self) -> Result<&Bus<NodeMessage>, EdgeError> {
        self.bus.get().ok_or(EdgeError::NotStarted)
    }

    /// Edge: ask `owner` whether a client at `client` may open a socket at
    /// `door`; the owner's endpoint to open it at. Waits for this
    /// endpoint's bus a moment if it is not up yet (a worker just started).
    pub async fn admit(
        &self,
        owner: &str,
        door: &Door,
        client: Option<IpAddr>,
    ) -> Result<String, EdgeError> {
        let ask = NodeMessage::Admit {
            door: door.clone(),
            client,
        };
        match self
            .bus_up()
            .await?
            .request(owner, &ask, ADMIT_TIMEOUT)
            .await?
        {
            NodeMessage::Admitted { endpoint } => Ok(endpoint),
            NodeMessage::Refused(refusal) => Err(EdgeError::Refused(refusal)),
            other => Err(EdgeError::Unexpected(Box::new(other))),
        }
    }

    /// Edge: hand a provider webhook's events (checked and parsed here) to
    /// `owner`, and wait until its channel holds them.
    pub async fn inbound(
        &self,
        owner: &str,
        kind: ChannelKind,
        events: Vec<InboundEvent>,
    ) -> Result<(), EdgeError> {
        let hand = NodeMessage::Inbound { kind, events };
        match self
            .bus_up()
            .await?
            .request(owner, &hand, INBOUND_PATIENCE)
            .await?
        {
            NodeMessage::Taken => Ok(()),
            NodeMessage::Refused(refusal) => Err(EdgeError::Refused(refusal)),
            other => Err(EdgeError::Unexpected(Box::new(other))),
        }
    }

    /// This endpoint's bus, waiting for it a moment if it is not up yet (a
    /// worker just started).
    async fn bus_up(&self) -> Result<&Bus<NodeMessage>, EdgeError> {
        let _ = tokio::time::timeout(ADMIT_TIMEOUT, async {
            loop {
                let up = self.up.notified();
                if self.bus.get().is_some() {
                    return;
                }
                up.await;
            }
        })
        .await;
        self.bus()
    }

    /// Edge: socket `socket` (its session's `link`) is open at `door` of
    /// `owner`; tell the owner.
    pub fn attach(
        &self,
        socket: u64,
        owner: &str,
        door: Door,
        link: SocketLink,
    ) -> Result<(), EdgeError> {
        let bus = self.bus()?;
        let owner: Arc<str> = Arc::from(owner);
        self.held.lock().insert(
            socket,
            EdgeSocket {
                owner: owner.clone(),
                incarnation: bus.incarnation(&owner),
                link,
            },
        );
        bus.send(&owner, &NodeMessage::Open { socket, door })?;
        Ok(())
    }

    /// Edge: the client sent `text` on `socket`.
    pub fn command(&self, socket: u64, owner: &str, text: String) -> Result<(), EdgeError> {
        self.bus()?
            .send(owner, &NodeMessage::Command { socket, text })?;
        Ok(())
    }

    /// Edge: `socket` closed; the owner is told, unless it ended the
    /// socket itself (or was lost).
    pub fn detach(&self, socket: u64) {
        let Some(held) = self.held.lock().remove(&socket) else {
            return;
        };
        if let Ok(bus) = self.bus() {
            let _ = bus.send(&held.owner, &NodeMessage::Gone { socket });
        }
    }

    /// Owner: frames for the socket `socket` held by `edge`.
    pub fn frames(&self, edge: &str, socket: u64, frames: Frames) -> Result<(), EdgeError> {
        let frames = frames.into_iter().collect();
        self.bus()?
            .send(edge, &NodeMessage::Frames { socket, frames })?;
        Ok(())
    }

    /// Owner: tell `edge` to close its socket `socket` (a stand-in that
    /// stops forgets itself: [`NodeBus::forget`]).
    pub fn close(&self, edge: &str, socket: u64, code: CloseCode, reason: &str) {
        if let Ok(bus) = self.bus() {
            let _ = bus.send(
                edge,
                &NodeMessage::Close {
                    socket,
                    code: u16::from(code),
                    reason: reason.to_owned(),
                },
            );
        }
    }

    /// Owner: the stand-in for (`edge`, `socket`) stopped.
    pub fn forget(&self, edge: &Arc<str>, socket: u64) {
        self.stand_ins.lock().remove(&(edge.clone(), socket));
    }

    /// The broker this node runs, to answer a request with; on a node that
    /// runs none (a standby), the refusal to answer instead.
    fn serving(&self) -> Result<Arc<Broker>, NodeMessage> {
        self.owner.get().cloned().ok_or_else(|| {
            let refusal = ApiError::Unavailable(
                "this node runs no conversations (not the active node)".into(),
            );
            NodeMessage::Refused(Refusal::of(&refusal))
        })
    }

    /// Hand every delivery to its socket or stand-in, until the bus stops.
    async fn run(self: Arc<Self>, mut deliveries: mpsc::Receiver<Delivery<NodeMessage>>) {
        while let Some(delivery) = deliveries.recv().await {
            match delivery {
                Delivery::Request {
                    from,
                    body,
                    responder,
                } => {
                    let broker = match self.serving() {
                        Ok(broker) => broker,
                        Err(refusal) => {
                            let _ = responder.respond(&refusal);
                            continue;
                        }
                    };
                    match body {
                        NodeMessage::Admit { door, client } => {
                            let endpoint = self.pick_endpoint();
                            actix_web::rt::spawn(async move {
                                let answer = admit(&broker, door, client, endpoint).await;
                                let _ = responder.respond(&answer);
                            });
                        }
                        NodeMessage::Inbound { kind, events } => {
                            actix_web::rt::spawn(async move {
                                let answer = inbound(&broker, kind, events).await;
                                let _ = responder.respond(&answer);
                            });
                        }
                        // Dropping the responder answers "not answered".
                        body => tracing::warn!(
                            peer = %from, request = ?body, "not a request this node answers"
                        ),
                    }
                }
                Delivery::Message { from, body } => self.message(Arc::from(from.as_str()), body),
                Delivery::Lost { from, loss } => {
                    tracing::warn!(peer = %from, loss = ?loss, "messages between nodes lost: ending the sockets they carried");
                    self.sever(&from, None);
                }
                Delivery::Restarted { from, incarnation } => {
                    // Sockets opened with the new incarnation (admitted
                    // while this delivery waited) stay.
                    tracing::info!(peer = %from, "a node restarted: ending the sockets shared with it");
                    self.sever(&from, Some(incarnation));
                }
                Delivery::Silent { from } => {
                    tracing::warn!(peer = %from, "a node went silent: ending the sockets shared with it");
                    self.sever(&from, None);
                }
            }
        }
    }

    fn message(self: &Arc<Self>, from: Arc<str>, body: NodeMessage) {
        match body {
            NodeMessage::Open { socket, door } => self.open(from, socket, door),
            NodeMessage::Command { socket, text } => {
                let stand_in = self
                    .stand_ins
                    .lock()
                    .get(&(from.clone(), socket))
                    .map(|s| s.addr.clone());
                match stand_in {
                    Some(stand_in) => stand_in.do_send(EdgeCommand(text)),
                    None => self.close(&from, socket, CloseCode::Error, "no such socket here"),
                }
            }
            NodeMessage::Gone { socket } => {
                if let Some(stand_in) = self.stand_ins.lock().remove(&(from, socket)) {
                    stand_in.addr.do_send(EdgeGone);
                }
            }
            NodeMessage::Frames { socket, frames } => {
                let link = self.held.lock().get(&socket).map(|h| h.link.clone());
                let Some(link) = link else {
                    // Closed here meanwhile: the owner was told (Gone).
                    return;
                };
                for frame in frames {
                    // Closed, or slow and told to close: the owner is told
                    // now (`detach`), not when the session stops (a session
                    // whose client does not read is not run until its
                    // write deadline), so it sends nothing more and counts
                    // the client gone.
                    if link.send(frame, &self.metrics).is_err() {
                        self.detach(socket);
                        break;
                    }
                }
            }
            NodeMessage::Close {
                socket,
                code,
                reason,
            } => {
                if let Some(held) = self.held.lock().remove(&socket) {
                    held.link.close(CloseCode::from(code), &reason);
                }
            }
            NodeMessage::Severed {
                incarnation,
                held,
                served,
            } => {
                if self.bus.get().map(Bus::own_incarnation) != Some(incarnation) {
                    return; // meant for an earlier run of this node
                }
                // What it held, its stand-ins serve here; what it served,
                // sockets here hold.
                let (held, served): (HashSet<u64>, HashSet<u64>) =
                    (held.into_iter().collect(), served.into_iter().collect());
                self.end_where(
                    |socket, h| served.contains(&socket) && *h.owner == *from,
                    |edge, socket, _| *edge == *from && held.contains(&socket),
                );
            }
            NodeMessage::Admit { .. }
            | NodeMessage::Admitted { .. }
            | NodeMessage::Refused(_)
            | NodeMessage::Inbound { .. }
            | NodeMessage::Taken => {
                tracing::warn!(peer = %from, "a request or an answer outside a request: ignored");
            }
        }
    }

    /// Owner: attach the socket `socket` that `edge` holds to what its
    /// door leads to: a customer's session, or an agent (which checks the
    /// token again itself, as for its own desks).
    fn open(self: &Arc<Self>, edge: Arc<str>, socket: u64, door: Door) {
        let Some(broker) = self.owner.get() else {
            return self.close(
                &edge,
                socket,
                CloseCode::Again,
                "unavailable: this node runs no conversations",
            );
        };
        let target = match door {
            Door::Webchat { token } => match broker.webchat_session(&token) {
                Some(session) => Target::Customer {
                    session,
                    shards: broker.channels.webchat.clone(),
                },
                None => {
                    return self.close(&edge, socket, CloseCode::Policy, "invalid webchat token")
                }
            },
            Door::Desk { agent, token } => match broker.agent(&agent) {
                Some(entry) => Target::Desk {
                    agent: entry.addr,
                    token,
                },
                None => {
                    return self.close(
                        &edge,
                        socket,
                        CloseCode::Policy,
                        "invalid agent id or token",
                    )
                }
            },
            Door::Supervisor { token } => {
                if !crate::http::same_secret(&token, &broker.admin_token) {
                    return self.close(&edge, socket, CloseCode::Policy, "invalid token");
                }
                Target::Supervisor(Supervision::new(broker.clone()))
            }
        };
        let incarnation = self.bus.get().and_then(|bus| bus.incarnation(&edge));
        let stand_in = RemoteSocket::new(edge.clone(), socket, target, broker, self.clone());
        // A worker's endpoint runs it here, on its own thread; the node's
        // own puts it on a worker's arbiter, round robin. Known here
        // before it runs, so its stop always finds it.
        let (addr, run): (_, Box<dyn FnOnce(RemoteSocket) + '_>) = if self.on_worker {
            let context = Context::new();
            (context.address(), Box::new(|a| drop(context.run(a))))
        } else {
            let (addr, run) = broker.shards.prepare::<RemoteSocket>();
            (addr, Box::new(run))
        };
        self.stand_ins
            .lock()
            .insert((edge, socket), StandIn { addr, incarnation });
        run(stand_in);
    }

    /// End the sockets held here that `held` picks (their clients told to
    /// reconnect, 1012) and the stand-ins run here that `served` picks
    /// (stopped; their edge not told): the ids of what ended, each with
    /// the incarnation of the peer it was opened with.
    fn end_where(
        &self,
        mut held: impl FnMut(u64, &EdgeSocket) -> bool,
        mut served: impl FnMut(&str, u64, &StandIn) -> bool,
    ) -> (Vec<Ended>, Vec<Ended>) {
        let sockets: Vec<(u64, EdgeSocket)> = self
            .held
            .lock()
            .extract_if(|socket, h| held(*socket, h))
            .collect();
        let held = sockets
            .into_iter()
            .map(|(socket, h)| {
                h.link.close(CloseCode::Restart, OWNER_LOST);
                (socket, h.incarnation)
            })
            .collect();
        let stand_ins: Vec<((Arc<str>, u64), StandIn)> = self
            .stand_ins
            .lock()
            .extract_if(|(edge, socket), s| served(edge, *socket, s))
            .collect();
        let served = stand_ins
            .into_iter()
            .map(|((_, socket), s)| {
                s.addr.do_send(EdgeGone);
                (socket, s.incarnation)
            })
            .collect();
        (held, served)
    }

    /// End every socket shared with `peer`, but those opened with its
    /// incarnation `keep` (a restart: the new incarnation knows nothing of
    /// the others). Without one (a loss, a silence), `peer` may still run
    /// them: it is told ([`NodeMessage::Severed`]).
    fn sever(&self, peer: &str, keep: Option<u64>) {
        let ends = |p: &str, incarnation: Option<u64>| {
            p == peer && (keep.is_none() || incarnation != keep)
        };
        let (held, served) = self.end_where(
            |_, h| ends(&h.owner, h.incarnation),
            |edge, _, s| ends(edge, s.incarnation),
        );
        // What to tell `peer`, by the incarnation of it each socket knew.
        let mut told: HashMap<u64, (Vec<u64>, Vec<u64>)> = HashMap::new();
        for (socket, incarnation) in held {
            if let Some(incarnation) = incarnation {
                told.entry(incarnation).or_default().0.push(socket);
            }
        }
        for (socket, incarnation) in served {
            if let Some(incarnation) = incarnation {
                told.entry(incarnation).or_default().1.push(socket);
            }
        }
        let Some(bus) = self.bus.get().filter(|_| keep.is_none()) else {
            return;
        };
        for (incarnation, (held, served)) in told {
            let severed = NodeMessage::Severed {
                incarnation,
                held,
                served,
            };
            if let Err(e) = bus.send(peer, &severed) {
                tracing::debug!(peer, error = %e, "could not tell a peer of the sockets ended");
            }
        }
    }
}

/// Owner: the answer to an admission, with the checks made for this node's
/// own sockets; admitted, the socket opens at `endpoint`.
async fn admit(
    broker: &Broker,
    door: Door,
    client: Option<IpAddr>,
    endpoint: String,
) -> NodeMessage {
    let admitted = match &door {
        Door::Webchat { token } => crate::http::sockets::admit_webchat(broker, token, client)
            .await
            .map(drop),
        Door::Desk { agent, token } => {
            crate::http::sockets::admit_desk(broker, agent, token, client).map(drop)
        }
        Door::Supervisor { token } => crate::http::sockets::admit_supervisor(broker, token, client),
    };
    match admitted {
        Ok(()) => NodeMessage::Admitted { endpoint },
        Err(e) => NodeMessage::Refused(Refusal::of(&e)),
    }
}

/// Owner: a webhook's events taken as this node's own webhooks' are.
async fn inbound(broker: &Broker, kind: ChannelKind, events: Vec<InboundEvent>) -> NodeMessage {
    match crate::http::channels::take(broker, kind, events).await {
        Ok(()) => NodeMessage::Taken,
        Err(e) => NodeMessage::Refused(Refusal::of(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_crosses_the_codec_unchanged() {
        let messages = [
            NodeMessage::Admit {
                door: Door::Webchat {
                    token: "tok".into(),
                },
                client: Some("10.0.0.7".parse().expect("ip")),
            },
            NodeMessage::Admit {
                door: Door::Desk {
                    agent: "alice".into(),
                    token: "desk-token".into(),
                },
                client: None,
            },
            NodeMessage::Admitted {
                endpoint: "node-0~1".into(),
            },
            NodeMessage::Refused(Refusal::of(&ApiError::Unauthorized("nope".into()))),
            NodeMessage::Open {
                socket: 7,
                door: Door::Webchat {
                    token: "tok".into(),
                },
            },
            NodeMessage::Open {
                socket: 8,
                door: Door::Desk {
                    agent: "alice".into(),
                    token: "desk-token".into(),
                },
            },
            NodeMessage::Open {
                socket: 9,
                door: Door::Supervisor {
                    token: "admin-token".into(),
                },
            },
            NodeMessage::Command {
                socket: 7,
                text: r#"{"type":"message","text":"héllo"}"#.into(),
            },
            NodeMessage::Gone { socket: 7 },
            NodeMessage::Frames {
                socket: 7,
                frames: vec!["{}".into(), "[]".into()],
            },
            NodeMessage::Close {
                socket: 7,
                code: 1012,
                reason: OWNER_LOST.into(),
            },
            NodeMessage::Severed {
                incarnation: u64::MAX - 3,
                held: vec![1, 2],
                served: vec![],
            },
            NodeMessage::Inbound {
                kind: ChannelKind::Whatsapp,
                events: vec![
                    InboundEvent::Message(crate::channel::provider::InboundMessage {
                        provider_id: "wamid.1".into(),
                        customer: "15557770002".into(),
                        customer_name: Some("Dana".into()),
                        business: "1555000".into(),
                        text: "hola".into(),
                        media: vec![crate::channel::provider::MediaRef {
                            source: crate::channel::provider::MediaSource::GraphMedia {
                                id: "m1".into(),
                                token: "t".into(),
                            },
                            content_type: Some("image/jpeg".into()),
                            filename: None,
                        }],
                        attachments: vec![],
                        system_note: false,
                    }),
                    InboundEvent::Status {
                        provider_id: "wamid.0".into(),
                        status: crate::protocol::DeliveryStatus::Read,
                        error: None,
                    },
                    InboundEvent::ReadUpTo {
                        customer: "c".into(),
                        business: "b".into(),
                        watermark: std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                    },
                ],
            },
            NodeMessage::Taken,
        ];
        for message in messages {
            let bytes = crate::codec::encode(&message).expect("encodes");
            let back: NodeMessage = crate::codec::decode(&bytes).expect("decodes");
            assert_eq!(back, message);
        }
    }

    #[test]
    fn a_refusal_is_answered_as_the_owner_answers_it() {
        let throttled = Refusal::of(&ApiError::AuthThrottled { retry_after: 42 });
        let answer = throttled.response();
        assert_eq!(answer.status().as_u16(), 429);
        assert_eq!(
            answer
                .headers()
                .get(actix_web::http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("42")
        );
        let body: serde_json::Value = serde_json::from_str(&throttled.body).expect("json");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");

        let unknown = Refusal::of(&ApiError::Unauthorized("invalid webchat token".into()));
        assert_eq!(unknown.response().status().as_u16(), 401);
        assert!(unknown.retry_after.is_none());
        let body: serde_json::Value = serde_json::from_str(&unknown.body).expect("json");
        assert_eq!(body["error"]["message"], "invalid webchat token", "{body}");
    }
}

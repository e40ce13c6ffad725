//! The edge of a relayed connection: a standby's worker that took a
//! client's HTTP request hands it to the active node and streams both ways
//! until either side ends. An upgrade request comes through
//! [`serve_upgrade`] (the standby serves its sockets itself: one to
//! another path is relayed, and answered as the active node answers it).
//!
//! The request is opened on `<prefix>.relay.open` (one of the active
//! node's hosts answers); then the request's bytes go up as they arrive
//! (a body, or everything the client sends after a WebSocket upgrade) and
//! the response comes back as a head and bytes, written as the host's app
//! made them. Nothing here reads the protocol: the active node checks
//! tokens, limits and the request itself exactly as for its own sockets.
//!
//! Refusals made here: `503 unavailable` when NATS cannot be reached or no
//! active node takes connections (between a failure and a takeover), the
//! client to retry. A connection already relayed ends when the active node
//! ends it, goes silent, or frames are lost; its client reconnects.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use actix_codec::Framed;
use actix_http::body::BoxBody;
use actix_http::h1::Codec;
use actix_http::{Request, RequestHead, Response};
use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::net::TcpStream;

use super::{
    connect, hop_by_hop, open_subject, Endpoint, Frame, Head, Opened, Reader, RelayError, Timing,
    OPEN_TIMEOUT,
};
use crate::cluster::ClusterSettings;
use crate::error::ApiError;
use crate::http::upgrade::{Pump, Socket, SocketReader};
use crate::limits::{ConnectionSlot, Connections, Refused};

/// A worker's relay to the active node, connected at its first request.
pub struct Edge {
    settings: ClusterSettings,
    /// Relayed connections open on this node, in all and per address
    /// (`max_connections`, `max_connections_per_ip`), shared by its workers.
    connections: Arc<Connections>,
    timing: Timing,
    /// How long a request's bytes may wait for the active node to take
    /// them.
    stall: Duration,
    endpoint: tokio::sync::OnceCell<Rc<Endpoint>>,
}

impl Edge {
    pub fn new(settings: ClusterSettings, connections: Arc<Connections>, stall: Duration) -> Edge {
        Edge {
            timing: Timing::of(&settings),
            settings,
            connections,
            stall,
            endpoint: tokio::sync::OnceCell::new(),
        }
    }

    async fn endpoint(&self) -> Result<Rc<Endpoint>, RelayError> {
        self.endpoint
            .get_or_try_init(|| async {
                let connection = connect(&self.settings, "edge").await?;
                Endpoint::start(
                    connection.client,
                    Some(connection.lost),
                    self.settings.prefix.clone(),
                    self.timing,
                    super::OUTBOX,
                )
                .await
            })
            .await
            .cloned()
    }

    /// Relayed connections open now.
    pub fn connections(&self) -> usize {
        self.endpoint.get().map_or(0, |e| e.connections())
    }
}

impl From<RelayError> for ApiError {
    fn from(e: RelayError) -> ApiError {
        ApiError::Unavailable(e.to_string())
    }
}

/// Relay one request to the active node and answer what it answers (plain
/// HTTP; WebSocket upgrades come through [`serve_upgrade`]).
pub async fn relay(
    req: HttpRequest,
    payload: web::Payload,
    edge: web::Data<Rc<Edge>>,
) -> Result<HttpResponse, ApiError> {
    let (head, down) = open(
        &edge,
        req.head(),
        req.peer_addr(),
        payload.map(|chunk| chunk.map_err(|e| e.to_string())),
    )
    .await?;
    respond(head, down)
}

/// A WebSocket upgrade request with its socket, taken from the HTTP/1
/// dispatcher as the broker's own server takes them (`http::upgrade`): no
/// buffer is held while the socket is idle. Relayed, then pumped until
/// either side ends. To be spawned as its own task.
pub fn serve_upgrade(
    edge: Rc<Edge>,
    req: Request,
    framed: Framed<TcpStream, Codec>,
) -> impl Future<Output = ()> {
    // Boxed, so the task keeps only the pump once the handshake is done:
    // the open (a NATS request) is large and short-lived, the task lives
    // as long as the socket.
    let handshake = Box::pin(handshake(edge, req, framed));
    async move {
        if let Some(pump) = handshake.await {
            if let Err(e) = pump.await {
                tracing::debug!(error = %e, "relayed WebSocket closed");
            }
        }
    }
}

/// The answer to a connection over this node's limits (`max_connections`,
/// `max_connections_per_ip`), relayed or not.
pub fn refused(why: Refused) -> ApiError {
    match why {
        Refused::Full => {
            ApiError::Unavailable("this node is at max_connections; try again shortly".into())
        }
        Refused::PerIp => ApiError::RateLimited(
            "too many open connections from this address (max_connections_per_ip)".into(),
        ),
    }
}

/// Relay the upgrade request and write the answer: the pump of a `101`.
async fn handshake(edge: Rc<Edge>, req: Request, framed: Framed<TcpStream, Codec>) -> Option<Pump> {
    let parts = framed.into_parts();
    let io = Rc::new(parts.io);
    let codec = parts.codec;
    // Bytes the client sent right after the request head (a first frame).
    let early = (!parts.read_buf.is_empty()).then(|| parts.read_buf.freeze());
    drop(parts.write_buf);
    let reader = SocketReader::new(io.clone(), early);
    let peer = io.peer_addr().ok();
    let res: Response<BoxBody> = match open(
        &edge,
        req.head(),
        peer,
        reader.map(|chunk| chunk.map_err(|e| e.to_string())),
    )
    .await
    .and_then(|(head, down)| respond(head, down))
    {
        Ok(res) => res.into(),
        Err(e) => e.error_response().into(),
    };
    let socket = Socket {
        _slot: None,
        write_timeout: edge.stall,
    };
    crate::http::upgrade::respond(io, codec, res, socket).await
}

/// Open a relayed connection for a request: counted, opened on the active
/// node, the client's bytes (`payload`) streaming up from now on; the
/// response head and the body to come.
async fn open<P>(
    edge: &Edge,
    req: &RequestHead,
    peer: Option<SocketAddr>,
    payload: P,
) -> Result<(Head, Down), ApiError>
where
    P: Stream<Item = Result<Bytes, String>> + Unpin + 'static,
{
    // Counted as the active node counts its own: a request in flight, or a
    // WebSocket for as long as it is open.
    let slot = edge
        .connections
        .admit(peer.map(|a| a.ip()))
        .map_err(refused)?;
    let endpoint = edge.endpoint().await?;
    let conn = endpoint.register();
    // From here the connection is released however this ends.
    let mut down = Down {
        reader: Reader::new(endpoint.clone(), conn.clone()),
        _slot: slot,
    };
    let open = super::Open {
        edge: endpoint.id,
        conn: conn.id,
        method: req.method.as_str().to_owned(),
        uri: req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: req
            .headers
            .iter()
            .filter(|(name, _)| name.as_str() != "transfer-encoding")
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        peer: peer.map(|a| a.to_string()),
    };
    let body: Bytes = crate::codec::encode(&open)
        .map_err(|e| RelayError::Malformed(e.to_string()))?
        .into();
    let reply = open_on_active(&endpoint, body).await?;
    match crate::codec::decode::<Opened>(&reply.payload)
        .map_err(|e| RelayError::Malformed(e.to_string()))?
    {
        Opened::Host {
            endpoint: host,
            conn: remote,
        } => {
            // Bound already if the host's first frame came first; it must
            // agree.
            if conn.peer() != 0 && (conn.peer(), conn.remote()) != (host, remote) {
                return Err(RelayError::Malformed("the open was answered twice".into()).into());
            }
            endpoint.bind(&conn, host, remote);
        }
        Opened::Refused(why) => return Err(RelayError::Refused(why).into()),
    }
    // Up: the request's bytes as they arrive, within the window.
    let up_endpoint = endpoint.clone();
    let up_conn = conn.clone();
    let stall = edge.stall;
    actix_web::rt::spawn(async move {
        let mut payload = payload;
        while let Some(chunk) = payload.next().await {
            match chunk {
                Ok(bytes) => {
                    // Closed already, or the active node took nothing for
                    // `stall`: the connection ends both ways (a no-op when
                    // closed).
                    if let Err(e) = up_endpoint.send_data(&up_conn, bytes, stall).await {
                        up_endpoint.release(&up_conn, Some(&e.to_string()));
                        return;
                    }
                }
                Err(e) => {
                    up_endpoint.release(&up_conn, Some(&format!("the client's request: {e}")));
                    return;
                }
            }
        }
        up_endpoint.post(&up_conn, &Frame::End);
    });
    let head = down.reader.head().await?;
    Ok((head, down))
}

/// Ask the active node's hosts to take a connection. Nobody answering is
/// retried for [`NO_ACTIVE_GRACE`]: a new active node's workers subscribe
/// a moment after it starts listening.
async fn open_on_active(
    endpoint: &Endpoint,
    body: Bytes,
) -> Result<async_nats::Message, RelayError> {
    let subject = open_subject(&endpoint.prefix);
    let give_up = tokio::time::Instant::now() + NO_ACTIVE_GRACE;
    loop {
        let request = async_nats::Request::new()
            .payload(body.clone())
            .timeout(Some(OPEN_TIMEOUT));
        match endpoint.client.send_request(subject.clone(), request).await {
            Ok(reply) => return Ok(reply),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders
                    if tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                async_nats::RequestErrorKind::NoResponders
                | async_nats::RequestErrorKind::TimedOut => return Err(RelayError::NoActive),
                _ => return Err(RelayError::Nats(e.to_string())),
            },
        }
    }
}

/// How long an edge retries when no active node answers at all.
const NO_ACTIVE_GRACE: Duration = Duration::from_secs(1);

/// The response the edge writes: the host's head, and its body as it
/// comes.
fn respond(head: Head, down: Down) -> Result<HttpResponse, ApiError> {
    let status = StatusCode::from_u16(head.status)
        .map_err(|e| RelayError::Malformed(format!("status {}: {e}", head.status)))?;
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut res = HttpResponse::build(status);
    for (name, value) in &head.headers {
        if hop_by_hop(name) || name == "content-length" {
            continue;
        }
        if upgrade && name == "upgrade" {
            res.upgrade(String::from_utf8_lossy(value).into_owned());
            continue;
        }
        res.append_header((name.as_str(), value.as_slice()));
    }
    Ok(match head.length {
        Some(length) if !upgrade => res.body(SizedStream::new(length, down)),
        _ => res.streaming(down),
    })
}

/// The response body, from the host's frames; releases the connection
/// when dropped (telling the host, unless it ended cleanly).
struct Down {
    reader: Reader,
    _slot: ConnectionSlot,
}

impl Stream for Down {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .reader
            .poll_data(cx)
            .map(|next| next.map(|data| data.map_err(actix_web::error::ErrorServiceUnavailable)))
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        let why = (!self.reader.ended_cleanly()).then_some("the client's connection closed");
        self.reader.endpoint().release(self.reader.conn(), why);
    }
}

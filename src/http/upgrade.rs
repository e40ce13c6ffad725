//! WebSocket connections after the upgrade request, served without actix-http's
//! HTTP/1 dispatcher.
//!
//! Why: the dispatcher gives every connection an 8 KiB read buffer and an 8 KiB
//! write buffer and keeps both for as long as the connection lives, and a
//! WebSocket lives as long as its customer's tab: with the reads and writes of
//! an idle chat wandering through them, most of those 16 KiB end up resident,
//! the largest cost of an open webchat conversation (`docs/performance.md`).
//!
//! How: the HTTP service hands every WebSocket upgrade request here with its
//! socket (actix-http's upgrade hook, wired in `server.rs`). The request still
//! goes through the same routes, auth and handlers (an instance of the app per
//! worker), and `WsResponseBuilder` still starts the session actor; what
//! changes is who moves the bytes. Here a connection holds no buffer while it
//! is idle: reads go through one buffer per worker thread and only the bytes read are
//! handed on (the session's frame decoder keeps them until it has a frame);
//! writes send each batch of frames the session produced and keep nothing once
//! the kernel took it. The session is polled only when its last batch has been
//! written, as under the dispatcher, so a client that stops reading stalls its
//! session and the slow-consumer policy of `src/ws/mod.rs` applies unchanged.
//!
//! A stalled write has a deadline (`socket_write_timeout`): when the kernel
//! has taken nothing of a pending batch for that long, the connection is
//! closed and the session, with everything it queued, is dropped — the
//! slow-consumer close alone cannot get through to a session that is not
//! polled. Each connection also holds its place in `max_connections`
//! ([`Socket`]), since it has left actix-server's own count.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use actix_codec::{Encoder, Framed};
use actix_http::body::{self, BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Payload, Request, Response, StatusCode};
use actix_web::dev::{Service, ServiceResponse};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::http::request_line::Prefixed;

/// Largest read from a socket at once.
const READ_CHUNK: usize = 8 * 1024;

/// What a connection keeps from the server for its life.
pub struct Socket {
    /// Its place in the connection count, given back when it closes (a
    /// relayed WebSocket's is its relay's).
    pub _slot: Option<crate::limits::ConnectionSlot>,
    /// How long a pending write may wait for the client to read.
    pub write_timeout: Duration,
}

thread_local! {
    /// Where every socket of this worker reads into, only while reading:
    /// one buffer per thread, zeroed once, instead of an 8 KiB array
    /// zeroed on the stack for every read.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Serve one upgrade request: run it through `app`, write the response head,
/// then the session's frames until it ends. To be spawned as its own task.
pub fn serve<S>(
    app: Rc<S>,
    req: Request,
    framed: Framed<Prefixed, Codec>,
    socket: Socket,
) -> impl Future<Output = ()>
where
    S: Service<Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    // Boxed, so the task keeps only what the pump needs: the request, the
    // dispatcher's framed socket and the handler's future are large and
    // short-lived, the task lives as long as the socket (a future keeps room
    // for everything it captured).
    let handshake = Box::pin(handshake(app, req, framed, socket));
    async move {
        if let Some(pump) = handshake.await {
            if let Err(e) = pump.await {
                tracing::debug!(error = %e, "WebSocket connection closed");
            }
        }
    }
}

/// Run the request through the app and write its response head. A WebSocket
/// session (101) comes back with its socket for the pump; any other answer
/// (a refusal: bad token, not a WebSocket request…) is written whole, and the
/// connection closed.
async fn handshake<S>(
    app: Rc<S>,
    req: Request,
    framed: Framed<Prefixed, Codec>,
    socket: Socket,
) -> Option<Pump>
where
    S: Service<Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    let parts = framed.into_parts();
    // The socket, and what was read ahead of the dispatcher and it did
    // not take (after what it did take: the order they arrived in).
    let (io, unread) = parts.io.into_parts();
    let io = Rc::new(io);
    let codec = parts.codec;
    // Bytes the client sent right after the request head (a first frame).
    let mut ahead = BytesMut::from(&parts.read_buf[..]);
    ahead.extend_from_slice(&unread);
    let early = (!ahead.is_empty()).then(|| ahead.freeze());
    // The dispatcher's buffers go now, not with the connection.
    drop(parts.read_buf);
    drop(parts.write_buf);

    let reader = SocketReader::new(Rc::clone(&io), early);
    let (req, _) = req.replace_payload(Payload::from(
        Box::pin(reader) as actix_http::BoxedPayloadStream
    ));
    let res: Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.into(),
        Err(e) => e.error_response().into(),
    };
    respond(io, codec, res, socket).await
}

/// Write the answer to an upgrade request: a `101`'s head, then the pump
/// for its body (the session's frames); any other answer whole, and the
/// connection closed (`None`).
pub(crate) async fn respond(
    io: Rc<TcpStream>,
    mut codec: Codec,
    res: Response<BoxBody>,
    socket: Socket,
) -> Option<Pump> {
    let (mut head, body) = res.into_parts();
    let mut out = BytesMut::new();
    let written = if head.status() == StatusCode::SWITCHING_PROTOCOLS {
        match codec.encode(Message::Item((head, BodySize::Stream)), &mut out) {
            Ok(()) => write_all(&io, &out).await,
            Err(e) => Err(e),
        }
    } else {
        head.head_mut().set_connection_type(ConnectionType::Close);
        let refusal = async {
            let bytes = body::to_bytes(body)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            let size = BodySize::Sized(bytes.len() as u64);
            codec.encode(Message::Item((head, size)), &mut out)?;
            codec.encode(Message::Chunk(Some(bytes)), &mut out)?;
            write_all(&io, &out).await
        };
        if let Err(e) = refusal.await {
            tracing::debug!(error = %e, "upgrade refusal not sent");
        }
        let _ = socket2::SockRef::from(&*io).shutdown(std::net::Shutdown::Write);
        return None;
    };
    match written {
        Ok(()) => Some(Pump {
            io,
            session: body,
            out: Bytes::new(),
            gathering: false,
            ended: false,
            stalled: None,
            socket,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket handshake not sent");
            None
        }
    }
}

/// A WebSocket connection after its handshake: the session's output, batch
/// by batch, each written in full before the session is polled again. A
/// plain struct rather than an `async fn`, to keep the task that lives as
/// long as the socket small (waiting for writability is `poll_write_ready`,
/// with no waiter of its own in the future).
pub(crate) struct Pump {
    io: Rc<TcpStream>,
    /// The session actor's output stream.
    session: BoxBody,
    /// What the kernel has not taken yet of the last batch.
    out: Bytes,
    /// The batch in `out` waits one turn of the worker's queue before it is
    /// written, so frames that the tasks queued behind this one make for
    /// this socket go out in the same write ([`Pump::gather`]).
    gathering: bool,
    /// The session's output has ended: write what is left, then finish.
    ended: bool,
    /// The write deadline, only while a write waits (boxed: most sockets
    /// are idle, and a timer is large).
    stalled: Option<Pin<Box<Sleep>>>,
    socket: Socket,
}

impl Future for Pump {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gather(cx)?;
        while !this.out.is_empty() {
            if this.io.poll_write_ready(cx)?.is_pending() {
                let timeout = this.socket.write_timeout;
                let deadline = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client read nothing for {} s (socket_write_timeout)",
                            timeout.as_secs_f64()
                        ),
                    )));
                }
                return Poll::Pending;
            }
            match this.io.try_write(&this.out) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    this.out.advance(n);
                    // Progress: the deadline starts again if it blocks again.
                    this.stalled = None;
                }
                // Readiness was stale: `try_write` cleared it, wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // Written: let the batch's buffer go before waiting for the next.
        this.out = Bytes::new();
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        match ready!(Pin::new(&mut this.session).poll_next(cx)) {
            Some(Ok(frames)) => this.out = frames,
            Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e.to_string()))),
            None => return Poll::Ready(Ok(())),
        }
        // A batch to write: wait one turn of the queue first.
        this.gathering = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Pump {
    /// Back after one turn of the worker's queue with a batch to write:
    /// take what the session made meanwhile into the same write. On a
    /// busy worker the tasks that ran in that turn (other sockets' reads,
    /// conversations, agents) often had frames for this socket too: an
    /// agent's echo and another customer's message, say. Each write to a
    /// loopback or LAN socket costs a system call and the peer's wake-up,
    /// several times what a turn of the queue costs; on an idle worker the
    /// turn is immediate.
    fn gather(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !std::mem::take(&mut self.gathering) {
            return Ok(());
        }
        match Pin::new(&mut self.session).poll_next(cx) {
            Poll::Ready(Some(Ok(more))) => {
                let mut batch = BytesMut::with_capacity(self.out.len() + more.len());
                batch.extend_from_slice(&self.out);
                batch.extend_from_slice(&more);
                self.out = batch.freeze();
            }
            Poll::Ready(Some(Err(e))) => return Err(io::Error::other(e.to_string())),
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        Ok(())
    }
}

impl Drop for Pump {
    /// Done, failed or its worker stopping: FIN. What the session still
    /// queued goes with it.
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&*self.io).shutdown(std::net::Shutdown::Write);
    }
}

/// Write all of `buf` to a socket that is not split (readiness, then
/// `try_write`), as the request-line screen and the upgrade both need.
pub(crate) async fn write_all(io: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        io.writable().await?;
        match io.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The request's payload: what the client sends, as it arrives, each read its
/// own exact-size chunk.
pub(crate) struct SocketReader {
    io: Rc<TcpStream>,
    early: Option<Bytes>,
}

impl SocketReader {
    /// What `io` receives, after `early` (bytes read with the request head).
    pub(crate) fn new(io: Rc<TcpStream>, early: Option<Bytes>) -> SocketReader {
        SocketReader { io, early }
    }
}

impl Stream for SocketReader {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(early) = this.early.take() {
            return Poll::Ready(Some(Ok(early)));
        }
        loop {
            if let Err(e) = ready!(this.io.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(PayloadError::Io(e))));
            }
            let read = READ_BUF.with_borrow_mut(|chunk| {
                let mut n = 0;
                let res = this.io.try_io(Interest::READABLE, || {
                    n = (&*socket2::SockRef::from(&*this.io)).read(&mut chunk[..])?;
                    if n > 0 && n < chunk.len() {
                        // A short read took all the socket had: tell tokio
                        // so now (it forgets the readiness, as its own
                        // reads do), rather than learn it from one more
                        // read that fails with EAGAIN on every frame.
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match res {
                    _ if n > 0 => Ok(Some(Bytes::copy_from_slice(&chunk[..n]))),
                    Ok(()) => Ok(None),
                    Err(e) => Err(e),
                }
            });
            match read {
                Ok(Some(bytes)) => return Poll::Ready(Some(Ok(bytes))),
                Ok(None) => return Poll::Ready(None),
                // Readiness was stale: `try_io` cleared it, wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(PayloadError::Io(e)))),
            }
        }
    }
}

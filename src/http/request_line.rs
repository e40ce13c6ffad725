//! The request line's length limit: a URL longer than
//! [`MAX_REQUEST_LINE`] answers `414 uri_too_long`.
//!
//! Why here and not in a handler: actix-http parses the request line itself
//! and answers a bare `400` to a URI it cannot hold (the `http` crate takes at
//! most 64 KiB), before any service of ours sees the request. So the first
//! request line of every connection is read here, as it arrives, before the
//! HTTP/1 dispatcher gets the socket: one that passes the limit is answered
//! `414` and the connection closed; otherwise the bytes read are handed on,
//! unchanged, ahead of the socket ([`Prefixed`]). Later requests on a kept-
//! alive connection are checked by [`too_long`] in the app (up to actix-http's
//! own 64 KiB; past that, on a connection that already made a request, it
//! still answers `400`).
//!
//! The read waits at most as long as the dispatcher would for a request head
//! (the same timeout, answered the same way: `408`, then closed).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::ApiError;

/// Longest request line (method, URL, version), in bytes: what nginx
/// allows by default (`large_client_header_buffers 8k`).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The error for a URL past the limit.
pub fn too_long() -> ApiError {
    ApiError::UriTooLong(format!(
        "the request line is longer than {MAX_REQUEST_LINE} bytes"
    ))
}

/// Whether a parsed request's URL is past the limit (later requests of a
/// connection).
pub fn uri_too_long(uri: &actix_web::http::Uri) -> bool {
    uri.path_and_query().map_or(0, |p| p.as_str().len()) > MAX_REQUEST_LINE
}

/// A connection's socket with the bytes already read from it in front.
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
    /// Answered and closed here: the dispatcher sees the end of the stream.
    done: bool,
}

impl Prefixed {
    /// The client's address.
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.io.peer_addr()
    }

    /// A socket with nothing read ahead (a server that does not screen
    /// first lines: a standby's).
    pub fn plain(io: TcpStream) -> Prefixed {
        Prefixed {
            prefix: Bytes::new(),
            io,
            done: false,
        }
    }

    /// The socket, and what of the prefix the dispatcher has not read.
    pub fn into_parts(self) -> (TcpStream, Bytes) {
        (self.io, self.prefix)
    }
}

/// What reading the first request line found.
enum Line {
    /// Complete (or the stream ended): hand the bytes on.
    Ready,
    TooLong,
}

/// Read a connection's first request line (see the module doc). `stop`
/// is the server's graceful shutdown: a connection that has not sent its
/// request line by then is closed, as the dispatcher closes idle ones.
pub async fn screen(
    io: TcpStream,
    timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Prefixed {
    let mut read = BytesMut::new();
    let line = tokio::select! {
        line = tokio::time::timeout(timeout, first_line(&io, &mut read)) => line,
        () = stop => {
            return Prefixed {
                prefix: Bytes::new(),
                io,
                done: true,
            }
        }
    };
    let refusal = match line {
        Ok(Ok(Line::Ready)) | Ok(Err(_)) => None,
        Ok(Ok(Line::TooLong)) => Some(response(&too_long())),
        Err(_) => Some(response(&ApiError::RequestTimeout(
            "no complete request line in time".into(),
        ))),
    };
    let Some(answer) = refusal else {
        return Prefixed {
            prefix: read.freeze(),
            io,
            done: false,
        };
    };
    if let Err(e) = crate::http::upgrade::write_all(&io, &answer).await {
        tracing::debug!(error = %e, "refusal not sent");
    }
    let _ = socket2::SockRef::from(&io).shutdown(std::net::Shutdown::Write);
    // Read what the client is still sending, for a moment: closing with
    // unread data resets the connection, and the client would lose the
    // answer while it is still writing its request.
    let _ = tokio::time::timeout(LINGER, drain(&io)).await;
    Prefixed {
        prefix: Bytes::new(),
        io,
        done: true,
    }
}

/// How long a refused connection is read (and what is read dropped)
/// before it is closed, and how much at most.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

async fn drain(io: &TcpStream) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES {
        io.readable().await?;
        match io.try_read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn first_line(io: &TcpStream, read: &mut BytesMut) -> io::Result<Line> {
    let mut chunk = [0u8; 4096];
    loop {
        if read.contains(&b'\n') {
            let end = read.iter().position(|&b| b == b'\n').unwrap_or(0);
            return Ok(if end > MAX_REQUEST_LINE {
                Line::TooLong
            } else {
                Line::Ready
            });
        }
        if read.len() > MAX_REQUEST_LINE {
            return Ok(Line::TooLong);
        }
        io.readable().await?;
        match io.try_read(&mut chunk) {
            Ok(0) => return Ok(Line::Ready),
            Ok(n) => read.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A whole HTTP/1.1 response for an error, closing the connection.
fn response(e: &ApiError) -> Vec<u8> {
    let body =
        serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}}).to_string();
    let status = e.status();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

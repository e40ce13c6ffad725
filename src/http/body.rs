//! The minimum data rate of request bodies. actix-http gives a deadline for
//! request headers (`client_request_timeout`, set from
//! `request_header_timeout`) but none for bodies: a client sending one byte
//! every ten seconds held its connection, and a file descriptor, for as long
//! as it liked. So every request that has a body reads it through
//! [`MinRate`]: its first bytes are due within `request_body_timeout`, and
//! each `request_body_min_rate` bytes received give one second more (the
//! rule of Apache's `mod_reqtimeout`). A body that falls behind ends in an
//! I/O `TimedOut` error, which handlers turn into `408 request_timeout`
//! (`ApiError::body`), and that answer closes the connection.
//!
//! WebSocket upgrades have no body (their frames are read by `upgrade.rs`,
//! with the heartbeat as their deadline) and are left alone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::error::PayloadError;
use actix_http::Payload;
use actix_web::dev::ServiceRequest;
use actix_web::http::header;
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// The body deadline's two settings.
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadline {
    /// Time for the first bytes.
    pub timeout: Duration,
    /// Bytes per second that earn one more second each.
    pub min_rate: u64,
}

impl BodyDeadline {
    /// Read `req`'s body, if it has one, through a [`MinRate`].
    pub fn apply(self, req: &mut ServiceRequest) {
        let head = req.head();
        let has_body = head
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
            || head.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_body || head.upgrade() {
            return;
        }
        let inner = req.take_payload();
        let limited = MinRate::new(inner, self);
        req.set_payload(Payload::from(
            Box::pin(limited) as actix_http::BoxedPayloadStream
        ));
    }
}

/// A request body that must keep up with [`BodyDeadline`].
pub struct MinRate {
    inner: Payload,
    rule: BodyDeadline,
    started: Instant,
    received: u64,
    /// Boxed: a `Sleep` is large and a stream must be `Unpin`.
    deadline: Pin<Box<Sleep>>,
    done: bool,
}

impl MinRate {
    pub fn new(inner: Payload, rule: BodyDeadline) -> Self {
        let started = Instant::now();
        MinRate {
            inner,
            rule,
            started,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(started + rule.timeout)),
            done: false,
        }
    }

    /// When the body must have gone further than it has.
    fn due(&self) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.rule.min_rate as f64);
        self.started + self.rule.timeout + earned
    }
}

impl Stream for MinRate {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                let due = this.due();
                this.deadline.as_mut().reset(due);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => {
                this.done = other.is_none();
                Poll::Ready(other)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the request body came slower than the minimum rate \
                             (first bytes within {} s, then {} bytes per second)",
                            this.rule.timeout.as_secs_f64(),
                            this.rule.min_rate
                        ),
                    )))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A body whose bytes arrive as the test sends them.
    fn body() -> (tokio::sync::mpsc::Sender<Bytes>, Payload) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        });
        (
            tx,
            Payload::from(Box::pin(stream) as actix_http::BoxedPayloadStream),
        )
    }

    #[actix_web::test]
    async fn a_body_earns_time_with_each_byte_and_times_out_when_it_stalls() {
        let (tx, inner) = body();
        let rule = BodyDeadline {
            timeout: Duration::from_millis(100),
            min_rate: 1000,
        };
        let started = Instant::now();
        let mut limited = MinRate::new(inner, rule);
        // 300 bytes at 50 ms: due at 100 ms + 300 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Bytes::from(vec![0u8; 300])).await.unwrap();
        assert_eq!(limited.next().await.unwrap().unwrap().len(), 300);
        let err = limited.next().await.unwrap().unwrap_err();
        assert!(matches!(&err, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut));
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "the 300 bytes earned 300 ms"
        );
        assert!(limited.next().await.is_none(), "nothing after the timeout");
    }

    #[actix_web::test]
    async fn a_body_in_time_passes_whole() {
        let (tx, inner) = body();
        let rule = BodyDeadline {
            timeout: Duration::from_secs(5),
            min_rate: 1,
        };
        let mut limited = MinRate::new(inner, rule);
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        drop(tx);
        assert_eq!(limited.next().await.unwrap().unwrap(), "abc");
        assert!(limited.next().await.is_none());
    }
}

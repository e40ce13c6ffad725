//! The host of relayed connections: on the active node, each worker takes
//! connections that standbys relay (`<prefix>.relay.open`, a queue group,
//! so each open goes to one worker) and serves each as if its client had
//! connected here: the request runs through this worker's instance of the
//! app (the same one `http::upgrade` serves WebSockets with), its payload
//! being the bytes the edge sends, and the response goes back to the edge
//! as a head and bytes.
//!
//! A response whose client stops reading stops the credits: the response
//! waits, and a stalled write is closed after `socket_write_timeout` as on
//! a socket. (An upgraded exchange would be an ordinary session on this
//! worker; sockets no longer take the relay: `cluster::node_bus`.)

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::header::{HeaderName, HeaderValue};
use actix_http::{Method, Payload, Request, Response, Uri, Version};
use actix_web::dev::{Service, ServiceResponse};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{
    connect, hop_by_hop, open_subject, ConnState, Endpoint, Frame, Head, Open, Opened, Reader,
    Timing,
};
use crate::cluster::ClusterSettings;

thread_local! {
    /// Whether this worker hosts already (the server's factories run once
    /// per listening address).
    static HOSTING: Cell<bool> = const { Cell::new(false) };
}

/// Host relayed connections on this worker, through `app`, for as long as
/// the worker runs. Once per worker; later calls do nothing.
pub fn start<S>(app: Rc<S>, settings: ClusterSettings, write_timeout: Duration)
where
    S: Service<Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error> + 'static,
{
    if HOSTING.with(|h| h.replace(true)) {
        return;
    }
    actix_web::rt::spawn(async move {
        let timing = Timing::of(&settings);
        let prefix = settings.prefix.clone();
        let mut delay = Duration::from_millis(100);
        let (endpoint, mut opens) = loop {
            let started = async {
                let connection = connect(&settings, "host").await?;
                let opens = connection
                    .client
                    .queue_subscribe(open_subject(&prefix), format!("{prefix}-relay-hosts"))
                    .await
                    .map_err(|e| super::RelayError::Nats(e.to_string()))?;
                let endpoint = Endpoint::start(
                    connection.client,
                    Some(connection.lost),
                    prefix.clone(),
                    timing,
                    super::OUTBOX,
                )
                .await?;
                Ok::<_, super::RelayError>((endpoint, opens))
            };
            match started.await {
                Ok(started) => break started,
                Err(e) => {
                    tracing::warn!(error = %e, "relay host: not started yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::debug!(
            endpoint = endpoint.id,
            "relay host: taking relayed connections"
        );
        while let Some(message) = opens.next().await {
            let Some(reply) = message.reply else {
                continue;
            };
            let answer = match crate::codec::decode::<Open>(&message.payload) {
                Ok(open) => {
                    let conn = endpoint.register();
                    endpoint.bind(&conn, open.edge, open.conn);
                    actix_web::rt::spawn(serve(
                        app.clone(),
                        endpoint.clone(),
                        conn.clone(),
                        open,
                        write_timeout,
                    ));
                    Opened::Host {
                        endpoint: endpoint.id,
                        conn: conn.id,
                    }
                }
                Err(e) => Opened::Refused(format!("malformed open request: {e}")),
            };
            match crate::codec::encode(&answer) {
                Ok(bytes) => {
                    if let Err(e) = endpoint.client.publish(reply, bytes.into()).await {
                        tracing::debug!(error = %e, "relay host: open not answered");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay host: answer not encoded"),
            }
        }
    });
}

/// The request as the edge received it.
fn request(open: &Open, payload: Up) -> Result<Request, String> {
    let mut req = Request::new();
    let head = req.head_mut();
    head.method = Method::from_str(&open.method).map_err(|e| format!("method: {e}"))?;
    head.uri = Uri::from_str(&open.uri).map_err(|e| format!("uri: {e}"))?;
    head.version = Version::HTTP_11;
    head.peer_addr = open.peer.as_deref().and_then(|p| p.parse().ok());
    for (name, value) in &open.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header: {e}"))?;
        let value = HeaderValue::from_bytes(value).map_err(|e| format!("header: {e}"))?;
        head.headers.append(name, value);
    }
    let (req, _) = req.replace_payload(Payload::from(
        Box::pin(payload) as actix_http::BoxedPayloadStream
    ));
    Ok(req)
}

/// Serve one relayed connection to its end.
async fn serve<S>(
    app: Rc<S>,
    endpoint: Rc<Endpoint>,
    conn: Rc<ConnState>,
    open: Open,
    write_timeout: Duration,
) where
    S: Service<Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    // Boxed, so the task keeps only what the body's loop needs for as long
    // as the connection lives (a relayed WebSocket, for hours): the open
    // request, the app's future and the response head are large and done
    // with once the head is sent (a future keeps room for all it held).
    let answered = Box::pin(answer(app, &endpoint, &conn, open)).await;
    let Some(mut body) = answered else {
        return;
    };
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await;
        match next {
            Some(Ok(bytes)) => {
                if let Err(e) = endpoint.send_data(&conn, bytes, write_timeout).await {
                    endpoint.release(&conn, Some(&e.to_string()));
                    return;
                }
            }
            Some(Err(e)) => {
                endpoint.release(&conn, Some(&e.to_string()));
                return;
            }
            None => break,
        }
        if conn.is_closed() {
            return;
        }
    }
    if !conn.is_closed() {
        endpoint.post(&conn, &Frame::End);
        endpoint.release(&conn, None);
    }
}

/// Run the relayed request through the app and send the response head:
/// the response body, to be sent, or `None` when the connection is gone.
async fn answer<S>(
    app: Rc<S>,
    endpoint: &Rc<Endpoint>,
    conn: &Rc<ConnState>,
    open: Open,
) -> Option<BoxBody>
where
    S: Service<Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>,
{
    let up = Up(Reader::new(endpoint.clone(), conn.clone()));
    let req = match request(&open, up) {
        Ok(req) => req,
        Err(why) => {
            endpoint.release(conn, Some(&format!("malformed request: {why}")));
            return None;
        }
    };
    drop(open);
    let res: Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.into(),
        Err(e) => e.error_response().into(),
    };
    let (head, body) = res.into_parts();
    let length = match body.size() {
        BodySize::None => Some(0),
        BodySize::Sized(n) => Some(n),
        BodySize::Stream => None,
    };
    let headers = head
        .headers()
        .iter()
        .filter(|(name, _)| !hop_by_hop(name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    endpoint.post(
        conn,
        &Frame::Head(Head {
            status: head.status().as_u16(),
            headers,
            length,
        }),
    );
    Some(body)
}

/// The request's payload: the bytes the edge sends, credited back as the
/// app reads them.
struct Up(Reader);

impl Stream for Up {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_data(cx).map(|next| {
            next.map(|data| {
                data.map_err(|why| {
                    PayloadError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        why,
                    ))
                })
            })
        })
    }
}

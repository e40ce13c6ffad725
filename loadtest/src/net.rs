//! Socket and HTTP helpers: the target (loopback only unless
//! `--allow-remote`), source-address spreading,
//! the connection pacer (`--ramp`), WebSocket connect/send/receive (plain, or
//! Socket.IO framed against the Socket.IO peer), JSON over HTTP, and raising
//! `RLIMIT_NOFILE`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::socketio;

/// A client WebSocket over a plain loopback TCP stream. Against the Socket.IO
/// peer each JSON object travels as a Socket.IO event ([`socketio`]); the
/// helpers below do the framing, so agents and customers do not see it.
pub struct Ws {
    stream: WebSocketStream<TcpStream>,
    socketio: bool,
    /// An Engine.IO ping was read and its pong is not sent yet.
    pong_due: bool,
}

impl Deref for Ws {
    type Target = WebSocketStream<TcpStream>;
    fn deref(&self) -> &Self::Target {
        &self.stream
    }
}

impl DerefMut for Ws {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.stream
    }
}

/// Why something failed, classified by a short code. Server error codes are kept
/// as the server sent them (`capacity_exceeded`); failures found by the harness
/// start with `harness.`, transport failures with `io.`, and HTTP answers without
/// an error body with `http.<status>`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub detail: String,
}

impl Failure {
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Failure {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// The server under test: on loopback, or (with `--allow-remote`) anywhere.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: Url,
    pub addr: SocketAddr,
    /// The Socket.IO peer: its WebSocket URLs and frames are Socket.IO's.
    pub socketio: bool,
    /// Not a loopback address (allowed by `--allow-remote`).
    pub remote: bool,
}

/// Whether the harness may load `ip`: a loopback address always (`Ok(false)`),
/// another one only when `allow_remote` (`Ok(true)`: remote).
pub fn check_reach(url: &str, ip: IpAddr, allow_remote: bool) -> Result<bool, String> {
    if ip.is_loopback() {
        Ok(false)
    } else if allow_remote {
        Ok(true)
    } else {
        Err(format!(
            "--url {url:?}: {ip} is not a loopback address; the harness targets loopback \
             unless given --allow-remote (for a staging broker: never one in production)"
        ))
    }
}

impl Target {
    /// Parses a URL the harness itself serves or that must be on this
    /// machine (the relays, the provider sink): `http://` on a loopback host.
    pub fn parse(url: &str) -> Result<Target, String> {
        Target::parse_with(url, false)
    }

    /// Parses `--url`: `http://` on a loopback host, or on any host (a name
    /// is resolved here) when `allow_remote`.
    pub fn parse_with(url: &str, allow_remote: bool) -> Result<Target, String> {
        let base = Url::parse(url).map_err(|e| format!("--url {url:?}: {e}"))?;
        if base.scheme() != "http" {
            return Err(format!("--url {url:?}: only http:// is supported"));
        }
        let port = base
            .port_or_known_default()
            .ok_or_else(|| format!("--url {url:?}: no port"))?;
        let host = base.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else if let Ok(ip) = literal.parse() {
            ip
        } else if allow_remote {
            use std::net::ToSocketAddrs;
            (host, port)
                .to_socket_addrs()
                .map_err(|e| format!("--url {url:?}: resolving {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("--url {url:?}: {host} has no address"))?
                .ip()
        } else {
            return Err(format!(
                "--url {url:?}: host must be a loopback IP address or localhost \
                 (another host needs --allow-remote)"
            ));
        };
        let remote = check_reach(url, ip, allow_remote)?;
        Ok(Target {
            base,
            addr: SocketAddr::new(ip, port),
            socketio: false,
            remote,
        })
    }

    /// An absolute HTTP URL for `path` (which starts with `/`).
    pub fn http(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        u.set_path(path);
        u.set_query(None);
        u
    }

    /// A `ws://` URL for `path` with `?token=` (the Socket.IO peer's
    /// endpoint with both as query parameters).
    pub fn ws(&self, path: &str, token: &str) -> Url {
        if self.socketio {
            return socketio::url(&self.base, path, token);
        }
        let mut u = self.http(path);
        // http -> ws is a change between two "special" schemes, which Url allows.
        u.set_scheme("ws").expect("http to ws scheme change");
        u.query_pairs_mut().append_pair("token", token);
        u
    }
}

/// Source IP addresses that client sockets are spread over, round robin.
pub struct SourcePool {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourcePool {
    /// `count` addresses 127.0.`w`.1, 127.0.`w`.2, ... (`w`: this worker
    /// process's index, so that workers never share a source address) when the
    /// target is IPv4 loopback; none (the kernel picks) otherwise or when
    /// `count` is 0.
    pub fn new(target: &Target, count: usize, worker: usize) -> SourcePool {
        let w = worker.min(255) as u8;
        let addrs = match target.addr.ip() {
            IpAddr::V4(ip) if count > 0 && ip.is_loopback() => (0..count.min(250))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, w, 1 + i as u8)))
                .collect(),
            _ => Vec::new(),
        };
        SourcePool {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// The next source address, or `None` to let the kernel choose.
    pub fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[i % self.addrs.len()])
    }
}

/// Spaces connection attempts `1/rate` seconds apart (`--ramp`); a rate of 0 means
/// no pacing.
pub struct Pacer {
    per_second: f64,
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    pub fn new(per_second: f64) -> Pacer {
        let interval = (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second));
        Pacer {
            per_second: per_second.max(0.0),
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().expect("pacer lock");
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The WebSocket settings of every socket the harness opens or (as the baseline
/// relay) accepts. tungstenite allocates and zeroes its read buffer up front,
/// 128 KiB by default: at thousands of sockets a second that page-faulting was a
/// large share of the harness's CPU during a ramp. Chat frames are small; the
/// buffer still grows for a large one.
pub fn ws_config() -> tungstenite::protocol::WebSocketConfig {
    tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Opens a TCP connection to the target from `source` (if given) and performs the
/// WebSocket handshake for `url` (and the Socket.IO one against the peer).
pub async fn connect_ws(target: &Target, source: Option<IpAddr>, url: &Url) -> Result<Ws, Failure> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| Failure::new("io.socket", e.to_string()))?;
    if let Some(ip) = source {
        defer_port_choice(&socket);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| Failure::new("io.bind", format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| Failure::new("io.connect", format!("connect {}: {e}", target.addr)))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::new("io.socket", e.to_string()))?;
    match tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(ws_config())).await
    {
        Ok((mut stream, _response)) => {
            if target.socketio {
                socketio::connect(&mut stream).await?;
            }
            Ok(Ws {
                stream,
                socketio: target.socketio,
                pong_due: false,
            })
        }
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().as_deref().unwrap_or_default();
            Err(http_failure(status, body, &format!("GET {}", url.path())))
        }
        Err(e) => Err(Failure::new("io.handshake", format!("{}: {e}", url.path()))),
    }
}

/// Asks the kernel to choose the source port at `connect` rather than at `bind`
/// (`IP_BIND_ADDRESS_NO_PORT`). A `bind` to port 0 must find a port that no
/// other socket on that address uses, whatever its peer; with thousands of
/// sockets that search runs in the kernel under a lock and was the harness's
/// connection-ramp stall (the profile showed `inet_csk_get_port` on both
/// cores). At `connect` the port only has to make the 4-tuple unique, which is
/// cheap. Best effort: without it the bind still works, only slower.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &TcpSocket) {}

/// How many more frames `--trace-frames` prints.
static TRACE_BUDGET: AtomicUsize = AtomicUsize::new(0);

/// Prints the next `n` frames sent or received, on any socket, to stderr.
pub fn trace_frames(n: usize) {
    TRACE_BUDGET.store(n, Ordering::Relaxed);
}

fn trace(ws: &Ws, dir: &str, text: &str) {
    let take =
        TRACE_BUDGET.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
    if take.is_ok() {
        let port = ws.get_ref().local_addr().map(|a| a.port()).unwrap_or(0);
        eprintln!(
            "[{:>10.3}ms :{port}] {dir} {}",
            crate::report::now_nanos() as f64 / 1e6,
            clip(text, 600)
        );
    }
}

/// One JSON object as the text of a frame.
fn frame(ws: &Ws, value: &Value) -> String {
    if ws.socketio {
        socketio::encode(value)
    } else {
        value.to_string()
    }
}

/// Sends an Engine.IO pong owed since a ping was read (a cancelled read or
/// send must not lose it).
async fn pong(ws: &mut Ws) -> Result<(), Failure> {
    if ws.pong_due {
        ws.stream
            .feed(Message::Text(socketio::PONG.into()))
            .await
            .map_err(|e| Failure::new("io.send", e.to_string()))?;
        ws.pong_due = false;
    }
    Ok(())
}

/// Sends one JSON object as a text frame.
pub async fn send_json(ws: &mut Ws, value: &Value) -> Result<(), Failure> {
    let text = frame(ws, value);
    trace(ws, "->", &text);
    pong(ws).await?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| Failure::new("io.send", e.to_string()))
}

/// Queues one JSON object without flushing; call [`flush`] after a batch.
pub async fn feed_json(ws: &mut Ws, value: &Value) -> Result<(), Failure> {
    let text = frame(ws, value);
    trace(ws, "->", &text);
    pong(ws).await?;
    ws.feed(Message::Text(text.into()))
        .await
        .map_err(|e| Failure::new("io.send", e.to_string()))
}

pub async fn flush(ws: &mut Ws) -> Result<(), Failure> {
    ws.flush()
        .await
        .map_err(|e| Failure::new("io.send", e.to_string()))
}

/// Reads the next JSON event, skipping control frames. A close frame, end of
/// stream, a binary frame or a frame that is not a JSON object is a failure.
pub async fn recv_json(ws: &mut Ws) -> Result<Value, Failure> {
    loop {
        let msg = match ws.next().await {
            None => {
                return Err(Failure::new(
                    "io.closed",
                    "socket ended without a close frame",
                ))
            }
            Some(Err(e)) => return Err(Failure::new("io.recv", e.to_string())),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Text(text) => {
                trace(ws, "<-", &text);
                let parsed = if ws.socketio {
                    match socketio::decode(&text)? {
                        socketio::Incoming::Event(v) => Ok(v),
                        socketio::Incoming::Ping => {
                            ws.pong_due = true;
                            pong(ws).await?;
                            flush(ws).await?;
                            continue;
                        }
                        socketio::Incoming::Skip => continue,
                    }
                } else {
                    serde_json::from_str::<Value>(&text)
                };
                return match parsed {
                    Ok(v) if v.is_object() => Ok(v),
                    _ => Err(Failure::new(
                        "harness.bad_frame",
                        format!("not a JSON object: {}", clip(&text, 200)),
                    )),
                };
            }
            Message::Binary(_) => {
                return Err(Failure::new("harness.bad_frame", "unexpected binary frame"))
            }
            Message::Close(frame) => {
                let detail = match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close without code".to_string(),
                };
                return Err(Failure::new("io.closed", detail));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// Closes a WebSocket: sends a close frame and waits (at most 2 s) for the
/// server's close frame, then drops the connection without waiting for the
/// server to end TCP too (this broker holds it about a second longer).
pub async fn close_ws(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        }
    })
    .await;
}

/// Sends a JSON request (with a Bearer token if given) and returns the JSON body
/// of a 2xx answer (`Null` when empty). `body` of `None` sends no body.
pub async fn http_json(
    client: &Client,
    method: Method,
    url: Url,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), Failure> {
    let what = format!("{method} {}", url.path());
    let mut req = client.request(method, url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let (status, bytes) = send_checked(req, &what).await?;
    if bytes.is_empty() {
        return Ok((status, Value::Null));
    }
    let v = serde_json::from_slice(&bytes).map_err(|_| {
        Failure::new(
            "harness.bad_http_body",
            format!("{what}: {status} body is not JSON: {}", clip_bytes(&bytes)),
        )
    })?;
    Ok((status, v))
}

/// Sends `req` (described as `what` in failures) and returns a 2xx answer's
/// status and body; any other answer becomes a [`Failure`] named after the
/// server's error code ([`http_failure`]).
pub async fn send_checked(
    req: reqwest::RequestBuilder,
    what: &str,
) -> Result<(StatusCode, bytes::Bytes), Failure> {
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::new("io.http", format!("{what}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Failure::new("io.http", format!("{what}: {e}")))?;
    if !status.is_success() {
        return Err(http_failure(status.as_u16(), &bytes, what));
    }
    Ok((status, bytes))
}

/// Classifies a non-2xx answer by the contract's `{"error":{"code","message"}}`
/// body, or by its status when the body is not that shape.
pub fn http_failure(status: u16, body: &[u8], what: &str) -> Failure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v["error"]["code"].as_str())
        .map(str::to_string);
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str())
        .map(str::to_string);
    match code {
        Some(code) => Failure::new(
            code,
            format!("{what}: {status} {}", message.unwrap_or_default()),
        ),
        None => Failure::new(
            format!("http.{status}"),
            format!("{what}: {status} without error body: {}", clip_bytes(body)),
        ),
    }
}

fn clip_bytes(b: &[u8]) -> String {
    clip(&String::from_utf8_lossy(b), 200)
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// What happened to the open-files limit.
#[derive(Debug, Clone, Copy)]
pub struct NofileLimit {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit.
pub fn raise_nofile_limit() -> Result<NofileLimit, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    // rlim_t is u64 here but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    let (before, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit whose soft limit does not exceed its hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!(
                "setrlimit to {hard}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(NofileLimit {
        before,
        after: hard,
        hard,
    })
}

//! Attacks on the broker by an anonymous outsider, each against the real
//! server on loopback, each asserting the limit that answers it, and that
//! meanwhile `/healthz` answers within 100 ms, a normal customer and agent
//! life cycle completes, and the process's memory stays under a stated bound.
//!
//! The attacker speaks from 127.0.0.2 (all of 127.0.0.0/8 is loopback), the
//! legitimate customer from 127.0.0.1, so per-address limits tell them apart
//! as they would two clients on the Internet. Limits are set low so each
//! attack is small and short; the tests run one at a time (the memory of the
//! process is what they measure).
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The attacker's address.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// How much the process may grow during one attack.
const RSS_BOUND_KIB: u64 = 96 * 1024;

/// One attack at a time: each measures the memory of the whole process.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn config() -> Config {
    Config {
        admin_token: Some("abuse-tests-admin-token-0123456789abcdef".into()),
        ..Config::for_tests()
    }
}

fn assert_rss_bounded(before: u64, what: &str) {
    assert_rss_grew_less_than(before, RSS_BOUND_KIB, what);
}

fn server_addr(h: &Harness) -> SocketAddr {
    h.base
        .trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// An HTTP client speaking from the attacker's address, a new connection
/// each request.
fn attacker_http() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ATTACKER)
        .pool_max_idle_per_host(0)
        .timeout(TIMEOUT)
        .build()
        .expect("attacker client")
}

/// A TCP connection from the attacker's address.
async fn attacker_tcp(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ATTACKER, 0))
        .expect("bind 127.0.0.2");
    socket.connect(addr).await.expect("connect")
}

/// Runs `attack` on `tasks` tasks until the returned flag is set.
fn run_attack<F, Fut>(
    tasks: usize,
    attack: F,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>)
where
    F: Fn(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..tasks)
        .map(|_| tokio::spawn(attack(stop.clone())))
        .collect();
    (stop, handles)
}

async fn end_attack(stop: Arc<AtomicBool>, handles: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("attack task");
    }
}

/// Tally of the answers an attack got.
#[derive(Default)]
struct Tally {
    created: AtomicUsize,
    limited: AtomicUsize,
    other: AtomicUsize,
}

// ---------------------------------------------------------------- finding 1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_flood_from_one_address_gets_429_while_others_are_served() {
    let _one = serial().await;
    let h = start_with(Config {
        sessions_per_ip_per_minute: 20,
        open_sessions_per_ip: 1000,
        ..config()
    });
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let before = rss_kib();
    let tally = Arc::new(Tally::default());
    let url = h.url("/v1/webchat/sessions");
    let (stop, tasks) = run_attack(4, |stop| {
        let (tally, url) = (tally.clone(), url.clone());
        async move {
            let http = attacker_http();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(&url)
                    .json(&json!({"name": "flood"}))
                    .send()
                    .await
                    .expect("session request");
                match r.status().as_u16() {
                    201 => tally.created.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        let retry = r.headers().get("retry-after").cloned();
                        let body: Value = r.json().await.expect("429 body");
                        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                        assert!(retry.is_some(), "429 without Retry-After");
                        tally.limited.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => tally.other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_healthy(&h, "a session flood").await;
        if i == 2 {
            life_cycle(&h, &mut desk, "Dana").await;
        }
    }
    end_attack(stop, tasks).await;
    let created = tally.created.load(Ordering::Relaxed);
    let limited = tally.limited.load(Ordering::Relaxed);
    assert_eq!(tally.other.load(Ordering::Relaxed), 0);
    // A burst of 20, then one every 3 s: the attack lasted about a second.
    assert!((20..=21).contains(&created), "{created} sessions created");
    assert!(limited > 50, "only {limited} requests were refused");
    assert_rss_bounded(before, "a session flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_per_address_are_capped_until_they_are_forgotten() {
    let _one = serial().await;
    let h = start_with(Config {
        sessions_per_ip_per_minute: 0,
        open_sessions_per_ip: 5,
        webchat_session_idle: Duration::from_millis(300),
        ..config()
    });
    let http = attacker_http();
    let create = || async {
        http.post(h.url("/v1/webchat/sessions"))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .expect("session request")
    };
    for _ in 0..5 {
        assert_eq!(create().await.status().as_u16(), 201);
    }
    let refused = create().await;
    assert_eq!(refused.status().as_u16(), 429);
    let body: Value = refused.json().await.expect("body");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 5 open webchat sessions")),
        "{body}"
    );
    // Another address is not held to the attacker's count.
    h.create_session("Dana", None).await;
    // Unused sessions are forgotten after webchat_session_idle, and their
    // places come back.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = create().await;
        if r.status().as_u16() == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sessions' places never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- finding 2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_held_to_a_quota_per_session_and_a_rate_per_address() {
    let _one = serial().await;
    let h = start_with(Config {
        max_upload: 1024 * 1024,
        uploads_per_session: 3,
        upload_bytes_per_session: 2 * 1024 * 1024,
        uploads_per_ip_per_minute: 8,
        ..config()
    });
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let before = rss_kib();
    let sessions_url = h.url("/v1/webchat/sessions");
    let uploads_url = h.url("/v1/attachments?filename=a.bin");
    let session = move |name: &'static str| {
        let http = attacker_http();
        let url = sessions_url.clone();
        async move {
            let r: Value = http
                .post(url)
                .json(&json!({ "name": name }))
                .send()
                .await
                .expect("session")
                .json()
                .await
                .expect("session body");
            r["token"].as_str().expect("token").to_owned()
        }
    };
    let upload = move |token: String, size: usize| {
        let http = attacker_http();
        let url = uploads_url.clone();
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "image/png")
                .body(vec![7u8; size])
                .send()
                .await
                .expect("upload");
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").is_some();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    let a = session("A").await;
    let big = 900 * 1024;
    assert_eq!(upload(a.clone(), big).await.0, 201);
    assert_eq!(upload(a.clone(), big).await.0, 201);
    // 1,800 KiB held: 900 more is over the 2 MiB.
    let (status, retry, body) = upload(a.clone(), big).await;
    assert_eq!((status, retry), (429, true), "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("bytes"),
        "{body}"
    );
    assert_eq!(upload(a.clone(), 10).await.0, 201);
    // Three files held.
    let (status, _, body) = upload(a.clone(), 10).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("at most 3 files"),
        "{body}"
    );
    // Five uploads from this address so far; a new session has three left
    // of the eight per minute.
    let b = session("B").await;
    for _ in 0..3 {
        assert_eq!(upload(b.clone(), 10).await.0, 201);
    }
    let (status, _, body) = upload(b.clone(), 10).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("per minute"),
        "{body}"
    );

    // A flood of 1 MiB uploads from fresh sessions: all refused, none read
    // into memory.
    let refused = Arc::new(AtomicUsize::new(0));
    let (stop, tasks) = run_attack(3, |stop| {
        let (refused, upload, session) = (refused.clone(), upload.clone(), session.clone());
        async move {
            let token = session("flood").await;
            while !stop.load(Ordering::Relaxed) {
                let (status, _, _) = upload(token.clone(), 1024 * 1024).await;
                assert_eq!(status, 429);
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_healthy(&h, "an upload flood").await;
        if i == 1 {
            life_cycle(&h, &mut desk, "Dana").await;
        }
    }
    end_attack(stop, tasks).await;
    assert!(refused.load(Ordering::Relaxed) > 10);
    assert_rss_bounded(before, "an upload flood");
}

// ---------------------------------------------------------------- finding 4

/// Reads what the server answers on `io` until it closes the connection (or
/// `within` passes): the status of its answer, if any, and whether it closed.
async fn answer_and_close(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> (Option<u16>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, io.read(&mut buf)).await {
            Err(_) => break (status_of(&got), false),
            Ok(Ok(0)) | Ok(Err(_)) => break (status_of(&got), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A connection that sends `head` and then one byte of `trickle` every 250
/// ms; returns the server's answer, whether it closed (within 6 s), and when.
async fn slow_client(
    addr: SocketAddr,
    head: &'static str,
    trickle: &'static [u8],
) -> (Option<u16>, bool, Duration) {
    let started = Instant::now();
    let (mut rd, mut wr) = attacker_tcp(addr).await.into_split();
    let _ = wr.write_all(head.as_bytes()).await;
    let writer = async move {
        loop {
            for b in trickle {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if wr.write_all(&[*b]).await.is_err() {
                    // Closed by the server: the reader sees it.
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let (status, closed) = tokio::select! {
        answer = answer_and_close(&mut rd, Duration::from_secs(6)) => answer,
        () = writer => unreachable!("the writer never ends"),
    };
    (status, closed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_and_headers_are_cut_off_and_connections_per_address_capped() {
    let _one = serial().await;
    let h = start_with(Config {
        max_connections_per_ip: 40,
        request_header_timeout: Duration::from_secs(1),
        request_body_timeout: Duration::from_secs(1),
        request_body_min_rate: 1024,
        ..config()
    });
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let before = rss_kib();
    let addr = server_addr(&h);
    let body_head = "POST /v1/webchat/sessions HTTP/1.1\r\nhost: x\r\n\
                     content-type: application/json\r\ncontent-length: 100000\r\n\r\n{";
    let header_head = "GET /healthz HTTP/1.1\r\nhost: x\r\n";
    // 50 slow bodies and 10 slow header lists, all from the attacker: 40 of
    // them are let in.
    let mut clients = Vec::new();
    for i in 0..60 {
        let (head, trickle): (&'static str, &'static [u8]) = if i % 6 == 5 {
            (header_head, b"x")
        } else {
            (body_head, b" ")
        };
        clients.push(tokio::spawn(slow_client(addr, head, trickle)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_healthy(&h, "slow clients").await;
        if i == 1 {
            life_cycle(&h, &mut desk, "Dana").await;
        }
    }
    let mut refused = 0;
    let mut timed_out = 0;
    for c in clients {
        let (status, closed, took) = c.await.expect("slow client");
        assert!(
            closed,
            "a slow client was still connected after {took:?} ({status:?})"
        );
        match status {
            Some(429) => refused += 1,
            // The server's answer to a slow body (408) or to slow headers
            // (408, or a plain close).
            Some(408) | None => timed_out += 1,
            other => panic!("a slow client got {other:?}"),
        }
    }
    assert_eq!(refused, 20, "connections over max_connections_per_ip");
    assert_eq!(timed_out, 40);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let stats = h.admin_get_ok("/v1/stats").await;
        if stats["connections"]["open"].as_u64().is_some_and(|n| n < 5) {
            break;
        }
        assert!(Instant::now() < deadline, "connections stay open: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_rss_bounded(before, "slow clients");
}

/// The status line of a plain `GET /healthz` on a fresh connection from
/// 127.0.0.1, read raw (a refusal at accept is not a request's answer).
async fn raw_healthz(addr: SocketAddr) -> Option<u16> {
    let mut io = TcpStream::connect(addr).await.expect("connect");
    let _ = io
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    answer_and_close(&mut io, TIMEOUT).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_websockets_and_answers_503_beyond() {
    let _one = serial().await;
    let h = start_with(Config {
        max_connections: 10,
        ..config()
    });
    let addr = server_addr(&h);
    let session = h.create_session("Dana", None).await;
    let url = h.customer_ws_url(&session);
    // WebSockets leave the HTTP server's own count at their upgrade; they
    // still fill max_connections (the harness's keep-alive connection may
    // hold one place too).
    let mut sockets = Vec::new();
    let refusal = loop {
        match try_connect(&url).await {
            Ok(ws) => sockets.push(ws),
            Err(status) => break status,
        }
        assert!(
            sockets.len() <= 10,
            "more than max_connections sockets let in"
        );
    };
    assert_eq!(refusal, 503);
    assert!(sockets.len() >= 9, "only {} sockets let in", sockets.len());
    assert_eq!(
        raw_healthz(addr).await,
        Some(503),
        "full: plain requests are refused too"
    );
    // Closing sockets frees their places.
    sockets.truncate(5);
    let deadline = Instant::now() + TIMEOUT;
    while raw_healthz(addr).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "closed WebSockets kept their places"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- finding 5

/// A raw customer socket, split, for sending as fast as a socket goes.
async fn raw_customer(
    h: &Harness,
    session: &Session,
) -> (
    futures_util::stream::SplitSink<RawWs, Message>,
    futures_util::stream::SplitStream<RawWs>,
) {
    let (ws, _) = tokio_tungstenite::connect_async(h.customer_ws_url(session))
        .await
        .expect("customer socket");
    ws.split()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_flood_is_refused_message_by_message_and_the_agent_keeps_its_desk() {
    let _one = serial().await;
    let h = start_with(Config {
        socket_messages_per_second: 20,
        conversation_messages_per_second: 5,
        ..config()
    });
    let alice = h.create_agent("alice", 3, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let before = rss_kib();

    // The flooder's conversation is assigned to alice like any other.
    let flooder = h.create_session("Flood", None).await;
    let (mut sink, mut stream) = raw_customer(&h, &flooder).await;
    sink.send(Message::text(
        json!({"type": "message", "text": "hi", "client_msg_id": "first"}).to_string(),
    ))
    .await
    .expect("send");
    let (offer, _) = desk.take_offer().await;
    let flood_conversation = offer["task"]["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();

    // 3,000 messages as fast as the socket takes them, each with its own id;
    // each is answered, an ack (stored) or rate_limited (not), until the
    // broker closes the socket of a client that keeps on regardless.
    const FLOOD: usize = 3000;
    let reader = tokio::spawn(async move {
        let (mut acks, mut limited, mut close) = (Vec::new(), 0usize, None);
        let deadline = Instant::now() + Duration::from_secs(8);
        while acks.len() + limited < FLOOD + 1 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(Ok(frame))) = tokio::time::timeout(left, stream.next()).await else {
                break;
            };
            if let Message::Close(reason) = &frame {
                close = reason
                    .as_ref()
                    .map(|r| (u16::from(r.code), r.reason.as_str().to_owned()));
                break;
            }
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
            match v["type"].as_str() {
                Some("ack") => acks.push(v["client_msg_id"].as_str().unwrap_or("").to_owned()),
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    assert!(
                        v["ref"].as_str().is_some_and(|r| r.starts_with("f-")),
                        "{v}"
                    );
                    limited += 1;
                }
                _ => {}
            }
        }
        (acks, limited, close)
    });
    for i in 0..FLOOD {
        let cmd = json!({"type": "message", "text": format!("flood {i}"),
                         "client_msg_id": format!("f-{i}"), "ref": format!("f-{i}")});
        // Sends after the broker closed the socket fail: the client knows.
        if sink.send(Message::text(cmd.to_string())).await.is_err() {
            break;
        }
    }

    // Meanwhile: healthy, and another customer's conversation with the same
    // agent goes its whole way.
    assert_healthy(&h, "a customer flood").await;
    life_cycle(&h, &mut desk, "Dana").await;
    assert_healthy(&h, "a customer flood").await;

    let (acks, limited, close) = reader.await.expect("reader");
    assert_eq!(
        close,
        Some((1008, "rate_limited".to_owned())),
        "the flooder's socket is closed"
    );
    // Acknowledged or refused, one by one, up to the close: at least the
    // refusals in a row that close the socket.
    assert!(limited >= 200, "only {limited} refused");
    assert!(acks.len() < 40, "{} acknowledged", acks.len());
    // Whatever was acknowledged was stored, and reached the agent.
    let history = h.messages(&flood_conversation).await;
    let stored: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["from"] == "customer")
        .filter_map(|m| m["client_msg_id"].as_str())
        .collect();
    // Every acknowledged message was stored. Acks still on their way when
    // the broker closed the socket are lost with it; those messages are
    // stored all the same, and the history of the next connection has them.
    for id in &acks {
        assert!(
            stored.contains(&id.as_str()),
            "{id} acknowledged, not stored"
        );
    }
    let (_ws, replay) = h.connect_customer(&flooder).await;
    let replayed: Vec<&str> = replay["messages"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|m| m["from"] == "customer")
        .filter_map(|m| m["client_msg_id"].as_str())
        .collect();
    assert_eq!(replayed, stored, "the next connection's history");
    for id in stored.iter().skip(1) {
        desk.recv_where(&format!("message {id}"), |v| {
            v["type"] == "message" && v["message"]["client_msg_id"] == *id
        })
        .await;
    }
    // The agent's desk was never closed as a slow consumer.
    let stats = h.admin_get_ok("/v1/stats").await;
    assert_eq!(stats["slow_consumers"], 0, "{stats}");
    let view = h.agent_view("alice").await;
    assert_eq!(view["connected"], true, "{view}");
    assert_rss_bounded(before, "a customer flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_session_are_capped_at_the_upgrade() {
    let _one = serial().await;
    let h = start_with(Config {
        sockets_per_session: 4,
        ..config()
    });
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let before = rss_kib();
    let session = h.create_session("Many tabs", None).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(h.connect_customer(&session).await.0);
    }
    // 300 more attempts on the same session: each refused before upgrading.
    let url = h.customer_ws_url(&session);
    let (stop, tasks) = run_attack(3, |stop| {
        let url = url.clone();
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 100 {
                match try_connect(&url).await {
                    Err(status) => assert_eq!(status, 429),
                    Ok(_) => panic!("a fifth socket was let in"),
                }
                n += 1;
            }
        }
    });
    assert_healthy(&h, "a socket flood on one session").await;
    life_cycle(&h, &mut desk, "Dana").await;
    assert_healthy(&h, "a socket flood on one session").await;
    end_attack(stop, tasks).await;
    // A socket closed frees its place.
    drop(open.pop());
    let deadline = Instant::now() + TIMEOUT;
    while try_connect(&url).await.is_err() {
        assert!(Instant::now() < deadline, "a closed socket kept its place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_rss_bounded(before, "a socket flood on one session");
}

// ---------------------------------------------------------------- stalled sockets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_is_closed_and_what_it_was_sent_is_kept() {
    let _one = serial().await;
    let h = start_with(Config {
        socket_write_timeout: Duration::from_secs(1),
        socket_backlog_bytes: 64 * 1024,
        max_text: 16_000,
        max_history_bytes: 64 * 1024 * 1024,
        ..config()
    });
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let before = rss_kib();
    let session = h.create_session("Never reads", None).await;
    let open = |stats: &Value| {
        stats["connections"]["open"]
            .as_u64()
            .expect("open connections")
    };
    let without_customer = open(&h.admin_get_ok("/v1/stats").await);
    // A customer with a small receive window that stops reading after its
    // first message.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let io = socket.connect(server_addr(&h)).await.expect("connect");
    let (mut customer, _) = tokio_tungstenite::client_async(h.customer_ws_url(&session), io)
        .await
        .expect("customer socket");
    customer
        .send(Message::text(
            json!({"type": "message", "text": "hi", "client_msg_id": "c1"}).to_string(),
        ))
        .await
        .expect("send");
    let (offer, _) = desk.take_offer().await;
    let conversation = offer["task"]["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    assert_eq!(
        open(&h.admin_get_ok("/v1/stats").await),
        without_customer + 1
    );
    // 600 agent messages of 16,000 characters: 9.6 MB the customer never
    // reads, more than the kernel's buffers hold.
    let text = "x".repeat(16_000);
    for i in 0..600 {
        let echo = desk
            .call(
                json!({"type": "send", "conversation_id": conversation, "text": text,
                         "client_msg_id": format!("a{i}")}),
            )
            .await;
        assert_eq!(echo["type"], "message", "{echo}");
    }
    // The broker closes the customer's connection, and frees its place,
    // while the client still reads nothing.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let stats = h.admin_get_ok("/v1/stats").await;
        if open(&stats) == without_customer {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled socket is still open: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = h.get("/v1/webchat/session", Some(&session.token)).await;
    assert_eq!(r.body["connected_sockets"], 0, "{}", r.text);
    assert_healthy(&h, "a stalled socket").await;
    // Nothing the agent sent was lost: it is all in the conversation.
    let history = h.messages(&conversation).await;
    let from_agent = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["from"] == "agent")
        .count();
    assert_eq!(from_agent, 600);
    assert_rss_bounded(before, "a stalled socket");
    drop(customer);
}

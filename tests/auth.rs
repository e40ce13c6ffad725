//! Tokens under attack, over real sockets: guessing is throttled per client
//! address (even the right token answers 429 while an address is blocked),
//! with an audit line that never holds the token; `?token=` only on WebSocket
//! upgrades; agent tokens with a lifetime; `/metrics` behind a token.
mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use switchboard::Config;

/// How much the process may grow during a token-guessing attack, in KiB.
/// The tests of this file run side by side in one process; the per-address
/// failure counters are a few bytes each, so 64 MiB is about leaks, not
/// about the counters.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// A client whose connections come from `ip` (any 127.x.y.z is this host).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .timeout(TIMEOUT)
        .build()
        .expect("client")
}

async fn get_status(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> (u16, Option<String>, String) {
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry, resp.text().await.unwrap_or_default())
}

/// The status a WebSocket upgrade of `path` gets from `ip`.
async fn upgrade_status_from(ip: &str, h: &Harness, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = h
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("server address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::new(ip.parse().expect("ip"), 0))
        .expect("bind");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut head))
        .await
        .expect("answer in time")
        .expect("read status line");
    String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status code")
}

#[tokio::test]
async fn guessing_tokens_is_throttled_per_address_even_for_the_right_token() {
    let h = start_with(Config {
        auth_failures_per_minute: 5,
        ..test_config()
    });
    let url = h.url("/v1/agents");
    // The guesser speaks from 127.0.0.2; the health check's customer and
    // desk from 127.0.0.1.
    let guesser = client_from("127.0.0.2");
    let vitals = Vitals::before("token guessing", RSS_BOUND_KIB);

    // Five wrong tokens in a row: each an ordinary 401.
    for i in 0..5 {
        let (status, retry, body) = get_status(&guesser, &url, &format!("guess-{i}")).await;
        assert_eq!(status, 401, "{body}");
        assert!(retry.is_none());
    }
    // The sixth within the minute: 429 rate_limited, with when to retry.
    let (status, retry, body) = get_status(&guesser, &url, "guess-5").await;
    assert_eq!(status, 429, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");

    // Blocked means blocked: the right token gets the same answer, so the
    // guesser cannot tell a hit from a miss.
    let (status, _, _) = get_status(&guesser, &url, &h.admin).await;
    assert_eq!(status, 429);
    // A WebSocket upgrade from that address too.
    assert_eq!(
        upgrade_status_from("127.0.0.2", &h, "/v1/webchat/ws?token=guess-ws").await,
        429
    );

    // The guesser keeps at it, many guesses at once: every one is refused
    // as throttled, and meanwhile the broker is healthy and serves others.
    let answers = probed(
        &h,
        "token guessing",
        futures_util::future::join_all((0..40).map(|i| {
            let (guesser, url) = (&guesser, &url);
            async move { get_status(guesser, url, &format!("burst-{i}")).await.0 }
        })),
    )
    .await;
    assert!(answers.iter().all(|&s| s == 429), "{answers:?}");
    vitals.check(&h).await;
    vitals.assert_memory();

    // Another address is not affected, and the broker stays healthy.
    let other = client_from("127.0.0.3");
    let (status, _, body) = get_status(&other, &url, &h.admin).await;
    assert_eq!(status, 200, "{body}");
    let health = other.get(h.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);

    // Credentials that exist but are of the wrong kind are not guesses.
    let session = h.create_session("Dana", None).await;
    for _ in 0..10 {
        let (status, _, _) = get_status(&other, &url, &session.token).await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = get_status(&other, &url, &h.admin).await;
    assert_eq!(status, 200);
}

/// The real binary, so its log on stderr can be read.
#[test]
fn failed_authentications_are_logged_with_address_and_route_never_the_token() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(["--bind", "127.0.0.1:0", "--auth-failures-per-minute", "2"])
        .env(
            "SWITCHBOARD_ADMIN_TOKEN",
            "admin-secret-0123456789abcdef0123456789",
        )
        .env("RUST_LOG", "switchboard=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Both streams read to their end, so the broker never writes to a closed pipe.
    let (out_tx, out_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let base = out_rx
        .iter()
        .find_map(|l| {
            l.strip_prefix("api:")
                .map(|u| u.trim().trim_end_matches("/v1").to_owned())
        })
        .expect("the api: line");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let secret = "wrong-token-that-must-never-be-logged";
    let statuses: Vec<u16> = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let resp = client
                    .get(format!("{base}/v1/stats"))
                    .bearer_auth(secret)
                    .send()
                    .await
                    .expect("request");
                statuses.push(resp.status().as_u16());
            }
            statuses
        });
    assert_eq!(statuses, [401, 401, 429]);
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => lines.push(line),
            Err(_) if lines.iter().any(|l| l.contains("authentication throttled")) => break,
            Err(_) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{lines:#?}");
    let throttled: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("authentication throttled"))
        .collect();
    assert_eq!(throttled.len(), 1, "{lines:#?}");
    for line in failed.iter().chain(&throttled) {
        assert!(line.contains("WARN"), "at warn: {line}");
        assert!(line.contains("ip=127.0.0.1"), "names the address: {line}");
        assert!(line.contains("route=/v1/stats"), "names the route: {line}");
    }
    assert!(
        !lines.iter().any(|l| l.contains(secret)),
        "the token is never logged: {lines:#?}"
    );
}

#[tokio::test]
async fn query_token_works_on_websocket_upgrades_only() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let session = h.create_session("Dana", None).await;

    // HTTP routes: refused, saying where the token goes, for every kind.
    for (path, token) in [
        ("/v1/agents".to_owned(), h.admin.clone()),
        ("/v1/agents/alice".to_owned(), alice.token.clone()),
        ("/v1/webchat/session".to_owned(), session.token.clone()),
        ("/v1/stats".to_owned(), h.admin.clone()),
    ] {
        let r = h.get(&format!("{path}?token={token}"), None).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text);
        assert_eq!(r.error_code(), "unauthorized");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("only on WebSocket upgrades")
                && message.contains("Authorization: Bearer"),
            "{message}"
        );
    }
    // The header still works.
    assert_eq!(
        h.get("/v1/webchat/session", Some(&session.token))
            .await
            .status,
        200
    );

    // Upgrades: accepted.
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["agent"]["id"], "alice");
    let (_chat, history) = h.connect_customer(&session).await;
    assert_eq!(history["type"], "history");
    let board = format!("{}/v1/supervisor/ws?token={}", h.ws_base, h.admin);
    assert!(try_connect(&board).await.is_ok());
    desk.set_activity("available").await;
}

#[tokio::test]
async fn an_expired_agent_token_answers_token_expired_and_closes_the_desk() {
    let h = start_with(Config {
        agent_token_ttl: Some(Duration::from_secs(1)),
        ..test_config()
    });
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut desk, _hello) = h.connect_agent(&alice).await;
    desk.set_activity("available").await;

    // The lifetime ends: the open desk is closed, saying why.
    let (code, reason) = desk.recv_close_within(Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));

    // HTTP and new sockets: 401 token_expired, with what to do.
    let r = h.get("/v1/agents/alice", Some(&alice.token)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.error_code(), "token_expired");
    assert!(r.text.contains("POST /v1/agents/alice/token"), "{}", r.text);
    assert_eq!(try_connect(&h.agent_ws_url(&alice)).await.err(), Some(401));

    // Rotation issues a new token with a new lifetime.
    let r = h
        .request(
            reqwest::Method::POST,
            "/v1/agents/alice/token",
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fresh = Agent {
        token: r.body["token"].as_str().expect("token").to_owned(),
        ..alice.clone()
    };
    let (_desk, hello) = h.connect_agent(&fresh).await;
    assert_eq!(hello["agent"]["id"], "alice");
    assert_eq!(
        h.get("/v1/agents/alice", Some(&fresh.token)).await.status,
        200
    );
}

#[tokio::test]
async fn agent_tokens_do_not_expire_by_default() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut desk, _hello) = h.connect_agent(&alice).await;
    desk.set_activity("available").await;
    desk.expect_none("a close", Duration::from_millis(1500), |_| true)
        .await;
    assert!(desk.closed.is_none());
    assert_eq!(
        h.get("/v1/agents/alice", Some(&alice.token)).await.status,
        200
    );
}

#[tokio::test]
async fn metrics_need_the_admin_or_metrics_token() {
    let scraper = "scraper-token-0123456789abcdef0123456789";
    let h = start_with(Config {
        metrics_token: Some(scraper.into()),
        ..test_config()
    });
    let alice = h.create_agent("alice", 1, &[]).await;

    let r = h.get("/metrics", None).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.error_code(), "unauthorized");
    assert!(r.text.contains("metrics_public"), "{}", r.text);
    let r = h.get("/metrics", Some(&alice.token)).await;
    assert_eq!(r.status, 401, "an agent's token does not read metrics");
    let r = h.get("/metrics", Some("not-a-token")).await;
    assert_eq!(r.status, 401);

    for token in [h.admin.as_str(), scraper] {
        let r = h.get("/metrics", Some(token)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(
            r.text.contains("# TYPE switchboard_agents gauge"),
            "{}",
            r.text
        );
    }
    // The metrics token opens nothing else.
    assert_eq!(h.get("/v1/stats", Some(scraper)).await.status, 401);
}

#[tokio::test]
async fn metrics_public_opens_metrics_to_anyone() {
    let h = start_with(Config {
        metrics_public: true,
        ..test_config()
    });
    let r = h.get("/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.text.contains("switchboard_agents_connected"),
        "{}",
        r.text
    );
    // Only /metrics.
    assert_eq!(h.get("/v1/stats", None).await.status, 401);
}

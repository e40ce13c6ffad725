//! WebSocket connections at the byte level: the upgrade, what the broker
//! writes after it, and how it closes (the sockets are served off the HTTP/1
//! dispatcher once upgraded, see src/http/upgrade.rs).
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A client frame (masked, as clients must send them).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads the raw stream: the HTTP head, then server frames.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(base: &str) -> Raw {
        let addr = base
            .trim_start_matches("ws://")
            .trim_start_matches("http://");
        Raw {
            tcp: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// More bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end + 4].to_vec()).expect("text head");
                self.buf.drain(..end + 4);
                return head;
            }
            assert!(self.fill().await, "stream ended before the head");
        }
    }

    /// The next server frame: (opcode, payload).
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return (op, payload);
            }
            assert!(self.fill().await, "stream ended before a frame");
        }
    }

    /// The next text frame as JSON, skipping pings.
    async fn json(&mut self) -> Value {
        loop {
            let (op, payload) = self.frame().await;
            if op == 0x1 {
                return serde_json::from_slice(&payload).expect("JSON text frame");
            }
            assert_eq!(op, 0x9, "only pings besides text frames");
        }
    }

    async fn closed(&mut self) -> bool {
        while self.fill().await {}
        true
    }
}

fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
    let (len, at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = b.get(at..at + len)?.to_vec();
    Some((b[0] & 0x0f, payload, at + len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    let h = start();
    let sess = h.create_session("Dana", None).await;
    let mut raw = Raw::connect(&h.ws_base).await;
    // The request and a first message in one write: the bytes after the head
    // arrive with it, before the session exists.
    let hello = json!({"type": "message", "text": "hi", "client_msg_id": "m1"}).to_string();
    let mut bytes = upgrade_request(&format!("/v1/webchat/ws?token={}", sess.token)).into_bytes();
    bytes.extend(client_frame(0x1, hello.as_bytes()));
    raw.write(&bytes).await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(!lower.contains("content-length"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert_eq!(raw.json().await["type"], "history");
    let ack = raw.json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (ack["client_msg_id"].as_str(), ack["seq"].as_u64()),
        (Some("m1"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_frame_is_answered_and_the_connection_closed() {
    let h = start();
    let sess = h.create_session("Dana", None).await;
    let mut raw = Raw::connect(&h.ws_base).await;
    // A plain request first: the upgrade may come on a kept-alive connection.
    raw.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    while raw.buf.len() < len {
        assert!(raw.fill().await);
    }
    raw.buf.drain(..len);
    raw.write(upgrade_request(&format!("/v1/webchat/ws?token={}", sess.token)).as_bytes())
        .await;
    assert!(raw.head().await.starts_with("HTTP/1.1 101"));
    assert_eq!(raw.json().await["type"], "history");
    raw.write(&client_frame(0x8, &1000u16.to_be_bytes())).await;
    let (op, payload) = raw.frame().await;
    assert_eq!(op, 0x8, "close answered");
    assert_eq!(payload.get(..2), Some(&1000u16.to_be_bytes()[..]));
    assert!(raw.closed().await, "then the connection ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_a_whole_response_then_the_end() {
    let h = start();
    let mut raw = Raw::connect(&h.ws_base).await;
    raw.write(upgrade_request("/v1/webchat/ws?token=wrong").as_bytes())
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("connection: close"), "{head}");
    assert!(raw.closed().await);
    let body: Value = serde_json::from_slice(&raw.buf).expect("a JSON body");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let len = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length");
    assert_eq!(len.trim().parse::<usize>().unwrap(), raw.buf.len());
}

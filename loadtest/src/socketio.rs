//! The Socket.IO peer (`--socketio-peer`): a chat relay on Node.js and the
//! `socket.io` npm package (`loadtest/peers/socketio/relay.js`), the stack
//! someone might pick instead of Switchboard. It does what the baseline relay
//! does and speaks the same JSON, each frame carried as one Socket.IO event
//! `msg` whose single argument is the JSON object.
//!
//! Here: the client side of the framing over the harness's own WebSockets
//! (Engine.IO v4, WebSocket transport only), and starting and stopping the
//! Node process.
//!
//! - connect to `/socket.io/?EIO=4&transport=websocket&path=<harness path>&token=<token>`;
//! - the server opens with `0{"sid":…,"pingInterval":…}`; send `40` (connect to
//!   the main namespace) and wait for `40{"sid":…}` (`44{…}`: refused);
//! - frames out: `42["msg",<json>]`; frames in: `42["msg",<json>]` gives the
//!   JSON, other events and packets are skipped;
//! - the server's Engine.IO ping `2` is answered with the pong `3`; Engine.IO
//!   close `1` and Socket.IO disconnect `41` end the socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::net::{self, Failure};

/// The one event name both sides use.
pub const EVENT: &str = "msg";

/// Engine.IO pong, the answer to a ping (`2`).
pub const PONG: &str = "3";

/// Socket.IO CONNECT to the main namespace.
const CONNECT: &str = "40";

/// The Socket.IO endpoint of the peer at `base` for a connection that the
/// baseline relay would see at `path` with `?token=`.
pub fn url(base: &Url, path: &str, token: &str) -> Url {
    let mut u = base.clone();
    // http -> ws is a change between two "special" schemes, which Url allows.
    u.set_scheme("ws").expect("http to ws scheme change");
    u.set_path("/socket.io/");
    u.set_query(None);
    u.query_pairs_mut()
        .append_pair("EIO", "4")
        .append_pair("transport", "websocket")
        .append_pair("path", path)
        .append_pair("token", token);
    u
}

/// One JSON object as a Socket.IO `msg` event frame.
pub fn encode(value: &Value) -> String {
    format!("42[\"{EVENT}\",{value}]")
}

/// What a frame from the peer is.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A `msg` event: its argument.
    Event(Value),
    /// An Engine.IO ping: answer with [`PONG`].
    Ping,
    /// Anything else to pass over: the open packet, the CONNECT answer, a
    /// pong, a noop, another event.
    Skip,
}

/// Reads one text frame from the peer. A close, a disconnect or a frame that
/// is not Engine.IO is a failure.
pub fn decode(text: &str) -> Result<Incoming, Failure> {
    let bad = || {
        Failure::new(
            "harness.bad_frame",
            format!("not a Socket.IO packet: {}", net::clip(text, 200)),
        )
    };
    let mut chars = text.chars();
    match chars.next() {
        Some('2') => Ok(Incoming::Ping),
        Some('1') => Err(Failure::new("io.closed", "Engine.IO close packet")),
        Some('4') => match chars.next() {
            Some('2') => event(&text[2..]).ok_or_else(bad),
            Some('1') => Err(Failure::new("io.closed", "Socket.IO disconnect packet")),
            Some('4') => Err(Failure::new(
                "socketio.connect_error",
                net::clip(&text[2..], 200),
            )),
            Some(_) => Ok(Incoming::Skip),
            None => Err(bad()),
        },
        Some('0' | '3' | '5' | '6') => Ok(Incoming::Skip),
        _ => Err(bad()),
    }
}

/// The body of an EVENT packet: `[/namespace,][ack id]["name",arg…]`.
fn event(body: &str) -> Option<Incoming> {
    let mut rest = body;
    if rest.starts_with('/') {
        rest = &rest[rest.find(',')? + 1..];
    }
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let Value::Array(mut items) = serde_json::from_str::<Value>(rest).ok()? else {
        return None;
    };
    if items.first()?.as_str()? != EVENT {
        return Some(Incoming::Skip);
    }
    if items.len() < 2 {
        return None;
    }
    Some(Incoming::Event(items.swap_remove(1)))
}

/// The Socket.IO handshake on a fresh WebSocket: the Engine.IO open packet,
/// then CONNECT and its answer.
pub async fn connect(ws: &mut WebSocketStream<TcpStream>) -> Result<(), Failure> {
    let mut opened = false;
    loop {
        let text = match ws.next().await {
            None => {
                return Err(Failure::new(
                    "io.closed",
                    "closed during the Socket.IO handshake",
                ))
            }
            Some(Err(e)) => return Err(Failure::new("io.recv", e.to_string())),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(m)) if m.is_close() => {
                return Err(Failure::new(
                    "io.closed",
                    "closed during the Socket.IO handshake",
                ))
            }
            Some(Ok(_)) => continue,
        };
        let out = if !opened && text.starts_with('0') {
            opened = true;
            CONNECT
        } else if opened && text.starts_with(CONNECT) {
            return Ok(());
        } else if decode(&text)? == Incoming::Ping {
            PONG
        } else {
            continue;
        };
        ws.send(Message::Text(out.into()))
            .await
            .map_err(|e| Failure::new("io.send", e.to_string()))?;
    }
}

/// A running peer process.
pub struct Peer {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    /// Held open: the peer exits when it closes (the harness went away).
    _stdin: Option<ChildStdin>,
}

impl Peer {
    /// Kills the peer and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Where the peer lives without `--socketio-peer-dir`: next to this crate's
/// manifest when the binary was built here, else `loadtest/peers/socketio`
/// under the current directory (the workspace root).
pub fn default_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio");
    if built.join("relay.js").is_file() {
        built
    } else {
        PathBuf::from("loadtest/peers/socketio")
    }
}

/// Whether `tool --version` runs; its version, or why not.
async fn version(tool: &str) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            format!(
                "the Socket.IO peer needs Node.js and npm on PATH; running `{tool} --version` failed: {e}"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "the Socket.IO peer needs Node.js and npm on PATH; `{tool} --version` exited with {}",
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts the peer from `dir` (its packages installed with `npm ci` first if
/// `node_modules` is missing) on a free loopback port, each agent with
/// `capacity` slots.
pub async fn start(dir: Option<&Path>, capacity: u32) -> Result<Peer, String> {
    let dir = dir.map_or_else(default_dir, Path::to_path_buf);
    let script = dir.join("relay.js");
    if !script.is_file() {
        return Err(format!(
            "Socket.IO peer: no relay.js in {} (give --socketio-peer-dir)",
            dir.display()
        ));
    }
    let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let script = dir.join("relay.js");
    let node = version("node").await?;
    if !dir.join("node_modules").is_dir() {
        let npm = version("npm").await?;
        println!(
            "Socket.IO peer: installing its packages (npm ci in {}, npm {npm})",
            dir.display()
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("Socket.IO peer: npm ci: {e}"))?;
        if !status.success() {
            return Err(format!(
                "Socket.IO peer: `npm ci` in {} failed ({status})",
                dir.display()
            ));
        }
    }
    // The peer holds the server end of every socket: let it inherit the
    // raised open-files limit.
    net::raise_nofile_limit()?;
    let mut child = Command::new("node")
        .arg(&script)
        .args(["--port", "0", "--capacity", &capacity.to_string()])
        .arg("--exit-with-stdin")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("Socket.IO peer: starting node: {e}"))?;
    let pid = child.id().unwrap_or(0);
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let port = timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(port) = line
                .strip_prefix("listening ")
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                return Some(port);
            }
            println!("[socketio peer] {line}");
        }
        None
    })
    .await;
    let port = match port {
        Ok(Some(port)) => port,
        Ok(None) => {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            return Err(format!(
                "Socket.IO peer (node {node}) exited before listening ({status})"
            ));
        }
        Err(_) => {
            let _ = child.start_kill();
            return Err(format!(
                "Socket.IO peer (node {node}) did not say `listening <port>` within 30 s"
            ));
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[socketio peer] {line}");
        }
    });
    Ok(Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pid,
        child,
        _stdin: stdin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    #[test]
    fn frames_out_are_msg_events() {
        let v = json!({"type": "message", "text": "lt #1 t=5", "client_msg_id": "c1-1"});
        let frame = encode(&v);
        assert!(frame.starts_with("42[\"msg\",{"), "{frame}");
        assert_eq!(decode(&frame).unwrap(), Incoming::Event(v));
    }

    #[test]
    fn frames_in() {
        let v = json!({"type": "hello", "agent": {"id": "a1"}});
        assert_eq!(
            decode(&format!("42[\"msg\",{v}]")).unwrap(),
            Incoming::Event(v.clone())
        );
        // With an ack id or a namespace.
        assert_eq!(
            decode(&format!("4217[\"msg\",{v}]")).unwrap(),
            Incoming::Event(v.clone())
        );
        assert_eq!(
            decode(&format!("42/chat,3[\"msg\",{v}]")).unwrap(),
            Incoming::Event(v)
        );
        // Other events and packets are passed over.
        assert_eq!(decode("42[\"other\",1]").unwrap(), Incoming::Skip);
        assert_eq!(
            decode("0{\"sid\":\"x\",\"pingInterval\":25000}").unwrap(),
            Incoming::Skip
        );
        assert_eq!(decode("40{\"sid\":\"y\"}").unwrap(), Incoming::Skip);
        assert_eq!(decode("3").unwrap(), Incoming::Skip);
        assert_eq!(decode("6").unwrap(), Incoming::Skip);
    }

    #[test]
    fn pings_closes_and_garbage() {
        assert_eq!(decode("2").unwrap(), Incoming::Ping);
        assert_eq!(PONG, "3");
        assert_eq!(decode("1").unwrap_err().code, "io.closed");
        assert_eq!(decode("41").unwrap_err().code, "io.closed");
        assert_eq!(
            decode("44{\"message\":\"no\"}").unwrap_err().code,
            "socketio.connect_error"
        );
        for bad in [
            "",
            "4",
            "{\"type\":\"hello\"}",
            "42[\"msg\"]",
            "42{}",
            "42[\"msg\",{",
        ] {
            assert_eq!(
                decode(bad).unwrap_err().code,
                "harness.bad_frame",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn url_carries_the_relay_path_and_token() {
        let base = Url::parse("http://127.0.0.1:4000").unwrap();
        assert_eq!(
            url(&base, "/v1/agents/a 1/ws", "t&k").as_str(),
            "ws://127.0.0.1:4000/socket.io/?EIO=4&transport=websocket&path=%2Fv1%2Fagents%2Fa+1%2Fws&token=t%26k"
        );
    }

    async fn text(ws: &mut WebSocketStream<TcpStream>) -> String {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            other => panic!("the server expected a text frame, got {other:?}"),
        }
    }

    /// The harness's socket helpers against a scripted Socket.IO server: the
    /// handshake, a ping answered while reading, and events both ways.
    #[tokio::test]
    async fn handshake_ping_and_events_over_a_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let mut say = Vec::new();
            ws.send(Message::Text(
                "0{\"sid\":\"s1\",\"upgrades\":[],\"pingInterval\":25000,\"pingTimeout\":20000}"
                    .into(),
            ))
            .await
            .unwrap();
            say.push(text(&mut ws).await);
            ws.send(Message::Text("40{\"sid\":\"n1\"}".into()))
                .await
                .unwrap();
            ws.send(Message::Text("2".into())).await.unwrap();
            ws.send(Message::Text(
                "42[\"msg\",{\"type\":\"hello\",\"n\":1}]".into(),
            ))
            .await
            .unwrap();
            say.push(text(&mut ws).await);
            say.push(text(&mut ws).await);
            say
        });
        let mut target = net::Target::parse(&format!("http://{addr}")).unwrap();
        target.socketio = true;
        let u = target.ws("/v1/webchat/ws", "tok");
        assert!(u.as_str().contains("/socket.io/?EIO=4&transport=websocket"));
        let mut ws = net::connect_ws(&target, None, &u).await.unwrap();
        let hello = net::recv_json(&mut ws).await.unwrap();
        assert_eq!(hello, json!({"type": "hello", "n": 1}));
        net::send_json(&mut ws, &json!({"type": "activity"}))
            .await
            .unwrap();
        let said = server.await.unwrap();
        assert_eq!(said, vec!["40", "3", "42[\"msg\",{\"type\":\"activity\"}]"]);
    }
}

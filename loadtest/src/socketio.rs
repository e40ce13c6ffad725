//! The Socket.IO peer (`--socketio-peer`): a chat relay on Node.js and the
//! `socket.io` npm package (`loadtest/peers/socketio/relay.js`), the stack
//! someone might pick instead of Switchboard. It does what the baseline relay
//! does and speaks the same JSON, each frame carried as one Socket.IO event
//! `msg` whose single argument is the JSON object.
//!
//! Here: the client side of the framing over the harness's own WebSockets
//! (Engine.IO v4, WebSocket transport only), and starting the Node process
//! (through `peer`).
//!
//! - connect to `/socket.io/?EIO=4&transport=websocket&path=<harness path>&token=<token>`;
//! - the server opens with `0{"sid":…,"pingInterval":…}`; send `40` (connect to
//!   the main namespace) and wait for `40{"sid":…}` (`44{…}`: refused);
//! - frames out: `42["msg",<json>]`; frames in: `42["msg",<json>]` gives the
//!   JSON, other events and packets are skipped;
//! - the server's Engine.IO ping `2` is answered with the pong `3`; Engine.IO
//!   close `1` and Socket.IO disconnect `41` end the socket.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::net::{self, Failure};
use crate::peer;

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

pub use crate::peer::Peer;

/// Starts the peer from `dir` (default `loadtest/peers/socketio`; its
/// packages installed with `npm ci` first if `node_modules` is missing) on a
/// free loopback port, each agent with `capacity` slots, pinned to `cpus` if
/// given.
pub async fn start(
    dir: Option<&Path>,
    capacity: u32,
    cpus: Option<&[usize]>,
) -> Result<Peer, String> {
    let what = "the Socket.IO peer";
    let dir = dir.map_or_else(|| peer::default_dir("socketio"), Path::to_path_buf);
    let (dir, node) = peer::prepare_node(&dir, what, "--socketio-peer-dir").await?;
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("relay.js"))
        .args(["--port", "0", "--capacity", &capacity.to_string()])
        .arg("--exit-with-stdin")
        .current_dir(&dir);
    peer::spawn_listening(cmd, "socketio peer", cpus)
        .await
        .map_err(|e| format!("{e} (node {node})"))
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

//! The lean echo relay and its probe: two frames per round trip, the
//! reference an outside closed-loop probe measures brokers against.
//!
//! The relay (`--serve-echo-relay`, a process of its own in the per-core
//! mode) does no routing, keeps no history and sends no acks: a customer
//! connects to `/c?conv=<id>&agent=<id>` (the probe says which agent serves
//! it), an agent to `/a?agent=<id>`. A customer's `{"text":…}` reaches its
//! agent as `{"conversation_id":…,"text":…}`; the agent's
//! `{"conversation_id":…,"text":…}` reaches the customer as `{"text":…}`.
//! One JSON parse and one encode per hop, two frames written per round trip
//! where Switchboard writes four (the customer's `ack` and the agent's echo
//! too) and does the routing, history and sequence numbers besides.
//!
//! The probe (`drive`) plays the same closed loop as the harness's per-core
//! customers: every customer sends its next message when the reply to the
//! previous one arrives, every agent answers at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, Failure, Target};

type Tx = mpsc::UnboundedSender<Message>;

/// Who is connected: agents by id, customers by conversation.
#[derive(Default)]
struct Peers {
    agents: HashMap<String, Tx>,
    customers: HashMap<String, Tx>,
}

type Shared = Arc<Mutex<Peers>>;

/// Where a socket's frames go.
enum Role {
    Agent(String),
    Customer { conv: String, agent: String },
}

/// A customer's frame.
#[derive(Deserialize)]
struct FromCustomer<'a> {
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

/// An agent's frame.
#[derive(Deserialize)]
struct FromAgent<'a> {
    #[serde(borrow)]
    conversation_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
}

/// `--serve-echo-relay`: serves on a free loopback port, prints
/// `listening <port>`, and serves until stdin closes.
pub async fn serve_main() -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    net::raise_nofile_limit()?;
    let listener = listen()?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(accept(listener));
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", addr.port()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    task.abort();
    Ok(())
}

fn listen() -> Result<TcpListener, String> {
    // The broker's listen backlog (tokio's bind would give 1,024).
    let listen = || -> std::io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        socket.listen(4096)
    };
    listen().map_err(|e| format!("echo relay: cannot listen on 127.0.0.1: {e}"))
}

async fn accept(listener: TcpListener) {
    let peers = Shared::default();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, peers.clone()));
            }
            // Out of file descriptors and the like: pause, then go on.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// The role a request's path and query name (None: neither).
fn role(path: &str, query: &str) -> Option<Role> {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    match path {
        "/a" => Some(Role::Agent(param("agent")?)),
        "/c" => Some(Role::Customer {
            conv: param("conv")?,
            agent: param("agent")?,
        }),
        _ => None,
    }
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, peers: Shared) {
    let mut who = None;
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| {
            who = role(req.uri().path(), req.uri().query().unwrap_or_default());
            Ok(resp)
        },
        Some(net::ws_config()),
    )
    .await;
    let (Ok(ws), Some(who)) = (ws, who) else {
        return;
    };
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(crate::relay::write_batched(sink, rx));
    {
        let mut p = peers.lock().expect("echo relay lock");
        match &who {
            Role::Agent(id) => p.agents.insert(id.clone(), tx.clone()),
            Role::Customer { conv, .. } => p.customers.insert(conv.clone(), tx.clone()),
        };
    }
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(t) = msg else {
            if msg.is_close() {
                break;
            }
            continue;
        };
        match &who {
            Role::Customer { conv, agent } => {
                let Ok(m) = serde_json::from_str::<FromCustomer>(&t) else {
                    continue;
                };
                let out = json!({"conversation_id": conv, "text": m.text}).to_string();
                let to = peers
                    .lock()
                    .expect("echo relay lock")
                    .agents
                    .get(agent)
                    .cloned();
                if let Some(to) = to {
                    let _ = to.send(Message::Text(out.into()));
                }
            }
            Role::Agent(_) => {
                let Ok(m) = serde_json::from_str::<FromAgent>(&t) else {
                    continue;
                };
                let out = json!({"text": m.text}).to_string();
                let to = peers
                    .lock()
                    .expect("echo relay lock")
                    .customers
                    .get(m.conversation_id.as_ref())
                    .cloned();
                if let Some(to) = to {
                    let _ = to.send(Message::Text(out.into()));
                }
            }
        }
    }
    {
        let mut p = peers.lock().expect("echo relay lock");
        match &who {
            Role::Agent(id) => p.agents.remove(id),
            Role::Customer { conv, .. } => p.customers.remove(conv),
        };
    }
    drop(tx);
    let _ = writer.await;
}

/// The probe's counters, read at both ends of the measured window.
#[derive(Default)]
pub struct Probe {
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
    /// Customers connected and looping.
    pub running: AtomicU64,
    stop: AtomicBool,
}

impl Probe {
    /// Customers finish their round trip in flight and leave.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts `agents` agents, then `conversations` customers spread over them
/// (paced at `ramp` per second), each looping until [`Probe::stop`]. The
/// handle ends when every customer and agent has left.
pub fn drive(
    url: &str,
    conversations: usize,
    agents: usize,
    ramp: f64,
) -> Result<(Arc<Probe>, JoinHandle<()>), String> {
    let target = Target::parse(url)?;
    let agents = agents.max(1);
    let probe = Arc::new(Probe::default());
    let p = probe.clone();
    let handle = tokio::spawn(async move {
        let mut desks = Vec::with_capacity(agents);
        for a in 0..agents {
            let mut url = target.http("/a");
            url.set_scheme("ws").expect("http to ws");
            url.query_pairs_mut().append_pair("agent", &a.to_string());
            match net::connect_ws(&target, None, &url).await {
                Ok(ws) => desks.push(tokio::spawn(agent_loop(ws, p.clone()))),
                Err(e) => {
                    eprintln!("loadtest: echo probe: agent {a}: {}", e.detail);
                    p.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let pacer = net::Pacer::new(ramp);
        let mut customers = Vec::with_capacity(conversations);
        for c in 0..conversations {
            pacer.wait().await;
            let mut url = target.http("/c");
            url.set_scheme("ws").expect("http to ws");
            url.query_pairs_mut()
                .append_pair("conv", &c.to_string())
                .append_pair("agent", &(c % agents).to_string());
            let target = target.clone();
            let p = p.clone();
            customers.push(tokio::spawn(async move {
                match net::connect_ws(&target, None, &url).await {
                    Ok(ws) => {
                        if let Err(e) = customer_loop(ws, &p).await {
                            eprintln!("loadtest: echo probe: customer: {}", e.detail);
                            p.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        eprintln!("loadtest: echo probe: customer: {}", e.detail);
                        p.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for c in customers {
            let _ = c.await;
        }
        for d in desks {
            d.abort();
        }
    });
    Ok((probe, handle))
}

async fn customer_loop(mut ws: net::Ws, p: &Probe) -> Result<(), Failure> {
    p.running.fetch_add(1, Ordering::Relaxed);
    let frame = json!({"text": "lt"});
    let out = async {
        while !p.stop.load(Ordering::Relaxed) {
            net::send_json(&mut ws, &frame).await?;
            let reply = net::recv_json(&mut ws).await?;
            if reply["text"].as_str().is_none() {
                return Err(Failure::new(
                    "harness.bad_frame",
                    format!("echo relay: no text in {reply}"),
                ));
            }
            p.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    p.running.fetch_sub(1, Ordering::Relaxed);
    net::close_ws(ws).await;
    out
}

async fn agent_loop(mut ws: net::Ws, p: Arc<Probe>) {
    loop {
        let Ok(m) = net::recv_json(&mut ws).await else {
            return;
        };
        let Some(conv) = m["conversation_id"].as_str() else {
            p.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let reply = json!({"conversation_id": conv, "text": "re"});
        if net::send_json(&mut ws, &reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_path_and_query() {
        assert!(matches!(role("/a", "agent=7"), Some(Role::Agent(a)) if a == "7"));
        assert!(matches!(
            role("/c", "conv=3&agent=1"),
            Some(Role::Customer { conv, agent }) if conv == "3" && agent == "1"
        ));
        assert!(role("/c", "conv=3").is_none());
        assert!(role("/x", "agent=1").is_none());
    }

    #[tokio::test]
    async fn probe_loops_through_the_relay() {
        let listener = listen().expect("listen");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(accept(listener));
        let (probe, done) = drive(&format!("http://{addr}"), 10, 2, 1000.0).expect("probe starts");
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while probe.round_trips.load(Ordering::Relaxed) < 100 {
            assert!(tokio::time::Instant::now() < until, "no round trips");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        probe.stop();
        tokio::time::timeout(std::time::Duration::from_secs(10), done)
            .await
            .expect("customers leave")
            .expect("probe task");
        assert_eq!(probe.errors.load(Ordering::Relaxed), 0);
        assert_eq!(probe.running.load(Ordering::Relaxed), 0);
        server.abort();
    }
}

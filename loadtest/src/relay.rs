//! The baseline: a minimal chat relay in plain tokio + tokio-tungstenite, no
//! routing beyond "first agent with a free slot", no actors, no persistence of
//! history after assignment. It speaks just enough of Switchboard's JSON
//! protocol (hello/activity/ok, offered/accept/assigned, message/ack,
//! send/echo, end/ended, complete/completed, leave) that the harness's own
//! agents and customers drive it unchanged. It accepts any token; it has no
//! HTTP API (the harness makes up agents and sessions against it).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

use crate::net;

type Tx = mpsc::UnboundedSender<Message>;

struct AgentSlot {
    tx: Tx,
    free: u32,
    available: bool,
}

struct Conv {
    customer: Tx,
    agent: Option<String>,
    task_id: String,
    seq: u64,
    /// Messages before assignment, for the `task.assigned` history.
    history: Vec<Value>,
    offered: bool,
    ended: bool,
}

#[derive(Default)]
struct State {
    agents: HashMap<String, AgentSlot>,
    convs: HashMap<String, Conv>,
    /// task id → conversation id.
    tasks: HashMap<String, String>,
    queue: VecDeque<String>,
    next_id: u64,
    capacity: u32,
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    /// Offers queued conversations to agents with a free slot.
    fn dispatch(&mut self) {
        while let Some(conv_id) = self.queue.front().cloned() {
            let Some(agent_id) = self
                .agents
                .iter()
                .find(|(_, a)| a.available && a.free > 0)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            self.queue.pop_front();
            let Some(conv) = self.convs.get_mut(&conv_id) else {
                continue;
            };
            let agent = self.agents.get_mut(&agent_id).expect("agent listed");
            agent.free -= 1;
            conv.agent = Some(agent_id);
            conv.offered = true;
            let preview = conv
                .history
                .last()
                .map(|m| m["text"].clone())
                .unwrap_or(Value::Null);
            let _ = agent.tx.send(text(json!({
                "type": "task.offered",
                "task": {"id": conv.task_id, "conversation_id": conv_id, "channel": "webchat",
                         "customer": {"address": conv_id, "name": null},
                         "preview": preview, "state": "reserved"},
            })));
        }
    }

    fn message(&mut self, conv_id: &str, from: &str, text_: &str, cmid: Option<&str>) -> Value {
        let conv = self.convs.get_mut(conv_id).expect("conversation exists");
        conv.seq += 1;
        json!({"id": format!("m{}", conv.seq), "conversation_id": conv_id, "seq": conv.seq,
               "from": from, "text": text_, "attachments": [], "client_msg_id": cmid})
    }
}

/// A running relay.
pub struct Relay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the relay on a loopback port (`port` 0: any free one). `capacity` is
/// each agent's number of simultaneous conversations.
pub async fn start(port: u16, capacity: u32) -> Result<Relay, String> {
    // The same listen backlog as the broker's (tokio's bind would give 1,024).
    let listen = || -> std::io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
        socket.listen(4096)
    };
    let listener =
        listen().map_err(|e| format!("baseline relay: cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(Mutex::new(State {
        capacity,
        ..State::default()
    }));
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream, state.clone()));
                }
                // Out of file descriptors and the like: pause, then go on
                // accepting (the broker's accept loop does the same).
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    });
    Ok(Relay { addr, task })
}

/// A socket's writer: each frame queued for it, whatever else is queued at
/// the time written with it in one flush; the socket closed when the queue
/// ends. Shared by the relays.
pub async fn write_batched<S>(mut sink: S, mut rx: mpsc::UnboundedReceiver<Message>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// `--serve-relay`: the relay as a process of its own (the per-core mode
/// pins it to the targets' core). Prints `listening <port>`, then serves
/// until its stdin closes.
pub async fn serve_main(port: u16, capacity: u32) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    net::raise_nofile_limit()?;
    let relay = start(port, capacity).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", relay.addr.port()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    drop(relay);
    Ok(())
}

enum Who {
    Agent(String),
    Customer,
}

// The handshake callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut path = String::new();
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        |req: &Request, resp: Response| {
            path = req.uri().path().to_string();
            Ok(resp)
        },
        Some(net::ws_config()),
    )
    .await;
    let Ok(ws) = ws else {
        return;
    };
    let who = if let Some(rest) = path.strip_prefix("/v1/agents/") {
        Who::Agent(rest.trim_end_matches("/ws").to_string())
    } else {
        Who::Customer
    };
    let (sink, mut source) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(write_batched(sink, rx));
    // The customer's conversation, once the first message opened one.
    let mut conv_id: Option<String> = None;
    match &who {
        Who::Agent(id) => {
            let _ = tx.send(text(
                json!({"type": "hello", "agent": {"id": id}, "activity": "offline", "tasks": []}),
            ));
            let mut st = state.lock().expect("relay lock");
            let cap = st.capacity;
            st.agents.insert(
                id.clone(),
                AgentSlot {
                    tx: tx.clone(),
                    free: cap,
                    available: false,
                },
            );
        }
        Who::Customer => {
            let _ = tx.send(text(
                json!({"type": "history", "conversation_id": null, "messages": []}),
            ));
        }
    }
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(t) = msg else {
            if msg.is_close() {
                break;
            }
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        let mut st = state.lock().expect("relay lock");
        match &who {
            Who::Agent(id) => on_agent(&mut st, id, &tx, &v),
            Who::Customer => on_customer(&mut st, &mut conv_id, &tx, &v),
        }
    }
    {
        let mut st = state.lock().expect("relay lock");
        match &who {
            Who::Agent(id) => {
                st.agents.remove(id);
            }
            Who::Customer => {
                if let Some(c) = conv_id {
                    customer_gone(&mut st, &c);
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn on_agent(st: &mut State, id: &str, tx: &Tx, v: &Value) {
    let r = v["ref"].clone();
    match v["type"].as_str().unwrap_or_default() {
        "activity" => {
            if let Some(a) = st.agents.get_mut(id) {
                a.available = v["activity"] == "available";
            }
            let _ = tx.send(text(json!({"type": "ok", "ref": r})));
            st.dispatch();
        }
        "accept" => {
            let task_id = v["task_id"].as_str().unwrap_or_default();
            let Some(conv_id) = st.tasks.get(task_id).cloned() else {
                return;
            };
            let Some(conv) = st.convs.get_mut(&conv_id) else {
                return;
            };
            let history = std::mem::take(&mut conv.history);
            let _ = tx.send(text(json!({
                "type": "task.assigned",
                "task": {"id": task_id, "conversation_id": conv_id, "channel": "webchat",
                         "preview": history.last().map(|m| m["text"].clone()), "state": "assigned"},
                "history": history, "ref": r,
            })));
            let _ = conv.customer.send(text(
                json!({"type": "agent.joined", "conversation_id": conv_id, "agent": {"name": id}}),
            ));
        }
        "send" => {
            let conv_id = v["conversation_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !st.convs.contains_key(&conv_id) {
                return;
            }
            let mut m = st.message(
                &conv_id,
                "agent",
                v["text"].as_str().unwrap_or_default(),
                v["client_msg_id"].as_str(),
            );
            m["agent_id"] = json!(id);
            let conv = &st.convs[&conv_id];
            let ev = json!({"type": "message", "conversation_id": conv_id, "message": m});
            let _ = conv.customer.send(text(ev.clone()));
            let mut echo = ev;
            echo["ref"] = r;
            let _ = tx.send(text(echo));
        }
        "end" => {
            let conv_id = v["conversation_id"].as_str().unwrap_or_default();
            if let Some(conv) = st.convs.get_mut(conv_id) {
                conv.ended = true;
                let _ = conv.customer.send(text(
                    json!({"type": "conversation.ended", "conversation_id": conv_id}),
                ));
                let _ = tx.send(text(json!({"type": "conversation.ended", "conversation_id": conv_id, "task_id": conv.task_id, "ref": r})));
            }
        }
        "complete" => {
            let task_id = v["task_id"].as_str().unwrap_or_default().to_string();
            if let Some(conv_id) = st.tasks.remove(&task_id) {
                st.convs.remove(&conv_id);
                if let Some(a) = st.agents.get_mut(id) {
                    a.free += 1;
                }
                let _ = tx.send(text(json!({"type": "task.completed", "task_id": task_id, "conversation_id": conv_id, "ref": r})));
                st.dispatch();
            }
        }
        "reject" => {
            let _ = tx.send(text(json!({"type": "ok", "ref": r})));
        }
        _ => {}
    }
}

fn on_customer(st: &mut State, conv_id: &mut Option<String>, tx: &Tx, v: &Value) {
    match v["type"].as_str().unwrap_or_default() {
        "message" => {
            let new = match conv_id {
                Some(c) if st.convs.contains_key(c.as_str()) => false,
                _ => {
                    let c = st.id("cv");
                    let task_id = st.id("tk");
                    st.convs.insert(
                        c.clone(),
                        Conv {
                            customer: tx.clone(),
                            agent: None,
                            task_id: task_id.clone(),
                            seq: 0,
                            history: Vec::new(),
                            offered: false,
                            ended: false,
                        },
                    );
                    st.tasks.insert(task_id, c.clone());
                    *conv_id = Some(c);
                    true
                }
            };
            let c = conv_id.clone().expect("set above");
            let cmid = v["client_msg_id"].as_str();
            let m = st.message(&c, "customer", v["text"].as_str().unwrap_or_default(), cmid);
            let _ = tx.send(text(
                json!({"type": "ack", "conversation_id": c, "client_msg_id": cmid,
                                        "message_id": m["id"], "seq": m["seq"], "ref": v["ref"]}),
            ));
            let ev = json!({"type": "message", "conversation_id": c, "message": m});
            let _ = tx.send(text(ev.clone()));
            let conv = st.convs.get_mut(&c).expect("exists");
            if !conv.offered {
                conv.history.push(m);
            } else if let Some(agent) = conv.agent.clone() {
                if conv.history.is_empty() {
                    if let Some(a) = st.agents.get(&agent) {
                        let _ = a.tx.send(text(ev));
                    }
                } else {
                    // Offered but not accepted yet: goes out with the history.
                    conv.history.push(m);
                }
            }
            if new {
                st.queue.push_back(c);
                st.dispatch();
            }
        }
        "leave" => {
            if let Some(c) = conv_id.take() {
                customer_gone(st, &c);
            }
        }
        _ => {}
    }
}

/// The customer left or disconnected: a conversation no agent holds goes
/// away; one an agent holds ends (the agent still completes it).
fn customer_gone(st: &mut State, conv_id: &str) {
    let Some(conv) = st.convs.get_mut(conv_id) else {
        return;
    };
    match conv.agent.clone() {
        None => {
            let task_id = conv.task_id.clone();
            st.convs.remove(conv_id);
            st.tasks.remove(&task_id);
            st.queue.retain(|c| c != conv_id);
        }
        Some(agent) if !conv.ended => {
            conv.ended = true;
            let ev = json!({"type": "conversation.ended", "conversation_id": conv_id, "task_id": conv.task_id});
            if let Some(a) = st.agents.get(&agent) {
                let _ = a.tx.send(text(ev));
            }
        }
        Some(_) => {}
    }
}

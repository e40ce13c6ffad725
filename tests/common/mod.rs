//! Shared helpers for the integration tests: a running server, HTTP calls and a
//! small WebSocket client that keeps frames it was not asked for.
#![allow(dead_code)]

pub mod cluster;
pub mod load;
pub mod nats;
pub mod process;

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::{server, Config};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long we listen when asserting that something does *not* happen.
pub const QUIET: Duration = Duration::from_millis(400);

static REFS: AtomicU64 = AtomicU64::new(1);

/// A fresh `ref` string for a WebSocket command.
pub fn next_ref(prefix: &str) -> String {
    format!("{prefix}-{}", REFS.fetch_add(1, Ordering::Relaxed))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A test configuration with short, test-friendly defaults.
pub fn test_config() -> Config {
    Config::for_tests()
}

// ---------------------------------------------------------------------------
// Server + HTTP
// ---------------------------------------------------------------------------

pub struct Harness {
    pub base: String,
    pub ws_base: String,
    pub admin: String,
    pub http: reqwest::Client,
    // Declared last: dropped (and so stopped) after everything else in here.
    _srv: Box<dyn Any + Send + Sync>,
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub token: String,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub id: String,
    pub token: String,
    pub name: String,
}

/// Response of an HTTP call: status and the body parsed as JSON (Null when empty
/// or not JSON; the raw text is kept too).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
}

pub fn start() -> Harness {
    start_with(test_config())
}

pub fn start_with(cfg: Config) -> Harness {
    let srv = server::spawn(cfg).expect("server starts");
    let base = srv.base_url();
    let ws_base = srv.ws_url();
    let admin = srv.admin_token.clone();
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("http client");
    Harness {
        base,
        ws_base,
        admin,
        http,
        _srv: Box::new(srv),
    }
}

impl Harness {
    /// A client of a broker running elsewhere (a child process) at `base`
    /// (`http://host:port`).
    pub fn external(base: &str, admin: &str) -> Harness {
        Harness {
            base: base.to_owned(),
            ws_base: base.replacen("http://", "ws://", 1),
            admin: admin.to_owned(),
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .expect("http client"),
            _srv: Box::new(()),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    /// Generic JSON request. `token` is sent as a Bearer header when given.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        into_resp(resp).await
    }

    /// Request with a raw body and explicit content type.
    pub async fn request_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        into_resp(resp).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        self.get(path, Some(self.admin.as_str())).await
    }

    /// GET that must answer 200; returns the JSON body.
    pub async fn admin_get_ok(&self, path: &str) -> Value {
        let r = self.admin_get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.body
    }

    pub async fn create_agent(&self, id: &str, webchat_capacity: u64, skills: &[&str]) -> Agent {
        let name = format!("Agent {id}");
        let body = json!({
            "id": id,
            "name": name,
            "capacity": {"webchat": webchat_capacity, "sms": 1, "whatsapp": 1, "messenger": 1},
            "skills": skills,
        });
        let r = self
            .request(
                reqwest::Method::POST,
                "/v1/agents",
                Some(self.admin.as_str()),
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 201, "create agent {id}: {}", r.text);
        let token = r.body["token"]
            .as_str()
            .expect("agent token in create response")
            .to_string();
        Agent {
            id: id.to_string(),
            name,
            token,
        }
    }

    pub async fn agent_view(&self, id: &str) -> Value {
        self.admin_get_ok(&format!("/v1/agents/{id}")).await
    }

    /// Polls `GET /v1/agents/{id}` until `pred` holds or the deadline passes.
    pub async fn wait_agent(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.agent_view(id).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "agent {id}: timed out waiting for {what}; last view {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn create_session(&self, name: &str, skills: Option<&[&str]>) -> Session {
        let mut body = json!({ "name": name });
        if let Some(s) = skills {
            // Skills come from the site's backend, signed (the test config's secret).
            let context = json!({"skills": s, "exp": unix_now() + 600}).to_string();
            body["context_signature"] = json!(switchboard::channel::prechat::sign(
                switchboard::config::TEST_CONTEXT_SECRET,
                &context
            ));
            body["context"] = json!(context);
        }
        let r = self
            .request(
                reqwest::Method::POST,
                "/v1/webchat/sessions",
                None,
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 201, "create webchat session: {}", r.text);
        Session {
            id: r.body["session_id"]
                .as_str()
                .expect("session_id")
                .to_string(),
            token: r.body["token"].as_str().expect("session token").to_string(),
            name: name.to_string(),
        }
    }

    pub async fn conversation(&self, id: &str) -> Value {
        self.admin_get_ok(&format!("/v1/conversations/{id}")).await
    }

    pub async fn messages(&self, conversation_id: &str) -> Value {
        self.admin_get_ok(&format!(
            "/v1/conversations/{conversation_id}/messages?limit=1000"
        ))
        .await
    }

    /// Every message of a conversation, read forward in pages of 1,000.
    pub async fn all_messages(&self, conversation_id: &str) -> Value {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .admin_get_ok(&format!(
                    "/v1/conversations/{conversation_id}/messages?after_seq={after}&limit=1000"
                ))
                .await;
            let got = page["messages"].as_array().cloned().unwrap_or_default();
            if let Some(last) = got.last() {
                after = last["seq"].as_u64().expect("seq");
            }
            all.extend(got);
            if page["has_more"] != true {
                return Value::Array(all);
            }
        }
    }

    /// Polls the conversation until `pred` holds.
    pub async fn wait_conversation(
        &self,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.conversation(id).await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "conversation {id}: timed out waiting for {what}; last {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // -- WebSockets ---------------------------------------------------------

    pub fn agent_ws_url(&self, agent: &Agent) -> String {
        format!(
            "{}/v1/agents/{}/ws?token={}",
            self.ws_base, agent.id, agent.token
        )
    }

    pub fn customer_ws_url(&self, session: &Session) -> String {
        format!("{}/v1/webchat/ws?token={}", self.ws_base, session.token)
    }

    /// Connects an agent desktop and returns the socket and its `hello`.
    pub async fn connect_agent(&self, agent: &Agent) -> (Ws, Value) {
        let mut ws = Ws::connect(&self.agent_ws_url(agent)).await;
        let hello = ws.recv_next().await;
        assert_eq!(hello["type"], "hello", "first agent frame: {hello}");
        (ws, hello)
    }

    /// Connects an agent and makes it `available`.
    pub async fn agent_online(&self, agent: &Agent) -> Ws {
        let (mut ws, _hello) = self.connect_agent(agent).await;
        ws.set_activity("available").await;
        ws
    }

    /// Connects a webchat customer; returns the socket and its `history` frame.
    pub async fn connect_customer(&self, session: &Session) -> (Ws, Value) {
        let mut ws = Ws::connect(&self.customer_ws_url(session)).await;
        let history = ws.recv_type("history").await;
        (ws, history)
    }

    /// Creates a webchat session, connects it and sends a first message.
    /// Returns the session, socket and the ack.
    pub async fn customer_with_message(&self, name: &str, text: &str) -> (Session, Ws, Value) {
        let s = self.create_session(name, None).await;
        let (mut ws, _h) = self.connect_customer(&s).await;
        let ack = ws.say(text).await;
        (s, ws, ack)
    }
}

async fn into_resp(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, body, text }
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

pub type RawWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON WebSocket client. Frames read while looking for something else are
/// kept in `pending` and handed out by later receives, oldest first, so that no
/// event is lost because a test was waiting for another one.
pub struct Ws {
    pub inner: RawWs,
    pub pending: VecDeque<Value>,
    /// Set once a close frame (code, reason) or the end of the stream was read.
    pub closed: Option<(u16, String)>,
    /// Every JSON frame ever read, for failure messages.
    pub seen: Vec<String>,
}

/// Tries a WebSocket handshake; returns the HTTP status on a refused upgrade.
pub async fn try_connect(url: &str) -> Result<Ws, u16> {
    // No client-side size limits: a resync history can be large.
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
    match tokio::time::timeout(TIMEOUT, connect).await {
        Err(_) => panic!("connect {url}: timed out"),
        Ok(Ok((inner, _resp))) => Ok(Ws {
            inner,
            pending: VecDeque::new(),
            closed: None,
            seen: Vec::new(),
        }),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("connect {url}: {e}"),
    }
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        match try_connect(url).await {
            Ok(ws) => ws,
            Err(status) => panic!("connect {url}: HTTP {status}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: String) {
        tokio::time::timeout(TIMEOUT, self.inner.send(Message::text(s)))
            .await
            .expect("ws send timed out")
            .expect("ws send");
    }

    fn summary(&self) -> String {
        let tail: Vec<&String> = self.seen.iter().rev().take(12).collect();
        let tail: Vec<String> = tail
            .into_iter()
            .rev()
            .map(|s| {
                if s.len() > 300 {
                    format!("{}…", &s[..s.floor_char_boundary_compat(300)])
                } else {
                    s.clone()
                }
            })
            .collect();
        format!(
            "last frames seen: [{}]; closed: {:?}",
            tail.join(", "),
            self.closed
        )
    }

    /// Reads one JSON frame from the socket (skipping ping/pong), or None when
    /// the deadline passes. Panics when the socket closes.
    async fn read_frame(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(c) = &self.closed {
                panic!("socket closed ({c:?}) while waiting; {}", self.summary());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let next = match tokio::time::timeout(deadline - now, self.inner.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            match next {
                None => self.closed = Some((1006, "stream ended".into())),
                Some(Err(e)) => self.closed = Some((1006, format!("error: {e}"))),
                Some(Ok(Message::Text(t))) => {
                    self.seen.push(t.as_str().to_string());
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("non-JSON text frame {t:?}: {e}"));
                    return Some(v);
                }
                Some(Ok(Message::Close(f))) => {
                    self.closed = Some(match f {
                        Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
                        None => (1005, String::new()),
                    })
                }
                Some(Ok(Message::Binary(b))) => panic!("unexpected binary frame {b:?}"),
                Some(Ok(_)) => {} // ping / pong / raw frame
            }
        }
    }

    /// The next frame (kept or new) within `within`; None on timeout or
    /// once the socket is closed (never panics: for clients of a broker
    /// that may be killed).
    pub async fn try_recv_within(&mut self, within: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        let deadline = Instant::now() + within;
        while self.closed.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match tokio::time::timeout(deadline - now, self.inner.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => self.closed = Some((1006, "stream ended".into())),
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.seen.push(t.as_str().to_string());
                    if let Ok(v) = serde_json::from_str(t.as_str()) {
                        return Some(v);
                    }
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.closed = Some(match f {
                        Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
                        None => (1005, String::new()),
                    })
                }
                Ok(Some(Ok(_))) => {}
            }
        }
        None
    }

    /// Send a frame; false if the socket is gone (never panics).
    pub async fn try_send(&mut self, v: Value) -> bool {
        matches!(
            tokio::time::timeout(TIMEOUT, self.inner.send(Message::text(v.to_string()))).await,
            Ok(Ok(()))
        )
    }

    /// The next frame of any type.
    pub async fn recv_next(&mut self) -> Value {
        self.recv_where("any frame", |_| true).await
    }

    /// The first frame (kept or new) matching `pred`; others are kept.
    pub async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.recv_where_within(what, TIMEOUT, pred).await
    }

    pub async fn recv_where_within(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index in range");
        }
        let deadline = Instant::now() + within;
        loop {
            match self.read_frame(deadline).await {
                Some(v) if pred(&v) => return v,
                Some(v) => self.pending.push_back(v),
                None => panic!("timed out waiting for {what}; {}", self.summary()),
            }
        }
    }

    /// [`Ws::recv_where_within`], or None when nothing matches in time.
    pub async fn try_recv_where_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + within;
        loop {
            match self.read_frame(deadline).await {
                Some(v) if pred(&v) => return Some(v),
                Some(v) => self.pending.push_back(v),
                None => return None,
            }
        }
    }

    /// First frame with the given `type`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        self.recv_where(&format!("a `{ty}` frame"), |v| v["type"] == ty)
            .await
    }

    /// First frame carrying the given `ref` (the answer or an error).
    pub async fn recv_ref(&mut self, r: &str) -> Value {
        self.recv_where(&format!("a frame with ref {r:?}"), |v| v["ref"] == r)
            .await
    }

    /// First `error` frame with the given `ref`; asserts its code.
    pub async fn expect_error(&mut self, r: &str, code: &str) -> Value {
        let v = self.recv_ref(r).await;
        assert_eq!(
            v["type"], "error",
            "expected error {code} for ref {r}, got {v}"
        );
        assert_eq!(v["code"], code, "error code for ref {r}: {v}");
        v
    }

    /// Asserts that no frame (kept or new) matches `pred` during `within`.
    pub async fn expect_none(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        if let Some(v) = self.pending.iter().find(|v| pred(v)) {
            panic!("unexpected {what}: {v}");
        }
        let deadline = Instant::now() + within;
        while let Some(v) = self.read_frame(deadline).await {
            if pred(&v) {
                panic!("unexpected {what}: {v}");
            }
            self.pending.push_back(v);
        }
    }

    /// Reads until the server's close frame; returns (code, reason).
    pub async fn recv_close(&mut self) -> (u16, String) {
        self.recv_close_within(TIMEOUT).await
    }

    pub async fn recv_close_within(&mut self, within: Duration) -> (u16, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = &self.closed {
                return c.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for close; {}",
                self.summary()
            );
            match tokio::time::timeout(deadline - now, self.inner.next()).await {
                Err(_) => panic!("timed out waiting for close; {}", self.summary()),
                Ok(None) => self.closed = Some((1006, "stream ended".into())),
                Ok(Some(Err(e))) => self.closed = Some((1006, format!("error: {e}"))),
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.closed = Some(match f {
                        Some(f) => (u16::from(f.code), f.reason.as_str().to_string()),
                        None => (1005, String::new()),
                    })
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.seen.push(t.as_str().to_string());
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        self.pending.push_back(v);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends a command with a fresh ref and returns the frame answering it.
    pub async fn call(&mut self, mut cmd: Value) -> Value {
        let r = next_ref(cmd["type"].as_str().unwrap_or("cmd"));
        cmd["ref"] = json!(r);
        self.send(cmd).await;
        self.recv_ref(&r).await
    }

    /// Sends a command with a fresh ref and asserts it fails with `code`.
    pub async fn call_err(&mut self, cmd: Value, code: &str) -> Value {
        let v = self.call(cmd.clone()).await;
        assert_eq!(
            v["type"], "error",
            "expected error {code} for {cmd}, got {v}"
        );
        assert_eq!(v["code"], code, "error code for {cmd}: {v}");
        v
    }

    // -- agent commands -------------------------------------------------------

    pub async fn set_activity(&mut self, activity: &str) {
        let v = self
            .call(json!({"type": "activity", "activity": activity}))
            .await;
        assert_eq!(v["type"], "ok", "activity {activity}: {v}");
    }

    /// Waits for the next offer and returns it.
    pub async fn offer(&mut self) -> Value {
        let v = self.recv_type("task.offered").await;
        assert!(v["task"]["id"].is_string(), "offer without task id: {v}");
        v
    }

    /// Waits for the offer of the given conversation.
    pub async fn offer_for(&mut self, conversation_id: &str) -> Value {
        self.recv_where(&format!("task.offered for {conversation_id}"), |v| {
            v["type"] == "task.offered" && v["task"]["conversation_id"] == conversation_id
        })
        .await
    }

    /// Accepts a task; returns the `task.assigned` answering it.
    pub async fn accept(&mut self, task_id: &str) -> Value {
        let v = self
            .call(json!({"type": "accept", "task_id": task_id}))
            .await;
        assert_eq!(v["type"], "task.assigned", "accept {task_id}: {v}");
        assert_eq!(v["task"]["id"], task_id, "accepted task: {v}");
        v
    }

    /// Waits for an offer and accepts it; returns (offer, task.assigned).
    pub async fn take_offer(&mut self) -> (Value, Value) {
        let offer = self.offer().await;
        let tid = offer["task"]["id"].as_str().expect("task id").to_string();
        let assigned = self.accept(&tid).await;
        (offer, assigned)
    }

    pub async fn reject(&mut self, task_id: &str) {
        let v = self
            .call(json!({"type": "reject", "task_id": task_id}))
            .await;
        assert_eq!(v["type"], "ok", "reject {task_id}: {v}");
    }

    /// Agent `send`; returns the agent's own echo of the message.
    pub async fn agent_send(
        &mut self,
        conversation_id: &str,
        text: &str,
        client_msg_id: &str,
    ) -> Value {
        let v = self
            .call(json!({
                "type": "send",
                "conversation_id": conversation_id,
                "text": text,
                "client_msg_id": client_msg_id,
            }))
            .await;
        assert_eq!(v["type"], "message", "send echo: {v}");
        v
    }

    pub async fn end(&mut self, conversation_id: &str) -> Value {
        let v = self
            .call(json!({"type": "end", "conversation_id": conversation_id}))
            .await;
        assert_eq!(
            v["type"], "conversation.ended",
            "end {conversation_id}: {v}"
        );
        v
    }

    pub async fn complete(&mut self, task_id: &str, disposition: &str, notes: &str) -> Value {
        let v = self
            .call(json!({
                "type": "complete",
                "task_id": task_id,
                "disposition": disposition,
                "notes": notes,
            }))
            .await;
        assert_eq!(v["type"], "task.completed", "complete {task_id}: {v}");
        v
    }

    // -- customer commands ----------------------------------------------------

    /// Customer message with a generated client_msg_id; returns the ack.
    pub async fn say(&mut self, text: &str) -> Value {
        let cmid = next_ref("c");
        self.say_with_id(text, &cmid).await
    }

    pub async fn say_with_id(&mut self, text: &str, client_msg_id: &str) -> Value {
        let r = next_ref("say");
        self.send(
            json!({"type": "message", "text": text, "client_msg_id": client_msg_id, "ref": r}),
        )
        .await;
        let ack = self
            .recv_where(&format!("ack for {client_msg_id}"), |v| {
                (v["type"] == "ack" && v["client_msg_id"] == client_msg_id)
                    || (v["type"] == "error" && v["ref"] == r.as_str())
            })
            .await;
        assert_eq!(
            ack["type"], "ack",
            "customer message {client_msg_id}: {ack}"
        );
        ack
    }

    /// The next `message` event whose message comes from `from`.
    pub async fn recv_message_from(&mut self, from: &str) -> Value {
        self.recv_where(&format!("message from {from}"), |v| {
            v["type"] == "message" && v["message"]["from"] == from
        })
        .await
    }

    /// The `message` event carrying the given text.
    pub async fn recv_message_text(&mut self, text: &str) -> Value {
        self.recv_where(&format!("message {text:?}"), |v| {
            v["type"] == "message" && v["message"]["text"] == text
        })
        .await
    }
}

/// `str::floor_char_boundary` is unstable; a tiny stand-in.
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        if i >= self.len() {
            return self.len();
        }
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// `seq` values of a list of messages.
pub fn seqs(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("messages array expected: {messages}"))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or_else(|| panic!("seq in {m}")))
        .collect()
}

/// Texts of a list of messages.
pub fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap_or_else(|| panic!("messages array expected: {messages}"))
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asserts seq runs 1..=n with no gaps.
pub fn assert_gap_free(messages: &Value) {
    let s = seqs(messages);
    let want: Vec<u64> = (1..=s.len() as u64).collect();
    assert_eq!(s, want, "seq must run 1..n without gaps: {messages}");
}

pub fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("string expected, got {v}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// Health under attack: `/healthz`, a normal life cycle, memory
// ---------------------------------------------------------------------------

/// How fast `/healthz` must answer while an attack runs.
pub const HEALTHY: Duration = Duration::from_millis(100);

/// Resident memory of this process (the broker runs in it), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Asserts the process grew by less than `bound_kib` since `before` (a
/// [`rss_kib`] reading).
pub fn assert_rss_grew_less_than(before: u64, bound_kib: u64, what: &str) {
    let after = rss_kib();
    assert!(
        after.saturating_sub(before) < bound_kib,
        "{what}: RSS grew from {before} KiB to {after} KiB (bound: {bound_kib} KiB more)"
    );
}

/// `/healthz` from a fresh connection answers 200 within [`HEALTHY`].
pub async fn assert_healthy(h: &Harness, during: &str) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(TIMEOUT)
        .build()
        .expect("client");
    let started = Instant::now();
    let r = client
        .get(h.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("/healthz during {during}: {e}"));
    let took = started.elapsed();
    assert_eq!(r.status().as_u16(), 200, "/healthz during {during}");
    assert!(
        took < HEALTHY,
        "/healthz took {took:?} during {during} (bound {HEALTHY:?})"
    );
}

/// Runs `attack` while `/healthz` is probed every 50 ms (at least once),
/// each probe held to [`HEALTHY`]; returns what the attack returns.
pub async fn probed<T>(h: &Harness, during: &str, attack: impl Future<Output = T>) -> T {
    let done = std::sync::atomic::AtomicBool::new(false);
    let probes = async {
        loop {
            assert_healthy(h, during).await;
            if done.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let attack = async {
        let out = attack.await;
        done.store(true, Ordering::Relaxed);
        out
    };
    let (out, ()) = tokio::join!(attack, probes);
    out
}

/// `POST /v1/webchat/sessions` for a customer of `queue`, as it answered.
pub async fn session_in(h: &Harness, name: &str, queue: &str) -> Resp {
    h.request(
        reqwest::Method::POST,
        "/v1/webchat/sessions",
        None,
        Some(&json!({"name": name, "queue": queue})),
    )
    .await
}

/// A customer of `queue` who has written once: the session, its socket and
/// the conversation id.
pub async fn customer_in(h: &Harness, name: &str, queue: &str) -> (Session, Ws, String) {
    let r = session_in(h, name, queue).await;
    assert_eq!(r.status, 201, "session in {queue}: {}", r.text);
    let session = Session {
        id: s(&r.body["session_id"]),
        token: s(&r.body["token"]),
        name: name.into(),
    };
    let (mut ws, _) = h.connect_customer(&session).await;
    let ack = ws.say(&format!("hello from {name}")).await;
    (session, ws, s(&ack["conversation_id"]))
}

/// The rest of a normal conversation once `desk` holds `task`: a reply
/// each way, ended and wrapped up.
async fn reply_end_complete(desk: &mut Ws, customer: &mut Ws, conversation: &str, task: &str) {
    desk.agent_send(conversation, "Happy to help", &next_ref("a"))
        .await;
    customer.recv_message_text("Happy to help").await;
    customer.say("Thanks!").await;
    desk.recv_message_text("Thanks!").await;
    desk.end(conversation).await;
    desk.complete(task, "resolved", "").await;
}

/// A normal customer's whole conversation with `desk`, from 127.0.0.1:
/// greeting, offer taken, a reply each way, ended and wrapped up.
pub async fn life_cycle(h: &Harness, desk: &mut Ws, name: &str) {
    let session = h.create_session(name, None).await;
    let (mut customer, _history) = h.connect_customer(&session).await;
    let ack = customer.say("Hello, I need help with my order").await;
    let conversation = ack["conversation_id"]
        .as_str()
        .expect("conversation")
        .to_owned();
    let (offer, _assigned) = desk.take_offer().await;
    let task = offer["task"]["id"].as_str().expect("task id").to_owned();
    reply_end_complete(desk, &mut customer, &conversation, &task).await;
}

/// The skill that routes [`life_cycle_on_own_desk`]'s customer to its desk.
const CHECK_SKILL: &str = "health-check";

/// A normal life cycle on a desk of its own, beside whatever desks a test
/// has: the customer asks (with a signed context) for a skill only that
/// desk has, and the desk takes a break once it holds the conversation, so
/// it is offered nothing of the test's. Needs the test configuration's
/// context secret.
pub async fn life_cycle_on_own_desk(h: &Harness, during: &str) {
    let id = next_ref("check-desk");
    let agent = h.create_agent(&id, 1, &[CHECK_SKILL]).await;
    let mut desk = h.agent_online(&agent).await;
    let session = h.create_session("Casey", Some(&[CHECK_SKILL])).await;
    let (mut customer, _history) = h.connect_customer(&session).await;
    let ack = customer.say("Hello, I need help with my order").await;
    let conversation = s(&ack["conversation_id"]);
    let offer = desk.offer().await;
    assert_eq!(
        offer["task"]["conversation_id"],
        conversation.as_str(),
        "the check desk was offered another conversation during {during}: {offer}"
    );
    let task = s(&offer["task"]["id"]);
    desk.accept(&task).await;
    desk.set_activity("break").await;
    reply_end_complete(&mut desk, &mut customer, &conversation, &task).await;
}

/// What an attack test checks around its attack: memory read before it,
/// then [`Vitals::check`] (healthy, a life cycle completes) and
/// [`Vitals::assert_memory`] (growth under a stated bound).
pub struct Vitals {
    rss_before: u64,
    bound_kib: u64,
    during: String,
}

impl Vitals {
    /// Reads the memory before `during` (the attack's name); `bound_kib` is
    /// how much the process may grow until [`Vitals::assert_memory`].
    pub fn before(during: &str, bound_kib: u64) -> Self {
        Vitals {
            rss_before: rss_kib(),
            bound_kib,
            during: during.to_owned(),
        }
    }

    /// `/healthz` within [`HEALTHY`], a whole customer/agent life cycle on a
    /// desk of its own, `/healthz` again.
    pub async fn check(&self, h: &Harness) {
        assert_healthy(h, &self.during).await;
        life_cycle_on_own_desk(h, &self.during).await;
        assert_healthy(h, &self.during).await;
    }

    /// The process grew by less than the stated bound since [`Vitals::before`].
    pub fn assert_memory(&self) {
        assert_rss_grew_less_than(self.rss_before, self.bound_kib, &self.during);
    }
}

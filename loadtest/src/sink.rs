//! The provider sink: an HTTP/1.1 server on loopback that plays Twilio's send
//! API (`POST /2010-04-01/Accounts/{sid}/Messages.json` → `201 {"sid":…}`,
//! Basic auth) and the WhatsApp Cloud API's (`POST
//! /{version}/{phone_number_id}/messages` → `200 {"messages":[{"id":"wamid…"}]}`,
//! Bearer token), hands each reply to the customer whose number is its `To` /
//! `to`, and optionally posts signed status callbacks (`sent`, `delivered`)
//! back to the broker so agents see `message.status`: Twilio's form to the
//! `StatusCallback` URL of the send, WhatsApp's `statuses` webhook to
//! `/v1/channels/whatsapp/webhook`. The two APIs' paths do not collide: one
//! listener serves both, or two when their base URLs name different ports.
//!
//! One sink per process, kept across runs: the broker's connection pool keeps
//! its connections to the sink alive between runs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::dist::Dist;
use crate::meta::{self, WhatsappCfg};
use crate::net::Target;
use crate::report::now_nanos;
use crate::twilio::{self, TwilioCfg};

/// Mixed into WhatsApp message ids so they differ from Twilio's sids.
const WAMID_SALT: u64 = 0x5741_5741_0000_0000;

/// An outbound SMS or WhatsApp message as the sink received it.
#[derive(Debug, Clone)]
pub struct SinkMsg {
    pub body: String,
    /// [`now_nanos`] at receipt.
    pub at: u64,
}

/// One provider API's counts.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    delivered_to_customer: AtomicU64,
    unmatched: AtomicU64,
    bad_auth: AtomicU64,
    bad_request: AtomicU64,
    callbacks_ok: AtomicU64,
    callback_errors: AtomicU64,
}

impl Counts {
    fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn all(&self) -> [&AtomicU64; 7] {
        [
            &self.requests,
            &self.delivered_to_customer,
            &self.unmatched,
            &self.bad_auth,
            &self.bad_request,
            &self.callbacks_ok,
            &self.callback_errors,
        ]
    }

    /// The figures by name, each name after `prefix`.
    fn figures(&self, prefix: &str, m: &mut BTreeMap<String, u64>) {
        const NAMES: [&str; 7] = [
            "requests",
            "delivered_to_customer",
            "unmatched",
            "bad_auth",
            "bad_request",
            "callbacks_ok",
            "callback_errors",
        ];
        for (name, c) in NAMES.iter().zip(self.all()) {
            m.insert(format!("{prefix}{name}"), c.load(Ordering::Relaxed));
        }
    }
}

/// What the sink needs to post status callbacks.
pub struct Callbacks {
    pub target: Target,
    pub statuses: Vec<String>,
    pub delay: Dist,
    pub client: reqwest::Client,
}

/// Prefix of the WhatsApp (Graph API) figures in [`Sink::figures`].
pub const WHATSAPP_PREFIX: &str = "whatsapp_";

pub struct Sink {
    pub cfg: TwilioCfg,
    pub wa: WhatsappCfg,
    /// The Twilio API's listener.
    pub addr: SocketAddr,
    /// The Graph API's listener (`addr` when both bases share host and port).
    pub graph_addr: SocketAddr,
    registry: Mutex<HashMap<String, mpsc::UnboundedSender<SinkMsg>>>,
    counts: Counts,
    wa_counts: Counts,
    callbacks: Mutex<Option<Arc<Callbacks>>>,
    samples: Mutex<Vec<String>>,
    next_sid: AtomicU64,
    salt: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Sink {
    /// Binds the sink at `cfg.api_base` and `wa.graph_base` (loopback only;
    /// one listener when they name the same address) and serves it.
    pub async fn start(cfg: TwilioCfg, wa: WhatsappCfg) -> Result<Arc<Sink>, String> {
        let api = Target::parse(&cfg.api_base).map_err(|e| format!("--twilio-api-base: {e}"))?;
        let graph = Target::parse(&wa.graph_base).map_err(|e| format!("--graph-api-base: {e}"))?;
        let bind = |at: SocketAddr| async move {
            let listener = TcpListener::bind(at)
                .await
                .map_err(|e| format!("provider sink: cannot listen on {at}: {e}"))?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("provider sink: {e}"))?;
            Ok::<_, String>((listener, addr))
        };
        let (listener, addr) = bind(api.addr).await?;
        let (graph_listener, graph_addr) = if graph.addr == api.addr {
            (None, addr)
        } else {
            let (l, a) = bind(graph.addr).await?;
            (Some(l), a)
        };
        let sink = Arc::new(Sink {
            cfg,
            wa,
            addr,
            graph_addr,
            registry: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            wa_counts: Counts::default(),
            callbacks: Mutex::new(None),
            samples: Mutex::new(Vec::new()),
            next_sid: AtomicU64::new(0),
            salt: now_nanos(),
        });
        for l in std::iter::once(listener).chain(graph_listener) {
            tokio::spawn(serve(l, sink.clone()));
        }
        Ok(sink)
    }

    /// Sets (or clears) the status callbacks for the coming run and resets the
    /// counters.
    pub fn begin_run(&self, callbacks: Option<Callbacks>) {
        *self.callbacks.lock().expect("sink lock") = callbacks.map(Arc::new);
        self.counts.reset();
        self.wa_counts.reset();
        self.samples.lock().expect("sink lock").clear();
    }

    /// The sink's figures for the run (Twilio's by their names, WhatsApp's
    /// after [`WHATSAPP_PREFIX`]), and the first problems it saw.
    pub fn figures(&self) -> (BTreeMap<String, u64>, Vec<String>) {
        let mut m = BTreeMap::new();
        self.counts.figures("", &mut m);
        self.wa_counts.figures(WHATSAPP_PREFIX, &mut m);
        (m, self.samples.lock().expect("sink lock").clone())
    }

    fn problem(&self, what: String) {
        let mut s = self.samples.lock().expect("sink lock");
        if s.len() < 10 {
            s.push(what);
        }
    }

    /// Replies to `number` go to the returned receiver until [`Sink::unregister`].
    pub fn register(&self, number: &str) -> mpsc::UnboundedReceiver<SinkMsg> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.registry
            .lock()
            .expect("sink lock")
            .insert(number.to_string(), tx);
        rx
    }

    pub fn unregister(&self, number: &str) {
        self.registry.lock().expect("sink lock").remove(number);
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == Method::POST
            && meta::is_send_path(req.uri().path(), &self.wa.phone_number_id)
        {
            return self.handle_graph(req).await;
        }
        if !req.uri().path().starts_with("/2010-04-01/") {
            // Not Twilio's: a Graph call the sink does not play (another
            // phone number id, say). Answered as the Graph API would.
            bump(&self.wa_counts.bad_request);
            self.problem(format!(
                "whatsapp: {} {} is not the send API of phone number id {}",
                req.method(),
                req.uri().path(),
                self.wa.phone_number_id
            ));
            return json_response(
                StatusCode::BAD_REQUEST,
                meta::graph_error(
                    100,
                    "GraphMethodException",
                    "Unsupported post request. Object does not exist.",
                )
                .to_string(),
            );
        }
        self.handle_twilio(req).await
    }

    /// Hands `text` to the customer `to` waits with; false when none does.
    /// Posts one status callback to the broker and counts it in `counts`; a
    /// failure is noted as a problem and ends that message's callbacks (false).
    async fn callback(&self, counts: &Counts, what: &str, req: reqwest::RequestBuilder) -> bool {
        match crate::net::send_checked(req, what).await {
            Ok(_) => {
                bump(&counts.callbacks_ok);
                true
            }
            Err(f) => {
                bump(&counts.callback_errors);
                self.problem(format!("{what} failed: {f}"));
                false
            }
        }
    }

    fn deliver(&self, to: &str, text: &str, at: u64) -> bool {
        let reg = self.registry.lock().expect("sink lock");
        reg.get(to)
            .map(|tx| {
                tx.send(SinkMsg {
                    body: text.to_string(),
                    at,
                })
                .is_ok()
            })
            .unwrap_or(false)
    }

    /// The WhatsApp Cloud API's send: Bearer token, a JSON message, `200`
    /// with a wamid; then the statuses, as webhooks.
    async fn handle_graph(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let c = &self.wa_counts;
        bump(&c.requests);
        let auth = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !meta::bearer_ok(auth.as_deref(), &self.wa.token) {
            bump(&c.bad_auth);
            self.problem("whatsapp: send without the access token (Bearer)".into());
            return json_response(
                StatusCode::UNAUTHORIZED,
                meta::graph_error(190, "OAuthException", "Invalid OAuth access token.").to_string(),
            );
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                bump(&c.bad_request);
                return json_response(
                    StatusCode::BAD_REQUEST,
                    meta::graph_error(100, "OAuthException", "(#100) Body unreadable").to_string(),
                );
            }
        };
        let send = match meta::parse_send(&body) {
            Ok(s) => s,
            Err(why) => {
                bump(&c.bad_request);
                self.problem(format!(
                    "whatsapp: bad send ({why}): {}",
                    String::from_utf8_lossy(&body)
                ));
                return json_response(
                    StatusCode::BAD_REQUEST,
                    meta::graph_error(
                        100,
                        "OAuthException",
                        &format!("(#100) Invalid parameter: {why}"),
                    )
                    .to_string(),
                );
            }
        };
        let wamid = meta::wamid(
            self.salt ^ WAMID_SALT,
            self.next_sid.fetch_add(1, Ordering::Relaxed),
        );
        if self.deliver(&send.to, &send.text, now_nanos()) {
            bump(&c.delivered_to_customer);
        } else {
            bump(&c.unmatched);
            self.problem(format!(
                "whatsapp: {} to {} that no customer of this run waits for: {:?}",
                send.kind, send.to, send.text
            ));
        }
        let callbacks = self.callbacks.lock().expect("sink lock").clone();
        if let Some(cb) = callbacks.filter(|c| !c.statuses.is_empty()) {
            let me = self.clone();
            let (wamid, to) = (wamid.clone(), send.to.clone());
            tokio::spawn(async move { me.post_wa_statuses(&cb, &wamid, &to).await });
        }
        json_response(
            StatusCode::OK,
            meta::send_answer(&send.to, &wamid).to_string(),
        )
    }

    /// Posts each status of `cb.statuses` WhatsApp knows (`sent`, `delivered`,
    /// `read`, `failed`) as a signed webhook to the broker's WhatsApp webhook,
    /// after `cb.delay` each.
    async fn post_wa_statuses(&self, cb: &Callbacks, wamid: &str, to: &str) {
        let c = &self.wa_counts;
        let mut rng = StdRng::seed_from_u64(self.salt ^ WAMID_SALT ^ now_nanos());
        for status in &cb.statuses {
            if !["sent", "delivered", "read", "failed"].contains(&status.as_str()) {
                continue;
            }
            let delay = cb.delay.sample(&mut rng);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let body = meta::status_body(&self.wa, wamid, to, status, meta::unix_secs());
            let signature = meta::signature(&self.wa.app_secret, body.as_bytes());
            let req = cb
                .client
                .post(cb.target.http(meta::WEBHOOK_PATH))
                .header("X-Hub-Signature-256", signature)
                .header("Content-Type", "application/json")
                .timeout(Duration::from_secs(10))
                .body(body);
            if !self.callback(c, "whatsapp: status webhook", req).await {
                return;
            }
        }
    }

    /// Twilio's Messages API.
    async fn handle_twilio(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let expected = format!(
            "/2010-04-01/Accounts/{}/Messages.json",
            self.cfg.account_sid
        );
        if req.method() != Method::POST || path != expected {
            return twilio_error(
                StatusCode::NOT_FOUND,
                20404,
                "The requested resource was not found",
            );
        }
        bump(&self.counts.requests);
        let auth = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !twilio::basic_auth_ok(auth.as_deref(), &self.cfg) {
            bump(&self.counts.bad_auth);
            self.problem("send without the account's Basic auth".into());
            return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        }
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return twilio_error(StatusCode::BAD_REQUEST, 21602, "Body unreadable"),
        };
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
        let field = |k: &str| {
            form.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (to, from, text, callback) = (
            field("To"),
            field("From"),
            field("Body"),
            field("StatusCallback"),
        );
        if to.is_empty()
            || from != self.cfg.from
            || (text.is_empty() && field("MediaUrl").is_empty())
        {
            bump(&self.counts.bad_request);
            self.problem(format!("bad send: To {to:?} From {from:?} Body {text:?}"));
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21604,
                "A 'To' phone number, the account's 'From' number and a 'Body' are required.",
            );
        }
        let sid = twilio::sid(
            "SM",
            self.salt,
            self.next_sid.fetch_add(1, Ordering::Relaxed),
        );
        if self.deliver(&to, &text, now_nanos()) {
            bump(&self.counts.delivered_to_customer);
        } else {
            bump(&self.counts.unmatched);
            self.problem(format!(
                "reply to {to} that no customer of this run waits for: {text:?}"
            ));
        }
        let callbacks = self.callbacks.lock().expect("sink lock").clone();
        if let Some(cb) = callbacks.filter(|c| !c.statuses.is_empty() && !callback.is_empty()) {
            let me = self.clone();
            let (sid, to) = (sid.clone(), to.clone());
            tokio::spawn(async move { me.post_statuses(&cb, &callback, &sid, &to).await });
        }
        let now = "Mon, 01 Jan 2024 00:00:00 +0000";
        let answer = json!({
            "account_sid": self.cfg.account_sid,
            "api_version": "2010-04-01",
            "body": text,
            "date_created": now,
            "date_sent": null,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": from,
            "messaging_service_sid": null,
            "num_media": "0",
            "num_segments": "1",
            "price": null,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": format!("/2010-04-01/Accounts/{}/Messages/{sid}/Media.json", self.cfg.account_sid)},
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{}/Messages/{sid}.json", self.cfg.account_sid),
        });
        json_response(StatusCode::CREATED, answer.to_string())
    }

    /// Posts each status of `cb.statuses`, signed, to the callback URL the
    /// broker gave, after `cb.delay` each. Only to the broker under test: the
    /// URL must start with the public URL the harness signs over.
    async fn post_statuses(&self, cb: &Callbacks, url: &str, sid: &str, to: &str) {
        let Some(path) = url.strip_prefix(self.cfg.public_url.trim_end_matches('/')) else {
            bump(&self.counts.callback_errors);
            self.problem(format!(
                "StatusCallback {url} is not under the public URL {}",
                self.cfg.public_url
            ));
            return;
        };
        let mut rng = StdRng::seed_from_u64(self.salt ^ now_nanos());
        for status in &cb.statuses {
            let delay = cb.delay.sample(&mut rng);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let form = twilio::status_form(&self.cfg, sid, to, status);
            let signature = twilio::signature(url, &form, &self.cfg.auth_token);
            let body = serde_urlencoded::to_string(&form).unwrap_or_default();
            let mut target = cb.target.http(path.split('?').next().unwrap_or(path));
            target.set_query(path.split_once('?').map(|(_, q)| q));
            let req = cb
                .client
                .post(target)
                .header("X-Twilio-Signature", signature)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .timeout(Duration::from_secs(10))
                .body(body);
            if !self.callback(&self.counts, "status callback", req).await {
                return;
            }
        }
    }
}

/// Accepts connections on `listener` and serves each with `sink`.
async fn serve(listener: TcpListener, sink: Arc<Sink>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let s = sink.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let s = s.clone();
                async move { Ok::<_, std::convert::Infallible>(s.handle(req).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Twilio's error body.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfgs() -> (TwilioCfg, WhatsappCfg) {
        (
            TwilioCfg {
                account_sid: "AC1".into(),
                auth_token: "tok".into(),
                from: "+15550001111".into(),
                public_url: "http://127.0.0.1:1".into(),
                api_base: "http://127.0.0.1:0".into(),
            },
            WhatsappCfg {
                token: "wa-tok".into(),
                app_secret: "secret".into(),
                verify_token: "verify".into(),
                phone_number_id: "1099".into(),
                display_number: "15550002222".into(),
                graph_base: "http://127.0.0.1:0/v21.0".into(),
            },
        )
    }

    #[tokio::test]
    async fn plays_the_graph_send_api() {
        let (tw, wa) = cfgs();
        let sink = Sink::start(tw, wa).await.unwrap();
        assert_eq!(sink.addr, sink.graph_addr, "one listener for both APIs");
        sink.begin_run(None);
        let mut rx = sink.register("18004200000007");
        let client = reqwest::Client::new();
        let url = format!("http://{}/v21.0/1099/messages", sink.graph_addr);
        // Exactly what the broker sends (src/channel/whatsapp.rs).
        let body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "18004200000007",
            "type": "text",
            "text": {"body": "re: 2 #1 t=5"},
        });
        let r = client
            .post(&url)
            .bearer_auth("wa-tok")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: serde_json::Value = r.json().await.unwrap();
        let id = answer["messages"][0]["id"].as_str().unwrap();
        assert!(id.starts_with("wamid."), "{answer}");
        assert_eq!(answer["contacts"][0]["wa_id"], "18004200000007");
        assert_eq!(rx.recv().await.unwrap().body, "re: 2 #1 t=5");

        // The wrong token, a bad body, and nobody waiting.
        let r = client
            .post(&url)
            .bearer_auth("nope")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client
            .post(&url)
            .bearer_auth("wa-tok")
            .json(&json!({"messaging_product": "whatsapp", "to": "1", "type": "text"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let mut other = body.clone();
        other["to"] = json!("18004200000008");
        let r = client
            .post(&url)
            .bearer_auth("wa-tok")
            .json(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // A Twilio path still answers as Twilio.
        let r = client
            .post(format!(
                "http://{}/2010-04-01/Accounts/AC1/Messages.json",
                sink.addr
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        let (m, problems) = sink.figures();
        assert_eq!(m["whatsapp_requests"], 4);
        assert_eq!(m["whatsapp_delivered_to_customer"], 1);
        assert_eq!(m["whatsapp_bad_auth"], 1);
        assert_eq!(m["whatsapp_bad_request"], 1);
        assert_eq!(m["whatsapp_unmatched"], 1);
        assert_eq!((m["requests"], m["bad_auth"]), (1, 1));
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}

//! The provider sink: an HTTP/1.1 server on loopback that plays Twilio's send
//! API (`POST /2010-04-01/Accounts/{sid}/Messages.json` → `201 {"sid":…}`),
//! checks the broker's Basic auth, hands each reply to the SMS customer whose
//! number is its `To`, and optionally posts signed status callbacks (`sent`,
//! `delivered`) back to the broker so agents see `message.status`.
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
use crate::net::Target;
use crate::report::now_nanos;
use crate::twilio::{self, TwilioCfg};

/// An outbound SMS as the sink received it.
#[derive(Debug, Clone)]
pub struct SinkMsg {
    pub body: String,
    /// [`now_nanos`] at receipt.
    pub at: u64,
}

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

/// What the sink needs to post status callbacks.
pub struct Callbacks {
    pub target: Target,
    pub statuses: Vec<String>,
    pub delay: Dist,
    pub client: reqwest::Client,
}

pub struct Sink {
    pub cfg: TwilioCfg,
    pub addr: SocketAddr,
    registry: Mutex<HashMap<String, mpsc::UnboundedSender<SinkMsg>>>,
    counts: Counts,
    callbacks: Mutex<Option<Arc<Callbacks>>>,
    samples: Mutex<Vec<String>>,
    next_sid: AtomicU64,
    salt: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Sink {
    /// Binds the sink at `cfg.api_base` (loopback only) and serves it.
    pub async fn start(cfg: TwilioCfg) -> Result<Arc<Sink>, String> {
        let api = Target::parse(&cfg.api_base).map_err(|e| format!("--twilio-api-base: {e}"))?;
        let listener = TcpListener::bind(api.addr)
            .await
            .map_err(|e| format!("provider sink: cannot listen on {}: {e}", api.addr))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("provider sink: {e}"))?;
        let sink = Arc::new(Sink {
            cfg,
            addr,
            registry: Mutex::new(HashMap::new()),
            counts: Counts::default(),
            callbacks: Mutex::new(None),
            samples: Mutex::new(Vec::new()),
            next_sid: AtomicU64::new(0),
            salt: now_nanos(),
        });
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let s = s.clone();
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
        });
        Ok(sink)
    }

    /// Sets (or clears) the status callbacks for the coming run and resets the
    /// counters.
    pub fn begin_run(&self, callbacks: Option<Callbacks>) {
        *self.callbacks.lock().expect("sink lock") = callbacks.map(Arc::new);
        for c in [
            &self.counts.requests,
            &self.counts.delivered_to_customer,
            &self.counts.unmatched,
            &self.counts.bad_auth,
            &self.counts.bad_request,
            &self.counts.callbacks_ok,
            &self.counts.callback_errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.samples.lock().expect("sink lock").clear();
    }

    /// The sink's figures for the run, and the first problems it saw.
    pub fn figures(&self) -> (BTreeMap<String, u64>, Vec<String>) {
        let c = &self.counts;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let m = BTreeMap::from([
            ("requests".to_string(), g(&c.requests)),
            (
                "delivered_to_customer".to_string(),
                g(&c.delivered_to_customer),
            ),
            ("unmatched".to_string(), g(&c.unmatched)),
            ("bad_auth".to_string(), g(&c.bad_auth)),
            ("bad_request".to_string(), g(&c.bad_request)),
            ("callbacks_ok".to_string(), g(&c.callbacks_ok)),
            ("callback_errors".to_string(), g(&c.callback_errors)),
        ]);
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
        let at = now_nanos();
        let delivered = {
            let reg = self.registry.lock().expect("sink lock");
            reg.get(&to)
                .map(|tx| {
                    tx.send(SinkMsg {
                        body: text.clone(),
                        at,
                    })
                    .is_ok()
                })
                .unwrap_or(false)
        };
        if delivered {
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
            let result = cb
                .client
                .post(target)
                .header("X-Twilio-Signature", signature)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .timeout(Duration::from_secs(10))
                .body(body)
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => bump(&self.counts.callbacks_ok),
                Ok(r) => {
                    bump(&self.counts.callback_errors);
                    let status_code = r.status();
                    let text = r.text().await.unwrap_or_default();
                    self.problem(format!(
                        "status callback answered {status_code}: {}",
                        crate::net::clip(&text, 200)
                    ));
                    return;
                }
                Err(e) => {
                    bump(&self.counts.callback_errors);
                    self.problem(format!("status callback failed: {e}"));
                    return;
                }
            }
        }
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

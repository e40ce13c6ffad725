//! The webhook sink: an HTTP/1.1 receiver on loopback for the broker's event
//! webhooks (`docs/webhooks.md`), answering every POST with one status
//! (`--webhook-sink-status`, 503 by default: an endpoint that keeps
//! failing). It checks each request's signature with `--webhook-secret` and
//! counts requests, events (distinct ids), retries and bad signatures, so a
//! run can show what a failing endpoint costs routing and chat.
//!
//! The broker is pointed at it by its own configuration (`[[webhooks]]` is
//! file-only: `loadtest/scenarios/webhook-broker.toml`), so the sink listens
//! on a fixed address (`--webhook-sink`). One per process, kept across runs;
//! each run reports the counts it added.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;

pub struct HookSink {
    pub addr: SocketAddr,
    status: StatusCode,
    secret: String,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    /// Event ids seen: a second request with one is a retry.
    ids: Mutex<HashSet<String>>,
    retries: AtomicU64,
    /// The counts when the current run began.
    base: Mutex<[u64; 4]>,
}

impl HookSink {
    pub async fn start(
        addr: SocketAddr,
        status: u16,
        secret: String,
    ) -> Result<Arc<HookSink>, String> {
        let status = StatusCode::from_u16(status)
            .map_err(|_| format!("--webhook-sink-status: {status} is not an HTTP status"))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("webhook sink: cannot listen on {addr}: {e}"))?;
        let sink = Arc::new(HookSink {
            addr,
            status,
            secret,
            requests: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            ids: Mutex::new(HashSet::new()),
            retries: AtomicU64::new(0),
            base: Mutex::new([0; 4]),
        });
        tokio::spawn(serve(listener, sink.clone()));
        Ok(sink)
    }

    fn counts(&self) -> [u64; 4] {
        let events = self
            .ids
            .lock()
            .map(|ids| ids.len() as u64)
            .unwrap_or_default();
        [
            self.requests.load(Ordering::Relaxed),
            events,
            self.retries.load(Ordering::Relaxed),
            self.bad_signatures.load(Ordering::Relaxed),
        ]
    }

    /// A run starts: its figures count from now.
    pub fn begin_run(&self) {
        let now = self.counts();
        if let Ok(mut base) = self.base.lock() {
            *base = now;
        }
    }

    /// What the run added, for the report.
    pub fn figures(&self) -> Value {
        let now = self.counts();
        let base = self.base.lock().map(|b| *b).unwrap_or_default();
        json!({
            "url": format!("http://{}/hooks", self.addr),
            "answered": self.status.as_u16(),
            "requests": now[0] - base[0],
            "events": now[1] - base[1],
            "retries": now[2] - base[2],
            "bad_signatures": now[3] - base[3],
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (timestamp, signature, id) = (
            header("x-switchboard-timestamp"),
            header("x-switchboard-signature"),
            header("x-switchboard-event-id"),
        );
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !self.signed(&timestamp, &signature, &body) {
            self.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
        let fresh = self
            .ids
            .lock()
            .map(|mut ids| ids.insert(id))
            .unwrap_or(true);
        if !fresh {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        Response::builder()
            .status(self.status)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default()
    }

    /// `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` with the secret?
    fn signed(&self, timestamp: &str, signature: &str, body: &[u8]) -> bool {
        let Some(given) = signature
            .strip_prefix("sha256=")
            .and_then(|h| hex::decode(h).ok())
        else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()) else {
            return false;
        };
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    }
}

async fn serve(listener: TcpListener, sink: Arc<HookSink>) {
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

//! A mock messaging provider: a real HTTP server on loopback (actix-web on a
//! thread of its own) that plays Twilio's Messaging API and Meta's Graph API
//! (WhatsApp Cloud API and the Messenger Send API) for the broker under test.
//!
//! It records every request, answers sends with provider ids, serves media
//! (with each provider's auth), and can be told to fail the next sends of one
//! API: 500, 429, 400 with the provider's error body, or an answer slower than
//! the broker's provider timeout.
//!
//! Routes (relative to `base_url()`, which is both the Twilio API base and the
//! Graph API base):
//! - `POST /2010-04-01/Accounts/{sid}/Messages.json` (Basic `AC123:tw-secret`)
//!   → `201 {"sid":"SM…","status":"queued",…}`
//! - `POST /{phone_number_id}/messages` (Bearer `wa-token`)
//!   → `200 {"messaging_product":"whatsapp","contacts":[…],"messages":[{"id":"wamid.…"}]}`
//! - `POST /me/messages?access_token=page-token` → `200 {"recipient_id","message_id":"m_…"}`
//! - `GET /{media-id}` (Bearer `wa-token`) → `{"url":"{base}/media/{id}","mime_type",…}`
//! - `GET /media/{id}` → the bytes, if the request carries the auth the media
//!   was registered with.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::sign::base64;

pub const ACCOUNT_SID: &str = "AC123";
pub const AUTH_TOKEN: &str = "tw-secret";
pub const WA_TOKEN: &str = "wa-token";
pub const PHONE_NUMBER_ID: &str = "1099";
pub const PAGE_TOKEN: &str = "page-token";

/// Which provider API a send went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    Twilio,
    Whatsapp,
    Messenger,
}

/// What the next send(s) of an API answer instead of success.
#[derive(Clone, Debug)]
pub enum Failure {
    /// `500` with the provider's error body.
    ServerError,
    /// `429` with the provider's error body.
    TooManyRequests,
    /// `400` with the provider's error body: Twilio
    /// `{"code":21211,"message":"Invalid 'To' Phone Number","status":400}`,
    /// Graph `{"error":{"message":"(#100) Invalid parameter","type":"OAuthException","code":100}}`.
    Rejected,
    /// The normal answer, but only after this long (make it longer than the
    /// broker's provider timeout to play a hanging provider).
    Slow(Duration),
}

/// What a recorded request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Send(Api),
    /// Graph `GET /{media-id}`.
    MediaInfo,
    /// `GET /media/{id}`.
    Media,
    Unknown,
}

/// How a media file must be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaAuth {
    /// Plain URL (Messenger attachment payload URLs).
    None,
    /// HTTP Basic with the Twilio account SID and auth token.
    TwilioBasic,
    /// `Authorization: Bearer wa-token`.
    WhatsappBearer,
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Arrival order, from 0.
    pub seq: usize,
    pub kind: Kind,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the mock answered (or will answer, for a slow answer).
    pub status: u16,
    /// The provider message id in a successful send's answer.
    pub provider_id: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as form pairs (Twilio).
    pub fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(&self.body).unwrap_or_else(|e| {
            panic!(
                "form body expected in {} {}: {e}: {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn form_values(&self, name: &str) -> Vec<String> {
        self.form()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// The body as JSON (Graph).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "JSON body expected in {} {}: {e}: {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn query_value(&self, name: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        let mut body = String::from_utf8_lossy(&self.body).into_owned();
        if body.len() > 300 {
            let mut cut = 300;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push('…');
        }
        format!(
            "#{} {:?} {} {}{}{} → {} {:?}",
            self.seq,
            self.kind,
            self.method,
            self.path,
            if self.query.is_empty() { "" } else { "?" },
            self.query,
            self.status,
            body
        )
    }
}

struct MediaFile {
    content_type: String,
    bytes: Vec<u8>,
    auth: MediaAuth,
}

#[derive(Default)]
struct State {
    base: String,
    requests: Vec<Recorded>,
    failures: HashMap<Api, VecDeque<Failure>>,
    media: HashMap<String, MediaFile>,
    next_id: u64,
}

type Shared = Mutex<State>;

/// The running mock; stops when dropped.
pub struct Mock {
    state: Arc<Shared>,
    addr: SocketAddr,
    handle: ServerHandle,
}

impl Mock {
    pub fn start() -> Mock {
        let state: Arc<Shared> = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let for_thread = state.clone();
        std::thread::Builder::new()
            .name("mock-provider".into())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                system.block_on(async move {
                    let data = web::Data::from(for_thread.clone());
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                            .default_service(web::to(handle))
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .bind(("127.0.0.1", 0))
                    .expect("mock provider binds");
                    let addr = server.addrs()[0];
                    for_thread.lock().unwrap().base = format!("http://{addr}");
                    let server = server.run();
                    tx.send((addr, server.handle()))
                        .expect("report mock address");
                    let _ = server.await;
                });
            })
            .expect("mock provider thread");
        let (addr, handle) = rx.recv().expect("mock provider starts");
        Mock {
            state,
            addr,
            handle,
        }
    }

    /// Base URL for both `twilio_api_base` and `graph_api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL where a registered media file is served.
    pub fn media_url(&self, id: &str) -> String {
        format!("{}/media/{id}", self.base_url())
    }

    /// Registers a media file (served at `media_url(id)`; for WhatsApp, `id`
    /// is also the media id behind `GET /{id}`).
    pub fn add_media(&self, id: &str, content_type: &str, bytes: Vec<u8>, auth: MediaAuth) {
        self.state.lock().unwrap().media.insert(
            id.to_string(),
            MediaFile {
                content_type: content_type.to_string(),
                bytes,
                auth,
            },
        );
    }

    /// The next `n` sends to `api` answer `failure`.
    pub fn fail(&self, api: Api, n: usize, failure: Failure) {
        let mut st = self.state.lock().unwrap();
        let q = st.failures.entry(api).or_default();
        for _ in 0..n {
            q.push_back(failure.clone());
        }
    }

    /// Forget pending failures of `api`.
    pub fn heal(&self, api: Api) {
        self.state.lock().unwrap().failures.remove(&api);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every send attempt to `api`, failed ones included, in arrival order.
    pub fn sends(&self, api: Api) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == Kind::Send(api))
            .collect()
    }

    pub fn of_kind(&self, kind: Kind) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.kind == kind)
            .collect()
    }

    /// Everything received, one line each, for failure messages.
    pub fn dump(&self) -> String {
        let lines: Vec<String> = self.requests().iter().map(Recorded::describe).collect();
        if lines.is_empty() {
            "mock provider received nothing".into()
        } else {
            format!("mock provider received:\n  {}", lines.join("\n  "))
        }
    }

    /// Waits until at least `n` send attempts reached `api`; returns all of them.
    pub async fn wait_sends(&self, api: Api, n: usize) -> Vec<Recorded> {
        self.wait_sends_within(api, n, Duration::from_secs(5)).await
    }

    pub async fn wait_sends_within(&self, api: Api, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.sends(api);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} {api:?} send(s), got {}; {}",
                got.len(),
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that `api` gets no more than `n` sends over `within`.
    pub async fn assert_sends_stay(&self, api: Api, n: usize, within: Duration) {
        tokio::time::sleep(within).await;
        let got = self.sends(api).len();
        assert_eq!(got, n, "{api:?} sends; {}", self.dump());
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        // Sends the stop command at once; the thread ends when the server has.
        drop(self.handle.stop(false));
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

fn graph_error(code: u32, message: &str, transient: bool) -> Value {
    json!({"error": {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "is_transient": transient,
        "fbtrace_id": "AmockTraceId",
    }})
}

fn failure_answer(api: Api, failure: &Failure) -> (u16, Value) {
    let twilio = api == Api::Twilio;
    match failure {
        Failure::ServerError if twilio => (500, twilio_error(500, 20500, "Internal Server Error")),
        Failure::ServerError => (
            500,
            graph_error(
                2,
                "An unexpected error has occurred. Please retry your request later.",
                true,
            ),
        ),
        Failure::TooManyRequests if twilio => (429, twilio_error(429, 20429, "Too Many Requests")),
        Failure::TooManyRequests => (
            429,
            graph_error(4, "(#4) Application request limit reached", true),
        ),
        Failure::Rejected if twilio => (400, twilio_error(400, 21211, "Invalid 'To' Phone Number")),
        Failure::Rejected => (400, graph_error(100, "(#100) Invalid parameter", false)),
        Failure::Slow(_) => unreachable!("a slow answer is a success"),
    }
}

fn classify(method: &str, path: &str) -> Kind {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("POST", ["2010-04-01", "Accounts", _, "Messages.json"]) => Kind::Send(Api::Twilio),
        ("POST", ["me", "messages"]) => Kind::Send(Api::Messenger),
        ("POST", [_, "messages"]) => Kind::Send(Api::Whatsapp),
        ("GET", ["media", _]) => Kind::Media,
        ("GET", [id]) if !id.is_empty() => Kind::MediaInfo,
        _ => Kind::Unknown,
    }
}

/// What to answer, decided when the request arrives.
enum Plan {
    Json(u16, Value),
    Bytes(String, Vec<u8>),
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let method = req.method().as_str().to_string();
    let path = req.path().to_string();
    let query = req.query_string().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let auth = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let kind = classify(&method, &path);
    let twilio_basic = format!(
        "Basic {}",
        base64(format!("{ACCOUNT_SID}:{AUTH_TOKEN}").as_bytes())
    );
    let wa_bearer = format!("Bearer {WA_TOKEN}");

    let mut delay = None;
    let mut provider_id = None;
    let plan = {
        let mut st = state.lock().unwrap();
        let plan = match kind {
            Kind::Send(api) => {
                let authorized = match api {
                    Api::Twilio => {
                        auth == twilio_basic && path.contains(&format!("/Accounts/{ACCOUNT_SID}/"))
                    }
                    Api::Whatsapp => {
                        auth == wa_bearer && path == format!("/{PHONE_NUMBER_ID}/messages")
                    }
                    Api::Messenger => {
                        query_param(&query, "access_token").as_deref() == Some(PAGE_TOKEN)
                    }
                };
                let failure = st.failures.get_mut(&api).and_then(VecDeque::pop_front);
                if !authorized {
                    match api {
                        Api::Twilio => Plan::Json(401, twilio_error(401, 20003, "Authenticate")),
                        _ => {
                            Plan::Json(401, graph_error(190, "Invalid OAuth access token.", false))
                        }
                    }
                } else {
                    match failure {
                        Some(Failure::Slow(d)) => {
                            delay = Some(d);
                            success(api, &mut st, &body, &mut provider_id)
                        }
                        Some(f) => {
                            let (status, v) = failure_answer(api, &f);
                            Plan::Json(status, v)
                        }
                        None => success(api, &mut st, &body, &mut provider_id),
                    }
                }
            }
            Kind::MediaInfo => {
                let id = path.trim_start_matches('/').to_string();
                if auth != wa_bearer {
                    Plan::Json(401, graph_error(190, "Invalid OAuth access token.", false))
                } else if let Some(m) = st.media.get(&id) {
                    Plan::Json(
                        200,
                        json!({
                            "messaging_product": "whatsapp",
                            "url": format!("{}/media/{id}", st.base),
                            "mime_type": m.content_type,
                            "sha256": "0000",
                            "file_size": m.bytes.len(),
                            "id": id,
                        }),
                    )
                } else {
                    Plan::Json(404, graph_error(100, "Unsupported get request.", false))
                }
            }
            Kind::Media => {
                let id = path.rsplit('/').next().unwrap_or_default();
                match st.media.get(id) {
                    None => Plan::Json(404, json!({"error": "no such media"})),
                    Some(m) => {
                        let allowed = match m.auth {
                            MediaAuth::None => true,
                            MediaAuth::TwilioBasic => auth == twilio_basic,
                            MediaAuth::WhatsappBearer => auth == wa_bearer,
                        };
                        if allowed {
                            Plan::Bytes(m.content_type.clone(), m.bytes.clone())
                        } else {
                            Plan::Json(401, json!({"error": "unauthorized"}))
                        }
                    }
                }
            }
            Kind::Unknown => Plan::Json(404, json!({"error": "mock: no such route"})),
        };
        let status = match &plan {
            Plan::Json(s, _) => *s,
            Plan::Bytes(..) => 200,
        };
        let seq = st.requests.len();
        st.requests.push(Recorded {
            seq,
            kind,
            method,
            path,
            query,
            headers,
            body: body.to_vec(),
            status,
            provider_id: provider_id.clone(),
        });
        plan
    };
    if let Some(d) = delay {
        actix_web::rt::time::sleep(d).await;
    }
    match plan {
        Plan::Json(status, v) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status"))
                .content_type("application/json")
                .body(v.to_string())
        }
        Plan::Bytes(ct, bytes) => HttpResponse::Ok().content_type(ct).body(bytes),
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A provider's success answer to a send.
fn success(api: Api, st: &mut State, body: &[u8], id_out: &mut Option<String>) -> Plan {
    st.next_id += 1;
    let n = st.next_id;
    match api {
        Api::Twilio => {
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).unwrap_or_default();
            let get = |k: &str| {
                form.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let sid = format!("SM{n:032x}");
            *id_out = Some(sid.clone());
            let media = form.iter().filter(|(k, _)| k == "MediaUrl").count();
            Plan::Json(
                201,
                json!({
                    "sid": sid,
                    "account_sid": ACCOUNT_SID,
                    "to": get("To"),
                    "from": get("From"),
                    "body": get("Body"),
                    "status": "queued",
                    "num_media": media.to_string(),
                    "num_segments": "1",
                    "direction": "outbound-api",
                    "api_version": "2010-04-01",
                    "error_code": null,
                    "error_message": null,
                }),
            )
        }
        Api::Whatsapp => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let to = v["to"].as_str().unwrap_or_default().to_string();
            let id = format!("wamid.MOCK{n:08}");
            *id_out = Some(id.clone());
            Plan::Json(
                200,
                json!({
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": to, "wa_id": to}],
                    "messages": [{"id": id}],
                }),
            )
        }
        Api::Messenger => {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let id = format!("m_mock{n:08}");
            *id_out = Some(id.clone());
            Plan::Json(
                200,
                json!({"recipient_id": v["recipient"]["id"], "message_id": id}),
            )
        }
    }
}

#[cfg(test)]
mod self_test {
    use super::*;

    /// The mock answers like the providers, before any broker is involved.
    #[tokio::test]
    async fn mock_answers_sends_media_and_failures() {
        let mock = Mock::start();
        let http = reqwest::Client::new();
        let base = mock.base_url();

        let r = http
            .post(format!("{base}/2010-04-01/Accounts/AC123/Messages.json"))
            .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
            .form(&[
                ("To", "+15551230000"),
                ("From", "+15550001111"),
                ("Body", "hi"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().await.unwrap();
        assert!(v["sid"].as_str().unwrap().starts_with("SM"), "{v}");
        assert_eq!(v["status"], "queued");

        let r = http
            .post(format!("{base}/2010-04-01/Accounts/AC123/Messages.json"))
            .basic_auth(ACCOUNT_SID, Some("wrong"))
            .form(&[("To", "+1")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);

        mock.fail(Api::Whatsapp, 1, Failure::Rejected);
        let send_wa = || {
            http.post(format!("{base}/1099/messages"))
                .bearer_auth(WA_TOKEN)
                .json(&json!({"messaging_product":"whatsapp","to":"15551230000","type":"text","text":{"body":"x"}}))
                .send()
        };
        let r = send_wa().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], 100);
        let r = send_wa().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["messages"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("wamid."));

        let r = http
            .post(format!("{base}/me/messages?access_token=page-token"))
            .json(&json!({"recipient":{"id":"PSID1"},"messaging_type":"RESPONSE","message":{"text":"x"}}))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["recipient_id"], "PSID1");

        mock.add_media(
            "MEDIA1",
            "image/jpeg",
            vec![1, 2, 3],
            MediaAuth::WhatsappBearer,
        );
        let info: Value = http
            .get(format!("{base}/MEDIA1"))
            .bearer_auth(WA_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["url"], mock.media_url("MEDIA1"));
        let r = http.get(mock.media_url("MEDIA1")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "media needs the bearer token");
        let r = http
            .get(mock.media_url("MEDIA1"))
            .bearer_auth(WA_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &[1, 2, 3]);

        mock.fail(Api::Twilio, 1, Failure::Slow(Duration::from_millis(300)));
        let t0 = std::time::Instant::now();
        let r = http
            .post(format!("{base}/2010-04-01/Accounts/AC123/Messages.json"))
            .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
            .form(&[("To", "+1")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        assert!(t0.elapsed() >= Duration::from_millis(300));

        assert_eq!(mock.sends(Api::Twilio).len(), 3);
        assert_eq!(mock.sends(Api::Whatsapp).len(), 2);
        assert_eq!(mock.sends(Api::Messenger).len(), 1);
        assert_eq!(
            mock.sends(Api::Twilio)[0].form_value("Body").as_deref(),
            Some("hi")
        );
    }
}

//! Event webhooks over real sockets: the broker POSTs to a real HTTP receiver
//! started here (a small HTTP/1.1 server on a loopback port) that fails,
//! then is slow, then recovers. Checked: every event arrives, signed as
//! documented, in order per conversation, duplicates only as retries of the
//! same id; the `events` filter; the figures of `/v1/stats` and `/metrics`
//! through the failure and the recovery; a full queue drops and counts; an
//! event past `webhook_retry_for` is given up and counted; supervisor
//! actions are told with who did them.

mod common;
mod providers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use switchboard::config::WebhookEndpoint;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const SECRET_A: &str = "whsec-a-0123456789abcdef0123456789abcdef";
const SECRET_B: &str = "whsec-b-0123456789abcdef0123456789abcdef";

/// How long the receiver's slow answers take: well past the test's
/// `webhook_timeout`, so the broker gives up on them and retries.
const SLOW: Duration = Duration::from_millis(1500);

/// What the receiver answers next.
const FAIL: u8 = 0;
const OK: u8 = 1;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    headers: HashMap<String, String>,
    body: String,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// A webhook receiver: answers 503 while failing; once told to recover,
/// answers its next `slow` requests late, then 200 at once.
#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    mode: Arc<AtomicU8>,
    slow: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(mode: u8) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = Receiver {
            url: format!("http://{addr}/hooks?key=abc"),
            hits: Arc::default(),
            mode: Arc::new(AtomicU8::new(mode)),
            slow: Arc::default(),
        };
        let r = receiver.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(r.clone().serve(socket));
            }
        });
        receiver
    }

    /// Serve one keep-alive connection, request after request.
    async fn serve(self, socket: TcpStream) {
        let mut socket = BufReader::new(socket);
        loop {
            let mut headers = HashMap::new();
            let mut line = String::new();
            match socket.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => assert!(line.starts_with("POST /hooks?key=abc "), "{line}"),
            }
            loop {
                line.clear();
                if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let (k, v) = l.split_once(':').expect("header line");
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            let mut body = vec![0; len];
            if socket.read_exact(&mut body).await.is_err() {
                return;
            }
            let body = String::from_utf8(body).expect("utf-8 body");
            self.hits.lock().push(Hit { headers, body });
            let status = if self.mode.load(Ordering::SeqCst) == FAIL {
                "503 Service Unavailable"
            } else {
                let slow = self
                    .slow
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if slow {
                    tokio::time::sleep(SLOW).await;
                }
                "200 OK"
            };
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
            if socket.get_mut().write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn recover(&self, slow: usize) {
        self.slow.store(slow, Ordering::SeqCst);
        self.mode.store(OK, Ordering::SeqCst);
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }
}

fn endpoint(url: &str, secret: &str, events: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        url: url.to_owned(),
        secret: secret.to_owned(),
        events: events.iter().map(|e| e.to_string()).collect(),
    }
}

/// A receiver answering `mode` at first, and a broker on `cfg` with one
/// endpoint there for `events` (every event when empty), signed with
/// [`SECRET_A`]. Also gives that configuration, to start again with.
async fn start_hooked(
    mode: u8,
    events: &[&str],
    cfg: switchboard::Config,
) -> (Receiver, Harness, switchboard::Config) {
    let a = Receiver::start(mode).await;
    let cfg = switchboard::Config {
        webhooks: vec![endpoint(&a.url, SECRET_A, events)],
        ..cfg
    };
    let h = start_with(cfg.clone());
    (a, h, cfg)
}

/// Alice holding Dana's task, and Bob created but not online yet, on `h`:
/// where the transfer tests start. Gives Bob, Alice's desk, the
/// conversation and the task.
async fn alice_holds_a_task(h: &Harness) -> (Agent, Ws, String, String) {
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut desk_a = h.agent_online(&alice).await;
    let (_s, _c, ack) = h.customer_with_message("Dana", "hello").await;
    let cv = s(&ack["conversation_id"]);
    let (offer, _) = desk_a.take_offer().await;
    let task = s(&offer["task"]["id"]);
    (bob, desk_a, cv, task)
}

/// Poll until `pred` holds, or fail saying `what`.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The figures of endpoint `i` in `/v1/stats`.
async fn endpoint_stats(h: &Harness, i: usize) -> Value {
    h.admin_get_ok("/v1/stats").await["webhooks"][i].clone()
}

/// Check every request's signature, id header and timestamp, and that
/// requests sharing an id are the same event retried (same body, attempts
/// 1, 2, 3…). Returns the events once each, in order of first arrival.
fn verify(hits: &[Hit], secret: &str) -> Vec<Value> {
    let now = unix_now();
    let mut attempts: HashMap<String, (String, u32)> = HashMap::new();
    let mut events = Vec::new();
    for hit in hits {
        let ts = hit.header("x-switchboard-timestamp");
        let t: u64 = ts.parse().expect("timestamp is unix seconds");
        assert!(t.abs_diff(now) < 300, "timestamp {t} is not recent");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{ts}.{}", hit.body).as_bytes());
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            hit.header("x-switchboard-signature"),
            expected,
            "signature of {}",
            hit.body
        );
        assert_eq!(hit.header("content-type"), "application/json");
        let v = hit.json();
        let id = v["id"].as_str().expect("id").to_owned();
        assert!(id.starts_with("evt_"), "{id}");
        assert_eq!(hit.header("x-switchboard-event-id"), id);
        assert!(v["created_at"].is_string() && v["type"].is_string() && v["data"].is_object());
        let attempt: u32 = hit
            .header("x-switchboard-attempt")
            .parse()
            .expect("attempt");
        match attempts.get_mut(&id) {
            None => {
                assert_eq!(attempt, 1, "first request of {id}");
                attempts.insert(id, (hit.body.clone(), 1));
                events.push(v);
            }
            Some((body, last)) => {
                assert_eq!(*body, hit.body, "a retry of {id} carries the same body");
                assert_eq!(attempt, *last + 1, "retries of {id} count up");
                *last = attempt;
            }
        }
    }
    events
}

/// The conversation an event belongs to, if any.
fn conversation_of(v: &Value) -> Option<&str> {
    v["data"]["conversation_id"]
        .as_str()
        .or_else(|| v["data"]["task"]["conversation_id"].as_str())
}

/// Each conversation's event types, in order of first arrival.
fn by_conversation(events: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in events {
        if let Some(cv) = conversation_of(v) {
            out.entry(cv.to_owned())
                .or_default()
                .push(v["type"].as_str().expect("type").to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_order_through_failure_slowness_and_recovery() {
    let a = Receiver::start(FAIL).await;
    let b = Receiver::start(OK).await;
    let cfg = switchboard::Config {
        webhooks: vec![
            endpoint(&a.url, SECRET_A, &[]),
            endpoint(&b.url, SECRET_B, &["task.completed"]),
        ],
        webhook_timeout: Duration::from_millis(300),
        webhook_backoff: Duration::from_millis(50),
        webhook_in_flight: 2,
        reoffer_cooldown: Duration::from_millis(100),
        ..test_config()
    };
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;

    // The whole chat runs while endpoint A fails: nothing waits on it.
    let (_s1, mut c1, ack1) = h.customer_with_message("Dana", "hello one").await;
    let cv1 = ack1["conversation_id"].as_str().unwrap().to_owned();
    let offer1 = desk.offer_for(&cv1).await;
    let tk1 = offer1["task"]["id"].as_str().unwrap().to_owned();
    desk.accept(&tk1).await;
    desk.agent_send(&cv1, "reply one", "r1").await;
    c1.recv_message_text("reply one").await;

    let (_s2, _c2, ack2) = h.customer_with_message("Eve", "hello two").await;
    let cv2 = ack2["conversation_id"].as_str().unwrap().to_owned();
    let offer2 = desk.offer_for(&cv2).await;
    let tk2 = offer2["task"]["id"].as_str().unwrap().to_owned();
    desk.reject(&tk2).await;
    desk.offer_for(&cv2).await;
    desk.accept(&tk2).await;

    // A is failing, and the figures say so.
    let failing = eventually("endpoint A reported failing", async || {
        let s = endpoint_stats(&h, 0).await;
        (s["failed_attempts"].as_u64() >= Some(3) && s["failing_since"].is_string()).then_some(s)
    })
    .await;
    assert_eq!(failing["url"], a.url.as_str());
    assert_eq!(failing["last_error"], "HTTP 503");
    assert!(failing["pending"].as_u64() > Some(0), "{failing}");
    assert_eq!(failing["delivered"], 0, "{failing}");
    let metrics = h.admin_get("/metrics").await.text;
    let label = format!("{{url=\"{}\"}}", a.url.split('?').next().unwrap());
    let failing_line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("switchboard_webhook_failing_seconds{label} ")))
        .unwrap_or_else(|| panic!("no failing gauge for A in\n{metrics}"));
    assert!(!failing_line.ends_with(" 0"), "{failing_line}");

    // Slow for two requests (each times out and is retried), then well.
    a.recover(2);
    desk.end(&cv1).await;
    desk.complete(&tk1, "resolved", "sorted").await;
    desk.end(&cv2).await;
    desk.complete(&tk2, "follow_up", "").await;

    let recovered = eventually("endpoint A caught up", async || {
        let s = endpoint_stats(&h, 0).await;
        let done = by_conversation(&verify(&a.hits(), SECRET_A))
            .values()
            .filter(|types| types.last().map(String::as_str) == Some("task.completed"))
            .count()
            == 2;
        (done && s["pending"] == 0 && s["failing_since"].is_null()).then_some(s)
    })
    .await;

    let hits = a.hits();
    let events = verify(&hits, SECRET_A);
    assert!(hits.len() > events.len(), "the failures were retried");
    let flows = by_conversation(&events);
    assert_eq!(
        flows[&cv1],
        [
            "task.created",
            "message.created",
            "task.offered",
            "task.accepted",
            "message.created",
            "task.wrapping",
            "conversation.ended",
            "task.completed",
        ],
        "conversation 1, in order"
    );
    assert_eq!(
        flows[&cv2],
        [
            "task.created",
            "message.created",
            "task.offered",
            "task.rejected",
            "task.offered",
            "task.accepted",
            "task.wrapping",
            "conversation.ended",
            "task.completed",
        ],
        "conversation 2, in order"
    );
    // Payloads as documented.
    let of = |cv: &str, ty: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|v| conversation_of(v) == Some(cv) && v["type"] == ty)
            .collect()
    };
    let offered = of(&cv1, "task.offered")[0];
    assert_eq!(offered["data"]["agent_id"], "alice");
    assert_eq!(offered["data"]["task"]["id"], tk1.as_str());
    assert_eq!(offered["data"]["task"]["state"], "reserved");
    assert!(offered["data"]["expires_at"].is_string());
    let messages = of(&cv1, "message.created");
    assert_eq!(messages[0]["data"]["message"]["text"], "hello one");
    assert_eq!(messages[0]["data"]["message"]["seq"], 1);
    assert_eq!(messages[1]["data"]["message"]["text"], "reply one");
    assert_eq!(messages[1]["data"]["message"]["from"], "agent");
    assert_eq!(messages[1]["data"]["task_id"], tk1.as_str());
    assert_eq!(of(&cv2, "task.rejected")[0]["data"]["agent_id"], "alice");
    assert_eq!(
        of(&cv2, "task.rejected")[0]["data"]["task"]["state"],
        "queued"
    );
    let done = of(&cv1, "task.completed")[0];
    assert_eq!(done["data"]["disposition"], "resolved");
    assert_eq!(done["data"]["notes"], "sorted");
    assert_eq!(done["data"]["agent_id"], "alice");
    assert_eq!(done["data"]["task"]["state"], "completed");
    let ended = of(&cv2, "conversation.ended")[0];
    assert_eq!(ended["data"]["task_id"], tk2.as_str());
    assert!(ended["data"]["ended_at"].is_string());
    // The agent's own events: available when it came online.
    let activity: Vec<&Value> = events
        .iter()
        .filter(|v| v["type"] == "agent.activity")
        .collect();
    assert_eq!(activity.len(), 1, "{activity:?}");
    assert_eq!(activity[0]["data"]["agent"]["id"], "alice");
    assert_eq!(activity[0]["data"]["agent"]["activity"], "available");
    assert_eq!(activity[0]["data"]["previous"], "offline");

    // The figures after recovery: everything delivered, nothing lost.
    assert_eq!(recovered["delivered"], events.len() as u64, "{recovered}");
    assert_eq!(
        recovered["failed_attempts"],
        (hits.len() - events.len()) as u64,
        "{recovered}"
    );
    assert_eq!(recovered["failed"], 0);
    assert_eq!(recovered["dropped"], 0);
    // The last failures were the slow answers, timed out; the last error
    // stays visible after the recovery.
    assert_eq!(
        a.slow.load(Ordering::SeqCst),
        0,
        "both slow answers were given"
    );
    assert_eq!(recovered["last_error"], "timeout: no answer in time");
    let metrics = h.admin_get("/metrics").await.text;
    assert!(
        metrics.contains(&format!(
            "switchboard_webhook_delivered_total{label} {}",
            events.len()
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("switchboard_webhook_failing_seconds{label} 0")));

    // B heard only what its filter names: both completions, the same events
    // (same ids) A got, signed with its own secret, each once.
    let b_events = verify(&b.hits(), SECRET_B);
    assert_eq!(b.hits().len(), 2, "B never failed, so nothing was retried");
    let b_ids: Vec<&Value> = b_events.iter().map(|v| &v["id"]).collect();
    let a_ids: Vec<&Value> = events
        .iter()
        .filter(|v| v["type"] == "task.completed")
        .map(|v| &v["id"])
        .collect();
    assert!(b_events.iter().all(|v| v["type"] == "task.completed"));
    let mut b_sorted = b_ids.clone();
    let mut a_sorted = a_ids.clone();
    b_sorted.sort_by_key(|v| v.to_string());
    a_sorted.sort_by_key(|v| v.to_string());
    assert_eq!(b_sorted, a_sorted);
    let b_stats = endpoint_stats(&h, 1).await;
    assert_eq!(b_stats["delivered"], 2);
    assert_eq!(b_stats["failed_attempts"], 0);
    assert!(b_stats["last_error"].is_null() && b_stats["failing_since"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_newest_events_and_counts_them() {
    let cfg = switchboard::Config {
        webhook_queue: 3,
        webhook_in_flight: 1,
        webhook_backoff: Duration::from_millis(50),
        ..test_config()
    };
    let (a, h, _) = start_hooked(FAIL, &["task.*", "message.*"], cfg).await;
    // No agent: the conversation waits, and its customer keeps writing.
    let (_s, mut ws, ack) = h.customer_with_message("Dana", "message 1").await;
    let cv = ack["conversation_id"].as_str().unwrap().to_owned();
    for n in 2..=10 {
        ws.say(&format!("message {n}")).await;
    }
    // task.created and ten message.created: three fit, eight are dropped.
    let full = eventually("the drops counted", async || {
        let s = endpoint_stats(&h, 0).await;
        (s["dropped"] == 8).then_some(s)
    })
    .await;
    assert_eq!(full["pending"], 3, "{full}");
    // Chat went on regardless: every message is in the history.
    assert_eq!(
        h.messages(&cv).await["messages"].as_array().map(Vec::len),
        Some(10)
    );

    a.recover(0);
    let done = eventually("the kept events delivered", async || {
        let s = endpoint_stats(&h, 0).await;
        (s["delivered"] == 3 && s["pending"] == 0).then_some(s)
    })
    .await;
    assert_eq!(done["dropped"], 8);
    let events = verify(&a.hits(), SECRET_A);
    // The oldest three were kept, in order.
    let kept: Vec<(String, Value)> = events
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_owned(),
                v["data"]["message"]["seq"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            ("task.created".to_owned(), Value::Null),
            ("message.created".to_owned(), 1.into()),
            ("message.created".to_owned(), 2.into()),
        ]
    );
    let metrics = h.admin_get("/metrics").await.text;
    let label = format!("{{url=\"{}\"}}", a.url.split('?').next().unwrap());
    assert!(
        metrics.contains(&format!("switchboard_webhook_dropped_total{label} 8")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_given_up_after_retry_for_and_counted_failed() {
    let cfg = switchboard::Config {
        webhook_backoff: Duration::from_millis(50),
        webhook_retry_for: Duration::from_millis(400),
        ..test_config()
    };
    let (a, h, _) = start_hooked(FAIL, &["task.created", "message.created"], cfg).await;
    h.customer_with_message("Dana", "hello").await;
    let s = eventually("both events given up", async || {
        let s = endpoint_stats(&h, 0).await;
        (s["failed"] == 2 && s["pending"] == 0).then_some(s)
    })
    .await;
    assert_eq!(s["delivered"], 0);
    assert!(s["failing_since"].is_string());
    let hits = a.hits();
    let events = verify(&hits, SECRET_A);
    assert_eq!(events.len(), 2);
    assert!(hits.len() > 2, "each was retried before it was given up");
    // Given up means no more attempts.
    let before = a.hits().len();
    tokio::time::sleep(QUIET).await;
    assert_eq!(a.hits().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_withdrawals_cancels_and_activity_are_told() {
    let cfg = switchboard::Config {
        offer_timeout: Duration::from_millis(300),
        // Not offered again to the agent who let it lapse within the test.
        reoffer_cooldown: Duration::from_secs(60),
        ..test_config()
    };
    let (a, h, _) = start_hooked(OK, &["task.*", "conversation.*", "agent.*"], cfg).await;
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;

    // An offer left to lapse.
    let (_s1, mut c1, ack1) = h.customer_with_message("Dana", "hello one").await;
    let cv1 = ack1["conversation_id"].as_str().unwrap().to_owned();
    desk.offer_for(&cv1).await;
    desk.recv_type("task.rescinded").await;
    // An accepted task, taken back when its agent goes offline.
    let (_s2, _c2, ack2) = h.customer_with_message("Eve", "hello two").await;
    let cv2 = ack2["conversation_id"].as_str().unwrap().to_owned();
    let offer2 = desk.offer_for(&cv2).await;
    let tk2 = offer2["task"]["id"].as_str().unwrap().to_owned();
    desk.accept(&tk2).await;
    desk.set_activity("offline").await;
    // The first customer gives up waiting.
    c1.send(serde_json::json!({"type": "leave"})).await;
    c1.recv_type("conversation.ended").await;

    let expected_cv1 = [
        "task.created",
        "task.offered",
        "task.timeout",
        "task.canceled",
        "conversation.ended",
    ];
    let expected_cv2 = [
        "task.created",
        "task.offered",
        "task.accepted",
        "task.requeued",
    ];
    let events = eventually("every event delivered", async || {
        let events = verify(&a.hits(), SECRET_A);
        let flows = by_conversation(&events);
        let activity = events
            .iter()
            .filter(|v| v["type"] == "agent.activity")
            .count();
        (flows.get(&cv1).map(Vec::len) == Some(expected_cv1.len())
            && flows.get(&cv2).map(Vec::len) == Some(expected_cv2.len())
            && activity == 2)
            .then_some(events)
    })
    .await;
    let flows = by_conversation(&events);
    assert_eq!(flows[&cv1], expected_cv1);
    assert_eq!(flows[&cv2], expected_cv2);
    let find = |cv: &str, ty: &str| {
        events
            .iter()
            .find(|v| conversation_of(v) == Some(cv) && v["type"] == ty)
            .cloned()
            .unwrap_or_else(|| panic!("no {ty} for {cv}"))
    };
    let timeout = find(&cv1, "task.timeout");
    assert_eq!(timeout["data"]["agent_id"], "alice");
    assert_eq!(timeout["data"]["task"]["state"], "queued");
    let requeued = find(&cv2, "task.requeued");
    assert_eq!(requeued["data"]["agent_id"], "alice");
    assert_eq!(requeued["data"]["reason"], "reassigned");
    assert_eq!(requeued["data"]["task"]["id"], tk2.as_str());
    let canceled = find(&cv1, "task.canceled");
    assert_eq!(canceled["data"]["task"]["state"], "canceled");
    assert!(canceled["data"].get("agent_id").is_none(), "{canceled}");
    // Activity in order for the agent: online, then offline.
    let moves: Vec<(Value, Value)> = events
        .iter()
        .filter(|v| v["type"] == "agent.activity")
        .map(|v| {
            (
                v["data"]["previous"].clone(),
                v["data"]["agent"]["activity"].clone(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            ("offline".into(), "available".into()),
            ("available".into(), "offline".into())
        ]
    );
    // The filter kept message events out.
    assert!(events
        .iter()
        .all(|v| !v["type"].as_str().unwrap().starts_with("message.")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_delivery_reports_are_told_as_message_status() {
    use providers::mock::Api;
    const DANA: &str = "+15551230000";
    let a = Receiver::start(OK).await;
    let url = a.url.clone();
    let env = providers::start(move |c| {
        c.webhooks = vec![endpoint(&url, SECRET_A, &["message.*"])];
    });
    let (_alice, mut ws) = env.agent("alice").await;
    env.sms_in(&providers::sms_params("SM0001", DANA, "Where is my order?"))
        .await;
    let (_offer, _assigned, cv, task) = providers::take(&mut ws).await;
    let mid = providers::send_ok(&mut ws, &cv, "Checking now.", &[]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    let sid = sends[0]
        .provider_id
        .clone()
        .expect("the mock answered a sid");
    providers::wait_status(&mut ws, &mid, "sent").await;
    env.sms_status(&providers::sms_status_params(&sid, DANA, "delivered", None))
        .await;
    providers::wait_status(&mut ws, &mid, "delivered").await;

    let expected = [
        "message.created",
        "message.created",
        "message.status",
        "message.status",
    ];
    let events = eventually("the statuses delivered", async || {
        let events = verify(&a.hits(), SECRET_A);
        (by_conversation(&events).get(&cv).map(Vec::len) == Some(expected.len())).then_some(events)
    })
    .await;
    assert_eq!(by_conversation(&events)[&cv], expected);
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|v| v["type"] == "message.status")
        .collect();
    for (v, status) in statuses.iter().zip(["sent", "delivered"]) {
        assert_eq!(v["data"]["status"], status, "{v}");
        assert_eq!(v["data"]["message_id"], mid.as_str());
        assert_eq!(v["data"]["seq"], 2);
        assert_eq!(v["data"]["task_id"], task.as_str());
        assert!(v["data"]["error"].is_null());
    }
    assert_eq!(events[0]["data"]["channel"], "sms");
    assert_eq!(events[0]["data"]["message"]["text"], "Where is my order?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_and_parking_are_told_with_who_let_go() {
    let (a, h, _) = start_hooked(OK, &["task.*"], test_config()).await;
    // A cold transfer from Alice to Bob, then Bob parks it.
    let (bob, mut desk_a, cv, task) = alice_holds_a_task(&h).await;
    let mut desk_b = h.agent_online(&bob).await;
    let moved = desk_a
        .call(serde_json::json!({"type": "transfer", "task_id": task, "to": {"agent": "bob"}, "mode": "cold"}))
        .await;
    assert_eq!(moved["type"], "task.transferred", "{moved}");
    desk_b.take_offer().await;
    let parked = desk_b
        .call(serde_json::json!({"type": "park", "task_id": task}))
        .await;
    assert_eq!(parked["type"], "task.parked", "{parked}");

    let expected = [
        "task.created",
        "task.offered",
        "task.accepted",
        "task.transferred",
        "task.offered",
        "task.accepted",
        "task.parked",
    ];
    let events = eventually("every event delivered", async || {
        let events = verify(&a.hits(), SECRET_A);
        (by_conversation(&events).get(&cv).map(Vec::len) == Some(expected.len())).then_some(events)
    })
    .await;
    assert_eq!(by_conversation(&events)[&cv], expected);
    let of = |ty: &str| {
        events
            .iter()
            .find(|v| v["type"] == ty)
            .cloned()
            .unwrap_or_else(|| panic!("no {ty}"))
    };
    let transferred = of("task.transferred");
    assert_eq!(transferred["data"]["agent_id"], "alice", "{transferred}");
    assert_eq!(transferred["data"]["reason"], "cold", "{transferred}");
    let parked = of("task.parked");
    assert_eq!(parked["data"]["agent_id"], "bob", "{parked}");
    assert_eq!(parked["data"]["task"]["state"], "parked", "{parked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_actions_are_told_with_who_did_them() {
    use reqwest::Method;
    use serde_json::json;
    let (a, h, _) = start_hooked(OK, &["supervisor.action"], test_config()).await;
    let (bob, mut desk_a, cv, task) = alice_holds_a_task(&h).await;

    // Monitored, force-transferred to bob, force-completed; alice's
    // capacity and activity set; the monitoring socket closes.
    let mut sup = Ws::connect(&format!("{}/v1/supervisor/ws?token={}", h.ws_base, h.admin)).await;
    sup.send(json!({"type": "monitor", "conversation_id": cv}))
        .await;
    sup.recv_type("monitoring").await;
    async fn admin(h: &Harness, method: Method, path: String, body: Value) {
        let r = h.request(method, &path, Some(&h.admin), Some(&body)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    let mut desk_b = h.agent_online(&bob).await;
    admin(
        &h,
        Method::POST,
        format!("/v1/tasks/{task}/transfer"),
        json!({"to": {"agent": "bob"}, "note": "VIP"}),
    )
    .await;
    desk_a.recv_type("task.transferred").await;
    desk_b.offer_for(&cv).await;
    desk_b.accept(&task).await;
    admin(
        &h,
        Method::POST,
        format!("/v1/tasks/{task}/complete"),
        json!({"disposition": "spam"}),
    )
    .await;
    desk_b.recv_type("task.completed").await;
    admin(
        &h,
        Method::PATCH,
        "/v1/agents/alice".into(),
        json!({"capacity": {"webchat": 2}}),
    )
    .await;
    admin(
        &h,
        Method::PATCH,
        "/v1/agents/alice".into(),
        json!({"activity": "break"}),
    )
    .await;
    drop(sup);

    let of = |events: &[Value], key: &str, id: &str| -> Vec<String> {
        events
            .iter()
            .filter(|v| v["data"][key] == id)
            .map(|v| s(&v["data"]["action"]))
            .collect()
    };
    let events = eventually("every action delivered", async || {
        let events = verify(&a.hits(), SECRET_A);
        (of(&events, "conversation_id", &cv).len() == 4
            && of(&events, "agent_id", "alice").len() == 2)
            .then_some(events)
    })
    .await;
    // In the order they were done, per conversation and per agent.
    assert_eq!(
        of(&events, "conversation_id", &cv),
        [
            "conversation.monitor",
            "task.transfer",
            "task.complete",
            "conversation.unmonitor"
        ]
    );
    assert_eq!(
        of(&events, "agent_id", "alice"),
        ["agent.capacity", "agent.activity"]
    );
    for v in &events {
        assert_eq!(v["type"], "supervisor.action", "{v}");
        assert_eq!(v["data"]["by"], "admin", "{v}");
        assert!(v["data"]["at"].is_string(), "{v}");
    }
    let find = |action: &str| {
        events
            .iter()
            .find(|v| v["data"]["action"] == action)
            .map(|v| v["data"].clone())
            .unwrap_or_else(|| panic!("no {action}"))
    };
    let moved = find("task.transfer");
    assert_eq!(moved["task_id"], task.as_str(), "{moved}");
    assert_eq!(moved["to"], json!({"agent": "bob"}), "{moved}");
    assert_eq!(moved["note"], "VIP", "{moved}");
    let done = find("task.complete");
    assert_eq!(done["task_id"], task.as_str(), "{done}");
    assert_eq!(done["disposition"], "spam", "{done}");
    assert_eq!(find("agent.capacity")["capacity"]["webchat"], 2);
    assert_eq!(find("agent.activity")["activity"], "break");
    assert_eq!(events.len(), 6, "{events:?}");
}

/// Events not yet delivered when the broker stops are journaled and
/// delivered after the restart (at least once, with their ids and bodies),
/// in order: the receiver fails through a whole conversation, the broker
/// stops, and starts again on the same data dir with the receiver up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_not_delivered_before_a_restart_are_delivered_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = switchboard::Config {
        data_dir: Some(dir.path().to_owned()),
        webhook_timeout: Duration::from_millis(300),
        webhook_backoff: Duration::from_millis(50),
        webhook_in_flight: 2,
        ..test_config()
    };
    let (a, h, cfg) = start_hooked(FAIL, &[], cfg).await;
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (_s, mut c, ack) = h.customer_with_message("Dana", "hello one").await;
    let cv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&cv).await;
    let tk = s(&offer["task"]["id"]);
    desk.accept(&tk).await;
    desk.agent_send(&cv, "reply one", "r1").await;
    c.recv_message_text("reply one").await;
    desk.end(&cv).await;
    desk.complete(&tk, "resolved", "").await;
    let stats = eventually("attempts failing", async || {
        let s = endpoint_stats(&h, 0).await;
        (s["failed_attempts"].as_u64() >= Some(2)).then_some(s)
    })
    .await;
    assert_eq!(stats["delivered"], 0, "{stats}");
    let pending = stats["pending"].as_u64().expect("pending");
    assert!(pending >= 8, "{stats}");
    drop((desk, c));
    drop(h);
    let tried_before: Vec<Value> = a.hits().iter().map(Hit::json).collect();
    let before = a.hits().len();

    a.recover(0);
    let h = start_with(cfg);
    let events = eventually("every pending event delivered", async || {
        let after = a.hits()[before..].to_vec();
        let events = verify(&after, SECRET_A);
        let flows = by_conversation(&events);
        (flows.get(&cv).map(Vec::len) == Some(8)).then_some(events)
    })
    .await;
    let flows = by_conversation(&events);
    assert_eq!(
        flows[&cv],
        [
            "task.created",
            "message.created",
            "task.offered",
            "task.accepted",
            "message.created",
            "task.wrapping",
            "conversation.ended",
            "task.completed",
        ],
        "in order, each once"
    );
    // The events tried before the stop come again with the same id and body.
    for old in &tried_before {
        let again = events
            .iter()
            .find(|v| v["id"] == old["id"])
            .unwrap_or_else(|| panic!("{} not delivered after the restart", old["id"]));
        assert_eq!(again, old);
    }
    let stats = eventually("the queue empty", async || {
        let s = endpoint_stats(&h, 0).await;
        (s["pending"] == 0).then_some(s)
    })
    .await;
    assert!(stats["delivered"].as_u64() >= Some(8), "{stats}");
}

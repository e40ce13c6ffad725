//! A provider's webhook that arrives at a standby ends there: the standby
//! makes the checks the active node makes (the channel configured, the
//! body's size, the signature, the body) and hands the parsed events over
//! the bus between nodes to the active node, which downloads their media
//! and takes them as it takes its own webhooks; the provider gets the
//! active node's answer. Real processes on a real nats-server, the
//! providers' side played by the mock provider of the channel tests.
//!
//! The tests run one at a time (each starts its own nats-server and nodes).

mod common;
mod providers;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use common::cluster::{active_and_edge, edge, relay_opens, TestCluster};
use common::*;
use providers::mock::{self, MediaAuth, Mock};
use providers::{
    sign, sms_media_params, sms_params, wa_text_webhook, Params, PUBLIC, SMS_FROM, SMS_INBOUND,
    TWIML_EMPTY, TW_SECRET, WA_SECRET, WA_VERIFY, WA_WEBHOOK,
};

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Both channels configured as the channel tests configure them, against
/// `mock`, on every node (a cluster's nodes share their settings).
fn channels(mock: &Mock) -> Vec<(&'static str, String)> {
    vec![
        ("SWITCHBOARD_PUBLIC_URL", PUBLIC.into()),
        ("SWITCHBOARD_TWILIO_ACCOUNT_SID", mock::ACCOUNT_SID.into()),
        ("SWITCHBOARD_TWILIO_AUTH_TOKEN", TW_SECRET.into()),
        ("SWITCHBOARD_SMS_FROM", SMS_FROM.into()),
        ("SWITCHBOARD_TWILIO_API_BASE", mock.base_url()),
        ("SWITCHBOARD_WHATSAPP_TOKEN", mock::WA_TOKEN.into()),
        ("SWITCHBOARD_WHATSAPP_APP_SECRET", WA_SECRET.into()),
        ("SWITCHBOARD_WHATSAPP_VERIFY_TOKEN", WA_VERIFY.into()),
        (
            "SWITCHBOARD_WHATSAPP_PHONE_NUMBER_ID",
            mock::PHONE_NUMBER_ID.into(),
        ),
        ("SWITCHBOARD_GRAPH_API_BASE", mock.base_url()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An HTTP answer: status, body text.
async fn answer(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.expect("a body"))
}

/// A Twilio webhook to `h`, signed over the public URL (`signature`:
/// another one).
async fn twilio(h: &Harness, params: &Params, signature: Option<&str>) -> (u16, String) {
    let signed = sign::twilio_signature(TW_SECRET, &format!("{PUBLIC}{SMS_INBOUND}"), params);
    let r = h
        .http
        .post(h.url(SMS_INBOUND))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature.unwrap_or(&signed))
        .body(serde_urlencoded::to_string(params).expect("form"))
        .send()
        .await
        .expect("POST");
    answer(r).await
}

/// A WhatsApp webhook to `h`, signed with the app secret.
async fn whatsapp(h: &Harness, v: &Value) -> (u16, String) {
    let body = v.to_string().into_bytes();
    let r = h
        .http
        .post(h.url(WA_WEBHOOK))
        .header("Content-Type", "application/json")
        .header(
            "X-Hub-Signature-256",
            sign::meta_signature(WA_SECRET, &body),
        )
        .body(body)
        .send()
        .await
        .expect("POST");
    answer(r).await
}

/// The error code of a JSON error body.
fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    s(&v["error"]["code"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_at_the_standby_is_checked_there_and_taken_by_the_active_node() {
    let _serial = SERIAL.lock().await;
    let mock = Mock::start();
    let env = channels(&mock);
    let (cluster, active, b) = active_and_edge(&pairs(&env)).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 4, &[]).await;
    let mut desk = a.agent_online(&alice).await;
    let (_nats, mut opens) = relay_opens(&cluster).await;

    // An MMS through the standby: 200 with Twilio's empty TwiML once the
    // active node holds it, its picture downloaded there.
    let jpeg = providers::sample(20_000);
    mock.add_media("ME0001", "image/jpeg", jpeg.clone(), MediaAuth::TwilioBasic);
    let media = [(mock.media_url("ME0001"), "image/jpeg")];
    let params = sms_media_params("SM0001", "+15557770001", "see photo", &media);
    assert_eq!(twilio(&b, &params, None).await, (200, TWIML_EMPTY.into()));
    let (offer, assigned) = desk.take_offer().await;
    assert_eq!(offer["task"]["channel"], "sms", "{offer}");
    let first = &assigned["history"][0];
    assert_eq!(first["text"], "see photo", "{first}");
    let attachment = &first["attachments"][0];
    assert_eq!(attachment["size"], jpeg.len() as u64, "{first}");
    let got = a
        .http
        .get(a.url(&format!("/v1/attachments/{}", s(&attachment["id"]))))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("GET");
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.bytes().await.expect("bytes"),
        jpeg,
        "the picture as stored"
    );
    let conv = s(&assigned["task"]["conversation_id"]);

    // Twilio sends it again (it got no answer in time, say): stored once.
    assert_eq!(twilio(&b, &params, None).await.0, 200);
    let more = sms_params("SM0002", "+15557770001", "anyone?");
    assert_eq!(twilio(&b, &more, None).await.0, 200);
    desk.recv_message_text("anyone?").await;
    assert_eq!(
        texts(&a.messages(&conv).await["messages"]),
        vec!["see photo", "anyone?"]
    );

    // A WhatsApp message through the standby: Meta's answer.
    let wa = wa_text_webhook("wamid.1", "15557770002", "Dana", "hola");
    let (status, body) = whatsapp(&b, &wa).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["status"],
        "received"
    );
    let (offer, _) = desk.take_offer().await;
    assert_eq!(offer["task"]["channel"], "whatsapp", "{offer}");
    // Meta's subscription check, answered by the standby.
    let check = |token: &str| {
        format!(
            "{}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=abc123",
            b.url(WA_WEBHOOK)
        )
    };
    let r = answer(b.http.get(check(WA_VERIFY)).send().await.expect("GET")).await;
    assert_eq!(r, (200, "abc123".into()));
    let (status, body) = answer(b.http.get(check("wrong")).send().await.expect("GET")).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (403, "bad_signature"),
        "{body}"
    );

    // Bad input is refused at the standby, with the active node's answers.
    let forged = sms_params("SM0003", "+15557770001", "forged");
    let (status, body) = twilio(&b, &forged, Some("bm90IGEgc2lnbmF0dXJl")).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (403, "bad_signature"),
        "{body}"
    );
    let huge = sms_params("SM0004", "+15557770001", &"x".repeat(2 * 1024 * 1024));
    assert_eq!(twilio(&b, &huge, None).await.0, 413);
    let r = b
        .http
        .post(b.url(WA_WEBHOOK))
        .header(
            "X-Hub-Signature-256",
            sign::meta_signature(WA_SECRET, b"{not json"),
        )
        .body("{not json")
        .send()
        .await
        .expect("POST");
    let (status, body) = answer(r).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (400, "bad_request"),
        "{body}"
    );
    assert!(
        a.messages(&conv).await["messages"]
            .to_string()
            .find("forged")
            .is_none(),
        "a forged webhook was taken"
    );

    // Nothing of it was relayed (every other call here went to node-0).
    let relayed = tokio::time::timeout(Duration::from_millis(300), opens.next()).await;
    assert!(relayed.is_err(), "a webhook was relayed");

    // What is no webhook gets the same answer on either node: another
    // path under /v1/channels (relayed), a webhook's path with the wrong
    // method.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/channels/nowhere"),
        (reqwest::Method::GET, SMS_INBOUND),
    ] {
        let on = |h: &Harness| h.http.request(method.clone(), h.url(path)).send();
        let (on_a, on_b) = (on(a).await.expect("a"), on(&b).await.expect("b"));
        assert_eq!(on_a.status(), on_b.status(), "{method} {path}");
    }
}

/// The active node refuses what the standby checked: the provider gets the
/// active node's refusal (here its channel is not configured there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_nodes_refusal_reaches_the_provider_through_the_standby() {
    let _serial = SERIAL.lock().await;
    let mock = Mock::start();
    let env = channels(&mock);
    let mut cluster = TestCluster::new(2);
    cluster.start_node_with(0, &[]);
    let active = cluster.wait_active(&[], Duration::from_secs(20));
    cluster.start_node_with(1, &pairs(&env));
    let b = edge(&mut cluster, 1).await;
    let params = sms_params("SM0100", "+15557770009", "hello");
    let (status, body) = twilio(&b, &params, None).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (404, "channel_disabled"),
        "{body}"
    );
    // The same as the active node answers a webhook of its own.
    let (status, body) = twilio(&active.h, &params, None).await;
    assert_eq!((status, code(&body).as_str()), (404, "channel_disabled"));
}

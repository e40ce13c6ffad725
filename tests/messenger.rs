//! Messenger channel (Meta Send API / webhook format) over real sockets,
//! against the mock provider.
mod common;
mod providers;

use std::time::Duration;

use common::{s, QUIET};
use providers::mock::{Api, Kind, MediaAuth};
use providers::*;
use serde_json::json;

const PSID: &str = "PSID1";
const PSID2: &str = "PSID2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_full_life_cycle() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;

    env.fb_in(&fb_text_webhook("m_in1", PSID, "hi there")).await;
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["channel"], "messenger", "{offer}");
    assert_eq!(offer["task"]["customer"]["address"], PSID, "{offer}");
    assert_eq!(offer["task"]["preview"], "hi there", "{offer}");
    let conv = s(&offer["task"]["conversation_id"]);
    let task = s(&offer["task"]["id"]);
    let assigned = ws.accept(&task).await;
    assert_eq!(assigned["history"][0]["text"], "hi there", "{assigned}");

    // Reply through the Send API.
    let mid = send_ok(&mut ws, &conv, "Hello! How can I help?", &[]).await;
    let sends = env.mock.wait_sends(Api::Messenger, 1).await;
    let out = &sends[0];
    assert_eq!(out.path, "/me/messages");
    assert_eq!(
        out.query_value("access_token").as_deref(),
        Some("page-token")
    );
    let body = out.json();
    assert_eq!(body["recipient"]["id"], PSID, "{body}");
    assert_eq!(body["messaging_type"], "RESPONSE", "{body}");
    assert_eq!(body["message"]["text"], "Hello! How can I help?", "{body}");

    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "sent", "{st}");

    // Delivery, then read receipts.
    let out_mid = out.provider_id.clone().expect("message_id");
    env.fb_in(&fb_envelope(vec![vec![fb_delivery(PSID, &[&out_mid])]]))
        .await;
    let st = wait_status(&mut ws, &mid, "delivered").await;
    assert_eq!(st["conversation_id"], conv.as_str());
    env.fb_in(&fb_envelope(vec![vec![fb_read(PSID, now_ms() + 60_000)]]))
        .await;
    wait_status(&mut ws, &mid, "read").await;
    let hist = env.history(&conv).await;
    assert_eq!(hist[1]["status"], "read", "{hist:?}");
    assert_eq!(hist[1]["agent_id"], alice.id.as_str());

    env.fb_in(&fb_text_webhook("m_in2", PSID, "thanks")).await;
    let m = customer_message(&mut ws, &conv).await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("thanks"), Some(3))
    );

    ws.end(&conv).await;
    ws.complete(&task, "resolved", "").await;
    let c = env.h.conversation(&conv).await;
    assert_eq!(c["state"], "ended", "{c}");
    assert_eq!(c["channel"], "messenger", "{c}");
    assert_eq!(c["task"]["state"], "completed", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_verify_handshake() {
    let env = start(|_| {});
    let r = env
        .verify(
            FB_WEBHOOK,
            &[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", FB_VERIFY),
                ("hub.challenge", "CHALLENGE_ACCEPTED"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert_eq!(r.text, "CHALLENGE_ACCEPTED");

    let r = env
        .verify(
            FB_WEBHOOK,
            &[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", WA_VERIFY),
                ("hub.challenge", "1"),
            ],
        )
        .await;
    r.assert_error(403, "bad_signature", "WhatsApp's verify token");
    let r = env
        .verify(
            FB_WEBHOOK,
            &[("hub.verify_token", FB_VERIFY), ("hub.challenge", "1")],
        )
        .await;
    r.assert_error(403, "bad_signature", "no hub.mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_bad_or_missing_signature_changes_nothing() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let body = fb_text_webhook("m_sig", PSID, "hi")
        .to_string()
        .into_bytes();

    let r = env.post_meta(FB_WEBHOOK, &body, None).await;
    r.assert_error(403, "bad_signature", "no signature");
    let r = env
        .post_meta(
            FB_WEBHOOK,
            &body,
            Some(&sign::meta_signature(WA_SECRET, &body)),
        )
        .await;
    r.assert_error(403, "bad_signature", "WhatsApp's app secret");
    let mut tampered = body.clone();
    let at = tampered.len() - 5;
    tampered[at] ^= 0x01;
    let r = env
        .post_meta(
            FB_WEBHOOK,
            &tampered,
            Some(&sign::meta_signature(FB_SECRET, &body)),
        )
        .await;
    r.assert_error(403, "bad_signature", "tampered body");
    assert_quiet(&mut ws, "offer after rejected webhooks").await;

    let r = env
        .post_meta(
            FB_WEBHOOK,
            &body,
            Some(&sign::meta_signature(FB_SECRET, &body)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    ws.offer().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_batch_duplicates_and_echoes() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;

    // Two entries, two customers, one echo of the page's own message.
    let batch = fb_envelope(vec![
        vec![
            fb_text("m_b1", PSID, "first"),
            fb_echo("m_echo1", PSID, "sent from the page inbox"),
        ],
        vec![
            fb_text("m_b2", PSID2, "hello"),
            fb_text("m_b3", PSID, "second"),
        ],
    ]);
    env.fb_in(&batch).await;
    let (o1, a1, c1, _) = take(&mut ws).await;
    let (_o2, a2, c2, _) = take(&mut ws).await;
    let ((p1_conv, p1_hist), (p2_conv, p2_hist)) = if o1["task"]["customer"]["address"] == PSID {
        ((c1, a1["history"].clone()), (c2, a2["history"].clone()))
    } else {
        ((c2, a2["history"].clone()), (c1, a1["history"].clone()))
    };
    assert_eq!(
        common::texts(&p1_hist),
        vec!["first", "second"],
        "echo ignored: {p1_hist}"
    );
    assert_eq!(common::texts(&p2_hist), vec!["hello"]);

    // Redelivered: nothing new. An echo alone: nothing either.
    env.fb_in(&batch).await;
    env.fb_in(&fb_envelope(vec![vec![fb_echo(
        "m_echo2",
        PSID2,
        "page says hi",
    )]]))
    .await;
    assert_quiet(&mut ws, "a duplicate or an echo").await;
    assert_eq!(env.history(&p1_conv).await.len(), 2);
    assert_eq!(env.history(&p2_conv).await.len(), 1);

    // A malformed event refuses the whole batch.
    let bad = fb_envelope(vec![vec![
        fb_text("m_b4", PSID2, "ok"),
        json!({"recipient": {"id": PAGE_ID}, "timestamp": now_ms(), "message": {"mid": "m_b5", "text": "no sender"}}),
    ]]);
    let r = env.fb_webhook(&bad).await;
    r.assert_error(400, "bad_request", "event without a sender");
    assert_quiet(&mut ws, "part of a refused batch").await;
    env.fb_in(&fb_text_webhook("m_b4", PSID2, "ok")).await;
    let m = customer_message(&mut ws, &p2_conv).await;
    assert_eq!(m["text"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_media_both_ways() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;

    let jpeg = sample(12_345);
    env.mock
        .add_media("fbimg", "image/jpeg", jpeg.clone(), MediaAuth::None);
    env.fb_in(&fb_envelope(vec![vec![fb_event(
        PSID,
        json!({"mid": "m_media1", "attachments": [
            {"type": "image", "payload": {"url": env.mock.media_url("fbimg")}},
        ]}),
    )]]))
    .await;
    assert_eq!(
        env.mock.of_kind(Kind::Media).len(),
        1,
        "{}",
        env.mock.dump()
    );
    let (_o, assigned, conv, _t) = take(&mut ws).await;
    let att = &assigned["history"][0]["attachments"][0];
    assert_eq!(att["content_type"], "image/jpeg", "{assigned}");
    assert_eq!(att["size"], jpeg.len() as u64, "{assigned}");
    let got = env
        .get(
            &format!("/v1/attachments/{}", s(&att["id"])),
            Some(&alice.token),
        )
        .await;
    assert_eq!(got.bytes, jpeg);

    // Outbound: the text, then each attachment, as separate requests.
    let png = sample(2_000);
    let pdf = sample(3_000);
    let a_png = env
        .upload(&alice.token, "pic.png", "image/png", png.clone())
        .await;
    let a_pdf = env
        .upload(&alice.token, "doc.pdf", "application/pdf", pdf.clone())
        .await;
    let mid = send_ok(&mut ws, &conv, "Files attached", &[&a_png, &a_pdf]).await;
    let sends = env.mock.wait_sends(Api::Messenger, 3).await;
    let bodies: Vec<_> = sends.iter().map(|r| r.json()).collect();
    assert_eq!(bodies[0]["message"]["text"], "Files attached", "{bodies:?}");
    for (b, ty, bytes, id) in [
        (&bodies[1], "image", &png, &a_png),
        (&bodies[2], "file", &pdf, &a_pdf),
    ] {
        assert_eq!(b["recipient"]["id"], PSID, "{b}");
        assert_eq!(b["messaging_type"], "RESPONSE", "{b}");
        assert_eq!(b["message"]["attachment"]["type"], ty, "{b}");
        let link = s(&b["message"]["attachment"]["payload"]["url"]);
        assert_eq!(&parse_link(&link).0, id);
        let got = env.get(&env.local(&link), None).await;
        assert_eq!(got.status, 200, "{link}");
        assert_eq!(&got.bytes, bytes);
    }
    wait_status(&mut ws, &mid, "sent").await;

    // Messenger files are limited to 25 MB.
    let big = env
        .upload(
            &alice.token,
            "big.zip",
            "application/zip",
            sample(25_000_001),
        )
        .await;
    send_err(&mut ws, &conv, "", &[&big], "attachment_too_large").await;
    env.mock.assert_sends_stay(Api::Messenger, 3, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_text_limit_is_2000_characters() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    env.fb_in(&fb_text_webhook("m_t1", PSID, "hi")).await;
    let (_o, _a, conv, _t) = take(&mut ws).await;

    let longest = "€".repeat(2000);
    send_ok(&mut ws, &conv, &longest, &[]).await;
    let sends = env.mock.wait_sends(Api::Messenger, 1).await;
    assert_eq!(sends[0].json()["message"]["text"], longest.as_str());
    send_err(&mut ws, &conv, &"a".repeat(2001), &[], "text_too_long").await;
    env.mock.assert_sends_stay(Api::Messenger, 1, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_messaging_window() {
    let env = start(|c| c.messaging_window = Duration::from_millis(300));
    let (_alice, mut ws) = env.agent("alice").await;
    env.fb_in(&fb_text_webhook("m_w1", PSID, "hi")).await;
    let (_o, _a, conv, _t) = take(&mut ws).await;
    send_ok(&mut ws, &conv, "inside", &[]).await;
    env.mock.wait_sends(Api::Messenger, 1).await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    send_err(&mut ws, &conv, "outside", &[], "outside_messaging_window").await;
    env.mock.assert_sends_stay(Api::Messenger, 1, QUIET).await;

    env.fb_in(&fb_text_webhook("m_w2", PSID, "back")).await;
    customer_message(&mut ws, &conv).await;
    send_ok(&mut ws, &conv, "welcome back", &[]).await;
    env.mock.wait_sends(Api::Messenger, 2).await;

    // No outbound to someone outside the window.
    let v = ws
        .call(json!({"type": "outbound", "channel": "messenger", "to": PSID2, "text": "hello"}))
        .await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("outside_messaging_window")),
        "{v}"
    );
    env.mock.assert_sends_stay(Api::Messenger, 2, QUIET).await;
}

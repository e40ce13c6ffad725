//! WhatsApp channel (Meta Cloud API format) over real sockets, against the
//! mock provider: webhooks signed as Meta signs them, replies checked as the
//! Graph API receives them.
mod common;
mod providers;

use std::time::Duration;

use common::{s, QUIET};
use providers::mock::{Api, Kind, MediaAuth};
use providers::*;
use serde_json::json;

const DANA: &str = "15551230000";
const ELI: &str = "15551230001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_full_life_cycle() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;

    env.wa_in(&wa_text_webhook(
        "wamid.IN1",
        DANA,
        "Dana",
        "hi, my parcel?",
    ))
    .await;
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["channel"], "whatsapp", "{offer}");
    assert_eq!(offer["task"]["customer"]["address"], DANA, "{offer}");
    assert_eq!(offer["task"]["customer"]["name"], "Dana", "{offer}");
    assert_eq!(offer["task"]["preview"], "hi, my parcel?", "{offer}");
    let conv = s(&offer["task"]["conversation_id"]);
    let task = s(&offer["task"]["id"]);
    let assigned = ws.accept(&task).await;
    assert_eq!(
        assigned["history"][0]["text"], "hi, my parcel?",
        "{assigned}"
    );

    // Reply in the Cloud API's format.
    let mid = send_ok(&mut ws, &conv, "Hello Dana, checking now.", &[]).await;
    let sends = env.mock.wait_sends(Api::Whatsapp, 1).await;
    let out = &sends[0];
    assert_eq!(out.path, "/1099/messages");
    assert_eq!(out.header("authorization"), Some("Bearer wa-token"));
    assert!(
        out.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{}",
        out.describe()
    );
    let body = out.json();
    assert_eq!(body["messaging_product"], "whatsapp", "{body}");
    assert_eq!(body["to"], DANA, "{body}");
    assert_eq!(body["type"], "text", "{body}");
    assert_eq!(body["text"]["body"], "Hello Dana, checking now.", "{body}");

    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "sent", "{st}");
    assert!(st["error"].is_null(), "{st}");

    // Status webhooks → delivered, then read.
    let wamid = out.provider_id.clone().expect("wamid");
    env.wa_in(&wa_status_webhook(wa_status(&wamid, "delivered", DANA)))
        .await;
    let st = wait_status(&mut ws, &mid, "delivered").await;
    assert_eq!(st["conversation_id"], conv.as_str());
    env.wa_in(&wa_status_webhook(wa_status(&wamid, "read", DANA)))
        .await;
    wait_status(&mut ws, &mid, "read").await;
    let hist = env.history(&conv).await;
    assert_eq!(hist[1]["status"], "read", "{hist:?}");
    assert_eq!(hist[1]["agent_id"], alice.id.as_str());

    env.wa_in(&wa_text_webhook("wamid.IN2", DANA, "Dana", "thanks!"))
        .await;
    let m = customer_message(&mut ws, &conv).await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("thanks!"), Some(3))
    );

    ws.end(&conv).await;
    ws.complete(&task, "resolved", "").await;
    let c = env.h.conversation(&conv).await;
    assert_eq!(c["state"], "ended", "{c}");
    assert_eq!(c["channel"], "whatsapp", "{c}");
    assert_eq!(c["task"]["state"], "completed", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_verify_handshake() {
    let env = start(|_| {});
    let r = env
        .verify(
            WA_WEBHOOK,
            &[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", WA_VERIFY),
                ("hub.challenge", "1158201444"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.starts_with("text/plain"), "{r:?}");
    assert_eq!(r.text, "1158201444");

    for (what, query) in [
        (
            "wrong token",
            vec![
                ("hub.mode", "subscribe"),
                ("hub.verify_token", "nope"),
                ("hub.challenge", "1"),
            ],
        ),
        (
            "Messenger's token",
            vec![
                ("hub.mode", "subscribe"),
                ("hub.verify_token", FB_VERIFY),
                ("hub.challenge", "1"),
            ],
        ),
        (
            "wrong mode",
            vec![
                ("hub.mode", "unsubscribe"),
                ("hub.verify_token", WA_VERIFY),
                ("hub.challenge", "1"),
            ],
        ),
        (
            "no token",
            vec![("hub.mode", "subscribe"), ("hub.challenge", "1")],
        ),
    ] {
        let r = env.verify(WA_WEBHOOK, &query).await;
        r.assert_error(403, "bad_signature", what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_bad_or_missing_signature_changes_nothing() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let body = wa_text_webhook("wamid.SIG1", DANA, "Dana", "hi")
        .to_string()
        .into_bytes();
    let good = sign::meta_signature(WA_SECRET, &body);
    let other = wa_text_webhook("wamid.SIG1", DANA, "Dana", "hj")
        .to_string()
        .into_bytes();

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no signature", None),
        (
            "another secret",
            Some(sign::meta_signature(FB_SECRET, &body)),
        ),
        (
            "another body",
            Some(sign::meta_signature(WA_SECRET, &other)),
        ),
        (
            "hex without the sha256= prefix",
            Some(good["sha256=".len()..].to_string()),
        ),
        (
            "sha1 prefix",
            Some(format!("sha1={}", &good["sha256=".len()..])),
        ),
        ("empty", Some(String::new())),
    ];
    for (what, sig) in cases {
        let r = env.post_meta(WA_WEBHOOK, &body, sig.as_deref()).await;
        r.assert_error(403, "bad_signature", what);
    }
    assert_quiet(&mut ws, "offer after rejected webhooks").await;
    assert_eq!(env.stats().await["conversations"]["opened"], 0);

    let r = env.post_meta(WA_WEBHOOK, &body, Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    ws.offer().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_batch_and_duplicates() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;

    // Two entries, three messages from two customers, and a status.
    let batch = wa_envelope(vec![
        vec![wa_messages_change(
            &[(DANA, "Dana"), (ELI, "Eli")],
            vec![
                wa_text("wamid.B1", DANA, "one"),
                wa_text("wamid.B2", ELI, "uno"),
            ],
        )],
        vec![
            wa_messages_change(&[(DANA, "Dana")], vec![wa_text("wamid.B3", DANA, "two")]),
            wa_statuses_change(vec![wa_status("wamid.UNKNOWN", "delivered", DANA)]),
        ],
    ]);
    env.wa_in(&batch).await;
    let (o1, a1, c1, _t1) = take(&mut ws).await;
    let (o2, a2, c2, _t2) = take(&mut ws).await;
    let (dana_conv, dana_hist, eli_conv, eli_hist) = if o1["task"]["customer"]["address"] == DANA {
        (c1, &a1["history"], c2, &a2["history"])
    } else {
        assert_eq!(o2["task"]["customer"]["address"], DANA, "{o2}");
        (c2, &a2["history"], c1, &a1["history"])
    };
    assert_eq!(common::texts(dana_hist), vec!["one", "two"], "{dana_hist}");
    assert_eq!(common::texts(eli_hist), vec!["uno"], "{eli_hist}");

    // Meta retries the whole batch: nothing stored twice.
    let r = env.wa_webhook(&batch).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_quiet(&mut ws, "a duplicate").await;

    // A batch with a seen and a new message: only the new one.
    env.wa_in(&wa_envelope(vec![vec![wa_messages_change(
        &[(DANA, "Dana")],
        vec![
            wa_text("wamid.B3", DANA, "two"),
            wa_text("wamid.B4", DANA, "three"),
        ],
    )]]))
    .await;
    let m = customer_message(&mut ws, &dana_conv).await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("three"), Some(3))
    );
    assert_quiet(&mut ws, "anything else").await;

    // A batch with one malformed message (no id, no from) is refused whole.
    let mut broken = wa_text("wamid.B6", ELI, "broken");
    broken.as_object_mut().unwrap().remove("id");
    broken.as_object_mut().unwrap().remove("from");
    let bad = wa_envelope(vec![vec![wa_messages_change(
        &[(ELI, "Eli")],
        vec![wa_text("wamid.B5", ELI, "dos"), broken],
    )]]);
    let r = env.wa_webhook(&bad).await;
    r.assert_error(400, "bad_request", "batch with a malformed message");
    assert_quiet(&mut ws, "part of a refused batch").await;
    // Not JSON at all.
    let junk = b"{\"object\":\"whatsapp_business_account\",\"entry\":[".to_vec();
    let r = env
        .post_meta(
            WA_WEBHOOK,
            &junk,
            Some(&sign::meta_signature(WA_SECRET, &junk)),
        )
        .await;
    r.assert_error(400, "bad_request", "truncated JSON");

    // The good half, sent again on its own, was not remembered as seen.
    env.wa_in(&wa_text_webhook("wamid.B5", ELI, "Eli", "dos"))
        .await;
    let m = customer_message(&mut ws, &eli_conv).await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("dos"), Some(2))
    );
    assert_eq!(env.history(&dana_conv).await.len(), 3);
    assert_eq!(env.history(&eli_conv).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_media_both_ways() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;

    // Inbound picture: GET /{media-id} with the token for the URL, then the URL.
    let jpeg = sample(30_000);
    env.mock.add_media(
        "MEDIA1",
        "image/jpeg",
        jpeg.clone(),
        MediaAuth::WhatsappBearer,
    );
    env.wa_in(&wa_envelope(vec![vec![wa_messages_change(
        &[(DANA, "Dana")],
        vec![wa_media(
            "wamid.M1",
            DANA,
            "image",
            "MEDIA1",
            "image/jpeg",
            Some("my receipt"),
        )],
    )]]))
    .await;
    let info = env.mock.of_kind(Kind::MediaInfo);
    assert_eq!(info.len(), 1, "{}", env.mock.dump());
    assert_eq!(info[0].path, "/MEDIA1");
    assert_eq!(info[0].header("authorization"), Some("Bearer wa-token"));
    let media = env.mock.of_kind(Kind::Media);
    assert_eq!(media.len(), 1, "{}", env.mock.dump());
    assert_eq!(media[0].header("authorization"), Some("Bearer wa-token"));

    let (_o, assigned, conv, _t) = take(&mut ws).await;
    let msg = &assigned["history"][0];
    assert_eq!(msg["text"], "my receipt", "the caption is the text: {msg}");
    assert_eq!(msg["attachments"][0]["content_type"], "image/jpeg", "{msg}");
    assert_eq!(msg["attachments"][0]["size"], jpeg.len() as u64, "{msg}");
    let got = env
        .get(
            &format!("/v1/attachments/{}", s(&msg["attachments"][0]["id"])),
            Some(&alice.token),
        )
        .await;
    assert_eq!(got.bytes, jpeg);

    // A document whose media is gone: kept, with the reason.
    env.wa_in(&wa_envelope(vec![vec![wa_messages_change(
        &[(DANA, "Dana")],
        vec![wa_media(
            "wamid.M2",
            DANA,
            "document",
            "MEDIA_GONE",
            "application/pdf",
            None,
        )],
    )]]))
    .await;
    let m = customer_message(&mut ws, &conv).await;
    let att = &m["attachments"][0];
    assert!(att["error"].as_str().is_some_and(|e| !e.is_empty()), "{m}");
    assert_eq!(
        (att["id"].as_str(), att["url"].as_str()),
        (Some(""), Some("")),
        "{m}"
    );

    // A sticker becomes a system message saying what arrived.
    let sticker = json!({
        "from": DANA, "id": "wamid.M3", "timestamp": now_secs().to_string(),
        "type": "sticker", "sticker": {"id": "STICKER1", "mime_type": "image/webp", "animated": false},
    });
    env.wa_in(&wa_envelope(vec![vec![wa_messages_change(
        &[(DANA, "Dana")],
        vec![sticker],
    )]]))
    .await;
    let sys = ws
        .recv_where("system message about the sticker", |v| {
            v["type"] == "message" && v["message"]["from"] == "system"
        })
        .await;
    assert!(
        sys["message"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("sticker"),
        "{sys}"
    );

    // Outbound: one request per attachment, the text as the first one's caption.
    let png = sample(4_000);
    let pdf = sample(9_000);
    let a_png = env
        .upload(&alice.token, "map.png", "image/png", png.clone())
        .await;
    let a_pdf = env
        .upload(&alice.token, "invoice.pdf", "application/pdf", pdf.clone())
        .await;
    let mid = send_ok(&mut ws, &conv, "Two files for you", &[&a_png, &a_pdf]).await;
    let sends = env.mock.wait_sends(Api::Whatsapp, 2).await;
    let (img, doc) = (sends[0].json(), sends[1].json());
    assert_eq!(
        (img["type"].as_str(), img["to"].as_str()),
        (Some("image"), Some(DANA)),
        "{img}"
    );
    assert_eq!(img["image"]["caption"], "Two files for you", "{img}");
    assert_eq!(doc["type"], "document", "{doc}");
    assert_ne!(
        doc["document"]["caption"], "Two files for you",
        "caption only once: {doc}"
    );
    for (body, kind, bytes, id) in [
        (&img, "image", &png, &a_png),
        (&doc, "document", &pdf, &a_pdf),
    ] {
        let link = s(&body[kind]["link"]);
        assert_eq!(&parse_link(&link).0, id);
        let got = env.get(&env.local(&link), None).await;
        assert_eq!(got.status, 200, "{link}: {}", got.text);
        assert_eq!(&got.bytes, bytes);
    }
    wait_status(&mut ws, &mid, "sent").await;

    // WhatsApp takes jpeg and png pictures only, up to 5 MB.
    let gif = env
        .upload(&alice.token, "a.gif", "image/gif", sample(100))
        .await;
    send_err(&mut ws, &conv, "gif", &[&gif], "attachment_not_supported").await;
    let big = env
        .upload(&alice.token, "big.png", "image/png", sample(5_000_001))
        .await;
    send_err(&mut ws, &conv, "big", &[&big], "attachment_too_large").await;
    env.mock.assert_sends_stay(Api::Whatsapp, 2, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_text_limit_is_4096_characters() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    env.wa_in(&wa_text_webhook("wamid.T1", DANA, "Dana", "hi"))
        .await;
    let (_o, _a, conv, _t) = take(&mut ws).await;

    let longest = "ж".repeat(4096);
    send_ok(&mut ws, &conv, &longest, &[]).await;
    let sends = env.mock.wait_sends(Api::Whatsapp, 1).await;
    assert_eq!(sends[0].json()["text"]["body"], longest.as_str());
    send_err(&mut ws, &conv, &"a".repeat(4097), &[], "text_too_long").await;
    env.mock.assert_sends_stay(Api::Whatsapp, 1, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_messaging_window() {
    let env = start(|c| c.messaging_window = Duration::from_millis(300));
    let (_alice, mut ws) = env.agent("alice").await;

    env.wa_in(&wa_text_webhook("wamid.W1", DANA, "Dana", "hi"))
        .await;
    let (_o, _a, conv, _t) = take(&mut ws).await;
    send_ok(&mut ws, &conv, "inside the window", &[]).await;
    env.mock.wait_sends(Api::Whatsapp, 1).await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    send_err(&mut ws, &conv, "too late", &[], "outside_messaging_window").await;
    env.mock.assert_sends_stay(Api::Whatsapp, 1, QUIET).await;
    assert_eq!(
        env.history(&conv).await.len(),
        2,
        "a refused send is not stored"
    );

    // The customer writing again reopens the window.
    env.wa_in(&wa_text_webhook("wamid.W2", DANA, "Dana", "still there?"))
        .await;
    customer_message(&mut ws, &conv).await;
    send_ok(&mut ws, &conv, "yes", &[]).await;
    env.mock.wait_sends(Api::Whatsapp, 2).await;

    // Writing first to someone who never wrote needs a template.
    let v = ws
        .call(json!({"type": "outbound", "channel": "whatsapp", "to": ELI, "text": "Hello Eli"}))
        .await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("outside_messaging_window")),
        "{v}"
    );
    let v = ws
        .call(json!({
            "type": "outbound", "channel": "whatsapp", "to": ELI,
            "text": "Order update template sent",
            "template": {"name": "order_update", "language": "en_US"},
        }))
        .await;
    assert_eq!(v["type"], "task.assigned", "{v}");
    assert_eq!(v["task"]["customer"]["address"], ELI, "{v}");
    assert_eq!(v["history"][0]["text"], "Order update template sent", "{v}");
    let sends = env.mock.wait_sends(Api::Whatsapp, 3).await;
    let t = sends[2].json();
    assert_eq!(
        (t["to"].as_str(), t["type"].as_str()),
        (Some(ELI), Some("template")),
        "{t}"
    );
    assert_eq!(t["messaging_product"], "whatsapp", "{t}");
    assert_eq!(t["template"]["name"], "order_update", "{t}");
    assert_eq!(t["template"]["language"]["code"], "en_US", "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_failed_status_reaches_agent() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    env.wa_in(&wa_text_webhook("wamid.F1", DANA, "Dana", "hi"))
        .await;
    let (_o, _a, conv, _t) = take(&mut ws).await;
    let mid = send_ok(&mut ws, &conv, "hello", &[]).await;
    let sends = env.mock.wait_sends(Api::Whatsapp, 1).await;
    wait_status(&mut ws, &mid, "sent").await;

    let mut failed = wa_status(&sends[0].provider_id.clone().unwrap(), "failed", DANA);
    failed["errors"] = json!([{
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
    }]);
    env.wa_in(&wa_status_webhook(failed)).await;
    let st = wait_status(&mut ws, &mid, "failed").await;
    assert!(
        st["error"].as_str().is_some_and(|e| e.contains("131047")),
        "{st}"
    );
    assert_eq!(env.history(&conv).await[1]["status"], "failed");
}

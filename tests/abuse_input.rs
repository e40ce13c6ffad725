//! Abuse of the broker's inputs, over real sockets: each test plays one attack
//! of the hardening review (provider texts lost, fragmented frames dropped,
//! customers choosing their routing, hostile uploads, borrowed attachment
//! ids, guessable ids) and asserts what the broker does now.
mod common;
mod providers;

use std::time::Duration;

use common::{probed, s, start_with, test_config, unix_now, Harness, Vitals, Ws, QUIET};
use futures_util::future::join_all;
use futures_util::SinkExt;
use providers::*;
use serde_json::{json, Value};
use switchboard::channel::prechat;
use switchboard::config::TEST_CONTEXT_SECRET;
use switchboard::Config;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "abuse-input-admin-token-0123456789abcdef";

/// How much the process may grow during one attack, in KiB. The tests of
/// this file run side by side in one process, so the bound holds for all of
/// them at once: 128 MiB is far above what they keep (a few MiB), and far
/// below what one upload that reserved its declared 24 MiB ten times over,
/// or replies that buffered whole 100 KB URLs by the thousand, would take.
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// How many copies of a one-request attack run at once beside the probe.
const COPIES: usize = 8;

fn config() -> Config {
    let mut cfg = test_config();
    cfg.admin_token = Some(ADMIN.into());
    cfg
}

fn start() -> Harness {
    start_with(config())
}

/// One data frame, sent as is (the client masks it).
async fn send_frame(ws: &mut Ws, data: &[u8], opcode: Data, is_final: bool) {
    let frame = Frame::message(data.to_vec(), OpCode::Data(opcode), is_final);
    ws.inner
        .send(Message::Frame(frame))
        .await
        .expect("send frame");
}

/// `text` as a first frame and continuation frames of at most `size` bytes.
async fn send_fragmented(ws: &mut Ws, text: &str, size: usize) {
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
    assert!(chunks.len() >= 2, "a fragmented message needs two frames");
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { Data::Text } else { Data::Continue };
        send_frame(ws, chunk, opcode, i == chunks.len() - 1).await;
    }
}

// ---------------------------------------------------------------------------
// Fragmented WebSocket messages (RFC 6455 §5.4)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_reassembled_on_every_socket() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut agent, _hello) = h.connect_agent(&alice).await;
    send_fragmented(
        &mut agent,
        r#"{"type":"activity","activity":"available","ref":"frag-a"}"#,
        7,
    )
    .await;
    let ok = agent.recv_ref("frag-a").await;
    assert_eq!(ok["type"], "ok", "{ok}");

    // A customer's message in three frames, a character split between two.
    let sess = h.create_session("Dana", None).await;
    let (mut cust, _hist) = h.connect_customer(&sess).await;
    let text =
        r#"{"type":"message","text":"héllo in pieces","client_msg_id":"frag-1","ref":"frag-c"}"#;
    let split_e = text.find('é').expect("é") + 1;
    send_frame(&mut cust, &text.as_bytes()[..split_e], Data::Text, false).await;
    send_frame(
        &mut cust,
        &text.as_bytes()[split_e..split_e + 10],
        Data::Continue,
        false,
    )
    .await;
    send_frame(
        &mut cust,
        &text.as_bytes()[split_e + 10..],
        Data::Continue,
        true,
    )
    .await;
    let ack = cust.recv_ref("frag-c").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let conv = s(&ack["conversation_id"]);
    let offer = agent.offer_for(&conv).await;
    assert_eq!(offer["task"]["preview"], "héllo in pieces", "{offer}");

    // The supervisor stream takes no commands, but reads a fragmented one
    // whole (its ref comes back with the refusal).
    let mut sup = Ws::connect(&format!("{}/v1/supervisor/ws?token={}", h.ws_base, h.admin)).await;
    send_fragmented(&mut sup, r#"{"type":"nothing","ref":"frag-s"}"#, 5).await;
    let err = sup.recv_ref("frag-s").await;
    assert_eq!(err["code"], "bad_request", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_over_max_frame_closes_1009() {
    let mut cfg = config();
    cfg.max_frame = 8 * 1024;
    let h = start_with(cfg);
    let vitals = Vitals::before("oversized fragmented messages", RSS_BOUND_KIB);
    // Each frame is under the limit; the message is not.
    let oversized = || async {
        let sess = h.create_session("Dana", None).await;
        let (mut cust, _hist) = h.connect_customer(&sess).await;
        let text =
            json!({"type": "message", "text": "y".repeat(12 * 1024), "client_msg_id": "big"})
                .to_string();
        send_fragmented(&mut cust, &text, 4 * 1024).await;
        let err = cust.recv_type("error").await;
        assert_eq!(err["code"], "payload_too_large", "{err}");
        let (code, _) = cust.recv_close().await;
        assert_eq!(code, 1009, "close code");
    };
    probed(
        &h,
        "oversized fragmented messages",
        join_all((0..COPIES).map(|_| oversized())),
    )
    .await;
    vitals.check(&h).await;

    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut agent, _hello) = h.connect_agent(&alice).await;
    let text = json!({"type": "activity", "activity": "available", "pad": "p".repeat(9 * 1024)})
        .to_string();
    send_fragmented(&mut agent, &text, 3 * 1024).await;
    let (code, _) = agent.recv_close().await;
    assert_eq!(code, 1009, "agent close code");
    vitals.assert_memory();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_closes_1007() {
    let h = start();
    let vitals = Vitals::before("invalid UTF-8 frames", RSS_BOUND_KIB);
    let invalid = || async {
        let sess = h.create_session("Dana", None).await;
        let (mut cust, _hist) = h.connect_customer(&sess).await;
        send_frame(
            &mut cust,
            b"{\"type\":\"message\",\"text\":\"\xff\xfe\"}",
            Data::Text,
            true,
        )
        .await;
        let (code, _) = cust.recv_close().await;
        assert_eq!(code, 1007, "one frame");
    };
    probed(
        &h,
        "invalid UTF-8 frames",
        join_all((0..COPIES).map(|_| invalid())),
    )
    .await;
    vitals.check(&h).await;

    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut agent, _hello) = h.connect_agent(&alice).await;
    send_frame(&mut agent, b"{\"type\":\"act", Data::Text, false).await;
    send_frame(&mut agent, b"ivity\xc3", Data::Continue, true).await;
    let (code, _) = agent.recv_close().await;
    assert_eq!(code, 1007, "fragmented");
    vitals.assert_memory();
}

// ---------------------------------------------------------------------------
// Provider texts: nothing answered 200 and then lost
// ---------------------------------------------------------------------------

/// The conversation's messages once there are `n`, as (from, text).
async fn wait_messages(env: &Env, conv: &str, n: usize) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let msgs = env.history(conv).await;
        if msgs.len() >= n {
            return msgs
                .iter()
                .map(|m| (s(&m["from"]), s(&m["text"])))
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "conversation {conv}: {} of {n} messages",
            msgs.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a long text was stored whole, in `parts` parts and a note.
fn assert_split(stored: &[(String, String)], text: &str, parts: usize) {
    assert_eq!(stored.len(), parts + 1, "{stored:?}");
    let joined: String = stored[..parts].iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(joined, text, "the parts give the text back");
    assert!(stored[..parts].iter().all(|(from, _)| from == "customer"));
    let (from, note) = &stored[parts];
    assert_eq!(from, "system");
    assert!(
        note.contains(&format!("{} characters", text.chars().count()))
            && note.contains(&format!("{parts} parts")),
        "{note}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_provider_texts_are_stored_in_parts_with_a_note() {
    let env = providers::start(|c| c.admin_token = Some(ADMIN.into()));
    let vitals = Vitals::before("long provider texts", RSS_BOUND_KIB);
    let (_alice, mut ws) = env.agent("alice").await;

    // WhatsApp: 5,000 characters (WhatsApp allows 65,536; one message here holds 4,096).
    let text = "whatsapp words ".repeat(334)[..5000].to_owned();
    env.wa_in(&wa_text_webhook("wamid.long", "15551230000", "Dana", &text))
        .await;
    let (offer, _assigned, conv, _) = take(&mut ws).await;
    assert_eq!(offer["task"]["channel"], "whatsapp");
    assert_split(&wait_messages(&env, &conv, 3).await, &text, 2);

    // Messenger: 3,000 characters (2,000 per message).
    let text = "messenger ".repeat(300);
    env.fb_in(&fb_text_webhook("m_long", "PSID1", &text)).await;
    let (_, _, conv, _) = take(&mut ws).await;
    assert_split(&wait_messages(&env, &conv, 3).await, &text, 2);

    // SMS: 5,000 characters with no whitespace (1,600 per message): cut at the limit.
    let text = "s".repeat(5000);
    env.sms_in(&sms_params("SMlong", "+15551239999", &text))
        .await;
    let (_, _, conv, _) = take(&mut ws).await;
    let stored = wait_messages(&env, &conv, 5).await;
    assert_split(&stored, &text, 4);
    assert_eq!(stored[0].1.len(), 1600);

    // A retry of the same webhook is not stored twice.
    env.sms_in(&sms_params("SMlong", "+15551239999", &text))
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(env.history(&conv).await.len(), 5);
    vitals.check(&env.h).await;
    vitals.assert_memory();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_and_empty_provider_texts_are_stored_not_dropped() {
    let env = providers::start(|c| c.admin_token = Some(ADMIN.into()));
    let (_alice, mut ws) = env.agent("alice").await;

    env.sms_in(&sms_params("SMspace", "+15551230001", " \n\t "))
        .await;
    let (offer, assigned, conv, _) = take(&mut ws).await;
    assert_eq!(offer["task"]["channel"], "sms");
    let history = assigned["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "no empty conversation: {assigned}");
    assert_eq!(history[0]["from"], "customer");
    assert_eq!(history[0]["text"], " \n\t ", "as it arrived");

    env.wa_in(&wa_text_webhook("wamid.space", "15551230002", "Eve", "   "))
        .await;
    let (_, assigned, _, _) = take(&mut ws).await;
    assert_eq!(assigned["history"][0]["text"], "   ", "{assigned}");

    // An SMS with no body and no media: a note, not an empty conversation.
    env.sms_in(&sms_params("SMempty", "+15551230003", "")).await;
    let (_, assigned, _, _) = take(&mut ws).await;
    let history = assigned["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "{assigned}");
    assert_eq!(history[0]["from"], "system");
    assert!(s(&history[0]["text"]).contains("empty sms"), "{assigned}");

    // Whitespace into an open conversation is stored too, in order.
    env.sms_in(&sms_params("SMspace2", "+15551230001", "  "))
        .await;
    let stored = wait_messages(&env, &conv, 2).await;
    assert_eq!(stored[1], ("customer".to_owned(), "  ".to_owned()));
}

// ---------------------------------------------------------------------------
// Trust boundaries: routing and pre-chat context
// ---------------------------------------------------------------------------

async fn new_session(h: &Harness, body: Value) -> common::Resp {
    h.request(
        reqwest::Method::POST,
        "/v1/webchat/sessions",
        None,
        Some(&body),
    )
    .await
}

fn signed(context: &Value) -> (String, String) {
    let text = context.to_string();
    let sig = prechat::sign(TEST_CONTEXT_SECRET, &text);
    (text, sig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_cannot_choose_their_own_routing() {
    let h = start();
    let vip = h.create_agent("vip-desk", 1, &["vip"]).await;
    let mut vip_ws = h.agent_online(&vip).await;
    let vitals = Vitals::before("customers choosing their routing", RSS_BOUND_KIB);

    // The attack: anonymous sessions asking for the VIP desk.
    let ask = || new_session(&h, json!({"name": "Mallory", "skills": ["vip"]}));
    let refused = probed(
        &h,
        "customers choosing their routing",
        join_all((0..COPIES).map(|_| ask())),
    )
    .await;
    for r in refused {
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.error_code(), "bad_request");
        let msg = s(&r.body["error"]["message"]);
        assert!(
            msg.contains("skills") && msg.contains("context_signature"),
            "{msg}"
        );
    }

    // Forged, tampered, expired or half contexts are refused.
    let (ctx, _) = signed(&json!({"skills": ["vip"], "exp": unix_now() + 60}));
    let forged = prechat::sign("not-the-broker-secret-0123456789abcdef", &ctx);
    let r = new_session(&h, json!({"context": ctx, "context_signature": forged})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (403, "bad_signature"),
        "{}",
        r.text
    );
    let (_, sig) = signed(&json!({"skills": [], "exp": unix_now() + 60}));
    let r = new_session(&h, json!({"context": ctx, "context_signature": sig})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (403, "bad_signature"),
        "{}",
        r.text
    );
    let (old, old_sig) = signed(&json!({"skills": ["vip"], "exp": unix_now() - 1}));
    let r = new_session(&h, json!({"context": old, "context_signature": old_sig})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (403, "bad_signature"),
        "{}",
        r.text
    );
    assert!(r.text.contains("expired"), "{}", r.text);
    let r = new_session(&h, json!({"context": ctx})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "bad_request"),
        "{}",
        r.text
    );

    // Nothing of that reached the VIP desk.
    vip_ws
        .expect_none("an offer", QUIET, |v| v["type"] == "task.offered")
        .await;

    // The site's backend signs the context: that customer goes to the VIP desk.
    let (ctx, sig) = signed(&json!({"skills": ["vip"], "name": "Vera", "exp": unix_now() + 60}));
    let r = new_session(
        &h,
        json!({"name": "ignored", "context": ctx, "context_signature": sig}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let vera = common::Session {
        id: s(&r.body["session_id"]),
        token: s(&r.body["token"]),
        name: "Vera".into(),
    };
    let (mut cust, _hist) = h.connect_customer(&vera).await;
    let ack = cust.say("hello").await;
    let offer = vip_ws.offer_for(&s(&ack["conversation_id"])).await;
    assert_eq!(offer["task"]["customer"]["name"], "Vera", "{offer}");
    vitals.check(&h).await;
    vitals.assert_memory();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_a_context_secret_refuses_contexts() {
    let mut cfg = config();
    cfg.webchat_context_secret = None;
    let h = start_with(cfg);
    let (ctx, sig) = signed(&json!({"skills": ["vip"], "exp": unix_now() + 60}));
    let r = new_session(&h, json!({"context": ctx, "context_signature": sig})).await;
    assert_eq!(
        (r.status, r.error_code()),
        (400, "bad_request"),
        "{}",
        r.text
    );
    assert!(r.text.contains("webchat_context_secret"), "{}", r.text);
}

// ---------------------------------------------------------------------------
// Uploads: types, names, headers
// ---------------------------------------------------------------------------

async fn upload(h: &Harness, token: &str, filename: &str, ct: &str) -> common::Resp {
    let name: String = url_encode(filename);
    h.request_raw(
        reqwest::Method::POST,
        &format!("/v1/attachments?filename={name}"),
        Some(token),
        ct,
        b"<html><script>alert(1)</script></html>".to_vec(),
    )
    .await
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_uploads_follow_the_allow_list_and_are_served_safely() {
    let h = start();
    let vitals = Vitals::before("hostile uploads", RSS_BOUND_KIB);
    let sess = h.create_session("Mallory", None).await;
    let types = [
        "text/html",
        "image/svg+xml",
        "application/x-msdownload",
        "application/octet-stream",
    ];
    // Each refused type twice over, all at once.
    let refused = probed(
        &h,
        "hostile uploads",
        join_all(types.iter().chain(types.iter()).map(|ct| {
            let (h, token) = (&h, &sess.token);
            async move { (ct, upload(h, token, "x", ct).await) }
        })),
    )
    .await;
    for (ct, r) in refused {
        assert_eq!(
            (r.status, r.error_code()),
            (422, "attachment_not_supported"),
            "{ct}: {}",
            r.text
        );
        assert!(
            r.text.contains("image/png"),
            "names what is allowed: {}",
            r.text
        );
    }

    // Allowed type, hostile name: bidi override, path, control characters.
    let r = upload(
        &h,
        &sess.token,
        "../..\\evil\u{202e}gnp.exe\u{7}",
        "image/png; x=1",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["filename"], "evilgnp.exe", "{}", r.text);
    assert_eq!(r.body["content_type"], "image/png", "{}", r.text);
    let id = s(&r.body["id"]);
    let got = h
        .http
        .get(h.url(&format!("/v1/attachments/{id}")))
        .bearer_auth(&sess.token)
        .send()
        .await
        .expect("download");
    assert_eq!(got.status(), 200);
    let header = |name: &str| {
        got.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=\"evilgnp.exe\"; filename*=UTF-8''evilgnp.exe"
    );
    assert!(header("content-security-policy").contains("sandbox"));

    // Agents may upload other types; a non-ASCII name goes out encoded.
    let alice = h.create_agent("alice", 1, &[]).await;
    let r = upload(&h, &alice.token, "Prüfbericht.html", "text/html").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let got = h
        .http
        .get(h.url(&format!("/v1/attachments/{}", s(&r.body["id"]))))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("download");
    let disposition = got
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        disposition,
        "attachment; filename=\"Pr_fbericht.html\"; filename*=UTF-8''Pr%C3%BCfbericht.html"
    );
    assert_eq!(
        got.headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    vitals.check(&h).await;
    vitals.assert_memory();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_id_alone_grants_nothing() {
    let h = start();
    let vitals = Vitals::before("borrowed attachment ids", RSS_BOUND_KIB);
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;

    // Dana uploads and sends a file; alice holds the conversation.
    let dana = h.create_session("Dana", None).await;
    let r = upload(&h, &dana.token, "scan.png", "image/png").await;
    let secret = s(&r.body["id"]);
    let (mut dana_ws, _) = h.connect_customer(&dana).await;
    dana_ws
        .send(json!({"type": "message", "text": "my passport", "attachments": [secret], "client_msg_id": "p", "ref": "p"}))
        .await;
    let ack = dana_ws.recv_ref("p").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let (_offer, _assigned) = a.take_offer().await;
    let dana_conv = s(&ack["conversation_id"]);

    // Mallory learned the id: she cannot attach it (to open or in a
    // conversation) nor download it; the answer is that of an unknown id.
    let mallory = h.create_session("Mallory", None).await;
    let (mut m, _) = h.connect_customer(&mallory).await;
    m.send(json!({"type": "message", "text": "mine now", "attachments": [secret], "client_msg_id": "m1", "ref": "m1"}))
        .await;
    let err = m.expect_error("m1", "not_found").await;
    let unknown_err = {
        m.send(json!({"type": "message", "text": "x", "attachments": ["att_0000000000000000"], "client_msg_id": "m2", "ref": "m2"}))
            .await;
        m.expect_error("m2", "not_found").await
    };
    assert_eq!(
        s(&err["message"]).replace(&secret, "ID"),
        s(&unknown_err["message"]).replace("att_0000000000000000", "ID")
    );
    let ack = m.say("hello").await;
    m.send(json!({"type": "message", "text": "again", "attachments": [secret], "client_msg_id": "m3", "ref": "m3"}))
        .await;
    m.expect_error("m3", "not_found").await;
    let downloads = probed(
        &h,
        "borrowed attachment ids",
        join_all((0..COPIES).map(|_| async {
            h.get(&format!("/v1/attachments/{secret}"), Some(&mallory.token))
                .await
        })),
    )
    .await;
    for r in downloads {
        assert_eq!(r.status, 404, "{}", r.text);
    }

    // Bob, an agent who does not hold Dana's conversation, cannot send it
    // to Mallory either.
    let mut b = h.agent_online(&bob).await;
    let offer = b.offer_for(&s(&ack["conversation_id"])).await;
    b.accept(&s(&offer["task"]["id"])).await;
    b.call_err(
        json!({"type": "send", "conversation_id": s(&ack["conversation_id"]), "text": "here", "attachments": [secret], "client_msg_id": "b1"}),
        "not_found",
    )
    .await;

    // Inside Dana's conversation the file is fair to send again.
    let echo = a
        .call(json!({"type": "send", "conversation_id": dana_conv, "text": "is this it?", "attachments": [secret], "client_msg_id": "a1"}))
        .await;
    assert_eq!(echo["type"], "message", "{echo}");
    vitals.check(&h).await;
    vitals.assert_memory();
}

// ---------------------------------------------------------------------------
// Ids and existence
// ---------------------------------------------------------------------------

fn assert_random_id(id: &str, prefix: &str) {
    let body = id
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{id} starts with {prefix}"));
    assert_eq!(body.len(), 20, "{id}");
    assert!(
        body.bytes()
            .all(|b| b"0123456789abcdefghjkmnpqrstvwxyz".contains(&b)),
        "{id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_random_and_not_reused_after_a_restart() {
    let mut seen = Vec::new();
    for _restart in 0..2 {
        let h = start();
        let alice = h.create_agent("alice", 2, &[]).await;
        let mut a = h.agent_online(&alice).await;
        for _ in 0..2 {
            let (sess, _ws, ack) = h.customer_with_message("Dana", "hi").await;
            assert_random_id(&sess.id, "wc_");
            assert_random_id(&s(&ack["conversation_id"]), "cv_");
            assert_random_id(&s(&ack["message_id"]), "m_");
            let offer = a.offer().await;
            assert_random_id(&s(&offer["task"]["id"]), "tk_");
            seen.extend([
                sess.id,
                s(&ack["conversation_id"]),
                s(&ack["message_id"]),
                s(&offer["task"]["id"]),
            ]);
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "an id named two things: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yours_and_does_not_exist_answer_alike() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_dana, _ws, ack) = h.customer_with_message("Dana", "hi").await;
    let conv = s(&ack["conversation_id"]);
    let (_o, _assigned) = a.take_offer().await;
    let mallory = h.create_session("Mallory", None).await;
    let missing = "cv_0000000000000000000a";
    let vitals = Vitals::before("probing for conversations", RSS_BOUND_KIB);
    let probes = probed(
        &h,
        "probing for conversations",
        join_all((0..COPIES).map(|i| {
            let id = if i % 2 == 0 { conv.as_str() } else { missing };
            let (h, token) = (&h, &mallory.token);
            async move {
                h.get(&format!("/v1/conversations/{id}/messages"), Some(token))
                    .await
            }
        })),
    )
    .await;
    for r in probes {
        assert_eq!((r.status, r.error_code()), (404, "not_found"), "{}", r.text);
    }

    for (path, token) in [
        ("", bob.token.as_str()),
        ("/messages", bob.token.as_str()),
        ("/messages", mallory.token.as_str()),
    ] {
        let theirs = h
            .get(&format!("/v1/conversations/{conv}{path}"), Some(token))
            .await;
        let none = h
            .get(&format!("/v1/conversations/{missing}{path}"), Some(token))
            .await;
        assert_eq!((theirs.status, theirs.error_code()), (404, "not_found"));
        assert_eq!((none.status, none.error_code()), (404, "not_found"));
        assert_eq!(
            s(&theirs.body["error"]["message"]).replace(&conv, "ID"),
            s(&none.body["error"]["message"]).replace(missing, "ID"),
        );
    }
    // The owner still reads it.
    let r = h
        .get(&format!("/v1/conversations/{conv}"), Some(&alice.token))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    vitals.check(&h).await;
    vitals.assert_memory();
}

// ---------------------------------------------------------------------------
// Small: URL length
// ---------------------------------------------------------------------------

/// Writes `request` on `stream` and reads one response head.
async fn raw_exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.expect("write request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(common::TIMEOUT, stream.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read response");
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_url_answers_414() {
    let h = start();
    let vitals = Vitals::before("100 KB URLs", RSS_BOUND_KIB);
    let addr = h.base.trim_start_matches("http://").to_owned();
    let long = format!(
        "GET /v1/webchat/session?pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100_000)
    );
    let long_url = || async {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = raw_exchange(&mut stream, long.as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 414"), "{head}");
    };
    probed(&h, "100 KB URLs", join_all((0..COPIES).map(|_| long_url()))).await;
    // Also through an ordinary client (whose URLs stop at 64 KiB).
    let r = h
        .http
        .get(h.url(&format!("/healthz?pad={}", "a".repeat(60_000))))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string().chars().take(200).collect::<String>());
    assert_eq!(r, Ok(414));

    // On a connection that already made a request, a long URL is refused
    // by the app (up to the HTTP parser's own 64 KiB).
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let first = raw_exchange(
        &mut stream,
        b"GET /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    let length: usize = first
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .expect("content-length");
    {
        use tokio::io::AsyncReadExt;
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.expect("404 body");
    }
    let second = raw_exchange(
        &mut stream,
        format!(
            "GET /healthz?pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "b".repeat(20_000)
        )
        .as_bytes(),
    )
    .await;
    assert!(second.starts_with("HTTP/1.1 414"), "{second}");

    // A URL under the limit is served.
    let r = h
        .get(&format!("/healthz?pad={}", "c".repeat(7_000)), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    vitals.check(&h).await;
    vitals.assert_memory();
}

/// The process's virtual memory size, in bytes (Linux).
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmSize")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_do_not_reserve_their_declared_length() {
    use tokio::io::AsyncWriteExt;
    let h = start();
    let sess = h.create_session("Dana", None).await;
    let addr = h.base.trim_start_matches("http://").to_owned();
    let declared: u64 = 24 * 1024 * 1024;
    let vitals = Vitals::before("uploads announcing 24 MiB", RSS_BOUND_KIB);
    let before = vm_size();
    // Ten uploads that each announce 24 MiB and send one byte (the broker
    // runs in this process: what it reserves shows in our memory).
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /v1/attachments?filename=a.png HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {}\r\nContent-Type: image/png\r\n\
             Content-Length: {declared}\r\n\r\nx",
            sess.token
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        open.push(stream);
    }
    // Let the handlers start reading their bodies.
    tokio::time::sleep(QUIET).await;
    let grown = vm_size().saturating_sub(before);
    assert!(
        grown < 5 * declared,
        "memory grew by {} MiB for 10 one-byte uploads",
        grown / (1024 * 1024)
    );
    // While they hang: healthy, and a normal life cycle completes.
    vitals.check(&h).await;
    vitals.assert_memory();
    drop(open);
}

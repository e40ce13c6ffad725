//! SMS channel (Twilio Messaging format) over real sockets, against the mock
//! provider: webhooks signed as Twilio signs them, replies checked as Twilio
//! receives them.
mod common;
mod providers;

use common::{s, QUIET};
use providers::mock::{Api, Kind, MediaAuth};
use providers::*;
use serde_json::json;

const DANA: &str = "+15551230000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_full_life_cycle() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;

    // Inbound: answered with empty TwiML.
    let r = env
        .sms_inbound(&sms_params("SM0001", DANA, "Hi, where is my order?"))
        .await;
    assert_eq!(r.status, 200, "inbound: {}", r.text);
    assert!(
        r.content_type.starts_with("text/xml"),
        "TwiML content type: {r:?}"
    );
    assert_eq!(r.text.trim(), TWIML_EMPTY);

    // Offer → accept, with the message in the history.
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["channel"], "sms", "{offer}");
    assert_eq!(offer["task"]["customer"]["address"], DANA, "{offer}");
    assert_eq!(
        offer["task"]["preview"], "Hi, where is my order?",
        "{offer}"
    );
    let conv = s(&offer["task"]["conversation_id"]);
    let task = s(&offer["task"]["id"]);
    let assigned = ws.accept(&task).await;
    let history = assigned["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "{assigned}");
    assert_eq!(history[0]["from"], "customer");
    assert_eq!(history[0]["text"], "Hi, where is my order?");
    assert_eq!(history[0]["seq"], 1);

    // Reply reaches Twilio's Messages API in Twilio's format.
    let mid = send_ok(&mut ws, &conv, "Let me check, Dana.", &[]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    let out = &sends[0];
    assert_eq!(out.path, "/2010-04-01/Accounts/AC123/Messages.json");
    assert_eq!(
        out.header("authorization"),
        Some(format!("Basic {}", sign::base64(b"AC123:tw-secret")).as_str()),
        "Twilio Basic auth"
    );
    assert!(
        out.header("content-type")
            .unwrap_or_default()
            .starts_with("application/x-www-form-urlencoded"),
        "{}",
        out.describe()
    );
    assert_eq!(out.form_value("To").as_deref(), Some(DANA));
    assert_eq!(out.form_value("From").as_deref(), Some(SMS_FROM));
    assert_eq!(
        out.form_value("Body").as_deref(),
        Some("Let me check, Dana.")
    );
    assert_eq!(
        out.form_value("StatusCallback"),
        Some(format!("{PUBLIC}{SMS_STATUS}"))
    );
    assert!(out.form_values("MediaUrl").is_empty(), "{}", out.describe());

    // Provider's answer → sent.
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "sent", "{st}");
    assert_eq!(st["conversation_id"], conv.as_str());
    assert!(st["error"].is_null(), "{st}");

    // Status callback → delivered.
    let sid = out.provider_id.clone().expect("mock answered a sid");
    let r = env
        .sms_status(&sms_status_params(&sid, DANA, "delivered", None))
        .await;
    assert!((200..300).contains(&r.status), "status callback: {r:?}");
    let st = wait_status(&mut ws, &mid, "delivered").await;
    assert_eq!(st["conversation_id"], conv.as_str());
    assert!(st["error"].is_null(), "{st}");
    let hist = env.history(&conv).await;
    let mine = hist
        .iter()
        .find(|m| m["id"] == mid.as_str())
        .expect("agent message in history");
    assert_eq!(mine["status"], "delivered", "{mine}");
    assert_eq!(mine["agent_id"], alice.id.as_str());

    // The customer writes again: same conversation.
    env.sms_in(&sms_params("SM0002", DANA, "Thanks!")).await;
    let m = customer_message(&mut ws, &conv).await;
    assert_eq!(m["text"], "Thanks!");
    assert_eq!(m["seq"], 3);

    // End and complete.
    ws.end(&conv).await;
    ws.complete(&task, "resolved", "tracking link sent").await;
    let c = env.h.conversation(&conv).await;
    assert_eq!(c["state"], "ended", "{c}");
    assert_eq!(c["channel"], "sms", "{c}");
    assert_eq!(c["customer"]["address"], DANA, "{c}");
    assert_eq!(c["task"]["state"], "completed", "{c}");
    assert_eq!(c["disposition"], "resolved", "{c}");

    // Writing after the end opens a new conversation linked to this one.
    env.sms_in(&sms_params("SM0003", DANA, "One more thing"))
        .await;
    let offer = ws.offer().await;
    let conv2 = s(&offer["task"]["conversation_id"]);
    assert_ne!(conv2, conv);
    let c2 = env.h.conversation(&conv2).await;
    assert_eq!(c2["previous_conversation_id"], conv.as_str(), "{c2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_bad_or_missing_signature_changes_nothing() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let params = sms_params("SM0100", DANA, "Hi! 50% off & free? ünïcödé");
    let url = format!("{PUBLIC}{SMS_INBOUND}");

    let r = env.post_form(SMS_INBOUND, &params, None).await;
    r.assert_error(403, "bad_signature", "no signature");

    let wrong_key = sign::twilio_signature("not-the-token", &url, &params);
    let r = env.post_form(SMS_INBOUND, &params, Some(&wrong_key)).await;
    r.assert_error(403, "bad_signature", "signed with another token");

    // Signed over the broker's own address instead of its public URL.
    let wrong_url = sign::twilio_signature(TW_SECRET, &env.h.url(SMS_INBOUND), &params);
    let r = env.post_form(SMS_INBOUND, &params, Some(&wrong_url)).await;
    r.assert_error(403, "bad_signature", "signed over another URL");

    // A valid signature, then a parameter changed.
    let good = sign::twilio_signature(TW_SECRET, &url, &params);
    let mut tampered = params.clone();
    for (k, v) in tampered.iter_mut() {
        if k == "Body" {
            *v = "Hi! 60% off & free? ünïcödé".into();
        }
    }
    let r = env.post_form(SMS_INBOUND, &tampered, Some(&good)).await;
    r.assert_error(403, "bad_signature", "tampered body");
    // An added parameter.
    let mut extra = params.clone();
    extra.push(("MediaUrl0".into(), "http://evil.test/x".into()));
    let r = env.post_form(SMS_INBOUND, &extra, Some(&good)).await;
    r.assert_error(403, "bad_signature", "added parameter");

    // Status callbacks are checked too.
    let status = sms_status_params("SM0999", DANA, "delivered", None);
    let r = env.post_form(SMS_STATUS, &status, None).await;
    r.assert_error(403, "bad_signature", "status callback without signature");
    let bad = sign::twilio_signature(TW_SECRET, &url, &status); // URL of the other endpoint
    let r = env.post_form(SMS_STATUS, &status, Some(&bad)).await;
    r.assert_error(
        403,
        "bad_signature",
        "status callback signed for inbound URL",
    );

    // Nothing changed.
    assert_quiet(&mut ws, "offer after rejected webhooks").await;
    let stats = env.stats().await;
    assert_eq!(stats["messages"]["in"], 0, "{stats}");
    assert_eq!(stats["conversations"]["opened"], 0, "{stats}");

    // The same webhook, correctly signed, goes through (the signer is right).
    let r = env.post_form(SMS_INBOUND, &params, Some(&good)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["preview"], "Hi! 50% off & free? ünïcödé");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_duplicate_webhook_is_stored_once() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let first = sms_params("SM0200", DANA, "first");

    env.sms_in(&first).await;
    let r = env.sms_inbound(&first).await; // Twilio retrying
    assert_eq!(r.status, 200, "a duplicate is acknowledged: {}", r.text);

    let (_o, assigned, conv, _t) = take(&mut ws).await;
    assert_eq!(
        assigned["history"].as_array().map(Vec::len),
        Some(1),
        "{assigned}"
    );
    ws.expect_none("a second offer", QUIET, |v| v["type"] == "task.offered")
        .await;

    // Again after assignment: still not stored.
    env.sms_in(&first).await;
    ws.expect_none("a duplicate message", QUIET, |v| v["type"] == "message")
        .await;
    env.sms_in(&sms_params("SM0201", DANA, "second")).await;
    let m = customer_message(&mut ws, &conv).await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("second"), Some(2))
    );
    let hist = env.history(&conv).await;
    assert_eq!(hist.len(), 2, "{hist:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_media_both_ways() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;

    // Inbound MMS: one picture Twilio serves (Basic auth), one that is gone.
    let jpeg = sample(20_000);
    env.mock
        .add_media("ME0001", "image/jpeg", jpeg.clone(), MediaAuth::TwilioBasic);
    let media = [
        (env.mock.media_url("ME0001"), "image/jpeg"),
        (env.mock.media_url("ME_GONE"), "image/png"),
    ];
    let r = env
        .sms_inbound(&sms_media_params("SM0300", DANA, "see photo", &media))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let fetched = env.mock.of_kind(Kind::Media);
    let ok = fetched
        .iter()
        .find(|r| r.path == "/media/ME0001")
        .unwrap_or_else(|| panic!("media fetched before answering; {}", env.mock.dump()));
    assert_eq!(
        ok.header("authorization"),
        Some(format!("Basic {}", sign::base64(b"AC123:tw-secret")).as_str())
    );

    let (_o, assigned, conv, _t) = take(&mut ws).await;
    let msg = &assigned["history"][0];
    assert_eq!(msg["text"], "see photo", "{msg}");
    let atts = msg["attachments"].as_array().expect("attachments");
    assert_eq!(atts.len(), 2, "both media entries are kept: {msg}");
    assert_eq!(atts[0]["content_type"], "image/jpeg", "{msg}");
    assert_eq!(atts[0]["size"], jpeg.len() as u64, "{msg}");
    let got = env
        .get(
            &format!("/v1/attachments/{}", s(&atts[0]["id"])),
            Some(&alice.token),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.bytes, jpeg, "stored bytes");
    assert!(
        atts[1]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a failed fetch says why: {msg}"
    );
    assert_eq!(
        (atts[1]["id"].as_str(), atts[1]["url"].as_str()),
        (Some(""), Some("")),
        "{msg}"
    );

    // Outbound picture: a signed link Twilio can fetch without a token.
    let png = sample(3_000);
    let att = env
        .upload(&alice.token, "map.png", "image/png", png.clone())
        .await;
    let mid = send_ok(&mut ws, &conv, "Here is the map", &[&att]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    assert_eq!(
        sends[0].form_value("Body").as_deref(),
        Some("Here is the map")
    );
    let links = sends[0].form_values("MediaUrl");
    assert_eq!(links.len(), 1, "{}", sends[0].describe());
    let (id, expires, _sig) = parse_link(&links[0]);
    assert_eq!(id, att);
    assert!(
        expires > now_secs(),
        "link expires in the future: {}",
        links[0]
    );
    let got = env.get(&env.local(&links[0]), None).await;
    assert_eq!(got.status, 200, "signed link: {}", got.text);
    assert_eq!(got.bytes, png);
    let r = env
        .get(&env.local(&tamper_signature(&links[0])), None)
        .await;
    r.assert_error(403, "bad_signature", "wrong link signature");
    let r = env.get(&env.local(&tamper_expires(&links[0])), None).await;
    r.assert_error(403, "bad_signature", "changed expiry");
    wait_status(&mut ws, &mid, "sent").await;

    // Limits: a PDF is not an SMS attachment; a picture over 5 MB is too large.
    let pdf = env
        .upload(&alice.token, "invoice.pdf", "application/pdf", sample(100))
        .await;
    let e = send_err(
        &mut ws,
        &conv,
        "invoice",
        &[&pdf],
        "attachment_not_supported",
    )
    .await;
    assert!(
        e["message"].as_str().unwrap_or_default().contains("image"),
        "the error names what SMS accepts: {e}"
    );
    let big = env
        .upload(&alice.token, "big.jpg", "image/jpeg", sample(5_000_001))
        .await;
    send_err(&mut ws, &conv, "big", &[&big], "attachment_too_large").await;
    let gif = env
        .upload(&alice.token, "a.gif", "image/gif", sample(500))
        .await;
    send_ok(&mut ws, &conv, "", &[&gif]).await;
    env.mock.wait_sends(Api::Twilio, 2).await;
    env.mock.assert_sends_stay(Api::Twilio, 2, QUIET).await;
    assert_eq!(
        env.history(&conv).await.len(),
        3,
        "refused sends are not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_text_limit_is_1600_characters() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    env.sms_in(&sms_params("SM0400", DANA, "hi")).await;
    let (_o, _a, conv, _t) = take(&mut ws).await;

    // 1,600 characters (3,200 bytes) is fine: the limit counts characters.
    let longest = "é".repeat(1600);
    let mid = send_ok(&mut ws, &conv, &longest, &[]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    assert_eq!(sends[0].form_value("Body"), Some(longest.clone()));
    wait_status(&mut ws, &mid, "sent").await;

    send_err(&mut ws, &conv, &"a".repeat(1601), &[], "text_too_long").await;
    env.mock.assert_sends_stay(Api::Twilio, 1, QUIET).await;
    assert_eq!(env.history(&conv).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_outbound_then_customer_answers() {
    let env = start(|_| {});
    let (alice, mut ws) = env.agent("alice").await;
    let to = "+15557654321";

    let v = ws
        .call(json!({"type": "outbound", "channel": "sms", "to": to, "text": "Your order shipped"}))
        .await;
    assert_eq!(v["type"], "task.assigned", "{v}");
    assert_eq!(v["task"]["channel"], "sms", "{v}");
    assert_eq!(v["task"]["customer"]["address"], to, "{v}");
    let conv = s(&v["task"]["conversation_id"]);
    let task = s(&v["task"]["id"]);
    let hist = v["history"].as_array().expect("history");
    assert_eq!(hist.len(), 1, "{v}");
    assert_eq!(hist[0]["from"], "agent");
    assert_eq!(hist[0]["agent_id"], alice.id.as_str());
    let mid = s(&hist[0]["id"]);

    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    assert_eq!(sends[0].form_value("To").as_deref(), Some(to));
    assert_eq!(sends[0].form_value("From").as_deref(), Some(SMS_FROM));
    assert_eq!(
        sends[0].form_value("Body").as_deref(),
        Some("Your order shipped")
    );
    wait_status(&mut ws, &mid, "sent").await;

    // The answer lands in the same conversation, not in a new offer.
    env.sms_in(&sms_params("SM0500", to, "Great, thanks")).await;
    let m = customer_message(&mut ws, &conv).await;
    assert_eq!(m["text"], "Great, thanks");
    ws.expect_none("an offer", QUIET, |v| v["type"] == "task.offered")
        .await;
    ws.end(&conv).await;
    ws.complete(&task, "resolved", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_failed_status_callback_reaches_agent() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    env.sms_in(&sms_params("SM0600", DANA, "hi")).await;
    let (_o, _a, conv, _t) = take(&mut ws).await;

    let mid = send_ok(&mut ws, &conv, "hello", &[]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    wait_status(&mut ws, &mid, "sent").await;
    let sid = sends[0].provider_id.clone().expect("sid");
    let r = env
        .sms_status(&sms_status_params(&sid, DANA, "failed", Some("30003")))
        .await;
    assert!((200..300).contains(&r.status), "{r:?}");
    let st = wait_status(&mut ws, &mid, "failed").await;
    assert!(
        st["error"].as_str().is_some_and(|e| e.contains("30003")),
        "the provider's reason reaches the agent: {st}"
    );
    let hist = env.history(&conv).await;
    assert_eq!(hist[1]["status"], "failed", "{hist:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_one_conversation_per_business_number() {
    const SECOND: &str = "+15550002222";
    let env = start(|c| c.sms_from = vec![SMS_FROM.into(), SECOND.into()]);
    let (_alice, mut ws) = env.agent("alice").await;

    // Dana texts both of our numbers: two conversations.
    env.sms_in(&sms_params("SM0700", DANA, "to the first"))
        .await;
    let mut second = sms_params("SM0701", DANA, "to the second");
    for (k, v) in second.iter_mut() {
        if k == "To" {
            *v = SECOND.into();
        }
    }
    env.sms_in(&second).await;
    let (o1, _a1, c1, _) = take(&mut ws).await;
    let (_o2, _a2, c2, _) = take(&mut ws).await;
    assert_ne!(c1, c2);
    let (first_conv, second_conv) = if o1["task"]["preview"] == "to the first" {
        (c1, c2)
    } else {
        (c2, c1)
    };

    // Each reply goes out from the number Dana wrote to.
    send_ok(&mut ws, &second_conv, "from the second", &[]).await;
    send_ok(&mut ws, &first_conv, "from the first", &[]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 2).await;
    let from_of = |body: &str| {
        sends
            .iter()
            .find(|r| r.form_value("Body").as_deref() == Some(body))
            .and_then(|r| r.form_value("From"))
            .unwrap_or_else(|| panic!("no send with {body:?}; {}", env.mock.dump()))
    };
    assert_eq!(from_of("from the second"), SECOND);
    assert_eq!(from_of("from the first"), SMS_FROM);
}

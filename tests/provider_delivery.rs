//! Outbound delivery through provider channels when the provider misbehaves:
//! retries with backoff (5xx, 429, timeouts), immediate failure on 4xx, the
//! per-channel send queue (`rate_limited`), signed attachment links expiring,
//! and disabled channels.
mod common;
mod providers;

use std::time::{Duration, Instant};

use common::QUIET;
use providers::mock::{Api, Failure, Mock};
use providers::*;
use serde_json::json;

const DANA_SMS: &str = "+15551230000";
const DANA_WA: &str = "15551230000";

/// An assigned conversation on `channel`; returns its id.
async fn conversation_on(env: &Env, ws: &mut common::Ws, channel: &str, n: u32) -> String {
    match channel {
        "sms" => {
            env.sms_in(&sms_params(&format!("SMD{n:04}"), DANA_SMS, "hi"))
                .await
        }
        "whatsapp" => {
            env.wa_in(&wa_text_webhook(
                &format!("wamid.D{n}"),
                DANA_WA,
                "Dana",
                "hi",
            ))
            .await
        }
        "messenger" => {
            env.fb_in(&fb_text_webhook(&format!("m_d{n}"), "PSID1", "hi"))
                .await
        }
        other => panic!("no channel {other}"),
    }
    let (_o, _a, conv, _t) = take(ws).await;
    conv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_then_back_is_retried_until_sent() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let conv = conversation_on(&env, &mut ws, "sms", 1).await;

    env.mock.fail(Api::Twilio, 2, Failure::ServerError);
    let mid = send_ok(&mut ws, &conv, "are you there?", &[]).await;
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(
        st["status"], "sent",
        "retried, then sent, never failed: {st}"
    );
    let sends = env.mock.sends(Api::Twilio);
    let statuses: Vec<u16> = sends.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 201], "{}", env.mock.dump());
    // Every attempt carries the same message.
    for r in &sends {
        assert_eq!(r.form_value("Body").as_deref(), Some("are you there?"));
    }
    ws.expect_none("a failed status", QUIET, |v| {
        v["type"] == "message.status" && v["status"] == "failed"
    })
    .await;
    assert_eq!(env.history(&conv).await[1]["status"], "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_timeout_are_retried() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let conv = conversation_on(&env, &mut ws, "whatsapp", 1).await;

    // 429, then an answer slower than the 500 ms provider timeout, then fine.
    env.mock.fail(Api::Whatsapp, 1, Failure::TooManyRequests);
    env.mock
        .fail(Api::Whatsapp, 1, Failure::Slow(Duration::from_millis(1500)));
    let mid = send_ok(&mut ws, &conv, "hello", &[]).await;
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "sent", "{st}; {}", env.mock.dump());
    let sends = env.mock.sends(Api::Whatsapp);
    assert_eq!(sends.len(), 3, "{}", env.mock.dump());
    assert_eq!(sends[0].status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_for_good_fails_after_the_retries() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;
    let conv = conversation_on(&env, &mut ws, "messenger", 1).await;

    env.mock.fail(Api::Messenger, 100, Failure::ServerError);
    let mid = send_ok(&mut ws, &conv, "hello?", &[]).await;
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert!(
        st["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the agent is told why: {st}"
    );
    // provider_retries = 3: the first attempt and three retries.
    env.mock
        .assert_sends_stay(Api::Messenger, 4, Duration::from_millis(300))
        .await;
    assert_eq!(env.history(&conv).await[1]["status"], "failed");

    // The provider is back: the channel is not stuck.
    env.mock.heal(Api::Messenger);
    let mid2 = send_ok(&mut ws, &conv, "trying again", &[]).await;
    assert_eq!(next_status(&mut ws, &mid2).await["status"], "sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_4xx_fails_at_once_with_its_reason() {
    let env = start(|_| {});
    let (_alice, mut ws) = env.agent("alice").await;

    // Twilio: 21211.
    let sms = conversation_on(&env, &mut ws, "sms", 1).await;
    env.mock.fail(Api::Twilio, 1, Failure::Rejected);
    let mid = send_ok(&mut ws, &sms, "hello", &[]).await;
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "failed", "{st}");
    assert_eq!(st["error"], "21211: Invalid 'To' Phone Number", "{st}");
    assert_eq!(st["conversation_id"], sms.as_str());
    env.mock
        .assert_sends_stay(Api::Twilio, 1, Duration::from_millis(300))
        .await;

    // Graph (WhatsApp): code 100.
    let wa = conversation_on(&env, &mut ws, "whatsapp", 1).await;
    env.mock.fail(Api::Whatsapp, 1, Failure::Rejected);
    let mid = send_ok(&mut ws, &wa, "hello", &[]).await;
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "failed", "{st}");
    let e = st["error"].as_str().unwrap_or_default();
    assert!(e.contains("100") && e.contains("Invalid parameter"), "{st}");
    env.mock
        .assert_sends_stay(Api::Whatsapp, 1, Duration::from_millis(300))
        .await;
    assert_eq!(env.history(&wa).await[1]["status"], "failed");

    // Graph (Messenger): code 100.
    let fb = conversation_on(&env, &mut ws, "messenger", 1).await;
    env.mock.fail(Api::Messenger, 1, Failure::Rejected);
    let mid = send_ok(&mut ws, &fb, "hello", &[]).await;
    let st = next_status(&mut ws, &mid).await;
    assert_eq!(st["status"], "failed", "{st}");
    let e = st["error"].as_str().unwrap_or_default();
    assert!(e.contains("100") && e.contains("Invalid parameter"), "{st}");
    env.mock
        .assert_sends_stay(Api::Messenger, 1, Duration::from_millis(300))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_send_queue_answers_rate_limited_and_holds_only_its_channel() {
    let env = start(|c| {
        c.provider_in_flight = 1;
        c.provider_queue = 1;
        c.provider_timeout = Duration::from_secs(3);
    });
    let (_alice, mut ws) = env.agent("alice").await;
    let sms = conversation_on(&env, &mut ws, "sms", 1).await;
    let wa = conversation_on(&env, &mut ws, "whatsapp", 1).await;

    // Twilio takes 1.5 s to answer the first send.
    env.mock
        .fail(Api::Twilio, 1, Failure::Slow(Duration::from_millis(1500)));
    let m1 = send_ok(&mut ws, &sms, "one", &[]).await;
    env.mock.wait_sends(Api::Twilio, 1).await; // in flight
    let m2 = send_ok(&mut ws, &sms, "two", &[]).await; // waits in the queue
    send_err(&mut ws, &sms, "three", &[], "rate_limited").await;
    let hist = env.history(&sms).await;
    assert_eq!(
        common::texts(&json!(hist)),
        vec!["hi", "one", "two"],
        "nothing stored for the refused send"
    );

    // WhatsApp is not held up by the slow SMS provider.
    let t0 = Instant::now();
    let w = send_ok(&mut ws, &wa, "meanwhile", &[]).await;
    assert_eq!(next_status(&mut ws, &w).await["status"], "sent");
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "WhatsApp waited {:?} behind SMS",
        t0.elapsed()
    );

    // Both queued SMS go out in order once Twilio answers.
    assert_eq!(next_status(&mut ws, &m1).await["status"], "sent");
    assert_eq!(next_status(&mut ws, &m2).await["status"], "sent");
    let bodies: Vec<String> = env
        .mock
        .sends(Api::Twilio)
        .iter()
        .map(|r| r.form_value("Body").unwrap_or_default())
        .collect();
    assert_eq!(bodies, vec!["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_links_expire() {
    let env = start(|c| c.attachment_link_ttl = Duration::from_millis(500));
    let (alice, mut ws) = env.agent("alice").await;
    let conv = conversation_on(&env, &mut ws, "sms", 1).await;
    let png = sample(1_000);
    let att = env
        .upload(&alice.token, "p.png", "image/png", png.clone())
        .await;
    send_ok(&mut ws, &conv, "pic", &[&att]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    let link = sends[0].form_values("MediaUrl").pop().expect("MediaUrl");
    let (_id, expires, _sig) = parse_link(&link);
    assert!(
        expires <= now_secs() + 2,
        "a 500 ms link expires soon: {link}"
    );

    // Wait until the expiry second has passed.
    while now_secs() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = env.get(&env.local(&link), None).await;
    r.assert_error(403, "bad_signature", "expired link");
    // The attachment itself is still there for the agent.
    let r = env
        .get(&format!("/v1/attachments/{att}"), Some(&alice.token))
        .await;
    assert_eq!((r.status, r.bytes), (200, png));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_webhook_bodies_are_refused() {
    let env = start(|c| c.max_webhook_body = 4096);
    let (_alice, mut ws) = env.agent("alice").await;
    let long = "x".repeat(5000);

    let r = env
        .sms_inbound(&sms_params("SM0800", DANA_SMS, &long))
        .await;
    r.assert_error(413, "payload_too_large", "SMS webhook over the limit");
    let r = env
        .wa_webhook(&wa_text_webhook("wamid.BIG", DANA_WA, "Dana", &long))
        .await;
    r.assert_error(413, "payload_too_large", "WhatsApp webhook over the limit");
    let r = env
        .fb_webhook(&fb_text_webhook("m_big", "PSID1", &long))
        .await;
    r.assert_error(413, "payload_too_large", "Messenger webhook over the limit");
    assert_quiet(&mut ws, "an offer from a refused webhook").await;

    // Just under the limit is fine.
    env.sms_in(&sms_params("SM0801", DANA_SMS, &"y".repeat(3000)))
        .await;
    ws.offer().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_channels_are_disabled() {
    // SMS configured; WhatsApp missing its verify token; Messenger not at all.
    let mock = Mock::start();
    let mut cfg = config(&mock);
    cfg.whatsapp_verify_token = None;
    cfg.messenger_page_token = None;
    cfg.messenger_app_secret = None;
    cfg.messenger_verify_token = None;
    let env = Env {
        h: common::start_with(cfg),
        mock,
    };
    let (_alice, mut ws) = env.agent("alice").await;

    let r = env
        .wa_webhook(&wa_text_webhook("wamid.X", DANA_WA, "Dana", "hi"))
        .await;
    r.assert_error(404, "channel_disabled", "WhatsApp webhook POST");
    let r = env
        .verify(
            WA_WEBHOOK,
            &[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", WA_VERIFY),
                ("hub.challenge", "1"),
            ],
        )
        .await;
    r.assert_error(404, "channel_disabled", "WhatsApp verify");
    let r = env.fb_webhook(&fb_text_webhook("m_x", "PSID1", "hi")).await;
    r.assert_error(404, "channel_disabled", "Messenger webhook POST");
    let r = env
        .verify(
            FB_WEBHOOK,
            &[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", FB_VERIFY),
                ("hub.challenge", "1"),
            ],
        )
        .await;
    r.assert_error(404, "channel_disabled", "Messenger verify");
    for (channel, to) in [("whatsapp", DANA_WA), ("messenger", "PSID1")] {
        let v = ws
            .call(json!({"type": "outbound", "channel": channel, "to": to, "text": "hi"}))
            .await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("channel_disabled")),
            "{channel} outbound: {v}"
        );
    }
    assert_quiet(&mut ws, "an offer from a disabled channel").await;
    assert!(env.mock.requests().is_empty(), "{}", env.mock.dump());

    // SMS, configured, works on the same broker.
    env.sms_in(&sms_params("SM9000", DANA_SMS, "hi")).await;
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["channel"], "sms");

    // A broker with nothing configured: every provider endpoint is disabled.
    let bare = common::start();
    let http = &bare.http;
    for (method, path) in [
        ("POST", SMS_INBOUND),
        ("POST", SMS_STATUS),
        ("GET", WA_WEBHOOK),
        ("POST", WA_WEBHOOK),
        ("GET", FB_WEBHOOK),
        ("POST", FB_WEBHOOK),
    ] {
        let url = bare.url(path);
        let req = if method == "GET" {
            http.get(format!(
                "{url}?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1"
            ))
        } else {
            http.post(url)
                .header("Content-Type", "application/json")
                .body("{}")
        };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("channel_disabled")),
            "{method} {path}: {body}"
        );
    }
    let bob = bare.create_agent("bob", 1, &[]).await;
    let mut bws = bare.agent_online(&bob).await;
    let v = bws
        .call(json!({"type": "outbound", "channel": "sms", "to": DANA_SMS, "text": "hi"}))
        .await;
    assert_eq!(v["code"], "channel_disabled", "{v}");
}

//! Provider messages reach their queue by `[[routes]]`: the business address
//! written to picks the queue, and the queue's messages to the customer
//! (maximum wait, closed, inactivity warning) go out through the provider;
//! over real sockets against the mock provider.
mod common;
mod providers;

use std::time::{Duration, SystemTime};

use common::{s, QUIET};
use providers::mock::Api;
use providers::*;
use serde_json::{json, Value};
use switchboard::clock::Clock;
use switchboard::config::Route;
use switchboard::protocol::ChannelKind;
use switchboard::router::Queue;

/// A queue as the TOML or the admin API would define it.
fn queue(v: Value) -> Queue {
    serde_json::from_value(v).expect("a valid queue")
}

fn route(channel: ChannelKind, to: &str, queue: &str) -> Route {
    Route {
        channel,
        to: to.into(),
        queue: queue.into(),
    }
}

/// The conversation of the only task waiting in `queue`.
async fn waiting_conversation(env: &Env, queue: &str) -> String {
    let path = format!("/v1/tasks?queue={queue}");
    for _ in 0..200 {
        let tasks = env.h.admin_get_ok(&path).await;
        if let Some(t) = tasks.as_array().and_then(|a| a.first()) {
            return s(&t["conversation_id"]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no task waits in {queue}");
}

/// The history's `system` message with `text`, once it has `status`.
async fn system_message_with_status(env: &Env, conv: &str, text: &str, status: &str) -> Value {
    for _ in 0..300 {
        let found = env
            .history(conv)
            .await
            .into_iter()
            .find(|m| m["from"] == "system" && m["text"] == text);
        if let Some(m) = found.filter(|m| m["status"] == status) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no {status} system message {text:?} in {:?}",
        env.history(conv).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_to_a_routed_number_waits_in_its_queue() {
    let env = start(|cfg| {
        let mut billing = Queue::named("billing");
        billing.channels = vec![ChannelKind::Sms];
        billing.priority = 30;
        cfg.queues = vec![billing];
        cfg.routes = vec![Route {
            channel: ChannelKind::Sms,
            to: SMS_FROM.into(),
            queue: "billing".into(),
        }];
    });
    let (_alice, mut ws) = env.agent("alice").await;
    let r = env
        .sms_inbound(&sms_params("SM0001", "+15551230000", "Invoice question"))
        .await;
    assert_eq!(r.status, 200, "inbound: {}", r.text);
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["channel"], "sms");
    assert_eq!(offer["task"]["queue"], "billing", "{offer}");
    assert_eq!(offer["task"]["priority"], 30, "{offer}");
    let tasks = env.h.admin_get_ok("/v1/tasks?queue=billing").await;
    assert_eq!(tasks[0]["id"], s(&offer["task"]["id"]).as_str(), "{tasks}");

    // WhatsApp has no route: it waits in `default`.
    env.wa_in(&wa_text_webhook("wamid.1", "15551230000", "Dana", "Hola"))
        .await;
    let offer = ws.offer().await;
    assert_eq!(offer["task"]["channel"], "whatsapp");
    assert_eq!(offer["task"]["queue"], "default", "{offer}");
    ws.expect_none("another offer", QUIET, |v| v["type"] == "task.offered")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_wait_an_sms_customer_is_sent_the_queues_message_and_no_internal_note() {
    let env = start(|cfg| {
        // Short enough that the inbound text below is split, with a
        // `system` note for the agent that must not reach the customer.
        cfg.max_text = 20;
        cfg.queues = vec![queue(json!({
            "id": "short", "max_wait": "1500ms",
            "max_wait_message": "Nobody is free now, sorry. Write again later.",
        }))];
        cfg.routes = vec![route(ChannelKind::Sms, SMS_FROM, "short")];
    });
    let dana = "+15551230000";
    env.sms_in(&sms_params(
        "SM0001",
        dana,
        "A question that is longer than twenty",
    ))
    .await;
    let conv = waiting_conversation(&env, "short").await;
    let note = env
        .history(&conv)
        .await
        .into_iter()
        .find(|m| m["from"] == "system")
        .expect("the split note");

    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    assert_eq!(sends[0].form_value("To").as_deref(), Some(dana));
    assert_eq!(sends[0].form_value("From").as_deref(), Some(SMS_FROM));
    assert_eq!(
        sends[0].form_value("Body").as_deref(),
        Some("Nobody is free now, sorry. Write again later.")
    );
    // The provider's answer is reported on the message, as for a reply.
    let sent = system_message_with_status(
        &env,
        &conv,
        "Nobody is free now, sorry. Write again later.",
        "sent",
    )
    .await;
    assert!(sent["agent_id"].is_null(), "{sent}");
    let c = env.h.conversation(&conv).await;
    assert_eq!(c["task"]["reason"], "max_wait", "{c}");
    // The split note stayed in the history only.
    env.mock.assert_sends_stay(Api::Twilio, 1, QUIET).await;
    assert_eq!(
        env.history(&conv)
            .await
            .iter()
            .find(|m| m["id"] == note["id"])
            .map(|m| m["status"].clone()),
        Some(json!("accepted"))
    );
}

/// Monday 2026-11-30 at `hh:00` UTC.
fn monday(hh: u64) -> SystemTime {
    humantime::parse_rfc3339("2026-11-30T00:00:00Z").unwrap() + Duration::from_secs(hh * 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_customer_writing_while_the_queue_is_closed_is_sent_the_closed_message() {
    let clock = Clock::manual(monday(7));
    let env = start(|cfg| {
        cfg.clock = clock.clone();
        cfg.queues = vec![queue(json!({
            "id": "office",
            "business_hours": {"tz": "UTC", "weekly": {"mon": ["09:00-18:00"]},
                               "closed_message": "We open at 9.", "outside": "wait"},
        }))];
        cfg.routes = vec![route(
            ChannelKind::Whatsapp,
            providers::mock::PHONE_NUMBER_ID,
            "office",
        )];
    });
    env.wa_in(&wa_text_webhook("wamid.1", "15551230000", "Dana", "Hola"))
        .await;
    let sends = env.mock.wait_sends(Api::Whatsapp, 1).await;
    let body = sends[0].json();
    assert_eq!(body["to"], "15551230000", "{body}");
    assert_eq!(body["text"]["body"], "We open at 9.", "{body}");
    let conv = waiting_conversation(&env, "office").await;
    system_message_with_status(&env, &conv, "We open at 9.", "sent").await;

    // The task still waits; once open, a new customer gets no message.
    clock.set(monday(9));
    env.wa_in(&wa_text_webhook("wamid.2", "15559990000", "Eve", "Hello"))
        .await;
    let (_alice, mut ws) = env.agent("alice").await;
    let first = ws.offer().await;
    assert_eq!(first["task"]["conversation_id"], conv.as_str(), "{first}");
    env.mock.assert_sends_stay(Api::Whatsapp, 1, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_customer_gone_quiet_is_sent_the_queues_inactivity_warning() {
    let env = start(|cfg| {
        cfg.queues = vec![queue(json!({
            "id": "quiet",
            "inactivity": {"warn_after": "600ms", "warning": "Are you still there?",
                           "close_after": "1m"},
        }))];
        cfg.routes = vec![route(ChannelKind::Sms, SMS_FROM, "quiet")];
    });
    let dana = "+15551230000";
    let (_alice, mut ws) = env.agent("alice").await;
    env.sms_in(&sms_params("SM0001", dana, "Invoice question"))
        .await;
    let (_offer, _assigned, conv, _task) = take(&mut ws).await;

    // The agent sees the warning; the customer is texted it, as a reply is.
    let seen = ws
        .recv_where("the warning", |v| {
            v["type"] == "message" && v["message"]["text"] == "Are you still there?"
        })
        .await;
    assert_eq!(seen["message"]["from"], "system", "{seen}");
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    assert_eq!(sends[0].form_value("To").as_deref(), Some(dana));
    assert_eq!(sends[0].form_value("From").as_deref(), Some(SMS_FROM));
    assert_eq!(
        sends[0].form_value("Body").as_deref(),
        Some("Are you still there?")
    );
    let sent = system_message_with_status(&env, &conv, "Are you still there?", "sent").await;
    assert!(sent["agent_id"].is_null(), "{sent}");
    // Once: the next warning waits for the customer's next message.
    env.mock.assert_sends_stay(Api::Twilio, 1, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactivity_warning_outside_the_whatsapp_window_is_kept_as_failed() {
    let env = start(|cfg| {
        // The window closes before the warning is due.
        cfg.messaging_window = Duration::from_millis(200);
        cfg.queues = vec![queue(json!({
            "id": "quiet",
            "inactivity": {"warn_after": "700ms", "warning": "Are you still there?",
                           "close_after": "1m"},
        }))];
        cfg.routes = vec![route(
            ChannelKind::Whatsapp,
            providers::mock::PHONE_NUMBER_ID,
            "quiet",
        )];
    });
    let (_alice, mut ws) = env.agent("alice").await;
    env.wa_in(&wa_text_webhook("wamid.1", "15551230000", "Dana", "Hola"))
        .await;
    let (_offer, _assigned, conv, _task) = take(&mut ws).await;
    system_message_with_status(&env, &conv, "Are you still there?", "failed").await;
    env.mock.assert_sends_stay(Api::Whatsapp, 0, QUIET).await;
}

//! Provider messages reach their queue by `[[routes]]`: the business address
//! written to picks the queue, over real sockets against the mock provider.
mod common;
mod providers;

use common::{s, QUIET};
use providers::*;
use switchboard::config::Route;
use switchboard::protocol::ChannelKind;
use switchboard::router::Queue;

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

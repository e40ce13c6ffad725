//! A webchat customer who closes every socket while still waiting for an agent
//! is treated as gone after the customer grace period: the task is canceled.
//! Coming back in time keeps it.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_customer_who_leaves_is_canceled_after_the_grace() {
    let mut cfg = test_config();
    cfg.customer_grace = Duration::from_millis(300);
    let h = start_with(cfg);

    let (_s, ws, _ack) = h.customer_with_message("Dana", "hello?").await;
    drop(ws);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let stats = h.admin_get_ok("/v1/stats").await;
        if stats["tasks"]["canceled"] == 1 {
            assert_eq!(stats["tasks"]["queued"], 0, "{stats}");
            assert_eq!(stats["queue"]["length"], 0, "{stats}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task not canceled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An agent who comes later is not offered the abandoned conversation.
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    a.expect_none("no offer for a canceled task", QUIET, |v| {
        v["type"] == "task.offered"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_back_within_the_grace_keeps_the_task() {
    let mut cfg = test_config();
    cfg.customer_grace = Duration::from_millis(400);
    let h = start_with(cfg);

    let (s, ws, _ack) = h.customer_with_message("Dana", "hello?").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_ws, history) = h.connect_customer(&s).await;
    assert_eq!(history["messages"][0]["text"], "hello?", "{history}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = h.admin_get_ok("/v1/stats").await;
    assert_eq!(stats["tasks"]["queued"], 1, "{stats}");
    assert_eq!(stats["tasks"]["canceled"], 0, "{stats}");

    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let offer = a.offer().await;
    assert_eq!(offer["task"]["preview"], "hello?");
}

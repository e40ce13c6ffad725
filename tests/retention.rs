//! Finished conversations stay readable for the history retention, then are
//! dropped from memory (with a webchat session that has nothing left).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_conversations_are_forgotten_after_the_retention() {
    let mut cfg = test_config();
    cfg.history_retention = Duration::from_millis(400);
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (s, c, _ack) = h.customer_with_message("Dana", "hello").await;
    let (offer, _) = a.take_offer().await;
    let conv = offer["task"]["conversation_id"]
        .as_str()
        .expect("conv")
        .to_owned();
    let task = offer["task"]["id"].as_str().expect("task").to_owned();
    a.end(&conv).await;
    a.complete(&task, "resolved", "").await;
    drop(c);

    // Readable right after the end…
    let path = format!("/v1/conversations/{conv}/messages");
    assert_eq!(h.get(&path, Some(&s.token)).await.status, 200);
    // …and gone after the retention, with the idle session and its token.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = h.admin_get(&format!("/v1/conversations/{conv}")).await;
        if r.status == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still there: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = h.get("/v1/webchat/session", Some(&s.token)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    // The agent is free for new work.
    let (_s2, _c2, _ack) = h.customer_with_message("Sam", "hi again").await;
    let offer = a.offer().await;
    assert_eq!(offer["task"]["preview"], "hi again");
}

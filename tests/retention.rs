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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_with_their_conversation_and_unsent_uploads_after_the_retention() {
    let retention = Duration::from_millis(400);
    let mut cfg = test_config();
    cfg.history_retention = retention;
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 2, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let upload = |name: &'static str| {
        let (h, token) = (&h, alice.token.clone());
        async move {
            let r = h
                .request_raw(
                    reqwest::Method::POST,
                    &format!("/v1/attachments?filename={name}"),
                    Some(&token),
                    "application/pdf",
                    vec![7u8; 100],
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
            r.body["id"].as_str().expect("attachment id").to_owned()
        }
    };
    let status = |id: String| {
        let h = &h;
        async move { h.admin_get(&format!("/v1/attachments/{id}")).await.status }
    };

    // Two conversations, a file sent in each; the first ends, the second stays open.
    let mut convs = Vec::new();
    let mut keep = Vec::new();
    for name in ["Dana", "Sam"] {
        let (_s, c, _ack) = h.customer_with_message(name, "hello").await;
        let (offer, _) = a.take_offer().await;
        let conv = offer["task"]["conversation_id"]
            .as_str()
            .expect("conv")
            .to_owned();
        let task = offer["task"]["id"].as_str().expect("task").to_owned();
        let file = upload("invoice.pdf").await;
        let echo = a
            .call(serde_json::json!({
                "type": "send", "conversation_id": conv, "text": "your invoice",
                "attachments": [file], "client_msg_id": format!("f-{name}"),
            }))
            .await;
        assert_eq!(echo["type"], "message", "{echo}");
        convs.push((conv, task, file));
        keep.push(c);
    }
    let unsent = upload("draft.pdf").await;
    let (ended, ended_task, ended_file) = convs[0].clone();
    let open_file = convs[1].2.clone();
    a.end(&ended).await;
    a.complete(&ended_task, "resolved", "").await;
    assert_eq!(
        status(ended_file.clone()).await,
        200,
        "readable until the retention"
    );

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while h
        .admin_get(&format!("/v1/conversations/{ended}"))
        .await
        .status
        != 404
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "conversation not forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(ended_file).await,
        404,
        "the file went with its conversation"
    );
    while status(unsent.clone()).await != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unsent upload never swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Older than the retention, but its conversation is open: kept.
    tokio::time::sleep(retention).await;
    assert_eq!(
        status(open_file).await,
        200,
        "file of an open conversation dropped"
    );
}

//! A widget coming back: `GET /v1/webchat/session` says whether its token is
//! still known and which conversation is current, and the `history` frame
//! says whether that conversation has ended.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lookup_and_ended_history() {
    let h = start();
    let r = h.get("/v1/webchat/session", Some("not-a-token")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let alice = h.create_agent("alice", 1, &[]).await;
    let r = h.get("/v1/webchat/session", Some(&alice.token)).await;
    assert_eq!(r.status, 401, "agents have no webchat session: {}", r.text);

    let s = h.create_session("Dana", None).await;
    let r = h.get("/v1/webchat/session", Some(&s.token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["session_id"], json!(s.id));
    assert_eq!(r.body["name"], "Dana");
    assert_eq!(r.body["conversation_id"], json!(null));

    let mut a = h.agent_online(&alice).await;
    let (mut c, history) = h.connect_customer(&s).await;
    assert_eq!(history["ended"], false, "{history}");
    c.say("hello").await;
    let (offer, _) = a.take_offer().await;
    let conv = offer["task"]["conversation_id"]
        .as_str()
        .expect("conv")
        .to_owned();
    let r = h.get("/v1/webchat/session", Some(&s.token)).await;
    assert_eq!(r.body["conversation_id"], json!(conv));
    assert_eq!(r.body["open"], true);

    a.end(&conv).await;
    c.recv_type("conversation.ended").await;
    let (_c2, history) = h.connect_customer(&s).await;
    assert_eq!(history["conversation_id"], json!(conv), "{history}");
    assert_eq!(history["ended"], true, "{history}");
    let r = h.get("/v1/webchat/session", Some(&s.token)).await;
    assert_eq!(r.body["open"], false);
    assert_eq!(r.body["conversation_id"], json!(conv));
}

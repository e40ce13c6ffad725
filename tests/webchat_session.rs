//! A widget coming back: `GET /v1/webchat/session` says whether its token is
//! still known and which conversation is current, and the `history` frame
//! says whether that conversation has ended. And a session open in two tabs:
//! what each socket gets of a message sent from one of them.

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

/// GETs the session behind `token` until it answers `status`, for at most 5 s.
async fn wait_session_status(h: &Harness, token: &str, status: u16) -> Resp {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = h.get("/v1/webchat/session", Some(token)).await;
        if r.status == status || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_sessions_are_forgotten_after_the_idle_time() {
    let idle = std::time::Duration::from_millis(300);
    let mut cfg = test_config();
    cfg.webchat_session_idle = idle;
    let h = start_with(cfg);

    // Never connected: forgotten, and its token no longer opens a socket.
    let unused = h.create_session("Una", None).await;
    // Connected: kept while the socket is open, forgotten once it closes.
    let connected = h.create_session("Cole", None).await;
    let (socket, _) = h.connect_customer(&connected).await;
    // Wrote in: the conversation keeps the session after the socket closes.
    let (talked, talked_ws, _) = h.customer_with_message("Tali", "hello").await;
    drop(talked_ws);

    let r = wait_session_status(&h, &unused.token, 401).await;
    assert_eq!(r.status, 401, "unused session still known: {}", r.text);
    assert_eq!(
        try_connect(&h.customer_ws_url(&unused)).await.err(),
        Some(401),
        "a forgotten token must not open a socket"
    );

    tokio::time::sleep(idle * 3).await;
    let r = h.get("/v1/webchat/session", Some(&connected.token)).await;
    assert_eq!(r.status, 200, "connected session forgotten: {}", r.text);
    let r = h.get("/v1/webchat/session", Some(&talked.token)).await;
    assert_eq!(
        r.status, 200,
        "session with a conversation forgotten: {}",
        r.text
    );
    assert_eq!(r.body["open"], true, "{}", r.text);

    drop(socket);
    let r = wait_session_status(&h, &connected.token, 401).await;
    assert_eq!(
        r.status, 401,
        "closed, unused session still known: {}",
        r.text
    );
}

/// A customer's message: on the socket that sent it its `ack` and then the
/// message, in that order; on the session's other socket the message alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_acked_on_its_socket_and_shown_on_every_socket() {
    let h = start();
    let s = h.create_session("Dana", None).await;
    let (mut first, _) = h.connect_customer(&s).await;
    first.say("opening").await;
    let (mut second, history) = h.connect_customer(&s).await;
    assert_eq!(history["type"], "history", "{history}");

    first
        .send(json!({"type": "message", "text": "second", "client_msg_id": "second-of-two", "ref": "r-2"}))
        .await;
    let ours = |v: &serde_json::Value| {
        (v["type"] == "ack" && v["ref"] == "r-2")
            || (v["type"] == "message" && v["message"]["text"] == "second")
    };
    let ack = first.recv_where("the ack or the message", ours).await;
    assert_eq!(ack["type"], "ack", "the ack comes first: {ack}");
    assert_eq!(ack["client_msg_id"], "second-of-two", "{ack}");
    let shown = first.recv_where("the message", ours).await;
    assert_eq!(shown["type"], "message", "{shown}");
    assert_eq!(shown["message"]["id"], ack["message_id"], "{shown}");

    let elsewhere = second
        .recv_where("the message", |v| {
            v["type"] == "message" && v["message"]["text"] == "second"
        })
        .await;
    assert_eq!(elsewhere["message"]["id"], ack["message_id"], "{elsewhere}");
    second
        .expect_none("an ack of another socket's message", QUIET, |v| {
            v["type"] == "ack"
        })
        .await;
}

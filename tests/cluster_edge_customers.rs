//! A webchat customer's socket on a standby ends there: the standby
//! screens what the client sends and carries it over the bus between nodes
//! to the active node, which runs the conversation through a stand-in for
//! the socket (`cluster::node_bus`, `cluster::remote_customer`). Real
//! processes on a real nats-server: the socket is not relayed, bad input
//! gets the answers the active node gives its own sockets, the socket's
//! limits hold at the edge, and a node lost on either side ends the socket
//! on the other (the customer's grace starts on the active node; the
//! customer is told to reconnect on the standby).
//!
//! The tests run one at a time (each starts its own nats-server and nodes).

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use common::cluster::{active_and_edge, PREFIX};
use common::*;

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many NATS messages arrive on `subject` within `within`.
async fn count(sub: &mut async_nats::Subscriber, within: Duration) -> usize {
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, sub.next()).await {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_socket_ends_at_the_standby_and_its_chat_crosses_the_bus() {
    let _serial = SERIAL.lock().await;
    let (cluster, active, b) = active_and_edge(&[]).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = a.agent_online(&alice).await;

    let nats = cluster.nats_client().await;
    let mut opens = nats
        .subscribe(format!("{PREFIX}.relay.open"))
        .await
        .expect("subscribe");
    let mut to_active = nats
        .subscribe(format!("{PREFIX}.bus.node-0"))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");

    // The session is made through node-1 (an HTTP call: relayed); its
    // socket is not relayed, it ends on node-1.
    let session = b.create_session("Dana", None).await;
    assert_eq!(count(&mut opens, Duration::from_millis(300)).await, 1);
    let (mut customer, history) = b.connect_customer(&session).await;
    assert_eq!(history["type"], "history", "{history}");
    let ack = customer.say("my order is late").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;
    customer.recv_type("agent.joined").await;
    desk.agent_send(&conv, "Sorry to hear that", "r1").await;
    customer.recv_message_text("Sorry to hear that").await;
    customer.say("order 1234").await;
    desk.recv_message_text("order 1234").await;
    assert_eq!(
        count(&mut opens, Duration::from_millis(300)).await,
        0,
        "the customer's socket was relayed"
    );
    assert!(
        count(&mut to_active, Duration::from_millis(300)).await > 0,
        "nothing crossed the bus to the active node"
    );

    // Every node tells the same history, in order, without gaps.
    let stored = b.messages(&conv).await["messages"].clone();
    assert_eq!(
        texts(&stored),
        vec!["my order is late", "Sorry to hear that", "order 1234"]
    );
    assert_gap_free(&stored);

    // The customer comes back through the same node: her history.
    drop(customer);
    let (mut again, hello) = b.connect_customer(&session).await;
    assert_eq!(
        texts(&hello["messages"]),
        vec!["my order is late", "Sorry to hear that", "order 1234"]
    );
    desk.end(&conv).await;
    again.recv_type("conversation.ended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_the_standby_gets_the_active_nodes_answers() {
    let _serial = SERIAL.lock().await;
    let (_cluster, active, b) = active_and_edge(&[
        ("SWITCHBOARD_SOCKET_MESSAGES_PER_SECOND", "3"),
        ("SWITCHBOARD_MAX_FRAME", "4096"),
    ])
    .await;
    let a = &active.h;

    // An unknown token: the active node's 401, through the standby.
    let bad = Session {
        id: "ws_nope".into(),
        token: "not-a-webchat-token".into(),
        name: "Nobody".into(),
    };
    assert_eq!(try_connect(&a.customer_ws_url(&bad)).await.err(), Some(401));
    assert_eq!(try_connect(&b.customer_ws_url(&bad)).await.err(), Some(401));

    let session = b.create_session("Dana", None).await;
    let (mut customer, _) = b.connect_customer(&session).await;
    // Malformed JSON, and a command that is not one: `bad_request`, the
    // ref salvaged where there is one.
    customer.send_text("{not json".into()).await;
    let v = customer.recv_type("error").await;
    assert_eq!(v["code"], "bad_request", "{v}");
    customer.send(json!({"type": "fly", "ref": "r-fly"})).await;
    customer.expect_error("r-fly", "bad_request").await;
    // Over the socket's command rate (3 a second): refused at the edge,
    // each answered, none stored.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..6 {
        customer
            .send(json!({"type": "message", "text": format!("m{i}"), "ref": format!("m{i}"), "client_msg_id": format!("m{i}")}))
            .await;
    }
    let mut acked = 0;
    let mut refused = 0;
    let mut conv = None;
    for _ in 0..6 {
        let v = customer
            .recv_where("an ack or a refusal", |v| {
                v["type"] == "ack" || v["type"] == "error"
            })
            .await;
        if v["type"] == "ack" {
            acked += 1;
            conv = Some(s(&v["conversation_id"]));
        } else {
            assert_eq!(v["code"], "rate_limited", "{v}");
            refused += 1;
        }
    }
    assert!(
        acked >= 1 && refused >= 1,
        "acked {acked}, refused {refused}"
    );
    let conv = conv.expect("a message was taken");
    let stored = a.messages(&conv).await["messages"].clone();
    assert_eq!(texts(&stored).len(), acked, "{stored}");

    // A message over max_frame: closed 1009 at the edge.
    customer.send_text("x".repeat(8 * 1024)).await;
    let (code, _) = customer.recv_close_within(Duration::from_secs(5)).await;
    assert_eq!(code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_starts_its_customers_grace_on_the_active_node() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active, b) = active_and_edge(&[("SWITCHBOARD_CUSTOMER_GRACE", "1s")]).await;
    let a = &active.h;
    // No agent: the task waits in the queue while its customer is there.
    let (_session, _customer, ack) = b.customer_with_message("Dana", "anyone?").await;
    let conv = s(&ack["conversation_id"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = a.conversation(&conv).await;
    assert_eq!(v["task"]["state"], "queued", "still there: {v}");

    // node-1 dies: only its silence tells the active node, which stops the
    // stand-in; past the customer's grace the waiting task is canceled.
    cluster.process(1).signal(libc::SIGKILL);
    cluster.process(1).wait_exit(Duration::from_secs(5));
    let t = Instant::now();
    let v = a
        .wait_conversation(&conv, "canceled with its customer gone", |v| {
            v["task"]["state"] == "canceled"
        })
        .await;
    eprintln!(
        "edge: a dead standby's customer was given up after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the bus's silence (TTL/2) plus the grace, not more: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_active_node_dies_the_standby_tells_its_customers_to_reconnect() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, _active, b) = active_and_edge(&[]).await;
    let (_session, mut customer, _) = b.customer_with_message("Dana", "hello").await;
    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    let (code, reason) = customer.recv_close_within(Duration::from_secs(10)).await;
    assert_eq!(code, 1012, "service restart: reconnect ({reason})");
    assert!(reason.contains("reconnect"), "{reason}");
}

/// Every message of `conv`, read forward in pages through `h`.
async fn all_messages(h: &Harness, conv: &str) -> serde_json::Value {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = h
            .admin_get_ok(&format!(
                "/v1/conversations/{conv}/messages?after_seq={after}&limit=1000"
            ))
            .await;
        let got = page["messages"].as_array().cloned().unwrap_or_default();
        if let Some(last) = got.last() {
            after = last["seq"].as_u64().expect("seq");
        }
        all.extend(got);
        if page["has_more"] != true {
            return serde_json::Value::Array(all);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_that_stops_reading_on_a_standby_is_cut_off_there_and_nothing_is_lost() {
    const TEXT_LEN: usize = 20_000;
    let _serial = SERIAL.lock().await;
    let env = [
        ("SWITCHBOARD_SOCKET_BACKLOG", "16"),
        ("SWITCHBOARD_SOCKET_BACKLOG_BYTES", "256KiB"),
        ("SWITCHBOARD_MAX_TEXT", "20000"),
        ("SWITCHBOARD_MAX_HISTORY_BYTES", "64MiB"),
        ("SWITCHBOARD_HEARTBEAT_INTERVAL", "30s"),
        ("SWITCHBOARD_CLIENT_TIMEOUT", "120s"),
    ];
    let (_cluster, active, b) = active_and_edge(&env).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = a.agent_online(&alice).await;
    let (session, mut customer, ack) = b.customer_with_message("Dana", "start").await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;
    customer.recv_type("agent.joined").await;

    // Dana stops reading; Alice writes a lot, every message taken. The
    // socket's queue on the standby fills and the standby cuts her off.
    let mut sent = 0usize;
    while sent < 1200 {
        let head = format!("msg-{sent:05}-");
        let text = format!("{head}{}", "x".repeat(TEXT_LEN - head.len()));
        desk.agent_send(&conv, &text, &format!("a{sent}")).await;
        sent += 1;
    }
    // She reads again: what was queued, then the slow consumer's close.
    let (code, reason) = customer.recv_close_within(Duration::from_secs(30)).await;
    assert_eq!((code, reason.as_str()), (1008, "slow_consumer"));
    // Nothing is lost: she comes back (through the standby) to the whole
    // conversation, in order, without gaps.
    let (mut again, history) = b.connect_customer(&session).await;
    assert_eq!(history["type"], "history", "{history}");
    let stored = all_messages(&b, &conv).await;
    assert_gap_free(&stored);
    assert_eq!(texts(&stored).len(), sent + 1, "every message");
    desk.agent_send(&conv, "still there?", "last").await;
    again.recv_message_text("still there?").await;
}

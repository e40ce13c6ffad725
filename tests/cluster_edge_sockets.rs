//! A webchat customer's socket, an agent's desk and a supervisor's socket
//! on a standby end there: the standby screens what the client sends and
//! carries it over the bus between nodes to the active node, which runs
//! the conversation, the agent or the supervisor's stream through a
//! stand-in for the socket (`cluster::node_bus`, `cluster::remote_socket`). Real processes on a real nats-server: the
//! sockets are not relayed, bad input gets the answers the active node
//! gives its own sockets, the sockets' limits hold at the edge, and a node
//! lost on either side ends the socket on the other (the customer's or the
//! agent's grace starts on the active node; the client is told to
//! reconnect on the standby).
//!
//! The tests run one at a time (each starts its own nats-server and nodes).

mod common;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use common::cluster::{active_and_edge, bulky, flood_ten, relay_opens, PREFIX, SLOW_READER};
use common::*;

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The subjects of the NATS messages that arrive on `sub` within `within`.
async fn subjects(sub: &mut async_nats::Subscriber, within: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        seen.push(m.subject.to_string());
    }
    seen
}

/// How many NATS messages arrive on `subject` within `within`.
async fn count(sub: &mut async_nats::Subscriber, within: Duration) -> usize {
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, sub.next()).await {
        n += 1;
    }
    n
}

/// A supervisor's socket through `h` with `token`.
fn supervisor_url(h: &Harness, token: &str) -> String {
    format!("{}/v1/supervisor/ws?token={token}", h.ws_base)
}

/// A supervisor's socket through `h`, its stand-in on the active node
/// subscribed to the hub once this returns (a command answered by the
/// stand-in, which subscribes as it starts).
async fn supervisor(h: &Harness) -> Ws {
    let mut sup = Ws::connect(&supervisor_url(h, &h.admin)).await;
    sup.send(json!({"type": "monitor", "conversation_id": "cv_nope", "ref": "probe"}))
        .await;
    sup.expect_error("probe", "not_found").await;
    sup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_socket_ends_at_the_standby_and_its_chat_crosses_the_bus() {
    let _serial = SERIAL.lock().await;
    let (cluster, active, b) = active_and_edge(&[]).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = a.agent_online(&alice).await;

    let (nats, mut opens) = relay_opens(&cluster).await;
    let mut bus = nats
        .subscribe(format!("{PREFIX}.bus.*"))
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
    // The admission went to node-0's own endpoint; the chat, to one of
    // its workers' (`node-0~<n>`), from one of node-1's.
    let subjects = subjects(&mut bus, Duration::from_millis(300)).await;
    let endpoint = |node: &str| {
        let prefix = format!("{PREFIX}.bus.{node}~");
        subjects.iter().any(|s| s.starts_with(&prefix))
    };
    assert!(
        endpoint("node-0") && endpoint("node-1"),
        "the chat did not cross between the nodes' workers: {subjects:?}"
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
async fn when_the_active_node_dies_the_standby_tells_its_clients_to_reconnect() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, _active, b) = active_and_edge(&[]).await;
    let alice = b.create_agent("alice", 1, &[]).await;
    let mut desk = b.agent_online(&alice).await;
    let (_session, mut customer, _) = b.customer_with_message("Dana", "hello").await;
    let mut sup = supervisor(&b).await;
    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    for client in [&mut customer, &mut desk, &mut sup] {
        let (code, reason) = client.recv_close_within(Duration::from_secs(10)).await;
        assert_eq!(code, 1012, "service restart: reconnect ({reason})");
        assert!(reason.contains("reconnect"), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_on_the_standby_works_a_whole_chat_over_the_bus() {
    let _serial = SERIAL.lock().await;
    let (cluster, active, b) = active_and_edge(&[]).await;
    let a = &active.h;
    // HTTP calls through node-1 are relayed; the sockets opened after are
    // not.
    let alice = b.create_agent("alice", 1, &[]).await;
    let session = b.create_session("Dana", None).await;
    let (_nats, mut opens) = relay_opens(&cluster).await;

    let (mut desk, hello) = b.connect_agent(&alice).await;
    assert_eq!(hello["agent"]["id"], "alice", "{hello}");
    desk.set_activity("available").await;
    assert_eq!(a.admin_get_ok("/v1/agents/alice").await["connected"], true);
    let (mut customer, _) = b.connect_customer(&session).await;
    let ack = customer.say("my order is late").await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    let task = s(&offer["task"]["id"]);
    desk.accept(&task).await;
    customer.recv_type("agent.joined").await;
    desk.agent_send(&conv, "Sorry to hear that", "r1").await;
    customer.recv_message_text("Sorry to hear that").await;
    customer.say("order 1234").await;
    desk.recv_message_text("order 1234").await;
    desk.end(&conv).await;
    customer.recv_type("conversation.ended").await;
    assert_eq!(
        count(&mut opens, Duration::from_millis(300)).await,
        0,
        "a socket was relayed"
    );

    // Back through the standby in wrap-up: its hello holds the task.
    drop(desk);
    let (mut desk, hello) = b.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    // A desk opened on the active node replaces the one on the standby,
    // whose close crosses the bus.
    let (mut direct, hello) = a.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    let (code, reason) = desk.recv_close_within(Duration::from_secs(5)).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "replaced by a new connection")
    );
    direct.complete(&task, "resolved", "refund sent").await;
    let v = b.conversation(&conv).await;
    assert_eq!(v["task"]["state"], "completed", "{v}");
    assert_eq!(
        texts(&b.messages(&conv).await["messages"]),
        vec!["my order is late", "Sorry to hear that", "order 1234"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_through_the_standby_gets_the_active_nodes_answers() {
    let _serial = SERIAL.lock().await;
    let (_cluster, active, b) = active_and_edge(&[("SWITCHBOARD_MAX_FRAME", "4096")]).await;
    let a = &active.h;
    let alice = b.create_agent("alice", 1, &[]).await;

    // A wrong token and an unknown agent: the active node's 401.
    let wrong = Agent {
        token: "not-alices-token".into(),
        ..alice.clone()
    };
    assert_eq!(try_connect(&b.agent_ws_url(&wrong)).await.err(), Some(401));
    let nobody = Agent {
        id: "nobody".into(),
        ..alice.clone()
    };
    assert_eq!(try_connect(&b.agent_ws_url(&nobody)).await.err(), Some(401));

    // Malformed JSON, and a command that is not one: `bad_request`.
    let (mut desk, _) = b.connect_agent(&alice).await;
    desk.send_text("{not json".into()).await;
    let v = desk.recv_type("error").await;
    assert_eq!(v["code"], "bad_request", "{v}");
    desk.send(json!({"type": "fly", "ref": "r-fly"})).await;
    desk.expect_error("r-fly", "bad_request").await;
    // A command the agent refuses: its answer, through the bus.
    desk.send(json!({"type": "accept", "task_id": "tk_nope", "ref": "r-acc"}))
        .await;
    let v = desk
        .recv_where("the refusal", |v| v["ref"] == "r-acc")
        .await;
    assert_eq!(v["type"], "error", "{v}");

    // The token rotated on the active node: the agent closes the desk on
    // the standby, saying why.
    let r = a
        .request(
            reqwest::Method::POST,
            "/v1/agents/alice/token",
            Some(&a.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (code, reason) = desk.recv_close_within(Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (1008, "token rotated"));
    assert_eq!(try_connect(&b.agent_ws_url(&alice)).await.err(), Some(401));

    // A message over max_frame: closed 1009 at the edge.
    let fresh = Agent {
        token: r.body["token"].as_str().expect("token").to_owned(),
        ..alice.clone()
    };
    let (mut desk, _) = b.connect_agent(&fresh).await;
    desk.send_text("x".repeat(8 * 1024)).await;
    let (code, _) = desk.recv_close_within(Duration::from_secs(5)).await;
    assert_eq!(code, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_starts_its_desks_grace_on_the_active_node() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active, b) = active_and_edge(&[("SWITCHBOARD_DISCONNECT_GRACE", "1s")]).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = b.agent_online(&alice).await;
    let (_session, _customer, ack) = a.customer_with_message("Dana", "anyone?").await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;

    // node-1 dies: only its silence tells the active node, which stops the
    // stand-in; past the agent's grace the task goes back to the queue and
    // the agent is offline.
    cluster.process(1).signal(libc::SIGKILL);
    cluster.process(1).wait_exit(Duration::from_secs(5));
    let t = Instant::now();
    let v = a
        .wait_conversation(&conv, "back in the queue with its agent gone", |v| {
            v["task"]["state"] == "queued"
        })
        .await;
    eprintln!(
        "edge: a dead standby's desk was given up after {:?}",
        t.elapsed()
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the bus's silence (TTL/2) plus the grace, not more: {v}"
    );
    let agent = a.admin_get_ok("/v1/agents/alice").await;
    assert_eq!(agent["connected"], false, "{agent}");
    assert_eq!(agent["activity"], "offline", "{agent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_that_stops_reading_on_a_standby_is_cut_off_there_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let (_cluster, active, b) = active_and_edge(&SLOW_READER).await;
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
        let text = bulky(sent);
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
    let stored = b.all_messages(&conv).await;
    assert_gap_free(&stored);
    assert_eq!(texts(&stored).len(), sent + 1, "every message");
    desk.agent_send(&conv, "still there?", "last").await;
    again.recv_message_text("still there?").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_that_stops_reading_on_a_standby_is_cut_off_there_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let (_cluster, active, b) = active_and_edge(&SLOW_READER).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = b.agent_online(&alice).await;
    let (_session, mut customer, ack) = a.customer_with_message("Dana", "start").await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;

    // Alice stops reading; Dana writes a lot, every message acknowledged.
    // The desk's queue on the standby fills and the standby cuts her off,
    // as the active node would on its own socket; the active node counts
    // her gone.
    let mut sent = 0usize;
    let mut cut = false;
    while sent < 1500 && !cut {
        sent = flood_ten(&mut customer, sent).await;
        cut = a.agent_view("alice").await["connected"] == false;
    }
    assert!(cut, "alice never cut off after {sent} messages");
    eprintln!("edge: a slow desk cut off after {sent} messages");
    // She reads again: what was queued, then the slow consumer's close.
    let (code, reason) = desk.recv_close_within(Duration::from_secs(20)).await;
    assert_eq!((code, reason.as_str()), (1008, "slow_consumer"));
    // Nothing acknowledged is lost: the resync has the newest messages, the
    // pages before them (through the edge too) the rest.
    let mut desk = b.agent_online(&alice).await;
    let resync = desk.recv_type("task.assigned").await;
    let mut all: Vec<Value> = resync["history"].as_array().expect("history").clone();
    let mut earlier = resync["history_has_earlier"] == true;
    while earlier {
        let before = all[0]["seq"].as_u64().expect("seq");
        let page = b
            .get(
                &format!("/v1/conversations/{conv}/messages?before_seq={before}&limit=100"),
                Some(&alice.token),
            )
            .await;
        assert_eq!(page.status, 200, "page before {before}: {}", page.text);
        let mut got = page.body["messages"].as_array().expect("messages").clone();
        got.extend(all);
        all = got;
        earlier = page.body["has_more"] == true;
    }
    let history = Value::Array(all);
    assert_gap_free(&history);
    assert_eq!(
        texts(&history).len(),
        sent + 1,
        "every acknowledged message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_on_the_standby_follows_and_monitors_over_the_bus() {
    let _serial = SERIAL.lock().await;
    let (cluster, active, b) = active_and_edge(&[]).await;
    let a = &active.h;
    let (_nats, mut opens) = relay_opens(&cluster).await;

    let mut sup = supervisor(&b).await;
    // The hub's stream: a task from its creation on.
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = a.agent_online(&alice).await;
    let (_session, mut customer, ack) = a.customer_with_message("Dana", "my order").await;
    let conv = s(&ack["conversation_id"]);
    let created = sup
        .recv_where("task created", |v| {
            v["type"] == "task.state" && v["state"] == "queued"
        })
        .await;
    assert_eq!(created["conversation_id"], conv.as_str(), "{created}");
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;
    sup.recv_where("task assigned", |v| {
        v["type"] == "task.state" && v["state"] == "assigned"
    })
    .await;

    // Monitoring: the conversation's messages from now on, and the
    // supervisor's own action told to every supervisor, this one too.
    sup.send(json!({"type": "monitor", "conversation_id": conv, "ref": "m1"}))
        .await;
    let monitoring = sup.recv_type("monitoring").await;
    assert_eq!(monitoring["conversation_id"], conv.as_str(), "{monitoring}");
    let action = sup
        .recv_where("the monitor action", |v| v["type"] == "supervisor.action")
        .await;
    assert_eq!(
        (action["action"].as_str(), action["by"].as_str()),
        (Some("conversation.monitor"), Some("admin")),
        "{action}"
    );
    customer.say("order 1234").await;
    let seen = sup
        .recv_where("the customer's message", |v| {
            v["type"] == "message" && v["message"]["text"] == "order 1234"
        })
        .await;
    assert_eq!(seen["conversation_id"], conv.as_str(), "{seen}");
    desk.agent_send(&conv, "Looking into it", "r1").await;
    sup.recv_where("the agent's message", |v| {
        v["type"] == "message" && v["message"]["text"] == "Looking into it"
    })
    .await;
    sup.send(json!({"type": "unmonitor", "conversation_id": conv, "ref": "u1"}))
        .await;
    let ok = sup.recv_ref("u1").await;
    assert_eq!(ok["type"], "ok", "{ok}");
    sup.recv_where("the unmonitor action", |v| {
        v["type"] == "supervisor.action" && v["action"] == "conversation.unmonitor"
    })
    .await;
    // Not monitored any more: the next message does not reach it.
    customer.say("still there?").await;
    desk.recv_message_text("still there?").await;
    assert!(
        sup.try_recv_where_within(Duration::from_millis(300), |v| v["type"] == "message")
            .await
            .is_none(),
        "a message after unmonitor"
    );

    // Bad input: the answers a supervisor's own socket gets.
    sup.send_text("{not json".into()).await;
    let v = sup.recv_type("error").await;
    assert_eq!(v["code"], "bad_request", "{v}");
    sup.send(json!({"type": "fly", "ref": "r-fly"})).await;
    sup.expect_error("r-fly", "bad_request").await;
    sup.send(json!({"type": "unmonitor", "conversation_id": conv, "ref": "u2"}))
        .await;
    sup.expect_error("u2", "not_found").await;
    // Only the admin token opens one, on either node.
    for h in [a, &b] {
        assert_eq!(
            try_connect(&supervisor_url(h, "not-the-admin-token"))
                .await
                .err(),
            Some(401)
        );
        assert_eq!(
            try_connect(&supervisor_url(h, &alice.token)).await.err(),
            Some(401)
        );
        let bare = format!("{}/v1/supervisor/ws", h.ws_base);
        assert_eq!(try_connect(&bare).await.err(), Some(401));
    }
    assert_eq!(
        count(&mut opens, Duration::from_millis(300)).await,
        0,
        "a supervisor's socket was relayed"
    );
    // An upgrade request to a path where no socket is served: relayed, and
    // answered as the active node answers it.
    let nowhere = |h: &Harness| format!("{}/v1/nowhere/ws?token={}", h.ws_base, h.admin);
    assert_eq!(try_connect(&nowhere(a)).await.err(), Some(404));
    assert_eq!(try_connect(&nowhere(&b)).await.err(), Some(404));
    assert_eq!(count(&mut opens, Duration::from_millis(300)).await, 1);
    // A socket closed while it monitors: on the active node its
    // monitoring ends with it (an `unmonitor` action, as for a socket of
    // its own).
    sup.send(json!({"type": "monitor", "conversation_id": conv, "ref": "m2"}))
        .await;
    sup.recv_type("monitoring").await;
    let mut watcher = supervisor(a).await;
    drop(sup);
    let ended = watcher
        .recv_where("the closed socket's unmonitor", |v| {
            v["type"] == "supervisor.action" && v["action"] == "conversation.unmonitor"
        })
        .await;
    assert_eq!(ended["conversation_id"], conv.as_str(), "{ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_that_stops_reading_on_a_standby_is_cut_off_there_and_nothing_is_lost() {
    let _serial = SERIAL.lock().await;
    let (_cluster, active, b) = active_and_edge(&SLOW_READER).await;
    let a = &active.h;
    // No agent (whose desk, not read here, would be a slow consumer too):
    // the chat waits in the queue, and its customer writes on.
    let (_session, mut customer, ack) = a.customer_with_message("Dana", "start").await;
    let conv = s(&ack["conversation_id"]);
    // A supervisor on the active node watches the actions; another, on
    // the standby, monitors the chat, then stops reading.
    let mut watcher = supervisor(a).await;
    let mut sup = supervisor(&b).await;
    sup.send(json!({"type": "monitor", "conversation_id": conv, "ref": "m1"}))
        .await;
    sup.recv_type("monitoring").await;

    // Dana writes a lot, every message acknowledged. The socket's queue on
    // the standby fills and the standby cuts it off, as the active node
    // would on its own socket; on the active node its monitoring ends at
    // once (an `unmonitor` action).
    let unmonitored = |v: &Value| {
        v["type"] == "supervisor.action"
            && v["action"] == "conversation.unmonitor"
            && v["conversation_id"] == conv.as_str()
    };
    let mut sent = 0usize;
    let mut cut = false;
    while sent < 1500 && !cut {
        sent = flood_ten(&mut customer, sent).await;
        cut = watcher
            .try_recv_where_within(Duration::from_millis(5), unmonitored)
            .await
            .is_some();
    }
    assert!(cut, "the supervisor never cut off after {sent} messages");
    eprintln!("edge: a slow supervisor cut off after {sent} messages");
    // It reads again: what was queued, then the slow consumer's close.
    let (code, reason) = sup.recv_close_within(Duration::from_secs(20)).await;
    assert_eq!((code, reason.as_str()), (1008, "slow_consumer"));
    // Nothing acknowledged is lost.
    let history = b.all_messages(&conv).await;
    assert_gap_free(&history);
    assert_eq!(
        texts(&history).len(),
        sent + 1,
        "every acknowledged message"
    );
}

/// A frame longer than NATS takes in one message (1 MiB by default): a
/// customer's history on reconnecting, 200 messages of 4,000 two-byte
/// characters, where `history_frame_bytes` lets a replay hold 4 MiB. It
/// crosses the bus in pieces and arrives whole; the other sockets between
/// the two nodes carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_longer_than_a_nats_message_reaches_a_customer_on_the_standby() {
    let _serial = SERIAL.lock().await;
    let (_cluster, active, b) = active_and_edge(&[
        ("SWITCHBOARD_CLIENT_LIMITS", "false"),
        ("SWITCHBOARD_HISTORY_FRAME_BYTES", "4MiB"),
    ])
    .await;
    let a = &active.h;
    let (_, mut other, _) = b.customer_with_message("Eve", "hello").await;
    let session = a.create_session("Dana", None).await;
    let (mut customer, _) = a.connect_customer(&session).await;
    let long = "é".repeat(4000);
    let texts_sent: Vec<String> = (0..200).map(|i| format!("{i:03}{long}")).collect();
    for text in &texts_sent {
        customer.say(text).await;
    }
    drop(customer);

    let (_again, history) = b.connect_customer(&session).await;
    let size = serde_json::to_string(&history).expect("json").len();
    assert!(size > 1024 * 1024, "the history frame is {size} bytes");
    assert_eq!(texts(&history["messages"]), texts_sent);
    assert_gap_free(&history["messages"]);
    // Nothing between the nodes was cut.
    let ack = other.say("still here").await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

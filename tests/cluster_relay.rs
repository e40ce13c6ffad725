//! Every node takes clients (`cluster::relay`): standbys relay HTTP requests
//! to the active node over NATS (sockets end at the standby and cross the
//! bus: `cluster_edge_sockets.rs`; they are here where a test's clients are
//! spread over the nodes), and the relay's own rules, between two of its
//! endpoints. Real processes: three nodes of the real binary
//! on one real nats-server, a 2 s lease TTL; clients spread over the nodes
//! as a load balancer would spread them.
//!
//! The tests run one at a time (each starts its own nats-server and nodes).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    active_and_edge, assert_served, edge, upload, wait_replicated, TestCluster, ADMIN,
};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::rc::Rc;
use switchboard::cluster::relay::{decode, unbatch, Address, ConnState, Endpoint, Frame};

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A new customer, Eve, writes `first` through `h`; `desk` is offered her
/// chat, takes it and answers `reply`, which reaches her.
async fn serves_a_new_chat(h: &Harness, desk: &mut Ws, first: &str, reply: &str) {
    let (_session, mut customer, ack) = h.customer_with_message("Eve", first).await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;
    desk.agent_send(&conv, reply, "r1").await;
    customer.recv_message_text(reply).await;
}

/// The relay's frames in a message on a `relay.to.*` subject, each whole
/// and well formed (nothing for the other relay subjects).
fn frames_of(m: &async_nats::Message) -> Vec<(Address, Frame)> {
    if !m.subject.contains(".relay.to.") {
        return Vec::new();
    }
    unbatch(m.payload.clone())
        .map(|f| decode(f.expect("a whole frame")).expect("a well-formed frame"))
        .collect()
}

/// A supervisor's socket through `h`; it works both ways once a command
/// is answered.
async fn supervisor(h: &Harness) -> Ws {
    let mut sup = Ws::connect(&format!("{}/v1/supervisor/ws?token={ADMIN}", h.ws_base)).await;
    sup.send(json!({"type": "monitor", "conversation_id": "cv_nope", "ref": "probe"}))
        .await;
    sup.expect_error("probe", "not_found").await;
    sup
}

/// A socket to `url`, retried while the answer is `503` (a takeover under
/// way), as clients do.
async fn connect_retrying(url: &str) -> Ws {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_connect(url).await {
            Ok(ws) => return ws,
            Err(503) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("connect {url}: HTTP {status}"),
        }
    }
}

/// What every node answers for a conversation's messages: the same.
async fn history(h: &Harness, conversation: &str) -> Value {
    h.messages(conversation).await["messages"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_every_node_share_one_broker_through_a_whole_life_cycle() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(3);
    let (b, c) = (edge(&mut cluster, 1).await, edge(&mut cluster, 2).await);
    let a = &active.h;

    // A standby relaying is healthy for a load balancer, and says what it is.
    let health = b.get("/healthz", None).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.body["standby"]["role"], "standby", "{}", health.text);
    assert_eq!(
        health.body["standby"]["active_node"], "node-0",
        "{}",
        health.text
    );

    // An admin call through a standby is the active node's answer.
    let via_edge = b.admin_get_ok("/v1/cluster").await;
    assert_eq!(via_edge["node_id"], "node-0", "{via_edge}");
    assert_eq!(via_edge["role"], "active", "{via_edge}");
    // Refusals come back as the active node made them.
    let r = b.get("/v1/cluster", Some("not-the-admin-token")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = b.get("/v1/conversations/cv_nope", Some(ADMIN)).await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Alice is created through node-1 and works through node-2; bob works
    // on the active node itself.
    let alice = b.create_agent("alice", 2, &[]).await;
    let bob = a.create_agent("bob", 2, &[]).await;
    let mut desk_a = c.agent_online(&alice).await;
    let mut desk_b = a.agent_online(&bob).await;

    // A customer writes through node-1.
    let (session, mut customer, ack) = b.customer_with_message("Dana", "my order is late").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, alice_took_it) = take_offer_of(&mut desk_a, &mut desk_b, &conv).await;
    let task = s(&offer["task"]["id"]);
    let (mut holder_desk, mut other_desk, other) = if alice_took_it {
        (desk_a, desk_b, "bob")
    } else {
        (desk_b, desk_a, "alice")
    };
    customer.recv_type("agent.joined").await;
    holder_desk
        .agent_send(&conv, "Sorry to hear that", "r1")
        .await;
    customer.recv_message_text("Sorry to hear that").await;
    customer.say("order 1234").await;
    holder_desk.recv_message_text("order 1234").await;

    // A cold transfer to the agent on the other node.
    let v = holder_desk
        .call(json!({"type": "transfer", "task_id": task, "to": {"agent": other}, "mode": "cold", "note": ""}))
        .await;
    assert_eq!(v["type"], "task.transferred", "{v}");
    let offer = other_desk.offer_for(&conv).await;
    let assigned = other_desk.accept(&s(&offer["task"]["id"])).await;
    assert_eq!(
        texts(&assigned["history"]),
        vec!["my order is late", "Sorry to hear that", "order 1234"]
    );
    other_desk.agent_send(&conv, "It ships today", "r2").await;
    customer.recv_message_text("It ships today").await;

    // The customer comes back through node-2: the same history, same seqs,
    // whichever node answers.
    drop(customer);
    let (mut again, hello) = c.connect_customer(&session).await;
    assert_eq!(hello["type"], "history", "{hello}");
    assert_eq!(
        texts(&hello["messages"]),
        vec![
            "my order is late",
            "Sorry to hear that",
            "order 1234",
            "It ships today"
        ]
    );
    again.say("thanks").await;
    other_desk.recv_message_text("thanks").await;
    let want = history(a, &conv).await;
    assert_eq!(
        texts(&want),
        vec![
            "my order is late",
            "Sorry to hear that",
            "order 1234",
            "It ships today",
            "thanks"
        ]
    );
    assert_gap_free(&want);
    assert_eq!(history(&b, &conv).await, want);
    assert_eq!(history(&c, &conv).await, want);

    // End, wrap-up, complete: capacity back, seen from every node.
    other_desk.end(&conv).await;
    again.recv_type("conversation.ended").await;
    other_desk
        .complete(&s(&offer["task"]["id"]), "resolved", "")
        .await;
    for h in [a, &b, &c] {
        h.wait_agent(other, "capacity back", |v| v["load"]["webchat"] == 0)
            .await;
    }

    // Files go up through one node and come down through another, through
    // the relay's flow control (the body is larger than its window).
    let (id, bytes) = upload(&b, &alice.token).await;
    assert_served(&c, &alice.token, &id, &bytes).await;
    assert_served(a, &alice.token, &id, &bytes).await;
    let big: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let r = c
        .request_raw(
            reqwest::Method::POST,
            "/v1/attachments?filename=big.pdf",
            Some(&alice.token),
            "application/pdf",
            big.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_served(&b, &alice.token, &s(&r.body["id"]), &big).await;
    wait_replicated(a).await;
    drop(holder_desk);
}

/// The offer of `conv` at whichever desk gets it, accepted: the offer, and
/// whether desk `a` took it.
async fn take_offer_of(a: &mut Ws, b: &mut Ws, conv: &str) -> (Value, bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (first, desk) in [(true, &mut *a), (false, &mut *b)] {
            if let Some(v) = desk.try_recv_within(Duration::from_millis(50)).await {
                if v["type"] == "task.offered" && v["task"]["conversation_id"] == conv {
                    desk.accept(&s(&v["task"]["id"])).await;
                    return (v, first);
                }
            }
        }
        assert!(Instant::now() < deadline, "no offer of {conv}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_takes_its_clients_off_the_active_node_and_they_come_back_elsewhere() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(3);
    let (b, c) = (edge(&mut cluster, 1).await, edge(&mut cluster, 2).await);
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let desk = b.agent_online(&alice).await;
    a.wait_agent("alice", "online through node-1", |v| v["connected"] == true)
        .await;

    // node-1 dies: nothing tells the active node but its silence.
    cluster.process(1).signal(libc::SIGKILL);
    cluster.process(1).wait_exit(Duration::from_secs(5));
    let t = Instant::now();
    a.wait_agent("alice", "gone with node-1", |v| v["connected"] == false)
        .await;
    let took = t.elapsed();
    eprintln!("relay: a dead edge's desk was dropped after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "the relay's silence (TTL/2) plus a heartbeat, not more: {took:?}"
    );
    drop(desk);

    // Alice reconnects through node-2, and works.
    let mut desk = c.agent_online(&alice).await;
    serves_a_new_chat(a, &mut desk, "hello?", "Hi Eve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_active_node_dies_relayed_clients_are_closed_and_find_everything_on_the_new_one() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(3);
    let (b, c) = (edge(&mut cluster, 1).await, edge(&mut cluster, 2).await);
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = c.agent_online(&alice).await;
    let (session, mut customer, ack) = b.customer_with_message("Dana", "first").await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    let task = s(&offer["task"]["id"]);
    desk.accept(&task).await;
    desk.agent_send(&conv, "hello Dana", "r1").await;
    customer.recv_message_text("hello Dana").await;
    for text in ["second", "third"] {
        customer.say(text).await;
        desk.recv_message_text(text).await;
    }
    wait_replicated(a).await;

    cluster.process(0).signal(libc::SIGKILL);
    cluster.process(0).wait_exit(Duration::from_secs(5));
    // Until a standby takes over, a standby relays to nobody: `503
    // unavailable`, the client to retry.
    let r = b.get("/v1/cluster", Some(ADMIN)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error_code(), "unavailable", "{}", r.text);
    assert!(r.text.contains("no active node"), "{}", r.text);
    // The sockets through the standbys close: their active node is gone.
    // They end on the standbys, which tell their clients to reconnect
    // (1012).
    let t = Instant::now();
    for client in [&mut customer, &mut desk] {
        let (code, reason) = client.recv_close_within(Duration::from_secs(10)).await;
        assert_eq!(code, 1012, "service restart: reconnect ({reason})");
    }
    eprintln!(
        "relay: relayed sockets closed {:?} after the kill",
        t.elapsed()
    );

    let new = cluster.wait_active(&[0], Duration::from_secs(20));
    let standby = if new.index == 1 { 2 } else { 1 };
    let other = edge(&mut cluster, standby).await;
    // Both come back, one through the remaining standby, one on the new
    // active node: everything acknowledged is there, in order, once.
    let mut customer = connect_retrying(&other.customer_ws_url(&session)).await;
    let history = customer.recv_next().await;
    assert_eq!(history["type"], "history", "{history}");
    assert_eq!(
        texts(&history["messages"]),
        vec!["first", "hello Dana", "second", "third"]
    );
    assert_gap_free(&history["messages"]);
    let (mut desk, hello) = new.h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    desk.recv_type("task.assigned").await;
    desk.agent_send(&conv, "still here", "r2").await;
    customer.recv_message_text("still here").await;
    customer.say("great").await;
    desk.recv_message_text("great").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_drops_or_keeps_relayed_sockets_but_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(2);
    let b = edge(&mut cluster, 1).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = a.agent_online(&alice).await;
    let (session, mut customer, ack) = b.customer_with_message("Dana", "before").await;
    let conv = s(&ack["conversation_id"]);
    let offer = desk.offer_for(&conv).await;
    desk.accept(&s(&offer["task"]["id"])).await;

    cluster.nats.restart();

    // The customer writes on. If frames were lost in the restart, the
    // relay closed the socket (never a corrupt stream): she reconnects
    // through the same node and sends again with the same id, as the
    // widget does. Either way the message is stored once.
    let sent = customer
        .try_send(json!({"type": "message", "text": "after", "client_msg_id": "after-1"}))
        .await;
    let acked = if sent {
        customer
            .try_recv_within(Duration::from_secs(5))
            .await
            .filter(|v| v["type"] == "ack")
    } else {
        None
    };
    let reconnected = acked.is_none();
    if reconnected {
        let mut again = connect_retrying(&b.customer_ws_url(&session)).await;
        again.recv_type("history").await;
        let ack = again.say_with_id("after", "after-1").await;
        assert_eq!(ack["type"], "ack", "{ack}");
        customer = again;
    }
    eprintln!(
        "relay: after a NATS restart the customer's socket was {}",
        if reconnected {
            "closed and reopened"
        } else {
            "kept"
        }
    );
    desk.recv_message_text("after").await;
    desk.agent_send(&conv, "got it", "r1").await;
    customer.recv_message_text("got it").await;
    let history = b.messages(&conv).await["messages"].clone();
    assert_eq!(texts(&history), vec!["before", "after", "got it"]);
    assert_gap_free(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_through_an_edge() {
    let _serial = SERIAL.lock().await;
    let env = [
        ("SWITCHBOARD_CLIENT_LIMITS", "true"),
        ("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "4"),
        ("SWITCHBOARD_MAX_UPLOAD", "100KiB"),
    ];
    let (_cluster, active, b) = active_and_edge(&env).await;
    let alice = active.h.create_agent("alice", 1, &[]).await;

    // A file over max_upload: refused by the active node, as on its own
    // sockets, while the edge is still sending it.
    let r = b
        .request_raw(
            reqwest::Method::POST,
            "/v1/attachments?filename=big.pdf",
            Some(&alice.token),
            "application/pdf",
            vec![7u8; 300 * 1024],
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.error_code(), "attachment_too_large", "{}", r.text);

    // max_connections_per_ip counts a standby's relayed sockets: the edge
    // refuses the fifth from one address itself.
    let mut open = Vec::new();
    for i in 0..4 {
        let agent = active.h.create_agent(&format!("desk-{i}"), 1, &[]).await;
        open.push(b.connect_agent(&agent).await.0);
    }
    match try_connect(&b.agent_ws_url(&alice)).await {
        Err(status) => assert_eq!(status, 429),
        Ok(_) => panic!("a fifth socket from one address was relayed"),
    }
    // One closes; a new one is taken again.
    drop(open.pop());
    active
        .h
        .wait_agent("desk-3", "its socket closed", |v| v["connected"] == false)
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_connect(&b.agent_ws_url(&alice)).await {
            Ok(_) => break,
            Err(429) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("HTTP {status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_paused_past_the_silence_loses_its_clients_and_serves_again_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, active) = TestCluster::start(2);
    let b = edge(&mut cluster, 1).await;
    let a = &active.h;
    let alice = a.create_agent("alice", 1, &[]).await;
    let mut desk = b.agent_online(&alice).await;
    let mut sup = supervisor(&b).await;

    // Paused for three times the silence (TTL/2) of the relay and of the
    // bus: the active node gives its desk up, as for a dead node.
    cluster.process(1).signal(libc::SIGSTOP);
    a.wait_agent("alice", "given up while node-1 is paused", |v| {
        v["connected"] == false
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.process(1).signal(libc::SIGCONT);

    // Awake, it does not carry on with the sockets the active node
    // dropped: the desk and the supervisor are told to reconnect
    // (whichever node saw the silence first tells the other). New ones
    // work.
    for client in [&mut desk, &mut sup] {
        let (code, reason) = client.recv_close_within(Duration::from_secs(10)).await;
        assert_eq!(code, 1012, "reconnect: {reason}");
    }
    supervisor(&b).await;
    let mut desk = connect_retrying(&b.agent_ws_url(&alice)).await;
    let hello = desk.recv_next().await;
    assert_eq!(hello["type"], "hello", "{hello}");
    desk.set_activity("available").await;
    serves_a_new_chat(a, &mut desk, "hi", "hello Eve").await;
}

/// A nats-server of its own, and a `LocalSet` (a relay endpoint runs on
/// one), where `test` runs with the server's URL; one such test at a time.
async fn on_local_nats<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _serial = SERIAL.lock().await;
    let nats = common::nats::NatsServer::start();
    tokio::task::LocalSet::new()
        .run_until(test(nats.url()))
        .await;
}

/// Two relay endpoints of `prefix` in this thread (a `LocalSet`), each on
/// its own NATS connection, each one's subscription confirmed at the server
/// before either publishes: a message the client sends itself comes back
/// only once the server has read what it sent before.
async fn two_endpoints(url: &str, prefix: &str, outbox: usize) -> (Rc<Endpoint>, Rc<Endpoint>) {
    use switchboard::cluster::relay::Timing;
    let timing = Timing {
        heartbeat: Duration::from_secs(1),
        silence: Duration::from_secs(60),
    };
    let mut started = Vec::new();
    for _ in 0..2 {
        let client = async_nats::connect(url).await.expect("NATS");
        let endpoint = Endpoint::start(client, None, prefix.into(), timing, outbox)
            .await
            .expect("an endpoint");
        let probe = format!("{prefix}.probe.{}", endpoint.id);
        let mut echo = endpoint.client.subscribe(probe.clone()).await.expect("sub");
        endpoint
            .client
            .publish(probe, "".into())
            .await
            .expect("publish");
        tokio::time::timeout(Duration::from_secs(5), echo.next())
            .await
            .expect("the probe back")
            .expect("subscribed");
        started.push(endpoint);
    }
    let b = started.pop().expect("two");
    let a = started.pop().expect("two");
    (a, b)
}

/// The subject relay endpoint `id` of `prefix` reads.
fn subject_of(prefix: &str, id: u64) -> String {
    format!("{prefix}.relay.to.{id:016x}")
}

/// A frame of connection `conn` in time, or the test fails.
async fn next_frame(conn: &ConnState) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), ConnState::next_frame(conn))
        .await
        .expect("a frame in time")
}

/// Until `conn` is closed (told by the other side), at most 5 s.
async fn closed(conn: &ConnState, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.is_closed() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection between endpoints `a` and `b`: its state on each.
fn pair(a: &Endpoint, b: &Endpoint) -> (Rc<ConnState>, Rc<ConnState>) {
    let on_a = a.register();
    let on_b = b.register();
    a.bind(&on_a, b.id, on_b.id);
    b.bind(&on_b, a.id, on_a.id);
    (on_a, on_b)
}

/// Two relay endpoints of this process on a real nats-server: a peer that
/// sends past the flow-control window is cut off, and an endpoint queues at
/// most its outbox for NATS (a data frame that does not fit closes its
/// connection; what was queued before it goes through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_endpoint_cuts_off_a_peer_past_its_window_and_bounds_its_queue() {
    use bytes::Bytes;
    use switchboard::cluster::relay::{QUEUE_FULL, WINDOW};
    on_local_nats(|url| async move {
        let outbox = 100 * 1024;
        let (a, b) = two_endpoints(&url, "bounds", outbox).await;
        let chunk = || Frame::Data(Bytes::from(vec![b'x'; 16 * 1024]));

        // Past the window: five 16 KiB frames nobody reads on b, where
        // the window is 64 KiB. b delivers the four that fit, then
        // closes the connection, and a hears of it.
        let (on_a, on_b) = pair(&a, &b);
        for _ in 0..5 {
            a.post(&on_a, &chunk());
        }
        let mut delivered = 0u64;
        let why = loop {
            match next_frame(&on_b).await {
                Frame::Data(data) => delivered += data.len() as u64,
                Frame::Close(why) => break why,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(delivered, WINDOW, "what fits in the window is delivered");
        assert!(why.contains("past the flow-control window"), "{why}");
        assert!(on_b.is_closed());
        closed(&on_a, "a never told of the close").await;

        // The outbox: two connections queue 3 x 16 KiB each (96 KiB and
        // headers, within 100 KiB) in one turn of this thread, before the
        // writer takes any. A third connection's first 16 KiB does not
        // fit: that connection closes, the others' data goes through.
        let (one_a, one_b) = pair(&a, &b);
        let (two_a, two_b) = pair(&a, &b);
        let (three_a, three_b) = pair(&a, &b);
        for _ in 0..3 {
            a.post(&one_a, &chunk());
            a.post(&two_a, &chunk());
        }
        assert!(a.queued() <= outbox, "queued {}", a.queued());
        let refused = a
            .send_data(
                &three_a,
                Bytes::from(vec![b'y'; 16 * 1024]),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains(QUEUE_FULL)),
            "{refused:?}"
        );
        assert!(three_a.is_closed());
        assert_eq!(
            next_frame(&three_a).await,
            Frame::Close(QUEUE_FULL.into()),
            "its own reader is told"
        );
        assert_eq!(
            next_frame(&three_b).await,
            Frame::Close(QUEUE_FULL.into()),
            "the other side is told, and got none of its data"
        );
        for conn in [&one_b, &two_b] {
            for _ in 0..3 {
                let frame = next_frame(conn).await;
                assert!(matches!(frame, Frame::Data(d) if d.len() == 16 * 1024));
            }
        }
        // Once the writer has taken them, the queue has room again.
        assert_eq!(a.queued(), 0);
        let (four_a, four_b) = pair(&a, &b);
        a.send_data(
            &four_a,
            Bytes::from(vec![b'z'; 16 * 1024]),
            Duration::from_secs(5),
        )
        .await
        .expect("room again");
        let frame = next_frame(&four_b).await;
        assert!(matches!(frame, Frame::Data(d) if d.len() == 16 * 1024));
    })
    .await;
}

/// A frame for a connection the other side no longer holds (it ended there
/// cleanly, telling nobody, and what it sent last was lost) is answered
/// with a close, and that close ends the connection here: it does not
/// wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_for_a_connection_the_peer_no_longer_holds_closes_it_here() {
    use bytes::Bytes;
    on_local_nats(|url| async move {
        let (a, b) = two_endpoints(&url, "gone", 1024 * 1024).await;
        let (on_a, on_b) = pair(&a, &b);
        // b is done with it: released cleanly, so a is told nothing.
        b.release(&on_b, None);
        // a still holds it and sends on it (say the resync's count).
        a.post(&on_a, &Frame::Data(Bytes::from_static(b"late")));
        assert_eq!(
            next_frame(&on_a).await,
            Frame::Close("no such connection".into())
        );
        assert!(on_a.is_closed());
    })
    .await;
}

/// A frame numbered past the next one means frames were lost: the
/// receiving endpoint closes the connection rather than hand on a stream
/// with a hole in it, and tells the other side. What is not a relay frame
/// at all is dropped, and the connection lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_out_of_sequence_closes_its_connection_and_garbage_is_ignored() {
    use bytes::Bytes;
    use switchboard::cluster::relay::{batch, encode};
    on_local_nats(|url| async move {
        let prefix = "sequence";
        let (a, b) = two_endpoints(&url, prefix, 1024 * 1024).await;
        let (on_a, on_b) = pair(&a, &b);
        a.post(&on_a, &Frame::Data(Bytes::from_static(b"one")));
        assert_eq!(
            next_frame(&on_b).await,
            Frame::Data(Bytes::from_static(b"one"))
        );

        // Garbage on b's subject is dropped; the connection lives on.
        let raw = async_nats::connect(&url).await.expect("NATS");
        raw.publish(subject_of(prefix, b.id), "not a frame".into())
            .await
            .expect("publish");
        raw.flush().await.expect("flush");
        a.post(&on_a, &Frame::Data(Bytes::from_static(b"two")));
        assert_eq!(
            next_frame(&on_b).await,
            Frame::Data(Bytes::from_static(b"two"))
        );

        // A frame of the connection numbered past the next one (2).
        let forged = Address {
            from: a.id,
            to: on_b.id,
            from_conn: on_a.id,
            seq: 1000,
        };
        let bytes = encode(forged, &Frame::Data(Bytes::from_static(b"x"))).expect("encodes");
        raw.publish(subject_of(prefix, b.id), batch([&bytes]))
            .await
            .expect("publish");
        raw.flush().await.expect("flush");
        match next_frame(&on_b).await {
            Frame::Close(why) => {
                assert!(
                    why.contains("relay frame 1000 arrived where 2 was due"),
                    "{why}"
                )
            }
            other => panic!("on b: {other:?}"),
        }
        assert!(on_b.is_closed());
        closed(&on_a, "a never told of the close").await;
    })
    .await;
}

/// After an endpoint's NATS connection comes back (frames may have been
/// lost either way), each side of every connection between the two
/// endpoints says what it sent on it (`Sent`, asked for with `Resync`): a
/// side that got all of it keeps the connection, a side that got less
/// closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_resync_each_side_says_what_it_sent_and_a_side_that_got_less_closes() {
    use bytes::Bytes;
    use switchboard::cluster::relay::{batch, encode};
    on_local_nats(|url| async move {
        let prefix = "resync";
        let (a, b) = two_endpoints(&url, prefix, 1024 * 1024).await;
        let raw = async_nats::connect(&url).await.expect("NATS");
        let mut to_a = raw
            .subscribe(subject_of(prefix, a.id))
            .await
            .expect("subscribe");
        raw.flush().await.expect("flush");
        let (on_a, on_b) = pair(&a, &b);
        a.post(&on_a, &Frame::Data(Bytes::from_static(b"up")));
        assert_eq!(
            next_frame(&on_b).await,
            Frame::Data(Bytes::from_static(b"up"))
        );
        b.post(&on_b, &Frame::Data(Bytes::from_static(b"down")));
        assert_eq!(
            next_frame(&on_a).await,
            Frame::Data(Bytes::from_static(b"down"))
        );

        // b's NATS connection "came back": it tells a what it sent on
        // their connection (one frame), and asks a to do the same.
        b.resync();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, to_a.next())
                .await
                .expect("b's Sent for the connection")
                .expect("subscribed");
            let sent = frames_of(&m)
                .into_iter()
                .find(|(at, f)| matches!(f, Frame::Sent(_)) && at.to == on_a.id);
            if let Some((_, frame)) = sent {
                assert_eq!(frame, Frame::Sent(1), "b sent one frame");
                break;
            }
        }
        // Nothing was lost, nothing closed: both ways still work.
        a.post(&on_a, &Frame::Data(Bytes::from_static(b"up again")));
        assert_eq!(
            next_frame(&on_b).await,
            Frame::Data(Bytes::from_static(b"up again"))
        );
        b.post(&on_b, &Frame::Data(Bytes::from_static(b"down again")));
        assert_eq!(
            next_frame(&on_a).await,
            Frame::Data(Bytes::from_static(b"down again"))
        );
        assert!(!on_a.is_closed() && !on_b.is_closed());

        // b says it sent more than a got: frames were lost, and a
        // closes the connection rather than leave it waiting for them.
        let sent = encode(
            Address {
                from: b.id,
                to: on_a.id,
                from_conn: on_b.id,
                seq: 0,
            },
            &Frame::Sent(1000),
        )
        .expect("encodes");
        raw.publish(subject_of(prefix, a.id), batch([&sent]))
            .await
            .expect("publish");
        match next_frame(&on_a).await {
            Frame::Close(why) => assert!(why.contains("frames were lost"), "{why}"),
            other => panic!("on a: {other:?}"),
        }
        closed(&on_b, "b never told of the close").await;
    })
    .await;
}

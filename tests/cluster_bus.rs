//! The bus between nodes (`switchboard::cluster::bus`) against a real
//! `nats-server` (`tests/common/nats.rs` starts one per test): order and
//! batching, requests and their failures, a peer's restart and silence told
//! to the other side, a NATS restart where every message either arrives or
//! is counted lost, a full queue, and what does not decode.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard::cluster::bus::{Loss, OUTBOX};
use switchboard::cluster::relay::Timing;
use switchboard::cluster::{Bus, BusError, BusOptions, ClusterSettings, Delivery};
use tokio::sync::mpsc;
use tokio::time::Instant;

use common::nats::NatsServer;

/// Long enough for any step on a loaded machine; every wait ends as soon as
/// what it waits for comes.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Count(u64),
    Ask(String),
    Answer(String),
    Blob(Vec<u8>),
}

/// What another build might send: a type this one does not read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Foreign {
    A,
    B,
    C,
    D,
    E,
    F(String),
}

fn options(outbox: usize) -> BusOptions {
    BusOptions {
        outbox,
        deliveries: 1024,
        timing: Timing {
            heartbeat: Duration::from_millis(100),
            silence: Duration::from_millis(800),
        },
    }
}

async fn start<M>(
    nats: &NatsServer,
    node: &str,
    outbox: usize,
) -> (Bus<M>, mpsc::Receiver<Delivery<M>>)
where
    M: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    Bus::start(&ClusterSettings::new(nats.url(), node), options(outbox))
        .await
        .expect("bus starts")
}

/// The next delivery, within [`PATIENCE`].
async fn next<M>(rx: &mut mpsc::Receiver<Delivery<M>>) -> Delivery<M> {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a delivery within the patience")
        .expect("the bus runs")
}

#[tokio::test]
async fn messages_arrive_in_order_both_ways_and_many_travel_in_few_nats_messages() {
    let nats = NatsServer::start();
    let (a, mut a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let (b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    // Count the NATS messages carrying a's frames to b.
    let watcher = async_nats::connect(nats.url()).await.expect("connect");
    let mut sniff = watcher
        .subscribe("switchboard.bus.b")
        .await
        .expect("subscribe");
    watcher.flush().await.expect("flush");

    const N: u64 = 20_000;
    let back = tokio::spawn(async move {
        for i in 0..1_000 {
            b.send("a", &Msg::Count(i)).expect("b sends");
        }
        b
    });
    for i in 0..N {
        a.send("b", &Msg::Count(i)).expect("a sends");
    }
    for i in 0..N {
        match next(&mut b_rx).await {
            Delivery::Message { from, body } => {
                assert_eq!(from, "a");
                assert_eq!(body, Msg::Count(i), "in the order sent");
            }
            other => panic!("b got {other:?} at {i}"),
        }
    }
    let _b = back.await.expect("b's sender");
    for i in 0..1_000 {
        match next(&mut a_rx).await {
            Delivery::Message { from, body } => {
                assert_eq!((from.as_str(), body), ("b", Msg::Count(i)));
            }
            other => panic!("a got {other:?} at {i}"),
        }
    }
    // Stopped, they ping no more: what the sniffer got is all there was.
    a.stop();
    _b.stop();
    let mut nats_messages = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sniff.next()).await {
        nats_messages += 1;
    }
    assert!(
        nats_messages < N / 10,
        "{N} messages took {nats_messages} NATS messages"
    );
    assert_eq!(a.queued(), 0);
}

/// A message, a request or an answer longer than NATS takes in one
/// message (1 MiB by default) leaves in pieces and arrives whole, in its
/// place among the others.
#[tokio::test]
async fn what_is_longer_than_a_nats_message_arrives_whole_in_order() {
    let nats = NatsServer::start();
    let (a, mut a_rx) = start::<Msg>(&nats, "a", 64 * 1024 * 1024).await;
    let (b, mut b_rx) = start::<Msg>(&nats, "b", 64 * 1024 * 1024).await;
    let long: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    a.send("b", &Msg::Count(1)).expect("sends");
    a.send("b", &Msg::Blob(long.clone())).expect("sends");
    a.send("b", &Msg::Count(2)).expect("sends");
    for want in [Msg::Count(1), Msg::Blob(long.clone()), Msg::Count(2)] {
        match next(&mut b_rx).await {
            Delivery::Message { from, body } => {
                assert_eq!(from, "a");
                assert!(body == want, "out of order or torn");
            }
            other => panic!("b got {other:?}"),
        }
    }
    // A long request, and a long answer.
    let answering = tokio::spawn(async move {
        if let Delivery::Request {
            body: Msg::Ask(text),
            responder,
            ..
        } = next(&mut a_rx).await
        {
            responder
                .respond(&Msg::Answer(text.to_uppercase()))
                .expect("answered");
        }
    });
    let question = "x".repeat(2 * 1024 * 1024);
    assert_eq!(
        b.request("a", &Msg::Ask(question.clone()), PATIENCE).await,
        Ok(Msg::Answer(question.to_uppercase()))
    );
    answering.await.expect("answered");
}

#[tokio::test]
async fn a_request_is_answered_and_a_dropped_or_unanswerable_one_fails_at_once() {
    let nats = NatsServer::start();
    let (a, _a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let (_b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    let answering = tokio::spawn(async move {
        while let Some(delivery) = b_rx.recv().await {
            if let Delivery::Request {
                from,
                body: Msg::Ask(text),
                responder,
            } = delivery
            {
                assert_eq!(from, "a");
                if text == "drop" {
                    drop(responder);
                } else {
                    responder
                        .respond(&Msg::Answer(text.to_uppercase()))
                        .expect("answered");
                }
            }
        }
    });
    let asked = a
        .request("b", &Msg::Ask("hello".into()), PATIENCE)
        .await
        .expect("an answer");
    assert_eq!(asked, Msg::Answer("HELLO".into()));

    let started = Instant::now();
    let dropped = a.request("b", &Msg::Ask("drop".into()), PATIENCE).await;
    assert!(
        matches!(dropped, Err(BusError::NotAnswered { ref peer, .. }) if peer == "b"),
        "{dropped:?}"
    );
    assert!(
        started.elapsed() < PATIENCE / 4,
        "at once, not at the deadline"
    );

    let within = Duration::from_millis(300);
    let nobody = a.request("nobody", &Msg::Ask("?".into()), within).await;
    assert_eq!(
        nobody,
        Err(BusError::Timeout {
            peer: "nobody".into(),
            after: within
        })
    );
    assert_eq!(
        a.send("not a node", &Msg::Count(1)),
        Err(BusError::BadNode("not a node".into()))
    );
    answering.abort();
}

#[tokio::test]
async fn a_restart_is_told_to_the_peer_and_fails_what_waited_on_it() {
    let nats = NatsServer::start();
    let (a, mut a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let (b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    b.send("a", &Msg::Count(0)).expect("sends");
    assert!(matches!(next(&mut a_rx).await, Delivery::Message { .. }));

    // A request b holds unanswered when it crashes.
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.request("b", &Msg::Ask("x".into()), PATIENCE).await })
    };
    let Delivery::Request { responder, .. } = next(&mut b_rx).await else {
        panic!("b gets the request");
    };
    b.stop();
    let (b2, mut b2_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    // a pings b (it sent to b); the new b pings back what it heard from.
    match next(&mut a_rx).await {
        Delivery::Restarted { from, incarnation } => {
            assert_eq!(from, "b");
            assert_eq!(a.incarnation("b"), Some(incarnation), "the new one");
        }
        other => panic!("a got {other:?}"),
    }
    assert_eq!(
        waiting.await.expect("the request's task"),
        Err(BusError::PeerRestarted { peer: "b".into() })
    );
    // The old responder's late drop goes nowhere.
    drop(responder);
    // To the new b, a is a first contact: the request a sent the old b is
    // counted lost (over-told, never under-told), then what follows.
    a.send("b", &Msg::Count(7)).expect("sends");
    match next(&mut b2_rx).await {
        Delivery::Lost { from, loss } => assert_eq!((from.as_str(), loss), ("a", Loss::Missing(1))),
        other => panic!("the new b got {other:?}"),
    }
    match next(&mut b2_rx).await {
        Delivery::Message { from, body } => {
            assert_eq!((from.as_str(), body), ("a", Msg::Count(7)))
        }
        other => panic!("the new b got {other:?}"),
    }
    b2.send("a", &Msg::Count(1)).expect("sends");
    match next(&mut a_rx).await {
        Delivery::Message { body, .. } => assert_eq!(body, Msg::Count(1)),
        other => panic!("a got {other:?}"),
    }
}

/// A node that restarts asks a peer that kept running: the peer's frames
/// to it run on from the numbers it gave the earlier incarnation, so the
/// new one counts them lost at first contact (over-told), and is still
/// answered: no request of its own fails for frames that came before the
/// peer was first heard from. (A standby's first socket after its restart
/// was refused `503` once for this.)
#[tokio::test]
async fn a_restarted_nodes_first_requests_are_answered() {
    let nats = NatsServer::start();
    let (a, a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let answering = tokio::spawn(async move {
        let mut a_rx = a_rx;
        while let Some(delivery) = a_rx.recv().await {
            if let Delivery::Request {
                body: Msg::Ask(text),
                responder,
                ..
            } = delivery
            {
                responder
                    .respond(&Msg::Answer(text.to_uppercase()))
                    .expect("answered");
            }
        }
    });
    let (b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    // a has numbered frames to "b" before its restart.
    for i in 0..5 {
        a.send("b", &Msg::Count(i)).expect("sends");
    }
    for _ in 0..5 {
        assert!(matches!(next(&mut b_rx).await, Delivery::Message { .. }));
    }
    assert_eq!(
        b.request("a", &Msg::Ask("before".into()), PATIENCE).await,
        Ok(Msg::Answer("BEFORE".into()))
    );
    b.stop();

    let (b2, mut b2_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    // Several at once, as sockets reconnecting to a restarted standby.
    let asks: Vec<Msg> = (0..4).map(|i| Msg::Ask(format!("after {i}"))).collect();
    let asked =
        futures_util::future::join_all(asks.iter().map(|ask| b2.request("a", ask, PATIENCE))).await;
    for (i, answer) in asked.into_iter().enumerate() {
        assert_eq!(answer, Ok(Msg::Answer(format!("AFTER {i}"))), "request {i}");
    }
    // The consumer is told the count all the same, before anything after.
    match next(&mut b2_rx).await {
        Delivery::Lost {
            from,
            loss: Loss::Missing(n),
        } => assert!(from == "a" && n > 0, "{from} {n}"),
        other => panic!("the new b got {other:?}"),
    }
    answering.abort();
}

#[tokio::test]
async fn a_silent_peer_is_told_once_and_fails_what_waited_on_it() {
    let nats = NatsServer::start();
    let (a, mut a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let (b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    // a cannot hear from b before b has its request.
    let asked = Instant::now();
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.request("b", &Msg::Ask("x".into()), PATIENCE).await })
    };
    let responder = match next(&mut b_rx).await {
        Delivery::Request { responder, .. } => responder,
        other => panic!("b got {other:?}"),
    };
    b.stop();
    match next(&mut a_rx).await {
        Delivery::Silent { from } => assert_eq!(from, "b"),
        other => panic!("a got {other:?}"),
    }
    let after = asked.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "told after the silence ({after:?})"
    );
    assert_eq!(
        waiting.await.expect("the request's task"),
        Err(BusError::PeerSilent { peer: "b".into() })
    );
    drop(responder);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), a_rx.recv())
            .await
            .is_err(),
        "told once"
    );
    assert_eq!(b.send("a", &Msg::Count(1)), Err(BusError::Stopped));
}

/// What `rx` got from `from` until `total` numbered frames are accounted
/// for (taken or counted lost): the counts taken, in order, how many
/// requests were taken (each answered), and how many frames were lost.
async fn account(
    rx: &mut mpsc::Receiver<Delivery<Msg>>,
    from: &str,
    total: u64,
) -> (Vec<u64>, u64, u64) {
    let mut taken = Vec::new();
    let mut requests = 0;
    let mut lost = 0;
    while (taken.len() as u64) + requests + lost < total {
        match next(rx).await {
            Delivery::Message {
                from: f,
                body: Msg::Count(i),
            } if f == from => taken.push(i),
            Delivery::Request {
                from: f,
                body: Msg::Ask(text),
                responder,
            } if f == from => {
                requests += 1;
                let _ = responder.respond(&Msg::Answer(text));
            }
            Delivery::Lost {
                from: f,
                loss: Loss::Missing(n),
            } if f == from => lost += n,
            // NATS away for longer than the silence.
            Delivery::Silent { .. } => {}
            other => panic!("got {other:?}"),
        }
    }
    (taken, requests, lost)
}

#[tokio::test]
async fn across_a_nats_restart_every_message_arrives_or_is_counted_lost_and_no_request_hangs() {
    let mut nats = NatsServer::start();
    let (a, _a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let (_b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    const N: u64 = 3_000;
    const R: u64 = 150;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..N {
                a.send("b", &Msg::Count(i)).expect("queued");
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    // Requests in the same stream, each with the whole patience: one lost
    // on its way must fail when b reports the gap, not at its deadline.
    let asking = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut asked = Vec::new();
            for i in 0..R {
                let a = a.clone();
                asked.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let outcome = a.request("b", &Msg::Ask(i.to_string()), PATIENCE).await;
                    (outcome, started.elapsed())
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut outcomes = Vec::new();
            for one in asked {
                outcomes.push(one.await.expect("a request's task"));
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.spawn();
    sender.await.expect("sent");
    let (taken, requests, lost) = account(&mut b_rx, "a", N + R).await;
    assert!(
        taken.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice"
    );
    assert!(
        taken.len() as u64 > N / 2,
        "most arrive: {} of {N}",
        taken.len()
    );
    let outcomes = asking.await.expect("the requests");
    let mut answered = 0;
    let mut failed = Vec::new();
    for (outcome, took) in outcomes {
        assert!(
            took < PATIENCE / 2,
            "a request hung for {took:?}: {outcome:?}"
        );
        match outcome {
            Ok(Msg::Answer(_)) => answered += 1,
            Ok(other) => panic!("answered {other:?}"),
            Err(
                e @ (BusError::RequestLost { .. }
                | BusError::AnswerLost { .. }
                | BusError::PeerSilent { .. }),
            ) => failed.push(e),
            Err(e) => panic!("a request failed with {e:?}"),
        }
    }
    assert_eq!(answered + failed.len() as u64, R);
    eprintln!(
        "across the NATS restart: {} of {N} messages and {requests} of {R} requests arrived, \
         {lost} counted lost; {answered} requests answered, {} failed at once (first: {:?})",
        taken.len(),
        failed.len(),
        failed.first()
    );
}

#[tokio::test]
async fn a_full_queue_refuses_and_keeps_what_it_took() {
    let mut nats = NatsServer::start();
    let (a, _a_rx) = start::<Msg>(&nats, "a", 256 * 1024).await;
    let (_b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    nats.stop();
    let blob = Msg::Blob(vec![7; 8 * 1024]);
    let mut accepted = 0u64;
    let refused = loop {
        match a.send("b", &blob) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100_000, "never refused");
        if accepted.is_multiple_of(16) {
            // Let the writer fill NATS's client buffer first.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(matches!(refused, BusError::Full { .. }), "{refused:?}");
    assert!(a.queued() > 200 * 1024);
    nats.spawn();
    // What was taken goes out once NATS is back: each arrives or is
    // counted lost (b's subscription may come back after a's first
    // messages), never dropped unsaid.
    let mut taken = 0;
    let mut lost = 0;
    while taken + lost < accepted {
        match next(&mut b_rx).await {
            Delivery::Message { body, .. } => {
                assert_eq!(body, blob);
                taken += 1;
            }
            Delivery::Lost {
                loss: Loss::Missing(n),
                ..
            } => lost += n,
            Delivery::Silent { .. } => {}
            other => panic!("b got {other:?}"),
        }
    }
    assert_eq!(taken + lost, accepted);
    let deadline = Instant::now() + PATIENCE;
    while a.queued() > 0 {
        assert!(Instant::now() < deadline, "the queue drains");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.send("b", &blob).expect("room again");
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_told_as_lost_and_a_foreign_request_refused_at_once() {
    let nats = NatsServer::start();
    let (a, _a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    let (_b, mut b_rx) = start::<Msg>(&nats, "b", OUTBOX).await;
    let (c, _c_rx) = start::<Foreign>(&nats, "c", OUTBOX).await;

    // Not a bus message at all: no sender to tell, dropped with a warning.
    let raw = async_nats::connect(nats.url()).await.expect("connect");
    for garbage in [
        &b""[..],
        b"\x01",
        b"\xff\xff\xff\xff",
        b"\x05\x00\x00\x00\x09abcd",
    ] {
        raw.publish("switchboard.bus.b", garbage.to_vec().into())
            .await
            .expect("publish");
    }
    raw.flush().await.expect("flush");

    // A type b does not read.
    c.send("b", &Foreign::F("from a newer build".into()))
        .expect("sends");
    match next(&mut b_rx).await {
        Delivery::Lost {
            from,
            loss: Loss::Undecodable(_),
        } => assert_eq!(from, "c"),
        other => panic!("b got {other:?}"),
    }
    let started = Instant::now();
    let refused = c.request("b", &Foreign::F("?".into()), PATIENCE).await;
    assert!(
        matches!(refused, Err(BusError::NotAnswered { ref peer, .. }) if peer == "b"),
        "{refused:?}"
    );
    assert!(started.elapsed() < PATIENCE / 4, "at once");
    // Refused, and nothing was lost: b's next delivery is what comes next.
    // b still reads what it knows.
    a.send("b", &Msg::Count(1)).expect("sends");
    match next(&mut b_rx).await {
        Delivery::Message { from, body } => assert_eq!((from.as_str(), body), ("a", Msg::Count(1))),
        other => panic!("b got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_may_send_to_itself_and_is_never_silent_to_itself() {
    let nats = NatsServer::start();
    let (a, mut a_rx) = start::<Msg>(&nats, "a", OUTBOX).await;
    for i in 0..3 {
        a.send("a", &Msg::Count(i)).expect("sends");
    }
    for i in 0..3 {
        match next(&mut a_rx).await {
            Delivery::Message { from, body } => {
                assert_eq!((from.as_str(), body), ("a", Msg::Count(i)))
            }
            other => panic!("a got {other:?}"),
        }
    }
    // Past the silence, nothing: a node does not ping itself, nor miss
    // itself.
    assert!(tokio::time::timeout(Duration::from_secs(2), a_rx.recv())
        .await
        .is_err());
}

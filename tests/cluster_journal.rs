//! A replicated journal and its `Replicator` against a real `nats-server`
//! (`tests/common/nats.rs` starts one per test): records reach
//! `<prefix>.core` in order, framed, with their headers, split at the
//! server's `max_payload`; durability waits for JetStream, stalls while NATS
//! is away (appends refused once the waiting records spend the queue
//! budget) and resumes after, with nothing lost or doubled; another node's
//! claim fences the replicator off and fails the journal; a record too large
//! for a message fails it loudly; an events stream made before the core
//! subject existed is given it; an aborted replicator fails the journal.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use switchboard::cluster::{
    Cluster, ClusterSettings, ReplicationError, Replicator, ReplicatorHandle, CLAIM_HEADER,
    LSN_HEADER, NODE_HEADER,
};
use switchboard::journal::{Journal, JournalConfig, JournalError, Lsn};
use tokio::time::{timeout, Instant};

use common::nats::NatsServer;

/// Long enough for any step of these tests on a loaded machine; every wait
/// ends as soon as its condition holds.
const PATIENCE: Duration = Duration::from_secs(20);

fn settings(url: &str, id: &str) -> ClusterSettings {
    let mut s = ClusterSettings::new(url, id);
    // Short, so the client's reconnection delay (up to a quarter of it)
    // keeps the NATS restart test quick.
    s.lease_ttl = Duration::from_secs(2);
    s
}

fn open_journal(dir: &Path) -> Journal {
    let (journal, _) = Journal::open(JournalConfig {
        replicated: true,
        ..JournalConfig::new(dir)
    })
    .expect("open the journal");
    journal
}

/// Record `i`: its number, then filler of a size that varies with `i`.
fn record(i: u64, max: usize) -> Vec<u8> {
    let mut r = i.to_le_bytes().to_vec();
    r.resize(8 + (i as usize * 131) % (max - 8), (i % 251) as u8);
    r
}

async fn durable(journal: &Journal, lsn: Lsn) {
    timeout(PATIENCE, journal.wait_durable(lsn))
        .await
        .unwrap_or_else(|_| panic!("Lsn {lsn} not durable within {PATIENCE:?}"))
        .expect("durable");
}

/// Poll `cond` every 20 ms until it holds; fail with `what` after PATIENCE.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message of `<prefix>.core` as stored.
struct CoreMessage {
    lsn: Option<Lsn>,
    node: Option<String>,
    claim: Option<String>,
    payload: Bytes,
}

/// Every message on the core subject, in stream order.
async fn core_messages(cluster: &Cluster) -> Vec<CoreMessage> {
    let settings = cluster.settings();
    let stream = cluster
        .jetstream()
        .get_stream(settings.events_stream())
        .await
        .expect("the events stream");
    let subject = settings.core_subject();
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        match stream
            .direct_get_next_for_subject(subject.as_str(), Some(next))
            .await
        {
            Ok(m) => {
                next = m.sequence + 1;
                let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
                out.push(CoreMessage {
                    lsn: header(LSN_HEADER).map(|v| v.parse().expect("a decimal Lsn")),
                    node: header(NODE_HEADER),
                    claim: header(CLAIM_HEADER),
                    payload: m.payload,
                });
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => return out,
            Err(e) => panic!("reading {subject}: {e}"),
        }
    }
}

/// The records of the core subject's messages, as a standby reads them:
/// claims skipped, each message's first Lsn the next expected, every frame
/// whole with its CRC. Also checks each message's writer.
fn records(messages: &[CoreMessage], node: &str) -> Vec<(Lsn, Vec<u8>)> {
    let mut out: Vec<(Lsn, Vec<u8>)> = Vec::new();
    for m in messages {
        if m.claim.is_some() {
            assert!(m.payload.is_empty(), "a claim has no payload");
            continue;
        }
        let first = m.lsn.expect("a records message has Switchboard-Lsn");
        assert_eq!(m.node.as_deref(), Some(node), "Switchboard-Node");
        let expected = out.last().map_or(1, |(l, _)| l + 1);
        assert_eq!(first, expected, "messages follow each other, none doubled");
        let mut at = 0;
        let mut lsn = first;
        assert!(!m.payload.is_empty(), "a records message holds records");
        while at < m.payload.len() {
            let p = &m.payload[at..];
            let len = u32::from_le_bytes(p[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(p[4..8].try_into().unwrap());
            let payload = &p[8..8 + len];
            assert_eq!(crc32c::crc32c(payload), crc, "Lsn {lsn}: CRC");
            out.push((lsn, payload.to_vec()));
            at += 8 + len;
            lsn += 1;
        }
        assert_eq!(at, m.payload.len(), "whole frames only");
    }
    out
}

async fn start_replicator(cluster: &Cluster, journal: &Journal) -> ReplicatorHandle {
    let writer = cluster
        .event_log()
        .core_writer()
        .await
        .expect("claim the core subject");
    Replicator::start(journal, writer).expect("start the replicator")
}

/// Close the journal (from a blocking thread, as it blocks).
async fn close(journal: Journal) -> Result<(), JournalError> {
    tokio::task::spawn_blocking(move || journal.close(PATIENCE))
        .await
        .expect("close")
}

async fn stopped(handle: &ReplicatorHandle) -> Result<(), ReplicationError> {
    timeout(PATIENCE, handle.stopped())
        .await
        .expect("the replicator stops")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_core_subject_in_order_framed_and_split_at_max_payload() {
    const MAX_PAYLOAD: usize = 4096;
    let nats = NatsServer::start_with_max_payload(MAX_PAYLOAD);
    let cluster = Cluster::connect(settings(&nats.url(), "node-a"))
        .await
        .expect("connect");
    assert_eq!(cluster.client().server_info().max_payload, MAX_PAYLOAD);
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    // Appended before the replicator starts: shipped first, nothing lost.
    let mut appended = Vec::new();
    for i in 1..=20 {
        let r = record(i, 1500);
        assert_eq!(journal.append(&r).unwrap(), i);
        appended.push(r);
    }
    wait_until("the early records written locally", || {
        journal.written() == 20
    })
    .await;
    assert_eq!(journal.durable(), 0, "not durable before it is replicated");
    let handle = start_replicator(&cluster, &journal).await;
    for i in 21..=400 {
        let r = record(i, 1500);
        assert_eq!(journal.append(&r).unwrap(), i);
        appended.push(r);
        if i % 50 == 0 {
            // Some records wait while a message is in flight, some do not.
            durable(&journal, i).await;
        }
    }
    durable(&journal, 400).await;
    let status = handle.status();
    assert_eq!((status.replicated, status.lag), (400, 0));
    assert!(
        status.messages > 1 && status.retrying.is_none(),
        "{status:?}"
    );

    let messages = core_messages(&cluster).await;
    assert!(
        messages[0].claim.as_deref() == Some("node-a"),
        "the claim first"
    );
    let got = records(&messages, "node-a");
    let want: Vec<(Lsn, Vec<u8>)> = (1..).zip(appended).collect();
    assert!(got == want, "every record once, in order, as appended");
    // Split: no message above max_payload (headers included). The 20
    // records waiting when the replicator started are split as tightly as
    // the limit allows: no message could have taken the next one's first
    // record (the headers take less than 300 bytes).
    let data: Vec<&CoreMessage> = messages.iter().filter(|m| m.claim.is_none()).collect();
    assert_eq!(status.messages as usize, data.len());
    for m in &data {
        assert!(m.payload.len() < MAX_PAYLOAD, "{} bytes", m.payload.len());
    }
    let early: Vec<_> = data.windows(2).filter(|w| w[1].lsn <= Some(20)).collect();
    assert!(early.len() >= 2, "the early records take several messages");
    for pair in early {
        let m = pair[0];
        let next_frame = u32::from_le_bytes(pair[1].payload[..4].try_into().unwrap()) as usize + 8;
        assert!(
            m.payload.len() + next_frame > MAX_PAYLOAD - 300,
            "a message of {} bytes left out a frame of {next_frame} that fit",
            m.payload.len()
        );
    }
    assert!(
        data.iter().any(|m| m.payload.len() > 2 * 1500),
        "waiting batches coalesce into one message"
    );

    close(journal).await.expect("a clean close");
    assert_eq!(stopped(&handle).await, Ok(()), "ends with the journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_waits_for_jetstream_stalls_while_nats_is_away_and_resumes() {
    let mut nats = NatsServer::start();
    let cluster = Cluster::connect(settings(&nats.url(), "node-a"))
        .await
        .expect("connect");
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(JournalConfig {
        replicated: true,
        // About 100 of these records.
        queue_bytes: 16 * 1024,
        ..JournalConfig::new(dir.path())
    })
    .expect("open the journal");
    let handle = start_replicator(&cluster, &journal).await;
    for i in 1..=10 {
        journal.append(&record(i, 300)).unwrap();
    }
    durable(&journal, 10).await;

    nats.stop();
    for i in 11..=20 {
        journal.append(&record(i, 300)).unwrap();
    }
    wait_until("written locally", || journal.written() == 20).await;
    wait_until("the replicator retrying", || {
        handle.status().retrying.is_some()
    })
    .await;
    // Written and fsynced here, but JetStream has not acknowledged it.
    assert!(
        timeout(Duration::from_secs(1), journal.wait_durable(11))
            .await
            .is_err(),
        "durable while NATS is away"
    );
    assert_eq!(journal.durable(), 10);
    assert!(
        journal.health().is_ok(),
        "appends still taken within the budget"
    );
    let status = handle.status();
    assert_eq!((status.replicated, status.lag), (10, 10), "{status:?}");
    // The records waiting for JetStream spend the queue budget: appends
    // are refused, as with a stalled disk. (Each append is written before
    // the next, so only the replica's lag counts.)
    let mut last = 20;
    loop {
        match journal.append(&record(last + 1, 300)) {
            Ok(lsn) => {
                last = lsn;
                wait_until("written locally", || journal.written() == lsn).await;
            }
            Err(JournalError::Unavailable { reason }) => {
                assert!(reason.contains("waiting for replication"), "{reason}");
                break;
            }
            Err(e) => panic!("refused for another reason: {e}"),
        }
        assert!(last < 1000, "the budget never refused an append");
    }
    let waiting = handle.status().unreplicated_bytes;
    assert!(
        waiting > 16 * 1024 - 400,
        "refused with {waiting} bytes waiting"
    );

    nats.spawn();
    durable(&journal, last).await;
    for i in last + 1..=last + 10 {
        assert_eq!(journal.append(&record(i, 300)).unwrap(), i);
    }
    last += 10;
    durable(&journal, last).await;
    wait_until("the retry reported over", || {
        handle.status().retrying.is_none()
    })
    .await;

    let got = records(&core_messages(&cluster).await, "node-a");
    let want: Vec<(Lsn, Vec<u8>)> = (1..=last).map(|i| (i, record(i, 300))).collect();
    assert!(
        got == want,
        "nothing missing or doubled: {:?}",
        got.iter().map(|(l, _)| l).collect::<Vec<_>>()
    );
    close(journal).await.expect("a clean close");
    assert_eq!(stopped(&handle).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_claim_fences_the_replicator_and_fails_the_journal() {
    let nats = NatsServer::start();
    let a = Cluster::connect(settings(&nats.url(), "node-a"))
        .await
        .expect("connect a");
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let handle = start_replicator(&a, &journal).await;
    for i in 1..=5 {
        journal.append(&record(i, 300)).unwrap();
    }
    durable(&journal, 5).await;

    // Node b becomes the active one: its writer claims the core subject.
    let b = Cluster::connect(settings(&nats.url(), "node-b"))
        .await
        .expect("connect b");
    let _b_writer = b.event_log().core_writer().await.expect("b claims");

    let lsn = journal.append(&record(6, 300)).unwrap();
    let waited = timeout(PATIENCE, journal.wait_durable(lsn))
        .await
        .expect("the waiter is answered");
    match waited {
        Err(JournalError::Unavailable { reason }) => {
            assert!(reason.contains("fenced off"), "{reason}")
        }
        other => panic!("a fenced record is never durable, got {other:?}"),
    }
    match stopped(&handle).await {
        Err(ReplicationError::Fenced { subject, .. }) => {
            assert_eq!(subject, "switchboard.core")
        }
        other => panic!("the handle reports the fence, got {other:?}"),
    }
    assert!(handle.status().stopped.is_some());
    for refused in [journal.health(), journal.append(b"more").map(drop)] {
        match refused {
            Err(JournalError::Unavailable { reason }) => {
                assert!(reason.contains("another node"), "{reason}")
            }
            other => panic!("a fenced node's journal refuses, got {other:?}"),
        }
    }
    assert_eq!(journal.durable(), 5);
    // The stream holds a's records up to 5, then b's claim; nothing of a's after.
    let messages = core_messages(&a).await;
    let last = messages.last().expect("messages");
    assert_eq!(last.claim.as_deref(), Some("node-b"));
    let got = records(&messages, "node-a");
    assert_eq!(got.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_a_message_fails_the_journal_loudly() {
    let nats = NatsServer::start_with_max_payload(2048);
    let cluster = Cluster::connect(settings(&nats.url(), "node-a"))
        .await
        .expect("connect");
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let handle = start_replicator(&cluster, &journal).await;
    journal.append(b"small").unwrap();
    durable(&journal, 1).await;
    let big = journal.append(&[1u8; 3000]).unwrap();
    match stopped(&handle).await {
        Err(e @ ReplicationError::RecordTooLarge { lsn, .. }) => {
            assert_eq!(lsn, big);
            assert!(e.to_string().contains("max_payload of 2048"), "{e}");
        }
        other => panic!("a record larger than max_payload stops it, got {other:?}"),
    }
    match journal.health() {
        Err(JournalError::Unavailable { reason }) => {
            assert!(reason.contains("max_payload"), "{reason}")
        }
        other => panic!("the journal is failed, got {other:?}"),
    }
    assert_eq!(journal.durable(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_stream_without_the_core_subject_is_given_it() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    // As made before the core subject existed.
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "switchboard-events".into(),
        subjects: vec!["switchboard.p.*".into()],
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("the old stream");
    let cluster = Cluster::connect(settings(&nats.url(), "node-a"))
        .await
        .expect("connect");
    let mut stream = js.get_stream("switchboard-events").await.expect("stream");
    let subjects = stream.info().await.expect("info").config.subjects.clone();
    assert_eq!(subjects, ["switchboard.p.*", "switchboard.core"]);
    // And the core writer works on it.
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let handle = start_replicator(&cluster, &journal).await;
    journal.append(b"one").unwrap();
    durable(&journal, 1).await;
    assert_eq!(
        records(&core_messages(&cluster).await, "node-a"),
        [(1, b"one".to_vec())]
    );
    close(journal).await.expect("close");
    assert_eq!(stopped(&handle).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_replicator_fails_the_journal() {
    let nats = NatsServer::start();
    let cluster = Cluster::connect(settings(&nats.url(), "node-a"))
        .await
        .expect("connect");
    let dir = tempfile::tempdir().unwrap();
    let journal = open_journal(dir.path());
    let handle = start_replicator(&cluster, &journal).await;
    journal.append(b"one").unwrap();
    durable(&journal, 1).await;
    handle.abort();
    match stopped(&handle).await {
        Err(ReplicationError::Other(why)) => assert!(why.contains("unexpectedly"), "{why}"),
        other => panic!("an aborted replicator reports it, got {other:?}"),
    }
    // Without a replicator nothing could become durable: refused at once.
    assert!(matches!(
        journal.append(b"two"),
        Err(JournalError::Unavailable { .. })
    ));
    assert_eq!(journal.durable(), 1);
}

//! Journal faults with the real binary as a child process on a data dir:
//! a torn tail and flipped bits in the last segment are cut and logged
//! (nothing after the cut applied, everything before it there); damage in an
//! earlier segment or a missing segment stops the start with an error naming
//! the file and a non-zero exit, changing nothing; a disk that refuses writes
//! (a file size limit set on the running process) makes customers, agents and
//! HTTP clients get `unavailable` instead of an acknowledgement, and the
//! broker takes traffic again by itself once the writes work; a crash
//! between a conversation's record of a change and its agent's leaves the
//! agent in step with the conversation after the restart.
//!
//! Each test finds the journal record of a message by its text (bincode keeps
//! strings as they are), so it knows which messages a cut must keep.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{binary, Broker, Stream};
use common::*;
use switchboard::agent::AgentEvent;
use switchboard::channel::webchat::WebchatEvent;
use switchboard::conversation::ConversationEvent;
use switchboard::journal::record::{self, Record};
use switchboard::protocol::TaskState;
use switchboard::router::RouterEvent;

/// An admin token the broker accepts (at least 32 characters).
const ADMIN: &str = "journal-faults-admin-0123456789abcdef";
/// Segment header and record frame header, as `docs/operations.md` gives them.
const HEADER_LEN: usize = 24;
const FRAME_OVERHEAD: usize = 8;

fn command(dir: &Path) -> Command {
    let mut cmd = binary();
    cmd.args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN)
        .env("SWITCHBOARD_CLIENT_LIMITS", "false")
        .env("SWITCHBOARD_JOURNAL_SEGMENT_BYTES", "64KiB")
        .env("SWITCHBOARD_SHUTDOWN_TIMEOUT", "5s");
    cmd
}

/// The broker on `dir`, listening on a free port.
fn broker_on(dir: &Path) -> (Broker, Harness) {
    broker_with(dir, &[])
}

/// The same with these settings (environment variables) added.
fn broker_with(dir: &Path, env: &[(&str, &str)]) -> (Broker, Harness) {
    let mut cmd = command(dir);
    cmd.envs(env.iter().copied());
    let mut broker = Broker::start(&mut cmd);
    let api = broker.stdout_value("api");
    let base = api.trim_end_matches("/v1").to_owned();
    (broker, Harness::external(&base, ADMIN))
}

/// Start the broker on `dir` expecting it to refuse: its exit code and
/// what it printed on stderr.
fn refused_start(dir: &Path) -> (Option<i32>, String) {
    let out = command(dir).output().expect("run the broker");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kill_9(mut broker: Broker) {
    broker.child.kill().expect("kill -9");
    broker.child.wait().expect("wait");
}

fn journal_dir(dir: &Path) -> PathBuf {
    dir.join("journal")
}

/// The segment files, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(journal_dir(dir))
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    out.sort();
    out
}

/// The first Lsn a segment's name says.
fn first_lsn(segment: &Path) -> u64 {
    let name = segment.file_name().and_then(|n| n.to_str()).expect("name");
    name["wal-".len()..name.len() - ".seg".len()]
        .parse()
        .expect("Lsn in the name")
}

/// Every record of a segment: (offset of its frame, payload length).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at + FRAME_OVERHEAD <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert!(
            at + FRAME_OVERHEAD + len <= bytes.len(),
            "torn record at {at} before any damage"
        );
        out.push((at, len));
        at += FRAME_OVERHEAD + len;
    }
    assert_eq!(at, bytes.len(), "segment does not end with a whole record");
    out
}

/// The frame (offset, payload length) of the first record whose payload
/// holds `marker`.
fn record_of(bytes: &[u8], marker: &str) -> Option<(usize, usize)> {
    frames(bytes).into_iter().find(|&(at, len)| {
        bytes[at + FRAME_OVERHEAD..at + FRAME_OVERHEAD + len]
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    })
}

/// Message `k`'s text: a unique marker, padded to `size` characters.
fn text(k: usize, size: usize) -> String {
    let marker = marker(k);
    format!("{marker}{}", "x".repeat(size - marker.len()))
}

fn marker(k: usize) -> String {
    format!("msg-{k:03}-")
}

/// Wait until the newest segment stops growing (every record the traffic
/// caused is written); at most 5 s.
fn settle(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let size = || {
        segments(dir)
            .iter()
            .map(|p| std::fs::metadata(p).expect("segment").len())
            .sum::<u64>()
    };
    let mut last = size();
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = size();
        if now == last || Instant::now() > deadline {
            return;
        }
        last = now;
    }
}

/// A conversation with an agent: the customer sends `n` messages of `size`
/// characters, each acknowledged, the agent reads each. Returns the customer's
/// session and the conversation id.
async fn conversation(h: &Harness, n: usize, size: usize) -> (Agent, Session, String) {
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let session = h.create_session("Ann", None).await;
    let (mut ws, _) = h.connect_customer(&session).await;
    let mut conv = String::new();
    for k in 0..n {
        let ack = ws.say_with_id(&text(k, size), &format!("m{k}")).await;
        assert_eq!(ack["seq"], k as u64 + 1, "{ack}");
        conv = s(&ack["conversation_id"]);
        if k == 0 {
            // The first message comes with the task.
            desk.take_offer().await;
        } else {
            desk.recv_message_text(&text(k, size)).await;
        }
    }
    (alice, session, conv)
}

/// A broker on a fresh data dir, and a conversation of one message held
/// by alice, her desk connected.
struct Held {
    dir: tempfile::TempDir,
    broker: Broker,
    h: Harness,
    alice: Agent,
    session: Session,
    conv: String,
    desk: Ws,
    task: String,
}

async fn held_conversation() -> Held {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, h) = broker_on(dir.path());
    let (alice, session, conv) = conversation(&h, 1, 40).await;
    let (desk, hello) = h.connect_agent(&alice).await;
    let task = s(&hello["tasks"][0]["id"]);
    Held {
        dir,
        broker,
        h,
        alice,
        session,
        conv,
        desk,
        task,
    }
}

/// A new customer writes, and `desk` is offered the task and takes it (the
/// agent's capacity is free).
async fn next_customer_is_offered(h: &Harness, desk: &mut Ws) {
    let next = h.create_session("Ben", None).await;
    let (mut ws, _) = h.connect_customer(&next).await;
    ws.say("Anyone there?").await;
    desk.take_offer().await;
}

/// The journal of `conversation(n, size)` as a crash leaves it: the broker
/// on a fresh data dir, the conversation, every record written, then
/// `kill -9`. Returns the data dir, the agent, the customer's session and
/// the conversation id.
async fn crashed_after_conversation(
    n: usize,
    size: usize,
) -> (tempfile::TempDir, Agent, Session, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, h) = broker_on(dir.path());
    let (alice, session, conv) = conversation(&h, n, size).await;
    settle(dir.path());
    kill_9(broker);
    (dir, alice, session, conv)
}

/// After a restart: the conversation holds exactly messages `0..kept`, and
/// it goes on (the next message gets the next `seq`, the agent still holds
/// the task and gets it).
async fn assert_kept(
    h: &Harness,
    alice: &Agent,
    session: &Session,
    conv: &str,
    kept: usize,
    size: usize,
) {
    let messages = h.messages(conv).await;
    let expected: Vec<String> = (0..kept).map(|k| text(k, size)).collect();
    let got = texts(&messages["messages"]);
    assert_eq!(
        got.iter().map(|t| &t[..8]).collect::<Vec<_>>(),
        expected.iter().map(|t| &t[..8]).collect::<Vec<_>>(),
        "messages after the restart"
    );
    assert_eq!(got, expected);
    assert_gap_free(&messages["messages"]);
    let (mut desk, hello) = h.connect_agent(alice).await;
    assert_eq!(hello["tasks"][0]["conversation_id"], conv, "{hello}");
    let (mut ws, history) = h.connect_customer(session).await;
    let last_seq = seqs(&history["messages"]).last().copied().unwrap_or(0);
    assert_eq!(last_seq, kept as u64, "the customer's history");
    let ack = ws.say("after the restart").await;
    assert_eq!(ack["seq"], kept as u64 + 1, "{ack}");
    desk.recv_message_text("after the restart").await;
}

/// The log line of the cut; asserts it names the segment, offset and count.
fn assert_cut_logged(broker: &mut Broker, segment: &Path, offset: usize, records: usize) {
    let line = broker.wait_for(Stream::Err, "the cut's log line", |l| {
        l.contains("journal: cut a torn or corrupt tail of the last segment")
    });
    for part in [
        format!("segment={}", segment.display()),
        format!("offset={offset} "),
        format!("records={records} "),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_logged_and_everything_before_it_is_there() {
    const SIZE: usize = 300;
    let started = Instant::now();
    let (dir, alice, session, conv) = crashed_after_conversation(8, SIZE).await;

    // Cut in the middle of message 5's record, as a crash during its write
    // leaves it: messages 5.. are gone, 0..5 are whole.
    let segment = segments(dir.path()).pop().expect("a segment");
    let bytes = std::fs::read(&segment).expect("read");
    let (at, len) = record_of(&bytes, &marker(5)).expect("message 5's record");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open");
    file.set_len((at + FRAME_OVERHEAD + len / 2) as u64)
        .expect("truncate");
    drop(file);

    let (mut broker, h) = broker_on(dir.path());
    assert_cut_logged(&mut broker, &segment, at, 1);
    assert_kept(&h, &alice, &session, &conv, 5, SIZE).await;
    kill_9(broker);
    // The torn bytes are gone: the records written since follow the last
    // good one (`frames` reads the file through to its end).
    let bytes = std::fs::read(&segment).expect("read");
    let after: Vec<usize> = frames(&bytes).iter().map(|(o, _)| *o).collect();
    assert!(after.contains(&at), "a record starts where the cut was");
    println!("torn tail: {:?}", started.elapsed());
}

/// The journal payloads of a segment, decoded, with their frames' offsets.
fn records(bytes: &[u8]) -> Vec<(usize, Record)> {
    frames(bytes)
        .into_iter()
        .map(|(at, len)| {
            let payload = &bytes[at + FRAME_OVERHEAD..at + FRAME_OVERHEAD + len];
            (
                at,
                record::read(payload).expect("a record the broker reads"),
            )
        })
        .collect()
}

/// The segment as a crash leaves it when it falls just before the record
/// at `offset`.
fn cut_at(segment: &Path, offset: usize) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .expect("open");
    file.set_len(offset as u64).expect("truncate");
}

/// The newest segment and its records.
fn newest_records(dir: &Path) -> (PathBuf, Vec<(usize, Record)>) {
    let segment = segments(dir).pop().expect("a segment");
    let all = records(&std::fs::read(&segment).expect("read"));
    (segment, all)
}

/// The index in `all` of the first record `pred` matches (`what` it is).
fn first_of(all: &[(usize, Record)], what: &str, pred: impl Fn(&Record) -> bool) -> usize {
    all.iter()
        .position(|(_, r)| pred(r))
        .unwrap_or_else(|| panic!("no record: {what}"))
}

/// The index in `all` of the last record `pred` matches (`what` it is).
fn last_of(all: &[(usize, Record)], what: &str, pred: impl Fn(&Record) -> bool) -> usize {
    all.iter()
        .rposition(|(_, r)| pred(r))
        .unwrap_or_else(|| panic!("no record: {what}"))
}

/// A crash between a conversation's record that its task was assigned and
/// the agent's own record of it: the router and the conversation give the
/// task to the agent, the agent's state lacks it. Before, the desk never
/// showed the task, the agent could neither answer nor end it, and the
/// customer waited for ever with the agent's capacity taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_the_agents_record_lost_is_back_on_its_desk_after_a_crash() {
    let (dir, alice, session, conv) = crashed_after_conversation(1, 40).await;
    let (segment, all) = newest_records(dir.path());
    let is_assigned = |r: &Record| {
        matches!(
            r,
            Record::Conversation {
                event: ConversationEvent::TaskMoved {
                    state: TaskState::Assigned,
                    ..
                },
                ..
            }
        )
    };
    let is_tracked = |r: &Record| {
        matches!(r, Record::Agent {
            event: AgentEvent::TaskTracked(view),
            ..
        } if view.state == TaskState::Assigned)
    };
    let conversation_at = first_of(&all, "the conversation's record of the assignment", |r| {
        is_assigned(r)
    });
    let agent_at = first_of(&all, "the agent's record of the assignment", |r| {
        is_tracked(r)
    });
    assert!(
        conversation_at < agent_at,
        "the conversation records it first"
    );
    // The crash: the agent's record and everything after it never written.
    cut_at(&segment, all[agent_at].0);

    let (broker, h) = broker_on(dir.path());
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"].as_array().map(Vec::len), Some(1), "{hello}");
    assert_eq!(hello["tasks"][0]["conversation_id"], conv, "{hello}");
    assert_eq!(hello["tasks"][0]["state"], "assigned", "{hello}");
    let task = s(&hello["tasks"][0]["id"]);
    // The whole history comes with it, and the conversation goes on.
    let assigned = desk
        .recv_where("the task again, with its history", |v| {
            v["type"] == "task.assigned" && v["task"]["conversation_id"] == conv.as_str()
        })
        .await;
    assert_eq!(texts(&assigned["history"]), vec![text(0, 40)], "{assigned}");
    let (mut ws, _) = h.connect_customer(&session).await;
    desk.agent_send(&conv, "Back after the crash", "a-1").await;
    ws.recv_message_text("Back after the crash").await;
    desk.end(&conv).await;
    desk.complete(&task, "resolved", "").await;
    // Its capacity (1) is free again: the next customer's task is offered.
    next_customer_is_offered(&h, &mut desk).await;
    kill_9(broker);
}

/// The reverse: a crash between a conversation's record that its task was
/// completed and the agent's record that it let the task go. Before, the
/// agent kept the task: in its `hello`, and in its load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_the_agents_record_lost_leaves_no_task_on_its_desk_after_a_crash() {
    let Held {
        dir,
        broker,
        alice,
        conv,
        mut desk,
        task,
        ..
    } = held_conversation().await;
    desk.end(&conv).await;
    desk.complete(&task, "resolved", "").await;
    settle(dir.path());
    kill_9(broker);

    let (segment, all) = newest_records(dir.path());
    let completed_at = first_of(&all, "the conversation's record of the completion", |r| {
        matches!(
            r,
            Record::Conversation {
                event: ConversationEvent::Completed { .. },
                ..
            }
        )
    });
    let dropped_at = first_of(&all, "the agent's record that it let the task go", |r| {
        matches!(r, Record::Agent {
                event: AgentEvent::TaskDropped { task_id },
                ..
            } if &**task_id == task.as_str())
    });
    assert!(
        completed_at < dropped_at,
        "the conversation records it first"
    );
    cut_at(&segment, all[dropped_at].0);

    let (broker, h) = broker_on(dir.path());
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    assert_eq!(hello["agent"]["load"]["webchat"], 0, "{hello}");
    // The conversation is over, as the customer's and the API's view say.
    let state = h.conversation(&conv).await;
    assert_eq!(state["task"]["state"], "completed", "{state}");
    // And the agent takes the next customer.
    next_customer_is_offered(&h, &mut desk).await;
    kill_9(broker);
}

/// A crash between a conversation's first record (opened) and its channel's
/// record naming it for the customer's session: nothing leads to the
/// conversation, and nothing else of it was written. Before, it came back as
/// an empty task offered to an agent ahead of the customer's own, its
/// replies going nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_its_channel_never_named_before_a_crash_is_not_offered_after_it() {
    let (dir, alice, session, conv) = crashed_after_conversation(1, 40).await;
    let (segment, all) = newest_records(dir.path());
    let opened_at = first_of(
        &all,
        "the conversation's record of its opening",
        |r| matches!(r, Record::ConversationOpened(c) if *c.id == *conv),
    );
    assert!(
        matches!(
            &all[opened_at + 1].1,
            Record::Webchat(WebchatEvent::ConversationOpened { conversation, .. })
                if **conversation == *conv
        ),
        "the channel's record naming it comes next: {:?}",
        all[opened_at + 1].1
    );
    cut_at(&segment, all[opened_at + 1].0);

    let (broker, h) = broker_on(dir.path());
    let r = h.admin_get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    // The customer never got an ack and sends again: a conversation of its
    // own, the one task the agent is offered.
    let (mut ws, history) = h.connect_customer(&session).await;
    assert!(history["conversation_id"].is_null(), "{history}");
    let ack = ws.say_with_id(&text(0, 40), "m0").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    let again = s(&ack["conversation_id"]);
    assert_ne!(again, conv);
    let (offer, _) = desk.take_offer().await;
    assert_eq!(offer["task"]["conversation_id"], again.as_str(), "{offer}");
    desk.agent_send(&again, "Hello Ann", "a-1").await;
    ws.recv_message_text("Hello Ann").await;
    kill_9(broker);
}

/// A crash in a warm transfer between the conversation's record of the
/// move (the target, bob, holds it) and the router's (it takes the task
/// from alice's load to bob's). Before, the router failed the transfer at
/// the restart: bob's desk was told it was canceled while the conversation
/// stayed his, alice's desk had lost it too, and nobody could answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_transfer_the_routers_record_lost_stands_after_a_crash() {
    let Held {
        dir,
        broker,
        h,
        alice,
        session,
        conv,
        desk: mut a,
        task,
    } = held_conversation().await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let v = a
        .call(serde_json::json!({
            "type": "transfer", "task_id": task, "to": {"agent": "bob"},
            "mode": "warm", "note": "",
        }))
        .await;
    assert_eq!(v["type"], "ok", "{v}");
    b.offer_for(&conv).await;
    b.accept(&task).await;
    h.wait_agent("alice", "capacity back", |v| v["load"]["webchat"] == 0)
        .await;
    settle(dir.path());
    kill_9(broker);

    let (segment, all) = newest_records(dir.path());
    let moved_at = last_of(&all, "the conversation's record of the move to bob", |r| {
        matches!(r, Record::Conversation {
                event: ConversationEvent::TaskMoved {
                    state: TaskState::Assigned,
                    agent_id: Some(agent),
                    ..
                },
                ..
            } if &**agent == "bob")
    });
    let routed_at = first_of(&all, "the router's record of the move", |r| {
        matches!(r, Record::Router(RouterEvent::TransferredWarm { .. }))
    });
    assert!(moved_at < routed_at, "the conversation records it first");
    cut_at(&segment, all[routed_at].0);

    let (broker, h) = broker_on(dir.path());
    let (mut b, hello) = h.connect_agent(&bob).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    let (_a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    h.wait_agent("bob", "holding it", |v| v["load"]["webchat"] == 1)
        .await;
    h.wait_agent("alice", "free", |v| v["load"]["webchat"] == 0)
        .await;
    b.expect_none("a rescind of the task", Duration::from_millis(300), |v| {
        v["type"] == "task.rescinded"
    })
    .await;
    let (mut ws, _) = h.connect_customer(&session).await;
    b.agent_send(&conv, "Bob here", "b-1").await;
    ws.recv_message_text("Bob here").await;
    kill_9(broker);
}

/// Alice's conversation (one message, accepted), her desk's command on it,
/// and the journal as a crash leaves it just before the first record of
/// the conversation's own state that `conversation_side` matches, which
/// must come after the router's record that `router_side` matches. Returns
/// the data dir, the agent, the customer's session and the conversation.
async fn crashed_between_router_and_conversation(
    command: impl Fn(&str) -> serde_json::Value,
    answer: &str,
    router_side: impl Fn(&RouterEvent) -> bool,
    conversation_side: impl Fn(&ConversationEvent) -> bool,
) -> (tempfile::TempDir, Agent, Session, String) {
    let Held {
        dir,
        broker,
        h,
        alice,
        session,
        conv,
        desk: mut a,
        task,
    } = held_conversation().await;
    let v = a.call(command(&task)).await;
    assert_eq!(v["type"], answer, "{v}");
    h.wait_agent("alice", "capacity back", |v| v["load"]["webchat"] == 0)
        .await;
    settle(dir.path());
    kill_9(broker);
    cut_between(dir.path(), router_side, conversation_side);
    (dir, alice, session, conv)
}

/// Cut the journal just before the last record of a conversation's state
/// that `conversation_side` matches, after the router's last record that
/// `router_side` matches.
fn cut_between(
    dir: &Path,
    router_side: impl Fn(&RouterEvent) -> bool,
    conversation_side: impl Fn(&ConversationEvent) -> bool,
) {
    let (segment, all) = newest_records(dir);
    let routed_at = last_of(
        &all,
        "the router's record",
        |r| matches!(r, Record::Router(e) if router_side(e)),
    );
    let followed_at = last_of(
        &all,
        "the conversation's record",
        |r| matches!(r, Record::Conversation { event, .. } if conversation_side(event)),
    );
    assert!(routed_at < followed_at, "the router records it first");
    cut_at(&segment, all[followed_at].0);
}

/// A crash in a cold transfer to a queue between the router's record (alice
/// lets go, the task waits in the queue) and the conversation's. Before,
/// the conversation came back still alice's while the router offered the
/// task to others: an agent's accept was refused, alice's desk showed a
/// task she no longer held, with her capacity free for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_transfer_the_conversations_record_lost_is_made_after_a_crash() {
    let (dir, alice, session, conv) = crashed_between_router_and_conversation(
        |task| {
            serde_json::json!({
                "type": "transfer", "task_id": task, "to": {"queue": "default"},
                "mode": "cold", "note": "billing",
            })
        },
        "task.transferred",
        |e| matches!(e, RouterEvent::TransferredCold { .. }),
        |e| matches!(e, ConversationEvent::Transferred { .. }),
    )
    .await;
    let (broker, h) = broker_on(dir.path());
    let state = h
        .wait_conversation(&conv, "the move made again", |v| {
            v["task"]["state"] == "queued"
        })
        .await;
    assert_eq!(state["agent_id"], serde_json::Value::Null, "{state}");
    let (_a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    // Bob is offered it with its transfer, and it is his.
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let offer = b.offer_for(&conv).await;
    let task = s(&offer["task"]["id"]);
    let assigned = b.accept(&task).await;
    assert_eq!(
        assigned["task"]["transfers"][0]["note"], "billing",
        "{assigned}"
    );
    let (mut ws, _) = h.connect_customer(&session).await;
    b.agent_send(&conv, "Bob from billing", "b-1").await;
    ws.recv_message_text("Bob from billing").await;
    kill_9(broker);
}

/// A crash while parking, between the router's record (parked, alice's
/// capacity free) and the conversation's. Before, the conversation came
/// back alice's, assigned, while the router held it parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parking_the_conversations_record_lost_is_made_after_a_crash() {
    let (dir, alice, session, conv) = crashed_between_router_and_conversation(
        |task| serde_json::json!({"type": "park", "task_id": task}),
        "task.parked",
        |e| matches!(e, RouterEvent::Parked { .. }),
        |e| {
            matches!(
                e,
                ConversationEvent::TaskMoved {
                    state: TaskState::Parked,
                    ..
                }
            )
        },
    )
    .await;
    let (broker, h) = broker_on(dir.path());
    h.wait_conversation(&conv, "parked again", |v| v["task"]["state"] == "parked")
        .await;
    let (mut a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    // The customer writes: it comes back to alice.
    let (mut ws, _) = h.connect_customer(&session).await;
    ws.say("here is the receipt").await;
    let offer = a.offer_for(&conv).await;
    a.accept(&s(&offer["task"]["id"])).await;
    a.agent_send(&conv, "Thanks, got it", "a-1").await;
    ws.recv_message_text("Thanks, got it").await;
    kill_9(broker);
}

/// A crash as an agent's disconnect grace runs out, between the router's
/// record that it withdrew her task (back to the queue) and the
/// conversation's. Before, the conversation came back hers while the router
/// offered the task to others, whose accepts it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_the_conversations_record_lost_is_made_after_a_crash() {
    let grace = [("SWITCHBOARD_DISCONNECT_GRACE", "1s")];
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, h) = broker_with(dir.path(), &grace);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let session = h.create_session("Ann", None).await;
    let (mut ws, _) = h.connect_customer(&session).await;
    let conv = s(&ws.say("hello?").await["conversation_id"]);
    desk.take_offer().await;
    drop(desk);
    h.wait_conversation(&conv, "withdrawn after the grace", |v| {
        v["task"]["state"] == "queued"
    })
    .await;
    settle(dir.path());
    kill_9(broker);
    cut_between(
        dir.path(),
        |e| matches!(e, RouterEvent::Requeued { .. }),
        |e| {
            matches!(
                e,
                ConversationEvent::TaskMoved {
                    state: TaskState::Queued,
                    ..
                }
            )
        },
    );

    let (broker, h) = broker_with(dir.path(), &grace);
    h.wait_conversation(&conv, "withdrawn again", |v| v["task"]["state"] == "queued")
        .await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut b = h.agent_online(&bob).await;
    let offer = b.offer_for(&conv).await;
    b.accept(&s(&offer["task"]["id"])).await;
    let (mut ws, _) = h.connect_customer(&session).await;
    b.agent_send(&conv, "Bob here", "b-1").await;
    ws.recv_message_text("Bob here").await;
    let (_a, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    kill_9(broker);
}

/// A crash as an agent starts an outbound conversation, after the channel
/// named it under the customer's session and before the conversation's
/// first act (assigned to the agent, the agent's message). Before, it came
/// back as an empty task in the queue, and the session's open conversation
/// refused the agent's retry with `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_conversation_a_crash_left_unstarted_lets_the_agent_start_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (broker, h) = broker_on(dir.path());
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let session = h.create_session("Frank", None).await;
    let outbound = serde_json::json!({
        "type": "outbound", "channel": "webchat", "to": session.id, "text": "Your order shipped",
    });
    let assigned = desk.call(outbound.clone()).await;
    assert_eq!(assigned["type"], "task.assigned", "{assigned}");
    let conv = s(&assigned["task"]["conversation_id"]);
    settle(dir.path());
    kill_9(broker);

    let (segment, all) = newest_records(dir.path());
    let named_at = first_of(&all, "the channel's record naming it", |r| {
        matches!(r, Record::Webchat(WebchatEvent::ConversationOpened { conversation, .. })
                if **conversation == *conv)
    });
    assert!(
        matches!(&all[named_at - 1].1, Record::ConversationOpened(c) if *c.id == *conv),
        "the conversation's opening comes just before"
    );
    assert!(
        all[named_at + 1..]
            .iter()
            .any(|(_, r)| matches!(r, Record::Conversation { id, .. } if **id == *conv)),
        "the conversation's own records come after"
    );
    cut_at(&segment, all[named_at + 1].0);

    let (broker, h) = broker_on(dir.path());
    let r = h.admin_get(&format!("/v1/conversations/{conv}")).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    desk.set_activity("available").await;
    // The agent never got an answer, and starts it again.
    let again = desk.call(outbound).await;
    assert_eq!(again["type"], "task.assigned", "{again}");
    let conv = s(&again["task"]["conversation_id"]);
    let (mut ws, history) = h.connect_customer(&session).await;
    assert_eq!(history["conversation_id"], conv.as_str(), "{history}");
    assert_eq!(texts(&history["messages"]), vec!["Your order shipped"]);
    let ack = ws.say("thanks").await;
    assert_eq!(ack["conversation_id"], conv.as_str(), "{ack}");
    desk.recv_message_text("thanks").await;
    kill_9(broker);
}

/// Append one record to a segment, framed as the journal frames it
/// (length, CRC-32C of the payload, payload: `docs/operations.md`).
fn append_record(segment: &Path, record: switchboard::journal::record::RecordRef<'_>) {
    use std::io::Write;
    let payload = switchboard::codec::encode(&record).expect("encode");
    let mut frame = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    std::fs::OpenOptions::new()
        .append(true)
        .open(segment)
        .expect("open")
        .write_all(&frame)
        .expect("append");
}

/// The router took a task from its agent (its disconnect grace ran out) as
/// the chat ended: the conversation in wrap-up, the router with the task
/// waiting again. The journal is made so: the chat ended, the router's
/// record of the wrap-up replaced by its record of the withdrawal. Before,
/// the router offered the task to agent after agent, each offer going
/// nowhere (the conversation routes only a waiting task) and counted as
/// missed, until the wrap-up ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_withdrawn_as_its_chat_ended_is_completed_not_offered_again() {
    let Held {
        dir,
        broker,
        alice,
        conv,
        mut desk,
        task,
        ..
    } = held_conversation().await;
    desk.end(&conv).await;
    settle(dir.path());
    kill_9(broker);

    let (segment, all) = newest_records(dir.path());
    let ended_at = first_of(
        &all,
        "the conversation's record of the end (wrap-up begins)",
        |r| {
            matches!(
                r,
                Record::Conversation {
                    event: ConversationEvent::Ended { .. },
                    ..
                }
            )
        },
    );
    let wrapping_at = first_of(&all, "the router's record of the wrap-up", |r| {
        matches!(r, Record::Router(RouterEvent::Wrapping { .. }))
    });
    assert!(ended_at < wrapping_at, "the conversation records it first");
    cut_at(&segment, all[wrapping_at].0);
    append_record(
        &segment,
        switchboard::journal::record::RecordRef::Router(&RouterEvent::Requeued {
            task_id: task.as_str().into(),
            declined_by: None,
            missed: false,
            at: std::time::SystemTime::now(),
        }),
    );

    let (broker, h) = broker_on(dir.path());
    let done = h
        .wait_conversation(&conv, "completed", |v| v["task"]["state"] == "completed")
        .await;
    assert_eq!(done["disposition"], "no_response", "{done}");
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"], serde_json::json!([]), "{hello}");
    desk.expect_none(
        "an offer of the finished task",
        Duration::from_millis(500),
        |v| v["type"] == "task.offered",
    )
    .await;
    h.wait_agent("alice", "free", |v| v["load"]["webchat"] == 0)
        .await;
    kill_9(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bits_in_the_last_segment_cut_from_the_bad_record() {
    const SIZE: usize = 300;
    let started = Instant::now();
    let (dir, alice, session, conv) = crashed_after_conversation(8, SIZE).await;
    let segment = segments(dir.path()).pop().expect("a segment");
    let pristine = std::fs::read(&segment).expect("read");

    // In the last record: that record alone is cut.
    let all = frames(&pristine);
    let &(last, last_len) = all.last().expect("records");
    let mut bytes = pristine.clone();
    bytes[last + FRAME_OVERHEAD + last_len / 2] ^= 0x04;
    std::fs::write(&segment, &bytes).expect("write");
    let kept = (0..8)
        .take_while(|&k| record_of(&pristine, &marker(k)).is_some_and(|(at, _)| at < last))
        .count();
    let (mut broker, h) = broker_on(dir.path());
    assert_cut_logged(&mut broker, &segment, last, 1);
    assert_kept(&h, &alice, &session, &conv, kept, SIZE).await;
    drop(broker);

    // In an earlier record (message 3's): that record and every one after
    // it are cut, though they are whole; the log line counts them.
    let bytes = std::fs::read(&segment).expect("read");
    let (at, len) = record_of(&bytes, &marker(3)).expect("message 3's record");
    let after = frames(&bytes).iter().filter(|(o, _)| *o >= at).count();
    assert!(after > 1, "records after message 3: {after}");
    let mut flipped = bytes.clone();
    flipped[at + FRAME_OVERHEAD + len / 2] ^= 0x20;
    std::fs::write(&segment, &flipped).expect("write");
    let (mut broker, h) = broker_on(dir.path());
    assert_cut_logged(&mut broker, &segment, at, after);
    assert_kept(&h, &alice, &session, &conv, 3, SIZE).await;
    println!("flipped bits in the last segment: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_an_earlier_segment_or_a_missing_segment_refuses_the_start() {
    // Records of about 3 KB in 64 KiB segments: 3 segments or more.
    const SIZE: usize = 3000;
    const N: usize = 50;
    let started = Instant::now();
    let (dir, alice, session, conv) = crashed_after_conversation(N, SIZE).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "segments: {segs:?}");

    // A flipped bit in a record of the first segment.
    let first = &segs[0];
    let pristine = std::fs::read(first).expect("read");
    let (at, len) = record_of(&pristine, &marker(2)).expect("message 2's record");
    let mut bytes = pristine.clone();
    bytes[at + FRAME_OVERHEAD + len / 2] ^= 0x01;
    std::fs::write(first, &bytes).expect("write");
    let (code, stderr) = refused_start(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!(
        "journal corrupt: {} at byte {at}: record checksum mismatch (not the last segment",
        first.display()
    );
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    assert_eq!(std::fs::read(first).expect("read"), bytes, "nothing cut");
    std::fs::write(first, &pristine).expect("restore");

    // A middle segment missing.
    let middle = &segs[1];
    let kept_aside = dir.path().join("kept-aside.seg");
    std::fs::rename(middle, &kept_aside).expect("move aside");
    let (code, stderr) = refused_start(dir.path());
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!(
        "journal segment missing in {}: records from Lsn {} are needed, but the next segment \
         starts at Lsn {}",
        journal_dir(dir.path()).display(),
        first_lsn(middle),
        first_lsn(&segs[2])
    );
    assert!(stderr.contains(&expected), "{expected:?} not in {stderr}");
    assert_eq!(
        segments(dir.path()).len(),
        segs.len() - 1,
        "nothing removed"
    );
    std::fs::rename(&kept_aside, middle).expect("put back");

    // The refusals changed nothing: with the files back, every message is.
    let (_broker, h) = broker_on(dir.path());
    assert_kept(&h, &alice, &session, &conv, N, SIZE).await;
    println!(
        "earlier segment damaged, segment missing: {:?}",
        started.elapsed()
    );
}

/// The disk is full from now on: no file of the broker may grow past the
/// size of the journal's newest segment.
fn fill_the_disk(dir: &Path, broker: &std::process::Child) {
    let segment = segments(dir).pop().expect("a segment");
    let size = std::fs::metadata(&segment).expect("segment").len();
    file_size_limit(broker, &size.to_string());
}

/// `POST /v1/webchat/sessions` for `name` on a task of its own: with the
/// disk full its answer waits for the journal.
fn open_session_in_background(h: &Harness, name: &str) -> tokio::task::JoinHandle<Resp> {
    let h = Harness::external(&h.base, ADMIN);
    let body = serde_json::json!({ "name": name });
    tokio::spawn(async move {
        h.request(
            reqwest::Method::POST,
            "/v1/webchat/sessions",
            None,
            Some(&body),
        )
        .await
    })
}

/// Set the running broker's file size limit (soft; the hard one stays).
fn file_size_limit(broker: &std::process::Child, limit: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(broker.id().to_string())
        .arg(format!("--fsize={limit}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --fsize={limit}:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_failing_are_refused_with_unavailable_and_the_broker_recovers_by_itself() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut broker, h) = broker_on(dir.path());
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (session, mut ws, _) = h.customer_with_message("Ann", "hello").await;
    let (_, assigned) = desk.take_offer().await;
    let conv = s(&assigned["task"]["conversation_id"]);
    settle(dir.path());

    // The disk is full: no file may grow past its size (the journal's
    // writes fail with EFBIG, the broker ignoring SIGXFSZ).
    fill_the_disk(dir.path(), &broker.child);

    // Taken before the failure shows: a new session's record. Its request
    // waits, unanswered, for the disk.
    let waiting = open_session_in_background(&h, "Carl");
    broker.wait_for(Stream::Err, "the write failure's log line", |l| {
        l.contains("journal write failed; appends refused until it works again")
            && l.contains("File too large")
    });
    wait_health(&h, 503).await;
    let health = h.get("/healthz", None).await;
    assert_eq!((health.status, health.error_code()), (503, "unavailable"));
    assert!(health.text.contains("File too large"), "{}", health.text);
    // Refused while it fails: the customer, the agent, an HTTP request.
    ws.send(serde_json::json!({"type": "message", "text": "refused", "client_msg_id": "refused", "ref": "refused"}))
        .await;
    let error = ws.expect_error("refused", "unavailable").await;
    assert!(
        s(&error["message"]).contains("journal write failed"),
        "{error}"
    );
    let error = desk
        .call_err(
            serde_json::json!({"type": "send", "conversation_id": conv, "text": "no", "client_msg_id": "no"}),
            "unavailable",
        )
        .await;
    assert!(
        s(&error["message"]).contains("journal write failed"),
        "{error}"
    );
    let resp = h
        .request(
            reqwest::Method::POST,
            "/v1/webchat/sessions",
            None,
            Some(&serde_json::json!({"name": "Bob"})),
        )
        .await;
    assert_eq!(
        (resp.status, resp.error_code()),
        (503, "unavailable"),
        "{}",
        resp.text
    );
    assert!(
        !waiting.is_finished(),
        "a request answered before its record was written"
    );

    // Space returns: the waiting request is answered, new messages are
    // taken; nothing refused was stored.
    file_size_limit(&broker.child, "unlimited");
    broker.wait_for(Stream::Err, "the recovery's log line", |l| {
        l.contains("journal writes work again")
    });
    wait_health(&h, 200).await;
    let carl = waiting.await.expect("the waiting request");
    assert_eq!(carl.status, 201, "{}", carl.text);
    let ack = ws.say_with_id("after", "after").await;
    assert_eq!(ack["seq"], 2);
    desk.recv_message_text("after").await;
    desk.agent_send(&conv, "welcome back", "r1").await;
    kill_9(broker);

    let (_broker, h) = broker_on(dir.path());
    let messages = h.messages(&conv).await;
    assert_eq!(
        texts(&messages["messages"]),
        ["hello", "after", "welcome back"]
    );
    assert_gap_free(&messages["messages"]);
    let (_ws, history) = h.connect_customer(&session).await;
    assert_eq!(seqs(&history["messages"]), [1, 2, 3]);
    // The session whose creation waited for the disk is kept: its token
    // connects.
    let carl = Session {
        id: s(&carl.body["session_id"]),
        token: s(&carl.body["token"]),
        name: "Carl".into(),
    };
    let (mut carl_ws, _) = h.connect_customer(&carl).await;
    carl_ws.say("hello from Carl").await;
    println!("failing writes: {:?}", started.elapsed());
}

/// The broker with stdout and stderr written to files in `logs` (as under
/// a service manager writing to the same disk); killed when dropped.
struct LoggingToFiles {
    child: std::process::Child,
    stderr: PathBuf,
}

impl Drop for LoggingToFiles {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker_logging_to_files(dir: &Path, logs: &Path) -> (LoggingToFiles, Harness) {
    let stdout = logs.join("stdout.log");
    let stderr = logs.join("stderr.log");
    let child = command(dir)
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn");
    let broker = LoggingToFiles { child, stderr };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        if let Some(line) = out
            .lines()
            .find(|l| l.starts_with("api:") && out.contains('\n'))
        {
            let base = line["api:".len()..]
                .trim()
                .trim_end_matches("/v1")
                .to_owned();
            return (broker, Harness::external(&base, ADMIN));
        }
        assert!(Instant::now() < deadline, "no api line in {out:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `/healthz` until it answers `status`.
async fn wait_health(h: &Harness, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if h.get("/healthz", None).await.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_that_also_holds_the_log_file_is_survived() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("log dir");
    let (broker, h) = broker_logging_to_files(dir.path(), logs.path());
    h.create_session("Ann", None).await;
    settle(dir.path());
    fill_the_disk(dir.path(), &broker.child);

    // The first change waits; the journal's error cannot be logged (the
    // log file is past the limit too), and the broker goes on.
    let waiting = open_session_in_background(&h, "Bob");
    wait_health(&h, 503).await;
    let refused = h
        .request(
            reqwest::Method::POST,
            "/v1/webchat/sessions",
            None,
            Some(&serde_json::json!({"name": "Carl"})),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text);

    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(broker.child.id().to_string())
        .arg("--fsize=unlimited:")
        .status()
        .expect("run prlimit");
    assert!(status.success());
    wait_health(&h, 200).await;
    let bob = waiting.await.expect("the waiting request");
    assert_eq!(bob.status, 201, "{}", bob.text);
    h.create_session("Dan", None).await;
    let log = std::fs::read_to_string(&broker.stderr).expect("log");
    assert!(log.contains("journal writes work again"), "{log}");
    println!("full disk holding the log: {:?}", started.elapsed());
}

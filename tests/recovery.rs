//! Restarting on the same data dir brings the broker back as it was: the
//! agent's token, its assigned conversation with the whole history, the
//! customer's session and `seq` numbering, and the task still waiting in the
//! queue, each exactly once. Real server, real sockets, stopped and started
//! again in the test.

mod common;
mod providers;

use common::*;

fn durable_config(dir: &std::path::Path) -> switchboard::config::Config {
    let mut cfg = test_config();
    cfg.data_dir = Some(dir.to_owned());
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_dir_resumes_every_conversation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = durable_config(dir.path());

    // Before: Ann is being served by Alice, Bob waits (Alice is full).
    let h = start_with(cfg.clone());
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (ann, mut ann_ws, _) = h.customer_with_message("Ann", "hello").await;
    let (_, assigned) = desk.take_offer().await;
    let ann_conv = s(&assigned["task"]["conversation_id"]);
    let ann_task = s(&assigned["task"]["id"]);
    desk.agent_send(&ann_conv, "hi Ann", "r1").await;
    ann_ws.recv_message_text("hi Ann").await;
    let (bob, _bob_ws, _) = h.customer_with_message("Bob", "anyone?").await;
    h.wait_conversation(&ann_conv, "two messages", |c| c["message_count"] == 2)
        .await;
    drop((desk, ann_ws, _bob_ws));
    drop(h);

    // After: the same data dir.
    let h = start_with(cfg);
    let (mut desk, hello) = h.connect_agent(&alice).await;
    let tasks = hello["tasks"].as_array().expect("hello tasks");
    assert_eq!(tasks.len(), 1, "alice's tasks after the restart: {hello}");
    assert_eq!(tasks[0]["id"], ann_task.as_str());
    assert_eq!(tasks[0]["state"], "assigned");

    let (mut ann_ws, history) = h.connect_customer(&ann).await;
    assert_eq!(
        texts(&history["messages"]),
        ["hello", "hi Ann"],
        "{history}"
    );
    assert_eq!(seqs(&history["messages"]), [1, 2]);

    // The conversation goes on where it was: seq 3, to the same agent.
    let ack = ann_ws.say("still there?").await;
    assert_eq!(ack["seq"], 3, "{ack}");
    let m = desk.recv_message_text("still there?").await;
    assert_eq!(m["message"]["seq"], 3);

    // Bob's task waited through the restart and is offered once Alice is free.
    desk.set_activity("available").await;
    desk.end(&ann_conv).await;
    desk.complete(&ann_task, "resolved", "").await;
    let offer = desk.offer().await;
    assert_eq!(offer["task"]["customer"]["name"], "Bob", "{offer}");
    let (_bob_ws, bob_history) = h.connect_customer(&bob).await;
    assert_eq!(texts(&bob_history["messages"]), ["anyone?"]);

    let messages = h.messages(&ann_conv).await;
    assert_gap_free(&messages["messages"]);
    assert_eq!(
        texts(&messages["messages"]),
        ["hello", "hi Ann", "still there?"],
        "{messages}"
    );
}

/// An SMS thread survives too: the customer's next text joins the same
/// conversation, a webhook id seen before the restart is still a duplicate,
/// and the agent's reply still goes out through the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_sms_threads_and_their_dedupe() {
    use providers::mock::Api;
    use providers::*;

    let dir = tempfile::tempdir().expect("temp dir");
    let thread = SmsThread::start(dir.path(), "where is my order?").await;
    let (env, alice, conv) = thread.restart(|_| {});
    let (mut desk, hello) = env.h.connect_agent(&alice).await;
    assert_eq!(
        hello["tasks"][0]["conversation_id"],
        conv.as_str(),
        "{hello}"
    );
    // The same webhook again (the provider retrying): still a duplicate.
    let r = env
        .sms_inbound(&sms_params("SM0001", DANA, "where is my order?"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A new text joins the open conversation.
    let r = env
        .sms_inbound(&sms_params("SM0002", DANA, "any news?"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = desk.recv_message_text("any news?").await;
    assert_eq!(m["message"]["conversation_id"], conv.as_str());
    assert_eq!(m["message"]["seq"], 2, "the duplicate was not stored: {m}");
    send_ok(&mut desk, &conv, "Shipped today.", &[]).await;
    let sends = env.mock.wait_sends(Api::Twilio, 1).await;
    assert_eq!(
        sends[0].form_value("Body").as_deref(),
        Some("Shipped today.")
    );
    assert_eq!(sends[0].form_value("To").as_deref(), Some(DANA));
}

/// The customer of the SMS restart tests.
const DANA: &str = "+15551230000";

/// An SMS conversation before a restart: the broker with the mock provider
/// on a data dir, `alice` online with the offer of Dana's first text
/// (`SM0001`) taken.
struct SmsThread {
    env: providers::Env,
    cfg: switchboard::config::Config,
    alice: Agent,
    desk: Ws,
    conv: String,
}

impl SmsThread {
    async fn start(dir: &std::path::Path, text: &str) -> SmsThread {
        let mock = providers::mock::Mock::start();
        let mut cfg = providers::config(&mock);
        cfg.data_dir = Some(dir.to_owned());
        let env = providers::Env {
            h: start_with(cfg.clone()),
            mock,
        };
        let (alice, mut desk) = env.agent("alice").await;
        let r = env
            .sms_inbound(&providers::sms_params("SM0001", DANA, text))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let (offer, _) = desk.take_offer().await;
        let conv = s(&offer["task"]["conversation_id"]);
        SmsThread {
            env,
            cfg,
            alice,
            desk,
            conv,
        }
    }

    /// Stop the broker (the desk first) and start it again on the same data
    /// dir and mock provider, `while_down` done to the provider in between.
    /// Gives the new broker, the agent and the conversation.
    fn restart(
        self,
        while_down: impl FnOnce(&providers::mock::Mock),
    ) -> (providers::Env, Agent, String) {
        let SmsThread {
            env,
            cfg,
            alice,
            desk,
            conv,
        } = self;
        drop(desk);
        let providers::Env { h, mock } = env;
        drop(h);
        while_down(&mock);
        let env = providers::Env {
            h: start_with(cfg),
            mock,
        };
        (env, alice, conv)
    }
}

/// Files come back with the conversations that carry them: the customer's
/// upload, sent in a message, downloads byte for byte after the restart, by
/// the agent and by the customer; a file nobody sent is still the
/// uploader's to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_files_sent_and_unsent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = durable_config(dir.path());
    let h = start_with(cfg.clone());
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (ann, mut ann_ws, _) = h.customer_with_message("Ann", "hello").await;
    desk.take_offer().await;
    let photo: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let upload = |name: &'static str, body: Vec<u8>| {
        let h = &h;
        let token = ann.token.clone();
        async move {
            let r = h
                .request_raw(
                    reqwest::Method::POST,
                    &format!("/v1/attachments?filename={name}"),
                    Some(&token),
                    "image/png",
                    body,
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
            s(&r.body["id"])
        }
    };
    let sent = upload("photo.png", photo.clone()).await;
    let unsent = upload("later.png", vec![7u8; 100]).await;
    ann_ws
        .send(serde_json::json!({"type": "message", "text": "see", "attachments": [sent], "client_msg_id": "f1"}))
        .await;
    ann_ws.recv_type("ack").await;
    desk.recv_message_text("see").await;
    drop((desk, ann_ws));
    drop(h);

    let h = start_with(cfg);
    let fetch = |token: String, id: String| {
        let h = &h;
        async move {
            let resp = h
                .http
                .get(h.url(&format!("/v1/attachments/{id}")))
                .bearer_auth(token)
                .send()
                .await
                .expect("download");
            (
                resp.status().as_u16(),
                resp.bytes().await.expect("body").to_vec(),
            )
        }
    };
    let (status, bytes) = fetch(alice.token.clone(), sent.clone()).await;
    assert_eq!(status, 200);
    assert!(bytes == photo, "the file came back changed");
    let (status, bytes) = fetch(ann.token.clone(), sent.clone()).await;
    assert_eq!((status, bytes.len()), (200, photo.len()));
    let (mut ann_ws, history) = h.connect_customer(&ann).await;
    assert_eq!(
        history["messages"][1]["attachments"][0]["id"],
        sent.as_str(),
        "{history}"
    );
    // The unsent upload is still Ann's to send.
    ann_ws
        .send(serde_json::json!({"type": "message", "text": "and this", "attachments": [unsent], "client_msg_id": "f2"}))
        .await;
    let ack = ann_ws.recv_type("ack").await;
    assert_eq!(ack["seq"], 3, "{ack}");
}

/// A reply whose provider send had no answer when the broker stopped goes
/// out again after the restart, and its status reaches the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_send_in_flight_at_the_stop_is_sent_after_the_restart() {
    use providers::mock::{Api, Failure};
    use providers::*;

    let dir = tempfile::tempdir().expect("temp dir");
    let mut thread = SmsThread::start(dir.path(), "hello?").await;
    // Twilio hangs: the send is in flight when the broker stops.
    thread.env.mock.fail(
        Api::Twilio,
        100,
        Failure::Slow(std::time::Duration::from_secs(30)),
    );
    let mid = send_ok(&mut thread.desk, &thread.conv, "On its way.", &[]).await;
    thread.env.mock.wait_sends(Api::Twilio, 1).await;
    let (env, alice, conv) = thread.restart(|mock| mock.heal(Api::Twilio));
    let sends = env.mock.wait_sends(Api::Twilio, 2).await;
    assert_eq!(sends[1].form_value("Body").as_deref(), Some("On its way."));
    assert_eq!(sends[1].form_value("To").as_deref(), Some(DANA));
    // The provider's answer is recorded on the message, which the desk
    // gets back with the task (its status may come before the desk does).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let messages = env.h.messages(&conv).await;
        let reply = messages["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == mid.as_str()).cloned())
            .expect("the reply is stored");
        if reply["status"] == "sent" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {reply}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_desk, hello) = env.h.connect_agent(&alice).await;
    assert_eq!(
        hello["tasks"][0]["conversation_id"],
        conv.as_str(),
        "{hello}"
    );
}

/// Canned responses saved, changed and deleted over the API come back as
/// they were left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_canned_responses_saved_over_the_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = durable_config(dir.path());
    let h = start_with(cfg.clone());
    let admin = Some(h.admin.clone());
    for (id, title) in [("greet", "Greeting"), ("bye", "Goodbye")] {
        let body = serde_json::json!({"id": id, "title": title, "text": "Hi {{customer.name}}"});
        let r = h
            .request(
                reqwest::Method::POST,
                "/v1/canned-responses",
                admin.as_deref(),
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let patch = serde_json::json!({"title": "Hello"});
    let r = h
        .request(
            reqwest::Method::PATCH,
            "/v1/canned-responses/greet",
            admin.as_deref(),
            Some(&patch),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = h
        .request(
            reqwest::Method::DELETE,
            "/v1/canned-responses/bye",
            admin.as_deref(),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    drop(h);

    let h = start_with(cfg);
    let list = h.admin_get_ok("/v1/canned-responses").await;
    let items = list
        .as_array()
        .or_else(|| list["canned_responses"].as_array())
        .cloned()
        .unwrap_or_default();
    let titles: Vec<(String, String)> = items
        .iter()
        .map(|r| (s(&r["id"]), s(&r["title"])))
        .collect();
    assert_eq!(titles, [("greet".to_owned(), "Hello".to_owned())], "{list}");
}

/// Segment and snapshot files of a journal directory, by name.
fn journal_files(data: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in std::fs::read_dir(data.join("journal")).expect("journal dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("wal-") && name.ends_with(".seg") {
            segments.push(name);
        } else if name.starts_with("snap-") && name.ends_with(".snap") {
            snapshots.push(name);
        }
    }
    segments.sort();
    snapshots.sort();
    (segments, snapshots)
}

/// With snapshots every 50 records and 64 KiB segments, a busy broker
/// writes snapshots and deletes the segments they cover; a restart reads
/// the newest snapshot and replays the records after it, and everything is
/// back as a restart from the whole journal would give it: the agent (with
/// its rotated token) and its assigned task, the customers' sessions, the
/// history with gap-free `seq`, the waiting task, a sent file. A
/// conversation that left memory (history retention) before the snapshot
/// stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_snapshot_gives_back_what_the_whole_journal_would() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = durable_config(dir.path());
    cfg.snapshot_every_records = 50;
    cfg.journal_segment_bytes = 64 * 1024;
    cfg.history_retention = std::time::Duration::from_millis(500);
    let h = start_with(cfg.clone());
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;

    // Carl's conversation ends, completes and leaves memory.
    let (_carl, mut carl_ws, _) = h.customer_with_message("Carl", "quick one").await;
    let (offer, _) = desk.take_offer().await;
    let carl_conv = s(&offer["task"]["conversation_id"]);
    let carl_task = s(&offer["task"]["id"]);
    desk.agent_send(&carl_conv, "done", "c1").await;
    carl_ws.recv_message_text("done").await;
    desk.end(&carl_conv).await;
    desk.complete(&carl_task, "resolved", "").await;
    let forgotten = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while h
        .get(&format!("/v1/conversations/{carl_conv}"), Some(&h.admin))
        .await
        .status
        != 404
    {
        assert!(
            std::time::Instant::now() < forgotten,
            "Carl's conversation never left memory"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Ann talks a lot (many records, several segments); Bob waits.
    let (ann, mut ann_ws, _) = h.customer_with_message("Ann", "hello").await;
    let (_, assigned) = desk.take_offer().await;
    let ann_conv = s(&assigned["task"]["conversation_id"]);
    let ann_task = s(&assigned["task"]["id"]);
    let padding = "x".repeat(600);
    let mut expected = vec!["hello".to_owned()];
    for i in 0..150 {
        let text = format!("message {i} {padding}");
        ann_ws.say(&text).await;
        expected.push(text);
    }
    let photo: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let r = h
        .request_raw(
            reqwest::Method::POST,
            "/v1/attachments?filename=photo.png",
            Some(&ann.token),
            "image/png",
            photo.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let file = s(&r.body["id"]);
    ann_ws
        .send(serde_json::json!({"type": "message", "text": "see", "attachments": [file], "client_msg_id": "f1"}))
        .await;
    ann_ws.recv_type("ack").await;
    expected.push("see".into());
    let (bob, _bob_ws, _) = h.customer_with_message("Bob", "anyone?").await;
    let r = h
        .request(
            reqwest::Method::POST,
            "/v1/agents/alice/token",
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let alice = Agent {
        token: s(&r.body["token"]),
        ..alice
    };
    drop(desk);

    // Snapshots are written and the first segments deleted (Ann goes on
    // talking until a snapshot past the first segment is the older one kept).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for i in 0.. {
        let (segments, snapshots) = journal_files(dir.path());
        if snapshots.len() == 2
            && segments.first().map(String::as_str) != Some("wal-00000000000000000001.seg")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot covering the first segment: {segments:?} {snapshots:?}"
        );
        let text = format!("waiting {i}");
        ann_ws.say(&text).await;
        expected.push(text);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // More after the snapshot: replayed from the journal on top of it.
    ann_ws.say("after the snapshot").await;
    expected.push("after the snapshot".into());
    h.wait_conversation(&ann_conv, "every message", |c| {
        c["message_count"] == expected.len()
    })
    .await;
    drop((ann_ws, _bob_ws));
    drop(h);
    let (segments, snapshots) = journal_files(dir.path());
    assert!(
        !segments.contains(&"wal-00000000000000000001.seg".to_owned()),
        "{segments:?}"
    );
    assert_eq!(snapshots.len(), 2, "the two newest are kept: {snapshots:?}");

    let cfg_again = cfg.clone();
    let h = start_with(cfg);
    let (mut desk, hello) = h.connect_agent(&alice).await;
    let tasks = hello["tasks"].as_array().expect("hello tasks");
    assert_eq!(tasks.len(), 1, "alice's tasks after the restart: {hello}");
    assert_eq!(tasks[0]["id"], ann_task.as_str());
    assert_eq!(tasks[0]["state"], "assigned");

    let (mut ann_ws, history) = h.connect_customer(&ann).await;
    let messages = h.messages(&ann_conv).await;
    assert_gap_free(&messages["messages"]);
    assert_eq!(texts(&messages["messages"]), expected);
    assert!(
        !history["messages"].as_array().expect("history").is_empty(),
        "{history}"
    );
    let ack = ann_ws.say("still there?").await;
    assert_eq!(ack["seq"], expected.len() as u64 + 1, "{ack}");
    desk.recv_message_text("still there?").await;

    let listed = h.admin_get_ok("/v1/tasks").await;
    let bob_task = listed
        .as_array()
        .and_then(|t| t.iter().find(|t| t["customer"]["name"] == "Bob").cloned())
        .unwrap_or_else(|| panic!("Bob's task in {listed}"));
    assert_eq!(bob_task["state"], "queued", "{bob_task}");
    let ann_listed = listed
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == ann_task.as_str()).cloned())
        .unwrap_or_else(|| panic!("Ann's task in {listed}"));
    assert_eq!(
        ann_listed["state"], "assigned",
        "the router agrees: {ann_listed}"
    );
    assert_eq!(ann_listed["agent_id"], "alice", "{ann_listed}");
    let (_bob_ws, bob_history) = h.connect_customer(&bob).await;
    assert_eq!(texts(&bob_history["messages"]), ["anyone?"]);
    h.wait_conversation(&ann_conv, "the new message", |c| {
        c["message_count"] == expected.len() + 1
    })
    .await;

    let resp = h
        .http
        .get(h.url(&format!("/v1/attachments/{file}")))
        .bearer_auth(&ann.token)
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.bytes().await.expect("body").to_vec() == photo,
        "the file came back changed"
    );

    let r = h
        .get(&format!("/v1/conversations/{carl_conv}"), Some(&h.admin))
        .await;
    assert_eq!(
        r.status, 404,
        "a forgotten conversation stays gone: {}",
        r.text
    );
    drop((desk, ann_ws, _bob_ws));
    drop(h);

    // The newest snapshot damaged: the start falls back to the older one and
    // replays more, with the same result.
    let (_, snapshots) = journal_files(dir.path());
    let newest = dir
        .path()
        .join("journal")
        .join(snapshots.last().expect("a snapshot"));
    let mut bytes = std::fs::read(&newest).expect("read snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).expect("damage snapshot");
    let h = start_with(cfg_again);
    expected.push("still there?".into());
    let messages = h.messages(&ann_conv).await;
    assert_gap_free(&messages["messages"]);
    assert_eq!(texts(&messages["messages"]), expected);
    let (_desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], ann_task.as_str(), "{hello}");
}

/// A queue with inactivity settings, created over the API (so journaled).
async fn quiet_queue(h: &Harness, warn_after: &str, close_after: &str) {
    let r = h
        .request(
            reqwest::Method::POST,
            "/v1/queues",
            Some(&h.admin),
            Some(&serde_json::json!({"id": "quiet", "inactivity":
                {"warn_after": warn_after, "warning": "Are you still there?", "close_after": close_after}})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// An assigned task's inactivity timers resume after a restart: the
/// conversation still ends for inactivity, and a warning given before the
/// stop is not given again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_timers_resume_after_a_restart_without_a_second_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = durable_config(dir.path());
    let h = start_with(cfg.clone());
    quiet_queue(&h, "300ms", "1500ms").await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (dana, mut dana_ws, conv) = customer_in(&h, "Dana", "quiet").await;
    let (offer, _) = desk.take_offer().await;
    let task = s(&offer["task"]["id"]);
    dana_ws.recv_message_text("Are you still there?").await;
    drop((desk, dana_ws));
    drop(h);

    let h = start_with(cfg);
    let (mut desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    let (mut dana_ws, _) = h.connect_customer(&dana).await;
    let ended = dana_ws.recv_type("conversation.ended").await;
    assert_eq!(ended["reason"], "inactivity", "{ended}");
    let ended = desk.recv_type("conversation.ended").await;
    assert_eq!(ended["reason"], "inactivity", "{ended}");
    assert_eq!(ended["task_id"], task.as_str());
    let messages = h.messages(&conv).await;
    assert_eq!(
        texts(&messages["messages"]),
        ["hello from Dana", "Are you still there?"],
        "one warning only: {messages}"
    );
    desk.complete(&task, "resolved", "").await;
}

/// The inactivity clock counts from before the stop (the customer's last
/// message or the assignment), not from the restart: a customer silent past
/// `close_after` while the broker was down has the conversation ended as
/// soon as it is back (with no warning right before the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_silent_past_close_after_while_the_broker_was_down_is_closed_at_the_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = durable_config(dir.path());
    let h = start_with(cfg.clone());
    quiet_queue(&h, "1s", "2s").await;
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (_dana, dana_ws, conv) = customer_in(&h, "Dana", "quiet").await;
    desk.take_offer().await;
    let assigned = std::time::Instant::now();
    drop((desk, dana_ws));
    drop(h);
    // Down past `close_after`, counted from the assignment.
    tokio::time::sleep(std::time::Duration::from_millis(2200).saturating_sub(assigned.elapsed()))
        .await;

    let h = start_with(cfg);
    let restarted = std::time::Instant::now();
    let v = h
        .wait_conversation(&conv, "the end for inactivity", |c| {
            c["task"]["state"] == "wrapping"
        })
        .await;
    // Counted from the restart it would take the whole 2 s.
    assert!(
        restarted.elapsed() < std::time::Duration::from_millis(1500),
        "ended {:?} after the restart: {v}",
        restarted.elapsed()
    );
    let messages = h.messages(&conv).await;
    assert_eq!(
        texts(&messages["messages"]),
        ["hello from Dana"],
        "{messages}"
    );
}

/// The router's offers are journaled: after a restart an assigned task is
/// held by its agent in the router too, not waiting in its queue to be
/// offered again to someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_task_is_not_offered_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = durable_config(dir.path());
    let h = start_with(cfg.clone());
    let alice = h.create_agent("alice", 1, &[]).await;
    let bob = h.create_agent("bob", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (_ann, ann_ws, _) = h.customer_with_message("Ann", "hello").await;
    let (_, assigned) = desk.take_offer().await;
    let task = s(&assigned["task"]["id"]);
    drop((desk, ann_ws));
    drop(h);

    let h = start_with(cfg);
    let stats = h.admin_get_ok("/v1/stats").await;
    assert_eq!(stats["queue"]["length"], 0, "{stats}");
    assert_eq!(stats["tasks"]["assigned"], 1, "{stats}");
    let mut bob_desk = h.agent_online(&bob).await;
    bob_desk
        .expect_none(
            "an offer of alice's task",
            std::time::Duration::from_millis(500),
            |v| v["type"] == "task.offered",
        )
        .await;
    let (_desk, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["tasks"][0]["id"], task.as_str(), "{hello}");
    assert_eq!(hello["tasks"][0]["state"], "assigned", "{hello}");
}

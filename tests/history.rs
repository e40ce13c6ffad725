//! Long conversations, over real sockets: the history cap (what the sender,
//! the agent and the customer see at it), bounded replays on (re)connect, and
//! paging with `before_seq` / `after_seq` that neither skips nor repeats.
mod common;

use common::*;
use serde_json::{json, Value};
use switchboard::Config;

/// How much the process may grow while a conversation is filled and
/// replayed, in KiB. The tests of this file run side by side in one process;
/// what they store is well under 1 MiB, and a replay that copied the whole
/// history per reconnect would still be small here, so the bound is about
/// leaks and runaway buffers: 64 MiB.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// The customer's messages page, read with the customer's own token.
async fn page(h: &Harness, token: &str, conversation: &str, query: &str) -> Value {
    let r = h
        .get(
            &format!("/v1/conversations/{conversation}/messages?{query}"),
            Some(token),
        )
        .await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.body
}

/// `seq`s that follow each other with no gap.
fn assert_consecutive(seqs: &[u64]) {
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// Sends `text` as the customer; returns the frame answering it (`ack` or
/// `error`).
async fn customer_says(ws: &mut Ws, text: &str) -> Value {
    let r = next_ref("say");
    ws.send(json!({"type": "message", "text": text, "client_msg_id": r, "ref": r}))
        .await;
    ws.recv_where("the answer", |v| {
        (v["type"] == "ack" || v["type"] == "error") && v["ref"] == r.as_str()
    })
    .await
}

#[tokio::test]
async fn at_the_message_cap_the_conversation_refuses_more_and_says_so_to_both_sides() {
    let h = start_with(Config {
        max_history_messages: 4,
        ..test_config()
    });
    let vitals = Vitals::before("a conversation at its message cap", RSS_BOUND_KIB);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (session, mut chat, ack) = h.customer_with_message("Dana", "one").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _assigned) = desk.take_offer().await;
    assert_eq!(offer["task"]["conversation_id"], conv.as_str());

    chat.say("two").await;
    desk.agent_send(&conv, "three", "a1").await;
    chat.say("four").await;
    // The fifth message would pass the cap: refused, and the note goes out.
    let refused = customer_says(&mut chat, "five").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "history_full", "{refused}");
    let note = desk.recv_message_from("system").await;
    let text = s(&note["message"]["text"]);
    assert!(
        text.contains("reached its size limit (4 messages or 4.0 MiB of text)")
            && text.contains("next message starts a new"),
        "{text}"
    );
    assert_eq!(note["message"]["seq"], 5);
    let seen = chat.recv_message_from("system").await;
    assert_eq!(seen["message"]["text"], text.as_str());

    // The agent is refused too; the note is not repeated.
    let r = desk
        .call_err(
            json!({"type": "send", "conversation_id": conv, "text": "six"}),
            "history_full",
        )
        .await;
    assert!(s(&r["message"]).contains("is full"), "{r}");
    let again = customer_says(&mut chat, "six").await;
    assert_eq!(again["code"], "history_full");
    let all = h.messages(&conv).await;
    assert_eq!(seqs(&all["messages"]), [1, 2, 3, 4, 5]);
    assert_eq!(all["messages"][4]["from"], "system");
    vitals.check(&h).await;
    vitals.assert_memory();

    // The agent ends it; the customer's next message opens a new one.
    desk.end(&conv).await;
    let ack = chat.say("hello again").await;
    assert_ne!(ack["conversation_id"], conv.as_str());
    let next = h.conversation(&s(&ack["conversation_id"])).await;
    assert_eq!(next["previous_conversation_id"], conv.as_str());
    let _ = session;
}

#[tokio::test]
async fn at_the_byte_cap_the_conversation_refuses_more() {
    // 100 characters a message; 4 × 100 + 1,024 bytes is the smallest cap
    // allowed with that, so the fifteenth 100-byte message does not fit.
    let h = start_with(Config {
        max_text: 100,
        max_history_bytes: 1424,
        ..test_config()
    });
    let vitals = Vitals::before("a conversation at its byte cap", RSS_BOUND_KIB);
    // Dana's conversation has a desk, so the health check's own desk is not
    // offered it.
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (_session, mut chat, _ack) = h.customer_with_message("Dana", &"a".repeat(100)).await;
    desk.take_offer().await;
    let refused = probed(&h, "a conversation filling up", async {
        for i in 2..=14 {
            let ack = customer_says(&mut chat, &"b".repeat(100)).await;
            assert_eq!(ack["type"], "ack", "message {i}: {ack}");
        }
        customer_says(&mut chat, &"c".repeat(100)).await
    })
    .await;
    assert_eq!(refused["code"], "history_full", "{refused}");
    // One short message would still have fitted, but the cap, once reached,
    // holds: a full conversation takes nothing more.
    let refused = customer_says(&mut chat, "ok?").await;
    assert_eq!(refused["code"], "history_full", "{refused}");
    vitals.check(&h).await;
    vitals.assert_memory();
}

#[tokio::test]
async fn reconnect_after_many_messages_replays_a_bounded_tail_and_pages_back_the_rest() {
    const SENT: u64 = 60;
    let h = start_with(Config {
        history_replay: 20,
        history_frame_bytes: 16 * 1024,
        ..test_config()
    });
    let vitals = Vitals::before("many messages, then reconnects", RSS_BOUND_KIB);
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut desk = h.agent_online(&alice).await;
    let (session, mut chat, ack) = h.customer_with_message("Dana", "first").await;
    let conv = s(&ack["conversation_id"]);
    desk.take_offer().await;
    // 1,000-character messages: about 1.2 KB of JSON each, so 16 KiB holds
    // fewer than the 20 messages the count would allow.
    probed(&h, "many messages", async {
        for i in 2..=SENT {
            chat.say(&format!("{i:04} {}", "x".repeat(995))).await;
        }
    })
    .await;
    drop(chat);

    // The customer reconnects: one bounded `history` frame with the newest.
    let (mut chat, history) = probed(&h, "a reconnect replay", h.connect_customer(&session)).await;
    let frame_len = serde_json::to_string(&history).expect("json").len();
    let tail = seqs(&history["messages"]);
    assert!(!tail.is_empty() && tail.len() < 20, "{tail:?}");
    assert!(
        frame_len <= 16 * 1024 + 1300,
        "history frame of {frame_len} bytes"
    );
    assert_eq!(tail.last(), Some(&SENT), "the newest are replayed");
    assert_consecutive(&tail);
    assert_eq!(history["has_earlier"], true, "{}", history["has_earlier"]);

    // Page back with before_seq from the first replayed message, as a widget
    // scrolled to the top does, until nothing is earlier.
    let mut all: Vec<u64> = tail.clone();
    let mut before = tail[0];
    loop {
        let p = page(
            &h,
            &session.token,
            &conv,
            &format!("before_seq={before}&limit=7"),
        )
        .await;
        let got = seqs(&p["messages"]);
        assert!(got.len() <= 7);
        assert_eq!(got.last().map(|l| l + 1), Some(before), "adjacent: {got:?}");
        assert_consecutive(&got);
        all.splice(0..0, got.iter().copied());
        before = got[0];
        if p["has_more"] == false {
            break;
        }
    }
    assert_eq!(all, (1..=SENT).collect::<Vec<_>>(), "no gap, no overlap");

    // And forward with after_seq, the other way.
    let mut forward: Vec<u64> = Vec::new();
    let mut after = 0;
    loop {
        let p = page(
            &h,
            &session.token,
            &conv,
            &format!("after_seq={after}&limit=13"),
        )
        .await;
        let got = seqs(&p["messages"]);
        forward.extend(&got);
        after = *got.last().expect("a page");
        if p["has_more"] == false {
            break;
        }
    }
    assert_eq!(forward, (1..=SENT).collect::<Vec<_>>());

    // A window: after_seq and before_seq together give its newest messages.
    let p = page(
        &h,
        &session.token,
        &conv,
        "after_seq=10&before_seq=21&limit=4",
    )
    .await;
    assert_eq!(seqs(&p["messages"]), [17, 18, 19, 20]);
    assert_eq!(p["has_more"], true);

    // The agent's desk reconnects: `task.assigned` is bounded the same way.
    drop(desk);
    let (mut desk, _hello) = h.connect_agent(&alice).await;
    let assigned = desk.recv_type("task.assigned").await;
    let replay = seqs(&assigned["history"]);
    assert!(!replay.is_empty() && replay.len() < 20, "{replay:?}");
    assert_eq!(replay.last(), Some(&SENT));
    assert_eq!(assigned["history_has_earlier"], true);
    let p = h
        .get(
            &format!("/v1/conversations/{conv}/messages?before_seq={}", replay[0]),
            Some(&alice.token),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(
        seqs(&p.body["messages"]).last().map(|l| l + 1),
        Some(replay[0])
    );
    chat.say("still here").await;
    vitals.check(&h).await;
    vitals.assert_memory();
}

#[tokio::test]
async fn a_short_conversation_is_replayed_whole() {
    let h = start();
    let (session, mut chat, _ack) = h.customer_with_message("Dana", "one").await;
    chat.say("two").await;
    drop(chat);
    let (_chat, history) = h.connect_customer(&session).await;
    assert_eq!(seqs(&history["messages"]), [1, 2]);
    assert_eq!(history["has_earlier"], false);
}

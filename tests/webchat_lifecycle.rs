//! The whole life of a webchat conversation, seen from both sockets.
mod common;

use common::*;
use serde_json::{json, Value};

fn assert_message(v: &Value, conversation_id: &str, seq: u64, from: &str, text: &str) {
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["conversation_id"], conversation_id, "{v}");
    let m = &v["message"];
    assert_eq!(m["seq"], seq, "seq: {v}");
    assert_eq!(m["from"], from, "from: {v}");
    assert_eq!(m["text"], text, "text: {v}");
    assert_eq!(m["conversation_id"], conversation_id, "{v}");
    assert!(m["id"].is_string(), "message id: {v}");
    assert!(m["created_at"].is_string(), "created_at: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_conversation_story() {
    let h = start();
    let alice = h.create_agent("alice", 2, &[]).await;

    // Agent connects: hello, offline, no tasks; goes available.
    let (mut agent, hello) = h.connect_agent(&alice).await;
    assert_eq!(hello["activity"], "offline", "{hello}");
    assert_eq!(hello["tasks"], json!([]), "{hello}");
    assert_eq!(hello["agent"]["id"], "alice", "{hello}");
    agent.set_activity("available").await;

    // Customer: session, socket, empty history.
    let session = h.create_session("Dana", None).await;
    let (mut cust, history) = h.connect_customer(&session).await;
    assert_eq!(history["messages"], json!([]), "{history}");
    assert!(history["conversation_id"].is_null(), "{history}");

    // First customer message: ack with seq 1.
    let ack = cust.say_with_id("Hi, I need help", "cm-1").await;
    assert_eq!(ack["client_msg_id"], "cm-1");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert!(ack["message_id"].is_string(), "{ack}");
    let conv = s(&ack["conversation_id"]);

    // Offer.
    let offer = agent.offer().await;
    let task = &offer["task"];
    assert_eq!(task["conversation_id"], conv.as_str(), "{offer}");
    assert_eq!(task["channel"], "webchat", "{offer}");
    assert_eq!(task["customer"]["name"], "Dana", "{offer}");
    assert_eq!(task["preview"], "Hi, I need help", "{offer}");
    assert!(task["created_at"].is_string(), "{offer}");
    assert!(offer["expires_at"].is_string(), "{offer}");
    let task_id = s(&task["id"]);

    // Accept: task.assigned with the history so far.
    let assigned = agent.accept(&task_id).await;
    assert_eq!(assigned["task"]["conversation_id"], conv.as_str());
    assert_eq!(assigned["task"]["state"], "assigned", "{assigned}");
    assert_eq!(texts(&assigned["history"]), vec!["Hi, I need help"]);
    assert_gap_free(&assigned["history"]);
    assert_eq!(assigned["history"][0]["from"], "customer");
    assert_eq!(assigned["history"][0]["client_msg_id"], "cm-1");

    // The customer learns who joined.
    let joined = cust.recv_type("agent.joined").await;
    assert_eq!(joined["agent"]["name"], alice.name.as_str(), "{joined}");
    assert_eq!(joined["conversation_id"], conv.as_str(), "{joined}");

    // Agent replies: echo (with ref + client_msg_id) and delivery to the customer.
    let echo = agent.agent_send(&conv, "Hello Dana", "am-2").await;
    assert_message(&echo, &conv, 2, "agent", "Hello Dana");
    assert_eq!(echo["message"]["client_msg_id"], "am-2", "{echo}");
    assert_eq!(echo["message"]["agent_id"], "alice", "{echo}");
    let got = cust.recv_message_from("agent").await;
    assert_message(&got, &conv, 2, "agent", "Hello Dana");

    // Several more each way; seq is 1,2,3,... with no gaps on both sides.
    let script: [(&str, &str); 6] = [
        ("customer", "My order is late"),
        ("customer", "Order #1234"),
        ("agent", "Let me check"),
        ("agent", "It ships tomorrow"),
        ("customer", "Thanks!"),
        ("agent", "Anything else?"),
    ];
    let mut seq = 2;
    for (i, (who, text)) in script.iter().enumerate() {
        seq += 1;
        if *who == "customer" {
            let ack = cust.say_with_id(text, &format!("cm-x{i}")).await;
            assert_eq!(ack["seq"], seq, "ack: {ack}");
            assert_eq!(ack["conversation_id"], conv.as_str());
            let m = agent.recv_message_text(text).await;
            assert_message(&m, &conv, seq, "customer", text);
        } else {
            let echo = agent.agent_send(&conv, text, &format!("am-x{i}")).await;
            assert_message(&echo, &conv, seq, "agent", text);
            let m = cust.recv_message_text(text).await;
            assert_message(&m, &conv, seq, "agent", text);
        }
    }
    assert_eq!(seq, 8);

    // The agent saw every customer message exactly once, in order.
    // (Those we did not explicitly wait for are still pending.)
    agent
        .expect_none("duplicate customer message", QUIET, |v| {
            v["type"] == "message" && v["message"]["from"] == "customer"
        })
        .await;

    // Typing both ways.
    cust.send(json!({"type": "typing"})).await;
    let t = agent.recv_type("typing").await;
    assert_eq!(t["conversation_id"], conv.as_str(), "{t}");
    agent
        .send(json!({"type": "typing", "conversation_id": conv}))
        .await;
    let t = cust.recv_type("typing").await;
    assert_eq!(t["conversation_id"], conv.as_str(), "{t}");

    // History over HTTP: admin and the customer.
    let all = h.messages(&conv).await;
    assert_eq!(all["conversation_id"], conv.as_str());
    assert_eq!(all["has_more"], false, "{all}");
    assert_gap_free(&all["messages"]);
    assert_eq!(seqs(&all["messages"]).len(), 8);
    let r = h
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&session.token),
        )
        .await;
    assert_eq!(r.status, 200, "customer history: {}", r.text);
    assert_eq!(r.body["messages"], all["messages"]);
    let page = h
        .admin_get_ok(&format!(
            "/v1/conversations/{conv}/messages?after_seq=3&limit=2"
        ))
        .await;
    assert_eq!(seqs(&page["messages"]), vec![4, 5], "{page}");
    assert_eq!(page["has_more"], true, "{page}");
    let r = h
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(r.status, 200, "agent history: {}", r.text);

    // End: both sides hear it; task goes to wrapping.
    let ended = agent.end(&conv).await;
    assert_eq!(ended["conversation_id"], conv.as_str());
    assert_eq!(ended["task_id"], task_id.as_str(), "{ended}");
    let ce = cust.recv_type("conversation.ended").await;
    assert_eq!(ce["conversation_id"], conv.as_str(), "{ce}");
    let c = h.conversation(&conv).await;
    assert_eq!(c["state"], "ended", "{c}");
    assert_eq!(c["task"]["state"], "wrapping", "{c}");

    // Complete with disposition and notes.
    let done = agent
        .complete(&task_id, "resolved", "Shipping delay explained")
        .await;
    assert_eq!(done["task_id"], task_id.as_str(), "{done}");
    let c = h.conversation(&conv).await;
    assert_eq!(c["id"], conv.as_str());
    assert_eq!(c["channel"], "webchat");
    assert_eq!(c["state"], "ended");
    assert_eq!(c["customer"]["name"], "Dana");
    assert_eq!(c["agent_id"], "alice");
    assert_eq!(c["task"]["id"], task_id.as_str());
    assert_eq!(c["task"]["state"], "completed", "{c}");
    assert_eq!(c["disposition"], "resolved", "{c}");
    assert_eq!(c["notes"], "Shipping delay explained", "{c}");
    assert!(c["created_at"].is_string(), "{c}");
    assert!(c["ended_at"].is_string(), "{c}");
    assert!(c["previous_conversation_id"].is_null(), "{c}");
    // The assigned agent may read it too.
    let r = h
        .get(&format!("/v1/conversations/{conv}"), Some(&alice.token))
        .await;
    assert_eq!(r.status, 200, "agent GET conversation: {}", r.text);

    // The customer comes back: history of the ended conversation is intact.
    drop(cust);
    let (mut cust, history) = h.connect_customer(&session).await;
    assert_eq!(history["conversation_id"], conv.as_str(), "{history}");
    assert_eq!(
        history["messages"], all["messages"],
        "history after reconnect"
    );

    // Writing again starts a new, linked conversation.
    let ack = cust.say_with_id("One more thing", "cm-new").await;
    let conv2 = s(&ack["conversation_id"]);
    assert_ne!(conv2, conv, "a new conversation after the end");
    assert_eq!(ack["seq"], 1, "{ack}");
    let c2 = h.conversation(&conv2).await;
    assert_eq!(c2["previous_conversation_id"], conv.as_str(), "{c2}");
    assert_eq!(c2["state"], "open");
    let offer = agent.offer_for(&conv2).await;
    assert_eq!(offer["task"]["preview"], "One more thing");
    assert_ne!(offer["task"]["id"], task_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_leave_after_assignment_ends_conversation() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut agent = h.agent_online(&alice).await;
    let (_s, mut cust, ack) = h.customer_with_message("Eve", "hello").await;
    let conv = s(&ack["conversation_id"]);
    let (offer, _assigned) = agent.take_offer().await;
    let task_id = s(&offer["task"]["id"]);
    cust.send(json!({"type": "leave"})).await;
    let ended = agent.recv_type("conversation.ended").await;
    assert_eq!(ended["conversation_id"], conv.as_str(), "{ended}");
    assert_eq!(ended["task_id"], task_id.as_str(), "{ended}");
    let c = h
        .wait_conversation(&conv, "task wrapping", |c| c["task"]["state"] == "wrapping")
        .await;
    assert_eq!(c["state"], "ended", "{c}");
    agent.complete(&task_id, "resolved", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_outbound_to_webchat_session() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let (mut agent, _hello) = h.connect_agent(&alice).await;
    agent.set_activity("available").await;
    let session = h.create_session("Frank", None).await;
    let (mut cust, _history) = h.connect_customer(&session).await;

    let assigned = agent
        .call(json!({"type": "outbound", "channel": "webchat", "to": session.id, "text": "hi"}))
        .await;
    assert_eq!(assigned["type"], "task.assigned", "{assigned}");
    assert_eq!(assigned["task"]["channel"], "webchat", "{assigned}");
    let conv = s(&assigned["task"]["conversation_id"]);

    let m = cust.recv_message_from("agent").await;
    assert_eq!(m["conversation_id"], conv.as_str(), "{m}");
    assert_eq!(m["message"]["text"], "hi", "{m}");
    assert_eq!(m["message"]["seq"], 1, "{m}");

    let c = h.conversation(&conv).await;
    assert_eq!(c["agent_id"], "alice", "{c}");
    assert_eq!(c["state"], "open", "{c}");
    assert_eq!(c["task"]["state"], "assigned", "{c}");

    // The customer's answer goes to the same conversation and to the agent.
    let ack = cust.say("hello back").await;
    assert_eq!(ack["conversation_id"], conv.as_str(), "{ack}");
    assert_eq!(ack["seq"], 2, "{ack}");
    let m = agent.recv_message_text("hello back").await;
    assert_eq!(m["conversation_id"], conv.as_str(), "{m}");

    // Capacity 1 is used up by the outbound conversation.
    let s2 = h.create_session("Gina", None).await;
    agent
        .call_err(
            json!({"type": "outbound", "channel": "webchat", "to": s2.id, "text": "hi"}),
            "capacity_exceeded",
        )
        .await;
    // And so no inbound offer arrives either.
    let (_s3, _c3, _ack3) = h.customer_with_message("Hal", "anyone?").await;
    agent
        .expect_none("offer while at capacity", QUIET, |v| {
            v["type"] == "task.offered"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_on_disabled_channel() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut agent = h.agent_online(&alice).await;
    agent
        .call_err(
            json!({"type": "outbound", "channel": "sms", "to": "+15551230000", "text": "hi"}),
            "channel_disabled",
        )
        .await;
    // Nothing was charged against capacity.
    let v = h.agent_view("alice").await;
    assert_eq!(v["load"]["sms"].as_u64().unwrap_or(0), 0, "{v}");
}

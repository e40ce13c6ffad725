//! Provider channels sharded over the HTTP workers, over real sockets against
//! the mock provider: many customers in one webhook spread over the shards,
//! every message stored once even when the batch is retried, and status
//! callbacks (which name only the provider's message id) reaching every
//! message whichever shard sent it, before or after the send's own answer.
mod common;
mod providers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::s;
use providers::mock::{Api, Failure};
use providers::*;
use serde_json::{json, Value};

/// Four workers: four shards of each provider channel.
const WORKERS: usize = 4;

fn customer(i: usize) -> String {
    format!("1555987{i:04}")
}

/// Open tasks by customer address: (conversation id, task id).
async fn open_tasks(env: &Env) -> BTreeMap<String, (String, String)> {
    let tasks = env.h.admin_get_ok("/v1/tasks?channel=whatsapp").await;
    tasks
        .as_array()
        .expect("task list")
        .iter()
        .map(|t| {
            (
                s(&t["customer"]["address"]),
                (s(&t["conversation_id"]), s(&t["id"])),
            )
        })
        .collect()
}

/// Waits until `n` whatsapp tasks are open.
async fn wait_tasks(env: &Env, n: usize) -> BTreeMap<String, (String, String)> {
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let tasks = open_tasks(env).await;
        if tasks.len() >= n || tokio::time::Instant::now() > deadline {
            return tasks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_customers_is_stored_once_even_when_retried() {
    let env = start(|c| c.workers = WORKERS);
    const CUSTOMERS: usize = 24;
    // One POST: two entries, each customer writing twice, in order.
    let half = |range: std::ops::Range<usize>, round: usize| {
        let contacts: Vec<(String, String)> = range
            .clone()
            .map(|i| (customer(i), format!("Customer {i}")))
            .collect();
        let contacts: Vec<(&str, &str)> = contacts
            .iter()
            .map(|(a, n)| (a.as_str(), n.as_str()))
            .collect();
        let messages = range
            .map(|i| {
                wa_text(
                    &format!("wamid.S{i}.{round}"),
                    &customer(i),
                    &format!("{i}: message {round}"),
                )
            })
            .collect();
        wa_messages_change(&contacts, messages)
    };
    let batch = wa_envelope(vec![
        vec![half(0..CUSTOMERS, 1)],
        vec![half(0..CUSTOMERS / 2, 2), half(CUSTOMERS / 2..CUSTOMERS, 2)],
    ]);
    env.wa_in(&batch).await;
    // Meta did not see the answer and sends the batch again; then once more
    // while the first copies are surely in.
    env.wa_in(&batch).await;
    let tasks = wait_tasks(&env, CUSTOMERS).await;
    env.wa_in(&batch).await;
    assert_eq!(
        tasks.len(),
        CUSTOMERS,
        "one conversation per customer: {tasks:?}"
    );
    for i in 0..CUSTOMERS {
        let (conv, _) = &tasks[&customer(i)];
        let texts = common::texts(&Value::Array(env.history(conv).await));
        assert_eq!(
            texts,
            vec![format!("{i}: message 1"), format!("{i}: message 2")],
            "customer {i}: each message once, in order"
        );
    }
    assert_eq!(open_tasks(&env).await.len(), CUSTOMERS, "no task twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_reach_every_message_whichever_shard_sent_it() {
    let env = start(|c| c.workers = WORKERS);
    const CUSTOMERS: usize = 12;
    let body = json!({
        "id": "wanda",
        "name": "Wanda",
        "capacity": {"webchat": 1, "whatsapp": CUSTOMERS},
    });
    let r = env
        .h
        .request(
            reqwest::Method::POST,
            "/v1/agents",
            Some(&env.h.admin),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 201, "create agent: {}", r.text);
    let agent = common::Agent {
        id: "wanda".into(),
        name: "Wanda".into(),
        token: s(&r.body["token"]),
    };
    let mut ws = env.h.agent_online(&agent).await;
    for i in 0..CUSTOMERS {
        env.wa_in(&wa_text_webhook(
            &format!("wamid.T{i}"),
            &customer(i),
            "Customer",
            "hello",
        ))
        .await;
    }
    // Accept every offer, reply to every customer: text → message id.
    let mut by_text: HashMap<String, String> = HashMap::new();
    for _ in 0..CUSTOMERS {
        let (offer, _, conv, _) = take(&mut ws).await;
        let text = format!("reply to {}", s(&offer["task"]["customer"]["address"]));
        let mid = send_ok(&mut ws, &conv, &text, &[]).await;
        by_text.insert(text, mid);
    }
    let sends = env.mock.wait_sends(Api::Whatsapp, CUSTOMERS).await;
    let mut statuses = Vec::new();
    let mut expected: Vec<(String, String)> = Vec::new();
    for send in &sends {
        let body = send.json();
        let mid = by_text
            .get(body["text"]["body"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("a send of ours: {body}"))
            .clone();
        let wamid = send.provider_id.clone().expect("provider id");
        statuses.push(wa_status(&wamid, "delivered", &s(&body["to"])));
        expected.push((mid, wamid));
    }
    for (mid, _) in &expected {
        wait_status(&mut ws, mid, "sent").await;
    }
    // Every status in one callback.
    env.wa_in(&wa_envelope(vec![vec![wa_statuses_change(statuses)]]))
        .await;
    let mut delivered = HashSet::new();
    while delivered.len() < CUSTOMERS {
        let v = ws
            .recv_where("message.status delivered", |v| {
                v["type"] == "message.status" && v["status"] == "delivered"
            })
            .await;
        delivered.insert(s(&v["message_id"]));
    }
    let wanted: HashSet<String> = expected.iter().map(|(mid, _)| mid.clone()).collect();
    assert_eq!(delivered, wanted, "every message delivered");
    // And stored so.
    for (addr, (conv, _)) in open_tasks(&env).await {
        let history = env.history(&conv).await;
        let reply: &Value = history
            .iter()
            .find(|m| m["from"] == "agent")
            .unwrap_or_else(|| panic!("{addr}: the reply is stored"));
        assert_eq!(reply["status"], "delivered", "{addr}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_that_comes_before_the_send_answer_is_applied_after_it() {
    let env = start(|c| c.workers = WORKERS);
    let (_agent, mut ws) = env.agent("alice").await;
    env.wa_in(&wa_text_webhook("wamid.E1", &customer(1), "Early", "hi"))
        .await;
    let (_, _, conv, _) = take(&mut ws).await;
    // The provider takes its time to answer the send, and its delivery
    // callback overtakes the answer.
    env.mock
        .fail(Api::Whatsapp, 1, Failure::Slow(Duration::from_millis(300)));
    let mid = send_ok(&mut ws, &conv, "on its way", &[]).await;
    let sends = env.mock.wait_sends(Api::Whatsapp, 1).await;
    let wamid = sends[0].provider_id.clone().expect("provider id");
    env.wa_in(&wa_status_webhook(wa_status(
        &wamid,
        "delivered",
        &customer(1),
    )))
    .await;
    let first = next_status(&mut ws, &mid).await;
    assert_eq!(first["status"], "sent", "the answer first: {first}");
    wait_status(&mut ws, &mid, "delivered").await;
    let history = env.history(&conv).await;
    assert_eq!(history[1]["status"], "delivered", "{history:?}");
}

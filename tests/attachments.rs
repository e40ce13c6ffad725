//! Attachment upload/download and sending attachments in a webchat conversation.
mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn sample(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn upload(h: &Harness, token: Option<&str>, filename: &str, ct: &str, body: Vec<u8>) -> Resp {
    h.request_raw(
        Method::POST,
        &format!("/v1/attachments?filename={filename}"),
        token,
        ct,
        body,
    )
    .await
}

/// GET the bytes at `path_or_url`; returns (status, bytes).
async fn download(h: &Harness, path_or_url: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = h.http.get(h.url(path_or_url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("download");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("download body").to_vec();
    (status, bytes)
}

fn assert_meta(meta: &Value, filename: &str, ct: &str, size: usize) -> String {
    assert!(meta["id"].is_string(), "{meta}");
    assert_eq!(meta["filename"], filename, "{meta}");
    assert_eq!(meta["content_type"], ct, "{meta}");
    assert_eq!(meta["size"], size as u64, "{meta}");
    assert!(meta["url"].is_string(), "{meta}");
    s(&meta["id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_as_agent_customer_and_admin() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let sess = h.create_session("Dana", None).await;

    let data = sample(3000);
    let r = upload(&h, Some(&alice.token), "pic.png", "image/png", data.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = assert_meta(&r.body, "pic.png", "image/png", data.len());
    let url = s(&r.body["url"]);

    let (st, got) = download(&h, &format!("/v1/attachments/{id}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(got, data, "agent download");
    let (st, got) = download(&h, &url, Some(&h.admin)).await;
    assert_eq!(st, 200);
    assert_eq!(got, data, "admin download via url");

    let cdata = sample(777);
    let r = upload(
        &h,
        Some(&sess.token),
        "notes.txt",
        "text/plain",
        cdata.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cid = assert_meta(&r.body, "notes.txt", "text/plain", cdata.len());
    let (st, got) = download(&h, &format!("/v1/attachments/{cid}"), Some(&sess.token)).await;
    assert_eq!(st, 200);
    assert_eq!(got, cdata, "customer download of own upload");
    let (st, got) = download(&h, &format!("/v1/attachments/{cid}"), Some(&alice.token)).await;
    assert_eq!(st, 200);
    assert_eq!(got, cdata, "agent download of customer upload");

    // Unauthenticated: refused both ways.
    let r = upload(&h, None, "x.png", "image/png", sample(10)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.error_code(), "unauthorized");
    let r = upload(&h, Some("bogus"), "x.png", "image/png", sample(10)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let (st, _) = download(&h, &format!("/v1/attachments/{id}"), None).await;
    assert_eq!(st, 401);
    // Unknown id.
    let r = h
        .get("/v1/attachments/does-not-exist", Some(&h.admin))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.error_code(), "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_limit_is_413() {
    let mut cfg = test_config();
    cfg.max_upload = 1024;
    let h = start_with(cfg);
    let alice = h.create_agent("alice", 1, &[]).await;
    let r = upload(
        &h,
        Some(&alice.token),
        "big.bin",
        "application/octet-stream",
        sample(1025),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.error_code(), "attachment_too_large", "{}", r.text);
    let r = upload(
        &h,
        Some(&alice.token),
        "ok.bin",
        "application/octet-stream",
        sample(1024),
    )
    .await;
    assert_eq!(r.status, 201, "exactly at the limit: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_travel_both_ways_on_webchat() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let sess = h.create_session("Dana", None).await;
    let (mut c, _hist) = h.connect_customer(&sess).await;
    let ack = c.say("hello").await;
    let conv = s(&ack["conversation_id"]);
    a.take_offer().await;

    // Agent → customer.
    let pdf = sample(5000);
    let r = upload(
        &h,
        Some(&alice.token),
        "invoice.pdf",
        "application/pdf",
        pdf.clone(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let att = s(&r.body["id"]);
    let echo = a
        .call(json!({
            "type": "send", "conversation_id": conv, "text": "your invoice",
            "attachments": [att], "client_msg_id": "att-1",
        }))
        .await;
    assert_eq!(echo["type"], "message", "{echo}");
    assert_eq!(
        echo["message"]["attachments"][0]["id"],
        att.as_str(),
        "{echo}"
    );

    let m = c.recv_message_text("your invoice").await;
    let metas = m["message"]["attachments"].as_array().expect("attachments");
    assert_eq!(metas.len(), 1, "{m}");
    assert_meta(&metas[0], "invoice.pdf", "application/pdf", pdf.len());
    let (st, got) = download(&h, &s(&metas[0]["url"]), Some(&sess.token)).await;
    assert_eq!(st, 200, "customer downloads the agent's attachment");
    assert_eq!(got, pdf);

    // Customer → agent.
    let png = sample(1234);
    let r = upload(&h, Some(&sess.token), "shot.png", "image/png", png.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let catt = s(&r.body["id"]);
    c.send(json!({"type": "message", "text": "screenshot", "attachments": [catt], "client_msg_id": "c-att"}))
        .await;
    let ack = c
        .recv_where("ack c-att", |v| v["type"] == "ack" || v["type"] == "error")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = a.recv_message_text("screenshot").await;
    assert_meta(
        &m["message"]["attachments"][0],
        "shot.png",
        "image/png",
        png.len(),
    );
    let (st, got) = download(
        &h,
        &s(&m["message"]["attachments"][0]["url"]),
        Some(&alice.token),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(got, png);

    // History keeps the attachment metadata.
    let hist = h.messages(&conv).await;
    let with_att: Vec<&Value> = hist["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["attachments"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert_eq!(with_att.len(), 2, "{hist}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_attachment_id_is_refused_before_sending() {
    let h = start();
    let alice = h.create_agent("alice", 1, &[]).await;
    let mut a = h.agent_online(&alice).await;
    let (_sess, mut c, ack) = h.customer_with_message("Dana", "hello").await;
    let conv = s(&ack["conversation_id"]);
    a.take_offer().await;

    let err = a
        .call(json!({
            "type": "send", "conversation_id": conv, "text": "ghost",
            "attachments": ["att-does-not-exist"], "client_msg_id": "g",
        }))
        .await;
    assert_eq!(err["type"], "error", "{err}");
    let code = s(&err["code"]);
    assert!(
        code == "not_found" || code == "bad_request" || code == "attachment_not_supported",
        "code: {err}"
    );
    c.expect_none("message with a bad attachment", QUIET, |v| {
        v["type"] == "message" && v["message"]["text"] == "ghost"
    })
    .await;
    let hist = h.messages(&conv).await;
    assert_eq!(texts(&hist["messages"]), vec!["hello"], "{hist}");

    // Same from the customer side.
    c.call_err(
        json!({"type": "message", "text": "ghost2", "attachments": ["nope"], "client_msg_id": "g2"}),
        &code,
    )
    .await;
    let hist = h.messages(&conv).await;
    assert_eq!(texts(&hist["messages"]), vec!["hello"], "{hist}");
}

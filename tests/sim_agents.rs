//! `--sim-agents`: simulated agents inside the broker accept, reply, end and
//! complete like people, through the same actors and frames.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_serve_a_webchat_customer_end_to_end() {
    let mut cfg = test_config();
    cfg.sim_agents = 3;
    cfg.sim_capacity = 2;
    cfg.sim_accept_delay = Duration::from_millis(10);
    cfg.sim_reply_delay = Duration::from_millis(10);
    cfg.sim_wrapup_delay = Duration::from_millis(10);
    cfg.sim_replies = 2;
    let h = start_with(cfg);

    // All three are connected and available once their desks said hello.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let agents = h.admin_get_ok("/v1/agents").await;
        let ready = agents
            .as_array()
            .expect("array")
            .iter()
            .filter(|a| a["connected"] == true && a["activity"] == "available")
            .count();
        if ready == 3 {
            assert_eq!(agents[0]["id"], "sim-00001");
            assert_eq!(agents[0]["capacity"]["sms"], 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{agents}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (_s, mut c, _ack) = h.customer_with_message("Dana", "where is my parcel?").await;
    let joined = c.recv_type("agent.joined").await;
    assert!(
        joined["agent"]["name"]
            .as_str()
            .expect("name")
            .starts_with("Sim Agent"),
        "{joined}"
    );
    let r1 = c.recv_message_from("agent").await;
    assert!(
        r1["message"]["text"]
            .as_str()
            .expect("text")
            .starts_with("Reply 1"),
        "{r1}"
    );
    c.say("thanks, and the invoice?").await;
    let r2 = c.recv_message_from("agent").await;
    assert!(
        r2["message"]["text"]
            .as_str()
            .expect("text")
            .starts_with("Reply 2"),
        "{r2}"
    );
    c.recv_type("conversation.ended").await;

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let stats = h.admin_get_ok("/v1/stats").await;
        if stats["tasks"]["completed"] == 1 {
            assert_eq!(stats["tasks"]["wrapping"], 0, "{stats}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! Transfers, parking and ends under concurrency over real sockets: 60
//! agents and 600 webchat conversations, agents accepting, rejecting and
//! letting offers run out, replying, transferring cold (to agents and
//! queues) and warm (some canceled), parking (some until a time), ending in
//! the middle of transfers, taking breaks and dropping their sockets (some
//! for about their disconnect grace), a supervisor force-completing tasks,
//! while customers keep writing, leave, or go away for about their grace. Then everything is wound down and
//! checked: no agent ever got a frame of a conversation it did not hold, no
//! agent was ever over capacity, the router and the conversations agreed on
//! every holder, and every task ended in a final state with all capacity
//! given back.
//!
//! The scenario is the load harness's (`loadtest/src/workflow.rs`, which
//! `loadtest --workflow` runs at the full size, 300 agents and 3,000
//! conversations, in release mode in CI); here it runs at a fifth of that
//! against a broker this test starts. `FLOW_SEED`, `FLOW_AGENTS` and
//! `FLOW_CONVERSATIONS` change the seed and the size.

mod common;

use std::time::Duration;

use common::*;
use loadtest::workflow::{self, Options};

const AGENTS: usize = 60;
const CONVERSATIONS: usize = 600;
const CHAOS: Duration = Duration::from_secs(8);
const RUN_TIMEOUT: Duration = Duration::from_secs(50);

/// A size from the environment, else its default.
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v:?}: not a number"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfers_parks_and_ends_keep_one_holder_under_load() {
    let agents = size("FLOW_AGENTS", AGENTS);
    let conversations = size("FLOW_CONVERSATIONS", CONVERSATIONS);
    let mut cfg = test_config().without_client_limits();
    cfg.offer_timeout = Duration::from_secs(2);
    cfg.reoffer_cooldown = Duration::from_millis(300);
    cfg.disconnect_grace = workflow::GRACE;
    cfg.customer_grace = workflow::GRACE;
    let h = start_with(cfg);
    let outcome = workflow::run(Options {
        base: h.url(""),
        customer_base: None,
        admin: h.admin.clone(),
        agents,
        conversations,
        // Room to open the sessions and wind down, growing with the size.
        limit: RUN_TIMEOUT * conversations.div_ceil(CONVERSATIONS) as u32,
        seed: workflow::seed_from_env(1),
        chaos: CHAOS,
        fault: None,
    })
    .await;
    if let Err(failures) = outcome {
        panic!("the workflow run failed:\n{failures}");
    }
}

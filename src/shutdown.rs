//! Graceful shutdown (SIGTERM, SIGINT): stop taking work, tell every client,
//! finish what is in flight, write everything down, exit 0, all within
//! `shutdown_timeout`.
//!
//! 1. New requests and upgrades answer `503 unavailable` (`draining`), so a
//!    load balancer's health check sees the node leave.
//! 2. Every socket gets a close frame, `1001 going away` with the reason
//!    "shutting down", and the drain waits until each has been written and
//!    its connection closed; clients reconnect (to this node once it is
//!    back, or to another) as after a network drop. Nothing about the agents or
//!    customers changes: no disconnect grace, no "customer left".
//! 3. Provider sends already queued finish (their delivery reports are
//!    state changes too), until the queue is empty or time is up.
//! 4. The journal writes and syncs what it holds, and closes.
//! 5. The HTTP server stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web_actors::ws::CloseCode;

use crate::protocol::ChannelKind;
use crate::wiring::Broker;
use crate::ws::CloseAll;

/// The close reason clients see.
pub const SHUTTING_DOWN: &str = "shutting down";

/// How often the drain looks whether provider sends are done.
const POLL: Duration = Duration::from_millis(20);

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signalled() {
    use actix_web::rt::signal;
    #[cfg(unix)]
    {
        match signal::unix::signal(signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "SIGTERM handler not installed; Ctrl-C only");
                let _ = signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = signal::ctrl_c().await;
    }
}

/// Steps 1 to 4; returns once the journal is closed or `timeout` is spent.
pub async fn drain(broker: Arc<Broker>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    tracing::info!(timeout_ms = timeout.as_millis() as u64, "shutting down");
    broker.start_draining();
    let close = CloseAll {
        code: CloseCode::Away,
        reason: SHUTTING_DOWN.to_owned(),
    };
    for shard in broker.channels.webchat.iter() {
        shard.do_send(close.clone());
    }
    for agent in broker.agent_addrs() {
        agent.do_send(close.clone());
    }
    broker.supervisor.do_send(close);
    // The close frames go out through each session and its connection's
    // writer, which actix-server's own graceful stop does not wait for (a
    // WebSocket leaves its count at the upgrade): wait until every socket
    // has written its close and let go of its connection.
    let sockets = &broker.limits.connections;
    while sockets.sockets() > 0 && Instant::now() < deadline {
        actix_web::rt::time::sleep(POLL).await;
    }
    if sockets.sockets() > 0 {
        tracing::warn!(
            open = sockets.sockets(),
            "sockets still open at the shutdown deadline; they are cut without a close frame"
        );
    }
    // Provider sends in the outbound queues: let them finish.
    let pending = || {
        ChannelKind::ALL
            .into_iter()
            .filter_map(|k| broker.channels.budget(k))
            .map(|b| b.pending())
            .sum::<usize>()
    };
    while pending() > 0 && Instant::now() < deadline {
        actix_web::rt::time::sleep(POLL).await;
    }
    if pending() > 0 {
        tracing::warn!(
            pending = pending(),
            "provider sends still queued at the shutdown deadline; they are retried after the restart"
        );
    }
    if let Some(journal) = &broker.journal {
        let left = deadline.saturating_duration_since(Instant::now());
        let journal = journal.clone();
        // Closing writes and syncs: a blocking call, off the executor.
        let closed = actix_web::rt::task::spawn_blocking(move || journal.close(left)).await;
        match closed {
            Ok(Ok(())) => tracing::info!("journal flushed and closed"),
            Ok(Err(e)) => tracing::error!(error = %e, "journal not closed cleanly"),
            Err(e) => tracing::error!(error = %e, "journal close did not finish"),
        }
    }
}

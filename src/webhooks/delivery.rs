//! Delivering one endpoint's lane: one event at a time, POSTed signed, retried
//! with backoff until a 2xx or until `webhook_retry_for` after the event
//! happened. Runs as a task on the webhook arbiter, never on an actor's
//! thread.
//!
//! The signature is HMAC-SHA256, keyed with the endpoint's secret, of
//! `"<timestamp>.<body>"`, sent hex-encoded as `X-Switchboard-Signature:
//! sha256=<hex>`; the timestamp (unix seconds, `X-Switchboard-Timestamp`) is
//! that of the attempt, so a receiver can refuse old replays, and a retry is
//! signed afresh. The body and `X-Switchboard-Event-Id` are the same on every
//! attempt: the id is what a receiver deduplicates on.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::{retry_delay, Delivery, Endpoint};

/// How deliveries are attempted (`webhook_timeout`, `webhook_backoff`,
/// `webhook_retry_for`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    pub timeout: Duration,
    pub backoff: Duration,
    pub retry_for: Duration,
}

/// A response body is read up to this much (so the connection can be
/// reused), then dropped unread.
const MAX_RESPONSE: usize = 64 * 1024;

/// Deliver a lane's events in order until the broker goes.
pub(super) async fn run_lane(
    endpoint: Arc<Endpoint>,
    mut lane: mpsc::UnboundedReceiver<Delivery>,
    client: reqwest::Client,
    policy: Policy,
) {
    while let Some(delivery) = lane.recv().await {
        deliver(&endpoint, &client, policy, &delivery).await;
        endpoint.finished(&delivery.id);
        endpoint
            .pending
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Attempt until success or until retrying would pass the event's deadline.
async fn deliver(endpoint: &Endpoint, client: &reqwest::Client, policy: Policy, d: &Delivery) {
    let mut attempt: u32 = 1;
    loop {
        match attempt_once(endpoint, client, policy, d, attempt).await {
            Ok(()) => {
                endpoint.succeeded();
                return;
            }
            Err(error) => {
                tracing::debug!(url = %endpoint.url, id = %d.id, attempt, %error, "webhook attempt failed");
                endpoint.attempt_failed(error);
            }
        }
        let delay = retry_delay(policy.backoff, attempt);
        if d.at.elapsed() + delay > policy.retry_for {
            tracing::warn!(url = %endpoint.url, id = %d.id, attempt, "webhook event given up");
            endpoint.gave_up();
            return;
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

async fn attempt_once(
    endpoint: &Endpoint,
    client: &reqwest::Client,
    policy: Policy,
    d: &Delivery,
    attempt: u32,
) -> Result<(), String> {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let signature = sign(&endpoint.secret, &timestamp, &d.body);
    let response = client
        .post(&endpoint.url)
        .timeout(policy.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Switchboard-Event-Id", &*d.id)
        .header("X-Switchboard-Timestamp", &timestamp)
        .header("X-Switchboard-Signature", format!("sha256={signature}"))
        .header("X-Switchboard-Attempt", attempt.to_string())
        .body(d.body.clone())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    drain(response).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

/// Read a little of the response so the connection goes back to the pool.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_RESPONSE {
            break;
        }
    }
}

/// What went wrong, in a few words for `last_error`.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout: no answer in time".into()
    } else if e.is_connect() {
        "connect: the endpoint refused or could not be reached".into()
    } else if e.is_request() || e.is_body() {
        "request: the connection failed while sending".into()
    } else {
        format!("error: {e}")
    }
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's
        // hmac.new(b"key", b'1700000000.{"id":"evt_1"}', "sha256").hexdigest()
        let s = sign(b"key", "1700000000", br#"{"id":"evt_1"}"#);
        assert_eq!(
            s,
            "f13fcf55005466f6988baefaf979824421a6cb50db7ae6b57698fb0498196e39"
        );
        assert_ne!(s, sign(b"key", "1700000001", br#"{"id":"evt_1"}"#));
        assert_ne!(s, sign(b"other", "1700000000", br#"{"id":"evt_1"}"#));
    }
}

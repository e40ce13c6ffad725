//! Simulated WhatsApp customers: each conversation has its own `wa_id`
//! (`18<run tag><index>`), writes through signed Cloud API webhooks
//! (`POST /v1/channels/whatsapp/webhook`, `X-Hub-Signature-256`, HTTP
//! keep-alive), and reads the agent's replies at the provider sink, which
//! plays the Graph send API and matches them by `to`. After `--messages`
//! round trips and `--hold`, the customer writes `bye`; the agent then ends
//! and completes the conversation (a WhatsApp customer is not told).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::{timeout_at, Instant};

use crate::meta::{self, WhatsappCfg, WEBHOOK_PATH};
use crate::net::{self, Failure};
use crate::report::{instant_at, now_nanos, send_stamp, stamp_of, tag_of, Counters, Lat};
use crate::run::{Ctx, Outcome};
use crate::sink::Sink;

/// The WhatsApp side of a run.
pub struct WhatsappSide {
    pub cfg: WhatsappCfg,
    pub sink: Arc<Sink>,
}

/// Removes the customer's number from the sink when the conversation ends.
struct Registered<'a>(&'a Sink, &'a str);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

/// Runs WhatsApp conversation `idx`, its first message meant for `start`.
pub async fn conversation(
    ctx: &Ctx,
    wa: &WhatsappSide,
    idx: usize,
    start: Option<u64>,
) -> Result<Outcome, Failure> {
    let number = meta::customer_number(ctx.sms_tag, idx);
    let mut rx = wa.sink.register(&number);
    let _reg = Registered(&wa.sink, &number);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x5741_0000_0000_0000 ^ idx as u64);
    let plan = &ctx.plan;
    let talk = async {
        let mut intended = start.unwrap_or_else(now_nanos);
        for n in 1..=plan.messages {
            if n > 1 {
                intended = now_nanos() + plan.think.sample(&mut rng).as_nanos() as u64;
            }
            tokio::time::sleep_until(instant_at(intended)).await;
            let text = format!("lt #{n} t={}", send_stamp(intended));
            webhook(ctx, wa, idx, n, &number, &text).await?;
            let limit = Instant::now() + ctx.step_timeout;
            let msg = timeout_at(limit, rx.recv())
                .await
                .map_err(|_| {
                    Failure::new(
                        "harness.timeout_waiting_for_whatsapp_reply",
                        format!(
                            "{number}: no reply to #{n} at the sink for {:?}",
                            ctx.step_timeout
                        ),
                    )
                })?
                .ok_or_else(|| Failure::new("harness.sink_gone", "sink registry dropped"))?;
            let (Some(tag), Some(sent)) = (tag_of(&msg.body), stamp_of(&msg.body)) else {
                return Err(Failure::new(
                    "harness.bad_text",
                    format!("{number}: agent text {:?}", msg.body),
                ));
            };
            ctx.stats.record_between(Lat::AgentToCustomer, sent, msg.at);
            Counters::inc(&ctx.stats.c.agent_to_customer);
            if tag != n {
                return Err(Failure::new(
                    "harness.unexpected_reply",
                    format!("{number}: reply to #{tag} while waiting for #{n}"),
                ));
            }
        }
        if !plan.hold.is_zero() {
            tokio::time::sleep(plan.hold).await;
        }
        webhook(ctx, wa, idx, 0xffff, &number, "bye").await?;
        Ok::<(), Failure>(())
    };
    match timeout_at(ctx.deadline, talk).await {
        Ok(Ok(())) => Ok(Outcome::Completed),
        Ok(Err(f)) => Err(f),
        Err(_) => Ok(Outcome::Aborted),
    }
}

/// Posts one signed webhook with one text message, as Meta would, and
/// expects `200`.
async fn webhook(
    ctx: &Ctx,
    wa: &WhatsappSide,
    idx: usize,
    n: u32,
    from: &str,
    text: &str,
) -> Result<(), Failure> {
    let wamid = meta::wamid(
        ctx.seed ^ ((ctx.sms_tag as u64) << 48) ^ 0x5741,
        ((idx as u64) << 16) | n as u64,
    );
    let name = format!("Load test customer {idx}");
    let body = meta::inbound_body(&wa.cfg, &wamid, from, &name, text, meta::unix_secs());
    let signature = meta::signature(&wa.cfg.app_secret, body.as_bytes());
    let resp = ctx
        .http(idx)
        .post(ctx.target.http(WEBHOOK_PATH))
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::new("io.http", format!("POST {WEBHOOK_PATH}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Failure::new("io.http", format!("POST {WEBHOOK_PATH}: {e}")))?;
    if !status.is_success() {
        return Err(net::http_failure(
            status.as_u16(),
            &bytes,
            &format!("POST {WEBHOOK_PATH}"),
        ));
    }
    Counters::inc(&ctx.stats.c.whatsapp_webhooks_sent);
    Ok(())
}

/// Before the run: the webhook handshake (`GET …?hub.mode=subscribe&
/// hub.verify_token=…&hub.challenge=…` must echo the challenge), then one
/// signed webhook with neither message nor status. Both answering means the
/// WhatsApp channel is enabled with the harness's verify token and app secret.
pub async fn preflight(ctx: &Ctx, wa: &WhatsappSide) -> Result<(), String> {
    let advice = || format!("Start the broker with:\n  {}", wa.cfg.env_line());
    let challenge = format!("lt{}", now_nanos());
    let mut url = ctx.target.http(WEBHOOK_PATH);
    url.query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.verify_token", &wa.cfg.verify_token)
        .append_pair("hub.challenge", &challenge);
    let resp = ctx
        .http(0)
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("WhatsApp pre-flight: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    if !status.is_success() || body.as_ref() != challenge.as_bytes() {
        let f = net::http_failure(status.as_u16(), &body, &format!("GET {WEBHOOK_PATH}"));
        return Err(format!(
            "WhatsApp pre-flight (webhook handshake) failed ({f}). {}",
            advice()
        ));
    }
    let body = meta::empty_body(&wa.cfg);
    let resp = ctx
        .http(0)
        .post(ctx.target.http(WEBHOOK_PATH))
        .header(
            "X-Hub-Signature-256",
            meta::signature(&wa.cfg.app_secret, body.as_bytes()),
        )
        .header("Content-Type", "application/json")
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("WhatsApp pre-flight: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.bytes().await.unwrap_or_default();
    let f = net::http_failure(status.as_u16(), &body, &format!("POST {WEBHOOK_PATH}"));
    Err(format!(
        "WhatsApp pre-flight (signed webhook) failed ({f}). {}",
        advice()
    ))
}

//! Simulated SMS customers: each conversation has its own phone number
//! (`+19<run tag><index>`), writes through signed Twilio webhooks
//! (`POST /v1/channels/sms/inbound`, HTTP keep-alive), and reads the agent's
//! replies at the provider sink, which matches them by `To`. After
//! `--messages` round trips and `--hold`, the customer texts `bye`; the agent
//! then ends and completes the conversation (an SMS customer is not told).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::{timeout_at, Instant};

use crate::net::{self, Failure};
use crate::report::{instant_at, now_nanos, send_stamp, stamp_of, tag_of, Counters, Lat};
use crate::run::{Ctx, Outcome};
use crate::sink::Sink;
use crate::twilio::{self, TwilioCfg};

/// The SMS side of a run.
pub struct SmsSide {
    pub cfg: TwilioCfg,
    pub sink: Arc<Sink>,
}

/// Removes the customer's number from the sink when the conversation ends.
struct Registered<'a>(&'a Sink, &'a str);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

/// Runs SMS conversation `idx`, its first message meant for `start`.
pub async fn conversation(
    ctx: &Ctx,
    sms: &SmsSide,
    idx: usize,
    start: Option<u64>,
) -> Result<Outcome, Failure> {
    let number = twilio::customer_number(ctx.sms_tag, idx);
    let mut rx = sms.sink.register(&number);
    let _reg = Registered(&sms.sink, &number);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x5350_0000_0000_0000 ^ idx as u64);
    let plan = &ctx.plan;
    let talk = async {
        let mut intended = start.unwrap_or_else(now_nanos);
        for n in 1..=plan.messages {
            if n > 1 {
                intended = now_nanos() + plan.think.sample(&mut rng).as_nanos() as u64;
            }
            tokio::time::sleep_until(instant_at(intended)).await;
            let text = format!("lt #{n} t={}", send_stamp(intended));
            webhook(ctx, sms, idx, n, &number, &text).await?;
            let limit = Instant::now() + ctx.step_timeout;
            let msg = timeout_at(limit, rx.recv())
                .await
                .map_err(|_| {
                    Failure::new(
                        "harness.timeout_waiting_for_sms_reply",
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
        webhook(ctx, sms, idx, 0xffff, &number, "bye").await?;
        Ok::<(), Failure>(())
    };
    match timeout_at(ctx.deadline, talk).await {
        Ok(Ok(())) => Ok(Outcome::Completed),
        Ok(Err(f)) => Err(f),
        Err(_) => Ok(Outcome::Aborted),
    }
}

/// Posts one signed inbound webhook, as Twilio would, and expects `200`.
async fn webhook(
    ctx: &Ctx,
    sms: &SmsSide,
    idx: usize,
    n: u32,
    from: &str,
    body: &str,
) -> Result<(), Failure> {
    let sid = twilio::sid(
        "SM",
        ctx.seed ^ ((ctx.sms_tag as u64) << 48),
        ((idx as u64) << 16) | n as u64,
    );
    let form = twilio::inbound_form(&sms.cfg, &sid, from, body);
    let path = "/v1/channels/sms/inbound";
    let signature = twilio::signature(&sms.cfg.public(path), &form, &sms.cfg.auth_token);
    let encoded = serde_urlencoded::to_string(&form)
        .map_err(|e| Failure::new("harness.encode", e.to_string()))?;
    let resp = ctx
        .http(idx)
        .post(ctx.target.http(path))
        .header("X-Twilio-Signature", signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("I-Twilio-Idempotency-Token", sid.clone())
        .body(encoded)
        .send()
        .await
        .map_err(|e| Failure::new("io.http", format!("POST {path}: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| Failure::new("io.http", format!("POST {path}: {e}")))?;
    if !status.is_success() {
        return Err(net::http_failure(
            status.as_u16(),
            &bytes,
            &format!("POST {path}"),
        ));
    }
    Counters::inc(&ctx.stats.c.webhooks_sent);
    Ok(())
}

/// Before the run: a signed status callback for a message nobody sent, with a
/// status that changes nothing (`queued`). `200` means the SMS channel is
/// enabled and the harness signs over the same URL and token as the broker.
pub async fn preflight(ctx: &Ctx, sms: &SmsSide) -> Result<(), String> {
    let path = "/v1/channels/sms/status";
    let form = twilio::status_form(
        &sms.cfg,
        "SM00000000000000000000000000preflt",
        "+15550000000",
        "queued",
    );
    let signature = twilio::signature(&sms.cfg.public(path), &form, &sms.cfg.auth_token);
    let resp = ctx
        .http(0)
        .post(ctx.target.http(path))
        .header("X-Twilio-Signature", signature)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .timeout(Duration::from_secs(10))
        .body(serde_urlencoded::to_string(&form).unwrap_or_default())
        .send()
        .await
        .map_err(|e| format!("SMS pre-flight: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.bytes().await.unwrap_or_default();
    let f = net::http_failure(status.as_u16(), &body, &format!("POST {path}"));
    Err(format!(
        "SMS pre-flight failed ({f}). Start the broker with:\n  {}",
        sms.cfg.env_line()
    ))
}

//! What SMS and WhatsApp customers have in common: each conversation has its
//! own number, writes `lt #<n> t=<intended nanos>` through the provider's
//! signed webhooks (HTTP keep-alive), and reads the agent's replies at the
//! provider sink, which matches them by number. After `--messages` round trips
//! and `--hold` the customer writes `bye`; the agent then ends and completes
//! the conversation (a texting customer is not told).
//!
//! The provider modules ([`crate::sms`], [`crate::whatsapp`]) say how a number
//! looks and how a webhook is built and signed.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::RequestBuilder;
use tokio::time::{timeout_at, Instant};

use crate::net::{self, Failure};
use crate::report::{instant_at, now_nanos, send_stamp, stamp_of, tag_of, Counters, Lat};
use crate::run::{Ctx, Outcome};
use crate::sink::Sink;

/// A provider whose customers the harness plays.
pub trait Provider {
    /// Lower case, for error codes: `sms`, `whatsapp`.
    const NAME: &'static str;
    /// Mixed into each conversation's seed so that channels draw apart.
    const SEED_SALT: u64;
    /// Where customers' messages are posted.
    const WEBHOOK_PATH: &'static str;

    fn sink(&self) -> &Arc<Sink>;

    /// Conversation `idx`'s customer number.
    fn number(&self, ctx: &Ctx, idx: usize) -> String;

    /// The signed webhook to [`Provider::WEBHOOK_PATH`] that carries message
    /// `n` (`text`) from `from`, ready to send.
    fn webhook(
        &self,
        ctx: &Ctx,
        idx: usize,
        n: u32,
        from: &str,
        text: &str,
    ) -> Result<RequestBuilder, Failure>;

    /// Counts one accepted webhook.
    fn count_webhook(&self, ctx: &Ctx);
}

/// Removes the customer's number from the sink when the conversation ends.
struct Registered<'a>(&'a Sink, &'a str);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

/// Runs texting conversation `idx`, its first message meant for `start`.
pub async fn conversation<P: Provider>(
    ctx: &Ctx,
    provider: &P,
    idx: usize,
    start: Option<u64>,
) -> Result<Outcome, Failure> {
    let number = provider.number(ctx, idx);
    let sink = provider.sink();
    let mut rx = sink.register(&number);
    let _reg = Registered(sink, &number);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ P::SEED_SALT ^ idx as u64);
    let plan = &ctx.plan;
    let talk = async {
        let mut intended = start.unwrap_or_else(now_nanos);
        for n in 1..=plan.messages {
            if n > 1 {
                intended = now_nanos() + plan.think.sample(&mut rng).as_nanos() as u64;
            }
            tokio::time::sleep_until(instant_at(intended)).await;
            let text = format!("lt #{n} t={}", send_stamp(intended));
            send(ctx, provider, idx, n, &number, &text).await?;
            let limit = Instant::now() + ctx.step_timeout;
            let msg = timeout_at(limit, rx.recv())
                .await
                .map_err(|_| {
                    Failure::new(
                        format!("harness.timeout_waiting_for_{}_reply", P::NAME),
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
        send(ctx, provider, idx, 0xffff, &number, "bye").await?;
        Ok::<(), Failure>(())
    };
    match timeout_at(ctx.deadline, talk).await {
        Ok(Ok(())) => Ok(Outcome::Completed),
        Ok(Err(f)) => Err(f),
        Err(_) => Ok(Outcome::Aborted),
    }
}

/// Posts one webhook and expects a `2xx`.
async fn send<P: Provider>(
    ctx: &Ctx,
    provider: &P,
    idx: usize,
    n: u32,
    from: &str,
    text: &str,
) -> Result<(), Failure> {
    let req = provider.webhook(ctx, idx, n, from, text)?;
    net::send_checked(req, &format!("POST {}", P::WEBHOOK_PATH)).await?;
    provider.count_webhook(ctx);
    Ok(())
}

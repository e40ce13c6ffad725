//! Simulated SMS customers ([`crate::texting`]): each conversation has its own
//! phone number (`+19<run tag><index>`) and writes through signed Twilio
//! webhooks (`POST /v1/channels/sms/inbound`); the provider sink matches the
//! agent's replies by `To`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::RequestBuilder;

use crate::net::{self, Failure};
use crate::report::Counters;
use crate::run::Ctx;
use crate::sink::Sink;
use crate::texting::Provider;
use crate::twilio::{self, TwilioCfg};

/// The SMS side of a run.
pub struct SmsSide {
    pub cfg: TwilioCfg,
    pub sink: Arc<Sink>,
}

impl Provider for SmsSide {
    const NAME: &'static str = "sms";
    const SEED_SALT: u64 = 0x5350_0000_0000_0000;
    const WEBHOOK_PATH: &'static str = "/v1/channels/sms/inbound";

    fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }

    fn number(&self, ctx: &Ctx, idx: usize) -> String {
        twilio::customer_number(ctx.sms_tag, idx)
    }

    /// An inbound message as Twilio posts it.
    fn webhook(
        &self,
        ctx: &Ctx,
        idx: usize,
        n: u32,
        from: &str,
        body: &str,
    ) -> Result<RequestBuilder, Failure> {
        let sid = twilio::sid(
            "SM",
            ctx.seed ^ ((ctx.sms_tag as u64) << 48),
            ((idx as u64) << 16) | n as u64,
        );
        let form = twilio::inbound_form(&self.cfg, &sid, from, body);
        let path = Self::WEBHOOK_PATH;
        let signature = twilio::signature(&self.cfg.public(path), &form, &self.cfg.auth_token);
        let encoded = serde_urlencoded::to_string(&form)
            .map_err(|e| Failure::new("harness.encode", e.to_string()))?;
        Ok(ctx
            .http(idx)
            .post(ctx.target.http(path))
            .header("X-Twilio-Signature", signature)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("I-Twilio-Idempotency-Token", sid)
            .body(encoded))
    }

    fn count_webhook(&self, ctx: &Ctx) {
        Counters::inc(&ctx.stats.c.webhooks_sent);
    }
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

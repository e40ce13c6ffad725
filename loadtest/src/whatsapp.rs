//! Simulated WhatsApp customers ([`crate::texting`]): each conversation has its
//! own `wa_id` (`18<run tag><index>`) and writes through signed Cloud API
//! webhooks (`POST /v1/channels/whatsapp/webhook`, `X-Hub-Signature-256`); the
//! provider sink plays the Graph send API and matches the agent's replies by
//! `to`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::RequestBuilder;

use crate::meta::{self, WhatsappCfg, WEBHOOK_PATH};
use crate::net::{self, Failure};
use crate::report::{now_nanos, Counters};
use crate::run::Ctx;
use crate::sink::Sink;
use crate::texting::Provider;

/// The WhatsApp side of a run.
pub struct WhatsappSide {
    pub cfg: WhatsappCfg,
    pub sink: Arc<Sink>,
}

impl Provider for WhatsappSide {
    const NAME: &'static str = "whatsapp";
    const SEED_SALT: u64 = 0x5741_0000_0000_0000;
    const WEBHOOK_PATH: &'static str = WEBHOOK_PATH;

    fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }

    fn number(&self, ctx: &Ctx, idx: usize) -> String {
        meta::customer_number(ctx.sms_tag, idx)
    }

    /// A webhook with one text message, as Meta posts it.
    fn webhook(
        &self,
        ctx: &Ctx,
        idx: usize,
        n: u32,
        from: &str,
        text: &str,
    ) -> Result<RequestBuilder, Failure> {
        let wamid = meta::wamid(
            ctx.seed ^ ((ctx.sms_tag as u64) << 48) ^ 0x5741,
            ((idx as u64) << 16) | n as u64,
        );
        let name = format!("Load test customer {idx}");
        let body = meta::inbound_body(&self.cfg, &wamid, from, &name, text, meta::unix_secs());
        let signature = meta::signature(&self.cfg.app_secret, body.as_bytes());
        Ok(ctx
            .http(idx)
            .post(ctx.target.http(WEBHOOK_PATH))
            .header("X-Hub-Signature-256", signature)
            .header("Content-Type", "application/json")
            .body(body))
    }

    fn count_webhook(&self, ctx: &Ctx) {
        Counters::inc(&ctx.stats.c.whatsapp_webhooks_sent);
    }
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

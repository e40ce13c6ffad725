//! Simulated webchat customers. A conversation opens a session and its socket,
//! sends `lt #<n> t=<intended nanos>`, waits for the ack and the agent's
//! `re: <seq> #<n>` reply, thinks (`--think-time`), repeats `--messages` times,
//! idles with heartbeats for `--hold`, then says `bye` and waits for
//! `conversation.ended`. A conversation that fails or meets the deadline sends
//! `leave` before closing. With `--queued` nobody answers: each message waits
//! for its ack only, and after `--hold` the customer leaves (`leave`, then
//! `conversation.ended`), so the conversation spends its life in the queue.
//!
//! Every message is stamped with the time it was meant to be sent (the arrival
//! time for the first one in open loop; reply + think time for the next), so a
//! harness or broker that falls behind shows up as latency instead of hiding it
//! (no coordinated omission).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::SinkExt;
use rand::rngs::StdRng;
use rand::SeedableRng;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, Failure, Ws};
use crate::report::{
    instant_at, now_nanos, replied_seq_of, send_stamp, stamp_of, tag_of, Counters, Gauge, Lat,
};
use crate::run::{Ctx, Outcome};

/// Customer names of run `run_id` start with this; agents reject other offers.
pub fn name_prefix(run_id: &str) -> String {
    format!("lt-customer-{run_id}-")
}

/// Runs webchat conversation `idx`, its first message meant for `start`
/// ([`now_nanos`] time). `paced`: the socket waits for a `--ramp` slot.
pub async fn conversation(
    ctx: &Ctx,
    idx: usize,
    start: Option<u64>,
    paced: bool,
) -> Result<Outcome, Failure> {
    let Ok(ws) = timeout_at(ctx.deadline, open(ctx, idx, paced)).await else {
        return Ok(Outcome::Aborted);
    };
    let mut ws = ws?;
    let _conn = Gauge::up(&ctx.stats.c.connections);
    let mut s = Session {
        ctx,
        rng: StdRng::seed_from_u64(ctx.seed ^ 0xC057_0000_0000_0000 ^ idx as u64),
        conv_id: None,
        acks: HashMap::new(),
        replies: HashMap::new(),
        ended: false,
    };
    let result = match timeout_at(ctx.deadline, s.talk(&mut ws, idx, start)).await {
        Ok(Ok(())) => Ok(Outcome::Completed),
        Ok(Err(f)) => Err(f),
        Err(_) => Ok(Outcome::Aborted),
    };
    if !matches!(result, Ok(Outcome::Completed)) {
        // Leave, so the conversation does not wait in the broker for a customer
        // who is gone (and get offered to the agents of a later run).
        let leave = json!({"type": "leave"});
        let _ = timeout(Duration::from_secs(1), net::send_json(&mut ws, &leave)).await;
    }
    net::close_ws(ws).await;
    result
}

/// Opens a webchat session and its socket.
async fn open(ctx: &Ctx, idx: usize, paced: bool) -> Result<Ws, Failure> {
    // A customer's connection is its session and its socket: both are paced.
    if paced {
        ctx.pacer.wait().await;
    }
    let began = now_nanos();
    let ws = open_unpaced(ctx, idx).await?;
    ctx.stats.record_since(Lat::Connect, began);
    ctx.stats.c.customer_socket_opened();
    Ok(ws)
}

async fn open_unpaced(ctx: &Ctx, idx: usize) -> Result<Ws, Failure> {
    let token = if ctx.kind.is_relay() {
        format!("{}-c{idx}", ctx.kind.name())
    } else {
        let began = now_nanos();
        let (_, body) = net::http_json(
            ctx.http(idx),
            Method::POST,
            ctx.target.http("/v1/webchat/sessions"),
            None,
            Some(&json!({ "name": format!("{}{idx}", name_prefix(&ctx.run_id)) })),
        )
        .await?;
        ctx.stats.record_since(Lat::Session, began);
        body["token"]
            .as_str()
            .ok_or_else(|| {
                Failure::new(
                    "harness.bad_session_body",
                    format!("POST /v1/webchat/sessions: no token in {body}"),
                )
            })?
            .to_string()
    };
    let url = ctx.target.ws("/v1/webchat/ws", &token);
    net::connect_ws(&ctx.target, ctx.sources.pick(), &url).await
}

struct Session<'a> {
    ctx: &'a Ctx,
    rng: StdRng,
    /// The conversation, learned from the first ack.
    conv_id: Option<String>,
    /// client_msg_id → seq from its ack.
    acks: HashMap<String, u64>,
    /// message number → the seq the agent's reply says it answers.
    replies: HashMap<u32, u64>,
    ended: bool,
}

impl Session<'_> {
    async fn talk(&mut self, ws: &mut Ws, idx: usize, start: Option<u64>) -> Result<(), Failure> {
        let plan = &self.ctx.plan;
        let mut intended = start.unwrap_or_else(now_nanos);
        for n in 1..=plan.messages {
            if n > 1 && self.ctx.winding_down() {
                break;
            }
            if n > 1 {
                intended = now_nanos() + plan.think.sample(&mut self.rng).as_nanos() as u64;
            }
            // A timer rounds up to the next millisecond: none when the
            // message is due already (no think time, closed loop).
            if intended > now_nanos() {
                tokio::time::sleep_until(instant_at(intended)).await;
            }
            let cmid = format!("c{idx}-{n}");
            let text = format!("lt #{n} t={}", send_stamp(intended));
            net::send_json(
                ws,
                &json!({"type": "message", "text": text, "attachments": [], "client_msg_id": cmid}),
            )
            .await?;
            if plan.queued {
                self.wait(ws, "ack", |s| s.acks.contains_key(&cmid)).await?;
                continue;
            }
            self.wait(ws, "reply", |s| {
                s.acks.contains_key(&cmid) && s.replies.contains_key(&n)
            })
            .await?;
            let (acked, replied) = (self.acks[&cmid], self.replies[&n]);
            if acked != replied {
                return Err(Failure::new(
                    "harness.reply_seq_mismatch",
                    format!("message #{n} acked as seq {acked}, agent answered seq {replied}"),
                ));
            }
        }
        if !plan.hold.is_zero() && !self.ctx.winding_down() {
            self.hold(ws).await?;
        }
        if plan.queued {
            net::send_json(ws, &json!({"type": "leave"})).await?;
            self.wait(ws, "end", |s| s.ended).await?;
            Counters::inc(&self.ctx.stats.c.conversations_ended);
            return Ok(());
        }
        let cmid = format!("c{idx}-bye");
        net::send_json(
            ws,
            &json!({"type": "message", "text": "bye", "attachments": [], "client_msg_id": cmid}),
        )
        .await?;
        self.wait(ws, "end", |s| s.acks.contains_key(&cmid) && s.ended)
            .await?;
        Counters::inc(&self.ctx.stats.c.conversations_ended);
        Ok(())
    }

    /// Stays connected and idle for `--hold`, reading (which answers the
    /// broker's pings) and sending a ping every `--heartbeat`.
    async fn hold(&mut self, ws: &mut Ws) -> Result<(), Failure> {
        let until = Instant::now() + self.ctx.plan.hold;
        let beat = self.ctx.plan.heartbeat;
        let mut next_beat = Instant::now() + beat;
        loop {
            let wake = next_beat.min(until);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= until {
                        return Ok(());
                    }
                    ws.send(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(|e| Failure::new("io.send", e.to_string()))?;
                    next_beat += beat;
                }
                ev = net::recv_json(ws) => {
                    let ev = ev?;
                    self.on_event(&ev)?;
                }
            }
        }
    }

    /// Reads events until `done` holds, at most `--step-timeout`.
    async fn wait(
        &mut self,
        ws: &mut Ws,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), Failure> {
        let limit = Instant::now() + self.ctx.step_timeout;
        while !done(self) {
            let ev = timeout_at(limit, net::recv_json(ws)).await.map_err(|_| {
                Failure::new(
                    format!("harness.timeout_waiting_for_{what}"),
                    format!(
                        "nothing for {:?} (conversation {:?})",
                        self.ctx.step_timeout, self.conv_id
                    ),
                )
            })??;
            self.on_event(&ev)?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: &Value) -> Result<(), Failure> {
        match ev["type"].as_str().unwrap_or_default() {
            "ack" => {
                self.same_conversation(ev)?;
                let (Some(cmid), Some(seq)) = (ev["client_msg_id"].as_str(), ev["seq"].as_u64())
                else {
                    return Err(Failure::new(
                        "harness.bad_event",
                        format!("ack without ids: {ev}"),
                    ));
                };
                if self.acks.insert(cmid.to_string(), seq).is_some() {
                    return Err(Failure::new("harness.duplicate_ack", format!("{ev}")));
                }
            }
            "message" => {
                self.same_conversation(ev)?;
                let m = &ev["message"];
                if m["from"].as_str() != Some("agent") {
                    return Ok(());
                }
                if self.ended {
                    return Err(Failure::new(
                        "harness.message_after_end",
                        format!("agent message after conversation.ended: {m}"),
                    ));
                }
                let text = m["text"].as_str().unwrap_or_default();
                let (Some(n), Some(seq), Some(sent)) =
                    (tag_of(text), replied_seq_of(text), stamp_of(text))
                else {
                    // Not one of this run's agents (e.g. the broker's own
                    // --sim-agents took the conversation): the harness cannot
                    // time or match the reply, so the run cannot count it.
                    return Err(Failure::new(
                        "harness.foreign_reply",
                        format!("a reply not from this run's agents: {text:?}"),
                    ));
                };
                self.ctx.stats.record_since(Lat::AgentToCustomer, sent);
                Counters::inc(&self.ctx.stats.c.agent_to_customer);
                if self.replies.insert(n, seq).is_some() {
                    return Err(Failure::new(
                        "harness.duplicate_reply",
                        format!("second reply to #{n}: {text:?}"),
                    ));
                }
            }
            "conversation.ended" => {
                self.same_conversation(ev)?;
                if self.ended {
                    return Err(Failure::new("harness.duplicate_end", format!("{ev}")));
                }
                self.ended = true;
            }
            "error" => {
                return Err(Failure::new(
                    ev["code"].as_str().unwrap_or("error_without_code"),
                    format!(
                        "{} (ref {})",
                        ev["message"].as_str().unwrap_or_default(),
                        ev["ref"]
                    ),
                ));
            }
            // history (empty for a new session), agent.joined, typing, and newer events.
            _ => {}
        }
        Ok(())
    }

    /// Every event of one conversation must name the same conversation id.
    fn same_conversation(&mut self, ev: &Value) -> Result<(), Failure> {
        let Some(id) = ev["conversation_id"].as_str() else {
            return Ok(());
        };
        match &self.conv_id {
            None => self.conv_id = Some(id.to_string()),
            Some(known) if known != id => {
                return Err(Failure::new(
                    "harness.conversation_changed",
                    format!("event for {id} while talking in {known}: {ev}"),
                ))
            }
            Some(_) => {}
        }
        Ok(())
    }
}

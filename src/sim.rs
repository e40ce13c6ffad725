//! Simulated agents (`--sim-agents N`): a staffed contact center inside the
//! broker, for teams load-testing their SMS gateway, chatbot or CRM against
//! Switchboard.
//!
//! Each simulated agent is a real [`Agent`] actor whose desktop is a
//! [`SimDesk`] actor instead of a WebSocket session: it receives the very
//! frames a desktop would (through the same bounded [`SocketLink`]) and answers
//! with the same commands, so routing, capacity, wrap-up and delivery run
//! exactly as for people. Behaviour: accept each offer after a delay, reply to
//! each customer message after a delay, end after a number of replies, complete
//! after a wrap-up delay. Delays are drawn from exponential distributions with
//! the configured means, from a per-agent RNG seeded by `--sim-seed`, so the
//! sequence of decisions is reproducible.
//!
//! Handles: [`Push`], [`CloseSession`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::agent::{Agent, AgentProfile, Connect, FromDesk};
use crate::error::ApiError;
use crate::protocol::{Activity, AgentCommand, Author, Event, PerChannel};
use crate::wiring::Broker;
use crate::ws::{CloseSession, Push, SocketLink};

/// How simulated agents behave.
#[derive(Debug, Clone)]
pub struct SimBehaviour {
    pub capacity: u32,
    pub accept_delay: Duration,
    pub reply_delay: Duration,
    pub wrapup_delay: Duration,
    /// Replies per conversation before the agent ends it.
    pub replies: u32,
    pub disposition: String,
    pub seed: u64,
}

struct SimConversation {
    task_id: String,
    replies: u32,
    ending: bool,
}

pub struct SimDesk {
    session_id: u64,
    agent: Addr<Agent>,
    behaviour: Arc<SimBehaviour>,
    rng: SmallRng,
    conversations: HashMap<String, SimConversation>,
    backlog: usize,
    backlog_bytes: crate::ws::Backlog,
}

impl SimDesk {
    /// An exponential delay with the given mean (zero stays zero).
    fn draw(&mut self, mean: Duration) -> Duration {
        if mean.is_zero() {
            return mean;
        }
        let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        mean.mul_f64((-u.ln()).min(20.0))
    }

    fn later(&mut self, mean: Duration, ctx: &mut Context<Self>, command: AgentCommand) {
        self.later_all(mean, ctx, vec![command]);
    }

    fn reply(&mut self, conversation_id: &str, ctx: &mut Context<Self>) {
        let replies_wanted = self.behaviour.replies;
        let Some(conv) = self.conversations.get_mut(conversation_id) else {
            return;
        };
        if conv.ending {
            return;
        }
        conv.replies += 1;
        let n = conv.replies;
        let last = n >= replies_wanted;
        conv.ending = last;
        let mut commands = vec![AgentCommand::Send {
            conversation_id: conversation_id.to_owned(),
            text: format!("Reply {n}: thanks, let me check that for you."),
            attachments: Vec::new(),
            client_msg_id: None,
            canned_id: None,
            reference: None,
        }];
        if last {
            // Same turn, after the reply: End must not overtake it.
            commands.push(AgentCommand::End {
                conversation_id: conversation_id.to_owned(),
                reference: None,
            });
        }
        let reply_delay = self.behaviour.reply_delay;
        self.later_all(reply_delay, ctx, commands);
    }

    fn later_all(&mut self, mean: Duration, ctx: &mut Context<Self>, commands: Vec<AgentCommand>) {
        let delay = self.draw(mean);
        let session_id = self.session_id;
        ctx.run_later(delay, move |act, _| {
            for command in commands {
                act.agent.do_send(FromDesk {
                    session_id,
                    command,
                });
            }
        });
    }

    fn on_frame(&mut self, event: Event<'static>, ctx: &mut Context<Self>) {
        match event {
            Event::Hello { .. } => self.agent.do_send(FromDesk {
                session_id: self.session_id,
                command: AgentCommand::Activity {
                    activity: Activity::Available,
                    reference: None,
                },
            }),
            Event::TaskOffered { task, .. } => {
                let delay = self.behaviour.accept_delay;
                self.later(
                    delay,
                    ctx,
                    AgentCommand::Accept {
                        task_id: task.id.to_string(),
                        reference: None,
                    },
                );
            }
            Event::TaskAssigned { task, history, .. } => {
                let conversation_id = task.conversation_id.to_string();
                self.conversations
                    .entry(conversation_id.clone())
                    .or_insert(SimConversation {
                        task_id: task.id.to_string(),
                        replies: 0,
                        ending: false,
                    });
                let waiting = history.last().is_some_and(|m| m.from == Author::Customer);
                if waiting {
                    self.reply(&conversation_id, ctx);
                }
            }
            Event::Message {
                conversation_id,
                message,
                ..
            } if message.from == Author::Customer => {
                self.reply(&conversation_id, ctx);
            }
            Event::ConversationEnded {
                conversation_id, ..
            } => {
                if let Some(conv) = self.conversations.get_mut(&*conversation_id) {
                    conv.ending = true;
                    let task_id = conv.task_id.clone();
                    let (delay, disposition) = (
                        self.behaviour.wrapup_delay,
                        self.behaviour.disposition.clone(),
                    );
                    self.later(
                        delay,
                        ctx,
                        AgentCommand::Complete {
                            task_id,
                            disposition,
                            notes: "Handled by a simulated agent.".into(),
                            reference: None,
                        },
                    );
                }
            }
            Event::TaskCompleted { task_id, .. } | Event::TaskRescinded { task_id, .. } => {
                self.conversations.retain(|_, c| *c.task_id != *task_id);
            }
            _ => {}
        }
    }
}

impl Actor for SimDesk {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.backlog);
        self.agent.do_send(Connect {
            link: SocketLink::new(self.session_id, ctx.address(), &self.backlog_bytes, None),
            token: None,
        });
    }
}

impl Handler<Push> for SimDesk {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Context<Self>) {
        self.backlog_bytes.release(msg.0.bytes());
        for frame in msg.0 {
            // Our own frames, encoded by the broker: they always parse.
            if let Ok(event) = Event::parse(&frame) {
                self.on_frame(event, ctx);
            }
        }
    }
}

impl Handler<CloseSession> for SimDesk {
    type Result = ();

    fn handle(&mut self, _: CloseSession, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Create `count` simulated agents (`sim-00001`…) with their desks.
pub fn start(broker: &Arc<Broker>, count: usize, behaviour: SimBehaviour) -> Result<(), ApiError> {
    let behaviour = Arc::new(behaviour);
    let c = behaviour.capacity;
    for i in 0..count {
        let id = format!("sim-{:05}", i + 1);
        let profile = AgentProfile {
            id: id.as_str().into(),
            name: format!("Sim Agent {}", i + 1),
            capacity: PerChannel {
                webchat: c,
                sms: c,
                whatsapp: c,
                messenger: c,
                total: None,
            },
            skills: Vec::new(),
        };
        Agent::create(broker, profile, None)?;
        let agent = broker
            .agent(&id)
            .ok_or_else(|| ApiError::NotFound(format!("agent {id} vanished")))?
            .addr;
        let desk = SimDesk {
            session_id: crate::ws::next_session_id(),
            agent,
            behaviour: behaviour.clone(),
            rng: SmallRng::seed_from_u64(behaviour.seed.wrapping_add(i as u64)),
            conversations: HashMap::new(),
            backlog: broker.config.socket_backlog,
            backlog_bytes: crate::ws::Backlog::new(broker.config.socket_backlog_bytes),
        };
        broker.shards.start(desk);
    }
    Ok(())
}

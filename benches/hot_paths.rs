//! Micro-benchmarks of per-message work on the hot path: parsing a desktop
//! command, encoding a `message` event once for fan-out, a conversation's
//! append and fan-out, the journal codec, the channel attachment check, the
//! router's decision among 10,000 agents with a deep queue, the router's
//! decision for a freed agent with 5,000 tasks waiting in 1 or 50 queues,
//! and the offer timers' deadline queue.
//!
//! Run with `cargo bench`; each group takes a few seconds.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchboard::channel::check_attachment;
use switchboard::conversation::{ConversationEvent, ConversationState};
use switchboard::deadlines::Deadlines;
use switchboard::protocol::{
    event::Event, frame, Activity, AgentCommand, Author, ChannelKind, Customer, DeliveryStatus, Id,
    Message, PerChannel, TaskState,
};
use switchboard::router::index::{AgentIndex, Standing};
use switchboard::router::{Outcome, Pick, Policy, Queue, RoutableTask, RouterEvent, RouterState};

fn message(text: &str) -> Message {
    Message {
        id: "m_1f".into(),
        conversation_id: "cv_1f".into(),
        seq: 7,
        from: Author::Customer,
        agent_id: None,
        text: text.into(),
        attachments: vec![],
        created_at: SystemTime::now(),
        status: DeliveryStatus::Accepted,
        client_msg_id: Some("c-123".into()),
    }
}

fn frames(c: &mut Criterion) {
    let send = r#"{"type":"send","conversation_id":"cv_1f","text":"Thanks, I can help with that order.","client_msg_id":"x-17","ref":"r9"}"#;
    c.bench_function("parse agent send command", |b| {
        b.iter(|| AgentCommand::parse(black_box(send)).expect("valid"))
    });
    // The baseline of the line above, same run: serde's internally tagged
    // enum, which buffers every field before it reads `type`.
    c.bench_function("parse agent send command (tagged enum)", |b| {
        b.iter(|| serde_json::from_str::<AgentCommand>(black_box(send)).expect("valid"))
    });
    let m = message("Hello, my order 4411 has not arrived yet, can you check?");
    c.bench_function("encode message event once", |b| {
        b.iter(|| {
            Event::Message {
                conversation_id: black_box(&m.conversation_id).clone(),
                message: Cow::Borrowed(black_box(&m)),
                reference: Some(Cow::Borrowed("r9")),
            }
            .frame()
        })
    });
    // An agent's send: the frame for the customer and the echo with the
    // command's `ref`, encoded once; against encoding both.
    let id: Id = m.conversation_id.clone();
    c.bench_function("agent send: message and echo frames", |b| {
        b.iter(|| Event::message_frames(black_box(&id), black_box(&m), Some("r9")))
    });
    c.bench_function("agent send: message and echo frames (encoded twice)", |b| {
        b.iter(|| {
            let frame = |reference: Option<&str>| {
                Event::Message {
                    conversation_id: black_box(&id).clone(),
                    message: Cow::Borrowed(black_box(&m)),
                    reference: reference.map(Cow::Borrowed),
                }
                .frame()
            };
            (frame(None), frame(Some("r9")))
        })
    });
}

/// A message arriving in an assigned conversation with some history: the
/// state change (one event applied), the `message` event encoded once, and
/// the frame handed to the agent's socket and two customer tabs (reference
/// counted, not re-encoded).
fn conversation(c: &mut Criterion) {
    let now = SystemTime::now();
    let mut state = ConversationState {
        task_state: TaskState::Assigned,
        agent_id: Some("alice".into()),
        agent_name: Some("Alice".into()),
        messages: (0..20).map(|_| message("earlier message")).collect(),
        history_bytes: 20 * "earlier message".len() as u64,
        ..ConversationState::new(
            "cv_1f".into(),
            "tk_1f".into(),
            ChannelKind::Webchat,
            Customer {
                address: "wc_1f".into(),
                name: "Dana".into(),
            },
            "default".into(),
            now,
        )
    };
    let incoming = message("Hello, my order 4411 has not arrived yet, can you check?");
    c.bench_function("conversation: append + encode once + fan out to 3", |b| {
        b.iter(|| {
            let mut m = incoming.clone();
            m.seq = state.messages.len() as u64 + 1;
            state.apply(ConversationEvent::MessageAppended(m));
            let appended = state.messages.last().expect("just appended");
            let f = frame(&serde_json::json!({
                "type": "message",
                "conversation_id": &state.id,
                "message": appended,
            }));
            let out = [f.clone(), f.clone(), f];
            // Keep the history at a steady length.
            state.messages.pop();
            black_box(out)
        })
    });
}

fn journal(c: &mut Criterion) {
    let ev = ConversationEvent::MessageAppended(message("Where is my parcel?"));
    c.bench_function("journal encode MessageAppended", |b| {
        b.iter(|| switchboard::codec::encode(black_box(&ev)).expect("encodes"))
    });
    let bytes = switchboard::codec::encode(&ev).expect("encodes");
    c.bench_function("journal decode MessageAppended", |b| {
        b.iter(|| {
            switchboard::codec::decode::<ConversationEvent>(black_box(&bytes)).expect("decodes")
        })
    });
}

fn attachments(c: &mut Criterion) {
    c.bench_function("whatsapp attachment check", |b| {
        b.iter(|| {
            check_attachment(
                ChannelKind::Whatsapp,
                black_box("application/pdf"),
                black_box(2_000_000),
                25 << 20,
            )
        })
    });
}

/// The router's decision with 10,000 eligible agents: pick the best agent
/// (most free capacity, longest idle), then re-key it with one less free slot,
/// as an offer does.
fn routing(c: &mut Criterion) {
    let mut index = AgentIndex::default();
    let ids: Vec<Id> = (0..10_000)
        .map(|i| Id::from(format!("agent-{i:05}")))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        index.update(id, [Some(5), Some(3), None, None], standing(i as u64));
    }
    let mut tick = 10_000u64;
    c.bench_function("route: pick best of 10k agents and re-key it", |b| {
        b.iter(|| {
            let best = index
                .best(ChannelKind::Webchat, Policy::MostFreeCapacity, |_| true)
                .expect("someone is free");
            tick += 1;
            // Keep the population steady: the chosen agent rejoins at the back.
            index.update(&best, [Some(5), Some(3), None, None], standing(tick));
            black_box(best)
        })
    });
    let declined: Vec<Id> = ids.iter().take(50).cloned().collect();
    c.bench_function("route: pick skipping 50 declined agents", |b| {
        b.iter(|| {
            index.best(ChannelKind::Webchat, Policy::MostFreeCapacity, |id| {
                !declined.contains(id)
            })
        })
    });
    // A deep queue: 10,000 tasks waiting in arrival order. One dispatch takes
    // the oldest, picks and re-keys an agent; the task rejoins at the back so
    // the queue stays deep.
    let mut queue: BTreeMap<u64, Id> = (0..10_000u64)
        .map(|i| (i, Id::from(format!("tk_{i:05}"))))
        .collect();
    let mut next_order = 10_000u64;
    c.bench_function("route: oldest of 10k queued to best of 10k agents", |b| {
        b.iter(|| {
            let (_, task) = queue.pop_first().expect("queue is deep");
            let best = index
                .best(ChannelKind::Webchat, Policy::MostFreeCapacity, |_| true)
                .expect("someone is free");
            tick += 1;
            index.update(&best, [Some(5), Some(3), None, None], standing(tick));
            next_order += 1;
            queue.insert(next_order, task);
            black_box(best)
        })
    });
}

fn standing(tick: u64) -> Standing {
    Standing {
        last_offer: tick,
        idle_since: tick,
        busy: false,
    }
}

fn waiting_task(n: u64, queue: &str, priority: u8, created_at: SystemTime) -> RoutableTask {
    RoutableTask {
        task_id: Id::from(format!("tk_{n:07}")),
        conversation_id: Id::from(format!("cv_{n:07}")),
        channel: ChannelKind::Webchat,
        skills: Vec::new().into(),
        customer: Customer {
            address: format!("wc_{n}"),
            name: "Dana".into(),
        },
        queue: queue.to_owned(),
        priority,
        created_at,
        entered_queue_at: created_at,
        relaxed: false,
        order: n,
        enqueued_at: Instant::now(),
        declined: Vec::new(),
        offered_before: false,
        handoff: Default::default(),
    }
}

/// The router's whole decision when capacity frees, with 10,000 agents all
/// busy and 5,000 tasks waiting: in one queue (`default`, no skills), and
/// across 50 queues (each needing its own skill, mixed priorities and
/// policies; every agent has the skills of 5 queues). One iteration: an
/// agent's task closes, the router finds the best waiting task across the
/// queues that agent serves, `pick`s its agent and offers it; a new task
/// arrives in the same queue, so 5,000 keep waiting.
fn queue_routing(c: &mut Criterion) {
    for queues in [1usize, 50] {
        let mut s = RouterState::new(1);
        let names: Vec<String> = (0..queues)
            .map(|q| {
                if queues == 1 {
                    "default".to_owned()
                } else {
                    format!("q{q:02}")
                }
            })
            .collect();
        if queues > 1 {
            for (q, name) in names.iter().enumerate() {
                let mut queue = Queue::named(name);
                queue.skills = vec![format!("s{q:02}")];
                queue.priority = (q % 5 * 10) as u8;
                queue.policy = Policy::ALL[q % 3];
                s.apply(RouterEvent::QueueUpserted { queue });
            }
        }
        let start = SystemTime::now();
        let agents: Vec<Id> = (0..10_000)
            .map(|i| Id::from(format!("agent-{i:05}")))
            .collect();
        let mut holds: Vec<Id> = Vec::new();
        for (i, id) in agents.iter().enumerate() {
            let skills = if queues > 1 {
                (0..5)
                    .map(|k| format!("s{:02}", (i + k * 7) % 50))
                    .collect()
            } else {
                Vec::new()
            };
            s.apply(RouterEvent::AgentUpserted {
                id: id.clone(),
                name: id.to_string(),
                capacity: PerChannel {
                    webchat: 1,
                    ..PerChannel::default()
                },
                skills,
            });
            s.apply(RouterEvent::PresenceChanged {
                id: id.clone(),
                connected: true,
            });
            s.apply(RouterEvent::ActivityChanged {
                id: id.clone(),
                activity: Activity::Available,
            });
            let held = Id::from(format!("held_{i:05}"));
            s.apply(RouterEvent::AssignedDirect {
                task_id: held.clone(),
                agent_id: id.clone(),
                channel: ChannelKind::Webchat,
                customer: Customer {
                    address: format!("c{i}"),
                    name: "C".into(),
                },
                queue: "default".into(),
                at: start,
            });
            holds.push(held);
        }
        let mut next = 0u64;
        for t in 0..5_000u64 {
            let q = (t as usize) % queues;
            let created = start - Duration::from_millis(5_000 - t);
            s.apply(RouterEvent::Enqueued {
                task: waiting_task(next, &names[q], (q % 5 * 10) as u8, created),
                clock_at: created,
            });
            next += 1;
        }
        assert_eq!(s.waiting_len(), 5_000);
        let cooldown = Duration::from_secs(30);
        let mut turn = 0usize;
        let name =
            format!("route: freed agent gets best of 5k waiting in {queues} queue(s), 10k agents");
        c.bench_function(&name, |b| {
            b.iter(|| {
                let i = turn % agents.len();
                turn += 1;
                let agent = &agents[i];
                s.apply(RouterEvent::Closed {
                    task_id: holds[i].clone(),
                    at: start,
                    outcome: Outcome::Completed,
                    clock_at: start,
                });
                let (best, _) = s.best_task_for(agent, start, cooldown);
                let task_id = best.expect("the agent serves a queue with waiting tasks");
                let task = s.waiting_task(&task_id).expect("waiting");
                let queue = task.queue.clone();
                let priority = task.priority;
                let to = match s.pick(task, start, cooldown) {
                    Pick::Agent(a) => a,
                    other => panic!("nobody for {task_id}: {other:?}"),
                };
                s.apply(RouterEvent::Offered {
                    task_id: task_id.clone(),
                    agent_id: to,
                    offer: next,
                });
                holds[i] = task_id;
                s.apply(RouterEvent::Enqueued {
                    task: waiting_task(next, &queue, priority, start),
                    clock_at: start,
                });
                next += 1;
                black_box(&holds[i]);
            })
        });
    }
}

/// The router's offer timeouts with 15,000 offers pending: one offer made
/// (deadline set) and one accepted (deadline cancelled).
fn offer_timers(c: &mut Criterion) {
    let start = Instant::now();
    let mut timers: Deadlines<u64, u64> = Deadlines::default();
    for i in 0..15_000u64 {
        timers.insert(i, start + Duration::from_millis(i), i);
    }
    let mut next = 15_000u64;
    c.bench_function("offer timers: set one, cancel one, 15k pending", |b| {
        b.iter(|| {
            timers.insert(next, start + Duration::from_millis(next), next);
            let cancelled = timers.remove(&(next - 15_000));
            next += 1;
            black_box(cancelled)
        })
    });
}

criterion_group!(
    benches,
    frames,
    conversation,
    journal,
    attachments,
    routing,
    queue_routing,
    offer_timers
);
criterion_main!(benches);

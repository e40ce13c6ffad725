//! Micro-benchmarks of per-message work on the hot path: parsing a desktop
//! command, encoding a `message` event once for fan-out, a conversation's
//! append and fan-out, the journal codec, the channel attachment check, the
//! router's decision among 10,000 agents with a deep queue, and the offer
//! timers' deadline queue.
//!
//! Run with `cargo bench`; each group takes a few seconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchboard::channel::check_attachment;
use switchboard::conversation::{ConversationEvent, ConversationState};
use switchboard::deadlines::Deadlines;
use switchboard::protocol::{
    frame, AgentCommand, Author, ChannelKind, Customer, DeliveryStatus, Id, Message, TaskState,
};
use switchboard::router::index::AgentIndex;

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
        b.iter(|| serde_json::from_str::<AgentCommand>(black_box(send)).expect("valid"))
    });
    let m = message("Hello, my order 4411 has not arrived yet, can you check?");
    c.bench_function("encode message event once", |b| {
        b.iter(|| {
            frame(&serde_json::json!({
                "type": "message",
                "conversation_id": black_box(&m.conversation_id),
                "message": black_box(&m),
            }))
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
        id: "cv_1f".into(),
        task_id: "tk_1f".into(),
        channel: ChannelKind::Webchat,
        customer: Customer {
            address: "wc_1f".into(),
            name: "Dana".into(),
        },
        business: None,
        skills: vec![],
        queue: "default".into(),
        priority: 0,
        previous: None,
        last_customer_at: None,
        created_at: now,
        ended_at: None,
        task_state: TaskState::Assigned,
        agent_id: Some("alice".into()),
        agent_name: Some("Alice".into()),
        disposition: None,
        notes: None,
        messages: (0..20).map(|_| message("earlier message")).collect(),
        history_bytes: 20 * "earlier message".len() as u64,
        history_full: false,
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
        index.update(id, [Some(5), Some(3), None, None], i as u64);
    }
    let mut tick = 10_000u64;
    c.bench_function("route: pick best of 10k agents and re-key it", |b| {
        b.iter(|| {
            let best = index
                .best(ChannelKind::Webchat, |_| true)
                .expect("someone is free");
            tick += 1;
            // Keep the population steady: the chosen agent rejoins at the back.
            index.update(&best, [Some(5), Some(3), None, None], tick);
            black_box(best)
        })
    });
    let declined: Vec<Id> = ids.iter().take(50).cloned().collect();
    c.bench_function("route: pick skipping 50 declined agents", |b| {
        b.iter(|| index.best(ChannelKind::Webchat, |id| !declined.contains(id)))
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
                .best(ChannelKind::Webchat, |_| true)
                .expect("someone is free");
            tick += 1;
            index.update(&best, [Some(5), Some(3), None, None], tick);
            next_order += 1;
            queue.insert(next_order, task);
            black_box(best)
        })
    });
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
    offer_timers
);
criterion_main!(benches);

//! Micro-benchmarks of per-message work on the hot path: parsing a desktop
//! command, encoding a `message` event once for fan-out, the journal codec,
//! and the channel attachment check.
//!
//! Run with `cargo bench`; each group takes a few seconds.

use std::time::SystemTime;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchboard::channel::check_attachment;
use switchboard::conversation::ConversationEvent;
use switchboard::protocol::{
    frame, AgentCommand, Author, ChannelKind, DeliveryStatus, Id, Message,
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
}

criterion_group!(benches, frames, journal, attachments, routing);
criterion_main!(benches);

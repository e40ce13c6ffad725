//! Recovery: how long replaying the journal takes, and how long a restart
//! takes until the broker serves.
//!
//! - `replay 1,000,000 records`: a journal of realistic records (20,000
//!   webchat conversations, each opened, queued, offered, accepted, 40
//!   messages, ended, closed and completed), read back by `Journal::open`
//!   and applied with `recovery::replay_state` (decode and apply, the code
//!   every start and the snapshot compactor run).
//! - `restart to serving, 100,000 conversations in the snapshot`: a data
//!   dir whose snapshot holds 100,000 conversations (half waiting, half
//!   assigned to 100 agents, two messages each); the time from starting a
//!   broker on it (`server::spawn`) until `GET /healthz` answers.
//!
//! Run with `cargo bench --bench recovery`. Building each data dir takes a
//! while before the measurements start; the sample size is the smallest
//! criterion accepts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard::channel::webchat::WebchatEvent;
use switchboard::config::Config;
use switchboard::conversation::{ConversationEvent, ConversationState};
use switchboard::journal::record::RecordRef;
use switchboard::journal::{Fsync, Journal, JournalConfig, JournalError};
use switchboard::profile::AgentProfile;
use switchboard::protocol::{
    Activity, Author, ChannelKind, Customer, DeliveryStatus, Id, Message, PerChannel, TaskState,
};
use switchboard::router::{Outcome, RoutableTask, RouterEvent};
use switchboard::snapshot::ReplaySettings;

const AGENTS: u64 = 100;

fn at(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600) + Duration::from_millis(secs)
}

fn encode(r: RecordRef<'_>) -> Vec<u8> {
    switchboard::codec::encode(&r).expect("encode")
}

fn agent(n: u64) -> Id {
    format!("agent-{n}").as_str().into()
}

/// Each agent created, with a token, available.
fn agent_records(out: &mut Vec<Vec<u8>>) {
    for n in 0..AGENTS {
        let id = agent(n);
        let capacity = PerChannel {
            webchat: 100_000,
            ..Default::default()
        };
        out.push(encode(RecordRef::AgentCreated {
            profile: &AgentProfile {
                id: id.clone(),
                name: format!("Agent {n}"),
                capacity,
                skills: vec![],
            },
            token: &format!("token-{n:032}"),
            expires_at: None,
        }));
        out.push(encode(RecordRef::Router(&RouterEvent::AgentUpserted {
            id: id.clone(),
            name: format!("Agent {n}"),
            capacity,
            skills: vec![],
        })));
        out.push(encode(RecordRef::Router(&RouterEvent::ActivityChanged {
            id,
            activity: Activity::Available,
        })));
    }
}

/// One conversation's records: opened and queued, then (if `assign`)
/// offered and accepted, `messages` messages, and (if `finish`) ended,
/// closed and completed.
fn conversation_records(out: &mut Vec<Vec<u8>>, i: u64, assign: bool, messages: u64, finish: bool) {
    let conv: Id = format!("conv-{i}").as_str().into();
    let task: Id = format!("task-{i}").as_str().into();
    let session: Id = format!("sess-{i}").as_str().into();
    let customer = Customer {
        address: session.to_string(),
        name: format!("Customer {i}"),
    };
    out.push(encode(RecordRef::Webchat(&WebchatEvent::SessionCreated {
        id: session.clone(),
        token: format!("session-token-{i:024}"),
        name: customer.name.clone(),
        skills: vec![],
        queue: None,
        client_ip: None,
    })));
    out.push(encode(RecordRef::ConversationOpened(
        &ConversationState::new(
            conv.clone(),
            task.clone(),
            ChannelKind::Webchat,
            customer.clone(),
            "default".into(),
            at(i),
        ),
    )));
    out.push(encode(RecordRef::Webchat(
        &WebchatEvent::ConversationOpened {
            session: session.clone(),
            conversation: conv.clone(),
        },
    )));
    out.push(encode(RecordRef::Router(&RouterEvent::Enqueued {
        task: RoutableTask {
            task_id: task.clone(),
            conversation_id: conv.clone(),
            channel: ChannelKind::Webchat,
            skills: Arc::from(Vec::new()),
            customer,
            queue: "default".into(),
            priority: 0,
            created_at: at(i),
            entered_queue_at: at(i),
            relaxed: false,
            order: i,
            enqueued_at: Instant::now(),
            declined: vec![],
            offered_before: false,
            handoff: Default::default(),
        },
        clock_at: at(i),
    })));
    let who = agent(i % AGENTS);
    if assign {
        out.push(encode(RecordRef::Router(&RouterEvent::Offered {
            task_id: task.clone(),
            agent_id: who.clone(),
            offer: i,
        })));
        out.push(encode(RecordRef::Router(&RouterEvent::Accepted {
            task_id: task.clone(),
            clock_at: at(i),
        })));
        out.push(encode(RecordRef::Conversation {
            id: &conv,
            event: &ConversationEvent::TaskMoved {
                state: TaskState::Assigned,
                agent_id: Some(who.clone()),
                agent_name: Some("Agent".into()),
            },
        }));
    }
    for seq in 1..=messages {
        let from_agent = assign && seq % 2 == 0;
        out.push(encode(RecordRef::Conversation {
            id: &conv,
            event: &ConversationEvent::MessageAppended(Message {
                id: format!("msg-{i}-{seq}"),
                conversation_id: conv.clone(),
                seq,
                from: if from_agent {
                    Author::Agent
                } else {
                    Author::Customer
                },
                agent_id: from_agent.then(|| who.clone()),
                text: format!("message {seq} of conversation {i}: a line of ordinary chat text"),
                attachments: vec![],
                created_at: at(i + seq),
                status: DeliveryStatus::Sent,
                client_msg_id: (!from_agent).then(|| format!("c-{seq}")),
            }),
        }));
    }
    if finish {
        out.push(encode(RecordRef::Conversation {
            id: &conv,
            event: &ConversationEvent::Ended { at: at(i + 100) },
        }));
        out.push(encode(RecordRef::Router(&RouterEvent::Wrapping {
            task_id: task.clone(),
            clock_at: at(i + 100),
        })));
        out.push(encode(RecordRef::Conversation {
            id: &conv,
            event: &ConversationEvent::Completed {
                disposition: "resolved".into(),
                notes: String::new(),
                at: at(i + 101),
            },
        }));
        out.push(encode(RecordRef::Router(&RouterEvent::Closed {
            task_id: task,
            at: at(i + 101),
            outcome: Outcome::Completed,
            clock_at: at(i + 101),
        })));
    }
}

fn append_all(j: &Journal, records: &[Vec<u8>]) {
    for r in records {
        loop {
            match j.append(r) {
                Ok(_) => break,
                Err(JournalError::Unavailable { .. }) => std::thread::yield_now(),
                Err(e) => panic!("append: {e}"),
            }
        }
    }
}

fn replay(c: &mut Criterion) {
    let mut records = Vec::new();
    agent_records(&mut records);
    let mut i = 0;
    while records.len() < 1_000_000 {
        conversation_records(&mut records, i, true, 40, true);
        i += 1;
    }
    records.truncate(1_000_000);
    let n = records.len() as u64;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = JournalConfig {
        fsync: Fsync::Never,
        ..JournalConfig::new(dir.path())
    };
    let (j, _) = Journal::open(cfg.clone()).expect("open");
    append_all(&j, &records);
    j.close(Duration::from_secs(60)).expect("close");
    drop(records);
    let settings = ReplaySettings::of(&Config::default());

    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n));
    group.bench_function("replay 1,000,000 records (open + decode + apply)", |b| {
        b.iter(|| {
            let (j, recovered) = Journal::open(cfg.clone()).expect("open");
            assert_eq!(recovered.records.len() as u64, n);
            let state = switchboard::recovery::replay_state(&settings, None, recovered.records)
                .expect("replay");
            assert_eq!(state.records, n);
            j.close(Duration::from_secs(10)).expect("close");
        })
    });
    group.finish();
}

fn restart(c: &mut Criterion) {
    const CONVERSATIONS: u64 = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_tests();
    config.data_dir = Some(dir.path().to_owned());
    config.fsync = switchboard::config::FsyncMode::Never;
    let jcfg = config.journal().expect("journal settings");
    let (j, _) = Journal::open(jcfg).expect("open");
    let mut records = Vec::new();
    agent_records(&mut records);
    for i in 0..CONVERSATIONS {
        conversation_records(&mut records, i, i % 2 == 0, 2, false);
        if records.len() > 100_000 {
            append_all(&j, &records);
            records.clear();
        }
    }
    append_all(&j, &records);
    drop(records);
    let last = j.appended();
    j.wait_durable_blocking(last, Duration::from_secs(60))
        .expect("durable");
    let done = switchboard::compactor::compact(&j, &ReplaySettings::of(&config), None, last)
        .expect("snapshot");
    eprintln!(
        "snapshot: {CONVERSATIONS} conversations, {last} records, {} bytes",
        done.bytes
    );
    j.close(Duration::from_secs(60)).expect("close");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.bench_function(
        "restart to serving, 100,000 conversations in the snapshot",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let srv = switchboard::server::spawn(config.clone()).expect("start");
                    let url = format!("{}/healthz", srv.base_url());
                    let status = rt
                        .block_on(async { http.get(&url).send().await.expect("healthz").status() });
                    total += started.elapsed();
                    assert!(status.is_success(), "{status}");
                    srv.stop();
                }
                total
            })
        },
    );
    group.finish();
}

criterion_group!(benches, replay, restart);
criterion_main!(benches);

//! A snapshot at any Lsn, with the records after it replayed, gives the
//! state the whole journal gives: checked at every Lsn of a journal that
//! touches every part of the state, each snapshot made by the compactor
//! from the one before it.

use std::time::{Duration, SystemTime};

use super::*;
use crate::agent::AgentEvent;
use crate::canned::CannedResponse;
use crate::channel::provider::ProviderEvent;
use crate::channel::webchat::WebchatEvent;
use crate::conversation::ConversationEvent;
use crate::journal::record::RecordRef;
use crate::journal::{Journal, JournalConfig, Lsn};
use crate::profile::AgentProfile;
use crate::protocol::{
    Activity, Author, ChannelKind, Customer, DeliveryStatus, Message, PerChannel, TaskState,
};
use crate::router::{RoutableTask, RouterEvent};

fn settings() -> ReplaySettings {
    ReplaySettings {
        aging: 1,
        webhook_dedupe: 2,
        messaging_window: Duration::from_secs(3600),
    }
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn conversation(id: &str, task: &str, channel: ChannelKind, customer: &str) -> ConversationState {
    ConversationState::new(
        id.into(),
        task.into(),
        channel,
        Customer {
            address: customer.into(),
            name: customer.into(),
        },
        "default".into(),
        at(0),
    )
}

fn message(conversation: &str, seq: u64, text: &str) -> Message {
    Message {
        id: format!("m-{conversation}-{seq}"),
        conversation_id: conversation.into(),
        seq,
        from: Author::Customer,
        agent_id: None,
        text: text.into(),
        attachments: vec![],
        created_at: at(seq),
        status: DeliveryStatus::Sent,
        client_msg_id: None,
    }
}

fn task(id: &str, conversation: &str, order: u64) -> RoutableTask {
    RoutableTask {
        task_id: id.into(),
        conversation_id: conversation.into(),
        channel: ChannelKind::Webchat,
        skills: std::sync::Arc::from(Vec::new()),
        customer: Customer {
            address: format!("addr-{id}"),
            name: id.into(),
        },
        queue: "default".into(),
        priority: 0,
        created_at: at(order),
        entered_queue_at: at(order),
        relaxed: false,
        order,
        enqueued_at: std::time::Instant::now(),
        declined: vec![],
        offered_before: false,
        handoff: Default::default(),
    }
}

fn profile(id: &str) -> AgentProfile {
    AgentProfile {
        id: id.into(),
        name: id.into(),
        capacity: PerChannel::default(),
        skills: vec![],
    }
}

/// A journal's worth of records touching every part of the state.
fn records() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut put = |r: RecordRef<'_>| out.push(crate::codec::encode(&r).expect("encode"));
    let (alice, bob): (Id, Id) = ("alice".into(), "bob".into());
    put(RecordRef::AgentCreated {
        profile: &profile("alice"),
        token: "token-1",
        expires_at: None,
    });
    put(RecordRef::AgentCreated {
        profile: &profile("bob"),
        token: "token-b",
        expires_at: Some(at(99)),
    });
    for event in [
        RouterEvent::AgentUpserted {
            id: alice.clone(),
            name: "Alice".into(),
            capacity: PerChannel::default(),
            skills: vec![],
        },
        RouterEvent::PresenceChanged {
            id: alice.clone(),
            connected: true,
        },
        RouterEvent::ActivityChanged {
            id: alice.clone(),
            activity: Activity::Available,
        },
    ] {
        put(RecordRef::Router(&event));
    }
    put(RecordRef::Agent {
        id: &alice,
        event: &AgentEvent::ActivityChanged(Activity::Available),
    });
    for (c, t, n) in [("c1", "t1", 1), ("c2", "t2", 2), ("c3", "t3", 3)] {
        put(RecordRef::ConversationOpened(&conversation(
            c,
            t,
            ChannelKind::Webchat,
            &format!("s{n}"),
        )));
        put(RecordRef::Webchat(&WebchatEvent::SessionCreated {
            id: format!("s{n}").as_str().into(),
            token: format!("wt-{n}"),
            name: c.into(),
            skills: vec![],
            queue: None,
            client_ip: None,
        }));
        put(RecordRef::Webchat(&WebchatEvent::ConversationOpened {
            session: format!("s{n}").as_str().into(),
            conversation: c.into(),
        }));
        put(RecordRef::Router(&RouterEvent::Enqueued {
            task: task(t, c, n),
            clock_at: at(n),
        }));
        put(RecordRef::Conversation {
            id: &c.into(),
            event: &ConversationEvent::MessageAppended(message(c, 1, "hello")),
        });
    }
    put(RecordRef::Router(&RouterEvent::Offered {
        task_id: "t1".into(),
        agent_id: alice.clone(),
        offer: 1,
    }));
    put(RecordRef::Router(&RouterEvent::Accepted {
        task_id: "t1".into(),
        clock_at: at(10),
    }));
    put(RecordRef::Conversation {
        id: &"c1".into(),
        event: &ConversationEvent::TaskMoved {
            state: TaskState::Assigned,
            agent_id: Some(alice.clone()),
            agent_name: Some("Alice".into()),
        },
    });
    put(RecordRef::AgentTokenRotated {
        id: &alice,
        token: "token-2",
        expires_at: None,
    });
    put(RecordRef::AgentRemoved { id: &bob });
    // c2 ends, closes and leaves memory with its session.
    put(RecordRef::Conversation {
        id: &"c2".into(),
        event: &ConversationEvent::Ended { at: at(20) },
    });
    put(RecordRef::Router(&RouterEvent::Closed {
        task_id: "t2".into(),
        at: at(21),
        outcome: crate::router::Outcome::Abandoned,
        clock_at: at(21),
    }));
    put(RecordRef::Webchat(&WebchatEvent::ConversationEnded {
        session: "s2".into(),
        conversation: "c2".into(),
    }));
    put(RecordRef::ConversationForgotten { id: &"c2".into() });
    put(RecordRef::Webchat(&WebchatEvent::ConversationForgotten {
        session: "s2".into(),
        conversation: "c2".into(),
    }));
    put(RecordRef::Webchat(&WebchatEvent::SessionForgotten {
        session: "s2".into(),
    }));
    // An SMS thread with three webhook ids (two remembered) and a send.
    put(RecordRef::ConversationOpened(&conversation(
        "c4",
        "t4",
        ChannelKind::Sms,
        "+1555",
    )));
    for event in [
        ProviderEvent::CustomerWrote {
            customer: "+1555".into(),
            business: "+1000".into(),
            name: "Dana".into(),
            at: at(30),
        },
        ProviderEvent::ConversationOpened {
            customer: "+1555".into(),
            business: "+1000".into(),
            conversation: "c4".into(),
        },
        ProviderEvent::WebhookApplied {
            provider_id: "SM1".into(),
            customer: "+1555".into(),
        },
        ProviderEvent::WebhookApplied {
            provider_id: "SM2".into(),
            customer: "+1555".into(),
        },
        ProviderEvent::WebhookApplied {
            provider_id: "SM3".into(),
            customer: "+1555".into(),
        },
        ProviderEvent::MessageSent {
            provider_id: "SMout".into(),
            conversation: "c4".into(),
            message_id: "m-c4-2".into(),
        },
    ] {
        put(RecordRef::Provider {
            channel: ChannelKind::Sms,
            event: &event,
        });
    }
    let greet = CannedResponse {
        id: "greet".into(),
        title: "Greet".into(),
        text: "Hi".into(),
        queue: None,
    };
    put(RecordRef::Canned(&CannedEvent::Saved(greet.clone())));
    put(RecordRef::Canned(&CannedEvent::Saved(CannedResponse {
        id: "bye".into(),
        ..greet
    })));
    put(RecordRef::Canned(&CannedEvent::Deleted {
        id: "bye".into(),
    }));
    for id in ["evt_1", "evt_2", "evt_3"] {
        put(RecordRef::WebhookQueued {
            url: "http://hooks",
            id,
            lane: 7,
            body: b"{}",
            at: at(9),
        });
    }
    put(RecordRef::WebhookDone {
        url: "http://hooks",
        id: "evt_2",
    });
    put(RecordRef::Conversation {
        id: &"c3".into(),
        event: &ConversationEvent::MessageAppended(message("c3", 2, "still here")),
    });
    put(RecordRef::WebhookDone {
        url: "http://hooks",
        id: "evt_1",
    });
    out
}

/// What the state holds, in a form that compares (maps sorted).
fn fingerprint(s: &BrokerState) -> String {
    let mut conversations: Vec<String> = s
        .conversations
        .values()
        .map(|c| {
            format!(
                "{} {:?} {:?} {:?}",
                c.id,
                c.task_state,
                c.agent_id,
                c.messages
                    .iter()
                    .map(|m| (m.seq, m.text.clone()))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    conversations.sort();
    let mut agents: Vec<String> = s
        .agents
        .iter()
        .map(|(id, a)| {
            let mut tasks: Vec<&Id> = a.state.task_ids().collect();
            tasks.sort();
            format!(
                "{id} {} {:?} {:?} {:?}",
                a.token, a.expires_at, a.state.activity, tasks
            )
        })
        .collect();
    agents.sort();
    let mut sessions: Vec<String> = s
        .webchat
        .latest()
        .map(|(id, c)| format!("{id} {c:?}"))
        .collect();
    sessions.sort();
    let router = &s.router;
    let mut tasks: Vec<String> = router
        .task_states()
        .into_iter()
        .map(|(id, state, agent)| format!("{id} {state:?} {agent:?}"))
        .collect();
    tasks.sort();
    let sms = s
        .providers
        .get(&ChannelKind::Sms)
        .map(|p| {
            format!(
                "{} {:?} {:?}",
                p.threads(),
                p.latest("+1555", "+1000"),
                p.sent_ids()
            )
        })
        .unwrap_or_default();
    format!(
        "conversations {conversations:?}\nagents {agents:?}\nsessions {sessions:?}\n\
         tasks {tasks:?} waiting {}\nsms {sms}\ncanned {:?}\nwebhooks {:?}\nrecords {}",
        router.waiting_len(),
        s.canned.keys().collect::<Vec<_>>(),
        s.webhooks.pending_ids().collect::<Vec<_>>(),
        s.records
    )
}

#[test]
fn a_snapshot_at_any_lsn_then_the_rest_gives_the_whole_journals_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, _) = Journal::open(JournalConfig::new(dir.path())).expect("open");
    let records = records();
    for r in &records {
        journal.append(r).expect("append");
    }
    let n = journal.appended();
    journal
        .wait_durable_blocking(n, Duration::from_secs(10))
        .expect("durable");
    let all: Vec<(Lsn, Vec<u8>)> = (1..).zip(records.iter().cloned()).collect();
    let whole = crate::recovery::replay_state(&settings(), None, all.clone()).expect("replay");
    let expected = fingerprint(&whole);
    // The journal's story shows in the state.
    assert!(expected.contains("alice token-2"), "{expected}");
    assert!(!expected.contains("bob"), "{expected}");
    assert!(
        !expected.contains("c2"),
        "a forgotten conversation: {expected}"
    );
    assert!(expected.contains("t1 Assigned"), "{expected}");
    assert!(
        expected.contains(r#"webhooks [("http://hooks", "evt_3")]"#),
        "deliveries not done: {expected}"
    );
    assert!(
        expected.contains("sms 1 Some(\"c4\") [\"SMout\"]"),
        "{expected}"
    );

    for lsn in 1..n {
        let done = crate::compactor::compact(&journal, &settings(), None, lsn).expect("compact");
        assert_eq!((done.from, done.lsn), (lsn - 1, lsn));
        let snapshot = journal.read_snapshot().expect("read").expect("a snapshot");
        assert_eq!(snapshot.0, lsn);
        let rest = all[lsn as usize..].to_vec();
        let state =
            crate::recovery::replay_state(&settings(), Some(snapshot), rest).expect("replay");
        assert_eq!(
            fingerprint(&state),
            expected,
            "from the snapshot at Lsn {lsn}"
        );
    }
    // The webhook ids kept are the newest `webhook_dedupe`, in order.
    let sms = whole.providers.get(&ChannelKind::Sms).expect("sms");
    assert_eq!(sms.seen_ids(), ["SM2", "SM3"]);
    journal.close(Duration::from_secs(5)).expect("close");
}

#[test]
fn a_snapshot_is_refused_at_or_before_the_newest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, _) = Journal::open(JournalConfig::new(dir.path())).expect("open");
    for r in records().iter().take(5) {
        journal.append(r).expect("append");
    }
    journal
        .wait_durable_blocking(5, Duration::from_secs(10))
        .expect("durable");
    crate::compactor::compact(&journal, &settings(), None, 4).expect("compact");
    let err = crate::compactor::compact(&journal, &settings(), None, 4).unwrap_err();
    assert!(
        err.to_string().contains("not after the newest snapshot"),
        "{err}"
    );
    let err = crate::compactor::compact(&journal, &settings(), None, 9).unwrap_err();
    assert!(err.to_string().contains("Lsn 9"), "{err}");
    journal.close(Duration::from_secs(5)).expect("close");
}

#[test]
fn files_whose_bytes_are_gone_leave_the_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut state = BrokerState::new(&settings());
    for id in ["kept", "swept"] {
        state.apply(
            Record::AttachmentStored {
                meta: crate::protocol::AttachmentMeta {
                    id: id.into(),
                    filename: format!("{id}.png"),
                    content_type: "image/png".into(),
                    size: 3,
                    url: String::new(),
                    error: None,
                },
                uploader: crate::attachments::Uploader::Admin,
                quota: None,
                at: at(1),
            },
            &settings(),
        );
    }
    std::fs::write(dir.path().join("kept"), b"abc").expect("write");
    state.drop_missing_files(dir.path());
    assert_eq!(state.attachments.keys().collect::<Vec<_>>(), ["kept"]);
}

#[test]
fn only_conversations_a_crash_left_unstarted_are_dropped() {
    let s = settings();
    let mut state = BrokerState::new(&s);
    let opened = |id: &str, channel, customer: &str| {
        Record::ConversationOpened(Box::new(conversation(id, id, channel, customer)))
    };
    for session in ["s1", "s2"] {
        state.apply(
            Record::Webchat(WebchatEvent::SessionCreated {
                id: session.into(),
                token: "t".into(),
                name: "Ann".into(),
                skills: vec![],
                queue: None,
                client_ip: None,
            }),
            &s,
        );
    }
    // Webchat: "named" is s1's, "lost" never named, "talked" never named
    // but with a message (something after the lost record survived: not
    // the crash this is about), "outbound" s2's and held by the router for
    // the agent who started it.
    for (id, session) in [
        ("named", "s1"),
        ("lost", "s1"),
        ("talked", "s1"),
        ("outbound", "s2"),
    ] {
        state.apply(opened(id, ChannelKind::Webchat, session), &s);
    }
    for (session, conversation) in [("s1", "named"), ("s2", "outbound")] {
        state.apply(
            Record::Webchat(WebchatEvent::ConversationOpened {
                session: session.into(),
                conversation: conversation.into(),
            }),
            &s,
        );
    }
    state.apply(
        Record::Conversation {
            id: "talked".into(),
            event: ConversationEvent::MessageAppended(message("talked", 1, "hi")),
        },
        &s,
    );
    state.apply(
        Record::Router(RouterEvent::AssignedDirect {
            task_id: "outbound".into(),
            agent_id: "alice".into(),
            channel: ChannelKind::Webchat,
            customer: Customer {
                address: "s2".into(),
                name: "Ann".into(),
            },
            queue: "default".into(),
            at: at(1),
        }),
        &s,
    );
    // SMS: "thread" its thread names, "orphan" no thread does.
    for id in ["thread", "orphan"] {
        state.apply(opened(id, ChannelKind::Sms, "+1555"), &s);
    }
    state.apply(
        Record::Provider {
            channel: ChannelKind::Sms,
            event: ProviderEvent::ConversationOpened {
                customer: "+1555".into(),
                business: "+1000".into(),
                conversation: "thread".into(),
            },
        },
        &s,
    );
    let drops = state.unstarted_conversations();
    let mut forgotten: Vec<String> = drops
        .iter()
        .filter_map(|r| match r {
            Record::ConversationForgotten { id } => Some(id.to_string()),
            _ => None,
        })
        .collect();
    forgotten.sort();
    assert_eq!(forgotten, ["lost", "orphan", "outbound"]);
    for record in drops {
        state.apply(record, &s);
    }
    let mut left: Vec<&Id> = state.conversations.keys().collect();
    left.sort();
    assert_eq!(
        left,
        [&Id::from("named"), &Id::from("talked"), &Id::from("thread")]
    );
    // The outbound one's session no longer leads to it; s1 still leads to
    // its conversation.
    let latest: std::collections::BTreeMap<String, Option<String>> = state
        .webchat
        .latest()
        .map(|(s, c)| (s.to_string(), c.map(|c| c.to_string())))
        .collect();
    assert_eq!(latest["s1"].as_deref(), Some("named"));
    assert_eq!(latest["s2"], None);
    assert!(state.unstarted_conversations().is_empty(), "all dropped");
}

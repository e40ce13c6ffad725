//! Any bytes where a state-change event record is read back (the journal's
//! replay): the first byte picks the event type, the rest is decoded. A
//! decoded event must encode to the same bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::agent::AgentEvent;
use switchboard::channel::provider::ProviderEvent;
use switchboard::channel::webchat::WebchatEvent;
use switchboard::codec;
use switchboard::conversation::ConversationEvent;
use switchboard::router::RouterEvent;

fn check<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8]) {
    if let Ok(event) = codec::decode::<T>(bytes) {
        let again = codec::encode(&event).expect("a decoded event encodes");
        let back = codec::decode::<T>(&again).expect("an encoded event decodes");
        assert_eq!(codec::encode(&back).expect("encodes"), again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => check::<RouterEvent>(rest),
        1 => check::<ConversationEvent>(rest),
        2 => check::<AgentEvent>(rest),
        3 => check::<WebchatEvent>(rest),
        _ => check::<ProviderEvent>(rest),
    }
});

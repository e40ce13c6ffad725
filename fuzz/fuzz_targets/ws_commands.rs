//! Any text frame a desk or a customer socket can send: the command parsers
//! and the `ref` salvage used to answer a frame that does not parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::{salvage_ref, AgentCommand, CustomerCommand};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = serde_json::from_str::<AgentCommand>(text);
    let _ = serde_json::from_str::<CustomerCommand>(text);
    let _ = salvage_ref(text);
});

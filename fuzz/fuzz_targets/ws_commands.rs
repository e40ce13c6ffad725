//! Any text frame a desk or a customer socket can send: the command parsers
//! (each against its tagged enum) and the `ref` salvage used to answer a frame that does not parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::{salvage_ref, AgentCommand, CustomerCommand};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The sockets' parsers (a fast path for `send` and `message`), which
    // must read and refuse exactly what the tagged enums do.
    let agent = AgentCommand::parse(text).map(|c| format!("{c:?}"));
    let enum_agent = serde_json::from_str::<AgentCommand>(text).map(|c| format!("{c:?}"));
    assert_eq!(
        agent.map_err(|e| e.to_string()),
        enum_agent.map_err(|e| e.to_string())
    );
    let customer = CustomerCommand::parse(text).map(|c| format!("{c:?}"));
    let enum_customer = serde_json::from_str::<CustomerCommand>(text).map(|c| format!("{c:?}"));
    assert_eq!(
        customer.map_err(|e| e.to_string()),
        enum_customer.map_err(|e| e.to_string())
    );
    let _ = salvage_ref(text);
});

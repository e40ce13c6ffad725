//! Any JSON body a WhatsApp Cloud API or Messenger webhook can carry (after
//! its signature checked out).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::channel::{messenger, whatsapp};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = whatsapp::parse(&body, "graph-token");
    let _ = whatsapp::graph_reason(&body);
    let _ = messenger::parse(&body);
});

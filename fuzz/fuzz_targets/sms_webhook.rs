//! Any form body a Twilio-style SMS webhook can carry (after its signature
//! checked out): inbound messages and status callbacks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::channel::sms;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else {
        return;
    };
    let _ = sms::parse_inbound(&params, "AC00000000000000000000000000000000", "auth-token");
    let _ = sms::parse_status(&params);
    let _ = sms::signature(
        "https://broker.example/v1/channels/sms/webhook",
        &params,
        "auth-token",
    );
});

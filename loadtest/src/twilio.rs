//! Playing Twilio: the request signature (`X-Twilio-Signature`), the inbound
//! webhook's form as Twilio sends it, status callbacks, and the phone numbers
//! the harness gives its SMS customers.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Twilio's settings, shared by the harness and the broker under test.
#[derive(Debug, Clone)]
pub struct TwilioCfg {
    pub account_sid: String,
    pub auth_token: String,
    /// The business number customers write to (`To`).
    pub from: String,
    /// The broker's public base URL, which Twilio signs over.
    pub public_url: String,
    /// The sink's base URL (`SWITCHBOARD_TWILIO_API_BASE`).
    pub api_base: String,
}

impl TwilioCfg {
    /// The environment a broker needs so that it talks to this harness.
    pub fn env_line(&self) -> String {
        format!(
            "SWITCHBOARD_TWILIO_API_BASE={} SWITCHBOARD_TWILIO_ACCOUNT_SID={} \
             SWITCHBOARD_TWILIO_AUTH_TOKEN={} SWITCHBOARD_SMS_FROM={} SWITCHBOARD_PUBLIC_URL={}",
            self.api_base, self.account_sid, self.auth_token, self.from, self.public_url
        )
    }

    /// The public URL of a broker path, as Twilio would call (and sign) it.
    pub fn public(&self, path: &str) -> String {
        format!("{}{path}", self.public_url.trim_end_matches('/'))
    }
}

/// Base64(HMAC-SHA1(auth token, url + each parameter name and value, sorted by
/// name)). Twilio sorts by name only; equal names keep their value order.
pub fn signature(url: &str, params: &[(String, String)], auth_token: &str) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A 34-character Twilio-style id: `prefix` + 32 hex digits from `n` and `salt`.
pub fn sid(prefix: &str, salt: u64, n: u64) -> String {
    format!("{prefix}{salt:016x}{n:016x}")
}

/// The form of an inbound SMS webhook, in the order Twilio sends it.
pub fn inbound_form(
    cfg: &TwilioCfg,
    message_sid: &str,
    from: &str,
    body: &str,
) -> Vec<(String, String)> {
    pairs(&[
        ("ToCountry", "US"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("SmsSid", message_sid),
        ("SmsStatus", "received"),
        ("Body", body),
        ("To", &cfg.from),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", &cfg.account_sid),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ])
}

/// The form of a status callback for a message the broker sent.
pub fn status_form(
    cfg: &TwilioCfg,
    message_sid: &str,
    to: &str,
    status: &str,
) -> Vec<(String, String)> {
    pairs(&[
        ("SmsSid", message_sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", to),
        ("MessageSid", message_sid),
        ("AccountSid", &cfg.account_sid),
        ("From", &cfg.from),
        ("ApiVersion", "2010-04-01"),
    ])
}

/// A 4-digit tag of a run, so that agents tell this run's SMS customers from
/// others and two runs do not share phone numbers.
pub fn run_tag(run_id: &str) -> u32 {
    // FNV-1a, stable across processes and builds.
    let mut h: u32 = 0x811c_9dc5;
    for b in run_id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 10_000
}

/// `+19TTTT` + 8 digits: the E.164 number of SMS customer `idx` of the run
/// with tag `tag` (15 characters, 14 digits).
pub fn customer_number(tag: u32, idx: usize) -> String {
    format!("+19{tag:04}{idx:08}")
}

/// What every customer number of the run starts with.
pub fn number_prefix(tag: u32) -> String {
    format!("+19{tag:04}")
}

/// The customer index of a number made by [`customer_number`] for this tag.
#[cfg(test)]
pub fn number_index(tag: u32, number: &str) -> Option<usize> {
    number.strip_prefix(&number_prefix(tag))?.parse().ok()
}

/// E.164: a plus and 7 to 15 digits.
pub fn valid_e164(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (7..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

/// Checks an HTTP Basic `Authorization` header against the account.
pub fn basic_auth_ok(header: Option<&str>, cfg: &TwilioCfg) -> bool {
    let Some(b64) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    raw == format!("{}:{}", cfg.account_sid, cfg.auth_token).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_twilio_documentation_example() {
        // Twilio's documented example (auth token 12345), whose signature is
        // published as 0/KCTR6DLpKmkAf8muzZqo1nDgQ=; checked with openssl too.
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            signature(
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params,
                "12345"
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn signature_matches_openssl_for_the_channels_doc_example() {
        // printf '%s' "${URL}Body""Where is my order?""From""+15551230000""MessageSid""SM0001"\
        //   "NumMedia""0""To""+15550001111" | openssl dgst -sha1 -hmac secret-token -binary | base64
        let params = pairs(&[
            ("MessageSid", "SM0001"),
            ("From", "+15551230000"),
            ("To", "+15550001111"),
            ("Body", "Where is my order?"),
            ("NumMedia", "0"),
        ]);
        assert_eq!(
            signature(
                "https://chat.example.com/v1/channels/sms/inbound",
                &params,
                "secret-token"
            ),
            "5mauCX0zSCOgjVJn5xmmEm9ppkY="
        );
    }

    #[test]
    fn numbers_round_trip() {
        let tag = run_tag("abc-123");
        assert!(tag < 10_000);
        assert_eq!(run_tag("abc-123"), tag);
        let n = customer_number(tag, 4_242);
        assert_eq!(n.len(), 15);
        assert!(n.starts_with(&number_prefix(tag)));
        assert_eq!(number_index(tag, &n), Some(4_242));
        assert_eq!(number_index((tag + 1) % 10_000, &n), None);
        assert_eq!(sid("SM", 1, 2).len(), 34);
        assert!(valid_e164(&n));
        assert!(!valid_e164("15550001111"));
    }

    #[test]
    fn basic_auth() {
        let cfg = TwilioCfg {
            account_sid: "AC1".into(),
            auth_token: "tok".into(),
            from: "+15550001111".into(),
            public_url: "http://127.0.0.1:1".into(),
            api_base: "http://127.0.0.1:2".into(),
        };
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AC1:tok")
        );
        assert!(basic_auth_ok(Some(&good), &cfg));
        assert!(!basic_auth_ok(Some("Basic QUMxOng="), &cfg));
        assert!(!basic_auth_ok(None, &cfg));
        assert!(cfg
            .env_line()
            .contains("SWITCHBOARD_PUBLIC_URL=http://127.0.0.1:1"));
    }
}

//! The signed pre-chat context: how a site's own backend, not the customer's
//! browser, says what a webchat customer's conversations need.
//!
//! A browser can send anything, so `POST /v1/webchat/sessions` takes no
//! routing attributes from it. A site that knows its customer (logged in,
//! a VIP, a language) has its backend write a small JSON object and sign it
//! with the broker's `webchat_context_secret`; the widget passes both along
//! unchanged:
//!
//! ```text
//! context           = {"skills":["vip"],"name":"Dana","exp":1767225600}
//! context_signature = hex(HMAC-SHA256(webchat_context_secret, context))
//! ```
//!
//! The signature covers the exact bytes of `context` (a string, so no
//! re-encoding can change them); `exp` (Unix seconds) bounds how long a
//! context leaked from a page can be replayed. Checked in constant time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// Most skills a context may name.
pub const MAX_SKILLS: usize = 20;
/// Longest skill name, in characters.
pub const MAX_SKILL_CHARS: usize = 64;

/// What a verified context sets on the session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreChat {
    /// Skills an agent must have to be offered the customer's conversations.
    #[serde(default)]
    pub skills: Vec<String>,
    /// The customer's name, as the site knows it (wins over the widget's).
    #[serde(default)]
    pub name: Option<String>,
    /// Unix seconds after which the context is refused.
    pub exp: u64,
}

/// The hex signature of `context` under `secret`: what a site's backend
/// computes (here for tests and embedders).
pub fn sign(secret: &str, context: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(context.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Check a context's signature (`bad_signature` if wrong or expired at
/// `now`), then its content (`bad_request`).
pub fn verify(
    secret: &str,
    context: &str,
    signature: &str,
    now: SystemTime,
) -> Result<PreChat, ApiError> {
    let given = hex::decode(signature.trim()).map_err(|_| {
        ApiError::BadSignature("context_signature must be the hex HMAC-SHA256 of context".into())
    })?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(context.as_bytes());
    if mac.verify_slice(&given).is_err() {
        return Err(ApiError::BadSignature(
            "context_signature does not match context".into(),
        ));
    }
    let pre: PreChat = serde_json::from_str(context).map_err(|e| {
        ApiError::BadRequest(format!("context is not a valid pre-chat context: {e}"))
    })?;
    let expires = UNIX_EPOCH + Duration::from_secs(pre.exp);
    if now > expires {
        return Err(ApiError::BadSignature(format!(
            "the context expired at {}",
            humantime::format_rfc3339_seconds(expires)
        )));
    }
    if pre.skills.len() > MAX_SKILLS {
        return Err(ApiError::BadRequest(format!(
            "context names {} skills; at most {MAX_SKILLS}",
            pre.skills.len()
        )));
    }
    if let Some(bad) = pre
        .skills
        .iter()
        .find(|s| s.is_empty() || s.chars().count() > MAX_SKILL_CHARS)
    {
        return Err(ApiError::BadRequest(format!(
            "context skill {bad:?} must be 1-{MAX_SKILL_CHARS} characters"
        )));
    }
    Ok(pre)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn hmac_sha256_rfc4231_vector() {
        // RFC 4231 test case 2: key "Jefe".
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_signed_fresh_context_is_taken() {
        let ctx = r#"{"skills":["vip"],"name":"Dana","exp":2000}"#;
        let pre = verify(KEY, ctx, &sign(KEY, ctx), at(1000)).unwrap();
        assert_eq!(pre.skills, ["vip"]);
        assert_eq!(pre.name.as_deref(), Some("Dana"));
    }

    #[test]
    fn tampered_foreign_expired_or_malformed_contexts_are_refused() {
        let ctx = r#"{"skills":["vip"],"exp":2000}"#;
        let sig = sign(KEY, ctx);
        let code = |r: Result<PreChat, ApiError>| r.unwrap_err().code();
        let tampered = r#"{"skills":["vip"],"exp":2001}"#;
        assert_eq!(code(verify(KEY, tampered, &sig, at(1000))), "bad_signature");
        let other = sign("another-key-of-32-characters-0000", ctx);
        assert_eq!(code(verify(KEY, ctx, &other, at(1000))), "bad_signature");
        assert_eq!(code(verify(KEY, ctx, "zz", at(1000))), "bad_signature");
        let expired = verify(KEY, ctx, &sig, at(2001)).unwrap_err();
        assert_eq!(expired.code(), "bad_signature");
        assert!(expired.to_string().contains("expired"), "{expired}");
        let no_exp = r#"{"skills":["vip"]}"#;
        assert_eq!(
            code(verify(KEY, no_exp, &sign(KEY, no_exp), at(1))),
            "bad_request"
        );
        let unknown = r#"{"queue_priority":9,"exp":2000}"#;
        assert_eq!(
            code(verify(KEY, unknown, &sign(KEY, unknown), at(1))),
            "bad_request"
        );
        let many = format!(r#"{{"skills":{:?},"exp":2000}}"#, vec!["s"; MAX_SKILLS + 1]);
        assert_eq!(
            code(verify(KEY, &many, &sign(KEY, &many), at(1))),
            "bad_request"
        );
    }
}

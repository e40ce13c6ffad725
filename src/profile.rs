//! An agent's profile and the rules for agent ids, names, capacities and
//! tokens: plain data and checks, shared by the agent actor, the HTTP routes
//! and the configuration file (which must not depend on the actor).

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::protocol::{Id, PerChannel};

/// Shortest agent token accepted from the configuration file.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest capacity per channel.
pub const MAX_CAPACITY: u32 = 1000;

/// An agent's editable profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentProfile {
    pub id: Id,
    pub name: String,
    pub capacity: PerChannel,
    pub skills: Vec<String>,
}

impl AgentProfile {
    /// A new agent's profile, checked: the rules of `POST /v1/agents` and of
    /// `[[agents]]` in the configuration file. The name defaults to the id.
    pub fn new(
        id: &str,
        name: Option<String>,
        capacity: PerChannel,
        skills: Vec<String>,
    ) -> Result<AgentProfile, ApiError> {
        valid_id(id)?;
        let name = name.unwrap_or_else(|| id.to_owned());
        valid_name(&name)?;
        valid_capacity(&capacity)?;
        Ok(AgentProfile {
            id: id.into(),
            name,
            capacity,
            skills,
        })
    }
}

pub fn valid_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "id must be 1-64 characters of letters, digits, '-', '_', '.', '@'".into(),
        ))
    }
}

pub fn valid_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        Err(ApiError::BadRequest("name must be 1-100 characters".into()))
    } else {
        Ok(())
    }
}

pub fn valid_capacity(c: &PerChannel) -> Result<(), ApiError> {
    if [c.webchat, c.sms, c.whatsapp, c.messenger]
        .iter()
        .any(|n| *n > MAX_CAPACITY)
    {
        Err(ApiError::BadRequest(format!(
            "capacity per channel must be at most {MAX_CAPACITY}"
        )))
    } else if c.total.is_some_and(|t| t > 4 * MAX_CAPACITY) {
        Err(ApiError::BadRequest(format!(
            "capacity.total must be at most {}",
            4 * MAX_CAPACITY
        )))
    } else {
        Ok(())
    }
}

/// A token chosen by the operator (generated ones are 32 hex characters):
/// long enough to resist guessing, and plain enough to go in a URL
/// (`?token=`) as it is.
pub fn valid_token(token: &str) -> Result<(), String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!(
            "must be at least {MIN_TOKEN_LEN} characters (this one has {})",
            token.chars().count()
        ));
    }
    if !token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    {
        return Err("use only letters, digits, '-', '_', '.' and '~' (it goes in URLs)".into());
    }
    Ok(())
}

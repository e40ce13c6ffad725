//! The broker's one error type at the client boundary, and the single place
//! where each error maps to its wire `code` and HTTP status.
//!
//! Actors return `ApiError` from their handlers; the HTTP layer turns it into
//! `{"error":{"code","message"}}` and the socket layer into an `error` frame.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::protocol::{error_frame, Frame};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("task {0} does not exist")]
    UnknownTask(String),
    #[error("{0}")]
    NotYourTask(String),
    #[error("{0}")]
    CapacityExceeded(String),
    #[error("{0}")]
    InvalidDisposition(String),
    #[error("{0}")]
    TextTooLong(String),
    #[error("{0}")]
    AttachmentNotSupported(String),
    #[error("{0}")]
    AttachmentTooLarge(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    ChannelDisabled(String),
    #[error("{0}")]
    BadSignature(String),
    #[error("{0}")]
    OutsideMessagingWindow(String),
    #[error("{0}")]
    RateLimited(String),
    /// A per-client limit (docs/security.md): `rate_limited`, with how long
    /// to wait (HTTP `Retry-After`).
    #[error("{message}")]
    RateLimitedFor {
        message: String,
        retry_after: std::time::Duration,
    },
    /// A request body slower than the minimum rate: 408, and the connection
    /// is closed.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Cluster mode: this node is a standby, which serves nothing
    /// (`docs/cluster.md`); clients belong on the active node.
    #[error("{0}")]
    Standby(String),
    #[error("{0}")]
    UriTooLong(String),
    /// Too many failed authentications from this address: `429 rate_limited`
    /// with `Retry-After` (whole seconds), whatever the token.
    #[error(
        "too many failed authentication attempts from this address; \
         retry in {retry_after} s"
    )]
    AuthThrottled { retry_after: u64 },
    /// An agent token past its lifetime (`agent_token_ttl`).
    #[error("{0}")]
    TokenExpired(String),
    /// The conversation holds `max_history_messages` or `max_history_bytes`.
    #[error("{0}")]
    HistoryFull(String),
}

impl ApiError {
    /// The snake_case code of the wire protocol.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::UnknownTask(_) => "unknown_task",
            ApiError::NotYourTask(_) => "not_your_task",
            ApiError::CapacityExceeded(_) => "capacity_exceeded",
            ApiError::InvalidDisposition(_) => "invalid_disposition",
            ApiError::TextTooLong(_) => "text_too_long",
            ApiError::AttachmentNotSupported(_) => "attachment_not_supported",
            ApiError::AttachmentTooLarge(_) => "attachment_too_large",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::InvalidState(_) => "invalid_state",
            ApiError::ChannelDisabled(_) => "channel_disabled",
            ApiError::BadSignature(_) => "bad_signature",
            ApiError::OutsideMessagingWindow(_) => "outside_messaging_window",
            ApiError::RateLimited(_) | ApiError::RateLimitedFor { .. } => "rate_limited",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Standby(_) => "standby",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::AuthThrottled { .. } => "rate_limited",
            ApiError::TokenExpired(_) => "token_expired",
            ApiError::HistoryFull(_) => "history_full",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::TextTooLong(_) => StatusCode::BAD_REQUEST,
            ApiError::AttachmentNotSupported(_) | ApiError::InvalidDisposition(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Unauthorized(_) | ApiError::TokenExpired(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NotYourTask(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::UnknownTask(_) | ApiError::ChannelDisabled(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Conflict(_)
            | ApiError::InvalidState(_)
            | ApiError::CapacityExceeded(_)
            | ApiError::HistoryFull(_) => StatusCode::CONFLICT,
            ApiError::AttachmentTooLarge(_) | ApiError::PayloadTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BadSignature(_) => StatusCode::FORBIDDEN,
            ApiError::OutsideMessagingWindow(_) => StatusCode::CONFLICT,
            ApiError::RateLimited(_)
            | ApiError::AuthThrottled { .. }
            | ApiError::RateLimitedFor { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) | ApiError::Standby(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
        }
    }

    /// The WebSocket `error` frame for this error, answering `reference`.
    /// The JSON body of its HTTP answer.
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}})
    }

    pub fn to_frame(&self, reference: Option<&str>) -> Frame {
        error_frame(self.code(), &self.to_string(), reference)
    }

    /// A request body could not be read: too slow (the minimum rate of
    /// `http::body`), or cut off.
    pub fn body(e: actix_web::error::PayloadError) -> Self {
        use actix_web::error::PayloadError;
        match e {
            PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::RequestTimeout(e.to_string())
            }
            e => ApiError::BadRequest(format!("body interrupted: {e}")),
        }
    }

    /// An actor the request needed has stopped (only during shutdown).
    pub fn mailbox(_: actix::MailboxError) -> Self {
        ApiError::Unavailable("the broker is shutting down".into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status());
        match self {
            ApiError::RateLimitedFor { retry_after, .. } => {
                // Whole seconds, rounded up: never "0", which means now.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                res.insert_header((
                    actix_web::http::header::RETRY_AFTER,
                    secs.max(1).to_string(),
                ));
            }
            ApiError::AuthThrottled { retry_after } => {
                res.insert_header((
                    actix_web::http::header::RETRY_AFTER,
                    retry_after.to_string(),
                ));
            }
            // The rest of a body too slow to read is not waited for.
            ApiError::RequestTimeout(_) => {
                res.force_close();
            }
            _ => {}
        }
        res.json(self.json_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = ApiError::UnknownTask("t9".into());
        assert_eq!(e.code(), "unknown_task");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.to_string(), "task t9 does not exist");
        let f = e.to_frame(Some("r1"));
        let v: serde_json::Value = serde_json::from_str(&f).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["ref"], "r1");
        assert_eq!(
            ApiError::AttachmentTooLarge(String::new()).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let throttled = ApiError::AuthThrottled { retry_after: 6 };
        assert_eq!(throttled.code(), "rate_limited");
        let res = throttled.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get("retry-after").unwrap(), "6");
        assert_eq!(
            ApiError::TokenExpired(String::new()).code(),
            "token_expired"
        );
    }

    /// A refusal made on the node that runs a conversation crosses to the
    /// node that answers the client, every kind of it.
    #[test]
    fn every_error_crosses_between_nodes() {
        let text = || "why".to_owned();
        let all = [
            ApiError::BadRequest(text()),
            ApiError::Unauthorized(text()),
            ApiError::Forbidden(text()),
            ApiError::NotFound(text()),
            ApiError::Conflict(text()),
            ApiError::UnknownTask(text()),
            ApiError::NotYourTask(text()),
            ApiError::CapacityExceeded(text()),
            ApiError::InvalidDisposition(text()),
            ApiError::TextTooLong(text()),
            ApiError::AttachmentNotSupported(text()),
            ApiError::AttachmentTooLarge(text()),
            ApiError::PayloadTooLarge(text()),
            ApiError::InvalidState(text()),
            ApiError::ChannelDisabled(text()),
            ApiError::BadSignature(text()),
            ApiError::OutsideMessagingWindow(text()),
            ApiError::RateLimited(text()),
            ApiError::RateLimitedFor {
                message: text(),
                retry_after: std::time::Duration::from_millis(1500),
            },
            ApiError::RequestTimeout(text()),
            ApiError::Unavailable(text()),
            ApiError::Standby(text()),
            ApiError::UriTooLong(text()),
            ApiError::AuthThrottled { retry_after: 6 },
            ApiError::TokenExpired(text()),
            ApiError::HistoryFull(text()),
        ];
        for e in all {
            let bytes = crate::codec::encode(&e).expect("encode");
            assert_eq!(crate::codec::decode::<ApiError>(&bytes).expect("decode"), e);
        }
    }

    #[test]
    fn rate_limits_say_when_to_come_back() {
        let e = ApiError::RateLimitedFor {
            message: "slow down".into(),
            retry_after: std::time::Duration::from_millis(1500),
        };
        assert_eq!(e.code(), "rate_limited");
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get("retry-after").unwrap(), "2");
        let timeout = ApiError::body(actix_web::error::PayloadError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "too slow",
        )));
        assert_eq!(timeout.code(), "request_timeout");
        assert_eq!(timeout.status(), StatusCode::REQUEST_TIMEOUT);
    }
}

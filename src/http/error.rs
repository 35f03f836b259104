//! The one mapping from failures to HTTP responses.
//!
//! Every error leaves as `{"error": {"code", "message"}}` with a stable code and the right
//! status. A client's mistake is a 4xx with a message that says what to fix; an overload is a
//! 503 with `Retry-After`; nothing internal (paths, addresses, secrets) reaches the body.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use athena_actors::distributed::QueueError;
use athena_actors::engine::AdminError;
use athena_actors::error::SubmitError;
use athena_actors::flags::FlagError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>, retry: Duration) -> Self {
        ApiError {
            retry_after: Some(retry),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(retry) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, retry.as_secs().max(1).to_string()));
        }
        response.json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

impl From<SubmitError> for ApiError {
    fn from(err: SubmitError) -> Self {
        match err {
            SubmitError::Maintenance => {
                ApiError::unavailable("maintenance", err.to_string(), Duration::from_secs(60))
            }
            SubmitError::ShuttingDown => {
                ApiError::unavailable("shutting_down", err.to_string(), Duration::from_secs(5))
            }
            SubmitError::Overloaded { retry_after, .. } => {
                ApiError::unavailable("overloaded", err.to_string(), retry_after)
            }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(err: QueueError) -> Self {
        match err {
            // The message names Redis, never its address or credentials.
            QueueError::Unavailable(_) => ApiError::unavailable(
                "queue_unavailable",
                "the job queue (Redis) is unreachable; nothing was accepted, retry later",
                Duration::from_secs(5),
            ),
            QueueError::Corrupt(cause) => {
                tracing::error!(cause = %cause, "unexpected answer from the job queue");
                ApiError::internal()
            }
        }
    }
}

impl From<FlagError> for ApiError {
    fn from(err: FlagError) -> Self {
        match err {
            FlagError::Unknown(_) => ApiError::not_found("unknown_flag", err.to_string()),
            FlagError::InvalidValue { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_flag_value", err.to_string())
            }
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::UnknownService(_) => {
                ApiError::not_found("unknown_service", err.to_string())
            }
            AdminError::UnknownProvider(_) => {
                ApiError::not_found("unknown_provider", err.to_string())
            }
            AdminError::Invalid(_) => ApiError::bad_request(err.to_string()),
            AdminError::Unavailable(_) => {
                ApiError::unavailable("unavailable", err.to_string(), Duration::from_secs(5))
            }
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(err: actix::MailboxError) -> Self {
        tracing::error!(cause = %err, "engine actor unreachable");
        ApiError::unavailable(
            "unavailable",
            "the engine is not accepting requests",
            Duration::from_secs(5),
        )
    }
}

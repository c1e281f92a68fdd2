//! The one place where errors become HTTP status codes and JSON error bodies:
//! `{"error": "<human message>", "code": "<stable code>", "field": "<name>"}`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use tasklane_domain::{BoxError, ServiceError};
use utoipa::ToSchema;

/// An error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A message for people.
    #[schema(example = "Task not found")]
    pub error: String,
    /// A stable code for programs.
    #[schema(example = "task_not_found")]
    pub code: &'static str,
    /// The offending field (or header), on 422 responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("Task not found")]
    TaskNotFound,
    #[error("Not found")]
    RouteNotFound,
    #[error("Method not allowed")]
    MethodNotAllowed { allow: &'static str },
    #[error("The task was changed since the version given in If-Match")]
    PreconditionFailed,
    #[error("This Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("A request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyKeyInFlight,
    #[error("The request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("The request body took too long to arrive")]
    RequestTimeout,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("The service is temporarily unavailable; retry shortly")]
    Unavailable(#[source] BoxError),
    #[error("Internal server error")]
    Internal(#[source] BoxError),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::TaskNotFound => "task_not_found",
            ApiError::RouteNotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PreconditionFailed => "precondition_failed",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound => ApiError::TaskNotFound,
            ServiceError::PreconditionFailed => ApiError::PreconditionFailed,
            ServiceError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            ServiceError::IdempotencyKeyInFlight => ApiError::IdempotencyKeyInFlight,
            ServiceError::Unavailable(e) => ApiError::Unavailable(e),
            ServiceError::Unexpected(e) => ApiError::Internal(e),
        }
    }
}

/// The request header that makes a create idempotent, as error bodies name it.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How long a client should wait before retrying a 503 or a 409 for a key in flight.
pub const RETRY_AFTER_SECS: &str = "1";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TaskNotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut res = HttpResponse::build(status);
        match self {
            ApiError::MethodNotAllowed { allow } => {
                res.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            // The first request is still running: a retry soon gets its answer.
            ApiError::Unavailable(_) | ApiError::IdempotencyKeyInFlight => {
                res.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS));
            }
            ApiError::RequestTimeout => {
                res.insert_header((header::CONNECTION, "close"));
            }
            _ => {}
        }
        let mut res = res.json(ErrorBody {
            error: self.to_string(),
            code: self.code(),
            field: match self {
                ApiError::Validation { field, .. } => Some(field.clone()),
                ApiError::IdempotencyKeyReused => Some(IDEMPOTENCY_KEY.to_owned()),
                _ => None,
            },
        });
        // The body is opaque; the cause goes to the log line the request middleware writes
        // for every 5xx, beside the request id.
        if let ApiError::Unavailable(cause) | ApiError::Internal(cause) = self {
            res.extensions_mut().insert(FailureCause {
                error: cause.to_string(),
                detail: format!("{cause:?}"),
            });
        }
        res
    }
}

/// Why a request got a 5xx, kept on the response for the log (see `telemetry`).
#[derive(Debug, Clone)]
pub struct FailureCause {
    /// The error's message.
    pub error: String,
    /// Its debug form, with the chain of sources.
    pub detail: String,
}

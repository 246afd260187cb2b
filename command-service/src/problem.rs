//! The one place where errors become HTTP answers: RFC 7807 `application/problem+json` bodies
//! with a stable `type` per kind of problem.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::batcher::{CommitError, SubmitError};
use crate::order::{CommandError, FieldError};

/// Everything a command handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("the request has invalid values")]
    Invalid(Vec<FieldError>),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the content type must be application/json")]
    UnsupportedMediaType,
    #[error("the write queue is full; retry shortly")]
    Saturated,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the event could not be committed to Kafka: {0}")]
    Commit(#[from] CommitError),
    #[error("no answer from Kafka within {0:?}")]
    CommitTimeout(std::time::Duration),
    #[error("the event could not be encoded: {0}")]
    Encode(#[source] shared_events::WireError),
    #[error("`{0}` is not a valid order id: {1}")]
    BadId(String, String),
    #[error("{0}")]
    BadHeader(&'static str),
    #[error("order {0} does not exist")]
    UnknownOrder(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", match current {
        Some(version) => format!("If-Match does not match the order's ETag \"{version}\""),
        None => "If-Match needs an existing order".to_owned(),
    })]
    PreconditionFailed { current: Option<i64> },
    #[error("this Idempotency-Key was already used for a different request")]
    KeyReused,
    #[error("{0}; retry shortly")]
    Busy(&'static str),
    #[error("no such route")]
    NoRoute,
    #[error("this route answers {0} only")]
    MethodNotAllowed(&'static str),
    #[error("Content-Encoding `{0}` is not supported: send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("the request body did not arrive within the request timeout")]
    BodyTimeout,
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Malformed(detail) => Self::Malformed(detail),
            CommandError::Invalid(fields) => Self::Invalid(fields),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Full => Self::Saturated,
            SubmitError::Closed => Self::ShuttingDown,
        }
    }
}

impl ApiError {
    /// The stable problem type and title of each kind.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Malformed(_) => ("malformed-request", "Malformed request"),
            Self::Invalid(_) => ("invalid-values", "Invalid values"),
            Self::TooLarge { .. } => ("body-too-large", "Body too large"),
            Self::UnsupportedMediaType => ("unsupported-media-type", "Unsupported media type"),
            Self::Saturated => ("saturated", "Too many requests"),
            Self::ShuttingDown => ("shutting-down", "Service shutting down"),
            Self::Commit(_) | Self::CommitTimeout(_) => {
                ("kafka-unavailable", "Event not committed")
            }
            Self::Encode(_) => ("schema-registry-unavailable", "Event not encoded"),
            Self::BadId(..) => ("invalid-id", "Invalid order id"),
            Self::BadHeader(_) => ("invalid-header", "Invalid header"),
            Self::UnknownOrder(_) => ("order-not-found", "Order not found"),
            Self::Conflict(_) => ("rule-violated", "Command not allowed"),
            Self::PreconditionFailed { .. } => ("version-mismatch", "Version mismatch"),
            Self::KeyReused => ("idempotency-key-reused", "Idempotency key reused"),
            Self::Busy(_) => ("busy", "Busy"),
            Self::NoRoute => ("not-found", "Not found"),
            Self::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            Self::UnsupportedEncoding(_) => {
                ("unsupported-encoding", "Unsupported content encoding")
            }
            Self::BodyTimeout => ("request-timeout", "Body not received in time"),
        }
    }

    /// Seconds a client should wait before retrying, for the retryable kinds.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Saturated => Some(1),
            Self::ShuttingDown
            | Self::Commit(_)
            | Self::CommitTimeout(_)
            | Self::Encode(_)
            | Self::Busy(_) => Some(2),
            _ => None,
        }
    }
}

/// Renders a problem body.
fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: &str,
    errors: Option<&[FieldError]>,
) -> HttpResponse {
    let mut body = serde_json::json!({
        "type": format!("urn:problem-type:{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(errors) = errors {
        body["errors"] = serde_json::json!(errors);
    }
    HttpResponse::build(status)
        .content_type("application/problem+json")
        .body(body.to_string())
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Malformed(_) | Self::BadId(..) | Self::BadHeader(_) => StatusCode::BAD_REQUEST,
            Self::UnknownOrder(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType | Self::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Saturated => StatusCode::TOO_MANY_REQUESTS,
            Self::ShuttingDown
            | Self::Commit(_)
            | Self::CommitTimeout(_)
            | Self::Encode(_)
            | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "command failed");
        }
        let (kind, title) = self.kind();
        let errors = match self {
            Self::Invalid(fields) => Some(fields.as_slice()),
            _ => None,
        };
        let mut response = problem(status, kind, title, &self.to_string(), errors);
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        match self {
            Self::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::UnsupportedEncoding(_) => {
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            }
            _ => {}
        }
        response
    }
}

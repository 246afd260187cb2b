//! The one place where errors become HTTP answers: RFC 9457 `application/problem+json` bodies,
//! one row of the problem table ([`types`]) per kind of problem.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use http_edge::ProblemType;
use http_edge::body::BodyError;
use http_edge::precondition::BadIfMatch;
use shared_events::{CommandError, FieldError};

use crate::batcher::{CommitError, SubmitError};

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
    #[error("Kafka is unreachable; nothing was written")]
    KafkaUnreachable,
    #[error(
        "Kafka became unreachable while the event waited for its commit: it may yet be committed; retry with the same Idempotency-Key to learn the outcome"
    )]
    KafkaLost,
    #[error("the event could not be encoded: {0}")]
    Encode(#[source] shared_events::WireError),
    #[error("`{id}` is not a valid {aggregate} id: {reason}")]
    BadId {
        aggregate: &'static str,
        id: String,
        reason: String,
    },
    #[error("{0}")]
    BadHeader(String),
    #[error("{aggregate} {id} does not exist")]
    Unknown { aggregate: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{}", match current {
        Some(version) => format!("If-Match does not match the {aggregate}'s ETag \"{version}\""),
        None => format!("If-Match needs an existing {aggregate}"),
    })]
    PreconditionFailed {
        aggregate: &'static str,
        current: Option<i64>,
    },
    #[error("this Idempotency-Key was already used for a different request")]
    KeyReused,
    #[error(
        "an earlier command's outcome is unknown (its transaction's fate could not be learned); the service must restart and read the log before this can go on"
    )]
    OutcomeUnknown,
    #[error("{0}; retry shortly")]
    Busy(&'static str),
    #[error("this route answers {0} only")]
    MethodNotAllowed(&'static str),
    #[error("Content-Encoding `{0}` is not supported: send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("the request body did not arrive within the request timeout")]
    BodyTimeout,
    #[error("partition {partition} of `{topic}` {why}; retry shortly")]
    Handover {
        topic: String,
        partition: i32,
        why: &'static str,
    },
    #[error("the instance owning the partition ({instance}) did not answer: {reason}")]
    OwnerUnreachable { instance: String, reason: String },
    #[error(transparent)]
    Denied(#[from] http_edge::access::Denied),
    #[error("the write model store could not be read: {0}")]
    Store(#[from] crate::snapshot::SnapshotError),
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Malformed(detail) => Self::Malformed(detail),
            CommandError::Invalid(fields) => Self::Invalid(fields),
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::NotJson => Self::UnsupportedMediaType,
            BodyError::Encoded(coding) => Self::UnsupportedEncoding(coding),
            BodyError::TooLarge { limit } => Self::TooLarge { limit },
            BodyError::Timeout => Self::BodyTimeout,
            BodyError::Broken(_) => Self::Malformed(error.to_string()),
        }
    }
}

impl From<BadIfMatch> for ApiError {
    fn from(error: BadIfMatch) -> Self {
        Self::BadHeader(error.to_string())
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

/// The problem table: every kind of error this service answers with, one row each.
pub mod types {
    use actix_web::http::StatusCode;
    use http_edge::ProblemType;

    pub const MALFORMED: ProblemType = http_edge::body::problems::MALFORMED;
    pub const INVALID_ID: ProblemType =
        ProblemType::new("invalid-id", "Invalid id", StatusCode::BAD_REQUEST, None);
    pub const INVALID_HEADER: ProblemType = ProblemType::new(
        "invalid-header",
        "Invalid header",
        StatusCode::BAD_REQUEST,
        None,
    );
    pub const NOT_FOUND: ProblemType = http_edge::problem::NOT_FOUND;
    pub const AGGREGATE_NOT_FOUND: ProblemType = ProblemType::new(
        "aggregate-not-found",
        "No such aggregate",
        StatusCode::NOT_FOUND,
        None,
    );
    pub const METHOD_NOT_ALLOWED: ProblemType = http_edge::problem::METHOD_NOT_ALLOWED;
    pub const REQUEST_TIMEOUT: ProblemType = http_edge::body::problems::REQUEST_TIMEOUT;
    pub const RULE_VIOLATED: ProblemType = ProblemType::new(
        "rule-violated",
        "Command not allowed",
        StatusCode::CONFLICT,
        None,
    );
    pub const VERSION_MISMATCH: ProblemType = ProblemType::new(
        "version-mismatch",
        "Version mismatch",
        StatusCode::PRECONDITION_FAILED,
        None,
    );
    pub const BODY_TOO_LARGE: ProblemType = http_edge::body::problems::BODY_TOO_LARGE;
    pub const UNSUPPORTED_MEDIA_TYPE: ProblemType =
        http_edge::body::problems::UNSUPPORTED_MEDIA_TYPE;
    pub const UNSUPPORTED_ENCODING: ProblemType = http_edge::body::problems::UNSUPPORTED_ENCODING;
    pub const INVALID_VALUES: ProblemType = ProblemType::new(
        "invalid-values",
        "Invalid values",
        StatusCode::UNPROCESSABLE_ENTITY,
        None,
    );
    pub const IDEMPOTENCY_KEY_REUSED: ProblemType = ProblemType::new(
        "idempotency-key-reused",
        "Idempotency key reused",
        StatusCode::UNPROCESSABLE_ENTITY,
        None,
    );
    pub const SATURATED: ProblemType = ProblemType::new(
        "saturated",
        "Too many requests",
        StatusCode::TOO_MANY_REQUESTS,
        Some(1),
    );
    pub const SHUTTING_DOWN: ProblemType = ProblemType::new(
        "shutting-down",
        "Service shutting down",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(2),
    );
    pub const KAFKA_UNAVAILABLE: ProblemType = ProblemType::new(
        "kafka-unavailable",
        "Event not committed",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(2),
    );
    pub const KAFKA_UNREACHABLE: ProblemType = ProblemType::new(
        "kafka-unreachable",
        "Kafka unreachable",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(2),
    );
    pub const REGISTRY_UNAVAILABLE: ProblemType = ProblemType::new(
        "schema-registry-unavailable",
        "Event not encoded",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(2),
    );
    pub const OUTCOME_UNKNOWN: ProblemType = ProblemType::new(
        "outcome-unknown",
        "Outcome unknown",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(5),
    );
    pub const BUSY: ProblemType =
        ProblemType::new("busy", "Busy", StatusCode::SERVICE_UNAVAILABLE, Some(2));
    pub const HANDOVER: ProblemType = ProblemType::new(
        "partition-handover",
        "Partition changing owner",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(1),
    );
    pub const STORE_UNAVAILABLE: ProblemType = ProblemType::new(
        "write-model-unavailable",
        "Write model unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(2),
    );
    pub const OWNER_UNREACHABLE: ProblemType = ProblemType::new(
        "owner-unreachable",
        "Owning instance unreachable",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(2),
    );

    /// Every row, for the OpenAPI document.
    pub const ALL: &[ProblemType] = &[
        MALFORMED,
        INVALID_ID,
        INVALID_HEADER,
        NOT_FOUND,
        AGGREGATE_NOT_FOUND,
        METHOD_NOT_ALLOWED,
        REQUEST_TIMEOUT,
        RULE_VIOLATED,
        VERSION_MISMATCH,
        BODY_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE,
        UNSUPPORTED_ENCODING,
        INVALID_VALUES,
        IDEMPOTENCY_KEY_REUSED,
        SATURATED,
        SHUTTING_DOWN,
        KAFKA_UNAVAILABLE,
        KAFKA_UNREACHABLE,
        REGISTRY_UNAVAILABLE,
        OUTCOME_UNKNOWN,
        BUSY,
        HANDOVER,
        OWNER_UNREACHABLE,
        STORE_UNAVAILABLE,
        http_edge::access::problems::UNAUTHORIZED,
        http_edge::access::problems::ADMIN_DISABLED,
        http_edge::access::problems::FORBIDDEN,
    ];
}

impl ApiError {
    /// This error's row of the problem table.
    pub fn problem_type(&self) -> &'static ProblemType {
        use types::*;
        match self {
            Self::Malformed(_) => &MALFORMED,
            Self::Invalid(_) => &INVALID_VALUES,
            Self::TooLarge { .. } => &BODY_TOO_LARGE,
            Self::UnsupportedMediaType => &UNSUPPORTED_MEDIA_TYPE,
            Self::Saturated => &SATURATED,
            Self::ShuttingDown => &SHUTTING_DOWN,
            Self::Commit(_) | Self::CommitTimeout(_) | Self::KafkaLost => &KAFKA_UNAVAILABLE,
            Self::KafkaUnreachable => &KAFKA_UNREACHABLE,
            Self::Encode(_) => &REGISTRY_UNAVAILABLE,
            Self::BadId { .. } => &INVALID_ID,
            Self::BadHeader(_) => &INVALID_HEADER,
            Self::Unknown { .. } => &AGGREGATE_NOT_FOUND,
            Self::Conflict(_) => &RULE_VIOLATED,
            Self::PreconditionFailed { .. } => &VERSION_MISMATCH,
            Self::KeyReused => &IDEMPOTENCY_KEY_REUSED,
            Self::OutcomeUnknown => &OUTCOME_UNKNOWN,
            Self::Busy(_) => &BUSY,
            Self::MethodNotAllowed(_) => &METHOD_NOT_ALLOWED,
            Self::UnsupportedEncoding(_) => &UNSUPPORTED_ENCODING,
            Self::BodyTimeout => &REQUEST_TIMEOUT,
            Self::Handover { .. } => &HANDOVER,
            Self::OwnerUnreachable { .. } => &OWNER_UNREACHABLE,
            Self::Denied(denied) => denied.problem_type(),
            Self::Store(_) => &STORE_UNAVAILABLE,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.problem_type().status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem_type();
        if problem.status.is_server_error() {
            tracing::warn!(error = %self, "command failed");
        }
        let extra = match self {
            Self::Invalid(fields) => Some(serde_json::json!({ "errors": fields })),
            _ => None,
        };
        let mut response = problem.response(&self.to_string(), extra);
        let headers = response.headers_mut();
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
            Self::Denied(http_edge::access::Denied::Unauthorized) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

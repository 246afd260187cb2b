//! The one place where query errors become HTTP answers (`application/problem+json`): the
//! problem table of a query replica, and the domains' own "not found" rows.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use http_edge::ProblemType;
use shared_events::query::NotFound;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "`{0}` is not a valid id: 1 to 64 letters, digits, `.`, `_` or `-`, and not `.` or `..`"
    )]
    BadId(String),
    /// The key's owner, caught up with its partition, has no view of it.
    #[error("{detail}")]
    NotFound {
        kind: NotFound,
        detail: String,
        served_by: String,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("the Consistency-Token is invalid: {0}")]
    BadToken(&'static str),
    #[error("{0}")]
    BadQuery(String),
    #[error("position {token} was not applied within {waited:?}")]
    ConsistencyTimeout {
        token: String,
        waited: std::time::Duration,
    },
    #[error("{0}")]
    BadResume(String),
    #[error(
        "this replica has as many live streams open as it may; retry shortly, or on another replica"
    )]
    TooManyStreams,
    #[error("the admin API is disabled on this replica (no admin token configured)")]
    AdminDisabled,
    #[error("a valid `Authorization: Bearer <admin token>` header is required")]
    Unauthorized,
    #[error("the read-only admin token may read, not {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadReport(String),
    #[error("report {0} does not exist")]
    ReportNotFound(String),
    #[error("{0}")]
    ReportNotDone(String),
    #[error("{0}")]
    TooManyReports(String),
    #[error("{0}")]
    ReportsOff(String),
    #[error("this replica runs no projection `{0}`")]
    ProjectionNotFound(String),
    #[error(transparent)]
    Body(#[from] http_edge::body::BodyError),
    #[error("the local store failed")]
    Store(#[from] StoreError),
    #[error("the local store failed")]
    View(#[from] shared_events::view::ViewError),
}

/// The problem table: every kind of error a replica answers with, one row each, besides the
/// domains' "not found" rows ([`not_found`]).
pub mod types {
    use actix_web::http::StatusCode;
    use http_edge::ProblemType;

    pub const INVALID_ID: ProblemType =
        ProblemType::new("invalid-id", "Invalid id", StatusCode::BAD_REQUEST, None);
    pub const INVALID_CONSISTENCY_TOKEN: ProblemType = ProblemType::new(
        "invalid-consistency-token",
        "Invalid consistency token",
        StatusCode::BAD_REQUEST,
        None,
    );
    pub const INVALID_QUERY: ProblemType = ProblemType::new(
        "invalid-query",
        "Invalid query",
        StatusCode::BAD_REQUEST,
        None,
    );
    pub const INVALID_RESUME_ID: ProblemType = ProblemType::new(
        "invalid-resume-id",
        "Invalid resume id",
        StatusCode::BAD_REQUEST,
        None,
    );
    pub const TOO_MANY_STREAMS: ProblemType = ProblemType::new(
        "too-many-streams",
        "Too many live streams",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(5),
    );
    pub const UNAUTHORIZED: ProblemType = http_edge::access::problems::UNAUTHORIZED;
    pub const ADMIN_DISABLED: ProblemType = http_edge::access::problems::ADMIN_DISABLED;
    pub const FORBIDDEN: ProblemType = http_edge::access::problems::FORBIDDEN;
    pub const INVALID_REPORT_REQUEST: ProblemType = ProblemType::new(
        "invalid-report-request",
        "Invalid report request",
        StatusCode::BAD_REQUEST,
        None,
    );
    pub const REPORT_NOT_FOUND: ProblemType = ProblemType::new(
        "report-not-found",
        "Report not found",
        StatusCode::NOT_FOUND,
        None,
    );
    pub const REPORT_NOT_DONE: ProblemType = ProblemType::new(
        "report-not-done",
        "Report not done",
        StatusCode::CONFLICT,
        None,
    );
    pub const TOO_MANY_REPORTS: ProblemType = ProblemType::new(
        "too-many-reports",
        "Too many reports",
        StatusCode::TOO_MANY_REQUESTS,
        Some(10),
    );
    pub const REPORTS_UNAVAILABLE: ProblemType = ProblemType::new(
        "reports-unavailable",
        "Reports unavailable on this replica",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(5),
    );
    pub const PROJECTION_NOT_FOUND: ProblemType = ProblemType::new(
        "projection-not-found",
        "Projection not found",
        StatusCode::NOT_FOUND,
        None,
    );
    pub const NOT_FOUND: ProblemType = http_edge::problem::NOT_FOUND;
    pub const METHOD_NOT_ALLOWED: ProblemType = http_edge::problem::METHOD_NOT_ALLOWED;
    pub const STORE_FAILURE: ProblemType = ProblemType::new(
        "store-failure",
        "Store failure",
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
    );
    pub const TEMPORARILY_UNAVAILABLE: ProblemType = ProblemType::new(
        "temporarily-unavailable",
        "Temporarily unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(1),
    );
    pub const CONSISTENCY_TIMEOUT: ProblemType = ProblemType::new(
        "consistency-timeout",
        "Position not reached in time",
        StatusCode::SERVICE_UNAVAILABLE,
        Some(1),
    );

    /// Every row.
    pub const ALL: &[ProblemType] = &[
        INVALID_ID,
        INVALID_CONSISTENCY_TOKEN,
        INVALID_QUERY,
        INVALID_RESUME_ID,
        TOO_MANY_STREAMS,
        UNAUTHORIZED,
        ADMIN_DISABLED,
        FORBIDDEN,
        INVALID_REPORT_REQUEST,
        REPORT_NOT_FOUND,
        REPORT_NOT_DONE,
        TOO_MANY_REPORTS,
        REPORTS_UNAVAILABLE,
        PROJECTION_NOT_FOUND,
        http_edge::body::problems::MALFORMED,
        http_edge::body::problems::REQUEST_TIMEOUT,
        http_edge::body::problems::BODY_TOO_LARGE,
        http_edge::body::problems::UNSUPPORTED_MEDIA_TYPE,
        http_edge::body::problems::UNSUPPORTED_ENCODING,
        NOT_FOUND,
        METHOD_NOT_ALLOWED,
        STORE_FAILURE,
        TEMPORARILY_UNAVAILABLE,
        CONSISTENCY_TIMEOUT,
    ];
}

/// A domain's "not found" as a row of the table.
pub const fn not_found(kind: &NotFound) -> ProblemType {
    ProblemType::new(kind.code, kind.title, StatusCode::NOT_FOUND, None)
}

impl QueryError {
    /// This error's row of the problem table.
    pub fn problem_type(&self) -> ProblemType {
        use types::*;
        match self {
            Self::BadId(_) => INVALID_ID,
            Self::NotFound { kind, .. } => not_found(kind),
            Self::Unavailable(_) => TEMPORARILY_UNAVAILABLE,
            Self::BadToken(_) => INVALID_CONSISTENCY_TOKEN,
            Self::BadQuery(_) => INVALID_QUERY,
            Self::BadResume(_) => INVALID_RESUME_ID,
            Self::TooManyStreams => TOO_MANY_STREAMS,
            Self::ConsistencyTimeout { .. } => CONSISTENCY_TIMEOUT,
            Self::AdminDisabled => ADMIN_DISABLED,
            Self::Unauthorized => UNAUTHORIZED,
            Self::Forbidden(_) => FORBIDDEN,
            Self::BadReport(_) => INVALID_REPORT_REQUEST,
            Self::ReportNotFound(_) => REPORT_NOT_FOUND,
            Self::ReportNotDone(_) => REPORT_NOT_DONE,
            Self::TooManyReports(_) => TOO_MANY_REPORTS,
            Self::ReportsOff(_) => REPORTS_UNAVAILABLE,
            Self::ProjectionNotFound(_) => PROJECTION_NOT_FOUND,
            Self::Body(error) => error.problem_type(),
            Self::Store(_) | Self::View(_) => STORE_FAILURE,
        }
    }
}

impl From<http_edge::access::Denied> for QueryError {
    fn from(denied: http_edge::access::Denied) -> Self {
        use http_edge::access::Denied;
        match denied {
            Denied::Disabled => Self::AdminDisabled,
            Denied::Unauthorized => Self::Unauthorized,
            Denied::Forbidden(act) => Self::Forbidden(act),
        }
    }
}

impl ResponseError for QueryError {
    fn status_code(&self) -> StatusCode {
        self.problem_type().status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem_type();
        if problem.status.is_server_error() {
            tracing::warn!(error = %self, "query failed");
        }
        let mut response = problem.response(&self.to_string(), None);
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::NotFound { served_by, .. } => {
                if let Ok(value) = HeaderValue::from_str(served_by) {
                    headers.insert(header::HeaderName::from_static("served-by"), value);
                }
            }
            _ => {}
        }
        response
    }
}

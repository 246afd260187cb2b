//! The one place where query errors become HTTP answers (`application/problem+json`).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "`{0}` is not a valid id: 1 to 64 letters, digits, `.`, `_` or `-`, and not `.` or `..`"
    )]
    BadId(String),
    #[error("order {id} does not exist")]
    UnknownOrder { id: String, served_by: String },
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
    #[error("the admin API is disabled on this replica (no admin token configured)")]
    AdminDisabled,
    #[error("a valid `Authorization: Bearer <admin token>` header is required")]
    Unauthorized,
    #[error("the local store failed")]
    Store(#[from] StoreError),
    #[error("no such route")]
    NoRoute,
    #[error("this route answers {0} only")]
    MethodNotAllowed(&'static str),
}

impl QueryError {
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadId(_) => ("invalid-id", "Invalid id"),
            Self::UnknownOrder { .. } => ("order-not-found", "Order not found"),
            Self::Unavailable(_) => ("temporarily-unavailable", "Temporarily unavailable"),
            Self::BadToken(_) => ("invalid-consistency-token", "Invalid consistency token"),
            Self::BadQuery(_) => ("invalid-query", "Invalid query"),
            Self::ConsistencyTimeout { .. } => {
                ("consistency-timeout", "Position not reached in time")
            }
            Self::AdminDisabled => ("admin-disabled", "Admin API disabled"),
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::Store(_) => ("store-failure", "Store failure"),
            Self::NoRoute => ("not-found", "Not found"),
            Self::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
        }
    }
}

impl ResponseError for QueryError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadId(_) | Self::BadToken(_) | Self::BadQuery(_) => StatusCode::BAD_REQUEST,
            Self::UnknownOrder { .. } | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Unavailable(_) | Self::ConsistencyTimeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::AdminDisabled => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "query failed");
        }
        let (kind, title) = self.kind();
        let body = serde_json::json!({
            "type": format!("urn:problem-type:{kind}"),
            "title": title,
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        let mut response = HttpResponse::build(status)
            .content_type("application/problem+json")
            .body(body.to_string());
        let headers = response.headers_mut();
        match self {
            Self::Unavailable(_) | Self::ConsistencyTimeout { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            Self::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::UnknownOrder { served_by, .. } => {
                if let Ok(value) = HeaderValue::from_str(served_by) {
                    headers.insert(header::HeaderName::from_static("served-by"), value);
                }
            }
            _ => {}
        }
        response
    }
}

//! The one place where query errors become HTTP answers (`application/problem+json`).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("`{0}` is not a valid order id")]
    BadId(String),
    #[error("order {0} does not exist")]
    UnknownOrder(String),
    #[error("partition {partition} of `{topic}` is not assigned to this replica")]
    NotOwned { topic: String, partition: i32 },
    #[error("the topic's partition count is not known yet")]
    Starting,
    #[error("the local store failed")]
    Store(#[from] StoreError),
    #[error("no such route")]
    NoRoute,
}

impl QueryError {
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadId(_) => ("invalid-id", "Invalid id"),
            Self::UnknownOrder(_) => ("order-not-found", "Order not found"),
            Self::NotOwned { .. } => ("partition-not-owned", "Partition owned elsewhere"),
            Self::Starting => ("starting", "Replica starting"),
            Self::Store(_) => ("store-failure", "Store failure"),
            Self::NoRoute => ("not-found", "Not found"),
        }
    }
}

impl ResponseError for QueryError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadId(_) => StatusCode::BAD_REQUEST,
            Self::UnknownOrder(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NotOwned { .. } | Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
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
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
        }
        response
    }
}

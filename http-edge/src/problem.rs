//! Problem types: each kind of error a service answers with is one row of its table, in the
//! spirit of meilisearch's error codes. The code names it (the body's `type` is
//! `urn:problem-type:<code>`), the status and `Retry-After` travel with it, and the OpenAPI
//! document lists the table, so clients can rely on every row.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};

/// One kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemType {
    /// A stable, machine-readable name: `order-not-found`.
    pub code: &'static str,
    /// A short summary that does not change from one occurrence to the next.
    pub title: &'static str,
    pub status: StatusCode,
    /// Seconds a client should wait before retrying, when retrying may help.
    pub retry_after: Option<u32>,
}

impl ProblemType {
    /// A row of a problem table.
    pub const fn new(
        code: &'static str,
        title: &'static str,
        status: StatusCode,
        retry_after: Option<u32>,
    ) -> Self {
        Self {
            code,
            title,
            status,
            retry_after,
        }
    }

    /// The problem's `type` member.
    pub fn type_uri(&self) -> String {
        format!("urn:problem-type:{}", self.code)
    }

    /// The `application/problem+json` answer: `type`, `title`, `status`, `detail`, plus the
    /// members of `extra` (an object), and `Retry-After` when the row has one.
    pub fn response(&self, detail: &str, extra: Option<serde_json::Value>) -> HttpResponse {
        let mut body = serde_json::json!({
            "type": self.type_uri(),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": detail,
        });
        if let (Some(serde_json::Value::Object(members)), Some(object)) =
            (extra, body.as_object_mut())
        {
            object.extend(members);
        }
        let mut response = HttpResponse::build(self.status)
            .content_type("application/problem+json")
            .body(body.to_string());
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// No route has this path: a row every service's table shares.
pub const NOT_FOUND: ProblemType =
    ProblemType::new("not-found", "Not found", StatusCode::NOT_FOUND, None);

/// The route does not serve this method: a row every service's table shares.
pub const METHOD_NOT_ALLOWED: ProblemType = ProblemType::new(
    "method-not-allowed",
    "Method not allowed",
    StatusCode::METHOD_NOT_ALLOWED,
    None,
);

/// `405` with the `Allow` header RFC 9110 asks for.
pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response =
        METHOD_NOT_ALLOWED.response(&format!("this route answers {allow} only"), None);
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The answer for a path no route has, for an app's default service.
pub async fn not_found() -> HttpResponse {
    NOT_FOUND.response("no such route", None)
}

/// The body of every problem answer (RFC 9457), for the OpenAPI document.
#[derive(Debug, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "urn:problem-type:invalid-values",
    "title": "Invalid values",
    "status": 422,
    "detail": "the request has invalid values",
    "errors": [{"field": "items[0].quantity", "message": "must be between 1 and 10000"}]
}))]
pub struct Problem {
    /// `urn:problem-type:<code>`: one row of the service's problem table.
    pub r#type: String,
    pub title: String,
    pub status: u16,
    /// This occurrence, in words.
    pub detail: String,
    /// For invalid values: each offending field.
    pub errors: Option<Vec<ProblemField>>,
}

/// One invalid field of a request.
#[derive(Debug, utoipa::ToSchema)]
pub struct ProblemField {
    /// Where the field is in the body: `items[0].quantity`.
    pub field: String,
    pub message: String,
}

/// The table as Markdown, for the OpenAPI document's description.
pub fn markdown_table(table: &[ProblemType]) -> String {
    let mut out = String::from("| type | status | title | Retry-After |\n|---|---|---|---|\n");
    for row in table {
        let retry = row
            .retry_after
            .map_or_else(|| "—".to_owned(), |s| format!("{s} s"));
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            row.type_uri(),
            row.status.as_u16(),
            row.title,
            retry
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BUSY: ProblemType = ProblemType {
        code: "busy",
        title: "Busy",
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after: Some(2),
    };

    #[test]
    fn a_row_makes_the_whole_answer() {
        let response = BUSY.response("try later", Some(serde_json::json!({"errors": []})));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
        let table = markdown_table(&[BUSY]);
        assert!(
            table.contains("| `urn:problem-type:busy` | 503 | Busy | 2 s |"),
            "{table}"
        );
    }
}

//! The OpenAPI document at `/openapi.json` and a browsable page of it at `/docs`. The page is
//! one compiled-in HTML file that renders the document in the browser: nothing is fetched from
//! anywhere but the service itself.

use std::collections::BTreeSet;

use actix_web::{HttpResponse, web};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, ResponseBuilder};

use crate::problem::{ProblemType, markdown_table};
use crate::routes::{Route, readable};

const PAGE: &str = include_str!("../assets/docs.html");

/// The document, rendered once at start.
#[derive(Debug, Clone)]
pub struct ApiDocument(String);

impl ApiDocument {
    /// `document` with the documentation routes themselves added, so that it lists every route
    /// the service serves.
    pub fn new(mut document: OpenApi) -> Self {
        add_routes(&mut document);
        Self(document.to_pretty_json().unwrap_or_else(|e| {
            serde_json::json!({ "error": format!("the OpenAPI document does not serialise: {e}") })
                .to_string()
        }))
    }

    pub fn json(&self) -> &str {
        &self.0
    }
}

/// `GET /openapi.json`, for a service's route table.
pub const OPENAPI_ROUTE: Route = Route::fixed("/openapi.json", &["GET"], |path| {
    readable(path, openapi_json)
});

/// `GET /docs`, for a service's route table.
pub const DOCS_ROUTE: Route = Route::fixed("/docs", &["GET"], |path| readable(path, docs_page));

async fn openapi_json(document: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.json().to_owned())
}

async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

/// Every operation of a rendered document, as `(path, METHOD)`, for checking it against a
/// route table.
pub fn operations(document: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    let Some(paths) = document["paths"].as_object() else {
        return found;
    };
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                found.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    found
}

/// The status an operation of a rendered document promises on success: its lowest 2xx.
pub fn promised_status(document: &serde_json::Value, path: &str, method: &str) -> Option<u16> {
    document["paths"][path][method.to_lowercase()]["responses"]
        .as_object()?
        .keys()
        .filter_map(|status| status.parse::<u16>().ok())
        .filter(|status| (200..300).contains(status))
        .min()
}

/// Sets the document's version and appends the problem table to its description.
pub fn describe_problems(document: &mut OpenApi, version: &str, problems: &[ProblemType]) {
    document.info.version = version.to_owned();
    let intro = document.info.description.take().unwrap_or_default();
    document.info.description = Some(format!(
        "{intro}\n\nErrors are `application/problem+json` (RFC 9457). Every problem type:\n\n{}",
        markdown_table(problems)
    ));
}

/// `(path, METHOD)` of every route of a table.
pub fn table_operations(table: &[Route]) -> BTreeSet<(String, String)> {
    table
        .iter()
        .flat_map(|r| {
            r.methods
                .iter()
                .map(|m| (r.path.to_string(), (*m).to_owned()))
        })
        .collect()
}

fn add_routes(document: &mut OpenApi) {
    let get = |summary: &str, content_type: &str| {
        let ok = ResponseBuilder::new()
            .description("OK")
            .content(content_type, ContentBuilder::new().build())
            .build();
        PathItem::new(
            HttpMethod::Get,
            OperationBuilder::new()
                .summary(Some(summary))
                .tag("documentation")
                .response("200", ok)
                .build(),
        )
    };
    document.paths.paths.insert(
        "/openapi.json".to_owned(),
        get("This OpenAPI document", "application/json"),
    );
    document.paths.paths.insert(
        "/docs".to_owned(),
        get("A browsable page of this document", "text/html"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        for outside in ["http://", "https://", "//cdn", "@import"] {
            assert!(!PAGE.contains(outside), "{outside}");
        }
        assert!(PAGE.contains("/openapi.json"));
    }

    #[test]
    fn the_document_lists_its_own_routes() {
        let document = ApiDocument::new(OpenApi::default());
        let json: serde_json::Value = serde_json::from_str(document.json()).unwrap_or_default();
        assert!(json["paths"]["/openapi.json"]["get"].is_object(), "{json}");
        assert!(json["paths"]["/docs"]["get"].is_object(), "{json}");
    }
}

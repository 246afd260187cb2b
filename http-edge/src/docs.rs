//! The OpenAPI document at `/openapi.json` and a browsable page of it at `/docs`. The page is
//! one compiled-in HTML file that renders the document in the browser: nothing is fetched from
//! anywhere but the service itself.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, guard, web};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, ResponseBuilder};

use crate::problem::ProblemType;
use crate::routes::Route;

const PAGE: &str = include_str!("../assets/docs.html");

/// `405` for the two documentation routes.
const METHOD_NOT_ALLOWED: ProblemType = ProblemType {
    code: "method-not-allowed",
    title: "Method not allowed",
    status: StatusCode::METHOD_NOT_ALLOWED,
    retry_after: None,
};

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

/// The routes of this module, for a service's route table.
pub const ROUTES: [Route; 2] = [
    Route {
        path: "/openapi.json",
        methods: &["GET"],
        resource: |path| readable(path, openapi_json),
    },
    Route {
        path: "/docs",
        methods: &["GET"],
        resource: |path| readable(path, docs_page),
    },
];

fn readable<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(handler),
        )
        .default_service(web::to(|| async {
            let mut response =
                METHOD_NOT_ALLOWED.response("this route answers GET, HEAD only", None);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }))
}

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

//! The OpenAPI 3.1 document of a query replica: the operational routes from their annotations,
//! each domain's queries from the catalog, and the problem table in its description. It is
//! served at `/openapi.json` and browsable at `/docs`; tests hold it to [`crate::api::table`].

use http_edge::docs::describe_problems;
use http_edge::problem::{Problem, ProblemField};
use projection_engine::catalog::Catalog;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Query replica",
        description = "Projects the order and customer events into a local store and answers queries; every replica answers every key."
    ),
    paths(
        projection_engine::operations::admin_cluster,
        projection_engine::report::routes::submit,
        projection_engine::report::routes::list,
        projection_engine::report::routes::show,
        projection_engine::report::routes::cancel,
        projection_engine::rebuild::routes::list,
        projection_engine::rebuild::routes::show,
        projection_engine::rebuild::routes::rebuild,
        http_edge::health::live,
        projection_engine::operations::ready,
        projection_engine::operations::metrics,
    ),
    components(schemas(Problem, ProblemField)),
    tags(
        (name = "orders", description = "Order queries"),
        (name = "customers", description = "Customer queries"),
        (name = "live", description = "Live streams (Server-Sent Events) and the pages that follow them"),
        (name = "admin", description = "For operators: `Authorization: Bearer <admin token>`; the read-only token may read, not act"),
        (name = "internal", description = "Between replicas"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct Document;

/// The document for `catalog`'s queries, with the admin token's scheme and the problem table.
pub fn document(catalog: &Catalog) -> utoipa::openapi::OpenApi {
    let mut document = Document::openapi();
    if let Err(error) = catalog.document(&mut document) {
        tracing::error!(%error, "the queries' operations do not fit the document");
    }
    if let Err(error) = projection_engine::live::document(
        <crate::api::Timeline as shared_events::live::Timeline>::STREAMS,
        &mut document,
    ) {
        tracing::error!(%error, "the live streams' operations do not fit the document");
    }
    describe_problems(
        &mut document,
        env!("CARGO_PKG_VERSION"),
        &catalog.problems(),
    );
    if let Some(components) = document.components.as_mut() {
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    document
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_problem_type() {
        let catalog = crate::api::catalog();
        let json = serde_json::to_value(document(&catalog)).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let description = json["info"]["description"].as_str().unwrap();
        let problems = catalog.problems();
        for row in &problems {
            let line = format!("| `{}` | {} |", row.type_uri(), row.status.as_u16());
            assert!(description.contains(&line), "{line} missing");
        }
        for code in ["order-not-found", "customer-not-found"] {
            assert!(problems.iter().any(|row| row.code == code), "{code}");
        }
        assert_eq!(
            json["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
        for schema in ["OrderView", "Page", "CustomerAnswer", "OrdersSummary"] {
            assert!(
                json["components"]["schemas"][schema].is_object(),
                "{schema} missing"
            );
        }
    }
}

//! The OpenAPI 3.1 document of a query replica, generated from the handlers' annotations and the
//! response types, with the problem table in its description. It is served at `/openapi.json`
//! and browsable at `/docs`; tests hold it to [`crate::api::ROUTES`].

use http_edge::docs::describe_problems;
use http_edge::problem::{Problem, ProblemField};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::problem::types;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Query replica",
        description = "Projects the order and customer events into a local store and answers queries; every replica answers every key."
    ),
    paths(
        crate::api::get_order,
        crate::api::get_customer,
        crate::api::customer_summary_here,
        crate::api::customer_orders,
        crate::api::customer_orders_here,
        crate::api::admin_cluster,
        http_edge::health::live,
        crate::api::ready,
        crate::api::metrics,
    ),
    components(schemas(Problem, ProblemField)),
    tags(
        (name = "orders", description = "Order queries"),
        (name = "customers", description = "Customer queries"),
        (name = "admin", description = "For operators: `Authorization: Bearer <admin token>`"),
        (name = "internal", description = "Between replicas"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct Document;

/// The document, with the admin token's scheme and the problem table.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = Document::openapi();
    describe_problems(&mut document, env!("CARGO_PKG_VERSION"), types::ALL);
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
        let json = serde_json::to_value(document()).unwrap();
        assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
        let description = json["info"]["description"].as_str().unwrap();
        for row in types::ALL {
            let line = format!("| `{}` | {} |", row.type_uri(), row.status.as_u16());
            assert!(description.contains(&line), "{line} missing");
        }
        assert_eq!(
            json["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
    }
}

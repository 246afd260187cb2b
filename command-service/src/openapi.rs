//! The OpenAPI 3.1 document of the command service, generated from the handlers' annotations
//! and the request and response types, with the problem table in its description. It is served
//! at `/openapi.json` and browsable at `/docs`; tests hold it to [`crate::api::ROUTES`].

use http_edge::docs::describe_problems;
use http_edge::problem::{Problem, ProblemField};
use utoipa::OpenApi;

use crate::problem::types;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Command service",
        description = "Validates order commands and commits their events to Kafka; a 2xx means the event is in a committed transaction."
    ),
    paths(
        crate::api::place_order,
        crate::api::pay_order,
        crate::api::ship_order,
        crate::api::cancel_order,
        http_edge::health::live,
        crate::api::ready,
        crate::api::metrics,
    ),
    components(schemas(Problem, ProblemField)),
    tags(
        (name = "orders", description = "Order commands"),
        (name = "operations", description = "Health and metrics"),
    )
)]
struct Document;

/// The document, with the problem table appended to its description.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = Document::openapi();
    describe_problems(&mut document, env!("CARGO_PKG_VERSION"), types::ALL);
    document
}

/// The optional headers of every command.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub(crate) struct CommandHeaders {
    /// A retry with the same key returns the first answer (`Idempotent-Replayed: true`) and
    /// writes nothing; 1 to 255 visible ASCII characters.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
    /// `"<version>"`, `*` or a list of tags: the command applies only if one matches the
    /// order's `ETag` (strong comparison), else `412`.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// The problems a command may answer with; each body is a [`Problem`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
pub(crate) enum CommandProblems {
    /// Malformed JSON (a repeated key included), a bad id or a bad header.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No such order.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The body did not arrive within the request timeout.
    #[response(status = 408, content_type = "application/problem+json")]
    RequestTimeout(Problem),
    /// A rule is broken (pay only a placed order, ship only a paid one, …).
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// `If-Match` does not match the order's version.
    #[response(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Problem),
    /// The body is too large.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// Not `application/json`, or a compressed body.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// Invalid values (each named in `errors`), unknown fields, or an `Idempotency-Key` reused
    /// for another request.
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
    /// The write queue is full (with `Retry-After`).
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// Kafka or the registry unavailable, the order busy, or shutting down (with
    /// `Retry-After`); a retry with the same `Idempotency-Key` learns the outcome.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_problem_type() {
        let json = serde_json::to_value(document()).unwrap();
        assert!(
            json["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            json["openapi"]
        );
        let description = json["info"]["description"].as_str().unwrap();
        for row in types::ALL {
            let line = format!("| `{}` | {} |", row.type_uri(), row.status.as_u16());
            assert!(description.contains(&line), "{line} missing");
        }
    }

    #[test]
    fn each_request_example_parses_as_its_command() {
        use orders::commands::{CancelOrder, PayOrder, PlaceOrder, ShipOrder};
        let json = serde_json::to_value(document()).unwrap();
        let example = |schema: &str| {
            serde_json::to_vec(&json["components"]["schemas"][schema]["example"]).unwrap()
        };
        assert!(PlaceOrder::parse(&example("PlaceOrderRequest")).is_ok());
        assert!(PayOrder::parse(&example("PayOrderRequest")).is_ok());
        assert!(ShipOrder::parse(&example("ShipOrderRequest")).is_ok());
        assert!(CancelOrder::parse(&example("CancelOrderRequest")).is_ok());
    }
}

//! The OpenAPI 3.1 document of the command service: each aggregate's command operations (made
//! by [`command_engine::openapi`] from the aggregate's command specs), the operational routes,
//! and the problem table in its description. It is served at `/openapi.json` and browsable at
//! `/docs`; tests hold it to [`crate::api::table`].

use command_engine::lane::Visit;
use command_engine::problem::types;
use http_edge::docs::describe_problems;
use http_edge::problem::{Problem, ProblemField};
use shared_events::Aggregate;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::config::Config;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Command service",
        description = "Validates commands and commits their events to Kafka; a 2xx means the event is in a committed transaction."
    ),
    paths(
        http_edge::health::live,
        crate::api::ready,
        crate::api::metrics,
        crate::api::cluster
    ),
    components(schemas(Problem, ProblemField)),
    tags(
        (name = "operations", description = "Health and metrics"),
        (name = "admin", description = "The command group (admin token)")
    )
)]
struct Document;

/// The document for the aggregates `config` runs, with the problem table appended to its
/// description.
pub fn document(config: &Config) -> utoipa::openapi::OpenApi {
    struct Commands {
        document: utoipa::openapi::OpenApi,
    }
    impl Visit for Commands {
        fn aggregate<A: Aggregate>(&mut self, _topic: &str) {
            if let Err(error) = command_engine::openapi::add_commands::<A>(&mut self.document) {
                tracing::error!(%error, aggregate = A::NAME, "could not document the commands");
            }
        }
    }
    let mut commands = Commands {
        document: Document::openapi(),
    };
    crate::app::aggregates(config, &mut commands);
    let mut document = commands.document;
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
        let json = serde_json::to_value(document(&Config::defaults())).unwrap();
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

    /// Each command's documented example is a body its aggregate accepts.
    #[test]
    fn each_request_example_parses_as_its_command() {
        struct Examples(serde_json::Value, usize);
        impl Visit for Examples {
            fn aggregate<A: Aggregate>(&mut self, _topic: &str) {
                for spec in A::COMMANDS {
                    let (schema, _) = (spec.body_schema)();
                    let example = &self.0["components"]["schemas"][&schema]["example"];
                    let body = serde_json::to_vec(example).unwrap();
                    assert!(A::parse(spec.name, &body).is_ok(), "{schema}: {example}");
                    self.1 += 1;
                }
            }
        }
        let config = Config::defaults();
        let mut examples = Examples(serde_json::to_value(document(&config)).unwrap(), 0);
        crate::app::aggregates(&config, &mut examples);
        assert!(examples.1 >= 4, "every command has an example");
    }
}

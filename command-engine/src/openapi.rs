//! The OpenAPI operations of an aggregate's commands, made from its [`CommandSpec`]s: one
//! `POST` per command with its request schema and example, the success answer, the headers and
//! every problem a command may answer with. A service adds them for each aggregate it runs.

use serde_json::{Value, json};
use shared_events::{Aggregate, CommandSpec};
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::PathItem;

use crate::pipeline::path_of;

/// The problems a command may answer with, by status.
const PROBLEMS: &[(u16, &str)] = &[
    (
        400,
        "Malformed JSON (a repeated key included), a bad id or a bad header",
    ),
    (404, "No such aggregate"),
    (408, "The body did not arrive within the request timeout"),
    (409, "A rule of the aggregate's life cycle is broken"),
    (412, "`If-Match` does not match the aggregate's version"),
    (413, "The body is too large"),
    (415, "Not `application/json`, or a compressed body"),
    (
        422,
        "Invalid values (each named in `errors`), unknown fields, or an `Idempotency-Key` reused for another request",
    ),
    (429, "The write queue is full (with `Retry-After`)"),
    (
        503,
        "Kafka or the registry unavailable, the aggregate busy, or shutting down (with `Retry-After`); a retry with the same `Idempotency-Key` learns the outcome",
    ),
];

/// Adds the operations of `A`'s commands, their schemas and tag to `document`.
pub fn add_commands<A: Aggregate>(document: &mut OpenApi) -> Result<(), serde_json::Error> {
    let components = document.components.get_or_insert_with(Default::default);
    for spec in A::COMMANDS {
        let (name, schema) = (spec.body_schema)();
        components.schemas.insert(name.clone(), schema);
        let item: PathItem =
            serde_json::from_value(json!({ "post": operation::<A>(spec, &name) }))?;
        document.paths.paths.insert(path_of::<A>(spec), item);
    }
    let tag = utoipa::openapi::tag::TagBuilder::new()
        .name(A::COLLECTION)
        .description(Some(format!("Commands on {}", A::COLLECTION)))
        .build();
    document.tags.get_or_insert_with(Vec::new).push(tag);
    Ok(())
}

fn operation<A: Aggregate>(spec: &CommandSpec, schema: &str) -> Value {
    let (status, outcome) = if spec.creates() {
        ("201", "Created")
    } else {
        ("200", "Done")
    };
    let mut parameters = Vec::new();
    if !spec.creates() {
        parameters.push(json!({
            "name": "id", "in": "path", "required": true,
            "description": format!("The {} id", A::NAME),
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" }
        }));
    }
    parameters.push(json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "A retry with the same key returns the first answer (`Idempotent-Replayed: true`) and writes nothing; 1 to 255 visible ASCII characters.",
        "schema": { "type": "string" }
    }));
    parameters.push(json!({
        "name": "If-Match", "in": "header", "required": false,
        "description": format!("`\"<version>\"`, `*` or a list of tags: the command applies only if one matches the {}'s `ETag` (strong comparison), else `412`.", A::NAME),
        "schema": { "type": "string" }
    }));
    let mut headers = json!({
        "Consistency-Token": { "description": "Pass it to a query replica to read this write", "schema": { "type": "string" } },
        "ETag": { "description": format!("The {}'s version, quoted", A::NAME), "schema": { "type": "string" } }
    });
    if spec.creates() {
        headers["Location"] = json!({
            "description": format!("/{}/{{{}_id}}", A::COLLECTION, A::NAME),
            "schema": { "type": "string" }
        });
    }
    let mut responses = serde_json::Map::new();
    responses.insert(
        status.to_owned(),
        json!({
            "description": format!("{outcome}: the event is in a committed Kafka transaction"),
            "headers": headers,
            "content": { "application/json": { "schema": accepted::<A>() } }
        }),
    );
    for (code, description) in PROBLEMS {
        responses.insert(
            code.to_string(),
            json!({
                "description": description,
                "content": { "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" }
                } }
            }),
        );
    }
    json!({
        "tags": [A::COLLECTION],
        "summary": spec.summary,
        "description": "Answers only once the event is in a committed Kafka transaction.",
        "operationId": format!("{}-{}", A::NAME, spec.name),
        "parameters": parameters,
        "requestBody": {
            "required": true,
            "content": { "application/json": {
                "schema": { "$ref": format!("#/components/schemas/{schema}") }
            } }
        },
        "responses": responses,
    })
}

/// The success body of every command.
fn accepted<A: Aggregate>() -> Value {
    let id = format!("{}_id", A::NAME);
    json!({
        "type": "object",
        "required": [id, "version", "event_id", "position"],
        "properties": {
            id.clone(): { "type": "string", "description": format!("The {}'s id", A::NAME) },
            "version": { "type": "integer", "format": "int64", "description": format!("The {}'s version after this command: 1, 2, 3 …", A::NAME) },
            "event_id": { "type": "string", "description": "The id of the event the command wrote" },
            "position": {
                "type": "object",
                "description": "Where the event is in the log",
                "required": ["partition", "offset"],
                "properties": {
                    "partition": { "type": "integer", "format": "int32" },
                    "offset": { "type": "integer", "format": "int64" }
                }
            }
        }
    })
}

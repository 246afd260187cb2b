//! Live streams over Server-Sent Events, for any domain's [`Timeline`]: every replica serves
//! every stream, resumable on any replica without loss or repetition.
//!
//! How it fits together:
//! - [`tail`]: each replica tails every partition of the timeline's topics once (an assigned,
//!   read-committed consumer, not a group member), places each event into its streams, stores it
//!   under each stream with the offset it came from (one RocksDB batch, as a projection does),
//!   then hands it to the [`hub`]. However many clients follow a stream, each event is read and
//!   stored once per replica.
//! - [`hub`]: the open streams by key; an event is offered to its streams' subscribers only,
//!   each through a bounded buffer. A subscriber whose buffer is full is dropped and told where
//!   to resume.
//! - [`resume`]: a stream's position, as the SSE `id:`: for every partition its events come
//!   from, the next offset not yet delivered. Offsets are the log's, so an id taken on one
//!   replica resumes on any other, before or after a restart or a rebalance.
//! - [`stream`]: the routes: history from the store (`?from=beginning`, or after a resume id),
//!   then live from the hub, with nothing skipped or repeated at the seam; heartbeats; a
//!   `retry:` hint at shutdown; a bounded number of streams.
//! - [`page`]: a small page per stream kind that follows one stream with `EventSource`.
//!
//! [`Timeline`]: shared_events::live::Timeline

pub mod hub;
pub mod page;
pub mod resume;
pub mod stream;
pub mod tail;

use serde_json::json;
use shared_events::live::StreamSpec;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::PathItem;

/// Adds the operations of the stream routes and their pages to `document`.
pub fn document(streams: &[StreamSpec], document: &mut OpenApi) -> Result<(), serde_json::Error> {
    let problem = json!({ "application/problem+json": {
        "schema": { "$ref": "#/components/schemas/Problem" }
    } });
    let id = |description: &str| {
        json!({
            "name": "id", "in": "path", "required": true, "description": description,
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" }
        })
    };
    for spec in streams {
        let operation = json!({
            "tags": ["live"],
            "summary": spec.summary,
            "description": format!(
                "`text/event-stream`. Each message: `id:` (where to resume), `event:` the event type ({}), `data:` one JSON object with `aggregate_id`, `version`, `event_id`, `occurred_at` and the payload's fields. Starts after `Last-Event-ID`, else after `?after=`, else at the beginning with `?from=beginning`, else now; history first, then live, with nothing missed or repeated. Comments keep a quiet stream open; a client that falls a buffer behind gets a last `resume` event naming where to resume.",
                spec.event_types.join(", ")
            ),
            "parameters": [
                id("The id of the stream's aggregate"),
                { "name": "Last-Event-ID", "in": "header", "required": false,
                  "description": "The last `id:` received: resume right after it", "schema": { "type": "string" } },
                { "name": "after", "in": "query", "required": false,
                  "description": "An `id:` to resume right after", "schema": { "type": "string" } },
                { "name": "from", "in": "query", "required": false,
                  "description": "`beginning`: send the stream's history first", "schema": { "type": "string", "enum": ["beginning"] } }
            ],
            "responses": {
                "200": { "description": "The stream", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
                "400": { "description": "A bad id, resume id or parameter", "content": problem.clone() },
                "503": { "description": "Too many streams on this replica, or the tail not started (with Retry-After)", "content": problem.clone() }
            }
        });
        let item: PathItem = serde_json::from_value(json!({ "get": operation }))?;
        document.paths.paths.insert(spec.path.to_owned(), item);
        if let Some(page) = spec.page {
            let operation = json!({
                "tags": ["live"],
                "summary": format!("A page that follows {} live", spec.path),
                "parameters": [id("The id of the stream's aggregate")],
                "responses": {
                    "200": { "description": "The page", "content": { "text/html": { "schema": { "type": "string" } } } },
                    "400": { "description": "A bad id", "content": problem.clone() },
                    "503": { "description": "The tail not started (with Retry-After)", "content": problem.clone() }
                }
            });
            let item: PathItem = serde_json::from_value(json!({ "get": operation }))?;
            document.paths.paths.insert(page.to_owned(), item);
        }
    }
    Ok(())
}

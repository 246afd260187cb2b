//! A small page per stream kind that has one (`/live/orders/{id}`): it follows the stream with
//! the browser's `EventSource` from the beginning and shows each event as it arrives. It loads
//! nothing but the stream; `EventSource` reconnects on its own, resuming from the last `id:`.

use actix_web::{HttpRequest, HttpResponse, web};
use http_edge::Route;
use http_edge::routes::readable;
use shared_events::Identifier;
use shared_events::live::StreamSpec;

use super::stream::spec_of;
use super::tail::Live;
use crate::problem::QueryError;

const PAGE: &str = include_str!("../../assets/live.html");

/// The page route of every stream kind that has one.
pub fn routes(streams: &[StreamSpec]) -> Vec<Route> {
    streams
        .iter()
        .filter_map(|spec| spec.page)
        .map(|path| Route {
            path: path.into(),
            methods: &["GET"],
            resource: |path| readable(path, page),
        })
        .collect()
}

async fn page(
    request: HttpRequest,
    id: web::Path<String>,
    live: web::Data<Live>,
) -> Result<HttpResponse, QueryError> {
    let id = id.into_inner();
    if Identifier::parse(&id).is_err() {
        return Err(QueryError::BadId(id));
    }
    let spec = spec_of(&live, &request, true)
        .ok_or_else(|| QueryError::Unavailable("no such stream kind".into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(render(spec, &id)))
}

/// The page for stream `id` of kind `spec`. The id has passed the identifier rule (letters,
/// digits, `.`, `_`, `-`), so it needs no escaping in HTML or in a script string.
fn render(spec: &StreamSpec, id: &str) -> String {
    let stream = format!("{}?from=beginning", spec.path.replace("{id}", id));
    let types = serde_json::to_string(spec.event_types).unwrap_or_else(|_| "[]".into());
    PAGE.replace("{{TITLE}}", &format!("{} {id}", spec.collection))
        .replace("{{STREAM}}", &serde_json::Value::String(stream).to_string())
        .replace("{{TYPES}}", &types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_follows_its_stream_from_the_beginning() {
        let spec = StreamSpec {
            collection: "orders",
            path: "/orders/{id}/events",
            keyed_on: "orders",
            spans: &[],
            event_types: &["OrderPlaced", "OrderPaid"],
            page: Some("/live/orders/{id}"),
            summary: "",
        };
        let page = render(&spec, "o-1");
        assert!(page.contains(r#"const stream = "/orders/o-1/events?from=beginning";"#));
        assert!(page.contains(r#"const types = ["OrderPlaced","OrderPaid"];"#));
        assert!(page.contains("<title>orders o-1</title>"));
        assert!(!page.contains("{{"), "every placeholder is filled");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
    }
}

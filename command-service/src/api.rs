//! HTTP routes of the command service.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use shared_events::orders::OrderEvent;
use shared_events::{ConsistencyToken, EventCodec, Position};

use crate::batcher::Batcher;
use crate::order::{EventMetadata, PlaceOrder};
use crate::problem::ApiError;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub codec: Arc<EventCodec<OrderEvent>>,
    pub batcher: Arc<Batcher>,
    pub topic: String,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/orders", web::post().to(place_order))
        .route("/health/live", web::get().to(live));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Success body of every command.
#[derive(Debug, serde::Serialize)]
struct Accepted<'a> {
    order_id: &'a str,
    version: i64,
    event_id: &'a str,
    position: Position,
}

async fn place_order(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_json_body(&request, payload, state.max_body_bytes).await?;
    let command = PlaceOrder::parse(&body)?;
    let order_id = uuid::Uuid::now_v7().to_string();
    let metadata = EventMetadata {
        order_id: order_id.clone(),
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at_ms: now_ms(),
        command_id: header_or_new(&request, "idempotency-key"),
        correlation_id: header_or_new(&request, "x-correlation-id"),
    };
    let event = command.decide(metadata);
    let position = commit(&state, &event).await?;
    let token = ConsistencyToken {
        topic: state.topic.clone(),
        position,
    };
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/orders/{order_id}")))
        .insert_header(("Consistency-Token", token.to_string()))
        .json(Accepted {
            order_id: &order_id,
            version: event.envelope.aggregate_version,
            event_id: &event.envelope.event_id,
            position,
        }))
}

/// Encodes the event, queues it and waits (bounded) until its transaction committed.
async fn commit(state: &AppState, event: &OrderEvent) -> Result<Position, ApiError> {
    let value = state.codec.encode(event).await.map_err(ApiError::Encode)?;
    let answer = state
        .batcher
        .submit(event.envelope.aggregate_id.clone(), value)?;
    match tokio::time::timeout(state.request_timeout, answer).await {
        Ok(Ok(Ok(position))) => Ok(position),
        Ok(Ok(Err(error))) => Err(error.into()),
        // The worker dropped the request without answering: only happens when it stops.
        Ok(Err(_)) => Err(ApiError::ShuttingDown),
        Err(_) => Err(ApiError::CommitTimeout(state.request_timeout)),
    }
}

/// Reads a JSON body of at most `limit` bytes.
async fn read_json_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::Malformed(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A client-supplied id header (at most 128 visible ASCII characters), or a fresh UUID.
fn header_or_new(request: &HttpRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Answers 404 in the problem format for routes that do not exist.
pub async fn not_found() -> HttpResponse {
    crate::problem::problem(
        actix_web::http::StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such route",
        None,
    )
}

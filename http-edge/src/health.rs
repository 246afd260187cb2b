//! The liveness route every service serves the same way, and the answers of the readiness and
//! metrics routes. (What makes a service ready, and what it measures, are its own.)

use actix_web::HttpResponse;
use actix_web::http::header;

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "operations",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Alive", content_type = "application/json"))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: `200` with `body` when ready, else `503` with `body` and a `Retry-After` of
/// `retry_after` seconds. `body` gets `"status": "ready" | "not ready"`.
pub fn readiness(ready: bool, mut body: serde_json::Value, retry_after: u32) -> HttpResponse {
    if let Some(object) = body.as_object_mut() {
        let status = if ready { "ready" } else { "not ready" };
        object.insert("status".into(), status.into());
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, retry_after))
            .json(body)
    }
}

/// Metrics in the OpenMetrics text format, as Prometheus scrapes them.
pub fn openmetrics(text: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}

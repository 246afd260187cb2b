//! The liveness route every service serves the same way. (Readiness is each service's own.)

use actix_web::HttpResponse;

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

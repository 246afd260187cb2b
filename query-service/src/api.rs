//! HTTP routes of a query replica.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use shared_events::partitioner::partition_for_key;

use crate::orders::OrdersProjection;
use crate::problem::QueryError;
use crate::projection::Assignment;
use crate::store::Store;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub assignment: Arc<Assignment>,
    pub topic: String,
    pub partitions: i32,
    pub replica_id: String,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/orders/{id}", web::get().to(get_order))
        .route("/health/live", web::get().to(live));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Order ids are what the command service issues: 1..=64 characters of `[A-Za-z0-9._-]`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn get_order(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    let id = id.into_inner();
    if !valid_id(&id) {
        return Err(QueryError::BadId(id));
    }
    let partition = partition_for_key(id.as_bytes(), state.partitions);
    if !state.assignment.owns(partition) {
        return Err(QueryError::NotOwned {
            topic: state.topic.clone(),
            partition,
        });
    }
    let store = Arc::clone(&state.store);
    let lookup = id.clone();
    let view = web::block(move || OrdersProjection::read(&store, &lookup))
        .await
        .map_err(|_| QueryError::Starting)??;
    match view {
        Some(view) => Ok(HttpResponse::Ok()
            .insert_header(("Served-By", state.replica_id.as_str()))
            .json(view)),
        None => Err(QueryError::UnknownOrder(id)),
    }
}

pub async fn not_found() -> Result<HttpResponse, QueryError> {
    Err(QueryError::NoRoute)
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"));
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}

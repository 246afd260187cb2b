//! The command service's own routes (health, readiness, metrics, documentation) and the table
//! of every route it serves, commands included.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use command_engine::batcher::Batcher;
use command_engine::circuit::BrokerCircuit;
use command_engine::idempotency::IdempotencyIndex;
use command_engine::lane::{AnyLane, Visit};
use command_engine::metrics::{AggregateLabel, Metrics};
use http_edge::Route;
use http_edge::routes::readable;
use shared_events::Aggregate;

use crate::config::Config;

/// What the operational routes look at.
pub struct Operations {
    pub batcher: Arc<Batcher>,
    pub circuit: Arc<BrokerCircuit>,
    pub metrics: Arc<Metrics>,
    pub lanes: Vec<Arc<dyn AnyLane>>,
    pub idempotency: Arc<IdempotencyIndex>,
    pub registry_url: String,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations")
            .field("registry_url", &self.registry_url)
            .finish_non_exhaustive()
    }
}

/// Registers the operational routes; each aggregate's lane registers its command routes.
pub fn routes(config: &mut web::ServiceConfig) {
    http_edge::routes::register(&OPERATIONS, config);
}

/// The operational routes.
const OPERATIONS: [Route; 5] = [
    Route::fixed("/health/live", &["GET"], |path| {
        readable(path, http_edge::health::live)
    }),
    Route::fixed("/health/ready", &["GET"], |path| readable(path, ready)),
    Route::fixed("/metrics", &["GET"], |path| readable(path, metrics)),
    http_edge::docs::OPENAPI_ROUTE,
    http_edge::docs::DOCS_ROUTE,
];

/// Every route this service serves with `config`: the router is built from the same list, and
/// the OpenAPI document ([`crate::openapi`]) is held to it.
pub fn table(config: &Config) -> Vec<Route> {
    struct Commands(Vec<Route>);
    impl Visit for Commands {
        fn aggregate<A: Aggregate>(&mut self, _topic: &str) {
            self.0.extend(command_engine::pipeline::routes::<A>());
        }
    }
    let mut commands = Commands(Vec::new());
    crate::app::aggregates(config, &mut commands);
    commands.0.extend(OPERATIONS);
    commands.0
}

/// Ready when a producer is initialised, the schema registry answers and Kafka is reachable.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    summary = "Readiness: producers initialised and the schema registry reachable",
    responses(
        (status = 200, description = "Ready", content_type = "application/json"),
        (status = 503, description = "Not ready (with Retry-After)", content_type = "application/json")
    )
)]
async fn ready(state: web::Data<Operations>) -> HttpResponse {
    let producers = state.batcher.live_producers();
    let registry = state
        .http
        .get(format!(
            "{}/config",
            state.registry_url.trim_end_matches('/')
        ))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let kafka = !state.circuit.is_open();
    let ready = producers > 0 && registry && kafka;
    let body = serde_json::json!({
        "live_producers": producers,
        "registry_reachable": registry,
        "kafka_reachable": kafka,
    });
    http_edge::health::readiness(ready, body, 2)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus / OpenMetrics text",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text"))
)]
async fn metrics(state: web::Data<Operations>) -> HttpResponse {
    let m = &state.metrics;
    m.queue_depth
        .set(i64::try_from(state.batcher.queue_depth()).unwrap_or(i64::MAX));
    for lane in &state.lanes {
        let label = AggregateLabel {
            aggregate: lane.name(),
        };
        m.aggregates
            .get_or_create(&label)
            .set(i64::try_from(lane.aggregates()).unwrap_or(i64::MAX));
    }
    m.idempotency_keys
        .set(i64::try_from(state.idempotency.len()).unwrap_or(i64::MAX));
    http_edge::health::openmetrics(m.render())
}

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
use command_engine::ownership::{Membership, Standing};
use command_engine::problem::ApiError;
use http_edge::Route;
use http_edge::access::{Access, Role};
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
    pub membership: Arc<Membership>,
    pub checkpointer: Option<Arc<command_engine::checkpoint::Checkpointer>>,
    pub access: Access,
    pub instance_id: String,
    pub advertised_url: String,
    pub group_id: String,
    /// Set once this instance first had its partitions restored: a later rebalance makes
    /// commands wait a moment (`503` + `Retry-After`), not the instance unready.
    pub served: std::sync::atomic::AtomicBool,
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
const OPERATIONS: [Route; 6] = [
    Route::fixed("/health/live", &["GET"], |path| {
        readable(path, http_edge::health::live)
    }),
    Route::fixed("/health/ready", &["GET"], |path| readable(path, ready)),
    Route::fixed("/metrics", &["GET"], |path| readable(path, metrics)),
    Route::fixed("/admin/cluster", &["GET"], |path| readable(path, cluster)),
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

/// Ready when a producer is initialised, the schema registry answers, Kafka is reachable, and
/// the command group has assigned this instance its partitions and they are restored.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    summary = "Readiness: producers initialised, the schema registry reachable, partitions restored",
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
    let joined = state.membership.joined();
    let restoring: usize = state
        .lanes
        .iter()
        .map(|lane| lane.leases().with(Standing::Restoring).len())
        .sum();
    let restored =
        state.served.load(std::sync::atomic::Ordering::Relaxed) || (joined && restoring == 0);
    if restored {
        state
            .served
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let ready = producers > 0 && registry && kafka && restored;
    let body = serde_json::json!({
        "live_producers": producers,
        "registry_reachable": registry,
        "kafka_reachable": kafka,
        "joined_command_group": joined,
        "partitions_restoring": restoring,
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
        let (loads, evictions) = lane.cache_traffic();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.model_loads.get_or_create(&label).set(count(loads));
        m.model_evictions
            .get_or_create(&label)
            .set(count(evictions));
        m.restored_events
            .get_or_create(&label)
            .set(count(lane.restored()));
        m.standby_events
            .get_or_create(&label)
            .set(count(lane.warmed()));
    }
    m.idempotency_keys
        .set(i64::try_from(state.idempotency.len()).unwrap_or(i64::MAX));
    let owned: usize = state
        .lanes
        .iter()
        .map(|lane| lane.leases().with(Standing::Owned).len())
        .sum();
    m.partitions_owned
        .set(i64::try_from(owned).unwrap_or(i64::MAX));
    if let Some(checkpointer) = &state.checkpointer {
        m.checkpoints.set(
            i64::try_from(
                checkpointer
                    .taken
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
            .unwrap_or(i64::MAX),
        );
    }
    http_edge::health::openmetrics(m.render())
}

/// The command group: every instance with the partitions it owns, and where this instance
/// stands with each partition of each topic.
#[utoipa::path(
    get,
    path = "/admin/cluster",
    tag = "admin",
    summary = "The command instances and the partitions each owns",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The group as last described, and this instance's partitions", content_type = "application/json"),
        (status = 401, description = "No valid admin token", content_type = "application/problem+json"),
        (status = 403, description = "The admin API is off (no admin token configured)", content_type = "application/problem+json")
    )
)]
async fn cluster(
    request: actix_web::HttpRequest,
    state: web::Data<Operations>,
) -> Result<HttpResponse, ApiError> {
    state.access.authorize(&request, Role::Read, "read")?;
    let mut instances: std::collections::BTreeMap<String, serde_json::Value> =
        std::collections::BTreeMap::new();
    let mut topics = Vec::new();
    let mut group_state = String::new();
    for lane in &state.lanes {
        let leases = lane.leases();
        let view = lane.cluster().map(|c| c.view()).unwrap_or_default();
        if group_state.is_empty() {
            group_state.clone_from(&view.group_state);
        }
        for member in &view.members {
            let entry = instances
                .entry(member.replica_id.clone())
                .or_insert_with(|| {
                    serde_json::json!({
                        "instance_id": member.replica_id,
                        "url": member.url,
                        "partitions": {},
                    })
                });
            entry["partitions"][lane.topic()] = serde_json::json!(member.partitions);
        }
        topics.push(serde_json::json!({
            "topic": lane.topic(),
            "aggregate": lane.name(),
            "partitions": leases.partitions(),
            "owned": leases.with(Standing::Owned),
            "restoring": leases.with(Standing::Restoring),
            "releasing": leases.with(Standing::Releasing),
            "standby": leases.warm().into_iter().map(|p| serde_json::json!({
                "partition": p,
                "applied_offset": lane.applied(p),
            })).collect::<Vec<_>>(),
            "owners": (0..leases.partitions())
                .map(|p| view.owner(p).map(|m| m.replica_id.clone()))
                .collect::<Vec<_>>(),
            "refreshed_at_ms": view.refreshed_at_ms,
        }));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "group_id": state.group_id,
        "group_state": group_state,
        "instances": instances.into_values().collect::<Vec<_>>(),
        "this_instance": {
            "instance_id": state.instance_id,
            "url": state.advertised_url,
            "joined": state.membership.joined(),
            "topics": topics,
        },
    })))
}

//! The operational routes of a query replica: readiness, metrics and the admin view of the
//! cluster.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use http_edge::Route;
use http_edge::problem::Problem;
use http_edge::routes::readable;
use serde::Serialize;

use crate::problem::QueryError;
use crate::projection::PartitionTable;
use crate::serving::{Served, Serving};
use crate::standby;

/// Health, readiness, metrics, the admin view, and the API document and its page.
pub const ROUTES: [Route; 6] = [
    Route::fixed("/admin/cluster", &["GET"], |path| {
        readable(path, admin_cluster)
    }),
    Route::fixed("/health/live", &["GET"], |path| {
        readable(path, http_edge::health::live)
    }),
    Route::fixed("/health/ready", &["GET"], |path| readable(path, ready)),
    Route::fixed("/metrics", &["GET"], |path| readable(path, metrics)),
    http_edge::docs::OPENAPI_ROUTE,
    http_edge::docs::DOCS_ROUTE,
];

/// Ready once every required projection has opened, and every open projection has joined its
/// group and caught up, on every partition it owns, to within `max_ready_lag` records of the
/// committed end.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    summary = "Readiness: every projection joined its group and caught up on its partitions",
    responses(
        (status = 200, description = "Ready", content_type = "application/json"),
        (status = 503, description = "Not ready (with Retry-After)", content_type = "application/json")
    )
)]
pub async fn ready(state: web::Data<Serving>) -> HttpResponse {
    let lagging = |table: &PartitionTable| -> Vec<i32> {
        table
            .owned()
            .into_iter()
            .filter(|p| {
                !table.serves(*p) || table.lag(*p).is_none_or(|lag| lag > state.max_ready_lag)
            })
            .collect()
    };
    let mut ready = true;
    let mut projections = serde_json::Map::new();
    for slot in &state.projections {
        let Some(served) = slot.served() else {
            ready &= !slot.required;
            projections.insert(slot.name().to_owned(), "not started".into());
            continue;
        };
        let mut topics = serde_json::Map::new();
        for topic in &served.topics {
            let behind = lagging(&topic.table);
            ready &= behind.is_empty();
            topics.insert(
                topic.name.clone(),
                serde_json::json!({
                    "owned_partitions": topic.table.owned(),
                    "lagging_partitions": behind,
                }),
            );
        }
        ready &= served.joined();
        projections.insert(
            slot.name().to_owned(),
            serde_json::json!({ "joined": served.joined(), "topics": topics }),
        );
    }
    let mut body = serde_json::json!({ "projections": projections });
    if let Some(live) = &state.live {
        body["live_tail"] = live.status();
    }
    if let Some(reports) = state.reports.get() {
        body["reports"] = reports.status();
    }
    http_edge::health::readiness(ready, body, 1)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus / OpenMetrics text",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text"))
)]
pub async fn metrics(state: web::Data<Serving>) -> HttpResponse {
    http_edge::health::openmetrics(state.metrics.render())
}

/// `GET /admin/cluster`: the response contract, built from the internal state explicitly.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ClusterAnswer {
    replica_id: String,
    /// The first projection's group, and the topic its keys are placed by.
    group: String,
    topic: String,
    group_state: String,
    rebalances_seen: u64,
    view_refreshed_at_ms: i64,
    replicas: Vec<ReplicaAnswer>,
    partitions: Vec<PartitionAnswer>,
    this_replica: ThisReplica,
}

/// A replica of the group, the partitions it owns, and those it keeps warm as a standby (as
/// every replica computes them from the group's view, with this replica's
/// `standby_replicas`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReplicaAnswer {
    replica_id: String,
    url: String,
    partitions: Vec<i32>,
    standby_partitions: Vec<i32>,
}

/// A partition: its owner, the group's committed offset, the end of committed data, the lag.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct PartitionAnswer {
    partition: i32,
    owner: Option<String>,
    committed_offset: Option<i64>,
    end_offset: Option<i64>,
    lag: Option<i64>,
}

/// What the answering replica knows of itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ThisReplica {
    membership: MembershipAnswer,
    partitions: Vec<LocalPartition>,
    /// The partitions it keeps warm now: its standby share, and for a while those it no
    /// longer owns or holds.
    standbys: Vec<StandbyPartition>,
    standby_replicas: usize,
    applied_events: u64,
    standby_applied_events: u64,
    version_gaps: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StandbyPartition {
    partition: i32,
    applied_offset: i64,
    lag: Option<i64>,
}

/// The replica's group membership as librdkafka reports it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct MembershipAnswer {
    state: String,
    join_state: String,
    rebalances: i64,
    last_rebalance_reason: String,
    last_rebalance_age_ms: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct LocalPartition {
    partition: i32,
    applied_offset: i64,
    lag: Option<i64>,
    caught_up: bool,
}

/// `GET /admin/cluster`: replicas, partition ownership, lag, of the replica's first projection.
#[utoipa::path(
    get,
    path = "/admin/cluster",
    tag = "admin",
    summary = "Replicas, partition ownership, committed offsets and lag",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The cluster as this replica sees it", body = ClusterAnswer),
        (status = 401, description = "No or a wrong admin token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The admin API is disabled on this replica", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not answer, or the projection has not started (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn admin_cluster(
    request: HttpRequest,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state
        .access
        .authorize(&request, crate::access::Role::Read, "read")?;
    let first = state.projections.first();
    let (slot, served): (_, &Served) = first
        .and_then(|slot| slot.served().map(|served| (slot, served)))
        .ok_or_else(|| QueryError::Unavailable("no projection has started yet".into()))?;
    let topic = served
        .topics
        .first()
        .ok_or_else(|| QueryError::Unavailable("the projection reads no topic".into()))?;
    let cluster = Arc::clone(&topic.cluster);
    let count = topic.table.count();
    let partitions = web::block(move || cluster.lag(count))
        .await
        .map_err(|_| QueryError::Unavailable("the admin client is busy".into()))?
        .map_err(|e| QueryError::Unavailable(format!("Kafka did not answer: {e}")))?;
    let view = topic.cluster.view();
    let table = &topic.table;
    let local: Vec<LocalPartition> = table
        .owned()
        .into_iter()
        .map(|p| LocalPartition {
            partition: p,
            applied_offset: table.applied(p),
            lag: table.lag(p),
            caught_up: table.serves(p),
        })
        .collect();
    let standbys = table
        .standbys()
        .into_iter()
        .map(|p| StandbyPartition {
            partition: p,
            applied_offset: table.applied(p),
            lag: table.lag(p),
        })
        .collect();
    let membership = table.membership();
    Ok(HttpResponse::Ok().json(ClusterAnswer {
        replica_id: state.replica_id.clone(),
        group: served.group.clone(),
        topic: topic.name.clone(),
        group_state: view.group_state.clone(),
        rebalances_seen: table.rebalances(),
        view_refreshed_at_ms: view.refreshed_at_ms,
        replicas: view
            .members
            .iter()
            .map(|m| ReplicaAnswer {
                replica_id: m.replica_id.clone(),
                url: m.url.clone(),
                partitions: m.partitions.clone(),
                standby_partitions: standby::held_by(
                    &view,
                    count,
                    state.standby_replicas,
                    &m.replica_id,
                ),
            })
            .collect(),
        partitions: partitions
            .into_iter()
            .map(|p| PartitionAnswer {
                partition: p.partition,
                owner: p.owner,
                committed_offset: p.committed_offset,
                end_offset: p.end_offset,
                lag: p.lag,
            })
            .collect(),
        this_replica: ThisReplica {
            membership: MembershipAnswer {
                state: membership.state,
                join_state: membership.join_state,
                rebalances: membership.rebalances,
                last_rebalance_reason: membership.last_rebalance_reason,
                last_rebalance_age_ms: membership.last_rebalance_age_ms,
            },
            partitions: local,
            standbys,
            standby_replicas: state.standby_replicas,
            applied_events: slot.stats.applied.get(),
            standby_applied_events: slot.standby_stats.applied.get(),
            version_gaps: slot.stats.version_gaps.get(),
        },
    }))
}

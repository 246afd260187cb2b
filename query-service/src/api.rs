//! HTTP routes of a query replica.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use shared_events::partitioner::partition_for_key;
use shared_events::{ConsistencyToken, Identifier};

use crate::cluster::{Cluster, Member};
use crate::metrics::{Metrics, OutcomeLabel};
use crate::problem::QueryError;
use crate::projection::{PartitionTable, ProjectionStats};
use crate::routing::{FORWARDED_BY, Forwarder, Route, route};
use crate::store::{Store, StoreViews};
use customers::projection::{CustomersProjection, OrdersSummary};
use http_edge::problem::Problem;
use http_edge::routes::readable;
use orders::projection::{CustomerCursor, OrdersProjection};
use orders::views::OrderView;
use projection_engine::projection::namespace;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub table: Arc<PartitionTable>,
    pub cluster: Arc<Cluster>,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<ProjectionStats>,
    /// The customers projection, once it has started (its topics exist).
    pub customers: Arc<OnceLock<CustomersSide>>,
    pub customers_stats: Arc<ProjectionStats>,
    pub topic: String,
    pub group: String,
    pub replica_id: String,
    pub consistency_wait: Duration,
    pub max_ready_lag: i64,
    pub admin_token: Option<String>,
}

/// Every route serves `GET` and `HEAD` (actix sends the headers without the body) and answers
/// other methods with `405` and an `Allow` header.
pub fn routes(config: &mut web::ServiceConfig) {
    http_edge::routes::register(&ROUTES, config);
}

/// What customer queries read of the customers projection: its partition tables and its
/// group's ownership, per topic.
#[derive(Debug)]
pub struct CustomersSide {
    /// The customers topic.
    pub topic: String,
    pub customers: Arc<PartitionTable>,
    pub orders: Arc<PartitionTable>,
    pub customers_cluster: Arc<Cluster>,
    pub orders_cluster: Arc<Cluster>,
}

/// Every route a replica serves; the router is built from it and the OpenAPI document
/// ([`crate::openapi`]) is held to it.
pub const ROUTES: [http_edge::Route; 11] = [
    http_edge::Route::fixed("/orders/{id}", &["GET"], |path| readable(path, get_order)),
    http_edge::Route::fixed("/customers/{customer_id}", &["GET"], |path| {
        readable(path, get_customer)
    }),
    http_edge::Route::fixed(
        "/internal/customers/{customer_id}/summary",
        &["GET"],
        |path| readable(path, customer_summary_here),
    ),
    http_edge::Route::fixed("/customers/{customer_id}/orders", &["GET"], |path| {
        readable(path, customer_orders)
    }),
    http_edge::Route::fixed(
        "/internal/customers/{customer_id}/orders",
        &["GET"],
        |path| readable(path, customer_orders_here),
    ),
    http_edge::Route::fixed("/admin/cluster", &["GET"], |path| {
        readable(path, admin_cluster)
    }),
    http_edge::Route::fixed("/health/live", &["GET"], |path| {
        readable(path, http_edge::health::live)
    }),
    http_edge::Route::fixed("/health/ready", &["GET"], |path| readable(path, ready)),
    http_edge::Route::fixed("/metrics", &["GET"], |path| readable(path, metrics)),
    http_edge::docs::OPENAPI_ROUTE,
    http_edge::docs::DOCS_ROUTE,
];

/// Ready once the replica joined the group and every partition it owns has caught up to within
/// `max_ready_lag` records of the committed end.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "operations",
    summary = "Readiness: joined the group and every owned partition caught up",
    responses(
        (status = 200, description = "Ready", content_type = "application/json"),
        (status = 503, description = "Not ready (with Retry-After)", content_type = "application/json")
    )
)]
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let lagging = |table: &PartitionTable| -> Vec<i32> {
        table
            .owned()
            .into_iter()
            .filter(|p| {
                !table.serves(*p) || table.lag(*p).is_none_or(|lag| lag > state.max_ready_lag)
            })
            .collect()
    };
    let table = &state.table;
    let orders_lagging = lagging(table);
    let mut ready = table.joined() && orders_lagging.is_empty();
    // The customers projection counts once it has started (its topics exist).
    let customers = state.customers.get().map(|side| {
        let customers_lagging = lagging(&side.customers);
        let orders_lagging = lagging(&side.orders);
        let joined = side.customers.joined();
        ready &= joined && customers_lagging.is_empty() && orders_lagging.is_empty();
        serde_json::json!({
            "joined": joined,
            "owned_customers_partitions": side.customers.owned(),
            "owned_orders_partitions": side.orders.owned(),
            "lagging_customers_partitions": customers_lagging,
            "lagging_orders_partitions": orders_lagging,
        })
    });
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "joined": table.joined(),
        "owned_partitions": table.owned(),
        "lagging_partitions": orders_lagging,
        "customers_projection": customers.unwrap_or_else(|| "not started".into()),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(body)
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus / OpenMetrics text",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text"))
)]
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render(&state.table))
}

/// The command side's identifier rule ([`Identifier`]): what it refuses cannot be looked up.
/// The orders projection's namespace of the store.
fn orders_views(store: &Store) -> StoreViews<'_> {
    StoreViews::new(store, namespace::<OrdersProjection>())
}

/// The customers projection's namespace of the store.
fn customers_views(store: &Store) -> StoreViews<'_> {
    StoreViews::new(store, namespace::<CustomersProjection>())
}

fn valid_id(id: &str) -> bool {
    Identifier::parse(id).is_ok()
}

fn is_forwarded(request: &HttpRequest) -> bool {
    request.headers().contains_key(FORWARDED_BY)
}

/// The `Consistency-Token` request header, if any.
fn consistency_token(
    request: &HttpRequest,
    topics: &[&str],
) -> Result<Option<ConsistencyToken>, QueryError> {
    let Some(value) = request.headers().get("consistency-token") else {
        return Ok(None);
    };
    let token: ConsistencyToken =
        value
            .to_str()
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(QueryError::BadToken(
                "it must look like `topic:partition:offset`",
            ))?;
    if !topics.contains(&token.topic.as_str()) {
        return Err(QueryError::BadToken(
            "it names a topic this route does not read",
        ));
    }
    Ok(Some(token))
}

#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    summary = "An order's current view, from any replica",
    description = "A replica that does not own the key's partition forwards once to the owner (`Forwarded-To`); `Served-By` names the replica that answered.",
    params(
        ("id" = String, Path, description = "The order id"),
        ("Consistency-Token" = Option<String>, Header,
            description = "From a command's answer: wait (bounded) until that position is applied")
    ),
    responses(
        (status = 200, description = "The order", body = OrderView,
            headers(("Served-By" = String, description = "The replica that answered"))),
        (status = 400, description = "A bad id or consistency token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (said only by a caught-up owner)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Partition in transit or position not reached in time (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn get_order(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    let id = id.into_inner();
    if !valid_id(&id) {
        return Err(QueryError::BadId(id));
    }
    let token = consistency_token(&request, &[&state.topic])?;
    let partition = partition_for_key(id.as_bytes(), state.table.count());
    match route(
        partition,
        &state.table,
        || state.cluster.view(),
        &state.replica_id,
        is_forwarded(&request),
    ) {
        Route::Local => {
            if let Some(token) = &token {
                wait_for(&state, &state.table, token).await?;
            }
            // A point read from RocksDB's memtable or block cache takes microseconds: cheaper
            // inline than a hop to the blocking pool and back.
            let found = OrdersProjection::read_json(&orders_views(&state.store), &id)?;
            match found {
                Some(view) => Ok(HttpResponse::Ok()
                    .insert_header(("Served-By", state.replica_id.as_str()))
                    .content_type(header::ContentType::json())
                    .body(view)),
                None => Err(absent(
                    &state.table,
                    partition,
                    QueryError::UnknownOrder {
                        id,
                        served_by: state.replica_id.clone(),
                    },
                )),
            }
        }
        Route::Forward(owner) => forward_request(&state, &owner, &request).await,
        Route::Unavailable(reason) => Err(QueryError::Unavailable(reason)),
    }
}

/// What the owner answers for a key it has no view of: `not_found` only once it has caught up
/// with the key's partition since it was assigned; before that the view may be on its way, and
/// the answer is a retryable `503`.
fn absent(table: &PartitionTable, partition: i32, not_found: QueryError) -> QueryError {
    if table.serves(partition) {
        not_found
    } else {
        QueryError::Unavailable(format!(
            "partition {partition} is still being caught up on this replica"
        ))
    }
}

/// Forwards `request` (its path and its consistency token) to `owner` and relays the answer.
async fn forward_request(
    state: &AppState,
    owner: &Member,
    request: &HttpRequest,
) -> Result<HttpResponse, QueryError> {
    let token = request
        .headers()
        .get("consistency-token")
        .and_then(|v| v.to_str().ok());
    let headers: Vec<(&str, &str)> = token
        .map(|t| ("consistency-token", t))
        .into_iter()
        .collect();
    forward(state, owner, request.uri().path(), &headers).await
}

async fn forward(
    state: &AppState,
    owner: &Member,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, QueryError> {
    state.metrics.forwarded.inc();
    let relayed = match state.forwarder.get(owner, path, headers).await {
        Ok(response) => state.forwarder.relay(owner, response).await,
        Err(error) => Err(error),
    };
    relayed.map_err(|error| {
        state.metrics.forward_errors.inc();
        QueryError::Unavailable(error.to_string())
    })
}

/// Waits (bounded) until the token's position is applied, if this replica owns its partition.
/// A token for a partition owned elsewhere cannot be waited for here and is ignored: tokens are
/// meant for reads of the key that was written, whose owner is the one answering.
async fn wait_for(
    state: &AppState,
    table: &PartitionTable,
    token: &ConsistencyToken,
) -> Result<(), QueryError> {
    let (partition, offset) = (token.position.partition, token.position.offset);
    if !table.owns(partition) || table.applied(partition) > offset {
        return Ok(());
    }
    let reached = tokio::time::timeout(
        state.consistency_wait,
        table.wait_applied(partition, offset),
    )
    .await
    .unwrap_or(false);
    let outcome = if reached { "reached" } else { "timed_out" };
    state
        .metrics
        .consistency_waits
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
    if reached {
        Ok(())
    } else {
        Err(QueryError::ConsistencyTimeout {
            token: token.to_string(),
            waited: state.consistency_wait,
        })
    }
}

/// `GET /customers/{id}`: the customer's profile and what their orders add up to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct CustomerAnswer {
    #[serde(flatten)]
    profile: customers::views::CustomerView,
    orders: OrdersAnswer,
}

/// What a customer's orders add up to, over every partition.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct OrdersAnswer {
    /// Orders placed.
    count: u64,
    /// Paid and not cancelled, in cents, per currency.
    revenue_cents: std::collections::BTreeMap<String, i64>,
    /// The most recently placed order.
    last_order_id: Option<String>,
}

/// One replica's part of a customer's summary: the orders partitions it serves and their sum.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct PartialSummary {
    partitions: Vec<i32>,
    summary: OrdersSummary,
}

fn customers_side(state: &AppState) -> Result<&CustomersSide, QueryError> {
    state.customers.get().ok_or_else(|| {
        QueryError::Unavailable(
            "the customers projection has not started yet (does the customers topic exist?)".into(),
        )
    })
}

#[utoipa::path(
    get,
    path = "/customers/{customer_id}",
    tag = "customers",
    summary = "A customer's profile joined with their orders, from any replica",
    description = "The replica owning the customer's partition answers (others forward once); the order summary adds up every orders partition's share, or is a retryable 503.",
    params(
        ("customer_id" = String, Path, description = "The customer id"),
        ("Consistency-Token" = Option<String>, Header,
            description = "From a command's answer (a customer's or an order's): wait (bounded) until that position is applied")
    ),
    responses(
        (status = 200, description = "The customer", body = CustomerAnswer,
            headers(("Served-By" = String, description = "The replica that answered"))),
        (status = 400, description = "A bad id or consistency token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not registered (said only by a caught-up owner)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A partition in transit, a position not reached in time, or the projection not started (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn get_customer(
    request: HttpRequest,
    customer_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    let id = customer_id.into_inner();
    if !valid_id(&id) {
        return Err(QueryError::BadId(id));
    }
    let side = customers_side(&state)?;
    let token = consistency_token(&request, &[&side.topic, &state.topic])?;
    let partition = partition_for_key(id.as_bytes(), side.customers.count());
    match route(
        partition,
        &side.customers,
        || side.customers_cluster.view(),
        &state.replica_id,
        is_forwarded(&request),
    ) {
        Route::Local => {
            if let Some(token) = token.as_ref().filter(|t| t.topic == side.topic) {
                wait_for(&state, &side.customers, token).await?;
            }
            let Some(profile) = CustomersProjection::profile(&customers_views(&state.store), &id)?
            else {
                return Err(absent(
                    &side.customers,
                    partition,
                    QueryError::UnknownCustomer {
                        id,
                        served_by: state.replica_id.clone(),
                    },
                ));
            };
            let orders_token = token.filter(|t| t.topic == state.topic);
            let summary = customer_summary(&state, side, &id, orders_token.as_ref()).await?;
            Ok(HttpResponse::Ok()
                .insert_header(("Served-By", state.replica_id.as_str()))
                .json(CustomerAnswer {
                    profile,
                    orders: OrdersAnswer {
                        count: summary.count,
                        revenue_cents: summary.revenue_cents,
                        last_order_id: summary.last_order_id,
                    },
                }))
        }
        Route::Forward(owner) => forward_request(&state, &owner, &request).await,
        Route::Unavailable(reason) => Err(QueryError::Unavailable(reason)),
    }
}

/// The customer's summary over every orders partition: this replica's share and every other
/// member's, or a retryable 503 if some partition had no owner that answered.
async fn customer_summary(
    state: &AppState,
    side: &CustomersSide,
    customer_id: &str,
    token: Option<&ConsistencyToken>,
) -> Result<OrdersSummary, QueryError> {
    if let Some(token) = token {
        wait_for(state, &side.orders, token).await?;
    }
    let local = local_summary(state, side, customer_id)?;
    let path = format!("/internal/customers/{customer_id}/summary");
    let token_text = token.map(ToString::to_string);
    let headers: Vec<(&str, &str)> = token_text
        .as_deref()
        .map(|t| ("consistency-token", t))
        .into_iter()
        .collect();
    let view = side.orders_cluster.view();
    let remote = view
        .members
        .iter()
        .filter(|m| m.replica_id != state.replica_id && !m.partitions.is_empty())
        .map(|member| {
            let (path, headers) = (&path, &headers);
            async move {
                state.metrics.forwarded.inc();
                let part = match state.forwarder.get(member, path, headers).await {
                    Ok(r) if r.status().is_success() => r.json::<PartialSummary>().await.ok(),
                    _ => None,
                };
                if part.is_none() {
                    state.metrics.forward_errors.inc();
                }
                part
            }
        });
    let mut parts = vec![local];
    parts.extend(
        futures::future::join_all(remote)
            .await
            .into_iter()
            .flatten(),
    );
    let mut covered = BTreeSet::new();
    let mut total = OrdersSummary::default();
    for part in parts {
        // A partition two replicas both claim (mid-rebalance) counts once.
        let fresh: Vec<i32> = part
            .partitions
            .iter()
            .copied()
            .filter(|p| !covered.contains(p))
            .collect();
        if fresh.len() != part.partitions.len() {
            return Err(QueryError::Unavailable(
                "two replicas answered for one orders partition (rebalance in progress?)".into(),
            ));
        }
        covered.extend(fresh);
        total.merge(part.summary);
    }
    let missing: Vec<i32> = (0..side.orders.count())
        .filter(|p| !covered.contains(p))
        .collect();
    if !missing.is_empty() {
        return Err(QueryError::Unavailable(format!(
            "orders partitions {missing:?} could not be read right now (rebalance in progress?)"
        )));
    }
    Ok(total)
}

/// This replica's share: the orders partitions it serves in the customers projection.
fn local_summary(
    state: &AppState,
    side: &CustomersSide,
    customer_id: &str,
) -> Result<PartialSummary, QueryError> {
    let partitions: Vec<i32> = side
        .orders
        .owned()
        .into_iter()
        .filter(|p| side.orders.serves(*p))
        .collect();
    let mut summary = OrdersSummary::default();
    for partition in &partitions {
        summary.merge(CustomersProjection::summary(
            &customers_views(&state.store),
            customer_id,
            *partition,
        )?);
    }
    Ok(PartialSummary {
        partitions,
        summary,
    })
}

/// `GET /internal/customers/{id}/summary`: this replica's share of a customer's summary.
#[utoipa::path(
    get,
    path = "/internal/customers/{customer_id}/summary",
    tag = "internal",
    summary = "Between replicas: this replica's share of a customer's order summary",
    params(
        ("customer_id" = String, Path, description = "The customer id"),
        ("Consistency-Token" = Option<String>, Header,
            description = "From an order command's answer: the partition's owner waits (bounded) until it applied it")
    ),
    responses(
        (status = 200, description = "The orders partitions this replica serves and their sum", body = PartialSummary),
        (status = 400, description = "A bad id or consistency token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Position not reached in time, or the projection not started (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn customer_summary_here(
    request: HttpRequest,
    customer_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    let id = customer_id.into_inner();
    if !valid_id(&id) {
        return Err(QueryError::BadId(id));
    }
    let side = customers_side(&state)?;
    if let Some(token) = consistency_token(&request, &[&state.topic])? {
        wait_for(&state, &side.orders, &token).await?;
    }
    let part = local_summary(&state, side, &id)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Served-By", state.replica_id.as_str()))
        .json(part))
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// One replica's part of a customer's orders (the answer to a forwarded request).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct PartialPage {
    partitions: Vec<i32>,
    orders: Vec<PageEntry>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
struct PageEntry {
    cursor: String,
    order: OrderView,
}

/// A page of a customer's orders, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Page {
    customer_id: String,
    orders: Vec<OrderView>,
    next_cursor: Option<String>,
}

/// The paging parameters of a customer query, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "read by the OpenAPI derive only")]
struct PageParams {
    /// Orders per page, 1 to 200 (default 50).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    after: Option<String>,
}

/// The paging parameters of a customer query: `limit` (1..=200) and `after` (a cursor).
fn page_params(request: &HttpRequest) -> Result<(usize, Option<CustomerCursor>), QueryError> {
    let params = web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map_err(|_| QueryError::BadQuery("the query string does not parse".into()))?;
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| QueryError::BadQuery(format!("limit must be 1 to {MAX_PAGE}")))?,
    };
    let after = match params.get("after") {
        None => None,
        Some(raw) => Some(
            CustomerCursor::decode(raw)
                .filter(|c| valid_id(&c.order_id))
                .ok_or_else(|| {
                    QueryError::BadQuery("after is not a cursor from a previous page".into())
                })?,
        ),
    };
    Ok((limit, after))
}

/// A customer query as both customer routes take it: validated id and paging, and the
/// consistency token already waited for where this replica owns its partition.
struct CustomerQuery {
    customer_id: String,
    limit: usize,
    after: Option<CustomerCursor>,
    token: Option<ConsistencyToken>,
}

async fn customer_query(
    request: &HttpRequest,
    customer_id: String,
    state: &AppState,
) -> Result<CustomerQuery, QueryError> {
    if !valid_id(&customer_id) {
        return Err(QueryError::BadId(customer_id));
    }
    let (limit, after) = page_params(request)?;
    let token = consistency_token(request, &[&state.topic])?;
    if let Some(token) = &token {
        wait_for(state, &state.table, token).await?;
    }
    Ok(CustomerQuery {
        customer_id,
        limit,
        after,
        token,
    })
}

/// `GET /internal/customers/{id}/orders`: this replica's part of a customer query (the
/// partitions it serves and their orders), for the replica that merges the parts.
#[utoipa::path(
    get,
    path = "/internal/customers/{customer_id}/orders",
    tag = "internal",
    summary = "Between replicas: this replica's part of a customer's orders",
    params(
        ("customer_id" = String, Path, description = "The customer id"),
        PageParams,
        ("Consistency-Token" = Option<String>, Header,
            description = "From a command's answer: the partition's owner waits (bounded) until it applied it")
    ),
    responses(
        (status = 200, description = "The partitions this replica serves and their orders", body = PartialPage),
        (status = 400, description = "A bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Position not reached in time (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn customer_orders_here(
    request: HttpRequest,
    customer_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    let query = customer_query(&request, customer_id.into_inner(), &state).await?;
    let page = local_page(&state, &query.customer_id, query.after, query.limit).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Served-By", state.replica_id.as_str()))
        .json(page))
}

/// `GET /customers/{id}/orders?limit=&after=`: the customer's orders from every partition,
/// oldest first. The receiving replica asks each owner for its partitions (its own included)
/// and merges; if some partition has no owner that answered, the answer is a retryable 503,
/// never a silently partial list. A `Consistency-Token` makes its partition's owner wait first.
#[utoipa::path(
    get,
    path = "/customers/{customer_id}/orders",
    tag = "orders",
    summary = "A customer's orders from every partition, oldest first, in pages",
    params(
        ("customer_id" = String, Path, description = "The customer id"),
        PageParams,
        ("Consistency-Token" = Option<String>, Header,
            description = "From a command's answer: the partition's owner waits (bounded) until it applied it")
    ),
    responses(
        (status = 200, description = "A page; `next_cursor` is absent on the last", body = Page),
        (status = 400, description = "A bad id, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Some partition had no owner that answered (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn customer_orders(
    request: HttpRequest,
    customer_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    let CustomerQuery {
        customer_id,
        limit,
        after,
        token,
    } = customer_query(&request, customer_id.into_inner(), &state).await?;
    let local = local_page(&state, &customer_id, after.clone(), limit).await?;

    let view = state.cluster.view();
    let mut path = format!("/internal/customers/{customer_id}/orders?limit={limit}");
    if let Some(after) = &after {
        // Cursor parts are digits, '-' and id characters: nothing to escape.
        path.push_str(&format!("&after={}", after.encode()));
    }
    let token_text = token.as_ref().map(ToString::to_string);
    let headers: Vec<(&str, &str)> = token_text
        .as_deref()
        .map(|t| ("consistency-token", t))
        .into_iter()
        .collect();
    let remote = view
        .members
        .iter()
        .filter(|m| m.replica_id != state.replica_id && !m.partitions.is_empty())
        .map(|member| {
            let (state, path, headers) = (&state, &path, &headers);
            async move {
                state.metrics.forwarded.inc();
                let response = state.forwarder.get(member, path, headers).await;
                let page = match response {
                    Ok(r) if r.status().is_success() => r.json::<PartialPage>().await.ok(),
                    _ => None,
                };
                if page.is_none() {
                    state.metrics.forward_errors.inc();
                }
                page
            }
        });
    let mut pages = vec![local];
    pages.extend(
        futures::future::join_all(remote)
            .await
            .into_iter()
            .flatten(),
    );

    let covered: BTreeSet<i32> = pages
        .iter()
        .flat_map(|p| p.partitions.iter().copied())
        .collect();
    let missing: Vec<i32> = (0..state.table.count())
        .filter(|p| !covered.contains(p))
        .collect();
    if !missing.is_empty() {
        return Err(QueryError::Unavailable(format!(
            "partitions {missing:?} could not be read right now (rebalance in progress?)"
        )));
    }
    let some_page_full = pages.iter().any(|p| p.orders.len() >= limit);
    let mut entries: Vec<(CustomerCursor, OrderView)> = pages
        .into_iter()
        .flat_map(|p| p.orders)
        .filter_map(|e| CustomerCursor::decode(&e.cursor).map(|c| (c, e.order)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let more = entries.len() > limit || some_page_full;
    entries.truncate(limit);
    let next_cursor = if more {
        entries.last().map(|(c, _)| c.encode())
    } else {
        None
    };
    Ok(HttpResponse::Ok()
        .insert_header(("Served-By", state.replica_id.as_str()))
        .json(Page {
            customer_id,
            orders: entries.into_iter().map(|(_, v)| v).collect(),
            next_cursor,
        }))
}

/// This replica's part: orders of the partitions it serves (owned and caught up).
async fn local_page(
    state: &AppState,
    customer_id: &str,
    after: Option<CustomerCursor>,
    limit: usize,
) -> Result<PartialPage, QueryError> {
    let table = Arc::clone(&state.table);
    let store = Arc::clone(&state.store);
    let customer = customer_id.to_owned();
    let partitions: Vec<i32> = table
        .owned()
        .into_iter()
        .filter(|p| table.serves(*p))
        .collect();
    let serving = partitions.clone();
    let found = web::block(move || {
        let count = table.count();
        OrdersProjection::customer_orders(
            &orders_views(&store),
            &customer,
            after.as_ref(),
            limit,
            |order_id| serving.contains(&partition_for_key(order_id.as_bytes(), count)),
        )
    })
    .await
    .map_err(|_| QueryError::Unavailable("the store is busy".into()))??;
    Ok(PartialPage {
        partitions,
        orders: found
            .into_iter()
            .map(|(cursor, order)| PageEntry {
                cursor: cursor.encode(),
                order,
            })
            .collect(),
    })
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` value; the scheme name is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

fn authorize(request: &HttpRequest, state: &AppState) -> Result<(), QueryError> {
    let Some(expected) = &state.admin_token else {
        return Err(QueryError::AdminDisabled);
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(QueryError::Unauthorized),
    }
}

/// `GET /admin/cluster`: the response contract, built from the internal state explicitly.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ClusterAnswer {
    replica_id: String,
    group: String,
    topic: String,
    group_state: String,
    rebalances_seen: u64,
    view_refreshed_at_ms: i64,
    replicas: Vec<ReplicaAnswer>,
    partitions: Vec<PartitionAnswer>,
    this_replica: ThisReplica,
}

/// A replica of the group and the partitions it owns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReplicaAnswer {
    replica_id: String,
    url: String,
    partitions: Vec<i32>,
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
    applied_events: u64,
    version_gaps: u64,
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

/// `GET /admin/cluster`: replicas, partition ownership, lag.
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
        (status = 503, description = "Kafka did not answer (with Retry-After)", body = Problem, content_type = "application/problem+json")
    )
)]
async fn admin_cluster(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, QueryError> {
    authorize(&request, &state)?;
    let cluster = Arc::clone(&state.cluster);
    let count = state.table.count();
    let partitions = web::block(move || cluster.lag(count))
        .await
        .map_err(|_| QueryError::Unavailable("the admin client is busy".into()))?
        .map_err(|e| QueryError::Unavailable(format!("Kafka did not answer: {e}")))?;
    let view = state.cluster.view();
    let table = &state.table;
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
    let membership = table.membership();
    Ok(HttpResponse::Ok().json(ClusterAnswer {
        replica_id: state.replica_id.clone(),
        group: state.group.clone(),
        topic: state.topic.clone(),
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
            applied_events: state.stats.applied.get(),
            version_gaps: state.stats.version_gaps.get(),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}

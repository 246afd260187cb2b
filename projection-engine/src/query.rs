//! The routes of the queries domains describe ([`shared_events::query`]): each checks the key
//! and the `Consistency-Token`, answers where the key's partition is served, forwards once to
//! the owner otherwise, and gathers every partition's part where the data is spread.
//!
//! Guarantees, and where they are kept:
//! - "Not found" is said only by the key's owner, caught up with its partition, or by a standby
//!   with nothing committed left to apply that it knows of ([`absent`]).
//! - A gathered answer covers every partition of its topic exactly once, or is a retryable
//!   `503`: never a silently partial sum or list ([`gathered`]).
//! - A `Consistency-Token` is waited for (bounded) by the owner of its partition, or the standby
//!   answering for it, before it reads ([`wait_for`]).
//! - When the owner cannot answer (unreachable, or its partition between owners), a standby
//!   does ([`standby_answer`]), and says so: `Standby-Lag` and `Standby-Position` tell how far
//!   it has applied. A gather takes a missing partition's part from a standby the same way.

use std::collections::BTreeSet;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use http_edge::Route;
use http_edge::routes::readable;
use serde::{Deserialize, Serialize};
use shared_events::partitioner::partition_for_key;
use shared_events::query::{Gather, Join, Lookup, Partitions};
use shared_events::{ConsistencyToken, Identifier};

use crate::cluster::Member;
use crate::metrics::OutcomeLabel;
use crate::problem::QueryError;
use crate::projection::PartitionTable;
use crate::routing::{FORWARDED_BY, Route as Where, route};
use crate::serving::{Served, ServedTopic, Serving};
use crate::standby;

/// The route of a [`Lookup`].
pub fn lookup_route<L: Lookup>() -> Route {
    Route::fixed(L::PATH, &["GET"], |path| readable(path, lookup::<L>))
}

/// The public route of a [`Gather`] and the route of its part, between replicas.
pub fn gather_routes<G: Gather>() -> [Route; 2] {
    [
        Route::fixed(G::PATH, &["GET"], |path| readable(path, gather::<G>)),
        part_route::<G>(),
    ]
}

/// The route of a [`Join`] and the route of its gather's part, between replicas.
pub fn join_routes<J: Join>() -> [Route; 2] {
    [
        Route::fixed(J::PATH, &["GET"], |path| readable(path, join::<J>)),
        part_route::<J::Gather>(),
    ]
}

/// Where a gather's part is served between replicas: its path under `/internal`.
pub fn internal_path(path: &str) -> String {
    format!("/internal{path}")
}

fn part_route<G: Gather>() -> Route {
    Route {
        path: internal_path(G::PATH).into(),
        methods: &["GET"],
        resource: |path| readable(path, part_here::<G>),
    }
}

/// One replica's part of a gather: the partitions it covers and what they hold.
#[derive(Debug, Serialize, Deserialize)]
pub struct Partial<P> {
    pub partitions: Vec<i32>,
    pub part: P,
    /// Set when the part was read from partitions kept warm, their owner unable to answer:
    /// the most committed records any of them has not applied, -1 if that is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_lag: Option<i64>,
}

/// The worse of two standby lags (an unknown one, -1, is the worst).
fn worse_lag(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(-1), _) | (_, Some(-1)) => Some(-1),
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn lag_text(lag: i64) -> String {
    if lag < 0 {
        "unknown".to_owned()
    } else {
        lag.to_string()
    }
}

/// A query's key, checked by the command side's identifier rule: what it refuses cannot have
/// been written.
fn checked(key: String) -> Result<String, QueryError> {
    match Identifier::parse(&key) {
        Ok(_) => Ok(key),
        Err(_) => Err(QueryError::BadId(key)),
    }
}

fn is_forwarded(request: &HttpRequest) -> bool {
    request.headers().contains_key(FORWARDED_BY)
}

/// The `Consistency-Token` request header, if any; it must name a topic `served` reads.
fn consistency_token(
    request: &HttpRequest,
    served: &Served,
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
    if served.topic_named(&token.topic).is_none() {
        return Err(QueryError::BadToken(
            "it names a topic this route does not read",
        ));
    }
    Ok(Some(token))
}

/// The query string's pairs, for a gather's parameters.
fn query_pairs(request: &HttpRequest) -> Result<Vec<(String, String)>, QueryError> {
    web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|_| QueryError::BadQuery("the query string does not parse".into()))
}

fn answered_here(state: &Serving) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response.insert_header(("Served-By", state.replica_id.as_str()));
    response
}

/// On an answer a standby gave: the committed records it has not applied yet, or `unknown`.
const STANDBY_LAG: &str = "standby-lag";
/// On an answer a standby gave for a key: its last applied position.
const STANDBY_POSITION: &str = "standby-position";

/// Says how far a standby answering for `partition` of `topic` has applied it: its lag behind
/// the end of committed data it knows of, and its last applied position (a consistency
/// token's form, so a client can compare it with the token it holds).
fn mark_standby(
    response: &mut actix_web::HttpResponseBuilder,
    topic: &ServedTopic,
    partition: i32,
) {
    let table = &topic.table;
    response.insert_header((STANDBY_LAG, lag_text(table.lag(partition).unwrap_or(-1))));
    let applied = table.applied(partition);
    if applied > 0 {
        response.insert_header((
            STANDBY_POSITION,
            format!("{}:{partition}:{}", topic.name, applied - 1),
        ));
    }
}

/// The answer of the key's owner, or of the standby answering in its place.
fn answered(state: &Serving, owner: &Owner<'_>) -> actix_web::HttpResponseBuilder {
    let mut response = answered_here(state);
    if owner.standby {
        state.metrics.standby_answers.inc();
        mark_standby(&mut response, owner.topic, owner.partition);
    }
    response
}

/// A keyed query where it is answered.
enum Keyed<'a> {
    /// Here, the key's partition being owned here; its token, if of that topic, waited for.
    Here(Owner<'a>),
    /// By the owner: its answer, relayed.
    Relayed(HttpResponse),
}

/// What the key's owner answers with.
#[derive(Clone)]
struct Owner<'a> {
    key: String,
    served: &'a Served,
    topic: &'a ServedTopic,
    partition: i32,
    token: Option<ConsistencyToken>,
    /// Answered by a standby of the partition, its owner unable to.
    standby: bool,
}

/// Checks a keyed query's key and token, and finds where it is answered: here, or by the
/// owner of the key's partition (forwarded once), or nowhere right now (a retryable `503`).
async fn keyed<'a, K: shared_events::query::Keyed>(
    request: &HttpRequest,
    key: String,
    state: &'a Serving,
) -> Result<Keyed<'a>, QueryError> {
    let key = checked(key)?;
    let served = state.served::<K::Model>()?;
    let token = consistency_token(request, served)?;
    let topic = served.topic(K::KEY_TOPIC)?;
    let partition = partition_for_key(key.as_bytes(), topic.table.count());
    let owner = Owner {
        key,
        served,
        topic,
        partition,
        token,
        standby: false,
    };
    match where_answered(state, topic, partition, request) {
        Where::Local => {
            wait_for_on(state, topic, owner.token.as_ref()).await?;
            Ok(Keyed::Here(owner))
        }
        Where::Forward(member) => {
            // An owner that just failed to answer is passed over while a standby answers.
            if state.forwarder.is_suspect(&member)
                && let Some(keyed) =
                    standby_answer(state, owner.clone(), request, Some(&member)).await?
            {
                return Ok(keyed);
            }
            match forward_request(state, &member, request).await {
                Ok(answer) if answer.status() != StatusCode::SERVICE_UNAVAILABLE => {
                    Ok(Keyed::Relayed(answer))
                }
                outcome => match standby_answer(state, owner, request, Some(&member)).await? {
                    Some(keyed) => Ok(keyed),
                    None => outcome.map(Keyed::Relayed),
                },
            }
        }
        Where::Unavailable(reason) => match standby_answer(state, owner, request, None).await? {
            Some(keyed) => Ok(keyed),
            None => Err(QueryError::Unavailable(reason)),
        },
    }
}

/// Where a key is answered when its owner cannot answer (`failed`, if it was asked) or its
/// partition has no owner: here, if this replica keeps the partition warm; else at a replica
/// that does (asked once each, never from a forwarded request). None if no standby answers.
async fn standby_answer<'a>(
    state: &'a Serving,
    mut owner: Owner<'a>,
    request: &HttpRequest,
    failed: Option<&Member>,
) -> Result<Option<Keyed<'a>>, QueryError> {
    let (topic, partition) = (owner.topic, owner.partition);
    if applying(&topic.table, partition) {
        wait_for_on(state, topic, owner.token.as_ref()).await?;
        // Assigned here since the route was chosen (a takeover): answered as its owner.
        owner.standby = !topic.table.owns(partition);
        return Ok(Some(Keyed::Here(owner)));
    }
    if is_forwarded(request) || state.standby_replicas == 0 {
        return Ok(None);
    }
    let view = topic.cluster.view();
    let holders = standby::holders(&view, partition, state.standby_replicas);
    // Between owners, any member may still hold it warm.
    let candidates: Vec<&Member> = if holders.is_empty() {
        view.members.iter().collect()
    } else {
        holders
    };
    Ok(ask_standbys(state, request, candidates.into_iter(), failed)
        .await
        .map(Keyed::Relayed))
}

/// `GET` a [`Lookup`]'s key: from the store where its partition is served, else from its owner.
async fn lookup<L: Lookup>(
    request: HttpRequest,
    key: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    let owner = match keyed::<L>(&request, key.into_inner(), &state).await? {
        Keyed::Here(owner) => owner,
        Keyed::Relayed(answer) => return Ok(answer),
    };
    // A point read from RocksDB's memtable or block cache takes microseconds: cheaper inline
    // than a hop to the blocking pool and back.
    match L::read(&state.views::<L::Model>(), &owner.key)? {
        Some(json) => Ok(answered(&state, &owner)
            .content_type(header::ContentType::json())
            .body(json)),
        None => match missed_here(&state, &owner, &request).await {
            Some(answer) => Ok(answer),
            None => Err(absent::<L>(&state, &owner)),
        },
    }
}

/// A key missing from a partition this replica has just taken over and is still catching up:
/// a replica that kept the partition warm (a standby, or its former owner, for a while after
/// the move) may hold it. Asked once each; none if none answers.
async fn missed_here(
    state: &Serving,
    owner: &Owner<'_>,
    request: &HttpRequest,
) -> Option<HttpResponse> {
    let (table, partition) = (&owner.topic.table, owner.partition);
    if owner.standby
        || table.serves(partition)
        || is_forwarded(request)
        || state.standby_replicas == 0
    {
        return None;
    }
    let view = owner.topic.cluster.view();
    ask_standbys(state, request, view.members.iter(), None).await
}

/// Forwards `request` to each of `candidates` (never this replica, nor `failed`) until one
/// answers other than `503`.
async fn ask_standbys<'m>(
    state: &Serving,
    request: &HttpRequest,
    candidates: impl Iterator<Item = &'m Member>,
    failed: Option<&Member>,
) -> Option<HttpResponse> {
    for member in candidates {
        if member.replica_id == state.replica_id
            || failed.is_some_and(|f| f.replica_id == member.replica_id)
        {
            continue;
        }
        if let Ok(answer) = forward_request(state, member, request).await
            && answer.status() != StatusCode::SERVICE_UNAVAILABLE
        {
            return Some(answer);
        }
    }
    None
}

/// `GET` a [`Join`]'s key: its owner reads the key and joins it with the gather.
async fn join<J: Join>(
    request: HttpRequest,
    key: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    let owner = match keyed::<J>(&request, key.into_inner(), &state).await? {
        Keyed::Here(owner) => owner,
        Keyed::Relayed(answer) => return Ok(answer),
    };
    let Some(found) = J::read(&state.views::<J::Model>(), &owner.key)? else {
        return match missed_here(&state, &owner, &request).await {
            Some(answer) => Ok(answer),
            None => Err(absent::<J>(&state, &owner)),
        };
    };
    let (gathered, standby_lag) =
        gathered::<J::Gather>(&state, owner.served, &owner.key, &(), owner.token.as_ref()).await?;
    let mut response = answered(&state, &owner);
    if let Some(lag) = standby_lag
        && !owner.standby
    {
        response.insert_header((STANDBY_LAG, lag_text(lag)));
    }
    Ok(response.json(J::join(found, gathered)))
}

/// A gather's request, checked.
struct GatherRequest<'a, G: Gather> {
    key: String,
    params: G::Params,
    served: &'a Served,
    token: Option<ConsistencyToken>,
}

fn gather_request<'a, G: Gather>(
    request: &HttpRequest,
    key: web::Path<String>,
    state: &'a Serving,
) -> Result<GatherRequest<'a, G>, QueryError> {
    let key = checked(key.into_inner())?;
    let params = G::params(&query_pairs(request)?).map_err(QueryError::BadQuery)?;
    let served = state.served::<G::Model>()?;
    let token = consistency_token(request, served)?;
    Ok(GatherRequest {
        key,
        params,
        served,
        token,
    })
}

/// `GET` a [`Gather`]'s key: every partition's part, merged.
async fn gather<G: Gather>(
    request: HttpRequest,
    key: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    let asked = gather_request::<G>(&request, key, &state)?;
    let token = asked.token.as_ref();
    let (answer, standby_lag) =
        gathered::<G>(&state, asked.served, &asked.key, &asked.params, token).await?;
    let mut response = answered_here(&state);
    if let Some(lag) = standby_lag {
        response.insert_header((STANDBY_LAG, lag_text(lag)));
    }
    Ok(response.json(answer))
}

/// `GET` this replica's part of a [`Gather`], for the replica that merges.
async fn part_here<G: Gather>(
    request: HttpRequest,
    key: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    let asked = gather_request::<G>(&request, key, &state)?;
    let topic = asked.served.topic(G::TOPIC)?;
    wait_for_on(&state, topic, asked.token.as_ref()).await?;
    let (partitions, standby) = match request.headers().get(STANDBY_PARTITIONS) {
        // The merging replica asks for partitions whose owner did not answer.
        Some(value) => {
            let partitions = standby_partitions(value)?
                .into_iter()
                .filter(|p| applying(&topic.table, *p))
                .collect();
            (partitions, true)
        }
        None => (served_partitions(&topic.table), false),
    };
    let part = local_part::<G>(&state, topic, asked.key, asked.params, partitions, standby).await?;
    Ok(answered_here(&state).json(part))
}

fn where_answered(
    state: &Serving,
    topic: &ServedTopic,
    partition: i32,
    request: &HttpRequest,
) -> Where {
    route(
        partition,
        &topic.table,
        || topic.cluster.view(),
        &state.replica_id,
        is_forwarded(request),
    )
}

/// What the owner answers for a key it has no view of: not found only once it has caught up
/// with the key's partition since it was assigned; before that the view may be on its way, and
/// the answer is a retryable `503`.
fn absent<K: shared_events::query::Keyed>(state: &Serving, owner: &Owner<'_>) -> QueryError {
    let partition = owner.partition;
    let table = &owner.topic.table;
    if owner.standby {
        // A standby's "not found" is as good as what it has applied: everything it knows of.
        return match table.lag(partition) {
            Some(0) => QueryError::NotFound {
                kind: K::NOT_FOUND,
                detail: K::NOT_FOUND.detail(&owner.key),
                served_by: state.replica_id.clone(),
            },
            lag => QueryError::Unavailable(format!(
                "partition {partition}'s owner cannot answer, and its standby here is {} behind",
                lag.map_or_else(
                    || "an unknown number of records".to_owned(),
                    |l| format!("{l} records")
                )
            )),
        };
    }
    if table.serves(partition) {
        QueryError::NotFound {
            kind: K::NOT_FOUND,
            detail: K::NOT_FOUND.detail(&owner.key),
            served_by: state.replica_id.clone(),
        }
    } else {
        QueryError::Unavailable(format!(
            "partition {partition} is still being caught up on this replica"
        ))
    }
}

/// The gather's answer over every partition of its topic: this replica's part and every other
/// member's, or a retryable `503` if some partition had no owner that answered or two did.
/// With it, the worst lag of the parts standbys gave, if any did.
async fn gathered<G: Gather>(
    state: &Serving,
    served: &Served,
    key: &str,
    params: &G::Params,
    token: Option<&ConsistencyToken>,
) -> Result<(G::Answer, Option<i64>), QueryError> {
    let topic = served.topic(G::TOPIC)?;
    // Only a token of the gathered topic is passed on: its partition's owner waits for it.
    let token = token.filter(|t| t.topic == topic.name);
    wait_for_on(state, topic, token).await?;
    let owned = served_partitions(&topic.table);
    let local = local_part::<G>(state, topic, key.to_owned(), params.clone(), owned, false).await?;
    let mut path = internal_path(G::PATH).replacen(path_parameter(G::PATH), key, 1);
    let query = G::query_string(params);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    let token_text = token.map(ToString::to_string);
    let headers: Vec<(&str, &str)> = token_text
        .as_deref()
        .map(|t| ("consistency-token", t))
        .into_iter()
        .collect();
    let view = topic.cluster.view();
    // A member that just could not be reached is passed over: its standbys give its part.
    let passed_over = |m: &Member| state.standby_replicas > 0 && state.forwarder.is_suspect(m);
    let remote = view
        .members
        .iter()
        .filter(|m| m.replica_id != state.replica_id && !m.partitions.is_empty())
        .filter(|m| !passed_over(m))
        .map(|member| {
            let (path, headers) = (&path, &headers);
            async move {
                state.metrics.forwarded.inc();
                let part = match state.forwarder.get(member, path, headers).await {
                    Ok(r) if r.status().is_success() => r.json::<Partial<G::Part>>().await.ok(),
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
    let missing = uncovered(&parts, topic.table.count());
    if !missing.is_empty() && state.standby_replicas > 0 {
        let found = standby_parts::<G>(state, topic, key, params, &path, &headers, missing).await?;
        parts.extend(found);
    }
    let standby_lag = parts
        .iter()
        .fold(None, |worst, part| worse_lag(worst, part.standby_lag));
    let parts = covering(parts, topic.table.count(), &topic.name)?;
    Ok((G::merge(key, params, parts), standby_lag))
}

/// Asks a replica's part for these partitions, which it keeps warm: a comma-separated list.
const STANDBY_PARTITIONS: &str = "standby-partitions";

fn standby_partitions(value: &header::HeaderValue) -> Result<Vec<i32>, QueryError> {
    value
        .to_str()
        .ok()
        .and_then(|text| {
            text.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| p.trim().parse().ok())
                .collect()
        })
        .ok_or_else(|| QueryError::BadQuery(format!("`{STANDBY_PARTITIONS}` must list partitions")))
}

/// Whether this replica's store is applying `partition`, though not (yet) serving it: kept warm
/// as a standby, or just taken over and catching up from where the standby left it.
fn applying(table: &PartitionTable, partition: i32) -> bool {
    table.holds_standby(partition) || table.owns(partition)
}

/// The partitions of a topic no part covers.
fn uncovered<P>(parts: &[Partial<P>], count: i32) -> Vec<i32> {
    let covered: BTreeSet<i32> = parts
        .iter()
        .flat_map(|p| p.partitions.iter().copied())
        .collect();
    (0..count).filter(|p| !covered.contains(p)).collect()
}

/// The parts of `missing` partitions (their owners did not answer) from their standbys: this
/// replica's own, then each holder's, asked once for all it holds.
async fn standby_parts<G: Gather>(
    state: &Serving,
    topic: &ServedTopic,
    key: &str,
    params: &G::Params,
    path: &str,
    headers: &[(&str, &str)],
    missing: Vec<i32>,
) -> Result<Vec<Partial<G::Part>>, QueryError> {
    let (here, elsewhere): (Vec<i32>, Vec<i32>) = missing
        .into_iter()
        .partition(|p| applying(&topic.table, *p));
    let mut parts = Vec::new();
    if !here.is_empty() {
        state.metrics.standby_answers.inc();
        let part = local_part::<G>(state, topic, key.to_owned(), params.clone(), here, true);
        parts.push(part.await?);
    }
    let view = topic.cluster.view();
    let mut asked: std::collections::BTreeMap<&str, (&Member, Vec<i32>)> = Default::default();
    for partition in elsewhere {
        if let Some(holder) = standby::holders(&view, partition, state.standby_replicas)
            .into_iter()
            .find(|m| m.replica_id != state.replica_id)
        {
            asked
                .entry(holder.replica_id.as_str())
                .or_insert_with(|| (holder, Vec::new()))
                .1
                .push(partition);
        }
    }
    let remote = asked.into_values().map(|(member, partitions)| async move {
        let list = partitions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut headers = headers.to_vec();
        headers.push((STANDBY_PARTITIONS, list.as_str()));
        state.metrics.forwarded.inc();
        match state.forwarder.get(member, path, &headers).await {
            Ok(r) if r.status().is_success() => r.json::<Partial<G::Part>>().await.ok(),
            _ => {
                state.metrics.forward_errors.inc();
                None
            }
        }
    });
    parts.extend(
        futures::future::join_all(remote)
            .await
            .into_iter()
            .flatten(),
    );
    Ok(parts)
}

/// The parts, if together they cover each of the topic's `count` partitions exactly once; else
/// a retryable `503` naming what is missing or claimed twice.
fn covering<P>(parts: Vec<Partial<P>>, count: i32, topic: &str) -> Result<Vec<P>, QueryError> {
    let mut covered = BTreeSet::new();
    for part in &parts {
        for partition in &part.partitions {
            // A partition two replicas both claim (mid-rebalance) would count twice.
            if !covered.insert(*partition) {
                return Err(QueryError::Unavailable(format!(
                    "two replicas answered for partition {partition} of {topic} (rebalance in progress?)"
                )));
            }
        }
    }
    let missing: Vec<i32> = (0..count).filter(|p| !covered.contains(p)).collect();
    if !missing.is_empty() {
        return Err(QueryError::Unavailable(format!(
            "partitions {missing:?} of {topic} could not be read right now (rebalance in progress?)"
        )));
    }
    Ok(parts.into_iter().map(|p| p.part).collect())
}

/// The `{…}` parameter of a one-parameter route.
fn path_parameter(path: &str) -> &str {
    path.find('{')
        .and_then(|start| {
            path[start..]
                .find('}')
                .map(|end| &path[start..=start + end])
        })
        .unwrap_or("")
}

/// The partitions whose part this replica gives as their owner: owned and caught up.
fn served_partitions(table: &PartitionTable) -> Vec<i32> {
    table
        .owned()
        .into_iter()
        .filter(|p| table.serves(*p))
        .collect()
}

/// This replica's part: what `partitions` hold (those it serves, or those it keeps warm for a
/// gather whose owners did not answer). A part may scan many keys, so it is read on the
/// blocking pool.
async fn local_part<G: Gather>(
    state: &Serving,
    topic: &ServedTopic,
    key: String,
    params: G::Params,
    partitions: Vec<i32>,
    standby: bool,
) -> Result<Partial<G::Part>, QueryError> {
    let table = std::sync::Arc::clone(&topic.table);
    let standby_lag = standby.then(|| {
        partitions
            .iter()
            .fold(None, |worst, p| {
                worse_lag(worst, Some(table.lag(*p).unwrap_or(-1)))
            })
            .unwrap_or(0)
    });
    let store = std::sync::Arc::clone(&state.store);
    let serving = partitions.clone();
    let part = web::block(move || {
        let views =
            crate::store::StoreViews::new(&store, crate::projection::namespace::<G::Model>());
        G::part(
            &views,
            &key,
            &params,
            Partitions {
                serving: &serving,
                count: table.count(),
            },
        )
    })
    .await
    .map_err(|_| QueryError::Unavailable("the store is busy".into()))??;
    Ok(Partial {
        partitions,
        part,
        standby_lag,
    })
}

/// Forwards `request` (its path, query and consistency token) to `owner` and relays the answer.
async fn forward_request(
    state: &Serving,
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
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path(), |p| p.as_str());
    state.metrics.forwarded.inc();
    let relayed = match state.forwarder.get(owner, path, &headers).await {
        Ok(response) => state.forwarder.relay(owner, response).await,
        Err(error) => Err(error),
    };
    relayed.map_err(|error| {
        state.metrics.forward_errors.inc();
        QueryError::Unavailable(error.to_string())
    })
}

/// Waits for `token` if it names `topic`.
async fn wait_for_on(
    state: &Serving,
    topic: &ServedTopic,
    token: Option<&ConsistencyToken>,
) -> Result<(), QueryError> {
    match token {
        Some(token) if token.topic == topic.name => wait_for(state, &topic.table, token).await,
        _ => Ok(()),
    }
}

/// Waits (bounded) until the token's position is applied, if this replica owns its partition
/// or keeps it warm as a standby.
/// A token for a partition owned elsewhere cannot be waited for here and is ignored: tokens are
/// meant for reads of the key that was written, whose owner is the one answering.
async fn wait_for(
    state: &Serving,
    table: &PartitionTable,
    token: &ConsistencyToken,
) -> Result<(), QueryError> {
    let (partition, offset) = (token.position.partition, token.position.offset);
    let applying = table.owns(partition) || table.holds_standby(partition);
    if !applying || table.applied(partition) > offset {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(partitions: &[i32], n: u32) -> Partial<u32> {
        Partial {
            partitions: partitions.to_vec(),
            part: n,
            standby_lag: None,
        }
    }

    #[test]
    fn a_gather_covers_every_partition_once_or_is_unavailable() {
        let whole = covering(vec![part(&[0, 2], 1), part(&[1], 2)], 3, "t").unwrap_or_default();
        assert_eq!(whole, vec![1, 2]);
        let missing = covering(vec![part(&[0], 1), part(&[2], 2)], 3, "t");
        assert!(
            matches!(&missing, Err(QueryError::Unavailable(m)) if m.contains("[1]")),
            "{missing:?}"
        );
        let twice = covering(vec![part(&[0, 1], 1), part(&[1, 2], 2)], 3, "t");
        assert!(
            matches!(&twice, Err(QueryError::Unavailable(m)) if m.contains("partition 1")),
            "{twice:?}"
        );
        // An empty part (a replica that serves nothing yet) changes nothing.
        assert!(covering(vec![part(&[0, 1, 2], 1), part(&[], 0)], 3, "t").is_ok());
    }

    #[test]
    fn a_gather_says_the_worst_lag_of_its_standby_parts() {
        assert_eq!(worse_lag(None, None), None, "no standby part");
        assert_eq!(worse_lag(None, Some(3)), Some(3));
        assert_eq!(worse_lag(Some(5), Some(3)), Some(5));
        assert_eq!(worse_lag(Some(-1), Some(3)), Some(-1), "unknown is worst");
        assert_eq!(worse_lag(Some(7), Some(-1)), Some(-1));
        assert_eq!(lag_text(-1), "unknown");
        assert_eq!(lag_text(0), "0");
    }

    #[test]
    fn the_key_parameter_is_found_in_a_route() {
        assert_eq!(path_parameter("/orders/{id}"), "{id}");
        assert_eq!(
            path_parameter("/customers/{customer_id}/orders"),
            "{customer_id}"
        );
        assert_eq!(
            internal_path("/customers/{customer_id}/orders").replacen(
                path_parameter("/customers/{customer_id}/orders"),
                "c-1",
                1
            ),
            "/internal/customers/c-1/orders"
        );
    }
}

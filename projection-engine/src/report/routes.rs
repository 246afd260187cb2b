//! The reports API: `POST /admin/reports` starts one, `GET /admin/reports` lists them,
//! `GET /admin/reports/{id}` shows one (its result as JSON, or as CSV with `Accept: text/csv`),
//! `DELETE /admin/reports/{id}` cancels one, or removes a finished one. Any replica answers for
//! any report. Reading needs the read-only or the admin token; starting and cancelling, the
//! admin token.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, Resource, guard, web};
use http_edge::Route;
use http_edge::problem::Problem;
use serde::{Deserialize, Serialize};
use shared_events::report::ColumnType;

use super::ledger::{Known, RunState};
use super::range::Span;
use super::scheduler::{Scheduler, Submission};
use crate::access::Role;
use crate::problem::QueryError;
use crate::serving::Serving;

/// The reports routes.
pub const ROUTES: [Route; 2] = [
    Route::fixed("/admin/reports", &["GET", "POST"], |path| {
        web::resource(path)
            .route(
                web::route()
                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                    .to(list),
            )
            .route(web::post().to(submit))
            .default_service(web::to(|| async {
                http_edge::problem::method_not_allowed("GET, HEAD, POST")
            }))
    }),
    Route::fixed("/admin/reports/{id}", &["GET", "DELETE"], report_resource),
];

fn report_resource(path: &str) -> Resource {
    web::resource(path)
        .route(
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(show),
        )
        .route(web::delete().to(cancel))
        .default_service(web::to(|| async {
            http_edge::problem::method_not_allowed("GET, HEAD, DELETE")
        }))
}

/// Bodies of `POST /admin/reports` larger than this are refused.
const MAX_BODY: usize = 4 * 1024;

/// `POST /admin/reports`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// The report's name: `monthly-orders`, `monthly-customers`, `customer-cohorts`.
    pub report: String,
    /// `beginning` or an RFC 3339 UTC time; records stamped from then on. Default `beginning`.
    #[serde(default)]
    pub from: Option<String>,
    /// `now` or an RFC 3339 UTC time; records stamped before then. Default `now`.
    #[serde(default)]
    pub to: Option<String>,
    /// Events per second the run reads at most (the replica's own limit may be lower).
    #[serde(default)]
    pub max_events_per_second: Option<u64>,
}

/// One partition's share of a report: the offsets it starts at and ends before.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SpanAnswer {
    pub start: i64,
    pub end: i64,
}

/// A report run, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportStatus {
    pub id: String,
    pub report: String,
    pub from: String,
    pub to: String,
    pub state: RunState,
    /// The replica running it (or that last did); none while it waits to be claimed.
    pub replica: Option<String>,
    /// 1, and one more each time another replica took the run over.
    pub attempt: u32,
    /// Log positions read of `events_total` (records of the range, including transaction
    /// markers and aborted records, which are read and left out).
    pub events_read: u64,
    pub events_total: u64,
    pub percent: f64,
    pub events_per_second: f64,
    pub eta_seconds: Option<f64>,
    /// Per topic and partition, the range it reads: `start` ≤ offset < `end`.
    #[schema(value_type = Object)]
    pub offsets: BTreeMap<String, BTreeMap<String, SpanAnswer>>,
    pub max_events_per_second: Option<u64>,
    pub cancel_requested: bool,
    pub submitted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// When done: `columns` (name, type, description), `rows` (an object per row), `events`
    /// (events folded), `undecodable` (records left out), `offsets`.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

/// `GET /admin/reports`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportList {
    /// Newest first; results are left out (read a report for its result).
    pub reports: Vec<ReportStatus>,
    /// The reports this replica can run.
    pub available: Vec<AvailableReport>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AvailableReport {
    pub name: &'static str,
    pub summary: &'static str,
    pub topics: Vec<&'static str>,
}

fn scheduler(state: &Serving) -> Result<&Arc<Scheduler>, QueryError> {
    state.reports.get().ok_or_else(|| {
        QueryError::ReportsOff(
            "this replica runs no reports yet: its reports topic could not be opened (see its log); it tries again every few seconds"
                .into(),
        )
    })
}

/// A run as the API shows it. Every replica shows what the ledger holds (the owner's progress
/// as of its last heartbeat), so that progress read through any replica never moves back.
fn status(known: &Known, with_result: bool) -> ReportStatus {
    let run = &known.run;
    let (read, rate) = (run.events_read, run.events_per_second);
    let read = if run.state == RunState::Done {
        run.events_total
    } else {
        read.min(run.events_total)
    };
    #[allow(clippy::cast_precision_loss)]
    let percent = if run.events_total == 0 {
        if run.state == RunState::Done {
            100.0
        } else {
            0.0
        }
    } else {
        (read as f64 * 1000.0 / run.events_total as f64).floor() / 10.0
    };
    #[allow(clippy::cast_precision_loss)]
    let eta_seconds = (run.state == RunState::Running && rate > 0.0)
        .then(|| ((run.events_total - read) as f64 / rate).ceil());
    let time = |ms: Option<i64>| ms.map(shared_events::live::rfc3339_millis);
    ReportStatus {
        id: run.id.clone(),
        report: run.report.clone(),
        from: run.from.clone(),
        to: run.to.clone(),
        state: run.state,
        replica: run.owner_name.clone(),
        attempt: run.attempt,
        events_read: read,
        events_total: run.events_total,
        percent,
        events_per_second: rate,
        eta_seconds,
        offsets: run
            .offsets
            .iter()
            .map(|(topic, spans)| {
                let spans = spans
                    .iter()
                    .map(|(p, Span { start, end })| {
                        (
                            p.to_string(),
                            SpanAnswer {
                                start: *start,
                                end: *end,
                            },
                        )
                    })
                    .collect();
                (topic.clone(), spans)
            })
            .collect(),
        max_events_per_second: run.max_events_per_second,
        cancel_requested: known.cancel_requested,
        submitted_at: shared_events::live::rfc3339_millis(run.submitted_at_ms),
        started_at: time(run.started_at_ms),
        finished_at: time(run.finished_at_ms),
        error: run.error.clone(),
        result: with_result.then(|| run.result.clone()).flatten(),
    }
}

/// Starts a report over a fixed range of the log.
#[utoipa::path(
    post,
    path = "/admin/reports",
    tag = "admin",
    summary = "Start a report over a range of the log",
    description = "With `Idempotency-Key`, a retry (on any replica) gets the report the first request started, marked `Idempotent-Replayed: true`; the key with another request is `400`. The range is fixed now: per partition, from the first record stamped at or after `from` to the last stable offset; of the records between, those stamped before `to` count. The run reads exactly that range, read-committed, so the same request over the same range gives byte-identical results. Runs queue beyond the replica's limit of concurrent reports, and beyond its queue the answer is `429`.",
    request_body(content = ReportRequest, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Accepted; `Location` names the report", body = ReportStatus),
        (status = 400, description = "Unknown report, bad bounds or body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The read-only token, or the admin API is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "As many reports running and queued as allowed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka did not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn submit(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state
        .access
        .authorize(&request, Role::Admin, "start reports")?;
    let scheduler = scheduler(&state)?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = http_edge::body::read_json(&request, payload, MAX_BODY, deadline).await?;
    let not_a_request = |e: serde_json::Error| {
        QueryError::BadReport(format!("the body is not a report request: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(not_a_request)?;
    if !value.is_object() {
        return Err(QueryError::BadReport(
            "the body is not a report request: it must be a JSON object".into(),
        ));
    }
    let asked: ReportRequest = serde_json::from_value(value).map_err(not_a_request)?;
    let submitted = scheduler
        .submit(Submission {
            report: asked.report,
            from: asked.from.unwrap_or_else(|| "beginning".into()),
            to: asked.to.unwrap_or_else(|| "now".into()),
            max_events_per_second: asked.max_events_per_second,
            idempotency_key: idempotency_key(&request)?,
        })
        .await?;
    let id = submitted.run.id;
    let known = scheduler.find(&id).await?;
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, format!("/admin/reports/{id}")));
    if submitted.replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(response.json(status(&known, false)))
}

/// `GET /admin/reports?limit=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// The newest this many (1 to 1000, default 100).
    pub limit: Option<usize>,
}

/// Lists the reports, newest first, and the reports this replica can run.
#[utoipa::path(
    get,
    path = "/admin/reports",
    tag = "admin",
    summary = "The reports, newest first, without their results",
    params(ListQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The reports", body = ReportList),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    request: HttpRequest,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state.access.authorize(&request, Role::Read, "read")?;
    let scheduler = scheduler(&state)?;
    // Parsed here, not by an extractor, so that a bad one gets this service's problem body.
    let query = web::Query::<ListQuery>::from_query(request.query_string())
        .map_err(|e| QueryError::BadQuery(format!("the query string: {e}")))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(QueryError::BadQuery(
            "`limit` must be from 1 to 1000".into(),
        ));
    }
    Ok(HttpResponse::Ok().json(ReportList {
        reports: scheduler
            .ledger
            .list(limit)
            .iter()
            .map(|known| status(known, false))
            .collect(),
        available: scheduler
            .reports()
            .map(|r| AvailableReport {
                name: r.name,
                summary: r.summary,
                topics: r.topics.to_vec(),
            })
            .collect(),
    }))
}

/// Shows a report: its progress, and once done its result.
#[utoipa::path(
    get,
    path = "/admin/reports/{id}",
    tag = "admin",
    summary = "A report's state and progress, and its result once done (CSV with `Accept: text/csv`)",
    params(("id" = String, Path, description = "The report's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The report", body = ReportStatus),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such report", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "CSV asked of a report not done", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state.access.authorize(&request, Role::Read, "read")?;
    let scheduler = scheduler(&state)?;
    let known = scheduler.find(&id).await?;
    if wants_csv(&request) {
        let Some(result) = known
            .run
            .result
            .as_ref()
            .filter(|_| known.run.state == RunState::Done)
        else {
            return Err(QueryError::ReportNotDone(format!(
                "report {} is {}; it has a result once done",
                known.run.id,
                known.run.state.name()
            )));
        };
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8; header=present")
            .insert_header((header::VARY, "Accept"))
            .insert_header((
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-{}.csv\"",
                    known.run.report, known.run.id
                ),
            ))
            .body(csv(result)));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::VARY, "Accept"))
        .json(status(&known, true)))
}

/// Cancels a queued or running report, or removes a finished one.
#[utoipa::path(
    delete,
    path = "/admin/reports/{id}",
    tag = "admin",
    summary = "Cancel a queued or running report (it stops within a second), or remove a finished one",
    params(("id" = String, Path, description = "The report's id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Cancellation asked; the report shows `cancelled` once stopped", body = ReportStatus),
        (status = 204, description = "The finished report was removed"),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The read-only token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such report", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state
        .access
        .authorize(&request, Role::Admin, "cancel reports")?;
    let scheduler = scheduler(&state)?;
    match scheduler.cancel(&id).await? {
        Some(known) => Ok(HttpResponse::Accepted().json(status(&known, false))),
        None => Ok(HttpResponse::NoContent().finish()),
    }
}

/// Whether `Accept` prefers CSV to JSON: `text/csv` with a weight above zero and above any
/// JSON type's.
/// The request's `Idempotency-Key`: 1 to 255 visible ASCII characters, as the command side
/// takes it.
fn idempotency_key(request: &HttpRequest) -> Result<Option<String>, QueryError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|key| (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()))
        .map(|key| Some(key.to_owned()))
        .ok_or_else(|| {
            QueryError::BadReport(
                "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
            )
        })
}

fn wants_csv(request: &HttpRequest) -> bool {
    let Some(accept) = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let weight = |wanted: &[&str]| -> f32 {
        accept
            .split(',')
            .filter_map(|part| {
                let mut pieces = part.split(';');
                let kind = pieces.next()?.trim().to_ascii_lowercase();
                if !wanted.contains(&kind.as_str()) {
                    return None;
                }
                let q = pieces
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some(q)
            })
            .fold(0.0, f32::max)
    };
    let csv = weight(&["text/csv"]);
    csv > 0.0 && csv >= weight(&["application/json", "*/*", "application/*"])
}

/// A stored result as CSV: its columns' names and types, its rows in column order.
fn csv(result: &serde_json::Value) -> String {
    let columns: Vec<(String, ColumnType)> = result["columns"]
        .as_array()
        .map(|columns| {
            columns
                .iter()
                .map(|c| {
                    let kind = match c["type"].as_str() {
                        Some("integer") => ColumnType::Integer,
                        Some("amounts") => ColumnType::Amounts,
                        _ => ColumnType::Text,
                    };
                    (c["name"].as_str().unwrap_or_default().to_owned(), kind)
                })
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<serde_json::Value>> = result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| columns.iter().map(|(name, _)| row[name].clone()).collect())
                .collect()
        })
        .unwrap_or_default();
    shared_events::report::csv(&columns, &rows)
}

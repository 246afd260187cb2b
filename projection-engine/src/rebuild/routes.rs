//! The projections API: `GET /admin/projections` shows each projection this replica runs (its
//! version, the generation that serves, its latest rebuild), `GET /admin/projections/{name}`
//! one, and `POST /admin/projections/{name}/rebuild` rebuilds one beside the generation that
//! serves. Each replica keeps its own store, so each answers for, and rebuilds, its own copy.
//! Reading needs the read-only or the admin token; rebuilding, the admin token.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, guard, web};
use http_edge::Route;
use http_edge::problem::Problem;
use serde::Serialize;

use super::{RebuildStatus, Requested};
use crate::access::Role;
use crate::problem::QueryError;
use crate::serving::{Serving, Slot};

/// The projections routes.
pub const ROUTES: [Route; 3] = [
    Route::fixed("/admin/projections", &["GET"], |path| {
        web::resource(path)
            .route(
                web::route()
                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                    .to(list),
            )
            .default_service(web::to(|| async {
                http_edge::problem::method_not_allowed("GET, HEAD")
            }))
    }),
    Route::fixed("/admin/projections/{name}", &["GET"], |path| {
        web::resource(path)
            .route(
                web::route()
                    .guard(guard::Any(guard::Get()).or(guard::Head()))
                    .to(show),
            )
            .default_service(web::to(|| async {
                http_edge::problem::method_not_allowed("GET, HEAD")
            }))
    }),
    Route::fixed("/admin/projections/{name}/rebuild", &["POST"], |path| {
        web::resource(path)
            .route(web::post().to(rebuild))
            .default_service(web::to(|| async {
                http_edge::problem::method_not_allowed("POST")
            }))
    }),
];

/// A projection as this replica runs it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectionStatus {
    pub name: &'static str,
    /// The version this build writes.
    pub version: u32,
    /// The generation of the store that serves, and the version that wrote it.
    pub generation: u32,
    pub serving_version: u32,
    /// Whether its topics exist and its consumer has started.
    pub open: bool,
    /// This replica's latest rebuild of it, if any since it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildStatus>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectionList {
    pub projections: Vec<ProjectionStatus>,
}

fn status(state: &Serving, slot: &Slot) -> ProjectionStatus {
    let active = state.store.active_of(slot.namespace);
    ProjectionStatus {
        name: slot.name(),
        version: slot.namespace.version,
        generation: active.map_or(0, |a| a.generation),
        serving_version: active.map_or(slot.namespace.version, |a| a.version),
        open: slot.served().is_some(),
        rebuild: slot.rebuilds.latest(),
    }
}

fn slot<'a>(state: &'a Serving, name: &str) -> Result<&'a Slot, QueryError> {
    state
        .projections
        .iter()
        .find(|slot| slot.name() == name)
        .map(AsRef::as_ref)
        .ok_or_else(|| QueryError::ProjectionNotFound(name.to_owned()))
}

/// Lists the projections this replica runs.
#[utoipa::path(
    get,
    path = "/admin/projections",
    tag = "admin",
    summary = "The projections this replica runs: version, serving generation, latest rebuild",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The projections", body = ProjectionList),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    request: HttpRequest,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state.access.authorize(&request, Role::Read, "read")?;
    let projections = state
        .projections
        .iter()
        .map(|slot| status(&state, slot))
        .collect();
    Ok(HttpResponse::Ok().json(ProjectionList { projections }))
}

/// Shows one projection.
#[utoipa::path(
    get,
    path = "/admin/projections/{name}",
    tag = "admin",
    summary = "One projection: version, serving generation, latest rebuild and its progress",
    params(("name" = String, Path, description = "The projection: `orders`, `customers`")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The projection", body = ProjectionStatus),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn show(
    request: HttpRequest,
    name: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state.access.authorize(&request, Role::Read, "read")?;
    let slot = slot(&state, &name)?;
    Ok(HttpResponse::Ok().json(status(&state, slot)))
}

/// Rebuilds a projection beside the generation that serves, then swaps it in.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/rebuild",
    tag = "admin",
    summary = "Rebuild a projection from the beginning of its topics, beside the one that serves",
    description = "The old generation keeps serving until the new one has caught up; then every owned partition switches to it at once, and the old one is dropped. A rebuild already running is not started again: the answer shows it. Rebuilds this replica's store only.",
    params(("name" = String, Path, description = "The projection: `orders`, `customers`")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Rebuilding; `Location` shows its progress", body = ProjectionStatus),
        (status = 401, description = "No or a wrong token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The read-only token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such projection", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The projection has not opened yet (its topics do not exist)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rebuild(
    request: HttpRequest,
    name: web::Path<String>,
    state: web::Data<Serving>,
) -> Result<HttpResponse, QueryError> {
    state
        .access
        .authorize(&request, Role::Admin, "rebuild projections")?;
    let slot = slot(&state, &name)?;
    if slot.served().is_none() {
        return Err(QueryError::Unavailable(format!(
            "the {} projection has not started yet (do its topics exist?)",
            slot.name()
        )));
    }
    let requested = slot.rebuilds.request();
    // The runner starts it between two batches: the answer shows it once it has.
    if requested == Requested::Started {
        let started = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while !slot.rebuilds.running() && tokio::time::Instant::now() < started {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let mut response = HttpResponse::Accepted();
    response.insert_header((
        header::LOCATION,
        format!("/admin/projections/{}", slot.name()),
    ));
    Ok(response.json(status(&state, slot)))
}

//! What the services' HTTP edges share.
//!
//! - [`problem`]: a problem type is one row (code, title, status, retry-after) of a service's
//!   problem table, and the one way an error becomes an `application/problem+json` answer
//!   (RFC 9457).
//! - [`routes`]: a service's route table, from which its router is built, so that what the
//!   table (and the OpenAPI document checked against it) says is what the router serves.
//! - [`body`]: reading a JSON request body, bounded in size and time.
//! - [`precondition`]: `If-Match` (RFC 9110) against a version `ETag`.
//! - [`health`]: the liveness route.
//! - [`access`]: the admin API's tokens (admin, read-only).
//! - [`lifecycle`]: the stop signal, and background tasks stopped together within a grace.
//! - [`docs`]: the OpenAPI document at `/openapi.json` and a browsable page at `/docs`, whose
//!   assets are compiled in: no CDN.

pub mod access;
pub mod body;
pub mod docs;
pub mod health;
pub mod lifecycle;
pub mod precondition;
pub mod problem;
pub mod routes;

pub use problem::ProblemType;
pub use routes::Route;

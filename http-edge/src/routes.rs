//! A service's route table: each route's path template, its methods, and how to make its actix
//! resource. The router is built from the table ([`register`]), and tests hold the OpenAPI
//! document to the same table, so neither can list a route the other does not serve.

use std::borrow::Cow;

use actix_web::{Resource, guard, web};

use crate::problem::method_not_allowed;

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path template, as actix and OpenAPI both write it: `/orders/{id}`.
    pub path: Cow<'static, str>,
    /// The methods it serves (`GET` routes also answer `HEAD`, which is not listed).
    pub methods: &'static [&'static str],
    /// Its actix resource, for `path`; other methods are its business (`405` with `Allow`).
    pub resource: fn(&str) -> Resource,
}

impl Route {
    /// A route at a fixed path.
    pub const fn fixed(
        path: &'static str,
        methods: &'static [&'static str],
        resource: fn(&str) -> Resource,
    ) -> Self {
        Self {
            path: Cow::Borrowed(path),
            methods,
            resource,
        }
    }
}

/// Registers every route of `table`.
pub fn register(table: &[Route], config: &mut web::ServiceConfig) {
    for route in table {
        config.service((route.resource)(&route.path));
    }
}

/// A resource answering `GET` and `HEAD` (actix sends the headers without the body) with
/// `handler`, and any other method `405` with `Allow: GET, HEAD`.
pub fn readable<F, Args>(path: &str, handler: F) -> Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(handler),
        )
        .default_service(web::to(|| async { method_not_allowed("GET, HEAD") }))
}

//! The routes of a query replica: every query the domains it serves register, and the
//! operational routes. The router is built from [`table`] and the OpenAPI document
//! ([`crate::openapi`]) from the same catalog, so neither can list a route the other lacks.

use http_edge::Route;
use projection_engine::catalog::Catalog;

/// The queries of every domain this replica serves.
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    orders::queries::register(&mut catalog);
    customers::queries::register(&mut catalog);
    catalog
}

/// Every route: `catalog`'s queries and the operational routes.
pub fn table(catalog: &Catalog) -> Vec<Route> {
    let mut table = catalog.routes().to_vec();
    table.extend(projection_engine::operations::ROUTES);
    table
}

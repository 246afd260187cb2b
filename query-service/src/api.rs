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

/// The reports of every domain this replica runs, with the decoders of their topics.
pub fn reports(
    decoders: crate::app::Decoders,
) -> projection_engine::report::catalog::Catalog<crate::app::Decoders> {
    let mut reports = projection_engine::report::catalog::Catalog::new(decoders);
    orders::reports::register(&mut reports);
    customers::reports::register(&mut reports);
    reports
}

/// The live timeline this replica serves streams from: orders' and customers' events.
pub type Timeline = customers::live::CommerceTimeline;

/// Every route: `catalog`'s queries, the live streams and their pages, the reports API, and the
/// operational routes.
pub fn table(catalog: &Catalog) -> Vec<Route> {
    use shared_events::live::Timeline as _;
    let mut table = catalog.routes().to_vec();
    table.extend(projection_engine::live::stream::routes(Timeline::STREAMS));
    table.extend(projection_engine::live::page::routes(Timeline::STREAMS));
    table.extend(projection_engine::report::routes::ROUTES);
    table.extend(projection_engine::rebuild::routes::ROUTES);
    table.extend(projection_engine::operations::ROUTES);
    table
}

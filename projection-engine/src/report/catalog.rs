//! The reports a replica can run: each domain's [`Report`]s, registered with the decoder of
//! their topics' records, behind one object-safe face the scheduler runs by name.

use std::sync::Arc;

use futures::future::LocalBoxFuture;
use shared_events::report::{Report, Reports};

use super::run::{Fold, Reading, RunError};
use crate::opening::OpenError;
use crate::projection::Decoder;

/// A service's decoders, one per event type its reports are fed: `DecoderFor<OrderEvent>`
/// decodes the orders topic, `DecoderFor<CustomerFeed>` the customers and the orders topics.
pub trait DecoderFor<E>: Send + Sync + 'static {
    type Decoder: Decoder<E>;
    fn decoder(&self) -> Result<Self::Decoder, OpenError>;
}

/// What the API and the scheduler know of a report.
#[derive(Debug, Clone, Copy)]
pub struct ReportInfo {
    pub name: &'static str,
    /// Its topics, by collection.
    pub topics: &'static [&'static str],
    pub summary: &'static str,
}

/// A registered report, runnable by name.
pub trait Runnable: Send + Sync {
    fn info(&self) -> ReportInfo;

    /// Reads `reading`'s range and folds it; called on the run's own thread.
    fn run<'a>(&'a self, reading: Reading<'a>) -> LocalBoxFuture<'a, Result<Fold, RunError>>;
}

struct Registered<R, S> {
    decoders: Arc<S>,
    report: std::marker::PhantomData<fn() -> R>,
}

impl<R, S> Runnable for Registered<R, S>
where
    R: Report,
    S: DecoderFor<R::Event>,
{
    fn info(&self) -> ReportInfo {
        ReportInfo {
            name: R::NAME,
            topics: R::TOPICS,
            summary: R::SUMMARY,
        }
    }

    fn run<'a>(&'a self, reading: Reading<'a>) -> LocalBoxFuture<'a, Result<Fold, RunError>> {
        Box::pin(async move {
            let decoder = self.decoders.decoder().map_err(RunError::Open)?;
            reading.fold::<R, _>(&decoder).await
        })
    }
}

/// The reports of every domain a service registers, with the decoders `S` of their topics.
pub struct Catalog<S> {
    decoders: Arc<S>,
    reports: Vec<Arc<dyn Runnable>>,
}

impl<S> std::fmt::Debug for Catalog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.reports.iter().map(|r| r.info().name))
            .finish()
    }
}

impl<S> Catalog<S> {
    pub fn new(decoders: S) -> Self {
        Self {
            decoders: Arc::new(decoders),
            reports: Vec::new(),
        }
    }

    /// The registered reports, in registration order.
    pub fn into_reports(self) -> Vec<Arc<dyn Runnable>> {
        self.reports
    }
}

impl<S, E> Reports<E> for Catalog<S>
where
    S: DecoderFor<E>,
    E: 'static,
{
    fn report<R: Report<Event = E>>(&mut self) {
        if self.reports.iter().any(|r| r.info().name == R::NAME) {
            tracing::error!(
                report = R::NAME,
                "a report registered twice; keeping the first"
            );
            return;
        }
        self.reports.push(Arc::new(Registered::<R, S> {
            decoders: Arc::clone(&self.decoders),
            report: std::marker::PhantomData,
        }));
    }
}

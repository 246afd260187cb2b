//! Prometheus metrics of a query replica, served at `/metrics` (OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::projection::{PartitionTable, ProjectionStats};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    lag: Family<PartitionLabel, Gauge>,
    owned: Family<PartitionLabel, Gauge>,
    pub forwarded: Counter,
    pub forward_errors: Counter,
    pub consistency_waits: Family<OutcomeLabel, Counter>,
}

impl Metrics {
    /// Metrics over the counters of the orders projection (`stats`) and of the customers
    /// projection (`customers`, as `customers_*`).
    pub fn new(stats: &ProjectionStats, customers: &ProjectionStats) -> Self {
        let mut registry = Registry::with_prefix("query_service");
        let lag = Family::<PartitionLabel, Gauge>::default();
        let owned = Family::<PartitionLabel, Gauge>::default();
        let forwarded = Counter::default();
        let forward_errors = Counter::default();
        let consistency_waits = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "applied_events",
            "Events applied to the projection",
            stats.applied.clone(),
        );
        registry.register(
            "version_gaps",
            "Events not applied because they were not the next version",
            stats.version_gaps.clone(),
        );
        registry.register(
            "undecodable_records",
            "Records skipped because they did not decode",
            stats.undecodable.clone(),
        );
        registry.register(
            "customers_applied_events",
            "Events (of both topics) applied to the customers projection",
            customers.applied.clone(),
        );
        registry.register(
            "customers_version_gaps",
            "Events not applied to the customers projection because they were not the next version",
            customers.version_gaps.clone(),
        );
        registry.register(
            "customers_undecodable_records",
            "Records the customers projection skipped because they did not decode",
            customers.undecodable.clone(),
        );
        registry.register(
            "lag",
            "Committed records not yet applied, per owned partition",
            lag.clone(),
        );
        registry.register(
            "partition_owned",
            "1 for partitions this replica owns",
            owned.clone(),
        );
        registry.register(
            "forwarded_queries",
            "Queries forwarded to the owning replica",
            forwarded.clone(),
        );
        registry.register(
            "forward_errors",
            "Forwards that failed (owner unreachable or timed out)",
            forward_errors.clone(),
        );
        registry.register(
            "consistency_waits",
            "Reads that waited for a consistency token, by outcome",
            consistency_waits.clone(),
        );
        Self {
            registry,
            lag,
            owned,
            forwarded,
            forward_errors,
            consistency_waits,
        }
    }

    pub fn render(&self, table: &PartitionTable) -> String {
        for partition in 0..table.count() {
            let label = PartitionLabel { partition };
            let owns = table.owns(partition);
            self.owned.get_or_create(&label).set(i64::from(owns));
            if owns {
                self.lag
                    .get_or_create(&label)
                    .set(table.lag(partition).unwrap_or(-1));
            } else {
                self.lag.remove(&label);
            }
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "could not encode metrics");
        }
        text
    }
}

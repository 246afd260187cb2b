//! Prometheus metrics of a query replica, served at `/metrics` (OpenMetrics text): each
//! projection's counters (labelled `projection`), each owned partition's lag, and the
//! forwarding and consistency-wait counters of the query routes, the live streams' and the
//! reports'.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::serving::Slot;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub projection: &'static str,
    pub topic: String,
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// A finished report's or rebuild's state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// The reports' metrics, of the runs on this replica.
#[derive(Debug, Clone, Default)]
pub struct ReportMetrics {
    /// Runs running here now.
    pub running: Gauge,
    /// Runs waiting here.
    pub queued: Gauge,
    /// Log positions reports read here.
    pub positions_read: Counter,
    /// Runs that finished here, by state.
    pub finished: Family<StateLabel, Counter>,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reports: ReportMetrics,
    projections: Vec<Arc<Slot>>,
    lag: Family<PartitionLabel, Gauge>,
    owned: Family<PartitionLabel, Gauge>,
    standby: Family<PartitionLabel, Gauge>,
    pub forwarded: Counter,
    pub forward_errors: Counter,
    /// Queries (and gathers' parts) answered from a standby, their owner unable to.
    pub standby_answers: Counter,
    pub consistency_waits: Family<OutcomeLabel, Counter>,
    pub live: LiveMetrics,
}

/// The live streams' metrics.
#[derive(Debug, Clone)]
pub struct LiveMetrics {
    /// Streams open now.
    pub streams: Gauge,
    /// Events written to streams, history included.
    pub pushed: Counter,
    /// Streams cut off because their buffer was full.
    pub slow_disconnects: Counter,
    /// From the event's record timestamp to its push onto a live stream, in seconds.
    pub push_latency: Histogram,
    /// Events the tail stored into the timeline.
    pub tailed: Counter,
    /// Records the tail skipped because they did not decode.
    pub undecodable: Counter,
}

impl Default for LiveMetrics {
    fn default() -> Self {
        Self {
            streams: Gauge::default(),
            pushed: Counter::default(),
            slow_disconnects: Counter::default(),
            push_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            tailed: Counter::default(),
            undecodable: Counter::default(),
        }
    }
}

impl Metrics {
    /// Metrics named `<prefix>_…` over the counters of every projection in `projections`.
    pub fn new(prefix: &str, projections: &[Arc<Slot>]) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        for slot in projections {
            let labelled = registry.sub_registry_with_label((
                std::borrow::Cow::Borrowed("projection"),
                std::borrow::Cow::Borrowed(slot.name()),
            ));
            labelled.register(
                "applied_events",
                "Events applied to the projection",
                slot.stats.applied.clone(),
            );
            labelled.register(
                "version_gaps",
                "Events not applied because they were not the next version",
                slot.stats.version_gaps.clone(),
            );
            labelled.register(
                "undecodable_records",
                "Records skipped because they did not decode",
                slot.stats.undecodable.clone(),
            );
            labelled.register(
                "standby_applied_events",
                "Events applied to partitions other replicas own, kept warm here",
                slot.standby_stats.applied.clone(),
            );
            labelled.register(
                "rebuilding",
                "1 while the projection is rebuilt beside the generation that serves",
                slot.rebuilds.rebuilding.clone(),
            );
            labelled.register(
                "rebuilds_finished",
                "Rebuilds of the projection that ended on this replica, by state",
                slot.rebuilds.finished.clone(),
            );
        }
        let (lag, owned, standby) = (Family::default(), Family::default(), Family::default());
        let (forwarded, forward_errors) = (Counter::default(), Counter::default());
        let consistency_waits = Family::default();
        let standby_answers = Counter::default();
        registry.register(
            "standby_answers",
            "Queries and gather parts answered from a standby because the owner could not",
            standby_answers.clone(),
        );
        registry.register(
            "lag",
            "Committed records not yet applied, per owned or standby partition",
            lag.clone(),
        );
        registry.register(
            "partition_owned",
            "1 for partitions this replica owns",
            owned.clone(),
        );
        registry.register(
            "partition_standby",
            "1 for partitions another replica owns and this one keeps warm",
            standby.clone(),
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
        let live = LiveMetrics::default();
        registry.register(
            "live_streams",
            "Live streams open on this replica",
            live.streams.clone(),
        );
        registry.register(
            "live_events_pushed",
            "Events written to live streams, history included",
            live.pushed.clone(),
        );
        registry.register(
            "live_slow_disconnects",
            "Live streams cut off because the client fell a buffer behind",
            live.slow_disconnects.clone(),
        );
        registry.register(
            "live_tail_events",
            "Events the live tail stored into the timeline",
            live.tailed.clone(),
        );
        registry.register(
            "live_tail_undecodable_records",
            "Records the live tail skipped because they did not decode",
            live.undecodable.clone(),
        );
        registry.register(
            "live_push_latency_seconds",
            "From an event's record timestamp to its push onto a live stream",
            live.push_latency.clone(),
        );
        let reports = ReportMetrics::default();
        registry.register(
            "reports_running",
            "Reports running on this replica",
            reports.running.clone(),
        );
        registry.register(
            "reports_queued",
            "Reports waiting on this replica",
            reports.queued.clone(),
        );
        registry.register(
            "report_positions_read",
            "Log positions the reports run on this replica read",
            reports.positions_read.clone(),
        );
        registry.register(
            "reports_finished",
            "Reports that finished on this replica, by state",
            reports.finished.clone(),
        );
        Self {
            registry,
            reports,
            live,
            projections: projections.to_vec(),
            lag,
            owned,
            standby,
            forwarded,
            forward_errors,
            standby_answers,
            consistency_waits,
        }
    }

    pub fn render(&self) -> String {
        for slot in &self.projections {
            let Some(served) = slot.served() else {
                continue;
            };
            for topic in &served.topics {
                let table = &topic.table;
                for partition in 0..table.count() {
                    let label = PartitionLabel {
                        projection: slot.name(),
                        topic: topic.name.clone(),
                        partition,
                    };
                    let owns = table.owns(partition);
                    let warm = table.holds_standby(partition);
                    self.owned.get_or_create(&label).set(i64::from(owns));
                    self.standby.get_or_create(&label).set(i64::from(warm));
                    if owns || warm {
                        self.lag
                            .get_or_create(&label)
                            .set(table.lag(partition).unwrap_or(-1));
                    } else {
                        self.lag.remove(&label);
                    }
                }
            }
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "could not encode metrics");
        }
        text
    }
}

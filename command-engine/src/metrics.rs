//! Prometheus metrics of the command side, served at `/metrics` (OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: &'static str,
    pub status: u16,
    /// The aggregate's name (`order`).
    pub aggregate: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AggregateLabel {
    pub aggregate: &'static str,
}

/// What the batcher records about each transaction.
#[derive(Debug, Clone)]
pub struct BatchMetrics {
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    /// Part of `commit_seconds`: from begin until the broker acknowledged every record.
    pub send_seconds: Histogram,
    /// Part of `commit_seconds`: the commit call itself (EndTxn).
    pub end_seconds: Histogram,
    /// Time a record waited in the queue before a worker took it.
    pub queue_wait_seconds: Histogram,
    pub transactions: Family<OutcomeLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Buckets for the phases of a transaction: 0.5 ms .. ~16 s.
fn transaction_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for BatchMetrics {
    fn default() -> Self {
        Self {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_seconds: transaction_latency(),
            send_seconds: transaction_latency(),
            end_seconds: transaction_latency(),
            // 0.1 ms .. ~13 s
            queue_wait_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            transactions: Family::default(),
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub commands: Family<CommandLabels, Counter>,
    pub queue_depth: Gauge,
    pub aggregates: Family<AggregateLabel, Gauge>,
    pub idempotency_keys: Gauge,
    /// Commands sent on to the instance owning their partition.
    pub forwarded: Counter,
    /// Partitions this instance owns (taking commands), over all topics.
    pub partitions_owned: Gauge,
    /// Events read from the log by the restores of assigned partitions, by aggregate.
    pub restored_events: Family<AggregateLabel, Gauge>,
    /// Events read from the log for partitions kept warm for other instances, by aggregate.
    pub standby_events: Family<AggregateLabel, Gauge>,
    /// Aggregates read from the data directory because they were not in memory, by aggregate.
    pub model_loads: Family<AggregateLabel, Gauge>,
    /// Aggregates dropped from memory (the cache was full), by aggregate.
    pub model_evictions: Family<AggregateLabel, Gauge>,
    pub checkpoints: Gauge,
    pub batch: BatchMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("command_service");
        let commands = Family::<CommandLabels, Counter>::default();
        let queue_depth = Gauge::default();
        let aggregates = Family::<AggregateLabel, Gauge>::default();
        let idempotency_keys = Gauge::default();
        let batch = BatchMetrics::default();
        let forwarded = Counter::default();
        let partitions_owned = Gauge::default();
        let restored_events = Family::<AggregateLabel, Gauge>::default();
        let standby_events = Family::<AggregateLabel, Gauge>::default();
        let model_loads = Family::<AggregateLabel, Gauge>::default();
        let model_evictions = Family::<AggregateLabel, Gauge>::default();
        let checkpoints = Gauge::default();
        registry.register(
            "restored_events",
            "Events read from the log by the restores of assigned partitions",
            restored_events.clone(),
        );
        registry.register(
            "standby_events",
            "Events read from the log for partitions kept warm for other instances",
            standby_events.clone(),
        );
        registry.register(
            "write_model_loads",
            "Aggregates read from the data directory because they were not in memory",
            model_loads.clone(),
        );
        registry.register(
            "write_model_evictions",
            "Aggregates dropped from memory because the cache was full",
            model_evictions.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints of the write model stored in the data directory",
            checkpoints.clone(),
        );
        registry.register(
            "forwarded_commands",
            "Commands sent on to the instance owning their partition",
            forwarded.clone(),
        );
        registry.register(
            "partitions_owned",
            "Partitions this instance owns and takes commands for",
            partitions_owned.clone(),
        );
        registry.register(
            "commands",
            "Commands answered, by aggregate, command and HTTP status",
            commands.clone(),
        );
        registry.register(
            "queue_depth",
            "Commands waiting in the write queue",
            queue_depth.clone(),
        );
        registry.register(
            "aggregates",
            "Aggregates in the write model, by kind",
            aggregates.clone(),
        );
        registry.register(
            "idempotency_keys",
            "Idempotency keys remembered or in flight",
            idempotency_keys.clone(),
        );
        registry.register(
            "batch_size",
            "Records per Kafka transaction",
            batch.batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time from begin to commit of a Kafka transaction",
            batch.commit_seconds.clone(),
        );
        registry.register(
            "send_seconds",
            "Time from begin until the broker acknowledged every record of a transaction",
            batch.send_seconds.clone(),
        );
        registry.register(
            "end_seconds",
            "Time of the commit call (EndTxn) of a Kafka transaction",
            batch.end_seconds.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a command's record waited in the write queue for a producer",
            batch.queue_wait_seconds.clone(),
        );
        registry.register(
            "transactions",
            "Kafka transactions by outcome",
            batch.transactions.clone(),
        );
        Self {
            registry,
            commands,
            queue_depth,
            aggregates,
            idempotency_keys,
            forwarded,
            partitions_owned,
            restored_events,
            standby_events,
            model_loads,
            model_evictions,
            checkpoints,
            batch,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "could not encode metrics");
        }
        text
    }
}

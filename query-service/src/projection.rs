//! The projection runner: a read-committed consumer-group member that applies each event to the
//! store exactly once.
//!
//! - On assignment, each partition resumes from the offset stored beside the views (from the
//!   beginning if this store never had it), not from the group's committed offset: the store is
//!   the source of truth, so a crash between the store write and an offset commit costs nothing.
//! - Each event's view change and its next offset go into one RocksDB write batch.
//! - The group's committed offsets are still advanced (after the store write) so that ordinary
//!   Kafka tooling shows the group's lag.
//!
//! The runner is generic: a domain plugs in with the [`Projection`] trait.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use shared_events::{AvroEvent, EventCodec, WireError};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreBatch, StoreError};

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The view changed.
    Changed,
    /// The event is not the next version of its aggregate; nothing was merged.
    VersionGap { expected: i64, got: i64 },
}

/// A read model fed by one event type.
pub trait Projection: Send + Sync + 'static {
    type Event: AvroEvent + Send + Sync;

    /// Stages the effect of `event` into `batch`, reading the current state from `store`.
    fn apply(
        &self,
        store: &Store,
        batch: &mut StoreBatch,
        event: &Self::Event,
    ) -> Result<Applied, StoreError>;
}

/// Partitions of the topic this replica currently owns, as the group assigned them.
#[derive(Debug, Default)]
pub struct Assignment {
    partitions: RwLock<BTreeSet<i32>>,
}

impl Assignment {
    pub fn owns(&self, partition: i32) -> bool {
        self.partitions
            .read()
            .map(|p| p.contains(&partition))
            .unwrap_or(false)
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.partitions
            .read()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut BTreeSet<i32>)) {
        match self.partitions.write() {
            Ok(mut p) => change(&mut p),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }
}

/// Counters of the runner, for metrics and for tests that prove nothing is applied twice.
#[derive(Debug, Default)]
pub struct ProjectionStats {
    pub applied: AtomicU64,
    pub version_gaps: AtomicU64,
    pub undecodable: AtomicU64,
}

/// Consumer callbacks: seeds every newly assigned partition with the store's offset.
pub struct RebalanceContext {
    store: Arc<Store>,
    topic: String,
    assignment: Arc<Assignment>,
}

impl std::fmt::Debug for RebalanceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl RebalanceContext {
    pub fn new(store: Arc<Store>, topic: String, assignment: Arc<Assignment>) -> Self {
        Self {
            store,
            topic,
            assignment,
        }
    }

    fn seed_offsets(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, partition) in partitions {
            let offset = match self.store.next_offset(&topic, partition) {
                Ok(Some(next)) => Offset::Offset(next),
                Ok(None) => Offset::Beginning,
                Err(error) => {
                    // Without a trustworthy position the only safe start is the beginning:
                    // applying is idempotent per version, so a replay re-derives the views.
                    tracing::error!(%error, partition, "stored offset unreadable; replaying partition");
                    Offset::Beginning
                }
            };
            if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::error!(%error, partition, "could not seed partition offset");
            }
        }
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let ours = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(|e| e.partition())
                .collect()
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.seed_offsets(tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) => {
                        let added = ours(tpl);
                        tracing::info!(partitions = ?added, "partitions assigned");
                        self.assignment.update(|owned| {
                            if !cooperative {
                                owned.clear();
                            }
                            owned.extend(added);
                        });
                    }
                    Err(error) => tracing::error!(%error, "assign failed"),
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(?err, "rebalance error; dropping assignment");
                }
                let removed = ours(tpl);
                // Stop serving before giving the partitions up.
                self.assignment.update(|owned| {
                    if cooperative {
                        for p in &removed {
                            owned.remove(p);
                        }
                    } else {
                        owned.clear();
                    }
                });
                tracing::info!(partitions = ?removed, "partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(%error, "unassign failed");
                }
            }
        }
    }
}

/// Applies the topic's events to the store until `shutdown` is cancelled.
#[allow(missing_debug_implementations)] // the consumer has no Debug
pub struct Runner<P: Projection> {
    pub consumer: StreamConsumer<RebalanceContext>,
    pub codec: Arc<EventCodec<P::Event>>,
    pub projection: P,
    pub store: Arc<Store>,
    pub stats: Arc<ProjectionStats>,
}

impl<P: Projection> Runner<P> {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(event) = self.decode(message.payload(), &shutdown).await else {
                if shutdown.is_cancelled() {
                    break;
                }
                // Undecodable for good: skip it, but still record the position so that the
                // partition moves on; the counter and the log say what happened.
                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "skipping undecodable record"
                );
                let mut batch = StoreBatch::default();
                batch.set_next_offset(message.topic(), message.partition(), message.offset() + 1);
                self.write(batch, &message);
                continue;
            };
            let mut batch = StoreBatch::default();
            match self.projection.apply(&self.store, &mut batch, &event) {
                Ok(Applied::Changed) => {
                    self.stats.applied.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Applied::VersionGap { expected, got }) => {
                    self.stats.version_gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        key = event.key(),
                        expected,
                        got,
                        partition = message.partition(),
                        offset = message.offset(),
                        "event version is not the next one; not applied"
                    );
                }
                Err(error) => {
                    // The store itself failed; stop rather than skip an event.
                    tracing::error!(%error, "store read failed; projection stops");
                    break;
                }
            }
            batch.set_next_offset(message.topic(), message.partition(), message.offset() + 1);
            if !self.write(batch, &message) {
                break;
            }
        }
        tracing::info!("projection runner stopped");
    }

    /// Writes the batch, then lets the group's committed offset follow. False if the store failed.
    fn write(&self, batch: StoreBatch, message: &rdkafka::message::BorrowedMessage<'_>) -> bool {
        if let Err(error) = self.store.write(batch) {
            tracing::error!(%error, "store write failed; projection stops");
            return false;
        }
        if let Err(error) = self.consumer.store_offset_from_message(message) {
            // Only affects lag reporting: positions come from the store.
            tracing::debug!(%error, "could not store consumer offset");
        }
        true
    }

    /// Decodes a record value, retrying while the registry is unreachable. None for records that
    /// will never decode (or on shutdown).
    async fn decode(
        &self,
        payload: Option<&[u8]>,
        shutdown: &CancellationToken,
    ) -> Option<P::Event> {
        let payload = payload?;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.codec.decode(payload).await {
                Ok(event) => return Some(event),
                Err(WireError::Registry {
                    retriable: true,
                    source,
                }) => {
                    tracing::warn!(error = %source, "schema registry unavailable; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::error!(%error, "record does not decode");
                    return None;
                }
            }
        }
    }
}

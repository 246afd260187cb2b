//! One aggregate's share of the command side: its topic, its codec, and for each partition of
//! the topic the partition's write model and idempotency receipts.
//!
//! Everything the command side remembers is kept per partition, and a command touches exactly
//! one partition: its aggregate's (Kafka's murmur2 of the id). A command that creates an
//! aggregate under an `Idempotency-Key` gets an id in the key's partition, so that the receipt
//! and the aggregate live together. The start-up replay fills each partition from that
//! partition of the log alone. So a partition's state can be rebuilt, and later owned, on its
//! own.

use std::sync::Arc;
use std::time::Duration;

use shared_events::partitioner::partition_for_key;
use shared_events::{Aggregate, EventCodec, EventEnvelope, Position};

use crate::idempotency::{Fingerprint, IdempotencyIndex, Receipt};
use crate::write_model::WriteModel;

/// What the command side keeps of one partition.
#[derive(Debug)]
pub struct Partition<A> {
    pub number: i32,
    pub model: Arc<WriteModel<A>>,
    pub idempotency: Arc<IdempotencyIndex>,
}

/// One aggregate type's topic and state.
#[derive(Debug)]
pub struct Lane<A: Aggregate> {
    topic: Arc<str>,
    codec: EventCodec<A::Event>,
    partitions: Box<[Partition<A>]>,
}

/// How long idempotency receipts are kept, and how many at most (over all partitions).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub window: Duration,
    pub max_keys: usize,
}

impl<A: Aggregate> Lane<A> {
    /// An empty lane for `topic`, which has `partitions` partitions.
    pub fn new(
        topic: &str,
        codec: EventCodec<A::Event>,
        partitions: i32,
        retention: Retention,
    ) -> Self {
        let count = usize::try_from(partitions.max(1)).unwrap_or(1);
        let partitions = (0..partitions.max(1))
            .map(|number| Partition {
                number,
                model: Arc::new(WriteModel::for_partition_of(count)),
                idempotency: IdempotencyIndex::new(
                    retention.window,
                    retention.max_keys.div_ceil(count).max(1),
                ),
            })
            .collect();
        Self {
            topic: topic.into(),
            codec,
            partitions,
        }
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn codec(&self) -> &EventCodec<A::Event> {
        &self.codec
    }

    /// The partition that owns `key` (an aggregate id, or an idempotency key).
    pub fn partition_of(&self, key: &str) -> &Partition<A> {
        let count = i32::try_from(self.partitions.len()).unwrap_or(i32::MAX);
        let index = partition_for_key(key.as_bytes(), count);
        &self.partitions[usize::try_from(index).unwrap_or(0)]
    }

    pub fn partitions(&self) -> &[Partition<A>] {
        &self.partitions
    }

    /// A fresh aggregate id (a UUIDv7: time-ordered) that falls in `partition`.
    pub fn new_id_in(&self, partition: &Partition<A>) -> String {
        // Each try lands in the partition with probability 1/partitions; the bound only
        // matters if the partitioner were broken.
        let tries = self.partitions.len().saturating_mul(64).max(1);
        let mut id = uuid::Uuid::now_v7().to_string();
        for _ in 1..tries {
            if std::ptr::eq(self.partition_of(&id), partition) {
                break;
            }
            id = uuid::Uuid::now_v7().to_string();
        }
        id
    }

    /// Applies an event read back from partition `position.partition` of the log, and
    /// remembers the receipt of the keyed command that wrote it.
    pub fn restore(&self, event: &A::Event, position: Position, now_ms: i64) {
        let Some(partition) = usize::try_from(position.partition)
            .ok()
            .and_then(|p| self.partitions.get(p))
        else {
            tracing::error!(
                partition = position.partition,
                topic = %self.topic,
                "an event from a partition the topic did not have at start"
            );
            return;
        };
        partition.model.apply_from_log(event);
        if let Some(key) = event.idempotency_key() {
            partition.idempotency.remember(
                key,
                fingerprint_of::<A>(event),
                receipt_of::<A>(event, position),
                event.occurred_at_ms(),
                now_ms,
            );
        }
    }

    /// Aggregates known, over all partitions.
    pub fn aggregates(&self) -> usize {
        self.partitions.iter().map(|p| p.model.len()).sum()
    }

    /// Idempotency keys remembered or in flight, over all partitions.
    pub fn idempotency_keys(&self) -> usize {
        self.partitions.iter().map(|p| p.idempotency.len()).sum()
    }

    /// Events in the log that did not follow their aggregate's history.
    pub fn gaps(&self) -> u64 {
        self.partitions.iter().map(|p| p.model.gaps()).sum()
    }

    /// Forgets idempotency receipts past the retention window.
    pub fn expire(&self, now_ms: i64) {
        for partition in self.partitions.iter() {
            partition.idempotency.expire(now_ms);
        }
    }
}

/// Whether the command named `command` creates its aggregate.
pub fn creates<A: Aggregate>(command: &str) -> bool {
    A::COMMANDS
        .iter()
        .any(|spec| spec.name == command && spec.creates())
}

/// The fingerprint of the request that wrote `event`, as the command handler computed it from
/// the request: the command, the aggregate it named in its path, and what it asked for.
pub fn fingerprint_of<A: Aggregate>(event: &A::Event) -> Fingerprint {
    let command = A::command_of(event);
    let target = (!creates::<A>(command)).then_some(event.aggregate_id());
    Fingerprint::new(command, target, A::payload(event))
}

/// The answer the command that wrote `event` at `position` got.
pub fn receipt_of<A: Aggregate>(event: &A::Event, position: Position) -> Receipt {
    let command = A::command_of(event);
    Receipt {
        command,
        created: creates::<A>(command),
        aggregate_id: event.aggregate_id().to_owned(),
        version: event.aggregate_version(),
        event_id: event.event_id().to_owned(),
        position,
    }
}

/// A lane with its aggregate type erased, as a service holds the lanes it runs.
pub trait AnyLane: Send + Sync + 'static {
    /// The aggregate's name (`order`).
    fn name(&self) -> &'static str;
    fn topic(&self) -> &str;
    /// Registers the lane's state and its command routes.
    fn configure(self: Arc<Self>, config: &mut actix_web::web::ServiceConfig);
    /// Rebuilds the lane from its topic (see [`crate::replay`]). Run once, before serving.
    fn restore<'a>(
        &'a self,
        kafka: &'a service_config::KafkaArgs,
        group: &'a str,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<crate::replay::Replayed, crate::replay::ReplayError>>;
    fn aggregates(&self) -> usize;
    fn idempotency_keys(&self) -> usize;
    fn gaps(&self) -> u64;
    fn expire(&self, now_ms: i64);
}

impl<A: Aggregate> AnyLane for Lane<A> {
    fn name(&self) -> &'static str {
        A::NAME
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn configure(self: Arc<Self>, config: &mut actix_web::web::ServiceConfig) {
        config.app_data(actix_web::web::Data::from(self));
        http_edge::routes::register(&crate::pipeline::routes::<A>(), config);
    }

    fn restore<'a>(
        &'a self,
        kafka: &'a service_config::KafkaArgs,
        group: &'a str,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'a, Result<crate::replay::Replayed, crate::replay::ReplayError>>
    {
        Box::pin(async move {
            let now = crate::pipeline::now_ms();
            crate::replay::replay(
                kafka,
                group,
                &self.topic,
                &self.codec,
                timeout,
                |event: A::Event, position| Lane::restore(self, &event, position, now),
            )
            .await
        })
    }

    fn aggregates(&self) -> usize {
        Lane::aggregates(self)
    }

    fn idempotency_keys(&self) -> usize {
        Lane::idempotency_keys(self)
    }

    fn gaps(&self) -> u64 {
        Lane::gaps(self)
    }

    fn expire(&self, now_ms: i64) {
        Lane::expire(self, now_ms);
    }
}

/// Visits each aggregate a service runs, with the topic it runs on. A service lists its
/// aggregates once, as calls to [`Visit::aggregate`], and builds its routes, its API document
/// and its lanes from that one list.
pub trait Visit {
    fn aggregate<A: Aggregate>(&mut self, topic: &str);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use schema_registry_converter::async_impl::schema_registry::SrSettings;
    use shared_events::{Aggregate, EventCodec, Position};

    use super::{Lane, Retention, fingerprint_of, receipt_of};
    use crate::idempotency::{Begin, Fingerprint};
    use crate::toy::{Counter, CounterCommand, event};

    fn lane(partitions: i32) -> Lane<Counter> {
        // Never contacted: these tests neither encode nor decode.
        let codec = EventCodec::new(SrSettings::new("http://127.0.0.1:9".into()), "t").unwrap();
        let retention = Retention {
            window: Duration::from_secs(60),
            max_keys: 100,
        };
        Lane::new("t", codec, partitions, retention)
    }

    fn at(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    /// The fingerprint rebuilt from the log after a restart is the one the request computed,
    /// so a retry after a restart is recognised, and a different request under the key is not.
    #[tokio::test]
    async fn a_restored_receipt_answers_the_same_request_only() {
        let lane = lane(4);
        let partition = lane.partition_of("c-1").number;
        lane.restore(&event("c-1", 1, 0, None), at(partition, 0), 0);
        lane.restore(&event("c-1", 2, 5, Some("k")), at(partition, 1), 0);
        let index = &lane.partition_of("c-1").idempotency;
        let same = Fingerprint::new(
            "add",
            Some("c-1"),
            &Counter::requested(&CounterCommand::Add(5)),
        );
        match index.begin("k", same).await {
            Begin::Replay(receipt) => {
                assert_eq!(
                    receipt,
                    receipt_of::<Counter>(&event("c-1", 2, 5, Some("k")), at(partition, 1))
                );
                assert!(!receipt.created);
            }
            other => panic!("expected a replay, got {other:?}"),
        }
        let other = Fingerprint::new(
            "add",
            Some("c-1"),
            &Counter::requested(&CounterCommand::Add(6)),
        );
        assert!(matches!(index.begin("k", other).await, Begin::Mismatch));
        assert_eq!(
            fingerprint_of::<Counter>(&event("c-1", 1, 0, Some("k"))),
            Fingerprint::new("open", None, &Counter::requested(&CounterCommand::Open)),
            "a creating command names no target"
        );
    }

    /// Each partition's state comes from that partition of the log alone.
    #[test]
    fn restoring_fills_the_partition_the_event_was_read_from() {
        let lane = lane(3);
        let ids: Vec<String> = (0..30).map(|n| format!("c-{n}")).collect();
        for id in &ids {
            let partition = lane.partition_of(id).number;
            lane.restore(&event(id, 1, 0, None), at(partition, 0), 0);
            lane.restore(&event(id, 2, 7, None), at(partition, 1), 0);
        }
        assert_eq!(lane.aggregates(), 30);
        assert_eq!(lane.gaps(), 0);
        for id in &ids {
            let partition = lane.partition_of(id);
            let slot = partition.model.get(id).unwrap();
            let slot = slot.try_lock().unwrap();
            assert_eq!((slot.version, slot.state), (2, Some(Counter { value: 7 })));
            for other in lane.partitions() {
                if !std::ptr::eq(other, partition) {
                    assert!(other.model.get(id).is_none(), "{id} in a second partition");
                }
            }
        }
        // A gap in the log is counted, not papered over.
        lane.restore(
            &event("c-0", 4, 1, None),
            at(lane.partition_of("c-0").number, 2),
            0,
        );
        assert_eq!(lane.gaps(), 1);
        // An event from a partition the topic did not have is refused.
        lane.restore(&event("c-x", 1, 0, None), at(7, 0), 0);
        assert_eq!(lane.aggregates(), 30);
    }

    /// A new aggregate created under a key gets an id in the key's partition, so its receipt
    /// and its state live together.
    #[test]
    fn new_ids_fall_in_the_partition_asked_for() {
        let lane = lane(6);
        for partition in lane.partitions() {
            for _ in 0..20 {
                let id = lane.new_id_in(partition);
                assert!(std::ptr::eq(lane.partition_of(&id), partition), "{id}");
            }
        }
    }
}

//! One aggregate's share of the command side: its topic, its codec, and for each partition of
//! the topic the partition's write model.
//!
//! A command touches exactly one partition's model: its aggregate's (Kafka's murmur2 of the
//! id, which is also where its record is sent), so a partition's model is restored, and owned,
//! on its own: the lane's [`Leases`] say which partitions this instance owns now, and its
//! [`Cluster`] view which instance owns the others.
//!
//! Idempotency receipts are not partitioned: a key is the client's, not the aggregate's, and a
//! key reused for another aggregate (of any kind) must still be recognised. The service keeps
//! one index for all its lanes ([`crate::idempotency`]); the restore of each partition, and the
//! standby copy of another instance's, fill it with the receipts of that partition's events.
//! With several instances, a key is therefore recognised by the instance owning the partition
//! its first command wrote to, where a retry goes (the same aggregate, or for a new aggregate
//! with no id of its own, the key's partition, see [`crate::pipeline`]); a key reused for an
//! aggregate of another instance's partition is recognised as reused only where that partition
//! is kept warm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use partition_routing::membership::Cluster;
use shared_events::partitioner::partition_for_key;
use shared_events::{Aggregate, EventCodec, EventEnvelope, Position};

use crate::checkpoint::{Staged, distinct};
use crate::idempotency::{Fingerprint, IdempotencyIndex, Receipt};
use crate::ownership::Leases;
use crate::restore::RestoreError;
use crate::snapshot::{Checkpoint, SnapshotError, SnapshotStore};
use crate::write_model::{Stored, WriteModel};

/// What the command side keeps of one partition.
#[derive(Debug)]
pub struct Partition<A> {
    pub number: i32,
    pub model: Arc<WriteModel<A>>,
}

/// One aggregate type's topic and state.
#[derive(Debug)]
pub struct Lane<A: Aggregate> {
    topic: Arc<str>,
    codec: EventCodec<A::Event>,
    partitions: Box<[Partition<A>]>,
    idempotency: Arc<IdempotencyIndex>,
    leases: Arc<Leases>,
    /// The command group as last described: who owns the partitions this instance does not.
    cluster: Option<Arc<Cluster>>,
    /// Events read by restores since start.
    restored: AtomicU64,
    /// Events read for partitions kept warm for other instances since start.
    warmed: AtomicU64,
}

impl<A: Aggregate> Lane<A> {
    /// An empty lane for `topic`, which has `partitions` partitions, remembering receipts in
    /// the service's `idempotency` index, owning no partition yet. With a `store`, each
    /// partition's model starts from its snapshot there and keeps about `capacity / partitions`
    /// aggregates in memory.
    pub fn new(
        topic: &str,
        codec: EventCodec<A::Event>,
        partitions: i32,
        idempotency: Arc<IdempotencyIndex>,
        cluster: Option<Arc<Cluster>>,
        store: Option<(Arc<SnapshotStore>, usize)>,
    ) -> Self {
        let count = usize::try_from(partitions.max(1)).unwrap_or(1);
        let topic_name: Arc<str> = topic.into();
        let partitions = (0..partitions.max(1))
            .map(|number| {
                let model = match &store {
                    None => WriteModel::for_partition_of(count),
                    Some((store, capacity)) => WriteModel::stored(
                        count,
                        Some(Stored {
                            store: Arc::clone(store),
                            topic: Arc::clone(&topic_name),
                            partition: number,
                        }),
                        capacity / count,
                    ),
                };
                Partition {
                    number,
                    model: Arc::new(model),
                }
            })
            .collect();
        Self {
            topic: topic.into(),
            codec,
            partitions,
            idempotency,
            leases: Leases::new(topic, i32::try_from(count).unwrap_or(i32::MAX)),
            cluster,
            restored: AtomicU64::new(0),
            warmed: AtomicU64::new(0),
        }
    }

    pub fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    pub fn idempotency(&self) -> &Arc<IdempotencyIndex> {
        &self.idempotency
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

    fn model(&self, partition: i32) -> Option<&Arc<WriteModel<A>>> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.partitions.get(p))
            .map(|p| &p.model)
    }

    /// Applies an event read back from the log, and remembers the receipt of the keyed command
    /// that wrote it. The event goes to the partition its id belongs to now, which is where
    /// commands will look for it: the one it was read from differs only if partitions were
    /// added to the topic since (said in the log; the aggregate's later events then go to the
    /// new partition, as with any keyed Kafka topic).
    pub fn restore(
        &self,
        event: &A::Event,
        position: Position,
        now_ms: i64,
    ) -> Result<(), SnapshotError> {
        let partition = self.partition_of(event.aggregate_id());
        if partition.number != position.partition {
            tracing::warn!(
                topic = %self.topic,
                aggregate = event.aggregate_id(),
                read_from = position.partition,
                belongs_to = partition.number,
                "an event was read from another partition than its id belongs to now"
            );
        }
        partition.model.apply_from_log(event)?;
        if let Some(read_from) = usize::try_from(position.partition)
            .ok()
            .and_then(|p| self.partitions.get(p))
        {
            read_from.model.applied_up_to(position.offset + 1);
        }
        if let Some(key) = event.idempotency_key() {
            self.idempotency.remember(
                key,
                fingerprint_of::<A>(event),
                receipt_of::<A>(event, position),
                event.occurred_at_ms(),
                now_ms,
            );
        }
        Ok(())
    }

    /// Aggregates known, over all partitions.
    pub fn aggregates(&self) -> usize {
        self.partitions.iter().map(|p| p.model.len()).sum()
    }

    /// Events in the log that did not follow their aggregate's history.
    pub fn gaps(&self) -> u64 {
        self.partitions.iter().map(|p| p.model.gaps()).sum()
    }
}

/// Whether the command named `command` creates its aggregate.
pub fn creates<A: Aggregate>(command: &str) -> bool {
    A::COMMANDS
        .iter()
        .any(|spec| spec.name == command && spec.creates())
}

/// What identifies "the same request" for an `Idempotency-Key`: the aggregate kind, the
/// command, the aggregate it named in its path, and what it asked for.
pub fn fingerprint<A: Aggregate>(
    command: &'static str,
    target: Option<&str>,
    requested: &A::Payload,
) -> Fingerprint {
    Fingerprint::new(command, target, &(A::NAME, requested))
}

/// The fingerprint of the request that wrote `event`, as the command handler computed it from
/// the request.
pub fn fingerprint_of<A: Aggregate>(event: &A::Event) -> Fingerprint {
    let command = A::command_of(event);
    let target = (!creates::<A>(command)).then_some(event.aggregate_id());
    fingerprint::<A>(command, target, A::payload(event))
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
    /// Decodes a record read from the log and applies its event ([`Lane::restore`]), asking
    /// the registry through `runtime` for a schema not seen yet. Blocking.
    fn apply_record(
        &self,
        payload: &[u8],
        position: Position,
        runtime: &tokio::runtime::Handle,
        now_ms: i64,
    ) -> Result<(), RestoreError>;
    /// Everything of `partition` before `offset` is reflected in its model.
    fn applied_up_to(&self, partition: i32, offset: i64);
    /// Counts events read by restores and for partitions kept warm.
    fn count_read(&self, restored: u64, warmed: u64);
    fn leases(&self) -> &Arc<Leases>;
    fn cluster(&self) -> Option<&Arc<Cluster>>;
    /// The offset of `partition` after the last event its model reflects.
    fn applied(&self, partition: i32) -> i64;
    /// Aggregates of `partition` whose last command's outcome is in doubt.
    fn in_doubt(&self, partition: i32) -> u64;
    /// Adds the aggregates changed since the last checkpoint to `batch`. Blocking.
    fn stage(&self, batch: &mut Checkpoint) -> Result<Staged, SnapshotError>;
    /// The staged aggregates are stored: they may leave memory unless changed since. Blocking.
    fn stored(&self, staged: &Staged);
    /// Aggregates read from the store, and dropped from memory, since start.
    fn cache_traffic(&self) -> (u64, u64);
    /// Events read from the log by restores since start.
    fn restored(&self) -> u64;
    /// Events read from the log for partitions kept warm since start.
    fn warmed(&self) -> u64;
    fn aggregates(&self) -> usize;
    fn gaps(&self) -> u64;
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

    fn apply_record(
        &self,
        payload: &[u8],
        position: Position,
        runtime: &tokio::runtime::Handle,
        now_ms: i64,
    ) -> Result<(), RestoreError> {
        let decoded = match self.codec.decode_known(payload) {
            Some(decoded) => decoded,
            None => runtime.block_on(self.codec.decode(payload)),
        };
        let event = decoded.map_err(|source| RestoreError::Decode {
            partition: position.partition,
            offset: position.offset,
            source,
        })?;
        Lane::restore(self, &event, position, now_ms)?;
        Ok(())
    }

    fn applied_up_to(&self, partition: i32, offset: i64) {
        if let Some(model) = self.model(partition) {
            model.applied_up_to(offset);
        }
    }

    fn count_read(&self, restored: u64, warmed: u64) {
        self.restored.fetch_add(restored, Ordering::Relaxed);
        self.warmed.fetch_add(warmed, Ordering::Relaxed);
    }

    fn leases(&self) -> &Arc<Leases> {
        &self.leases
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    fn applied(&self, partition: i32) -> i64 {
        self.model(partition).map_or(0, |model| model.applied())
    }

    fn in_doubt(&self, partition: i32) -> u64 {
        self.model(partition).map_or(0, |model| model.in_doubt())
    }

    fn stage(&self, batch: &mut Checkpoint) -> Result<Staged, SnapshotError> {
        let mut staged = Vec::new();
        for partition in &self.partitions {
            let model = &partition.model;
            for id in distinct(model.take_changed()) {
                // Not in memory: dropped, which only a stored aggregate is.
                let Some(cell) = model.get(&id) else {
                    continue;
                };
                // Waits for a command holding it: its state before that command is what the
                // offset being stored stands for.
                let slot = cell.blocking_lock();
                let Some(state) = slot.state.as_ref().filter(|_| slot.dirty && !slot.in_doubt)
                else {
                    continue;
                };
                let encoded = serde_json::to_vec(state).map_err(|e| SnapshotError::Corrupt {
                    what: "aggregate state",
                    reason: e.to_string(),
                })?;
                batch.aggregate(&self.topic, partition.number, &id, slot.version, &encoded);
                staged.push((partition.number, id, slot.version));
            }
        }
        Ok(staged)
    }

    fn stored(&self, staged: &Staged) {
        for (partition, id, version) in staged {
            if let Some(cell) = self.model(*partition).and_then(|model| model.get(id)) {
                let mut slot = cell.blocking_lock();
                if slot.version == *version {
                    slot.dirty = false;
                }
            }
        }
    }

    fn restored(&self) -> u64 {
        self.restored.load(Ordering::Relaxed)
    }

    fn warmed(&self) -> u64 {
        self.warmed.load(Ordering::Relaxed)
    }

    fn cache_traffic(&self) -> (u64, u64) {
        self.partitions
            .iter()
            .fold((0, 0), |(loads, evictions), p| {
                (
                    loads + p.model.loads.load(Ordering::Relaxed),
                    evictions + p.model.evictions.load(Ordering::Relaxed),
                )
            })
    }

    fn aggregates(&self) -> usize {
        Lane::aggregates(self)
    }

    fn gaps(&self) -> u64 {
        Lane::gaps(self)
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

    use super::{Lane, fingerprint, fingerprint_of, receipt_of};
    use crate::idempotency::{Begin, IdempotencyIndex};
    use crate::toy::{Counter, CounterCommand, event};

    fn lane(partitions: i32) -> Lane<Counter> {
        // Never contacted: these tests neither encode nor decode.
        let codec = EventCodec::new(SrSettings::new("http://127.0.0.1:9".into()), "t").unwrap();
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        Lane::new("t", codec, partitions, index, None, None)
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
        lane.restore(&event("c-1", 1, 0, None), at(partition, 0), 0)
            .unwrap();
        lane.restore(&event("c-1", 2, 5, Some("k")), at(partition, 1), 0)
            .unwrap();
        let index = lane.idempotency();
        let asked = |amount| Counter::requested(&CounterCommand::Add(amount));
        match index
            .begin("k", fingerprint::<Counter>("add", Some("c-1"), &asked(5)))
            .await
        {
            Begin::Replay(receipt) => {
                assert_eq!(
                    receipt,
                    receipt_of::<Counter>(&event("c-1", 2, 5, Some("k")), at(partition, 1))
                );
                assert!(!receipt.created);
            }
            other => panic!("expected a replay, got {other:?}"),
        }
        for different in [
            fingerprint::<Counter>("add", Some("c-1"), &asked(6)),
            fingerprint::<Counter>("add", Some("c-2"), &asked(5)),
        ] {
            assert!(matches!(index.begin("k", different).await, Begin::Mismatch));
        }
        assert_eq!(
            fingerprint_of::<Counter>(&event("c-1", 1, 0, Some("k"))),
            fingerprint::<Counter>("open", None, &Counter::requested(&CounterCommand::Open)),
            "a creating command names no target"
        );
    }

    /// With a store behind it, the model keeps a bounded cache: aggregates a checkpoint has
    /// stored leave memory as others come, and are read back as they were; changed ones stay.
    #[test]
    fn a_stored_lane_keeps_a_bounded_cache_and_reads_the_rest_back() {
        use crate::lane::AnyLane;
        use crate::snapshot::{Checkpoint, SnapshotStore};

        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let codec = EventCodec::new(SrSettings::new("http://127.0.0.1:9".into()), "t").unwrap();
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        // 4 096 shards of one aggregate each.
        let lane: Lane<Counter> =
            Lane::new("t", codec, 1, index, None, Some((store.clone(), 4096)));
        let ids: Vec<String> = (0..6000).map(|n| format!("c-{n}")).collect();
        for (n, id) in ids.iter().enumerate() {
            lane.restore(&event(id, 1, 0, None), at(0, 0), 0).unwrap();
            let amount = i64::try_from(n).unwrap() + 1;
            lane.restore(&event(id, 2, amount, None), at(0, 1), 0)
                .unwrap();
        }
        let model = &lane.partitions()[0].model;
        assert_eq!(model.len(), 6000, "changed aggregates stay until stored");
        let mut batch = Checkpoint::default();
        let staged = lane.stage(&mut batch).unwrap();
        assert_eq!(staged.len(), 6000);
        store.write(batch).unwrap();
        lane.stored(&staged);
        // Stored and clean: new aggregates now push them out.
        for id in (0..6000).map(|n| format!("d-{n}")) {
            lane.restore(&event(&id, 1, 0, None), at(0, 2), 0).unwrap();
        }
        let (_, evicted) = lane.cache_traffic();
        assert!(evicted > 1000, "only {evicted} dropped");
        assert!(model.len() < 12_000 - 1000);
        for (n, id) in ids.iter().enumerate() {
            let cell = model.find(id).unwrap().unwrap();
            let slot = cell.try_lock().unwrap();
            let value = i64::try_from(n).unwrap() + 1;
            assert_eq!(
                (slot.version, slot.state),
                (2, Some(Counter { value })),
                "{id}"
            );
        }
        let (loads, _) = lane.cache_traffic();
        assert!(loads > 1000, "only {loads} read back");
    }

    /// Each event lands in the partition its id belongs to, whatever partition it was read
    /// from: that is where commands look for it.
    #[test]
    fn restoring_fills_the_partition_each_id_belongs_to() {
        let lane = lane(3);
        let ids: Vec<String> = (0..30).map(|n| format!("c-{n}")).collect();
        for id in &ids {
            let partition = lane.partition_of(id).number;
            lane.restore(&event(id, 1, 0, None), at(partition, 0), 0)
                .unwrap();
            // As if partitions had been added since: read from another partition.
            lane.restore(&event(id, 2, 7, None), at((partition + 1) % 3, 1), 0)
                .unwrap();
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
        lane.restore(&event("c-0", 4, 1, None), at(0, 2), 0)
            .unwrap();
        assert_eq!(lane.gaps(), 1);
    }
}

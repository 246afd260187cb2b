//! The command side's memory of every aggregate: its current state and version, one async lock
//! per aggregate.
//!
//! A command holds its aggregate's lock from the moment it reads the state until its event has
//! committed or is known not to have (see [`crate::batcher`]), so of two racing commands on one
//! aggregate the second decides against the first one's outcome: versions go 1, 2, 3 … with no
//! gap or duplicate, and conflicting commands cannot both win. Commands on different aggregates
//! never wait for each other and share transactions.
//!
//! A partition's model is brought up to date from the log when the partition is assigned to
//! this instance, or kept so while another instance owns it and this one is its standby
//! ([`crate::restore`]), and while owned here it is kept by the command flow itself, which is why one
//! instance at a time owns a partition ([`crate::ownership`]). There is one model per partition
//! of the topic ([`crate::lane`]), so that a partition's model moves between instances on its
//! own; [`WriteModel::applied`] is where its next read of the log starts.
//!
//! With a [`crate::snapshot`] store behind it, the model in memory is a cache: an aggregate not
//! in memory is read from the store, and beyond [`WriteModel`]'s capacity aggregates are
//! dropped from memory, only ever ones the store already has as they are (clean), that nobody
//! holds, and whose outcome is known. Changed (dirty) aggregates stay until a checkpoint has
//! stored them ([`crate::checkpoint`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shared_events::{Aggregate, EventEnvelope};
use tokio::sync::OwnedMutexGuard;

use crate::sharded::{ShardedMap, lock};
use crate::snapshot::{SnapshotError, SnapshotStore};

/// One aggregate: its state (None until its first event) and the version of its last event.
#[derive(Debug)]
pub struct Slot<A> {
    pub state: Option<A>,
    pub version: i64,
    /// A command's event may or may not be in the log (see [`crate::batcher::CommitError::InDoubt`]):
    /// the state cannot be trusted until a restart reads the log, so no command decides on it.
    pub in_doubt: bool,
    /// Changed since the store last had it: kept in memory until a checkpoint stores it.
    pub dirty: bool,
}

impl<A: Aggregate> Slot<A> {
    /// Applies an event that is known to be in the log. False (and nothing changes) when the
    /// event is not the next version or does not follow the state.
    pub fn apply(&mut self, event: &A::Event) -> bool {
        if event.aggregate_version() != self.version + 1 {
            return false;
        }
        match A::evolve(self.state.as_ref(), event) {
            Some(next) => {
                self.state = Some(next);
                self.version = event.aggregate_version();
                self.dirty = true;
                true
            }
            None => false,
        }
    }
}

fn empty<A>() -> SlotCell<A> {
    Arc::new(tokio::sync::Mutex::new(Slot {
        state: None,
        version: 0,
        in_doubt: false,
        dirty: false,
    }))
}

/// A locked aggregate; dropping it lets the next command on that aggregate in.
pub type LockedSlot<A> = OwnedMutexGuard<Slot<A>>;

type SlotCell<A> = Arc<tokio::sync::Mutex<Slot<A>>>;

/// Shards of the maps of one topic, spread over its partitions' models. The model holds every aggregate ever written, and a map that outgrows its
/// table rehashes every key in it while the inserting HTTP thread waits. Keys spread evenly, so
/// all shards outgrow their tables within moments of each other: with 64 shards, at 3.6 million
/// aggregates, that was 64 rehashes of ~57 000 keys (~11 ms each, 0.7 s in all) within two
/// seconds, and the latency of every command around them went to hundreds of milliseconds. At
/// 4 096 shards a rehash at that size moves ~900 keys, well under a millisecond; the shards
/// themselves cost ~230 KiB.
const SHARDS: usize = 4096;

/// Where a partition's model is stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub store: Arc<SnapshotStore>,
    pub topic: Arc<str>,
    pub partition: i32,
}

#[derive(Debug)]
pub struct WriteModel<A> {
    slots: ShardedMap<SlotCell<A>>,
    /// Most aggregates each shard keeps in memory when there is a store to read the others from.
    shard_capacity: usize,
    stored: Option<Stored>,
    /// Ids of aggregates changed since the last checkpoint (possibly repeated).
    changed: Mutex<Vec<String>>,
    /// Aggregates read from the store, and dropped from memory.
    pub loads: AtomicU64,
    pub evictions: AtomicU64,
    /// Aggregates whose last command's outcome is in doubt (until a restart reads the log).
    in_doubt: AtomicU64,
    gaps: AtomicU64,
    /// The offset of the partition after the last event this model reflects. Every committed
    /// event below it is reflected once no command of this instance is in flight on the
    /// partition, which is the case whenever the partition is (re)assigned here.
    applied: AtomicI64,
}

impl<A: Aggregate> Default for WriteModel<A> {
    fn default() -> Self {
        Self::for_partition_of(1)
    }
}

impl<A: Aggregate> WriteModel<A> {
    /// The model of one of `partitions` partitions, in memory only: its share of the shards.
    pub fn for_partition_of(partitions: usize) -> Self {
        Self::stored(partitions, None, usize::MAX)
    }

    /// The model of one of `partitions` partitions, read from and checkpointed to `stored`
    /// when there is one, keeping at most about `capacity` aggregates in memory.
    pub fn stored(partitions: usize, stored: Option<Stored>, capacity: usize) -> Self {
        let shards = (SHARDS / partitions.max(1)).max(64);
        let applied = stored
            .as_ref()
            .and_then(|s| s.store.offset(&s.topic, s.partition).ok())
            .unwrap_or(0);
        Self {
            slots: ShardedMap::new(shards),
            shard_capacity: if stored.is_some() {
                (capacity / shards).max(1)
            } else {
                usize::MAX
            },
            stored,
            changed: Mutex::default(),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            in_doubt: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            applied: AtomicI64::new(applied),
        }
    }

    pub fn store(&self) -> Option<&Stored> {
        self.stored.as_ref()
    }

    /// The aggregate's cell if it is in memory.
    pub fn get(&self, id: &str) -> Option<SlotCell<A>> {
        self.slots.shard(id).get(id).cloned()
    }

    /// The aggregate's cell, created empty for an id never seen before (memory only).
    pub fn get_or_create(&self, id: &str) -> SlotCell<A> {
        Arc::clone(
            self.slots
                .shard(id)
                .entry(id.to_owned())
                .or_insert_with(|| empty()),
        )
    }

    /// The aggregate's cell, from memory or else from the store; None if it has never had an
    /// event (nor a command in flight).
    pub fn find(&self, id: &str) -> Result<Option<SlotCell<A>>, SnapshotError> {
        self.lookup(id, false)
    }

    /// A new empty cell for an id that cannot exist yet (one this service just generated): the
    /// store is not asked.
    pub fn create_new(&self, id: &str) -> SlotCell<A> {
        let mut shard = self.slots.shard(id);
        if let Some(cell) = shard.get(id) {
            return Arc::clone(cell);
        }
        if shard.len() >= self.shard_capacity {
            self.evict(&mut shard);
        }
        let cell = empty();
        shard.insert(id.to_owned(), Arc::clone(&cell));
        cell
    }

    /// [`WriteModel::find`], or a new empty cell for an id never seen.
    pub fn find_or_create(&self, id: &str) -> Result<SlotCell<A>, SnapshotError> {
        self.lookup(id, true)?
            .ok_or_else(|| SnapshotError::Corrupt {
                what: "aggregate",
                reason: "created but not found".into(),
            })
    }

    fn lookup(&self, id: &str, create: bool) -> Result<Option<SlotCell<A>>, SnapshotError> {
        let mut shard = self.slots.shard(id);
        if let Some(cell) = shard.get(id) {
            return Ok(Some(Arc::clone(cell)));
        }
        // Read under the shard's lock, so that two commands on one id cannot load it twice.
        let loaded = match &self.stored {
            None => None,
            Some(stored) => match stored
                .store
                .aggregate(&stored.topic, stored.partition, id)?
            {
                None => None,
                Some((version, bytes)) => {
                    let state: A =
                        serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
                            what: "aggregate state",
                            reason: e.to_string(),
                        })?;
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    Some(Arc::new(tokio::sync::Mutex::new(Slot {
                        state: Some(state),
                        version,
                        in_doubt: false,
                        dirty: false,
                    })))
                }
            },
        };
        let cell = match loaded {
            Some(cell) => cell,
            None if create => empty(),
            None => return Ok(None),
        };
        if shard.len() >= self.shard_capacity {
            self.evict(&mut shard);
        }
        shard.insert(id.to_owned(), Arc::clone(&cell));
        Ok(Some(cell))
    }

    /// Drops one aggregate from a full shard: one the store has as it is, that nobody holds
    /// and whose outcome is known. Looks at a few only: a shard whose first few are all busy
    /// or changed grows until a checkpoint.
    fn evict(&self, shard: &mut std::collections::HashMap<String, SlotCell<A>>) {
        let victim = shard
            .iter()
            .take(16)
            .find(|(_, cell)| {
                Arc::strong_count(cell) == 1
                    && cell
                        .try_lock()
                        .is_ok_and(|slot| !slot.dirty && !slot.in_doubt && slot.version > 0)
            })
            .map(|(id, _)| id.clone());
        if let Some(id) = victim {
            shard.remove(&id);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes an aggregate whose command's outcome is in doubt: checkpoints keep the partition's
    /// offset from then on, so that a restart reads that event again.
    pub fn note_in_doubt(&self) {
        self.in_doubt.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_doubt(&self) -> u64 {
        self.in_doubt.load(Ordering::Relaxed)
    }

    /// Notes that `id` changed: the next checkpoint stores it.
    pub fn changed(&self, id: &str) {
        if self.stored.is_some() {
            lock(&self.changed).push(id.to_owned());
        }
    }

    /// The ids changed since the last call.
    pub fn take_changed(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.changed))
    }

    /// Forgets an aggregate that never got an event (its first command failed), unless another
    /// request holds its cell too: a command waiting for the lock (a second registration of the
    /// same chosen id, say) must find its cell still in the map, or what it writes would go to a
    /// cell nobody reads. Clones are made only under the shard's lock, so the count read here
    /// cannot grow meanwhile; the last holder to fail forgets it.
    pub fn forget_if_empty(&self, id: &str, slot: &LockedSlot<A>) {
        if slot.version != 0 || slot.in_doubt {
            return;
        }
        let held = OwnedMutexGuard::mutex(slot);
        let mut shard = self.slots.shard(id);
        // The map's reference and this guard's: nobody else.
        if shard
            .get(id)
            .is_some_and(|cell| Arc::ptr_eq(cell, held) && Arc::strong_count(cell) <= 2)
        {
            shard.remove(id);
        }
    }

    /// Applies an event read back from the log (the restore of an assigned partition).
    pub fn apply_from_log(&self, event: &A::Event) -> Result<(), SnapshotError> {
        let cell = self.find_or_create(event.aggregate_id())?;
        // A partition is restored before it takes commands, so only a checkpoint copying the
        // aggregate can hold its lock, for the moment that takes.
        let mut locked = cell.try_lock();
        for _ in 0..10_000 {
            if locked.is_ok() {
                break;
            }
            std::thread::yield_now();
            locked = cell.try_lock();
        }
        let applied = match locked {
            Ok(mut slot) => {
                if slot.apply(event) {
                    self.changed(event.aggregate_id());
                    true
                } else {
                    // Already reflected: the store's snapshot may be ahead of its offset.
                    slot.version >= event.aggregate_version()
                }
            }
            Err(_) => false,
        };
        if !applied {
            self.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                aggregate = event.aggregate_id(),
                version = event.aggregate_version(),
                "event in the log does not follow its aggregate's history"
            );
        }
        Ok(())
    }

    /// Where the next read of the partition's log starts.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The event at `offset`, or everything before `offset` when read to there, is reflected.
    pub fn applied_up_to(&self, offset: i64) {
        self.applied.fetch_max(offset, Ordering::AcqRel);
    }

    /// Aggregates known.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events in the log that did not follow their aggregate's history.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use tokio::sync::OwnedMutexGuard;

    use super::WriteModel;
    use crate::toy::Counter as OrderState;

    #[test]
    fn one_cell_per_aggregate_across_shards() {
        let model = WriteModel::<OrderState>::default();
        let ids: Vec<String> = (0..1000).map(|n| format!("order-{n}")).collect();
        let cells: Vec<_> = ids.iter().map(|id| model.get_or_create(id)).collect();
        assert_eq!(model.len(), 1000);
        for (id, cell) in ids.iter().zip(&cells) {
            let again = model.get(id);
            assert!(again.is_some_and(|again| Arc::ptr_eq(&again, cell)));
        }
        // A never-written aggregate is forgotten; the others stay.
        let slot = Arc::clone(&cells[7]).try_lock_owned().unwrap();
        drop(cells);
        model.forget_if_empty(&ids[7], &slot);
        assert_eq!(model.len(), 999);
        assert!(model.get(&ids[7]).is_none());
        assert!(model.get("unknown").is_none());
    }

    /// Two requests on one new id: the first fails and gives up its lock while the second
    /// waits for it. The second must still find the cell in the map, so that what it writes is
    /// what the next command reads.
    #[tokio::test]
    async fn a_cell_someone_waits_for_is_not_forgotten() {
        let model = WriteModel::<OrderState>::default();
        let first = model.get_or_create("c-1").lock_owned().await;
        let waiting = model.get_or_create("c-1");
        model.forget_if_empty("c-1", &first);
        drop(first);
        let second = waiting.lock_owned().await;
        assert!(
            model
                .get("c-1")
                .is_some_and(|cell| Arc::ptr_eq(&cell, OwnedMutexGuard::mutex(&second))),
            "the waiter's cell is the map's"
        );
        // The last holder to fail forgets it.
        model.forget_if_empty("c-1", &second);
        assert!(model.get("c-1").is_none());
    }
}

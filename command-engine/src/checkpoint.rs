//! Checkpoints: every second by default, what changed in the write model and the idempotency
//! index goes to the snapshot store ([`crate::snapshot`]), with each partition's offset.
//!
//! The offset stored for a partition must be one below which every committed event is in the
//! stored aggregates. The model's applied offset is not that by itself: two producers commit
//! concurrently, so an event at a lower offset may still be on its way to the model when one at
//! a higher offset has arrived. A checkpoint therefore reads the applied offset first, then
//! waits until every command that held a lease on the partition at that moment has settled
//! ([`crate::ownership::Leases::quiesce`]), which commands taken since do not delay: any event
//! below the offset read was written by one of those earlier commands. Only then does it copy
//! the changed aggregates, and the offset read goes into the same write batch.
//!
//! A partition with an aggregate whose outcome is in doubt keeps its old offset: the restore
//! after a restart must read that event again to learn whether it is in the log.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::idempotency::IdempotencyIndex;
use crate::lane::AnyLane;
use crate::ownership::Standing;
use crate::sharded::lock;
use crate::snapshot::{Checkpoint, SnapshotError, SnapshotStore};

/// What one checkpoint stored.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stored {
    pub aggregates: usize,
    pub receipts: usize,
    pub partitions: usize,
}

/// What checkpoints are taken of, one at a time.
pub struct Checkpointer {
    lanes: Vec<Arc<dyn AnyLane>>,
    index: Arc<IdempotencyIndex>,
    store: Arc<SnapshotStore>,
    /// Held while a checkpoint runs: two at once would each switch the other's lease buckets.
    running: Mutex<()>,
    pub taken: AtomicU64,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    pub fn new(
        lanes: Vec<Arc<dyn AnyLane>>,
        index: Arc<IdempotencyIndex>,
        store: Arc<SnapshotStore>,
    ) -> Arc<Self> {
        Arc::new(Self {
            lanes,
            index,
            store,
            running: Mutex::new(()),
            taken: AtomicU64::new(0),
        })
    }

    /// One checkpoint now. Blocking.
    pub fn take(&self) -> Result<Stored, SnapshotError> {
        let _running = lock(&self.running);
        let stored = checkpoint(&self.lanes, &self.index, &self.store)?;
        self.taken.fetch_add(1, Ordering::Relaxed);
        Ok(stored)
    }

    /// Takes a checkpoint every `every` until `stop`.
    pub async fn keep_taking(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let checkpointer = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || checkpointer.take()).await {
                Ok(Ok(stored)) => tracing::debug!(?stored, "checkpoint stored"),
                Ok(Err(error)) => {
                    tracing::error!(%error, "checkpoint failed; the next one retries");
                }
                Err(error) => tracing::error!(%error, "checkpoint panicked"),
            }
        }
    }
}

/// One checkpoint of every lane. Blocking.
fn checkpoint(
    lanes: &[Arc<dyn AnyLane>],
    index: &IdempotencyIndex,
    store: &SnapshotStore,
) -> Result<Stored, SnapshotError> {
    // How long a partition may take to settle its earlier commands: their commits, bounded by
    // the request timeout; a partition slower than this keeps its old offset this time.
    const SETTLE: Duration = Duration::from_secs(30);
    let mut batch = Checkpoint::default();
    let mut stored = Stored::default();
    let mut written = Vec::new();
    for lane in lanes {
        let leases = lane.leases();
        // Offsets first, then the waits: all partitions' earlier commands settle together.
        let mut offsets = Vec::new();
        for partition in 0..leases.partitions() {
            match leases.standing(partition) {
                // No command is in flight on a partition not owned (its release waited for
                // them), so its applied offset is safe as it is.
                Standing::Owned | Standing::Unowned => {
                    offsets.push((partition, lane.applied(partition)));
                }
                Standing::Restoring | Standing::Releasing => {}
            }
        }
        let deadline = Instant::now() + SETTLE;
        for (partition, offset) in offsets {
            if leases.standing(partition) == Standing::Owned && !leases.quiesce(partition, deadline)
            {
                continue;
            }
            if lane.in_doubt(partition) == 0 {
                batch.offset(lane.topic(), partition, offset);
                stored.partitions += 1;
            }
        }
        written.push((Arc::clone(lane), lane.stage(&mut batch)?));
    }
    let journal = index.take_journal();
    stored.receipts = journal.stored.len();
    for (key, encoded) in &journal.stored {
        batch.receipt(key, encoded);
    }
    for key in &journal.forgotten {
        batch.forget_receipt(key);
    }
    stored.aggregates = batch.aggregates;
    store.write(batch)?;
    // Only now may the aggregates written be dropped from memory.
    for (lane, staged) in written {
        lane.stored(&staged);
    }
    Ok(stored)
}

/// The aggregates a checkpoint wrote: (partition, id, version).
pub type Staged = Vec<(i32, String, i64)>;

/// The distinct ids of `changed`, in first-seen order.
pub fn distinct(changed: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::with_capacity(changed.len());
    changed
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

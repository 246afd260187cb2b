//! The write model on disk: each partition's aggregates and the offset of the partition they
//! reflect, and the idempotency receipts, in a local RocksDB.
//!
//! What it is for: a restarted instance reads only the tail of each partition after its
//! snapshot's offset, not the whole topic, so its restart time does not grow with the history;
//! and the in-memory model becomes a bounded cache in front of it ([`crate::write_model`]), so
//! the history can outgrow memory.
//!
//! Guarantee: a partition's stored offset never runs ahead of its stored aggregates. Every
//! committed event below the offset is reflected in the aggregates stored with it, because both
//! are written in one write batch, and the offset is taken only once every command that could
//! have written below it has settled ([`crate::checkpoint`]). Aggregates may reflect events
//! past the offset: reading the tail again applies each event once (an event whose version the
//! aggregate already has changes nothing).
//!
//! Why local RocksDB and not a compacted changelog topic: a changelog would be written in every
//! transaction (a second record per command, on a write path the broker bounds), and a new owner
//! would still read one record per aggregate before taking commands, a million in ~15 s. The
//! local store costs a write batch every second or so and makes a restart read only its tail.
//! Its price is paid by standbys ([`crate::restore`]): an instance keeps warm, in its own store,
//! the partitions it may take over; one taking over a partition it neither held nor kept warm
//! reads that partition from the beginning (or from its own older snapshot of it).

use std::path::Path;
use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the write model store: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("a stored {what} could not be read: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

/// The store of one instance.
pub struct SnapshotStore {
    db: DB,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore").finish_non_exhaustive()
    }
}

/// Key prefixes: aggregates, partition offsets, idempotency receipts.
const AGGREGATE: u8 = b'a';
const OFFSET: u8 = b'o';
const RECEIPT: u8 = b'r';

fn partition_prefix(kind: u8, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 6);
    key.push(kind);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn aggregate_key(topic: &str, partition: i32, id: &str) -> Vec<u8> {
    let mut key = partition_prefix(AGGREGATE, topic, partition);
    key.extend_from_slice(id.as_bytes());
    key
}

fn receipt_key(key: &str) -> Vec<u8> {
    let mut stored = Vec::with_capacity(key.len() + 1);
    stored.push(RECEIPT);
    stored.extend_from_slice(key.as_bytes());
    stored
}

/// Changes written together: what a checkpoint of one partition stores.
#[derive(Default)]
pub struct Checkpoint {
    batch: WriteBatch,
    pub aggregates: usize,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("aggregates", &self.aggregates)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// An aggregate's version and encoded state.
    pub fn aggregate(&mut self, topic: &str, partition: i32, id: &str, version: i64, state: &[u8]) {
        let mut value = Vec::with_capacity(8 + state.len());
        value.extend_from_slice(&version.to_be_bytes());
        value.extend_from_slice(state);
        self.batch.put(aggregate_key(topic, partition, id), value);
        self.aggregates += 1;
    }

    /// The offset of the partition after the last event the stored aggregates reflect.
    pub fn offset(&mut self, topic: &str, partition: i32, offset: i64) {
        self.batch.put(
            partition_prefix(OFFSET, topic, partition),
            offset.to_be_bytes(),
        );
    }

    /// A receipt, encoded, under its idempotency key.
    pub fn receipt(&mut self, key: &str, encoded: &[u8]) {
        self.batch.put(receipt_key(key), encoded);
    }

    /// A receipt forgotten (expired or evicted).
    pub fn forget_receipt(&mut self, key: &str) {
        self.batch.delete(receipt_key(key));
    }
}

impl SnapshotStore {
    pub fn open(path: &Path) -> Result<Arc<Self>, SnapshotError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Most lookups of a key the store does not hold (a new aggregate with an id of its
        // own) are answered by the filter, not by reading a block of every level.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        let db = DB::open(&options, path)?;
        Ok(Arc::new(Self { db }))
    }

    /// Where the partition's snapshot ends: the offset to read its tail from (0: no snapshot).
    pub fn offset(&self, topic: &str, partition: i32) -> Result<i64, SnapshotError> {
        match self.db.get(partition_prefix(OFFSET, topic, partition))? {
            None => Ok(0),
            Some(bytes) => {
                let bytes: [u8; 8] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| SnapshotError::Corrupt {
                            what: "offset",
                            reason: format!("{} bytes", bytes.len()),
                        })?;
                Ok(i64::from_be_bytes(bytes))
            }
        }
    }

    /// A stored aggregate: its version and encoded state.
    pub fn aggregate(
        &self,
        topic: &str,
        partition: i32,
        id: &str,
    ) -> Result<Option<(i64, Vec<u8>)>, SnapshotError> {
        let Some(value) = self.db.get(aggregate_key(topic, partition, id))? else {
            return Ok(None);
        };
        if value.len() < 8 {
            return Err(SnapshotError::Corrupt {
                what: "aggregate",
                reason: format!("{} bytes", value.len()),
            });
        }
        let (version, state) = value.split_at(8);
        let version = i64::from_be_bytes(version.try_into().unwrap_or_default());
        Ok(Some((version, state.to_vec())))
    }

    /// Every stored receipt: its key and encoding.
    pub fn receipts(&self) -> impl Iterator<Item = Result<(String, Vec<u8>), SnapshotError>> + '_ {
        self.db
            .iterator(IteratorMode::From(&[RECEIPT], Direction::Forward))
            .take_while(|entry| {
                entry
                    .as_ref()
                    .map_or(true, |(k, _)| k.first() == Some(&RECEIPT))
            })
            .map(|entry| {
                let (key, value) = entry?;
                let key =
                    String::from_utf8(key[1..].to_vec()).map_err(|e| SnapshotError::Corrupt {
                        what: "receipt key",
                        reason: e.to_string(),
                    })?;
                Ok((key, value.to_vec()))
            })
    }

    /// Writes `checkpoint` at once: all of it or, after a crash, none of it.
    pub fn write(&self, checkpoint: Checkpoint) -> Result<(), SnapshotError> {
        self.db.write(checkpoint.batch)?;
        Ok(())
    }

    /// Aggregates stored for a partition (a full scan: tests and diagnostics only).
    pub fn count_aggregates(&self, topic: &str, partition: i32) -> usize {
        let prefix = partition_prefix(AGGREGATE, topic, partition);
        self.db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
            .take_while(|entry| entry.as_ref().is_ok_and(|(k, _)| k.starts_with(&prefix)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_checkpoint_is_stored_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.offset("orders", 1).unwrap(), 0);
        let mut checkpoint = Checkpoint::default();
        checkpoint.aggregate("orders", 1, "o-1", 3, b"{\"x\":1}");
        checkpoint.aggregate("orders", 2, "o-1", 1, b"{}");
        checkpoint.offset("orders", 1, 42);
        checkpoint.receipt("k-1", b"r1");
        checkpoint.receipt("k-2", b"r2");
        store.write(checkpoint).unwrap();

        assert_eq!(store.offset("orders", 1).unwrap(), 42);
        assert_eq!(store.offset("orders", 2).unwrap(), 0);
        assert_eq!(
            store.aggregate("orders", 1, "o-1").unwrap(),
            Some((3, b"{\"x\":1}".to_vec()))
        );
        assert_eq!(store.aggregate("orders", 1, "o-2").unwrap(), None);
        assert_eq!(store.count_aggregates("orders", 1), 1);
        let mut forget = Checkpoint::default();
        forget.forget_receipt("k-1");
        store.write(forget).unwrap();
        let receipts: Vec<_> = store.receipts().map(Result::unwrap).collect();
        assert_eq!(receipts, [("k-2".to_owned(), b"r2".to_vec())]);
    }
}

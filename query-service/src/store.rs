//! The replica's RocksDB store: projected views and, beside them, the log position each
//! partition has been applied up to.
//!
//! Invariant: a view change and the offset it came from are written in one [`WriteBatch`]
//! ([`Store::write`]), so after a crash the store is at a consistent position and resuming from
//! the stored offset applies each event exactly once. Only the projection runner writes; HTTP
//! handlers only read.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};

const VIEWS: &str = "views";
const INDEX: &str = "index";
const OFFSETS: &str = "offsets";
/// In the default column family: the projection version the store was written by.
const VERSION_KEY: &[u8] = b"projection-version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family `{0}` is missing")]
    MissingColumnFamily(&'static str),
    #[error("stored offset for {0} is corrupt")]
    CorruptOffset(String),
}

#[derive(Debug)]
pub struct Store {
    db: DB,
}

/// Changes staged for one atomic write.
#[derive(Default)]
pub struct StoreBatch {
    views: Vec<(Vec<u8>, Vec<u8>)>,
    index: Vec<Vec<u8>>,
    offsets: Vec<(Vec<u8>, i64)>,
}

impl std::fmt::Debug for StoreBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBatch")
            .field("views", &self.views.len())
            .field("index", &self.index.len())
            .field("offsets", &self.offsets.len())
            .finish()
    }
}

impl StoreBatch {
    pub fn put_view(&mut self, key: &str, value: Vec<u8>) {
        self.views.push((key.as_bytes().to_vec(), value));
    }

    /// Adds a secondary-index entry (the key is the whole entry).
    pub fn put_index(&mut self, key: Vec<u8>) {
        self.index.push(key);
    }

    /// Records that everything before `next_offset` in `topic`/`partition` is applied.
    pub fn set_next_offset(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.offsets
            .push((offset_key(topic, partition), next_offset));
    }
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("{topic}/{partition}").into_bytes()
}

impl Store {
    /// Opens (or creates) the store of a projection whose stored format is `version`. A store
    /// written by another version of the projection is emptied, offsets included, so the
    /// replica rebuilds it from the beginning of the topic instead of serving a stale shape.
    pub fn open(path: &Path, version: u32) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families = [VIEWS, INDEX, OFFSETS]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let mut db = DB::open_cf_descriptors(&options, path, families)?;
        let stored = db.get(VERSION_KEY)?;
        if stored.as_deref() != Some(&version.to_be_bytes()[..]) {
            if stored.is_some() {
                tracing::warn!(path = %path.display(), version, "the projection changed; rebuilding the store from the topic");
            }
            for name in [VIEWS, INDEX, OFFSETS] {
                db.drop_cf(name)?;
                db.create_cf(name, &Options::default())?;
            }
            db.put(VERSION_KEY, version.to_be_bytes())?;
        }
        Ok(Self { db })
    }

    fn family(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }

    pub fn view(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.family(VIEWS)?, key.as_bytes())?)
    }

    /// Index keys that start with `prefix`, from `start` (inclusive) on, at most `limit`.
    pub fn index_scan(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let from = if start > prefix { start } else { prefix };
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(
            self.family(INDEX)?,
            IteratorMode::From(from, Direction::Forward),
        ) {
            let (key, _) = item?;
            if !key.starts_with(prefix) || keys.len() >= limit {
                break;
            }
            keys.push(key.to_vec());
        }
        Ok(keys)
    }

    /// The next offset to consume in `topic`/`partition`, if this store ever applied any of it.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        let key = offset_key(topic, partition);
        match self.db.get_cf(self.family(OFFSETS)?, &key)? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(|b| Some(i64::from_be_bytes(b)))
                .map_err(|_| StoreError::CorruptOffset(format!("{topic}/{partition}"))),
        }
    }

    /// Applies the batch atomically: views and offsets together or not at all.
    pub fn write(&self, staged: StoreBatch) -> Result<(), StoreError> {
        let StoreBatch {
            views,
            index,
            offsets,
        } = staged;
        let mut batch = WriteBatch::default();
        let views_cf = self.family(VIEWS)?;
        let index_cf = self.family(INDEX)?;
        for key in index {
            batch.put_cf(index_cf, key, []);
        }
        let offsets_cf = self.family(OFFSETS)?;
        for (key, value) in views {
            batch.put_cf(views_cf, key, value);
        }
        for (key, offset) in offsets {
            batch.put_cf(offsets_cf, key, offset.to_be_bytes());
        }
        self.db.write(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn views_and_offsets_persist_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 1).unwrap();
            assert_eq!(store.next_offset("orders", 0).unwrap(), None);
            let mut batch = StoreBatch::default();
            batch.put_view("o-1", b"{}".to_vec());
            batch.set_next_offset("orders", 0, 7);
            batch.put_index(b"c1/2".to_vec());
            batch.put_index(b"c1/1".to_vec());
            batch.put_index(b"c2/1".to_vec());
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), 1).unwrap();
        assert_eq!(store.view("o-1").unwrap().as_deref(), Some(&b"{}"[..]));
        assert_eq!(store.next_offset("orders", 0).unwrap(), Some(7));
        assert_eq!(store.next_offset("orders", 1).unwrap(), None);
        assert_eq!(
            store.index_scan(b"c1/", b"", 10).unwrap(),
            [b"c1/1".to_vec(), b"c1/2".to_vec()]
        );
        assert_eq!(
            store.index_scan(b"c1/", b"c1/2", 10).unwrap(),
            [b"c1/2".to_vec()]
        );
        assert_eq!(store.index_scan(b"c1/", b"", 1).unwrap().len(), 1);
        drop(store);
        // Another projection version: everything is rebuilt, offsets included.
        let store = Store::open(dir.path(), 2).unwrap();
        assert_eq!(store.view("o-1").unwrap(), None);
        assert_eq!(store.next_offset("orders", 0).unwrap(), None);
        assert!(store.index_scan(b"c1/", b"", 10).unwrap().is_empty());
    }
}

//! The replica's RocksDB store: for each projection, in a namespace of its own (its own column
//! families and version), its views, its index and, beside them, the log position each
//! partition has been applied up to.
//!
//! Invariants: a view change and the offset it came from are written in one [`WriteBatch`]
//! ([`Store::write`]), so after a crash the store is at a consistent position and resuming from
//! the stored offset applies each event exactly once. Projections never see each other's keys,
//! and a projection whose version changed is rebuilt alone. Only the projection runners write;
//! HTTP handlers only read.

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch};
use shared_events::view::ViewError;

/// The kinds of data a projection keeps, each a column family `<namespace>.<kind>`.
const KINDS: [&str; 3] = ["views", "index", "offsets"];
/// In the default column family, per namespace: the projection version its data was written by.
const VERSION_PREFIX: &str = "version/";

/// A namespace's views as a read model reads them ([`shared_events::view::Views`]).
#[derive(Debug, Clone, Copy)]
pub struct StoreViews<'a> {
    store: &'a Store,
    namespace: Namespace,
}

impl<'a> StoreViews<'a> {
    pub fn new(store: &'a Store, namespace: Namespace) -> Self {
        Self { store, namespace }
    }
}

impl shared_events::view::Views for StoreViews<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        self.store
            .view(self.namespace, key)
            .map_err(ViewError::from)
    }

    fn scan(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, ViewError> {
        self.store
            .index_scan(self.namespace, prefix, start, limit)
            .map_err(ViewError::from)
    }
}

impl shared_events::view::Changes for StoreBatch {
    fn put(&mut self, key: &str, value: Vec<u8>) {
        self.put_view(key, value);
    }

    fn index(&mut self, key: Vec<u8>) {
        self.put_index(key);
    }
}

impl From<StoreError> for ViewError {
    fn from(error: StoreError) -> Self {
        Self(error.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("column family `{0}` is missing")]
    MissingColumnFamily(String),
    #[error("stored offset for {0} is corrupt")]
    CorruptOffset(String),
}

/// One projection's part of the store: its views, index and applied offsets, apart from every
/// other projection's, and rebuilt on its own when its version changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    pub name: &'static str,
    pub version: u32,
}

impl Namespace {
    fn family(self, kind: &str) -> String {
        format!("{}.{kind}", self.name)
    }

    fn version_key(self) -> Vec<u8> {
        format!("{VERSION_PREFIX}{}", self.name).into_bytes()
    }
}

#[derive(Debug)]
pub struct Store {
    db: DB,
}

/// Changes of one namespace staged for one atomic write.
pub struct StoreBatch {
    namespace: Namespace,
    views: Vec<(Vec<u8>, Vec<u8>)>,
    index: Vec<Vec<u8>>,
    offsets: Vec<(Vec<u8>, i64)>,
}

impl std::fmt::Debug for StoreBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBatch")
            .field("namespace", &self.namespace.name)
            .field("views", &self.views.len())
            .field("index", &self.index.len())
            .field("offsets", &self.offsets.len())
            .finish()
    }
}

impl StoreBatch {
    pub fn new(namespace: Namespace) -> Self {
        Self {
            namespace,
            views: Vec::new(),
            index: Vec::new(),
            offsets: Vec::new(),
        }
    }

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

/// Several events' changes staged for one write, readable as they are staged: the views and
/// index keys staged so far shadow the store's, so each event of the batch sees the changes of
/// the events before it, as it would had each been written on its own.
pub struct Staging<'a> {
    store: StoreViews<'a>,
    /// The offsets; views and index keys join it when the batch is taken.
    batch: StoreBatch,
    views: std::collections::HashMap<String, Vec<u8>>,
    index: std::collections::BTreeSet<Vec<u8>>,
}

impl std::fmt::Debug for Staging<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// One event's changes, kept apart until the event is known to apply.
#[derive(Debug, Default)]
pub struct EventChanges {
    views: Vec<(String, Vec<u8>)>,
    index: Vec<Vec<u8>>,
}

impl shared_events::view::Changes for EventChanges {
    fn put(&mut self, key: &str, value: Vec<u8>) {
        self.views.push((key.to_owned(), value));
    }

    fn index(&mut self, key: Vec<u8>) {
        self.index.push(key);
    }
}

impl<'a> Staging<'a> {
    pub fn new(store: &'a Store, namespace: Namespace) -> Self {
        Self {
            store: StoreViews::new(store, namespace),
            batch: StoreBatch::new(namespace),
            views: std::collections::HashMap::new(),
            index: std::collections::BTreeSet::new(),
        }
    }

    /// Stages an event's changes. A view staged twice keeps its later value, as two writes
    /// would leave it.
    pub fn absorb(&mut self, changes: EventChanges) {
        self.views.extend(changes.views);
        self.index.extend(changes.index);
    }

    /// Records that everything before `next_offset` in `topic`/`partition` is applied.
    pub fn set_next_offset(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.batch.set_next_offset(topic, partition, next_offset);
    }

    /// The batch to write: each view's last staged value, the index keys, the offsets.
    pub fn into_batch(self) -> StoreBatch {
        let mut batch = self.batch;
        for (key, value) in self.views {
            batch.put_view(&key, value);
        }
        for key in self.index {
            batch.put_index(key);
        }
        batch
    }
}

impl shared_events::view::Views for Staging<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        match self.views.get(key) {
            Some(value) => Ok(Some(value.clone())),
            None => self.store.get(key),
        }
    }

    fn scan(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, ViewError> {
        // The first `limit` keys of the union are among the first `limit` of each side.
        let mut keys = self.store.scan(prefix, start, limit)?;
        let from = if start > prefix { start } else { prefix };
        keys.extend(
            self.index
                .range(from.to_vec()..)
                .take_while(|key| key.starts_with(prefix))
                .take(limit)
                .cloned(),
        );
        keys.sort_unstable();
        keys.dedup();
        keys.truncate(limit);
        Ok(keys)
    }
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("{topic}/{partition}").into_bytes()
}

impl Store {
    /// Opens (or creates) the store of the given projections. A namespace written by another
    /// version of its projection is emptied, offsets included, so the replica rebuilds it from
    /// the beginning of its topics instead of serving a stale shape; the other namespaces keep
    /// their data. Column families of projections this build no longer has are dropped.
    pub fn open(path: &Path, namespaces: &[Namespace]) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // RocksDB opens a database only with every column family it has.
        let existing = DB::list_cf(&options, path).unwrap_or_default();
        let wanted: Vec<String> = namespaces
            .iter()
            .flat_map(|ns| KINDS.map(|kind| ns.family(kind)))
            .collect();
        let mut families: Vec<String> = existing.clone();
        families.extend(wanted.iter().filter(|f| !existing.contains(f)).cloned());
        let descriptors = families
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let mut db = DB::open_cf_descriptors(&options, path, descriptors)?;
        for stale in existing
            .iter()
            .filter(|f| *f != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && !wanted.contains(f))
        {
            tracing::warn!(path = %path.display(), family = %stale, "dropping data no projection of this build reads");
            db.drop_cf(stale)?;
        }
        for namespace in namespaces {
            let key = namespace.version_key();
            let stored = db.get(&key)?;
            if stored.as_deref() == Some(&namespace.version.to_be_bytes()[..]) {
                continue;
            }
            if stored.is_some() {
                tracing::warn!(path = %path.display(), projection = namespace.name, version = namespace.version, "the projection changed; rebuilding it from the topic");
            }
            for kind in KINDS {
                let family = namespace.family(kind);
                db.drop_cf(&family)?;
                db.create_cf(&family, &Options::default())?;
            }
            db.put(&key, namespace.version.to_be_bytes())?;
        }
        Ok(Self { db })
    }

    fn family(
        &self,
        namespace: Namespace,
        kind: &str,
    ) -> Result<&rocksdb::ColumnFamily, StoreError> {
        let name = namespace.family(kind);
        self.db
            .cf_handle(&name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }

    pub fn view(&self, namespace: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get_cf(self.family(namespace, "views")?, key.as_bytes())?)
    }

    /// Index keys that start with `prefix`, from `start` (inclusive) on, at most `limit`.
    pub fn index_scan(
        &self,
        namespace: Namespace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let from = if start > prefix { start } else { prefix };
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(
            self.family(namespace, "index")?,
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

    /// The next offset of `topic`/`partition` this namespace has to apply, if it ever applied
    /// any of it.
    pub fn next_offset(
        &self,
        namespace: Namespace,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        let key = offset_key(topic, partition);
        match self.db.get_cf(self.family(namespace, "offsets")?, &key)? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(|b| Some(i64::from_be_bytes(b)))
                .map_err(|_| StoreError::CorruptOffset(format!("{topic}/{partition}"))),
        }
    }

    /// Applies the batch atomically: views and offsets together or not at all.
    pub fn write(&self, staged: StoreBatch) -> Result<(), StoreError> {
        let StoreBatch {
            namespace,
            views,
            index,
            offsets,
        } = staged;
        let mut batch = WriteBatch::default();
        let views_cf = self.family(namespace, "views")?;
        let index_cf = self.family(namespace, "index")?;
        let offsets_cf = self.family(namespace, "offsets")?;
        for key in index {
            batch.put_cf(index_cf, key, []);
        }
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

    const ORDERS: Namespace = Namespace {
        name: "orders",
        version: 1,
    };
    const CUSTOMERS: Namespace = Namespace {
        name: "customers",
        version: 1,
    };

    #[test]
    fn a_staged_batch_reads_its_own_changes_over_the_store() {
        use shared_events::view::{Changes, Views};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        let mut batch = StoreBatch::new(ORDERS);
        batch.put_view("o-1", b"stored".to_vec());
        batch.put_index(b"c1/1".to_vec());
        batch.put_index(b"c1/4".to_vec());
        store.write(batch).unwrap();

        let mut staging = Staging::new(&store, ORDERS);
        let mut first = EventChanges::default();
        first.put("o-1", b"staged".to_vec());
        first.put("o-2", b"new".to_vec());
        first.index(b"c1/2".to_vec());
        first.index(b"c1/3".to_vec());
        staging.absorb(first);
        assert_eq!(staging.get("o-1").unwrap().unwrap(), b"staged");
        assert_eq!(staging.get("o-2").unwrap().unwrap(), b"new");
        assert_eq!(
            store.view(ORDERS, "o-2").unwrap(),
            None,
            "nothing written yet"
        );
        let scanned = |start: &[u8], limit| staging.scan(b"c1/", start, limit).unwrap();
        let keys = |names: &[&str]| -> Vec<Vec<u8>> {
            names.iter().map(|n| n.as_bytes().to_vec()).collect()
        };
        assert_eq!(scanned(b"", 10), keys(&["c1/1", "c1/2", "c1/3", "c1/4"]));
        assert_eq!(scanned(b"", 2), keys(&["c1/1", "c1/2"]));
        assert_eq!(scanned(b"c1/3", 10), keys(&["c1/3", "c1/4"]));
        staging.set_next_offset("orders", 0, 9);
        store.write(staging.into_batch()).unwrap();
        assert_eq!(store.view(ORDERS, "o-1").unwrap().unwrap(), b"staged");
        assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), Some(9));
        assert_eq!(store.index_scan(ORDERS, b"c1/", b"", 10).unwrap().len(), 4);
    }

    #[test]
    fn views_and_offsets_persist_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &[ORDERS]).unwrap();
            assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), None);
            let mut batch = StoreBatch::new(ORDERS);
            batch.put_view("o-1", b"{}".to_vec());
            batch.set_next_offset("orders", 0, 7);
            batch.put_index(b"c1/2".to_vec());
            batch.put_index(b"c1/1".to_vec());
            batch.put_index(b"c2/1".to_vec());
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        assert_eq!(
            store.view(ORDERS, "o-1").unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), Some(7));
        assert_eq!(store.next_offset(ORDERS, "orders", 1).unwrap(), None);
        assert_eq!(
            store.index_scan(ORDERS, b"c1/", b"", 10).unwrap(),
            [b"c1/1".to_vec(), b"c1/2".to_vec()]
        );
        assert_eq!(
            store.index_scan(ORDERS, b"c1/", b"c1/2", 10).unwrap(),
            [b"c1/2".to_vec()]
        );
        assert_eq!(store.index_scan(ORDERS, b"c1/", b"", 1).unwrap().len(), 1);
        drop(store);
        // Another projection version: everything of it is rebuilt, offsets included.
        let next = Namespace {
            version: 2,
            ..ORDERS
        };
        let store = Store::open(dir.path(), &[next]).unwrap();
        assert_eq!(store.view(next, "o-1").unwrap(), None);
        assert_eq!(store.next_offset(next, "orders", 0).unwrap(), None);
        assert!(store.index_scan(next, b"c1/", b"", 10).unwrap().is_empty());
    }

    #[test]
    fn projections_keep_apart_and_rebuild_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &[ORDERS, CUSTOMERS]).unwrap();
            for namespace in [ORDERS, CUSTOMERS] {
                let mut batch = StoreBatch::new(namespace);
                batch.put_view("same-key", namespace.name.as_bytes().to_vec());
                batch.set_next_offset("orders", 0, 5);
                store.write(batch).unwrap();
            }
            assert_eq!(store.view(ORDERS, "same-key").unwrap().unwrap(), b"orders");
            assert_eq!(
                store.view(CUSTOMERS, "same-key").unwrap().unwrap(),
                b"customers"
            );
        }
        // Bumping one projection's version rebuilds it and leaves the other alone.
        let customers_v2 = Namespace {
            version: 2,
            ..CUSTOMERS
        };
        let store = Store::open(dir.path(), &[ORDERS, customers_v2]).unwrap();
        assert_eq!(store.view(ORDERS, "same-key").unwrap().unwrap(), b"orders");
        assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), Some(5));
        assert_eq!(store.view(customers_v2, "same-key").unwrap(), None);
        assert_eq!(store.next_offset(customers_v2, "orders", 0).unwrap(), None);
        drop(store);
        // A projection this build no longer has is dropped; the others open as they were.
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        assert_eq!(store.view(ORDERS, "same-key").unwrap().unwrap(), b"orders");
        assert!(store.view(CUSTOMERS, "same-key").is_err());
    }

    #[test]
    fn a_store_of_the_single_projection_layout_opens_and_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The layout before namespaces: three unprefixed families and one version key.
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let families = ["views", "index", "offsets"]
                .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
            let db = DB::open_cf_descriptors(&options, dir.path(), families).unwrap();
            db.put(b"projection-version", 2u32.to_be_bytes()).unwrap();
        }
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), None);
    }
}

//! The replica's RocksDB store: for each projection, in a namespace of its own (its own column
//! families and version), its views, its index and, beside them, the log position each
//! partition has been applied up to.
//!
//! A namespace's data lives in a *generation*: one set of column families. One generation of
//! each namespace is active, and reads and the runner's writes go to it. A shadow rebuild fills
//! a new generation beside it, then activates it (one write of the default column family) and
//! drops the old one, so a projection is rebuilt without a moment of empty store.
//!
//! Invariants: a view change and the offset it came from are written in one [`WriteBatch`]
//! ([`Store::write`]), so after a crash the store is at a consistent position and resuming from
//! the stored offset applies each event exactly once. Projections never see each other's keys,
//! and a projection's generations never see each other's. Only one generation of a namespace
//! survives a restart: the active one. Only the projection runners and a rebuild's shadow
//! write; HTTP handlers only read.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{
    BoundColumnFamily, ColumnFamilyDescriptor, DBWithThreadMode, Direction, FlushOptions,
    IteratorMode, MultiThreaded, Options, WriteBatch, WriteOptions,
};
use shared_events::view::ViewError;

/// Column families are created and dropped while the store serves.
type Db = DBWithThreadMode<MultiThreaded>;

/// The kinds of data a projection keeps, each a column family of its generation.
const KINDS: [&str; 3] = ["views", "index", "offsets"];
/// In the default column family, per namespace: the projection version its active generation
/// was written by.
const VERSION_PREFIX: &str = "version/";
/// In the default column family, per namespace: its active generation (0 when absent).
const GENERATION_PREFIX: &str = "generation/";

/// A namespace's views as a read model reads them ([`shared_events::view::Views`]), all from
/// one generation: a query that straddles a rebuild's switch reads the old one throughout.
#[derive(Debug, Clone, Copy)]
pub struct StoreViews<'a> {
    store: &'a Store,
    generation: Generation,
}

impl<'a> StoreViews<'a> {
    /// The views of the namespace's active generation.
    pub fn new(store: &'a Store, namespace: Namespace) -> Self {
        Self::of(store, store.active(namespace))
    }

    pub fn of(store: &'a Store, generation: Generation) -> Self {
        Self { store, generation }
    }
}

impl shared_events::view::Views for StoreViews<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        self.store
            .view_in(self.generation, key)
            .map_err(ViewError::from)
    }

    fn scan(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, ViewError> {
        self.store
            .index_scan_in(self.generation, prefix, start, limit)
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
    #[error("the store's record of `{0}` is corrupt")]
    CorruptRecord(String),
    #[error("the store has no namespace `{0}`")]
    UnknownNamespace(String),
}

/// One projection's part of the store: its views, index and applied offsets, apart from every
/// other projection's, and rebuilt on its own when its version changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespace {
    pub name: &'static str,
    pub version: u32,
}

impl Namespace {
    fn version_key(self) -> Vec<u8> {
        format!("{VERSION_PREFIX}{}", self.name).into_bytes()
    }

    fn generation_key(self) -> Vec<u8> {
        format!("{GENERATION_PREFIX}{}", self.name).into_bytes()
    }
}

/// One generation of a namespace: a set of column families, `<name>.<kind>` for generation 0
/// (the layout before generations), `<name>#<number>.<kind>` after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation {
    pub name: &'static str,
    pub number: u32,
}

impl Generation {
    fn family(self, kind: &str) -> String {
        match self.number {
            0 => format!("{}.{kind}", self.name),
            n => format!("{}#{n}.{kind}", self.name),
        }
    }
}

/// A namespace's active generation and the projection version that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub generation: u32,
    pub version: u32,
}

#[derive(Debug)]
pub struct Store {
    db: Db,
    /// Each namespace's active generation and version, packed: read by every query, so read
    /// without a lock.
    active: Vec<(&'static str, AtomicU64)>,
    /// Activations, one at a time: the stored record and the packed one change together.
    activating: Mutex<()>,
}

impl Active {
    fn pack(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.version)
    }

    fn unpack(packed: u64) -> Self {
        Self {
            generation: u32::try_from(packed >> 32).unwrap_or(0),
            version: u32::try_from(packed & u64::from(u32::MAX)).unwrap_or(0),
        }
    }
}

/// Changes of one generation staged for one atomic write.
pub struct StoreBatch {
    generation: Generation,
    views: Vec<(Vec<u8>, Vec<u8>)>,
    index: Vec<Vec<u8>>,
    /// Each partition's next offset, once per partition however many records it had.
    offsets: Vec<(String, i32, i64)>,
}

impl std::fmt::Debug for StoreBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBatch")
            .field("generation", &self.generation)
            .field("views", &self.views.len())
            .field("index", &self.index.len())
            .field("offsets", &self.offsets.len())
            .finish()
    }
}

impl StoreBatch {
    /// A batch for `generation` (see [`Store::active`] for the one that serves).
    pub fn new(generation: Generation) -> Self {
        Self {
            generation,
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
        // A batch spans a handful of partitions: searched in place.
        match self
            .offsets
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some((_, _, next)) => *next = next_offset,
            None => self
                .offsets
                .push((topic.to_owned(), partition, next_offset)),
        }
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
    pub fn new(store: &'a Store, generation: Generation) -> Self {
        Self {
            store: StoreViews::of(store, generation),
            batch: StoreBatch::new(generation),
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
    /// Opens (or creates) the store of the given namespaces. Each keeps its active generation,
    /// whatever version wrote it: [`Store::is_current`] says whether it is this build's, and the
    /// caller rebuilds it (beside it, or after [`Store::reset`]). Generations that are not
    /// active (a rebuild cut short) and the families of namespaces this build no longer has are
    /// dropped.
    pub fn open(path: &Path, namespaces: &[Namespace]) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // RocksDB opens a database only with every column family it has.
        let existing = Db::list_cf(&options, path).unwrap_or_default();
        let descriptors = existing
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = Db::open_cf_descriptors(&options, path, descriptors)?;
        let mut active = Vec::new();
        let mut kept = Vec::new();
        for namespace in namespaces {
            let generation = match db.get(namespace.generation_key())? {
                None => 0,
                Some(bytes) => decode_u32(&bytes, namespace.name)?,
            };
            let version = match db.get(namespace.version_key())? {
                Some(bytes) => decode_u32(&bytes, namespace.name)?,
                None => {
                    db.put(namespace.version_key(), namespace.version.to_be_bytes())?;
                    namespace.version
                }
            };
            let current = Generation {
                name: namespace.name,
                number: generation,
            };
            for kind in KINDS {
                let family = current.family(kind);
                if db.cf_handle(&family).is_none() {
                    db.create_cf(&family, &Options::default())?;
                }
                kept.push(family);
            }
            if version != namespace.version {
                tracing::warn!(path = %path.display(), projection = namespace.name, stored = version, version = namespace.version, "the store holds another version of the projection");
            }
            let packed = Active {
                generation,
                version,
            }
            .pack();
            active.push((namespace.name, AtomicU64::new(packed)));
        }
        for stale in existing
            .iter()
            .filter(|f| *f != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && !kept.contains(f))
        {
            tracing::warn!(path = %path.display(), family = %stale, "dropping data no projection of this build reads");
            db.drop_cf(stale)?;
        }
        Ok(Self {
            db,
            active,
            activating: Mutex::new(()),
        })
    }

    /// The generation of `namespace` that serves.
    pub fn active(&self, namespace: Namespace) -> Generation {
        Generation {
            name: namespace.name,
            number: self.active_of(namespace).map_or(0, |a| a.generation),
        }
    }

    /// The active generation of `namespace` and the version that wrote it.
    pub fn active_of(&self, namespace: Namespace) -> Option<Active> {
        self.active
            .iter()
            .find(|(name, _)| *name == namespace.name)
            .map(|(_, packed)| Active::unpack(packed.load(Ordering::Acquire)))
    }

    /// Whether the active generation was written by this build's version of the projection.
    pub fn is_current(&self, namespace: Namespace) -> bool {
        self.active_of(namespace)
            .is_some_and(|a| a.version == namespace.version)
    }

    /// Creates an empty generation of `namespace` beside the active one, for a rebuild to fill.
    pub fn begin(&self, namespace: Namespace) -> Result<Generation, StoreError> {
        let active = self
            .active_of(namespace)
            .ok_or_else(|| StoreError::UnknownNamespace(namespace.name.to_owned()))?;
        let generation = Generation {
            name: namespace.name,
            number: active.generation + 1,
        };
        for kind in KINDS {
            let family = generation.family(kind);
            // Left by a rebuild that failed earlier in this process.
            if self.db.cf_handle(&family).is_some() {
                self.db.drop_cf(&family)?;
            }
            self.db.create_cf(&family, &Options::default())?;
        }
        Ok(generation)
    }

    /// Makes `generation`, written by projection `version`, the one that serves, in one write:
    /// after a crash, either the old generation serves or this one does. Returns the generation
    /// it replaced, for [`Store::discard`] once no read is still on it.
    pub fn activate(&self, generation: Generation, version: u32) -> Result<Generation, StoreError> {
        let namespace = Namespace {
            name: generation.name,
            version,
        };
        let mut batch = WriteBatch::default();
        batch.put(namespace.generation_key(), generation.number.to_be_bytes());
        batch.put(namespace.version_key(), version.to_be_bytes());
        let unknown = || StoreError::UnknownNamespace(generation.name.to_owned());
        let (_, packed) = self
            .active
            .iter()
            .find(|(name, _)| *name == generation.name)
            .ok_or_else(unknown)?;
        let _one_at_a_time = self.activating.lock().map_err(|_| unknown())?;
        self.db.write(batch)?;
        let previous = Active::unpack(
            packed.swap(
                Active {
                    generation: generation.number,
                    version,
                }
                .pack(),
                Ordering::AcqRel,
            ),
        );
        Ok(Generation {
            name: generation.name,
            number: previous.generation,
        })
    }

    /// Drops a generation that is not active: a replaced one, or a rebuild's that failed.
    pub fn discard(&self, generation: Generation) -> Result<(), StoreError> {
        if self
            .active_of(Namespace {
                name: generation.name,
                version: 0,
            })
            .is_some_and(|a| a.generation == generation.number)
        {
            return Ok(());
        }
        for kind in KINDS {
            let family = generation.family(kind);
            if self.db.cf_handle(&family).is_some() {
                self.db.drop_cf(&family)?;
            }
        }
        Ok(())
    }

    /// Empties `namespace` for this build's version: an empty generation replaces the active
    /// one. For data that is rebuilt in place rather than beside (a live timeline).
    pub fn reset(&self, namespace: Namespace) -> Result<(), StoreError> {
        let fresh = self.begin(namespace)?;
        let previous = self.activate(fresh, namespace.version)?;
        self.discard(previous)
    }

    fn family(
        &self,
        generation: Generation,
        kind: &str,
    ) -> Result<Arc<BoundColumnFamily<'_>>, StoreError> {
        let name = generation.family(kind);
        self.db
            .cf_handle(&name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }

    /// A view of the active generation of `namespace`.
    pub fn view(&self, namespace: Namespace, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.view_in(self.active(namespace), key)
    }

    pub fn view_in(
        &self,
        generation: Generation,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get_cf(&self.family(generation, "views")?, key.as_bytes())?)
    }

    /// Index keys of the active generation of `namespace` that start with `prefix`, from
    /// `start` (inclusive) on, at most `limit`.
    pub fn index_scan(
        &self,
        namespace: Namespace,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.index_scan_in(self.active(namespace), prefix, start, limit)
    }

    pub fn index_scan_in(
        &self,
        generation: Generation,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let from = if start > prefix { start } else { prefix };
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(
            &self.family(generation, "index")?,
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

    /// The next offset of `topic`/`partition` the active generation of `namespace` has to
    /// apply, if it ever applied any of it.
    pub fn next_offset(
        &self,
        namespace: Namespace,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        self.next_offset_in(self.active(namespace), topic, partition)
    }

    pub fn next_offset_in(
        &self,
        generation: Generation,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        let key = offset_key(topic, partition);
        match self.db.get_cf(&self.family(generation, "offsets")?, &key)? {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(|b| Some(i64::from_be_bytes(b)))
                .map_err(|_| StoreError::CorruptOffset(format!("{topic}/{partition}"))),
        }
    }

    /// Applies the batch atomically: views and offsets together or not at all.
    pub fn write(&self, staged: StoreBatch) -> Result<(), StoreError> {
        self.write_with(staged, &WriteOptions::default())
    }

    /// As [`Store::write`], without the write-ahead log: for a generation being built, which
    /// a crash discards anyway. [`Store::flush`] it before it is activated.
    pub fn write_unlogged(&self, staged: StoreBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.disable_wal(true);
        self.write_with(staged, &options)
    }

    /// Writes a generation's memtables to disk, so that it survives a crash without its log.
    pub fn flush(&self, generation: Generation) -> Result<(), StoreError> {
        let mut options = FlushOptions::default();
        options.set_wait(true);
        for kind in KINDS {
            self.db
                .flush_cf_opt(&self.family(generation, kind)?, &options)?;
        }
        Ok(())
    }

    fn write_with(&self, staged: StoreBatch, options: &WriteOptions) -> Result<(), StoreError> {
        let StoreBatch {
            generation,
            views,
            index,
            offsets,
        } = staged;
        let mut batch = WriteBatch::default();
        let views_cf = self.family(generation, "views")?;
        let index_cf = self.family(generation, "index")?;
        let offsets_cf = self.family(generation, "offsets")?;
        for key in index {
            batch.put_cf(&index_cf, key, []);
        }
        for (key, value) in views {
            batch.put_cf(&views_cf, key, value);
        }
        for (topic, partition, offset) in offsets {
            batch.put_cf(
                &offsets_cf,
                offset_key(&topic, partition),
                offset.to_be_bytes(),
            );
        }
        self.db.write_opt(batch, options)?;
        Ok(())
    }
}

fn decode_u32(bytes: &[u8], name: &str) -> Result<u32, StoreError> {
    <[u8; 4]>::try_from(bytes)
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::CorruptRecord(name.to_owned()))
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
        let mut batch = StoreBatch::new(store.active(ORDERS));
        batch.put_view("o-1", b"stored".to_vec());
        batch.put_index(b"c1/1".to_vec());
        batch.put_index(b"c1/4".to_vec());
        store.write(batch).unwrap();

        let mut staging = Staging::new(&store, store.active(ORDERS));
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
        staging.set_next_offset("orders", 0, 8);
        staging.set_next_offset("orders", 1, 3);
        staging.set_next_offset("orders", 0, 9);
        store.write(staging.into_batch()).unwrap();
        assert_eq!(store.view(ORDERS, "o-1").unwrap().unwrap(), b"staged");
        assert_eq!(
            store.next_offset(ORDERS, "orders", 0).unwrap(),
            Some(9),
            "the last one"
        );
        assert_eq!(store.next_offset(ORDERS, "orders", 1).unwrap(), Some(3));
        assert_eq!(store.index_scan(ORDERS, b"c1/", b"", 10).unwrap().len(), 4);
    }

    #[test]
    fn views_and_offsets_persist_together() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &[ORDERS]).unwrap();
            assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), None);
            let mut batch = StoreBatch::new(store.active(ORDERS));
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
    }

    #[test]
    fn another_version_keeps_serving_until_a_new_generation_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &[ORDERS]).unwrap();
            let mut batch = StoreBatch::new(store.active(ORDERS));
            batch.put_view("o-1", b"old".to_vec());
            batch.set_next_offset("orders", 0, 7);
            store.write(batch).unwrap();
        }
        let next = Namespace {
            version: 2,
            ..ORDERS
        };
        let store = Store::open(dir.path(), &[next]).unwrap();
        assert!(!store.is_current(next), "written by version 1");
        assert_eq!(store.view(next, "o-1").unwrap().unwrap(), b"old");

        // A rebuild fills a generation beside it, unseen until activated.
        let shadow = store.begin(next).unwrap();
        let mut batch = StoreBatch::new(shadow);
        batch.put_view("o-1", b"new".to_vec());
        batch.set_next_offset("orders", 0, 9);
        store.write(batch).unwrap();
        assert_eq!(store.view(next, "o-1").unwrap().unwrap(), b"old");
        let reader = StoreViews::new(&store, next);

        let previous = store.activate(shadow, next.version).unwrap();
        assert!(store.is_current(next));
        assert_eq!(store.view(next, "o-1").unwrap().unwrap(), b"new");
        assert_eq!(store.next_offset(next, "orders", 0).unwrap(), Some(9));
        {
            use shared_events::view::Views;
            assert_eq!(
                reader.get("o-1").unwrap().unwrap(),
                b"old",
                "a read keeps its generation"
            );
        }
        store.discard(previous).unwrap();
        store.discard(shadow).unwrap();
        assert_eq!(
            store.view(next, "o-1").unwrap().unwrap(),
            b"new",
            "the active one stays"
        );
        drop(store);

        let store = Store::open(dir.path(), &[next]).unwrap();
        assert!(store.is_current(next));
        assert_eq!(store.view(next, "o-1").unwrap().unwrap(), b"new");
    }

    #[test]
    fn a_rebuild_cut_short_leaves_the_active_generation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &[ORDERS]).unwrap();
            let mut batch = StoreBatch::new(store.active(ORDERS));
            batch.put_view("o-1", b"serving".to_vec());
            store.write(batch).unwrap();
            let shadow = store.begin(ORDERS).unwrap();
            let mut batch = StoreBatch::new(shadow);
            batch.put_view("o-1", b"half-built".to_vec());
            store.write(batch).unwrap();
        }
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        assert_eq!(store.view(ORDERS, "o-1").unwrap().unwrap(), b"serving");
        // The next rebuild starts from empty, not from the half-built generation.
        let shadow = store.begin(ORDERS).unwrap();
        assert_eq!(store.view_in(shadow, "o-1").unwrap(), None);
    }

    #[test]
    fn a_reset_empties_a_namespace_for_this_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        let mut batch = StoreBatch::new(store.active(ORDERS));
        batch.put_view("o-1", b"{}".to_vec());
        batch.set_next_offset("orders", 0, 7);
        store.write(batch).unwrap();
        store.reset(ORDERS).unwrap();
        assert_eq!(store.view(ORDERS, "o-1").unwrap(), None);
        assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), None);
        assert!(store.index_scan(ORDERS, b"", b"", 10).unwrap().is_empty());
    }

    #[test]
    fn projections_keep_apart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &[ORDERS, CUSTOMERS]).unwrap();
            for namespace in [ORDERS, CUSTOMERS] {
                let mut batch = StoreBatch::new(store.active(namespace));
                batch.put_view("same-key", namespace.name.as_bytes().to_vec());
                batch.set_next_offset("orders", 0, 5);
                store.write(batch).unwrap();
            }
            assert_eq!(store.view(ORDERS, "same-key").unwrap().unwrap(), b"orders");
            assert_eq!(
                store.view(CUSTOMERS, "same-key").unwrap().unwrap(),
                b"customers"
            );
            store.reset(CUSTOMERS).unwrap();
            assert_eq!(store.view(ORDERS, "same-key").unwrap().unwrap(), b"orders");
            assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), Some(5));
            assert_eq!(store.view(CUSTOMERS, "same-key").unwrap(), None);
        }
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
            let db = Db::open_cf_descriptors(&options, dir.path(), families).unwrap();
            db.put(b"projection-version", 2u32.to_be_bytes()).unwrap();
        }
        let store = Store::open(dir.path(), &[ORDERS]).unwrap();
        assert_eq!(store.next_offset(ORDERS, "orders", 0).unwrap(), None);
    }
}

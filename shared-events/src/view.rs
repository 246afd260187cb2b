//! The contract between a domain's read model and the projection engine.
//!
//! A read model says how an event changes its views, reading what it needs through [`Views`]
//! and staging what it writes into [`Changes`]. The engine gives it its own namespace of the
//! replica's store, stages the changes together with the offset the event came from, and writes
//! both at once, so the read model never sees a store, a batch or an offset, and is testable
//! with a map.

/// A namespace's views, as a read model reads them: byte values by string key, and an ordered
/// index of keys.
pub trait Views {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ViewError>;

    /// Up to `limit` index keys that start with `prefix`, in byte order, from `start` (or from
    /// the first key with the prefix, if `start` sorts before it).
    fn scan(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, ViewError>;
}

/// What applying one event writes: views and index keys, all or nothing.
pub trait Changes {
    fn put(&mut self, key: &str, value: Vec<u8>);
    fn index(&mut self, key: Vec<u8>);
}

/// The store could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the store failed: {0}")]
pub struct ViewError(pub String);

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The views changed.
    Changed,
    /// The event is not the next version of its aggregate; nothing was changed.
    VersionGap { expected: i64, got: i64 },
}

/// A read model, fed by the events of one or more topics.
pub trait ReadModel: Send + Sync + 'static {
    /// What it is fed: one topic's event type, or an enum over several topics' types.
    type Event: Send + Sync;

    /// Its namespace in the store: its data lives apart from every other read model's.
    const NAMESPACE: &'static str;

    /// The version of what it stores; its namespace, when written by another version, is
    /// rebuilt from the topics. Bump it whenever `apply` changes what it writes.
    const VERSION: u32;

    /// The topics it reads, each named by the collection of the aggregate whose events it
    /// carries (`orders`, `customers`); a service maps each name to a topic.
    const TOPICS: &'static [&'static str];

    /// Stages the effect of `event`, read from `partition` of its topic, into `changes`,
    /// reading the current views from `views`.
    fn apply(
        &self,
        views: &dyn Views,
        changes: &mut dyn Changes,
        event: &Self::Event,
        partition: i32,
    ) -> Result<Applied, ViewError>;
}

/// Reads a JSON view.
pub fn read_json<T: for<'de> serde::Deserialize<'de>>(
    views: &dyn Views,
    key: &str,
) -> Result<Option<T>, ViewError> {
    Ok(views
        .get(key)?
        .and_then(|bytes| match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            // Treated as absent, and said: the version bump is what keeps stored shapes and
            // code in step, so this is a bug to see, not a state to serve.
            Err(error) => {
                tracing::error!(%error, key, "stored view does not parse");
                None
            }
        }))
}

/// Stages a JSON view.
pub fn put_json<T: serde::Serialize>(changes: &mut dyn Changes, key: &str, value: &T) {
    // Views are structs of strings, integers and maps of them: they always serialise.
    changes.put(key, serde_json::to_vec(value).unwrap_or_default());
}

/// Views and changes in memory, for testing a read model without a store: changes are applied
/// at once.
#[derive(Debug, Default, Clone)]
pub struct MemoryViews {
    views: std::collections::BTreeMap<String, Vec<u8>>,
    index: std::collections::BTreeSet<Vec<u8>>,
}

impl MemoryViews {
    /// Applies `event`, read from `partition`, to `model` and keeps the changes.
    pub fn apply<M: ReadModel>(
        &mut self,
        model: &M,
        event: &M::Event,
        partition: i32,
    ) -> Result<Applied, ViewError> {
        let mut staged = MemoryViews::default();
        let applied = model.apply(self, &mut staged, event, partition)?;
        self.views.extend(staged.views);
        self.index.extend(staged.index);
        Ok(applied)
    }
}

impl Views for MemoryViews {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ViewError> {
        Ok(self.views.get(key).cloned())
    }

    fn scan(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, ViewError> {
        let from = if start > prefix { start } else { prefix };
        Ok(self
            .index
            .range(from.to_vec()..)
            .take_while(|key| key.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }
}

impl Changes for MemoryViews {
    fn put(&mut self, key: &str, value: Vec<u8>) {
        self.views.insert(key.to_owned(), value);
    }

    fn index(&mut self, key: Vec<u8>) {
        self.index.insert(key);
    }
}

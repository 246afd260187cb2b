//! Maps keyed by string, split over shards by the key's hash, each shard under its own lock.
//!
//! The command side keeps maps of millions of keys (aggregates, idempotency keys). A map that
//! outgrows its table rehashes every key while the thread that inserted waits, and under one
//! lock every other thread waits too. Split over enough shards, a rehash moves a few thousand
//! keys at most and only commands on the same shard wait for it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub struct ShardedMap<V> {
    shards: Box<[Mutex<HashMap<String, V>>]>,
    hasher: RandomState,
}

impl<V> ShardedMap<V> {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard holding `key`, locked.
    pub fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, V>> {
        // Truncating the hash is fine: any bits pick a shard.
        #[allow(clippy::cast_possible_truncation)]
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[index])
    }

    /// Keys in all shards (each locked in turn, so not a snapshot under concurrent change).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Locks `mutex`, also after a panic elsewhere poisoned it. For state that is only changed by
/// whole-statement inserts, removes, pushes and pops, which a panic cannot leave half done.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

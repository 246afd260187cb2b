//! `Idempotency-Key` handling: a retry with the same key gets the first answer and writes nothing.
//!
//! Per key there is at most one attempt in flight (its [`Claim`]); a retry arriving meanwhile
//! waits for it. Only committed outcomes are remembered, as [`Receipt`]s, for the retention
//! window: a first attempt that wrote nothing (rejected, aborted) releases the key, and a waiting
//! retry then runs as a first attempt itself. Receipts can be rebuilt from the log because every
//! event carries the key that caused it ([`IdempotencyIndex::remember`], by a restore).
//!
//! Bounded: entries expire after the retention window, and beyond `max_entries` the oldest go
//! first (counted in [`IdempotencyIndex::evicted`]).
//!
//! The keys live in [`SHARDS`] maps, each under its own lock. One map of up to a million keys
//! would, each time it outgrew its table (and, once full, each time the churn of expiring keys
//! filled it with tombstones), rehash every key while all keyed commands and the HTTP thread
//! that triggered it waited: a stall of a hundred milliseconds or more. A shard rehashes a few
//! thousand keys. The expiry order stays one queue, so the bound and the eviction order are
//! exact.

use std::collections::VecDeque;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_events::Position;
use tokio::sync::watch;

use crate::sharded::{ShardedMap, lock};

/// What a committed command answered: everything needed to answer a retry identically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The command's name, as the domain names it (`pay`).
    pub command: &'static str,
    /// Whether the command created its aggregate (answered `201`, not `200`).
    pub created: bool,
    pub aggregate_id: String,
    pub version: i64,
    pub event_id: String,
    pub position: Position,
}

/// What identifies "the same request" for a key: the command, the aggregate it names, and a hash
/// of what it asks for (the payload of the event it writes). Computed from the request, and again
/// from the event in the log after a restart, so both agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    command: &'static str,
    /// The aggregate named in the path (None for commands that create one).
    target: Option<String>,
    content: u64,
}

impl Fingerprint {
    pub fn new(command: &'static str, target: Option<&str>, content: &impl Hash) -> Self {
        // SipHash with fixed keys: the same in every run of the same build, and the value is
        // never stored, only recomputed.
        let mut hasher = DefaultHasher::new();
        content.hash(&mut hasher);
        Self {
            command,
            target: target.map(str::to_owned),
            content: hasher.finish(),
        }
    }
}

/// What happened to an attempt, as waiting retries learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Pending,
    Committed(Receipt),
    /// The attempt wrote nothing; the key is free again.
    Released,
    /// Nobody knows whether the attempt wrote its event; only the log can tell.
    InDoubt,
}

#[derive(Debug)]
enum Slot {
    InFlight {
        fingerprint: Fingerprint,
        outcome: watch::Receiver<Outcome>,
    },
    Done {
        fingerprint: Fingerprint,
        receipt: Receipt,
    },
    /// An attempt whose outcome is unknown (see [`Claim::in_doubt`]): kept until the service
    /// restarts and reads the log, so that no retry writes a second event meanwhile.
    InDoubt { fingerprint: Fingerprint },
}

/// Maps the keys are spread over.
const SHARDS: usize = 256;

/// What [`IdempotencyIndex::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// No attempt with this key: go ahead, and settle the claim.
    First(Claim),
    /// Already committed: answer with this receipt.
    Replay(Receipt),
    /// The key was used for a different request.
    Mismatch,
    /// An earlier attempt with the key may or may not have committed; until a restart reads
    /// the log, a retry can only be told to wait.
    InDoubt,
}

/// What a checkpoint must store of the index: receipts added and keys forgotten since the last.
#[derive(Debug, Default)]
pub struct Journal {
    pub stored: Vec<(String, Vec<u8>)>,
    pub forgotten: Vec<String>,
}

/// A receipt as the snapshot store keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredReceipt {
    command: String,
    target: Option<String>,
    content: u64,
    created: bool,
    aggregate_id: String,
    version: i64,
    event_id: String,
    partition: i32,
    offset: i64,
    at_ms: i64,
}

#[derive(Debug)]
pub struct IdempotencyIndex {
    slots: ShardedMap<Slot>,
    /// Kept only when a snapshot store is behind the index.
    journal: Option<Mutex<Journal>>,
    /// Keys of `Done` slots by the time they were committed (ms since the epoch), oldest first.
    /// Locked before a shard, never while one is held.
    expiry: Mutex<VecDeque<(i64, String)>>,
    retention: Duration,
    max_entries: usize,
    evicted: AtomicU64,
}

impl IdempotencyIndex {
    pub fn new(retention: Duration, max_entries: usize) -> Arc<Self> {
        Self::journaled(retention, max_entries, false)
    }

    /// An index whose changes are also journaled for a snapshot store, if `journaled`.
    pub fn journaled(retention: Duration, max_entries: usize, journaled: bool) -> Arc<Self> {
        Arc::new(Self {
            slots: ShardedMap::new(SHARDS),
            journal: journaled.then(Mutex::default),
            expiry: Mutex::default(),
            retention,
            max_entries,
            evicted: AtomicU64::new(0),
        })
    }

    /// The changes since the last call, for the snapshot store.
    pub fn take_journal(&self) -> Journal {
        self.journal
            .as_ref()
            .map(|journal| std::mem::take(&mut *lock(journal)))
            .unwrap_or_default()
    }

    /// Loads the receipts a snapshot store kept, in the order they were committed, skipping
    /// those past the retention window (journaled as forgotten). `commands` names every
    /// command of the service, so that a receipt's command is one of them.
    pub fn load(
        &self,
        stored: impl Iterator<Item = (String, Vec<u8>)>,
        commands: &[&'static str],
        now_ms: i64,
    ) -> usize {
        let mut receipts: Vec<(String, StoredReceipt)> = stored
            .filter_map(|(key, bytes)| match serde_json::from_slice(&bytes) {
                Ok(receipt) => Some((key, receipt)),
                Err(error) => {
                    tracing::warn!(%key, %error, "an unreadable stored receipt is skipped");
                    None
                }
            })
            .collect();
        receipts.sort_by_key(|(_, r)| r.at_ms);
        let mut loaded = 0;
        for (key, r) in receipts {
            let command = commands.iter().copied().find(|c| *c == r.command);
            let Some(command) =
                command.filter(|_| now_ms.saturating_sub(r.at_ms) <= self.retention_ms())
            else {
                if let Some(journal) = &self.journal {
                    lock(journal).forgotten.push(key);
                }
                continue;
            };
            let fingerprint = Fingerprint {
                command,
                target: r.target,
                content: r.content,
            };
            let receipt = Receipt {
                command,
                created: r.created,
                aggregate_id: r.aggregate_id,
                version: r.version,
                event_id: r.event_id,
                position: Position {
                    partition: r.partition,
                    offset: r.offset,
                },
            };
            self.insert(&key, fingerprint, receipt, r.at_ms, false);
            loaded += 1;
        }
        loaded
    }

    /// Records a receipt, then forgets the oldest ones beyond the bound.
    fn insert_done(&self, key: &str, fingerprint: Fingerprint, receipt: Receipt, at_ms: i64) {
        self.insert(key, fingerprint, receipt, at_ms, true);
    }

    fn insert(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        receipt: Receipt,
        at_ms: i64,
        journal: bool,
    ) {
        if journal && let Some(changes) = &self.journal {
            let stored = StoredReceipt {
                command: fingerprint.command.to_owned(),
                target: fingerprint.target.clone(),
                content: fingerprint.content,
                created: receipt.created,
                aggregate_id: receipt.aggregate_id.clone(),
                version: receipt.version,
                event_id: receipt.event_id.clone(),
                partition: receipt.position.partition,
                offset: receipt.position.offset,
                at_ms,
            };
            if let Ok(bytes) = serde_json::to_vec(&stored) {
                lock(changes).stored.push((key.to_owned(), bytes));
            }
        }
        let mut expiry = lock(&self.expiry);
        self.slots.shard(key).insert(
            key.to_owned(),
            Slot::Done {
                fingerprint,
                receipt,
            },
        );
        expiry.push_back((at_ms, key.to_owned()));
        while expiry.len() > self.max_entries {
            if let Some((_, old)) = expiry.pop_front() {
                self.forget_done(&old);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Removes `key` if it holds a receipt (not if a new attempt has claimed it since).
    fn forget_done(&self, key: &str) {
        let mut slots = self.slots.shard(key);
        if matches!(slots.get(key), Some(Slot::Done { .. })) {
            slots.remove(key);
            drop(slots);
            if let Some(journal) = &self.journal {
                lock(journal).forgotten.push(key.to_owned());
            }
        }
    }

    /// Claims `key` for a first attempt, or says what became of earlier ones. Waits while
    /// another attempt with the key is in flight; the caller bounds that wait.
    pub async fn begin(self: &Arc<Self>, key: &str, fingerprint: Fingerprint) -> Begin {
        loop {
            let mut waiting = {
                let mut slots = self.slots.shard(key);
                match slots.entry(key.to_owned()) {
                    Entry::Vacant(vacant) => {
                        let (sender, outcome) = watch::channel(Outcome::Pending);
                        vacant.insert(Slot::InFlight {
                            fingerprint: fingerprint.clone(),
                            outcome,
                        });
                        return Begin::First(Claim {
                            index: Arc::clone(self),
                            key: key.to_owned(),
                            fingerprint,
                            sender: Some(sender),
                        });
                    }
                    Entry::Occupied(occupied) => match occupied.get() {
                        Slot::Done {
                            fingerprint: first,
                            receipt,
                        } => {
                            return if *first == fingerprint {
                                Begin::Replay(receipt.clone())
                            } else {
                                Begin::Mismatch
                            };
                        }
                        Slot::InFlight {
                            fingerprint: first,
                            outcome,
                        } => {
                            if *first != fingerprint {
                                return Begin::Mismatch;
                            }
                            outcome.clone()
                        }
                        Slot::InDoubt { fingerprint: first } => {
                            return if *first == fingerprint {
                                Begin::InDoubt
                            } else {
                                Begin::Mismatch
                            };
                        }
                    },
                }
            };
            // The first attempt's outcome decides; a released key is claimed anew next loop.
            let settled = waiting
                .wait_for(|o| *o != Outcome::Pending)
                .await
                .map(|o| o.clone());
            match settled {
                Ok(Outcome::Committed(receipt)) => return Begin::Replay(receipt),
                Ok(Outcome::InDoubt) => return Begin::InDoubt,
                _ => {}
            }
        }
    }

    /// Records a receipt found in the log (a restore), if it is within the retention window.
    pub fn remember(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        receipt: Receipt,
        committed_at_ms: i64,
        now_ms: i64,
    ) {
        if now_ms.saturating_sub(committed_at_ms) > self.retention_ms() {
            return;
        }
        self.insert_done(key, fingerprint, receipt, committed_at_ms);
    }

    fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }

    fn settle(&self, key: &str, committed: Option<(Fingerprint, Receipt)>, now_ms: i64) {
        match committed {
            Some((fingerprint, receipt)) => self.insert_done(key, fingerprint, receipt, now_ms),
            None => {
                let mut slots = self.slots.shard(key);
                if matches!(slots.get(key), Some(Slot::InFlight { .. })) {
                    slots.remove(key);
                }
            }
        }
    }

    /// Forgets receipts older than the retention window.
    pub fn expire(&self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.retention_ms());
        // In chunks, so commits settling meanwhile wait for one chunk, not for the whole sweep.
        const CHUNK: usize = 1024;
        loop {
            let mut expiry = lock(&self.expiry);
            for _ in 0..CHUNK {
                match expiry.front() {
                    Some((at, _)) if *at < horizon => {
                        if let Some((_, key)) = expiry.pop_front() {
                            self.forget_done(&key);
                        }
                    }
                    _ => return,
                }
            }
        }
    }

    /// Keys remembered or in flight.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Receipts dropped early because the index was full.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// The right to make the first attempt for a key. Settle it with [`Claim::committed`]; dropping
/// it unsettled releases the key (the attempt wrote nothing) and wakes waiting retries.
#[derive(Debug)]
pub struct Claim {
    index: Arc<IdempotencyIndex>,
    key: String,
    fingerprint: Fingerprint,
    sender: Option<watch::Sender<Outcome>>,
}

impl Claim {
    pub fn committed(mut self, receipt: Receipt, now_ms: i64) {
        let committed = (self.fingerprint.clone(), receipt.clone());
        self.index.settle(&self.key, Some(committed), now_ms);
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Outcome::Committed(receipt));
        }
    }
}

impl Claim {
    /// The attempt's outcome is unknown (its transaction's fate could not be learned before
    /// shutdown, or its producer worker died with it): the key stays taken, and retries are told
    /// to come back, until a restart rebuilds the receipts from the log.
    pub fn in_doubt(mut self) {
        if let Some(sender) = self.sender.take() {
            let mut slots = self.index.slots.shard(&self.key);
            slots.insert(
                self.key.clone(),
                Slot::InDoubt {
                    fingerprint: self.fingerprint.clone(),
                },
            );
            drop(slots);
            sender.send_replace(Outcome::InDoubt);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.index.settle(&self.key, None, 0);
            sender.send_replace(Outcome::Released);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(id: &str) -> Receipt {
        Receipt {
            command: "pay",
            created: false,
            aggregate_id: id.into(),
            version: 2,
            event_id: "e".into(),
            position: Position {
                partition: 0,
                offset: 7,
            },
        }
    }

    fn fingerprint(body: &[u8]) -> Fingerprint {
        Fingerprint::new("pay", Some("o-1"), &body)
    }

    #[tokio::test]
    async fn a_committed_key_replays_and_a_different_request_is_refused() {
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        let Begin::First(claim) = index.begin("k", fingerprint(b"a")).await else {
            panic!("expected a first attempt")
        };
        claim.committed(receipt("o-1"), 1_000);
        assert!(
            matches!(index.begin("k", fingerprint(b"a")).await, Begin::Replay(r) if r == receipt("o-1"))
        );
        assert!(matches!(
            index.begin("k", fingerprint(b"b")).await,
            Begin::Mismatch
        ));
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_first_attempt() {
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        let Begin::First(claim) = index.begin("k", fingerprint(b"a")).await else {
            panic!("expected a first attempt")
        };
        // Polled once, by hand: the retry has registered and waits, whatever the scheduler does.
        let mut retry = Box::pin(index.begin("k", fingerprint(b"a")));
        assert!(futures::poll!(&mut retry).is_pending());
        claim.committed(receipt("o-1"), 1_000);
        assert!(matches!(retry.await, Begin::Replay(_)));
    }

    #[tokio::test]
    async fn a_released_key_lets_the_retry_go_first() {
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        let Begin::First(claim) = index.begin("k", fingerprint(b"a")).await else {
            panic!("expected a first attempt")
        };
        let mut retry = Box::pin(index.begin("k", fingerprint(b"a")));
        assert!(futures::poll!(&mut retry).is_pending());
        drop(claim);
        assert!(matches!(retry.await, Begin::First(_)));
    }

    /// An attempt whose outcome is unknown keeps its key: the waiting retry and every later one
    /// are told so, and none of them may write.
    #[tokio::test]
    async fn a_key_in_doubt_lets_no_retry_write() {
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        let Begin::First(claim) = index.begin("k", fingerprint(b"a")).await else {
            panic!("expected a first attempt")
        };
        let mut retry = Box::pin(index.begin("k", fingerprint(b"a")));
        assert!(futures::poll!(&mut retry).is_pending());
        claim.in_doubt();
        assert!(matches!(retry.await, Begin::InDoubt));
        assert!(matches!(
            index.begin("k", fingerprint(b"a")).await,
            Begin::InDoubt
        ));
        assert!(matches!(
            index.begin("k", fingerprint(b"b")).await,
            Begin::Mismatch
        ));
        index.expire(i64::MAX);
        assert!(
            matches!(index.begin("k", fingerprint(b"a")).await, Begin::InDoubt),
            "not forgotten with the receipts"
        );
    }

    #[tokio::test]
    async fn receipts_expire_and_are_bounded() {
        let index = IdempotencyIndex::new(Duration::from_millis(1_000), 2);
        let now = 10_000;
        let pay = |id: &str, content: &str| Fingerprint::new("pay", Some(id), &content);
        index.remember("old", pay("o-1", "x"), receipt("o-1"), now - 5_000, now);
        assert!(index.is_empty(), "outside the window: not remembered");
        index.remember("a", pay("o-1", "x"), receipt("o-1"), now - 900, now);
        index.remember("b", pay("o-2", "x"), receipt("o-2"), now - 100, now);
        index.remember("c", pay("o-3", "x"), receipt("o-3"), now, now);
        assert_eq!((index.len(), index.evicted()), (2, 1));
        index.expire(now + 950);
        assert_eq!(index.len(), 1);
        // Rebuilt from the log: the same command on the same order asking for the same thing
        // replays; anything else is another request.
        assert!(matches!(
            index.begin("c", pay("o-3", "x")).await,
            Begin::Replay(_)
        ));
        assert!(matches!(
            index.begin("c", pay("o-9", "x")).await,
            Begin::Mismatch
        ));
        assert!(matches!(
            index.begin("c", pay("o-3", "y")).await,
            Begin::Mismatch
        ));
    }

    #[tokio::test]
    async fn the_bound_and_the_expiry_order_hold_across_shards() {
        let index = IdempotencyIndex::new(Duration::from_secs(60), 100);
        let now = 10_000_000;
        let print = |n: i64| Fingerprint::new("pay", Some("o"), &n);
        for n in 0..1_000 {
            index.remember(
                &format!("k{n}"),
                print(n),
                receipt("o"),
                now - 1_000 + n,
                now,
            );
        }
        assert_eq!((index.len(), index.evicted()), (100, 900));
        // The newest hundred stay, whichever shards they fell in.
        for n in [0, 450, 899] {
            assert!(matches!(
                index.begin(&format!("k{n}"), print(n)).await,
                Begin::First(_)
            ));
        }
        for n in [900, 950, 999] {
            assert!(matches!(
                index.begin(&format!("k{n}"), print(n)).await,
                Begin::Replay(_)
            ));
        }
        // The retention window is 60 s: at `now + 59_950`, k900..k949 (committed before
        // `now - 50`) are older than that, k950..k999 are not.
        index.expire(now + 59_950);
        assert_eq!(index.len(), 50);
    }
}

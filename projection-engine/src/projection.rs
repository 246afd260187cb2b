//! The projection runner: a read-committed consumer-group member that applies each event to the
//! store exactly once.
//!
//! - On assignment, each partition resumes from the offset stored beside the views (from the
//!   beginning if this store never had it), not from the group's committed offset: the store is
//!   the source of truth, so a crash between the store write and an offset commit costs nothing.
//! - Each event's view change and its next offset go into one RocksDB write batch.
//! - The group's committed offsets are still advanced (after the store write) so that ordinary
//!   Kafka tooling shows the group's lag.
//!
//! The runner is generic: a domain plugs in with its [`ReadModel`] and a [`Decoder`] for the
//! topics it reads. A runner runs one projection over one or more topics, with a
//! consumer (and a thread) of its own, so each projection resumes, lags and rebuilds on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::LocalBoxFuture;
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use shared_events::{AvroEvent, EventCodec, WireError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::rebuild::{Handover, Positions, Reason, Rebuilder, Step};
use crate::standby::Standby;
use crate::store::{EventChanges, Generation, Namespace, Staging, Store, StoreBatch, StoreError};

pub use shared_events::view::{Applied, ReadModel};

/// Where in the store a read model lives.
pub fn namespace<P: ReadModel>() -> Namespace {
    Namespace {
        name: P::NAMESPACE,
        version: P::VERSION,
    }
}

/// Turns a record of one of a projection's topics into the projection's event.
pub trait Decoder<E>: 'static {
    fn decode<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> LocalBoxFuture<'a, Result<E, WireError>>;
}

/// A projection of one topic decodes with that topic's codec.
impl<E: AvroEvent + 'static> Decoder<E> for EventCodec<E> {
    fn decode<'a>(
        &'a self,
        _topic: &'a str,
        bytes: &'a [u8],
    ) -> LocalBoxFuture<'a, Result<E, WireError>> {
        Box::pin(EventCodec::decode(self, bytes))
    }
}

/// What this replica knows of each partition of the topic: whether the group assigned it here,
/// how far the store has applied it, where its committed data ends, and whether the store has
/// caught up with it since it was assigned.
#[derive(Debug)]
pub struct PartitionTable {
    partitions: Vec<PartitionState>,
    joined: AtomicBool,
    /// The runner cannot make progress (schema registry unreachable): nothing is "caught up".
    stalled: AtomicBool,
    rebalances: AtomicU64,
    /// Signalled after every rebalance, so the cluster view refreshes at once.
    pub rebalanced: tokio::sync::Notify,
    /// This member's view of its group membership, from the consumer's statistics.
    membership: std::sync::Mutex<Membership>,
}

/// This member's group membership as librdkafka reports it. Kafka does not expose a classic
/// group's generation to clients; the member's rebalance count stands in for it.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    pub state: String,
    pub join_state: String,
    pub rebalances: i64,
    pub last_rebalance_reason: String,
    pub last_rebalance_age_ms: i64,
}

#[derive(Debug)]
struct PartitionState {
    owned: AtomicBool,
    /// Not owned, but kept warm here for when its owner cannot answer (`standby`).
    standby: AtomicBool,
    caught_up: AtomicBool,
    /// The next offset the store has applied up to (0 when never applied).
    applied: watch::Sender<i64>,
    /// The last stable offset (end of committed data) in the latest statistics; -1 if unknown.
    /// For lag only: the statistics may still carry a value from an earlier assignment.
    stable_end: AtomicI64,
    /// The high watermark read after the partition was assigned; reaching it is catching up.
    catch_up_target: AtomicI64,
}

impl PartitionTable {
    pub fn new(partitions: i32) -> Self {
        Self {
            partitions: (0..partitions.max(0))
                .map(|_| PartitionState {
                    owned: AtomicBool::new(false),
                    standby: AtomicBool::new(false),
                    caught_up: AtomicBool::new(false),
                    applied: watch::channel(0).0,
                    stable_end: AtomicI64::new(-1),
                    catch_up_target: AtomicI64::new(-1),
                })
                .collect(),
            joined: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            rebalances: AtomicU64::new(0),
            rebalanced: tokio::sync::Notify::new(),
            membership: std::sync::Mutex::new(Membership::default()),
        }
    }

    pub fn membership(&self) -> Membership {
        self.membership
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn get(&self, partition: i32) -> Option<&PartitionState> {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.partitions.get(p))
    }

    pub fn count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.get(partition)
            .is_some_and(|p| p.owned.load(Ordering::Acquire))
    }

    /// Owned, and the store has caught up with the partition's committed data at least once
    /// since it was assigned: only then is "not found" a true answer.
    pub fn serves(&self, partition: i32) -> bool {
        !self.stalled.load(Ordering::Acquire)
            && self.get(partition).is_some_and(|p| {
                p.owned.load(Ordering::Acquire) && p.caught_up.load(Ordering::Acquire)
            })
    }

    /// Marks the runner as unable (or able again) to apply events.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
    }

    /// Owned partitions whose catch-up target (the end of the log when they were assigned) is
    /// not known yet.
    pub fn needing_target(&self) -> Vec<i32> {
        (0..self.count())
            .filter(|p| {
                self.get(*p).is_some_and(|s| {
                    s.owned.load(Ordering::Acquire) && s.catch_up_target.load(Ordering::Acquire) < 0
                })
            })
            .collect()
    }

    /// Sets the offset a newly assigned partition must reach to be caught up: its high
    /// watermark read after the assignment (conservative: it may include an open transaction's
    /// records, which only delays catching up until the transaction completes).
    pub fn set_catch_up_target(&self, partition: i32, high_watermark: i64) {
        if let Some(state) = self.get(partition)
            && state.owned.load(Ordering::Acquire)
            && state.catch_up_target.load(Ordering::Acquire) < 0
        {
            state
                .catch_up_target
                .store(high_watermark, Ordering::Release);
            if *state.applied.borrow() >= high_watermark {
                state.caught_up.store(true, Ordering::Release);
            }
        }
    }

    pub fn owned(&self) -> Vec<i32> {
        (0..self.count()).filter(|p| self.owns(*p)).collect()
    }

    /// Whether this replica keeps a warm copy of a partition it does not own.
    pub fn holds_standby(&self, partition: i32) -> bool {
        self.get(partition)
            .is_some_and(|p| p.standby.load(Ordering::Acquire))
    }

    /// The partitions this replica keeps warm copies of.
    pub fn standbys(&self) -> Vec<i32> {
        (0..self.count())
            .filter(|p| self.holds_standby(*p))
            .collect()
    }

    /// Starts keeping `partition` warm from `next_offset`, unless it is owned here.
    pub(crate) fn standby_started(&self, partition: i32, next_offset: i64) {
        if let Some(state) = self.get(partition)
            && !state.owned.load(Ordering::Acquire)
        {
            state.stable_end.store(-1, Ordering::Release);
            state.applied.send_replace(next_offset);
            state.standby.store(true, Ordering::Release);
        }
    }

    pub(crate) fn standby_stopped(&self, partition: i32) {
        if let Some(state) = self.get(partition) {
            state.standby.store(false, Ordering::Release);
        }
    }

    /// Owned, or held as a standby: the store is applying it here.
    fn applying(state: &PartitionState) -> bool {
        state.owned.load(Ordering::Acquire) || state.standby.load(Ordering::Acquire)
    }

    /// Whether the group has assigned this replica anything (possibly nothing) yet.
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Relaxed)
    }

    pub fn applied(&self, partition: i32) -> i64 {
        self.get(partition).map_or(0, |p| *p.applied.borrow())
    }

    /// Committed records not yet applied, if the end of the partition is known.
    pub fn lag(&self, partition: i32) -> Option<i64> {
        let state = self.get(partition)?;
        let end = state.stable_end.load(Ordering::Acquire);
        (end >= 0).then(|| (end - *state.applied.borrow()).max(0))
    }

    /// Waits until `offset` of `partition` is applied (the store's next offset is past it).
    /// False if the partition is unknown or the wait was cut short by the caller's timeout.
    pub async fn wait_applied(&self, partition: i32, offset: i64) -> bool {
        let Some(state) = self.get(partition) else {
            return false;
        };
        let mut applied = state.applied.subscribe();
        applied.wait_for(|next| *next > offset).await.is_ok()
    }

    pub(crate) fn assigned(&self, partition: i32, next_offset: i64) {
        if let Some(state) = self.get(partition) {
            // The runner takes it over from the standby, at the offset the standby stored.
            state.standby.store(false, Ordering::Release);
            state.caught_up.store(false, Ordering::Release);
            state.stable_end.store(-1, Ordering::Release);
            state.catch_up_target.store(-1, Ordering::Release);
            state.applied.send_replace(next_offset);
            state.owned.store(true, Ordering::Release);
        }
    }

    fn revoked(&self, partition: i32) {
        if let Some(state) = self.get(partition) {
            state.owned.store(false, Ordering::Release);
            state.caught_up.store(false, Ordering::Release);
        }
    }

    pub(crate) fn rebalance_done(&self) {
        self.joined.store(true, Ordering::Release);
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        // One waiter (the cluster refresher); a stored permit survives a refresh in progress.
        self.rebalanced.notify_one();
    }

    /// Records that the store applied `partition` up to (excluding) `next_offset`.
    pub fn applied_to(&self, partition: i32, next_offset: i64) {
        if let Some(state) = self.get(partition) {
            state.applied.send_replace(next_offset);
            let target = state.catch_up_target.load(Ordering::Acquire);
            if target >= 0 && next_offset >= target {
                state.caught_up.store(true, Ordering::Release);
            }
        }
    }

    /// Records that the consumer moved past `next_offset` with nothing left to apply before it.
    pub(crate) fn skipped_to(&self, partition: i32, next_offset: i64) {
        if let Some(state) = self.get(partition)
            && Self::applying(state)
            && next_offset > *state.applied.borrow()
        {
            self.applied_to(partition, next_offset);
        }
    }

    /// Records the end of committed data of a partition, from the statistics of the consumer
    /// that applies it here: the runner's (`standby` false) for an owned partition, the
    /// standby's reader's for one kept warm. Each consumer also reports partitions it no
    /// longer reads, with the end it last saw; those are not taken.
    fn stable_end(&self, partition: i32, end: i64, standby: bool) {
        let applies = |state: &PartitionState| {
            if standby {
                state.standby.load(Ordering::Acquire)
            } else {
                state.owned.load(Ordering::Acquire)
            }
        };
        if let Some(state) = self.get(partition)
            && applies(state)
            && end >= 0
        {
            state.stable_end.store(end, Ordering::Release);
        }
    }
}

/// Counters of the runner, for metrics and for tests that prove nothing is applied twice.
#[derive(Debug, Default)]
pub struct ProjectionStats {
    pub applied: Counter,
    pub version_gaps: Counter,
    pub undecodable: Counter,
}

/// The partition table of each topic a runner reads.
#[derive(Debug, Clone, Default)]
pub struct Tables(Vec<(String, Arc<PartitionTable>)>);

impl Tables {
    pub fn new(tables: Vec<(String, Arc<PartitionTable>)>) -> Self {
        Self(tables)
    }

    pub fn of(&self, topic: &str) -> Option<&Arc<PartitionTable>> {
        self.0
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, table)| table)
    }

    fn all(&self) -> impl Iterator<Item = &Arc<PartitionTable>> {
        self.0.iter().map(|(_, table)| table)
    }
}

/// Consumer callbacks: seeds every newly assigned partition with the store's offset.
pub struct RebalanceContext {
    store: Arc<Store>,
    namespace: Namespace,
    tables: Tables,
    /// A group member's statistics describe its membership; a standby's reader is in no group.
    member: bool,
}

impl std::fmt::Debug for RebalanceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceContext")
            .field("namespace", &self.namespace.name)
            .finish_non_exhaustive()
    }
}

impl RebalanceContext {
    pub fn new(store: Arc<Store>, namespace: Namespace, tables: Tables) -> Self {
        Self {
            store,
            namespace,
            tables,
            member: true,
        }
    }

    /// The context of a standby's reader: its statistics give the ends of the partitions it
    /// keeps warm, and it takes part in no rebalance.
    pub fn standby(store: Arc<Store>, namespace: Namespace, tables: Tables) -> Self {
        Self {
            member: false,
            ..Self::new(store, namespace, tables)
        }
    }

    pub(crate) fn seed_offsets(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, partition) in partitions {
            let table = self.tables.of(&topic);
            let offset = match self.store.next_offset(self.namespace, &topic, partition) {
                Ok(Some(next)) => {
                    if let Some(table) = table {
                        table.assigned(partition, next);
                    }
                    Offset::Offset(next)
                }
                Ok(None) => {
                    if let Some(table) = table {
                        table.assigned(partition, 0);
                    }
                    Offset::Beginning
                }
                Err(error) => {
                    // Without a trustworthy position the only safe start is the beginning:
                    // applying is idempotent per version, so a replay re-derives the views.
                    tracing::error!(%error, partition, "stored offset unreadable; replaying partition");
                    if let Some(table) = table {
                        table.assigned(partition, 0);
                    }
                    Offset::Beginning
                }
            };
            if let Err(error) = tpl.set_partition_offset(&topic, partition, offset) {
                tracing::error!(%error, partition, "could not seed partition offset");
            }
        }
    }
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: Statistics) {
        for (name, table) in &self.tables.0 {
            if let (true, Some(group), Ok(mut membership)) =
                (self.member, &statistics.cgrp, table.membership.lock())
            {
                *membership = Membership {
                    state: group.state.clone(),
                    join_state: group.join_state.clone(),
                    rebalances: group.rebalance_cnt,
                    last_rebalance_reason: group.rebalance_reason.clone(),
                    last_rebalance_age_ms: group.rebalance_age,
                };
            }
            if let Some(topic) = statistics.topics.get(name) {
                for (partition, stats) in &topic.partitions {
                    if stats.fetch_state == "active" {
                        table.stable_end(*partition, stats.ls_offset, !self.member);
                    }
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let ours = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .filter(|e| self.tables.of(e.topic()).is_some())
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect()
        };
        let revoke = |owned: &[(String, i32)]| {
            for (topic, partition) in owned {
                if let Some(table) = self.tables.of(topic) {
                    table.revoked(*partition);
                }
            }
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.seed_offsets(tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) => tracing::info!(partitions = ?ours(tpl), "partitions assigned"),
                    Err(error) => {
                        tracing::error!(%error, "assign failed");
                        revoke(&ours(tpl));
                    }
                }
                for table in self.tables.all() {
                    table.rebalance_done();
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(?err, "rebalance error; dropping assignment");
                }
                let removed: Vec<(String, i32)> = if cooperative {
                    ours(tpl)
                } else {
                    self.tables
                        .0
                        .iter()
                        .flat_map(|(topic, table)| {
                            table.owned().into_iter().map(|p| (topic.clone(), p))
                        })
                        .collect()
                };
                // Stop serving before giving the partitions up.
                revoke(&removed);
                tracing::info!(partitions = ?removed, "partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(%error, "unassign failed");
                }
                for table in self.tables.all() {
                    table.rebalance_done();
                }
            }
        }
    }
}

/// Applies the events of the projection's topics to the store until `shutdown` is cancelled.
#[allow(missing_debug_implementations)] // the consumer has no Debug
pub struct Runner<P: ReadModel, D> {
    pub consumer: StreamConsumer<RebalanceContext>,
    pub decoder: D,
    pub projection: P,
    pub store: Arc<Store>,
    pub stats: Arc<ProjectionStats>,
    pub tables: Tables,
    /// Rebuilds of the projection beside the generation that serves.
    pub rebuild: Rebuilder<P, D>,
    /// The partitions of other replicas kept warm here, if standbys are on.
    pub standby: Option<Standby>,
    /// What the standby applied: kept apart, so `stats` counts only what this replica owns.
    pub standby_stats: Arc<ProjectionStats>,
}

/// The next record of the standby's reader; never, without a standby.
async fn standby_recv(
    standby: Option<&Standby>,
) -> rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>> {
    match standby {
        Some(standby) => standby.consumer().recv().await,
        None => std::future::pending().await,
    }
}

/// Records applied in one store write at most: what one poll hands over, up to this many.
pub(crate) const MAX_BATCH: usize = 512;

/// The message `recv` hands over, then whatever more the consumer has ready at once, up to
/// [`MAX_BATCH`]: a live stream of events gives batches of one (no added latency), a backlog
/// gives full batches (one store write, one system call, for many events).
pub(crate) async fn ready_batch<'a, C: ConsumerContext + 'static>(
    consumer: &'a StreamConsumer<C>,
    first: rdkafka::message::BorrowedMessage<'a>,
) -> Vec<rdkafka::message::BorrowedMessage<'a>> {
    ready_up_to(consumer, first, MAX_BATCH).await
}

/// As [`ready_batch`], up to `max` records.
pub(crate) async fn ready_up_to<'a, C: ConsumerContext + 'static>(
    consumer: &'a StreamConsumer<C>,
    first: rdkafka::message::BorrowedMessage<'a>,
    max: usize,
) -> Vec<rdkafka::message::BorrowedMessage<'a>> {
    let mut messages = vec![first];
    while messages.len() < max {
        // `recv` is polled once: ready now, or not part of this batch (no timer per message).
        match futures::FutureExt::now_or_never(consumer.recv()) {
            Some(Ok(message)) => messages.push(message),
            Some(Err(error)) => {
                tracing::warn!(%error, "consumer error");
                break;
            }
            None => break,
        }
    }
    messages
}

/// What applies a batch of records to one generation of a projection's namespace.
pub(crate) struct Applier<'a, P, D> {
    pub projection: &'a P,
    pub decoder: &'a D,
    pub store: &'a Store,
    pub stats: &'a ProjectionStats,
}

impl<P: ReadModel, D: Decoder<P::Event>> Applier<'_, P, D> {
    /// Stages `messages` in order into one batch of `generation`, each record taken only at or
    /// past `floor` of its partition (and once). None if the caller must stop: the store failed,
    /// or `shutdown` came first; then nothing of the batch is staged.
    pub(crate) async fn stage(
        &self,
        generation: Generation,
        messages: &[rdkafka::message::BorrowedMessage<'_>],
        floor: impl Fn(&str, i32) -> i64,
        stalled: impl Fn(bool),
        shutdown: &CancellationToken,
    ) -> Option<StoreBatch> {
        let mut staging = Staging::new(self.store, generation);
        // A rebalance can run inside a poll of this batch and seek a partition back to its
        // stored offset, which does not include this batch yet: its records come again. Each
        // partition's records are taken once, past what is applied or staged.
        let mut next: std::collections::HashMap<(&str, i32), i64> =
            std::collections::HashMap::new();
        for message in messages {
            let (topic, partition) = (message.topic(), message.partition());
            let floor = next
                .get(&(topic, partition))
                .copied()
                .unwrap_or_else(|| floor(topic, partition));
            if message.offset() < floor {
                continue;
            }
            next.insert((topic, partition), message.offset() + 1);
            let decoded =
                decode_retrying(self.decoder, topic, message.payload(), shutdown, &stalled);
            match decoded.await {
                Some(event) => {
                    let mut changes = EventChanges::default();
                    match self
                        .projection
                        .apply(&staging, &mut changes, &event, partition)
                    {
                        Ok(Applied::Changed) => {
                            self.stats.applied.inc();
                            staging.absorb(changes);
                        }
                        Ok(Applied::VersionGap { expected, got }) => {
                            self.stats.version_gaps.inc();
                            tracing::error!(
                                topic,
                                expected,
                                got,
                                partition = message.partition(),
                                offset = message.offset(),
                                "event version is not the next one; not applied"
                            );
                        }
                        Err(error) => {
                            // The store itself failed; stop rather than skip an event.
                            tracing::error!(%error, "store read failed; projection stops");
                            return None;
                        }
                    }
                }
                None if shutdown.is_cancelled() => return None,
                None => {
                    // Undecodable for good: skip it, but still record the position so that
                    // the partition moves on; the counter and the log say what happened.
                    self.stats.undecodable.inc();
                    tracing::error!(
                        partition = message.partition(),
                        offset = message.offset(),
                        "skipping undecodable record"
                    );
                }
            }
            staging.set_next_offset(topic, partition, message.offset() + 1);
        }
        Some(staging.into_batch())
    }
}

impl<P: ReadModel + Clone, D: Decoder<P::Event>> Runner<P, D> {
    pub async fn run(mut self, shutdown: CancellationToken) {
        // While idle, the consumer's position shows records it skipped without handing them
        // over (transaction markers, aborted records); see `note_position`.
        let mut idle = tokio::time::interval(Duration::from_millis(250));
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.rebuild.held() {
            // The store holds another version's views: they serve (stale, as they are) while
            // this version's are built beside them.
            self.set_stalled(true);
            self.rebuild.start(Reason::VersionChanged);
        }
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                step = self.rebuild.next() => {
                    self.rebuild_step(step, &shutdown).await;
                    continue;
                }
                _ = idle.tick() => {
                    if !self.rebuild.held() {
                        self.note_position();
                        self.keep_standby();
                    }
                    continue;
                }
                message = standby_recv(self.standby.as_ref()) => {
                    if !self.apply_standby(message, &shutdown).await {
                        break;
                    }
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if self.rebuild.held() {
                self.hold(&message);
                continue;
            }
            let messages = ready_batch(&self.consumer, message).await;
            if !self.apply(&messages, &shutdown).await {
                break;
            }
        }
        tracing::info!("projection runner stopped");
    }

    /// Applies `messages` in order and writes their changes and offsets in one batch. False if
    /// the runner must stop (the store failed, or shutdown came first; then nothing of the
    /// batch is written, and it is read again after a restart).
    async fn apply(
        &self,
        messages: &[rdkafka::message::BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> bool {
        let floor = |topic: &str, partition| {
            self.tables
                .of(topic)
                .map_or(0, |table| table.applied(partition))
        };
        match self.stage(messages, &self.stats, floor, shutdown).await {
            Some(batch) => self.write(batch, messages),
            None => false,
        }
    }

    /// Stages `messages` into one batch of the serving generation, each record from `floor`
    /// on, counted in `stats`. None if the runner must stop.
    async fn stage(
        &self,
        messages: &[rdkafka::message::BorrowedMessage<'_>],
        stats: &ProjectionStats,
        floor: impl Fn(&str, i32) -> i64,
        shutdown: &CancellationToken,
    ) -> Option<StoreBatch> {
        let applier = Applier {
            projection: &self.projection,
            decoder: &self.decoder,
            store: &self.store,
            stats,
        };
        let generation = self.store.active(namespace::<P>());
        let stalled = |stalled| self.set_stalled(stalled);
        applier
            .stage(generation, messages, floor, stalled, shutdown)
            .await
    }

    /// Brings the standby's partitions in line with the group's view, and moves their applied
    /// positions past transaction markers.
    fn keep_standby(&mut self) {
        if let Some(standby) = self.standby.as_mut() {
            standby.reconcile(&self.tables, &self.store, namespace::<P>());
            standby.note_position(&self.tables);
        }
    }

    /// Applies a batch of the standby's reader, as [`Runner::apply`] does the runner's: each
    /// record only if its partition is still held as a standby, and once. False if the runner
    /// must stop.
    async fn apply_standby(
        &self,
        first: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
        shutdown: &CancellationToken,
    ) -> bool {
        let (Some(standby), Ok(first)) = (self.standby.as_ref(), first) else {
            // A reader error (a broker away) is retried by the reader itself.
            return true;
        };
        if self.rebuild.held() {
            return true;
        }
        let messages = ready_batch(standby.consumer(), first).await;
        let floor = |topic: &str, partition| Standby::floor(&self.tables, topic, partition);
        let Some(batch) = self
            .stage(&messages, &self.standby_stats, floor, shutdown)
            .await
        else {
            return false;
        };
        if let Err(error) = self.store.write(batch) {
            tracing::error!(%error, "store write failed; projection stops");
            return false;
        }
        Standby::written(&self.tables, &messages);
        true
    }

    /// Held (the store holds another version's views): nothing is applied to them. The
    /// record's partition is paused; the switch to the rebuilt generation moves it on.
    fn hold(&self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let mut paused = TopicPartitionList::new();
        paused.add_partition(message.topic(), message.partition());
        if let Err(error) = self.consumer.pause(&paused) {
            tracing::warn!(%error, "could not pause a held partition");
        }
    }

    async fn rebuild_step(&mut self, step: Step, shutdown: &CancellationToken) {
        match step {
            Step::Start(reason) => self.rebuild.start(reason),
            Step::Retire => self.rebuild.retire(),
            Step::Handover(Handover::Freeze { reply }) => {
                // Between batches: everything handed over is applied. Held, nothing is, and
                // the shadow has only the end of the log to reach.
                let positions = if self.rebuild.held() {
                    Positions::new()
                } else {
                    self.owned_positions()
                };
                if reply.send(positions).is_err() {
                    return;
                }
                // Frozen: nothing is applied until the shadow has it all, or gives up.
                match self.rebuild.frozen(shutdown).await {
                    Some(Handover::Switch {
                        generation,
                        next,
                        reply,
                    }) => {
                        let switched = self.switch(generation, &next);
                        let _ = reply.send(switched.map_err(|e| e.to_string()));
                    }
                    Some(Handover::Freeze { .. } | Handover::Thaw) | None => {}
                }
            }
            Step::Handover(Handover::Switch { reply, .. }) => {
                let _ = reply.send(Err("the runner was not frozen".into()));
            }
            Step::Handover(Handover::Thaw) => {}
        }
    }

    /// What the runner has applied of each partition it owns.
    fn owned_positions(&self) -> Positions {
        let mut positions = Positions::new();
        for (topic, table) in &self.tables.0 {
            for partition in table.owned() {
                positions.insert((topic.clone(), partition), table.applied(partition));
            }
        }
        positions
    }

    /// Makes the rebuilt `generation` serve. Each owned partition goes on from where the shadow
    /// has applied it to (`next`): the runner, frozen, applied no further. A held runner's
    /// partitions are sought there and resumed.
    fn switch(&mut self, generation: Generation, next: &Positions) -> Result<(), StoreError> {
        let previous = self.store.activate(generation, P::VERSION)?;
        let held = self.rebuild.held();
        let mut sought = TopicPartitionList::new();
        for (topic, table) in &self.tables.0 {
            for partition in table.owned() {
                let offset = next.get(&(topic.clone(), partition)).copied().unwrap_or(0);
                if offset < table.applied(partition) {
                    // Not expected (the freeze let the shadow pass the runner): the records in
                    // between are read again, and the partition caught up anew.
                    table.assigned(partition, offset);
                    let _ = sought.add_partition_offset(topic, partition, Offset::Offset(offset));
                    continue;
                }
                if held {
                    // Its position is wherever the held records stopped.
                    let _ = sought.add_partition_offset(topic, partition, Offset::Offset(offset));
                }
                // Caught up against the end it had when it was assigned, which the shadow read
                // past.
                table.applied_to(partition, offset);
            }
        }
        if sought.count() > 0
            && let Err(error) = self
                .consumer
                .seek_partitions(sought, self.rebuild.timeout())
        {
            tracing::error!(%error, "could not move partitions to the rebuilt generation");
        }
        if held {
            if let Ok(assignment) = self.consumer.assignment()
                && let Err(error) = self.consumer.resume(&assignment)
            {
                tracing::error!(%error, "could not resume the held partitions");
            }
            self.set_stalled(false);
        }
        tracing::info!(
            projection = P::NAMESPACE,
            generation = generation.number,
            "the rebuilt generation serves"
        );
        self.rebuild.switched(previous);
        if let Some(standby) = self.standby.as_mut() {
            // Its positions were the replaced generation's.
            standby.reset(&self.tables);
        }
        Ok(())
    }

    /// Moves each partition's applied position past records the consumer skipped after the last
    /// event it handed over: every committed transaction ends with a control record, so without
    /// this a partition would always look one record behind its end. Called only between
    /// messages, when everything handed over has been applied.
    fn note_position(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let (Offset::Offset(next), Some(table)) =
                (element.offset(), self.tables.of(element.topic()))
            {
                table.skipped_to(element.partition(), next);
            }
        }
        // Let the group's committed offsets (what lag tooling reads) pass the markers too.
        let mut valid = rdkafka::TopicPartitionList::new();
        for element in positions.elements() {
            if let Offset::Offset(next) = element.offset() {
                let _ = valid.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(next),
                );
            }
        }
        if valid.count() > 0
            && let Err(error) = self.consumer.store_offsets(&valid)
        {
            tracing::debug!(%error, "could not store consumer positions");
        }
    }

    /// Writes the batch, then lets the group's committed offsets follow. False if the store
    /// failed.
    fn write(&self, batch: StoreBatch, messages: &[rdkafka::message::BorrowedMessage<'_>]) -> bool {
        if let Err(error) = self.store.write(batch) {
            tracing::error!(%error, "store write failed; projection stops");
            return false;
        }
        for message in messages {
            let next = message.offset() + 1;
            let Some(table) = self.tables.of(message.topic()) else {
                continue;
            };
            // A record taken again after a rebalance moves nothing back.
            if next <= table.applied(message.partition()) {
                continue;
            }
            table.applied_to(message.partition(), next);
            if let Err(error) = self.consumer.store_offset_from_message(message) {
                // Only affects lag reporting: positions come from the store.
                tracing::debug!(%error, "could not store consumer offset");
            }
        }
        true
    }

    fn set_stalled(&self, stalled: bool) {
        for table in self.tables.all() {
            table.set_stalled(stalled);
        }
    }
}

/// Decodes a record value, retrying while the registry is unreachable (and saying so through
/// `stalled`). None for records that will never decode, or on shutdown.
pub(crate) async fn decode_retrying<E, D: Decoder<E>>(
    decoder: &D,
    topic: &str,
    payload: Option<&[u8]>,
    shutdown: &CancellationToken,
    stalled: impl Fn(bool),
) -> Option<E> {
    let payload = payload?;
    let mut backoff = Duration::from_millis(100);
    let started = std::time::Instant::now();
    loop {
        match decoder.decode(topic, payload).await {
            Ok(event) => {
                stalled(false);
                return Some(event);
            }
            Err(WireError::Registry {
                retriable: true,
                source,
            }) => {
                tracing::warn!(error = %source, "schema registry unavailable; retrying");
                // While stuck, "not found" is no longer trustworthy anywhere here.
                if started.elapsed() > Duration::from_secs(5) {
                    stalled(true);
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                tracing::error!(%error, "record does not decode");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_partition_serves_only_once_owned_and_caught_up_with_its_target() {
        let table = PartitionTable::new(3);
        assert!(!table.joined() && !table.owns(0) && !table.serves(0));
        table.assigned(0, 10);
        table.rebalance_done();
        assert!(table.joined() && table.owns(0));
        assert!(
            !table.serves(0),
            "owned but the end of its log is not known yet"
        );
        assert_eq!(table.needing_target(), [0]);
        table.set_catch_up_target(0, 15);
        assert!(table.needing_target().is_empty());
        table.applied_to(0, 14);
        assert!(!table.serves(0), "one record short of the target");
        table.applied_to(0, 15);
        assert!(table.serves(0));
        // A later target (a second read) does not replace the first.
        table.set_catch_up_target(0, 99);
        assert!(table.serves(0));
        // Stalled (the registry is gone): nothing is caught up, so nothing is "not found".
        table.set_stalled(true);
        assert!(!table.serves(0));
        table.set_stalled(false);
        // Revoked: neither owned nor served; reassigned: caught up again only from scratch.
        table.revoked(0);
        assert!(!table.owns(0) && !table.serves(0));
        table.assigned(0, 15);
        assert!(!table.serves(0));
        table.set_catch_up_target(0, 15);
        assert!(table.serves(0), "already at the target when it is learned");
        assert_eq!(table.rebalances(), 1);
    }

    #[test]
    fn lag_needs_the_end_and_never_goes_below_zero() {
        let table = PartitionTable::new(1);
        table.assigned(0, 5);
        assert_eq!(table.lag(0), None);
        table.stable_end(0, 12, false);
        assert_eq!(table.lag(0), Some(7));
        table.applied_to(0, 13);
        assert_eq!(table.lag(0), Some(0));
        // Statistics for a partition no longer owned are not taken.
        table.revoked(0);
        table.stable_end(0, 100, false);
        assert_eq!(table.lag(0), Some(0));
        assert_eq!(table.lag(7), None, "no such partition");
    }

    #[test]
    fn a_standby_takes_the_end_of_its_partitions_from_its_own_reader_only() {
        let table = PartitionTable::new(2);
        table.assigned(0, 5);
        table.standby_started(1, 3);
        assert!(table.holds_standby(1) && !table.holds_standby(0));
        // The runner's statistics still list partition 1 with an end it saw long ago.
        table.stable_end(1, 4, false);
        assert_eq!(table.lag(1), None, "not the runner's to report");
        table.stable_end(1, 9, true);
        assert_eq!(table.lag(1), Some(6));
        table.stable_end(0, 99, true);
        assert_eq!(table.lag(0), None, "not the standby's to report");
        // Assigned to the runner, it is no longer the standby's.
        table.assigned(1, 9);
        assert!(!table.holds_standby(1) && table.owns(1));
        table.standby_started(0, 0);
        assert!(
            !table.holds_standby(0),
            "an owned partition is never a standby"
        );
    }

    #[test]
    fn skipping_moves_an_owned_partition_forward_only() {
        let table = PartitionTable::new(1);
        table.skipped_to(0, 9);
        assert_eq!(table.applied(0), 0, "not owned: ignored");
        table.assigned(0, 4);
        table.skipped_to(0, 3);
        assert_eq!(table.applied(0), 4, "never backwards");
        table.skipped_to(0, 9);
        assert_eq!(table.applied(0), 9);
    }

    #[tokio::test]
    async fn a_wait_ends_when_its_offset_is_applied() {
        let table = Arc::new(PartitionTable::new(1));
        table.assigned(0, 0);
        let mut wait = Box::pin(table.wait_applied(0, 4));
        assert!(futures::poll!(&mut wait).is_pending());
        table.applied_to(0, 4);
        assert!(
            futures::poll!(&mut wait).is_pending(),
            "offset 4 is applied only at next 5"
        );
        table.applied_to(0, 5);
        assert!(wait.await);
        assert!(!table.wait_applied(9, 0).await, "no such partition");
    }

    #[test]
    fn rebalance_seeding_starts_each_partition_where_its_store_left_off() {
        let dir = tempfile::tempdir().unwrap();
        let namespace = Namespace {
            name: "test",
            version: 1,
        };
        let store = Arc::new(Store::open(dir.path(), &[namespace]).unwrap());
        let mut batch = StoreBatch::new(store.active(namespace));
        batch.set_next_offset("events", 1, 42);
        store.write(batch).unwrap();
        let table = Arc::new(PartitionTable::new(3));
        let context = RebalanceContext::new(
            store,
            namespace,
            Tables::new(vec![("events".into(), Arc::clone(&table))]),
        );
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("events", 0);
        tpl.add_partition("events", 1);
        context.seed_offsets(&mut tpl);
        let offset = |p| tpl.find_partition("events", p).unwrap().offset();
        assert_eq!(
            offset(0),
            Offset::Beginning,
            "never applied: from the beginning"
        );
        assert_eq!(
            offset(1),
            Offset::Offset(42),
            "from the store, not the group"
        );
        assert!(table.owns(0) && table.owns(1) && !table.owns(2));
        assert_eq!((table.applied(0), table.applied(1)), (0, 42));
    }
}

//! Standby replicas: warm copies of partitions other replicas own, so that a query whose owner
//! cannot answer (killed, stopped, restarting) or whose partition is between owners (a
//! rebalance) is still answered, and so that a partition taken over resumes from a store that
//! is nearly caught up instead of from the beginning.
//!
//! Which replica keeps which partition warm is a function of the group's description alone:
//! the members in replica-id order form a ring, and a partition's standbys are the
//! `replicas` members after its owner ([`holders`]). Every replica computes it from the same
//! view, so no assignment of standbys has to be agreed on, and any replica knows where to ask
//! when an owner does not answer.
//!
//! Guarantees, and where they are kept:
//! - A standby applies each event once per store, as an owner does: its reader runs on the
//!   runner's own task, so the runner and the standby never write at the same time, and a
//!   partition is applied by whichever of the two holds it. The rebalance that assigns it to
//!   the runner takes it from the standby (`PartitionTable::assigned`) before the runner reads
//!   its stored offset, and a standby's batch skips every record of a partition it no longer
//!   holds ([`Standby::floor`]).
//! - A takeover is warm: the runner resumes from the offset the standby stored beside the views.
//! - A partition stays warm for [`LINGER`] after this replica stops being its standby or its
//!   owner, so that a rebalance that moves it in several steps (cooperative assignment, a
//!   replica restarting) never leaves it without a warm copy.
//! - A standby never says "not found" unless it has applied everything committed that it knows
//!   of, and always says how far it has applied (`query`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::cluster::Cluster;
use crate::projection::{RebalanceContext, Tables};
use crate::store::{Namespace, Store};
pub use partition_routing::standby::{held_by, holders};

/// How long a partition is kept warm after this replica stops being its standby or its owner.
pub const LINGER: Duration = Duration::from_secs(30);

/// A runner's standby: a reader of the partitions of its topics that this replica keeps warm.
#[allow(missing_debug_implementations)] // the consumer has no Debug
pub struct Standby {
    consumer: StreamConsumer<RebalanceContext>,
    replicas: usize,
    replica_id: String,
    /// Each topic's group view.
    clusters: Vec<(String, Arc<Cluster>)>,
    /// Each partition kept warm, with the time it stops being kept if it is no longer wanted.
    held: BTreeMap<(String, i32), Option<Instant>>,
    /// The partitions the runner owned at the last look: one it loses is kept warm a while.
    owned_before: BTreeSet<(String, i32)>,
}

impl Standby {
    /// A standby keeping `replicas` copies of each partition across the group (this replica
    /// holds its share of them), reading with an assigned read-committed consumer made from
    /// `config`.
    pub fn new(
        config: &ClientConfig,
        context: RebalanceContext,
        replicas: usize,
        replica_id: &str,
        clusters: Vec<(String, Arc<Cluster>)>,
    ) -> Result<Self, KafkaError> {
        let mut config = config.clone();
        // Its positions come from the store: a partition it starts holding is sought there.
        config
            .set("auto.offset.reset", "earliest")
            // The ends of the partitions it holds, for their lag.
            .set("statistics.interval.ms", "1000");
        Ok(Self {
            consumer: config.create_with_context(context)?,
            replicas,
            replica_id: replica_id.to_owned(),
            clusters,
            held: BTreeMap::new(),
            owned_before: BTreeSet::new(),
        })
    }

    pub fn consumer(&self) -> &StreamConsumer<RebalanceContext> {
        &self.consumer
    }

    /// Where a record of the standby's batch is taken from: a partition it holds, past what is
    /// applied; never one it does not hold (the runner took it, or it was let go).
    pub fn floor(tables: &Tables, topic: &str, partition: i32) -> i64 {
        match tables.of(topic) {
            Some(table) if table.holds_standby(partition) => table.applied(partition),
            _ => i64::MAX,
        }
    }

    /// Brings the partitions kept warm in line with the group's view: starts the ones this
    /// replica is now a standby of (from the offsets the store holds), and lets go of the ones
    /// the runner owns and of those no longer wanted for [`LINGER`].
    pub fn reconcile(&mut self, tables: &Tables, store: &Store, namespace: Namespace) {
        let now = Instant::now();
        let (mut start, mut stop) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut owned_now = BTreeSet::new();
        for (topic, cluster) in &self.clusters {
            let Some(table) = tables.of(topic) else {
                continue;
            };
            let view = cluster.view();
            let mine = held_by(&view, table.count(), self.replicas, &self.replica_id);
            for partition in 0..table.count() {
                let key = (topic.clone(), partition);
                if table.owns(partition) {
                    owned_now.insert(key.clone());
                    if self.held.remove(&key).is_some() {
                        // The runner took it over; its records are no longer the standby's.
                        table.standby_stopped(partition);
                        let _ = stop.add_partition(topic, partition);
                    }
                    continue;
                }
                if self.held.contains_key(&key) && !table.holds_standby(partition) {
                    // The runner took it and gave it back between two looks: its records are
                    // skipped, and its reader's position is the old one. Read it again.
                    self.held.remove(&key);
                    let _ = stop.add_partition(topic, partition);
                }
                let wanted = mine.contains(&partition);
                let lost = self.owned_before.contains(&key);
                match self.held.get(&key).copied() {
                    None if wanted || lost => {
                        let next = match store.next_offset(namespace, topic, partition) {
                            Ok(next) => next.unwrap_or(0),
                            Err(error) => {
                                tracing::warn!(%error, topic, partition, "stored offset unreadable; not kept warm");
                                continue;
                            }
                        };
                        let until = (!wanted).then(|| now + LINGER);
                        self.held.insert(key, until);
                        table.standby_started(partition, next);
                        let _ = start.add_partition_offset(topic, partition, Offset::Offset(next));
                    }
                    None => {}
                    Some(_) if wanted => {
                        self.held.insert(key, None);
                    }
                    Some(None) => {
                        self.held.insert(key, Some(now + LINGER));
                    }
                    Some(Some(until)) if until <= now => {
                        self.held.remove(&key);
                        table.standby_stopped(partition);
                        let _ = stop.add_partition(topic, partition);
                    }
                    Some(Some(_)) => {}
                }
            }
        }
        self.owned_before = owned_now;
        if stop.count() > 0 {
            tracing::info!(partitions = ?names(&stop), "no longer kept warm");
            if let Err(error) = self.consumer.incremental_unassign(&stop) {
                // The reader's assignment and `held` disagree: start over on the next look.
                tracing::warn!(%error, "could not stop reading standby partitions; starting over");
                self.reset(tables);
                return;
            }
        }
        if start.count() > 0 {
            tracing::info!(partitions = ?names(&start), "kept warm as a standby");
            if let Err(error) = self.consumer.incremental_assign(&start) {
                tracing::warn!(%error, "could not start reading standby partitions; starting over");
                self.reset(tables);
            }
        }
    }

    /// Lets go of every partition (a rebuilt generation now serves, whose offsets differ); the
    /// next [`Standby::reconcile`] starts them again from the new generation.
    pub fn reset(&mut self, tables: &Tables) {
        for (topic, partition) in std::mem::take(&mut self.held).into_keys() {
            if let Some(table) = tables.of(&topic) {
                table.standby_stopped(partition);
            }
        }
        if let Err(error) = self.consumer.unassign() {
            tracing::warn!(%error, "could not stop reading standby partitions");
        }
    }

    /// Moves each held partition's applied position past records the reader skipped after the
    /// last one it handed over (transaction markers), as the runner does for its own.
    pub fn note_position(&self, tables: &Tables) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let (Offset::Offset(next), Some(table)) =
                (element.offset(), tables.of(element.topic()))
                && table.holds_standby(element.partition())
            {
                table.skipped_to(element.partition(), next);
            }
        }
    }

    /// Records that a batch of the standby was written: each held partition is applied past it.
    pub fn written(tables: &Tables, messages: &[BorrowedMessage<'_>]) {
        for message in messages {
            if let Some(table) = tables.of(message.topic())
                && table.holds_standby(message.partition())
                && message.offset() + 1 > table.applied(message.partition())
            {
                table.applied_to(message.partition(), message.offset() + 1);
            }
        }
    }
}

fn names(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

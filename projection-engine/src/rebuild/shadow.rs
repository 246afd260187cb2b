//! The shadow: a projection rebuilt from the beginning of its topics into a new generation,
//! then handed over to the runner (see the [module above](super)).
//!
//! Readers, one per core at most, each read their share of the partitions (partitions are
//! independent: each replica applies only those it owns) with a consumer of their own, on
//! threads at the lowest priority, and publish how far each partition is written. A
//! coordinator watches those positions, and freezes and switches the runner; the readers have
//! all stopped before the runner writes to the generation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use shared_events::view::ReadModel;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{FREEZE_LIMIT, Handover, Positions, Rebuilds};
use crate::opening::{MakeDecoder, OpenError, ProjectionThread, assigned_reader};
use crate::pace::pace;
use crate::projection::{Applier, Decoder, ProjectionStats, ready_up_to};
use crate::store::{Generation, Store, StoreError};

/// Records per store write: the shadow serves no reads while it builds, so it trades latency
/// for fewer, larger writes.
const BATCH: usize = 4_096;

/// Handovers tried before the rebuild gives up: each failed one means the runner applied more
/// than the shadow could read within a freeze.
const MAX_HANDOVERS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the runner did not take the handover: {0}")]
    Handover(String),
    #[error("the runner kept ahead of the shadow for {0} handovers")]
    NoHandover(u32),
    #[error("stopped")]
    Stopped,
}

/// One rebuild's shadow.
pub(crate) struct Shadow<P, D> {
    pub(crate) model: P,
    pub(crate) decoder: MakeDecoder<D>,
    pub(crate) store: Arc<Store>,
    pub(crate) generation: Generation,
    pub(crate) consumer: ClientConfig,
    pub(crate) group: String,
    pub(crate) topics: Vec<(String, i32)>,
    pub(crate) max_events_per_second: Option<u64>,
    pub(crate) kafka_timeout: Duration,
    pub(crate) handover: mpsc::Sender<Handover>,
    pub(crate) rebuilds: Arc<Rebuilds>,
}

/// Where the shadow is in its rebuild.
enum Phase {
    /// Reading towards the end of the log it saw.
    Catching { end: Positions },
    /// The runner is frozen; reading up to where it applied each partition it owns.
    Closing { owned: Positions, until: Instant },
}

/// What the readers share with the shadow's coordinator.
#[derive(Default)]
struct Shared {
    /// Each partition's next offset: everything before it is written to the generation.
    positions: std::sync::Mutex<Positions>,
    stats: ProjectionStats,
    /// The first reader failure, which stopped the others.
    failed: std::sync::Mutex<Option<ShadowError>>,
}

impl Shared {
    fn positions(&self) -> Positions {
        self.positions.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// One reader: its share of the partitions, read into the generation.
struct Reader<P, D> {
    model: P,
    decoder: MakeDecoder<D>,
    store: Arc<Store>,
    generation: Generation,
    consumer: ClientConfig,
    partitions: Vec<(String, i32)>,
    max_events_per_second: Option<u64>,
    shared: Arc<Shared>,
}

impl<P: ReadModel + Clone, D: Decoder<P::Event>> Reader<P, D> {
    /// Reads until `stop`; every batch it took is written when it returns.
    async fn run(self, stop: CancellationToken) -> Result<(), ShadowError> {
        let decoder = (self.decoder)()?;
        let consumer: StreamConsumer = self.consumer.create()?;
        let mut assignment = TopicPartitionList::new();
        for (topic, partition) in &self.partitions {
            assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        // Each of its partitions and how far it is written; a handful, searched in place.
        let mut next: Vec<(String, i32, i64)> = self
            .partitions
            .iter()
            .map(|(t, p)| (t.clone(), *p, 0))
            .collect();
        let at = |next: &[(String, i32, i64)], topic: &str, partition: i32| {
            next.iter()
                .position(|(t, p, _)| *p == partition && t == topic)
        };
        let applier = Applier {
            projection: &self.model,
            decoder: &decoder,
            store: &self.store,
            stats: &self.shared.stats,
        };
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let messages = ready_up_to(&consumer, message, BATCH).await;
                        let batch = {
                            let floor = |topic: &str, partition| {
                                next.iter()
                                    .find(|(t, p, _)| *p == partition && t == topic)
                                    .map_or(0, |(_, _, n)| *n)
                            };
                            applier
                                .stage(self.generation, &messages, floor, |_| {}, &stop)
                                .await
                        };
                        // Stopped while the registry was away: nothing of the batch counts.
                        let Some(batch) = batch else { return Ok(()) };
                        self.store.write_unlogged(batch)?;
                        for message in &messages {
                            if let Some(i) = at(&next, message.topic(), message.partition()) {
                                next[i].2 = next[i].2.max(message.offset() + 1);
                            }
                        }
                        // The limit is the rebuild's: each reader paces the whole against it.
                        let applied = self.shared.stats.applied.get();
                        pace(started, applied, self.max_events_per_second, &stop).await;
                    }
                    // The broker away for a while: the consumer reconnects by itself.
                    Err(error) => tracing::warn!(%error, "rebuild: consumer error"),
                },
                _ = tick.tick() => {}
            }
            // Past transaction markers and aborted records, which are never handed over.
            for element in consumer.position()?.elements() {
                if let (Offset::Offset(position), Some(i)) = (
                    element.offset(),
                    at(&next, element.topic(), element.partition()),
                ) {
                    next[i].2 = next[i].2.max(position);
                }
            }
            if let Ok(mut positions) = self.shared.positions.lock() {
                for (topic, partition, offset) in &next {
                    let entry = positions.entry((topic.clone(), *partition)).or_insert(0);
                    *entry = (*entry).max(*offset);
                }
            }
        }
    }
}

impl<P: ReadModel + Clone, D: Decoder<P::Event>> Shadow<P, D> {
    /// The coordinator: starts the readers, watches their positions, hands over.
    async fn run(self, cancel: CancellationToken) -> Result<(), ShadowError> {
        let consumer = assigned_reader(&self.consumer, &self.group)
            // Retention may have moved the beginning: the earliest offset there is.
            .set("auto.offset.reset", "earliest")
            .clone();
        let probe: BaseConsumer = consumer.create()?;
        let (low, end) = self.watermarks(&probe)?;
        let start: i64 = low.values().sum();
        let shared = Arc::new(Shared::default());
        if let Ok(mut positions) = shared.positions.lock() {
            *positions = low;
        }
        let stop = cancel.child_token();
        let readers = self.readers(&consumer, &shared, &stop)?;
        let outcome = self
            .coordinate(&probe, &shared, &readers, &stop, start, end)
            .await;
        stop.cancel();
        for mut reader in readers {
            reader.join();
        }
        // A reader's failure is what stopped the others.
        if let Some(error) = shared.failed.lock().ok().and_then(|mut f| f.take()) {
            return Err(error);
        }
        outcome?;
        // Every reader has stopped, a batch it took since the last look written: what the
        // generation holds now, not what it held then, is where the runner goes on from.
        self.switch(shared.positions()).await
    }

    /// Starts a reader per core (at most one per partition), each with every `n`th
    /// partition of every topic: partitions are independent, so any split is.
    fn readers(
        &self,
        consumer: &ClientConfig,
        shared: &Arc<Shared>,
        stop: &CancellationToken,
    ) -> Result<Vec<ProjectionThread>, ShadowError> {
        let most = self
            .topics
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(1)
            .max(1);
        let count = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .clamp(1, usize::try_from(most).unwrap_or(1));
        let mut threads = Vec::new();
        for index in 0..count {
            let partitions: Vec<(String, i32)> = self
                .topics
                .iter()
                .flat_map(|(topic, n)| (0..*n).map(move |p| (topic.clone(), p)))
                .filter(|(_, p)| usize::try_from(*p).unwrap_or(0) % count == index)
                .collect();
            let reader = Reader {
                model: self.model.clone(),
                decoder: Arc::clone(&self.decoder),
                store: Arc::clone(&self.store),
                generation: self.generation,
                consumer: consumer.clone(),
                partitions,
                max_events_per_second: self.max_events_per_second,
                shared: Arc::clone(shared),
            };
            let shared = Arc::clone(shared);
            let thread = ProjectionThread::spawn_named(
                format!("rebuild-{}-{index}", self.generation.name),
                self.generation.name,
                stop.clone(),
                async move |stop| {
                    crate::priority::lowest();
                    if let Err(error) = reader.run(stop.clone()).await {
                        if let Ok(mut failed) = shared.failed.lock() {
                            failed.get_or_insert(error);
                        }
                        // A reader that fails stops the others: the rebuild cannot finish.
                        stop.cancel();
                    }
                },
            )?;
            threads.push(thread);
        }
        Ok(threads)
    }

    /// Watches the readers until the runner is frozen and the generation holds all it had
    /// applied.
    async fn coordinate(
        &self,
        probe: &BaseConsumer,
        shared: &Shared,
        readers: &[ProjectionThread],
        stop: &CancellationToken,
        start: i64,
        end: Positions,
    ) -> Result<(), ShadowError> {
        let mut phase = Phase::Catching { end };
        let started = Instant::now();
        let mut retried = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Err(ShadowError::Stopped),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if readers.iter().any(ProjectionThread::is_finished) {
                return Err(ShadowError::Stopped);
            }
            let next = shared.positions();
            let read: i64 = next.values().sum::<i64>() - start;
            phase = match phase {
                Phase::Catching { end } if reached(&next, &end) => {
                    let owned = self.freeze().await?;
                    Phase::Closing {
                        owned,
                        until: Instant::now() + FREEZE_LIMIT / 2,
                    }
                }
                Phase::Closing { owned, .. } if reached(&next, &owned) => return Ok(()),
                Phase::Closing { until, .. } if Instant::now() >= until => {
                    retried += 1;
                    self.rebuilds.update(|s| s.handovers_retried = retried);
                    let _ = self.handover.send(Handover::Thaw).await;
                    if retried >= MAX_HANDOVERS {
                        return Err(ShadowError::NoHandover(retried));
                    }
                    let (_, end) = self.watermarks(probe)?;
                    Phase::Catching { end }
                }
                unchanged => unchanged,
            };
            let total = match &phase {
                Phase::Catching { end } => end.values().sum::<i64>() - start,
                Phase::Closing { .. } => read,
            };
            let applied = shared.stats.applied.get();
            self.rebuilds.update(|status| {
                status.events_applied = applied;
                status.offsets_read = read;
                status.offsets_total = total.max(read);
                #[allow(clippy::cast_precision_loss)]
                {
                    status.percent = if total > 0 {
                        (read as f64 * 100.0 / total as f64).min(100.0)
                    } else {
                        100.0
                    };
                    status.events_per_second =
                        applied as f64 / started.elapsed().as_secs_f64().max(1e-3);
                }
            });
        }
    }

    /// Each partition's first offset, and its end (high watermark) now.
    fn watermarks(&self, consumer: &BaseConsumer) -> Result<(Positions, Positions), ShadowError> {
        let (mut low, mut high) = (Positions::new(), Positions::new());
        for (topic, partitions) in &self.topics {
            for partition in 0..*partitions {
                let (first, end) =
                    consumer.fetch_watermarks(topic, partition, self.kafka_timeout)?;
                low.insert((topic.clone(), partition), first);
                high.insert((topic.clone(), partition), end);
            }
        }
        Ok((low, high))
    }

    /// Freezes the runner; where it has applied each partition it owns.
    async fn freeze(&self) -> Result<Positions, ShadowError> {
        let (reply, answer) = oneshot::channel();
        self.handover
            .send(Handover::Freeze { reply })
            .await
            .map_err(|_| ShadowError::Handover("the runner has stopped".into()))?;
        match tokio::time::timeout(FREEZE_LIMIT, answer).await {
            Ok(Ok(owned)) => Ok(owned),
            _ => Err(ShadowError::Handover("no answer to the freeze".into())),
        }
    }

    async fn switch(&self, next: Positions) -> Result<(), ShadowError> {
        // Written without the write-ahead log: on disk before it can become the one that serves.
        self.store.flush(self.generation)?;
        let (reply, answer) = oneshot::channel();
        self.handover
            .send(Handover::Switch {
                generation: self.generation,
                next,
                reply,
            })
            .await
            .map_err(|_| ShadowError::Handover("the runner has stopped".into()))?;
        match tokio::time::timeout(FREEZE_LIMIT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(ShadowError::Handover(error)),
            _ => Err(ShadowError::Handover("no answer to the switch".into())),
        }
    }
}

/// Whether every partition of `goal` is reached.
fn reached(next: &Positions, goal: &Positions) -> bool {
    goal.iter()
        .all(|(partition, goal)| next.get(partition).copied().unwrap_or(0) >= *goal)
}

/// Starts `shadow` on a thread of its own. Dropped (its runner stops), the thread stops the
/// shadow and waits for it, so that the store is not held open past the replica.
pub(crate) fn spawn<P: ReadModel + Clone, D: Decoder<P::Event>>(
    shadow: Shadow<P, D>,
) -> Result<ProjectionThread, OpenError> {
    let (name, cancel) = (shadow.generation.name, CancellationToken::new());
    ProjectionThread::spawn_named(
        format!("rebuild-{name}"),
        name,
        cancel,
        async move |token| {
            crate::priority::lowest();
            let (rebuilds, store, generation) = (
                Arc::clone(&shadow.rebuilds),
                Arc::clone(&shadow.store),
                shadow.generation,
            );
            let outcome = shadow.run(token).await;
            if let Err(error) = &outcome {
                tracing::error!(%error, projection = generation.name, "the rebuild failed; the old generation keeps serving");
                if let Err(error) = store.discard(generation) {
                    tracing::warn!(%error, "could not drop a failed rebuild's generation");
                }
            }
            rebuilds.finish(outcome.map_err(|e| e.to_string()));
        },
    )
}

//! The shadow: a projection rebuilt from the beginning of its topics into a new generation, on
//! a thread of its own at the lowest priority, then handed over to the runner (see the
//! [module above](super)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use shared_events::view::ReadModel;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{FREEZE_LIMIT, Handover, Positions, Rebuilds};
use crate::opening::{MakeDecoder, OpenError};
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

impl<P: ReadModel + Clone, D: Decoder<P::Event>> Shadow<P, D> {
    async fn run(self, cancel: CancellationToken) -> Result<(), ShadowError> {
        let decoder = (self.decoder)()?;
        let consumer: StreamConsumer = self
            .consumer
            .clone()
            .set("group.id", &self.group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Retention may have moved the beginning: the earliest offset there is.
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for (topic, partitions) in &self.topics {
            for partition in 0..*partitions {
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment)?;
        let (mut next, end) = self.watermarks(&consumer)?;
        let start: i64 = next.values().sum();
        let mut phase = Phase::Catching { end };
        let stats = ProjectionStats::default();
        let applier = Applier {
            projection: &self.model,
            decoder: &decoder,
            store: &self.store,
            stats: &stats,
        };
        let started = Instant::now();
        let mut retried = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Err(ShadowError::Stopped),
                _ = tick.tick() => {}
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let messages = ready_up_to(&consumer, message, BATCH).await;
                        let floor = |topic: &str, partition| {
                            next.get(&(topic.to_owned(), partition)).copied().unwrap_or(0)
                        };
                        let batch = applier
                            .stage(self.generation, &messages, floor, |_| {}, &cancel)
                            .await
                            .ok_or(ShadowError::Stopped)?;
                        self.store.write_unlogged(batch)?;
                        for message in &messages {
                            let key = (message.topic().to_owned(), message.partition());
                            let at = next.entry(key).or_insert(0);
                            *at = (*at).max(message.offset() + 1);
                        }
                        if matches!(phase, Phase::Catching { .. }) {
                            self.throttle(started, stats.applied.get(), &cancel).await?;
                        }
                    }
                    // The broker away for a while: the consumer reconnects by itself.
                    Err(error) => tracing::warn!(%error, "rebuild: consumer error"),
                },
            }
            // Past transaction markers and aborted records, which are never handed over.
            for element in consumer.position()?.elements() {
                if let Offset::Offset(position) = element.offset() {
                    let at = next
                        .entry((element.topic().to_owned(), element.partition()))
                        .or_insert(0);
                    *at = (*at).max(position);
                }
            }
            let read: i64 = next.values().sum::<i64>() - start;
            phase = match phase {
                Phase::Catching { end } if reached(&next, &end) => {
                    let owned = self.freeze().await?;
                    Phase::Closing {
                        owned,
                        until: Instant::now() + FREEZE_LIMIT / 2,
                    }
                }
                Phase::Closing { owned, .. } if reached(&next, &owned) => {
                    return self.switch(next).await;
                }
                Phase::Closing { until, .. } if Instant::now() >= until => {
                    retried += 1;
                    self.rebuilds.update(|s| s.handovers_retried = retried);
                    let _ = self.handover.send(Handover::Thaw).await;
                    if retried >= MAX_HANDOVERS {
                        return Err(ShadowError::NoHandover(retried));
                    }
                    let (_, end) = self.watermarks(&consumer)?;
                    Phase::Catching { end }
                }
                unchanged => unchanged,
            };
            let total = match &phase {
                Phase::Catching { end } => end.values().sum::<i64>() - start,
                Phase::Closing { .. } => read,
            };
            let applied = stats.applied.get();
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
    fn watermarks(&self, consumer: &StreamConsumer) -> Result<(Positions, Positions), ShadowError> {
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

    /// Holds the shadow to its events/s limit, if it has one.
    async fn throttle(
        &self,
        started: Instant,
        applied: u64,
        cancel: &CancellationToken,
    ) -> Result<(), ShadowError> {
        let Some(limit) = self.max_events_per_second.filter(|l| *l > 0) else {
            return Ok(());
        };
        #[allow(clippy::cast_precision_loss)]
        let due = started + Duration::from_secs_f64(applied as f64 / limit as f64);
        tokio::select! {
            () = cancel.cancelled() => Err(ShadowError::Stopped),
            () = tokio::time::sleep_until(due.into()) => Ok(()),
        }
    }
}

/// Whether every partition of `goal` is reached.
fn reached(next: &Positions, goal: &Positions) -> bool {
    goal.iter()
        .all(|(partition, goal)| next.get(partition).copied().unwrap_or(0) >= *goal)
}

/// The shadow's thread. Dropped (its runner stops), it stops the shadow and waits for it, so
/// that the store is not held open past the replica.
#[derive(Debug)]
pub struct ShadowThread {
    cancel: CancellationToken,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ShadowThread {
    pub(crate) fn spawn<P: ReadModel + Clone, D: Decoder<P::Event>>(
        shadow: Shadow<P, D>,
    ) -> Result<Self, std::io::Error> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = std::thread::Builder::new()
            .name(format!("rebuild-{}", shadow.generation.name))
            .spawn(move || {
                crate::priority::lowest();
                let (rebuilds, store, generation) = (
                    Arc::clone(&shadow.rebuilds),
                    Arc::clone(&shadow.store),
                    shadow.generation,
                );
                let outcome = runtime.block_on(shadow.run(token));
                runtime.shutdown_background();
                if let Err(error) = &outcome {
                    tracing::error!(%error, projection = generation.name, "the rebuild failed; the old generation keeps serving");
                    if let Err(error) = store.discard(generation) {
                        tracing::warn!(%error, "could not drop a failed rebuild's generation");
                    }
                }
                rebuilds.finish(outcome.map_err(|e| e.to_string()));
            })?;
        Ok(Self {
            cancel,
            handle: Some(handle),
        })
    }

    pub fn is_finished(&self) -> bool {
        self.handle
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    pub fn join(&mut self) {
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("the rebuild thread panicked");
        }
    }
}

impl Drop for ShadowThread {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.join();
    }
}

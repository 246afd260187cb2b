//! The tail: every partition of a timeline's topics, read once per replica, each event placed
//! into its streams, stored under each with the offset it came from, then offered to the hub.
//!
//! - Read-committed: only committed events are stored or sent.
//! - Exactly once per replica: the stored entries and the partition's next offset are one
//!   RocksDB batch, and each partition resumes from the offset its store holds. An event is
//!   offered to the hub only after its batch is written, so a stream that subscribed before it
//!   reads its history finds every event either in the store or in its buffer.
//! - Assigned, not subscribed: every replica reads every partition (a stream may be opened on
//!   any replica), and no group rebalances it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use shared_events::live::{StreamKey, StreamSpec, Timeline};
use shared_events::view::Changes;
use tokio_util::sync::CancellationToken;

use super::hub::{Delivery, Hub};
use super::resume::{At, Span};
use crate::metrics::Metrics;
use crate::opening::{Environment, MakeDecoder, OpenError, wait_for_topics};
use crate::projection::{
    Decoder, PartitionTable, RebalanceContext, Tables, decode_retrying, ready_batch,
};
use crate::store::{EventChanges, Namespace, Staging, Store};

/// One tailed topic: its name and what this replica has applied of each partition.
#[derive(Debug)]
pub struct TailedTopic {
    pub name: String,
    pub table: Arc<PartitionTable>,
}

/// What the tail and the stream routes share.
#[derive(Debug)]
pub struct Live {
    pub hub: Arc<Hub>,
    pub store: Arc<Store>,
    pub namespace: Namespace,
    /// The timeline's topics by role, in its order: a resume id names a topic by its index.
    pub roles: &'static [&'static str],
    pub streams: &'static [StreamSpec],
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: every stream ends with a `retry:` hint.
    pub shutdown: CancellationToken,
    /// Cancelled when the tail stops (its store failed, or shutdown): open streams end with
    /// their resume id, and new ones are refused, rather than wait for events that will not
    /// come.
    pub stopped: CancellationToken,
    pub(crate) open: std::sync::atomic::AtomicUsize,
    topics: OnceLock<Vec<TailedTopic>>,
}

/// The bounds of the live streams.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Streams open at once on this replica; beyond, `503` with `Retry-After`.
    pub max_streams: usize,
    /// Events buffered per stream; a client further behind is cut off with its resume id.
    pub buffer: usize,
    /// A comment line is sent on a stream that has been quiet this long.
    pub heartbeat: Duration,
    /// The `retry:` hint sent when a stream is closed by the server.
    pub retry: Duration,
}

impl Live {
    /// What readiness reports of the tail (it does not hold readiness back: a stream opened
    /// while the tail catches up still gets every event, later).
    pub fn status(&self) -> serde_json::Value {
        let Some(topics) = self.topics() else {
            return "not started".into();
        };
        let lag: i64 = topics
            .iter()
            .flat_map(|t| (0..t.table.count()).map(|p| t.table.lag(p).unwrap_or(0)))
            .sum();
        serde_json::json!({
            "running": !self.stopped.is_cancelled(),
            "lag": lag,
            "streams": self.open.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The live state of timeline `T`.
    pub fn new<T: Timeline>(
        store: Arc<Store>,
        limits: Limits,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            hub: Arc::new(Hub::new(limits.buffer)),
            store,
            namespace: namespace::<T>(),
            roles: T::TOPICS,
            streams: T::STREAMS,
            limits,
            metrics,
            shutdown,
            stopped: CancellationToken::new(),
            open: std::sync::atomic::AtomicUsize::new(0),
            topics: OnceLock::new(),
        }
    }

    /// The tailed topics, once the tail has started.
    pub fn topics(&self) -> Option<&[TailedTopic]> {
        self.topics.get().map(Vec::as_slice)
    }

    /// The partitions the events of stream kind `spec`, for `id`, come from; none until the
    /// tail has started, or once it has stopped.
    pub fn span(&self, spec: &StreamSpec, id: &str) -> Option<Span> {
        if self.stopped.is_cancelled() {
            return None;
        }
        let topics = self.topics()?;
        let index = |role: &str| self.roles.iter().position(|r| *r == role);
        let keyed = index(spec.keyed_on)?;
        let count = topics.get(keyed)?.table.count();
        let mut partitions = vec![(
            u8::try_from(keyed).ok()?,
            shared_events::partitioner::partition_for_key(id.as_bytes(), count),
        )];
        for role in spec.spans {
            let spanned = index(role)?;
            let tag = u8::try_from(spanned).ok()?;
            partitions.extend((0..topics.get(spanned)?.table.count()).map(|p| (tag, p)));
        }
        Some(Span::new(partitions))
    }

    /// Where "now" is in a partition: the end of its committed data as last reported, or
    /// what this replica has applied if that is further. A replica still catching up does not
    /// send a stream that starts now what the log held before.
    pub fn now(&self, topic: u8, partition: i32) -> i64 {
        self.topics()
            .and_then(|topics| topics.get(usize::from(topic)))
            .map_or(0, |t| {
                let applied = t.table.applied(partition);
                applied + t.table.lag(partition).unwrap_or(0)
            })
    }
}

/// Where the timeline lives in the store.
pub fn namespace<T: Timeline>() -> Namespace {
    Namespace {
        name: T::NAMESPACE,
        version: T::VERSION,
    }
}

/// The prefix of a stream's entries of one partition. Entries begin with the stream's
/// collection and a NUL, which keeps them apart from whatever the timeline itself stores.
pub(crate) fn partition_prefix(key: &StreamKey, topic: u8, partition: i32) -> String {
    format!("{}\0{}\0{topic:02x}{partition:08x}", key.collection, key.id)
}

/// The key of a stream's entry: its partition's prefix, then the offset (fixed-width hex, so
/// byte order is offset order).
pub(crate) fn entry_key(key: &StreamKey, at: At) -> String {
    format!(
        "{}{:016x}",
        partition_prefix(key, at.topic, at.partition),
        at.offset
    )
}

/// An entry as stored: `<event type>\n<timestamp ms>\n<data>`.
pub(crate) fn entry_value(event_type: &str, timestamp_ms: i64, data: &str) -> Vec<u8> {
    format!("{event_type}\n{timestamp_ms}\n{data}").into_bytes()
}

/// Reads an entry back; none if it is not one.
pub(crate) fn parse_entry(at: At, value: &[u8]) -> Option<Delivery> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.splitn(3, '\n');
    let (event_type, timestamp, data) = (parts.next()?, parts.next()?, parts.next()?);
    Some(Delivery {
        at,
        timestamp_ms: timestamp.parse().ok()?,
        event_type: event_type.to_owned(),
        data: data.to_owned(),
    })
}

/// The offset of an entry key.
pub(crate) fn offset_of(key: &[u8]) -> Option<i64> {
    let hex = key.get(key.len().checked_sub(16)?..)?;
    i64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The tail of timeline `T` on this replica.
pub struct Tail<T: Timeline, D> {
    pub timeline: T,
    /// `(role, topic)` for each of [`Timeline::TOPICS`], in that order.
    pub topics: Vec<(&'static str, String)>,
    /// Makes the decoder of the topics' records, once they exist.
    pub decoder: MakeDecoder<D>,
    pub environment: Environment,
    pub live: Arc<Live>,
}

impl<T: Timeline, D> std::fmt::Debug for Tail<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("timeline", &T::NAMESPACE)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl<T: Timeline, D: Decoder<T::Event>> Tail<T, D> {
    /// Waits for the topics, then tails them until `shutdown`; a start that fails is retried.
    /// When it ends, for whatever reason, the streams are told ([`Live::stopped`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let _stopped = self.live.stopped.clone().drop_guard();
        let env = &self.environment;
        let Some(partitions) = wait_for_topics(env, &self.topics, T::NAMESPACE, &shutdown).await
        else {
            return;
        };
        loop {
            match self.tail(&partitions, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, timeline = T::NAMESPACE, "the live tail could not start; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn tail(
        &self,
        partitions: &[i32],
        shutdown: &CancellationToken,
    ) -> Result<(), OpenError> {
        let live = &self.live;
        let tables: Vec<(String, Arc<PartitionTable>)> = self
            .topics
            .iter()
            .zip(partitions)
            .map(|((_, topic), count)| (topic.clone(), Arc::new(PartitionTable::new(*count))))
            .collect();
        let context = RebalanceContext::new(
            Arc::clone(&live.store),
            live.namespace,
            Tables::new(tables.clone()),
        );
        let consumer: StreamConsumer<RebalanceContext> = self
            .environment
            .consumer
            .clone()
            .set("isolation.level", "read_committed")
            // librdkafka assigns only with a group id; the tail never joins it (no subscribe)
            // and never commits to it, so every replica may name the same one.
            .set("group.id", format!("{}-tail", T::NAMESPACE))
            // A stored offset the log no longer has (retention, a recreated topic) restarts
            // the partition from what the log still holds, never from its end.
            .set("auto.offset.reset", "earliest")
            // Positions are the store's; nothing is committed to Kafka.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)?;
        let mut assignment = TopicPartitionList::new();
        for (topic, table) in &tables {
            for partition in 0..table.count() {
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
            }
        }
        // Each partition from the offset the store holds, as a projection resumes.
        consumer.context().seed_offsets(&mut assignment);
        consumer.assign(&assignment)?;
        for (_, table) in &tables {
            table.rebalance_done();
        }
        let decoder = (self.decoder)()?;
        let opened: Vec<TailedTopic> = tables
            .iter()
            .map(|(name, table)| TailedTopic {
                name: name.clone(),
                table: Arc::clone(table),
            })
            .collect();
        if live.topics.set(opened).is_err() {
            tracing::error!("the live tail started twice");
        }
        tracing::info!(timeline = T::NAMESPACE, "live tail started");
        let mut idle = tokio::time::interval(Duration::from_millis(250));
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = idle.tick() => {
                    note_position(&consumer, &tables);
                    continue;
                }
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "live tail: consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let messages = ready_batch(&consumer, message).await;
            if !self.apply(&messages, &decoder, &tables, shutdown).await {
                break;
            }
        }
        tracing::info!(timeline = T::NAMESPACE, "live tail stopped");
        Ok(())
    }

    /// Stores the records' entries and offsets in one batch, then offers their events to the
    /// hub, in order. False if the tail must stop (the store failed, or shutdown came first;
    /// then nothing of the batch is written).
    async fn apply(
        &self,
        messages: &[BorrowedMessage<'_>],
        decoder: &D,
        tables: &[(String, Arc<PartitionTable>)],
        shutdown: &CancellationToken,
    ) -> bool {
        let live = &self.live;
        let mut staging = Staging::new(&live.store, live.store.active(live.namespace));
        let mut placed: Vec<(Vec<StreamKey>, Delivery)> = Vec::new();
        for message in messages {
            let Some(index) = tables.iter().position(|(t, _)| t == message.topic()) else {
                continue;
            };
            let at = At {
                topic: u8::try_from(index).unwrap_or(u8::MAX),
                partition: message.partition(),
                offset: message.offset(),
            };
            let table = &tables[index].1;
            let decoded = decode_retrying(
                decoder,
                message.topic(),
                message.payload(),
                shutdown,
                |stalled| table.set_stalled(stalled),
            )
            .await;
            match decoded {
                Some(event) => {
                    let mut changes = EventChanges::default();
                    match self.timeline.place(&staging, &mut changes, &event) {
                        Ok(Some(event)) => {
                            let data = serde_json::Value::Object(event.data).to_string();
                            let timestamp_ms = message.timestamp().to_millis().unwrap_or(0);
                            let value = entry_value(event.event_type, timestamp_ms, &data);
                            for stream in &event.streams {
                                let key = entry_key(stream, at);
                                changes.index(key.clone().into_bytes());
                                changes.put(&key, value.clone());
                            }
                            staging.absorb(changes);
                            live.metrics.live.tailed.inc();
                            placed.push((
                                event.streams,
                                Delivery {
                                    at,
                                    timestamp_ms,
                                    event_type: event.event_type.to_owned(),
                                    data,
                                },
                            ));
                        }
                        Ok(None) => staging.absorb(changes),
                        Err(error) => {
                            tracing::error!(%error, "live tail: store read failed; the tail stops");
                            return false;
                        }
                    }
                }
                None if shutdown.is_cancelled() => return false,
                None => {
                    live.metrics.live.undecodable.inc();
                    tracing::error!(
                        partition = at.partition,
                        offset = at.offset,
                        "live tail: skipping undecodable record"
                    );
                }
            }
            staging.set_next_offset(message.topic(), at.partition, at.offset + 1);
        }
        if let Err(error) = live.store.write(staging.into_batch()) {
            tracing::error!(%error, "live tail: store write failed; the tail stops");
            return false;
        }
        for message in messages {
            if let Some((_, table)) = tables.iter().find(|(t, _)| t == message.topic()) {
                table.applied_to(message.partition(), message.offset() + 1);
            }
        }
        // Only now, written: a stream that reads its history after subscribing misses nothing.
        for (streams, delivery) in placed {
            let published = live.hub.publish(&streams, &Arc::new(delivery));
            live.metrics
                .live
                .slow_disconnects
                .inc_by(u64::try_from(published.overflowed).unwrap_or(0));
        }
        true
    }
}

/// Moves each partition's applied position past the transaction markers the consumer skipped.
fn note_position(
    consumer: &StreamConsumer<RebalanceContext>,
    tables: &[(String, Arc<PartitionTable>)],
) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for element in positions.elements() {
        if let (Offset::Offset(next), Some((_, table))) = (
            element.offset(),
            tables.iter().find(|(t, _)| t == element.topic()),
        ) {
            table.skipped_to(element.partition(), next);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn entries_keep_their_position_and_content() {
        let key = StreamKey {
            collection: "orders",
            id: "o-1".into(),
        };
        let at = At {
            topic: 1,
            partition: 3,
            offset: 258,
        };
        let entry = entry_key(&key, at);
        assert!(entry.starts_with(&partition_prefix(&key, 1, 3)));
        assert_eq!(offset_of(entry.as_bytes()), Some(258));
        let earlier = entry_key(&key, At { offset: 17, ..at });
        assert!(earlier < entry, "byte order is offset order");
        let value = entry_value("OrderPaid", 99, r#"{"a":"x\ny"}"#);
        let delivery = parse_entry(at, &value).unwrap();
        assert_eq!(delivery.event_type, "OrderPaid");
        assert_eq!(delivery.timestamp_ms, 99);
        assert_eq!(delivery.data, r#"{"a":"x\ny"}"#);
    }
}

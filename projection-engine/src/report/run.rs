//! Reading a report's range and folding it: an assigned, read-committed consumer (never a
//! member of any group, so no replica's partitions move), each partition from its start to
//! its end and not one record further.
//!
//! - Exactly the range: records at or past a partition's end are dropped and the partition
//!   paused; a partition is done when the consumer's position reaches its end, which also
//!   counts the transaction markers and aborted records the consumer skips without handing
//!   them over.
//! - Progress counts log positions passed, so it reaches the total exactly when every
//!   partition is done, and never moves back.
//! - Cancellation is checked between batches and while waiting: a cancelled run stops within
//!   one batch.
//! - A range the log no longer holds whole (retention removed its start) fails the run rather
//!   than give a different answer; so does a registry that cannot tell a record's schema, and
//!   a run that makes no progress for [`STALL`]. Only records whose bytes do not decode are
//!   left out, and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use shared_events::WireError;
use shared_events::report::Report;
use tokio_util::sync::CancellationToken;

use super::range::{Offsets, Span, Window};
use crate::opening::OpenError;
use crate::projection::{Decoder, ready_batch};

/// A run that has read nothing for this long fails (Kafka or the registry unreachable).
pub const STALL: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Open(OpenError),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(
        "the log no longer holds the range: {topic}/{partition} starts at {low}, after the range's start {start}"
    )]
    Gone {
        topic: String,
        partition: i32,
        start: i64,
        low: i64,
    },
    #[error("the log no longer holds part of the range (retention removed it)")]
    Truncated,
    #[error("the schema registry could not tell a record's schema: {0}")]
    Registry(String),
    #[error("no progress for {0:?}: {1}")]
    Stalled(Duration, String),
    #[error("cancelled")]
    Cancelled,
}

/// How far a run has read: log positions passed.
#[derive(Debug, Default)]
pub struct Progress {
    pub read: AtomicU64,
}

impl Progress {
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// A finished fold: the table as JSON, and what it covered.
#[derive(Debug)]
pub struct Fold {
    pub table: serde_json::Value,
    /// Events folded.
    pub events: u64,
    /// Records that did not decode, left out.
    pub undecodable: u64,
}

/// One run's reading: where, how fast, and how it is stopped.
#[allow(missing_debug_implementations)]
pub struct Reading<'a> {
    /// The consumer settings (bootstrap, security) the run's consumer starts from.
    pub consumer: ClientConfig,
    /// The group id librdkafka needs to assign partitions; never joined, never committed to.
    pub group: String,
    pub offsets: &'a Offsets,
    /// Of the records between the offsets, those kept.
    pub window: Window,
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
    /// Events per second at most, if limited.
    pub limit: Option<u64>,
}

/// Where one partition is.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    span: Span,
    next: i64,
}

impl Cursor {
    fn done(self) -> bool {
        self.next >= self.span.end
    }

    fn passed(self) -> u64 {
        u64::try_from(self.next.min(self.span.end) - self.span.start).unwrap_or(0)
    }
}

/// Each partition of the range and where it is; a handful, searched in place.
type Cursors = Vec<((String, i32), Cursor)>;

fn cursor_of<'c>(cursors: &'c mut Cursors, topic: &str, partition: i32) -> Option<&'c mut Cursor> {
    cursors
        .iter_mut()
        .find(|((t, p), _)| *p == partition && t == topic)
        .map(|(_, cursor)| cursor)
}

impl Reading<'_> {
    /// Folds the range with report `R`.
    pub async fn fold<R: Report, D: Decoder<R::Event>>(
        self,
        decoder: &D,
    ) -> Result<Fold, RunError> {
        let consumer: StreamConsumer = crate::opening::assigned_reader(&self.consumer, &self.group)
            // A start the log no longer holds (retention) is an error, never a silent skip.
            .set("auto.offset.reset", "error")
            .create()?;
        let mut cursors: Cursors = Vec::new();
        let mut assignment = TopicPartitionList::new();
        for (topic, spans) in self.offsets {
            for (partition, span) in spans {
                cursors.push((
                    (topic.clone(), *partition),
                    Cursor {
                        span: *span,
                        next: span.start,
                    },
                ));
                if !span.is_empty() {
                    assignment.add_partition_offset(
                        topic,
                        *partition,
                        Offset::Offset(span.start),
                    )?;
                }
            }
        }
        self.check_held(&consumer, &cursors)?;
        consumer.assign(&assignment)?;
        let mut state = R::State::default();
        let mut progressed = Instant::now();
        let mut last_error = String::from("nothing arrived");
        let (mut events, mut undecodable) = (0u64, 0u64);
        let started = Instant::now();
        loop {
            self.note(&cursors);
            if cursors.iter().map(|(_, c)| c).all(|c| c.done()) {
                break;
            }
            if progressed.elapsed() > STALL {
                return Err(RunError::Stalled(STALL, last_error));
            }
            let first = tokio::select! {
                () = self.cancel.cancelled() => return Err(RunError::Cancelled),
                received = tokio::time::timeout(Duration::from_millis(100), consumer.recv()) => received,
            };
            let batch = match first {
                Ok(Ok(message)) => ready_batch(&consumer, message).await,
                Ok(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    return Err(RunError::Truncated);
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "report: consumer error");
                    last_error = error.to_string();
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            let mut finished = TopicPartitionList::new();
            for message in &batch {
                let Some(cursor) = cursor_of(&mut cursors, message.topic(), message.partition())
                else {
                    continue;
                };
                // Past the end, or before where this partition is (a redelivery).
                if message.offset() < cursor.next || message.offset() >= cursor.span.end {
                    continue;
                }
                cursor.next = message.offset() + 1;
                if cursor.done() {
                    finished.add_partition(message.topic(), message.partition());
                }
                if !self.window.keeps(message.timestamp().to_millis()) {
                    continue;
                }
                match self
                    .decode(decoder, message.topic(), message.payload())
                    .await?
                {
                    Some(event) => {
                        R::apply(&mut state, &event);
                        events += 1;
                    }
                    None => undecodable += 1,
                }
            }
            // Past the markers and aborted records the consumer skipped without a message.
            if let Ok(positions) = consumer.position() {
                for element in positions.elements() {
                    if let (Offset::Offset(next), Some(cursor)) = (
                        element.offset(),
                        cursor_of(&mut cursors, element.topic(), element.partition()),
                    ) && !cursor.done()
                        && next > cursor.next
                    {
                        cursor.next = next;
                        if cursor.done() {
                            finished.add_partition(element.topic(), element.partition());
                        }
                    }
                }
            }
            if finished.count() > 0 {
                // Done partitions fetch nothing more.
                let _ = consumer.pause(&finished);
            }
            let read: u64 = cursors.iter().map(|(_, c)| c).map(|c| c.passed()).sum();
            if read > self.progress.read() {
                progressed = Instant::now();
            }
            self.throttle(started, &cursors).await?;
            if self.limit.is_some() {
                // Time spent waiting for the limit is not a stall.
                progressed = Instant::now();
            }
            // A backlog keeps the consumer ready: let the thread's other tasks in.
            tokio::task::yield_now().await;
        }
        self.note(&cursors);
        Ok(Fold {
            table: R::table(state).to_json(),
            events,
            undecodable,
        })
    }

    /// Fails if the log no longer holds the start of a partition's range.
    fn check_held(&self, consumer: &StreamConsumer, cursors: &Cursors) -> Result<(), RunError> {
        for ((topic, partition), cursor) in cursors.iter() {
            if cursor.span.is_empty() {
                continue;
            }
            let (low, _) = consumer.fetch_watermarks(topic, *partition, Duration::from_secs(10))?;
            if low > cursor.span.start {
                return Err(RunError::Gone {
                    topic: topic.clone(),
                    partition: *partition,
                    start: cursor.span.start,
                    low,
                });
            }
        }
        Ok(())
    }

    /// A record's event; none if its bytes do not decode. A registry that cannot be reached is
    /// waited for (up to [`STALL`]); one that cannot tell the record's schema fails the run, so
    /// that what is left out never depends on the registry.
    async fn decode<E, D: Decoder<E>>(
        &self,
        decoder: &D,
        topic: &str,
        payload: Option<&[u8]>,
    ) -> Result<Option<E>, RunError> {
        let Some(payload) = payload else {
            return Ok(None);
        };
        let waited = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match decoder.decode(topic, payload).await {
                Ok(event) => return Ok(Some(event)),
                Err(WireError::Registry {
                    retriable: true,
                    source,
                }) => {
                    if waited.elapsed() > STALL {
                        return Err(RunError::Stalled(STALL, source.to_string()));
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(RunError::Cancelled),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error @ (WireError::Registry { .. } | WireError::Unauthorized { .. })) => {
                    return Err(RunError::Registry(error.to_string()));
                }
                Err(_) => return Ok(None),
            }
        }
    }

    fn note(&self, cursors: &Cursors) {
        let read = cursors.iter().map(|(_, c)| c).map(|c| c.passed()).sum();
        self.progress.read.fetch_max(read, Ordering::Relaxed);
    }

    /// Sleeps while the run is ahead of its events-per-second limit.
    async fn throttle(&self, started: Instant, cursors: &Cursors) -> Result<(), RunError> {
        let read: u64 = cursors.iter().map(|(_, c)| c).map(|c| c.passed()).sum();
        if crate::pace::pace(started, read, self.limit, self.cancel).await {
            Ok(())
        } else {
            Err(RunError::Cancelled)
        }
    }
}

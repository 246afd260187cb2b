//! The ledger of report runs: a compacted topic, one partition, the latest record of each run
//! under its id. Every replica follows it into memory, so that any replica answers for any
//! run, and a run outlives the replica that ran it.
//!
//! Why a topic: the runs' state must survive the loss of any replica and be readable from every
//! other, and Kafka is the one store every replica shares. Compaction keeps one record per run
//! (a finished run's record holds its result).
//!
//! Ownership is settled by the log's order, so no two processes run the same attempt of a
//! report. Each record names the process that wrote it, the attempt it belongs to, and its
//! writer's count (`seq`); a replica applies a run's records in log order and accepts one only
//! if:
//! - it is the first of the run, or
//! - it opens a later attempt (a claim: the first claim of an attempt wins, any other claim of
//!   that attempt comes later in the log and is refused), or
//! - its writer owns the current attempt and it is newer than the current record (progress, a
//!   result, or a release; an older record of the owner that arrives late is refused).
//!
//! A finished run (done, failed, cancelled, interrupted) accepts nothing more. A replica that
//! claimed a run reads its claim back before it starts, and runs only if its claim won.
//!
//! Compaction keeps the last record of a key, accepted or not. So the owner of a run writes its
//! accepted record again whenever it sees one of its run's records refused after it; a removed
//! run is marked removed (not tombstoned), so a late record cannot bring it back; and
//! cancellation requests live under their own key (`<id>/cancel`), remembered even when they
//! come before the run's record.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::range::{Offsets, Window};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    Interrupted,
}

impl RunState {
    pub fn finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }
}

/// One run of a report, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub report: String,
    /// As requested: `beginning` or RFC 3339.
    pub from: String,
    /// As requested: `now` or RFC 3339.
    pub to: String,
    pub max_events_per_second: Option<u64>,
    /// The record timestamps kept, of the records between the offsets.
    #[serde(default)]
    pub window: Window,
    pub offsets: Offsets,
    pub events_total: u64,
    pub state: RunState,
    /// The process running it (an id per process, so that two replicas given the same name
    /// never take each other's runs for their own), or none while it waits to be claimed.
    pub owner: Option<String>,
    /// The name of the replica running it, as `Served-By` names it.
    pub owner_name: Option<String>,
    /// The process that wrote this record.
    pub writer: String,
    /// The writer's count: of two records of one owner and attempt, the higher is the newer.
    pub seq: u64,
    /// 1 for the first run; each claim adds one.
    pub attempt: u32,
    /// Attempts lost with their replica (a replica that stops cleanly hands its runs back
    /// without losing them).
    pub losses: u32,
    pub events_read: u64,
    pub events_per_second: f64,
    pub submitted_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
    /// When done: `{"columns", "rows", "events", "undecodable", "offsets"}`.
    pub result: Option<serde_json::Value>,
}

impl Run {
    /// The run without its result, for lists.
    pub fn summary(&self) -> Self {
        Self {
            id: self.id.clone(),
            report: self.report.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            max_events_per_second: self.max_events_per_second,
            window: self.window,
            offsets: self.offsets.clone(),
            events_total: self.events_total,
            state: self.state,
            owner: self.owner.clone(),
            owner_name: self.owner_name.clone(),
            writer: self.writer.clone(),
            seq: self.seq,
            attempt: self.attempt,
            losses: self.losses,
            events_read: self.events_read,
            events_per_second: self.events_per_second,
            submitted_at_ms: self.submitted_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            error: self.error.clone(),
            result: None,
        }
    }
}

/// The record of a removed run under its id, kept instead of a tombstone so that a late
/// record cannot bring a removed run back.
#[derive(Debug, Serialize, Deserialize)]
struct Removed {
    removed: bool,
}

/// A record of the ledger's topic under a run's id.
enum Record {
    Run(Box<Run>),
    Removed,
}

impl Record {
    fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        match serde_json::from_slice::<Run>(bytes) {
            Ok(run) => Ok(Self::Run(Box::new(run))),
            Err(error) => match serde_json::from_slice::<Removed>(bytes) {
                Ok(Removed { removed: true }) => Ok(Self::Removed),
                _ => Err(error),
            },
        }
    }
}

/// What a replica knows of one run: its accepted record, whether a cancel was asked, and when
/// its record last changed (by this replica's clock, so no clocks are compared).
#[derive(Debug, Clone)]
pub struct Known {
    pub run: Run,
    pub cancel_requested: bool,
    pub seen: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the reports topic: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the reports topic did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("a run does not serialise: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "the reports topic `{topic}` must have one partition and `cleanup.policy=compact`: {found}"
    )]
    Shape { topic: String, found: String },
}

/// Whether a written record was accepted (or overtaken by its writer's newer one), by the
/// log's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Accepted,
    Refused,
}

const CANCEL_SUFFIX: &str = "/cancel";

#[derive(Debug, Default)]
struct Book {
    runs: BTreeMap<String, Known>,
    removed: HashSet<String>,
    /// Cancellations asked of runs this replica has not seen yet.
    cancels: HashSet<String>,
    /// Runs this process owns of which a refused record came later in the log: compaction
    /// could keep that record alone, so the accepted one is written again.
    republish: HashSet<String>,
}

/// The ledger: the topic, the producer that writes it, and this replica's copy of it.
pub struct Ledger {
    pub topic: String,
    /// This process, as owner and writer.
    pub me: String,
    producer: FutureProducer,
    timeout: Duration,
    book: Mutex<Book>,
    /// The next offset of the topic applied here.
    applied: watch::Sender<i64>,
    /// Woken whenever a record is applied.
    pub changed: Notify,
    /// Whether the follower is reading the topic.
    following: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.topic)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger over `topic` for process `me`; call [`Ledger::follow`] to fill it.
    pub fn new(
        kafka: &ClientConfig,
        topic: String,
        me: String,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer: FutureProducer = kafka
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set(
                "message.timeout.ms",
                timeout.as_millis().max(1_000).to_string(),
            )
            .create()?;
        Ok(Self {
            topic,
            me,
            producer,
            timeout,
            book: Mutex::new(Book::default()),
            applied: watch::Sender::new(0),
            changed: Notify::new(),
            following: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether this replica is reading the ledger, and how far it has applied it.
    pub fn following(&self) -> (bool, i64) {
        (
            self.following.load(std::sync::atomic::Ordering::Relaxed),
            *self.applied.borrow(),
        )
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether run `id` was removed.
    pub fn is_removed(&self, id: &str) -> bool {
        self.book().removed.contains(id)
    }

    pub fn get(&self, id: &str) -> Option<Known> {
        self.book().runs.get(id).cloned()
    }

    /// The newest `limit` runs, newest first, without their results.
    pub fn list(&self, limit: usize) -> Vec<Known> {
        let book = self.book();
        let mut runs: Vec<&Known> = book.runs.values().collect();
        runs.sort_by(|a, b| {
            (b.run.submitted_at_ms, &b.run.id).cmp(&(a.run.submitted_at_ms, &a.run.id))
        });
        runs.into_iter()
            .take(limit)
            .map(|known| Known {
                run: known.run.summary(),
                cancel_requested: known.cancel_requested,
                seen: known.seen,
            })
            .collect()
    }

    /// The runs not finished.
    pub fn unfinished(&self) -> Vec<Known> {
        self.book()
            .runs
            .values()
            .filter(|k| !k.run.state.finished())
            .cloned()
            .collect()
    }

    /// Finished runs that finished before `before_ms`.
    pub fn finished_before(&self, before_ms: i64) -> Vec<String> {
        self.book()
            .runs
            .values()
            .filter(|k| {
                k.run.state.finished() && k.run.finished_at_ms.is_some_and(|at| at < before_ms)
            })
            .map(|k| k.run.id.clone())
            .collect()
    }

    /// Runs of this process to write again (see [`Book::republish`]).
    pub fn take_republish(&self) -> Vec<String> {
        self.book().republish.drain().collect()
    }

    /// Writes a run's record and waits until this replica has applied it: whether it was
    /// accepted (a claim that lost, or a record of an owner that lost its run, is not).
    pub async fn write(&self, run: &Run) -> Result<Written, LedgerError> {
        let value = serde_json::to_vec(run)?;
        let offset = self.send(&run.id, Some(&value)).await?;
        self.wait_applied(offset + 1).await?;
        // Accepted, or overtaken by a newer record of the same writer and attempt: either way
        // the writer still holds the run.
        let accepted = self.get(&run.id).is_some_and(|known| {
            known.run.attempt == run.attempt
                && known.run.writer == run.writer
                && known.run.seq >= run.seq
        });
        Ok(if accepted {
            Written::Accepted
        } else {
            Written::Refused
        })
    }

    /// Writes a run's record once Kafka has it, without waiting to read it back: for a replica
    /// on its way out.
    pub async fn hand_over(&self, run: &Run) -> Result<(), LedgerError> {
        let value = serde_json::to_vec(run)?;
        self.send(&run.id, Some(&value)).await.map(drop)
    }

    /// Asks whoever owns run `id` to cancel it.
    pub async fn request_cancel(&self, id: &str) -> Result<(), LedgerError> {
        let offset = self
            .send(&format!("{id}{CANCEL_SUFFIX}"), Some(b"{}"))
            .await?;
        self.wait_applied(offset + 1).await
    }

    /// Removes a finished run and its result for good.
    pub async fn remove(&self, id: &str) -> Result<(), LedgerError> {
        self.send(&format!("{id}{CANCEL_SUFFIX}"), None).await?;
        let marker = serde_json::to_vec(&Removed { removed: true })?;
        let offset = self.send(id, Some(&marker)).await?;
        self.wait_applied(offset + 1).await
    }

    async fn send(&self, key: &str, value: Option<&[u8]>) -> Result<i64, LedgerError> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let sent = tokio::time::timeout(self.timeout, self.producer.send(record, self.timeout))
            .await
            .map_err(|_| LedgerError::Timeout(self.timeout))?;
        let delivery = sent.map_err(|(error, _)| LedgerError::Kafka(error))?;
        Ok(delivery.offset)
    }

    /// Waits until this replica has applied the topic up to `next` (exclusive).
    pub async fn wait_applied(&self, next: i64) -> Result<(), LedgerError> {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(self.timeout, applied.wait_for(|at| *at >= next))
            .await
            .map_err(|_| LedgerError::Timeout(self.timeout))?
            .map_err(|_| LedgerError::Timeout(self.timeout))?;
        Ok(())
    }

    /// Waits until this replica has applied everything the topic held when asked: what any
    /// replica acknowledged before is then known here.
    pub async fn catch_up(&self, client: Arc<StreamConsumer>) -> Result<(), LedgerError> {
        let (topic, timeout) = (self.topic.clone(), self.timeout);
        let high = tokio::task::spawn_blocking(move || client.fetch_watermarks(&topic, 0, timeout))
            .await
            .map_err(|_| LedgerError::Timeout(timeout))??
            .1;
        self.wait_applied(high).await
    }

    /// Applies one record of the topic, by the rules in the module's documentation.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>, offset: i64) {
        let key = String::from_utf8_lossy(key);
        {
            let mut book = self.book();
            if let Some(id) = key.strip_suffix(CANCEL_SUFFIX) {
                let asked = value.is_some();
                match book.runs.get_mut(id) {
                    Some(known) => {
                        known.cancel_requested = asked;
                        known.seen = Instant::now();
                    }
                    None if asked => {
                        book.cancels.insert(id.to_owned());
                    }
                    None => {
                        book.cancels.remove(id);
                    }
                }
            } else {
                match value.map(Record::parse) {
                    // A tombstone (compaction's own, or a hand-made one): the run is gone too.
                    None | Some(Ok(Record::Removed)) => {
                        book.runs.remove(key.as_ref());
                        book.removed.insert(key.into_owned());
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, %key, offset, "reports ledger: skipping a record that does not parse");
                    }
                    Some(Ok(Record::Run(run))) => accept(&mut book, *run, &self.me),
                }
            }
        }
        self.applied.send_if_modified(|at| {
            let moved = offset + 1 > *at;
            *at = (*at).max(offset + 1);
            moved
        });
        self.changed.notify_waiters();
    }

    /// Follows the topic from its beginning until `stop`. While nothing arrives, the applied
    /// position follows the consumer's, which passes records compaction removed.
    pub async fn follow(self: Arc<Self>, consumer: StreamConsumer, stop: CancellationToken) {
        let mut assignment = TopicPartitionList::new();
        if let Err(error) = assignment
            .add_partition_offset(&self.topic, 0, Offset::Beginning)
            .and_then(|()| consumer.assign(&assignment))
        {
            tracing::error!(%error, "reports ledger: could not assign its topic");
            return;
        }
        let _following = Following::start(&self.following);
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = tokio::time::timeout(Duration::from_millis(200), consumer.recv()) => message,
            };
            match message {
                Ok(Ok(message)) => self.apply(
                    message.key().unwrap_or_default(),
                    message.payload(),
                    message.offset(),
                ),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "reports ledger: consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    let position = consumer.position().ok().and_then(|p| {
                        p.elements().first().and_then(|e| match e.offset() {
                            Offset::Offset(next) => Some(next),
                            _ => None,
                        })
                    });
                    if let Some(next) = position {
                        self.applied.send_if_modified(|at| {
                            let moved = next > *at;
                            *at = (*at).max(next);
                            moved
                        });
                    }
                }
            }
        }
    }
}

/// Marks the follower as reading while it lives.
struct Following<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> Following<'a> {
    fn start(flag: &'a std::sync::atomic::AtomicBool) -> Self {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Checks that an existing ledger topic has the shape the ledger needs.
pub fn check_topic(
    client: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<(), LedgerError> {
    // A topic just created may take a moment to show in the metadata.
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let metadata = client.fetch_metadata(Some(topic), timeout)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if partitions > 0 || Instant::now() > deadline {
            break partitions;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if partitions != 1 {
        return Err(LedgerError::Shape {
            topic: topic.to_owned(),
            found: format!("{partitions} partitions"),
        });
    }
    Ok(())
}

/// Creates the ledger's topic unless it exists: one partition (the log's order settles
/// ownership), compacted (one record per run), `replication` copies (-1: the cluster's
/// default). An existing topic must have that shape.
pub async fn create_topic(
    kafka: &ClientConfig,
    topic: &str,
    replication: i32,
    timeout: Duration,
) -> Result<(), LedgerError> {
    use rdkafka::admin::{
        AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = kafka.create()?;
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact")
        .set("retention.ms", "-1");
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    for result in admin.create_topics([&new_topic], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(LedgerError::Kafka(KafkaError::AdminOp(code))),
        }
    }
    // A topic just created may not be described yet by the broker asked: its policy is then
    // missing, not wrong, and asked again.
    let deadline = tokio::time::Instant::now() + timeout;
    let policy = loop {
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
            .await?;
        let policy = described
            .into_iter()
            .flatten()
            .flat_map(|resource| resource.entries)
            .find(|entry| entry.name == "cleanup.policy")
            .and_then(|entry| entry.value)
            .filter(|policy| !policy.is_empty());
        match policy {
            Some(policy) => break policy,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => break String::new(),
        }
    };
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(LedgerError::Shape {
            topic: topic.to_owned(),
            found: format!("cleanup.policy={policy}"),
        });
    }
    Ok(())
}

/// The acceptance rule: see the module's documentation.
fn accept(book: &mut Book, run: Run, me: &str) {
    if book.removed.contains(&run.id) {
        return;
    }
    let now = Instant::now();
    match book.runs.get_mut(&run.id) {
        None => {
            let cancel_requested = book.cancels.remove(&run.id);
            book.runs.insert(
                run.id.clone(),
                Known {
                    run,
                    cancel_requested,
                    seen: now,
                },
            );
        }
        Some(known) => {
            let current = &known.run;
            let accepted = !current.state.finished()
                && (run.attempt > current.attempt
                    || (run.attempt == current.attempt
                        && current.owner.as_deref() == Some(run.writer.as_str())
                        && run.seq > current.seq));
            // A finished run's writer writing the same outcome again (its republish, or a
            // retried last write): kept quietly, so that it is what compaction keeps.
            let rewritten = current.state.finished()
                && run.state == current.state
                && run.attempt == current.attempt
                && run.writer == current.writer
                && run.seq > current.seq;
            if accepted || rewritten {
                known.run = run;
                known.seen = now;
            } else if current.owner.as_deref() == Some(me) || current.writer == me {
                book.republish.insert(run.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run(attempt: u32, state: RunState, owner: Option<&str>, writer: &str) -> Run {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Run {
            id: "r-1".into(),
            report: "monthly-orders".into(),
            from: "beginning".into(),
            to: "now".into(),
            max_events_per_second: None,
            window: Window::default(),
            offsets: Offsets::new(),
            events_total: 10,
            state,
            owner: owner.map(str::to_owned),
            owner_name: owner.map(str::to_owned),
            writer: writer.into(),
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            attempt,
            losses: 0,
            events_read: 0,
            events_per_second: 0.0,
            submitted_at_ms: 1,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            result: None,
        }
    }

    fn current(book: &Book) -> (u32, Option<String>, RunState) {
        let known = &book.runs["r-1"];
        (known.run.attempt, known.run.owner.clone(), known.run.state)
    }

    #[test]
    fn records_read_back_as_written() {
        let mut written = run(1, RunState::Done, Some("a"), "a");
        written.offsets.insert(
            "orders".into(),
            [(0, super::super::range::Span { start: 1, end: 9 })].into(),
        );
        written.result = Some(serde_json::json!({"rows": []}));
        let bytes = serde_json::to_vec(&written).unwrap();
        match Record::parse(&bytes).unwrap() {
            Record::Run(read) => assert_eq!(*read, written),
            Record::Removed => panic!("a run read as removed"),
        }
        let marker = serde_json::to_vec(&Removed { removed: true }).unwrap();
        assert!(matches!(Record::parse(&marker), Ok(Record::Removed)));
        assert!(Record::parse(b"{}").is_err());
    }

    #[test]
    fn the_first_claim_of_an_attempt_wins() {
        let mut runs = Book::default();
        accept(&mut runs, run(1, RunState::Running, Some("a"), "a"), "z");
        // b and c both think a is gone; b's claim reaches the log first.
        accept(&mut runs, run(2, RunState::Queued, Some("b"), "b"), "z");
        accept(&mut runs, run(2, RunState::Queued, Some("c"), "c"), "z");
        assert_eq!(current(&runs), (2, Some("b".into()), RunState::Queued));
        // a was only slow: its progress no longer counts.
        accept(&mut runs, run(1, RunState::Running, Some("a"), "a"), "z");
        assert_eq!(current(&runs).1.as_deref(), Some("b"));
        // b's own progress does.
        accept(&mut runs, run(2, RunState::Running, Some("b"), "b"), "z");
        assert_eq!(current(&runs).2, RunState::Running);
    }

    #[test]
    fn an_owner_s_older_record_arriving_late_is_refused_and_its_newer_one_republished() {
        let mut runs = Book::default();
        let newer = run(1, RunState::Running, Some("a"), "a");
        let mut older = newer.clone();
        older.seq = newer.seq - 1;
        older.state = RunState::Queued;
        accept(&mut runs, newer, "a");
        accept(&mut runs, older, "a");
        assert_eq!(current(&runs).2, RunState::Running);
        assert!(
            runs.republish.contains("r-1"),
            "a refused record could outlive compaction"
        );
    }

    #[test]
    fn a_finished_run_rewritten_by_its_writer_is_kept_quietly() {
        let mut runs = Book::default();
        let done = run(1, RunState::Done, Some("a"), "a");
        let mut late_heartbeat = done.clone();
        late_heartbeat.state = RunState::Running;
        late_heartbeat.seq = done.seq - 1;
        let mut again = done.clone();
        again.seq = done.seq + 10;
        accept(&mut runs, done, "a");
        accept(&mut runs, late_heartbeat, "a");
        assert!(
            runs.republish.remove("r-1"),
            "the late heartbeat could outlive compaction"
        );
        accept(&mut runs, again, "a");
        assert!(
            runs.republish.is_empty(),
            "writing the outcome again must not loop"
        );
        assert_eq!(current(&runs).2, RunState::Done);
    }

    #[test]
    fn a_removed_run_stays_removed_and_an_early_cancel_is_kept() {
        let mut runs = Book::default();
        runs.removed.insert("r-1".into());
        accept(&mut runs, run(5, RunState::Running, Some("a"), "a"), "z");
        assert!(runs.runs.is_empty());
        let mut runs = Book::default();
        runs.cancels.insert("r-1".into());
        accept(&mut runs, run(1, RunState::Queued, Some("a"), "a"), "z");
        assert!(runs.runs["r-1"].cancel_requested);
    }

    #[test]
    fn a_release_lets_anyone_claim_and_a_finished_run_stays_finished() {
        let mut runs = Book::default();
        accept(&mut runs, run(1, RunState::Running, Some("a"), "a"), "z");
        accept(&mut runs, run(1, RunState::Queued, None, "a"), "z");
        assert_eq!(current(&runs), (1, None, RunState::Queued));
        // Nobody owns attempt 1 now: only a claim of a later attempt is accepted.
        accept(&mut runs, run(1, RunState::Running, Some("c"), "c"), "z");
        assert_eq!(current(&runs).1, None);
        accept(&mut runs, run(2, RunState::Queued, Some("c"), "c"), "z");
        accept(&mut runs, run(2, RunState::Done, Some("c"), "c"), "z");
        accept(&mut runs, run(3, RunState::Queued, Some("d"), "d"), "z");
        assert_eq!(current(&runs), (2, Some("c".into()), RunState::Done));
    }
}

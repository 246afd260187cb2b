//! Group commit: a bounded in-memory queue in front of a pool of transactional Kafka producers.
//!
//! Request handlers [`Batcher::submit`] an encoded record with what to do once its fate is known. Each worker
//! thread owns one long-lived transactional producer (`transactional.id` = `<instance>-<index>`,
//! stable across restarts so a restarted instance fences its own zombies). A worker takes what is
//! queued, up to `max_batch` records or `linger` after the first one, sends the batch inside one
//! transaction, commits, and only then answers every waiting request with its record's position.
//! While one worker commits, the others keep gathering, so many requests share one commit.
//!
//! Invariants:
//! - A request is answered `Ok` only after the transaction holding its record committed.
//! - Every answer is the truth: `Ok` only if the transaction committed, an error only if it
//!   certainly did not. When a commit fails in a way that leaves the outcome open (a fatal
//!   producer error such as being fenced, a commit that keeps timing out), the worker replaces
//!   its producer — `init_transactions` under the same `transactional.id` makes the broker finish
//!   the old transaction one way or the other — and then reads the log, read-committed, at each
//!   record's offset to learn whether it is there. Until then the requests wait (their handlers
//!   time out with 503, the answer still settles the aggregate's lock).
//! - A fatal producer error replaces the producer instead of retrying with it.
//! - A record is only committed while its partition is this instance's: each transaction
//!   carries the command group's metadata (`send_offsets_to_transaction`, KIP-447), so the group
//!   coordinator refuses the commit of a member the group has moved on from, and a record whose
//!   [`Lease`] is no longer valid is not sent, or aborts its transaction (see [`crate::ownership`]).
//! - No worker waits on Kafka without a bound: every transactional call has a timeout, and the
//!   one librdkafka does not enforce (the group's offsets) is made on a thread of its own, the
//!   worker giving the producer up past its deadline ([`offsets`]).
//! - The queue is bounded: [`Batcher::submit`] fails at once with [`SubmitError::Full`].
//! - [`Batcher::close`] stops intake; the workers drain what was queued, then exit.
//!
//! The batcher knows nothing of the domain: it moves keyed byte records to the topic and
//! partition each names, and one transaction may span several topics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use shared_events::Position;

use crate::metrics::{BatchMetrics, OutcomeLabel};
use crate::ownership::Lease;

mod offsets;

use offsets::{OffsetsCaller, OffsetsError};

/// The group membership a transaction carries, so that only a current member can commit.
pub trait Fence: Send + Sync + std::fmt::Debug + 'static {
    /// The member's id and generation as last seen; None before it has joined. Must not block:
    /// a worker asks before every transaction.
    fn group_metadata(&self) -> Option<Arc<ConsumerGroupMetadata>>;
    /// How long the group waits for a silent member before moving its partitions.
    fn session_timeout(&self) -> Duration;
}

/// How a batcher is shaped; see [`crate::config::Config`] for meanings and defaults.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub kafka: service_config::KafkaArgs,
    /// Prefix of each worker's `transactional.id`; must be unique per running instance.
    pub transactional_id_prefix: String,
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub linger: Duration,
    /// Bound on every blocking Kafka call: init, commit, abort.
    pub kafka_timeout: Duration,
    pub transaction_timeout: Duration,
    /// When set, every transaction carries the group's metadata and its offsets (the end of
    /// what it wrote to each partition) through `send_offsets_to_transaction`.
    pub fence: Option<Arc<dyn Fence>>,
}

/// Why a record was not accepted into the queue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the write queue is full")]
    Full,
    #[error("the service is shutting down")]
    Closed,
}

/// Why an accepted record was not committed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommitError {
    /// Certainly not in the log: the transaction was aborted or never began.
    #[error("the Kafka transaction failed and was aborted: {0}")]
    Aborted(String),
    /// Certainly not in the log: no producer could be initialised (Kafka unreachable?).
    #[error("the Kafka producer is unavailable: {0}")]
    ProducerUnavailable(String),
    /// The commit's outcome could not be learned before shutdown; the log has the truth.
    #[error("the outcome of the Kafka transaction is unknown: {0}")]
    InDoubt(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not create the transactional producer `{id}`")]
    Create {
        id: String,
        #[source]
        source: KafkaError,
    },
    #[error("could not initialise transactions for `{id}` (is the broker reachable?)")]
    InitTransactions {
        id: String,
        #[source]
        source: KafkaError,
    },
    #[error("could not start a producer thread")]
    Thread(#[source] std::io::Error),
}

/// The answer a waiting request receives.
pub type CommitResult = Result<Position, CommitError>;

/// What a submitter has done with its record's outcome. It runs on the worker thread that
/// learned the outcome, so it must be quick and must not block.
pub type OnOutcome = Box<dyn FnOnce(CommitResult) + Send>;

/// A record to write: where, its key, its encoded value.
#[derive(Debug)]
pub struct Record {
    pub topic: Arc<str>,
    /// The partition the key belongs to (the caller computed it with Kafka's partitioner).
    pub partition: i32,
    pub key: String,
    pub value: Vec<u8>,
    /// The command's right to write the partition: a record whose lease is no longer valid is
    /// not committed. Released when the record is settled.
    pub lease: Option<Lease>,
}

/// A record the queue did not take, and what was to be done with its outcome.
pub struct Refused {
    pub reason: SubmitError,
    pub on_outcome: OnOutcome,
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refused")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// One record waiting for its transaction.
struct Pending {
    queued_at: Instant,
    record: Record,
    on_outcome: OnOutcome,
}

/// The queue and its workers. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Batcher {
    queue: Sender<Pending>,
    closed: Arc<AtomicBool>,
    live_producers: Arc<AtomicUsize>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("record", &self.record)
            .finish()
    }
}

impl Batcher {
    /// Creates the producers, initialises their transactions (fencing any previous instance with
    /// the same ids) and starts the workers. Blocks for up to `kafka_timeout` per producer, so
    /// call it off the async runtime.
    pub fn start(config: BatcherConfig, metrics: BatchMetrics) -> Result<Self, StartError> {
        let (queue, intake) = crossbeam_channel::bounded(config.queue_capacity);
        let closed = Arc::new(AtomicBool::new(false));
        let live_producers = Arc::new(AtomicUsize::new(0));
        let fenced_out = Arc::new(AtomicBool::new(false));
        let config = Arc::new(config);
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let strays = Arc::new(AtomicUsize::new(0));
            let producer = TxProducer::create(&config, index, &strays)?;
            live_producers.fetch_add(1, Ordering::Relaxed);
            let worker = Worker {
                config: Arc::clone(&config),
                index,
                producer: Some(producer),
                intake: intake.clone(),
                closed: Arc::clone(&closed),
                live_producers: Arc::clone(&live_producers),
                metrics: metrics.clone(),
                fencings: Vec::new(),
                fenced_out: Arc::clone(&fenced_out),
                strays,
                stranded_at: None,
            };
            let handle = std::thread::Builder::new()
                .name(format!("producer-{index}"))
                .spawn(move || worker.run())
                .map_err(StartError::Thread)?;
            workers.push(handle);
        }
        Ok(Self {
            queue,
            closed,
            live_producers,
            workers: std::sync::Mutex::new(workers),
        })
    }

    /// Queues a record. `on_outcome` is called once its transaction committed or failed, on
    /// the worker's thread. A record that is not queued hands `on_outcome` back with the reason
    /// (it certainly was not written); if a worker dies with a record, its `on_outcome` is
    /// dropped without being called, and nobody knows whether it was written.
    pub fn submit(&self, record: Record, on_outcome: OnOutcome) -> Result<(), Refused> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Refused {
                reason: SubmitError::Closed,
                on_outcome,
            });
        }
        let pending = Pending {
            queued_at: Instant::now(),
            record,
            on_outcome,
        };
        match self.queue.try_send(pending) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(pending)) => Err(Refused {
                reason: SubmitError::Full,
                on_outcome: pending.on_outcome,
            }),
            Err(TrySendError::Disconnected(pending)) => Err(Refused {
                reason: SubmitError::Closed,
                on_outcome: pending.on_outcome,
            }),
        }
    }

    /// Workers whose transactional producer is initialised (the others are replacing theirs).
    pub fn live_producers(&self) -> usize {
        self.live_producers.load(Ordering::Relaxed)
    }

    /// Records waiting in the queue (not yet taken by a worker).
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Stops intake, lets the workers drain the queue and commit, and waits for them. Blocks.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let workers = match self.workers.lock() {
            Ok(mut workers) => std::mem::take(&mut *workers),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for worker in workers {
            if worker.join().is_err() {
                tracing::error!("a producer worker panicked");
            }
        }
    }
}

/// Delivery reports of the batch in flight, by the record's index in the batch.
///
/// The worker thread polls its producer itself (a `BaseProducer`, no background thread), so
/// reports arrive on that thread as soon as the broker acknowledged the records; rdkafka's
/// threaded producers would race its commit-time flush for them (which polls in 100 ms ticks).
#[derive(Debug, Default)]
struct Deliveries {
    /// None while waiting; then the record's position, or None if it was not delivered.
    reports: std::sync::Mutex<Vec<Option<Option<Position>>>>,
    /// Records of the batch without a report yet.
    outstanding: AtomicUsize,
}

impl Deliveries {
    fn reset(&self, records: usize) {
        if let Ok(mut reports) = self.reports.lock() {
            reports.clear();
            reports.resize(records, None);
        }
        self.outstanding.store(records, Ordering::Release);
    }

    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Each record's position; a missing report counts as not delivered.
    fn take(&self) -> Vec<Option<Position>> {
        self.reports
            .lock()
            .map(|mut r| r.drain(..).map(Option::flatten).collect())
            .unwrap_or_default()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let report = result.as_ref().ok().map(|message| Position {
            partition: message.partition(),
            offset: message.offset(),
        });
        if let Ok(mut reports) = self.reports.lock()
            && let Some(slot @ None) = reports.get_mut(index)
        {
            *slot = Some(report);
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How long a worker first waits before looking for delivery reports again when none had
/// arrived; the wait doubles up to [`DELIVERY_CHECK_MAX`] while none arrive.
const DELIVERY_CHECK: Duration = Duration::from_micros(100);
const DELIVERY_CHECK_MAX: Duration = Duration::from_millis(1);

/// Serves delivery reports until every record of the batch has one, or until `deadline`.
///
/// Not `poll(timeout)`: rdkafka's `BaseProducer::poll` returns only when its whole timeout has
/// passed, however early the reports came, and it spins through the last millisecond (it
/// rounds the remaining time down to whole milliseconds, and zero means "do not wait"). Polling
/// with a 10 ms timeout put a 10 ms floor under every transaction and burned ~5 % of the
/// service's CPU in that spin. A zero-timeout poll serves what is there and returns; short
/// sleeps between empty polls cost a few wake-ups per transaction.
fn await_deliveries(producer: &BaseProducer<Deliveries>, deadline: Instant) {
    let mut pause = DELIVERY_CHECK;
    loop {
        let before = producer.context().outstanding();
        if before == 0 || Instant::now() >= deadline {
            return;
        }
        producer.poll(Duration::ZERO);
        if producer.context().outstanding() == before {
            std::thread::sleep(pause);
            pause = (pause * 2).min(DELIVERY_CHECK_MAX);
        } else {
            pause = DELIVERY_CHECK;
        }
    }
}

/// The offsets a transaction commits for the command group: for each partition it wrote, the
/// offset after its last record. They mark how far the writer has got.
fn written(batch: &[Pending], deliveries: &[Option<Position>]) -> TopicPartitionList {
    let mut ends: std::collections::BTreeMap<(&str, i32), i64> = std::collections::BTreeMap::new();
    for (pending, delivery) in batch.iter().zip(deliveries) {
        if let Some(position) = delivery {
            let end = ends
                .entry((&*pending.record.topic, position.partition))
                .or_insert(0);
            *end = (*end).max(position.offset + 1);
        }
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), end) in ends {
        // Only fails for an offset that is not a number, which these are.
        let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(end));
    }
    offsets
}

/// A batch: `first`, then whatever else arrives on `intake`, until the batch holds `max_batch`
/// records or `linger` has passed since `first` was taken; never waits longer than `linger`.
fn gather<T>(intake: &Receiver<T>, first: T, max_batch: usize, linger: Duration) -> Vec<T> {
    let deadline = Instant::now() + linger;
    let mut batch = Vec::with_capacity(max_batch);
    batch.push(first);
    while batch.len() < max_batch {
        match intake.recv_deadline(deadline) {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    batch
}

/// A transactional producer with its id, ready for `begin_transaction`.
struct TxProducer {
    id: String,
    /// Shared with `offsets` only.
    producer: Arc<BaseProducer<Deliveries>>,
    offsets: OffsetsCaller,
}

impl TxProducer {
    fn create(
        config: &BatcherConfig,
        index: usize,
        strays: &Arc<AtomicUsize>,
    ) -> Result<Self, StartError> {
        let id = format!("{}-{index}", config.transactional_id_prefix);
        let producer: BaseProducer<Deliveries> = config
            .kafka
            .client_config()
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Kafka's default partitioner for keyed records, so every client and every query
            // replica computes the same partition for an order id.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "1")
            // Small produce and EndTxn requests must not wait for Nagle's algorithm.
            .set("socket.nagle.disable", "true")
            // A transaction that starts right after the previous commit gets
            // CONCURRENT_TRANSACTIONS from the coordinator until the commit markers are written;
            // librdkafka retries after `retry.backoff.ms` (100 ms by default), which would put a
            // floor of ~100 ms under every commit. Markers take a few ms on a healthy broker.
            .set("retry.backoff.ms", "5")
            .set("retry.backoff.max.ms", "100")
            // After an outage, reconnect within a second of the broker's return rather than
            // librdkafka's default backoff of up to ten.
            .set("reconnect.backoff.max.ms", "1000")
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            )
            .set(
                "message.timeout.ms",
                config.kafka_timeout.as_millis().to_string(),
            )
            .set(
                "socket.timeout.ms",
                config.kafka_timeout.as_millis().to_string(),
            )
            .create_with_context(Deliveries::default())
            .map_err(|source| StartError::Create {
                id: id.clone(),
                source,
            })?;
        producer
            .init_transactions(config.kafka_timeout)
            .map_err(|source| StartError::InitTransactions {
                id: id.clone(),
                source,
            })?;
        let producer = Arc::new(producer);
        let offsets = OffsetsCaller::start(
            format!("producer-{index}-offsets"),
            Arc::clone(&producer),
            Arc::clone(strays),
        )
        .map_err(StartError::Thread)?;
        tracing::info!(transactional_id = %id, "transactional producer ready");
        Ok(Self {
            id,
            producer,
            offsets,
        })
    }
}

struct Worker {
    config: Arc<BatcherConfig>,
    index: usize,
    /// None after a failure until a replacement could be initialised.
    producer: Option<TxProducer>,
    intake: Receiver<Pending>,
    closed: Arc<AtomicBool>,
    live_producers: Arc<AtomicUsize>,
    metrics: BatchMetrics,
    /// When this worker's producer was last fenced (recent ones only).
    fencings: Vec<Instant>,
    /// Set when fenced repeatedly: shared by all workers, checked before every batch.
    fenced_out: Arc<AtomicBool>,
    /// This worker's producers given up with an offsets call still under way ([`offsets`]).
    strays: Arc<AtomicUsize>,
    /// When this worker last gave a producer up.
    stranded_at: Option<Instant>,
}

/// Given-up producers whose offsets call is still under way, beyond which a worker waits for
/// one of them to return before it starts another producer: each holds a client's threads,
/// and a group coordinator that answers none of them would likely answer the next one no
/// better. A fresh client looks the coordinator up afresh, though, and a given-up call may
/// never return (librdkafka#5511), so the worker waits [`STRAY_PATIENCE`] at most.
const MAX_STRAYS: usize = 2;
const STRAY_PATIENCE: Duration = Duration::from_secs(60);

/// Fencings within this window ...
const FENCING_WINDOW: Duration = Duration::from_secs(60);
/// ... beyond this many mean a second live instance with our `transactional.id`s.
const MAX_FENCINGS: usize = 3;

/// How a batch's transaction ended.
enum Verdict {
    Committed(Vec<Position>),
    /// Certainly not in the log.
    NotCommitted(CommitError),
    /// Sent and a commit attempted, outcome open: each record's delivery report.
    InDoubt {
        error: String,
        deliveries: Vec<Option<Position>>,
    },
}

/// What librdkafka says of a failed transactional call, as far as the verdict depends on it.
trait TxnFailure: std::fmt::Display {
    /// The same call may be made again (a timeout, say).
    fn retriable(&self) -> bool;
    /// The transaction can, and must, be aborted; once aborted it certainly did not commit.
    fn requires_abort(&self) -> bool;
}

impl TxnFailure for KafkaError {
    fn retriable(&self) -> bool {
        matches!(self, KafkaError::Transaction(e) if e.is_retriable())
    }

    fn requires_abort(&self) -> bool {
        matches!(self, KafkaError::Transaction(e) if e.txn_requires_abort())
    }
}

/// How a transaction's commit ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending<E> {
    Committed,
    /// Not committed and aborted: certainly not in the log.
    Aborted(E),
    /// The outcome is open: `error` failed the commit, and `abort_error` the abort, if one was
    /// tried. Only the log can tell.
    Open {
        error: E,
        abort_error: Option<E>,
    },
}

/// Commits; retries a retriable failure once (the same commit, not a new transaction); aborts
/// a failure that requires it. Every verdict the batcher gives rests on this classification.
fn end_transaction<E: TxnFailure>(
    mut commit: impl FnMut() -> Result<(), E>,
    abort: impl FnOnce() -> Result<(), E>,
) -> Ending<E> {
    let mut result = commit();
    if let Err(error) = &result
        && error.retriable()
    {
        tracing::warn!(%error, "commit failed; retrying once");
        result = commit();
    }
    match result {
        Ok(()) => Ending::Committed,
        Err(error) if error.requires_abort() => match abort() {
            Ok(()) => Ending::Aborted(error),
            Err(abort_error) => Ending::Open {
                error,
                abort_error: Some(abort_error),
            },
        },
        Err(error) => Ending::Open {
            error,
            abort_error: None,
        },
    }
}

impl Worker {
    fn run(mut self) {
        // How often an idle worker looks at the closed flag.
        const IDLE_CHECK: Duration = Duration::from_millis(100);
        let mut replaced_at: Option<Instant> = None;
        loop {
            let first = match self.intake.recv_timeout(IDLE_CHECK) {
                Ok(pending) => pending,
                Err(RecvTimeoutError::Timeout) => {
                    // Serve the producer's events (errors, logs) while idle.
                    if let Some(tx) = &self.producer {
                        tx.producer.poll(Duration::ZERO);
                    } else if !self.closed.load(Ordering::Acquire)
                        && replaced_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
                    {
                        // A producer lost with a transaction open holds back every reader of
                        // its partitions (the restore of a partition assigned here included)
                        // until that transaction ends: initialising its replacement ends it at
                        // once, rather than at the transaction timeout or at the next command.
                        replaced_at = Some(Instant::now());
                        if let Err(error) = self.ensure_producer() {
                            tracing::debug!(worker = self.index, %error, "producer not replaced yet");
                        }
                    }
                    // Closed and nothing left: the queue is drained.
                    if self.closed.load(Ordering::Acquire) && self.intake.is_empty() {
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let batch = self.gather(first);
            self.commit(batch);
        }
        tracing::info!(worker = self.index, "producer worker drained and stopped");
    }

    /// Takes up to `max_batch` records, waiting at most `linger` after the first.
    fn gather(&self, first: Pending) -> Vec<Pending> {
        let batch = gather(
            &self.intake,
            first,
            self.config.max_batch,
            self.config.linger,
        );
        let taken = Instant::now();
        for pending in &batch {
            self.metrics
                .queue_wait_seconds
                .observe(taken.duration_since(pending.queued_at).as_secs_f64());
        }
        batch
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        // A record whose partition was given up meanwhile is not sent at all.
        let (batch, moved): (Vec<Pending>, Vec<Pending>) = batch
            .into_iter()
            .partition(|pending| pending.record.lease.as_ref().is_none_or(Lease::is_valid));
        for pending in moved {
            (pending.on_outcome)(Err(CommitError::Aborted(
                "the partition moved to another instance before the command was sent".into(),
            )));
        }
        if batch.is_empty() {
            return;
        }
        let span = tracing::debug_span!("transaction", worker = self.index, size = batch.len());
        let _guard = span.enter();
        #[allow(clippy::cast_precision_loss)] // batch sizes are far below 2^52
        self.metrics.batch_size.observe(batch.len() as f64);
        let started = Instant::now();
        let verdict = self.transact(&batch);
        let outcome = match &verdict {
            Verdict::Committed(_) => {
                self.metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                "committed"
            }
            Verdict::NotCommitted(_) => "not_committed",
            Verdict::InDoubt { .. } => "in_doubt",
        };
        self.metrics
            .transactions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        let answers: Vec<CommitResult> = match verdict {
            Verdict::Committed(positions) => positions.into_iter().map(Ok).collect(),
            Verdict::NotCommitted(error) => {
                tracing::warn!(worker = self.index, %error, "batch not committed");
                vec![Err(error); batch.len()]
            }
            Verdict::InDoubt { error, deliveries } => {
                tracing::warn!(worker = self.index, %error, "commit outcome unknown; resolving from the log");
                self.resolve(&batch, &deliveries, &error)
            }
        };
        for (pending, answer) in batch.into_iter().zip(answers) {
            (pending.on_outcome)(answer);
        }
    }

    /// Initialises a replacement producer if the last one failed.
    fn ensure_producer(&mut self) -> Result<(), CommitError> {
        if self.fenced_out.load(Ordering::Acquire) {
            return Err(CommitError::ProducerUnavailable(
                "fenced repeatedly by another instance with the same instance id; restart with a unique COMMAND_INSTANCE_ID".into(),
            ));
        }
        if self.producer.is_none() {
            let strays = self.strays.load(Ordering::Acquire);
            if strays > MAX_STRAYS
                && self
                    .stranded_at
                    .is_some_and(|at| at.elapsed() < STRAY_PATIENCE)
            {
                return Err(CommitError::ProducerUnavailable(format!(
                    "{strays} calls to the command group's coordinator are still unanswered"
                )));
            }
            let fresh = TxProducer::create(&self.config, self.index, &self.strays)
                .map_err(|error| CommitError::ProducerUnavailable(error.to_string()))?;
            self.producer = Some(fresh);
            self.live_producers.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn discard_producer(&mut self, why: &KafkaError) {
        if let Some(old) = self.producer.take() {
            self.live_producers.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(worker = self.index, transactional_id = %old.id, error = %why, "replacing the transactional producer");
        }
    }

    /// Gives up a producer whose offsets call did not answer in time. It is never asked to
    /// commit; its replacement's `init_transactions` aborts its transaction.
    fn strand_producer(&mut self, why: &OffsetsError) {
        if let Some(old) = self.producer.take() {
            self.live_producers.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(worker = self.index, transactional_id = %old.id, error = %why, "giving up the transactional producer while its call is under way");
            // A thread that is gone has nothing under way.
            if matches!(why, OffsetsError::Unanswered(_)) {
                old.offsets.strand();
                self.stranded_at = Some(Instant::now());
            }
        }
    }

    fn transact(&mut self, batch: &[Pending]) -> Verdict {
        let timeout = self.config.kafka_timeout;
        if let Err(error) = self.ensure_producer() {
            return Verdict::NotCommitted(error);
        }
        // Taken before anything is sent: metadata of a later generation could only come after
        // this instance released the partitions of an earlier one, which the leases check below.
        let membership = match &self.config.fence {
            None => None,
            Some(fence) => match fence.group_metadata() {
                Some(metadata) => Some(metadata),
                None => {
                    return Verdict::NotCommitted(CommitError::Aborted(
                        "this instance is not a member of the command group".into(),
                    ));
                }
            },
        };
        let Some(TxProducer {
            producer, offsets, ..
        }) = self.producer.as_ref()
        else {
            return Verdict::NotCommitted(CommitError::ProducerUnavailable("no producer".into()));
        };
        if let Err(e) = producer.begin_transaction() {
            // Nothing was sent: certainly not committed.
            let verdict = Verdict::NotCommitted(CommitError::Aborted(e.to_string()));
            self.discard_producer(&e);
            return verdict;
        }
        let begun = Instant::now();
        producer.context().reset(batch.len());
        for (index, pending) in batch.iter().enumerate() {
            let record = BaseRecord::with_opaque_to(&pending.record.topic, index)
                .partition(pending.record.partition)
                .key(pending.record.key.as_bytes())
                .payload(&pending.record.value);
            if let Err((e, _)) = producer.send(record) {
                // Never committed: abort, and if even that fails, the broker aborts the
                // transaction when the replacement producer fences this one.
                let aborted = producer.abort_transaction(timeout);
                let verdict = Verdict::NotCommitted(CommitError::Aborted(e.to_string()));
                if aborted.is_err() {
                    self.discard_producer(&e);
                }
                return verdict;
            }
        }
        // Serve the delivery reports before committing, so the commit's own flush finds
        // nothing left to wait for. Bounded by `message.timeout.ms`.
        await_deliveries(producer, Instant::now() + timeout + Duration::from_secs(1));
        self.metrics
            .send_seconds
            .observe(begun.elapsed().as_secs_f64());
        let deliveries = producer.context().take();
        if deliveries.iter().any(Option::is_none) {
            // A record the broker did not take: the transaction cannot commit, and no commit
            // was attempted. If even the abort fails, the broker aborts the transaction when the
            // replacement producer fences this one.
            let aborted = producer.abort_transaction(timeout);
            if let Err(e) = aborted {
                self.discard_producer(&e);
            }
            return Verdict::NotCommitted(CommitError::Aborted(
                "a record was not delivered".into(),
            ));
        }
        if let Some(membership) = &membership {
            let asked = Instant::now();
            let refusal = if batch
                .iter()
                .any(|p| p.record.lease.as_ref().is_some_and(|l| !l.is_valid()))
            {
                Some("the partition moved to another instance".to_owned())
            } else if let Err(e) =
                offsets.send(written(batch, &deliveries), Arc::clone(membership), timeout)
            {
                if matches!(e, OffsetsError::Unanswered(_) | OffsetsError::Gone) {
                    // The call may still be under way: the producer cannot be used again, and
                    // the transaction it has open is never committed.
                    let why = format!("the command group's offsets could not be sent: {e}");
                    self.strand_producer(&e);
                    return Verdict::NotCommitted(CommitError::Aborted(why));
                }
                Some(format!(
                    "the command group refused this instance's commit: {e}"
                ))
            } else if self
                .config
                .fence
                .as_ref()
                .is_some_and(|fence| asked.elapsed() >= fence.session_timeout() / 2)
            {
                // The group vouched for this member when the offsets went, but a process
                // paused since (SIGSTOP, a long GC-like stall) may have been replaced by now: the
                // coordinator checks the generation only with the offsets, not at the commit.
                Some("this instance stalled between its offsets and its commit".to_owned())
            } else {
                None
            };
            if let Some(why) = refusal {
                // The commit was never asked for, so the transaction cannot commit; if even the
                // abort fails, the broker aborts it when the replacement producer fences this one.
                if let Err(e) = producer.abort_transaction(timeout) {
                    self.discard_producer(&e);
                }
                tracing::warn!(worker = self.index, %why, "batch not committed");
                return Verdict::NotCommitted(CommitError::Aborted(why));
            }
        }
        let ending = Instant::now();
        let end = end_transaction(
            || producer.commit_transaction(timeout),
            || producer.abort_transaction(timeout),
        );
        match end {
            Ending::Committed => {
                self.metrics
                    .end_seconds
                    .observe(ending.elapsed().as_secs_f64());
                Verdict::Committed(deliveries.into_iter().flatten().collect())
            }
            Ending::Aborted(why) => Verdict::NotCommitted(CommitError::Aborted(why.to_string())),
            // librdkafka warns that when the abort fails the commit may still have reached the
            // coordinator: only the log can tell.
            Ending::Open {
                error,
                abort_error: Some(abort_error),
            } => {
                self.discard_producer(&abort_error);
                Verdict::InDoubt {
                    error: error.to_string(),
                    deliveries,
                }
            }
            // Fatal (e.g. fenced) or still failing: the outcome is open.
            Ending::Open {
                error,
                abort_error: None,
            } => {
                self.note_fencing(&error);
                self.discard_producer(&error);
                Verdict::InDoubt {
                    error: error.to_string(),
                    deliveries,
                }
            }
        }
    }

    /// Counts fencings; a producer fenced again and again means another live instance uses
    /// the same `transactional.id`s, and replacing ours would only fence it back in turn.
    fn note_fencing(&mut self, error: &KafkaError) {
        let fenced = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        );
        if !fenced {
            return;
        }
        let now = Instant::now();
        self.fencings
            .retain(|at| now.duration_since(*at) < FENCING_WINDOW);
        self.fencings.push(now);
        if self.fencings.len() >= MAX_FENCINGS {
            tracing::error!(
                worker = self.index,
                prefix = %self.config.transactional_id_prefix,
                "fenced {MAX_FENCINGS} times within {FENCING_WINDOW:?}: another instance uses the same \
                 instance id; this worker stops producing"
            );
            self.fenced_out.store(true, Ordering::Release);
        }
    }

    /// Learns from the log which records of an in-doubt batch committed. A new producer under the
    /// same `transactional.id` must be initialised first: that is what makes the broker complete
    /// or abort the old transaction, after which a read-committed read is the truth.
    fn resolve(
        &mut self,
        batch: &[Pending],
        deliveries: &[Option<Position>],
        error: &str,
    ) -> Vec<CommitResult> {
        let mut backoff = Duration::from_millis(200);
        let mut closed_since: Option<Instant> = None;
        let mut undecided_since: Option<Instant> = None;
        loop {
            if self.fenced_out.load(Ordering::Acquire) {
                // Another instance owns our transactional ids; it has the log's truth.
                return vec![Err(CommitError::InDoubt(error.to_owned())); batch.len()];
            }
            if self.closed.load(Ordering::Acquire) {
                let since = *closed_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.config.kafka_timeout {
                    tracing::error!(worker = self.index, "shutting down with a batch in doubt");
                    return vec![Err(CommitError::InDoubt(error.to_owned())); batch.len()];
                }
            }
            let attempt = match self.ensure_producer() {
                Err(why) => Err(why),
                Ok(()) => {
                    let read = self.check_log(batch, deliveries);
                    if read.is_err() {
                        undecided_since.get_or_insert_with(Instant::now);
                    }
                    read
                }
            };
            match attempt {
                Ok(answers) => return answers,
                // Kafka answers, but the log cannot tell yet: a transaction before the records
                // stays open (one the broker lost track of can stay open indefinitely). The
                // worker does not wait for it with every command behind it: the batch stays in
                // doubt (its aggregates and keys answer so until a restart reads the log).
                Err(why)
                    if undecided_since
                        .is_some_and(|since| since.elapsed() > 3 * self.config.kafka_timeout) =>
                {
                    tracing::error!(worker = self.index, error = %why, "in-doubt batch left in doubt: the log cannot tell its outcome");
                    return vec![Err(CommitError::InDoubt(error.to_owned())); batch.len()];
                }
                Err(why) => {
                    tracing::warn!(worker = self.index, error = %why, "in-doubt batch not resolved yet; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn check_log(
        &self,
        batch: &[Pending],
        deliveries: &[Option<Position>],
    ) -> Result<Vec<CommitResult>, CommitError> {
        let consumer: BaseConsumer = self
            .config
            .kafka
            .client_config()
            .set(
                "group.id",
                format!(
                    "{}-{}-resolver",
                    self.config.transactional_id_prefix, self.index
                ),
            )
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| CommitError::ProducerUnavailable(e.to_string()))?;
        let mut answers = Vec::with_capacity(batch.len());
        for (pending, delivery) in batch.iter().zip(deliveries) {
            let Some(position) = delivery else {
                // Never written to the partition, so not part of any committed transaction.
                answers.push(Err(CommitError::Aborted(
                    "the record was not delivered".into(),
                )));
                continue;
            };
            let committed = self.is_committed(&consumer, &pending.record, *position)?;
            answers.push(if committed {
                Ok(*position)
            } else {
                Err(CommitError::Aborted("the transaction was aborted".into()))
            });
        }
        Ok(answers)
    }

    /// Whether the record at `position` is visible to a read-committed consumer.
    fn is_committed(
        &self,
        consumer: &BaseConsumer,
        record: &Record,
        position: Position,
    ) -> Result<bool, CommitError> {
        let key = &record.key;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(
                &record.topic,
                position.partition,
                Offset::Offset(position.offset),
            )
            .map_err(|e| CommitError::InDoubt(e.to_string()))?;
        let deadline = Instant::now() + self.config.kafka_timeout;
        // Only once every transaction up to the record is decided does a read-committed read
        // tell committed from aborted; before that, the end of what it may read (the last
        // stable offset, which is what a read-committed client is told is the end) comes
        // before the record, and it would look aborted.
        loop {
            let (_, stable) = consumer
                .fetch_watermarks(&record.topic, position.partition, self.config.kafka_timeout)
                .map_err(|e| CommitError::InDoubt(e.to_string()))?;
            if stable > position.offset {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CommitError::InDoubt(
                    "transactions before the record are still open".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        consumer
            .assign(&assignment)
            .map_err(|e| CommitError::InDoubt(e.to_string()))?;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                // The end of the committed data, with nothing visible at or after the offset.
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(false),
                Some(Err(e)) => return Err(CommitError::InDoubt(e.to_string())),
                // Aborted records are skipped, so the first visible one is ours only if committed.
                Some(Ok(message)) => {
                    return Ok(message.offset() == position.offset
                        && message.key() == Some(key.as_bytes()));
                }
            }
        }
        Err(CommitError::InDoubt(
            "the log could not be read in time".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A transactional failure of each kind the classification tells apart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fake {
        Retriable,
        Abortable,
        Fatal,
    }

    impl std::fmt::Display for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl TxnFailure for Fake {
        fn retriable(&self) -> bool {
            *self == Self::Retriable
        }

        fn requires_abort(&self) -> bool {
            *self == Self::Abortable
        }
    }

    /// Ends a transaction whose commit calls answer `commits` in turn and whose abort answers
    /// `abort`; returns the ending, the commit calls made, and whether an abort was tried.
    fn end(commits: &[Result<(), Fake>], abort: Result<(), Fake>) -> (Ending<Fake>, usize, bool) {
        let mut calls = 0;
        let mut aborted = false;
        let ending = end_transaction(
            || {
                calls += 1;
                commits[calls - 1]
            },
            || {
                aborted = true;
                abort
            },
        );
        (ending, calls, aborted)
    }

    #[test]
    fn a_commit_that_succeeds_is_committed_without_an_abort() {
        assert_eq!(end(&[Ok(())], Ok(())), (Ending::Committed, 1, false));
    }

    #[test]
    fn a_retriable_failure_is_retried_once_as_the_same_commit() {
        use Fake::*;
        assert_eq!(
            end(&[Err(Retriable), Ok(())], Ok(())),
            (Ending::Committed, 2, false)
        );
        // Still failing after the retry: the commit may have reached the coordinator.
        assert_eq!(
            end(&[Err(Retriable), Err(Retriable)], Ok(())),
            (
                Ending::Open {
                    error: Retriable,
                    abort_error: None
                },
                2,
                false
            )
        );
        // The retry says abort: aborted, certainly not committed.
        assert_eq!(
            end(&[Err(Retriable), Err(Abortable)], Ok(())),
            (Ending::Aborted(Abortable), 2, true)
        );
    }

    #[test]
    fn an_abortable_failure_is_not_committed_only_once_the_abort_succeeds() {
        use Fake::*;
        assert_eq!(
            end(&[Err(Abortable)], Ok(())),
            (Ending::Aborted(Abortable), 1, true)
        );
        assert_eq!(
            end(&[Err(Abortable)], Err(Fatal)),
            (
                Ending::Open {
                    error: Abortable,
                    abort_error: Some(Fatal)
                },
                1,
                true
            )
        );
    }

    #[test]
    fn a_fatal_failure_leaves_the_outcome_open_and_is_not_aborted() {
        assert_eq!(
            end(&[Err(Fake::Fatal)], Ok(())),
            (
                Ending::Open {
                    error: Fake::Fatal,
                    abort_error: None
                },
                1,
                false
            )
        );
    }

    #[test]
    fn a_batch_stops_at_its_size() {
        let (queue, intake) = crossbeam_channel::bounded(16);
        for i in 1..10 {
            queue.send(i).unwrap();
        }
        // A long linger is not waited for: the batch is full first.
        let batch = gather(&intake, 0, 4, Duration::from_secs(60));
        assert_eq!(batch, [0, 1, 2, 3]);
        assert_eq!(
            intake.len(),
            6,
            "the rest waits for the next batch, in order"
        );
        let first = intake.recv().unwrap();
        assert_eq!(
            gather(&intake, first, 4, Duration::from_secs(60)),
            [4, 5, 6, 7]
        );
    }

    #[test]
    fn a_batch_takes_what_arrives_within_the_linger_and_no_more() {
        let (queue, intake) = crossbeam_channel::bounded(16);
        queue.send(1).unwrap();
        let late = std::thread::spawn(move || {
            // Arrives long after the linger: not part of this batch.
            std::thread::sleep(Duration::from_millis(300));
            queue.send(2).unwrap();
            queue
        });
        let batch = gather(&intake, 0, 100, Duration::from_millis(20));
        assert_eq!(batch, [0, 1]);
        let _queue = late.join().unwrap();
        assert_eq!(intake.recv().unwrap(), 2);
    }

    #[test]
    fn a_batch_of_one_does_not_wait() {
        let (_queue, intake) = crossbeam_channel::bounded::<u32>(1);
        assert_eq!(gather(&intake, 7, 1, Duration::from_secs(60)), [7]);
    }
}

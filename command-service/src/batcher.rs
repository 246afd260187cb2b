//! Group commit: a bounded in-memory queue in front of a pool of transactional Kafka producers.
//!
//! Request handlers [`Batcher::submit`] an encoded record and await its answer. Each worker
//! thread owns one long-lived transactional producer (`transactional.id` = `<instance>-<index>`,
//! stable across restarts so a restarted instance fences its own zombies). A worker takes what is
//! queued, up to `max_batch` records or `linger` after the first one, sends the batch inside one
//! transaction, commits, and only then answers every waiting request with its record's position.
//! While one worker commits, the others keep gathering, so many requests share one commit.
//!
//! Invariants:
//! - A request is answered `Ok` only after the transaction holding its record committed.
//! - A batch whose transaction fails is aborted (invisible to read-committed consumers) and every
//!   request in it is answered with an error; a fatal producer error (e.g. fenced) replaces the
//!   producer instead of retrying with it.
//! - The queue is bounded: [`Batcher::submit`] fails at once with [`SubmitError::Full`].
//! - [`Batcher::close`] stops intake; the workers drain what was queued, then exit.
//!
//! The batcher knows nothing of the domain: it moves keyed byte records to one topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use shared_events::Position;
use tokio::sync::oneshot;

/// How a batcher is shaped; see [`crate::config::Config`] for meanings and defaults.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Prefix of each worker's `transactional.id`; must be unique per running instance.
    pub transactional_id_prefix: String,
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub linger: Duration,
    /// Bound on every blocking Kafka call: init, commit, abort.
    pub kafka_timeout: Duration,
    pub transaction_timeout: Duration,
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
    #[error("the Kafka transaction failed and was aborted: {0}")]
    Aborted(String),
    #[error("the Kafka producer is unavailable: {0}")]
    ProducerUnavailable(String),
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
    #[error("could not start a producer worker thread")]
    Thread(#[source] std::io::Error),
}

/// The answer a waiting request receives.
pub type CommitResult = Result<Position, CommitError>;

/// One record waiting for its transaction.
struct Pending {
    key: String,
    value: Vec<u8>,
    reply: oneshot::Sender<CommitResult>,
}

/// The queue and its workers. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Batcher {
    queue: Sender<Pending>,
    closed: Arc<AtomicBool>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("key", &self.key).finish()
    }
}

impl Batcher {
    /// Creates the producers, initialises their transactions (fencing any previous instance with
    /// the same ids) and starts the workers. Blocks for up to `kafka_timeout` per producer, so
    /// call it off the async runtime.
    pub fn start(config: BatcherConfig) -> Result<Self, StartError> {
        let (queue, intake) = crossbeam_channel::bounded(config.queue_capacity);
        let closed = Arc::new(AtomicBool::new(false));
        let config = Arc::new(config);
        let mut workers = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let producer = TxProducer::create(&config, index)?;
            let worker = Worker {
                config: Arc::clone(&config),
                index,
                producer,
                intake: intake.clone(),
                closed: Arc::clone(&closed),
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
            workers: std::sync::Mutex::new(workers),
        })
    }

    /// Queues a record; the receiver yields once its transaction committed or failed.
    pub fn submit(
        &self,
        key: String,
        value: Vec<u8>,
    ) -> Result<oneshot::Receiver<CommitResult>, SubmitError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SubmitError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Pending { key, value, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(SubmitError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        }
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

/// A transactional producer with its id, ready for `begin_transaction`.
struct TxProducer {
    id: String,
    producer: FutureProducer,
}

impl TxProducer {
    fn create(config: &BatcherConfig, index: usize) -> Result<Self, StartError> {
        let id = format!("{}-{index}", config.transactional_id_prefix);
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Kafka's default partitioner for keyed records, so every client and every query
            // replica computes the same partition for an order id.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "1")
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
            .create()
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
        tracing::info!(transactional_id = %id, "transactional producer ready");
        Ok(Self { id, producer })
    }
}

struct Worker {
    config: Arc<BatcherConfig>,
    index: usize,
    producer: TxProducer,
    intake: Receiver<Pending>,
    closed: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        // How often an idle worker looks at the closed flag.
        const IDLE_CHECK: Duration = Duration::from_millis(100);
        loop {
            let first = match self.intake.recv_timeout(IDLE_CHECK) {
                Ok(pending) => pending,
                Err(RecvTimeoutError::Timeout) => {
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
        let deadline = Instant::now() + self.config.linger;
        let mut batch = Vec::with_capacity(self.config.max_batch);
        batch.push(first);
        while batch.len() < self.config.max_batch {
            match self.intake.recv_deadline(deadline) {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        batch
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let span = tracing::debug_span!("transaction", worker = self.index, size = batch.len());
        let _guard = span.enter();
        match self.send_and_commit(&batch) {
            Ok(deliveries) => {
                for (pending, delivery) in batch.into_iter().zip(deliveries) {
                    let answer = match futures::executor::block_on(delivery) {
                        Ok(Ok(d)) => Ok(Position {
                            partition: d.partition,
                            offset: d.offset,
                        }),
                        // Commit succeeded, so the record is in the log; a missing delivery
                        // report would be a client bug, reported rather than guessed at.
                        Ok(Err((e, _))) => Err(CommitError::Aborted(e.to_string())),
                        Err(_) => Err(CommitError::Aborted("delivery report lost".into())),
                    };
                    // A receiver that went away (client timed out) is not our failure.
                    let _ = pending.reply.send(answer);
                }
            }
            Err(error) => {
                tracing::warn!(worker = self.index, %error, "transaction failed; batch aborted");
                for pending in batch {
                    let _ = pending.reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn send_and_commit(&mut self, batch: &[Pending]) -> Result<Vec<DeliveryFuture>, CommitError> {
        let producer = &self.producer.producer;
        if let Err(e) = producer.begin_transaction() {
            return Err(self.recover(e));
        }
        let mut deliveries = Vec::with_capacity(batch.len());
        for pending in batch {
            let record = FutureRecord::to(&self.config.topic)
                .key(pending.key.as_bytes())
                .payload(&pending.value);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => return Err(self.recover(e)),
            }
        }
        match producer.commit_transaction(self.config.kafka_timeout) {
            Ok(()) => Ok(deliveries),
            Err(e) => Err(self.recover(e)),
        }
    }

    /// Brings the producer back to a state where it can begin a new transaction after `error`,
    /// and says what to tell the waiting requests.
    fn recover(&mut self, error: KafkaError) -> CommitError {
        let fatal = matches!(&error, KafkaError::Transaction(e) if e.is_fatal());
        if !fatal {
            // Abortable or unknown: abort, so nothing of the batch becomes visible. If the abort
            // itself fails the producer is in an unknown state and is replaced below.
            match self
                .producer
                .producer
                .abort_transaction(self.config.kafka_timeout)
            {
                Ok(()) => return CommitError::Aborted(error.to_string()),
                Err(abort_error) => {
                    tracing::warn!(worker = self.index, %abort_error, "abort failed; replacing producer");
                }
            }
        }
        tracing::warn!(
            worker = self.index,
            transactional_id = %self.producer.id,
            %error,
            "replacing the transactional producer"
        );
        match TxProducer::create(&self.config, self.index) {
            Ok(fresh) => {
                self.producer = fresh;
                CommitError::Aborted(error.to_string())
            }
            Err(create_error) => {
                tracing::error!(worker = self.index, error = %create_error, "producer not replaced; will retry on next batch");
                CommitError::ProducerUnavailable(create_error.to_string())
            }
        }
    }
}

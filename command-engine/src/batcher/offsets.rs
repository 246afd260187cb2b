//! The one transactional call librdkafka does not bound, made on a thread of its own.
//!
//! `send_offsets_to_transaction` waits for its answer without a timeout of its own: when the
//! group coordinator it has cached is down, the lookup of the next one waits for some broker to
//! change state, and the call's timeout is never checked (confluentinc/librdkafka#5456 and
//! #5511, open in 2.12). A worker that made the call itself stayed blocked with its batch: its
//! requests unanswered, its partitions' leases held (so no handover could finish) and its
//! transaction open (so every read-committed reader of those partitions waited for the
//! transaction timeout).
//!
//! So each producer has an [`OffsetsCaller`]: a thread that makes the call and hands back the
//! answer, which the worker waits for up to a deadline of its own. Past it, the worker gives
//! the producer up ([`OffsetsCaller::strand`]): it never asks that producer to commit, and the
//! replacement's `init_transactions` under the same `transactional.id` makes the coordinator
//! abort the open transaction. The stranded thread ends, and drops the producer, whenever the
//! call returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};

use super::Deliveries;

/// Why the offsets did not join the transaction.
#[derive(Debug, thiserror::Error)]
pub(super) enum OffsetsError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// No answer by the deadline: the call may still be under way, on the producer's thread.
    #[error("no answer from the command group's coordinator within {0:?}")]
    Unanswered(Duration),
    /// The thread is gone (it could not be started, or it panicked).
    #[error("the thread that sends the group's offsets is gone")]
    Gone,
}

struct Call {
    offsets: TopicPartitionList,
    metadata: Arc<ConsumerGroupMetadata>,
    timeout: Duration,
}

/// Makes one producer's `send_offsets_to_transaction` calls, one at a time.
pub(super) struct OffsetsCaller {
    calls: Sender<Call>,
    /// One answer per call. A call that is not answered in time strands the caller, so no
    /// late answer is ever taken for a later call's.
    answers: Receiver<Result<(), KafkaError>>,
    stranded: Arc<AtomicBool>,
    /// Threads of this worker whose call outlived the worker's wait and is still under way.
    strays: Arc<AtomicUsize>,
}

impl OffsetsCaller {
    /// Starts the thread; `strays` counts the worker's stranded threads that have not ended yet.
    pub(super) fn start(
        name: String,
        producer: Arc<BaseProducer<Deliveries>>,
        strays: Arc<AtomicUsize>,
    ) -> std::io::Result<Self> {
        // One call at a time: the worker waits for each answer before it makes another.
        let (calls, requests) = crossbeam_channel::bounded::<Call>(1);
        let (answer, answers) = crossbeam_channel::bounded(1);
        let stranded = Arc::new(AtomicBool::new(false));
        let (flag, count) = (Arc::clone(&stranded), Arc::clone(&strays));
        std::thread::Builder::new()
            .name(name)
            .spawn(move || serve(&producer, &requests, &answer, &flag, &count))?;
        Ok(Self {
            calls,
            answers,
            stranded,
            strays,
        })
    }

    /// Adds `offsets` to the producer's open transaction as the offsets of `metadata`'s group;
    /// waits for the answer up to `timeout` and a second (librdkafka's own bound, when it holds).
    pub(super) fn send(
        &self,
        offsets: TopicPartitionList,
        metadata: Arc<ConsumerGroupMetadata>,
        timeout: Duration,
    ) -> Result<(), OffsetsError> {
        self.calls
            .send(Call {
                offsets,
                metadata,
                timeout,
            })
            .map_err(|_| OffsetsError::Gone)?;
        let wait = timeout + Duration::from_secs(1);
        match self.answers.recv_timeout(wait) {
            Ok(result) => result.map_err(OffsetsError::from),
            Err(RecvTimeoutError::Timeout) => Err(OffsetsError::Unanswered(wait)),
            Err(RecvTimeoutError::Disconnected) => Err(OffsetsError::Gone),
        }
    }

    /// Leaves the thread to its call: it ends, and drops its producer, when the call returns.
    /// Counted in `strays` until then.
    pub(super) fn strand(self) {
        // Counted before the thread can see its channel closed (when `self` is dropped), so
        // that its decrement on the way out always finds this increment.
        self.strays.fetch_add(1, Ordering::AcqRel);
        self.stranded.store(true, Ordering::Release);
    }
}

fn serve(
    producer: &BaseProducer<Deliveries>,
    requests: &Receiver<Call>,
    answer: &Sender<Result<(), KafkaError>>,
    stranded: &AtomicBool,
    strays: &AtomicUsize,
) {
    for call in requests {
        let result =
            producer.send_offsets_to_transaction(&call.offsets, &call.metadata, call.timeout);
        // The worker may have stopped waiting; then nobody reads this. Never blocks: the
        // worker takes each answer before it makes the next call.
        let _ = answer.try_send(result);
    }
    if stranded.load(Ordering::Acquire) {
        strays.fetch_sub(1, Ordering::AcqRel);
        tracing::info!("a stranded offsets call returned at last; its producer is dropped");
    }
}

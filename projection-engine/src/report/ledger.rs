//! The ledger of report runs: a compacted topic, one partition, the latest record of each run
//! under its id. Every replica follows it into memory, so that any replica answers for any
//! run, and a run outlives the replica that ran it.
//!
//! Why a topic: the runs' state must survive the loss of any replica and be readable from every
//! other, and Kafka is the one store every replica shares. Compaction keeps one record per run
//! (a finished run's record holds its result), and a tombstone removes one.
//!
//! Ownership is settled by the log's order, so no two replicas run the same attempt of a
//! report. Each record names the replica that wrote it and the attempt it belongs to; a
//! replica applies a run's records in log order and accepts one only if:
//! - it is the first of the run, or
//! - it opens a later attempt (a claim: the first claim of an attempt wins, any other
//!   claim of that attempt comes later in the log and is refused), or
//! - its writer owns the current attempt (progress, a result, or a release).
//!
//! A finished run (done, failed, cancelled, interrupted) accepts nothing more. A replica that
//! claimed a run reads its claim back before it starts, and runs only if its claim won.
//! Cancellation requests live under their own key (`<id>/cancel`), so compaction never drops
//! the run's record for them.

use std::collections::BTreeMap;
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
    /// The replica running it, or none while it waits to be claimed.
    pub owner: Option<String>,
    /// The replica that wrote this record.
    pub writer: String,
    /// 1 for the first run; each claim after a loss adds one.
    pub attempt: u32,
    pub events_read: u64,
    pub events_per_second: f64,
    pub submitted_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
    /// When done: `{"columns", "rows", "events", "undecodable"}`.
    pub result: Option<serde_json::Value>,
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
}

const CANCEL_SUFFIX: &str = "/cancel";

/// The ledger: the topic, the producer that writes it, and this replica's copy of it.
pub struct Ledger {
    pub topic: String,
    pub replica: String,
    producer: FutureProducer,
    timeout: Duration,
    runs: Mutex<BTreeMap<String, Known>>,
    /// The next offset of the topic applied here.
    applied: watch::Sender<i64>,
    /// Woken whenever a record is applied.
    pub changed: Notify,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.topic)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// A ledger over `topic`; call [`Ledger::follow`] to fill it.
    pub fn new(
        kafka: &ClientConfig,
        topic: String,
        replica: String,
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
            replica,
            producer,
            timeout,
            runs: Mutex::new(BTreeMap::new()),
            applied: watch::Sender::new(0),
            changed: Notify::new(),
        })
    }

    fn runs(&self) -> MutexGuard<'_, BTreeMap<String, Known>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, id: &str) -> Option<Known> {
        self.runs().get(id).cloned()
    }

    /// Every run, newest first.
    pub fn list(&self) -> Vec<Known> {
        let mut runs: Vec<Known> = self.runs().values().cloned().collect();
        runs.sort_by(|a, b| {
            (b.run.submitted_at_ms, &b.run.id).cmp(&(a.run.submitted_at_ms, &a.run.id))
        });
        runs
    }

    /// Writes a run's record and waits until this replica has applied it; true if it was
    /// accepted (a claim that lost, or a record of an owner that lost its run, is not).
    pub async fn write(&self, run: &Run) -> Result<bool, LedgerError> {
        let value = serde_json::to_vec(run)?;
        let offset = self.send(&run.id, Some(&value)).await?;
        self.wait_applied(offset + 1).await?;
        Ok(self.get(&run.id).is_some_and(|known| {
            known.run.attempt == run.attempt && known.run.writer == run.writer
        }))
    }

    /// Asks whoever owns run `id` to cancel it.
    pub async fn request_cancel(&self, id: &str) -> Result<(), LedgerError> {
        let offset = self
            .send(&format!("{id}{CANCEL_SUFFIX}"), Some(b"{}"))
            .await?;
        self.wait_applied(offset + 1).await
    }

    /// Removes a finished run, its result and its cancellation request.
    pub async fn remove(&self, id: &str) -> Result<(), LedgerError> {
        self.send(&format!("{id}{CANCEL_SUFFIX}"), None).await?;
        let offset = self.send(id, None).await?;
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
            let mut runs = self.runs();
            if let Some(id) = key.strip_suffix(CANCEL_SUFFIX) {
                if let Some(known) = runs.get_mut(id) {
                    known.cancel_requested = value.is_some();
                    known.seen = Instant::now();
                }
            } else {
                match value.map(serde_json::from_slice::<Run>) {
                    None => {
                        runs.remove(key.as_ref());
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, %key, offset, "reports ledger: skipping a record that does not parse");
                    }
                    Some(Ok(run)) => accept(&mut runs, run),
                }
            }
        }
        self.applied.send_replace(offset + 1);
        self.changed.notify_waiters();
    }

    /// Follows the topic from its beginning until `shutdown`.
    pub async fn follow(self: Arc<Self>, consumer: StreamConsumer, shutdown: CancellationToken) {
        let mut assignment = TopicPartitionList::new();
        if let Err(error) = assignment
            .add_partition_offset(&self.topic, 0, Offset::Beginning)
            .and_then(|()| consumer.assign(&assignment))
        {
            tracing::error!(%error, "reports ledger: could not assign its topic");
            return;
        }
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = consumer.recv() => message,
            };
            match message {
                Ok(message) => self.apply(
                    message.key().unwrap_or_default(),
                    message.payload(),
                    message.offset(),
                ),
                Err(error) => {
                    tracing::warn!(%error, "reports ledger: consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Creates the ledger's topic unless it exists: one partition (the log's order settles
/// ownership), compacted (one record per run), `replication` copies (-1: the cluster's
/// default).
pub async fn create_topic(
    kafka: &ClientConfig,
    topic: &str,
    replication: i32,
    timeout: Duration,
) -> Result<(), LedgerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
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
    Ok(())
}

/// The acceptance rule: see the module's documentation.
fn accept(runs: &mut BTreeMap<String, Known>, run: Run) {
    let now = Instant::now();
    match runs.get_mut(&run.id) {
        None => {
            runs.insert(
                run.id.clone(),
                Known {
                    run,
                    cancel_requested: false,
                    seen: now,
                },
            );
        }
        Some(known) => {
            let current = &known.run;
            let accepted = !current.state.finished()
                && (run.attempt > current.attempt
                    || (run.attempt == current.attempt
                        && current.owner.as_deref() == Some(run.writer.as_str())));
            if accepted {
                known.run = run;
                known.seen = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(attempt: u32, state: RunState, owner: Option<&str>, writer: &str) -> Run {
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
            writer: writer.into(),
            attempt,
            events_read: 0,
            events_per_second: 0.0,
            submitted_at_ms: 1,
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            result: None,
        }
    }

    fn current(runs: &BTreeMap<String, Known>) -> (u32, Option<String>, RunState) {
        let known = &runs["r-1"];
        (known.run.attempt, known.run.owner.clone(), known.run.state)
    }

    #[test]
    fn the_first_claim_of_an_attempt_wins() {
        let mut runs = BTreeMap::new();
        accept(&mut runs, run(1, RunState::Running, Some("a"), "a"));
        // b and c both think a is gone; b's claim reaches the log first.
        accept(&mut runs, run(2, RunState::Queued, Some("b"), "b"));
        accept(&mut runs, run(2, RunState::Queued, Some("c"), "c"));
        assert_eq!(current(&runs), (2, Some("b".into()), RunState::Queued));
        // a was only slow: its progress no longer counts.
        accept(&mut runs, run(1, RunState::Running, Some("a"), "a"));
        assert_eq!(current(&runs).1.as_deref(), Some("b"));
        // b's own progress does.
        accept(&mut runs, run(2, RunState::Running, Some("b"), "b"));
        assert_eq!(current(&runs).2, RunState::Running);
    }

    #[test]
    fn a_release_lets_anyone_claim_and_a_finished_run_stays_finished() {
        let mut runs = BTreeMap::new();
        accept(&mut runs, run(1, RunState::Running, Some("a"), "a"));
        accept(&mut runs, run(1, RunState::Queued, None, "a"));
        assert_eq!(current(&runs), (1, None, RunState::Queued));
        // Nobody owns attempt 1 now: only a claim of a later attempt is accepted.
        accept(&mut runs, run(1, RunState::Running, Some("c"), "c"));
        assert_eq!(current(&runs).1, None);
        accept(&mut runs, run(2, RunState::Queued, Some("c"), "c"));
        accept(&mut runs, run(2, RunState::Done, Some("c"), "c"));
        accept(&mut runs, run(3, RunState::Queued, Some("d"), "d"));
        assert_eq!(current(&runs), (2, Some("c".into()), RunState::Done));
    }
}

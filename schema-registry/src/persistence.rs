//! Kafka I/O: creating the topic, replaying it, and appending records.

use std::{fmt, time::Duration};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
};

use crate::{
    config::Config,
    error::RegistryError,
    records::{EncodedRecord, LogRecord},
};

fn backend(context: &str, err: impl fmt::Display) -> RegistryError {
    RegistryError::Backend(format!("{context}: {err}"))
}

fn timeout_of(config: &Config) -> Duration {
    Duration::from_millis(config.kafka_timeout_ms)
}

/// Creates the compacted, single-partition topic unless it exists, and
/// refuses topics with more partitions: the log's total order is what
/// makes replay deterministic.
pub(crate) async fn ensure_topic(config: &Config) -> Result<(), RegistryError> {
    let timeout = timeout_of(config);
    let admin: AdminClient<DefaultClientContext> = config
        .kafka
        .client_config()
        .create()
        .map_err(|e| backend("cannot create Kafka admin client", e))?;
    let topic = NewTopic::new(
        &config.topic,
        1,
        TopicReplication::Fixed(config.replication_factor),
    )
    .set("cleanup.policy", "compact");
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));

    let results = tokio::time::timeout(timeout, admin.create_topics([&topic], &options))
        .await
        .map_err(|_| backend("creating the registry topic", "timed out"))?
        .map_err(|e| backend("creating the registry topic", e))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created registry topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %name, "registry topic exists");
            }
            Err((name, code)) => {
                return Err(backend(&format!("creating topic {name}"), code));
            }
        }
    }
    Ok(())
}

/// Reads the whole topic, from the beginning to the high watermark taken
/// at start, and returns the raw records in offset order.
pub(crate) async fn replay(config: &Config) -> Result<Vec<EncodedRecord>, RegistryError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || replay_blocking(&config))
        .await
        .map_err(|e| RegistryError::Internal(format!("replay task failed: {e}")))?
}

fn replay_blocking(config: &Config) -> Result<Vec<EncodedRecord>, RegistryError> {
    let timeout = timeout_of(config);
    // librdkafka insists on a group.id, but the group is never joined:
    // the partition is assigned explicitly, offsets are never committed, and
    // replay always starts from the beginning.
    let consumer: BaseConsumer = config
        .kafka
        .client_config()
        .set("group.id", "schema-registry-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| backend("cannot create Kafka consumer", e))?;

    let metadata = consumer
        .fetch_metadata(Some(&config.topic), timeout)
        .map_err(|e| backend("fetching topic metadata", e))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == config.topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions != 1 {
        return Err(RegistryError::InvalidConfig(format!(
            "registry topic '{}' must have exactly one partition, found {partitions}",
            config.topic
        )));
    }

    // Right after creation the partition may not have a leader yet.
    let deadline = std::time::Instant::now() + timeout;
    let (low, high) = loop {
        match consumer.fetch_watermarks(&config.topic, 0, timeout) {
            Ok(marks) => break marks,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "watermarks not available yet, retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(backend("fetching watermarks", e)),
        }
    };
    tracing::info!(topic = %config.topic, low, high, "replaying registry topic");
    if high <= low {
        return Ok(Vec::new());
    }

    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&config.topic, 0, Offset::Beginning)
        .map_err(|e| backend("assigning partition", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| backend("assigning partition", e))?;

    let mut records = Vec::new();
    // `poll` also returns `None` after serving internal events, and some
    // errors are transient (e.g. a leader change), so give up only when
    // nothing useful happened for a whole timeout.
    let mut last_progress = std::time::Instant::now();
    let mut last_error: Option<KafkaError> = None;
    loop {
        if last_progress.elapsed() > timeout {
            let reason = last_error.map_or_else(
                || format!("no progress within {timeout:?}"),
                |e| e.to_string(),
            );
            return Err(backend("replaying the registry topic", reason));
        }
        match consumer.poll(timeout) {
            None => {}
            Some(Ok(message)) => {
                last_progress = std::time::Instant::now();
                let offset = message.offset();
                match message.key() {
                    Some(key) => {
                        records.push((key.to_vec(), message.payload().map(<[u8]>::to_vec)));
                    }
                    None => tracing::warn!(offset, "skipping registry record without key"),
                }
                if offset >= high - 1 {
                    break;
                }
            }
            // Compaction can leave gaps, so the end of the partition is the
            // reliable stop signal; the offset check above is the fast path.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "error while replaying, retrying");
                last_error = Some(e);
            }
        }
    }
    Ok(records)
}

/// The write side of the log.
pub(crate) struct KafkaLog {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLog")
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    pub(crate) fn new(config: &Config) -> Result<Self, RegistryError> {
        let timeout_ms = config.kafka_timeout_ms.to_string();
        let producer: FutureProducer = config
            .kafka
            .client_config()
            // Idempotence keeps retried batches from being duplicated or
            // reordered, so the log's order is the order of our writes.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms)
            .set("linger.ms", "0")
            .create()
            .map_err(|e| backend("cannot create Kafka producer", e))?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            timeout: timeout_of(config),
        })
    }

    /// Writes `records` in order and waits for every acknowledgement.
    ///
    /// Returns one result per record: a failure in the middle does not
    /// undo earlier records, and the caller must apply exactly the ones
    /// that made it into the log.
    pub(crate) async fn append(&self, records: &[LogRecord]) -> Vec<Result<(), RegistryError>> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let sent = match record.encode() {
                Ok((key, value)) => {
                    let mut message = FutureRecord::to(&self.topic).key(&key).partition(0);
                    if let Some(value) = value.as_deref() {
                        message = message.payload(value);
                    }
                    self.producer
                        .send_result(message)
                        .map_err(|(e, _)| backend("enqueueing a registry record", e))
                }
                Err(e) => Err(RegistryError::Internal(format!("encoding a record: {e}"))),
            };
            pending.push(sent);
        }

        // librdkafka enforces message.timeout.ms itself; the outer timeout
        // only guards against a delivery report that never arrives.
        let guard = self.timeout + Duration::from_secs(2);
        let mut results = Vec::with_capacity(pending.len());
        for sent in pending {
            let result = match sent {
                Err(e) => Err(e),
                Ok(delivery) => match tokio::time::timeout(guard, delivery).await {
                    Err(_) => Err(backend("writing to Kafka", "timed out")),
                    Ok(Err(_canceled)) => Err(backend("writing to Kafka", "producer shut down")),
                    Ok(Ok(Err((e, _)))) => Err(backend("writing to Kafka", e)),
                    Ok(Ok(Ok(_))) => Ok(()),
                },
            };
            results.push(result);
        }
        results
    }
}

//! Reading a topic from its beginning to its end, read-committed: how the command service
//! rebuilds its write model and idempotency receipts at start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use shared_events::{AvroEvent, EventCodec, Position, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("Kafka")]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` has no partitions")]
    NoPartitions(String),
    #[error("the topic was not read to its end within {0:?}")]
    Timeout(Duration),
    #[error("record at {partition}:{offset} could not be decoded")]
    Decode {
        partition: i32,
        offset: i64,
        #[source]
        source: WireError,
    },
}

/// Counts of a finished replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub partitions: usize,
}

/// Feeds every committed event of `topic`, partition by partition in log order, to `apply`.
///
/// The end is each partition's high watermark when the replay starts, and a partition is done
/// when the consumer's position (which moves past transaction markers and aborted records)
/// reaches it. A transaction still open there (say, of a crashed instance with other
/// transactional ids) holds the read-committed position back until the broker completes or
/// aborts it, so the replay waits for it instead of stopping short of events that may already
/// have been acknowledged. A record that does not decode stops the replay: a write model built
/// with a hole in it would assign wrong versions.
pub async fn replay<E, F>(
    kafka: &service_config::KafkaArgs,
    group: &str,
    topic: &str,
    codec: &EventCodec<E>,
    timeout: Duration,
    mut apply: F,
) -> Result<Replayed, ReplayError>
where
    E: AvroEvent,
    F: FnMut(E, Position),
{
    let consumer: StreamConsumer = kafka
        .client_config()
        // Required by librdkafka for assign(); the group is never joined and nothing is committed.
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ReplayError::NoPartitions(topic.to_owned()));
    }
    let mut targets = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        targets.insert(p, high);
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let deadline = Instant::now() + timeout;
    let mut replayed = Replayed {
        records: 0,
        partitions: partitions.len(),
    };
    loop {
        let positions = consumer.position()?;
        let done = targets.iter().all(|(&p, &target)| {
            target == 0
                || positions
                    .find_partition(topic, p)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= target))
        });
        if done {
            return Ok(replayed);
        }
        if Instant::now() >= deadline {
            return Err(ReplayError::Timeout(timeout));
        }
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Err(_) => continue,
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(message)) => message,
        };
        let (partition, offset) = (message.partition(), message.offset());
        let Some(value) = message.payload() else {
            continue;
        };
        let event = codec
            .decode(value)
            .await
            .map_err(|source| ReplayError::Decode {
                partition,
                offset,
                source,
            })?;
        apply(event, Position { partition, offset });
        replayed.records += 1;
    }
}

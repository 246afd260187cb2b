//! Reading partitions of a topic from an offset to their end, read-committed: how the command
//! service brings a partition's write model and idempotency receipts up to date when the
//! partition is assigned to it (from the beginning the first time, from where it left off when
//! a partition comes back).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use shared_events::{AvroEvent, EventCodec, Position, WireError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("Kafka")]
    Kafka(#[from] KafkaError),
    #[error("the topic was not read to its end within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
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

/// Feeds every committed event of `partitions` of `topic` after the given offsets (each
/// partition's `(number, from)`), partition by partition in log order, to `apply`. Returns
/// where each partition was read to: the offset to go on from next time.
///
/// The end is each partition's high watermark when the replay starts (asked read-uncommitted: a
/// read-committed client is told the last stable offset instead, which stops short of every
/// committed record behind a transaction still open), and a partition is done
/// when the consumer's position (which moves past transaction markers and aborted records)
/// reaches it. A transaction still open there (say, of a crashed instance, or of the previous
/// owner of a partition assigned here) holds the read-committed position back until the broker
/// completes or aborts it, so the replay waits for it instead of stopping short of events that
/// may already have been acknowledged. A record that does not decode stops the replay: a write
/// model built with a hole in it would assign wrong versions.
pub async fn replay<E, F>(
    kafka: &service_config::KafkaArgs,
    group: &str,
    topic: &str,
    partitions: &[(i32, i64)],
    codec: &EventCodec<E>,
    timeout: Duration,
    mut apply: F,
) -> Result<(Replayed, Vec<(i32, i64)>), ReplayError>
where
    E: AvroEvent,
    F: FnMut(E, Position) -> Result<(), ReplayError>,
{
    let consumer: StreamConsumer = kafka
        .client_config()
        // Required by librdkafka for assign(); the group is never joined and nothing is committed.
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        // An offset the topic no longer holds (retention): from its first record.
        .set("auto.offset.reset", "earliest")
        .create()?;
    if partitions.is_empty() {
        return Ok((Replayed::default(), Vec::new()));
    }
    let ends: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut targets = BTreeMap::new();
    let mut reached = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &(p, from) in partitions {
        let (_, high) = ends.fetch_watermarks(topic, p, timeout)?;
        targets.insert(p, high);
        reached.insert(p, from);
        assignment.add_partition_offset(topic, p, Offset::Offset(from.max(0)))?;
    }
    consumer.assign(&assignment)?;

    let deadline = Instant::now() + timeout;
    let mut report = Instant::now() + Duration::from_secs(5);
    let mut replayed = Replayed {
        records: 0,
        partitions: partitions.len(),
    };
    loop {
        let positions = consumer.position()?;
        for (&p, at) in &mut reached {
            if let Some(Offset::Offset(o)) = positions.find_partition(topic, p).map(|e| e.offset())
            {
                *at = (*at).max(o);
            }
        }
        if targets
            .iter()
            .all(|(p, &target)| reached.get(p).is_some_and(|&at| at >= target))
        {
            return Ok((replayed, reached.into_iter().collect()));
        }
        if Instant::now() >= deadline {
            return Err(ReplayError::Timeout(timeout));
        }
        if Instant::now() >= report {
            // Usually a transaction left open before the end, which holds a read-committed
            // reader back until it is completed or times out.
            let stable: BTreeMap<i32, i64> = targets
                .keys()
                .filter_map(|&p| Some((p, consumer.fetch_watermarks(topic, p, timeout).ok()?.1)))
                .collect();
            tracing::info!(%topic, ?reached, ?targets, ?stable, records = replayed.records, "still reading the partitions' tails");
            report = Instant::now() + Duration::from_secs(5);
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
        apply(event, Position { partition, offset })?;
        replayed.records += 1;
        if let Some(at) = reached.get_mut(&partition) {
            *at = (*at).max(offset + 1);
        }
    }
}

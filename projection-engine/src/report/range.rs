//! A report's range: per topic and partition, the offsets it starts at and ends before, fixed
//! when the report is submitted so that it reads the same records wherever and however often
//! it runs.
//!
//! The end is the partition's last stable offset at that moment (the client is read-committed,
//! so Kafka's `ListOffsets` answers it): every transaction with a record before it is decided,
//! so the committed records of the range can never change. `from` starts the partition at
//! `offsetsForTimes(from)`, the first offset stamped at or after it.
//!
//! Offsets alone do not cut a range by time exactly: record timestamps are the producers'
//! (`CreateTime`) and need not grow with the offset, and a transaction's marker is stamped with
//! the broker's time when it commits, which `offsetsForTimes` also finds. So the offsets bound
//! what is read, and the run keeps, of the records between them, those stamped in
//! `[from, to)` ([`Window`]): a pure function of each record, so the range stays the same.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// One end of a requested range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `"beginning"`: the oldest record the log holds.
    Beginning,
    /// `"now"`: the last stable offset when the report is submitted.
    Now,
    /// An RFC 3339 time, in milliseconds since the epoch.
    At(i64),
}

impl Bound {
    /// `from`: `"beginning"` or an RFC 3339 time.
    pub fn parse_from(text: &str) -> Result<Self, String> {
        match text {
            "beginning" => Ok(Self::Beginning),
            _ => at(text, "from").map(Self::At),
        }
    }

    /// `to`: `"now"` or an RFC 3339 time.
    pub fn parse_to(text: &str) -> Result<Self, String> {
        match text {
            "now" => Ok(Self::Now),
            _ => at(text, "to").map(Self::At),
        }
    }

    pub fn show(self) -> String {
        match self {
            Self::Beginning => "beginning".into(),
            Self::Now => "now".into(),
            Self::At(ms) => shared_events::live::rfc3339_millis(ms),
        }
    }
}

fn at(text: &str, what: &str) -> Result<i64, String> {
    let time = humantime::parse_rfc3339_weak(text)
        .ok()
        .filter(|_| text.ends_with('Z') || text.ends_with('z'))
        .ok_or_else(|| {
            format!(
                "`{what}` must be {} or an RFC 3339 UTC time such as 2026-01-01T00:00:00Z; got `{text}`",
                if what == "from" { "\"beginning\"" } else { "\"now\"" }
            )
        })?;
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("`{what}` must not be before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("`{what}` is too far in the future"))
}

/// The offsets a partition's share of a report starts at and ends before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: i64,
    pub end: i64,
}

impl Span {
    /// Log positions in the span: records, including transaction markers and aborted records.
    pub fn len(self) -> u64 {
        u64::try_from(self.end - self.start).unwrap_or(0)
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// A report's range: topic → partition → span. Ordered maps, so that it serialises the same
/// way every time.
pub type Offsets = BTreeMap<String, BTreeMap<i32, Span>>;

/// Log positions in the whole range.
pub fn total(offsets: &Offsets) -> u64 {
    offsets
        .values()
        .flat_map(BTreeMap::values)
        .map(|s| s.len())
        .sum()
}

/// The record timestamps a report keeps: `from` ≤ timestamp < `to`, each if set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Window {
    pub fn new(from: Bound, to: Bound) -> Self {
        let ms = |bound| match bound {
            Bound::At(ms) => Some(ms),
            Bound::Beginning | Bound::Now => None,
        };
        Self {
            from_ms: ms(from),
            to_ms: ms(to),
        }
    }

    /// Whether a record stamped `timestamp` (none: not stamped) is kept.
    pub fn keeps(self, timestamp: Option<i64>) -> bool {
        match timestamp {
            Some(ts) => {
                self.from_ms.is_none_or(|from| ts >= from) && self.to_ms.is_none_or(|to| ts < to)
            }
            None => self.from_ms.is_none() && self.to_ms.is_none(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` does not exist")]
    NoTopic(String),
    #[error("Kafka did not tell offsets of {topic}/{partition}: {error}")]
    Partition {
        topic: String,
        partition: i32,
        error: KafkaError,
    },
}

/// Captures the offsets of `topics` that hold the records from `from` on: from
/// `offsetsForTimes(from)` (or the log's start) to the last stable offset. Every partition's
/// end is asked in one `ListOffsets` call per leader, so a transaction committing meanwhile is
/// in the range whole or not at all on a one-broker cluster, and nearly so on others (each
/// partition's end is still a last stable offset, so the range never changes). Blocking: each
/// call is bounded by `timeout`.
pub fn capture(
    client: &BaseConsumer,
    topics: &[String],
    from: Bound,
    timeout: Duration,
) -> Result<Offsets, CaptureError> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), timeout)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if count == 0 {
            return Err(CaptureError::NoTopic(topic.clone()));
        }
        for partition in 0..i32::try_from(count).unwrap_or(0) {
            all.add_partition(topic, partition);
        }
    }
    // One call per kind of offset, every partition at once.
    let ask = |at: Offset| -> Result<BTreeMap<(String, i32), i64>, CaptureError> {
        let mut list = all.clone();
        list.set_all_offsets(at)?;
        let answered = client.offsets_for_times(list, timeout)?;
        let mut offsets = BTreeMap::new();
        for element in answered.elements() {
            let (topic, partition) = (element.topic().to_owned(), element.partition());
            if let Err(error) = element.error() {
                return Err(CaptureError::Partition {
                    topic,
                    partition,
                    error,
                });
            }
            // No record at or after a time: none of the partition is in range (its end).
            let offset = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => -1,
            };
            offsets.insert((topic, partition), offset);
        }
        Ok(offsets)
    };
    let ends = ask(Offset::End)?;
    let starts = ask(match from {
        Bound::At(ms) => Offset::Offset(ms),
        Bound::Beginning | Bound::Now => Offset::Beginning,
    })?;
    let mut offsets = Offsets::new();
    for ((topic, partition), end) in ends {
        let start = starts
            .get(&(topic.clone(), partition))
            .copied()
            .filter(|start| *start >= 0)
            .unwrap_or(end);
        offsets.entry(topic).or_default().insert(
            partition,
            Span {
                start: start.min(end),
                end,
            },
        );
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_as_the_api_names_them() {
        assert_eq!(Bound::parse_from("beginning"), Ok(Bound::Beginning));
        assert_eq!(Bound::parse_to("now"), Ok(Bound::Now));
        assert_eq!(
            Bound::parse_from("2026-01-01T00:00:00Z"),
            Ok(Bound::At(1_767_225_600_000))
        );
        assert_eq!(
            Bound::parse_to("2026-01-01T00:00:00.250Z"),
            Ok(Bound::At(1_767_225_600_250))
        );
        assert!(Bound::parse_from("now").is_err());
        assert!(Bound::parse_to("beginning").is_err());
        assert!(Bound::parse_from("2026-01-01").is_err());
        assert!(Bound::parse_from("2026-01-01T00:00:00+02:00").is_err());
        assert!(Bound::parse_from("yesterday").is_err());
        assert_eq!(
            Bound::At(1_767_225_600_000).show(),
            "2026-01-01T00:00:00.000Z"
        );
    }
}

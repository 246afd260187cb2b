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

/// Captures the offsets of `topics` that hold the records from `from` on: from
/// `offsetsForTimes(from)` (or the log's start) to the last stable offset. Blocking: each call
/// is bounded by `timeout`.
pub fn capture(
    client: &BaseConsumer,
    topics: &[String],
    from: Bound,
    timeout: Duration,
) -> Result<Offsets, KafkaError> {
    let mut offsets = Offsets::new();
    for topic in topics {
        let metadata = client.fetch_metadata(Some(topic), timeout)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        let count = i32::try_from(count).unwrap_or(0);
        let mut spans = BTreeMap::new();
        for partition in 0..count {
            let (low, stable) = client.fetch_watermarks(topic, partition, timeout)?;
            spans.insert(
                partition,
                Span {
                    start: low,
                    end: stable,
                },
            );
        }
        // Timestamps to offsets, for every partition at once.
        let at = |ms: i64| -> Result<BTreeMap<i32, Option<i64>>, KafkaError> {
            let mut list = TopicPartitionList::new();
            for partition in 0..count {
                list.add_partition_offset(topic, partition, Offset::Offset(ms))?;
            }
            let found = client.offsets_for_times(list, timeout)?;
            Ok(found
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(offset) => (e.partition(), Some(offset)),
                    _ => (e.partition(), None),
                })
                .collect())
        };
        if let Bound::At(ms) = from {
            for (partition, offset) in at(ms)? {
                if let Some(span) = spans.get_mut(&partition) {
                    // No record at or after `from`: nothing of this partition is in range.
                    span.start = offset.unwrap_or(span.end).max(span.start);
                }
            }
        }
        for span in spans.values_mut() {
            span.start = span.start.min(span.end);
        }
        offsets.insert(topic.clone(), spans);
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

//! A stream's position, as the SSE `id:` carries it: for every partition the stream's events
//! come from, the offset of the next event not yet delivered.
//!
//! Text form: `<topic>.<partition>.<next offset>` per partition, joined by `_`, where `<topic>`
//! is the topic's index among the timeline's topics: `0.3.17_1.0.0_1.1.5`. Each partition's
//! events are delivered in offset order, so one number per partition says exactly what was
//! delivered, whatever the order between partitions.

use std::collections::BTreeMap;

/// Where an event is in the log: the topic's index among the timeline's topics, the
/// partition, the offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct At {
    pub topic: u8,
    pub partition: i32,
    pub offset: i64,
}

/// The partitions a stream's events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span(Vec<(u8, i32)>);

impl Span {
    pub fn new(mut partitions: Vec<(u8, i32)>) -> Self {
        partitions.sort_unstable();
        partitions.dedup();
        Self(partitions)
    }

    pub fn partitions(&self) -> &[(u8, i32)] {
        &self.0
    }

    fn contains(&self, topic: u8, partition: i32) -> bool {
        self.0.binary_search(&(topic, partition)).is_ok()
    }
}

/// The id does not parse, or names a partition the stream's events do not come from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadResume(pub String);

/// What was delivered: per partition of the span, the next offset not yet delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    next: BTreeMap<(u8, i32), i64>,
}

impl Resume {
    /// Nothing delivered: every partition from its first event.
    pub fn beginning(span: &Span) -> Self {
        Self::at(span, |_, _| 0)
    }

    /// From `next(topic, partition)` on, for every partition of the span.
    pub fn at(span: &Span, next: impl Fn(u8, i32) -> i64) -> Self {
        Self {
            next: span
                .partitions()
                .iter()
                .map(|&(topic, partition)| ((topic, partition), next(topic, partition).max(0)))
                .collect(),
        }
    }

    /// Parses an id from a client, for a stream of `span`. Partitions the id leaves out start
    /// from their first event.
    pub fn parse(text: &str, span: &Span) -> Result<Self, BadResume> {
        let bad = |why: &str| BadResume(format!("`{}` is not a resume id: {why}", clip(text)));
        let mut resume = Self::beginning(span);
        if text.len() > 4096 {
            return Err(bad("too long"));
        }
        for part in text.split('_') {
            let mut fields = part.split('.');
            let (Some(topic), Some(partition), Some(next), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("each part is <topic>.<partition>.<offset>"));
            };
            let (Ok(topic), Ok(partition), Ok(next)) = (
                topic.parse::<u8>(),
                partition.parse::<i32>(),
                next.parse::<i64>(),
            ) else {
                return Err(bad("topic, partition and offset are numbers"));
            };
            if !span.contains(topic, partition) {
                return Err(bad(
                    "it names a partition this stream's events do not come from",
                ));
            }
            if next < 0 {
                return Err(bad("offsets are not negative"));
            }
            resume.next.insert((topic, partition), next);
        }
        Ok(resume)
    }

    /// The next offset not yet delivered of a partition.
    pub fn next(&self, topic: u8, partition: i32) -> i64 {
        self.next.get(&(topic, partition)).copied().unwrap_or(0)
    }

    /// Whether the event at `at` is still to be delivered (it is in the span and not yet sent).
    pub fn owes(&self, at: At) -> bool {
        self.next
            .get(&(at.topic, at.partition))
            .is_some_and(|next| at.offset >= *next)
    }

    /// Records that the event at `at` was delivered.
    pub fn delivered(&mut self, at: At) {
        if let Some(next) = self.next.get_mut(&(at.topic, at.partition)) {
            *next = (*next).max(at.offset + 1);
        }
    }

    /// Every partition of the span with its next offset not yet delivered.
    pub fn partitions(&self) -> impl Iterator<Item = (u8, i32, i64)> + '_ {
        self.next
            .iter()
            .map(|(&(topic, partition), &next)| (topic, partition, next))
    }

    /// The text form, the SSE `id:`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        for ((topic, partition), next) in &self.next {
            if !text.is_empty() {
                text.push('_');
            }
            text.push_str(&format!("{topic}.{partition}.{next}"));
        }
        text
    }
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn span() -> Span {
        Span::new(vec![(1, 2), (0, 3), (1, 0), (1, 1)])
    }

    #[test]
    fn an_id_round_trips_and_says_what_is_owed() {
        let mut resume = Resume::beginning(&span());
        assert_eq!(resume.encode(), "0.3.0_1.0.0_1.1.0_1.2.0");
        resume.delivered(At {
            topic: 1,
            partition: 1,
            offset: 41,
        });
        let text = resume.encode();
        assert_eq!(text, "0.3.0_1.0.0_1.1.42_1.2.0");
        let parsed = Resume::parse(&text, &span()).unwrap();
        assert_eq!(parsed, resume);
        let at = |offset| At {
            topic: 1,
            partition: 1,
            offset,
        };
        assert!(!parsed.owes(at(41)) && parsed.owes(at(42)));
        assert!(
            !parsed.owes(At {
                topic: 1,
                partition: 5,
                offset: 0
            }),
            "outside the span"
        );
        // Partitions left out start from their first event.
        assert_eq!(Resume::parse("1.1.9", &span()).unwrap().next(0, 3), 0);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "x",
            "0.3",
            "0.3.1.2",
            "0.3.-1",
            "0.9.1",
            "7.0.1",
            "0.3.1_",
            "0.3.a",
            "0.3.99999999999999999999",
        ] {
            assert!(Resume::parse(bad, &span()).is_err(), "{bad:?}");
        }
        assert!(Resume::parse(&"0.3.1_".repeat(1000), &span()).is_err());
    }

    proptest::proptest! {
        /// Whatever a client sends as `Last-Event-ID`: an answer, never a panic.
        #[test]
        fn any_text_is_parsed_or_refused(text in ".{0,80}") {
            let _ = Resume::parse(&text, &span());
        }

        /// Ids made of numbers and separators, the shape a forged one takes: an id that parses
        /// names only partitions of the span, and says what it parsed.
        #[test]
        fn near_misses_parse_to_the_span_only(text in "[0-9._-]{0,40}") {
            if let Ok(resume) = Resume::parse(&text, &span()) {
                for (topic, partition, next) in resume.partitions() {
                    proptest::prop_assert!(span().contains(topic, partition));
                    proptest::prop_assert!(next >= 0);
                }
                proptest::prop_assert_eq!(Resume::parse(&resume.encode(), &span()).ok(), Some(resume));
            }
        }

        /// What a stream delivers, its id says; the id read back says the same.
        #[test]
        fn delivered_positions_round_trip(
            deliveries in proptest::collection::vec((0usize..4, 0i64..1_000_000), 0..40)
        ) {
            let partitions = span().partitions().to_vec();
            let mut resume = Resume::beginning(&span());
            for (which, offset) in deliveries {
                let (topic, partition) = partitions[which];
                let at = At { topic, partition, offset };
                if resume.owes(at) {
                    resume.delivered(at);
                    proptest::prop_assert!(!resume.owes(at));
                }
            }
            let parsed = Resume::parse(&resume.encode(), &span()).unwrap();
            proptest::prop_assert_eq!(parsed, resume);
        }
    }
}

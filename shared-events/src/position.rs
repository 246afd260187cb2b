//! Where a record sits in the log, and the opaque token clients pass back to read their writes.

use std::fmt;
use std::str::FromStr;

/// A record's partition and offset within one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// Names a position in a topic: `"{topic}:{partition}:{offset}"`.
///
/// Clients treat it as opaque; the query side parses it to wait until that position is applied.
/// Kafka topic names cannot contain `:`, so the format is unambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub topic: String,
    pub position: Position,
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.topic, self.position.partition, self.position.offset
        )
    }
}

/// A consistency token that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("consistency token must look like `topic:partition:offset`")]
pub struct InvalidToken;

impl FromStr for ConsistencyToken {
    type Err = InvalidToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.rsplitn(3, ':');
        let offset = parts.next().and_then(|p| p.parse::<i64>().ok());
        let partition = parts.next().and_then(|p| p.parse::<i32>().ok());
        let topic = parts.next().filter(|t| !t.is_empty());
        match (topic, partition, offset) {
            (Some(topic), Some(partition), Some(offset)) if partition >= 0 && offset >= 0 => {
                Ok(Self {
                    topic: topic.to_owned(),
                    position: Position { partition, offset },
                })
            }
            _ => Err(InvalidToken),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn token_round_trips() {
        let token = ConsistencyToken {
            topic: "orders.v1-x_y".into(),
            position: Position {
                partition: 3,
                offset: 42,
            },
        };
        let text = token.to_string();
        assert_eq!(text, "orders.v1-x_y:3:42");
        assert_eq!(text.parse::<ConsistencyToken>().ok(), Some(token));
    }

    #[test]
    fn bad_tokens_are_rejected() {
        for bad in [
            "",
            "orders",
            "orders:1",
            ":1:2",
            "orders:-1:2",
            "orders:1:x",
            "o:1:-5",
        ] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Any header parses or is refused without panicking; a token that parses prints back
        /// to itself, and a token of any legal topic and position survives the trip.
        #[test]
        fn tokens_parse_or_are_refused(text in "\\PC{0,40}") {
            if let Ok(token) = text.parse::<ConsistencyToken>() {
                let again: ConsistencyToken = token.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again.topic, token.topic);
                proptest::prop_assert_eq!(again.position, token.position);
            }
        }

        #[test]
        fn every_token_round_trips(
            topic in "[a-zA-Z0-9._-]{1,40}",
            partition in 0i32..,
            offset in 0i64..,
        ) {
            let token = ConsistencyToken { topic, position: Position { partition, offset } };
            let again: ConsistencyToken = token.to_string().parse().unwrap();
            proptest::prop_assert_eq!(again.topic, token.topic);
            proptest::prop_assert_eq!(again.position, token.position);
        }
    }
}

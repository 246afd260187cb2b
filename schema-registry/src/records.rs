//! The records of the registry's Kafka topic: JSON keys and values in the
//! spirit of Confluent's `_schemas` topic.
//!
//! | key                                                        | value                                                   |
//! |------------------------------------------------------------|---------------------------------------------------------|
//! | `{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}` | `{"subject","version","id","schema","deleted"}` / null  |
//! | `{"keytype":"CONFIG","subject":null,"magic":0}`            | `{"compatibilityLevel":"FULL"}` / null (= unset)        |
//! | `{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}`     | `{"subject","version"}`: versions `<= version` soft-deleted / null |
//! | `{"keytype":"ID_WATERMARK","magic":0}`                     | `{"maxId":N}`                                           |
//!
//! A null value (tombstone) removes the key for good once compaction runs,
//! which is how permanent deletes work. `ID_WATERMARK` exists because a
//! permanent delete may tombstone the record holding the highest id; the
//! watermark, written before the tombstones, keeps that id from being
//! handed out again after compaction and a restart.
//!
//! Keys are serialized from fixed structs so the same logical key always
//! has the same bytes, which compaction depends on.

use serde::{Deserialize, Serialize};

use crate::compatibility::CompatibilityLevel;

/// One entry of the log, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LogRecord {
    Schema {
        subject: String,
        version: i32,
        value: Option<SchemaValue>,
    },
    Config {
        subject: Option<String>,
        value: Option<ConfigValue>,
    },
    DeleteSubject {
        subject: String,
        value: Option<DeleteSubjectValue>,
    },
    IdWatermark {
        value: Option<IdWatermarkValue>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SchemaValue {
    pub(crate) subject: String,
    pub(crate) version: i32,
    pub(crate) id: i32,
    pub(crate) schema: String,
    #[serde(default)]
    pub(crate) deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigValue {
    pub(crate) compatibility_level: CompatibilityLevel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeleteSubjectValue {
    pub(crate) subject: String,
    pub(crate) version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdWatermarkValue {
    pub(crate) max_id: i32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
enum Key {
    Schema {
        subject: String,
        version: i32,
        #[serde(default)]
        magic: u8,
    },
    Config {
        subject: Option<String>,
        #[serde(default)]
        magic: u8,
    },
    DeleteSubject {
        subject: String,
        #[serde(default)]
        magic: u8,
    },
    IdWatermark {
        #[serde(default)]
        magic: u8,
    },
}

/// Raw key and value bytes as stored in Kafka.
pub(crate) type EncodedRecord = (Vec<u8>, Option<Vec<u8>>);

impl LogRecord {
    pub(crate) fn encode(&self) -> Result<EncodedRecord, serde_json::Error> {
        fn value<T: Serialize>(v: Option<&T>) -> Result<Option<Vec<u8>>, serde_json::Error> {
            v.map(serde_json::to_vec).transpose()
        }
        let (key, value) = match self {
            Self::Schema {
                subject,
                version,
                value: v,
            } => (
                Key::Schema {
                    subject: subject.clone(),
                    version: *version,
                    magic: 1,
                },
                value(v.as_ref())?,
            ),
            Self::Config { subject, value: v } => (
                Key::Config {
                    subject: subject.clone(),
                    magic: 0,
                },
                value(v.as_ref())?,
            ),
            Self::DeleteSubject { subject, value: v } => (
                Key::DeleteSubject {
                    subject: subject.clone(),
                    magic: 0,
                },
                value(v.as_ref())?,
            ),
            Self::IdWatermark { value: v } => (Key::IdWatermark { magic: 0 }, value(v.as_ref())?),
        };
        Ok((serde_json::to_vec(&key)?, value))
    }

    pub(crate) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Self, serde_json::Error> {
        fn parse<'a, T: Deserialize<'a>>(
            v: Option<&'a [u8]>,
        ) -> Result<Option<T>, serde_json::Error> {
            v.map(serde_json::from_slice).transpose()
        }
        Ok(match serde_json::from_slice::<Key>(key)? {
            Key::Schema {
                subject, version, ..
            } => Self::Schema {
                subject,
                version,
                value: parse(value)?,
            },
            Key::Config { subject, .. } => Self::Config {
                subject,
                value: parse(value)?,
            },
            Key::DeleteSubject { subject, .. } => Self::DeleteSubject {
                subject,
                value: parse(value)?,
            },
            Key::IdWatermark { .. } => Self::IdWatermark {
                value: parse(value)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn round_trip(record: LogRecord) -> EncodedRecord {
        let encoded = record.encode().unwrap();
        let decoded = LogRecord::decode(&encoded.0, encoded.1.as_deref()).unwrap();
        assert_eq!(decoded, record);
        encoded
    }

    #[test]
    fn keys_have_the_documented_bytes() {
        let (key, value) = round_trip(LogRecord::Schema {
            subject: "s".into(),
            version: 2,
            value: Some(SchemaValue {
                subject: "s".into(),
                version: 2,
                id: 5,
                schema: "\"int\"".into(),
                deleted: false,
            }),
        });
        assert_eq!(
            String::from_utf8(key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"s","version":2,"magic":1}"#
        );
        assert_eq!(
            String::from_utf8(value.unwrap()).unwrap(),
            r#"{"subject":"s","version":2,"id":5,"schema":"\"int\"","deleted":false}"#
        );

        let (key, value) = round_trip(LogRecord::Config {
            subject: None,
            value: Some(ConfigValue {
                compatibility_level: CompatibilityLevel::FullTransitive,
            }),
        });
        assert_eq!(
            String::from_utf8(key).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        assert_eq!(
            String::from_utf8(value.unwrap()).unwrap(),
            r#"{"compatibilityLevel":"FULL_TRANSITIVE"}"#
        );
    }

    #[test]
    fn tombstones_round_trip() {
        let (_, value) = round_trip(LogRecord::Schema {
            subject: "s".into(),
            version: 1,
            value: None,
        });
        assert!(value.is_none());
        round_trip(LogRecord::Config {
            subject: Some("s".into()),
            value: None,
        });
        round_trip(LogRecord::DeleteSubject {
            subject: "s".into(),
            value: None,
        });
        round_trip(LogRecord::IdWatermark {
            value: Some(IdWatermarkValue { max_id: 9 }),
        });
    }

    #[test]
    fn unknown_key_types_are_errors_not_panics() {
        assert!(LogRecord::decode(br#"{"keytype":"NOOP","magic":0}"#, None).is_err());
        assert!(LogRecord::decode(b"garbage", None).is_err());
    }
}

//! The contract between a domain's event type and the generic wire machinery.

use apache_avro::types::Value;

use crate::aggregate::EventMetadata;
use crate::binary::{AvroReader, AvroWriter, ReadError};

/// A domain event that travels as one Avro record.
///
/// Implementations convert explicitly between the Rust value and the Avro record described by
/// [`AvroEvent::SCHEMA`]; the schema text is the contract and the conversion is reviewed code.
/// Writing goes straight to Avro binary (the hot path of every command). Reading a record
/// written with exactly this schema goes straight from the binary too ([`AvroEvent::read_avro`],
/// the hot path of every replay and report); a record of any other compatible schema goes
/// through `apache-avro`'s schema resolution ([`AvroEvent::from_avro`]).
pub trait AvroEvent: Sized {
    /// The `.avsc` text of the record this event is written as.
    const SCHEMA: &'static str;

    /// The Kafka record key: the aggregate id, so all events of one aggregate share a partition.
    fn key(&self) -> &str;

    /// Writes the record's Avro binary body for [`AvroEvent::SCHEMA`]: every field in schema
    /// order. Each implementation needs a test that reads its bytes back with the schema.
    fn write_avro(&self, writer: &mut AvroWriter<'_>);

    /// Rebuilds the event from a value already resolved against [`AvroEvent::SCHEMA`].
    fn from_avro(value: Value) -> Result<Self, EventError>;

    /// Reads the record's Avro binary body written with exactly [`AvroEvent::SCHEMA`]: the
    /// mirror of [`AvroEvent::write_avro`]. Each implementation needs a test that it agrees with
    /// [`AvroEvent::from_avro`] on the same bytes.
    fn read_avro(reader: &mut AvroReader<'_>) -> Result<Self, EventError>;
}

/// What every event of every domain carries besides its payload, and writes first: each
/// schema opens with these fields, in this order, so the engines read any domain's alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_id: String,
    /// The aggregate id, also the record key.
    pub aggregate_id: String,
    /// 1 for an aggregate's first event, then 2, 3, ... with no gaps.
    pub aggregate_version: i64,
    /// Milliseconds since the Unix epoch (`occurred_at`, `timestamp-millis`, in the schemas).
    pub occurred_at_ms: i64,
    pub command_id: String,
    /// The client's `Idempotency-Key`, when it sent one.
    pub idempotency_key: Option<String>,
    pub correlation_id: String,
}

impl Envelope {
    /// The envelope of version `version` of aggregate `id`, decided with `metadata`.
    pub fn new(metadata: EventMetadata, id: &str, version: i64) -> Self {
        Self {
            event_id: metadata.event_id,
            aggregate_id: id.to_owned(),
            aggregate_version: version,
            occurred_at_ms: metadata.occurred_at_ms,
            command_id: metadata.command_id,
            idempotency_key: metadata.idempotency_key,
            correlation_id: metadata.correlation_id,
        }
    }

    /// Writes the envelope's fields, first in every event record.
    pub fn write_avro(&self, w: &mut AvroWriter<'_>) {
        w.string(&self.event_id);
        w.string(&self.aggregate_id);
        w.long(self.aggregate_version);
        w.long(self.occurred_at_ms);
        w.string(&self.command_id);
        w.optional_string(self.idempotency_key.as_deref());
        w.string(&self.correlation_id);
    }

    /// Reads the envelope's fields, first in every event record.
    pub fn read_avro(r: &mut AvroReader<'_>) -> Result<Self, EventError> {
        Ok(Self {
            event_id: r.string()?,
            aggregate_id: r.string()?,
            aggregate_version: r.long()?,
            occurred_at_ms: r.long()?,
            command_id: r.string()?,
            idempotency_key: r.optional_string()?,
            correlation_id: r.string()?,
        })
    }

    /// Takes the envelope's fields out of a decoded event record.
    pub fn from_fields(f: &mut Fields) -> Result<Self, EventError> {
        Ok(Self {
            event_id: f.string("event_id")?,
            aggregate_id: f.string("aggregate_id")?,
            aggregate_version: f.long("aggregate_version")?,
            occurred_at_ms: f.long("occurred_at")?,
            command_id: f.string("command_id")?,
            idempotency_key: f.optional_string("idempotency_key")?,
            correlation_id: f.string("correlation_id")?,
        })
    }
}

/// An event's envelope, as the generic engines read it.
pub trait EventEnvelope {
    fn envelope(&self) -> &Envelope;

    fn event_id(&self) -> &str {
        &self.envelope().event_id
    }

    fn aggregate_id(&self) -> &str {
        &self.envelope().aggregate_id
    }

    /// 1 for an aggregate's first event, then 2, 3, ... with no gaps.
    fn aggregate_version(&self) -> i64 {
        self.envelope().aggregate_version
    }

    fn occurred_at_ms(&self) -> i64 {
        self.envelope().occurred_at_ms
    }

    /// The client's `Idempotency-Key` of the command that caused the event, if it sent one.
    fn idempotency_key(&self) -> Option<&str> {
        self.envelope().idempotency_key.as_deref()
    }
}

/// An Avro value that does not have the shape the event type expects.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` has the wrong type: expected {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("union branch {0} is unknown")]
    UnknownBranch(u32),
    #[error("field `{field}` is out of range")]
    OutOfRange { field: &'static str },
    #[error("the record's binary does not read: {0}")]
    Malformed(#[from] ReadError),
}

/// Named access to the fields of a decoded Avro record, consuming them.
#[derive(Debug)]
pub struct Fields(Vec<(String, Value)>);

impl Fields {
    /// Takes the fields of a record value.
    pub fn of(value: Value, what: &'static str) -> Result<Self, EventError> {
        match value {
            Value::Record(fields) => Ok(Self(fields)),
            _ => Err(EventError::WrongType {
                field: what,
                expected: "record",
            }),
        }
    }

    /// Removes and returns the named field.
    pub fn take(&mut self, name: &'static str) -> Result<Value, EventError> {
        let index = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or(EventError::MissingField(name))?;
        Ok(self.0.swap_remove(index).1)
    }

    pub fn string(&mut self, name: &'static str) -> Result<String, EventError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            _ => Err(wrong(name, "string")),
        }
    }

    /// A `["null", "string"]` field.
    pub fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, EventError> {
        match self.take(name)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            Value::Union(_, inner) => match *inner {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                _ => Err(wrong(name, "null or string")),
            },
            _ => Err(wrong(name, "null or string")),
        }
    }

    pub fn long(&mut self, name: &'static str) -> Result<i64, EventError> {
        match self.take(name)? {
            Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
            Value::Int(n) => Ok(i64::from(n)),
            _ => Err(wrong(name, "long")),
        }
    }

    pub fn int(&mut self, name: &'static str) -> Result<i32, EventError> {
        match self.take(name)? {
            Value::Int(n) => Ok(n),
            _ => Err(wrong(name, "int")),
        }
    }

    /// A union field: its branch index and its value.
    pub fn union(&mut self, name: &'static str) -> Result<(u32, Value), EventError> {
        match self.take(name)? {
            Value::Union(branch, value) => Ok((branch, *value)),
            _ => Err(wrong(name, "union")),
        }
    }

    pub fn array(&mut self, name: &'static str) -> Result<Vec<Value>, EventError> {
        match self.take(name)? {
            Value::Array(items) => Ok(items),
            _ => Err(wrong(name, "array")),
        }
    }
}

fn wrong(field: &'static str, expected: &'static str) -> EventError {
    EventError::WrongType { field, expected }
}

//! The customers domain's events: one Avro record, `customers.CustomerEvent`, per fact about a
//! customer.
//!
//! The schema is `schemas/customers-value.avsc`, registered under the subject `<topic>-value`.

use apache_avro::types::Value;

pub use shared_events::Envelope;
use shared_events::event::{AvroEvent, EventEnvelope, EventError, Fields};
use shared_events::{AvroReader, AvroWriter};

/// The default topic of the customers aggregate.
pub const DEFAULT_TOPIC: &str = "customers";

/// What happened to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomerPayload {
    Registered { name: String, email: String },
    EmailChanged { email: String },
    Deactivated { reason: String },
}

impl CustomerPayload {
    /// The Avro record name of the payload, as in the schema.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "CustomerRegistered",
            Self::EmailChanged { .. } => "CustomerEmailChanged",
            Self::Deactivated { .. } => "CustomerDeactivated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerEvent {
    pub envelope: Envelope,
    pub payload: CustomerPayload,
}

impl EventEnvelope for CustomerEvent {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

impl AvroEvent for CustomerEvent {
    const SCHEMA: &'static str = include_str!("../../schemas/customers-value.avsc");

    fn key(&self) -> &str {
        &self.envelope.aggregate_id
    }

    fn write_avro(&self, w: &mut AvroWriter<'_>) {
        self.envelope.write_avro(w);
        // Union branch indexes follow the order of the payload union in the schema.
        match &self.payload {
            CustomerPayload::Registered { name, email } => {
                w.branch(0);
                w.string(name);
                w.string(email);
            }
            CustomerPayload::EmailChanged { email } => {
                w.branch(1);
                w.string(email);
            }
            CustomerPayload::Deactivated { reason } => {
                w.branch(2);
                w.string(reason);
            }
        }
    }

    fn read_avro(r: &mut AvroReader<'_>) -> Result<Self, EventError> {
        let envelope = Envelope::read_avro(r)?;
        let payload = match r.branch(3)? {
            0 => CustomerPayload::Registered {
                name: r.string()?,
                email: r.string()?,
            },
            1 => CustomerPayload::EmailChanged { email: r.string()? },
            _ => CustomerPayload::Deactivated {
                reason: r.string()?,
            },
        };
        Ok(Self { envelope, payload })
    }

    fn from_avro(value: Value) -> Result<Self, EventError> {
        let mut f = Fields::of(value, "CustomerEvent")?;
        let envelope = Envelope::from_fields(&mut f)?;
        let (branch, body) = f.union("payload")?;
        let payload = match branch {
            0 => {
                let mut p = Fields::of(body, "CustomerRegistered")?;
                CustomerPayload::Registered {
                    name: p.string("name")?,
                    email: p.string("email")?,
                }
            }
            1 => {
                let mut p = Fields::of(body, "CustomerEmailChanged")?;
                CustomerPayload::EmailChanged {
                    email: p.string("email")?,
                }
            }
            2 => {
                let mut p = Fields::of(body, "CustomerDeactivated")?;
                CustomerPayload::Deactivated {
                    reason: p.string("reason")?,
                }
            }
            other => return Err(EventError::UnknownBranch(other)),
        };
        Ok(Self { envelope, payload })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use apache_avro::Schema;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
    use apache_avro::writer::datum::GenericDatumWriter;

    /// Avro binary body of `value` under `schema`.
    pub(crate) fn write(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    /// The Avro binary body `event` writes.
    pub(crate) fn body(event: &CustomerEvent) -> Vec<u8> {
        let mut out = Vec::new();
        event.write_avro(&mut AvroWriter::new(&mut out));
        out
    }

    /// Reads a body written with `writer`, resolved against `reader` when given.
    pub(crate) fn read(writer: &Schema, reader: Option<&Schema>, bytes: &[u8]) -> Value {
        GenericDatumReader::builder(writer)
            .maybe_reader_schema(reader)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap()
    }

    pub(crate) fn samples() -> Vec<CustomerEvent> {
        let envelope = |version| Envelope {
            event_id: format!("e-{version}"),
            aggregate_id: "c-42".into(),
            aggregate_version: version,
            occurred_at_ms: 1_795_000_000_000 + version,
            command_id: "k-1".into(),
            idempotency_key: (version % 2 == 0).then(|| format!("key-{version}")),
            correlation_id: "r-1".into(),
        };
        vec![
            CustomerEvent {
                envelope: envelope(1),
                payload: CustomerPayload::Registered {
                    name: "Ada Lovelace".into(),
                    email: "ada@example.com".into(),
                },
            },
            CustomerEvent {
                envelope: envelope(2),
                payload: CustomerPayload::EmailChanged {
                    email: "countess@example.org".into(),
                },
            },
            CustomerEvent {
                envelope: envelope(3),
                payload: CustomerPayload::Deactivated {
                    reason: "asked to leave".into(),
                },
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_avro_bytes() {
        let schema = Schema::parse_str(CustomerEvent::SCHEMA).unwrap();
        for event in samples() {
            let value = read(&schema, None, &body(&event));
            assert_eq!(CustomerEvent::from_avro(value).unwrap(), event);
        }
    }

    #[test]
    fn payload_names_are_the_schema_record_names() {
        for event in samples() {
            let name = event.payload.name();
            assert!(
                CustomerEvent::SCHEMA.contains(&format!(r#""name": "{name}""#)),
                "{name}"
            );
        }
    }

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn long(&mut self) -> i64 {
            // Mostly small magnitudes (where varint lengths change), sometimes anything.
            let n = self.next();
            #[allow(clippy::cast_possible_wrap)]
            match n % 4 {
                0 => n as i64,
                1 => (n % 300) as i64 - 150,
                _ => (n >> (n % 64)) as i64 * if n & 1 == 0 { 1 } else { -1 },
            }
        }

        fn string(&mut self) -> String {
            const ALPHABET: [&str; 6] = ["a", "Z", "0", "@", "é", "✓"];
            let len = usize::try_from(self.next() % 140).unwrap();
            (0..len)
                .map(|_| ALPHABET[usize::try_from(self.next() % 6).unwrap()])
                .collect()
        }
    }

    fn random_event(rng: &mut Rng) -> CustomerEvent {
        let envelope = Envelope {
            event_id: rng.string(),
            aggregate_id: rng.string(),
            aggregate_version: rng.long(),
            occurred_at_ms: rng.long(),
            command_id: rng.string(),
            idempotency_key: rng.next().is_multiple_of(2).then(|| rng.string()),
            correlation_id: rng.string(),
        };
        let payload = match rng.next() % 3 {
            0 => CustomerPayload::Registered {
                name: rng.string(),
                email: rng.string(),
            },
            1 => CustomerPayload::EmailChanged {
                email: rng.string(),
            },
            _ => CustomerPayload::Deactivated {
                reason: rng.string(),
            },
        };
        CustomerEvent { envelope, payload }
    }

    /// The direct writer against apache-avro: its bytes decode under the schema to the same
    /// event, apache-avro writing that decoded value produces the very same bytes, and the
    /// direct reader reads them back to the same event.
    #[test]
    fn the_direct_writer_agrees_with_apache_avro_on_random_events() {
        let schema = Schema::parse_str(CustomerEvent::SCHEMA).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let event = random_event(&mut rng);
            let bytes = body(&event);
            let value = read(&schema, None, &bytes);
            assert_eq!(write(&schema, value.clone()), bytes, "{event:?}");
            assert_eq!(CustomerEvent::from_avro(value).unwrap(), event);
            // The direct reader, on the same bytes.
            let mut reader = shared_events::AvroReader::new(&bytes);
            assert_eq!(CustomerEvent::read_avro(&mut reader).unwrap(), event);
            reader.finish().unwrap();
        }
    }

    #[test]
    fn a_record_of_the_wrong_shape_is_an_error() {
        let err = CustomerEvent::from_avro(Value::Record(vec![])).unwrap_err();
        assert!(matches!(err, EventError::MissingField("event_id")));
        let err = CustomerEvent::from_avro(Value::String("c-42".into())).unwrap_err();
        assert!(matches!(err, EventError::WrongType { .. }));
    }

    #[test]
    fn an_unknown_payload_branch_is_an_error() {
        let schema = Schema::parse_str(CustomerEvent::SCHEMA).unwrap();
        let Value::Record(mut fields) = read(&schema, None, &body(&samples()[0])) else {
            panic!("not a record");
        };
        for (name, value) in &mut fields {
            if name == "payload" {
                *value = Value::Union(3, Box::new(Value::Record(vec![])));
            }
        }
        let err = CustomerEvent::from_avro(Value::Record(fields)).unwrap_err();
        assert!(matches!(err, EventError::UnknownBranch(3)));
    }

    // Schema evolution: what a next version of the schema may and may not do.

    /// A plausible next version: a new optional field with a default in the envelope and in
    /// `CustomerEmailChanged`. Adding fields with defaults must stay compatible both ways.
    fn evolved() -> Schema {
        let text = CustomerEvent::SCHEMA
            .replacen(
                r#"{"name": "correlation_id""#,
                r#"{"name": "tenant", "type": "string", "default": "default"},
    {"name": "correlation_id""#,
                1,
            )
            .replacen(
                r#"{"name": "email", "type": "string"}
        ]
      },
      {
        "type": "record",
        "name": "CustomerDeactivated""#,
                r#"{"name": "email", "type": "string"},
          {"name": "verified", "type": ["null", "boolean"], "default": null}
        ]
      },
      {
        "type": "record",
        "name": "CustomerDeactivated""#,
                1,
            );
        assert_ne!(
            text,
            CustomerEvent::SCHEMA,
            "the evolution must change the schema"
        );
        assert!(text.contains("verified"), "the payload must change too");
        Schema::parse_str(&text).unwrap()
    }

    #[test]
    fn adding_defaulted_fields_is_fully_compatible() {
        let current = Schema::parse_str(CustomerEvent::SCHEMA).unwrap();
        let next = evolved();
        let full = Some(Compatibility::Full);
        assert_eq!(SchemaCompatibility::can_read(&current, &next).ok(), full);
        assert_eq!(SchemaCompatibility::can_read(&next, &current).ok(), full);
    }

    #[test]
    fn records_written_by_a_newer_schema_decode_into_current_events() {
        let current = Schema::parse_str(CustomerEvent::SCHEMA).unwrap();
        let next = evolved();
        for event in samples() {
            let bytes = body(&event);
            // Written by the current schema, read as the next one (new fields take defaults) ...
            let as_next = read(&current, Some(&next), &bytes);
            let next_bytes = write(&next, as_next);
            // ... and that newer record, read back with the current schema, is the same event.
            let back = read(&next, Some(&current), &next_bytes);
            assert_eq!(CustomerEvent::from_avro(back).unwrap(), event);
        }
    }

    #[test]
    fn adding_a_required_field_is_caught() {
        let current = Schema::parse_str(CustomerEvent::SCHEMA).unwrap();
        let broken = Schema::parse_str(&CustomerEvent::SCHEMA.replacen(
            r#"{"name": "reason", "type": "string"}"#,
            r#"{"name": "reason", "type": "string"},
          {"name": "requested_by", "type": "string"}"#,
            1,
        ))
        .unwrap();
        // New readers cannot read old data that lacks the required field: not backward compatible.
        // Inside a union apache-avro reports that as `Partial` rather than an error; only `Full`
        // means every record of the writer resolves.
        let verdict = SchemaCompatibility::can_read(&current, &broken);
        assert!(!matches!(verdict, Ok(Compatibility::Full)), "{verdict:?}");
    }
}

//! The reference domain's events: one Avro record, `orders.OrderEvent`, per fact about an order.
//!
//! The schema is `schemas/orders-value.avsc`, registered under the subject `<topic>-value`.

use apache_avro::types::Value;

pub use shared_events::Envelope;
use shared_events::event::{AvroEvent, EventEnvelope, EventError, Fields};
use shared_events::{AvroReader, AvroWriter};

/// The default topic of the orders aggregate.
pub const DEFAULT_TOPIC: &str = "orders";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LineItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// What happened to the order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderPayload {
    Placed {
        customer_id: String,
        currency: String,
        items: Vec<LineItem>,
        total_cents: i64,
    },
    Paid {
        amount_cents: i64,
        payment_ref: String,
    },
    Shipped {
        carrier: String,
        tracking_number: String,
    },
    Cancelled {
        reason: String,
    },
}

impl OrderPayload {
    /// The Avro record name of the payload, as in the schema.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "OrderPlaced",
            Self::Paid { .. } => "OrderPaid",
            Self::Shipped { .. } => "OrderShipped",
            Self::Cancelled { .. } => "OrderCancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEvent {
    pub envelope: Envelope,
    pub payload: OrderPayload,
}

impl EventEnvelope for OrderEvent {
    fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

impl AvroEvent for OrderEvent {
    const SCHEMA: &'static str = include_str!("../../schemas/orders-value.avsc");

    fn key(&self) -> &str {
        &self.envelope.aggregate_id
    }

    fn write_avro(&self, w: &mut AvroWriter<'_>) {
        self.envelope.write_avro(w);
        // Union branch indexes follow the order of the payload union in the schema.
        match &self.payload {
            OrderPayload::Placed {
                customer_id,
                currency,
                items,
                total_cents,
            } => {
                w.branch(0);
                w.string(customer_id);
                w.string(currency);
                w.array(items, |w, item| {
                    w.string(&item.sku);
                    w.int(item.quantity);
                    w.long(item.unit_price_cents);
                });
                w.long(*total_cents);
            }
            OrderPayload::Paid {
                amount_cents,
                payment_ref,
            } => {
                w.branch(1);
                w.long(*amount_cents);
                w.string(payment_ref);
            }
            OrderPayload::Shipped {
                carrier,
                tracking_number,
            } => {
                w.branch(2);
                w.string(carrier);
                w.string(tracking_number);
            }
            OrderPayload::Cancelled { reason } => {
                w.branch(3);
                w.string(reason);
            }
        }
    }

    fn read_avro(r: &mut AvroReader<'_>) -> Result<Self, EventError> {
        let envelope = Envelope::read_avro(r)?;
        let payload = match r.branch(4)? {
            0 => OrderPayload::Placed {
                customer_id: r.string()?,
                currency: r.string()?,
                items: r.array(|r| {
                    Ok(LineItem {
                        sku: r.string()?,
                        quantity: r.int()?,
                        unit_price_cents: r.long()?,
                    })
                })?,
                total_cents: r.long()?,
            },
            1 => OrderPayload::Paid {
                amount_cents: r.long()?,
                payment_ref: r.string()?,
            },
            2 => OrderPayload::Shipped {
                carrier: r.string()?,
                tracking_number: r.string()?,
            },
            _ => OrderPayload::Cancelled {
                reason: r.string()?,
            },
        };
        Ok(Self { envelope, payload })
    }

    fn from_avro(value: Value) -> Result<Self, EventError> {
        let mut f = Fields::of(value, "OrderEvent")?;
        let envelope = Envelope::from_fields(&mut f)?;
        let (branch, body) = f.union("payload")?;
        let payload = match branch {
            0 => {
                let mut p = Fields::of(body, "OrderPlaced")?;
                let items = p
                    .array("items")?
                    .into_iter()
                    .map(|item| {
                        let mut i = Fields::of(item, "LineItem")?;
                        Ok(LineItem {
                            sku: i.string("sku")?,
                            quantity: i.int("quantity")?,
                            unit_price_cents: i.long("unit_price_cents")?,
                        })
                    })
                    .collect::<Result<_, EventError>>()?;
                OrderPayload::Placed {
                    customer_id: p.string("customer_id")?,
                    currency: p.string("currency")?,
                    items,
                    total_cents: p.long("total_cents")?,
                }
            }
            1 => {
                let mut p = Fields::of(body, "OrderPaid")?;
                OrderPayload::Paid {
                    amount_cents: p.long("amount_cents")?,
                    payment_ref: p.string("payment_ref")?,
                }
            }
            2 => {
                let mut p = Fields::of(body, "OrderShipped")?;
                OrderPayload::Shipped {
                    carrier: p.string("carrier")?,
                    tracking_number: p.string("tracking_number")?,
                }
            }
            3 => {
                let mut p = Fields::of(body, "OrderCancelled")?;
                OrderPayload::Cancelled {
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
    pub(crate) fn body(event: &OrderEvent) -> Vec<u8> {
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

    pub(crate) fn samples() -> Vec<OrderEvent> {
        let envelope = |version| Envelope {
            event_id: format!("e-{version}"),
            aggregate_id: "o-1".into(),
            aggregate_version: version,
            occurred_at_ms: 1_795_000_000_000 + version,
            command_id: "k-1".into(),
            idempotency_key: (version % 2 == 0).then(|| format!("key-{version}")),
            correlation_id: "c-1".into(),
        };
        vec![
            OrderEvent {
                envelope: envelope(1),
                payload: OrderPayload::Placed {
                    customer_id: "c-42".into(),
                    currency: "EUR".into(),
                    items: vec![
                        LineItem {
                            sku: "A-1".into(),
                            quantity: 2,
                            unit_price_cents: 1250,
                        },
                        LineItem {
                            sku: "B-7".into(),
                            quantity: 1,
                            unit_price_cents: 99,
                        },
                    ],
                    total_cents: 2599,
                },
            },
            OrderEvent {
                envelope: envelope(2),
                payload: OrderPayload::Paid {
                    amount_cents: 2599,
                    payment_ref: "pay-9".into(),
                },
            },
            OrderEvent {
                envelope: envelope(3),
                payload: OrderPayload::Shipped {
                    carrier: "DHL".into(),
                    tracking_number: "JJD0001".into(),
                },
            },
            OrderEvent {
                envelope: envelope(4),
                payload: OrderPayload::Cancelled {
                    reason: "changed my mind".into(),
                },
            },
        ]
    }

    #[test]
    fn every_event_round_trips_through_avro_bytes() {
        let schema = Schema::parse_str(OrderEvent::SCHEMA).unwrap();
        for event in samples() {
            let value = read(&schema, None, &body(&event));
            assert_eq!(OrderEvent::from_avro(value).unwrap(), event);
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
            const ALPHABET: [&str; 6] = ["a", "Z", "0", "-", "é", "✓"];
            let len = usize::try_from(self.next() % 140).unwrap();
            (0..len)
                .map(|_| ALPHABET[usize::try_from(self.next() % 6).unwrap()])
                .collect()
        }
    }

    fn random_event(rng: &mut Rng) -> OrderEvent {
        let envelope = Envelope {
            event_id: rng.string(),
            aggregate_id: rng.string(),
            aggregate_version: rng.long(),
            occurred_at_ms: rng.long(),
            command_id: rng.string(),
            idempotency_key: rng.next().is_multiple_of(2).then(|| rng.string()),
            correlation_id: rng.string(),
        };
        let payload = match rng.next() % 4 {
            0 => OrderPayload::Placed {
                customer_id: rng.string(),
                currency: rng.string(),
                items: (0..rng.next() % 70)
                    .map(|_| LineItem {
                        sku: rng.string(),
                        #[allow(clippy::cast_possible_truncation)]
                        quantity: rng.long() as i32,
                        unit_price_cents: rng.long(),
                    })
                    .collect(),
                total_cents: rng.long(),
            },
            1 => OrderPayload::Paid {
                amount_cents: rng.long(),
                payment_ref: rng.string(),
            },
            2 => OrderPayload::Shipped {
                carrier: rng.string(),
                tracking_number: rng.string(),
            },
            _ => OrderPayload::Cancelled {
                reason: rng.string(),
            },
        };
        OrderEvent { envelope, payload }
    }

    /// The direct writer against apache-avro: its bytes decode under the schema to the same
    /// event, apache-avro writing that decoded value produces the very same bytes, and the
    /// direct reader reads them back to the same event.
    #[test]
    fn the_direct_writer_agrees_with_apache_avro_on_random_events() {
        let schema = Schema::parse_str(OrderEvent::SCHEMA).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2_000 {
            let event = random_event(&mut rng);
            let bytes = body(&event);
            let value = read(&schema, None, &bytes);
            assert_eq!(write(&schema, value.clone()), bytes, "{event:?}");
            assert_eq!(OrderEvent::from_avro(value).unwrap(), event);
            // The direct reader, on the same bytes.
            let mut reader = shared_events::AvroReader::new(&bytes);
            assert_eq!(OrderEvent::read_avro(&mut reader).unwrap(), event);
            reader.finish().unwrap();
        }
    }

    #[test]
    fn a_record_of_the_wrong_shape_is_an_error() {
        let err = OrderEvent::from_avro(Value::Record(vec![])).unwrap_err();
        assert!(matches!(err, EventError::MissingField("event_id")));
    }

    // Schema evolution: what a next version of the schema may and may not do.

    /// A plausible next version: a new optional field with a default in the envelope and in
    /// `OrderPaid`. Adding fields with defaults must stay compatible both ways.
    fn evolved() -> Schema {
        let text = OrderEvent::SCHEMA
            .replacen(
                r#"{"name": "correlation_id""#,
                r#"{"name": "tenant", "type": "string", "default": "default"},
    {"name": "correlation_id""#,
                1,
            )
            .replacen(
                r#"{"name": "payment_ref", "type": "string"}"#,
                r#"{"name": "payment_ref", "type": "string"},
          {"name": "method", "type": ["null", "string"], "default": null}"#,
                1,
            );
        assert_ne!(
            text,
            OrderEvent::SCHEMA,
            "the evolution must change the schema"
        );
        Schema::parse_str(&text).unwrap()
    }

    #[test]
    fn adding_defaulted_fields_is_fully_compatible() {
        let current = Schema::parse_str(OrderEvent::SCHEMA).unwrap();
        let next = evolved();
        let full = Some(Compatibility::Full);
        assert_eq!(SchemaCompatibility::can_read(&current, &next).ok(), full);
        assert_eq!(SchemaCompatibility::can_read(&next, &current).ok(), full);
    }

    #[test]
    fn records_written_by_a_newer_schema_decode_into_current_events() {
        let current = Schema::parse_str(OrderEvent::SCHEMA).unwrap();
        let next = evolved();
        for event in samples() {
            let bytes = body(&event);
            // Written by the current schema, read as the next one (new fields take defaults) ...
            let as_next = read(&current, Some(&next), &bytes);
            let next_bytes = write(&next, as_next);
            // ... and that newer record, read back with the current schema, is the same event.
            let back = read(&next, Some(&current), &next_bytes);
            assert_eq!(OrderEvent::from_avro(back).unwrap(), event);
        }
    }

    #[test]
    fn adding_a_required_field_is_caught() {
        let current = Schema::parse_str(OrderEvent::SCHEMA).unwrap();
        let broken = Schema::parse_str(&OrderEvent::SCHEMA.replacen(
            r#"{"name": "payment_ref", "type": "string"}"#,
            r#"{"name": "payment_ref", "type": "string"},
          {"name": "method", "type": "string"}"#,
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

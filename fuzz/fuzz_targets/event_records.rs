//! Any Avro body of a record on the orders or customers topic: decoding (as the replicas and the
//! command side's replay do, after the Confluent header) answers an event or an error, never
//! panics; an event that decodes is written back by our own Avro writer to bytes that decode
//! to the same event; and the direct reader (what the codec uses for records of this build's
//! schema) accepts exactly the bodies apache-avro reads whole, as the same events.

#![no_main]

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use libfuzzer_sys::fuzz_target;
use shared_events::{AvroEvent, AvroReader, AvroWriter};

/// Reads a body written with `schema` and resolves it against the same schema, as the codec
/// does for a record whose writer schema is this build's.
fn read(schema: &Schema, mut body: &[u8]) -> Option<Value> {
    GenericDatumReader::builder(schema)
        .reader_schema(schema)
        .build()
        .ok()?
        .read_value(&mut body)
        .ok()
}

/// apache-avro's event of a body it reads whole, with nothing left over.
fn reference<E: AvroEvent>(schema: &Schema, mut body: &[u8]) -> Option<E> {
    let value = GenericDatumReader::builder(schema)
        .reader_schema(schema)
        .build()
        .ok()?
        .read_value(&mut body)
        .ok()?;
    if !body.is_empty() {
        return None;
    }
    E::from_avro(value).ok()
}

fn direct<E: AvroEvent>(body: &[u8]) -> Option<E> {
    let mut reader = AvroReader::new(body);
    let event = E::read_avro(&mut reader).ok()?;
    reader.finish().ok()?;
    Some(event)
}

fn agree<E: AvroEvent + PartialEq + std::fmt::Debug>(schema: &Schema, body: &[u8]) {
    assert_eq!(
        direct::<E>(body),
        reference::<E>(schema, body),
        "the direct reader and apache-avro disagree"
    );
}

fn round_trip<E: AvroEvent + PartialEq + std::fmt::Debug>(schema: &Schema, body: &[u8]) {
    let Some(value) = read(schema, body) else {
        return;
    };
    let Ok(event) = E::from_avro(value) else {
        return;
    };
    let mut bytes = Vec::new();
    event.write_avro(&mut AvroWriter::new(&mut bytes));
    match read(schema, &bytes).map(E::from_avro) {
        Some(Ok(again)) => assert_eq!(again, event, "our writer disagrees with the schema"),
        other => panic!("an event we wrote does not decode: {other:?}"),
    }
}

/// The two topics' schemas, parsed once.
fn schemas() -> &'static (Schema, Schema) {
    static SCHEMAS: std::sync::OnceLock<(Schema, Schema)> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        (
            Schema::parse_str(orders::events::OrderEvent::SCHEMA).unwrap(),
            Schema::parse_str(customers::events::CustomerEvent::SCHEMA).unwrap(),
        )
    })
}

fuzz_target!(|body: &[u8]| {
    // Bounded: a length prefix must not make the decoder allocate gigabytes.
    apache_avro::util::max_allocation_bytes(1 << 20);
    let (orders, customers) = schemas();
    round_trip::<orders::events::OrderEvent>(orders, body);
    round_trip::<customers::events::CustomerEvent>(customers, body);
    agree::<orders::events::OrderEvent>(orders, body);
    agree::<customers::events::CustomerEvent>(customers, body);
});

//! Avro binary encoding written straight from Rust values.
//!
//! An event writes its own record field by field, in schema order, with these primitives. This is
//! what the Avro specification calls the binary encoding; it is not self-describing, so a writer
//! that strays from its schema produces bytes no reader can decode. Every event type therefore
//! needs a test that reads its bytes back through `apache-avro` with the schema (see the orders
//! tests): that is where a writer is checked against its `.avsc`.
//!
//! Why not `apache_avro::types::Value`: building a `Value` tree and letting `apache-avro` validate
//! and encode it costs several microseconds and a dozen allocations per record, which was the
//! largest single cost of accepting a command.

/// Appends Avro binary values to a buffer.
#[derive(Debug)]
pub struct AvroWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> AvroWriter<'a> {
    /// Writes after whatever `out` already holds (e.g. the wire format's header).
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }

    /// An Avro `long` (also `timestamp-millis`): zig-zag, then a little-endian base-128 varint.
    pub fn long(&mut self, n: i64) {
        // Zig-zag maps small magnitudes of either sign to small unsigned numbers.
        #[allow(clippy::cast_sign_loss)] // the bit pattern is what is encoded
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            #[allow(clippy::cast_possible_truncation)] // the low seven bits, by construction
            self.out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        #[allow(clippy::cast_possible_truncation)] // below 0x80
        self.out.push(z as u8);
    }

    /// An Avro `int`: encoded exactly like a `long` of the same value.
    pub fn int(&mut self, n: i32) {
        self.long(i64::from(n));
    }

    /// An Avro `string`: its UTF-8 length as a `long`, then the bytes.
    pub fn string(&mut self, s: &str) {
        self.long(length(s.len()));
        self.out.extend_from_slice(s.as_bytes());
    }

    /// The branch of a union about to be written: its zero-based index in the schema's union.
    pub fn branch(&mut self, index: u32) {
        self.long(i64::from(index));
    }

    /// A `["null", "string"]` union.
    pub fn optional_string(&mut self, s: Option<&str>) {
        match s {
            None => self.branch(0),
            Some(s) => {
                self.branch(1);
                self.string(s);
            }
        }
    }

    /// An Avro `array` as one block: the item count, each item, then the empty block that ends it.
    pub fn array<T>(&mut self, items: &[T], mut item: impl FnMut(&mut Self, &T)) {
        if !items.is_empty() {
            self.long(length(items.len()));
            for each in items {
                item(self, each);
            }
        }
        self.long(0);
    }
}

/// A length as Avro writes it. Lengths of values in memory fit an `i64` on every target Rust
/// supports.
fn length(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use apache_avro::Schema;
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;

    use super::*;

    /// What apache-avro writes for `value` under `schema`: the reference encoding.
    fn reference(schema: &str, value: Value) -> Vec<u8> {
        let schema = Schema::parse_str(schema).unwrap();
        GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    fn written(f: impl FnOnce(&mut AvroWriter<'_>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut AvroWriter::new(&mut out));
        out
    }

    #[test]
    fn longs_match_the_reference_across_the_whole_range() {
        let mut samples = vec![0, 1, -1, 63, -64, 64, -65, 8191, -8192, i64::MAX, i64::MIN];
        // Every power of two and its neighbours, both signs: each varint length boundary.
        for shift in 0..63 {
            let p = 1i64 << shift;
            samples.extend([p - 1, p, p + 1, -p, -p - 1, -p + 1]);
        }
        for n in samples {
            assert_eq!(
                written(|w| w.long(n)),
                reference(r#""long""#, Value::Long(n)),
                "{n}"
            );
        }
        for n in [0, 1, -1, i32::MAX, i32::MIN, 300, -300] {
            assert_eq!(
                written(|w| w.int(n)),
                reference(r#""int""#, Value::Int(n)),
                "{n}"
            );
        }
    }

    #[test]
    fn strings_unions_and_arrays_match_the_reference() {
        for s in ["", "a", "ünïcødé ✓", &"x".repeat(300)] {
            assert_eq!(
                written(|w| w.string(s)),
                reference(r#""string""#, Value::String(s.to_owned()))
            );
        }
        let union = r#"["null", "string"]"#;
        assert_eq!(
            written(|w| w.optional_string(None)),
            reference(union, Value::Union(0, Box::new(Value::Null)))
        );
        assert_eq!(
            written(|w| w.optional_string(Some("k"))),
            reference(union, Value::Union(1, Box::new(Value::String("k".into()))))
        );
        let array = r#"{"type": "array", "items": "long"}"#;
        for items in [vec![], vec![5_i64], (0..200).collect()] {
            assert_eq!(
                written(|w| w.array(&items, |w, n| w.long(*n))),
                reference(
                    array,
                    Value::Array(items.iter().copied().map(Value::Long).collect())
                )
            );
        }
    }
}

//! Avro binary encoding written straight from Rust values, and read straight back.
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

/// Why bytes did not read as the values asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the record ends early")]
    Truncated,
    #[error("a varint is longer than ten bytes")]
    LongVarint,
    #[error("a length is negative or larger than what is left")]
    BadLength,
    #[error("an int is out of range")]
    IntRange,
    #[error("a string is not UTF-8")]
    NotUtf8,
    #[error("union branch {0} is not in the schema")]
    Branch(i64),
    #[error("bytes are left after the record")]
    Trailing,
}

/// Reads Avro binary values, in schema order, from a record body written by exactly the
/// schema the reader mirrors. Every length is checked against what is left before anything is
/// allocated, so a forged length costs nothing.
#[derive(Debug)]
pub struct AvroReader<'a> {
    bytes: &'a [u8],
}

impl<'a> AvroReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// An Avro `long`: a little-endian base-128 varint of at most ten bytes, then zig-zag.
    pub fn long(&mut self) -> Result<i64, ReadError> {
        let mut z: u64 = 0;
        for (i, byte) in self.bytes.iter().enumerate().take(10) {
            z |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                #[allow(clippy::cast_possible_wrap)] // the bit pattern is what was encoded
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(if self.bytes.len() >= 10 {
            ReadError::LongVarint
        } else {
            ReadError::Truncated
        })
    }

    /// An Avro `int`.
    pub fn int(&mut self) -> Result<i32, ReadError> {
        i32::try_from(self.long()?).map_err(|_| ReadError::IntRange)
    }

    /// A length that the rest of the record can hold.
    fn length(&mut self) -> Result<usize, ReadError> {
        usize::try_from(self.long()?)
            .ok()
            .filter(|n| *n <= self.bytes.len())
            .ok_or(ReadError::BadLength)
    }

    /// An Avro `string`.
    pub fn string(&mut self) -> Result<String, ReadError> {
        let n = self.length()?;
        let (text, rest) = self.bytes.split_at(n);
        let text = std::str::from_utf8(text).map_err(|_| ReadError::NotUtf8)?;
        self.bytes = rest;
        Ok(text.to_owned())
    }

    /// The branch of a union, below `branches`.
    pub fn branch(&mut self, branches: u32) -> Result<u32, ReadError> {
        let index = self.long()?;
        u32::try_from(index)
            .ok()
            .filter(|i| *i < branches)
            .ok_or(ReadError::Branch(index))
    }

    /// A `["null", "string"]` union.
    pub fn optional_string(&mut self) -> Result<Option<String>, ReadError> {
        match self.branch(2)? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }

    /// An Avro `array`, in any number of blocks (a block with a negative count gives its size
    /// in bytes next, which is skipped over as the items are read).
    pub fn array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ReadError>,
    ) -> Result<Vec<T>, ReadError> {
        let mut items = Vec::new();
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(items);
            }
            if count < 0 {
                self.long()?;
            }
            // Every item of ours takes at least a byte: a count beyond what is left is forged.
            let count = usize::try_from(count.unsigned_abs())
                .ok()
                .filter(|n| *n <= self.bytes.len())
                .ok_or(ReadError::BadLength)?;
            // Reserved in steps: a forged count of small items cannot make a large one.
            items.reserve(count.min(1_024));
            for _ in 0..count {
                items.push(item(self)?);
            }
        }
    }

    /// Succeeds if the whole record was read.
    pub fn finish(self) -> Result<(), ReadError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(ReadError::Trailing)
        }
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
    fn what_is_written_reads_back() {
        let mut samples = vec![0, 1, -1, i64::MAX, i64::MIN];
        for shift in 0..63 {
            let p = 1i64 << shift;
            samples.extend([p - 1, p, -p, -p - 1]);
        }
        let bytes = written(|w| {
            for n in &samples {
                w.long(*n);
            }
            w.int(i32::MIN);
            w.string("ünïcødé ✓");
            w.optional_string(None);
            w.optional_string(Some("k"));
            w.array(&[3_i64, -4], |w, n| w.long(*n));
        });
        let mut r = AvroReader::new(&bytes);
        for n in &samples {
            assert_eq!(r.long(), Ok(*n));
        }
        assert_eq!(r.int(), Ok(i32::MIN));
        assert_eq!(r.string().unwrap(), "ünïcødé ✓");
        assert_eq!(r.optional_string(), Ok(None));
        assert_eq!(r.optional_string(), Ok(Some("k".into())));
        assert_eq!(r.array(AvroReader::long), Ok(vec![3, -4]));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn forged_bytes_are_refused_without_allocating() {
        // A string claiming a gigabyte.
        let huge = written(|w| w.long(1 << 30));
        assert_eq!(AvroReader::new(&huge).string(), Err(ReadError::BadLength));
        assert_eq!(
            AvroReader::new(&huge).array(AvroReader::long),
            Err(ReadError::BadLength)
        );
        assert_eq!(
            AvroReader::new(&[0x80; 11]).long(),
            Err(ReadError::LongVarint)
        );
        assert_eq!(AvroReader::new(&[0x80]).long(), Err(ReadError::Truncated));
        assert_eq!(AvroReader::new(&[4]).branch(2), Err(ReadError::Branch(2)));
        assert_eq!(
            AvroReader::new(&[2, 0xff]).string(),
            Err(ReadError::NotUtf8)
        );
        assert_eq!(AvroReader::new(&[0, 0]).finish(), Err(ReadError::Trailing));
        // A block of apache-avro's other form: negative count, then its size in bytes.
        let blocked = [1, 2, 6, 0];
        assert_eq!(
            AvroReader::new(&blocked).array(AvroReader::long),
            Ok(vec![3])
        );
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

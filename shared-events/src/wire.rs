//! The Confluent wire format through a schema registry.
//!
//! A record value is `0x00`, the writer schema's registry id (4 bytes, big-endian), then the Avro
//! binary body. Encoding registers (or finds) this build's schema under the topic's value subject
//! and uses its id. Decoding fetches the writer schema by id (once per id): a record written with
//! a schema of the same Parsing Canonical Form as this build's (the same binary layout) is read
//! straight from its bytes ([`AvroEvent::read_avro`]); any other is resolved against this build's
//! schema, so records written by an older or newer compatible schema decode too.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Mutex, OnceLock};

use apache_avro::Schema;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::binary::{AvroReader, AvroWriter};
use crate::event::{AvroEvent, EventError};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the schema compiled into this build is invalid")]
    InvalidSchema(#[source] apache_avro::Error),
    /// The registry refused, was unreachable or timed out. `retriable` says whether trying again
    /// may help (network trouble) or not (an incompatible schema, a record that doesn't decode).
    /// The registry answered 401 or 403: the credentials are missing or wrong.
    #[error(
        "the schema registry refused this service's credentials ({status}): check --registry-basic-auth or --registry-bearer-token"
    )]
    Unauthorized {
        status: String,
        #[source]
        source: SRCError,
    },
    #[error("schema registry call failed: {source}")]
    Registry {
        retriable: bool,
        #[source]
        source: SRCError,
    },
    #[error("record value does not resolve against the reader schema")]
    Resolve(#[source] apache_avro::Error),
    #[error("record value does not have the event's shape")]
    Shape(#[from] EventError),
    #[error("record has no value")]
    EmptyValue,
}

impl From<SRCError> for WireError {
    fn from(source: SRCError) -> Self {
        for status in ["401 Unauthorized", "403 Forbidden"] {
            if source.error.contains(status) {
                return Self::Unauthorized {
                    status: status.to_owned(),
                    source,
                };
            }
        }
        Self::Registry {
            retriable: source.retriable,
            source,
        }
    }
}

/// Encodes and decodes one event type in the Confluent wire format for one topic.
///
/// Cheap to share behind an `Arc`; the encoder and decoder cache schemas and ids.
pub struct EventCodec<E> {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    strategy: SubjectNameStrategy,
    reader_schema: Schema,
    /// This build's schema id in the registry, once known: ids never change for a schema.
    schema_id: OnceLock<u32>,
    registry: SrSettings,
    /// The reader schema's Parsing Canonical Form: writer schemas of the same form lay records
    /// out the same way.
    canonical: String,
    /// Per writer schema id seen: whether its records are read directly. Ids are few (one per
    /// schema version registered), and only ids the registry knows are kept.
    direct: Mutex<HashMap<u32, bool>>,
    _event: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for EventCodec<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCodec")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// The subject of a topic's record values under Confluent's TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The most one decoded string, byte array or collection may take: far above any event of
/// ours (a request body is at most 64 KiB by default) and far below what a forged length could
/// ask for. Process-wide: apache-avro keeps one limit, set once.
pub const MAX_DECODE_ALLOCATION: usize = 16 * 1024 * 1024;

impl<E: AvroEvent> EventCodec<E> {
    /// A codec for the values of `topic`, talking to the registry as `registry` says (its URL,
    /// credentials, TLS trust and timeout).
    pub fn new(registry: SrSettings, topic: &str) -> Result<Self, WireError> {
        // A record is read from the log, where anyone with write access may have put it: its
        // length prefixes must not make the decoder allocate apache-avro's default of 512 MiB.
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
        let reader_schema = Schema::parse_str(E::SCHEMA).map_err(WireError::InvalidSchema)?;
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, E::SCHEMA.to_owned());
        let canonical = reader_schema.canonical_form();
        Ok(Self {
            encoder: AvroEncoder::new(registry.clone()),
            decoder: AvroDecoder::new(registry.clone()),
            strategy: SubjectNameStrategy::TopicNameStrategyWithSchema(
                topic.to_owned(),
                false,
                supplied,
            ),
            reader_schema,
            schema_id: OnceLock::new(),
            registry,
            canonical,
            direct: Mutex::new(HashMap::new()),
            _event: PhantomData,
        })
    }

    /// Registers this build's schema under the topic's value subject (a no-op when it already
    /// is) and returns its registry id. Services call it at start so that an incompatible
    /// schema stops them before they accept traffic.
    pub async fn register(&self) -> Result<u32, WireError> {
        let subject = self
            .strategy
            .get_subject()
            .map_err(|source| WireError::Registry {
                retriable: false,
                source,
            })?;
        let schema = self
            .encoder
            .get_schema_and_id(&subject, self.strategy.clone())
            .await?;
        // A concurrent caller may have set it first, to the same id.
        let _ = self.schema_id.set(schema.id);
        Ok(schema.id)
    }

    /// The record value for `event`: the wire header, then the body the event writes itself.
    /// Asks the registry only until it knows the schema id.
    pub async fn encode(&self, event: &E) -> Result<Vec<u8>, WireError> {
        let id = match self.schema_id.get() {
            Some(&id) => id,
            None => self.register().await?,
        };
        let mut out = Vec::with_capacity(256);
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        event.write_avro(&mut AvroWriter::new(&mut out));
        Ok(out)
    }

    /// The event in a record value written by any registered schema compatible with ours.
    pub async fn decode(&self, bytes: &[u8]) -> Result<E, WireError> {
        if let [0, a, b, c, d, body @ ..] = bytes {
            let id = u32::from_be_bytes([*a, *b, *c, *d]);
            if self.reads_directly(id).await? {
                return Self::read_direct(body);
            }
        }
        self.resolve(bytes).await
    }

    /// [`EventCodec::decode`] without waiting, for a record written with a schema already
    /// looked up and found to be ours (nearly every record once the first is decoded); `None`
    /// when that is not known, and `decode` must ask the registry.
    pub fn decode_known(&self, bytes: &[u8]) -> Option<Result<E, WireError>> {
        let [0, a, b, c, d, body @ ..] = bytes else {
            return None;
        };
        let id = u32::from_be_bytes([*a, *b, *c, *d]);
        (self.known(id) == Some(true)).then(|| Self::read_direct(body))
    }

    /// Whether records written with schema `id` have our layout, if already looked up.
    fn known(&self, id: u32) -> Option<bool> {
        self.direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .copied()
    }

    fn read_direct(body: &[u8]) -> Result<E, WireError> {
        let mut reader = AvroReader::new(body);
        let event = E::read_avro(&mut reader)?;
        reader.finish().map_err(EventError::from)?;
        Ok(event)
    }

    /// Whether records written with schema `id` have our layout, asking the registry once.
    async fn reads_directly(&self, id: u32) -> Result<bool, WireError> {
        if let Some(direct) = self.known(id) {
            return Ok(direct);
        }
        let registered = schema_registry_converter::async_impl::schema_registry::get_schema_by_id(
            id,
            &self.registry,
        )
        .await?;
        // A writer schema that does not parse is left to the resolving path to refuse.
        let direct = Schema::parse_str(&registered.schema)
            .is_ok_and(|writer| writer.canonical_form() == self.canonical);
        self.direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, direct);
        Ok(direct)
    }

    /// The event in a record value, resolved by apache-avro from its writer schema to ours.
    async fn resolve(&self, bytes: &[u8]) -> Result<E, WireError> {
        let decoded = self.decoder.decode(Some(bytes)).await?;
        if decoded.value == apache_avro::types::Value::Null {
            return Err(WireError::EmptyValue);
        }
        let value = decoded
            .value
            .resolve(&self.reader_schema)
            .map_err(WireError::Resolve)?;
        Ok(E::from_avro(value)?)
    }
}

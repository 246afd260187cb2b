//! Events on the wire, for any domain: the Avro contract between the command service, the query
//! replicas and any other Kafka client. The domains' own events live in their crates.
//!
//! - [`aggregate`]: the contract between a domain's aggregate and the command engine
//!   ([`Aggregate`]): parse, decide, evolve.
//! - [`validation`]: the toolkit request bodies are checked with, naming every bad field.
//! - [`view`]: the contract between a domain's read model and the projection engine
//!   ([`view::ReadModel`]): how an event changes the views.
//! - [`report`]: the contract between a domain's reports and the engine that runs them over
//!   a fixed range of the log ([`report::Report`]): a fold, finished into a table.
//! - [`event`]: the small trait a domain event implements to travel as Avro ([`AvroEvent`]).
//! - [`binary`]: the Avro binary primitives an event writes its record with.
//! - [`wire`]: the Confluent wire format (magic byte, 4-byte schema id, Avro body) through a
//!   schema registry, via `schema_registry_converter`.
//! - [`key`]: what an aggregate id may look like ([`Identifier`]), on both sides.
//! - [`partitioner`]: Kafka's murmur2 partitioner, so every client agrees which partition owns a key.
//! - [`position`]: a record's place in the log and the consistency token that names it.
//!
//! Guarantees: the `.avsc` files are the source of truth and Rust values are converted to and from
//! Avro explicitly (no serde derive onto the wire); encoding always uses the schema this build was
//! compiled with, registered under the topic's value subject; decoding resolves whatever writer
//! schema a record carries against that same reader schema, so compatible evolutions read fine.

pub mod aggregate;
pub mod binary;
pub mod event;
pub mod key;
pub mod live;
pub mod partitioner;
pub mod position;
pub mod query;
pub mod report;
#[cfg(feature = "testing")]
pub mod strategies;
pub mod validation;
pub mod view;
pub mod wire;

pub use aggregate::{Aggregate, CommandError, CommandSpec, EventMetadata, FieldError, Rejection};
pub use binary::{AvroReader, AvroWriter};
pub use event::{AvroEvent, Envelope, EventEnvelope, EventError};
pub use key::Identifier;
pub use position::{ConsistencyToken, Position};
pub use wire::{EventCodec, WireError};

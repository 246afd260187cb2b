//! The command service: turns validated REST commands into Avro events committed to Kafka.
//!
//! A request is parsed at the edge into a typed command ([`order`]), decided into an event,
//! encoded in the Confluent wire format, and queued in the bounded [`batcher`], whose
//! transactional producers commit batches and only then answer. So a `2xx` means the event is in
//! a committed Kafka transaction; a full queue answers `429` at once; Kafka trouble answers `503`
//! within a bounded time. Errors become `application/problem+json` in one place ([`problem`]).

pub mod aggregates;
pub mod api;
pub mod app;
pub mod batcher;
pub mod circuit;
pub mod config;
pub mod idempotency;
pub mod metrics;
pub mod openapi;

pub mod problem;
pub mod replay;
pub mod sharded;
pub mod topics;
pub mod write_model;

pub use app::{Application, StartupError};
pub use config::Config;

//! A query replica: projects the order events into a local RocksDB store and answers queries.
//!
//! Each replica is a member of one consumer group (read-committed, so aborted command batches
//! are never seen) and owns the partitions the group assigns it. The [`projection`] runner
//! writes each view change together with the offset it came from in one RocksDB batch, and
//! resumes every partition from its own store, so an event is applied exactly once even across
//! crashes. `GET /orders/{id}` answers from the store when this replica owns the key's partition
//! (Kafka's murmur2, as the producers use) and otherwise says so with a retryable `503`.

pub mod api;
pub mod app;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod openapi;
pub mod order_projection;
pub mod problem;
pub mod projection;
pub mod routing;
pub mod store;

pub use app::{Application, StartupError};
pub use config::Config;

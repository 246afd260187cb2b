//! A query replica: projects the events into a local RocksDB store and answers queries.
//!
//! A replica runs two projections, each with a consumer group (read-committed, so aborted
//! command batches are never seen), a thread and a store namespace of its own:
//! `orders::projection` over the orders topic, and `customers::projection` over the customers
//! and the orders topics (profiles joined with what each customer's orders add up to); the read
//! models are the domains', the runners, the store and the routes this crate's. The
//! [`projection`] runner writes each view change together with the offset it came from in one
//! RocksDB batch, and resumes every partition from its own store, so an event is applied exactly
//! once per projection even across crashes. A query is answered from the store when this
//! replica owns the key's partition (Kafka's murmur2, as the producers use), forwarded once to
//! the owner otherwise ([`routing`]), and a query over all partitions gathers every owner's
//! share or answers a retryable `503`.

pub mod api;
pub mod app;
pub mod config;
pub mod feeds;
pub mod metrics;
pub mod openapi;
pub mod problem;

pub use projection_engine::{cluster, projection, routing, store};

pub use app::{Application, StartupError};
pub use config::Config;

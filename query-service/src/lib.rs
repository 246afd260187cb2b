//! A query replica: projects the events into a local RocksDB store and answers queries.
//!
//! This crate is the composition root: its configuration, the projections it runs
//! ([`app`]: `orders::projection` over the orders topic, `customers::projection` over the
//! customers and the orders topics, each with a consumer group, a thread and a store namespace
//! of its own) and the queries it serves ([`api::catalog`]: each domain's `queries::register`).
//! The runners, the store, routing between replicas and the HTTP answers are
//! `projection_engine`'s: each event is applied exactly once per projection, a key is answered
//! by the replica owning its partition (forwarded once otherwise), and a query over all
//! partitions gathers every owner's part or answers a retryable `503`.

pub mod api;
pub mod app;
pub mod config;
pub mod openapi;

pub use projection_engine::{cluster, projection, routing, store};

pub use app::{Application, StartupError};
pub use config::Config;

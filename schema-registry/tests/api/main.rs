//! End-to-end tests: each test starts the registry in-process on a fresh
//! Kafka topic and talks to it over HTTP.
//!
//! Needs a broker: `KAFKA_BOOTSTRAP=127.0.0.1:19092 cargo test -p schema-registry`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod compatibility;
mod config;
mod content_types;
mod deletes;
mod errors;
mod persistence;
mod schemas;

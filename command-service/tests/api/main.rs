//! The command service over real HTTP, against the real Kafka and schema registry that
//! `cargo xtask test` starts (`KAFKA_BOOTSTRAP`, `SCHEMA_REGISTRY_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod cluster;
mod commands;
mod customers;
mod failures;
mod helpers;
mod interop;
mod openapi;
mod place_order;
mod restart;

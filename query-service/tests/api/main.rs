//! Query replicas over real HTTP, fed by the real command service through the real Kafka and
//! schema registry that `cargo xtask test` starts (`KAFKA_BOOTSTRAP`, `SCHEMA_REGISTRY_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod browser;
mod customers;
mod end_to_end;
mod helpers;
mod live;
mod openapi;
mod rebuild;
mod reports;
mod secured;
mod standby;

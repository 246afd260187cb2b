//! A Confluent-compatible schema registry (Avro only) whose state lives in
//! a compacted, single-partition Kafka topic.
//!
//! It speaks the Confluent Schema Registry REST API (`/subjects`,
//! `/schemas/ids`, `/config`, `/compatibility`), so stock serializers and
//! clients work against it. Guarantees:
//!
//! - **Stable ids.** A schema gets one global id, shared by every subject
//!   that registers it. Identity is decided on a normalized form (parsed
//!   and re-serialized with `apache-avro`, object keys sorted): whitespace
//!   and key order do not matter, while defaults, docs and custom
//!   properties do. The normalized text is what is stored and returned.
//!   Ids and versions are never reused, even after permanent deletes.
//! - **Persistence.** Every mutation is written to the Kafka topic and
//!   acknowledged (`acks=all`, idempotent producer) *before* memory changes
//!   and before the client gets an answer. At startup the topic is replayed
//!   to its high watermark before the first request is served, so a
//!   restart sees the same ids, versions, configs and deletions. If Kafka
//!   is unavailable, writes fail with `50003` within the configured
//!   timeout while reads keep being served from memory.
//! - **Compatibility.** `NONE`, `BACKWARD` (default), `FORWARD`, `FULL`
//!   and their `_TRANSITIVE` variants, checked with Avro's schema
//!   resolution rules; incompatible registrations get `409`.
//!
//! One registry instance should own a topic at a time: writes are
//! serialized inside the process, not across processes.
//!
//! ```no_run
//! # async fn run() -> Result<(), schema_registry::RegistryError> {
//! use schema_registry::{Application, Config};
//! let config = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
//! let app = Application::build(config).await?;
//! println!("serving on port {}", app.port());
//! app.run_until_stopped().await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod app;
mod compatibility;
mod config;
mod error;
mod persistence;
mod records;
mod registry;
mod schema;
mod store;

pub use app::Application;
pub use compatibility::CompatibilityLevel;
pub use config::Config;
pub use error::RegistryError;

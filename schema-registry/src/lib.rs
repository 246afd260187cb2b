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
//! Deliberate differences from Confluent's registry:
//!
//! - Avro only; `schemaType` other than `AVRO` and non-empty `references`
//!   are rejected with `422`/`42201`.
//! - Schemas are returned in normalized form, not byte-for-byte as sent.
//!   Properties `apache-avro` does not model on primitive types (e.g.
//!   `{"type":"string","avro.java.string":"String"}`) are dropped by it and
//!   so do not make a schema distinct.
//! - A body that is not JSON (or not the expected shape) is `422` with
//!   `error_code` 422; unknown routes are `404`/404 and wrong methods
//!   `405`/405, all with the usual error body.
//! - Kafka failures on writes are `500`/`50003`.
//! - Permanent deletes write an `ID_WATERMARK` record so ids are never
//!   reused even after compaction; a permanent subject delete also removes
//!   the subject's compatibility setting (a soft delete keeps it).
//! - Compatibility uses `apache-avro`'s resolution checker: record aliases
//!   are not honoured and a named type referenced by name in one schema but
//!   defined inline at the same spot in the other is reported incompatible.
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
mod auth;
mod compatibility;
mod config;
mod error;
mod persistence;
mod records;
mod registry;
mod schema;
mod store;
mod tls;

/// The schema rules on their own, for the fuzz targets (`fuzz/`): what a client's schema text
/// becomes, and what the compatibility check says of two.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use crate::compatibility::{Previous, check};
    use crate::schema::AvroSchema;

    pub use crate::compatibility::CompatibilityLevel;

    /// A schema text's normalized form and identity, or why it is refused.
    pub fn normalize(raw: &str) -> Result<(String, String), String> {
        AvroSchema::parse(raw)
            .map(|s| (s.normalized().to_owned(), s.identity().to_owned()))
            .map_err(|e| e.to_string())
    }

    /// What the check says of `candidate` against `previous` (oldest first) under `level`;
    /// none if a text does not parse.
    pub fn check_texts(
        level: CompatibilityLevel,
        candidate: &str,
        previous: &[&str],
    ) -> Option<Vec<String>> {
        let candidate = AvroSchema::parse(candidate).ok()?;
        let parsed: Vec<AvroSchema> = previous
            .iter()
            .map(|raw| AvroSchema::parse(raw).ok())
            .collect::<Option<_>>()?;
        let previous: Vec<Previous<'_>> = (1..)
            .zip(&parsed)
            .map(|(version, schema)| Previous { version, schema })
            .collect();
        Some(check(level, &candidate, &previous))
    }
}

pub use app::Application;
pub use compatibility::CompatibilityLevel;
pub use config::Config;
pub use error::RegistryError;

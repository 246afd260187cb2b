//! The query replica's configuration: one typed struct from flags and environment, validated at
//! start and logged.

use std::path::PathBuf;

use clap::Parser;

/// Query replica: projects the order events into RocksDB and answers queries.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-service", version)]
pub struct Config {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "QUERY_LISTEN", default_value = "127.0.0.1:8091")]
    pub listen: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,
    /// Base URL of the schema registry (Confluent REST API).
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry_url: String,
    /// Topic of the order events.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub topic: String,
    /// Consumer group shared by all replicas; partitions are split among its members.
    #[arg(long, env = "QUERY_GROUP_ID", default_value = "orders-query")]
    pub group_id: String,
    /// Directory of this replica's RocksDB store (one per replica).
    #[arg(long, env = "QUERY_DATA_DIR", default_value = "data/query")]
    pub data_dir: PathBuf,
    /// Name of this replica in `Served-By` and in the group; defaults to `query-<port>`.
    #[arg(long, env = "QUERY_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Group session timeout: how soon the group notices a replica that died.
    #[arg(long, env = "QUERY_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Bound on each Kafka metadata call, in milliseconds.
    #[arg(long, env = "QUERY_KAFKA_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_timeout_ms: u64,
    /// How long to wait at start for the topic to exist, in milliseconds.
    #[arg(long, env = "QUERY_TOPIC_WAIT_MS", default_value_t = 60_000)]
    pub topic_wait_ms: u64,
    /// Bound on each schema registry call, in milliseconds.
    #[arg(long, env = "QUERY_REGISTRY_TIMEOUT_MS", default_value_t = 5_000)]
    pub registry_timeout_ms: u64,
    /// HTTP worker threads.
    #[arg(long, env = "QUERY_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The defaults, as if started with no flags and no environment.
    pub fn defaults() -> Self {
        Self::parse_from(["query-service"])
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_owned()));
        if self.topic.is_empty() || self.topic.contains(':') {
            return fail("topic must be non-empty and contain no ':'");
        }
        if self.group_id.is_empty() {
            return fail("group id must be non-empty");
        }
        if self
            .replica_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || !id.is_ascii())
        {
            return fail("replica id must be non-empty ASCII");
        }
        if self.http_workers == 0 {
            return fail("http workers must be at least 1");
        }
        if self.session_timeout_ms < 1_000
            || self.kafka_timeout_ms == 0
            || self.registry_timeout_ms == 0
        {
            return fail("timeouts must be positive and the session timeout at least 1000 ms");
        }
        if !self.registry_url.starts_with("http://") && !self.registry_url.starts_with("https://") {
            return fail("registry url must start with http:// or https://");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::defaults().validate().is_ok());
    }

    #[test]
    fn nonsense_is_refused() {
        let mut c = Config::defaults();
        c.replica_id = Some(String::new());
        assert!(c.validate().is_err());
        let mut c = Config::defaults();
        c.session_timeout_ms = 10;
        assert!(c.validate().is_err());
    }
}

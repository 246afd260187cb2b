//! The command service's configuration: one typed struct from flags, environment and an optional
//! file (in that order of precedence, see `service_config`), validated at start and logged.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use service_config::{KafkaArgs, RegistryArgs};

use command_engine::batcher::{BatcherConfig, Fence};

/// Command service: validates commands (orders, customers) and commits their events to Kafka.
#[derive(Clone, Parser)]
#[command(name = "command-service", version)]
pub struct Config {
    /// A TOML file of settings, named as the flags are (`max_batch = 1024`); flags and
    /// environment variables override it.
    #[arg(long, env = "COMMAND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "COMMAND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Topic the order events are written to; its value subject is `<topic>-value`.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub topic: String,
    /// Topic the customer events are written to; its value subject is `<topic>-value`.
    #[arg(long, env = "CUSTOMERS_TOPIC", default_value = "customers")]
    pub customers_topic: String,
    /// Partitions of each topic when this service has to create it.
    #[arg(long, env = "ORDERS_TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,
    /// Replication factor of each topic when this service has to create it; -1 takes the
    /// cluster's `default.replication.factor`.
    #[arg(long, env = "ORDERS_TOPIC_REPLICATION", default_value_t = -1, allow_negative_numbers = true)]
    pub topic_replication: i32,
    /// Identity of this instance; producer `transactional.id`s are `<instance-id>-<worker>`, and
    /// it is the instance's static member id in the command group. Must be stable across
    /// restarts and unique among running instances.
    #[arg(long, env = "COMMAND_INSTANCE_ID", default_value = "command-service")]
    pub instance_id: String,
    /// Base URL other instances forward commands to this one at. Default: `http://` and the
    /// address it listens on.
    #[arg(long, env = "COMMAND_ADVERTISED_URL")]
    pub advertised_url: Option<String>,
    /// The consumer group the instances of this topic set share partitions through. Default:
    /// `<orders topic>-command`.
    #[arg(long, env = "COMMAND_GROUP_ID")]
    pub group_id: Option<String>,
    /// How long the group waits for an instance it has lost before giving its partitions to
    /// the others, in milliseconds.
    #[arg(long, env = "COMMAND_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Instances besides its owner that keep a warm copy of each partition's write model (read
    /// from the log as it is written), so that a takeover reads only what the copy has not
    /// read yet instead of the partition from its beginning: the ones after the owner in
    /// instance-id order. The group's round-robin assignment may give a dead instance's
    /// partitions to any survivor, so with N instances N - 1 makes every takeover warm; the
    /// default covers three. 0 turns standbys off.
    #[arg(long, env = "COMMAND_STANDBY_REPLICAS", default_value_t = 2)]
    pub standby_replicas: usize,
    /// Directory of this instance's write-model snapshot (a RocksDB): with one, a restart reads
    /// only what was written after the last checkpoint, and the write model in memory is a
    /// bounded cache. Without one, every assigned partition is read from its beginning.
    #[arg(long, env = "COMMAND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most aggregates of each topic kept in memory when there is a data directory (the others
    /// are read from it when a command needs them).
    #[arg(long, env = "COMMAND_CACHE_AGGREGATES", default_value_t = 1_000_000)]
    pub cache_aggregates: usize,
    /// How often the write model's changes are checkpointed to the data directory, in
    /// milliseconds: at most this much of the log is read again after a crash.
    #[arg(long, env = "COMMAND_CHECKPOINT_INTERVAL_MS", default_value_t = 1_000)]
    pub checkpoint_interval_ms: u64,
    /// Bearer token for the admin routes (`/admin/cluster`); without one they are off.
    #[arg(long, env = "COMMAND_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Transactional producers, each committing its own batches.
    #[arg(long, env = "COMMAND_PRODUCER_WORKERS", default_value_t = 2)]
    pub producer_workers: usize,
    /// Commands that may wait for a producer before new ones get 429.
    #[arg(long, env = "COMMAND_QUEUE_CAPACITY", default_value_t = 4096)]
    pub queue_capacity: usize,
    /// Most records in one transaction.
    #[arg(long, env = "COMMAND_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,
    /// Longest a batch waits for more records after its first one, in milliseconds.
    #[arg(long, env = "COMMAND_LINGER_MS", default_value_t = 2)]
    pub linger_ms: u64,
    /// Bound on each Kafka call (transaction init, commit, abort, delivery), in milliseconds.
    #[arg(long, env = "COMMAND_KAFKA_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_timeout_ms: u64,
    /// Kafka `transaction.timeout.ms` of the producers. A transaction a dead instance left open
    /// holds its partitions' next owner back until then (Kafka Streams uses 10 s too).
    #[arg(long, env = "COMMAND_TRANSACTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transaction_timeout_ms: u64,
    /// Bound on each schema registry call, in milliseconds.
    #[arg(long, env = "COMMAND_REGISTRY_TIMEOUT_MS", default_value_t = 5_000)]
    pub registry_timeout_ms: u64,
    /// Longest a request takes, body included, before it is answered 503 (no commit in time) or
    /// 408 (body not received in time), in milliseconds.
    #[arg(long, env = "COMMAND_REQUEST_TIMEOUT_MS", default_value_t = 25_000)]
    pub request_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "COMMAND_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// HTTP worker threads.
    #[arg(long, env = "COMMAND_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Most client connections open at once; more wait in the listen backlog. Default: half the
    /// open-file limit, so clients cannot take the descriptors Kafka and the registry need.
    #[arg(long, env = "COMMAND_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long an `Idempotency-Key` is remembered, in seconds (also across restarts: keys are
    /// recovered from the log).
    #[arg(long, env = "COMMAND_IDEMPOTENCY_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub idempotency_retention_secs: u64,
    /// Most idempotency keys remembered; beyond it the oldest are forgotten early.
    #[arg(
        long,
        env = "COMMAND_IDEMPOTENCY_MAX_KEYS",
        default_value_t = 1_000_000
    )]
    pub idempotency_max_keys: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("config", &self.config)
            .field("listen", &self.listen)
            .field("kafka", &self.kafka)
            .field("registry", &self.registry)
            .field("topic", &self.topic)
            .field("customers_topic", &self.customers_topic)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication", &self.topic_replication)
            .field("instance_id", &self.instance_id)
            .field("advertised_url", &self.advertised_url)
            .field("group_id", &self.group_id())
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("standby_replicas", &self.standby_replicas)
            .field("data_dir", &self.data_dir)
            .field("cache_aggregates", &self.cache_aggregates)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("producer_workers", &self.producer_workers)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .field("linger_ms", &self.linger_ms)
            .field("kafka_timeout_ms", &self.kafka_timeout_ms)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("registry_timeout_ms", &self.registry_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("http_workers", &self.http_workers)
            .field("max_connections", &self.max_connections)
            .field(
                "idempotency_retention_secs",
                &self.idempotency_retention_secs,
            )
            .field("idempotency_max_keys", &self.idempotency_max_keys)
            .finish()
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The defaults, as if started with no flags and no environment.
    pub fn defaults() -> Self {
        Self::parse_from(["command-service"])
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_owned()));
        for topic in [&self.topic, &self.customers_topic] {
            if topic.is_empty() || topic.contains(':') {
                return fail("topics must be non-empty and contain no ':'");
            }
        }
        if self.topic == self.customers_topic {
            return fail("each aggregate needs a topic of its own");
        }
        if self.topic_partitions < 1 || self.topic_replication == 0 || self.topic_replication < -1 {
            return fail(
                "topic partitions must be at least 1, and replication at least 1 or -1 (the cluster's default)",
            );
        }
        if self.instance_id.is_empty() || self.instance_id.contains('@') {
            return fail("instance id must be non-empty and contain no '@'");
        }
        if let Some(url) = &self.advertised_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return fail("the advertised URL must start with http:// or https://");
        }
        if self.group_id.as_deref().is_some_and(str::is_empty) {
            return fail("the group id must be non-empty");
        }
        if self.session_timeout_ms < 1_000 {
            return fail("the session timeout must be at least 1000 ms");
        }
        if self.cache_aggregates == 0 || self.checkpoint_interval_ms == 0 {
            return fail("the cache size and the checkpoint interval must be positive");
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 8) {
            return fail("the admin token must be at least 8 characters");
        }
        if self.producer_workers == 0 || self.queue_capacity == 0 || self.max_batch == 0 {
            return fail("producer workers, queue capacity and max batch must be at least 1");
        }
        if self.http_workers == 0 || self.max_body_bytes == 0 {
            return fail("http workers and max body bytes must be at least 1");
        }
        if self.idempotency_max_keys == 0 {
            return fail("idempotency max keys must be positive");
        }
        if self.kafka_timeout_ms == 0 || self.registry_timeout_ms == 0 {
            return fail("timeouts must be positive");
        }
        // A request must outwait one gather + commit + possible abort, or it would answer 503
        // for a batch that later commits.
        if self.request_timeout_ms <= 2 * self.kafka_timeout_ms + self.linger_ms {
            return fail("request timeout must exceed twice the Kafka timeout plus the linger");
        }
        self.registry
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.kafka.validate().map_err(ConfigError)?;
        self.connection_cap()?;
        Ok(())
    }

    /// [`Config::max_connections`], or its default for this process's open-file limit.
    pub fn connection_cap(&self) -> Result<usize, ConfigError> {
        service_config::connection_cap(self.max_connections, service_config::open_file_limit())
            .map_err(ConfigError)
    }

    /// The command group's id.
    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{}-command", self.topic))
    }

    pub fn batcher(&self, fence: Option<std::sync::Arc<dyn Fence>>) -> BatcherConfig {
        BatcherConfig {
            kafka: self.kafka.clone(),
            transactional_id_prefix: self.instance_id.clone(),
            workers: self.producer_workers,
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            linger: Duration::from_millis(self.linger_ms),
            kafka_timeout: Duration::from_millis(self.kafka_timeout_ms),
            transaction_timeout: Duration::from_millis(self.transaction_timeout_ms),
            fence,
        }
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
    fn the_request_timeout_must_outlast_a_commit_and_its_abort() {
        // The boundary: twice the Kafka timeout plus the linger is refused, a millisecond more
        // is enough.
        let mut c = Config::defaults();
        c.kafka_timeout_ms = 4_000;
        c.linger_ms = 5;
        c.request_timeout_ms = 8_005;
        assert!(c.validate().is_err());
        c.request_timeout_ms = 8_006;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn nonsense_is_refused() {
        let mut c = Config::defaults();
        c.producer_workers = 0;
        assert!(c.validate().is_err());
        let mut c = Config::defaults();
        c.request_timeout_ms = c.kafka_timeout_ms;
        assert!(c.validate().is_err());
        let mut c = Config::defaults();
        c.topic = "a:b".into();
        assert!(c.validate().is_err());
        let mut c = Config::defaults();
        c.customers_topic.clone_from(&c.topic);
        assert!(c.validate().is_err());
    }
}

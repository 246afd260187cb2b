//! The query replica's configuration: one typed struct from flags, environment and an optional
//! file (in that order of precedence, see `service_config`), validated at start and logged.

use std::path::PathBuf;

use clap::Parser;
use service_config::{KafkaArgs, RegistryArgs};

/// Query replica: projects the order events into RocksDB and answers queries.
#[derive(Clone, Parser)]
#[command(name = "query-service", version)]
pub struct Config {
    /// A TOML file of settings, named as the flags are (`max_batch = 1024`); flags and
    /// environment variables override it.
    #[arg(long, env = "QUERY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "QUERY_LISTEN", default_value = "127.0.0.1:8091")]
    pub listen: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Topic of the order events.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub topic: String,
    /// Consumer group shared by all replicas; partitions are split among its members.
    #[arg(long, env = "QUERY_GROUP_ID", default_value = "orders-query")]
    pub group_id: String,
    /// Topic of the customer events. The customers projection (profiles joined with their
    /// orders) starts once it exists.
    #[arg(long, env = "CUSTOMERS_TOPIC", default_value = "customers")]
    pub customers_topic: String,
    /// Consumer group of the customers projection (it reads the customers and the orders
    /// topics); defaults to `<group-id>-customers`.
    #[arg(long, env = "QUERY_CUSTOMERS_GROUP_ID")]
    pub customers_group_id: Option<String>,
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
    /// Most client connections open at once; more wait in the listen backlog. Default: half the
    /// open-file limit, so clients cannot take the descriptors RocksDB and Kafka need.
    #[arg(long, env = "QUERY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Base URL other replicas use to reach this one; defaults to `http://<listen address>`.
    #[arg(long, env = "QUERY_ADVERTISED_URL")]
    pub advertised_url: Option<String>,
    /// Bearer token of the `/admin` API; without it the admin API answers 403.
    #[arg(long, env = "QUERY_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// A read-only bearer token of the `/admin` API: it reads reports and the cluster view,
    /// and starts or cancels nothing (`403`).
    #[arg(long, env = "QUERY_ADMIN_READ_TOKEN")]
    pub admin_read_token: Option<String>,
    /// The compacted topic that keeps the reports' runs and results, shared by every replica of
    /// a deployment; created at start if it does not exist.
    #[arg(long, env = "QUERY_REPORTS_TOPIC", default_value = "query-reports")]
    pub reports_topic: String,
    /// Replicas of the reports topic when it is created; -1 takes the cluster's default.
    #[arg(long, env = "QUERY_REPORTS_TOPIC_REPLICATION", default_value_t = -1, allow_negative_numbers = true)]
    pub reports_topic_replication: i32,
    /// Reports running at once on this replica.
    #[arg(long, env = "QUERY_REPORTS_MAX_RUNNING", default_value_t = 2)]
    pub reports_max_running: usize,
    /// Reports waiting on this replica beyond those running; beyond, `429`.
    #[arg(long, env = "QUERY_REPORTS_MAX_QUEUED", default_value_t = 8)]
    pub reports_max_queued: usize,
    /// Events per second one report reads at most; none: as fast as it can.
    #[arg(long, env = "QUERY_REPORTS_MAX_EVENTS_PER_SECOND")]
    pub reports_max_events_per_second: Option<u64>,
    /// How long a report's record may go unchanged before another replica takes the report
    /// over, in milliseconds; its owner refreshes it every second.
    #[arg(long, env = "QUERY_REPORTS_STALE_MS", default_value_t = 10_000)]
    pub reports_stale_ms: u64,
    /// Times a report may be lost with its replica before it is marked interrupted instead of
    /// run again (a replica that stops cleanly hands its reports back without losing them).
    #[arg(long, env = "QUERY_REPORTS_MAX_ATTEMPTS", default_value_t = 3)]
    pub reports_max_attempts: u32,
    /// Hours a finished report and its result are kept before they are removed.
    #[arg(long, env = "QUERY_REPORTS_KEEP_HOURS", default_value_t = 720)]
    pub reports_keep_hours: u64,
    /// Events per second a projection's rebuild applies at most; none: as fast as it can.
    #[arg(long, env = "QUERY_REBUILD_MAX_EVENTS_PER_SECOND")]
    pub rebuild_max_events_per_second: Option<u64>,
    /// `/health/ready` is ready only when every owned partition lags by at most this many records.
    #[arg(long, env = "QUERY_MAX_READY_LAG", default_value_t = 1_000)]
    pub max_ready_lag: i64,
    /// Longest a read waits for its `Consistency-Token` position, in milliseconds.
    #[arg(long, env = "QUERY_CONSISTENCY_WAIT_MS", default_value_t = 5_000)]
    pub consistency_wait_ms: u64,
    /// Bound on each forwarded query, in milliseconds.
    #[arg(long, env = "QUERY_FORWARD_TIMEOUT_MS", default_value_t = 8_000)]
    pub forward_timeout_ms: u64,
    /// Warm copies of each partition kept on other replicas than its owner (standbys): they
    /// answer when the owner cannot, and make a takeover resume nearly caught up. 0 turns them
    /// off; with one replica there is nothing to keep.
    #[arg(long, env = "QUERY_STANDBY_REPLICAS", default_value_t = 1)]
    pub standby_replicas: usize,
    /// Static group membership (`group.instance.id` = the replica id, so only with an explicit
    /// `--replica-id`): a replica restarted within the session timeout gets its own partitions
    /// back and nothing else moves. Its partitions stay its own while it is down (standbys
    /// answer for them meanwhile). Two replicas given one id fence each other.
    #[arg(long, env = "QUERY_STATIC_MEMBERSHIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub static_membership: bool,
    /// How often the group's partition ownership is re-read between rebalances, in milliseconds.
    #[arg(long, env = "QUERY_CLUSTER_REFRESH_MS", default_value_t = 2_000)]
    pub cluster_refresh_ms: u64,
    /// Live streams (Server-Sent Events) open at once on this replica; beyond, `503`.
    #[arg(long, env = "QUERY_LIVE_MAX_STREAMS", default_value_t = 20_000)]
    pub live_max_streams: usize,
    /// Events buffered per live stream; a client further behind is cut off with its resume id.
    #[arg(long, env = "QUERY_LIVE_BUFFER", default_value_t = 256)]
    pub live_buffer: usize,
    /// A comment is sent on a live stream quiet for this long, in milliseconds, so that proxies
    /// keep it open.
    #[arg(long, env = "QUERY_LIVE_HEARTBEAT_MS", default_value_t = 15_000)]
    pub live_heartbeat_ms: u64,
    /// How long a stop (SIGTERM, Ctrl-C) may take in all, in milliseconds: in-flight requests
    /// finish, the projection stops and leaves the group, the store closes. Whatever is still
    /// running then is abandoned (the store and the group recover from that as from a crash).
    #[arg(long, env = "QUERY_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("config", &self.config)
            .field("listen", &self.listen)
            .field("kafka", &self.kafka)
            .field("registry", &self.registry)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("customers_topic", &self.customers_topic)
            .field("customers_group_id", &self.customers_group_id)
            .field("data_dir", &self.data_dir)
            .field("replica_id", &self.replica_id)
            .field("advertised_url", &self.advertised_url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "admin_read_token",
                &self.admin_read_token.as_ref().map(|_| "<redacted>"),
            )
            .field("reports_topic", &self.reports_topic)
            .field("reports_topic_replication", &self.reports_topic_replication)
            .field("reports_max_running", &self.reports_max_running)
            .field("reports_max_queued", &self.reports_max_queued)
            .field(
                "reports_max_events_per_second",
                &self.reports_max_events_per_second,
            )
            .field("reports_stale_ms", &self.reports_stale_ms)
            .field("reports_max_attempts", &self.reports_max_attempts)
            .field("reports_keep_hours", &self.reports_keep_hours)
            .field(
                "rebuild_max_events_per_second",
                &self.rebuild_max_events_per_second,
            )
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("kafka_timeout_ms", &self.kafka_timeout_ms)
            .field("topic_wait_ms", &self.topic_wait_ms)
            .field("registry_timeout_ms", &self.registry_timeout_ms)
            .field("http_workers", &self.http_workers)
            .field("max_connections", &self.max_connections)
            .field("max_ready_lag", &self.max_ready_lag)
            .field("consistency_wait_ms", &self.consistency_wait_ms)
            .field("forward_timeout_ms", &self.forward_timeout_ms)
            .field("standby_replicas", &self.standby_replicas)
            .field("static_membership", &self.static_membership)
            .field("cluster_refresh_ms", &self.cluster_refresh_ms)
            .field("live_max_streams", &self.live_max_streams)
            .field("live_buffer", &self.live_buffer)
            .field("live_heartbeat_ms", &self.live_heartbeat_ms)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The defaults, as if started with no flags and no environment.
    pub fn defaults() -> Self {
        Self::parse_from(["query-service"])
    }

    /// The consumer group of the customers projection.
    pub fn customers_group(&self) -> String {
        self.customers_group_id
            .clone()
            .unwrap_or_else(|| format!("{}-customers", self.group_id))
    }

    /// The topic of a collection's events, as a read model names it (`ReadModel::TOPICS`).
    pub fn topic_of(&self, collection: &str) -> Option<&str> {
        match collection {
            "orders" => Some(&self.topic),
            "customers" => Some(&self.customers_topic),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_owned()));
        for topic in [&self.topic, &self.customers_topic] {
            if topic.is_empty() || topic.contains(':') {
                return fail("topics must be non-empty and contain no ':'");
            }
        }
        if self.topic == self.customers_topic {
            return fail("the orders and customers topics must differ");
        }
        if self.group_id.is_empty() || self.customers_group_id.as_deref() == Some("") {
            return fail("group ids must be non-empty");
        }
        if self.customers_group() == self.group_id {
            return fail("each projection needs a consumer group of its own");
        }
        if self
            .replica_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || !id.is_ascii())
        {
            return fail("replica id must be non-empty ASCII");
        }
        if self
            .advertised_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            return fail("advertised url must start with http:// or https://");
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 8)
            || self
                .admin_read_token
                .as_deref()
                .is_some_and(|t| t.len() < 8)
        {
            return fail("admin tokens must be at least 8 characters");
        }
        if self.admin_read_token.is_some() && self.admin_read_token == self.admin_token {
            return fail("the read-only token must differ from the admin token");
        }
        if self.reports_topic.is_empty()
            || [&self.topic, &self.customers_topic].contains(&&self.reports_topic)
        {
            return fail("the reports topic must be non-empty and not an events topic");
        }
        if self.reports_max_running == 0
            || self.reports_max_attempts == 0
            || self.reports_keep_hours == 0
            || self.reports_max_events_per_second == Some(0)
            || self.reports_topic_replication == 0
            || self.reports_topic_replication < -1
        {
            return fail(
                "reports need at least one running, one attempt, a positive events-per-second limit if any, and a replication of -1 or at least 1",
            );
        }
        if self.rebuild_max_events_per_second == Some(0) {
            return fail("a rebuild's events-per-second limit, if any, must be positive");
        }
        if self.reports_stale_ms < 3_000 {
            return fail("the reports' stale time must be at least 3000 ms (three heartbeats)");
        }
        if self.max_ready_lag < 0 || self.forward_timeout_ms == 0 || self.cluster_refresh_ms == 0 {
            return fail("max ready lag must be >= 0 and the forward timeout and refresh positive");
        }
        // A forwarded read may wait for its consistency token at the owner.
        if self.forward_timeout_ms <= self.consistency_wait_ms {
            return fail("the forward timeout must exceed the consistency wait");
        }
        let wildcard = self.listen.starts_with("0.0.0.0") || self.listen.starts_with("[::]");
        if wildcard && self.advertised_url.is_none() {
            return fail(
                "listening on a wildcard address needs --advertised-url: other replicas cannot reach 0.0.0.0",
            );
        }
        if self.shutdown_grace_ms < 1_000 {
            return fail("the shutdown grace must be at least 1000 ms");
        }
        if self.live_max_streams == 0 || self.live_buffer == 0 || self.live_heartbeat_ms < 10 {
            return fail(
                "live streams need a positive maximum and buffer, and a heartbeat of at least 10 ms",
            );
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
        let mut c = Config::defaults();
        c.advertised_url = Some("localhost:8091".into());
        assert!(c.validate().is_err());
        let mut c = Config::defaults();
        c.listen = "0.0.0.0:8091".into();
        assert!(c.validate().is_err());
        c.advertised_url = Some("http://query-1:8091".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_admin_token_is_never_printed() {
        let mut c = Config::defaults();
        c.admin_token = Some("s3cret-token".into());
        c.admin_read_token = Some("s3cret-reader".into());
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}

//! Startup configuration, parsed from flags, environment and an optional file (in that order of
//! precedence, see `service_config`) or built in code.

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use clap::Parser;
use service_config::KafkaArgs;

use crate::error::RegistryError;

/// Configuration of a schema registry instance.
///
/// Every field can be set with a command line flag or an environment
/// variable; tests and other crates can also build it directly (see
/// [`Config::default`]).
#[derive(Clone, PartialEq, Eq, Parser)]
#[command(
    name = "schema-registry",
    version,
    about = "Confluent-compatible Avro schema registry persisted in a compacted Kafka topic"
)]
pub struct Config {
    /// A TOML file of settings, named as the flags are (`kafka_timeout_ms = 5000`); flags and
    /// environment variables override it.
    #[arg(long, env = "REGISTRY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address the HTTP API binds to (`host:port`, port 0 picks a free port).
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Require HTTP basic auth, `USER:PASSWORD`, on every route but `/health/live`.
    #[arg(long, env = "REGISTRY_BASIC_AUTH", value_name = "USER:PASSWORD")]
    pub basic_auth: Option<String>,

    /// Also (or instead) accept this bearer token (`Authorization: Bearer …`).
    #[arg(long, env = "REGISTRY_BEARER_TOKEN", value_name = "TOKEN")]
    pub bearer_token: Option<String>,

    /// Serve HTTPS with this PEM certificate chain (with `--tls-key-file`).
    #[arg(
        long,
        env = "REGISTRY_TLS_CERT_FILE",
        value_name = "PEM",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// The PEM (PKCS#8, PKCS#1 or SEC1) private key of `--tls-cert-file`.
    #[arg(
        long,
        env = "REGISTRY_TLS_KEY_FILE",
        value_name = "PEM",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Compacted single-partition topic holding the registry state.
    #[arg(long, env = "REGISTRY_TOPIC", default_value = "_schemas")]
    pub topic: String,

    /// Replication factor used when the registry creates its topic
    /// (-1 means "broker default").
    #[arg(
        long,
        env = "REGISTRY_REPLICATION_FACTOR",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    pub replication_factor: i32,

    /// Upper bound for every Kafka round trip (topic creation, replay
    /// progress, produce acknowledgement), in milliseconds.
    #[arg(long, env = "REGISTRY_KAFKA_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_timeout_ms: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("config", &self.config)
            .field("listen", &self.listen)
            .field("kafka", &self.kafka)
            .field(
                "basic_auth",
                &self
                    .basic_auth
                    .as_deref()
                    .map(service_config::registry::redacted_user_info),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("topic", &self.topic)
            .field("replication_factor", &self.replication_factor)
            .field("kafka_timeout_ms", &self.kafka_timeout_ms)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            config: None,
            listen: "127.0.0.1:8081".to_owned(),
            kafka: KafkaArgs::plain("127.0.0.1:9092"),
            basic_auth: None,
            bearer_token: None,
            tls_cert_file: None,
            tls_key_file: None,
            topic: "_schemas".to_owned(),
            replication_factor: -1,
            kafka_timeout_ms: 10_000,
        }
    }
}

impl Config {
    /// Rejects configurations that would only fail later in a less
    /// obvious way (at bind time, or deep inside librdkafka).
    pub fn validate(&self) -> Result<(), RegistryError> {
        let invalid = |msg: String| Err(RegistryError::InvalidConfig(msg));

        match self.listen.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return invalid(format!(
                    "listen address '{}' resolves to nothing",
                    self.listen
                ));
            }
            Err(e) => return invalid(format!("listen address '{}' is invalid: {e}", self.listen)),
        }
        if let Err(msg) = self.kafka.validate() {
            return invalid(msg);
        }
        if self
            .basic_auth
            .as_deref()
            .is_some_and(|b| b.split_once(':').is_none_or(|(user, _)| user.is_empty()))
        {
            return invalid("basic auth must be USER:PASSWORD".to_owned());
        }
        if let Err(msg) = validate_topic_name(&self.topic) {
            return invalid(msg);
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return invalid(format!(
                "replication factor must be >= 1 or -1 (broker default), got {}",
                self.replication_factor
            ));
        }
        if !(100..=600_000).contains(&self.kafka_timeout_ms) {
            return invalid(format!(
                "kafka timeout must be between 100 and 600000 ms, got {}",
                self.kafka_timeout_ms
            ));
        }
        Ok(())
    }
}

/// Kafka's own topic name rules; checked up front because the broker's
/// error for a bad name is easy to mistake for a connectivity problem.
fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err(format!(
            "topic name must be 1..=249 characters, got '{topic}'"
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("topic name '{topic}' is not allowed"));
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "topic name '{topic}' may only contain ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        let parsed = Config::try_parse_from(["schema-registry"]);
        // Environment variables may be set by the surrounding test run, so
        // only compare fields no test harness sets.
        let parsed = parsed.map_err(|e| e.to_string());
        assert!(parsed.is_ok(), "{parsed:?}");
        if let Ok(parsed) = parsed {
            assert_eq!(parsed.replication_factor, -1);
            assert_eq!(parsed.kafka_timeout_ms, 10_000);
        }
    }

    #[test]
    fn flags_override_defaults() {
        let parsed = Config::try_parse_from([
            "schema-registry",
            "--listen",
            "127.0.0.1:0",
            "--kafka-bootstrap",
            "k:1",
            "--topic",
            "t",
            "--replication-factor",
            "3",
            "--kafka-timeout-ms",
            "500",
        ])
        .map_err(|e| e.to_string());
        assert_eq!(
            parsed,
            Ok(Config {
                config: None,
                listen: "127.0.0.1:0".into(),
                kafka: KafkaArgs::plain("k:1"),
                basic_auth: None,
                bearer_token: None,
                tls_cert_file: None,
                tls_key_file: None,
                topic: "t".into(),
                replication_factor: 3,
                kafka_timeout_ms: 500,
            })
        );
    }

    #[test]
    fn rejects_bad_values() {
        let bad = [
            Config {
                listen: "nonsense".into(),
                ..Config::default()
            },
            Config {
                kafka: KafkaArgs::plain(" "),
                ..Config::default()
            },
            Config {
                topic: "bad topic".into(),
                ..Config::default()
            },
            Config {
                topic: String::new(),
                ..Config::default()
            },
            Config {
                replication_factor: 0,
                ..Config::default()
            },
            Config {
                kafka_timeout_ms: 0,
                ..Config::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(RegistryError::InvalidConfig(_))),
                "{config:?} should be rejected"
            );
        }
        let broker_default_rf = Config {
            replication_factor: -1,
            ..Config::default()
        };
        assert!(broker_default_rf.validate().is_ok());
    }
}

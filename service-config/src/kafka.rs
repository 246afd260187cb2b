//! How every binary reaches Kafka: the bootstrap servers and any librdkafka client property
//! (TLS, SASL, timeouts, …), and a start-up check that names the cause when it cannot.
//!
//! Properties come, later ones winning, from the file's `[kafka]` table, from environment
//! variables `KAFKA_PROPERTY_<NAME>` (`_` stands for `.`, `__` for `_`:
//! `KAFKA_PROPERTY_SASL_MECHANISM` is `sasl.mechanism`) and from repeatable
//! `--kafka-property KEY=VALUE` flags. Each client the services make starts from them; a property
//! a service sets for its own guarantees (`transactional.id`, `isolation.level`,
//! `enable.auto.commit`, …) is set after them and wins.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// The id of the repeatable property argument, which the file's `[kafka]` table feeds.
pub const PROPERTY_ARG: &str = "kafka_property";
/// The prefix of the environment variables that set properties.
pub const PROPERTY_ENV_PREFIX: &str = "KAFKA_PROPERTY_";

/// The Kafka connection of a binary, flattened into its configuration.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (comma separated `host:port` list).
    #[arg(
        id = "kafka_bootstrap",
        long = "kafka-bootstrap",
        env = "KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// A librdkafka client property, `KEY=VALUE`, for every Kafka client of the service
    /// (repeatable; e.g. `security.protocol=SASL_SSL`). Also a `[kafka]` table in the file and
    /// `KAFKA_PROPERTY_<NAME>` variables (`_` for `.`, `__` for `_`).
    #[arg(
        id = PROPERTY_ARG,
        long = "kafka-property",
        value_name = "KEY=VALUE",
        value_parser = parse_property
    )]
    pub properties: Vec<KafkaProperty>,
}

impl KafkaArgs {
    /// Kafka at `bootstrap` with no extra property.
    pub fn plain(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            properties: Vec::new(),
        }
    }

    /// The effective properties: the bootstrap servers, then each property in order, a later
    /// one replacing an earlier one with the same key.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        map.insert("bootstrap.servers".to_owned(), self.bootstrap.clone());
        for property in &self.properties {
            map.insert(property.key.clone(), property.value.clone());
        }
        map
    }

    /// A client configuration with these settings, for the caller to add its own to.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.effective() {
            config.set(key, value);
        }
        config
    }

    /// Checks that the settings hold together before anything connects.
    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap.trim().is_empty() {
            return Err("kafka bootstrap servers must not be empty".to_owned());
        }
        // librdkafka judges names and values; a client made now reports a bad one at start,
        // with its own message, rather than at the first client deep inside the service.
        let config = self.client_config();
        config
            .create::<BaseConsumer>()
            .map(drop)
            .map_err(|e| format!("kafka properties: {e}"))
    }

    /// Connects and reads the cluster's metadata, within `timeout`. On failure the error names
    /// the cause librdkafka reported: authentication, TLS, or an unreachable broker. An
    /// authentication or TLS failure returns as soon as it is reported.
    pub fn check_connection(&self, timeout: Duration) -> Result<(), ConnectError> {
        let context = Capture::default();
        let reported = Arc::clone(&context.reported);
        let mut config = self.client_config();
        config.set_log_level(RDKafkaLogLevel::Warning);
        let consumer: BaseConsumer<Capture> = config
            .create_with_context(context)
            .map_err(|e| ConnectError::Config(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.min(Duration::from_millis(500));
            let result = consumer.fetch_metadata(None, attempt);
            if result.is_ok() {
                return Ok(());
            }
            // Errors and logs arrive as events on the client's queue; serving them runs the
            // context's callbacks. Each poll serves at most one event.
            for _ in 0..64 {
                let _ = consumer.poll(Duration::ZERO);
            }
            let reports = reported.lock().map(|r| r.clone()).unwrap_or_default();
            if let Some(error) = ConnectError::classify(&self.bootstrap, &reports) {
                return Err(error);
            }
            if Instant::now() >= deadline {
                let detail = reports
                    .last()
                    .cloned()
                    .or_else(|| result.err().map(|e| e.to_string()))
                    .unwrap_or_default();
                return Err(ConnectError::Unreachable {
                    bootstrap: self.bootstrap.clone(),
                    timeout,
                    detail,
                });
            }
        }
    }
}

impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaArgs")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &self.properties)
            .finish()
    }
}

/// One `KEY=VALUE` client property. Its `Debug` hides the value of a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaProperty {
    pub key: String,
    pub value: String,
}

impl fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_secret(&self.key) {
            write!(f, "{}=<redacted>", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

/// Whether a property's value must not be logged: passwords, secrets, private keys, tokens and
/// JAAS lines (which embed passwords).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "ssl.key.pem",
        "ssl_key",
        "private",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Parses `KEY=VALUE`; the value may itself contain `=`.
pub fn parse_property(text: &str) -> Result<KafkaProperty, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("`{key}` is not a property name"));
    }
    Ok(KafkaProperty {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// The property an environment variable sets: `KAFKA_PROPERTY_SASL_MECHANISM` →
/// `sasl.mechanism`, `KAFKA_PROPERTY_SSL__X` → `ssl_x`; `None` for any other variable.
pub fn property_from_env(name: &str, value: &str) -> Option<String> {
    let rest = name.strip_prefix(PROPERTY_ENV_PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    let key = rest
        .to_ascii_lowercase()
        .split("__")
        .map(|part| part.replace('_', "."))
        .collect::<Vec<_>>()
        .join("_");
    Some(format!("{key}={value}"))
}

/// Why a service could not connect to Kafka at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kafka client configuration: {0}")]
    Config(String),
    #[error(
        "Kafka at {bootstrap} refused the credentials (SASL authentication failed): {detail}; check sasl.mechanism, sasl.username and sasl.password"
    )]
    Authentication { bootstrap: String, detail: String },
    #[error(
        "TLS with Kafka at {bootstrap} failed (the broker's certificate is not trusted, or the handshake failed): {detail}; check ssl.ca.location and the broker's certificate"
    )]
    Tls { bootstrap: String, detail: String },
    #[error("Kafka at {bootstrap} could not be reached within {timeout:?}: {detail}")]
    Unreachable {
        bootstrap: String,
        timeout: Duration,
        detail: String,
    },
}

impl ConnectError {
    /// The cause that `reports` (librdkafka's error and warning reports) point to, when it is
    /// one that no wait can fix: credentials or certificates.
    fn classify(bootstrap: &str, reports: &[String]) -> Option<Self> {
        let find = |needles: &[&str]| {
            reports.iter().rev().find(|r| {
                let lower = r.to_ascii_lowercase();
                needles.iter().any(|n| lower.contains(n))
            })
        };
        if let Some(detail) = find(&[
            "sasl authentication",
            "authentication failed",
            "invalid credentials",
            "sasl handshake",
        ]) {
            return Some(Self::Authentication {
                bootstrap: bootstrap.to_owned(),
                detail: detail.clone(),
            });
        }
        if let Some(detail) = find(&["certificate", "ssl handshake", "ssl_handshake"]) {
            return Some(Self::Tls {
                bootstrap: bootstrap.to_owned(),
                detail: detail.clone(),
            });
        }
        None
    }
}

/// A client context that keeps what librdkafka reports, for [`ConnectError`].
#[derive(Default)]
struct Capture {
    reported: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    fn push(&self, report: String) {
        if let Ok(mut reported) = self.reported.lock() {
            // The latest few: a broker that keeps refusing repeats itself.
            if reported.len() >= 32 {
                reported.remove(0);
            }
            reported.push(report);
        }
    }
}

impl ClientContext for Capture {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        // Warnings and worse: SASL and TLS failures are logged at error (`FAIL`) level.
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.push(format!("{fac}: {log_message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.push(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Capture {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn properties_parse_and_later_ones_win() {
        let args = KafkaArgs {
            bootstrap: "b:9092".into(),
            properties: vec![
                parse_property("security.protocol=SASL_SSL").unwrap(),
                parse_property("sasl.password=a=b").unwrap(),
                parse_property("security.protocol=SSL").unwrap(),
            ],
        };
        let effective = args.effective();
        assert_eq!(effective["bootstrap.servers"], "b:9092");
        assert_eq!(effective["security.protocol"], "SSL");
        assert_eq!(effective["sasl.password"], "a=b");
        assert!(parse_property("no-equals").is_err());
        assert!(parse_property("=value").is_err());
        assert!(parse_property("bad key=1").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let args = KafkaArgs {
            bootstrap: "b:9092".into(),
            properties: [
                "sasl.password=hunter2",
                "ssl.key.password=k3y",
                "ssl.key.pem=PEM",
                "sasl.oauthbearer.client.secret=s3",
                "sasl.username=alice",
            ]
            .iter()
            .map(|p| parse_property(p).unwrap())
            .collect(),
        };
        let shown = format!("{args:?}");
        for secret in ["hunter2", "k3y", "PEM", "s3"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("sasl.username=alice"), "{shown}");
        assert!(shown.contains("sasl.password=<redacted>"), "{shown}");
    }

    #[test]
    fn environment_names_map_to_properties() {
        assert_eq!(
            property_from_env("KAFKA_PROPERTY_SASL_MECHANISM", "PLAIN").as_deref(),
            Some("sasl.mechanism=PLAIN")
        );
        assert_eq!(
            property_from_env(
                "KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
                "none"
            )
            .as_deref(),
            Some("ssl.endpoint.identification.algorithm=none")
        );
        assert_eq!(
            property_from_env("KAFKA_PROPERTY_A__B_C", "1").as_deref(),
            Some("a_b.c=1")
        );
        assert_eq!(property_from_env("KAFKA_BOOTSTRAP", "x"), None);
        assert_eq!(property_from_env("KAFKA_PROPERTY_", "x"), None);
    }

    #[test]
    fn a_property_librdkafka_does_not_know_is_refused_at_start() {
        let args = KafkaArgs {
            bootstrap: "b:9092".into(),
            properties: vec![parse_property("no.such.property=1").unwrap()],
        };
        let error = args.validate().unwrap_err();
        assert!(error.contains("no.such.property"), "{error}");
        assert!(KafkaArgs::plain("b:9092").validate().is_ok());
    }

    #[test]
    fn an_unreachable_broker_is_reported_within_the_timeout() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let args = KafkaArgs::plain("127.0.0.1:1");
        let started = Instant::now();
        let error = args.check_connection(Duration::from_secs(2)).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(error, ConnectError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    }
}

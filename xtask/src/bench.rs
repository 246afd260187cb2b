//! Benchmarks: release builds on a private broker in a temporary directory, each figure printed
//! next to a baseline measured in the same run on the same machine.
//!
//! - `commands`: the command service vs `kafka-producer-perf-test` (plain and transactional);
//! - `queries`: replica reads (local and forwarded) vs a static HTTP handler, projection replay
//!   vs `kafka-consumer-perf-test`, and command → query visibility latency;
//! - `replay`: millions of events: a report and a replay into an empty store vs
//!   `kafka-consumer-perf-test`, and GET latency without and during a report;
//! - `live`: many open live streams on one replica under a fixed command rate: ack → received
//!   latency vs GET visibility, memory per stream, CPU per pushed event.

pub(crate) mod command_cluster;
pub(crate) mod commands;
pub(crate) mod cpu;
pub(crate) mod live;
pub(crate) mod queries;
pub(crate) mod replay;

use std::process::Command;
use std::time::Duration;

use local_kafka::process::{free_port, localhost};
use local_kafka::{Broker, KafkaConfig, KafkaRuntime, Service};

use crate::workspace::Workspace;

/// A private broker and registry, plus the services a benchmark starts; stopped when dropped.
pub(crate) struct BenchStack {
    scratch: tempfile::TempDir,
    pub(crate) runtime: KafkaRuntime,
    pub(crate) broker: Broker,
    pub(crate) registry_url: String,
    release: std::path::PathBuf,
    // Dropped (stopped) before the broker: declared first.
    services: Vec<Service>,
    _registry: Service,
}

impl BenchStack {
    /// Builds the given binaries (and the registry) in release mode and starts broker + registry.
    pub(crate) fn start(ws: &Workspace, binaries: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["build", "--release", "--bin", "schema-registry"];
        for binary in binaries {
            args.extend(["--bin", binary]);
        }
        ws.cargo(&args)?;
        let scratch = tempfile::Builder::new().prefix("xtask-bench-").tempdir()?;
        let runtime = KafkaRuntime::resolve(&ws.cache_dir().join("kafka-classpath"))?;
        let kafka = KafkaConfig::single(
            scratch.path().join("kafka"),
            free_port()?,
            free_port()?,
            6,
            "1g",
        );
        eprintln!("starting a private Kafka on {} ...", kafka.bootstrap());
        let broker = Broker::start(&runtime, kafka, &scratch.path().join("kafka.log"))?;
        let release = ws.target.join("release");
        let port = free_port()?;
        let mut command = Command::new(release.join("schema-registry"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--kafka-bootstrap", &broker.bootstrap()]);
        let mut registry = Service::spawn(
            "schema-registry",
            command,
            &scratch.path().join("registry.log"),
        )?;
        registry.wait_http_ok(localhost(port), "/health/live", Duration::from_secs(60))?;
        Ok(Self {
            scratch,
            runtime,
            broker,
            registry_url: format!("http://127.0.0.1:{port}"),
            release,
            services: Vec::new(),
            _registry: registry,
        })
    }

    fn spawn(
        &mut self,
        name: &str,
        binary: &str,
        env: &[(&str, String)],
        port: u16,
    ) -> anyhow::Result<String> {
        let mut command = Command::new(self.release.join(binary));
        command
            // The services' own filter when one is given for them, to see where time goes.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("KAFKA_BOOTSTRAP", self.broker.bootstrap())
            .env("SCHEMA_REGISTRY_URL", &self.registry_url);
        for (key, value) in env {
            command.env(key, value);
        }
        let log = self.scratch.path().join(format!("{name}.log"));
        let mut service = Service::spawn(name, command, &log)?;
        service.wait_http_ok(localhost(port), "/health/live", Duration::from_secs(120))?;
        self.services.push(service);
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// The operating system's id of a service this stack started.
    pub(crate) fn pid_of(&self, name: &str) -> Option<u32> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(Service::pid)
    }

    /// A codec for `topic`'s values and a producer that batches as much as the broker takes:
    /// how a benchmark writes a history straight to the log.
    pub(crate) fn filler<E: shared_events::AvroEvent>(
        &self,
        topic: &str,
    ) -> anyhow::Result<(
        shared_events::EventCodec<E>,
        rdkafka::producer::FutureProducer,
    )> {
        let registry = service_config::RegistryArgs::plain(self.registry_url.clone());
        let codec =
            shared_events::EventCodec::new(registry.sr_settings(Duration::from_secs(10))?, topic)?;
        let producer = service_config::KafkaArgs::plain(self.broker.bootstrap())
            .client_config()
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
        Ok((codec, producer))
    }

    /// Creates a topic (the broker does not create topics on first use).
    pub(crate) fn create_topic(&self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        let output = Command::new("java")
            .args([
                "-Xmx256m",
                "-cp",
                &self.runtime.classpath,
                "org.apache.kafka.tools.TopicCommand",
            ])
            .args(["--bootstrap-server", &self.broker.bootstrap()])
            .args(["--create", "--if-not-exists", "--topic", topic])
            .args([
                "--partitions",
                &partitions.to_string(),
                "--replication-factor",
                "1",
            ])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "creating topic {topic} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Starts a command service on `topic`; returns its base URL.
    pub(crate) fn command_service(&mut self, topic: &str) -> anyhow::Result<String> {
        let port = free_port()?;
        self.spawn(
            "command-service",
            "command-service",
            &[
                ("COMMAND_LISTEN", format!("127.0.0.1:{port}")),
                ("COMMAND_INSTANCE_ID", format!("bench-{topic}")),
                ("ORDERS_TOPIC", topic.to_owned()),
                (
                    "COMMAND_DATA_DIR",
                    self.scratch.path().join(topic).display().to_string(),
                ),
            ],
            port,
        )
    }

    /// Starts command instance `id` on `topic` with `extra` settings; returns its base URL. Its
    /// data directory is `id`'s in the stack's scratch directory unless `extra` names one.
    pub(crate) fn command_instance(
        &mut self,
        topic: &str,
        id: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<String> {
        let port = free_port()?;
        let mut env = vec![
            ("COMMAND_LISTEN", format!("127.0.0.1:{port}")),
            ("COMMAND_INSTANCE_ID", id.to_owned()),
            ("COMMAND_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            (
                "COMMAND_DATA_DIR",
                self.scratch.path().join(id).display().to_string(),
            ),
            ("ORDERS_TOPIC", topic.to_owned()),
        ];
        env.extend(extra.iter().cloned());
        self.spawn(id, "command-service", &env, port)
    }

    /// Kills (SIGKILL) the service named `name` and forgets it.
    pub(crate) fn kill(&mut self, name: &str) {
        if let Some(at) = self.services.iter().position(|s| s.name == name) {
            let mut service = self.services.remove(at);
            service.kill();
        }
    }

    /// The scratch directory of this stack.
    pub(crate) fn scratch(&self) -> &std::path::Path {
        self.scratch.path()
    }

    /// Starts a query replica of `group` on `topic` with a fresh store; returns its base URL.
    pub(crate) fn replica(&mut self, topic: &str, group: &str, id: &str) -> anyhow::Result<String> {
        self.replica_with(topic, group, id, &[])
    }

    /// [`BenchStack::replica`] with more settings.
    pub(crate) fn replica_with(
        &mut self,
        topic: &str,
        group: &str,
        id: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<String> {
        let port = free_port()?;
        let data = self.scratch.path().join(id);
        let mut env = vec![
            ("QUERY_LISTEN", format!("127.0.0.1:{port}")),
            ("QUERY_REPLICA_ID", id.to_owned()),
            ("QUERY_DATA_DIR", data.display().to_string()),
            ("QUERY_GROUP_ID", group.to_owned()),
            ("QUERY_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("ORDERS_TOPIC", topic.to_owned()),
        ];
        env.extend(extra.iter().cloned());
        self.spawn(id, "query-service", &env, port)
    }
}

pub(crate) const ADMIN_TOKEN: &str = "bench-admin-token";

/// Waits until `replica`'s orders projection has applied `total` events (from its metrics);
/// the events applied then.
pub(crate) async fn orders_applied(
    client: &reqwest::Client,
    replica: &str,
    total: f64,
    within: Duration,
) -> anyhow::Result<f64> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let metrics = client
            .get(format!("{replica}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let applied = metric_value(
            &metrics,
            r#"query_service_applied_events_total{projection="orders"} "#,
        )
        .unwrap_or(0.0);
        if applied >= total {
            return Ok(applied);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the replay did not finish: {applied} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A static actix-web handler answering every request with `status` and `body` as JSON, after
/// `delay`: the HTTP floor under a service's figures (same framework, same worker count, no
/// work). With a delay, the floor of a service whose answers take that long: every request is
/// parked and woken once, and as many are open at a time as clients wait.
pub(crate) fn static_server(
    status: u16,
    body: Vec<u8>,
    workers: usize,
    delay: Duration,
) -> anyhow::Result<(String, actix_web::dev::ServerHandle)> {
    let status = actix_web::http::StatusCode::from_u16(status)?;
    let port = free_port()?;
    let body = actix_web::web::Bytes::from(body);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix_web::rt::System::new();
        let server = actix_web::HttpServer::new(move || {
            let body = body.clone();
            // Reads the request body as every real handler does: actix closes a keep-alive
            // connection whose request body was left unread.
            actix_web::App::new().default_service(actix_web::web::to(
                move |_request: actix_web::web::Bytes| {
                    let body = body.clone();
                    async move {
                        if !delay.is_zero() {
                            actix_web::rt::time::sleep(delay).await;
                        }
                        actix_web::HttpResponse::build(status)
                            .content_type("application/json")
                            .body(body)
                    }
                },
            ))
        })
        .workers(workers)
        .bind(("127.0.0.1", port));
        match server {
            Ok(server) => {
                let server = server.run();
                let _ = sender.send(Ok(server.handle()));
                let _ = system.block_on(server);
            }
            Err(error) => {
                let _ = sender.send(Err(error));
            }
        }
    });
    let handle = receiver.recv()??;
    Ok((format!("http://127.0.0.1:{port}"), handle))
}

/// A quantile of what a Prometheus histogram observed between two scrapes, interpolated within
/// its buckets.
pub(crate) fn histogram_quantile_between(
    before: &str,
    after: &str,
    name: &str,
    quantile: f64,
) -> Option<f64> {
    let earlier = buckets(before, name);
    let delta: Vec<(f64, f64)> = buckets(after, name)
        .into_iter()
        .map(|(le, count)| {
            let previous = earlier
                .iter()
                .find(|(l, _)| l.total_cmp(&le).is_eq())
                .map_or(0.0, |(_, c)| *c);
            (le, count - previous)
        })
        .collect();
    bucket_quantile(&delta, quantile)
}

/// `(upper bound, cumulative count)` of each bucket of histogram `name`.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

fn bucket_quantile(buckets: &[(f64, f64)], quantile: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = quantile * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let share = if count > previous.1 {
                (target - previous.1) / (count - previous.1)
            } else {
                1.0
            };
            return Some(previous.0 + (le - previous.0) * share);
        }
        previous = (le, count);
    }
    None
}

/// The value of the first metric line starting with `line_prefix`.
pub(crate) fn metric_value(metrics: &str, line_prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .and_then(|rest| rest.trim().parse().ok())
}

/// The number just before `marker` in `line` (e.g. `"123.4 records/sec"`).
pub(crate) fn number_before(line: &str, marker: &str) -> Option<f64> {
    let at = line.find(marker)?;
    line[..at]
        .trim_end()
        .rsplit([' ', ','])
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{histogram_quantile_between, number_before};

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let text = "m_bucket{le=\"0.001\"} 0\nm_bucket{le=\"0.002\"} 50\nm_bucket{le=\"0.004\"} 100\nm_bucket{le=\"+Inf\"} 100\n";
        let p50 = histogram_quantile_between("", text, "m", 0.5).unwrap_or_default();
        assert!((p50 - 0.002).abs() < 1e-9, "{p50}");
        let p75 = histogram_quantile_between("", text, "m", 0.75).unwrap_or_default();
        assert!((p75 - 0.003).abs() < 1e-9, "{p75}");
        // Between two scrapes only the new observations count: 100 more, all in (0.002, 0.004].
        let later = "m_bucket{le=\"0.001\"} 0\nm_bucket{le=\"0.002\"} 50\nm_bucket{le=\"0.004\"} 200\nm_bucket{le=\"+Inf\"} 200\n";
        let p50 = histogram_quantile_between(text, later, "m", 0.5).unwrap_or_default();
        assert!((p50 - 0.003).abs() < 1e-9, "{p50}");
    }

    #[test]
    fn perf_test_lines_parse() {
        let line = "500000 records sent, 123456.7 records/sec (25.00 MB/sec), 150.23 ms avg latency, 400.00 ms max latency, 140 ms 50th, 300 ms 95th, 380 ms 99th, 399 ms 99.9th.";
        assert_eq!(number_before(line, " records/sec"), Some(123_456.7));
        assert_eq!(number_before(line, " ms 99th"), Some(380.0));
    }
}

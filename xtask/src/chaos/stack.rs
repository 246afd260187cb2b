//! The processes a chaos scenario starts, kills, stops and restarts: Kafka (one node or three),
//! the schema registry, command services and query replicas, each its release binary in a
//! process of its own, as ops run them.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use local_kafka::process::{free_port, localhost};
use local_kafka::{Broker, Cluster, KafkaConfig, KafkaRuntime, ProxiedListener, Service};

use crate::workspace::Workspace;

/// Partitions of every topic a scenario writes.
pub(crate) const PARTITIONS: u32 = 6;

/// The admin token of the replicas a scenario starts.
pub(crate) const ADMIN_TOKEN: &str = "chaos-admin-token";

/// A service the stack can start again as it was first started.
struct Managed {
    name: String,
    binary: &'static str,
    env: Vec<(String, String)>,
    port: u16,
    service: Option<Service>,
}

/// Kafka, the registry and the services of a scenario; everything stops when dropped.
pub(crate) struct Stack {
    scratch: tempfile::TempDir,
    release: PathBuf,
    // Dropped (stopped) before the registry and the brokers: declared first.
    services: Vec<Managed>,
    registry: Managed,
    pub(crate) brokers: Vec<Broker>,
    bootstrap: String,
    /// Where the services reach Kafka: the brokers, or a proxy in front of them.
    services_bootstrap: String,
    /// The broker's proxied listener and the port its clients are sent to instead.
    pub(crate) proxied: Option<ProxiedListener>,
}

impl Stack {
    /// Builds the release binaries the scenarios run.
    pub(crate) fn build(ws: &Workspace) -> anyhow::Result<()> {
        ws.cargo(&[
            "build",
            "--release",
            "--bin",
            "schema-registry",
            "--bin",
            "command-service",
            "--bin",
            "query-service",
        ])
    }

    /// Kafka on `nodes` nodes (three: every topic has three copies, two acknowledge a write)
    /// and a registry.
    pub(crate) fn start(ws: &Workspace, nodes: usize) -> anyhow::Result<Self> {
        Self::start_with(ws, nodes, false)
    }

    /// As [`Stack::start`]; with `proxied`, one node with a listener the services reach
    /// through a proxy listening on `proxied.advertised_port` (which the caller starts).
    pub(crate) fn start_with(ws: &Workspace, nodes: usize, proxied: bool) -> anyhow::Result<Self> {
        let proxied = if proxied {
            Some(ProxiedListener {
                port: free_port()?,
                advertised_port: free_port()?,
            })
        } else {
            None
        };
        let scratch = tempfile::Builder::new().prefix("xtask-chaos-").tempdir()?;
        let runtime = KafkaRuntime::resolve(&ws.cache_dir().join("kafka-classpath"))?;
        let brokers = if nodes > 1 {
            let ports = (0..nodes)
                .map(|_| Ok((free_port()?, free_port()?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let configs =
                Cluster::configs(&scratch.path().join("kafka"), &ports, PARTITIONS, "512m");
            eprintln!("starting a {nodes}-node Kafka cluster ...");
            Cluster::start(&runtime, configs, scratch.path())?.brokers
        } else {
            let kafka = KafkaConfig {
                proxied,
                ..KafkaConfig::single(
                    scratch.path().join("kafka"),
                    free_port()?,
                    free_port()?,
                    PARTITIONS,
                    "1g",
                )
            };
            eprintln!("starting Kafka on {} ...", kafka.bootstrap());
            vec![Broker::start(
                &runtime,
                kafka,
                &scratch.path().join("kafka-1.log"),
            )?]
        };
        let bootstrap = brokers
            .iter()
            .map(Broker::bootstrap)
            .collect::<Vec<_>>()
            .join(",");
        let port = free_port()?;
        let mut registry = Managed {
            name: "schema-registry".into(),
            binary: "schema-registry",
            env: vec![
                ("REGISTRY_LISTEN".into(), format!("127.0.0.1:{port}")),
                ("KAFKA_BOOTSTRAP".into(), bootstrap.clone()),
            ],
            port,
            service: None,
        };
        let release = ws.target.join("release");
        launch(&release, scratch.path(), &mut registry)?;
        let services_bootstrap = proxied.map_or_else(
            || bootstrap.clone(),
            |p| format!("127.0.0.1:{}", p.advertised_port),
        );
        Ok(Self {
            scratch,
            release,
            services: Vec::new(),
            registry,
            brokers,
            bootstrap,
            services_bootstrap,
            proxied,
        })
    }

    pub(crate) fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub(crate) fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry.port)
    }

    /// Starts a command service on `topic` ([`PARTITIONS`] partitions); its base URL.
    pub(crate) fn command_service(&mut self, name: &str, topic: &str) -> anyhow::Result<String> {
        let port = free_port()?;
        self.add(
            name,
            "command-service",
            vec![
                ("COMMAND_LISTEN".into(), format!("127.0.0.1:{port}")),
                (
                    "COMMAND_INSTANCE_ID".into(),
                    format!("chaos-{name}-{topic}"),
                ),
                ("ORDERS_TOPIC".into(), topic.to_owned()),
                ("CUSTOMERS_TOPIC".into(), format!("{topic}-customers")),
                ("ORDERS_TOPIC_PARTITIONS".into(), PARTITIONS.to_string()),
            ],
            port,
        )
    }

    /// Starts a query replica of `group` on `topic`, its store under the scratch directory;
    /// its base URL.
    pub(crate) fn replica(
        &mut self,
        name: &str,
        topic: &str,
        group: &str,
    ) -> anyhow::Result<String> {
        let port = free_port()?;
        let data = self.scratch.path().join(name);
        self.add(
            name,
            "query-service",
            vec![
                ("QUERY_LISTEN".into(), format!("127.0.0.1:{port}")),
                ("QUERY_REPLICA_ID".into(), name.to_owned()),
                ("QUERY_DATA_DIR".into(), data.display().to_string()),
                ("QUERY_GROUP_ID".into(), group.to_owned()),
                ("QUERY_ADMIN_TOKEN".into(), ADMIN_TOKEN.to_owned()),
                ("QUERY_REPORTS_TOPIC".into(), format!("{topic}-reports")),
                ("ORDERS_TOPIC".into(), topic.to_owned()),
                ("CUSTOMERS_TOPIC".into(), format!("{topic}-customers")),
            ],
            port,
        )
    }

    fn add(
        &mut self,
        name: &str,
        binary: &'static str,
        mut env: Vec<(String, String)>,
        port: u16,
    ) -> anyhow::Result<String> {
        env.push(("KAFKA_BOOTSTRAP".into(), self.services_bootstrap.clone()));
        env.push(("SCHEMA_REGISTRY_URL".into(), self.registry_url()));
        let mut managed = Managed {
            name: name.to_owned(),
            binary,
            env,
            port,
            service: None,
        };
        launch(&self.release, self.scratch.path(), &mut managed)?;
        self.services.push(managed);
        Ok(format!("http://127.0.0.1:{port}"))
    }

    fn managed(&mut self, name: &str) -> anyhow::Result<&mut Managed> {
        if name == self.registry.name {
            return Ok(&mut self.registry);
        }
        self.services
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow::anyhow!("no service named {name}"))
    }

    /// Kills a service at once (SIGKILL), as a crash would.
    pub(crate) fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(mut service) = self.managed(name)?.service.take() {
            service.kill();
        }
        Ok(())
    }

    /// Stops a service with SIGTERM (killed if it is not gone within 20 s).
    pub(crate) fn terminate(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(mut service) = self.managed(name)?.service.take() {
            service.stop(Duration::from_secs(20));
        }
        Ok(())
    }

    /// Starts a stopped service again, as it was first started (same port, same store).
    pub(crate) fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let release = self.release.clone();
        let scratch = self.scratch.path().to_path_buf();
        let managed = self.managed(name)?;
        launch(&release, &scratch, managed)
    }

    /// Sends a signal (`STOP`, `CONT`) to a running service.
    pub(crate) fn signal(&mut self, name: &str, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .managed(name)?
            .service
            .as_ref()
            .map(Service::pid)
            .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {name} failed");
        Ok(())
    }

    /// Stops every service (not Kafka nor the registry), for the next scenario.
    pub(crate) fn clear(&mut self) {
        for mut managed in self.services.drain(..) {
            if let Some(mut service) = managed.service.take() {
                service.kill();
            }
        }
    }
}

/// Starts `managed` and waits until it answers `/health/live`.
fn launch(
    release: &std::path::Path,
    scratch: &std::path::Path,
    managed: &mut Managed,
) -> anyhow::Result<()> {
    let mut command = Command::new(release.join(managed.binary));
    command.env("RUST_LOG", "warn");
    for (key, value) in &managed.env {
        command.env(key, value);
    }
    let log = scratch.join(format!("{}.log", managed.name));
    let mut service = Service::spawn(&managed.name, command, &log)?;
    service.wait_http_ok(
        localhost(managed.port),
        "/health/live",
        Duration::from_secs(120),
    )?;
    managed.service = Some(service);
    Ok(())
}

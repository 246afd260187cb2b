//! Apache Kafka (KRaft, each node a combined broker + controller) run from the jars Maven
//! resolves from Maven Central: no Docker, no tarball. One node, or a [`Cluster`] of several
//! with replicated topics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{Service, localhost};
use crate::secured::SecuredListener;

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub data_dir: PathBuf,
    pub port: u16,
    pub controller_port: u16,
    pub partitions: u32,
    pub heap: &'static str,
    /// A second client listener with TLS and SASL, besides the plaintext one.
    pub secured: Option<SecuredListener>,
    /// This node's place in a cluster of several; none for a single node.
    pub cluster: Option<Membership>,
    /// A plaintext listener whose clients are told to connect somewhere else, where a proxy
    /// forwards to it (so that every connection of those clients goes through the proxy).
    pub proxied: Option<ProxiedListener>,
}

/// A listener on `port` that advertises `advertised_port`, where a proxy listens.
#[derive(Debug, Clone, Copy)]
pub struct ProxiedListener {
    pub port: u16,
    pub advertised_port: u16,
}

/// A node's place in a cluster: its id, and every node's id and controller port.
#[derive(Debug, Clone)]
pub struct Membership {
    pub node_id: u32,
    pub voters: Vec<(u32, u16)>,
}

impl Membership {
    /// Copies of every record: three at most.
    fn replication(&self) -> usize {
        self.voters.len().clamp(1, 3)
    }
}

impl KafkaConfig {
    /// One node on `port` (a broker and its own controller on `controller_port`), plaintext
    /// only; set the other fields for a secured listener, a cluster or a proxy.
    pub fn single(
        data_dir: PathBuf,
        port: u16,
        controller_port: u16,
        partitions: u32,
        heap: &'static str,
    ) -> Self {
        Self {
            data_dir,
            port,
            controller_port,
            partitions,
            heap,
            secured: None,
            cluster: None,
            proxied: None,
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn properties(&self) -> anyhow::Result<String> {
        let log_dir = self.data_dir.join("log");
        let (listener, advertised, protocol, secured) = match &self.secured {
            Some(secured) => {
                let tls = SecuredListener::tls_files(&self.data_dir)?;
                let address = format!("SASL_SSL://{}", secured.bootstrap());
                (
                    format!(",{address}"),
                    format!(",{address}"),
                    ",SASL_SSL:SASL_SSL",
                    secured.properties(&tls),
                )
            }
            None => (String::new(), String::new(), "", String::new()),
        };
        let (listener, advertised, protocol) = match &self.proxied {
            Some(proxied) => (
                format!("{listener},PROXIED://127.0.0.1:{}", proxied.port),
                format!(
                    "{advertised},PROXIED://127.0.0.1:{}",
                    proxied.advertised_port
                ),
                format!("{protocol},PROXIED:PLAINTEXT"),
            ),
            None => (listener, advertised, protocol.to_owned()),
        };
        let (node_id, voters, replication) = match &self.cluster {
            Some(cluster) => (
                cluster.node_id,
                cluster
                    .voters
                    .iter()
                    .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
                    .collect::<Vec<_>>()
                    .join(","),
                cluster.replication(),
            ),
            None => (1, format!("1@127.0.0.1:{}", self.controller_port), 1),
        };
        // A write is acknowledged by two copies when there are three: one node may be down.
        let min_isr = replication.saturating_sub(1).max(1);
        Ok(format!(
            "\
# Written by local-kafka at each start; edit local-kafka/src/broker.rs instead.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}{listener}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}{advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocol}
{secured}log.dirs={log_dir}
num.partitions={partitions}
auto.create.topics.enable=false
# Internal topics as replicated as the cluster allows (one node: one copy, or transactions and
# groups never become available); topics created without a replication factor likewise.
default.replication.factor={replication}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=6
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
# A transaction left open by a killed command instance holds its partitions' next owner back
# until it times out; look for timed-out transactions every second, not every ten.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
",
            controller = self.controller_port,
            port = self.port,
            log_dir = log_dir.display(),
            partitions = self.partitions,
        ))
    }
}

/// What running a broker needs: the jars and the logging configuration.
#[derive(Debug, Clone)]
pub struct KafkaRuntime {
    pub classpath: String,
    pub log4j_config: PathBuf,
}

/// The Maven project that names the broker's jars, and the broker's logging configuration.
/// Compiled in rather than read from the source tree: a build reused from another checkout
/// (one target directory shared by several) must not read, or need, that checkout's files.
const POM: &str = include_str!("../kafka/pom.xml");
const LOG4J: &str = include_str!("../kafka/log4j2.yaml");

/// Writes `contents` to `path` unless it already holds exactly that.
fn write_if_changed(path: &Path, contents: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|current| current == contents) {
        return Ok(());
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

impl KafkaRuntime {
    /// Resolves the broker's runtime classpath with Maven (from the compiled-in `pom.xml`),
    /// once: the result is cached in `cache_dir` next to a copy of the pom it came from.
    pub fn resolve(cache_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(cache_dir)
            .with_context(|| format!("creating {}", cache_dir.display()))?;
        let stamp = cache_dir.join("pom.xml");
        let output = cache_dir.join("classpath.txt");
        let log4j_config = cache_dir.join("log4j2.yaml");
        write_if_changed(&log4j_config, LOG4J)?;
        let cached = std::fs::read_to_string(&stamp).is_ok_and(|s| s == POM);
        if cached
            && let Ok(cp) = std::fs::read_to_string(&output)
            && cp.trim().split(':').all(|jar| Path::new(jar).is_file())
        {
            return Ok(Self {
                classpath: cp.trim().to_owned(),
                log4j_config,
            });
        }
        eprintln!("resolving Apache Kafka jars with Maven (the first run downloads them)...");
        let project = cache_dir.join("resolve");
        std::fs::create_dir_all(&project)?;
        let pom = project.join("pom.xml");
        write_if_changed(&pom, POM)?;
        let status = Command::new("mvn")
            .args(["-q", "-B", "-f"])
            .arg(&pom)
            .args(["dependency:build-classpath", "-Dmdep.includeScope=runtime"])
            .arg(format!("-Dmdep.outputFile={}", output.display()))
            .status()
            .context("running mvn (is Maven installed? `cargo xtask doctor` checks)")?;
        anyhow::ensure!(
            status.success(),
            "Maven could not resolve Kafka's jars ({status})"
        );
        std::fs::write(&stamp, POM)?;
        Ok(Self {
            classpath: std::fs::read_to_string(&output)?.trim().to_owned(),
            log4j_config,
        })
    }

    /// The runtime `cargo xtask test` resolved, passed to tests in `KAFKA_CLASSPATH` and
    /// `KAFKA_LOG4J_CONFIG`.
    pub fn from_env() -> anyhow::Result<Self> {
        let classpath = std::env::var("KAFKA_CLASSPATH")
            .context("KAFKA_CLASSPATH is not set: run the tests with `cargo xtask test`")?;
        let log4j_config = std::env::var_os("KAFKA_LOG4J_CONFIG")
            .map(PathBuf::from)
            .context("KAFKA_LOG4J_CONFIG is not set: run the tests with `cargo xtask test`")?;
        Ok(Self {
            classpath,
            log4j_config,
        })
    }

    /// Exports this runtime to child processes (see [`KafkaRuntime::from_env`]).
    pub fn export(&self, command: &mut Command) {
        command.env("KAFKA_CLASSPATH", &self.classpath);
        command.env("KAFKA_LOG4J_CONFIG", &self.log4j_config);
    }
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// A running broker; stopped (gracefully, then forcefully) when dropped.
#[derive(Debug)]
pub struct Broker {
    runtime: KafkaRuntime,
    config: KafkaConfig,
    log: PathBuf,
    process: Service,
}

impl Broker {
    /// Formats the storage (first start only) and starts the broker; returns once it accepts
    /// clients.
    pub fn start(runtime: &KafkaRuntime, config: KafkaConfig, log: &Path) -> anyhow::Result<Self> {
        let process = launch(runtime, &config, log)?;
        Ok(Self {
            runtime: runtime.clone(),
            config,
            log: log.to_path_buf(),
            process,
        })
    }

    pub fn bootstrap(&self) -> String {
        self.config.bootstrap()
    }

    /// The operating system's id of the broker's JVM.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn process(&mut self) -> &mut Service {
        &mut self.process
    }

    /// Stops the broker cleanly (SIGTERM, then SIGKILL after the grace period).
    pub fn stop(&mut self, grace: Duration) {
        self.process.stop(grace);
    }

    /// Kills the broker at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same ports and data after [`Broker::stop`] or [`Broker::kill`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process = launch(&self.runtime, &self.config, &self.log)?;
        Ok(())
    }
}

fn launch(runtime: &KafkaRuntime, config: &KafkaConfig, log: &Path) -> anyhow::Result<Service> {
    prepare(runtime, config, None)?;
    let (mut broker, starts_before) = spawn(runtime, config, log)?;
    wait_started(
        &mut broker,
        config.port,
        starts_before,
        Duration::from_secs(120),
    )?;
    Ok(broker)
}

/// A new cluster id, as Kafka makes them.
fn random_cluster_id(runtime: &KafkaRuntime) -> anyhow::Result<String> {
    let uuid = Command::new(java())
        .args([
            "-cp",
            &runtime.classpath,
            "kafka.tools.StorageTool",
            "random-uuid",
        ])
        .output()
        .context("running java (is Java 17+ installed?)")?;
    anyhow::ensure!(uuid.status.success(), "kafka-storage random-uuid failed");
    Ok(String::from_utf8_lossy(&uuid.stdout).trim().to_owned())
}

/// Writes the node's properties, and formats its storage on its first start (with
/// `cluster_id`, or a new one).
fn prepare(
    runtime: &KafkaRuntime,
    config: &KafkaConfig,
    cluster_id: Option<&str>,
) -> anyhow::Result<()> {
    let cp = &runtime.classpath;
    std::fs::create_dir_all(&config.data_dir)?;
    let properties = config.data_dir.join("server.properties");
    std::fs::write(&properties, config.properties()?)?;
    if config.data_dir.join("log/meta.properties").is_file() {
        return Ok(());
    }
    let cluster_id = match cluster_id {
        Some(id) => id.to_owned(),
        None => random_cluster_id(runtime)?,
    };
    let format = Command::new(java())
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            runtime.log4j_config.display()
        ))
        .args([
            "-cp",
            cp,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            &cluster_id,
            "-c",
        ])
        .arg(&properties)
        .args(config.secured.iter().flat_map(SecuredListener::format_args))
        .output()?;
    if !format.status.success() {
        bail!(
            "formatting Kafka storage failed:\n{}{}",
            String::from_utf8_lossy(&format.stdout),
            String::from_utf8_lossy(&format.stderr)
        );
    }
    Ok(())
}

/// Starts the node's JVM; with how many starts its log already showed.
fn spawn(
    runtime: &KafkaRuntime,
    config: &KafkaConfig,
    log: &Path,
) -> anyhow::Result<(Service, usize)> {
    let mut command = Command::new(java());
    command
        .arg(format!("-Xmx{}", config.heap))
        .arg(format!("-Xms{}", config.heap))
        .args([
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            runtime.log4j_config.display()
        ))
        .args(["-cp", &runtime.classpath, "kafka.Kafka"])
        .arg(config.data_dir.join("server.properties"));
    let starts_before = std::fs::read_to_string(log).map_or(0, |l| l.matches(STARTED).count());
    Ok((Service::spawn("kafka", command, log)?, starts_before))
}

/// Several nodes, each a broker and a controller, every topic replicated on up to three of
/// them (two copies acknowledge a write). Stopped when dropped.
#[derive(Debug)]
pub struct Cluster {
    pub brokers: Vec<Broker>,
}

impl Cluster {
    /// Starts one node per config (formatted with one cluster id on their first start), all at
    /// once, since none becomes ready before a majority of controllers is up; returns once
    /// every node accepts clients. `logs` holds `kafka-<node>.log`.
    pub fn start(
        runtime: &KafkaRuntime,
        configs: Vec<KafkaConfig>,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let cluster_id = random_cluster_id(runtime)?;
        let mut starting = Vec::new();
        for (index, config) in configs.into_iter().enumerate() {
            prepare(runtime, &config, Some(&cluster_id))?;
            let log = logs.join(format!("kafka-{}.log", index + 1));
            let (process, starts_before) = spawn(runtime, &config, &log)?;
            starting.push((
                Broker {
                    runtime: runtime.clone(),
                    config,
                    log,
                    process,
                },
                starts_before,
            ));
        }
        let mut brokers = Vec::new();
        for (mut broker, starts_before) in starting {
            let port = broker.config.port;
            wait_started(
                &mut broker.process,
                port,
                starts_before,
                Duration::from_secs(120),
            )?;
            brokers.push(broker);
        }
        Ok(Self { brokers })
    }

    /// The configs of `ports.len()` nodes under `data_dir` (`node-<id>`): each node's client
    /// and controller port.
    pub fn configs(
        data_dir: &Path,
        ports: &[(u16, u16)],
        partitions: u32,
        heap: &'static str,
    ) -> Vec<KafkaConfig> {
        let voters: Vec<(u32, u16)> = (1..)
            .zip(ports.iter().map(|(_, controller)| *controller))
            .collect();
        (1..)
            .zip(ports)
            .map(|(node_id, (port, controller_port))| KafkaConfig {
                cluster: Some(Membership {
                    node_id,
                    voters: voters.clone(),
                }),
                ..KafkaConfig::single(
                    data_dir.join(format!("node-{node_id}")),
                    *port,
                    *controller_port,
                    partitions,
                    heap,
                )
            })
            .collect()
    }

    /// Every node's client address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(Broker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }
}

const STARTED: &str = "Kafka Server started";

/// Ready means the broker logged that it started (once more than the log already said) and its
/// client port accepts connections.
fn wait_started(
    broker: &mut Service,
    port: u16,
    starts_before: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        broker.ensure_running()?;
        let started = std::fs::read_to_string(broker.log())
            .is_ok_and(|l| l.matches(STARTED).count() > starts_before);
        if started
            && std::net::TcpStream::connect_timeout(&localhost(port), Duration::from_secs(1))
                .is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "Kafka did not start within {timeout:?}; last lines of {}:\n{}",
                broker.log().display(),
                broker.tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

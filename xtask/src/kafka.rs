//! A single-node Apache Kafka (KRaft, combined broker + controller) run from the jars Maven
//! resolves from Maven Central: no Docker, no tarball. Used by `dev`, `test` and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::process::{Service, localhost};
use crate::workspace::Workspace;

#[derive(Debug, Clone)]
pub(crate) struct KafkaConfig {
    pub(crate) data_dir: PathBuf,
    pub(crate) port: u16,
    pub(crate) controller_port: u16,
    pub(crate) partitions: u32,
    pub(crate) heap: &'static str,
}

impl KafkaConfig {
    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn properties(&self) -> String {
        let log_dir = self.data_dir.join("log");
        format!(
            "\
# Written by `cargo xtask` at each start; edit xtask/src/kafka.rs instead.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dir}
num.partitions={partitions}
auto.create.topics.enable=false
# One broker: internal topics must live with a single replica, or transactions and groups
# never become available.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
",
            controller = self.controller_port,
            port = self.port,
            log_dir = log_dir.display(),
            partitions = self.partitions,
        )
    }
}

/// The broker's runtime classpath, resolved by Maven once and cached next to the pom's hash.
pub(crate) fn classpath(ws: &Workspace) -> anyhow::Result<String> {
    let pom = ws.root.join("xtask/kafka/pom.xml");
    let pom_text =
        std::fs::read_to_string(&pom).with_context(|| format!("reading {}", pom.display()))?;
    let cache = ws.cache_dir().join("kafka-classpath");
    std::fs::create_dir_all(&cache)?;
    let stamp = cache.join("pom.xml");
    let output = cache.join("classpath.txt");
    let cached = std::fs::read_to_string(&stamp).is_ok_and(|s| s == pom_text);
    if cached
        && let Ok(cp) = std::fs::read_to_string(&output)
        && cp.trim().split(':').all(|jar| Path::new(jar).is_file())
    {
        return Ok(cp.trim().to_owned());
    }
    eprintln!("resolving Apache Kafka jars with Maven (first run downloads them)...");
    let status = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .args(["dependency:build-classpath", "-Dmdep.includeScope=runtime"])
        .arg(format!("-Dmdep.outputFile={}", output.display()))
        .status()
        .context("running mvn (is Maven installed?)")?;
    anyhow::ensure!(
        status.success(),
        "Maven could not resolve Kafka's jars ({status})"
    );
    std::fs::write(&stamp, &pom_text)?;
    Ok(std::fs::read_to_string(&output)?.trim().to_owned())
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// Formats the storage (first start only) and starts the broker; returns once it accepts clients.
pub(crate) fn start(ws: &Workspace, config: &KafkaConfig, log: &Path) -> anyhow::Result<Service> {
    let cp = classpath(ws)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let properties = config.data_dir.join("server.properties");
    std::fs::write(&properties, config.properties())?;
    let log4j = ws.root.join("xtask/kafka/log4j2.yaml");

    if !config.data_dir.join("log/meta.properties").is_file() {
        let uuid = Command::new(java())
            .args(["-cp", &cp, "kafka.tools.StorageTool", "random-uuid"])
            .output()
            .context("running java (is Java 17+ installed?)")?;
        anyhow::ensure!(uuid.status.success(), "kafka-storage random-uuid failed");
        let cluster_id = String::from_utf8_lossy(&uuid.stdout).trim().to_owned();
        let format = Command::new(java())
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .args([
                "-cp",
                &cp,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                &cluster_id,
                "-c",
            ])
            .arg(&properties)
            .output()?;
        if !format.status.success() {
            bail!(
                "formatting Kafka storage failed:\n{}{}",
                String::from_utf8_lossy(&format.stdout),
                String::from_utf8_lossy(&format.stderr)
            );
        }
    }

    let mut command = Command::new(java());
    command
        .arg(format!("-Xmx{}", config.heap))
        .arg(format!("-Xms{}", config.heap))
        .args([
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .args(["-cp", &cp, "kafka.Kafka"])
        .arg(&properties);
    let mut broker = Service::spawn("kafka", command, log)?;
    wait_started(&mut broker, config.port, Duration::from_secs(120))?;
    Ok(broker)
}

/// Ready means the broker logged that it started and its client port accepts connections.
fn wait_started(broker: &mut Service, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        broker.ensure_running()?;
        let started =
            std::fs::read_to_string(broker.log()).is_ok_and(|l| l.contains("Kafka Server started"));
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

//! Project automation, one entry point for people and CI:
//!
//! - `cargo xtask dev` starts the whole stack locally (Kafka, schema registry, command service,
//!   two query replicas) and stops it on Ctrl-C;
//! - `cargo xtask test` runs the whole test suite against an ephemeral broker and registry that
//!   it starts and always stops;
//! - `cargo xtask report <name>` starts a report on a query replica, shows its progress and
//!   prints its table;
//! - `cargo xtask doctor` checks this machine's prerequisites (`dev`, `test` and `bench` run it
//!   first, so a missing piece fails in seconds, not minutes into a build).

mod bench;
mod chaos;
mod compose;
mod layers;
mod load;
mod python;
mod report;
mod workspace;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use local_kafka::process::{ensure_port_free, free_port, localhost};
use local_kafka::{Broker, Cluster, KafkaConfig, KafkaRuntime, SecuredListener, Service};

use crate::workspace::Workspace;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Commands/s and latency of the command service vs kafka-producer-perf-test.
    Commands(bench::commands::CommandBench),
    /// Replica reads (local, forwarded) vs a static handler, replay vs raw consume, visibility.
    Queries(bench::queries::QueryBench),
    /// Reports and replay over millions of events vs raw consume; GET p99 during a report.
    Replay(bench::replay::ReplayBench),
    /// Live streams: ack → received latency vs GET visibility, memory per stream, CPU per event.
    Live(bench::live::LiveBench),
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check this machine's prerequisites and print how to install what is missing.
    Doctor,
    /// Check the layering rule (engine and HTTP crates never depend on a domain crate; domain
    /// crates never on Kafka, RocksDB or actix-web).
    Layers,
    /// Start the local stack (data kept in `.dev/` across restarts) until Ctrl-C.
    Dev {
        /// Delete the stack's data (Kafka log, registry, replica stores) before starting.
        #[arg(long)]
        wipe: bool,
        /// Start only Kafka and the schema registry, for running the services yourself.
        #[arg(long)]
        infra_only: bool,
        /// Kafka nodes (each a broker and a controller); with 3, topics have three copies and
        /// a write needs two (`min.insync.replicas=2`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
        brokers: u16,
        /// Command-service instances sharing the topics' partitions: the first on port 8080,
        /// the others on 8082, 8083, …
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
        command_instances: u16,
    },
    /// Run a benchmark (release builds, private broker) and print its figures.
    #[command(subcommand)]
    Bench(Bench),
    /// Inject each fault (kill -9, SIGSTOP, restarts, a broker or the registry down, a leader
    /// killed) under load into a stack of release binaries; print what failed and what was lost.
    Chaos(chaos::ChaosArgs),
    /// Start a report on a query replica, follow its progress, print its table.
    Report(report::ReportArgs),
    /// Run every test against an ephemeral Kafka and schema registry.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    // Children in the terminal's process group get the same Ctrl-C and stop themselves; the
    // xtask must outlive them to stop whatever does not.
    if let Err(error) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("warning: could not install a Ctrl-C handler: {error}");
    }
    let command = Cli::parse().command;
    let result = Workspace::locate().and_then(|ws| run(&ws, command, &interrupted));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(ws: &Workspace, command: Task, interrupted: &AtomicBool) -> anyhow::Result<ExitCode> {
    if matches!(command, Task::Doctor) {
        let host = doctor::Host::this_machine();
        let findings = doctor::examine(&host);
        println!("workspace: {}", ws.root.display());
        print!("{}", doctor::report(&findings, host.is_root()));
        return Ok(if doctor::all_found(&findings) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if let Task::Report(args) = &command {
        return report::run(args);
    }
    if matches!(command, Task::Layers) {
        layers::check(ws)?;
        println!("the layering rule holds");
        return Ok(ExitCode::SUCCESS);
    }
    prerequisites()?;
    match command {
        Task::Doctor | Task::Layers | Task::Report(_) => Ok(ExitCode::SUCCESS),
        Task::Dev {
            wipe,
            infra_only,
            brokers,
            command_instances,
        } => dev(
            ws,
            &DevShape {
                wipe,
                infra_only,
                brokers,
                command_instances,
            },
            interrupted,
        ),
        Task::Test { cargo_args } => test(ws, &cargo_args),
        Task::Chaos(args) => chaos::run(ws, &args).map(|()| ExitCode::SUCCESS),
        // The load generator must not be the bottleneck: an unoptimised build of it (reqwest,
        // hyper, tokio) takes most of a core at a few thousand requests/s.
        Task::Bench(_) if cfg!(debug_assertions) => rerun_optimised(ws),
        Task::Bench(Bench::Commands(args)) => {
            bench::commands::run(ws, &args).map(|()| ExitCode::SUCCESS)
        }
        Task::Bench(Bench::Queries(args)) => {
            bench::queries::run(ws, &args).map(|()| ExitCode::SUCCESS)
        }
        Task::Bench(Bench::Live(args)) => bench::live::run(ws, &args).map(|()| ExitCode::SUCCESS),
        Task::Bench(Bench::Replay(args)) => {
            bench::replay::run(ws, &args).map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Fails, with what is missing and how to install it, unless every prerequisite is here.
fn prerequisites() -> anyhow::Result<()> {
    let host = doctor::Host::this_machine();
    let findings = doctor::examine(&host);
    if doctor::all_found(&findings) {
        return Ok(());
    }
    eprint!("{}", doctor::report(&findings, host.is_root()));
    anyhow::bail!("prerequisites are missing (see above; `cargo xtask doctor` checks again)")
}

/// Runs this same command with a release build of the xtask.
fn rerun_optimised(ws: &Workspace) -> anyhow::Result<ExitCode> {
    ws.cargo(&["build", "--release", "--package", "xtask"])?;
    let status = Command::new(ws.target.join("release").join("xtask"))
        .args(std::env::args_os().skip(1))
        .current_dir(&ws.root)
        .status()
        .context("running the release build of the xtask")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

const DEV_KAFKA_PORT: u16 = 9092;
const DEV_CONTROLLER_PORT: u16 = 9093;
const DEV_REGISTRY_PORT: u16 = 8081;
const DEV_COMMAND_PORT: u16 = 8080;
const DEV_QUERY_PORTS: [u16; 2] = [8091, 8092];
const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);
/// The admin token of the dev stack's query replicas (a development default, printed on start).
const DEV_ADMIN_TOKEN: &str = "dev-admin-token";

fn registry_command(ws: &Workspace, port: u16, bootstrap: &str) -> Command {
    let mut command = Command::new(ws.binary("schema-registry"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--kafka-bootstrap", bootstrap])
        .args(["--topic", "_schemas"]);
    command
}

/// Each dev Kafka node's client and controller port: 9092 and 9093, then two up per node.
fn dev_kafka_ports(brokers: u16) -> Vec<(u16, u16)> {
    (0..brokers)
        .map(|n| (DEV_KAFKA_PORT + 2 * n, DEV_CONTROLLER_PORT + 2 * n))
        .collect()
}

/// What `cargo xtask dev` starts.
struct DevShape {
    wipe: bool,
    infra_only: bool,
    brokers: u16,
    command_instances: u16,
}

/// The port of the dev stack's command instance `n` (from 0): 8080, then 8082, 8083, … (8081
/// is the registry's).
fn dev_command_port(n: u16) -> u16 {
    if n == 0 {
        DEV_COMMAND_PORT
    } else {
        DEV_COMMAND_PORT + 1 + n
    }
}

fn dev(ws: &Workspace, shape: &DevShape, interrupted: &AtomicBool) -> anyhow::Result<ExitCode> {
    let DevShape {
        wipe,
        infra_only,
        brokers,
        command_instances,
    } = *shape;
    let command_ports: Vec<u16> = (0..command_instances).map(dev_command_port).collect();
    let data = ws.root.join(".dev");
    if wipe && data.exists() {
        eprintln!("wiping {}", data.display());
        std::fs::remove_dir_all(&data)?;
    }
    // The stores and the registry's state belong to one Kafka: another shape of it needs a
    // fresh start.
    let shape = data.join("brokers");
    std::fs::create_dir_all(&data)?;
    match std::fs::read_to_string(&shape) {
        Ok(before) if before.trim() != brokers.to_string() => anyhow::bail!(
            "{} holds a stack of {} Kafka node(s); start it so, or add --wipe to start over with {brokers}",
            data.display(),
            before.trim()
        ),
        _ => std::fs::write(&shape, brokers.to_string())?,
    }
    let ports = dev_kafka_ports(brokers);
    for (port, controller) in &ports {
        ensure_port_free(*port, "Kafka")?;
        ensure_port_free(*controller, "the Kafka controller")?;
    }
    ensure_port_free(DEV_REGISTRY_PORT, "the schema registry")?;
    if !infra_only {
        for port in &command_ports {
            ensure_port_free(*port, "a command-service instance")?;
        }
        for port in DEV_QUERY_PORTS {
            ensure_port_free(port, "a query replica")?;
        }
        ws.cargo(&["build", "--bins"])?;
    } else {
        ws.cargo(&["build", "--bin", "schema-registry"])?;
    }
    let logs = data.join("logs");
    // Started in dependency order after the broker, stopped in reverse before it.
    let mut services: Vec<Service> = Vec::new();

    let runtime = KafkaRuntime::resolve(&ws.cache_dir().join("kafka-classpath"))?;
    let started = Instant::now();
    let mut kafka: Vec<Broker> = if brokers == 1 {
        let kafka = KafkaConfig::single(
            data.join("kafka"),
            DEV_KAFKA_PORT,
            DEV_CONTROLLER_PORT,
            6,
            "1g",
        );
        eprintln!("starting Kafka on {} ...", kafka.bootstrap());
        vec![Broker::start(&runtime, kafka, &logs.join("kafka.log"))?]
    } else {
        eprintln!("starting a Kafka cluster of {brokers} nodes ...");
        let configs = Cluster::configs(&data.join("kafka-cluster"), &ports, 6, "512m");
        Cluster::start(&runtime, configs, &logs)?.brokers
    };
    let bootstrap = kafka
        .iter()
        .map(Broker::bootstrap)
        .collect::<Vec<_>>()
        .join(",");
    let mut timings = vec![("Kafka".to_owned(), started.elapsed())];

    let started = Instant::now();
    let mut registry = Service::spawn(
        "schema-registry",
        registry_command(ws, DEV_REGISTRY_PORT, &bootstrap),
        &logs.join("schema-registry.log"),
    )?;
    // The registry answers only once it has replayed its topic: live is ready.
    registry.wait_http_ok(localhost(DEV_REGISTRY_PORT), "/health/live", HEALTH_TIMEOUT)?;
    timings.push(("schema registry".to_owned(), started.elapsed()));
    services.push(registry);
    let registry_url = format!("http://127.0.0.1:{DEV_REGISTRY_PORT}");

    if !infra_only {
        // Started together, like the replicas: each is ready once the command group has given
        // it its partitions and it has restored them; the topics then exist, which the
        // replicas need.
        let instances = command_ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                let name = format!("command-{}", index + 1);
                let settings = vec![
                    ("COMMAND_LISTEN", format!("127.0.0.1:{port}")),
                    ("COMMAND_INSTANCE_ID", name.clone()),
                    ("COMMAND_DATA_DIR", data.join(&name).display().to_string()),
                    ("COMMAND_ADMIN_TOKEN", DEV_ADMIN_TOKEN.to_owned()),
                ];
                (name, *port, settings)
            })
            .collect();
        let shared = [
            ("KAFKA_BOOTSTRAP", bootstrap.clone()),
            ("SCHEMA_REGISTRY_URL", registry_url.clone()),
        ];
        timings.extend(start_together(
            ws,
            &mut services,
            &logs,
            "command-service",
            &shared,
            instances,
        )?);
        // Both replicas start together: a replica that joined alone would be ready, then lose
        // half its partitions (and its readiness) to the next one's rebalance.
        let replicas = DEV_QUERY_PORTS
            .into_iter()
            .enumerate()
            .map(|(index, port)| {
                let name = format!("query-{}", index + 1);
                let settings = vec![
                    ("QUERY_LISTEN", format!("127.0.0.1:{port}")),
                    ("QUERY_REPLICA_ID", name.clone()),
                    ("QUERY_DATA_DIR", data.join(&name).display().to_string()),
                    ("QUERY_ADMIN_TOKEN", DEV_ADMIN_TOKEN.to_owned()),
                ];
                (name, port, settings)
            })
            .collect();
        timings.extend(start_together(
            ws,
            &mut services,
            &logs,
            "query-service",
            &shared,
            replicas,
        )?);
    }

    println!();
    println!(
        "The stack is up, every service ready (data in {}, logs in {}):",
        data.display(),
        logs.display()
    );
    println!("  Kafka            {bootstrap}");
    println!("  schema registry  {registry_url}");
    if !infra_only {
        println!("  command service  http://127.0.0.1:{DEV_COMMAND_PORT}   e.g.");
        println!(
            "    curl -i -X POST localhost:{DEV_COMMAND_PORT}/orders -H 'content-type: application/json' \\\n      -d '{{\"customer_id\":\"c-42\",\"currency\":\"EUR\",\"items\":[{{\"sku\":\"A-1\",\"quantity\":2,\"unit_price_cents\":1250}}]}}'"
        );
        for (index, port) in command_ports.iter().enumerate().skip(1) {
            println!(
                "  command instance {}  http://127.0.0.1:{port}   (any instance takes any command)",
                index + 1
            );
        }
        for (index, port) in DEV_QUERY_PORTS.into_iter().enumerate() {
            println!(
                "  query replica {}  http://127.0.0.1:{port}   GET /orders/<id>",
                index + 1
            );
        }
    }
    let ready: Vec<String> = timings
        .iter()
        .map(|(name, took)| format!("{name} {:.1} s", took.as_secs_f64()))
        .collect();
    println!("Ready after: {}.", ready.join(", "));
    println!("Ctrl-C stops everything; `cargo xtask dev --wipe` starts from empty.");

    let mut failure = None;
    while !interrupted.load(Ordering::SeqCst) && failure.is_none() {
        std::thread::sleep(Duration::from_millis(300));
        let mut all = services
            .iter_mut()
            .chain(kafka.iter_mut().map(Broker::process));
        failure = all.find_map(|service| service.ensure_running().err());
    }
    eprintln!("stopping the stack ...");
    while let Some(mut service) = services.pop() {
        service.stop(Duration::from_secs(30));
    }
    for broker in &mut kafka {
        broker.stop(Duration::from_secs(30));
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// A service of the dev stack: its name, port and settings.
type Member = (String, u16, Vec<(&'static str, String)>);

/// Starts `binary` once per member, with the `shared` settings and its own, appends them to
/// `services`, and waits until all are ready at once; how long each took.
fn start_together(
    ws: &Workspace,
    services: &mut Vec<Service>,
    logs: &std::path::Path,
    binary: &str,
    shared: &[(&str, String)],
    members: Vec<Member>,
) -> anyhow::Result<Vec<(String, Duration)>> {
    let ports: Vec<u16> = members.iter().map(|(_, port, _)| *port).collect();
    for (name, _, settings) in members {
        let mut command = Command::new(ws.binary(binary));
        command.envs(settings).envs(shared.iter().cloned());
        services.push(Service::spawn(
            &name,
            command,
            &logs.join(format!("{name}.log")),
        )?);
    }
    let started = services.len() - ports.len()..services.len();
    let took = wait_all_ready(&mut services[started.clone()], &ports)?;
    Ok(services[started]
        .iter()
        .zip(took)
        .map(|(service, took)| (service.name.clone(), took))
        .collect())
}

/// Waits until every one of `services` (listening on `ports`) answers `/health/ready`, all at
/// the same time: a rebalance may take readiness back from one that was ready before. Returns
/// how long each took to be ready for good.
fn wait_all_ready(services: &mut [Service], ports: &[u16]) -> anyhow::Result<Vec<Duration>> {
    let started = Instant::now();
    let mut ready_since: Vec<Option<Duration>> = vec![None; services.len()];
    loop {
        for ((service, port), since) in services.iter_mut().zip(ports).zip(&mut ready_since) {
            service.ensure_running()?;
            let ready =
                local_kafka::process::http_status(localhost(*port), "/health/ready") == Some(200);
            *since = match (ready, *since) {
                (true, None) => Some(started.elapsed()),
                (true, kept) => kept,
                (false, _) => None,
            };
        }
        if let Some(all) = ready_since.iter().copied().collect::<Option<Vec<_>>>() {
            return Ok(all);
        }
        if started.elapsed() >= HEALTH_TIMEOUT {
            let waiting: Vec<&str> = services
                .iter()
                .zip(&ready_since)
                .filter(|(_, since)| since.is_none())
                .map(|(service, _)| service.name.as_str())
                .collect();
            anyhow::bail!(
                "not ready within {HEALTH_TIMEOUT:?}: {} (logs in {})",
                waiting.join(", "),
                services[0]
                    .log()
                    .parent()
                    .map_or_else(String::new, |d| d.display().to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn test(ws: &Workspace, cargo_args: &[String]) -> anyhow::Result<ExitCode> {
    layers::check(ws)?;
    // Build first so that compile errors surface before a broker starts.
    ws.cargo(&["build", "--workspace", "--bins", "--tests"])?;
    let python = python::interop_python(ws)?;

    let scratch = tempfile::Builder::new().prefix("xtask-test-").tempdir()?;
    let logs = scratch.path().join("logs");
    let kafka = KafkaConfig {
        // The secured-cluster tests connect through it; the rest use the plaintext listener.
        secured: Some(SecuredListener {
            port: free_port()?,
            users: vec![(TEST_SASL_USER.to_owned(), test_sasl_password())],
        }),
        ..KafkaConfig::single(
            scratch.path().join("kafka"),
            free_port()?,
            free_port()?,
            3,
            "768m",
        )
    };
    eprintln!("starting an ephemeral Kafka on {} ...", kafka.bootstrap());
    let runtime = KafkaRuntime::resolve(&ws.cache_dir().join("kafka-classpath"))?;
    let mut broker = Broker::start(&runtime, kafka.clone(), &logs.join("kafka.log"))?;
    let registry_port = free_port()?;
    let mut registry = Service::spawn(
        "schema-registry",
        registry_command(ws, registry_port, &kafka.bootstrap()),
        &logs.join("schema-registry.log"),
    )?;
    registry.wait_http_ok(localhost(registry_port), "/health/live", HEALTH_TIMEOUT)?;

    let mark = scratch
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .arg("test")
        // The whole workspace unless the caller picked packages.
        .args((!picks_packages(cargo_args)).then_some("--workspace"))
        .arg("--no-fail-fast")
        .args(cargo_args)
        .current_dir(&ws.root)
        .env("KAFKA_BOOTSTRAP", kafka.bootstrap())
        .env(
            "SCHEMA_REGISTRY_URL",
            format!("http://127.0.0.1:{registry_port}"),
        )
        .env("INTEROP_PYTHON", &python)
        // Inherited by every service the tests start: what this run may clean up after.
        .env(RUN_MARK, &mark)
        .envs(secured_env(&kafka)?)
        .env("KAFKA_CLASSPATH", &runtime.classpath)
        .env("KAFKA_LOG4J_CONFIG", &runtime.log4j_config)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let tests_started = process_start_ticks(child.id()).unwrap_or(0);
    // Pass the output through and add up the per-binary results into one closing line.
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            totals.add_line(&line);
        }
    }
    let status = child.wait()?;
    let leftovers = leftover_services(ws, tests_started, &mark);

    registry.stop(Duration::from_secs(10));
    broker.stop(Duration::from_secs(30));
    println!(
        "\ntests: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if !leftovers.is_empty() {
        eprintln!(
            "tests left {} service processes running (now killed): {}",
            leftovers.len(),
            leftovers.join(", ")
        );
    }
    if !status.success() || totals.passed == 0 || !leftovers.is_empty() {
        show_logs_hint(&logs, &scratch.keep());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

const TEST_SASL_USER: &str = "cqrs-test";

/// A password for the test broker's SASL user, different on every run.
fn test_sasl_password() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "pw-{:016x}",
        RandomState::new().hash_one(std::process::id())
    )
}

/// The variables that tell tests how to reach the broker's `SASL_SSL` listener.
fn secured_env(kafka: &KafkaConfig) -> anyhow::Result<Vec<(&'static str, String)>> {
    let Some(secured) = &kafka.secured else {
        return Ok(Vec::new());
    };
    let tls = SecuredListener::tls_files(&kafka.data_dir)?;
    let (user, password) = secured
        .users
        .first()
        .cloned()
        .context("the secured listener has no user")?;
    Ok(vec![
        ("KAFKA_SASL_SSL_BOOTSTRAP", secured.bootstrap()),
        ("KAFKA_SASL_USERNAME", user),
        ("KAFKA_SASL_PASSWORD", password),
        ("KAFKA_CA_FILE", tls.ca.display().to_string()),
        // The broker's key and certificates, which tests reuse for an HTTPS registry.
        ("KAFKA_TLS_KEYSTORE", tls.keystore.display().to_string()),
    ])
}

/// When a process started, in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Marks the processes a test run starts (an environment variable they inherit), so that the
/// run cleans up after its own tests only, never after another run's.
const RUN_MARK: &str = "XTASK_TEST_RUN";

/// Processes of this workspace's service binaries that this run's tests started (they carry
/// its `mark`) and that are still running once they are over: what a test failed to stop.
/// They are killed.
fn leftover_services(ws: &Workspace, tests_started: u64, mark: &str) -> Vec<String> {
    let ours = format!("{RUN_MARK}={mark}");
    let binaries: Vec<std::path::PathBuf> = ["command-service", "query-service", "schema-registry"]
        .iter()
        .filter_map(|name| ws.binary(name).canonicalize().ok())
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Started by this run's tests (so never the registry it started itself), not by
        // another run or by hand.
        let marked = std::fs::read(entry.path().join("environ"))
            .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var == ours.as_bytes()));
        if !marked {
            continue;
        }
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        if !binaries.contains(&exe) || process_start_ticks(pid).is_none_or(|t| t < tests_started) {
            continue;
        }
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        found.push(format!("{} (pid {pid})", name.unwrap_or_default()));
    }
    found
}

/// Whether `cargo test` arguments select packages themselves (`-p`, `--package`).
fn picks_packages(args: &[String]) -> bool {
    args.iter().any(|a| {
        a == "-p"
            || a == "--package"
            || a.starts_with("--package=")
            || (a.starts_with("-p") && a.len() > 2)
    })
}

/// Sums of libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    fn add_line(&mut self, line: &str) {
        let Some(result) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in result.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u64>()
            {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// After a failure the scratch directory is kept so the broker and registry logs can be read.
fn show_logs_hint(logs: &Path, kept: &Path) {
    eprintln!(
        "tests failed; broker and registry logs kept in {} (scratch dir {})",
        logs.display(),
        kept.display()
    );
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn results_add_up() {
        let mut totals = TestTotals::default();
        totals.add_line("test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        totals.add_line("test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.14s");
        totals.add_line("running 3 tests");
        assert_eq!(
            totals,
            TestTotals {
                passed: 13,
                failed: 1
            }
        );
    }

    #[test]
    fn package_selection_is_recognised() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(super::picks_packages(&args(&["-p", "query-service"])));
        assert!(super::picks_packages(&args(&["--package=shared-events"])));
        assert!(!super::picks_packages(&args(&["--no-run"])));
    }
}

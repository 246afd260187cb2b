//! `cargo xtask chaos`: each fault an operator meets, injected under load from the command's own
//! clients into a stack of release binaries, each in a process of its own. Every scenario
//! prints one row: the fault, the load, the requests that failed and over how long, and the
//! acknowledged orders lost or written twice, which an independent read-committed consumer
//! looks for in the log afterwards. A command with figures, like the benchmarks, not a test.

mod load;
mod proxy;
mod stack;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use self::load::{Load, Requests, Seen};
use self::stack::{ADMIN_TOKEN, Stack};
use crate::workspace::Workspace;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ChaosArgs {
    /// Run only the scenarios named (repeatable); every scenario by default.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Concurrent clients of each load.
    #[arg(long, default_value_t = 8)]
    clients: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// kill -9 of one of three query replicas; reads sent to the other two.
    ReplicaKill,
    /// SIGTERM and restart of each of three replicas in turn; reads sent to the other two.
    RollingRestart,
    /// SIGSTOP of a replica for 15 s, then SIGCONT; reads sent to the other two.
    ReplicaStop,
    /// kill -9 of the command service, started again at once; orders placed throughout.
    CommandKill,
    /// SIGSTOP of the command service for 10 s, then SIGCONT; orders placed throughout.
    CommandStop,
    /// kill -9 of the broker, started again 10 s later; orders placed throughout.
    BrokerKill,
    /// The schema registry down for 30 s; orders placed and read throughout.
    RegistryDown,
    /// kill -9 of the leader of a partition in a three-node cluster; orders placed throughout.
    LeaderKill,
    /// 200 ms added each way between the services and Kafka for 10 s, then every connection
    /// dropped three times; orders placed and read throughout.
    Network,
}

const ALL: [Scenario; 9] = [
    Scenario::ReplicaKill,
    Scenario::RollingRestart,
    Scenario::ReplicaStop,
    Scenario::CommandKill,
    Scenario::CommandStop,
    Scenario::BrokerKill,
    Scenario::RegistryDown,
    Scenario::LeaderKill,
    Scenario::Network,
];

/// One row of the table.
struct Row {
    fault: String,
    load: String,
    seen: Seen,
    /// Acknowledged orders not in the log, and those in it more than once; None for reads.
    lost_and_twice: Option<(usize, usize)>,
    note: String,
}

impl Row {
    fn print(&self) {
        let window = self
            .seen
            .window()
            .map_or_else(|| "—".to_owned(), |w| format!("{:.1} s", w.as_secs_f64()));
        let (lost, twice) = self.lost_and_twice.map_or_else(
            || ("—".to_owned(), "—".to_owned()),
            |(l, t)| (l.to_string(), t.to_string()),
        );
        let slowest = self
            .seen
            .slowest_failure()
            .map_or_else(|| "—".to_owned(), |w| format!("{:.1} s", w.as_secs_f64()));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.fault,
            self.load,
            self.seen.requests,
            self.seen.failures.len(),
            window,
            slowest,
            lost,
            twice,
            self.note
        );
    }
}

pub(crate) fn run(ws: &Workspace, args: &ChaosArgs) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    Stack::build(ws)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let mut rows = Vec::new();
    let single: Vec<Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| !matches!(s, Scenario::LeaderKill | Scenario::Network))
        .collect();
    if !single.is_empty() {
        let mut stack = Stack::start(ws, 1)?;
        for (n, scenario) in single.into_iter().enumerate() {
            eprintln!("--- {scenario:?}");
            let topic = format!("chaos-{n}-{}", std::process::id());
            let row = run_scenario(&runtime, &mut stack, scenario, &topic, args.clients);
            stack.clear();
            match row {
                Ok(mut found) => rows.append(&mut found),
                Err(error) => eprintln!("{scenario:?} did not run to its end: {error:#}"),
            }
        }
    }
    if scenarios.contains(&Scenario::LeaderKill) {
        eprintln!("--- LeaderKill");
        let mut stack = Stack::start(ws, 3)?;
        let topic = format!("chaos-leader-{}", std::process::id());
        match leader_kill(&runtime, &mut stack, &topic, args.clients) {
            Ok(row) => rows.push(row),
            Err(error) => eprintln!("LeaderKill did not run to its end: {error:#}"),
        }
    }
    if scenarios.contains(&Scenario::Network) {
        eprintln!("--- Network");
        let mut stack = Stack::start_with(ws, 1, true)?;
        let topic = format!("chaos-network-{}", std::process::id());
        match network(&runtime, &mut stack, &topic, args.clients) {
            Ok(mut found) => rows.append(&mut found),
            Err(error) => eprintln!("Network did not run to its end: {error:#}"),
        }
    }
    println!();
    println!(
        "| fault | load | requests | failed | failure window | slowest failure | acknowledged lost | acknowledged twice | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        row.print();
    }
    for row in &rows {
        if let Some(first) = row.seen.failures.first() {
            eprintln!("{}: first failure: {}", row.fault, first.what);
        }
    }
    Ok(())
}

fn run_scenario(
    runtime: &tokio::runtime::Runtime,
    stack: &mut Stack,
    scenario: Scenario,
    topic: &str,
    clients: usize,
) -> anyhow::Result<Vec<Row>> {
    match scenario {
        Scenario::ReplicaKill => replica_fault(runtime, stack, topic, clients, ReplicaFault::Kill),
        Scenario::RollingRestart => {
            replica_fault(runtime, stack, topic, clients, ReplicaFault::Rolling)
        }
        Scenario::ReplicaStop => replica_fault(runtime, stack, topic, clients, ReplicaFault::Stop),
        Scenario::CommandKill | Scenario::CommandStop | Scenario::BrokerKill => {
            command_fault(runtime, stack, topic, clients, scenario).map(|row| vec![row])
        }
        Scenario::RegistryDown => registry_down(runtime, stack, topic, clients),
        Scenario::LeaderKill => leader_kill(runtime, stack, topic, clients).map(|row| vec![row]),
        Scenario::Network => network(runtime, stack, topic, clients),
    }
}

/// The services reach Kafka through a proxy: first slow, then cut.
fn network(
    runtime: &tokio::runtime::Runtime,
    stack: &mut Stack,
    topic: &str,
    clients: usize,
) -> anyhow::Result<Vec<Row>> {
    let proxied = stack
        .proxied
        .ok_or_else(|| anyhow::anyhow!("the stack has no proxied listener"))?;
    let proxy = runtime.block_on(proxy::Proxy::start(
        local_kafka::process::localhost(proxied.advertised_port),
        local_kafka::process::localhost(proxied.port),
    ))?;
    let command = stack.command_service("command", topic)?;
    let replica = stack.replica(REPLICAS[0], topic, &format!("{topic}-query"))?;
    let ids = Arc::new(runtime.block_on(place(&command, 60))?);
    runtime.block_on(wait_serving(std::slice::from_ref(&replica), &ids))?;
    let mut rows = Vec::new();
    let faults: [(&str, &dyn Fn()); 2] = [
        (
            "200 ms added each way between the services and Kafka for 10 s",
            &|| {
                proxy.set_latency(Duration::from_millis(200));
                std::thread::sleep(Duration::from_secs(10));
                proxy.set_latency(Duration::ZERO);
            },
        ),
        (
            "every Kafka connection of the services dropped, 3 times 2 s apart",
            &|| {
                for _ in 0..3 {
                    proxy.drop_connections();
                    std::thread::sleep(Duration::from_secs(2));
                }
            },
        ),
    ];
    for (fault, inject) in faults {
        let writes = Load::start(
            Requests::PlaceOrders,
            vec![command.clone()],
            clients / 2,
            Duration::from_millis(10),
        )?;
        let reads = Load::start(
            Requests::ReadOrders(Arc::clone(&ids)),
            vec![replica.clone()],
            clients / 2,
            Duration::from_millis(5),
        )?;
        std::thread::sleep(Duration::from_secs(3));
        inject();
        std::thread::sleep(Duration::from_secs(10));
        let (writes, reads) =
            runtime.block_on(async { (writes.finish().await, reads.finish().await) });
        let counts = log_counts(stack.bootstrap(), topic)?;
        rows.push(Row {
            fault: fault.into(),
            load: format!("{} clients POST /orders", clients / 2),
            lost_and_twice: Some(lost_and_twice(&writes.acknowledged, &counts)),
            seen: writes,
            note: String::new(),
        });
        rows.push(Row {
            fault: fault.into(),
            load: format!("{} clients GET /orders/{{id}}", clients / 2),
            seen: reads,
            lost_and_twice: None,
            note: String::new(),
        });
    }
    Ok(rows)
}

enum ReplicaFault {
    Kill,
    Rolling,
    Stop,
}

const REPLICAS: [&str; 3] = ["replica-1", "replica-2", "replica-3"];

/// Three replicas, orders placed, reads from the replicas not faulted.
fn replica_fault(
    runtime: &tokio::runtime::Runtime,
    stack: &mut Stack,
    topic: &str,
    clients: usize,
    fault: ReplicaFault,
) -> anyhow::Result<Vec<Row>> {
    let command = stack.command_service("command", topic)?;
    let group = format!("{topic}-query");
    let mut urls = Vec::new();
    for name in REPLICAS {
        urls.push(stack.replica(name, topic, &group)?);
    }
    let ids = Arc::new(runtime.block_on(place(&command, 120))?);
    runtime.block_on(wait_serving(&urls, &ids))?;
    let others = |i: usize| -> Vec<String> {
        urls.iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, u)| u.clone())
            .collect()
    };
    let load = Load::start(
        Requests::ReadOrders(Arc::clone(&ids)),
        others(0),
        clients,
        Duration::from_millis(5),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let (fault_name, note) = match fault {
        ReplicaFault::Kill => {
            stack.kill(REPLICAS[0])?;
            // The session timeout (10 s), the rebalance, the takeover, and after.
            std::thread::sleep(Duration::from_secs(20));
            ("kill -9 of 1 of 3 replicas", String::new())
        }
        ReplicaFault::Stop => {
            stack.signal(REPLICAS[0], "STOP")?;
            std::thread::sleep(Duration::from_secs(15));
            stack.signal(REPLICAS[0], "CONT")?;
            std::thread::sleep(Duration::from_secs(5));
            ("SIGSTOP of 1 of 3 replicas for 15 s", String::new())
        }
        ReplicaFault::Rolling => {
            let started = Instant::now();
            for (i, name) in REPLICAS.iter().enumerate() {
                load.aim_at(others(i));
                std::thread::sleep(Duration::from_millis(500));
                stack.terminate(name)?;
                stack.restart(name)?;
                runtime.block_on(wait_serving(&urls, &ids))?;
            }
            (
                "rolling restart of 3 replicas (SIGTERM, drained)",
                format!("took {:.1} s", started.elapsed().as_secs_f64()),
            )
        }
    };
    let seen = runtime.block_on(load.finish());
    Ok(vec![Row {
        fault: fault_name.into(),
        load: format!("{clients} clients GET /orders/{{id}}, survivors only"),
        seen,
        lost_and_twice: None,
        note,
    }])
}

/// One command service, orders placed throughout; the fault is the command service's or the
/// broker's.
fn command_fault(
    runtime: &tokio::runtime::Runtime,
    stack: &mut Stack,
    topic: &str,
    clients: usize,
    scenario: Scenario,
) -> anyhow::Result<Row> {
    let load = placing_orders(stack, topic, clients)?;
    let faulted = Instant::now();
    let fault = match scenario {
        Scenario::CommandKill => {
            stack.kill("command")?;
            stack.restart("command")?;
            "kill -9 of the command service, restarted at once"
        }
        Scenario::CommandStop => {
            stack.signal("command", "STOP")?;
            std::thread::sleep(Duration::from_secs(10));
            stack.signal("command", "CONT")?;
            "SIGSTOP of the command service for 10 s"
        }
        _ => {
            stack.brokers[0].kill();
            std::thread::sleep(Duration::from_secs(10));
            stack.brokers[0].restart()?;
            "kill -9 of the broker, restarted 10 s later"
        }
    };
    // Back: the service answers again, or the broker accepts clients again.
    let back = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let seen = runtime.block_on(load.finish());
    let counts = log_counts(stack.bootstrap(), topic)?;
    let note = match seen.first_success_after(back) {
        Some(after) => format!(
            "back after {:.1} s; first 2xx {:.1} s after",
            (back - faulted).as_secs_f64(),
            after.as_secs_f64()
        ),
        None => "no 2xx after it came back".into(),
    };
    Ok(Row {
        fault: fault.into(),
        load: format!("{clients} clients POST /orders"),
        lost_and_twice: Some(lost_and_twice(&seen.acknowledged, &counts)),
        seen,
        note,
    })
}

/// The registry down for 30 s while orders are placed and read.
fn registry_down(
    runtime: &tokio::runtime::Runtime,
    stack: &mut Stack,
    topic: &str,
    clients: usize,
) -> anyhow::Result<Vec<Row>> {
    let command = stack.command_service("command", topic)?;
    let replica = stack.replica(REPLICAS[0], topic, &format!("{topic}-query"))?;
    let ids = Arc::new(runtime.block_on(place(&command, 60))?);
    runtime.block_on(wait_serving(std::slice::from_ref(&replica), &ids))?;
    let writes = Load::start(
        Requests::PlaceOrders,
        vec![command],
        clients / 2,
        Duration::from_millis(10),
    )?;
    let reads = Load::start(
        Requests::ReadOrders(ids),
        vec![replica],
        clients / 2,
        Duration::from_millis(5),
    )?;
    std::thread::sleep(Duration::from_secs(3));
    stack.kill("schema-registry")?;
    std::thread::sleep(Duration::from_secs(30));
    stack.restart("schema-registry")?;
    std::thread::sleep(Duration::from_secs(5));
    let (writes, reads) = runtime.block_on(async { (writes.finish().await, reads.finish().await) });
    let counts = log_counts(stack.bootstrap(), topic)?;
    Ok(vec![
        Row {
            fault: "schema registry down for 30 s".into(),
            load: format!("{} clients POST /orders", clients / 2),
            lost_and_twice: Some(lost_and_twice(&writes.acknowledged, &counts)),
            seen: writes,
            note: String::new(),
        },
        Row {
            fault: "schema registry down for 30 s".into(),
            load: format!("{} clients GET /orders/{{id}}", clients / 2),
            seen: reads,
            lost_and_twice: None,
            note: String::new(),
        },
    ])
}

/// A three-node cluster: the leader of partition 0 killed while orders are placed.
fn leader_kill(
    runtime: &tokio::runtime::Runtime,
    stack: &mut Stack,
    topic: &str,
    clients: usize,
) -> anyhow::Result<Row> {
    let load = placing_orders(stack, topic, clients)?;
    let leader = partition_leader(stack.bootstrap(), topic, 0)?;
    let index = usize::try_from(leader - 1)?;
    anyhow::ensure!(index < stack.brokers.len(), "no node {leader}");
    let killed = Instant::now();
    stack.brokers[index].kill();
    std::thread::sleep(Duration::from_secs(20));
    let seen = runtime.block_on(load.finish());
    let survivors: Vec<String> = stack
        .brokers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, b)| b.bootstrap())
        .collect();
    let counts = log_counts(&survivors.join(","), topic)?;
    let note = seen
        .failures
        .iter()
        .map(|f| f.at)
        .max()
        .map_or_else(String::new, |last| {
            format!(
                "last failure {:.1} s after the kill",
                last.saturating_duration_since(killed).as_secs_f64()
            )
        });
    Ok(Row {
        fault: format!("kill -9 of node {leader}, leader of partition 0, of 3"),
        load: format!("{clients} clients POST /orders"),
        lost_and_twice: Some(lost_and_twice(&seen.acknowledged, &counts)),
        seen,
        note,
    })
}

/// A command service on `topic`, and `clients` placing orders on it for 3 s already.
fn placing_orders(stack: &mut Stack, topic: &str, clients: usize) -> anyhow::Result<Load> {
    let command = stack.command_service("command", topic)?;
    let load = Load::start(
        Requests::PlaceOrders,
        vec![command],
        clients,
        Duration::from_millis(10),
    )?;
    std::thread::sleep(Duration::from_secs(3));
    Ok(load)
}

/// Places `count` orders one by one; their ids.
async fn place(command: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let mut ids = Vec::new();
    while ids.len() < count {
        let response = http
            .post(format!("{command}/orders"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"customer_id":"chaos-{}","currency":"EUR","items":[{{"sku":"A-1","quantity":1,"unit_price_cents":100}}]}}"#,
                ids.len() % 7
            ))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "placing an order: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        ids.extend(body["order_id"].as_str().map(str::to_owned));
    }
    Ok(ids)
}

/// Waits until every replica answers every id and is ready, every partition is owned, and each
/// has a warm standby somewhere (when there are several replicas).
async fn wait_serving(urls: &[String], ids: &[String]) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    'again: loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replicas did not all serve within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut warm = 0;
        for url in urls {
            let ready = http.get(format!("{url}/health/ready")).send().await;
            if !ready.is_ok_and(|r| r.status() == 200) {
                continue 'again;
            }
            let Ok(view) = http
                .get(format!("{url}/admin/cluster"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
            else {
                continue 'again;
            };
            let view: Value = view.json().await.unwrap_or_default();
            let owners = view["replicas"].as_array().map_or(0, |r| {
                r.iter()
                    .filter(|m| m["partitions"].as_array().is_some_and(|p| !p.is_empty()))
                    .count()
            });
            if owners != urls.len() {
                continue 'again;
            }
            warm += view["this_replica"]["standbys"].as_array().map_or(0, |s| {
                s.iter().filter(|p| p["lag"].as_i64() == Some(0)).count()
            });
        }
        // One standby of each partition, somewhere.
        if urls.len() > 1 && warm < stack::PARTITIONS as usize {
            continue;
        }
        for url in urls {
            for id in ids {
                let answered = http.get(format!("{url}/orders/{id}")).send().await;
                if !answered.is_ok_and(|r| r.status() == 200) {
                    continue 'again;
                }
            }
        }
        return Ok(());
    }
}

/// How many times each key is in the topic, read to its end by a read-committed consumer in no
/// group: the log as any client sees it.
fn log_counts(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<String, u32>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "chaos-verify")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    // The ends asked read-uncommitted: a read-committed client is told the last stable offset,
    // which stops short of every committed record behind a transaction still open.
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..i32::try_from(partitions)? {
        let (_, high) = watermarks.fetch_watermarks(topic, p, timeout)?;
        ends.insert(p, high);
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut counts = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = consumer.position().is_ok_and(|positions| {
            ends.iter().all(|(p, end)| {
                *end == 0
                    || positions
                        .find_partition(topic, *p)
                        .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *end))
            })
        });
        if done {
            return Ok(counts);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the log of {topic} was not read to its end"
        );
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200))
            && let Some(key) = message.key()
        {
            *counts
                .entry(String::from_utf8_lossy(key).into_owned())
                .or_insert(0) += 1;
        }
    }
}

/// Acknowledged orders absent from the log, and those in it more than once.
fn lost_and_twice(acknowledged: &[String], counts: &HashMap<String, u32>) -> (usize, usize) {
    let lost = acknowledged
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count();
    let twice = acknowledged
        .iter()
        .filter(|id| counts.get(*id).is_some_and(|n| *n > 1))
        .count();
    (lost, twice)
}

/// The node leading a partition.
fn partition_leader(bootstrap: &str, topic: &str, partition: i32) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    metadata
        .topics()
        .first()
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .ok_or_else(|| anyhow::anyhow!("no leader of {topic}/{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_duplicated_orders_are_counted_from_the_log() {
        let counts: HashMap<String, u32> = [("a".into(), 1), ("b".into(), 2)].into();
        let acknowledged = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(lost_and_twice(&acknowledged, &counts), (1, 1));
        assert_eq!(lost_and_twice(&[], &counts), (0, 0));
    }
}

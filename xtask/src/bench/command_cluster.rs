//! `cargo xtask bench commands --instances N`: the same load spread over N command instances
//! sharing one topic set, a forwarded command's cost next to a local one's, and how long a
//! restart (with and without the data directory's snapshot) and a takeover after kill -9 take
//! at two history lengths.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;

use super::commands::ORDER;
use super::{ADMIN_TOKEN, BenchStack};
use crate::load;

/// How the cluster part is run.
pub(crate) struct Shape {
    pub(crate) instances: usize,
    pub(crate) concurrency: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    /// Aggregates each instance keeps in memory per topic.
    pub(crate) cache: usize,
    /// HTTP worker threads of each instance.
    pub(crate) http_workers: usize,
    /// Records in the log at the second history length.
    pub(crate) history: i64,
}

const TOPIC: &str = "bench-cluster";
const CUSTOMERS: &str = "bench-cluster-customers";
const PARTITIONS: i32 = 6;
/// Customers registered straight to the log before the instances start: the existing
/// aggregates that commands are sent to, more than a cache of the default size holds.
const REGISTERED: usize = 600_000;

fn id(n: usize) -> String {
    format!("bench-command-{}", n + 1)
}

/// Runs the cluster part on `stack`; returns the lines to print. `single` is the
/// single-instance maximum rate of the same run.
pub(crate) fn run(
    stack: &mut BenchStack,
    runtime: &tokio::runtime::Runtime,
    shape: &Shape,
    single: f64,
) -> anyhow::Result<Vec<String>> {
    let settings = |cache: usize| {
        let mut settings = vec![
            ("COMMAND_SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("COMMAND_CACHE_AGGREGATES", cache.to_string()),
            ("CUSTOMERS_TOPIC", CUSTOMERS.to_owned()),
        ];
        settings.push(("COMMAND_HTTP_WORKERS", shape.http_workers.to_string()));
        settings
    };
    stack.create_topic(CUSTOMERS, PARTITIONS.unsigned_abs())?;
    eprintln!("registering {REGISTERED} customers straight to the log ...");
    runtime.block_on(register(stack, REGISTERED))?;
    let mut urls = Vec::new();
    for n in 0..shape.instances {
        urls.push(stack.command_instance(TOPIC, &id(n), &settings(shape.cache))?);
    }
    let client = load::client(16)?;
    runtime.block_on(async {
        for url in &urls {
            ready(&client, url, Duration::from_secs(120)).await?;
        }
        settled(&client, &urls, Duration::from_secs(60)).await
    })?;

    let concurrency = shape.concurrency;
    let spread = spread_over(&urls, concurrency)?;
    eprintln!(
        "{} instances: warming up ({}s), then the spread load ({}s) ...",
        shape.instances,
        shape.warmup.as_secs(),
        shape.duration.as_secs()
    );
    let (spread_run, local, forwarded, existing) = runtime.block_on(async {
        load::run(concurrency, shape.warmup, None, Arc::clone(&spread)).await?;
        let spread_run = load::run(concurrency, shape.duration, None, Arc::clone(&spread)).await?;
        // Keyed orders sent to the first instance: a keyed order's id is placed in its key's
        // partition, so the key decides whether the first instance decides it or forwards it.
        let mine = owned(&client, &urls[0]).await?;
        eprintln!(
            "keyed orders the first instance decides itself ({}s) ...",
            shape.duration.as_secs()
        );
        let local = load::run(
            concurrency,
            shape.duration,
            None,
            keyed(&urls[0], "local", mine.clone(), true),
        )
        .await?;
        eprintln!(
            "keyed orders it forwards to their owner ({}s) ...",
            shape.duration.as_secs()
        );
        let forwarded = load::run(
            concurrency,
            shape.duration,
            None,
            keyed(&urls[0], "forwarded", mine, false),
        )
        .await?;
        // Commands on existing aggregates the first instance owns: all of them (more than its
        // cache holds: many are read from its data directory), then a few thousand of them.
        let mine = owned_of(&client, &urls[0], CUSTOMERS).await?;
        let ids: Vec<String> = (0..REGISTERED)
            .map(customer)
            .filter(|id| {
                mine.contains(&shared_events::partitioner::partition_for_key(
                    id.as_bytes(),
                    PARTITIONS,
                ))
            })
            .collect();
        let mut existing = Vec::new();
        for (what, count) in [("all", ids.len()), ("hot", 5_000.min(ids.len()))] {
            eprintln!(
                "email changes on {count} existing customers of the first instance ({}s) ...",
                shape.duration.as_secs()
            );
            let loads = "command_service_write_model_loads";
            let before = metric(&client, &urls[0], loads).await?;
            let requests = email_changes(&urls[0], Arc::new(ids[..count].to_vec()))?;
            let run = load::run(concurrency, shape.duration, None, requests).await?;
            let read = metric(&client, &urls[0], loads).await? - before;
            existing.push((what, count, run, read));
        }
        anyhow::Ok((spread_run, local, forwarded, existing))
    })?;

    let mut lines = vec![
        format!(
            "{} instances, spread     {}  ({} HTTP worker(s) each)",
            shape.instances,
            spread_run.summary(),
            shape.http_workers
        ),
        format!(
            "ratio to one instance       {:.3}  (target ≥ 0.85)",
            spread_run.rate() / single.max(1.0)
        ),
        format!("keyed, decided where asked {}", local.summary()),
        format!("keyed, forwarded once      {}", forwarded.summary()),
        format!(
            "forwarded cost              {:.2} × a local command's (rate ratio; target ≤ 2)",
            local.rate() / forwarded.rate().max(1.0)
        ),
    ];
    for (what, count, run, read) in existing {
        #[allow(clippy::cast_precision_loss)]
        let per_command = read / run.ok().max(1) as f64;
        lines.push(format!(
            "existing, {what} {count:>6}       {}  ({per_command:.2} read from the data directory per command; cache {} per topic)",
            run.summary(),
            shape.cache
        ));
    }

    // Restarts and takeovers of the last instance, at two history lengths.
    let victim = shape.instances - 1;
    let survivors: Vec<String> = urls[..victim].to_vec();
    // The victim's settings now: its data directory changes when it restarts without one.
    let mut current = settings(shape.cache);
    for step in 0..2 {
        if step == 1 {
            let spread = spread_over(&urls, concurrency)?;
            loop {
                let records = log_records(stack)?;
                if records >= shape.history {
                    break;
                }
                eprintln!(
                    "growing the history: {records} of {} records ...",
                    shape.history
                );
                let load = load::run(concurrency, 2 * shape.duration, None, Arc::clone(&spread));
                runtime.block_on(load)?;
            }
        }
        let history = log_records(stack)?;
        let rss = rss_mib(stack.pid_of(&id(0)));
        eprintln!("history of {history} records: restarts and a takeover ...");

        // Restart with its data directory.
        stack.kill(&id(victim));
        let started = Instant::now();
        let url = stack.command_instance(TOPIC, &id(victim), &current)?;
        runtime.block_on(ready(&client, &url, Duration::from_secs(600)))?;
        let with_snapshot = started.elapsed();
        let reread = runtime.block_on(metric(&client, &url, "command_service_restored_events"))?;

        // Restart from an empty data directory: every partition it owns read from the start.
        stack.kill(&id(victim));
        let fresh = stack.scratch().join(format!("{}-fresh-{step}", id(victim)));
        let mut empty = settings(shape.cache);
        empty.push(("COMMAND_DATA_DIR", fresh.display().to_string()));
        let started = Instant::now();
        let url = stack.command_instance(TOPIC, &id(victim), &empty)?;
        runtime.block_on(ready(&client, &url, Duration::from_secs(600)))?;
        let without_snapshot = started.elapsed();
        let read_all =
            runtime.block_on(metric(&client, &url, "command_service_restored_events"))?;

        // Takeover: the others own every partition again.
        stack.kill(&id(victim));
        let started = Instant::now();
        runtime.block_on(settled(&client, &survivors, Duration::from_secs(600)))?;
        let takeover = started.elapsed();
        current = empty;
        let url = stack.command_instance(TOPIC, &id(victim), &current)?;
        // A new process, on a new port.
        urls[victim].clone_from(&url);
        runtime.block_on(async {
            ready(&client, &url, Duration::from_secs(600)).await?;
            settled(&client, &urls, Duration::from_secs(600)).await?;
            // Its data directory holds what it read before the next restart is timed.
            let checkpoints = "command_service_checkpoints";
            let target = metric(&client, &url, checkpoints).await? + 2.0;
            let deadline = Instant::now() + Duration::from_secs(120);
            while metric(&client, &url, checkpoints).await? < target {
                anyhow::ensure!(Instant::now() < deadline, "no checkpoint within 120 s");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        })?;

        lines.push(format!(
            "history {history:>9} records  restart {:.1} s with snapshot ({reread:.0} events read again) · {:.1} s without ({read_all:.0} read) · takeover after kill -9 {:.1} s · RSS of instance 1 {rss}",
            with_snapshot.as_secs_f64(),
            without_snapshot.as_secs_f64(),
            takeover.as_secs_f64(),
        ));
    }
    Ok(lines)
}

/// The load spread over `urls`: each client sends to one instance, the clients spread evenly.
fn spread_over(urls: &[String], concurrency: usize) -> anyhow::Result<load::RequestFactory> {
    let requests: Vec<load::Request> = urls
        .iter()
        .map(|url| load::Request::post_json(&format!("{url}/orders"), ORDER))
        .collect::<anyhow::Result<_>>()?;
    let count = requests.len();
    Ok(Arc::new(move |n| {
        requests[usize::try_from(n).unwrap_or(0) % concurrency % count].clone()
    }))
}

/// Keyed orders to `url`, each key in one of `partitions` (`inside`) or outside them.
fn keyed(url: &str, tag: &'static str, partitions: Vec<i32>, inside: bool) -> load::RequestFactory {
    let url = format!("{url}/orders");
    Arc::new(move |n| {
        let mut attempt = 0u32;
        loop {
            let key = format!("bench-{tag}-{n}-{attempt}");
            let partition =
                shared_events::partitioner::partition_for_key(key.as_bytes(), PARTITIONS);
            if partitions.contains(&partition) == inside {
                // Built from a URL made above and a fixed body: only a malformed URL fails.
                if let Ok(request) =
                    load::Request::post_json_with(&url, ORDER, &[("idempotency-key", &key)])
                {
                    return request;
                }
            }
            attempt += 1;
        }
    })
}

/// Waits until `url` answers `/health/ready` with 200.
async fn ready(client: &reqwest::Client, url: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let status = client
            .get(format!("{url}/health/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.is_ok_and(|s| s == 200) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url} was not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The order partitions `url` owns.
async fn owned(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<i32>> {
    owned_of(client, url, TOPIC).await
}

/// The partitions of `topic` the instance at `url` owns.
async fn owned_of(client: &reqwest::Client, url: &str, topic: &str) -> anyhow::Result<Vec<i32>> {
    let body: Value = client
        .get(format!("{url}/admin/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let topics = body["this_instance"]["topics"]
        .as_array()
        .context("no topics in /admin/cluster")?;
    Ok(topics
        .iter()
        .find(|t| t["topic"] == topic)
        .and_then(|t| t["owned"].as_array())
        .map(|owned| {
            owned
                .iter()
                .filter_map(|p| p.as_i64().and_then(|p| i32::try_from(p).ok()))
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until the instances at `urls` own every order partition between them, each some.
async fn settled(
    client: &reqwest::Client,
    urls: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let mut all = Vec::new();
        let mut each = true;
        for url in urls {
            let mine = owned(client, url).await.unwrap_or_default();
            each &= !mine.is_empty();
            all.extend(mine);
        }
        all.sort_unstable();
        all.dedup();
        if each && all.len() == usize::try_from(PARTITIONS).unwrap_or(0) {
            // Let every instance's view of the group catch up before load relies on it.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the partitions were not owned by {urls:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric of `url`'s `/metrics`, summed over its label sets.
async fn metric(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Records in the order topic's log (events and transaction markers).
fn log_records(stack: &BenchStack) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap())
        .create()?;
    let mut total = 0;
    for partition in 0..PARTITIONS {
        total += consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))?
            .1;
    }
    Ok(total)
}

/// A process's resident memory, as `/proc` shows it.
fn rss_mib(pid: Option<u32>) -> String {
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or_else(|| "?".to_owned(), |kb| format!("{:.0} MiB", kb / 1024.0))
}

fn customer(n: usize) -> String {
    format!("c-{n:07}")
}

/// Email changes on customers picked from `ids` at random, each to a new address (the same
/// one again would be refused).
fn email_changes(url: &str, ids: Arc<Vec<String>>) -> anyhow::Result<load::RequestFactory> {
    let base = load::Request::get(url)?;
    Ok(Arc::new(move |n| {
        // A multiplicative hash of the request's number: spread over `ids`, no state shared.
        let pick = usize::try_from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20).unwrap_or(0);
        let id = &ids[pick % ids.len()];
        let body = format!(r#"{{"email":"e{n}@example.com"}}"#);
        base.post_json_here(&format!("/customers/{id}/email"), &body)
    }))
}

/// Writes `count` customer registrations straight to the customers topic, each in its id's
/// partition, as instances before these would have.
async fn register(stack: &BenchStack, count: usize) -> anyhow::Result<()> {
    use customers::events::{CustomerEvent, CustomerPayload};
    use futures::StreamExt;
    use rdkafka::producer::{FutureRecord, Producer};

    let (codec, producer) = stack.filler::<CustomerEvent>(CUSTOMERS)?;
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 0..count {
        let id = customer(n);
        let event = CustomerEvent {
            envelope: shared_events::Envelope {
                event_id: format!("{id}-1"),
                aggregate_id: id.clone(),
                aggregate_version: 1,
                occurred_at_ms: 1_735_689_600_000,
                command_id: format!("k-{id}"),
                idempotency_key: None,
                correlation_id: format!("r-{id}"),
            },
            payload: CustomerPayload::Registered {
                name: "Ada".into(),
                email: format!("{id}@example.com"),
            },
        };
        let value = codec.encode(&event).await?;
        let partition = shared_events::partitioner::partition_for_key(id.as_bytes(), PARTITIONS);
        let producer = producer.clone();
        pending.push(async move {
            let record = FutureRecord::to(CUSTOMERS)
                .key(&id)
                .payload(&value)
                .partition(partition);
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map(drop)
                .map_err(|(e, _)| e)
        });
        while pending.len() > 100_000 {
            if let Some(sent) = pending.next().await {
                sent?;
            }
        }
    }
    while let Some(sent) = pending.next().await {
        sent?;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

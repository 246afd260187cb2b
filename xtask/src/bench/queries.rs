//! `cargo xtask bench queries`: replica reads next to a static HTTP handler under the same load
//! tool, projection replay next to Kafka's own consumer benchmark on the same topic, and the
//! latency from a command's answer to the query side showing it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::Value;
use shared_events::partitioner::partition_for_key;

use super::commands::ORDER;
use super::{ADMIN_TOKEN, BenchStack, metric_value, orders_applied, static_server};
use crate::load::{self, LoadResult};
use crate::workspace::Workspace;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct QueryBench {
    /// Seconds of each measured read run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent HTTP clients (keep-alive connections).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Orders placed before the read runs.
    #[arg(long, default_value_t = 2_000)]
    orders: usize,
    /// Seconds of command load that fill the topic for the replay measurement.
    #[arg(long, default_value_t = 40)]
    fill_seconds: u64,
    /// Sequential command → query visibility samples.
    #[arg(long, default_value_t = 300)]
    samples: usize,
}

const TOPIC: &str = "bench-orders";
const PARTITIONS: i32 = 6;

/// Partition → base URL of its owner, from the group as a replica describes it.
async fn owners(
    client: &reqwest::Client,
    replica: &str,
) -> anyhow::Result<HashMap<i32, (String, String)>> {
    let cluster: Value = client
        .get(format!("{replica}/admin/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let mut owners = HashMap::new();
    for member in cluster["replicas"].as_array().into_iter().flatten() {
        for p in member["partitions"].as_array().into_iter().flatten() {
            let id = member["replica_id"].as_str().unwrap_or_default().to_owned();
            let url = member["url"].as_str().unwrap_or_default().to_owned();
            owners.insert(i32::try_from(p.as_i64().unwrap_or(-1))?, (id, url));
        }
    }
    Ok(owners)
}

async fn place(client: &reqwest::Client, command_url: &str) -> anyhow::Result<(String, String)> {
    let response = client
        .post(format!("{command_url}/orders"))
        .header("content-type", "application/json")
        .body(ORDER)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("placing an order answered {}", response.status());
    }
    let token = response
        .headers()
        .get("consistency-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await?;
    Ok((
        body["order_id"].as_str().unwrap_or_default().to_owned(),
        token,
    ))
}

fn get_many(ids: &[String], base: &str) -> anyhow::Result<load::RequestFactory> {
    let requests = ids
        .iter()
        .map(|id| load::Request::get(&format!("{base}/orders/{id}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(move |n| {
        requests[usize::try_from(n).unwrap_or(0) % requests.len()].clone()
    }))
}

/// `kafka-consumer-perf-test` over the whole topic: messages/s over the whole run (group join
/// included, as in our replay figure) and while fetching only.
pub(crate) fn consumer_perf_test(
    stack: &BenchStack,
    topic: &str,
    messages: u64,
) -> anyhow::Result<(f64, f64, String)> {
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), "isolation.level=read_committed\n")?;
    let output = Command::new("java")
        .args([
            "-Xmx512m",
            "-cp",
            &stack.runtime.classpath,
            "org.apache.kafka.tools.ConsumerPerformance",
        ])
        .args(["--bootstrap-server", &stack.broker.bootstrap()])
        .args(["--topic", topic])
        .args(["--messages", &messages.to_string()])
        .args(["--timeout", "60000"])
        .arg("--consumer.config")
        .arg(config.path())
        .output()
        .context("running kafka-consumer-perf-test")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // Header: start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    // rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    let Some(line) = text
        .lines()
        .rfind(|l| l.split(", ").count() >= 10 && !l.starts_with("start.time"))
    else {
        bail!(
            "kafka-consumer-perf-test printed no result:\n{text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let fields: Vec<&str> = line.split(", ").map(str::trim).collect();
    let whole_run: f64 = fields[5].parse().unwrap_or(0.0);
    let fetch_rate: f64 = fields[9].parse().unwrap_or(0.0);
    Ok((whole_run, fetch_rate, line.to_owned()))
}

pub(crate) fn run(ws: &Workspace, args: &QueryBench) -> anyhow::Result<()> {
    let mut stack = BenchStack::start(ws, &["command-service", "query-service"])?;
    let command_url = stack.command_service(TOPIC)?;
    let replica_a = stack.replica(TOPIC, "bench-query", "replica-a")?;
    // The second replica takes half the partitions: the reads through replica-a of its keys
    // are the forwarded ones.
    stack.replica(TOPIC, "bench-query", "replica-b")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = load::client(args.concurrency)?;
    let duration = Duration::from_secs(args.duration);

    // Seed orders, and learn which replica owns each.
    let (local_ids, forwarded_ids, body_size, owner_urls) = runtime.block_on(async {
        eprintln!("placing {} orders ...", args.orders);
        let mut placed = Vec::with_capacity(args.orders);
        for chunk in (0..args.orders)
            .collect::<Vec<_>>()
            .chunks(args.concurrency)
        {
            let answers =
                futures::future::join_all(chunk.iter().map(|_| place(&client, &command_url))).await;
            for answer in answers {
                placed.push(answer?);
            }
        }
        // Settled: each replica owns some partitions and has applied every order.
        let deadline = Instant::now() + Duration::from_secs(120);
        let owners = loop {
            let owners = owners(&client, &replica_a).await.unwrap_or_default();
            if owners.len() == usize::try_from(PARTITIONS)?
                && owners.values().any(|(id, _)| id == "replica-b")
            {
                break owners;
            }
            if Instant::now() > deadline {
                bail!("the replicas did not share the partitions: {owners:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut local = Vec::new();
        let mut forwarded = Vec::new();
        let mut body_size = 0;
        for (id, token) in &placed {
            let response = client
                .get(format!("{replica_a}/orders/{id}"))
                .header("consistency-token", token)
                .send()
                .await?;
            if response.status() != 200 {
                bail!("order {id} is not readable: {}", response.status());
            }
            let served_by = response
                .headers()
                .get("served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            body_size = response.bytes().await?.len();
            if served_by == "replica-a" {
                local.push(id.clone());
            } else {
                forwarded.push(id.clone());
            }
        }
        let owner_urls: HashMap<i32, String> =
            owners.into_iter().map(|(p, (_, url))| (p, url)).collect();
        anyhow::Ok((local, forwarded, body_size, owner_urls))
    })?;
    if local_ids.is_empty() || forwarded_ids.is_empty() {
        bail!("replica-a owns all or none of the orders; cannot measure both paths");
    }

    let (static_url, static_server) = static_server(200, vec![b'x'; body_size], 2, Duration::ZERO)?;
    let (baseline, local, forwarded) = runtime.block_on(async {
        let warm = Duration::from_secs(2);
        let local_req = get_many(&local_ids, &replica_a)?;
        let forwarded_req = get_many(&forwarded_ids, &replica_a)?;
        let static_req = load::repeat(load::Request::get(&format!("{static_url}/orders/x"))?);
        eprintln!(
            "reads: static baseline, local hits, forwarded misses ({}s each, {} clients) ...",
            args.duration, args.concurrency
        );
        load::run(args.concurrency, warm, None, Arc::clone(&static_req)).await?;
        let baseline = load::run(args.concurrency, duration, None, static_req).await?;
        load::run(args.concurrency, warm, None, Arc::clone(&local_req)).await?;
        let local = load::run(args.concurrency, duration, None, local_req).await?;
        load::run(args.concurrency, warm, None, Arc::clone(&forwarded_req)).await?;
        let forwarded = load::run(args.concurrency, duration, None, forwarded_req).await?;
        anyhow::Ok((baseline, local, forwarded))
    })?;
    runtime.block_on(static_server.stop(true));

    // Command → query visibility: place, then poll the owner (no token) until it shows the order.
    let visibility = runtime.block_on(async {
        eprintln!("command → query visibility ({} samples) ...", args.samples);
        let mut from_send = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut from_ack = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..args.samples {
            let sent = Instant::now();
            let (id, _) = place(&client, &command_url).await?;
            let acked = Instant::now();
            let owner = &owner_urls[&partition_for_key(id.as_bytes(), PARTITIONS)];
            let deadline = acked + Duration::from_secs(10);
            loop {
                let status = client
                    .get(format!("{owner}/orders/{id}"))
                    .send()
                    .await?
                    .status();
                if status == 200 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("order {id} never became visible");
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            let micros = |since: Instant| {
                u64::try_from(since.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1)
            };
            from_send.saturating_record(micros(sent));
            from_ack.saturating_record(micros(acked));
        }
        anyhow::Ok((from_send, from_ack))
    })?;

    // Replay: fill the topic, then project it from the beginning into an empty replica.
    let (replayed, replay_secs, join_secs, raw) = runtime
        .block_on(async {
            eprintln!(
                "filling the topic for the replay ({}s of command load) ...",
                args.fill_seconds
            );
            let url = format!("{command_url}/orders");
            let order = load::Request::post_json(&url, ORDER)?;
            let fill = load::repeat(order);
            load::run(64, Duration::from_secs(args.fill_seconds), None, fill).await?;
            anyhow::Ok(())
        })
        .and_then(|()| {
            // Every event in the topic is a command the command service answered 201.
            let total = runtime.block_on(async {
                let metrics = client
                    .get(format!("{command_url}/metrics"))
                    .send()
                    .await?
                    .text()
                    .await?;
                metric_value(
                    &metrics,
                    "command_service_commands_total{command=\"place\",status=\"201\",aggregate=\"order\"} ",
                )
                .context("the command service's metrics lack the count of placed orders")
            })?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let messages = total as u64;
            eprintln!("baseline: kafka-consumer-perf-test over the topic's {messages} events ...");
            let raw = consumer_perf_test(&stack, TOPIC, messages)?;
            eprintln!("replaying {total:.0} events into an empty replica ...");
            // Measured from the process start: start-up and group join are part of a rebuild.
            let started = Instant::now();
            let replay_url = stack.replica(TOPIC, "bench-replay", "replica-replay")?;
            let live_after = started.elapsed().as_secs_f64();
            runtime.block_on(async {
                let applied =
                    orders_applied(&client, &replay_url, total, Duration::from_secs(600)).await?;
                anyhow::Ok((applied, started.elapsed().as_secs_f64(), live_after, raw))
            })
        })?;
    let replay_rate = replayed / replay_secs.max(0.001);

    #[allow(clippy::cast_precision_loss)]
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let row = |name: &str, r: &LoadResult| println!("{name:<24}{}", r.summary());
    println!();
    println!(
        "== cargo xtask bench queries ({}s runs, {} clients, {body_size}-byte bodies, release build, 2 replicas, {PARTITIONS} partitions)",
        args.duration, args.concurrency
    );
    row("static handler", &baseline);
    row("replica, local hits", &local);
    row("replica, forwarded", &forwarded);
    println!(
        "local / static           {:.3}  (target ≥ 0.8)",
        local.rate() / baseline.rate().max(1.0)
    );
    println!(
        "forwarded / static       {:.3}  (target ≥ 0.4)",
        forwarded.rate() / baseline.rate().max(1.0)
    );
    println!(
        "replay into empty store  {replay_rate:>9.0} events/s ({replayed:.0} events in {replay_secs:.2} s from process start; live after {join_secs:.2} s)"
    );
    println!(
        "raw consume (perf-test)  {:>9.0} events/s over its run (join included), {:.0} events/s while fetching",
        raw.0, raw.1
    );
    println!(
        "replay / raw consume     {:.3} over the run (target ≥ 0.3); {:.3} against fetching alone",
        replay_rate / raw.0.max(1.0),
        replay_rate / raw.1.max(1.0)
    );
    println!(
        "visibility, from send    p50 {:.2} ms  p99 {:.2} ms   from the 201: p50 {:.2} ms  p99 {:.2} ms  ({} samples)",
        ms(&visibility.0, 0.5),
        ms(&visibility.0, 0.99),
        ms(&visibility.1, 0.5),
        ms(&visibility.1, 0.99),
        args.samples
    );
    println!("perf-test (consumer):    {}", raw.2);
    Ok(())
}

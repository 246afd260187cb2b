//! `cargo xtask bench live`: many concurrent live streams on one replica while commands run at
//! a fixed rate. Reports command-ack → client-received latency against GET visibility in the
//! same run, the replica's memory per open stream, and its CPU per pushed event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::Value;

use super::cpu::CpuMeter;
use super::{BenchStack, metric_value};
use crate::workspace::Workspace;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LiveBench {
    /// Streams open at once, half on orders, half on customers.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Commands per second while the streams are open.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds of command load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// GET visibility samples, taken in the same run.
    #[arg(long, default_value_t = 200)]
    samples: usize,
}

const TOPIC: &str = "bench-live";

/// When each awaited event reached its stream, by order id and event type.
type Arrivals = Arc<Mutex<HashMap<(String, String), Instant>>>;

fn body(customer: &str) -> String {
    format!(
        r#"{{"customer_id":"{customer}","currency":"EUR","items":[{{"sku":"A-1","quantity":1,"unit_price_cents":1250}}]}}"#
    )
}

async fn place(
    client: &reqwest::Client,
    command_url: &str,
    customer: String,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{command_url}/orders"))
        .header("content-type", "application/json")
        .body(body(&customer))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("placing an order: {}", response.status());
    }
    let answer: Value = response.json().await?;
    answer["order_id"]
        .as_str()
        .map(str::to_owned)
        .context("no order_id")
}

async fn pay(client: &reqwest::Client, command_url: &str, order: &str) -> anyhow::Result<()> {
    let response = client
        .post(format!("{command_url}/orders/{order}/payment"))
        .header("content-type", "application/json")
        .body(r#"{"amount_cents":1250,"payment_ref":"bench"}"#)
        .send()
        .await?;
    if response.status() != 200 {
        bail!("paying order {order}: {}", response.status());
    }
    Ok(())
}

/// Follows one stream until the end of the run, noting when each event arrives. Says once it
/// is open (or could not be opened).
async fn follow(
    client: reqwest::Client,
    url: String,
    arrivals: Arrivals,
    opened: tokio::sync::mpsc::Sender<Result<(), String>>,
) {
    let response = client
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await;
    let mut response = match response {
        Ok(response) if response.status() == 200 => {
            let _ = opened.send(Ok(())).await;
            response
        }
        Ok(response) => {
            let _ = opened
                .send(Err(format!("{url}: {}", response.status())))
                .await;
            return;
        }
        Err(error) => {
            let _ = opened.send(Err(format!("{url}: {error:?}"))).await;
            return;
        }
    };
    drop(opened);
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let now = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = (None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_owned());
                }
            }
            if let (Some(event), Some(data)) = (event, data)
                && let Ok(data) = serde_json::from_str::<Value>(&data)
                && let Some(id) = data["aggregate_id"].as_str()
                && let Ok(mut arrivals) = arrivals.lock()
            {
                arrivals.entry((id.to_owned(), event)).or_insert(now);
            }
        }
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

pub(crate) fn run(ws: &Workspace, args: &LiveBench) -> anyhow::Result<()> {
    let mut stack = BenchStack::start(ws, &["command-service", "query-service"])?;
    let command_url = stack.command_service(TOPIC)?;
    let replica = stack.replica_with(
        TOPIC,
        "bench-live",
        "replica-live",
        &[("QUERY_MAX_CONNECTIONS", (args.streams + 1_000).to_string())],
    )?;
    let pid = stack.pid_of("replica-live").context("no replica pid")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = crate::load::client(64)?;
    let half = args.streams / 2;

    let orders: Vec<String> = runtime.block_on(async {
        eprintln!("placing {half} orders to follow ...");
        let mut orders = Vec::with_capacity(half);
        for chunk in (0..half).collect::<Vec<_>>().chunks(64) {
            let placed = futures::future::join_all(
                chunk
                    .iter()
                    .map(|i| place(&client, &command_url, format!("c-seed-{i}"))),
            )
            .await;
            for order in placed {
                orders.push(order?);
            }
        }
        // Ready: the replica has applied them (its tail too, checked through a stream below).
        let deadline = Instant::now() + Duration::from_secs(120);
        while client
            .get(format!("{replica}/health/ready"))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            if Instant::now() > deadline {
                bail!("the replica did not get ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(orders)
    })?;

    let rss_before = rss_kib(pid)?;
    let arrivals: Arrivals = Arc::default();
    let open_started = Instant::now();
    let streams = runtime.block_on(async {
        eprintln!("opening {} streams ...", args.streams);
        // One connection per stream (no pooling: a stream holds its connection for good).
        let streams_client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .build()?;
        let mut tasks = Vec::with_capacity(args.streams);
        let urls: Vec<String> = orders
            .iter()
            .enumerate()
            .flat_map(|(i, order)| {
                [
                    format!("{replica}/orders/{order}/events"),
                    format!("{replica}/customers/c-live-{i}/events"),
                ]
            })
            .collect();
        // In waves, as a fleet of browsers would arrive, rather than 10 000 SYNs at once.
        for wave in urls.chunks(500) {
            let (opened, mut answers) = tokio::sync::mpsc::channel(wave.len());
            for url in wave {
                tasks.push(tokio::spawn(follow(
                    streams_client.clone(),
                    url.clone(),
                    Arc::clone(&arrivals),
                    opened.clone(),
                )));
            }
            drop(opened);
            while let Some(answer) = tokio::time::timeout(Duration::from_secs(60), answers.recv())
                .await
                .context("a stream did not open within 60 s")?
            {
                if let Err(error) = answer {
                    bail!("a stream did not open: {error}");
                }
            }
        }
        anyhow::Ok(tasks)
    })?;
    let open_secs = open_started.elapsed().as_secs_f64();
    // Let allocations settle before measuring the idle streams.
    std::thread::sleep(Duration::from_secs(3));
    let rss_open = rss_kib(pid)?;

    let meter = CpuMeter::new(vec![("replica".into(), pid)]);
    let pushed_before = pushed(&runtime, &client, &replica)?;
    eprintln!(
        "commands at {}/s for {}s with the streams open: new orders of followed customers, payments of followed orders ...",
        args.rate, args.duration
    );
    let (cpu_streaming, sent) = runtime.block_on(command_phase(
        &meter,
        &client,
        &command_url,
        &orders[..half / 2],
        "c-live",
        args,
    ))?;
    // Closing the streams, then the same load again: the replica's CPU without them.
    for task in streams {
        task.abort();
    }
    let pushed_after = pushed(&runtime, &client, &replica)?;
    let (stream_latency, awaited) = {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let arrivals = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut missing = 0;
        for (key, acked) in &sent {
            match arrivals.get(key) {
                Some(arrived) => latency.saturating_record(
                    u64::try_from(arrived.saturating_duration_since(*acked).as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                ),
                None => missing += 1,
            }
        }
        if missing > 0 {
            bail!(
                "{missing} of {} acknowledged events never reached their stream",
                sent.len()
            );
        }
        (latency, sent.len())
    };
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("the same commands with no stream open (baseline) ...");
    let (cpu_baseline, _) = runtime.block_on(command_phase(
        &meter,
        &client,
        &command_url,
        &orders[half / 2..],
        "c-base",
        args,
    ))?;

    let visibility = runtime.block_on(async {
        eprintln!("GET visibility ({} samples) ...", args.samples);
        let mut from_ack = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for _ in 0..args.samples {
            let id = place(&client, &command_url, "c-visibility".into()).await?;
            let acked = Instant::now();
            let deadline = acked + Duration::from_secs(10);
            loop {
                let status = client
                    .get(format!("{replica}/orders/{id}"))
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
            from_ack.saturating_record(
                u64::try_from(acked.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        }
        anyhow::Ok(from_ack)
    })?;

    #[allow(clippy::cast_precision_loss)]
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let per_stream = (rss_open.saturating_sub(rss_before)) as f64 / args.streams as f64;
    let events = pushed_after - pushed_before;
    let cores = |phase: &(f64, f64)| phase.0;
    let extra_cpu_seconds = cpu_streaming.0 * cpu_streaming.1 - cpu_baseline.0 * cpu_baseline.1;
    println!();
    println!(
        "== cargo xtask bench live ({} streams on one replica, half orders half customers, {} commands/s for {}s, release build)",
        args.streams, args.rate, args.duration
    );
    println!(
        "streams opened             {} in {open_secs:.1} s",
        args.streams
    );
    println!(
        "replica RSS                {rss_before} KiB before, {rss_open} KiB with the streams open: {per_stream:.1} KiB per idle stream (target ≤ 20)"
    );
    println!(
        "ack → received (stream)    p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({awaited} events)",
        ms(&stream_latency, 0.5),
        ms(&stream_latency, 0.99),
        ms(&stream_latency, 1.0)
    );
    println!(
        "ack → visible (GET)        p50 {:.2} ms  p99 {:.2} ms  ({} samples)",
        ms(&visibility, 0.5),
        ms(&visibility, 0.99),
        args.samples
    );
    println!(
        "stream p99 - GET p99       {:+.2} ms (target ≤ +5)",
        ms(&stream_latency, 0.99) - ms(&visibility, 0.99)
    );
    let per_event = if events > 0.0 {
        extra_cpu_seconds * 1e6 / events
    } else {
        0.0
    };
    println!(
        "replica CPU                {:.3} cores with the streams open, {:.3} cores without (same commands): {per_event:.1} µs more per pushed event ({events:.0} pushed)",
        cores(&cpu_streaming),
        cores(&cpu_baseline)
    );
    Ok(())
}

fn pushed(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    replica: &str,
) -> anyhow::Result<f64> {
    runtime.block_on(async {
        let metrics = client
            .get(format!("{replica}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        metric_value(&metrics, "query_service_live_events_pushed_total ")
            .context("no live_events_pushed metric")
    })
}

/// Commands at `args.rate` for `args.duration`: new orders of customers `<prefix>-<k>` and
/// payments of `orders`, alternately. The replica's CPU over the phase (cores, seconds), and
/// each acknowledged event with the moment its answer arrived.
async fn command_phase(
    meter: &CpuMeter,
    client: &reqwest::Client,
    command_url: &str,
    orders: &[String],
    prefix: &str,
    args: &LiveBench,
) -> anyhow::Result<((f64, f64), Vec<((String, String), Instant)>)> {
    use futures::StreamExt;
    let total = args.rate * args.duration;
    if (orders.len() as u64) < total / 2 {
        bail!(
            "{} orders cannot take {} payments: open more streams or lower the rate",
            orders.len(),
            total / 2
        );
    }
    let started = Instant::now();
    let before = meter.sample()?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 0..total {
        tick.tick().await;
        let index = usize::try_from(n / 2)?;
        let (client, command_url) = (client.clone(), command_url.to_owned());
        let order = orders[index].clone();
        let customer = format!("{prefix}-{index}");
        pending.push(tokio::spawn(async move {
            if n % 2 == 0 {
                let id = place(&client, &command_url, customer).await?;
                anyhow::Ok(((id, "OrderPlaced".to_owned()), Instant::now()))
            } else {
                pay(&client, &command_url, &order).await?;
                anyhow::Ok(((order, "OrderPaid".to_owned()), Instant::now()))
            }
        }));
    }
    let mut sent = Vec::new();
    while let Some(result) = pending.next().await {
        sent.push(result??);
    }
    // What the commands cause on the replica ends shortly after their answers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = meter.between(&before, &meter.sample()?);
    let cores = cpu.by_process.first().map_or(0.0, |(_, cores)| *cores);
    Ok(((cores, started.elapsed().as_secs_f64()), sent))
}

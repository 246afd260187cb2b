//! `cargo xtask bench commands`: the command service's throughput and latency next to Kafka's
//! own producer benchmark on the same broker, in the same run.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::cpu::{CpuMeter, CpuUse};
use super::{BenchStack, histogram_quantile_between, metric_value, number_before, static_server};
use crate::load;
use crate::workspace::Workspace;

pub(crate) const ORDER: &str = r#"{"customer_id":"c-bench","currency":"EUR","items":[{"sku":"A-1","quantity":2,"unit_price_cents":1250},{"sku":"B-2","quantity":1,"unit_price_cents":990}]}"#;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CommandBench {
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Concurrent HTTP clients (keep-alive connections). Each waits for its commit, so the rate
    /// is at most clients / latency: 1024 clients leave a fifth of this 2-core box idle, 1536
    /// saturate it; more only add latency (and CPU per request: each open connection costs the
    /// HTTP workers and the load generator).
    #[arg(long, default_value_t = 1536)]
    concurrency: usize,
    /// Seconds of load before measuring. The broker's JIT compiler works for the first ~20 s of
    /// transactional load, and its produce path costs twice as much CPU per record until about
    /// a minute in.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    /// Records per baseline run of `kafka-producer-perf-test`. Its producer starts cold, in a
    /// fresh JVM, and the summary covers the whole run: 500 000 records (~2.5 s) measured
    /// 160–227 k records/s, mostly the JIT compiler's warm-up; 3 million (~10 s) measure what
    /// the warmed producer does, as our figure does after its own warm-up.
    #[arg(long, default_value_t = 3_000_000)]
    baseline_records: u64,
    /// Also run the load over this many command instances sharing one topic set (with a data
    /// directory each), and time restarts and takeovers at two history lengths.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    instances: u16,
    /// Aggregates each of those instances keeps in memory per topic.
    #[arg(long, default_value_t = 200_000)]
    cache_aggregates: usize,
    /// HTTP worker threads of each of those instances. Default: their share of the cores (the
    /// single instance runs with the service's default, 2).
    #[arg(long)]
    instance_http_workers: Option<usize>,
    /// Records in the log at the second history length of the restarts and takeovers.
    #[arg(long, default_value_t = 3_000_000)]
    history: i64,
}

/// The size of one benchmark order's record value: magic byte, schema id, Avro body.
fn record_size() -> anyhow::Result<usize> {
    use orders::events::{Envelope, LineItem, OrderEvent, OrderPayload};
    use shared_events::{AvroEvent, AvroWriter};

    let uuid = "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".to_owned();
    let event = OrderEvent {
        envelope: Envelope {
            event_id: uuid.clone(),
            aggregate_id: uuid.clone(),
            aggregate_version: 1,
            occurred_at_ms: 1_795_000_000_000,
            command_id: uuid.clone(),
            idempotency_key: None,
            correlation_id: uuid,
        },
        payload: OrderPayload::Placed {
            customer_id: "c-bench".into(),
            currency: "EUR".into(),
            items: vec![
                LineItem {
                    sku: "A-1".into(),
                    quantity: 2,
                    unit_price_cents: 1250,
                },
                LineItem {
                    sku: "B-2".into(),
                    quantity: 1,
                    unit_price_cents: 990,
                },
            ],
            total_cents: 3490,
        },
    };
    let mut body = Vec::new();
    event.write_avro(&mut AvroWriter::new(&mut body));
    Ok(5 + body.len())
}

/// The summary line of `kafka-producer-perf-test`.
#[derive(Debug)]
struct PerfTest {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    line: String,
}

fn producer_perf_test(
    stack: &BenchStack,
    topic: &str,
    records: u64,
    size: usize,
    extra: &[String],
) -> anyhow::Result<PerfTest> {
    // The same shape as the command service's topic; the broker does not create topics itself.
    stack.create_topic(topic, 6)?;
    let output = Command::new("java")
        .args([
            "-Xmx512m",
            "-cp",
            &stack.runtime.classpath,
            "org.apache.kafka.tools.ProducerPerformance",
        ])
        .args(["--topic", topic])
        .args(["--num-records", &records.to_string()])
        .args(["--record-size", &size.to_string()])
        .args(["--throughput", "-1"])
        .args(extra)
        .arg("--command-property")
        .arg(format!("bootstrap.servers={}", stack.broker.bootstrap()))
        .args(["acks=all", "enable.idempotence=true"])
        .output()
        .context("running kafka-producer-perf-test")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(line) = text.lines().rfind(|l| l.contains("50th")) else {
        bail!(
            "kafka-producer-perf-test printed no summary:\n{text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    Ok(PerfTest {
        rate: number_before(line, " records/sec").unwrap_or(0.0),
        p50_ms: number_before(line, " ms 50th").unwrap_or(0.0),
        p99_ms: number_before(line, " ms 99th").unwrap_or(0.0),
        line: line.to_owned(),
    })
}

/// The HTTP floors the service is read against: a static handler answering at once, and one
/// answering after the service's median latency.
struct Floors {
    immediate: load::LoadResult,
    immediate_cpu: CpuUse,
    delayed: load::LoadResult,
    delayed_cpu: CpuUse,
}

pub(crate) fn run(ws: &Workspace, args: &CommandBench) -> anyhow::Result<()> {
    let mut stack = BenchStack::start(ws, &["command-service"])?;
    let command_url = stack.command_service("bench-orders")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let duration = Duration::from_secs(args.duration);
    let url = format!("{command_url}/orders");
    let order = load::Request::post_json(&url, ORDER)?;
    let request = load::repeat(order);
    let client = load::client(args.concurrency)?;
    let metrics_url = format!("{command_url}/metrics");

    // The HTTP floor: the same framework and worker count answering the same POST with a body
    // like ours, doing nothing else.
    let sample = runtime.block_on(async {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(ORDER)
            .send()
            .await?
            .bytes()
            .await
    })?;
    let (static_url, static_handle) = static_server(201, sample.to_vec(), 2, Duration::ZERO)?;
    let static_order = load::Request::post_json(&format!("{static_url}/orders"), ORDER)?;
    let static_request = load::repeat(static_order);

    let service_pid = stack
        .pid_of("command-service")
        .context("the command service is not running")?;
    let meter = CpuMeter::new(vec![
        ("command service".into(), service_pid),
        ("broker".into(), stack.broker.pid()),
        ("load generator".into(), std::process::id()),
    ]);
    let static_meter = CpuMeter::new(vec![(
        "load generator + static handler".into(),
        std::process::id(),
    )]);

    let (floors, max, max_cpu, paced, before, metrics) = runtime.block_on(async {
        eprintln!("HTTP floor: a static handler ({}s) ...", args.duration);
        load::run(
            args.concurrency,
            Duration::from_secs(2),
            None,
            Arc::clone(&static_request),
        )
        .await?;
        let cpu_before = static_meter.sample()?;
        let floor = load::run(args.concurrency, duration, None, static_request).await?;
        let floor_cpu = static_meter.between(&cpu_before, &static_meter.sample()?);
        static_handle.stop(true).await;

        eprintln!(
            "warming up the command service and the broker ({}s) ...",
            args.warmup
        );
        load::run(
            args.concurrency,
            Duration::from_secs(args.warmup),
            None,
            Arc::clone(&request),
        )
        .await?;
        eprintln!(
            "measuring the maximum rate ({}s, {} clients) ...",
            args.duration, args.concurrency
        );
        let before = client.get(&metrics_url).send().await?.text().await?;
        let cpu_before = meter.sample()?;
        let max = load::run(args.concurrency, duration, None, Arc::clone(&request)).await?;
        let max_cpu = meter.between(&cpu_before, &meter.sample()?);
        let metrics = client.get(&metrics_url).send().await?.text().await?;
        let target = max.rate() * 0.7;
        eprintln!("measuring latency at 70% of it ({target:.0} commands/s) ...");
        let paced = load::run(
            args.concurrency,
            duration,
            Some(target),
            Arc::clone(&request),
        )
        .await?;

        // The floor for answers as slow as ours: what HTTP alone costs when every request
        // waits the service's median latency before its answer.
        let delay = Duration::from_secs_f64(max.ms(0.5) / 1000.0);
        eprintln!(
            "HTTP floor at our latency: a static handler answering after {:.1} ms ({}s) ...",
            max.ms(0.5),
            args.duration
        );
        let (slow_url, slow_handle) = static_server(201, sample.to_vec(), 2, delay)?;
        let slow_request = load::repeat(load::Request::post_json(
            &format!("{slow_url}/orders"),
            ORDER,
        )?);
        load::run(
            args.concurrency,
            Duration::from_secs(2),
            None,
            Arc::clone(&slow_request),
        )
        .await?;
        let cpu_before = static_meter.sample()?;
        let slow = load::run(args.concurrency, duration, None, slow_request).await?;
        let slow_cpu = static_meter.between(&cpu_before, &static_meter.sample()?);
        slow_handle.stop(true).await;
        anyhow::Ok((
            Floors {
                immediate: floor,
                immediate_cpu: floor_cpu,
                delayed: slow,
                delayed_cpu: slow_cpu,
            },
            max,
            max_cpu,
            paced,
            before,
            metrics,
        ))
    })?;

    // Latencies inside the service over the maximum-rate run, in milliseconds.
    let during = |name: &str, quantile: f64| {
        histogram_quantile_between(&before, &metrics, name, quantile).unwrap_or(0.0) * 1000.0
    };
    let commit_p50 = during("command_service_commit_seconds", 0.50);
    let commit_p99 = during("command_service_commit_seconds", 0.99);
    let delta = |name: &str| {
        metric_value(&metrics, name).unwrap_or(0.0) - metric_value(&before, name).unwrap_or(0.0)
    };
    let batches = delta("command_service_batch_size_count ");
    let mean_batch = delta("command_service_batch_size_sum ") / batches.max(1.0);
    // The service's producer count (COMMAND_PRODUCER_WORKERS may be set for the benchmark).
    let producers = runtime
        .block_on(async {
            client
                .get(format!("{command_url}/health/ready"))
                .send()
                .await?
                .json::<serde_json::Value>()
                .await
        })
        .ok()
        .and_then(|ready| ready["live_producers"].as_f64())
        .unwrap_or(2.0)
        .max(1.0);
    // How often each producer committed during the maximum-rate run.
    let commit_interval_ms =
        (max.elapsed.as_secs_f64() * 1000.0 / (batches / producers).max(1.0)).max(1.0);
    let size = record_size()?;

    eprintln!("baseline: kafka-producer-perf-test, {size}-byte records, idempotent ...");
    let plain = producer_perf_test(
        &stack,
        "bench-baseline-plain",
        args.baseline_records,
        size,
        &[],
    )?;
    eprintln!("baseline: the same, transactional, a commit every {commit_interval_ms:.0} ms ...");
    let transactional = producer_perf_test(
        &stack,
        "bench-baseline-tx",
        args.baseline_records,
        size,
        &[
            "--transactional-id".into(),
            "bench-baseline".into(),
            "--transaction-duration-ms".into(),
            format!("{commit_interval_ms:.0}"),
        ],
    )?;

    let cluster = if args.instances > 1 {
        // The single instance's CPU goes to the cluster.
        stack.kill("command-service");
        super::command_cluster::run(
            &mut stack,
            &runtime,
            &super::command_cluster::Shape {
                instances: usize::from(args.instances),
                concurrency: args.concurrency,
                duration,
                warmup: Duration::from_secs(args.warmup / 2),
                cache: args.cache_aggregates,
                http_workers: args.instance_http_workers.unwrap_or_else(|| {
                    let cores = std::thread::available_parallelism().map_or(2, usize::from);
                    (cores / usize::from(args.instances)).max(1)
                }),
                history: args.history,
            },
            max.rate(),
        )?
    } else {
        Vec::new()
    };

    println!();
    println!(
        "== cargo xtask bench commands ({}s runs, {} clients, {size}-byte records, release build)",
        args.duration, args.concurrency
    );
    println!("static handler, same POST   {}", floors.immediate.summary());
    println!("static, answer after p50    {}", floors.delayed.summary());
    println!("command service, max rate   {}", max.summary());
    println!("command service, 70% rate   {}", paced.summary());
    println!(
        "commit latency              p50 {commit_p50:.2} ms  p99 {commit_p99:.2} ms  (begin → commit, per transaction)"
    );
    println!(
        "  of which                  send p50 {:.2} ms  p99 {:.2} ms (begin → every record acknowledged) · commit call p50 {:.2} ms  p99 {:.2} ms",
        during("command_service_send_seconds", 0.50),
        during("command_service_send_seconds", 0.99),
        during("command_service_end_seconds", 0.50),
        during("command_service_end_seconds", 0.99),
    );
    println!(
        "queue wait                  p50 {:.2} ms  p99 {:.2} ms  (submit → taken by a producer)",
        during("command_service_queue_wait_seconds", 0.50),
        during("command_service_queue_wait_seconds", 0.99),
    );
    println!(
        "mean batch size             {mean_batch:.1} commands per transaction ({batches:.0} transactions, a commit every {commit_interval_ms:.1} ms per producer)"
    );
    println!(
        "baseline, idempotent        {:>9.0} records/s  p50 {:.0} ms  p99 {:.0} ms",
        plain.rate, plain.p50_ms, plain.p99_ms
    );
    println!(
        "baseline, transactional     {:>9.0} records/s  p50 {:.0} ms  p99 {:.0} ms",
        transactional.rate, transactional.p50_ms, transactional.p99_ms
    );
    println!(
        "ratio to idempotent         {:.3}  (target ≥ 0.3)",
        max.rate() / plain.rate.max(1.0)
    );
    println!(
        "ratio to transactional      {:.3}",
        max.rate() / transactional.rate.max(1.0)
    );
    println!(
        "ratio to static HTTP        {:.3} · to static HTTP answering after our p50: {:.3}",
        max.rate() / floors.immediate.rate().max(1.0),
        max.rate() / floors.delayed.rate().max(1.0)
    );
    println!(
        "cpu, max-rate run           {}",
        max_cpu.summary(max.rate(), "command")
    );
    println!(
        "cpu, static handler run     {}",
        floors
            .immediate_cpu
            .summary(floors.immediate.rate(), "request")
    );
    println!(
        "cpu, static after p50 run   {}",
        floors.delayed_cpu.summary(floors.delayed.rate(), "request")
    );
    let bound = 2.0 * commit_p99 + 2.0;
    println!(
        "p99 at 70% of max           {:.2} ms vs 2 × commit p99 + 2 ms = {bound:.2} ms ({})",
        paced.ms(0.99),
        if paced.ms(0.99) <= bound {
            "within"
        } else {
            "over"
        }
    );
    for line in &cluster {
        println!("{line}");
    }
    println!("perf-test (idempotent):     {}", plain.line);
    println!("perf-test (transactional):  {}", transactional.line);
    Ok(())
}

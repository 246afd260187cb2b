//! `cargo xtask bench replay`: a topic of millions of order events, then
//! - `kafka-consumer-perf-test` over it (read-committed): the raw consume rate, the baseline;
//! - a replay into an empty replica (its orders projection from the beginning);
//! - the `monthly-orders` report over it, on that replica: the report rate;
//! - GET latency at a fixed rate on the same replica, without a report and during one;
//! - a shadow rebuild of the orders projection on that replica, GETs answering throughout: the
//!   rebuild rate, and every status the GETs got.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use orders::events::{Envelope, LineItem, OrderEvent, OrderPayload};
use rdkafka::producer::{FutureRecord, Producer};
use serde_json::{Value, json};

use super::{ADMIN_TOKEN, BenchStack, orders_applied};
use crate::load;
use crate::workspace::Workspace;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReplayBench {
    /// Events in the topic (orders placed, paid, shipped or cancelled, over 24 months).
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// GET requests per second during the latency phases.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of GET load without a report.
    #[arg(long, default_value_t = 15)]
    duration: u64,
}

const TOPIC: &str = "bench-replay";
const PARTITIONS: u32 = 6;
/// 2025-01-01T00:00:00Z.
const START_MS: i64 = 1_735_689_600_000;
const MONTH_MS: i64 = 30 * 86_400_000;

/// Order `n`'s events: placed, then paid (4 in 5), then shipped or cancelled (by turns).
fn order_events(n: u64) -> Vec<OrderEvent> {
    let id = format!("o-{n:08}");
    #[allow(clippy::cast_possible_wrap)]
    let at = START_MS + ((n as i64 * 7_919) % (24 * MONTH_MS / 1_000)) * 1_000;
    let envelope = |version: i64| Envelope {
        event_id: format!("{id}-{version}"),
        aggregate_id: id.clone(),
        aggregate_version: version,
        occurred_at_ms: at + version * 3_600_000,
        command_id: format!("k-{id}-{version}"),
        idempotency_key: None,
        correlation_id: format!("c-{id}"),
    };
    let mut events = vec![OrderEvent {
        envelope: envelope(1),
        payload: OrderPayload::Placed {
            customer_id: format!("c-{}", n % 200_000),
            currency: if n.is_multiple_of(3) { "USD" } else { "EUR" }.into(),
            items: vec![LineItem {
                sku: "A-1".into(),
                quantity: 1,
                unit_price_cents: 1_250,
            }],
            total_cents: 1_250,
        },
    }];
    if !n.is_multiple_of(5) {
        events.push(OrderEvent {
            envelope: envelope(2),
            payload: OrderPayload::Paid {
                amount_cents: 1_250,
                payment_ref: format!("p-{n}"),
            },
        });
        events.push(OrderEvent {
            envelope: envelope(3),
            payload: if n.is_multiple_of(2) {
                OrderPayload::Shipped {
                    carrier: "post".into(),
                    tracking_number: format!("t-{n}"),
                }
            } else {
                OrderPayload::Cancelled {
                    reason: "changed my mind".into(),
                }
            },
        });
    }
    events
}

/// Writes at least `events` order events straight to the topic, as fast as the broker takes
/// them (the command service's path is `bench commands`'s business); the count written.
async fn fill(stack: &BenchStack, events: u64) -> anyhow::Result<u64> {
    let (codec, producer) = stack.filler::<OrderEvent>(TOPIC)?;
    let mut written = 0u64;
    let mut n = 0u64;
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    while written < events {
        for event in order_events(n) {
            let value = codec.encode(&event).await?;
            let key = event.envelope.aggregate_id.clone();
            let producer = producer.clone();
            pending.push(async move {
                producer
                    .send(
                        FutureRecord::to(TOPIC).key(&key).payload(&value),
                        Duration::from_secs(60),
                    )
                    .await
                    .map(drop)
                    .map_err(|(e, _)| e)
            });
            written += 1;
        }
        n += 1;
        while pending.len() > 200_000 {
            if let Some(sent) = pending.next().await {
                sent?;
            }
        }
    }
    while let Some(sent) = pending.next().await {
        sent?;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(written)
}

async fn admin_json(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<Value> {
    let _ = http;
    let response = request.bearer_auth(ADMIN_TOKEN).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

/// Rebuilds the orders projection while GETs run at `rate`; (its status, the shadow's seconds,
/// the GETs' statuses, their worst p99 over 2 s slices in ms).
async fn rebuild(
    http: &reqwest::Client,
    replica: &str,
    gets: &load::RequestFactory,
    rate: Option<f64>,
) -> anyhow::Result<(Value, f64, std::collections::BTreeMap<u16, u64>, f64)> {
    let asked = admin_json(
        http,
        http.post(format!("{replica}/admin/projections/orders/rebuild")),
    )
    .await?;
    let generation = asked["rebuild"]["generation"].clone();
    let (mut statuses, mut worst_p99) = (std::collections::BTreeMap::new(), 0.0_f64);
    loop {
        let slice = load::run(16, Duration::from_secs(2), rate, Arc::clone(gets)).await?;
        for (status, count) in &slice.by_status {
            *statuses.entry(*status).or_insert(0) += count;
        }
        worst_p99 = worst_p99.max(slice.ms(0.99));
        let status = admin_json(
            http,
            http.get(format!("{replica}/admin/projections/orders")),
        )
        .await?;
        match status["rebuild"]["state"].as_str() {
            Some("done") if status["generation"] == generation => {
                let secs = status["rebuild"]["events_applied"].as_f64().unwrap_or(0.0)
                    / status["rebuild"]["events_per_second"]
                        .as_f64()
                        .unwrap_or(1.0)
                        .max(1.0);
                return Ok((status, secs, statuses, worst_p99));
            }
            Some("running" | "done") => {}
            _ => bail!("the rebuild did not finish: {status}"),
        }
    }
}

/// Runs a report to its end; (its status, seconds from submission to done).
async fn report(http: &reqwest::Client, replica: &str, name: &str) -> anyhow::Result<(Value, f64)> {
    let started = Instant::now();
    let submitted = admin_json(
        http,
        http.post(format!("{replica}/admin/reports"))
            .json(&json!({"report": name})),
    )
    .await?;
    let id = submitted["id"].as_str().context("no report id")?.to_owned();
    loop {
        let status = admin_json(http, http.get(format!("{replica}/admin/reports/{id}"))).await?;
        match status["state"].as_str() {
            Some("done") => return Ok((status, started.elapsed().as_secs_f64())),
            Some("queued" | "running") => {}
            _ => bail!("the report did not finish: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn run(ws: &Workspace, args: &ReplayBench) -> anyhow::Result<()> {
    let mut stack = BenchStack::start(ws, &["query-service"])?;
    stack.create_topic(TOPIC, PARTITIONS)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!("writing {} order events ...", args.events);
    let filling = Instant::now();
    let written = runtime.block_on(fill(&stack, args.events))?;
    let fill_secs = filling.elapsed().as_secs_f64();

    eprintln!("baseline: kafka-consumer-perf-test over {written} events ...");
    let raw = super::queries::consumer_perf_test(&stack, TOPIC, written)?;

    eprintln!("replaying {written} events into an empty replica ...");
    let started = Instant::now();
    let replica = stack.replica_with(
        TOPIC,
        "bench-replay",
        "replica-replay",
        &[("QUERY_REPORTS_TOPIC", format!("{TOPIC}-reports"))],
    )?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    #[allow(clippy::cast_precision_loss)]
    let total = written as f64;
    let replay_secs = runtime.block_on(async {
        orders_applied(&http, &replica, total, Duration::from_secs(1_800)).await?;
        anyhow::Ok(started.elapsed().as_secs_f64())
    })?;

    // GETs of orders the replica holds, at a fixed rate.
    let ids: Arc<Vec<String>> = Arc::new((0..10_000).map(|n| format!("o-{n:08}")).collect());
    let gets = {
        let ids = Arc::clone(&ids);
        let base = replica.clone();
        let requests: Vec<load::Request> = ids
            .iter()
            .map(|id| load::Request::get(&format!("{base}/orders/{id}")))
            .collect::<anyhow::Result<_>>()?;
        let requests = Arc::new(requests);
        let factory: load::RequestFactory = Arc::new(move |n| {
            let i = usize::try_from(n).unwrap_or(0) % requests.len();
            requests[i].clone()
        });
        factory
    };
    let duration = Duration::from_secs(args.duration);
    #[allow(clippy::cast_precision_loss)]
    let rate = Some(args.rate as f64);
    let (quiet, first, during, second) = runtime.block_on(async {
        eprintln!("GET latency at {} req/s without a report ...", args.rate);
        load::run(16, Duration::from_secs(2), rate, Arc::clone(&gets)).await?;
        let quiet = load::run(16, duration, rate, Arc::clone(&gets)).await?;
        eprintln!("the monthly-orders report alone ...");
        let first = report(&http, &replica, "monthly-orders").await?;
        eprintln!("GET latency at {} req/s during the report ...", args.rate);
        let report_run = report(&http, &replica, "monthly-orders");
        // As long as the report took alone.
        let load_run = load::run(
            16,
            Duration::from_secs_f64(first.1.max(2.0)),
            rate,
            Arc::clone(&gets),
        );
        let (second, during) = tokio::join!(report_run, load_run);
        anyhow::Ok((quiet, first, during?, second?))
    })?;
    eprintln!(
        "a shadow rebuild of the orders projection, GETs at {} req/s throughout ...",
        args.rate
    );
    let rebuilt = runtime.block_on(rebuild(&http, &replica, &gets, rate))?;

    let events_in = |status: &Value| status["events_total"].as_f64().unwrap_or(0.0);
    let report_rate = events_in(&first.0) / first.1.max(0.001);
    let second_rate = events_in(&second.0) / second.1.max(0.001);
    let replay_rate = total / replay_secs.max(0.001);
    println!();
    println!(
        "== cargo xtask bench replay ({written} events, {PARTITIONS} partitions, release build, one replica)"
    );
    #[allow(clippy::cast_precision_loss)]
    let fill_rate = written as f64 / fill_secs.max(0.001);
    println!("filled by a plain producer  {fill_rate:>9.0} events/s ({fill_secs:.1} s)");
    println!(
        "raw consume (perf-test)     {:>9.0} events/s over its run, {:.0} events/s while fetching",
        raw.0, raw.1
    );
    println!(
        "monthly-orders report       {report_rate:>9.0} events/s ({:.0} positions in {:.2} s from submission to done; {} events folded)",
        events_in(&first.0),
        first.1,
        first.0["result"]["events"]
    );
    println!(
        "report / raw consume        {:.3} over the run (target ≥ 0.5); {:.3} against fetching alone",
        report_rate / raw.0.max(1.0),
        report_rate / raw.1.max(1.0)
    );
    println!(
        "replay into an empty store  {replay_rate:>9.0} events/s ({replay_secs:.1} s from process start)"
    );
    println!(
        "replay / raw consume        {:.3} over the run",
        replay_rate / raw.0.max(1.0)
    );
    let rebuild_rate = rebuilt.0["rebuild"]["events_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    println!(
        "shadow rebuild              {rebuild_rate:>9.0} events/s ({} events applied in {:.1} s; {} handovers retried)",
        rebuilt.0["rebuild"]["events_applied"],
        rebuilt.1,
        rebuilt.0["rebuild"]["handovers_retried"]
    );
    println!(
        "rebuild / raw consume       {:.3} over the run (target ≥ 0.3)",
        rebuild_rate / raw.0.max(1.0)
    );
    println!(
        "GET, during the rebuild     statuses {:?}, worst p99 of a 2 s slice {:.2} ms",
        rebuilt.2, rebuilt.3
    );
    println!("GET, no report              {}", quiet.summary());
    println!(
        "GET, during a report        {} (the report ran at {second_rate:.0} events/s)",
        during.summary()
    );
    println!(
        "p99 during / without        {:.2} (target ≤ 1.5)",
        during.ms(0.99) / quiet.ms(0.99).max(0.001)
    );
    println!("perf-test (consumer):       {}", raw.2);
    println!(
        "identical results:          {}",
        first.0["result"] == second.0["result"]
    );
    Ok(())
}

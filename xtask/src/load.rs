//! An HTTP load generator for the benchmarks: keep-alive connections, fixed concurrency, either
//! as fast as the server answers (closed loop) or at a fixed rate (open loop, latency measured
//! from the intended send time so a stalled server cannot hide its stalls).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Builds request number `n`.
pub(crate) type RequestFactory =
    Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

#[derive(Debug, Clone)]
pub(crate) struct LoadResult {
    pub(crate) elapsed: Duration,
    pub(crate) by_status: BTreeMap<u16, u64>,
    pub(crate) failures: u64,
    /// Latency of successful (2xx) requests, in microseconds.
    pub(crate) latency: Histogram<u64>,
}

impl LoadResult {
    pub(crate) fn ok(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn rate(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile in milliseconds.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "{:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  statuses {:?}{}",
            self.rate(),
            self.ms(0.50),
            self.ms(0.99),
            self.ms(0.999),
            self.by_status,
            if self.failures > 0 {
                format!("  transport failures {}", self.failures)
            } else {
                String::new()
            }
        )
    }
}

/// Runs `concurrency` workers for `duration`; with `rate` (requests/s over all workers) each
/// worker paces itself, otherwise it sends as soon as the previous answer arrived.
pub(crate) async fn run(
    client: &reqwest::Client,
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    request: RequestFactory,
) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let end = start + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r.max(1.0)));
    let workers = (0..concurrency).map(|w| {
        let client = client.clone();
        let request = Arc::clone(&request);
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut by_status = BTreeMap::new();
            let mut failures = 0;
            // Stagger paced workers across one interval.
            let mut intended = start
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / concurrency as f64));
            let mut n = w as u64;
            loop {
                if interval.is_some() && intended > Instant::now() {
                    tokio::time::sleep_until(intended.into()).await;
                }
                let sent = if interval.is_some() {
                    intended
                } else {
                    Instant::now()
                };
                if sent >= end {
                    break;
                }
                match request(&client, n).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        // Read the body so the connection is reused.
                        let _ = response.bytes().await;
                        if (200..300).contains(&status) {
                            let micros =
                                u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            latency.saturating_record(micros.max(1));
                        }
                        *by_status.entry(status).or_insert(0u64) += 1;
                    }
                    Err(_) => failures += 1,
                }
                n += concurrency as u64;
                if let Some(interval) = interval {
                    intended += interval;
                }
            }
            anyhow::Ok((latency, by_status, failures))
        })
    });
    let mut total = LoadResult {
        elapsed: Duration::ZERO,
        by_status: BTreeMap::new(),
        failures: 0,
        latency: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    };
    for worker in futures::future::join_all(workers).await {
        let (latency, by_status, failures) = worker??;
        total.latency.add(latency)?;
        for (status, n) in by_status {
            *total.by_status.entry(status).or_insert(0) += n;
        }
        total.failures += failures;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// A keep-alive client for `concurrency` workers.
pub(crate) fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

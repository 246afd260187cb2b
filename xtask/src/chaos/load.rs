//! The scenarios' own clients: commands placing orders (each acknowledged order remembered, to
//! look for it in the log afterwards) and reads of those orders, each request's outcome
//! counted and every failure kept with its time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A failed request: when it was sent, when it ended, and what went wrong.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) sent: Instant,
    pub(crate) at: Instant,
    pub(crate) what: String,
}

/// What a load saw: requests, failures, and the orders it placed that were acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) requests: u64,
    pub(crate) failures: Vec<Failure>,
    pub(crate) acknowledged: Vec<String>,
    /// When each `2xx` came, for "first success after".
    pub(crate) successes: Vec<Instant>,
}

impl Seen {
    /// From the sending of the first request that failed to the end of the last one, if any
    /// failed: how long clients saw failures.
    pub(crate) fn window(&self) -> Option<Duration> {
        let first = self.failures.iter().map(|f| f.sent).min()?;
        let last = self.failures.iter().map(|f| f.at).max()?;
        Some(last - first)
    }

    /// The longest a failed request waited for its answer.
    pub(crate) fn slowest_failure(&self) -> Option<Duration> {
        self.failures.iter().map(|f| f.at - f.sent).max()
    }

    /// The first success at or after `instant`.
    pub(crate) fn first_success_after(&self, instant: Instant) -> Option<Duration> {
        self.successes
            .iter()
            .filter(|at| **at >= instant)
            .min()
            .map(|at| *at - instant)
    }
}

/// Clients running until [`Load::finish`].
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    seen: Arc<Mutex<Seen>>,
    targets: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a load's clients send.
#[derive(Debug, Clone)]
pub(crate) enum Requests {
    /// `POST /orders` to the first target, one order per request.
    PlaceOrders,
    /// `GET /orders/{id}` for these ids, in turn, to the targets in turn.
    ReadOrders(Arc<Vec<String>>),
}

const ORDER: &str = r#"{"customer_id":"chaos-customer","currency":"EUR","items":[{"sku":"A-1","quantity":1,"unit_price_cents":1250}]}"#;

impl Load {
    /// Starts `clients` clients, each pausing `pause` between its requests.
    pub(crate) fn start(
        requests: Requests,
        targets: Vec<String>,
        clients: usize,
        pause: Duration,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let targets = Arc::new(Mutex::new(targets));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(clients)
            .build()?;
        let tasks = (0..clients)
            .map(|client| {
                let (stop, counter, seen, targets, http, requests) = (
                    Arc::clone(&stop),
                    Arc::clone(&counter),
                    Arc::clone(&seen),
                    Arc::clone(&targets),
                    http.clone(),
                    requests.clone(),
                );
                tokio::spawn(async move {
                    let mut turn = client;
                    while !stop.load(Ordering::Relaxed) {
                        turn += 1;
                        let base = {
                            let targets = targets.lock().map(|t| t.clone()).unwrap_or_default();
                            match targets.len() {
                                0 => String::new(),
                                n => targets[turn % n].clone(),
                            }
                        };
                        let sent = Instant::now();
                        let outcome = send(&http, &requests, &base, turn).await;
                        counter.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut seen) = seen.lock() {
                            match outcome {
                                Ok(order) => {
                                    seen.successes.push(Instant::now());
                                    seen.acknowledged.extend(order);
                                }
                                Err(what) => seen.failures.push(Failure {
                                    sent,
                                    at: Instant::now(),
                                    what,
                                }),
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Ok(Self {
            stop,
            requests: counter,
            seen,
            targets,
            tasks,
        })
    }

    /// Sends the next requests to these targets (a load balancer draining one replica).
    pub(crate) fn aim_at(&self, targets: Vec<String>) {
        if let Ok(mut current) = self.targets.lock() {
            *current = targets;
        }
    }

    /// Stops the clients (each finishes its request in flight) and tells what they saw.
    pub(crate) async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut seen = self
            .seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        seen.requests = self.requests.load(Ordering::Relaxed);
        seen
    }
}

/// One request; the order it placed, if it placed one, or what went wrong.
async fn send(
    http: &reqwest::Client,
    requests: &Requests,
    base: &str,
    turn: usize,
) -> Result<Option<String>, String> {
    let (url, response) = match requests {
        Requests::PlaceOrders => {
            let url = format!("{base}/orders");
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .body(ORDER)
                .send()
                .await;
            (url, response)
        }
        Requests::ReadOrders(ids) => {
            let url = format!("{base}/orders/{}", ids[turn % ids.len().max(1)]);
            (url.clone(), http.get(&url).send().await)
        }
    };
    let response = response.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url}: {status} {body}"));
    }
    match requests {
        Requests::PlaceOrders => {
            let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
            Ok(body["order_id"].as_str().map(str::to_owned))
        }
        Requests::ReadOrders(_) => Ok(None),
    }
}

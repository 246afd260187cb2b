//! An HTTP load generator for the benchmarks: keep-alive connections, fixed concurrency, either
//! as fast as the server answers (closed loop) or at a fixed rate (open loop, latency measured
//! from the intended send time so a stalled server cannot hide its stalls).
//!
//! It speaks HTTP/1.1 over plain TCP itself, like `wrk`: each request is serialised once by its
//! factory and written whole, each response is parsed just enough to find its status and end.
//! A general client (reqwest/hyper) costs several times more CPU per request, and on a 2-core box
//! shared with the broker and the service that CPU would be taken from what is measured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on one request, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One serialised HTTP/1.1 request and the address it goes to.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    addr: SocketAddr,
    bytes: Arc<[u8]>,
}

impl Request {
    /// `GET url` (an `http://ip:port/path` URL).
    pub(crate) fn get(url: &str) -> anyhow::Result<Self> {
        Self::build("GET", url, None, &[])
    }

    /// `POST url` with a JSON body.
    pub(crate) fn post_json(url: &str, body: &str) -> anyhow::Result<Self> {
        Self::build("POST", url, Some(body), &[])
    }

    /// `POST url` with a JSON body and more headers.
    pub(crate) fn post_json_with(
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::build("POST", url, Some(body), headers)
    }

    fn build(
        method: &str,
        url: &str,
        json: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("not an http:// URL: {url}"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("the load generator needs ip:port, got {authority}"))?;
        let path = if path.is_empty() { "/" } else { path };
        Ok(Self::to(addr, method, path, json, headers))
    }

    /// `POST path` with a JSON body, to where this request goes.
    pub(crate) fn post_json_here(&self, path: &str, body: &str) -> Self {
        Self::to(self.addr, "POST", path, Some(body), &[])
    }

    fn to(
        addr: SocketAddr,
        method: &str,
        path: &str,
        json: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Self {
        let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = json {
            text.push_str("content-type: application/json\r\n");
            text.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        } else {
            text.push_str("\r\n");
        }
        Self {
            addr,
            bytes: text.into_bytes().into(),
        }
    }
}

/// Builds request number `n`.
pub(crate) type RequestFactory = Arc<dyn Fn(u64) -> Request + Send + Sync>;

/// The same request every time.
pub(crate) fn repeat(request: Request) -> RequestFactory {
    Arc::new(move |_| request.clone())
}

/// One keep-alive connection.
struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            buffer: Vec::with_capacity(8192),
        })
    }

    /// Sends a request and reads its whole response: the status, and whether the connection
    /// can be reused.
    async fn exchange(&mut self, request: &[u8]) -> anyhow::Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        self.buffer.clear();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let status = response.code.unwrap_or(0);
                let mut length = None;
                let mut keep_alive = response.version == Some(1);
                for header in response.headers.iter() {
                    if header.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(header.value)?
                            .trim()
                            .parse::<usize>()
                            .ok();
                    } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                        bail!("chunked responses are not supported by the load generator");
                    } else if header.name.eq_ignore_ascii_case("connection") {
                        keep_alive &= !header.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let Some(length) = length else {
                    bail!("a response without content-length");
                };
                while self.buffer.len() < head + length {
                    self.fill().await?;
                }
                if self.buffer.len() > head + length {
                    bail!("the server answered more than was asked");
                }
                return Ok((status, keep_alive));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buffer.capacity() - self.buffer.len() < 1024 {
            self.buffer.reserve(8192);
        }
        if self.stream.read_buf(&mut self.buffer).await? == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LoadResult {
    pub(crate) elapsed: Duration,
    pub(crate) by_status: BTreeMap<u16, u64>,
    pub(crate) failures: u64,
    /// Connections opened: one per client unless the server closed some.
    pub(crate) connects: u64,
    clients: u64,
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

    /// Connections opened beyond one per client.
    pub(crate) fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(self.clients)
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
        ) + &if self.reconnects() > 0 {
            format!("  reconnects {}", self.reconnects())
        } else {
            String::new()
        }
    }
}

/// Runs `concurrency` workers (one connection each) for `duration`; with `rate` (requests/s
/// over all workers) each worker paces itself, otherwise it sends as soon as the previous answer
/// arrived.
pub(crate) async fn run(
    concurrency: usize,
    duration: Duration,
    rate: Option<f64>,
    request: RequestFactory,
) -> anyhow::Result<LoadResult> {
    let opened = connect_all(concurrency, &request).await;
    let start = Instant::now();
    let end = start + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r.max(1.0)));
    let workers = opened.into_iter().enumerate().map(|(w, opened)| {
        let request = Arc::clone(&request);
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut by_status = BTreeMap::new();
            let mut failures = 0;
            let mut connects = u64::from(opened.is_some());
            let mut connection: Option<Connection> = opened;
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
                let next = request(n);
                let attempt = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    let reusable = connection.take().filter(|c| c.addr == next.addr);
                    let mut open = match reusable {
                        Some(open) => open,
                        None => {
                            connects += 1;
                            Connection::open(next.addr).await?
                        }
                    };
                    let (status, keep_alive) = open.exchange(&next.bytes).await?;
                    if keep_alive {
                        connection = Some(open);
                    }
                    anyhow::Ok(status)
                })
                .await;
                match attempt {
                    Ok(Ok(status)) => {
                        if (200..300).contains(&status) {
                            let micros =
                                u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            latency.saturating_record(micros.max(1));
                        }
                        *by_status.entry(status).or_insert(0u64) += 1;
                    }
                    // The connection is dropped; the next request opens a new one.
                    Ok(Err(_)) | Err(_) => failures += 1,
                }
                n += concurrency as u64;
                if let Some(interval) = interval {
                    intended += interval;
                }
            }
            anyhow::Ok((latency, by_status, failures, connects))
        })
    });
    let mut total = LoadResult {
        elapsed: Duration::ZERO,
        by_status: BTreeMap::new(),
        failures: 0,
        connects: 0,
        clients: concurrency as u64,
        latency: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    };
    for worker in futures::future::join_all(workers).await {
        let (latency, by_status, failures, connects) = worker??;
        total.connects += connects;
        total.latency.add(latency)?;
        for (status, n) in by_status {
            *total.by_status.entry(status).or_insert(0) += n;
        }
        total.failures += failures;
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Opens each worker's connection (to its first request's address) before the clock starts, a
/// few at a time; a worker whose connect failed connects again on its first request.
///
/// A run measures requests on open connections. Connecting lazily made its first second a
/// storm of `concurrency` simultaneous SYNs: they overflowed the server's listen backlog, and
/// each dropped one cost its client a 1 s SYN retransmission, counted as request latency (and
/// in a paced run, as the latency of every request that client sent late because of it).
async fn connect_all(concurrency: usize, request: &RequestFactory) -> Vec<Option<Connection>> {
    use futures::StreamExt;
    const AT_ONCE: usize = 64;
    let addrs: Vec<SocketAddr> = (0..concurrency as u64).map(|n| request(n).addr).collect();
    futures::stream::iter(addrs)
        .map(|addr| async move {
            tokio::time::timeout(REQUEST_TIMEOUT, Connection::open(addr))
                .await
                .ok()
                .and_then(Result::ok)
        })
        .buffered(AT_ONCE)
        .collect()
        .await
}

/// A general keep-alive client for what the benchmarks do besides load: setup, metrics.
pub(crate) fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Request;

    #[test]
    fn requests_are_serialised_once_with_their_length() {
        let request = Request::post_json("http://127.0.0.1:8080/orders", "{\"a\":1}").unwrap();
        assert_eq!(request.addr.port(), 8080);
        assert_eq!(
            std::str::from_utf8(&request.bytes).unwrap(),
            "POST /orders HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
        let get = Request::get("http://127.0.0.1:9/").unwrap();
        assert!(
            std::str::from_utf8(&get.bytes)
                .unwrap()
                .starts_with("GET / HTTP/1.1\r\n")
        );
        assert!(Request::get("http://localhost:9/").is_err());
    }
}

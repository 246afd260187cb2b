//! Sending a request on to the member that owns its key, once.
//!
//! A forwarded request carries [`FORWARDED_BY`] and is never forwarded again: that, and a member
//! never forwarding to itself, guard against the dead loop of stale metadata. The
//! [`Forwarder`] remembers for a few seconds the members it could not reach, so that callers
//! can pass them over (a query replica asks a standby instead) rather than wait for each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

use crate::membership::Member;

/// Marks a request that one member forwarded to another; its value is the sender's id.
pub const FORWARDED_BY: &str = "forwarded-by";

#[derive(Debug, thiserror::Error)]
#[error("forwarding to {replica} failed: {source}")]
pub struct ForwardError {
    pub replica: String,
    #[source]
    pub source: reqwest::Error,
}

/// Sends queries on to their owners over pooled keep-alive connections.
///
/// Each HTTP worker thread (its own runtime) gets its own client and connection pool: a pool
/// shared across runtimes hands connections and wake-ups from one thread to another.
#[derive(Debug, Clone)]
pub struct Forwarder {
    timeout: Duration,
    self_id: String,
    suspects: Arc<Suspects>,
}

/// Members a forward could not reach or timed out on, until when they are passed over where
/// another can answer instead: a hung owner costs one timeout, not one per request. Every forward
/// asks, so while nobody is suspect the answer is one load of a flag, never the lock.
#[derive(Debug, Default)]
struct Suspects {
    any: AtomicBool,
    until: RwLock<HashMap<String, Instant>>,
}

impl Suspects {
    fn contains(&self, replica: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && self.until.read().is_ok_and(|until| {
                until
                    .get(replica)
                    .is_some_and(|until| Instant::now() < *until)
            })
    }

    fn suspect(&self, replica: &str) {
        if let Ok(mut until) = self.until.write() {
            until.insert(replica.to_owned(), Instant::now() + SUSPECT_FOR);
            self.any.store(true, Ordering::Release);
        }
    }

    fn clear(&self, replica: &str) {
        if self.any.load(Ordering::Acquire)
            && let Ok(mut until) = self.until.write()
        {
            until.remove(replica);
            self.any.store(!until.is_empty(), Ordering::Release);
        }
    }
}

/// How long a member that could not be reached is passed over.
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

thread_local! {
    static CLIENT: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
}

impl Forwarder {
    pub fn new(self_id: &str, timeout: Duration) -> Self {
        Self {
            timeout,
            self_id: self_id.to_owned(),
            suspects: Arc::default(),
        }
    }

    /// Whether a forward to `member` failed to connect or timed out within [`SUSPECT_FOR`].
    pub fn is_suspect(&self, member: &Member) -> bool {
        self.suspects.contains(&member.replica_id)
    }

    fn note(&self, member: &Member, outcome: &Result<reqwest::Response, reqwest::Error>) {
        let unreachable = outcome
            .as_ref()
            .err()
            .is_some_and(|e| e.is_connect() || e.is_timeout());
        if unreachable {
            self.suspects.suspect(&member.replica_id);
        } else {
            self.suspects.clear(&member.replica_id);
        }
    }

    fn client() -> reqwest::Client {
        CLIENT.with(|client| {
            client
                .get_or_init(|| {
                    reqwest::Client::builder()
                        .pool_idle_timeout(Duration::from_secs(60))
                        .tcp_nodelay(true)
                        .build()
                        .unwrap_or_default()
                })
                .clone()
        })
    }

    /// GETs `path_and_query` from `member`, marked as forwarded, passing `headers` on.
    pub async fn get(
        &self,
        member: &Member,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, ForwardError> {
        let request = Self::client().get(format!(
            "{}{path_and_query}",
            member.url.trim_end_matches('/')
        ));
        self.send(member, request, headers).await
    }

    /// POSTs `body` to `path` at `member`, marked as forwarded, passing `headers` on.
    pub async fn post(
        &self,
        member: &Member,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response, ForwardError> {
        let request = Self::client()
            .post(format!("{}{path}", member.url.trim_end_matches('/')))
            .body(body);
        self.send(member, request, headers).await
    }

    async fn send(
        &self,
        member: &Member,
        mut request: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, ForwardError> {
        request = request
            .timeout(self.timeout)
            .header(FORWARDED_BY, &self.self_id);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let outcome = request.send().await;
        self.note(member, &outcome);
        outcome.map_err(|source| ForwardError {
            replica: member.replica_id.clone(),
            source,
        })
    }

    /// Relays the owner's answer as it is: status, body and its end-to-end headers, plus
    /// `Forwarded-To` naming the owner.
    pub async fn relay(
        &self,
        member: &Member,
        response: reqwest::Response,
    ) -> Result<HttpResponse, ForwardError> {
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut relayed = HttpResponse::build(status);
        for (name, value) in response.headers() {
            if HOP_BY_HOP.contains(&name.as_str()) {
                continue;
            }
            if let Ok(value) = value.to_str() {
                relayed.append_header((name.as_str(), value.to_owned()));
            }
        }
        relayed.insert_header(("Forwarded-To", member.replica_id.as_str()));
        let body = response.bytes().await.map_err(|source| ForwardError {
            replica: member.replica_id.clone(),
            source,
        })?;
        Ok(relayed.body(body))
    }
}

/// Headers of one connection, not of the answer (RFC 9110 §7.6.1), and those the relaying
/// server sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
    "date",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_suspect_until_it_answers_again() {
        let suspects = Suspects::default();
        assert!(!suspects.contains("b"));
        suspects.suspect("b");
        assert!(suspects.contains("b") && !suspects.contains("c"));
        suspects.clear("c");
        assert!(
            suspects.contains("b"),
            "another replica's answer clears nothing"
        );
        suspects.clear("b");
        assert!(!suspects.contains("b") && !suspects.any.load(Ordering::Acquire));
    }
}

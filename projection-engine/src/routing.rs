//! Where a key's query is answered: here if this replica owns the key's partition, otherwise
//! once at the owner (and, if the owner cannot answer, once at a standby: `query`). A forwarded
//! request carries `Forwarded-By` and is never forwarded again, and a replica never forwards to
//! itself: both guard against the dead loop of stale metadata. The [`Forwarder`] remembers for
//! a few seconds the replicas it could not reach, so that their standbys answer meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

use crate::cluster::{ClusterView, Member};
use crate::projection::PartitionTable;

/// Marks a request that one replica forwarded to another; its value is the sender's id.
pub const FORWARDED_BY: &str = "forwarded-by";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Forward(Member),
    /// Nobody can answer right now (rebalance, stale view); retry shortly.
    Unavailable(String),
}

/// Decides where the query for a key in `partition` is answered. The group's view is only
/// looked at for a key this replica does not own: most queries are answered here, and taking
/// the view is a lock and a reference count shared by every HTTP worker.
pub fn route<V: std::ops::Deref<Target = ClusterView>>(
    partition: i32,
    table: &PartitionTable,
    view: impl FnOnce() -> V,
    self_id: &str,
    forwarded: bool,
) -> Route {
    if table.owns(partition) {
        return Route::Local;
    }
    let view = view();
    if forwarded {
        return Route::Unavailable(format!(
            "partition {partition} is not owned by this replica (forwarded here from a stale view)"
        ));
    }
    match view.owner(partition) {
        Some(owner) if owner.replica_id != self_id => Route::Forward(owner.clone()),
        Some(_) => Route::Unavailable(format!(
            "partition {partition} is being reassigned (the group still lists this replica)"
        )),
        None => Route::Unavailable(format!(
            "partition {partition} has no owner right now (the group is rebalancing)"
        )),
    }
}

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

/// Replicas a forward could not reach or timed out on, until when they are passed over where a
/// standby can answer instead: a hung owner costs one timeout, not one per query. Every forward
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

/// How long a replica that could not be reached is passed over for a standby.
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
        let mut request = Self::client()
            .get(format!(
                "{}{path_and_query}",
                member.url.trim_end_matches('/')
            ))
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

    /// Relays the owner's answer as it is: status, body and the headers that matter.
    pub async fn relay(
        &self,
        member: &Member,
        response: reqwest::Response,
    ) -> Result<HttpResponse, ForwardError> {
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut relayed = HttpResponse::build(status);
        for name in [
            "content-type",
            "served-by",
            "retry-after",
            "standby-lag",
            "standby-position",
        ] {
            if let Some(value) = response.headers().get(name)
                && let Ok(value) = value.to_str()
            {
                relayed.insert_header((name, value.to_owned()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn view(owner_of_0: &str) -> ClusterView {
        ClusterView {
            group_state: "Stable".into(),
            members: vec![Member {
                replica_id: owner_of_0.into(),
                url: format!("http://{owner_of_0}"),
                partitions: vec![0],
            }],
            refreshed_at_ms: 0,
        }
    }

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

    #[test]
    fn never_forwards_twice_nor_to_itself() {
        let table = PartitionTable::new(2);
        assert!(
            matches!(route(0, &table, || Box::new(view("b")), "a", false), Route::Forward(m) if m.replica_id == "b")
        );
        assert!(matches!(
            route(0, &table, || Box::new(view("b")), "a", true),
            Route::Unavailable(_)
        ));
        assert!(matches!(
            route(0, &table, || Box::new(view("a")), "a", false),
            Route::Unavailable(_)
        ));
        assert!(matches!(
            route(1, &table, || Box::new(view("b")), "a", false),
            Route::Unavailable(_)
        ));
    }
}

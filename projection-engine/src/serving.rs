//! What a replica's queries read: the projections it runs, each once it has opened (its
//! topics exist and its consumer joined its group), and what every query handler shares.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shared_events::view::ReadModel;

use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::problem::QueryError;
use crate::projection::{PartitionTable, ProjectionStats};
use crate::routing::Forwarder;
use crate::store::{Namespace, Store, StoreViews};

/// One topic of an open projection: the partitions this replica holds and the group's view.
#[derive(Debug)]
pub struct ServedTopic {
    /// The collection its events belong to, as the read model names it (`orders`).
    pub role: &'static str,
    /// The topic's name.
    pub name: String,
    pub table: Arc<PartitionTable>,
    pub cluster: Arc<Cluster>,
}

/// An open projection, as queries see it.
#[derive(Debug)]
pub struct Served {
    pub group: String,
    pub topics: Vec<ServedTopic>,
}

impl Served {
    /// The topic the read model calls `role`.
    pub fn topic(&self, role: &str) -> Result<&ServedTopic, QueryError> {
        self.topics
            .iter()
            .find(|t| t.role == role)
            .ok_or_else(|| QueryError::Unavailable(format!("no `{role}` topic is configured")))
    }

    /// The topic named `name`, if this projection reads it.
    pub fn topic_named(&self, name: &str) -> Option<&ServedTopic> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Joined its group, as every topic's table says.
    pub fn joined(&self) -> bool {
        self.topics.iter().all(|t| t.table.joined())
    }
}

/// A projection this replica runs: its counters from the start, its serving state once open.
#[derive(Debug)]
pub struct Slot {
    pub namespace: Namespace,
    /// A replica is not ready until a required projection has opened; an optional one (whose
    /// topics may be created after the replica starts) counts once it has.
    pub required: bool,
    pub stats: Arc<ProjectionStats>,
    /// What its standby applied: partitions other replicas own, kept warm here.
    pub standby_stats: Arc<ProjectionStats>,
    /// Its rebuilds on this replica.
    pub rebuilds: Arc<crate::rebuild::Rebuilds>,
    served: OnceLock<Served>,
}

impl Slot {
    pub fn new<M: ReadModel>(required: bool) -> Self {
        Self {
            namespace: crate::projection::namespace::<M>(),
            required,
            stats: Arc::default(),
            standby_stats: Arc::default(),
            rebuilds: Arc::default(),
            served: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.namespace.name
    }

    pub fn served(&self) -> Option<&Served> {
        self.served.get()
    }

    /// Marks the projection open; once only.
    pub fn open(&self, served: Served) {
        if self.served.set(served).is_err() {
            tracing::error!(projection = self.name(), "a projection opened twice");
        }
    }
}

/// What every query and operations handler of a replica shares.
#[derive(Debug)]
pub struct Serving {
    pub store: Arc<Store>,
    pub projections: Vec<Arc<Slot>>,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    pub replica_id: String,
    /// Warm copies of each partition across the group (`standby`); 0 for none.
    pub standby_replicas: usize,
    /// How long a read waits for a `Consistency-Token`'s position.
    pub consistency_wait: Duration,
    /// Readiness: how many committed records an owned partition may lag.
    pub max_ready_lag: i64,
    /// Who may use the admin API.
    pub access: crate::access::Access,
    /// The reports this replica runs and shows, once they have started.
    pub reports: Arc<OnceLock<Arc<crate::report::scheduler::Scheduler>>>,
    /// The live streams' state, if this replica serves them.
    pub live: Option<Arc<crate::live::tail::Live>>,
}

impl Serving {
    /// The open projection of read model `M`, or a retryable `503` until it has opened.
    pub fn served<M: ReadModel>(&self) -> Result<&Served, QueryError> {
        let slot = self
            .projections
            .iter()
            .find(|slot| slot.name() == M::NAMESPACE)
            .ok_or_else(|| {
                QueryError::Unavailable(format!(
                    "this replica does not run the {} projection",
                    M::NAMESPACE
                ))
            })?;
        slot.served().ok_or_else(|| {
            QueryError::Unavailable(format!(
                "the {} projection has not started yet (do its topics exist?)",
                M::NAMESPACE
            ))
        })
    }

    /// The views of read model `M`.
    pub fn views<M: ReadModel>(&self) -> StoreViews<'_> {
        StoreViews::new(&self.store, crate::projection::namespace::<M>())
    }
}

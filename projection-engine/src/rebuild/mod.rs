//! Rebuilding a projection without a moment of downtime: the new generation of its namespace
//! is built beside the one that serves, then swapped in.
//!
//! A rebuild starts on `POST /admin/projections/{name}/rebuild` ([`routes`]), or by itself when
//! the store holds another version's views ([`Reason::VersionChanged`]).
//!
//! - A shadow ([`shadow`]) reads every partition of the projection's topics from the beginning,
//!   with readers of its own (one per core, each an assigned read-committed consumer, not in
//!   the serving group), into a new generation ([`crate::store::Store::begin`]). Meanwhile the old generation serves: the
//!   runner goes on applying to it, unless it was written by another version (then the runner
//!   is *held*: it applies nothing, its owned partitions paused, and misses answer a retryable
//!   `503` since its views are stale).
//! - Once the shadow has reached the end of the log it saw, the handover ([`Handover`]): the
//!   runner, between two batches, *freezes* (applies nothing) and tells the shadow how far it
//!   has applied each partition it owns. The shadow reads at least that far, then asks for the
//!   *switch*: the runner activates the new generation (one store write), goes on from where
//!   the shadow stopped, and thaws. A freeze lasts at most [`FREEZE_LIMIT`]; a shadow that
//!   cannot finish in time thaws the runner and tries again.
//! - The old generation is dropped [`RETIRE_AFTER`] later, once no query can still be reading
//!   it. A rebuild cut short (a crash, a failure) leaves the old generation serving; its half
//!   is dropped at once, or at the next start. A held runner tries again [`RETRY_AFTER`] later.
//!
//! Invariant: every event reaches the serving generation exactly once. The new generation
//! holds every record the old one had applied of an owned partition (the freeze), and the
//! runner applies only what comes after the shadow's position (its floor).

pub mod routes;
pub mod shadow;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::ClientConfig;
use serde::Serialize;
use shared_events::view::ReadModel;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::StateLabel;
use crate::opening::{MakeDecoder, ProjectionThread};
use crate::store::{Generation, Namespace, Store};

/// The longest a runner stays frozen for a handover.
pub const FREEZE_LIMIT: Duration = Duration::from_secs(10);
/// How long a held runner waits before it tries a failed rebuild again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long a replaced generation is kept for the queries that may still read it.
pub const RETIRE_AFTER: Duration = Duration::from_secs(10);

/// How far each partition (topic, partition) is applied: its next offset.
pub type Positions = HashMap<(String, i32), i64>;

/// What the shadow asks of the runner, and the runner answers.
#[derive(Debug)]
pub enum Handover {
    /// Stop applying, and say how far each owned partition is applied.
    Freeze { reply: oneshot::Sender<Positions> },
    /// The new generation holds all the runner applied: make it serve, going on from `next`.
    Switch {
        generation: Generation,
        next: Positions,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The shadow could not catch up in time: apply again.
    Thaw,
}

/// Why a rebuild runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// An admin asked for it.
    Requested,
    /// The store held another version of the projection.
    VersionChanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    Running,
    Done,
    Failed,
}

/// A projection's latest rebuild on this replica.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RebuildStatus {
    pub state: RebuildState,
    pub reason: Reason,
    /// The generation being built, or built.
    pub generation: u32,
    /// RFC 3339.
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Events the shadow applied.
    pub events_applied: u64,
    /// Offsets read, and to read to reach the end of the log the shadow last saw (transaction
    /// markers count).
    pub offsets_read: i64,
    pub offsets_total: i64,
    pub percent: f64,
    pub events_per_second: f64,
    /// Handovers that found the runner ahead and were tried again.
    pub handovers_retried: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RebuildStatus {
    fn started(reason: Reason, generation: u32) -> Self {
        Self {
            state: RebuildState::Running,
            reason,
            generation,
            started_at: rfc3339(SystemTime::now()),
            finished_at: None,
            events_applied: 0,
            offsets_read: 0,
            offsets_total: 0,
            percent: 0.0,
            events_per_second: 0.0,
            handovers_retried: 0,
            error: None,
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// What a replica shows of one projection's rebuilds, and how an admin asks for one.
#[derive(Debug, Default)]
pub struct Rebuilds {
    requested: Notify,
    latest: Mutex<Option<RebuildStatus>>,
    /// 1 while a rebuild runs (a metric).
    pub rebuilding: Gauge,
    /// Rebuilds that ended, by state (a metric).
    pub finished: Family<StateLabel, Counter>,
}

/// What a request for a rebuild found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Started,
    AlreadyRunning,
}

impl Rebuilds {
    /// Asks the runner for a rebuild, unless one runs.
    pub fn request(&self) -> Requested {
        if self.running() {
            return Requested::AlreadyRunning;
        }
        // One waiter, the runner; a stored permit is taken when it next looks.
        self.requested.notify_one();
        Requested::Started
    }

    pub fn running(&self) -> bool {
        self.latest()
            .is_some_and(|s| s.state == RebuildState::Running)
    }

    pub fn latest(&self) -> Option<RebuildStatus> {
        self.latest.lock().ok().and_then(|latest| latest.clone())
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut RebuildStatus)) {
        if let Ok(mut latest) = self.latest.lock()
            && let Some(status) = latest.as_mut()
        {
            change(status);
        }
    }

    fn set(&self, status: RebuildStatus) {
        self.rebuilding
            .set(i64::from(status.state == RebuildState::Running));
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(status);
        }
    }

    pub(crate) fn finish(&self, outcome: Result<(), String>) {
        let state = if outcome.is_ok() { "done" } else { "failed" };
        self.finished.get_or_create(&StateLabel { state }).inc();
        self.rebuilding.set(0);
        self.update(|status| {
            status.finished_at = Some(rfc3339(SystemTime::now()));
            match outcome {
                Ok(()) => {
                    status.state = RebuildState::Done;
                    status.percent = 100.0;
                }
                Err(error) => {
                    status.state = RebuildState::Failed;
                    status.error = Some(error);
                }
            }
        });
    }
}

/// How a runner starts a shadow of its projection.
pub struct ShadowPlan<P, D> {
    pub model: P,
    pub decoder: MakeDecoder<D>,
    pub store: Arc<Store>,
    pub namespace: Namespace,
    /// The consumer's settings besides the engine's own (security, timeouts).
    pub consumer: ClientConfig,
    /// The group id the shadow's consumer carries; it never joins it.
    pub group: String,
    /// Each topic and its partition count.
    pub topics: Vec<(String, i32)>,
    pub max_events_per_second: Option<u64>,
    pub kafka_timeout: Duration,
}

impl<P, D> std::fmt::Debug for ShadowPlan<P, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowPlan")
            .field("namespace", &self.namespace)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// What wakes a runner besides its records.
#[derive(Debug)]
pub enum Step {
    Start(Reason),
    Handover(Handover),
    /// A replaced generation may be dropped.
    Retire,
}

/// A runner's side of its rebuilds: it starts shadows, hears their handovers, and drops the
/// generations they replaced.
pub struct Rebuilder<P, D> {
    rebuilds: Arc<Rebuilds>,
    plan: ShadowPlan<P, D>,
    sender: mpsc::Sender<Handover>,
    handovers: mpsc::Receiver<Handover>,
    shadow: Option<ProjectionThread>,
    retired: Option<(Generation, Instant)>,
    held: bool,
    /// When a held runner tries its failed rebuild again.
    retry_at: Option<Instant>,
}

impl<P, D> std::fmt::Debug for Rebuilder<P, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuilder")
            .field("plan", &self.plan)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl<P: ReadModel + Clone, D: crate::projection::Decoder<P::Event>> Rebuilder<P, D> {
    pub fn new(rebuilds: Arc<Rebuilds>, plan: ShadowPlan<P, D>) -> Self {
        let (sender, handovers) = mpsc::channel(4);
        Self {
            held: !plan.store.is_current(plan.namespace),
            rebuilds,
            plan,
            sender,
            handovers,
            shadow: None,
            retired: None,
            retry_at: None,
        }
    }

    /// Whether the serving generation was written by another version: nothing is applied
    /// to it.
    pub fn held(&self) -> bool {
        self.held
    }

    pub fn timeout(&self) -> Duration {
        self.plan.kafka_timeout
    }

    /// The next thing to do besides records. Cancel-safe.
    pub async fn next(&mut self) -> Step {
        // Held, the views are stale until a rebuild succeeds: a failed one is tried again.
        if self.held
            && self.retry_at.is_none()
            && self
                .shadow
                .as_ref()
                .is_none_or(ProjectionThread::is_finished)
        {
            self.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
        let (retire, retry) = (self.retired.map(|(_, at)| at), self.retry_at);
        tokio::select! {
            () = self.rebuilds.requested.notified() => Step::Start(Reason::Requested),
            Some(handover) = self.handovers.recv() => Step::Handover(handover),
            () = sleep_until(retire) => Step::Retire,
            () = sleep_until(retry) => Step::Start(Reason::VersionChanged),
        }
    }

    /// Starts a shadow, unless one runs.
    pub fn start(&mut self, reason: Reason) {
        self.retry_at = None;
        if let Some(shadow) = &self.shadow
            && !shadow.is_finished()
        {
            return;
        }
        if let Some(mut finished) = self.shadow.take() {
            finished.join();
        }
        let generation = match self.plan.store.begin(self.plan.namespace) {
            Ok(generation) => generation,
            Err(error) => {
                tracing::error!(%error, projection = self.plan.namespace.name, "a rebuild could not start");
                self.rebuilds.set(RebuildStatus::started(reason, 0));
                self.rebuilds.finish(Err(error.to_string()));
                return;
            }
        };
        self.rebuilds
            .set(RebuildStatus::started(reason, generation.number));
        tracing::info!(
            projection = self.plan.namespace.name,
            generation = generation.number,
            ?reason,
            "rebuilding the projection beside the one that serves"
        );
        let shadow = shadow::Shadow {
            model: self.plan.model.clone(),
            decoder: Arc::clone(&self.plan.decoder),
            store: Arc::clone(&self.plan.store),
            generation,
            consumer: self.plan.consumer.clone(),
            group: self.plan.group.clone(),
            topics: self.plan.topics.clone(),
            max_events_per_second: self.plan.max_events_per_second,
            kafka_timeout: self.plan.kafka_timeout,
            handover: self.sender.clone(),
            rebuilds: Arc::clone(&self.rebuilds),
        };
        match shadow::spawn(shadow) {
            Ok(thread) => self.shadow = Some(thread),
            Err(error) => {
                self.rebuilds.finish(Err(error.to_string()));
                if let Err(error) = self.plan.store.discard(generation) {
                    tracing::warn!(%error, "could not drop a rebuild's generation");
                }
            }
        }
    }

    /// Frozen: waits for the shadow's next word (at most [`FREEZE_LIMIT`]); none if it did not
    /// come, or the replica stops.
    pub async fn frozen(&mut self, shutdown: &CancellationToken) -> Option<Handover> {
        tokio::select! {
            () = shutdown.cancelled() => None,
            handover = tokio::time::timeout(FREEZE_LIMIT, self.handovers.recv()) => {
                handover.ok().flatten()
            }
        }
    }

    /// The new generation serves: the old one is dropped once no query can be on it.
    pub fn switched(&mut self, previous: Generation) {
        self.held = false;
        if let Some((earlier, _)) = self.retired.take() {
            self.discard(earlier);
        }
        self.retired = Some((previous, Instant::now() + RETIRE_AFTER));
    }

    pub fn retire(&mut self) {
        if let Some((generation, _)) = self.retired.take() {
            self.discard(generation);
        }
    }

    fn discard(&self, generation: Generation) {
        match self.plan.store.discard(generation) {
            Ok(()) => tracing::info!(
                projection = generation.name,
                generation = generation.number,
                "the replaced generation is dropped"
            ),
            Err(error) => tracing::warn!(%error, "could not drop a replaced generation"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

//! Which reports run on this replica, and when: at most `max_running` at once, each on a
//! thread of its own; up to `max_queued` more wait their turn; beyond that a submission is
//! refused (`429`). Runs nobody runs any more (their replica stopped cleanly and handed them
//! back, or stopped answering) are claimed through the ledger and run again from their
//! recorded range, which gives the same result; a run lost with its replica `max_attempts`
//! times is marked interrupted instead.
//!
//! One task on the service's runtime keeps this replica's part of the ledger current
//! ([`Scheduler::upkeep`]): it refreshes the records of the runs here (their progress) every
//! heartbeat, so that a run thread busy folding never looks abandoned; follows cancellation
//! requests and lost ownership; claims abandoned runs (only after reading the ledger to its
//! end, so a replica that was itself behind never takes live runs); writes again records that
//! compaction could otherwise lose; and removes finished runs past their retention.
//!
//! Every record this process writes takes its sequence number under the lock that orders the
//! runs' state here, so a heartbeat taken before a run started or finished is older than the
//! start or the end, and refused if it arrives after them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use super::catalog::{ReportInfo, Runnable};
use super::ledger::{Known, Ledger, LedgerError, Run, RunState, Written};
use super::range::{self, Bound, CaptureError, Window};
use super::run::{Progress, Reading, RunError};
use crate::metrics::{Metrics, StateLabel};
use crate::problem::QueryError;

/// The bounds of the reports a replica runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_running: usize,
    pub max_queued: usize,
    /// Log positions per second a run reads at most, unless its request asks for fewer.
    pub max_events_per_second: Option<u64>,
    /// How often this replica rewrites its runs' records (their progress).
    pub heartbeat: Duration,
    /// A run whose record has not changed for this long is claimed by another replica.
    pub stale_after: Duration,
    /// Runs lost with their replica before one is marked interrupted.
    pub max_attempts: u32,
    /// How long finished runs and their results are kept.
    pub keep: Duration,
}

/// A submission: `POST /admin/reports`.
#[derive(Debug, Clone)]
pub struct Submission {
    pub report: String,
    pub from: String,
    pub to: String,
    pub max_events_per_second: Option<u64>,
    /// The client's `Idempotency-Key`: a retry with it gets the run it started, on any replica.
    pub idempotency_key: Option<String>,
}

/// What a submission started: the run, and whether an earlier submission with the same
/// `Idempotency-Key` had started it.
#[derive(Debug)]
pub struct Submitted {
    pub run: Run,
    pub replayed: bool,
}

/// The namespace of run ids made from `Idempotency-Key`s.
const KEYED_RUNS: uuid::Uuid = uuid::Uuid::from_u128(0x5a1d_7e0c_4b8e_4f0e_9d3c_2f61_8a47_b2e1);

impl Submitted {
    /// The run an earlier submission with the same key started, if it asked the same.
    fn replay(run: Run, asked: &Submission, from: Bound, to: Bound) -> Result<Self, QueryError> {
        let same = run.report == asked.report
            && run.from == from.show()
            && run.to == to.show()
            && run.max_events_per_second == asked.max_events_per_second;
        if !same {
            return Err(QueryError::BadReport(
                "this Idempotency-Key started another report request; use a new key".into(),
            ));
        }
        Ok(Self {
            run,
            replayed: true,
        })
    }
}

/// Why a running report was stopped.
const STOP_NONE: u8 = 0;
const STOP_REQUESTED: u8 = 1;
const STOP_LOST: u8 = 2;
const STOP_SHUTDOWN: u8 = 3;

/// A run on this replica.
#[derive(Debug)]
struct Active {
    attempt: u32,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    why: Arc<AtomicU8>,
    started: Instant,
    started_at_ms: i64,
    /// Set, under the lock, once the run's last record is being written: no heartbeat after.
    finishing: bool,
}

#[derive(Debug, Default)]
struct Local {
    /// Runs being written (a submission, a claim) before they queue: not claimable.
    pending: HashSet<String>,
    queue: VecDeque<String>,
    running: HashMap<String, Active>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Local {
    fn load(&self) -> usize {
        self.pending.len() + self.queue.len() + self.running.len()
    }

    fn holds(&self, id: &str) -> bool {
        self.pending.contains(id)
            || self.running.contains_key(id)
            || self.queue.iter().any(|q| q == id)
    }
}

/// The reports of a replica: the catalog, the ledger, and the runs here.
pub struct Scheduler {
    reports: Vec<Arc<dyn Runnable>>,
    /// Each collection's topic.
    topics: BTreeMap<&'static str, String>,
    pub ledger: Arc<Ledger>,
    /// This replica's name, shown as a run's replica.
    name: String,
    /// A read-committed client for ranges.
    client: Arc<BaseConsumer>,
    ledger_client: Arc<StreamConsumer>,
    consumer: ClientConfig,
    group: String,
    timeout: Duration,
    pub limits: Limits,
    local: Mutex<Local>,
    seq: AtomicU64,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Cancelled once the queued runs here are handed back.
    handed_back: CancellationToken,
    /// Cancelled once the runs here are handed back: the ledger's follower stops after that.
    released: CancellationToken,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("ledger", &self.ledger)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

fn unavailable(error: &LedgerError) -> QueryError {
    QueryError::Unavailable(format!("the reports ledger is unavailable: {error}"))
}

/// What starting a scheduler needs.
#[allow(missing_debug_implementations)]
pub struct Setup {
    pub reports: Vec<Arc<dyn Runnable>>,
    pub topics: BTreeMap<&'static str, String>,
    /// Consumer settings (bootstrap, security, client id).
    pub consumer: ClientConfig,
    /// The ledger topic; also the prefix of the runs' unjoined group id.
    pub ledger_topic: String,
    /// This replica's name.
    pub replica: String,
    pub timeout: Duration,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

impl Scheduler {
    /// A scheduler, its ledger followed and its upkeep running until `shutdown`.
    pub fn start(setup: Setup, shutdown: CancellationToken) -> Result<Arc<Self>, LedgerError> {
        let ledger = Arc::new(Ledger::new(
            &setup.consumer,
            setup.ledger_topic.clone(),
            uuid::Uuid::new_v4().to_string(),
            setup.timeout,
        )?);
        let reader = || -> Result<StreamConsumer, rdkafka::error::KafkaError> {
            setup
                .consumer
                .clone()
                .set("group.id", format!("{}-ledger", setup.ledger_topic))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .create()
        };
        let follower = reader()?;
        let ledger_client = Arc::new(reader()?);
        let client: BaseConsumer = setup
            .consumer
            .clone()
            .set("isolation.level", "read_committed")
            .create()?;
        super::ledger::check_topic(&client, &setup.ledger_topic, setup.timeout)?;
        let scheduler = Arc::new(Self {
            reports: setup.reports,
            topics: setup.topics,
            ledger: Arc::clone(&ledger),
            name: setup.replica,
            client: Arc::new(client),
            ledger_client,
            consumer: setup.consumer,
            group: format!("{}-reader", setup.ledger_topic),
            timeout: setup.timeout,
            limits: setup.limits,
            local: Mutex::new(Local::default()),
            seq: AtomicU64::new(1),
            metrics: setup.metrics,
            shutdown,
            handed_back: CancellationToken::new(),
            released: CancellationToken::new(),
        });
        tokio::spawn(Arc::clone(&ledger).follow(follower, scheduler.released.clone()));
        tokio::spawn(Arc::clone(&scheduler).upkeep());
        Ok(scheduler)
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This process's next record number; taken under [`Scheduler::local`]'s lock.
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// The reports it can run.
    pub fn reports(&self) -> impl Iterator<Item = ReportInfo> + '_ {
        self.reports.iter().map(|r| r.info())
    }

    fn names(&self) -> String {
        self.reports()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts a report: its range is fixed now, its run recorded, then queued here.
    pub async fn submit(self: &Arc<Self>, submission: Submission) -> Result<Submitted, QueryError> {
        let runnable = self
            .reports
            .iter()
            .find(|r| r.info().name == submission.report)
            .cloned()
            .ok_or_else(|| {
                QueryError::BadReport(format!(
                    "there is no report `{}`; the reports are: {}",
                    submission.report,
                    self.names()
                ))
            })?;
        let from = Bound::parse_from(&submission.from).map_err(QueryError::BadReport)?;
        let to = Bound::parse_to(&submission.to).map_err(QueryError::BadReport)?;
        if let (Bound::At(from), Bound::At(to)) = (from, to)
            && from > to
        {
            return Err(QueryError::BadReport(
                "`from` must not be after `to`".into(),
            ));
        }
        if submission.max_events_per_second == Some(0) {
            return Err(QueryError::BadReport(
                "`max_events_per_second` must be at least 1".into(),
            ));
        }
        if self.shutdown.is_cancelled() {
            return Err(QueryError::Unavailable(
                "this replica is stopping; start the report on another".into(),
            ));
        }
        let id = match &submission.idempotency_key {
            Some(key) => uuid::Uuid::new_v5(&KEYED_RUNS, key.as_bytes()).to_string(),
            None => uuid::Uuid::now_v7().to_string(),
        };
        if submission.idempotency_key.is_some() {
            match self.find(&id).await {
                Ok(known) => return Submitted::replay(known.run, &submission, from, to),
                Err(QueryError::ReportNotFound(_)) if self.ledger.is_removed(&id) => {
                    return Err(QueryError::ReportNotDone(
                        "the report this Idempotency-Key started was removed; use a new key".into(),
                    ));
                }
                Err(QueryError::ReportNotFound(_)) => {}
                Err(other) => return Err(other),
            }
        }
        {
            let mut local = self.local();
            if local.holds(&id) {
                return Err(QueryError::Unavailable(
                    "a request with this Idempotency-Key is being handled; retry shortly".into(),
                ));
            }
            if local.load() >= self.limits.max_running + self.limits.max_queued {
                return Err(QueryError::TooManyReports(format!(
                    "this replica runs {} reports and queues {} more at most; retry later, or on another replica",
                    self.limits.max_running, self.limits.max_queued
                )));
            }
            local.pending.insert(id.clone());
        }
        let _pending = Pending {
            scheduler: self,
            id: id.clone(),
        };
        let topics: Vec<String> = runnable
            .info()
            .topics
            .iter()
            .map(|role| {
                self.topics.get(role).cloned().ok_or_else(|| {
                    QueryError::ReportsOff(format!("this replica has no topic for `{role}`"))
                })
            })
            .collect::<Result<_, _>>()?;
        let (client, timeout) = (Arc::clone(&self.client), self.timeout);
        let offsets =
            tokio::task::spawn_blocking(move || range::capture(&client, &topics, from, timeout))
                .await
                .map_err(|_| QueryError::Unavailable("the range capture did not run".into()))?
                .map_err(|e| match e {
                    CaptureError::NoTopic(_) => {
                        QueryError::ReportNotDone(format!("the report cannot run yet: {e}"))
                    }
                    other => {
                        QueryError::Unavailable(format!("Kafka did not tell the range: {other}"))
                    }
                })?;
        let mut run = Run {
            id: id.clone(),
            report: submission.report.clone(),
            from: from.show(),
            to: to.show(),
            max_events_per_second: submission.max_events_per_second,
            window: Window::new(from, to),
            events_total: range::total(&offsets),
            offsets,
            state: RunState::Queued,
            owner: Some(self.ledger.me.clone()),
            owner_name: Some(self.name.clone()),
            writer: self.ledger.me.clone(),
            seq: 0,
            attempt: 1,
            losses: 0,
            events_read: 0,
            events_per_second: 0.0,
            submitted_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            result: None,
        };
        run.seq = self.next_seq();
        // On a task of its own: a client that goes away mid-request does not leave a recorded
        // run unqueued.
        let scheduler = Arc::clone(self);
        let recorded = run.clone();
        let written = tokio::spawn(async move {
            let _pending = Pending {
                scheduler: &scheduler,
                id: recorded.id.clone(),
            };
            let written = scheduler.ledger.write(&recorded).await?;
            if written == Written::Accepted {
                scheduler.enqueue(&recorded.id);
            }
            Ok::<_, LedgerError>(written)
        })
        .await
        .map_err(|_| QueryError::Unavailable("the report was not recorded".into()))?
        .map_err(|e| unavailable(&e))?;
        if written == Written::Refused {
            // The same key, on another replica, a moment earlier: that run is the one.
            let known = self.find(&id).await?;
            return Submitted::replay(known.run, &submission, from, to);
        }
        Ok(Submitted {
            run,
            replayed: false,
        })
    }

    /// Cancels a queued or running run, wherever it runs; removes a finished one. The run as
    /// it is now, or none if it was removed.
    pub async fn cancel(&self, id: &str) -> Result<Option<Known>, QueryError> {
        let known = self.find(id).await?;
        if known.run.state.finished() {
            self.ledger.remove(id).await.map_err(|e| unavailable(&e))?;
            return Ok(None);
        }
        self.ledger
            .request_cancel(id)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(self.ledger.get(id))
    }

    /// A run, from any replica's submission: if this replica does not know it yet, it first
    /// reads the ledger up to its end.
    pub async fn find(&self, id: &str) -> Result<Known, QueryError> {
        if let Some(known) = self.ledger.get(id) {
            return Ok(known);
        }
        self.ledger
            .catch_up(Arc::clone(&self.ledger_client))
            .await
            .map_err(|e| unavailable(&e))?;
        self.ledger
            .get(id)
            .ok_or_else(|| QueryError::ReportNotFound(id.to_owned()))
    }

    /// What readiness reports of the reports here (it does not hold readiness back).
    pub fn status(&self) -> serde_json::Value {
        let (following, applied) = self.ledger.following();
        let local = self.local();
        serde_json::json!({
            "running": local.running.len(),
            "queued": local.queue.len(),
            "ledger": { "following": following, "applied_offset": applied },
        })
    }

    fn enqueue(self: &Arc<Self>, id: &str) {
        {
            let mut local = self.local();
            local.pending.remove(id);
            if !local.running.contains_key(id) && !local.queue.iter().any(|q| q == id) {
                local.queue.push_back(id.to_owned());
            }
        }
        self.pump();
    }

    /// Starts queued runs while there is room.
    fn pump(self: &Arc<Self>) {
        let mut local = self.local();
        local.threads.retain(|t| !t.is_finished());
        while local.running.len() < self.limits.max_running && !self.shutdown.is_cancelled() {
            let Some(id) = local.queue.pop_front() else {
                break;
            };
            let Some(known) = self.ledger.get(&id) else {
                continue;
            };
            if known.run.owner.as_deref() != Some(self.ledger.me.as_str())
                || known.run.state.finished()
            {
                continue;
            }
            let mut run = known.run;
            let started_at_ms = now_ms();
            run.state = RunState::Running;
            run.writer.clone_from(&self.ledger.me);
            run.started_at_ms = Some(started_at_ms);
            run.events_read = 0;
            run.events_per_second = 0.0;
            run.seq = self.next_seq();
            let active = Active {
                attempt: run.attempt,
                progress: Arc::new(Progress::default()),
                cancel: CancellationToken::new(),
                why: Arc::new(AtomicU8::new(STOP_NONE)),
                started: Instant::now(),
                started_at_ms,
                finishing: false,
            };
            let job = Job {
                run,
                progress: Arc::clone(&active.progress),
                cancel: active.cancel.clone(),
                why: Arc::clone(&active.why),
            };
            let scheduler = Arc::clone(self);
            let thread_id = id.clone();
            let spawned = std::thread::Builder::new()
                .name(format!(
                    "report-{}",
                    id.get(id.len().saturating_sub(8)..).unwrap_or("run")
                ))
                .spawn(move || {
                    // A report's consumer, started on this thread, inherits its priority.
                    crate::priority::lowest();
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(Arc::clone(&scheduler).execute(job)),
                        Err(error) => tracing::error!(%error, "report: no runtime for the run"),
                    }
                    scheduler.finished(&thread_id);
                });
            match spawned {
                Ok(thread) => {
                    local.running.insert(id, active);
                    local.threads.push(thread);
                }
                Err(error) => tracing::error!(%error, "report: could not start a thread"),
            }
        }
    }

    fn finished(self: &Arc<Self>, id: &str) {
        self.local().running.remove(id);
        self.pump();
    }

    /// Runs one attempt on its own thread: running, then done, failed, cancelled, or handed
    /// back (at shutdown); nothing if the run was lost meanwhile.
    async fn execute(self: Arc<Self>, job: Job) {
        let Job {
            mut run,
            progress,
            cancel,
            why,
        } = job;
        match self.ledger.write(&run).await {
            Ok(Written::Accepted) => {}
            Ok(Written::Refused) => return,
            Err(error) => {
                // Left as it is: claimed once its record goes stale.
                tracing::warn!(%error, id = %run.id, "report: could not record its start");
                return;
            }
        }
        let started = Instant::now();
        let outcome = match self.reports.iter().find(|r| r.info().name == run.report) {
            None => Err(format!("this replica has no report `{}`", run.report)),
            Some(runnable) => {
                let limit = match (run.max_events_per_second, self.limits.max_events_per_second) {
                    (Some(asked), Some(most)) => Some(asked.min(most)),
                    (asked, most) => asked.or(most),
                };
                let reading = Reading {
                    consumer: self.consumer.clone(),
                    group: self.group.clone(),
                    offsets: &run.offsets,
                    window: run.window,
                    progress: &progress,
                    cancel: &cancel,
                    limit,
                };
                match std::panic::AssertUnwindSafe(runnable.run(reading))
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(fold)) => Ok(fold),
                    Ok(Err(RunError::Cancelled)) => match why.load(Ordering::Relaxed) {
                        STOP_LOST => return,
                        STOP_SHUTDOWN => {
                            self.hand_back(&run.id).await;
                            return;
                        }
                        _ => Err(String::new()),
                    },
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("the report panicked".to_owned()),
                }
            }
        };
        let last = {
            let mut local = self.local();
            if let Some(active) = local.running.get_mut(&run.id) {
                active.finishing = true;
            }
            run.events_read = progress.read();
            run.events_per_second = rate(run.events_read, started.elapsed());
            run.finished_at_ms = Some(now_ms());
            run.seq = self.next_seq();
            match outcome {
                Ok(fold) => {
                    run.state = RunState::Done;
                    let mut result = fold.table;
                    result["events"] = fold.events.into();
                    result["undecodable"] = fold.undecodable.into();
                    result["offsets"] = serde_json::to_value(&run.offsets).unwrap_or_default();
                    run.result = Some(result);
                    if serde_json::to_vec(&run).map_or(0, |v| v.len()) > MAX_RECORD {
                        run.result = None;
                        run.state = RunState::Failed;
                        run.error = Some(format!(
                            "the result is larger than a record of the reports topic may be ({MAX_RECORD} bytes)"
                        ));
                    }
                }
                Err(error) if error.is_empty() => run.state = RunState::Cancelled,
                Err(error) => {
                    run.state = RunState::Failed;
                    run.error = Some(error);
                }
            }
            run
        };
        self.metrics.reports.positions_read.inc_by(last.events_read);
        self.metrics
            .reports
            .finished
            .get_or_create(&StateLabel {
                state: last.state.name(),
            })
            .inc();
        self.settle(&last).await;
    }

    /// Records a run's last state, retrying a little: if it still cannot be written the run is
    /// claimed once its record goes stale, and run again.
    async fn settle(&self, run: &Run) {
        let mut run = run.clone();
        for attempt in 0..3 {
            if attempt > 0 {
                // A first try that did land is overtaken by this one, not confused with it.
                let _local = self.local();
                run.seq = self.next_seq();
            }
            match self.ledger.write(&run).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, id = %run.id, attempt, "report: its outcome was not recorded; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// At shutdown: gives run `id` back to the ledger, queued and owned by nobody, for another
    /// replica to claim at once; written without waiting to read it back.
    async fn hand_back(&self, id: &str) {
        let Some(known) = self.ledger.get(id) else {
            return;
        };
        let mut run = known.run;
        if run.owner.as_deref() != Some(self.ledger.me.as_str()) || run.state.finished() {
            return;
        }
        run.state = RunState::Queued;
        run.owner = None;
        run.owner_name = None;
        run.writer.clone_from(&self.ledger.me);
        run.events_read = 0;
        run.seq = {
            let _local = self.local();
            self.next_seq()
        };
        if let Err(error) = self.ledger.hand_over(&run).await {
            tracing::warn!(%error, id, "report: could not hand the run back; it is claimed once stale");
        }
    }

    /// Until shutdown: keeps this replica's part of the ledger current (see the module's
    /// documentation); then hands the runs here back.
    async fn upkeep(self: Arc<Self>) {
        // Heartbeats on a task of their own: a slow claim or catch-up in `tend` never delays
        // them past the time others wait before taking a run over.
        let beating = Arc::clone(&self);
        let heartbeats = tokio::spawn(async move {
            let mut beat = tokio::time::interval(beating.limits.heartbeat);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = beating.shutdown.cancelled() => return,
                    _ = beat.tick() => beating.heartbeat().await,
                }
            }
        });
        let mut tick = tokio::time::interval(self.limits.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Registered before looking, so that a change while `tend` runs wakes the next.
            let changed = self.ledger.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            self.tend().await;
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = changed => {}
                _ = tick.tick() => {}
            }
        }
        heartbeats.abort();
        self.release().await;
        self.handed_back.cancel();
    }

    /// Rewrites the record of every run here: queued as it is, running with its progress.
    async fn heartbeat(&self) {
        let records: Vec<Run> = {
            let local = self.local();
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics.reports.running.set(gauge(local.running.len()));
            self.metrics.reports.queued.set(gauge(local.queue.len()));
            let mut records = Vec::new();
            let ids = local
                .queue
                .iter()
                .chain(local.running.keys())
                .cloned()
                .collect::<Vec<_>>();
            for id in ids {
                let Some(known) = self.ledger.get(&id) else {
                    continue;
                };
                let mut run = known.run;
                if run.owner.as_deref() != Some(self.ledger.me.as_str()) || run.state.finished() {
                    continue;
                }
                if let Some(active) = local.running.get(&id) {
                    if active.finishing || active.attempt != run.attempt {
                        continue;
                    }
                    run.state = RunState::Running;
                    run.started_at_ms = Some(active.started_at_ms);
                    run.events_read = active.progress.read();
                    run.events_per_second = rate(run.events_read, active.started.elapsed());
                }
                run.writer.clone_from(&self.ledger.me);
                run.result = None;
                run.seq = self.next_seq();
                records.push(run);
            }
            records
        };
        let written =
            futures::future::join_all(records.iter().map(|run| self.ledger.write(run))).await;
        for (run, written) in records.iter().zip(written) {
            match written {
                Ok(Written::Accepted) => {}
                Ok(Written::Refused) => self.stop_if_running(&run.id, STOP_LOST, Some(run.attempt)),
                Err(error) => tracing::warn!(%error, id = %run.id, "report: progress not recorded"),
            }
        }
    }

    fn stop_if_running(&self, id: &str, why: u8, attempt: Option<u32>) {
        let local = self.local();
        if let Some(active) = local.running.get(id)
            && attempt.is_none_or(|a| a == active.attempt)
            && !active.finishing
        {
            active.why.store(why, Ordering::Relaxed);
            active.cancel.cancel();
        }
    }

    /// Follows cancellation requests and lost ownership; claims abandoned runs; writes again
    /// what compaction could lose; removes finished runs past their retention.
    async fn tend(self: &Arc<Self>) {
        let me = self.ledger.me.as_str();
        let mut writes: Vec<Run> = Vec::new();
        let mut candidates: Vec<String> = Vec::new();
        {
            let mut local = self.local();
            for known in self.ledger.unfinished() {
                let run = &known.run;
                let mine = run.owner.as_deref() == Some(me);
                if let Some(active) = local.running.get(&run.id) {
                    let stop = if !mine || run.attempt != active.attempt {
                        STOP_LOST
                    } else if known.cancel_requested {
                        STOP_REQUESTED
                    } else {
                        STOP_NONE
                    };
                    if stop != STOP_NONE && !active.finishing {
                        active.why.store(stop, Ordering::Relaxed);
                        active.cancel.cancel();
                    }
                    continue;
                }
                if let Some(at) = local.queue.iter().position(|q| *q == run.id) {
                    if !mine {
                        local.queue.remove(at);
                    } else if known.cancel_requested {
                        local.queue.remove(at);
                        let mut cancelled = run.clone();
                        cancelled.state = RunState::Cancelled;
                        cancelled.finished_at_ms = Some(now_ms());
                        cancelled.writer = me.to_owned();
                        cancelled.seq = self.next_seq();
                        writes.push(cancelled);
                    }
                    continue;
                }
                if local.pending.contains(&run.id) {
                    continue;
                }
                let abandoned =
                    run.owner.is_none() || known.seen.elapsed() >= self.limits.stale_after;
                if abandoned {
                    candidates.push(run.id.clone());
                }
            }
            for id in self.ledger.take_republish() {
                if let Some(known) = self.ledger.get(&id)
                    && (known.run.owner.as_deref() == Some(me)
                        || (known.run.state.finished() && known.run.writer == me))
                    && !local.running.get(&id).is_some_and(|a| a.finishing)
                {
                    let mut again = known.run;
                    again.writer = me.to_owned();
                    again.seq = self.next_seq();
                    writes.push(again);
                }
            }
        }
        for run in writes {
            if let Err(error) = self.ledger.write(&run).await {
                tracing::warn!(%error, id = %run.id, "report: a record was not written");
            }
        }
        if !candidates.is_empty() {
            self.claim_abandoned(candidates).await;
        }
        let keep_ms = i64::try_from(self.limits.keep.as_millis()).unwrap_or(i64::MAX);
        for id in self
            .ledger
            .finished_before(now_ms().saturating_sub(keep_ms))
        {
            if let Err(error) = self.ledger.remove(&id).await {
                tracing::warn!(%error, %id, "report: an expired run was not removed");
            }
        }
    }

    /// Claims the abandoned runs of `candidates` there is room for, after reading the ledger
    /// to its end: a replica that was behind sees its owners' records first.
    async fn claim_abandoned(self: &Arc<Self>, candidates: Vec<String>) {
        if let Err(error) = self.ledger.catch_up(Arc::clone(&self.ledger_client)).await {
            tracing::warn!(%error, "report: the ledger is not readable to its end; claiming nothing");
            return;
        }
        for id in candidates {
            let claim = {
                let mut local = self.local();
                let Some(known) = self.ledger.get(&id) else {
                    continue;
                };
                let abandoned = !known.run.state.finished()
                    && (known.run.owner.is_none()
                        || known.seen.elapsed() >= self.limits.stale_after);
                let lost = known.run.owner.is_some();
                // A claim that only writes an end (cancelled, interrupted) needs no room here.
                let ends_it = known.cancel_requested
                    || known.run.losses + u32::from(lost) >= self.limits.max_attempts;
                let runnable_here = self
                    .reports
                    .iter()
                    .any(|r| r.info().name == known.run.report);
                if !abandoned
                    || local.holds(&id)
                    || self.shutdown.is_cancelled()
                    || (!ends_it
                        && (!runnable_here
                            || local.load() >= self.limits.max_running + self.limits.max_queued))
                {
                    continue;
                }
                local.pending.insert(id.clone());
                let read_before = known.run.events_read;
                let mut run = known.run;
                run.attempt += 1;
                run.losses += u32::from(lost);
                run.owner = Some(self.ledger.me.clone());
                run.owner_name = Some(self.name.clone());
                run.writer.clone_from(&self.ledger.me);
                run.events_read = 0;
                run.seq = self.next_seq();
                if known.cancel_requested {
                    run.state = RunState::Cancelled;
                    run.finished_at_ms = Some(now_ms());
                } else if run.losses >= self.limits.max_attempts {
                    run.state = RunState::Interrupted;
                    run.error = Some(format!(
                        "its replica was lost {} times; the last had read {} of {} positions",
                        run.losses, read_before, run.events_total
                    ));
                    run.finished_at_ms = Some(now_ms());
                } else {
                    run.state = RunState::Queued;
                }
                run
            };
            let _pending = Pending {
                scheduler: self,
                id: id.clone(),
            };
            tracing::info!(%id, attempt = claim.attempt, state = claim.state.name(), "report: claiming a run nobody runs");
            match self.ledger.write(&claim).await {
                Ok(Written::Accepted) if claim.state == RunState::Queued => self.enqueue(&id),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, %id, "report: claim not recorded"),
            }
        }
    }

    /// At shutdown: stops the runs here (each hands itself back) and hands back the queued.
    async fn release(&self) {
        let queued: Vec<String> = {
            let mut local = self.local();
            for active in local.running.values() {
                if !active.finishing {
                    active.why.store(STOP_SHUTDOWN, Ordering::Relaxed);
                    active.cancel.cancel();
                }
            }
            local.queue.drain(..).collect()
        };
        for id in queued {
            self.hand_back(&id).await;
        }
    }

    /// At shutdown, until `deadline`: waits for the runs here to be handed back, then stops
    /// following the ledger.
    pub async fn stopped(&self, deadline: Instant) {
        self.shutdown.cancel();
        while Instant::now() < deadline {
            let busy = {
                let mut local = self.local();
                local.threads.retain(|t| !t.is_finished());
                !local.threads.is_empty() || !self.handed_back.is_cancelled()
            };
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.released.cancel();
    }
}

/// The largest record a run's result may make: under the broker's default 1 MiB.
const MAX_RECORD: usize = 900 * 1024;

/// What a run's thread is handed.
struct Job {
    run: Run,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    why: Arc<AtomicU8>,
}

/// A run being written before it queues; dropped, it is no longer pending (whether it queued
/// or failed to be written).
struct Pending<'a> {
    scheduler: &'a Scheduler,
    id: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.scheduler.local().pending.remove(&self.id);
    }
}

/// Events per second over `elapsed`.
#[allow(clippy::cast_precision_loss)]
fn rate(read: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        (read as f64 / seconds).round()
    }
}

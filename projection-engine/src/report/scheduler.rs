//! Which reports run on this replica, and when: at most `max_running` at once, each on a
//! thread of its own; up to `max_queued` more wait their turn; beyond that a submission is
//! refused (`429`). Runs nobody is running any more (their replica was stopped, or stopped
//! answering) are claimed through the ledger and run again from their recorded range, which
//! gives the same result, or marked interrupted once they have been tried `max_attempts`
//! times.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use super::catalog::Runnable;
use super::ledger::{Known, Ledger, LedgerError, Run, RunState};
use super::range::{self, Bound, Window};
use super::run::{Progress, Reading, RunError};
use crate::problem::QueryError;

/// The bounds of the reports a replica runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_running: usize,
    pub max_queued: usize,
    /// Events per second a run reads at most, unless its request asks for fewer.
    pub max_events_per_second: Option<u64>,
    /// How often an owner rewrites its runs' records (their progress).
    pub heartbeat: Duration,
    /// A run whose record has not changed for this long is claimed by another replica.
    pub stale_after: Duration,
    /// Attempts after which a lost run is marked interrupted rather than run again.
    pub max_attempts: u32,
}

/// A submission: `POST /admin/reports`.
#[derive(Debug, Clone)]
pub struct Submission {
    pub report: String,
    pub from: String,
    pub to: String,
    pub max_events_per_second: Option<u64>,
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
}

/// The reports of a replica: the catalog, the ledger, and the runs here.
pub struct Scheduler {
    reports: Vec<Arc<dyn Runnable>>,
    /// Each collection's topic.
    topics: BTreeMap<&'static str, String>,
    pub ledger: Arc<Ledger>,
    /// A read-committed client for ranges and the ledger's end.
    client: Arc<BaseConsumer>,
    ledger_client: Arc<StreamConsumer>,
    consumer: ClientConfig,
    group: String,
    timeout: Duration,
    pub limits: Limits,
    local: Mutex<Local>,
    shutdown: CancellationToken,
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
    pub replica: String,
    pub timeout: Duration,
    pub limits: Limits,
}

impl Scheduler {
    /// A scheduler, its ledger followed and its upkeep running until `shutdown`.
    pub fn start(
        setup: Setup,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, rdkafka::error::KafkaError> {
        let ledger = Arc::new(Ledger::new(
            &setup.consumer,
            setup.ledger_topic.clone(),
            setup.replica,
            setup.timeout,
        )?);
        let reader = |group: &str| -> Result<StreamConsumer, rdkafka::error::KafkaError> {
            setup
                .consumer
                .clone()
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .create()
        };
        let follower = reader(&format!("{}-ledger", setup.ledger_topic))?;
        let ledger_client = Arc::new(reader(&format!("{}-ledger", setup.ledger_topic))?);
        let client: BaseConsumer = setup
            .consumer
            .clone()
            .set("isolation.level", "read_committed")
            .create()?;
        let scheduler = Arc::new(Self {
            reports: setup.reports,
            topics: setup.topics,
            ledger: Arc::clone(&ledger),
            client: Arc::new(client),
            ledger_client,
            consumer: setup.consumer,
            group: format!("{}-reader", setup.ledger_topic),
            timeout: setup.timeout,
            limits: setup.limits,
            local: Mutex::new(Local::default()),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(Arc::clone(&ledger).follow(follower, shutdown.clone()));
        tokio::spawn(Arc::clone(&scheduler).upkeep());
        Ok(scheduler)
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The reports it can run.
    pub fn reports(&self) -> impl Iterator<Item = super::catalog::ReportInfo> + '_ {
        self.reports.iter().map(|r| r.info())
    }

    fn names(&self) -> String {
        self.reports()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Starts a report: its range is fixed now, its run recorded, then queued here.
    pub async fn submit(self: &Arc<Self>, submission: Submission) -> Result<Run, QueryError> {
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
        let id = uuid::Uuid::now_v7().to_string();
        {
            let mut local = self.local();
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
            .filter_map(|role| self.topics.get(role).cloned())
            .collect();
        let (client, timeout) = (Arc::clone(&self.client), self.timeout);
        let offsets =
            tokio::task::spawn_blocking(move || range::capture(&client, &topics, from, timeout))
                .await
                .map_err(|_| QueryError::Unavailable("the range capture did not run".into()))?
                .map_err(|e| {
                    QueryError::Unavailable(format!("Kafka did not tell the range: {e}"))
                })?;
        let run = Run {
            id: id.clone(),
            report: submission.report,
            from: from.show(),
            to: to.show(),
            max_events_per_second: submission.max_events_per_second,
            window: Window::new(from, to),
            events_total: range::total(&offsets),
            offsets,
            state: RunState::Queued,
            owner: Some(self.ledger.replica.clone()),
            writer: self.ledger.replica.clone(),
            attempt: 1,
            events_read: 0,
            events_per_second: 0.0,
            submitted_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            error: None,
            result: None,
        };
        self.ledger.write(&run).await.map_err(|e| unavailable(&e))?;
        self.enqueue(&id);
        Ok(run)
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

    /// The live progress of a run on this replica: (events read, events per second).
    pub fn live_progress(&self, id: &str, attempt: u32) -> Option<(u64, f64)> {
        let local = self.local();
        let active = local.running.get(id).filter(|a| a.attempt == attempt)?;
        let read = active.progress.read();
        Some((read, rate(read, active.started.elapsed())))
    }

    fn enqueue(self: &Arc<Self>, id: &str) {
        {
            let mut local = self.local();
            local.pending.remove(id);
            local.queue.push_back(id.to_owned());
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
            if known.run.owner.as_deref() != Some(self.ledger.replica.as_str()) {
                continue;
            }
            let active = Active {
                attempt: known.run.attempt,
                progress: Arc::new(Progress::default()),
                cancel: CancellationToken::new(),
                why: Arc::new(AtomicU8::new(STOP_NONE)),
                started: Instant::now(),
            };
            let job = Job {
                run: known.run,
                progress: Arc::clone(&active.progress),
                cancel: active.cancel.clone(),
                why: Arc::clone(&active.why),
            };
            let scheduler = Arc::clone(self);
            let thread_id = id.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("report-{}", &id[..id.len().min(8)]))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
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

    /// Runs one attempt on its own thread: running, then done, failed, cancelled, or released
    /// (at shutdown, for another replica to claim); nothing if the run was lost meanwhile.
    async fn execute(self: Arc<Self>, job: Job) {
        let Job {
            mut run,
            progress,
            cancel,
            why,
        } = job;
        let me = self.ledger.replica.clone();
        run.state = RunState::Running;
        run.writer.clone_from(&me);
        run.started_at_ms = Some(now_ms());
        run.events_read = 0;
        match self.ledger.write(&run).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                // Not started: another replica claims it once its record is stale.
                tracing::warn!(%error, id = %run.id, "report: could not record its start");
                return;
            }
        }
        let Some(runnable) = self.reports.iter().find(|r| r.info().name == run.report) else {
            run.state = RunState::Failed;
            run.error = Some(format!("this replica has no report `{}`", run.report));
            run.finished_at_ms = Some(now_ms());
            self.settle(&run).await;
            return;
        };
        let limit = match (run.max_events_per_second, self.limits.max_events_per_second) {
            (Some(asked), Some(most)) => Some(asked.min(most)),
            (asked, most) => asked.or(most),
        };
        let started = Instant::now();
        let reading = Reading {
            consumer: self.consumer.clone(),
            group: self.group.clone(),
            offsets: &run.offsets,
            window: run.window,
            progress: &progress,
            cancel: &cancel,
            limit,
        };
        let mut fold = std::pin::pin!(runnable.run(reading));
        let mut beat = tokio::time::interval(self.limits.heartbeat);
        beat.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut fold => break outcome,
                _ = beat.tick() => {
                    let mut heartbeat = run.clone();
                    heartbeat.events_read = progress.read();
                    heartbeat.events_per_second = rate(heartbeat.events_read, started.elapsed());
                    match self.ledger.write(&heartbeat).await {
                        Ok(true) => {}
                        Ok(false) => {
                            why.store(STOP_LOST, Ordering::Relaxed);
                            cancel.cancel();
                        }
                        Err(error) => tracing::warn!(%error, id = %run.id, "report: progress not recorded"),
                    }
                }
            }
        };
        run.events_read = progress.read();
        run.events_per_second = rate(run.events_read, started.elapsed());
        match outcome {
            Ok(fold) => {
                run.state = RunState::Done;
                run.finished_at_ms = Some(now_ms());
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
            Err(RunError::Cancelled) => match why.load(Ordering::Relaxed) {
                STOP_LOST => return,
                STOP_SHUTDOWN => {
                    run.state = RunState::Queued;
                    run.owner = None;
                    run.events_read = 0;
                }
                _ => {
                    run.state = RunState::Cancelled;
                    run.finished_at_ms = Some(now_ms());
                }
            },
            Err(error) => {
                run.state = RunState::Failed;
                run.error = Some(error.to_string());
                run.finished_at_ms = Some(now_ms());
            }
        }
        self.settle(&run).await;
    }

    /// Records a run's last state here, retrying a little: if it still cannot be written the
    /// run is left to be claimed and run again.
    async fn settle(&self, run: &Run) {
        for attempt in 0..3 {
            match self.ledger.write(run).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, id = %run.id, attempt, "report: its outcome was not recorded; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Until shutdown: follows cancellation requests and lost ownership, keeps this replica's
    /// queued runs' records fresh, and claims runs nobody runs.
    async fn upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.limits.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed = self.ledger.changed.notified();
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = changed => {}
                _ = tick.tick() => {}
            }
            self.tend().await;
        }
        self.release().await;
    }

    async fn tend(self: &Arc<Self>) {
        let me = self.ledger.replica.as_str();
        let mut writes: Vec<Run> = Vec::new();
        let mut claims: Vec<Known> = Vec::new();
        {
            let mut local = self.local();
            for known in self.ledger.list() {
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
                    if stop != STOP_NONE {
                        active.why.store(stop, Ordering::Relaxed);
                        active.cancel.cancel();
                    }
                    continue;
                }
                if let Some(at) = local.queue.iter().position(|q| *q == run.id) {
                    if !mine || run.state.finished() {
                        local.queue.remove(at);
                    } else if known.cancel_requested {
                        local.queue.remove(at);
                        let mut cancelled = run.clone();
                        cancelled.state = RunState::Cancelled;
                        cancelled.finished_at_ms = Some(now_ms());
                        writes.push(cancelled);
                    } else if known.seen.elapsed() >= self.limits.heartbeat {
                        writes.push(run.clone());
                    }
                    continue;
                }
                if run.state.finished() || local.pending.contains(&run.id) {
                    continue;
                }
                let orphaned =
                    run.owner.is_none() || mine || known.seen.elapsed() >= self.limits.stale_after;
                if orphaned && local.load() < self.limits.max_running + self.limits.max_queued {
                    local.pending.insert(run.id.clone());
                    claims.push(known);
                }
            }
        }
        for run in writes {
            if let Err(error) = self.ledger.write(&run).await {
                tracing::warn!(%error, id = %run.id, "report: its record was not refreshed");
            }
        }
        for known in claims {
            self.claim(known).await;
        }
    }

    /// Claims a run nobody runs: the next attempt, queued here; or, past the attempts allowed,
    /// marked interrupted with what it had read.
    async fn claim(self: &Arc<Self>, known: Known) {
        let id = known.run.id.clone();
        let _pending = Pending {
            scheduler: self,
            id: id.clone(),
        };
        let mut run = known.run;
        run.attempt += 1;
        run.owner = Some(self.ledger.replica.clone());
        run.writer.clone_from(&self.ledger.replica);
        if known.cancel_requested || run.attempt > self.limits.max_attempts {
            run.state = if known.cancel_requested {
                RunState::Cancelled
            } else {
                RunState::Interrupted
            };
            run.error = (!known.cancel_requested).then(|| {
                format!(
                    "its replica was lost {} times; it had read {} of {} positions",
                    run.attempt - 1,
                    run.events_read,
                    run.events_total
                )
            });
            run.finished_at_ms = Some(now_ms());
            let _ = self.ledger.write(&run).await;
            return;
        }
        run.state = RunState::Queued;
        tracing::info!(id = %run.id, attempt = run.attempt, "report: claiming a run nobody runs");
        match self.ledger.write(&run).await {
            Ok(true) => self.enqueue(&id),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, %id, "report: claim not recorded"),
        }
    }

    /// At shutdown: stops the runs here and hands every run this replica owns back to the
    /// ledger, for another replica to claim at once.
    async fn release(&self) {
        let queued: Vec<String> = {
            let mut local = self.local();
            for active in local.running.values() {
                active.why.store(STOP_SHUTDOWN, Ordering::Relaxed);
                active.cancel.cancel();
            }
            local.queue.drain(..).collect()
        };
        for id in queued {
            if let Some(mut known) = self.ledger.get(&id) {
                known.run.owner = None;
                known.run.writer.clone_from(&self.ledger.replica);
                let _ = self.ledger.write(&known.run).await;
            }
        }
    }

    /// Waits, until `deadline`, for the runs here to finish stopping.
    pub async fn stopped(&self, deadline: Instant) {
        self.shutdown.cancel();
        while Instant::now() < deadline {
            let busy = {
                let mut local = self.local();
                local.threads.retain(|t| !t.is_finished());
                !local.threads.is_empty()
            };
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("reports still running at the end of the grace; abandoning them");
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
pub fn rate(read: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        (read as f64 / seconds).round()
    }
}

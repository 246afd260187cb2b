//! Reading the log into the write model of the partitions that take no command here: those
//! assigned here, read to their end before they take one (a restore), and those another
//! instance owns that this one keeps warm (a standby), so that taking one over reads only what
//! was written since.
//!
//! Each lane has one reader, on a thread of its own, with one read-committed consumer assigned
//! the partitions it reads. Which ones is decided from the lane's [`Leases`] alone: `Restoring`
//! partitions, and, once none is restoring, the `Unowned` ones this instance is a standby of
//! (the ring of [`partition_routing::standby::holders`] over the group's view, with
//! `standby_replicas` standbys per partition). Restores come first: a partition being restored
//! holds its commands back, a standby only shortens a takeover that may never come.
//!
//! Invariants, and where they are kept:
//! - **A partition's model is written by the commands or by this reader, never both.** The
//!   reader applies a record only while its partition is `Restoring` or `Unowned` ([`apply`]),
//!   and it is the reader that makes a `Restoring` partition `Owned`, between two reads. A
//!   partition released here was drained of its commands first ([`Leases::release`]).
//! - **A restore misses nothing the previous owner committed.** It reads to the partition's
//!   high watermark as it was when the partition was assigned (asked read-uncommitted: a
//!   read-committed client is told the last stable offset, which stops short of every
//!   committed record behind a transaction still open), and is done when the consumer's
//!   position (which moves past transaction markers and aborted records) reaches it. A
//!   transaction still open there (a dead owner's) holds the position back until the broker
//!   ends it; the producers' short `transaction.timeout.ms` bounds that wait.
//! - **A partition nobody else has written since this instance last had it is not read
//!   again.** Every transaction carries the end of what it wrote as the group's offset, and
//!   another owner's records all come after what this instance had, so a committed offset at or
//!   below the model's applied offset means the model is whole: the partition is owned at once.
//!   That makes the common case (a partition coming back after a rebalance, or taken over from
//!   a warm standby whose owner's last transaction it has read) immediate. The group's offsets
//!   are asked for up to [`ASK_COMMITTED_FOR`] (a broker that just came back may not answer
//!   yet); without them, the tails are read.
//! - **A record that does not decode stops its partition**, restore or standby: a model with a
//!   hole in it would assign wrong versions. It is read again from its applied offset every few
//!   seconds, and stays `Restoring` (its commands answer `503`) until it decodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use shared_events::{Position, WireError};
use tokio_util::sync::CancellationToken;

use crate::lane::AnyLane;
use crate::ownership::{Leases, Standing};
use crate::snapshot::SnapshotError;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("Kafka")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("record at {partition}:{offset} could not be decoded")]
    Decode {
        partition: i32,
        offset: i64,
        #[source]
        source: WireError,
    },
}

/// How the readers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka: service_config::KafkaArgs,
    /// The `group.id` the readers' clients name: required by librdkafka, never joined, nothing
    /// committed.
    pub group: String,
    /// This instance's id, as the command group knows it.
    pub instance_id: String,
    /// Instances besides its owner that keep each partition warm (0: none).
    pub standby_replicas: usize,
    /// Longest wait for one Kafka request (a high watermark, the group's offsets).
    pub kafka_timeout: Duration,
}

/// Runs one reader per lane until `stop`, each on a thread of its own (not the runtime's
/// blocking pool: a runtime waits for its blocking tasks when it is dropped, and a reader only
/// ends when told to). A reader also ends once nothing else holds its lane.
pub async fn run(lanes: Vec<Arc<dyn AnyLane>>, settings: Settings, stop: CancellationToken) {
    let runtime = tokio::runtime::Handle::current();
    let mut ended = Vec::new();
    for lane in lanes {
        let (settings, stop, runtime) = (settings.clone(), stop.clone(), runtime.clone());
        let topic = lane.topic().to_owned();
        let (done, end) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("restore-{topic}"))
            .spawn(move || {
                match Reader::new(lane, settings, runtime) {
                    Ok(mut reader) => reader.run(&stop),
                    Err(error) => {
                        tracing::error!(%topic, %error, "the partition reader could not start; assigned partitions stay unrestored");
                    }
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => ended.push(end),
            Err(error) => tracing::error!(%error, "could not start a partition reader"),
        }
    }
    for end in ended {
        // An error only says the thread ended without saying so: it panicked.
        if end.await.is_err() {
            tracing::error!("a partition reader panicked");
        }
    }
}

/// Why a partition is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Assigned here in `epoch`: read to `end`, then owned.
    Restore {
        epoch: u64,
        end: i64,
        started: Instant,
        records: u64,
    },
    /// Kept warm for its owner.
    Standby,
}

/// Records applied at most between two looks at the leases.
const BATCH: usize = 4096;
/// How long a partition whose record did not decode waits before it is read again.
const RETRY: Duration = Duration::from_secs(5);
/// How long restores wait for the group's offsets before they read the tails without them.
const ASK_COMMITTED_FOR: Duration = Duration::from_secs(30);

struct Reader {
    lane: Arc<dyn AnyLane>,
    settings: Settings,
    runtime: tokio::runtime::Handle,
    consumer: BaseConsumer,
    /// Asks high watermarks read-uncommitted (see the module's second invariant).
    ends: BaseConsumer,
    /// The consumer's assignment, and why each partition is in it.
    reading: BTreeMap<i32, Why>,
    /// Partitions left out until then: a record of theirs did not decode.
    broken: BTreeMap<i32, Instant>,
    /// The assignment no longer matches `reading`.
    stale: bool,
    /// Since when the group's offsets could not be had for the restores waiting to begin.
    asking: Option<Instant>,
    next_report: Instant,
}

impl Reader {
    fn new(
        lane: Arc<dyn AnyLane>,
        settings: Settings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = settings
            .kafka
            .client_config()
            .set("group.id", &settings.group)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset the topic no longer holds (retention): from its first record.
            .set("auto.offset.reset", "earliest")
            .create()?;
        let ends = ends_client(&settings)?;
        Ok(Self {
            lane,
            settings,
            runtime,
            consumer,
            ends,
            reading: BTreeMap::new(),
            broken: BTreeMap::new(),
            stale: false,
            asking: None,
            next_report: Instant::now(),
        })
    }

    fn run(&mut self, stop: &CancellationToken) {
        while !stop.is_cancelled() && Arc::strong_count(&self.lane) > 1 {
            self.plan();
            if self.reading.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            self.read();
            self.settle();
        }
    }

    /// Decides what to read from the leases and the group's view, and assigns it.
    fn plan(&mut self) {
        let leases = Arc::clone(self.lane.leases());
        let now = Instant::now();
        self.broken.retain(|_, until| *until > now);

        let mut restoring: BTreeMap<i32, u64> = BTreeMap::new();
        for p in leases.with(Standing::Restoring) {
            if let Some(epoch) = leases.epoch(p)
                && !self.broken.contains_key(&p)
            {
                restoring.insert(p, epoch);
            }
        }
        let fresh: Vec<(i32, u64)> = restoring
            .iter()
            .filter(|&(p, &epoch)| {
                !matches!(self.reading.get(p), Some(Why::Restore { epoch: e, .. }) if *e == epoch)
            })
            .map(|(&p, &epoch)| (p, epoch))
            .collect();
        if !fresh.is_empty() {
            self.begin(&leases, &fresh, &mut restoring);
        }

        let warm: BTreeSet<i32> = self.standbys(&leases);
        let mut wanted: BTreeMap<i32, Why> = BTreeMap::new();
        for p in restoring.keys() {
            if let Some(why) = self.reading.get(p).copied() {
                wanted.insert(*p, why);
            }
        }
        // Restores first: they hold commands back.
        if wanted.is_empty() {
            for &p in &warm {
                if !self.broken.contains_key(&p) {
                    wanted.insert(p, Why::Standby);
                }
            }
        }
        for p in 0..leases.partitions() {
            leases.set_warm(p, wanted.get(&p) == Some(&Why::Standby));
        }
        let before: BTreeSet<i32> = self.reading.keys().copied().collect();
        let after: BTreeSet<i32> = wanted.keys().copied().collect();
        self.reading = wanted;
        if before != after || self.stale {
            self.assign();
        }
    }

    /// The partitions this instance keeps warm now: `Unowned` ones whose standbys, by the
    /// group's last view, include it.
    fn standbys(&self, leases: &Leases) -> BTreeSet<i32> {
        let (replicas, Some(cluster)) = (self.settings.standby_replicas, self.lane.cluster())
        else {
            return BTreeSet::new();
        };
        if replicas == 0 {
            return BTreeSet::new();
        }
        let view = cluster.view();
        partition_routing::standby::held_by(
            &view,
            leases.partitions(),
            replicas,
            &self.settings.instance_id,
        )
        .into_iter()
        .filter(|&p| leases.standing(p) == Standing::Unowned)
        .collect()
    }

    /// Starts the restores of partitions assigned since the last look: owned at once when the
    /// group says nobody wrote them since this instance's model, else read to their end.
    fn begin(&mut self, leases: &Leases, fresh: &[(i32, u64)], restoring: &mut BTreeMap<i32, u64>) {
        let topic = self.lane.topic().to_owned();
        let committed = match self.committed(fresh) {
            Some(committed) => {
                self.asking = None;
                committed
            }
            // The group's offsets are worth waiting a while for (a coordinator just moved, or
            // its broker just came back): without them every tail is read, and a tail behind a
            // transaction left open waits for that transaction's timeout.
            None if self.asking.get_or_insert_with(Instant::now).elapsed() < ASK_COMMITTED_FOR => {
                for (p, _) in fresh {
                    restoring.remove(p);
                }
                return;
            }
            None => {
                tracing::warn!(%topic, "the command group's offsets are still unknown; reading the tails");
                self.asking = None;
                HashMap::new()
            }
        };
        let mut kept = Vec::new();
        for &(p, epoch) in fresh {
            let applied = self.lane.applied(p);
            if applied > 0
                && committed.get(&p).is_some_and(|&c| c <= applied)
                && leases.restored(p, epoch)
            {
                kept.push(p);
                restoring.remove(&p);
                continue;
            }
            match self
                .ends
                .fetch_watermarks(&topic, p, self.settings.kafka_timeout)
            {
                Ok((_, end)) => {
                    tracing::info!(
                        %topic,
                        partition = p,
                        from = applied,
                        to = end,
                        committed = ?committed.get(&p),
                        "reading the tail of an assigned partition"
                    );
                    self.reading.insert(
                        p,
                        Why::Restore {
                            epoch,
                            end,
                            started: Instant::now(),
                            records: 0,
                        },
                    );
                    // Its position may be a standby's: read again from the model's offset.
                    self.stale = true;
                }
                Err(error) => {
                    // Asked again at the next look, by a new client: one that has not yet
                    // learned where a partition's leader moved (a broker lost) kept asking the
                    // old leader.
                    tracing::warn!(%topic, partition = p, %error, "could not read an assigned partition's end; retrying");
                    restoring.remove(&p);
                    match ends_client(&self.settings) {
                        Ok(ends) => self.ends = ends,
                        Err(error) => {
                            tracing::warn!(%error, "could not create a client for partition ends")
                        }
                    }
                }
            }
        }
        if !kept.is_empty() {
            tracing::info!(%topic, partitions = ?kept, "partitions back with nothing new since; taking their commands");
        }
    }

    /// The group's committed offsets of `partitions`, asked as a client outside the group (the
    /// member itself does not answer while its group is rebalancing). None when not known.
    fn committed(&self, partitions: &[(i32, u64)]) -> Option<HashMap<i32, i64>> {
        let Some(cluster) = self.lane.cluster() else {
            return Some(HashMap::new());
        };
        let numbers: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
        match cluster.committed(&numbers) {
            Ok(committed) => Some(committed),
            Err(error) => {
                tracing::warn!(topic = self.lane.topic(), %error, "could not read the command group's offsets; asking again");
                None
            }
        }
    }

    /// Assigns the partitions of `reading`, each from its model's applied offset.
    fn assign(&mut self) {
        let topic = self.lane.topic().to_owned();
        let mut assignment = TopicPartitionList::new();
        for &p in self.reading.keys() {
            let from = self.lane.applied(p).max(0);
            if let Err(error) = assignment.add_partition_offset(&topic, p, Offset::Offset(from)) {
                tracing::error!(%topic, partition = p, %error, "could not list a partition to read");
            }
        }
        match self.consumer.assign(&assignment) {
            Ok(()) => self.stale = false,
            Err(error) => {
                tracing::warn!(%topic, %error, "could not assign the partitions to read; retrying");
                self.stale = true;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Applies what the consumer has, up to [`BATCH`] records.
    fn read(&mut self) {
        let mut wait = Duration::from_millis(100);
        let now_ms = crate::pipeline::now_ms();
        let (mut restored, mut warmed) = (0, 0);
        for _ in 0..BATCH {
            let message = match self.consumer.poll(wait) {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(topic = self.lane.topic(), %error, "reading partitions");
                    break;
                }
                Some(Ok(message)) => message,
            };
            wait = Duration::ZERO;
            let partition = message.partition();
            match apply(
                self.lane.as_ref(),
                &self.runtime,
                &mut self.reading,
                &message,
                now_ms,
            ) {
                Ok(Some(Why::Restore { .. })) => restored += 1,
                Ok(Some(Why::Standby)) => warmed += 1,
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(topic = self.lane.topic(), partition, offset = message.offset(), error = %error, source = ?std::error::Error::source(&error), "a record could not be applied; the partition is read again from its model's offset in a few seconds");
                    self.reading.remove(&partition);
                    self.broken.insert(partition, Instant::now() + RETRY);
                    self.stale = true;
                }
            }
        }
        self.lane.count_read(restored, warmed);
    }

    /// Moves each partition's applied offset to the consumer's position (past transaction
    /// markers and aborted records), and makes a restored partition owned.
    fn settle(&mut self) {
        let topic = self.lane.topic().to_owned();
        let positions = match self.consumer.position() {
            Ok(positions) => positions,
            Err(error) => {
                tracing::warn!(%topic, %error, "could not read the consumer's positions");
                return;
            }
        };
        let leases = Arc::clone(self.lane.leases());
        let report = Instant::now() >= self.next_report;
        let mut done = Vec::new();
        for (&p, why) in &self.reading {
            // Everything before the position has been handed over, and applied. A partition
            // nothing was fetched from yet has no position: it is where it was assigned from.
            let at = match positions.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at.max(self.lane.applied(p)),
                _ => self.lane.applied(p),
            };
            if still(&leases, p, *why) {
                self.lane.applied_up_to(p, at);
            }
            if let Why::Restore {
                epoch,
                end,
                started,
                records,
            } = *why
            {
                if at >= end {
                    done.push(p);
                    if leases.restored(p, epoch) {
                        tracing::info!(
                            aggregate = self.lane.name(),
                            %topic,
                            partition = p,
                            records,
                            aggregates = self.lane.aggregates(),
                            gaps = self.lane.gaps(),
                            elapsed_ms = started.elapsed().as_millis(),
                            "partition restored; taking its commands"
                        );
                    }
                } else if report {
                    // Usually a transaction left open before the end, which holds a
                    // read-committed reader back until it is completed or times out.
                    let stable = self
                        .consumer
                        .fetch_watermarks(&topic, p, self.settings.kafka_timeout)
                        .ok()
                        .map(|(_, stable)| stable);
                    tracing::info!(%topic, partition = p, at, end, ?stable, records, "still reading an assigned partition's tail");
                }
            }
        }
        if report {
            self.next_report = Instant::now() + Duration::from_secs(5);
        }
        for p in done {
            self.reading.remove(&p);
            self.stale = true;
        }
    }
}

/// Applies one record if its partition takes no command here; why it was read, if it was
/// applied.
fn apply(
    lane: &dyn AnyLane,
    runtime: &tokio::runtime::Handle,
    reading: &mut BTreeMap<i32, Why>,
    message: &BorrowedMessage<'_>,
    now_ms: i64,
) -> Result<Option<Why>, RestoreError> {
    let (partition, offset) = (message.partition(), message.offset());
    let leases = lane.leases();
    let Some(why) = reading.get_mut(&partition) else {
        return Ok(None);
    };
    // A partition whose standing moved on is dropped at the next look, its records with it.
    let Some(payload) = message.payload().filter(|_| still(leases, partition, *why)) else {
        return Ok(None);
    };
    lane.apply_record(payload, Position { partition, offset }, runtime, now_ms)?;
    if let Why::Restore { records, .. } = why {
        *records += 1;
    }
    Ok(Some(*why))
}

/// Whether `partition` still stands as it did when it was listed to be read for `why`.
fn still(leases: &Leases, partition: i32, why: Why) -> bool {
    match why {
        Why::Restore { epoch, .. } => {
            leases.standing(partition) == Standing::Restoring
                && leases.epoch(partition) == Some(epoch)
        }
        Why::Standby => leases.standing(partition) == Standing::Unowned,
    }
}

/// A client that asks partitions' high watermarks, read-uncommitted (see the module's second
/// invariant).
fn ends_client(settings: &Settings) -> Result<BaseConsumer, KafkaError> {
    settings
        .kafka
        .client_config()
        .set("group.id", &settings.group)
        .set("isolation.level", "read_uncommitted")
        .create()
}

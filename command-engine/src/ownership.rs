//! Which partitions this instance may write: one writer per partition, decided by Kafka.
//!
//! The command instances of a topic set form a consumer group (`<topic>-command` unless named).
//! The group's assignment says which instance owns which partition of each aggregate's topic;
//! nothing is elected here. The member never reads records: it joins, is assigned, and pauses
//! what it is assigned.
//!
//! Each partition of each lane has a [`Leases`] slot: `Unowned → Restoring → Owned → Releasing
//! → Unowned`. A command takes a [`Lease`] on its aggregate's partition before it reads the write
//! model and holds it until its record's fate is known; only an `Owned` partition gives leases.
//!
//! Invariants, and where they are kept:
//! - **A partition is written by one instance at a time.** On revocation the partition stops
//!   giving leases, and the rebalance callback returns (letting the group hand the partition to
//!   another member) only once every lease on it is released: its commands' batches committed
//!   or aborted and their requests answered ([`Leases::release`]). The new owner then reads the
//!   partition's tail, read-committed, before it takes a command ([`Standing::Restoring`],
//!   [`crate::restore`]).
//! - **A member the group has moved on from cannot commit.** Every transaction carries the
//!   group's metadata (member id and generation) through `send_offsets_to_transaction` (KIP-447;
//!   [`crate::batcher`]). A paused or partitioned instance resuming with a transaction open is
//!   refused by the group coordinator, its transaction aborts, and its requests hear `503`. A
//!   batch whose lease was released without its transaction ending (a release that timed out) is
//!   refused by the batcher itself ([`Lease::is_valid`]).
//! - **The next owner is not blocked for long by a dead one's open transaction.** Its restore
//!   waits at the last stable offset until that transaction ends; the producers' short
//!   `transaction.timeout.ms` (10 s by default, as Kafka Streams uses under exactly-once) bounds
//!   that wait.
//!
//! Why KIP-447 and not a transactional id per partition: the batcher's group commit puts many
//! partitions in one transaction, and per-partition producers would split every batch by
//! partition. With KIP-447 the instance keeps its few long-lived producers, and the fencing rides
//! on the group membership that already decides ownership.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, RebalanceProtocol,
};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::Notify;

use crate::sharded::lock;

/// Where this instance stands with one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Another instance owns it, or nobody does.
    Unowned,
    /// Assigned here; its tail is being read before commands are taken.
    Restoring,
    /// Taking commands.
    Owned,
    /// Being given up: no new commands; the ones in flight finish.
    Releasing,
}

impl Standing {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Restoring,
            2 => Self::Owned,
            3 => Self::Releasing,
            _ => Self::Unowned,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Self::Unowned => 0,
            Self::Restoring => 1,
            Self::Owned => 2,
            Self::Releasing => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unowned => "unowned",
            Self::Restoring => "restoring",
            Self::Owned => "owned",
            Self::Releasing => "releasing",
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    standing: AtomicU8,
    /// Changes at every assignment and every completed release: a lease of an older epoch no
    /// longer entitles its command to commit.
    epoch: AtomicU64,
    /// Leases held: commands between their ownership check and their record's fate, counted
    /// in two buckets so that a checkpoint can wait for the commands taken before a moment
    /// without stopping new ones ([`Leases::quiesce`]).
    in_flight: [AtomicUsize; 2],
    /// The bucket new leases count in.
    bucket: AtomicUsize,
    /// Kept warm here while another instance owns it ([`crate::restore`]).
    warm: AtomicBool,
}

impl Slot {
    fn held(&self) -> usize {
        self.in_flight[0].load(Ordering::SeqCst) + self.in_flight[1].load(Ordering::SeqCst)
    }

    /// Counts a lease in the current bucket; the bucket it counted in.
    fn hold(&self) -> usize {
        loop {
            let bucket = self.bucket.load(Ordering::SeqCst);
            self.in_flight[bucket].fetch_add(1, Ordering::SeqCst);
            // A switch between the two loads would leave this lease uncounted by the wait
            // that follows the switch: count it in the new bucket instead.
            if self.bucket.load(Ordering::SeqCst) == bucket {
                return bucket;
            }
            self.in_flight[bucket].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The standing of each partition of one topic.
#[derive(Debug)]
pub struct Leases {
    topic: String,
    slots: Box<[Slot]>,
}

/// A command's right to write its partition, held until its record's fate is known. Dropping
/// it is what lets a release of the partition finish.
#[derive(Debug)]
pub struct Lease {
    leases: Arc<Leases>,
    index: usize,
    epoch: u64,
    bucket: usize,
}

impl Lease {
    /// Whether the partition is still this instance's, in the ownership this lease was taken in.
    pub fn is_valid(&self) -> bool {
        self.leases.slots[self.index].epoch.load(Ordering::SeqCst) == self.epoch
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.slots[self.index].in_flight[self.bucket].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Leases {
    pub fn new(topic: &str, partitions: i32) -> Arc<Self> {
        let count = usize::try_from(partitions.max(1)).unwrap_or(1);
        Arc::new(Self {
            topic: topic.to_owned(),
            slots: (0..count).map(|_| Slot::default()).collect(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn slot(&self, partition: i32) -> Option<&Slot> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.slots.get(i))
    }

    /// A lease on `partition` if this instance owns it, else where it stands.
    pub fn acquire(self: &Arc<Self>, partition: i32) -> Result<Lease, Standing> {
        let index = usize::try_from(partition).unwrap_or(usize::MAX);
        let Some(slot) = self.slots.get(index) else {
            return Err(Standing::Unowned);
        };
        // Counted before the standing is read: a release that has set `Releasing` then waits
        // for this lease, and one that has not yet is seen as `Owned` here and waits too.
        let bucket = slot.hold();
        let standing = Standing::from_u8(slot.standing.load(Ordering::SeqCst));
        if standing != Standing::Owned {
            slot.in_flight[bucket].fetch_sub(1, Ordering::SeqCst);
            return Err(standing);
        }
        Ok(Lease {
            leases: Arc::clone(self),
            index,
            epoch: slot.epoch.load(Ordering::SeqCst),
            bucket,
        })
    }

    pub fn standing(&self, partition: i32) -> Standing {
        self.slot(partition).map_or(Standing::Unowned, |slot| {
            Standing::from_u8(slot.standing.load(Ordering::SeqCst))
        })
    }

    /// Partitions with this standing.
    pub fn with(&self, standing: Standing) -> Vec<i32> {
        (0..self.slots.len())
            .filter_map(|i| i32::try_from(i).ok())
            .filter(|&p| self.standing(p) == standing)
            .collect()
    }

    pub fn partitions(&self) -> i32 {
        i32::try_from(self.slots.len()).unwrap_or(i32::MAX)
    }

    /// The partition's current epoch.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.slot(partition)
            .map(|slot| slot.epoch.load(Ordering::SeqCst))
    }

    /// Says whether this instance keeps `partition` warm for its owner.
    pub fn set_warm(&self, partition: i32, warm: bool) {
        if let Some(slot) = self.slot(partition) {
            slot.warm.store(warm, Ordering::Relaxed);
        }
    }

    /// The partitions this instance keeps warm for their owners.
    pub fn warm(&self) -> Vec<i32> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].warm.load(Ordering::Relaxed))
            .filter_map(|i| i32::try_from(i).ok())
            .collect()
    }

    /// Assigned here: restoring, in a new epoch, which it returns.
    pub fn assigned(&self, partition: i32) -> Option<u64> {
        let slot = self.slot(partition)?;
        let epoch = slot.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        slot.standing
            .store(Standing::Restoring.as_u8(), Ordering::SeqCst);
        Some(epoch)
    }

    /// Restored: owned, if it is still the assignment of `epoch`.
    pub fn restored(&self, partition: i32, epoch: u64) -> bool {
        let Some(slot) = self.slot(partition) else {
            return false;
        };
        slot.epoch.load(Ordering::SeqCst) == epoch
            && slot
                .standing
                .compare_exchange(
                    Standing::Restoring.as_u8(),
                    Standing::Owned.as_u8(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
    }

    /// Whether `epoch` is still the partition's current assignment and it is being restored.
    pub fn restoring(&self, partition: i32, epoch: u64) -> bool {
        self.slot(partition).is_some_and(|slot| {
            slot.epoch.load(Ordering::SeqCst) == epoch
                && Standing::from_u8(slot.standing.load(Ordering::SeqCst)) == Standing::Restoring
        })
    }

    /// Waits until every lease taken on `partition` before this call is released, at most
    /// until `deadline`, while new leases are taken as usual. Blocking; one caller at a time.
    /// What a checkpoint needs: once it returns true, every command that could have written
    /// below the partition's applied offset as read before the call has settled.
    pub fn quiesce(&self, partition: i32, deadline: Instant) -> bool {
        let Some(slot) = self.slot(partition) else {
            return true;
        };
        let before = slot.bucket.load(Ordering::SeqCst);
        slot.bucket.store(1 - before, Ordering::SeqCst);
        while slot.in_flight[before].load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Gives `partition` up: no new leases, then waits until every lease on it is released (its
    /// commands settled), at most until `deadline`. Blocking. Returns false if leases were still
    /// held at the deadline: their commands can no longer commit ([`Lease::is_valid`]).
    pub fn release(&self, partition: i32, deadline: Instant) -> bool {
        let Some(slot) = self.slot(partition) else {
            return true;
        };
        slot.standing
            .store(Standing::Releasing.as_u8(), Ordering::SeqCst);
        let mut drained = true;
        while slot.held() > 0 {
            if Instant::now() >= deadline {
                drained = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        slot.epoch.fetch_add(1, Ordering::SeqCst);
        slot.standing
            .store(Standing::Unowned.as_u8(), Ordering::SeqCst);
        drained
    }
}

/// What the group's rebalances change here.
#[derive(Clone)]
struct Rebalancer {
    leases: HashMap<String, Arc<Leases>>,
    /// How long a release may wait for the commands in flight on a partition.
    handover: Duration,
    joined: Arc<AtomicBool>,
    rebalanced: Arc<Notify>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let listed: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let result = if cooperative {
                consumer.incremental_assign(tpl)
            } else {
                consumer.assign(tpl)
            };
            if let Err(error) = result {
                tracing::error!(%error, "could not take the assigned partitions");
                return;
            }
            // Membership only: nothing is read through this consumer.
            if let Err(error) = consumer.pause(tpl) {
                tracing::warn!(%error, "could not pause the assigned partitions");
            }
            for (topic, partition) in listed {
                let Some(leases) = self.leases.get(&topic) else {
                    continue;
                };
                // The lane's reader restores it, and then lets it take commands.
                if let Some(epoch) = leases.assigned(partition) {
                    tracing::info!(%topic, partition, epoch, "partition assigned; restoring it");
                }
            }
            self.joined.store(true, Ordering::Release);
        } else {
            if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                tracing::error!(?err, "rebalance error; giving up the assignment");
            }
            let lost = consumer.assignment_lost();
            let released: Vec<(String, i32)> = if cooperative {
                listed
            } else {
                self.leases
                    .iter()
                    .flat_map(|(topic, leases)| {
                        let mut held = leases.with(Standing::Owned);
                        held.extend(leases.with(Standing::Restoring));
                        held.into_iter().map(|p| (topic.clone(), p))
                    })
                    .collect()
            };
            // Every partition stops taking commands at once; then each waits for its own.
            for (topic, partition) in &released {
                if let Some(leases) = self.leases.get(topic)
                    && let Some(slot) = leases.slot(*partition)
                {
                    slot.standing
                        .store(Standing::Releasing.as_u8(), Ordering::SeqCst);
                }
            }
            let deadline = Instant::now() + self.handover;
            for (topic, partition) in &released {
                if let Some(leases) = self.leases.get(topic) {
                    let drained = leases.release(*partition, deadline);
                    if drained {
                        tracing::info!(%topic, partition, lost, "partition released");
                    } else {
                        tracing::error!(%topic, partition, lost, "partition released with commands still in flight; they cannot commit");
                    }
                }
            }
            let result = if cooperative {
                consumer.incremental_unassign(tpl)
            } else {
                consumer.unassign()
            };
            if let Err(error) = result {
                tracing::error!(%error, "could not give the revoked partitions back");
            }
        }
        // A permit, so a view being refreshed right now is refreshed again.
        self.rebalanced.notify_one();
    }
}

/// How the member joins its group.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    pub kafka: service_config::KafkaArgs,
    pub group_id: String,
    /// Static membership (`group.instance.id`): a restarted instance gets its partitions back
    /// without a rebalance; the id must be unique among running instances.
    pub instance_id: String,
    /// `<instance-id>@<advertised-url>`, how other members find this one.
    pub client_id: String,
    pub session_timeout: Duration,
    /// Longest a revoked partition waits for its commands in flight.
    pub handover: Duration,
}

/// This instance's membership of the command group: the consumer that holds it, polled on a
/// thread of its own.
pub struct Membership {
    /// The member's client settings; a member fenced for good is replaced by a new one.
    settings: rdkafka::ClientConfig,
    context: Rebalancer,
    seen: SeenMetadata,
    session_timeout: Duration,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}

impl Membership {
    /// Creates the member (not yet joined: see [`Membership::join`]). Assigned partitions turn
    /// `Restoring` in `leases`, for [`crate::restore`] to restore.
    pub fn new(config: &MembershipConfig, leases: Vec<Arc<Leases>>) -> Result<Self, KafkaError> {
        let context = Rebalancer {
            leases: leases.into_iter().map(|l| (l.topic.clone(), l)).collect(),
            handover: config.handover,
            joined: Arc::new(AtomicBool::new(false)),
            rebalanced: Arc::new(Notify::new()),
        };
        let session = config.session_timeout.as_millis();
        let settings = config
            .kafka
            .client_config()
            .set("group.id", &config.group_id)
            .set("group.instance.id", &config.instance_id)
            .set("client.id", &config.client_id)
            // Each topic's partitions spread over the instances: cooperative-sticky balances
            // the count over all topics, and could give one instance every order partition
            // and another every customer partition. Eager, so a rebalance pauses every
            // partition for a moment (a handover, then a restore of a tail of moments);
            // static membership keeps restarts from rebalancing at all.
            .set("partition.assignment.strategy", "roundrobin")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 4).max(100).to_string())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .clone();
        // Refused now rather than at the join: the settings are checked by creating a client.
        drop(settings.create_with_context::<_, BaseConsumer<Rebalancer>>(context.clone())?);
        Ok(Self {
            settings,
            context,
            seen: Arc::default(),
            session_timeout: config.session_timeout,
            stop: Arc::new(AtomicBool::new(false)),
            poller: Mutex::new(None),
        })
    }

    /// Joins the group with `topics` and keeps the membership alive on a thread of its own
    /// until [`Membership::leave`].
    ///
    /// A member that hits a fatal error (the coordinator fenced it: after a broker restart, a
    /// join it retried can leave a second member under the same static id) can never take
    /// part in the group again: its partitions are released, and a new member joins in its
    /// place a second later.
    pub fn join(&self, topics: &[&str]) -> Result<(), KafkaError> {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let (settings, context) = (self.settings.clone(), self.context.clone());
        let member = move || -> Result<BaseConsumer<Rebalancer>, KafkaError> {
            let consumer: BaseConsumer<Rebalancer> =
                settings.create_with_context(context.clone())?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer.subscribe(&names)?;
            Ok(consumer)
        };
        let mut consumer = member()?;
        let (stop, seen) = (Arc::clone(&self.stop), Arc::clone(&self.seen));
        let poller = std::thread::Builder::new()
            .name("command-group".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    // Serves heartbeats and rebalances; no record is ever fetched (all paused).
                    if let Some(Err(error)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::warn!(%error, "command group");
                    }
                    // After each poll, so a new generation is seen within one: a worker that
                    // still uses the old one is refused by the coordinator (safe, and rare).
                    let metadata = consumer.group_metadata().map(Arc::new);
                    *lock(&seen) = metadata;
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        tracing::error!(?code, %reason, "the command group member failed for good; a new one joins in its place");
                        *lock(&seen) = None;
                        std::thread::sleep(Duration::from_secs(1));
                        match member() {
                            Ok(replacement) => consumer = replacement,
                            Err(error) => {
                                tracing::error!(%error, "could not create a new command group member; retrying");
                            }
                        }
                    }
                }
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        *lock(&self.poller) = Some(poller);
        Ok(())
    }

    /// Whether the group has assigned this member its partitions at least once.
    pub fn joined(&self) -> bool {
        self.context.joined.load(Ordering::Acquire)
    }

    /// Woken after each rebalance this member takes part in.
    pub fn rebalanced(&self) -> Arc<Notify> {
        Arc::clone(&self.context.rebalanced)
    }

    /// The group membership a transaction must carry (KIP-447).
    pub fn fence(&self) -> Arc<dyn crate::batcher::Fence> {
        Arc::new(GroupFence(Arc::clone(&self.seen), self.session_timeout))
    }

    /// Stops the membership thread and closes the consumer (a static member does not leave
    /// the group: its partitions wait for it until the session timeout). Blocking.
    pub fn leave(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = lock(&self.poller).take()
            && poller.join().is_err()
        {
            tracing::error!("the command group thread panicked");
        }
    }
}

/// The group metadata as the membership thread last read it. librdkafka answers a request for
/// it through the client's main thread without a timeout; asked from the producer workers, a
/// broker lost at the wrong moment left them waiting for good.
type SeenMetadata = Arc<Mutex<Option<Arc<ConsumerGroupMetadata>>>>;

struct GroupFence(SeenMetadata, Duration);

impl std::fmt::Debug for GroupFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupFence")
    }
}

impl crate::batcher::Fence for GroupFence {
    fn group_metadata(&self) -> Option<Arc<ConsumerGroupMetadata>> {
        lock(&self.0).clone()
    }

    fn session_timeout(&self) -> Duration {
        self.1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_an_owned_partition_gives_leases() {
        let leases = Leases::new("t", 2);
        assert_eq!(leases.acquire(0).unwrap_err(), Standing::Unowned);
        let epoch = leases.assigned(0).unwrap();
        assert_eq!(leases.acquire(0).unwrap_err(), Standing::Restoring);
        assert!(leases.restored(0, epoch));
        let lease = leases.acquire(0).unwrap();
        assert!(lease.is_valid());
        assert_eq!(leases.acquire(1).unwrap_err(), Standing::Unowned);
        assert_eq!(leases.acquire(7).unwrap_err(), Standing::Unowned);
        drop(lease);
        assert!(leases.release(0, Instant::now()));
        assert_eq!(leases.acquire(0).unwrap_err(), Standing::Unowned);
    }

    /// A release waits for the leases in flight, and takes no new one meanwhile.
    #[test]
    fn a_release_waits_for_the_commands_in_flight() {
        let leases = Leases::new("t", 1);
        let epoch = leases.assigned(0).unwrap();
        assert!(leases.restored(0, epoch));
        let lease = leases.acquire(0).unwrap();
        let releasing = {
            let leases = Arc::clone(&leases);
            std::thread::spawn(move || leases.release(0, Instant::now() + Duration::from_secs(30)))
        };
        while leases.standing(0) != Standing::Releasing {
            std::thread::yield_now();
        }
        assert_eq!(leases.acquire(0).unwrap_err(), Standing::Releasing);
        assert!(
            lease.is_valid(),
            "in flight during the handover: may commit"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(!releasing.is_finished());
        drop(lease);
        assert!(releasing.join().unwrap());
        assert_eq!(leases.standing(0), Standing::Unowned);
    }

    /// A checkpoint waits for the leases taken before it, not for those taken after.
    #[test]
    fn quiescing_waits_for_earlier_leases_only() {
        let leases = Leases::new("t", 1);
        let epoch = leases.assigned(0).unwrap();
        assert!(leases.restored(0, epoch));
        let earlier = leases.acquire(0).unwrap();
        let waiting = {
            let leases = Arc::clone(&leases);
            std::thread::spawn(move || leases.quiesce(0, Instant::now() + Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(50));
        let later = leases.acquire(0).unwrap();
        assert!(!waiting.is_finished());
        drop(earlier);
        assert!(
            waiting.join().unwrap(),
            "done with a later lease still held"
        );
        assert!(
            !leases.quiesce(0, Instant::now()),
            "the later lease is waited for next time"
        );
        drop(later);
        assert!(leases.quiesce(0, Instant::now()));
    }

    /// A lease that outlived a release (it timed out) can never commit, even if the partition
    /// comes back: the epoch moved on.
    #[test]
    fn a_lease_outliving_its_ownership_is_invalid_forever() {
        let leases = Leases::new("t", 1);
        let first = leases.assigned(0).unwrap();
        assert!(leases.restored(0, first));
        let lease = leases.acquire(0).unwrap();
        assert!(!leases.release(0, Instant::now()));
        assert!(!lease.is_valid());
        let second = leases.assigned(0).unwrap();
        assert!(!leases.restored(0, first), "a stale restore does not own");
        assert!(leases.restored(0, second));
        assert!(!lease.is_valid());
    }
}

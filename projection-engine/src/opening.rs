//! Opening a projection: once every topic it reads exists, a consumer-group member over them,
//! a partition table and a group view per topic, and its runner, on a thread of its own.
//!
//! A projection is opened in the background, so that a replica may start before a topic is
//! first written; until it opens, its queries answer a retryable `503`. A start that fails (a
//! registry setting, a consumer) is retried rather than given up: giving up would leave the
//! replica serving a projection that never fills.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use shared_events::view::ReadModel;
use shared_events::{AvroEvent, EventCodec, WireError};
use tokio_util::sync::CancellationToken;

use crate::cluster::{self, Cluster};
use crate::projection::{Decoder, PartitionTable, RebalanceContext, Runner, Tables, namespace};
use crate::rebuild::{Rebuilder, ShadowPlan};
use crate::serving::{Served, ServedTopic, Slot};
use crate::standby::Standby;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` did not appear in time")]
    TopicMissing(String),
    #[error("the events' codec: {0}")]
    Codec(#[from] WireError),
    #[error(transparent)]
    RegistryAccess(#[from] service_config::RegistryAuthError),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("could not start the projection thread")]
    Thread(#[source] std::io::Error),
}

/// A consumer's settings for reading outside any group (assigned partitions, a report's or a
/// rebuild's): read-committed, nothing committed. `group` only names it to the broker.
pub(crate) fn assigned_reader(base: &ClientConfig, group: &str) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    config
}

/// Makes the decoder of a projection's records: once when it opens, and once per rebuild.
pub type MakeDecoder<D> = Arc<dyn Fn() -> Result<D, OpenError> + Send + Sync>;

/// What every projection of a replica shares to open: Kafka, the store, the timings.
#[derive(Debug, Clone)]
pub struct Environment {
    pub kafka: service_config::KafkaArgs,
    /// The consumer's settings besides the group and the engine's own: security, `client.id`
    /// (the replica's id and URL, which the group view reads), session and socket timeouts.
    pub consumer: ClientConfig,
    pub store: Arc<Store>,
    pub kafka_timeout: Duration,
    /// How often each topic's group view is refreshed when nothing changes.
    pub cluster_refresh: Duration,
    /// Events per second a rebuild applies at most; none for as fast as it can.
    pub rebuild_max_events_per_second: Option<u64>,
    /// Warm copies of each partition kept across the group (on other replicas than its
    /// owner); 0 for none.
    pub standby_replicas: usize,
    /// The replica's id: its standbys' share, and its static group membership.
    pub replica_id: String,
    /// Whether each projection's group member is static (`group.instance.id` = the replica
    /// id): a replica restarted within the session timeout gets its partitions back and
    /// nothing else moves.
    pub static_membership: bool,
}

/// One projection to open: its read model, its group, its topics by role, its decoder.
pub struct Opening<M: ReadModel, D> {
    pub model: M,
    pub slot: Arc<Slot>,
    pub group: String,
    /// `(role, topic)` for each of [`ReadModel::TOPICS`], in that order.
    pub topics: Vec<(&'static str, String)>,
    /// Makes the decoder of the projection's records, once the topics exist.
    pub decoder: MakeDecoder<D>,
    pub environment: Environment,
}

impl<M: ReadModel, D> std::fmt::Debug for Opening<M, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opening")
            .field("projection", &M::NAMESPACE)
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl<M: ReadModel + Clone, D: Decoder<M::Event>> Opening<M, D> {
    /// Waits for the topics, opens, and runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let env = &self.environment;
        let Some(partitions) = wait_for_topics(env, &self.topics, M::NAMESPACE, &shutdown).await
        else {
            return;
        };
        loop {
            let served = self.serve(&partitions, shutdown.clone()).await;
            match served {
                Ok(()) => return,
                Err(error) => tracing::error!(
                    %error,
                    projection = M::NAMESPACE,
                    "the projection could not start; retrying"
                ),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn serve(
        &self,
        partitions: &[i32],
        shutdown: CancellationToken,
    ) -> Result<(), OpenError> {
        let (env, group, topics, slot) = (&self.environment, &self.group, &self.topics, &self.slot);
        let tables: Vec<(String, Arc<PartitionTable>)> = topics
            .iter()
            .zip(partitions)
            .map(|((_, topic), count)| (topic.clone(), Arc::new(PartitionTable::new(*count))))
            .collect();
        let context = RebalanceContext::new(
            Arc::clone(&env.store),
            namespace::<M>(),
            Tables::new(tables.clone()),
        );
        let mut config = env.consumer.clone();
        if env.static_membership {
            // One member per replica and group: each projection has a group of its own.
            config.set("group.instance.id", &env.replica_id);
        }
        let consumer: StreamConsumer<RebalanceContext> = config
            .set("group.id", group)
            // Incremental: a rebalance moves only the partitions that change owner, and the
            // others keep serving throughout.
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Read-committed: aborted command batches are never applied.
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // Positions come from the store; the group's offsets only report lag, and are
            // stored explicitly after each store write.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            // The statistics carry each partition's last stable offset: lag and readiness.
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)?;
        let names: Vec<&str> = topics.iter().map(|(_, t)| t.as_str()).collect();
        consumer.subscribe(&names)?;
        let decoder = (self.decoder)()?;
        let mut served = Vec::new();
        for ((role, topic), (_, table)) in topics.iter().zip(&tables) {
            served.push(ServedTopic {
                role,
                name: topic.clone(),
                table: Arc::clone(table),
                cluster: Arc::new(Cluster::new(&env.kafka, group, topic, env.kafka_timeout)?),
            });
        }
        let refreshers: Vec<_> = served
            .iter()
            .map(|topic| {
                tokio::spawn(cluster::keep_fresh(
                    Arc::clone(&topic.cluster),
                    Arc::clone(&topic.table),
                    env.cluster_refresh,
                    shutdown.clone(),
                ))
            })
            .collect();
        slot.open(Served {
            group: group.to_owned(),
            topics: served,
        });
        tracing::info!(projection = M::NAMESPACE, %group, "projection opened");
        let standby = if env.standby_replicas > 0 {
            let clusters = served_clusters(slot);
            let context = RebalanceContext::standby(
                Arc::clone(&env.store),
                namespace::<M>(),
                Tables::new(tables.clone()),
            );
            let reader = assigned_reader(&env.consumer, &format!("{group}-standby"));
            Some(Standby::new(
                &reader,
                context,
                env.standby_replicas,
                &env.replica_id,
                clusters,
            )?)
        } else {
            None
        };
        let plan = ShadowPlan {
            model: self.model.clone(),
            decoder: Arc::clone(&self.decoder),
            store: Arc::clone(&env.store),
            namespace: namespace::<M>(),
            consumer: env.consumer.clone(),
            group: format!("{group}-rebuild"),
            topics: topics
                .iter()
                .map(|(_, topic)| topic.clone())
                .zip(partitions.iter().copied())
                .collect(),
            max_events_per_second: env.rebuild_max_events_per_second,
            kafka_timeout: env.kafka_timeout,
        };
        Runner {
            consumer,
            decoder,
            projection: self.model.clone(),
            store: Arc::clone(&env.store),
            stats: Arc::clone(&slot.stats),
            tables: Tables::new(tables),
            rebuild: Rebuilder::new(Arc::clone(&slot.rebuilds), plan),
            standby,
            standby_stats: Arc::clone(&slot.standby_stats),
        }
        .run(shutdown)
        .await;
        // A refresher may be in the middle of a Kafka call; it holds nothing the stop waits for.
        for refresher in refreshers {
            refresher.abort();
        }
        Ok(())
    }
}

/// Each topic's group view, of a projection just opened.
fn served_clusters(slot: &Slot) -> Vec<(String, Arc<Cluster>)> {
    slot.served()
        .map(|served| {
            served
                .topics
                .iter()
                .map(|topic| (topic.name.clone(), Arc::clone(&topic.cluster)))
                .collect()
        })
        .unwrap_or_default()
}

/// Each topic's partition count, once every topic exists; none if `shutdown` came first.
pub(crate) async fn wait_for_topics(
    env: &Environment,
    topics: &[(&'static str, String)],
    what: &str,
    shutdown: &CancellationToken,
) -> Option<Vec<i32>> {
    let mut partitions = Vec::new();
    for (_, topic) in topics {
        loop {
            let waited = tokio::select! {
                () = shutdown.cancelled() => return None,
                waited = wait_for_topic(&env.kafka, topic, env.kafka_timeout, Duration::from_secs(30)) => waited,
            };
            match waited {
                Ok(count) => {
                    partitions.push(count);
                    break;
                }
                Err(error) => tracing::warn!(%error, what, "waiting for the topics"),
            }
        }
    }
    Some(partitions)
}

/// Decodes the records of a projection over two topics, each with its own topic's codec, into
/// the projection's event.
#[derive(Debug)]
pub struct TwoTopics<A, B> {
    pub first_topic: String,
    pub first: EventCodec<A>,
    pub second: EventCodec<B>,
}

impl<A, B, E> Decoder<E> for TwoTopics<A, B>
where
    A: AvroEvent + 'static,
    B: AvroEvent + 'static,
    E: From<A> + From<B>,
{
    fn decode<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> futures::future::LocalBoxFuture<'a, Result<E, WireError>> {
        Box::pin(async move {
            if topic == self.first_topic {
                self.first.decode(bytes).await.map(E::from)
            } else {
                self.second.decode(bytes).await.map(E::from)
            }
        })
    }
}

/// The projection runner's thread. Dropped (a replica dropped without a stop, or its stop cut
/// short), it cancels the runner and waits for it, so that the consumer leaves the group and
/// the store closes before the process can exit under them.
#[derive(Debug)]
pub struct ProjectionThread {
    pub name: &'static str,
    shutdown: CancellationToken,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProjectionThread {
    /// Starts `run` on a thread of its own, with a runtime of its own: its RocksDB writes and
    /// its consumer never hold up the threads that serve requests or the stop signal.
    pub fn spawn<F>(
        name: &'static str,
        shutdown: CancellationToken,
        run: impl FnOnce(CancellationToken) -> F + Send + 'static,
    ) -> Result<Self, OpenError>
    where
        F: Future<Output = ()>,
    {
        Self::spawn_named(format!("projection-{name}"), name, shutdown, run)
    }

    /// As [`ProjectionThread::spawn`], the thread named `thread`.
    pub fn spawn_named<F>(
        thread: String,
        name: &'static str,
        shutdown: CancellationToken,
        run: impl FnOnce(CancellationToken) -> F + Send + 'static,
    ) -> Result<Self, OpenError>
    where
        F: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OpenError::Thread)?;
        let token = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(thread)
            .spawn(move || {
                runtime.block_on(run(token));
                // Blocking calls still running (a metadata request) hold nothing of the store;
                // the thread must not wait for them to end.
                runtime.shutdown_background();
            })
            .map_err(OpenError::Thread)?;
        Ok(Self {
            name,
            shutdown,
            handle: Some(handle),
        })
    }

    pub fn is_finished(&self) -> bool {
        self.handle
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    pub fn join(&mut self) {
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!(projection = self.name, "a projection's thread panicked");
        }
    }

    /// Leaves a runner that did not stop in time to the process's exit.
    pub fn abandon(mut self) {
        self.handle = None;
    }
}

impl Drop for ProjectionThread {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.join();
    }
}

/// The topic's partition count, waiting (bounded by `total`) for the topic to be created.
pub async fn wait_for_topic(
    kafka: &service_config::KafkaArgs,
    topic: &str,
    call_timeout: Duration,
    total: Duration,
) -> Result<i32, OpenError> {
    let probe: Arc<rdkafka::consumer::BaseConsumer> = Arc::new(kafka.client_config().create()?);
    let deadline = Instant::now() + total;
    loop {
        let metadata = {
            let (probe, topic) = (Arc::clone(&probe), topic.to_owned());
            tokio::task::spawn_blocking(move || probe.fetch_metadata(Some(&topic), call_timeout))
                .await?
        };
        match metadata {
            Ok(metadata) => {
                if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic)
                    && t.error().is_none()
                    && !t.partitions().is_empty()
                {
                    return i32::try_from(t.partitions().len())
                        .map_err(|_| OpenError::TopicMissing(topic.to_owned()));
                }
            }
            Err(error) => tracing::warn!(%error, "metadata request failed"),
        }
        if Instant::now() >= deadline {
            return Err(OpenError::TopicMissing(topic.to_owned()));
        }
        tracing::info!(topic, "waiting for the topic to exist");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

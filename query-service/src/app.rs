//! Wiring: configuration in, a running replica (projection runner, cluster view, HTTP server) out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use shared_events::EventCodec;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, CustomersSide};
use crate::cluster::{self, Cluster};
use crate::config::{Config, ConfigError};
use crate::feeds::FeedDecoder;
use crate::metrics::Metrics;
use crate::projection::{
    PartitionTable, ProjectionStats, RebalanceContext, Runner, Tables, namespace,
};
use crate::routing::Forwarder;
use crate::store::{Store, StoreError};
use customers::projection::CustomersProjection;
use http_edge::lifecycle::Tasks;
use orders::projection::OrdersProjection;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not open the store at {path}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("Kafka consumer")]
    Kafka(#[from] KafkaError),
    #[error("topic `{0}` did not appear in time")]
    TopicMissing(String),
    #[error("schema registry: {0}")]
    Registry(#[from] shared_events::WireError),
    #[error("could not listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a startup task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("could not start the projection thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    KafkaConnection(#[from] service_config::ConnectError),
    #[error(transparent)]
    RegistryAccess(#[from] service_config::RegistryAuthError),
}

/// A built replica: consuming, listening, serving once [`Application::run_until_stopped`] runs.
pub struct Application {
    port: u16,
    server: Server,
    shutdown: CancellationToken,
    /// The projection runner's own thread: its RocksDB writes and its consumer never take the
    /// HTTP runtime's thread, so requests and the stop signal are served while it catches up.
    projections: Vec<ProjectionThread>,
    tasks: Tasks,
    grace: Duration,
    stats: Arc<ProjectionStats>,
    customers_stats: Arc<ProjectionStats>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        config.validate()?;
        let connections = config.connection_cap()?;
        let listen_error = |source| StartupError::Listen {
            address: config.listen.clone(),
            source,
        };
        let listener = service_config::listen(&config.listen).map_err(listen_error)?;
        let address = listener.local_addr().map_err(listen_error)?;
        let replica_id = config
            .replica_id
            .clone()
            .unwrap_or_else(|| format!("query-{}", address.port()));
        let advertised_url = config
            .advertised_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        tracing::info!(?config, connections, %replica_id, %advertised_url, "starting query replica");

        let path = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || {
            Store::open(
                &path,
                &[
                    namespace::<OrdersProjection>(),
                    namespace::<CustomersProjection>(),
                ],
            )
        })
        .await?
        .map_err(|source| StartupError::Store {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let store = Arc::new(store);
        let kafka_timeout = Duration::from_millis(config.kafka_timeout_ms);
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        // Before anything else talks to Kafka: a wrong password, an untrusted certificate or an
        // unreachable broker stops the replica here, named, within the Kafka timeout.
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.check_connection(kafka_timeout)).await??;
        let registry_timeout = Duration::from_millis(config.registry_timeout_ms);
        config.registry.check(registry_timeout).await?;
        let partitions = wait_for_topic(
            &config.kafka,
            &config.topic,
            kafka_timeout,
            Duration::from_millis(config.topic_wait_ms),
        )
        .await?;
        let table = Arc::new(PartitionTable::new(partitions));
        let context = RebalanceContext::new(
            Arc::clone(&store),
            namespace::<OrdersProjection>(),
            Tables::new(vec![(config.topic.clone(), Arc::clone(&table))]),
        );
        let member = Member {
            config: &config,
            replica_id: &replica_id,
            advertised_url: &advertised_url,
        };
        let consumer = member.consumer(&config.group_id, context)?;
        let codec = EventCodec::new(
            config.registry.sr_settings(registry_timeout)?,
            &config.topic,
        )?;
        consumer.subscribe(&[&config.topic])?;

        let cluster = Arc::new(Cluster::new(
            &config.kafka,
            &config.group_id,
            &config.topic,
            kafka_timeout,
        )?);
        let stats = Arc::new(ProjectionStats::default());
        let customers_stats = Arc::new(ProjectionStats::default());
        let metrics = Arc::new(Metrics::new(&stats, &customers_stats));
        // Everything in the background stops together: the projections' threads watch the
        // same token as the tasks.
        let mut tasks = Tasks::default();
        let shutdown = tasks.token();
        let runner = Runner {
            consumer,
            decoder: codec,
            projection: OrdersProjection,
            store: Arc::clone(&store),
            stats: Arc::clone(&stats),
            tables: Tables::new(vec![(config.topic.clone(), Arc::clone(&table))]),
        };
        let mut projections = vec![spawn_projection(
            "projection-orders",
            shutdown.clone(),
            async move |token| runner.run(token).await,
        )?];
        let customers = Arc::new(std::sync::OnceLock::new());
        let opening = CustomersOpening {
            config: config.clone(),
            replica_id: replica_id.clone(),
            advertised_url: advertised_url.clone(),
            store: Arc::clone(&store),
            stats: Arc::clone(&customers_stats),
            side: Arc::clone(&customers),
        };
        projections.push(spawn_projection(
            "projection-customers",
            shutdown.clone(),
            async move |token| opening.run(token).await,
        )?);
        {
            let (cluster, table) = (Arc::clone(&cluster), Arc::clone(&table));
            let every = Duration::from_millis(config.cluster_refresh_ms);
            tasks.spawn("cluster view", move |token| {
                cluster::keep_fresh(cluster, table, every, token)
            });
        }

        let state = web::Data::new(AppState {
            store,
            table,
            cluster,
            forwarder: Forwarder::new(
                &replica_id,
                Duration::from_millis(config.forward_timeout_ms),
            ),
            metrics,
            stats: Arc::clone(&stats),
            customers,
            customers_stats: Arc::clone(&customers_stats),
            topic: config.topic.clone(),
            group: config.group_id.clone(),
            replica_id,
            consistency_wait: Duration::from_millis(config.consistency_wait_ms),
            max_ready_lag: config.max_ready_lag,
            admin_token: config.admin_token.clone(),
        });
        let document =
            web::Data::new(http_edge::docs::ApiDocument::new(crate::openapi::document()));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(document.clone())
                .configure(api::routes)
                .default_service(web::to(http_edge::problem::not_found))
        })
        .workers(config.http_workers)
        .max_connections(connections.div_ceil(config.http_workers))
        // In-flight requests get most of the grace to finish; idle keep-alive connections would
        // otherwise hold the stop for actix's default 30 s. The signal is ours to handle (see
        // `run_until_stopped`), so that the whole stop fits the grace.
        .shutdown_timeout(http_grace_secs(grace))
        .disable_signals()
        .listen(listener)
        .map_err(listen_error)?
        .run();
        Ok(Self {
            port: address.port(),
            server,
            shutdown,
            projections,
            tasks,
            grace,
            stats,
            customers_stats,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Counters of the orders projection's runner.
    pub fn stats(&self) -> Arc<ProjectionStats> {
        Arc::clone(&self.stats)
    }

    /// Counters of the customers projection's runner.
    pub fn customers_stats(&self) -> Arc<ProjectionStats> {
        Arc::clone(&self.customers_stats)
    }

    /// Serves until SIGTERM or Ctrl-C (or a stop through [`Application::handle`]), then stops
    /// within the grace: the projection stops at once (its store is consistent after every
    /// batch) and leaves the group, in-flight requests finish, the store closes. What has not
    /// stopped by the end of the grace is abandoned.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = std::pin::pin!(self.server);
        let (served, deadline) = tokio::select! {
            served = &mut server => (served, Instant::now() + self.grace),
            () = http_edge::lifecycle::terminate_signal() => {
                let deadline = Instant::now() + self.grace;
                tracing::info!(grace_ms = self.grace.as_millis(), "stopping");
                self.shutdown.cancel();
                // The server future runs the stop: it must be polled while the stop is awaited.
                let ((), served) = tokio::join!(handle.stop(true), &mut server);
                (served, deadline)
            }
        };
        self.shutdown.cancel();
        self.tasks
            .stop(tokio::time::Instant::from_std(deadline))
            .await;
        for mut projection in self.projections {
            while !projection.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if projection.is_finished() {
                projection.join();
            } else {
                tracing::error!(
                    projection = projection.name,
                    "the projection did not stop within the grace; abandoning it"
                );
                projection.abandon();
            }
        }
        tracing::info!("stopped: the projections left their groups and the store is closed");
        served
    }
}

/// The projection runner's thread. Dropped (a replica dropped without a stop, or its stop cut
/// short), it cancels the runner and waits for it, so that the consumer leaves the group and
/// the store closes before the process can exit under them.
#[derive(Debug)]
struct ProjectionThread {
    name: &'static str,
    shutdown: CancellationToken,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProjectionThread {
    fn is_finished(&self) -> bool {
        self.handle
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    fn join(&mut self) {
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!(projection = self.name, "the projection thread panicked");
        }
    }

    /// Leaves a runner that did not stop in time to the process's exit.
    fn abandon(mut self) {
        self.handle = None;
    }
}

impl Drop for ProjectionThread {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.join();
    }
}

/// Starts a projection on a thread of its own, with a runtime of its own: its RocksDB writes
/// never hold up the threads that serve requests or the stop signal.
fn spawn_projection<F>(
    name: &'static str,
    shutdown: CancellationToken,
    run: impl FnOnce(CancellationToken) -> F + Send + 'static,
) -> Result<ProjectionThread, StartupError>
where
    F: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Thread)?;
    let token = shutdown.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(run(token));
            // Blocking calls still running (a metadata request) hold nothing of the store; the
            // thread must not wait for them to end.
            runtime.shutdown_background();
        })
        .map_err(StartupError::Thread)?;
    Ok(ProjectionThread {
        name,
        shutdown,
        handle: Some(handle),
    })
}

/// This replica as a member of a projection's consumer group.
struct Member<'a> {
    config: &'a Config,
    replica_id: &'a str,
    advertised_url: &'a str,
}

impl Member<'_> {
    fn consumer(
        &self,
        group: &str,
        context: RebalanceContext,
    ) -> Result<StreamConsumer<RebalanceContext>, KafkaError> {
        let config = self.config;
        config
            .kafka
            .client_config()
            .set("group.id", group)
            // Other replicas find this one's URL in the group description.
            .set(
                "client.id",
                cluster::client_id(self.replica_id, self.advertised_url),
            )
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            // Positions come from the store; the group's offsets only report lag, and are
            // stored explicitly after each store write.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout_ms / 4).max(250).to_string(),
            )
            .set("socket.timeout.ms", config.kafka_timeout_ms.to_string())
            // The statistics carry each partition's last stable offset: the lag and readiness.
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)
    }
}

/// Starts the customers projection once both its topics exist: a replica may well be up before
/// the customers topic is first written. Until then customer queries answer `503`.
struct CustomersOpening {
    config: Config,
    replica_id: String,
    advertised_url: String,
    store: Arc<Store>,
    stats: Arc<ProjectionStats>,
    side: Arc<std::sync::OnceLock<CustomersSide>>,
}

impl CustomersOpening {
    async fn run(self, shutdown: CancellationToken) {
        let config = &self.config;
        let kafka_timeout = Duration::from_millis(config.kafka_timeout_ms);
        let mut partitions = Vec::new();
        for topic in [&config.customers_topic, &config.topic] {
            loop {
                let waited = tokio::select! {
                    () = shutdown.cancelled() => return,
                    waited = wait_for_topic(&config.kafka, topic, kafka_timeout, Duration::from_secs(30)) => waited,
                };
                match waited {
                    Ok(count) => {
                        partitions.push(count);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the customers projection waits for its topics");
                    }
                }
            }
        }
        let (customers_partitions, orders_partitions) = (partitions[0], partitions[1]);
        // A start that fails (the registry's settings, a consumer) is retried: giving up would
        // leave the replica ready while every customer query answers 503.
        loop {
            match self
                .serve(customers_partitions, orders_partitions, shutdown.clone())
                .await
            {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(%error, "the customers projection could not start; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    async fn serve(
        &self,
        customers_partitions: i32,
        orders_partitions: i32,
        shutdown: CancellationToken,
    ) -> Result<(), StartupError> {
        let config = &self.config;
        let group = config.customers_group();
        let kafka_timeout = Duration::from_millis(config.kafka_timeout_ms);
        let registry_timeout = Duration::from_millis(config.registry_timeout_ms);
        let customers = Arc::new(PartitionTable::new(customers_partitions));
        let orders = Arc::new(PartitionTable::new(orders_partitions));
        let tables = Tables::new(vec![
            (config.customers_topic.clone(), Arc::clone(&customers)),
            (config.topic.clone(), Arc::clone(&orders)),
        ]);
        let member = Member {
            config,
            replica_id: &self.replica_id,
            advertised_url: &self.advertised_url,
        };
        let context = RebalanceContext::new(
            Arc::clone(&self.store),
            namespace::<CustomersProjection>(),
            tables.clone(),
        );
        let consumer = member.consumer(&group, context)?;
        consumer.subscribe(&[&config.customers_topic, &config.topic])?;
        let decoder = FeedDecoder {
            customers_topic: config.customers_topic.clone(),
            customers: EventCodec::new(
                config.registry.sr_settings(registry_timeout)?,
                &config.customers_topic,
            )?,
            orders: EventCodec::new(
                config.registry.sr_settings(registry_timeout)?,
                &config.topic,
            )?,
        };
        let customers_cluster = Arc::new(Cluster::new(
            &config.kafka,
            &group,
            &config.customers_topic,
            kafka_timeout,
        )?);
        let orders_cluster = Arc::new(Cluster::new(
            &config.kafka,
            &group,
            &config.topic,
            kafka_timeout,
        )?);
        let every = Duration::from_millis(config.cluster_refresh_ms);
        let refreshers = [
            tokio::spawn(cluster::keep_fresh(
                Arc::clone(&customers_cluster),
                Arc::clone(&customers),
                every,
                shutdown.clone(),
            )),
            tokio::spawn(cluster::keep_fresh(
                Arc::clone(&orders_cluster),
                Arc::clone(&orders),
                every,
                shutdown.clone(),
            )),
        ];
        let _ = self.side.set(CustomersSide {
            topic: config.customers_topic.clone(),
            customers,
            orders,
            customers_cluster,
            orders_cluster,
        });
        tracing::info!(%group, "customers projection started");
        Runner {
            consumer,
            decoder,
            projection: CustomersProjection,
            store: Arc::clone(&self.store),
            stats: Arc::clone(&self.stats),
            tables,
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

/// Seconds in-flight requests get at a stop: the grace, less a second for the rest.
fn http_grace_secs(grace: Duration) -> u64 {
    grace.as_secs().saturating_sub(1).max(1)
}

/// The topic's partition count, waiting (bounded) for the topic to be created.
async fn wait_for_topic(
    kafka: &service_config::KafkaArgs,
    topic: &str,
    call_timeout: Duration,
    total: Duration,
) -> Result<i32, StartupError> {
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
                        .map_err(|_| StartupError::TopicMissing(topic.to_owned()));
                }
            }
            Err(error) => tracing::warn!(%error, "metadata request failed"),
        }
        if Instant::now() >= deadline {
            return Err(StartupError::TopicMissing(topic.to_owned()));
        }
        tracing::info!(topic, "waiting for the topic to exist");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

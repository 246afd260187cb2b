//! Wiring: configuration in, a running HTTP server and producer pool out.
//!
//! The aggregates this service runs are listed once, in [`aggregates`]; the lanes, the routes
//! and the API document are all built from that list.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use command_engine::batcher::{Batcher, StartError};
use command_engine::checkpoint::Checkpointer;
use command_engine::circuit::BrokerCircuit;
use command_engine::idempotency::IdempotencyIndex;
use command_engine::lane::{AnyLane, Lane, Visit};
use command_engine::metrics::Metrics;
use command_engine::ownership::{Membership, MembershipConfig};
use command_engine::pipeline::{Engine, now_ms};
use command_engine::snapshot::{SnapshotError, SnapshotStore};
use command_engine::topics::{TopicError, ensure_topic};
use futures::future::BoxFuture;
use http_edge::lifecycle::Tasks;
use partition_routing::forward::Forwarder;
use partition_routing::membership::{Cluster, client_id};
use shared_events::{Aggregate, EventCodec};
use tokio_util::sync::CancellationToken;

use crate::api::{self, Operations};
use crate::config::{Config, ConfigError};

/// Every aggregate this service runs, with its topic: adding one is one line here.
pub fn aggregates(config: &Config, visit: &mut impl Visit) {
    visit.aggregate::<orders::commands::OrderState>(&config.topic);
    visit.aggregate::<customers::commands::CustomerState>(&config.customers_topic);
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("schema registry: {0}")]
    Registry(#[from] shared_events::WireError),
    #[error(transparent)]
    Producers(#[from] StartError),
    #[error("could not listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a startup task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("could not join the command group")]
    Group(#[source] rdkafka::error::KafkaError),
    #[error("could not open the write model store in the data directory")]
    Store(#[from] SnapshotError),
    #[error("could not build the HTTP client")]
    HttpClient(#[from] reqwest::Error),
    #[error(transparent)]
    Kafka(#[from] service_config::ConnectError),
    #[error("could not start watching Kafka")]
    Circuit(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    RegistrySettings(#[from] service_config::RegistryAuthError),
}

/// A built command service, listening but not yet serving until [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    server: Server,
    batcher: Arc<Batcher>,
    membership: Arc<Membership>,
    checkpointer: Option<Arc<Checkpointer>>,
    /// Dropped with the service, which ends the watch.
    _circuit: command_engine::circuit::Watch,
    tasks: Tasks,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Checks the configuration, creates each aggregate's topic if needed, registers its event
    /// schema, starts the transactional producers, joins the command group and binds the
    /// listener. Partitions take commands once the group has assigned them here and their
    /// write models are restored from the log (`/health/ready` says when).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        config.validate()?;
        let connections = config.connection_cap()?;
        tracing::info!(?config, connections, "starting command service");
        let kafka_timeout = Duration::from_millis(config.kafka_timeout_ms);
        // Before anything else talks to Kafka: a wrong password, an untrusted certificate or an
        // unreachable broker stops the service here, named, within the Kafka timeout.
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.check_connection(kafka_timeout)).await??;
        let registry_timeout = Duration::from_millis(config.registry_timeout_ms);
        config.registry.check(registry_timeout).await?;

        // Bound first: the address is what the other instances are told to forward to.
        let listener =
            service_config::listen(&config.listen).map_err(|source| StartupError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let port = address.port();
        let advertised_url = config
            .advertised_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}"));
        let group_id = config.group_id();

        let store = match &config.data_dir {
            None => None,
            Some(dir) => Some(SnapshotStore::open(&dir.join("write-model"))?),
        };
        // One index for every lane: a key is the client's, whatever aggregate it names.
        let idempotency = IdempotencyIndex::journaled(
            Duration::from_secs(config.idempotency_retention_secs),
            config.idempotency_max_keys,
            store.is_some(),
        );
        if let Some(store) = &store {
            let started = std::time::Instant::now();
            let mut commands = Commands(Vec::new());
            aggregates(&config, &mut commands);
            let stored: Vec<(String, Vec<u8>)> = store.receipts().collect::<Result<_, _>>()?;
            let loaded = idempotency.load(stored.into_iter(), &commands.0, now_ms());
            tracing::info!(
                loaded,
                elapsed_ms = started.elapsed().as_millis(),
                "idempotency receipts loaded from the data directory"
            );
        }
        let mut opening = Opening {
            config: &config,
            group_id: &group_id,
            store: store.clone(),
            registry_timeout,
            kafka_timeout,
            idempotency: Arc::clone(&idempotency),
            lanes: Vec::new(),
        };
        aggregates(&config, &mut opening);
        let mut lanes: Vec<Arc<dyn AnyLane>> = Vec::new();
        for lane in opening.lanes {
            lanes.push(lane.await?);
        }

        let membership = Arc::new(
            Membership::new(
                &MembershipConfig {
                    kafka: config.kafka.clone(),
                    group_id: group_id.clone(),
                    instance_id: config.instance_id.clone(),
                    client_id: client_id(&config.instance_id, &advertised_url),
                    session_timeout: Duration::from_millis(config.session_timeout_ms),
                    // A command in flight settles within its request timeout.
                    handover: Duration::from_millis(config.request_timeout_ms),
                },
                lanes.iter().map(|lane| Arc::clone(lane.leases())).collect(),
            )
            .map_err(StartupError::Group)?,
        );

        // Producers before the group: initialising them fences a previous run of this instance
        // and aborts whatever it left open, so the restores that follow an assignment read a
        // log nobody else is extending.
        let metrics = Arc::new(Metrics::default());
        let batcher_config = config.batcher(Some(membership.fence()));
        let batch_metrics = metrics.batch.clone();
        let batcher = Arc::new(
            tokio::task::spawn_blocking(move || Batcher::start(batcher_config, batch_metrics))
                .await??,
        );
        let topics: Vec<&str> = lanes.iter().map(|lane| lane.topic()).collect();
        membership.join(&topics).map_err(StartupError::Group)?;

        let mut tasks = Tasks::default();
        {
            let index = Arc::clone(&idempotency);
            tasks.spawn("idempotency sweeper", move |stop| {
                sweep_idempotency(index, stop)
            });
        }
        {
            let lanes = lanes.clone();
            let settings = command_engine::restore::Settings {
                kafka: config.kafka.clone(),
                group: format!("{}-restore", config.instance_id),
                instance_id: config.instance_id.clone(),
                standby_replicas: config.standby_replicas,
                kafka_timeout,
            };
            tasks.spawn("partition readers", move |stop| {
                command_engine::restore::run(lanes, settings, stop)
            });
        }
        let checkpointer =
            store.map(|store| Checkpointer::new(lanes.clone(), Arc::clone(&idempotency), store));
        if let Some(checkpointer) = &checkpointer {
            let (checkpointer, every) = (
                Arc::clone(checkpointer),
                Duration::from_millis(config.checkpoint_interval_ms),
            );
            tasks.spawn("checkpointer", move |stop| {
                checkpointer.keep_taking(every, stop)
            });
        }
        {
            let (lanes, rebalanced) = (lanes.clone(), membership.rebalanced());
            tasks.spawn("command group view", move |stop| {
                keep_views_fresh(lanes, rebalanced, stop)
            });
        }
        let (circuit, circuit_watch) = BrokerCircuit::start(
            &config.kafka,
            Duration::from_millis(500),
            Duration::from_millis(1_000),
        )
        .map_err(StartupError::Circuit)?;

        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let engine = web::Data::new(Engine {
            batcher: Arc::clone(&batcher),
            circuit: Arc::clone(&circuit),
            metrics: Arc::clone(&metrics),
            max_body_bytes: config.max_body_bytes,
            request_timeout,
            instance_id: config.instance_id.clone(),
            // The owner answers within its own request timeout; a little more covers the hop.
            forwarder: Forwarder::new(
                &config.instance_id,
                request_timeout + Duration::from_secs(1),
            ),
        });
        let operations = web::Data::new(Operations {
            batcher: Arc::clone(&batcher),
            circuit,
            metrics,
            lanes: lanes.clone(),
            idempotency,
            registry_url: config.registry.url.clone(),
            http: config.registry.client_builder(registry_timeout)?.build()?,
            membership: Arc::clone(&membership),
            checkpointer: checkpointer.clone(),
            access: http_edge::access::Access {
                admin_token: config.admin_token.clone(),
                read_token: None,
            },
            instance_id: config.instance_id.clone(),
            advertised_url,
            group_id: group_id.clone(),
            served: std::sync::atomic::AtomicBool::new(false),
        });
        let document = web::Data::new(http_edge::docs::ApiDocument::new(crate::openapi::document(
            &config,
        )));
        let served_by = config.instance_id.clone();
        let server = HttpServer::new(move || {
            let mut app = App::new()
                // The instance that decided; a relayed answer keeps its owner's.
                .wrap(
                    actix_web::middleware::DefaultHeaders::new()
                        .add(("Served-By", served_by.clone())),
                )
                .app_data(engine.clone())
                .app_data(operations.clone())
                .app_data(document.clone())
                .configure(api::routes);
            for lane in &lanes {
                let lane = Arc::clone(lane);
                app = app.configure(move |config| lane.configure(config));
            }
            app.default_service(web::to(http_edge::problem::not_found))
        })
        .workers(config.http_workers)
        .max_connections(connections.div_ceil(config.http_workers))
        // On SIGTERM, requests waiting for their commit get as long as they would anyway.
        .shutdown_timeout(config.request_timeout_ms.div_ceil(1000))
        .listen(listener)
        .map_err(|source| StartupError::Listen {
            address: config.listen.clone(),
            source,
        })?
        .run();
        Ok(Self {
            port,
            server,
            batcher,
            membership,
            checkpointer,
            _circuit: circuit_watch,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server from elsewhere (tests, signal handlers).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server stops (SIGINT/SIGTERM or [`ServerHandle::stop`]), then drains the
    /// write queue: every accepted command is committed or answered with an error before return.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.tasks
            .stop(tokio::time::Instant::now() + Duration::from_secs(1))
            .await;
        let batcher = self.batcher;
        tracing::info!(
            queued = batcher.queue_depth(),
            "HTTP stopped; draining the write queue"
        );
        if tokio::task::spawn_blocking(move || batcher.close())
            .await
            .is_err()
        {
            tracing::error!("draining the write queue panicked");
        }
        // Everything committed is in the write model now: checkpoint it all, so that the next
        // start reads nothing again.
        if let Some(checkpointer) = self.checkpointer {
            match tokio::task::spawn_blocking(move || checkpointer.take()).await {
                Ok(Ok(stored)) => tracing::info!(?stored, "last checkpoint stored"),
                Ok(Err(error)) => tracing::error!(%error, "the last checkpoint failed"),
                Err(error) => tracing::error!(%error, "the last checkpoint panicked"),
            }
        }
        let membership = self.membership;
        if tokio::task::spawn_blocking(move || membership.leave())
            .await
            .is_err()
        {
            tracing::error!("leaving the command group panicked");
        }
        served
    }
}

/// Forgets idempotency receipts past the retention window, once a minute, until `stop`.
async fn sweep_idempotency(index: Arc<IdempotencyIndex>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => index.expire(now_ms()),
        }
    }
}

/// Every command name of the service's aggregates.
struct Commands(Vec<&'static str>);

impl Visit for Commands {
    fn aggregate<A: Aggregate>(&mut self, _topic: &str) {
        self.0.extend(A::COMMANDS.iter().map(|spec| spec.name));
    }
}

/// Describes the command group for each lane after every rebalance (again shortly after, while
/// the other members finish theirs) and every few seconds in between, until `stop`.
async fn keep_views_fresh(
    lanes: Vec<Arc<dyn AnyLane>>,
    rebalanced: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut soon = 0;
    loop {
        for lane in &lanes {
            if let Some(cluster) = lane.cluster().cloned() {
                let refreshed = tokio::task::spawn_blocking(move || cluster.refresh()).await;
                if let Ok(Err(error)) = refreshed {
                    tracing::warn!(%error, topic = lane.topic(), "could not describe the command group");
                }
            }
        }
        let pause = if soon > 0 {
            soon -= 1;
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = rebalanced.notified() => soon = 6,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Opens each aggregate's lane: its topic created if need be, its schema registered.
struct Opening<'a> {
    config: &'a Config,
    group_id: &'a str,
    store: Option<Arc<SnapshotStore>>,
    registry_timeout: Duration,
    kafka_timeout: Duration,
    idempotency: Arc<IdempotencyIndex>,
    lanes: Vec<BoxFuture<'a, Result<Arc<dyn AnyLane>, StartupError>>>,
}

impl Visit for Opening<'_> {
    fn aggregate<A: Aggregate>(&mut self, topic: &str) {
        let (config, group_id, registry_timeout, kafka_timeout) = (
            self.config,
            self.group_id,
            self.registry_timeout,
            self.kafka_timeout,
        );
        let store = self
            .store
            .clone()
            .map(|store| (store, config.cache_aggregates));
        let idempotency = Arc::clone(&self.idempotency);
        let topic = topic.to_owned();
        self.lanes.push(Box::pin(async move {
            let partitions = ensure_topic(
                &config.kafka,
                &topic,
                config.topic_partitions,
                config.topic_replication,
                kafka_timeout,
            )
            .await?;
            let codec =
                EventCodec::<A::Event>::new(config.registry.sr_settings(registry_timeout)?, &topic)?;
            let schema_id = codec.register().await?;
            tracing::info!(schema_id, %topic, partitions, aggregate = A::NAME, "event schema registered");
            let cluster = Cluster::new(&config.kafka, group_id, &topic, kafka_timeout)
                .map_err(StartupError::Group)?;
            let lane: Arc<dyn AnyLane> = Arc::new(Lane::<A>::new(
                &topic,
                codec,
                partitions,
                idempotency,
                Some(Arc::new(cluster)),
                store,
            ));
            Ok(lane)
        }));
    }
}

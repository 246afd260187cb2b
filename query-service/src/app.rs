//! Wiring: configuration in, a running replica (its projections, the HTTP server) out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use shared_events::EventCodec;
use shared_events::live::Timeline;
use shared_events::view::ReadModel;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::projection::{Decoder, ProjectionStats, namespace};
use crate::store::{Store, StoreError};
use customers::events::CustomerEvent;
use customers::live::CommerceTimeline;
use customers::projection::{CustomerFeed, CustomersProjection};
use orders::events::OrderEvent;
use orders::projection::OrdersProjection;
use projection_engine::access::Access;
use projection_engine::cluster;
use projection_engine::live::tail::{self, Limits, Live, Tail};
use projection_engine::metrics::Metrics;
use projection_engine::opening::{
    Environment, MakeDecoder, OpenError, Opening, ProjectionThread, TwoTopics, wait_for_topic,
};
use projection_engine::report::catalog::DecoderFor;
use projection_engine::report::ledger;
use projection_engine::report::scheduler::{self, Scheduler, Setup};
use projection_engine::routing::Forwarder;
use projection_engine::serving::{Serving, Slot};

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
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("could not listen on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a startup task failed")]
    Join(#[from] tokio::task::JoinError),
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
    /// Each projection's runner on its own thread: its RocksDB writes and its consumer never
    /// take the HTTP runtime's thread, so requests and the stop signal are served while it
    /// catches up.
    projections: Vec<ProjectionThread>,
    slots: Vec<Arc<Slot>>,
    reports: Arc<std::sync::OnceLock<Arc<Scheduler>>>,
    grace: Duration,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The projections a replica runs, in the order `/admin/cluster` takes the first of. Orders is
/// required: the replica waits for its topic at start and is not ready before it opens.
/// Customers opens whenever its topics appear.
fn projections(config: &Config, env: &Environment, runs: &mut Runs) -> Result<(), ConfigError> {
    let registry = config.registry.clone();
    let timeout = Duration::from_millis(config.registry_timeout_ms);
    let orders_topic = config.topic.clone();
    runs.run(
        config,
        env,
        OrdersProjection,
        true,
        config.group_id.clone(),
        Arc::new(move || {
            Ok(EventCodec::new(
                registry.sr_settings(timeout)?,
                &orders_topic,
            )?)
        }),
    )?;
    runs.run(
        config,
        env,
        CustomersProjection,
        false,
        config.customers_group(),
        customers_and_orders(config),
    )
}

/// The decoder of the customers and the orders topics' records.
fn customers_and_orders(config: &Config) -> MakeDecoder<TwoTopics<CustomerEvent, OrderEvent>> {
    let registry = config.registry.clone();
    let timeout = Duration::from_millis(config.registry_timeout_ms);
    let (customers_topic, orders_topic) = (config.customers_topic.clone(), config.topic.clone());
    Arc::new(move || {
        Ok(TwoTopics {
            first_topic: customers_topic.clone(),
            first: EventCodec::new(registry.sr_settings(timeout)?, &customers_topic)?,
            second: EventCodec::new(registry.sr_settings(timeout)?, &orders_topic)?,
        })
    })
}

/// The decoders of the topics' records, one per event type the reports are fed.
#[derive(Debug, Clone)]
pub struct Decoders {
    registry: service_config::RegistryArgs,
    timeout: Duration,
    orders_topic: String,
    customers_topic: String,
}

impl Decoders {
    fn codec<E: shared_events::AvroEvent>(&self, topic: &str) -> Result<EventCodec<E>, OpenError> {
        Ok(EventCodec::new(
            self.registry.sr_settings(self.timeout)?,
            topic,
        )?)
    }
}

impl DecoderFor<OrderEvent> for Decoders {
    type Decoder = EventCodec<OrderEvent>;
    fn decoder(&self) -> Result<Self::Decoder, OpenError> {
        self.codec(&self.orders_topic)
    }
}

impl DecoderFor<CustomerEvent> for Decoders {
    type Decoder = EventCodec<CustomerEvent>;
    fn decoder(&self) -> Result<Self::Decoder, OpenError> {
        self.codec(&self.customers_topic)
    }
}

impl DecoderFor<CustomerFeed> for Decoders {
    type Decoder = TwoTopics<CustomerEvent, OrderEvent>;
    fn decoder(&self) -> Result<Self::Decoder, OpenError> {
        Ok(TwoTopics {
            first_topic: self.customers_topic.clone(),
            first: self.codec(&self.customers_topic)?,
            second: self.codec(&self.orders_topic)?,
        })
    }
}

/// Starts the reports again every few seconds until they start (the broker was slow or away
/// when the replica started), or the replica stops.
async fn retry_reports(
    config: Config,
    env: Environment,
    replica_id: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    reports: Arc<std::sync::OnceLock<Arc<Scheduler>>>,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        if let Some(scheduler) =
            start_reports(&config, &env, &replica_id, &metrics, &shutdown).await
        {
            tracing::info!("the reports started");
            let _ = reports.set(scheduler);
            return;
        }
    }
}

/// Starts the reports: their ledger topic (created if it does not exist), the ledger followed,
/// runs claimed and started. Without the topic the replica serves no reports until it is
/// there, and says why.
async fn start_reports(
    config: &Config,
    env: &Environment,
    replica_id: &str,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Option<Arc<Scheduler>> {
    let kafka = config.kafka.client_config();
    let timeout = env.kafka_timeout;
    if let Err(error) = ledger::create_topic(
        &kafka,
        &config.reports_topic,
        config.reports_topic_replication,
        timeout,
    )
    .await
    {
        tracing::error!(%error, topic = %config.reports_topic, "the reports topic is not there; this replica runs no reports until it is");
        return None;
    }
    let decoders = Decoders {
        registry: config.registry.clone(),
        timeout: Duration::from_millis(config.registry_timeout_ms),
        orders_topic: config.topic.clone(),
        customers_topic: config.customers_topic.clone(),
    };
    let setup = Setup {
        reports: crate::api::reports(decoders).into_reports(),
        topics: [
            ("orders", config.topic.clone()),
            ("customers", config.customers_topic.clone()),
        ]
        .into_iter()
        .collect(),
        consumer: env.consumer.clone(),
        ledger_topic: config.reports_topic.clone(),
        replica: replica_id.to_owned(),
        timeout,
        limits: scheduler::Limits {
            max_running: config.reports_max_running,
            max_queued: config.reports_max_queued,
            max_events_per_second: config.reports_max_events_per_second,
            heartbeat: Duration::from_secs(1),
            stale_after: Duration::from_millis(config.reports_stale_ms),
            max_attempts: config.reports_max_attempts,
            keep: Duration::from_secs(config.reports_keep_hours.saturating_mul(3_600)),
        },
        metrics: Arc::clone(metrics),
    };
    match Scheduler::start(setup, shutdown.clone()) {
        Ok(scheduler) => Some(scheduler),
        Err(error) => {
            tracing::error!(%error, "the reports could not start; this replica runs no reports until they do");
            None
        }
    }
}

/// Starts the live tail: every partition of the orders and customers topics, once per replica,
/// into the timeline the live streams are served from.
fn live_tail(
    config: &Config,
    env: &Environment,
    live: &Arc<Live>,
    shutdown: &CancellationToken,
) -> Result<ProjectionThread, StartupError> {
    let tail = Tail {
        timeline: CommerceTimeline,
        topics: topics_of(config, CommerceTimeline::TOPICS)?,
        decoder: customers_and_orders(config),
        environment: env.clone(),
        live: Arc::clone(live),
    };
    Ok(ProjectionThread::spawn(
        "live",
        shutdown.clone(),
        async move |token| tail.run(token).await,
    )?)
}

/// `(role, topic)` for each of `roles`, from the configuration.
fn topics_of(
    config: &Config,
    roles: &[&'static str],
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    roles
        .iter()
        .map(|role| {
            config
                .topic_of(role)
                .map(|topic| (*role, topic.to_owned()))
                .ok_or_else(|| ConfigError(format!("no topic is configured for `{role}`")))
        })
        .collect()
}

/// The projections being started: their slots and their threads.
struct Runs {
    slots: Vec<Arc<Slot>>,
    threads: Vec<ProjectionThread>,
    shutdown: CancellationToken,
}

impl Runs {
    fn run<M, D>(
        &mut self,
        config: &Config,
        env: &Environment,
        model: M,
        required: bool,
        group: String,
        decoder: MakeDecoder<D>,
    ) -> Result<(), ConfigError>
    where
        M: ReadModel + Clone,
        D: Decoder<M::Event> + 'static,
    {
        let topics = topics_of(config, M::TOPICS)?;
        let slot = Arc::new(Slot::new::<M>(required));
        let opening = Opening {
            model,
            slot: Arc::clone(&slot),
            group,
            topics,
            decoder,
            environment: env.clone(),
        };
        let thread =
            ProjectionThread::spawn(M::NAMESPACE, self.shutdown.clone(), async move |token| {
                opening.run(token).await;
            })
            .map_err(|e| ConfigError(e.to_string()))?;
        self.slots.push(slot);
        self.threads.push(thread);
        Ok(())
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
            let timeline = tail::namespace::<CommerceTimeline>();
            let store = Store::open(
                &path,
                &[
                    namespace::<OrdersProjection>(),
                    namespace::<CustomersProjection>(),
                    timeline,
                ],
            )?;
            // The projections of another version are rebuilt beside their old views, which
            // serve meanwhile; the timeline's old entries would be sent as they are, so it
            // starts empty instead.
            if !store.is_current(timeline) {
                store.reset(timeline)?;
            }
            Ok::<_, projection_engine::store::StoreError>(store)
        })
        .await?
        .map_err(|source| StartupError::Store {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let kafka_timeout = Duration::from_millis(config.kafka_timeout_ms);
        let grace = Duration::from_millis(config.shutdown_grace_ms);
        // Before anything else talks to Kafka: a wrong password, an untrusted certificate or an
        // unreachable broker stops the replica here, named, within the Kafka timeout.
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.check_connection(kafka_timeout)).await??;
        config
            .registry
            .check(Duration::from_millis(config.registry_timeout_ms))
            .await?;
        // The orders topic is required: a replica started without it stops here, named.
        wait_for_topic(
            &config.kafka,
            &config.topic,
            kafka_timeout,
            Duration::from_millis(config.topic_wait_ms),
        )
        .await?;

        let mut consumer = config.kafka.client_config();
        consumer
            // Other replicas find this one's URL in the group description.
            .set(
                "client.id",
                cluster::client_id(&replica_id, &advertised_url),
            )
            .set("session.timeout.ms", config.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout_ms / 4).max(250).to_string(),
            )
            .set("socket.timeout.ms", config.kafka_timeout_ms.to_string())
            // librdkafka stops fetching a partition for this long once its local queue is full
            // (1 s by default): a consumer that drains the queue faster than that (a replay, a
            // report) would sit idle most of each second.
            .set("fetch.queue.backoff.ms", "10");
        let store = Arc::new(store);
        let environment = Environment {
            kafka: config.kafka.clone(),
            consumer,
            store: Arc::clone(&store),
            kafka_timeout,
            cluster_refresh: Duration::from_millis(config.cluster_refresh_ms),
            rebuild_max_events_per_second: config.rebuild_max_events_per_second,
            standby_replicas: config.standby_replicas,
            replica_id: replica_id.clone(),
            // A static member's id must be the same across restarts and unique in the group: the
            // default id (`query-<port>`) is neither across hosts.
            static_membership: config.static_membership && config.replica_id.is_some(),
        };
        // The projections' threads stop together, on one token.
        let shutdown = CancellationToken::new();
        let mut runs = Runs {
            slots: Vec::new(),
            threads: Vec::new(),
            shutdown: shutdown.clone(),
        };
        projections(&config, &environment, &mut runs)?;
        let Runs {
            slots, mut threads, ..
        } = runs;
        let metrics = Arc::new(Metrics::new("query_service", &slots));
        let live = Arc::new(Live::new::<CommerceTimeline>(
            Arc::clone(&store),
            Limits {
                max_streams: config.live_max_streams,
                buffer: config.live_buffer,
                heartbeat: Duration::from_millis(config.live_heartbeat_ms),
                retry: Duration::from_secs(1),
            },
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        threads.push(live_tail(&config, &environment, &live, &shutdown)?);
        let reports = Arc::new(std::sync::OnceLock::new());
        match start_reports(&config, &environment, &replica_id, &metrics, &shutdown).await {
            Some(scheduler) => {
                let _ = reports.set(scheduler);
            }
            None => {
                tokio::spawn(retry_reports(
                    config.clone(),
                    environment.clone(),
                    replica_id.clone(),
                    Arc::clone(&metrics),
                    shutdown.clone(),
                    Arc::clone(&reports),
                ));
            }
        }

        let catalog = crate::api::catalog();
        let table = crate::api::table(&catalog);
        let document = web::Data::new(http_edge::docs::ApiDocument::new(crate::openapi::document(
            &catalog,
        )));
        let state = web::Data::new(Serving {
            store,
            metrics,
            projections: slots.clone(),
            forwarder: Forwarder::new(
                &replica_id,
                Duration::from_millis(config.forward_timeout_ms),
            ),
            replica_id,
            standby_replicas: config.standby_replicas,
            consistency_wait: Duration::from_millis(config.consistency_wait_ms),
            max_ready_lag: config.max_ready_lag,
            access: Access {
                admin_token: config.admin_token.clone(),
                read_token: config.admin_read_token.clone(),
            },
            live: Some(Arc::clone(&live)),
            reports: Arc::clone(&reports),
        });
        let live = web::Data::from(live);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(live.clone())
                .app_data(document.clone())
                .configure(|routes| http_edge::routes::register(&table, routes))
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
            projections: threads,
            slots,
            reports,
            grace,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Counters of the projection of read model `M`.
    pub fn stats<M: ReadModel>(&self) -> Option<Arc<ProjectionStats>> {
        self.slots
            .iter()
            .find(|slot| slot.name() == M::NAMESPACE)
            .map(|slot| Arc::clone(&slot.stats))
    }

    /// Serves until SIGTERM or Ctrl-C (or a stop through [`Application::handle`]), then stops
    /// within the grace: the projections stop at once (the store is consistent after every
    /// batch) and leave their groups, in-flight requests finish, the store closes. What has not
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
        // Reports hand their runs back to the ledger, for another replica to claim at once.
        if let Some(reports) = self.reports.get() {
            reports.stopped(deadline).await;
        }
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

/// Seconds in-flight requests get at a stop: the grace, less a second for the rest.
fn http_grace_secs(grace: Duration) -> u64 {
    grace.as_secs().saturating_sub(1).max(1)
}

//! Wiring: configuration in, a running HTTP server and producer pool out.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use orders::events::OrderEvent;
use shared_events::EventCodec;

use crate::api::{self, AppState, fingerprint_of, now_ms, receipt_of};
use crate::batcher::{Batcher, StartError};
use crate::circuit::BrokerCircuit;
use crate::config::{Config, ConfigError};
use crate::idempotency::IdempotencyIndex;
use crate::metrics::Metrics;
use crate::replay::{ReplayError, replay};
use crate::topics::{TopicError, ensure_topic};
use crate::write_model::WriteModel;
use orders::commands::CommandKind;
use orders::commands::OrderState;

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
    #[error("rebuilding the write model from the topic failed")]
    Replay(#[from] ReplayError),
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
    /// Dropped with the service, which ends the watch.
    _circuit: crate::circuit::Watch,
    sweeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Checks the configuration, creates the topic if needed, registers the event schema,
    /// starts the transactional producers and binds the listener.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        config.validate()?;
        let connections = config.connection_cap()?;
        tracing::info!(?config, connections, "starting command service");
        let kafka_timeout = Duration::from_millis(config.kafka_timeout_ms);
        // Before anything else talks to Kafka: a wrong password, an untrusted certificate or an
        // unreachable broker stops the service here, named, within the Kafka timeout.
        let kafka = config.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.check_connection(kafka_timeout)).await??;
        ensure_topic(
            &config.kafka,
            &config.topic,
            config.topic_partitions,
            config.topic_replication,
            kafka_timeout,
        )
        .await?;
        let registry_timeout = Duration::from_millis(config.registry_timeout_ms);
        config.registry.check(registry_timeout).await?;
        let codec = EventCodec::<OrderEvent>::new(
            config.registry.sr_settings(registry_timeout)?,
            &config.topic,
        )?;
        let schema_id = codec.register().await?;
        tracing::info!(schema_id, topic = %config.topic, "event schema registered");

        // Producers first: initialising them fences a previous instance and aborts whatever it
        // left open, so the replay below reads a log nobody else is extending.
        let metrics = Arc::new(Metrics::default());
        let batcher_config = config.batcher();
        let batch_metrics = metrics.batch.clone();
        let batcher = Arc::new(
            tokio::task::spawn_blocking(move || Batcher::start(batcher_config, batch_metrics))
                .await??,
        );

        let model = Arc::new(WriteModel::<OrderState>::default());
        let idempotency = IdempotencyIndex::new(
            Duration::from_secs(config.idempotency_retention_secs),
            config.idempotency_max_keys,
        );
        let started = std::time::Instant::now();
        let now = now_ms();
        let replayed = replay(
            &config.kafka,
            &format!("{}-replay", config.instance_id),
            &config.topic,
            &codec,
            Duration::from_millis(config.replay_timeout_ms),
            |event: OrderEvent, position| {
                model.apply_from_log(&event);
                if let Some(key) = event.envelope.idempotency_key.as_deref() {
                    let kind = CommandKind::of_payload(&event.payload);
                    idempotency.remember(
                        key,
                        fingerprint_of(&event, kind),
                        receipt_of(&event, kind, position),
                        event.envelope.occurred_at_ms,
                        now,
                    );
                }
            },
        )
        .await?;
        tracing::info!(
            records = replayed.records,
            orders = model.len(),
            idempotency_keys = idempotency.len(),
            gaps = model.gaps(),
            elapsed_ms = started.elapsed().as_millis(),
            "write model rebuilt from the topic"
        );
        let sweeper = tokio::spawn(sweep_idempotency(Arc::clone(&idempotency)));
        let (circuit, circuit_watch) = BrokerCircuit::start(
            &config.kafka,
            Duration::from_millis(500),
            Duration::from_millis(1_000),
        )
        .map_err(StartupError::Circuit)?;

        let listener =
            service_config::listen(&config.listen).map_err(|source| StartupError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                address: config.listen.clone(),
                source,
            })?
            .port();
        let state = web::Data::new(AppState {
            codec: Arc::new(codec),
            batcher: Arc::clone(&batcher),
            model,
            idempotency,
            metrics,
            topic: config.topic.clone(),
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            registry_url: config.registry.url.clone(),
            http: config.registry.client_builder(registry_timeout)?.build()?,
            circuit: Arc::clone(&circuit),
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
            _circuit: circuit_watch,
            sweeper,
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
        self.sweeper.abort();
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
        served
    }
}

/// Forgets idempotency receipts past the retention window, once a minute.
async fn sweep_idempotency(index: Arc<IdempotencyIndex>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        index.expire(now_ms());
    }
}

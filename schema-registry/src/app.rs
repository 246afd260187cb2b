//! Wiring: startup (topic, replay, listener) and the HTTP server.

use std::{fmt, net::SocketAddr, net::TcpListener};

use actix_web::{
    App, HttpServer,
    dev::{Server, ServerHandle},
    web,
};

use crate::{
    api,
    auth::{self, Access},
    config::Config,
    error::RegistryError,
    persistence::{self, KafkaLog},
    records::LogRecord,
    registry::Registry,
    store::Store,
    tls,
};

/// A built registry: state rebuilt from Kafka and the listener bound, ready
/// to serve once [`Application::run_until_stopped`] is awaited.
pub struct Application {
    server: Server,
    local_addr: SocketAddr,
}

impl fmt::Debug for Application {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Validates `config`, creates the topic if needed, replays it to
    /// rebuild the registry state, and binds the listener.
    ///
    /// Nothing is served before replay has finished, so clients never see
    /// a partially rebuilt registry.
    pub async fn build(config: Config) -> Result<Self, RegistryError> {
        config.validate()?;
        tracing::info!(?config, "starting schema registry");
        // Before anything else talks to Kafka: a wrong password, an untrusted certificate or an
        // unreachable broker stops the registry here, named, within the Kafka timeout.
        let kafka = config.kafka.clone();
        let timeout = std::time::Duration::from_millis(config.kafka_timeout_ms);
        tokio::task::spawn_blocking(move || kafka.check_connection(timeout))
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?
            .map_err(|e| RegistryError::InvalidConfig(e.to_string()))?;

        persistence::ensure_topic(&config).await?;
        let store = rebuild(persistence::replay(&config).await?);
        let (schemas, subjects, max_id) = store.stats();
        tracing::info!(schemas, subjects, max_id, "registry state rebuilt");

        let registry = web::Data::new(Registry::new(store, KafkaLog::new(&config)?));
        let listener = TcpListener::bind(&config.listen)?;
        let local_addr = listener.local_addr()?;
        let access = web::Data::new(Access::new(
            config.basic_auth.as_deref(),
            config.bearer_token.as_deref(),
        ));
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(registry.clone())
                .app_data(access.clone())
                .wrap(actix_web::middleware::from_fn(auth::authenticate))
                .configure(api::configure)
                .default_service(web::to(api::not_found))
        });
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        }
        // Signals are the binary's business (see main.rs); in-process users
        // such as tests stop the server through `handle()`.
        .disable_signals()
        .shutdown_timeout(5)
        .run();

        Ok(Self { server, local_addr })
    }

    /// The bound port (useful with `listen` port 0).
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to stop the server gracefully: `handle.stop(true).await`.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves requests until the server is stopped through [`Self::handle`].
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

fn rebuild(records: Vec<crate::records::EncodedRecord>) -> Store {
    let mut store = Store::default();
    for (key, value) in records {
        let applied = LogRecord::decode(&key, value.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|record| store.apply(record));
        // A record this version cannot understand must not keep the
        // registry from starting; everything else is still consistent.
        if let Err(error) = applied {
            tracing::warn!(
                key = %String::from_utf8_lossy(&key),
                %error,
                "skipping unreadable registry record"
            );
        }
    }
    store
}

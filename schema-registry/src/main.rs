//! `schema-registry` binary: configuration from flags, environment and an optional file,
//! graceful shutdown on Ctrl-C or SIGTERM.

use schema_registry::{Application, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let config: Config = service_config::parse().unwrap_or_else(|e| e.exit());
    let app = Application::build(config).await?;
    tracing::info!("schema registry listening on http://{}", app.local_addr());

    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    tokio::select! {
        result = server => return Ok(result??),
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    handle.stop(true).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

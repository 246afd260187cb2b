use command_service::{Application, Config};
use tracing_subscriber::EnvFilter;

// Every command allocates dozens of small short-lived objects across the HTTP threads and the
// producer threads; glibc's malloc spent a sixth of the service's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(service_config::DEFAULT_LOG_FILTER)),
        )
        .init();
    let config: Config = service_config::parse().unwrap_or_else(|e| e.exit());
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "command service listening");
    app.run_until_stopped().await?;
    Ok(())
}

use query_service::{Application, Config};
use tracing_subscriber::EnvFilter;

// Every query allocates a handful of small short-lived objects on the HTTP threads (the request,
// its headers, the answer); glibc's malloc showed up among the replica's hottest functions.
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
    tracing::info!(port = app.port(), "query replica listening");
    app.run_until_stopped().await?;
    Ok(())
}

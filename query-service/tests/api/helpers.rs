use std::time::Duration;

use actix_web::dev::ServerHandle;
use query_service::{Application, Config};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `cargo xtask test`, which starts Kafka and the registry")
    })
}

pub const PARTITIONS: i32 = 3;

/// A command service on a fresh topic.
pub struct Commands {
    pub address: String,
    pub topic: String,
    handle: ServerHandle,
}

impl Commands {
    pub async fn spawn() -> Self {
        let topic = format!("orders-test-{}", uuid::Uuid::new_v4());
        let mut config = command_service::Config::defaults();
        config.listen = "127.0.0.1:0".into();
        config.kafka_bootstrap = env("KAFKA_BOOTSTRAP");
        config.registry_url = env("SCHEMA_REGISTRY_URL");
        config.topic = topic.clone();
        config.topic_partitions = PARTITIONS;
        config.instance_id = format!("test-{}", uuid::Uuid::new_v4());
        config.kafka_timeout_ms = 5_000;
        config.request_timeout_ms = 15_000;
        let app = command_service::Application::build(config)
            .await
            .expect("the command service did not start");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        Self {
            address,
            topic,
            handle,
        }
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// A query replica with its own temporary store.
pub struct Replica {
    pub id: String,
    pub address: String,
    handle: ServerHandle,
    _data: tempfile::TempDir,
}

impl Replica {
    pub async fn spawn(topic: &str, group: &str, id: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".into();
        config.kafka_bootstrap = env("KAFKA_BOOTSTRAP");
        config.registry_url = env("SCHEMA_REGISTRY_URL");
        config.topic = topic.to_owned();
        config.group_id = group.to_owned();
        config.data_dir = data.path().to_path_buf();
        config.replica_id = Some(id.to_owned());
        config.session_timeout_ms = 6_000;
        let app = Application::build(config)
            .await
            .expect("the replica did not start");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        Self {
            id: id.to_owned(),
            address,
            handle,
            _data: data,
        }
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

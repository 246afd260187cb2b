use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::ServerHandle;
use query_service::projection::ProjectionStats;
use query_service::{Application, Config};
use serde_json::Value;

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
        Self::spawn_with(Self::config(&topic)).await
    }

    /// The test configuration of a command service on `topic`.
    pub fn config(topic: &str) -> command_service::Config {
        let mut config = command_service::Config::defaults();
        config.listen = "127.0.0.1:0".into();
        config.kafka = service_config::KafkaArgs::plain(env("KAFKA_BOOTSTRAP"));
        config.registry = service_config::RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));
        config.topic = topic.to_owned();
        config.customers_topic = customers_topic(topic);
        config.topic_partitions = PARTITIONS;
        config.instance_id = format!("test-{}", uuid::Uuid::new_v4());
        config.kafka_timeout_ms = 5_000;
        config.request_timeout_ms = 15_000;
        config
    }

    pub async fn spawn_with(config: command_service::Config) -> Self {
        let topic = config.topic.clone();
        let app = command_service::Application::build(config)
            .await
            .expect("the command service did not start");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        // Commands are taken once the command group has assigned the instance its partitions
        // and they are restored.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(format!("{address}/health/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                Instant::now() < deadline,
                "the command service was not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const READ_TOKEN: &str = "test-read-token";

/// The reports topic of a test's replicas.
pub fn reports_topic(orders_topic: &str) -> String {
    format!("{orders_topic}-reports")
}

/// The customers topic that goes with a test's orders topic.
pub fn customers_topic(orders_topic: &str) -> String {
    format!("{orders_topic}-customers")
}

/// A query replica with its own temporary store.
pub struct Replica {
    pub id: String,
    pub address: String,
    pub stats: Arc<ProjectionStats>,
    pub customers_stats: Arc<ProjectionStats>,
    handle: ServerHandle,
    /// The running replica; it has let go of its store once this ends.
    running: std::sync::Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
    pub data: Arc<tempfile::TempDir>,
}

impl Replica {
    pub async fn spawn(topic: &str, group: &str, id: &str) -> Self {
        Self::spawn_in(topic, group, id, Arc::new(tempfile::tempdir().unwrap())).await
    }

    /// A replica on an existing store directory (a restart).
    pub async fn spawn_in(
        topic: &str,
        group: &str,
        id: &str,
        data: Arc<tempfile::TempDir>,
    ) -> Self {
        let config = Self::config(topic, group, id, &data);
        Self::spawn_with(config, data).await
    }

    /// The test configuration of a replica.
    pub fn config(topic: &str, group: &str, id: &str, data: &tempfile::TempDir) -> Config {
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".into();
        config.kafka = service_config::KafkaArgs::plain(env("KAFKA_BOOTSTRAP"));
        config.registry = service_config::RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));
        config.topic = topic.to_owned();
        config.customers_topic = customers_topic(topic);
        config.group_id = group.to_owned();
        config.data_dir = data.path().to_path_buf();
        config.replica_id = Some(id.to_owned());
        config.session_timeout_ms = 6_000;
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.admin_read_token = Some(READ_TOKEN.into());
        config.reports_topic = reports_topic(topic);
        config.cluster_refresh_ms = 500;
        config
    }

    pub async fn spawn_with(config: Config, data: Arc<tempfile::TempDir>) -> Self {
        // The replicas' errors (or what `RUST_LOG` asks for) in the output of a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let id = config.replica_id.clone().unwrap_or_default();
        let app = Application::build(config)
            .await
            .expect("the replica did not start");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let stats = app
            .stats::<orders::projection::OrdersProjection>()
            .expect("the orders projection runs");
        let customers_stats = app
            .stats::<customers::projection::CustomersProjection>()
            .expect("the customers projection runs");
        let running = tokio::spawn(app.run_until_stopped());
        Self {
            id,
            address,
            stats,
            customers_stats,
            handle,
            running: std::sync::Mutex::new(Some(running)),
            data,
        }
    }

    /// Stops the replica and waits until it has stopped: its projections have left their
    /// groups and its store is closed.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
        let running = self.running.lock().unwrap().take();
        if let Some(running) = running {
            let _ = running.await;
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn order_body(customer: &str, quantity: u32) -> String {
    format!(
        r#"{{"customer_id":"{customer}","currency":"EUR","items":[{{"sku":"A-1","quantity":{quantity},"unit_price_cents":1250}}]}}"#
    )
}

/// A command's answer: the body and the consistency token.
pub struct Written {
    pub order_id: String,
    pub token: String,
}

pub async fn post(http: &reqwest::Client, url: &str, body: &str) -> Written {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    let token = response.headers()["consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    Written {
        order_id: body["order_id"].as_str().unwrap_or_default().to_owned(),
        token,
    }
}

/// Polls until `check` holds, or fails after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every replica reports ready and the group assigned every partition.
pub async fn wait_settled(http: &reqwest::Client, replicas: &[&Replica]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        let mut ready = true;
        for replica in replicas {
            let response = http
                .get(format!("{}/health/ready", replica.address))
                .send()
                .await;
            let (status, body) = match response {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            };
            ready &= status == 200;
            seen.push(format!("{} ready: {status} {body}", replica.id));
        }
        let cluster: Value = match http
            .get(format!("{}/admin/cluster", replicas[0].address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let members = cluster["replicas"].as_array().map_or(0, Vec::len);
        let owned: usize = cluster["replicas"].as_array().map_or(0, |m| {
            m.iter()
                .map(|r| r["partitions"].as_array().map_or(0, Vec::len))
                .sum()
        });
        if ready && members == replicas.len() && owned == PARTITIONS as usize {
            return;
        }
        seen.push(format!("cluster: {}", cluster["replicas"]));
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the replicas to settle:\n{}",
            seen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes a consumer group and with it every offset it committed; waits (bounded) until its
/// members have left, which Kafka requires.
pub async fn delete_group(group: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
        .create()
        .unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results = admin.delete_groups(&[group], &options).await.unwrap();
        match results.first() {
            Some(Ok(_)) => return,
            Some(Err((_, code))) => assert!(
                Instant::now() < deadline,
                "the group {group} was not deleted: {code:?}"
            ),
            None => panic!("no answer for the group {group}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A replica in its own process, for `kill -9`.
pub struct ReplicaProcess {
    pub id: String,
    pub address: String,
    pub child: Child,
    _data: tempfile::TempDir,
}

pub fn start_process(topic: &str, group: &str, id: &str) -> ReplicaProcess {
    start_process_with(topic, group, id, &[])
}

/// [`start_process`] with extra environment variables (later ones win).
pub fn start_process_with(
    topic: &str,
    group: &str,
    id: &str,
    extra: &[(&str, &str)],
) -> ReplicaProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_query-service"))
        .env("QUERY_LISTEN", format!("127.0.0.1:{port}"))
        .env("QUERY_REPLICA_ID", id)
        .env("QUERY_DATA_DIR", data.path())
        .env("QUERY_GROUP_ID", group)
        .env("QUERY_SESSION_TIMEOUT_MS", "6000")
        .env("QUERY_CLUSTER_REFRESH_MS", "500")
        .env("QUERY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("QUERY_ADMIN_READ_TOKEN", READ_TOKEN)
        .env("QUERY_REPORTS_TOPIC", reports_topic(topic))
        .env("ORDERS_TOPIC", topic)
        .env("CUSTOMERS_TOPIC", customers_topic(topic))
        .env("KAFKA_BOOTSTRAP", env("KAFKA_BOOTSTRAP"))
        .env("SCHEMA_REGISTRY_URL", env("SCHEMA_REGISTRY_URL"))
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ReplicaProcess {
        id: id.to_owned(),
        address: format!("http://127.0.0.1:{port}"),
        child,
        _data: data,
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Server-Sent Events message as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    /// Comment lines (`: …`), without the colon.
    pub comments: Vec<String>,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).unwrap()
    }
}

/// A client reading a live stream, message by message.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// Opens `url` (`Last-Event-ID` if given); panics unless it answers a `200` event stream.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let response = Self::request(url, last_event_id).await;
        if response.status() != 200 {
            let status = response.status();
            panic!(
                "{url}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{url}"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The answer to a stream request, whatever it is.
    pub async fn request(url: &str, last_event_id: Option<&str>) -> reqwest::Response {
        // No overall timeout: a stream lasts as long as the test reads it.
        let http = reqwest::Client::new();
        let mut request = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        tokio::time::timeout(Duration::from_secs(30), request.send())
            .await
            .expect("the stream did not answer within 30 s")
            .unwrap()
    }

    /// The next message, or none if the stream ended or `within` passed first.
    pub async fn next(&mut self, within: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message::default();
                for line in frame.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        message.comments.push(comment.trim().to_owned());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "id" => message.id = Some(value),
                        "event" => message.event = Some(value),
                        "data" => message.data = Some(value),
                        "retry" => message.retry = Some(value),
                        _ => {}
                    }
                }
                return Some(message);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next message that carries an event, skipping comments and position marks.
    pub async fn next_event(&mut self, within: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self.next(left).await?;
            if message.event.is_some() {
                return Some(message);
            }
        }
    }
}

/// The replica's `/metrics` text.
pub async fn metrics_of(address: &str) -> String {
    client()
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `address`'s readiness until it answers `200`, or fails after a minute.
pub async fn wait_ready(address: &str) {
    let http = client();
    eventually(Duration::from_secs(60), "readiness", || async {
        http.get(format!("{address}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use command_service::{Application, Config};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `cargo xtask test`, which starts Kafka and the registry")
    })
}

pub const PARTITIONS: i32 = 3;

/// The admin token of the services the tests start with one.
pub const ADMIN_TOKEN: &str = "command-admin-token";

pub struct TestApp {
    pub address: String,
    pub topic: String,
    pub customers_topic: String,
    pub client: reqwest::Client,
    handle: ServerHandle,
}

impl TestApp {
    pub async fn post_order(&self, body: &str) -> reqwest::Response {
        self.post("/orders", "application/json", body.to_owned())
            .await
    }

    /// A JSON `POST` to `path` with extra `headers`.
    pub async fn post_json_with(
        &self,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request failed")
    }

    pub async fn post(&self, path: &str, content_type: &str, body: String) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request failed")
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

pub fn config(topic: &str) -> Config {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".into();
    config.kafka = service_config::KafkaArgs::plain(env("KAFKA_BOOTSTRAP"));
    config.registry = service_config::RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));
    config.topic = topic.to_owned();
    config.customers_topic = format!("customers-test-{}", uuid::Uuid::new_v4());
    config.topic_partitions = PARTITIONS;
    config.instance_id = format!("test-{}", uuid::Uuid::new_v4());
    config.kafka_timeout_ms = 5_000;
    config.request_timeout_ms = 15_000;
    config
}

/// A codec for `topic`'s values, through the test registry.
pub fn codec(topic: &str) -> shared_events::EventCodec<orders::events::OrderEvent> {
    let registry = service_config::RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));
    shared_events::EventCodec::new(registry.sr_settings(Duration::from_secs(5)).unwrap(), topic)
        .unwrap()
}

pub fn fresh_topic() -> String {
    format!("orders-test-{}", uuid::Uuid::new_v4())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(config(&fresh_topic())).await
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    let topic = config.topic.clone();
    let customers_topic = config.customers_topic.clone();
    // The service's errors (or what `RUST_LOG` asks for) in the output of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let app = Application::build(config)
        .await
        .expect("the command service did not start");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    // A client of its own, dropped with its connection: some tests count connections.
    wait_ready(&reqwest::Client::new(), &address, Duration::from_secs(60)).await;
    TestApp {
        address,
        topic,
        customers_topic,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        handle,
    }
}

/// Waits until the service at `address` says it is ready: the command group has assigned it
/// its partitions and they are restored.
pub async fn wait_ready(client: &reqwest::Client, address: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ready = client
            .get(format!("{address}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address} was not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A record as a read-committed consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub value: Vec<u8>,
}

/// Everything committed to `topic`, read from the beginning by an independent read-committed
/// consumer until the end of every partition (as of now) is reached.
pub fn read_committed(topic: &str) -> Vec<Record> {
    read_committed_from(&env("KAFKA_BOOTSTRAP"), topic)
}

/// [`read_committed`] on another broker.
pub fn read_committed_from(bootstrap: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("check-{}", uuid::Uuid::new_v4()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // The ends asked read-uncommitted: a read-committed client is told the last stable offset,
    // which stops short of every committed record behind a transaction still open.
    let watermarks: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, high) = watermarks
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.push(high);
    }
    consumer.assign(&assignment).unwrap();
    // Done when the read-committed position passes each partition's high watermark as of now.
    // The end of committed data alone (where a read-committed consumer sees "end of partition")
    // is not enough: an open transaction before it hides later committed records until the
    // transaction is completed or aborted.
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let positions = consumer.position().unwrap();
        let done = (0..PARTITIONS).all(|p| {
            let end = ends[p as usize];
            end == 0
                || positions
                    .find_partition(topic, p)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= end))
        });
        if done {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            Some(Ok(m)) => records.push(Record {
                key: String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                partition: m.partition(),
                offset: m.offset(),
                value: m.payload().unwrap().to_vec(),
            }),
        }
    }
}

/// The instance's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, address: &str) -> String {
    client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A gauge or counter of the instance's `/metrics`, summed over its label sets.
pub async fn metric(client: &reqwest::Client, address: &str, name: &str) -> f64 {
    metrics_text(client, address)
        .await
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn order_body(customer: &str) -> String {
    format!(
        r#"{{"customer_id":"{customer}","currency":"EUR","items":[{{"sku":"A-1","quantity":2,"unit_price_cents":1250}},{{"sku":"B-2","quantity":1,"unit_price_cents":99}}]}}"#
    )
}

/// `POST /orders` with `body` under an `Idempotency-Key`.
pub async fn place_body_with_key(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    body: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{address}/orders"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body)
        .send()
        .await
}

/// Places an order with an `Idempotency-Key`; the status and, on success, the order id.
pub async fn place_with_key(
    client: &reqwest::Client,
    address: &str,
    key: &str,
) -> (u16, Option<String>) {
    match place_body_with_key(client, address, key, order_body("c-load")).await {
        Err(_) => (0, None),
        Ok(response) => {
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body["order_id"].as_str().map(str::to_owned))
        }
    }
}

/// A child process that is killed when the test lets go of it, also when the test fails.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use std::time::Duration;

use actix_web::dev::ServerHandle;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
};
use reqwest::{Client, Method, StatusCode};
use schema_registry::{Application, Config};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub(crate) fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP must point at a Kafka broker for the schema-registry API tests, \
             e.g. KAFKA_BOOTSTRAP=127.0.0.1:19092 cargo test -p schema-registry"
        )
    })
}

pub(crate) fn fresh_topic() -> String {
    format!("schema-registry-test-{}", uuid::Uuid::new_v4())
}

pub(crate) fn config_for(topic: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        kafka: service_config::KafkaArgs::plain(kafka_bootstrap()),
        topic: topic.to_owned(),
        replication_factor: 1,
        kafka_timeout_ms: 10_000,
        ..Config::default()
    }
}

/// A running registry plus an HTTP client for it.
pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) topic: String,
    pub(crate) client: Client,
    handle: ServerHandle,
    server: JoinHandle<std::io::Result<()>>,
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) content_type: Option<String>,
    pub(crate) body: Value,
}

impl Reply {
    /// Asserts a Confluent error body and returns its message.
    #[track_caller]
    pub(crate) fn assert_error(&self, status: u16, code: u64) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["error_code"], json!(code), "body: {}", self.body);
        self.body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("error without message: {}", self.body))
            .to_owned()
    }

    #[track_caller]
    pub(crate) fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        &self.body
    }
}

impl TestApp {
    pub(crate) async fn spawn() -> Self {
        Self::spawn_on(&fresh_topic()).await
    }

    pub(crate) async fn spawn_on(topic: &str) -> Self {
        let app = Application::build(config_for(topic))
            .await
            .expect("registry should start");
        let base = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let server = tokio::spawn(app.run_until_stopped());
        let client = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            base,
            topic: topic.to_owned(),
            client,
            handle,
            server,
        }
    }

    /// Stops the server gracefully, keeping the topic.
    pub(crate) async fn stop(self) {
        self.handle.stop(true).await;
        self.server.await.unwrap().unwrap();
    }

    /// Stops the server and deletes its topic.
    pub(crate) async fn finish(self) {
        let topic = self.topic.clone();
        self.stop().await;
        delete_topic(&topic).await;
    }

    pub(crate) async fn request(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        Self::reply(request.send().await.unwrap()).await
    }

    pub(crate) async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {status} {text:?}"));
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> Reply {
        self.request(Method::PUT, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Reply {
        self.request(Method::DELETE, path, None).await
    }

    pub(crate) async fn register(&self, subject: &str, schema: &str) -> Reply {
        self.post(
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": schema }),
        )
        .await
    }

    /// Registers and returns the id, failing the test on any error.
    pub(crate) async fn register_ok(&self, subject: &str, schema: &str) -> i64 {
        let reply = self.register(subject, schema).await;
        reply.assert_ok()["id"].as_i64().unwrap()
    }

    pub(crate) async fn set_level(&self, subject: Option<&str>, level: &str) {
        let path = subject.map_or("/config".to_owned(), |s| format!("/config/{s}"));
        let reply = self.put(&path, json!({ "compatibility": level })).await;
        assert_eq!(reply.assert_ok(), &json!({ "compatibility": level }));
    }
}

pub(crate) async fn delete_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // Best effort: a leftover topic only costs disk space.
    let _ = admin.delete_topics(&[topic], &options).await;
}

/// A record schema `R` with the given field JSON snippets.
pub(crate) fn record(fields: &[&str]) -> String {
    format!(
        r#"{{"type":"record","name":"R","namespace":"test","fields":[{}]}}"#,
        fields.join(",")
    )
}

pub(crate) const A: &str = r#"{"name":"a","type":"int"}"#;
pub(crate) const B: &str = r#"{"name":"b","type":"string"}"#;
pub(crate) const B_DEFAULT: &str = r#"{"name":"b","type":"string","default":"x"}"#;
pub(crate) const C: &str = r#"{"name":"c","type":"long"}"#;

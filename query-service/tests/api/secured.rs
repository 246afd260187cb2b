//! The services against a secured Kafka and a registry that wants credentials, as a team on a
//! managed cluster runs them: the test broker's `SASL_SSL` listener (TLS with a CA made for it,
//! SCRAM credentials), and a registry requiring basic auth.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use serde_json::Value;
use service_config::{KafkaArgs, RegistryArgs};

use crate::helpers::*;

const REGISTRY_CREDENTIALS: &str = "registry-user:registry-pass";

/// The test broker's `SASL_SSL` listener with its user, overridden by `extra`.
fn secured_kafka(extra: &[(&str, &str)]) -> KafkaArgs {
    let mut properties = vec![
        ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ("sasl.mechanism".to_owned(), "SCRAM-SHA-256".to_owned()),
        ("sasl.username".to_owned(), env("KAFKA_SASL_USERNAME")),
        ("sasl.password".to_owned(), env("KAFKA_SASL_PASSWORD")),
        ("ssl.ca.location".to_owned(), env("KAFKA_CA_FILE")),
    ];
    for (key, value) in extra {
        properties.retain(|(k, _)| k != key);
        if !value.is_empty() {
            properties.push(((*key).to_owned(), (*value).to_owned()));
        }
    }
    KafkaArgs {
        bootstrap: env("KAFKA_SASL_SSL_BOOTSTRAP"),
        properties: properties
            .into_iter()
            .map(|(key, value)| service_config::KafkaProperty { key, value })
            .collect(),
    }
}

/// A schema registry of its own (on a fresh topic) that requires basic auth.
struct Registry {
    url: String,
    handle: ServerHandle,
}

impl Registry {
    async fn spawn(kafka: KafkaArgs) -> Self {
        Self::spawn_with(schema_registry::Config {
            kafka,
            basic_auth: Some(REGISTRY_CREDENTIALS.into()),
            ..schema_registry::Config::default()
        })
        .await
    }

    async fn spawn_with(config: schema_registry::Config) -> Self {
        let https = config.tls_cert_file.is_some();
        let config = schema_registry::Config {
            listen: "127.0.0.1:0".into(),
            topic: format!("_schemas-test-{}", uuid::Uuid::new_v4()),
            ..config
        };
        let app = schema_registry::Application::build(config)
            .await
            .expect("the registry did not start");
        let scheme = if https { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{}", app.port());
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        Self { url, handle }
    }

    fn access(&self, credentials: Option<&str>) -> RegistryArgs {
        let mut args = RegistryArgs::plain(self.url.clone());
        args.basic_auth = credentials.map(str::to_owned);
        args
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_works_through_sasl_ssl_and_a_registry_with_basic_auth() {
    let registry = Registry::spawn(secured_kafka(&[])).await;
    let access = registry.access(Some(REGISTRY_CREDENTIALS));
    let topic = format!("orders-test-{}", uuid::Uuid::new_v4());

    let mut config = Commands::config(&topic);
    config.kafka = secured_kafka(&[]);
    config.registry = access.clone();
    let commands = Commands::spawn_with(config).await;

    let group = format!("secured-{}", uuid::Uuid::new_v4());
    let mut replicas = Vec::new();
    for id in ["secured-a", "secured-b"] {
        let data = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Replica::config(&topic, &group, id, &data);
        config.kafka = secured_kafka(&[("sasl.mechanism", "SCRAM-SHA-512")]);
        config.registry = access.clone();
        replicas.push(Replica::spawn_with(config, data).await);
    }
    let http = client();
    wait_settled(&http, &[&replicas[0], &replicas[1]]).await;

    let written = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-secured", 2),
    )
    .await;
    for replica in &replicas {
        let response = http
            .get(format!("{}/orders/{}", replica.address, written.order_id))
            .header("consistency-token", &written.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", replica.id);
        let view: Value = response.json().await.unwrap();
        assert_eq!(view["order_id"], written.order_id.as_str());
        assert_eq!(view["customer_id"], "c-secured");
        assert_eq!(view["total_cents"], 2500);
    }

    // The registry itself refuses whoever has no credentials.
    let refused = http
        .get(format!("{}/subjects", registry.url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));

    for replica in &replicas {
        replica.stop().await;
    }
    commands.stop().await;
    registry.handle.stop(true).await;
}

/// Each service's start-up error with these Kafka settings.
async fn startup_errors(kafka: KafkaArgs) -> Vec<String> {
    let topic = format!("orders-test-{}", uuid::Uuid::new_v4());
    let registry = RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));

    let mut command = Commands::config(&topic);
    command.kafka = kafka.clone();
    command.registry = registry.clone();
    let command = command_service::Application::build(command).await.err();

    let data = tempfile::tempdir().unwrap();
    let mut replica = Replica::config(&topic, "never-joined", "failing", &data);
    replica.kafka = kafka.clone();
    replica.registry = registry;
    let replica = query_service::Application::build(replica).await.err();

    let registry = schema_registry::Application::build(schema_registry::Config {
        listen: "127.0.0.1:0".into(),
        kafka,
        ..schema_registry::Config::default()
    })
    .await
    .err();
    vec![
        command.map_or_else(|| "command service started".to_owned(), |e| e.to_string()),
        replica.map_or_else(|| "replica started".to_owned(), |e| e.to_string()),
        registry.map_or_else(|| "registry started".to_owned(), |e| e.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_kafka_password_stops_every_service_at_start_naming_sasl() {
    for error in startup_errors(secured_kafka(&[("sasl.password", "not-the-password")])).await {
        assert!(error.contains("SASL authentication"), "{error}");
        assert!(
            !error.contains("not-the-password"),
            "the password leaked: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_untrusted_broker_certificate_stops_every_service_at_start_naming_it() {
    // Without the test CA, the broker's certificate chains to nothing this client trusts.
    for error in startup_errors(secured_kafka(&[("ssl.ca.location", "")])).await {
        assert!(error.contains("certificate"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_registry_credentials_stop_the_services_at_start_naming_them() {
    let registry = Registry::spawn(KafkaArgs::plain(env("KAFKA_BOOTSTRAP"))).await;
    for credentials in [Some("registry-user:wrong"), None] {
        let topic = format!("orders-test-{}", uuid::Uuid::new_v4());
        let mut command = Commands::config(&topic);
        command.registry = registry.access(credentials);
        let error = command_service::Application::build(command)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let named = if credentials.is_some() {
            "refused the basic auth credentials"
        } else {
            "refused no credentials"
        };
        assert!(error.contains(named), "{error}");
        assert!(error.contains("401"), "{error}");
        assert!(!error.contains("wrong"), "the password leaked: {error}");

        let data = tempfile::tempdir().unwrap();
        let mut replica = Replica::config(&topic, "never-joined", "failing", &data);
        replica.registry = registry.access(credentials);
        // The topic does not exist; the registry is checked before the replica waits for it.
        replica.topic_wait_ms = 60_000;
        let error = tokio::time::timeout(
            Duration::from_secs(30),
            query_service::Application::build(replica),
        )
        .await
        .expect("the replica hung instead of failing")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains(named), "{error}");
    }
    registry.handle.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_over_https_is_trusted_through_its_ca_and_takes_a_bearer_token() {
    let keystore = std::path::PathBuf::from(env("KAFKA_TLS_KEYSTORE"));
    let registry = Registry::spawn_with(schema_registry::Config {
        kafka: KafkaArgs::plain(env("KAFKA_BOOTSTRAP")),
        bearer_token: Some("registry-token".into()),
        tls_cert_file: Some(keystore.clone()),
        tls_key_file: Some(keystore),
        ..schema_registry::Config::default()
    })
    .await;
    assert!(registry.url.starts_with("https://"));
    let access = |token: &str, ca: bool| {
        let mut args = RegistryArgs::plain(registry.url.clone());
        args.bearer_token = Some(token.to_owned());
        args.ca_file = ca.then(|| env("KAFKA_CA_FILE").into());
        args
    };

    let topic = format!("orders-test-{}", uuid::Uuid::new_v4());
    let mut config = Commands::config(&topic);
    config.registry = access("registry-token", true);
    let commands = Commands::spawn_with(config).await;
    let response = client()
        .post(format!("{}/orders", commands.address))
        .header("content-type", "application/json")
        .body(order_body("c-https", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    commands.stop().await;

    let failure = |registry: RegistryArgs| {
        let mut config = Commands::config(&topic);
        config.instance_id = format!("test-{}", uuid::Uuid::new_v4());
        config.registry = registry;
        async move {
            command_service::Application::build(config)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        }
    };
    let untrusted = failure(access("registry-token", false)).await;
    assert!(untrusted.contains("certificate"), "{untrusted}");
    let wrong_token = failure(access("another-token", true)).await;
    assert!(
        wrong_token.contains("refused the bearer token"),
        "{wrong_token}"
    );
    registry.handle.stop(true).await;
}

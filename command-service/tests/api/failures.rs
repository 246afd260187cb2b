//! The write path under pressure and failure: a full queue, a zombie producer, a broker outage,
//! `kill -9` of the service under load, and nodes of a three-node cluster lost.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use local_kafka::process::free_port;
use local_kafka::{Broker, Cluster, KafkaConfig, KafkaRuntime};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use crate::helpers::{
    KillOnDrop, codec, config, env, fresh_topic, order_body, place_body_with_key, place_with_key,
    read_committed, read_committed_from, spawn_app, spawn_app_with, wait_ready,
};

#[tokio::test]
async fn a_full_queue_answers_429_at_once_and_writes_nothing_for_it() {
    let mut config = config(&fresh_topic());
    config.queue_capacity = 1;
    config.producer_workers = 1;
    config.max_batch = 1;
    config.linger_ms = 0;
    let app = spawn_app_with(config).await;
    let responses = futures::future::join_all((0..60).map(|i| {
        let app = &app;
        async move { app.post_order(&order_body(&format!("c-{i}"))).await }
    }))
    .await;
    let mut created = 0;
    let mut saturated = 0;
    for response in responses {
        match response.status().as_u16() {
            201 => created += 1,
            429 => {
                assert!(response.headers().contains_key("retry-after"));
                saturated += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        saturated > 0,
        "a queue of one must overflow under 60 concurrent commands"
    );
    assert_eq!(read_committed(&app.topic).len(), created);
    app.stop().await;
}

/// Retries a keyed placement until it is acknowledged.
async fn place_until_created(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    within: Duration,
) -> String {
    place_within(client, address, key, within)
        .await
        .unwrap_or_else(|status| panic!("{key} not acknowledged in {within:?} (last {status})"))
}

/// The id of the order placed with `key`, retried while the answer is retryable, for up to
/// `within`; else the last status. Any other answer fails the test.
async fn place_within(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    within: Duration,
) -> Result<String, u16> {
    let deadline = Instant::now() + within;
    loop {
        match place_with_key(client, address, key).await {
            (201, Some(id)) => return Ok(id),
            (status @ (0 | 429 | 503), _) if Instant::now() >= deadline => return Err(status),
            (0 | 429 | 503, _) => tokio::time::sleep(Duration::from_millis(300)).await,
            (status, _) => panic!("unexpected {status} for {key}"),
        }
    }
}

#[tokio::test]
async fn a_zombie_with_our_transactional_id_is_fenced_off_and_nothing_is_lost() {
    let mut config = config(&fresh_topic());
    config.producer_workers = 1;
    let transactional_id = format!("{}-0", config.instance_id);
    let app = spawn_app_with(config).await;
    let first = place_until_created(
        &app.client,
        &app.address,
        "fence-0",
        Duration::from_secs(30),
    )
    .await;

    // Another producer takes our transactional id (fencing ours) and leaves an aborted
    // transaction in the topic.
    let topic = app.topic.clone();
    tokio::task::spawn_blocking(move || {
        let zombie: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
            .set("transactional.id", &transactional_id)
            .create()
            .unwrap();
        zombie.init_transactions(Duration::from_secs(30)).unwrap();
        zombie.begin_transaction().unwrap();
        zombie
            .send(BaseRecord::to(&topic).key("zombie").payload("not an event"))
            .map_err(|(e, _)| e)
            .unwrap();
        zombie.flush(Duration::from_secs(10)).unwrap();
        zombie.abort_transaction(Duration::from_secs(10)).unwrap();
    })
    .await
    .unwrap();

    // The service replaces its fenced producer; retried commands all get through.
    let mut acknowledged = vec![first];
    for i in 1..6 {
        let key = format!("fence-{i}");
        acknowledged.push(
            place_until_created(&app.client, &app.address, &key, Duration::from_secs(60)).await,
        );
    }
    let keys: Vec<String> = read_committed(&app.topic)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert!(
        !keys.contains(&"zombie".to_owned()),
        "an aborted record became visible"
    );
    let mut sorted = keys.clone();
    sorted.sort();
    acknowledged.sort();
    assert_eq!(
        sorted, acknowledged,
        "every acknowledged order exactly once, nothing else"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_broker_outage_answers_503_in_bounded_time_then_recovers() {
    let (mut broker, _data) = private_broker().await;
    let bootstrap = broker.bootstrap();

    let mut config = config(&fresh_topic());
    config.kafka = service_config::KafkaArgs::plain(bootstrap.clone());
    config.kafka_timeout_ms = 3_000;
    config.request_timeout_ms = 8_000;
    let app = spawn_app_with(config).await;
    let before = place_until_created(
        &app.client,
        &app.address,
        "outage-0",
        Duration::from_secs(30),
    )
    .await;

    let mut broker = tokio::task::spawn_blocking(move || {
        broker.stop(Duration::from_secs(30));
        broker
    })
    .await
    .unwrap();
    // The service notices (readiness says so), then refuses new commands at once.
    let stopped_at = Instant::now();
    loop {
        let ready: serde_json::Value = app
            .client
            .get(format!("{}/health/ready", app.address))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["kafka_reachable"] == false {
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(10),
            "the outage went unnoticed: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("outage noticed after {:?}", stopped_at.elapsed());
    let started = Instant::now();
    let response = place_body_with_key(
        &app.client,
        &app.address,
        "outage-1",
        order_body("c-outage"),
    )
    .await
    .unwrap();
    let waited = started.elapsed();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let problem: serde_json::Value = response.json().await.unwrap();
    eprintln!("with the broker down: {status} after {waited:?}");
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "urn:problem-type:kafka-unreachable");
    assert!(retry_after);
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");

    let broker = tokio::task::spawn_blocking(move || {
        broker.restart().unwrap();
        broker
    })
    .await
    .unwrap();
    let back_at = Instant::now();
    let during = place_until_created(
        &app.client,
        &app.address,
        "outage-1",
        Duration::from_secs(120),
    )
    .await;
    let recovered = back_at.elapsed();
    eprintln!("first 201 {recovered:?} after the broker was back");
    assert!(
        recovered < Duration::from_secs(5),
        "recovered after {recovered:?}"
    );
    let after = place_until_created(
        &app.client,
        &app.address,
        "outage-2",
        Duration::from_secs(60),
    )
    .await;

    let records = read_committed_from(&bootstrap, &app.topic);
    let mut keys: Vec<String> = records.into_iter().map(|r| r.key).collect();
    keys.sort();
    let mut expected = vec![before, during, after];
    expected.sort();
    assert_eq!(
        keys, expected,
        "each acknowledged order once; the outage left no duplicate"
    );
    app.stop().await;
    drop(broker);
}

/// Commands waiting for their commit when the broker dies answer within 2 s (the circuit
/// opens), not at the request timeout: a `503` that says the outcome is not known yet.
/// Every `2xx` among them is in the log once the broker is back.
#[tokio::test]
async fn commands_in_flight_when_the_broker_dies_answer_at_once_not_at_the_request_timeout() {
    let (mut broker, _data) = private_broker().await;
    let bootstrap = broker.bootstrap();
    let mut config = config(&fresh_topic());
    config.kafka = service_config::KafkaArgs::plain(bootstrap.clone());
    config.kafka_timeout_ms = 5_000;
    config.request_timeout_ms = 30_000;
    // Longer than the outage: with the 10-s default, the restarted broker expires the
    // transactions that were open when it died as it loads them, and in one run of three that
    // left one hanging (see the README's known limits; it happens less often, not never, with
    // 60 s); this test is about the answers.
    config.transaction_timeout_ms = 60_000;
    let app = spawn_app_with(config).await;
    place_until_created(
        &app.client,
        &app.address,
        "in-flight-0",
        Duration::from_secs(30),
    )
    .await;

    // Eight clients placing orders back to back; each answer with when it was sent and came.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (http, address, stop) = (
                app.client.clone(),
                app.address.clone(),
                std::sync::Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let key = format!("in-flight-{client}-{n}");
                    let sent = Instant::now();
                    let response =
                        place_body_with_key(&http, &address, &key, order_body("c-flight")).await;
                    let (status, body) = match response {
                        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    };
                    answers.push((sent, Instant::now(), status, body));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    let mut broker = tokio::task::spawn_blocking(move || {
        broker.kill();
        broker
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let in_flight: Vec<_> = answers
        .iter()
        .filter(|(sent, answered, _, _)| *sent < killed_at && *answered > killed_at)
        .collect();
    let (slowest, slowest_answer) = answers
        .iter()
        .filter(|(_, answered, _, _)| *answered > killed_at)
        .map(|answer @ (sent, answered, _, _)| (*answered - (*sent).max(killed_at), answer))
        .max_by_key(|(took, _)| *took)
        .map(|(took, (sent, _, status, body))| {
            let sent = if *sent < killed_at {
                format!("{:?} before the kill", killed_at - *sent)
            } else {
                format!("{:?} after the kill", *sent - killed_at)
            };
            (took, format!("sent {sent}, answered {status} {body}"))
        })
        .unwrap_or_default();
    eprintln!(
        "{} answers, {} in flight at the kill; the slowest after the kill took {slowest:?}: {slowest_answer}",
        answers.len(),
        in_flight.len()
    );
    assert!(!in_flight.is_empty(), "the load had commands in flight");
    assert!(
        // At once, not at the 30-s request timeout: the circuit opens within two probes.
        slowest < Duration::from_secs(5),
        "a command waited {slowest:?} with the broker gone (the request timeout is 30 s): {slowest_answer}"
    );
    for (_, _, status, body) in &answers {
        assert!(
            *status == 201 || *status == 503,
            "every answer is a commit or a retryable 503: {status} {body}"
        );
    }
    // Caught waiting for its commit (sent before the kill, or in the moment before the circuit
    // opened): the outcome is not known yet.
    assert!(
        answers
            .iter()
            .filter(|(_, answered, _, _)| *answered > killed_at)
            .any(|(_, _, _, body)| body.contains("urn:problem-type:kafka-unavailable")),
        "a command caught waiting says its outcome is not known yet"
    );

    let broker = tokio::task::spawn_blocking(move || {
        broker.restart().unwrap();
        broker
    })
    .await
    .unwrap();
    let acknowledged: Vec<(String, String)> = answers
        .iter()
        .filter(|(_, _, status, _)| *status == 201)
        .map(|(_, _, _, body)| {
            let id = serde_json::from_str::<serde_json::Value>(body).unwrap()["order_id"]
                .as_str()
                .unwrap()
                .to_owned();
            (id, body.clone())
        })
        .collect();
    // After an unclean stop, a partition's records may stay above its high watermark until
    // something is written to it again: orders are placed (on every partition, likely) until
    // every acknowledged one is visible, or for 60 s. One truly lost stays missing. A partition
    // that the restarted single broker left behind a transaction it no longer knows of (the
    // README's known limits) takes no command for minutes, or until that transaction is aborted by
    // hand, so an order not taken within 5 s is given up for one with another key; the service
    // must take some.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut after, mut created) = (0, 0);
    loop {
        for _ in 0..8 {
            after += 1;
            let key = format!("in-flight-after-{after}");
            if place_within(&app.client, &app.address, &key, Duration::from_secs(5))
                .await
                .is_ok()
            {
                created += 1;
            }
        }
        let records = read_committed_from(&bootstrap, &app.topic);
        let mut last_read: HashMap<i32, i64> = HashMap::new();
        for record in &records {
            let last = last_read.entry(record.partition).or_insert(-1);
            *last = (*last).max(record.offset);
        }
        let counts =
            records
                .into_iter()
                .fold(HashMap::<String, usize>::new(), |mut counts, record| {
                    *counts.entry(record.key).or_default() += 1;
                    counts
                });
        let wrong: Vec<_> = acknowledged
            .iter()
            .filter(|(id, _)| counts.get(id) != Some(&1))
            .collect();
        if wrong.is_empty() && created > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged orders not in the log once: {wrong:?}; last offsets read \
             {last_read:?}; {created} of {after} orders taken after the restart"
        );
        eprintln!("{} acknowledged orders not visible yet", wrong.len());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    app.stop().await;
    drop(broker);
}

/// Waits until the command service answers `/health/live`.
/// A broker of the test's own, to stop, freeze or restart; its data lives as long as the
/// returned directory.
async fn private_broker() -> (Broker, tempfile::TempDir) {
    let runtime = KafkaRuntime::from_env().unwrap();
    let data = tempfile::tempdir().unwrap();
    let kafka = KafkaConfig::single(
        data.path().join("kafka"),
        free_port().unwrap(),
        free_port().unwrap(),
        3,
        "512m",
    );
    let log = data.path().join("kafka.log");
    let broker = tokio::task::spawn_blocking(move || Broker::start(&runtime, kafka, &log))
        .await
        .unwrap()
        .unwrap();
    (broker, data)
}

/// The command service as a process of its own, for `kill -9` and SIGTERM: the same port,
/// topic and instance id on every start, each run logging to its own file.
struct ServiceRuns {
    port: u16,
    topic: String,
    instance: String,
    settings: Vec<(&'static str, &'static str)>,
    logs: tempfile::TempDir,
}

impl ServiceRuns {
    fn new(name: &str, settings: &[(&'static str, &'static str)]) -> Self {
        Self {
            port: free_port().unwrap(),
            topic: fresh_topic(),
            instance: format!("{name}-{}", uuid::Uuid::new_v4()),
            settings: settings.to_vec(),
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&self, run: u32) -> KillOnDrop {
        let log = std::fs::File::create(self.logs.path().join(format!("run-{run}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_command-service"))
            .env("COMMAND_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("KAFKA_BOOTSTRAP", env("KAFKA_BOOTSTRAP"))
            .env("SCHEMA_REGISTRY_URL", env("SCHEMA_REGISTRY_URL"))
            .env("ORDERS_TOPIC", &self.topic)
            .env("ORDERS_TOPIC_PARTITIONS", "3")
            .env("COMMAND_INSTANCE_ID", &self.instance)
            .envs(self.settings.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    }
}

async fn wait_up(client: &reqwest::Client, address: &str) {
    wait_ready(client, address, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_command() {
    let runs = ServiceRuns::new("crash", &[]);
    let (topic, address) = (runs.topic.clone(), runs.address());
    let start = |run: u32| runs.start(run);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut service = start(1);
    wait_up(&client, &address).await;

    // Eight clients place orders until the service dies under them.
    let acknowledged_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(120);
    let clients = (0..8).map(|c| {
        let (client, address) = (client.clone(), address.clone());
        let acknowledged_so_far = std::sync::Arc::clone(&acknowledged_so_far);
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0.. {
                if Instant::now() > stop_at {
                    break;
                }
                let key = format!("crash-{c}-{n}");
                let (status, id) = place_with_key(&client, &address, &key).await;
                if status == 201 {
                    acknowledged_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                outcomes.push((key, status, id));
                if status == 0 {
                    break;
                }
            }
            outcomes
        })
    });
    let load = futures::future::join_all(clients);
    // Under load: killed once a good number of commands have been acknowledged (and more are
    // in flight), however fast or slow this machine is.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged_so_far.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "the service took no load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.kill().unwrap();
    service.wait().unwrap();
    let outcomes: Vec<(String, u16, Option<String>)> =
        load.await.into_iter().flat_map(Result::unwrap).collect();
    let acknowledged: HashMap<String, String> = outcomes
        .iter()
        .filter(|(_, status, _)| *status == 201)
        .map(|(key, _, id)| (key.clone(), id.clone().unwrap()))
        .collect();
    eprintln!(
        "kill -9 under load: {} commands sent, {} acknowledged before the kill",
        outcomes.len(),
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > 10,
        "too little load before the kill: {}",
        acknowledged.len()
    );

    // Restart: the new instance's producers fence the dead one's and abort its open
    // transactions. Then every acknowledged order is in the log exactly once.
    let mut service = start(2);
    wait_up(&client, &address).await;
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_committed(&topic)
    })
    .await
    .unwrap();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for record in &records {
        *per_key.entry(record.key.clone()).or_default() += 1;
    }
    assert!(
        per_key.values().all(|n| *n == 1),
        "an order id appears twice"
    );
    for id in acknowledged.values() {
        assert_eq!(
            per_key.get(id),
            Some(&1),
            "acknowledged order {id} is not in the log"
        );
    }

    // Every key, acknowledged or not, maps to exactly one order: acknowledged ones replay their
    // first answer (recovered from the log), the others were either committed (and replay) or
    // never written (and are written now).
    for (key, _, _) in &outcomes {
        let id = place_until_created(&client, &address, key, Duration::from_secs(30)).await;
        if let Some(first) = acknowledged.get(key) {
            assert_eq!(
                &id, first,
                "the retry of {key} after the restart got another order"
            );
        }
    }
    // A key recovered from the log still tells its request from another one: reusing it for a
    // different order is refused, as it was before the restart.
    let reused = acknowledged.keys().next().unwrap();
    let response = place_body_with_key(&client, &address, reused, order_body("c-someone-else"))
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        422,
        "a recovered key reused for another order"
    );
    let codec = codec(&topic);
    let records = tokio::task::spawn_blocking(move || read_committed(&topic))
        .await
        .unwrap();
    let mut keys_seen = HashSet::new();
    for record in &records {
        let event = codec.decode(&record.value).await.unwrap();
        let key = event.envelope.idempotency_key.unwrap();
        assert!(
            keys_seen.insert(key.clone()),
            "key {key} yielded two events"
        );
    }
    assert_eq!(keys_seen.len(), outcomes.len());
    service.kill().unwrap();
    service.wait().unwrap();
}

/// A `201` means committed, so it survives the service dying the moment after: each round
/// places one order and kills the service (`kill -9`) as soon as the answer arrives. The next
/// start, under the same instance id, fences the dead producers and aborts whatever they left
/// open. An answer sent before the commit would leave its event in a transaction that is then
/// aborted, and the event would be missing from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_command_survives_a_kill_9_right_after_its_answer() {
    let runs = ServiceRuns::new("answer", &[]);
    let (topic, address) = (runs.topic.clone(), runs.address());
    let start = |run: u32| runs.start(run);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut answered = Vec::new();
    for round in 0..4 {
        let mut service = start(round);
        wait_up(&client, &address).await;
        let response = client
            .post(format!("{address}/orders"))
            .header("content-type", "application/json")
            .body(order_body(&format!("c-{round}")))
            .send()
            .await
            .unwrap();
        let status = response.status();
        service.kill().unwrap();
        service.wait().unwrap();
        assert_eq!(status, 201, "round {round}");
        let body: serde_json::Value = response.json().await.unwrap();
        answered.push(body["order_id"].as_str().unwrap().to_owned());
    }
    // One more start aborts whatever the last one left open.
    let mut service = start(99);
    wait_up(&client, &address).await;
    let records = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_committed(&topic)
    })
    .await
    .unwrap();
    service.kill().unwrap();
    service.wait().unwrap();
    let in_log: HashSet<String> = records.into_iter().map(|r| r.key).collect();
    for id in &answered {
        assert!(
            in_log.contains(id),
            "order {id} was answered 201 but is not in the log"
        );
    }
}

/// The service registers its event schema under `<topic>-value` at start; a subject holding a
/// schema this one cannot read (no defaults for the fields the old one lacks) stops it there,
/// with the registry's verdict, before it takes a command.
#[tokio::test]
async fn an_incompatible_schema_stops_the_service_at_start() {
    let client = reqwest::Client::new();
    let registry = env("SCHEMA_REGISTRY_URL");

    // A clean start registers under exactly `<topic>-value`.
    let app = spawn_app().await;
    let versions = client
        .get(format!("{registry}/subjects/{}-value/versions", app.topic))
        .send()
        .await
        .unwrap();
    assert_eq!(versions.status(), 200);
    app.stop().await;

    let topic = fresh_topic();
    let subject = format!("{topic}-value");
    let old = r#"{"type":"record","name":"OrderEvent","namespace":"orders","fields":[{"name":"legacy","type":"int"}]}"#;
    let registered = client
        .post(format!("{registry}/subjects/{subject}/versions"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({ "schema": old }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);

    let error = command_service::Application::build(config(&topic))
        .await
        .err()
        .map(|e| format!("{e} ({:?})", std::error::Error::source(&e)))
        .unwrap_or_default();
    assert!(error.contains("incompatible"), "{error}");
    assert!(error.contains(&subject), "{error}");
    // Nothing was written: the topic holds no record.
    let topic_for_read = topic.clone();
    let records = tokio::task::spawn_blocking(move || read_committed(&topic_for_read))
        .await
        .unwrap();
    assert!(records.is_empty());
    // The subject still holds only the old schema.
    let versions: serde_json::Value = client
        .get(format!("{registry}/subjects/{subject}/versions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions, serde_json::json!([1]));
}

/// After a `kill -9`, the restarted service's write model (rebuilt from the log) holds every
/// order's state and version: the rules and `If-Match` hold for orders placed before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_model_is_right_after_a_kill_9() {
    let runs = ServiceRuns::new("model", &[]);
    let address = runs.address();
    let start = |run: u32| runs.start(run);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |path: String, body: &'static str, if_match: Option<&'static str>| {
        let (client, address) = (client.clone(), address.clone());
        async move {
            let mut request = client
                .post(format!("{address}{path}"))
                .header("content-type", "application/json")
                .body(body);
            if let Some(tag) = if_match {
                request = request.header("if-match", tag);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body)
        }
    };
    const PAY: &str = r#"{"amount_cents":2599,"payment_ref":"p-1"}"#;
    const SHIP: &str = r#"{"carrier":"DHL","tracking_number":"T-1"}"#;
    const CANCEL: &str = r#"{"reason":"changed my mind"}"#;

    let mut service = start(1);
    wait_up(&client, &address).await;
    let mut orders = Vec::new();
    for customer in ["c-a", "c-b", "c-c"] {
        let response = client
            .post(format!("{address}/orders"))
            .header("content-type", "application/json")
            .body(order_body(customer))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.unwrap();
        orders.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let (a, b, c) = (&orders[0], &orders[1], &orders[2]);
    assert_eq!(post(format!("/orders/{a}/payment"), PAY, None).await.0, 200);
    service.kill().unwrap();
    service.wait().unwrap();

    let mut service = start(2);
    wait_up(&client, &address).await;
    // A was paid before the kill: paying again breaks a rule, shipping is version 3.
    assert_eq!(post(format!("/orders/{a}/payment"), PAY, None).await.0, 409);
    let (status, body) = post(format!("/orders/{a}/shipment"), SHIP, None).await;
    assert_eq!(
        (status, body["version"].clone()),
        (200, serde_json::json!(3))
    );
    // B is at version 1: `If-Match: "2"` is stale, `"1"` holds.
    assert_eq!(
        post(format!("/orders/{b}/payment"), PAY, Some("\"2\""))
            .await
            .0,
        412
    );
    let (status, body) = post(format!("/orders/{b}/payment"), PAY, Some("\"1\"")).await;
    assert_eq!(
        (status, body["version"].clone()),
        (200, serde_json::json!(2))
    );
    // C was only placed: it cannot ship, it can be cancelled, and then not paid.
    assert_eq!(
        post(format!("/orders/{c}/shipment"), SHIP, None).await.0,
        409
    );
    let (status, body) = post(format!("/orders/{c}/cancellation"), CANCEL, None).await;
    assert_eq!(
        (status, body["version"].clone()),
        (200, serde_json::json!(2))
    );
    assert_eq!(post(format!("/orders/{c}/payment"), PAY, None).await.0, 409);
    service.kill().unwrap();
    service.wait().unwrap();
}

/// A peer that accepts connections and never answers: every call to it must end at its bound.
fn black_hole() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        // Accepts (and keeps) a few connections, then lets the test end.
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok((socket, _)) = listener.accept() {
                held.push(socket);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (address, holder)
}

/// A registry that accepts and never answers stops the service at start within the registry
/// timeout, naming the registry: after the timeout, not at once, and not much later.
#[tokio::test]
async fn a_hung_registry_stops_the_service_at_start_within_its_timeout() {
    let (address, _holder) = black_hole();
    let mut config = config(&fresh_topic());
    config.registry = service_config::RegistryArgs::plain(format!("http://{address}"));
    config.registry_timeout_ms = 1_000;
    let started = Instant::now();
    let error = command_service::Application::build(config)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let waited = started.elapsed();
    assert!(error.contains("schema registry"), "{error}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "the start-up registry check took {waited:?}, its bound is 1 s"
    );
}

/// Two live services started with the same instance id (an operator's mistake, or a paused
/// instance that wakes up next to its replacement) fence each other's producers under load.
/// Whatever either answers, a `2xx` is an event in the log, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_with_one_id_never_acknowledge_what_is_not_in_the_log() {
    let topic = fresh_topic();
    let first = config(&topic);
    let mut second = config(&topic);
    second.instance_id = first.instance_id.clone();
    let a = spawn_app_with(first).await;
    let b = spawn_app_with(second).await;

    let stop_at = Instant::now() + Duration::from_secs(5);
    let load = |app: &crate::helpers::TestApp, name: &'static str| {
        let (client, address) = (app.client.clone(), app.address.clone());
        (0..4).map(move |c| {
            let (client, address) = (client.clone(), address.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while Instant::now() < stop_at {
                    let key = format!("{name}-{c}-{n}");
                    n += 1;
                    outcomes.push(place_with_key(&client, &address, &key).await);
                }
                outcomes
            })
        })
    };
    let tasks: Vec<_> = load(&a, "a").chain(load(&b, "b")).collect();
    let outcomes: Vec<(u16, Option<String>)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let acknowledged: Vec<&String> = outcomes
        .iter()
        .filter(|(status, _)| *status == 201)
        .filter_map(|(_, id)| id.as_ref())
        .collect();
    let refused = outcomes.iter().filter(|(status, _)| *status != 201).count();
    eprintln!(
        "two instances, one id: {} acknowledged, {refused} refused",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "nothing was acknowledged");
    assert!(refused > 0, "the instances never fenced each other");

    let topic_for_read = topic.clone();
    let records = tokio::task::spawn_blocking(move || read_committed(&topic_for_read))
        .await
        .unwrap();
    let mut in_log: HashMap<String, usize> = HashMap::new();
    for record in records {
        *in_log.entry(record.key).or_default() += 1;
    }
    for id in acknowledged {
        assert_eq!(
            in_log.get(id),
            Some(&1),
            "order {id} was acknowledged but is not in the log exactly once"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// SIGTERM while the write queue is full: the service stops taking requests, drains the queue
/// (committing it) and answers every request it took before it exits. Every `201` is in the
/// log; nothing it took goes unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_a_full_queue_answers_everything_it_took() {
    const REQUESTS: i64 = 1500;
    // One producer committing one record per transaction: a queue that drains more slowly than
    // the requests arrive, so it holds a backlog at SIGTERM. Its drain (a commit takes 5-20 ms
    // here) stays within the request timeout, so that every queued command commits and none is
    // answered 503 for want of time.
    let runs = ServiceRuns::new(
        "drain",
        &[
            ("COMMAND_PRODUCER_WORKERS", "1"),
            ("COMMAND_MAX_BATCH", "1"),
            ("COMMAND_LINGER_MS", "0"),
            ("COMMAND_QUEUE_CAPACITY", "1200"),
            ("COMMAND_REQUEST_TIMEOUT_MS", "45000"),
        ],
    );
    let (topic, address) = (runs.topic.clone(), runs.address());
    let mut service = runs.start(1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    wait_up(&client, &address).await;

    let requests: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (client, address) = (client.clone(), address.clone());
            tokio::spawn(async move {
                let response = client
                    .post(format!("{address}/orders"))
                    .header("content-type", "application/json")
                    .body(order_body(&format!("c-{i}")))
                    .send()
                    .await;
                match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        Ok((status, body["order_id"].as_str().map(str::to_owned)))
                    }
                    Err(e) => {
                        let mut text = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(cause) = source {
                            text = format!("{text}: {cause}");
                            source = cause.source();
                        }
                        Err(text)
                    }
                }
            })
        })
        .collect();
    // SIGTERM once the service has taken every request (each is answered or waits in the
    // queue) and the queue holds a backlog.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = crate::helpers::metrics_text(&client, &address).await;
        let depth: i64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("command_service_queue_depth "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let answered: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("command_service_commands_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        #[allow(clippy::cast_possible_truncation)]
        if answered as i64 + depth >= REQUESTS {
            assert!(
                depth >= 10,
                "the queue drained before the test could stop it: {depth}"
            );
            eprintln!("SIGTERM with {depth} commands queued");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service never took every request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terminated = Command::new("kill")
        .args(["-TERM", &service.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());

    let mut acknowledged = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for request in requests {
        let outcome = request.await.unwrap();
        let (status, id) = outcome.unwrap_or_else(|e| panic!("a request went unanswered: {e}"));
        *statuses.entry(status).or_default() += 1;
        // Kafka is healthy: what was queued commits, nothing is refused but for the full queue.
        assert!(matches!(status, 201 | 429), "unexpected {status}");
        if status == 201 {
            acknowledged.push(id.unwrap());
        }
    }
    eprintln!("SIGTERM with a full queue: {statuses:?}");
    let exit = tokio::task::spawn_blocking(move || service.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "the service exited with {exit}");
    assert!(!acknowledged.is_empty());

    let records = tokio::task::spawn_blocking(move || read_committed(&topic))
        .await
        .unwrap();
    let in_log: HashSet<String> = records.into_iter().map(|r| r.key).collect();
    for id in &acknowledged {
        assert!(
            in_log.contains(id),
            "order {id} was acknowledged but is not in the log"
        );
    }
}

/// A broker frozen (SIGSTOP) under commands: the commit of the first command cannot finish, so
/// its outcome is in doubt until the broker is back. Whatever it answered must be the truth,
/// and a retry with its key must converge on exactly one event; the second command on the same
/// order, waiting for the first one's lock, answers within its request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_broker_leaves_no_false_answer_and_no_unbounded_wait() {
    let (broker, _data) = private_broker().await;
    let bootstrap = broker.bootstrap();
    let mut config = config(&fresh_topic());
    config.kafka = service_config::KafkaArgs::plain(bootstrap.clone());
    config.kafka_timeout_ms = 2_000;
    config.request_timeout_ms = 6_000;
    config.producer_workers = 1;
    let request_timeout = Duration::from_millis(config.request_timeout_ms);
    let app = spawn_app_with(config).await;
    let order = place_until_created(
        &app.client,
        &app.address,
        "frozen-0",
        Duration::from_secs(30),
    )
    .await;

    let command = |path: String, body: &'static str, key: &'static str| {
        let (client, address) = (app.client.clone(), app.address.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .post(format!("{address}{path}"))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    let pid = broker.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let pay = command(
        format!("/orders/{order}/payment"),
        r#"{"amount_cents":2599,"payment_ref":"p-frozen"}"#,
        "frozen-pay",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancel = command(
        format!("/orders/{order}/cancellation"),
        r#"{"reason":"frozen"}"#,
        "frozen-cancel",
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );

    let (paid, paid_after) = pay.await.unwrap();
    let (cancelled, cancelled_after) = cancel.await.unwrap();
    eprintln!(
        "frozen broker: pay {paid} after {paid_after:?}, cancel {cancelled} after {cancelled_after:?}"
    );
    // Both answered within their bound (the second waited for the first one's lock).
    for (status, after) in [(paid, paid_after), (cancelled, cancelled_after)] {
        assert!(matches!(status, 200 | 409 | 503), "{status}");
        assert!(
            after < request_timeout + Duration::from_secs(5),
            "answered after {after:?}"
        );
    }

    // Retries with the same keys converge once the broker is back, and the log holds exactly
    // what the answers say.
    let retry = |path: String, body: &'static str, key: &'static str| {
        let (client, address) = (app.client.clone(), app.address.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let response = client
                    .post(format!("{address}{path}"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                if status != 503 {
                    return status;
                }
                assert!(Instant::now() < deadline, "{key} still 503 a minute later");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let paid_finally = retry(
        format!("/orders/{order}/payment"),
        r#"{"amount_cents":2599,"payment_ref":"p-frozen"}"#,
        "frozen-pay",
    )
    .await;
    let cancelled_finally = retry(
        format!("/orders/{order}/cancellation"),
        r#"{"reason":"frozen"}"#,
        "frozen-cancel",
    )
    .await;
    if paid == 200 {
        assert_eq!(paid_finally, 200, "a 200 must replay as 200");
    }
    let codec = codec(&app.topic);
    let records = read_committed_from(&bootstrap, &app.topic);
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let event = codec.decode(&record.value).await.unwrap();
        if let Some(key) = event.envelope.idempotency_key {
            *per_key.entry(key).or_default() += 1;
        }
    }
    let expect = |status: u16| usize::from(status == 200);
    assert_eq!(
        per_key.get("frozen-pay").copied().unwrap_or(0),
        expect(paid_finally),
        "{per_key:?}"
    );
    assert_eq!(
        per_key.get("frozen-cancel").copied().unwrap_or(0),
        expect(cancelled_finally),
        "{per_key:?}"
    );
    app.stop().await;
    drop(broker);
}

/// Runs `change` on node `index` of `cluster` off the async runtime (starting a node blocks
/// until it serves), and hands the cluster back.
async fn on_node(
    mut cluster: Cluster,
    index: usize,
    change: impl FnOnce(&mut Broker) + Send + 'static,
) -> Cluster {
    tokio::task::spawn_blocking(move || {
        change(&mut cluster.brokers[index]);
        cluster
    })
    .await
    .unwrap()
}

/// The node (1-based id) leading `partition` of `topic`, and every partition's replica count.
fn leader_and_replicas(bootstrap: &str, topic: &str, partition: i32) -> (i32, Vec<usize>) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions();
    let leader = partitions
        .iter()
        .find(|p| p.id() == partition)
        .map(rdkafka::metadata::MetadataPartition::leader)
        .unwrap();
    (
        leader,
        partitions.iter().map(|p| p.replicas().len()).collect(),
    )
}

#[tokio::test]
async fn a_three_node_cluster_commits_with_a_node_down_and_loses_nothing_when_a_leader_dies() {
    let runtime = KafkaRuntime::from_env().unwrap();
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (free_port().unwrap(), free_port().unwrap()))
        .collect();
    let configs = Cluster::configs(&data.path().join("kafka"), &ports, 3, "384m");
    let logs = data.path().to_path_buf();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&runtime, configs, &logs))
        .await
        .unwrap()
        .unwrap();
    let bootstrap = cluster.bootstrap();

    let mut config = config(&fresh_topic());
    config.kafka = service_config::KafkaArgs::plain(bootstrap.clone());
    let app = spawn_app_with(config).await;
    let mut acknowledged = vec![
        place_until_created(
            &app.client,
            &app.address,
            "cluster-0",
            Duration::from_secs(60),
        )
        .await,
    ];
    // The service created its topic with the cluster's replication: three copies each.
    let (_, replicas) = leader_and_replicas(&bootstrap, &app.topic, 0);
    assert!(replicas.iter().all(|r| *r == 3), "{replicas:?}");

    // One node down: writes still commit, on the two copies left.
    let cluster = on_node(cluster, 2, Broker::kill).await;
    for i in 0..5 {
        acknowledged.push(
            place_until_created(
                &app.client,
                &app.address,
                &format!("cluster-down-{i}"),
                Duration::from_secs(60),
            )
            .await,
        );
    }
    let cluster = on_node(cluster, 2, |node| node.restart().unwrap()).await;

    // The leader of a partition killed: what it acknowledged survives, and writes go on.
    let (leader, _) = leader_and_replicas(&bootstrap, &app.topic, 0);
    let leader = usize::try_from(leader - 1).unwrap();
    let cluster = on_node(cluster, leader, Broker::kill).await;
    for i in 0..5 {
        acknowledged.push(
            place_until_created(
                &app.client,
                &app.address,
                &format!("cluster-leader-{i}"),
                Duration::from_secs(60),
            )
            .await,
        );
    }
    let cluster = on_node(cluster, leader, |node| node.restart().unwrap()).await;

    let records = read_committed_from(&bootstrap, &app.topic);
    let mut keys: Vec<String> = records.into_iter().map(|r| r.key).collect();
    keys.sort();
    acknowledged.sort();
    assert_eq!(keys, acknowledged, "each acknowledged order once");
    app.stop().await;
    drop(cluster);
}

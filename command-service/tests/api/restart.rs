//! Restarts with a data directory: the instance reads only what its last checkpoint did not
//! hold, at two history lengths (thousands of events through the API, then millions of
//! aggregates written to the log), with a write-model cache far smaller than the aggregates,
//! and keeps every decision and idempotency receipt it had.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use orders::events::{Envelope, LineItem, OrderEvent, OrderPayload};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::Value;
use shared_events::partitioner::partition_for_key;

use crate::cluster::{Processes, events, post, signal};
use crate::helpers::{PARTITIONS, codec, env, metric, order_body, wait_ready};

/// Waits until `checkpoints` more checkpoints are stored.
async fn checkpointed(client: &reqwest::Client, address: &str, checkpoints: f64) {
    let name = "command_service_checkpoints";
    let target = metric(client, address, name).await + checkpoints;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(client, address, name).await < target {
        assert!(Instant::now() < deadline, "no checkpoint within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Places `count` orders through `clients` concurrent clients; their ids.
async fn place(client: &reqwest::Client, address: &str, count: usize) -> Vec<String> {
    let clients = 8;
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            let (client, address) = (client.clone(), address.to_owned());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in (n..count).step_by(clients) {
                    let (status, _, body) =
                        post(&client, &address, "/orders", order_body("c-restart"), &[]).await;
                    assert_eq!(status, 201, "{body}");
                    ids.push(body["order_id"].as_str().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

async fn pay(client: &reqwest::Client, address: &str, order: &str) -> (u16, Value) {
    let (status, _, body) = post(
        client,
        address,
        &format!("/orders/{order}/payment"),
        r#"{"amount_cents":2599,"payment_ref":"p-1"}"#.into(),
        &[],
    )
    .await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_only_what_its_last_checkpoint_missed_at_two_history_lengths() {
    let data = tempfile::tempdir().unwrap();
    let mut instance = Processes::new(1);
    instance.settings = vec![
        ("COMMAND_DATA_DIR".into(), data.path().display().to_string()),
        ("COMMAND_CHECKPOINT_INTERVAL_MS".into(), "300".into()),
        // Far fewer than the aggregates: most are read back from the data directory.
        ("COMMAND_CACHE_AGGREGATES".into(), "64".into()),
    ];
    let address = instance.address(0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let restored = |client: reqwest::Client, address: String| async move {
        metric(&client, &address, "command_service_restored_events").await
    };

    let mut running = instance.start(0);
    wait_ready(&client, &address, Duration::from_secs(90)).await;
    let (status, _, keyed) = post(
        &client,
        &address,
        "/orders",
        order_body("c-keyed"),
        &[("idempotency-key", "restart-key")],
    )
    .await;
    assert_eq!(status, 201);
    let mut orders = place(&client, &address, 150).await;
    for order in &orders[..50] {
        assert_eq!(pay(&client, &address, order).await.0, 200);
    }
    let mut history = events(&instance.topic).await.len();

    // Twice: after a short history, then after a ten times longer one.
    for more in [0, 1500] {
        orders.extend(place(&client, &address, more).await);
        history = history.max(events(&instance.topic).await.len());
        checkpointed(&client, &address, 2.0).await;
        signal(&running, "KILL");
        running.wait().unwrap();
        running = instance.start(0);
        wait_ready(&client, &address, Duration::from_secs(90)).await;
        let read = restored(client.clone(), address.clone()).await;
        eprintln!("history of {history} events: the restart read {read}");
        assert_eq!(
            read, 0.0,
            "with {history} events, the restart read {read} again"
        );
        // The keyed order's receipt came back from the data directory.
        let (status, _, again) = post(
            &client,
            &address,
            "/orders",
            order_body("c-keyed"),
            &[("idempotency-key", "restart-key")],
        )
        .await;
        assert_eq!((status, &again), (201, &keyed));
    }

    // A crash right after writes: the restart reads those, and only those, again.
    let late = place(&client, &address, 100).await;
    signal(&running, "KILL");
    running.wait().unwrap();
    running = instance.start(0);
    wait_ready(&client, &address, Duration::from_secs(90)).await;
    let read = restored(client.clone(), address.clone()).await;
    assert!(
        read <= 100.0,
        "after a crash right after 100 orders the restart read {read} events"
    );
    orders.extend(late);

    // Every decision still stands: the first 50 orders are paid, the others are not yet.
    for (n, order) in orders.iter().enumerate() {
        let (status, body) = pay(&client, &address, order).await;
        let expected = if n < 50 { 409 } else { 200 };
        assert_eq!(status, expected, "order {n} ({order}): {body}");
    }
    let loads = metric(&client, &address, "command_service_write_model_loads").await;
    assert!(
        loads > 1000.0,
        "{loads} aggregates read back from the data directory"
    );
    let mut versions: HashMap<String, Vec<i64>> = HashMap::new();
    for event in events(&instance.topic).await {
        versions.entry(event.0).or_default().push(event.1);
    }
    for order in &orders {
        assert_eq!(
            versions.get(order).map(Vec::as_slice),
            Some(&[1, 2][..]),
            "{order}"
        );
    }
    drop(running);
}

/// Order `n` of a history written straight to the log, as earlier instances would have.
fn placed(n: usize) -> OrderEvent {
    let id = format!("m-{n:08}");
    OrderEvent {
        envelope: Envelope {
            event_id: format!("{id}-1"),
            aggregate_id: id.clone(),
            aggregate_version: 1,
            occurred_at_ms: 1_735_689_600_000,
            command_id: format!("k-{id}"),
            idempotency_key: None,
            correlation_id: format!("c-{id}"),
        },
        payload: OrderPayload::Placed {
            customer_id: format!("c-{}", n % 1000),
            currency: "EUR".into(),
            items: vec![LineItem {
                sku: "A-1".into(),
                quantity: 1,
                unit_price_cents: 2_599,
            }],
            total_cents: 2_599,
        },
    }
}

/// Writes orders `range` to `topic`, each placed in its id's partition, as fast as the broker
/// takes them.
async fn fill(topic: &str, range: std::ops::Range<usize>) {
    let codec = codec(topic);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut pending = FuturesUnordered::new();
    for n in range {
        let event = placed(n);
        let value = codec.encode(&event).await.unwrap();
        let key = event.envelope.aggregate_id;
        let partition = partition_for_key(key.as_bytes(), PARTITIONS);
        let producer = producer.clone();
        pending.push(async move {
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .partition(partition);
            producer
                .send(record, Duration::from_secs(60))
                .await
                .map(drop)
        });
        while pending.len() > 100_000 {
            pending.next().await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }
    while let Some(sent) = pending.next().await {
        sent.map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// The issue's scale: a million aggregates, then two. Each history is written straight to the
/// log while the instance is down, read once from the log, checkpointed; then the instance is
/// killed and restarted, and reads nothing again, however long the history. A command on an
/// aggregate of each history is decided from the state read back from the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_millions_of_aggregates_reads_nothing_again() {
    const MILLION: usize = 1_000_000;
    let data = tempfile::tempdir().unwrap();
    let mut instance = Processes::new(1);
    instance.settings = vec![
        ("COMMAND_DATA_DIR".into(), data.path().display().to_string()),
        ("COMMAND_CACHE_AGGREGATES".into(), "50000".into()),
    ];
    let address = instance.address(0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Creates the topics.
    let mut running = instance.start(0);
    wait_ready(&client, &address, Duration::from_secs(90)).await;
    for (history, range) in [(MILLION, 0..MILLION), (2 * MILLION, MILLION..2 * MILLION)] {
        signal(&running, "KILL");
        running.wait().unwrap();
        let started = Instant::now();
        fill(&instance.topic, range.clone()).await;
        eprintln!("{} orders written in {:?}", range.len(), started.elapsed());

        let started = Instant::now();
        running = instance.start(0);
        wait_ready(&client, &address, Duration::from_secs(600)).await;
        let read = metric(&client, &address, "command_service_restored_events").await;
        eprintln!(
            "history of {history} events: the new ones read from the log in {:?} ({read} events)",
            started.elapsed()
        );
        assert!(read >= range.len() as f64, "read {read} of {}", range.len());
        checkpointed(&client, &address, 2.0).await;

        signal(&running, "KILL");
        running.wait().unwrap();
        let started = Instant::now();
        running = instance.start(0);
        wait_ready(&client, &address, Duration::from_secs(90)).await;
        let ready = started.elapsed();
        let read = metric(&client, &address, "command_service_restored_events").await;
        eprintln!(
            "history of {history} events: ready {ready:?} after the restart, {read} events read again"
        );
        assert_eq!(
            read, 0.0,
            "with {history} events, the restart read {read} again"
        );

        // The first order of this history, from the data directory: placed, so payable once.
        let first = placed(range.start).envelope.aggregate_id;
        assert_eq!(pay(&client, &address, &first).await.0, 200, "{first}");
        assert_eq!(pay(&client, &address, &first).await.0, 409, "{first}");
    }
    let loads = metric(&client, &address, "command_service_write_model_loads").await;
    assert!(loads >= 1.0, "nothing read from the data directory");
    drop(running);
}

//! Restarts with a data directory: the instance reads only what its last checkpoint did not
//! hold, at two history lengths, with a write-model cache far smaller than the aggregates, and
//! keeps every decision and idempotency receipt it had.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{Processes, events, post, signal};
use crate::helpers::{metric, order_body, wait_ready};

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

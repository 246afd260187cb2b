//! The four commands, the rules, versions, `If-Match` and `Idempotency-Key`, over HTTP.

use std::collections::HashMap;

use orders::events::OrderEvent;
use serde_json::Value;

use crate::helpers::{TestApp, codec, order_body, read_committed, spawn_app};

/// Places an order (total 2599 cents) and returns its id.
async fn place(app: &TestApp) -> String {
    let response = app.post_order(&order_body("c-1")).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().to_owned()
}

const PAY: &str = r#"{"amount_cents":2599,"payment_ref":"pay-1"}"#;
const SHIP: &str = r#"{"carrier":"DHL","tracking_number":"JJD0001"}"#;
const CANCEL: &str = r#"{"reason":"changed my mind"}"#;

async fn command(
    app: &TestApp,
    id: &str,
    what: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    app.post_json_with(&format!("/orders/{id}/{what}"), body.to_owned(), headers)
        .await
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every event of the topic, decoded, grouped by order id in log order.
async fn events_by_order(app: &TestApp) -> HashMap<String, Vec<OrderEvent>> {
    let codec = codec(&app.topic);
    let mut records = read_committed(&app.topic);
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut by_order: HashMap<String, Vec<OrderEvent>> = HashMap::new();
    for record in records {
        let event = codec.decode(&record.value).await.unwrap();
        by_order.entry(record.key).or_default().push(event);
    }
    by_order
}

#[tokio::test]
async fn an_order_lives_through_its_commands_with_consecutive_versions() {
    let app = spawn_app().await;
    let id = place(&app).await;

    let (status, body) = status_and_body(command(&app, &id, "shipment", SHIP, &[]).await).await;
    assert_eq!(status, 409, "shipping an unpaid order: {body}");
    assert_eq!(body["type"], "urn:problem-type:rule-violated");
    let wrong_amount = r#"{"amount_cents":1,"payment_ref":"pay-1"}"#;
    assert_eq!(
        command(&app, &id, "payment", wrong_amount, &[])
            .await
            .status(),
        409
    );

    let response = command(&app, &id, "payment", PAY, &[]).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("consistency-token"));
    assert_eq!(response.headers()["etag"], "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (
            body["order_id"].as_str().unwrap(),
            body["version"].as_i64().unwrap()
        ),
        (id.as_str(), 2)
    );
    assert!(body["position"]["offset"].is_i64());

    assert_eq!(
        command(&app, &id, "payment", PAY, &[]).await.status(),
        409,
        "paid twice"
    );
    assert_eq!(
        command(&app, &id, "shipment", SHIP, &[]).await.status(),
        200
    );
    assert_eq!(
        command(&app, &id, "cancellation", CANCEL, &[])
            .await
            .status(),
        409,
        "cancel a shipped order"
    );

    let other = place(&app).await;
    assert_eq!(
        command(&app, &other, "cancellation", CANCEL, &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        command(&app, &other, "payment", PAY, &[]).await.status(),
        409,
        "pay a cancelled order"
    );

    let unknown = command(&app, "no-such-order", "payment", PAY, &[]).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        command(&app, "bad%20id", "payment", PAY, &[])
            .await
            .status(),
        400
    );
    assert_eq!(
        command(&app, &id, "payment", r#"{"amount_cents":"x"}"#, &[])
            .await
            .status(),
        422
    );

    let events = events_by_order(&app).await;
    let kinds: Vec<(&str, i64)> = events[&id]
        .iter()
        .map(|e| (e.payload.name(), e.envelope.aggregate_version))
        .collect();
    assert_eq!(
        kinds,
        [("OrderPlaced", 1), ("OrderPaid", 2), ("OrderShipped", 3)]
    );
    assert_eq!(events[&other].len(), 2);
    assert_eq!(events.len(), 2, "rejected commands wrote nothing");
    app.stop().await;
}

#[tokio::test]
async fn if_match_guards_the_version() {
    let app = spawn_app().await;
    let id = place(&app).await;
    let (status, body) =
        status_and_body(command(&app, &id, "payment", PAY, &[("if-match", "\"3\"")]).await).await;
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["type"], "urn:problem-type:version-mismatch");
    assert_eq!(
        command(&app, &id, "payment", PAY, &[("if-match", "nonsense")])
            .await
            .status(),
        400
    );
    assert_eq!(
        command(&app, &id, "payment", PAY, &[("if-match", "\"1\"")])
            .await
            .status(),
        200
    );
    assert_eq!(
        command(&app, &id, "shipment", SHIP, &[("if-match", "\"1\"")])
            .await
            .status(),
        412,
        "stale version"
    );
    // RFC 9110: If-Match compares strongly, so a weak tag never matches.
    for stale in ["W/\"2\"", "\"+2\"", "\"02\"", "\"1\", \"3\""] {
        assert_eq!(
            command(&app, &id, "shipment", SHIP, &[("if-match", stale)])
                .await
                .status(),
            412,
            "{stale}"
        );
    }
    assert_eq!(
        command(&app, &id, "shipment", SHIP, &[("if-match", "\"1\", \"2\"")])
            .await
            .status(),
        200,
        "any tag of a list may match"
    );
    for bad in ["*, \"3\"", "3", "\"3"] {
        assert_eq!(
            command(&app, &id, "cancellation", CANCEL, &[("if-match", bad)])
                .await
                .status(),
            400,
            "{bad}"
        );
    }
    assert_eq!(
        command(&app, &id, "cancellation", CANCEL, &[("if-match", "*")])
            .await
            .status(),
        409,
        "`*` matches an existing order, whose rules then refuse to cancel a shipped order"
    );
    let placed = app
        .post_json_with("/orders", order_body("c-if-match"), &[("if-match", "*")])
        .await;
    assert_eq!(placed.status(), 412, "a new order has no version to match");
    app.stop().await;
}

#[tokio::test]
async fn of_fifty_concurrent_payments_exactly_one_wins() {
    let app = spawn_app().await;
    let id = place(&app).await;
    let attempts = (0..50).map(|i| {
        let (app, id) = (&app, &id);
        async move {
            let body = format!(r#"{{"amount_cents":2599,"payment_ref":"pay-{i}"}}"#);
            command(app, id, "payment", &body, &[])
                .await
                .status()
                .as_u16()
        }
    });
    let mut statuses = futures::future::join_all(attempts).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let events = events_by_order(&app).await;
    let versions: Vec<i64> = events[&id]
        .iter()
        .map(|e| e.envelope.aggregate_version)
        .collect();
    assert_eq!(versions, [1, 2]);
    app.stop().await;
}

#[tokio::test]
async fn racing_commands_on_many_orders_keep_versions_gapless() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(place(&app).await);
    }
    // Per order: a payment, a shipment and a cancellation race; whatever wins, versions are 1..n.
    let attempts = ids.iter().flat_map(|id| {
        [
            ("payment", PAY),
            ("shipment", SHIP),
            ("cancellation", CANCEL),
            ("payment", PAY),
        ]
        .into_iter()
        .map(move |(what, body)| (id.clone(), what, body))
    });
    let results = futures::future::join_all(attempts.map(|(id, what, body)| {
        let app = &app;
        async move { command(app, &id, what, body, &[]).await.status().as_u16() }
    }))
    .await;
    assert!(
        results.iter().all(|s| *s == 200 || *s == 409),
        "{results:?}"
    );
    let events = events_by_order(&app).await;
    for id in &ids {
        let versions: Vec<i64> = events[id]
            .iter()
            .map(|e| e.envelope.aggregate_version)
            .collect();
        let expected: Vec<i64> = (1..=i64::try_from(versions.len()).unwrap()).collect();
        assert_eq!(versions, expected, "order {id}");
    }
    let successes = results.iter().filter(|s| **s == 200).count();
    let follow_ups: usize = events.values().map(|e| e.len() - 1).sum();
    assert_eq!(
        successes, follow_ups,
        "every 200 is one event and nothing else is"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_answer_and_writes_nothing() {
    let app = spawn_app().await;
    let place_with_key = |key: &'static str, body: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/orders", app.address))
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    // Concurrent first attempts with one key: one order.
    let responses = futures::future::join_all(
        (0..10).map(|_| place_with_key("key-place-1", order_body("c-9"))),
    )
    .await;
    let mut answers = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let id = answers[0]["order_id"].as_str().unwrap().to_owned();

    // A later retry: the same answer, marked as replayed.
    let retry = place_with_key("key-place-1", order_body("c-9")).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), answers[0]);

    // The same key for a different request is refused.
    let reused = place_with_key("key-place-1", order_body("c-other")).await;
    assert_eq!(reused.status(), 422);

    // Follow-up commands too, sequentially and concurrently.
    let pay = |key: &'static str| {
        let (app, id) = (&app, &id);
        async move { command(app, id, "payment", PAY, &[("idempotency-key", key)]).await }
    };
    let first = status_and_body(pay("key-pay-1").await).await;
    assert_eq!(first.0, 200);
    let again = futures::future::join_all((0..5).map(|_| pay("key-pay-1"))).await;
    for response in again {
        assert_eq!(status_and_body(response).await, first);
    }
    assert_eq!(
        command(&app, &id, "payment", PAY, &[("idempotency-key", "")])
            .await
            .status(),
        400
    );

    let events = events_by_order(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[&id].len(), 2, "one placement and one payment");
    assert_eq!(
        events[&id][0].envelope.idempotency_key.as_deref(),
        Some("key-place-1")
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_metrics_answer() {
    let app = spawn_app().await;
    place(&app).await;
    let ready = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for name in [
        "command_service_queue_depth",
        "command_service_batch_size_bucket",
        "command_service_commit_seconds_bucket",
        "command_service_commands_total{command=\"place\",status=\"201\",aggregate=\"order\"} 1",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    app.stop().await;
}

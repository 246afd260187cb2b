use std::time::Duration;

use orders::events::OrderPayload;
use serde_json::Value;
use shared_events::ConsistencyToken;
use shared_events::partitioner::partition_for_key;

use crate::helpers::{
    PARTITIONS, codec, config, fresh_topic, order_body, read_committed, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn a_placed_order_is_committed_before_the_answer() {
    let app = spawn_app().await;
    let response = app.post_order(&order_body("c-42")).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let token: ConsistencyToken = response.headers()["consistency-token"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/orders/{order_id}"));
    assert_eq!(body["version"], 1);
    assert_eq!(token.topic, app.topic);
    assert_eq!(body["position"]["partition"], token.position.partition);
    assert_eq!(body["position"]["offset"], token.position.offset);
    // The producer partitions like Kafka's Java client: murmur2 of the order id.
    assert_eq!(
        token.position.partition,
        partition_for_key(order_id.as_bytes(), PARTITIONS)
    );

    // In the log: an independent read-committed consumer sees it at that position. (That the
    // commit came before the answer is `failures::an_answered_command_survives_a_kill_9_right_after_its_answer`.)
    let records = read_committed(&app.topic);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.key, order_id);
    assert_eq!(
        (record.partition, record.offset),
        (token.position.partition, token.position.offset)
    );
    let codec = codec(&app.topic);
    let event = codec.decode(&record.value).await.unwrap();
    assert_eq!(event.envelope.aggregate_id, order_id);
    assert_eq!(event.envelope.aggregate_version, 1);
    assert_eq!(event.envelope.event_id, body["event_id"].as_str().unwrap());
    match event.payload {
        OrderPayload::Placed {
            customer_id,
            currency,
            items,
            total_cents,
        } => {
            assert_eq!(customer_id, "c-42");
            assert_eq!(currency, "EUR");
            assert_eq!(items.len(), 2);
            assert_eq!(total_cents, 2599);
        }
        other => panic!("expected OrderPlaced, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn concurrent_orders_are_all_committed_once() {
    let app = spawn_app().await;
    let requests = (0..40).map(|i| {
        let body = order_body(&format!("c-{i}"));
        let app = &app;
        async move { app.post_order(&body).await }
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let mut keys: Vec<String> = read_committed(&app.topic)
        .into_iter()
        .map(|r| r.key)
        .collect();
    keys.sort();
    ids.sort();
    assert_eq!(keys, ids);
    app.stop().await;
}

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].is_string(),
            "problem body lacks {field}: {body}"
        );
    }
    body
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_writes_nothing() {
    let app = spawn_app().await;
    let valid = order_body("c-1");

    assert_problem(app.post("/orders", "text/plain", valid.clone()).await, 415).await;
    assert_problem(
        app.post("/orders", "application/json", "{\"customer_id\":".into())
            .await,
        400,
    )
    .await;
    assert_problem(
        app.post("/orders", "application/json", "[1,2]".into())
            .await,
        400,
    )
    .await;
    let huge = format!(r#"{{"customer_id":"{}"}}"#, "x".repeat(100 * 1024));
    assert_problem(app.post("/orders", "application/json", huge).await, 413).await;

    let invalid = r#"{"customer_id":"c 1","currency":"euro","items":[{"sku":"A","quantity":0,"unit_price_cents":5}],"gift":true}"#;
    let body = assert_problem(app.post_order(invalid).await, 422).await;
    let mut fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["currency", "customer_id", "gift", "items[0].quantity"]
    );
    let wrong_types = r#"{"customer_id":"c","currency":"EUR","items":[{"sku":"A","quantity":"2","unit_price_cents":5}]}"#;
    assert_problem(app.post_order(wrong_types).await, 422).await;

    let not_found = app
        .client
        .get(format!("{}/nope", app.address))
        .send()
        .await
        .unwrap();
    assert_problem(not_found, 404).await;

    let duplicate_key = r#"{"customer_id":"c-1","customer_id":"c-2","currency":"EUR","items":[{"sku":"A","quantity":1,"unit_price_cents":5}]}"#;
    let body = assert_problem(app.post_order(duplicate_key).await, 400).await;
    assert!(
        body["detail"].as_str().unwrap().contains("duplicate key"),
        "{body}"
    );
    let gzipped = app
        .post_json_with("/orders", valid.clone(), &[("content-encoding", "gzip")])
        .await;
    assert_eq!(gzipped.headers()["accept-encoding"], "identity");
    assert_problem(gzipped, 415).await;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/orders", "POST"),
        (reqwest::Method::PUT, "/orders/o-1/payment", "POST"),
        (reqwest::Method::DELETE, "/health/live", "GET, HEAD"),
    ] {
        let response = app
            .client
            .request(method, format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], allow, "{path}");
        assert_problem(response, 405).await;
    }
    let head = app
        .client
        .head(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());

    // One good order after all the bad ones: it is the only record in the topic.
    let response = app.post_order(&valid).await;
    assert_eq!(response.status(), 201);
    let records = read_committed(&app.topic);
    assert_eq!(records.len(), 1, "bad requests must write nothing");
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = config(&fresh_topic());
    config.http_workers = 1;
    config.max_connections = Some(2);
    let app = spawn_app_with(config).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    // Two connections the service has taken: each has been answered once and stays open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = tokio::net::TcpStream::connect(&address).await.unwrap();
        connection
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 512];
        let read = connection.read(&mut answer).await.unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
        held.push(connection);
    }
    // The kernel completes the handshake; the service does not take the connection yet.
    let mut third = tokio::net::TcpStream::connect(&address).await.unwrap();
    third
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), third.read(&mut answer))
            .await
            .is_err(),
        "a connection beyond the cap was served"
    );
    held.pop();
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_its_connection_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"customer_id\":",
        )
        .await
        .unwrap();
    // Ends when the service closes the connection: the request timeout (15 s) bounds the wait.
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(40), stream.read_to_end(&mut response)).await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "the stalled request was neither answered nor closed"
    );
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    let topic = app.topic.clone();
    let records = tokio::task::spawn_blocking(move || read_committed(&topic))
        .await
        .unwrap();
    assert!(records.is_empty());
}

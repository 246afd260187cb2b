//! Live streams over real HTTP: events as they are committed, resumed on another replica, after
//! a `kill -9`, after a slow client is cut off; the bounds; the live page in a real browser.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::browser::{Browser, Tab};
use crate::helpers::*;

const SHIP: &str = r#"{"carrier":"DHL","tracking_number":"JJD0001"}"#;
const PAY: &str = r#"{"amount_cents":1250,"payment_ref":"p-1"}"#;
const WAIT: Duration = Duration::from_secs(30);

fn group() -> String {
    format!("live-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn an_orders_events_arrive_in_order_and_resume_on_the_other_replica() {
    let commands = Commands::spawn().await;
    let group = group();
    let a = Replica::spawn(&commands.topic, &group, "replica-a").await;
    let b = Replica::spawn(&commands.topic, &group, "replica-b").await;
    let http = client();
    wait_settled(&http, &[&a, &b]).await;

    let placed = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-live", 1),
    )
    .await;
    let id = &placed.order_id;
    let mut stream = Sse::open(
        &format!("{}/orders/{id}/events?from=beginning", a.address),
        None,
    )
    .await;
    let first = stream.next_event(WAIT).await.expect("the placement");
    assert_eq!(first.event.as_deref(), Some("OrderPlaced"));
    let data = first.json();
    assert_eq!(data["aggregate_id"], id.as_str());
    assert_eq!(data["version"], 1);
    assert_eq!(data["customer_id"], "c-live");
    assert_eq!(data["items"][0]["sku"], "A-1");
    assert!(data["event_id"].is_string() && data["occurred_at"].is_string());

    // Live: the payment arrives while the client listens.
    post(
        &http,
        &format!("{}/orders/{id}/payment", commands.address),
        PAY,
    )
    .await;
    let second = stream.next_event(WAIT).await.expect("the payment");
    assert_eq!(second.event.as_deref(), Some("OrderPaid"));
    assert_eq!(second.json()["version"], 2);
    assert_eq!(second.json()["payment_ref"], "p-1");
    let resume_from = second.id.clone().expect("an id to resume from");
    assert_ne!(first.id, second.id);
    drop(stream);

    // Disconnected: the shipment is committed meanwhile; the other replica resumes after the
    // payment and sends exactly the rest.
    post(
        &http,
        &format!("{}/orders/{id}/shipment", commands.address),
        SHIP,
    )
    .await;
    let mut resumed = Sse::open(
        &format!("{}/orders/{id}/events?from=beginning", b.address),
        Some(&resume_from),
    )
    .await;
    let third = resumed.next_event(WAIT).await.expect("the shipment");
    assert_eq!(third.event.as_deref(), Some("OrderShipped"));
    assert_eq!(third.json()["version"], 3);
    assert_eq!(third.json()["carrier"], "DHL");
    assert!(
        resumed.next_event(Duration::from_secs(2)).await.is_none(),
        "nothing is sent twice"
    );

    // `?after=` does what the header does, and the whole history comes in order.
    let mut again = Sse::open(
        &format!(
            "{}/orders/{id}/events?after={}",
            a.address,
            first.id.unwrap()
        ),
        None,
    )
    .await;
    let versions = [
        again.next_event(WAIT).await.unwrap().json()["version"].clone(),
        again.next_event(WAIT).await.unwrap().json()["version"].clone(),
    ];
    assert_eq!(versions, [Value::from(2), Value::from(3)]);
    a.stop().await;
    b.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_customer_stream_loses_nothing_across_partitions_after_kill_9() {
    let commands = Commands::spawn().await;
    let group = group();
    let mut victim = start_process(&commands.topic, &group, "victim");
    let survivor = Replica::spawn(&commands.topic, &group, "survivor").await;
    wait_ready(&victim.address).await;
    wait_ready(&survivor.address).await;
    let http = client();
    post(
        &http,
        &format!("{}/customers", commands.address),
        r#"{"customer_id":"c-stream","name":"Ada","email":"ada@example.com"}"#,
    )
    .await;
    let mut stream = Sse::open(
        &format!(
            "{}/customers/c-stream/events?from=beginning",
            victim.address
        ),
        None,
    )
    .await;
    let mut seen = Vec::new();
    let registered = stream.next_event(WAIT).await.expect("the registration");
    assert_eq!(registered.event.as_deref(), Some("CustomerRegistered"));
    seen.push(registered.json()["event_id"].clone());
    let mut last_id = registered.id.clone();
    // Orders land on every partition; the stream carries each, and each payment too.
    let mut orders = Vec::new();
    for _ in 0..6 {
        orders.push(
            post(
                &http,
                &format!("{}/orders", commands.address),
                &order_body("c-stream", 1),
            )
            .await
            .order_id,
        );
    }
    for _ in 0..6 {
        let message = stream.next_event(WAIT).await.expect("an order");
        assert_eq!(message.event.as_deref(), Some("OrderPlaced"));
        seen.push(message.json()["event_id"].clone());
        last_id = message.id.clone();
    }
    let last_id = last_id.expect("an id");

    victim.child.kill().unwrap();
    let _ = victim.child.wait();
    drop(stream);
    // While the client is away: payments of every order, and a change of email.
    for order in &orders {
        post(
            &http,
            &format!("{}/orders/{order}/payment", commands.address),
            PAY,
        )
        .await;
    }
    post(
        &http,
        &format!("{}/customers/c-stream/email", commands.address),
        r#"{"email":"ada@example.org"}"#,
    )
    .await;

    let mut resumed = Sse::open(
        &format!(
            "{}/customers/c-stream/events?from=beginning",
            survivor.address
        ),
        Some(&last_id),
    )
    .await;
    let mut rest = Vec::new();
    while rest.len() < 7 {
        let message = resumed
            .next_event(WAIT)
            .await
            .expect("the rest of the stream");
        rest.push(message);
    }
    let paid: BTreeSet<String> = rest
        .iter()
        .filter(|m| m.event.as_deref() == Some("OrderPaid"))
        .map(|m| m.json()["aggregate_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paid,
        orders.iter().cloned().collect(),
        "every payment, once"
    );
    assert_eq!(
        rest.iter()
            .filter(|m| m.event.as_deref() == Some("CustomerEmailChanged"))
            .count(),
        1
    );
    for message in &rest {
        let event_id = message.json()["event_id"].clone();
        assert!(!seen.contains(&event_id), "sent twice: {message:?}");
        seen.push(event_id);
    }
    assert!(resumed.next_event(Duration::from_secs(2)).await.is_none());
    survivor.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_slow_client_is_cut_off_with_its_resume_id_and_resumes_with_everything() {
    let commands = Commands::spawn().await;
    let group = group();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&commands.topic, &group, "slow", &data);
    config.live_buffer = 4;
    let replica = Replica::spawn_with(config, data).await;
    let http = client();
    wait_settled(&http, &[&replica]).await;
    post(
        &http,
        &format!("{}/customers", commands.address),
        r#"{"customer_id":"c-slow","name":"Ada","email":"ada@example.com"}"#,
    )
    .await;

    // A client that reads nothing, with a small receive window: the replica's socket fills,
    // then the stream's buffer.
    let address: std::net::SocketAddr = replica
        .address
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(address).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(
        b"GET /customers/c-slow/events HTTP/1.0\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    // Wait for the stream to open (the position mark), then stop reading.
    let mut head = vec![0u8; 1024];
    let read = tokio::time::timeout(WAIT, slow.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..read]).contains("200 OK"));

    const ORDERS: usize = 600;
    let placing = (0..8).map(|_| {
        let (http, commands) = (http.clone(), commands.address.clone());
        tokio::spawn(async move {
            for _ in 0..ORDERS / 8 {
                post(
                    &http,
                    &format!("{commands}/orders"),
                    &order_body("c-slow", 1),
                )
                .await;
            }
        })
    });
    for task in futures::future::join_all(placing).await {
        task.unwrap();
    }
    let metrics_url = format!("{}/metrics", replica.address);
    eventually(WAIT, "the slow client to be cut off", || async {
        http.get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .lines()
            .any(|l| l == "query_service_live_slow_disconnects_total 1")
    })
    .await;

    // Now read all it was sent: events, then the last one naming where to resume.
    let mut received = Vec::new();
    let read_all = async {
        let mut rest = Vec::new();
        slow.read_to_end(&mut rest).await.unwrap();
        rest
    };
    let bytes = tokio::time::timeout(WAIT, read_all).await.unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let mut resume_after = None;
    for frame in text.split("\n\n") {
        let field = |name: &str| {
            frame
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        match field("event:").as_deref() {
            Some("OrderPlaced") => {
                let data: Value = serde_json::from_str(&field("data:").unwrap()).unwrap();
                received.push(data["aggregate_id"].as_str().unwrap().to_owned());
            }
            Some("resume") => {
                let data: Value = serde_json::from_str(&field("data:").unwrap()).unwrap();
                assert_eq!(data["resume_after"].as_str(), field("id:").as_deref());
                resume_after = field("id:");
            }
            _ => {}
        }
    }
    let resume_after = resume_after.expect("a last event naming where to resume");
    assert!(received.len() < ORDERS, "it was cut off before the end");

    // Resuming from there gets every other order, none twice.
    let mut resumed = Sse::open(
        &format!("{}/customers/c-slow/events", replica.address),
        Some(&resume_after),
    )
    .await;
    while received.len() < ORDERS {
        let message = resumed.next_event(WAIT).await.expect("the rest");
        received.push(message.json()["aggregate_id"].as_str().unwrap().to_owned());
    }
    let distinct: BTreeSet<&String> = received.iter().collect();
    assert_eq!(distinct.len(), ORDERS, "no order twice");
    replica.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn streams_are_bounded_checked_and_kept_alive() {
    let commands = Commands::spawn().await;
    let group = group();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&commands.topic, &group, "bounded", &data);
    config.live_max_streams = 1;
    config.live_heartbeat_ms = 200;
    let replica = Replica::spawn_with(config, data).await;
    let http = client();
    wait_settled(&http, &[&replica]).await;
    let url = format!("{}/orders/o-quiet/events", replica.address);
    let ready: Value = http
        .get(format!("{}/health/ready", replica.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["live_tail"]["running"], true, "{ready}");

    let mut open = Sse::open(&url, None).await;
    let hint = open.next(WAIT).await.unwrap();
    assert_eq!(hint.retry.as_deref(), Some("1000"), "{hint:?}");
    let mark = open.next(WAIT).await.unwrap();
    assert!(mark.id.is_some() && mark.event.is_none(), "{mark:?}");
    let heartbeat = open.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(heartbeat.comments, ["keep-alive"]);

    let refused = Sse::request(&url, None).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    drop(open);
    eventually(WAIT, "the place to be given back", || async {
        Sse::request(&url, None).await.status() == 200
    })
    .await;

    for (path, last_event_id, problem) in [
        ("/orders/bad%20id/events", None, "invalid-id"),
        ("/orders/o-1/events", Some("nonsense"), "invalid-resume-id"),
        ("/orders/o-1/events", Some("0.999.1"), "invalid-resume-id"),
        (
            "/orders/o-1/events?after=1.0.0.0",
            None,
            "invalid-resume-id",
        ),
        ("/orders/o-1/events?from=yesterday", None, "invalid-query"),
        ("/live/orders/bad%20id", None, "invalid-id"),
    ] {
        let response = Sse::request(&format!("{}{path}", replica.address), last_event_id).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["type"],
            format!("urn:problem-type:{problem}"),
            "{path}"
        );
    }
    replica.stop().await;
    commands.stop().await;
}

/// `/live/orders/{id}` in headless Chromium: the page follows the order while commands change
/// it, across a restart of the replica it is connected to, and ends with the whole timeline.
#[tokio::test]
async fn the_live_page_shows_an_orders_timeline_across_a_replica_restart() {
    let commands = Commands::spawn().await;
    let group = group();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let replica = Replica::spawn_in(&commands.topic, &group, "page", data.clone()).await;
    let http = client();
    wait_settled(&http, &[&replica]).await;
    let placed = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-page", 1),
    )
    .await;
    let id = placed.order_id.clone();
    let port = replica.address.rsplit(':').next().unwrap().to_owned();

    let browser = Browser::launch().await;
    let mut tab = browser
        .open(&format!("{}/live/orders/{id}", replica.address))
        .await;
    // What the page shows: each event's type in order, and the latest status.
    const SHOWN: &str = "JSON.stringify({types: [...document.querySelectorAll('#timeline li')].map(li => li.dataset.type), status: document.getElementById('status').textContent})";
    async fn shown(tab: &mut Tab) -> (Vec<String>, String) {
        let value = tab.evaluate(SHOWN).await;
        let shown: Value = serde_json::from_str(value.as_str().unwrap_or("{}")).unwrap();
        let types = shown["types"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|v| v.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        (types, shown["status"].as_str().unwrap_or("").to_owned())
    }
    async fn until_shown(tab: &mut Tab, expected: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (types, status) = shown(tab).await;
            if types == expected && status == *expected.last().unwrap() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page shows {types:?} (latest {status:?}), not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    until_shown(&mut tab, &["OrderPlaced"]).await;
    post(
        &http,
        &format!("{}/orders/{id}/payment", commands.address),
        PAY,
    )
    .await;
    until_shown(&mut tab, &["OrderPlaced", "OrderPaid"]).await;

    // The replica the page is connected to stops; the shipment is committed while it is away;
    // it comes back on the same address, and the page's EventSource reconnects to it.
    replica.stop().await;
    post(
        &http,
        &format!("{}/orders/{id}/shipment", commands.address),
        SHIP,
    )
    .await;
    let mut config = Replica::config(&commands.topic, &group, "page", &data);
    config.listen = format!("127.0.0.1:{port}");
    let restarted = Replica::spawn_with(config, data).await;
    until_shown(&mut tab, &["OrderPlaced", "OrderPaid", "OrderShipped"]).await;
    // Nothing more arrives: each event was shown once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shown(&mut tab).await.0,
        ["OrderPlaced", "OrderPaid", "OrderShipped"]
    );
    restarted.stop().await;
    commands.stop().await;
}

/// SIGTERM ends every open stream with a `retry:` hint, and the metrics count the stream.
#[tokio::test]
async fn at_sigterm_a_stream_ends_with_a_retry_hint() {
    let commands = Commands::spawn().await;
    let group = group();
    let mut replica = start_process(&commands.topic, &group, "stopping");
    wait_ready(&replica.address).await;
    let mut stream = Sse::open(&format!("{}/orders/o-1/events", replica.address), None).await;
    let metrics = metrics_of(&replica.address).await;
    assert!(
        metrics.lines().any(|l| l == "query_service_live_streams 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("query_service_live_tail_events_total ")),
        "{metrics}"
    );
    let pid = replica.child.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let mut last = None;
    while let Some(message) = stream.next(WAIT).await {
        last = Some(message);
    }
    let last = last.expect("the stream ended with a message");
    assert_eq!(last.retry.as_deref(), Some("1000"), "{last:?}");
    assert!(
        last.comments.iter().any(|c| c.contains("stopping")),
        "{last:?}"
    );
    let status = replica.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    commands.stop().await;
}

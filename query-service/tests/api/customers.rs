//! The customers projection: one projection over two topics. A customer's profile joined with
//! what their orders add up to, from any replica, read-your-writes with either topic's token,
//! and each topic applied exactly once across a restart.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    Commands, Replica, client, delete_group, eventually, order_body, post, wait_settled,
};

fn group() -> String {
    format!("query-customers-test-{}", uuid::Uuid::new_v4())
}

async fn get_customer(
    http: &reqwest::Client,
    replica: &Replica,
    id: &str,
    token: Option<&str>,
) -> (u16, String, Value) {
    let mut request = http.get(format!("{}/customers/{id}", replica.address));
    if let Some(token) = token {
        request = request.header("consistency-token", token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, served_by, response.json().await.unwrap_or_default())
}

/// Waits until `replica` answers the customer with `check` holding, and returns the answer.
async fn customer_when(
    http: &reqwest::Client,
    replica: &Replica,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = get_customer(http, replica, id, None).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every replica's customers projection has started, joined its group and caught
/// up, as readiness reports it.
async fn wait_customers_settled(http: &reqwest::Client, replicas: &[&Replica]) {
    for replica in replicas {
        eventually(
            Duration::from_secs(60),
            "the customers projection",
            || async {
                let response = http
                    .get(format!("{}/health/ready", replica.address))
                    .send()
                    .await;
                let Ok(response) = response else {
                    return false;
                };
                let ready = response.status() == 200;
                let body: Value = response.json().await.unwrap_or_default();
                ready && body["projections"]["customers"]["joined"] == true
            },
        )
        .await;
    }
    wait_settled(http, replicas).await;
}

#[tokio::test]
async fn a_customer_is_joined_with_orders_placed_before_and_after_registering() {
    let commands = Commands::spawn().await;
    let group = group();
    let replicas = [
        Replica::spawn(&commands.topic, &group, "replica-a").await,
        Replica::spawn(&commands.topic, &group, "replica-b").await,
    ];
    let http = client();
    wait_customers_settled(&http, &replicas.iter().collect::<Vec<_>>()).await;

    // Orders before the customer exists: an order's customer id is not checked.
    let first = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-join", 2),
    )
    .await;
    let second = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-join", 1),
    )
    .await;
    post(
        &http,
        &format!("{}/orders/{}/payment", commands.address, first.order_id),
        r#"{"amount_cents":2500,"payment_ref":"p-1"}"#,
    )
    .await;
    let registered = post(
        &http,
        &format!("{}/customers", commands.address),
        r#"{"customer_id":"c-join","name":"Ada","email":"ada@example.com"}"#,
    )
    .await;

    // Read your registration through either replica, with its token: no polling.
    let mut owners = Vec::new();
    for replica in &replicas {
        let (status, served_by, body) =
            get_customer(&http, replica, "c-join", Some(&registered.token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                &body["customer_id"],
                &body["name"],
                &body["email"],
                &body["status"],
                &body["version"]
            ),
            (
                &"c-join".into(),
                &"Ada".into(),
                &"ada@example.com".into(),
                &"active".into(),
                &1.into()
            )
        );
        owners.push(served_by);
    }
    assert_eq!(owners[0], owners[1], "one replica owns the customer");

    // Both orders count; only the paid one is revenue.
    for replica in &replicas {
        let body = customer_when(&http, replica, "c-join", "the earlier orders", |b| {
            b["orders"]["count"] == 2
        })
        .await;
        assert_eq!(
            body["orders"]["revenue_cents"],
            serde_json::json!({"EUR": 2500}),
            "{body}"
        );
        assert_eq!(body["orders"]["last_order_id"], second.order_id.as_str());
    }

    // An order after registering, read with the order's token.
    let third = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-join", 3),
    )
    .await;
    let paid = post(
        &http,
        &format!("{}/orders/{}/payment", commands.address, third.order_id),
        r#"{"amount_cents":3750,"payment_ref":"p-3"}"#,
    )
    .await;
    for replica in &replicas {
        let (status, _, body) = get_customer(&http, replica, "c-join", Some(&paid.token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["orders"]["count"], 3, "{body}");
        assert_eq!(
            body["orders"]["revenue_cents"],
            serde_json::json!({"EUR": 6250}),
            "{body}"
        );
        assert_eq!(body["orders"]["last_order_id"], third.order_id.as_str());
    }
    // A cancelled paid order is no longer revenue; a later email change shows.
    post(
        &http,
        &format!(
            "{}/orders/{}/cancellation",
            commands.address, first.order_id
        ),
        r#"{"reason":"changed my mind"}"#,
    )
    .await;
    let changed = post(
        &http,
        &format!("{}/customers/c-join/email", commands.address),
        r#"{"email":"ada@lovelace.org"}"#,
    )
    .await;
    let (status, _, body) = get_customer(&http, &replicas[1], "c-join", Some(&changed.token)).await;
    assert_eq!(
        (status, &body["email"], &body["version"]),
        (200, &"ada@lovelace.org".into(), &2.into())
    );
    customer_when(&http, &replicas[0], "c-join", "the refund", |b| {
        b["orders"]["revenue_cents"] == serde_json::json!({"EUR": 3750})
    })
    .await;

    // Unknown customers are a 404 from the owner, relayed by the other; bad ids a 400.
    for replica in &replicas {
        let (status, served_by, body) = get_customer(&http, replica, "nobody-here", None).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["type"], "urn:problem-type:customer-not-found");
        assert!(!served_by.is_empty());
        let (status, _, _) = get_customer(&http, replica, "bad%20id", None).await;
        assert_eq!(status, 400);
    }
    for replica in &replicas {
        replica.stop().await;
    }
    commands.stop().await;
}

#[tokio::test]
async fn a_restarted_replica_reapplies_nothing_on_either_topic() {
    let commands = Commands::spawn().await;
    let group = group();
    let http = client();
    let first = Replica::spawn(&commands.topic, &group, "replica-a").await;
    wait_customers_settled(&http, &[&first]).await;
    post(
        &http,
        &format!("{}/customers", commands.address),
        r#"{"customer_id":"c-back","name":"Bo","email":"bo@example.com"}"#,
    )
    .await;
    for quantity in 1..=3 {
        post(
            &http,
            &format!("{}/orders", commands.address),
            &order_body("c-back", quantity),
        )
        .await;
    }
    customer_when(&http, &first, "c-back", "three orders", |b| {
        b["orders"]["count"] == 3
    })
    .await;
    eventually(Duration::from_secs(20), "four events applied", || async {
        first.customers_stats.applied.get() == 4
    })
    .await;
    first.stop().await;
    let data = first.data.clone();
    drop(first);
    // Without the groups' committed offsets, a replica that resumed from a group instead of
    // from its own store would start both topics over.
    delete_group(&group).await;
    delete_group(&format!("{group}-customers")).await;

    let second = Replica::spawn_in(&commands.topic, &group, "replica-a", data).await;
    wait_customers_settled(&http, &[&second]).await;
    let body = customer_when(&http, &second, "c-back", "the stored join", |b| {
        b["orders"]["count"] == 3
    })
    .await;
    assert_eq!(body["name"], "Bo");
    let more = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-back", 4),
    )
    .await;
    let (status, _, body) = get_customer(&http, &second, "c-back", Some(&more.token)).await;
    assert_eq!(
        (status, &body["orders"]["count"]),
        (200, &4.into()),
        "{body}"
    );
    let email = post(
        &http,
        &format!("{}/customers/c-back/email", commands.address),
        r#"{"email":"bo@example.org"}"#,
    )
    .await;
    let (status, _, body) = get_customer(&http, &second, "c-back", Some(&email.token)).await;
    assert_eq!((status, &body["version"]), (200, &2.into()), "{body}");
    assert_eq!(
        second.customers_stats.applied.get(),
        2,
        "only the two new events, one per topic, are applied after the restart"
    );
    assert_eq!(second.customers_stats.version_gaps.get(), 0);
    second.stop().await;
    commands.stop().await;
}

//! Rebuilding a projection beside the one that serves: on request, and when the store holds
//! another version's views. Reads keep answering `200` throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use projection_engine::projection::namespace;
use projection_engine::store::{Store, StoreBatch};
use serde_json::Value;
use shared_events::view::ReadModel;

use crate::helpers::{
    ADMIN_TOKEN, Commands, READ_TOKEN, Replica, Written, client, eventually, metrics_of,
    order_body, post, wait_settled,
};

fn group() -> String {
    format!("query-rebuild-{}", uuid::Uuid::new_v4())
}

async fn place(http: &reqwest::Client, commands: &Commands, count: u32) -> Vec<Written> {
    let mut written = Vec::new();
    for i in 0..count {
        written.push(
            post(
                http,
                &format!("{}/orders", commands.address),
                &order_body(&format!("c-{}", i % 3), i + 1),
            )
            .await,
        );
    }
    written
}

/// Reads each order with its token: the replica has applied it.
async fn read_all(http: &reqwest::Client, replica: &Replica, orders: &[Written]) {
    for order in orders {
        let response = http
            .get(format!("{}/orders/{}", replica.address, order.order_id))
            .header("consistency-token", &order.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", order.order_id);
    }
}

async fn projection(http: &reqwest::Client, replica: &Replica, name: &str) -> Value {
    read_admin(http, replica, &format!("/admin/projections/{name}")).await
}

/// An admin route's answer, read with the read-only token.
async fn read_admin(http: &reqwest::Client, replica: &Replica, path: &str) -> Value {
    http.get(format!("{}{path}", replica.address))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn rebuilt(http: &reqwest::Client, replica: &Replica, name: &str, generation: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = projection(http, replica, name).await;
        assert_ne!(seen["rebuild"]["state"], "failed", "{seen}");
        if seen["rebuild"]["state"] == "done" && seen["generation"] == generation {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild did not finish: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads `paths` in a loop until stopped; every answer that is not `200`.
fn reader(
    replica: &Replica,
    paths: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let address = replica.address.clone();
    tokio::spawn(async move {
        let http = client();
        let (mut reads, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for path in &paths {
                let response = http.get(format!("{address}{path}")).send().await.unwrap();
                let status = response.status().as_u16();
                reads += 1;
                if status != 200 {
                    failures.push(format!(
                        "{path}: {status} {}",
                        response.text().await.unwrap()
                    ));
                }
            }
        }
        (reads, failures)
    })
}

#[tokio::test]
async fn a_rebuild_swaps_in_while_every_read_answers() {
    let commands = Commands::spawn().await;
    let group = group();
    let data = Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&commands.topic, &group, "rebuild-a", &data);
    // Slow enough that reads and writes overlap the rebuild, faster than the writes.
    config.rebuild_max_events_per_second = Some(100);
    let replica = Replica::spawn_with(config.clone(), Arc::clone(&data)).await;
    let http = client();
    wait_settled(&http, &[&replica]).await;
    let before = place(&http, &commands, 90).await;
    read_all(&http, &replica, &before).await;

    // Who may ask.
    let url = format!("{}/admin/projections/orders/rebuild", replica.address);
    let asked = |token: Option<&'static str>, url: String| {
        let mut request = http.post(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(asked(None, url.clone()).await.unwrap().status(), 401);
    assert_eq!(
        asked(Some(READ_TOKEN), url.clone()).await.unwrap().status(),
        403
    );
    let unknown = asked(
        Some(ADMIN_TOKEN),
        format!("{}/admin/projections/nope/rebuild", replica.address),
    )
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.headers()["content-type"],
        "application/problem+json"
    );
    let listed = read_admin(&http, &replica, "/admin/projections").await;
    let names: Vec<&str> = listed["projections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["orders", "customers"], "{listed}");
    assert_eq!(listed["projections"][0]["generation"], 0);

    let stop = Arc::new(AtomicBool::new(false));
    let mut paths: Vec<String> = before
        .iter()
        .step_by(5)
        .map(|o| format!("/orders/{}", o.order_id))
        .collect();
    paths.push("/customers/c-1/orders".into());
    paths.push("/customers/c-writer/orders".into());
    let reads = reader(&replica, paths, Arc::clone(&stop));

    let started = asked(Some(ADMIN_TOKEN), url.clone()).await.unwrap();
    assert_eq!(started.status(), 202);
    assert_eq!(started.headers()["location"], "/admin/projections/orders");
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["rebuild"]["state"], "running", "{started}");
    assert_eq!(started["rebuild"]["reason"], "requested");
    assert_eq!(started["rebuild"]["generation"], 1);
    assert_eq!(
        started["generation"], 0,
        "the old generation serves meanwhile"
    );
    // Asked again while it runs: the same rebuild.
    let again: Value = asked(Some(ADMIN_TOKEN), url.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["rebuild"]["generation"], 1, "{again}");

    // Orders placed and paid throughout, the handover included: each must be in the new
    // generation exactly once, its view at version 2.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (http, address, writing) = (client(), commands.address.clone(), Arc::clone(&writing));
        tokio::spawn(async move {
            let mut paid = Vec::new();
            while writing.load(Ordering::Relaxed) {
                let order = post(
                    &http,
                    &format!("{address}/orders"),
                    &order_body("c-writer", 1),
                )
                .await;
                let payment = post(
                    &http,
                    &format!("{address}/orders/{}/payment", order.order_id),
                    r#"{"amount_cents":1250,"payment_ref":"p-1"}"#,
                )
                .await;
                paid.push(Written {
                    order_id: order.order_id,
                    token: payment.token,
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            paid
        })
    };

    let done = rebuilt(&http, &replica, "orders", 1).await;
    writing.store(false, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(during.len() >= 3, "the writes overlapped the rebuild");
    assert!(
        done["rebuild"]["events_applied"].as_u64().unwrap() >= 90,
        "{done}"
    );
    assert_eq!(done["rebuild"]["percent"], 100.0);
    let metrics = metrics_of(&replica.address).await;
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| {
                l.contains(name) && l.contains("projection=\"orders\"") && !l.starts_with('#')
            })
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .to_owned()
    };
    assert!(
        line("rebuilds_finished").contains("state=\"done\"")
            && line("rebuilds_finished").ends_with(" 1")
    );
    assert!(line("rebuilding").ends_with(" 0"), "{}", line("rebuilding"));
    stop.store(true, Ordering::Relaxed);
    let (reads, failures) = reads.await.unwrap();
    assert!(reads > 0);
    assert!(
        failures.is_empty(),
        "{} of {reads} reads failed: {failures:?}",
        failures.len()
    );

    // Everything is in the new generation, and what comes next is applied to it.
    let after = place(&http, &commands, 3).await;
    for (order, version) in before
        .iter()
        .chain(&after)
        .map(|o| (o, 1))
        .chain(during.iter().map(|o| (o, 2)))
    {
        let view: Value = http
            .get(format!("{}/orders/{}", replica.address, order.order_id))
            .header("consistency-token", &order.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(view["order_id"], order.order_id.as_str(), "{view}");
        assert_eq!(view["version"], version, "{view}");
    }
    assert_eq!(
        replica.stats.version_gaps.get(),
        0,
        "no event applied twice"
    );
    let orders_of = |customer: &str| {
        let url = format!("{}/customers/{customer}/orders?limit=200", replica.address);
        let http = &http;
        async move {
            let listed: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            listed["orders"].as_array().cloned().unwrap_or_default()
        }
    };
    // c-1's: 30 of the first 90, 1 of the 3 after.
    assert_eq!(orders_of("c-1").await.len(), 31);
    let written = orders_of("c-writer").await;
    assert_eq!(written.len(), during.len());
    assert!(written.iter().all(|o| o["version"] == 2), "{written:?}");

    // A restart resumes the new generation where it is: nothing is applied again.
    replica.stop().await;
    let restarted = Replica::spawn_with(config, data).await;
    wait_settled(&http, &[&restarted]).await;
    read_all(&http, &restarted, &after).await;
    assert_eq!(
        projection(&http, &restarted, "orders").await["generation"],
        1
    );
    assert_eq!(
        restarted.stats.applied.get(),
        0,
        "resumed from the new generation's offsets"
    );
    restarted.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn another_version_serves_its_views_until_this_one_has_built_its_own() {
    let commands = Commands::spawn().await;
    let group = group();
    let data = Arc::new(tempfile::tempdir().unwrap());
    let config = Replica::config(&commands.topic, &group, "rebuild-v", &data);
    let first = Replica::spawn_with(config.clone(), Arc::clone(&data)).await;
    let http = client();
    wait_settled(&http, &[&first]).await;
    let orders = place(&http, &commands, 30).await;
    read_all(&http, &first, &orders).await;
    first.stop().await;

    // The store as the projection's previous version left it: its views in their own shape
    // (here, marked by their currency).
    type Orders = orders::projection::OrdersProjection;
    {
        let namespaces = [
            namespace::<Orders>(),
            namespace::<customers::projection::CustomersProjection>(),
            projection_engine::live::tail::namespace::<query_service::api::Timeline>(),
        ];
        let store = Store::open(data.path(), &namespaces).unwrap();
        let generation = store.active(namespaces[0]);
        let mut batch = StoreBatch::new(generation);
        for order in &orders {
            let stored = store.view(namespaces[0], &order.order_id).unwrap().unwrap();
            let mut view: Value = serde_json::from_slice(&stored).unwrap();
            view["currency"] = "OLD".into();
            batch.put_view(&order.order_id, serde_json::to_vec(&view).unwrap());
        }
        store.write(batch).unwrap();
        store.activate(generation, Orders::VERSION - 1).unwrap();
    }

    let mut config = config;
    config.rebuild_max_events_per_second = Some(5);
    let replica = Replica::spawn_with(config, Arc::clone(&data)).await;
    let probe = format!("{}/orders/{}", replica.address, orders[0].order_id);
    eventually(
        Duration::from_secs(60),
        "the old views to serve",
        || async { http.get(&probe).send().await.unwrap().status() == 200 },
    )
    .await;
    let status = projection(&http, &replica, "orders").await;
    assert_eq!(status["serving_version"], Orders::VERSION - 1, "{status}");
    assert_eq!(status["rebuild"]["reason"], "version_changed", "{status}");

    // From the first answer on: always 200, the old shape, then the new one, never back.
    let (mut old, mut switched) = (0, false);
    loop {
        let mut all_new = true;
        for order in &orders {
            let response = http
                .get(format!("{}/orders/{}", replica.address, order.order_id))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            let view: Value = response.json().await.unwrap();
            if view["currency"] == "OLD" {
                assert!(!switched, "an old view after a new one");
                old += 1;
                all_new = false;
            } else {
                assert_eq!(view["currency"], "EUR");
                switched = true;
            }
        }
        if all_new {
            break;
        }
    }
    assert!(
        old > 0,
        "the old views served while the new ones were built"
    );
    let done = rebuilt(&http, &replica, "orders", 1).await;
    assert_eq!(done["serving_version"], Orders::VERSION, "{done}");

    // The runner goes on from where the rebuild stopped.
    let later = place(&http, &commands, 3).await;
    read_all(&http, &replica, &later).await;
    let missing = http
        .get(format!("{}/orders/no-such-order", replica.address))
        .send()
        .await
        .unwrap();
    // Caught up at the switch: a miss is a true one at once.
    assert_eq!(missing.status(), 404);
    replica.stop().await;
    commands.stop().await;
}

/// The customer's view once `check` holds (or fails after a while).
async fn customer_when(
    http: &reqwest::Client,
    replica: &Replica,
    id: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = http
            .get(format!("{}/customers/{id}", replica.address))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap_or_default();
        if check(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{id}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rebuild_of_the_projection_over_two_topics_keeps_its_join() {
    let commands = Commands::spawn().await;
    let group = group();
    let data = Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&commands.topic, &group, "rebuild-c", &data);
    config.rebuild_max_events_per_second = Some(50);
    let replica = Replica::spawn_with(config, data).await;
    let http = client();
    wait_settled(&http, &[&replica]).await;
    let register = |id: String| {
        let (http, address) = (&http, &commands.address);
        async move {
            post(
                http,
                &format!("{address}/customers"),
                &format!(r#"{{"customer_id":"{id}","name":"Ada","email":"{id}@example.com"}}"#),
            )
            .await
        }
    };
    for i in 0..6 {
        register(format!("c-{i}")).await;
        for _ in 0..2 {
            post(
                &http,
                &format!("{}/orders", commands.address),
                &order_body(&format!("c-{i}"), 2),
            )
            .await;
        }
    }
    for i in 0..6 {
        customer_when(&http, &replica, &format!("c-{i}"), |b| {
            b["orders"]["count"] == 2
        })
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    // The customer joined with the order summary gathered from every partition.
    let paths = (0..6).map(|i| format!("/customers/c-{i}")).collect();
    let reads = reader(&replica, paths, Arc::clone(&stop));
    let started = http
        .post(format!(
            "{}/admin/projections/customers/rebuild",
            replica.address
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    // On both topics while it builds.
    register("c-new".into()).await;
    post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-0", 2),
    )
    .await;
    let done = rebuilt(&http, &replica, "customers", 1).await;
    assert_eq!(done["rebuild"]["reason"], "requested");
    stop.store(true, Ordering::Relaxed);
    let (reads, failures) = reads.await.unwrap();
    assert!(reads > 0);
    assert!(failures.is_empty(), "{failures:?}");

    let c0 = customer_when(&http, &replica, "c-0", |b| b["orders"]["count"] == 3).await;
    assert_eq!(c0["email"], "c-0@example.com");
    customer_when(&http, &replica, "c-new", |b| b["customer_id"] == "c-new").await;
    for i in 1..6 {
        let body = customer_when(&http, &replica, &format!("c-{i}"), |_| true).await;
        assert_eq!(body["orders"]["count"], 2, "{body}");
    }
    assert_eq!(replica.customers_stats.version_gaps.get(), 0);
    replica.stop().await;
    commands.stop().await;
}

//! Replicas answering for each other: routing, read-your-writes, customers, restarts, crashes.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    ADMIN_TOKEN, Commands, PARTITIONS, Replica, ReplicaProcess, client, delete_group, env,
    eventually, order_body, post, start_process, start_process_with, wait_ready, wait_settled,
};

fn group() -> String {
    format!("query-test-{}", uuid::Uuid::new_v4())
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, Value) {
    let mut request = http.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    (status, headers, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn every_replica_answers_every_key_and_reads_its_writes() {
    let commands = Commands::spawn().await;
    let group = group();
    let replicas = [
        Replica::spawn(&commands.topic, &group, "replica-a").await,
        Replica::spawn(&commands.topic, &group, "replica-b").await,
        Replica::spawn(&commands.topic, &group, "replica-c").await,
    ];
    let http = client();
    wait_settled(&http, &replicas.iter().collect::<Vec<_>>()).await;

    let mut placed = Vec::new();
    for i in 0..9u32 {
        let written = post(
            &http,
            &format!("{}/orders", commands.address),
            &order_body(&format!("c-{i}"), i + 1),
        )
        .await;
        // Read your write at once, through any replica (owner or not): no polling.
        let via = &replicas[i as usize % replicas.len()];
        let (status, headers, view) = get(
            &http,
            &format!("{}/orders/{}", via.address, written.order_id),
            &[("consistency-token", &written.token)],
        )
        .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["version"], 1);
        assert!(headers.contains_key("served-by"));
        placed.push((written.order_id, i));
    }

    // Every key, every replica, the same answer, served by the one owner.
    let mut owners = HashMap::new();
    for (id, i) in &placed {
        for replica in &replicas {
            let (status, headers, view) =
                get(&http, &format!("{}/orders/{id}", replica.address), &[]).await;
            assert_eq!(status, 200);
            assert_eq!(view["customer_id"], format!("c-{i}"));
            assert_eq!(view["total_cents"], i64::from(*i + 1) * 1250);
            let owner = owners
                .entry(id.clone())
                .or_insert_with(|| headers["served-by"].clone());
            assert_eq!(&headers["served-by"], owner, "one owner per key");
            if headers["served-by"] != replica.id {
                assert_eq!(headers["forwarded-to"], *owner);
            }
        }
    }

    // A later write, then a read with its token: the owner waits until it applied it.
    let (id, _) = &placed[0];
    let paid = post(
        &http,
        &format!("{}/orders/{id}/payment", commands.address),
        r#"{"amount_cents":1250,"payment_ref":"p-1"}"#,
    )
    .await;
    for replica in &replicas {
        let (status, _, view) = get(
            &http,
            &format!("{}/orders/{id}", replica.address),
            &[("consistency-token", &paid.token)],
        )
        .await;
        assert_eq!((status, view["status"].as_str()), (200, Some("paid")));
    }

    // Unknown orders: 404 from the owner, relayed by the others; bad input: 400.
    for replica in &replicas {
        let (status, headers, body) = get(
            &http,
            &format!("{}/orders/no-such-order", replica.address),
            &[],
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert!(headers.contains_key("served-by"));
        let (status, _, _) = get(&http, &format!("{}/orders/bad%20id", replica.address), &[]).await;
        assert_eq!(status, 400);
        let (status, _, _) = get(
            &http,
            &format!("{}/orders/{id}", replica.address),
            &[("consistency-token", "nope")],
        )
        .await;
        assert_eq!(status, 400);
    }

    // A token far beyond the log: a bounded wait, then a retryable 503.
    let far = format!("{}:0:999999", commands.topic);
    let owner_of_0 = owners_of_partition(&http, &replicas[0], 0).await;
    let replica = replicas.iter().find(|r| r.id == owner_of_0).unwrap();
    let started = std::time::Instant::now();
    let key = key_in_partition(0);
    let (status, headers, body) = get(
        &http,
        &format!("{}/orders/{key}", replica.address),
        &[("consistency-token", &far)],
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, 503);
    assert_eq!(
        body["type"], "urn:problem-type:consistency-timeout",
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    // The whole bounded wait (5 s by default), not an immediate refusal, and not more.
    assert!(
        waited >= Duration::from_millis(4_900) && waited < Duration::from_secs(60),
        "waited {waited:?}"
    );

    // A token for the next record of partition 0: the read waits until a command writes it,
    // then answers for the key (here: not found, now that the partition is known to be applied
    // that far).
    let next = next_offset(&commands.topic, 0);
    let ahead = format!("{}:0:{next}", commands.topic);
    let read = {
        let (http, url) = (http.clone(), format!("{}/orders/{key}", replica.address));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let answer = get(&http, &url, &[("consistency-token", &ahead)]).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        !read.is_finished(),
        "the read did not wait for its position"
    );
    let mut written_at = None;
    for i in 0..200 {
        let written = post(
            &http,
            &format!("{}/orders", commands.address),
            &order_body("c-wait", i % 5 + 1),
        )
        .await;
        if written.token.split(':').nth(1) == Some("0") {
            written_at = Some(std::time::Instant::now());
            break;
        }
    }
    assert!(written_at.is_some(), "no order landed in partition 0");
    let ((status, _, body), waited) = read.await.unwrap();
    assert_eq!(
        status, 404,
        "the read answered for the key once applied: {body}"
    );
    assert!(waited >= Duration::from_millis(1_000), "waited {waited:?}");

    for replica in &replicas {
        replica.stop().await;
    }
    commands.stop().await;
}

/// The offset the next record of `partition` will get.
fn next_offset(topic: &str, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap();
    high
}

/// Some key that hashes to `partition`.
fn key_in_partition(partition: i32) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| {
            shared_events::partitioner::partition_for_key(k.as_bytes(), PARTITIONS) == partition
        })
        .unwrap()
}

async fn owners_of_partition(http: &reqwest::Client, replica: &Replica, partition: i32) -> String {
    let cluster: Value = http
        .get(format!("{}/admin/cluster", replica.address))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cluster["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["partitions"]
                .as_array()
                .unwrap()
                .contains(&Value::from(partition))
        })
        .map(|m| m["replica_id"].as_str().unwrap().to_owned())
        .unwrap()
}

#[tokio::test]
async fn a_forwarded_query_for_a_partition_not_owned_is_a_503_not_a_loop() {
    let commands = Commands::spawn().await;
    let group = group();
    // Without standbys: a standby would answer the forwarded query (`standby` tests).
    let spawn = |id: &'static str| {
        let data = Arc::new(tempfile::tempdir().unwrap());
        let mut config = Replica::config(&commands.topic, &group, id, &data);
        config.standby_replicas = 0;
        Replica::spawn_with(config, data)
    };
    let a = spawn("replica-a").await;
    let b = spawn("replica-b").await;
    let http = client();
    wait_settled(&http, &[&a, &b]).await;
    // Find a partition b does not own and send b a request "forwarded" from a stale view.
    let owner = owners_of_partition(&http, &a, 0).await;
    let (not_owner, partition) = if owner == "replica-a" {
        (&b, 0)
    } else {
        (&a, 0)
    };
    let key = key_in_partition(partition);
    let (status, headers, body) = get(
        &http,
        &format!("{}/orders/{key}", not_owner.address),
        &[("forwarded-by", "replica-x")],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(body["type"], "urn:problem-type:temporarily-unavailable");

    // The admin view: authenticated, with owners, lag and this member's group state.
    let (status, headers, _) = get(&http, &format!("{}/admin/cluster", a.address), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, _) = get(
        &http,
        &format!("{}/admin/cluster", a.address),
        &[("authorization", "Bearer wrong-token")],
    )
    .await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, cluster) = get(
        &http,
        &format!("{}/admin/cluster", a.address),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cluster["replicas"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        cluster["partitions"].as_array().map(Vec::len),
        Some(PARTITIONS as usize)
    );
    assert!(cluster["partitions"][0]["lag"].is_i64(), "{cluster}");
    assert_eq!(cluster["this_replica"]["membership"]["state"], "up");
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let lower = format!("bearer {ADMIN_TOKEN}");
    let (status, _, _) = get(
        &http,
        &format!("{}/admin/cluster", a.address),
        &[("authorization", &lower)],
    )
    .await;
    assert_eq!(status, 200);

    // Other methods: 405 with `Allow`; HEAD is GET without the body.
    let post = http
        .post(format!("{}/orders/{key}", a.address))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    assert_eq!(post.headers()["content-type"], "application/problem+json");
    let head = http
        .head(format!("{}/health/live", a.address))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());
    a.stop().await;
    b.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_customers_orders_come_from_every_partition_in_pages() {
    let commands = Commands::spawn().await;
    let group = group();
    let a = Replica::spawn(&commands.topic, &group, "replica-a").await;
    let b = Replica::spawn(&commands.topic, &group, "replica-b").await;
    let http = client();
    wait_settled(&http, &[&a, &b]).await;
    let mut mine = Vec::new();
    let mut last_token = String::new();
    for i in 0..7u32 {
        let written = post(
            &http,
            &format!("{}/orders", commands.address),
            &order_body("c-many", i + 1),
        )
        .await;
        mine.push(written.order_id);
        last_token = written.token;
        post(
            &http,
            &format!("{}/orders", commands.address),
            &order_body("c-other", 1),
        )
        .await;
    }
    let partitions: std::collections::HashSet<i32> = mine
        .iter()
        .map(|id| shared_events::partitioner::partition_for_key(id.as_bytes(), PARTITIONS))
        .collect();
    assert!(
        partitions.len() > 1,
        "the orders should spread over partitions"
    );

    for replica in [&a, &b] {
        let url = format!("{}/customers/c-many/orders", replica.address);
        // Wait until the last write is visible, then every order is there, oldest first.
        eventually(
            Duration::from_secs(30),
            "all of the customer's orders",
            || async {
                let (status, _, page) = get(&http, &url, &[]).await;
                status == 200 && page["orders"].as_array().map_or(0, Vec::len) == mine.len()
            },
        )
        .await;
        let (_, _, page) = get(&http, &url, &[("consistency-token", &last_token)]).await;
        let ids: Vec<String> = page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, mine, "ordered by placement time");
        assert!(page["next_cursor"].is_null());
        // A client cannot make the public route answer with a partial list.
        let (_, _, spoofed) = get(&http, &url, &[("forwarded-by", "replica-x")]).await;
        assert_eq!(spoofed["orders"].as_array().map(Vec::len), Some(mine.len()));

        // Pages of three.
        let mut paged = Vec::new();
        let mut next = String::new();
        loop {
            let page_url = if next.is_empty() {
                format!("{url}?limit=3")
            } else {
                format!("{url}?limit=3&after={next}")
            };
            let (status, _, page) = get(&http, &page_url, &[]).await;
            assert_eq!(status, 200, "{page}");
            paged.extend(
                page["orders"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["order_id"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => next = cursor.to_owned(),
                None => break,
            }
        }
        assert_eq!(paged, mine);
        let (status, _, _) = get(&http, &format!("{url}?limit=0"), &[]).await;
        assert_eq!(status, 400);
        let (status, _, _) = get(&http, &format!("{url}?after=garbage"), &[]).await;
        assert_eq!(status, 400);
    }
    let (status, _, page) = get(
        &http,
        &format!("{}/customers/nobody/orders", a.address),
        &[],
    )
    .await;
    assert_eq!(
        (status, page["orders"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    a.stop().await;
    b.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn a_restarted_replica_resumes_from_its_store_and_reapplies_nothing() {
    let commands = Commands::spawn().await;
    let group = group();
    let http = client();
    let first = Replica::spawn(&commands.topic, &group, "replica-a").await;
    wait_settled(&http, &[&first]).await;
    let mut last = None;
    for i in 0..6u32 {
        last = Some(
            post(
                &http,
                &format!("{}/orders", commands.address),
                &order_body("c-r", i + 1),
            )
            .await,
        );
    }
    let last = last.unwrap();
    let (status, _, _) = get(
        &http,
        &format!("{}/orders/{}", first.address, last.order_id),
        &[("consistency-token", &last.token)],
    )
    .await;
    assert_eq!(status, 200);
    eventually(Duration::from_secs(20), "six events applied", || async {
        first.stats.applied.get() == 6
    })
    .await;
    first.stop().await;
    let data = first.data.clone();
    drop(first);
    // Without the group's committed offsets, a replica that resumed from the group instead of
    // from its own store would start over from the earliest offset and apply all seven.
    delete_group(&group).await;

    let second = Replica::spawn_in(&commands.topic, &group, "replica-a", data).await;
    wait_settled(&http, &[&second]).await;
    let (status, _, view) = get(
        &http,
        &format!("{}/orders/{}", second.address, last.order_id),
        &[],
    )
    .await;
    assert_eq!(status, 200, "the store kept the view: {view}");
    let more = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-r", 9),
    )
    .await;
    let (status, _, _) = get(
        &http,
        &format!("{}/orders/{}", second.address, more.order_id),
        &[("consistency-token", &more.token)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        second.stats.applied.get(),
        1,
        "only the new event is applied after the restart"
    );
    assert_eq!(second.stats.version_gaps.get(), 0);
    second.stop().await;
    commands.stop().await;
}

#[tokio::test]
async fn after_kill_9_of_a_replica_the_survivors_answer_every_key() {
    let commands = Commands::spawn().await;
    let group = group();
    let http = client();
    let mut replicas: Vec<ReplicaProcess> = ["replica-a", "replica-b", "replica-c"]
        .into_iter()
        .map(|id| start_process(&commands.topic, &group, id))
        .collect();
    let mut ids = Vec::new();
    for i in 0..12u32 {
        ids.push(
            post(
                &http,
                &format!("{}/orders", commands.address),
                &order_body("c-k", i + 1),
            )
            .await
            .order_id,
        );
    }
    // Everyone answers everything.
    for replica in &replicas {
        for id in &ids {
            let url = format!("{}/orders/{id}", replica.address);
            eventually(Duration::from_secs(60), "every key answered", || async {
                http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
            })
            .await;
        }
    }

    // kill -9 one replica; within the session timeout plus a few seconds the others answer
    // every key again (meanwhile: right answers or retryable errors, never a wrong 404).
    let victim = replicas.remove(0);
    let mut victim = victim;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = std::time::Instant::now();
    eventually(
        // Generous: it only stops a hung test; the time it took is printed below.
        Duration::from_secs(120),
        "the survivors to answer every key",
        || async {
            let mut all = true;
            for replica in &replicas {
                for id in &ids {
                    let response = http
                        .get(format!("{}/orders/{id}", replica.address))
                        .send()
                        .await;
                    match response.map(|r| r.status().as_u16()) {
                        Ok(200) => {}
                        Ok(503) | Err(_) => all = false,
                        Ok(other) => panic!(
                            "{} answered {other} for {id} during the failover",
                            replica.id
                        ),
                    }
                }
            }
            all
        },
    )
    .await;
    eprintln!("failover after kill -9 took {:?}", killed_at.elapsed());
    drop(victim);
    drop(replicas);
    commands.stop().await;
}

/// Two replica processes in one group, both owning partitions and ready, and the id of an
/// order the second one owns, as the first one sees it.
pub(crate) async fn asker_and_owner(
    commands: &Commands,
    settings: &[(&str, &str)],
) -> (ReplicaProcess, ReplicaProcess, String) {
    let group = group();
    let http = client();
    let asker = start_process_with(&commands.topic, &group, "asker", settings);
    let owner = start_process_with(&commands.topic, &group, "owner", settings);
    // Both in the group, each owning partitions, both ready.
    let cluster_url = format!("{}/admin/cluster", asker.address);
    eventually(
        Duration::from_secs(60),
        "both replicas to own partitions",
        || async {
            let mut all_ready = true;
            for replica in [&asker, &owner] {
                all_ready &= http
                    .get(format!("{}/health/ready", replica.address))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
            }
            let cluster: Value = match http.get(&cluster_url).bearer_auth(ADMIN_TOKEN).send().await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            let owning = cluster["replicas"].as_array().map_or(0, |members| {
                members
                    .iter()
                    .filter(|m| m["partitions"].as_array().is_some_and(|p| !p.is_empty()))
                    .count()
            });
            all_ready && owning == 2
        },
    )
    .await;
    // A key the owner serves, as the asker sees it.
    let mut owned = None;
    for i in 0..30u32 {
        let id = post(
            &http,
            &format!("{}/orders", commands.address),
            &order_body("c-hang", i % 5 + 1),
        )
        .await
        .order_id;
        let url = format!("{}/orders/{id}", asker.address);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let served_by = loop {
            match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    break r.headers()["served-by"].to_str().unwrap().to_owned();
                }
                _ => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the order is not readable through the asker"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if served_by == owner.id {
            owned = Some(id);
            break;
        }
    }
    let owned = owned.expect("no order landed on the owner's partitions");
    (asker, owner, owned)
}

/// A forwarded read whose owner hangs (stopped with SIGSTOP: its connections accept, nothing
/// answers) ends at the forward timeout with a retryable 503: after waiting for it, not before,
/// and not much after.
#[tokio::test]
async fn a_forward_to_a_hung_owner_ends_at_the_forward_timeout() {
    let commands = Commands::spawn().await;
    let http = client();
    // A session long enough that the group does not reassign the stopped replica's partitions
    // during the test.
    let settings = [
        ("QUERY_SESSION_TIMEOUT_MS", "45000"),
        ("QUERY_FORWARD_TIMEOUT_MS", "2000"),
        ("QUERY_CONSISTENCY_WAIT_MS", "1000"),
        // Without standbys: with them, the standby answers (`standby` tests).
        ("QUERY_STANDBY_REPLICAS", "0"),
    ];
    let (asker, owner, owned) = asker_and_owner(&commands, &settings).await;

    let pid = owner.child.id().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stopped.success());
    let started = std::time::Instant::now();
    let response = http
        .get(format!("{}/orders/{owned}", asker.address))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(6),
        "the forward took {waited:?}, its bound is 2 s"
    );
    drop(owner);
    drop(asker);
    commands.stop().await;
}

/// Writes `count` placed orders straight to `topic` (as the command service would encode them),
/// much faster than through HTTP.
async fn write_backlog(topic: &str, count: usize) {
    use orders::events::{Envelope, LineItem, OrderEvent, OrderPayload};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let registry = service_config::RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));
    let codec: shared_events::EventCodec<OrderEvent> = shared_events::EventCodec::new(
        registry.sr_settings(Duration::from_secs(5)).unwrap(),
        topic,
    )
    .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut sends = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("backlog-{i}");
        let event = OrderEvent {
            envelope: Envelope {
                event_id: format!("e-{i}"),
                aggregate_id: id.clone(),
                aggregate_version: 1,
                occurred_at_ms: 1_795_000_000_000,
                command_id: format!("k-{i}"),
                idempotency_key: None,
                correlation_id: format!("c-{i}"),
            },
            payload: OrderPayload::Placed {
                customer_id: format!("c-{}", i % 100),
                currency: "EUR".into(),
                items: vec![LineItem {
                    sku: "A-1".into(),
                    quantity: 1,
                    unit_price_cents: 100,
                }],
                total_cents: 100,
            },
        };
        let value = codec.encode(&event).await.unwrap();
        let producer = producer.clone();
        let topic = topic.to_owned();
        sends.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&id).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map(drop)
                .map_err(|(e, _)| e)
        }));
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
}

/// SIGTERM while a replica is still catching up with a backlog: it stops within its grace
/// (here 3 s), having served HTTP all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_catching_up_stops_within_the_grace() {
    const BACKLOG: usize = 100_000;
    let commands = Commands::spawn().await;
    write_backlog(&commands.topic, BACKLOG).await;
    let http = client();
    let mut replica = start_process_with(
        &commands.topic,
        &group(),
        "catching-up",
        &[("QUERY_SHUTDOWN_GRACE_MS", "3000")],
    );
    // Catching up: it answers, it has applied some of the backlog, not all.
    let metrics_url = format!("{}/metrics", replica.address);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let applied = loop {
        let applied = match http
            .get(&metrics_url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r
                .text()
                .await
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    l.strip_prefix(r#"query_service_applied_events_total{projection="orders"} "#)
                })
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0),
            Err(_) => 0.0,
        };
        if applied > 0.0 {
            break applied;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never started applying"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    #[allow(clippy::cast_precision_loss)]
    let backlog = BACKLOG as f64;
    assert!(applied < backlog, "caught up before the test could stop it");

    let took = terminate(&mut replica).await;
    eprintln!("SIGTERM after {applied} of {BACKLOG} events: stopped in {took:?}");
    assert!(
        took < Duration::from_millis(3_000 + 700),
        "stopped in {took:?}, grace 3 s"
    );
    commands.stop().await;
}

/// Sends SIGTERM to `replica` and waits for it to exit; how long it took.
async fn terminate(replica: &mut ReplicaProcess) -> Duration {
    let signalled = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &replica.child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exit = loop {
        if let Some(exit) = replica.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(30),
            "{} did not stop within 30 s",
            replica.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{}: {exit}", replica.id);
    signalled.elapsed()
}

/// SIGTERM while serving reads under load, and while a new member joins the group (a
/// rebalance under way): each replica stops within its grace.
#[tokio::test]
async fn sigterm_while_serving_or_rebalancing_stops_within_the_grace() {
    let commands = Commands::spawn().await;
    let group = group();
    let http = client();
    let settings = [("QUERY_SHUTDOWN_GRACE_MS", "3000")];
    let mut serving = start_process_with(&commands.topic, &group, "serving", &settings);
    let mut ids = Vec::new();
    for i in 0..12u32 {
        let url = format!("{}/orders", commands.address);
        ids.push(
            post(&http, &url, &order_body("c-term", i + 1))
                .await
                .order_id,
        );
    }
    for id in &ids {
        let url = format!("{}/orders/{id}", serving.address);
        eventually(Duration::from_secs(60), "every key answered", || async {
            http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, address, ids) = (
            std::sync::Arc::clone(&stop),
            serving.address.clone(),
            ids.clone(),
        );
        tokio::spawn(async move {
            let http = client();
            let mut turn = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                turn += 1;
                let _ = http
                    .get(format!("{address}/orders/{}", ids[turn % ids.len()]))
                    .send()
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = terminate(&mut serving).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    eprintln!("SIGTERM while serving: stopped in {took:?}");
    assert!(
        took < Duration::from_millis(3_000 + 700),
        "stopped in {took:?}, grace 3 s"
    );

    let mut member = start_process_with(&commands.topic, &group, "member", &settings);
    wait_ready(&member.address).await;
    let joining = start_process_with(&commands.topic, &group, "joining", &settings);
    // As soon as the new member is up, it is joining: the group rebalances around it.
    eventually(
        Duration::from_secs(60),
        "the new member to start",
        || async {
            http.get(format!("{}/health/live", joining.address))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let took = terminate(&mut member).await;
    eprintln!("SIGTERM while a member joins: stopped in {took:?}");
    assert!(
        took < Duration::from_millis(3_000 + 700),
        "stopped in {took:?}, grace 3 s"
    );
    commands.stop().await;
}

/// SIGTERM while a forwarded read waits on an owner that hangs (SIGSTOP) for longer than the
/// grace: the replica still stops within the grace, dropping the read.
#[tokio::test]
async fn sigterm_while_forwarding_to_a_hung_owner_stops_within_the_grace() {
    let commands = Commands::spawn().await;
    let settings = [
        ("QUERY_SESSION_TIMEOUT_MS", "45000"),
        ("QUERY_FORWARD_TIMEOUT_MS", "20000"),
        ("QUERY_CONSISTENCY_WAIT_MS", "1000"),
        ("QUERY_SHUTDOWN_GRACE_MS", "3000"),
    ];
    let (mut asker, owner, owned) = asker_and_owner(&commands, &settings).await;
    let pid = owner.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let read = {
        let url = format!("{}/orders/{owned}", asker.address);
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
    };
    // The read is in flight (forwarded, waiting) before the stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!read.is_finished());
    let took = terminate(&mut asker).await;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    eprintln!("SIGTERM while forwarding: stopped in {took:?}");
    assert!(
        took < Duration::from_millis(3_000 + 700),
        "stopped in {took:?}, grace 3 s"
    );
    let _ = read.await;
    drop(owner);
    commands.stop().await;
}

//! Several command instances on one topic set: partitions owned through the command group,
//! commands forwarded to their owner, a killed instance's partitions taken over, a paused one
//! fenced, idempotency keys across a takeover, and racing commands through different instances.
//! Every claim is checked against the log with an independent read-committed consumer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use local_kafka::process::free_port;
use serde_json::Value;
use shared_events::EventEnvelope;

use crate::helpers::{
    ADMIN_TOKEN, KillOnDrop, PARTITIONS, TestApp, codec, config, env, fresh_topic, metric,
    order_body, read_committed, spawn_app_with, wait_ready,
};

/// Session timeout of the instances these tests start: the broker's smallest.
const SESSION_TIMEOUT_MS: u64 = 6_000;

/// An acknowledged command: the event its answer named, and (for a failure's message) where
/// it was asked and who decided it.
#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Acked {
    order: String,
    version: i64,
    event_id: String,
    position: Value,
    served_by: String,
    asked: usize,
}

/// What an instance's `/admin/cluster` says this instance owns of `topic`.
async fn owned(client: &reqwest::Client, address: &str, topic: &str) -> Option<Vec<i64>> {
    let entry = topic_entry(client, address, topic).await?;
    Some(
        entry["owned"]
            .as_array()?
            .iter()
            .filter_map(Value::as_i64)
            .collect(),
    )
}

/// The owner of each partition of `topic` in an instance's view of the group.
async fn view(client: &reqwest::Client, address: &str, topic: &str) -> Option<Vec<Option<String>>> {
    let entry = topic_entry(client, address, topic).await?;
    Some(
        entry["owners"]
            .as_array()?
            .iter()
            .map(|o| o.as_str().map(str::to_owned))
            .collect(),
    )
}

async fn instance_id(client: &reqwest::Client, address: &str) -> Option<String> {
    let body: Value = client
        .get(format!("{address}/admin/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["this_instance"]["instance_id"]
        .as_str()
        .map(str::to_owned)
}

async fn topic_entry(client: &reqwest::Client, address: &str, topic: &str) -> Option<Value> {
    let body: Value = client
        .get(format!("{address}/admin/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    body["this_instance"]["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic"] == topic)
        .cloned()
}

/// Waits until the instances at `addresses` own every partition of `topic` between them, each
/// at least one, and returns who owns which.
async fn settled(
    client: &reqwest::Client,
    addresses: &[String],
    topic: &str,
    within: Duration,
) -> BTreeMap<i64, usize> {
    let deadline = Instant::now() + within;
    loop {
        let mut owners = BTreeMap::new();
        let mut each = true;
        for (index, address) in addresses.iter().enumerate() {
            let mine = owned(client, address, topic).await.unwrap_or_default();
            each &= !mine.is_empty() || addresses.len() > PARTITIONS as usize;
            for p in mine {
                owners.insert(p, index);
            }
        }
        if each && owners.len() == PARTITIONS as usize {
            // And every instance's view of the group says so, or it would forward to the
            // instance that was the owner before.
            let mut ids = Vec::new();
            for address in addresses {
                ids.push(instance_id(client, address).await);
            }
            let expected: Vec<Option<String>> = owners.values().map(|&i| ids[i].clone()).collect();
            let mut agree = true;
            for address in addresses {
                agree &= view(client, address, topic).await.as_ref() == Some(&expected);
            }
            if agree {
                return owners;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the partitions of {topic} were not owned by {addresses:?} within {within:?}: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of `topic`, decoded: (order, version, event id, idempotency key, position).
pub async fn events(topic: &str) -> Vec<(String, i64, String, Option<String>, (i32, i64))> {
    let records = {
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_committed(&topic))
            .await
            .unwrap()
    };
    let codec = codec(topic);
    let mut events = Vec::new();
    for record in records {
        let event = codec.decode(&record.value).await.unwrap();
        events.push((
            event.aggregate_id().to_owned(),
            event.aggregate_version(),
            event.event_id().to_owned(),
            event.idempotency_key().map(str::to_owned),
            (record.partition, record.offset),
        ));
    }
    events
}

/// Every acknowledged command is in the log exactly once, and each order's versions are
/// 1..n with no gap or duplicate.
async fn assert_log_holds(topic: &str, acked: &[Acked]) {
    let events = events(topic).await;
    let mut versions: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut ids: HashMap<&str, (usize, &str, i64)> = HashMap::new();
    for (order, version, event_id, _, _) in &events {
        versions.entry(order).or_default().push(*version);
        ids.entry(event_id).or_insert((0, order, *version)).0 += 1;
    }
    for (order, mut seen) in versions {
        seen.sort_unstable();
        let expected: Vec<i64> = (1..=i64::try_from(seen.len()).unwrap()).collect();
        assert_eq!(seen, expected, "versions of {order}");
    }
    for ack in acked {
        if !ids.contains_key(ack.event_id.as_str()) {
            let partition = ack.position["partition"].as_i64().unwrap_or(-1);
            let offset = ack.position["offset"].as_i64().unwrap_or(-1);
            let near: Vec<_> = events
                .iter()
                .filter(|e| i64::from(e.4.0) == partition && (e.4.1 - offset).abs() < 20)
                .map(|e| (e.4, &e.0, e.1))
                .collect();
            eprintln!("missing {ack:?}; the log near it: {near:?}");
        }
        assert_eq!(
            ids.get(ack.event_id.as_str()).copied(),
            Some((1, ack.order.as_str(), ack.version)),
            "acknowledged {ack:?} is not in the log exactly once, as answered"
        );
    }
}

/// Three instances in this process on one fresh topic, settled: each owns one partition.
async fn three_in_process() -> (Vec<TestApp>, String) {
    let topic = fresh_topic();
    let customers = format!("customers-test-{}", uuid::Uuid::new_v4());
    let mut apps = Vec::new();
    for _ in 0..3 {
        let mut config = config(&topic);
        config.customers_topic.clone_from(&customers);
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.session_timeout_ms = SESSION_TIMEOUT_MS;
        apps.push(spawn_app_with(config).await);
    }
    let addresses: Vec<String> = apps.iter().map(|a| a.address.clone()).collect();
    settled(&apps[0].client, &addresses, &topic, Duration::from_secs(60)).await;
    (apps, topic)
}

/// POSTs `body` to `path` at `address`; the status, the `Served-By` header and the body.
pub async fn post(
    client: &reqwest::Client,
    address: &str,
    path: &str,
    body: String,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut request = client
        .post(format!("{address}{path}"))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send().await {
        Err(_) => (0, String::new(), Value::Null),
        Ok(response) => {
            let status = response.status().as_u16();
            let served_by = response
                .headers()
                .get("served-by")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (status, served_by, response.json().await.unwrap_or_default())
        }
    }
}

fn acked(body: &Value, served_by: &str, asked: usize) -> Acked {
    Acked {
        order: body["order_id"].as_str().unwrap().to_owned(),
        version: body["version"].as_i64().unwrap(),
        event_id: body["event_id"].as_str().unwrap().to_owned(),
        position: body["position"].clone(),
        served_by: served_by.to_owned(),
        asked,
    }
}

/// Clients place orders and pay them, each through every instance in turn, until `stop`:
/// the payment of an order placed at one instance goes to the next, which forwards it unless
/// it owns the order's partition. Returns what was acknowledged, and each answer as (sent,
/// answered, instance asked, status, served by).
type Answer = (Instant, Instant, usize, u16, String);

fn load(
    client: &reqwest::Client,
    addresses: &[String],
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(Vec<Acked>, Vec<Answer>)>> {
    (0..clients)
        .map(|n| {
            let (client, addresses, stop) = (client.clone(), addresses.to_vec(), Arc::clone(stop));
            tokio::spawn(async move {
                let (mut acks, mut answers) = (Vec::new(), Vec::new());
                let mut turn = n;
                while !stop.load(Ordering::Relaxed) {
                    let at = turn % addresses.len();
                    turn += 1;
                    let sent = Instant::now();
                    let (status, served_by, body) = post(
                        &client,
                        &addresses[at],
                        "/orders",
                        order_body("c-spread"),
                        &[],
                    )
                    .await;
                    answers.push((sent, Instant::now(), at, status, served_by.clone()));
                    if status != 201 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let placed = acked(&body, &served_by, at);
                    acks.push(placed.clone());
                    let next = turn % addresses.len();
                    let sent = Instant::now();
                    let (status, served_by, body) = post(
                        &client,
                        &addresses[next],
                        &format!("/orders/{}/payment", placed.order),
                        r#"{"amount_cents":2599,"payment_ref":"p-1"}"#.into(),
                        &[],
                    )
                    .await;
                    answers.push((sent, Instant::now(), next, status, served_by.clone()));
                    if status == 200 {
                        acks.push(acked(&body, &served_by, next));
                    }
                }
                (acks, answers)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_load_and_every_acknowledged_command_is_in_the_log_once() {
    let (apps, topic) = three_in_process().await;
    let addresses: Vec<String> = apps.iter().map(|a| a.address.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&apps[0].client, &addresses, 6, &stop);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acks, mut answers) = (Vec::new(), Vec::new());
    for client in clients {
        let (a, b) = client.await.unwrap();
        acks.extend(a);
        answers.extend(b);
    }
    // The load reached every instance, and commands were decided by every instance, some of
    // them after a forward.
    let statuses: BTreeMap<u16, usize> = answers.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.3).or_default() += 1;
        m
    });
    assert!(
        answers.iter().all(|a| a.3 == 201 || a.3 == 200),
        "every command succeeds in a settled cluster: {statuses:?}"
    );
    let instance_ids: HashSet<&str> = answers.iter().map(|a| a.4.as_str()).collect();
    assert_eq!(instance_ids.len(), 3, "every instance decided commands");
    // An instance whose answers name several deciders forwarded some commands.
    let mut deciders: HashMap<usize, HashSet<&str>> = HashMap::new();
    for answer in &answers {
        deciders
            .entry(answer.2)
            .or_default()
            .insert(answer.4.as_str());
    }
    assert!(
        deciders.values().all(|d| d.len() > 1),
        "every instance forwarded commands to the others: {deciders:?}"
    );
    assert!(
        acks.len() > 100,
        "only {} commands acknowledged",
        acks.len()
    );
    assert_log_holds(&topic, &acks).await;
    for app in &apps {
        app.stop().await;
    }
}

/// An `Idempotency-Key` first used for an order of one instance's partition, then for a
/// payment of an order another instance owns: that instance keeps the first partition warm as
/// its standby, receipts included, so it recognises the key as reused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_instance_s_aggregate_is_refused_there() {
    let (apps, topic) = three_in_process().await;
    let key = format!("reused-{}", uuid::Uuid::new_v4());
    let (status, first_owner, body) = post(
        &apps[0].client,
        &apps[0].address,
        "/orders",
        order_body("c-reuse"),
        &[("idempotency-key", &key)],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let first = acked(&body, &first_owner, 0);
    let key_partition = first.position["partition"].as_i64().unwrap();
    let key_offset = first.position["offset"].as_i64().unwrap();

    // An order of another instance: a create without a key is decided where it is asked.
    let mut other = None;
    for app in &apps {
        if instance_id(&app.client, &app.address).await.as_deref() == Some(first_owner.as_str()) {
            continue;
        }
        let (status, served_by, body) = post(
            &app.client,
            &app.address,
            "/orders",
            order_body("c-other"),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_ne!(served_by, first_owner);
        other = Some((app, acked(&body, &served_by, 0).order));
        break;
    }
    let (owner, order) = other.unwrap();

    // Its instance has read the key's receipt as the standby of the key's partition.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entry = topic_entry(&owner.client, &owner.address, &topic)
            .await
            .unwrap();
        let applied = entry["standby"].as_array().unwrap().iter().find_map(|s| {
            (s["partition"].as_i64() == Some(key_partition))
                .then(|| s["applied_offset"].as_i64())
                .flatten()
        });
        if applied.is_some_and(|applied| applied > key_offset) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the key's partition is not kept warm: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for app in &apps {
        let (status, _, body) = post(
            &app.client,
            &app.address,
            &format!("/orders/{order}/payment"),
            r#"{"amount_cents":2599,"payment_ref":"p-reused"}"#.into(),
            &[("idempotency-key", &key)],
        )
        .await;
        assert_eq!(status, 422, "{body}");
    }
    let versions: Vec<i64> = events(&topic)
        .await
        .into_iter()
        .filter(|e| e.0 == order)
        .map(|e| e.1)
        .collect();
    assert_eq!(versions, [1], "the reused key wrote nothing");
    for app in &apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_conflicting_commands_through_three_instances_one_wins() {
    let (apps, topic) = three_in_process().await;
    let (status, _, body) = post(
        &apps[0].client,
        &apps[0].address,
        "/orders",
        order_body("c-race"),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let order = acked(&body, "", 0).order;
    let path = format!("/orders/{order}/payment");
    let racers: Vec<_> = (0..30)
        .map(|n| {
            let app = &apps[n % 3];
            let (client, address, path) = (app.client.clone(), app.address.clone(), path.clone());
            tokio::spawn(async move {
                post(
                    &client,
                    &address,
                    &path,
                    format!(r#"{{"amount_cents":2599,"payment_ref":"race-{n}"}}"#),
                    &[],
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut deciders = HashSet::new();
    for racer in racers {
        let (status, served_by, _) = racer.await.unwrap();
        statuses.push(status);
        deciders.insert(served_by);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "exactly one payment wins: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        29,
        "the others are told the order is paid: {statuses:?}"
    );
    assert_eq!(
        deciders.len(),
        1,
        "one instance decided them all: {deciders:?}"
    );
    let versions: Vec<i64> = events(&topic)
        .await
        .into_iter()
        .filter(|e| e.0 == order)
        .map(|e| e.1)
        .collect();
    assert_eq!(versions, [1, 2]);
    for app in &apps {
        app.stop().await;
    }
}

/// Command-service processes on one fresh topic, each started and stopped on its own.
pub struct Processes {
    pub topic: String,
    customers_topic: String,
    instances: Vec<(String, u16)>,
    logs: tempfile::TempDir,
    /// Extra environment of every instance.
    pub settings: Vec<(String, String)>,
}

impl Processes {
    pub fn new(count: usize) -> Self {
        Self {
            settings: Vec::new(),
            topic: fresh_topic(),
            customers_topic: format!("customers-test-{}", uuid::Uuid::new_v4()),
            instances: (0..count)
                .map(|n| {
                    (
                        format!("cluster-{n}-{}", uuid::Uuid::new_v4()),
                        free_port().unwrap(),
                    )
                })
                .collect(),
            logs: tempfile::Builder::new()
                .prefix("command-cluster-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn address(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}", self.instances[n].1)
    }

    fn addresses(&self) -> Vec<String> {
        (0..self.instances.len()).map(|n| self.address(n)).collect()
    }

    pub fn start(&self, n: usize) -> KillOnDrop {
        let (id, port) = &self.instances[n];
        let log = std::fs::File::create(self.logs.path().join(format!("{id}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_command-service"))
            .env("COMMAND_LISTEN", format!("127.0.0.1:{port}"))
            .env("KAFKA_BOOTSTRAP", env("KAFKA_BOOTSTRAP"))
            .env("SCHEMA_REGISTRY_URL", env("SCHEMA_REGISTRY_URL"))
            .env("ORDERS_TOPIC", &self.topic)
            .env("CUSTOMERS_TOPIC", &self.customers_topic)
            .env("ORDERS_TOPIC_PARTITIONS", PARTITIONS.to_string())
            .env("COMMAND_INSTANCE_ID", id)
            .env("COMMAND_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("COMMAND_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string())
            .env("COMMAND_KAFKA_TIMEOUT_MS", "5000")
            .env("COMMAND_REQUEST_TIMEOUT_MS", "15000")
            .envs(self.settings.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .map(KillOnDrop)
            .unwrap()
    }

    /// Starts every instance and waits until each owns a partition.
    async fn start_all(&self, client: &reqwest::Client) -> Vec<KillOnDrop> {
        let running: Vec<KillOnDrop> = (0..self.instances.len()).map(|n| self.start(n)).collect();
        for address in self.addresses() {
            wait_ready(client, &address, Duration::from_secs(90)).await;
        }
        settled(
            client,
            &self.addresses(),
            &self.topic,
            Duration::from_secs(60),
        )
        .await;
        running
    }
}

impl Drop for Processes {
    /// A failing test shows the end of each instance's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (id, _) in &self.instances {
            let log = std::fs::read_to_string(self.logs.path().join(format!("{id}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- the last lines of {id}'s log:");
            for line in &lines[lines.len().saturating_sub(120)..] {
                eprintln!("{line}");
            }
        }
    }
}

pub fn signal(process: &KillOnDrop, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(process.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_partitions_are_taken_over_and_its_keys_answered_by_the_new_owner() {
    let cluster = Processes::new(3);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let mut running = cluster.start_all(&client).await;
    let owners = settled(
        &client,
        &cluster.addresses(),
        &cluster.topic,
        Duration::from_secs(10),
    )
    .await;
    let victim = 2;
    let victim_id = cluster.instances[victim].0.clone();
    let survivors: Vec<String> = (0..2).map(|n| cluster.address(n)).collect();

    // Keyed orders the victim decided, asked through a survivor: the key's partition is the
    // victim's, so the survivor forwards them there.
    let mut first_answers = Vec::new();
    for n in 0..40 {
        let key = format!("takeover-{n}-{}", uuid::Uuid::new_v4());
        let partition = shared_events::partitioner::partition_for_key(key.as_bytes(), PARTITIONS);
        if owners.get(&i64::from(partition)) != Some(&victim) {
            continue;
        }
        let (status, served_by, body) = post(
            &client,
            &survivors[0],
            "/orders",
            order_body("c-key"),
            &[("idempotency-key", &key)],
        )
        .await;
        assert_eq!((status, served_by.as_str()), (201, victim_id.as_str()));
        first_answers.push((key, body));
    }
    assert!(!first_answers.is_empty());

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&client, &cluster.addresses(), 6, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every survivor keeps warm every partition it does not own (two standbys of three).
    for address in &survivors {
        let entry = topic_entry(&client, address, &cluster.topic).await.unwrap();
        let warm: Vec<i64> = entry["standby"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["partition"].as_i64())
            .collect();
        let owned = owned(&client, address, &cluster.topic).await.unwrap();
        assert_eq!(
            warm.len() + owned.len(),
            usize::try_from(PARTITIONS).unwrap(),
            "{address}: warm {warm:?}, owned {owned:?}"
        );
        assert!(metric(&client, address, "command_service_standby_events").await > 0.0);
    }
    let mut restored_before = 0.0;
    for address in &survivors {
        restored_before += metric(&client, address, "command_service_restored_events").await;
    }
    signal(&running[victim], "KILL");
    let killed_at = Instant::now();
    let taken_over = settled(&client, &survivors, &cluster.topic, Duration::from_secs(60)).await;
    let takeover = killed_at.elapsed();
    eprintln!("the survivors own every partition {takeover:?} after the kill: {taken_over:?}");
    // The group notices within the session timeout; the new owner's restore then waits for
    // the transaction the killed instance left open, which the broker aborts within the
    // producers' transaction timeout (10 s).
    assert!(
        takeover < Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(10 + 6),
        "takeover took {takeover:?}"
    );
    // The partitions that moved were warm where they went: their new owners read only what
    // their copies had not read yet, not the partitions from their beginning.
    let mut restored_after = 0.0;
    for address in &survivors {
        restored_after += metric(&client, address, "command_service_restored_events").await;
    }
    let logged = events(&cluster.topic).await.len();
    eprintln!(
        "the takeover read {} events again, of {logged} in the log",
        restored_after - restored_before
    );
    assert!(
        (restored_after - restored_before) * 4.0 < logged as f64,
        "the takeover read {} events, of {logged} in the log",
        restored_after - restored_before
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acks, mut answers) = (Vec::new(), Vec::new());
    for client in clients {
        let (a, b) = client.await.unwrap();
        acks.extend(a);
        answers.extend(b);
    }
    // After the takeover, commands through the survivors succeed again.
    let late_successes = answers
        .iter()
        .filter(|a| a.0 > killed_at + takeover && a.2 != victim && (a.3 == 200 || a.3 == 201))
        .count();
    assert!(late_successes > 0, "nothing succeeded after the takeover");
    for answer in &answers {
        assert!(
            [0, 200, 201, 503].contains(&answer.3),
            "an answer other than success or a retryable 503: {answer:?}"
        );
    }

    // Each key answers at its new owner with the first answer, and writes nothing.
    for (key, first) in &first_answers {
        let (status, served_by, body) = post(
            &client,
            &survivors[1],
            "/orders",
            order_body("c-key"),
            &[("idempotency-key", key)],
        )
        .await;
        assert_eq!(status, 201, "{key}: {body}");
        assert_ne!(served_by, victim_id);
        assert_eq!(&body, first, "{key}");
    }
    let keyed: Vec<_> = events(&cluster.topic)
        .await
        .into_iter()
        .filter(|e| e.3.as_deref().is_some_and(|k| k.starts_with("takeover-")))
        .collect();
    assert_eq!(
        keyed.len(),
        first_answers.len(),
        "a retried key wrote a second event"
    );
    assert_log_holds(&cluster.topic, &acks).await;
    running.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_commits_nothing_once_the_group_has_moved_on() {
    let mut cluster = Processes::new(2);
    // Commands wait in the queue for most of each transaction's cycle, and the clients below
    // do not move in step: at the pause some command has surely not reached its commit yet
    // (with the default linger, the whole cycle is the commit, and the pause could catch every
    // pending command after the coordinator had taken its commit).
    cluster
        .settings
        .push(("COMMAND_LINGER_MS".into(), "250".into()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut running = cluster.start_all(&client).await;
    let zombie = 1;
    let zombie_address = cluster.address(zombie);
    // Keys of the zombie's own partitions: their new orders are decided there, not forwarded.
    let mine: HashSet<i32> = owned(&client, &zombie_address, &cluster.topic)
        .await
        .unwrap()
        .into_iter()
        .map(|p| i32::try_from(p).unwrap())
        .collect();
    assert!(!mine.is_empty());

    // Clients sending only to the instance about to be paused, with keys, so that each
    // command can be looked for in the log.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..10)
        .map(|n: usize| {
            let (client, address, stop) =
                (client.clone(), zombie_address.clone(), Arc::clone(&stop));
            let mine = mine.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i: usize = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("zombie-{n}-{i}");
                    let partition =
                        shared_events::partitioner::partition_for_key(key.as_bytes(), PARTITIONS);
                    if !mine.contains(&partition) {
                        continue;
                    }
                    let pause = u64::try_from((n * 37 + i * 53) % 120).unwrap();
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let sent = Instant::now();
                    let (status, _, body) = post(
                        &client,
                        &address,
                        "/orders",
                        order_body("c-zombie"),
                        &[("idempotency-key", &key)],
                    )
                    .await;
                    answers.push((sent, Instant::now(), key, status, body));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&running[zombie], "STOP");
    let stopped_at = Instant::now();
    // The group moves every partition to the other instance, whose restore waits for the
    // transaction the zombie left open: the broker aborts it at the transaction timeout (10 s).
    settled(
        &client,
        &[cluster.address(0)],
        &cluster.topic,
        Duration::from_secs(60),
    )
    .await;
    let resume_at = stopped_at + Duration::from_secs(13);
    tokio::time::sleep(resume_at.saturating_duration_since(Instant::now())).await;
    signal(&running[zombie], "CONT");
    let resumed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    let pending: Vec<_> = answers
        .iter()
        .filter(|a| a.0 < stopped_at && a.1 > resumed_at)
        .collect();
    eprintln!(
        "{} answers; {} pending while the instance was paused",
        answers.len(),
        pending.len()
    );
    assert!(!pending.is_empty(), "commands were in flight at the pause");
    // A command whose commit the coordinator had taken before the pause is committed, and its
    // answer, sent after the resume, says so (checked against the log below); every other one
    // is refused once the group has moved on: 503, and not in the log.
    for (_, _, key, status, body) in &pending {
        assert!(
            *status == 503 || *status == 201,
            "{key}: a paused instance's command answered {status}: {body}"
        );
    }
    assert!(
        pending.iter().any(|p| p.3 == 503),
        "the paused instance's pending commands were refused"
    );
    let logged: HashSet<String> = events(&cluster.topic)
        .await
        .into_iter()
        .filter_map(|e| e.3)
        .collect();
    for (_, _, key, status, body) in &answers {
        if *status == 201 {
            assert!(
                logged.contains(key),
                "{key} acknowledged but not in the log: {body}"
            );
        } else if pending.iter().any(|p| &p.2 == key && p.3 == 503) {
            assert!(
                !logged.contains(key),
                "{key}, pending in the paused instance, committed"
            );
        }
    }
    running.clear();
}

//! Standby replicas and static membership: a replica killed under GET load, or replicas
//! restarted one by one, fail no GET on the replicas left answering.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

/// GETs from whichever replica `target` names, over and over, until stopped: every order by id,
/// and the customer's orders (a gather over every partition).
struct Load {
    target: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    by_standby: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(target: &str, ids: &[String], customer: &str, clients: usize) -> Self {
        let target = Arc::new(Mutex::new(target.to_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let (answered, by_standby) = (Arc::default(), Arc::default());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut paths: Vec<String> = ids.iter().map(|id| format!("/orders/{id}")).collect();
        paths.push(format!("/customers/{customer}/orders"));
        let tasks = (0..clients)
            .map(|client| {
                let (target, stop, paths) = (Arc::clone(&target), Arc::clone(&stop), paths.clone());
                let (answered, by_standby): (Arc<AtomicU64>, Arc<AtomicU64>) =
                    (Arc::clone(&answered), Arc::clone(&by_standby));
                let failures = Arc::clone(&failures);
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(20))
                        .build()
                        .unwrap();
                    let mut turn = client;
                    while !stop.load(Ordering::Relaxed) {
                        let path = &paths[turn % paths.len()];
                        turn += 1;
                        let base = target.lock().unwrap().clone();
                        let response = http.get(format!("{base}{path}")).send().await;
                        match response {
                            Ok(r) if r.status() == 200 => {
                                if r.headers().contains_key("standby-lag") {
                                    by_standby.fetch_add(1, Ordering::Relaxed);
                                }
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                let status = r.status();
                                let body = r.text().await.unwrap_or_default();
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{base}{path}: {status} {body}"));
                            }
                            Err(error) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{base}{path}: {error}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            target,
            stop,
            answered,
            by_standby,
            failures,
            tasks,
        }
    }

    fn aim_at(&self, address: &str) {
        *self.target.lock().unwrap() = address.to_owned();
    }

    /// Stops the load: what was answered, what a standby answered, and every failure.
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.answered.load(Ordering::Relaxed),
            self.by_standby.load(Ordering::Relaxed),
            failures,
        )
    }
}

async fn cluster(http: &reqwest::Client, address: &str) -> Value {
    match http
        .get(format!("{address}/admin/cluster"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

/// The partitions each replica owns, by replica id, as `address` sees the group.
async fn ownership(http: &reqwest::Client, address: &str) -> Vec<(String, Vec<i64>)> {
    let view = cluster(http, address).await;
    view["replicas"]
        .as_array()
        .map(|replicas| {
            replicas
                .iter()
                .map(|r| {
                    let partitions = r["partitions"]
                        .as_array()
                        .map(|p| p.iter().filter_map(Value::as_i64).collect())
                        .unwrap_or_default();
                    (
                        r["replica_id"].as_str().unwrap_or("").to_owned(),
                        partitions,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the replica at `address` keeps warm, fully applied, every partition it does not
/// own (with two replicas and one standby, that is its share).
async fn wait_warm(http: &reqwest::Client, address: &str) {
    eventually(
        Duration::from_secs(60),
        "the standby to hold every other partition, caught up",
        || async {
            let view = cluster(http, address).await;
            let here = &view["this_replica"];
            let owned = here["partitions"].as_array().map_or(0, Vec::len);
            let warm = here["standbys"].as_array().map_or(0, |s| {
                s.iter().filter(|p| p["lag"].as_i64() == Some(0)).count()
            });
            owned > 0 && owned + warm == PARTITIONS as usize
        },
    )
    .await;
}

/// Waits until both replicas own partitions (cooperative assignment moves them to a member
/// that joins in a second rebalance).
async fn wait_shared(http: &reqwest::Client, address: &str) {
    eventually(
        Duration::from_secs(60),
        "both replicas to own partitions",
        || async {
            let owners = ownership(http, address).await;
            owners.len() == 2 && owners.iter().all(|(_, p)| !p.is_empty())
        },
    )
    .await;
}

/// Orders of one customer, spread over every partition.
async fn place_orders(commands: &Commands, customer: &str, count: u32) -> Vec<String> {
    let http = client();
    let mut ids = Vec::new();
    for i in 0..count {
        let url = format!("{}/orders", commands.address);
        ids.push(
            post(&http, &url, &order_body(customer, i + 1))
                .await
                .order_id,
        );
    }
    ids
}

#[tokio::test]
async fn a_replica_killed_under_get_load_fails_no_get_on_the_survivor() {
    let commands = Commands::spawn().await;
    let group = format!("standby-kill-{}", uuid::Uuid::new_v4());
    let http = client();
    let survivor = start_process(&commands.topic, &group, "replica-a");
    let mut victim = start_process(&commands.topic, &group, "replica-b");
    let customer = "c-standby-kill";
    let ids = place_orders(&commands, customer, 24).await;
    for id in &ids {
        let url = format!("{}/orders/{id}", survivor.address);
        eventually(Duration::from_secs(60), "every key answered", || async {
            http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    wait_shared(&http, &survivor.address).await;
    wait_warm(&http, &survivor.address).await;

    let load = Load::start(&survivor.address, &ids, customer, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    // Through the session timeout, the rebalance and the takeover, and a little after.
    eventually(
        Duration::from_secs(60),
        "the survivor to own and serve every partition",
        || async {
            let view = cluster(&http, &survivor.address).await;
            let partitions = view["this_replica"]["partitions"].as_array().cloned();
            partitions.is_some_and(|p| {
                p.len() == PARTITIONS as usize && p.iter().all(|p| p["caught_up"] == true)
            })
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (answered, by_standby, failures) = load.finish().await;
    eprintln!(
        "kill -9 under load: {answered} GETs answered, {by_standby} by the standby, {} failed; \
         the survivor owned every partition {takeover:?} after the kill",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} GETs failed on the survivor, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        by_standby > 0,
        "the victim's keys were answered by the standby while it was gone"
    );
    let metrics = metrics_of(&survivor.address).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("query_service_standby_answers_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(survivor);
    commands.stop().await;
}

#[tokio::test]
async fn a_rolling_restart_of_two_replicas_fails_no_get_and_moves_no_partition() {
    let commands = Commands::spawn().await;
    let group = format!("standby-rolling-{}", uuid::Uuid::new_v4());
    let http = client();
    let spawn = |id: &'static str, data: Arc<tempfile::TempDir>| {
        let mut config = Replica::config(&commands.topic, &group, id, &data);
        // The restart must come back before the group gives the member up.
        config.session_timeout_ms = 15_000;
        Replica::spawn_with(config, data)
    };
    let a = spawn("replica-a", Arc::new(tempfile::tempdir().unwrap())).await;
    let b = spawn("replica-b", Arc::new(tempfile::tempdir().unwrap())).await;
    let customer = "c-standby-rolling";
    let ids = place_orders(&commands, customer, 24).await;
    wait_settled(&http, &[&a, &b]).await;
    for id in &ids {
        let url = format!("{}/orders/{id}", a.address);
        eventually(Duration::from_secs(60), "every key answered", || async {
            http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    wait_shared(&http, &a.address).await;
    wait_warm(&http, &a.address).await;
    wait_warm(&http, &b.address).await;
    let before = ownership(&http, &a.address).await;

    // The load balancer sends everything to A while B restarts, then to B while A restarts.
    let load = Load::start(&a.address, &ids, customer, 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.stop().await;
    let b = spawn("replica-b", Arc::clone(&b.data)).await;
    wait_settled(&http, &[&a, &b]).await;
    wait_warm(&http, &b.address).await;
    load.aim_at(&b.address);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop().await;
    let a = spawn("replica-a", Arc::clone(&a.data)).await;
    wait_settled(&http, &[&a, &b]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (answered, by_standby, failures) = load.finish().await;
    eprintln!(
        "rolling restart: {answered} GETs answered, {by_standby} by a standby, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} GETs failed during the rolling restart, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        by_standby > 0,
        "a standby answered while each owner was away"
    );
    assert_eq!(
        ownership(&http, &a.address).await,
        before,
        "static members got their own partitions back, and nothing else moved"
    );
    a.stop().await;
    b.stop().await;
    commands.stop().await;
}

/// An owner that hangs (SIGSTOP: its connections accept, nothing answers) costs its keys one
/// forward timeout: the standby answers that query, and the next ones at once, until the owner
/// answers again.
#[tokio::test]
async fn a_hung_owner_costs_one_forward_timeout_then_its_standby_answers() {
    let commands = Commands::spawn().await;
    let http = client();
    let settings = [
        // The group keeps the stopped replica's partitions where they are throughout.
        ("QUERY_SESSION_TIMEOUT_MS", "45000"),
        ("QUERY_FORWARD_TIMEOUT_MS", "2000"),
        ("QUERY_CONSISTENCY_WAIT_MS", "1000"),
    ];
    let (asker, owner, owned) = crate::end_to_end::asker_and_owner(&commands, &settings).await;
    wait_warm(&http, &asker.address).await;
    let url = format!("{}/orders/{owned}", asker.address);

    let pid = owner.child.id().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    let timed = |started: Instant| started.elapsed();
    let started = Instant::now();
    let first = http.get(&url).send().await.unwrap();
    let first_took = timed(started);
    let started = Instant::now();
    let second = http.get(&url).send().await.unwrap();
    let second_took = timed(started);
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    for (answer, took) in [(&first, first_took), (&second, second_took)] {
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["served-by"], asker.id.as_str());
        assert!(answer.headers().contains_key("standby-lag"), "{answer:?}");
        assert!(
            answer.headers()["standby-position"]
                .to_str()
                .unwrap()
                .starts_with(&commands.topic),
            "{answer:?}"
        );
        assert!(took < Duration::from_secs(6), "{took:?}");
    }
    assert!(
        first_took >= Duration::from_millis(1_900),
        "the owner was asked first, until the forward timeout: {first_took:?}"
    );
    assert!(
        second_took < Duration::from_secs(1),
        "the hung owner is passed over for a while: {second_took:?}"
    );
    // Once it answers again, the owner is asked again.
    eventually(
        Duration::from_secs(30),
        "the owner to answer again",
        || async {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200 && r.headers()["served-by"] == owner.id.as_str())
        },
    )
    .await;
    drop(owner);
    drop(asker);
    commands.stop().await;
}

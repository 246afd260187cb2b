//! Reports over a known history written straight to Kafka (each event's time and record
//! timestamp chosen), run through the admin API as an admin would.

use std::time::{Duration, Instant};

use customers::events::{CustomerEvent, CustomerPayload};
use orders::events::{Envelope, OrderEvent, OrderPayload};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{Value, json};

use crate::helpers::*;

const JAN: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const FEB: i64 = 1_769_904_000_000; // 2026-02-01T00:00:00Z
const MAR: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z
const DAY: i64 = 86_400_000;

fn envelope(id: &str, version: i64, at: i64) -> Envelope {
    Envelope {
        event_id: format!("{id}-{version}"),
        aggregate_id: id.into(),
        aggregate_version: version,
        occurred_at_ms: at,
        command_id: format!("cmd-{id}-{version}"),
        idempotency_key: None,
        correlation_id: "report-test".into(),
    }
}

/// One event of the history, for either topic.
enum Fact {
    Order(OrderEvent),
    Customer(CustomerEvent),
}

fn placed(id: &str, customer: &str, currency: &str, cents: i64, at: i64) -> Fact {
    Fact::Order(OrderEvent {
        envelope: envelope(id, 1, at),
        payload: OrderPayload::Placed {
            customer_id: customer.into(),
            currency: currency.into(),
            items: Vec::new(),
            total_cents: cents,
        },
    })
}

fn order(id: &str, version: i64, at: i64, payload: OrderPayload) -> Fact {
    Fact::Order(OrderEvent {
        envelope: envelope(id, version, at),
        payload,
    })
}

fn paid(id: &str, cents: i64, at: i64) -> Fact {
    order(
        id,
        2,
        at,
        OrderPayload::Paid {
            amount_cents: cents,
            payment_ref: "pay".into(),
        },
    )
}

fn customer(id: &str, version: i64, at: i64, payload: CustomerPayload) -> Fact {
    Fact::Customer(CustomerEvent {
        envelope: envelope(id, version, at),
        payload,
    })
}

fn registered(id: &str, at: i64) -> Fact {
    customer(
        id,
        1,
        at,
        CustomerPayload::Registered {
            name: "Ada".into(),
            email: format!("{id}@example.com"),
        },
    )
}

/// Writes events as a transactional producer would, each with its event time as its record
/// timestamp; commits, or aborts when asked.
struct Writer {
    producer: FutureProducer,
    orders: shared_events::EventCodec<OrderEvent>,
    customers: shared_events::EventCodec<CustomerEvent>,
    orders_topic: String,
    customers_topic: String,
}

impl Writer {
    fn new(orders_topic: &str) -> Self {
        let registry = service_config::RegistryArgs::plain(env("SCHEMA_REGISTRY_URL"));
        let settings = || registry.sr_settings(Duration::from_secs(5)).unwrap();
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
            .set(
                "transactional.id",
                format!("report-test-{}", uuid::Uuid::new_v4()),
            )
            .set("partitioner", "murmur2_random")
            .create()
            .unwrap();
        producer.init_transactions(Duration::from_secs(20)).unwrap();
        Self {
            producer,
            orders: shared_events::EventCodec::new(settings(), orders_topic).unwrap(),
            customers: shared_events::EventCodec::new(settings(), &customers_topic(orders_topic))
                .unwrap(),
            orders_topic: orders_topic.to_owned(),
            customers_topic: customers_topic(orders_topic),
        }
    }

    async fn write(&self, facts: &[Fact], commit: bool) {
        self.producer.begin_transaction().unwrap();
        for fact in facts {
            let (topic, key, value, at) = match fact {
                Fact::Order(e) => (
                    &self.orders_topic,
                    &e.envelope.aggregate_id,
                    self.orders.encode(e).await.unwrap(),
                    e.envelope.occurred_at_ms,
                ),
                Fact::Customer(e) => (
                    &self.customers_topic,
                    &e.envelope.aggregate_id,
                    self.customers.encode(e).await.unwrap(),
                    e.envelope.occurred_at_ms,
                ),
            };
            self.producer
                .send(
                    FutureRecord::to(topic)
                        .key(key)
                        .payload(&value)
                        .timestamp(at),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
        if commit {
            self.producer
                .commit_transaction(Duration::from_secs(20))
                .unwrap();
        } else {
            self.producer
                .abort_transaction(Duration::from_secs(20))
                .unwrap();
        }
    }
}

/// Fresh orders and customers topics (made by a command service, as users get them) and a
/// writer for them: the orders topic's name and the writer.
async fn fresh_topics() -> (String, Writer) {
    let commands = Commands::spawn().await;
    let topic = commands.topic.clone();
    commands.stop().await;
    let writer = Writer::new(&topic);
    (topic, writer)
}

/// Waits until `address` shows report `id` running (on `replica`, if named).
async fn wait_running(http: &reqwest::Client, address: &str, id: &str, replica: Option<&str>) {
    eventually(Duration::from_secs(10), "the report runs", || async {
        let status = status(http, address, id).await;
        status["state"] == "running" && replica.is_none_or(|r| status["replica"] == r)
    })
    .await;
}

/// The known history: three months of orders and customers, and one aborted transaction.
async fn write_history(writer: &Writer) {
    let cancelled = |id: &str, version, at| {
        order(
            id,
            version,
            at,
            OrderPayload::Cancelled {
                reason: "changed my mind".into(),
            },
        )
    };
    let batches = vec![
        vec![registered("c-1", JAN + 9 * DAY)],
        vec![
            placed("o-1", "c-1", "EUR", 1_000, JAN + 14 * DAY),
            paid("o-1", 1_000, JAN + 15 * DAY),
        ],
        vec![registered("c-2", JAN + 19 * DAY)],
        vec![order(
            "o-1",
            3,
            FEB + DAY,
            OrderPayload::Shipped {
                carrier: "post".into(),
                tracking_number: "t-1".into(),
            },
        )],
        vec![
            placed("o-2", "c-2", "USD", 500, FEB + 2 * DAY),
            paid("o-2", 500, FEB + 3 * DAY),
        ],
        vec![registered("c-3", FEB + 4 * DAY)],
        vec![
            placed("o-3", "c-1", "EUR", 250, FEB + 9 * DAY),
            cancelled("o-3", 2, FEB + 10 * DAY),
        ],
        vec![customer(
            "c-2",
            2,
            MAR,
            CustomerPayload::Deactivated {
                reason: "moved".into(),
            },
        )],
        vec![cancelled("o-2", 3, MAR + DAY)],
        vec![
            placed("o-4", "c-9", "EUR", 300, MAR + 4 * DAY),
            paid("o-4", 300, MAR + 5 * DAY),
        ],
    ];
    for batch in &batches {
        writer.write(batch, true).await;
    }
    // Never committed: counts nowhere.
    writer
        .write(
            &[
                placed("o-5", "c-5", "EUR", 9_999, JAN + DAY),
                paid("o-5", 9_999, JAN + DAY),
                registered("c-5", JAN + DAY),
            ],
            false,
        )
        .await;
}

fn admin(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.bearer_auth(ADMIN_TOKEN)
}

/// Starts a report; its id.
async fn start(http: &reqwest::Client, address: &str, body: Value) -> String {
    let response = admin(http.post(format!("{address}/admin/reports")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let status: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/admin/reports/{}", status["id"].as_str().unwrap())
    );
    status["id"].as_str().unwrap().to_owned()
}

async fn status(http: &reqwest::Client, address: &str, id: &str) -> Value {
    let response = admin(http.get(format!("{address}/admin/reports/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls a report until it is finished; its last status.
async fn finished(http: &reqwest::Client, address: &str, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = status(http, address, id).await;
        if !["queued", "running"].contains(&status["state"].as_str().unwrap()) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "report {id} did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a report and waits for it to finish; its last status.
async fn run_to_end(http: &reqwest::Client, address: &str, body: Value) -> Value {
    let id = start(http, address, body).await;
    finished(http, address, &id, Duration::from_secs(30)).await
}

async fn csv(http: &reqwest::Client, address: &str, id: &str) -> String {
    let response = admin(http.get(format!("{address}/admin/reports/{id}")))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn reports_count_a_known_history_exactly_and_the_same_every_time() {
    let (topic, writer) = fresh_topics().await;
    write_history(&writer).await;
    let replica = Replica::spawn(&topic, &format!("g-{topic}"), "r-1").await;
    let http = client();

    let done = run_to_end(&http, &replica.address, json!({"report": "monthly-orders"})).await;
    let id = done["id"].as_str().unwrap().to_owned();
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["percent"], 100.0);
    assert_eq!(done["events_read"], done["events_total"]);
    assert_eq!(done["from"], "beginning");
    assert_eq!(done["to"], "now");
    let result = &done["result"];
    assert_eq!(
        result["rows"],
        json!([
            {"month": "2026-01", "orders_placed": 1, "orders_paid": 1, "orders_shipped": 0,
             "orders_cancelled": 0, "revenue_cents": {"EUR": 1000}, "new_customers": 1},
            {"month": "2026-02", "orders_placed": 2, "orders_paid": 1, "orders_shipped": 1,
             "orders_cancelled": 1, "revenue_cents": {"USD": 500}, "new_customers": 1},
            {"month": "2026-03", "orders_placed": 1, "orders_paid": 1, "orders_shipped": 0,
             "orders_cancelled": 1, "revenue_cents": {"EUR": 300, "USD": -500},
             "new_customers": 1},
        ]),
        "{result}"
    );
    // Ten committed order events; the aborted two are read past, never counted.
    assert_eq!(result["events"], 10);
    let offsets = &done["offsets"][&topic];
    let span: i64 = (0..PARTITIONS)
        .map(|p| {
            let span = &offsets[p.to_string()];
            span["end"].as_i64().unwrap() - span["start"].as_i64().unwrap()
        })
        .sum();
    // Twelve records, the aborted two included, and a marker per transaction and partition.
    assert!(span > 12, "every record, markers included: {offsets}");
    assert_eq!(done["events_total"].as_i64().unwrap(), span);
    assert_eq!(result["offsets"][&topic], *offsets);

    // Again: byte for byte the same result.
    let again_done = run_to_end(&http, &replica.address, json!({"report": "monthly-orders"})).await;
    let again = again_done["id"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::to_vec(&again_done["result"]).unwrap(),
        serde_json::to_vec(result).unwrap()
    );
    let first_csv = csv(&http, &replica.address, &id).await;
    assert_eq!(first_csv, csv(&http, &replica.address, &again).await);
    assert_eq!(
        first_csv,
        "month,orders_placed,orders_paid,orders_shipped,orders_cancelled,revenue_cents.EUR,revenue_cents.USD,new_customers\r\n\
         2026-01,1,1,0,0,1000,0,1\r\n\
         2026-02,2,1,1,1,0,500,1\r\n\
         2026-03,1,1,0,1,300,-500,1\r\n"
    );

    // A range: February's records only.
    let february = run_to_end(&http, &replica.address, json!({"report": "monthly-orders", "from": "2026-02-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"})).await;
    assert_eq!(
        february["result"]["rows"],
        json!([{"month": "2026-02", "orders_placed": 2, "orders_paid": 1, "orders_shipped": 1,
                "orders_cancelled": 1, "revenue_cents": {"USD": 500}, "new_customers": 2}]),
        "{february}"
    );

    let customers = run_to_end(
        &http,
        &replica.address,
        json!({"report": "monthly-customers"}),
    )
    .await;
    assert_eq!(
        customers["result"]["rows"],
        json!([
            {"month": "2026-01", "registered": 2, "deactivated": 0},
            {"month": "2026-02", "registered": 1, "deactivated": 0},
            {"month": "2026-03", "registered": 0, "deactivated": 1},
        ]),
        "{customers}"
    );

    // Over both topics.
    let cohorts = run_to_end(
        &http,
        &replica.address,
        json!({"report": "customer-cohorts"}),
    )
    .await;
    assert_eq!(
        cohorts["result"]["rows"],
        json!([
            {"cohort": "2026-01", "customers": 2, "ordering_customers": 2, "orders_placed": 3,
             "revenue_cents": {"EUR": 1000, "USD": 0}},
            {"cohort": "2026-02", "customers": 1, "ordering_customers": 0, "orders_placed": 0,
             "revenue_cents": {}},
            {"cohort": "unregistered", "customers": 0, "ordering_customers": 1,
             "orders_placed": 1, "revenue_cents": {"EUR": 300}},
        ]),
        "{cohorts}"
    );
    assert!(
        cohorts["offsets"][&topic].is_object()
            && cohorts["offsets"][customers_topic(&topic)].is_object()
    );

    // The list shows them, newest first, without results.
    let list: Value = admin(http.get(format!("{}/admin/reports", replica.address)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reports = list["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 5);
    assert_eq!(reports[4]["id"], id.as_str());
    assert!(reports.iter().all(|r| r["result"].is_null()));
    assert_eq!(list["available"].as_array().unwrap().len(), 3);
    let metrics = metrics_of(&replica.address).await;
    assert!(
        metrics.contains(r#"query_service_reports_finished_total{state="done"} 5"#),
        "{metrics}"
    );
    let read = metrics
        .lines()
        .find_map(|l| l.strip_prefix("query_service_report_positions_read_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let ready: Value = http
        .get(format!("{}/health/ready", replica.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["reports"]["ledger"]["following"], true, "{ready}");
    assert!(
        ready["reports"]["ledger"]["applied_offset"]
            .as_i64()
            .unwrap()
            > 0
    );
    // At least the two whole monthly-orders runs.
    assert!(
        read >= 2.0 * span as f64,
        "{read} positions read: {metrics}"
    );
    replica.stop().await;
}

#[tokio::test]
async fn a_running_report_moves_forward_ignores_later_events_and_cancels_at_once() {
    let (topic, writer) = fresh_topics().await;
    write_history(&writer).await;
    let replica = Replica::spawn(&topic, &format!("g-{topic}"), "r-1").await;
    let http = client();

    // Slow enough to watch, and to commit more while it runs.
    let slow = start(
        &http,
        &replica.address,
        json!({"report": "monthly-orders", "max_events_per_second": 8}),
    )
    .await;
    writer
        .write(&[placed("o-6", "c-6", "EUR", 10, JAN + 20 * DAY)], true)
        .await;
    let mut last = -1.0;
    let mut seen_running = false;
    let done = loop {
        let status = status(&http, &replica.address, &slow).await;
        let percent = status["percent"].as_f64().unwrap();
        assert!(percent >= last, "progress went back: {last} then {status}");
        last = percent;
        if status["state"] == "running" {
            seen_running = true;
            assert!(status["events_total"].as_u64().unwrap() > 0);
            if status["events_read"].as_u64().unwrap() > 0 {
                assert!(
                    status["events_per_second"].as_f64().unwrap() > 0.0,
                    "{status}"
                );
                assert!(status["eta_seconds"].is_number(), "{status}");
            }
        }
        if status["state"] == "done" {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(seen_running);
    assert_eq!(last, 100.0);
    assert_eq!(
        done["result"]["rows"][0]["orders_placed"], 1,
        "committed after the range was fixed: not in it"
    );
    let next_done = run_to_end(&http, &replica.address, json!({"report": "monthly-orders"})).await;
    let next = next_done["id"].as_str().unwrap().to_owned();
    assert_eq!(
        next_done["result"]["rows"][0]["orders_placed"], 2,
        "in the next one"
    );

    // Cancelled, it stops within a second.
    let long = start(
        &http,
        &replica.address,
        json!({"report": "customer-cohorts", "max_events_per_second": 1}),
    )
    .await;
    wait_running(&http, &replica.address, &long, None).await;
    let asked = Instant::now();
    assert_eq!(cancel(&http, &replica.address, &long).await, 202);
    let cancelled = loop {
        let status = status(&http, &replica.address, &long).await;
        if status["state"] != "running" {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "still running: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert!(cancelled["result"].is_null());

    // A finished report is removed by DELETE.
    let response = admin(http.delete(format!("{}/admin/reports/{next}", replica.address)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    let response = admin(http.get(format!("{}/admin/reports/{next}", replica.address)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    replica.stop().await;
}

#[tokio::test]
async fn the_reports_api_checks_its_callers_and_its_limits() {
    let (topic, writer) = fresh_topics().await;
    // Thirty registrations: a report throttled to one a second runs for half a minute.
    let many: Vec<Fact> = (0..30)
        .map(|i| registered(&format!("c-{i}"), JAN + i * DAY))
        .collect();
    writer.write(&many, true).await;
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&topic, &format!("g-{topic}"), "r-1", &data);
    config.reports_max_running = 1;
    config.reports_max_queued = 1;
    let replica = Replica::spawn_with(config, data).await;
    let http = client();
    let reports = format!("{}/admin/reports", replica.address);
    let body = json!({"report": "monthly-customers", "max_events_per_second": 1});

    let response = http.post(&reports).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = http.get(&reports).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = http
        .post(&reports)
        .bearer_auth(READ_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = http
        .get(&reports)
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );

    for (bad, names) in [
        (json!({"report": "no-such-report"}), "monthly-orders"),
        (
            json!({"report": "monthly-orders", "from": "yesterday"}),
            "RFC 3339",
        ),
        (
            json!({"report": "monthly-orders", "to": "beginning"}),
            "now",
        ),
        (
            json!({"report": "monthly-orders", "from": "2026-03-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
            "after",
        ),
        (
            json!({"report": "monthly-orders", "colour": "blue"}),
            "colour",
        ),
        (
            json!({"report": "monthly-orders", "max_events_per_second": 0}),
            "at least 1",
        ),
        (json!(["monthly-orders"]), "report request"),
    ] {
        let response = admin(http.post(&reports)).json(&bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(names),
            "{bad}: {problem}"
        );
    }
    for bad in ["limit=0", "limit=many", "limit=1001", "colour=blue"] {
        let response = admin(http.get(format!("{reports}?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let list: Value = admin(http.get(&reports))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["reports"], json!([]), "bad requests start nothing");

    // One runs, one waits, the third is refused.
    let running = start(&http, &replica.address, body.clone()).await;
    let queued = start(&http, &replica.address, body.clone()).await;
    let response = admin(http.post(&reports)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        status(&http, &replica.address, &queued).await["state"],
        "queued"
    );
    // CSV of a report not done.
    let response = admin(http.get(format!("{reports}/{queued}")))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    // The read-only token reads, and cancels nothing.
    let response = http
        .delete(format!("{reports}/{queued}"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let shown: Value = http
        .get(format!("{reports}/{queued}"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["id"], queued.as_str());
    let response = admin(http.get(format!("{reports}/nothing-here")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    for id in [&queued, &running] {
        assert_eq!(cancel(&http, &replica.address, id).await, 202);
        let done = finished(&http, &replica.address, id, Duration::from_secs(5)).await;
        assert_eq!(done["state"], "cancelled");
    }
    // A retry with the same Idempotency-Key gets the first report; the key with another
    // request is refused.
    let keyed = json!({"report": "monthly-orders", "from": "2026-02-01T00:00:00Z"});
    let first: Value = admin(http.post(&reports))
        .header("idempotency-key", "monthly-feb-1")
        .json(&keyed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = admin(http.post(&reports))
        .header("idempotency-key", "monthly-feb-1")
        .json(&keyed)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        format!("/admin/reports/{}", first["id"].as_str().unwrap())
    );
    let other = admin(http.post(&reports))
        .header("idempotency-key", "monthly-feb-1")
        .json(&json!({"report": "monthly-customers"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 400);
    for bad in ["", "with space", &"k".repeat(256)] {
        let response = admin(http.post(&reports))
            .header("idempotency-key", bad)
            .json(&keyed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad:?}");
    }
    let first_id = first["id"].as_str().unwrap();
    assert_eq!(cancel(&http, &replica.address, first_id).await, 202);
    finished(&http, &replica.address, first_id, Duration::from_secs(5)).await;

    // Room again.
    let response = admin(http.post(&reports)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    replica.stop().await;
}

#[tokio::test]
async fn a_report_outlives_the_replica_running_it() {
    let (topic, writer) = fresh_topics().await;
    write_history(&writer).await;
    let group = format!("g-{topic}");
    let stale = [("QUERY_REPORTS_STALE_MS", "3000")];
    let mut first = start_process_with(&topic, &group, "first", &stale);
    wait_ready(&first.address).await;
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&topic, &group, "second", &data);
    config.reports_stale_ms = 3_000;
    let second = Replica::spawn_with(config, data).await;
    let http = client();

    let id = start(
        &http,
        &first.address,
        json!({"report": "monthly-orders", "max_events_per_second": 6}),
    )
    .await;
    // The other replica shows it too, running on the first.
    wait_running(&http, &second.address, &id, Some("first")).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let done = finished(&http, &second.address, &id, Duration::from_secs(40)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["replica"], "second");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"]["events"], 10);
    assert_eq!(
        done["result"]["rows"][2]["revenue_cents"],
        json!({"EUR": 300, "USD": -500})
    );
    second.stop().await;
}

#[tokio::test]
async fn a_replica_that_stops_hands_its_reports_over_and_any_replica_cancels() {
    let (topic, writer) = fresh_topics().await;
    write_history(&writer).await;
    let group = format!("g-{topic}");
    // The default stale time (10 s): a hand-over must not wait for it.
    let first = Replica::spawn(&topic, &group, "first").await;
    let second = Replica::spawn(&topic, &group, "second").await;
    let http = client();

    // Slow enough to be still running when the first replica has stopped.
    let handed = start(
        &http,
        &first.address,
        json!({"report": "monthly-orders", "max_events_per_second": 2}),
    )
    .await;
    let cancelled = start(
        &http,
        &first.address,
        json!({"report": "customer-cohorts", "max_events_per_second": 1}),
    )
    .await;
    for id in [&handed, &cancelled] {
        wait_running(&http, &second.address, id, Some("first")).await;
    }

    // Cancelled through the other replica: the owner stops it.
    let asked = Instant::now();
    assert_eq!(cancel(&http, &second.address, &cancelled).await, 202);
    let stopped = finished(&http, &second.address, &cancelled, Duration::from_secs(5)).await;
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // The first replica stops cleanly: the second takes its running report over at once.
    first.stop().await;
    let stopped = Instant::now();
    eventually(Duration::from_secs(5), "the second replica runs it", || {
        let http = http.clone();
        let (address, id) = (second.address.clone(), handed.clone());
        async move {
            let status = status(&http, &address, &id).await;
            status["replica"] == "second"
        }
    })
    .await;
    // Well before the 10 s a lost replica's report waits: it was handed back.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "taken over only after {:?}: was it handed back?",
        stopped.elapsed()
    );
    let done = finished(&http, &second.address, &handed, Duration::from_secs(40)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["result"]["events"], 10);
    second.stop().await;
}

#[tokio::test]
async fn a_report_whose_range_the_log_no_longer_holds_fails_and_says_so() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let (topic, writer) = fresh_topics().await;
    write_history(&writer).await;
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = Replica::config(&topic, &format!("g-{topic}"), "r-1", &data);
    config.reports_max_running = 1;
    let replica = Replica::spawn_with(config, data).await;
    let http = client();

    // One runs slowly; the other waits with its range fixed.
    let blocking = start(
        &http,
        &replica.address,
        json!({"report": "monthly-customers", "max_events_per_second": 1}),
    )
    .await;
    let waiting = start(&http, &replica.address, json!({"report": "monthly-orders"})).await;
    let queued = status(&http, &replica.address, &waiting).await;
    assert_eq!(queued["state"], "queued");
    // Retention takes the first records of every orders partition the range starts in.
    let mut doomed = TopicPartitionList::new();
    for (partition, span) in queued["offsets"][&topic].as_object().unwrap() {
        let (start, end) = (
            span["start"].as_i64().unwrap(),
            span["end"].as_i64().unwrap(),
        );
        if end > start {
            doomed
                .add_partition_offset(
                    &topic,
                    partition.parse().unwrap(),
                    Offset::Offset(start + 1),
                )
                .unwrap();
        }
    }
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BOOTSTRAP"))
        .create()
        .unwrap();
    admin
        .delete_records(&doomed, &AdminOptions::new())
        .await
        .unwrap();

    let response = cancel(&http, &replica.address, &blocking).await;
    assert_eq!(response, 202);
    let failed = finished(&http, &replica.address, &waiting, Duration::from_secs(30)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("no longer holds"),
        "{failed}"
    );
    assert!(failed["result"].is_null());
    replica.stop().await;
}

/// `DELETE /admin/reports/{id}`: its status.
async fn cancel(http: &reqwest::Client, address: &str, id: &str) -> u16 {
    admin(http.delete(format!("{address}/admin/reports/{id}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

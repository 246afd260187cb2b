//! Confluent's own Python client reads our registry and decodes our events.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

use crate::helpers::{env, order_body, spawn_app};

#[tokio::test]
async fn confluent_python_client_decodes_our_events() {
    let app = spawn_app().await;
    let mut placed = HashMap::new();
    for customer in ["c-1", "c-2", "c-3"] {
        let response = app.post_order(&order_body(customer)).await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        placed.insert(
            body["order_id"].as_str().unwrap().to_owned(),
            (customer, body),
        );
    }

    // Read at run time (cargo sets it for every test run): a test binary reused from another
    // checkout must run this checkout's script.
    let script =
        std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("../interop/confluent_interop.py");
    let output = tokio::task::spawn_blocking({
        let topic = app.topic.clone();
        move || {
            Command::new(env("INTEROP_PYTHON"))
                .arg(script)
                .args(["--bootstrap", &env("KAFKA_BOOTSTRAP")])
                .args(["--registry", &env("SCHEMA_REGISTRY_URL")])
                .args(["--topic", &topic])
                .args(["--count", "3"])
                .output()
                .expect("could not run the interop script")
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "interop script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    for event in events {
        let key = event["key"].as_str().unwrap();
        let (customer, answer) = placed.get(key).expect("an event we did not place");
        let value = &event["value"];
        assert_eq!(value["aggregate_id"], key);
        assert_eq!(value["aggregate_version"], 1);
        assert_eq!(value["event_id"], answer["event_id"]);
        assert_eq!(value["payload"]["customer_id"], *customer);
        assert_eq!(value["payload"]["total_cents"], 2599);
        assert_eq!(value["payload"]["items"][0]["sku"], "A-1");
        assert_eq!(event["partition"], answer["position"]["partition"]);
        assert_eq!(event["offset"], answer["position"]["offset"]);
    }
    app.stop().await;
}

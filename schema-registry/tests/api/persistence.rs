//! State survives a restart because it lives in the Kafka topic.

use serde_json::{Value, json};

use crate::helpers::{A, B_DEFAULT, C, TestApp, delete_topic, record};

async fn snapshot(app: &TestApp) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/subjects",
        "/subjects?deleted=true",
        "/subjects/orders/versions",
        "/subjects/orders/versions?deleted=true",
        "/subjects/orders/versions/latest",
        "/subjects/orders/versions/1?deleted=true",
        "/subjects/users/versions",
        "/subjects/users/versions/latest",
        "/subjects/gone/versions?deleted=true",
        "/schemas/ids/1",
        "/schemas/ids/2",
        "/schemas/ids/3",
        "/schemas/ids/4",
        "/schemas/ids/1/versions?deleted=true",
        "/config",
        "/config/orders",
        "/config/users",
    ] {
        let reply = app.get(path).await;
        out.push((
            path.to_owned(),
            json!({ "status": reply.status.as_u16(), "body": reply.body }),
        ));
    }
    out
}

#[tokio::test]
async fn state_survives_a_restart() {
    let first = TestApp::spawn().await;
    let topic = first.topic.clone();

    let s1 = record(&[A]);
    let s2 = record(&[A, B_DEFAULT]);
    let s3 = record(&[A, B_DEFAULT, r#"{"name":"c","type":"long","default":0}"#]);
    let s4 = record(&[C]);
    assert_eq!(first.register_ok("orders", &s1).await, 1);
    assert_eq!(first.register_ok("orders", &s2).await, 2);
    assert_eq!(first.register_ok("users", &s2).await, 2);
    assert_eq!(first.register_ok("users", &s3).await, 3);
    assert_eq!(first.register_ok("gone", &s4).await, 4);
    first.set_level(None, "FULL").await;
    first.set_level(Some("orders"), "FORWARD_TRANSITIVE").await;
    first.set_level(Some("users"), "NONE").await;
    first.delete("/config/users").await.assert_ok();
    // Soft-delete a version, soft-delete a subject, purge another.
    first
        .delete("/subjects/orders/versions/1")
        .await
        .assert_ok();
    first.delete("/subjects/users").await.assert_ok();
    first.delete("/subjects/gone").await.assert_ok();
    first
        .delete("/subjects/gone?permanent=true")
        .await
        .assert_ok();

    let before = snapshot(&first).await;
    first.stop().await;

    let second = TestApp::spawn_on(&topic).await;
    let after = snapshot(&second).await;
    for ((path, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{path} differs after restart");
    }
    // Spot-check the things that matter most.
    assert_eq!(
        second.get("/subjects").await.assert_ok(),
        &json!(["orders"])
    );
    assert_eq!(
        second.get("/subjects/orders/versions").await.assert_ok(),
        &json!([2])
    );
    assert_eq!(
        second.get("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );
    assert_eq!(
        second.get("/config/orders").await.assert_ok(),
        &json!({ "compatibilityLevel": "FORWARD_TRANSITIVE" })
    );
    second.get("/config/users").await.assert_error(404, 40408);
    second.get("/schemas/ids/4").await.assert_error(404, 40403);
    // Existing schemas keep their ids; the next new one gets 5, not the
    // purged 4.
    assert_eq!(second.register_ok("users", &s3).await, 3);
    assert_eq!(second.register_ok("fresh", &s4).await, 5);
    assert_eq!(
        second.get("/subjects/users/versions").await.assert_ok(),
        &json!([3])
    );
    second.stop().await;

    // And once more, to check that what the second instance wrote replays.
    let third = TestApp::spawn_on(&topic).await;
    assert_eq!(
        third
            .get("/subjects/users/versions/latest")
            .await
            .assert_ok()["version"],
        3
    );
    assert_eq!(third.register_ok("another", r#""bytes""#).await, 6);
    third.stop().await;
    delete_topic(&topic).await;
}

#[tokio::test]
async fn starts_on_an_empty_existing_topic_and_twice_on_a_new_one() {
    let first = TestApp::spawn().await;
    let topic = first.topic.clone();
    first.stop().await;
    // The topic now exists and is empty; startup must not wait for data.
    let second = TestApp::spawn_on(&topic).await;
    assert_eq!(second.get("/subjects").await.assert_ok(), &json!([]));
    assert_eq!(second.register_ok("s", r#""int""#).await, 1);
    second.finish().await;
}

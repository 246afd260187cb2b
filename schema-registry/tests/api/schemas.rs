//! Registration, lookups and the read endpoints.

use serde_json::{Value, json};

use crate::helpers::{A, B_DEFAULT, C, TestApp, record};

#[tokio::test]
async fn health_root_types_and_mode() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.get("/health/live").await.assert_ok(),
        &json!({ "status": "ok" })
    );
    assert_eq!(app.get("/").await.assert_ok(), &json!({}));
    assert_eq!(
        app.get("/schemas/types").await.assert_ok(),
        &json!(["AVRO"])
    );
    assert_eq!(
        app.get("/mode").await.assert_ok(),
        &json!({ "mode": "READWRITE" })
    );
    app.finish().await;
}

#[tokio::test]
async fn register_then_read_back_through_every_endpoint() {
    let app = TestApp::spawn().await;
    let v1 = record(&[A]);
    let v2 = record(&[A, B_DEFAULT]);

    assert_eq!(app.register_ok("orders-value", &v1).await, 1);
    assert_eq!(app.register_ok("orders-value", &v2).await, 2);

    // By id: the normalized schema, no schemaType for Avro.
    let by_id = app.get("/schemas/ids/1").await;
    let body = by_id.assert_ok().as_object().unwrap().clone();
    assert_eq!(body.keys().collect::<Vec<_>>(), vec!["schema"]);
    let stored: Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
    let original: Value = serde_json::from_str(&v1).unwrap();
    assert_eq!(stored, original);

    let raw = app.get("/schemas/ids/2/schema").await;
    let expected: Value = serde_json::from_str(&v2).unwrap();
    assert_eq!(raw.assert_ok(), &expected);

    assert_eq!(
        app.get("/schemas/ids/2/versions").await.assert_ok(),
        &json!([{ "subject": "orders-value", "version": 2 }])
    );
    assert_eq!(
        app.get("/schemas/ids/2/subjects").await.assert_ok(),
        &json!(["orders-value"])
    );

    assert_eq!(
        app.get("/subjects").await.assert_ok(),
        &json!(["orders-value"])
    );
    assert_eq!(
        app.get("/subjects/orders-value/versions").await.assert_ok(),
        &json!([1, 2])
    );

    let v1_reply = app.get("/subjects/orders-value/versions/1").await;
    let v1_body = v1_reply.assert_ok();
    assert_eq!(v1_body["subject"], "orders-value");
    assert_eq!(v1_body["version"], 1);
    assert_eq!(v1_body["id"], 1);
    assert_eq!(v1_body["schema"], body["schema"]);
    assert!(v1_body.get("schemaType").is_none());

    for latest in ["latest", "-1"] {
        let reply = app
            .get(&format!("/subjects/orders-value/versions/{latest}"))
            .await;
        assert_eq!(reply.assert_ok()["version"], 2, "{latest}");
        assert_eq!(reply.body["id"], 2);
    }
    assert_eq!(
        app.get("/subjects/orders-value/versions/2/schema")
            .await
            .assert_ok(),
        &expected
    );
    assert_eq!(
        app.get("/subjects/orders-value/versions/latest/referencedby")
            .await
            .assert_ok(),
        &json!([])
    );

    // Lookup by content.
    let found = app
        .post("/subjects/orders-value", json!({ "schema": v1 }))
        .await;
    let found = found.assert_ok();
    assert_eq!(found["subject"], "orders-value");
    assert_eq!(found["id"], 1);
    assert_eq!(found["version"], 1);
    assert!(found["schema"].is_string());

    app.finish().await;
}

#[tokio::test]
async fn ids_are_global_and_reregistration_is_idempotent() {
    let app = TestApp::spawn().await;
    let s1 = record(&[A]);
    let s2 = record(&[A, B_DEFAULT]);

    assert_eq!(app.register_ok("one", &s1).await, 1);
    assert_eq!(app.register_ok("one", &s1).await, 1);
    assert_eq!(
        app.get("/subjects/one/versions").await.assert_ok(),
        &json!([1]),
        "re-registering must not create a version"
    );
    // Same schema, other subject: same id, that subject's version 1.
    assert_eq!(app.register_ok("two", &s1).await, 1);
    assert_eq!(
        app.get("/subjects/two/versions").await.assert_ok(),
        &json!([1])
    );
    // A new schema gets max id + 1, whichever subject it lands in.
    assert_eq!(app.register_ok("two", &s2).await, 2);
    assert_eq!(app.register_ok("one", &s2).await, 2);
    assert_eq!(app.register_ok("three", r#""string""#).await, 3);

    let mut listed = app.get("/schemas/ids/1/versions").await.assert_ok().clone();
    listed
        .as_array_mut()
        .unwrap()
        .sort_by_key(|v| v["subject"].as_str().unwrap().to_owned());
    assert_eq!(
        listed,
        json!([{ "subject": "one", "version": 1 }, { "subject": "two", "version": 1 }])
    );
    assert_eq!(
        app.get("/subjects").await.assert_ok(),
        &json!(["one", "three", "two"])
    );
    assert_eq!(
        app.get("/subjects?subjectPrefix=t").await.assert_ok(),
        &json!(["three", "two"])
    );
    app.finish().await;
}

#[tokio::test]
async fn normalization_maps_formatting_variants_to_one_id() {
    let app = TestApp::spawn().await;
    let compact = r#"{"type":"record","name":"User","namespace":"acme","fields":[{"name":"id","type":"long"},{"name":"email","type":["null","string"],"default":null}]}"#;
    let reordered = r#"
        {
          "namespace": "acme",
          "fields": [
            { "type": "long", "name": "id" },
            { "default": null, "type": [ "null", "string" ], "name": "email" }
          ],
          "name": "User",
          "type": "record"
        }"#;
    let fullname = r#"{"type":"record","name":"acme.User","fields":[{"name":"id","type":"long"},{"name":"email","type":["null","string"],"default":null}]}"#;

    let id = app.register_ok("users", compact).await;
    assert_eq!(app.register_ok("users", reordered).await, id);
    assert_eq!(app.register_ok("other", fullname).await, id);
    assert_eq!(
        app.get("/subjects/users/versions").await.assert_ok(),
        &json!([1])
    );

    // Lookup works with any variant too.
    let found = app
        .post("/subjects/users", json!({ "schema": reordered }))
        .await;
    assert_eq!(found.assert_ok()["id"], id);

    // A different default or doc is a different schema.
    let other_default = compact.replace(r#""default":null"#, r#""default":null,"doc":"mail""#);
    let doc_id = app.register_ok("users", &other_default).await;
    assert_ne!(doc_id, id);
    let different = app
        .register_ok(
            "x",
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#,
        )
        .await;
    let different2 = app
        .register_ok(
            "y",
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":2}]}"#,
        )
        .await;
    assert_ne!(different, different2);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_registrations_get_distinct_ids() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = app.client.clone();
        let url = format!("{}/subjects/concurrent-{}/versions", app.base, i % 3);
        let schema = record(&[
            A,
            &format!(r#"{{"name":"f{i}","type":"int","default":{i}}}"#),
        ]);
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("Content-Type", "application/json")
                .body(json!({ "schema": schema }).to_string())
                .send()
                .await
                .unwrap();
            let reply = TestApp::reply(response).await;
            reply.assert_ok()["id"].as_i64().unwrap()
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=12).collect::<Vec<_>>());
    for s in 0..3 {
        let versions = app.get(&format!("/subjects/concurrent-{s}/versions")).await;
        assert_eq!(versions.assert_ok(), &json!([1, 2, 3, 4]));
    }
    app.finish().await;
}

#[tokio::test]
async fn primitive_and_complex_schemas_are_accepted() {
    let app = TestApp::spawn().await;
    let enum_schema = r#"{"type":"enum","name":"Color","symbols":["RED","GREEN"]}"#;
    let nested = record(&[
        r#"{"name":"when","type":{"type":"long","logicalType":"timestamp-millis"}}"#,
        r#"{"name":"tags","type":{"type":"array","items":"string"}}"#,
        r#"{"name":"attrs","type":{"type":"map","values":"string"},"default":{}}"#,
        r#"{"name":"color","type":{"type":"enum","name":"Color","symbols":["RED","GREEN"]}}"#,
        r#"{"name":"color2","type":"Color"}"#,
        C,
    ]);
    for (subject, schema) in [
        ("p", r#""string""#),
        ("e", enum_schema),
        ("n", nested.as_str()),
    ] {
        let id = app.register_ok(subject, schema).await;
        let raw = app.get(&format!("/schemas/ids/{id}/schema")).await;
        assert_eq!(raw.status, 200);
    }
    app.finish().await;
}

#[tokio::test]
async fn percent_encoded_subjects_are_decoded() {
    // schema_registry_converter sends `/` in subject names as `%2F`.
    let app = TestApp::spawn().await;
    let id = app.register_ok("team%2Forders%20v", &record(&[A])).await;
    assert_eq!(
        app.get("/subjects").await.assert_ok(),
        &json!(["team/orders v"])
    );
    let latest = app.get("/subjects/team%2Forders%20v/versions/latest").await;
    assert_eq!(latest.assert_ok()["subject"], "team/orders v");
    assert_eq!(latest.body["id"], id);
    app.finish().await;
}

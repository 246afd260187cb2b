//! Error codes and the shape of error bodies.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{A, TestApp, record};

#[tokio::test]
async fn not_found_codes() {
    let app = TestApp::spawn().await;
    app.register_ok("s", &record(&[A])).await;

    // 40401 subject not found
    app.get("/subjects/missing/versions")
        .await
        .assert_error(404, 40401);
    app.get("/subjects/missing/versions/1")
        .await
        .assert_error(404, 40401);
    app.post("/subjects/missing", json!({ "schema": record(&[A]) }))
        .await
        .assert_error(404, 40401);
    // 40402 version not found
    let message = app
        .get("/subjects/s/versions/2")
        .await
        .assert_error(404, 40402);
    assert_eq!(message, "Version 2 not found.");
    // 40403 schema not found: by id, and by content within a subject
    let message = app.get("/schemas/ids/7").await.assert_error(404, 40403);
    assert_eq!(message, "Schema 7 not found");
    app.get("/schemas/ids/7/schema")
        .await
        .assert_error(404, 40403);
    app.get("/schemas/ids/7/versions")
        .await
        .assert_error(404, 40403);
    app.get("/schemas/ids/abc").await.assert_error(404, 40403);
    app.post("/subjects/s", json!({ "schema": r#""string""# }))
        .await
        .assert_error(404, 40403);
    app.finish().await;
}

#[tokio::test]
async fn unprocessable_codes() {
    let app = TestApp::spawn().await;
    // 42201 invalid schema, unsupported type, references, missing field
    for body in [
        json!({ "schema": "{\"type\":\"record\",\"name\":\"R\"}" }),
        json!({ "schema": "not json at all" }),
        json!({ "schema": "{\"type\":\"unknown\"}" }),
        json!({ "schema": "{\"type\":\"object\"}", "schemaType": "JSON" }),
        json!({ "schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF" }),
        json!({ "schema": "\"int\"", "references": [{ "name": "a", "subject": "b", "version": 1 }] }),
        json!({ "schemaType": "AVRO" }),
    ] {
        app.post("/subjects/s/versions", body.clone())
            .await
            .assert_error(422, 42201);
        app.post("/subjects/s", body).await.assert_error(422, 42201);
    }
    // Nothing got registered.
    assert_eq!(app.get("/subjects").await.assert_ok(), &json!([]));

    app.register_ok("s", &record(&[A])).await;
    // 42202 invalid version
    for bad in ["0", "-2", "abc", "1.5", "99999999999"] {
        app.get(&format!("/subjects/s/versions/{bad}"))
            .await
            .assert_error(422, 42202);
    }
    // 42203 invalid compatibility level
    app.put("/config", json!({ "compatibility": "MAYBE" }))
        .await
        .assert_error(422, 42203);

    // Malformed JSON bodies: 422 with the generic code 422.
    for path in [
        "/subjects/s/versions",
        "/subjects/s",
        "/compatibility/subjects/s/versions/latest",
    ] {
        let response = app
            .client
            .post(format!("{}{path}", app.base))
            .header("Content-Type", "application/json")
            .body("{\"schema\": ")
            .send()
            .await
            .unwrap();
        TestApp::reply(response).await.assert_error(422, 422);
    }
    let response = app
        .client
        .put(format!("{}/config", app.base))
        .body("")
        .send()
        .await
        .unwrap();
    TestApp::reply(response).await.assert_error(422, 422);
    app.finish().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_error_bodies() {
    let app = TestApp::spawn().await;
    let reply = app.get("/nope").await;
    assert_eq!(reply.assert_error(404, 404), "HTTP 404 Not Found");
    app.get("/subjects/s/versions/1/nope")
        .await
        .assert_error(404, 404);
    app.request(Method::GET, "/subjects/s", None)
        .await
        .assert_error(405, 405);
    app.request(Method::PATCH, "/config", None)
        .await
        .assert_error(405, 405);
    app.finish().await;
}

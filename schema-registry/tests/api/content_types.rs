//! Request content types are irrelevant; responses use Confluent's.

use serde_json::json;

use crate::helpers::{A, B_DEFAULT, TestApp, record};

const RESPONSE_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[tokio::test]
async fn any_request_content_type_is_accepted() {
    let app = TestApp::spawn().await;
    let schema = record(&[A]);
    let body = json!({ "schema": schema }).to_string();
    for content_type in [
        Some("application/vnd.schemaregistry.v1+json"),
        Some("application/vnd.schemaregistry+json"),
        Some("application/json"),
        Some("application/octet-stream"),
        Some("text/plain"),
        None,
    ] {
        let mut request = app
            .client
            .post(format!("{}/subjects/ct/versions", app.base))
            .body(body.clone());
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        let reply = TestApp::reply(request.send().await.unwrap()).await;
        assert_eq!(reply.assert_ok(), &json!({ "id": 1 }), "{content_type:?}");

        let mut lookup = app
            .client
            .post(format!("{}/subjects/ct", app.base))
            .body(body.clone());
        if let Some(ct) = content_type {
            lookup = lookup.header("Content-Type", ct);
        }
        let reply = TestApp::reply(lookup.send().await.unwrap()).await;
        assert_eq!(reply.assert_ok()["version"], 1, "{content_type:?}");
    }

    let config = app
        .client
        .put(format!("{}/config", app.base))
        .header("Content-Type", "application/octet-stream")
        .body(r#"{"compatibility":"FULL"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        TestApp::reply(config).await.assert_ok(),
        &json!({ "compatibility": "FULL" })
    );
    app.finish().await;
}

#[tokio::test]
async fn responses_use_the_registry_content_type() {
    let app = TestApp::spawn().await;
    app.register_ok("s", &record(&[A])).await;
    let replies = [
        app.get("/subjects").await,
        app.get("/subjects/s/versions/1").await,
        app.get("/schemas/ids/1").await,
        app.get("/schemas/ids/1/schema").await,
        app.get("/config").await,
        app.post(
            "/compatibility/subjects/s/versions/latest",
            json!({ "schema": record(&[A, B_DEFAULT]) }),
        )
        .await,
        app.get("/subjects/missing/versions").await,
        app.get("/no/such/route").await,
    ];
    for reply in replies {
        assert_eq!(
            reply.content_type.as_deref(),
            Some(RESPONSE_TYPE),
            "{}",
            reply.body
        );
    }
    app.finish().await;
}

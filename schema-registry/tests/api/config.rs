//! `/config` endpoints.

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn global_config_round_trip() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.get("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );
    app.set_level(None, "FULL").await;
    assert_eq!(
        app.get("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "FULL" })
    );
    // Level names are case-insensitive; answers use the canonical spelling.
    let reply = app
        .put("/config", json!({ "compatibility": "forward_transitive" }))
        .await;
    assert_eq!(
        reply.assert_ok(),
        &json!({ "compatibility": "FORWARD_TRANSITIVE" })
    );

    // DELETE resets to the default and reports what was set.
    assert_eq!(
        app.delete("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "FORWARD_TRANSITIVE" })
    );
    assert_eq!(
        app.get("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );
    app.finish().await;
}

#[tokio::test]
async fn subject_config_round_trip() {
    let app = TestApp::spawn().await;
    app.get("/config/orders").await.assert_error(404, 40408);
    assert_eq!(
        app.get("/config/orders?defaultToGlobal=true")
            .await
            .assert_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );

    app.set_level(Some("orders"), "NONE").await;
    assert_eq!(
        app.get("/config/orders").await.assert_ok(),
        &json!({ "compatibilityLevel": "NONE" })
    );
    assert_eq!(
        app.get("/config/orders?defaultToGlobal=true")
            .await
            .assert_ok(),
        &json!({ "compatibilityLevel": "NONE" })
    );
    // The global level is unaffected.
    assert_eq!(
        app.get("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );

    assert_eq!(
        app.delete("/config/orders").await.assert_ok(),
        &json!({ "compatibilityLevel": "NONE" })
    );
    app.get("/config/orders").await.assert_error(404, 40408);
    app.delete("/config/orders").await.assert_error(404, 40408);
    app.finish().await;
}

#[tokio::test]
async fn invalid_levels_are_rejected() {
    let app = TestApp::spawn().await;
    for body in [
        json!({ "compatibility": "SIDEWAYS" }),
        json!({ "compatibility": "" }),
        json!({}),
    ] {
        app.put("/config", body.clone())
            .await
            .assert_error(422, 42203);
        app.put("/config/s", body).await.assert_error(422, 42203);
    }
    // Nothing was changed.
    assert_eq!(
        app.get("/config").await.assert_ok(),
        &json!({ "compatibilityLevel": "BACKWARD" })
    );
    app.get("/config/s").await.assert_error(404, 40408);
    app.finish().await;
}

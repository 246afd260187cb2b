//! Soft and permanent deletes of subjects and versions.

use serde_json::json;

use crate::helpers::{A, B_DEFAULT, TestApp, record};

#[tokio::test]
async fn soft_then_permanent_subject_delete() {
    let app = TestApp::spawn().await;
    let v1 = record(&[A]);
    let v2 = record(&[A, B_DEFAULT]);
    app.register_ok("s", &v1).await;
    app.register_ok("s", &v2).await;
    app.register_ok("keep", &v1).await;

    // Permanent delete before soft delete is refused.
    app.delete("/subjects/s?permanent=true")
        .await
        .assert_error(404, 40405);

    assert_eq!(app.delete("/subjects/s").await.assert_ok(), &json!([1, 2]));
    // Gone from listings and lookups...
    assert_eq!(app.get("/subjects").await.assert_ok(), &json!(["keep"]));
    assert_eq!(
        app.get("/subjects?deleted=true").await.assert_ok(),
        &json!(["keep", "s"])
    );
    app.get("/subjects/s/versions")
        .await
        .assert_error(404, 40401);
    app.get("/subjects/s/versions/1")
        .await
        .assert_error(404, 40401);
    app.get("/subjects/s/versions/latest")
        .await
        .assert_error(404, 40401);
    app.post("/subjects/s", json!({ "schema": v1 }))
        .await
        .assert_error(404, 40401);
    // ...unless asked for.
    assert_eq!(
        app.get("/subjects/s/versions?deleted=true")
            .await
            .assert_ok(),
        &json!([1, 2])
    );
    assert_eq!(
        app.get("/subjects/s/versions/2?deleted=true")
            .await
            .assert_ok()["id"],
        2
    );
    assert_eq!(
        app.post("/subjects/s?deleted=true", json!({ "schema": v2 }))
            .await
            .assert_ok()["version"],
        2
    );
    // Ids stay resolvable.
    assert_eq!(app.get("/schemas/ids/2").await.status, 200);
    assert_eq!(
        app.get("/schemas/ids/2/versions").await.assert_ok(),
        &json!([])
    );
    assert_eq!(
        app.get("/schemas/ids/2/versions?deleted=true")
            .await
            .assert_ok(),
        &json!([{ "subject": "s", "version": 2 }])
    );
    // Deleting again softly says it is already soft-deleted.
    app.delete("/subjects/s").await.assert_error(404, 40404);

    assert_eq!(
        app.delete("/subjects/s?permanent=true").await.assert_ok(),
        &json!([1, 2])
    );
    assert_eq!(
        app.get("/subjects?deleted=true").await.assert_ok(),
        &json!(["keep"])
    );
    app.get("/subjects/s/versions?deleted=true")
        .await
        .assert_error(404, 40401);
    app.delete("/subjects/s?permanent=true")
        .await
        .assert_error(404, 40401);
    app.delete("/subjects/s").await.assert_error(404, 40401);
    // Id 1 is still used by "keep"; id 2 is gone for good.
    assert_eq!(app.get("/schemas/ids/1").await.status, 200);
    app.get("/schemas/ids/2").await.assert_error(404, 40403);

    // Ids are never reused.
    assert_eq!(app.register_ok("s", &v2).await, 3);
    assert_eq!(
        app.get("/subjects/s/versions").await.assert_ok(),
        &json!([1])
    );
    app.finish().await;
}

#[tokio::test]
async fn reregistering_into_a_soft_deleted_subject_continues_versions() {
    let app = TestApp::spawn().await;
    let v1 = record(&[A]);
    let v2 = record(&[A, B_DEFAULT]);
    app.register_ok("s", &v1).await;
    app.register_ok("s", &v2).await;
    app.delete("/subjects/s").await.assert_ok();

    // Same schema as soft-deleted version 1: same id, new version 3.
    assert_eq!(app.register_ok("s", &v1).await, 1);
    assert_eq!(
        app.get("/subjects/s/versions").await.assert_ok(),
        &json!([3])
    );
    assert_eq!(
        app.get("/subjects/s/versions?deleted=true")
            .await
            .assert_ok(),
        &json!([1, 2, 3])
    );
    let latest = app.get("/subjects/s/versions/latest").await;
    assert_eq!(latest.assert_ok()["version"], 3);
    assert_eq!(latest.body["id"], 1);
    assert_eq!(app.get("/subjects").await.assert_ok(), &json!(["s"]));
    app.finish().await;
}

#[tokio::test]
async fn version_deletes() {
    let app = TestApp::spawn().await;
    app.register_ok("s", &record(&[A])).await;
    app.register_ok("s", &record(&[A, B_DEFAULT])).await;
    app.register_ok(
        "s",
        &record(&[A, B_DEFAULT, r#"{"name":"c","type":"int","default":1}"#]),
    )
    .await;

    app.delete("/subjects/s/versions/1?permanent=true")
        .await
        .assert_error(404, 40407);
    assert_eq!(
        app.delete("/subjects/s/versions/latest").await.assert_ok(),
        &json!(3)
    );
    assert_eq!(
        app.delete("/subjects/s/versions/1").await.assert_ok(),
        &json!(1)
    );
    app.delete("/subjects/s/versions/1")
        .await
        .assert_error(404, 40406);
    app.delete("/subjects/s/versions/9")
        .await
        .assert_error(404, 40402);
    app.delete("/subjects/s/versions/x")
        .await
        .assert_error(422, 42202);
    app.delete("/subjects/nope/versions/1")
        .await
        .assert_error(404, 40401);

    assert_eq!(
        app.get("/subjects/s/versions").await.assert_ok(),
        &json!([2])
    );
    assert_eq!(
        app.get("/subjects/s/versions/latest").await.assert_ok()["version"],
        2
    );
    app.get("/subjects/s/versions/3")
        .await
        .assert_error(404, 40402);
    assert_eq!(
        app.get("/subjects/s/versions/3?deleted=true")
            .await
            .assert_ok()["id"],
        3
    );
    // Soft-deleted ids stay resolvable.
    assert_eq!(app.get("/schemas/ids/3").await.status, 200);

    assert_eq!(
        app.delete("/subjects/s/versions/3?permanent=true")
            .await
            .assert_ok(),
        &json!(3)
    );
    app.get("/schemas/ids/3").await.assert_error(404, 40403);
    assert_eq!(
        app.get("/subjects/s/versions?deleted=true")
            .await
            .assert_ok(),
        &json!([1, 2])
    );
    app.delete("/subjects/s/versions/3?permanent=true")
        .await
        .assert_error(404, 40402);
    app.finish().await;
}

//! Every compatibility level through registration (409) and through the
//! `/compatibility` endpoint.

use serde_json::json;

use crate::helpers::{A, B, B_DEFAULT, C, TestApp, record};

/// For each level: a history, a candidate that must be accepted, and one
/// that must be rejected.
struct Case {
    level: &'static str,
    history: Vec<String>,
    compatible: String,
    incompatible: String,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            level: "NONE",
            history: vec![record(&[A])],
            compatible: record(&[C]),
            // Nothing is incompatible under NONE; see the dedicated test.
            incompatible: String::new(),
        },
        Case {
            level: "BACKWARD",
            history: vec![record(&[A])],
            compatible: record(&[A, B_DEFAULT]),
            incompatible: record(&[A, B]),
        },
        Case {
            level: "BACKWARD_TRANSITIVE",
            // Latest has `b` with a default; the first version has no `b`.
            history: vec![record(&[A]), record(&[A, B_DEFAULT])],
            compatible: record(&[A, B_DEFAULT, r#"{"name":"c","type":"long","default":0}"#]),
            // Reads the latest (b present) but not version 1 (b missing).
            incompatible: record(&[A, B]),
        },
        Case {
            level: "FORWARD",
            history: vec![record(&[A, B_DEFAULT])],
            compatible: record(&[A]),
            incompatible: record(&[B_DEFAULT]),
        },
        Case {
            level: "FORWARD_TRANSITIVE",
            // Version 1 requires `b`; the latest gives it a default.
            history: vec![record(&[A, B]), record(&[A, B_DEFAULT])],
            compatible: record(&[A, B, r#"{"name":"c","type":"long","default":0}"#]),
            // Latest can read it (default for b), version 1 cannot.
            incompatible: record(&[A]),
        },
        Case {
            level: "FULL",
            history: vec![record(&[A])],
            compatible: record(&[A, B_DEFAULT]),
            incompatible: record(&[A, B]),
        },
        Case {
            level: "FULL_TRANSITIVE",
            history: vec![record(&[A]), record(&[A, B_DEFAULT])],
            compatible: record(&[A, B_DEFAULT, r#"{"name":"c","type":"long","default":0}"#]),
            // Fully compatible with the latest, but cannot read version 1.
            incompatible: record(&[A, B]),
        },
    ]
}

#[tokio::test]
async fn registration_enforces_every_level() {
    let app = TestApp::spawn().await;
    for case in cases() {
        let subject = format!("reg-{}", case.level.to_lowercase());
        app.set_level(Some(&subject), case.level).await;
        for schema in &case.history {
            app.register_ok(&subject, schema).await;
        }
        if !case.incompatible.is_empty() {
            let reply = app.register(&subject, &case.incompatible).await;
            let message = reply.assert_error(409, 409);
            assert!(
                message.starts_with(&format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: ["
                )),
                "{}: {message}",
                case.level
            );
            assert!(
                message.contains(&format!("{{compatibility: '{}'}}", case.level)),
                "{message}"
            );
        }
        let before = app.get(&format!("/subjects/{subject}/versions")).await;
        let count = before.assert_ok().as_array().unwrap().len();
        assert_eq!(
            count,
            case.history.len(),
            "{}: rejected schema must not be stored",
            case.level
        );
        let reply = app.register(&subject, &case.compatible).await;
        assert_eq!(reply.status, 200, "{}: {}", case.level, reply.body);
    }
    app.finish().await;
}

#[tokio::test]
async fn transitive_levels_differ_from_latest_only() {
    // The same history and candidate pass the non-transitive level and fail
    // the transitive one.
    let app = TestApp::spawn().await;
    for (plain, transitive) in [
        ("BACKWARD", "BACKWARD_TRANSITIVE"),
        ("FORWARD", "FORWARD_TRANSITIVE"),
        ("FULL", "FULL_TRANSITIVE"),
    ] {
        let case = cases().into_iter().find(|c| c.level == transitive).unwrap();
        for level in [plain, transitive] {
            let subject = format!("t-{}-{}", transitive.to_lowercase(), level.to_lowercase());
            app.set_level(Some(&subject), level).await;
            for schema in &case.history {
                app.register_ok(&subject, schema).await;
            }
            let check = app
                .post(
                    &format!("/compatibility/subjects/{subject}/versions/latest"),
                    json!({ "schema": case.incompatible }),
                )
                .await;
            let expected = level == plain;
            assert_eq!(
                check.assert_ok(),
                &json!({ "is_compatible": expected }),
                "{level} on {transitive} history"
            );
            let reply = app.register(&subject, &case.incompatible).await;
            assert_eq!(reply.status == 200, expected, "{level}: {}", reply.body);
        }
    }
    app.finish().await;
}

#[tokio::test]
async fn none_accepts_anything_and_global_level_applies() {
    let app = TestApp::spawn().await;
    app.set_level(None, "NONE").await;
    app.register_ok("any", &record(&[A])).await;
    app.register_ok("any", r#""string""#).await;
    app.register_ok("any", &record(&[B])).await;
    assert_eq!(
        app.get("/subjects/any/versions").await.assert_ok(),
        &json!([1, 2, 3])
    );

    // Back to the default BACKWARD: the same kind of change is refused.
    app.set_level(None, "BACKWARD").await;
    app.register("any", &record(&[C]))
        .await
        .assert_error(409, 409);

    // A subject level overrides the global one.
    app.set_level(None, "FULL").await;
    app.set_level(Some("loose"), "NONE").await;
    app.register_ok("loose", &record(&[A])).await;
    app.register_ok("loose", &record(&[B])).await;
    app.register_ok("strict", &record(&[A])).await;
    app.register("strict", &record(&[A, B]))
        .await
        .assert_error(409, 409);
    app.finish().await;
}

#[tokio::test]
async fn every_level_through_the_compatibility_endpoint() {
    let app = TestApp::spawn().await;
    for case in cases() {
        let subject = format!("chk-{}", case.level.to_lowercase());
        app.set_level(Some(&subject), case.level).await;
        for schema in &case.history {
            app.register_ok(&subject, schema).await;
        }
        for path in [
            format!("/compatibility/subjects/{subject}/versions/latest"),
            format!("/compatibility/subjects/{subject}/versions"),
        ] {
            let ok = app.post(&path, json!({ "schema": case.compatible })).await;
            assert_eq!(
                ok.assert_ok(),
                &json!({ "is_compatible": true }),
                "{}",
                case.level
            );
            if !case.incompatible.is_empty() {
                let bad = app
                    .post(&path, json!({ "schema": case.incompatible }))
                    .await;
                assert_eq!(
                    bad.assert_ok(),
                    &json!({ "is_compatible": false }),
                    "{}",
                    case.level
                );
            }
        }
    }
    app.finish().await;
}

#[tokio::test]
async fn compatibility_endpoint_details() {
    let app = TestApp::spawn().await;

    // No versions yet: anything is compatible with "latest".
    let empty = app
        .post(
            "/compatibility/subjects/nothing/versions/latest",
            json!({ "schema": record(&[A]) }),
        )
        .await;
    assert_eq!(empty.assert_ok(), &json!({ "is_compatible": true }));
    // ...but a numbered version of an unknown subject is an error.
    app.post(
        "/compatibility/subjects/nothing/versions/1",
        json!({ "schema": record(&[A]) }),
    )
    .await
    .assert_error(404, 40401);

    app.register_ok("s", &record(&[A])).await;
    app.post(
        "/compatibility/subjects/s/versions/7",
        json!({ "schema": record(&[A]) }),
    )
    .await
    .assert_error(404, 40402);
    app.post(
        "/compatibility/subjects/s/versions/zero",
        json!({ "schema": record(&[A]) }),
    )
    .await
    .assert_error(422, 42202);
    app.post(
        "/compatibility/subjects/s/versions/latest",
        json!({ "schema": "{nope" }),
    )
    .await
    .assert_error(422, 42201);

    // Verbose answers explain.
    let verbose = app
        .post(
            "/compatibility/subjects/s/versions/1?verbose=true",
            json!({ "schema": record(&[A, B]) }),
        )
        .await;
    let body = verbose.assert_ok();
    assert_eq!(body["is_compatible"], false);
    let messages = body["messages"].as_array().unwrap();
    assert!(
        messages.iter().any(|m| m
            .as_str()
            .unwrap()
            .contains("READER_FIELD_MISSING_DEFAULT_VALUE")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "{oldSchemaVersion: 1}"),
        "{messages:?}"
    );

    let verbose_ok = app
        .post(
            "/compatibility/subjects/s/versions/latest?verbose=true",
            json!({ "schema": record(&[A, B_DEFAULT]) }),
        )
        .await;
    assert_eq!(
        verbose_ok.assert_ok(),
        &json!({ "is_compatible": true, "messages": [] })
    );

    // A numbered version is checked on its own, even for transitive levels.
    app.set_level(Some("s"), "BACKWARD_TRANSITIVE").await;
    app.register_ok("s", &record(&[A, B_DEFAULT])).await;
    let candidate = json!({ "schema": record(&[A, B]) });
    let v2 = app
        .post("/compatibility/subjects/s/versions/2", candidate.clone())
        .await;
    assert_eq!(v2.assert_ok(), &json!({ "is_compatible": true }));
    let v1 = app
        .post("/compatibility/subjects/s/versions/1", candidate.clone())
        .await;
    assert_eq!(v1.assert_ok(), &json!({ "is_compatible": false }));
    let latest = app
        .post("/compatibility/subjects/s/versions/latest", candidate)
        .await;
    assert_eq!(latest.assert_ok(), &json!({ "is_compatible": false }));
    app.finish().await;
}

#[tokio::test]
async fn soft_deleted_versions_do_not_constrain_new_ones() {
    let app = TestApp::spawn().await;
    app.register_ok("s", &record(&[A])).await;
    app.register("s", &record(&[C]))
        .await
        .assert_error(409, 409);
    app.delete("/subjects/s/versions/1").await.assert_ok();
    // With the only version soft-deleted there is nothing to be compatible with.
    app.register_ok("s", &record(&[C])).await;
    assert_eq!(
        app.get("/subjects/s/versions").await.assert_ok(),
        &json!([2])
    );
    app.finish().await;
}

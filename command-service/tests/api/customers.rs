//! The customers aggregate through the same engine as orders: its commands, its rules, the
//! shared contract (problem+json, `Idempotency-Key`, `If-Match`, `Consistency-Token`), and what
//! an independent read-committed consumer finds on its topic.

use std::time::Duration;

use customers::events::CustomerEvent;
use serde_json::Value;

use crate::helpers::{TestApp, config, order_body, read_committed, spawn_app, spawn_app_with};

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(
    app: &TestApp,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    app.post_json_with(path, body.to_owned(), headers).await
}

/// The customer events committed to the app's customers topic, decoded.
async fn committed(app: &TestApp) -> Vec<CustomerEvent> {
    let codec = shared_events::EventCodec::<CustomerEvent>::new(
        service_config::RegistryArgs::plain(crate::helpers::env("SCHEMA_REGISTRY_URL"))
            .sr_settings(Duration::from_secs(5))
            .unwrap(),
        &app.customers_topic,
    )
    .unwrap();
    let mut events = Vec::new();
    for record in read_committed(&app.customers_topic) {
        let event = codec.decode(&record.value).await.unwrap();
        assert_eq!(
            record.key, event.envelope.aggregate_id,
            "keyed by customer id"
        );
        events.push(event);
    }
    events.sort_by_key(|e| {
        (
            e.envelope.aggregate_id.clone(),
            e.envelope.aggregate_version,
        )
    });
    events
}

#[tokio::test]
async fn a_customer_lives_through_its_commands() {
    let app = spawn_app().await;

    let response = post(
        &app,
        "/customers",
        r#"{"customer_id":"c-ada","name":"Ada","email":"ada@example.com"}"#,
        &[],
    )
    .await;
    assert_eq!(response.headers()["location"], "/customers/c-ada");
    let token = response.headers()["consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(token.starts_with(&app.customers_topic), "{token}");
    let (status, body) = status_and_body(response).await;
    assert_eq!(
        (status, &body["customer_id"], &body["version"]),
        (201, &"c-ada".into(), &1.into())
    );

    let (status, body) = status_and_body(
        post(
            &app,
            "/customers/c-ada/email",
            r#"{"email":"ada@lovelace.org"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &2.into()), "{body}");
    let (status, body) = status_and_body(
        post(
            &app,
            "/customers/c-ada/email",
            r#"{"email":"ada@lovelace.org"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "the same email again is no change: {body}");
    let (status, _) = status_and_body(
        post(
            &app,
            "/customers/c-ada/deactivation",
            r#"{"reason":"moved away"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    for (path, body) in [
        ("/customers/c-ada/email", r#"{"email":"a@b.co"}"#),
        ("/customers/c-ada/deactivation", r#"{"reason":"again"}"#),
    ] {
        let response = post(&app, path, body, &[]).await;
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(response.status(), 409, "only an active customer: {path}");
    }
    let (status, body) = status_and_body(
        post(
            &app,
            "/customers",
            r#"{"customer_id":"c-ada","name":"Ada","email":"a@b.co"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 409, "registered already: {body}");

    // Without an id, one is made up.
    let (status, body) = status_and_body(
        post(
            &app,
            "/customers",
            r#"{"name":"Bob","email":"bob@example.com"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    let generated = body["customer_id"].as_str().unwrap().to_owned();
    assert!(
        shared_events::Identifier::parse(&generated).is_ok(),
        "{generated}"
    );

    let events = committed(&app).await;
    let names: Vec<(&str, i64, &str)> = events
        .iter()
        .map(|e| {
            (
                e.envelope.aggregate_id.as_str(),
                e.envelope.aggregate_version,
                e.payload.name(),
            )
        })
        .collect();
    let mut expected = vec![
        ("c-ada", 1, "CustomerRegistered"),
        ("c-ada", 2, "CustomerEmailChanged"),
        ("c-ada", 3, "CustomerDeactivated"),
        (generated.as_str(), 1, "CustomerRegistered"),
    ];
    expected.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, expected);
    assert!(
        read_committed(&app.topic).is_empty(),
        "nothing on the orders topic"
    );
    app.stop().await;
}

#[tokio::test]
async fn of_twenty_concurrent_email_changes_under_if_match_exactly_one_wins() {
    let app = spawn_app().await;
    let (status, _) = status_and_body(
        post(
            &app,
            "/customers",
            r#"{"customer_id":"c-race","name":"Race","email":"r@example.com"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);

    let attempts = (0..20).map(|n| {
        let app = &app;
        async move {
            let body = format!(r#"{{"email":"r{n}@example.com"}}"#);
            post(
                app,
                "/customers/c-race/email",
                &body,
                &[("if-match", "\"1\"")],
            )
            .await
            .status()
            .as_u16()
        }
    });
    let mut statuses = futures::future::join_all(attempts).await;
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        19,
        "{statuses:?}"
    );

    let events = committed(&app).await;
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e.envelope.aggregate_version)
        .collect();
    assert_eq!(
        versions,
        [1, 2],
        "one registration and one change, nothing more"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idempotent_retry_gets_the_first_answer_also_after_a_restart() {
    let first = spawn_app().await;
    let key = [("idempotency-key", "register-ada-1")];
    let body = r#"{"name":"Ada","email":"ada@example.com"}"#;
    let (status, answer) = status_and_body(post(&first, "/customers", body, &key).await).await;
    assert_eq!(status, 201);
    let retry = post(&first, "/customers", body, &key).await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(status_and_body(retry).await, (201, answer.clone()));
    let (status, problem) = status_and_body(
        post(
            &first,
            "/customers",
            r#"{"name":"Eve","email":"eve@example.com"}"#,
            &key,
        )
        .await,
    )
    .await;
    assert_eq!(
        status, 422,
        "the key was used for another request: {problem}"
    );
    assert_eq!(problem["type"], "urn:problem-type:idempotency-key-reused");

    // The key names that registration, whatever reuses it: a registration choosing an id (with
    // the same values), or a command on another kind of aggregate.
    let (status, problem) = status_and_body(
        post(
            &first,
            "/customers",
            r#"{"customer_id":"c-other","name":"Ada","email":"ada@example.com"}"#,
            &key,
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) =
        status_and_body(post(&first, "/orders", &order_body("c-1"), &key).await).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        read_committed(&first.topic).is_empty(),
        "no order was placed"
    );

    let mut again = config(&first.topic);
    again.customers_topic.clone_from(&first.customers_topic);
    first.stop().await;
    let second = spawn_app_with(again).await;
    let retry = post(&second, "/customers", body, &key).await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(status_and_body(retry).await, (201, answer));
    assert_eq!(committed(&second).await.len(), 1, "one registration in all");
    second.stop().await;
}

#[tokio::test]
async fn bad_commands_get_problems_and_write_nothing() {
    let app = spawn_app().await;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "/customers",
            "application/json",
            r#"{"name":"Ada","email":"not-an-email"}"#,
            422,
            "invalid-values",
        ),
        (
            "/customers",
            "application/json",
            r#"{"name":"","email":"a@b.co"}"#,
            422,
            "invalid-values",
        ),
        (
            "/customers",
            "application/json",
            r#"{"name":"Ada","email":"a@b.co","vip":true}"#,
            422,
            "invalid-values",
        ),
        (
            "/customers",
            "application/json",
            r#"{"customer_id":"a b","name":"Ada","email":"a@b.co"}"#,
            422,
            "invalid-values",
        ),
        (
            "/customers",
            "application/json",
            r#"{"name":"Ada","name":"Eve","email":"a@b.co"}"#,
            400,
            "malformed-request",
        ),
        (
            "/customers",
            "application/json",
            "[1]",
            400,
            "malformed-request",
        ),
        (
            "/customers",
            "text/plain",
            r#"{"name":"Ada","email":"a@b.co"}"#,
            415,
            "unsupported-media-type",
        ),
        (
            "/customers/nobody/email",
            "application/json",
            r#"{"email":"a@b.co"}"#,
            404,
            "aggregate-not-found",
        ),
        (
            "/customers/bad%20id/email",
            "application/json",
            r#"{"email":"a@b.co"}"#,
            400,
            "invalid-id",
        ),
        (
            "/customers/nobody/deactivation",
            "application/json",
            r#"{}"#,
            422,
            "invalid-values",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let response = app.post(path, content_type, (*body).to_owned()).await;
        assert_eq!(response.status().as_u16(), *status, "{path} {body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path} {body}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"],
            format!("urn:problem-type:{code}"),
            "{path} {body}: {problem}"
        );
        assert_eq!(problem["status"], *status);
    }
    let (status, problem) =
        status_and_body(post(&app, "/customers", r#"{"name":"Ada","email":"bad"}"#, &[]).await)
            .await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["field"], "email", "{problem}");
    assert!(committed(&app).await.is_empty(), "nothing was written");
    app.stop().await;
}

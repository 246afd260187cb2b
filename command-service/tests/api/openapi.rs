//! The OpenAPI document against the running service: it lists exactly the routes the router
//! serves, with exactly their methods, and each request example gets the status it promises.

use http_edge::docs::{operations, promised_status, table_operations};
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, TestApp, config, fresh_topic, spawn_app, spawn_app_with};

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let app = spawn_app().await;
    let document = document(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        operations(&document),
        table_operations(&command_service::api::table(
            &command_service::Config::defaults()
        ))
    );

    // The router serves each path with exactly those methods: any other gets 405 and an
    // `Allow` that names them (GET routes also answer HEAD).
    for route in command_service::api::table(&command_service::Config::defaults()) {
        let path = route.path.replace("{id}", "some-order");
        let response = app
            .client
            .delete(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "DELETE {path}");
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        let mut expected: Vec<&str> = route.methods.to_vec();
        if expected.contains(&"GET") {
            expected.push("HEAD");
        }
        let allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert_eq!(allowed, expected, "Allow of {path}");
    }
    app.stop().await;
}

/// The documented example body of an operation.
fn example(document: &Value, path: &str) -> String {
    let media = &document["paths"][path]["post"]["requestBody"]["content"]["application/json"];
    let schema = media["schema"]["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_else(|| panic!("{path} has no request schema"));
    let example = &document["components"]["schemas"][schema]["example"];
    assert!(example.is_object(), "{path}: no example");
    example.to_string()
}

/// The status an operation promises on success.
fn promised(document: &Value, path: &str, method: &str) -> u16 {
    promised_status(document, path, method)
        .unwrap_or_else(|| panic!("{method} {path} promises no success"))
}

#[tokio::test]
async fn each_request_example_gets_the_status_the_document_promises() {
    let mut config = config(&fresh_topic());
    config.admin_token = Some(ADMIN_TOKEN.into());
    let app = spawn_app_with(config).await;
    let document = document(&app).await;
    let post = |path: String, body: String| {
        let app = &app;
        async move {
            app.post(&path, "application/json", body)
                .await
                .status()
                .as_u16()
        }
    };
    let place = || async {
        let response = app
            .post("/orders", "application/json", example(&document, "/orders"))
            .await;
        assert_eq!(
            response.status().as_u16(),
            promised(&document, "/orders", "post")
        );
        let body: Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().to_owned()
    };

    // Each follow-up on an order in the state its rule asks for: the examples chain (the
    // payment example pays the place example's total).
    let order = place().await;
    let payment = "/orders/{id}/payment";
    assert_eq!(
        post(payment.replace("{id}", &order), example(&document, payment)).await,
        promised(&document, payment, "post")
    );
    let shipment = "/orders/{id}/shipment";
    assert_eq!(
        post(
            shipment.replace("{id}", &order),
            example(&document, shipment)
        )
        .await,
        promised(&document, shipment, "post")
    );
    let order = place().await;
    let cancellation = "/orders/{id}/cancellation";
    assert_eq!(
        post(
            cancellation.replace("{id}", &order),
            example(&document, cancellation)
        )
        .await,
        promised(&document, cancellation, "post")
    );

    for (path, method) in operations(&document) {
        if method != "GET" {
            continue;
        }
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            promised(&document, &path, "get"),
            "GET {path}"
        );
        if path == "/docs" {
            let page = response.text().await.unwrap();
            assert!(page.contains("/openapi.json"));
        }
    }
    app.stop().await;
}

/// `/docs` in headless Chromium: the page fetches the document and renders every operation.
#[tokio::test]
async fn the_docs_page_renders_every_operation_in_a_browser() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/docs", app.address);
    let browser = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let output = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Waits (in virtual time) for the page's fetch of the document before the dump.
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), output)
        .await
        .expect("chromium did not finish within 60 s")
        .unwrap_or_else(|e| panic!("{browser}: {e} (`cargo xtask doctor` checks for it)"));
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains("Command service"),
        "the title was not rendered:\n{dom}"
    );
    for (path, method) in operations(&document) {
        let rendered = format!("<span class=\"path\">{path}</span>");
        assert!(dom.contains(&rendered), "{method} {path} was not rendered");
    }
    app.stop().await;
}

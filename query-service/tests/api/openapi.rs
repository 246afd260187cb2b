//! The OpenAPI document against a running replica: it lists exactly the routes the router
//! serves, with exactly their methods, and each documented request gets the status it promises.

use http_edge::docs::{operations, promised_status, table_operations};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_document_matches_the_router_and_every_request_gets_its_promised_status() {
    let commands = Commands::spawn().await;
    let group = format!("openapi-{}", uuid::Uuid::new_v4());
    let replica = Replica::spawn(&commands.topic, &group, "docs-a").await;
    let http = client();
    wait_settled(&http, &[&replica]).await;
    let written = post(
        &http,
        &format!("{}/orders", commands.address),
        &order_body("c-docs", 1),
    )
    .await;
    // A registered customer, applied, so that `/customers/{customer_id}` answers its 200.
    post(
        &http,
        &format!("{}/customers", commands.address),
        r#"{"customer_id":"c-docs","name":"Docs","email":"docs@example.com"}"#,
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the customer's profile",
        || async {
            http.get(format!("{}/customers/c-docs", replica.address))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;

    let document: Value = http
        .get(format!("{}/openapi.json", replica.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let table = query_service::api::table(&query_service::api::catalog());
    assert_eq!(operations(&document), table_operations(&table));
    // A report, so that `/admin/reports/{id}` answers its 200.
    let report: Value = http
        .post(format!("{}/admin/reports", replica.address))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"report": "monthly-orders"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report_id = report["id"].as_str().unwrap().to_owned();

    for route in table {
        let id = if route.path.starts_with("/admin/reports") {
            &report_id
        } else {
            &written.order_id
        };
        let path = route
            .path
            .replace("{id}", id)
            .replace("{customer_id}", "c-docs")
            .replace("{name}", "orders");
        // Any method but the documented ones: 405, and `Allow` names exactly them (`GET`
        // routes also answer `HEAD`).
        let refused = http
            .put(format!("{}{path}", replica.address))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 405, "PUT {path}");
        let allowed: Vec<&str> = route
            .methods
            .iter()
            .flat_map(|m| {
                if *m == "GET" {
                    vec!["GET", "HEAD"]
                } else {
                    vec![*m]
                }
            })
            .collect();
        assert_eq!(refused.headers()["allow"], allowed.join(", "), "{path}");

        // The route's first method as documented answers its promised status.
        let method = if route.methods.contains(&"GET") {
            "GET"
        } else {
            route.methods[0]
        };
        let mut request = http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", replica.address),
            )
            .header("consistency-token", &written.token);
        if document["paths"][&*route.path][method.to_lowercase()]["security"].is_array() {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        let response = request.send().await.unwrap();
        let promised = promised_status(&document, &route.path, method).unwrap();
        assert_eq!(response.status().as_u16(), promised, "{method} {path}");
    }
    replica.stop().await;
    commands.stop().await;
}

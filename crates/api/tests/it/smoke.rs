//! The harness itself: a server starts, answers, and stops gracefully.

use apitrail_testkit::{TestServer, expect};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_ingests_and_lists() {
    let server = TestServer::start().await;
    let health = server
        .request(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(health, StatusCode::OK).await,
        json!({"status": "ok"})
    );
    let key = server.org_with_key("acme").await;
    let accepted = server
        .ingest(
            &key.secret,
            &json!([{"method": "GET", "path": "/a", "status_code": 200}]),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(accepted, json!({"accepted": 1, "duplicates": 0}));
    let page = server.logs(&key.secret, "").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["path"], "/a");
    server.stop().await;
}

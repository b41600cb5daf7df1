//! Operational endpoints and the fallbacks: health, readiness, metrics, unknown routes and
//! methods, all in the native envelope where they answer with an error.

#![allow(clippy::unwrap_used)]

use apitrail_testkit::{Backend, TestServer, expect, expect_native_error};
use reqwest::{Method, StatusCode};
use serde_json::json;

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_without_credentials() {
    let server = TestServer::start().await;
    let h = server
        .request(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(expect(h, StatusCode::OK).await, json!({"status": "ok"}));
    let r = server.request(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(expect(r, StatusCode::OK).await, json!({"status": "ready"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_ingest_and_the_write_path() {
    let server = TestServer::start().await;
    let key = server.org_with_key("m").await;
    let records = json!([
        {"id": "0190d5c4-0000-7000-8000-000000000001", "method": "GET", "path": "/a", "status_code": 200},
        {"id": "0190d5c4-0000-7000-8000-000000000002", "method": "GET", "path": "/b", "status_code": 500},
        {"id": "0190d5c4-0000-7000-8000-000000000003", "method": "GET", "path": "/c", "status_code": 404}
    ]);
    server
        .ingest(&key.secret, &records, StatusCode::ACCEPTED)
        .await;
    server
        .ingest(&key.secret, &records, StatusCode::ACCEPTED)
        .await;
    server.logs(&key.secret, "").await;
    server.logs(&key.secret, "").await;
    let resp = server
        .get("/v1/logs?limit=0", &key.secret)
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::BAD_REQUEST).await;

    let resp = server
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert_eq!(
        metric(&text, "apitrail_ingest_records_accepted_total "),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "apitrail_ingest_records_duplicate_total "),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "apitrail_http_requests_total{route=\"/v1/logs\",method=\"GET\",status=\"200\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "apitrail_http_requests_total{route=\"/v1/logs\",method=\"GET\",status=\"400\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "apitrail_http_request_duration_seconds_count{route=\"/v1/logs\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "apitrail_write_queue_capacity_records "),
        Some(200_000.0)
    );
    assert_eq!(metric(&text, "apitrail_write_queue_records "), Some(0.0));
    // Both ingest calls, and the org and key creations, went through the writer.
    assert!(metric(&text, "apitrail_store_commits_total ").unwrap() >= 4.0);
    assert!(metric(&text, "apitrail_store_committed_records_total ").unwrap() >= 6.0);
    assert!(metric(&text, "apitrail_store_commit_duration_seconds_count ").unwrap() >= 4.0);
    // SQLite fsyncs its WAL in a step of its own; PostgreSQL does it inside each commit.
    if Backend::from_env() == Backend::Sqlite {
        assert!(metric(&text, "apitrail_store_fsync_duration_seconds_count ").unwrap() >= 1.0);
    }
    // The secret never appears in the exposition.
    assert!(!text.contains(&key.secret));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_in_the_native_envelope() {
    let server = TestServer::start().await;
    let resp = server
        .request(Method::GET, "/v2/nothing")
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::NOT_FOUND, "route_not_found", None).await;
    let resp = server
        .request(Method::PUT, "/v1/logs")
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
    server.stop().await;
}

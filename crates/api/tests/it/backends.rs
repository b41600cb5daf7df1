//! The same data gives byte-identical answers on SQLite and PostgreSQL: two servers, one per
//! backend, are given the same request logs and audit events (with their own ids and times),
//! and every dialect's pages — each filter and order, every page of each walk, and errors —
//! are compared byte for byte. (Request ids are fixed with `X-Request-Id` so error bodies
//! compare too; entries the servers create themselves, with ids and times of their own, are
//! left out by filtering on what was ingested.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::reference;

use apitrail_testkit::{Backend, Options, TestKey, TestServer, expect};
use reqwest::StatusCode;
use serde_json::{Value, json};

use reference::{BASE_MS, Rng, utc};

const ORG: &str = "same-data";

fn logs(rng: &mut Rng) -> Vec<Value> {
    let methods = ["GET", "POST", "DELETE", "PATCH"];
    let routes = ["/v1/items", "/v1/items/{id}", "/v1/users/{id}"];
    (0..240)
        .map(|i| {
            // Few distinct instants, durations and statuses: ties everywhere.
            let ms = BASE_MS + rng.below(20) as i64 * 1000;
            let mut r = json!({
                "id": rng.uuid(),
                "method": rng.pick(&methods),
                "path": format!("/v1/items/{i}"),
                "route_pattern": rng.pick(&routes),
                "status_code": rng.pick(&[200, 201, 404, 500]),
                "created_at": utc(ms),
                "request_id": format!("req_{i:04}"),
                "auth_type": rng.pick(&["api_key", "session"]),
                "user_id": rng.pick(&["usr_a", "usr_b"]),
                "email": rng.pick(&["a@example.com", "b@example.com"]),
                "api_key_id": rng.pick(&["0190f5a2-0000-7000-8000-00000000000a", "key_b"]),
                "service_account_id": rng.pick(&["sa_1", "sa_2"]),
                "client_ip": "2001:db8::1",
                "user_agent": "same/1.0",
                "price": "0.10",
                "metadata": {"k": "v"},
            });
            if rng.chance(70) {
                r["duration_ms"] = json!(rng.below(5) * 10);
            }
            r
        })
        .collect()
}

fn audit_events(rng: &mut Rng) -> Vec<Value> {
    (0..120)
        .map(|i| {
            json!({
                "id": rng.uuid(),
                "action": rng.pick(&["create", "update", "delete"]),
                "resource_type": "destination",
                "resource_id": format!("dst_{}", i % 9),
                "user_id": rng.pick(&["usr_a", "usr_b"]),
                "details": {"n": i, "z": "ü"},
                "ip_address": "192.0.2.9",
                "created_at": utc(BASE_MS + rng.below(15) as i64 * 1000),
            })
        })
        .collect()
}

async fn start(backend: Backend) -> (TestServer, TestKey) {
    let server = TestServer::start_with(Options {
        backend: Some(backend),
        ..Options::default()
    })
    .await;
    let key = server.org_with_key(ORG).await;
    let mut rng = Rng(0x5A3E_DA7A);
    server
        .ingest(
            &key.secret,
            &Value::Array(logs(&mut rng)),
            StatusCode::ACCEPTED,
        )
        .await;
    let resp = server
        .request(reqwest::Method::POST, "/v1/ingest/audit-events")
        .header("x-api-key", &key.secret)
        .json(&audit_events(&mut rng))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED).await;
    (server, key)
}

/// GET `path` with a fixed request id; returns status and body bytes.
async fn raw(server: &TestServer, secret: &str, path: &str) -> (StatusCode, String) {
    let resp = server
        .get(path, secret)
        .header("x-request-id", "same-request")
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

/// Where the next page of `body` starts, as a query parameter, if it has one.
fn next(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let param = |name: &str, value: &Value| value.as_str().map(|c| format!("{name}={c}"));
    param("cursor", &v["pagination"]["next_cursor"])
        .or_else(|| param("page_token", &v["next_page"]))
        .or_else(|| param("cursor", &v["next_cursor"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_answer_byte_for_byte_alike() {
    let (lite, lite_key) = start(Backend::Sqlite).await;
    let (pg, pg_key) = start(Backend::Postgres).await;
    let walks = [
        "/v1/logs?limit=17",
        "/v1/logs?limit=9&sort_by=duration_ms&sort_dir=asc",
        "/v1/logs?limit=9&sort_by=duration_ms&sort_dir=desc",
        "/v1/logs?limit=11&sort_by=status_code&sort_dir=asc",
        "/v1/logs?limit=8&status_min=400&status_max=499",
        "/v1/logs?limit=6&method=post&route_pattern=/v1/items/%7Bid%7D",
        "/v1/logs?limit=5&request_id=0042",
        "/v1/logs?limit=13&auth_type=session&from=2024-03-10T00:00:05Z&to=2024-03-10T00:00:15Z",
        "/org/api-calls?limit=19",
        "/org/api-calls?limit=19&sort_by=created_at_ascending",
        "/users/usr_b/api-calls?limit=23",
        "/users/a@example.com/api-calls?limit=23",
        "/v1/audit-log?limit=7&resource_type=destination",
        "/audit-log?limit=10&resource_type=destination&action=update",
        "/v1/audit-log?resource_id=dst_3",
    ];
    for start_path in walks {
        let mut path = start_path.to_owned();
        let mut pages = 0;
        for page in 0.. {
            pages += 1;
            let a = raw(&lite, &lite_key.secret, &path).await;
            let b = raw(&pg, &pg_key.secret, &path).await;
            assert_eq!(a.0, StatusCode::OK, "{path}: {}", a.1);
            assert_eq!(a, b, "{path} (page {page})");
            let Some(next) = next(&a.1) else { break };
            let base = start_path.split('?').next().unwrap();
            let query: Vec<&str> = start_path
                .split_once('?')
                .map_or("", |(_, q)| q)
                .split('&')
                .filter(|p| !p.starts_with("cursor=") && !p.starts_with("page_token="))
                .collect();
            path = format!("{base}?{}&{next}", query.join("&"));
        }
        if start_path == "/v1/logs?limit=17" {
            assert_eq!(pages, 15, "240 logs in pages of 17");
        }
    }
    // Offset pages (keys dialect, filtered to ingested keys), single calls, and errors.
    for path in [
        "/v1/api-keys/requests?limit=30&offset=0&apiKeyId=key_b",
        "/v1/api-keys/requests?limit=30&offset=60&apiKeyId=key_b",
        "/v1/api-keys/requests?limit=100&serviceAccountId=sa_2",
        "/v1/logs?limit=0",
        "/v1/logs?cursor=nonsense",
        "/v1/audit-log?limit=201",
        "/org/api-calls?limit=1001",
        "/v1/api-keys/requests?offset=-1",
    ] {
        let a = raw(&lite, &lite_key.secret, path).await;
        let b = raw(&pg, &pg_key.secret, path).await;
        assert_eq!(a, b, "{path}");
    }
    lite.stop().await;
    pg.stop().await;
}

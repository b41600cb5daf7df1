//! The keys dialect over HTTP (seed 001, SPEC §3.2): `GET /v1/api-keys/requests` against the
//! real router on a random port — envelope and item shape, every parameter with its default
//! and bounds, offset walks against a reference model, errors in the dialect's envelope,
//! isolation between orgs.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use apitrail_testkit::{TestServer, assert_snapshot, expect};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

const ROUTE: &str = "/v1/api-keys/requests";

/// The seed's sixteen item fields.
const ITEM_KEYS: [&str; 16] = [
    "apiKeyId",
    "clientIp",
    "createdAt",
    "durationMs",
    "id",
    "method",
    "organizationId",
    "path",
    "principalId",
    "principalType",
    "requestId",
    "routePattern",
    "serviceAccountId",
    "statusCode",
    "userAgent",
    "userId",
];

fn keys_of(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

async fn get(server: &TestServer, secret: &str, query: &str) -> Response {
    server
        .get(&format!("{ROUTE}?{query}"), secret)
        .send()
        .await
        .unwrap()
}

async fn page(server: &TestServer, secret: &str, query: &str) -> Value {
    expect(get(server, secret, query).await, StatusCode::OK).await
}

/// Asserts the keys error envelope `{code, data: null, message, requestId}` and returns the
/// message.
async fn expect_keys_error(resp: Response, status: StatusCode) -> String {
    let header_id = apitrail_testkit::header(&resp, "x-request-id");
    let body = expect(resp, status).await;
    assert_eq!(
        keys_of(&body),
        BTreeSet::from(["code", "data", "message", "requestId"]),
        "{body}"
    );
    assert_eq!(body["code"], status.as_u16(), "{body}");
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(body["requestId"].as_str(), header_id.as_deref(), "{body}");
    body["message"].as_str().unwrap().to_owned()
}

/// The UUID of record `i` (ids are given, so the model knows them).
fn id(org: u8, i: usize) -> String {
    format!("0190f5a2-{org:04x}-7000-8000-{i:012x}")
}

/// Record `i` of an org: three keys (one a service account's), some logs without a key, and
/// pairs of logs sharing a `created_at` so ties break by id.
fn record(org: u8, i: usize) -> Value {
    let key = ["key_a", "key_b", "key_sa"][i % 3];
    let mut r = json!({
        "id": id(org, i),
        "method": "GET",
        "path": format!("/things/{i}"),
        "status_code": 200,
        "created_at": format!("2026-01-01T{:02}:{:02}:00.000Z", i / 120, (i / 2) % 60),
    });
    if i % 5 != 4 {
        r["api_key_id"] = json!(key);
    }
    if key == "key_sa" && i % 5 != 4 {
        r["service_account_id"] = json!("sa_1");
    }
    r
}

/// The ids of the org's records matching `keep`, newest first, ties by id descending.
fn model(org: u8, n: usize, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut rows: Vec<(String, String)> = (0..n)
        .map(|i| record(org, i))
        .filter(|r| keep(r))
        .map(|r| {
            (
                r["created_at"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows.reverse();
    rows.into_iter().map(|(_, id)| id).collect()
}

/// Every id of a walk by `limit`/`offset` until `hasMore` is false; checks each page's echo.
async fn walk(server: &TestServer, secret: &str, filter: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let body = page(
            server,
            secret,
            &format!("{filter}&limit={limit}&offset={offset}"),
        )
        .await;
        let data = &body["data"];
        assert_eq!(data["limit"], limit, "{body}");
        assert_eq!(data["offset"], offset, "{body}");
        let items = data["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        if !data["hasMore"].as_bool().unwrap() {
            return ids;
        }
        assert_eq!(items.len(), limit, "a page before the last one is full");
        offset += limit;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_and_items_have_the_seed_shape() {
    let server = TestServer::start().await;
    let key = server.org_with_key("shape").await;
    server
        .ingest(
            &key.secret,
            &json!([
                {"id": id(1, 1), "method": "POST", "path": "/v1/orders/7", "route_pattern": "/v1/orders/{id}",
                 "status_code": 201, "duration_ms": 42, "created_at": "2026-02-03T04:05:06.789Z",
                 "request_id": "req_full", "client_ip": "203.0.113.9", "user_agent": "curl/8",
                 "principal_type": "service_account", "principal_id": "sa_9", "user_id": "u_1",
                 "api_key_id": "key_9", "service_account_id": "sa_9"},
                {"id": id(1, 0), "method": "GET", "path": "/bare", "status_code": 204,
                 "created_at": "2026-02-03T04:00:00.000Z"}
            ]),
            StatusCode::ACCEPTED,
        )
        .await;
    let resp = get(&server, &key.secret, "").await;
    let header_id = apitrail_testkit::header(&resp, "x-request-id").unwrap();
    let body = expect(resp, StatusCode::OK).await;
    assert_eq!(
        keys_of(&body),
        BTreeSet::from(["code", "data", "message", "requestId"])
    );
    assert_eq!(body["code"], 200);
    assert_eq!(body["message"], "success");
    assert_eq!(body["requestId"], header_id.as_str());
    let data = &body["data"];
    assert_eq!(
        keys_of(data),
        BTreeSet::from(["hasMore", "items", "limit", "offset"])
    );
    assert_eq!(data["limit"], 20, "the default limit");
    assert_eq!(data["offset"], 0, "the default offset");
    assert_eq!(data["hasMore"], false);
    assert_snapshot(
        env!("CARGO_MANIFEST_DIR"),
        "keys_page",
        &body,
        &["requestId"],
    );
    let items = data["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(keys_of(item), BTreeSet::from(ITEM_KEYS), "{item}");
    }
    assert_eq!(
        items[0],
        json!({
            "apiKeyId": "key_9", "clientIp": "203.0.113.9", "createdAt": "2026-02-03T04:05:06.789Z",
            "durationMs": 42, "id": id(1, 1), "method": "POST", "organizationId": "shape",
            "path": "/v1/orders/7", "principalId": "sa_9", "principalType": "service_account",
            "requestId": "req_full", "routePattern": "/v1/orders/{id}", "serviceAccountId": "sa_9",
            "statusCode": 201, "userAgent": "curl/8", "userId": "u_1"
        })
    );
    // A log without the optional fields prints them as null, never omits them.
    assert_eq!(items[1]["id"], id(1, 0));
    for field in [
        "apiKeyId",
        "clientIp",
        "durationMs",
        "principalId",
        "principalType",
        "requestId",
        "routePattern",
        "serviceAccountId",
        "userAgent",
        "userId",
    ] {
        assert_eq!(items[1][field], Value::Null, "{field}: {}", items[1]);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_walks_return_what_the_model_predicts() {
    let server = TestServer::start().await;
    let key = server.org_with_key("walks").await;
    let n = 137;
    let records: Vec<Value> = (0..n).map(|i| record(1, i)).collect();
    server
        .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
        .await;
    let has = |field: &'static str, value: &'static str| {
        move |r: &Value| r.get(field).and_then(Value::as_str) == Some(value)
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("", model(1, n, |_| true)),
        ("apiKeyId=key_a", model(1, n, has("api_key_id", "key_a"))),
        ("apiKeyId=key_sa", model(1, n, has("api_key_id", "key_sa"))),
        (
            "serviceAccountId=sa_1",
            model(1, n, has("service_account_id", "sa_1")),
        ),
        (
            "serviceAccountId=sa_1&apiKeyId=key_a",
            model(1, n, |r| {
                has("service_account_id", "sa_1")(r) && has("api_key_id", "key_a")(r)
            }),
        ),
        ("apiKeyId=nobody", Vec::new()),
    ];
    for (filter, expected) in &cases {
        for limit in [1, 7, 20, 100] {
            if limit == 1 && expected.len() > 40 {
                continue;
            }
            let got = walk(&server, &key.secret, filter, limit).await;
            assert_eq!(&got, expected, "{filter} limit={limit}");
        }
    }
    assert!(cases[1].1.len() > 20 && cases[4].1.is_empty());
    // The default page is the first 20; past the end, a page is empty and has no more.
    let first = page(&server, &key.secret, "").await;
    let ids: Vec<&str> = first["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        cases[0].1[..20]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(first["data"]["hasMore"], true);
    let past = page(&server, &key.secret, &format!("offset={n}")).await;
    assert_eq!(past["data"]["items"], json!([]));
    assert_eq!(past["data"]["hasMore"], false);
    // The bounds themselves are accepted.
    let max = page(&server, &key.secret, "limit=100&offset=100000").await;
    assert_eq!(
        (max["data"]["limit"].clone(), max["data"]["offset"].clone()),
        (json!(100), json!(100000))
    );
    // An empty value counts as absent.
    let empty = page(&server, &key.secret, "limit=&offset=&apiKeyId=").await;
    assert_eq!(empty["data"]["limit"], 20);
    assert_eq!(empty["data"]["items"].as_array().unwrap().len(), 20);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_answer_400_in_the_keys_envelope() {
    let server = TestServer::start().await;
    let key = server.org_with_key("bad").await;
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=1e2", "limit"),
        ("offset=-1", "offset"),
        ("offset=100001", "offset"),
        ("offset=x", "offset"),
        ("limit=5&limit=6", "limit"),
        ("apiKeyId=a&apiKeyId=b", "apiKeyId"),
        ("serviceAccountId=a&serviceAccountId=b", "serviceAccountId"),
    ] {
        let message = expect_keys_error(
            get(&server, &key.secret, query).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(message.starts_with(param), "{query}: {message}");
    }
    let body = expect(
        get(&server, &key.secret, "limit=0").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_snapshot(
        env!("CARGO_MANIFEST_DIR"),
        "keys_error_limit_0",
        &body,
        &["requestId"],
    );
    // Over the parameter's bound, under the 8 KiB request-target limit (beyond it, 414).
    let long = "k".repeat(4_000);
    let message = expect_keys_error(
        get(&server, &key.secret, &format!("apiKeyId={long}")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.starts_with("apiKeyId"), "{message}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_answer_in_the_keys_envelope() {
    let server = TestServer::start().await;
    server.create_org("auth").await;
    let writer = server.create_key("auth", &["write"]).await;
    let resp = server
        .request(reqwest::Method::GET, ROUTE)
        .send()
        .await
        .unwrap();
    expect_keys_error(resp, StatusCode::UNAUTHORIZED).await;
    let resp = get(&server, "atk_not_a_real_key_0000000000000000", "").await;
    expect_keys_error(resp, StatusCode::UNAUTHORIZED).await;
    let resp = get(&server, &writer.secret, "").await;
    expect_keys_error(resp, StatusCode::FORBIDDEN).await;
    let resp = server
        .request(reqwest::Method::DELETE, ROUTE)
        .header("x-api-key", &writer.secret)
        .send()
        .await
        .unwrap();
    expect_keys_error(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_org_sees_only_its_own_requests() {
    let server = TestServer::start().await;
    let a = server.org_with_key("org-a").await;
    let b = server.org_with_key("org-b").await;
    let n = 30;
    for (org, key) in [(1u8, &a), (2u8, &b)] {
        let records: Vec<Value> = (0..n).map(|i| record(org, i)).collect();
        server
            .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
            .await;
    }
    for (org, name, key) in [(1u8, "org-a", &a), (2u8, "org-b", &b)] {
        for filter in ["", "apiKeyId=key_a", "serviceAccountId=sa_1"] {
            let got = walk(&server, &key.secret, filter, 100).await;
            let own: BTreeSet<String> = (0..n).map(|i| id(org, i)).collect();
            assert!(!got.is_empty(), "{name} {filter}");
            assert!(
                got.iter().all(|i| own.contains(i)),
                "{name} {filter}: {got:?}"
            );
        }
        let body = page(&server, &key.secret, "limit=100").await;
        let items = body["data"]["items"].as_array().unwrap();
        assert_eq!(items.len(), n);
        assert!(items.iter().all(|i| i["organizationId"] == name), "{body}");
    }
    server.stop().await;
}

/// Self-logging seen through the keys dialect: each call made with a key is listed under that
/// key's id with the caller's details; with self-logging off, nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_listed_under_the_key_that_made_them() {
    for self_log in [true, false] {
        let server = TestServer::start_with(apitrail_testkit::Options {
            self_log,
            ..Default::default()
        })
        .await;
        let key = server.org_with_key("self").await;
        let n = 4;
        for i in 0..n {
            let resp = server
                .get(&format!("{ROUTE}?limit={}", i + 1), &key.secret)
                .header("user-agent", "keys-suite/1.0")
                .header("x-request-id", format!("keys-call-{i}"))
                .send()
                .await
                .unwrap();
            expect(resp, StatusCode::OK).await;
        }
        let mine = |body: &Value| -> Vec<Value> {
            body["data"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| {
                    i["requestId"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("keys-call-"))
                })
                .cloned()
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let items = loop {
            let body = page(
                &server,
                &key.secret,
                &format!("limit=100&apiKeyId={}", key.id),
            )
            .await;
            let items = mine(&body);
            if items.len() >= n || std::time::Instant::now() > deadline {
                break items;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        };
        if !self_log {
            assert!(items.is_empty(), "self-logging is off: {items:?}");
            let all = page(&server, &key.secret, "limit=100").await;
            assert_eq!(all["data"]["items"], json!([]), "{all}");
            server.stop().await;
            continue;
        }
        assert_eq!(items.len(), n, "{items:?}");
        for (k, item) in items.iter().enumerate() {
            // Newest first: the last call comes first.
            assert_eq!(
                item["requestId"],
                format!("keys-call-{}", n - 1 - k),
                "{item}"
            );
            assert_eq!(item["apiKeyId"], key.id.as_str(), "{item}");
            assert_eq!(item["organizationId"], "self", "{item}");
            assert_eq!(item["method"], "GET", "{item}");
            assert_eq!(item["path"], ROUTE, "{item}");
            assert_eq!(item["routePattern"], ROUTE, "{item}");
            assert_eq!(item["statusCode"], 200, "{item}");
            assert_eq!(item["clientIp"], "127.0.0.1", "{item}");
            assert_eq!(item["userAgent"], "keys-suite/1.0", "{item}");
            assert!(item["principalType"].is_string(), "{item}");
            assert!(
                item["durationMs"].as_i64().is_some_and(|d| d >= 0),
                "{item}"
            );
        }
        server.stop().await;
    }
}

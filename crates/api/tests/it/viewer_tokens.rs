//! Viewer tokens over HTTP (SPEC §10): creation and its 400s and 403s, revocation, expiry,
//! what a token may read (its org, its kinds, through every carrier) and may not (403 in each
//! route's envelope), the forced filter on every route that reads (lists, stats, export,
//! tail, timeline, the dialects), the audit entries of creation and revocation, the self-log
//! of a viewer's read, and `GET /v1/me`. Run on PostgreSQL with
//! `APITRAIL_TEST_BACKEND=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::http_support;

use std::time::{Duration, Instant};

use apitrail_model::{
    OrgId, Secret, Timestamp, ViewerFilter, ViewerKind, ViewerToken, new_record_id,
};
use apitrail_store::ViewerCreated;
use apitrail_testkit::{Options, TestKey, TestServer, expect, expect_native_error, header};
use http_support::{Carrier, audit_entries, send, stored_log, tenant};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ORG: &str = "7001";
const OTHER: &str = "7002";
const RID: &str = "req_viewer_timeline";

/// Two orgs with keys and data: in each, request logs of users `u1`/`u2` with keys
/// `k1`/`k2` (the path says whose: `/{org}/{user}/{key}/{n}`), all with request id [`RID`],
/// and audit entries by `u1` and `u2` with that request id.
struct Fixture {
    server: TestServer,
    admin: TestKey,
    reader: TestKey,
    writer: TestKey,
    other_admin: TestKey,
}

async fn fixture_with(options: Options) -> Fixture {
    let server = TestServer::start_with(options).await;
    let admin = server.org_with_key(ORG).await;
    let reader = server.create_key(ORG, &["read"]).await;
    let writer = server.create_key(ORG, &["write"]).await;
    let other_admin = server.org_with_key(OTHER).await;
    for (org, key) in [(ORG, &admin), (OTHER, &other_admin)] {
        let mut logs = Vec::new();
        for (user, api_key) in [("u1", "k1"), ("u1", "k2"), ("u2", "k1"), ("u2", "k2")] {
            for n in 0..3 {
                logs.push(json!({
                    "method": "GET",
                    "path": format!("/{org}/{user}/{api_key}/{n}"),
                    "status_code": if n == 2 { 500 } else { 200 },
                    "user_id": user,
                    "api_key_id": api_key,
                    "request_id": RID,
                }));
            }
        }
        server
            .ingest(&key.secret, &Value::Array(logs), StatusCode::ACCEPTED)
            .await;
        let audit: Vec<Value> = ["u1", "u2", "u1"]
            .iter()
            .enumerate()
            .map(|(i, user)| {
                json!({
                    "action": "update",
                    "resource_type": "doc",
                    "resource_id": format!("{org}-{user}-{i}"),
                    "user_id": user,
                    "request_id": RID,
                })
            })
            .collect();
        let resp = server
            .request(Method::POST, "/v1/ingest/audit-events")
            .header("x-api-key", &key.secret)
            .json(&audit)
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::ACCEPTED).await;
    }
    Fixture {
        server,
        admin,
        reader,
        writer,
        other_admin,
    }
}

async fn fixture() -> Fixture {
    fixture_with(Options::default()).await
}

/// `POST /v1/viewer-tokens` with `secret`, expecting `status`.
async fn create(server: &TestServer, secret: &str, body: Value, status: StatusCode) -> Value {
    let resp = server
        .request(Method::POST, "/v1/viewer-tokens")
        .header("x-api-key", secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    expect(resp, status).await
}

/// A viewer token's secret, created by `admin` with `body`.
async fn viewer(server: &TestServer, admin: &TestKey, body: Value) -> String {
    let v = create(server, &admin.secret, body, StatusCode::CREATED).await;
    v["token"].as_str().unwrap().to_owned()
}

async fn get(server: &TestServer, path: &str, secret: &str, status: StatusCode) -> Value {
    let (got, _, body) = send(server.get(path, secret)).await;
    assert_eq!(got, status, "{path}: {body}");
    body
}

/// The `path` of each item of `items`.
fn paths(items: &Value) -> Vec<String> {
    let mut p: Vec<String> = items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        // The zoo dialect names the path `endpoint` (there is no route pattern here).
        .map(|i| {
            i.get("path")
                .or_else(|| i.get("endpoint"))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no path: {i}"))
                .to_owned()
        })
        .collect();
    p.sort();
    p
}

/// The paths of the fixture's logs of `org` whose user and key pass the filters.
fn expected(org: &str, user: Option<&str>, key: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for (u, k) in [("u1", "k1"), ("u1", "k2"), ("u2", "k1"), ("u2", "k2")] {
        if user.is_none_or(|x| x == u) && key.is_none_or(|x| x == k) {
            for n in 0..3 {
                out.push(format!("/{org}/{u}/{k}/{n}"));
            }
        }
    }
    out.sort();
    out
}

fn is_base62_token(t: &str) -> bool {
    t.len() == 44 && t.starts_with("atv_") && t[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

#[tokio::test]
async fn creating_answers_the_token_once_and_revoking_ends_it_both_audited() {
    let f = fixture().await;
    let s = &f.server;
    let before = Timestamp::now();
    let v = create(
        s,
        &f.admin.secret,
        json!({"ttl_seconds": 600, "kinds": ["request_logs", "audit_log"], "filter": {"user_id": "u1"}}),
        StatusCode::CREATED,
    )
    .await;
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(is_base62_token(&token), "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(v["kinds"], json!(["request_logs", "audit_log"]));
    assert_eq!(v["filter"], json!({"user_id": "u1", "api_key_id": null}));
    let expires = Timestamp::parse(v["expires_at"].as_str().unwrap()).unwrap();
    let created = Timestamp::parse(v["created_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.millis() - created.millis(), 600_000);
    assert!(created >= before.add_millis(-1_000));
    // Defaults: one hour, every kind, no filter.
    let d = create(s, &f.admin.secret, json!({}), StatusCode::CREATED).await;
    assert_eq!(
        d["kinds"],
        json!(["request_logs", "audit_log", "action_records"])
    );
    assert_eq!(d["filter"], json!({"user_id": null, "api_key_id": null}));
    let (c, e) = (
        Timestamp::parse(d["created_at"].as_str().unwrap()).unwrap(),
        Timestamp::parse(d["expires_at"].as_str().unwrap()).unwrap(),
    );
    assert_eq!(e.millis() - c.millis(), 3_600_000);
    get(s, "/v1/logs", &token, StatusCode::OK).await;

    // The creation's audit entry: the acting key's principal, the token's id, no secret.
    let entries = audit_entries(s, ORG).await;
    let made = entries
        .iter()
        .find(|e| e.resource_type == "viewer_token" && e.resource_id.as_deref() == Some(&id))
        .expect("a creation entry");
    assert_eq!(made.action, "create");
    assert_eq!(made.user_id.as_deref(), Some("usr_test"));
    let details = made.details.clone().unwrap();
    assert!(
        details.contains("request_logs") && details.contains("u1"),
        "{details}"
    );
    for e in &entries {
        assert!(
            !e.details.as_deref().unwrap_or("").contains(&token[4..]),
            "an audit entry holds the secret"
        );
    }

    // Another org's admin cannot revoke it (404), nor can a read key (403).
    let path = format!("/v1/viewer-tokens/{id}");
    let other = s
        .request(Method::DELETE, &path)
        .header("x-api-key", &f.other_admin.secret);
    expect_native_error(
        other.send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let reader = s
        .request(Method::DELETE, &path)
        .header("x-api-key", &f.reader.secret);
    expect_native_error(
        reader.send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    get(s, "/v1/logs", &token, StatusCode::OK).await;

    let revoke = || {
        s.request(Method::DELETE, &path)
            .header("x-api-key", &f.admin.secret)
    };
    assert_eq!(
        expect(revoke().send().await.unwrap(), StatusCode::NO_CONTENT).await,
        Value::Null
    );
    let body = expect_native_error(
        s.get("/v1/logs", &token).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("viewer token"),
        "{body}"
    );
    // Revoking again is a no-op, audited once.
    expect(revoke().send().await.unwrap(), StatusCode::NO_CONTENT).await;
    let revokes = audit_entries(s, ORG)
        .await
        .into_iter()
        .filter(|e| e.action == "revoke" && e.resource_id.as_deref() == Some(&id))
        .count();
    assert_eq!(revokes, 1);
    for unknown in [
        format!("/v1/viewer-tokens/{}", new_record_id()),
        "/v1/viewer-tokens/nope".into(),
    ] {
        let resp = s
            .request(Method::DELETE, &unknown)
            .header("x-api-key", &f.admin.secret);
        expect_native_error(
            resp.send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn malformed_requests_are_400s_naming_the_field_and_only_admin_keys_create() {
    let f = fixture().await;
    let s = &f.server;
    for (body, param) in [
        (json!({"ttl_seconds": 59}), "ttl_seconds"),
        (json!({"ttl_seconds": 86_401}), "ttl_seconds"),
        (json!({"ttl_seconds": "60"}), "ttl_seconds"),
        (json!({"kinds": []}), "kinds"),
        (json!({"kinds": ["request_logs", "logs"]}), "kinds"),
        (json!({"filter": {"user_id": "u1"}}), "filter"),
        (
            json!({"kinds": ["action_records"], "filter": {"user_id": "u1"}}),
            "filter",
        ),
        (
            json!({"kinds": ["audit_log"], "filter": {"api_key_id": "k1"}}),
            "filter",
        ),
        (
            json!({"kinds": ["request_logs"], "filter": {"user_id": ""}}),
            "filter.user_id",
        ),
        (
            json!({"kinds": ["request_logs"], "filter": {"email": "a@b"}}),
            "email",
        ),
        (json!({"scopes": ["read"]}), "scopes"),
        // serde would read a struct from an array of its fields; no documented body is one.
        (
            json!({"kinds": ["request_logs"], "filter": ["u1", null]}),
            "filter",
        ),
        (json!({"ttl_seconds": 120.5}), "ttl_seconds"),
        // Left out is the default; null is no value the document allows.
        (json!({"kinds": null}), "kinds"),
        (json!({"kinds": ["request_logs"], "filter": null}), "filter"),
    ] {
        let resp = s
            .request(Method::POST, "/v1/viewer-tokens")
            .header("x-api-key", &f.admin.secret)
            .json(&body)
            .send()
            .await
            .unwrap();
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some(param),
        )
        .await;
    }
    // A whole number written with a fraction is that number, as the JSON Schema `integer`
    // says.
    let v = create(
        s,
        &f.admin.secret,
        json!({"ttl_seconds": 120.0, "kinds": ["request_logs"]}),
        StatusCode::CREATED,
    )
    .await;
    assert!(v["token"].as_str().unwrap().starts_with("atv_"));
    // The edges are accepted.
    for ttl in [60, 86_400] {
        create(
            s,
            &f.admin.secret,
            json!({"ttl_seconds": ttl}),
            StatusCode::CREATED,
        )
        .await;
    }
    create(
        s,
        &f.admin.secret,
        json!({"kinds": ["request_logs"], "filter": {"user_id": "u1", "api_key_id": "k1"}}),
        StatusCode::CREATED,
    )
    .await;
    for key in [&f.reader, &f.writer] {
        let resp = s
            .request(Method::POST, "/v1/viewer-tokens")
            .header("x-api-key", &key.secret)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    }
}

#[tokio::test]
async fn a_viewer_reads_its_org_through_every_carrier_and_nothing_of_another() {
    let f = fixture().await;
    let s = &f.server;
    let token = viewer(s, &f.admin, json!({"kinds": ["request_logs"]})).await;
    for carrier in Carrier::ALL {
        let (status, _, body) =
            send(carrier.apply(s.request(Method::GET, "/v1/logs?limit=100"), &token)).await;
        assert_eq!(status, StatusCode::OK, "{carrier:?}: {body}");
        assert_eq!(
            paths(&body["data"]),
            expected(ORG, None, None),
            "{carrier:?}"
        );
    }
    let zoo = get(s, "/org/api-calls", &token, StatusCode::OK).await;
    assert_eq!(paths(&zoo["items"]), expected(ORG, None, None));
    let keys = get(s, "/v1/api-keys/requests?limit=100", &token, StatusCode::OK).await;
    assert_eq!(paths(&keys["data"]["items"]), expected(ORG, None, None));
    // Another org's record by id, through this org's token: not found.
    let theirs = get(s, "/v1/logs?limit=1", &f.other_admin.secret, StatusCode::OK).await;
    let their_id = theirs["data"][0]["id"].as_str().unwrap();
    let body = get(
        s,
        &format!("/org/api-calls/{their_id}"),
        &token,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(body["error_code"].is_string(), "{body}");
    // Another org's actions path: 404, as for a key.
    let token_all = viewer(s, &f.admin, json!({})).await;
    let body = get(
        s,
        &format!("/v1/orgs/{OTHER}/actions/records"),
        &token_all,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(body["errors"].is_array(), "{body}");
    let own = get(
        s,
        &format!("/v1/orgs/{ORG}/actions/records"),
        &token_all,
        StatusCode::OK,
    )
    .await;
    assert_eq!(own["data"]["count"], 0);
}

#[tokio::test]
async fn a_viewer_reads_only_its_kinds_and_nothing_else_403_in_each_envelope() {
    let f = fixture().await;
    let s = &f.server;
    let logs_only = viewer(s, &f.admin, json!({"kinds": ["request_logs"]})).await;
    let audit_only = viewer(s, &f.admin, json!({"kinds": ["audit_log"]})).await;
    let actions_only = viewer(s, &f.admin, json!({"kinds": ["action_records"]})).await;
    let records = format!("/v1/orgs/{ORG}/actions/records");
    let request_routes = [
        "/v1/logs",
        "/v1/logs/stats",
        "/v1/logs/export",
        "/org/api-calls",
        "/v1/api-keys/requests",
    ];
    let audit_routes = [
        "/v1/audit-log",
        "/audit-log",
        "/v1/audit-log/export",
        "/v1/audit-log/verify",
    ];
    for path in request_routes {
        get(s, path, &logs_only, StatusCode::OK).await;
    }
    for path in audit_routes {
        get(s, path, &audit_only, StatusCode::OK).await;
    }
    get(s, &records, &actions_only, StatusCode::OK).await;
    let timeline = format!("/v1/requests/{RID}/timeline");
    for token in [&logs_only, &audit_only, &actions_only] {
        get(s, &timeline, token, StatusCode::OK).await;
        get(s, "/v1/me", token, StatusCode::OK).await;
    }

    // Each route's own envelope on a 403.
    let forbidden = |body: &Value, path: &str| {
        let message =
            if path.starts_with("/org/") || path.starts_with("/user") || path == "/api-calls" {
                body["message"].as_str()
            } else if path == "/v1/api-keys/requests" {
                assert_eq!(body["code"], 403, "{body}");
                body["message"].as_str()
            } else if path.contains("/actions/records") {
                body["errors"][0]["message"].as_str()
            } else {
                assert_eq!(body["error"]["code"], "forbidden", "{body}");
                body["error"]["message"].as_str()
            };
        let message = message.unwrap_or_else(|| panic!("{path}: {body}"));
        assert!(
            message.starts_with("a viewer token can only read"),
            "{path}: {body}"
        );
    };
    for (token, paths) in [
        (
            &logs_only,
            audit_routes
                .iter()
                .map(|p| p.to_string())
                .chain([records.clone(), "/v1/audit-log/tail".into()])
                .collect::<Vec<_>>(),
        ),
        (
            &audit_only,
            request_routes
                .iter()
                .map(|p| p.to_string())
                .chain([
                    records.clone(),
                    "/v1/logs/tail".into(),
                    format!("/org/api-calls/{}", new_record_id()),
                ])
                .collect(),
        ),
        (
            &actions_only,
            request_routes
                .iter()
                .chain(audit_routes.iter())
                .map(|p| p.to_string())
                .collect(),
        ),
    ] {
        for path in paths {
            let body = get(s, &path, token, StatusCode::FORBIDDEN).await;
            forbidden(&body, &path);
        }
    }
    // The timeline's parts of other kinds are empty.
    let t = get(s, &timeline, &audit_only, StatusCode::OK).await;
    assert_eq!(t["request_logs"], json!([]));
    assert_eq!(t["audit_log"].as_array().unwrap().len(), 3);
    let t = get(s, &timeline, &logs_only, StatusCode::OK).await;
    assert_eq!(t["request_logs"].as_array().unwrap().len(), 12);
    assert_eq!(t["audit_log"], json!([]));
}

#[tokio::test]
async fn writes_and_every_other_route_are_403_for_any_viewer() {
    let f = fixture().await;
    let s = &f.server;
    let token = viewer(s, &f.admin, json!({})).await;
    let id = new_record_id();
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/ingest/requests".into(),
            Some(json!([{"method": "GET", "path": "/x", "status_code": 200}])),
        ),
        (
            Method::POST,
            "/v1/ingest/audit-events".into(),
            Some(json!([{"action": "a", "resource_type": "r"}])),
        ),
        (Method::GET, "/v1/api-keys".into(), None),
        (Method::POST, "/v1/api-keys".into(), Some(json!({}))),
        (Method::GET, format!("/v1/api-keys/{id}"), None),
        (Method::DELETE, format!("/v1/api-keys/{id}"), None),
        (Method::POST, "/v1/viewer-tokens".into(), Some(json!({}))),
        (Method::DELETE, format!("/v1/viewer-tokens/{id}"), None),
        (Method::GET, "/user/api-calls".into(), None),
        (Method::GET, format!("/user/api-calls/{id}"), None),
        (Method::GET, "/api-calls".into(), None),
        (Method::GET, format!("/api-calls/{id}"), None),
        (Method::GET, "/users/me/api-calls".into(), None),
        (Method::GET, "/v1/destinations".into(), None),
        (Method::POST, "/v1/destinations".into(), Some(json!({}))),
        (Method::GET, "/v1/action-definitions".into(), None),
        (Method::GET, "/v1/credentials".into(), None),
        (
            Method::POST,
            "/v1/credentials".into(),
            Some(json!({"label": "x"})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{ORG}/actions"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{ORG}/actions/records/{id}/signal"),
            Some(json!({})),
        ),
    ];
    for (method, path, body) in cases {
        let mut rb = s.request(method.clone(), &path).header("x-api-key", &token);
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let (status, _, body) = send(rb).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        let text = body.to_string();
        assert!(
            text.contains("a viewer token can only read"),
            "{method} {path}: {text}"
        );
    }
    // The operator API takes no org credential at all.
    let (status, _, _) = send(s.request(Method::GET, "/admin/v1/orgs").bearer_auth(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was written.
    assert_eq!(http_support::stored_count(s, ORG).await, 12);
}

/// Walks the NDJSON export at `path` with `secret`.
async fn export_lines(s: &TestServer, path: &str, secret: &str) -> Vec<Value> {
    let resp = s.get(path, secret).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    let text = resp.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_forced_filter_narrows_every_route_that_reads() {
    let f = fixture().await;
    let s = &f.server;
    let user = viewer(
        s,
        &f.admin,
        json!({"kinds": ["request_logs", "audit_log"], "filter": {"user_id": "u1"}}),
    )
    .await;
    let key = viewer(
        s,
        &f.admin,
        json!({"kinds": ["request_logs"], "filter": {"api_key_id": "k1"}}),
    )
    .await;
    let u1 = expected(ORG, Some("u1"), None);
    let k1 = expected(ORG, None, Some("k1"));

    // Lists in every dialect, with and without the query's own filters.
    let body = get(s, "/v1/logs?limit=100", &user, StatusCode::OK).await;
    assert_eq!(paths(&body["data"]), u1);
    let body = get(
        s,
        "/v1/logs?limit=100&status_min=500",
        &user,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        paths(&body["data"]),
        vec![format!("/{ORG}/u1/k1/2"), format!("/{ORG}/u1/k2/2")]
    );
    let body = get(s, "/org/api-calls?limit=100", &user, StatusCode::OK).await;
    assert_eq!(paths(&body["items"]), u1);
    let body = get(s, "/v1/api-keys/requests?limit=100", &user, StatusCode::OK).await;
    assert_eq!(paths(&body["data"]["items"]), u1);
    let body = get(s, "/v1/api-keys/requests?limit=100", &key, StatusCode::OK).await;
    assert_eq!(paths(&body["data"]["items"]), k1);
    // A query naming another key gets nothing, never that key's records.
    let body = get(
        s,
        "/v1/api-keys/requests?limit=100&apiKeyId=k2",
        &key,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["data"]["items"], json!([]), "{body}");
    assert_eq!(body["data"]["hasMore"], false);
    let body = get(
        s,
        "/v1/api-keys/requests?limit=100&apiKeyId=k1",
        &key,
        StatusCode::OK,
    )
    .await;
    assert_eq!(paths(&body["data"]["items"]), k1);
    let body = get(
        s,
        "/v1/api-keys/requests?limit=100&apiKeyId=k2",
        &user,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        paths(&body["data"]["items"]),
        vec![
            format!("/{ORG}/u1/k2/0"),
            format!("/{ORG}/u1/k2/1"),
            format!("/{ORG}/u1/k2/2")
        ]
    );

    // One record by id: another user's is not found.
    let all = get(s, "/v1/logs?limit=100", &f.admin.secret, StatusCode::OK).await;
    for item in all["data"].as_array().unwrap() {
        let path = item["path"].as_str().unwrap();
        let status = if path.contains("/u1/") {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        get(
            s,
            &format!("/org/api-calls/{}", item["id"].as_str().unwrap()),
            &user,
            status,
        )
        .await;
    }

    // Stats: the counts of the user's records only, whichever path the store takes.
    for query in [
        "",
        "?group_by=status_code",
        "?group_by=user_id",
        "?group_by=method",
    ] {
        let body = get(s, &format!("/v1/logs/stats{query}"), &user, StatusCode::OK).await;
        let total: u64 = body["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["total"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 6, "{query}: {body}");
        let body = get(s, &format!("/v1/logs/stats{query}"), &key, StatusCode::OK).await;
        let total: u64 = body["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["total"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 6, "{query}: {body}");
    }
    let body = get(s, "/v1/logs/stats?group_by=user_id", &user, StatusCode::OK).await;
    assert_eq!(body["series"].as_array().unwrap().len(), 1);
    assert_eq!(body["series"][0]["group"], "u1");

    // Exports.
    let lines = export_lines(s, "/v1/logs/export?format=ndjson", &user).await;
    let mut got: Vec<String> = lines
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, u1);
    assert!(lines.iter().all(|l| l["user_id"] == "u1"));
    let lines = export_lines(s, "/v1/logs/export?format=ndjson", &key).await;
    assert_eq!(lines.len(), 6);
    assert!(lines.iter().all(|l| l["api_key_id"] == "k1"));
    let lines = export_lines(s, "/v1/audit-log/export?format=ndjson", &user).await;
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["user_id"] == "u1"), "{lines:?}");

    // Audit lists.
    for path in ["/v1/audit-log", "/audit-log", "/v1/audit-log?action=update"] {
        let body = get(s, path, &user, StatusCode::OK).await;
        let entries = body["audit_log"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{path}: {body}");
        assert!(
            entries.iter().all(|e| e["user_id"] == "u1"),
            "{path}: {body}"
        );
    }

    // The timeline: each part narrowed; action records are not the token's kind.
    let t = get(
        s,
        &format!("/v1/requests/{RID}/timeline"),
        &user,
        StatusCode::OK,
    )
    .await;
    assert_eq!(paths(&t["request_logs"]), u1);
    let audit = t["audit_log"].as_array().unwrap();
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|e| e["user_id"] == "u1"));
    assert_eq!(t["action_records"], json!([]));
    let t = get(
        s,
        &format!("/v1/requests/{RID}/timeline"),
        &key,
        StatusCode::OK,
    )
    .await;
    assert_eq!(paths(&t["request_logs"]), k1);
    assert_eq!(t["audit_log"], json!([]));
}

/// The first `event: <kind>` of an SSE stream, as JSON.
async fn first_event(resp: reqwest::Response, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut resp = resp;
    let mut buf = String::new();
    loop {
        if let Some(at) = buf.find(&format!("event: {kind}\n")) {
            let rest = &buf[at..];
            if let Some(end) = rest.find("\n\n") {
                let block = &rest[..end];
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("an event with data");
                return serde_json::from_str(data).unwrap();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .expect("no event within the deadline")
            .unwrap()
            .expect("the stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn tails_send_only_what_the_forced_filter_lets_through() {
    let f = fixture().await;
    let s = &f.server;
    let user = viewer(
        s,
        &f.admin,
        json!({"kinds": ["request_logs", "audit_log"], "filter": {"user_id": "u1"}}),
    )
    .await;
    let logs = s.get("/v1/logs/tail", &user).send().await.unwrap();
    assert_eq!(logs.status(), StatusCode::OK);
    let audit = s.get("/v1/audit-log/tail", &user).send().await.unwrap();
    assert_eq!(audit.status(), StatusCode::OK);
    // Another user's record first, then the viewer's user's.
    s.ingest(
        &f.admin.secret,
        &json!([
            {"method": "GET", "path": "/tail/u2", "status_code": 200, "user_id": "u2"},
            {"method": "GET", "path": "/tail/u1", "status_code": 200, "user_id": "u1"},
        ]),
        StatusCode::ACCEPTED,
    )
    .await;
    let resp = s
        .request(Method::POST, "/v1/ingest/audit-events")
        .header("x-api-key", &f.admin.secret)
        .json(&json!([
            {"action": "tail", "resource_type": "doc", "resource_id": "of-u2", "user_id": "u2"},
            {"action": "tail", "resource_type": "doc", "resource_id": "of-u1", "user_id": "u1"},
        ]))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED).await;
    let first = first_event(logs, "request_log").await;
    assert_eq!(first["path"], "/tail/u1", "{first}");
    let first = first_event(audit, "audit_entry").await;
    assert_eq!(first["resource_id"], "of-u1", "{first}");
}

#[tokio::test]
async fn expired_tokens_are_401_everywhere() {
    let f = fixture().await;
    let s = &f.server;
    let t = tenant(s, ORG).await;
    let now = Timestamp::now();
    let token = ViewerToken {
        id: new_record_id(),
        org_id: OrgId::parse(ORG).unwrap(),
        kinds: [ViewerKind::RequestLogs].into_iter().collect(),
        filter: ViewerFilter::default(),
        created_at: now.add_millis(-120_000),
        expires_at: now.add_millis(-1),
        revoked_at: None,
    };
    let secret = Secret::generate_viewer();
    let entry = apitrail_model::AuditEntry {
        id: new_record_id(),
        user_id: None,
        action: "create".into(),
        resource_type: "viewer_token".into(),
        resource_id: Some(token.id.to_string()),
        details: None,
        ip_address: None,
        request_id: None,
        created_at: now,
    };
    assert_eq!(
        s.store
            .create_viewer_token(&t, &token, &secret.hash(), &entry, 1_000)
            .await
            .unwrap(),
        ViewerCreated::Created
    );
    for path in ["/v1/logs", "/v1/me", "/v1/audit-log"] {
        let body = expect_native_error(
            s.get(path, secret.expose()).send().await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{body}"
        );
    }
    // In the dialects' envelopes too.
    let body = get(
        s,
        "/org/api-calls",
        secret.expose(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(body["error_code"].is_string(), "{body}");
    let body = get(
        s,
        "/v1/api-keys/requests",
        secret.expose(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["code"], 401, "{body}");
    // An unknown token of the right shape.
    let unknown = Secret::generate_viewer();
    get(s, "/v1/logs", unknown.expose(), StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn a_viewer_read_is_self_logged_as_viewer_token() {
    let f = fixture_with(Options {
        self_log: true,
        ..Options::default()
    })
    .await;
    let s = &f.server;
    let created = create(
        s,
        &f.admin.secret,
        json!({"kinds": ["request_logs"]}),
        StatusCode::CREATED,
    )
    .await;
    let token = created["token"].as_str().unwrap();
    let token_id = created["id"].as_str().unwrap();
    let resp = s.get("/v1/logs?limit=1", token).send().await.unwrap();
    let call_id = header(&resp, "x-api-call-id").expect("an X-Api-Call-Id");
    expect(resp, StatusCode::OK).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        if let Some(log) = stored_log(s, ORG, &call_id).await {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer's call was not self-logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log.auth_type.as_deref(), Some("viewer_token"));
    assert_eq!(log.api_key_id.as_deref(), Some(token_id));
    assert_eq!(log.route_pattern.as_deref(), Some("/v1/logs"));
    assert_eq!(log.user_id, None);
    assert_eq!(log.principal_id, None);
    assert!(
        !format!("{log:?}").contains(&token[4..]),
        "the secret is not logged"
    );
    // Listed by auth type for the org's admin.
    let body = get(
        s,
        "/v1/logs?auth_type=viewer_token",
        &f.admin.secret,
        StatusCode::OK,
    )
    .await;
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == call_id.as_str())
    );
}

#[tokio::test]
async fn me_describes_an_api_key_and_a_viewer_token() {
    let f = fixture().await;
    let s = &f.server;
    let body = get(s, "/v1/me", &f.writer.secret, StatusCode::OK).await;
    assert_eq!(
        body,
        json!({
            "org": {"id": ORG, "name": format!("Org {ORG}")},
            "credential": {"type": "api_key", "id": f.writer.id, "scopes": ["write"]},
        })
    );
    let created = create(
        s,
        &f.admin.secret,
        json!({"kinds": ["audit_log", "request_logs"], "filter": {"user_id": "u1"}, "ttl_seconds": 120}),
        StatusCode::CREATED,
    )
    .await;
    let body = get(
        s,
        "/v1/me",
        created["token"].as_str().unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body,
        json!({
            "org": {"id": ORG, "name": format!("Org {ORG}")},
            "credential": {
                "type": "viewer_token",
                "id": created["id"],
                "kinds": ["request_logs", "audit_log"],
                "filter": {"user_id": "u1", "api_key_id": null},
                "expires_at": created["expires_at"],
            },
        })
    );
    get(s, "/v1/me", "atk_nope", StatusCode::UNAUTHORIZED).await;
}

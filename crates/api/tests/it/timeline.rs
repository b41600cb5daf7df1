//! `GET /v1/requests/{request_id}/timeline` (SPEC §10, "one linked timeline") over HTTP: it
//! joins the three kinds for one request id (ingested request logs and audit entries, the
//! self-audit entry, action record and self-logs of calls sent with that `X-Request-Id`),
//! each item exactly as its dialect's list route prints it, oldest first; another org's
//! records never appear; each kind is bounded and says when it was cut; an unknown id is an
//! empty answer; a malformed one a 400 in the native envelope. Runs on either backend
//! (`APITRAIL_TEST_BACKEND=postgres`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use apitrail_testkit::{Options, TestKey, TestServer, expect, expect_native_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::reference::{now_ms, parse_utc, utc};

const PUBLIC_URL: &str = "https://93.184.216.34/hooks/in";

async fn timeline(server: &TestServer, secret: &str, request_id: &str) -> Value {
    let resp = server
        .get(&format!("/v1/requests/{request_id}/timeline"), secret)
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await
}

/// A call authenticated with `secret`, sent with `X-Request-Id: request_id` when given.
pub(crate) async fn call(
    server: &TestServer,
    secret: &str,
    method: Method,
    path: &str,
    body: &Value,
    request_id: Option<&str>,
    status: StatusCode,
) -> Value {
    let mut rb = server
        .request(method, path)
        .header("x-api-key", secret)
        .json(body);
    if let Some(id) = request_id {
        rb = rb.header("x-request-id", id);
    }
    expect(rb.send().await.unwrap(), status).await
}

async fn ingest_audit(server: &TestServer, secret: &str, records: &Value) {
    call(
        server,
        secret,
        Method::POST,
        "/v1/ingest/audit-events",
        records,
        None,
        StatusCode::ACCEPTED,
    )
    .await;
}

/// A destination and the definition `notify` (any input) of `key`'s org.
pub(crate) async fn notify_definition(server: &TestServer, key: &TestKey) {
    let s = key.secret.as_str();
    let dest = call(
        server,
        s,
        Method::POST,
        "/v1/destinations",
        &json!({"label": "hook", "config": {"url": PUBLIC_URL}}),
        None,
        StatusCode::CREATED,
    )
    .await;
    call(
        server,
        s,
        Method::POST,
        "/v1/action-definitions",
        &json!({"variant": "notify", "schema": true,
                "destinations": [{"destination_id": dest["id"], "is_default": true}]}),
        None,
        StatusCode::CREATED,
    )
    .await;
}

/// Triggers `notify` with `X-Request-Id: request_id`; returns the record's id.
pub(crate) async fn trigger(server: &TestServer, key: &TestKey, request_id: &str) -> String {
    let r = call(
        server,
        &key.secret,
        Method::POST,
        &format!("/v1/orgs/{}/actions", key.org_id),
        &json!({"action": "notify", "input": {"n": 1}}),
        Some(request_id),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        r["request_id"], request_id,
        "the record carries the call's id: {r}"
    );
    r["id"].as_str().unwrap().to_owned()
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts oldest first, ties by id.
fn assert_oldest_first(items: &Value, what: &str) {
    let keys: Vec<(i64, String)> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                parse_utc(i["created_at"].as_str().unwrap()),
                i["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "{what} oldest first, ties by id: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_joins_all_three_kinds() {
    let server = TestServer::start_with(Options {
        self_log: true,
        ..Options::default()
    })
    .await;
    let key = server.org_with_key("16001").await;
    let s = key.secret.as_str();
    notify_definition(&server, &key).await;
    let rid = "req_tl_joins_01";
    let base = now_ms() - 3_600_000;

    // Ingested request logs of the request, in both spellings, out of time order; one of
    // another request.
    let logs = json!([
        {"method": "GET", "path": "/b", "status_code": 200, "request_id": rid, "created_at": utc(base + 20)},
        {"method": "POST", "path": "/a", "status_code": 201, "request_id": "tl_joins_01", "created_at": utc(base)},
        {"method": "GET", "path": "/c", "status_code": 500, "request_id": rid, "created_at": utc(base + 10)},
        {"method": "GET", "path": "/other", "status_code": 200, "request_id": "req_tl_joins_02", "created_at": utc(base + 5)},
    ]);
    server.ingest(s, &logs, StatusCode::ACCEPTED).await;
    // Ingested audit entries of the request; one of another request, one without any.
    let (a1, a2) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    ingest_audit(
        &server,
        s,
        &json!([
            {"id": a2, "action": "update", "resource_type": "invoice", "request_id": rid, "created_at": utc(base + 30)},
            {"id": a1, "action": "create", "resource_type": "invoice", "request_id": "tl_joins_01", "created_at": utc(base + 1)},
            {"action": "delete", "resource_type": "invoice", "request_id": "req_tl_joins_02", "created_at": utc(base + 2)},
            {"action": "delete", "resource_type": "invoice", "created_at": utc(base + 3)},
        ]),
    )
    .await;
    // A call with the request id that creates a key (its self-audit entry) and one that
    // triggers an action (its record); both get self-logs with the id.
    let made = call(
        &server,
        s,
        Method::POST,
        "/v1/api-keys",
        &json!({"name": "made in the request", "scopes": ["read"],
                "principal_type": "user", "principal_id": "usr_tl"}),
        Some(rid),
        StatusCode::CREATED,
    )
    .await;
    let record_id = trigger(&server, &key, rid).await;

    // Self-logs are written asynchronously (listed within a second): wait for both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let page = server
            .logs(s, &format!("request_id={rid}&sort_dir=asc&limit=100"))
            .await;
        if page["data"].as_array().unwrap().len() >= 5 || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let routes: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["route_pattern"].as_str())
        .collect();
    assert!(
        routes.contains(&"/v1/api-keys") && routes.contains(&"/v1/orgs/{org_id}/actions"),
        "the calls' self-logs carry their request id: {listed}"
    );

    let t = timeline(&server, s, rid).await;
    let mut fields: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "action_records",
            "audit_log",
            "request_id",
            "request_logs",
            "truncated"
        ],
        "{t}"
    );
    assert_eq!(t["request_id"], rid);
    assert_eq!(
        t["truncated"],
        json!({"request_logs": false, "audit_log": false, "action_records": false})
    );

    // Request logs: the three ingested and the two self-logs, exactly as /v1/logs lists them.
    assert_eq!(t["request_logs"], listed["data"], "{t}");
    assert_eq!(t["request_logs"].as_array().unwrap().len(), 5, "{t}");
    assert_oldest_first(&t["request_logs"], "request logs");

    // Audit entries: the two ingested and the key's self-audit entry, exactly as
    // /v1/audit-log lists them.
    let audit = call(
        &server,
        s,
        Method::GET,
        "/v1/audit-log?limit=200",
        &Value::Null,
        None,
        StatusCode::OK,
    )
    .await;
    let self_audit = audit["audit_log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource_type"] == "api_key" && e["resource_id"] == made["id"])
        .unwrap_or_else(|| panic!("the key's creation is audited: {audit}"))
        .clone();
    let want: Vec<Value> = [a1.as_str(), a2.as_str(), self_audit["id"].as_str().unwrap()]
        .iter()
        .map(|id| {
            audit["audit_log"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["id"] == *id)
                .unwrap_or_else(|| panic!("{id} is listed: {audit}"))
                .clone()
        })
        .collect();
    assert_eq!(t["audit_log"], Value::Array(want), "{t}");
    assert_oldest_first(&t["audit_log"], "audit entries");

    // The action record, as the actions dialect lists it with its state.
    let records = call(
        &server,
        s,
        Method::GET,
        &format!("/v1/orgs/{}/actions/records?include_state=true", key.org_id),
        &Value::Null,
        None,
        StatusCode::OK,
    )
    .await;
    let item = records["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == record_id.as_str())
        .unwrap_or_else(|| panic!("the record is listed: {records}"))
        .clone();
    assert_eq!(t["action_records"], json!([item]), "{t}");

    // The other spelling of the id is the same request.
    let bare = timeline(&server, s, "tl_joins_01").await;
    assert_eq!(bare["request_id"], "tl_joins_01");
    for kind in ["request_logs", "audit_log", "action_records"] {
        assert_eq!(bare[kind], t[kind], "{kind}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_orgs_records_never_join_a_timeline() {
    let server = TestServer::start().await;
    let a = server.org_with_key("16101").await;
    let b = server.org_with_key("16102").await;
    let rid = "req_tl_shared";
    let base = now_ms() - 60_000;
    let mut mine = Vec::new();
    for (key, n) in [(&a, 2), (&b, 3)] {
        let logs: Vec<Value> = (0..n)
            .map(|i| {
                json!({"method": "GET", "path": format!("/{}/{i}", key.org_id), "status_code": 200,
                            "request_id": rid, "created_at": utc(base + i)})
            })
            .collect();
        server
            .ingest(&key.secret, &Value::Array(logs), StatusCode::ACCEPTED)
            .await;
        let entries: Vec<Value> = (0..n)
            .map(|i| {
                json!({"action": "update", "resource_type": "invoice",
                            "resource_id": format!("{}-{i}", key.org_id),
                            "request_id": rid, "created_at": utc(base + i)})
            })
            .collect();
        ingest_audit(&server, &key.secret, &Value::Array(entries)).await;
        notify_definition(&server, key).await;
        let records: Vec<String> = {
            let mut r = Vec::new();
            for _ in 0..n {
                r.push(trigger(&server, key, rid).await);
            }
            r
        };
        mine.push((key, n, records));
    }
    for (key, n, records) in &mine {
        let t = timeline(&server, &key.secret, rid).await;
        let org = key.org_id.as_str();
        assert_eq!(
            t["request_logs"].as_array().unwrap().len(),
            *n as usize,
            "{t}"
        );
        assert!(
            t["request_logs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["path"].as_str().unwrap().starts_with(&format!("/{org}/"))),
            "only {org}'s logs: {t}"
        );
        // Only its ingested entries: the changes of its setup carry other request ids.
        assert_eq!(t["audit_log"].as_array().unwrap().len(), *n as usize, "{t}");
        assert!(
            t["audit_log"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["org_id"] == org
                    && e["resource_id"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{org}-"))),
            "only {org}'s entries: {t}"
        );
        assert_eq!(
            &ids(&t["action_records"]),
            records,
            "only {org}'s records, oldest first"
        );
        assert!(
            t["action_records"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["org_id"] == org),
            "{t}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_is_bounded_and_says_when_it_was_cut() {
    let server = TestServer::start().await;
    let key = server.org_with_key("16201").await;
    let s = key.secret.as_str();
    let base = now_ms() - 3_600_000;
    // 1,001 logs and 1,001 audit entries of one request, sent newest first: the timeline
    // holds the oldest 1,000 of each.
    let n = 1_001;
    let log_ids: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    let audit_ids: Vec<String> = (0..n).map(|_| Uuid::now_v7().to_string()).collect();
    let logs: Vec<Value> = (0..n)
        .rev()
        .map(|i| {
            json!({"id": log_ids[i], "method": "GET", "path": "/many", "status_code": 200,
                        "request_id": "req_tl_many", "created_at": utc(base + i as i64)})
        })
        .collect();
    server
        .ingest(s, &Value::Array(logs), StatusCode::ACCEPTED)
        .await;
    let entries: Vec<Value> = (0..n)
        .rev()
        .map(|i| {
            json!({"id": audit_ids[i], "action": "update", "resource_type": "invoice",
                        "request_id": "req_tl_many", "created_at": utc(base + i as i64)})
        })
        .collect();
    ingest_audit(&server, s, &Value::Array(entries)).await;

    let t = timeline(&server, s, "req_tl_many").await;
    assert_eq!(ids(&t["request_logs"]), log_ids[..1_000]);
    assert_eq!(ids(&t["audit_log"]), audit_ids[..1_000]);
    assert_eq!(t["action_records"], json!([]));
    assert_eq!(
        t["truncated"],
        json!({"request_logs": true, "audit_log": true, "action_records": false})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_records_are_bounded_too() {
    let server = TestServer::start().await;
    let key = server.org_with_key("16202").await;
    notify_definition(&server, &key).await;
    // 1,001 records triggered by calls sharing one request id, 16 at a time.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, base, key) = (server.client.clone(), server.base.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for _ in (t..1_001).step_by(16) {
                let resp = client
                    .post(format!("{base}/v1/orgs/{}/actions", key.org_id))
                    .header("x-api-key", &key.secret)
                    .header("x-request-id", "req_tl_many_actions")
                    .json(&json!({"action": "notify", "input": {}}))
                    .send()
                    .await
                    .unwrap();
                let r = expect(resp, StatusCode::CREATED).await;
                made.push((
                    parse_utc(r["created_at"].as_str().unwrap()),
                    r["id"].as_str().unwrap().to_owned(),
                ));
            }
            made
        }));
    }
    let mut made = Vec::new();
    for task in tasks {
        made.extend(task.await.unwrap());
    }
    assert_eq!(made.len(), 1_001);
    made.sort();
    let oldest: Vec<String> = made.into_iter().take(1_000).map(|(_, id)| id).collect();

    let t = timeline(&server, &key.secret, "req_tl_many_actions").await;
    // Oldest first by the records' creation (the dialect's items do not print it), ties by id.
    assert_eq!(ids(&t["action_records"]), oldest);
    assert_eq!(
        t["truncated"],
        json!({"request_logs": false, "audit_log": false, "action_records": true})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_empty_and_malformed_ones_are_400() {
    let server = TestServer::start().await;
    let key = server.org_with_key("16301").await;
    let s = key.secret.as_str();

    // Request ids come from clients: one nothing carries is an answer, not an error.
    let long_ok = "é".repeat(1_024);
    for id in [
        "req_nothing_here",
        "a%20b",
        "%C3%A9t%C3%A9",
        long_ok.as_str(),
    ] {
        let t = timeline(&server, s, id).await;
        assert_eq!(
            t,
            json!({"request_id": t["request_id"], "request_logs": [], "audit_log": [],
                   "action_records": [],
                   "truncated": {"request_logs": false, "audit_log": false, "action_records": false}}),
        );
    }
    assert_eq!(timeline(&server, s, "a%20b").await["request_id"], "a b");

    let too_long = "x".repeat(1_025);
    for id in [too_long.as_str(), "a%0Ab", "%00", "a%7Fb", "%C2%85", "%FF"] {
        let resp = server
            .get(&format!("/v1/requests/{id}/timeline"), s)
            .send()
            .await
            .unwrap();
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some("request_id"),
        )
        .await;
    }

    // Authentication and the read scope come first.
    let resp = server
        .request(Method::GET, "/v1/requests/req_x/timeline")
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let writer = server.create_key("16301", &["write"]).await;
    let resp = server
        .get("/v1/requests/req_x/timeline", &writer.secret)
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    server.stop().await;
}

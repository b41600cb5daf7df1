//! Tenant isolation over HTTP (SPEC §2): two orgs with keys and data; no answer to one org's
//! key ever contains the other org's records, keys or ids, on any route of the router.

#![allow(clippy::unwrap_used)]

use crate::http_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use apitrail_testkit::{Options, TestKey, TestServer, expect, expect_native_error};
use http_support::{
    all_logs, all_logs_where, audit_entries, key_works, operator_ingest, send, stored_count,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An id both orgs ingest a record with: ids are unique per org, not globally.
const SHARED_ID: &str = "0190f5a2-0000-7000-8000-00000000c0de";

/// One org's fixtures.
#[derive(Debug)]
struct Tenant {
    org: &'static str,
    /// Every scope.
    admin: TestKey,
    /// Read only.
    reader: TestKey,
    /// Write only.
    writer: TestKey,
    /// The ids of the org's request logs (SHARED_ID included).
    log_ids: BTreeSet<String>,
    /// Strings only this org's data contains (ids, secrets, request ids, paths...).
    markers: Vec<String>,
}

impl Tenant {
    fn key_ids(&self) -> BTreeSet<String> {
        [&self.admin, &self.reader, &self.writer]
            .iter()
            .map(|k| k.id.clone())
            .collect()
    }

    /// Panics if `text` contains any of this org's markers.
    fn assert_absent(&self, text: &str, what: &str) {
        for m in &self.markers {
            assert!(
                !text.contains(m.as_str()),
                "{what}: the answer contains {m:?} of {}: {text}",
                self.org
            );
        }
    }
}

/// Creates `org` with keys and six request logs (one with [`SHARED_ID`]).
async fn populate(server: &TestServer, org: &'static str, name: &str) -> Tenant {
    server.create_org(org).await;
    let key = |scopes: &[&str]| {
        json!({
            "name": format!("{name} {}", scopes.join("+")),
            "scopes": scopes,
            "principal_type": "user",
            "principal_id": format!("usr_{name}"),
            "user_id": format!("usr_{name}"),
            "email": format!("{name}@example.com"),
        })
    };
    let admin = server
        .create_key_with(org, key(&["read", "write", "admin"]))
        .await;
    let reader = server.create_key_with(org, key(&["read"])).await;
    let writer = server.create_key_with(org, key(&["write"])).await;
    // Each org has its own methods, statuses, auth types and time window, so that a filter
    // matching only the other org's records must return nothing.
    let (methods, status, auth, day) = if name == "alpha" {
        (["GET", "POST", "PUT"], 200, "alpha_auth", "2024-03-01")
    } else {
        (["DELETE", "PATCH", "HEAD"], 503, "bravo_auth", "2024-03-09")
    };
    let mut records = Vec::new();
    let mut log_ids = BTreeSet::new();
    for i in 0..5 {
        let id = format!("0190f5a2-{:04x}-7000-8000-{:012x}", i, 0xabc + i);
        let id = if name == "alpha" {
            id
        } else {
            id.replacen("-8000-", "-9000-", 1)
        };
        log_ids.insert(id.clone());
        records.push(json!({
            "id": id,
            "request_id": if i == 4 { format!("{name}-bare-{i}") } else { format!("req_{name}_{i}") },
            "method": methods[i % 3],
            "path": format!("/{name}/items/{i}"),
            "route_pattern": format!("/{name}/items/{{id}}"),
            "status_code": status + i as u16,
            "duration_ms": 10 * i,
            "auth_type": auth,
            "error_code": format!("{name}_error"),
            "created_at": format!("{day}T10:00:0{i}.000Z"),
            "user_id": format!("usr_{name}"),
            "email": format!("{name}@example.com"),
            "client_ip": "192.0.2.7",
        }));
    }
    log_ids.insert(SHARED_ID.to_owned());
    records.push(json!({
        "id": SHARED_ID,
        "request_id": "req_shared",
        "method": methods[0],
        "path": format!("/{name}/shared"),
        "status_code": status,
        "created_at": format!("{day}T11:00:00Z"),
    }));
    let accepted = server
        .ingest(&admin.secret, &Value::Array(records), StatusCode::ACCEPTED)
        .await;
    assert_eq!(accepted, json!({"accepted": 6, "duplicates": 0}));
    // Audit events that only this org's audit log may show.
    let audited = expect(
        server
            .request(Method::POST, "/v1/ingest/audit-events")
            .header("x-api-key", &admin.secret)
            .json(&json!([
                {"action": "create", "resource_type": "destination",
                 "resource_id": format!("dst_{name}"), "user_id": format!("usr_{name}"),
                 "details": {"by": format!("usr_{name}")}},
                {"action": "delete", "resource_type": "destination",
                 "resource_id": format!("dst_{name}"), "user_id": format!("usr_{name}")},
            ]))
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(audited, json!({"accepted": 2, "duplicates": 0}));
    let mut markers: Vec<String> = vec![
        org.to_owned(),
        format!("/{name}/"),
        format!("req_{name}"),
        format!("{name}-bare"),
        format!("{name}_auth"),
        format!("{name}_error"),
        format!("usr_{name}"),
        format!("dst_{name}"),
    ];
    for k in [&admin, &reader, &writer] {
        markers.push(k.id.clone());
        markers.push(k.secret.clone());
    }
    markers.extend(log_ids.iter().filter(|id| *id != SHARED_ID).cloned());
    Tenant {
        org,
        admin,
        reader,
        writer,
        log_ids,
        markers,
    }
}

async fn two_orgs(options: Options) -> (TestServer, Tenant, Tenant) {
    let server = TestServer::start_with(options).await;
    let a = populate(&server, "alpha-1f2e", "alpha").await;
    let b = populate(&server, "bravo-9c8d", "bravo").await;
    (server, a, b)
}

fn ids(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_logs_never_show_another_orgs_records() {
    let (server, a, b) = two_orgs(Options::default()).await;
    for (me, other) in [(&a, &b), (&b, &a)] {
        let mine = all_logs(&server, &me.reader.secret).await;
        assert_eq!(ids(&mine), me.log_ids, "{}", me.org);
        other.assert_absent(&serde_json::to_string(&mine).unwrap(), me.org);
        // The shared id resolves to this org's own record.
        let shared = mine.iter().find(|l| l["id"] == SHARED_ID).unwrap();
        assert!(
            shared["path"].as_str().unwrap().ends_with("/shared")
                && !shared["path"].as_str().unwrap().contains(&other.markers[1]),
            "{shared}"
        );

        let other_name = if other.org.starts_with("alpha") {
            "alpha"
        } else {
            "bravo"
        };
        let (other_method, other_status, other_day) = if other_name == "alpha" {
            ("PUT", "status_min=200&status_max=204", "2024-03-01")
        } else {
            ("DELETE", "status_min=503&status_max=599", "2024-03-09")
        };
        // Filters that only the other org's records match: always empty.
        for q in [
            format!("request_id=req_{other_name}_0"),
            format!("request_id={other_name}_0"),
            format!("request_id={other_name}-bare-4"),
            format!("request_id=req_{other_name}-bare-4"),
            format!("route_pattern=/{other_name}/items/{{id}}"),
            format!("auth_type={other_name}_auth"),
            format!("method={other_method}"),
            format!("method={}", other_method.to_lowercase()),
            other_status.to_owned(),
            format!("from={other_day}T00:00:00Z&to={other_day}T23:59:59Z"),
            format!("from={other_day}T00:00:00%2B01:00&to={other_day}T23:59:59-01:00"),
        ] {
            for sort in [
                "",
                "&sort_by=duration_ms&sort_dir=asc",
                "&sort_by=status_code",
            ] {
                let q = format!("{q}{sort}");
                let got = all_logs_where(&server, &me.reader.secret, &q).await;
                assert!(got.is_empty(), "{} {q}: {got:?}", me.org);
            }
        }
        // Filters both orgs' records match: only this org's.
        for q in [
            "request_id=req_shared",
            "request_id=shared",
            "status_min=100&status_max=599",
            "from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
            "sort_by=duration_ms&sort_dir=desc",
            "sort_by=status_code&sort_dir=asc",
        ] {
            let got = all_logs_where(&server, &me.reader.secret, q).await;
            assert!(!got.is_empty(), "{} {q}", me.org);
            assert!(ids(&got).is_subset(&me.log_ids), "{} {q}: {got:?}", me.org);
            other.assert_absent(&serde_json::to_string(&got).unwrap(), q);
        }
        let shared = all_logs_where(&server, &me.reader.secret, "request_id=req_shared").await;
        assert_eq!(ids(&shared), BTreeSet::from([SHARED_ID.to_owned()]));

        // Walking page by page sees exactly this org's records, once each.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("limit=1&cursor={c}"),
                None => "limit=1".to_owned(),
            };
            let page = server.logs(&me.reader.secret, &q).await;
            other.assert_absent(&page.to_string(), &q);
            seen.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["pagination"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            assert!(seen.len() <= me.log_ids.len(), "paging leaked records");
        }
        assert_eq!(seen.len(), me.log_ids.len());
        assert_eq!(ids(&seen), me.log_ids);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_never_writes_into_another_org() {
    let (server, a, b) = two_orgs(Options::default()).await;
    let before_a = stored_count(&server, a.org).await;
    let before_b = stored_count(&server, b.org).await;
    for key in [&a.admin, &a.writer] {
        // A record naming another org, alone or after a record of the key's own org; and a
        // record naming an org that does not exist answers exactly the same (no probing).
        let mut answers = Vec::new();
        for batch in [
            json!([{"org_id": b.org, "method": "GET", "path": "/smuggled", "status_code": 200}]),
            json!([
                {"org_id": a.org, "method": "GET", "path": "/own", "status_code": 200},
                {"method": "GET", "path": "/own2", "status_code": 200},
                {"org_id": b.org, "method": "GET", "path": "/smuggled", "status_code": 200}
            ]),
            json!([{"org_id": "no-such-org", "method": "GET", "path": "/smuggled", "status_code": 200}]),
        ] {
            let resp = server
                .request(Method::POST, "/v1/ingest/requests")
                .header("x-api-key", &key.secret)
                .json(&batch)
                .send()
                .await
                .unwrap();
            let body =
                expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", Some("org_id")).await;
            b.assert_absent(&body.to_string(), "ingest 403");
            answers.push(body["error"]["code"].clone());
        }
        assert!(answers.windows(2).all(|w| w[0] == w[1]));
        // NDJSON takes the same path.
        let resp = server
            .request(Method::POST, "/v1/ingest/requests")
            .header("x-api-key", &key.secret)
            .header("content-type", "application/x-ndjson")
            .body(format!(
                "{{\"method\":\"GET\",\"path\":\"/own\",\"status_code\":200}}\n{{\"org_id\":\"{}\",\"method\":\"GET\",\"path\":\"/smuggled\",\"status_code\":200}}\n",
                b.org
            ))
            .send()
            .await
            .unwrap();
        expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", Some("org_id")).await;
    }
    assert_eq!(
        stored_count(&server, a.org).await,
        before_a,
        "nothing stored in A"
    );
    assert_eq!(
        stored_count(&server, b.org).await,
        before_b,
        "nothing stored in B"
    );
    let b_logs = all_logs(&server, &b.reader.secret).await;
    assert!(b_logs.iter().all(|l| l["path"] != "/smuggled"));

    // A record id already stored in B is new in A, and B's record is untouched.
    let b_id = b.log_ids.iter().find(|i| *i != SHARED_ID).unwrap().clone();
    let got = server
        .ingest(
            &a.writer.secret,
            &json!([{"id": b_id, "method": "GET", "path": "/alpha/copy", "status_code": 201}]),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(got, json!({"accepted": 1, "duplicates": 0}));
    let a_copy = all_logs(&server, &a.reader.secret).await;
    let a_copy = a_copy.iter().find(|l| l["id"] == b_id.as_str()).unwrap();
    assert_eq!(a_copy["path"], "/alpha/copy");
    let b_orig = all_logs(&server, &b.reader.secret).await;
    let b_orig = b_orig.iter().find(|l| l["id"] == b_id.as_str()).unwrap();
    assert!(
        b_orig["path"].as_str().unwrap().starts_with("/bravo/"),
        "{b_orig}"
    );
    assert_eq!(stored_count(&server, b.org).await, before_b);

    // The operator may write into both orgs in one batch; each record lands in its own org.
    let got = operator_ingest(
        &server,
        &json!([
            {"org_id": a.org, "method": "GET", "path": "/alpha/by-operator", "status_code": 200},
            {"org_id": b.org, "method": "GET", "path": "/bravo/by-operator", "status_code": 200}
        ]),
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(got, json!({"accepted": 2, "duplicates": 0}));
    let a_logs = all_logs(&server, &a.reader.secret).await;
    assert!(a_logs.iter().any(|l| l["path"] == "/alpha/by-operator"));
    // (B's record id that A deliberately reused is A's own now.)
    b.assert_absent(
        &serde_json::to_string(&a_logs).unwrap().replace(&b_id, ""),
        "A after operator ingest",
    );
    let b_logs = all_logs(&server, &b.reader.secret).await;
    assert!(b_logs.iter().any(|l| l["path"] == "/bravo/by-operator"));
    a.assert_absent(
        &serde_json::to_string(&b_logs).unwrap(),
        "B after operator ingest",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_management_never_reaches_another_org() {
    let (server, a, b) = two_orgs(Options::default()).await;
    let audit_b_before = audit_entries(&server, b.org).await;
    for (me, other) in [(&a, &b), (&b, &a)] {
        let list = expect(
            server
                .get("/v1/api-keys", &me.admin.secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let items = list["data"].as_array().unwrap();
        assert_eq!(ids(items), me.key_ids(), "{}", me.org);
        assert!(items.iter().all(|k| k["org_id"] == me.org), "{list}");
        other.assert_absent(&list.to_string(), "GET /v1/api-keys");
        for id in other.key_ids() {
            for method in [Method::GET, Method::DELETE] {
                let resp = server
                    .request(method.clone(), &format!("/v1/api-keys/{id}"))
                    .header("x-api-key", &me.admin.secret)
                    .send()
                    .await
                    .unwrap();
                let body =
                    expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
                other.assert_absent(&body.to_string(), &format!("{method} /v1/api-keys/{id}"));
            }
        }
    }
    for k in [
        &a.admin, &a.reader, &a.writer, &b.admin, &b.reader, &b.writer,
    ] {
        assert!(key_works(&server, &k.secret).await, "{} was revoked", k.id);
    }

    // A key is always created in the caller's org; naming another org is refused by name.
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &a.admin.secret)
        .json(
            &json!({"name": "x", "scopes": ["read"], "principal_type": "user",
                      "principal_id": "usr_alpha", "org_id": b.org}),
        )
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("org_id"),
    )
    .await;
    let created = expect(
        server
            .request(Method::POST, "/v1/api-keys")
            .header("x-api-key", &a.admin.secret)
            .json(
                &json!({"name": "alpha extra", "scopes": ["read"], "principal_type": "user",
                          "principal_id": "usr_alpha"}),
            )
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["org_id"], a.org);
    let new_secret = created["secret"].as_str().unwrap();
    // The new key reads A's records, never B's.
    let logs = all_logs(&server, new_secret).await;
    assert_eq!(ids(&logs), a.log_ids);
    let b_list = expect(
        server
            .get("/v1/api-keys", &b.admin.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(b_list["data"].as_array().unwrap()), b.key_ids());

    // The operator's per-org routes are per org too.
    for (me, other) in [(&a, &b), (&b, &a)] {
        let list = expect(
            server
                .operator(Method::GET, &format!("/admin/v1/orgs/{}/api-keys", me.org))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let listed = ids(list["data"].as_array().unwrap());
        assert!(me.key_ids().is_subset(&listed));
        assert!(listed.is_disjoint(&other.key_ids()), "{list}");
        other.assert_absent(&list.to_string(), "operator list");
        for id in other.key_ids() {
            for method in [Method::GET, Method::DELETE] {
                let resp = server
                    .operator(
                        method.clone(),
                        &format!("/admin/v1/orgs/{}/api-keys/{id}", me.org),
                    )
                    .send()
                    .await
                    .unwrap();
                expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
            }
        }
    }
    for k in [
        &a.admin, &a.reader, &a.writer, &b.admin, &b.reader, &b.writer,
    ] {
        assert!(key_works(&server, &k.secret).await, "{} was revoked", k.id);
    }
    // A's mutations were audited in A only.
    let audit_b = audit_entries(&server, b.org).await;
    assert_eq!(audit_b.len(), audit_b_before.len(), "{audit_b:?}");
    let audit_a = audit_entries(&server, a.org).await;
    assert!(
        audit_a
            .iter()
            .any(|e| e.resource_id.as_deref() == created["id"].as_str()),
        "{audit_a:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_answers_one_org_with_anothers_data() {
    let (server, a, b) = two_orgs(Options::default()).await;
    let b_log = b.log_ids.iter().find(|i| *i != SHARED_ID).unwrap().clone();
    let doomed_by_operator = server.create_key(a.org, &["read"]).await;
    let doomed_by_admin = server.create_key(a.org, &["read"]).await;
    // Every route of the router (crates/api/src/lib.rs) and the fallbacks, as A would call
    // them: A's key on org routes, the operator on A's operator routes.
    let key = |path: &str, method: Method| {
        server
            .request(method, path)
            .header("x-api-key", &a.admin.secret)
    };
    let op = |path: &str, method: Method| server.operator(method, path);
    let calls: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        ("healthz", key("/healthz", Method::GET), StatusCode::OK),
        ("readyz", key("/readyz", Method::GET), StatusCode::OK),
        ("metrics", key("/metrics", Method::GET), StatusCode::OK),
        ("openapi", key("/openapi.json", Method::GET), StatusCode::OK),
        ("logs", key("/v1/logs", Method::GET), StatusCode::OK),
        (
            "logs by B's request id",
            key("/v1/logs?request_id=req_bravo_1", Method::GET),
            StatusCode::OK,
        ),
        (
            "timeline of the request id both orgs used",
            key("/v1/requests/req_shared/timeline", Method::GET),
            StatusCode::OK,
        ),
        (
            "ingest",
            key("/v1/ingest/requests", Method::POST)
                .json(&json!([{"method": "GET", "path": "/alpha/sweep", "status_code": 200}])),
            StatusCode::ACCEPTED,
        ),
        (
            "audit log",
            key("/audit-log?limit=200", Method::GET),
            StatusCode::OK,
        ),
        (
            "v1 audit log",
            key("/v1/audit-log?limit=200", Method::GET),
            StatusCode::OK,
        ),
        (
            "audit log by B's key id",
            key(
                &format!("/v1/audit-log?resource_id={}", b.admin.id),
                Method::GET,
            ),
            StatusCode::OK,
        ),
        (
            "audit log by B's resource",
            key("/v1/audit-log?resource_id=dst_bravo", Method::GET),
            StatusCode::OK,
        ),
        (
            "audit verify",
            key("/v1/audit-log/verify", Method::GET),
            StatusCode::OK,
        ),
        (
            "audit ingest",
            key("/v1/ingest/audit-events", Method::POST)
                .json(&json!([{"action": "update", "resource_type": "destination"}])),
            StatusCode::ACCEPTED,
        ),
        (
            "keys dialect",
            key("/v1/api-keys/requests?limit=100", Method::GET),
            StatusCode::OK,
        ),
        (
            "keys dialect by B's key id",
            key(
                &format!("/v1/api-keys/requests?apiKeyId={}", b.admin.id),
                Method::GET,
            ),
            StatusCode::OK,
        ),
        (
            "zoo org calls",
            key("/org/api-calls?limit=1000", Method::GET),
            StatusCode::OK,
        ),
        (
            "zoo B's call",
            key(&format!("/org/api-calls/{b_log}"), Method::GET),
            StatusCode::NOT_FOUND,
        ),
        (
            "zoo shared id",
            key(&format!("/org/api-calls/{SHARED_ID}"), Method::GET),
            StatusCode::OK,
        ),
        (
            "zoo user calls",
            key("/user/api-calls?limit=1000", Method::GET),
            StatusCode::OK,
        ),
        (
            "zoo B's call as user",
            key(&format!("/user/api-calls/{b_log}"), Method::GET),
            StatusCode::NOT_FOUND,
        ),
        (
            "zoo B's user",
            key("/users/usr_bravo/api-calls", Method::GET),
            StatusCode::OK,
        ),
        (
            "zoo B's email",
            key("/users/bravo@example.com/api-calls", Method::GET),
            StatusCode::OK,
        ),
        ("keys", key("/v1/api-keys", Method::GET), StatusCode::OK),
        (
            "key",
            key(&format!("/v1/api-keys/{}", a.reader.id), Method::GET),
            StatusCode::OK,
        ),
        (
            "B's key",
            key(&format!("/v1/api-keys/{}", b.reader.id), Method::GET),
            StatusCode::NOT_FOUND,
        ),
        (
            "create key",
            key("/v1/api-keys", Method::POST).json(&json!({
                "name": "sweep", "scopes": ["read"], "principal_type": "service_account",
                "principal_id": "sa_alpha"})),
            StatusCode::CREATED,
        ),
        (
            "operator org",
            op(&format!("/admin/v1/orgs/{}", a.org), Method::GET),
            StatusCode::OK,
        ),
        (
            "operator keys",
            op(&format!("/admin/v1/orgs/{}/api-keys", a.org), Method::GET),
            StatusCode::OK,
        ),
        (
            "operator key",
            op(
                &format!("/admin/v1/orgs/{}/api-keys/{}", a.org, a.writer.id),
                Method::GET,
            ),
            StatusCode::OK,
        ),
        (
            "revoke key",
            key(
                &format!("/v1/api-keys/{}", doomed_by_admin.id),
                Method::DELETE,
            ),
            StatusCode::OK,
        ),
        (
            "operator create org",
            op("/admin/v1/orgs", Method::POST).json(&json!({"id": "charlie-3", "name": "C"})),
            StatusCode::CREATED,
        ),
        (
            "operator create key",
            op(&format!("/admin/v1/orgs/{}/api-keys", a.org), Method::POST).json(&json!({
                "name": "op", "scopes": ["write"], "principal_type": "user",
                "principal_id": "usr_alpha"})),
            StatusCode::CREATED,
        ),
        (
            "operator revoke key",
            op(
                &format!(
                    "/admin/v1/orgs/{}/api-keys/{}",
                    a.org, doomed_by_operator.id
                ),
                Method::DELETE,
            ),
            StatusCode::OK,
        ),
        (
            "unknown route with B's log id",
            key(&format!("/v1/logs/{b_log}"), Method::GET),
            StatusCode::NOT_FOUND,
        ),
        (
            // The actions dialect's org ids are numeric: B's is refused by pattern alone.
            "action records with B's org",
            key(&format!("/v1/orgs/{}/actions/records", b.org), Method::GET),
            StatusCode::BAD_REQUEST,
        ),
        (
            "action records with another numeric org",
            key("/v1/orgs/424242/actions/records", Method::GET),
            StatusCode::NOT_FOUND,
        ),
        (
            "trigger an action in B's org",
            key(&format!("/v1/orgs/{}/actions", b.org), Method::POST)
                .json(&json!({"action": "x", "input": {}})),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            key("/v1/logs", Method::PUT),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (what, rb, want) in calls {
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let path = resp.url().path().to_owned();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        // A 404 may echo the path A itself sent; apart from that, nothing of B.
        b.assert_absent(&text.replace(&path, "<path>"), what);
    }
    // The operator's org list is the one place both orgs appear, each once, with no keys or
    // records of either.
    let orgs = expect(
        server
            .operator(Method::GET, "/admin/v1/orgs")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let listed: Vec<&str> = orgs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [a.org, b.org, "charlie-3"]);
    for t in [&a, &b] {
        for k in t.key_ids() {
            assert!(!orgs.to_string().contains(&k));
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_logs_stay_in_the_callers_org() {
    let (server, a, b) = two_orgs(Options {
        self_log: true,
        ..Options::default()
    })
    .await;
    // A few calls by A, successful and failing (including one about B's key), then by the
    // operator, and last one by B.
    let calls = [
        ("alpha-call-1", "/v1/logs", &a.reader),
        ("alpha-call-2", "/v1/api-keys", &a.reader), // 403
        ("alpha-call-3", "/v1/api-keys", &a.admin),
    ];
    for (rid, path, k) in calls {
        let (status, _, _) = send(server.get(path, &k.secret).header("x-request-id", rid)).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, _) = send(
        server
            .get(&format!("/v1/api-keys/{}", b.admin.id), &a.admin.secret)
            .header("x-request-id", "alpha-call-4"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = send(
        server
            .operator(Method::GET, &format!("/admin/v1/orgs/{}/api-keys", b.org))
            .header("x-request-id", "operator-call-1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        server
            .get("/v1/logs", &b.reader.secret)
            .header("x-request-id", "bravo-call-last"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The recorder writes in order: once B's last call is listed, everything before it is
    // stored too. Poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = all_logs_where(&server, &b.reader.secret, "request_id=bravo-call-last").await;
        if !got.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "B's call was never self-logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_logs = all_logs(&server, &a.reader.secret).await;
    let b_logs = all_logs(&server, &b.reader.secret).await;
    let rids = |logs: &[Value]| -> BTreeSet<String> {
        logs.iter()
            .filter_map(|l| l["request_id"].as_str().map(str::to_owned))
            .collect()
    };
    let (a_rids, b_rids) = (rids(&a_logs), rids(&b_logs));
    for rid in [
        "alpha-call-1",
        "alpha-call-2",
        "alpha-call-3",
        "alpha-call-4",
    ] {
        assert!(a_rids.contains(rid), "{rid} missing from A: {a_rids:?}");
        assert!(!b_rids.contains(rid), "{rid} leaked into B");
    }
    assert!(b_rids.contains("bravo-call-last"));
    assert!(!a_rids.contains("bravo-call-last"));
    assert!(!a_rids.contains("operator-call-1") && !b_rids.contains("operator-call-1"));
    // B's self-logs never name A's keys, paths or ids (and vice versa).
    a.assert_absent(&serde_json::to_string(&b_logs).unwrap(), "B's self-logs");
    let a_text = serde_json::to_string(&a_logs).unwrap();
    for m in &b.markers {
        // A's call about B's key names that key's id in its path, which A chose itself; every
        // other marker of B must be absent.
        if *m == b.admin.id {
            continue;
        }
        assert!(!a_text.contains(m.as_str()), "A's self-logs contain {m}");
    }
    // And the stored self-logs of A carry A's key, never B's.
    let t = http_support::tenant(&server, a.org).await;
    let page = server
        .store
        .list_request_logs(
            &t,
            &apitrail_model::LogFilter {
                request_id: Some("alpha-call-4".into()),
                ..Default::default()
            },
            apitrail_model::Sort::NEWEST_FIRST,
            apitrail_model::PageRequest::first(10),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(
        page.items[0].api_key_id.as_deref(),
        Some(a.admin.id.as_str())
    );
    assert_eq!(page.items[0].user_id.as_deref(), Some("usr_alpha"));
    server.stop().await;
}

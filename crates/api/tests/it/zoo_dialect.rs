//! The zoo dialect over HTTP (seed 000, SPEC §3.1): `/org/api-calls` and its siblings against
//! the real router on a random port — item and envelope shape (snapshots), every parameter
//! with its default and bounds, page walks against a reference model, errors in the zoo
//! envelope, single-call fetches within their scope, and self-logged calls with their
//! `X-Api-Call-Id`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use apitrail_testkit::{Options, TestKey, TestServer, assert_snapshot, expect, header};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// The 23 fields of `ApiCallWithPrice` (SPEC §3.1).
const ITEM_KEYS: [&str; 23] = [
    "completed_at",
    "created_at",
    "duration",
    "email",
    "endpoint",
    "id",
    "ip_address",
    "method",
    "minutes",
    "org_id",
    "origin",
    "price",
    "request_body",
    "request_query_params",
    "response_body",
    "seconds",
    "started_at",
    "status_code",
    "stripe_invoice_item_id",
    "token",
    "updated_at",
    "user_agent",
    "user_id",
];

const NIL: &str = "00000000-0000-0000-0000-000000000000";
/// The org's id: a UUID, so items carry it as `org_id`.
const ORG: &str = "6ac2beef-85d6-4726-bc14-99a9c28ad7e6";
/// Users of the generated records: two with UUID ids, one without.
const USER_1: &str = "d4507b0f-fa50-4abc-8919-ae2933f11ca1";
const USER_2: &str = "0b7e3c1a-7d2f-4c55-9a51-2f4c1e9d8b01";
const USER_3: &str = "u_plain";
const USERS: [&str; 3] = [USER_1, USER_2, USER_3];

fn keys_of(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn email_of(user: &str) -> String {
    format!("{}@example.com", &user[..6])
}

async fn get(server: &TestServer, secret: &str, path: &str) -> Response {
    server.get(path, secret).send().await.unwrap()
}

async fn ok(server: &TestServer, secret: &str, path: &str) -> Value {
    expect(get(server, secret, path).await, StatusCode::OK).await
}

/// Asserts the zoo error envelope `{error_code, message, request_id}` with the request id of
/// the header; returns the body.
async fn expect_zoo_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let header_id = header(&resp, "x-request-id");
    let body = expect(resp, status).await;
    assert_eq!(
        keys_of(&body),
        BTreeSet::from(["error_code", "message", "request_id"]),
        "{body}"
    );
    assert_eq!(body["error_code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    assert_eq!(body["request_id"].as_str(), header_id.as_deref(), "{body}");
    body
}

/// A key of `org` acting for `user` with `scopes`.
async fn user_key(server: &TestServer, org: &str, user: &str, scopes: &[&str]) -> TestKey {
    server
        .create_key_with(
            org,
            json!({
                "name": format!("{user} {}", scopes.join("+")),
                "scopes": scopes,
                "principal_type": "user",
                "principal_id": user,
                "user_id": user,
                "email": email_of(user),
            }),
        )
        .await
}

/// The UUID of record `i`.
fn id(i: usize) -> String {
    format!("0190f5a2-0000-7000-8000-{i:012x}")
}

/// A generated record of the reference model.
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    created_ms: i64,
    user: &'static str,
}

/// `n` records whose creation times repeat (every three records share one, in scrambled
/// order), so that the id tie-break is exercised; their users rotate over [`USERS`].
fn model(n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            id: id(i),
            created_ms: 1_725_000_000_000 + ((i * 7919) % n / 3) as i64 * 1000,
            user: USERS[i % 3],
        })
        .collect()
}

fn ts(ms: i64) -> String {
    let secs = ms / 1000;
    let (d, s) = (secs / 86_400, secs % 86_400);
    // 2024-08-30 is day 19965 since the epoch; the model's times all fall on that day.
    assert_eq!(d, 19_965, "the model's times moved off their day");
    format!(
        "2024-08-30T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        ms % 1000
    )
}

async fn ingest_model(server: &TestServer, secret: &str, recs: &[Rec]) {
    for chunk in recs.chunks(500) {
        let records: Vec<Value> = chunk
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "method": "GET",
                    "path": format!("/things/{}", r.id),
                    "route_pattern": "/things/{id}",
                    "status_code": 200,
                    "created_at": ts(r.created_ms),
                    "user_id": r.user,
                    "email": email_of(r.user),
                    "api_key_id": r.id,
                })
            })
            .collect();
        server
            .ingest(secret, &Value::Array(records), StatusCode::ACCEPTED)
            .await;
    }
}

/// The model's ids matching `keep`, in the order of `ascending`.
fn expected(recs: &[Rec], keep: impl Fn(&Rec) -> bool, ascending: bool) -> Vec<String> {
    let mut v: Vec<&Rec> = recs.iter().filter(|r| keep(r)).collect();
    v.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    if !ascending {
        v.reverse();
    }
    v.into_iter().map(|r| r.id.clone()).collect()
}

/// Every page of `path` (which has no query yet) with `query`, following `next_page` by
/// appending it to the URL as it stands, as the official clients do. Checks every page's
/// envelope and token on the way.
async fn walk(server: &TestServer, secret: &str, path: &str, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut tokens = BTreeSet::new();
    let mut url = format!("{path}?{query}");
    for n in 0..10_000 {
        let page = ok(server, secret, &url).await;
        assert!(
            n == 0 || !page["items"].as_array().unwrap().is_empty(),
            "{url}: the previous page had a next_page, but this one is empty"
        );
        assert_eq!(
            keys_of(&page),
            BTreeSet::from(["items", "next_page"]),
            "{page}"
        );
        for item in page["items"].as_array().unwrap() {
            ids.push(item["id"].as_str().unwrap().to_owned());
        }
        match &page["next_page"] {
            Value::Null => return ids,
            Value::String(t) => {
                assert!(
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "page token is not URL-safe as it stands: {t}"
                );
                assert!(tokens.insert(t.clone()), "page token repeated: {t}");
                url = format!("{path}?{query}&page_token={t}");
            }
            other => panic!("next_page is neither a string nor null: {other}"),
        }
    }
    panic!("{path}?{query}: the walk did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_and_envelopes_have_exactly_the_platforms_shape() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let key = user_key(&server, ORG, USER_1, &["read", "write", "admin"]).await;
    let full = json!({
        "id": "b6376ab2-6a53-42e1-b434-918c7cd85ae3",
        "request_id": "req_full",
        "method": "CONNECT",
        "path": "/things/42",
        "query": "a=1&b=two",
        "route_pattern": "/things/{id}",
        "status_code": 201,
        "duration_ms": 13,
        "started_at": "2025-09-03T03:22:19.434Z",
        "completed_at": "2025-09-03T03:22:19.447+00:00",
        "created_at": "2025-09-03T05:22:19.447+02:00",
        "client_ip": "192.0.2.209",
        "user_agent": "GMtCSFgldyTFYqyTpIqjc2NI",
        "origin": "https://app.example.com",
        "user_id": USER_1,
        "email": "DF1b5Re@X.com",
        "api_key_id": "e43fb3d3-8ce8-4711-898f-baeea2d27242",
        "request_body": "{\"a\":1}",
        "response_body": "{\"ok\":true}",
        "price": "016.74",
        "minutes": 17,
        "seconds": 1020,
        "stripe_invoice_item_id": "ii_BhfPfeiQEcrUSxaKY0KDU3XrO",
    });
    // Only the required fields; a method outside the platform's list; a non-UUID user.
    let minimal = json!({
        "id": "0190f5a2-0000-7000-8000-000000000001",
        "method": "PROPFIND",
        "path": "/dav/x",
        "status_code": 207,
        "created_at": "2025-09-03T03:22:18Z",
        "user_id": "u_plain",
    });
    server
        .ingest(&key.secret, &json!([full, minimal]), StatusCode::ACCEPTED)
        .await;

    let resp = get(&server, &key.secret, "/org/api-calls").await;
    // Every authenticated call has an id, even with self-logging off (as here).
    let call_id = header(&resp, "x-api-call-id").expect("X-Api-Call-Id");
    assert!(uuid::Uuid::parse_str(&call_id).is_ok(), "{call_id}");
    let page = expect(resp, StatusCode::OK).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    for item in items {
        assert_eq!(keys_of(item), BTreeSet::from(ITEM_KEYS), "{item}");
    }
    assert_eq!(page["next_page"], Value::Null);
    // Every field is fixed by the ingested records: nothing to redact.
    assert_snapshot(CRATE, "zoo_org_api_calls_page", &page, &[]);
    let (f, m) = (&items[0], &items[1]);
    assert_eq!(f["price"], json!(16.74), "a JSON number: {f}");
    assert_eq!(f["org_id"], ORG);
    assert_eq!(f["created_at"], "2025-09-03T03:22:19.447Z");
    assert_eq!(f["updated_at"], f["created_at"]);
    assert_eq!(f["endpoint"], "/things/{id}");
    assert_eq!(f["request_query_params"], "a=1&b=two");
    assert_eq!(m["method"], "EXTENSION");
    assert_eq!(m["endpoint"], "/dav/x", "the path when there is no route");
    assert_eq!(
        (&m["token"], &m["user_id"], &m["user_agent"]),
        (&json!(NIL), &json!(NIL), &json!("")),
        "required fields never null: {m}"
    );

    let one = ok(
        &server,
        &key.secret,
        "/org/api-calls/b6376ab2-6a53-42e1-b434-918c7cd85ae3",
    )
    .await;
    assert_eq!(&one, f, "the single call is the listed item");

    let err = expect_zoo_error(
        get(&server, &key.secret, "/org/api-calls?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_snapshot(CRATE, "zoo_error_limit_0", &err, &["request_id"]);

    // An org whose id is not a UUID: `org_id` is null (the official clients parse it).
    let plain = server.org_with_key("plain-org").await;
    server
        .ingest(&plain.secret, &json!([minimal]), StatusCode::ACCEPTED)
        .await;
    let page = ok(&server, &plain.secret, "/org/api-calls").await;
    assert_eq!(page["items"][0]["org_id"], Value::Null, "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_has_its_default_and_bounds() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let key = user_key(&server, ORG, USER_1, &["read", "write", "admin"]).await;
    let recs = model(1001);
    ingest_model(&server, &key.secret, &recs).await;
    let newest = expected(&recs, |_| true, false);

    for route in ["/org/api-calls", "/users/me/api-calls"] {
        let route_recs: Vec<Rec> = if route == "/org/api-calls" {
            recs.clone()
        } else {
            recs.iter().filter(|r| r.user == USER_1).cloned().collect()
        };
        let newest = expected(&route_recs, |_| true, false);
        // Default: 100, newest first.
        let page = ok(&server, &key.secret, route).await;
        let ids: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, newest[..100], "{route}");
        assert!(page["next_page"].is_string());
        // Empty values count as absent.
        let page2 = ok(&server, &key.secret, &format!("{route}?limit=&sort_by=")).await;
        assert_eq!(page2["items"], page["items"]);
        // Explicit descending is the default order.
        let page3 = ok(
            &server,
            &key.secret,
            &format!("{route}?sort_by=created_at_descending"),
        )
        .await;
        assert_eq!(page3["items"], page["items"]);
    }
    // A page that holds exactly the rest has no next_page.
    let mine = walk(&server, &key.secret, "/users/me/api-calls", "limit=334").await;
    assert_eq!(mine.len(), 334, "1001 records, every third one is user 1's");
    let page = ok(&server, &key.secret, "/users/me/api-calls?limit=334").await;
    assert_eq!(page["next_page"], Value::Null, "{}", page["next_page"]);
    // The bounds: 1 and 1000 are accepted.
    let page = ok(&server, &key.secret, "/org/api-calls?limit=1").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], newest[0]);
    let page = ok(&server, &key.secret, "/org/api-calls?limit=1000").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1000);
    assert!(page["next_page"].is_string(), "1001 records, 1000 listed");
    let page = ok(
        &server,
        &key.secret,
        "/org/api-calls?limit=1000&sort_by=created_at_ascending",
    )
    .await;
    assert_eq!(
        page["items"][0]["id"],
        expected(&recs, |_| true, true)[0],
        "ascending starts at the oldest"
    );

    // Out of range or malformed: 400 in the zoo envelope, naming the parameter.
    for route in [
        "/org/api-calls",
        "/user/api-calls",
        "/users/me/api-calls",
        &format!("/users/{USER_2}/api-calls"),
    ] {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=1.5", "limit"),
            ("limit=ten", "limit"),
            ("limit=1&limit=2", "limit"),
            ("sort_by=created_at", "sort_by"),
            ("sort_by=CREATED_AT_ASCENDING", "sort_by"),
            ("page_token=not-a-token", "page_token"),
            ("page_token=%00%01", "page_token"),
        ] {
            let body = expect_zoo_error(
                get(&server, &key.secret, &format!("{route}?{q}")).await,
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
            )
            .await;
            assert!(
                body["message"].as_str().unwrap().starts_with(param),
                "{route}?{q}: {body}"
            );
        }
    }
    // A page token is bound to the order it was issued for, and to its list kind.
    let asc = ok(
        &server,
        &key.secret,
        "/org/api-calls?limit=5&sort_by=created_at_ascending",
    )
    .await;
    let token = asc["next_page"].as_str().unwrap();
    // Sent alone (Dropshot's convention), the token continues in its own order.
    let next = ok(
        &server,
        &key.secret,
        &format!("/org/api-calls?limit=5&page_token={token}"),
    )
    .await;
    let ascending = expected(&recs, |_| true, true);
    let next_ids: Vec<&str> = next["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(next_ids, ascending[5..10]);
    // Sent with another order, it is refused.
    let body = expect_zoo_error(
        get(
            &server,
            &key.secret,
            &format!("/org/api-calls?page_token={token}&sort_by=created_at_descending"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("created_at asc"),
        "{body}"
    );
    let logs = server.logs(&key.secret, "limit=5").await;
    let cursor = logs["pagination"]["next_cursor"].as_str().unwrap();
    expect_zoo_error(
        get(
            &server,
            &key.secret,
            &format!("/org/api-calls?page_token={cursor}"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    // A damaged token is refused, not misread.
    let mut damaged = token.to_owned();
    let last = damaged.pop().unwrap();
    damaged.push(if last == 'A' { 'B' } else { 'A' });
    expect_zoo_error(
        get(
            &server,
            &key.secret,
            &format!("/org/api-calls?page_token={damaged}&sort_by=created_at_ascending"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_walks_match_the_reference_model() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let admin = user_key(&server, ORG, USER_1, &["read", "write", "admin"]).await;
    // A reader acting for user 2, and a key whose user is its principal (no user id).
    let reader = user_key(&server, ORG, USER_2, &["read"]).await;
    let principal_only = server
        .create_key_with(
            ORG,
            json!({"name": "sa", "scopes": ["read"], "principal_type": "service_account",
                   "principal_id": USER_3}),
        )
        .await;
    let recs = model(230);
    ingest_model(&server, &admin.secret, &recs).await;
    // Another org's records never show up.
    let other = server.org_with_key("other-org").await;
    ingest_model(&server, &other.secret, &model(40)).await;

    let email_2 = email_of(USER_2);
    let routes: Vec<(String, &TestKey, Option<&str>)> = vec![
        ("/org/api-calls".into(), &admin, None),
        ("/user/api-calls".into(), &admin, Some(USER_1)),
        ("/user/api-calls".into(), &reader, Some(USER_2)),
        ("/user/api-calls".into(), &principal_only, Some(USER_3)),
        ("/users/me/api-calls".into(), &admin, Some(USER_1)),
        (format!("/users/{USER_2}/api-calls"), &admin, Some(USER_2)),
        (format!("/users/{USER_3}/api-calls"), &admin, Some(USER_3)),
        (format!("/users/{email_2}/api-calls"), &admin, Some(USER_2)),
        ("/users/nobody/api-calls".into(), &admin, Some("nobody")),
    ];
    for (route, key, user) in &routes {
        for (sort, ascending) in [
            ("", false),
            ("sort_by=created_at_descending", false),
            ("sort_by=created_at_ascending", true),
        ] {
            let want = expected(&recs, |r| user.is_none_or(|u| r.user == u), ascending);
            let limits: &[&str] = if route == "/org/api-calls" {
                &[
                    "limit=1",
                    "limit=7",
                    "limit=100",
                    "",
                    "limit=230",
                    "limit=1000",
                ]
            } else {
                &["limit=9", "", "limit=1000"]
            };
            for limit in limits {
                let query = [*limit, sort]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join("&");
                let got = walk(&server, &key.secret, route, &query).await;
                assert_eq!(got, want, "{route}?{query}");
            }
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_sees_every_record_once_while_new_ones_arrive() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let key = user_key(&server, ORG, USER_1, &["read", "write", "admin"]).await;
    let recs = model(300);
    ingest_model(&server, &key.secret, &recs).await;
    for (sort, ascending) in [
        ("sort_by=created_at_descending", false),
        ("sort_by=created_at_ascending", true),
    ] {
        let want = expected(&recs, |_| true, ascending);
        let mut got = Vec::new();
        let mut query = format!("limit=25&{sort}");
        let mut round = 0;
        loop {
            let page = ok(&server, &key.secret, &format!("/org/api-calls?{query}")).await;
            for item in page["items"].as_array().unwrap() {
                got.push(item["id"].as_str().unwrap().to_owned());
            }
            // Between pages, new calls arrive at both ends of time (ids unseen by the model).
            round += 1;
            let now = apitrail_model::Timestamp::now().to_rfc3339();
            let fresh: Vec<Value> = [("2020-01-01T00:00:00Z", 0), (now.as_str(), 1)]
                .iter()
                .map(|(at, n)| {
                    json!({"method": "GET", "path": format!("/fresh/{round}/{n}"),
                           "status_code": 200, "created_at": at})
                })
                .collect();
            server
                .ingest(&key.secret, &Value::Array(fresh), StatusCode::ACCEPTED)
                .await;
            match page["next_page"].as_str() {
                Some(t) => query = format!("limit=25&{sort}&page_token={t}"),
                None => break,
            }
        }
        let from_model: Vec<String> = got
            .iter()
            .filter(|id| id.starts_with("0190f5a2-0000-7000-8000-"))
            .cloned()
            .collect();
        assert_eq!(from_model, want, "{sort}");
        let unique: BTreeSet<&String> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{sort}: a call was listed twice");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_calls_are_found_only_within_their_scope() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let admin = user_key(&server, ORG, USER_1, &["read", "write", "admin"]).await;
    let reader_2 = user_key(&server, ORG, USER_2, &["read"]).await;
    let recs = model(9);
    ingest_model(&server, &admin.secret, &recs).await;
    let other = server.org_with_key("other-org").await;
    let other_id = "0190f5a2-0000-7000-9000-00000000beef";
    server
        .ingest(
            &other.secret,
            &json!([{"id": other_id, "method": "GET", "path": "/x", "status_code": 200}]),
            StatusCode::ACCEPTED,
        )
        .await;

    for r in &recs {
        let item = ok(&server, &admin.secret, &format!("/org/api-calls/{}", r.id)).await;
        assert_eq!(item["id"], r.id.as_str());
        assert_eq!(keys_of(&item), BTreeSet::from(ITEM_KEYS));
        // `/user/api-calls/{id}` finds only the caller's user's calls.
        for (key, user) in [(&admin, USER_1), (&reader_2, USER_2)] {
            let resp = get(&server, &key.secret, &format!("/user/api-calls/{}", r.id)).await;
            if r.user == user {
                let own = expect(resp, StatusCode::OK).await;
                assert_eq!(own, item);
            } else {
                expect_zoo_error(resp, StatusCode::NOT_FOUND, "not_found").await;
            }
        }
    }
    for path in [
        format!("/org/api-calls/{other_id}"),
        format!("/user/api-calls/{other_id}"),
        format!("/org/api-calls/{NIL}"),
    ] {
        let body = expect_zoo_error(
            get(&server, &admin.secret, &path).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert!(!body.to_string().contains("other-org"), "{body}");
    }
    // The other org sees its own call, and none of ours.
    ok(
        &server,
        &other.secret,
        &format!("/org/api-calls/{other_id}"),
    )
    .await;
    expect_zoo_error(
        get(
            &server,
            &other.secret,
            &format!("/org/api-calls/{}", recs[0].id),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for bad in ["not-a-uuid", "1234", "b6376ab2-6a53-42e1-b434"] {
        for route in ["/org/api-calls", "/user/api-calls"] {
            let body = expect_zoo_error(
                get(&server, &admin.secret, &format!("{route}/{bad}")).await,
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
            )
            .await;
            assert!(
                body["message"].as_str().unwrap().starts_with("id"),
                "{body}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_use_the_zoo_envelope() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let reader = user_key(&server, ORG, USER_1, &["read"]).await;
    let writer = user_key(&server, ORG, USER_1, &["write"]).await;
    let routes = [
        "/org/api-calls".to_owned(),
        format!("/org/api-calls/{NIL}"),
        "/user/api-calls".to_owned(),
        format!("/user/api-calls/{NIL}"),
        "/users/me/api-calls".to_owned(),
    ];
    for route in &routes {
        let resp = server
            .request(reqwest::Method::GET, route)
            .send()
            .await
            .unwrap();
        let body = expect_zoo_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
        assert_snapshot(CRATE, "zoo_error_unauthorized", &body, &["request_id"]);
        expect_zoo_error(
            get(
                &server,
                "atk_0000000000000000000000000000000000000000",
                route,
            )
            .await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        expect_zoo_error(
            get(&server, &writer.secret, route).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    // Listing another user's calls needs the admin scope (SPEC §11), `me` included.
    for user in ["me", USER_2, "someone@example.com"] {
        let body = expect_zoo_error(
            get(&server, &reader.secret, &format!("/users/{user}/api-calls")).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        assert!(
            body["message"].as_str().unwrap().contains("admin"),
            "{body}"
        );
    }
    // An unsupported method on a zoo route answers in the zoo envelope.
    for route in &routes {
        let resp = server
            .request(reqwest::Method::POST, route)
            .header("x-api-key", &reader.secret)
            .send()
            .await
            .unwrap();
        expect_zoo_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
    // An incoming request id is echoed in the header and the body.
    let resp = server
        .get("/org/api-calls?limit=0", &reader.secret)
        .header("x-request-id", "trace.abc-123")
        .send()
        .await
        .unwrap();
    let body = expect_zoo_error(resp, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(body["request_id"], "trace.abc-123");
    server.stop().await;
}

/// The self-logged call `id` through `/org/api-calls/{id}`, once it is stored (within 5 s).
async fn listed_call(server: &TestServer, secret: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = get(server, secret, &format!("/org/api-calls/{id}")).await;
        if resp.status() == StatusCode::OK {
            return expect(resp, StatusCode::OK).await;
        }
        assert!(Instant::now() < deadline, "call {id} was never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_logged_calls_carry_their_call_id_and_are_listed() {
    let server = TestServer::start_with(Options {
        self_log: true,
        ..Options::default()
    })
    .await;
    server.create_org(ORG).await;
    let key = user_key(&server, ORG, USER_1, &["read", "admin"]).await;
    let resp = server
        .get("/org/api-calls?limit=3", &key.secret)
        .header("user-agent", "kittycad.py/test")
        .send()
        .await
        .unwrap();
    let call_id = header(&resp, "x-api-call-id").expect("a successful call carries X-Api-Call-Id");
    expect(resp, StatusCode::OK).await;
    // Listed within a second (SPEC §11), under its own id.
    let item = listed_call(&server, &key.secret, &call_id).await;
    assert_eq!(item["id"], call_id.as_str());
    assert_eq!(item["endpoint"], "/org/api-calls");
    assert_eq!(item["method"], "GET");
    assert_eq!(item["status_code"], 200);
    assert_eq!(item["token"], key.id.as_str());
    assert_eq!(item["user_id"], USER_1);
    assert_eq!(item["email"], email_of(USER_1));
    assert_eq!(item["org_id"], ORG);
    assert_eq!(item["ip_address"], "127.0.0.1");
    assert_eq!(item["user_agent"], "kittycad.py/test");
    assert_eq!(item["request_query_params"], "limit=3");
    assert_snapshot(
        CRATE,
        "zoo_self_logged_call",
        &item,
        &[
            "id",
            "token",
            "created_at",
            "updated_at",
            "started_at",
            "completed_at",
            "duration",
        ],
    );
    // A service account's calls have no user: the nil UUID here, null in the keys dialect.
    let robot = server
        .create_key_with(
            ORG,
            json!({"name": "robot", "scopes": ["read"], "principal_type": "service_account",
                   "principal_id": "sa_robot", "service_account_id": "sa_robot"}),
        )
        .await;
    let resp = get(&server, &robot.secret, "/org/api-calls?limit=1").await;
    let robot_call = header(&resp, "x-api-call-id").unwrap();
    expect(resp, StatusCode::OK).await;
    let robot_item = listed_call(&server, &key.secret, &robot_call).await;
    assert_eq!(robot_item["user_id"], NIL, "{robot_item}");
    assert_eq!(robot_item["token"], robot.id.as_str());
    let keys_page = ok(
        &server,
        &key.secret,
        &format!("/v1/api-keys/requests?apiKeyId={}", robot.id),
    )
    .await;
    let logged = &keys_page["data"]["items"][0];
    assert_eq!(logged["id"], robot_call.as_str(), "{keys_page}");
    assert_eq!(logged["userId"], Value::Null, "{logged}");
    assert_eq!(logged["principalType"], "service_account");
    assert_eq!(logged["serviceAccountId"], "sa_robot");
    // The caller's own list has it, as do `/users/me` and the user's id.
    for route in [
        "/user/api-calls".to_owned(),
        "/users/me/api-calls".to_owned(),
        format!("/users/{USER_1}/api-calls"),
    ] {
        let ids = walk(&server, &key.secret, &route, "limit=1000").await;
        assert!(ids.contains(&call_id), "{route}: {ids:?}");
    }
    server.stop().await;
}

/// A count stored before ingest bounded `minutes` and `seconds` (issue 13) is printed as
/// null, never as a value the official clients' 32-bit integers cannot hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_beyond_32_bits_stored_earlier_print_as_null() {
    use apitrail_model::{OrgId, RequestLog, Timestamp};
    use apitrail_store::LogBatch;
    let server = TestServer::start().await;
    let key = server.org_with_key("wide-counts").await;
    let tenant = server
        .store
        .tenant(&OrgId::parse("wide-counts").unwrap())
        .await
        .unwrap()
        .unwrap();
    let log = RequestLog {
        id: apitrail_model::new_record_id(),
        method: "GET".into(),
        path: "/old".into(),
        status_code: 200,
        created_at: Timestamp::now(),
        minutes: Some(3_000_000_000),
        seconds: Some(2_147_483_647),
        ..RequestLog::default()
    };
    server
        .store
        .insert_request_logs(vec![LogBatch::minted(tenant, vec![log.clone()])])
        .await
        .unwrap();
    let page = ok(&server, &key.secret, "/org/api-calls").await;
    let item = &page["items"][0];
    assert_eq!(item["id"], log.id.to_string());
    assert_eq!(item["minutes"], Value::Null, "{item}");
    assert_eq!(item["seconds"], 2_147_483_647, "{item}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_serve_the_python_clients_get_api_call_and_list_api_calls() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let admin = user_key(&server, ORG, USER_1, &["read", "write", "admin"]).await;
    let admin_only = user_key(&server, ORG, USER_2, &["admin"]).await;
    let reader_2 = user_key(&server, ORG, USER_2, &["read"]).await;
    let writer = user_key(&server, ORG, USER_2, &["write"]).await;
    let recs = model(9);
    ingest_model(&server, &admin.secret, &recs).await;
    for r in &recs {
        let path = format!("/api-calls/{}", r.id);
        let item = ok(&server, &admin.secret, &format!("/org/api-calls/{}", r.id)).await;
        // An admin key finds any call of its org, even without read.
        assert_eq!(ok(&server, &admin.secret, &path).await, item);
        assert_eq!(ok(&server, &admin_only.secret, &path).await, item);
        // A read key finds only its user's calls, as /user/api-calls/{id}.
        let resp = get(&server, &reader_2.secret, &path).await;
        if r.user == USER_2 {
            assert_eq!(expect(resp, StatusCode::OK).await, item);
        } else {
            expect_zoo_error(resp, StatusCode::NOT_FOUND, "not_found").await;
        }
    }
    expect_zoo_error(
        get(&server, &admin.secret, &format!("/api-calls/{NIL}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_zoo_error(
        get(&server, &admin.secret, "/api-calls/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    expect_zoo_error(
        get(
            &server,
            &writer.secret,
            &format!("/api-calls/{}", recs[0].id),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // The list is /org/api-calls, for an admin key.
    for query in ["limit=4", "limit=5&sort_by=created_at_ascending"] {
        assert_eq!(
            walk(&server, &admin.secret, "/api-calls", query).await,
            walk(&server, &admin.secret, "/org/api-calls", query).await
        );
    }
    assert_eq!(
        walk(&server, &admin_only.secret, "/api-calls", "").await,
        expected(&recs, |_| true, false)
    );
    let body = expect_zoo_error(
        get(&server, &reader_2.secret, "/api-calls").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("admin"),
        "{body}"
    );
    expect_zoo_error(
        get(&server, &admin.secret, "/api-calls?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    // Unauthenticated, and with an unsupported method: the zoo envelope.
    let resp = server
        .request(reqwest::Method::GET, "/api-calls")
        .send()
        .await
        .unwrap();
    expect_zoo_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = server
        .request(reqwest::Method::DELETE, &format!("/api-calls/{NIL}"))
        .header("x-api-key", &admin.secret)
        .send()
        .await
        .unwrap();
    expect_zoo_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_under_the_zoo_prefixes_answer_in_the_zoo_envelope() {
    let server = TestServer::start().await;
    server.create_org(ORG).await;
    let admin = user_key(&server, ORG, USER_1, &["read", "admin"]).await;
    for path in [
        "/org",
        "/org/nothing",
        "/org/api-calls/a/b",
        "/user",
        "/user/settings",
        "/users",
        "/users/me",
        "/users/me/api-calls/extra",
        "/api-calls/a/b",
    ] {
        for secret in [Some(admin.secret.as_str()), None] {
            let mut rb = server.request(reqwest::Method::GET, path);
            if let Some(s) = secret {
                rb = rb.header("x-api-key", s);
            }
            let body = expect_zoo_error(
                rb.send().await.unwrap(),
                StatusCode::NOT_FOUND,
                "route_not_found",
            )
            .await;
            assert!(body["message"].as_str().unwrap().contains(path), "{body}");
        }
    }
    // Elsewhere, unknown routes keep the native envelope.
    for path in ["/organisations", "/v2/logs", "/v1/org/x"] {
        let resp = server
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let body = expect(resp, StatusCode::NOT_FOUND).await;
        assert_eq!(body["error"]["code"], "route_not_found", "{path}: {body}");
    }
    server.stop().await;
}

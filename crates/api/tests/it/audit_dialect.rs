//! The audit dialect over HTTP (seed 004, SPEC §3.5): `GET /audit-log` and `GET /v1/audit-log`
//! against the real router on a random port — item and envelope shape (snapshots), every
//! parameter with its default and bounds, cursor walks against a reference model (also while
//! entries keep arriving), authentication and org isolation, audit-event ingest
//! (`POST /v1/ingest/audit-events`), self-auditing of org and key changes, and the chain check
//! `GET /v1/audit-log/verify`.
//!
//! Expectations come from the reference model in this file, built from what each test stored
//! (filter, then order by `created_at` and `id`, both descending), never from the server's
//! answers. The self-audit entries an org starts with (its creation, its first key) join the
//! model once their content has been checked against what the test did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::http_support;
use crate::reference;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apitrail_testkit::{
    ADMIN_TOKEN, TestKey, TestServer, assert_snapshot, expect, expect_native_error, header,
};
use http_support::{Carrier, detail_pairs};
use reference::{BASE_MS, Rng, is_utc_millis, utc, with_offset};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// Both paths of the dialect.
const ROUTES: [&str; 2] = ["/audit-log", "/v1/audit-log"];

/// The nine fields of an audit log entry (seed 004).
const ITEM_KEYS: [&str; 9] = [
    "action",
    "created_at",
    "details",
    "id",
    "ip_address",
    "org_id",
    "resource_id",
    "resource_type",
    "user_id",
];

const INGEST: &str = "/v1/ingest/audit-events";

// ---------------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------------

const ACTIONS: [&str; 3] = ["create", "update", "delete"];
/// `api_key` too, so the filter meets the self-audit entry of the org's first key.
const TYPES: [&str; 3] = ["source", "destination", "api_key"];
const RESOURCES: [&str; 4] = ["res_1", "res_2", "res_3", "res_4"];
const USERS: [&str; 2] = ["usr_a", "usr_b"];
/// Addresses as sent, and as they must be listed (canonical).
const IPS: [(&str, &str); 4] = [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:DB8::A", "2001:db8::a"),
    ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
    ("::FFFF:192.0.2.1", "::ffff:192.0.2.1"),
];

/// One audit entry as the test knows it: what to send, and what must be listed.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    /// Canonical (`utc`), so that string order is time order.
    created_at: String,
    /// Unix milliseconds; `None` for entries the test did not ingest.
    ms: Option<i64>,
    /// As sent (any offset); `None` for entries the test did not ingest.
    sent_created_at: Option<String>,
    user_id: Option<String>,
    action: String,
    resource_type: String,
    resource_id: Option<String>,
    /// As sent (a string, any JSON, or null/absent).
    sent_details: Option<Value>,
    /// As listed.
    details: Option<String>,
    sent_ip: Option<String>,
    ip_address: Option<String>,
}

impl Entry {
    /// The ingest record.
    fn ingest_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "action": self.action,
            "resource_type": self.resource_type,
            "created_at": self.sent_created_at.as_deref().unwrap(),
        });
        let obj = v.as_object_mut().unwrap();
        for (k, val) in [
            ("user_id", self.user_id.clone().map(Value::String)),
            ("resource_id", self.resource_id.clone().map(Value::String)),
            ("details", self.sent_details.clone()),
            ("ip_address", self.sent_ip.clone().map(Value::String)),
        ] {
            if let Some(val) = val {
                obj.insert(k.into(), val);
            }
        }
        v
    }

    /// The item `GET /audit-log` must list for it.
    fn listed(&self, org: &str) -> Value {
        json!({
            "id": self.id,
            "org_id": org,
            "user_id": self.user_id,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "details": self.details,
            "ip_address": self.ip_address,
            "created_at": self.created_at,
        })
    }

    /// An entry the server wrote itself (self-audit), read back from a listed item.
    fn from_item(item: &Value) -> Self {
        let s = |k: &str| item[k].as_str().map(str::to_owned);
        Self {
            id: s("id").unwrap(),
            created_at: s("created_at").unwrap(),
            ms: None,
            sent_created_at: None,
            user_id: s("user_id"),
            action: s("action").unwrap(),
            resource_type: s("resource_type").unwrap(),
            resource_id: s("resource_id"),
            sent_details: None,
            details: s("details"),
            sent_ip: None,
            ip_address: s("ip_address"),
        }
    }
}

/// A random entry at `BASE_MS + [0, slots)` seconds — so that many share a `created_at` and
/// the id tie-break decides — sometimes with stray milliseconds, written with varied offsets.
fn gen_entry(rng: &mut Rng, slots: u64) -> Entry {
    let ms = BASE_MS
        + rng.below(slots) as i64 * 1000
        + if rng.chance(15) {
            rng.below(1000) as i64
        } else {
            0
        };
    gen_entry_at(rng, ms)
}

fn gen_entry_at(rng: &mut Rng, ms: i64) -> Entry {
    let sent_created_at = match rng.below(4) {
        0 => utc(ms),
        1 => with_offset(ms, 0),
        2 => with_offset(ms, 120),
        _ => with_offset(ms, -330),
    };
    let (sent_details, details) = match rng.below(4) {
        0 => (None, None),
        1 => (Some(Value::Null), None),
        2 => {
            let text = format!("changed {}", rng.below(100));
            (Some(Value::String(text.clone())), Some(text))
        }
        _ => {
            // Keys in sorted order, as serde_json writes a `Value` on the wire.
            let (n, enabled) = (rng.below(1000), rng.chance(50));
            (
                Some(json!({"enabled": enabled, "n": n})),
                Some(format!(r#"{{"enabled":{enabled},"n":{n}}}"#)),
            )
        }
    };
    let (sent_ip, ip_address) = if rng.chance(25) {
        (None, None)
    } else {
        let (sent, canonical) = rng.pick(&IPS);
        (Some(sent.to_owned()), Some(canonical.to_owned()))
    };
    Entry {
        id: rng.uuid(),
        created_at: utc(ms),
        ms: Some(ms),
        sent_created_at: Some(sent_created_at),
        user_id: rng.chance(70).then(|| rng.pick(&USERS).to_owned()),
        action: rng.pick(&ACTIONS).to_owned(),
        resource_type: rng.pick(&TYPES).to_owned(),
        resource_id: rng.chance(80).then(|| rng.pick(&RESOURCES).to_owned()),
        sent_details,
        details,
        sent_ip,
        ip_address,
    }
}

/// The exact-match filters of the dialect.
#[derive(Debug, Clone, Copy, Default)]
struct Filter<'a> {
    resource_type: Option<&'a str>,
    resource_id: Option<&'a str>,
    action: Option<&'a str>,
}

impl Filter<'_> {
    fn matches(&self, e: &Entry) -> bool {
        self.resource_type.is_none_or(|v| e.resource_type == v)
            && self
                .resource_id
                .is_none_or(|v| e.resource_id.as_deref() == Some(v))
            && self.action.is_none_or(|v| e.action == v)
    }

    fn query(&self) -> String {
        [
            ("resource_type", self.resource_type),
            ("resource_id", self.resource_id),
            ("action", self.action),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// The model's entries matching `filter`, newest first, ties by id descending.
fn model<'a>(entries: &'a [Entry], filter: &Filter) -> Vec<&'a Entry> {
    let mut v: Vec<&Entry> = entries.iter().filter(|e| filter.matches(e)).collect();
    v.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    v
}

fn listed(entries: &[&Entry], org: &str) -> Vec<Value> {
    entries.iter().map(|e| e.listed(org)).collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers.
// ---------------------------------------------------------------------------------------------

fn keys_of(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

async fn get(server: &TestServer, secret: &str, path: &str) -> Response {
    server.get(path, secret).send().await.unwrap()
}

async fn ok(server: &TestServer, secret: &str, path: &str) -> Value {
    expect(get(server, secret, path).await, StatusCode::OK).await
}

/// `path?query`, or `path` when the query is empty.
fn url(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// Checks one item: the nine fields, present even when null, typed as the seed says.
fn check_item(item: &Value, org: &str) {
    assert_eq!(keys_of(item), BTreeSet::from(ITEM_KEYS), "{item}");
    assert_eq!(item["org_id"], org, "{item}");
    let id = item["id"].as_str().unwrap_or_else(|| panic!("{item}"));
    assert!(uuid::Uuid::try_parse(id).is_ok(), "{item}");
    assert!(
        item["created_at"].as_str().is_some_and(is_utc_millis),
        "{item}"
    );
    for k in ["action", "resource_type"] {
        assert!(item[k].as_str().is_some_and(|s| !s.is_empty()), "{item}");
    }
    for k in ["user_id", "resource_id", "details", "ip_address"] {
        assert!(item[k].is_null() || item[k].is_string(), "{item}");
    }
}

/// Checks a page's envelope and cursor; returns its items and its cursor.
fn check_page(page: &Value, org: &str, limit: usize, label: &str) -> (Vec<Value>, Option<String>) {
    assert_eq!(
        keys_of(page),
        BTreeSet::from(["audit_log", "has_more", "next_cursor"]),
        "{label}: {page}"
    );
    let items = page["audit_log"].as_array().unwrap().clone();
    for item in &items {
        check_item(item, org);
    }
    assert!(items.len() <= limit, "{label}: more than {limit} items");
    let has_more = page["has_more"]
        .as_bool()
        .unwrap_or_else(|| panic!("{label}: has_more is not a boolean: {page}"));
    if !has_more {
        assert_eq!(page["next_cursor"], Value::Null, "{label}: {page}");
        return (items, None);
    }
    assert_eq!(items.len(), limit, "{label}: a short page with has_more");
    let last = items.last().unwrap();
    // The seed's literal `created_at|id` of the last entry.
    let want = format!(
        "{}|{}",
        last["created_at"].as_str().unwrap(),
        last["id"].as_str().unwrap()
    );
    assert_eq!(page["next_cursor"], want.as_str(), "{label}");
    (items, Some(want))
}

/// Every page of `route` with `query` at `limit`, following `next_cursor` appended to the URL
/// as it stands (it is URL-safe: digits, `-:.TZ|` and hex).
async fn walk_on(
    server: &TestServer,
    secret: &str,
    org: &str,
    route: &str,
    query: &str,
    limit: usize,
) -> Vec<Value> {
    walk_with(server, secret, org, route, query, limit, || async {}).await
}

/// As [`walk_on`], awaiting `between` before each next page.
async fn walk_with<F, Fut>(
    server: &TestServer,
    secret: &str,
    org: &str,
    route: &str,
    query: &str,
    limit: usize,
    between: F,
) -> Vec<Value>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 0..10_000 {
        let mut q = format!("limit={limit}");
        if !query.is_empty() {
            q = format!("{query}&{q}");
        }
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let label = format!("{route}?{q}");
        let page = ok(server, secret, &url(route, &q)).await;
        let (items, next) = check_page(&page, org, limit, &label);
        assert!(
            n == 0 || !items.is_empty(),
            "{label}: the previous page promised more, this one is empty"
        );
        out.extend(items);
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
        between().await;
    }
    panic!("{route}?{query}: the walk did not end");
}

async fn walk(
    server: &TestServer,
    secret: &str,
    org: &str,
    query: &str,
    limit: usize,
) -> Vec<Value> {
    walk_on(server, secret, org, "/v1/audit-log", query, limit).await
}

fn ids_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A POST of audit events.
fn ingest_with(server: &TestServer, secret: &str) -> RequestBuilder {
    server
        .request(Method::POST, INGEST)
        .header("x-api-key", secret)
}

/// Ingests `entries` as one JSON array with `secret`; returns the 202 body.
async fn ingest_entries(server: &TestServer, secret: &str, entries: &[Entry]) -> Value {
    let body = Value::Array(entries.iter().map(Entry::ingest_json).collect());
    let resp = ingest_with(server, secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED).await
}

/// Ingests `entries` in batches of at most 200, alternating JSON arrays and NDJSON.
async fn ingest_all(server: &TestServer, secret: &str, entries: &[Entry]) {
    for (n, chunk) in entries.chunks(200).enumerate() {
        let res = if n % 2 == 0 {
            ingest_entries(server, secret, chunk).await
        } else {
            let body: String = chunk
                .iter()
                .map(|e| format!("{}\n", e.ingest_json()))
                .collect();
            let resp = ingest_with(server, secret)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            expect(resp, StatusCode::ACCEPTED).await
        };
        assert_eq!(res, json!({"accepted": chunk.len(), "duplicates": 0}));
    }
}

/// The one listed entry matching `query`.
async fn only(server: &TestServer, secret: &str, query: &str) -> Value {
    let page = ok(server, secret, &format!("/v1/audit-log?{query}")).await;
    let items = page["audit_log"].as_array().unwrap();
    assert_eq!(items.len(), 1, "?{query}: {page}");
    items[0].clone()
}

/// Creates org `org` with an all-scope key (through the operator API) and returns the key and
/// the two self-audit entries this wrote, after checking their content.
async fn setup(server: &TestServer, org: &str) -> (TestKey, Vec<Entry>) {
    let key = server.org_with_key(org).await;
    let created = only(server, &key.secret, "resource_type=org").await;
    let want = json!({
        "org_id": org, "user_id": null, "action": "create", "resource_type": "org",
        "resource_id": org, "details": json!({"name": format!("Org {org}")}).to_string(),
        "ip_address": "127.0.0.1",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&created[k], v, "{k}: {created}");
    }
    let key_created = only(
        server,
        &key.secret,
        &format!("resource_type=api_key&resource_id={}", key.id),
    )
    .await;
    assert_eq!(key_created["action"], "create", "{key_created}");
    assert_eq!(key_created["user_id"], Value::Null, "{key_created}");
    (
        key,
        vec![Entry::from_item(&created), Entry::from_item(&key_created)],
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Shape.
// ---------------------------------------------------------------------------------------------

/// Items carry exactly the seed's nine fields (nulls printed, `created_at` in UTC with
/// milliseconds whatever offset was ingested, `org_id` the org's id, `details` JSON as text,
/// addresses canonical), the envelope is exactly `audit_log`/`has_more`/`next_cursor`, the two
/// paths answer identically, and errors use the native envelope (snapshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_and_envelope_have_exactly_the_seeds_shape() {
    let server = TestServer::start().await;
    let org = "audit-shape";
    let key = server.org_with_key(org).await;
    let full = json!({
        "id": "b6376ab2-6a53-42e1-b434-918c7cd85ae3",
        "user_id": "usr_full",
        "action": "update",
        "resource_type": "destination",
        "resource_id": "dst_42",
        "details": {"url": "https://hooks.example.com/in", "enabled": true},
        "ip_address": "2001:DB8:0:0::1",
        "request_id": "req_full",
        "created_at": "2025-09-03T05:22:19.447+02:00",
    });
    let minimal = json!({
        "id": "0190f5a2-0000-7000-8000-000000000001",
        "action": "delete",
        "resource_type": "destination",
        "created_at": "2025-09-03T03:22:18Z",
    });
    let res = ingest_with(&server, &key.secret)
        .json(&json!([full, minimal]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(res, StatusCode::ACCEPTED).await,
        json!({"accepted": 2, "duplicates": 0})
    );

    let page = ok(&server, &key.secret, "/v1/audit-log").await;
    let (items, next) = check_page(&page, org, 50, "/v1/audit-log");
    assert_eq!(next, None);
    assert_eq!(page["has_more"], false);
    assert_eq!(
        items.len(),
        4,
        "org creation, key creation, two ingested: {page}"
    );
    let want_full = json!({
        "id": "b6376ab2-6a53-42e1-b434-918c7cd85ae3",
        "org_id": org,
        "user_id": "usr_full",
        "action": "update",
        "resource_type": "destination",
        "resource_id": "dst_42",
        // The text sent (serde_json writes a `Value`'s keys sorted).
        "details": r#"{"enabled":true,"url":"https://hooks.example.com/in"}"#,
        "ip_address": "2001:db8::1",
        "created_at": "2025-09-03T03:22:19.447Z",
    });
    let want_minimal = json!({
        "id": "0190f5a2-0000-7000-8000-000000000001",
        "org_id": org,
        "user_id": null,
        "action": "delete",
        "resource_type": "destination",
        "resource_id": null,
        "details": null,
        "ip_address": null,
        "created_at": "2025-09-03T03:22:18.000Z",
    });
    // Self-audit entries are written now, after 2025-09-03: they come first, newest first.
    assert_eq!(items[0]["resource_type"], "api_key");
    assert_eq!(items[0]["resource_id"], key.id.as_str());
    assert_eq!(items[1]["resource_type"], "org");
    assert_eq!(items[2], want_full);
    assert_eq!(items[3], want_minimal);
    // Nulls are printed, never omitted: the raw body has every key of the minimal item.
    let raw = get(
        &server,
        &key.secret,
        "/v1/audit-log?resource_type=destination",
    )
    .await
    .text()
    .await
    .unwrap();
    for k in ITEM_KEYS {
        assert_eq!(raw.matches(&format!("\"{k}\":")).count(), 2, "{k}: {raw}");
    }
    assert_eq!(
        serde_json::from_str::<Value>(&raw).unwrap(),
        json!({"audit_log": [want_full, want_minimal], "has_more": false, "next_cursor": null})
    );
    let mut snap = page.clone();
    snap["audit_log"][0]["resource_id"] = json!("[the key's id]");
    assert_snapshot(CRATE, "audit_page", &snap, &["id", "created_at"]);

    // Both paths answer identically, for pages, cursors, filters and errors.
    let cursor = format!(
        "2025-09-03T03:22:19.447Z|{}",
        want_full["id"].as_str().unwrap()
    );
    for q in [
        String::new(),
        "limit=1".to_owned(),
        "limit=2".to_owned(),
        "action=update".to_owned(),
        "resource_type=destination&resource_id=dst_42".to_owned(),
        format!("cursor={cursor}"),
        "action=nope".to_owned(),
    ] {
        let a = ok(&server, &key.secret, &url("/audit-log", &q)).await;
        let b = ok(&server, &key.secret, &url("/v1/audit-log", &q)).await;
        assert_eq!(a, b, "?{q}");
    }
    let after = ok(&server, &key.secret, &format!("/audit-log?cursor={cursor}")).await;
    assert_eq!(after["audit_log"], json!([want_minimal]));
    for route in ROUTES {
        let resp = server
            .get(&format!("{route}?limit=0"), &key.secret)
            .header("x-request-id", "trace.audit-1")
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&resp, "x-request-id").as_deref(),
            Some("trace.audit-1")
        );
        let err = expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some("limit"),
        )
        .await;
        assert_eq!(keys_of(&err), BTreeSet::from(["error", "request_id"]));
        assert_eq!(err["request_id"], "trace.audit-1");
        assert_snapshot(CRATE, "audit_error_limit_0", &err, &["request_id"]);
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Parameters, defaults and bounds.
// ---------------------------------------------------------------------------------------------

/// `limit` defaults to 50 and accepts 1..=200 (anything else, or twice, is a 400 naming it),
/// empty values count as absent, each filter and each combination matches exactly, malformed
/// cursors are a 400 naming `cursor`, and `next_cursor` is the last item's `created_at|id`,
/// null on the last page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_parameter_has_its_default_and_bounds() {
    let server = TestServer::start().await;
    let org = "audit-params";
    let (key, mut entries) = setup(&server, org).await;
    let mut rng = Rng(0xA0D1_7000);
    let ingested: Vec<Entry> = (0..258).map(|_| gen_entry(&mut rng, 90)).collect();
    ingest_all(&server, &key.secret, &ingested).await;
    entries.extend(ingested);
    assert_eq!(entries.len(), 260);
    let all = model(&entries, &Filter::default());

    for route in ROUTES {
        // Default: 50, newest first.
        let page = ok(&server, &key.secret, route).await;
        let (items, next) = check_page(&page, org, 50, route);
        assert_eq!(items, listed(&all[..50], org), "{route}");
        assert_eq!(
            next.as_deref(),
            Some(format!("{}|{}", all[49].created_at, all[49].id).as_str())
        );
        // Empty values are absent.
        let empty = ok(
            &server,
            &key.secret,
            &format!("{route}?limit=&cursor=&action=&resource_type=&resource_id="),
        )
        .await;
        assert_eq!(empty, page, "{route}: empty values");
        // The bounds are accepted and honoured.
        let one = ok(&server, &key.secret, &format!("{route}?limit=1")).await;
        assert_eq!(check_page(&one, org, 1, route).0, listed(&all[..1], org));
        let max = ok(&server, &key.secret, &format!("{route}?limit=200")).await;
        assert_eq!(
            check_page(&max, org, 200, route).0,
            listed(&all[..200], org)
        );
        assert_eq!(max["has_more"], true);
        // A page holding exactly the rest ends the walk: has_more false, next_cursor null.
        let c = format!("{}|{}", all[199].created_at, all[199].id);
        let rest = ok(
            &server,
            &key.secret,
            &format!("{route}?limit=60&cursor={c}"),
        )
        .await;
        let (items, next) = check_page(&rest, org, 60, route);
        assert_eq!(items, listed(&all[200..], org));
        assert_eq!((next, &rest["has_more"]), (None, &json!(false)), "{rest}");
        let nothing = ok(
            &server,
            &key.secret,
            &format!("{route}?cursor={}|{}", all[259].created_at, all[259].id),
        )
        .await;
        assert_eq!(
            nothing,
            json!({"audit_log": [], "has_more": false, "next_cursor": null})
        );

        // Malformed or out of range: 400, native envelope, naming the parameter.
        let id = &all[0].id;
        let long = "x".repeat(apitrail_model::request_log::rules::MAX_TEXT + 1);
        for (q, param) in [
            ("limit=0".to_owned(), "limit"),
            ("limit=201".to_owned(), "limit"),
            ("limit=abc".to_owned(), "limit"),
            ("limit=1.5".to_owned(), "limit"),
            ("limit=-1".to_owned(), "limit"),
            ("limit=%2B5".to_owned(), "limit"),
            ("limit=99999999999999999999".to_owned(), "limit"),
            ("limit=1&limit=2".to_owned(), "limit"),
            ("action=create&action=update".to_owned(), "action"),
            (
                "resource_type=a&resource_type=b".to_owned(),
                "resource_type",
            ),
            ("resource_id=a&resource_id=b".to_owned(), "resource_id"),
            (format!("resource_id={long}"), "resource_id"),
            ("cursor=abc".to_owned(), "cursor"),
            ("cursor=2024-03-10T00:00:00.000Z".to_owned(), "cursor"),
            (format!("cursor={id}"), "cursor"),
            (format!("cursor=yesterday|{id}"), "cursor"),
            (format!("cursor=2024-13-10T00:00:00.000Z|{id}"), "cursor"),
            (format!("cursor=2024-03-10T00:00:00.000|{id}"), "cursor"),
            (format!("cursor=2024-03-10|{id}"), "cursor"),
            ("cursor=2024-03-10T00:00:00.000Z|nope".to_owned(), "cursor"),
            ("cursor=2024-03-10T00:00:00.000Z|".to_owned(), "cursor"),
            (format!("cursor=|{id}"), "cursor"),
            (format!("cursor=2024-03-10T00:00:00.000Z|{id}|x"), "cursor"),
            (
                format!(
                    "cursor=2024-03-10T00:00:00.000Z|{id}&cursor=2024-03-10T00:00:00.000Z|{id}"
                ),
                "cursor",
            ),
        ] {
            let resp = get(&server, &key.secret, &format!("{route}?{q}")).await;
            expect_native_error(
                resp,
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                Some(param),
            )
            .await;
        }
    }

    // Exact-match filters, alone and combined, against the model (one page holds them all).
    let mut filters: Vec<Filter> = Vec::new();
    for t in TYPES.iter().chain(&["org", "Source", "nope"]) {
        filters.push(Filter {
            resource_type: Some(t),
            ..Filter::default()
        });
    }
    for a in ACTIONS.iter().chain(&["CREATE", "revoke"]) {
        filters.push(Filter {
            action: Some(a),
            ..Filter::default()
        });
    }
    for r in RESOURCES.iter().chain(&["res_", org, key.id.as_str()]) {
        filters.push(Filter {
            resource_id: Some(r),
            ..Filter::default()
        });
    }
    for (t, a, r) in [
        (Some("source"), Some("create"), None),
        (Some("api_key"), None, Some("res_2")),
        (None, Some("delete"), Some("res_3")),
        (Some("destination"), Some("update"), Some("res_1")),
        (Some("api_key"), Some("create"), Some(key.id.as_str())),
        (Some("org"), Some("create"), Some(org)),
        (Some("org"), Some("update"), Some(org)),
    ] {
        filters.push(Filter {
            resource_type: t,
            action: a,
            resource_id: r,
        });
    }
    let mut nonempty = 0;
    for f in &filters {
        let want = model(&entries, f);
        nonempty += usize::from(!want.is_empty());
        let q = f.query();
        let page = ok(
            &server,
            &key.secret,
            &format!("/v1/audit-log?{q}&limit=200"),
        )
        .await;
        let (items, next) = check_page(&page, org, 200, &q);
        assert_eq!(items, listed(&want, org), "?{q}");
        assert_eq!(next, None, "?{q}");
    }
    assert!(nonempty >= 15, "the filters should mostly match something");

    // The cursor is accepted in other spellings of the same instant, and percent-encoded.
    let a = all[9];
    let want = listed(&all[10..15], org);
    let ms = a.ms.expect("an ingested entry");
    for cursor in [
        format!("{}|{}", a.created_at, a.id),
        format!("{}%7C{}", a.created_at.replace(':', "%3A"), a.id),
        // The same instant with an offset, `+` percent-encoded, and sent bare (a space).
        format!("{}|{}", with_offset(ms, 90).replace('+', "%2B"), a.id),
        format!("{}|{}", with_offset(ms, 90), a.id),
        format!("{}|{}", with_offset(ms, -600), a.id),
        format!("{}|{}", a.created_at, a.id.to_uppercase()),
    ] {
        let page = ok(
            &server,
            &key.secret,
            &format!("/v1/audit-log?limit=5&cursor={cursor}"),
        )
        .await;
        assert_eq!(
            check_page(&page, org, 5, &cursor).0,
            want,
            "cursor={cursor}"
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Walks.
// ---------------------------------------------------------------------------------------------

/// Following `next_cursor` lists every matching entry exactly once, newest first with ties by
/// id descending (many entries share a `created_at` and have random ids), for several limits
/// and filters, on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_walks_match_the_reference_model() {
    let server = TestServer::start().await;
    let org = "audit-walks";
    let (key, mut entries) = setup(&server, org).await;
    let mut rng = Rng(0x00A0_D175);
    // 320 entries over 25 whole seconds (a dozen per `created_at`), a few off the second.
    let ingested: Vec<Entry> = (0..320).map(|_| gen_entry(&mut rng, 25)).collect();
    ingest_all(&server, &key.secret, &ingested).await;
    entries.extend(ingested);
    let mut per_time: HashMap<&str, usize> = HashMap::new();
    for e in &entries {
        *per_time.entry(e.created_at.as_str()).or_default() += 1;
    }
    let tied = entries
        .iter()
        .filter(|e| per_time[e.created_at.as_str()] > 1)
        .count();
    assert!(
        tied * 10 >= entries.len() * 7,
        "ties must be common: {tied} of {} entries share their created_at",
        entries.len()
    );
    // Another org's entries never show up.
    let (other, _) = setup(&server, "audit-walks-other").await;
    let noise: Vec<Entry> = (0..40).map(|_| gen_entry(&mut rng, 25)).collect();
    ingest_all(&server, &other.secret, &noise).await;

    let filters = [
        Filter::default(),
        Filter {
            action: Some("create"),
            ..Filter::default()
        },
        Filter {
            resource_type: Some("api_key"),
            ..Filter::default()
        },
        Filter {
            resource_id: Some("res_2"),
            ..Filter::default()
        },
        Filter {
            resource_type: Some("source"),
            action: Some("delete"),
            ..Filter::default()
        },
        Filter {
            resource_type: Some("destination"),
            resource_id: Some("res_4"),
            action: Some("update"),
        },
    ];
    for f in &filters {
        let want = listed(&model(&entries, f), org);
        let q = f.query();
        let limits: &[usize] = if q.is_empty() {
            &[1, 7, 50, 200, 101]
        } else {
            &[1, 3, 50]
        };
        for &limit in limits {
            for route in ROUTES {
                let got = walk_on(&server, &key.secret, org, route, &q, limit).await;
                assert_eq!(got.len(), want.len(), "{route}?{q}&limit={limit}");
                assert_eq!(got, want, "{route}?{q}&limit={limit}");
            }
        }
    }
    server.stop().await;
}

/// A walk while another task keeps ingesting entries older, newer and amid the walked ones:
/// every entry that existed before the walk is listed exactly once, nothing twice, in strictly
/// descending (created_at, id) order; anything else listed was inserted meanwhile; once quiet,
/// a walk lists old and new exactly as the model says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_stay_exact_while_entries_keep_arriving() {
    let server = TestServer::start().await;
    let org = "audit-busy";
    let (key, mut before) = setup(&server, org).await;
    let mut rng = Rng(0xB005_1E55);
    let ingested: Vec<Entry> = (0..400).map(|_| gen_entry(&mut rng, 60)).collect();
    ingest_all(&server, &key.secret, &ingested).await;
    before.extend(ingested);

    let inserted: Arc<Mutex<Vec<Entry>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let inserter = tokio::spawn({
        let (client, url) = (server.client.clone(), format!("{}{INGEST}", server.base));
        let (secret, inserted, stop) =
            (key.secret.clone(), Arc::clone(&inserted), Arc::clone(&stop));
        async move {
            let mut rng = Rng(0x5EED);
            let mut batches = 0u64;
            while !stop.load(AtomicOrdering::Relaxed) {
                // Older than everything, amid the walked range (some on its exact times), and
                // newer than everything.
                let batch: Vec<Entry> = vec![
                    gen_entry_at(&mut rng, BASE_MS - 86_400_000 + batches as i64),
                    gen_entry(&mut rng, 60),
                    gen_entry(&mut rng, 60),
                    gen_entry_at(&mut rng, BASE_MS + 30_000),
                    gen_entry_at(&mut rng, BASE_MS + 86_400_000 + batches as i64),
                ];
                inserted.lock().unwrap().extend(batch.iter().cloned());
                let body = Value::Array(batch.iter().map(Entry::ingest_json).collect());
                let resp = client
                    .post(&url)
                    .header("x-api-key", &secret)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let res = expect(resp, StatusCode::ACCEPTED).await;
                assert_eq!(res["accepted"], 5, "{res}");
                batches += 1;
                tx.send_replace(batches);
            }
            batches
        }
    });

    let before_ids: HashSet<&str> = before.iter().map(|e| e.id.as_str()).collect();
    for (f, limit) in [
        (Filter::default(), 13),
        (
            Filter {
                resource_type: Some("source"),
                ..Filter::default()
            },
            5,
        ),
    ] {
        let q = f.query();
        let label = format!("?{q}&limit={limit} while inserting");
        // Between pages, wait for one more committed batch, so every page boundary has
        // inserts behind and ahead of it.
        let got = walk_with(
            &server,
            &key.secret,
            org,
            "/v1/audit-log",
            &q,
            limit,
            || {
                let mut rx = rx.clone();
                async move {
                    let seen = *rx.borrow_and_update();
                    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n > seen))
                        .await
                        .expect("the inserter made no progress within 10 s")
                        .expect("the inserter stopped");
                }
            },
        )
        .await;
        let ids = ids_of(&got);
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "{label}: an entry was listed twice"
        );
        for w in got.windows(2) {
            let a = (w[0]["created_at"].as_str(), w[0]["id"].as_str());
            let b = (w[1]["created_at"].as_str(), w[1]["id"].as_str());
            assert!(a > b, "{label}: not strictly descending: {a:?} then {b:?}");
        }
        let old: Vec<Value> = got
            .iter()
            .filter(|i| before_ids.contains(i["id"].as_str().unwrap()))
            .cloned()
            .collect();
        assert_eq!(old, listed(&model(&before, &f), org), "{label}");
        let new_ids: HashSet<String> = inserted
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.id.clone())
            .collect();
        for item in got
            .iter()
            .filter(|i| !before_ids.contains(i["id"].as_str().unwrap()))
        {
            assert!(
                new_ids.contains(item["id"].as_str().unwrap()),
                "{label}: {item} is neither an old entry nor a concurrently inserted one"
            );
        }
    }
    stop.store(true, AtomicOrdering::Relaxed);
    let batches = inserter.await.unwrap();
    assert!(batches >= 40, "only {batches} batches overlapped the walks");

    let mut everything = before.clone();
    everything.extend(inserted.lock().unwrap().iter().cloned());
    assert_eq!(everything.len(), 402 + 5 * batches as usize);
    let got = walk(&server, &key.secret, org, "", 200).await;
    assert_eq!(
        got,
        listed(&model(&everything, &Filter::default()), org),
        "after the inserts"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Authentication and isolation.
// ---------------------------------------------------------------------------------------------

/// No key, an unknown key or a revoked key → 401 in the native envelope; every carrier of an
/// org key works; a key without `read` → 403; the operator token reads no dialect route; an
/// org never sees another org's entries, not even by naming their resource ids or cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_scopes_and_isolation() {
    let server = TestServer::start().await;
    let (a, _) = setup(&server, "audit-a").await;
    let (b, _) = setup(&server, "audit-b").await;
    let mut rng = Rng(0xAB);
    let a_entries: Vec<Entry> = (0..30).map(|_| gen_entry(&mut rng, 10)).collect();
    let b_entries: Vec<Entry> = (0..30).map(|_| gen_entry(&mut rng, 10)).collect();
    ingest_all(&server, &a.secret, &a_entries).await;
    ingest_all(&server, &b.secret, &b_entries).await;
    let reader = server.create_key("audit-a", &["read"]).await;
    let writer = server.create_key("audit-a", &["write", "admin"]).await;

    for route in ROUTES.iter().map(|r| (*r).to_owned()).chain([
        "/v1/audit-log/verify".to_owned(),
        "/audit-log?limit=0".to_owned(),
    ]) {
        let none = server.request(Method::GET, &route).send().await.unwrap();
        expect_native_error(none, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        for bad in [
            "atk_0000000000000000000000000000000000000000",
            "not-a-key",
            ADMIN_TOKEN,
        ] {
            expect_native_error(
                get(&server, bad, &route).await,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                None,
            )
            .await;
        }
        // Without `read`: 403 (write and admin do not imply it).
        expect_native_error(
            get(&server, &writer.secret, &route).await,
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        )
        .await;
        // The operator token, in its own carrier, is recognised and refused: it is no org key.
        let op = server.operator(Method::GET, &route).send().await.unwrap();
        let body = expect_native_error(op, StatusCode::FORBIDDEN, "forbidden", None).await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("operator"),
            "{body}"
        );
    }

    // Every carrier of an org key reads the same list.
    let want = walk(&server, &reader.secret, "audit-a", "", 200).await;
    for route in ROUTES {
        for carrier in Carrier::ALL {
            let rb = carrier.apply(
                server.request(Method::GET, &format!("{route}?limit=200")),
                &reader.secret,
            );
            let page = expect(rb.send().await.unwrap(), StatusCode::OK).await;
            assert_eq!(page["audit_log"], json!(want), "{route} {carrier:?}");
        }
    }
    // A revoked key is refused from then on.
    ok(&server, &reader.secret, "/v1/audit-log").await;
    let resp = server
        .operator(
            Method::DELETE,
            &format!("/admin/v1/orgs/audit-a/api-keys/{}", reader.id),
        )
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
    for route in ROUTES {
        expect_native_error(
            get(&server, &reader.secret, route).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        )
        .await;
    }

    // Isolation: each org lists exactly its own entries.
    let a_all = walk(&server, &a.secret, "audit-a", "", 200).await;
    let b_all = walk(&server, &b.secret, "audit-b", "", 200).await;
    let a_ids: HashSet<String> = ids_of(&a_all).into_iter().collect();
    let b_ids: HashSet<String> = ids_of(&b_all).into_iter().collect();
    assert!(a_ids.is_disjoint(&b_ids));
    for e in &a_entries {
        assert!(a_ids.contains(&e.id) && !b_ids.contains(&e.id));
    }
    for e in &b_entries {
        assert!(b_ids.contains(&e.id) && !a_ids.contains(&e.id));
    }
    // B, naming A's resources and A's entries' positions, still sees only B's entries.
    for (resource, kind) in [
        ("audit-a", "org"),
        (a.id.as_str(), "api_key"),
        (reader.id.as_str(), "api_key"),
    ] {
        for q in [
            format!("resource_id={resource}"),
            format!("resource_type={kind}&resource_id={resource}"),
        ] {
            let page = ok(&server, &b.secret, &format!("/v1/audit-log?{q}")).await;
            assert_eq!(page["audit_log"], json!([]), "B ?{q}: {page}");
        }
    }
    for item in &a_all {
        let cursor = format!(
            "{}|{}",
            item["created_at"].as_str().unwrap(),
            item["id"].as_str().unwrap()
        );
        let page = ok(
            &server,
            &b.secret,
            &format!("/v1/audit-log?limit=200&cursor={cursor}"),
        )
        .await;
        let (items, _) = check_page(&page, "audit-b", 200, &cursor);
        // Exactly B's entries after that position.
        let want: Vec<&Value> = b_all
            .iter()
            .filter(|i| {
                (i["created_at"].as_str(), i["id"].as_str())
                    < (item["created_at"].as_str(), item["id"].as_str())
            })
            .collect();
        assert_eq!(
            items.iter().collect::<Vec<_>>(),
            want,
            "B after A's {cursor}"
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Ingest.
// ---------------------------------------------------------------------------------------------

fn operator_ingest(server: &TestServer) -> RequestBuilder {
    server.operator(Method::POST, INGEST)
}

/// Audit-event ingest: JSON arrays and NDJSON; the operator token names the org per record
/// (missing or unknown → invalid record), an org key may name only its own org (else 403);
/// ids are idempotent; one invalid record refuses the batch listing every problem and storing
/// nothing; unknown fields are named; JSON details are kept as their text; addresses are
/// canonical; ingest needs `write`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_accepts_valid_batches_and_refuses_invalid_ones_whole() {
    let server = TestServer::start().await;
    let (a, mut a_model) = setup(&server, "ingest-a").await;
    let (b, mut b_model) = setup(&server, "ingest-b").await;
    let mut rng = Rng(0x1A6E);
    // A JSON array and NDJSON (blank lines ignored) with an org key.
    let batch: Vec<Entry> = (0..5).map(|_| gen_entry(&mut rng, 10)).collect();
    assert_eq!(
        ingest_entries(&server, &a.secret, &batch).await,
        json!({"accepted": 5, "duplicates": 0})
    );
    a_model.extend(batch.iter().cloned());
    let nd: Vec<Entry> = (0..4).map(|_| gen_entry(&mut rng, 10)).collect();
    let body: String = nd
        .iter()
        .map(|e| format!("{}\n\n", e.ingest_json()))
        .collect();
    let resp = ingest_with(&server, &a.secret)
        .header("content-type", "application/x-ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 4, "duplicates": 0})
    );
    a_model.extend(nd.iter().cloned());
    check_listing(&server, &a, &a_model).await;

    // Re-sending ids stores nothing twice; a mix counts both.
    let resp = ingest_with(&server, &a.secret)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 0, "duplicates": 4})
    );
    let fresh = gen_entry(&mut rng, 10);
    let mixed = vec![batch[0].clone(), fresh.clone(), batch[1].clone()];
    assert_eq!(
        ingest_entries(&server, &a.secret, &mixed).await,
        json!({"accepted": 1, "duplicates": 2})
    );
    a_model.push(fresh);
    check_listing(&server, &a, &a_model).await;
    // The same id in another org is another entry.
    assert_eq!(
        ingest_entries(&server, &b.secret, &batch[..1]).await,
        json!({"accepted": 1, "duplicates": 0})
    );
    b_model.push(batch[0].clone());

    // An org key may name its own org, never another (403, nothing stored).
    let own_entry = gen_entry(&mut rng, 10);
    let mut own = own_entry.ingest_json();
    own["org_id"] = json!("ingest-a");
    let resp = ingest_with(&server, &a.secret)
        .json(&json!([own]))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED).await;
    a_model.push(own_entry);
    let mut foreign = gen_entry(&mut rng, 10).ingest_json();
    foreign["org_id"] = json!("ingest-b");
    let valid = gen_entry(&mut rng, 10).ingest_json();
    let resp = ingest_with(&server, &a.secret)
        .json(&json!([valid, foreign]))
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", Some("org_id")).await;

    // The operator token: org_id per record, several orgs in one batch.
    let (oa, ob) = (gen_entry(&mut rng, 10), gen_entry(&mut rng, 10));
    let mut ra = oa.ingest_json();
    ra["org_id"] = json!("ingest-a");
    let mut rb = ob.ingest_json();
    rb["org_id"] = json!("ingest-b");
    let resp = operator_ingest(&server)
        .json(&json!([ra, rb]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 2, "duplicates": 0})
    );
    a_model.push(oa);
    b_model.push(ob);
    // Missing or unknown org: invalid records, nothing stored.
    let mut unknown = gen_entry(&mut rng, 10).ingest_json();
    unknown["org_id"] = json!("no-such-org");
    let mut malformed_org = gen_entry(&mut rng, 10).ingest_json();
    malformed_org["org_id"] = json!("bad org!");
    let mut fine = gen_entry(&mut rng, 10).ingest_json();
    fine["org_id"] = json!("ingest-a");
    let resp = operator_ingest(&server)
        .json(&json!([
            fine,
            gen_entry(&mut rng, 10).ingest_json(),
            unknown,
            malformed_org,
            [1, 2]
        ]))
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    // A record that is not an object is reported as such, not also as lacking an org_id.
    assert_eq!(
        detail_pairs(&body),
        vec![
            (1, Some("org_id".into())),
            (2, Some("org_id".into())),
            (3, Some("org_id".into())),
            (4, None)
        ],
        "{body}"
    );

    check_listing(&server, &a, &a_model).await;
    check_listing(&server, &b, &b_model).await;

    // Every problem of every record, in one answer; nothing of the batch is stored.
    let good = gen_entry(&mut rng, 10);
    let raw_batch = format!(
        "[{good},{{\"resource_type\":\"source\"}},{dup},{{\"action\":\"create\",\"resource_type\":\"\",\"ip_address\":\"300.1.1.1\",\"created_at\":\"2024-03-10T00:00:00\"}},{{\"action\":\"create\",\"resource_type\":\"source\",\"colour\":\"red\"}},{{\"id\":\"not-a-uuid\",\"action\":\"create\",\"resource_type\":\"source\",\"user_id\":5}},[1,2]]",
        good = good.ingest_json(),
        dup = good.ingest_json(),
    );
    let resp = ingest_with(&server, &a.secret)
        .header("content-type", "application/json")
        .body(raw_batch)
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    let mut pairs = detail_pairs(&body);
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            (1, Some("action".into())),
            (2, Some("id".into())),
            (3, Some("created_at".into())),
            (3, Some("ip_address".into())),
            (3, Some("resource_type".into())),
            (4, Some("colour".into())),
            (5, Some("id".into())),
            (5, Some("user_id".into())),
            (6, None),
        ],
        "{body}"
    );
    let colour = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["field"] == "colour")
        .unwrap();
    assert!(
        colour["message"]
            .as_str()
            .unwrap()
            .contains("not a known field"),
        "{colour}"
    );
    check_listing(&server, &a, &a_model).await;

    // details: a string as it is, JSON as the text sent (key order and numbers kept),
    // null as null; addresses canonical; times printed in UTC.
    let raw = r#"[
      {"id": "0190f5a2-0000-7000-8000-00000000d001", "action": "update", "resource_type": "source",
       "details": {"z": 1, "a": [1, true, null], "big": 123456789012345678901234567890, "s": "x  y"},
       "ip_address": "2001:0DB8:0000:0000:0000:0000:0000:00FF", "created_at": "2024-03-10T01:00:00.5+01:00"},
      {"id": "0190f5a2-0000-7000-8000-00000000d002", "action": "update", "resource_type": "source",
       "details": "{\"not\": \"parsed\"}", "ip_address": "10.0.0.1", "created_at": "2024-03-10T00:00:00.001Z"},
      {"id": "0190f5a2-0000-7000-8000-00000000d003", "action": "update", "resource_type": "source",
       "details": [3, "three"], "created_at": "2024-03-09T23:00:00-01:00"},
      {"id": "0190f5a2-0000-7000-8000-00000000d004", "action": "update", "resource_type": "source",
       "details": 42.50, "created_at": "2024-03-10T00:00:00.002Z"}
    ]"#;
    let resp = ingest_with(&server, &a.secret)
        .header("content-type", "application/json; charset=utf-8")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 4, "duplicates": 0})
    );
    for (id, details, ip, created_at) in [
        (
            "d001",
            Some(r#"{"z":1,"a":[1,true,null],"big":123456789012345678901234567890,"s":"x  y"}"#),
            Some("2001:db8::ff"),
            "2024-03-10T00:00:00.500Z",
        ),
        (
            "d002",
            Some(r#"{"not": "parsed"}"#),
            Some("10.0.0.1"),
            "2024-03-10T00:00:00.001Z",
        ),
        (
            "d003",
            Some(r#"[3,"three"]"#),
            None,
            "2024-03-10T00:00:00.000Z",
        ),
        ("d004", Some("42.50"), None, "2024-03-10T00:00:00.002Z"),
    ] {
        let id = format!("0190f5a2-0000-7000-8000-00000000{id}");
        let item = listed_own_item(&server, &a, &id).await;
        let want = json!({
            "id": id, "org_id": "ingest-a", "user_id": null, "action": "update",
            "resource_type": "source", "resource_id": null, "details": details,
            "ip_address": ip, "created_at": created_at,
        });
        assert_eq!(item, want);
        a_model.push(Entry::from_item(&item));
    }
    check_listing(&server, &a, &a_model).await;

    // details beyond the body cap (64 KiB) are refused, never cut.
    let big = json!([{"action": "update", "resource_type": "source",
                      "details": "x".repeat(64 * 1024 + 1)}]);
    let resp = ingest_with(&server, &a.secret)
        .json(&big)
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(detail_pairs(&body), vec![(0, Some("details".into()))]);

    // Credentials: none → 401; a key without write → 403; nothing stored.
    let reader = server.create_key("ingest-a", &["read", "admin"]).await;
    a_model.push(Entry::from_item(
        &only(
            &server,
            &a.secret,
            &format!("resource_type=api_key&resource_id={}", reader.id),
        )
        .await,
    ));
    let one = json!([gen_entry(&mut rng, 10).ingest_json()]);
    let resp = server
        .request(Method::POST, INGEST)
        .json(&one)
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let resp = ingest_with(&server, &reader.secret)
        .json(&one)
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    check_listing(&server, &a, &a_model).await;
    check_listing(&server, &b, &b_model).await;
    server.stop().await;
}

/// Walks `key`'s org and compares the whole listing with the model of `entries`.
async fn check_listing(server: &TestServer, key: &TestKey, entries: &[Entry]) {
    let got = walk(server, &key.secret, &key.org_id, "", 200).await;
    assert_eq!(
        got,
        listed(&model(entries, &Filter::default()), &key.org_id),
        "{}",
        key.org_id
    );
}

/// The listed item with `id` in `key`'s org (found by walking, since ingested ids are not a
/// filter of the dialect).
async fn listed_own_item(server: &TestServer, key: &TestKey, id: &str) -> Value {
    walk(server, &key.secret, &key.org_id, "", 200)
        .await
        .into_iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

// ---------------------------------------------------------------------------------------------
// 6. Self-auditing.
// ---------------------------------------------------------------------------------------------

/// What one self-audit entry must say.
struct Audited<'a> {
    action: &'a str,
    resource_type: &'a str,
    resource_id: &'a str,
    user_id: Option<&'a str>,
    details: Value,
}

/// Org creation and key creation/revocation — through the operator API and through
/// `/v1/api-keys` with an org admin key — each write one entry of the affected org: resource
/// type `api_key`/`org`, action `create`/`revoke`, the resource's id, the acting key's
/// principal as `user_id` (null for the operator), details as JSON text without any secret.
/// Refused or no-op changes and reads write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_through_apitrail_are_self_audited() {
    // Self-logging on: reads become request logs, never audit entries.
    let server = TestServer::start_with(apitrail_testkit::Options {
        self_log: true,
        ..apitrail_testkit::Options::default()
    })
    .await;
    let org = "self-audit";
    server.create_org(org).await;
    // An org admin whose principal differs from its user id: the principal is what counts.
    let admin = server
        .create_key_with(
            org,
            json!({"name": "ops admin", "scopes": ["read", "admin"], "principal_type": "user",
                   "principal_id": "usr_principal", "user_id": "usr_other",
                   "email": "ops@example.com"}),
        )
        .await;
    let k1 = server
        .create_key_with(
            org,
            json!({"name": "robot", "scopes": ["read", "write"],
                   "principal_type": "service_account", "principal_id": "sa_robot",
                   "service_account_id": "sa_robot"}),
        )
        .await;
    let op_revoke = format!("/admin/v1/orgs/{org}/api-keys/{}", k1.id);
    let resp = server
        .operator(Method::DELETE, &op_revoke)
        .send()
        .await
        .unwrap();
    assert!(expect(resp, StatusCode::OK).await["revoked_at"].is_string());
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &admin.secret)
        .json(
            &json!({"name": "made by admin", "scopes": ["read"], "principal_type": "user",
                      "principal_id": "usr_k2"}),
        )
        .send()
        .await
        .unwrap();
    let created = expect(resp, StatusCode::CREATED).await;
    let (k2_id, k2_secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let revoke_k2 = || {
        server
            .request(Method::DELETE, &format!("/v1/api-keys/{k2_id}"))
            .header("x-api-key", &admin.secret)
    };
    expect(revoke_k2().send().await.unwrap(), StatusCode::OK).await;

    let want = [
        Audited {
            action: "revoke",
            resource_type: "api_key",
            resource_id: &k2_id,
            user_id: Some("usr_principal"),
            details: json!({}),
        },
        Audited {
            action: "create",
            resource_type: "api_key",
            resource_id: &k2_id,
            user_id: Some("usr_principal"),
            details: json!({"name": "made by admin", "scopes": ["read"],
                            "principal_type": "user", "principal_id": "usr_k2"}),
        },
        Audited {
            action: "revoke",
            resource_type: "api_key",
            resource_id: &k1.id,
            user_id: None,
            details: json!({}),
        },
        Audited {
            action: "create",
            resource_type: "api_key",
            resource_id: &k1.id,
            user_id: None,
            details: json!({"name": "robot", "scopes": ["read", "write"],
                            "principal_type": "service_account", "principal_id": "sa_robot"}),
        },
        Audited {
            action: "create",
            resource_type: "api_key",
            resource_id: &admin.id,
            user_id: None,
            details: json!({"name": "ops admin", "scopes": ["read", "admin"],
                            "principal_type": "user", "principal_id": "usr_principal"}),
        },
        Audited {
            action: "create",
            resource_type: "org",
            resource_id: org,
            user_id: None,
            details: json!({"name": format!("Org {org}")}),
        },
    ];
    let check = |items: &[Value]| {
        assert_eq!(items.len(), want.len(), "{items:#?}");
        for (item, w) in items.iter().zip(&want) {
            check_item(item, org);
            assert_eq!(item["action"], w.action, "{item}");
            assert_eq!(item["resource_type"], w.resource_type, "{item}");
            assert_eq!(item["resource_id"], w.resource_id, "{item}");
            assert_eq!(item["user_id"], json!(w.user_id), "{item}");
            assert_eq!(item["ip_address"], "127.0.0.1", "{item}");
            let text = item["details"].as_str().expect("details is JSON text");
            let details: Value = serde_json::from_str(text).unwrap();
            assert_eq!(details, w.details, "{item}");
        }
        // Newest first: the reverse of the order the changes were made in.
        for p in items.windows(2) {
            let a = (p[0]["created_at"].as_str(), p[0]["id"].as_str());
            let b = (p[1]["created_at"].as_str(), p[1]["id"].as_str());
            assert!(a > b, "{a:?} then {b:?}");
        }
    };
    let items = walk(&server, &admin.secret, org, "", 200).await;
    check(&items);
    // The filters find them like any entry.
    let revokes = ok(&server, &admin.secret, "/v1/audit-log?action=revoke").await;
    assert_eq!(revokes["audit_log"], json!([items[0], items[2]]));
    let k1_entries = ok(
        &server,
        &admin.secret,
        &format!("/audit-log?resource_type=api_key&resource_id={}", k1.id),
    )
    .await;
    assert_eq!(k1_entries["audit_log"], json!([items[2], items[3]]));

    // No-ops and refused changes write nothing: revoking a revoked key (both APIs), bad
    // bodies, unknown keys, a key without admin, a duplicate org.
    expect(revoke_k2().send().await.unwrap(), StatusCode::OK).await;
    let resp = server
        .operator(Method::DELETE, &op_revoke)
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &admin.secret)
        .json(&json!({"name": "incomplete"}))
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("scopes"),
    )
    .await;
    for id in ["0190f5a2-0000-7000-8000-0000000000ff", "not-a-uuid"] {
        let resp = server
            .request(Method::DELETE, &format!("/v1/api-keys/{id}"))
            .header("x-api-key", &admin.secret)
            .send()
            .await
            .unwrap();
        expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
    }
    let reader = server.create_key(org, &["read"]).await;
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &reader.secret)
        .json(
            &json!({"name": "nope", "scopes": ["read"], "principal_type": "user",
                      "principal_id": "usr_x"}),
        )
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    let resp = server
        .operator(Method::POST, "/admin/v1/orgs")
        .json(&json!({"id": org, "name": "again"}))
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::CONFLICT, "conflict", None).await;
    // (The reader key's own creation is the one new entry.)
    let after = walk(&server, &admin.secret, org, "", 200).await;
    assert_eq!(after.len(), items.len() + 1, "{after:#?}");
    assert_eq!(after[1..], items[..]);
    assert_eq!(after[0]["resource_id"], reader.id.as_str());
    assert_eq!(after[0]["action"], "create");

    // Reads are never audited, whatever they read.
    for path in [
        "/v1/audit-log".to_owned(),
        "/v1/audit-log".to_owned(),
        "/audit-log?action=create".to_owned(),
        "/v1/audit-log/verify".to_owned(),
        "/v1/api-keys".to_owned(),
        format!("/v1/api-keys/{k2_id}"),
        "/v1/logs".to_owned(),
    ] {
        ok(&server, &admin.secret, &path).await;
    }
    for path in [
        format!("/admin/v1/orgs/{org}"),
        format!("/admin/v1/orgs/{org}/api-keys"),
        format!("/admin/v1/orgs/{org}/api-keys/{}", k1.id),
        "/admin/v1/orgs".to_owned(),
    ] {
        let resp = server.operator(Method::GET, &path).send().await.unwrap();
        expect(resp, StatusCode::OK).await;
    }
    assert_eq!(walk(&server, &admin.secret, org, "", 200).await, after);

    // No secret, nor any `atk_` value, anywhere in what the audit routes print.
    for path in [
        "/v1/audit-log?limit=200",
        "/audit-log?limit=200",
        "/v1/audit-log/verify",
    ] {
        let text = get(&server, &admin.secret, path)
            .await
            .text()
            .await
            .unwrap();
        for secret in [&admin.secret, &k1.secret, &k2_secret, &reader.secret] {
            assert!(secret.starts_with("atk_"));
            assert!(!text.contains(secret.as_str()), "{path} prints a secret");
        }
        assert!(!text.contains("atk_"), "{path}: {text}");
    }

    // An org created without an id is audited under its generated id, in its own log only.
    let resp = server
        .operator(Method::POST, "/admin/v1/orgs")
        .json(&json!({"name": "Generated"}))
        .send()
        .await
        .unwrap();
    let generated = expect(resp, StatusCode::CREATED).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gen_key = server.create_key(&generated, &["read"]).await;
    let gen_items = walk(&server, &gen_key.secret, &generated, "", 200).await;
    assert_eq!(gen_items.len(), 2, "{gen_items:#?}");
    assert_eq!(
        (&gen_items[1]["resource_type"], &gen_items[1]["action"]),
        (&json!("org"), &json!("create"))
    );
    assert_eq!(gen_items[1]["resource_id"], generated.as_str());
    assert_eq!(gen_items[1]["details"], r#"{"name":"Generated"}"#);
    assert_eq!(gen_items[0]["resource_id"], gen_key.id.as_str());
    assert_eq!(walk(&server, &admin.secret, org, "", 200).await, after);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Verify.
// ---------------------------------------------------------------------------------------------

fn check_report(report: &Value, entries: usize) -> String {
    assert_eq!(
        keys_of(report),
        BTreeSet::from([
            "entries_checked",
            "first_bad_id",
            "head_hash",
            "ok",
            "problem"
        ]),
        "{report}"
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries_checked"], entries, "{report}");
    assert_eq!(report["first_bad_id"], Value::Null, "{report}");
    assert_eq!(report["problem"], Value::Null, "{report}");
    let head = report["head_hash"].as_str().unwrap();
    assert!(
        head.len() == 64
            && head
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{report}"
    );
    head.to_owned()
}

/// `GET /v1/audit-log/verify` on an org with ingested and self-audited entries reports an
/// intact chain over all of them, with a head hash that moves with every new entry (and only
/// then); each org has its own chain; it needs a key with `read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_an_intact_chain_over_every_entry() {
    let server = TestServer::start().await;
    let (key, _) = setup(&server, "verify-a").await;
    let (other, _) = setup(&server, "verify-b").await;
    let mut rng = Rng(0x7E21F7);
    let entries: Vec<Entry> = (0..250).map(|_| gen_entry(&mut rng, 30)).collect();
    ingest_all(&server, &key.secret, &entries).await;
    let reader = server.create_key("verify-a", &["read"]).await;
    let total = walk(&server, &key.secret, "verify-a", "", 200).await.len();
    assert_eq!(total, 2 + 250 + 1);

    let report = ok(&server, &reader.secret, "/v1/audit-log/verify").await;
    let head = check_report(&report, total);
    assert_snapshot(CRATE, "audit_verify", &report, &["head_hash"]);
    // Reads and re-sent ids change nothing.
    ok(&server, &key.secret, "/v1/audit-log?limit=200").await;
    let res = ingest_entries(&server, &key.secret, &entries[..10]).await;
    assert_eq!(res, json!({"accepted": 0, "duplicates": 10}));
    let again = ok(&server, &key.secret, "/v1/audit-log/verify").await;
    assert_eq!(check_report(&again, total), head);
    // One more ingested entry moves the head; so does a self-audited change.
    ingest_entries(&server, &key.secret, &[gen_entry(&mut rng, 30)]).await;
    let report = ok(&server, &key.secret, "/v1/audit-log/verify").await;
    let head2 = check_report(&report, total + 1);
    assert_ne!(head2, head);
    let resp = server
        .operator(
            Method::DELETE,
            &format!("/admin/v1/orgs/verify-a/api-keys/{}", reader.id),
        )
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
    let report = ok(&server, &key.secret, "/v1/audit-log/verify").await;
    let head3 = check_report(&report, total + 2);
    assert!(head3 != head2 && head3 != head);

    // The other org's chain is its own.
    let b_report = ok(&server, &other.secret, "/v1/audit-log/verify").await;
    let b_head = check_report(&b_report, 2);
    assert!(b_head != head3);

    // Credentials: none → 401, without read → 403, the operator token → 403.
    let resp = server
        .request(Method::GET, "/v1/audit-log/verify")
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    // The revoked reader is refused.
    expect_native_error(
        get(&server, &reader.secret, "/v1/audit-log/verify").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    let writer = server.create_key("verify-a", &["write", "admin"]).await;
    expect_native_error(
        get(&server, &writer.secret, "/v1/audit-log/verify").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    let resp = server
        .operator(Method::GET, "/v1/audit-log/verify")
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    // The writer's creation is one more entry, checked too.
    let report = ok(&server, &key.secret, "/v1/audit-log/verify").await;
    check_report(&report, total + 3);
    server.stop().await;
}

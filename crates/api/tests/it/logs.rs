//! HTTP integration tests of `GET /v1/logs` (the logs dialect, seed 003): every parameter,
//! default and bound; page walks checked against an in-test reference model, also while
//! records keep arriving; every error in the native envelope naming its parameter; and the
//! self-logging of the endpoint itself.
//!
//! Every test starts the real app on `127.0.0.1:0` over a fresh SQLite store and talks HTTP
//! to it. Expectations are computed by the reference model in this file from what the test
//! ingested (filter, then order by key and id, both in the sort direction), never copied from
//! the server's answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::reference;

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitrail_testkit::{Options, TestServer, expect, expect_native_error};
use reference::{
    BASE_MS, DAY_MS, Rng, civil_from_days, days_from_civil, now_ms, parse_utc, rfc3339, utc,
};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The shared reference clock is right.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_reference_clock_is_right() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2024, 3, 10), 19_792);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(days_from_civil(1600, 2, 29), -135_081);
    for z in [-800_000, -135_081, -1, 0, 1, 11_017, 19_792, 2_932_896] {
        let (y, m, d) = civil_from_days(z);
        assert_eq!(days_from_civil(y, m, d), z);
    }
    assert_eq!(utc(BASE_MS), "2024-03-10T00:00:00.000Z");
    assert_eq!(utc(-1), "1969-12-31T23:59:59.999Z");
    assert_eq!(
        rfc3339(BASE_MS, -330, "789", false),
        "2024-03-09T18:30:00.000789-05:30"
    );
    for ms in [-1, 0, BASE_MS + 123, 253_402_300_799_999] {
        assert_eq!(parse_utc(&utc(ms)), ms);
    }
    assert_eq!(
        reference::with_offset(BASE_MS + 1_234, -330),
        "2024-03-09T18:30:01.234-05:30"
    );
    assert!(reference::is_utc_millis(&utc(BASE_MS)));
    assert!(!reference::is_utc_millis("2024-03-10T00:00:00Z"));
    assert!(!reference::is_utc_millis("2024-03-10T00:00:00.000+00:00"));
}

// ---------------------------------------------------------------------------------------------
// The reference model: records as ingested, filters, orders.
// ---------------------------------------------------------------------------------------------

/// One ingested request log, as the test knows it.
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    created_ms: i64,
    /// `created_at` as sent to ingest (any offset, maybe sub-millisecond digits).
    created_in: String,
    duration: Option<i64>,
    status: u16,
    /// The method as sent (maybe lowercase); the server stores it uppercase.
    method: String,
    path: String,
    route: Option<String>,
    request_id: Option<String>,
    auth_type: Option<String>,
    error_code: Option<String>,
}

impl Rec {
    fn ingest_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "created_at": self.created_in,
            "method": self.method,
            "path": self.path,
            "status_code": self.status,
        });
        let mut put = |k: &str, x: Option<Value>| {
            if let Some(x) = x {
                v[k] = x;
            }
        };
        put("duration_ms", self.duration.map(Value::from));
        put("route_pattern", self.route.clone().map(Value::from));
        put("request_id", self.request_id.clone().map(Value::from));
        put("auth_type", self.auth_type.clone().map(Value::from));
        put("error_code", self.error_code.clone().map(Value::from));
        v
    }

    /// The item the logs dialect must print: exactly the seed's ten fields, nulls included.
    fn wire(&self) -> Value {
        json!({
            "auth_type": self.auth_type,
            "created_at": utc(self.created_ms),
            "duration_ms": self.duration,
            "error_code": self.error_code,
            "id": self.id,
            "method": self.method.to_ascii_uppercase(),
            "path": self.path,
            "request_id": self.request_id,
            "route_pattern": self.route,
            "status_code": self.status,
        })
    }
}

/// Writes `ms` in a randomly chosen but equivalent RFC 3339 spelling.
fn spell(rng: &mut Rng, ms: i64) -> String {
    let offset = rng.pick(&[0i64, 0, 120, -330, 840, -720, 345]);
    let zulu = offset == 0 && rng.chance(70);
    let extra = if rng.chance(20) {
        rng.pick(&["789", "000001", "5"])
    } else {
        ""
    };
    rfc3339(ms, offset, extra, zulu)
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "get", "POST", "post", "PUT", "DELETE", "PATCH", "OPTIONS",
];
const STATUSES: &[u16] = &[
    100, 200, 200, 200, 201, 204, 301, 304, 399, 400, 401, 403, 404, 404, 409, 422, 429, 500, 502,
    503, 599,
];
const AUTH_TYPES: &[Option<&str>] = &[Some("api_key"), Some("jwt"), Some("session"), None];

/// A random record whose `created_at` falls on one of `slots` instants 250 ms apart from
/// [`BASE_MS`] (few slots, many ties).
fn gen_rec(rng: &mut Rng, slots: u64) -> Rec {
    let created_ms = BASE_MS + rng.below(slots) as i64 * 250;
    let duration = if rng.chance(15) {
        None
    } else {
        Some(rng.below(25) as i64)
    };
    let status = rng.pick(STATUSES);
    let (route, path) = match rng.below(4) {
        0 => (
            Some("/v1/participants/{id}".to_owned()),
            format!("/v1/participants/p_{}", rng.below(5)),
        ),
        1 => (Some("/v1/events".to_owned()), "/v1/events".to_owned()),
        2 => (
            Some("/v1/events/{id}".to_owned()),
            format!("/v1/events/ev_{}", rng.below(1000)),
        ),
        _ => (None, "/healthz".to_owned()),
    };
    let tag = rng.below(40);
    let request_id = match rng.below(3) {
        0 => None,
        1 => Some(format!("req_t{tag:02}")),
        _ => Some(format!("t{tag:02}")),
    };
    let error_code = (status >= 400 && rng.chance(50)).then(|| {
        rng.pick(&["not_found", "rate_limited", "internal"])
            .to_owned()
    });
    Rec {
        id: rng.uuid(),
        created_ms,
        created_in: spell(rng, created_ms),
        duration,
        status,
        method: rng.pick(METHODS).to_owned(),
        path,
        route,
        request_id,
        auth_type: rng.pick(AUTH_TYPES).map(str::to_owned),
        error_code,
    }
}

/// `n` random records plus edge cases: ids that differ only at the ends of their bytes (so an
/// order comparing ids as signed integers or as text of another case would show), times at
/// the edges of the ingest window (its floor, 2000-01-01, and a minute ahead of the clock),
/// the extreme durations.
fn dataset(seed: u64, n: usize) -> Vec<Rec> {
    let mut rng = Rng(seed);
    let slots = (n as u64 * 2 / 5).max(1);
    let mut recs: Vec<Rec> = (0..n).map(|_| gen_rec(&mut rng, slots)).collect();
    for id in [
        "00000000-0000-0000-0000-000000000001",
        "00000000-0000-0000-0000-000000000002",
        "7fffffff-ffff-ffff-ffff-ffffffffffff",
        "80000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-fffffffffffe",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ] {
        let mut r = gen_rec(&mut rng, slots);
        r.id = id.to_owned();
        r.created_ms = BASE_MS + 1000;
        r.created_in = spell(&mut rng, r.created_ms);
        r.duration = Some(7);
        r.status = 404;
        recs.push(r);
    }
    let floor = days_from_civil(2000, 1, 1) * DAY_MS;
    for ms in [
        floor,
        floor + 1,
        floor + DAY_MS * 365 + 1,
        now_ms() + 60_000,
    ] {
        let mut r = gen_rec(&mut rng, slots);
        r.created_ms = ms;
        r.created_in = spell(&mut rng, ms);
        recs.push(r);
    }
    for d in [0, 2_147_483_647] {
        let mut r = gen_rec(&mut rng, slots);
        r.duration = Some(d);
        recs.push(r);
    }
    recs
}

/// The filters of `GET /v1/logs`, with the reference semantics.
#[derive(Debug, Clone, Default)]
struct Filter {
    method: Option<String>,
    route_pattern: Option<String>,
    request_id: Option<String>,
    auth_type: Option<String>,
    status_min: Option<u16>,
    status_max: Option<u16>,
    /// Inclusive: the instant, and how it is spelled in the query.
    from: Option<(i64, String)>,
    /// Exclusive.
    to: Option<(i64, String)>,
}

fn same_request_id(want: &str, have: &str) -> bool {
    let bare = |s: &str| s.strip_prefix("req_").unwrap_or(s).to_owned();
    want == have || bare(want) == have || want == bare(have)
}

impl Filter {
    fn matches(&self, r: &Rec) -> bool {
        let text = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(&r.method))
            && text(&self.route_pattern, &r.route)
            && self.request_id.as_ref().is_none_or(|want| {
                r.request_id
                    .as_deref()
                    .is_some_and(|have| same_request_id(want, have))
            })
            && text(&self.auth_type, &r.auth_type)
            && self.status_min.is_none_or(|s| r.status >= s)
            && self.status_max.is_none_or(|s| r.status <= s)
            && self.from.as_ref().is_none_or(|(t, _)| r.created_ms >= *t)
            && self.to.as_ref().is_none_or(|(t, _)| r.created_ms < *t)
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        let mut add = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                p.push((k, v));
            }
        };
        add("method", self.method.clone());
        add("route_pattern", self.route_pattern.clone());
        add("request_id", self.request_id.clone());
        add("auth_type", self.auth_type.clone());
        add("status_min", self.status_min.map(|s| s.to_string()));
        add("status_max", self.status_max.map(|s| s.to_string()));
        add("from", self.from.as_ref().map(|(_, s)| s.clone()));
        add("to", self.to.as_ref().map(|(_, s)| s.clone()));
        p
    }
}

/// A query string with every value form-encoded.
fn encode(pairs: &[(&str, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    CreatedAt,
    DurationMs,
    StatusCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Order {
    by: By,
    desc: bool,
}

impl Order {
    const DEFAULT: Order = Order {
        by: By::CreatedAt,
        desc: true,
    };

    fn all() -> Vec<Order> {
        [By::CreatedAt, By::DurationMs, By::StatusCode]
            .into_iter()
            .flat_map(|by| [true, false].map(|desc| Order { by, desc }))
            .collect()
    }

    fn name(self) -> &'static str {
        match self.by {
            By::CreatedAt => "created_at",
            By::DurationMs => "duration_ms",
            By::StatusCode => "status_code",
        }
    }

    /// The query pairs; with `terse`, defaults (created_at, desc) are left out.
    fn pairs(self, terse: bool) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(terse && self.by == By::CreatedAt) {
            p.push(("sort_by", self.name().to_owned()));
        }
        if !(terse && self.desc) {
            p.push((
                "sort_dir",
                if self.desc { "desc" } else { "asc" }.to_owned(),
            ));
        }
        p
    }

    /// The sort key of a record; an absent duration sorts below every known one.
    fn rec_key(self, r: &Rec) -> i64 {
        match self.by {
            By::CreatedAt => r.created_ms,
            By::DurationMs => r.duration.unwrap_or(-1),
            By::StatusCode => i64::from(r.status),
        }
    }

    /// The sort key of a served item, read from its wire fields.
    fn item_key(self, item: &Value) -> i64 {
        match self.by {
            By::CreatedAt => parse_utc(item["created_at"].as_str().unwrap()),
            By::DurationMs => item["duration_ms"].as_i64().unwrap_or(-1),
            By::StatusCode => item["status_code"].as_i64().unwrap(),
        }
    }

    /// The walk order over `(key, id)`: the key, then the id's bytes (which for lowercase
    /// hyphenated UUIDs is their text order), both in the sort direction.
    fn cmp(self, a: (i64, &str), b: (i64, &str)) -> Ordering {
        let asc = a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1));
        if self.desc { asc.reverse() } else { asc }
    }
}

/// What the server must list: the matching records, in `order`.
fn model<'a>(recs: &'a [Rec], filter: &Filter, order: Order) -> Vec<&'a Rec> {
    let mut out: Vec<&Rec> = recs.iter().filter(|r| filter.matches(r)).collect();
    out.sort_by(|a, b| order.cmp((order.rec_key(a), &a.id), (order.rec_key(b), &b.id)));
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers.
// ---------------------------------------------------------------------------------------------

async fn ingest_all(server: &TestServer, secret: &str, recs: &[Rec]) {
    for chunk in recs.chunks(500) {
        let body = Value::Array(chunk.iter().map(Rec::ingest_json).collect());
        let res = server.ingest(secret, &body, StatusCode::ACCEPTED).await;
        assert_eq!(res, json!({"accepted": chunk.len(), "duplicates": 0}));
    }
}

async fn get(server: &TestServer, secret: &str, query: &str) -> Response {
    server
        .get(&format!("/v1/logs?{query}"), secret)
        .send()
        .await
        .unwrap()
}

/// A 400 `invalid_parameter` in the native envelope naming `param`.
async fn expect_param_error(server: &TestServer, secret: &str, query: &str, param: &str) {
    let body = expect_native_error(
        get(server, secret, query).await,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        Some(param),
    )
    .await;
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "?{query}: the envelope is {{error, request_id}}: {body}"
    );
}

fn is_url_safe(cursor: &str) -> bool {
    !cursor.is_empty()
        && cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a page's envelope and returns `(data, has_more, next_cursor)`.
fn page_parts(page: &Value) -> (Vec<Value>, bool, Option<String>) {
    let obj = page.as_object().expect("a page is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["data", "pagination"], "{page}");
    let pagination = page["pagination"].as_object().unwrap();
    let mut pkeys: Vec<&str> = pagination.keys().map(String::as_str).collect();
    pkeys.sort_unstable();
    assert_eq!(pkeys, ["has_more", "next_cursor"], "{page}");
    let has_more = page["pagination"]["has_more"]
        .as_bool()
        .expect("has_more is a boolean");
    let next = match &page["pagination"]["next_cursor"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("next_cursor must be a string or null, got {other}"),
    };
    assert_eq!(
        has_more,
        next.is_some(),
        "next_cursor is null exactly when has_more is false: {}",
        page["pagination"]
    );
    if let Some(c) = &next {
        assert!(is_url_safe(c), "cursor {c:?} is not URL-safe as it stands");
    }
    (page["data"].as_array().unwrap().clone(), has_more, next)
}

const ITEM_FIELDS: [&str; 10] = [
    "auth_type",
    "created_at",
    "duration_ms",
    "error_code",
    "id",
    "method",
    "path",
    "request_id",
    "route_pattern",
    "status_code",
];

fn assert_item_shape(item: &Value) {
    let mut keys: Vec<&str> = item
        .as_object()
        .expect("an item is an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys, ITEM_FIELDS,
        "an item has exactly the seed's fields: {item}"
    );
}

/// Walks every page of `?query`, the n-th page asking for `limits[n % len]` items and
/// passing the previous `next_cursor` verbatim (cursors are URL-safe as they stand).
/// Between pages, `between` is awaited (used to interleave inserts).
async fn walk_with<F, Fut>(
    server: &TestServer,
    secret: &str,
    query: &str,
    limits: &[u32],
    mut between: F,
) -> Vec<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 0.. {
        assert!(n < 10_000, "?{query}: the walk does not end");
        let limit = limits[n % limits.len()];
        let mut q = join(&[query, &format!("limit={limit}")]);
        if let Some(c) = &cursor {
            q.push_str("&cursor=");
            q.push_str(c);
        }
        let (data, has_more, next) = page_parts(&server.logs(secret, &q).await);
        assert!(data.len() <= limit as usize, "?{q}: more than limit items");
        if cursor.is_some() {
            assert!(
                !data.is_empty(),
                "?{q}: the previous page said has_more, but this page is empty"
            );
        }
        if has_more {
            assert_eq!(
                data.len(),
                limit as usize,
                "?{q}: a short page with has_more"
            );
        }
        for item in &data {
            assert_item_shape(item);
        }
        items.extend(data);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        between().await;
    }
    items
}

async fn walk(server: &TestServer, secret: &str, query: &str, limits: &[u32]) -> Vec<Value> {
    walk_with(server, secret, query, limits, || async {}).await
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that `got` lists exactly `want`, in order, field by field.
fn assert_listing(label: &str, got: &[Value], want: &[&Rec]) {
    let got_ids = ids(got);
    let want_ids: Vec<String> = want.iter().map(|r| r.id.clone()).collect();
    if got_ids != want_ids {
        let at = got_ids
            .iter()
            .zip(&want_ids)
            .position(|(a, b)| a != b)
            .unwrap_or(got_ids.len().min(want_ids.len()));
        panic!(
            "{label}: got {} items, the model expects {}; first difference at index {at}: \
             got {:?}, expected {:?}",
            got_ids.len(),
            want_ids.len(),
            got.get(at),
            want.get(at).map(|r| r.wire()),
        );
    }
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, &w.wire(), "{label}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Defaults and the item shape.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_are_50_newest_first_with_the_seed_item_shape() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let recs = dataset(1, 110);
    assert_eq!(recs.len(), 122);
    ingest_all(&server, &key.secret, &recs).await;
    let want = model(&recs, &Filter::default(), Order::DEFAULT);

    // No parameters: 50 items, created_at desc then id desc, a cursor to the rest.
    let page = server.logs(&key.secret, "").await;
    let (data, has_more, next) = page_parts(&page);
    assert_eq!(data.len(), 50);
    assert!(has_more);
    for item in &data {
        assert_item_shape(item);
    }
    assert_listing("page 1", &data, &want[..50]);
    apitrail_testkit::assert_snapshot(
        env!("CARGO_MANIFEST_DIR"),
        "logs_page",
        &server.logs(&key.secret, "limit=2").await,
        &["id", "created_at", "next_cursor"],
    );

    let (data2, has_more2, next2) = page_parts(
        &server
            .logs(&key.secret, &format!("cursor={}", next.unwrap()))
            .await,
    );
    assert!(has_more2);
    assert_listing("page 2", &data2, &want[50..100]);
    let page3 = server
        .logs(&key.secret, &format!("cursor={}", next2.unwrap()))
        .await;
    // The last page carries next_cursor as an explicit null, not a missing key.
    assert_eq!(
        page3["pagination"],
        json!({"has_more": false, "next_cursor": null})
    );
    assert_listing("page 3", &page_parts(&page3).0, &want[100..]);
    assert_eq!(
        page_parts(&server.logs(&key.secret, "cursor=").await).0,
        data,
        "an empty cursor is absent"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_print_nulls_and_utc_millisecond_timestamps() {
    let server = TestServer::start().await;
    let key = server.org_with_key("shape").await;

    // A bare record: every optional field absent, created_at defaulted to the ingest time.
    let before = now_ms();
    server
        .ingest(
            &key.secret,
            &json!([{"method": "get", "path": "/bare", "status_code": 204}]),
            StatusCode::ACCEPTED,
        )
        .await;
    let after = now_ms();
    let page = server.logs(&key.secret, "").await;
    let (data, has_more, _) = page_parts(&page);
    assert!(!has_more);
    assert_eq!(data.len(), 1);
    let item = &data[0];
    assert_item_shape(item);
    for absent in [
        "auth_type",
        "duration_ms",
        "error_code",
        "request_id",
        "route_pattern",
    ] {
        assert_eq!(
            item[absent],
            Value::Null,
            "{absent} is null when absent: {item}"
        );
    }
    assert_eq!(item["method"], "GET");
    assert_eq!(item["path"], "/bare");
    assert_eq!(item["status_code"], 204);
    let created = parse_utc(item["created_at"].as_str().unwrap());
    assert!(
        (before..=after).contains(&created),
        "created_at defaults to the time of ingest: {before} <= {created} <= {after}"
    );
    assert!(uuid::Uuid::try_parse(item["id"].as_str().unwrap()).is_ok());

    // Offsets are converted to UTC, printed with milliseconds and Z; finer digits truncate.
    let cases = [
        (
            "2024-05-01T14:00:00.123456+02:00",
            "2024-05-01T12:00:00.123Z",
        ),
        ("2024-02-29T22:00:00-05:30", "2024-03-01T03:30:00.000Z"),
        ("2024-01-01T00:00:00.9999Z", "2024-01-01T00:00:00.999Z"),
        ("2000-01-01T00:00:00.9995Z", "2000-01-01T00:00:00.999Z"),
        ("2026-06-15T08:07:06.5+00:00", "2026-06-15T08:07:06.500Z"),
    ];
    let mut recs = Vec::new();
    for (i, (input, printed)) in cases.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        recs.push(json!({
            "id": id, "method": "POST", "path": "/t", "status_code": 201, "created_at": input,
        }));
        // The expectation is the spec's rule applied independently: same instant, UTC, ms.
        assert_eq!(
            utc(parse_utc(printed)),
            *printed,
            "the expectation itself is canonical"
        );
    }
    let org2 = server.org_with_key("shape-times").await;
    server
        .ingest(&org2.secret, &Value::Array(recs), StatusCode::ACCEPTED)
        .await;
    let items = walk(&server, &org2.secret, "", &[100]).await;
    for (i, (input, printed)) in cases.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        let item = items.iter().find(|it| it["id"] == id.as_str()).unwrap();
        assert_eq!(item["created_at"], *printed, "created_at {input}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_see_only_their_own_logs() {
    let server = TestServer::start().await;
    let a = server.org_with_key("org-a").await;
    let b = server.org_with_key("org-b").await;
    let ra = dataset(11, 60);
    let rb = dataset(12, 40);
    ingest_all(&server, &a.secret, &ra).await;
    ingest_all(&server, &b.secret, &rb).await;
    assert_listing(
        "org a",
        &walk(&server, &a.secret, "", &[100]).await,
        &model(&ra, &Filter::default(), Order::DEFAULT),
    );
    assert_listing(
        "org b",
        &walk(&server, &b.secret, "", &[100]).await,
        &model(&rb, &Filter::default(), Order::DEFAULT),
    );
    // A cursor issued to org a, replayed by org b, never reveals a's records.
    let pa = server.logs(&a.secret, "limit=5").await;
    let cursor = pa["pagination"]["next_cursor"].as_str().unwrap();
    let resp = get(&server, &b.secret, &format!("cursor={cursor}&limit=100")).await;
    if resp.status() == StatusCode::OK {
        let page = expect(resp, StatusCode::OK).await;
        // (The edge-case ids of `dataset` are in both orgs, legitimately: ids are per org.)
        let b_ids: HashSet<&str> = rb.iter().map(|r| r.id.as_str()).collect();
        let a_ids: HashSet<String> = ra
            .iter()
            .filter(|r| !b_ids.contains(r.id.as_str()))
            .map(|r| r.id.clone())
            .collect();
        assert!(
            ids(page["data"].as_array().unwrap())
                .iter()
                .all(|id| !a_ids.contains(id))
        );
    } else {
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some("cursor"),
        )
        .await;
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Every parameter.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_bounds_are_enforced_never_clamped() {
    let server = TestServer::start().await;
    let key = server.org_with_key("limits").await;
    let recs = dataset(2, 108);
    assert_eq!(recs.len(), 120);
    ingest_all(&server, &key.secret, &recs).await;
    let want = model(&recs, &Filter::default(), Order::DEFAULT);

    for (q, n, more) in [
        ("limit=1", 1, true),
        ("limit=2", 2, true),
        ("limit=50", 50, true),
        ("limit=100", 100, true),
        ("limit=", 50, true),
        ("", 50, true),
    ] {
        let (data, has_more, _) = page_parts(&server.logs(&key.secret, q).await);
        assert_eq!(has_more, more, "?{q}");
        assert_listing(&format!("?{q}"), &data, &want[..n]);
    }
    // A last page that is exactly full still says has_more false.
    let first = server.logs(&key.secret, "limit=60").await;
    let cursor = first["pagination"]["next_cursor"].as_str().unwrap();
    let (data, has_more, next) = page_parts(
        &server
            .logs(&key.secret, &format!("limit=60&cursor={cursor}"))
            .await,
    );
    assert_eq!((data.len(), has_more, next), (60, false, None));

    for bad in [
        "0",
        "101",
        "-1",
        "abc",
        "1.5",
        "99999999999999999999",
        "4294967297",
        "%2B5",
        "%205",
        "1e2",
        "0x10",
        "ten",
    ] {
        expect_param_error(&server, &key.secret, &format!("limit={bad}"), "limit").await;
    }
    server.stop().await;
}

/// Filter cases over one data set: each filter alone and some combinations, each checked
/// with a full walk against the model; `meaningful` asserts the case filters something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_matches_the_reference_semantics() {
    let server = TestServer::start().await;
    let key = server.org_with_key("filters").await;
    let recs = dataset(3, 500);
    ingest_all(&server, &key.secret, &recs).await;
    let all = model(&recs, &Filter::default(), Order::DEFAULT);

    // The data set must hold what the cases below are about.
    assert!(recs.iter().any(|r| r.method == "post") && recs.iter().any(|r| r.method == "POST"));
    assert!(recs.iter().any(|r| r.path == "/v1/participants/p_3"));
    assert!(recs.iter().any(|r| r.request_id.as_deref() == Some("t07")));
    assert!(
        recs.iter()
            .any(|r| r.request_id.as_deref() == Some("req_t07"))
    );
    for s in [100, 404, 599] {
        assert!(recs.iter().any(|r| r.status == s));
    }

    let mut by_time: Vec<&Rec> = recs.iter().filter(|r| r.created_ms >= BASE_MS).collect();
    by_time.sort_by_key(|r| r.created_ms);
    let t_from = by_time[by_time.len() / 4].created_ms;
    let t_to = by_time[by_time.len() * 3 / 4].created_ms;
    assert!(recs.iter().any(|r| r.created_ms == t_from));
    assert!(recs.iter().any(|r| r.created_ms == t_to));

    // A request id held by an /v1/events/{id} record inside the window, asked for in the
    // other spelling.
    let combo_rid = by_time
        .iter()
        .filter(|r| (t_from..t_to).contains(&r.created_ms))
        .filter(|r| r.route.as_deref() == Some("/v1/events/{id}"))
        .find_map(|r| r.request_id.as_deref())
        .map(|rid| match rid.strip_prefix("req_") {
            Some(bare) => bare.to_owned(),
            None => format!("req_{rid}"),
        })
        .unwrap();
    let f = Filter::default;
    let cases: Vec<(&str, Filter)> = vec![
        (
            "method=post (lowercase)",
            Filter {
                method: Some("post".into()),
                ..f()
            },
        ),
        (
            "method=GET",
            Filter {
                method: Some("GET".into()),
                ..f()
            },
        ),
        (
            "method=Get",
            Filter {
                method: Some("Get".into()),
                ..f()
            },
        ),
        (
            "method=OPTIONS",
            Filter {
                method: Some("OPTIONS".into()),
                ..f()
            },
        ),
        (
            "route_pattern template",
            Filter {
                route_pattern: Some("/v1/participants/{id}".into()),
                ..f()
            },
        ),
        (
            "route_pattern=/v1/events",
            Filter {
                route_pattern: Some("/v1/events".into()),
                ..f()
            },
        ),
        (
            "request_id=t07",
            Filter {
                request_id: Some("t07".into()),
                ..f()
            },
        ),
        (
            "request_id=req_t07",
            Filter {
                request_id: Some("req_t07".into()),
                ..f()
            },
        ),
        (
            "auth_type=jwt",
            Filter {
                auth_type: Some("jwt".into()),
                ..f()
            },
        ),
        (
            "auth_type=session",
            Filter {
                auth_type: Some("session".into()),
                ..f()
            },
        ),
        (
            "status_min=400",
            Filter {
                status_min: Some(400),
                ..f()
            },
        ),
        (
            "status_max=399",
            Filter {
                status_max: Some(399),
                ..f()
            },
        ),
        (
            "status 404..404",
            Filter {
                status_min: Some(404),
                status_max: Some(404),
                ..f()
            },
        ),
        (
            "status 400..404",
            Filter {
                status_min: Some(400),
                status_max: Some(404),
                ..f()
            },
        ),
        (
            "status_min=599",
            Filter {
                status_min: Some(599),
                ..f()
            },
        ),
        (
            "status_max=100",
            Filter {
                status_max: Some(100),
                ..f()
            },
        ),
        (
            "from (+02:00, inclusive)",
            Filter {
                from: Some((t_from, rfc3339(t_from, 120, "", false))),
                ..f()
            },
        ),
        (
            "to (-05:30, exclusive)",
            Filter {
                to: Some((t_to, rfc3339(t_to, -330, "", false))),
                ..f()
            },
        ),
        (
            "from..to (Z, +14:00)",
            Filter {
                from: Some((t_from, rfc3339(t_from, 0, "", true))),
                to: Some((t_to, rfc3339(t_to, 840, "", false))),
                ..f()
            },
        ),
        (
            "to just after an instant includes it",
            Filter {
                to: Some((t_to + 1, rfc3339(t_to + 1, 0, "", true))),
                ..f()
            },
        ),
        (
            "GET 2xx with an api key",
            Filter {
                method: Some("get".into()),
                status_min: Some(200),
                status_max: Some(299),
                auth_type: Some("api_key".into()),
                ..f()
            },
        ),
        (
            "route + request id + window",
            Filter {
                route_pattern: Some("/v1/events/{id}".into()),
                request_id: Some(combo_rid.clone()),
                from: Some((t_from - 100_000, rfc3339(t_from - 100_000, -720, "", false))),
                to: Some((t_to, rfc3339(t_to, 345, "", false))),
                ..f()
            },
        ),
    ];
    for (label, filter) in &cases {
        let want = model(&recs, filter, Order::DEFAULT);
        assert!(
            !want.is_empty() && want.len() < all.len(),
            "{label}: the case must select a proper, non-empty subset ({} of {})",
            want.len(),
            all.len()
        );
        let got = walk(&server, &key.secret, &encode(&filter.pairs()), &[100]).await;
        assert_listing(label, &got, &want);
    }

    // Both spellings of a request id select the same logs, stored with and without prefix.
    let bare = model(
        &recs,
        &Filter {
            request_id: Some("t07".into()),
            ..f()
        },
        Order::DEFAULT,
    );
    assert!(bare.iter().any(|r| r.request_id.as_deref() == Some("t07")));
    assert!(
        bare.iter()
            .any(|r| r.request_id.as_deref() == Some("req_t07"))
    );

    // The whole status range is everything.
    let got = walk(
        &server,
        &key.secret,
        "status_min=100&status_max=599",
        &[100],
    )
    .await;
    assert_listing("status 100..599", &got, &all);

    // Cases expected to select nothing, each next to records that a looser match would pick.
    let empty_window = format!(
        "from={}&to={}",
        encode_value(&utc(t_from)),
        encode_value(&rfc3339(t_from, 120, "", false))
    );
    for (label, q) in [
        (
            "a resolved path is not a route pattern",
            "route_pattern=%2Fv1%2Fparticipants%2Fp_3",
        ),
        ("request ids match exactly, not by prefix", "request_id=t0"),
        ("auth types match exactly", "auth_type=API_KEY"),
        ("from == to is an empty window", empty_window.as_str()),
    ] {
        let page = server.logs(&key.secret, q).await;
        assert_eq!(
            page,
            json!({"data": [], "pagination": {"has_more": false, "next_cursor": null}}),
            "{label}"
        );
    }

    // `+02:00` sent without percent-encoding arrives as a space; it still means +02:00.
    let window = Filter {
        from: Some((t_from, rfc3339(t_from, 120, "", false))),
        ..f()
    };
    let raw = format!("from={}", rfc3339(t_from, 120, "", false));
    assert!(raw.contains('+'));
    let got = walk(&server, &key.secret, &raw, &[100]).await;
    assert_listing(
        "unencoded +02:00",
        &got,
        &model(&recs, &window, Order::DEFAULT),
    );

    // Empty values are absent; unknown parameters are ignored.
    let first = page_parts(&server.logs(&key.secret, "").await).0;
    for q in [
        "method=&route_pattern=&request_id=&auth_type=&status_min=&status_max=&from=&to=\
         &sort_by=&sort_dir=&cursor=&limit=",
        "foo=bar&page=3&offset=10&LIMIT=1&Method=POST&sort=asc&status=500",
        "method=&method=",
        "limit=&limit=50",
    ] {
        assert_eq!(
            page_parts(&server.logs(&key.secret, q).await).0,
            first,
            "?{q}"
        );
    }
    server.stop().await;
}

fn encode_value(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_parameter_is_a_400_naming_it() {
    let server = TestServer::start().await;
    let key = server.org_with_key("errors").await;
    ingest_all(&server, &key.secret, &dataset(4, 30)).await;
    let cursor = server.logs(&key.secret, "limit=2").await["pagination"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut cases: Vec<(String, &str)> = Vec::new();
    let mut case = |q: &str, p: &'static str| cases.push((q.to_owned(), p));
    for v in [
        "99", "600", "0", "-1", "-200", "abc", "4xx", "1.5", "70000", "65936", "%2B200",
    ] {
        case(&format!("status_min={v}"), "status_min");
        case(&format!("status_max={v}"), "status_max");
    }
    case("status_min=500&status_max=400", "status_min");
    case("status_min=101&status_max=100", "status_min");
    for v in [
        "2024-01-01",
        "2024-01-01T00:00:00",
        "2024-01-01T00:00:00.000",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "yesterday",
        "1704067200",
        "2024-01-01T00:00:00%2B0200",
        "2024-01-01T00:00:00%2B24:00",
    ] {
        case(&format!("from={v}"), "from");
        case(&format!("to={v}"), "to");
    }
    case("from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z", "from");
    // The same instant spelled in two offsets is not an inverted window (checked below as a
    // 200), but one millisecond later is.
    case(
        "from=2024-01-01T02:00:00.001%2B02:00&to=2024-01-01T00:00:00Z",
        "from",
    );
    for v in [
        "path",
        "CREATED_AT",
        "created",
        "id",
        "created_at,id",
        "-created_at",
    ] {
        case(&format!("sort_by={v}"), "sort_by");
    }
    for v in ["up", "DESC", "Asc", "ascending", "1", "descending"] {
        case(&format!("sort_dir={v}"), "sort_dir");
    }
    // A cursor of another list (the operator's org list) is not a logs cursor.
    server.create_org("errors-2").await;
    let orgs = server
        .operator(reqwest::Method::GET, "/admin/v1/orgs?limit=1")
        .send()
        .await
        .unwrap();
    let org_cursor = expect(orgs, StatusCode::OK).await["pagination"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tampered = cursor.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for v in [
        "abc".to_owned(),
        "YWJjMTIz".to_owned(),
        "!!!".to_owned(),
        "%00".to_owned(),
        org_cursor,
        format!("{cursor}x"),
        cursor[..cursor.len() - 2].to_owned(),
        tampered,
    ] {
        case(&format!("cursor={v}"), "cursor");
    }
    case("method=GE%20T", "method");
    case("method=G%2FT", "method");
    for (p, v) in [
        ("limit", "5"),
        ("cursor", cursor.as_str()),
        ("method", "GET"),
        ("route_pattern", "%2Fv1%2Fevents"),
        ("request_id", "t01"),
        ("auth_type", "jwt"),
        ("status_min", "200"),
        ("status_max", "500"),
        ("from", "2024-01-01T00:00:00Z"),
        ("to", "2030-01-01T00:00:00Z"),
        ("sort_by", "created_at"),
        ("sort_dir", "desc"),
    ] {
        // Even the same value twice is refused: the API does not guess which one was meant.
        case(&format!("{p}={v}&{p}={v}"), p);
    }
    case("limit=5&limit=6", "limit");
    case("sort_dir=asc&sort_dir=desc", "sort_dir");
    case("foo=1&status_max=1000", "status_max");

    for (q, param) in &cases {
        expect_param_error(&server, &key.secret, q, param).await;
    }

    // Bounds and equal ends that are valid.
    for q in [
        "status_min=100&status_max=599",
        "status_min=404&status_max=404",
        "from=2024-01-01T02:00:00%2B02:00&to=2024-01-01T00:00:00Z",
    ] {
        expect(get(&server, &key.secret, q).await, StatusCode::OK).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_bound_to_their_sort_order() {
    let server = TestServer::start().await;
    let key = server.org_with_key("cursors").await;
    let recs = dataset(5, 200);
    ingest_all(&server, &key.secret, &recs).await;

    for issued in Order::all() {
        let q = encode(&issued.pairs(false));
        let page = server.logs(&key.secret, &join(&[&q, "limit=10"])).await;
        let cursor = page["pagination"]["next_cursor"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(is_url_safe(&cursor), "{cursor}");
        for other in Order::all() {
            for terse in [false, true] {
                let oq = join(&[
                    &encode(&other.pairs(terse)),
                    &format!("limit=10&cursor={cursor}"),
                ]);
                if other == issued {
                    // The same order, spelled out or by its defaults: the next page.
                    let (data, _, _) = page_parts(&server.logs(&key.secret, &oq).await);
                    let want = model(&recs, &Filter::default(), issued);
                    assert_listing(&format!("?{oq}"), &data, &want[10..20]);
                } else {
                    expect_param_error(&server, &key.secret, &oq, "cursor").await;
                }
            }
        }
        // A cursor survives a change of limit and of filters (its position is the sort key).
        let (data, _, _) = page_parts(
            &server
                .logs(
                    &key.secret,
                    &join(&[&q, &format!("limit=3&cursor={cursor}")]),
                )
                .await,
        );
        assert_listing(
            "limit changed",
            &data,
            &model(&recs, &Filter::default(), issued)[10..13],
        );
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Page walks against the reference model.
// ---------------------------------------------------------------------------------------------

/// The filters of the walk matrix, chosen from the data so each one selects something.
fn walk_filters(recs: &[Rec]) -> Vec<(String, Filter)> {
    let mut times: Vec<i64> = recs
        .iter()
        .map(|r| r.created_ms)
        .filter(|t| *t >= BASE_MS)
        .collect();
    times.sort_unstable();
    let (a, b) = (times[times.len() / 5], times[times.len() * 3 / 5]);
    let f = Filter::default;
    let out = vec![
        ("no filter".to_owned(), f()),
        (
            "method=post".to_owned(),
            Filter {
                method: Some("post".into()),
                ..f()
            },
        ),
        (
            "route template".to_owned(),
            Filter {
                route_pattern: Some("/v1/participants/{id}".into()),
                ..f()
            },
        ),
        (
            "request_id=req_t13".to_owned(),
            Filter {
                request_id: Some("req_t13".into()),
                ..f()
            },
        ),
        (
            "auth_type=api_key".to_owned(),
            Filter {
                auth_type: Some("api_key".into()),
                ..f()
            },
        ),
        (
            "status 400..499".to_owned(),
            Filter {
                status_min: Some(400),
                status_max: Some(499),
                ..f()
            },
        ),
        (
            "window".to_owned(),
            Filter {
                from: Some((a, rfc3339(a, 120, "", false))),
                to: Some((b, rfc3339(b, -330, "", false))),
                ..f()
            },
        ),
        (
            "GET, session, >= 300, from".to_owned(),
            Filter {
                method: Some("GET".into()),
                auth_type: Some("session".into()),
                status_min: Some(300),
                from: Some((a, rfc3339(a, 0, "", true))),
                ..f()
            },
        ),
    ];
    for (label, filter) in &out {
        assert!(
            recs.iter().any(|r| filter.matches(r)),
            "{label} selects nothing"
        );
    }
    out
}

async fn walk_matrix(by: By, seed: u64) {
    let server = TestServer::start().await;
    let key = server.org_with_key("walks").await;
    let recs = dataset(seed, 1500);
    ingest_all(&server, &key.secret, &recs).await;
    let filters = walk_filters(&recs);
    for desc in [true, false] {
        let order = Order { by, desc };
        for (i, (label, filter)) in filters.iter().enumerate() {
            // Alternate explicit and default spellings of the order.
            let q = join(&[&encode(&filter.pairs()), &encode(&order.pairs(i % 2 == 1))]);
            let want = model(&recs, filter, order);
            let limits: &[&[u32]] = if i == 0 {
                &[&[1, 3, 17, 100], &[17], &[100]]
            } else if want.len() <= 80 {
                &[&[1], &[1, 3, 17, 100]]
            } else {
                &[&[1, 3, 17, 100], &[100]]
            };
            for lim in limits {
                let got = walk(&server, &key.secret, &q, lim).await;
                assert_listing(&format!("{label}, ?{q}, limits {lim:?}"), &got, &want);
            }
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_by_created_at_match_the_model() {
    walk_matrix(By::CreatedAt, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_by_duration_ms_match_the_model() {
    walk_matrix(By::DurationMs, 22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_by_status_code_match_the_model() {
    walk_matrix(By::StatusCode, 23).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Walks while another task keeps inserting.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_stay_exact_while_records_keep_arriving() {
    let server = TestServer::start().await;
    let key = server.org_with_key("busy").await;
    let slots = 240;
    let mut rng = Rng(0xC0FF_EE00);
    let before: Vec<Rec> = (0..600).map(|_| gen_rec(&mut rng, slots)).collect();
    ingest_all(&server, &key.secret, &before).await;

    // The inserter: batches of 5 random records spread over the same time range (so some
    // land ahead of every cursor), through HTTP, until told to stop.
    let inserted: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let inserter = tokio::spawn({
        let (client, url) = (
            server.client.clone(),
            format!("{}/v1/ingest/requests", server.base),
        );
        let (secret, inserted, stop) =
            (key.secret.clone(), Arc::clone(&inserted), Arc::clone(&stop));
        async move {
            let mut rng = Rng(0xBEEF);
            let mut batches = 0u64;
            while !stop.load(AtomicOrdering::Relaxed) {
                let batch: Vec<Rec> = (0..5).map(|_| gen_rec(&mut rng, slots)).collect();
                inserted.lock().unwrap().extend(batch.iter().cloned());
                let body = Value::Array(batch.iter().map(Rec::ingest_json).collect());
                let resp = client
                    .post(&url)
                    .header("x-api-key", &secret)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let res = expect(resp, StatusCode::ACCEPTED).await;
                assert_eq!(res["accepted"], 5);
                batches += 1;
                tx.send_replace(batches);
            }
            batches
        }
    });

    let orders = [
        (Order::DEFAULT, 7),
        (
            Order {
                by: By::CreatedAt,
                desc: false,
            },
            7,
        ),
        (
            Order {
                by: By::DurationMs,
                desc: false,
            },
            11,
        ),
        (
            Order {
                by: By::StatusCode,
                desc: true,
            },
            13,
        ),
    ];
    let mut extras_seen = 0;
    for (order, limit) in orders {
        let want = model(&before, &Filter::default(), order);
        let q = encode(&order.pairs(false));
        // Between pages, wait until at least one more batch has been committed, so every
        // page boundary really has inserts behind and ahead of it.
        let got = walk_with(&server, &key.secret, &q, &[limit], || {
            let mut rx = rx.clone();
            async move {
                let seen = *rx.borrow_and_update();
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n > seen))
                    .await
                    .expect("the inserter made no progress within 10 s")
                    .expect("the inserter stopped");
            }
        })
        .await;

        let label = format!("?{q} while inserting");
        let got_ids = ids(&got);
        let unique: HashSet<&String> = got_ids.iter().collect();
        assert_eq!(
            unique.len(),
            got_ids.len(),
            "{label}: an id was served twice"
        );
        for w in got.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let ka = (order.item_key(a), a["id"].as_str().unwrap());
            let kb = (order.item_key(b), b["id"].as_str().unwrap());
            assert_eq!(
                order.cmp(ka, kb),
                Ordering::Less,
                "{label}: not strictly ordered: {ka:?} then {kb:?}"
            );
        }
        let before_ids: HashSet<&str> = before.iter().map(|r| r.id.as_str()).collect();
        let old: Vec<Value> = got
            .iter()
            .filter(|i| before_ids.contains(i["id"].as_str().unwrap()))
            .cloned()
            .collect();
        assert_listing(&label, &old, &want);
        let new_ids: HashSet<String> = inserted
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.id.clone())
            .collect();
        for item in got
            .iter()
            .filter(|i| !before_ids.contains(i["id"].as_str().unwrap()))
        {
            assert!(
                new_ids.contains(item["id"].as_str().unwrap()),
                "{label}: {item} is neither an old record nor a concurrently inserted one"
            );
        }
        extras_seen += got.len() - old.len();
    }
    stop.store(true, AtomicOrdering::Relaxed);
    let batches = inserter.await.unwrap();
    // One batch at least between any two pages: 85 + 85 + 54 + 46 page boundaries.
    assert!(
        batches >= 270,
        "the walks overlapped only {batches} inserts"
    );
    eprintln!("{batches} batches inserted during the walks; {extras_seen} new records seen");

    // Once quiet, a walk lists old and new records exactly as the model says.
    let mut everything = before.clone();
    everything.extend(inserted.lock().unwrap().iter().cloned());
    assert_eq!(everything.len(), 600 + 5 * batches as usize);
    let got = walk(&server, &key.secret, "", &[100]).await;
    assert_listing(
        "after the inserts",
        &got,
        &model(&everything, &Filter::default(), Order::DEFAULT),
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Error envelope and request ids.
// ---------------------------------------------------------------------------------------------

fn is_generated_request_id(s: &str) -> bool {
    s.len() == 30
        && s.starts_with("req_")
        && s[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_when_valid_and_generated_otherwise() {
    let server = TestServer::start().await;
    let key = server.org_with_key("rid").await;
    let long_ok = "a".repeat(128);
    let long_bad = "a".repeat(129);
    for (sent, echoed) in [
        (Some("my-req.ID_123"), true),
        (Some("x"), true),
        (Some(long_ok.as_str()), true),
        (Some(long_bad.as_str()), false),
        (Some("has space"), false),
        (Some("a/b"), false),
        (Some("a+b"), false),
        (Some("semi;colon"), false),
        (Some(""), false),
        (None, false),
    ] {
        for (query, status) in [
            ("limit=1", StatusCode::OK),
            ("limit=0", StatusCode::BAD_REQUEST),
        ] {
            let mut req = server.get(&format!("/v1/logs?{query}"), &key.secret);
            if let Some(s) = sent {
                req = req.header("x-request-id", s);
            }
            let resp = req.send().await.unwrap();
            let header = resp
                .headers()
                .get("x-request-id")
                .expect("every response carries X-Request-Id")
                .to_str()
                .unwrap()
                .to_owned();
            if echoed {
                assert_eq!(Some(header.as_str()), sent);
            } else {
                assert!(
                    is_generated_request_id(&header),
                    "{sent:?} must be replaced by req_ + 26 base32 characters, got {header:?}"
                );
            }
            if status == StatusCode::OK {
                expect(resp, StatusCode::OK).await;
            } else {
                // expect_native_error also checks that the body's request_id is the header's.
                let body = expect_native_error(
                    resp,
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    Some("limit"),
                )
                .await;
                assert_eq!(body["request_id"], header.as_str());
            }
        }
    }
    // Generated ids are fresh for every call.
    let a = get(&server, &key.secret, "").await;
    let b = get(&server, &key.secret, "").await;
    assert_ne!(a.headers()["x-request-id"], b.headers()["x-request-id"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_use_the_native_envelope() {
    let server = TestServer::start().await;
    let key = server.org_with_key("auth").await;
    let write_only = server.create_key("auth", &["write"]).await;

    let none = server
        .request(reqwest::Method::GET, "/v1/logs")
        .send()
        .await
        .unwrap();
    expect_native_error(none, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    // Authentication comes before parameter checks: no hint about parameters without a key.
    let none_bad = server
        .request(reqwest::Method::GET, "/v1/logs?limit=0")
        .send()
        .await
        .unwrap();
    expect_native_error(none_bad, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let unknown = get(&server, "atk_0000000000000000000000000000000000000000", "").await;
    expect_native_error(unknown, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let forbidden = get(&server, &write_only.secret, "").await;
    expect_native_error(forbidden, StatusCode::FORBIDDEN, "forbidden", None).await;
    let operator = get(&server, apitrail_testkit::ADMIN_TOKEN, "").await;
    assert!(
        matches!(
            operator.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ),
        "the operator token reads no dialect route"
    );
    // The org key itself works.
    server.logs(&key.secret, "").await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Self-logging.
// ---------------------------------------------------------------------------------------------

/// Polls `?query` until an item with `id` is listed, failing after `deadline`.
async fn poll_for(
    server: &TestServer,
    secret: &str,
    query: &str,
    id: &str,
    deadline: Instant,
) -> Value {
    loop {
        let page = server.logs(secret, query).await;
        if let Some(item) = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
        {
            return item.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the call's own log {id} was not listed within 1 s (?{query})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_v1_logs_are_self_logged_within_a_second() {
    let server = TestServer::start_with(Options {
        self_log: true,
        ..Default::default()
    })
    .await;
    let key = server.org_with_key("selflog").await;

    let carriers: [(&str, &str, &str); 4] = [
        ("x-api-key", "", "api_key"),
        ("authorization", "Bearer ", "api_key"),
        ("x-arklow-auth", "", "api_key"),
        (
            "cookie",
            "theme=dark; better-auth.session_token=",
            "session",
        ),
    ];
    let mut call_ids = Vec::new();
    for (i, (header, prefix, auth_type)) in carriers.iter().enumerate() {
        for (query, status) in [("limit=1", 200u16), ("limit=0", 400)] {
            let request_id = format!("selflog-{i}-{status}");
            let resp = server
                .request(reqwest::Method::GET, &format!("/v1/logs?{query}"))
                .header(*header, format!("{prefix}{}", key.secret))
                .header("x-request-id", &request_id)
                .send()
                .await
                .unwrap();
            let call_id = apitrail_testkit::header(&resp, "x-api-call-id");
            let body = expect(resp, StatusCode::from_u16(status).unwrap()).await;
            let returned = Instant::now();
            let deadline = returned + Duration::from_secs(1);
            let call_id = match call_id {
                Some(id) => id,
                None => {
                    assert_eq!(status, 400, "a successful call carries X-Api-Call-Id");
                    // Without the header, find the log by its request id.
                    let page = loop {
                        let p = server
                            .logs(&key.secret, &format!("request_id={request_id}"))
                            .await;
                        if !p["data"].as_array().unwrap().is_empty() {
                            break p;
                        }
                        assert!(Instant::now() < deadline, "{request_id} not logged in 1 s");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    page["data"][0]["id"].as_str().unwrap().to_owned()
                }
            };
            assert!(uuid::Uuid::try_parse(&call_id).is_ok(), "{call_id}");
            let item = poll_for(
                &server,
                &key.secret,
                &format!("request_id={request_id}"),
                &call_id,
                deadline,
            )
            .await;
            assert_item_shape(&item);
            assert_eq!(item["method"], "GET", "{item}");
            assert_eq!(item["path"], "/v1/logs", "{item}");
            assert_eq!(item["route_pattern"], "/v1/logs", "{item}");
            assert_eq!(item["status_code"], status, "{item}");
            assert_eq!(item["auth_type"], *auth_type, "{item}");
            assert_eq!(item["request_id"], request_id.as_str(), "{item}");
            assert!(
                item["duration_ms"].as_i64().is_some_and(|d| d >= 0),
                "{item}"
            );
            if status == 200 {
                assert_eq!(item["error_code"], Value::Null, "{item}");
            } else {
                assert_eq!(item["error_code"], body["error"]["code"], "{item}");
            }
            parse_utc(item["created_at"].as_str().unwrap());
            call_ids.push(call_id);
        }
    }
    // The route filter finds these calls by their template, the method filter too.
    let listed = ids(&walk(
        &server,
        &key.secret,
        "route_pattern=%2Fv1%2Flogs&method=get",
        &[100],
    )
    .await);
    for id in &call_ids {
        assert!(
            listed.contains(id),
            "{id} not listed under route_pattern=/v1/logs"
        );
    }
    server.stop().await;
}

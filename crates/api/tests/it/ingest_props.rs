//! Property tests of ingest validation over HTTP (SPEC §4, §11).
//!
//! 1. For arbitrary batches mixing valid and invalid field values, the API's verdict (202, or
//!    400 with a set of `(index, field)` problems) equals what an independent reference
//!    validator predicts from how each value was generated, and a refused batch stores
//!    nothing.
//! 2. For arbitrary valid records, `/v1/logs` returns what was ingested: method uppercased,
//!    `created_at` normalized to UTC milliseconds with `Z`, durations given or derived.
//!
//! Each case runs against one shared server with a fresh org. A record with an unknown field
//! or a value of the wrong JSON type is generated with no other problem: that the API then
//! hides the record's other problems is covered, as a bug report, by
//! `ingest.rs::an_unknown_field_does_not_hide_the_records_other_problems`.

#![allow(clippy::unwrap_used)]

use crate::http_support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use apitrail_testkit::{TestServer, expect};
use http_support::{all_logs, detail_pairs, stored_count};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::runtime::Handle;
use uuid::Uuid;

/// How a generated value fares under the rules of SPEC §4/§11, decided when it is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Acceptable.
    Ok,
    /// The right JSON type, but breaks a rule (range, format, required...).
    Bad,
    /// An unknown field or a value of the wrong JSON type.
    Shape,
}

type Field = (Value, Kind);

/// One generated record.
#[derive(Debug, Clone)]
enum Gen {
    /// A JSON value that is not an object.
    NotObject(Value),
    /// An object: field name to value and verdict.
    Object(BTreeMap<String, Field>),
}

/// Stands for the case's own org id in generated `org_id` values.
const OWN_ORG: &str = "$own-org$";

fn ok(v: Value) -> Field {
    (v, Kind::Ok)
}
fn bad(v: Value) -> Field {
    (v, Kind::Bad)
}
fn shape(v: Value) -> Field {
    (v, Kind::Shape)
}

/// Ids drawn from a small pool, so that batches repeat ids (in either case).
const POOL: [&str; 3] = [
    "0190f5a2-7b3c-7def-8123-456789abcdef",
    "0190f5a2-7b3c-7def-8123-456789abcde0",
    "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b",
];

/// Acceptable times lie within 24 days of each other, so that a duration derived from any two
/// of them fits the bound of `duration_ms`.
fn timestamp_ok() -> BoxedStrategy<Field> {
    prop_oneof![
        Just(ok(json!("2024-05-01T12:00:00Z"))),
        Just(ok(json!("2024-05-01T14:00:00.123456+02:00"))),
        Just(ok(json!("2024-05-12T23:59:59.999-05:00"))),
        Just(ok(json!(""))),
        Just(ok(Value::Null)),
    ]
    .boxed()
}

fn timestamp_bad() -> BoxedStrategy<Field> {
    prop_oneof![
        Just(bad(json!("2024-05-01T12:00:00"))),
        Just(bad(json!("2024-05-01"))),
        Just(bad(json!("yesterday"))),
        Just(bad(json!("2024-13-01T00:00:00Z"))),
        Just(bad(json!("2024-05-01T12:00:00+0200"))),
        // Outside the ingest window: before 2000, or far ahead of the server's clock.
        Just(bad(json!("1999-12-31T23:59:59.999Z"))),
        Just(bad(json!("9999-12-31T00:00:00Z"))),
    ]
    .boxed()
}

fn timestamp_shape() -> BoxedStrategy<Field> {
    prop_oneof![Just(shape(json!(1_714_000_000))), Just(shape(json!({})))].boxed()
}

fn count_field() -> (
    BoxedStrategy<Field>,
    BoxedStrategy<Field>,
    BoxedStrategy<Field>,
) {
    (
        prop_oneof![
            (0i64..100_000).prop_map(|n| ok(json!(n))),
            Just(ok(Value::Null))
        ]
        .boxed(),
        prop_oneof![
            (-100_000i64..0).prop_map(|n| bad(json!(n))),
            // Beyond what 32-bit clients of the zoo dialect can read.
            (i64::from(i32::MAX) + 1..i64::MAX).prop_map(|n| bad(json!(n))),
        ]
        .boxed(),
        prop_oneof![Just(shape(json!("1"))), Just(shape(json!(1.5)))].boxed(),
    )
}

fn text_field(
    max: usize,
) -> (
    BoxedStrategy<Field>,
    BoxedStrategy<Field>,
    BoxedStrategy<Field>,
) {
    (
        prop_oneof![
            "[a-zA-Z0-9_./{}-]{1,20}".prop_map(|s| ok(json!(s))),
            Just(ok(json!(""))),
            Just(ok(Value::Null)),
        ]
        .boxed(),
        Just(bad(json!("x".repeat(max + 1)))).boxed(),
        prop_oneof![Just(shape(json!(5))), Just(shape(json!(["a"])))].boxed(),
    )
}

/// For each known field: strategies for acceptable, rule-breaking and wrongly-shaped values.
#[allow(clippy::type_complexity)]
fn field_strategies() -> Vec<(
    &'static str,
    BoxedStrategy<Field>,
    BoxedStrategy<Field>,
    BoxedStrategy<Field>,
)> {
    let mut v = vec![
        (
            "id",
            prop_oneof![
                1 => (0usize..3, any::<bool>()).prop_map(|(i, up)| ok(json!(if up {
                    POOL[i].to_uppercase()
                } else {
                    POOL[i].to_owned()
                }))),
                3 => any::<u128>().prop_map(|n| ok(json!(Uuid::from_u128(n).to_string()))),
                1 => Just(ok(json!(""))),
                1 => Just(ok(Value::Null)),
            ]
            .boxed(),
            prop_oneof![
                Just(bad(json!("not-a-uuid"))),
                Just(bad(json!("1234"))),
                Just(bad(json!("0190f5a2-7b3c-7def-8123-456789abcdeg"))),
            ]
            .boxed(),
            Just(shape(json!(5))).boxed(),
        ),
        (
            "method",
            prop_oneof![
                Just(ok(json!("get"))),
                Just(ok(json!("POST"))),
                Just(ok(json!("Delete"))),
                Just(ok(json!("PROPFIND"))),
                Just(ok(json!("M-SEARCH"))),
            ]
            .boxed(),
            prop_oneof![
                Just(bad(json!("GE T"))),
                Just(bad(json!(""))),
                Just(bad(Value::Null)),
                Just(bad(json!("GET/"))),
                Just(bad(json!("A".repeat(33)))),
            ]
            .boxed(),
            prop_oneof![Just(shape(json!(5))), Just(shape(json!(["GET"])))].boxed(),
        ),
        (
            "path",
            prop_oneof![
                "/[a-z0-9/_-]{0,12}".prop_map(|s| ok(json!(s))),
                Just(ok(json!("*"))),
            ]
            .boxed(),
            prop_oneof![
                Just(bad(json!("no-slash"))),
                Just(bad(json!(""))),
                Just(bad(Value::Null)),
            ]
            .boxed(),
            prop_oneof![Just(shape(json!(5))), Just(shape(json!({"p": "/"})))].boxed(),
        ),
        (
            "status_code",
            (100i64..=599).prop_map(|n| ok(json!(n))).boxed(),
            prop_oneof![
                (-1000i64..100).prop_map(|n| bad(json!(n))),
                (600i64..100_000).prop_map(|n| bad(json!(n))),
                Just(bad(Value::Null)),
            ]
            .boxed(),
            prop_oneof![
                Just(shape(json!("200"))),
                Just(shape(json!(200.5))),
                Just(shape(json!(true))),
            ]
            .boxed(),
        ),
        (
            "client_ip",
            prop_oneof![
                Just(ok(json!("192.0.2.1"))),
                Just(ok(json!("2001:db8::1"))),
                Just(ok(json!("::1"))),
                Just(ok(json!(""))),
                Just(ok(Value::Null)),
            ]
            .boxed(),
            prop_oneof![
                Just(bad(json!("999.1.1.1"))),
                Just(bad(json!("example.com"))),
                Just(bad(json!("1.2.3"))),
                Just(bad(json!("192.0.2.1:80"))),
            ]
            .boxed(),
            prop_oneof![Just(shape(json!(7))), Just(shape(json!([])))].boxed(),
        ),
        (
            "duration_ms",
            prop_oneof![
                (0i64..=i64::from(i32::MAX)).prop_map(|n| ok(json!(n))),
                Just(ok(Value::Null)),
            ]
            .boxed(),
            prop_oneof![
                (-1000i64..0).prop_map(|n| bad(json!(n))),
                (i64::from(i32::MAX) + 1..i64::MAX).prop_map(|n| bad(json!(n))),
            ]
            .boxed(),
            prop_oneof![Just(shape(json!("5"))), Just(shape(json!(1.5)))].boxed(),
        ),
        (
            "price",
            prop_oneof![
                Just(ok(json!("16.74"))),
                Just(ok(json!("3"))),
                Just(ok(json!("0.5"))),
                Just(ok(json!(2.5))),
                Just(ok(json!(7))),
                Just(ok(Value::Null)),
            ]
            .boxed(),
            prop_oneof![
                Just(bad(json!("abc"))),
                Just(bad(json!("-0.5"))),
                Just(bad(json!("1e3"))),
                Just(bad(json!(".5"))),
                Just(bad(json!(true))),
                Just(bad(json!([]))),
                Just(bad(json!({}))),
            ]
            .boxed(),
            // Any JSON value is the right shape for price; its rules make it good or bad.
            Just(bad(json!("5."))).boxed(),
        ),
        (
            "metadata",
            prop_oneof![
                Just(ok(json!({}))),
                Just(ok(json!({"a": "b", "c": ""}))),
                Just(ok(Value::Null)),
            ]
            .boxed(),
            Just(bad(Value::Object(
                (0..65).map(|i| (format!("k{i}"), json!("v"))).collect(),
            )))
            .boxed(),
            prop_oneof![
                Just(shape(json!({"k": 1}))),
                Just(shape(json!("k=v"))),
                Just(shape(json!(["k"]))),
                Just(shape(json!(3))),
            ]
            .boxed(),
        ),
        (
            "org_id",
            prop_oneof![Just(ok(json!(OWN_ORG))), Just(ok(Value::Null))].boxed(),
            // An empty id is not an absent one (SPEC §11). Another org's id refuses the whole
            // call (403), which is not this property's.
            Just(bad(json!(""))).boxed(),
            Just(shape(json!(5))).boxed(),
        ),
        (
            "request_body",
            prop_oneof![
                Just(ok(json!("raw text"))),
                Just(ok(json!({"any": ["json", 1, null]}))),
                Just(ok(json!(42))),
                Just(ok(Value::Null)),
            ]
            .boxed(),
            Just(ok(json!("fine"))).boxed(),
            Just(ok(json!([1, 2]))).boxed(),
        ),
    ];
    for name in ["created_at", "started_at", "completed_at"] {
        v.push((name, timestamp_ok(), timestamp_bad(), timestamp_shape()));
    }
    for name in ["minutes", "seconds"] {
        let (a, b, c) = count_field();
        v.push((name, a, b, c));
    }
    for (name, max) in [
        ("request_id", 1024),
        ("route_pattern", 1024),
        ("error_code", 1024),
        ("user_agent", 2048),
    ] {
        let (a, b, c) = text_field(max);
        v.push((name, a, b, c));
    }
    v
}

/// Which of a field's strategies to draw from.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Absent,
    Ok,
    Bad,
}

/// A shape problem to plant in an otherwise valid record.
#[derive(Debug, Clone)]
enum Fault {
    /// The known field at this index gets its wrongly typed value.
    Typed(usize),
    /// A field the API does not know.
    Unknown(&'static str),
}

/// An object record: each field absent, acceptable or rule-breaking; or, sometimes, a valid
/// record with exactly one shape problem (a wrongly typed value or an unknown field).
fn object_record() -> BoxedStrategy<Gen> {
    let fields = field_strategies();
    let names: Vec<&'static str> = fields.iter().map(|(n, ..)| *n).collect();
    let picks: Vec<BoxedStrategy<Pick>> = names
        .iter()
        .map(|name| {
            if ["method", "path", "status_code"].contains(name) {
                prop_oneof![8 => Just(Pick::Ok), 1 => Just(Pick::Absent), 1 => Just(Pick::Bad)]
                    .boxed()
            } else {
                prop_oneof![5 => Just(Pick::Absent), 4 => Just(Pick::Ok), 1 => Just(Pick::Bad)]
                    .boxed()
            }
        })
        .collect();
    let values: Vec<BoxedStrategy<(Field, Field, Field)>> = fields
        .into_iter()
        .map(|(_, o, b, s)| (o, b, s).boxed())
        .collect();
    // Most records are clean (so that many batches pass), some break rules freely, some
    // carry one shape problem.
    let fault = prop_oneof![
        12 => Just(None),
        1 => (0..names.len()).prop_map(|i| Some(Fault::Typed(i))),
        1 => prop::sample::select(vec!["colour", "Method", "extra_field", "meta", "org"])
            .prop_map(|n| Some(Fault::Unknown(n))),
    ];
    let clean = prop::bool::weighted(0.75);
    (picks, values, fault, clean)
        .prop_map(move |(picks, values, fault, clean)| {
            let mut map = BTreeMap::new();
            for ((name, pick), (o, b, _)) in names.iter().zip(&picks).zip(&values) {
                let required = ["method", "path", "status_code"].contains(name);
                let chosen = match pick {
                    Pick::Absent if clean && required => Some(o.clone()),
                    Pick::Absent => None,
                    Pick::Ok => Some(o.clone()),
                    Pick::Bad if clean => (required || name.len() % 2 == 0).then(|| o.clone()),
                    Pick::Bad => Some(b.clone()),
                };
                if let Some(f) = chosen {
                    map.insert((*name).to_owned(), f);
                }
            }
            if let Some(fault) = fault {
                // Make every other field acceptable, then plant the one shape problem.
                map.retain(|_, (_, k)| *k == Kind::Ok);
                map.insert("method".into(), ok(json!("GET")));
                map.insert("path".into(), ok(json!("/shape")));
                map.insert("status_code".into(), ok(json!(200)));
                match fault {
                    Fault::Unknown(name) => {
                        map.insert(name.to_owned(), shape(json!("x")));
                    }
                    Fault::Typed(i) => {
                        map.insert(names[i].to_owned(), values[i].2.clone());
                    }
                }
            }
            Gen::Object(map)
        })
        .boxed()
}

fn record() -> BoxedStrategy<Gen> {
    prop_oneof![
        20 => object_record(),
        1 => prop_oneof![
            Just(json!(42)),
            Just(json!("text")),
            Just(json!([1, 2])),
            Just(Value::Null),
            Just(json!(true)),
        ]
        .prop_map(Gen::NotObject),
    ]
    .boxed()
}

/// The reference validator: the `(index, field)` pairs a batch must be refused with (empty:
/// accepted), from the verdicts attached to each generated value.
fn predict(batch: &[Gen]) -> BTreeSet<(u64, Option<String>)> {
    let mut out = BTreeSet::new();
    let mut seen = HashSet::new();
    for (i, g) in batch.iter().enumerate() {
        let i = i as u64;
        let fields = match g {
            Gen::NotObject(_) => {
                out.insert((i, None));
                continue;
            }
            Gen::Object(f) => f,
        };
        if let Some((name, _)) = fields.iter().find(|(_, (_, k))| *k == Kind::Shape) {
            out.insert((i, Some(name.clone())));
            continue;
        }
        let mut problems: Vec<String> = fields
            .iter()
            .filter(|(_, (_, k))| *k == Kind::Bad)
            .map(|(n, _)| n.clone())
            .collect();
        for required in ["method", "path", "status_code"] {
            if !fields.contains_key(required) {
                problems.push(required.to_owned());
            }
        }
        if problems.is_empty() {
            // Only records that are valid on their own take part in the duplicate check.
            if let Some((Value::String(id), Kind::Ok)) = fields.get("id")
                && !id.is_empty()
                && !seen.insert(id.to_ascii_lowercase())
            {
                out.insert((i, Some("id".to_owned())));
            }
        } else {
            out.extend(problems.into_iter().map(|p| (i, Some(p))));
        }
    }
    out
}

fn render(g: &Gen, org: &str) -> String {
    match g {
        Gen::NotObject(v) => v.to_string(),
        Gen::Object(fields) => {
            let obj: serde_json::Map<String, Value> = fields
                .iter()
                .map(|(k, (v, _))| {
                    let v = if *v == json!(OWN_ORG) {
                        json!(org)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            Value::Object(obj).to_string()
        }
    }
}

static NEXT_ORG: AtomicU64 = AtomicU64::new(0);

/// A fresh org with an all-scopes key, on the shared server.
async fn fresh_org(server: &TestServer, prefix: &str) -> (String, String) {
    let org = format!("{prefix}-{}", NEXT_ORG.fetch_add(1, Ordering::Relaxed));
    let key = server.org_with_key(&org).await;
    (org, key.secret)
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Runs an async property body on the current multi-threaded runtime.
fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_matches_the_reference_validator() {
    let server = TestServer::start().await;
    let strategy = (prop::collection::vec(record(), 1..8), any::<bool>());
    let result = runner(64).run(&strategy, |(batch, as_ndjson)| {
        block(async {
            let (org, secret) = fresh_org(&server, "verdict").await;
            let texts: Vec<String> = batch.iter().map(|g| render(g, &org)).collect();
            let (ct, body) = if as_ndjson {
                ("application/x-ndjson", texts.join("\n"))
            } else {
                ("application/json", format!("[{}]", texts.join(",")))
            };
            let resp = server
                .request(Method::POST, "/v1/ingest/requests")
                .header("x-api-key", &secret)
                .header("content-type", ct)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            let expected = predict(&batch);
            if expected.is_empty() {
                prop_assert_eq!(status, StatusCode::ACCEPTED, "{} -> {}", body, text);
                let got: Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(
                    got,
                    json!({"accepted": batch.len(), "duplicates": 0}),
                    "{}",
                    body
                );
                prop_assert_eq!(stored_count(&server, &org).await, batch.len() as u64);
            } else {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{} -> {}", body, text);
                let got: Value = serde_json::from_str(&text).unwrap();
                let pairs: BTreeSet<_> = detail_pairs(&got).into_iter().collect();
                prop_assert_eq!(
                    &pairs,
                    &expected,
                    "{} -> {}\nmissing {:?}, unexpected {:?}",
                    body,
                    text,
                    expected.difference(&pairs).collect::<Vec<_>>(),
                    pairs.difference(&expected).collect::<Vec<_>>()
                );
                prop_assert_eq!(stored_count(&server, &org).await, 0, "{}", body);
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    server.stop().await;
}

// ---- Round trip of valid records ----

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Unix milliseconds (from 1970 on) to civil UTC parts, by counting years and months: a
/// deliberately different method from the server's closed-form conversion.
fn civil(ms: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    assert!(ms >= 0);
    let mut days = ms / 86_400_000;
    let in_day = ms % 86_400_000;
    let mut year = 1970;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let months = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 1;
    for len in months {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    (
        year,
        month,
        days + 1,
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    )
}

/// How one instant is written on input.
#[derive(Debug, Clone)]
struct Written {
    /// The instant, in Unix milliseconds.
    ms: i64,
    /// The offset used, in minutes east of UTC.
    offset_min: i64,
    /// Digits written after the milliseconds (which must be truncated away).
    extra: String,
    /// Whether a zero offset is written as `Z`.
    zulu: bool,
}

impl Written {
    fn input(&self) -> String {
        let (y, mo, d, h, mi, s, milli) = civil(self.ms + self.offset_min * 60_000);
        let frac = if milli == 0 && self.extra.is_empty() {
            String::new()
        } else {
            format!(".{milli:03}{}", self.extra)
        };
        let offset = if self.offset_min == 0 && self.zulu {
            "Z".to_owned()
        } else {
            let sign = if self.offset_min < 0 { '-' } else { '+' };
            let a = self.offset_min.abs();
            format!("{sign}{:02}:{:02}", a / 60, a % 60)
        };
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{offset}")
    }

    fn expected(&self) -> String {
        let (y, mo, d, h, mi, s, milli) = civil(self.ms);
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
    }
}

/// 2000-01-01T00:00:00Z, the earliest time ingest accepts.
const FLOOR_MS: i64 = 946_684_800_000;

fn written() -> impl Strategy<Value = Written> {
    // Between the ingest floor and 2026-01-01, inside the ingest window.
    (
        FLOOR_MS..1_767_225_600_000,
        prop_oneof![Just(0i64), -(23i64 * 60 + 59)..=(23 * 60 + 59)],
        "[0-9]{0,6}",
        any::<bool>(),
    )
        .prop_map(|(ms, offset_min, extra, zulu)| Written {
            ms,
            offset_min,
            extra,
            zulu,
        })
}

/// A valid record and the item `/v1/logs` must list for it.
#[derive(Debug, Clone)]
struct Valid {
    record: Value,
    item: Value,
}

fn valid_record() -> impl Strategy<Value = Valid> {
    let text = || prop::option::of(prop_oneof!["[a-zA-Z0-9_.{}/-]{1,24}", Just(String::new())]);
    (
        (any::<u128>(), any::<bool>()),
        "[a-zA-Z][a-zA-Z0-9!#$%&'*+.^_`|~-]{0,11}",
        "/[a-zA-Z0-9/_.{}é-]{0,30}",
        100u16..=599,
        (text(), text(), text(), text()),
        prop::option::of(0i64..=i64::from(i32::MAX)),
        written(),
        prop::option::of((written(), 0i64..100_000, written())),
    )
        .prop_map(
            |(
                (id, upper),
                method,
                path,
                status,
                (request_id, route_pattern, error_code, auth_type),
                duration,
                created,
                times,
            )| {
                let id = Uuid::from_u128(id);
                let id_text = if upper {
                    id.to_string().to_uppercase()
                } else {
                    id.to_string()
                };
                let mut record = json!({
                    "id": id_text,
                    "method": method,
                    "path": path,
                    "status_code": status,
                    "created_at": created.input(),
                });
                let mut put = |k: &str, v: &Option<String>| {
                    if let Some(v) = v {
                        record[k] = json!(v);
                    }
                };
                put("request_id", &request_id);
                put("route_pattern", &route_pattern);
                put("error_code", &error_code);
                put("auth_type", &auth_type);
                if let Some(d) = duration {
                    record["duration_ms"] = json!(d);
                }
                // started_at/completed_at: completed is `gap` ms after started, written with
                // its own offset; or, one time in three, before it (no derived duration).
                let mut derived = None;
                if let Some((started, gap, other)) = times {
                    let mut completed = other;
                    completed.ms = if started.ms % 3 == 0 {
                        (started.ms - gap).max(FLOOR_MS)
                    } else {
                        started.ms + gap
                    };
                    record["started_at"] = json!(started.input());
                    record["completed_at"] = json!(completed.input());
                    if completed.ms >= started.ms {
                        derived = Some(completed.ms - started.ms);
                    }
                }
                let nonempty = |v: &Option<String>| match v {
                    Some(s) if !s.is_empty() => json!(s),
                    _ => Value::Null,
                };
                let item = json!({
                    "auth_type": nonempty(&auth_type),
                    "created_at": created.expected(),
                    "duration_ms": duration.or(derived),
                    "error_code": nonempty(&error_code),
                    "id": id.to_string(),
                    "method": method.to_ascii_uppercase(),
                    "path": path,
                    "request_id": nonempty(&request_id),
                    "route_pattern": nonempty(&route_pattern),
                    "status_code": status,
                });
                Valid { record, item }
            },
        )
}

#[test]
fn the_reference_time_formatter_agrees_with_known_values() {
    let w = Written {
        ms: 1_714_564_800_123,
        offset_min: 120,
        extra: "456".into(),
        zulu: false,
    };
    assert_eq!(w.input(), "2024-05-01T14:00:00.123456+02:00");
    assert_eq!(w.expected(), "2024-05-01T12:00:00.123Z");
    let leap = Written {
        ms: 951_782_400_000, // 2000-02-29T00:00:00Z
        offset_min: -30,
        extra: String::new(),
        zulu: true,
    };
    assert_eq!(leap.input(), "2000-02-28T23:30:00-00:30");
    assert_eq!(leap.expected(), "2000-02-29T00:00:00.000Z");
    let z = Written {
        ms: 0,
        offset_min: 0,
        extra: String::new(),
        zulu: true,
    };
    assert_eq!(z.input(), "1970-01-01T00:00:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_records_round_trip_through_the_logs_listing() {
    let server = TestServer::start().await;
    let strategy = (prop::collection::vec(valid_record(), 1..6), any::<bool>());
    let result = runner(48).run(&strategy, |(records, as_ndjson)| {
        block(async {
            // Ids must be unique within a batch (the generator makes collisions negligible).
            let ids: HashSet<&Value> = records.iter().map(|r| &r.item["id"]).collect();
            prop_assume!(ids.len() == records.len());
            let (_, secret) = fresh_org(&server, "roundtrip").await;
            let rb = server
                .request(Method::POST, "/v1/ingest/requests")
                .header("x-api-key", &secret);
            let rb = if as_ndjson {
                let lines: Vec<String> = records.iter().map(|r| r.record.to_string()).collect();
                rb.header("content-type", "application/x-ndjson")
                    .body(lines.join("\n"))
            } else {
                let all: Vec<&Value> = records.iter().map(|r| &r.record).collect();
                rb.json(&all)
            };
            let got = expect(rb.send().await.unwrap(), StatusCode::ACCEPTED).await;
            prop_assert_eq!(got, json!({"accepted": records.len(), "duplicates": 0}));
            let listed = all_logs(&server, &secret).await;
            prop_assert_eq!(listed.len(), records.len());
            for r in &records {
                let found = listed.iter().find(|l| l["id"] == r.item["id"]);
                prop_assert!(found.is_some(), "{} not listed", r.item["id"]);
                prop_assert_eq!(found.unwrap(), &r.item, "ingested {}", r.record);
            }
            // Listed newest first (then by id, descending).
            let keys: Vec<(String, String)> = listed
                .iter()
                .map(|l| {
                    (
                        l["created_at"].as_str().unwrap().to_owned(),
                        l["id"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            let mut sorted = keys.clone();
            sorted.sort_by(|a, b| b.cmp(a));
            prop_assert_eq!(keys, sorted);
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    server.stop().await;
}

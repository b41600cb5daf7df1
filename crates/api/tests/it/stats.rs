//! Stats (SPEC §10): `GET /v1/logs/stats` compared with figures computed here from the
//! records themselves (counts exact, percentiles within 1% of the exact nearest-rank value,
//! `max_ms` exact), on the rollup path and the record-reading path, with empty buckets,
//! UTC bucket edges whatever the offset of the range, errors, scopes and isolation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use crate::reference::{BASE_MS, DAY_MS, Rng, rfc3339, utc};

use apitrail_testkit::{TestServer, expect, expect_native_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

/// A heavy-tailed duration: mostly fast, some slow, a few very slow, a few unknown.
fn duration(rng: &mut Rng) -> Value {
    match rng.below(100) {
        0..=2 => Value::Null,
        3..=84 => json!(1 + rng.below(300)),
        85..=95 => json!(300 + rng.below(5_000)),
        _ => json!(5_000 + rng.below(600_000)),
    }
}

/// `n` request logs over three days from `BASE_MS`.
fn records(rng: &mut Rng, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let route = rng.pick(&[
                Some("/v1/items/{id}"),
                Some("/v1/items"),
                Some("/v1/users/{id}"),
                None,
            ]);
            json!({
                "id": rng.uuid(),
                "method": rng.pick(&["GET", "GET", "GET", "POST", "DELETE"]),
                "path": "/x",
                "route_pattern": route,
                "status_code": rng.pick(&[200, 200, 200, 200, 201, 204, 400, 404, 404, 429, 500, 503]),
                "created_at": utc(BASE_MS + rng.below(3 * DAY_MS as u64) as i64),
                "duration_ms": duration(rng),
                "auth_type": rng.pick(&["api_key", "session"]),
                "user_id": rng.pick(&["u_1", "u_2", "u_3", "u_4", "u_5"]),
                "api_key_id": rng.pick(&["key_a", "key_b"]),
                "origin": rng.pick(&[Some("https://a.example"), Some("https://b.example"), None]),
                "request_id": format!("req_{}", rng.below(50)),
            })
        })
        .collect()
}

/// A record's figures as the reference reads them.
struct Rec {
    at: i64,
    status: u64,
    duration: Option<i64>,
    json: Value,
}

fn parse_ms(s: &str) -> i64 {
    // The records were written by `utc`, so this reads exactly that shape.
    let (date, time) = s.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t = time.trim_end_matches('Z');
    let (hms, milli) = t.split_once('.').unwrap();
    let h: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    crate::reference::days_from_civil(d[0], d[1], d[2]) * DAY_MS
        + h[0] * HOUR
        + h[1] * MINUTE
        + h[2] * 1000
        + milli.parse::<i64>().unwrap()
}

fn rec(v: &Value) -> Rec {
    Rec {
        at: parse_ms(v["created_at"].as_str().unwrap()),
        status: v["status_code"].as_u64().unwrap(),
        duration: v["duration_ms"].as_i64(),
        json: v.clone(),
    }
}

/// The exact nearest-rank value of quantile `q` of `values` (sorted).
fn nearest_rank(values: &[i64], q: f64) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).max(1);
    Some(values[rank - 1])
}

/// Expected figures of `recs`.
fn figures(recs: &[&Rec]) -> Value {
    let mut d: Vec<i64> = recs.iter().filter_map(|r| r.duration).collect();
    d.sort_unstable();
    json!({
        "count": recs.len(),
        "errors_4xx": recs.iter().filter(|r| (400..500).contains(&r.status)).count(),
        "errors_5xx": recs.iter().filter(|r| (500..600).contains(&r.status)).count(),
        "p50_ms": nearest_rank(&d, 0.50),
        "p90_ms": nearest_rank(&d, 0.90),
        "p95_ms": nearest_rank(&d, 0.95),
        "p99_ms": nearest_rank(&d, 0.99),
        "max_ms": d.last(),
    })
}

/// The group of a record under `group_by`, as the answer prints it.
fn group_of(r: &Rec, group_by: Option<&str>) -> Value {
    match group_by {
        None => Value::Null,
        Some("status_class") => json!(format!("{}xx", r.status / 100)),
        Some(field) => r.json[field].clone(),
    }
}

/// Sort key of a group: null, then numbers, then text (the server's order among equal counts).
fn group_key(v: &Value) -> (u8, u64, String) {
    match v {
        Value::Null => (0, 0, String::new()),
        Value::Number(n) => (1, n.as_u64().unwrap(), String::new()),
        v => (2, 0, v.as_str().unwrap().to_owned()),
    }
}

/// Compares a figures object with the expected one: counts and max exact, percentiles
/// within 1% of the exact value.
fn assert_figures(got: &Value, want: &Value, at: &str) {
    for k in ["count", "errors_4xx", "errors_5xx", "max_ms"] {
        assert_eq!(got[k], want[k], "{at}: {k}");
    }
    for k in ["p50_ms", "p90_ms", "p95_ms", "p99_ms"] {
        match (got[k].as_i64(), want[k].as_i64()) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                let err = (g - w).abs() as f64;
                assert!(err <= 0.01 * w as f64, "{at}: {k} {g} vs exact {w}");
            }
            (g, w) => panic!("{at}: {k} {g:?} vs {w:?}"),
        }
    }
}

/// Checks one stats answer against the records: `keep` is the query's filter.
#[allow(clippy::too_many_arguments)]
async fn check(
    server: &TestServer,
    secret: &str,
    recs: &[Rec],
    (interval, width): (&str, i64),
    (from, to): (i64, i64),
    group_by: Option<&str>,
    extra: &str,
    keep: impl Fn(&Rec) -> bool,
) -> Value {
    let mut url = format!(
        "/v1/logs/stats?interval={interval}&from={}&to={}{extra}",
        utc(from),
        utc(to)
    );
    if let Some(g) = group_by {
        url.push_str(&format!("&group_by={g}"));
    }
    let body = expect(
        server.get(&url, secret).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["interval"], interval);
    assert_eq!(body["from"], utc(from));
    assert_eq!(body["to"], utc(to));
    assert_eq!(body["group_by"], json!(group_by));

    let chosen: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.at >= from && r.at < to && keep(r))
        .collect();
    let mut groups: HashMap<String, (Value, Vec<&Rec>)> = HashMap::new();
    for r in &chosen {
        let g = group_of(r, group_by);
        groups
            .entry(g.to_string())
            .or_insert_with(|| (g.clone(), Vec::new()))
            .1
            .push(r);
    }
    let mut groups: Vec<(Value, Vec<&Rec>)> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(group_key(&a.0).cmp(&group_key(&b.0)))
    });
    let limit = extra
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .map_or(10, |n| n.parse().unwrap());
    groups.truncate(limit);
    if groups.is_empty() && group_by.is_none() {
        groups.push((Value::Null, Vec::new()));
    }
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), groups.len(), "{url}: series");
    let buckets = ((to - from) / width) as usize;
    for (s, (group, members)) in series.iter().zip(&groups) {
        assert_eq!(&s["group"], group, "{url}: series order");
        assert_figures(
            &s["total"],
            &figures(members),
            &format!("{url} {group} total"),
        );
        let bs = s["buckets"].as_array().unwrap();
        assert_eq!(bs.len(), buckets, "{url}: every bucket, empty ones too");
        for (i, b) in bs.iter().enumerate() {
            let start = from + i as i64 * width;
            assert_eq!(b["start"], utc(start));
            let inside: Vec<&Rec> = members
                .iter()
                .copied()
                .filter(|r| r.at >= start && r.at < start + width)
                .collect();
            assert_figures(
                b,
                &figures(&inside),
                &format!("{url} {group} {}", utc(start)),
            );
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_equal_figures_computed_from_the_records() {
    let server = TestServer::start().await;
    let key = server.org_with_key("stats").await;
    let other = server.org_with_key("stats-other").await;
    let mut rng = Rng(0x57A7);
    let all = records(&mut rng, 30_000);
    // Many calls, so that cells are added to again and again; one call re-sent, whose
    // duplicates must not count twice.
    for batch in all.chunks(2_500) {
        server
            .ingest(
                &key.secret,
                &Value::Array(batch.to_vec()),
                StatusCode::ACCEPTED,
            )
            .await;
    }
    let again = server
        .ingest(
            &key.secret,
            &Value::Array(all[..2_500].to_vec()),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(again["duplicates"], 2_500, "{again}");
    // Another org's records in the same buckets never count.
    server
        .ingest(
            &other.secret,
            &Value::Array(records(&mut Rng(9), 3_000)),
            StatusCode::ACCEPTED,
        )
        .await;
    let recs: Vec<Rec> = all.iter().map(rec).collect();
    fn any(_: &Rec) -> bool {
        true
    }
    type Case = (
        (&'static str, i64),
        (i64, i64),
        Option<&'static str>,
        &'static str,
        fn(&Rec) -> bool,
    );
    let cases: [Case; 10] = [
        // Rollup path: every interval, every rollup grouping, the rollup filters; ranges
        // that start before the data (empty buckets) and end inside it.
        (
            ("1h", HOUR),
            (BASE_MS - 5 * HOUR, BASE_MS + 3 * DAY_MS),
            None,
            "",
            any,
        ),
        (
            ("1d", DAY_MS),
            (BASE_MS - DAY_MS, BASE_MS + 4 * DAY_MS),
            Some("route_pattern"),
            "",
            any,
        ),
        (
            ("15m", 15 * MINUTE),
            (BASE_MS + DAY_MS, BASE_MS + 2 * DAY_MS),
            Some("status_code"),
            "&limit=100",
            any,
        ),
        (
            ("5m", 5 * MINUTE),
            (BASE_MS + 6 * HOUR, BASE_MS + 12 * HOUR),
            Some("method"),
            "&method=get",
            |r| r.json["method"] == "GET",
        ),
        (
            ("1m", MINUTE),
            (BASE_MS + 30 * HOUR, BASE_MS + 32 * HOUR),
            Some("status_class"),
            "&status_min=400&status_max=499",
            |r| (400..500).contains(&r.status),
        ),
        (
            ("1h", HOUR),
            (BASE_MS, BASE_MS + DAY_MS),
            Some("route_pattern"),
            "&route_pattern=/v1/items/{id}&limit=1",
            |r| r.json["route_pattern"] == "/v1/items/{id}",
        ),
        // Record-reading path: the groupings and filters the rollups lack.
        (
            ("1h", HOUR),
            (BASE_MS, BASE_MS + 3 * DAY_MS),
            Some("user_id"),
            "&limit=3",
            any,
        ),
        (
            ("1d", DAY_MS),
            (BASE_MS, BASE_MS + 3 * DAY_MS),
            Some("api_key_id"),
            "&auth_type=session",
            |r| r.json["auth_type"] == "session",
        ),
        (
            ("15m", 15 * MINUTE),
            (BASE_MS, BASE_MS + DAY_MS),
            Some("origin"),
            "",
            any,
        ),
        (
            ("1d", DAY_MS),
            (BASE_MS, BASE_MS + 3 * DAY_MS),
            Some("status_code"),
            "&request_id=7&limit=100",
            |r| r.json["request_id"] == "req_7",
        ),
    ];
    for (interval, range, group_by, extra, keep) in cases {
        check(
            &server,
            &key.secret,
            &recs,
            interval,
            range,
            group_by,
            extra,
            keep,
        )
        .await;
    }

    // A range with nothing in it: one series of zero buckets with null percentiles.
    let body = check(
        &server,
        &key.secret,
        &recs,
        ("1h", HOUR),
        (BASE_MS - DAY_MS, BASE_MS - 20 * HOUR),
        None,
        "",
        any,
    )
    .await;
    let b = &body["series"][0]["buckets"][0];
    assert_eq!(b["count"], 0);
    assert!(b["p99_ms"].is_null() && b["max_ms"].is_null(), "{b}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_utc_whatever_the_offset_of_the_range() {
    let server = TestServer::start().await;
    let key = server.org_with_key("edges").await;
    let midnight = BASE_MS + DAY_MS;
    let at = |ms: i64, d: i64| json!({"method": "GET", "path": "/", "status_code": 200, "created_at": utc(ms), "duration_ms": d});
    server
        .ingest(
            &key.secret,
            &json!([
                at(midnight - 1, 10),
                at(midnight, 20),
                at(midnight + HOUR - 1, 30),
                at(midnight + HOUR, 40)
            ]),
            StatusCode::ACCEPTED,
        )
        .await;
    // From 05:30 local on the day before, in +05:30: that is midnight UTC of that day.
    let from = rfc3339(
        midnight - DAY_MS + 5 * HOUR + 30 * MINUTE,
        5 * 60 + 30,
        "",
        false,
    )
    .replace('+', "%2B");
    let to = rfc3339(midnight + DAY_MS, -(7 * 60), "", false);
    let body = expect(
        server
            .get(
                &format!("/v1/logs/stats?interval=1d&from={from}&to={to}"),
                &key.secret,
            )
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["from"], utc(midnight - DAY_MS), "{body}");
    assert_eq!(body["to"], utc(midnight + DAY_MS), "{body}");
    let days: Vec<(Value, Value)> = body["series"][0]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["count"].clone(), b["max_ms"].clone()))
        .collect();
    assert_eq!(days, vec![(json!(1), json!(10)), (json!(3), json!(40))]);
    // Hours: the record a millisecond before the hour is in the earlier bucket.
    let body = expect(
        server
            .get(
                &format!(
                    "/v1/logs/stats?interval=1h&from={}&to={}",
                    utc(midnight),
                    utc(midnight + 2 * HOUR)
                ),
                &key.secret,
            )
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let hours: Vec<Value> = body["series"][0]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["max_ms"].clone())
        .collect();
    assert_eq!(hours, vec![json!(30), json!(40)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stats_queries_get_400_in_the_native_envelope_and_need_read() {
    let server = TestServer::start().await;
    let key = server.org_with_key("bad-stats").await;
    for (query, param) in [
        ("interval=2m", "interval"),
        ("group_by=path", "group_by"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("from=yesterday", "from"),
        ("status_min=500&status_max=400", "status_min"),
        (
            "interval=1m&from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z",
            "from",
        ),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        expect_native_error(
            server
                .get(&format!("/v1/logs/stats?{query}"), &key.secret)
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(param),
        )
        .await;
    }
    let writer = server.create_key("bad-stats", &["write"]).await;
    expect_native_error(
        server
            .get("/v1/logs/stats", &writer.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    expect_native_error(
        server
            .get("/v1/logs/stats", "atk_wrong")
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    server.stop().await;
}

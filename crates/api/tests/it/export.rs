//! Exports (SPEC §10): `GET /v1/logs/export` and `GET /v1/audit-log/export`, NDJSON and CSV,
//! compared record for record with the list walks, resumed after a cut connection, filtered,
//! scoped and isolated, and moved from a SQLite server into a PostgreSQL one through ingest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::http_support::{all_logs_where, operator_ingest};
use crate::reference::{BASE_MS, Rng, utc};

use apitrail_testkit::{Backend, Options, TestServer, expect, expect_native_error, header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// GETs `path` with `secret`, expecting 200; returns the headers' content type and
/// disposition, and the body.
async fn export(server: &TestServer, secret: &str, path: &str) -> (String, String, String) {
    let resp = server.get(path, secret).send().await.unwrap();
    let status = resp.status();
    let ct = header(&resp, "content-type").unwrap_or_default();
    let cd = header(&resp, "content-disposition").unwrap_or_default();
    assert!(
        resp.headers().get("content-length").is_none(),
        "{path}: an export is streamed (chunked), not sized up front"
    );
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    (ct, cd, body)
}

fn ndjson(body: &str) -> Vec<Value> {
    assert!(
        body.is_empty() || body.ends_with('\n'),
        "every line is whole"
    );
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The CSV's header and rows, read by the `csv` crate (RFC 4180).
fn csv_rows(body: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body.as_bytes());
    let headers = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (headers, rows)
}

/// `n` request logs with many ties of `created_at` and a few values per filterable field.
fn records(rng: &mut Rng, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": rng.uuid(),
                "method": rng.pick(&["GET", "POST", "DELETE"]),
                "path": format!("/v1/items/{i}"),
                "route_pattern": rng.pick(&["/v1/items/{id}", "/v1/users/{id}"]),
                "status_code": rng.pick(&[200, 201, 404, 500]),
                "created_at": utc(BASE_MS + (i as i64 / 3) * 7),
                "request_id": format!("req_{i:06}"),
                "auth_type": rng.pick(&["api_key", "session"]),
                "duration_ms": rng.below(900),
            })
        })
        .collect()
}

async fn ingest_all(server: &TestServer, secret: &str, records: &[Value]) {
    for batch in records.chunks(10_000) {
        server
            .ingest(secret, &Value::Array(batch.to_vec()), StatusCode::ACCEPTED)
            .await;
    }
}

/// The fields the logs dialect prints, taken from an export line.
fn as_list_item(line: &Value) -> Value {
    let keys = [
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
    Value::Object(
        keys.iter()
            .map(|k| ((*k).to_owned(), line[*k].clone()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_100k_records_equals_the_list_walk_in_both_formats() {
    let server = TestServer::start().await;
    let key = server.org_with_key("big").await;
    let mut rng = Rng(0xB16);
    ingest_all(&server, &key.secret, &records(&mut rng, 100_000)).await;
    let walk = all_logs_where(&server, &key.secret, "sort_by=created_at&sort_dir=asc").await;
    assert_eq!(walk.len(), 100_000);

    let (ct, cd, body) = export(&server, &key.secret, "/v1/logs/export").await;
    assert_eq!(ct, "application/x-ndjson");
    assert!(
        cd.starts_with("attachment; filename=\"requests-big") && cd.ends_with(".ndjson\""),
        "{cd}"
    );
    let lines = ndjson(&body);
    assert_eq!(lines.len(), walk.len());
    for (i, (line, item)) in lines.iter().zip(&walk).enumerate() {
        assert_eq!(&as_list_item(line), item, "record {i}");
        assert_eq!(line["org_id"], "big");
    }

    let (ct, cd, body) = export(&server, &key.secret, "/v1/logs/export?format=csv").await;
    assert_eq!(ct, "text/csv; charset=utf-8");
    assert!(cd.ends_with(".csv\""), "{cd}");
    let (headers, rows) = csv_rows(&body);
    assert_eq!(rows.len(), walk.len());
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    for (i, (row, item)) in rows.iter().zip(&walk).enumerate() {
        for name in [
            "id",
            "created_at",
            "method",
            "path",
            "request_id",
            "route_pattern",
        ] {
            assert_eq!(
                row[col(name)],
                item[name].as_str().unwrap(),
                "record {i} {name}"
            );
        }
        assert_eq!(row[col("status_code")], item["status_code"].to_string());
        assert_eq!(row[col("duration_ms")], item["duration_ms"].to_string());
        assert_eq!(row[col("error_code")], "", "null is an empty cell");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_resumes_after_a_cut_connection() {
    let server = TestServer::start().await;
    let key = server.org_with_key("resume").await;
    let mut rng = Rng(0x2E5);
    ingest_all(&server, &key.secret, &records(&mut rng, 30_000)).await;
    let (_, _, whole) = export(&server, &key.secret, "/v1/logs/export").await;

    // Read a little of the stream, then drop the connection mid-way.
    let mut resp = server
        .get("/v1/logs/export", &key.secret)
        .send()
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 100_000 {
        let chunk = resp.chunk().await.unwrap().expect("more than 100 kB");
        got.extend_from_slice(&chunk);
    }
    drop(resp);
    let got = String::from_utf8(got).unwrap();
    let complete = &got[..=got.rfind('\n').unwrap()];
    let last: Value = serde_json::from_str(complete.lines().last().unwrap()).unwrap();
    let rest = export(
        &server,
        &key.secret,
        &format!("/v1/logs/export?after={}", last["id"].as_str().unwrap()),
    )
    .await
    .2;
    assert!(complete.len() < whole.len());
    assert_eq!(format!("{complete}{rest}"), whole);

    // The same for CSV: each answer is a whole file, header row included.
    let (_, _, whole) = export(&server, &key.secret, "/v1/logs/export?format=csv").await;
    let (_, rows) = csv_rows(&whole);
    let cut = 12_345;
    let (_, rest) = csv_rows(
        &export(
            &server,
            &key.secret,
            &format!("/v1/logs/export?format=csv&after={}", rows[cut][0]),
        )
        .await
        .2,
    );
    assert_eq!(rest, rows[cut + 1..]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_what_the_list_route_selects() {
    let server = TestServer::start().await;
    let key = server.org_with_key("filters").await;
    let mut rng = Rng(0xF117);
    ingest_all(&server, &key.secret, &records(&mut rng, 3_000)).await;
    for query in [
        "method=post",
        "route_pattern=/v1/users/%7Bid%7D",
        "request_id=000042",
        "auth_type=session",
        "status_min=400&status_max=499",
        "status_min=500",
        &format!("from={}&to={}", utc(BASE_MS + 700), utc(BASE_MS + 2_100)),
        "method=GET&auth_type=api_key&status_max=201",
    ] {
        let walk = all_logs_where(&server, &key.secret, &format!("sort_dir=asc&{query}")).await;
        let lines = ndjson(
            &export(&server, &key.secret, &format!("/v1/logs/export?{query}"))
                .await
                .2,
        );
        assert!(
            !walk.is_empty() && walk.len() < 3_000,
            "{query}: {}",
            walk.len()
        );
        let exported: Vec<Value> = lines.iter().map(as_list_item).collect();
        assert_eq!(exported, walk, "{query}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_need_a_read_key_of_the_org_and_show_only_its_records() {
    let server = TestServer::start().await;
    let a = server.org_with_key("org-a").await;
    let b = server.org_with_key("org-b").await;
    let mut rng = Rng(0x150);
    ingest_all(&server, &a.secret, &records(&mut rng, 50)).await;
    let audit = json!([{"action": "create", "resource_type": "thing", "resource_id": "t1"}]);
    let resp = server
        .request(Method::POST, "/v1/ingest/audit-events")
        .header("x-api-key", &a.secret)
        .json(&audit)
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::ACCEPTED).await;
    let writer = server.create_key("org-a", &["write"]).await;
    for path in ["/v1/logs/export", "/v1/audit-log/export"] {
        let resp = server.request(Method::GET, path).send().await.unwrap();
        expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        let resp = server.get(path, "atk_not_a_key").send().await.unwrap();
        expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        let resp = server.operator(Method::GET, path).send().await.unwrap();
        expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
        let resp = server.get(path, &writer.secret).send().await.unwrap();
        expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
        // B's key sees none of A's records, in either format; A's sees them.
        for format in ["ndjson", "csv"] {
            let (_, _, other) =
                export(&server, &b.secret, &format!("{path}?format={format}")).await;
            assert!(
                !other.contains("org-a") && !other.contains("/v1/items/"),
                "{other}"
            );
            let (_, _, own) = export(&server, &a.secret, &format!("{path}?format={format}")).await;
            assert!(own.contains("org-a"), "{own}");
        }
    }
    // An id of A's is unknown to B's export.
    let first = ndjson(&export(&server, &a.secret, "/v1/logs/export").await.2)[0]["id"].clone();
    let resp = server
        .get(
            &format!("/v1/logs/export?after={}", first.as_str().unwrap()),
            &b.secret,
        )
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        Some("after"),
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400s_in_the_native_envelope_naming_them() {
    let server = TestServer::start().await;
    let key = server.org_with_key("bad").await;
    for (path, param) in [
        ("/v1/logs/export?format=xml", "format"),
        ("/v1/logs/export?after=nonsense", "after"),
        (
            "/v1/logs/export?after=0190f5a2-0000-7000-8000-000000000001",
            "after",
        ),
        ("/v1/logs/export?status_min=700", "status_min"),
        (
            "/v1/logs/export?status_min=500&status_max=400",
            "status_min",
        ),
        (
            "/v1/logs/export?from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z",
            "from",
        ),
        ("/v1/logs/export?from=yesterday", "from"),
        ("/v1/logs/export?method=G%20T", "method"),
        ("/v1/logs/export?format=csv&format=ndjson", "format"),
        ("/v1/audit-log/export?format=json", "format"),
        (
            "/v1/audit-log/export?after=0190f5a2-0000-7000-8000-000000000001",
            "after",
        ),
        ("/v1/audit-log/export?after=1", "after"),
    ] {
        let resp = server.get(path, &key.secret).send().await.unwrap();
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(param),
        )
        .await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_is_rfc_4180_with_formulas_neutralised() {
    let server = TestServer::start().await;
    let key = server.org_with_key("csv").await;
    let tricky = json!([{
        "method": "POST",
        "path": "/v1/a,b",
        "status_code": 200,
        "created_at": utc(BASE_MS),
        "user_agent": "=HYPERLINK(\"http://x\",\"y\")",
        "origin": "+1",
        "email": "@sum",
        "error_code": "-2",
        "user_id": "\tcell",
        "request_body": "line one\r\nline \"two\"",
        "metadata": {"k": "v,w"},
        "price": "0.5",
    }]);
    server
        .ingest(&key.secret, &tricky, StatusCode::ACCEPTED)
        .await;
    let (_, _, body) = export(&server, &key.secret, "/v1/logs/export?format=csv").await;
    assert!(body.ends_with("\r\n"), "rows end with CRLF");
    let (headers, rows) = csv_rows(&body);
    assert_eq!(rows.len(), 1);
    let line = &ndjson(&export(&server, &key.secret, "/v1/logs/export").await.2)[0];
    // The §4 fields, in ingest's order, then the body flags beside their bodies.
    let expected = [
        "id",
        "org_id",
        "request_id",
        "method",
        "path",
        "query",
        "route_pattern",
        "status_code",
        "error_code",
        "duration_ms",
        "started_at",
        "completed_at",
        "created_at",
        "client_ip",
        "user_agent",
        "origin",
        "auth_type",
        "principal_type",
        "principal_id",
        "user_id",
        "email",
        "api_key_id",
        "service_account_id",
        "request_body",
        "request_body_truncated",
        "response_body",
        "response_body_truncated",
        "price",
        "minutes",
        "seconds",
        "stripe_invoice_item_id",
        "metadata",
    ];
    assert_eq!(headers, expected);
    let mut names: Vec<&str> = line
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = expected.to_vec();
    names.sort_unstable();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "the CSV header names the NDJSON fields");
    let cell = |name: &str| rows[0][headers.iter().position(|h| h == name).unwrap()].clone();
    assert_eq!(cell("path"), "/v1/a,b");
    assert_eq!(cell("user_agent"), "'=HYPERLINK(\"http://x\",\"y\")");
    assert_eq!(cell("origin"), "'+1");
    assert_eq!(cell("email"), "'@sum");
    assert_eq!(cell("error_code"), "'-2");
    assert_eq!(cell("user_id"), "'\tcell");
    assert_eq!(cell("request_body"), "line one\r\nline \"two\"");
    assert_eq!(cell("metadata"), r#"{"k":"v,w"}"#);
    assert_eq!(cell("price"), "0.5");
    assert_eq!(cell("request_body_truncated"), "false");
    assert_eq!(cell("query"), "");
    // NDJSON keeps values as they are.
    assert_eq!(line["user_agent"], "=HYPERLINK(\"http://x\",\"y\")");
    assert_eq!(line["metadata"], json!({"k": "v,w"}));
    assert_eq!(line["query"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_export_is_oldest_first_with_its_chain_fields() {
    let server = TestServer::start().await;
    let key = server.org_with_key("audited").await;
    let mut rng = Rng(0xA0D);
    let events: Vec<Value> = (0..2_500)
        .map(|i| {
            json!({
                "id": rng.uuid(),
                "action": rng.pick(&["create", "update", "delete"]),
                "resource_type": rng.pick(&["destination", "=formula"]),
                "resource_id": format!("dst_{}", i % 7),
                "details": {"n": i},
                "created_at": utc(BASE_MS + rng.below(50) as i64 * 1000),
            })
        })
        .collect();
    for batch in events.chunks(1_000) {
        let resp = server
            .request(Method::POST, "/v1/ingest/audit-events")
            .header("x-api-key", &key.secret)
            .json(&batch)
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::ACCEPTED).await;
    }
    let lines = ndjson(&export(&server, &key.secret, "/v1/audit-log/export").await.2);
    // The org's and the key's creation are audited too.
    assert_eq!(lines.len(), 2_502);
    let order = |l: &Value| {
        (
            l["created_at"].as_str().unwrap().to_owned(),
            l["id"].as_str().unwrap().to_owned(),
        )
    };
    assert!(
        lines.windows(2).all(|w| order(&w[0]) < order(&w[1])),
        "oldest first, ties by id"
    );
    // The chain fields link up in chain order.
    let mut by_pos: Vec<&Value> = lines.iter().collect();
    by_pos.sort_by_key(|l| l["chain_position"].as_u64().unwrap());
    assert_eq!(by_pos[0]["chain_position"], 1);
    assert_eq!(by_pos[0]["prev_hash"], "0".repeat(64));
    for w in by_pos.windows(2) {
        assert_eq!(w[0]["hash"], w[1]["prev_hash"]);
        assert_eq!(w[1]["hash"].as_str().unwrap().len(), 64);
    }
    // The same entries as the list route's walk (newest first there).
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let resp = server
            .get(&format!("/v1/audit-log?limit=200{cursor}"), &key.secret)
            .send()
            .await
            .unwrap();
        let page = expect(resp, StatusCode::OK).await;
        listed.extend(page["audit_log"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={}", c.replace('+', "%2B").replace('|', "%7C")),
            None => break,
        }
    }
    listed.reverse();
    let fields = [
        "id",
        "org_id",
        "user_id",
        "action",
        "resource_type",
        "resource_id",
        "details",
        "ip_address",
        "created_at",
    ];
    let pick = |v: &Value| fields.iter().map(|f| v[*f].clone()).collect::<Vec<_>>();
    assert_eq!(
        lines.iter().map(pick).collect::<Vec<_>>(),
        listed.iter().map(pick).collect::<Vec<_>>()
    );

    // Filters, `after`, and CSV read back.
    let filtered = ndjson(
        &export(
            &server,
            &key.secret,
            "/v1/audit-log/export?action=update&resource_id=dst_3",
        )
        .await
        .2,
    );
    let expected: Vec<&Value> = lines
        .iter()
        .filter(|l| l["action"] == "update" && l["resource_id"] == "dst_3")
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(filtered.iter().collect::<Vec<_>>(), expected);
    let after = lines[1_000]["id"].as_str().unwrap();
    let rest = ndjson(
        &export(
            &server,
            &key.secret,
            &format!("/v1/audit-log/export?after={after}"),
        )
        .await
        .2,
    );
    assert_eq!(rest, lines[1_001..]);
    let (headers, rows) = csv_rows(
        &export(&server, &key.secret, "/v1/audit-log/export?format=csv")
            .await
            .2,
    );
    assert_eq!(rows.len(), lines.len());
    assert_eq!(
        headers,
        [
            "id",
            "org_id",
            "user_id",
            "action",
            "resource_type",
            "resource_id",
            "details",
            "ip_address",
            "request_id",
            "created_at",
            "chain_position",
            "prev_hash",
            "hash",
        ]
    );
    for (row, line) in rows.iter().zip(&lines) {
        assert_eq!(row[0], line["id"].as_str().unwrap());
        let rt = line["resource_type"].as_str().unwrap();
        let expected = if rt.starts_with('=') {
            format!("'{rt}")
        } else {
            rt.to_owned()
        };
        assert_eq!(row[4], expected);
        assert_eq!(row[6], line["details"].as_str().unwrap_or(""));
        assert_eq!(row[12], line["hash"].as_str().unwrap());
    }
    server.stop().await;
}

/// Every §4 field set, bodies cut at the cap, odd characters: what a backup must carry.
fn rich_records(rng: &mut Rng) -> Vec<Value> {
    (0..400)
        .map(|i| {
            let mut r = json!({
                "id": rng.uuid(),
                "org_id": "moved",
                "request_id": format!("req_{i:04}"),
                "method": rng.pick(&["GET", "POST", "PATCH"]),
                "path": format!("/v1/items/{i}"),
                "query": "a=1&b=ü",
                "route_pattern": rng.pick(&["/v1/items/{id}", "/v1/users/{id}"]),
                "status_code": rng.pick(&[200, 404, 500]),
                "error_code": rng.pick(&["", "not_found"]),
                "started_at": utc(BASE_MS + i * 1000),
                "completed_at": utc(BASE_MS + i * 1000 + 12),
                "created_at": utc(BASE_MS + (i / 4) * 1000),
                "client_ip": rng.pick(&["192.0.2.1", "2001:db8::7"]),
                "user_agent": "curl/8 \"quoted\"",
                "origin": "https://example.com",
                "auth_type": rng.pick(&["api_key", "session"]),
                "principal_type": "user",
                "principal_id": "usr_1",
                "user_id": rng.pick(&["usr_1", "usr_2"]),
                "email": "a@example.com",
                "api_key_id": "0190f5a2-0000-7000-8000-00000000000a",
                "service_account_id": "sa_1",
                "request_body": {"n": i, "s": "x\ny"},
                "response_body": "y".repeat(rng.below(40) as usize),
                "price": "16.74",
                "minutes": 2,
                "seconds": 120,
                "stripe_invoice_item_id": "ii_1",
                "metadata": {"k": "v", "z": "ü"},
            });
            if rng.chance(30) {
                r.as_object_mut().unwrap().remove("duration_ms");
                r.as_object_mut().unwrap().remove("started_at");
            }
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_export_from_sqlite_reingests_into_postgres_and_both_answer_alike() {
    let start = |backend| {
        TestServer::start_with(Options {
            backend: Some(backend),
            body_cap_bytes: 32,
            ..Options::default()
        })
    };
    let lite = start(Backend::Sqlite).await;
    let pg = start(Backend::Postgres).await;
    let lite_key = lite.org_with_key("moved").await;
    let pg_key = pg.org_with_key("moved").await;
    let mut rng = Rng(0x30BE);
    operator_ingest(
        &lite,
        &Value::Array(rich_records(&mut rng)),
        StatusCode::ACCEPTED,
    )
    .await;

    let body = export(&lite, &lite_key.secret, "/v1/logs/export").await.2;
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 400);
    assert!(
        lines.iter().any(|l| l["response_body_truncated"] == true),
        "some bodies were cut"
    );
    // The lines go in unchanged, as NDJSON, with the operator token.
    let resp = pg
        .operator(Method::POST, "/v1/ingest/requests")
        .header("content-type", "application/x-ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(expect(resp, StatusCode::ACCEPTED).await["accepted"], 400);
    assert_eq!(export(&pg, &pg_key.secret, "/v1/logs/export").await.2, body);
    assert_eq!(
        export(&pg, &pg_key.secret, "/v1/logs/export?format=csv")
            .await
            .2,
        export(&lite, &lite_key.secret, "/v1/logs/export?format=csv")
            .await
            .2
    );

    // Every request dialect answers alike on both servers, byte for byte.
    for path in [
        "/v1/logs?limit=100",
        "/v1/logs?limit=100&sort_by=duration_ms&sort_dir=asc",
        "/v1/logs?limit=50&status_min=400",
        "/org/api-calls?limit=1000",
        "/org/api-calls?limit=1000&sort_by=created_at_ascending",
        "/users/usr_2/api-calls?limit=1000",
        "/v1/api-keys/requests?limit=100&serviceAccountId=sa_1",
        "/v1/api-keys/requests?limit=100&offset=300&apiKeyId=0190f5a2-0000-7000-8000-00000000000a",
    ] {
        let get = |server: &TestServer, secret: &str| {
            server
                .get(path, secret)
                .header("x-request-id", "same-request")
                .send()
        };
        let a = get(&lite, &lite_key.secret).await.unwrap();
        let b = get(&pg, &pg_key.secret).await.unwrap();
        assert_eq!(a.status(), StatusCode::OK, "{path}");
        assert_eq!(b.status(), StatusCode::OK, "{path}");
        assert_eq!(a.text().await.unwrap(), b.text().await.unwrap(), "{path}");
    }
    let one = lines[7]["id"].as_str().unwrap();
    for path in [format!("/org/api-calls/{one}"), format!("/api-calls/{one}")] {
        let a = lite.get(&path, &lite_key.secret).send().await.unwrap();
        let b = pg.get(&path, &pg_key.secret).send().await.unwrap();
        assert_eq!(a.status(), StatusCode::OK, "{path}");
        assert_eq!(a.text().await.unwrap(), b.text().await.unwrap(), "{path}");
    }
    lite.stop().await;
    pg.stop().await;
}

/// A store that fails in the middle of an export (its table renamed away under it, on a real
/// PostgreSQL server) ends the NDJSON body with an error line in the native envelope, and cuts
/// the CSV body off: the client sees an error, never a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_mid_export_is_an_error_the_client_sees() {
    use std::sync::Arc;

    use apitrail_api::{AdminToken, ApiConfig, App};
    use apitrail_store_postgres::{PgOptions, PgStore};

    let url = apitrail_pgtest::PgServer::shared().fresh_database().await;
    let store = Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    let config = ApiConfig {
        admin_token: Some(AdminToken::new(apitrail_testkit::ADMIN_TOKEN).unwrap()),
        ..ApiConfig::default()
    };
    let app = App::build(store, config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/admin/v1/orgs"))
        .bearer_auth(apitrail_testkit::ADMIN_TOKEN)
        .json(&json!({"id": "failing", "name": "Failing"}))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::CREATED).await;
    let resp = client
        .post(format!("{base}/admin/v1/orgs/failing/api-keys"))
        .bearer_auth(apitrail_testkit::ADMIN_TOKEN)
        .json(&json!({"name": "k", "scopes": ["read", "write"], "principal_type": "user", "principal_id": "u"}))
        .send()
        .await
        .unwrap();
    let secret = expect(resp, StatusCode::CREATED).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut rng = Rng(0xFA11);
    for batch in records(&mut rng, 30_000).chunks(10_000) {
        let resp = client
            .post(format!("{base}/v1/ingest/requests"))
            .header("x-api-key", &secret)
            .json(&batch)
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::ACCEPTED).await;
    }

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for format in ["ndjson", "csv"] {
        let mut resp = client
            .get(format!("{base}/v1/logs/export?format={format}"))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut got = resp.chunk().await.unwrap().unwrap().to_vec();
        // The walk reads a few pages ahead of the client at most; the rest fails.
        admin
            .batch_execute("ALTER TABLE request_logs RENAME TO request_logs_gone")
            .await
            .unwrap();
        let ended = loop {
            match resp.chunk().await {
                Ok(Some(c)) => got.extend_from_slice(&c),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        admin
            .batch_execute("ALTER TABLE request_logs_gone RENAME TO request_logs")
            .await
            .unwrap();
        let text = String::from_utf8(got).unwrap();
        if format == "csv" {
            assert!(ended.is_err(), "the CSV body is cut off, not ended cleanly");
            let rows = text.matches("\r\n").count();
            assert!(rows > 1 && rows < 30_000, "{rows}");
            continue;
        }
        let lines = ndjson(&text);
        assert!(lines.len() > 1 && lines.len() < 30_000, "{}", lines.len());
        let last = lines.last().unwrap();
        assert_eq!(last["error"]["code"], "internal_error", "{last}");
        assert!(
            last["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{last}"
        );
        assert!(lines[..lines.len() - 1].iter().all(|l| l["id"].is_string()));
    }
    let _ = stop.send(());
    let _ = task.await;
}

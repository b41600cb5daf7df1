//! Ingest over HTTP (SPEC §4, §11): JSON arrays and NDJSON, per-record validation that lists
//! every problem and stores nothing, size and count limits (also for streamed bodies and
//! lying lengths), media types, idempotent ids, commit-before-202, body caps, prices and
//! metadata.

#![allow(clippy::unwrap_used)]

use crate::http_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use apitrail_testkit::{Options, TestServer, expect, expect_native_error};
use http_support::{
    all_logs, all_logs_where, detail_pairs, operator_ingest, rec, stored_count, stored_log,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MIB: usize = 1024 * 1024;
const MAX_BODY: usize = 16 * MIB;

const U0: &str = "0190f5a2-7b3c-7def-8123-456789abcdef";
const U1: &str = "0190f5a2-7b3c-7def-8123-456789abcde0";
const U2: &str = "0190f5a2-7b3c-7def-8123-456789abcde1";

/// Posts `body` with `content_type` and the key, returning status and JSON body.
async fn post(
    server: &TestServer,
    secret: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut rb = server
        .request(Method::POST, "/v1/ingest/requests")
        .header("x-api-key", secret);
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    rb.body(body).send().await.unwrap()
}

fn ndjson(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect::<String>()
}

fn pairs(list: &[(u64, Option<&str>)]) -> BTreeSet<(u64, Option<String>)> {
    list.iter()
        .map(|(i, f)| (*i, f.map(str::to_owned)))
        .collect()
}

fn set(details: Vec<(u64, Option<String>)>) -> BTreeSet<(u64, Option<String>)> {
    let n = details.len();
    let s: BTreeSet<_> = details.into_iter().collect();
    assert_eq!(s.len(), n, "a problem was reported twice: {s:?}");
    s
}

/// One batch mixing every kind of problem, as raw JSON texts, with the `(index, field)` pairs
/// it must be refused with.
fn bad_batch() -> (Vec<String>, BTreeSet<(u64, Option<String>)>) {
    let records = [
        // 0: valid
        format!(r#"{{"id":"{U0}","method":"get","path":"/ok","status_code":200}}"#),
        // 1-3: each required field missing
        r#"{"path":"/a","status_code":200}"#.to_owned(),
        r#"{"method":"GET","status_code":200}"#.to_owned(),
        r#"{"method":"GET","path":"/a"}"#.to_owned(),
        // 4-5: status out of range
        r#"{"method":"GET","path":"/a","status_code":99}"#.to_owned(),
        r#"{"method":"GET","path":"/a","status_code":600}"#.to_owned(),
        // 6: bad client_ip
        r#"{"method":"GET","path":"/a","status_code":200,"client_ip":"300.1.1.1"}"#.to_owned(),
        // 7: naive timestamp
        r#"{"method":"GET","path":"/a","status_code":200,"created_at":"2024-01-01T00:00:00"}"#
            .to_owned(),
        // 8: unknown field, named
        r#"{"method":"GET","path":"/a","status_code":200,"colour":"red"}"#.to_owned(),
        // 9: wrong type
        r#"{"method":"GET","path":"/a","status_code":"200"}"#.to_owned(),
        // 10-13: not objects
        "42".to_owned(),
        r#""just a string""#.to_owned(),
        "[1,2]".to_owned(),
        "null".to_owned(),
        // 14: duplicate of record 0's id
        format!(r#"{{"id":"{U0}","method":"GET","path":"/dup","status_code":200}}"#),
        // 15: many problems in one record, each listed
        r#"{"method":"GE T","path":"nope","status_code":1000,"client_ip":"x","started_at":"yesterday","duration_ms":-5,"minutes":-1,"seconds":-2,"price":"1.2.3"}"#.to_owned(),
        // 16-17: bad prices
        r#"{"method":"GET","path":"/a","status_code":200,"price":"abc"}"#.to_owned(),
        r#"{"method":"GET","path":"/a","status_code":200,"price":true}"#.to_owned(),
        // 18-20: metadata that is not an object of strings
        r#"{"method":"GET","path":"/a","status_code":200,"metadata":{"k":1}}"#.to_owned(),
        r#"{"method":"GET","path":"/a","status_code":200,"metadata":"str"}"#.to_owned(),
        r#"{"method":"GET","path":"/a","status_code":200,"metadata":["a","b"]}"#.to_owned(),
        // 21: id that is not a UUID
        r#"{"id":"not-a-uuid","method":"GET","path":"/a","status_code":200}"#.to_owned(),
        // 22: method of the wrong type
        r#"{"method":5,"path":"/a","status_code":200}"#.to_owned(),
        // 23: valid, with every free-form kind
        r#"{"method":"GET","path":"/a","status_code":200,"request_body":{"any":["json"]},"metadata":{"a":"b"},"price":"1.5"}"#.to_owned(),
        // 24: a date without a time
        r#"{"method":"GET","path":"/a","status_code":200,"completed_at":"2024-01-01"}"#.to_owned(),
        // 25: null required field
        r#"{"method":null,"path":"/a","status_code":200}"#.to_owned(),
        // 26: empty object: all three required fields
        "{}".to_owned(),
        // 27: the same id as record 0, in capitals
        format!(
            r#"{{"id":"{}","method":"GET","path":"/dup","status_code":200}}"#,
            U0.to_uppercase()
        ),
        // 28: a fractional status code
        r#"{"method":"GET","path":"/a","status_code":200.5}"#.to_owned(),
        // 29: an offset that is not ±hh:mm
        r#"{"method":"GET","path":"/a","status_code":200,"started_at":"2024-01-01T10:00:00+0200"}"#
            .to_owned(),
    ];
    let expected = pairs(&[
        (1, Some("method")),
        (2, Some("path")),
        (3, Some("status_code")),
        (4, Some("status_code")),
        (5, Some("status_code")),
        (6, Some("client_ip")),
        (7, Some("created_at")),
        (8, Some("colour")),
        (9, Some("status_code")),
        (10, None),
        (11, None),
        (12, None),
        (13, None),
        (14, Some("id")),
        (15, Some("method")),
        (15, Some("path")),
        (15, Some("status_code")),
        (15, Some("client_ip")),
        (15, Some("started_at")),
        (15, Some("duration_ms")),
        (15, Some("minutes")),
        (15, Some("seconds")),
        (15, Some("price")),
        (16, Some("price")),
        (17, Some("price")),
        (18, Some("metadata")),
        (19, Some("metadata")),
        (20, Some("metadata")),
        (21, Some("id")),
        (22, Some("method")),
        (24, Some("completed_at")),
        (25, Some("method")),
        (26, Some("method")),
        (26, Some("path")),
        (26, Some("status_code")),
        (27, Some("id")),
        (28, Some("status_code")),
        (29, Some("started_at")),
    ]);
    (records.to_vec(), expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_arrays_and_ndjson_are_stored_and_visible_at_once() {
    let server = TestServer::start().await;
    let key = server.org_with_key("formats").await;
    // A JSON array, with the content type's parameters and any casing.
    for ct in [
        Some("application/json"),
        Some("Application/JSON; charset=utf-8"),
        None,
    ] {
        let body = json!([rec("/json/1"), rec("/json/2")]).to_string();
        let resp = post(&server, &key.secret, ct, body).await;
        assert_eq!(
            expect(resp, StatusCode::ACCEPTED).await,
            json!({"accepted": 2, "duplicates": 0}),
            "{ct:?}"
        );
    }
    // NDJSON: blank and whitespace-only lines are ignored, CRLF line ends accepted, the last
    // line may lack its newline.
    let text = format!(
        "\n{}\n\n   \n{}\r\n\t\n{}",
        rec("/nd/1"),
        rec("/nd/2"),
        json!({"method": "delete", "path": "/nd/3", "status_code": 204})
    );
    for ct in [
        "application/x-ndjson",
        "application/x-ndjson; charset=utf-8",
    ] {
        let resp = post(&server, &key.secret, Some(ct), text.clone()).await;
        assert_eq!(
            expect(resp, StatusCode::ACCEPTED).await,
            json!({"accepted": 3, "duplicates": 0})
        );
    }
    // Right after the 202, the records are listed.
    let logs = all_logs(&server, &key.secret).await;
    assert_eq!(logs.len(), 12);
    let paths: BTreeSet<&str> = logs.iter().map(|l| l["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/json/1", "/json/2", "/nd/1", "/nd/2", "/nd/3"])
    );
    let del = logs.iter().find(|l| l["path"] == "/nd/3").unwrap();
    assert_eq!(del["method"], "DELETE");
    assert_eq!(del["status_code"], 204);
    // An empty batch is fine and stores nothing.
    for (ct, body) in [("application/json", "[]"), ("application/x-ndjson", "\n\n")] {
        let resp = post(&server, &key.secret, Some(ct), body).await;
        assert_eq!(
            expect(resp, StatusCode::ACCEPTED).await,
            json!({"accepted": 0, "duplicates": 0})
        );
    }
    assert_eq!(stored_count(&server, "formats").await, 12);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_record_is_listed_and_nothing_is_stored() {
    let server = TestServer::start().await;
    let key = server.org_with_key("invalid").await;
    let (records, expected) = bad_batch();
    let array = format!("[{}]", records.join(","));
    // The same batch as NDJSON, with blank lines (which do not count as records) between.
    let lines = records.join("\n\n  \n");
    for (ct, body) in [("application/json", array), ("application/x-ndjson", lines)] {
        let resp = post(&server, &key.secret, Some(ct), body).await;
        assert!(resp.headers().get("www-authenticate").is_none());
        let body =
            expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
        let got = set(detail_pairs(&body));
        assert_eq!(
            got,
            expected,
            "{ct}: missing {:?}, unexpected {:?}",
            expected.difference(&got).collect::<Vec<_>>(),
            got.difference(&expected).collect::<Vec<_>>()
        );
        // The unknown field is named, and its message says so.
        let colour = body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["index"] == 8)
            .unwrap();
        assert_eq!(colour["field"], "colour");
    }
    // Nothing of either batch was stored, not even the valid records 0 and 23.
    assert_eq!(stored_count(&server, "invalid").await, 0);
    assert!(all_logs(&server, &key.secret).await.is_empty());
    // The valid records alone go through.
    let resp = post(
        &server,
        &key.secret,
        Some("application/json"),
        format!("[{},{}]", records[0], records[23]),
    )
    .await;
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 2, "duplicates": 0})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_lines_that_are_not_json_are_invalid_records() {
    let server = TestServer::start().await;
    let key = server.org_with_key("ndjson-bad").await;
    let body = format!(
        "{}\n\n{{\"method\":\n{}\nnot json at all\n",
        rec("/a"),
        rec("/b")
    );
    let resp = post(&server, &key.secret, Some("application/x-ndjson"), body).await;
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    // Indexes count records (non-blank lines), not lines. Which field a truncated record is
    // blamed on is not specified (today: the field being parsed), so only the indexes are
    // checked, one problem each.
    let got = detail_pairs(&body);
    let indexes: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes, [1, 3], "{body}");
    assert_eq!(got[1].1, None, "a line that is not an object: {body}");
    assert_eq!(stored_count(&server, "ndjson-bad").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_records_need_a_known_org_id() {
    let server = TestServer::start().await;
    let key = server.org_with_key("op-target").await;
    let batch = json!([
        {"org_id": "op-target", "method": "GET", "path": "/ok", "status_code": 200},
        {"method": "GET", "path": "/no-org", "status_code": 200},
        {"org_id": "ghost-org", "method": "GET", "path": "/ghost", "status_code": 200},
        {"org_id": "not a valid id", "method": "GET", "path": "/bad", "status_code": 200},
        {"org_id": "", "method": "GET", "path": "/empty", "status_code": 200},
        {"org_id": 42, "method": "GET", "path": "/typed", "status_code": 200},
        {"org_id": "op-target", "id": U1, "method": "GET", "path": "/ok2", "status_code": 200},
        {"org_id": "op-target", "id": U1, "method": "GET", "path": "/dup", "status_code": 200}
    ]);
    let resp = server
        .operator(Method::POST, "/v1/ingest/requests")
        .json(&batch)
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(
        set(detail_pairs(&body)),
        pairs(&[
            (1, Some("org_id")),
            (2, Some("org_id")),
            (3, Some("org_id")),
            (4, Some("org_id")),
            (5, Some("org_id")),
            (7, Some("id")),
        ]),
        "{body}"
    );
    assert_eq!(stored_count(&server, "op-target").await, 0);
    // With a known org on every record, the operator's batch is stored in that org.
    let got = operator_ingest(
        &server,
        &json!([{"org_id": "op-target", "method": "GET", "path": "/ok", "status_code": 200}]),
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(got, json!({"accepted": 1, "duplicates": 0}));
    assert_eq!(all_logs(&server, &key.secret).await[0]["path"], "/ok");
    server.stop().await;
}

/// SPEC §4: a refused batch lists *each* problem. A record whose fields are invalid and whose
/// `org_id` is missing (operator token) has both kinds of problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_org_problem_is_listed_beside_its_field_problems() {
    let server = TestServer::start().await;
    server.create_org("op-both").await;
    let batch = json!([
        {"path": "/no-method-no-org", "status_code": 200},
        {"org_id": "ghost-org", "method": "GET", "path": "/a", "status_code": 99}
    ]);
    let resp = server
        .operator(Method::POST, "/v1/ingest/requests")
        .json(&batch)
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(
        set(detail_pairs(&body)),
        pairs(&[
            (0, Some("method")),
            (0, Some("org_id")),
            (1, Some("status_code")),
            (1, Some("org_id")),
        ]),
        "{body}"
    );
    server.stop().await;
}

/// SPEC §4/§11: every problem is listed, also when a record names an unknown field or has a
/// value of the wrong type: those must not hide the record's other problems.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_does_not_hide_the_records_other_problems() {
    let server = TestServer::start().await;
    let key = server.org_with_key("hidden").await;
    let resp = post(
        &server,
        &key.secret,
        Some("application/json"),
        r#"[{"colour":"red","status_code":99,"client_ip":"nope"},
            {"method":"GET","path":"/a","status_code":"200","client_ip":"nope","shape":1}]"#,
    )
    .await;
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(
        set(detail_pairs(&body)),
        pairs(&[
            (0, Some("colour")),
            (0, Some("method")),
            (0, Some("path")),
            (0, Some("status_code")),
            (0, Some("client_ip")),
            (1, Some("status_code")),
            (1, Some("client_ip")),
            (1, Some("shape")),
        ]),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_and_other_media_types_415() {
    let server = TestServer::start().await;
    let key = server.org_with_key("media").await;
    let one = rec("/a").to_string();
    for ct in [
        "text/plain",
        "application/xml",
        "text/csv",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "application/jsonx",
    ] {
        let resp = post(&server, &key.secret, Some(ct), format!("[{one}]")).await;
        expect_native_error(
            resp,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        )
        .await;
    }
    // Bodies that are no batch at all: a single object (with a hint about NDJSON), text,
    // truncated JSON, invalid UTF-8.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", one.clone().into_bytes()),
        ("application/json", b"not json".to_vec()),
        ("application/json", format!("[{one}").into_bytes()),
        ("application/json", b"".to_vec()),
        ("application/json", vec![b'[', 0xff, 0xfe, b']']),
        ("application/x-ndjson", vec![0xff, b'\n']),
    ];
    for (ct, body) in cases {
        let resp = post(&server, &key.secret, Some(ct), body.clone()).await;
        let err = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        if body == one.as_bytes() {
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("application/x-ndjson"),
                "{err}"
            );
        }
    }
    assert_eq!(stored_count(&server, "media").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_ten_thousand_records_per_call() {
    let server = TestServer::start().await;
    let key = server.org_with_key("many").await;
    let line = r#"{"method":"GET","path":"/m","status_code":200}"#;
    let array = |n: usize| format!("[{}]", vec![line; n].join(","));
    let lines = |n: usize| vec![line; n].join("\n");
    // One too many, in either format: 413, nothing stored.
    let resp = post(
        &server,
        &key.secret,
        Some("application/json"),
        array(10_001),
    )
    .await;
    expect_native_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
    let resp = post(
        &server,
        &key.secret,
        Some("application/x-ndjson"),
        lines(10_001),
    )
    .await;
    expect_native_error(
        resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
    assert_eq!(stored_count(&server, "many").await, 0);
    // Exactly the limit: accepted, all of it.
    let resp = post(
        &server,
        &key.secret,
        Some("application/x-ndjson"),
        lines(10_000),
    )
    .await;
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 10_000, "duplicates": 0})
    );
    assert_eq!(stored_count(&server, "many").await, 10_000);
    server.stop().await;
}

/// What a raw HTTP/1.1 exchange answered: status and JSON body.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    body: Value,
}

/// Parses a complete response (head and `Content-Length` body) out of `buf`, if it is there.
fn parse_response(buf: &[u8]) -> Option<RawAnswer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + len)?;
    Some(RawAnswer {
        status,
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    })
}

/// Writes all of `buf` (tokio's `io-util` extension traits are not enabled here).
async fn write_all(wr: &OwnedWriteHalf, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        wr.writable().await?;
        match wr.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is available into `tmp`; `Ok(0)` at EOF.
async fn read_some(rd: &OwnedReadHalf, tmp: &mut [u8]) -> std::io::Result<usize> {
    loop {
        rd.readable().await?;
        match rd.try_read(tmp) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Sends `head` and then `pieces` over a raw connection, reading the answer concurrently (a
/// server may answer before the body is complete). The write side is never closed, so the
/// server cannot learn from an EOF that the body ended early.
async fn raw_exchange(addr: SocketAddr, head: String, pieces: Vec<Vec<u8>>) -> RawAnswer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (rd, wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write_all(&wr, head.as_bytes()).await.is_err() {
            return;
        }
        for p in pieces {
            if write_all(&wr, &p).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
        drop(wr);
    });
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = Vec::new();
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            if let Some(a) = parse_response(&buf) {
                return a;
            }
            match read_some(&rd, &mut tmp).await {
                Ok(0) => panic!(
                    "connection closed before a full response: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) => panic!(
                    "read failed ({e}) after {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            }
        }
    })
    .await
    .expect("no answer within 30 s");
    writer.abort();
    answer
}

fn head(addr: SocketAddr, secret: &str, framing: &str) -> String {
    format!(
        "POST /v1/ingest/requests HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {secret}\r\n\
         Content-Type: application/json\r\n{framing}\r\n"
    )
}

/// A JSON array of one valid record whose `request_body` holds `filler` bytes, split into
/// pieces of at most 1 MiB, and its total length.
fn big_batch(filler: usize) -> (Vec<Vec<u8>>, usize) {
    let mut pieces =
        vec![br#"[{"method":"GET","path":"/big","status_code":200,"request_body":""#.to_vec()];
    let mut left = filler;
    while left > 0 {
        let n = left.min(MIB);
        pieces.push(vec![b'a'; n]);
        left -= n;
    }
    pieces.push(br#""}]"#.to_vec());
    let total = pieces.iter().map(Vec::len).sum();
    (pieces, total)
}

fn chunked(pieces: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = pieces
        .into_iter()
        .map(|p| {
            let mut c = format!("{:x}\r\n", p.len()).into_bytes();
            c.extend_from_slice(&p);
            c.extend_from_slice(b"\r\n");
            c
        })
        .collect();
    out.push(b"0\r\n\r\n".to_vec());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_sixteen_mib_are_413_however_they_are_framed() {
    let server = TestServer::start().await;
    let key = server.org_with_key("huge").await;
    let overhead = big_batch(0).1;

    // Exactly 16 MiB with an honest Content-Length: accepted (the body is capped on storage).
    let (pieces, total) = big_batch(MAX_BODY - overhead);
    assert_eq!(total, MAX_BODY);
    let a = raw_exchange(
        server.addr,
        head(
            server.addr,
            &key.secret,
            &format!("Content-Length: {total}\r\n"),
        ),
        pieces,
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(a.body, json!({"accepted": 1, "duplicates": 0}));

    // One byte more, with an honest Content-Length: 413.
    let (pieces, total) = big_batch(MAX_BODY - overhead + 1);
    let a = raw_exchange(
        server.addr,
        head(
            server.addr,
            &key.secret,
            &format!("Content-Length: {total}\r\n"),
        ),
        pieces,
    )
    .await;
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "payload_too_large");

    // A Content-Length over the limit whose body never comes: refused at once, without
    // waiting for a body.
    let a = raw_exchange(
        server.addr,
        head(
            server.addr,
            &key.secret,
            &format!("Content-Length: {}\r\n", MAX_BODY + 1),
        ),
        Vec::new(),
    )
    .await;
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "payload_too_large");

    // No Content-Length at all (chunked): within the limit it is read and stored...
    let (pieces, total) = big_batch(MAX_BODY - overhead);
    assert_eq!(total, MAX_BODY);
    let a = raw_exchange(
        server.addr,
        head(server.addr, &key.secret, "Transfer-Encoding: chunked\r\n"),
        chunked(pieces),
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);

    // ...and one byte over it is refused while streaming.
    let (pieces, _) = big_batch(MAX_BODY - overhead + 1);
    let a = raw_exchange(
        server.addr,
        head(server.addr, &key.secret, "Transfer-Encoding: chunked\r\n"),
        chunked(pieces),
    )
    .await;
    assert_eq!(a.status, 413, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "payload_too_large");

    // Only the two bodies within the limit were stored.
    assert_eq!(stored_count(&server, "huge").await, 2);
    // A small chunked NDJSON body works like any other.
    let body = format!("{}\n{}\n", rec("/c1"), rec("/c2")).into_bytes();
    let mut h = head(server.addr, &key.secret, "Transfer-Encoding: chunked\r\n");
    h = h.replace("application/json", "application/x-ndjson");
    let a = raw_exchange(
        server.addr,
        h,
        chunked(vec![body[..10].to_vec(), body[10..].to_vec()]),
    )
    .await;
    assert_eq!(a.status, 202, "{:?}", a.body);
    assert_eq!(a.body, json!({"accepted": 2, "duplicates": 0}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_make_retries_idempotent() {
    let server = TestServer::start().await;
    let key = server.org_with_key("idem").await;
    let batch = json!([
        {"id": U0, "method": "GET", "path": "/first", "status_code": 200},
        {"id": U1, "method": "GET", "path": "/second", "status_code": 200},
        {"id": U2, "method": "GET", "path": "/third", "status_code": 200}
    ]);
    let first = server
        .ingest(&key.secret, &batch, StatusCode::ACCEPTED)
        .await;
    assert_eq!(first, json!({"accepted": 3, "duplicates": 0}));
    let again = server
        .ingest(&key.secret, &batch, StatusCode::ACCEPTED)
        .await;
    assert_eq!(again, json!({"accepted": 0, "duplicates": 3}));
    // As NDJSON, and with the ids in capitals: still the same records.
    let upper: Vec<Value> = batch
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["id"] = json!(r["id"].as_str().unwrap().to_uppercase());
            r
        })
        .collect();
    let resp = post(
        &server,
        &key.secret,
        Some("application/x-ndjson"),
        ndjson(&upper),
    )
    .await;
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 0, "duplicates": 3})
    );
    // A batch mixing stored and new ids stores only the new; a stored id's record keeps its
    // first content.
    let mixed = json!([
        {"id": U0, "method": "POST", "path": "/changed", "status_code": 500},
        {"id": "0190f5a2-7b3c-7def-8123-000000000004", "method": "GET", "path": "/fourth", "status_code": 200}
    ]);
    let got = server
        .ingest(&key.secret, &mixed, StatusCode::ACCEPTED)
        .await;
    assert_eq!(got, json!({"accepted": 1, "duplicates": 1}));
    let logs = all_logs(&server, &key.secret).await;
    assert_eq!(logs.len(), 4, "no duplicates listed: {logs:?}");
    let ids: BTreeSet<&str> = logs.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
    let first = logs.iter().find(|l| l["id"] == U0).unwrap();
    assert_eq!(first["path"], "/first");
    assert_eq!(first["status_code"], 200);
    // Records without an id get a fresh one each time: resending them stores them again.
    for _ in 0..2 {
        let got = server
            .ingest(&key.secret, &json!([rec("/no-id")]), StatusCode::ACCEPTED)
            .await;
        assert_eq!(got, json!({"accepted": 1, "duplicates": 0}));
    }
    assert_eq!(stored_count(&server, "idem").await, 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_is_accepted_in_two_orgs() {
    let server = TestServer::start().await;
    let a = server.org_with_key("same-id-a").await;
    let b = server.org_with_key("same-id-b").await;
    for (k, path) in [(&a, "/in-a"), (&b, "/in-b")] {
        let got = server
            .ingest(
                &k.secret,
                &json!([{"id": U0, "method": "GET", "path": path, "status_code": 200}]),
                StatusCode::ACCEPTED,
            )
            .await;
        assert_eq!(got, json!({"accepted": 1, "duplicates": 0}));
    }
    // One operator batch carrying one id for two orgs: two new records, not a duplicate.
    let got = operator_ingest(
        &server,
        &json!([
            {"org_id": "same-id-a", "id": U1, "method": "GET", "path": "/op-a", "status_code": 200},
            {"org_id": "same-id-b", "id": U1, "method": "GET", "path": "/op-b", "status_code": 200}
        ]),
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(got, json!({"accepted": 2, "duplicates": 0}));
    for (k, mine) in [(&a, ["/in-a", "/op-a"]), (&b, ["/in-b", "/op-b"])] {
        let logs = all_logs(&server, &k.secret).await;
        let paths: BTreeSet<&str> = logs.iter().map(|l| l["path"].as_str().unwrap()).collect();
        assert_eq!(paths, BTreeSet::from(mine));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_means_committed_even_under_concurrency() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let key = server.org_with_key("commit").await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let server = std::sync::Arc::clone(&server);
        let secret = key.secret.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                let rid = format!("batch-{t}-{round}");
                let records: Vec<Value> = (0..40)
                    .map(|i| {
                        json!({"method": "POST", "path": format!("/c/{i}"), "status_code": 201,
                               "request_id": rid})
                    })
                    .collect();
                let got = server
                    .ingest(&secret, &Value::Array(records), StatusCode::ACCEPTED)
                    .await;
                assert_eq!(got, json!({"accepted": 40, "duplicates": 0}));
                // No waiting: the batch is listed in full right after its 202.
                let page = server
                    .logs(&secret, &format!("request_id={rid}&limit=100"))
                    .await;
                assert_eq!(page["data"].as_array().unwrap().len(), 40, "{rid}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stored_count(&server, "commit").await, 8 * 3 * 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_capped_and_the_rest_of_the_record_is_kept() {
    let server = TestServer::start_with(Options {
        body_cap_bytes: 16,
        ..Options::default()
    })
    .await;
    let key = server.org_with_key("caps").await;
    let full = json!({
        "id": U0,
        "request_id": "req_cap_1",
        "method": "post",
        "path": "/cap/full",
        "query": "?a=1&b=2",
        "route_pattern": "/cap/{kind}",
        "status_code": 201,
        "error_code": "none",
        "started_at": "2024-05-01T14:00:00.100+02:00",
        "completed_at": "2024-05-01T12:00:00.350Z",
        "created_at": "2024-05-01T12:00:01Z",
        "client_ip": "2001:db8::1",
        "user_agent": "curl/8",
        "origin": "https://app.example",
        "auth_type": "jwt",
        "principal_type": "user",
        "principal_id": "usr_1",
        "user_id": "usr_1",
        "email": "u@example.com",
        "api_key_id": "key_1",
        "service_account_id": "sa_1",
        "request_body": "0123456789abcdefXYZ",
        "response_body": {"k": "0123456789abcdef"},
        "price": "16.74",
        "minutes": 2,
        "seconds": 5,
        "stripe_invoice_item_id": "ii_1",
        "metadata": {"team": "core", "empty": ""}
    });
    let batch = json!([
        full,
        {"id": U1, "method": "GET", "path": "/cap/exact", "status_code": 200,
         "request_body": "0123456789abcdef", "response_body": null},
        {"id": U2, "method": "GET", "path": "/cap/utf8", "status_code": 200,
         "request_body": "aéééééééé", "response_body": 12345}
    ]);
    let got = server
        .ingest(&key.secret, &batch, StatusCode::ACCEPTED)
        .await;
    assert_eq!(got, json!({"accepted": 3, "duplicates": 0}));

    let log = stored_log(&server, "caps", U0).await.unwrap();
    assert_eq!(log.request_body.as_deref(), Some("0123456789abcdef"));
    assert!(log.request_body_truncated);
    let response = log.response_body.as_deref().unwrap();
    assert_eq!(response.len(), 16, "{response}");
    assert!(
        r#"{"k":"0123456789abcdef"}"#.starts_with(response),
        "{response}"
    );
    assert!(log.response_body_truncated);
    // Everything else is intact.
    assert_eq!(log.id.to_string(), U0);
    assert_eq!(log.request_id.as_deref(), Some("req_cap_1"));
    assert_eq!(log.method, "POST");
    assert_eq!(log.path, "/cap/full");
    assert_eq!(log.query.as_deref(), Some("a=1&b=2"));
    assert_eq!(log.route_pattern.as_deref(), Some("/cap/{kind}"));
    assert_eq!(log.status_code, 201);
    assert_eq!(log.error_code.as_deref(), Some("none"));
    assert_eq!(
        log.started_at.unwrap().to_rfc3339(),
        "2024-05-01T12:00:00.100Z"
    );
    assert_eq!(
        log.completed_at.unwrap().to_rfc3339(),
        "2024-05-01T12:00:00.350Z"
    );
    assert_eq!(log.duration_ms, Some(250), "derived from the two times");
    assert_eq!(log.created_at.to_rfc3339(), "2024-05-01T12:00:01.000Z");
    assert_eq!(log.client_ip.unwrap().to_string(), "2001:db8::1");
    assert_eq!(log.user_agent.as_deref(), Some("curl/8"));
    assert_eq!(log.origin.as_deref(), Some("https://app.example"));
    assert_eq!(log.auth_type.as_deref(), Some("jwt"));
    assert_eq!(log.principal_type.as_deref(), Some("user"));
    assert_eq!(log.principal_id.as_deref(), Some("usr_1"));
    assert_eq!(log.user_id.as_deref(), Some("usr_1"));
    assert_eq!(log.email.as_deref(), Some("u@example.com"));
    assert_eq!(log.api_key_id.as_deref(), Some("key_1"));
    assert_eq!(log.service_account_id.as_deref(), Some("sa_1"));
    assert_eq!(log.price.as_deref(), Some("16.74"));
    assert_eq!(log.minutes, Some(2));
    assert_eq!(log.seconds, Some(5));
    assert_eq!(log.stripe_invoice_item_id.as_deref(), Some("ii_1"));
    let meta: Value = serde_json::from_str(log.metadata.as_deref().unwrap()).unwrap();
    assert_eq!(meta, json!({"team": "core", "empty": ""}));

    let exact = stored_log(&server, "caps", U1).await.unwrap();
    assert_eq!(exact.request_body.as_deref(), Some("0123456789abcdef"));
    assert!(!exact.request_body_truncated, "16 bytes fit a 16-byte cap");
    assert_eq!(exact.response_body, None);
    assert!(!exact.response_body_truncated);

    let utf8 = stored_log(&server, "caps", U2).await.unwrap();
    // 17 bytes; the cut falls inside the last 'é', so it moves back to a char boundary.
    assert_eq!(utf8.request_body.as_deref(), Some("aééééééé"));
    assert!(utf8.request_body_truncated);
    assert_eq!(utf8.response_body.as_deref(), Some("12345"));
    assert!(!utf8.response_body_truncated);

    // The listing shows the record as ingested (method uppercased, times in UTC ms).
    let listed = all_logs(&server, &key.secret).await;
    let item = listed.iter().find(|l| l["id"] == U0).unwrap();
    assert_eq!(
        item,
        &json!({
            "auth_type": "jwt",
            "created_at": "2024-05-01T12:00:01.000Z",
            "duration_ms": 250,
            "error_code": "none",
            "id": U0,
            "method": "POST",
            "path": "/cap/full",
            "request_id": "req_cap_1",
            "route_pattern": "/cap/{kind}",
            "status_code": 201
        })
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_decimals_as_strings_or_numbers() {
    let server = TestServer::start().await;
    let key = server.org_with_key("prices").await;
    let good = [
        (json!("16.74"), "16.74"),
        (json!(16.74), "16.74"),
        (json!(3), "3"),
        (json!("3"), "3"),
        (json!("0.5"), "0.5"),
        (json!(0), "0"),
        (json!("0.000001"), "0.000001"),
    ];
    for (i, (price, stored)) in good.iter().enumerate() {
        let id = format!("0190f5a2-7b3c-7def-8123-00000000100{i}");
        let got = server
            .ingest(
                &key.secret,
                &json!([{"id": id, "method": "GET", "path": "/p", "status_code": 200,
                         "price": price}]),
                StatusCode::ACCEPTED,
            )
            .await;
        assert_eq!(got["accepted"], 1, "{price}");
        let log = stored_log(&server, "prices", &id).await.unwrap();
        assert_eq!(log.price.as_deref(), Some(*stored), "{price}");
    }
    // A null price is no price.
    let id = "0190f5a2-7b3c-7def-8123-000000002000";
    server
        .ingest(
            &key.secret,
            &json!([{"id": id, "method": "GET", "path": "/p", "status_code": 200, "price": null}]),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(stored_log(&server, "prices", id).await.unwrap().price, None);
    let bad = [
        json!("abc"),
        json!("1e3"),
        json!(".5"),
        json!("5."),
        json!("1.2.3"),
        json!("--1"),
        // A price is never negative (a refund is a record of its own kind, not a call).
        json!("-0.5"),
        json!(-3),
        json!("16,74"),
        json!(" 16.74"),
        json!(true),
        json!({"amount": 1}),
        json!([1]),
    ];
    let records: Vec<Value> = bad
        .iter()
        .map(|p| json!({"method": "GET", "path": "/p", "status_code": 200, "price": p}))
        .collect();
    let resp = server
        .request(Method::POST, "/v1/ingest/requests")
        .header("x-api-key", &key.secret)
        .json(&records)
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    let expected: BTreeSet<(u64, Option<String>)> = (0..bad.len() as u64)
        .map(|i| (i, Some("price".to_owned())))
        .collect();
    assert_eq!(set(detail_pairs(&body)), expected, "{body}");
    assert_eq!(stored_count(&server, "prices").await, good.len() as u64 + 1);
    server.stop().await;
}

/// A price sent as a JSON number is a decimal too: it must be kept as written (or refused),
/// never silently rounded through a binary float.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numeric_price_is_stored_exactly_as_written() {
    let server = TestServer::start().await;
    let key = server.org_with_key("price-digits").await;
    let body = format!(
        r#"[{{"id":"{U0}","method":"GET","path":"/p","status_code":200,"price":12345678.123456789}}]"#
    );
    let resp = post(&server, &key.secret, Some("application/json"), body).await;
    let status = resp.status();
    let text = resp.text().await.unwrap();
    if status == StatusCode::ACCEPTED {
        let log = stored_log(&server, "price-digits", U0).await.unwrap();
        assert_eq!(
            log.price.as_deref(),
            Some("12345678.123456789"),
            "the price was changed on the way in"
        );
    } else {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_an_object_of_strings() {
    let server = TestServer::start().await;
    let key = server.org_with_key("meta").await;
    let sixty_four: serde_json::Map<String, Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v"))).collect();
    let sixty_five: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let good = [
        json!({"a": "b", "c": ""}),
        json!({}),
        json!(null),
        Value::Object(sixty_four),
    ];
    let records: Vec<Value> = good
        .iter()
        .map(|m| json!({"method": "GET", "path": "/m", "status_code": 200, "metadata": m}))
        .collect();
    let got = server
        .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
        .await;
    assert_eq!(got["accepted"], good.len());
    let bad = [
        json!({"n": 1}),
        json!({"b": true}),
        json!({"nested": {"a": "b"}}),
        json!({"list": ["a"]}),
        json!({"null": null}),
        json!("a=b"),
        json!(["a", "b"]),
        json!(7),
        Value::Object(sixty_five),
        json!({"k".repeat(257): "v"}),
        json!({"k": "v".repeat(1025)}),
    ];
    let records: Vec<Value> = bad
        .iter()
        .map(|m| json!({"method": "GET", "path": "/m", "status_code": 200, "metadata": m}))
        .collect();
    let resp = server
        .request(Method::POST, "/v1/ingest/requests")
        .header("x-api-key", &key.secret)
        .json(&records)
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    let expected: BTreeSet<(u64, Option<String>)> = (0..bad.len() as u64)
        .map(|i| (i, Some("metadata".to_owned())))
        .collect();
    assert_eq!(set(detail_pairs(&body)), expected, "{body}");
    assert_eq!(stored_count(&server, "meta").await, good.len() as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_uppercased_and_times_normalized() {
    let server = TestServer::start().await;
    let key = server.org_with_key("norm").await;
    let batch = json!([
        {"id": U0, "method": "get", "path": "/n", "status_code": 200,
         "created_at": "2024-05-01T14:00:00.123456+02:00"},
        {"id": U1, "method": "propfind", "path": "/n", "status_code": 207,
         "created_at": "2024-05-01T00:00:00-05:30"},
        {"id": U2, "method": "Patch", "path": "/n", "status_code": 200}
    ]);
    let before = apitrail_model::Timestamp::now();
    server
        .ingest(&key.secret, &batch, StatusCode::ACCEPTED)
        .await;
    let after = apitrail_model::Timestamp::now();
    let logs = all_logs(&server, &key.secret).await;
    let by_id = |id: &str| logs.iter().find(|l| l["id"] == id).unwrap().clone();
    assert_eq!(by_id(U0)["method"], "GET");
    assert_eq!(by_id(U0)["created_at"], "2024-05-01T12:00:00.123Z");
    assert_eq!(by_id(U1)["method"], "PROPFIND");
    assert_eq!(by_id(U1)["created_at"], "2024-05-01T05:30:00.000Z");
    assert_eq!(by_id(U2)["method"], "PATCH");
    // created_at defaults to the time of ingest.
    let stored = stored_log(&server, "norm", U2).await.unwrap().created_at;
    assert!(before <= stored && stored <= after, "{stored:?}");
    let listed = by_id(U2)["created_at"].as_str().unwrap().to_owned();
    assert_eq!(listed, stored.to_rfc3339());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_with_retry_after() {
    let server = TestServer::start_with(Options {
        queue_capacity: 5,
        ..Options::default()
    })
    .await;
    let key = server.org_with_key("queue").await;
    let batch = |n: usize| Value::Array((0..n).map(|i| rec(&format!("/q/{i}"))).collect());
    let resp = server
        .request(Method::POST, "/v1/ingest/requests")
        .header("x-api-key", &key.secret)
        .json(&batch(6))
        .send()
        .await
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    expect_native_error(resp, StatusCode::SERVICE_UNAVAILABLE, "overloaded", None).await;
    assert!(
        retry.as_deref().is_some_and(|r| r.parse::<u32>().is_ok()),
        "Retry-After: {retry:?}"
    );
    assert_eq!(stored_count(&server, "queue").await, 0);
    let got = server
        .ingest(&key.secret, &batch(5), StatusCode::ACCEPTED)
        .await;
    assert_eq!(got, json!({"accepted": 5, "duplicates": 0}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_filter_the_ingested_records() {
    // A sanity check of the round trip used by the other suites: a record's request_id is
    // found with and without the req_ prefix.
    let server = TestServer::start().await;
    let key = server.org_with_key("rid").await;
    server
        .ingest(
            &key.secret,
            &json!([{"method": "GET", "path": "/r", "status_code": 200, "request_id": "req_abc"},
                    {"method": "GET", "path": "/s", "status_code": 200, "request_id": "xyz"}]),
            StatusCode::ACCEPTED,
        )
        .await;
    for (q, path) in [
        ("request_id=req_abc", "/r"),
        ("request_id=abc", "/r"),
        ("request_id=xyz", "/s"),
        ("request_id=req_xyz", "/s"),
    ] {
        let got = all_logs_where(&server, &key.secret, q).await;
        assert_eq!(got.len(), 1, "{q}");
        assert_eq!(got[0]["path"], path, "{q}");
    }
    server.stop().await;
}

/// A NUL character (`\u0000`) cannot be kept as text by every store (PostgreSQL refuses it),
/// so every way in refuses it with a 400 naming the field or parameter, on both backends
/// alike, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_by_name_everywhere() {
    let server = TestServer::start().await;
    let key = server.org_with_key("nul").await;
    let nul = "a\u{0}b";
    let resp = server
        .request(Method::POST, "/v1/ingest/requests")
        .header("x-api-key", &key.secret)
        .json(&json!([
            {"method": "GET", "path": "/fine", "status_code": 200},
            {"method": "GET", "path": format!("/{nul}"), "status_code": 200,
             "metadata": {"k": nul}, "user_agent": "\\u0000 is only text here"},
        ]))
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(
        http_support::detail_pairs(&body),
        vec![(1, Some("metadata".into())), (1, Some("path".into()))],
        "{body}"
    );
    assert_eq!(stored_count(&server, "nul").await, 0);

    let resp = server
        .request(Method::POST, "/v1/ingest/audit-events")
        .header("x-api-key", &key.secret)
        .json(&json!([{"action": "update", "resource_type": "destination",
                       "details": {"url": nul}}]))
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(
        http_support::detail_pairs(&body),
        vec![(0, Some("details".into()))]
    );

    for (path, param) in [
        ("/v1/logs?route_pattern=x%00", "route_pattern"),
        ("/v1/audit-log?action=x%00", "action"),
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
    let resp = server
        .get("/users/a%00b/api-calls", &key.secret)
        .send()
        .await
        .unwrap();
    let body = expect(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["error_code"], "invalid_parameter", "{body}");

    let resp = server
        .operator(Method::POST, "/admin/v1/orgs")
        .json(&json!({"id": "nul-org", "name": nul}))
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("name"),
    )
    .await;
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &key.secret)
        .json(
            &json!({"name": nul, "scopes": ["read"], "principal_type": "user",
                      "principal_id": "u"}),
        )
        .send()
        .await
        .unwrap();
    expect_native_error(
        resp,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("name"),
    )
    .await;
    server.stop().await;
}

/// A record that names a field twice is refused, not silently dropped from an accepted batch
/// (each field alone is fine, so only the whole record can be at fault); a record whose NUL
/// hides in a value the server cannot read as a whole is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_repeated_field_is_refused_not_dropped() {
    let server = TestServer::start().await;
    let key = server.org_with_key("twice").await;
    for (path, body, want) in [
        (
            "/v1/ingest/requests",
            r#"[{"method":"GET","method":"POST","path":"/a","status_code":200},
                {"method":"GET","path":"/b","status_code":200}]"#,
            0,
        ),
        (
            "/v1/ingest/audit-events",
            r#"[{"action":"a","action":"b","resource_type":"r"},
                {"action":"c","resource_type":"r"}]"#,
            0,
        ),
        (
            "/v1/ingest/audit-events",
            r#"[{"action":"c","resource_type":"r"},
                {"action":"x\u0000y","resource_type":"r","details":{"n":1e400}}]"#,
            1,
        ),
    ] {
        let resp = server
            .request(Method::POST, path)
            .header("x-api-key", &key.secret)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let err = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
        assert_eq!(detail_pairs(&err), vec![(want, None)], "{path}: {err}");
    }
    assert_eq!(stored_count(&server, "twice").await, 0);
    let audit = http_support::audit_entries(&server, "twice").await;
    assert!(
        audit.iter().all(|e| e.resource_type != "r"),
        "nothing of a refused batch is stored: {audit:?}"
    );
    server.stop().await;
}

/// Issue 13: the values a hostile or careless client sent that broke others or itself are
/// refused by name: times outside the ingest window (a record dated 9999 sat on top of every
/// newest-first list), a duration derived from absurd times, counts the zoo dialect's 32-bit
/// clients cannot read, negative prices. Nothing of a refused batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_counts_and_prices_outside_their_bounds_are_refused() {
    let server = TestServer::start().await;
    let key = server.org_with_key("bounds").await;
    let base = json!({"method": "GET", "path": "/b", "status_code": 200});
    let with = |extra: Value| {
        let mut r = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let cases = [
        (
            json!({"created_at": "9999-12-31T23:59:59Z"}),
            vec!["created_at"],
        ),
        (
            json!({"created_at": "1999-12-31T23:59:59Z"}),
            vec!["created_at"],
        ),
        (
            json!({"started_at": "0001-01-01T00:00:00Z", "completed_at": "9999-12-31T00:00:00Z"}),
            vec!["completed_at", "started_at"],
        ),
        (
            json!({"started_at": "2024-01-01T00:00:00Z", "completed_at": "2025-01-01T00:00:00Z"}),
            vec!["completed_at"],
        ),
        (json!({"minutes": 3_000_000_000_i64}), vec!["minutes"]),
        (json!({"seconds": 3_000_000_000_i64}), vec!["seconds"]),
        (json!({"price": "-1.50"}), vec!["price"]),
    ];
    for (extra, fields) in cases {
        let resp = server
            .request(Method::POST, "/v1/ingest/requests")
            .header("x-api-key", &key.secret)
            .json(&json!([with(extra.clone()), base.clone()]))
            .send()
            .await
            .unwrap();
        let body =
            expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
        let got: BTreeSet<(u64, Option<String>)> = detail_pairs(&body).into_iter().collect();
        let want: BTreeSet<(u64, Option<String>)> =
            fields.iter().map(|f| (0, Some((*f).to_owned()))).collect();
        assert_eq!(got, want, "{extra}: {body}");
    }
    assert_eq!(stored_count(&server, "bounds").await, 0);
    // The bounds themselves are accepted.
    let now = apitrail_model::Timestamp::now();
    let edge = [
        with(json!({"created_at": "2000-01-01T00:00:00Z", "minutes": 2_147_483_647, "price": "0"})),
        with(json!({"created_at": now.add_millis(60_000).to_rfc3339(), "seconds": 0})),
    ];
    server
        .ingest(
            &key.secret,
            &Value::Array(edge.to_vec()),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(stored_count(&server, "bounds").await, 2);

    // Audit events obey the same window.
    let resp = server
        .request(Method::POST, "/v1/ingest/audit-events")
        .header("x-api-key", &key.secret)
        .json(&json!([{"action": "a", "resource_type": "r", "created_at": "9999-01-01T00:00:00Z"}]))
        .send()
        .await
        .unwrap();
    let body = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    assert_eq!(
        detail_pairs(&body),
        vec![(0, Some("created_at".to_owned()))],
        "{body}"
    );
}

/// JSON does not tell `201` from `201.0`, nor does the OpenAPI `integer` type the document
/// gives these fields: an integer written with a zero fraction is stored as that integer,
/// and a real fraction is refused naming its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_may_carry_a_zero_fraction() {
    let server = TestServer::start().await;
    let key = server.org_with_key("integral").await;
    let body = json!([{"method": "GET", "path": "/f", "status_code": 201.0, "duration_ms": 12.0,
        "minutes": 3.0, "seconds": 0.0}]);
    let resp = post(
        &server,
        &key.secret,
        Some("application/json"),
        body.to_string(),
    )
    .await;
    assert_eq!(
        expect(resp, StatusCode::ACCEPTED).await,
        json!({"accepted": 1, "duplicates": 0})
    );
    let logs = all_logs(&server, &key.secret).await;
    assert_eq!(logs.len(), 1);
    assert_eq!(
        (
            logs[0]["status_code"].clone(),
            logs[0]["duration_ms"].clone()
        ),
        (json!(201), json!(12))
    );
    let body = json!([{"method": "GET", "path": "/f", "status_code": 201.5, "duration_ms": 1e300}]);
    let resp = post(
        &server,
        &key.secret,
        Some("application/json"),
        body.to_string(),
    )
    .await;
    let err = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
    let fields: BTreeSet<Option<String>> = detail_pairs(&err).into_iter().map(|(_, f)| f).collect();
    let want = ["duration_ms", "status_code"].map(|f| Some(f.to_owned()));
    assert_eq!(fields, BTreeSet::from(want));
    server.stop().await;
}

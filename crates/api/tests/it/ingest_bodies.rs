//! Ingest bodies. Compressed ingest: `Content-Encoding: gzip` and `zstd` bodies are decoded
//! (and held to the 16 MiB limit while decoding, so a decompression bomb is refused without
//! being inflated), other codings are 415, and a body that is not what its coding says is 400.
//! And an empty `org_id` is an invalid record, not the key's org (SPEC §11).

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use apitrail_testkit::{TestKey, TestServer, expect, expect_native_error};
use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

async fn post(
    server: &TestServer,
    key: &TestKey,
    route: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut rb = server
        .request(Method::POST, route)
        .header("x-api-key", &key.secret)
        .header("content-type", content_type);
    if let Some(e) = encoding {
        rb = rb.header("content-encoding", e);
    }
    rb.body(body).send().await.unwrap()
}

fn record(n: u32) -> Value {
    json!({
        "id": format!("0190d5c4-0000-7000-8000-{n:012}"),
        "method": "GET",
        "path": format!("/compressed/{n}"),
        "status_code": 200
    })
}

fn ndjson(records: &[Value]) -> Vec<u8> {
    records
        .iter()
        .map(|r| format!("{r}\n"))
        .collect::<String>()
        .into_bytes()
}

async fn stored_paths(server: &TestServer, key: &TestKey) -> Vec<String> {
    let page = server.logs(&key.secret, "limit=100&sort_dir=asc").await;
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_bodies_are_decoded_and_stored() {
    let server = TestServer::start().await;
    let key = server.org_with_key("z").await;
    let array = serde_json::to_vec(&json!([record(1), record(2)])).unwrap();
    let cases: Vec<(&str, &str, Vec<u8>, u64)> = vec![
        ("application/json", "gzip", gzip(&array), 2),
        (
            "application/x-ndjson",
            "zstd",
            zstd(&ndjson(&[record(3)])),
            1,
        ),
        (
            "application/x-ndjson",
            "x-gzip",
            gzip(&ndjson(&[record(4)])),
            1,
        ),
        ("application/x-ndjson", "identity", ndjson(&[record(5)]), 1),
        (
            "application/x-ndjson",
            "Identity, GZIP",
            gzip(&ndjson(&[record(6)])),
            1,
        ),
    ];
    for (content_type, encoding, body, accepted) in cases {
        let resp = post(
            &server,
            &key,
            "/v1/ingest/requests",
            content_type,
            Some(encoding),
            body,
        )
        .await;
        let v = expect(resp, StatusCode::ACCEPTED).await;
        assert_eq!(v["accepted"], accepted, "{encoding}: {v}");
    }
    // Two zstd frames and two gzip members, one after the other, are one body each.
    let mut frames = zstd(&ndjson(&[record(7)]));
    frames.extend(zstd(&ndjson(&[record(8)])));
    let resp = post(
        &server,
        &key,
        "/v1/ingest/requests",
        "application/x-ndjson",
        Some("zstd"),
        frames,
    )
    .await;
    assert_eq!(expect(resp, StatusCode::ACCEPTED).await["accepted"], 2);
    let mut members = gzip(&ndjson(&[record(9)]));
    members.extend(gzip(&ndjson(&[record(10)])));
    let resp = post(
        &server,
        &key,
        "/v1/ingest/requests",
        "application/x-ndjson",
        Some("gzip"),
        members,
    )
    .await;
    assert_eq!(expect(resp, StatusCode::ACCEPTED).await["accepted"], 2);
    let want: Vec<String> = (1..=10).map(|n| format!("/compressed/{n}")).collect();
    assert_eq!(stored_paths(&server, &key).await, want);

    // Audit events too.
    let event =
        json!({"action": "update", "resource_type": "destination", "resource_id": "dst_gz"});
    let resp = post(
        &server,
        &key,
        "/v1/ingest/audit-events",
        "application/x-ndjson",
        Some("zstd"),
        zstd(&ndjson(&[event])),
    )
    .await;
    assert_eq!(expect(resp, StatusCode::ACCEPTED).await["accepted"], 1);
    let resp = server
        .get("/v1/audit-log?resource_id=dst_gz", &key.secret)
        .send()
        .await
        .unwrap();
    let page = expect(resp, StatusCode::OK).await;
    assert_eq!(page["audit_log"].as_array().unwrap().len(), 1, "{page}");
    server.stop().await;
}

/// The peak resident memory of this process (the server runs in it), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// 1 GiB of zeros as 16 gzip members of 64 MiB each (about 1 MB in all).
fn gzip_bomb() -> Vec<u8> {
    let zeros = vec![0u8; 4 << 20];
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    for _ in 0..16 {
        enc.write_all(&zeros).unwrap();
    }
    let member = enc.finish().unwrap();
    member.repeat(16)
}

/// 1 GiB of spaces as one zstd frame of RLE blocks (32 KiB).
fn zstd_bomb() -> Vec<u8> {
    const BLOCK: u32 = 128 * 1024;
    let blocks = (1u32 << 30) / BLOCK;
    // Magic number; frame header descriptor 0 (no content size, no checksum, not single
    // segment); window descriptor: 2^(10 + 7) = 128 KiB.
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 7 << 3];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        // Block header: last flag, type 1 (RLE), size; then the repeated byte.
        let header = last | (1 << 1) | (BLOCK << 3);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(b' ');
    }
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_are_refused_with_413_without_inflating_them() {
    let server = TestServer::start().await;
    let key = server.org_with_key("bomb").await;
    // The bombs are valid: the decoders used by the server read them as 1 GiB.
    let zstd_bomb = zstd_bomb();
    let gzip_bomb = gzip_bomb();
    // Both fit the 16 MiB body limit: only decoding can find them too large.
    assert!(gzip_bomb.len() < 16 << 20, "{}", gzip_bomb.len());
    let before = peak_rss();
    for (encoding, bomb) in [("gzip", gzip_bomb), ("zstd", zstd_bomb)] {
        let start = Instant::now();
        let resp = post(
            &server,
            &key,
            "/v1/ingest/requests",
            "application/x-ndjson",
            Some(encoding),
            bomb,
        )
        .await;
        let body = expect_native_error(
            resp,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("decompressed"),
            "{body}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{encoding}: took {:?}",
            start.elapsed()
        );
    }
    // Inflating either bomb whole would have taken a GiB.
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 256 << 20, "peak memory grew by {grown} bytes");
    // The server goes on serving.
    let resp = post(
        &server,
        &key,
        "/v1/ingest/requests",
        "application/x-ndjson",
        Some("gzip"),
        gzip(&ndjson(&[record(1)])),
    )
    .await;
    expect(resp, StatusCode::ACCEPTED).await;
    assert_eq!(stored_paths(&server, &key).await, vec!["/compressed/1"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_or_stacked_encodings_are_415() {
    let server = TestServer::start().await;
    let key = server.org_with_key("e").await;
    let body = ndjson(&[record(1)]);
    for encoding in ["br", "deflate", "compress", "gzip, zstd", "zstd, zstd"] {
        let resp = post(
            &server,
            &key,
            "/v1/ingest/requests",
            "application/x-ndjson",
            Some(encoding),
            body.clone(),
        )
        .await;
        expect_native_error(
            resp,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        )
        .await;
    }
    let resp = post(
        &server,
        &key,
        "/v1/ingest/audit-events",
        "application/x-ndjson",
        Some("br"),
        body,
    )
    .await;
    expect_native_error(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    )
    .await;
    assert!(stored_paths(&server, &key).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_what_its_encoding_says_is_400() {
    let server = TestServer::start().await;
    let key = server.org_with_key("g").await;
    let plain = ndjson(&[record(1)]);
    let mut truncated = gzip(&plain);
    truncated.truncate(truncated.len() / 2);
    let mut trailing = gzip(&plain);
    trailing.extend_from_slice(b"garbage");
    let cases = [
        ("gzip", plain.clone()),
        ("zstd", plain.clone()),
        ("gzip", truncated),
        ("gzip", trailing),
        ("zstd", gzip(&plain)),
        ("zstd", Vec::new()),
    ];
    for (encoding, body) in cases {
        let resp = post(
            &server,
            &key,
            "/v1/ingest/requests",
            "application/x-ndjson",
            Some(encoding),
            body,
        )
        .await;
        let v = expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_request", None).await;
        assert!(
            v["error"]["message"].as_str().unwrap().contains(encoding),
            "{v}"
        );
    }
    assert!(stored_paths(&server, &key).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_org_id_is_an_invalid_record_not_the_keys_org() {
    let server = TestServer::start().await;
    let key = server.org_with_key("empty").await;
    let log = json!({"org_id": "", "method": "GET", "path": "/e", "status_code": 200});
    let event = json!({"org_id": "", "action": "create", "resource_type": "thing"});
    for (route, record) in [
        ("/v1/ingest/requests", &log),
        ("/v1/ingest/audit-events", &event),
    ] {
        for operator in [false, true] {
            let rb = server.request(Method::POST, route);
            let rb = if operator {
                rb.bearer_auth(apitrail_testkit::ADMIN_TOKEN)
            } else {
                rb.header("x-api-key", &key.secret)
            };
            let resp = rb.json(&json!([record])).send().await.unwrap();
            let body =
                expect_native_error(resp, StatusCode::BAD_REQUEST, "invalid_records", None).await;
            let details = body["error"]["details"].as_array().unwrap();
            assert_eq!(details.len(), 1, "{route}: {body}");
            assert_eq!(details[0]["index"], 0, "{body}");
            assert_eq!(details[0]["field"], "org_id", "{body}");
        }
    }
    assert!(stored_paths(&server, &key).await.is_empty());
    server.stop().await;
}

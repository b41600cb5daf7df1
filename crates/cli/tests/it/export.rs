//! `apitrail export` with the real binary: from the store and from a running server, both
//! formats, filters, progress on stderr, and `--resume` of a file cut mid-record.

use std::path::Path;
use std::process::Output;

use apitrail_testkit::expect;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{At, apitrail, org_with_key, serve, stop};

const ROWS: usize = 5_000;

fn ingest(base: &str, secret: &str) {
    let records: Vec<Value> = (0..ROWS)
        .map(|i| {
            json!({
                "method": if i % 3 == 0 { "POST" } else { "GET" },
                "path": format!("/v1/items/{i}"),
                "status_code": 200,
                "created_at": format!("2024-03-10T00:{:02}:{:02}.{:03}Z", i / 3600 % 60, i / 60 % 60, i % 1000),
                "user_agent": "=cmd|' /C calc'!A0",
                "request_body": "two\r\nlines, \"quoted\"",
            })
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        for batch in records.chunks(2_500) {
            let resp = client
                .post(format!("{base}/v1/ingest/requests"))
                .header("x-api-key", secret)
                .json(&batch)
                .send()
                .await
                .unwrap();
            expect(resp, StatusCode::ACCEPTED).await;
        }
    });
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "apitrail export failed: {stderr}");
    stderr
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Cuts `path` to `len` bytes (as a crash or a cut connection would).
fn cut(path: &Path, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len as u64).unwrap();
}

#[test]
fn export_writes_resumes_and_matches_the_servers_export() {
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let secret = org_with_key(at, "acme", "read,write");
    let (child, base, _) = serve(at, &["--no-self-log"]);
    ingest(&base, &secret);

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for format in ["ndjson", "csv"] {
        // From the running server.
        let remote = out.join(format!("remote.{format}"));
        let args = [
            "export", "--kind", "requests", "--format", format, "--url", &base, "--key", &secret,
            "-o",
        ];
        let mut all: Vec<&str> = args.to_vec();
        all.push(remote.to_str().unwrap());
        let stderr = ok(&apitrail(at, &all));
        assert!(
            stderr.contains(&format!("exported {ROWS} rows")),
            "{stderr}"
        );
        let whole = read(&remote);
        match format {
            "ndjson" => {
                assert_eq!(whole.lines().count(), ROWS);
                let first: Value = serde_json::from_str(whole.lines().next().unwrap()).unwrap();
                assert_eq!(first["path"], "/v1/items/0");
                assert_eq!(first["user_agent"], "=cmd|' /C calc'!A0");
            }
            _ => {
                assert!(whole.starts_with("id,org_id,request_id,method,path,"));
                assert!(
                    whole.contains(",'=cmd|' /C calc'!A0,"),
                    "formulas are neutralised"
                );
                assert!(whole.contains("\"two\r\nlines, \"\"quoted\"\"\""));
            }
        }
        // Cut mid-record, then resumed from the server.
        cut(&remote, whole.len() / 2 + 7);
        let mut resume = all.clone();
        resume.push("--resume");
        let stderr = ok(&apitrail(at, &resume));
        assert_eq!(read(&remote), whole, "{format}: {stderr}");
    }
    let full_ndjson = read(&out.join("remote.ndjson"));
    let full_csv = read(&out.join("remote.csv"));
    stop(child);

    // From the store: the same bytes, progress with the total, and --resume.
    for (format, whole) in [("ndjson", &full_ndjson), ("csv", &full_csv)] {
        let local = out.join(format!("local.{format}"));
        let args = [
            "export",
            "--org",
            "acme",
            "--format",
            format,
            "-o",
            local.to_str().unwrap(),
        ];
        let stderr = ok(&apitrail(at, &args));
        assert_eq!(&read(&local), whole, "{format}");
        assert!(stderr.contains(&format!("{ROWS} of {ROWS}")), "{stderr}");
        assert!(
            stderr.contains("rows/s") && stderr.contains("ETA"),
            "{stderr}"
        );
        for len in [0, 3, whole.len() / 3, whole.len() - 1] {
            cut(&local, len);
            let mut resume = args.to_vec();
            resume.push("--resume");
            ok(&apitrail(at, &resume));
            assert_eq!(&read(&local), whole, "{format} resumed from {len} bytes");
        }
    }

    // Filters, and the audit log.
    let posts = out.join("posts.ndjson");
    ok(&apitrail(
        at,
        &[
            "export",
            "--org",
            "acme",
            "--method",
            "post",
            "-o",
            posts.to_str().unwrap(),
        ],
    ));
    let lines: Vec<Value> = read(&posts)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ROWS.div_ceil(3));
    assert!(lines.iter().all(|l| l["method"] == "POST"));
    let audit = out.join("audit.csv");
    ok(&apitrail(
        at,
        &[
            "export",
            "--org",
            "acme",
            "--kind",
            "audit",
            "--format",
            "csv",
            "-o",
            audit.to_str().unwrap(),
        ],
    ));
    let text = read(&audit);
    assert!(
        text.starts_with("id,org_id,user_id,action,resource_type,"),
        "{text}"
    );
    assert!(
        text.contains(",create,org,acme,") && text.contains(",create,api_key,"),
        "{text}"
    );

    // Mistakes are refused with a message naming them.
    let x = out.join("x");
    let x = x.to_str().unwrap();
    let bad = apitrail(
        at,
        &[
            "export", "--org", "acme", "--kind", "audit", "--method", "GET", "-o", x,
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--method"));
    let bad = apitrail(at, &["export", "--org", "nope", "-o", x]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
}

/// The same from a PostgreSQL store: `--database-url` exports what the server holds, and
/// `--resume` continues a cut file.
#[test]
fn export_reads_a_postgres_store() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(apitrail_pgtest::PgServer::shared().fresh_database());
    drop(rt);
    let at = At::Url(&url);
    let secret = org_with_key(at, "pgorg", "read,write");
    let (child, base, _) = serve(at, &["--no-self-log"]);
    ingest(&base, &secret);
    let dir = tempfile::tempdir().unwrap();
    let remote = dir.path().join("remote.ndjson");
    ok(&apitrail(
        at,
        &[
            "export",
            "--url",
            &base,
            "--key",
            &secret,
            "-o",
            remote.to_str().unwrap(),
        ],
    ));
    stop(child);
    let whole = read(&remote);
    assert_eq!(whole.lines().count(), ROWS);
    for format in ["ndjson", "csv"] {
        let local = dir.path().join(format!("local.{format}"));
        let args = [
            "export",
            "--org",
            "pgorg",
            "--format",
            format,
            "-o",
            local.to_str().unwrap(),
        ];
        let stderr = ok(&apitrail(at, &args));
        assert!(stderr.contains(&format!("{ROWS} of {ROWS}")), "{stderr}");
        let full = read(&local);
        if format == "ndjson" {
            assert_eq!(full, whole, "the store and the server export alike");
        } else {
            assert_eq!(csv_rows(&full), ROWS);
        }
        cut(&local, full.len() / 2 + 3);
        let mut resume = args.to_vec();
        resume.push("--resume");
        ok(&apitrail(at, &resume));
        assert_eq!(read(&local), full, "{format} resumed");
    }
}

/// Rows of an export CSV, less the header (no cell of these records holds a bare CRLF
/// outside quotes, and quoted ones are counted by the quote-aware scan).
fn csv_rows(text: &str) -> usize {
    let mut quoted = false;
    let mut rows = 0;
    for b in text.bytes() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => rows += 1,
            _ => {}
        }
    }
    rows - 1
}

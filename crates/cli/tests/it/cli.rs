//! The `apitrail` binary's commands: `orgs` and `keys` working directly on the store (also
//! while a server runs on it), `serve --demo`, and retention.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use apitrail_testkit::expect;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{At, json_out, stop};

fn apitrail(dir: &Path, args: &[&str]) -> Output {
    support::apitrail(At::Dir(dir), args)
}

fn serve(dir: &Path, extra: &[&str]) -> (Child, String, Vec<String>) {
    support::serve(At::Dir(dir), extra)
}

#[test]
fn orgs_and_keys_are_managed_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let org = json_out(&apitrail(
        dir.path(),
        &["orgs", "create", "--id", "acme", "--name", "Acme"],
    ));
    assert_eq!(org["id"], "acme");
    assert_eq!(org["name"], "Acme");
    let generated = json_out(&apitrail(
        dir.path(),
        &["orgs", "create", "--name", "No id"],
    ));
    assert!(uuid::Uuid::try_parse(generated["id"].as_str().unwrap()).is_ok());
    let dup = apitrail(
        dir.path(),
        &["orgs", "create", "--id", "acme", "--name", "Again"],
    );
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = apitrail(
        dir.path(),
        &["orgs", "create", "--id", "a b", "--name", "Bad"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--id"));

    let orgs = json_out(&apitrail(dir.path(), &["orgs", "list"]));
    let ids: Vec<&str> = orgs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"acme") && ids.len() == 2, "{orgs}");

    let key = json_out(&apitrail(
        dir.path(),
        &[
            "keys",
            "create",
            "--org",
            "acme",
            "--name",
            "ci",
            "--scopes",
            "read,write",
        ],
    ));
    let secret = key["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("atk_") && secret.len() == 44);
    assert_eq!(key["scopes"], json!(["read", "write"]));
    assert_eq!(key["principal_type"], "service_account");
    let listed = json_out(&apitrail(dir.path(), &["keys", "list", "--org", "acme"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("secret").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&secret[4..]));
    let unknown = apitrail(dir.path(), &["keys", "list", "--org", "ghost"]);
    assert!(!unknown.status.success());

    // The CLI's key works against a server on the same store, and a revocation made by the
    // CLI while the server runs takes effect at once.
    let (child, base, _) = serve(dir.path(), &["--no-self-log"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let ok = client
            .get(format!("{base}/v1/logs"))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        expect(ok, StatusCode::OK).await;
    });
    let revoked = json_out(&apitrail(
        dir.path(),
        &[
            "keys",
            "revoke",
            "--org",
            "acme",
            "--id",
            key["id"].as_str().unwrap(),
        ],
    ));
    assert!(revoked["revoked_at"].is_string());
    rt.block_on(async {
        let client = reqwest::Client::new();
        let denied = client
            .get(format!("{base}/v1/logs"))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        expect(denied, StatusCode::UNAUTHORIZED).await;
    });
    stop(child);
}

#[test]
fn serve_demo_prints_a_call_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let (child, base, banner) = serve(dir.path(), &["--demo"]);
    let text = banner.join("\n");
    let curl = banner.iter().find(|l| l.contains("curl")).unwrap();
    let secret = curl
        .split(['\'', ' '])
        .find(|w| w.starts_with("atk_"))
        .unwrap()
        .to_owned();
    assert!(curl.contains(&format!("{base}/v1/logs")), "{text}");
    // The console's address, beside the curl line, and it answers.
    let console = banner
        .iter()
        .find(|l| l.contains("console:"))
        .unwrap_or_else(|| panic!("no console line: {text}"));
    assert!(console.contains(&format!("{base}/ui")), "{text}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (first_page, total) = rt.block_on(async {
        let client = reqwest::Client::new();
        let resp = client
            .get(format!("{base}/v1/logs?limit=100&sort_by=duration_ms"))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        let page = expect(resp, StatusCode::OK).await;
        let items = page["data"].as_array().unwrap();
        assert_eq!(items.len(), 100);
        assert!(page["pagination"]["has_more"].as_bool().unwrap());
        let ui = client.get(format!("{base}/ui")).send().await.unwrap();
        assert_eq!(ui.status(), StatusCode::OK);
        assert!(ui.text().await.unwrap().contains("/ui/assets/app.js"));
        // Realistic traffic: several routes, methods and statuses, a month wide.
        let mut created = Vec::new();
        let mut walked = 0;
        let mut cursor: Option<String> = None;
        let mut routes = std::collections::HashSet::new();
        let mut methods = std::collections::HashSet::new();
        let mut errors = 0;
        loop {
            let url = match &cursor {
                Some(c) => format!("{base}/v1/logs?limit=100&cursor={c}"),
                None => format!("{base}/v1/logs?limit=100"),
            };
            let resp = client
                .get(url)
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap();
            let page = expect(resp, StatusCode::OK).await;
            for item in page["data"].as_array().unwrap() {
                walked += 1;
                routes.insert(item["route_pattern"].to_string());
                methods.insert(item["method"].to_string());
                errors += usize::from(item["status_code"].as_u64().unwrap() >= 400);
                created.push(item["created_at"].as_str().unwrap().to_owned());
            }
            match page["pagination"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert!(routes.len() >= 10, "{routes:?}");
        assert!(methods.len() >= 5, "{methods:?}");
        assert!(errors > 100, "{errors} errors");
        let newest = apitrail_model::Timestamp::parse(&created[0]).unwrap();
        let oldest = apitrail_model::Timestamp::parse(created.last().unwrap()).unwrap();
        assert!(
            newest.millis() - oldest.millis() > 25 * 86_400_000,
            "{oldest:?}..{newest:?}"
        );
        (items.len(), walked)
    });
    assert_eq!(first_page, 100);
    assert!(total >= 10_000, "{total} demo logs");
    stop(child);

    // Restarting with --demo keeps the data and does not load it again (the count grows only
    // by the self-logs of the calls above), prints a fresh key, and revokes the previous one.
    let (child, base, banner) = serve(dir.path(), &["--demo"]);
    let again = banner.join("\n");
    let held: usize = again
        .split("holds ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {again}"));
    assert!(
        (total..total + 1_000).contains(&held),
        "{held} logs after a restart; walked {total}"
    );
    rt.block_on(async {
        let client = reqwest::Client::new();
        let old = client
            .get(format!("{base}/v1/logs"))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        expect(old, StatusCode::UNAUTHORIZED).await;
    });
    stop(child);
}

#[test]
fn retention_removes_expired_request_logs() {
    let dir = tempfile::tempdir().unwrap();
    json_out(&apitrail(
        dir.path(),
        &["orgs", "create", "--id", "r", "--name", "R"],
    ));
    let key = json_out(&apitrail(
        dir.path(),
        &[
            "keys",
            "create",
            "--org",
            "r",
            "--name",
            "w",
            "--scopes",
            "read,write",
        ],
    ));
    let secret = key["secret"].as_str().unwrap().to_owned();
    let now = apitrail_model::Timestamp::now();
    let record = |days: i64, path: &str| {
        json!({"method": "GET", "path": path, "status_code": 200,
               "created_at": now.add_millis(-days * 86_400_000).to_rfc3339()})
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (child, base, _) = serve(dir.path(), &["--no-self-log"]);
    rt.block_on(async {
        let client = reqwest::Client::new();
        let resp = client
            .post(format!("{base}/v1/ingest/requests"))
            .header("x-api-key", &secret)
            .json(&json!([
                record(100, "/old"),
                record(40, "/older-than-30"),
                record(1, "/fresh")
            ]))
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::ACCEPTED).await;
    });
    stop(child);

    // Retention runs at start-up and then every minute.
    let (child, base, _) = serve(dir.path(), &["--no-self-log", "--retention-days", "30"]);
    rt.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let resp = client
                .get(format!("{base}/v1/logs"))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap();
            let page = expect(resp, StatusCode::OK).await;
            let paths: Vec<&str> = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["path"].as_str().unwrap())
                .collect();
            if paths == ["/fresh"] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expired logs still listed: {paths:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stop(child);
}

/// The real binary logs every authenticated call into the caller's org (SPEC §1), within a
/// second, under the id its `X-Api-Call-Id` announced; with `--no-self-log` it logs none.
#[test]
fn the_server_self_logs_its_calls_unless_told_not_to() {
    const CALLS: usize = 5;
    for self_log in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        json_out(&apitrail(
            dir.path(),
            &["orgs", "create", "--id", "acme", "--name", "Acme"],
        ));
        let key = json_out(&apitrail(
            dir.path(),
            &[
                "keys", "create", "--org", "acme", "--name", "ci", "--scopes", "read",
            ],
        ));
        let secret = key["secret"].as_str().unwrap().to_owned();
        let flags: &[&str] = if self_log { &[] } else { &["--no-self-log"] };
        let (child, base, _) = serve(dir.path(), flags);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let mut call_ids = Vec::new();
            for i in 0..CALLS {
                let resp = client
                    .get(format!("{base}/org/api-calls?limit={}", i + 1))
                    .header("x-api-key", &secret)
                    .header("user-agent", "cli-test/1")
                    .send()
                    .await
                    .unwrap();
                call_ids.push(apitrail_testkit::header(&resp, "x-api-call-id").unwrap());
                expect(resp, StatusCode::OK).await;
            }
            // Self-logs are listed within a second: poll for them (with a deadline); without
            // self-logging, absence can only be seen after that second has passed.
            if !self_log {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let page = loop {
                let page = expect(
                    client
                        .get(format!(
                            "{base}/v1/api-keys/requests?limit=100&apiKeyId={}",
                            key["id"].as_str().unwrap()
                        ))
                        .header("x-api-key", &secret)
                        .send()
                        .await
                        .unwrap(),
                    StatusCode::OK,
                )
                .await;
                let n = page["data"]["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i["routePattern"] == "/org/api-calls")
                    .count();
                if !self_log || n >= CALLS || Instant::now() > deadline {
                    break page;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let logged: Vec<&Value> = page["data"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["routePattern"] == "/org/api-calls")
                .collect();
            if !self_log {
                assert!(logged.is_empty(), "--no-self-log, yet: {page}");
                return;
            }
            assert_eq!(logged.len(), CALLS, "{page}");
            let mut logged_ids: Vec<&str> =
                logged.iter().map(|i| i["id"].as_str().unwrap()).collect();
            logged_ids.sort_unstable();
            call_ids.sort_unstable();
            assert_eq!(
                logged_ids, call_ids,
                "each call is logged under its X-Api-Call-Id"
            );
            for item in logged {
                assert_eq!(item["path"], "/org/api-calls");
                assert_eq!(item["method"], "GET");
                assert_eq!(item["statusCode"], 200);
                assert_eq!(item["userAgent"], "cli-test/1");
                assert_eq!(item["clientIp"], "127.0.0.1");
                assert_eq!(item["organizationId"], "acme");
                assert!(item["durationMs"].is_i64(), "{item}");
                assert!(
                    item["requestId"].as_str().unwrap().starts_with("req_"),
                    "{item}"
                );
            }
        });
        stop(child);
    }
}

/// Tamper evidence end to end: an attacker with disk access rewrites one audit entry in the
/// SQLite file; `apitrail audit verify` (exit status 1) and `GET /v1/audit-log/verify` both
/// report exactly that entry, while the untouched store verified, and another org's chain
/// still does.
#[test]
fn an_audit_entry_edited_in_the_file_fails_verification_at_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    for org in ["acme", "other"] {
        json_out(&apitrail(
            dir.path(),
            &["orgs", "create", "--id", org, "--name", org],
        ));
    }
    let key = json_out(&apitrail(
        dir.path(),
        &[
            "keys",
            "create",
            "--org",
            "acme",
            "--name",
            "boss",
            "--scopes",
            "read,write,admin",
        ],
    ));
    let secret = key["secret"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let verify = |base: &str| {
        rt.block_on(async {
            expect(
                client
                    .get(format!("{base}/v1/audit-log/verify"))
                    .header("x-api-key", &secret)
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await
        })
    };

    let (child, base, _) = serve(dir.path(), &["--no-self-log"]);
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "action": "update",
                "resource_type": "destination",
                "resource_id": format!("dst_{i}"),
                "details": {"url": format!("https://example.com/{i}")},
                "user_id": "user_7",
            })
        })
        .collect();
    let victim = rt.block_on(async {
        let stored = expect(
            client
                .post(format!("{base}/v1/ingest/audit-events"))
                .header("x-api-key", &secret)
                .json(&events)
                .send()
                .await
                .unwrap(),
            StatusCode::ACCEPTED,
        )
        .await;
        assert_eq!(stored["accepted"], 20);
        // A key created and revoked through the API is audited in the same chain.
        let made = expect(
            client
                .post(format!("{base}/v1/api-keys"))
                .header("x-api-key", &secret)
                .json(&json!({"name": "temp", "scopes": ["read"], "principal_type": "user", "principal_id": "u1"}))
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        expect(
            client
                .delete(format!("{base}/v1/api-keys/{}", made["id"].as_str().unwrap()))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let page = expect(
            client
                .get(format!("{base}/audit-log?resource_id=dst_9"))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        page["audit_log"][0]["id"].as_str().unwrap().to_owned()
    });
    let intact = verify(&base);
    // org creation + CLI key creation + 20 ingested + API key create and revoke.
    assert_eq!(intact["ok"], true, "{intact}");
    assert_eq!(intact["entries_checked"], 24, "{intact}");
    assert_eq!(intact["first_bad_id"], Value::Null);
    // The CLI reads the same store while the server runs, and agrees.
    let cli = json_out(&apitrail(dir.path(), &["audit", "verify", "--org", "acme"]));
    assert_eq!(cli, intact);
    stop(child);

    // The attacker edits the entry, leaving its stored hash as it was.
    let conn = rusqlite::Connection::open(dir.path().join("apitrail.db")).unwrap();
    let changed = conn
        .execute(
            "UPDATE audit_entries SET details = '{\"url\":\"https://evil.example\"}' WHERE id = ?1",
            [uuid::Uuid::try_parse(&victim).unwrap().as_bytes()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    let out = apitrail(dir.path(), &["audit", "verify", "--org", "acme"]);
    assert_eq!(out.status.code(), Some(1), "a broken chain exits with 1");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_id"], victim.as_str(), "{report}");
    // dst_9 is the 12th entry: org creation, the CLI key, then dst_0..dst_9.
    assert_eq!(report["entries_checked"], 12, "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&victim),
        "the error names the entry"
    );
    let other = json_out(&apitrail(
        dir.path(),
        &["audit", "verify", "--org", "other"],
    ));
    assert_eq!(other["ok"], true, "{other}");

    let (child, base, _) = serve(dir.path(), &["--no-self-log"]);
    let served = verify(&base);
    assert_eq!(served, report, "the server reports what the CLI does");
    stop(child);
}

/// A command that fails says what it was doing and on which store (its description, never a
/// secret of its URL), followed by the cause.
#[test]
fn failing_commands_say_what_they_were_doing_and_on_which_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("apitrail.db");
    let store = format!("SQLite at {}", db.display());
    json_out(&apitrail(
        dir.path(),
        &["orgs", "create", "--id", "acme", "--name", "Acme"],
    ));
    let stderr = |out: &Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // Refused by the store.
    let dup = stderr(&apitrail(
        dir.path(),
        &["orgs", "create", "--id", "acme", "--name", "Again"],
    ));
    assert!(
        dup.contains(&format!("cannot create org \"acme\" ({store}): ")),
        "{dup}"
    );
    assert!(dup.contains("already exists"), "{dup}");

    // A store that fails mid-command: its keys table is gone.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("ALTER TABLE api_keys RENAME TO api_keys_gone")
        .unwrap();
    drop(conn);
    let listed = stderr(&apitrail(dir.path(), &["keys", "list", "--org", "acme"]));
    assert!(
        listed.contains(&format!("cannot list the keys of org \"acme\" ({store}): ")),
        "{listed}"
    );
    let created = stderr(&apitrail(
        dir.path(),
        &[
            "keys", "create", "--org", "acme", "--name", "k", "--scopes", "read",
        ],
    ));
    assert!(
        created.contains(&format!(
            "cannot create key \"k\" on org \"acme\" ({store}): "
        )),
        "{created}"
    );

    // PostgreSQL that cannot be reached: the URL's password never shows.
    let url = "postgres://apitrail:hunter2secret@127.0.0.1:1/trail?password=qs7secret";
    let out = stderr(&support::apitrail(support::At::Url(url), &["orgs", "list"]));
    assert!(out.contains("PostgreSQL at 127.0.0.1:1/trail"), "{out}");
    assert!(
        !out.contains("hunter2secret") && !out.contains("qs7secret"),
        "{out}"
    );
}

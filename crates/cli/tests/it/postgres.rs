//! The real binary on PostgreSQL (`--database-url postgres://…` on a private server the
//! harness starts): the CLI commands and `serve` work on it, and two `serve` processes share
//! one database — concurrent ingest through both, identical complete page walks through
//! each, and a key revoked through one refused by the other at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use apitrail_pgtest::PgServer;
use apitrail_testkit::expect;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{At, apitrail, json_out, serve, stop};

/// Every id of `/v1/logs` through `base`, following cursors with `limit`.
async fn walk(client: &reqwest::Client, base: &str, secret: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/logs?limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = expect(
            client
                .get(&url)
                .header("x-api-key", secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        for item in page["data"].as_array().unwrap() {
            ids.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}

/// Creates the org `acme` and a key with `scopes` through the CLI; returns the key's secret.
fn acme_with_key(at: At<'_>, scopes: &str) -> String {
    json_out(&apitrail(
        at,
        &["orgs", "create", "--id", "acme", "--name", "Acme"],
    ));
    let key = json_out(&apitrail(
        at,
        &[
            "keys", "create", "--org", "acme", "--name", "ci", "--scopes", scopes,
        ],
    ));
    key["secret"].as_str().unwrap().to_owned()
}

#[test]
fn two_servers_share_one_database() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(PgServer::shared().fresh_database());
    let at = At::Url(&url);
    let secret = acme_with_key(at, "read,write,admin");
    let listed = json_out(&apitrail(at, &["keys", "list", "--org", "acme"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    let (a, base_a, banner) = serve(at, &["--no-self-log"]);
    assert!(
        banner[0].contains("PostgreSQL at"),
        "the banner names the backend: {banner:?}"
    );
    let (b, base_b, _) = serve(at, &["--no-self-log"]);

    rt.block_on(async {
        let client = reqwest::Client::new();
        // Four writers, two per server, 10 batches of 50 each; a third of the records share
        // one created_at, so the id tie-break decides their order.
        let mut tasks = Vec::new();
        for w in 0..4 {
            let base = if w % 2 == 0 { &base_a } else { &base_b }.clone();
            let (client, secret) = (client.clone(), secret.clone());
            tasks.push(tokio::spawn(async move {
                for batch in 0..10 {
                    let records: Vec<Value> = (0..50)
                        .map(|i| {
                            let at = if i % 3 == 0 {
                                "2024-05-01T12:00:00.000Z".to_owned()
                            } else {
                                format!(
                                    "2024-05-01T12:{:02}:{:02}.{w}{batch}{}Z",
                                    i % 60,
                                    batch,
                                    i % 10
                                )
                            };
                            json!({"method": "GET", "path": format!("/w{w}/b{batch}/{i}"),
                                   "status_code": 200, "created_at": at})
                        })
                        .collect();
                    let got = expect(
                        client
                            .post(format!("{base}/v1/ingest/requests"))
                            .header("x-api-key", &secret)
                            .json(&records)
                            .send()
                            .await
                            .unwrap(),
                        StatusCode::ACCEPTED,
                    )
                    .await;
                    assert_eq!(got["accepted"], 50);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for limit in [7, 50, 100] {
            let through_a = walk(&client, &base_a, &secret, limit).await;
            let through_b = walk(&client, &base_b, &secret, limit).await;
            assert_eq!(through_a.len(), 2000, "limit {limit}");
            assert_eq!(
                through_a.iter().collect::<HashSet<_>>().len(),
                2000,
                "no duplicates"
            );
            assert_eq!(through_a, through_b, "both servers walk the same sequence");
        }

        // A key made and revoked through server A is refused by server B at once.
        let made = expect(
            client
                .post(format!("{base_a}/v1/api-keys"))
                .header("x-api-key", &secret)
                .json(&json!({"name": "temp", "scopes": ["read"],
                              "principal_type": "user", "principal_id": "u1"}))
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        let temp = made["secret"].as_str().unwrap();
        let works = client
            .get(format!("{base_b}/v1/logs?limit=1"))
            .header("x-api-key", temp)
            .send()
            .await
            .unwrap();
        expect(works, StatusCode::OK).await;
        expect(
            client
                .delete(format!(
                    "{base_a}/v1/api-keys/{}",
                    made["id"].as_str().unwrap()
                ))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        let revoked = Instant::now();
        loop {
            let resp = client
                .get(format!("{base_b}/v1/logs?limit=1"))
                .header("x-api-key", temp)
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "server B still accepts a key revoked through A"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The audit chain both servers wrote verifies.
        let verified = expect(
            client
                .get(format!("{base_b}/v1/audit-log/verify"))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(verified["ok"], true, "{verified}");
    });
    stop(a);
    stop(b);
    // The CLI verifies the same chain on the database.
    let cli = json_out(&apitrail(at, &["audit", "verify", "--org", "acme"]));
    assert_eq!(cli["ok"], true, "{cli}");
}

/// `serve --retention-days` on PostgreSQL drops the partitions of expired days (gone from
/// the catalog) and keeps the newer logs, which list exactly as before.
#[test]
fn retention_days_drops_expired_days() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(PgServer::shared().fresh_database());
    let at = At::Url(&url);
    let secret = acme_with_key(at, "read,write");
    // Logs from January 2020 (with ids) and from now (without), through a server that keeps
    // everything.
    let (plain, base, _) = serve(at, &["--no-self-log"]);
    let client = reqwest::Client::new();
    let kept: Vec<String> = rt.block_on(async {
        let old: Vec<Value> = (0..6)
            .map(|i| {
                json!({"id": format!("0190f5a2-7b3c-7def-8123-00000000000{i}"), "method": "GET",
                       "path": format!("/old/{i}"), "status_code": 200,
                       "created_at": format!("2020-01-0{}T10:00:00Z", 1 + i % 3)})
            })
            .collect();
        let new: Vec<Value> = (0..5)
            .map(|i| json!({"method": "GET", "path": format!("/new/{i}"), "status_code": 200}))
            .collect();
        for records in [&old, &new] {
            let got = expect(
                client
                    .post(format!("{base}/v1/ingest/requests"))
                    .header("x-api-key", &secret)
                    .json(records)
                    .send()
                    .await
                    .unwrap(),
                StatusCode::ACCEPTED,
            )
            .await;
            assert_eq!(got["accepted"], records.len());
        }
        let all = walk(&client, &base, &secret, 4).await;
        assert_eq!(all.len(), 11);
        all[..5].to_vec()
    });
    stop(plain);

    // 2020-01-04T00:00:00Z: every partition below it holds only the old logs.
    let old_end: i64 = 1_578_096_000_000;
    rt.block_on(async {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let count_old = || async {
            db.query_one(
                "SELECT count(*) FROM apitrail_request_log_bounds() WHERE lo < $1",
                &[&old_end],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        };
        // Days older than the window of day partitions share one coarse partition.
        assert_eq!(count_old().await, 1, "one partition for the old days");
        // The retention task runs at start-up, then every minute.
        let (retaining, base, _) = serve(at, &["--no-self-log", "--retention-days", "30"]);
        let started = Instant::now();
        while count_old().await > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the expired days' partitions were not dropped"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let attached: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'request_logs'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(attached >= 9, "the coming days stay: {attached}");
        let listed = walk(&client, &base, &secret, 2).await;
        assert_eq!(listed, kept, "the newer logs list as before");
        stop(retaining);
    });
}

/// Many distinct days from one tenant (issue 13): an org key with only `write` sends 2,000
/// records dated on 2,000 different days, in five batches, while another org reads. On a
/// server with PostgreSQL's stock lock table this made a partition per day and then every
/// org's reads failed with "out of shared memory". Now the partitions stay bounded by the
/// window of day partitions, and the other org's reads answer, with exactly its records.
#[test]
fn one_tenant_sending_many_days_cannot_break_the_others_reads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(PgServer::stock().fresh_database());
    let at = At::Url(&url);
    let victim = support::org_with_key(at, "victim", "read,write");
    let attacker = support::org_with_key(at, "attacker", "write");
    let (server, base, _) = serve(at, &["--no-self-log", "--partition-window-days", "7"]);
    let client = reqwest::Client::new();
    let day_ms: i64 = 86_400_000;
    let now_ms = apitrail_model::Timestamp::now().millis();
    let rfc3339 = |ms: i64| {
        apitrail_model::Timestamp::from_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    rt.block_on(async {
        // The victim's own 60 calls of the last hour, half of them by its key's user.
        let mine: Vec<Value> = (0..60)
            .map(|i| {
                json!({"method": "GET", "path": format!("/mine/{i}"), "status_code": 200,
                       "user_id": if i % 2 == 0 { Some("tests") } else { None },
                       "api_key_id": "key_victim", "service_account_id": "sa_victim",
                       "created_at": rfc3339(now_ms - 50 * 60_000 + i * 30_000)})
            })
            .collect();
        let got = expect(
            client
                .post(format!("{base}/v1/ingest/requests"))
                .header("x-api-key", &victim)
                .json(&mine)
                .send()
                .await
                .unwrap(),
            StatusCode::ACCEPTED,
        )
        .await;
        assert_eq!(got["accepted"], 60);

        let reads = [
            ("/v1/logs?limit=100", "data", 60),
            (
                &*format!("/v1/logs?limit=100&from={}", rfc3339(now_ms - 3_600_000)),
                "data",
                60,
            ),
            ("/org/api-calls?limit=1000", "items", 60),
            ("/user/api-calls?limit=1000", "items", 30),
            ("/v1/api-keys/requests?limit=100", "items", 60),
        ]
        .map(|(path, field, n)| (path.to_owned(), field, n));
        let read_all = |reads: Vec<(String, &'static str, usize)>| {
            let client = client.clone();
            let base = base.clone();
            let victim = victim.clone();
            async move {
                let mut worst = Duration::ZERO;
                for (path, field, n) in reads {
                    let started = Instant::now();
                    let resp = client
                        .get(format!("{base}{path}"))
                        .header("x-api-key", &victim)
                        .send()
                        .await
                        .unwrap();
                    worst = worst.max(started.elapsed());
                    let status = resp.status();
                    let body: Value = resp.json().await.unwrap();
                    assert_eq!(status, StatusCode::OK, "{path}: {body}");
                    let items = body
                        .pointer(&format!("/{field}"))
                        .or_else(|| body.pointer(&format!("/data/{field}")))
                        .and_then(Value::as_array)
                        .unwrap_or_else(|| panic!("{path}: {body}"));
                    assert_eq!(items.len(), n, "{path}: only the victim's own records");
                }
                worst
            }
        };

        // The attack: five batches of 400 records, each record on a day of its own, going
        // back 2,000 days from yesterday; the victim keeps reading meanwhile.
        let attack = async {
            for batch in 0..5 {
                let records: Vec<Value> = (0..400)
                    .map(|i| {
                        let day = 1 + batch * 400 + i;
                        json!({"method": "POST", "path": "/spread", "status_code": 201,
                               "created_at": rfc3339(now_ms - day * day_ms)})
                    })
                    .collect();
                let got = expect(
                    client
                        .post(format!("{base}/v1/ingest/requests"))
                        .header("x-api-key", &attacker)
                        .json(&records)
                        .send()
                        .await
                        .unwrap(),
                    StatusCode::ACCEPTED,
                )
                .await;
                assert_eq!(got["accepted"], 400);
            }
        };
        let reading = async {
            let mut worst = Duration::ZERO;
            for _ in 0..10 {
                worst = worst.max(read_all(reads.to_vec()).await);
            }
            worst
        };
        let ((), during) = tokio::join!(attack, reading);

        // Many reads at once after the attack: all answer, with exactly the victim's records.
        let after = futures_join_all(
            (0..16)
                .map(|_| read_all(reads.to_vec()))
                .collect::<Vec<_>>(),
        )
        .await;
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let partitions: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'request_logs'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        // Seven days back, yesterday to a week ahead, and one coarse partition below.
        assert!(
            partitions <= 7 + 9 + 1,
            "{partitions} partitions after 2,000 distinct days"
        );
        let stored: i64 = db
            .query_one("SELECT count(*) FROM request_logs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 2_060, "every acknowledged record is stored");

        let worst_after = after.into_iter().max().unwrap_or_default();
        eprintln!(
            "victim reads: slowest {during:?} during the attack, {worst_after:?} after it \
             ({partitions} partitions)"
        );
    });
    stop(server);
}

/// Runs futures concurrently and collects their outputs.
async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

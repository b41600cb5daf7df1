//! The live tail across processes, with the real binary: two `serve` nodes on one PostgreSQL
//! (records ingested through either reach the tails of both, in one and the same order, woken
//! by `NOTIFY` rather than the poll), `serve` and the capture proxy writing one SQLite file
//! (the proxy's records reach the server's tail by its poll), and servers whose tails stop
//! cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use apitrail_pgtest::PgServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{At, org_with_key, serve, stop};

/// The record events of an SSE stream, parsed as they arrive.
struct Tail {
    resp: reqwest::Response,
    buf: String,
}

impl Tail {
    async fn open(base: &str, secret: &str) -> Self {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v1/logs/tail"))
            .header("x-api-key", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next record event's data; fails after `within`.
    async fn next(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("no event in time")
                .unwrap()
                .expect("the stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn ingest(client: &reqwest::Client, base: &str, secret: &str, records: &Value) {
    let resp = client
        .post(format!("{base}/v1/ingest/requests"))
        .header("x-api-key", secret)
        .json(records)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[test]
fn a_record_ingested_through_one_node_reaches_the_tails_of_both() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(PgServer::shared().fresh_database());
    let at = At::Url(&url);
    let secret = org_with_key(at, "acme", "read,write");
    // Polls rarely, so that prompt delivery across nodes shows the notification works.
    let flags = ["--no-self-log", "--tail-poll-ms", "5000"];
    let (a, base_a, _) = serve(at, &flags);
    let (b, base_b, _) = serve(at, &flags);
    let open_tails = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut on_a = Tail::open(&base_a, &secret).await;
        let mut on_b = Tail::open(&base_b, &secret).await;
        // One record at a time through A: each reaches B's tail long before B would poll.
        for i in 0..5 {
            let started = Instant::now();
            ingest(
                &client,
                &base_a,
                &secret,
                &json!([{"method": "GET", "path": format!("/one/{i}"), "status_code": 200}]),
            )
            .await;
            let got = on_b.next(Duration::from_secs(20)).await;
            assert_eq!(got["path"], format!("/one/{i}"));
            assert!(
                started.elapsed() < Duration::from_millis(2_500),
                "took {:?}: B was not notified",
                started.elapsed()
            );
            assert_eq!(
                on_a.next(Duration::from_secs(20)).await["path"],
                format!("/one/{i}")
            );
        }
        // Concurrent ingest through both: both tails see every record once, in one order.
        let mut tasks = Vec::new();
        for (w, base) in [&base_a, &base_b, &base_a, &base_b].into_iter().enumerate() {
            let (client, base, secret) = (client.clone(), base.clone(), secret.clone());
            tasks.push(tokio::spawn(async move {
                for batch in 0..10 {
                    let records: Vec<Value> = (0..30)
                        .map(|i| json!({"method": "POST", "path": format!("/w{w}/{batch}/{i}"), "status_code": 201}))
                        .collect();
                    ingest(&client, &base, &secret, &Value::Array(records)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
        for _ in 0..1_200 {
            seen_a.push(on_a.next(Duration::from_secs(20)).await["id"].clone());
            seen_b.push(on_b.next(Duration::from_secs(20)).await["id"].clone());
        }
        assert_eq!(seen_a, seen_b, "the two nodes' tails disagree on the order");
        let distinct: HashSet<String> = seen_a.iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        assert_eq!(distinct.len(), 1_200, "a record was repeated");
        (on_a, on_b)
    });
    // SIGTERM with tails open: both stop cleanly (their tails end with the server).
    stop(a);
    stop(b);
    drop(open_tails);
}

#[test]
fn records_of_another_process_on_the_same_sqlite_file_reach_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let at = At::Dir(dir.path());
    let secret = org_with_key(at, "acme", "read,write");
    let (server, base, _) = serve(at, &["--no-self-log", "--tail-poll-ms", "50"]);
    // A second process writing the same file: the capture proxy, in front of the server.
    let (proxy_child, proxy_base) = support::proxy(at, &["--upstream", &base, "--org", "acme"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open_tail = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tail = Tail::open(&base, &secret).await;
        // Both processes write at once: ingest through the server, requests through the proxy.
        let through_proxy = {
            let (client, proxy_base) = (client.clone(), proxy_base.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let resp = client
                        .get(format!("{proxy_base}/healthz?n={i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                }
            })
        };
        for batch in 0..20 {
            let records: Vec<Value> = (0..10)
                .map(|i| json!({"method": "POST", "path": format!("/direct/{batch}/{i}"), "status_code": 201}))
                .collect();
            ingest(&client, &base, &secret, &Value::Array(records)).await;
        }
        through_proxy.await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..240 {
            seen.push(tail.next(Duration::from_secs(20)).await);
        }
        let ids: HashSet<&str> = seen.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 240, "a record was repeated");
        let proxied = seen.iter().filter(|v| v["path"] == "/healthz").count();
        assert_eq!(proxied, 40, "the proxy's records reach the server's tail");
        tail
    });
    stop(proxy_child);
    stop(server);
    drop(open_tail);
}

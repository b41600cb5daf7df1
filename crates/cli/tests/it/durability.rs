//! Durability of the real binary: clients ingest in a loop, the server is killed with SIGKILL
//! (or stopped with SIGTERM) and restarted on the same data directory. Every record of every
//! batch that got `202` must be there, and none twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitrail_testkit::expect;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "durability-operator-token-0123";

/// A running `apitrail serve` child process.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Starts the binary on a free port over `dir` and waits until it answers.
    async fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_apitrail"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-self-log",
                "--log-format",
                "json",
            ])
            .arg("--data-dir")
            .arg(dir)
            .env("APITRAIL_ADMIN_TOKEN", TOKEN)
            .env("APITRAIL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apitrail");
        let stdout = child.stdout.take().unwrap();
        let base = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().expect("no output").expect("read stdout");
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            first
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .expect("address in the banner")
                .to_owned()
        })
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{base}/readyz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup_org(base: &str) -> String {
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/admin/v1/orgs"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "durable", "name": "Durable"}))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::CREATED).await;
    let resp = client
        .post(format!("{base}/admin/v1/orgs/durable/api-keys"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "w", "scopes": ["read", "write"], "principal_type": "service_account", "principal_id": "sa"}))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::CREATED).await["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn batch(client_no: usize, batch_no: usize, size: usize) -> (Vec<String>, String) {
    let mut ids = Vec::with_capacity(size);
    let mut body = String::new();
    for i in 0..size {
        let id = format!("{:08x}-{:04x}-4000-8000-{:012x}", client_no, batch_no, i);
        body.push_str(
            &json!({"id": id, "method": "POST", "path": format!("/c{client_no}/b{batch_no}"), "status_code": 201})
                .to_string(),
        );
        body.push('\n');
        ids.push(id);
    }
    (ids, body)
}

/// What the clients saw: acknowledged ids, and batches whose fate is unknown (in flight when
/// the server died).
#[derive(Default)]
struct Ledger {
    acked: HashSet<String>,
    unknown: Vec<(Vec<String>, String)>,
}

/// Runs `clients` ingest loops until the server stops answering; returns the ledger.
async fn ingest_until_dead(
    base: String,
    secret: String,
    clients: usize,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (base, secret, ledger) = (base.clone(), secret.clone(), Arc::clone(&ledger));
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for b in 0.. {
                let (ids, body) = batch(c, b, 250);
                let resp = client
                    .post(format!("{base}/v1/ingest/requests"))
                    .header("x-api-key", &secret)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["accepted"], 250, "{v}");
                        ledger.lock().unwrap().acked.extend(ids);
                    }
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                        // Refused, not acknowledged; nothing to check.
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => {
                        ledger.lock().unwrap().unknown.push((ids, body));
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every id stored in the org, by walking `/v1/logs`, with how often each was listed.
async fn stored_ids(base: &str, secret: &str) -> HashMap<String, usize> {
    let client = reqwest::Client::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/logs?limit=100&sort_dir=asc");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = client
            .get(url)
            .header("x-api-key", secret)
            .send()
            .await
            .unwrap();
        let page = expect(resp, StatusCode::OK).await;
        for item in page["data"].as_array().unwrap() {
            *seen
                .entry(item["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let secret = setup_org(&server.base).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients = tokio::spawn(ingest_until_dead(
        server.base.clone(),
        secret.clone(),
        4,
        Arc::clone(&ledger),
    ));
    // Let the clients get going, then kill the server without warning mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.lock().unwrap().acked.len() < 20_000 {
        assert!(
            Instant::now() < deadline,
            "ingest too slow to reach 20,000 records"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.child.kill().expect("SIGKILL"); // `Child::kill` sends SIGKILL on Unix.
    server.child.wait().unwrap();
    clients.await.unwrap();

    let restarted = Server::start(dir.path()).await;
    let stored = stored_ids(&restarted.base, &secret).await;
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    // Each client stopped at a batch whose answer never came: the kill was mid-stream.
    assert_eq!(ledger.unknown.len(), 4);
    let missing: Vec<_> = ledger
        .acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "records listed twice: {doubled:?}");
    // Anything beyond the acknowledged records must come from batches in flight at the kill,
    // and such a batch is all there or not at all (batches are atomic).
    let in_flight: HashSet<&String> = ledger.unknown.iter().flat_map(|(ids, _)| ids).collect();
    for id in stored.keys().filter(|id| !ledger.acked.contains(*id)) {
        assert!(in_flight.contains(id), "{id} was never sent");
    }
    for (ids, _) in &ledger.unknown {
        let present = ids.iter().filter(|id| stored.contains_key(*id)).count();
        assert!(
            present == 0 || present == ids.len(),
            "a batch was half stored: {present}/{}",
            ids.len()
        );
    }

    // Clients retry the batches whose fate they never learned: idempotent ids mean the retry
    // stores exactly what is missing.
    let client = reqwest::Client::new();
    for (ids, body) in &ledger.unknown {
        let already = ids.iter().filter(|id| stored.contains_key(*id)).count();
        let resp = client
            .post(format!("{}/v1/ingest/requests", restarted.base))
            .header("x-api-key", &secret)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let v = expect(resp, StatusCode::ACCEPTED).await;
        assert_eq!(v["duplicates"], already as u64, "{v}");
        assert_eq!(v["accepted"], (ids.len() - already) as u64, "{v}");
    }
    let after = stored_ids(&restarted.base, &secret).await;
    assert!(after.values().all(|n| *n == 1));
    assert_eq!(
        after.len(),
        ledger.acked.len()
            + ledger
                .unknown
                .iter()
                .map(|(ids, _)| ids.len())
                .sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path()).await;
    let secret = setup_org(&server.base).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients = tokio::spawn(ingest_until_dead(
        server.base.clone(),
        secret.clone(),
        3,
        Arc::clone(&ledger),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.lock().unwrap().acked.len() < 5_000 {
        assert!(Instant::now() < deadline, "ingest too slow");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = i32::try_from(server.child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exited with {status}");
    clients.await.unwrap();

    let restarted = Server::start(dir.path()).await;
    let stored = stored_ids(&restarted.base, &secret).await;
    let ledger = ledger.lock().unwrap();
    assert!(ledger.acked.iter().all(|id| stored.get(id) == Some(&1)));
}

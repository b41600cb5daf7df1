//! The live tail benchmark behind BENCHMARKS.md "Live tail": the delay from an ingest call's
//! `202` to its records' events at a tail client while ingesting at a steady rate, and ingest
//! throughput with many idle tails open against none.
//!
//! One process: the real router over a real store (SQLite in a temporary directory, or
//! `--postgres`: a private durable PostgreSQL server), HTTP clients on loopback.
//!
//! Run: `cargo run --release -p apitrail-bench --bin tail-bench -- --rate 10000`

// A benchmark: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitrail_api::tail::TailConfig;
use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_pgtest::PgServer;
use apitrail_store::Store;
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use clap::Parser;
use serde_json::{Value, json};

const TOKEN: &str = "bench-operator-token-0123456789";

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Ingest rate of the latency run, records per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Records per ingest call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Records of each throughput run.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Concurrent ingest clients of the throughput runs.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Idle tails of the second throughput run (spread over orgs of 50).
    #[arg(long, default_value_t = 1_000)]
    idle_tails: usize,
    /// Run on PostgreSQL (a private durable server) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(run(&args));
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).unwrap();
    }
}

async fn create_org(client: &reqwest::Client, base: &str, id: &str) -> String {
    let resp = client
        .post(format!("{base}/admin/v1/orgs"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": id, "name": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "create org");
    let key: Value = client
        .post(format!("{base}/admin/v1/orgs/{id}/api-keys"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "bench", "scopes": ["read", "write"],
                      "principal_type": "service_account", "principal_id": "sa_bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    key["secret"].as_str().unwrap().to_owned()
}

fn batch_body(tag: &str, n: usize, size: usize) -> Value {
    Value::Array(
        (0..size)
            .map(|i| {
                json!({"method": "GET", "path": format!("/{tag}/{n}/{i}"), "status_code": 200,
                            "route_pattern": "/bench/{id}", "duration_ms": 12})
            })
            .collect(),
    )
}

async fn ingest(client: &reqwest::Client, base: &str, secret: &str, body: &Value) {
    let resp = client
        .post(format!("{base}/v1/ingest/requests"))
        .header("x-api-key", secret)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "ingest");
}

/// Ingests `records` in calls of `batch` with `clients` concurrent clients; records/s.
async fn throughput(args: &Args, base: &str, secret: &str, tag: &str) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let calls = args.records / args.batch;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (base, secret, next, tag) = (
            base.to_owned(),
            secret.to_owned(),
            Arc::clone(&next),
            tag.to_owned(),
        );
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    break;
                }
                ingest(&client, &base, &secret, &batch_body(&tag, n, batch)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (calls * args.batch) as f64 / started.elapsed().as_secs_f64()
}

/// When each event arrived, by the ingest call (`/lat/{n}/...`) its record came with.
type Arrivals = Arc<Mutex<Vec<(usize, Instant)>>>;

/// Keeps reading a tail, noting when each event of the latency run arrives.
fn read_tail(resp: reqwest::Response, arrivals: Option<Arrivals>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut resp = resp;
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let now = Instant::now();
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let (Some(arrivals), Some(data)) = (
                    &arrivals,
                    block.lines().find_map(|l| l.strip_prefix("data: ")),
                ) {
                    let v: Value = serde_json::from_str(data).unwrap();
                    let path = v["path"].as_str().unwrap_or_default();
                    // `/lat/{n}/{i}`
                    if let Some(n) = path.split('/').nth(2).and_then(|n| n.parse().ok()) {
                        arrivals.lock().unwrap().push((n, now));
                    }
                }
            }
        }
    })
}

async fn open_tail(client: &reqwest::Client, base: &str, secret: &str) -> reqwest::Response {
    let resp = client
        .get(format!("{base}/v1/logs/tail"))
        .header("x-api-key", secret)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "open tail");
    resp
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(args: &Args) -> String {
    let work = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = if args.postgres {
        let url = PgServer::durable().fresh_database().await;
        Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap())
    } else {
        Arc::new(SqliteStore::open(work.path(), SqliteOptions::default()).unwrap())
    };
    let config = ApiConfig {
        admin_token: Some(AdminToken::new(TOKEN).unwrap()),
        self_log: false,
        tail: TailConfig {
            max_per_org: 100,
            max_total: args.idle_tails + 100,
            ..TailConfig::default()
        },
        ..ApiConfig::default()
    };
    let app = App::build(Arc::clone(&store), config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let secret = create_org(&client, &base, "bench").await;

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Command: `cargo run --release -p apitrail-bench --bin tail-bench -- --rate {} --batch {} --secs {} --records {} --clients {} --idle-tails {}{}`\n",
        args.rate,
        args.batch,
        args.secs,
        args.records,
        args.clients,
        args.idle_tails,
        if args.postgres { " --postgres" } else { "" }
    );
    let _ = writeln!(
        report,
        "Backend: {}. One process (server and clients share the machine), self-log off.\n",
        if args.postgres {
            "PostgreSQL (private durable server, fsync on)"
        } else {
            "SQLite"
        }
    );

    // 1. Throughput without tails, then with idle tails in other orgs.
    eprintln!("throughput without tails...");
    let bare = throughput(args, &base, &secret, "bare").await;
    eprintln!("opening {} idle tails...", args.idle_tails);
    let mut idle = Vec::new();
    let tail_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for org in 0..args.idle_tails.div_ceil(50) {
        let s = create_org(&client, &base, &format!("idle-{org}")).await;
        for _ in 0..50.min(args.idle_tails - org * 50) {
            idle.push(read_tail(open_tail(&tail_client, &base, &s).await, None));
        }
    }
    // Also tails of the ingesting org itself, filtered so that they send nothing.
    for _ in 0..10 {
        let resp = tail_client
            .get(format!("{base}/v1/logs/tail?method=DELETE"))
            .header("x-api-key", &secret)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        idle.push(read_tail(resp, None));
    }
    eprintln!("throughput with idle tails...");
    let with_tails = throughput(args, &base, &secret, "idle").await;
    for t in &idle {
        t.abort();
    }
    let _ = writeln!(
        report,
        "| run | records | per second |\n|---|---:|---:|\n| ingest, no tails ({} clients, {} per call) | {} | {:.0} |\n| ingest, {} idle tails open (+10 filtered tails of the ingesting org) | {} | {:.0} ({:+.1}%) |\n",
        args.clients,
        args.batch,
        args.records,
        bare,
        args.idle_tails,
        args.records,
        with_tails,
        (with_tails / bare - 1.0) * 100.0
    );

    // 2. Latency at a steady rate: one tail of the ingesting org.
    eprintln!("latency at {} records/s...", args.rate);
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let reader = read_tail(
        open_tail(&tail_client, &base, &secret).await,
        Some(Arc::clone(&arrivals)),
    );
    let acked: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let calls_per_sec = (args.rate as f64 / args.batch as f64).max(1.0);
    let total_calls = (calls_per_sec * args.secs as f64) as usize;
    let interval = Duration::from_secs_f64(1.0 / calls_per_sec);
    let started = Instant::now();
    let mut senders = Vec::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    for n in 0..total_calls {
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let permit = Arc::clone(&in_flight).acquire_owned().await.unwrap();
        let (client, base, secret, acked) = (
            client.clone(),
            base.clone(),
            secret.clone(),
            Arc::clone(&acked),
        );
        let batch = args.batch;
        senders.push(tokio::spawn(async move {
            ingest(&client, &base, &secret, &batch_body("lat", n, batch)).await;
            acked.lock().unwrap().insert(n, Instant::now());
            drop(permit);
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let sent_secs = started.elapsed().as_secs_f64();
    let expected = total_calls * args.batch;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let arrivals = arrivals.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let mut delays: Vec<f64> = arrivals
        .iter()
        .filter_map(|(n, at)| {
            let ack = acked.get(n)?;
            // An event may reach the client before the 202 (visible at commit, answered
            // after the fsync): that is a delay of 0.
            Some(at.saturating_duration_since(*ack).as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let _ = writeln!(
        report,
        "| latency run | value |\n|---|---:|\n| offered rate | {} records/s ({} per call) for {} s |\n| achieved rate | {:.0} records/s |\n| events received | {} of {} |\n| 202 → event p50 | {:.1} ms |\n| p90 | {:.1} ms |\n| p99 | {:.1} ms |\n| max | {:.1} ms |",
        args.rate,
        args.batch,
        args.secs,
        expected as f64 / sent_secs,
        arrivals.len(),
        expected,
        percentile(&delays, 50.0),
        percentile(&delays, 90.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN),
    );
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    report
}

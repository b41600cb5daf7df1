//! `export-bench`: the export figures of BENCHMARKS.md (SPEC §10, issue 16).
//!
//! Fills one org with `--rows` synthetic request logs (the traffic generator's month, written
//! straight through the store's ingest path in batches of 10,000, so filling is not what is
//! measured), then downloads `GET /v1/logs/export` over HTTP from the real app on loopback in
//! each format, `--runs` times, counting rows and bytes as they arrive, and samples the
//! resident set of this process (the server plus a client that keeps nothing) every 50 ms
//! during each export: `VmRSS`, and its anonymous part `RssAnon` (heap and stacks: what the
//! export itself allocates; the rest is file pages such as SQLite's memory-mapped database,
//! which grow as it is read once). A flat anonymous RSS is what "constant memory" means.
//!
//! Run: `cargo run --release -p apitrail-bench --bin export-bench -- --rows 1000000`
//! (`--postgres` for PostgreSQL: a private durable server from Debian's binaries).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_model::{OrgId, Timestamp};
use apitrail_pgtest::PgServer;
use apitrail_store::{LogBatch, Store};
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use apitrail_traffic::Traffic;
use clap::Parser;
use serde_json::{Value, json};

const TOKEN: &str = "bench-operator-token-0123456789";
const DAY_MS: i64 = 86_400_000;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Request logs in the org.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Downloads per format.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Formats to download (comma-separated).
    #[arg(long, default_value = "ndjson,csv")]
    formats: String,
    /// Run on PostgreSQL instead of SQLite.
    #[arg(long)]
    postgres: bool,
}

/// A line of this process's `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The resident set: all of it, and its anonymous part (heap and stacks; the rest is file
/// pages, such as SQLite's memory-mapped database, which the kernel may drop at will).
fn rss_kib() -> (u64, u64) {
    (status_kib("VmRSS:"), status_kib("RssAnon:"))
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = if args.postgres {
        let url = PgServer::durable().fresh_database().await;
        Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap())
    } else {
        Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap())
    };
    let config = ApiConfig {
        admin_token: Some(AdminToken::new(TOKEN).unwrap()),
        self_log: false,
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
    let r = client
        .post(format!("{base}/admin/v1/orgs"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "bench", "name": "Bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/admin/v1/orgs/bench/api-keys"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "bench", "scopes": ["read"], "principal_type": "service_account", "principal_id": "bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // Fill: a month of traffic, oldest first, in slices.
    let tenant = store
        .tenant(&OrgId::parse("bench").unwrap())
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    let mut traffic = Traffic::new(2024);
    let now = Timestamp::now();
    let slices = args.rows.div_ceil(10_000).max(1);
    let span = 30 * DAY_MS / slices as i64;
    let mut left = args.rows;
    for i in 0..slices {
        let n = left.min(10_000);
        left -= n;
        let from = now.add_millis(-30 * DAY_MS + i as i64 * span);
        let logs = traffic.spread(n, from, from.add_millis(span));
        store
            .insert_request_logs(vec![LogBatch::minted(tenant.clone(), logs)])
            .await
            .unwrap();
    }
    eprintln!(
        "filled {} rows in {:.1}s",
        args.rows,
        started.elapsed().as_secs_f64()
    );

    let backend = if args.postgres {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "| backend | format | rows | MiB | seconds | rows/s | RSS before → max during | anonymous RSS before → max during |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for format in args.formats.split(',') {
        for _ in 0..args.runs {
            let before = rss_kib();
            let max = Arc::new(AtomicU64::new(before.0));
            let max_anon = Arc::new(AtomicU64::new(before.1));
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (max, max_anon, done) =
                    (Arc::clone(&max), Arc::clone(&max_anon), Arc::clone(&done));
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let (all, anon) = rss_kib();
                        max.fetch_max(all, Ordering::Relaxed);
                        max_anon.fetch_max(anon, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                })
            };
            let started = Instant::now();
            let mut resp = client
                .get(format!("{base}/v1/logs/export?format={format}"))
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let (mut bytes, mut lines) = (0usize, 0usize);
            while let Some(chunk) = resp.chunk().await.unwrap() {
                bytes += chunk.len();
                // Line ends; CSV cells of this traffic hold no line breaks.
                lines += chunk.iter().filter(|b| **b == b'\n').count();
            }
            let secs = started.elapsed().as_secs_f64();
            done.store(true, Ordering::Relaxed);
            sampler.join().unwrap();
            let rows = if format == "csv" { lines - 1 } else { lines };
            assert_eq!(rows, args.rows, "{format}: every row exported");
            let mib = |kib: u64| kib as f64 / 1024.0;
            println!(
                "| {backend} | {format} | {rows} | {:.0} | {secs:.2} | {:.0} | {:.0} → {:.0} MiB | {:.0} → {:.0} MiB |",
                bytes as f64 / 1048576.0,
                rows as f64 / secs,
                mib(before.0),
                mib(max.load(Ordering::Relaxed)),
                mib(before.1),
                mib(max_anon.load(Ordering::Relaxed)),
            );
        }
    }
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

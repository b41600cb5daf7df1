//! `stats-bench`: the stats figures of BENCHMARKS.md (SPEC §10, issue 16).
//!
//! 1. **What the rollups cost at ingest.** Writes `--cost-rows` synthetic request logs (the
//!    traffic generator's month, oldest first, in batches of `--batch` from `--clients`
//!    concurrent writers) into a fresh store without rollups and into one with them, `--rounds`
//!    times, the first of the pair alternating, straight through the store's ingest path (no HTTP, so the rollups'
//!    share of the work is as large as it can be), and reports records/s of each.
//! 2. **Query latency.** Fills a fresh store with rollups to `--rows`, then times
//!    `GET /v1/logs/stats` over HTTP from the real app on loopback, `--samples` times per
//!    query after 8 untimed ones: the whole 30 days at `1h` and `1d`, without and with each bounded `group_by`,
//!    with a filter, and the finer intervals over the longest range they allow.
//!
//! Run: `cargo run --release -p apitrail-bench --bin stats-bench -- --rows 5000000`
//! (`--postgres` for PostgreSQL: a private durable server from Debian's binaries).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_model::Timestamp;
use apitrail_pgtest::PgServer;
use apitrail_store::Store;
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use clap::Parser;
use serde_json::{Value, json};

const TOKEN: &str = "bench-operator-token-0123456789";
const DAY_MS: i64 = 86_400_000;
/// Untimed requests before each query's samples: two per read connection of the SQLite
/// store (4), so every connection's page cache has seen the query once.
const WARM_UP: usize = 8;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Request logs in the org queried.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Request logs written per ingest-cost run.
    #[arg(long, default_value_t = 500_000)]
    cost_rows: usize,
    /// Ingest-cost runs of each kind (alternating).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Records per ingest call.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent ingest calls.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Timed requests per query.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Run on PostgreSQL instead of SQLite.
    #[arg(long)]
    postgres: bool,
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

/// A fresh store (and what keeps it alive).
async fn fresh(postgres: bool, rollups: bool) -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = if postgres {
        let url = PgServer::durable().fresh_database().await;
        Arc::new(
            PgStore::connect(
                &url,
                PgOptions {
                    rollups,
                    ..PgOptions::default()
                },
            )
            .await
            .unwrap(),
        )
    } else {
        Arc::new(
            SqliteStore::open(
                dir.path(),
                SqliteOptions {
                    rollups,
                    ..SqliteOptions::default()
                },
            )
            .unwrap(),
        )
    };
    (store, dir)
}

/// Writes `rows` logs of a month ending `now` into `store`'s org `bench` (created here),
/// oldest first; returns records/s.
async fn fill(store: &Arc<dyn Store>, args: &Args, rows: usize, now: Timestamp) -> f64 {
    let tenant = apitrail_bench::create_org(store, "bench", now).await;
    apitrail_bench::fill_month(store, &tenant, rows, args.batch, args.clients, now).await
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn run(args: Args) {
    let backend = if args.postgres {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let now = Timestamp::now();

    // 1. The rollups' cost at ingest.
    println!("| backend | round | rows | without rollups | with rollups | cost |");
    println!("|---|---:|---:|---:|---:|---:|");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let mut rates = [0.0; 2];
        // Alternate which goes first, so that drift of the machine (caches, the disk's
        // state) does not always favour the same side.
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for rollups in order {
            let (store, _dir) = fresh(args.postgres, rollups).await;
            rates[usize::from(rollups)] = fill(&store, &args, args.cost_rows, now).await;
            store.shutdown().await.unwrap();
        }
        without.push(rates[0]);
        with.push(rates[1]);
        println!(
            "| {backend} | {round} | {} | {:.0} records/s | {:.0} records/s | {:.1}% |",
            args.cost_rows,
            rates[0],
            rates[1],
            100.0 * (1.0 - rates[1] / rates[0])
        );
    }
    let (a, b) = (
        without.iter().sum::<f64>() / without.len() as f64,
        with.iter().sum::<f64>() / with.len() as f64,
    );
    println!(
        "| {backend} | mean | {} | {a:.0} records/s | {b:.0} records/s | {:.1}% |",
        args.cost_rows,
        100.0 * (1.0 - b / a)
    );

    // 2. Query latency over HTTP.
    let (store, _dir) = fresh(args.postgres, true).await;
    let rate = fill(&store, &args, args.rows, now).await;
    eprintln!("filled {} rows at {rate:.0} records/s", args.rows);
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
    let month = format!(
        "from={}&to={}",
        now.add_millis(-30 * DAY_MS).to_rfc3339(),
        now.to_rfc3339()
    );
    let week = format!(
        "from={}&to={}",
        now.add_millis(-14 * DAY_MS).to_rfc3339(),
        now.to_rfc3339()
    );
    let day = format!(
        "from={}&to={}",
        now.add_millis(-DAY_MS).to_rfc3339(),
        now.to_rfc3339()
    );
    let mut queries = Vec::new();
    for interval in ["1h", "1d"] {
        queries.push(format!("interval={interval}&{month}"));
        for g in ["route_pattern", "method", "status_code", "status_class"] {
            queries.push(format!("interval={interval}&{month}&group_by={g}"));
        }
    }
    queries.push(format!(
        "interval=1h&{month}&method=GET&status_min=500&group_by=route_pattern"
    ));
    queries.push(format!("interval=15m&{week}&group_by=status_class"));
    queries.push(format!("interval=5m&{day}"));
    queries.push(format!("interval=1m&{day}&group_by=route_pattern"));
    println!();
    println!("| backend | rows | query | series × buckets | bytes | p50 ms | p99 ms |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for q in &queries {
        let url = format!("{base}/v1/logs/stats?{}", q.replace('+', "%2B"));
        let mut times = Vec::with_capacity(args.samples);
        let (mut shape, mut bytes) = (String::new(), 0);
        for i in 0..args.samples + WARM_UP {
            let started = Instant::now();
            let resp = client
                .get(&url)
                .header("x-api-key", &secret)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{q}");
            let body = resp.bytes().await.unwrap();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            // The warm-up requests are not counted.
            if i >= WARM_UP {
                times.push(ms);
            } else {
                let v: Value = serde_json::from_slice(&body).unwrap();
                let series = v["series"].as_array().unwrap();
                shape = format!(
                    "{} × {}",
                    series.len(),
                    series
                        .first()
                        .map_or(0, |s| s["buckets"].as_array().unwrap().len())
                );
                bytes = body.len();
                if !q.contains("method=") && q.contains("interval=1d") && !q.contains("group_by") {
                    assert_eq!(
                        series[0]["total"]["count"].as_u64().unwrap() as usize,
                        args.rows,
                        "the whole month counts every record"
                    );
                }
            }
        }
        times.sort_by(f64::total_cmp);
        let shown = q
            .replace(&month, "30 days")
            .replace(&week, "14 days")
            .replace(&day, "1 day");
        println!(
            "| {backend} | {} | `{shown}` | {shape} | {bytes} | {:.2} | {:.2} |",
            args.rows,
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    store.shutdown().await.unwrap();
}

//! `console-bench`: the web console's figures of BENCHMARKS.md (issue 17).
//!
//! Fills a fresh SQLite store with `--rows` request logs (the traffic generator's month,
//! ending now), starts the real app, and opens `/ui` in headless Chromium (Debian's, over
//! WebDriver, as the browser tests do):
//! 1. **Page weight.** The bytes transferred for the first view of the request logs in a
//!    fresh browser profile (empty cache): the page and its assets, and the API answers it
//!    reads (the first page of logs, two stats queries, `/v1/me`), from the browser's own
//!    Resource Timing entries.
//! 2. **Time to a rendered first page of logs.** From navigation start to the first table of
//!    logs on screen (the page's `apitrail:logs-table` mark), and to the charts drawn
//!    (`apitrail:charts`), over `--samples` reloads after 3 untimed ones.
//!
//! Run: `cargo run --release -p apitrail-bench --bin console-bench -- --rows 5000000`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_model::Timestamp;
use apitrail_store::Store;
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use apitrail_testkit::browser::Browser;
use clap::Parser;
use serde_json::{Value, json};

const TOKEN: &str = "bench-operator-token-0123456789";

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Request logs in the org the console shows.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Timed reloads.
    #[arg(long, default_value_t = 30)]
    samples: usize,
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
    let now = Timestamp::now();
    let tenant = apitrail_bench::create_org(&store, "bench", now).await;
    let rate = apitrail_bench::fill_month(&store, &tenant, args.rows, 1_000, 4, now).await;
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
    let r = reqwest::Client::new()
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

    let b = Browser::start().await;
    // Sign in as a person does, on the first view (empty cache).
    b.goto(&format!("{base}/ui")).await;
    let input = b.find("#signin-key").await;
    b.type_into(&input, &secret).await;
    let t0 = Instant::now();
    b.click_on("#signin-submit").await;
    b.wait_until(
        "return performance.getEntriesByName('apitrail:charts').length > 0 && document.querySelector('#logs-table tbody tr')",
        Duration::from_secs(60),
    )
    .await;
    eprintln!("first view after sign-in: {:?}", t0.elapsed());
    let weight = b
        .exec(
            "const nav = performance.getEntriesByType('navigation')[0];
             const res = performance.getEntriesByType('resource');
             const assets = res.filter(r => r.name.includes('/ui/assets/'));
             const api = res.filter(r => !r.name.includes('/ui/assets/'));
             const sum = (xs, f) => xs.reduce((a, r) => a + r[f], 0);
             return {page: nav.transferSize, page_body: nav.decodedBodySize,
                     assets: sum(assets, 'transferSize'), assets_decoded: sum(assets, 'decodedBodySize'),
                     api: sum(api, 'transferSize'), api_decoded: sum(api, 'decodedBodySize'),
                     requests: 1 + res.length,
                     api_names: api.map(r => r.name.replace(location.origin, '').slice(0, 60))};",
            json!([]),
        )
        .await;
    println!("first view: {weight}");
    let total = weight["page"].as_f64().unwrap()
        + weight["assets"].as_f64().unwrap()
        + weight["api"].as_f64().unwrap();
    println!(
        "| first view, empty cache | {} requests | page + assets {} B | API answers {} B | total {total:.0} B |",
        weight["requests"],
        weight["page"].as_f64().unwrap() + weight["assets"].as_f64().unwrap(),
        weight["api"]
    );

    // Reloads: navigation start → first table of logs, and → charts drawn.
    let mut table = Vec::new();
    let mut charts = Vec::new();
    for i in 0..args.samples + 3 {
        b.goto(&format!("{base}/ui?page=logs&n={i}")).await;
        let v = b
            .wait_until(
                "const t = performance.getEntriesByName('apitrail:logs-table')[0];
                 const c = performance.getEntriesByName('apitrail:charts')[0];
                 return t && c ? [t.startTime, c.startTime] : null;",
                Duration::from_secs(60),
            )
            .await;
        if i >= 3 {
            table.push(v[0].as_f64().unwrap());
            charts.push(v[1].as_f64().unwrap());
        }
    }
    table.sort_by(f64::total_cmp);
    charts.sort_by(f64::total_cmp);
    println!();
    println!("| rows | view | samples | p50 ms | p95 ms | max ms |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (what, xs) in [
        ("first page of logs rendered", &table),
        ("charts drawn", &charts),
    ] {
        println!(
            "| {} | {what} | {} | {:.0} | {:.0} | {:.0} |",
            args.rows,
            xs.len(),
            percentile(xs, 0.5),
            percentile(xs, 0.95),
            xs.last().unwrap()
        );
    }
    b.quit().await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    store.shutdown().await.unwrap();
}

//! The action dispatch benchmark behind BENCHMARKS.md "Actions": deliveries per second to a
//! local receiver, and the lag from a record's `available_at` to its request reaching the
//! receiver at a steady trigger rate.
//!
//! Everything runs in one process, as `apitrail serve` does: the real router and the real
//! dispatcher over a real store (SQLite in a temporary directory, or `--postgres`: a private
//! durable PostgreSQL server), and an axum receiver on loopback answering 200.
//!
//! Run: `cargo run --release -p apitrail-bench --bin actions-bench -- --records 20000`

// A benchmark: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_dispatch::{DispatchConfig, Dispatcher};
use apitrail_model::Timestamp;
use apitrail_pgtest::PgServer;
use apitrail_store::Store;
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use serde_json::{Value, json};

const TOKEN: &str = "bench-operator-token-0123456789";

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Records delivered in the throughput run (created first, then dispatched).
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Trigger rate of the lag run, records per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of the lag run.
    #[arg(long, default_value_t = 20)]
    lag_secs: u64,
    /// Concurrent clients creating the throughput run's records.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Run on PostgreSQL (a private durable server) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// What the receiver saw: per webhook-id, the arrival times (Unix ms, fractional).
#[derive(Default)]
struct Seen {
    arrivals: Mutex<HashMap<String, Vec<f64>>>,
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> StatusCode {
    let at = unix_ms();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.arrivals
        .lock()
        .unwrap()
        .entry(id)
        .or_default()
        .push(at);
    StatusCode::OK
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
        allow_private_destinations: true,
        ..ApiConfig::default()
    };
    let wake = Arc::clone(&config.dispatch_wake);
    let app = App::build(Arc::clone(&store), config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));

    let seen = Arc::new(Seen::default());
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", receiver.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(receiver, router).await });

    let client = reqwest::Client::new();
    let secret = setup(&client, &base, &hook).await;
    let trigger_url = format!("{base}/v1/orgs/4242/actions");

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Command: `cargo run --release -p apitrail-bench --bin actions-bench -- --records {} --rate {} --lag-secs {}{}`\n",
        args.records,
        args.rate,
        args.lag_secs,
        if args.postgres { " --postgres" } else { "" }
    );
    let _ = writeln!(
        report,
        "Backend: {}. One process: the real router and dispatcher (256 deliveries in flight at most), a loopback axum receiver answering 200, signed deliveries (HMAC-SHA256).\n",
        if args.postgres {
            "PostgreSQL (private durable server, fsync on)"
        } else {
            "SQLite"
        }
    );

    // 1. Throughput: create the records with no dispatcher running, then dispatch them all.
    eprintln!("creating {} records...", args.records);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..args.clients {
        let (client, url, secret, next) = (
            client.clone(),
            trigger_url.clone(),
            secret.clone(),
            Arc::clone(&next),
        );
        let total = args.records;
        creators.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                trigger(&client, &url, &secret).await;
            }
        }));
    }
    for c in creators {
        c.await.unwrap();
    }
    let create_secs = started.elapsed().as_secs_f64();
    eprintln!("dispatching...");
    let dispatcher = Dispatcher::spawn(
        Arc::clone(&store),
        DispatchConfig {
            // The receiver is on loopback.
            allow_private: true,
            ..DispatchConfig::default()
        },
        Arc::clone(&wake),
    )
    .unwrap();
    let started = Instant::now();
    wait_for(&seen, args.records).await;
    let deliver_secs = started.elapsed().as_secs_f64();
    // The last outcomes are recorded right after the last arrival.
    wait_final(&client, &base, &secret, args.records).await;
    let settle_secs = started.elapsed().as_secs_f64();
    let _ = writeln!(
        report,
        "| run | records | seconds | per second |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        report,
        "| create records (POST /v1/orgs/{{org}}/actions, {} clients, schema-checked, self-logged) | {} | {:.1} | {:.0} |",
        args.clients,
        args.records,
        create_secs,
        args.records as f64 / create_secs
    );
    let _ = writeln!(
        report,
        "| deliveries (lease → signed POST → 200 at the receiver) | {} | {:.1} | **{:.0}** |",
        args.records,
        deliver_secs,
        args.records as f64 / deliver_secs
    );
    let _ = writeln!(
        report,
        "| … until every record is `succeeded` in the store | {} | {:.1} | {:.0} |\n",
        args.records,
        settle_secs,
        args.records as f64 / settle_secs
    );

    // 2. Lag at a steady rate: triggered one by one on a clock.
    seen.arrivals.lock().unwrap().clear();
    let total = usize::try_from(args.rate * args.lag_secs).unwrap();
    eprintln!("lag run: {total} records at {}/s...", args.rate);
    let available = Arc::new(Mutex::new(HashMap::new()));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        ticker.tick().await;
        let (client, url, secret, available) = (
            client.clone(),
            trigger_url.clone(),
            secret.clone(),
            Arc::clone(&available),
        );
        tasks.push(tokio::spawn(async move {
            let record = trigger(&client, &url, &secret).await;
            let answered = unix_ms();
            let id = record["id"].as_str().unwrap().to_owned();
            let at = Timestamp::parse(record["state"]["available_at"].as_str().unwrap()).unwrap();
            available
                .lock()
                .unwrap()
                .insert(id, (at.millis() as f64, answered));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(&seen, total).await;
    let (lags, answers, duplicates) = {
        let available = available.lock().unwrap();
        let arrivals = seen.arrivals.lock().unwrap();
        let mut lags = Vec::new();
        let mut answers = Vec::new();
        for (id, (at, answered)) in available.iter() {
            if let Some(first) = arrivals.get(id).and_then(|a| a.first()) {
                lags.push(first - at);
            }
            answers.push(answered - at);
        }
        lags.sort_by(f64::total_cmp);
        answers.sort_by(f64::total_cmp);
        let duplicates: usize = arrivals.values().map(|a| a.len() - 1).sum();
        (lags, answers, duplicates)
    };
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    let answer_pct = |p: f64| answers[((answers.len() - 1) as f64 * p).round() as usize];
    let _ = writeln!(
        report,
        "Lag from `available_at` (the record's creation, millisecond precision) to the request reaching the receiver, {} records triggered at {}/s:\n",
        lags.len(),
        args.rate
    );
    let _ = writeln!(report, "| p50 | p90 | p99 | max |\n|---:|---:|---:|---:|");
    let _ = writeln!(
        report,
        "| {:.1} ms | {:.1} ms | **{:.1} ms** | {:.1} ms |",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lags.last().copied().unwrap_or_default()
    );
    let _ = writeln!(
        report,
        "\nThe triggers' own answer time, from `available_at` to the `201` reaching the client (authentication, schema check, the record's durable commit; the lag includes all but the last step, since the dispatcher is woken just before the `201` is sent): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms.",
        answer_pct(0.5),
        answer_pct(0.9),
        answer_pct(0.99),
        answers.last().copied().unwrap_or_default()
    );
    let _ = writeln!(
        report,
        "\nDuplicate deliveries in the lag run: {duplicates}."
    );

    dispatcher.stop(Duration::from_secs(10)).await;
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    report
}

async fn setup(client: &reqwest::Client, base: &str, hook: &str) -> String {
    let r = client
        .post(format!("{base}/admin/v1/orgs"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "4242", "name": "Bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/admin/v1/orgs/4242/api-keys"))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "bench", "scopes": ["read", "write", "admin"], "principal_type": "service_account", "principal_id": "bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let secret = r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .header("x-api-key", &secret)
            .json(&body)
            .send()
    };
    let credential: Value = post("/v1/credentials", json!({"label": "bench"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let destination: Value = post(
        "/v1/destinations",
        json!({"label": "receiver", "type": "webhook", "credential_id": credential["id"],
               "config": {"url": hook, "response_time_sla_ms": 5000}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let r = post(
        "/v1/action-definitions",
        json!({"variant": "notify", "destinations": [{"destination_id": destination["id"]}],
               "schema": {"type": "object", "required": ["user"],
                          "properties": {"user": {"type": "string"}, "n": {"type": "integer"}}}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    secret
}

async fn trigger(client: &reqwest::Client, url: &str, secret: &str) -> Value {
    let r = client
        .post(url)
        .header("x-api-key", secret)
        .json(&json!({"action": "notify", "input": {"user": "usr_1", "n": 7}, "tags": {"bench": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn wait_for(seen: &Seen, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.arrivals.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "deliveries did not arrive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_final(client: &reqwest::Client, base: &str, secret: &str, n: usize) {
    let url = format!(
        "{base}/v1/orgs/4242/actions/records?count_only=true&search[field]=state.status&search[value]=succeeded"
    );
    loop {
        let v: Value = client
            .get(&url)
            .header("x-api-key", secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["data"]["count"].as_u64().unwrap() as usize >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

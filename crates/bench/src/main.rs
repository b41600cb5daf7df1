//! `apitrail-bench`: what BENCHMARKS.md reports, measured in one run on one machine.
//!
//! 1. The raw ceiling: plain batched inserts of the same rows into SQLite with apitrail's own
//!    schema and pragmas, no HTTP, no validation: with apitrail's B-tree indexes (small
//!    durable transactions, then large unsynced ones), with ordinary indexes added for the
//!    two random-order keys (the design the leveled side keys replace), and with no
//!    secondary index at all.
//! 2. End-to-end ingest: NDJSON batches of `--batch` records POSTed by `--clients` concurrent
//!    keep-alive clients to the real app (router, auth, validation, group-committing writer)
//!    until the store holds `--rows` records; the rate is sampled as the store grows.
//! 3. `/v1/logs` latency end to end (client-side, keep-alive), p50 and p99, for the first page
//!    and a deep page (a cursor half-way through the org) of each filter and sort.
//!
//! 4. First-page latency of the zoo and keys dialects by user, API key and service account,
//!    for values with many calls and values with none.
//! 5. Self-logging overhead: read throughput of `GET /v1/logs?limit=20` by concurrent
//!    keep-alive clients against the same store through two apps, one that self-logs every
//!    call and one that does not, in alternating rounds.
//!
//! 6. The audit log: `--audit-rows` audit events ingested through `/v1/ingest/audit-events`
//!    the same way (each appended to the org's hash chain), then `GET /v1/audit-log` latency
//!    p50/p99 per filter for the first page and a deep page, and the time `verify` takes.
//!
//! `--postgres` runs sections 2-6 on PostgreSQL instead (a private durable server started
//! from Debian's binaries by `apitrail-pgtest`), and instead of section 1 the raw COPY
//! ceiling: the same rows written by binary COPY straight into the partitioned table of a
//! fresh database (no HTTP, no claims, no group commit), on one and on two connections; after
//! the queries it also times `count_request_logs` for the org.
//!
//! Run: `cargo run --release -p apitrail-bench -- --rows 5000000`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_model::{Cursor, CursorKind, Position, RequestLog, Sort, SortDir, SortKey, Timestamp};
use apitrail_pgtest::PgServer;
use apitrail_store::Store;
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use apitrail_traffic::Traffic;
use clap::Parser;
use serde_json::{Value, json};

const TOKEN: &str = "bench-operator-token-0123456789";
const SCHEMA: &str = concat!(
    include_str!("../../store-sqlite/migrations/0001_init.sql"),
    include_str!("../../store-sqlite/migrations/0002_principal_indexes.sql"),
    include_str!("../../store-sqlite/migrations/0003_audit_chain.sql"),
);
const DAY_MS: i64 = 86_400_000;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Records to ingest (the store grows to this size).
    #[arg(long, default_value_t = 5_000_000)]
    rows: usize,
    /// Concurrent keep-alive ingest clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Records per NDJSON batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests per latency figure.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Turn self-logging off (by default every benchmark call is self-logged, as in production).
    #[arg(long)]
    no_self_log: bool,
    /// Seconds to wait between ingest and the latency runs (lets the WAL checkpoint settle).
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Give records random (UUIDv4-like) request ids instead of time-ordered ones.
    #[arg(long)]
    random_request_ids: bool,
    /// Seconds per round of the self-logging overhead measurement (five rounds each way).
    #[arg(long, default_value_t = 8.0)]
    overhead_secs: f64,
    /// Audit events to ingest after the request logs (0: skip the audit section).
    #[arg(long, default_value_t = 1_000_000)]
    audit_rows: usize,
    /// Skip the request-log sections (ingest, queries, self-logging), e.g. to measure only the
    /// audit log.
    #[arg(long)]
    skip_requests: bool,
    /// Run the server on PostgreSQL (a private durable server: fsync on, data on disk, started
    /// from Debian's binaries as the tests do) instead of SQLite; the raw SQLite ceiling is
    /// skipped.
    #[arg(long)]
    postgres: bool,
    /// Skip the raw SQLite ceiling.
    #[arg(long)]
    skip_raw: bool,
    /// Where to put the databases (default: a temporary directory under target/).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let base_dir = args.dir.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data")
    });
    std::fs::create_dir_all(&base_dir).unwrap();
    let work = tempfile::tempdir_in(&base_dir).unwrap();
    let mut report = String::new();
    let _ = writeln!(report, "{}", machine());
    // The arguments as given (defaults apply to the rest), so the line reruns this run.
    let given: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        report,
        "Command: `cargo run --release -p apitrail-bench -- {}`\n",
        given.join(" ")
    );
    if args.postgres {
        let _ = writeln!(
            report,
            "Backend: PostgreSQL (`--postgres`: a private server from Debian's binaries, fsync on, shared_buffers 1GB, data on disk).\n"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if !args.skip_raw && !args.skip_requests && args.postgres {
        runtime.block_on(pg_raw_section(&mut report, &args));
    }

    let rows = if args.skip_requests { 0 } else { args.rows };
    eprintln!("generating {rows} records of synthetic traffic...");
    let started = Instant::now();
    let bodies = generate_ndjson(rows, args.batch, args.random_request_ids);
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "generated {} batches, {:.0} MiB, in {:.1}s",
        bodies.len(),
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    if !args.skip_raw && !args.skip_requests && !args.postgres {
        let _ = writeln!(report, "## Raw SQLite ceiling (same rows, no HTTP)\n");
        let _ = writeln!(
            report,
            "| variant | rows | seconds | rows/s |\n|---|---:|---:|---:|"
        );
        let variants = [
            (
                "apitrail schema, all indexes",
                Indexes::Apitrail,
                args.batch,
                "FULL",
            ),
            (
                "apitrail schema, all indexes",
                Indexes::Apitrail,
                50_000,
                "OFF",
            ),
            (
                "apitrail schema + plain (org, duration_ms, id) and (org, request_id) indexes",
                Indexes::Conventional,
                args.batch,
                "FULL",
            ),
            (
                "table only, no secondary indexes",
                Indexes::None,
                args.batch,
                "FULL",
            ),
        ];
        for (i, (name, indexes, batch, sync)) in variants.into_iter().enumerate() {
            let path = work.path().join(format!("raw-{i}.db"));
            let (rows, secs) = raw_ceiling(&path, args.rows, batch, indexes, sync);
            let _ = writeln!(
                report,
                "| {name}; {batch}-row transactions, synchronous={sync} | {rows} | {secs:.1} | {:.0} |",
                rows as f64 / secs
            );
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("db-wal"));
            eprintln!("raw ({name}): {:.0} rows/s", rows as f64 / secs);
        }
        let _ = writeln!(report);
    }

    runtime.block_on(async {
        let server_dir = work.path().join("server");
        let store: Arc<dyn Store> = if args.postgres {
            let url = PgServer::durable().fresh_database().await;
            Arc::new(PgStore::connect(&url, PgOptions::default()).await.unwrap())
        } else {
            Arc::new(SqliteStore::open(&server_dir, SqliteOptions::default()).unwrap())
        };
        let config = ApiConfig {
            admin_token: Some(AdminToken::new(TOKEN).unwrap()),
            self_log: !args.no_self_log,
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
        let secret = setup(&base).await;
        // Stop handles of extra apps over the same store (see `selflog_overhead`).
        let mut running = Vec::new();
        if !args.skip_requests {
            request_sections(
                &mut report,
                &args,
                Target {
                    store: &store,
                    base: &base,
                    secret: &secret,
                    dir: &server_dir,
                },
                bodies,
                &mut running,
            )
            .await;
        }
        if args.audit_rows > 0 {
            audit_section(&mut report, &args, &base, &secret, &server_dir).await;
        }
        for other in running {
            let _ = other.send(());
        }
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    });

    println!("{report}");
    if let Some(out) = args.out {
        std::fs::write(out, &report).unwrap();
    }
}

/// The server under measurement.
#[derive(Clone, Copy)]
struct Target<'a> {
    store: &'a Arc<dyn Store>,
    base: &'a str,
    secret: &'a str,
    dir: &'a Path,
}

/// Sections 2-5: request-log ingest, queries, principal filters, self-logging overhead.
async fn request_sections(
    report: &mut String,
    args: &Args,
    target: Target<'_>,
    bodies: Vec<Vec<u8>>,
    running: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) {
    let Target {
        store,
        base,
        secret,
        dir: server_dir,
    } = target;
    {
        let (base, secret) = (base.to_owned(), secret.to_owned());
        let _ = writeln!(report, "## End-to-end HTTP ingest\n");
        let (total, secs, samples) = ingest(
            &base,
            "/v1/ingest/requests",
            &secret,
            bodies,
            args.clients,
            server_dir,
        )
        .await;
        let _ = writeln!(
            report,
            "{} clients, NDJSON batches of {}, {total} records in {secs:.1}s: **{:.0} records/s** overall (each 202 sent only after its group was committed and the WAL fsynced).\n",
            args.clients,
            args.batch,
            total as f64 / secs
        );
        let _ = writeln!(
            report,
            "| records stored | records/s in the last interval | database size |\n|---:|---:|---:|"
        );
        for (n, rate, size) in samples {
            let _ = writeln!(report, "| {n} | {rate:.0} | {} |", gib(size));
        }
        let stats = store.stats();
        let _ = writeln!(
            report,
            "\nGroup commits: {} transactions for {} records ({:.0} records per commit on average).\n",
            stats.commits,
            stats.committed_records,
            stats.committed_records as f64 / stats.commits.max(1) as f64
        );

        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let _ = writeln!(
            report,
            "## `GET /v1/logs` latency ({} rows in the org, {} requests per row, keep-alive, client-side)\n",
            total, args.samples
        );
        let _ = writeln!(
            report,
            "| query | first page p50 | first page p99 | deep page p50 | deep page p99 |\n|---|---:|---:|---:|---:|"
        );
        for line in queries(&base, &secret, args.samples).await {
            let _ = writeln!(report, "{line}");
        }
        let _ = writeln!(
            report,
            "\n## zoo and keys dialects: principal filters ({} requests per row, first page)\n",
            args.samples
        );
        let _ = writeln!(
            report,
            "| query | items | p50 | p99 |\n|---|---:|---:|---:|"
        );
        for line in principal_queries(&base, &secret, args.samples).await {
            let _ = writeln!(report, "{line}");
        }

        let _ = writeln!(
            report,
            "\n## COUNT: `count_request_logs` for the org ({total} rows, 30 calls, store-level)\n"
        );
        let _ = writeln!(report, "{}", count_latency(store, 30).await);

        let _ = writeln!(report, "\n## Self-logging overhead on a read endpoint\n");
        for line in selflog_overhead(
            store,
            &base,
            &secret,
            !args.no_self_log,
            args.overhead_secs,
            running,
        )
        .await
        {
            let _ = writeln!(report, "{line}");
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb / 1048576.0));
    format!("Machine: {cores} cores ({cpu}), {mem} RAM, Linux; release build.\n")
}

/// The deterministic rows of the run: a month of traffic, oldest first.
fn rows(count: usize, mut each: impl FnMut(Vec<RequestLog>), chunk: usize) {
    let now = Timestamp::now();
    let mut traffic = Traffic::new(2024);
    // Spread in slices so that memory stays bounded while the order stays chronological.
    let slices = count.div_ceil(100_000).max(1);
    let span = 30 * DAY_MS / slices as i64;
    let start = now.add_millis(-30 * DAY_MS);
    let mut left = count;
    for s in 0..slices {
        let n = left.min(count.div_ceil(slices));
        left -= n;
        let from = start.add_millis(span * s as i64);
        let logs = traffic.spread(n, from, from.add_millis(span));
        for c in logs.chunks(chunk) {
            each(c.to_vec());
        }
    }
}

fn ingest_json(l: &RequestLog) -> Value {
    json!({
        "request_id": l.request_id, "method": l.method, "path": l.path, "query": l.query,
        "route_pattern": l.route_pattern, "status_code": l.status_code, "error_code": l.error_code,
        "duration_ms": l.duration_ms,
        "started_at": l.started_at.map(Timestamp::to_rfc3339),
        "completed_at": l.completed_at.map(Timestamp::to_rfc3339),
        "created_at": l.created_at.to_rfc3339(),
        "client_ip": l.client_ip.map(|ip| ip.to_string()), "user_agent": l.user_agent,
        "origin": l.origin, "auth_type": l.auth_type, "principal_type": l.principal_type,
        "principal_id": l.principal_id, "user_id": l.user_id, "email": l.email,
        "api_key_id": l.api_key_id, "service_account_id": l.service_account_id, "price": l.price,
    })
}

fn generate_ndjson(count: usize, batch: usize, random_request_ids: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(count / batch + 1);
    let mut rng = fastrand::Rng::with_seed(99);
    rows(
        count,
        |logs| {
            let mut body = Vec::with_capacity(logs.len() * 600);
            for l in &logs {
                let mut record = ingest_json(l);
                if random_request_ids {
                    record["request_id"] = json!(format!("{:032x}", rng.u128(..)));
                }
                serde_json::to_writer(&mut body, &record).unwrap();
                body.push(b'\n');
            }
            out.push(body);
        },
        batch,
    );
    out
}

/// Plain batched inserts of the same rows, timing only the inserts.
/// The index set of a raw-ceiling run.
#[derive(Clone, Copy, PartialEq)]
enum Indexes {
    /// The table and its primary key only.
    None,
    /// apitrail's B-tree indexes (its leveled side keys are not written).
    Apitrail,
    /// apitrail's B-tree indexes plus ordinary indexes for the random-order keys, the design
    /// the leveled side keys replace.
    Conventional,
}

fn raw_ceiling(
    path: &Path,
    count: usize,
    batch: usize,
    indexes: Indexes,
    sync: &str,
) -> (usize, f64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; \
         PRAGMA cache_size=-524288; PRAGMA temp_store=MEMORY;"
    ))
    .unwrap();
    let schema: String = if indexes == Indexes::Conventional {
        format!(
            "{SCHEMA}; CREATE INDEX raw_by_duration ON request_logs (org, duration_ms, id); \
             CREATE INDEX raw_by_request_id ON request_logs (org, request_id);"
        )
    } else if indexes == Indexes::Apitrail {
        SCHEMA.to_owned()
    } else {
        SCHEMA
            .split(';')
            .filter(|s| !s.contains("CREATE INDEX") && !s.contains("CREATE UNIQUE INDEX"))
            .collect::<Vec<_>>()
            .join(";")
    };
    conn.execute_batch(&schema).unwrap();
    conn.execute(
        "INSERT INTO orgs (id, name, created_at) VALUES ('1', 'raw', 0)",
        [],
    )
    .unwrap();
    let mut busy = Duration::ZERO;
    let mut n = 0;
    rows(
        count,
        |logs| {
            let t = Instant::now();
            let tx = conn.unchecked_transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO request_logs (org, id, created_at, duration_ms, status_code, method, path, \
                         route_pattern, request_id, auth_type, error_code, query, started_at, completed_at, \
                         client_ip, user_agent, origin, principal_type, principal_id, user_id, email, api_key_id, \
                         service_account_id, price) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
                         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
                    )
                    .unwrap();
                for l in &logs {
                    st.execute(rusqlite::params![
                        apitrail_model::new_record_id().as_bytes(),
                        l.created_at.millis(),
                        l.duration_ms.unwrap_or(-1),
                        l.status_code,
                        l.method,
                        l.path,
                        l.route_pattern,
                        l.request_id,
                        l.auth_type,
                        l.error_code,
                        l.query,
                        l.started_at.map(|t| t.millis()),
                        l.completed_at.map(|t| t.millis()),
                        l.client_ip.map(|ip| ip.to_string()),
                        l.user_agent,
                        l.origin,
                        l.principal_type,
                        l.principal_id,
                        l.user_id,
                        l.email,
                        l.api_key_id,
                        l.service_account_id,
                        l.price,
                    ])
                    .unwrap();
                }
            }
            tx.commit().unwrap();
            busy += t.elapsed();
            n += logs.len();
        },
        batch,
    );
    (n, busy.as_secs_f64())
}

/// p50 and p99 of `count_request_logs` for the bench org (the one COUNT the store offers).
async fn count_latency(store: &Arc<dyn Store>, calls: usize) -> String {
    let tenant = store
        .tenant(&apitrail_model::OrgId::parse("bench").unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut ms = Vec::with_capacity(calls);
    let mut n = 0;
    for _ in 0..calls {
        let t = Instant::now();
        n = store.count_request_logs(&tenant).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    format!(
        "| rows counted | p50 | p99 |\n|---:|---:|---:|\n| {n} | {:.1} ms | {:.1} ms |",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    )
}

/// The raw PostgreSQL ceiling: each variant COPYs the same rows into a fresh database.
async fn pg_raw_section(report: &mut String, args: &Args) {
    const CHUNK: usize = 10_000;
    eprintln!(
        "generating {} records for the raw COPY ceiling...",
        args.rows
    );
    let mut chunks = Vec::new();
    rows(args.rows, |logs| chunks.push(logs), CHUNK);
    let chunks = Arc::new(chunks);
    let _ = writeln!(
        report,
        "## Raw PostgreSQL ceiling (same rows, binary COPY, no HTTP)\n"
    );
    let _ = writeln!(
        report,
        "| variant | rows | seconds | rows/s |\n|---|---:|---:|---:|"
    );
    // One connection and the primary key alone on the first million rows (to keep the run
    // short); two connections, as ingest's two log writers, on all of them.
    let some = args.rows.min(1_000_000);
    for (name, connections, indexes, rows) in [
        ("all query indexes, 1 connection", 1, true, some),
        ("all query indexes, 2 connections", 2, true, args.rows),
        ("primary key only, 1 connection", 1, false, some),
    ] {
        let take = rows.div_ceil(CHUNK).min(chunks.len());
        let (n, secs) = pg_raw_copy(Arc::clone(&chunks), take, connections, indexes).await;
        let _ = writeln!(
            report,
            "| {name}; {CHUNK}-row transactions | {n} | {secs:.1} | {:.0} |",
            n as f64 / secs
        );
        eprintln!("raw COPY ({name}): {:.0} rows/s", n as f64 / secs);
    }
    let _ = writeln!(report);
}

/// COPYs the first `take` of `chunks` (one transaction each) over `connections` connections
/// into a fresh database migrated by the store (day partitions made first, as ahead of
/// time); returns the rows and the wall-clock seconds of the copy. The database is dropped
/// afterwards.
async fn pg_raw_copy(
    chunks: Arc<Vec<Vec<RequestLog>>>,
    take: usize,
    connections: usize,
    indexes: bool,
) -> (usize, f64) {
    let server = PgServer::durable();
    let url = server.fresh_database().await;
    drop(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    let admin = connect().await;
    let now = Timestamp::now().millis();
    admin
        .execute(
            "SELECT apitrail_request_log_partition(d) FROM generate_series($1::bigint, $2::bigint) d",
            &[&((now - 31 * DAY_MS) / DAY_MS), &(now / DAY_MS + 1)],
        )
        .await
        .unwrap();
    if !indexes {
        admin
            .batch_execute(
                "DROP INDEX request_logs_by_created, request_logs_by_duration, \
                 request_logs_by_status, request_logs_by_method, request_logs_by_route, \
                 request_logs_by_auth_type, request_logs_by_request_id, request_logs_by_user, \
                 request_logs_by_api_key, request_logs_by_status_created",
            )
            .await
            .unwrap();
    }
    admin
        .execute(
            "INSERT INTO orgs (id, name, created_at) VALUES ('raw', 'Raw', 0)",
            &[],
        )
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (next, chunks) = (Arc::clone(&next), Arc::clone(&chunks));
        let mut client = connect().await;
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(logs) = chunks.get(i).filter(|_| i < take) else {
                    return n;
                };
                let tx = client.transaction().await.unwrap();
                apitrail_store_postgres::copy_request_logs(&tx, 1, logs)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                n += logs.len();
            }
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    drop(admin);
    let db = url.rsplit('/').next().unwrap().to_owned();
    let (client, conn) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .await
        .unwrap();
    (n, secs)
}

async fn setup(base: &str) -> String {
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
        .json(&json!({"name": "bench", "scopes": ["read", "write", "admin"], "principal_type": "service_account", "principal_id": "bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A database size for the report; the SQLite files are measured, PostgreSQL's are not.
fn gib(bytes: u64) -> String {
    if bytes == 0 {
        "n/a".to_owned()
    } else {
        format!("{:.2} GiB", bytes as f64 / 1073741824.0)
    }
}

fn db_size(dir: &Path) -> u64 {
    ["apitrail.db", "apitrail.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn ingest(
    base: &str,
    path: &str,
    secret: &str,
    bodies: Vec<Vec<u8>>,
    clients: usize,
    dir: &Path,
) -> (usize, f64, Vec<(usize, f64, u64)>) {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (bodies, next, stored) = (Arc::clone(&bodies), Arc::clone(&next), Arc::clone(&stored));
        let (base, secret, path) = (base.to_owned(), secret.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { return };
                loop {
                    let r = client
                        .post(format!("{base}{path}"))
                        .header("x-api-key", &secret)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    match r.status().as_u16() {
                        202 => {
                            let v: Value = r.json().await.unwrap();
                            stored.fetch_add(
                                v["accepted"].as_u64().unwrap() as usize,
                                Ordering::Relaxed,
                            );
                            break;
                        }
                        503 => tokio::time::sleep(Duration::from_millis(100)).await,
                        s => panic!(
                            "ingest answered {s}: {}",
                            r.text().await.unwrap_or_default()
                        ),
                    }
                }
            }
        }));
    }
    // Sampled every 10 s into a shared list, so the figures survive the sampler being
    // stopped when the last client finishes.
    let samples: Arc<std::sync::Mutex<Vec<(usize, f64, u64)>>> = Arc::default();
    let sampler = {
        let (stored, samples) = (Arc::clone(&stored), Arc::clone(&samples));
        let dir = dir.to_path_buf();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0usize);
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let n = stored.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), n);
                samples.lock().unwrap().push((n, rate, db_size(&dir)));
                eprintln!("  {n} stored, {rate:.0}/s");
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    sampler.abort();
    let total = stored.load(Ordering::Relaxed);
    let samples = samples.lock().unwrap().clone();
    (total, secs, samples)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    samples: usize,
) -> (f64, f64, usize) {
    let mut times = Vec::with_capacity(samples);
    let mut items = 0;
    for i in 0..samples + 10 {
        let t = Instant::now();
        let r = client
            .get(url)
            .header("x-api-key", secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let v: Value = r.json().await.unwrap();
        let took = t.elapsed().as_secs_f64() * 1000.0;
        if i >= 10 {
            // The first requests warm connection and caches; they are not counted.
            times.push(took);
        }
        items = [
            &v["data"],
            &v["items"],
            &v["data"]["items"],
            &v["audit_log"],
        ]
        .into_iter()
        .find_map(|list| list.as_array().map(Vec::len))
        .unwrap_or(0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (percentile(&times, 0.5), percentile(&times, 0.99), items)
}

/// A cursor positioned at the median created_at/duration/status of the org: a page from the
/// middle of the data, reached without walking there.
async fn deep_cursor(
    client: &reqwest::Client,
    base: &str,
    secret: &str,
    query: &str,
    sort: Sort,
) -> Option<String> {
    // Find the extremes of the sort key under the filter, then aim half-way.
    let asc = format!(
        "{base}/v1/logs?limit=1&{query}&sort_by={}&sort_dir=asc",
        sort.key.as_str()
    );
    let desc = format!(
        "{base}/v1/logs?limit=1&{query}&sort_by={}&sort_dir=desc",
        sort.key.as_str()
    );
    let key_of = |v: &Value| -> Option<i64> {
        let item = v["data"].get(0)?;
        match sort.key {
            SortKey::CreatedAt => Timestamp::parse(item["created_at"].as_str()?)
                .ok()
                .map(Timestamp::millis),
            SortKey::DurationMs => item["duration_ms"].as_i64(),
            SortKey::StatusCode => item["status_code"].as_i64(),
        }
    };
    let lo: Value = client
        .get(asc)
        .header("x-api-key", secret)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let hi: Value = client
        .get(desc)
        .header("x-api-key", secret)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mid = (key_of(&lo)? + key_of(&hi)?) / 2;
    let id = match sort.dir {
        SortDir::Desc => uuid_max(),
        SortDir::Asc => uuid_min(),
    };
    Some(
        Cursor {
            kind: CursorKind::Logs,
            sort,
            position: Position { key: mid, id },
        }
        .encode(),
    )
}

fn uuid_max() -> uuid::Uuid {
    uuid::Uuid::max()
}

fn uuid_min() -> uuid::Uuid {
    uuid::Uuid::nil()
}

/// The JSON body of `GET url` with the bench key.
async fn get_json(client: &reqwest::Client, url: &str, secret: &str) -> Value {
    client
        .get(url)
        .header("x-api-key", secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn queries(base: &str, secret: &str, samples: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    // A request id that exists, for the exact-match filter.
    let first = get_json(&client, &format!("{base}/v1/logs?limit=1"), secret).await;
    let rid = first["data"][0]["request_id"]
        .as_str()
        .unwrap_or("req_x")
        .to_owned();
    let now = Timestamp::now();
    let window = format!(
        "from={}&to={}",
        now.add_millis(-15 * DAY_MS).to_rfc3339(),
        now.add_millis(-15 * DAY_MS + 3_600_000).to_rfc3339()
    );
    let created = |dir| Sort {
        key: SortKey::CreatedAt,
        dir,
    };
    let duration = |dir| Sort {
        key: SortKey::DurationMs,
        dir,
    };
    let status = |dir| Sort {
        key: SortKey::StatusCode,
        dir,
    };
    let cases: Vec<(&str, String, Sort)> = vec![
        ("no filter", String::new(), created(SortDir::Desc)),
        ("no filter", String::new(), created(SortDir::Asc)),
        ("no filter", String::new(), duration(SortDir::Desc)),
        ("no filter", String::new(), duration(SortDir::Asc)),
        ("no filter", String::new(), status(SortDir::Desc)),
        ("no filter", String::new(), status(SortDir::Asc)),
        ("method=POST", "method=POST".into(), created(SortDir::Desc)),
        (
            "method=DELETE (1%)",
            "method=DELETE".into(),
            created(SortDir::Desc),
        ),
        (
            "route_pattern=/v1/search",
            "route_pattern=/v1/search".into(),
            created(SortDir::Desc),
        ),
        (
            "route_pattern=/v1/orders/{id}/refunds (1%)",
            "route_pattern=/v1/orders/%7Bid%7D/refunds".into(),
            created(SortDir::Desc),
        ),
        (
            "auth_type=jwt",
            "auth_type=jwt".into(),
            created(SortDir::Desc),
        ),
        (
            "status_min=500 (0.9%)",
            "status_min=500".into(),
            created(SortDir::Desc),
        ),
        (
            "status_min=400&status_max=499",
            "status_min=400&status_max=499".into(),
            created(SortDir::Desc),
        ),
        ("from/to: a one-hour window", window, created(SortDir::Desc)),
        ("method=POST", "method=POST".into(), duration(SortDir::Desc)),
        (
            "status_min=500",
            "status_min=500".into(),
            duration(SortDir::Desc),
        ),
        (
            "request_id (exact)",
            format!("request_id={rid}"),
            created(SortDir::Desc),
        ),
    ];
    let mut lines = Vec::new();
    for (name, query, sort) in cases {
        let name = format!("{name}; {} {}", sort.key.as_str(), sort.dir.as_str());
        let url = format!(
            "{base}/v1/logs?limit=50&{query}&sort_by={}&sort_dir={}",
            sort.key.as_str(),
            sort.dir.as_str()
        );
        let (p50, p99, items) = measure(&client, &url, secret, samples).await;
        let deep = if query.starts_with("request_id") {
            None
        } else {
            deep_cursor(&client, base, secret, &query, sort).await
        };
        let deep_cell = match deep {
            Some(c) => {
                let (d50, d99, _) =
                    measure(&client, &format!("{url}&cursor={c}"), secret, samples).await;
                format!("{d50:.2} ms | {d99:.2} ms")
            }
            None => "n/a | n/a".into(),
        };
        eprintln!("  {name}: {p50:.2}/{p99:.2} ms ({items} items)");
        lines.push(format!(
            "| {name} | {p50:.2} ms | {p99:.2} ms | {deep_cell} |"
        ));
    }
    lines
}

/// Requests answered per second by `GET url`, sent by `clients` keep-alive clients for `secs`.
async fn throughput(url: &str, secret: &str, clients: usize, secs: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, secret, done) = (url.to_owned(), secret.to_owned(), Arc::clone(&done));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while Instant::now() < deadline {
                    let r = client
                        .get(&url)
                        .header("x-api-key", &secret)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "{url}");
                    r.bytes().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Read throughput with and without self-logging, through two apps over the same store
/// (`base` is the main app; a second one is started with the other setting), in alternating
/// rounds so that both see the same data and machine state.
async fn selflog_overhead(
    store: &Arc<dyn Store>,
    base: &str,
    secret: &str,
    base_self_logs: bool,
    secs: f64,

    running: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) -> Vec<String> {
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 5;
    let config = ApiConfig {
        admin_token: Some(AdminToken::new(TOKEN).unwrap()),
        self_log: !base_self_logs,
        ..ApiConfig::default()
    };
    let other = App::build(Arc::clone(store), config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let other_base = format!("http://{}", other.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(other.run_until(async {
        let _ = stop_rx.await;
    }));
    let (on, off) = if base_self_logs {
        (base.to_owned(), other_base)
    } else {
        (other_base, base.to_owned())
    };
    let path = "/v1/logs?limit=20";
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        with.push(throughput(&format!("{on}{path}"), secret, CLIENTS, secs).await);
        without.push(throughput(&format!("{off}{path}"), secret, CLIENTS, secs).await);
    }
    // The second app shuts the shared store down when it stops, so it runs until the caller
    // is done with the store.
    running.push(stop_tx);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (w, wo) = (median(&mut with.clone()), median(&mut without.clone()));
    vec![
        format!(
            "`GET {path}` by {CLIENTS} keep-alive clients, {ROUNDS} alternating rounds of {secs:.0} s each way, against the same store.\n"
        ),
        "| self-logging | requests/s per round | median |\n|---|---|---:|".to_owned(),
        format!("| on | {} | {w:.0} |", rounds(&with)),
        format!("| off | {} | {wo:.0} |", rounds(&without)),
        format!(
            "\nOverhead of self-logging: {:.1}% fewer requests/s (median against median).",
            (1.0 - w / wo) * 100.0
        ),
    ]
}

/// First-page latency of the zoo and keys dialects' lists, by user, key and service account:
/// values with many calls, and values with none (the worst case without an index: the whole
/// org is walked to find out).
async fn principal_queries(base: &str, secret: &str, samples: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    // Values seen in the traffic, from a few pages spread over the org's recent history.
    let mut items = Vec::new();
    for offset in [0, 2_000, 10_000, 50_000, 100_000] {
        let url = format!("{base}/v1/api-keys/requests?limit=100&offset={offset}");
        let page = get_json(&client, &url, secret).await;
        items.extend(
            page["data"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    // The bench key's own self-logged calls are not traffic.
    items.retain(|i| i["principalId"] != "bench");
    let pick = |field: &str| {
        items
            .iter()
            .find_map(|i| i[field].as_str().map(str::to_owned))
            .unwrap_or_else(|| "none".to_owned())
    };
    let (user, key, sa) = (pick("userId"), pick("apiKeyId"), pick("serviceAccountId"));
    let cases = [
        (
            "/org/api-calls?limit=100".to_owned(),
            "zoo: the org's calls",
        ),
        (
            "/user/api-calls?limit=100".to_owned(),
            "zoo: the caller's own calls",
        ),
        (
            format!("/users/{user}/api-calls?limit=100"),
            "zoo: a traffic user's calls",
        ),
        (
            "/users/nobody/api-calls?limit=100".to_owned(),
            "zoo: a user with no calls",
        ),
        (
            format!("/v1/api-keys/requests?limit=100&apiKeyId={key}"),
            "keys: one API key",
        ),
        (
            "/v1/api-keys/requests?limit=100&apiKeyId=none".to_owned(),
            "keys: an API key with no calls",
        ),
        (
            format!("/v1/api-keys/requests?limit=100&serviceAccountId={sa}"),
            "keys: one service account",
        ),
        (
            "/v1/api-keys/requests?limit=100&serviceAccountId=none".to_owned(),
            "keys: a service account with no calls",
        ),
    ];
    let mut lines = Vec::new();
    for (path, name) in cases {
        let (p50, p99, n) = measure(&client, &format!("{base}{path}"), secret, samples).await;
        eprintln!("  {name}: {p50:.2}/{p99:.2} ms ({n} items)");
        lines.push(format!(
            "| {name} (`{path}`) | {n} | {p50:.2} ms | {p99:.2} ms |"
        ));
    }
    lines
}

/// `count` audit events of the bench org over the last 30 days, in time order, as NDJSON
/// batches: 8 resource types, 5 actions, 160,000 distinct resources, 500 users.
fn generate_audit_ndjson(count: usize, batch: usize) -> Vec<Vec<u8>> {
    const TYPES: [&str; 8] = [
        "api_key",
        "destination",
        "source",
        "action_definition",
        "credential",
        "webhook",
        "user",
        "project",
    ];
    const ACTIONS: [&str; 5] = ["create", "update", "delete", "revoke", "rotate"];
    let mut rng = fastrand::Rng::with_seed(7);
    let start = Timestamp::now().add_millis(-30 * DAY_MS);
    let step = (30 * DAY_MS) as f64 / count.max(1) as f64;
    let mut out = Vec::with_capacity(count / batch + 1);
    let mut body = Vec::new();
    for i in 0..count {
        let ty = TYPES[rng.usize(..TYPES.len())];
        let record = json!({
            "action": ACTIONS[rng.usize(..ACTIONS.len())],
            "resource_type": ty,
            "resource_id": format!("{ty}_{:05}", rng.u32(..20_000)),
            "user_id": format!("usr_{:03}", rng.u32(..500)),
            "details": {"field": "url", "from": format!("https://a.example/{}", rng.u32(..)), "to": format!("https://b.example/{}", rng.u32(..))},
            "ip_address": format!("203.0.113.{}", rng.u8(1..255)),
            "created_at": start.add_millis((i as f64 * step) as i64).to_rfc3339(),
        });
        serde_json::to_writer(&mut body, &record).unwrap();
        body.push(b'\n');
        if (i + 1) % batch == 0 {
            out.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        out.push(body);
    }
    out
}

/// Section 6: audit ingest, `GET /v1/audit-log` latency, and `verify`.
async fn audit_section(report: &mut String, args: &Args, base: &str, secret: &str, dir: &Path) {
    eprintln!("generating {} audit events...", args.audit_rows);
    let bodies = generate_audit_ndjson(args.audit_rows, args.batch);
    let _ = writeln!(report, "\n## Audit log: end-to-end HTTP ingest\n");
    let (total, secs, samples) = ingest(
        base,
        "/v1/ingest/audit-events",
        secret,
        bodies,
        args.clients,
        dir,
    )
    .await;
    let _ = writeln!(
        report,
        "{} clients, NDJSON batches of {} to `/v1/ingest/audit-events`, {total} events in {secs:.1}s: **{:.0} events/s** overall (each appended to the org's hash chain; 202 only after commit and fsync).\n",
        args.clients,
        args.batch,
        total as f64 / secs
    );
    let _ = writeln!(
        report,
        "| events stored | events/s in the last interval | database size |\n|---:|---:|---:|"
    );
    for (n, rate, size) in samples {
        let _ = writeln!(report, "| {n} | {rate:.0} | {} |", gib(size));
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;

    let client = reqwest::Client::new();
    let url = |q: &str| format!("{base}/v1/audit-log?{q}");
    // An existing resource id, for the rare-value filter.
    let first = get_json(&client, &url("limit=1"), secret).await;
    let resource = first["audit_log"][0]["resource_id"]
        .as_str()
        .unwrap_or("none")
        .to_owned();
    // A cursor half-way through the 30 days: a deep page reached without walking there.
    let mid = Timestamp::now().add_millis(-15 * DAY_MS).to_rfc3339();
    let deep = format!("cursor={mid}|ffffffff-ffff-ffff-ffff-ffffffffffff");
    let _ = writeln!(
        report,
        "\n## `GET /v1/audit-log` latency ({total} events in the org, {} requests per row, keep-alive, client-side)\n",
        args.samples
    );
    let _ = writeln!(
        report,
        "| query | items | first page p50 | first page p99 | deep page p50 | deep page p99 |\n|---|---:|---:|---:|---:|---:|"
    );
    let queries = [
        ("newest first (default limit 50)", String::new()),
        ("limit=200", "limit=200".to_owned()),
        (
            "resource_type=destination",
            "resource_type=destination".to_owned(),
        ),
        ("action=revoke", "action=revoke".to_owned()),
        (
            "resource_type=credential&action=rotate",
            "resource_type=credential&action=rotate".to_owned(),
        ),
        (
            "resource_id (a resource with few entries)",
            format!("resource_id={resource}"),
        ),
        (
            "resource_id (no entries)",
            "resource_id=nothing_here".to_owned(),
        ),
    ];
    for (name, q) in queries {
        let (p50, p99, items) = measure(&client, &url(&q), secret, args.samples).await;
        let (d50, d99, _) =
            measure(&client, &url(&format!("{q}&{deep}")), secret, args.samples).await;
        let _ = writeln!(
            report,
            "| {name} | {items} | {p50:.2} ms | {p99:.2} ms | {d50:.2} ms | {d99:.2} ms |"
        );
        eprintln!("audit {name}: p50 {p50:.2} ms, p99 {p99:.2} ms");
    }

    let started = Instant::now();
    let verified = get_json(&client, &format!("{base}/v1/audit-log/verify"), secret).await;
    let took = started.elapsed().as_secs_f64();
    assert_eq!(verified["ok"], true, "{verified}");
    let _ = writeln!(
        report,
        "\n`GET /v1/audit-log/verify` recomputed {} links in {took:.2} s ({:.0} links/s).",
        verified["entries_checked"],
        verified["entries_checked"].as_f64().unwrap_or(0.0) / took
    );
}

//! A store whose connections are closed under it (PostgreSQL restarting or failing over, a
//! network drop; here its backends are terminated with `pg_terminate_backend`, since the
//! shared server must keep running for other tests) recovers by itself: every pool reopens
//! its connections, nothing acknowledged is lost, an ingest group cut off before its COMMIT
//! is written again, and while the database refuses connections every call fails fast with
//! an error instead of hanging or panicking.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use apitrail_model::{LogFilter, PageRequest, PageStart, RequestLog, Secret, Sort, Tenant};
use apitrail_pgtest::PgServer;
use apitrail_store::{ActionStore, AuditBatch, InsertOutcome, LogBatch, Store, StoreError};
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_tests::support::{LogGen, at, audit_entry, insert, new_key, new_org, store_key};
use tokio_postgres::{Client, NoTls};

/// How long the store may take to work again once the database accepts connections.
const RECOVERY: Duration = Duration::from_secs(5);
/// How long a call may take to fail while the database refuses connections.
const FAIL_FAST: Duration = Duration::from_secs(2);
/// Connections of a store with the default options: 2 readers, 4 writers, 4 volatile
/// writers, 2 log writers.
const POOL: i64 = 12;

/// A store on a fresh database, the database's name, and a superuser connection to the
/// server's `postgres` database (which outlives the store's connections).
async fn setup() -> (PgStore, String, Client) {
    let server = PgServer::shared();
    let url = server.fresh_database().await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let (admin, conn) = tokio_postgres::connect(&server.url("postgres"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    (store, db, admin)
}

/// Client backends connected to `db`.
async fn backends(admin: &Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend'",
            &[&db],
        )
        .await
        .unwrap()
        .get(0)
}

/// Terminates every connection to `db` and waits until they are gone; returns how many
/// there were.
async fn kill_connections(admin: &Client, db: &str) -> i64 {
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed > 0, "the store has connections to terminate");
    let deadline = Instant::now() + RECOVERY;
    while backends(admin, db).await > 0 {
        assert!(
            Instant::now() < deadline,
            "terminated backends did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    killed
}

/// Whether `db` accepts new connections.
async fn allow_connections(admin: &Client, db: &str, allow: bool) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {allow}"
        ))
        .await
        .unwrap();
}

/// Calls `call` until it succeeds, for at most [`RECOVERY`]; returns its value.
async fn eventually<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) if started.elapsed() < RECOVERY => {
                eprintln!("{what}: not yet ({e})");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what} did not recover within {RECOVERY:?}: {e:?}"),
        }
    }
}

/// Asserts that `call` fails, quickly, with `Unavailable` (which the API answers with 503;
/// not `Closed`, which would mean a log writer died).
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{what} while the database refuses connections: {result:?}"
    );
    assert!(took < FAIL_FAST, "{what} took {took:?} to fail");
}

/// What the store holds before its connections are killed.
struct Acknowledged {
    tenant: Tenant,
    secret: Secret,
    logs: Vec<RequestLog>,
}

/// An org with a key and acknowledged request logs and audit entries.
async fn acknowledged(store: &PgStore, tag: &str) -> Acknowledged {
    let tenant = new_org(store, tag).await;
    let (key, secret) = new_key(&tenant, "ops", at(1));
    store_key(store, &tenant, &key, &secret).await;
    let mut gen_logs = LogGen::new(7, tag);
    let logs = gen_logs.logs(300);
    for part in logs.chunks(50) {
        assert_eq!(insert(store, &tenant, part).await.accepted, 50);
    }
    let audit = (0..5)
        .map(|i| audit_entry("update", "destination", &format!("d{i}"), at(i)))
        .collect();
    store
        .insert_audit_entries(vec![AuditBatch {
            tenant: tenant.clone(),
            entries: audit,
        }])
        .await
        .unwrap();
    Acknowledged {
        tenant,
        secret,
        logs,
    }
}

/// Checks every pool works again (each call several times, so that every connection of
/// each pool is picked and reopened) and that everything acknowledged is still there.
async fn assert_recovered(store: &PgStore, acked: &Acknowledged, fresh: &[RequestLog]) {
    let tenant = &acked.tenant;
    let filter = &LogFilter::default();
    let hash = &acked.secret.hash();
    let page = PageRequest {
        limit: 1_000,
        start: PageStart::First,
    };
    for _ in 0..4 {
        eventually("ping", move || store.ping()).await;
        let found = eventually("authenticate", move || store.authenticate(hash)).await;
        assert_eq!(
            found.map(|(t, _)| t),
            Some(tenant.clone()),
            "the key still works"
        );
        eventually("audit write", move || {
            store.insert_audit_entries(vec![AuditBatch {
                tenant: tenant.clone(),
                entries: vec![audit_entry("update", "destination", "after", at(9))],
            }])
        })
        .await;
        eventually("lease (volatile writer)", move || {
            store.lease_due_actions(at(0), at(1), "reconnect-test", 10)
        })
        .await;
    }
    let outcome = eventually("ingest", move || {
        store.insert_request_logs(vec![LogBatch::new(tenant.clone(), fresh.to_vec())])
    })
    .await;
    assert_eq!(
        outcome,
        InsertOutcome {
            accepted: fresh.len() as u64,
            duplicates: 0
        },
        "records refused during the outage were not stored"
    );

    let all: Vec<&RequestLog> = acked.logs.iter().chain(fresh).collect();
    let count = eventually("count", move || store.count_request_logs(tenant)).await;
    assert_eq!(count, all.len() as u64, "every acknowledged record, once");
    let listed = eventually("list", move || {
        store.list_request_logs(tenant, filter, Sort::NEWEST_FIRST, page)
    })
    .await;
    assert_eq!(listed.items.len(), all.len());
    for log in all {
        let got = eventually("get", move || store.get_request_log(tenant, log.id)).await;
        assert_eq!(
            got.as_ref(),
            Some(log),
            "acknowledged record {} is intact",
            log.id
        );
    }
    let chain = eventually("verify the audit chain", move || {
        store.verify_audit_chain(tenant)
    })
    .await;
    assert!(chain.ok, "the audit chain is intact: {chain:?}");
}

/// The backends are terminated while the database stays up: the next calls reopen the
/// connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_its_connections_are_terminated() {
    let (store, db, admin) = setup().await;
    let acked = acknowledged(&store, "terminated").await;

    assert_eq!(
        kill_connections(&admin, &db).await,
        POOL,
        "every pool's connections"
    );
    let started = Instant::now();
    let fresh = LogGen::new(8, "terminated-after").logs(40);
    assert_recovered(&store, &acked, &fresh).await;
    eprintln!("recovered in {:?}", started.elapsed());

    // Twice in a row (only the connections used since were reopened: a connection is
    // reopened when it is picked), and no connection left behind: at most one per slot.
    kill_connections(&admin, &db).await;
    let more = LogGen::new(9, "terminated-again").logs(40);
    let acked = Acknowledged {
        logs: acked.logs.iter().chain(&fresh).cloned().collect(),
        ..acked
    };
    assert_recovered(&store, &acked, &more).await;
    assert!(backends(&admin, &db).await <= POOL);
}

/// The database refuses connections after they were terminated (as while PostgreSQL
/// restarts): every call fails fast with a backend error, ingest stores nothing; once it
/// accepts connections again everything works, within a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_fast_while_the_database_is_down_and_recovers_after() {
    let (store, db, admin) = setup().await;
    let acked = acknowledged(&store, "down").await;
    let tenant = &acked.tenant;
    let refused = LogGen::new(10, "down-refused").logs(40);

    allow_connections(&admin, &db, false).await;
    kill_connections(&admin, &db).await;
    let page = PageRequest {
        limit: 10,
        start: PageStart::First,
    };
    let filter = LogFilter::default();
    // Several rounds, so that every connection of every pool is tried, and calls come both
    // before and after a slot's last failed attempt expires.
    for round in 0..3 {
        fails_fast(
            "ingest",
            store.insert_request_logs(vec![LogBatch::new(tenant.clone(), refused.clone())]),
        )
        .await;
        for _ in 0..4 {
            fails_fast("ping", store.ping()).await;
            fails_fast("count", store.count_request_logs(tenant)).await;
            fails_fast("get", store.get_request_log(tenant, acked.logs[0].id)).await;
            fails_fast(
                "list",
                store.list_request_logs(tenant, &filter, Sort::NEWEST_FIRST, page),
            )
            .await;
            fails_fast("authenticate", store.authenticate(&acked.secret.hash())).await;
            fails_fast(
                "audit write",
                store.insert_audit_entries(vec![AuditBatch {
                    tenant: tenant.clone(),
                    entries: vec![audit_entry("update", "destination", "down", at(8))],
                }]),
            )
            .await;
            fails_fast(
                "lease (volatile writer)",
                store.lease_due_actions(at(0), at(1), "reconnect-test", 10),
            )
            .await;
        }
        // Many callers at once: each fails fast too.
        let started = Instant::now();
        let calls = (0..32).map(|_| store.count_request_logs(tenant));
        for result in apitrail_store_tests::support::join_all(calls).await {
            assert!(
                matches!(result, Err(StoreError::Unavailable(_))),
                "{result:?}"
            );
        }
        assert!(
            started.elapsed() < FAIL_FAST,
            "round {round}: concurrent calls"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    allow_connections(&admin, &db, true).await;
    let started = Instant::now();
    // A burst of callers as the database comes back.
    let store = &store;
    let calls = (0..32).map(|_| eventually("count", move || store.count_request_logs(tenant)));
    for count in apitrail_store_tests::support::join_all(calls).await {
        assert_eq!(count, acked.logs.len() as u64, "nothing stored while down");
    }
    eprintln!("recovered in {:?}", started.elapsed());
    assert!(started.elapsed() < RECOVERY);
    // The refused records were not stored (nor their ids claimed): they are accepted now.
    assert_recovered(store, &acked, &refused).await;
    assert!(
        backends(&admin, &db).await <= POOL,
        "one connection per pool slot"
    );
}

/// An ingest group that loses its connection before its COMMIT was sent (nothing was stored)
/// is written again on a new connection: the call gets its outcome, not an error, and every
/// record is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_cut_off_before_its_commit_is_written_again() {
    let (store, db, admin) = setup().await;
    let tenant = new_org(&store, "cut").await;
    let before = LogGen::new(11, "cut").logs(20);
    insert(&store, &tenant, &before).await;

    // The group's last step before COMMIT adds to the per-day counts: a lock on them holds
    // it there, where its backend is terminated.
    let (locker, conn) = tokio_postgres::connect(&PgServer::shared().url(&db), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE request_log_counts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let logs = LogGen::new(12, "cut-more").logs(30);
    let (outcome, ()) = tokio::join!(
        store.insert_request_logs(vec![LogBatch::new(tenant.clone(), logs.clone())]),
        async {
            let deadline = Instant::now() + RECOVERY;
            loop {
                let killed: i64 = admin
                    .query_one(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                         FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                        &[&db],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if killed > 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the group never reached the lock"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            locker.batch_execute("ROLLBACK").await.unwrap();
        }
    );
    assert_eq!(
        outcome.unwrap(),
        InsertOutcome {
            accepted: logs.len() as u64,
            duplicates: 0
        }
    );
    let count = store.count_request_logs(&tenant).await.unwrap();
    assert_eq!(
        count,
        (before.len() + logs.len()) as u64,
        "each record once"
    );
    for log in before.iter().chain(&logs) {
        let got = store.get_request_log(&tenant, log.id).await.unwrap();
        assert_eq!(got.as_ref(), Some(log));
    }
}

//! Behaviour specific to the SQLite backend: admission control of the write queue, atomic
//! batches inside a group commit, durability across reopening, schema versions, and the
//! query plans of list queries.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use apitrail_model::{LogFilter, PageStart, RequestLog, Sort, SortDir, SortKey, new_record_id};
use apitrail_store::{InsertOutcome, LogBatch, Store, StoreError};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use apitrail_store_tests::support::{
    LogGen, assert_same_logs, at, insert, insert_all_new, join_all, new_key, new_org, reference,
    store_key, walk,
};
use rusqlite::types::Value;

fn open(dir: &Path, options: SqliteOptions) -> SqliteStore {
    SqliteStore::open(dir, options).unwrap()
}

fn small_queue(capacity: usize) -> SqliteOptions {
    SqliteOptions {
        queue_capacity: capacity,
        ..SqliteOptions::default()
    }
}

/// Logs with bodies large enough that committing a batch takes a while.
fn heavy_logs(generator: &mut LogGen, n: usize) -> Vec<RequestLog> {
    let body = "x".repeat(4096);
    generator
        .logs(n)
        .into_iter()
        .map(|mut l| {
            l.request_body = Some(body.clone());
            l
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_whole_batches_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), small_queue(1000));
    let a = new_org(&store, "overload").await;
    let mut generator = LogGen::new(0x0E7, "a");

    // A batch larger than the whole queue can never be admitted; one that fills it exactly can.
    let too_big = generator.logs(1001);
    match store
        .insert_request_logs(vec![LogBatch {
            tenant: a.clone(),
            logs: too_big.clone(),
        }])
        .await
    {
        Err(StoreError::Overloaded { retry_after_secs }) => assert!(retry_after_secs >= 1),
        other => panic!("a batch beyond the queue's capacity must be Overloaded, got {other:?}"),
    }
    assert_eq!(store.count_request_logs(&a).await.unwrap(), 0);
    let exact = generator.logs(1000);
    insert_all_new(&store, &a, &exact, 1000).await;

    // Many large batches at once: the queue admits what fits (at least three of 300 records)
    // and refuses the rest whole.
    let batches: Vec<Vec<RequestLog>> = (0..24).map(|_| heavy_logs(&mut generator, 300)).collect();
    let outcomes = join_all(batches.iter().map(|logs| {
        store.insert_request_logs(vec![LogBatch {
            tenant: a.clone(),
            logs: logs.clone(),
        }])
    }))
    .await;
    let mut stored = exact;
    let mut refused = Vec::new();
    for (logs, outcome) in batches.into_iter().zip(outcomes) {
        match outcome {
            Ok(o) => {
                assert_eq!(
                    o,
                    InsertOutcome {
                        accepted: 300,
                        duplicates: 0
                    }
                );
                stored.extend(logs);
            }
            Err(StoreError::Overloaded { retry_after_secs }) => {
                assert!(retry_after_secs >= 1);
                refused.push(logs);
            }
            Err(e) => panic!("unexpected error under load: {e:?}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "24 × 300 records cannot fit a queue of 1000"
    );
    assert!(stored.len() >= 1000 + 3 * 300, "the queue admits what fits");
    for logs in &refused {
        for log in [&logs[0], &logs[150], &logs[299]] {
            assert_eq!(
                store.get_request_log(&a, log.id).await.unwrap(),
                None,
                "refused means not stored"
            );
        }
    }
    assert_eq!(
        store.count_request_logs(&a).await.unwrap(),
        stored.len() as u64
    );
    let stats = store.stats();
    assert_eq!(stats.queued_records, 0, "the queue drains completely");
    assert_eq!(stats.queue_capacity, 1000);
    assert_eq!(
        stats.committed_records,
        stored.len() as u64,
        "refused records never reach a commit"
    );

    // Once drained, the refused batches go through on retry.
    for logs in refused {
        assert_eq!(insert(&store, &a, &logs).await.accepted, 300);
        stored.extend(logs);
    }
    let got = walk(&store, &a, &LogFilter::default(), Sort::NEWEST_FIRST, 1000).await;
    assert_same_logs(
        &got.items,
        &reference(&stored, &LogFilter::default(), Sort::NEWEST_FIRST),
        &"after retries",
    );
    store.shutdown().await.unwrap();
}

/// An acknowledged batch no longer occupies the queue: a client sending batches as large as
/// the whole queue, one after another, is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_batch_frees_its_queue_space_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), small_queue(50));
    let a = new_org(&store, "resubmit").await;
    let mut generator = LogGen::new(0x5E0, "a");
    for round in 0..150 {
        let logs = generator.logs(50);
        match store
            .insert_request_logs(vec![LogBatch {
                tenant: a.clone(),
                logs,
            }])
            .await
        {
            Ok(outcome) => assert_eq!(outcome.accepted, 50),
            Err(e) => panic!("round {round}: a sequential client was refused: {e:?}"),
        }
    }
    assert_eq!(store.count_request_logs(&a).await.unwrap(), 150 * 50);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_stores_nothing_and_spares_the_rest_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    let a = new_org(&store, "poison-a").await;
    let b = new_org(&store, "poison-b").await;
    // A trigger makes one chosen record fail inside the writer's transaction, as a full disk
    // or a constraint would.
    let side = rusqlite::Connection::open(store.path()).unwrap();
    side.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    side.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON request_logs WHEN NEW.path = '/poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned record'); END;",
    )
    .unwrap();
    let mut generator = LogGen::new(0x9015, "a");
    let first_a = generator.logs(10);
    let mut poisoned_b = generator.logs(10);
    poisoned_b[6].path = "/poison".into();
    let poisoned_call = vec![
        LogBatch {
            tenant: a.clone(),
            logs: first_a.clone(),
        },
        LogBatch {
            tenant: b.clone(),
            logs: poisoned_b.clone(),
        },
    ];
    match store.insert_request_logs(poisoned_call.clone()).await {
        Err(StoreError::Backend(_)) => {}
        other => panic!("a failing record fails its call, got {other:?}"),
    }
    assert_eq!(
        store.count_request_logs(&a).await.unwrap(),
        0,
        "not even the other org's batch"
    );
    assert_eq!(
        store.count_request_logs(&b).await.unwrap(),
        0,
        "not even the records before it"
    );

    // Submitted together (so very likely in one group), the healthy calls still commit.
    let healthy: Vec<Vec<RequestLog>> = (0..6).map(|_| generator.logs(20)).collect();
    let calls = healthy
        .iter()
        .map(|logs| {
            vec![LogBatch {
                tenant: a.clone(),
                logs: logs.clone(),
            }]
        })
        .chain(std::iter::once(poisoned_call.clone()));
    let outcomes = join_all(calls.map(|call| store.insert_request_logs(call))).await;
    let (poisoned, fine) = outcomes.split_last().unwrap();
    assert!(
        matches!(poisoned, Err(StoreError::Backend(_))),
        "{poisoned:?}"
    );
    for outcome in fine {
        assert_eq!(outcome.as_ref().unwrap().accepted, 20);
    }
    let stored: Vec<RequestLog> = healthy.concat();
    assert_eq!(
        store.count_request_logs(&a).await.unwrap(),
        stored.len() as u64
    );
    assert_eq!(store.count_request_logs(&b).await.unwrap(), 0);

    // Without the trigger, the same call goes through whole.
    side.execute_batch("DROP TRIGGER poison").unwrap();
    assert_eq!(
        store.insert_request_logs(poisoned_call).await.unwrap(),
        InsertOutcome {
            accepted: 20,
            duplicates: 0
        }
    );
    let mut all_a = stored;
    all_a.extend(first_a);
    let got = walk(&store, &a, &LogFilter::default(), Sort::NEWEST_FIRST, 100).await;
    assert_same_logs(
        &got.items,
        &reference(&all_a, &LogFilter::default(), Sort::NEWEST_FIRST),
        &"org a",
    );
    let got = walk(&store, &b, &LogFilter::default(), Sort::NEWEST_FIRST, 100).await;
    assert_same_logs(
        &got.items,
        &reference(&poisoned_b, &LogFilter::default(), Sort::NEWEST_FIRST),
        &"org b",
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = LogGen::new(0x5EED_D15C, "a");
    let logs = generator.logs(400);
    let (tenant, org, keys, audit, live_secret, revoked_secret);
    {
        let store = open(dir.path(), SqliteOptions::default());
        tenant = new_org(&store, "durable").await;
        org = store.org(&tenant).await.unwrap();
        let (live, secret) = new_key(&tenant, "live", at(1));
        let (gone, gone_secret) = new_key(&tenant, "gone", at(2));
        store_key(&store, &tenant, &live, &secret).await;
        store_key(&store, &tenant, &gone, &gone_secret).await;
        store
            .revoke_api_key(
                &tenant,
                gone.id,
                at(3),
                &apitrail_store_tests::support::audit_entry("revoke", "api_key", "gone", at(3)),
            )
            .await
            .unwrap();
        store.touch_api_keys(vec![(live.id, at(4))]).await.unwrap();
        insert_all_new(&store, &tenant, &logs, 150).await;
        keys = store.list_api_keys(&tenant).await.unwrap();
        audit = store.list_audit_entries(&tenant, 100).await.unwrap();
        (live_secret, revoked_secret) = (secret, gone_secret);
        store.shutdown().await.unwrap();
    }
    let more = generator.logs(50);
    {
        let store = open(dir.path(), SqliteOptions::default());
        let found = store
            .tenant(&org.id)
            .await
            .unwrap()
            .expect("the org survives");
        assert_eq!(found, tenant);
        assert_eq!(store.org(&found).await.unwrap(), org);
        assert_eq!(
            store.list_orgs(None, 10).await.unwrap().items,
            vec![org.clone()]
        );
        assert_eq!(store.list_api_keys(&found).await.unwrap(), keys);
        assert_eq!(store.list_audit_entries(&found, 100).await.unwrap(), audit);
        let (t, k) = store
            .authenticate(&live_secret.hash())
            .await
            .unwrap()
            .expect("live key");
        assert_eq!(
            (t, Some(k)),
            (
                found.clone(),
                keys.iter().find(|k| k.name == "live").cloned()
            )
        );
        assert_eq!(
            store.authenticate(&revoked_secret.hash()).await.unwrap(),
            None
        );
        for sort in apitrail_store_tests::support::ALL_SORTS {
            let got = walk(&store, &found, &LogFilter::default(), sort, 97).await;
            assert_same_logs(
                &got.items,
                &reference(&logs, &LogFilter::default(), sort),
                &"after reopening",
            );
        }
        // Re-sending after a restart is still recognised as a retry.
        assert_eq!(insert(&store, &found, &logs[..100]).await.duplicates, 100);
        insert_all_new(&store, &found, &more, 50).await;
        // Dropped without an explicit shutdown: dropping flushes too.
    }
    {
        let store = open(dir.path(), SqliteOptions::default());
        let found = store.tenant(&org.id).await.unwrap().unwrap();
        assert_eq!(store.count_request_logs(&found).await.unwrap(), 450);
        for log in &more {
            assert_eq!(
                store
                    .get_request_log(&found, log.id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(log)
            );
        }
        store.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let store = open(dir.path(), SqliteOptions::default());
        store.shutdown().await.unwrap();
        store.path().to_owned()
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    match SqliteStore::open(dir.path(), SqliteOptions::default()) {
        Err(StoreError::Backend(e)) => {
            assert!(e.to_string().contains("newer"), "the error says why: {e}");
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

/// The SQL shape `request_logs::list` builds for a query (kept in step with it by hand, as the
/// builder is private): the request-id index forced when that filter is present, the filters'
/// conditions after `org = ?`, the keyset as a row-value comparison, the order with the id
/// tie-break, a limit, and an offset.
fn list_sql(conditions: &[&str], key: SortKey, dir: SortDir, start: PageStart) -> String {
    let column = key.as_str();
    let (cmp, order) = match dir {
        SortDir::Asc => (">", "ASC"),
        SortDir::Desc => ("<", "DESC"),
    };
    let table = if conditions.iter().any(|c| c.starts_with("request_id")) {
        "request_logs INDEXED BY request_logs_by_request_id"
    } else {
        "request_logs"
    };
    let mut sql = format!("SELECT * FROM {table} WHERE org = ?");
    for c in conditions {
        sql.push_str(" AND ");
        sql.push_str(c);
    }
    if matches!(start, PageStart::After(_)) {
        sql.push_str(&format!(" AND ({column}, id) {cmp} (?, ?)"));
    }
    sql.push_str(&format!(" ORDER BY {column} {order}, id {order} LIMIT ?"));
    if matches!(start, PageStart::Offset(_)) {
        sql.push_str(" OFFSET ?");
    }
    sql
}

fn plan(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let params = vec![Value::Null; st.parameter_count()];
    st.query_map(rusqlite::params_from_iter(params), |r| {
        r.get::<_, String>(3)
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every list query seeks an index by org (never a scan of the table or of a whole index);
/// each sort key has its own index that yields the order without sorting, with keyset pages
/// as a range of it; the method, route, auth type and request id filters seek their own index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queries_seek_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    // Some data, so that the plans are those of a live database.
    let a = new_org(&store, "plans").await;
    insert_all_new(&store, &a, &LogGen::new(1, "a").logs(500), 500).await;
    let conn = rusqlite::Connection::open_with_flags(
        store.path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let after = PageStart::After(apitrail_model::Position {
        key: 0,
        id: new_record_id(),
    });
    let index_of = |key: SortKey| match key {
        SortKey::CreatedAt => "request_logs_by_created",
        SortKey::DurationMs => "request_logs_by_duration",
        SortKey::StatusCode => "request_logs_by_status",
    };
    let conditions: [&[&str]; 12] = [
        &[],
        &["method = ?"],
        &["route_pattern = ?"],
        &["auth_type = ?"],
        &["request_id IN (?, ?)"],
        &["api_key_id = ?"],
        &["service_account_id = ?"],
        &["user_id = ?"],
        &["status_code >= ?", "status_code <= ?"],
        &["created_at >= ?", "created_at < ?"],
        &[
            "method = ?",
            "status_code >= ?",
            "created_at >= ?",
            "created_at < ?",
        ],
        &["auth_type = ?", "user_id = ?", "request_id IN (?, ?)"],
    ];
    for sort in apitrail_store_tests::support::ALL_SORTS {
        for start in [PageStart::First, after, PageStart::Offset(10)] {
            for conds in conditions {
                let sql = list_sql(conds, sort.key, sort.dir, start);
                let steps = plan(&conn, &sql);
                let ctx = format!("{sql}\n  plan: {steps:?}");
                let on_table: Vec<&String> = steps
                    .iter()
                    .filter(|s| s.contains("request_logs"))
                    .collect();
                assert_eq!(on_table.len(), 1, "{ctx}");
                assert!(
                    on_table[0].starts_with("SEARCH request_logs USING INDEX request_logs_by_")
                        && on_table[0].contains("(org=?"),
                    "the query must seek an index by org: {ctx}"
                );
                // A lone equality filter with an index of its own.
                let filter_index = ["method", "route_pattern", "auth_type"]
                    .into_iter()
                    .find(|c| conds.len() == 1 && conds[0].starts_with(&format!("{c} ")));
                if conds.iter().any(|c| c.starts_with("request_id")) {
                    assert!(
                        on_table[0].contains("request_logs_by_request_id (org=? AND request_id=?)"),
                        "a request id is sought by its index: {ctx}"
                    );
                } else if conds.is_empty() {
                    assert!(on_table[0].contains(index_of(sort.key)), "{ctx}");
                    assert!(
                        !ctx.contains("TEMP B-TREE"),
                        "the index yields the order: {ctx}"
                    );
                    if matches!(start, PageStart::After(_)) {
                        let (column, cmp) = (
                            sort.key.as_str(),
                            if sort.dir == SortDir::Asc { ">" } else { "<" },
                        );
                        assert!(
                            on_table[0].contains(&format!("({column},id){cmp}(?,?)")),
                            "a keyset page is a range of the index: {ctx}"
                        );
                    }
                } else if let (Some(column), SortKey::CreatedAt) = (filter_index, sort.key) {
                    assert!(
                        on_table[0].contains(&format!("(org=? AND {column}=?")),
                        "an equality filter seeks its own index: {ctx}"
                    );
                    assert!(
                        !ctx.contains("TEMP B-TREE"),
                        "the filter index yields the order: {ctx}"
                    );
                }
            }
        }
    }
    store.shutdown().await.unwrap();
}

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
        .insert_request_logs(vec![LogBatch::new(a.clone(), too_big.clone())])
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
    let outcomes = join_all(
        batches
            .iter()
            .map(|logs| store.insert_request_logs(vec![LogBatch::new(a.clone(), logs.clone())])),
    )
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
            .insert_request_logs(vec![LogBatch::new(a.clone(), logs)])
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
        LogBatch::new(a.clone(), first_a.clone()),
        LogBatch::new(b.clone(), poisoned_b.clone()),
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
        .map(|logs| vec![LogBatch::new(a.clone(), logs.clone())])
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
    // The stats rollups, summed per group, count exactly the records that stayed.
    apitrail_store_tests::assert_stats_agree(&store, &a, &all_a, "org a").await;
    apitrail_store_tests::assert_stats_agree(&store, &b, &poisoned_b, "org b").await;
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
        audit = store
            .list_audit_entries(&tenant, &Default::default(), None, 100)
            .await
            .unwrap()
            .items;
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
        assert_eq!(
            store
                .list_audit_entries(&found, &Default::default(), None, 100)
                .await
                .unwrap()
                .items,
            audit
        );
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

/// The index an equality filter of `filter` seeks in created_at order, if it has one.
fn equality_index(filter: &LogFilter) -> Option<&'static str> {
    [
        (filter.method.is_some(), "request_logs_by_method"),
        (filter.route_pattern.is_some(), "request_logs_by_route"),
        (filter.auth_type.is_some(), "request_logs_by_auth_type"),
        (filter.user_id.is_some(), "request_logs_by_user"),
        (filter.api_key_id.is_some(), "request_logs_by_api_key"),
    ]
    .into_iter()
    .find_map(|(set, index)| set.then_some(index))
}

/// Every list query is answered by index seeks keyed by org, never by scanning a table or a
/// whole index; each sort has its order without a sort of the org's rows (only the merge of a
/// few candidates per level or status code); the equality filters seek their own index; a
/// request id is found through the leveled request-id key; a time window too small to be
/// worth a walk in another order is read through the created index. The plans checked are
/// those of the statements the store really runs (`explain_list`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queries_seek_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    // Some data, so that the plans are those of a live database.
    let a = new_org(&store, "plans").await;
    insert_all_new(&store, &a, &LogGen::new(1, "a").logs(500), 500).await;
    // The filter values below exist, so that each statement is planned (a value the org has
    // never logged is answered without a statement: see the end).
    let named: Vec<RequestLog> = LogGen::new(2, "n")
        .logs(3)
        .into_iter()
        .map(|l| RequestLog {
            api_key_id: Some("k".into()),
            service_account_id: Some("sa".into()),
            email: Some("someone@example.com".into()),
            ..l
        })
        .collect();
    insert_all_new(&store, &a, &named, 3).await;
    let after = PageStart::After(apitrail_model::Position {
        key: 0,
        id: new_record_id(),
    });
    let text = |v: &str| Some(v.to_owned());
    let filters = [
        LogFilter::default(),
        LogFilter {
            method: text("GET"),
            ..LogFilter::default()
        },
        LogFilter {
            route_pattern: text("/v1/x"),
            ..LogFilter::default()
        },
        LogFilter {
            auth_type: text("api_key"),
            ..LogFilter::default()
        },
        LogFilter {
            request_id: text("req_1"),
            ..LogFilter::default()
        },
        LogFilter {
            api_key_id: text("k"),
            ..LogFilter::default()
        },
        LogFilter {
            user_id: text("u"),
            ..LogFilter::default()
        },
        LogFilter {
            service_account_id: text("sa"),
            status_min: Some(500),
            ..LogFilter::default()
        },
        LogFilter {
            email: text("someone@example.com"),
            ..LogFilter::default()
        },
        LogFilter {
            status_min: Some(400),
            status_max: Some(499),
            ..LogFilter::default()
        },
        LogFilter {
            from: Some(apitrail_model::Timestamp::from_millis(0).unwrap()),
            to: Some(apitrail_model::Timestamp::from_millis(1).unwrap()),
            ..LogFilter::default()
        },
        LogFilter {
            method: text("GET"),
            status_min: Some(200),
            request_id: text("r"),
            ..LogFilter::default()
        },
    ];
    for sort in apitrail_store_tests::support::ALL_SORTS {
        for start in [PageStart::First, after, PageStart::Offset(10)] {
            for filter in &filters {
                let page = apitrail_model::PageRequest { limit: 50, start };
                let steps = store.explain_list(&a, filter, sort, page).await.unwrap();
                let ctx = format!("{sort:?} {start:?} {filter:?}\n  plan: {steps:#?}");
                assert!(!steps.is_empty(), "{ctx}");
                // No full scans of a table or of a whole index.
                for step in &steps {
                    let scans_table = step.starts_with("SCAN ")
                        && !step.starts_with("SCAN (subquery")
                        && !step.starts_with("SCAN CONSTANT");
                    assert!(!scans_table, "a full scan: {step}\n{ctx}");
                }
                let by_org = |step: &&String| step.contains("(org=?");
                let side = |prefix: &str| {
                    (0..3).all(|l| {
                        steps.iter().any(|s| {
                            s.contains(&format!("{prefix}_l{l}"))
                                && s.contains("PRIMARY KEY (org=?")
                        })
                    })
                };
                if filter.request_id.is_some() {
                    assert!(
                        side("request_logs_request_id"),
                        "request id via its levels: {ctx}"
                    );
                    assert!(
                        steps.iter().any(|s| s.contains("(org=? AND k=?)")),
                        "the request id is sought, not scanned: {ctx}"
                    );
                } else if filter.from.is_some() && sort.key != SortKey::CreatedAt {
                    // This window holds no row: it is read in created_at order and sorted.
                    assert!(
                        steps
                            .iter()
                            .filter(by_org)
                            .all(|s| s.contains("request_logs_by_created")),
                        "a small window is read through the created index: {ctx}"
                    );
                } else if sort.key == SortKey::DurationMs {
                    assert!(
                        side("request_logs_duration"),
                        "duration via its levels: {ctx}"
                    );
                    let status_only = LogFilter {
                        status_min: None,
                        status_max: None,
                        ..filter.clone()
                    } == LogFilter::default();
                    if status_only {
                        // The levels carry the status code: no row is read to test it.
                        assert!(
                            !steps.iter().any(|s| s.starts_with("SEARCH r ")),
                            "no join: {ctx}"
                        );
                    }
                } else if filter.status_min.is_some()
                    && sort.key == SortKey::CreatedAt
                    && equality_index(filter).is_none()
                {
                    assert!(
                        steps
                            .iter()
                            .filter(by_org)
                            .all(|s| s.contains("request_logs_by_status_created")),
                        "status runs: {ctx}"
                    );
                } else {
                    let own = match (equality_index(filter), sort.key) {
                        (Some(index), SortKey::CreatedAt) => index,
                        (_, SortKey::CreatedAt) => "request_logs_by_created",
                        (_, SortKey::StatusCode) => "request_logs_by_status",
                        (_, SortKey::DurationMs) => unreachable!(),
                    };
                    let on_table: Vec<&String> = steps.iter().filter(by_org).collect();
                    assert_eq!(on_table.len(), 1, "{ctx}");
                    assert!(on_table[0].contains(own), "expected {own}: {ctx}");
                    assert!(
                        !steps.iter().any(|s| s.contains("TEMP B-TREE")),
                        "the index yields the order: {ctx}"
                    );
                    if matches!(start, PageStart::After(_)) && *filter == LogFilter::default() {
                        let (column, cmp) = (
                            sort.key.as_str(),
                            if sort.dir == SortDir::Asc { ">" } else { "<" },
                        );
                        assert!(
                            on_table[0].contains(&format!("({column},id){cmp}(?,?)")),
                            "a keyset page is a range of the index: {ctx}"
                        );
                    }
                }
            }
        }
    }
    // A key, service account or email the org has never logged: no statement at all.
    for filter in [
        LogFilter {
            api_key_id: text("never"),
            ..LogFilter::default()
        },
        LogFilter {
            service_account_id: text("never"),
            ..LogFilter::default()
        },
        LogFilter {
            email: text("never@example.com"),
            ..LogFilter::default()
        },
    ] {
        let page = apitrail_model::PageRequest::first(50);
        let steps = store
            .explain_list(&a, &filter, Sort::NEWEST_FIRST, page)
            .await
            .unwrap();
        assert!(steps.is_empty(), "{filter:?}: {steps:?}");
    }
    store.shutdown().await.unwrap();
}

/// A time window holding many rows is walked in the order of the sort key (the status index,
/// the duration levels) rather than read whole and sorted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_time_windows_walk_the_sort_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    let a = new_org(&store, "windows").await;
    let n = usize::try_from(apitrail_store_sqlite::SMALL_WINDOW_ROWS).unwrap() + 100;
    insert_all_new(&store, &a, &LogGen::new(2, "w").logs(n), 1000).await;
    let filter = LogFilter {
        from: Some(apitrail_model::Timestamp::from_millis(0).unwrap()),
        ..LogFilter::default()
    };
    let page = apitrail_model::PageRequest {
        limit: 50,
        start: PageStart::First,
    };
    for dir_ in [SortDir::Asc, SortDir::Desc] {
        let status = Sort {
            key: SortKey::StatusCode,
            dir: dir_,
        };
        let steps = store.explain_list(&a, &filter, status, page).await.unwrap();
        assert!(
            steps.iter().any(|s| s.contains("request_logs_by_status ")),
            "{steps:#?}"
        );
        assert!(
            !steps.iter().any(|s| s.contains("TEMP B-TREE")),
            "{steps:#?}"
        );
        let duration = Sort {
            key: SortKey::DurationMs,
            dir: dir_,
        };
        let steps = store
            .explain_list(&a, &filter, duration, page)
            .await
            .unwrap();
        assert!(
            steps.iter().any(|s| s.contains("request_logs_duration_l0")),
            "{steps:#?}"
        );
    }
    store.shutdown().await.unwrap();
}

/// A database from before the audit chain (schema version 2) gets its existing audit entries
/// chained per org in insertion order on upgrade, so they verify; an entry edited in the file
/// afterwards (its content, or its hash replaced by a value of another type) is found by
/// `verify` at exactly that entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_audit_log_is_chained_and_edits_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(apitrail_store_sqlite::DB_FILE);
    let mut ids = std::collections::HashMap::<&str, Vec<uuid::Uuid>>::new();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(include_str!("../../migrations/0001_init.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../../migrations/0002_principal_indexes.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO orgs (seq, id, name, created_at) VALUES (1, 'old-a', 'A', 0), (2, 'old-b', 'B', 0);",
        )
        .unwrap();
        for i in 0..30_i64 {
            let org = if i % 3 == 0 { "old-b" } else { "old-a" };
            let id = new_record_id();
            conn.execute(
                "INSERT INTO audit_entries (org, id, created_at, user_id, action, resource_type, \
                 resource_id, details) VALUES (?1, ?2, ?3, 'u', 'create', 'api_key', ?4, '{}')",
                rusqlite::params![
                    if org == "old-a" { 1 } else { 2 },
                    id.as_bytes(),
                    // Out of time order: the chain follows insertion, not created_at.
                    1000 - i,
                    format!("key{i}")
                ],
            )
            .unwrap();
            ids.entry(org).or_default().push(id);
        }
    }
    let store = open(dir.path(), SqliteOptions::default());
    for (org, n) in [("old-a", 20), ("old-b", 10)] {
        let tenant = store
            .tenant(&apitrail_store_tests::support::org_id(org))
            .await
            .unwrap()
            .unwrap();
        let report = store.verify_audit_chain(&tenant).await.unwrap();
        assert!(report.ok, "{org}: {report:?}");
        assert_eq!(report.entries_checked, n, "{org}");
        let chained: Vec<uuid::Uuid> = store
            .audit_chain(&tenant, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.entry.id)
            .collect();
        assert_eq!(chained, ids[org], "{org}: chained in insertion order");
    }
    store.shutdown().await.unwrap();
    drop(store);

    // An attacker with the file rewrites one entry's details.
    let victim = ids["old-a"][7];
    let conn = rusqlite::Connection::open(&path).unwrap();
    let changed = conn
        .execute(
            "UPDATE audit_entries SET details = '{\"forged\":1}' WHERE id = ?1",
            [victim.as_bytes()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    // And, in the other org, replaces a stored hash with a value of another type.
    let retyped = ids["old-b"][4];
    conn.execute(
        "UPDATE audit_entries SET hash = 'forged' WHERE id = ?1",
        [retyped.as_bytes()],
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path(), SqliteOptions::default());
    let a = store
        .tenant(&apitrail_store_tests::support::org_id("old-a"))
        .await
        .unwrap()
        .unwrap();
    let report = store.verify_audit_chain(&a).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_id, Some(victim));
    assert_eq!(report.entries_checked, 8);
    let b = store
        .tenant(&apitrail_store_tests::support::org_id("old-b"))
        .await
        .unwrap()
        .unwrap();
    let report = store.verify_audit_chain(&b).await.unwrap();
    assert!(
        !report.ok,
        "a hash of the wrong type is a broken link, not an error"
    );
    assert_eq!(report.first_bad_id, Some(retyped));
    store.shutdown().await.unwrap();
}

/// A database from before `request_log_values` (schema version 4) gets the values of its
/// stored logs on upgrade, so filters on an unindexed service account or email still find
/// them (the list answers a value missing from that table as empty without reading logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_notes_the_values_of_stored_logs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    let tenant = new_org(&store, "values-upgrade").await;
    let logs: Vec<RequestLog> = LogGen::new(5, "u")
        .logs(30)
        .into_iter()
        .enumerate()
        .map(|(i, l)| RequestLog {
            service_account_id: Some(format!("sa_{}", i % 3)),
            email: Some(format!("u{}@example.com", i % 2)),
            ..l
        })
        .collect();
    insert_all_new(&store, &tenant, &logs, 30).await;
    store.shutdown().await.unwrap();
    drop(store);
    // As version 4 left it: no values table (nor what later versions added).
    let conn = rusqlite::Connection::open(dir.path().join(apitrail_store_sqlite::DB_FILE)).unwrap();
    conn.execute_batch(
        "DROP TABLE request_log_values; ALTER TABLE destinations DROP COLUMN allow_private; \
         DROP INDEX audit_entries_by_request_id; DROP INDEX action_records_by_request_id; \
         DROP INDEX request_logs_by_tail; ALTER TABLE request_logs DROP COLUMN tail_pos; \
         DROP TABLE tail_counters; DROP TABLE request_log_rollups; DROP TABLE viewer_tokens; \
         PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path(), SqliteOptions::default());
    for filter in [
        LogFilter {
            service_account_id: Some("sa_1".into()),
            ..LogFilter::default()
        },
        LogFilter {
            email: Some("u0@example.com".into()),
            ..LogFilter::default()
        },
    ] {
        let listed = walk(&store, &tenant, &filter, Sort::NEWEST_FIRST, 4).await;
        assert_same_logs(
            &listed.items,
            &reference(&logs, &filter, Sort::NEWEST_FIRST),
            &format!("{filter:?} after the upgrade"),
        );
        assert!(!listed.items.is_empty(), "{filter:?}");
    }
    store.shutdown().await.unwrap();
}

/// A database from before the stats rollups (schema version 8) gets the rollups of its
/// stored logs on upgrade, so stats over old records answer as over new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_fills_the_stats_rollups_of_stored_logs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    let tenant = new_org(&store, "rollups-upgrade").await;
    let mut g = LogGen::new(0xF11, "u");
    g.span_ms = 3 * 86_400_000;
    let logs = g.logs(2_000);
    insert_all_new(&store, &tenant, &logs, 300).await;
    store.shutdown().await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join(apitrail_store_sqlite::DB_FILE)).unwrap();
    conn.execute_batch(
        "DROP TABLE request_log_rollups; DROP TABLE viewer_tokens; PRAGMA user_version = 8;",
    )
    .unwrap();
    drop(conn);
    let store = open(dir.path(), SqliteOptions::default());
    apitrail_store_tests::assert_stats_agree(&store, &tenant, &logs, "after the upgrade").await;
    store.shutdown().await.unwrap();
}

/// A database from before destinations recorded their SSRF decision (schema version 5): its
/// destinations read back with none (`allow_private: None`, the delivering server's flag
/// decides), and a change records one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_destinations_have_no_recorded_decision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(apitrail_store_sqlite::DB_FILE);
    let old =
        apitrail_store_tests::support::old_destination(new_record_id(), "http://127.0.0.1:9/old");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in [
            include_str!("../../migrations/0001_init.sql"),
            include_str!("../../migrations/0002_principal_indexes.sql"),
            include_str!("../../migrations/0003_audit_chain.sql"),
            include_str!("../../migrations/0004_actions.sql"),
            include_str!("../../migrations/0005_request_log_values.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 5).unwrap();
        conn.execute(
            "INSERT INTO orgs (seq, id, name, created_at) VALUES (1, 'old-dest', 'Old', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO destinations (org, id, label, url, headers, signaling, \
             response_time_sla_ms, credential_id, tags, created_at, updated_at, deleted_at) \
             VALUES (1, ?1, 'old hook', ?2, '{}', 0, 5000, NULL, '{}', 1000, 1000, NULL)",
            rusqlite::params![old.id.as_bytes(), old.config.url],
        )
        .unwrap();
    }
    let store = open(dir.path(), SqliteOptions::default());
    let tenant = store
        .tenant(&apitrail_store_tests::support::org_id("old-dest"))
        .await
        .unwrap()
        .unwrap();
    apitrail_store_tests::support::assert_upgraded_destination(&store, &tenant, &old).await;
    store.shutdown().await.unwrap();
}

/// A stored value that cannot be decoded, written behind the store's back, gets the answer
/// every backend gives (`apitrail_store::stored`): an optional field reads as unknown, a
/// required one fails the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_values_get_the_common_answer() {
    use apitrail_store_tests::support::{
        UNDECODABLE_IP, UNDECODABLE_MS, UNDECODABLE_STATUS, assert_undecodable_values,
        undecodable_logs,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    let optional = new_org(&store, "undecodable-optional").await;
    let required = new_org(&store, "undecodable-required").await;
    let logs = undecodable_logs();
    insert(&store, &optional, &logs[..3]).await;
    insert(&store, &required, &logs[3..]).await;
    let side = rusqlite::Connection::open(store.path()).unwrap();
    let damage = |sql: &str, value: &dyn rusqlite::ToSql, log: &RequestLog| {
        let changed = side
            .execute(sql, rusqlite::params![value, log.id.as_bytes()])
            .unwrap();
        assert_eq!(changed, 1, "{sql}");
    };
    damage(
        "UPDATE request_logs SET client_ip = ?1 WHERE id = ?2",
        &UNDECODABLE_IP,
        &logs[0],
    );
    damage(
        "UPDATE request_logs SET started_at = ?1, completed_at = ?1 WHERE id = ?2",
        &UNDECODABLE_MS,
        &logs[1],
    );
    damage(
        "UPDATE request_logs SET status_code = ?1 WHERE id = ?2",
        &UNDECODABLE_STATUS,
        &logs[3],
    );
    assert_undecodable_values(&store, &optional, &required, &logs).await;
    store.shutdown().await.unwrap();
}

/// Store calls are traced at debug level, with the org and without secrets.
#[tokio::test]
async fn calls_are_traced() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    apitrail_store_tests::support::assert_calls_are_traced(&store).await;
    store.shutdown().await.unwrap();
}

/// The request timeline's lookups by request id read each spelling of the id from its
/// `(org, request_id, created_at, id)` index in order and stop at the limit: no table scan,
/// and no sort of every match. (SQLite sorts each limited run, at most limit + 1 rows, again
/// for the `MERGE (UNION ALL)`: the `TEMP B-TREE` steps after `SCAN (subquery-N)`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_lookups_read_the_request_id_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), SqliteOptions::default());
    let a = new_org(&store, "timeline-plan").await;
    let steps = store.explain_timeline(&a, "req_plan").await.unwrap();
    let text = steps.join("\n");
    for index in [
        "audit_entries_by_request_id",
        "action_records_by_request_id",
    ] {
        assert_eq!(
            steps.iter().filter(|s| s.contains(index)).count(),
            2,
            "each spelling reads {index}:\n{text}"
        );
    }
    assert!(
        !steps.iter().any(|s| s.starts_with("SCAN r")),
        "no table scan:\n{text}"
    );
    for (i, step) in steps.iter().enumerate() {
        if step.starts_with("SEARCH r") {
            assert!(
                steps
                    .get(i + 1)
                    .is_some_and(|next| next.starts_with("SCAN (subquery")),
                "each run is read in index order and limited there, not sorted:\n{text}"
            );
        }
    }
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.starts_with("MERGE (UNION ALL)"))
            .count(),
        2,
        "the two runs are merged:\n{text}"
    );
    store.shutdown().await.unwrap();
}

//! Behaviour specific to the PostgreSQL backend: several servers starting together on one
//! empty database migrate it once; a database from a newer apitrail is refused; writes keep
//! working on a database whose default isolation is stricter than READ COMMITTED; the
//! dispatcher's lease walks the due index in order.

#![allow(clippy::unwrap_used)]

use apitrail_pgtest::PgServer;
use apitrail_store::{Store, StoreError};
use apitrail_store_postgres::{PgOptions, PgStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_migrate_once() {
    let url = PgServer::shared().fresh_database().await;
    let starting: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, PgOptions::default()).await })
        })
        .collect();
    for start in starting {
        start.await.unwrap().unwrap().ping().await.unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("SELECT version FROM apitrail_schema", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one bookkeeping row");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(
        rows[0].get::<_, i32>(0) as usize,
        migrations,
        "every migration applied"
    );

    // A version this build does not know is refused with a clear message.
    client
        .execute("UPDATE apitrail_schema SET version = 99", &[])
        .await
        .unwrap();
    match PgStore::connect(&url, PgOptions::default()).await {
        Err(StoreError::Backend(e)) => assert!(e.to_string().contains("newer"), "{e}"),
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

/// The audit append locks the org's head and must then see what the previous holder
/// committed, which a stricter default isolation would turn into serialization failures:
/// writes run at READ COMMITTED whatever the database's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_do_not_depend_on_the_default_isolation() {
    use apitrail_store_tests::support::{at, audit_entry, new_org};
    let url = PgServer::shared().fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = url.rsplit('/').next().unwrap().to_owned();
    client
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" SET default_transaction_isolation = 'repeatable read'"
        ))
        .await
        .unwrap();
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let tenant = new_org(&store, "strict").await;
    let writes = (0..8).map(|i| {
        let (store, tenant) = (&store, tenant.clone());
        async move {
            let entries = (0..20)
                .map(|j| audit_entry("update", "destination", &format!("d{i}_{j}"), at(j)))
                .collect();
            store
                .insert_audit_entries(vec![apitrail_store::AuditBatch { tenant, entries }])
                .await
        }
    });
    for outcome in apitrail_store_tests::support::join_all(writes).await {
        assert_eq!(outcome.unwrap().accepted, 20);
    }
    let report = store.verify_audit_chain(&tenant).await.unwrap();
    assert!(report.ok && report.entries_checked == 161, "{report:?}");
}

/// The lease takes the first due rows by walking `action_records_due` in `available_at` order
/// (and stops there), never a bitmap scan of every due row plus a sort, which the planner
/// chose from its estimates without the dispatcher connections' settings: ~21 ms per lease
/// with 17,000 records due, and between vacuums a heap visit per dead row version still
/// indexed (BENCHMARKS.md, Actions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_walks_the_due_index_in_order() {
    use apitrail_model::new_record_id;
    use apitrail_store_tests::support::{at, create_record, new_org, pending};
    let url = PgServer::shared().fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let tenant = new_org(&store, "lease-plan").await;
    for i in 0..2_000 {
        let record = pending(new_record_id(), "notify", at(i), at(i));
        create_record(&store, &tenant, &record).await;
    }
    let plan = store.explain_lease(at(10_000), 256).await.unwrap();
    assert!(
        plan.contains("Index Scan using action_records_due"),
        "the lease walks the due index:\n{plan}"
    );
    assert!(
        !plan.contains("Bitmap") && !plan.contains("Sort"),
        "the lease neither reads every due row nor sorts them:\n{plan}"
    );
    store.shutdown().await.unwrap();
}

/// A database from before destinations recorded their SSRF decision (schema version 6): its
/// destinations read back with none (`allow_private: None`, the delivering server's flag
/// decides), and a change records one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_destinations_have_no_recorded_decision() {
    use apitrail_store_tests::support::{assert_upgraded_destination, old_destination, org_id};
    let url = PgServer::shared().fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for sql in [
        include_str!("../../migrations/0001_init.sql"),
        include_str!("../../migrations/0002_status_created.sql"),
        include_str!("../../migrations/0003_partitions.sql"),
        include_str!("../../migrations/0004_actions.sql"),
        include_str!("../../migrations/0005_request_log_values.sql"),
        include_str!("../../migrations/0006_error_durations.sql"),
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let old = old_destination(uuid::Uuid::now_v7(), "http://127.0.0.1:9/old");
    client
        .batch_execute(
            "CREATE TABLE apitrail_schema (version integer NOT NULL); \
             INSERT INTO apitrail_schema VALUES (6); \
             INSERT INTO orgs (id, name, created_at) VALUES ('old-dest', 'Old', 0);",
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO destinations (org, id, label, url, headers, signaling, \
             response_time_sla_ms, credential_id, tags, created_at, updated_at, deleted_at) \
             SELECT seq, $1, 'old hook', $2, '{}', false, 5000, NULL, '{}', 1000, 1000, NULL \
               FROM orgs WHERE id = 'old-dest'",
            &[&old.id, &old.config.url],
        )
        .await
        .unwrap();
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let tenant = store.tenant(&org_id("old-dest")).await.unwrap().unwrap();
    assert_upgraded_destination(&store, &tenant, &old).await;
}

/// A database from before the stats rollups (schema version 10) gets the rollups of its
/// stored logs on upgrade, so stats over old records answer as over new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_fills_the_stats_rollups_of_stored_logs() {
    use apitrail_store_tests::support::{LogGen, insert_all_new, new_org};
    let url = PgServer::shared().fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let tenant = new_org(&store, "rollups-upgrade").await;
    let mut g = LogGen::new(0xF11, "u");
    g.span_ms = 3 * 86_400_000;
    let logs = g.logs(2_000);
    insert_all_new(&store, &tenant, &logs, 300).await;
    store.shutdown().await.unwrap();
    drop(store);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE request_log_rollups; DROP TABLE viewer_tokens; \
             UPDATE apitrail_schema SET version = 10;",
        )
        .await
        .unwrap();
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    apitrail_store_tests::assert_stats_agree(&store, &tenant, &logs, "after the upgrade").await;
    store.shutdown().await.unwrap();
}

/// A stored value that cannot be decoded, written behind the store's back, gets the answer
/// every backend gives (`apitrail_store::stored`): an optional field reads as unknown, a
/// required one fails the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_values_get_the_common_answer() {
    use apitrail_store_tests::support::{
        UNDECODABLE_IP, UNDECODABLE_MS, UNDECODABLE_STATUS, assert_undecodable_values, insert,
        new_org, undecodable_logs,
    };
    let url = PgServer::shared().fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let optional = new_org(&store, "undecodable-optional").await;
    let required = new_org(&store, "undecodable-required").await;
    let logs = undecodable_logs();
    insert(&store, &optional, &logs[..3]).await;
    insert(&store, &required, &logs[3..]).await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for (sql, value, log) in [
        (
            "UPDATE request_logs SET client_ip = $1 WHERE id = $2",
            &UNDECODABLE_IP as &(dyn tokio_postgres::types::ToSql + Sync),
            &logs[0],
        ),
        (
            "UPDATE request_logs SET started_at = $1, completed_at = $1 WHERE id = $2",
            &UNDECODABLE_MS,
            &logs[1],
        ),
        (
            "UPDATE request_logs SET status_code = $1 WHERE id = $2",
            &UNDECODABLE_STATUS,
            &logs[3],
        ),
    ] {
        let changed = client.execute(sql, &[value, &log.id]).await.unwrap();
        assert_eq!(changed, 1, "{sql}");
    }
    assert_undecodable_values(&store, &optional, &required, &logs).await;
    store.shutdown().await.unwrap();
}

/// Store calls are traced at debug level, with the org and without secrets.
#[tokio::test]
async fn calls_are_traced() {
    let url = PgServer::shared().fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    apitrail_store_tests::support::assert_calls_are_traced(&store).await;
    store.shutdown().await.unwrap();
}

/// The request timeline's lookups by request id read each spelling of the id from its
/// `(org, request_id, created_at, id)` index in order and stop at the limit: no scan of the
/// org's rows and no sort, a `Merge Append` of the two limited index scans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_lookups_read_the_request_id_indexes() {
    use apitrail_store_tests::support::{at, audit_entry, new_org};
    let url = PgServer::shared().fresh_database().await;
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let tenant = new_org(&store, "timeline-plan").await;
    let entries = (0..2_000)
        .map(|i| audit_entry("update", "destination", &format!("d{i}"), at(i)))
        .collect();
    store
        .insert_audit_entries(vec![apitrail_store::AuditBatch {
            tenant: tenant.clone(),
            entries,
        }])
        .await
        .unwrap();
    let plan = store.explain_timeline(&tenant, "req_plan").await.unwrap();
    for index in [
        "audit_entries_by_request_id",
        "action_records_by_request_id",
    ] {
        assert_eq!(
            plan.matches(&format!("Index Scan using {index}")).count(),
            2,
            "each spelling reads {index} in order:\n{plan}"
        );
    }
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Bitmap"),
        "no scan of the org's rows:\n{plan}"
    );
    assert_eq!(
        plan.matches("Merge Append").count(),
        2,
        "the two ordered runs are merged:\n{plan}"
    );
    assert!(
        !plan
            .lines()
            .any(|l| l.trim_start().trim_start_matches("->").trim_start() == "Sort"),
        "nothing is sorted:\n{plan}"
    );
    store.shutdown().await.unwrap();
}

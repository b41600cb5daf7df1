//! Time partitions of request logs on a real PostgreSQL server: a version-2 database is
//! migrated with its logs moved into day partitions; servers racing to make the same day
//! all write; retention drops whole days (gone from the catalog) and keeps newer logs
//! intact; list statements read indexes across partitions, and only the partitions a time
//! window reaches; days older than the window of day partitions share coarse partitions, so
//! scattered dates cannot multiply partitions.

#![allow(clippy::unwrap_used)]

use apitrail_model::{
    LogFilter, OrgId, PageRequest, PageStart, RequestLog, Sort, SortDir, SortKey,
};
use apitrail_pgtest::PgServer;
use apitrail_store::{InsertOutcome, LogBatch, Store};
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_tests::support::{
    ALL_SORTS, LogGen, assert_same_logs, at, insert, join_all, new_org, reference, ts, walk,
};
use tokio_postgres::{Client, NoTls};

const DAY: i64 = 86_400_000;

/// Options whose window of day partitions reaches back to 1926: the tests of day partitions
/// use fixed dates in the past.
fn every_day_its_own() -> PgOptions {
    PgOptions {
        partition_window_days: 36_500,
        ..PgOptions::default()
    }
}

async fn sql(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The day partitions of `request_logs`, by table name.
async fn partitions(c: &Client) -> Vec<String> {
    c.query(
        "SELECT inhrelid::regclass::text FROM pg_inherits \
          WHERE inhparent = 'request_logs'::regclass ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The name of the partition holding `ms`.
fn partition_of(ms: i64) -> String {
    let date = &ts(ms).to_rfc3339()[..10];
    format!("request_logs_{}", date.replace('-', ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_moves_existing_logs_into_day_partitions() {
    let url = PgServer::shared().fresh_database().await;
    let c = sql(&url).await;
    // A database as version 2 left it, with three days of logs.
    c.batch_execute(include_str!("../../migrations/0001_init.sql"))
        .await
        .unwrap();
    c.batch_execute(include_str!("../../migrations/0002_status_created.sql"))
        .await
        .unwrap();
    c.batch_execute(
        "CREATE TABLE apitrail_schema (version integer NOT NULL); \
         INSERT INTO apitrail_schema VALUES (2); \
         INSERT INTO orgs (id, name, created_at) VALUES ('old', 'Old', 0); \
         INSERT INTO request_logs (org, id, created_at, duration_ms, status_code, method, path) \
         SELECT 1, gen_random_uuid(), 1714521600000 + i * 3600000, i, 200 + i % 3, 'GET', '/p' || i \
           FROM generate_series(0, 71) i",
    )
    .await
    .unwrap();

    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let kind: i8 = c
        .query_one(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = 'request_logs'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind as u8, b'p', "request_logs is now partitioned");
    let parts = partitions(&c).await;
    for day in [
        "request_logs_20240501",
        "request_logs_20240502",
        "request_logs_20240503",
    ] {
        assert!(parts.iter().any(|p| p == day), "{day} in {parts:?}");
    }
    let tenant = store
        .tenant(&OrgId::parse("old").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.count_request_logs(&tenant).await.unwrap(), 72);
    let claims: i64 = c
        .query_one("SELECT count(*) FROM request_log_ids", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims, 72, "every moved id is claimed");
    // A moved id stays idempotent, also when re-sent for another day.
    let page = store
        .list_request_logs(
            &tenant,
            &LogFilter::default(),
            Sort::NEWEST_FIRST,
            PageRequest::first(72),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 72);
    let mut again = page.items[5].clone();
    again.created_at = at(40 * DAY);
    assert_eq!(
        insert(&store, &tenant, &[again]).await,
        InsertOutcome {
            accepted: 0,
            duplicates: 1
        }
    );
    assert_eq!(
        store
            .get_request_log(&tenant, page.items[5].id)
            .await
            .unwrap(),
        Some(page.items[5].clone())
    );
    // The codes of the old rows are known (migration 0005): a status range in created_at
    // order, served as runs per code, finds them.
    let ranged = store
        .list_request_logs(
            &tenant,
            &LogFilter {
                status_min: Some(201),
                status_max: Some(202),
                ..LogFilter::default()
            },
            Sort::NEWEST_FIRST,
            PageRequest::first(100),
        )
        .await
        .unwrap();
    assert_eq!(
        ranged.items.len(),
        48,
        "the 201s and 202s of the 72 moved rows"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_racing_to_make_a_day_all_write() {
    let url = PgServer::shared().fresh_database().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(PgStore::connect(&url, every_day_its_own()).await.unwrap());
    }
    let tenant = new_org(&stores[0], "race").await;
    // 1999-01-01 and the two days after: no partition exists for them yet.
    let first_day = 915_148_800_000;
    let mut expected = Vec::new();
    for round in 0..3 {
        let mut calls = Vec::new();
        for (i, store) in stores.iter().enumerate() {
            let mut logs = LogGen::new(100 + round * 10 + i as u64, "race").logs(50);
            for (j, l) in logs.iter_mut().enumerate() {
                l.created_at = ts(first_day + round as i64 * DAY + j as i64 * 60_000);
            }
            expected.extend(logs.clone());
            calls.push(store.insert_request_logs(vec![LogBatch::new(tenant.clone(), logs)]));
        }
        for outcome in join_all(calls).await {
            assert_eq!(outcome.unwrap().accepted, 50);
        }
    }
    // Sessions calling the partition function for one day at once all succeed.
    let day = first_day / DAY + 10;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(sql(&url).await);
    }
    let made = clients.iter().map(|c| async move {
        c.execute("SELECT apitrail_request_log_partition($1)", &[&day])
            .await
    });
    for m in join_all(made).await {
        m.unwrap();
    }
    let parts = partitions(&clients[0]).await;
    for name in [
        "request_logs_19990101",
        "request_logs_19990102",
        "request_logs_19990103",
        "request_logs_19990111",
    ] {
        assert_eq!(parts.iter().filter(|p| *p == name).count(), 1, "{parts:?}");
    }
    let listed = walk(
        &stores[3],
        &tenant,
        &LogFilter::default(),
        Sort::NEWEST_FIRST,
        100,
    )
    .await;
    assert_same_logs(
        &listed.items,
        &reference(&expected, &LogFilter::default(), Sort::NEWEST_FIRST),
        &"every racing write stored once",
    );
    for store in &stores {
        store.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_days_and_keeps_newer_logs() {
    let url = PgServer::shared().fresh_database().await;
    let c = sql(&url).await;
    let store = PgStore::connect(&url, every_day_its_own()).await.unwrap();
    let a = new_org(&store, "keep-a").await;
    let b = new_org(&store, "keep-b").await;
    // Eight days from 2024-04-27, a log every 40 minutes in each org; half of org a's sent
    // without ids (minted), the rest with client ids.
    let start = at(-4 * DAY - 12 * 3_600_000).millis();
    let mut all_a: Vec<RequestLog> = LogGen::new(7, "a").logs(288);
    let mut all_b: Vec<RequestLog> = LogGen::new(8, "b").logs(288);
    for (i, l) in all_a.iter_mut().chain(all_b.iter_mut()).enumerate() {
        l.created_at = ts(start + (i % 288) as i64 * 40 * 60_000);
    }
    let (minted, client) = all_a.split_at(144);
    store
        .insert_request_logs(vec![
            LogBatch::minted(a.clone(), minted.to_vec()),
            LogBatch::new(a.clone(), client.to_vec()),
            LogBatch::new(b.clone(), all_b.clone()),
        ])
        .await
        .unwrap();
    // The cutoff is 06:00 on the sixth day: five whole days expire.
    let cutoff = ts(start + 5 * DAY + 6 * 3_600_000);
    let old_days: Vec<String> = (0..5).map(|d| partition_of(start + d * DAY)).collect();
    let kept_days: Vec<String> = (5..8).map(|d| partition_of(start + d * DAY)).collect();
    let before = partitions(&c).await;
    for day in old_days.iter().chain(&kept_days) {
        assert!(before.contains(day), "{day} in {before:?}");
    }

    let expired = store.expire_request_logs(cutoff, 1_000).await.unwrap();
    assert_eq!(expired.partitions, 5, "{expired:?}");
    let boundary = |logs: &[RequestLog]| {
        logs.iter()
            .filter(|l| l.created_at < cutoff && l.created_at.millis() >= start + 5 * DAY)
            .count() as u64
    };
    assert_eq!(expired.records, boundary(&all_a) + boundary(&all_b));

    let after = partitions(&c).await;
    for day in &old_days {
        assert!(!after.contains(day), "{day} is still attached: {after:?}");
        let table: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[day])
            .await
            .unwrap()
            .get(0);
        assert_eq!(table, None, "{day} was dropped, not detached");
    }
    for day in &kept_days {
        assert!(after.contains(day), "{day} was kept: {after:?}");
    }
    let stale_claims: i64 = c
        .query_one(
            "SELECT count(*) FROM request_log_ids WHERE created_at < $1",
            &[&cutoff.millis()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stale_claims, 0, "claims go with their records");
    let dropped_counts: i64 = c
        .query_one(
            "SELECT count(*) FROM request_log_counts WHERE day < $1",
            &[&((start + 5 * DAY).div_euclid(DAY))],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dropped_counts, 0, "the dropped days' counts go with them");
    let claims: i64 = c
        .query_one("SELECT count(*) FROM request_log_ids", &[])
        .await
        .unwrap()
        .get(0);
    let kept_claims = client
        .iter()
        .chain(&all_b)
        .filter(|l| l.created_at >= cutoff)
        .count();
    assert_eq!(
        claims as usize, kept_claims,
        "claims of kept client ids stay"
    );

    for (tenant, all, name) in [(&a, &all_a, "a"), (&b, &all_b, "b")] {
        let kept: Vec<RequestLog> = all
            .iter()
            .filter(|l| l.created_at >= cutoff)
            .cloned()
            .collect();
        assert_eq!(
            store.count_request_logs(tenant).await.unwrap(),
            kept.len() as u64
        );
        for sort in ALL_SORTS {
            for filter in [
                LogFilter::default(),
                LogFilter {
                    method: Some("GET".into()),
                    ..LogFilter::default()
                },
                LogFilter {
                    status_min: Some(400),
                    ..LogFilter::default()
                },
            ] {
                let listed = walk(&store, tenant, &filter, sort, 13).await;
                assert_same_logs(
                    &listed.items,
                    &reference(&kept, &filter, sort),
                    &format!("org {name}, {filter:?}, {sort:?} after retention"),
                );
            }
        }
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_plans_read_indexes_across_partitions() {
    let url = PgServer::shared().fresh_database().await;
    let c = sql(&url).await;
    let store = PgStore::connect(&url, every_day_its_own()).await.unwrap();
    let tenant = new_org(&store, "plans").await;
    let other = new_org(&store, "other").await;
    // Six days of 5,000 logs for each of two orgs, so that the planner sees real tables.
    for (org, seed) in [(&tenant, 1), (&other, 2)] {
        let mut generator = LogGen::new(seed, "p");
        for day in 0..6 {
            let mut logs = generator.logs(5_000);
            for (i, l) in logs.iter_mut().enumerate() {
                l.created_at = at(day * DAY + i as i64 * 17_000);
            }
            store
                .insert_request_logs(vec![LogBatch::minted(org.clone(), logs)])
                .await
                .unwrap();
        }
    }
    c.batch_execute("ANALYZE request_logs").await.unwrap();
    // The days' copies of the partial index of errors (migration 0006), by name.
    let error_indexes: Vec<String> = c
        .query(
            "SELECT indexname FROM pg_indexes \
             WHERE tablename LIKE 'request_logs_%' AND indexdef LIKE '%WHERE (status_code >= 400)'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(error_indexes.len() >= 6, "{error_indexes:?}");
    let middle = at(3 * DAY);
    let filters = [
        ("none", LogFilter::default()),
        (
            "method",
            LogFilter {
                method: Some("DELETE".into()),
                ..LogFilter::default()
            },
        ),
        (
            "status range",
            LogFilter {
                status_min: Some(400),
                status_max: Some(499),
                ..LogFilter::default()
            },
        ),
        (
            "window",
            LogFilter {
                from: Some(at(2 * DAY)),
                to: Some(at(2 * DAY + 3_600_000)),
                ..LogFilter::default()
            },
        ),
        (
            "route",
            LogFilter {
                route_pattern: Some("/v1/orders/{id}/items".into()),
                ..LogFilter::default()
            },
        ),
        (
            "auth type",
            LogFilter {
                auth_type: Some("jwt".into()),
                ..LogFilter::default()
            },
        ),
        (
            "user",
            LogFilter {
                user_id: Some("user_only_p".into()),
                ..LogFilter::default()
            },
        ),
        (
            "api key",
            LogFilter {
                api_key_id: Some("key_x".into()),
                ..LogFilter::default()
            },
        ),
        (
            "request id",
            LogFilter {
                request_id: Some("req_x".into()),
                ..LogFilter::default()
            },
        ),
    ];
    for (name, filter) in &filters {
        for sort in ALL_SORTS {
            let key = match sort.key {
                SortKey::CreatedAt => middle.millis(),
                SortKey::DurationMs => 15,
                SortKey::StatusCode => 404,
            };
            for start in [
                PageStart::First,
                PageStart::After(apitrail_model::Position {
                    key,
                    id: uuid::Uuid::nil(),
                }),
            ] {
                let plan = store
                    .explain_list(&tenant, filter, sort, PageRequest { limit: 50, start })
                    .await
                    .unwrap();
                let ctx = format!("{name}, {sort:?}, {start:?}:\n{plan}");
                // Empty partitions (the days made ahead) may be scanned: they cost nothing.
                assert!(
                    !plan
                        .lines()
                        .any(|l| l.contains("Seq Scan") && l.contains("request_logs_2024")),
                    "{ctx}"
                );
                if sort.key == SortKey::CreatedAt && *name == "none" {
                    // Partitions read in created_at order, newest (or oldest) first: no
                    // merge and no sort.
                    assert!(plan.contains("Append"), "{ctx}");
                    assert!(!plan.contains("Merge Append"), "{ctx}");
                    assert!(!plan.contains("Sort"), "{ctx}");
                }
                if *name == "status range" && sort == Sort::NEWEST_FIRST {
                    // The codes come from the org's values, not from a scan of every day.
                    assert!(plan.contains("request_log_values_pkey"), "{ctx}");
                    assert!(!plan.contains("Recursive Union"), "{ctx}");
                }
                if *name == "status range" && sort.key == SortKey::DurationMs {
                    // Errors in duration order: the days' partial indexes merged, not every
                    // row of the range read and sorted.
                    let sorts = plan
                        .lines()
                        .any(|l| l.trim().trim_start_matches("->").trim() == "Sort");
                    assert!(plan.contains("Merge Append") && !sorts, "{ctx}");
                    assert!(!plan.contains("Bitmap"), "{ctx}");
                    // The partial index of errors (migration 0006); the statement states the
                    // range as literals, so the plan it runs is the one explained here.
                    assert!(
                        error_indexes.iter().any(|i| plan.contains(i.as_str())),
                        "{ctx}"
                    );
                }
                if *name == "api key" {
                    // The org's values are checked once, before any partition is read.
                    assert!(plan.contains("One-Time Filter"), "{ctx}");
                    assert!(plan.contains("request_log_values"), "{ctx}");
                }
                if *name == "window" {
                    // A time window reads the partitions it reaches, and no other.
                    if start == PageStart::First {
                        assert!(plan.contains(&partition_of(at(2 * DAY).millis())), "{ctx}");
                    }
                    for day in [0, 1, 3, 4, 5] {
                        let other = partition_of(at(day * DAY).millis());
                        assert!(!plan.contains(&other), "{other} pruned: {ctx}");
                    }
                }
                if let (SortKey::CreatedAt, PageStart::After(_), "none") = (sort.key, start, *name)
                {
                    // The cursor's bound prunes the partitions it has passed.
                    let passed = match sort.dir {
                        SortDir::Desc => partition_of(at(4 * DAY).millis()),
                        SortDir::Asc => partition_of(at(DAY).millis()),
                    };
                    assert!(!plan.contains(&passed), "{passed} pruned: {ctx}");
                }
            }
        }
    }
    store.shutdown().await.unwrap();
}

/// The names and bounds of the partitions, oldest first.
async fn bounds(c: &Client) -> Vec<(String, i64, i64)> {
    c.query(
        "SELECT name, lo, hi FROM apitrail_request_log_bounds() ORDER BY lo",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_old_days_share_coarse_partitions() {
    let url = PgServer::shared().fresh_database().await;
    let c = sql(&url).await;
    // A store that gave every day its own partition made these three days (as version 6
    // did for any day): 2010-01-01, 2015-01-01 and 2020-01-01.
    let wide = PgStore::connect(&url, every_day_its_own()).await.unwrap();
    let tenant = new_org(&wide, "scatter").await;
    let mut expected = Vec::new();
    let mut generator = LogGen::new(3, "s");
    for day in [14_610, 16_436, 18_262] {
        let mut logs = generator.logs(3);
        for (i, l) in logs.iter_mut().enumerate() {
            l.created_at = ts(day * DAY + i as i64 * 1_000);
        }
        expected.extend(logs.clone());
        insert(&wide, &tenant, &logs).await;
    }
    wide.shutdown().await.unwrap();
    let made_before = bounds(&c).await.len();

    // Now with a week's window: 600 records on 600 different days between 2003 and last
    // month, in one batch, and a record on each of the last three days.
    let store = PgStore::connect(
        &url,
        PgOptions {
            partition_window_days: 7,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let today = apitrail_model::Timestamp::now().millis().div_euclid(DAY);
    let mut old = generator.logs(600);
    for (i, l) in old.iter_mut().enumerate() {
        // Every 13th day back from 31 days ago: 7,800 days, to early 2005.
        l.created_at = ts((today - 31 - i as i64 * 13) * DAY + 3_600_000);
    }
    let mut recent = generator.logs(3);
    for (i, l) in recent.iter_mut().enumerate() {
        l.created_at = ts((today - i as i64) * DAY + 60_000);
    }
    assert_eq!(insert(&store, &tenant, &old).await.accepted, 600);
    assert_eq!(insert(&store, &tenant, &recent).await.accepted, 3);
    expected.extend(old.clone());
    expected.extend(recent.clone());

    let parts = bounds(&c).await;
    let coarse: Vec<&(String, i64, i64)> = parts
        .iter()
        .filter(|(name, _, _)| name.starts_with("request_logs_upto_"))
        .collect();
    // The three old days cut the time below the window into four gaps; each got at most one
    // partition, whatever the number of days sent into it.
    assert!(!coarse.is_empty() && coarse.len() <= 4, "{parts:?}");
    assert!(
        parts.len() <= made_before + 4 + 3,
        "{} partitions: {parts:?}",
        parts.len()
    );
    // Partitions never overlap, and the coarse ones end at the window or at the next one.
    for pair in parts.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "{pair:?}");
    }
    let window = (today - 7) * DAY;
    for (name, _, hi) in &coarse {
        assert!(
            *hi <= window && parts.iter().any(|(_, lo, _)| lo == hi) || *hi == window,
            "{name} ends at {hi}"
        );
    }
    // Days in the window got their own partitions.
    for l in &recent {
        let name = partition_of(l.created_at.millis());
        assert!(
            parts.iter().any(|(n, _, _)| *n == name),
            "{name}: {parts:?}"
        );
    }

    // More old days into the same gaps make nothing new; ids stay idempotent across them.
    let mut more = generator.logs(50);
    for (i, l) in more.iter_mut().enumerate() {
        l.created_at = ts((today - 40 - i as i64 * 97) * DAY);
    }
    insert(&store, &tenant, &more).await;
    expected.extend(more);
    assert_eq!(
        bounds(&c).await,
        parts,
        "no partition for days already covered"
    );
    assert_eq!(
        insert(&store, &tenant, &old[..10]).await,
        InsertOutcome {
            accepted: 0,
            duplicates: 10
        }
    );

    // Every walk sees every record once, across day and coarse partitions.
    for sort in ALL_SORTS {
        let listed = walk(&store, &tenant, &LogFilter::default(), sort, 97).await;
        assert_same_logs(
            &listed.items,
            &reference(&expected, &LogFilter::default(), sort),
            &format!("{sort:?} across coarse partitions"),
        );
    }
    assert_eq!(
        store.count_request_logs(&tenant).await.unwrap(),
        expected.len() as u64
    );

    // Retention drops coarse partitions whole once they are past the cutoff.
    let cutoff = ts((today - 20) * DAY);
    let expired = store.expire_request_logs(cutoff, 1_000).await.unwrap();
    assert!(expired.partitions >= 1, "{expired:?}");
    assert!(
        bounds(&c)
            .await
            .iter()
            .all(|(_, _, hi)| *hi > cutoff.millis()),
        "no partition left wholly before the cutoff"
    );
    let kept: Vec<RequestLog> = expected
        .iter()
        .filter(|l| l.created_at >= cutoff)
        .cloned()
        .collect();
    let listed = walk(
        &store,
        &tenant,
        &LogFilter::default(),
        Sort::NEWEST_FIRST,
        50,
    )
    .await;
    assert_same_logs(
        &listed.items,
        &reference(&kept, &LogFilter::default(), Sort::NEWEST_FIRST),
        &"after retention",
    );
    store.shutdown().await.unwrap();
}

//! Story: a client pages through an org's logs while the platform keeps ingesting.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use apitrail_model::{
    LogFilter, PageRequest, PageStart, RequestLog, Sort, SortDir, SortKey, new_record_id,
};
use apitrail_store::{LogBatch, Store};
use uuid::Uuid;

use crate::support::{
    LogGen, assert_same_logs, insert, insert_all_new, new_org, random_id, reference, set_sort_key,
};

/// Between every two pages of a walk, logs are inserted around the walk's current position
/// (tied with it on the sort key, just before and just after it, and anywhere else). The walk
/// must return exactly the logs that existed when it started plus those inserted after its
/// position at the time they were inserted: nothing skipped, nothing repeated, in order.
pub async fn walks_stay_exact_while_records_are_inserted(store: &dyn Store) {
    let a = new_org(store, "live-a").await;
    let b = new_org(store, "live-b").await;
    let mut generator = LogGen::new(0x11FE, "a");
    let mut all = generator.logs(300);
    insert_all_new(store, &a, &all, 300).await;
    let scenarios = [
        (
            Sort {
                key: SortKey::CreatedAt,
                dir: SortDir::Desc,
            },
            LogFilter::default(),
        ),
        (
            Sort {
                key: SortKey::CreatedAt,
                dir: SortDir::Asc,
            },
            LogFilter::default(),
        ),
        (
            Sort {
                key: SortKey::StatusCode,
                dir: SortDir::Desc,
            },
            LogFilter {
                method: Some("GET".into()),
                ..LogFilter::default()
            },
        ),
        (
            Sort {
                key: SortKey::DurationMs,
                dir: SortDir::Asc,
            },
            LogFilter {
                status_max: Some(499),
                ..LogFilter::default()
            },
        ),
    ];
    for (sort, filter) in scenarios {
        let mut expected: Vec<RequestLog> = all.clone();
        let mut got: Vec<RequestLog> = Vec::new();
        let mut start = PageStart::First;
        let mut pages = 0;
        loop {
            let page = store
                .list_request_logs(&a, &filter, sort, PageRequest { limit: 11, start })
                .await
                .expect("list");
            pages += 1;
            assert!(pages < 1000, "the walk in {sort:?} does not end");
            got.extend(page.items);
            let Some(cursor) = got.last().map(|l| sort.position_of(l)) else {
                break;
            };
            if !page.has_more {
                break;
            }
            start = PageStart::After(cursor);
            // New logs: two tied with the cursor on the sort key (ids on either side), and
            // three anywhere. Org b gets one too, which must never show up.
            let mut fresh = generator.logs(5);
            for (i, log) in fresh.iter_mut().take(2).enumerate() {
                set_sort_key(log, sort.key, cursor.key);
                log.id = if i == 0 {
                    new_record_id()
                } else {
                    random_id(&mut generator.rng)
                };
            }
            insert(store, &a, &fresh).await;
            insert(store, &b, &generator.logs(1)).await;
            for log in &fresh {
                if sort.before(&cursor, &sort.position_of(log)) {
                    expected.push(log.clone());
                }
            }
            all.extend(fresh);
        }
        let expected = reference(&expected, &filter, sort);
        assert_same_logs(
            &got,
            &expected,
            &format!("walk of {filter:?} in {sort:?} during inserts"),
        );
    }
}

/// A walk runs while another future keeps inserting into the same org (and another org)
/// concurrently. Every log that existed before the walk appears exactly once and in order,
/// the whole result is strictly ordered, and anything else is one of the inserted logs.
pub async fn walks_stay_ordered_under_concurrent_inserts(store: &dyn Store) {
    let a = new_org(store, "concurrent-walk-a").await;
    let b = new_org(store, "concurrent-walk-b").await;
    let mut generator = LogGen::new(0xC0C0, "a");
    let initial = generator.logs(500);
    insert_all_new(store, &a, &initial, 500).await;
    let mut known: HashMap<Uuid, RequestLog> = initial.iter().map(|l| (l.id, l.clone())).collect();
    let generator = Mutex::new(generator);

    for sort in [
        Sort::NEWEST_FIRST,
        Sort {
            key: SortKey::CreatedAt,
            dir: SortDir::Asc,
        },
    ] {
        let before: Vec<RequestLog> = known.values().cloned().collect();
        let before = reference(&before, &LogFilter::default(), sort);
        let done = AtomicBool::new(false);
        let (commits_tx, mut commits_rx) = tokio::sync::watch::channel(0usize);
        let inserted: Mutex<Vec<RequestLog>> = Mutex::new(Vec::new());

        let walker = async {
            let mut items = Vec::new();
            let mut start = PageStart::First;
            let mut pages = 0;
            loop {
                // For the first pages, wait until another batch has been committed since the
                // previous page, so inserts certainly land in the middle of the walk.
                if pages < 25 {
                    commits_rx.changed().await.expect("the inserter is alive");
                }
                let page = store
                    .list_request_logs(
                        &a,
                        &LogFilter::default(),
                        sort,
                        PageRequest { limit: 10, start },
                    )
                    .await
                    .expect("list");
                pages += 1;
                assert!(pages < 10_000, "the walk does not end");
                let last = page.items.last().map(|l| sort.position_of(l));
                items.extend(page.items);
                match (page.has_more, last) {
                    (true, Some(pos)) => start = PageStart::After(pos),
                    _ => break,
                }
            }
            done.store(true, Ordering::SeqCst);
            items
        };
        let inserter = async {
            let mut batches = 0usize;
            while !done.load(Ordering::SeqCst) {
                let (logs_a, logs_b) = {
                    let mut g = generator.lock().unwrap_or_else(|e| e.into_inner());
                    (g.logs(8), g.logs(2))
                };
                let outcome = store
                    .insert_request_logs(vec![
                        LogBatch::new(a.clone(), logs_a.clone()),
                        LogBatch::new(b.clone(), logs_b),
                    ])
                    .await
                    .expect("insert");
                assert_eq!(outcome.accepted, 10);
                inserted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(logs_a);
                batches += 1;
                commits_tx.send_replace(batches);
                tokio::task::yield_now().await;
            }
            batches
        };
        let (items, batches) = tokio::join!(walker, inserter);
        assert!(batches >= 25, "the inserter ran during the walk");

        let ctx = format!("walk in {sort:?} during concurrent inserts");
        for pair in items.windows(2) {
            let (x, y) = (sort.position_of(&pair[0]), sort.position_of(&pair[1]));
            assert!(
                sort.before(&x, &y),
                "{ctx}: {x:?} then {y:?} is out of order or repeated"
            );
        }
        let inserted = inserted.into_inner().unwrap_or_else(|e| e.into_inner());
        let new_ids: HashSet<Uuid> = inserted.iter().map(|l| l.id).collect();
        known.extend(inserted.into_iter().map(|l| (l.id, l)));
        let old: Vec<RequestLog> = items
            .iter()
            .filter(|l| !new_ids.contains(&l.id))
            .cloned()
            .collect();
        assert_same_logs(
            &old,
            &before,
            &format!("{ctx}: the logs that existed before"),
        );
        for item in &items {
            assert_eq!(
                known.get(&item.id),
                Some(item),
                "{ctx}: {} is neither an old log nor one inserted into this org",
                item.id
            );
        }
    }
}

//! Retention: purging an org's expired request logs.

use apitrail_model::{LogFilter, PageRequest, Sort};
use apitrail_store::Store;

use crate::support::{LogGen, at, ids, insert, new_org, reference};

/// `purge_request_logs` deletes only the org's logs created strictly before the cutoff,
/// oldest first and at most `max` per call, and leaves every other org alone.
pub async fn purge_removes_only_expired_logs_of_one_org(store: &dyn Store) {
    let a = new_org(store, "purge-a").await;
    let b = new_org(store, "purge-b").await;
    let mut gen_a = LogGen::new(11, "a");
    let mut gen_b = LogGen::new(12, "b");
    let mut logs_a = gen_a.logs(300);
    let mut logs_b = gen_b.logs(100);
    for (i, l) in logs_a.iter_mut().chain(logs_b.iter_mut()).enumerate() {
        l.created_at = at((i as i64 % 100) * 1_000);
    }
    insert(store, &a, &logs_a).await;
    insert(store, &b, &logs_b).await;
    let cutoff = at(50_000);
    let expired = logs_a.iter().filter(|l| l.created_at < cutoff).count() as u64;
    assert!(
        expired > 100,
        "the story needs more than one batch to purge"
    );

    let first = store.purge_request_logs(&a, cutoff, 100).await.unwrap();
    assert_eq!(first, 100, "a purge call deletes at most max");
    let mut deleted = first;
    loop {
        let n = store.purge_request_logs(&a, cutoff, 100).await.unwrap();
        deleted += n;
        if n < 100 {
            break;
        }
    }
    assert_eq!(deleted, expired);
    assert_eq!(store.purge_request_logs(&a, cutoff, 100).await.unwrap(), 0);

    let kept: Vec<_> = logs_a
        .iter()
        .filter(|l| l.created_at >= cutoff)
        .cloned()
        .collect();
    let page = store
        .list_request_logs(
            &a,
            &LogFilter::default(),
            Sort::NEWEST_FIRST,
            PageRequest::first(1_000),
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&page.items),
        ids(&reference(&kept, &LogFilter::default(), Sort::NEWEST_FIRST))
    );
    // The other org, with logs just as old, is untouched.
    assert_eq!(
        store.count_request_logs(&b).await.unwrap(),
        logs_b.len() as u64
    );
}

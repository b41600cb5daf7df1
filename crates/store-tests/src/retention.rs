//! Retention: purging an org's expired request logs, and expiring every org's.

use apitrail_model::{LogFilter, PageRequest, Sort};
use apitrail_store::Store;

use crate::support::{
    ALL_SORTS, LogGen, assert_same_logs, at, ids, insert, new_org, reference, walk,
};

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

/// `expire_request_logs` (the global policy) removes every org's logs created strictly
/// before the cutoff, whole days and the part of the boundary day before it alike; every
/// list still walks exactly the newer logs, a purged client id may be stored again, and a
/// stored one is still a duplicate.
pub async fn expire_removes_old_logs_of_every_org(store: &dyn Store) {
    const DAY: i64 = 86_400_000;
    let a = new_org(store, "expire-a").await;
    let b = new_org(store, "expire-b").await;
    let mut gen_a = LogGen::new(21, "a");
    let mut gen_b = LogGen::new(22, "b");
    // Six days of logs, every 90 minutes, in both orgs; the cutoff falls inside day 3.
    let mut logs_a = gen_a.logs(96);
    let mut logs_b = gen_b.logs(96);
    for (i, l) in logs_a.iter_mut().enumerate() {
        l.created_at = at(i as i64 * 90 * 60_000 - 2 * DAY);
    }
    for (i, l) in logs_b.iter_mut().enumerate() {
        l.created_at = at(i as i64 * 90 * 60_000 - 2 * DAY + 1);
    }
    insert(store, &a, &logs_a).await;
    insert(store, &b, &logs_b).await;
    let cutoff = at(DAY + 7 * 3_600_000);
    let (old_a, new_a): (Vec<_>, Vec<_>) =
        logs_a.iter().cloned().partition(|l| l.created_at < cutoff);
    let (old_b, new_b): (Vec<_>, Vec<_>) =
        logs_b.iter().cloned().partition(|l| l.created_at < cutoff);
    assert!(
        old_a.len() > 40 && new_a.len() > 20,
        "the story needs logs on both sides"
    );

    let expired = store.expire_request_logs(cutoff, 7).await.unwrap();
    let old = (old_a.len() + old_b.len()) as u64;
    // Records in dropped partitions are not counted one by one.
    assert!(
        expired.records == old || (expired.partitions > 0 && expired.records < old),
        "{expired:?} for {old} expired logs"
    );
    assert_eq!(
        store.count_request_logs(&a).await.unwrap(),
        new_a.len() as u64
    );
    assert_eq!(
        store.count_request_logs(&b).await.unwrap(),
        new_b.len() as u64
    );
    for (tenant, kept, name) in [(&a, &new_a, "a"), (&b, &new_b, "b")] {
        for sort in ALL_SORTS {
            let listed = walk(store, tenant, &LogFilter::default(), sort, 9).await;
            assert_same_logs(
                &listed.items,
                &reference(kept, &LogFilter::default(), sort),
                &format!("org {name} after expiry, {sort:?}"),
            );
        }
        let status = LogFilter {
            status_min: Some(400),
            status_max: Some(599),
            ..LogFilter::default()
        };
        let listed = walk(store, tenant, &status, Sort::NEWEST_FIRST, 5).await;
        assert_same_logs(
            &listed.items,
            &reference(kept, &status, Sort::NEWEST_FIRST),
            &format!("org {name}: a status range after expiry"),
        );
    }
    // Nothing is left to expire.
    assert_eq!(
        store.expire_request_logs(cutoff, 7).await.unwrap(),
        apitrail_store::Expired::default()
    );
    // An expired id is gone: re-sent, it is stored again; a kept one is still a duplicate.
    assert_eq!(
        insert(store, &a, &[old_a[0].clone(), new_a[0].clone()]).await,
        apitrail_store::InsertOutcome {
            accepted: 1,
            duplicates: 1
        }
    );
    assert_eq!(
        store
            .get_request_log(&a, old_a[0].id)
            .await
            .unwrap()
            .as_ref(),
        Some(&old_a[0])
    );
}

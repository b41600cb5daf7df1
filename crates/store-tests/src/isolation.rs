//! Story: two orgs share one store and never see each other's records.

use std::collections::HashSet;

use apitrail_model::{LogFilter, PageRequest, PageStart, RequestLog, new_record_id};
use apitrail_store::Store;
use uuid::Uuid;

use crate::support::{
    ALL_SORTS, LogGen, assert_same_logs, at, insert_all_new, new_key, new_org, reference,
    store_key, walk,
};

/// Every read through org a's tenant (lists with any filter and order, offsets, gets, counts,
/// keys, audit entries) returns only org a's records, even for ids and filter values that
/// exist only in org b, and for ids both orgs use.
pub async fn tenants_never_see_each_other(store: &dyn Store) {
    let a = new_org(store, "iso-a").await;
    let b = new_org(store, "iso-b").await;
    assert_ne!(a, b);
    let logs_a = LogGen::new(0x150A, "a").logs(300);
    let mut logs_b = LogGen::new(0x150B, "b").logs(300);
    // Some ids in both orgs, with different content in each.
    for (log_b, log_a) in logs_b.iter_mut().zip(logs_a.iter().step_by(15)) {
        log_b.id = log_a.id;
    }
    insert_all_new(store, &a, &logs_a, 300).await;
    insert_all_new(store, &b, &logs_b, 300).await;
    let ids_a: HashSet<Uuid> = logs_a.iter().map(|l| l.id).collect();

    assert_eq!(store.count_request_logs(&a).await.expect("count"), 300);
    assert_eq!(store.count_request_logs(&b).await.expect("count"), 300);
    for log in &logs_b {
        let through_a = store.get_request_log(&a, log.id).await.expect("get");
        let expected = logs_a.iter().find(|l| l.id == log.id);
        assert_eq!(
            through_a.as_ref(),
            expected,
            "org a reads org b's log {}",
            log.id
        );
        assert_eq!(
            store
                .get_request_log(&b, log.id)
                .await
                .expect("get")
                .as_ref(),
            Some(log)
        );
    }

    let filters = [
        LogFilter::default(),
        // A value only org b has.
        LogFilter {
            user_id: Some("user_only_b".into()),
            ..LogFilter::default()
        },
        LogFilter {
            user_id: Some("user_1".into()),
            ..LogFilter::default()
        },
        LogFilter {
            method: Some("GET".into()),
            status_min: Some(200),
            status_max: Some(299),
            ..LogFilter::default()
        },
        LogFilter {
            request_id: Some("tok5".into()),
            ..LogFilter::default()
        },
        LogFilter {
            from: Some(at(100)),
            to: Some(at(300)),
            ..LogFilter::default()
        },
    ];
    for sort in ALL_SORTS {
        for filter in &filters {
            let got = walk(store, &a, filter, sort, 40).await;
            let ctx = format!("org a's {filter:?} in {sort:?}");
            assert!(
                got.items.iter().all(|l| ids_a.contains(&l.id)),
                "{ctx}: a foreign id leaked"
            );
            assert_same_logs(&got.items, &reference(&logs_a, filter, sort), &ctx);
            let got = walk(store, &b, filter, sort, 40).await;
            assert_same_logs(
                &got.items,
                &reference(&logs_b, filter, sort),
                &format!("org b's {filter:?} in {sort:?}"),
            );
        }
        // Offsets past org a's end find nothing, though org b has more.
        let page = store
            .list_request_logs(
                &a,
                &LogFilter::default(),
                sort,
                PageRequest {
                    limit: 100,
                    start: PageStart::Offset(290),
                },
            )
            .await
            .expect("list");
        assert_eq!(page.items.len(), 10);
        assert!(!page.has_more);
        // Resuming after one of org b's positions still lists only org a.
        let foreign_position = sort.position_of(&logs_b[150]);
        let page = store
            .list_request_logs(
                &a,
                &LogFilter::default(),
                sort,
                PageRequest {
                    limit: 1000,
                    start: PageStart::After(foreign_position),
                },
            )
            .await
            .expect("list");
        let expected: Vec<RequestLog> = reference(&logs_a, &LogFilter::default(), sort)
            .into_iter()
            .filter(|l| sort.before(&foreign_position, &sort.position_of(l)))
            .collect();
        assert_same_logs(
            &page.items,
            &expected,
            &format!("org a after org b's position, {sort:?}"),
        );
    }

    // Keys and audit entries stay in their org too.
    let (key_a, secret_a) = new_key(&a, "iso-key-a", at(10));
    let (key_b, secret_b) = new_key(&b, "iso-key-b", at(10));
    let audit_a = store_key(store, &a, &key_a, &secret_a).await;
    let audit_b = store_key(store, &b, &key_b, &secret_b).await;
    assert_eq!(
        store.list_api_keys(&a).await.expect("keys"),
        vec![key_a.clone()]
    );
    assert_eq!(
        store.list_api_keys(&b).await.expect("keys"),
        vec![key_b.clone()]
    );
    assert_eq!(store.get_api_key(&a, key_b.id).await.expect("key"), None);
    assert_eq!(store.get_api_key(&b, key_a.id).await.expect("key"), None);
    let (tenant, key) = store
        .authenticate(&secret_b.hash())
        .await
        .expect("authenticate")
        .expect("org b's key authenticates");
    assert_eq!((tenant, key), (b.clone(), key_b.clone()));
    let audit_ids = |entries: Vec<apitrail_model::AuditEntry>| -> HashSet<Uuid> {
        entries.into_iter().map(|e| e.id).collect()
    };
    let seen_a = audit_ids(
        store
            .list_audit_entries(&a, &Default::default(), None, 100)
            .await
            .expect("audit")
            .items,
    );
    let seen_b = audit_ids(
        store
            .list_audit_entries(&b, &Default::default(), None, 100)
            .await
            .expect("audit")
            .items,
    );
    assert!(seen_a.contains(&audit_a.id) && !seen_a.contains(&audit_b.id));
    assert!(seen_b.contains(&audit_b.id) && !seen_b.contains(&audit_a.id));
    assert!(
        seen_a.is_disjoint(&seen_b),
        "no audit entry is listed for both orgs"
    );
    assert_eq!(
        store
            .get_request_log(&a, new_record_id())
            .await
            .expect("get"),
        None
    );
}

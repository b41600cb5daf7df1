//! Story: the request timeline finds an org's audit entries and action records by the request
//! id that made them.

use apitrail_model::query::request_id_matches;
use apitrail_model::{AuditEntry, Tenant};
use apitrail_store::{AuditBatch, Page, Store};
use fastrand::Rng;

use crate::support::{at, audit_entry, create_record, new_org, pending, random_id};

/// Every audit entry of the org (the timeline's reference set is computed from these).
async fn all_audit(store: &dyn Store, tenant: &Tenant) -> Vec<AuditEntry> {
    store
        .list_audit_entries(tenant, &Default::default(), None, 200)
        .await
        .expect("list_audit_entries")
        .items
}

/// Checks a page against the reference: the first `limit` of `expected` (oldest first), and
/// whether more follow.
fn assert_page<T: PartialEq + std::fmt::Debug>(
    got: &Page<T>,
    expected: &[T],
    limit: u32,
    what: &str,
) {
    let n = (limit as usize).min(expected.len());
    assert_eq!(got.items, expected[..n], "{what}, limit {limit}");
    assert_eq!(
        got.has_more,
        expected.len() > limit as usize,
        "{what}, limit {limit}: has_more"
    );
}

/// Audit entries and action records come back by request id in either spelling (`abc` and
/// `req_abc` are one id, as for the request-log filter), oldest first (ties by id), every
/// field as written, only the org's own, never more than the limit, with `has_more` telling
/// whether more match. An id nothing carries finds nothing.
pub async fn records_are_found_by_request_id(store: &dyn Store) {
    let mut rng = Rng::with_seed(0x7133_11AE);
    let a = new_org(store, "timeline-a").await;
    let b = new_org(store, "timeline-b").await;

    // Org a: entries of the request in both spellings, written out of time order, some
    // sharing an instant, with ids unrelated to their time; entries of other requests (one a
    // prefix of it) and without one.
    let spellings = [
        Some("req_tl1"),
        Some("tl1"),
        Some("req_tl10"),
        Some("tl"),
        None,
    ];
    let mut entries = Vec::new();
    for i in 0..40 {
        let mut e = audit_entry(
            "update",
            "destination",
            &format!("d{i}"),
            at(i64::from(rng.u8(0..8)) * 10),
        );
        e.id = random_id(&mut rng);
        e.request_id = spellings[i % spellings.len()].map(str::to_owned);
        entries.push(e);
    }
    store
        .insert_audit_entries(vec![AuditBatch {
            tenant: a.clone(),
            entries,
        }])
        .await
        .expect("insert_audit_entries");
    // Org b: the same request id, never seen by org a.
    let mut foreign = audit_entry("update", "destination", "b", at(5));
    foreign.request_id = Some("req_tl1".into());
    store
        .insert_audit_entries(vec![AuditBatch {
            tenant: b.clone(),
            entries: vec![foreign],
        }])
        .await
        .expect("insert_audit_entries");

    let mut records = Vec::new();
    for i in 0..30 {
        let mut r = pending(
            random_id(&mut rng),
            "notify",
            at(i64::from(rng.u8(0..6)) * 10),
            at(0),
        );
        r.id = random_id(&mut rng);
        r.request_id = spellings[i % spellings.len()].map(str::to_owned);
        create_record(store, &a, &r).await;
        records.push(r);
    }
    let mut foreign = pending(random_id(&mut rng), "notify", at(5), at(0));
    foreign.request_id = Some("tl1".into());
    create_record(store, &b, &foreign).await;

    for asked in ["tl1", "req_tl1", "tl10", "tl", "req_none"] {
        let mut audit: Vec<AuditEntry> = all_audit(store, &a)
            .await
            .into_iter()
            .filter(|e| request_id_matches(asked, e.request_id.as_deref()))
            .collect();
        audit.sort_by_key(|e| (e.created_at, e.id));
        let mut actions: Vec<_> = records
            .iter()
            .filter(|r| request_id_matches(asked, r.request_id.as_deref()))
            .cloned()
            .collect();
        actions.sort_by_key(|r| (r.created_at, r.id));
        if asked == "req_none" {
            assert!(audit.is_empty() && actions.is_empty(), "a fixture bug");
        } else {
            assert!(
                audit.len() >= 8 && actions.len() >= 6,
                "a fixture bug: {asked}"
            );
        }
        let (na, nr) = (audit.len() as u32, actions.len() as u32);
        for limit in [1, 2, 5, na.max(1) - 1, na, na + 1, nr, nr + 1, 1_000] {
            let limit = limit.max(1);
            let got = store
                .audit_entries_by_request(&a, asked, limit)
                .await
                .expect("audit_entries_by_request");
            assert_page(&got, &audit, limit, &format!("audit of {asked}"));
            let got = store
                .action_records_by_request(&a, asked, limit)
                .await
                .expect("action_records_by_request");
            assert_page(&got, &actions, limit, &format!("actions of {asked}"));
        }
    }

    // Org b sees its own record and entry only.
    let got = store
        .audit_entries_by_request(&b, "tl1", 100)
        .await
        .expect("audit_entries_by_request");
    assert_eq!(got.items.len(), 1, "org b's own entry only");
    assert_eq!(got.items[0].resource_id.as_deref(), Some("b"));
    let got = store
        .action_records_by_request(&b, "req_tl1", 100)
        .await
        .expect("action_records_by_request");
    assert_eq!(got.items, vec![foreign], "org b's own record only");
}

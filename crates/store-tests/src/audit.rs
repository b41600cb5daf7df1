//! Story: an org inspects its own audit log.

use apitrail_model::{AuditAfter, AuditEntry, AuditFilter, new_record_id};
use apitrail_store::Store;
use fastrand::Rng;

use crate::support::{at, audit_entry, new_key, new_org, random_id};

/// Sorts audit entries newest first, ties broken by id (descending).
pub fn newest_first(entries: &mut [AuditEntry]) {
    entries.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
}

/// Audit entries come back newest first (ties by id, descending), every field as written, only
/// the org's own, and never more than the limit.
pub async fn audit_entries_list_newest_first(store: &dyn Store) {
    let mut rng = Rng::with_seed(0xA0D1_7008);
    let a = new_org(store, "audit-a").await;
    let b = new_org(store, "audit-b").await;
    let mut expected = store
        .list_audit_entries(&a, &Default::default(), None, 10)
        .await
        .expect("audit")
        .items;
    assert_eq!(expected.len(), 1, "org creation wrote one entry");
    let foreign = store
        .list_audit_entries(&b, &Default::default(), None, 10)
        .await
        .expect("audit")
        .items;

    // Entries written out of time order, several sharing an instant, with ids unrelated to
    // their time; some with optional fields absent.
    let mut keys = Vec::new();
    for i in 0..15 {
        let (key, secret) = new_key(&a, &format!("k{i}"), at(i64::from(rng.u8(1..6)) * 100));
        let mut audit = audit_entry("create", "api_key", &key.id.to_string(), key.created_at);
        audit.id = random_id(&mut rng);
        if i % 4 == 0 {
            audit.user_id = None;
            audit.details = None;
            audit.ip_address = Some("192.0.2.1".into());
            audit.request_id = None;
        }
        store
            .create_api_key(&a, &key, &secret.hash(), &audit)
            .await
            .expect("create key");
        expected.push(audit);
        keys.push(key);
    }
    let revoke = AuditEntry {
        id: new_record_id(),
        resource_id: None,
        ..audit_entry("revoke", "api_key", "", at(300))
    };
    store
        .revoke_api_key(&a, keys[3].id, at(300), &revoke)
        .await
        .expect("revoke")
        .expect("the key exists");
    expected.push(revoke);
    // Org b's activity never shows up in org a's log.
    let (kb, sb) = new_key(&b, "kb", at(250));
    let audit_b = audit_entry("create", "api_key", &kb.id.to_string(), kb.created_at);
    store
        .create_api_key(&b, &kb, &sb.hash(), &audit_b)
        .await
        .expect("create key");

    newest_first(&mut expected);
    let n = expected.len() as u32;
    for limit in [1, 2, 5, n - 1, n, n + 1, 200] {
        let got = store
            .list_audit_entries(&a, &Default::default(), None, limit)
            .await
            .expect("audit")
            .items;
        let want = &expected[..expected.len().min(limit as usize)];
        assert_eq!(got, want, "org a's audit entries with limit {limit}");
    }
    let mut expected_b = foreign;
    expected_b.push(audit_b);
    newest_first(&mut expected_b);
    assert_eq!(
        store
            .list_audit_entries(&b, &Default::default(), None, 200)
            .await
            .expect("audit")
            .items,
        expected_b
    );
}

/// Keyset pages of the audit log (after the `(created_at, id)` of the last entry served, the
/// audit dialect's cursor), with each filter, list exactly the entries the reference model
/// predicts, each once, `has_more` set only when more follow; other orgs never show up.
pub async fn audit_pages_walk_with_filters(store: &dyn Store) {
    let mut rng = Rng::with_seed(0xA0D1_7009);
    let a = new_org(store, "audit-walk-a").await;
    let b = new_org(store, "audit-walk-b").await;
    let mut written = store
        .list_audit_entries(&a, &AuditFilter::default(), None, 10)
        .await
        .expect("audit")
        .items;
    let mut keys = Vec::new();
    for i in 0..23 {
        // Few distinct instants, so that the id tie-break decides many positions.
        let (key, secret) = new_key(&a, &format!("w{i}"), at(i64::from(rng.u8(1..8)) * 100));
        let mut audit = audit_entry("create", "api_key", &key.id.to_string(), key.created_at);
        audit.id = random_id(&mut rng);
        store
            .create_api_key(&a, &key, &secret.hash(), &audit)
            .await
            .expect("create key");
        written.push(audit);
        keys.push(key);
    }
    for key in keys.iter().step_by(3) {
        let mut revoke = audit_entry(
            "revoke",
            "api_key",
            &key.id.to_string(),
            at(i64::from(rng.u8(1..8)) * 100),
        );
        revoke.id = random_id(&mut rng);
        store
            .revoke_api_key(&a, key.id, revoke.created_at, &revoke)
            .await
            .expect("revoke")
            .expect("the key exists");
        written.push(revoke);
    }
    let (kb, sb) = new_key(&b, "wb", at(300));
    let audit_b = audit_entry("create", "api_key", &kb.id.to_string(), kb.created_at);
    store
        .create_api_key(&b, &kb, &sb.hash(), &audit_b)
        .await
        .expect("create key");
    newest_first(&mut written);

    let text = |v: &str| Some(v.to_owned());
    let filters = [
        AuditFilter::default(),
        AuditFilter {
            action: text("create"),
            ..AuditFilter::default()
        },
        AuditFilter {
            action: text("revoke"),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource_type: text("org"),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource_id: text(&keys[3].id.to_string()),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource_id: text(&kb.id.to_string()),
            ..AuditFilter::default()
        },
        AuditFilter {
            resource_type: text("api_key"),
            action: text("revoke"),
            ..AuditFilter::default()
        },
        AuditFilter {
            action: text("delete"),
            ..AuditFilter::default()
        },
    ];
    for filter in &filters {
        let want: Vec<&AuditEntry> = written.iter().filter(|e| filter.matches(e)).collect();
        for limit in [1, 2, 5, 200] {
            let mut got = Vec::new();
            let mut after = None;
            for _ in 0..1000 {
                let page = store
                    .list_audit_entries(&a, filter, after, limit)
                    .await
                    .expect("audit page");
                assert!(page.items.len() <= limit as usize, "{filter:?} {limit}");
                if page.has_more {
                    assert_eq!(page.items.len(), limit as usize, "{filter:?} {limit}");
                }
                after = page.items.last().map(|e| AuditAfter {
                    created_at: e.created_at,
                    id: e.id,
                });
                got.extend(page.items);
                if !page.has_more {
                    break;
                }
            }
            let got: Vec<&AuditEntry> = got.iter().collect();
            assert_eq!(got, want, "{filter:?} limit {limit}");
        }
    }
}

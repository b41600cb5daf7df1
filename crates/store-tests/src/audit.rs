//! Story: an org inspects its own audit log.

use apitrail_model::{AuditEntry, new_record_id};
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
    let mut expected = store.list_audit_entries(&a, 10).await.expect("audit");
    assert_eq!(expected.len(), 1, "org creation wrote one entry");
    let foreign = store.list_audit_entries(&b, 10).await.expect("audit");

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
        let got = store.list_audit_entries(&a, limit).await.expect("audit");
        let want = &expected[..expected.len().min(limit as usize)];
        assert_eq!(got, want, "org a's audit entries with limit {limit}");
    }
    let mut expected_b = foreign;
    expected_b.push(audit_b);
    newest_first(&mut expected_b);
    assert_eq!(
        store.list_audit_entries(&b, 200).await.expect("audit"),
        expected_b
    );
}

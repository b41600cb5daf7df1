//! Story: an org's admin creates API keys, callers authenticate with them, keys get revoked.

use apitrail_model::{ApiKey, PrincipalType, Scope, Secret, new_record_id};
use apitrail_store::{Store, StoreError};

use crate::support::{at, audit_entry, new_key, new_org, store_key};

fn by_age(keys: &mut [ApiKey]) {
    keys.sort_by_key(|k| (k.created_at, k.id));
}

/// Keys are stored by hash, listed oldest first, authenticate to their own org until revoked,
/// and are invisible and untouchable through another org.
pub async fn api_keys_authenticate_until_revoked(store: &dyn Store) {
    let a = new_org(store, "keys-a").await;
    let b = new_org(store, "keys-b").await;
    let mut audit_a = store
        .list_audit_entries(&a, &Default::default(), None, 100)
        .await
        .expect("audit")
        .items;
    let mut audit_b = store
        .list_audit_entries(&b, &Default::default(), None, 100)
        .await
        .expect("audit")
        .items;

    // Created out of age order, one pair tied on created_at.
    let (k1, s1) = new_key(&a, "first", at(2_000));
    let (k2, s2) = new_key(&a, "second", at(1_000));
    let (mut k3, s3) = new_key(&a, "third", at(3_000));
    k3.principal_type = PrincipalType::ServiceAccount;
    k3.scopes = [Scope::Admin].into_iter().collect();
    k3.user_id = None;
    k3.email = None;
    k3.service_account_id = Some("sa_42".into());
    // Tied with k2 on created_at and created after it, but with a smaller id: the tie is
    // broken by id, not by insertion order.
    let (mut k4, s4) = new_key(&a, "tied", at(1_000));
    k4.id = uuid::Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0042);
    assert!(k4.id < k2.id);
    let (kb, sb) = new_key(&b, "other-org", at(1_500));
    for (key, secret) in [(&k1, &s1), (&k2, &s2), (&k3, &s3), (&k4, &s4)] {
        audit_a.push(store_key(store, &a, key, secret).await);
    }
    audit_b.push(store_key(store, &b, &kb, &sb).await);

    let mut keys_a = vec![k1.clone(), k2.clone(), k3.clone(), k4.clone()];
    by_age(&mut keys_a);
    assert_eq!(
        store.list_api_keys(&a).await.expect("list keys"),
        keys_a,
        "keys listed oldest first (ties by id), every field as stored"
    );
    assert_eq!(
        store.list_api_keys(&b).await.expect("list keys"),
        vec![kb.clone()]
    );
    for key in &keys_a {
        assert_eq!(
            store
                .get_api_key(&a, key.id)
                .await
                .expect("get key")
                .as_ref(),
            Some(key)
        );
        assert_eq!(
            store.get_api_key(&b, key.id).await.expect("get key"),
            None,
            "org b must not see org a's key"
        );
    }
    assert_eq!(store.get_api_key(&a, kb.id).await.expect("get key"), None);
    assert_eq!(
        store
            .get_api_key(&a, new_record_id())
            .await
            .expect("get key"),
        None
    );

    for (key, secret, tenant) in [(&k1, &s1, &a), (&k3, &s3, &a), (&kb, &sb, &b)] {
        assert_eq!(
            store
                .authenticate(&secret.hash())
                .await
                .expect("authenticate"),
            Some((tenant.clone(), key.clone())),
            "{} authenticates to its own org",
            key.name
        );
    }
    assert_eq!(
        store
            .authenticate(&Secret::generate().hash())
            .await
            .expect("authenticate"),
        None,
        "an unknown secret authenticates nothing"
    );

    // A second key with an existing id, or with an existing secret, is refused whole.
    let (mut dup, _) = new_key(&a, "dup-id", at(4_000));
    dup.id = k1.id;
    let dup_audit = audit_entry("create", "api_key", "dup-id", at(4_000));
    match store
        .create_api_key(&a, &dup, &Secret::generate().hash(), &dup_audit)
        .await
    {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a duplicate key id must be a Conflict, got {other:?}"),
    }
    let (dup, _) = new_key(&a, "dup-secret", at(4_000));
    let dup_audit = audit_entry("create", "api_key", "dup-secret", at(4_000));
    match store.create_api_key(&a, &dup, &s2.hash(), &dup_audit).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a duplicate secret must be a Conflict, got {other:?}"),
    }
    assert_eq!(
        store.list_api_keys(&a).await.expect("list keys"),
        keys_a,
        "refused keys are not stored"
    );
    assert_eq!(
        store.authenticate(&s2.hash()).await.expect("authenticate"),
        Some((a.clone(), k2.clone()))
    );

    // Revoking through another org finds nothing and changes nothing.
    let foreign = audit_entry("revoke", "api_key", &k1.id.to_string(), at(5_000));
    assert_eq!(
        store
            .revoke_api_key(&b, k1.id, at(5_000), &foreign)
            .await
            .expect("revoke"),
        None
    );
    assert_eq!(
        store
            .revoke_api_key(&a, kb.id, at(5_000), &foreign)
            .await
            .expect("revoke"),
        None
    );
    assert_eq!(
        store
            .revoke_api_key(&a, new_record_id(), at(5_000), &foreign)
            .await
            .expect("revoke"),
        None
    );
    assert_eq!(
        store.authenticate(&s1.hash()).await.expect("authenticate"),
        Some((a.clone(), k1.clone()))
    );

    // Revocation takes effect at once; a second revocation keeps the first time and writes
    // no second audit entry.
    let revoke1 = audit_entry("revoke", "api_key", &k1.id.to_string(), at(6_000));
    let revoked = ApiKey {
        revoked_at: Some(at(6_000)),
        ..k1.clone()
    };
    assert_eq!(
        store
            .revoke_api_key(&a, k1.id, at(6_000), &revoke1)
            .await
            .expect("revoke"),
        Some(revoked.clone())
    );
    audit_a.push(revoke1);
    assert_eq!(
        store.authenticate(&s1.hash()).await.expect("authenticate"),
        None
    );
    let revoke2 = audit_entry("revoke", "api_key", &k1.id.to_string(), at(7_000));
    assert_eq!(
        store
            .revoke_api_key(&a, k1.id, at(7_000), &revoke2)
            .await
            .expect("revoke"),
        Some(revoked.clone()),
        "revoking twice keeps the first revoked_at"
    );
    assert_eq!(
        store.get_api_key(&a, k1.id).await.expect("get key"),
        Some(revoked.clone())
    );
    for (key, secret, tenant) in [(&k2, &s2, &a), (&k4, &s4, &a), (&kb, &sb, &b)] {
        assert_eq!(
            store
                .authenticate(&secret.hash())
                .await
                .expect("authenticate"),
            Some((tenant.clone(), key.clone())),
            "revoking one key leaves {} alone",
            key.name
        );
    }

    // touch_api_keys records use; it never moves last_used_at backwards.
    store
        .touch_api_keys(vec![
            (k2.id, at(8_000)),
            (kb.id, at(8_500)),
            (new_record_id(), at(8_000)),
        ])
        .await
        .expect("touch");
    store
        .touch_api_keys(vec![(k2.id, at(7_500))])
        .await
        .expect("touch");
    let k2_used = ApiKey {
        last_used_at: Some(at(8_000)),
        ..k2.clone()
    };
    let kb_used = ApiKey {
        last_used_at: Some(at(8_500)),
        ..kb.clone()
    };
    assert_eq!(
        store.get_api_key(&a, k2.id).await.expect("get key"),
        Some(k2_used.clone())
    );
    assert_eq!(
        store.authenticate(&s2.hash()).await.expect("authenticate"),
        Some((a.clone(), k2_used.clone()))
    );
    assert_eq!(
        store.get_api_key(&b, kb.id).await.expect("get key"),
        Some(kb_used.clone())
    );
    store
        .touch_api_keys(vec![(k2.id, at(9_000))])
        .await
        .expect("touch");
    let k2_used = ApiKey {
        last_used_at: Some(at(9_000)),
        ..k2.clone()
    };
    assert_eq!(
        store.get_api_key(&a, k2.id).await.expect("get key"),
        Some(k2_used.clone())
    );

    let mut final_a = vec![revoked, k2_used, k3.clone(), k4.clone()];
    by_age(&mut final_a);
    assert_eq!(store.list_api_keys(&a).await.expect("list keys"), final_a);
    assert_eq!(
        store.list_api_keys(&b).await.expect("list keys"),
        vec![kb_used]
    );

    // Exactly the expected audit entries, each in its own org.
    let sorted = |mut v: Vec<_>| {
        crate::audit::newest_first(&mut v);
        v
    };
    assert_eq!(
        store
            .list_audit_entries(&a, &Default::default(), None, 100)
            .await
            .expect("audit")
            .items,
        sorted(audit_a),
        "org a's audit log: creation, four keys, one revocation"
    );
    assert_eq!(
        store
            .list_audit_entries(&b, &Default::default(), None, 100)
            .await
            .expect("audit")
            .items,
        sorted(audit_b),
        "org b's audit log: creation and its key"
    );
}

//! Story: an operator creates orgs, lists them page by page and resolves them by id.

use apitrail_model::{Org, OrgId, new_record_id};
use apitrail_store::{Store, StoreError};

use crate::support::{at, audit_entry, org_id};

/// Orgs are created with their audit entry, refused on a duplicate id, listed by id with
/// `after`/`limit` paging, and resolved by id.
pub async fn orgs_are_created_listed_and_resolved(store: &dyn Store) {
    let generated = new_record_id().to_string();
    let long = "z".repeat(64);
    // Ids whose byte order differs from creation order, numeric-looking ids that sort as text,
    // and case variants.
    let ids = [
        "org-b",
        "org-a",
        "42",
        "9",
        "Zeta",
        "acme.prod:eu-1_a",
        generated.as_str(),
        long.as_str(),
        "A",
    ];
    let mut created = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let org = Org {
            id: org_id(id),
            name: format!("Ørg nº{i} — 組織"),
            created_at: at(i as i64 * 1000),
        };
        let audit = audit_entry("create", "org", id, org.created_at);
        let tenant = store
            .create_org(&org, &audit)
            .await
            .unwrap_or_else(|e| panic!("create_org({id}) failed: {e:?}"));
        assert_eq!(tenant.org_id(), &org.id, "the tenant carries the org's id");
        created.push((org, audit, tenant));
    }

    for (i, (org, audit, tenant)) in created.iter().enumerate() {
        for (other_org, _, other) in &created[..i] {
            assert_ne!(
                tenant, other,
                "{} and {} share a tenant",
                org.id, other_org.id
            );
        }
        let found = store.tenant(&org.id).await.expect("tenant lookup");
        assert_eq!(found.as_ref(), Some(tenant), "tenant({}) resolves", org.id);
        assert_eq!(
            &store.org(tenant).await.expect("org"),
            org,
            "org() returns what was stored"
        );
        assert_eq!(
            store
                .list_audit_entries(tenant, &Default::default(), None, 10)
                .await
                .expect("audit")
                .items,
            vec![audit.clone()],
            "creating {} wrote exactly its audit entry, for that org",
            org.id
        );
    }
    for missing in ["missing", "org-c", "ORG-A", "a", "42.0"] {
        assert_eq!(
            store.tenant(&org_id(missing)).await.expect("tenant lookup"),
            None,
            "{missing} does not exist"
        );
    }

    let mut by_id: Vec<Org> = created.iter().map(|(o, _, _)| o.clone()).collect();
    by_id.sort_by(|a, b| a.id.cmp(&b.id));
    let n = by_id.len() as u32;
    for limit in [1, 2, 3, 4, n - 1, n, n + 1, 100] {
        let mut listed = Vec::new();
        let mut after: Option<OrgId> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list_orgs(after.as_ref(), limit)
                .await
                .expect("list_orgs");
            pages += 1;
            assert!(page.items.len() <= limit as usize, "limit {limit} exceeded");
            if page.has_more {
                assert_eq!(page.items.len(), limit as usize, "has_more on a short page");
            }
            after = page.items.last().map(|o| o.id.clone());
            listed.extend(page.items);
            if !page.has_more {
                break;
            }
            assert!(
                pages <= by_id.len(),
                "list_orgs never ends with limit {limit}"
            );
        }
        assert_eq!(listed, by_id, "orgs listed by id with limit {limit}");
        assert_eq!(
            pages,
            by_id.len().div_ceil(limit as usize),
            "pages with limit {limit}"
        );
    }
    // `after` need not be an existing id.
    for after in ["5", "org-", "zzzz", "0", "Z"] {
        let after = org_id(after);
        let page = store.list_orgs(Some(&after), 100).await.expect("list_orgs");
        let expected: Vec<Org> = by_id.iter().filter(|o| o.id > after).cloned().collect();
        assert_eq!(page.items, expected, "orgs after {after}");
        assert!(!page.has_more);
    }
    let last = by_id.last().map(|o| o.id.clone()).expect("orgs exist");
    let page = store.list_orgs(Some(&last), 5).await.expect("list_orgs");
    assert!(
        page.items.is_empty() && !page.has_more,
        "nothing follows the last org"
    );

    // A duplicate id is refused and changes nothing, not even the audit log.
    let (original, original_audit, tenant) = &created[1];
    let impostor = Org {
        id: original.id.clone(),
        name: "Impostor".into(),
        created_at: at(99_000),
    };
    let impostor_audit = audit_entry("create", "org", original.id.as_str(), impostor.created_at);
    match store.create_org(&impostor, &impostor_audit).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a duplicate org id must be a Conflict, got {other:?}"),
    }
    assert_eq!(&store.org(tenant).await.expect("org"), original);
    assert_eq!(
        store
            .list_audit_entries(tenant, &Default::default(), None, 10)
            .await
            .expect("audit")
            .items,
        vec![original_audit.clone()],
        "a refused org writes no audit entry"
    );
    assert_eq!(
        store.list_orgs(None, 100).await.expect("list_orgs").items,
        by_id,
        "a refused org is not listed"
    );
}

//! Story: an org exports its audit log, oldest first, with the chain fields.

use apitrail_model::{AuditAfter, AuditFilter, ChainLink};
use apitrail_store::{AuditBatch, Store};
use fastrand::Rng;

use crate::support::{at, audit_entry, new_org, random_id};

/// `list_audit_links` walks the org's entries oldest first (`created_at`, then id), each with
/// its chain link as `audit_chain` reads it, filtered like the list, resuming after any
/// entry; `get_audit_link` finds one entry of the org and none of another's.
pub async fn audit_links_walk_oldest_first(store: &dyn Store) {
    let mut rng = Rng::with_seed(0x00E4_B027);
    let a = new_org(store, "links-a").await;
    let b = new_org(store, "links-b").await;
    let entries = (0..45)
        .map(|i| {
            let mut e = audit_entry(
                ["create", "update"][i % 2],
                "destination",
                &format!("dst_{}", i % 4),
                at(i64::from(rng.u8(1..8)) * 100),
            );
            e.id = random_id(&mut rng);
            e
        })
        .collect::<Vec<_>>();
    store
        .insert_audit_entries(vec![AuditBatch {
            tenant: a.clone(),
            entries,
        }])
        .await
        .expect("insert");
    let mut expected: Vec<ChainLink> = store.audit_chain(&a, 0, 1_000).await.expect("chain");
    assert_eq!(expected.len(), 46, "org creation and the 45 entries");
    expected.sort_by_key(|l| (l.entry.created_at, l.entry.id));

    for filter in [
        AuditFilter::default(),
        AuditFilter {
            action: Some("update".into()),
            resource_id: Some("dst_1".into()),
            ..AuditFilter::default()
        },
    ] {
        let want: Vec<&ChainLink> = expected
            .iter()
            .filter(|l| filter.matches(&l.entry))
            .collect();
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_audit_links(&a, &filter, after, 7)
                .await
                .expect("links");
            assert!(page.items.len() <= 7);
            after = page.items.last().map(|l| AuditAfter {
                created_at: l.entry.created_at,
                id: l.entry.id,
            });
            got.extend(page.items);
            if !page.has_more {
                break;
            }
        }
        assert_eq!(got.iter().collect::<Vec<_>>(), want, "{filter:?}");
    }

    let some = &expected[17];
    assert_eq!(
        store.get_audit_link(&a, some.entry.id).await.expect("get"),
        Some(some.clone())
    );
    assert_eq!(
        store.get_audit_link(&b, some.entry.id).await.expect("get"),
        None
    );
    let foreign = store
        .list_audit_links(&b, &AuditFilter::default(), None, 100)
        .await
        .expect("links");
    assert_eq!(foreign.items.len(), 1, "b sees only its own creation");
    assert_eq!(
        foreign.items[0].entry.resource_id.as_deref(),
        Some("links-b")
    );
}

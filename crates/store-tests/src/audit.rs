//! Stories: an org inspects its own audit log; audit ingest; the audit hash chain.

use std::future::Future;
use std::task::Poll;

use apitrail_model::chain::link_hash;
use apitrail_model::{
    AuditAfter, AuditEntry, AuditFilter, ChainHead, ChainLink, Tenant, new_record_id,
};
use apitrail_store::{AuditBatch, Store};
use fastrand::Rng;

use crate::support::{at, audit_entry, join_all, new_key, new_org, org_id, random_id};

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

/// Walks the org's whole chain as stored, in position order.
async fn whole_chain(store: &dyn Store, tenant: &Tenant) -> Vec<ChainLink> {
    let mut links = Vec::new();
    loop {
        let after = links.last().map_or(0, |l: &ChainLink| l.position);
        let page = store
            .audit_chain(tenant, after, 7)
            .await
            .expect("audit chain");
        if page.is_empty() {
            return links;
        }
        links.extend(page);
    }
}

/// Checks the chain link by link against the model's hash, independently of the verifier.
fn assert_linked(org: &str, links: &[ChainLink], head: ChainHead) {
    let mut expected = ChainHead::EMPTY;
    for (i, link) in links.iter().enumerate() {
        assert_eq!(
            link.position,
            i as u64 + 1,
            "{org}: positions are consecutive"
        );
        assert_eq!(
            link.prev_hash, expected.hash,
            "{org}: link {i} follows its predecessor"
        );
        assert_eq!(
            link.hash,
            link_hash(&expected.hash, &org_id(org), &link.entry),
            "{org}: link {i} hashes its content"
        );
        expected = ChainHead {
            entries: link.position,
            hash: link.hash,
        };
    }
    assert_eq!(head, expected, "{org}: the head is the last link");
}

/// Ingested audit entries are stored atomically and idempotently per org (a re-sent id is a
/// duplicate, also in another batch), every field as written, each org's entries chained in
/// insertion order after its self-audit entries; `verify_audit_chain` agrees.
pub async fn audit_ingest_is_idempotent_and_chained(store: &dyn Store) {
    let mut rng = Rng::with_seed(0xA0D1_700A);
    let a = new_org(store, "chain-a").await;
    let b = new_org(store, "chain-b").await;
    let entry = |rng: &mut Rng, i: i64| {
        let mut e = audit_entry("update", "destination", &format!("dst_{i}"), at(i * 10));
        e.id = random_id(rng);
        if i % 3 == 0 {
            e.user_id = None;
            e.resource_id = None;
            e.details = None;
            e.ip_address = None;
            e.request_id = None;
        }
        e
    };
    let first: Vec<AuditEntry> = (0..40).map(|i| entry(&mut rng, i)).collect();
    let for_b: Vec<AuditEntry> = (0..5).map(|i| entry(&mut rng, i)).collect();
    let outcome = store
        .insert_audit_entries(vec![
            AuditBatch {
                tenant: a.clone(),
                entries: first.clone(),
            },
            AuditBatch {
                tenant: b.clone(),
                entries: for_b.clone(),
            },
        ])
        .await
        .expect("ingest audit");
    assert_eq!(outcome.accepted, 45);
    assert_eq!(outcome.duplicates, 0);

    // A retry of part of the batch, mixed with new entries, stores only the new ones; the
    // same ids in another org are that org's own entries.
    let fresh: Vec<AuditEntry> = (40..50).map(|i| entry(&mut rng, i)).collect();
    let mut retry = first[10..20].to_vec();
    retry.extend(fresh.iter().cloned());
    let outcome = store
        .insert_audit_entries(vec![
            AuditBatch {
                tenant: a.clone(),
                entries: retry,
            },
            AuditBatch {
                tenant: b.clone(),
                entries: first[..3].to_vec(),
            },
        ])
        .await
        .expect("ingest audit again");
    assert_eq!(outcome.accepted, 13);
    assert_eq!(outcome.duplicates, 10);

    // A self-audited change after ingest joins the same chain.
    let (key, secret) = new_key(&a, "after-ingest", at(5_000));
    let key_audit = audit_entry("create", "api_key", &key.id.to_string(), key.created_at);
    store
        .create_api_key(&a, &key, &secret.hash(), &key_audit)
        .await
        .expect("create key");

    for (tenant, name, stored) in [
        (
            &a,
            "chain-a",
            [first.clone(), fresh, vec![key_audit]].concat(),
        ),
        (&b, "chain-b", [for_b, first[..3].to_vec()].concat()),
    ] {
        let links = whole_chain(store, tenant).await;
        let head = store.audit_chain_head(tenant).await.expect("head");
        assert_linked(name, &links, head);
        // Position 1 is the org's own creation; then everything in insertion order.
        assert_eq!(links[0].entry.resource_type, "org", "{name}");
        let chained: Vec<&AuditEntry> = links[1..].iter().map(|l| &l.entry).collect();
        let stored: Vec<&AuditEntry> = stored.iter().collect();
        assert_eq!(
            chained, stored,
            "{name}: every entry once, as written, in order"
        );

        let report = store.verify_audit_chain(tenant).await.expect("verify");
        assert!(report.ok, "{name}: {report:?}");
        assert_eq!(report.entries_checked, links.len() as u64, "{name}");
        assert_eq!(report.first_bad_id, None, "{name}");
        assert_eq!(report.head_hash, head.hash, "{name}");

        let mut listed = stored.into_iter().cloned().collect::<Vec<_>>();
        listed.push(links[0].entry.clone());
        newest_first(&mut listed);
        assert_eq!(
            store
                .list_audit_entries(tenant, &AuditFilter::default(), None, 200)
                .await
                .expect("audit")
                .items,
            listed,
            "{name}: the dialect lists what was chained"
        );
    }
    // An org without entries beyond its creation verifies too.
    let c = new_org(store, "chain-c").await;
    let report = store.verify_audit_chain(&c).await.expect("verify");
    assert!(report.ok && report.entries_checked == 1, "{report:?}");
}

/// Concurrent ingest calls and self-audited changes for the same orgs each extend their org's
/// chain exactly once: no two entries share a position and every link follows its
/// predecessor, whatever the interleaving.
pub async fn audit_chains_stay_linked_under_concurrent_writes(store: &dyn Store) {
    let orgs = [
        new_org(store, "race-a").await,
        new_org(store, "race-b").await,
    ];
    let batches = (0..24).map(|i| {
        let tenant = orgs[i % 2].clone();
        async move {
            let entries: Vec<AuditEntry> = (0..25)
                .map(|j| audit_entry("create", "destination", &format!("d{i}_{j}"), at(j)))
                .collect();
            store
                .insert_audit_entries(vec![AuditBatch { tenant, entries }])
                .await
                .expect("ingest audit")
                .accepted
        }
    });
    let keys = (0..12).map(|i| {
        let tenant = orgs[i % 2].clone();
        async move {
            let (key, secret) = new_key(&tenant, &format!("race{i}"), at(7));
            let audit = audit_entry("create", "api_key", &key.id.to_string(), at(7));
            store
                .create_api_key(&tenant, &key, &secret.hash(), &audit)
                .await
                .expect("create key");
            1
        }
    });
    let (ingested, created) = (join_all(batches), join_all(keys));
    let (ingested, created) = futures_join(ingested, created).await;
    assert_eq!(ingested.iter().sum::<u64>(), 24 * 25);
    assert_eq!(created.iter().sum::<u64>(), 12);
    for (tenant, name) in orgs.iter().zip(["race-a", "race-b"]) {
        let links = whole_chain(store, tenant).await;
        assert_eq!(links.len(), 1 + 12 * 25 + 6, "{name}");
        let head = store.audit_chain_head(tenant).await.expect("head");
        assert_linked(name, &links, head);
        let report = store.verify_audit_chain(tenant).await.expect("verify");
        assert!(report.ok, "{name}: {report:?}");
    }
}

/// Awaits two futures together.
async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    (ra.expect("ready"), rb.expect("ready"))
}

//! Stories: viewer tokens are stored by hash, authenticate to their own org until revoked,
//! are bounded per org; and the filters a viewer token forces read nothing they exclude.

use apitrail_model::{
    AuditFilter, LogFilter, PageRequest, PageStart, Secret, Sort, SortDir, SortKey, Tenant,
    Timestamp, ViewerFilter, ViewerKind, ViewerKinds, ViewerToken, new_record_id,
};
use apitrail_store::logstats::{GroupBy, Interval, StatsQuery};
use apitrail_store::{Store, ViewerCreated};

use crate::support::{LogGen, at, audit_entry, insert, new_org, reference};

fn token(tenant: &Tenant, created_at: Timestamp, ttl_ms: i64) -> (ViewerToken, Secret) {
    let token = ViewerToken {
        id: new_record_id(),
        org_id: tenant.org_id().clone(),
        kinds: [ViewerKind::RequestLogs, ViewerKind::AuditLog]
            .into_iter()
            .collect(),
        filter: ViewerFilter {
            user_id: Some("user_7".into()),
            api_key_id: None,
        },
        created_at,
        expires_at: created_at.add_millis(ttl_ms),
        revoked_at: None,
    };
    (token, Secret::generate_viewer())
}

async fn create(
    store: &dyn Store,
    tenant: &Tenant,
    token: &ViewerToken,
    secret: &Secret,
    max_live: u64,
) -> ViewerCreated {
    let audit = audit_entry(
        "create",
        "viewer_token",
        &token.id.to_string(),
        token.created_at,
    );
    store
        .create_viewer_token(tenant, token, &secret.hash(), &audit, max_live)
        .await
        .unwrap_or_else(|e| panic!("create_viewer_token failed: {e:?}"))
}

async fn audit_count(store: &dyn Store, tenant: &Tenant) -> usize {
    store
        .list_audit_entries(tenant, &AuditFilter::default(), None, 1_000)
        .await
        .expect("audit")
        .items
        .len()
}

/// Tokens authenticate to their own org with every field as stored until revoked (the
/// caller checks expiry); creating and revoking each append one audit entry, revoking again
/// appends none; another org can neither revoke nor count them; an org's live tokens are
/// bounded, and dead ones (expired, revoked) neither count nor stay.
pub async fn viewer_tokens_authenticate_until_revoked(store: &dyn Store) {
    let a = new_org(store, "viewer-a").await;
    let b = new_org(store, "viewer-b").await;
    let now = Timestamp::now();
    let (t1, s1) = token(&a, now, 3_600_000);
    let audit_before = audit_count(store, &a).await;
    assert_eq!(create(store, &a, &t1, &s1, 3).await, ViewerCreated::Created);
    assert_eq!(audit_count(store, &a).await, audit_before + 1);
    let (tenant, got) = store
        .authenticate_viewer(&s1.hash())
        .await
        .expect("authenticate")
        .expect("a live token authenticates");
    assert_eq!(tenant, a);
    assert_eq!(got, t1, "every field as stored");
    assert!(
        store
            .authenticate_viewer(&Secret::generate_viewer().hash())
            .await
            .expect("authenticate")
            .is_none()
    );
    assert_eq!(store.count_live_viewer_tokens(&a, now).await.unwrap(), 1);
    assert_eq!(store.count_live_viewer_tokens(&b, now).await.unwrap(), 0);

    // An expired token is still returned (the caller says "expired"), but is not live.
    let (t2, s2) = token(&a, now.add_millis(-7_200_000), 3_600_000);
    assert_eq!(create(store, &a, &t2, &s2, 3).await, ViewerCreated::Created);
    let (_, expired) = store
        .authenticate_viewer(&s2.hash())
        .await
        .unwrap()
        .expect("an unrevoked token is found");
    assert!(!expired.is_live(now));
    assert_eq!(store.count_live_viewer_tokens(&a, now).await.unwrap(), 1);

    // Another org's id names nothing.
    let entry = audit_entry("revoke", "viewer_token", &t1.id.to_string(), now);
    assert!(
        store
            .revoke_viewer_token(&b, t1.id, now, &entry)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .authenticate_viewer(&s1.hash())
            .await
            .unwrap()
            .is_some()
    );

    // The bound: two more live ones fit under 3, the next does not; nothing is stored then.
    let (t3, s3) = token(&a, now, 60_000);
    let (t4, s4) = token(&a, now, 60_000);
    let (t5, s5) = token(&a, now, 60_000);
    assert_eq!(create(store, &a, &t3, &s3, 3).await, ViewerCreated::Created);
    assert_eq!(create(store, &a, &t4, &s4, 3).await, ViewerCreated::Created);
    let audit_full = audit_count(store, &a).await;
    assert_eq!(create(store, &a, &t5, &s5, 3).await, ViewerCreated::TooMany);
    assert!(
        store
            .authenticate_viewer(&s5.hash())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(audit_count(store, &a).await, audit_full, "no audit entry");
    // The expired token was pruned by these creations.
    assert!(
        store
            .authenticate_viewer(&s2.hash())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count_live_viewer_tokens(&a, now).await.unwrap(), 3);
    // Org b's bound is its own.
    let (tb, sb) = token(&b, now, 60_000);
    assert_eq!(create(store, &b, &tb, &sb, 3).await, ViewerCreated::Created);

    // Revoking: audited once, then the token no longer authenticates or counts.
    let revoked = store
        .revoke_viewer_token(&a, t1.id, now, &entry)
        .await
        .unwrap()
        .expect("the org's token");
    assert_eq!(revoked.revoked_at, Some(now));
    assert_eq!(audit_count(store, &a).await, audit_full + 1);
    let again = audit_entry("revoke", "viewer_token", &t1.id.to_string(), now);
    assert!(
        store
            .revoke_viewer_token(&a, t1.id, now, &again)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(audit_count(store, &a).await, audit_full + 1, "revoked once");
    assert!(
        store
            .authenticate_viewer(&s1.hash())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count_live_viewer_tokens(&a, now).await.unwrap(), 2);
    // A revoked token frees its place.
    assert_eq!(create(store, &a, &t5, &s5, 3).await, ViewerCreated::Created);
    assert!(
        store
            .authenticate_viewer(&s5.hash())
            .await
            .unwrap()
            .is_some()
    );
    // An id never created names nothing.
    assert!(
        store
            .revoke_viewer_token(&a, new_record_id(), now, &again)
            .await
            .unwrap()
            .is_none()
    );
    let kinds: ViewerKinds = t5.kinds;
    assert!(kinds.contains(ViewerKind::AuditLog) && !kinds.contains(ViewerKind::ActionRecords));
}

/// A viewer's forced filter ANDed with a query's own: each backend reads exactly what the
/// reference semantics say, and a filter that excludes itself (two different api keys)
/// reads nothing on every read path (lists in every sort and by offset, stats from the
/// rollups and from the records); audit lists keep only the forced actor.
pub async fn viewer_filters_narrow_every_read(store: &dyn Store) {
    let a = new_org(store, "viewer-filters").await;
    let mut g = LogGen::new(71, "viewer");
    let logs = g.logs(600);
    insert(store, &a, &logs).await;
    let key = logs
        .iter()
        .find_map(|l| l.api_key_id.clone())
        .expect("the generator sets api keys");
    let user = logs
        .iter()
        .find_map(|l| l.user_id.clone())
        .expect("the generator sets users");
    let forced = ViewerFilter {
        user_id: Some(user.clone()),
        api_key_id: Some(key.clone()),
    };
    let other_key = LogFilter {
        api_key_id: Some(format!("{key}-other")),
        ..LogFilter::default()
    };
    let narrowed = forced.narrow_logs(LogFilter::default());
    let nothing = forced.narrow_logs(other_key);
    for sort_key in [SortKey::CreatedAt, SortKey::DurationMs, SortKey::StatusCode] {
        for dir in [SortDir::Asc, SortDir::Desc] {
            let sort = Sort { key: sort_key, dir };
            for start in [PageStart::First, PageStart::Offset(0)] {
                let page = PageRequest {
                    limit: 1_000,
                    start,
                };
                let got = store
                    .list_request_logs(&a, &narrowed, sort, page)
                    .await
                    .unwrap();
                let want = reference(&logs, &narrowed, sort);
                assert_eq!(
                    got.items.iter().map(|l| l.id).collect::<Vec<_>>(),
                    want.iter().map(|l| l.id).collect::<Vec<_>>(),
                    "{sort:?} {start:?}"
                );
                let none = store
                    .list_request_logs(&a, &nothing, sort, page)
                    .await
                    .unwrap();
                assert!(
                    none.items.is_empty() && !none.has_more,
                    "{sort:?} {start:?}"
                );
            }
        }
    }
    for filter in [&nothing, &{
        let mut f = LogFilter::default();
        f.match_nothing();
        f
    }] {
        for group_by in [None, Some(GroupBy::StatusCode), Some(GroupBy::UserId)] {
            let interval = Interval::D1;
            let q = StatsQuery {
                interval,
                from: interval.floor(at(-86_400_000).millis()),
                to: interval.ceil(at(86_400_000).millis()),
                group_by,
                limit: 100,
                filter: filter.clone(),
            };
            let answer = store.log_stats(&a, &q).await.unwrap();
            let total: u64 = answer.series.iter().map(|s| s.total.count).sum();
            assert_eq!(
                total, 0,
                "{group_by:?} from rollups: {}",
                answer.from_rollups
            );
        }
    }

    // Audit entries: only the forced actor's, in both walks.
    let mut entries = Vec::new();
    for (i, actor) in ["user_7", "user_8", "user_7"].into_iter().enumerate() {
        let mut e = audit_entry("create", "api_key", &format!("k{i}"), at(i as i64));
        e.user_id = Some(actor.into());
        entries.push(e);
    }
    store
        .insert_audit_entries(vec![apitrail_store::AuditBatch {
            tenant: a.clone(),
            entries: entries.clone(),
        }])
        .await
        .unwrap();
    let seven = ViewerFilter {
        user_id: Some("user_7".into()),
        api_key_id: None,
    };
    let f = seven.narrow_audit(AuditFilter::default());
    let listed = store.list_audit_entries(&a, &f, None, 100).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    assert!(listed.items.iter().all(|e| f.matches(e)));
    let links = store.list_audit_links(&a, &f, None, 100).await.unwrap();
    assert_eq!(links.items.len(), 2);
    let eight = ViewerFilter {
        user_id: Some("user_8".into()),
        api_key_id: None,
    };
    let both = eight.narrow_audit(f);
    assert!(
        store
            .list_audit_entries(&a, &both, None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        store
            .list_audit_links(&a, &both, None, 100)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

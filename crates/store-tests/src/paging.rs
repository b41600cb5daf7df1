//! Story: a client pages through an org's request logs with every filter and order.
//!
//! Thousands of logs with many ties on every sort key are generated from a seed, stored, and
//! every list the store returns is compared with the reference model.

use apitrail_model::{LogFilter, PageRequest, PageStart, Position, RequestLog, Tenant};
use apitrail_store::Store;
use uuid::Uuid;

use crate::support::{
    ALL_SORTS, API_KEY_IDS, BASE_MS, LogGen, MAX_MS, MIN_MS, assert_same_logs, expected_pages,
    insert_all_new, new_org, random_id, reference, ts, walk,
};

/// Two orgs' worth of logs, stored.
struct Corpus {
    a: Tenant,
    b: Tenant,
    logs_a: Vec<RequestLog>,
    logs_b: Vec<RequestLog>,
    generator: LogGen,
}

async fn corpus(store: &dyn Store, seed: u64, n_a: usize, n_b: usize) -> Corpus {
    let a = new_org(store, "paging-a").await;
    let b = new_org(store, "paging-b").await;
    let mut gen_b = LogGen::new(seed ^ 0xB, "b");
    let logs_b = gen_b.logs(n_b);
    let mut generator = LogGen::new(seed, "a");
    let mut logs_a = generator.logs(n_a);
    // A few of org b's ids reused in org a, so that a leak would show up as a wrong record
    // rather than only as an extra one.
    for (log, other) in logs_a.iter_mut().zip(logs_b.iter().step_by(50)) {
        log.id = other.id;
    }
    insert_all_new(store, &b, &logs_b, 1000).await;
    insert_all_new(store, &a, &logs_a, 700).await;
    Corpus {
        a,
        b,
        logs_a,
        logs_b,
        generator,
    }
}

/// Filters exercising each field alone, edge values and combinations, with values taken from
/// the data (so that boundaries fall exactly on stored values).
fn filters(logs: &[RequestLog], own_user_of_other_org: &str) -> Vec<LogFilter> {
    let none = LogFilter::default;
    // Stored instants in the dense window, to put `from`/`to` exactly on existing values.
    let mut instants: Vec<i64> = logs
        .iter()
        .map(|l| l.created_at.millis())
        .filter(|ms| (BASE_MS..BASE_MS + 1_000_000).contains(ms))
        .collect();
    instants.sort_unstable();
    let q = |f: usize| ts(instants[instants.len() * f / 8]);
    let text = |s: &str| Some(s.to_owned());
    vec![
        none(),
        LogFilter {
            method: text("GET"),
            ..none()
        },
        LogFilter {
            method: text("PROPFIND"),
            ..none()
        },
        LogFilter {
            method: text("TRACE"),
            ..none()
        },
        LogFilter {
            route_pattern: text("/v1/users/{id}"),
            ..none()
        },
        LogFilter {
            route_pattern: text("/nope/{id}"),
            ..none()
        },
        LogFilter {
            request_id: text("tok3"),
            ..none()
        },
        LogFilter {
            request_id: text("req_tok3"),
            ..none()
        },
        LogFilter {
            request_id: text("req_req_tok7"),
            ..none()
        },
        LogFilter {
            request_id: text("tok999"),
            ..none()
        },
        LogFilter {
            auth_type: text("session"),
            ..none()
        },
        LogFilter {
            status_min: Some(400),
            ..none()
        },
        LogFilter {
            status_max: Some(299),
            ..none()
        },
        LogFilter {
            status_min: Some(400),
            status_max: Some(499),
            ..none()
        },
        LogFilter {
            status_min: Some(404),
            status_max: Some(404),
            ..none()
        },
        LogFilter {
            status_min: Some(500),
            status_max: Some(400),
            ..none()
        },
        // A status range with filters that every per-status run must apply too.
        LogFilter {
            status_min: Some(400),
            from: Some(q(2)),
            to: Some(q(6)),
            ..none()
        },
        LogFilter {
            status_max: Some(404),
            api_key_id: text(API_KEY_IDS[0]),
            ..none()
        },
        LogFilter {
            from: Some(q(4)),
            ..none()
        },
        LogFilter {
            to: Some(q(4)),
            ..none()
        },
        LogFilter {
            from: Some(q(2)),
            to: Some(q(3)),
            ..none()
        },
        LogFilter {
            from: Some(q(5)),
            to: Some(q(5)),
            ..none()
        },
        LogFilter {
            from: Some(q(6)),
            to: Some(q(2)),
            ..none()
        },
        LogFilter {
            from: Some(ts(MIN_MS)),
            to: Some(ts(MAX_MS)),
            ..none()
        },
        LogFilter {
            to: Some(ts(0)),
            ..none()
        },
        LogFilter {
            api_key_id: text(API_KEY_IDS[1]),
            ..none()
        },
        LogFilter {
            service_account_id: text("sa_1"),
            ..none()
        },
        LogFilter {
            user_id: text("user_3"),
            ..none()
        },
        LogFilter {
            user_id: text(own_user_of_other_org),
            ..none()
        },
        LogFilter {
            email: text("someone@example.com"),
            ..none()
        },
        LogFilter {
            method: text("POST"),
            status_min: Some(400),
            status_max: Some(599),
            ..none()
        },
        LogFilter {
            auth_type: text("api_key"),
            user_id: text("user_2"),
            from: Some(q(1)),
            ..none()
        },
        LogFilter {
            route_pattern: text("/v1/orders"),
            request_id: text("tok11"),
            ..none()
        },
        LogFilter {
            method: text("GET"),
            from: Some(q(1)),
            to: Some(q(7)),
            status_min: Some(200),
            api_key_id: text(API_KEY_IDS[0]),
            ..none()
        },
    ]
}

/// Page sizes for a result of `n` items: small ones where the walk stays short, and the
/// edges where the result is exactly one page or one item more.
fn limits(n: usize) -> Vec<u32> {
    let mut out = vec![50];
    if n <= 400 {
        out.push(7);
    }
    if n <= 40 {
        out.push(1);
    }
    if n >= 1 {
        out.push(n as u32);
    }
    if n >= 2 {
        out.push(n as u32 - 1);
    }
    out.dedup();
    out
}

/// Keyset walks (`PageStart::After` the last item's position) over every order and many
/// filters return exactly the reference: every matching log once, in (key, id) order, and
/// `has_more` false exactly on the last page.
pub async fn keyset_walks_match_the_reference_model(store: &dyn Store) {
    let c = corpus(store, 0x0004_5EED, 2_000, 500).await;
    let filters = filters(&c.logs_a, "user_only_b");
    let mut nonempty = 0;
    for sort in ALL_SORTS {
        for filter in &filters {
            let expected = reference(&c.logs_a, filter, sort);
            nonempty += usize::from(!expected.is_empty());
            for limit in limits(expected.len()) {
                let ctx = format!("{filter:?} in {sort:?}, limit {limit}");
                let got = walk(store, &c.a, filter, sort, limit).await;
                assert_same_logs(&got.items, &expected, &ctx);
                assert_eq!(
                    got.pages,
                    expected_pages(expected.len(), limit),
                    "{ctx}: pages"
                );
            }
        }
        let expected = reference(&c.logs_b, &LogFilter::default(), sort);
        let got = walk(store, &c.b, &LogFilter::default(), sort, 50).await;
        assert_same_logs(&got.items, &expected, &format!("org b in {sort:?}"));
    }
    // Guard the fixture itself: most filters must select something, or the story proves little.
    assert!(
        nonempty >= ALL_SORTS.len() * (filters.len() - 9),
        "too many empty filters"
    );
}

/// `PageStart::Offset` pages are the corresponding slices of the reference.
pub async fn offset_pages_match_the_reference_model(store: &dyn Store) {
    let c = corpus(store, 0x000F_F5E7, 600, 100).await;
    let all = filters(&c.logs_a, "user_only_b");
    let chosen = [0, 1, 6, 11, 13, 18, 26, 27];
    for sort in ALL_SORTS {
        for filter in chosen.iter().map(|&i| &all[i]) {
            let expected = reference(&c.logs_a, filter, sort);
            let n = expected.len();
            for limit in [1u32, 7, 50] {
                let lim = limit as usize;
                let mut offsets: Vec<usize> = (0..=n).step_by(lim.max(n / 8).max(1)).collect();
                offsets.extend([1, 3, n.saturating_sub(1), n, n + 10]);
                for offset in offsets {
                    let page = store
                        .list_request_logs(
                            &c.a,
                            filter,
                            sort,
                            PageRequest {
                                limit,
                                start: PageStart::Offset(offset as u64),
                            },
                        )
                        .await
                        .expect("list");
                    let want = &expected[offset.min(n)..(offset + lim).min(n)];
                    let ctx = format!("{filter:?} in {sort:?}, limit {limit}, offset {offset}");
                    assert_same_logs(&page.items, want, &ctx);
                    assert_eq!(page.has_more, offset + lim < n, "{ctx}: has_more");
                }
            }
            // Offset 0 is the first page.
            let first = store
                .list_request_logs(&c.a, filter, sort, PageRequest::first(7))
                .await
                .expect("list");
            let zero = store
                .list_request_logs(
                    &c.a,
                    filter,
                    sort,
                    PageRequest {
                        limit: 7,
                        start: PageStart::Offset(0),
                    },
                )
                .await
                .expect("list");
            assert_eq!(first, zero, "offset 0 is the first page");
        }
    }
}

/// A keyset page may resume after any position, not only one of a listed record: a record
/// since deleted, one filtered out, one of another org, or the extremes of the key space.
pub async fn keyset_resumes_after_any_position(store: &dyn Store) {
    let mut c = corpus(store, 0x0000_A57E, 800, 200).await;
    let all = filters(&c.logs_a, "user_only_b");
    let chosen = [0, 1, 11, 18, 25];
    let rng = &mut c.generator.rng;
    for sort in ALL_SORTS {
        let mut positions: Vec<Position> = Vec::new();
        for log in c
            .logs_a
            .iter()
            .step_by(97)
            .chain(c.logs_b.iter().step_by(41))
        {
            positions.push(sort.position_of(log));
            // The same key with ids just around the record's.
            let id = log.id.as_u128();
            positions.push(Position {
                key: sort.key_of(log),
                id: Uuid::from_u128(id.wrapping_add(1)),
            });
            positions.push(Position {
                key: sort.key_of(log),
                id: Uuid::from_u128(id.wrapping_sub(1)),
            });
        }
        for key in [i64::MIN, -2, -1, 0, 1, 250, 404, BASE_MS + 200, i64::MAX] {
            for id in [Uuid::nil(), Uuid::max(), random_id(rng)] {
                positions.push(Position { key, id });
            }
        }
        for filter in chosen.iter().map(|&i| &all[i]) {
            let matching = reference(&c.logs_a, filter, sort);
            for pos in &positions {
                let expected: Vec<RequestLog> = matching
                    .iter()
                    .filter(|l| sort.before(pos, &sort.position_of(l)))
                    .take(20)
                    .cloned()
                    .collect();
                let remaining = matching
                    .iter()
                    .filter(|l| sort.before(pos, &sort.position_of(l)))
                    .count();
                let page = store
                    .list_request_logs(
                        &c.a,
                        filter,
                        sort,
                        PageRequest {
                            limit: 20,
                            start: PageStart::After(*pos),
                        },
                    )
                    .await
                    .expect("list");
                let ctx = format!("{filter:?} in {sort:?} after {pos:?}");
                assert_same_logs(&page.items, &expected, &ctx);
                assert_eq!(page.has_more, remaining > 20, "{ctx}: has_more");
            }
        }
    }
}

/// A filter on an API key, a service account or an email the org has never logged answers
/// empty (backends may answer it without reading the logs); one logged later, also in another
/// org first or by a retry, is found from then on; a value purged with its logs is simply
/// empty again.
pub async fn unseen_filter_values_are_empty_until_logged(store: &dyn Store) {
    use apitrail_model::Timestamp;

    let a = new_org(store, "values-a").await;
    let b = new_org(store, "values-b").await;
    let mut generator = LogGen::new(77, "v");
    let with = |log: &RequestLog, n: usize| RequestLog {
        api_key_id: Some(format!("key_{n}")),
        service_account_id: Some(format!("sa_{n}")),
        email: Some(format!("user{n}@example.com")),
        ..log.clone()
    };
    let filters = |n: usize| {
        [
            LogFilter {
                api_key_id: Some(format!("key_{n}")),
                ..LogFilter::default()
            },
            LogFilter {
                service_account_id: Some(format!("sa_{n}")),
                ..LogFilter::default()
            },
            LogFilter {
                email: Some(format!("user{n}@example.com")),
                ..LogFilter::default()
            },
        ]
    };
    let check = |tenant: &Tenant, n: usize, expected: Vec<RequestLog>, what: &'static str| {
        let tenant = tenant.clone();
        async move {
            for filter in filters(n) {
                for sort in ALL_SORTS {
                    let listed = walk(store, &tenant, &filter, sort, 3).await;
                    assert_same_logs(
                        &listed.items,
                        &reference(&expected, &filter, sort),
                        &format!("{what}: {filter:?} {sort:?}"),
                    );
                }
            }
        }
    };
    // Org b logs value 1 first: org a has still never logged it.
    let in_b: Vec<RequestLog> = generator.logs(4).iter().map(|l| with(l, 1)).collect();
    insert_all_new(store, &b, &in_b, 4).await;
    check(&a, 1, Vec::new(), "a value only another org logged").await;
    check(&b, 1, in_b.clone(), "the other org's own value").await;
    let first: Vec<RequestLog> = generator.logs(5).iter().map(|l| with(l, 1)).collect();
    insert_all_new(store, &a, &first, 2).await;
    check(&a, 1, first.clone(), "logged in a now").await;
    check(&a, 2, Vec::new(), "never logged").await;
    // A new value arriving in a later batch, next to known ones.
    let mut later: Vec<RequestLog> = generator.logs(3).iter().map(|l| with(l, 2)).collect();
    later.push(with(&generator.logs(1)[0], 1));
    insert_all_new(store, &a, &later, 4).await;
    check(&a, 2, later[..3].to_vec(), "logged later").await;
    let mut ones = first.clone();
    ones.push(later[3].clone());
    check(&a, 1, ones, "known value, more logs").await;
    // Purged with its logs, a value lists nothing (and is found again once logged anew).
    let cutoff = Timestamp::from_millis(MAX_MS).unwrap_or_else(Timestamp::now);
    store
        .purge_request_logs(&a, cutoff, 10_000)
        .await
        .unwrap_or_else(|e| panic!("purge failed: {e:?}"));
    check(&a, 1, Vec::new(), "after the purge").await;
}

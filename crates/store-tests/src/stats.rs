//! Story: the stats rollups, written with the records, agree with the records themselves.

use apitrail_model::{LogFilter, Tenant};
use apitrail_store::logstats::{Assembler, GroupBy, Interval, StatsQuery};
use apitrail_store::{StatsAnswer, Store};

use crate::support::{LogGen, at, insert, new_org};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// The answer to `q` computed from the org's records (the store's record-reading path),
/// which never touches the rollups.
async fn from_records(store: &dyn Store, tenant: &Tenant, q: &StatsQuery) -> StatsAnswer {
    let records = store
        .read_stats_records(tenant, &q.ranged_filter(), q.group_by, 1_000_000)
        .await
        .unwrap();
    let mut a = Assembler::new(q);
    for r in &records {
        a.add_record(r);
    }
    a.finish(false)
}

fn query(
    interval: Interval,
    from: i64,
    to: i64,
    group_by: Option<GroupBy>,
    filter: LogFilter,
) -> StatsQuery {
    StatsQuery {
        interval,
        from: interval.floor(at(from).millis()),
        to: interval.ceil(at(to).millis()),
        group_by,
        limit: 100,
        filter,
    }
}

/// Asserts that the rollups answer every rollup query exactly as the records do (the same
/// HDR bucketing on both sides, so even the percentiles are equal), and that the total count
/// is the reference model's. `logs` are the org's records, dated within days of `BASE_MS`.
pub async fn assert_stats_agree(
    store: &dyn Store,
    tenant: &Tenant,
    logs: &[apitrail_model::RequestLog],
    what: &str,
) {
    let filters = [
        LogFilter::default(),
        LogFilter {
            method: Some("GET".into()),
            ..LogFilter::default()
        },
        LogFilter {
            route_pattern: Some("/v1/users/{id}".into()),
            status_min: Some(400),
            ..LogFilter::default()
        },
    ];
    for interval in Interval::ALL {
        let span = match interval {
            Interval::M1 => (DAY, DAY + 6 * HOUR),
            Interval::M5 | Interval::M15 => (0, 3 * DAY),
            Interval::H1 | Interval::D1 => (-DAY, 5 * DAY),
        };
        for group_by in [
            None,
            Some(GroupBy::RoutePattern),
            Some(GroupBy::StatusCode),
            Some(GroupBy::StatusClass),
            Some(GroupBy::Method),
        ] {
            for filter in &filters {
                let q = query(interval, span.0, span.1, group_by, filter.clone());
                assert!(q.uses_rollups());
                let got = store.log_stats(tenant, &q).await.unwrap();
                assert!(got.from_rollups, "{what}: {q:?}");
                let want = from_records(store, tenant, &q).await;
                assert_eq!(got.series, want.series, "{what}: {q:?}");
                let ranged = q.ranged_filter();
                let total: u64 = got.series.iter().map(|s| s.total.count).sum();
                let expected = logs.iter().filter(|l| ranged.matches(l)).count() as u64;
                assert_eq!(total, expected, "{what}: {q:?} total");
            }
        }
    }
}

/// Rollups follow every write: many batches, re-sent duplicates (not counted twice), late
/// records into old buckets, another org's records (never counted), and retention (cells
/// wholly before the cutoff go with their records).
pub async fn stats_rollups_agree_with_the_records(store: &dyn Store) {
    let a = new_org(store, "stats-a").await;
    let b = new_org(store, "stats-b").await;
    let mut g = LogGen::new(0x57A75, "a");
    g.span_ms = 4 * DAY;
    let mut logs = g.logs(3_000);
    // The generator's sprinkle of extreme instants lies outside every range here; keep them.
    for part in logs.chunks(250) {
        insert(store, &a, part).await;
    }
    let again = insert(store, &a, &logs[..500]).await;
    assert_eq!(again.duplicates, 500);
    let mut other = LogGen::new(7, "b");
    other.span_ms = 4 * DAY;
    insert(store, &b, &other.logs(1_000)).await;
    // Late records: written now, dated in buckets that already have cells.
    let mut late = LogGen::new(0x1A7E, "a");
    late.span_ms = DAY;
    let late = late.logs(400);
    insert(store, &a, &late).await;
    logs.extend(late);
    assert_stats_agree(store, &a, &logs, "after the writes").await;

    // Retention at a day boundary: every level's cells before it go whole.
    let cutoff = at(2 * DAY);
    let cutoff = apitrail_store::logstats::Level::Day.bucket_of(cutoff.millis());
    let cutoff = apitrail_model::Timestamp::from_millis(cutoff).unwrap();
    while store.purge_request_logs(&a, cutoff, 1_000).await.unwrap() > 0 {}
    logs.retain(|l| l.created_at >= cutoff);
    assert_stats_agree(store, &a, &logs, "after retention").await;
}

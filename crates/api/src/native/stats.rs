//! `GET /v1/logs/stats` (SPEC §10): counts, error counts and latency percentiles of an org's
//! request logs per time bucket, optionally grouped.
//!
//! The store answers from its rollups when every filter and the grouping are rollup
//! dimensions (method, route pattern, status), and from the records otherwise; both reads
//! are bounded (`apitrail_store::logstats`). This module parses, aligns and prints.

use apitrail_model::{Scope, Timestamp};
use apitrail_store::logstats::{
    DEFAULT_SERIES, Figures, GroupBy, GroupValue, Interval, MAX_BUCKETS, MAX_SERIES, StatsError,
    StatsQuery,
};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authed;
use crate::error::{ApiError, Failure, Native, NativeErrorBody};
use crate::filters;
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;

/// Query parameters of `GET /v1/logs/stats` (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StatsParams {
    /// Bucket width: `1m`, `5m`, `15m`, `1h` (default) or `1d`. Buckets are aligned to the
    /// interval in UTC.
    #[param(schema_with = crate::openapi::stats_interval)]
    interval: Option<String>,
    /// Start of the range (RFC 3339 with offset), rounded down to a bucket start; default
    /// `to` less 24 hours (30 days for `1d`).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End of the range, exclusive (RFC 3339 with offset), rounded up to a bucket start;
    /// default now. At most 1,500 buckets from `from`.
    #[param(format = DateTime)]
    to: Option<String>,
    /// Group the series by `route_pattern`, `method`, `status_code`, `status_class`,
    /// `api_key_id`, `user_id` or `origin`; default one series of everything.
    #[param(schema_with = crate::openapi::stats_group_by)]
    group_by: Option<String>,
    /// The most series, largest first (1-100, default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// Request-log statistics over a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// The bucket width.
    interval: &'static str,
    /// The first bucket's start (the asked `from`, rounded down to the interval).
    #[schema(format = DateTime)]
    from: String,
    /// The end of the last bucket (the asked `to`, rounded up to the interval).
    #[schema(format = DateTime)]
    to: String,
    /// The grouping, or null.
    #[schema(nullable = true)]
    group_by: Option<&'static str>,
    /// The series, by count (largest first, ties by group), at most `limit`. Without
    /// `group_by` there is exactly one, with a null group.
    series: Vec<SeriesItem>,
}

/// One series: a group's totals and buckets.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesItem {
    /// The group's value: a string, a status code (`status_code`), or null (no grouping,
    /// or records without the grouped field).
    #[schema(value_type = Option<serde_json::Value>)]
    group: serde_json::Value,
    /// The figures over the whole range.
    total: FiguresItem,
    /// Every bucket of the range, oldest first, empty ones included.
    buckets: Vec<BucketItem>,
}

/// Counts and latency percentiles.
#[derive(Debug, Serialize, ToSchema)]
pub struct FiguresItem {
    /// Records (exact).
    count: u64,
    /// Records with a 4xx status (exact).
    errors_4xx: u64,
    /// Records with a 5xx status (exact).
    errors_5xx: u64,
    /// Median duration in ms, within 1% of the exact nearest-rank value; null when no
    /// record had a duration.
    #[schema(nullable = true)]
    p50_ms: Option<i64>,
    /// 90th percentile duration (as `p50_ms`).
    #[schema(nullable = true)]
    p90_ms: Option<i64>,
    /// 95th percentile duration (as `p50_ms`).
    #[schema(nullable = true)]
    p95_ms: Option<i64>,
    /// 99th percentile duration (as `p50_ms`).
    #[schema(nullable = true)]
    p99_ms: Option<i64>,
    /// The largest duration in ms (exact); null when no record had one.
    #[schema(nullable = true)]
    max_ms: Option<i64>,
}

/// A bucket: its start and figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketItem {
    /// The bucket's start (UTC, aligned to the interval).
    #[schema(format = DateTime)]
    start: String,
    #[serde(flatten)]
    figures: FiguresItem,
}

impl From<Figures> for FiguresItem {
    fn from(f: Figures) -> Self {
        let [p50_ms, p90_ms, p95_ms, p99_ms] = f.quantiles;
        Self {
            count: f.count,
            errors_4xx: f.errors_4xx,
            errors_5xx: f.errors_5xx,
            p50_ms,
            p90_ms,
            p95_ms,
            p99_ms,
            max_ms: f.max_ms,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    Timestamp::from_millis(ms)
        .map(Timestamp::to_rfc3339)
        .unwrap_or_default()
}

/// The query of `p`: the interval, the range aligned to it, the grouping and the filters.
fn query(p: &Params, now: Timestamp) -> Result<StatsQuery, ApiError> {
    let interval = p
        .choice("interval", Interval::parse, "1m, 5m, 15m, 1h, 1d")?
        .unwrap_or(Interval::H1);
    let group_by = p.choice(
        "group_by",
        GroupBy::parse,
        "route_pattern, method, status_code, status_class, api_key_id, user_id, origin",
    )?;
    let limit = p
        .int::<u32>("limit", 1..=MAX_SERIES)?
        .unwrap_or(DEFAULT_SERIES);
    let filter = filters::logs(p)?;
    let to = interval.ceil(filter.to.unwrap_or(now).millis());
    let default_span = match interval {
        Interval::D1 => 30 * Interval::D1.millis(),
        _ => 24 * Interval::H1.millis(),
    };
    let from = interval.floor(filter.from.map_or(to - default_span, Timestamp::millis));
    if from >= to {
        return Err(ApiError::param("from", "must be earlier than to"));
    }
    if (to - from) / interval.millis() > MAX_BUCKETS {
        return Err(ApiError::param(
            "from",
            format!(
                "and to span more than {MAX_BUCKETS} buckets of {}; narrow the range or use a \
                 longer interval",
                interval.as_str()
            ),
        ));
    }
    Ok(StatsQuery {
        interval,
        from,
        to,
        group_by,
        limit,
        filter,
    })
}

/// Get request-log statistics.
///
/// Per time bucket (aligned to the interval in UTC, empty buckets included): the number of
/// request logs, their 4xx and 5xx counts, p50/p90/p95/p99 and the largest duration, for
/// one series or one per group, with every filter of `GET /v1/logs`. Counts and `max_ms`
/// are exact; percentiles are within 1% of the exact nearest-rank value (values below
/// 256 ms are exact). Queries filtering or grouping only by method, route pattern and status
/// read rollups kept at ingest and are fast over any range; a `request_id` or `auth_type`
/// filter, or grouping by `api_key_id`, `user_id` or `origin`, reads the records and is
/// refused (400, naming `from`) when more than 1,000,000 records match.
#[utoipa::path(
    get,
    path = "/v1/logs/stats",
    tag = "stats",
    params(StatsParams, crate::filters::LogFilterParams),
    responses(
        (status = 200, description = "The statistics", body = Stats),
        (status = 400, description = "A parameter is malformed or out of range, or the range is too large", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn log_stats(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Stats>, Failure<Native>> {
    caller.require(Scope::Read)?;
    let p = Params::parse(raw.as_deref());
    let mut q = query(&p, Timestamp::now())?;
    q.filter = caller.narrow_logs(q.filter);
    let answer = match state.store().log_stats(&caller.tenant, &q).await {
        Ok(answer) => answer,
        Err(StatsError::TooLarge { max }) => {
            return Err(ApiError::param(
                "from",
                format!(
                    "and to hold more than {max} matching records, which this grouping or \
                     filter reads one by one; narrow the range"
                ),
            )
            .into());
        }
        Err(StatsError::Store(e)) => return Err(ApiError::from(e).into()),
    };
    let series = answer
        .series
        .into_iter()
        .map(|s| SeriesItem {
            group: match s.group {
                GroupValue::Null => serde_json::Value::Null,
                GroupValue::Code(c) => c.into(),
                GroupValue::Text(t) => t.into(),
            },
            total: s.total.into(),
            buckets: s
                .buckets
                .into_iter()
                .map(|(start, f)| BucketItem {
                    start: rfc3339(start),
                    figures: f.into(),
                })
                .collect(),
        })
        .collect();
    Ok(Json(Stats {
        interval: q.interval.as_str(),
        from: rfc3339(q.from),
        to: rfc3339(q.to),
        group_by: q.group_by.map(GroupBy::as_str),
        series,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<StatsQuery, ApiError> {
        let now = Timestamp::parse("2026-12-07T10:17:30Z").expect("time");
        query(&Params::parse(Some(q)), now)
    }

    #[test]
    fn the_range_is_aligned_outward_and_bounded() {
        let q = parse("interval=15m").expect("defaults");
        assert_eq!(rfc3339(q.to), "2026-12-07T10:30:00.000Z");
        assert_eq!(q.buckets(), 24 * 4, "the last 24 hours, aligned");
        let q = parse("interval=1d&from=2026-12-01T23:30:00%2B05:30&to=2026-12-03T00:00:00Z")
            .expect("offsets");
        assert_eq!(rfc3339(q.from), "2026-12-01T00:00:00.000Z");
        assert_eq!(q.buckets(), 2);
        let e = parse("interval=1m&from=2026-12-01T00:00:00Z&to=2026-12-03T00:00:00Z")
            .expect_err("too many buckets");
        assert_eq!(e.param.as_deref(), Some("from"));
        let e = parse("interval=2m").expect_err("interval");
        assert_eq!(e.param.as_deref(), Some("interval"));
        let e = parse("group_by=path").expect_err("group");
        assert_eq!(e.param.as_deref(), Some("group_by"));
        let e = parse("limit=101").expect_err("limit");
        assert_eq!(e.param.as_deref(), Some("limit"));
    }

    #[test]
    fn a_later_from_than_to_is_refused() {
        let e = parse("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z").expect_err("order");
        assert_eq!(e.param.as_deref(), Some("from"));
    }

    #[test]
    fn rollup_queries_are_recognised() {
        assert!(
            parse("group_by=status_class&method=get")
                .expect("q")
                .uses_rollups()
        );
        assert!(!parse("group_by=user_id").expect("q").uses_rollups());
        assert!(!parse("auth_type=jwt").expect("q").uses_rollups());
    }
}

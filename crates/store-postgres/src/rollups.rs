//! Stats rollups: written with the request logs they count, read by `GET /v1/logs/stats`.

use std::collections::HashMap;

use apitrail_model::LogFilter;
use apitrail_model::RequestLog;
use apitrail_model::query::request_id_variants;
use apitrail_store::logstats::{Bucket, Level, Rollups};
use apitrail_store::{GroupBy, RollupRead, RollupRow, StatsRecord, StoreError};

use crate::reader::{Reader, Sql};
use crate::{Args, params, push};

/// Adds the buckets of `rows` to the stored ones of `slot` (inside the caller's transaction).
pub(crate) async fn write(
    tx: &impl Sql,
    slot: i32,
    rows: &[(i64, &RequestLog)],
) -> Result<(), StoreError> {
    let mut rollups = Rollups::new();
    for (org, log) in rows {
        rollups.add(*org, log);
    }
    add(tx, slot, rollups).await
}

/// Adds `rollups` to the stored buckets of `slot`: the stored rows are locked and read in
/// key order, merged here, and written back with one statement.
pub(crate) async fn add(tx: &impl Sql, slot: i32, rollups: Rollups) -> Result<(), StoreError> {
    if rollups.is_empty() {
        return Ok(());
    }
    let buckets = rollups.into_sorted();
    let orgs: Vec<i64> = buckets.iter().map(|b| b.0.0).collect();
    let levels: Vec<i16> = buckets.iter().map(|b| b.0.1.code()).collect();
    let starts: Vec<i64> = buckets.iter().map(|b| b.0.2).collect();
    let stored = tx
        .rows(
            "SELECT r.org, r.level, r.bucket, r.cells \
               FROM request_log_rollups r \
               JOIN unnest($1::bigint[], $2::smallint[], $3::bigint[]) AS k (org, level, bucket) \
                 ON r.org = k.org AND r.level = k.level AND r.bucket = k.bucket AND r.slot = $4 \
              ORDER BY 1, 2, 3 \
                FOR UPDATE OF r",
            &[&orgs, &levels, &starts, &slot],
        )
        .await?;
    let mut old: HashMap<(i64, i16, i64), Bucket> = HashMap::with_capacity(stored.len());
    for r in &stored {
        let bucket = Bucket::decode(r.get::<_, &[u8]>(3)).map_err(StoreError::backend)?;
        old.insert((r.get(0), r.get(1), r.get(2)), bucket);
    }
    let mut values: [Vec<Vec<u8>>; 5] = Default::default();
    for ((org, level, start), mut bucket) in buckets {
        if let Some(stored) = old.get(&(org, level.code(), start)) {
            bucket.merge(stored);
        }
        for (column, value) in values.iter_mut().zip(bucket.encode().values) {
            column.push(value);
        }
    }
    let [total, routes, methods, statuses, cells] = &values;
    tx.exec(
        "INSERT INTO request_log_rollups (org, level, bucket, slot, total, routes, methods, \
            statuses, cells) \
         SELECT org, level, bucket, $4, total, routes, methods, statuses, cells \
           FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $5::bytea[], $6::bytea[], \
                       $7::bytea[], $8::bytea[], $9::bytea[]) \
                AS k (org, level, bucket, total, routes, methods, statuses, cells) \
         ON CONFLICT (org, level, bucket, slot) \
         DO UPDATE SET total = EXCLUDED.total, routes = EXCLUDED.routes, \
                       methods = EXCLUDED.methods, statuses = EXCLUDED.statuses, \
                       cells = EXCLUDED.cells",
        &[
            &orgs, &levels, &starts, &slot, total, routes, methods, statuses, cells,
        ],
    )
    .await?;
    Ok(())
}

/// Removes every bucket that lies wholly before `before` (retention), for one org or all.
pub(crate) async fn expire(c: &impl Sql, org: Option<i64>, before: i64) -> Result<(), StoreError> {
    for level in Level::ALL {
        let edge = before - level.millis();
        match org {
            Some(org) => {
                c.exec(
                    "DELETE FROM request_log_rollups WHERE org = $1 AND level = $2 AND bucket <= $3",
                    &[&org, &level.code(), &edge],
                )
                .await?
            }
            None => {
                c.exec(
                    "DELETE FROM request_log_rollups WHERE level = $1 AND bucket <= $2",
                    &[&level.code(), &edge],
                )
                .await?
            }
        };
    }
    Ok(())
}

/// The buckets `read` selects (every slot's), in bucket order.
pub(crate) async fn read(
    c: &Reader,
    org: i64,
    read: &RollupRead,
) -> Result<Vec<RollupRow>, StoreError> {
    let sql = format!(
        "SELECT bucket, {} FROM request_log_rollups \
          WHERE org = $1 AND level = $2 AND bucket >= $3 AND bucket < $4 \
          ORDER BY bucket LIMIT $5",
        read.part.column()
    );
    Ok(c.prepared(
        &sql,
        &[
            &org,
            &read.level.code(),
            &read.from,
            &read.to,
            &(i64::from(read.max_rows) + 1),
        ],
    )
    .await?
    .iter()
    .map(|r| RollupRow {
        bucket: r.get(0),
        body: r.get(1),
    })
    .collect())
}

/// The records a stats query reads itself (filters or grouping beyond the rollups).
pub(crate) async fn records(
    c: &Reader,
    org: i64,
    filter: &LogFilter,
    group: Option<GroupBy>,
    max: u32,
) -> Result<Vec<StatsRecord>, StoreError> {
    let column = match group {
        Some(g) if !g.in_rollups() => g.column(),
        _ => "NULL::text",
    };
    let mut args: Args = vec![Box::new(org)];
    let mut sql = format!(
        "SELECT created_at, status_code, duration_ms, route_pattern, method, {column} \
           FROM request_logs WHERE org = $1"
    );
    for (name, value) in [
        ("method", &filter.method),
        ("route_pattern", &filter.route_pattern),
        ("auth_type", &filter.auth_type),
        ("api_key_id", &filter.api_key_id),
        ("service_account_id", &filter.service_account_id),
        ("user_id", &filter.user_id),
        ("email", &filter.email),
    ] {
        if let Some(v) = value {
            sql.push_str(&format!(" AND {name} = {}", push(&mut args, v.clone())));
        }
    }
    if let Some(r) = &filter.request_id {
        let [a, b] = request_id_variants(r);
        let (a, b) = (push(&mut args, a), push(&mut args, b));
        sql.push_str(&format!(" AND request_id IN ({a}, {b})"));
    }
    if let Some(s) = filter.status_min {
        sql.push_str(&format!(
            " AND status_code >= {}",
            push(&mut args, i32::from(s))
        ));
    }
    if let Some(s) = filter.status_max {
        sql.push_str(&format!(
            " AND status_code <= {}",
            push(&mut args, i32::from(s))
        ));
    }
    if let Some(t) = filter.from {
        sql.push_str(&format!(
            " AND created_at >= {}",
            push(&mut args, t.millis())
        ));
    }
    if let Some(t) = filter.to {
        sql.push_str(&format!(
            " AND created_at < {}",
            push(&mut args, t.millis())
        ));
    }
    let limit = push(&mut args, i64::from(max) + 1);
    sql.push_str(&format!(" LIMIT {limit}"));
    // Not `prepared`: the plan depends on the range, which a cached generic plan ignores.
    Ok(c.client
        .rows(&sql, &params(&args))
        .await?
        .iter()
        .map(|r| StatsRecord {
            created_at: r.get(0),
            status_code: u16::try_from(r.get::<_, i32>(1)).unwrap_or(0),
            duration_ms: Some(r.get::<_, i64>(2)).filter(|d| *d >= 0),
            route_pattern: r.get(3),
            method: r.get(4),
            group: r.get(5),
        })
        .collect())
}

/// Migration 0011's code: the rollups of the logs already stored, one org and day at a time
/// so that memory holds one day's cells.
pub(crate) async fn backfill(tx: &impl Sql) -> Result<(), StoreError> {
    let days = tx
        .rows(
            "SELECT DISTINCT org, floor(created_at / 86400000.0)::bigint FROM request_logs \
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    for d in &days {
        let (org, day): (i64, i64) = (d.get(0), d.get(1));
        let lo = day * Level::Day.millis();
        let rows = tx
            .rows(
                "SELECT created_at, route_pattern, method, status_code, duration_ms \
                   FROM request_logs WHERE org = $1 AND created_at >= $2 AND created_at < $3",
                &[&org, &lo, &(lo + Level::Day.millis())],
            )
            .await?;
        let mut rollups = Rollups::new();
        for r in &rows {
            rollups.add_parts(
                org,
                r.get(0),
                r.get::<_, Option<&str>>(1),
                r.get(2),
                u16::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                Some(r.get::<_, i64>(4)).filter(|d| *d >= 0),
            );
        }
        add(tx, 0, rollups).await?;
    }
    Ok(())
}

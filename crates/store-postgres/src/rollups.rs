//! Stats rollups: written with the request logs they count, read by `GET /v1/logs/stats`.

use std::collections::HashMap;

use apitrail_model::LogFilter;
use apitrail_model::RequestLog;
use apitrail_model::query::request_id_variants;
use apitrail_store::logstats::{Cell, Level, Rollups, Sketch};
use apitrail_store::{GroupBy, RollupRead, RollupRow, StatsRecord, StoreError};
use tokio_postgres::Row;

use crate::reader::{Reader, Sql};
use crate::{Args, params, push};

type Key = (i64, i16, i64, String, String, i32);

/// Cell keys as column arrays, for `unnest`.
#[derive(Default)]
struct KeyColumns(
    Vec<i64>,
    Vec<i16>,
    Vec<i64>,
    Vec<String>,
    Vec<String>,
    Vec<i32>,
);

/// Adds the cells of `rows` to the stored ones of `slot` (inside the caller's transaction).
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

/// Adds `rollups` to the stored cells of `slot`: the stored cells are locked and read in key
/// order, merged here, and written back.
pub(crate) async fn add(tx: &impl Sql, slot: i32, rollups: Rollups) -> Result<(), StoreError> {
    if rollups.is_empty() {
        return Ok(());
    }
    let cells = rollups.into_sorted();
    let mut cols = KeyColumns::default();
    for ((org, k), _) in &cells {
        cols.0.push(*org);
        cols.1.push(k.level.code());
        cols.2.push(k.bucket);
        cols.3.push(k.route_pattern.clone());
        cols.4.push(k.method.clone());
        cols.5.push(i32::from(k.status_code));
    }
    let stored = tx
        .rows(
            "SELECT r.org, r.level, r.bucket, r.route_pattern, r.method, r.status_code, \
                    r.n, r.timed, r.max_ms, r.sketch \
               FROM request_log_rollups r \
               JOIN unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::text[], $5::text[], \
                           $6::int[]) AS k (org, level, bucket, route_pattern, method, status_code) \
                 ON r.org = k.org AND r.level = k.level AND r.bucket = k.bucket \
                AND r.route_pattern = k.route_pattern AND r.method = k.method \
                AND r.status_code = k.status_code AND r.slot = $7 \
              ORDER BY 1, 2, 3, 4, 5, 6 \
                FOR UPDATE OF r",
            &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &slot],
        )
        .await?;
    let mut old: HashMap<Key, Cell> = HashMap::with_capacity(stored.len());
    for r in &stored {
        let key: Key = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        old.insert(key, cell_of(r, 6)?);
    }
    let (mut ns, mut timed, mut max, mut sketches) = (
        Vec::with_capacity(cells.len()),
        Vec::with_capacity(cells.len()),
        Vec::with_capacity(cells.len()),
        Vec::with_capacity(cells.len()),
    );
    for (i, ((org, k), mut cell)) in cells.into_iter().enumerate() {
        let key: Key = (
            org,
            k.level.code(),
            k.bucket,
            cols.3[i].clone(),
            cols.4[i].clone(),
            cols.5[i],
        );
        if let Some(stored) = old.get(&key) {
            cell.merge(stored);
        }
        ns.push(cell.count as i64);
        timed.push(cell.timed as i64);
        max.push(cell.max_ms);
        sketches.push(cell.sketch.encode());
    }
    tx.exec(
        "INSERT INTO request_log_rollups (org, level, bucket, route_pattern, method, \
            status_code, slot, n, timed, max_ms, sketch) \
         SELECT org, level, bucket, route_pattern, method, status_code, $7, n, timed, max_ms, \
                sketch \
           FROM unnest($1::bigint[], $2::smallint[], $3::bigint[], $4::text[], $5::text[], \
                       $6::int[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bytea[]) \
                AS k (org, level, bucket, route_pattern, method, status_code, n, timed, max_ms, \
                      sketch) \
         ON CONFLICT (org, level, bucket, route_pattern, method, status_code, slot) \
         DO UPDATE SET n = EXCLUDED.n, timed = EXCLUDED.timed, max_ms = EXCLUDED.max_ms, \
                       sketch = EXCLUDED.sketch",
        &[
            &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &slot, &ns, &timed, &max,
            &sketches,
        ],
    )
    .await?;
    Ok(())
}

/// The cell in columns `at..at + 4` (n, timed, max_ms, sketch) of `r`.
fn cell_of(r: &Row, at: usize) -> Result<Cell, StoreError> {
    let mut sketch = Sketch::default();
    sketch
        .merge_encoded(r.get::<_, &[u8]>(at + 3))
        .map_err(StoreError::backend)?;
    Ok(Cell {
        count: u64::try_from(r.get::<_, i64>(at)).unwrap_or(0),
        timed: u64::try_from(r.get::<_, i64>(at + 1)).unwrap_or(0),
        max_ms: r.get(at + 2),
        sketch,
    })
}

/// Removes every cell whose whole bucket lies before `before` (retention), for one org or all.
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

/// The cells `read` selects (every slot's).
pub(crate) async fn read(
    c: &Reader,
    org: i64,
    read: &RollupRead,
) -> Result<Vec<RollupRow>, StoreError> {
    let mut args: Args = vec![Box::new(org)];
    let level = push(&mut args, read.level.code());
    let from = push(&mut args, read.from);
    let to = push(&mut args, read.to);
    let mut sql = format!(
        "SELECT bucket, route_pattern, method, status_code, n, timed, max_ms, sketch \
           FROM request_log_rollups \
          WHERE org = $1 AND level = {level} AND bucket >= {from} AND bucket < {to}"
    );
    if let Some(m) = &read.method {
        sql.push_str(&format!(" AND method = {}", push(&mut args, m.clone())));
    }
    if let Some(r) = &read.route_pattern {
        sql.push_str(&format!(
            " AND route_pattern = {}",
            push(&mut args, r.clone())
        ));
    }
    if let Some(s) = read.status_min {
        sql.push_str(&format!(
            " AND status_code >= {}",
            push(&mut args, i32::from(s))
        ));
    }
    if let Some(s) = read.status_max {
        sql.push_str(&format!(
            " AND status_code <= {}",
            push(&mut args, i32::from(s))
        ));
    }
    let limit = push(&mut args, i64::from(read.max_rows) + 1);
    sql.push_str(&format!(" LIMIT {limit}"));
    c.prepared(&sql, &params(&args))
        .await?
        .iter()
        .map(|r| {
            Ok(RollupRow {
                bucket: r.get(0),
                route_pattern: r.get(1),
                method: r.get(2),
                status_code: u16::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                count: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                timed: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
                max_ms: r.get(6),
                sketch: r.get(7),
            })
        })
        .collect()
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

//! Stats rollups: written with the request logs they count, read by `GET /v1/logs/stats`.

use apitrail_model::LogFilter;
use apitrail_store::logstats::{CellKey, Level, Rollups, Sketch};
use apitrail_store::{GroupBy, RollupRead, RollupRow, StatsRecord, StoreError};
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use crate::backend;
use crate::reader::Sql;
use crate::schema::MigrateError;

/// Registers `apitrail_sketch_merge(a, b)`: the encoded sum of two encoded sketches, so a
/// cell is added to with one UPSERT (a malformed stored sketch fails the write).
pub(crate) fn register_functions(conn: &Connection) -> Result<(), StoreError> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "apitrail_sketch_merge",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let mut sketch = Sketch::default();
            for i in 0..2 {
                let bytes = ctx
                    .get_raw(i)
                    .as_blob()
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
                sketch
                    .merge_encoded(bytes)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
            }
            Ok(sketch.encode())
        },
    )
    .map_err(backend)
}

/// Adds `rollups` to the stored cells (inside the caller's transaction).
pub(crate) fn write(conn: &Connection, rollups: Rollups) -> Result<(), StoreError> {
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO request_log_rollups (org, level, bucket, route_pattern, method, \
             status_code, n, timed, max_ms, sketch) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (org, level, bucket, route_pattern, method, status_code) DO UPDATE \
             SET n = n + excluded.n, timed = timed + excluded.timed, \
                 max_ms = max(max_ms, excluded.max_ms), \
                 sketch = apitrail_sketch_merge(sketch, excluded.sketch)",
        )
        .map_err(backend)?;
    for ((org, key), mut cell) in rollups.into_sorted() {
        let CellKey {
            level,
            bucket,
            route_pattern,
            method,
            status_code,
        } = key;
        upsert
            .execute(params![
                org,
                level.code(),
                bucket,
                route_pattern,
                method,
                status_code,
                cell.count as i64,
                cell.timed as i64,
                cell.max_ms,
                cell.sketch.encode(),
            ])
            .map_err(backend)?;
    }
    Ok(())
}

/// Removes the org's cells whose whole bucket lies before `before` (retention).
pub(crate) fn expire(conn: &Connection, org: i64, before: i64) -> Result<(), StoreError> {
    for level in Level::ALL {
        conn.exec(
            "DELETE FROM request_log_rollups WHERE org = ?1 AND level = ?2 AND bucket <= ?3",
            params![org, level.code(), before - level.millis()],
        )?;
    }
    Ok(())
}

/// The cells `read` selects.
pub(crate) fn read(
    conn: &Connection,
    org: i64,
    read: &RollupRead,
) -> Result<Vec<RollupRow>, StoreError> {
    let mut sql = String::from(
        "SELECT bucket, route_pattern, method, status_code, n, timed, max_ms, sketch \
         FROM request_log_rollups WHERE org = ?1 AND level = ?2 AND bucket >= ?3 AND bucket < ?4",
    );
    let mut args = vec![
        Value::Integer(org),
        Value::Integer(i64::from(read.level.code())),
        Value::Integer(read.from),
        Value::Integer(read.to),
    ];
    let mut cond = |c: &str, v: Value| {
        args.push(v);
        sql.push_str(&format!(" AND {c} ?{}", args.len()));
    };
    if let Some(m) = &read.method {
        cond("method =", Value::Text(m.clone()));
    }
    if let Some(r) = &read.route_pattern {
        cond("route_pattern =", Value::Text(r.clone()));
    }
    if let Some(s) = read.status_min {
        cond("status_code >=", Value::Integer(i64::from(s)));
    }
    if let Some(s) = read.status_max {
        cond("status_code <=", Value::Integer(i64::from(s)));
    }
    sql.push_str(&format!(" LIMIT {}", u64::from(read.max_rows) + 1));
    conn.all(&sql, params_from_iter(args), |r| {
        Ok(RollupRow {
            bucket: r.get(0)?,
            route_pattern: r.get(1)?,
            method: r.get(2)?,
            status_code: u16::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            count: r.get::<_, i64>(4)?.max(0) as u64,
            timed: r.get::<_, i64>(5)?.max(0) as u64,
            max_ms: r.get(6)?,
            sketch: r.get(7)?,
        })
    })
}

/// The records a stats query reads itself (filters or grouping beyond the rollups).
pub(crate) fn records(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    group: Option<GroupBy>,
    max: u32,
) -> Result<Vec<StatsRecord>, StoreError> {
    let column = match group {
        Some(g) if !g.in_rollups() => g.column(),
        _ => "NULL",
    };
    let mut sql = format!(
        "SELECT created_at, status_code, duration_ms, route_pattern, method, {column} \
         FROM request_logs WHERE org = ?1"
    );
    let mut args = vec![Value::Integer(org)];
    crate::request_logs::filter_sql(filter, "", &mut sql, &mut args);
    sql.push_str(&format!(" LIMIT {}", u64::from(max) + 1));
    conn.all(&sql, params_from_iter(args), |r| {
        Ok(StatsRecord {
            created_at: r.get(0)?,
            status_code: u16::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            duration_ms: Some(r.get::<_, i64>(2)?).filter(|d| *d >= 0),
            route_pattern: r.get(3)?,
            method: r.get(4)?,
            group: r.get(5)?,
        })
    })
}

/// Migration 0009's code: the rollups of the logs already stored, one org and day at a time
/// so that memory holds one day's cells.
pub(crate) fn backfill(conn: &Connection) -> Result<(), MigrateError> {
    let mut st = conn.prepare(
        "SELECT org, created_at, route_pattern, method, status_code, duration_ms \
         FROM request_logs ORDER BY org, created_at",
    )?;
    let mut rows = st.query([])?;
    let mut pending = Rollups::new();
    let mut current: Option<(i64, i64)> = None;
    while let Some(row) = rows.next()? {
        let org: i64 = row.get(0)?;
        let created: i64 = row.get(1)?;
        let day = Level::Day.bucket_of(created);
        if current.is_some_and(|c| c != (org, day)) {
            flush(conn, &mut pending)?;
        }
        current = Some((org, day));
        let route: Option<String> = row.get(2)?;
        let method: String = row.get(3)?;
        let status = u16::try_from(row.get::<_, i64>(4)?).unwrap_or(0);
        let duration = Some(row.get::<_, i64>(5)?).filter(|d| *d >= 0);
        pending.add_parts(org, created, route.as_deref(), &method, status, duration);
    }
    flush(conn, &mut pending)
}

fn flush(conn: &Connection, pending: &mut Rollups) -> Result<(), MigrateError> {
    let done = std::mem::take(pending);
    if done.is_empty() {
        return Ok(());
    }
    write(conn, done).map_err(|e| MigrateError::Backfill(e.to_string()))
}

//! Stats rollups: written with the request logs they count, read by `GET /v1/logs/stats`.

use std::cell::RefCell;

use apitrail_model::LogFilter;
use apitrail_store::logstats::{Bucket, Encoded, Level, Rollups};
use apitrail_store::{GroupBy, RollupRead, RollupRow, StatsRecord, StoreError};
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use crate::backend;
use crate::reader::Sql;
use crate::schema::MigrateError;

thread_local! {
    /// On the writer thread: the rollups of the job being applied.
    static STAGED: RefCell<Option<Rollups>> = const { RefCell::new(None) };
    /// On the writer thread: the rollups of the group's jobs that succeeded so far.
    static PENDING: RefCell<Option<Rollups>> = const { RefCell::new(None) };
}

/// Stages the rollups of the records the job being applied stored. The writer keeps them
/// when the job's savepoint is released ([`job_finished`]) and writes the group's, summed,
/// just before it commits ([`flush`]): a bucket that several calls of a group touch is
/// rewritten once, and always in the transaction of the records it counts.
pub(crate) fn stage(rollups: Rollups) {
    STAGED.with(|s| match &mut *s.borrow_mut() {
        Some(staged) => staged.merge(rollups),
        empty => *empty = Some(rollups),
    });
}

/// Keeps (`stored`) or drops the staged rollups of the job just applied.
pub(crate) fn job_finished(stored: bool) {
    let Some(staged) = STAGED.with(|s| s.borrow_mut().take()) else {
        return;
    };
    if stored {
        PENDING.with(|p| match &mut *p.borrow_mut() {
            Some(pending) => pending.merge(staged),
            empty => *empty = Some(staged),
        });
    }
}

/// Writes the group's rollups (inside its transaction, before COMMIT).
pub(crate) fn flush(conn: &Connection) -> Result<(), StoreError> {
    match PENDING.with(|p| p.borrow_mut().take()) {
        Some(pending) => write(conn, pending),
        None => Ok(()),
    }
}

/// Forgets what a failed group staged.
pub(crate) fn abandon() {
    STAGED.with(|s| s.borrow_mut().take());
    PENDING.with(|p| p.borrow_mut().take());
}

/// Adds `rollups` to the stored buckets (inside the caller's transaction): each touched
/// bucket is read, merged and written back, one row per org, level and bucket.
pub(crate) fn write(conn: &Connection, rollups: Rollups) -> Result<(), StoreError> {
    let mut read = conn
        .prepare_cached(
            "SELECT cells FROM request_log_rollups WHERE org = ?1 AND level = ?2 AND bucket = ?3",
        )
        .map_err(backend)?;
    let mut upsert = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO request_log_rollups (org, level, bucket, total, routes, \
             methods, statuses, cells) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(backend)?;
    for ((org, level, start), mut bucket) in rollups.into_sorted() {
        let mut rows = read
            .query(params![org, level.code(), start])
            .map_err(backend)?;
        if let Some(row) = rows.next().map_err(backend)? {
            let bytes = row.get_ref(0).and_then(|v| v.as_blob().map_err(Into::into));
            let stored = Bucket::decode(bytes.map_err(backend)?).map_err(StoreError::backend)?;
            bucket.merge(&stored);
        }
        drop(rows);
        let Encoded {
            values: [total, routes, methods, statuses, cells],
        } = bucket.encode();
        upsert
            .execute(params![
                org,
                level.code(),
                start,
                total,
                routes,
                methods,
                statuses,
                cells
            ])
            .map_err(backend)?;
    }
    Ok(())
}

/// Removes the org's buckets that lie wholly before `before` (retention).
pub(crate) fn expire(conn: &Connection, org: i64, before: i64) -> Result<(), StoreError> {
    for level in Level::ALL {
        conn.exec(
            "DELETE FROM request_log_rollups WHERE org = ?1 AND level = ?2 AND bucket <= ?3",
            params![org, level.code(), before - level.millis()],
        )?;
    }
    Ok(())
}

/// The buckets `read` selects, in bucket order.
pub(crate) fn read(
    conn: &Connection,
    org: i64,
    read: &RollupRead,
) -> Result<Vec<RollupRow>, StoreError> {
    let column = read.part.column();
    conn.all(
        &format!(
            "SELECT bucket, {column} FROM request_log_rollups \
             WHERE org = ?1 AND level = ?2 AND bucket >= ?3 AND bucket < ?4 ORDER BY bucket \
             LIMIT ?5"
        ),
        params![
            org,
            read.level.code(),
            read.from,
            read.to,
            i64::from(read.max_rows) + 1
        ],
        |r| {
            Ok(RollupRow {
                bucket: r.get(0)?,
                body: r.get(1)?,
            })
        },
    )
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
            backfill_flush(conn, &mut pending)?;
        }
        current = Some((org, day));
        let route: Option<String> = row.get(2)?;
        let method: String = row.get(3)?;
        let status = u16::try_from(row.get::<_, i64>(4)?).unwrap_or(0);
        let duration = Some(row.get::<_, i64>(5)?).filter(|d| *d >= 0);
        pending.add_parts(org, created, route.as_deref(), &method, status, duration);
    }
    backfill_flush(conn, &mut pending)
}

fn backfill_flush(conn: &Connection, pending: &mut Rollups) -> Result<(), MigrateError> {
    let done = std::mem::take(pending);
    if done.is_empty() {
        return Ok(());
    }
    write(conn, done).map_err(|e| MigrateError::Backfill(e.to_string()))
}

//! Leveled side keys: the orders on `duration_ms` and on `request_id`, kept outside SQLite's
//! own indexes.
//!
//! Both keys arrive in random order (durations are random, and many platforms mint random
//! request ids). A B-tree index on a random key dirties a different leaf page for almost every
//! record, and in WAL mode every dirty page is written out whole, twice (WAL, then checkpoint):
//! measured on the benchmark, these two indexes alone cut ingest by more than half once the
//! store holds a million rows. Here each key is instead spread over three tables (levels),
//! each clustered on `(org, k, id)` (`k` the key):
//!
//! - `l0` takes every insert; it is small (at most [`Caps::l0`] rows), so a group commit
//!   dirties few pages;
//! - `l1` receives all of `l0` at once in one sorted sweep when `l0` is full;
//! - `l2` receives `l1` in bounded chunks of its lowest keys when `l1` is full.
//!
//! Every move is one transaction, so a row sits in exactly one level at any moment: a query
//! unions the levels and sees it once. Sorted moves touch each destination page once per
//! sweep instead of once per record. The writer runs at most one bounded step after each
//! group commit ([`Levels::maintain`]), so no step stalls ingest for long.

use std::sync::atomic::{AtomicU64, Ordering};

use apitrail_store::StoreError;
use rusqlite::{Connection, ToSql, params};

use crate::backend;

/// A key kept in levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SideKey {
    /// `duration_ms` (`-1` when unknown), for `sort_by=duration_ms`.
    Duration,
    /// `request_id`, for the request id filter (logs without one are not listed).
    RequestId,
}

impl SideKey {
    pub const ALL: [SideKey; 2] = [SideKey::Duration, SideKey::RequestId];

    /// The tables of the levels, `l0` first.
    pub fn tables(self) -> [&'static str; 3] {
        match self {
            SideKey::Duration => [
                "request_logs_duration_l0",
                "request_logs_duration_l1",
                "request_logs_duration_l2",
            ],
            SideKey::RequestId => [
                "request_logs_request_id_l0",
                "request_logs_request_id_l1",
                "request_logs_request_id_l2",
            ],
        }
    }

    /// The column of `request_logs` the key comes from.
    pub fn column(self) -> &'static str {
        match self {
            SideKey::Duration => "duration_ms",
            SideKey::RequestId => "request_id",
        }
    }

    fn index(self) -> usize {
        match self {
            SideKey::Duration => 0,
            SideKey::RequestId => 1,
        }
    }
}

/// Level sizes that trigger moves.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Rows in `l0` before it moves into `l1`.
    pub l0: u64,
    /// Rows in `l1` before its lowest keys start moving into `l2`.
    pub l1: u64,
    /// Rows moved from `l1` to `l2` per step.
    pub chunk: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            l0: 32_768,
            l1: 524_288,
            chunk: 65_536,
        }
    }
}

/// Approximate row counts of every level of every side key. They only schedule moves;
/// queries never depend on them, so a count that drifts (a rolled-back insert) is harmless
/// and is corrected by the next move, which counts what it moved.
#[derive(Debug)]
pub(crate) struct Levels {
    counts: [[AtomicU64; 3]; 2],
    caps: Caps,
}

impl Levels {
    /// Counts what the levels hold (once, at start-up).
    pub fn load(conn: &Connection, caps: Caps) -> Result<Self, StoreError> {
        let levels = Self {
            counts: Default::default(),
            caps,
        };
        for key in SideKey::ALL {
            for (level, table) in key.tables().iter().enumerate() {
                let n: i64 = conn
                    .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                    .map_err(backend)?;
                levels.counts[key.index()][level].store(n.max(0) as u64, Ordering::Relaxed);
            }
        }
        Ok(levels)
    }

    /// Notes `n` rows added to `l0` of `key`.
    pub fn added(&self, key: SideKey, n: u64) {
        self.counts[key.index()][0].fetch_add(n, Ordering::Relaxed);
    }

    fn count(&self, key: SideKey, level: usize) -> u64 {
        self.counts[key.index()][level].load(Ordering::Relaxed)
    }

    /// Runs at most one bounded move, if one is due. Called by the writer between groups.
    pub fn maintain(&self, conn: &Connection) {
        for key in SideKey::ALL {
            let result = if self.count(key, 0) >= self.caps.l0 {
                self.move_all(conn, key)
            } else if self.count(key, 1) >= self.caps.l1 {
                self.move_chunk(conn, key)
            } else {
                continue;
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, key = key.column(), "side key move failed; it will be retried");
            }
            // One step per group keeps every pause short.
            return;
        }
    }

    /// Moves all of `l0` into `l1`.
    fn move_all(&self, conn: &Connection, key: SideKey) -> Result<(), StoreError> {
        let [l0, l1, _] = key.tables();
        let moved = in_transaction(conn, |conn| move_rows(conn, l0, l1, "", &[]))?;
        let counts = &self.counts[key.index()];
        counts[0].store(0, Ordering::Relaxed);
        counts[1].fetch_add(moved, Ordering::Relaxed);
        tracing::debug!(key = key.column(), moved, "l0 moved into l1");
        Ok(())
    }

    /// Moves the lowest `chunk` keys of `l1` into `l2`.
    fn move_chunk(&self, conn: &Connection, key: SideKey) -> Result<(), StoreError> {
        let [_, l1, l2] = key.tables();
        let chunk = self.caps.chunk.max(1);
        let moved = in_transaction(conn, |conn| {
            // The last key of the chunk bounds both statements, so exactly those rows move.
            let bound = conn.query_row(
                &format!("SELECT org, k, id FROM {l1} ORDER BY org, k, id LIMIT 1 OFFSET ?1"),
                [chunk as i64 - 1],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, rusqlite::types::Value>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            );
            match bound {
                Ok((org, k, id)) => move_rows(
                    conn,
                    l1,
                    l2,
                    " WHERE (org, k, id) <= (?1, ?2, ?3)",
                    params![org, k, id],
                ),
                // Fewer rows than a chunk: move them all.
                Err(rusqlite::Error::QueryReturnedNoRows) => move_rows(conn, l1, l2, "", &[]),
                Err(e) => Err(backend(e)),
            }
        })?;
        let counts = &self.counts[key.index()];
        counts[1].fetch_sub(
            moved.min(counts[1].load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        counts[2].fetch_add(moved, Ordering::Relaxed);
        tracing::debug!(key = key.column(), moved, "l1 chunk moved into l2");
        Ok(())
    }
}

/// Moves the rows of level table `from` that `filter` (a `WHERE` clause over `args`, or
/// nothing for all) selects into level table `to`, in key order; returns how many.
fn move_rows(
    conn: &Connection,
    from: &str,
    to: &str,
    filter: &str,
    args: &[&dyn ToSql],
) -> Result<u64, StoreError> {
    let n = conn
        .execute(
            &format!("INSERT INTO {to} SELECT * FROM {from}{filter} ORDER BY org, k, id"),
            args,
        )
        .map_err(backend)?;
    conn.execute(&format!("DELETE FROM {from}{filter}"), args)
        .map_err(backend)?;
    Ok(n as u64)
}

fn in_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("COMMIT").map_err(backend)?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

//! The live tail's reads: each org's records in the order they became visible.
//!
//! Request logs carry `tail_pos`, one database-wide counter taken by the writing transaction
//! (migration 0007). Audit entries use their chain position, which the same writer hands out
//! per org. SQLite runs one write transaction at a time, across processes too, so both follow
//! commit order, and every committed row is visible to the next read: the safe horizon is
//! simply what a read sees.

use apitrail_model::{AuditEntry, RequestLog};
use apitrail_store::{StoreError, TailKind, TailPosition, TailStart};
use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::reader::Sql;
use crate::{audit, request_logs};

/// Counter row of request logs in `tail_counters`.
const REQUEST_LOGS: i64 = 0;

/// The last request-log position handed out.
pub(crate) fn last_position(conn: &Connection) -> Result<i64, StoreError> {
    conn.one(
        "SELECT last FROM tail_counters WHERE kind = ?1",
        params![REQUEST_LOGS],
        |r| r.get(0),
    )
}

/// Records `last` as the last request-log position handed out.
pub(crate) fn set_last_position(conn: &Connection, last: i64) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE tail_counters SET last = ?2 WHERE kind = ?1",
        params![REQUEST_LOGS, last],
    )
    .map(drop)
}

/// Where a tail that starts now starts: after everything committed so far.
pub(crate) fn start(conn: &Connection, org: i64, kind: TailKind) -> Result<TailStart, StoreError> {
    let minor = match kind {
        TailKind::RequestLogs => last_position(conn)?,
        TailKind::AuditEntries => conn.one(
            "SELECT coalesce(max(chain_pos), 0) FROM audit_entries WHERE org = ?1",
            params![org],
            |r| r.get(0),
        )?,
    };
    Ok(TailStart {
        after: TailPosition::new(0, minor),
        stored_before: None,
    })
}

/// The position of the org's record `id`.
pub(crate) fn position(
    conn: &Connection,
    org: i64,
    kind: TailKind,
    id: Uuid,
) -> Result<Option<TailPosition>, StoreError> {
    let sql = match kind {
        TailKind::RequestLogs => "SELECT tail_pos FROM request_logs WHERE org = ?1 AND id = ?2",
        TailKind::AuditEntries => "SELECT chain_pos FROM audit_entries WHERE org = ?1 AND id = ?2",
    };
    let pos: Option<Option<i64>> = conn.opt(sql, params![org, id.as_bytes()], |r| r.get(0))?;
    Ok(pos.flatten().map(|p| TailPosition::new(0, p)))
}

/// The org's request logs after `after`, in position order.
pub(crate) fn request_logs(
    conn: &Connection,
    org: i64,
    after: TailPosition,
    limit: u32,
) -> Result<Vec<(TailPosition, RequestLog)>, StoreError> {
    conn.all(
        &format!(
            "SELECT {}, tail_pos FROM request_logs INDEXED BY request_logs_by_tail \
             WHERE org = ?1 AND tail_pos > ?2 AND tail_pos IS NOT NULL \
             ORDER BY tail_pos LIMIT ?3",
            request_logs::COLUMNS
        ),
        params![org, after.minor, limit],
        |r| {
            let log = request_logs::from_row(org, r)?;
            let pos: i64 = r.get(31)?;
            Ok((TailPosition::new(0, pos), log))
        },
    )
}

/// The org's audit entries after `after`, in chain order.
pub(crate) fn audit_entries(
    conn: &Connection,
    org: i64,
    after: TailPosition,
    limit: u32,
) -> Result<Vec<(TailPosition, AuditEntry)>, StoreError> {
    conn.all(
        &format!(
            "SELECT {}, chain_pos FROM audit_entries WHERE org = ?1 AND chain_pos > ?2 \
             ORDER BY chain_pos LIMIT ?3",
            audit::ENTRY_COLUMNS
        ),
        params![org, after.minor, limit],
        |r| {
            let entry = audit::entry_from_row(r)?;
            let pos: i64 = r.get(9)?;
            Ok((TailPosition::new(0, pos), entry))
        },
    )
}

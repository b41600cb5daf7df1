//! Audit entries: chained inserts (self-audit and ingest), the audit dialect's list, and chain
//! reads for `verify`. Only the writer thread inserts, which serializes each org's chain.

use std::fmt::Write as _;

use apitrail_model::{AuditAfter, AuditEntry, AuditFilter, ChainHash, ChainHead, ChainLink, OrgId};
use apitrail_store::{AuditBatch, InsertOutcome, Page, StoreError};
use rusqlite::types::{Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::backend;
use crate::reader::Sql;
use crate::rows::{corrupt, ts, uuid_col};
use crate::schema::MigrateError;

/// The columns [`entry_from_row`] reads, in its order.
pub(crate) const ENTRY_COLUMNS: &str =
    "id, created_at, user_id, action, resource_type, resource_id, details, ip_address, request_id";

pub(crate) fn entry_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: uuid_col(r, 0)?,
        created_at: ts(r.get(1)?)?,
        user_id: r.get(2)?,
        action: r.get(3)?,
        resource_type: r.get(4)?,
        resource_id: r.get(5)?,
        details: r.get(6)?,
        ip_address: r.get(7)?,
        request_id: r.get(8)?,
    })
}

/// The org's text id, which the chain hashes (the integer key is this file's business only).
fn org_id(conn: &Connection, org: i64) -> rusqlite::Result<OrgId> {
    let id: String = conn
        .prepare_cached("SELECT id FROM orgs WHERE seq = ?1")?
        .query_row([org], |r| r.get(0))?;
    OrgId::parse(&id).map_err(|e| corrupt(0, Type::Text, e))
}

/// Chain positions are stored as SQLite integers; no chain reaches 2^63 entries.
fn sql_pos(p: u64) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

/// A stored position; a negative one (an edited row) reads as one that never matches.
fn read_pos(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A stored hash; anything but 32 bytes (an edited row) reads as all ones, which never
/// matches, so `verify` reports the entry instead of failing.
fn hash_col(r: &Row<'_>, i: usize) -> rusqlite::Result<ChainHash> {
    // Read as any type: a value of another type (an edited row) must not stop `verify`.
    Ok(match r.get::<_, Value>(i)? {
        Value::Blob(b) => ChainHash::try_from(b.as_slice()).unwrap_or([0xff; 32]),
        _ => [0xff; 32],
    })
}

fn head(conn: &Connection, org: i64) -> rusqlite::Result<ChainHead> {
    let found = conn
        .prepare_cached("SELECT entries, hash FROM audit_heads WHERE org = ?1")?
        .query_row([org], |r| {
            Ok(ChainHead {
                entries: read_pos(r.get(0)?),
                hash: hash_col(r, 1)?,
            })
        })
        .optional()?;
    Ok(found.unwrap_or(ChainHead::EMPTY))
}

fn store_head(conn: &Connection, org: i64, head: &ChainHead) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit_heads (org, entries, hash) VALUES (?1, ?2, ?3) \
         ON CONFLICT (org) DO UPDATE SET entries = excluded.entries, hash = excluded.hash",
    )?
    .execute(params![org, sql_pos(head.entries), head.hash])?;
    Ok(())
}

/// Appends `entries` to the org's chain, skipping ids the org already has; returns how many
/// were stored.
fn append(conn: &Connection, org: i64, entries: &[AuditEntry]) -> rusqlite::Result<u64> {
    let org_id = org_id(conn, org)?;
    let mut current = head(conn, org)?;
    let mut st = conn.prepare_cached(
        "INSERT INTO audit_entries (org, id, created_at, user_id, action, resource_type, \
         resource_id, details, ip_address, request_id, chain_pos, prev_hash, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
         ON CONFLICT (org, id) DO NOTHING",
    )?;
    let mut stored = 0;
    for e in entries {
        let (next, link) = current.append(&org_id, e.clone());
        let inserted = st.execute(params![
            org,
            e.id.as_bytes(),
            e.created_at.millis(),
            e.user_id,
            e.action,
            e.resource_type,
            e.resource_id,
            e.details,
            e.ip_address,
            e.request_id,
            sql_pos(link.position),
            link.prev_hash,
            link.hash,
        ])?;
        if inserted > 0 {
            current = next;
            stored += 1;
        }
    }
    if stored > 0 {
        store_head(conn, org, &current)?;
    }
    Ok(stored)
}

/// Writes one self-audit entry beside the change it records (same transaction).
pub(crate) fn insert_one(conn: &Connection, org: i64, e: &AuditEntry) -> Result<(), StoreError> {
    append(conn, org, std::slice::from_ref(e))
        .map(drop)
        .map_err(backend)
}

/// Stores ingested entries, each batch appended to its org's chain in order.
pub(crate) fn insert(
    conn: &Connection,
    batches: &[AuditBatch],
) -> Result<InsertOutcome, StoreError> {
    let mut outcome = InsertOutcome::default();
    for b in batches {
        let stored = append(conn, b.tenant.key(), &b.entries).map_err(backend)?;
        outcome.accepted += stored;
        outcome.duplicates += b.entries.len() as u64 - stored;
    }
    Ok(outcome)
}

pub(crate) fn list(
    conn: &Connection,
    org: i64,
    filter: &AuditFilter,
    after: Option<AuditAfter>,
    limit: u32,
) -> Result<Page<AuditEntry>, StoreError> {
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE org = ?1");
    let mut args: Vec<Value> = vec![Value::Integer(org)];
    for (column, value) in [
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
        ("action", &filter.action),
    ] {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            let _ = write!(sql, " AND {column} = ?{}", args.len());
        }
    }
    for v in &filter.user_ids {
        args.push(Value::Text(v.clone()));
        let _ = write!(sql, " AND user_id = ?{}", args.len());
    }
    if let Some(a) = after {
        args.push(Value::Integer(a.created_at.millis()));
        args.push(Value::Blob(a.id.as_bytes().to_vec()));
        let _ = write!(
            sql,
            " AND (created_at, id) < (?{}, ?{})",
            args.len() - 1,
            args.len()
        );
    }
    args.push(Value::Integer(i64::from(limit) + 1));
    let _ = write!(
        sql,
        " ORDER BY created_at DESC, id DESC LIMIT ?{}",
        args.len()
    );
    let items = conn.all(&sql, params_from_iter(args), entry_from_row)?;
    Ok(Page::from_lookahead(items, limit))
}

/// The org's stored chain head.
pub(crate) fn chain_head(conn: &Connection, org: i64) -> Result<ChainHead, StoreError> {
    head(conn, org).map_err(backend)
}

/// Links after position `after`, exactly as stored (verification must see what is on disk).
pub(crate) fn chain(
    conn: &Connection,
    org: i64,
    after: u64,
    limit: u32,
) -> Result<Vec<ChainLink>, StoreError> {
    conn.all(
        &format!(
            "SELECT {ENTRY_COLUMNS}, chain_pos, prev_hash, hash FROM audit_entries \
             WHERE org = ?1 AND chain_pos > ?2 ORDER BY chain_pos LIMIT ?3"
        ),
        params![org, sql_pos(after), limit],
        link_from_row,
    )
}

/// A row of `{ENTRY_COLUMNS}, chain_pos, prev_hash, hash`.
fn link_from_row(r: &Row<'_>) -> rusqlite::Result<ChainLink> {
    Ok(ChainLink {
        entry: entry_from_row(r)?,
        position: match r.get::<_, Value>(9)? {
            Value::Integer(p) => read_pos(p),
            _ => u64::MAX,
        },
        prev_hash: hash_col(r, 10)?,
        hash: hash_col(r, 11)?,
    })
}

/// Entries with their chain fields, oldest first (`created_at`, id), after `after`.
pub(crate) fn list_links(
    conn: &Connection,
    org: i64,
    filter: &AuditFilter,
    after: Option<AuditAfter>,
    limit: u32,
) -> Result<Page<ChainLink>, StoreError> {
    let mut sql = format!(
        "SELECT {ENTRY_COLUMNS}, chain_pos, prev_hash, hash FROM audit_entries WHERE org = ?1"
    );
    let mut args: Vec<Value> = vec![Value::Integer(org)];
    for (column, value) in [
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
        ("action", &filter.action),
    ] {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            let _ = write!(sql, " AND {column} = ?{}", args.len());
        }
    }
    for v in &filter.user_ids {
        args.push(Value::Text(v.clone()));
        let _ = write!(sql, " AND user_id = ?{}", args.len());
    }
    if let Some(a) = after {
        args.push(Value::Integer(a.created_at.millis()));
        args.push(Value::Blob(a.id.as_bytes().to_vec()));
        let _ = write!(
            sql,
            " AND (created_at, id) > (?{}, ?{})",
            args.len() - 1,
            args.len()
        );
    }
    args.push(Value::Integer(i64::from(limit) + 1));
    let _ = write!(sql, " ORDER BY created_at, id LIMIT ?{}", args.len());
    let items = conn.all(&sql, params_from_iter(args), link_from_row)?;
    Ok(Page::from_lookahead(items, limit))
}

/// One entry with its chain fields.
pub(crate) fn get_link(
    conn: &Connection,
    org: i64,
    id: uuid::Uuid,
) -> Result<Option<ChainLink>, StoreError> {
    let mut links = conn.all(
        &format!(
            "SELECT {ENTRY_COLUMNS}, chain_pos, prev_hash, hash FROM audit_entries \
             WHERE org = ?1 AND id = ?2"
        ),
        params![org, id.as_bytes()],
        link_from_row,
    )?;
    Ok(links.pop())
}

/// Migration step: links entries written before the chain existed, per org in insertion
/// order.
pub(crate) fn link_unchained(conn: &Connection) -> Result<(), MigrateError> {
    let orgs: Vec<i64> = conn
        .prepare("SELECT DISTINCT org FROM audit_entries WHERE chain_pos IS NULL")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for org in orgs {
        let org_id = org_id(conn, org)?;
        let rows: Vec<(i64, AuditEntry)> = conn
            .prepare(&format!(
                "SELECT {ENTRY_COLUMNS}, seq FROM audit_entries \
                 WHERE org = ?1 AND chain_pos IS NULL ORDER BY seq"
            ))?
            .query_map([org], |r| Ok((r.get(9)?, entry_from_row(r)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut current = head(conn, org)?;
        let mut update = conn.prepare(
            "UPDATE audit_entries SET chain_pos = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
        )?;
        for (seq, entry) in rows {
            let (next, link) = current.append(&org_id, entry);
            update.execute(params![
                seq,
                sql_pos(link.position),
                link.prev_hash,
                link.hash
            ])?;
            current = next;
        }
        store_head(conn, org, &current)?;
    }
    Ok(())
}

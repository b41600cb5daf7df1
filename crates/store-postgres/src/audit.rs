//! Audit entries: chained appends, the audit dialect's list, chain reads for `verify`.
//!
//! An append locks the org's head row for the rest of its transaction, so each org's chain
//! grows one writer at a time across every server sharing the database.

use apitrail_model::{AuditAfter, AuditEntry, AuditFilter, ChainHash, ChainHead, ChainLink, OrgId};
use apitrail_store::{Page, StoreError};
use tokio_postgres::Row;

use crate::reader::Sql;
use crate::rows::ts;
use crate::{Args, params, push};

pub(crate) const ENTRY_COLUMNS: &str =
    "id, created_at, user_id, action, resource_type, resource_id, details, ip_address, request_id";

pub(crate) fn entry_from_row(r: &Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: r.get(0),
        created_at: ts(r.get(1))?,
        user_id: r.get(2),
        action: r.get(3),
        resource_type: r.get(4),
        resource_id: r.get(5),
        details: r.get(6),
        ip_address: r.get(7),
        request_id: r.get(8),
    })
}

/// A stored hash; anything but 32 bytes (an edited row) reads as all ones, which never
/// matches, so `verify` reports the entry instead of failing.
fn hash_col(r: &Row, i: usize) -> ChainHash {
    r.get::<_, Option<&[u8]>>(i)
        .and_then(|b| ChainHash::try_from(b).ok())
        .unwrap_or([0xff; 32])
}

/// Positions are bigint; no chain reaches 2^63 entries, and a negative (edited) one reads as
/// a position that never matches.
fn read_pos(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn sql_pos(p: u64) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

/// Appends `entries` to the org's chain in order, skipping ids the org already has; returns
/// how many were stored. Must run inside a transaction (the head stays locked until it ends).
pub(crate) async fn append(
    tx: &impl Sql,
    org: i64,
    org_id: &OrgId,
    entries: &[AuditEntry],
) -> Result<u64, StoreError> {
    tx.exec(
        "INSERT INTO audit_heads (org, entries, hash) VALUES ($1, 0, $2) ON CONFLICT (org) DO NOTHING",
        &[&org, &ChainHead::EMPTY.hash.as_slice()],
    )
    .await?;
    let row = tx
        .row(
            "SELECT entries, hash FROM audit_heads WHERE org = $1 FOR UPDATE",
            &[&org],
        )
        .await?;
    let mut current = ChainHead {
        entries: read_pos(row.get(0)),
        hash: hash_col(&row, 1),
    };
    // Ids the org already has are skipped (idempotent ingest); the head lock keeps any other
    // writer of this org out until commit, so the check cannot race.
    let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.id).collect();
    let mut seen: std::collections::HashSet<uuid::Uuid> = tx
        .rows(
            "SELECT id FROM audit_entries WHERE org = $1 AND id = ANY($2)",
            &[&org, &ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut links = Vec::with_capacity(entries.len());
    for e in entries {
        if seen.insert(e.id) {
            let (next, link) = current.append(org_id, e.clone());
            current = next;
            links.push(link);
        }
    }
    let stored = links.len() as u64;
    if stored > 0 {
        fn col<T>(links: &[ChainLink], f: impl Fn(&ChainLink) -> T) -> Vec<T> {
            links.iter().map(f).collect()
        }
        tx.exec(
            "INSERT INTO audit_entries (org, id, created_at, user_id, action, resource_type, \
             resource_id, details, ip_address, request_id, chain_pos, prev_hash, hash) \
             SELECT $1, * FROM unnest($2::uuid[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], \
             $12::bytea[], $13::bytea[])",
            &[
                &org,
                &col(&links, |l| l.entry.id),
                &col(&links, |l| l.entry.created_at.millis()),
                &col(&links, |l| l.entry.user_id.clone()),
                &col(&links, |l| l.entry.action.clone()),
                &col(&links, |l| l.entry.resource_type.clone()),
                &col(&links, |l| l.entry.resource_id.clone()),
                &col(&links, |l| l.entry.details.clone()),
                &col(&links, |l| l.entry.ip_address.clone()),
                &col(&links, |l| l.entry.request_id.clone()),
                &col(&links, |l| sql_pos(l.position)),
                &col(&links, |l| l.prev_hash.to_vec()),
                &col(&links, |l| l.hash.to_vec()),
            ],
        )
        .await?;
    }
    if stored > 0 {
        tx.exec(
            "UPDATE audit_heads SET entries = $2, hash = $3 WHERE org = $1",
            &[&org, &sql_pos(current.entries), &current.hash.as_slice()],
        )
        .await?;
    }
    Ok(stored)
}

pub(crate) async fn list(
    c: &impl Sql,
    org: i64,
    filter: &AuditFilter,
    after: Option<AuditAfter>,
    limit: u32,
) -> Result<Page<AuditEntry>, StoreError> {
    let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE org = $1");
    let mut args: Args = vec![Box::new(org)];
    for (column, value) in [
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
        ("action", &filter.action),
    ] {
        if let Some(v) = value {
            let p = push(&mut args, v.clone());
            sql.push_str(&format!(" AND {column} = {p}"));
        }
    }
    for v in &filter.user_ids {
        let p = push(&mut args, v.clone());
        sql.push_str(&format!(" AND user_id = {p}"));
    }
    if let Some(a) = after {
        let (t, id) = (
            push(&mut args, a.created_at.millis()),
            push(&mut args, a.id),
        );
        sql.push_str(&format!(" AND (created_at, id) < ({t}, {id})"));
    }
    let n = push(&mut args, i64::from(limit) + 1);
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {n}"));
    let items = c.all(&sql, &params(&args), entry_from_row).await?;
    Ok(Page::from_lookahead(items, limit))
}

pub(crate) async fn head(c: &impl Sql, org: i64) -> Result<ChainHead, StoreError> {
    let row = c
        .opt_row(
            "SELECT entries, hash FROM audit_heads WHERE org = $1",
            &[&org],
        )
        .await?;
    Ok(row.map_or(ChainHead::EMPTY, |r| ChainHead {
        entries: read_pos(r.get(0)),
        hash: hash_col(&r, 1),
    }))
}

pub(crate) async fn chain(
    c: &impl Sql,
    org: i64,
    after: u64,
    limit: u32,
) -> Result<Vec<ChainLink>, StoreError> {
    c.all(
        &format!(
            "SELECT {ENTRY_COLUMNS}, chain_pos, prev_hash, hash FROM audit_entries \
             WHERE org = $1 AND chain_pos > $2 ORDER BY chain_pos LIMIT $3"
        ),
        &[&org, &sql_pos(after), &i64::from(limit)],
        link_from_row,
    )
    .await
}

/// A row of `{ENTRY_COLUMNS}, chain_pos, prev_hash, hash`.
fn link_from_row(r: &Row) -> Result<ChainLink, StoreError> {
    Ok(ChainLink {
        entry: entry_from_row(r)?,
        position: read_pos(r.get(9)),
        prev_hash: hash_col(r, 10),
        hash: hash_col(r, 11),
    })
}

/// Entries with their chain fields, oldest first (`created_at`, id), after `after`.
pub(crate) async fn list_links(
    c: &impl Sql,
    org: i64,
    filter: &AuditFilter,
    after: Option<AuditAfter>,
    limit: u32,
) -> Result<Page<ChainLink>, StoreError> {
    let mut sql = format!(
        "SELECT {ENTRY_COLUMNS}, chain_pos, prev_hash, hash FROM audit_entries WHERE org = $1"
    );
    let mut args: Args = vec![Box::new(org)];
    for (column, value) in [
        ("resource_type", &filter.resource_type),
        ("resource_id", &filter.resource_id),
        ("action", &filter.action),
    ] {
        if let Some(v) = value {
            let p = push(&mut args, v.clone());
            sql.push_str(&format!(" AND {column} = {p}"));
        }
    }
    for v in &filter.user_ids {
        let p = push(&mut args, v.clone());
        sql.push_str(&format!(" AND user_id = {p}"));
    }
    if let Some(a) = after {
        let (t, id) = (
            push(&mut args, a.created_at.millis()),
            push(&mut args, a.id),
        );
        sql.push_str(&format!(" AND (created_at, id) > ({t}, {id})"));
    }
    let n = push(&mut args, i64::from(limit) + 1);
    sql.push_str(&format!(" ORDER BY created_at, id LIMIT {n}"));
    let items = c.all(&sql, &params(&args), link_from_row).await?;
    Ok(Page::from_lookahead(items, limit))
}

/// One entry with its chain fields.
pub(crate) async fn get_link(
    c: &impl Sql,
    org: i64,
    id: uuid::Uuid,
) -> Result<Option<ChainLink>, StoreError> {
    let mut links = c
        .all(
            &format!(
                "SELECT {ENTRY_COLUMNS}, chain_pos, prev_hash, hash FROM audit_entries \
                 WHERE org = $1 AND id = $2"
            ),
            &[&org, &id],
            link_from_row,
        )
        .await?;
    Ok(links.pop())
}

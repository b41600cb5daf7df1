//! Orgs and API keys (each change with its audit entry, see `audit.rs`).

use apitrail_model::{
    ApiKey, AuditEntry, Org, OrgId, PrincipalType, Scopes, SecretHash, Tenant, Timestamp,
    ViewerFilter, ViewerKinds, ViewerToken,
};
use apitrail_store::{Page, StoreError, ViewerCreated};
use rusqlite::{Connection, Row, params};
use uuid::Uuid;

use crate::reader::Sql;
use crate::rows::{bad_text, opt_ts, org_id_col, ts, uuid_col};

pub(crate) fn insert_org(
    conn: &Connection,
    org: &Org,
    audit: &AuditEntry,
) -> Result<Tenant, StoreError> {
    let inserted = conn.exec(
        "INSERT INTO orgs (id, name, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
        params![org.id.as_str(), org.name, org.created_at.millis()],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict("an org with this id"));
    }
    let key = conn.last_insert_rowid();
    crate::audit::insert_one(conn, key, audit)?;
    Ok(Tenant::from_store(key, org.id.clone()))
}

fn org_from_row(row: &Row<'_>) -> rusqlite::Result<Org> {
    Ok(Org {
        id: org_id_col(row, 0)?,
        name: row.get(1)?,
        created_at: ts(row.get(2)?)?,
    })
}

pub(crate) fn list_orgs(
    conn: &Connection,
    after: Option<&OrgId>,
    limit: u32,
) -> Result<Page<Org>, StoreError> {
    let items = conn.all(
        "SELECT id, name, created_at FROM orgs WHERE id > ?1 ORDER BY id LIMIT ?2",
        params![after.map_or("", |a| a.as_str()), i64::from(limit) + 1],
        org_from_row,
    )?;
    Ok(Page::from_lookahead(items, limit))
}

pub(crate) fn find_tenant(conn: &Connection, id: &OrgId) -> Result<Option<Tenant>, StoreError> {
    conn.opt("SELECT seq FROM orgs WHERE id = ?1", [id.as_str()], |r| {
        Ok(Tenant::from_store(r.get(0)?, id.clone()))
    })
}

pub(crate) fn get_org(conn: &Connection, key: i64) -> Result<Org, StoreError> {
    conn.one(
        "SELECT id, name, created_at FROM orgs WHERE seq = ?1",
        [key],
        org_from_row,
    )
}

const KEY_COLUMNS: &str = "k.id, k.name, k.scopes, k.principal_type, k.principal_id, k.user_id, \
     k.email, k.service_account_id, k.created_at, k.last_used_at, k.revoked_at";

fn key_from_row(row: &Row<'_>, org_id: OrgId) -> rusqlite::Result<ApiKey> {
    let principal: String = row.get(3)?;
    let principal_type = PrincipalType::parse(&principal)
        .ok_or_else(|| bad_text(3, format!("unknown principal type {principal:?}")))?;
    Ok(ApiKey {
        id: uuid_col(row, 0)?,
        org_id,
        name: row.get(1)?,
        scopes: Scopes::from_bits(row.get(2)?),
        principal_type,
        principal_id: row.get(4)?,
        user_id: row.get(5)?,
        email: row.get(6)?,
        service_account_id: row.get(7)?,
        created_at: ts(row.get(8)?)?,
        last_used_at: opt_ts(row, 9)?,
        revoked_at: opt_ts(row, 10)?,
    })
}

pub(crate) fn insert_key(
    conn: &Connection,
    org: i64,
    key: &ApiKey,
    hash: &SecretHash,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let inserted = conn.exec(
        "INSERT INTO api_keys (id, org, secret_hash, name, scopes, principal_type, principal_id, \
             user_id, email, service_account_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
        params![
            key.id.as_bytes(),
            org,
            hash.0,
            key.name,
            key.scopes.bits(),
            key.principal_type.as_str(),
            key.principal_id,
            key.user_id,
            key.email,
            key.service_account_id,
            key.created_at.millis(),
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict("an API key with this id or secret"));
    }
    crate::audit::insert_one(conn, org, audit)
}

pub(crate) fn list_keys(conn: &Connection, tenant: &Tenant) -> Result<Vec<ApiKey>, StoreError> {
    conn.all(
        &format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org = ?1 ORDER BY k.created_at, k.id"
        ),
        [tenant.key()],
        |r| key_from_row(r, tenant.org_id().clone()),
    )
}

pub(crate) fn get_key(
    conn: &Connection,
    tenant: &Tenant,
    id: Uuid,
) -> Result<Option<ApiKey>, StoreError> {
    conn.opt(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org = ?1 AND k.id = ?2"),
        params![tenant.key(), id.as_bytes()],
        |r| key_from_row(r, tenant.org_id().clone()),
    )
}

pub(crate) fn revoke_key(
    conn: &Connection,
    tenant: &Tenant,
    id: Uuid,
    at: Timestamp,
    audit: &AuditEntry,
) -> Result<Option<ApiKey>, StoreError> {
    let changed = conn.exec(
        "UPDATE api_keys SET revoked_at = ?3 WHERE org = ?1 AND id = ?2 AND revoked_at IS NULL",
        params![tenant.key(), id.as_bytes(), at.millis()],
    )?;
    if changed > 0 {
        crate::audit::insert_one(conn, tenant.key(), audit)?;
    }
    get_key(conn, tenant, id)
}

pub(crate) fn authenticate(
    conn: &Connection,
    hash: &SecretHash,
) -> Result<Option<(Tenant, ApiKey)>, StoreError> {
    conn.opt(
        &format!(
            "SELECT {KEY_COLUMNS}, o.seq, o.id FROM api_keys k JOIN orgs o ON o.seq = k.org \
         WHERE k.secret_hash = ?1 AND k.revoked_at IS NULL"
        ),
        [hash.0],
        |r| {
            let org_id = org_id_col(r, 12)?;
            let key = key_from_row(r, org_id.clone())?;
            Ok((Tenant::from_store(r.get(11)?, org_id), key))
        },
    )
}

pub(crate) fn touch_keys(conn: &Connection, used: &[(Uuid, Timestamp)]) -> Result<(), StoreError> {
    for (id, at) in used {
        conn.exec(
            "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?2) WHERE id = ?1",
            params![id.as_bytes(), at.millis()],
        )?;
    }
    Ok(())
}

const VIEWER_COLUMNS: &str =
    "v.id, v.kinds, v.user_id, v.api_key_id, v.created_at, v.expires_at, v.revoked_at";

fn viewer_from_row(row: &Row<'_>, org_id: OrgId) -> rusqlite::Result<ViewerToken> {
    Ok(ViewerToken {
        id: uuid_col(row, 0)?,
        org_id,
        kinds: ViewerKinds::from_bits(row.get(1)?),
        filter: ViewerFilter {
            user_id: row.get(2)?,
            api_key_id: row.get(3)?,
        },
        created_at: ts(row.get(4)?)?,
        expires_at: ts(row.get(5)?)?,
        revoked_at: opt_ts(row, 6)?,
    })
}

/// Prunes the org's dead tokens, then stores `token` unless `max_live` are live.
pub(crate) fn insert_viewer(
    conn: &Connection,
    org: i64,
    token: &ViewerToken,
    hash: &SecretHash,
    audit: &AuditEntry,
    max_live: u64,
) -> Result<ViewerCreated, StoreError> {
    let now = token.created_at.millis();
    conn.exec(
        "DELETE FROM viewer_tokens WHERE org = ?1 AND (expires_at <= ?2 OR revoked_at IS NOT NULL)",
        params![org, now],
    )?;
    let live: i64 = conn.one(
        "SELECT count(*) FROM viewer_tokens WHERE org = ?1 AND expires_at > ?2",
        params![org, now],
        |r| r.get(0),
    )?;
    if u64::try_from(live).unwrap_or(0) >= max_live {
        return Ok(ViewerCreated::TooMany);
    }
    let inserted = conn.exec(
        "INSERT INTO viewer_tokens (id, org, secret_hash, kinds, user_id, api_key_id, \
             created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        params![
            token.id.as_bytes(),
            org,
            hash.0,
            token.kinds.bits(),
            token.filter.user_id,
            token.filter.api_key_id,
            now,
            token.expires_at.millis(),
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::Conflict(
            "a viewer token with this id or secret",
        ));
    }
    crate::audit::insert_one(conn, org, audit)?;
    Ok(ViewerCreated::Created)
}

pub(crate) fn get_viewer(
    conn: &Connection,
    tenant: &Tenant,
    id: Uuid,
) -> Result<Option<ViewerToken>, StoreError> {
    conn.opt(
        &format!("SELECT {VIEWER_COLUMNS} FROM viewer_tokens v WHERE v.org = ?1 AND v.id = ?2"),
        params![tenant.key(), id.as_bytes()],
        |r| viewer_from_row(r, tenant.org_id().clone()),
    )
}

pub(crate) fn revoke_viewer(
    conn: &Connection,
    tenant: &Tenant,
    id: Uuid,
    at: Timestamp,
    audit: &AuditEntry,
) -> Result<Option<ViewerToken>, StoreError> {
    let changed = conn.exec(
        "UPDATE viewer_tokens SET revoked_at = ?3 WHERE org = ?1 AND id = ?2 AND revoked_at IS NULL",
        params![tenant.key(), id.as_bytes(), at.millis()],
    )?;
    if changed > 0 {
        crate::audit::insert_one(conn, tenant.key(), audit)?;
    }
    get_viewer(conn, tenant, id)
}

pub(crate) fn authenticate_viewer(
    conn: &Connection,
    hash: &SecretHash,
) -> Result<Option<(Tenant, ViewerToken)>, StoreError> {
    conn.opt(
        &format!(
            "SELECT {VIEWER_COLUMNS}, o.seq, o.id FROM viewer_tokens v JOIN orgs o ON o.seq = v.org \
             WHERE v.secret_hash = ?1 AND v.revoked_at IS NULL"
        ),
        [hash.0],
        |r| {
            let org_id = org_id_col(r, 8)?;
            let token = viewer_from_row(r, org_id.clone())?;
            Ok((Tenant::from_store(r.get(7)?, org_id), token))
        },
    )
}

pub(crate) fn count_live_viewers(
    conn: &Connection,
    org: i64,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let n: i64 = conn.one(
        "SELECT count(*) FROM viewer_tokens WHERE org = ?1 AND expires_at > ?2 \
         AND revoked_at IS NULL",
        params![org, now.millis()],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

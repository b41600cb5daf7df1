//! Orgs and API keys.

use apitrail_model::{
    ApiKey, Org, OrgId, PrincipalType, Scopes, SecretHash, Tenant, Timestamp, ViewerFilter,
    ViewerKinds, ViewerToken,
};
use apitrail_store::{Page, StoreError, ViewerCreated};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::reader::Sql;
use crate::rows::{corrupt, org_id, ts};

pub(crate) async fn insert_org(tx: &impl Sql, org: &Org) -> Result<Tenant, StoreError> {
    let row = tx
        .opt_row(
            "INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING RETURNING seq",
            &[&org.id.as_str(), &org.name, &org.created_at.millis()],
        )
        .await?;
    match row {
        Some(r) => Ok(Tenant::from_store(r.get(0), org.id.clone())),
        None => Err(StoreError::Conflict("an org with this id")),
    }
}

fn org_from_row(r: &Row) -> Result<Org, StoreError> {
    Ok(Org {
        id: org_id(r.get(0))?,
        name: r.get(1),
        created_at: ts(r.get(2))?,
    })
}

pub(crate) async fn list_orgs(
    c: &impl Sql,
    after: Option<&OrgId>,
    limit: u32,
) -> Result<Page<Org>, StoreError> {
    let items = c
        .all(
            "SELECT id, name, created_at FROM orgs WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after.map_or("", |a| a.as_str()), &(i64::from(limit) + 1)],
            org_from_row,
        )
        .await?;
    Ok(Page::from_lookahead(items, limit))
}

pub(crate) async fn find_tenant(c: &impl Sql, id: &OrgId) -> Result<Option<Tenant>, StoreError> {
    let row = c
        .opt_row("SELECT seq FROM orgs WHERE id = $1", &[&id.as_str()])
        .await?;
    Ok(row.map(|r| Tenant::from_store(r.get(0), id.clone())))
}

pub(crate) async fn get_org(c: &impl Sql, key: i64) -> Result<Org, StoreError> {
    let row = c
        .row(
            "SELECT id, name, created_at FROM orgs WHERE seq = $1",
            &[&key],
        )
        .await?;
    org_from_row(&row)
}

const KEY_COLUMNS: &str = "k.id, k.name, k.scopes, k.principal_type, k.principal_id, k.user_id, \
     k.email, k.service_account_id, k.created_at, k.last_used_at, k.revoked_at";

fn key_from_row(r: &Row, org_id: OrgId) -> Result<ApiKey, StoreError> {
    let principal: &str = r.get(3);
    let principal_type = PrincipalType::parse(principal)
        .ok_or_else(|| corrupt(format!("unknown principal type {principal:?}")))?;
    let scopes: i64 = r.get(2);
    Ok(ApiKey {
        id: r.get(0),
        org_id,
        name: r.get(1),
        scopes: Scopes::from_bits(
            u8::try_from(scopes).map_err(|_| corrupt(format!("scopes {scopes}")))?,
        ),
        principal_type,
        principal_id: r.get(4),
        user_id: r.get(5),
        email: r.get(6),
        service_account_id: r.get(7),
        created_at: ts(r.get(8))?,
        last_used_at: r.get::<_, Option<i64>>(9).map(ts).transpose()?,
        revoked_at: r.get::<_, Option<i64>>(10).map(ts).transpose()?,
    })
}

pub(crate) async fn insert_key(
    tx: &impl Sql,
    org: i64,
    key: &ApiKey,
    hash: &SecretHash,
) -> Result<(), StoreError> {
    // The hash is unique in practice but not by index (see the schema), so check it here.
    let taken = tx
        .opt_row(
            "SELECT 1 FROM api_keys WHERE secret_hash = $1 OR (org = $2 AND id = $3)",
            &[&hash.0.as_slice(), &org, &key.id],
        )
        .await?;
    if taken.is_some() {
        return Err(StoreError::Conflict("an API key with this id or secret"));
    }
    tx.exec(
        "INSERT INTO api_keys (org, id, secret_hash, name, scopes, principal_type, principal_id, \
         user_id, email, service_account_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &org,
            &key.id,
            &hash.0.as_slice(),
            &key.name,
            &i64::from(key.scopes.bits()),
            &key.principal_type.as_str(),
            &key.principal_id,
            &key.user_id,
            &key.email,
            &key.service_account_id,
            &key.created_at.millis(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn list_keys(c: &impl Sql, tenant: &Tenant) -> Result<Vec<ApiKey>, StoreError> {
    c.all(
        &format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org = $1 ORDER BY k.created_at, k.id"
        ),
        &[&tenant.key()],
        |r| key_from_row(r, tenant.org_id().clone()),
    )
    .await
}

pub(crate) async fn get_key(
    c: &impl Sql,
    tenant: &Tenant,
    id: Uuid,
) -> Result<Option<ApiKey>, StoreError> {
    let row = c
        .opt_row(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.org = $1 AND k.id = $2"),
            &[&tenant.key(), &id],
        )
        .await?;
    row.map(|r| key_from_row(&r, tenant.org_id().clone()))
        .transpose()
}

/// Revokes the key if live; `true` when this call revoked it.
pub(crate) async fn revoke_key(
    tx: &impl Sql,
    org: i64,
    id: Uuid,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let changed = tx
        .exec(
            "UPDATE api_keys SET revoked_at = $3 WHERE org = $1 AND id = $2 AND revoked_at IS NULL",
            &[&org, &id, &at.millis()],
        )
        .await?;
    Ok(changed > 0)
}

pub(crate) async fn authenticate(
    c: &impl Sql,
    hash: &SecretHash,
) -> Result<Option<(Tenant, ApiKey)>, StoreError> {
    let row = c
        .opt_row(
            &format!(
                "SELECT {KEY_COLUMNS}, o.seq, o.id FROM api_keys k JOIN orgs o ON o.seq = k.org \
                 WHERE k.secret_hash = $1 AND k.revoked_at IS NULL"
            ),
            &[&hash.0.as_slice()],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let org = org_id(r.get(12))?;
    let key = key_from_row(&r, org.clone())?;
    Ok(Some((Tenant::from_store(r.get(11), org), key)))
}

pub(crate) async fn touch_keys(c: &impl Sql, used: &[(Uuid, Timestamp)]) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = used.iter().map(|(id, _)| *id).collect();
    let ats: Vec<i64> = used.iter().map(|(_, at)| at.millis()).collect();
    c.exec(
        "UPDATE api_keys k SET last_used_at = greatest(coalesce(k.last_used_at, 0), u.at) \
         FROM unnest($1::uuid[], $2::bigint[]) AS u(id, at) WHERE k.id = u.id",
        &[&ids, &ats],
    )
    .await?;
    Ok(())
}

const VIEWER_COLUMNS: &str =
    "v.id, v.kinds, v.user_id, v.api_key_id, v.created_at, v.expires_at, v.revoked_at";

fn viewer_from_row(r: &Row, org_id: OrgId) -> Result<ViewerToken, StoreError> {
    let kinds: i64 = r.get(1);
    Ok(ViewerToken {
        id: r.get(0),
        org_id,
        kinds: ViewerKinds::from_bits(
            u8::try_from(kinds).map_err(|_| corrupt(format!("viewer kinds {kinds}")))?,
        ),
        filter: ViewerFilter {
            user_id: r.get(2),
            api_key_id: r.get(3),
        },
        created_at: ts(r.get(4))?,
        expires_at: ts(r.get(5))?,
        revoked_at: r.get::<_, Option<i64>>(6).map(ts).transpose()?,
    })
}

/// Prunes the org's dead tokens, then stores `token` unless `max_live` are live. The org's
/// row is locked (`FOR NO KEY UPDATE`, which key-sharing inserts of other tables do not
/// wait for) so that concurrent creations of one org count one after the other.
pub(crate) async fn insert_viewer(
    tx: &impl Sql,
    org: i64,
    token: &ViewerToken,
    hash: &SecretHash,
    max_live: u64,
) -> Result<ViewerCreated, StoreError> {
    let now = token.created_at.millis();
    tx.exec(
        "SELECT 1 FROM orgs WHERE seq = $1 FOR NO KEY UPDATE",
        &[&org],
    )
    .await?;
    tx.exec(
        "DELETE FROM viewer_tokens WHERE org = $1 AND (expires_at <= $2 OR revoked_at IS NOT NULL)",
        &[&org, &now],
    )
    .await?;
    let live: i64 = tx
        .row(
            "SELECT count(*) FROM viewer_tokens WHERE org = $1 AND expires_at > $2",
            &[&org, &now],
        )
        .await?
        .get(0);
    if u64::try_from(live).unwrap_or(0) >= max_live {
        return Ok(ViewerCreated::TooMany);
    }
    let inserted = tx
        .exec(
            "INSERT INTO viewer_tokens (org, id, secret_hash, kinds, user_id, api_key_id, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                &org,
                &token.id,
                &hash.0.as_slice(),
                &i64::from(token.kinds.bits()),
                &token.filter.user_id,
                &token.filter.api_key_id,
                &now,
                &token.expires_at.millis(),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::Conflict(
            "a viewer token with this id or secret",
        ));
    }
    Ok(ViewerCreated::Created)
}

pub(crate) async fn get_viewer(
    c: &impl Sql,
    tenant: &Tenant,
    id: Uuid,
) -> Result<Option<ViewerToken>, StoreError> {
    let row = c
        .opt_row(
            &format!("SELECT {VIEWER_COLUMNS} FROM viewer_tokens v WHERE v.org = $1 AND v.id = $2"),
            &[&tenant.key(), &id],
        )
        .await?;
    row.map(|r| viewer_from_row(&r, tenant.org_id().clone()))
        .transpose()
}

/// Revokes the token if unrevoked; `true` when this call revoked it.
pub(crate) async fn revoke_viewer(
    tx: &impl Sql,
    org: i64,
    id: Uuid,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let changed = tx
        .exec(
            "UPDATE viewer_tokens SET revoked_at = $3 WHERE org = $1 AND id = $2 \
             AND revoked_at IS NULL",
            &[&org, &id, &at.millis()],
        )
        .await?;
    Ok(changed > 0)
}

pub(crate) async fn authenticate_viewer(
    c: &impl Sql,
    hash: &SecretHash,
) -> Result<Option<(Tenant, ViewerToken)>, StoreError> {
    let row = c
        .opt_row(
            &format!(
                "SELECT {VIEWER_COLUMNS}, o.seq, o.id FROM viewer_tokens v \
                 JOIN orgs o ON o.seq = v.org WHERE v.secret_hash = $1 AND v.revoked_at IS NULL"
            ),
            &[&hash.0.as_slice()],
        )
        .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let org = org_id(r.get(8))?;
    let token = viewer_from_row(&r, org.clone())?;
    Ok(Some((Tenant::from_store(r.get(7), org), token)))
}

pub(crate) async fn count_live_viewers(
    c: &impl Sql,
    org: i64,
    now: Timestamp,
) -> Result<u64, StoreError> {
    let n: i64 = c
        .row(
            "SELECT count(*) FROM viewer_tokens WHERE org = $1 AND expires_at > $2 \
             AND revoked_at IS NULL",
            &[&org, &now.millis()],
        )
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

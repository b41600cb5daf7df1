//! Actions: credentials, destinations, definitions, records and their events.

use apitrail_model::action::{
    alias_json, links_json, parse_alias, parse_links, parse_tags, search_number, tags_json,
};
use apitrail_model::{
    ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionSearch, ActionState,
    AuditEntry, Credential, Destination, Tenant, Timestamp, WebhookConfig, WebhookSecret,
};
use apitrail_store::{ActionStore, Expected, Leased, Page, StoreError, Transition};
use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, Row, params, params_from_iter};
use uuid::Uuid;

use crate::reader::Sql;
use crate::rows::{bad_text, opt_ts, opt_uuid, org_id_col, status_col, tags_col, ts, uuid_col};
use crate::{SqliteStore, backend};

fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<Credential> {
    Ok(Credential {
        id: uuid_col(row, 0)?,
        label: row.get(1)?,
        secret: WebhookSecret::from_bytes(row.get(2)?),
        created_at: ts(row.get(3)?)?,
    })
}

const DESTINATION_COLUMNS: &str = "id, label, url, headers, signaling, response_time_sla_ms, \
     credential_id, tags, created_at, updated_at, deleted_at, allow_private";

fn destination_from_row(row: &Row<'_>) -> rusqlite::Result<Destination> {
    let headers: String = row.get(3)?;
    Ok(Destination {
        id: uuid_col(row, 0)?,
        label: row.get(1)?,
        config: WebhookConfig {
            url: row.get(2)?,
            headers: parse_tags(&headers)
                .ok_or_else(|| bad_text(3, format!("headers {headers:?}")))?,
            signaling: row.get(4)?,
            response_time_sla_ms: row.get(5)?,
        },
        credential_id: opt_uuid(row, 6)?,
        tags: tags_col(row, 7)?,
        created_at: ts(row.get(8)?)?,
        updated_at: ts(row.get(9)?)?,
        deleted_at: opt_ts(row, 10)?,
        allow_private: row.get(11)?,
    })
}

const DEFINITION_COLUMNS: &str =
    "id, version, variant, alias, schema, destinations, created_at, updated_at, deleted_at";

fn definition_from_row(row: &Row<'_>) -> rusqlite::Result<ActionDefinition> {
    let alias: String = row.get(3)?;
    let links: String = row.get(5)?;
    Ok(ActionDefinition {
        id: uuid_col(row, 0)?,
        version: row.get(1)?,
        variant: row.get(2)?,
        alias: parse_alias(&alias).ok_or_else(|| bad_text(3, format!("alias {alias:?}")))?,
        schema: row.get(4)?,
        destinations: parse_links(&links).ok_or_else(|| bad_text(5, format!("links {links:?}")))?,
        created_at: ts(row.get(6)?)?,
        updated_at: ts(row.get(7)?)?,
        deleted_at: opt_ts(row, 8)?,
    })
}

pub(crate) const RECORD_COLUMNS: &str = "r.id, r.definition_id, r.version, r.variant, r.input, \
     r.timeout_secs, r.tags, r.destination_id, r.request_id, r.created_at, r.status, r.attempt, \
     r.updated_at, r.available_at, r.timeout_at, r.started_at, r.completed_at, r.error_message";

pub(crate) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ActionRecord> {
    Ok(ActionRecord {
        id: uuid_col(row, 0)?,
        definition_id: uuid_col(row, 1)?,
        version: row.get(2)?,
        variant: row.get(3)?,
        input: row.get(4)?,
        timeout_secs: row.get(5)?,
        tags: tags_col(row, 6)?,
        destination_id: uuid_col(row, 7)?,
        request_id: row.get(8)?,
        created_at: ts(row.get(9)?)?,
        state: ActionState {
            status: status_col(row, 10)?,
            attempt: row.get(11)?,
            updated_at: ts(row.get(12)?)?,
            available_at: ts(row.get(13)?)?,
            timeout_at: opt_ts(row, 14)?,
            started_at: opt_ts(row, 15)?,
            completed_at: opt_ts(row, 16)?,
            error_message: row.get(17)?,
        },
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<ActionEvent> {
    Ok(ActionEvent {
        record_id: uuid_col(row, 0)?,
        id: uuid_col(row, 1)?,
        kind: row.get(2)?,
        status: status_col(row, 3)?,
        attempt: row.get(4)?,
        available_at: opt_ts(row, 5)?,
        timeout_at: opt_ts(row, 6)?,
        message: row.get(7)?,
        data: row.get(8)?,
        created_at: ts(row.get(9)?)?,
    })
}

fn insert_event(conn: &Connection, org: i64, e: &ActionEvent) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO action_events (org, record_id, id, kind, status, attempt, available_at, \
         timeout_at, message, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        org,
        e.record_id.as_bytes(),
        e.id.as_bytes(),
        e.kind,
        e.status.as_str(),
        e.attempt,
        e.available_at.map(Timestamp::millis),
        e.timeout_at.map(Timestamp::millis),
        e.message,
        e.data,
        e.created_at.millis(),
    ])
    .map(drop)
}

/// A JSON path of SQLite's syntax for object keys (`$."a"."b"`); keys never hold `"` (the
/// API refuses them).
fn json_path(keys: &[String]) -> String {
    keys.iter().fold("$".to_owned(), |mut p, k| {
        p.push_str(".\"");
        // SQLite decodes JSON escapes inside a quoted label: a backslash must be doubled.
        p.push_str(&k.replace('\\', "\\\\"));
        p.push('"');
        p
    })
}

/// The WHERE clause (after `r.org = ?1`) and its parameters for `filter`.
fn where_clause(filter: &ActionFilter) -> (String, Vec<Value>) {
    let mut sql = String::new();
    let mut args: Vec<Value> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, values: Vec<Value>| {
        let mut clause = clause.to_owned();
        for v in values {
            args.push(v);
            let n = args.len() + 1;
            clause = clause.replacen("{}", &format!("?{n}"), 1);
        }
        sql.push_str(" AND ");
        sql.push_str(&clause);
    };
    let blob = |id: &Option<Uuid>| id.map_or(Value::Null, |u| Value::Blob(u.as_bytes().to_vec()));
    if let Some(d) = &filter.definition_id {
        push(&mut sql, "r.definition_id = {}", vec![blob(d)]);
    }
    if let Some(v) = &filter.variant {
        push(&mut sql, "r.variant = {}", vec![Value::Text(v.clone())]);
    }
    if let Some(v) = filter.version {
        push(
            &mut sql,
            "r.version = {}",
            vec![Value::Integer(i64::from(v))],
        );
    }
    match &filter.search {
        None => {}
        Some(ActionSearch::Id(id)) => push(&mut sql, "r.id = {}", vec![blob(id)]),
        Some(ActionSearch::DefinitionId(id)) => {
            push(&mut sql, "r.definition_id = {}", vec![blob(id)]);
        }
        Some(ActionSearch::Variant(v)) => {
            push(&mut sql, "r.variant = {}", vec![Value::Text(v.clone())]);
        }
        Some(ActionSearch::Status(s)) => push(
            &mut sql,
            "r.status = {}",
            vec![s.map_or(Value::Null, |s| Value::Text(s.as_str().into()))],
        ),
        Some(ActionSearch::Tag(k, v)) => push(
            &mut sql,
            "EXISTS (SELECT 1 FROM json_each(r.tags) t WHERE t.key = {} AND t.value = {})",
            vec![Value::Text(k.clone()), Value::Text(v.clone())],
        ),
        Some(ActionSearch::Input(path, v)) => {
            let p = Value::Text(json_path(path));
            let boolean = match v.as_str() {
                "true" | "false" => Value::Text(v.clone()),
                _ => Value::Null,
            };
            push(
                &mut sql,
                "((json_type(r.input, {}) = 'text' AND json_extract(r.input, {}) = {}) \
                 OR (json_type(r.input, {}) IN ('integer', 'real') \
                   AND CAST(json_extract(r.input, {}) AS REAL) = {}) \
                 OR json_type(r.input, {}) = {})",
                vec![
                    p.clone(),
                    p.clone(),
                    Value::Text(v.clone()),
                    p.clone(),
                    p.clone(),
                    search_number(v).map_or(Value::Null, Value::Real),
                    p,
                    boolean,
                ],
            );
        }
    }
    (sql, args)
}

fn all_args(org: i64, mut rest: Vec<Value>) -> Vec<Value> {
    rest.insert(0, Value::Integer(org));
    rest
}

fn count(conn: &Connection, org: i64, filter: &ActionFilter) -> Result<u64, StoreError> {
    let (clause, args) = where_clause(filter);
    let sql = format!("SELECT count(*) FROM action_records r WHERE r.org = ?1{clause}");
    conn.one(&sql, params_from_iter(all_args(org, args)), |r| {
        r.get::<_, i64>(0)
    })
    .map(i64::unsigned_abs)
}

/// Writes the names of a live definition, refusing any another live definition has.
fn claim_names(conn: &Connection, org: i64, d: &ActionDefinition) -> Result<(), StoreError> {
    conn.exec(
        "DELETE FROM action_names WHERE org = ?1 AND definition_id = ?2",
        params![org, d.id.as_bytes()],
    )?;
    if d.deleted_at.is_some() {
        return Ok(());
    }
    for name in d.names() {
        let inserted = conn.exec(
            "INSERT INTO action_names (org, name, definition_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            params![org, name, d.id.as_bytes()],
        )?;
        if inserted == 0 {
            return Err(StoreError::Conflict(
                "an action definition with this variant or alias",
            ));
        }
    }
    Ok(())
}

/// A record with its org, from a row of `RECORD_COLUMNS, r.org, o.id`.
fn leased_from_row(row: &Row<'_>) -> rusqlite::Result<Leased> {
    Ok(Leased {
        tenant: Tenant::from_store(row.get(18)?, org_id_col(row, 19)?),
        record: record_from_row(row)?,
    })
}

/// One compare-and-set transition and, if it happened, its event (inside the caller's job).
fn apply_transition(
    conn: &Connection,
    org: i64,
    id: Uuid,
    expected: &Expected,
    s: &ActionState,
    e: &ActionEvent,
) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE action_records SET status = ?5, attempt = ?6, updated_at = ?7, \
                 available_at = ?8, timeout_at = ?9, started_at = ?10, completed_at = ?11, \
                 error_message = ?12, lease_owner = NULL, lease_until = NULL \
                 WHERE org = ?1 AND id = ?2 AND status = ?3 AND attempt = ?4 \
                 AND (?13 IS NULL OR lease_owner = ?13)",
        )?
        .execute(params![
            org,
            id.as_bytes(),
            expected.status.as_str(),
            expected.attempt,
            s.status.as_str(),
            s.attempt,
            s.updated_at.millis(),
            s.available_at.millis(),
            s.timeout_at.map(Timestamp::millis),
            s.started_at.map(Timestamp::millis),
            s.completed_at.map(Timestamp::millis),
            s.error_message,
            expected.lease_owner,
        ])?;
    if changed == 1 {
        insert_event(conn, org, e)?;
    }
    Ok(changed == 1)
}

#[async_trait]
impl ActionStore for SqliteStore {
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), credential = %credential.id)
    )]
    async fn create_credential(
        &self,
        tenant: &Tenant,
        credential: &Credential,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let (org, c, audit) = (tenant.key(), credential.clone(), audit.clone());
        self.writer
            .submit(0, move |conn| {
                conn.exec("INSERT INTO credentials (org, id, label, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5)", params![
                        org,
                        c.id.as_bytes(),
                        c.label,
                        c.secret.as_bytes(),
                        c.created_at.millis()
                    ])?;
                crate::audit::insert_one(conn, org, &audit)
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), id = %id)
    )]
    async fn get_credential(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<Credential>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.opt("SELECT id, label, secret, created_at FROM credentials WHERE org = ?1 AND id = ?2", params![org, id.as_bytes()], credential_from_row)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn list_credentials(&self, tenant: &Tenant) -> Result<Vec<Credential>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.all(
                    "SELECT id, label, secret, created_at FROM credentials WHERE org = ?1 \
                     ORDER BY created_at, id",
                    [org],
                    credential_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), destination = %destination.id, create)
    )]
    async fn put_destination(
        &self,
        tenant: &Tenant,
        destination: &Destination,
        create: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let (org, d, audit) = (tenant.key(), destination.clone(), audit.clone());
        self.writer
            .submit(0, move |conn| {
                let sql = if create {
                    "INSERT INTO destinations (org, id, label, url, headers, signaling, \
                     response_time_sla_ms, credential_id, tags, created_at, updated_at, deleted_at, \
                     allow_private) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                } else {
                    "UPDATE destinations SET label = ?3, url = ?4, headers = ?5, signaling = ?6, \
                     response_time_sla_ms = ?7, credential_id = ?8, tags = ?9, created_at = ?10, \
                     updated_at = ?11, deleted_at = ?12, allow_private = ?13 \
                     WHERE org = ?1 AND id = ?2"
                };
                conn.exec(sql, params![
                            org,
                            d.id.as_bytes(),
                            d.label,
                            d.config.url,
                            tags_json(&d.config.headers),
                            d.config.signaling,
                            d.config.response_time_sla_ms,
                            d.credential_id.as_ref().map(Uuid::as_bytes),
                            tags_json(&d.tags),
                            d.created_at.millis(),
                            d.updated_at.millis(),
                            d.deleted_at.map(Timestamp::millis),
                            d.allow_private,
                        ])?;
                crate::audit::insert_one(conn, org, &audit)
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), id = %id)
    )]
    async fn get_destination(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<Destination>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.opt(
                    &format!(
                        "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE org = ?1 AND id = ?2"
                    ),
                    params![org, id.as_bytes()],
                    destination_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), include_deleted)
    )]
    async fn list_destinations(
        &self,
        tenant: &Tenant,
        include_deleted: bool,
    ) -> Result<Vec<Destination>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.all(
                    &format!(
                        "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE org = ?1 \
                     AND (?2 OR deleted_at IS NULL) ORDER BY created_at, id"
                    ),
                    params![org, include_deleted],
                    destination_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(
            org = tenant.org_id().as_str(),
            definition = %definition.id,
            version = definition.version,
            new_version,
        )
    )]
    async fn put_action_definition(
        &self,
        tenant: &Tenant,
        definition: &ActionDefinition,
        new_version: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let (org, d, audit) = (tenant.key(), definition.clone(), audit.clone());
        self.writer
            .submit(0, move |conn| {
                claim_names(conn, org, &d)?;
                let alias = alias_json(&d.alias);
                let args = params![
                    org,
                    d.id.as_bytes(),
                    d.version,
                    d.variant,
                    alias,
                    d.schema,
                    links_json(&d.destinations),
                    d.created_at.millis(),
                    d.updated_at.millis(),
                    d.deleted_at.map(Timestamp::millis),
                ];
                let sql = if new_version {
                    "INSERT INTO action_definitions (org, id, version, variant, alias, schema, \
                     destinations, created_at, updated_at, deleted_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                } else {
                    "UPDATE action_definitions SET variant = ?4, alias = ?5, schema = ?6, \
                     destinations = ?7, created_at = ?8, updated_at = ?9, deleted_at = ?10 \
                     WHERE org = ?1 AND id = ?2 AND version = ?3"
                };
                conn.prepare_cached(sql)
                    .and_then(|mut st| st.execute(args))
                    .map_err(|e| match e {
                        rusqlite::Error::SqliteFailure(f, _)
                            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                        {
                            StoreError::Conflict("this version of the action definition")
                        }
                        e => backend(e),
                    })?;
                if let Some(at) = d.deleted_at {
                    conn.exec(
                        "UPDATE action_definitions SET deleted_at = ?3 \
                         WHERE org = ?1 AND id = ?2 AND deleted_at IS NULL",
                        params![org, d.id.as_bytes(), at.millis()],
                    )?;
                }
                crate::audit::insert_one(conn, org, &audit)
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), id = %id, version = ?version)
    )]
    async fn get_action_definition(
        &self,
        tenant: &Tenant,
        id: Uuid,
        version: Option<u32>,
    ) -> Result<Option<ActionDefinition>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.opt(
                    &format!(
                        "SELECT {DEFINITION_COLUMNS} FROM action_definitions \
                     WHERE org = ?1 AND id = ?2 AND (?3 IS NULL OR version = ?3) \
                     ORDER BY version DESC LIMIT 1"
                    ),
                    params![org, id.as_bytes(), version],
                    definition_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn find_action_definition(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<Option<ActionDefinition>, StoreError> {
        let (org, name) = (tenant.key(), name.to_owned());
        self.readers
            .run(move |conn| {
                conn.opt(
                    &format!(
                        "SELECT {DEFINITION_COLUMNS} FROM action_definitions \
                     WHERE org = ?1 AND id = (SELECT definition_id FROM action_names \
                       WHERE org = ?1 AND name = ?2) \
                     ORDER BY version DESC LIMIT 1"
                    ),
                    params![org, name],
                    definition_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), include_deleted)
    )]
    async fn list_action_definitions(
        &self,
        tenant: &Tenant,
        include_deleted: bool,
    ) -> Result<Vec<ActionDefinition>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.all(
                    &format!(
                        "SELECT {DEFINITION_COLUMNS} FROM action_definitions d \
                     WHERE org = ?1 AND (?2 OR deleted_at IS NULL) \
                     AND version = (SELECT max(version) FROM action_definitions l \
                       WHERE l.org = d.org AND l.id = d.id) \
                     ORDER BY (SELECT min(created_at) FROM action_definitions f \
                       WHERE f.org = d.org AND f.id = d.id), id"
                    ),
                    params![org, include_deleted],
                    definition_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), record = %record.id)
    )]
    async fn create_action_record(
        &self,
        tenant: &Tenant,
        record: &ActionRecord,
        event: &ActionEvent,
    ) -> Result<(), StoreError> {
        let (org, r, e) = (tenant.key(), record.clone(), event.clone());
        self.writer
            .submit(1, move |conn| {
                let s = &r.state;
                conn.prepare_cached(
                    "INSERT INTO action_records (org, id, definition_id, version, variant, input, \
                     timeout_secs, tags, destination_id, request_id, created_at, status, attempt, \
                     updated_at, available_at, timeout_at, started_at, completed_at, error_message) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        org,
                        r.id.as_bytes(),
                        r.definition_id.as_bytes(),
                        r.version,
                        r.variant,
                        r.input,
                        r.timeout_secs,
                        tags_json(&r.tags),
                        r.destination_id.as_bytes(),
                        r.request_id,
                        r.created_at.millis(),
                        s.status.as_str(),
                        s.attempt,
                        s.updated_at.millis(),
                        s.available_at.millis(),
                        s.timeout_at.map(Timestamp::millis),
                        s.started_at.map(Timestamp::millis),
                        s.completed_at.map(Timestamp::millis),
                        s.error_message,
                    ])
                })
                .and_then(|_| insert_event(conn, org, &e))
                .map_err(backend)
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), id = %id)
    )]
    async fn get_action_record(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<ActionRecord>, StoreError> {
        let org = tenant.key();
        self.readers
            .run(move |conn| {
                conn.opt(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM action_records r WHERE r.org = ?1 AND r.id = ?2"
                    ),
                    params![org, id.as_bytes()],
                    record_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), skip, take)
    )]
    async fn list_action_records(
        &self,
        tenant: &Tenant,
        filter: &ActionFilter,
        skip: u64,
        take: u32,
    ) -> Result<(Vec<ActionRecord>, u64), StoreError> {
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| {
                let total = count(conn, org, &filter)?;
                let (clause, args) = where_clause(&filter);
                let n = args.len() + 2;
                let sql = format!(
                    "SELECT {RECORD_COLUMNS} FROM action_records r WHERE r.org = ?1{clause} \
                     ORDER BY r.created_at DESC, r.id DESC LIMIT ?{n} OFFSET ?{}",
                    n + 1
                );
                let mut args = all_args(org, args);
                args.push(Value::Integer(i64::from(take)));
                args.push(Value::Integer(i64::try_from(skip).unwrap_or(i64::MAX)));
                let items = conn.all(&sql, params_from_iter(args), record_from_row)?;
                Ok((items, total))
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn action_records_by_request(
        &self,
        tenant: &Tenant,
        request_id: &str,
        limit: u32,
    ) -> Result<Page<ActionRecord>, StoreError> {
        let (org, request_id) = (tenant.key(), request_id.to_owned());
        self.readers
            .run(move |conn| {
                crate::timeline::by_request(
                    conn,
                    crate::timeline::Kind::Actions,
                    org,
                    &request_id,
                    limit,
                    record_from_row,
                )
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn count_action_records(
        &self,
        tenant: &Tenant,
        filter: &ActionFilter,
    ) -> Result<u64, StoreError> {
        let (org, filter) = (tenant.key(), filter.clone());
        self.readers
            .run(move |conn| count(conn, org, &filter))
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), records = records.len())
    )]
    async fn action_events(
        &self,
        tenant: &Tenant,
        records: &[Uuid],
    ) -> Result<Vec<ActionEvent>, StoreError> {
        let (org, records) = (tenant.key(), records.to_vec());
        self.readers
            .run(move |conn| {
                let mut events = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for id in records.into_iter().filter(|id| seen.insert(*id)) {
                    events.extend(conn.all(
                        "SELECT record_id, id, kind, status, attempt, available_at, timeout_at, \
                         message, data, created_at FROM action_events \
                         WHERE org = ?1 AND record_id = ?2 ORDER BY created_at, id",
                        params![org, id.as_bytes()],
                        event_from_row,
                    )?);
                }
                Ok(events)
            })
            .await
    }

    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(org = tenant.org_id().as_str(), record = %id)
    )]
    async fn transition_action(
        &self,
        tenant: &Tenant,
        id: Uuid,
        expected: &Expected,
        state: &ActionState,
        event: &ActionEvent,
    ) -> Result<bool, StoreError> {
        let expected_under_lease = expected.lease_owner.is_some();
        let (org, expected, s, e) = (tenant.key(), expected.clone(), state.clone(), event.clone());
        let work = move |conn: &Connection| {
            apply_transition(conn, org, id, &expected, &s, &e).map_err(backend)
        };
        if expected_under_lease {
            // A delivery's outcome, recorded under its lease, is the dispatcher's own
            // bookkeeping: lost to a power failure, the record is only delivered again.
            self.writer.submit_volatile(work).await
        } else {
            self.writer.submit(0, work).await
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(transitions = transitions.len()))]
    async fn transition_actions(
        &self,
        transitions: &[Transition],
    ) -> Result<Vec<bool>, StoreError> {
        if transitions.is_empty() {
            return Ok(Vec::new());
        }
        let under_lease = transitions.iter().all(Transition::under_lease);
        let batch = transitions.to_vec();
        // One job: the batch commits (or fails) as a whole, in one savepoint.
        let work = move |conn: &Connection| {
            let mut seen = std::collections::HashSet::with_capacity(batch.len());
            let mut done = Vec::with_capacity(batch.len());
            for t in &batch {
                let org = t.tenant.key();
                done.push(
                    seen.insert((org, t.id))
                        && apply_transition(conn, org, t.id, &t.expected, &t.state, &t.event)
                            .map_err(backend)?,
                );
            }
            Ok(done)
        };
        if under_lease {
            self.writer.submit_volatile(work).await
        } else {
            self.writer.submit(0, work).await
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(limit))]
    async fn lease_due_actions(
        &self,
        now: Timestamp,
        until: Timestamp,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<Leased>, StoreError> {
        // Most polls find nothing due: a read says so without a write transaction.
        let due = self
            .readers
            .run(move |conn| {
                conn.one(
                    "SELECT EXISTS (SELECT 1 FROM action_records WHERE status = 'pending' \
                     AND available_at <= ?1 AND (lease_until IS NULL OR lease_until < ?1))",
                    [now.millis()],
                    |r| r.get::<_, bool>(0),
                )
            })
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        let owner = owner.to_owned();
        // A lease lost to a power failure only means the record is leased again: no fsync
        // on the way to the delivery.
        let found = self
            .writer
            .submit_volatile(move |conn| {
                let mut leased = conn.all(
                    &format!(
                        "SELECT {RECORD_COLUMNS}, r.org, o.id FROM action_records r \
                         JOIN orgs o ON o.seq = r.org \
                         WHERE r.status = 'pending' AND r.available_at <= ?1 \
                         AND (r.lease_until IS NULL OR r.lease_until < ?1) \
                         ORDER BY r.available_at LIMIT ?2"
                    ),
                    params![now.millis(), i64::from(limit)],
                    leased_from_row,
                )?;
                for Leased { tenant, record } in &mut leased {
                    conn.exec(
                        "UPDATE action_records SET attempt = attempt + 1, \
                         started_at = coalesce(started_at, ?3), lease_owner = ?4, lease_until = ?5 \
                         WHERE org = ?1 AND id = ?2",
                        params![
                            tenant.key(),
                            record.id.as_bytes(),
                            now.millis(),
                            owner,
                            until.millis()
                        ],
                    )?;
                    record.state.attempt += 1;
                    record.state.started_at.get_or_insert(now);
                }
                Ok(leased)
            })
            .await?;
        Ok(found)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(limit))]
    async fn expired_acknowledgements(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Leased>, StoreError> {
        self.readers
            .run(move |conn| {
                conn.all(
                    &format!(
                        "SELECT {RECORD_COLUMNS}, r.org, o.id FROM action_records r \
                         JOIN orgs o ON o.seq = r.org \
                         WHERE r.status = 'acknowledged' AND r.timeout_at <= ?1 \
                         ORDER BY r.timeout_at LIMIT ?2"
                    ),
                    params![now.millis(), i64::from(limit)],
                    leased_from_row,
                )
            })
            .await
    }
}

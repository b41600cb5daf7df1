//! Actions: credentials, destinations, definitions, records and their events. The dispatcher
//! leases due records with `FOR UPDATE SKIP LOCKED`, so servers sharing the database never
//! hold the same record at once.

use std::time::Instant;

use apitrail_model::action::{
    alias_json, links_json, parse_alias, parse_links, search_number, tags_json,
};
use apitrail_model::{
    ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionSearch, ActionState,
    ActionStatus, AuditEntry, Credential, Destination, Tenant, Timestamp, WebhookConfig,
    WebhookSecret,
};
use apitrail_store::{ActionStore, Expected, Leased, Page, StoreError, Transition};
use async_trait::async_trait;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::reader::Sql;
use crate::rows::{corrupt, opt_ts, org_id, status, tags, ts, u32_col};
use crate::{Args, PgStore, begin, params, push};

fn credential_from_row(r: &Row) -> Result<Credential, StoreError> {
    Ok(Credential {
        id: r.get(0),
        label: r.get(1),
        secret: WebhookSecret::from_bytes(r.get(2)),
        created_at: ts(r.get(3))?,
    })
}

const DESTINATION_COLUMNS: &str = "id, label, url, headers, signaling, response_time_sla_ms, \
     credential_id, tags, created_at, updated_at, deleted_at, allow_private";

fn destination_from_row(r: &Row) -> Result<Destination, StoreError> {
    let sla: i64 = r.get(5);
    Ok(Destination {
        id: r.get(0),
        label: r.get(1),
        config: WebhookConfig {
            url: r.get(2),
            headers: tags(r.get(3))?,
            signaling: r.get(4),
            response_time_sla_ms: u32_col(sla)?,
        },
        credential_id: r.get(6),
        tags: tags(r.get(7))?,
        created_at: ts(r.get(8))?,
        updated_at: ts(r.get(9))?,
        deleted_at: opt_ts(r.get(10))?,
        allow_private: r.get(11),
    })
}

const DEFINITION_COLUMNS: &str =
    "id, version, variant, alias, schema, destinations, created_at, updated_at, deleted_at";

fn definition_from_row(r: &Row) -> Result<ActionDefinition, StoreError> {
    let alias: &str = r.get(3);
    let links: &str = r.get(5);
    Ok(ActionDefinition {
        id: r.get(0),
        version: u32_col(r.get(1))?,
        variant: r.get(2),
        alias: parse_alias(alias).ok_or_else(|| corrupt(format!("alias {alias:?}")))?,
        schema: r.get(4),
        destinations: parse_links(links).ok_or_else(|| corrupt(format!("links {links:?}")))?,
        created_at: ts(r.get(6))?,
        updated_at: ts(r.get(7))?,
        deleted_at: opt_ts(r.get(8))?,
    })
}

pub(crate) const RECORD_COLUMNS: &str = "r.id, r.definition_id, r.version, r.variant, r.input, \
     r.timeout_secs, r.tags, r.destination_id, r.request_id, r.created_at, r.status, r.attempt, \
     r.updated_at, r.available_at, r.timeout_at, r.started_at, r.completed_at, r.error_message";

pub(crate) fn record_from_row(r: &Row) -> Result<ActionRecord, StoreError> {
    Ok(ActionRecord {
        id: r.get(0),
        definition_id: r.get(1),
        version: u32_col(r.get(2))?,
        variant: r.get(3),
        input: r.get(4),
        timeout_secs: u32_col(r.get(5))?,
        tags: tags(r.get(6))?,
        destination_id: r.get(7),
        request_id: r.get(8),
        created_at: ts(r.get(9))?,
        state: ActionState {
            status: status(r.get(10))?,
            attempt: u32_col(r.get(11))?,
            updated_at: ts(r.get(12))?,
            available_at: ts(r.get(13))?,
            timeout_at: opt_ts(r.get(14))?,
            started_at: opt_ts(r.get(15))?,
            completed_at: opt_ts(r.get(16))?,
            error_message: r.get(17),
        },
    })
}

/// A record with its org, from a row of `RECORD_COLUMNS, r.org, o.id`.
fn leased_from_row(r: &Row) -> Result<Leased, StoreError> {
    Ok(Leased {
        tenant: Tenant::from_store(r.get(18), org_id(r.get(19))?),
        record: record_from_row(r)?,
    })
}

fn event_from_row(r: &Row) -> Result<ActionEvent, StoreError> {
    Ok(ActionEvent {
        record_id: r.get(0),
        id: r.get(1),
        kind: r.get(2),
        status: status(r.get(3))?,
        attempt: u32_col(r.get(4))?,
        available_at: opt_ts(r.get(5))?,
        timeout_at: opt_ts(r.get(6))?,
        message: r.get(7),
        data: r.get(8),
        created_at: ts(r.get(9))?,
    })
}

/// The WHERE clause (after `r.org = $1`) for `filter`; `args` already holds `$1`.
fn where_clause(filter: &ActionFilter, args: &mut Args) -> String {
    let mut sql = String::new();
    if let Some(d) = filter.definition_id {
        sql += &format!(" AND r.definition_id = {}", push(args, d));
    }
    if let Some(v) = &filter.variant {
        sql += &format!(" AND r.variant = {}", push(args, v.clone()));
    }
    if let Some(v) = filter.version {
        sql += &format!(" AND r.version = {}", push(args, i64::from(v)));
    }
    match &filter.search {
        None => {}
        Some(ActionSearch::Id(id)) => sql += &format!(" AND r.id = {}", push(args, *id)),
        Some(ActionSearch::DefinitionId(id)) => {
            sql += &format!(" AND r.definition_id = {}", push(args, *id));
        }
        Some(ActionSearch::Variant(v)) => {
            sql += &format!(" AND r.variant = {}", push(args, v.clone()));
        }
        Some(ActionSearch::Status(s)) => {
            sql += &format!(
                " AND r.status = {}",
                push(args, s.map(ActionStatus::as_str))
            );
        }
        Some(ActionSearch::Tag(k, v)) => {
            let (k, v) = (push(args, k.clone()), push(args, v.clone()));
            sql += &format!(" AND (r.tags::jsonb ->> {k}) = {v}");
        }
        Some(ActionSearch::Input(path, v)) => {
            // `->` with a text key only ever reads an object's field (on an array it yields
            // NULL), unlike `#>`, which takes integer-like keys as array indexes.
            let mut value = "r.input::jsonb".to_owned();
            for key in path {
                value += &format!(" -> {}::text", push(args, key.clone()));
            }
            let text = push(args, v.clone());
            let num = push(args, search_number(v));
            let boolean = push(
                args,
                matches!(v.as_str(), "true" | "false").then(|| v.clone()),
            );
            sql += &format!(
                " AND ((jsonb_typeof({value}) = 'string' AND ({value}) #>> '{{}}' = {text}) \
                 OR (jsonb_typeof({value}) = 'number' AND (({value}) #>> '{{}}')::float8 = {num}) \
                 OR (jsonb_typeof({value}) = 'boolean' AND ({value}) #>> '{{}}' = {boolean}))"
            );
        }
    }
    sql
}

async fn count(c: &impl Sql, org: i64, filter: &ActionFilter) -> Result<u64, StoreError> {
    let mut args: Args = vec![Box::new(org)];
    let clause = where_clause(filter, &mut args);
    let n: i64 = c
        .row(
            &format!("SELECT count(*) FROM action_records r WHERE r.org = $1{clause}"),
            &params(&args),
        )
        .await?
        .get(0);
    Ok(n.unsigned_abs())
}

/// Writes the names of a live definition, refusing any another live definition has.
async fn claim_names(tx: &impl Sql, org: i64, d: &ActionDefinition) -> Result<(), StoreError> {
    tx.exec(
        "DELETE FROM action_names WHERE org = $1 AND definition_id = $2",
        &[&org, &d.id],
    )
    .await?;
    if d.deleted_at.is_some() {
        return Ok(());
    }
    for name in d.names() {
        let inserted = tx
            .exec(
                "INSERT INTO action_names (org, name, definition_id) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&org, &name, &d.id],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(
                "an action definition with this variant or alias",
            ));
        }
    }
    Ok(())
}

/// A batch of transitions as the columns `transition_actions` sends (one array each).
#[derive(Default)]
struct Columns<'a> {
    org: Vec<i64>,
    id: Vec<Uuid>,
    x_status: Vec<&'static str>,
    x_attempt: Vec<i64>,
    x_owner: Vec<Option<&'a str>>,
    status: Vec<&'static str>,
    attempt: Vec<i64>,
    updated_at: Vec<i64>,
    available_at: Vec<i64>,
    timeout_at: Vec<Option<i64>>,
    started_at: Vec<Option<i64>>,
    completed_at: Vec<Option<i64>>,
    error_message: Vec<Option<&'a str>>,
    e_id: Vec<Uuid>,
    e_kind: Vec<&'a str>,
    e_status: Vec<&'static str>,
    e_attempt: Vec<i64>,
    e_available_at: Vec<Option<i64>>,
    e_timeout_at: Vec<Option<i64>>,
    e_message: Vec<Option<&'a str>>,
    e_data: Vec<Option<&'a str>>,
    e_created_at: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(transitions: impl Iterator<Item = &'a Transition>) -> Self {
        let mut c = Self::default();
        for t in transitions {
            let (x, s, e) = (&t.expected, &t.state, &t.event);
            c.org.push(t.tenant.key());
            c.id.push(t.id);
            c.x_status.push(x.status.as_str());
            c.x_attempt.push(i64::from(x.attempt));
            c.x_owner.push(x.lease_owner.as_deref());
            c.status.push(s.status.as_str());
            c.attempt.push(i64::from(s.attempt));
            c.updated_at.push(s.updated_at.millis());
            c.available_at.push(s.available_at.millis());
            c.timeout_at.push(s.timeout_at.map(Timestamp::millis));
            c.started_at.push(s.started_at.map(Timestamp::millis));
            c.completed_at.push(s.completed_at.map(Timestamp::millis));
            c.error_message.push(s.error_message.as_deref());
            c.e_id.push(e.id);
            c.e_kind.push(&e.kind);
            c.e_status.push(e.status.as_str());
            c.e_attempt.push(i64::from(e.attempt));
            c.e_available_at.push(e.available_at.map(Timestamp::millis));
            c.e_timeout_at.push(e.timeout_at.map(Timestamp::millis));
            c.e_message.push(e.message.as_deref());
            c.e_data.push(e.data.as_deref());
            c.e_created_at.push(e.created_at.millis());
        }
        c
    }
}

/// The lease statement (`$1` now, `$2` limit, `$3` owner, `$4` lease end). SKIP LOCKED:
/// records another server is leasing right now are left to it; a row it leased meanwhile
/// fails the re-checked WHERE (lease_until is in the future). Run on a volatile writer, whose
/// session makes it walk `action_records_due` in order (see `conn::VOLATILE`).
fn lease_sql() -> String {
    format!(
        "WITH due AS ( \
           SELECT org, id FROM action_records \
           WHERE status = 'pending' AND available_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) \
           ORDER BY available_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE action_records r SET attempt = r.attempt + 1, \
           started_at = coalesce(r.started_at, $1), lease_owner = $3, lease_until = $4 \
         FROM due WHERE r.org = due.org AND r.id = due.id \
         RETURNING {RECORD_COLUMNS}, r.org, (SELECT o.id FROM orgs o WHERE o.seq = r.org)"
    )
}

impl PgStore {
    /// The plan of the lease statement as the dispatcher's connections run it (`EXPLAIN`,
    /// without costs; nothing is leased), so a test can check that it walks the due index in
    /// order rather than reading every due row (see `conn::VOLATILE`).
    #[doc(hidden)]
    pub async fn explain_lease(&self, now: Timestamp, limit: u32) -> Result<String, StoreError> {
        let (_open, client) = self.volatile_writer().await?;
        let rows = client
            .rows(
                &format!("EXPLAIN (COSTS OFF) {}", lease_sql()),
                &[&now.millis(), &i64::from(limit), &"explain", &now.millis()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

#[async_trait]
impl ActionStore for PgStore {
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
        let org = tenant.key();
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        {
            tx.exec(
                    "INSERT INTO credentials (org, id, label, secret, created_at) VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &org,
                        &credential.id,
                        &credential.label,
                        &credential.secret.as_bytes(),
                        &credential.created_at.millis(),
                    ],
                )
                .await?;
        }
        self.commit_audited(tx, tenant, audit, started).await
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
        self.reader()
            .await?
            .client
            .opt(
                "SELECT id, label, secret, created_at FROM credentials WHERE org = $1 AND id = $2",
                &[&tenant.key(), &id],
                credential_from_row,
            )
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn list_credentials(&self, tenant: &Tenant) -> Result<Vec<Credential>, StoreError> {
        self.reader()
            .await?
            .client
            .all(
                "SELECT id, label, secret, created_at FROM credentials WHERE org = $1 \
                 ORDER BY created_at, id",
                &[&tenant.key()],
                credential_from_row,
            )
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
        let org = tenant.key();
        let d = destination;
        let (headers, tag_text) = (tags_json(&d.config.headers), tags_json(&d.tags));
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        {
            let sql = if create {
                "INSERT INTO destinations (org, id, label, url, headers, signaling, \
                     response_time_sla_ms, credential_id, tags, created_at, updated_at, deleted_at, \
                     allow_private) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            } else {
                "UPDATE destinations SET label = $3, url = $4, headers = $5, signaling = $6, \
                     response_time_sla_ms = $7, credential_id = $8, tags = $9, created_at = $10, \
                     updated_at = $11, deleted_at = $12, allow_private = $13 \
                     WHERE org = $1 AND id = $2"
            };
            tx.exec(
                sql,
                &[
                    &org,
                    &d.id,
                    &d.label,
                    &d.config.url,
                    &headers,
                    &d.config.signaling,
                    &i64::from(d.config.response_time_sla_ms),
                    &d.credential_id,
                    &tag_text,
                    &d.created_at.millis(),
                    &d.updated_at.millis(),
                    &d.deleted_at.map(Timestamp::millis),
                    &d.allow_private,
                ],
            )
            .await?;
        }
        self.commit_audited(tx, tenant, audit, started).await
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
        self.reader()
            .await?
            .client
            .opt(
                &format!(
                    "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE org = $1 AND id = $2"
                ),
                &[&tenant.key(), &id],
                destination_from_row,
            )
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
        self.reader()
            .await?
            .client
            .all(
                &format!(
                    "SELECT {DESTINATION_COLUMNS} FROM destinations WHERE org = $1 \
                     AND ($2 OR deleted_at IS NULL) ORDER BY created_at, id"
                ),
                &[&tenant.key(), &include_deleted],
                destination_from_row,
            )
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
        let org = tenant.key();
        let d = definition;
        let (alias, links) = (alias_json(&d.alias), links_json(&d.destinations));
        let started = Instant::now();
        let (_open, mut client) = self.writer().await?;
        let tx = begin(&mut client).await?;
        {
            claim_names(&tx, org, d).await?;
            let sql = if new_version {
                "INSERT INTO action_definitions (org, id, version, variant, alias, schema, \
                     destinations, created_at, updated_at, deleted_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING"
            } else {
                "UPDATE action_definitions SET variant = $4, alias = $5, schema = $6, \
                     destinations = $7, created_at = $8, updated_at = $9, deleted_at = $10 \
                     WHERE org = $1 AND id = $2 AND version = $3"
            };
            let n = tx
                .exec(
                    sql,
                    &[
                        &org,
                        &d.id,
                        &i64::from(d.version),
                        &d.variant,
                        &alias,
                        &d.schema,
                        &links,
                        &d.created_at.millis(),
                        &d.updated_at.millis(),
                        &d.deleted_at.map(Timestamp::millis),
                    ],
                )
                .await?;
            if new_version && n == 0 {
                return Err(StoreError::Conflict(
                    "this version of the action definition",
                ));
            }
            if let Some(at) = d.deleted_at {
                tx.exec(
                    "UPDATE action_definitions SET deleted_at = $3 \
                         WHERE org = $1 AND id = $2 AND deleted_at IS NULL",
                    &[&org, &d.id, &at.millis()],
                )
                .await?;
            }
        }
        self.commit_audited(tx, tenant, audit, started).await
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
        self.reader()
            .await?
            .client
            .opt(
                &format!(
                    "SELECT {DEFINITION_COLUMNS} FROM action_definitions \
                     WHERE org = $1 AND id = $2 AND ($3::bigint IS NULL OR version = $3) \
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant.key(), &id, &version.map(i64::from)],
                definition_from_row,
            )
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn find_action_definition(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<Option<ActionDefinition>, StoreError> {
        self.reader()
            .await?
            .client
            .opt(
                &format!(
                    "SELECT {DEFINITION_COLUMNS} FROM action_definitions \
                     WHERE org = $1 AND id = (SELECT definition_id FROM action_names \
                       WHERE org = $1 AND name = $2) \
                     ORDER BY version DESC LIMIT 1"
                ),
                &[&tenant.key(), &name],
                definition_from_row,
            )
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
        self.reader()
            .await?
            .client
            .all(
                &format!(
                    "SELECT {DEFINITION_COLUMNS} FROM action_definitions d \
                     WHERE org = $1 AND ($2 OR deleted_at IS NULL) \
                     AND version = (SELECT max(version) FROM action_definitions l \
                       WHERE l.org = d.org AND l.id = d.id) \
                     ORDER BY (SELECT min(created_at) FROM action_definitions f \
                       WHERE f.org = d.org AND f.id = d.id), id"
                ),
                &[&tenant.key(), &include_deleted],
                definition_from_row,
            )
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
        let started = Instant::now();
        let (org, r, s) = (tenant.key(), record, &record.state);
        let e = event;
        let (_open, client) = self.writer().await?;
        // One statement: the record and its first event, atomically.
        client
            .exec(
                "WITH made AS ( \
                   INSERT INTO action_records (org, id, definition_id, version, variant, input, \
                     timeout_secs, tags, destination_id, request_id, created_at, status, attempt, \
                     updated_at, available_at, timeout_at, started_at, completed_at, error_message) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17, $18, $19) RETURNING org) \
                 INSERT INTO action_events (org, record_id, id, kind, status, attempt, \
                   available_at, timeout_at, message, data, created_at) \
                 SELECT org, $2, $20, $21, $22, $23, $24, $25, $26, $27, $28 FROM made",
                &[
                    &org,
                    &r.id,
                    &r.definition_id,
                    &i64::from(r.version),
                    &r.variant,
                    &r.input,
                    &i64::from(r.timeout_secs),
                    &tags_json(&r.tags),
                    &r.destination_id,
                    &r.request_id,
                    &r.created_at.millis(),
                    &s.status.as_str(),
                    &i64::from(s.attempt),
                    &s.updated_at.millis(),
                    &s.available_at.millis(),
                    &s.timeout_at.map(Timestamp::millis),
                    &s.started_at.map(Timestamp::millis),
                    &s.completed_at.map(Timestamp::millis),
                    &s.error_message,
                    &e.id,
                    &e.kind,
                    &e.status.as_str(),
                    &i64::from(e.attempt),
                    &e.available_at.map(Timestamp::millis),
                    &e.timeout_at.map(Timestamp::millis),
                    &e.message,
                    &e.data,
                    &e.created_at.millis(),
                ],
            )
            .await?;
        self.committed(1, started);
        Ok(())
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
        self.reader()
            .await?
            .client
            .opt(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM action_records r WHERE r.org = $1 AND r.id = $2"
                ),
                &[&tenant.key(), &id],
                record_from_row,
            )
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
        let reader = self.reader().await?;
        let c = &reader.client;
        let total = count(c, tenant.key(), filter).await?;
        let mut args: Args = vec![Box::new(tenant.key())];
        let clause = where_clause(filter, &mut args);
        let limit = push(&mut args, i64::from(take));
        let offset = push(&mut args, i64::try_from(skip).unwrap_or(i64::MAX));
        let items = c
            .all(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM action_records r WHERE r.org = $1{clause} \
                     ORDER BY r.created_at DESC, r.id DESC LIMIT {limit} OFFSET {offset}"
                ),
                &params(&args),
                record_from_row,
            )
            .await?;
        Ok((items, total))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str(), limit))]
    async fn action_records_by_request(
        &self,
        tenant: &Tenant,
        request_id: &str,
        limit: u32,
    ) -> Result<Page<ActionRecord>, StoreError> {
        crate::timeline::by_request(
            &self.reader().await?.client,
            crate::timeline::Kind::Actions,
            tenant.key(),
            request_id,
            limit,
            record_from_row,
        )
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org = tenant.org_id().as_str()))]
    async fn count_action_records(
        &self,
        tenant: &Tenant,
        filter: &ActionFilter,
    ) -> Result<u64, StoreError> {
        count(&self.reader().await?.client, tenant.key(), filter).await
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
        self.reader()
            .await?
            .client
            .all(
                "SELECT record_id, id, kind, status, attempt, available_at, timeout_at, message, \
                 data, created_at FROM action_events WHERE org = $1 AND record_id = ANY($2) \
                 ORDER BY array_position($2, record_id), created_at, id",
                &[&tenant.key(), &records],
                event_from_row,
            )
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
        // A batch of one: the same statement, writer choice and compare-and-set.
        let one = Transition {
            tenant: tenant.clone(),
            id,
            expected: expected.clone(),
            state: state.clone(),
            event: event.clone(),
        };
        let done = self.transition_actions(std::slice::from_ref(&one)).await?;
        Ok(done.first().copied().unwrap_or(false))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(transitions = transitions.len()))]
    async fn transition_actions(
        &self,
        transitions: &[Transition],
    ) -> Result<Vec<bool>, StoreError> {
        let mut done = vec![false; transitions.len()];
        // Each record once (the first transition of it), in (org, id) order: concurrent
        // batches then lock the rows they share in the same order and cannot deadlock.
        let mut order: Vec<usize> = (0..transitions.len()).collect();
        order.sort_by_key(|&i| (transitions[i].tenant.key(), transitions[i].id, i));
        order.dedup_by_key(|&mut i| (transitions[i].tenant.key(), transitions[i].id));
        if order.is_empty() {
            return Ok(done);
        }
        let started = Instant::now();
        let batch = Columns::of(order.iter().map(|&i| &transitions[i]));
        // Outcomes under leases are the dispatcher's bookkeeping (a volatile writer); a batch
        // with anything else waits for the WAL flush.
        let (_open, client) = if transitions.iter().all(Transition::under_lease) {
            self.volatile_writer().await?
        } else {
            self.writer().await?
        };
        // One statement: the updates and the events of those that happened, atomically.
        let rows = client
            .rows(
                "WITH t AS ( \
                   SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], \
                     $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], \
                     $10::bigint[], $11::bigint[], $12::bigint[], $13::text[], $14::uuid[], \
                     $15::text[], $16::text[], $17::bigint[], $18::bigint[], $19::bigint[], \
                     $20::text[], $21::text[], $22::bigint[]) WITH ORDINALITY \
                   AS t(org, id, x_status, x_attempt, x_owner, status, attempt, updated_at, \
                     available_at, timeout_at, started_at, completed_at, error_message, e_id, \
                     e_kind, e_status, e_attempt, e_available_at, e_timeout_at, e_message, \
                     e_data, e_created_at, n)), \
                 moved AS ( \
                   UPDATE action_records r SET status = t.status, attempt = t.attempt, \
                     updated_at = t.updated_at, available_at = t.available_at, \
                     timeout_at = t.timeout_at, started_at = t.started_at, \
                     completed_at = t.completed_at, error_message = t.error_message, \
                     lease_owner = NULL, lease_until = NULL \
                   FROM t WHERE r.org = t.org AND r.id = t.id AND r.status = t.x_status \
                     AND r.attempt = t.x_attempt \
                     AND (t.x_owner IS NULL OR r.lease_owner = t.x_owner) \
                   RETURNING t.n), \
                 events AS ( \
                   INSERT INTO action_events (org, record_id, id, kind, status, attempt, \
                     available_at, timeout_at, message, data, created_at) \
                   SELECT t.org, t.id, t.e_id, t.e_kind, t.e_status, t.e_attempt, \
                     t.e_available_at, t.e_timeout_at, t.e_message, t.e_data, t.e_created_at \
                   FROM t JOIN moved ON moved.n = t.n) \
                 SELECT n FROM moved",
                &[
                    &batch.org,
                    &batch.id,
                    &batch.x_status,
                    &batch.x_attempt,
                    &batch.x_owner,
                    &batch.status,
                    &batch.attempt,
                    &batch.updated_at,
                    &batch.available_at,
                    &batch.timeout_at,
                    &batch.started_at,
                    &batch.completed_at,
                    &batch.error_message,
                    &batch.e_id,
                    &batch.e_kind,
                    &batch.e_status,
                    &batch.e_attempt,
                    &batch.e_available_at,
                    &batch.e_timeout_at,
                    &batch.e_message,
                    &batch.e_data,
                    &batch.e_created_at,
                ],
            )
            .await?;
        for row in rows {
            // `n` counts the batch's rows from 1, in the order sent.
            let n: i64 = row.get(0);
            let sent = usize::try_from(n - 1)
                .ok()
                .and_then(|k| order.get(k))
                .ok_or_else(|| corrupt(format!("transition row {n} of {}", order.len())))?;
            done[*sent] = true;
        }
        self.committed(0, started);
        Ok(done)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(limit))]
    async fn lease_due_actions(
        &self,
        now: Timestamp,
        until: Timestamp,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<Leased>, StoreError> {
        // A lease lost to a PostgreSQL crash only means the record is leased again.
        let (_open, client) = self.volatile_writer().await?;
        client
            .all(
                &lease_sql(),
                &[&now.millis(), &i64::from(limit), &owner, &until.millis()],
                leased_from_row,
            )
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(limit))]
    async fn expired_acknowledgements(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Leased>, StoreError> {
        self.reader()
            .await?
            .client
            .all(
                &format!(
                    "SELECT {RECORD_COLUMNS}, r.org, o.id FROM action_records r \
                     JOIN orgs o ON o.seq = r.org \
                     WHERE r.status = 'acknowledged' AND r.timeout_at <= $1 \
                     ORDER BY r.timeout_at LIMIT $2"
                ),
                &[&now.millis(), &i64::from(limit)],
                leased_from_row,
            )
            .await
    }
}

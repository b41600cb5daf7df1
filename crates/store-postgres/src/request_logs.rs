//! Request logs: batched inserts, the list query of every request dialect, retention.

use apitrail_model::query::request_id_variants;
use apitrail_model::{
    LogFilter, PageRequest, PageStart, RequestLog, Sort, SortDir, SortKey, Timestamp,
};
use apitrail_store::{Page, StoreError};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use crate::{Args, Reader, backend, corrupt, params, push, ts};

/// The columns [`log_from_row`] reads, in its order.
const COLUMNS: &str = "id, created_at, duration_ms, status_code, method, path, route_pattern, \
     request_id, auth_type, error_code, query, started_at, completed_at, client_ip, user_agent, \
     origin, principal_type, principal_id, user_id, email, api_key_id, service_account_id, \
     price, minutes, seconds, stripe_invoice_item_id, request_body_truncated, \
     response_body_truncated, metadata, request_body, response_body";

fn log_from_row(r: &Row) -> Result<RequestLog, StoreError> {
    let duration: i64 = r.get(2);
    let status: i32 = r.get(3);
    let ip: Option<String> = r.get(13);
    Ok(RequestLog {
        id: r.get(0),
        created_at: ts(r.get(1))?,
        duration_ms: (duration >= 0).then_some(duration),
        status_code: u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?,
        method: r.get(4),
        path: r.get(5),
        route_pattern: r.get(6),
        request_id: r.get(7),
        auth_type: r.get(8),
        error_code: r.get(9),
        query: r.get(10),
        started_at: r.get::<_, Option<i64>>(11).map(ts).transpose()?,
        completed_at: r.get::<_, Option<i64>>(12).map(ts).transpose()?,
        client_ip: ip
            .map(|s| s.parse().map_err(|_| corrupt(format!("client ip {s:?}"))))
            .transpose()?,
        user_agent: r.get(14),
        origin: r.get(15),
        principal_type: r.get(16),
        principal_id: r.get(17),
        user_id: r.get(18),
        email: r.get(19),
        api_key_id: r.get(20),
        service_account_id: r.get(21),
        price: r.get(22),
        minutes: r.get(23),
        seconds: r.get(24),
        stripe_invoice_item_id: r.get(25),
        request_body_truncated: r.get(26),
        response_body_truncated: r.get(27),
        metadata: r.get(28),
        request_body: r.get(29),
        response_body: r.get(30),
    })
}

/// Milliseconds in a UTC day, the width of a partition.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The partition (UTC day since 1970-01-01) a `created_at` falls in.
pub(crate) fn day_of(created_at_ms: i64) -> i64 {
    created_at_ms.div_euclid(DAY_MS)
}

/// Claims client-supplied ids in `request_log_ids`; returns those that were new. `claims` are
/// `(org, id, created_at)`, sorted by `(org, id)` without repeats, so that concurrent
/// transactions take their locks in one order and cannot deadlock.
pub(crate) async fn claim(
    tx: &impl GenericClient,
    claims: &[(i64, Uuid, i64)],
) -> Result<Vec<(i64, Uuid)>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let orgs: Vec<i64> = claims.iter().map(|c| c.0).collect();
    let ids: Vec<Uuid> = claims.iter().map(|c| c.1).collect();
    let created: Vec<i64> = claims.iter().map(|c| c.2).collect();
    let rows = tx
        .query(
            "INSERT INTO request_log_ids (org, id, created_at) \
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[]) \
             ON CONFLICT (org, id) DO NOTHING RETURNING org, id",
            &[&orgs, &ids, &created],
        )
        .await
        .map_err(backend)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The types of the columns [`copy`] writes: `org`, then [`COLUMNS`] in order.
#[rustfmt::skip]
const COPY_TYPES: [Type; 32] = {
    const TX: Type = Type::TEXT;
    const I8: Type = Type::INT8;
    const B: Type = Type::BOOL;
    [
        I8, Type::UUID, I8, I8, Type::INT4, // org, id, created_at, duration_ms, status_code
        TX, TX, TX, TX, TX, TX, TX,         // method .. query
        I8, I8,                             // started_at, completed_at
        TX, TX, TX, TX, TX, TX, TX, TX, TX, TX, // client_ip .. price
        I8, I8, TX,                         // minutes, seconds, stripe_invoice_item_id
        B, B, TX, TX, TX,                   // truncation flags, metadata, bodies
    ]
};

/// Writes `(org, log)` rows with one binary COPY into the partitioned table (PostgreSQL
/// routes each row to its day's partition, which must exist).
pub(crate) async fn copy(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[(i64, &RequestLog)],
) -> Result<u64, StoreError> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::ToSql;
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(&format!(
            "COPY request_logs (org, {COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(backend)?;
    let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
    let mut writer = std::pin::pin!(writer);
    for (org, l) in rows {
        let created = l.created_at.millis();
        let duration = l.duration_ms.unwrap_or(-1);
        let status = i32::from(l.status_code);
        let started = l.started_at.map(Timestamp::millis);
        let completed = l.completed_at.map(Timestamp::millis);
        let ip = l.client_ip.map(|ip| ip.to_string());
        let values: [&(dyn ToSql + Sync); 32] = [
            org,
            &l.id,
            &created,
            &duration,
            &status,
            &l.method,
            &l.path,
            &l.route_pattern,
            &l.request_id,
            &l.auth_type,
            &l.error_code,
            &l.query,
            &started,
            &completed,
            &ip,
            &l.user_agent,
            &l.origin,
            &l.principal_type,
            &l.principal_id,
            &l.user_id,
            &l.email,
            &l.api_key_id,
            &l.service_account_id,
            &l.price,
            &l.minutes,
            &l.seconds,
            &l.stripe_invoice_item_id,
            &l.request_body_truncated,
            &l.response_body_truncated,
            &l.metadata,
            &l.request_body,
            &l.response_body,
        ];
        writer.as_mut().write(&values).await.map_err(backend)?;
    }
    writer.as_mut().finish().await.map_err(backend)
}

/// The SQL column of a sort key.
fn column(key: SortKey) -> &'static str {
    match key {
        SortKey::CreatedAt => "created_at",
        SortKey::DurationMs => "duration_ms",
        SortKey::StatusCode => "status_code",
    }
}

pub(crate) async fn list(
    c: &Reader,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Page<RequestLog>, StoreError> {
    let (sql, args) = list_query(org, filter, sort, page);
    let rows = c.query(&sql, &params(&args)).await.map_err(backend)?;
    let mut items = rows
        .iter()
        .map(log_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let has_more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    Ok(Page { items, has_more })
}

/// The plan PostgreSQL chooses for the statement `list` runs (`EXPLAIN`, without costs).
pub(crate) async fn explain_list(
    c: &impl GenericClient,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<String, StoreError> {
    let (sql, args) = list_query(org, filter, sort, page);
    let rows = c
        .query(&format!("EXPLAIN (COSTS OFF) {sql}"), &params(&args))
        .await
        .map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The statement of one list page and its parameters.
fn list_query(org: i64, filter: &LogFilter, sort: Sort, page: PageRequest) -> (String, Args) {
    let mut args: Args = vec![Box::new(org)];
    // Every condition but the status range, which the skip-scan form handles itself.
    let mut conds = String::new();
    let mut equality = false;
    for (name, value) in [
        ("method", &filter.method),
        ("route_pattern", &filter.route_pattern),
        ("auth_type", &filter.auth_type),
        ("api_key_id", &filter.api_key_id),
        ("service_account_id", &filter.service_account_id),
        ("user_id", &filter.user_id),
        ("email", &filter.email),
    ] {
        if let Some(v) = value {
            let p = push(&mut args, v.clone());
            conds.push_str(&format!(" AND {name} = {p}"));
            equality = true;
        }
    }
    if let Some(r) = &filter.request_id {
        let [a, b] = request_id_variants(r);
        let (a, b) = (push(&mut args, a), push(&mut args, b));
        conds.push_str(&format!(" AND request_id IN ({a}, {b})"));
        equality = true;
    }
    if let Some(t) = filter.from {
        let p = push(&mut args, t.millis());
        conds.push_str(&format!(" AND created_at >= {p}"));
    }
    if let Some(t) = filter.to {
        let p = push(&mut args, t.millis());
        conds.push_str(&format!(" AND created_at < {p}"));
    }
    let key = column(sort.key);
    let (cmp, dir) = match sort.dir {
        SortDir::Asc => (">", "ASC"),
        SortDir::Desc => ("<", "DESC"),
    };
    let mut offset = None;
    match page.start {
        PageStart::First => {}
        PageStart::After(pos) => {
            let k = if sort.key == SortKey::StatusCode {
                // The column is an integer; a key beyond its range orders the same way.
                push(
                    &mut args,
                    i32::try_from(pos.key.clamp(i64::from(i32::MIN), i64::from(i32::MAX)))
                        .unwrap_or(0),
                )
            } else {
                push(&mut args, pos.key)
            };
            let id = push(&mut args, pos.id);
            conds.push_str(&format!(" AND ({key}, id) {cmp} ({k}, {id})"));
            if sort.key == SortKey::CreatedAt {
                // Implied by the row comparison, but only a plain bound lets the planner skip
                // the partitions the cursor has passed.
                conds.push_str(&format!(" AND created_at {cmp}= {k}"));
            }
        }
        PageStart::Offset(n) => offset = Some(i64::try_from(n).unwrap_or(i64::MAX)),
    }
    let ranged = filter.status_min.is_some() || filter.status_max.is_some();
    // Pushed only when used: PostgreSQL cannot type a parameter no statement mentions.
    let (lo, hi) = if ranged {
        (
            push(&mut args, i32::from(filter.status_min.unwrap_or(100))),
            push(&mut args, i32::from(filter.status_max.unwrap_or(599))),
        )
    } else {
        (String::new(), String::new())
    };
    let limit = push(&mut args, i64::from(page.limit) + 1);
    let order = format!("ORDER BY {key} {dir}, id {dir} LIMIT {limit}");
    let sql = if ranged && sort.key == SortKey::CreatedAt && !equality && offset.is_none() {
        // A status range in created_at order: one index seek per status code present (found
        // by a loose scan of the status index), each reading at most a page in created_at
        // order, then merged. A B-tree cannot give created_at order across a range of codes,
        // and without this the planner reads the whole range and sorts it.
        format!(
            "WITH RECURSIVE codes(c) AS ( \
               SELECT min(status_code) FROM request_logs \
                WHERE org = $1 AND status_code >= {lo} AND status_code <= {hi} \
               UNION ALL \
               SELECT (SELECT min(status_code) FROM request_logs \
                        WHERE org = $1 AND status_code > codes.c AND status_code <= {hi}) \
                 FROM codes WHERE codes.c IS NOT NULL) \
             SELECT r.* FROM codes CROSS JOIN LATERAL ( \
               SELECT {COLUMNS} FROM request_logs \
                WHERE org = $1 AND status_code = codes.c{conds} {order}) r \
             WHERE codes.c IS NOT NULL {order}"
        )
    } else {
        let status = if ranged {
            format!(" AND status_code >= {lo} AND status_code <= {hi}")
        } else {
            String::new()
        };
        let mut sql =
            format!("SELECT {COLUMNS} FROM request_logs WHERE org = $1{conds}{status} {order}");
        if let Some(n) = offset {
            let p = push(&mut args, n);
            sql.push_str(&format!(" OFFSET {p}"));
        }
        sql
    };
    (sql, args)
}

pub(crate) async fn get(c: &Reader, org: i64, id: Uuid) -> Result<Option<RequestLog>, StoreError> {
    // The id alone does not name a partition: each one's primary key is probed, oldest first.
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM request_logs WHERE org = $1 AND id = $2 \
                 ORDER BY created_at LIMIT 1"
            ),
            &[&org, &id],
        )
        .await
        .map_err(backend)?;
    rows.first().map(log_from_row).transpose()
}

/// Deletes up to `max` of the org's logs created before `before`, oldest first, with their
/// id claims, in one statement (a claim never outlives its record, so a retry of a purged id
/// is stored again, as on SQLite).
pub(crate) async fn purge(
    c: &impl GenericClient,
    org: i64,
    before: Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    // The bounds on created_at come from the chosen rows (an initplan), so that execution
    // visits only the partitions that hold them.
    let n: i64 = c
        .query_one(
            "WITH doomed AS MATERIALIZED ( \
               SELECT created_at, id FROM request_logs \
                WHERE org = $1 AND created_at < $2 ORDER BY created_at, id LIMIT $3), \
             gone AS ( \
               DELETE FROM request_logs \
                WHERE org = $1 \
                  AND created_at >= (SELECT min(created_at) FROM doomed) \
                  AND created_at <= (SELECT max(created_at) FROM doomed) \
                  AND (created_at, id) IN (SELECT created_at, id FROM doomed) \
               RETURNING id), \
             unclaimed AS ( \
               DELETE FROM request_log_ids WHERE org = $1 AND id IN (SELECT id FROM gone)) \
             SELECT count(*) FROM gone",
            &[&org, &before.millis(), &i64::from(max)],
        )
        .await
        .map_err(backend)?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Deletes up to `max` of the org's id claims for records created before `before` (left by
/// partitions retention dropped whole); returns how many.
pub(crate) async fn prune_claims(
    c: &impl GenericClient,
    org: i64,
    before: Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    c.execute(
        "DELETE FROM request_log_ids WHERE org = $1 AND id IN ( \
           SELECT id FROM request_log_ids WHERE org = $1 AND created_at < $2 LIMIT $3)",
        &[&org, &before.millis(), &i64::from(max)],
    )
    .await
    .map_err(backend)
}

/// The partitions of `request_logs`: `(table name, first day, day after the last)` in ms.
pub(crate) async fn partitions(
    c: &impl GenericClient,
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let rows = c
        .query(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) \
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
              WHERE i.inhparent = 'request_logs'::regclass ORDER BY 1",
            &[],
        )
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| {
            let name: String = r.get(0);
            let bound: String = r.get(1);
            let (lo, hi) = range_bound(&bound)
                .ok_or_else(|| corrupt(format!("partition {name} has the bound {bound:?}")))?;
            Ok((name, lo, hi))
        })
        .collect()
}

/// Reads `FOR VALUES FROM ('lo') TO ('hi')`.
fn range_bound(bound: &str) -> Option<(i64, i64)> {
    let number = |s: &str| -> Option<i64> {
        s.trim()
            .trim_matches(|c| c == '(' || c == ')' || c == '\'')
            .parse()
            .ok()
    };
    let rest = bound.strip_prefix("FOR VALUES FROM ")?;
    let (lo, hi) = rest.split_once(" TO ")?;
    Some((number(lo)?, number(hi)?))
}

/// Drops a partition retention has emptied of live days. Waits at most a few seconds for
/// the exclusive lock on the parent (long reads would otherwise queue every query behind
/// the DROP); a partition not dropped now is dropped by the next pass.
pub(crate) async fn drop_partition(client: &mut Client, name: &str) -> Result<bool, StoreError> {
    let tx = crate::begin(client).await?;
    tx.batch_execute("SET LOCAL lock_timeout = '5s'")
        .await
        .map_err(backend)?;
    let sql = format!("DROP TABLE IF EXISTS \"{}\"", name.replace('"', "\"\""));
    match tx.batch_execute(&sql).await {
        Ok(()) => {
            tx.commit().await.map_err(backend)?;
            Ok(true)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            tracing::info!(
                partition = name,
                "retention: partition busy, dropped next time"
            );
            Ok(false)
        }
        Err(e) => Err(backend(e)),
    }
}

/// Makes the partition of `day` unless it exists (see migration 0003). Another server making
/// the same day at the same moment waits for it on an advisory lock; the few errors a race
/// can still raise are retried.
pub(crate) async fn make_partition(c: &impl GenericClient, day: i64) -> Result<(), StoreError> {
    use tokio_postgres::error::SqlState;
    let mut attempt = 0;
    loop {
        match c
            .execute("SELECT apitrail_request_log_partition($1)", &[&day])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e)
                if attempt < 5
                    && e.code().is_some_and(|code| {
                        [
                            SqlState::DUPLICATE_TABLE,
                            SqlState::UNIQUE_VIOLATION,
                            SqlState::T_R_DEADLOCK_DETECTED,
                            SqlState::INVALID_OBJECT_DEFINITION,
                            SqlState::WRONG_OBJECT_TYPE,
                        ]
                        .contains(code)
                    }) =>
            {
                attempt += 1;
                tracing::debug!(day, error = %e, "making a partition raced; retrying");
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

pub(crate) async fn count(c: &Reader, org: i64) -> Result<u64, StoreError> {
    let rows = c
        .query("SELECT count(*) FROM request_logs WHERE org = $1", &[&org])
        .await
        .map_err(backend)?;
    let n: i64 = rows
        .first()
        .ok_or_else(|| corrupt("count returned no row".into()))?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

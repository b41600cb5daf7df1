//! Request logs: batched inserts, the list query of every request dialect, retention.

use std::collections::HashSet;

use apitrail_model::query::request_id_variants;
use apitrail_model::{
    LogFilter, PageRequest, PageStart, RequestLog, Sort, SortDir, SortKey, Timestamp,
};
use apitrail_store::{Page, StoreError, ValueField, stored};
use tokio_postgres::Row;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::partitions::day_of;
use crate::reader::{Reader, Sql};
use crate::rows::{corrupt, ts};
use crate::{Args, backend, params, push};

/// The columns [`log_from_row`] reads, in its order.
pub(crate) const COLUMNS: &str = "id, created_at, duration_ms, status_code, method, path, route_pattern, \
     request_id, auth_type, error_code, query, started_at, completed_at, client_ip, user_agent, \
     origin, principal_type, principal_id, user_id, email, api_key_id, service_account_id, \
     price, minutes, seconds, stripe_invoice_item_id, request_body_truncated, \
     response_body_truncated, metadata, request_body, response_body";

/// A row of [`COLUMNS`] of org `org`, decoded by the rule of `apitrail_store::stored`.
pub(crate) fn log_from_row(org: i64, r: &Row) -> Result<RequestLog, StoreError> {
    let id = r.get(0);
    let duration: i64 = r.get(2);
    let status: i32 = r.get(3);
    let optional_ts = |column, i| {
        let ms: Option<i64> = r.get(i);
        stored::optional(org, id, column, ms.map(Timestamp::from_millis))
    };
    let ip: Option<&str> = r.get(13);
    Ok(RequestLog {
        id,
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
        started_at: optional_ts("started_at", 11),
        completed_at: optional_ts("completed_at", 12),
        client_ip: stored::optional(org, id, "client_ip", ip.map(|s| s.parse().ok())),
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

/// Claims client-supplied ids in `request_log_ids`; returns those that were new. `claims` are
/// `(org, id, created_at)`, sorted by `(org, id)` without repeats, so that concurrent
/// transactions take their locks in one order and cannot deadlock.
pub(crate) async fn claim(
    tx: &impl Sql,
    claims: &[(i64, Uuid, i64)],
) -> Result<Vec<(i64, Uuid)>, StoreError> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let orgs: Vec<i64> = claims.iter().map(|c| c.0).collect();
    let ids: Vec<Uuid> = claims.iter().map(|c| c.1).collect();
    let created: Vec<i64> = claims.iter().map(|c| c.2).collect();
    tx.all(
        "INSERT INTO request_log_ids (org, id, created_at) \
         SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[]) \
         ON CONFLICT (org, id) DO NOTHING RETURNING org, id",
        &[&orgs, &ids, &created],
        |r| Ok((r.get(0), r.get(1))),
    )
    .await
}

/// Which of `(org, id)` are stored records, with their `created_at`. Probes the primary key
/// of every partition, so it is only asked about ids that may be stored without a claim: ids
/// this server minted, sent back by a client.
pub(crate) async fn stored_among(
    tx: &impl Sql,
    keys: &[(i64, Uuid)],
) -> Result<Vec<(i64, Uuid, i64)>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let orgs: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1).collect();
    tx.all(
        // LATERAL: one probe of each partition's primary key per id, never a scan.
        "SELECT k.org, k.id, l.created_at FROM unnest($1::bigint[], $2::uuid[]) AS k(org, id), \
         LATERAL (SELECT created_at FROM request_logs \
                  WHERE org = k.org AND id = k.id ORDER BY created_at LIMIT 1) l",
        &[&orgs, &ids],
        |r| Ok((r.get(0), r.get(1), r.get(2))),
    )
    .await
}

/// One value an org's request logs hold: `(org, field, value)`.
pub(crate) type Value = (i64, ValueField, String);

/// The values of `rows` that `request_log_values` must hold, without repeats, sorted (so
/// that concurrent transactions add them in one order and cannot deadlock).
pub(crate) fn values_of(rows: &[(i64, &RequestLog)]) -> Vec<Value> {
    let mut seen: HashSet<(i64, ValueField, &str)> = HashSet::new();
    let mut codes: HashSet<(i64, u16)> = HashSet::new();
    for (org, log) in rows {
        codes.insert((*org, log.status_code));
        if let Some(k) = &log.api_key_id {
            seen.insert((*org, ValueField::ApiKey, k));
        }
        if let Some(s) = &log.service_account_id {
            seen.insert((*org, ValueField::ServiceAccount, s));
        }
        if let Some(e) = &log.email {
            seen.insert((*org, ValueField::Email, e));
        }
    }
    let mut values: Vec<Value> = seen
        .into_iter()
        .map(|(org, field, v)| (org, field, v.to_owned()))
        .chain(
            codes
                .into_iter()
                .map(|(org, code)| (org, ValueField::Status, code.to_string())),
        )
        .collect();
    values.sort_unstable();
    values
}

/// Adds `values` (sorted, without repeats) to `request_log_values`, in the transaction that
/// stores the records holding them.
pub(crate) async fn note_values(tx: &impl Sql, values: &[Value]) -> Result<(), StoreError> {
    if values.is_empty() {
        return Ok(());
    }
    let orgs: Vec<i64> = values.iter().map(|v| v.0).collect();
    let fields: Vec<i16> = values.iter().map(|v| v.1.code()).collect();
    let texts: Vec<&str> = values.iter().map(|v| v.2.as_str()).collect();
    tx.exec(
        "INSERT INTO request_log_values (org, field, value) \
         SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::text[]) \
         ON CONFLICT DO NOTHING",
        &[&orgs, &fields, &texts],
    )
    .await?;
    Ok(())
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

/// Adds what a group stored to the org/day counts in `slot` (the writer's own), in
/// `(org, day)` order so that writers sharing a slot cannot deadlock.
pub(crate) async fn count_stored(
    tx: &impl Sql,
    slot: i32,
    rows: &[(i64, &RequestLog)],
) -> Result<(), StoreError> {
    let mut counts: std::collections::BTreeMap<(i64, i64), i64> = Default::default();
    for (org, log) in rows {
        *counts
            .entry((*org, day_of(log.created_at.millis())))
            .or_default() += 1;
    }
    if counts.is_empty() {
        return Ok(());
    }
    let orgs: Vec<i64> = counts.keys().map(|k| k.0).collect();
    let days: Vec<i64> = counts.keys().map(|k| k.1).collect();
    let slots: Vec<i32> = vec![slot; counts.len()];
    let ns: Vec<i64> = counts.into_values().collect();
    tx.exec(
        "INSERT INTO request_log_counts (org, day, slot, n) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[]) \
         ON CONFLICT (org, day, slot) DO UPDATE SET n = request_log_counts.n + EXCLUDED.n",
        &[&orgs, &days, &slots, &ns],
    )
    .await?;
    Ok(())
}

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
    let codes = match status_runs(filter, sort, page) {
        Some((lo, hi)) => {
            let rows = c
                .prepared(STATUS_CODES, &[&org, &ValueField::Status.code()])
                .await?;
            let codes = codes_in(&rows, lo, hi);
            if codes.is_empty() {
                return Ok(Page::empty());
            }
            Some(codes)
        }
        None => None,
    };
    let (sql, args) = list_query(org, filter, sort, page, codes);
    let items = c
        .prepared(&sql, &params(&args))
        .await?
        .iter()
        .map(|r| log_from_row(org, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_lookahead(items, page.limit))
}

/// The status codes the org's logs have held (`request_log_values`), a few dozen at most;
/// the range is applied by [`codes_in`]. A code no stored record has any more gives an empty
/// run. Its parameters are the org and [`ValueField::Status`]'s code.
const STATUS_CODES: &str = "SELECT value FROM request_log_values WHERE org = $1 AND field = $2";

/// The codes of `rows` (of [`STATUS_CODES`]) within `[lo, hi]`, ascending.
fn codes_in(rows: &[Row], lo: i32, hi: i32) -> Vec<i32> {
    let mut codes: Vec<i32> = rows
        .iter()
        .filter_map(|r| r.get::<_, &str>(0).parse().ok())
        .filter(|c| (lo..=hi).contains(c))
        .collect();
    codes.sort_unstable();
    codes
}

/// The status range `[lo, hi]` of a page served as merged runs, one per status code: a range
/// in created_at order with no equality filter, paged by keyset. A B-tree cannot give
/// created_at order across a range of codes, and without this the planner reads the whole
/// range and sorts it.
fn status_runs(filter: &LogFilter, sort: Sort, page: PageRequest) -> Option<(i32, i32)> {
    let ranged = filter.status_min.is_some() || filter.status_max.is_some();
    let equality = filter.method.is_some()
        || filter.route_pattern.is_some()
        || filter.auth_type.is_some()
        || filter.api_key_id.is_some()
        || filter.service_account_id.is_some()
        || filter.user_id.is_some()
        || filter.email.is_some()
        || filter.request_id.is_some();
    let keyset = !matches!(page.start, PageStart::Offset(_));
    (ranged && sort.key == SortKey::CreatedAt && !equality && keyset).then(|| {
        (
            i32::from(filter.status_min.unwrap_or(100)),
            i32::from(filter.status_max.unwrap_or(599)),
        )
    })
}

/// The plans PostgreSQL chooses for the statements `list` runs (`EXPLAIN`, without costs):
/// the loose scan's first, when the page needs one.
pub(crate) async fn explain_list(
    c: &Reader,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<String, StoreError> {
    let explain = |rows: Vec<Row>| {
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut plans = String::new();
    let codes = match status_runs(filter, sort, page) {
        Some((lo, hi)) => {
            let sql = format!("EXPLAIN (COSTS OFF) {STATUS_CODES}");
            let rows = c
                .client
                .rows(&sql, &[&org, &ValueField::Status.code()])
                .await?;
            plans = explain(rows) + "\n";
            let rows = c
                .prepared(STATUS_CODES, &[&org, &ValueField::Status.code()])
                .await?;
            Some(codes_in(&rows, lo, hi))
        }
        None => None,
    };
    let (sql, args) = list_query(org, filter, sort, page, codes);
    let rows = c
        .client
        .rows(&format!("EXPLAIN (COSTS OFF) {sql}"), &params(&args))
        .await?;
    Ok(plans + &explain(rows))
}

/// The lowest status of `request_logs_errors_by_duration` (migration 0006), a partial index.
const ERRORS_FROM: u16 = 400;

/// The statement of one list page and its parameters; `codes` are the status codes of the
/// range when the page is served as runs per code ([`status_runs`]).
fn list_query(
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
    codes: Option<Vec<i32>>,
) -> (String, Args) {
    let mut args: Args = vec![Box::new(org)];
    // Every condition but the status range, which the skip-scan form handles itself.
    let mut conds = String::new();
    // Each equality filter, and the `request_log_values` field that guards it, if any.
    for (name, value, guard) in [
        ("method", &filter.method, None),
        ("route_pattern", &filter.route_pattern, None),
        ("auth_type", &filter.auth_type, None),
        ("api_key_id", &filter.api_key_id, Some(ValueField::ApiKey)),
        (
            "service_account_id",
            &filter.service_account_id,
            Some(ValueField::ServiceAccount),
        ),
        ("user_id", &filter.user_id, None),
        ("email", &filter.email, Some(ValueField::Email)),
    ] {
        if let Some(v) = value {
            let p = push(&mut args, v.clone());
            conds.push_str(&format!(" AND {name} = {p}"));
            if let Some(field) = guard {
                // Not correlated with the row: an initplan, run once, and when false no
                // partition is read at all.
                conds.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM request_log_values \
                     WHERE org = $1 AND field = {} AND value = {p})",
                    field.code()
                ));
            }
        }
    }
    if let Some(r) = &filter.request_id {
        let [a, b] = request_id_variants(r);
        let (a, b) = (push(&mut args, a), push(&mut args, b));
        conds.push_str(&format!(" AND request_id IN ({a}, {b})"));
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
    let fetch = i64::from(page.limit) + 1;
    let sql = if let Some(codes) = codes {
        // One run per status code, each at most a page in created_at order, merged.
        let codes = push(&mut args, codes);
        let limit = push(&mut args, fetch);
        let order = format!("ORDER BY {key} {dir}, id {dir} LIMIT {limit}");
        format!(
            "SELECT r.* FROM unnest({codes}::int[]) codes(c) CROSS JOIN LATERAL ( \
               SELECT {COLUMNS} FROM request_logs \
                WHERE org = $1 AND status_code = codes.c{conds} {order}) r {order}"
        )
    } else {
        // Pushed only when used: PostgreSQL cannot type a parameter no statement mentions.
        let status = if ranged {
            let min = filter.status_min.unwrap_or(100);
            let max = filter.status_max.unwrap_or(599);
            if sort.key == SortKey::DurationMs && min >= ERRORS_FROM {
                // Errors by duration: the bounds as literals (integers, a few hundred
                // statements at most), so that the plan, made once per range, can prove the
                // partial index's predicate and knows how rare the range is; with
                // parameters the generic plan read the whole range and sorted it.
                format!(" AND status_code >= {min} AND status_code <= {max}")
            } else {
                let lo = push(&mut args, i32::from(min));
                let hi = push(&mut args, i32::from(max));
                format!(" AND status_code >= {lo} AND status_code <= {hi}")
            }
        } else {
            String::new()
        };
        let limit = push(&mut args, fetch);
        let order = format!("ORDER BY {key} {dir}, id {dir} LIMIT {limit}");
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
        .prepared(
            &format!(
                "SELECT {COLUMNS} FROM request_logs WHERE org = $1 AND id = $2 \
                 ORDER BY created_at LIMIT 1"
            ),
            &[&org, &id],
        )
        .await?;
    rows.first().map(|r| log_from_row(org, r)).transpose()
}

/// Deletes up to `max` of the org's logs created before `before`, oldest first, with their
/// id claims and their share of the counts, in one statement (a claim never outlives its record, so a retry of a purged id
/// is stored again, as on SQLite).
pub(crate) async fn purge(
    c: &impl Sql,
    org: i64,
    before: Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    // The bounds on created_at come from the chosen rows (an initplan), so that execution
    // visits only the partitions that hold them.
    let n: i64 = c
        .row(
            "WITH doomed AS MATERIALIZED ( \
               SELECT created_at, id FROM request_logs \
                WHERE org = $1 AND created_at < $2 ORDER BY created_at, id LIMIT $3), \
             gone AS ( \
               DELETE FROM request_logs \
                WHERE org = $1 \
                  AND created_at >= (SELECT min(created_at) FROM doomed) \
                  AND created_at <= (SELECT max(created_at) FROM doomed) \
                  AND (created_at, id) IN (SELECT created_at, id FROM doomed) \
               RETURNING id, created_at), \
             unclaimed AS ( \
               DELETE FROM request_log_ids WHERE org = $1 AND id IN (SELECT id FROM gone)), \
             uncounted AS ( \
               INSERT INTO request_log_counts (org, day, slot, n) \
               SELECT $1, floor(created_at / 86400000.0)::bigint, 0, -count(*) FROM gone \
                GROUP BY 2 ORDER BY 2 \
               ON CONFLICT (org, day, slot) DO UPDATE SET n = request_log_counts.n + EXCLUDED.n) \
             SELECT count(*) FROM gone",
            &[&org, &before.millis(), &i64::from(max)],
        )
        .await?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Deletes up to `max` of the org's id claims for records created before `before` (left by
/// partitions retention dropped whole); returns how many.
pub(crate) async fn prune_claims(
    c: &impl Sql,
    org: i64,
    before: Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    c.exec(
        "DELETE FROM request_log_ids WHERE org = $1 AND id IN ( \
           SELECT id FROM request_log_ids WHERE org = $1 AND created_at < $2 LIMIT $3)",
        &[&org, &before.millis(), &i64::from(max)],
    )
    .await
}

/// The org's stored logs, summed from its day counts (a scan of the logs took ~1 s at 5M).
pub(crate) async fn count(c: &Reader, org: i64) -> Result<u64, StoreError> {
    let rows = c
        .prepared(
            "SELECT coalesce(sum(n), 0)::bigint FROM request_log_counts WHERE org = $1",
            &[&org],
        )
        .await?;
    let n: i64 = rows
        .first()
        .ok_or_else(|| corrupt("count returned no row".into()))?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

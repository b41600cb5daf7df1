//! Request logs: batched inserts and keyset-paged queries.

use std::fmt::Write as _;

use apitrail_model::query::request_id_variants;
use apitrail_model::{LogFilter, PageRequest, PageStart, RequestLog, Sort, SortDir, SortKey};
use apitrail_store::{InsertOutcome, LogBatch, Page, StoreError};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use uuid::Uuid;

use crate::orgs::{ts, uuid_col};

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend(e)
}

const INSERT: &str = "INSERT INTO request_logs (org, id, created_at, duration_ms, status_code, \
     method, path, route_pattern, request_id, auth_type, error_code, query, started_at, \
     completed_at, client_ip, user_agent, origin, principal_type, principal_id, user_id, email, \
     api_key_id, service_account_id, price, minutes, seconds, stripe_invoice_item_id, \
     request_body_truncated, response_body_truncated, metadata, request_body, response_body) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32) \
     ON CONFLICT (org, id) DO NOTHING";

/// Inserts every log of every batch; an id already stored for the org is a duplicate.
pub(crate) fn insert(conn: &Connection, batches: &[LogBatch]) -> Result<InsertOutcome, StoreError> {
    let mut st = conn.prepare_cached(INSERT).map_err(backend)?;
    let mut outcome = InsertOutcome::default();
    for batch in batches {
        let org = batch.tenant.key();
        for log in &batch.logs {
            let ip = log.client_ip.map(|ip| ip.to_string());
            let n = st
                .execute(params![
                    org,
                    log.id.as_bytes(),
                    log.created_at.millis(),
                    log.duration_ms.unwrap_or(-1),
                    log.status_code,
                    log.method,
                    log.path,
                    log.route_pattern,
                    log.request_id,
                    log.auth_type,
                    log.error_code,
                    log.query,
                    log.started_at.map(|t| t.millis()),
                    log.completed_at.map(|t| t.millis()),
                    ip,
                    log.user_agent,
                    log.origin,
                    log.principal_type,
                    log.principal_id,
                    log.user_id,
                    log.email,
                    log.api_key_id,
                    log.service_account_id,
                    log.price,
                    log.minutes,
                    log.seconds,
                    log.stripe_invoice_item_id,
                    log.request_body_truncated,
                    log.response_body_truncated,
                    log.metadata,
                    log.request_body,
                    log.response_body,
                ])
                .map_err(backend)?;
            if n == 1 {
                outcome.accepted += 1;
            } else {
                outcome.duplicates += 1;
            }
        }
    }
    Ok(outcome)
}

const COLUMNS: &str = "id, created_at, duration_ms, status_code, method, path, route_pattern, \
     request_id, auth_type, error_code, query, started_at, completed_at, client_ip, user_agent, \
     origin, principal_type, principal_id, user_id, email, api_key_id, service_account_id, price, \
     minutes, seconds, stripe_invoice_item_id, request_body_truncated, response_body_truncated, \
     metadata, request_body, response_body";

fn from_row(r: &Row<'_>) -> rusqlite::Result<RequestLog> {
    let duration: i64 = r.get(2)?;
    let ip: Option<String> = r.get(13)?;
    Ok(RequestLog {
        id: uuid_col(r, 0)?,
        created_at: ts(r.get(1)?)?,
        duration_ms: (duration >= 0).then_some(duration),
        status_code: r.get(3)?,
        method: r.get(4)?,
        path: r.get(5)?,
        route_pattern: r.get(6)?,
        request_id: r.get(7)?,
        auth_type: r.get(8)?,
        error_code: r.get(9)?,
        query: r.get(10)?,
        started_at: r.get::<_, Option<i64>>(11)?.map(ts).transpose()?,
        completed_at: r.get::<_, Option<i64>>(12)?.map(ts).transpose()?,
        // Stored addresses were parsed at ingest; an unparsable one reads as unknown.
        client_ip: ip.and_then(|s| s.parse().ok()),
        user_agent: r.get(14)?,
        origin: r.get(15)?,
        principal_type: r.get(16)?,
        principal_id: r.get(17)?,
        user_id: r.get(18)?,
        email: r.get(19)?,
        api_key_id: r.get(20)?,
        service_account_id: r.get(21)?,
        price: r.get(22)?,
        minutes: r.get(23)?,
        seconds: r.get(24)?,
        stripe_invoice_item_id: r.get(25)?,
        request_body_truncated: r.get(26)?,
        response_body_truncated: r.get(27)?,
        metadata: r.get(28)?,
        request_body: r.get(29)?,
        response_body: r.get(30)?,
    })
}

fn sort_column(key: SortKey) -> &'static str {
    match key {
        SortKey::CreatedAt => "created_at",
        SortKey::DurationMs => "duration_ms",
        SortKey::StatusCode => "status_code",
    }
}

/// Builds the WHERE clause (after `org = ?1`) and its parameters for `filter`.
fn filter_sql(filter: &LogFilter, sql: &mut String, args: &mut Vec<Value>) {
    let eq = |column: &str, value: &Option<String>, sql: &mut String, args: &mut Vec<Value>| {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            let _ = write!(sql, " AND {column} = ?{}", args.len());
        }
    };
    eq("method", &filter.method, sql, args);
    eq("route_pattern", &filter.route_pattern, sql, args);
    eq("auth_type", &filter.auth_type, sql, args);
    eq("api_key_id", &filter.api_key_id, sql, args);
    eq("service_account_id", &filter.service_account_id, sql, args);
    eq("user_id", &filter.user_id, sql, args);
    if let Some(rid) = &filter.request_id {
        let [a, b] = request_id_variants(rid);
        args.push(Value::Text(a));
        args.push(Value::Text(b));
        let _ = write!(
            sql,
            " AND request_id IN (?{}, ?{})",
            args.len() - 1,
            args.len()
        );
    }
    let int = |cond: &str, value: Option<i64>, sql: &mut String, args: &mut Vec<Value>| {
        if let Some(v) = value {
            args.push(Value::Integer(v));
            let _ = write!(sql, " AND {cond} ?{}", args.len());
        }
    };
    int(
        "status_code >=",
        filter.status_min.map(i64::from),
        sql,
        args,
    );
    int(
        "status_code <=",
        filter.status_max.map(i64::from),
        sql,
        args,
    );
    int("created_at >=", filter.from.map(|t| t.millis()), sql, args);
    int("created_at <", filter.to.map(|t| t.millis()), sql, args);
}

/// One page of an org's logs. Fetches `limit + 1` rows to learn whether more follow.
pub(crate) fn list(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Page<RequestLog>, StoreError> {
    let status_range = filter.status_min.is_some() || filter.status_max.is_some();
    let other_index = filter.method.is_some()
        || filter.route_pattern.is_some()
        || filter.auth_type.is_some()
        || filter.request_id.is_some();
    if sort.key == SortKey::CreatedAt
        && status_range
        && !other_index
        && !matches!(page.start, PageStart::Offset(_))
    {
        return list_by_status_runs(conn, org, filter, sort, page);
    }
    let key = sort_column(sort.key);
    let (cmp, dir) = match sort.dir {
        SortDir::Asc => (">", "ASC"),
        SortDir::Desc => ("<", "DESC"),
    };
    // Without statistics the planner prefers the index that yields the requested order and
    // tests `request_id` row by row over the org's whole history; a request id matches a
    // handful of logs at most, so seeking them and sorting those few is always cheaper.
    let table = if filter.request_id.is_some() {
        "request_logs INDEXED BY request_logs_by_request_id"
    } else {
        "request_logs"
    };
    let mut sql = format!("SELECT {COLUMNS} FROM {table} WHERE org = ?1");
    let mut args = vec![Value::Integer(org)];
    filter_sql(filter, &mut sql, &mut args);
    let mut offset = 0u64;
    match page.start {
        PageStart::First => {}
        PageStart::After(pos) => {
            args.push(Value::Integer(pos.key));
            args.push(Value::Blob(pos.id.as_bytes().to_vec()));
            // A row-value comparison is what lets SQLite turn the keyset into an index range.
            let _ = write!(
                sql,
                " AND ({key}, id) {cmp} (?{}, ?{})",
                args.len() - 1,
                args.len()
            );
        }
        PageStart::Offset(n) => offset = n,
    }
    args.push(Value::Integer(i64::from(page.limit) + 1));
    let _ = write!(sql, " ORDER BY {key} {dir}, id {dir} LIMIT ?{}", args.len());
    if offset > 0 {
        args.push(Value::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
        let _ = write!(sql, " OFFSET ?{}", args.len());
    }
    let mut st = conn.prepare_cached(&sql).map_err(backend)?;
    let mut items = st
        .query_map(params_from_iter(args), from_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(backend)?;
    let has_more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    Ok(Page { items, has_more })
}

/// The status codes present in the org within `[lo, hi]`, found by one index seek each.
fn status_values(conn: &Connection, org: i64, lo: u16, hi: u16) -> Result<Vec<i64>, StoreError> {
    let mut st = conn
        .prepare_cached(
            "SELECT status_code FROM request_logs INDEXED BY request_logs_by_status_created \
             WHERE org = ?1 AND status_code > ?2 AND status_code <= ?3 ORDER BY status_code LIMIT 1",
        )
        .map_err(backend)?;
    let mut values = Vec::new();
    let mut prev = i64::from(lo) - 1;
    while let Some(v) = st
        .query_row(params![org, prev, hi], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(backend)?
    {
        values.push(v);
        prev = v;
    }
    Ok(values)
}

/// A page in created_at order under a status range: the best `limit + 1` keys of each
/// status code's run of `request_logs_by_status_created` are merged, then only the winning
/// rows are read. Cost grows with the number of distinct codes in the range (a handful),
/// not with how rare the matching logs are.
fn list_by_status_runs(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Page<RequestLog>, StoreError> {
    let values = status_values(
        conn,
        org,
        filter.status_min.unwrap_or(100),
        filter.status_max.unwrap_or(599),
    )?;
    if values.is_empty() {
        return Ok(Page {
            items: Vec::new(),
            has_more: false,
        });
    }
    let (cmp, dir) = match sort.dir {
        SortDir::Asc => (">", "ASC"),
        SortDir::Desc => ("<", "DESC"),
    };
    let rest = LogFilter {
        status_min: None,
        status_max: None,
        ..filter.clone()
    };
    let mut clause = String::new();
    let mut args = vec![Value::Integer(org)];
    filter_sql(&rest, &mut clause, &mut args);
    if let PageStart::After(pos) = page.start {
        args.push(Value::Integer(pos.key));
        args.push(Value::Blob(pos.id.as_bytes().to_vec()));
        let _ = write!(
            clause,
            " AND (created_at, id) {cmp} (?{}, ?{})",
            args.len() - 1,
            args.len()
        );
    }
    args.push(Value::Integer(i64::from(page.limit) + 1));
    let limit = args.len();
    let arms: Vec<String> = values
        .iter()
        .map(|v| {
            args.push(Value::Integer(*v));
            format!(
                "SELECT * FROM (SELECT seq, created_at, id FROM request_logs \
                 INDEXED BY request_logs_by_status_created WHERE org = ?1 AND status_code = ?{}{clause} \
                 ORDER BY created_at {dir}, id {dir} LIMIT ?{limit})",
                args.len()
            )
        })
        .collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM request_logs WHERE seq IN (SELECT seq FROM ({}) \
         ORDER BY created_at {dir}, id {dir} LIMIT ?{limit}) ORDER BY created_at {dir}, id {dir}",
        arms.join(" UNION ALL ")
    );
    let mut st = conn.prepare_cached(&sql).map_err(backend)?;
    let mut items = st
        .query_map(params_from_iter(args), from_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
        .map_err(backend)?;
    let has_more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    Ok(Page { items, has_more })
}

/// One log by id, within the org.
pub(crate) fn get(conn: &Connection, org: i64, id: Uuid) -> Result<Option<RequestLog>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM request_logs WHERE org = ?1 AND id = ?2"
    ))
    .and_then(|mut st| {
        st.query_row(params![org, id.as_bytes()], from_row)
            .optional()
    })
    .map_err(backend)
}

/// Deletes the org's oldest logs created before `before`, at most `max` of them.
pub(crate) fn purge(
    conn: &Connection,
    org: i64,
    before: apitrail_model::Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "DELETE FROM request_logs WHERE seq IN (SELECT seq FROM request_logs \
         WHERE org = ?1 AND created_at < ?2 ORDER BY created_at LIMIT ?3)",
    )
    .and_then(|mut st| st.execute(params![org, before.millis(), max]))
    .map(|n| n as u64)
    .map_err(backend)
}

/// How many logs the org has.
pub(crate) fn count(conn: &Connection, org: i64) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM request_logs WHERE org = ?1")
        .and_then(|mut st| st.query_row([org], |r| r.get::<_, i64>(0)))
        .map(|n| n.max(0) as u64)
        .map_err(backend)
}

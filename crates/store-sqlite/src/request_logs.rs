//! Request logs: batched inserts and keyset-paged queries.

use std::collections::HashSet;
use std::fmt::Write as _;

use apitrail_model::query::request_id_variants;
use apitrail_model::{
    LogFilter, PageRequest, PageStart, Position, RequestLog, Sort, SortDir, SortKey, Timestamp,
};
use apitrail_store::logstats::Rollups;
use apitrail_store::{InsertOutcome, LogBatch, Page, StoreError, ValueField, stored};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use uuid::Uuid;

use crate::backend;
use crate::levels::{Levels, SideKey};
use crate::reader::Sql;
use crate::rows::{ts, uuid_col};

const INSERT: &str = "INSERT INTO request_logs (org, id, created_at, duration_ms, status_code, \
     method, path, route_pattern, request_id, auth_type, error_code, query, started_at, \
     completed_at, client_ip, user_agent, origin, principal_type, principal_id, user_id, email, \
     api_key_id, service_account_id, price, minutes, seconds, stripe_invoice_item_id, \
     request_body_truncated, response_body_truncated, metadata, request_body, response_body, tail_pos) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33) \
     ON CONFLICT (org, id) DO NOTHING";

/// Whether the org's logs have ever held `value` in `field` (`request_log_values`): `false`
/// means a filter on it matches nothing.
fn value_seen(
    conn: &Connection,
    org: i64,
    field: ValueField,
    value: &str,
) -> Result<bool, StoreError> {
    conn.one("SELECT EXISTS (SELECT 1 FROM request_log_values WHERE org = ?1 AND field = ?2 AND value = ?3)", params![org, field.code(), value], |r| r.get(0))
}

/// Inserts every log of every batch, and its side keys into the first level; an id already
/// stored for the org is a duplicate.
pub(crate) fn insert(
    conn: &Connection,
    batches: &[LogBatch],
    levels: &Levels,
    rollups: Option<Rollups>,
) -> Result<InsertOutcome, StoreError> {
    let mut st = conn.prepare_cached(INSERT).map_err(backend)?;
    let side = |key: SideKey, columns: &str, values: &str| {
        conn.prepare_cached(&format!(
            "INSERT INTO {} ({columns}) VALUES ({values})",
            key.tables()[0]
        ))
        .map_err(backend)
    };
    let mut by_duration = side(
        SideKey::Duration,
        "org, k, id, seq, status_code",
        "?1, ?2, ?3, ?4, ?5",
    )?;
    let mut by_request_id = side(SideKey::RequestId, "org, k, id, seq", "?1, ?2, ?3, ?4")?;
    let mut note_value = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO request_log_values (org, field, value) VALUES (?1, ?2, ?3)",
        )
        .map_err(backend)?;
    // The batch's values, each noted once (a batch repeats the same few keys).
    let mut noted: HashSet<(i64, ValueField, &str)> = HashSet::new();
    let mut with_request_id = 0;
    let mut outcome = InsertOutcome::default();
    // The tail's positions: taken here, under the database's write lock, so they follow
    // commit order (a duplicate wastes one, which leaves a hole, never a reordering).
    let mut tail_pos = crate::tail::last_position(conn)?;
    // Summed by the caller over every record; rebuilt from the stored ones only when some
    // were duplicates (which must not count twice).
    let mut accepted: Vec<(i64, &RequestLog)> = Vec::new();
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
                    {
                        tail_pos += 1;
                        tail_pos
                    },
                ])
                .map_err(backend)?;
            if n == 1 {
                outcome.accepted += 1;
                if rollups.is_some() {
                    accepted.push((org, log));
                }
                let seq = conn.last_insert_rowid();
                let id = log.id.as_bytes();
                by_duration
                    .execute(params![
                        org,
                        log.duration_ms.unwrap_or(-1),
                        id,
                        seq,
                        log.status_code
                    ])
                    .map_err(backend)?;
                if let Some(rid) = &log.request_id {
                    by_request_id
                        .execute(params![org, rid, id, seq])
                        .map_err(backend)?;
                    with_request_id += 1;
                }
                for (field, value) in [
                    (ValueField::ApiKey, &log.api_key_id),
                    (ValueField::ServiceAccount, &log.service_account_id),
                    (ValueField::Email, &log.email),
                ] {
                    if let Some(v) = value
                        && noted.insert((org, field, v.as_str()))
                    {
                        note_value
                            .execute(params![org, field.code(), v])
                            .map_err(backend)?;
                    }
                }
            } else {
                outcome.duplicates += 1;
            }
        }
    }
    crate::tail::set_last_position(conn, tail_pos)?;
    if let Some(all) = rollups {
        let rollups = if outcome.duplicates == 0 {
            all
        } else {
            let mut stored_only = Rollups::new();
            for (org, log) in accepted {
                stored_only.add(org, log);
            }
            stored_only
        };
        crate::rollups::stage(rollups);
    }
    levels.added(SideKey::Duration, outcome.accepted);
    levels.added(SideKey::RequestId, with_request_id);
    Ok(outcome)
}

pub(crate) const COLUMNS: &str = "id, created_at, duration_ms, status_code, method, path, route_pattern, \
     request_id, auth_type, error_code, query, started_at, completed_at, client_ip, user_agent, \
     origin, principal_type, principal_id, user_id, email, api_key_id, service_account_id, price, \
     minutes, seconds, stripe_invoice_item_id, request_body_truncated, response_body_truncated, \
     metadata, request_body, response_body";

/// A row of [`COLUMNS`] of org `org`, decoded by the rule of `apitrail_store::stored`.
pub(crate) fn from_row(org: i64, r: &Row<'_>) -> rusqlite::Result<RequestLog> {
    let id = uuid_col(r, 0)?;
    let duration: i64 = r.get(2)?;
    // Read as any type: SQLite keeps whatever was written, and an optional value that is not
    // what the store writes reads as unknown.
    let optional_ts = |column, i| -> rusqlite::Result<Option<Timestamp>> {
        let ms = match r.get::<_, Value>(i)? {
            Value::Null => None,
            Value::Integer(ms) => Some(Timestamp::from_millis(ms)),
            _ => Some(None),
        };
        Ok(stored::optional(org, id, column, ms))
    };
    let ip = match r.get::<_, Value>(13)? {
        Value::Null => None,
        Value::Text(s) => Some(s.parse().ok()),
        _ => Some(None),
    };
    Ok(RequestLog {
        id,
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
        started_at: optional_ts("started_at", 11)?,
        completed_at: optional_ts("completed_at", 12)?,
        client_ip: stored::optional(org, id, "client_ip", ip),
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

/// Builds the WHERE clause (after `org = ?1`) and its parameters for `filter`, on columns of
/// `request_logs` qualified by `table` (`""` or `"r."`).
pub(crate) fn filter_sql(filter: &LogFilter, table: &str, sql: &mut String, args: &mut Vec<Value>) {
    let eq = |column: &str, value: &Option<String>, sql: &mut String, args: &mut Vec<Value>| {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            let _ = write!(sql, " AND {table}{column} = ?{}", args.len());
        }
    };
    eq("method", &filter.method, sql, args);
    eq("route_pattern", &filter.route_pattern, sql, args);
    eq("auth_type", &filter.auth_type, sql, args);
    eq("api_key_id", &filter.api_key_id, sql, args);
    eq("service_account_id", &filter.service_account_id, sql, args);
    eq("user_id", &filter.user_id, sql, args);
    eq("email", &filter.email, sql, args);
    if let Some(rid) = &filter.request_id {
        let [a, b] = request_id_variants(rid);
        args.push(Value::Text(a));
        args.push(Value::Text(b));
        let (a, b) = (args.len() - 1, args.len());
        // The leveled request-id key finds the few candidate rows (see `request_id_rows`);
        // the column test keeps the clause exact whatever plan runs it.
        let _ = write!(
            sql,
            " AND {table}seq IN ({}) AND {table}request_id IN (?{a}, ?{b})",
            request_id_rows(a, b)
        );
    }
    let int = |cond: &str, value: Option<i64>, sql: &mut String, args: &mut Vec<Value>| {
        if let Some(v) = value {
            args.push(Value::Integer(v));
            let _ = write!(sql, " AND {table}{cond} ?{}", args.len());
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

/// The rows whose request id is one of parameters `?a`, `?b`, from every level of the
/// request-id key.
fn request_id_rows(a: usize, b: usize) -> String {
    SideKey::RequestId
        .tables()
        .iter()
        .map(|t| format!("SELECT seq FROM {t} WHERE org = ?1 AND k IN (?{a}, ?{b})"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The comparison that continues after a position, and the ORDER BY direction, of `dir`.
fn direction(dir: SortDir) -> (&'static str, &'static str) {
    match dir {
        SortDir::Asc => (">", "ASC"),
        SortDir::Desc => ("<", "DESC"),
    }
}

/// Pushes a keyset position's parameters; returns their numbers.
fn keyset_params(args: &mut Vec<Value>, pos: Position) -> (usize, usize) {
    args.push(Value::Integer(pos.key));
    args.push(Value::Blob(pos.id.as_bytes().to_vec()));
    (args.len() - 1, args.len())
}

/// The keyset condition `(key, id) cmp (?a, ?b)`. A row-value comparison is what lets SQLite
/// turn the keyset into an index range.
fn keyset_clause((key, id): (&str, &str), cmp: &str, (a, b): (usize, usize)) -> String {
    format!(" AND ({key}, {id}) {cmp} (?{a}, ?{b})")
}

/// Appends the keyset condition `(key, id) cmp (pos)` and its parameters.
fn push_keyset(
    sql: &mut String,
    args: &mut Vec<Value>,
    columns: (&str, &str),
    cmp: &str,
    pos: Position,
) {
    let params = keyset_params(args, pos);
    sql.push_str(&keyset_clause(columns, cmp, params));
}

/// The parameter numbers of a merged page's limits: how many candidates each run yields
/// (`offset + limit + 1`), how many the merge keeps (`limit + 1`), and how many it skips.
struct MergeLimits {
    per_run: usize,
    keep: usize,
    skip: usize,
}

/// Pushes the limits of a merged page (an `After` page is bounded by its keyset instead of an
/// offset).
fn merge_limits(args: &mut Vec<Value>, page: PageRequest) -> MergeLimits {
    let offset = match page.start {
        PageStart::Offset(n) => i64::try_from(n).unwrap_or(i64::MAX),
        PageStart::First | PageStart::After(_) => 0,
    };
    let wanted = i64::from(page.limit) + 1;
    args.push(Value::Integer(offset.saturating_add(wanted)));
    args.push(Value::Integer(wanted));
    args.push(Value::Integer(offset));
    let n = args.len();
    MergeLimits {
        per_run: n - 2,
        keep: n - 1,
        skip: n,
    }
}

/// The statement that merges sorted runs: each arm selects `(seq, <key>, id)` in `dir`
/// order, limited to `per_run` rows; the merge keeps the best `keep` after `skip`, and only
/// those rows of `request_logs` are read (by rowid), in the order of `row_key`.
fn merged_statement(
    arms: &[String],
    key: &str,
    row_key: &str,
    dir: &str,
    l: &MergeLimits,
) -> String {
    format!(
        "SELECT {COLUMNS} FROM request_logs NOT INDEXED WHERE seq IN (SELECT seq FROM ({}) \
         ORDER BY {key} {dir}, id {dir} LIMIT ?{} OFFSET ?{}) ORDER BY {row_key} {dir}, id {dir}",
        arms.join(" UNION ALL "),
        l.keep,
        l.skip
    )
}

/// Runs a query that asked for `limit + 1` rows and turns the extra row into `has_more`.
fn fetch_page(
    conn: &Connection,
    org: i64,
    sql: &str,
    args: Vec<Value>,
    limit: u32,
) -> Result<Page<RequestLog>, StoreError> {
    let items = conn.all(sql, params_from_iter(args), |r| from_row(org, r))?;
    Ok(Page::from_lookahead(items, limit))
}

/// The statement that answers a list query, asking for `limit + 1` rows.
pub(crate) struct ListStatement {
    sql: String,
    args: Vec<Value>,
}

/// One page of an org's logs. Fetches `limit + 1` rows to learn whether more follow.
pub(crate) fn list(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Page<RequestLog>, StoreError> {
    match plan(conn, org, filter, sort, page)? {
        Some(q) => fetch_page(conn, org, &q.sql, q.args, page.limit),
        None => Ok(Page::empty()),
    }
}

/// SQLite's plan for the statement `list` would run (for tests of index use).
pub(crate) fn explain(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Vec<String>, StoreError> {
    let Some(q) = plan(conn, org, filter, sort, page)? else {
        return Ok(Vec::new());
    };
    let mut st = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", q.sql))
        .map_err(backend)?;
    st.query_map(params_from_iter(q.args), |r| r.get::<_, String>(3))
        .and_then(Iterator::collect)
        .map_err(backend)
}

/// Chooses how to answer a list query; `None` when it is known to be empty.
fn plan(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Option<ListStatement>, StoreError> {
    // A service account or an email is not indexed: one the org never logged would walk
    // its whole history to find nothing.
    for (field, value) in [
        (ValueField::ApiKey, &filter.api_key_id),
        (ValueField::ServiceAccount, &filter.service_account_id),
        (ValueField::Email, &filter.email),
    ] {
        if let Some(v) = value
            && !value_seen(conn, org, field, v)?
        {
            return Ok(None);
        }
    }
    // A small time window is cheapest read in created_at order and sorted; a large one is
    // cheapest walked in the sort key's own order. Which one it is gets counted, not guessed.
    let small_window = sort.key != SortKey::CreatedAt
        && filter.request_id.is_none()
        && (filter.from.is_some() || filter.to.is_some())
        && window_is_small(conn, org, filter)?;
    if sort.key == SortKey::DurationMs && filter.request_id.is_none() && !small_window {
        return Ok(Some(by_duration_levels(org, filter, sort, page)));
    }
    let status_range = filter.status_min.is_some() || filter.status_max.is_some();
    let other_index = filter.method.is_some()
        || filter.route_pattern.is_some()
        || filter.auth_type.is_some()
        || filter.request_id.is_some()
        || filter.user_id.is_some()
        || filter.api_key_id.is_some();
    if sort.key == SortKey::CreatedAt && status_range && !other_index {
        return by_status_runs(conn, org, filter, sort, page);
    }
    let key = sort_column(sort.key);
    let (cmp, dir) = direction(sort.dir);
    // A request id matches a handful of logs at most: they are found through the leveled
    // request-id key and read by rowid (`NOT INDEXED` leaves the planner no index that would
    // rather walk the org's history in sort order), then sorted.
    let table = if filter.request_id.is_some() {
        "request_logs NOT INDEXED"
    } else if small_window {
        "request_logs INDEXED BY request_logs_by_created"
    } else if sort.key == SortKey::StatusCode {
        "request_logs INDEXED BY request_logs_by_status"
    } else {
        "request_logs"
    };
    let mut sql = format!("SELECT {COLUMNS} FROM {table} WHERE org = ?1");
    let mut args = vec![Value::Integer(org)];
    filter_sql(filter, "", &mut sql, &mut args);
    let mut offset = 0u64;
    match page.start {
        PageStart::First => {}
        PageStart::After(pos) => push_keyset(&mut sql, &mut args, (key, "id"), cmp, pos),
        PageStart::Offset(n) => offset = n,
    }
    args.push(Value::Integer(i64::from(page.limit) + 1));
    let _ = write!(sql, " ORDER BY {key} {dir}, id {dir} LIMIT ?{}", args.len());
    if offset > 0 {
        args.push(Value::Integer(i64::try_from(offset).unwrap_or(i64::MAX)));
        let _ = write!(sql, " OFFSET ?{}", args.len());
    }
    Ok(Some(ListStatement { sql, args }))
}

/// How many rows of a time window are read and sorted rather than found in sort-key order.
pub const SMALL_WINDOW_ROWS: i64 = 4096;

/// Whether the org has fewer than [`SMALL_WINDOW_ROWS`] logs in the filter's time window,
/// counted on the created_at index alone (no row is read).
fn window_is_small(conn: &Connection, org: i64, filter: &LogFilter) -> Result<bool, StoreError> {
    let from = filter.from.map_or(i64::MIN, |t| t.millis());
    let to = filter.to.map_or(i64::MAX, |t| t.millis());
    let n: i64 = conn.one(
        "SELECT count(*) FROM (SELECT 1 FROM request_logs INDEXED BY request_logs_by_created \
             WHERE org = ?1 AND created_at >= ?2 AND created_at < ?3 LIMIT ?4)",
        params![org, from, to, SMALL_WINDOW_ROWS],
        |r| r.get(0),
    )?;
    Ok(n < SMALL_WINDOW_ROWS)
}

/// A page in duration order: each level of the duration key yields its best candidates (in
/// key order, tested against a status range on the level itself, joined to the rows only when
/// other filters need their columns), the candidates are merged, and only the winning rows
/// are read.
fn by_duration_levels(
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> ListStatement {
    let (cmp, dir) = direction(sort.dir);
    let rest = LogFilter {
        status_min: None,
        status_max: None,
        ..filter.clone()
    };
    let joined = rest != LogFilter::default();
    let mut clause = String::new();
    let mut args = vec![Value::Integer(org)];
    if joined {
        filter_sql(&rest, "r.", &mut clause, &mut args);
    }
    let mut status = |bound: Option<u16>, cmp: &'static str| {
        bound.map(|b| {
            args.push(Value::Integer(i64::from(b)));
            (cmp, args.len())
        })
    };
    let status: Vec<(&str, usize)> = [
        status(filter.status_min, ">="),
        status(filter.status_max, "<="),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Each level is named by its table (not an alias), so that query plans say which
    // level they search.
    let keyset = match page.start {
        PageStart::After(pos) => Some(keyset_params(&mut args, pos)),
        PageStart::First | PageStart::Offset(_) => None,
    };
    let limits = merge_limits(&mut args, page);
    let arms: Vec<String> = SideKey::Duration
        .tables()
        .iter()
        .map(|t| {
            let from = if joined {
                format!("{t} JOIN request_logs r ON r.seq = {t}.seq")
            } else {
                (*t).to_owned()
            };
            let mut after = String::new();
            for (op, n) in &status {
                let _ = write!(after, " AND {t}.status_code {op} ?{n}");
            }
            if let Some(params) = keyset {
                after += &keyset_clause((&format!("{t}.k"), &format!("{t}.id")), cmp, params);
            }
            format!(
                "SELECT * FROM (SELECT {t}.seq, {t}.k, {t}.id FROM {from} WHERE {t}.org = ?1\
                 {clause}{after} ORDER BY {t}.k {dir}, {t}.id {dir} LIMIT ?{})",
                limits.per_run
            )
        })
        .collect();
    let sql = merged_statement(&arms, "k", "duration_ms", dir, &limits);
    ListStatement { sql, args }
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
fn by_status_runs(
    conn: &Connection,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Option<ListStatement>, StoreError> {
    let values = status_values(
        conn,
        org,
        filter.status_min.unwrap_or(100),
        filter.status_max.unwrap_or(599),
    )?;
    if values.is_empty() {
        return Ok(None);
    }
    let (cmp, dir) = direction(sort.dir);
    let rest = LogFilter {
        status_min: None,
        status_max: None,
        ..filter.clone()
    };
    let mut clause = String::new();
    let mut args = vec![Value::Integer(org)];
    filter_sql(&rest, "", &mut clause, &mut args);
    if let PageStart::After(pos) = page.start {
        push_keyset(&mut clause, &mut args, ("created_at", "id"), cmp, pos);
    }
    let limits = merge_limits(&mut args, page);
    let arms: Vec<String> = values
        .iter()
        .map(|v| {
            args.push(Value::Integer(*v));
            format!(
                "SELECT * FROM (SELECT seq, created_at, id FROM request_logs \
                 INDEXED BY request_logs_by_status_created WHERE org = ?1 AND status_code = ?{}{clause} \
                 ORDER BY created_at {dir}, id {dir} LIMIT ?{})",
                args.len(),
                limits.per_run
            )
        })
        .collect();
    let sql = merged_statement(&arms, "created_at", "created_at", dir, &limits);
    Ok(Some(ListStatement { sql, args }))
}

/// One log by id, within the org.
pub(crate) fn get(conn: &Connection, org: i64, id: Uuid) -> Result<Option<RequestLog>, StoreError> {
    conn.opt(
        &format!("SELECT {COLUMNS} FROM request_logs WHERE org = ?1 AND id = ?2"),
        params![org, id.as_bytes()],
        |r| from_row(org, r),
    )
}

/// Deletes the org's oldest logs created before `before`, at most `max` of them, with their
/// side keys.
pub(crate) fn purge(
    conn: &Connection,
    org: i64,
    before: apitrail_model::Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    let doomed = conn.all(
        "SELECT seq, duration_ms, request_id, id FROM request_logs \
         WHERE org = ?1 AND created_at < ?2 ORDER BY created_at LIMIT ?3",
        params![org, before.millis(), max],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        },
    )?;
    let delete = |table: &str| {
        conn.prepare_cached(&format!(
            "DELETE FROM {table} WHERE org = ?1 AND k = ?2 AND id = ?3"
        ))
        .map_err(backend)
    };
    let mut by_duration = SideKey::Duration
        .tables()
        .map(delete)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut by_request_id = SideKey::RequestId
        .tables()
        .map(delete)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = conn
        .prepare_cached("DELETE FROM request_logs WHERE seq = ?1")
        .map_err(backend)?;
    for (seq, duration, request_id, id) in &doomed {
        // A key is in exactly one level; deleting from all three is three index probes.
        for st in &mut by_duration {
            st.execute(params![org, duration, id]).map_err(backend)?;
        }
        if let Some(rid) = request_id {
            for st in &mut by_request_id {
                st.execute(params![org, rid, id]).map_err(backend)?;
            }
        }
        rows.execute([seq]).map_err(backend)?;
    }
    crate::rollups::expire(conn, org, before.millis())?;
    Ok(doomed.len() as u64)
}

/// How many logs the org has.
pub(crate) fn count(conn: &Connection, org: i64) -> Result<u64, StoreError> {
    conn.one(
        "SELECT count(*) FROM request_logs WHERE org = ?1",
        [org],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

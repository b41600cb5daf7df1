//! Request logs: batched inserts, the list query of every request dialect, retention.

use apitrail_model::query::request_id_variants;
use apitrail_model::{
    LogFilter, PageRequest, PageStart, RequestLog, Sort, SortDir, SortKey, Timestamp,
};
use apitrail_store::{Page, StoreError};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::{Args, backend, corrupt, params, push, ts};

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

/// Inserts one org's logs in one statement (one array per column); returns how many were new.
pub(crate) async fn insert(
    tx: &impl GenericClient,
    org: i64,
    logs: &[RequestLog],
) -> Result<u64, StoreError> {
    // In id order: concurrent transactions inserting overlapping ids then take their index
    // locks in the same order and cannot deadlock.
    let mut sorted: Vec<&RequestLog> = logs.iter().collect();
    sorted.sort_by_key(|l| l.id);
    let logs = sorted.as_slice();
    fn col<T, F: Fn(&RequestLog) -> T>(logs: &[&RequestLog], f: F) -> Vec<T> {
        logs.iter().map(|l| f(l)).collect()
    }
    let ids = col(logs, |l| l.id);
    let created = col(logs, |l| l.created_at.millis());
    let duration = col(logs, |l| l.duration_ms.unwrap_or(-1));
    let status = col(logs, |l| i32::from(l.status_code));
    let method = col(logs, |l| l.method.clone());
    let path = col(logs, |l| l.path.clone());
    let text = |f: fn(&RequestLog) -> &Option<String>| col(logs, move |l| f(l).clone());
    let route = text(|l| &l.route_pattern);
    let request_id = text(|l| &l.request_id);
    let auth_type = text(|l| &l.auth_type);
    let error_code = text(|l| &l.error_code);
    let query = text(|l| &l.query);
    let started = col(logs, |l| l.started_at.map(Timestamp::millis));
    let completed = col(logs, |l| l.completed_at.map(Timestamp::millis));
    let ip = col(logs, |l| l.client_ip.map(|ip| ip.to_string()));
    let user_agent = text(|l| &l.user_agent);
    let origin = text(|l| &l.origin);
    let principal_type = text(|l| &l.principal_type);
    let principal_id = text(|l| &l.principal_id);
    let user_id = text(|l| &l.user_id);
    let email = text(|l| &l.email);
    let api_key_id = text(|l| &l.api_key_id);
    let service_account_id = text(|l| &l.service_account_id);
    let price = text(|l| &l.price);
    let minutes = col(logs, |l| l.minutes);
    let seconds = col(logs, |l| l.seconds);
    let invoice = text(|l| &l.stripe_invoice_item_id);
    let req_cut = col(logs, |l| l.request_body_truncated);
    let resp_cut = col(logs, |l| l.response_body_truncated);
    let metadata = text(|l| &l.metadata);
    let req_body = text(|l| &l.request_body);
    let resp_body = text(|l| &l.response_body);
    let inserted = tx
        .execute(
            &format!(
                "INSERT INTO request_logs (org, {COLUMNS}) \
                 SELECT $1, * FROM unnest($2::uuid[], $3::bigint[], $4::bigint[], $5::int[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
                 $12::text[], $13::bigint[], $14::bigint[], $15::text[], $16::text[], \
                 $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], \
                 $23::text[], $24::text[], $25::bigint[], $26::bigint[], $27::text[], \
                 $28::bool[], $29::bool[], $30::text[], $31::text[], $32::text[]) \
                 ON CONFLICT (org, id) DO NOTHING"
            ),
            &[
                &org,
                &ids,
                &created,
                &duration,
                &status,
                &method,
                &path,
                &route,
                &request_id,
                &auth_type,
                &error_code,
                &query,
                &started,
                &completed,
                &ip,
                &user_agent,
                &origin,
                &principal_type,
                &principal_id,
                &user_id,
                &email,
                &api_key_id,
                &service_account_id,
                &price,
                &minutes,
                &seconds,
                &invoice,
                &req_cut,
                &resp_cut,
                &metadata,
                &req_body,
                &resp_body,
            ],
        )
        .await
        .map_err(backend)?;
    Ok(inserted)
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
    c: &impl GenericClient,
    org: i64,
    filter: &LogFilter,
    sort: Sort,
    page: PageRequest,
) -> Result<Page<RequestLog>, StoreError> {
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
    let rows = c.query(&sql, &params(&args)).await.map_err(backend)?;
    let mut items = rows
        .iter()
        .map(log_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let has_more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    Ok(Page { items, has_more })
}

pub(crate) async fn get(
    c: &impl GenericClient,
    org: i64,
    id: Uuid,
) -> Result<Option<RequestLog>, StoreError> {
    let row = c
        .query_opt(
            &format!("SELECT {COLUMNS} FROM request_logs WHERE org = $1 AND id = $2"),
            &[&org, &id],
        )
        .await
        .map_err(backend)?;
    row.as_ref().map(log_from_row).transpose()
}

pub(crate) async fn purge(
    c: &impl GenericClient,
    org: i64,
    before: Timestamp,
    max: u32,
) -> Result<u64, StoreError> {
    c.execute(
        "DELETE FROM request_logs WHERE org = $1 AND id IN (SELECT id FROM request_logs \
         WHERE org = $1 AND created_at < $2 ORDER BY created_at, id LIMIT $3)",
        &[&org, &before.millis(), &i64::from(max)],
    )
    .await
    .map_err(backend)
}

pub(crate) async fn count(c: &impl GenericClient, org: i64) -> Result<u64, StoreError> {
    let n: i64 = c
        .query_one("SELECT count(*) FROM request_logs WHERE org = $1", &[&org])
        .await
        .map_err(backend)?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

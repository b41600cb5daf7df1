//! The `logs` dialect: `GET /v1/logs`, exactly as seed 003 documents it (and apitrail's
//! native request-log style).

use apitrail_model::{
    Cursor, CursorKind, LogFilter, PageRequest, PageStart, RequestLog, Scope, Sort, SortDir,
    SortKey,
};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authed;
use crate::error::{ApiError, Failure, Native, NativeErrorBody};
use crate::filters;
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;
use crate::wire::Pagination;
use crate::wire::log_cursor;

/// A request log as the logs dialect prints it: exactly the seed's ten fields, every one
/// present (`null` when the log has no value).
#[derive(Debug, Serialize, ToSchema)]
pub struct LogItem {
    /// How the caller authenticated (e.g. `api_key`, `session`, `jwt`).
    #[schema(required = true)]
    auth_type: Option<String>,
    /// RFC 3339, UTC, millisecond precision.
    #[schema(format = DateTime)]
    created_at: String,
    /// Milliseconds, when known.
    #[schema(required = true, minimum = 0)]
    duration_ms: Option<i64>,
    /// The platform's error code for failed calls.
    #[schema(required = true)]
    error_code: Option<String>,
    /// The log's id.
    #[schema(format = "uuid")]
    id: String,
    /// Uppercase HTTP method.
    method: String,
    /// The requested path.
    path: String,
    /// The request id.
    #[schema(required = true)]
    request_id: Option<String>,
    /// The route template, e.g. `/v1/participants/{id}`.
    #[schema(required = true)]
    route_pattern: Option<String>,
    /// HTTP status code.
    #[schema(minimum = 100, maximum = 599)]
    status_code: u16,
}

impl From<RequestLog> for LogItem {
    fn from(log: RequestLog) -> Self {
        Self {
            auth_type: log.auth_type,
            created_at: log.created_at.to_rfc3339(),
            duration_ms: log.duration_ms,
            error_code: log.error_code,
            id: log.id.to_string(),
            method: log.method,
            path: log.path,
            request_id: log.request_id,
            route_pattern: log.route_pattern,
            status_code: log.status_code,
        }
    }
}

/// One page of request logs.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogsPage {
    /// The logs, in the requested order.
    data: Vec<LogItem>,
    /// Where the next page starts.
    pagination: Pagination,
}

/// Query parameters of `GET /v1/logs` (documentation only; parsing is in [`parse_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LogsQuery {
    /// Max results per page.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<u32>,
    /// Pagination cursor from a previous response's `pagination.next_cursor`; only valid with
    /// the same `sort_by` and `sort_dir`.
    cursor: Option<String>,
    /// Start of the time window, inclusive (RFC 3339 with offset); not after `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End of the time window, exclusive (RFC 3339 with offset).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Sort field. Ties break by id.
    #[param(schema_with = crate::openapi::logs_sort_by)]
    sort_by: Option<String>,
    /// Sort direction.
    #[param(schema_with = crate::openapi::sort_dir)]
    sort_dir: Option<String>,
}

/// A parsed `GET /v1/logs` query.
#[derive(Debug, PartialEq, Eq)]
pub struct LogsRequest {
    /// The filters.
    pub filter: LogFilter,
    /// The order.
    pub sort: Sort,
    /// The page.
    pub page: PageRequest,
}

/// Parses and checks every parameter; each error names its parameter.
pub fn parse_query(p: &Params) -> Result<LogsRequest, ApiError> {
    let limit = p.int::<u32>("limit", 1..=100)?.unwrap_or(50);
    let key = p
        .choice(
            "sort_by",
            SortKey::parse,
            "created_at, duration_ms, status_code",
        )?
        .unwrap_or(SortKey::CreatedAt);
    let dir = p
        .choice("sort_dir", SortDir::parse, "asc, desc")?
        .unwrap_or(SortDir::Desc);
    let sort = Sort { key, dir };
    let filter = filters::logs(p)?;
    let start = match p.str("cursor")? {
        None => PageStart::First,
        Some(c) => PageStart::After(
            Cursor::resume(c, CursorKind::Logs, sort)
                .map_err(|e| ApiError::param("cursor", e.to_string()))?,
        ),
    };
    Ok(LogsRequest {
        filter,
        sort,
        page: PageRequest { limit, start },
    })
}

/// List request logs.
///
/// Lists the organization's request logs, newest first by default. Filter by method, route
/// pattern, request id, auth type, status range and time window; order by created_at,
/// duration_ms or status_code in either direction (ties break by id). Pages are keyset-based:
/// following `next_cursor` returns every matching log exactly once, even while new logs
/// arrive.
#[utoipa::path(
    get,
    path = "/v1/logs",
    tag = "logs",
    params(LogsQuery, crate::filters::LogFilterParams),
    responses(
        (status = 200, description = "Paginated request logs", body = LogsPage),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_logs(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(query): RawQuery,
) -> Result<Json<LogsPage>, Failure<Native>> {
    caller.require(Scope::Read)?;
    let req = parse_query(&Params::parse(query.as_deref()))?;
    let filter = caller.narrow_logs(req.filter);
    let page = state
        .store()
        .list_request_logs(&caller.tenant, &filter, req.sort, req.page)
        .await?;
    let pagination = Pagination::of(&page, |last| log_cursor(CursorKind::Logs, req.sort, last));
    Ok(Json(LogsPage {
        data: page.items.into_iter().map(LogItem::from).collect(),
        pagination,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<LogsRequest, ApiError> {
        parse_query(&Params::parse(Some(q)))
    }

    #[test]
    fn defaults_match_the_seed() {
        let r = parse("").unwrap();
        assert_eq!(r.page, PageRequest::first(50));
        assert_eq!(r.sort, Sort::NEWEST_FIRST);
        assert_eq!(r.filter, LogFilter::default());
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=ten", "limit"),
            ("sort_by=path", "sort_by"),
            ("sort_dir=up", "sort_dir"),
            ("status_min=99", "status_min"),
            ("status_max=600", "status_max"),
            ("status_min=500&status_max=400", "status_min"),
            ("from=2024-01-01", "from"),
            ("to=2024-01-01T00:00:00", "to"),
            ("from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z", "from"),
            ("cursor=abc", "cursor"),
            ("method=GE%20T", "method"),
            ("limit=5&limit=6", "limit"),
        ] {
            let err = parse(q).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{q}");
        }
    }

    #[test]
    fn methods_are_matched_case_insensitively() {
        assert_eq!(
            parse("method=post").unwrap().filter.method.as_deref(),
            Some("POST")
        );
    }
}

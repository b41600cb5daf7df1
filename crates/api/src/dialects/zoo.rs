//! The `zoo` dialect: `GET /org/api-calls` and its siblings, exactly as seed 000 and the
//! platform's Dropshot-generated OpenAPI describe them (SPEC §3.1), so that the platform's
//! official clients work against apitrail unchanged.
//!
//! Where the platform types a field as a required UUID and a log has no UUID for it, the item
//! carries the nil UUID (`token`, `user_id`) or, for the optional `org_id`, `null`: the
//! official clients parse these fields as UUIDs and would reject anything else.

use apitrail_model::request_log::rules;
use apitrail_model::{
    Cursor, CursorError, CursorKind, LogFilter, PageRequest, PageStart, RequestLog, Scope, Sort,
    SortDir, SortKey, Timestamp,
};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;
use serde_json::value::RawValue;

use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authed;
use crate::caller::OrgCaller;
use crate::common::not_found;
use crate::error::{ApiError, Envelope, Failure};
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;
use crate::wire::{log_cursor, next_cursor};

/// The zoo dialect's error envelope: [`ZooError`].
#[derive(Debug)]
pub enum Zoo {}

impl Envelope for Zoo {
    type Body = ZooError;

    fn body(err: &ApiError, request_id: &str) -> ZooError {
        let (_, code) = err.status_and_code();
        ZooError {
            error_code: code.to_owned(),
            message: err.message.clone(),
            request_id: request_id.to_owned(),
        }
    }
}

/// The zoo error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ZooError {
    /// Machine-readable code, e.g. `invalid_parameter`, `unauthorized`, `not_found`.
    error_code: String,
    /// What is wrong, naming the parameter at fault.
    message: String,
    /// The request id, also in the `X-Request-Id` header.
    request_id: String,
}

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// The methods the platform names; any other is `EXTENSION`.
const METHODS: [&str; 9] = [
    "OPTIONS", "GET", "POST", "PUT", "DELETE", "HEAD", "TRACE", "CONNECT", "PATCH",
];

/// A request log as the zoo dialect prints it (`ApiCallWithPrice`): the 23 fields of SPEC
/// §3.1, every one present.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiCallWithPrice {
    /// When the platform finished handling the call.
    #[schema(required = true, format = DateTime)]
    completed_at: Option<String>,
    /// When the log was created.
    #[schema(format = DateTime)]
    created_at: String,
    /// Milliseconds from start to completion, when known.
    #[schema(required = true, minimum = 0)]
    duration: Option<i64>,
    /// The caller's email.
    #[schema(required = true)]
    email: Option<String>,
    /// The route pattern (e.g. `/org/api-calls/{id}`), or the path when there is none.
    #[schema(required = true)]
    endpoint: Option<String>,
    /// The log's id.
    #[schema(format = "uuid")]
    id: String,
    /// The caller's IP address.
    #[schema(required = true)]
    ip_address: Option<String>,
    /// The HTTP method: one of OPTIONS GET POST PUT DELETE HEAD TRACE CONNECT PATCH, else
    /// EXTENSION.
    #[schema(schema_with = crate::openapi::zoo_method)]
    method: &'static str,
    /// Billable minutes.
    #[schema(required = true)]
    minutes: Option<i32>,
    /// The org's id; null when the org's id is not a UUID.
    #[schema(required = true, format = "uuid")]
    org_id: Option<String>,
    /// The caller's `Origin`.
    #[schema(required = true)]
    origin: Option<String>,
    /// The call's price.
    #[schema(required = true, value_type = Option<f64>)]
    price: Option<Box<RawValue>>,
    /// The request body (capped at ingest).
    #[schema(required = true)]
    request_body: Option<String>,
    /// The query string, without `?`.
    #[schema(required = true)]
    request_query_params: Option<String>,
    /// The response body (capped at ingest).
    #[schema(required = true)]
    response_body: Option<String>,
    /// Billable seconds.
    #[schema(required = true)]
    seconds: Option<i32>,
    /// When the platform started handling the call.
    #[schema(required = true, format = DateTime)]
    started_at: Option<String>,
    /// The HTTP status code.
    #[schema(minimum = 100, maximum = 599)]
    status_code: u16,
    /// The invoice item the call was billed on.
    #[schema(required = true)]
    stripe_invoice_item_id: Option<String>,
    /// The id of the API key used (never its secret); the nil UUID when unknown.
    #[schema(format = "uuid")]
    token: String,
    /// Logs are never updated: the creation time.
    #[schema(format = DateTime)]
    updated_at: String,
    /// The caller's user agent; empty when unknown.
    user_agent: String,
    /// The caller's user id; the nil UUID when unknown or not a UUID.
    #[schema(format = "uuid")]
    user_id: String,
}

/// A UUID field that the platform requires: the value when it is a UUID, else the nil UUID.
fn required_uuid(v: Option<&str>) -> String {
    v.and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or(Uuid::nil())
        .to_string()
}

/// A stored decimal price as a JSON number, digit for digit (leading zeros dropped, which
/// JSON forbids).
fn price_number(price: &str) -> Option<Box<RawValue>> {
    let (sign, digits) = match price.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", price),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let text = if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    };
    RawValue::from_string(text).ok()
}

impl ApiCallWithPrice {
    fn new(log: RequestLog, org_id: Option<&str>) -> Self {
        let created_at = log.created_at.to_rfc3339();
        let method = METHODS
            .iter()
            .find(|m| **m == log.method)
            .copied()
            .unwrap_or("EXTENSION");
        Self {
            completed_at: log.completed_at.map(Timestamp::to_rfc3339),
            updated_at: created_at.clone(),
            created_at,
            duration: log.duration_ms,
            email: log.email,
            endpoint: Some(log.route_pattern.unwrap_or(log.path)),
            id: log.id.to_string(),
            ip_address: log.client_ip.map(|ip| ip.to_string()),
            method,
            // The official clients read these as 32-bit integers; a value stored before
            // ingest bounded them is printed as null rather than one they cannot parse.
            minutes: log.minutes.and_then(|n| i32::try_from(n).ok()),
            org_id: org_id.map(str::to_owned),
            origin: log.origin,
            price: log.price.as_deref().and_then(price_number),
            request_body: log.request_body,
            request_query_params: log.query,
            response_body: log.response_body,
            seconds: log.seconds.and_then(|n| i32::try_from(n).ok()),
            started_at: log.started_at.map(Timestamp::to_rfc3339),
            status_code: log.status_code,
            stripe_invoice_item_id: log.stripe_invoice_item_id,
            token: required_uuid(log.api_key_id.as_deref()),
            user_agent: log.user_agent.unwrap_or_default(),
            user_id: required_uuid(log.user_id.as_deref()),
        }
    }
}

/// A page of API calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiCallWithPriceResultsPage {
    /// The calls, in the requested order.
    items: Vec<ApiCallWithPrice>,
    /// Pass as `page_token` to get the next page; null on the last page.
    #[schema(required = true)]
    next_page: Option<String>,
}

/// Query parameters of the zoo list routes (documentation only; see [`parse_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ApiCallsQuery {
    /// Maximum number of items per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// Token returned by a previous call (`next_page`) to retrieve the subsequent page; only
    /// valid with the same `sort_by` (or none: the token carries its order).
    page_token: Option<String>,
    /// The order. Ties break by id.
    #[param(schema_with = crate::openapi::zoo_sort_by)]
    sort_by: Option<String>,
}

/// A parsed zoo list query.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiCallsRequest {
    /// The order.
    pub sort: Sort,
    /// The page.
    pub page: PageRequest,
}

fn parse_sort(s: &str) -> Option<SortDir> {
    match s {
        "created_at_ascending" => Some(SortDir::Asc),
        "created_at_descending" => Some(SortDir::Desc),
        _ => None,
    }
}

/// Parses and checks every parameter; each error names its parameter.
pub fn parse_query(p: &Params) -> Result<ApiCallsRequest, ApiError> {
    let limit = p
        .int::<u32>("limit", 1..=MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT);
    let dir = p.choice(
        "sort_by",
        parse_sort,
        "created_at_ascending, created_at_descending",
    )?;
    let token = p.str("page_token")?;
    let bad_token = |e: CursorError| ApiError::param("page_token", e.to_string());
    // A page token carries its order, so a client that sends only `page_token` for the next
    // page (Dropshot's convention) continues in that order; one that repeats `sort_by` must
    // repeat the same one.
    let dir = match (dir, token) {
        (Some(dir), _) => dir,
        (None, Some(t)) => match Cursor::decode(t).map_err(bad_token)? {
            c if c.kind == CursorKind::Zoo => c.sort.dir,
            _ => return Err(bad_token(CursorError::WrongList)),
        },
        (None, None) => SortDir::Desc,
    };
    let sort = Sort {
        key: SortKey::CreatedAt,
        dir,
    };
    let start = match token {
        None => PageStart::First,
        Some(t) => PageStart::After(Cursor::resume(t, CursorKind::Zoo, sort).map_err(bad_token)?),
    };
    Ok(ApiCallsRequest {
        sort,
        page: PageRequest { limit, start },
    })
}

/// The org's id as the zoo items carry it.
fn org_uuid(caller: &OrgCaller) -> Option<String> {
    caller.tenant.org_id().as_uuid().map(|u| u.to_string())
}

/// One page of the caller's org's logs matching `filter`.
async fn list(
    state: &AppState,
    caller: &OrgCaller,
    filter: LogFilter,
    query: Option<&str>,
) -> Result<Json<ApiCallWithPriceResultsPage>, ApiError> {
    let req = parse_query(&Params::parse(query))?;
    let filter = caller.narrow_logs(filter);
    let page = state
        .store()
        .list_request_logs(&caller.tenant, &filter, req.sort, req.page)
        .await?;
    let next_page = next_cursor(&page, |last| log_cursor(CursorKind::Zoo, req.sort, last));
    let org = org_uuid(caller);
    Ok(Json(ApiCallWithPriceResultsPage {
        items: page
            .items
            .into_iter()
            .map(|l| ApiCallWithPrice::new(l, org.as_deref()))
            .collect(),
        next_page,
    }))
}

/// One of the caller's org's logs, if `keep` accepts it (and a viewer token's forced filter:
/// another user's call is as absent as another org's).
async fn fetch(
    state: &AppState,
    caller: &OrgCaller,
    id: Result<Path<String>, PathRejection>,
    keep: impl FnOnce(&RequestLog) -> bool,
) -> Result<Json<ApiCallWithPrice>, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::param("id", "must be a UUID"))?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::param("id", "must be a UUID"))?;
    let log = state
        .store()
        .get_request_log(&caller.tenant, id)
        .await?
        .filter(keep)
        .filter(|log| caller.narrow_logs(LogFilter::default()).matches(log))
        .ok_or_else(|| not_found("API call"))?;
    Ok(Json(ApiCallWithPrice::new(
        log,
        org_uuid(caller).as_deref(),
    )))
}

/// The filter of the calls made by `user`: an email when it has an `@`, a user id otherwise.
fn user_filter(user: &str) -> LogFilter {
    if user.contains('@') {
        LogFilter {
            email: Some(user.to_owned()),
            ..LogFilter::default()
        }
    } else {
        LogFilter {
            user_id: Some(user.to_owned()),
            ..LogFilter::default()
        }
    }
}

/// The filter of the caller's own calls (SPEC §11: the key's user id, else its principal).
fn own_filter(caller: &OrgCaller) -> LogFilter {
    LogFilter {
        user_id: Some(caller.key.acting_user().to_owned()),
        ..LogFilter::default()
    }
}

/// List API calls for your org.
///
/// Every API call made in the caller's org, newest first by default (ties break by id).
/// Following `next_page` returns every call exactly once, even while new calls arrive.
#[utoipa::path(
    get,
    path = "/org/api-calls",
    tag = "zoo",
    operation_id = "org_list_api_calls",
    params(ApiCallsQuery),
    responses(
        (status = 200, description = "A page of API calls", body = ApiCallWithPriceResultsPage),
        (status = 400, description = "A parameter is malformed or out of range", body = ZooError),
        OrgKeyErrors<ZooError, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn org_list_api_calls(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiCallWithPriceResultsPage>, Failure<Zoo>> {
    caller.require(Scope::Read)?;
    Ok(list(&state, &caller, LogFilter::default(), query.as_deref()).await?)
}

/// Get an API call for your org.
#[utoipa::path(
    get,
    path = "/org/api-calls/{id}",
    tag = "zoo",
    operation_id = "get_api_call_for_org",
    params(("id" = String, Path, format = "uuid", description = "The API call's id")),
    responses(
        (status = 200, description = "The API call", body = ApiCallWithPrice),
        (status = 400, description = "The id is not a UUID", body = ZooError),
        (status = 404, description = "No such call in the caller's org", body = ZooError),
        OrgKeyErrors<ZooError, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn get_api_call_for_org(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApiCallWithPrice>, Failure<Zoo>> {
    caller.require(Scope::Read)?;
    Ok(fetch(&state, &caller, id, |_| true).await?)
}

/// List API calls for your user.
///
/// The calls whose `user_id` is the caller's user: the key's user id, or its principal id
/// when it has none.
#[utoipa::path(
    get,
    path = "/user/api-calls",
    tag = "zoo",
    operation_id = "user_list_api_calls",
    params(ApiCallsQuery),
    responses(
        (status = 200, description = "A page of API calls", body = ApiCallWithPriceResultsPage),
        (status = 400, description = "A parameter is malformed or out of range", body = ZooError),
        OrgKeyErrors<ZooError, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn user_list_api_calls(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiCallWithPriceResultsPage>, Failure<Zoo>> {
    caller.require(Scope::Read)?;
    Ok(list(&state, &caller, own_filter(&caller), query.as_deref()).await?)
}

/// Get an API call for your user.
#[utoipa::path(
    get,
    path = "/user/api-calls/{id}",
    tag = "zoo",
    operation_id = "get_api_call_for_user",
    params(("id" = String, Path, format = "uuid", description = "The API call's id")),
    responses(
        (status = 200, description = "The API call", body = ApiCallWithPrice),
        (status = 400, description = "The id is not a UUID", body = ZooError),
        (status = 404, description = "No such call of the caller's user", body = ZooError),
        OrgKeyErrors<ZooError, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn get_api_call_for_user(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApiCallWithPrice>, Failure<Zoo>> {
    caller.require(Scope::Read)?;
    let own = own_filter(&caller);
    Ok(fetch(&state, &caller, id, |log| own.matches(log)).await?)
}

/// List API calls.
///
/// Every API call made in the caller's org, as `GET /org/api-calls` lists them (the same
/// parameters, order and page shape). Needs the `admin` scope.
#[utoipa::path(
    get,
    path = "/api-calls",
    tag = "zoo",
    operation_id = "list_api_calls",
    params(ApiCallsQuery),
    responses(
        (status = 200, description = "A page of API calls", body = ApiCallWithPriceResultsPage),
        (status = 400, description = "A parameter is malformed or out of range", body = ZooError),
        (status = 403, description = "The key lacks the admin scope", body = ZooError),
        OrgKeyErrors<ZooError>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_api_calls(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiCallWithPriceResultsPage>, Failure<Zoo>> {
    caller.require(Scope::Admin)?;
    Ok(list(&state, &caller, LogFilter::default(), query.as_deref()).await?)
}

/// Get an API call.
///
/// One of the caller's user's calls, as `GET /user/api-calls/{id}` (scope `read`); with the
/// `admin` scope, any call of the caller's org.
#[utoipa::path(
    get,
    path = "/api-calls/{id}",
    tag = "zoo",
    operation_id = "get_api_call",
    params(("id" = String, Path, format = "uuid", description = "The API call's id")),
    responses(
        (status = 200, description = "The API call", body = ApiCallWithPrice),
        (status = 400, description = "The id is not a UUID", body = ZooError),
        (status = 403, description = "The key has neither the read nor the admin scope", body = ZooError),
        (status = 404, description = "No such call of the caller's user (or, with admin, of the org)", body = ZooError),
        OrgKeyErrors<ZooError>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn get_api_call(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApiCallWithPrice>, Failure<Zoo>> {
    if caller.require(Scope::Admin).is_ok() {
        return Ok(fetch(&state, &caller, id, |_| true).await?);
    }
    caller.require(Scope::Read)?;
    let own = own_filter(&caller);
    Ok(fetch(&state, &caller, id, |log| own.matches(log)).await?)
}

/// Whether `path` lies under the zoo dialect's prefixes, whose unknown routes answer in the
/// zoo envelope.
pub fn is_zoo_path(path: &str) -> bool {
    ["/org", "/user", "/users"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
        || path.starts_with("/api-calls")
}

/// List API calls for a user.
///
/// The calls of one user of the caller's org: `id` is a user id, an email (matched against
/// the calls' `email`), or `me` for the caller's own user. Needs the `admin` scope.
#[utoipa::path(
    get,
    path = "/users/{id}/api-calls",
    tag = "zoo",
    operation_id = "list_api_calls_for_user",
    params(
        ("id" = String, Path, max_length = 1024, description = "A user id, an email, or `me`"),
        ApiCallsQuery,
    ),
    responses(
        (status = 200, description = "A page of API calls", body = ApiCallWithPriceResultsPage),
        (status = 400, description = "A parameter is malformed or out of range", body = ZooError),
        OrgKeyErrors<ZooError, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_api_calls_for_user(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Zoo>,
    user: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<ApiCallWithPriceResultsPage>, Failure<Zoo>> {
    caller.require(Scope::Admin)?;
    let Path(user) = user.map_err(|_| ApiError::param("id", "must be a user id or an email"))?;
    if user.contains('\0') {
        return Err(ApiError::param("id", crate::params::NUL_MESSAGE).into());
    }
    if user.chars().count() > rules::MAX_TEXT {
        return Err(ApiError::param(
            "id",
            format!("must be at most {} characters", rules::MAX_TEXT),
        )
        .into());
    }
    let filter = if user == "me" {
        own_filter(&caller)
    } else {
        user_filter(&user)
    };
    Ok(list(&state, &caller, filter, query.as_deref()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<ApiCallsRequest, ApiError> {
        parse_query(&Params::parse(Some(q)))
    }

    #[test]
    fn defaults_match_the_spec() {
        let r = parse("").unwrap();
        assert_eq!(r.page, PageRequest::first(DEFAULT_LIMIT));
        assert_eq!(r.sort, Sort::NEWEST_FIRST);
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-1", "limit"),
            ("limit=ten", "limit"),
            ("sort_by=created_at", "sort_by"),
            ("sort_by=desc", "sort_by"),
            ("page_token=abc", "page_token"),
            ("limit=5&limit=6", "limit"),
        ] {
            let err = parse(q).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{q}");
        }
    }

    #[test]
    fn a_page_token_alone_continues_in_its_own_order() {
        let asc = Sort {
            key: SortKey::CreatedAt,
            dir: SortDir::Asc,
        };
        let token = Cursor {
            kind: CursorKind::Zoo,
            sort: asc,
            position: apitrail_model::Position {
                key: 1,
                id: Uuid::nil(),
            },
        }
        .encode();
        assert_eq!(parse(&format!("page_token={token}")).unwrap().sort, asc);
        let same = format!("page_token={token}&sort_by=created_at_ascending");
        assert_eq!(parse(&same).unwrap().sort, asc);
        let other = format!("page_token={token}&sort_by=created_at_descending");
        assert_eq!(
            parse(&other).unwrap_err().param.as_deref(),
            Some("page_token")
        );
    }

    #[test]
    fn prices_become_json_numbers_digit_for_digit() {
        for (stored, wire) in [
            ("16.74", "16.74"),
            ("007.50", "7.50"),
            ("-0.5", "-0.5"),
            ("0", "0"),
            (
                "12345678901234567.123456789012345678",
                "12345678901234567.123456789012345678",
            ),
        ] {
            let raw = price_number(stored).unwrap();
            assert_eq!(raw.get(), wire);
            let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
            assert!(v.is_number(), "{stored}");
        }
    }

    #[test]
    fn methods_outside_the_platforms_list_are_extension() {
        let item = |m: &str| {
            ApiCallWithPrice::new(
                RequestLog {
                    method: m.into(),
                    ..RequestLog::default()
                },
                None,
            )
            .method
        };
        assert_eq!(item("PATCH"), "PATCH");
        assert_eq!(item("PROPFIND"), "EXTENSION");
    }

    #[test]
    fn the_zoo_prefixes_are_recognised() {
        for p in [
            "/org",
            "/org/x",
            "/user/api-calls/x/y",
            "/users",
            "/api-calls",
            "/api-calls/a/b",
        ] {
            assert!(is_zoo_path(p), "{p}");
        }
        for p in [
            "/organisations",
            "/v1/org/x",
            "/userz",
            "/",
            "/admin/v1/orgs",
        ] {
            assert!(!is_zoo_path(p), "{p}");
        }
    }

    #[test]
    fn required_uuids_fall_back_to_nil() {
        let item = ApiCallWithPrice::new(RequestLog::default(), None);
        assert_eq!(item.token, Uuid::nil().to_string());
        assert_eq!(item.user_id, Uuid::nil().to_string());
        assert_eq!(item.user_agent, "");
        assert_eq!(required_uuid(Some("u_1")), Uuid::nil().to_string());
        let u = Uuid::now_v7().to_string();
        assert_eq!(required_uuid(Some(&u)), u);
    }
}

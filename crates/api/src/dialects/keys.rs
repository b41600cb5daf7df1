//! The `keys` dialect: `GET /v1/api-keys/requests`, exactly as seed 001 documents it — the
//! org's request logs, newest first, paged by `limit`/`offset`, in a camelCase envelope.

use apitrail_model::request_log::rules;
use apitrail_model::{LogFilter, PageRequest, PageStart, RequestLog, Scope, Sort};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authed;
use crate::context;
use crate::error::{ApiError, Envelope, Failure};
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;

/// The keys dialect's envelope: [`KeysErrorBody`], `{"code": <status>, "data": null,
/// "message", "requestId"}`.
#[derive(Debug)]
pub enum Keys {}

impl Envelope for Keys {
    type Body = KeysErrorBody;

    fn body(err: &ApiError, request_id: &str) -> KeysErrorBody {
        let (status, _) = err.status_and_code();
        KeysErrorBody {
            code: status.as_u16(),
            data: None,
            message: err.message.clone(),
            request_id: request_id.to_owned(),
        }
    }
}

/// The deepest `offset` accepted: an offset page costs time in proportion to the offset, so
/// deeper reads should narrow with `apiKeyId`/`serviceAccountId` instead.
pub const MAX_OFFSET: u64 = 100_000;

/// A request log as the keys dialect prints it: the seed's sixteen fields, every one present
/// (`null` when the log has no value).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRequestItem {
    /// The id of the API key that made the call.
    #[schema(required = true)]
    api_key_id: Option<String>,
    /// The caller's IP address.
    #[schema(required = true)]
    client_ip: Option<String>,
    /// RFC 3339, UTC, millisecond precision.
    #[schema(format = DateTime)]
    created_at: String,
    /// Milliseconds, when known.
    #[schema(required = true, minimum = 0)]
    duration_ms: Option<i64>,
    /// The log's id.
    #[schema(format = "uuid")]
    id: String,
    /// Uppercase HTTP method.
    method: String,
    /// The org's id.
    organization_id: String,
    /// The requested path.
    path: String,
    /// Who made the call (e.g. a user or service account id).
    #[schema(required = true)]
    principal_id: Option<String>,
    /// What kind of principal made the call.
    #[schema(required = true)]
    principal_type: Option<String>,
    /// The request id.
    #[schema(required = true)]
    request_id: Option<String>,
    /// The route template, e.g. `/v1/participants/{id}`.
    #[schema(required = true)]
    route_pattern: Option<String>,
    /// The service account the key belongs to.
    #[schema(required = true)]
    service_account_id: Option<String>,
    /// HTTP status code.
    #[schema(minimum = 100, maximum = 599)]
    status_code: u16,
    /// The caller's user agent.
    #[schema(required = true)]
    user_agent: Option<String>,
    /// The user the call was made for.
    #[schema(required = true)]
    user_id: Option<String>,
}

impl KeyRequestItem {
    fn new(log: RequestLog, organization_id: &str) -> Self {
        Self {
            api_key_id: log.api_key_id,
            client_ip: log.client_ip.map(|ip| ip.to_string()),
            created_at: log.created_at.to_rfc3339(),
            duration_ms: log.duration_ms,
            id: log.id.to_string(),
            method: log.method,
            organization_id: organization_id.to_owned(),
            path: log.path,
            principal_id: log.principal_id,
            principal_type: log.principal_type,
            request_id: log.request_id,
            route_pattern: log.route_pattern,
            service_account_id: log.service_account_id,
            status_code: log.status_code,
            user_agent: log.user_agent,
            user_id: log.user_id,
        }
    }
}

/// One page of the keys dialect.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRequestsData {
    /// Whether more logs follow this page.
    has_more: bool,
    /// The logs, newest first.
    items: Vec<KeyRequestItem>,
    /// The page size used.
    #[schema(minimum = 1, maximum = 100)]
    limit: u32,
    /// The offset used.
    #[schema(maximum = 100_000)]
    offset: u64,
}

/// The keys dialect's success envelope.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRequestsPage {
    /// Always 200.
    #[schema(minimum = 200, maximum = 200)]
    code: u16,
    /// The page.
    data: KeyRequestsData,
    /// Always `success`.
    #[schema(pattern = "^success$")]
    message: &'static str,
    /// The request id, also in the `X-Request-Id` header.
    request_id: String,
}

/// The keys dialect's error envelope.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeysErrorBody {
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    code: u16,
    /// Always null.
    #[schema(schema_with = crate::openapi::null)]
    data: Option<Value>,
    /// What is wrong, naming the parameter at fault.
    message: String,
    /// The request id.
    request_id: String,
}

/// Query parameters of `GET /v1/api-keys/requests` (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, non_snake_case)]
pub struct KeyRequestsQuery {
    /// Number of items.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
    /// Offset for pagination (at most 100000: narrow with the filters to read deeper).
    #[param(minimum = 0, maximum = 100000, default = 0)]
    offset: Option<u64>,
    /// Filter by service account id.
    #[param(max_length = 1024)]
    serviceAccountId: Option<String>,
    /// Filter by API key id.
    #[param(max_length = 1024)]
    apiKeyId: Option<String>,
}

/// A parsed keys-dialect query.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyRequestsRequest {
    /// The filters.
    pub filter: LogFilter,
    /// The page size.
    pub limit: u32,
    /// How many matching logs to skip.
    pub offset: u64,
}

/// Parses and checks every parameter; each error names its parameter.
pub fn parse_query(p: &Params) -> Result<KeyRequestsRequest, ApiError> {
    let limit = p.int::<u32>("limit", 1..=100)?.unwrap_or(20);
    let offset = p.int::<u64>("offset", 0..=MAX_OFFSET)?.unwrap_or(0);
    let filter = LogFilter {
        api_key_id: p.text("apiKeyId", rules::MAX_TEXT)?,
        service_account_id: p.text("serviceAccountId", rules::MAX_TEXT)?,
        ..LogFilter::default()
    };
    Ok(KeyRequestsRequest {
        filter,
        limit,
        offset,
    })
}

/// List recent API requests.
///
/// Lists the organization's recent API request logs, newest first (ties break by id), paged
/// by `limit` and `offset`. Fields a log has no value for are `null`.
#[utoipa::path(
    get,
    path = "/v1/api-keys/requests",
    tag = "keys",
    params(KeyRequestsQuery),
    responses(
        (status = 200, description = "A page of request logs", body = KeyRequestsPage),
        (status = 400, description = "A parameter is malformed or out of range", body = KeysErrorBody),
        OrgKeyErrors<KeysErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_key_requests(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Keys>,
    RawQuery(query): RawQuery,
) -> Result<Json<KeyRequestsPage>, Failure<Keys>> {
    caller.require(Scope::Read)?;
    let req = parse_query(&Params::parse(query.as_deref()))?;
    let filter = caller.narrow_logs(req.filter);
    let page = state
        .store()
        .list_request_logs(
            &caller.tenant,
            &filter,
            Sort::NEWEST_FIRST,
            PageRequest {
                limit: req.limit,
                start: PageStart::Offset(req.offset),
            },
        )
        .await?;
    let org = caller.tenant.org_id().to_string();
    Ok(Json(KeyRequestsPage {
        code: 200,
        data: KeyRequestsData {
            has_more: page.has_more,
            items: page
                .items
                .into_iter()
                .map(|l| KeyRequestItem::new(l, &org))
                .collect(),
            limit: req.limit,
            offset: req.offset,
        },
        message: "success",
        request_id: context::request_id(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<KeyRequestsRequest, ApiError> {
        parse_query(&Params::parse(Some(q)))
    }

    #[test]
    fn defaults_match_the_seed() {
        let r = parse("").unwrap();
        assert_eq!((r.limit, r.offset), (20, 0));
        assert_eq!(r.filter, LogFilter::default());
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=x", "limit"),
            ("offset=-1", "offset"),
            ("offset=100001", "offset"),
            ("offset=1.5", "offset"),
            ("apiKeyId=a&apiKeyId=b", "apiKeyId"),
        ] {
            let err = parse(q).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{q}");
            assert!(err.message.starts_with(param), "{q}: {}", err.message);
        }
    }

    #[test]
    fn filters_are_read_in_camel_case() {
        let r = parse("apiKeyId=k1&serviceAccountId=sa1&api_key_id=ignored").unwrap();
        assert_eq!(r.filter.api_key_id.as_deref(), Some("k1"));
        assert_eq!(r.filter.service_account_id.as_deref(), Some("sa1"));
    }
}

//! The `audit` dialect: `GET /audit-log` and `GET /v1/audit-log`, exactly as seed 004
//! documents them, and apitrail's chain check `GET /v1/audit-log/verify`.
//!
//! The cursor is the seed's literal `created_at|id` of the last entry served (timestamps are
//! stored with millisecond precision, exactly as printed, so it is exact).

use apitrail_model::chain::hex;
use apitrail_model::{AuditAfter, AuditEntry, AuditFilter, Scope, Timestamp};
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authed;
use crate::error::{ApiError, Failure, Native, NativeErrorBody};
use crate::filters;
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::{Params, repair_plus};
use crate::state::AppState;
use crate::wire::next_cursor;

/// The seed's default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// The seed's maximum page size.
pub const MAX_LIMIT: u32 = 200;

/// An audit log entry: exactly the seed's nine fields, absent values as `null`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditItem {
    /// The entry's id.
    #[schema(format = "uuid")]
    id: String,
    /// The organization's id.
    org_id: String,
    /// The acting user (an API key's principal); null for the operator.
    #[schema(required = true)]
    user_id: Option<String>,
    /// What was done, e.g. `create`, `update`, `delete`, `revoke`.
    action: String,
    /// What kind of resource, e.g. `api_key`, `destination`.
    resource_type: String,
    /// The resource's id.
    #[schema(required = true)]
    resource_id: Option<String>,
    /// What changed, as JSON text.
    #[schema(required = true)]
    details: Option<String>,
    /// The actor's address.
    #[schema(required = true)]
    ip_address: Option<String>,
    /// RFC 3339, UTC, millisecond precision.
    #[schema(format = DateTime)]
    created_at: String,
}

impl AuditItem {
    /// The item of entry `e` of org `org_id` (also the request timeline's audit items).
    pub(crate) fn new(org_id: &str, e: AuditEntry) -> Self {
        Self {
            id: e.id.to_string(),
            org_id: org_id.to_owned(),
            user_id: e.user_id,
            action: e.action,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            details: e.details,
            ip_address: e.ip_address,
            created_at: e.created_at.to_rfc3339(),
        }
    }
}

/// One page of audit log entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditLogPage {
    /// The entries.
    audit_log: Vec<AuditItem>,
    /// Whether more entries follow.
    has_more: bool,
    /// `created_at|id` of the last entry, to pass as `cursor`; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// Query parameters of `GET /audit-log` (documentation only; parsing is in [`parse_query`]).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditQuery {
    /// Filter by resource type (e.g. source, destination).
    #[param(max_length = 1024)]
    resource_type: Option<String>,
    /// Filter by resource ID.
    #[param(max_length = 1024)]
    resource_id: Option<String>,
    /// Filter by action (e.g. create, delete).
    #[param(max_length = 1024)]
    action: Option<String>,
    /// Max results (default 50, max 200): a string of an integer from 1 to 200, as the seed
    /// types it.
    #[param(
        pattern = "^0*([1-9][0-9]?|1[0-9][0-9]|200)$",
        example = "50",
        default = "50"
    )]
    limit: Option<String>,
    /// Pagination cursor: `created_at|id` of the last entry of the previous page, as
    /// `next_cursor` returns it (RFC 3339 with offset, `|`, a UUID), e.g.
    /// `2024-05-01T12:00:00.000Z|0190f5a2-7c3e-7d4a-8f00-0123456789ab`.
    cursor: Option<String>,
}

/// A parsed audit-log query.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditRequest {
    /// The filters.
    pub filter: AuditFilter,
    /// Where the page starts.
    pub after: Option<AuditAfter>,
    /// The page size.
    pub limit: u32,
}

/// Parses and checks every parameter; each error names its parameter.
pub fn parse_query(p: &Params) -> Result<AuditRequest, ApiError> {
    let limit = p
        .int::<u32>("limit", 1..=MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT);
    let filter = filters::audit(p)?;
    let after = p.str("cursor")?.map(parse_cursor).transpose()?;
    Ok(AuditRequest {
        filter,
        after,
        limit,
    })
}

/// Reads `created_at|id`.
fn parse_cursor(raw: &str) -> Result<AuditAfter, ApiError> {
    let malformed = || {
        ApiError::param(
            "cursor",
            "must be created_at|id as returned in next_cursor, e.g. 2024-05-01T12:00:00.000Z|0190f5a2-7c3e-7d4a-8f00-0123456789ab",
        )
    };
    let (time, id) = raw.split_once('|').ok_or_else(malformed)?;
    let created_at = Timestamp::parse(time)
        .ok()
        .or_else(|| repair_plus(time).and_then(|t| Timestamp::parse(&t).ok()))
        .ok_or_else(malformed)?;
    let id = Uuid::try_parse(id).map_err(|_| malformed())?;
    Ok(AuditAfter { created_at, id })
}

/// The cursor that resumes after `e`.
pub fn cursor_after(e: &AuditEntry) -> String {
    format!("{}|{}", e.created_at.to_rfc3339(), e.id)
}

/// List audit log entries.
///
/// List audit log entries for the organization with optional filters and cursor pagination.
/// Newest first (ties by id, descending); following `next_cursor` lists every matching entry
/// exactly once, even while new entries arrive.
#[utoipa::path(
    get,
    path = "/v1/audit-log",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit log entries", body = AuditLogPage),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_audit_log(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditLogPage>, Failure<Native>> {
    caller.require(Scope::Read)?;
    let req = parse_query(&Params::parse(query.as_deref()))?;
    let filter = caller.narrow_audit(req.filter);
    let page = state
        .store()
        .list_audit_entries(&caller.tenant, &filter, req.after, req.limit)
        .await?;
    let next_cursor = next_cursor(&page, cursor_after);
    let org = caller.tenant.org_id().as_str();
    Ok(Json(AuditLogPage {
        audit_log: page
            .items
            .into_iter()
            .map(|e| AuditItem::new(org, e))
            .collect(),
        has_more: page.has_more,
        next_cursor,
    }))
}

/// List audit log entries (the seed's path without `/v1`).
///
/// The same as `GET /v1/audit-log`.
#[utoipa::path(
    get,
    path = "/audit-log",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit log entries", body = AuditLogPage),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_audit_log_unversioned(
    state: State<AppState>,
    caller: Authed<Native>,
    query: RawQuery,
) -> Result<Json<AuditLogPage>, Failure<Native>> {
    list_audit_log(state, caller, query).await
}

/// The outcome of recomputing the org's audit hash chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// Whether every entry and the chain's head check out.
    ok: bool,
    /// Entries examined, in insertion order, up to and including the first bad one.
    entries_checked: u64,
    /// The first entry that does not check out; null when all do (or when only entries
    /// at the end are missing).
    #[schema(required = true, format = "uuid")]
    first_bad_id: Option<String>,
    /// What is wrong; null when `ok`.
    #[schema(required = true)]
    problem: Option<String>,
    /// Hex SHA-256 of the last good entry's link: record it elsewhere to detect a rewrite of
    /// the whole chain later.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    head_hash: String,
}

/// Verify the audit log.
///
/// Recomputes the organization's audit hash chain: every entry's hash covers its content and
/// the previous entry's hash, in insertion order, so an entry edited, removed or reordered in
/// the store is reported as `first_bad_id`. Entries appended while it runs are left for the
/// next run.
#[utoipa::path(
    get,
    path = "/v1/audit-log/verify",
    tag = "audit",
    responses(
        (status = 200, description = "The verification outcome (ok or not)", body = VerifyReport),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn verify_audit_log(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
) -> Result<Json<VerifyReport>, Failure<Native>> {
    caller.require(Scope::Read)?;
    let report = state.store().verify_audit_chain(&caller.tenant).await?;
    Ok(Json(VerifyReport::from(report)))
}

impl From<apitrail_model::ChainReport> for VerifyReport {
    fn from(r: apitrail_model::ChainReport) -> Self {
        Self {
            ok: r.ok,
            entries_checked: r.entries_checked,
            first_bad_id: r.first_bad_id.map(|id| id.to_string()),
            problem: r.problem,
            head_hash: hex(&r.head_hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<AuditRequest, ApiError> {
        parse_query(&Params::parse(Some(q)))
    }

    #[test]
    fn defaults_match_the_seed() {
        let r = parse("").expect("valid");
        assert_eq!(r.limit, 50);
        assert_eq!(r.after, None);
        assert_eq!(r.filter, AuditFilter::default());
        assert_eq!(parse("limit=200").expect("valid").limit, 200);
        assert_eq!(parse("limit=1").expect("valid").limit, 1);
    }

    #[test]
    fn cursors_round_trip_and_accept_offsets() {
        let e = AuditEntry {
            id: Uuid::from_u128(0x0190_f5a2_7c3e_7d4a_8f00_0123_4567_89ab),
            user_id: None,
            action: "create".into(),
            resource_type: "api_key".into(),
            resource_id: None,
            details: None,
            ip_address: None,
            request_id: None,
            created_at: Timestamp::from_millis(1_714_564_800_123).unwrap_or_default(),
        };
        let c = cursor_after(&e);
        assert_eq!(
            c,
            "2024-05-01T12:00:00.123Z|0190f5a2-7c3e-7d4a-8f00-0123456789ab"
        );
        let want = Some(AuditAfter {
            created_at: e.created_at,
            id: e.id,
        });
        assert_eq!(parse(&format!("cursor={c}")).expect("valid").after, want);
        // An offset sent unencoded (`+` reads as a space) still means the same instant.
        assert_eq!(
            parse("cursor=2024-05-01T14:00:00.123+02:00|0190f5a2-7c3e-7d4a-8f00-0123456789ab")
                .expect("valid")
                .after,
            want
        );
    }

    #[test]
    fn every_bad_parameter_is_named() {
        for (q, param) in [
            ("limit=0", "limit"),
            ("limit=201", "limit"),
            ("limit=abc", "limit"),
            ("limit=5.0", "limit"),
            ("limit=1&limit=2", "limit"),
            ("cursor=abc", "cursor"),
            ("cursor=2024-05-01T12:00:00Z", "cursor"),
            (
                "cursor=2024-05-01T12:00:00|0190f5a2-7c3e-7d4a-8f00-0123456789ab",
                "cursor",
            ),
            ("cursor=2024-05-01T12:00:00Z|nope", "cursor"),
            ("action=a&action=b", "action"),
        ] {
            let err = parse(q).expect_err(q);
            assert_eq!(err.param.as_deref(), Some(param), "{q}");
        }
        let long = "x".repeat(apitrail_model::request_log::rules::MAX_TEXT + 1);
        assert_eq!(
            parse(&format!("resource_id={long}"))
                .expect_err("too long")
                .param
                .as_deref(),
            Some("resource_id")
        );
    }
}

//! `GET /v1/requests/{request_id}/timeline` (SPEC §10, "one linked timeline"): what an org's
//! records say about one request, the three kinds side by side, each in its dialect's items.
//!
//! The items are the dialects' own (`logs::LogItem`, `audit::AuditItem`,
//! `actions::RecordItem`): the timeline prints each kind exactly as its list route does, so
//! this is the one route module that imports the dialects' item types.

use apitrail_model::request_log::rules;
use apitrail_model::{
    AuditFilter, LogFilter, PageRequest, Scope, Sort, SortDir, SortKey, ViewerKind,
};
use apitrail_store::Page;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Authed;
use crate::dialects::actions::{RecordItem, record_items};
use crate::dialects::audit::AuditItem;
use crate::dialects::logs::LogItem;
use crate::error::{ApiError, Failure, Native, NativeErrorBody};
use crate::openapi::{OrgKeyErrors, scope};
use crate::state::AppState;

/// The most items of each kind one timeline holds (the oldest ones); `truncated` says which
/// kinds had more.
pub const MAX_ITEMS: u32 = 1_000;

/// Every record of the org that carries one request id, oldest first within each kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// The request id, as asked for.
    request_id: String,
    /// The request logs with this request id (with or without the `req_` prefix), as
    /// `GET /v1/logs` prints them; at most 1,000, oldest first (ties by id).
    request_logs: Vec<LogItem>,
    /// The audit entries the request made (self-audit) or that were ingested with its id, as
    /// `GET /v1/audit-log` prints them; at most 1,000, oldest first (ties by id).
    audit_log: Vec<AuditItem>,
    /// The action records the request triggered, as the actions dialect prints them with
    /// `include_state=true` (each with its events and state); at most 1,000, oldest first
    /// (ties by id).
    action_records: Vec<RecordItem>,
    /// Which kinds had more than 1,000 records: those lists hold the oldest 1,000.
    truncated: Truncated,
}

/// For each kind, whether records beyond the ones listed carry the request id.
#[derive(Debug, Serialize, ToSchema)]
pub struct Truncated {
    /// More request logs than `request_logs` holds.
    request_logs: bool,
    /// More audit entries than `audit_log` holds.
    audit_log: bool,
    /// More action records than `action_records` holds.
    action_records: bool,
}

/// The request id of the path: any text a record can carry (ingest accepts up to 1,024
/// bytes), so 1-1,024 characters; control characters are refused, since no request id the
/// server mints or reuses holds one and they would only hide in a path.
fn parse_request_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Ok(Path(id)) = path else {
        return Err(ApiError::param(
            "request_id",
            "must be valid UTF-8 once percent-decoded",
        ));
    };
    if id.is_empty() {
        return Err(ApiError::param("request_id", "must not be empty"));
    }
    if id.chars().count() > rules::MAX_TEXT {
        return Err(ApiError::param(
            "request_id",
            format!("must be at most {} characters", rules::MAX_TEXT),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(ApiError::param(
            "request_id",
            "must not contain control characters",
        ));
    }
    Ok(id)
}

/// Get the timeline of a request.
///
/// Every record of the organization that carries this request id, the three kinds side by
/// side: the request logs (ingested, captured by the proxy, or apitrail's own self-logs), the
/// audit entries (ingested with `request_id`, or written by the call itself, e.g. creating a
/// key) and the action records the call triggered. `abc` and `req_abc` are one id, as for
/// the `request_id` filter of `GET /v1/logs`. Each kind lists at most 1,000 records, oldest
/// first; `truncated` says which had more. An id no record carries is not an error: request
/// ids come from clients, so its absence is the answer (`200` with empty lists). Another
/// organization's records never appear. A viewer token gets empty lists for the kinds it
/// does not read, and its forced filter applies to each list.
#[utoipa::path(
    get,
    path = "/v1/requests/{request_id}/timeline",
    tag = "timeline",
    params(
        ("request_id" = String, Path,
            pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,1024}$",
            description = "The request id (1-1,024 characters, no control characters), with or without the `req_` prefix")
    ),
    responses(
        (status = 200, description = "The request's records (empty lists when none carries the id)", body = Timeline),
        (status = 400, description = "The request id is too long or holds control characters", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn request_timeline(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Timeline>, Failure<Native>> {
    caller.require(Scope::Read)?;
    let request_id = parse_request_id(path)?;
    let tenant = &caller.tenant;
    let store = state.store();
    let filter = caller.narrow_logs(LogFilter {
        request_id: Some(request_id.clone()),
        ..LogFilter::default()
    });
    let oldest_first = Sort {
        key: SortKey::CreatedAt,
        dir: SortDir::Asc,
    };
    // A viewer token reads only its kinds; the others are empty, never read.
    let (logs, audit, actions) = tokio::try_join!(
        async {
            if !caller.reads(ViewerKind::RequestLogs) {
                return Ok(Page::empty());
            }
            store
                .list_request_logs(tenant, &filter, oldest_first, PageRequest::first(MAX_ITEMS))
                .await
        },
        async {
            if !caller.reads(ViewerKind::AuditLog) {
                return Ok(Page::empty());
            }
            store
                .audit_entries_by_request(tenant, &request_id, MAX_ITEMS)
                .await
        },
        async {
            if !caller.reads(ViewerKind::ActionRecords) {
                return Ok(Page::empty());
            }
            store
                .action_records_by_request(tenant, &request_id, MAX_ITEMS)
                .await
        },
    )?;
    // The audit lookup by request id takes no filter: a viewer's forced filter is applied to
    // what it found (a bounded read), with the reference semantics of the audit filter.
    let forced = caller.narrow_audit(AuditFilter::default());
    let mut audit = audit;
    audit.items.retain(|e| forced.matches(e));
    let action_records = record_items(&state, tenant, &actions.items, true, false).await?;
    let org = tenant.org_id().as_str();
    Ok(Json(Timeline {
        truncated: Truncated {
            request_logs: logs.has_more,
            audit_log: audit.has_more,
            action_records: actions.has_more,
        },
        request_id,
        request_logs: logs.items.into_iter().map(LogItem::from).collect(),
        audit_log: audit
            .items
            .into_iter()
            .map(|e| AuditItem::new(org, e))
            .collect(),
        action_records,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(id: &str) -> Result<String, ApiError> {
        parse_request_id(Ok(Path(id.to_owned())))
    }

    #[test]
    fn request_ids_are_any_text_without_controls_up_to_the_ingest_limit() {
        for ok in [
            "req_01J0ABC",
            "abc",
            "a b/c",
            "Ünïcødé ✓",
            &"é".repeat(1024),
        ] {
            assert_eq!(parse(ok).ok().as_deref(), Some(ok), "{ok:?}");
        }
        for bad in [
            "",
            "a\u{0}b",
            "a\nb",
            "\u{7f}",
            "a\u{85}",
            &"x".repeat(1025),
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.param.as_deref(), Some("request_id"), "{bad:?}");
        }
    }
}

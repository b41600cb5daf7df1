//! The record filters of the list routes, parsed once for every route that reads the same
//! records (a list, its export): the same names, limits and errors everywhere, and no route
//! module importing another.

use apitrail_model::request_log::rules;
use apitrail_model::{AuditFilter, LogFilter};
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::params::Params;

/// The record filters of `GET /v1/logs`, shared by its export, tail and stats (documentation
/// only: [`logs`] parses them). Each route documents its own time window beside them.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LogFilterParams {
    /// Filter by HTTP method (case-insensitive), e.g. GET, POST.
    #[param(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,32}$")]
    method: Option<String>,
    /// Filter by route pattern, e.g. /v1/events.
    #[param(max_length = 1024)]
    route_pattern: Option<String>,
    /// Filter by request id, with or without the `req_` prefix.
    #[param(max_length = 1024)]
    request_id: Option<String>,
    /// Filter by auth type, e.g. api_key, jwt.
    #[param(max_length = 1024)]
    auth_type: Option<String>,
    /// Filter by the id of the API key that made the call (apitrail's extension).
    #[param(max_length = 1024)]
    api_key_id: Option<String>,
    /// Filter by the calling user's id (apitrail's extension).
    #[param(max_length = 1024)]
    user_id: Option<String>,
    /// Minimum HTTP status code, inclusive; not above `status_max`.
    #[param(minimum = 100, maximum = 599)]
    status_min: Option<u16>,
    /// Maximum HTTP status code, inclusive.
    #[param(minimum = 100, maximum = 599)]
    status_max: Option<u16>,
}

/// The filters of `GET /v1/logs` (and of its export); each error names its parameter.
pub fn logs(p: &Params) -> Result<LogFilter, ApiError> {
    let method = match p.str("method")? {
        Some(m) => Some(rules::method(m).map_err(|e| ApiError::param("method", e))?),
        None => None,
    };
    let status_min = p.int::<u16>("status_min", 100..=599)?;
    let status_max = p.int::<u16>("status_max", 100..=599)?;
    if let (Some(lo), Some(hi)) = (status_min, status_max)
        && lo > hi
    {
        return Err(ApiError::param(
            "status_min",
            "must not be greater than status_max",
        ));
    }
    let from = p.timestamp("from")?;
    let to = p.timestamp("to")?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::param("from", "must not be later than to"));
    }
    Ok(LogFilter {
        method,
        route_pattern: p.text("route_pattern", rules::MAX_TEXT)?,
        request_id: p.text("request_id", rules::MAX_TEXT)?,
        auth_type: p.text("auth_type", rules::MAX_TEXT)?,
        api_key_id: p.text("api_key_id", rules::MAX_TEXT)?,
        user_id: p.text("user_id", rules::MAX_TEXT)?,
        status_min,
        status_max,
        from,
        to,
        ..LogFilter::default()
    })
}

/// The filters of `GET /v1/audit-log` (and of its export); each error names its parameter.
pub fn audit(p: &Params) -> Result<AuditFilter, ApiError> {
    Ok(AuditFilter {
        resource_type: p.text("resource_type", rules::MAX_TEXT)?,
        resource_id: p.text("resource_id", rules::MAX_TEXT)?,
        action: p.text("action", rules::MAX_TEXT)?,
        ..AuditFilter::default()
    })
}

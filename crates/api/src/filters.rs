//! The record filters of the list routes, parsed once for every route that reads the same
//! records (a list, its export): the same names, limits and errors everywhere, and no route
//! module importing another.

use apitrail_model::request_log::rules;
use apitrail_model::{AuditFilter, LogFilter};

use crate::error::ApiError;
use crate::params::Params;

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

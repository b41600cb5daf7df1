//! Helpers every route module shares, so that no route module imports another: reading a
//! JSON body, the 404s of unknown ids, the org named in a path, and the audit entry of a
//! change. (The next-page cursor is in `wire`.)

use apitrail_model::{AuditEntry, OrgId, Tenant, Timestamp, new_record_id};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::caller::OrgCaller;
use crate::context;
use crate::error::{ApiError, ErrorKind};
use crate::params::{NUL_MESSAGE, nul_fields};
use crate::state::AppState;

/// Parses a JSON body into `T` (read from a JSON object only), naming the field at fault.
pub(crate) fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Some(field) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| nul_fields(text).into_iter().next())
    {
        return Err(ApiError {
            param: field,
            ..ApiError::new(ErrorKind::InvalidBody, format!("the body {NUL_MESSAGE}"))
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de)
        .map(|crate::wire::Object(body)| body)
        .map_err(|e| {
            let message = without_position(e.inner());
            let path = e.path().to_string();
            let field = message
                .strip_prefix("unknown field `")
                .and_then(|r| r.split_once('`'))
                .map(|(f, _)| f.to_owned())
                .or_else(|| (path != "." && !path.is_empty()).then_some(path));
            ApiError {
                param: field,
                ..ApiError::new(
                    ErrorKind::InvalidBody,
                    format!("the body must be a JSON object as documented: {message}"),
                )
            }
        })
}

/// serde_json's message without the position it appends: in a body or a single record, only
/// noise.
pub(crate) fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_owned()
}

/// The 404 of an id that names nothing the caller may see: `no such <what>`.
pub(crate) fn not_found(what: &str) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no such {what}"))
}

/// A path id that must be a UUID: anything else names nothing (404), as the document says.
pub(crate) fn path_uuid(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| not_found(what))
}

/// What a route's `{org_id}` must look like before it is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrgIdForm {
    /// Any text: an id that is not an org id names no org (404).
    Any,
    /// Digits only, as the actions dialect's seed types it (`^[0-9]+$`): anything else is a
    /// 400 naming `org_id`, as the seed's API answers.
    Digits,
}

/// The org a path's `{org_id}` names, by the one rule of every such route: the operator
/// (`caller` `None`) reaches every existing org, an org key only its own. Any other id
/// (malformed, unknown, another org's) is a 404 `no such org`, so that other orgs'
/// existence never shows; only an id not of the route's `form` is a 400.
pub(crate) async fn path_org(
    state: &AppState,
    caller: Option<&OrgCaller>,
    org_id: &str,
    form: OrgIdForm,
) -> Result<Tenant, ApiError> {
    if form == OrgIdForm::Digits
        && (org_id.is_empty() || !org_id.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ApiError::param("org_id", "must match ^[0-9]+$"));
    }
    let no_such_org = || not_found("org");
    let id = OrgId::parse(org_id).map_err(|_| no_such_org())?;
    match caller {
        Some(caller) if caller.tenant.org_id() == &id => Ok(caller.tenant.clone()),
        Some(_) => Err(no_such_org()),
        None => state.store().tenant(&id).await?.ok_or_else(no_such_org),
    }
}

/// The audit entry of a change made through the API by `actor` (`None`: the operator), which
/// the store writes in the same transaction as the change.
pub(crate) fn audit_entry(
    actor: Option<&OrgCaller>,
    action: &str,
    resource_type: &str,
    resource_id: impl ToString,
    details: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        id: new_record_id(),
        user_id: actor.map(|a| a.key.principal_id.clone()),
        action: action.into(),
        resource_type: resource_type.into(),
        resource_id: Some(resource_id.to_string()),
        details: Some(details.to_string()),
        ip_address: context::client_ip().map(|ip| ip.to_string()),
        request_id: Some(context::request_id()),
        created_at: Timestamp::now(),
    }
}

/// Stored JSON text as a raw JSON value (`null` should the text not be JSON, which the store
/// never holds).
pub(crate) fn raw_json(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default())
}

//! Actions, the native routes (SPEC §7): credentials, destinations, action definitions,
//! triggering a record and signaling its outcome. The records list is the `actions` dialect
//! ([`crate::dialects::actions`]). Every mutation of a credential, destination or definition is
//! self-audited in the same transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use apitrail_model::action::{
    MAX_NAMES, is_local_name, is_private_address, valid_action_name, webhook_target,
};
use apitrail_model::transition::{self, EventKind, Occurrence, Refusal, Signal};
use apitrail_model::{
    ActionDefinition, ActionEvent, ActionRecord, Credential, DefinitionDestination, Destination,
    FieldError, OrgId, Scope, Tags, Tenant, Timestamp, WebhookConfig, WebhookSecret, new_record_id,
};
use apitrail_store::Expected;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Authed;
use crate::caller::OrgCaller;
use crate::common::{OrgIdForm, audit_entry, json_body, not_found, path_org, path_uuid, raw_json};
use crate::context;
use crate::error::{ApiError, ErrorKind, Failure, Native, NativeErrorBody};
use crate::openapi::{JsonBodyErrors, OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;
use crate::wire::{BodyBytes, ConfigBody, Ids, Pagination, RESERVED_HEADERS, StateBody};

type Result<T> = std::result::Result<T, Failure<Native>>;

/// Default `response_time_sla_ms` of a destination.
pub const DEFAULT_SLA_MS: u32 = 10_000;
/// Largest `response_time_sla_ms`.
pub const MAX_SLA_MS: u32 = 120_000;
/// Default `timeout` (seconds) of a record: how long a signaling destination has to signal.
pub const DEFAULT_TIMEOUT_SECS: u32 = 300;
/// Largest `timeout` (seconds): a week.
pub const MAX_TIMEOUT_SECS: u32 = 7 * 24 * 3600;
/// Most headers or tags on one destination or record.
const MAX_ENTRIES: usize = 50;
/// Longest label, tag or header value.
const MAX_TEXT: usize = 1000;
/// Largest schema or input, as JSON text.
const MAX_JSON: usize = 256 * 1024;

fn now() -> Timestamp {
    Timestamp::now()
}

/// Reads `Some(null)` as `Some(None)` (a PATCH clearing a field), unlike plain `Option`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Reads any JSON value, `null` included, as present (a missing field stays `None`).
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

// Lengths count characters, as the messages say and as JSON Schema's `maxLength` (in the
// OpenAPI document) counts them.
fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str) {
    if value.trim().is_empty() || value.chars().count() > MAX_TEXT {
        errors.push(FieldError::new(
            field,
            format!("must be 1-{MAX_TEXT} characters"),
        ));
    }
}

fn check_map(errors: &mut Vec<FieldError>, field: &str, map: &BTreeMap<String, String>) {
    if map.len() > MAX_ENTRIES {
        errors.push(FieldError::new(
            field,
            format!("must have at most {MAX_ENTRIES} entries"),
        ));
    }
    for (k, v) in map {
        if k.is_empty() || k.chars().count() > 100 || v.chars().count() > MAX_TEXT {
            errors.push(FieldError::new(
                format!("{field}.{k}"),
                format!("keys must be 1-100 characters and values at most {MAX_TEXT}"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Credentials

/// Creates a signing credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    /// Display label, 1-1000 characters, not only white space.
    #[schema(required = true, schema_with = crate::openapi::label)]
    label: Option<String>,
}

/// A signing credential (its secret only once, in [`CreatedCredential`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialBody {
    /// UUIDv7.
    #[schema(format = "uuid")]
    id: String,
    /// The credential's org.
    org_id: String,
    /// Label.
    label: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
}

impl CredentialBody {
    fn new(org: &OrgId, c: &Credential) -> Self {
        Self {
            id: c.id.to_string(),
            org_id: org.to_string(),
            label: c.label.clone(),
            created_at: c.created_at.to_rfc3339(),
        }
    }
}

/// A new credential with its secret (`whsec_…`): shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedCredential {
    #[serde(flatten)]
    credential: CredentialBody,
    /// The signing secret; deliveries carry `webhook-signature: v1,<base64 HMAC-SHA256>`
    /// keyed with the bytes after `whsec_` (base64-decoded).
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]+=*$")]
    secret: String,
}

/// The org's credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialList {
    /// The credentials, without secrets (all of them: never more than one page).
    data: Vec<CredentialBody>,
    /// Where the next page starts.
    pagination: Pagination,
}

/// Create a signing credential (scope admin).
#[utoipa::path(
    post, path = "/v1/credentials", tag = "actions",
    request_body = CreateCredential,
    responses(
        (status = 201, description = "The credential, with its secret (shown once)", body = CreatedCredential),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn create_credential(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<CreatedCredential>)> {
    caller.require(Scope::Admin)?;
    let input: CreateCredential = json_body(&body)?;
    let mut errors = Vec::new();
    let label = input.label.unwrap_or_default();
    check_text(&mut errors, "label", &label);
    if !errors.is_empty() {
        return Err(ApiError::fields(errors).into());
    }
    let credential = Credential {
        id: new_record_id(),
        label,
        secret: WebhookSecret::generate(),
        created_at: now(),
    };
    let entry = audit_entry(
        Some(&caller),
        "create",
        "credential",
        credential.id,
        json!({ "label": credential.label }),
    );
    state
        .store()
        .create_credential(&caller.tenant, &credential, &entry)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedCredential {
            credential: CredentialBody::new(caller.tenant.org_id(), &credential),
            secret: credential.secret.expose(),
        }),
    ))
}

/// List the org's signing credentials, without their secrets (scope admin).
#[utoipa::path(
    get, path = "/v1/credentials", tag = "actions",
    responses(
        (status = 200, description = "Every credential of the org, without secrets", body = CredentialList),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_credentials(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
) -> Result<Json<CredentialList>> {
    caller.require(Scope::Admin)?;
    let all = state.store().list_credentials(&caller.tenant).await?;
    Ok(Json(CredentialList {
        data: all
            .iter()
            .map(|c| CredentialBody::new(caller.tenant.org_id(), c))
            .collect(),
        pagination: Pagination::whole(),
    }))
}

// ---------------------------------------------------------------------------------------
// Destinations

/// Signaling settings: with `enabled`, a 2xx only acknowledges a delivery and the outcome
/// comes through the signal route.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalingBody {
    /// Whether signaling is on (default: unchanged, off for a new destination).
    enabled: Option<bool>,
    /// What a 2xx means: `ack` (the only value).
    #[schema(schema_with = crate::openapi::signaling_default)]
    default: Option<String>,
}

/// A destination's webhook settings, as a PATCH changes them: only the fields given (null
/// leaves a field as it is).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigInput {
    /// `http(s)://` URL receiving the deliveries; a loopback or private address (or a name
    /// resolving to one) needs the server's `--allow-private-destinations`.
    #[schema(schema_with = crate::openapi::webhook_url_or_null)]
    url: Option<String>,
    /// Extra headers sent with every delivery.
    #[schema(schema_with = crate::openapi::webhook_headers_or_null)]
    headers: Option<BTreeMap<String, String>>,
    /// Signaling settings.
    #[serde(default, deserialize_with = "crate::wire::object")]
    signaling: Option<SignalingBody>,
    /// How long a delivery may take, in milliseconds.
    #[schema(minimum = 1, maximum = 120_000)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    response_time_sla_ms: Option<u32>,
}

/// Changes a destination (PATCH): only the fields given; null leaves a field as it is,
/// except `credential_id`, which null clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationInput {
    /// Display label, 1-1000 characters, not only white space.
    #[schema(schema_with = crate::openapi::label_or_null)]
    label: Option<String>,
    /// `webhook` (the only type).
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::webhook_type_or_null)]
    kind: Option<String>,
    /// The webhook settings.
    #[serde(default, deserialize_with = "crate::wire::object")]
    config: Option<ConfigInput>,
    /// The id of a credential of the org signing the deliveries; null: unsigned.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = "uuid")]
    credential_id: Option<Option<String>>,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags_or_null)]
    tags: Option<BTreeMap<String, String>>,
}

/// A new destination's webhook settings (documentation only: `ConfigInput` reads them).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewConfig {
    /// `http(s)://` URL receiving the deliveries; a loopback or private address (or a name
    /// resolving to one) needs the server's `--allow-private-destinations`.
    #[schema(schema_with = crate::openapi::webhook_url)]
    url: String,
    /// Extra headers sent with every delivery.
    #[schema(schema_with = crate::openapi::webhook_headers_or_null)]
    headers: Option<BTreeMap<String, String>>,
    /// Signaling settings (default: off).
    #[serde(default, deserialize_with = "crate::wire::object")]
    signaling: Option<SignalingBody>,
    /// How long a delivery may take, in milliseconds.
    #[schema(minimum = 1, maximum = 120_000, default = 10_000)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    response_time_sla_ms: Option<u32>,
}

/// Creates a destination (documentation only: `DestinationInput` reads it).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewDestination {
    /// Display label, 1-1000 characters, not only white space.
    #[schema(schema_with = crate::openapi::label)]
    label: String,
    /// `webhook` (the only type).
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::webhook_type_or_null)]
    kind: Option<String>,
    /// The webhook settings.
    config: NewConfig,
    /// The id of a credential of the org signing the deliveries; null: unsigned.
    #[schema(format = "uuid")]
    credential_id: Option<String>,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags_or_null)]
    tags: Option<BTreeMap<String, String>>,
}

/// A destination.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationBody {
    /// UUIDv7.
    #[schema(format = "uuid")]
    id: String,
    /// The destination's org.
    org_id: String,
    /// Label.
    label: String,
    /// `webhook`.
    #[serde(rename = "type")]
    #[schema(schema_with = crate::openapi::webhook_type)]
    kind: &'static str,
    /// Webhook settings.
    config: ConfigBody,
    /// The signing credential; null when deliveries are unsigned.
    #[schema(required = true, format = "uuid")]
    credential_id: Option<String>,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags)]
    tags: Tags,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
    /// RFC 3339; set once deleted.
    #[schema(required = true, format = DateTime)]
    deleted_at: Option<String>,
}

impl DestinationBody {
    fn new(org: &OrgId, d: &Destination) -> Self {
        Self {
            id: d.id.to_string(),
            org_id: org.to_string(),
            label: d.label.clone(),
            kind: "webhook",
            config: (&d.config).into(),
            credential_id: d.credential_id.map(|c| c.to_string()),
            tags: d.tags.clone(),
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
            deleted_at: d.deleted_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// The org's destinations.
#[derive(Debug, Serialize, ToSchema)]
pub struct DestinationList {
    /// The destinations (all of them: never more than one page).
    data: Vec<DestinationBody>,
    /// Where the next page starts.
    pagination: Pagination,
}

/// Why a webhook URL may not be used, if it may not: a malformed URL, or (unless private
/// destinations are allowed) a loopback/private address or a name resolving to one. A name
/// that cannot be resolved now is accepted: the dispatcher checks again at every delivery.
pub async fn url_problem(url: &str, allow_private: bool) -> Option<String> {
    let target = match webhook_target(url) {
        Ok(t) => t,
        Err(e) => return Some(e),
    };
    if allow_private {
        return None;
    }
    const REFUSED: &str = "points to a loopback or private address; such destinations need \
         the server's --allow-private-destinations";
    if target.ip.is_some_and(is_private_address) || is_local_name(&target.host) {
        return Some(REFUSED.into());
    }
    if target.ip.is_none() {
        let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
        if let Ok(Ok(mut addrs)) = tokio::time::timeout(Duration::from_secs(2), lookup).await
            && addrs.any(|a| is_private_address(a.ip()))
        {
            return Some(REFUSED.into());
        }
    }
    None
}

/// Applies `input` onto `d` (a new destination's defaults or the current one), checking
/// every field.
async fn apply_destination(
    state: &AppState,
    tenant: &Tenant,
    d: &mut Destination,
    input: DestinationInput,
    create: bool,
) -> std::result::Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Some(label) = input.label {
        d.label = label;
    }
    check_text(&mut errors, "label", &d.label);
    match input.kind.as_deref() {
        None | Some("webhook") => {}
        Some(_) => errors.push(FieldError::new("type", "must be webhook")),
    }
    match input.config {
        Some(c) => {
            if let Some(url) = c.url {
                d.config.url = url;
            }
            if let Some(headers) = c.headers {
                d.config.headers = headers;
            }
            if let Some(s) = c.signaling {
                if let Some(enabled) = s.enabled {
                    d.config.signaling = enabled;
                }
                if s.default.as_deref().is_some_and(|v| v != "ack") {
                    errors.push(FieldError::new("config.signaling.default", "must be ack"));
                }
            }
            if let Some(sla) = c.response_time_sla_ms {
                d.config.response_time_sla_ms = sla;
            }
        }
        None if create => errors.push(FieldError::new("config", "is required")),
        None => {}
    }
    let allow_private = state.config().allow_private_destinations;
    if d.config.url.is_empty() {
        errors.push(FieldError::new("config.url", "is required"));
    } else if let Some(problem) = url_problem(&d.config.url, allow_private).await {
        errors.push(FieldError::new("config.url", problem));
    }
    // The decision travels with the destination: every dispatcher sharing the store delivers
    // it by this server's setting, whichever of them leases the record.
    d.allow_private = Some(allow_private);
    check_map(&mut errors, "config.headers", &d.config.headers);
    for name in d.config.headers.keys() {
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            errors.push(FieldError::new(
                format!("config.headers.{name}"),
                "is set by apitrail on every delivery",
            ));
        } else if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(
                format!("config.headers.{name}"),
                "is not a valid header name",
            ));
        }
    }
    for (name, value) in &d.config.headers {
        if axum::http::HeaderValue::from_str(value).is_err() {
            errors.push(FieldError::new(
                format!("config.headers.{name}"),
                "is not a valid header value",
            ));
        }
    }
    if !(1..=MAX_SLA_MS).contains(&d.config.response_time_sla_ms) {
        errors.push(FieldError::new(
            "config.response_time_sla_ms",
            format!("must be 1-{MAX_SLA_MS}"),
        ));
    }
    if let Some(tags) = input.tags {
        d.tags = tags;
    }
    check_map(&mut errors, "tags", &d.tags);
    if let Some(credential) = input.credential_id {
        d.credential_id = match credential {
            None => None,
            Some(raw) => match Uuid::try_parse(&raw) {
                Ok(id) if state.store().get_credential(tenant, id).await?.is_some() => Some(id),
                _ => {
                    errors.push(FieldError::new(
                        "credential_id",
                        "names no credential of this org",
                    ));
                    None
                }
            },
        };
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::fields(errors))
    }
}

fn destination_audit(d: &Destination) -> serde_json::Value {
    // Header values may be credentials: only their names are recorded.
    json!({
        "label": d.label,
        "url": d.config.url,
        "header_names": d.config.headers.keys().collect::<Vec<_>>(),
        "signaling": d.config.signaling,
        "response_time_sla_ms": d.config.response_time_sla_ms,
        "credential_id": d.credential_id.map(|c| c.to_string()),
        "tags": d.tags,
        "allow_private_addresses": d.allow_private,
    })
}

/// Create a webhook destination (scope admin).
#[utoipa::path(
    post, path = "/v1/destinations", tag = "actions",
    request_body = NewDestination,
    responses(
        (status = 201, description = "The destination", body = DestinationBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn create_destination(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<DestinationBody>)> {
    caller.require(Scope::Admin)?;
    let input: DestinationInput = json_body(&body)?;
    let at = now();
    let mut d = Destination {
        id: new_record_id(),
        label: String::new(),
        config: WebhookConfig {
            url: String::new(),
            headers: BTreeMap::new(),
            signaling: false,
            response_time_sla_ms: DEFAULT_SLA_MS,
        },
        credential_id: None,
        tags: Tags::new(),
        // Set by apply_destination.
        allow_private: None,
        created_at: at,
        updated_at: at,
        deleted_at: None,
    };
    apply_destination(&state, &caller.tenant, &mut d, input, true).await?;
    let entry = audit_entry(
        Some(&caller),
        "create",
        "destination",
        d.id,
        destination_audit(&d),
    );
    state
        .store()
        .put_destination(&caller.tenant, &d, true, &entry)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DestinationBody::new(caller.tenant.org_id(), &d)),
    ))
}

/// List the org's destinations (scope admin); deleted ones with `include_deleted=true`.
#[utoipa::path(
    get, path = "/v1/destinations", tag = "actions",
    params(("include_deleted" = Option<bool>, Query, description = "Also list deleted destinations (default false)")),
    responses(
        (status = 200, description = "The org's destinations", body = DestinationList),
        (status = 400, description = "A parameter is malformed", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_destinations(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(query): RawQuery,
) -> Result<Json<DestinationList>> {
    caller.require(Scope::Admin)?;
    let include_deleted = Params::parse(query.as_deref())
        .bool("include_deleted")?
        .unwrap_or(false);
    let all = state
        .store()
        .list_destinations(&caller.tenant, include_deleted)
        .await?;
    Ok(Json(DestinationList {
        data: all
            .iter()
            .map(|d| DestinationBody::new(caller.tenant.org_id(), d))
            .collect(),
        pagination: Pagination::whole(),
    }))
}

async fn find_destination(
    state: &AppState,
    caller: &OrgCaller,
    id: &str,
) -> std::result::Result<Destination, ApiError> {
    let id = path_uuid(id, "destination")?;
    state
        .store()
        .get_destination(&caller.tenant, id)
        .await?
        .ok_or_else(|| not_found("destination"))
}

/// Get a destination, deleted or not (scope admin).
#[utoipa::path(
    get, path = "/v1/destinations/{id}", tag = "actions",
    params(("id" = String, Path, format = "uuid", description = "The destination's id (anything else is not found)")),
    responses(
        (status = 200, description = "The destination (deleted ones too)", body = DestinationBody),
        (status = 404, description = "No such destination in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn get_destination(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
) -> Result<Json<DestinationBody>> {
    caller.require(Scope::Admin)?;
    let d = find_destination(&state, &caller, &id).await?;
    Ok(Json(DestinationBody::new(caller.tenant.org_id(), &d)))
}

/// Change a destination: only the fields given (scope admin).
#[utoipa::path(
    patch, path = "/v1/destinations/{id}", tag = "actions",
    params(("id" = String, Path, format = "uuid", description = "The destination's id (anything else is not found)")),
    request_body = DestinationInput,
    responses(
        (status = 200, description = "The changed destination", body = DestinationBody),
        (status = 404, description = "No such destination in the caller's org", body = NativeErrorBody),
        (status = 409, description = "The destination is deleted", body = NativeErrorBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn update_destination(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<DestinationBody>> {
    caller.require(Scope::Admin)?;
    let input: DestinationInput = json_body(&body)?;
    let mut d = find_destination(&state, &caller, &id).await?;
    if d.deleted_at.is_some() {
        return Err(ApiError::new(ErrorKind::Conflict, "the destination is deleted").into());
    }
    apply_destination(&state, &caller.tenant, &mut d, input, false).await?;
    d.updated_at = now();
    let entry = audit_entry(
        Some(&caller),
        "update",
        "destination",
        d.id,
        destination_audit(&d),
    );
    state
        .store()
        .put_destination(&caller.tenant, &d, false, &entry)
        .await?;
    Ok(Json(DestinationBody::new(caller.tenant.org_id(), &d)))
}

/// Delete a destination (soft: it stays readable by id with `deleted_at` set; scope admin).
#[utoipa::path(
    delete, path = "/v1/destinations/{id}", tag = "actions",
    params(("id" = String, Path, format = "uuid", description = "The destination's id (anything else is not found)")),
    responses(
        (status = 200, description = "The destination, with deleted_at set (deleting again changes nothing)", body = DestinationBody),
        (status = 404, description = "No such destination in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn delete_destination(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
) -> Result<Json<DestinationBody>> {
    caller.require(Scope::Admin)?;
    let mut d = find_destination(&state, &caller, &id).await?;
    if d.deleted_at.is_none() {
        let at = now();
        d.deleted_at = Some(at);
        d.updated_at = at;
        let entry = audit_entry(Some(&caller), "delete", "destination", d.id, json!({}));
        state
            .store()
            .put_destination(&caller.tenant, &d, false, &entry)
            .await?;
    }
    Ok(Json(DestinationBody::new(caller.tenant.org_id(), &d)))
}

// ---------------------------------------------------------------------------------------
// Action definitions

/// One destination of a definition, as given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkInput {
    /// The id of a live destination of the org.
    #[schema(format = "uuid")]
    destination_id: String,
    /// Whether records go there unless they name another (default: the first); one link at
    /// most.
    #[serde(default)]
    #[schema(default = false)]
    is_default: bool,
}

/// Creates (POST) or replaces (PUT) an action definition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionInput {
    /// The name records are triggered by: 1-100 characters of `[A-Za-z0-9_.:-]`, not a
    /// UUID, unique among the org's live definitions' names.
    #[schema(required = true, schema_with = crate::openapi::action_name)]
    variant: Option<String>,
    /// Other names, by the same rules (none repeated, none the variant).
    #[schema(schema_with = crate::openapi::aliases)]
    alias: Option<Vec<String>>,
    /// The JSON Schema (draft 2020-12 unless `$schema` says otherwise) of a record's input:
    /// an object or a boolean, at most 256 KiB.
    #[schema(required = true, schema_with = crate::openapi::json_schema)]
    schema: Option<Box<RawValue>>,
    /// Where records go: at least one live destination of the org, each once.
    #[schema(required = true, nullable = false, min_items = 1)]
    #[serde(default, deserialize_with = "crate::wire::objects")]
    destinations: Option<Vec<LinkInput>>,
}

/// One destination of a definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkBody {
    /// The link's id.
    #[schema(format = "uuid")]
    id: String,
    /// The definition.
    #[schema(format = "uuid")]
    action_definition_id: String,
    /// The destination.
    #[schema(format = "uuid")]
    destination_id: String,
    /// The org.
    org_id: String,
    /// Whether records go there by default.
    is_default: bool,
}

/// A version of an action definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionBody {
    /// UUIDv7.
    #[schema(format = "uuid")]
    id: String,
    /// The org.
    org_id: String,
    /// The name records are triggered by.
    variant: String,
    /// This version (1, 2, ...).
    #[schema(minimum = 1)]
    version: u32,
    /// Other names.
    alias: Vec<String>,
    /// The input's JSON Schema (an object or a boolean).
    #[schema(value_type = Value)]
    schema: Box<RawValue>,
    /// Where records go.
    destinations: Vec<LinkBody>,
    /// RFC 3339: when this version was made.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
    /// RFC 3339; set once deleted.
    #[schema(required = true, format = DateTime)]
    deleted_at: Option<String>,
}

impl DefinitionBody {
    fn new(org: &OrgId, d: &ActionDefinition) -> Self {
        Self {
            id: d.id.to_string(),
            org_id: org.to_string(),
            variant: d.variant.clone(),
            version: d.version,
            alias: d.alias.clone(),
            schema: raw_json(&d.schema),
            destinations: d
                .destinations
                .iter()
                .map(|l| LinkBody {
                    id: l.id.to_string(),
                    action_definition_id: d.id.to_string(),
                    destination_id: l.destination_id.to_string(),
                    org_id: org.to_string(),
                    is_default: l.is_default,
                })
                .collect(),
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
            deleted_at: d.deleted_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// The org's action definitions (latest versions).
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionList {
    /// The latest version of each definition (all of them: never more than one page).
    data: Vec<DefinitionBody>,
    /// Where the next page starts.
    pagination: Pagination,
}

/// Compiles a definition's schema; the error names what is wrong with it.
pub fn compile_schema(
    schema: &serde_json::Value,
) -> std::result::Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))
}

/// Checks a definition body and builds the definition's fields (id, version and times are
/// the caller's). Previous links keep their ids when the same destination stays.
async fn definition_fields(
    state: &AppState,
    tenant: &Tenant,
    input: DefinitionInput,
    previous: Option<&ActionDefinition>,
) -> std::result::Result<(String, Vec<String>, String, Vec<DefinitionDestination>), ApiError> {
    let mut errors = Vec::new();
    let variant = input.variant.unwrap_or_default();
    if !valid_action_name(&variant) {
        errors.push(FieldError::new(
            "variant",
            "must be 1-100 characters of [A-Za-z0-9_.:-] and not a UUID",
        ));
    }
    let alias = input.alias.unwrap_or_default();
    for (i, a) in alias.iter().enumerate() {
        if !valid_action_name(a) {
            errors.push(FieldError::new(
                format!("alias[{i}]"),
                "must be 1-100 characters of [A-Za-z0-9_.:-] and not a UUID",
            ));
        } else if *a == variant || alias[..i].contains(a) {
            errors.push(FieldError::new(format!("alias[{i}]"), "repeats a name"));
        }
    }
    if alias.len() + 1 > MAX_NAMES {
        errors.push(FieldError::new(
            "alias",
            format!("must have at most {} names", MAX_NAMES - 1),
        ));
    }
    let schema = match input.schema {
        None => {
            errors.push(FieldError::new("schema", "is required"));
            String::new()
        }
        Some(raw) if raw.get().len() > MAX_JSON => {
            errors.push(FieldError::new(
                "schema",
                format!("must be at most {MAX_JSON} bytes"),
            ));
            String::new()
        }
        Some(raw) => {
            let parsed: serde_json::Value = serde_json::from_str(raw.get()).unwrap_or_default();
            if !(parsed.is_object() || parsed.is_boolean()) {
                errors.push(FieldError::new(
                    "schema",
                    "must be a JSON object or boolean",
                ));
            } else if let Err(e) = compile_schema(&parsed) {
                errors.push(FieldError::new("schema", e));
            }
            raw.get().to_owned()
        }
    };
    let links = input.destinations.unwrap_or_default();
    if links.is_empty() {
        errors.push(FieldError::new(
            "destinations",
            "must name at least one destination",
        ));
    }
    if links.iter().filter(|l| l.is_default).count() > 1 {
        errors.push(FieldError::new(
            "destinations",
            "may have one default at most",
        ));
    }
    let mut destinations = Vec::with_capacity(links.len());
    for (i, l) in links.iter().enumerate() {
        let field = format!("destinations[{i}].destination_id");
        let Ok(id) = Uuid::try_parse(&l.destination_id) else {
            errors.push(FieldError::new(field, "must be a destination id"));
            continue;
        };
        match state.store().get_destination(tenant, id).await? {
            Some(d) if d.deleted_at.is_none() => {}
            _ => {
                errors.push(FieldError::new(
                    field,
                    "names no live destination of this org",
                ));
                continue;
            }
        }
        if destinations
            .iter()
            .any(|d: &DefinitionDestination| d.destination_id == id)
        {
            errors.push(FieldError::new(field, "repeats a destination"));
            continue;
        }
        let link_id = previous
            .and_then(|p| p.destinations.iter().find(|d| d.destination_id == id))
            .map_or_else(new_record_id, |d| d.id);
        destinations.push(DefinitionDestination {
            id: link_id,
            destination_id: id,
            is_default: l.is_default,
        });
    }
    if errors.is_empty() {
        Ok((variant, alias, schema, destinations))
    } else {
        Err(ApiError::fields(errors))
    }
}

fn definition_audit(d: &ActionDefinition) -> serde_json::Value {
    json!({
        "variant": d.variant,
        "version": d.version,
        "alias": d.alias,
        "destinations": d.destinations.iter().map(|l| l.destination_id.to_string()).collect::<Vec<_>>(),
    })
}

/// Create an action definition (scope admin).
#[utoipa::path(
    post, path = "/v1/action-definitions", tag = "actions",
    request_body = DefinitionInput,
    responses(
        (status = 201, description = "Version 1 of the definition", body = DefinitionBody),
        (status = 409, description = "A live definition of the org already has one of the names", body = NativeErrorBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn create_definition(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<DefinitionBody>)> {
    caller.require(Scope::Admin)?;
    let input: DefinitionInput = json_body(&body)?;
    let (variant, alias, schema, destinations) =
        definition_fields(&state, &caller.tenant, input, None).await?;
    let at = now();
    let d = ActionDefinition {
        id: new_record_id(),
        variant,
        version: 1,
        alias,
        schema,
        destinations,
        created_at: at,
        updated_at: at,
        deleted_at: None,
    };
    let entry = audit_entry(
        Some(&caller),
        "create",
        "action_definition",
        d.id,
        definition_audit(&d),
    );
    state
        .store()
        .put_action_definition(&caller.tenant, &d, true, &entry)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(DefinitionBody::new(caller.tenant.org_id(), &d)),
    ))
}

/// List the org's action definitions, latest versions (scope admin).
#[utoipa::path(
    get, path = "/v1/action-definitions", tag = "actions",
    params(("include_deleted" = Option<bool>, Query, description = "Also list deleted definitions (default false)")),
    responses(
        (status = 200, description = "The latest version of each definition", body = DefinitionList),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_definitions(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(query): RawQuery,
) -> Result<Json<DefinitionList>> {
    caller.require(Scope::Admin)?;
    let include_deleted = Params::parse(query.as_deref())
        .bool("include_deleted")?
        .unwrap_or(false);
    let all = state
        .store()
        .list_action_definitions(&caller.tenant, include_deleted)
        .await?;
    Ok(Json(DefinitionList {
        data: all
            .iter()
            .map(|d| DefinitionBody::new(caller.tenant.org_id(), d))
            .collect(),
        pagination: Pagination::whole(),
    }))
}

async fn find_definition(
    state: &AppState,
    caller: &OrgCaller,
    id: &str,
    version: Option<u32>,
) -> std::result::Result<ActionDefinition, ApiError> {
    let id = path_uuid(id, "action definition")?;
    state
        .store()
        .get_action_definition(&caller.tenant, id, version)
        .await?
        .ok_or_else(|| not_found("action definition"))
}

/// Get an action definition: the latest version, or `version` (scope admin).
#[utoipa::path(
    get, path = "/v1/action-definitions/{id}", tag = "actions",
    params(("id" = String, Path, format = "uuid", description = "The action definition's id (anything else is not found)"), ("version" = Option<u32>, Query, minimum = 1, maximum = 4_294_967_295.0, description = "A version (default: the latest)")),
    responses(
        (status = 200, description = "The definition (deleted ones too)", body = DefinitionBody),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        (status = 404, description = "No such action definition (or version) in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn get_definition(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DefinitionBody>> {
    caller.require(Scope::Admin)?;
    let version = Params::parse(query.as_deref()).int::<u32>("version", 1..=u32::MAX)?;
    let d = find_definition(&state, &caller, &id, version).await?;
    Ok(Json(DefinitionBody::new(caller.tenant.org_id(), &d)))
}

/// Replace an action definition; a changed schema makes the next version (scope admin).
#[utoipa::path(
    put, path = "/v1/action-definitions/{id}", tag = "actions",
    params(("id" = String, Path, format = "uuid", description = "The action definition's id (anything else is not found)")),
    request_body = DefinitionInput,
    responses(
        (status = 200, description = "The definition; a changed schema made the next version", body = DefinitionBody),
        (status = 404, description = "No such action definition in the caller's org", body = NativeErrorBody),
        (status = 409, description = "The definition is deleted, or another live definition has one of the names", body = NativeErrorBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn replace_definition(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<DefinitionBody>> {
    caller.require(Scope::Admin)?;
    let input: DefinitionInput = json_body(&body)?;
    let current = find_definition(&state, &caller, &id, None).await?;
    if current.deleted_at.is_some() {
        return Err(ApiError::new(ErrorKind::Conflict, "the action definition is deleted").into());
    }
    let (variant, alias, schema, destinations) =
        definition_fields(&state, &caller.tenant, input, Some(&current)).await?;
    let same_schema = serde_json::from_str::<serde_json::Value>(&schema).ok()
        == serde_json::from_str::<serde_json::Value>(&current.schema).ok();
    let at = now();
    let d = ActionDefinition {
        id: current.id,
        variant,
        version: current.version + u32::from(!same_schema),
        alias,
        schema,
        destinations,
        created_at: if same_schema { current.created_at } else { at },
        updated_at: at,
        deleted_at: None,
    };
    let entry = audit_entry(
        Some(&caller),
        "update",
        "action_definition",
        d.id,
        definition_audit(&d),
    );
    state
        .store()
        .put_action_definition(&caller.tenant, &d, !same_schema, &entry)
        .await?;
    Ok(Json(DefinitionBody::new(caller.tenant.org_id(), &d)))
}

/// Delete an action definition: every version is marked, its names are freed; records keep
/// theirs (scope admin).
#[utoipa::path(
    delete, path = "/v1/action-definitions/{id}", tag = "actions",
    params(("id" = String, Path, format = "uuid", description = "The action definition's id (anything else is not found)")),
    responses(
        (status = 200, description = "The definition, with deleted_at set (deleting again changes nothing)", body = DefinitionBody),
        (status = 404, description = "No such action definition in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn delete_definition(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
) -> Result<Json<DefinitionBody>> {
    caller.require(Scope::Admin)?;
    let mut d = find_definition(&state, &caller, &id, None).await?;
    if d.deleted_at.is_none() {
        let at = now();
        d.deleted_at = Some(at);
        d.updated_at = at;
        let entry = audit_entry(
            Some(&caller),
            "delete",
            "action_definition",
            d.id,
            json!({}),
        );
        state
            .store()
            .put_action_definition(&caller.tenant, &d, false, &entry)
            .await?;
    }
    Ok(Json(DefinitionBody::new(caller.tenant.org_id(), &d)))
}

// ---------------------------------------------------------------------------------------
// Records: trigger and signal

/// Triggers an action.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerInput {
    /// The live definition of the org: its variant, an alias, or its id.
    #[schema(required = true, nullable = false, min_length = 1)]
    action: Option<String>,
    /// A version of the definition (default: the latest).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    version: Option<u32>,
    /// The input (any JSON, `null` included), checked against the version's schema; at most
    /// 256 KiB.
    #[serde(default, deserialize_with = "present")]
    #[schema(required = true, value_type = Value)]
    input: Option<Box<RawValue>>,
    /// Seconds a signaling destination has, after acknowledging, to signal.
    #[schema(minimum = 1, maximum = 604_800, default = 300)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    timeout: Option<u32>,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags_or_null)]
    tags: Option<BTreeMap<String, String>>,
    /// The id of a live destination of the org (default: the definition's default).
    #[schema(format = "uuid")]
    destination_id: Option<String>,
}

/// An action record, as the native routes print it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordBody {
    /// UUIDv7 (the deliveries' `webhook-id`).
    #[schema(format = "uuid")]
    id: String,
    /// The org.
    org_id: String,
    /// The definition.
    #[schema(format = "uuid")]
    action_definition_id: String,
    /// The definition's variant.
    variant: String,
    /// The definition's version it was made with.
    #[schema(minimum = 1)]
    version: u32,
    /// The input (any JSON).
    #[schema(value_type = Value)]
    input: Box<RawValue>,
    /// Seconds to signal after acknowledging.
    #[schema(minimum = 1)]
    timeout: u32,
    /// Labels.
    #[schema(schema_with = crate::openapi::tags)]
    tags: Tags,
    /// Where it is delivered.
    #[schema(format = "uuid")]
    destination_id: String,
    /// The request that created it.
    #[schema(required = true)]
    request_id: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// The current state.
    state: StateBody,
}

impl RecordBody {
    fn new(org: &OrgId, r: &ActionRecord) -> Self {
        Self {
            id: r.id.to_string(),
            org_id: org.to_string(),
            action_definition_id: r.definition_id.to_string(),
            variant: r.variant.clone(),
            version: r.version,
            input: raw_json(&r.input),
            timeout: r.timeout_secs,
            tags: r.tags.clone(),
            destination_id: r.destination_id.to_string(),
            request_id: r.request_id.clone(),
            created_at: r.created_at.to_rfc3339(),
            state: (&r.state).into(),
        }
    }
}

/// The definition a trigger names.
async fn resolve_definition(
    state: &AppState,
    tenant: &Tenant,
    action: &str,
    version: Option<u32>,
) -> std::result::Result<ActionDefinition, ApiError> {
    let latest = match Uuid::try_parse(action) {
        Ok(id) => state
            .store()
            .get_action_definition(tenant, id, None)
            .await?
            .filter(|d| d.deleted_at.is_none()),
        Err(_) => state.store().find_action_definition(tenant, action).await?,
    };
    let unknown = || {
        ApiError::fields(vec![FieldError::new(
            "action",
            "names no live action definition of this org (variant, alias or id)",
        )])
    };
    let latest = latest.ok_or_else(unknown)?;
    match version {
        None => Ok(latest),
        Some(v) if v == latest.version => Ok(latest),
        Some(v) => state
            .store()
            .get_action_definition(tenant, latest.id, Some(v))
            .await?
            .ok_or_else(|| {
                ApiError::fields(vec![FieldError::new(
                    "version",
                    format!("the definition has no version {v}"),
                )])
            }),
    }
}

/// Create an action record (scope write): checked against the definition's schema, then
/// `pending` until the dispatcher delivers it.
#[utoipa::path(
    post, path = "/v1/orgs/{org_id}/actions", tag = "actions",
    params(("org_id" = String, Path, description = "The caller's org")),
    request_body = TriggerInput,
    responses(
        (status = 201, description = "The record, pending", body = RecordBody),
        (status = 404, description = "`org_id` is not the key's org", body = NativeErrorBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::WRITE }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn trigger_action(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(org_id, _): Ids<String>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<RecordBody>)> {
    path_org(&state, Some(&caller), &org_id, OrgIdForm::Any).await?;
    caller.require(Scope::Write)?;
    let input: TriggerInput = json_body(&body)?;
    let Some(action) = input.action.filter(|a| !a.is_empty()) else {
        return Err(ApiError::fields(vec![FieldError::new("action", "is required")]).into());
    };
    let Some(raw_input) = input.input else {
        return Err(ApiError::fields(vec![FieldError::new("input", "is required")]).into());
    };
    let mut errors = Vec::new();
    if raw_input.get().len() > MAX_JSON {
        errors.push(FieldError::new(
            "input",
            format!("must be at most {MAX_JSON} bytes"),
        ));
    }
    let timeout = input.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=MAX_TIMEOUT_SECS).contains(&timeout) {
        errors.push(FieldError::new(
            "timeout",
            format!("must be 1-{MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    let tags = input.tags.unwrap_or_default();
    check_map(&mut errors, "tags", &tags);
    if !errors.is_empty() {
        return Err(ApiError::fields(errors).into());
    }
    let definition = resolve_definition(&state, &caller.tenant, &action, input.version).await?;
    let destination_id = match input.destination_id {
        None => definition.default_destination(),
        Some(raw) => Some(
            match Uuid::try_parse(&raw) {
                Ok(id) => state.store().get_destination(&caller.tenant, id).await?,
                Err(_) => None,
            }
            .filter(|d| d.deleted_at.is_none())
            .map(|d| d.id)
            .ok_or_else(|| {
                ApiError::fields(vec![FieldError::new(
                    "destination_id",
                    "names no live destination of this org",
                )])
            })?,
        ),
    };
    let Some(destination_id) = destination_id else {
        return Err(ApiError::fields(vec![FieldError::new(
            "action",
            "the definition has no destination",
        )])
        .into());
    };
    let value: serde_json::Value = serde_json::from_str(raw_input.get())
        .map_err(|e| ApiError::fields(vec![FieldError::new("input", e.to_string())]))?;
    let schema: serde_json::Value = serde_json::from_str(&definition.schema)
        .map_err(|e| ApiError::internal(&format!("stored schema unreadable: {e}")))?;
    let validator = compile_schema(&schema).map_err(|e| ApiError::internal(&e))?;
    let violations: Vec<FieldError> = validator
        .iter_errors(&value)
        .map(|e| {
            let path = e.instance_path().as_str().to_owned();
            FieldError::new(format!("input{path}"), e.to_string())
        })
        .collect();
    if !violations.is_empty() {
        let mut err = ApiError::fields(violations);
        err.message = format!(
            "the input does not match the schema of {} version {}: {}",
            definition.variant, definition.version, err.message
        );
        return Err(err.into());
    }
    let at = now();
    let record = ActionRecord {
        id: new_record_id(),
        definition_id: definition.id,
        version: definition.version,
        variant: definition.variant.clone(),
        input: raw_input.get().to_owned(),
        timeout_secs: timeout,
        tags,
        destination_id,
        request_id: Some(context::request_id()),
        created_at: at,
        state: transition::created(at),
    };
    let event = ActionEvent::of_state(record.id, &record.state, EventKind::Created, None);
    state
        .store()
        .create_action_record(&caller.tenant, &record, &event)
        .await?;
    state.config().dispatch_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(RecordBody::new(caller.tenant.org_id(), &record)),
    ))
}

/// A signaling destination's report of an acknowledged record's outcome.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalInput {
    /// The outcome.
    #[schema(required = true, schema_with = crate::openapi::signal_status)]
    status: Option<String>,
    /// A detail, kept in the event (and as `error_message` when failed); at most 1000
    /// characters.
    #[schema(max_length = 1000)]
    message: Option<String>,
    /// Any JSON, kept in the event; at most 256 KiB.
    #[schema(required = false, value_type = Value)]
    data: Option<Box<RawValue>>,
}

/// Report the outcome of an acknowledged record (scope write).
#[utoipa::path(
    post, path = "/v1/orgs/{org_id}/actions/records/{id}/signal", tag = "actions",
    params(("org_id" = String, Path, description = "The caller's org"), ("id" = String, Path, format = "uuid", description = "The record's id (anything else is not found)")),
    request_body = SignalInput,
    responses(
        (status = 200, description = "The record with its final status", body = RecordBody),
        (status = 404, description = "`org_id` is not the key's org, or no such record", body = NativeErrorBody),
        (status = 409, description = "The record is not waiting for a signal, or its timeout passed", body = NativeErrorBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::WRITE }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn signal_action(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids((org_id, id), _): Ids<(String, String)>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<RecordBody>> {
    path_org(&state, Some(&caller), &org_id, OrgIdForm::Any).await?;
    caller.require(Scope::Write)?;
    let input: SignalInput = json_body(&body)?;
    let Some(outcome) = input.status.as_deref().and_then(Signal::parse) else {
        return Err(ApiError::fields(vec![FieldError::new(
            "status",
            "must be succeeded or failed",
        )])
        .into());
    };
    if input
        .message
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_TEXT)
    {
        return Err(ApiError::fields(vec![FieldError::new(
            "message",
            format!("must be at most {MAX_TEXT} characters"),
        )])
        .into());
    }
    if input
        .data
        .as_ref()
        .is_some_and(|d| d.get().len() > MAX_JSON)
    {
        return Err(ApiError::fields(vec![FieldError::new(
            "data",
            format!("must be at most {MAX_JSON} bytes"),
        )])
        .into());
    }
    let id = path_uuid(&id, "action record")?;
    let mut record = state
        .store()
        .get_action_record(&caller.tenant, id)
        .await?
        .ok_or_else(|| not_found("action record"))?;
    let refused = |refusal: Refusal| ApiError::new(ErrorKind::Conflict, refusal.to_string());
    let signaled = Occurrence::Signaled {
        outcome,
        message: input.message,
        data: input.data.map(|d| d.get().to_owned()),
    };
    let change = transition::transition(&record, signaled, now()).map_err(refused)?;
    if !state
        .store()
        .transition_action(
            &caller.tenant,
            id,
            &Expected::of(&change, None),
            &change.state,
            &change.event(id),
        )
        .await?
    {
        // Changed meanwhile (signaled, or timed out): refused as its state now says.
        let now = state
            .store()
            .get_action_record(&caller.tenant, id)
            .await?
            .ok_or_else(|| not_found("action record"))?;
        return Err(refused(Refusal::NotSignalable {
            status: now.state.status,
        })
        .into());
    }
    record.state = change.state;
    Ok(Json(RecordBody::new(caller.tenant.org_id(), &record)))
}

//! Org and key management: the operator API (`/admin/v1/...`, operator token) and the org
//! admin's own key routes (`/v1/api-keys`, scope `admin`). Both share one implementation per
//! operation; they differ only in how the org is chosen.
//!
//! Every mutation writes an audit entry of the affected org in the same transaction.

use apitrail_model::key::NewApiKeyInput;
use apitrail_model::{
    ApiKey, NewApiKey, NewOrg, Org, OrgId, Scope, Secret, Tenant, Timestamp, new_record_id,
};
use apitrail_store::Store;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Authed, Operator};
use crate::caller::OrgCaller;
use crate::common::{OrgIdForm, audit_entry, json_body, not_found, path_org, path_uuid};
use crate::error::{ApiError, Failure, Native, NativeErrorBody};
use crate::openapi::{JsonBodyErrors, OperatorErrors, OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;
use crate::wire::{BodyBytes, Ids, Pagination};

type Result<T> = std::result::Result<T, Failure<Native>>;

/// An org.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgBody {
    /// The org's id.
    id: String,
    /// Display name.
    name: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
}

impl From<Org> for OrgBody {
    fn from(o: Org) -> Self {
        Self {
            id: o.id.to_string(),
            name: o.name,
            created_at: o.created_at.to_rfc3339(),
        }
    }
}

/// A list of orgs.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgList {
    /// The orgs, by id.
    data: Vec<OrgBody>,
    /// Where the next page starts.
    pagination: Pagination,
}

/// Creates an org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1-64 characters of `[A-Za-z0-9_.:-]`; a UUIDv7 is generated when absent (or null).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    id: Option<String>,
    /// Display name, 1-200 characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 200)]
    name: Option<String>,
}

/// An API key (never its secret, except once in [`CreatedKey`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBody {
    /// UUIDv7.
    #[schema(format = "uuid")]
    id: String,
    /// The key's org.
    org_id: String,
    /// Label.
    name: String,
    /// The key's scopes (a non-empty set).
    #[schema(schema_with = crate::openapi::scopes)]
    scopes: Vec<&'static str>,
    /// What kind of principal the key acts for.
    #[schema(schema_with = crate::openapi::principal_type)]
    principal_type: &'static str,
    /// The principal's id.
    principal_id: String,
    /// The user the key acts for.
    #[schema(required = true)]
    user_id: Option<String>,
    /// The principal's email.
    #[schema(required = true)]
    email: Option<String>,
    /// The service account the key acts for.
    #[schema(required = true)]
    service_account_id: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339; updated at most once a minute.
    #[schema(required = true, format = DateTime)]
    last_used_at: Option<String>,
    /// RFC 3339; a revoked key authenticates nothing.
    #[schema(required = true, format = DateTime)]
    revoked_at: Option<String>,
}

impl From<ApiKey> for KeyBody {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id.to_string(),
            org_id: k.org_id.to_string(),
            name: k.name,
            scopes: k.scopes.iter().map(Scope::as_str).collect(),
            principal_type: k.principal_type.as_str(),
            principal_id: k.principal_id,
            user_id: k.user_id,
            email: k.email,
            service_account_id: k.service_account_id,
            created_at: k.created_at.to_rfc3339(),
            last_used_at: k.last_used_at.map(Timestamp::to_rfc3339),
            revoked_at: k.revoked_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// A new key, with its secret: shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    key: KeyBody,
    /// `atk_` and 40 base62 characters. Store it now: apitrail keeps only its SHA-256.
    #[schema(pattern = "^atk_[A-Za-z0-9]{40}$")]
    secret: String,
}

/// A list of keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// The keys, revoked ones too (all of them: never more than one page).
    data: Vec<KeyBody>,
    /// Where the next page starts.
    pagination: Pagination,
}

/// Creates an API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Label, 1-200 characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 200)]
    name: Option<String>,
    /// At least one of read, write, admin (each independent: admin does not imply read).
    #[schema(required = true, schema_with = crate::openapi::scopes)]
    scopes: Option<Vec<String>>,
    /// What kind of principal the key acts for.
    #[schema(required = true, schema_with = crate::openapi::principal_type)]
    principal_type: Option<String>,
    /// The principal's id, 1-256 characters.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 256)]
    principal_id: Option<String>,
    /// The user the key acts for, 1-256 characters (leave it out for none; an empty string is
    /// refused).
    #[schema(min_length = 1, max_length = 256)]
    user_id: Option<String>,
    /// The principal's email, at most 320 characters with an `@` (leave it out for none).
    #[schema(min_length = 1, max_length = 320, pattern = "@")]
    email: Option<String>,
    /// The service account the key acts for, 1-256 characters (leave it out for none).
    #[schema(min_length = 1, max_length = 256)]
    service_account_id: Option<String>,
}

/// Query of `GET /admin/v1/orgs`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OrgListQuery {
    /// Orgs per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// `pagination.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Create an org.
#[utoipa::path(
    post, path = "/admin/v1/orgs", tag = "operator",
    request_body = CreateOrg,
    responses(
        (status = 201, description = "The org", body = OrgBody),
        (status = 409, description = "An org with this id exists", body = NativeErrorBody),
        JsonBodyErrors,
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn create_org(
    State(state): State<AppState>,
    _: Operator,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<OrgBody>)> {
    let req: CreateOrg = json_body(&body)?;
    let new = NewOrg::parse(req.id, req.name).map_err(ApiError::fields)?;
    let org = create_org_as(state.store(), new).await?;
    Ok((StatusCode::CREATED, Json(org.into())))
}

/// Creates an org on behalf of the operator (HTTP or CLI), with its audit entry.
pub async fn create_org_as(store: &dyn Store, new: NewOrg) -> std::result::Result<Org, ApiError> {
    let org = Org {
        id: new.id,
        name: new.name,
        created_at: Timestamp::now(),
    };
    let entry = audit_entry(None, "create", "org", &org.id, json!({ "name": org.name }));
    store.create_org(&org, &entry).await?;
    Ok(org)
}

/// List orgs.
#[utoipa::path(
    get, path = "/admin/v1/orgs", tag = "operator",
    params(OrgListQuery),
    responses(
        (status = 200, description = "A page of orgs, by id", body = OrgList),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn list_orgs(
    State(state): State<AppState>,
    _: Operator,
    RawQuery(query): RawQuery,
) -> Result<Json<OrgList>> {
    let p = Params::parse(query.as_deref());
    let limit = p.int::<u32>("limit", 1..=1000)?.unwrap_or(100);
    let after = match p.str("cursor")? {
        None => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| OrgId::parse(&s).ok())
                .ok_or_else(|| {
                    ApiError::param("cursor", "is not a cursor issued by this endpoint")
                })?,
        ),
    };
    let page = state.store().list_orgs(after.as_ref(), limit).await?;
    let pagination = Pagination::of(&page, |last| URL_SAFE_NO_PAD.encode(last.id.as_str()));
    Ok(Json(OrgList {
        data: page.items.into_iter().map(OrgBody::from).collect(),
        pagination,
    }))
}

/// Get an org.
#[utoipa::path(
    get, path = "/admin/v1/orgs/{org_id}", tag = "operator",
    params(("org_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,64}$", description = "The org's id (anything else is not found)")),
    responses(
        (status = 200, description = "The org", body = OrgBody),
        (status = 404, description = "No such org", body = NativeErrorBody),
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn get_org(
    State(state): State<AppState>,
    _: Operator,
    Ids(org_id, _): Ids<String>,
) -> Result<Json<OrgBody>> {
    let tenant = path_org(&state, None, &org_id, OrgIdForm::Any).await?;
    Ok(Json(state.store().org(&tenant).await?.into()))
}

async fn do_create_key(
    state: &AppState,
    tenant: &Tenant,
    actor: Option<&OrgCaller>,
    body: &[u8],
) -> std::result::Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let req: CreateKey = json_body(body)?;
    let new = NewApiKey::try_from(NewApiKeyInput {
        name: req.name,
        scopes: req.scopes,
        principal_type: req.principal_type,
        principal_id: req.principal_id,
        user_id: req.user_id,
        email: req.email,
        service_account_id: req.service_account_id,
    })
    .map_err(ApiError::fields)?;
    let (key, secret) = create_key_as(state.store(), tenant, new, actor).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: key.into(),
            secret: secret.expose().to_owned(),
        }),
    ))
}

/// Creates a key in `tenant`'s org on behalf of `actor` (`None`: the operator, over HTTP or
/// the CLI), with its audit entry. The secret is returned once and only its hash is stored.
pub async fn create_key_as(
    store: &dyn Store,
    tenant: &Tenant,
    new: NewApiKey,
    actor: Option<&OrgCaller>,
) -> std::result::Result<(ApiKey, Secret), ApiError> {
    let secret = Secret::generate();
    let key = ApiKey {
        id: new_record_id(),
        org_id: tenant.org_id().clone(),
        name: new.name,
        scopes: new.scopes,
        principal_type: new.principal_type,
        principal_id: new.principal_id,
        user_id: new.user_id,
        email: new.email,
        service_account_id: new.service_account_id,
        created_at: Timestamp::now(),
        last_used_at: None,
        revoked_at: None,
    };
    let entry = audit_entry(
        actor,
        "create",
        "api_key",
        key.id,
        json!({
            "name": key.name,
            "scopes": key.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
            "principal_type": key.principal_type.as_str(),
            "principal_id": key.principal_id,
        }),
    );
    store
        .create_api_key(tenant, &key, &secret.hash(), &entry)
        .await?;
    Ok((key, secret))
}

/// Revokes a key of `tenant`'s org on behalf of `actor`, with its audit entry (only when the
/// key was live). `None` when the org has no such key.
pub async fn revoke_key_as(
    store: &dyn Store,
    tenant: &Tenant,
    id: Uuid,
    actor: Option<&OrgCaller>,
) -> std::result::Result<Option<ApiKey>, ApiError> {
    let entry = audit_entry(actor, "revoke", "api_key", id, json!({}));
    Ok(store
        .revoke_api_key(tenant, id, Timestamp::now(), &entry)
        .await?)
}

async fn do_list_keys(
    state: &AppState,
    tenant: &Tenant,
) -> std::result::Result<Json<KeyList>, ApiError> {
    let keys = state.store().list_api_keys(tenant).await?;
    Ok(Json(KeyList {
        data: keys.into_iter().map(KeyBody::from).collect(),
        pagination: Pagination::whole(),
    }))
}

async fn do_get_key(
    state: &AppState,
    tenant: &Tenant,
    id: &str,
) -> std::result::Result<Json<KeyBody>, ApiError> {
    let id = path_uuid(id, "API key")?;
    match state.store().get_api_key(tenant, id).await? {
        Some(k) => Ok(Json(k.into())),
        None => Err(not_found("API key")),
    }
}

async fn do_revoke_key(
    state: &AppState,
    tenant: &Tenant,
    actor: Option<&OrgCaller>,
    id: &str,
) -> std::result::Result<Json<KeyBody>, ApiError> {
    match revoke_key_as(state.store(), tenant, path_uuid(id, "API key")?, actor).await? {
        Some(k) => Ok(Json(k.into())),
        None => Err(not_found("API key")),
    }
}

/// Create an API key for an org.
#[utoipa::path(
    post, path = "/admin/v1/orgs/{org_id}/api-keys", tag = "operator",
    params(("org_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,64}$", description = "The org's id (anything else is not found)")),
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret (shown once)", body = CreatedKey),
        (status = 404, description = "No such org", body = NativeErrorBody),
        JsonBodyErrors,
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn admin_create_key(
    State(state): State<AppState>,
    _: Operator,
    Ids(org_id, _): Ids<String>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    let tenant = path_org(&state, None, &org_id, OrgIdForm::Any).await?;
    Ok(do_create_key(&state, &tenant, None, &body).await?)
}

/// List an org's API keys.
#[utoipa::path(
    get, path = "/admin/v1/orgs/{org_id}/api-keys", tag = "operator",
    params(("org_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,64}$", description = "The org's id (anything else is not found)")),
    responses(
        (status = 200, description = "Every key of the org, revoked ones too", body = KeyList),
        (status = 404, description = "No such org", body = NativeErrorBody),
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn admin_list_keys(
    State(state): State<AppState>,
    _: Operator,
    Ids(org_id, _): Ids<String>,
) -> Result<Json<KeyList>> {
    let tenant = path_org(&state, None, &org_id, OrgIdForm::Any).await?;
    Ok(do_list_keys(&state, &tenant).await?)
}

/// Get one of an org's API keys.
#[utoipa::path(
    get, path = "/admin/v1/orgs/{org_id}/api-keys/{id}", tag = "operator",
    params(("org_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,64}$", description = "The org's id (anything else is not found)"), ("id" = String, Path, format = "uuid", description = "The key's id (anything else is not found)")),
    responses(
        (status = 200, description = "The key", body = KeyBody),
        (status = 404, description = "No such org, or no such key in it", body = NativeErrorBody),
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn admin_get_key(
    State(state): State<AppState>,
    _: Operator,
    Ids((org_id, id), _): Ids<(String, String)>,
) -> Result<Json<KeyBody>> {
    let tenant = path_org(&state, None, &org_id, OrgIdForm::Any).await?;
    Ok(do_get_key(&state, &tenant, &id).await?)
}

/// Revoke one of an org's API keys (idempotent).
#[utoipa::path(
    delete, path = "/admin/v1/orgs/{org_id}/api-keys/{id}", tag = "operator",
    params(("org_id" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,64}$", description = "The org's id (anything else is not found)"), ("id" = String, Path, format = "uuid", description = "The key's id (anything else is not found)")),
    responses(
        (status = 200, description = "The key, with revoked_at set (revoking again changes nothing)", body = KeyBody),
        (status = 404, description = "No such org, or no such key in it", body = NativeErrorBody),
        OperatorErrors,
    ),
    security(("operator" = []))
)]
pub async fn admin_revoke_key(
    State(state): State<AppState>,
    _: Operator,
    Ids((org_id, id), _): Ids<(String, String)>,
) -> Result<Json<KeyBody>> {
    let tenant = path_org(&state, None, &org_id, OrgIdForm::Any).await?;
    Ok(do_revoke_key(&state, &tenant, None, &id).await?)
}

/// Create an API key in the caller's org (scope admin).
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret (shown once)", body = CreatedKey),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    caller.require(Scope::Admin)?;
    Ok(do_create_key(&state, &caller.tenant, Some(&caller), &body).await?)
}

/// List the caller's org's API keys (scope admin).
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    responses(
        (status = 200, description = "Every key of the org, revoked ones too", body = KeyList),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
) -> Result<Json<KeyList>> {
    caller.require(Scope::Admin)?;
    Ok(do_list_keys(&state, &caller.tenant).await?)
}

/// Get one of the caller's org's API keys (scope admin).
#[utoipa::path(
    get, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, format = "uuid", description = "The key's id (anything else is not found)")),
    responses(
        (status = 200, description = "The key", body = KeyBody),
        (status = 404, description = "No such API key in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn get_key(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
) -> Result<Json<KeyBody>> {
    caller.require(Scope::Admin)?;
    Ok(do_get_key(&state, &caller.tenant, &id).await?)
}

/// Revoke one of the caller's org's API keys (scope admin; idempotent).
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, format = "uuid", description = "The key's id (anything else is not found)")),
    responses(
        (status = 200, description = "The key, with revoked_at set (revoking again changes nothing)", body = KeyBody),
        (status = 404, description = "No such API key in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
) -> Result<Json<KeyBody>> {
    caller.require(Scope::Admin)?;
    Ok(do_revoke_key(&state, &caller.tenant, Some(&caller), &id).await?)
}

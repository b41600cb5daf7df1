//! Viewer tokens (SPEC §10): `POST /v1/viewer-tokens` and `DELETE /v1/viewer-tokens/{id}`
//! (scope `admin`), and `GET /v1/me`, which says who the caller is (the web console reads it
//! to know which tabs to show).
//!
//! What a viewer token may call, and the filter forced on its queries, are decided in
//! `auth` and `caller`, not here.

use apitrail_model::viewer::MAX_LIVE_PER_ORG;
use apitrail_model::{
    NewViewerToken, NewViewerTokenInput, Scope, Secret, Timestamp, ViewerFilter, ViewerKind,
    ViewerToken, new_record_id,
};
use apitrail_store::ViewerCreated;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::auth::Authed;
use crate::common::{audit_entry, json_body, not_found, path_uuid};
use crate::error::{ApiError, ErrorKind, Failure, Native, NativeErrorBody};
use crate::openapi::{JsonBodyErrors, OrgKeyErrors, scope};
use crate::state::AppState;
use crate::wire::{BodyBytes, Ids, Object};

type Result<T> = std::result::Result<T, Failure<Native>>;

/// The filter a viewer token forces on every query it makes.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FilterBody {
    /// Only records of this user: request logs' `user_id` and audit entries' acting
    /// `user_id` (action records carry no user, so a token with this filter cannot read
    /// them). 1-1,024 bytes.
    #[schema(required = true, min_length = 1, max_length = 1024)]
    user_id: Option<String>,
    /// Only request logs made with this API key (`api_key_id`); audit entries and action
    /// records carry no key, so a token with this filter reads request logs only.
    /// 1-1,024 bytes.
    #[schema(required = true, min_length = 1, max_length = 1024)]
    api_key_id: Option<String>,
}

/// The filter to force, as a creation asks for it: either field may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterInput {
    /// Only records of this user: request logs' `user_id` and audit entries' acting
    /// `user_id` (action records carry no user, so a token with this filter cannot read
    /// them). 1-1,024 bytes.
    #[schema(min_length = 1, max_length = 1024)]
    user_id: Option<String>,
    /// Only request logs made with this API key (`api_key_id`); audit entries and action
    /// records carry no key, so a token with this filter reads request logs only.
    /// 1-1,024 bytes.
    #[schema(min_length = 1, max_length = 1024)]
    api_key_id: Option<String>,
}

impl From<&ViewerFilter> for FilterBody {
    fn from(f: &ViewerFilter) -> Self {
        Self {
            user_id: f.user_id.clone(),
            api_key_id: f.api_key_id.clone(),
        }
    }
}

/// Creates a viewer token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateViewerToken {
    /// Lifetime in seconds, 60-86400 (24 h); 3600 when absent.
    #[schema(minimum = 60, maximum = 86400, default = 3600)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    ttl_seconds: Option<i64>,
    /// What the token reads: a non-empty subset of `request_logs`, `audit_log`,
    /// `action_records`; all three when absent.
    #[schema(schema_with = crate::openapi::viewer_kinds)]
    #[serde(default, deserialize_with = "crate::wire::present")]
    kinds: Option<Vec<String>>,
    /// The filter forced on every query; a kind whose records cannot carry it is refused
    /// (400 naming `filter`).
    #[schema(nullable = false, value_type = Option<FilterInput>)]
    #[serde(default, deserialize_with = "crate::wire::present")]
    filter: Option<Object<FilterInput>>,
}

/// A new viewer token, with its secret: shown this once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedViewerToken {
    /// UUIDv7: the token's id, for `DELETE /v1/viewer-tokens/{id}`; its calls are
    /// self-logged with it as `api_key_id` and `auth_type` `viewer_token`.
    #[schema(format = "uuid")]
    id: String,
    /// `atv_` and 40 base62 characters. apitrail keeps only its SHA-256.
    #[schema(pattern = "^atv_[A-Za-z0-9]{40}$")]
    token: String,
    /// What the token reads.
    #[schema(schema_with = crate::openapi::viewer_kinds)]
    kinds: Vec<&'static str>,
    /// The filter forced on its queries (null fields narrow nothing).
    filter: FilterBody,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339: from then on the token is refused (401).
    #[schema(format = DateTime)]
    expires_at: String,
}

fn kind_names(token: &ViewerToken) -> Vec<&'static str> {
    token.kinds.iter().map(ViewerKind::as_str).collect()
}

/// Create a viewer token (scope admin).
///
/// A read-only, short-lived credential of the caller's org, accepted in every carrier an API
/// key is (and by `/ui?viewer_token=`). It reads only the list routes of its `kinds` (plus the
/// request timeline, whose other kinds come back empty, and `GET /v1/me`), with its `filter`
/// ANDed into every query; every other route answers 403. An org has at most 1,000 live
/// tokens (409 beyond; revoked and expired ones do not count and are deleted when a token is
/// created). The creation is written to the audit log (never the secret).
#[utoipa::path(
    post, path = "/v1/viewer-tokens", tag = "viewer-tokens",
    request_body = CreateViewerToken,
    responses(
        (status = 201, description = "The token, with its secret (shown once)", body = CreatedViewerToken),
        (status = 409, description = "The org has 1,000 live viewer tokens", body = NativeErrorBody),
        JsonBodyErrors,
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn create_viewer_token(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    BodyBytes(body): BodyBytes,
) -> Result<(StatusCode, Json<CreatedViewerToken>)> {
    caller.require(Scope::Admin)?;
    let req: CreateViewerToken = json_body(&body)?;
    let filter = req.filter.map(|f| f.0).unwrap_or_default();
    let new = NewViewerToken::try_from(NewViewerTokenInput {
        ttl_seconds: req.ttl_seconds,
        kinds: req.kinds,
        user_id: filter.user_id,
        api_key_id: filter.api_key_id,
    })
    .map_err(ApiError::fields)?;
    let secret = Secret::generate_viewer();
    let now = Timestamp::now();
    let token = ViewerToken {
        id: new_record_id(),
        org_id: caller.tenant.org_id().clone(),
        kinds: new.kinds,
        filter: new.filter,
        created_at: now,
        expires_at: now.add_millis(new.ttl_secs * 1000),
        revoked_at: None,
    };
    let entry = audit_entry(
        Some(&caller),
        "create",
        "viewer_token",
        token.id,
        json!({
            "kinds": kind_names(&token),
            "filter": FilterBody::from(&token.filter),
            "expires_at": token.expires_at.to_rfc3339(),
        }),
    );
    let created = state
        .store()
        .create_viewer_token(
            &caller.tenant,
            &token,
            &secret.hash(),
            &entry,
            MAX_LIVE_PER_ORG,
        )
        .await
        .map_err(ApiError::from)?;
    if created == ViewerCreated::TooMany {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "the org already has {MAX_LIVE_PER_ORG} live viewer tokens, the most it may \
                 have; revoke one (DELETE /v1/viewer-tokens/{{id}}) or wait for one to expire"
            ),
        )
        .into());
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedViewerToken {
            id: token.id.to_string(),
            token: secret.expose().to_owned(),
            kinds: kind_names(&token),
            filter: FilterBody::from(&token.filter),
            created_at: token.created_at.to_rfc3339(),
            expires_at: token.expires_at.to_rfc3339(),
        }),
    ))
}

/// Revoke a viewer token (scope admin; idempotent).
///
/// From then on the token is refused (401). The revocation is written to the audit log (once:
/// revoking again changes nothing). A token that expired or was revoked may already be
/// deleted (404).
#[utoipa::path(
    delete, path = "/v1/viewer-tokens/{id}", tag = "viewer-tokens",
    params(("id" = String, Path, format = "uuid", description = "The token's id (anything else is not found)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such viewer token in the caller's org", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::ADMIN }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn revoke_viewer_token(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    Ids(id, _): Ids<String>,
) -> Result<StatusCode> {
    caller.require(Scope::Admin)?;
    let id = path_uuid(&id, "viewer token")?;
    let entry = audit_entry(Some(&caller), "revoke", "viewer_token", id, json!({}));
    match state
        .store()
        .revoke_viewer_token(&caller.tenant, id, Timestamp::now(), &entry)
        .await
        .map_err(ApiError::from)?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(not_found("viewer token").into()),
    }
}

/// The caller's org.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeOrg {
    /// The org's id.
    id: String,
    /// Display name.
    name: String,
}

/// The credential of the call.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeCredential {
    /// `api_key` or `viewer_token`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(api_key|viewer_token)$")]
    kind: &'static str,
    /// The key's or the token's id.
    #[schema(format = "uuid")]
    id: String,
    /// An API key's scopes (absent for a viewer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::scopes)]
    scopes: Option<Vec<&'static str>>,
    /// A viewer token's kinds (absent for an API key).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::openapi::viewer_kinds)]
    kinds: Option<Vec<&'static str>>,
    /// A viewer token's forced filter (absent for an API key).
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<FilterBody>,
    /// When a viewer token expires, RFC 3339 (absent for an API key).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// Who is calling.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The caller's org.
    org: MeOrg,
    /// The credential of the call.
    credential: MeCredential,
}

/// Who am I.
///
/// The caller's org and credential: an API key's scopes, or a viewer token's kinds, filter
/// and expiry. Any org credential may call it (no scope needed), viewer tokens included.
#[utoipa::path(
    get, path = "/v1/me", tag = "me",
    responses(
        (status = 200, description = "The caller's org and credential", body = Me),
        (status = 403, description = "The operator token was sent (it is no org credential)", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn me(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
) -> Result<Json<Me>> {
    let org = state
        .store()
        .org(&caller.tenant)
        .await
        .map_err(ApiError::from)?;
    let credential = match &caller.viewer {
        Some(v) => MeCredential {
            kind: "viewer_token",
            id: v.id.to_string(),
            scopes: None,
            kinds: Some(kind_names(v)),
            filter: Some(FilterBody::from(&v.filter)),
            expires_at: Some(v.expires_at.to_rfc3339()),
        },
        None => MeCredential {
            kind: "api_key",
            id: caller.key.id.to_string(),
            scopes: Some(caller.key.scopes.iter().map(Scope::as_str).collect()),
            kinds: None,
            filter: None,
            expires_at: None,
        },
    };
    Ok(Json(Me {
        org: MeOrg {
            id: org.id.to_string(),
            name: org.name,
        },
        credential,
    }))
}

//! `GET /v1/me`: who the presented credential is (its org, and what it may do), for clients
//! such as the web console that show only what the caller can read.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::Authed;
use crate::error::{Failure, Native, NativeErrorBody};
use crate::openapi::OrgKeyErrors;
use crate::state::AppState;

/// The caller's org and credential.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "native",
    responses(
        (status = 200, description = "The caller's org and credential", body = Object),
        OrgKeyErrors<NativeErrorBody>,
    ),
)]
pub async fn whoami(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
) -> Result<Json<Value>, Failure<Native>> {
    let org = state.store().org(&caller.tenant).await?;
    let scopes: Vec<&str> = caller.key.scopes.iter().map(|s| s.as_str()).collect();
    Ok(Json(json!({
        "org": {"id": org.id.as_str(), "name": org.name},
        "credential": {"type": "api_key", "id": caller.key.id.to_string(), "scopes": scopes},
    })))
}

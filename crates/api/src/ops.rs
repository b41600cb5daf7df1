//! Operational endpoints and the fallbacks for unknown routes.

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Envelope, ErrorKind, Failure, Native, render};
use crate::state::AppState;

/// Liveness or readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(pattern = "^(ok|ready)$")]
    status: &'static str,
}

/// Liveness: the process is up.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the store answers.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The store answers", body = Health),
        (status = 503, description = "The store does not answer", body = crate::error::NativeErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, Failure<Native>> {
    state.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(ErrorKind::Unavailable, "the store does not answer")
    })?;
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state
        .metrics()
        .render(&state.store().stats(), state.recorder().dropped());
    if let Some(dispatch) = &state.config().dispatch_stats {
        crate::metrics::render_dispatch(&mut text, &dispatch.snapshot());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of the whole API", content_type = "application/json"))
)]
pub async fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
        .into_response()
}

/// Unknown routes answer in the native envelope, or in the zoo envelope under the zoo
/// dialect's prefixes (`/org`, `/user`, `/users`, `/api-calls`), whose clients read only that.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    let err = ApiError::new(
        ErrorKind::RouteNotFound,
        format!("no route for {method} {}", uri.path()),
    );
    if crate::dialects::zoo::is_zoo_path(uri.path()) {
        render::<crate::dialects::zoo::Zoo>(&err)
    } else {
        render::<Native>(&err)
    }
}

/// Known routes with an unsupported method answer in the native envelope.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Failure<Native> {
    method_not_allowed_in::<Native>(method, uri).await
}

/// A dialect route's answer to an unsupported method, in that dialect's envelope.
pub async fn method_not_allowed_in<D: Envelope>(method: Method, uri: Uri) -> Failure<D> {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{} does not support {method}", uri.path()),
    )
    .into()
}

//! apitrail's HTTP surface.
//!
//! A request goes: socket → [`selflog::track`] (request id, timing, metrics) → router →
//! handler, whose extractors authenticate ([`auth`]) before the handler parses its parameters
//! into model types ([`params`]), calls the [`Store`], and maps the result to its dialect's
//! own wire types. Errors are [`error::ApiError`]s rendered in the route's dialect envelope.
//! After the response, the middleware hands the call's own request log to the
//! [`recorder::Recorder`].

pub mod auth;
pub mod caller;
mod common;
pub mod context;
pub mod dialects;
pub mod error;
pub mod head;
pub mod metrics;
pub mod native;
pub mod openapi;
pub mod ops;
pub mod params;
pub mod recorder;
pub mod selflog;
pub mod serve;
pub mod state;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use apitrail_store::{Store, StoreError};
use axum::Router;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

use crate::dialects::{actions as action_records, audit, keys, logs, zoo};
use crate::native::{actions, admin, ingest};

pub use caller::AdminToken;
pub use state::{ApiConfig, AppState};

/// The router with every route and the tracking middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/logs", get(logs::list_logs))
        .route("/audit-log", get(audit::list_audit_log_unversioned))
        .route("/v1/audit-log", get(audit::list_audit_log))
        .route("/v1/audit-log/verify", get(audit::verify_audit_log))
        .route(
            "/v1/api-keys/requests",
            get(keys::list_key_requests).fallback(ops::method_not_allowed_in::<keys::Keys>),
        )
        .route(
            "/org/api-calls",
            get(zoo::org_list_api_calls).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route(
            "/org/api-calls/{id}",
            get(zoo::get_api_call_for_org).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route(
            "/user/api-calls",
            get(zoo::user_list_api_calls).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route(
            "/user/api-calls/{id}",
            get(zoo::get_api_call_for_user).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route(
            "/api-calls",
            get(zoo::list_api_calls).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route(
            "/api-calls/{id}",
            get(zoo::get_api_call).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route(
            "/users/{id}/api-calls",
            get(zoo::list_api_calls_for_user).fallback(ops::method_not_allowed_in::<zoo::Zoo>),
        )
        .route("/v1/ingest/requests", post(ingest::ingest_requests))
        .route("/v1/ingest/audit-events", post(ingest::ingest_audit_events))
        .route(
            "/admin/v1/orgs",
            get(admin::list_orgs).post(admin::create_org),
        )
        .route("/admin/v1/orgs/{org_id}", get(admin::get_org))
        .route(
            "/admin/v1/orgs/{org_id}/api-keys",
            get(admin::admin_list_keys).post(admin::admin_create_key),
        )
        .route(
            "/admin/v1/orgs/{org_id}/api-keys/{id}",
            get(admin::admin_get_key).delete(admin::admin_revoke_key),
        )
        .route(
            "/v1/api-keys",
            get(admin::list_keys).post(admin::create_key),
        )
        .route(
            "/v1/api-keys/{id}",
            get(admin::get_key).delete(admin::revoke_key),
        )
        .route(
            "/v1/credentials",
            get(actions::list_credentials).post(actions::create_credential),
        )
        .route(
            "/v1/destinations",
            get(actions::list_destinations).post(actions::create_destination),
        )
        .route(
            "/v1/destinations/{id}",
            get(actions::get_destination)
                .patch(actions::update_destination)
                .delete(actions::delete_destination),
        )
        .route(
            "/v1/action-definitions",
            get(actions::list_definitions).post(actions::create_definition),
        )
        .route(
            "/v1/action-definitions/{id}",
            get(actions::get_definition)
                .merge(put(actions::replace_definition))
                .delete(actions::delete_definition),
        )
        .route("/v1/orgs/{org_id}/actions", post(actions::trigger_action))
        .route(
            "/v1/orgs/{org_id}/actions/records",
            get(action_records::list_action_records)
                .fallback(ops::method_not_allowed_in::<action_records::Actions>),
        )
        .route(
            "/v1/orgs/{org_id}/actions/records/{id}/signal",
            post(actions::signal_action),
        )
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            selflog::track,
        ))
        .with_state(state)
}

/// A bound, ready-to-run server.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    state: AppState,
    store: Arc<dyn Store>,
}

impl App {
    /// Binds `listen` (port 0 picks a free port) and assembles the app over `store`.
    /// Must be called within a Tokio runtime (it starts the self-log recorder).
    pub async fn build(
        store: Arc<dyn Store>,
        config: ApiConfig,
        listen: SocketAddr,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let (recorder, _task) = recorder::Recorder::spawn(Arc::clone(&store));
        let state = AppState::new(Arc::clone(&store), config, recorder);
        Ok(Self {
            listener,
            state,
            store,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops gracefully: stops accepting, lets
    /// in-flight requests finish (each ingest waits for its commit; idle connections close at
    /// once), writes the pending self-logs, and drains the store's write queue. Connections
    /// are served by [`serve::serve`] with the limits of [`ApiConfig::serve`].
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let app = router(self.state.clone());
        serve::serve(
            self.listener,
            app,
            self.state.config().serve.clone(),
            self.state.metrics().serve_stats(),
            shutdown,
        )
        .await
        .map_err(ServeError::Io)?;
        self.state.recorder().flush().await;
        self.store.shutdown().await.map_err(ServeError::Store)
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener failed.
    #[error("the HTTP server failed: {0}")]
    Io(std::io::Error),
    /// The store could not shut down cleanly.
    #[error("the store could not shut down cleanly: {0}")]
    Store(StoreError),
}

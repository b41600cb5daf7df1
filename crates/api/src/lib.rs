//! apitrail's HTTP surface.
//!
//! A request goes: socket → [`selflog::track`] (request id, timing, metrics) → router →
//! handler, whose extractors authenticate ([`auth`]) before the handler parses its parameters
//! into model types ([`params`]), calls the [`Store`], and maps the result to its dialect's
//! own wire types. Errors are [`error::ApiError`]s rendered in the route's dialect envelope.
//! After the response, the middleware hands the call's own request log to the
//! [`recorder::Recorder`].
//!
//! The routes live in [`dialects`] (the seeds' read dialects, each in its own envelope) and
//! [`native`] (apitrail's own routes); what they share is in the modules beside them, and no
//! route module imports another, except [`native::timeline`], whose items are by definition
//! the dialects' own. `routes()` lists every route once, for both the router and
//! the OpenAPI document.

pub mod auth;
pub mod caller;
mod common;
pub mod console;
pub mod context;
pub mod dialects;
pub mod error;
pub mod filters;
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
pub mod tail;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use apitrail_store::{Store, StoreError};
use axum::Router;
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use caller::AdminToken;
pub use state::{ApiConfig, AppState};

use crate::dialects::{actions as records, audit, keys, logs, zoo};
use crate::error::Envelope;
use crate::native::{actions, admin, export, ingest, stats, tail as tails, timeline, viewer};

/// Every route, written once: each handler's `#[utoipa::path]` gives its path and method, so
/// this one list builds both the router and the OpenAPI document's paths.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        // Operations.
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        // The seeds' read dialects; those whose clients read only their own envelope get
        // their 405 in it.
        .routes(routes!(logs::list_logs))
        .routes(routes!(tails::tail_logs))
        .routes(routes!(keys::list_key_requests).in_envelope::<keys::Keys>())
        .routes(routes!(zoo::org_list_api_calls).in_envelope::<zoo::Zoo>())
        .routes(routes!(zoo::get_api_call_for_org).in_envelope::<zoo::Zoo>())
        .routes(routes!(zoo::user_list_api_calls).in_envelope::<zoo::Zoo>())
        .routes(routes!(zoo::get_api_call_for_user).in_envelope::<zoo::Zoo>())
        .routes(routes!(zoo::list_api_calls).in_envelope::<zoo::Zoo>())
        .routes(routes!(zoo::get_api_call).in_envelope::<zoo::Zoo>())
        .routes(routes!(zoo::list_api_calls_for_user).in_envelope::<zoo::Zoo>())
        .routes(routes!(audit::list_audit_log_unversioned))
        .routes(routes!(audit::list_audit_log))
        .routes(routes!(audit::verify_audit_log))
        .routes(routes!(tails::tail_audit_log))
        .routes(routes!(records::list_action_records).in_envelope::<records::Actions>())
        // apitrail's own routes.
        .routes(routes!(ingest::ingest_requests))
        .routes(routes!(ingest::ingest_audit_events))
        .routes(routes!(export::export_logs))
        .routes(routes!(export::export_audit_log))
        .routes(routes!(stats::log_stats))
        .routes(routes!(admin::list_orgs, admin::create_org))
        .routes(routes!(admin::get_org))
        .routes(routes!(admin::admin_list_keys, admin::admin_create_key))
        .routes(routes!(admin::admin_get_key, admin::admin_revoke_key))
        .routes(routes!(admin::list_keys, admin::create_key))
        .routes(routes!(admin::get_key, admin::revoke_key))
        .routes(routes!(
            actions::list_credentials,
            actions::create_credential
        ))
        .routes(routes!(
            actions::list_destinations,
            actions::create_destination
        ))
        .routes(routes!(
            actions::get_destination,
            actions::update_destination,
            actions::delete_destination
        ))
        .routes(routes!(
            actions::list_definitions,
            actions::create_definition
        ))
        .routes(routes!(
            actions::get_definition,
            actions::replace_definition,
            actions::delete_definition
        ))
        .routes(routes!(actions::trigger_action))
        .routes(routes!(actions::signal_action))
        .routes(routes!(timeline::request_timeline))
        .routes(routes!(viewer::create_viewer_token))
        .routes(routes!(viewer::revoke_viewer_token))
        .routes(routes!(viewer::me))
}

/// A dialect route's methods answering an unsupported method in the dialect's envelope
/// (the router's own answer is in the native one).
trait InEnvelope {
    fn in_envelope<D: Envelope>(self) -> Self;
}

impl InEnvelope for UtoipaMethodRouter<AppState> {
    fn in_envelope<D: Envelope>(self) -> Self {
        self.map(|methods| methods.fallback(ops::method_not_allowed_in::<D>))
    }
}

/// The router with every route, the answers to unknown routes and methods, and the tracking
/// middleware.
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .merge(console::router())
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
        // Live tails never end by themselves: they end when shutdown begins, so that the
        // graceful stop does not wait for them.
        let tails = Arc::clone(self.state.tails());
        let shutdown = async move {
            shutdown.await;
            tails.close();
        };
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

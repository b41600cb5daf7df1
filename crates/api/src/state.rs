//! Shared state of the HTTP layer.

use std::sync::Arc;

use apitrail_dispatch::DispatchStats;
use apitrail_model::request_log::rules::DEFAULT_BODY_CAP;
use apitrail_store::Store;

use crate::caller::AdminToken;
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::serve::ServeConfig;
use crate::tail::{TailConfig, TailHub};

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The operator token; without one the operator API is refused.
    pub admin_token: Option<AdminToken>,
    /// Whether authenticated calls are logged into the caller's org.
    pub self_log: bool,
    /// Cap of stored request and response bodies, in bytes.
    pub body_cap_bytes: usize,
    /// Largest accepted ingest body, in bytes.
    pub max_ingest_bytes: usize,
    /// Most records accepted in one ingest call.
    pub max_ingest_records: usize,
    /// Whether webhook destinations created or changed here may point to loopback/private
    /// addresses (recorded with each destination, which dispatchers follow).
    pub allow_private_destinations: bool,
    /// Woken when an action record is created, so the dispatcher starts at once.
    pub dispatch_wake: Arc<tokio::sync::Notify>,
    /// Connection limits and timeouts of the listener.
    pub serve: ServeConfig,
    /// The dispatcher's figures, shown on `/metrics` (none when this process runs no
    /// dispatcher).
    pub dispatch_stats: Option<Arc<DispatchStats>>,
    /// Limits and timings of the live tails.
    pub tail: TailConfig,
    /// Who may frame the web console (CSP `frame-ancestors`; none by default).
    pub ui_frame_ancestors: crate::console::FrameAncestors,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            self_log: true,
            body_cap_bytes: DEFAULT_BODY_CAP,
            max_ingest_bytes: 16 * 1024 * 1024,
            max_ingest_records: 10_000,
            allow_private_destinations: false,
            dispatch_wake: Arc::new(tokio::sync::Notify::new()),
            serve: ServeConfig::default(),
            dispatch_stats: None,
            tail: TailConfig::default(),
            ui_frame_ancestors: crate::console::FrameAncestors::default(),
        }
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    config: ApiConfig,
    metrics: Metrics,
    recorder: Recorder,
    tails: Arc<TailHub>,
}

impl AppState {
    /// Assembles the state; `recorder` must write to the same `store`.
    pub fn new(store: Arc<dyn Store>, config: ApiConfig, recorder: Recorder) -> Self {
        let tails = TailHub::new(Arc::clone(&store), config.tail.clone());
        Self(Arc::new(Inner {
            store,
            tails,
            config,
            metrics: Metrics::default(),
            recorder,
        }))
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.0.store.as_ref()
    }

    /// The store, shared (for work that outlives the handler, such as a streamed export).
    pub fn shared_store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.0.store)
    }

    /// The configuration.
    pub fn config(&self) -> &ApiConfig {
        &self.0.config
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The live tails of this server.
    pub fn tails(&self) -> &Arc<TailHub> {
        &self.0.tails
    }

    /// The self-log and key-usage recorder.
    pub fn recorder(&self) -> &Recorder {
        &self.0.recorder
    }
}

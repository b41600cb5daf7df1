//! `apitrail proxy`.

use std::sync::Arc;
use std::time::Duration;

use apitrail_proxy::{FingerprintKey, Proxy, ProxyConfig, RemoteSink, Routes, Sink, StoreSink};
use apitrail_store_sqlite::SqliteOptions;

use crate::config::{ProxyArgs, StoreArgs};
use crate::serve::init_tracing;

/// Runs the capture proxy until SIGINT or SIGTERM, then stops gracefully: stops accepting,
/// finishes the exchanges in flight, writes the buffered records.
pub async fn run(store_args: StoreArgs, args: ProxyArgs) -> Result<(), String> {
    init_tracing(args.log_format);
    let routes = match (&args.routes, &args.openapi) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--routes {}: {e}", path.display()))?;
            Routes::parse(&text).map_err(|e| format!("--routes {}: {e}", path.display()))?
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--openapi {}: {e}", path.display()))?;
            let (routes, skipped) = Routes::from_openapi(&text)
                .map_err(|e| format!("--openapi {}: {e}", path.display()))?;
            for problem in skipped {
                tracing::warn!(file = %path.display(), %problem, "--openapi: a path is skipped");
            }
            routes
        }
        (None, None) => Routes::default(),
    };
    let fingerprint_key = match args.fingerprint_key.as_deref().filter(|k| !k.is_empty()) {
        Some(key) => FingerprintKey::new(key).map_err(|e| format!("--fingerprint-key: {e}"))?,
        None => FingerprintKey::load_or_create(&store_args.data_directory())?,
    };
    let (sink, store, recording_into): (Arc<dyn Sink>, _, _) = match &args.ingest_url {
        Some(url) => {
            let sink = RemoteSink::new(
                url,
                args.ingest_key.as_deref().unwrap_or_default(),
                Duration::from_secs(args.ingest_retry_secs),
            )
            .map_err(|e| format!("--ingest-url: {e}"))?;
            (Arc::new(sink), None, format!("the ingest API of {url}"))
        }
        None => {
            // The proxy only appends and looks orgs up: small caches keep its memory low.
            let store = store_args
                .open(SqliteOptions {
                    readers: 1,
                    writer_cache_mib: 32,
                    reader_cache_mib: 8,
                    ..SqliteOptions::default()
                })
                .await?;
            (
                Arc::new(StoreSink::new(Arc::clone(&store))),
                Some(store),
                store_args.describe(),
            )
        }
    };
    let mut serve = args.connections.serve_config();
    let (fd_limit, lowered) = apitrail_api::serve::fit_to_fd_limit(&mut serve);
    if lowered {
        tracing::warn!(
            open_file_limit = fd_limit,
            max_connections = serve.max_connections,
            "--max-connections lowered to fit the open-file limit (raise `ulimit -n` for more)"
        );
    }
    let upstream_ca = match &args.upstream_ca {
        Some(path) => {
            apitrail_proxy::read_certificates(path).map_err(|e| format!("--upstream-ca {e}"))?
        }
        None => Vec::new(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            apitrail_proxy::server_tls(cert, key)
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let upstream = args.upstream.clone();
    let config = ProxyConfig {
        routes,
        trusted_proxies: args.trusted_proxy.clone(),
        default_org: args.org.clone(),
        capture_bodies: args.capture_bodies,
        body_cap_bytes: usize::try_from(args.body_cap_bytes).unwrap_or(usize::MAX),
        buffer_records: usize::try_from(args.buffer_records).unwrap_or(usize::MAX),
        serve,
        connect_timeout: Duration::from_secs(args.upstream_connect_timeout_secs),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        upstream_ca,
        tls,
        upstream_http2: args.upstream_http2,
        threads: args
            .threads
            .map_or_else(apitrail_proxy::default_threads, |n| {
                usize::try_from(n).unwrap_or(1)
            }),
        ..ProxyConfig::new(args.upstream, fingerprint_key)
    };
    let routes_len = config.routes.len();
    let mut proxy = Proxy::bind(config, sink, args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let admin = match args.admin_listen {
        Some(listen) => Some(
            proxy
                .bind_admin(listen)
                .await
                .map_err(|e| format!("--admin-listen {listen}: {e}"))?,
        ),
        None => None,
    };
    let addr = proxy
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let stats = proxy.stats();
    // Listening for SIGTERM from before the banner: a signal sent as soon as the address is
    // printed must stop the proxy gracefully, not kill it.
    let shutdown = crate::signals::shutdown_requested(
        "finishing the exchanges in flight, writing the buffered records",
    )
    .map_err(|e| format!("cannot listen for SIGINT/SIGTERM: {e}"))?;
    tracing::info!(%addr, %upstream, sink = %recording_into, routes = routes_len,
        default_org = ?args.org.as_ref().map(|o| o.as_str()),
        capture_bodies = args.capture_bodies, "apitrail proxy listening");
    println!(
        "apitrail proxy is listening on {scheme}://{addr}, forwarding to {upstream}, recording into {recording_into}"
    );
    if let Some(admin) = admin {
        println!("apitrail proxy admin (/healthz, /metrics) on http://{admin}");
    }
    proxy
        .run_until(shutdown)
        .await
        .map_err(|e| format!("proxying on {addr}: {e}"))?;
    if let Some(store) = store {
        store
            .shutdown()
            .await
            .map_err(|e| format!("closing the store ({}): {e}", store_args.describe()))?;
    }
    tracing::info!(
        recorded = stats.recorded.load(std::sync::atomic::Ordering::Relaxed),
        dropped = stats.dropped_total(),
        "apitrail proxy stopped; every buffered record was handed to the sink"
    );
    Ok(())
}

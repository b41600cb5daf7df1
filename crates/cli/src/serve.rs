//! `apitrail serve`.

use std::sync::Arc;
use std::time::Duration;

use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_dispatch::{DispatchConfig, Dispatcher};
use apitrail_model::Timestamp;
use apitrail_store::Store;
use apitrail_store_sqlite::SqliteOptions;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, ServeArgs, StoreArgs};
use crate::demo;

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn run(store_args: StoreArgs, args: ServeArgs) -> Result<(), String> {
    init_tracing(args.log_format);
    // Listening before anything is printed: see `signals`.
    let stop_requested =
        crate::signals::shutdown_requested("draining in-flight requests and the write queue")
            .map_err(|e| format!("cannot listen for SIGINT/SIGTERM: {e}"))?;
    let admin_token = args
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(AdminToken::new)
        .transpose()
        .map_err(|e| format!("--admin-token: {e}"))?;
    let has_admin = admin_token.is_some();
    let store = store_args
        .open(SqliteOptions {
            queue_capacity: usize::try_from(args.write_queue_records).unwrap_or(usize::MAX),
            ..SqliteOptions::default()
        })
        .await?;
    let mut serve = args.serve_config();
    let (fd_limit, lowered) = apitrail_api::serve::fit_to_fd_limit(&mut serve);
    if lowered {
        tracing::warn!(
            open_file_limit = fd_limit,
            max_connections = serve.max_connections,
            "--max-connections lowered to fit the open-file limit (raise `ulimit -n` for more)"
        );
    }
    let mut config = ApiConfig {
        serve: serve.clone(),
        admin_token,
        self_log: !args.no_self_log,
        body_cap_bytes: args.body_cap_bytes,
        allow_private_destinations: args.allow_private_destinations,
        tail: args.tail.tail_config(),
        ui_frame_ancestors: args.ui_frame_ancestors.clone().unwrap_or_default(),
        ..ApiConfig::default()
    };
    let dispatcher = Dispatcher::spawn(
        Arc::clone(&store),
        DispatchConfig {
            retry: args.retry_schedule.clone(),
            allow_private: args.allow_private_destinations,
            lease: Duration::from_secs(args.action_lease_secs),
            ..DispatchConfig::default()
        },
        Arc::clone(&config.dispatch_wake),
    )
    .map_err(|e| format!("cannot start the action dispatcher: {e}"))?;
    config.dispatch_stats = Some(dispatcher.stats());
    let app = App::build(Arc::clone(&store), config, args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = app
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let base = format!("http://{addr}");
    tracing::info!(%addr, store = %store_args.describe(), self_log = !args.no_self_log,
        operator_api = has_admin, retry_schedule = ?args.retry_schedule,
        allow_private_destinations = args.allow_private_destinations,
        max_connections = serve.max_connections, "apitrail listening");

    println!(
        "apitrail is listening on {base} ({})",
        store_args.describe()
    );
    if args.demo {
        let demo = demo::prepare(store.as_ref())
            .await
            .map_err(|e| format!("--demo ({}): {e}", store_args.describe()))?;
        println!(
            "Demo org {:?} holds {} request logs. Try your first authenticated call:\n\n  curl -H 'X-API-Key: {}' '{base}/v1/logs?limit=5'\n  console: {base}/ui (sign in with the same key)\n",
            demo.org_id, demo.logs, demo.secret
        );
    } else {
        println!(
            "To make a first authenticated call, create an org and a key, then list its logs:\n\n  apitrail orgs create --id acme --name Acme\n  apitrail keys create --org acme --name first --scopes read,write\n  curl -H 'X-API-Key: <secret printed above>' '{base}/v1/logs'\n  console: {base}/ui (sign in with the same key)\n\n(or restart with --demo for an org full of sample traffic)\n"
        );
    }
    if let Some(days) = args.retention_days {
        tokio::spawn(retention(Arc::clone(&store), days));
    }
    // Deliveries in flight get a few seconds to record their outcome (signals keep being
    // served meanwhile); the rest are delivered again after their lease.
    let shutdown = async move {
        stop_requested.await;
        dispatcher.stop(Duration::from_secs(10)).await;
    };
    app.run_until(shutdown)
        .await
        .map_err(|e| format!("serving on {addr} ({}): {e}", store_args.describe()))?;
    tracing::info!("apitrail stopped; every acknowledged write is committed");
    Ok(())
}

pub(crate) fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("APITRAIL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Removes request logs older than `days`, every minute. The store deletes in bounded
/// batches (each its own write, so ingest interleaves); PostgreSQL drops whole days.
async fn retention(store: Arc<dyn Store>, days: u32) {
    const BATCH: u32 = 10_000;
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let cutoff = Timestamp::now().add_millis(-i64::from(days) * 86_400_000);
        match store.expire_request_logs(cutoff, BATCH).await {
            Ok(expired) => {
                if expired.records > 0 || expired.partitions > 0 {
                    tracing::info!(
                        deleted = expired.records,
                        partitions_dropped = expired.partitions,
                        "retention: expired request logs removed"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention: expiry failed"),
        }
    }
}

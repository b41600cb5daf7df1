//! Shutdown signals for the long-running commands.

use std::future::Future;

/// A future that resolves at the first SIGINT or SIGTERM and then logs `what` happens next.
/// Both handlers are installed when this is called, not when the future is first polled: a
/// signal sent as soon as the command prints its banner must stop it gracefully, and before a
/// handler exists the signal's default action would kill the process instead.
pub(crate) fn shutdown_requested(
    what: &'static str,
) -> std::io::Result<impl Future<Output = ()> + Send> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested: {what}");
    })
}

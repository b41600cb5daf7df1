//! Per-request context: the request id and the client's address, visible to everything that
//! runs while the request is handled (error rendering and audit entries included) without
//! threading them through every signature.

use std::net::IpAddr;

use apitrail_model::RequestId;

#[derive(Debug, Clone)]
struct Context {
    request_id: RequestId,
    client_ip: Option<IpAddr>,
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Runs `fut` as the handling of request `request_id` from `client_ip`.
pub async fn scope<F: std::future::Future>(
    request_id: RequestId,
    client_ip: Option<IpAddr>,
    fut: F,
) -> F::Output {
    CONTEXT
        .scope(
            Context {
                request_id,
                client_ip,
            },
            fut,
        )
        .await
}

/// The current request's id. Outside a request (which only tests reach), a fresh one, so an
/// error body always has one.
pub fn request_id() -> String {
    CONTEXT
        .try_with(|c| c.request_id.as_str().to_owned())
        .unwrap_or_else(|_| RequestId::generate().as_str().to_owned())
}

/// The address of the current request's peer, when known.
pub fn client_ip() -> Option<IpAddr> {
    CONTEXT.try_with(|c| c.client_ip).ok().flatten()
}

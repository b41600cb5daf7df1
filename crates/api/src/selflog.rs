//! Self-logging: every authenticated call to apitrail becomes a request log of the caller's
//! org, as the platforms in the seeds do for their own APIs.
//!
//! The [`track`] middleware wraps every request: it assigns the request id, times the call,
//! feeds `/metrics`, and, once the response is known, hands a [`RequestLog`] to the
//! [`Recorder`](crate::recorder::Recorder), which writes it in the background.

use std::net::SocketAddr;
use std::time::Instant;

use apitrail_model::{PrincipalType, RequestId, RequestLog, Timestamp, new_record_id};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use crate::caller::CallSlot;
use crate::context;
use crate::error::{ApiError, ErrorCode, ErrorKind, Native, render};
use crate::serve::BodyWatch;
use crate::state::AppState;

/// The header carrying the id of a call's own request log.
pub const API_CALL_ID: &str = "x-api-call-id";
/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Middleware around every request: request id, metrics, self-log.
pub async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let started_at = Timestamp::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(RequestId::parse)
        .unwrap_or_else(RequestId::generate);
    let slot = CallSlot::default();
    req.extensions_mut().insert(slot.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // Scoped so that no borrow of the request (whose body is not `Sync`) lives across the
    // await below.
    let (user_agent, origin) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(1024).collect::<String>())
        };
        (header("user-agent"), header("origin"))
    };

    let head_error = crate::head::check(req.uri(), req.headers());
    let body_watch = req.extensions().get::<BodyWatch>().cloned();
    let mut response = context::scope(request_id.clone(), peer, async move {
        if let Some(err) = head_error {
            return render::<Native>(&err);
        }
        let response = next.run(req).await;
        // A body cut off by a timeout is a 408 whatever the handler made of the failed read
        // (the serving loop closes the connection after it).
        match body_watch.and_then(|w| w.timed_out()) {
            Some(timeout) => render::<Native>(&ApiError::new(
                ErrorKind::RequestTimeout,
                format!("{timeout}; the connection is closed"),
            )),
            None => response,
        }
    })
    .await;

    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics()
        .observe_http(route.as_deref(), &method, status, elapsed);
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let Some(caller) = slot.caller() else {
        return response;
    };
    // Every authenticated call has an id, as on the zoo platform; it names the call's own
    // request log when self-logging is on.
    let id = new_record_id();
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(API_CALL_ID, v);
    }
    if !state.config().self_log {
        return response;
    }
    let key = &caller.key;
    // A viewer token names no principal: its calls carry only its own id, as `api_key_id`.
    let principal = caller.viewer.is_none();
    let log = RequestLog {
        id,
        request_id: Some(request_id.as_str().to_owned()),
        method,
        path,
        query,
        route_pattern: route,
        status_code: status,
        error_code: response
            .extensions()
            .get::<ErrorCode>()
            .map(|c| c.0.to_owned()),
        duration_ms: Some(elapsed.as_millis().min(i32::MAX as u128) as i64),
        started_at: Some(started_at),
        completed_at: Some(started_at.add_millis(elapsed.as_millis() as i64)),
        created_at: started_at,
        client_ip: peer,
        user_agent,
        origin,
        auth_type: Some(caller.auth_type.as_str().to_owned()),
        principal_type: principal.then(|| key.principal_type.as_str().to_owned()),
        principal_id: principal.then(|| key.principal_id.clone()),
        // A user principal is a user even when the key names no user id (and then it is the
        // user the zoo dialect's `/user/api-calls` lists the caller's calls under); a service
        // account is not.
        user_id: key.user_id.clone().or_else(|| {
            (key.principal_type == PrincipalType::User).then(|| key.principal_id.clone())
        }),
        email: key.email.clone(),
        api_key_id: Some(key.id.to_string()),
        service_account_id: key.service_account_id.clone(),
        ..RequestLog::default()
    };
    state.recorder().record(caller.tenant.clone(), log);
    response
}

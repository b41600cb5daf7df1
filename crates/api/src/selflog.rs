//! Self-logging: every authenticated call to apitrail becomes a request log of the caller's
//! org, as the platforms in the seeds do for their own APIs.
//!
//! The [`track`] middleware wraps every request: it assigns the request id, times the call,
//! feeds `/metrics`, and, once the response is known, hands a [`RequestLog`] to the
//! [`Recorder`]. The recorder batches those logs (and key `last_used_at` updates) on a
//! background task, so a call never waits for its own log to be written; a log is stored
//! within about 100 ms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use apitrail_model::{
    ApiKey, PrincipalType, RequestId, RequestLog, Tenant, Timestamp, new_record_id,
};
use apitrail_store::{LogBatch, Store, StoreError};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::auth::OrgCaller;
use crate::context;
use crate::error::{ApiError, ErrorCode, ErrorKind, Native, render};
use crate::serve::BodyWatch;
use crate::state::AppState;

/// Where the auth extractor leaves the caller for the middleware to find after the response.
#[derive(Debug, Clone, Default)]
struct CallSlot(Arc<OnceLock<OrgCaller>>);

/// Notes the authenticated caller of the current request (called by the auth extractors).
pub(crate) fn note_caller(parts: &Parts, caller: &OrgCaller) {
    if let Some(slot) = parts.extensions.get::<CallSlot>() {
        let _ = slot.0.set(caller.clone());
    }
}

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
    let Some(caller) = slot.0.get() else {
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
        principal_type: Some(key.principal_type.as_str().to_owned()),
        principal_id: Some(key.principal_id.clone()),
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

enum Msg {
    Log(Tenant, Box<RequestLog>),
    Touch(Uuid, Timestamp),
    Flush(oneshot::Sender<()>),
}

/// Queues self-logs and key usage for the background writer task.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    last_touch: Mutex<HashMap<Uuid, Instant>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Log(..) => "Log",
            Msg::Touch(..) => "Touch",
            Msg::Flush(..) => "Flush",
        })
    }
}

/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Logs waiting for the background task before new ones are dropped.
const QUEUE: usize = 20_000;
/// How long the task gathers logs into one write.
const GATHER: Duration = Duration::from_millis(50);
/// Most logs per write.
const BATCH: usize = 5_000;

impl Recorder {
    /// Starts the background task writing into `store`.
    pub fn spawn(store: Arc<dyn Store>) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(store, rx, Arc::clone(&dropped)));
        (
            Self {
                tx,
                last_touch: Mutex::new(HashMap::new()),
                dropped,
            },
            task,
        )
    }

    /// Queues a self-log; drops it (and counts the drop) if the queue is full, because a
    /// call must never wait for its own log.
    pub fn record(&self, tenant: Tenant, log: RequestLog) {
        if self.tx.try_send(Msg::Log(tenant, Box::new(log))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "self-log queue full; dropping self-logs");
            }
        }
    }

    /// Notes that `key` was used, writing `last_used_at` at most once a minute per key.
    pub fn touch(&self, key: &ApiKey) {
        let now = Instant::now();
        {
            let mut last = self.last_touch.lock().unwrap_or_else(|e| e.into_inner());
            match last.get(&key.id) {
                Some(t) if now.duration_since(*t) < TOUCH_EVERY => return,
                _ => {
                    last.insert(key.id, now);
                }
            }
        }
        let _ = self.tx.try_send(Msg::Touch(key.id, Timestamp::now()));
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Self-logs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>, dropped: Arc<AtomicU64>) {
    while let Some(first) = rx.recv().await {
        let mut logs: HashMap<Tenant, Vec<RequestLog>> = HashMap::new();
        let mut touches = Vec::new();
        let mut flushes = Vec::new();
        let mut count = 0;
        let mut take = |msg: Msg, count: &mut usize, flushes: &mut Vec<_>| match msg {
            Msg::Log(tenant, log) => {
                logs.entry(tenant).or_default().push(*log);
                *count += 1;
            }
            Msg::Touch(id, at) => touches.push((id, at)),
            Msg::Flush(done) => flushes.push(done),
        };
        take(first, &mut count, &mut flushes);
        let deadline = tokio::time::Instant::now() + GATHER;
        while count < BATCH && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => take(msg, &mut count, &mut flushes),
                Ok(None) | Err(_) => break,
            }
        }
        if !logs.is_empty() {
            let batches: Vec<LogBatch> = logs
                .into_iter()
                .map(|(tenant, logs)| LogBatch::minted(tenant, logs))
                .collect();
            write_logs(store.as_ref(), batches, &dropped).await;
        }
        if !touches.is_empty()
            && let Err(e) = store.touch_api_keys(touches).await
        {
            tracing::warn!(error = %e, "could not record API key usage");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Writes self-logs, riding out a full write queue for a few seconds before giving up.
async fn write_logs(store: &dyn Store, batches: Vec<LogBatch>, dropped: &AtomicU64) {
    let count: usize = batches.iter().map(|b| b.logs.len()).sum();
    for attempt in 0..50 {
        match store.insert_request_logs(batches.clone()).await {
            Ok(_) => return,
            Err(StoreError::Overloaded { .. }) if attempt < 49 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                dropped.fetch_add(count as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, count, "could not write self-logs");
                return;
            }
        }
    }
}

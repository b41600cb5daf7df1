//! The live tails: `GET /v1/logs/tail` and `GET /v1/audit-log/tail` (SPEC §10), as
//! Server-Sent Events.
//!
//! They take the filters of their list routes, parsed by the lists' own parsers, and send the
//! lists' own items, so a tail and a list cannot drift apart (the one place a route module
//! borrows from another). Each event is `id: <record id>`, `event: request_log` or
//! `audit_entry`, `data: <item JSON>`; an idle tail gets a `: heartbeat` comment every
//! heartbeat interval. Without `Last-Event-ID` (header, or the `last_event_id` parameter for
//! clients that cannot set headers; the header wins, as a browser's reconnection sends it) a
//! tail starts at the time of the request; with it, right after that record. The fan-out is
//! [`crate::tail`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use apitrail_model::{OrgId, Scope, Tenant};
use apitrail_store::{TailKind, TailPosition, TailSnapshot, TailStart};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::sync::watch;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Authed;
use crate::dialects::{audit, logs};
use crate::error::{ApiError, ErrorKind, Failure, Native, NativeErrorBody};
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;
use crate::tail::{Live, Record, Render, Slot, TailEvent, TailFilter, TailHub, record_id};

/// Query parameters of `GET /v1/logs/tail` (documentation only; the filters are parsed by
/// the list's parser).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LogsTailQuery {
    /// Only logs created at or after this time (RFC 3339 with offset); not after `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only logs created before this time (RFC 3339 with offset).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Resume right after this log (its event id), for clients that cannot send the
    /// `Last-Event-ID` header; the header wins when both are sent.
    #[param(format = "uuid")]
    last_event_id: Option<String>,
}

/// One event of a tail's stream, as an SSE parser hands it over (documentation only; heartbeat
/// comments are not events).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    /// The record's id, to resume after with `Last-Event-ID` (absent on the final `error`
    /// event).
    #[schema(format = "uuid")]
    id: Option<String>,
    /// `request_log`, `audit_entry`, or `error` (the tail fell behind and was cut off).
    event: String,
    /// The record as its list route prints it (JSON text), or the error.
    data: String,
}

/// Query parameters of `GET /v1/audit-log/tail` (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditTailQuery {
    /// Filter by resource type (e.g. source, destination).
    #[param(max_length = 1024)]
    resource_type: Option<String>,
    /// Filter by resource id.
    #[param(max_length = 1024)]
    resource_id: Option<String>,
    /// Filter by action (e.g. create, update, delete).
    #[param(max_length = 1024)]
    action: Option<String>,
    /// Resume right after this entry (its event id), for clients that cannot send the
    /// `Last-Event-ID` header; the header wins when both are sent.
    #[param(format = "uuid")]
    last_event_id: Option<String>,
}

/// Tail request logs.
///
/// Streams the organization's request logs as they are stored, as Server-Sent Events:
/// `id` is the log's id, `event` is `request_log`, `data` the item of `GET /v1/logs`. Takes
/// the filters of `GET /v1/logs`. Starts with the logs stored after the request; with
/// `Last-Event-ID` (or `last_event_id`), right after that log, with nothing missed or repeated.
/// Idle streams get a `: heartbeat` comment every 15 s. A client that reads too slowly gets
/// a final `event: error` whose data says where to resume, and is disconnected.
#[utoipa::path(
    get,
    path = "/v1/logs/tail",
    tag = "logs",
    params(
        LogsTailQuery,
        crate::filters::LogFilterParams,
        ("Last-Event-ID" = Option<String>, Header, format = "uuid", description = "Resume right after this log id (as sent by an EventSource reconnecting)"),
    ),
    responses(
        (status = 200, description = "A stream of request logs", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "A parameter is malformed, or Last-Event-ID names no log of the org", body = NativeErrorBody),
        (status = 429, description = "As many tails are open as allowed (per org or per server)", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn tail_logs(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure<Native>> {
    caller.require(Scope::Read)?;
    let params = Params::parse(query.as_deref());
    let filter = TailFilter::Logs(caller.narrow_logs(crate::filters::logs(&params)?));
    open(
        &state,
        &caller.tenant,
        filter,
        &headers,
        &params,
        render_log,
    )
    .await
}

/// Tail the audit log.
///
/// Streams the organization's audit entries as they are stored, in chain order, as
/// Server-Sent Events: `id` is the entry's id, `event` is `audit_entry`, `data` the item of
/// `GET /v1/audit-log`. Takes the filters of `GET /v1/audit-log`; resumes and heartbeats as
/// `GET /v1/logs/tail`.
#[utoipa::path(
    get,
    path = "/v1/audit-log/tail",
    tag = "audit",
    params(
        AuditTailQuery,
        ("Last-Event-ID" = Option<String>, Header, format = "uuid", description = "Resume right after this entry id (as sent by an EventSource reconnecting)"),
    ),
    responses(
        (status = 200, description = "A stream of audit entries", content_type = "text/event-stream", body = SseEvent),
        (status = 400, description = "A parameter is malformed, or Last-Event-ID names no entry of the org", body = NativeErrorBody),
        (status = 429, description = "As many tails are open as allowed (per org or per server)", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn tail_audit_log(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure<Native>> {
    caller.require(Scope::Read)?;
    let params = Params::parse(query.as_deref());
    let filter = TailFilter::Audit(caller.narrow_audit(crate::filters::audit(&params)?));
    open(
        &state,
        &caller.tenant,
        filter,
        &headers,
        &params,
        render_audit,
    )
    .await
}

fn render_log(_: &OrgId, record: &Record) -> Option<String> {
    match record {
        Record::Log(log) => to_json(&logs::LogItem::from(log.as_ref().clone())),
        Record::Audit(_) => None,
    }
}

fn render_audit(org: &OrgId, record: &Record) -> Option<String> {
    match record {
        Record::Audit(e) => to_json(&audit::AuditItem::new(org.as_str(), e.clone())),
        Record::Log(_) => None,
    }
}

fn to_json(item: &impl serde::Serialize) -> Option<String> {
    serde_json::to_string(item)
        .inspect_err(|e| tracing::error!(error = %e, "live tail: an item did not serialize"))
        .ok()
}

/// Where the tail starts, opens it, and answers with its stream.
async fn open(
    state: &AppState,
    tenant: &Tenant,
    filter: TailFilter,
    headers: &HeaderMap,
    params: &Params,
    render: Render,
) -> Result<Response, Failure<Native>> {
    let kind = match filter {
        TailFilter::Logs(_) => TailKind::RequestLogs,
        TailFilter::Audit(_) => TailKind::AuditEntries,
    };
    let store = state.store();
    let start = match last_event_id(headers, params)? {
        Some((param, id)) => store
            .tail_position(tenant, kind, id)
            .await?
            .ok_or_else(|| {
                ApiError::param(
                    param,
                    "names no record of this org that a tail can resume after; reconnect without it to start from now",
                )
            })
            .map(|after| TailStart {
                after,
                stored_before: None,
            })?,
        None => store.tail_start(tenant, kind).await?,
    };
    let hub = state.tails();
    let slot = hub
        .reserve(tenant.org_id())
        .map_err(|e| ApiError::new(ErrorKind::TooManyTails, e.to_string()))?;
    let event_name = match kind {
        TailKind::RequestLogs => "request_log",
        TailKind::AuditEntries => "audit_entry",
    };
    let heartbeat = hub.config().heartbeat;
    let tail = Tail {
        closed: hub.closed(),
        hub: Arc::clone(hub),
        tenant: tenant.clone(),
        kind,
        filter,
        render,
        name: event_name,
        mode: Mode::CatchUp {
            cursor: start.after,
        },
        skip: start.stored_before.map(Arc::new),
        pending: VecDeque::new(),
        last_id: None,
        position: start.after,
        lagging_since: None,
        done: false,
        _slot: slot,
    };
    Ok(Sse::new(events(tail))
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response())
}

/// The record id to resume after: the `Last-Event-ID` header, else `last_event_id`.
fn last_event_id(
    headers: &HeaderMap,
    params: &Params,
) -> Result<Option<(&'static str, Uuid)>, ApiError> {
    const HEADER: &str = "Last-Event-ID";
    // An empty header (no event received yet) resumes nothing: the parameter may.
    let header = headers
        .get(HEADER)
        .filter(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
    let (name, raw) = match header {
        Some(v) => (
            HEADER,
            v.to_str()
                .map_err(|_| ApiError::param(HEADER, "must be a record id (a UUID)"))?,
        ),
        None => match params.str("last_event_id")? {
            Some(v) => ("last_event_id", v),
            None => return Ok(None),
        },
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    Uuid::try_parse(raw)
        .map(|id| Some((name, id)))
        .map_err(|_| ApiError::param(name, "must be a record id (a UUID)"))
}

/// Records read per catch-up read.
const CATCH_UP_PAGE: u32 = 256;

/// One tail's stream.
struct Tail {
    hub: Arc<TailHub>,
    tenant: Tenant,
    kind: TailKind,
    filter: TailFilter,
    render: Render,
    name: &'static str,
    mode: Mode,
    /// Records after the start position that were stored before the tail started.
    skip: Option<Arc<TailSnapshot>>,
    /// Events read while catching up, sent before anything else.
    pending: VecDeque<TailEvent>,
    closed: watch::Receiver<bool>,
    last_id: Option<String>,
    /// Where the stream is: the last event sent, or where it attached.
    position: TailPosition,
    /// Since when a tail detached for a full queue has been catching up.
    lagging_since: Option<Instant>,
    done: bool,
    _slot: Slot,
}

enum Mode {
    /// Reading the store from `cursor` on its own, one page at a time, as the client takes
    /// the events: a tail that resumes from far back buffers nothing and floods no queue.
    CatchUp { cursor: TailPosition },
    /// Attached to the org's poller.
    Live(Live),
}

impl Tail {
    /// The next SSE event, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.done || *self.closed.borrow() {
                return None;
            }
            if let Some(ev) = self.pending.pop_front() {
                return Some(self.record_event(&ev));
            }
            match &mut self.mode {
                Mode::CatchUp { cursor } => {
                    if self
                        .lagging_since
                        .is_some_and(|t| t.elapsed() > self.hub.config().max_lag)
                    {
                        self.done = true;
                        return Some(self.fell_behind());
                    }
                    let after = *cursor;
                    let page = match self
                        .hub
                        .read(&self.tenant, self.kind, after, CATCH_UP_PAGE)
                        .await
                    {
                        Ok(page) => page,
                        Err(e) => {
                            tracing::warn!(error = %e, "live tail: catching up failed; the stream ends (the client resumes with Last-Event-ID)");
                            self.done = true;
                            return None;
                        }
                    };
                    let full = page.len() >= CATCH_UP_PAGE as usize;
                    let mut last = after;
                    for (pos, record) in &page {
                        last = *pos;
                        if !self.filter.matches(record)
                            || self.skip.as_ref().is_some_and(|s| s.saw(*pos))
                        {
                            continue;
                        }
                        if let Some(json) = (self.render)(self.tenant.org_id(), record) {
                            self.pending.push_back(TailEvent {
                                pos: *pos,
                                id: record_id(record),
                                json,
                            });
                        }
                    }
                    self.mode = if full {
                        Mode::CatchUp { cursor: last }
                    } else {
                        self.lagging_since = None;
                        self.position = last;
                        // Caught up with what is stored: the poller goes on after `last`.
                        Mode::Live(self.hub.attach(
                            &self.tenant,
                            self.filter.clone(),
                            last,
                            self.skip.clone(),
                            self.render,
                        ))
                    };
                }
                Mode::Live(live) => {
                    let next = tokio::select! {
                        biased;
                        ev = live.events.recv() => ev,
                        _ = self.closed.changed() => continue,
                    };
                    match next {
                        Some(ev) => return Some(self.record_event(&ev)),
                        None if live.behind.load(Ordering::Acquire) => {
                            // Detached for a full queue: catch up from the last event sent,
                            // at the client's pace, unless that is not allowed at all.
                            if self.hub.config().max_lag.is_zero() {
                                self.done = true;
                                return Some(self.fell_behind());
                            }
                            self.lagging_since = Some(Instant::now());
                            self.mode = Mode::CatchUp {
                                cursor: self.position,
                            };
                        }
                        None => return None,
                    }
                }
            }
        }
    }

    fn record_event(&mut self, ev: &TailEvent) -> Event {
        self.last_id = Some(ev.id.clone());
        self.position = self.position.max(ev.pos);
        Event::default()
            .id(ev.id.as_str())
            .event(self.name)
            .data(ev.json.as_str())
    }

    /// The last event of a tail whose client read too slowly.
    fn fell_behind(&self) -> Event {
        let resume = self.last_id.clone();
        let message = match &resume {
            Some(id) => format!(
                "this client read too slowly and was disconnected; reconnect with Last-Event-ID: {id} to resume with nothing missed"
            ),
            None => "this client read too slowly and was disconnected; reconnect with the Last-Event-ID of the last event received to resume with nothing missed".to_owned(),
        };
        let data = serde_json::json!({
            "error": {"code": "tail_fell_behind", "message": message},
            "last_event_id": resume,
        });
        Event::default().event("error").data(data.to_string())
    }
}

/// The SSE events of a tail: its records, then, if it fell behind, an error event saying
/// where to resume.
fn events(tail: Tail) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next().await?;
        Some((Ok(event), tail))
    })
}

//! Export without caps (SPEC §10): `GET /v1/logs/export` and `GET /v1/audit-log/export`.
//!
//! The handler checks everything it can before the first byte (scope, parameters, `after`,
//! the first page), so those errors are ordinary responses in the native envelope. Then a task
//! walks the store in keyset pages of [`PAGE`] records, oldest first (`created_at`, then id),
//! through the same store calls as the list routes, and hands each page, already written out,
//! to the response body through a channel of [`QUEUED_PAGES`]: memory stays bounded by a few
//! pages whatever the export's size, and a slow client slows the walk instead of filling
//! memory. A client that goes away ends the walk.
//!
//! A store error after the first page cannot change the status any more: NDJSON then ends
//! with a last line `{"error": {...}, "request_id": ...}` (the native envelope; no record line
//! has an `error` field); CSV, which has no room for one, is cut off (the chunked body ends
//! without its last chunk), so no client mistakes a partial export for a whole one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use apitrail_model::chain::hex;
use apitrail_model::{
    AuditAfter, AuditFilter, ChainLink, LogFilter, PageRequest, PageStart, RequestId, RequestLog,
    Scope, Sort, SortDir, SortKey, Tenant,
};
use apitrail_store::{Page, Store, StoreError};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Bytes, Frame};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Authed;
use crate::context;
use crate::error::{ApiError, Envelope, Failure, Native, NativeErrorBody};
use crate::filters;
use crate::openapi::{OrgKeyErrors, scope};
use crate::params::Params;
use crate::state::AppState;

/// Records read per store call.
pub const PAGE: u32 = 1_000;
/// Written pages waiting for the client, beyond the one being written.
const QUEUED_PAGES: usize = 2;

/// The oldest-first order of every export.
const OLDEST_FIRST: Sort = Sort {
    key: SortKey::CreatedAt,
    dir: SortDir::Asc,
};

/// An export's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// RFC 4180 with a header row.
    Csv,
}

impl Format {
    /// Parses a wire name (`ndjson`, `csv`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ndjson" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Ndjson => "ndjson",
            Self::Csv => "csv",
        }
    }
}

fn format_param(p: &Params) -> Result<Format, ApiError> {
    Ok(p.choice("format", Format::parse, "ndjson, csv")?
        .unwrap_or(Format::Ndjson))
}

/// The `after` parameter as a UUID.
fn after_param(p: &Params) -> Result<Option<Uuid>, ApiError> {
    p.str("after")?
        .map(|raw| {
            Uuid::try_parse(raw).map_err(|_| {
                ApiError::param("after", "must be the id (a UUID) of an exported record")
            })
        })
        .transpose()
}

fn unknown_after() -> ApiError {
    ApiError::param(
        "after",
        "is not the id of a record of this organization of the exported kind",
    )
}

/// Query parameters of `GET /v1/logs/export` (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LogsExportQuery {
    /// `ndjson` (default) or `csv`.
    #[param(schema_with = crate::openapi::export_format)]
    format: Option<String>,
    /// Resume after the record with this id (the last one of a partial export); an id that is
    /// not one of the org's request logs is a 400.
    #[param(format = "uuid")]
    after: Option<String>,
    /// Start of the time window, inclusive (RFC 3339 with offset); not after `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End of the time window, exclusive (RFC 3339 with offset).
    #[param(format = DateTime)]
    to: Option<String>,
}

/// Query parameters of `GET /v1/audit-log/export` (documentation only).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct AuditExportQuery {
    /// `ndjson` (default) or `csv`.
    #[param(schema_with = crate::openapi::export_format)]
    format: Option<String>,
    /// Resume after the entry with this id (the last one of a partial export); an id that is
    /// not one of the org's audit entries is a 400.
    #[param(format = "uuid")]
    after: Option<String>,
    /// Filter by resource type.
    #[param(max_length = 1024)]
    resource_type: Option<String>,
    /// Filter by resource ID.
    #[param(max_length = 1024)]
    resource_id: Option<String>,
    /// Filter by action.
    #[param(max_length = 1024)]
    action: Option<String>,
}

/// Export request logs.
///
/// Every request log of the organization matching the filters of `GET /v1/logs`, oldest
/// first (created_at, then id), streamed without a row cap. NDJSON lines carry every ingest
/// field (absent values null) and re-ingest unchanged through `POST /v1/ingest/requests`
/// with the operator token; CSV (RFC 4180) has a header row of the same names, JSON values
/// as JSON text, and cells starting with `=`, `+`, `-`, `@`, tab or CR prefixed with `'`.
/// `after` resumes after a record. A failure after the first record ends NDJSON with a line
/// `{"error": ...}` (the native envelope) and cuts CSV off.
#[utoipa::path(
    get,
    path = "/v1/logs/export",
    tag = "export",
    params(LogsExportQuery, crate::filters::LogFilterParams),
    responses(
        (status = 200, description = "The export, streamed", content(
            (String = "application/x-ndjson"),
            (String = "text/csv; charset=utf-8"),
        )),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn export_logs(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure<Native>> {
    caller.require(Scope::Read)?;
    let p = Params::parse(query.as_deref());
    let filter = caller.narrow_logs(filters::logs(&p)?);
    let format = format_param(&p)?;
    let export = Export::requests(
        state.shared_store(),
        caller.tenant,
        filter,
        after_param(&p)?,
        format,
    )
    .await
    .map_err(ApiError::from)?;
    Ok(stream(export, "requests").await?)
}

/// Export audit log entries.
///
/// Every audit entry of the organization matching the audit filters, oldest first
/// (created_at, then id), with its chain fields (`chain_position`, `prev_hash`, `hash`),
/// streamed without a row cap, as NDJSON or CSV (see the request-log export). `after`
/// resumes after an entry.
#[utoipa::path(
    get,
    path = "/v1/audit-log/export",
    tag = "export",
    params(AuditExportQuery),
    responses(
        (status = 200, description = "The export, streamed", content(
            (String = "application/x-ndjson"),
            (String = "text/csv; charset=utf-8"),
        )),
        (status = 400, description = "A parameter is malformed or out of range", body = NativeErrorBody),
        OrgKeyErrors<NativeErrorBody, { scope::READ }>,
    ),
    security(("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn export_audit_log(
    State(state): State<AppState>,
    Authed(caller, _): Authed<Native>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure<Native>> {
    caller.require(Scope::Read)?;
    let p = Params::parse(query.as_deref());
    let filter = caller.narrow_audit(filters::audit(&p)?);
    let format = format_param(&p)?;
    let export = Export::audit(
        state.shared_store(),
        caller.tenant,
        filter,
        after_param(&p)?,
        format,
    )
    .await
    .map_err(ApiError::from)?;
    Ok(stream(export, "audit-log").await?)
}

/// A keyset walk over one kind of record, written out page by page.
trait Walk: Send + 'static {
    /// The column names, in the order [`Walk::write`] writes them.
    const COLUMNS: &'static [&'static str];
    /// The stored record.
    type Item: Send;
    /// The exported org's id.
    fn org(&self) -> &str;
    /// The next page, which moves the walk past it.
    fn next(&mut self) -> impl Future<Output = Result<Page<Self::Item>, StoreError>> + Send;
    /// Appends one record in `format`.
    fn write(&self, format: Format, out: &mut Vec<u8>, item: &Self::Item);
}

#[derive(Debug)]
struct LogWalk {
    store: Arc<dyn Store>,
    tenant: Tenant,
    filter: LogFilter,
    start: PageStart,
}

impl Walk for LogWalk {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "org_id",
        "request_id",
        "method",
        "path",
        "query",
        "route_pattern",
        "status_code",
        "error_code",
        "duration_ms",
        "started_at",
        "completed_at",
        "created_at",
        "client_ip",
        "user_agent",
        "origin",
        "auth_type",
        "principal_type",
        "principal_id",
        "user_id",
        "email",
        "api_key_id",
        "service_account_id",
        "request_body",
        "request_body_truncated",
        "response_body",
        "response_body_truncated",
        "price",
        "minutes",
        "seconds",
        "stripe_invoice_item_id",
        "metadata",
    ];
    type Item = RequestLog;

    fn org(&self) -> &str {
        self.tenant.org_id().as_str()
    }

    async fn next(&mut self) -> Result<Page<RequestLog>, StoreError> {
        let page = self
            .store
            .list_request_logs(
                &self.tenant,
                &self.filter,
                OLDEST_FIRST,
                PageRequest {
                    limit: PAGE,
                    start: self.start,
                },
            )
            .await?;
        if let Some(last) = page.items.last() {
            self.start = PageStart::After(OLDEST_FIRST.position_of(last));
        }
        Ok(page)
    }

    fn write(&self, format: Format, out: &mut Vec<u8>, log: &RequestLog) {
        let line = LogLine::new(self.tenant.org_id().as_str(), log);
        match format {
            Format::Ndjson => json_line(out, &line),
            Format::Csv => line.csv(out),
        }
    }
}

#[derive(Debug)]
struct AuditWalk {
    store: Arc<dyn Store>,
    tenant: Tenant,
    filter: AuditFilter,
    after: Option<AuditAfter>,
}

impl Walk for AuditWalk {
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "org_id",
        "user_id",
        "action",
        "resource_type",
        "resource_id",
        "details",
        "ip_address",
        "request_id",
        "created_at",
        "chain_position",
        "prev_hash",
        "hash",
    ];
    type Item = ChainLink;

    fn org(&self) -> &str {
        self.tenant.org_id().as_str()
    }

    async fn next(&mut self) -> Result<Page<ChainLink>, StoreError> {
        let page = self
            .store
            .list_audit_links(&self.tenant, &self.filter, self.after, PAGE)
            .await?;
        if let Some(last) = page.items.last() {
            self.after = Some(AuditAfter {
                created_at: last.entry.created_at,
                id: last.entry.id,
            });
        }
        Ok(page)
    }

    fn write(&self, format: Format, out: &mut Vec<u8>, link: &ChainLink) {
        let line = AuditLine::new(self.tenant.org_id().as_str(), link);
        match format {
            Format::Ndjson => json_line(out, &line),
            Format::Csv => line.csv(out),
        }
    }
}

/// What an export walks.
#[derive(Debug)]
enum Walker {
    Logs(LogWalk),
    Audit(AuditWalk),
}

/// An export in progress: the org's records walked in keyset pages of [`PAGE`], oldest first,
/// each page written out in the export's format. The HTTP routes stream it; the CLI writes it
/// to a file.
#[derive(Debug)]
pub struct Export {
    walker: Walker,
    format: Format,
    header: bool,
    finished: bool,
}

/// One page of an export, written out.
#[derive(Debug)]
pub struct Chunk {
    /// The page's lines or rows (the CSV header row first in the first chunk).
    pub bytes: Vec<u8>,
    /// How many records it holds.
    pub rows: usize,
}

/// Why an export cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `after` is not the id of one of the org's records of the exported kind.
    #[error("no record of the org has the id given as after")]
    UnknownAfter,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::UnknownAfter => unknown_after(),
            StartError::Store(e) => e.into(),
        }
    }
}

impl Export {
    /// An export of the org's request logs matching `filter`, after the log with id `after`.
    pub async fn requests(
        store: Arc<dyn Store>,
        tenant: Tenant,
        filter: LogFilter,
        after: Option<Uuid>,
        format: Format,
    ) -> Result<Self, StartError> {
        let start = match after {
            None => PageStart::First,
            Some(id) => {
                let log = store
                    .get_request_log(&tenant, id)
                    .await?
                    .ok_or(StartError::UnknownAfter)?;
                PageStart::After(OLDEST_FIRST.position_of(&log))
            }
        };
        Ok(Self::new(
            Walker::Logs(LogWalk {
                store,
                tenant,
                filter,
                start,
            }),
            format,
        ))
    }

    /// An export of the org's audit entries matching `filter`, after the entry with id
    /// `after`.
    pub async fn audit(
        store: Arc<dyn Store>,
        tenant: Tenant,
        filter: AuditFilter,
        after: Option<Uuid>,
        format: Format,
    ) -> Result<Self, StartError> {
        let after = match after {
            None => None,
            Some(id) => {
                let link = store
                    .get_audit_link(&tenant, id)
                    .await?
                    .ok_or(StartError::UnknownAfter)?;
                Some(AuditAfter {
                    created_at: link.entry.created_at,
                    id,
                })
            }
        };
        Ok(Self::new(
            Walker::Audit(AuditWalk {
                store,
                tenant,
                filter,
                after,
            }),
            format,
        ))
    }

    fn new(walker: Walker, format: Format) -> Self {
        Self {
            walker,
            header: format == Format::Csv,
            format,
            finished: false,
        }
    }

    /// Leaves out the CSV header row (to append to a file that has one).
    pub fn without_header(mut self) -> Self {
        self.header = false;
        self
    }

    fn org(&self) -> &str {
        match &self.walker {
            Walker::Logs(w) => w.org(),
            Walker::Audit(w) => w.org(),
        }
    }

    /// The next page written out; `None` once the walk is over.
    pub async fn next_chunk(&mut self) -> Result<Option<Chunk>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        let (rows, more) = match &mut self.walker {
            Walker::Logs(w) => page(w, self.format, &mut self.header, &mut bytes).await?,
            Walker::Audit(w) => page(w, self.format, &mut self.header, &mut bytes).await?,
        };
        self.finished = !more;
        Ok((!bytes.is_empty()).then_some(Chunk { bytes, rows }))
    }
}

/// Writes the next page of `walk` (after the header row if still due); the number of records
/// and whether more follow.
async fn page<W: Walk>(
    walk: &mut W,
    format: Format,
    header: &mut bool,
    out: &mut Vec<u8>,
) -> Result<(usize, bool), StoreError> {
    let page = walk.next().await?;
    if std::mem::take(header) {
        csv_row(out, W::COLUMNS.iter().map(|c| Some(*c)));
    }
    for item in &page.items {
        walk.write(format, out, item);
    }
    Ok((page.items.len(), page.has_more))
}

/// Reads the first page (so a failure there is still an error response), then streams the
/// rest from a task.
async fn stream(mut export: Export, name: &str) -> Result<Response, ApiError> {
    let first = export.next_chunk().await?;
    let format = export.format;
    let filename = format!("{name}-{}.{}", sanitize(export.org()), format.extension());
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(QUEUED_PAGES);
    let request_id = context::request_id();
    let peer = context::client_ip();
    let task = async move {
        let mut next = first;
        while let Some(chunk) = next {
            if tx.send(Ok(Bytes::from(chunk.bytes))).await.is_err() {
                return; // The client went away.
            }
            next = match export.next_chunk().await {
                Ok(n) => n,
                Err(e) => {
                    let err = ApiError::from(e);
                    // NDJSON ends with the error as its last line (an abort here could lose
                    // that line in hyper's buffer); CSV has no room for one, so it is cut off.
                    let last = match format {
                        Format::Ndjson => {
                            let mut line = Vec::new();
                            json_line(&mut line, &Native::body(&err, &context::request_id()));
                            Ok(Bytes::from(line))
                        }
                        Format::Csv => Err(io::Error::other(
                            "the export failed before its end; resume with after",
                        )),
                    };
                    let _ = tx.send(last).await;
                    return;
                }
            };
        }
    };
    let rid = RequestId::parse(&request_id).unwrap_or_else(RequestId::generate);
    tokio::spawn(context::scope(rid, peer, task));
    let mut response = (StatusCode::OK, Body::new(ChannelBody { rx })).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A file-name-safe rendering of an org id (org ids are `[A-Za-z0-9_.:-]`; `:` is not safe
/// on every file system).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The response body: pages written by the walk's task, in order.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|chunk| chunk.map(Frame::data)))
    }
}

fn json_line(out: &mut Vec<u8>, value: &impl Serialize) {
    // Serializing these types to a Vec cannot fail (string keys, no maps of other keys).
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}

/// A request log as an export line: every ingest field, in ingest's names.
#[derive(Serialize)]
struct LogLine<'a> {
    id: String,
    org_id: &'a str,
    request_id: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    route_pattern: Option<&'a str>,
    status_code: u16,
    error_code: Option<&'a str>,
    duration_ms: Option<i64>,
    started_at: Option<String>,
    completed_at: Option<String>,
    created_at: String,
    client_ip: Option<String>,
    user_agent: Option<&'a str>,
    origin: Option<&'a str>,
    auth_type: Option<&'a str>,
    principal_type: Option<&'a str>,
    principal_id: Option<&'a str>,
    user_id: Option<&'a str>,
    email: Option<&'a str>,
    api_key_id: Option<&'a str>,
    service_account_id: Option<&'a str>,
    request_body: Option<&'a str>,
    request_body_truncated: bool,
    response_body: Option<&'a str>,
    response_body_truncated: bool,
    price: Option<&'a str>,
    minutes: Option<i64>,
    seconds: Option<i64>,
    stripe_invoice_item_id: Option<&'a str>,
    /// The stored JSON object text, written as the object itself.
    metadata: Option<&'a RawValue>,
}

impl<'a> LogLine<'a> {
    fn new(org_id: &'a str, log: &'a RequestLog) -> Self {
        Self {
            id: log.id.to_string(),
            org_id,
            request_id: log.request_id.as_deref(),
            method: &log.method,
            path: &log.path,
            query: log.query.as_deref(),
            route_pattern: log.route_pattern.as_deref(),
            status_code: log.status_code,
            error_code: log.error_code.as_deref(),
            duration_ms: log.duration_ms,
            started_at: log.started_at.map(|t| t.to_rfc3339()),
            completed_at: log.completed_at.map(|t| t.to_rfc3339()),
            created_at: log.created_at.to_rfc3339(),
            client_ip: log.client_ip.map(|ip| ip.to_string()),
            user_agent: log.user_agent.as_deref(),
            origin: log.origin.as_deref(),
            auth_type: log.auth_type.as_deref(),
            principal_type: log.principal_type.as_deref(),
            principal_id: log.principal_id.as_deref(),
            user_id: log.user_id.as_deref(),
            email: log.email.as_deref(),
            api_key_id: log.api_key_id.as_deref(),
            service_account_id: log.service_account_id.as_deref(),
            request_body: log.request_body.as_deref(),
            request_body_truncated: log.request_body_truncated,
            response_body: log.response_body.as_deref(),
            response_body_truncated: log.response_body_truncated,
            price: log.price.as_deref(),
            minutes: log.minutes,
            seconds: log.seconds,
            stripe_invoice_item_id: log.stripe_invoice_item_id.as_deref(),
            // Stored by ingest as an object's JSON text; anything else is left out rather than
            // written as a line ingest would refuse.
            metadata: log
                .metadata
                .as_deref()
                .and_then(|m| serde_json::from_str::<&RawValue>(m).ok())
                .filter(|m| m.get().starts_with('{')),
        }
    }

    fn csv(&self, out: &mut Vec<u8>) {
        let int = |v: Option<i64>| v.map(|n| n.to_string());
        let status = self.status_code.to_string();
        let duration = int(self.duration_ms);
        let minutes = int(self.minutes);
        let seconds = int(self.seconds);
        let flag = |b: bool| if b { "true" } else { "false" };
        csv_row(
            out,
            [
                Some(self.id.as_str()),
                Some(self.org_id),
                self.request_id,
                Some(self.method),
                Some(self.path),
                self.query,
                self.route_pattern,
                Some(status.as_str()),
                self.error_code,
                duration.as_deref(),
                self.started_at.as_deref(),
                self.completed_at.as_deref(),
                Some(self.created_at.as_str()),
                self.client_ip.as_deref(),
                self.user_agent,
                self.origin,
                self.auth_type,
                self.principal_type,
                self.principal_id,
                self.user_id,
                self.email,
                self.api_key_id,
                self.service_account_id,
                self.request_body,
                Some(flag(self.request_body_truncated)),
                self.response_body,
                Some(flag(self.response_body_truncated)),
                self.price,
                minutes.as_deref(),
                seconds.as_deref(),
                self.stripe_invoice_item_id,
                self.metadata.map(RawValue::get),
            ],
        );
    }
}

/// An audit entry as an export line: the entry and its chain fields.
#[derive(Serialize)]
struct AuditLine<'a> {
    id: String,
    org_id: &'a str,
    user_id: Option<&'a str>,
    action: &'a str,
    resource_type: &'a str,
    resource_id: Option<&'a str>,
    details: Option<&'a str>,
    ip_address: Option<&'a str>,
    request_id: Option<&'a str>,
    created_at: String,
    chain_position: u64,
    prev_hash: String,
    hash: String,
}

impl<'a> AuditLine<'a> {
    fn new(org_id: &'a str, link: &'a ChainLink) -> Self {
        let e = &link.entry;
        Self {
            id: e.id.to_string(),
            org_id,
            user_id: e.user_id.as_deref(),
            action: &e.action,
            resource_type: &e.resource_type,
            resource_id: e.resource_id.as_deref(),
            details: e.details.as_deref(),
            ip_address: e.ip_address.as_deref(),
            request_id: e.request_id.as_deref(),
            created_at: e.created_at.to_rfc3339(),
            chain_position: link.position,
            prev_hash: hex(&link.prev_hash),
            hash: hex(&link.hash),
        }
    }

    fn csv(&self, out: &mut Vec<u8>) {
        let position = self.chain_position.to_string();
        csv_row(
            out,
            [
                Some(self.id.as_str()),
                Some(self.org_id),
                self.user_id,
                Some(self.action),
                Some(self.resource_type),
                self.resource_id,
                self.details,
                self.ip_address,
                self.request_id,
                Some(self.created_at.as_str()),
                Some(position.as_str()),
                Some(self.prev_hash.as_str()),
                Some(self.hash.as_str()),
            ],
        );
    }
}

/// Appends one RFC 4180 row (CRLF-terminated); `None` is an empty cell.
fn csv_row<'a>(out: &mut Vec<u8>, cells: impl IntoIterator<Item = Option<&'a str>>) {
    for (i, cell) in cells.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(v) = cell {
            csv_cell(out, v);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one cell: a value a spreadsheet would run as a formula (first character `=`, `+`,
/// `-`, `@`, tab or CR) gets a leading `'`, and a value with a comma, quote, CR or LF is
/// quoted with its quotes doubled.
pub fn csv_cell(out: &mut Vec<u8>, v: &str) {
    let formula = matches!(
        v.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    );
    let quoted = v.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if quoted {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    if quoted {
        for b in v.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(v: &str) -> String {
        let mut out = Vec::new();
        csv_cell(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cells_are_quoted_and_formulas_neutralised() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-1"), "'-1");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(
            cell("=HYPERLINK(\"x\",\"y\")"),
            "\"'=HYPERLINK(\"\"x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("a=b"), "a=b");
    }
}

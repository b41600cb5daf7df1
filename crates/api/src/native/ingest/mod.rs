//! Ingest: `POST /v1/ingest/requests` and `POST /v1/ingest/audit-events`.
//!
//! A batch is a JSON array or NDJSON. Every record is parsed and validated on its own; if any
//! is invalid, the whole batch is refused with every problem listed and nothing is stored.
//! A valid batch is handed to the store as one atomic write, and `202` is sent only after it
//! committed. Both record kinds share this pipeline ([`Ingestible`]); each kind's module says
//! what its records look like.

mod audit;
mod requests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use apitrail_model::{AuditEntry, OrgId, Tenant, Timestamp};
use apitrail_store::{AuditBatch, InsertOutcome, LogBatch, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use utoipa::openapi::{RefOr, Response};
use utoipa::{IntoResponses, ToSchema};
use uuid::Uuid;

pub use audit::IngestAuditEvent;
pub use requests::IngestLog;
use requests::IngestedLog;

use crate::auth::IngestCaller;
use crate::caller::Caller;
use crate::common::without_position;
use crate::error::{ApiError, ErrorKind, Failure, Native, NativeErrorBody, RecordError};
use crate::openapi::errors;
use crate::params::{NUL_MESSAGE, nul_fields};
use crate::state::AppState;
use crate::wire::{BodyError, declared_length, read_limited};

/// The answer to a stored batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    /// Records newly stored.
    accepted: u64,
    /// Records skipped because their id was already stored for their org.
    duplicates: u64,
}

/// The refusals of both ingest routes.
#[derive(Debug)]
pub struct IngestErrors;

impl IntoResponses for IngestErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        errors::<NativeErrorBody>(&[
            (
                "400",
                "Invalid records (nothing stored; each problem listed in `details`) or a malformed body",
            ),
            ("401", "Missing or invalid credentials"),
            (
                "403",
                "The key lacks the write scope, or a record names another org",
            ),
            (
                "408",
                "The body stalled or missed the body deadline; the connection is closed",
            ),
            ("413", "More than 10,000 records or 16 MiB (decompressed)"),
            (
                "415",
                "Neither JSON nor NDJSON, or a Content-Encoding other than gzip, zstd or identity",
            ),
            (
                "503",
                "The write queue is full or the store is unavailable; retry after Retry-After seconds",
            ),
        ])
    }
}

/// What validation needs besides the record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bodies (and audit details) longer than this are capped or refused.
    pub body_cap: usize,
    /// The default `created_at`.
    pub now: Timestamp,
}

/// A kind of record ingest accepts.
pub(crate) trait Ingestible: Sized {
    /// The record as posted; unknown fields must be refused (`deny_unknown_fields`).
    type Wire: DeserializeOwned;
    /// The record's id (unique per org within a batch).
    fn id(&self) -> Uuid;
    /// Checks every field of a record that parsed, collecting all problems.
    fn validate(wire: Self::Wire, limits: &Limits) -> Parsed<Self>;
}

/// Ingest request logs.
///
/// Accepts a JSON array (`Content-Type: application/json`) or NDJSON
/// (`Content-Type: application/x-ndjson`) of at most 10,000 records and 16 MiB, optionally
/// compressed (`Content-Encoding: gzip` or `zstd`; 16 MiB decompressed). The batch is
/// stored atomically and acknowledged only once durably committed; if any record is invalid,
/// nothing is stored and every problem is listed as `{index, field, message}`.
#[utoipa::path(
    post,
    path = "/v1/ingest/requests",
    tag = "ingest",
    request_body(content = Vec<IngestLog>, description = "A JSON array of at most 10,000 records, or NDJSON (one record per line) with Content-Type application/x-ndjson"),
    responses(
        (status = 202, description = "Stored and committed", body = IngestResult),
        IngestErrors,
    ),
    security(("operator" = []), ("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn ingest_requests(
    State(state): State<AppState>,
    IngestCaller(caller): IngestCaller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<IngestResult>), Failure<Native>> {
    let groups = receive::<IngestedLog>(&state, &caller, &headers, body).await?;
    // Records that came without an id are split from those that came with one: only the
    // latter can repeat a stored id (the store may skip the duplicate check for the former).
    // Both go in one call, so the whole request stays atomic.
    let mut batches = Vec::new();
    for (tenant, records) in groups {
        let (minted, client): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.minted_id);
        let logs = |rs: Vec<IngestedLog>| rs.into_iter().map(|r| r.log).collect::<Vec<_>>();
        if !client.is_empty() {
            batches.push(LogBatch::new(tenant.clone(), logs(client)));
        }
        if !minted.is_empty() {
            batches.push(LogBatch::minted(tenant, logs(minted)));
        }
    }
    let outcome = state.store().insert_request_logs(batches).await;
    acknowledge(&state, outcome)
}

/// Ingest audit events.
///
/// Same batches, limits and guarantees as request-log ingest. Each org's new entries are
/// appended to its audit hash chain in batch order (see `GET /v1/audit-log/verify`).
/// Required fields: `action`, `resource_type` (and `org_id` with the operator token);
/// `details` is a string or any JSON, stored as its JSON text.
#[utoipa::path(
    post,
    path = "/v1/ingest/audit-events",
    tag = "ingest",
    request_body(content = Vec<IngestAuditEvent>, description = "A JSON array of at most 10,000 events, or NDJSON (one event per line) with Content-Type application/x-ndjson"),
    responses(
        (status = 202, description = "Stored and committed", body = IngestResult),
        IngestErrors,
    ),
    security(("operator" = []), ("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn ingest_audit_events(
    State(state): State<AppState>,
    IngestCaller(caller): IngestCaller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<IngestResult>), Failure<Native>> {
    let groups = receive::<AuditEntry>(&state, &caller, &headers, body).await?;
    let batches = groups
        .into_iter()
        .map(|(tenant, entries)| AuditBatch { tenant, entries })
        .collect();
    let outcome = state.store().insert_audit_entries(batches).await;
    acknowledge(&state, outcome)
}

/// Reads, parses and validates a batch, and groups its records by org; any invalid record
/// refuses the whole batch with every problem listed.
async fn receive<R: Ingestible>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(Tenant, Vec<R>)>, Failure<Native>> {
    let config = state.config();
    let bytes = read_body(headers, body, config.max_ingest_bytes).await?;
    let records = split_records(headers, &bytes, config.max_ingest_records)?;
    let limits = Limits {
        body_cap: config.body_cap_bytes,
        now: Timestamp::now(),
    };
    let mut errors = Vec::new();
    let mut parsed = Vec::with_capacity(records.len());
    for (index, raw) in records.iter().enumerate() {
        let rec = parse_record::<R>(raw, &limits);
        if let Err(problems) = &rec.record {
            errors.extend(problems.iter().map(|(field, message)| RecordError {
                index,
                field: field.clone(),
                message: message.clone(),
            }));
        }
        parsed.push((index, rec));
    }
    let groups = assign_orgs(state, caller, parsed, &mut errors).await?;
    if errors.is_empty() {
        return Ok(groups);
    }
    errors.sort_by_key(|e| e.index);
    state
        .metrics()
        .ingest_invalid_batches
        .fetch_add(1, Ordering::Relaxed);
    let bad = errors
        .iter()
        .map(|e| e.index)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Err(ApiError {
        details: errors,
        ..ApiError::new(
            ErrorKind::InvalidRecords,
            format!(
                "{bad} of {} records are invalid; nothing was stored",
                records.len()
            ),
        )
    }
    .into())
}

/// The `202` for a committed batch (counted in the metrics), or the store's refusal.
fn acknowledge(
    state: &AppState,
    outcome: Result<InsertOutcome, StoreError>,
) -> Result<(StatusCode, Json<IngestResult>), Failure<Native>> {
    let m = state.metrics();
    let outcome = outcome.inspect_err(|e| {
        if matches!(e, StoreError::Overloaded { .. }) {
            m.ingest_overloaded.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    m.ingest_accepted
        .fetch_add(outcome.accepted, Ordering::Relaxed);
    m.ingest_duplicates
        .fetch_add(outcome.duplicates, Ordering::Relaxed);
    Ok((
        StatusCode::ACCEPTED,
        Json(IngestResult {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
        }),
    ))
}

fn too_large(message: String) -> ApiError {
    ApiError::new(ErrorKind::PayloadTooLarge, message)
}

/// Reads the body, refusing more than `max` bytes without reading them all, and decodes its
/// content coding (`gzip`, `zstd`), refusing a decoded body over `max` bytes as soon as the
/// decoder passes it, so a decompression bomb is never inflated whole.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    let coding = content_coding(headers)?;
    let limit_msg = || too_large(format!("the body exceeds {max} bytes; split the batch"));
    let raw = match read_limited(body, declared_length(headers), max).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return Err(limit_msg()),
        Err(BodyError::Unreadable(why)) => {
            return Err(ApiError::new(
                ErrorKind::InvalidBody,
                format!("could not read the request body: {why}"),
            ));
        }
    };
    match coding {
        Coding::Identity => Ok(raw.to_vec()),
        Coding::Gzip => decode_gzip(&raw, max),
        Coding::Zstd => decode_zstd(&raw, max),
    }
}

/// The content codings ingest decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Zstd,
}

/// The body's content coding: at most one of `gzip` (or `x-gzip`) and `zstd`, besides
/// `identity`; anything else is 415.
fn content_coding(headers: &HeaderMap) -> Result<Coding, ApiError> {
    let unsupported = |what: String| {
        ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("{what}; send the body as is, or with Content-Encoding gzip or zstd"),
        )
    };
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| unsupported("the Content-Encoding header is not text".into()))?;
        for token in value.split(',') {
            let token = token.trim().to_ascii_lowercase();
            if !token.is_empty() && token != "identity" {
                codings.push(token);
            }
        }
    }
    match codings.as_slice() {
        [] => Ok(Coding::Identity),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Ok(Coding::Gzip),
            "zstd" => Ok(Coding::Zstd),
            other => Err(unsupported(format!(
                "unsupported Content-Encoding {other:?}"
            ))),
        },
        several => Err(unsupported(format!(
            "stacked content codings ({}) are not supported",
            several.join(", ")
        ))),
    }
}

/// Reads `decoder` to its end, refusing output over `max` bytes without producing more
/// than one byte past it.
fn read_capped(
    decoder: impl std::io::Read,
    max: usize,
    out: &mut Vec<u8>,
    coding: &str,
) -> Result<(), ApiError> {
    use std::io::Read as _;
    let budget = (max + 1).saturating_sub(out.len()) as u64;
    decoder
        .take(budget)
        .read_to_end(out)
        .map_err(|e| invalid_coding(coding, &e))?;
    if out.len() > max {
        return Err(too_large(format!(
            "the decompressed body exceeds {max} bytes; split the batch"
        )));
    }
    Ok(())
}

fn invalid_coding(coding: &str, cause: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidBody,
        format!("the body is not valid {coding} ({cause}), as its Content-Encoding says"),
    )
}

/// Decodes a gzip body (one or more members).
fn decode_gzip(raw: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    read_capped(
        flate2::read::MultiGzDecoder::new(raw),
        max,
        &mut out,
        "gzip",
    )?;
    Ok(out)
}

/// Decodes a zstd body (one or more frames; skippable frames are skipped).
fn decode_zstd(raw: &[u8], max: usize) -> Result<Vec<u8>, ApiError> {
    use ruzstd::decoding::StreamingDecoder;
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    // A window larger than the body limit can only serve a body over it (or a hostile one).
    let max_window = max.max(8 << 20) as u64;
    let mut input = raw;
    let mut out = Vec::new();
    if input.is_empty() {
        return Err(invalid_coding("zstd", &"the body is empty"));
    }
    while !input.is_empty() {
        match StreamingDecoder::new_with_max_window_size(&mut input, max_window) {
            Ok(frame) => read_capped(frame, max, &mut out, "zstd")?,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                let length = length as usize;
                if length > input.len() {
                    return Err(invalid_coding("zstd", &"a skippable frame is truncated"));
                }
                input = &input[length..];
            }
            Err(FrameDecoderError::WindowSizeTooBig { requested, .. }) => {
                return Err(too_large(format!(
                    "the zstd frame asks for a {requested}-byte window; the decompressed body may not exceed {max} bytes"
                )));
            }
            Err(e) => return Err(invalid_coding("zstd", &e)),
        }
    }
    Ok(out)
}

/// Splits a body into the raw JSON text of each record.
fn split_records<'a>(
    headers: &HeaderMap,
    bytes: &'a [u8],
    max_records: usize,
) -> Result<Vec<&'a str>, ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let ndjson = match media.as_deref() {
        Some("application/x-ndjson" | "application/jsonl" | "application/jsonlines") => true,
        None | Some("application/json") => false,
        Some(other) => {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "unsupported Content-Type {other}; send application/json (an array) or application/x-ndjson"
                ),
            ));
        }
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(ErrorKind::InvalidBody, "the body is not valid UTF-8"))?;
    let records: Vec<&str> = if ndjson {
        text.lines().filter(|l| !l.trim().is_empty()).collect()
    } else {
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => items.into_iter().map(RawValue::get).collect(),
            Err(e) => {
                let hint = if text.trim_start().starts_with('{') {
                    "; to send one record per line use Content-Type: application/x-ndjson"
                } else {
                    ""
                };
                return Err(ApiError::new(
                    ErrorKind::InvalidBody,
                    format!("the body must be a JSON array of records ({e}){hint}"),
                ));
            }
        }
    };
    if records.len() > max_records {
        return Err(too_large(format!(
            "{} records in one call; at most {max_records} are accepted",
            records.len()
        )));
    }
    Ok(records)
}

/// `(field, message)` pairs; `None` when the whole record is at fault.
pub(crate) type Problems = Vec<(Option<String>, String)>;

/// A record's `org_id`; an empty one is a problem of the record (SPEC §11: an empty string
/// is not an absent field), not the key's own org.
pub(crate) fn empty_org_id(org_id: Option<String>, problems: &mut Problems) -> Option<String> {
    if org_id.as_deref() == Some("") {
        problems.push((
            Some("org_id".to_owned()),
            "must not be empty; leave it out to use the key's org".to_owned(),
        ));
        return None;
    }
    org_id
}

/// One record after parsing: the org it names (if that could be read) and either the valid
/// record or every problem found.
#[derive(Debug)]
pub(crate) struct Parsed<R> {
    /// The record's `org_id`, when it names one.
    pub org_id: Option<String>,
    /// The record, or what is wrong with it.
    pub record: Result<R, Problems>,
}

/// Parses one record's JSON and checks every field, collecting all problems.
pub(crate) fn parse_record<R: Ingestible>(raw: &str, limits: &Limits) -> Parsed<R> {
    // serde would also read a struct from a JSON array; a record must be an object.
    if !raw.trim_start().starts_with('{') {
        return Parsed {
            org_id: None,
            record: Err(vec![(None, "must be a JSON object".to_owned())]),
        };
    }
    // The fast path, taken by every valid record: one typed parse.
    let mut parsed = match serde_json::from_str::<R::Wire>(raw) {
        Ok(rec) => R::validate(rec, limits),
        Err(e) => diagnose::<R>(raw, limits, &e),
    };
    // No store keeps a NUL character in text (PostgreSQL refuses it), so it is refused here,
    // on every backend alike, naming the field.
    let nul = nul_fields(raw);
    if !nul.is_empty() {
        let mut problems = parsed.record.err().unwrap_or_default();
        for field in nul {
            if !problems.iter().any(|(f, _)| *f == field) {
                problems.push((field, NUL_MESSAGE.to_owned()));
            }
        }
        parsed.record = Err(problems);
    }
    if let Err(problems) = &mut parsed.record
        && problems.is_empty()
    {
        // A refused record always says why; none may be dropped silently.
        problems.push((None, "is not a valid record".to_owned()));
    }
    parsed
}

/// The slow path for a record the typed parse refused: finds every unknown field and every
/// field of the wrong type (each checked on its own, from its raw text), then runs the field
/// rules on the rest, so that one problem never hides another.
fn diagnose<R: Ingestible>(raw: &str, limits: &Limits, typed: &serde_json::Error) -> Parsed<R> {
    let invalid_json = |e: &serde_json::Error| Parsed {
        org_id: None,
        record: Err(vec![(
            None,
            format!("is not valid JSON: {}", without_position(e)),
        )]),
    };
    let fields: BTreeMap<String, Box<RawValue>> = match serde_json::from_str(raw) {
        Ok(f) => f,
        Err(e) => return invalid_json(&e),
    };
    let mut problems: Problems = Vec::new();
    let mut clean = String::from("{");
    for (name, value) in &fields {
        let name_json = serde_json::to_string(name).unwrap_or_default();
        let alone = format!("{{{name_json}:{}}}", value.get());
        let mut de = serde_json::Deserializer::from_str(&alone);
        match serde_path_to_error::deserialize::<_, R::Wire>(&mut de) {
            Ok(_) => {
                if clean.len() > 1 {
                    clean.push(',');
                }
                clean.push_str(&alone[1..alone.len() - 1]);
            }
            Err(e) => problems.push(describe_json_error(&e)),
        }
    }
    clean.push('}');
    if problems.is_empty() {
        // Each field is fine alone, yet the record is not: a key given twice, which the map
        // above collapsed. Never let such a record pass unreported (it would be dropped).
        problems.push((None, without_position(typed)));
    }
    let mistyped: Vec<Option<String>> = problems.iter().map(|(f, _)| f.clone()).collect();
    match serde_json::from_str::<R::Wire>(&clean) {
        Ok(rec) => {
            let checked = R::validate(rec, limits);
            if let Err(more) = checked.record {
                // A field already reported as mistyped is not also "required".
                problems.extend(more.into_iter().filter(|(f, _)| !mistyped.contains(f)));
            }
            Parsed {
                org_id: checked.org_id,
                record: Err(problems),
            }
        }
        Err(e) => {
            problems.push((None, without_position(&e)));
            Parsed {
                org_id: None,
                record: Err(problems),
            }
        }
    }
}

/// Turns a serde error into `(field, message)`, naming the field wherever serde can.
fn describe_json_error(
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> (Option<String>, String) {
    let message = without_position(e.inner());
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        return (
            Some(name.to_owned()),
            "is not a known field; free-form data belongs in metadata".to_owned(),
        );
    }
    let path = e.path().to_string();
    if path == "." || path == "?" || path.is_empty() {
        let message = if e.inner().is_syntax() || e.inner().is_eof() {
            format!("is not valid JSON: {message}")
        } else if message.starts_with("invalid type") {
            format!("must be a JSON object ({message})")
        } else {
            message
        };
        (None, message)
    } else {
        // `metadata.key` and the like: report the top-level field.
        let field = path.split(['.', '[']).next().unwrap_or(&path);
        ((!field.is_empty()).then(|| field.to_owned()), message)
    }
}

/// Resolves each record's org, checks ids are unique per org within the batch, and groups the
/// records into per-org batches.
async fn assign_orgs<R: Ingestible>(
    state: &AppState,
    caller: &Caller,
    parsed: Vec<(usize, Parsed<R>)>,
    errors: &mut Vec<RecordError>,
) -> Result<Vec<(Tenant, Vec<R>)>, ApiError> {
    let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
    let mut groups: HashMap<Tenant, Vec<R>> = HashMap::new();
    let mut seen: HashMap<(i64, Uuid), usize> = HashMap::new();
    // Every record's org is checked, also for records with other problems, so that the
    // caller learns everything at once; only valid records are grouped.
    for (index, Parsed { org_id, record }) in parsed {
        // Already reported: a bad `org_id`, or a record so broken (not JSON, not an object)
        // that its `org_id` could not be read at all.
        let org_reported = record.as_ref().err().is_some_and(|p| {
            p.iter().any(|(f, _)| match f.as_deref() {
                Some(field) => field == "org_id",
                None => org_id.is_none(),
            })
        });
        if org_reported {
            continue;
        }
        let tenant = match (caller, org_id) {
            (Caller::Org(org), None) => org.tenant.clone(),
            (Caller::Org(org), Some(id)) if id == org.tenant.org_id().as_str() => {
                org.tenant.clone()
            }
            (Caller::Org(_), Some(_)) => {
                return Err(ApiError {
                    param: Some("org_id".into()),
                    ..ApiError::new(
                        ErrorKind::Forbidden,
                        format!(
                            "record {index} names another org; an org key ingests only into its own org"
                        ),
                    )
                });
            }
            (Caller::Operator, None) => {
                errors.push(RecordError {
                    index,
                    field: Some("org_id".into()),
                    message: "is required with the operator token".into(),
                });
                continue;
            }
            (Caller::Operator, Some(id)) => {
                let found = match tenants.get(&id) {
                    Some(t) => t.clone(),
                    None => {
                        let t = match OrgId::parse(&id) {
                            Ok(org_id) => state.store().tenant(&org_id).await?,
                            Err(_) => None,
                        };
                        tenants.insert(id.clone(), t.clone());
                        t
                    }
                };
                match found {
                    Some(t) => t,
                    None => {
                        errors.push(RecordError {
                            index,
                            field: Some("org_id".into()),
                            message: format!("no org has the id {id:?}"),
                        });
                        continue;
                    }
                }
            }
        };
        let Ok(record) = record else {
            continue;
        };
        if let Some(first) = seen.insert((tenant.key(), record.id()), index) {
            errors.push(RecordError {
                index,
                field: Some("id".into()),
                message: format!("repeats the id of record {first} in this batch"),
            });
            continue;
        }
        groups.entry(tenant).or_default().push(record);
    }
    Ok(groups.into_iter().collect())
}

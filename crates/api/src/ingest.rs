//! Ingest: `POST /v1/ingest/requests`.
//!
//! A batch is a JSON array or NDJSON. Every record is parsed and validated on its own; if any
//! is invalid, the whole batch is refused with every problem listed and nothing is stored.
//! A valid batch is handed to the store as one atomic write, and `202` is sent only after it
//! committed.

use std::collections::{BTreeMap, HashMap};

use apitrail_model::request_log::rules;
use apitrail_model::{OrgId, RequestLog, Scope, Tenant, Timestamp, new_record_id};
use apitrail_store::{LogBatch, StoreError};
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorKind, Failure, Native, RecordError};
use crate::state::AppState;
use crate::wire::NativeErrorBody;

/// A request log as posted to ingest. Unknown fields are refused by name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestLog {
    /// A UUID; re-sending a stored id is a no-op, so retries are safe. Generated when absent.
    id: Option<String>,
    /// Required with the operator token; with an org key it defaults to the key's org.
    org_id: Option<String>,
    /// The platform's request id.
    request_id: Option<String>,
    /// Required. An HTTP method token; stored uppercase.
    method: Option<String>,
    /// Required. The path, starting with `/`, without the query string.
    path: Option<String>,
    /// The query string, without `?`.
    query: Option<String>,
    /// The route template, e.g. `/v1/users/{id}`.
    route_pattern: Option<String>,
    /// Required. 100-599.
    status_code: Option<i64>,
    /// The platform's error code.
    error_code: Option<String>,
    /// Milliseconds; derived from started_at and completed_at when absent.
    duration_ms: Option<i64>,
    /// RFC 3339 with offset.
    started_at: Option<String>,
    /// RFC 3339 with offset.
    completed_at: Option<String>,
    /// RFC 3339 with offset; defaults to the time of ingest.
    created_at: Option<String>,
    /// An IPv4 or IPv6 address.
    client_ip: Option<String>,
    /// The caller's User-Agent.
    user_agent: Option<String>,
    /// The caller's Origin.
    origin: Option<String>,
    /// e.g. api_key, session, jwt.
    auth_type: Option<String>,
    /// e.g. user, service_account.
    principal_type: Option<String>,
    /// The acting principal.
    principal_id: Option<String>,
    /// The acting user.
    user_id: Option<String>,
    /// The acting user's email.
    email: Option<String>,
    /// The API key id used (never the secret).
    api_key_id: Option<String>,
    /// The acting service account.
    service_account_id: Option<String>,
    /// A string, or any JSON (stored as its text); capped (64 KiB by default).
    #[schema(value_type = Option<Object>)]
    request_body: Option<Value>,
    /// A string, or any JSON (stored as its text); capped (64 KiB by default).
    #[schema(value_type = Option<Object>)]
    response_body: Option<Value>,
    /// A decimal, as a string ("16.74") or a number; stored exactly as written.
    #[schema(value_type = Option<String>)]
    price: Option<Box<RawValue>>,
    /// Billable minutes.
    minutes: Option<i64>,
    /// Billable seconds.
    seconds: Option<i64>,
    /// The invoice item the call was billed on.
    stripe_invoice_item_id: Option<String>,
    /// Free-form string pairs (at most 64 keys).
    metadata: Option<BTreeMap<String, String>>,
}

/// The answer to a stored batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    /// Records newly stored.
    accepted: u64,
    /// Records skipped because their id was already stored for their org.
    duplicates: u64,
}

/// Authenticates an ingest caller: the operator token or an org key with the `write` scope.
#[derive(Debug)]
pub struct IngestCaller(Caller);

impl FromRequestParts<AppState> for IngestCaller {
    type Rejection = Failure<Native>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = state.authenticate_any(&parts.headers).await?;
        if let Caller::Org(org) = &caller {
            crate::selflog::note_caller(parts, org);
            org.require(Scope::Write)?;
        }
        Ok(Self(caller))
    }
}

/// Ingest request logs.
///
/// Accepts a JSON array (`Content-Type: application/json`) or NDJSON
/// (`Content-Type: application/x-ndjson`) of at most 10,000 records and 16 MiB. The batch is
/// stored atomically and acknowledged only once durably committed; if any record is invalid,
/// nothing is stored and every problem is listed as `{index, field, message}`.
#[utoipa::path(
    post,
    path = "/v1/ingest/requests",
    tag = "ingest",
    request_body(content = Vec<IngestLog>, description = "JSON array, or NDJSON with Content-Type application/x-ndjson"),
    responses(
        (status = 202, description = "Stored and committed", body = IngestResult),
        (status = 400, description = "Invalid records (nothing stored) or a malformed body", body = NativeErrorBody),
        (status = 401, description = "Missing or invalid credentials", body = NativeErrorBody),
        (status = 403, description = "The key lacks the write scope, or names another org", body = NativeErrorBody),
        (status = 413, description = "More than 10,000 records or 16 MiB", body = NativeErrorBody),
        (status = 415, description = "Neither JSON nor NDJSON", body = NativeErrorBody),
        (status = 503, description = "The write queue is full; retry after Retry-After seconds", body = NativeErrorBody),
    ),
    security(("operator" = []), ("api_key" = []), ("bearer" = []), ("arklow" = []), ("session" = []))
)]
pub async fn ingest_requests(
    State(state): State<AppState>,
    IngestCaller(caller): IngestCaller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<IngestResult>), Failure<Native>> {
    let config = state.config();
    let bytes = read_body(&headers, body, config.max_ingest_bytes).await?;
    let records = split_records(&headers, &bytes, config.max_ingest_records)?;
    let now = Timestamp::now();
    let mut errors = Vec::new();
    let mut parsed = Vec::with_capacity(records.len());
    for (index, raw) in records.iter().enumerate() {
        let rec = parse_record(raw, config.body_cap_bytes, now);
        if let Err(problems) = &rec.log {
            errors.extend(problems.iter().map(|(field, message)| RecordError {
                index,
                field: field.clone(),
                message: message.clone(),
            }));
        }
        parsed.push((index, rec));
    }
    let batches = assign_orgs(&state, &caller, parsed, &mut errors).await?;
    if !errors.is_empty() {
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
        return Err(ApiError {
            details: errors,
            ..ApiError::new(
                ErrorKind::InvalidRecords,
                format!(
                    "{bad} of {} records are invalid; nothing was stored",
                    records.len()
                ),
            )
        }
        .into());
    }
    let outcome = match state.store().insert_request_logs(batches).await {
        Ok(o) => o,
        Err(e) => {
            if matches!(e, StoreError::Overloaded { .. }) {
                state
                    .metrics()
                    .ingest_overloaded
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Err(e.into());
        }
    };
    let m = state.metrics();
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

/// Reads the body, refusing more than `max` bytes without reading them all.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    let limit_msg = || too_large(format!("the body exceeds {max} bytes; split the batch"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(limit_msg());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(limit_msg()),
        Err(e) => Err(ApiError::new(
            ErrorKind::InvalidBody,
            format!("could not read the request body: {e}"),
        )),
    }
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

type Problems = Vec<(Option<String>, String)>;

/// One record after parsing: the org it names (if that could be read) and either the valid
/// log or every problem found.
#[derive(Debug)]
struct Parsed {
    org_id: Option<String>,
    log: Result<RequestLog, Problems>,
}

/// Parses one record's JSON and checks every field, collecting all problems.
fn parse_record(raw: &str, body_cap: usize, now: Timestamp) -> Parsed {
    // serde would also read a struct from a JSON array; a record must be an object.
    if !raw.trim_start().starts_with('{') {
        return Parsed {
            org_id: None,
            log: Err(vec![(None, "must be a JSON object".to_owned())]),
        };
    }
    // The fast path, taken by every valid record: one typed parse.
    match serde_json::from_str::<IngestLog>(raw) {
        Ok(rec) => validate(rec, body_cap, now),
        Err(_) => diagnose(raw, body_cap, now),
    }
}

/// The slow path for a record the typed parse refused: finds every unknown field and every
/// field of the wrong type (each checked on its own, from its raw text), then runs the field
/// rules on the rest, so that one problem never hides another.
fn diagnose(raw: &str, body_cap: usize, now: Timestamp) -> Parsed {
    let invalid_json = |e: &serde_json::Error| Parsed {
        org_id: None,
        log: Err(vec![(
            None,
            format!("is not valid JSON: {}", strip_position(e)),
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
        match serde_path_to_error::deserialize::<_, IngestLog>(&mut de) {
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
    let mistyped: Vec<Option<String>> = problems.iter().map(|(f, _)| f.clone()).collect();
    match serde_json::from_str::<IngestLog>(&clean) {
        Ok(rec) => {
            let checked = validate(rec, body_cap, now);
            if let Err(more) = checked.log {
                // A field already reported as mistyped is not also "required".
                problems.extend(more.into_iter().filter(|(f, _)| !mistyped.contains(f)));
            }
            Parsed {
                org_id: checked.org_id,
                log: Err(problems),
            }
        }
        Err(e) => {
            problems.push((None, strip_position(&e)));
            Parsed {
                org_id: None,
                log: Err(problems),
            }
        }
    }
}

/// Checks the fields of a record that parsed, collecting all problems.
fn validate(rec: IngestLog, body_cap: usize, now: Timestamp) -> Parsed {
    let mut problems: Problems = Vec::new();
    let mut bad = |field: &str, msg: &str| problems.push((Some(field.to_owned()), msg.to_owned()));

    let id = match rec.id.as_deref() {
        None | Some("") => new_record_id(),
        Some(s) => Uuid::try_parse(s).unwrap_or_else(|_| {
            bad("id", "must be a UUID");
            Uuid::nil()
        }),
    };
    let method = match rec.method.as_deref() {
        None | Some("") => {
            bad("method", "is required");
            String::new()
        }
        Some(m) => rules::method(m).unwrap_or_else(|e| {
            bad("method", e);
            String::new()
        }),
    };
    let path = match rec.path {
        None => {
            bad("path", "is required");
            String::new()
        }
        Some(p) if !(p.starts_with('/') || p == "*") => {
            bad("path", "must start with /");
            p
        }
        Some(p) => p,
    };
    let status_code = match rec.status_code {
        None => {
            bad("status_code", "is required");
            0
        }
        Some(n) => rules::status_code(n).unwrap_or_else(|e| {
            bad("status_code", e);
            0
        }),
    };
    let mut time = |field: &str, v: Option<String>| match v.as_deref() {
        None | Some("") => None,
        Some(s) => Timestamp::parse(s)
            .map_err(|e| bad(field, &e.to_string()))
            .ok(),
    };
    let started_at = time("started_at", rec.started_at);
    let completed_at = time("completed_at", rec.completed_at);
    let created_at = time("created_at", rec.created_at).unwrap_or(now);
    let duration_ms = match rec.duration_ms {
        Some(n) => rules::duration_ms(n)
            .map_err(|e| bad("duration_ms", e))
            .ok(),
        None => rules::derived_duration(started_at, completed_at),
    };
    let client_ip = match rec.client_ip.as_deref() {
        None | Some("") => None,
        Some(s) => rules::ip(s).map_err(|e| bad("client_ip", e)).ok(),
    };
    // The raw text, so a numeric price is kept digit for digit instead of passing through f64.
    let price = match rec.price.as_deref().map(RawValue::get) {
        None | Some("null") => None,
        Some(raw) if raw.starts_with('"') => match serde_json::from_str::<String>(raw) {
            Ok(s) => rules::price(&s).map_err(|e| bad("price", e)).ok(),
            Err(_) => {
                bad("price", "must be a decimal string such as \"16.74\"");
                None
            }
        },
        Some(raw) => rules::price(raw).map_err(|e| bad("price", e)).ok(),
    };
    let mut count = |field: &str, v: Option<i64>| match v {
        Some(n) if n < 0 => {
            bad(field, "must not be negative");
            None
        }
        v => v,
    };
    let minutes = count("minutes", rec.minutes);
    let seconds = count("seconds", rec.seconds);
    let metadata = match rec.metadata {
        Some(m) if m.len() > 64 => {
            bad("metadata", "must have at most 64 keys");
            None
        }
        Some(m)
            if m.iter()
                .any(|(k, v)| k.len() > 256 || v.len() > rules::MAX_TEXT) =>
        {
            bad(
                "metadata",
                "keys must be at most 256 bytes and values at most 1024 bytes",
            );
            None
        }
        Some(m) if m.is_empty() => None,
        Some(m) => serde_json::to_string(&m).ok(),
        None => None,
    };
    let body = |v: Option<Value>| match v {
        None | Some(Value::Null) => (None, false),
        Some(Value::String(s)) => {
            let (s, cut) = rules::cap_body(s, body_cap);
            (Some(s), cut)
        }
        Some(other) => {
            let (s, cut) = rules::cap_body(other.to_string(), body_cap);
            (Some(s), cut)
        }
    };
    let (request_body, request_body_truncated) = body(rec.request_body);
    let (response_body, response_body_truncated) = body(rec.response_body);

    let mut text = |field: &str, v: Option<String>, max: usize| match v {
        Some(s) if s.is_empty() => None,
        Some(s) if s.len() > max => {
            bad(field, &format!("must be at most {max} bytes"));
            None
        }
        v => v,
    };
    let log = RequestLog {
        id,
        request_id: text("request_id", rec.request_id, rules::MAX_TEXT),
        method,
        path: text("path", Some(path), rules::MAX_PATH).unwrap_or_default(),
        query: text(
            "query",
            rec.query
                .map(|q| q.strip_prefix('?').map(str::to_owned).unwrap_or(q)),
            rules::MAX_PATH,
        ),
        route_pattern: text("route_pattern", rec.route_pattern, rules::MAX_TEXT),
        status_code,
        error_code: text("error_code", rec.error_code, rules::MAX_TEXT),
        duration_ms,
        started_at,
        completed_at,
        created_at,
        client_ip,
        user_agent: text("user_agent", rec.user_agent, 2 * rules::MAX_TEXT),
        origin: text("origin", rec.origin, 2 * rules::MAX_TEXT),
        auth_type: text("auth_type", rec.auth_type, rules::MAX_TEXT),
        principal_type: text("principal_type", rec.principal_type, rules::MAX_TEXT),
        principal_id: text("principal_id", rec.principal_id, rules::MAX_TEXT),
        user_id: text("user_id", rec.user_id, rules::MAX_TEXT),
        email: text("email", rec.email, rules::MAX_TEXT),
        api_key_id: text("api_key_id", rec.api_key_id, rules::MAX_TEXT),
        service_account_id: text(
            "service_account_id",
            rec.service_account_id,
            rules::MAX_TEXT,
        ),
        request_body,
        request_body_truncated,
        response_body,
        response_body_truncated,
        price,
        minutes,
        seconds,
        stripe_invoice_item_id: text(
            "stripe_invoice_item_id",
            rec.stripe_invoice_item_id,
            rules::MAX_TEXT,
        ),
        metadata,
    };
    let org_id = rec.org_id.filter(|s| !s.is_empty());
    Parsed {
        org_id,
        log: if problems.is_empty() {
            Ok(log)
        } else {
            Err(problems)
        },
    }
}

/// serde_json's message without the position it appends (within one record, only noise).
fn strip_position(e: &serde_json::Error) -> String {
    let inner = e.to_string();
    inner
        .rsplit_once(" at line ")
        .map_or(inner.as_str(), |(m, _)| m)
        .to_owned()
}

/// Turns a serde error into `(field, message)`, naming the field wherever serde can.
fn describe_json_error(
    e: &serde_path_to_error::Error<serde_json::Error>,
) -> (Option<String>, String) {
    let inner = e.inner().to_string();
    // serde_json appends the position; within one record it only adds noise.
    let message = inner
        .rsplit_once(" at line ")
        .map_or(inner.as_str(), |(m, _)| m)
        .to_owned();
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
async fn assign_orgs(
    state: &AppState,
    caller: &Caller,
    parsed: Vec<(usize, Parsed)>,
    errors: &mut Vec<RecordError>,
) -> Result<Vec<LogBatch>, ApiError> {
    let mut tenants: HashMap<String, Option<Tenant>> = HashMap::new();
    let mut groups: HashMap<Tenant, Vec<RequestLog>> = HashMap::new();
    let mut seen: HashMap<(i64, Uuid), usize> = HashMap::new();
    // Every record's org is checked, also for records with other problems, so that the
    // caller learns everything at once; only valid records are grouped.
    for (index, Parsed { org_id, log }) in parsed {
        let org_reported = log
            .as_ref()
            .err()
            .is_some_and(|p| p.iter().any(|(f, _)| f.as_deref() == Some("org_id")));
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
        let Ok(log) = log else {
            continue;
        };
        if let Some(first) = seen.insert((tenant.key(), log.id), index) {
            errors.push(RecordError {
                index,
                field: Some("id".into()),
                message: format!("repeats the id of record {first} in this batch"),
            });
            continue;
        }
        groups.entry(tenant).or_default().push(log);
    }
    Ok(groups
        .into_iter()
        .map(|(tenant, logs)| LogBatch { tenant, logs })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<(Option<String>, RequestLog), Problems> {
        let p = parse_record(raw, 8, Timestamp::from_millis(1_000).unwrap());
        p.log.map(|log| (p.org_id, log))
    }

    fn fields(raw: &str) -> Vec<Option<String>> {
        parse(raw)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn minimal_record_gets_defaults() {
        let p = parse(r#"{"method":"get","path":"/a","status_code":200}"#).unwrap();
        assert_eq!(p.1.method, "GET");
        assert_eq!(p.1.created_at.millis(), 1_000);
        assert_eq!(p.1.id.get_version_num(), 7);
        assert_eq!(p.0, None);
    }

    #[test]
    fn every_problem_is_reported_by_field() {
        assert_eq!(
            fields(r#"{"status_code":99,"client_ip":"x","created_at":"2024-01-01T00:00:00"}"#),
            vec![
                Some("method".into()),
                Some("path".into()),
                Some("status_code".into()),
                Some("created_at".into()),
                Some("client_ip".into())
            ]
        );
        assert_eq!(
            fields(r#"{"method":"GET","path":"/","status_code":200,"colour":"red"}"#),
            vec![Some("colour".into())]
        );
        assert_eq!(
            fields(r#"{"method":"GET","path":"/","status_code":"200"}"#),
            vec![Some("status_code".into())]
        );
        // One problem never hides another: unknown fields, wrong types and rule violations
        // of the same record are all listed.
        let mut all = fields(r#"{"colour":"red","status_code":"x","client_ip":"nope","path":"/"}"#);
        all.sort();
        assert_eq!(
            all,
            vec![
                Some("client_ip".into()),
                Some("colour".into()),
                Some("method".into()),
                Some("status_code".into())
            ]
        );
        assert_eq!(fields("[1,2]"), vec![None]);
        assert_eq!(fields("{"), vec![None]);
    }

    #[test]
    fn bodies_are_capped_and_flagged() {
        let p = parse(
            r#"{"method":"GET","path":"/","status_code":200,"request_body":"0123456789","response_body":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(p.1.request_body.as_deref(), Some("01234567"));
        assert!(p.1.request_body_truncated);
        assert_eq!(p.1.response_body.as_deref(), Some("{\"a\":1}"));
        assert!(!p.1.response_body_truncated);
    }

    #[test]
    fn numeric_prices_keep_their_digits() {
        let p =
            parse(r#"{"method":"GET","path":"/","status_code":200,"price":12345678.123456789}"#)
                .unwrap();
        assert_eq!(p.1.price.as_deref(), Some("12345678.123456789"));
        let p = parse(r#"{"method":"GET","path":"/","status_code":200,"price":"0.10"}"#).unwrap();
        assert_eq!(p.1.price.as_deref(), Some("0.10"));
        assert_eq!(
            fields(r#"{"method":"GET","path":"/","status_code":200,"price":1e3}"#),
            vec![Some("price".into())]
        );
        assert_eq!(
            fields(r#"{"method":"GET","path":"/","status_code":200,"price":true}"#),
            vec![Some("price".into())]
        );
    }

    #[test]
    fn the_org_is_read_even_from_an_invalid_record() {
        let p = parse_record(
            r#"{"org_id":"acme","path":"/","status_code":"bad"}"#,
            8,
            Timestamp::from_millis(1_000).unwrap(),
        );
        assert_eq!(p.org_id.as_deref(), Some("acme"));
        assert!(p.log.is_err());
    }

    #[test]
    fn duration_is_derived_when_absent() {
        let p = parse(
            r#"{"method":"GET","path":"/","status_code":200,"started_at":"2024-01-01T00:00:00Z","completed_at":"2024-01-01T00:00:00.250Z"}"#,
        )
        .unwrap();
        assert_eq!(p.1.duration_ms, Some(250));
    }
}

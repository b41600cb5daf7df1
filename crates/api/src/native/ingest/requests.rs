//! Request logs as ingest accepts them: the wire record and its validation.

use std::collections::BTreeMap;

use apitrail_model::request_log::rules;
use apitrail_model::time::ingest_window;
use apitrail_model::{RequestLog, Timestamp, new_record_id};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Ingestible, Limits, Parsed, Problems, empty_org_id};

/// A request log as posted to ingest. Unknown fields are refused by name. Optional text
/// fields take null or the empty string for "absent"; text limits are in bytes (UTF-8).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestLog {
    /// A UUID; re-sending a stored id is a no-op, so retries are safe. Generated when absent.
    /// Unique within a batch.
    #[schema(schema_with = crate::openapi::record_id)]
    id: Option<String>,
    /// Required with the operator token (an existing org); with an org key it defaults to
    /// the key's org, and any other org is refused (403).
    org_id: Option<String>,
    /// The platform's request id.
    #[schema(max_length = 1024)]
    request_id: Option<String>,
    /// An HTTP method token of at most 32 characters; stored uppercase.
    #[schema(
        required = true,
        nullable = false,
        pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,32}$"
    )]
    method: Option<String>,
    /// The path, starting with `/` (or `*`), without the query string; at most 8192 bytes.
    #[schema(
        required = true,
        nullable = false,
        pattern = "^(/|\\*$)",
        max_length = 8192
    )]
    path: Option<String>,
    /// The query string (a leading `?` is dropped); at most 8192 bytes.
    #[schema(max_length = 8192)]
    query: Option<String>,
    /// The route template, e.g. `/v1/users/{id}`.
    #[schema(max_length = 1024)]
    route_pattern: Option<String>,
    /// The response status.
    #[schema(required = true, nullable = false, minimum = 100, maximum = 599)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    status_code: Option<i64>,
    /// The platform's error code.
    #[schema(max_length = 1024)]
    error_code: Option<String>,
    /// Milliseconds; derived from started_at and completed_at when absent (under the same
    /// bound: a longer span is refused, naming completed_at).
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    duration_ms: Option<i64>,
    /// RFC 3339 with offset.
    #[schema(schema_with = crate::openapi::ingest_date_time)]
    started_at: Option<String>,
    /// RFC 3339 with offset.
    #[schema(schema_with = crate::openapi::ingest_date_time)]
    completed_at: Option<String>,
    /// RFC 3339 with offset; defaults to the time of ingest.
    #[schema(schema_with = crate::openapi::ingest_date_time)]
    created_at: Option<String>,
    /// An IPv4 or IPv6 address.
    #[schema(schema_with = crate::openapi::ingest_ip)]
    client_ip: Option<String>,
    /// The caller's User-Agent.
    #[schema(max_length = 2048)]
    user_agent: Option<String>,
    /// The caller's Origin.
    #[schema(max_length = 2048)]
    origin: Option<String>,
    /// e.g. api_key, session, jwt.
    #[schema(max_length = 1024)]
    auth_type: Option<String>,
    /// e.g. user, service_account.
    #[schema(max_length = 1024)]
    principal_type: Option<String>,
    /// The acting principal.
    #[schema(max_length = 1024)]
    principal_id: Option<String>,
    /// The acting user.
    #[schema(max_length = 1024)]
    user_id: Option<String>,
    /// The acting user's email.
    #[schema(max_length = 1024)]
    email: Option<String>,
    /// The API key id used (never the secret).
    #[schema(max_length = 1024)]
    api_key_id: Option<String>,
    /// The acting service account.
    #[schema(max_length = 1024)]
    service_account_id: Option<String>,
    /// A string, or any JSON (stored as its text); cut to the server's cap (64 KiB by
    /// default), which sets `request_body_truncated`.
    #[schema(required = false, value_type = Value)]
    request_body: Option<Value>,
    /// A string, or any JSON (stored as its text); cut like `request_body`.
    #[schema(required = false, value_type = Value)]
    response_body: Option<Value>,
    /// Whether `request_body` was already cut before it came here (as an export of another
    /// apitrail says); the flag is also set when this server cuts the body.
    #[serde(default)]
    request_body_truncated: Option<bool>,
    /// Whether `response_body` was already cut, like `request_body_truncated`.
    #[serde(default)]
    response_body_truncated: Option<bool>,
    /// A decimal, as a string ("16.74") or a number; stored exactly as written.
    #[schema(schema_with = crate::openapi::price)]
    price: Option<Box<RawValue>>,
    /// Billable minutes (a 32-bit integer: the zoo dialect's official clients read it so).
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    minutes: Option<i64>,
    /// Billable seconds (a 32-bit integer, like `minutes`).
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    #[serde(default, deserialize_with = "crate::wire::integer")]
    seconds: Option<i64>,
    /// The invoice item the call was billed on.
    #[schema(max_length = 1024)]
    stripe_invoice_item_id: Option<String>,
    /// Free-form string pairs: at most 64 keys of at most 256 bytes, values of at most 1024.
    #[schema(schema_with = crate::openapi::metadata)]
    metadata: Option<BTreeMap<String, String>>,
}

/// A validated request log and whether its id was minted here (the record came without one).
#[derive(Debug)]
pub(crate) struct IngestedLog {
    pub log: RequestLog,
    /// The id is a fresh `new_record_id()`, so it cannot repeat a stored one.
    pub minted_id: bool,
}

impl Ingestible for IngestedLog {
    type Wire = IngestLog;

    fn id(&self) -> Uuid {
        self.log.id
    }

    fn validate(rec: IngestLog, limits: &Limits) -> Parsed<Self> {
        let minted_id = matches!(rec.id.as_deref(), None | Some(""));
        let parsed = validate(rec, limits.body_cap, limits.now);
        Parsed {
            org_id: parsed.org_id,
            record: parsed.record.map(|log| IngestedLog { log, minted_id }),
        }
    }
}

/// Checks the fields of a record that parsed, collecting all problems.
fn validate(rec: IngestLog, body_cap: usize, now: Timestamp) -> Parsed<RequestLog> {
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
            .map_err(|e| e.to_string())
            .and_then(|t| ingest_window(t, now))
            .map_err(|e| bad(field, &e))
            .ok(),
    };
    let started_at = time("started_at", rec.started_at);
    let completed_at = time("completed_at", rec.completed_at);
    let created_at = time("created_at", rec.created_at).unwrap_or(now);
    let duration_ms = match rec.duration_ms {
        Some(n) => rules::duration_ms(n)
            .map_err(|e| bad("duration_ms", e))
            .ok(),
        None => rules::derived_duration(started_at, completed_at)
            .map_err(|e| bad("completed_at", e))
            .ok()
            .flatten(),
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
    let mut count = |field: &str, v: Option<i64>| {
        v.and_then(|n| rules::count(n).map_err(|e| bad(field, e)).ok())
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
    let (request_body, request_cut) = body(rec.request_body);
    let (response_body, response_cut) = body(rec.response_body);
    // A body cut elsewhere stays marked as cut (an export re-ingested keeps its flags).
    let request_body_truncated = request_cut || rec.request_body_truncated == Some(true);
    let response_body_truncated = response_cut || rec.response_body_truncated == Some(true);

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
    let org_id = empty_org_id(rec.org_id, &mut problems);
    Parsed {
        org_id,
        record: if problems.is_empty() {
            Ok(log)
        } else {
            Err(problems)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::ingest::parse_record;

    /// The server's clock in these tests: 2026-01-01T00:00:00Z.
    const NOW_MS: i64 = 1_767_225_600_000;

    fn limits() -> Limits {
        Limits {
            body_cap: 8,
            now: Timestamp::from_millis(NOW_MS).unwrap_or_default(),
        }
    }

    fn parse(raw: &str) -> Result<(Option<String>, RequestLog), Problems> {
        let p = parse_record::<IngestedLog>(raw, &limits());
        p.record.map(|r| (p.org_id, r.log))
    }

    #[test]
    fn only_a_record_without_an_id_gets_a_minted_one() {
        let minted = |raw: &str| {
            parse_record::<IngestedLog>(raw, &limits())
                .record
                .map(|r| r.minted_id)
                .ok()
        };
        assert_eq!(
            minted(r#"{"method":"GET","path":"/","status_code":200}"#),
            Some(true)
        );
        assert_eq!(
            minted(r#"{"id":"","method":"GET","path":"/","status_code":200}"#),
            Some(true)
        );
        assert_eq!(
            minted(
                r#"{"id":"0190f5a2-7b3c-7def-8123-000000000004","method":"GET","path":"/","status_code":200}"#
            ),
            Some(false)
        );
    }

    fn fields(raw: &str) -> Vec<Option<String>> {
        parse(raw)
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn times_counts_and_prices_are_bounded() {
        let rec =
            |extra: &str| format!(r#"{{"method":"GET","path":"/","status_code":200,{extra}}}"#);
        for (extra, field) in [
            (r#""created_at":"9999-12-31T00:00:00Z""#, "created_at"),
            (r#""created_at":"2026-01-01T00:05:00.001Z""#, "created_at"),
            (r#""created_at":"1999-12-31T23:59:59Z""#, "created_at"),
            (r#""started_at":"0001-01-01T00:00:00Z""#, "started_at"),
            (r#""completed_at":"9999-12-31T00:00:00Z""#, "completed_at"),
            (
                r#""started_at":"2024-01-01T00:00:00Z","completed_at":"2025-06-01T00:00:00Z""#,
                "completed_at",
            ),
            (r#""price":"-0.01""#, "price"),
            (r#""price":-3"#, "price"),
            (r#""minutes":3000000000"#, "minutes"),
            (r#""seconds":2147483648"#, "seconds"),
            (r#""seconds":-1"#, "seconds"),
        ] {
            assert_eq!(fields(&rec(extra)), vec![Some(field.to_owned())], "{extra}");
        }
        for extra in [
            r#""created_at":"2026-01-01T00:05:00Z""#,
            r#""created_at":"2000-01-01T00:00:00Z""#,
            r#""minutes":2147483647,"seconds":0,"price":"0""#,
            r#""started_at":"2025-12-01T00:00:00Z","completed_at":"2025-12-25T20:31:23.647Z""#,
        ] {
            assert!(parse(&rec(extra)).is_ok(), "{extra}");
        }
    }

    #[test]
    fn minimal_record_gets_defaults() {
        let p = parse(r#"{"method":"get","path":"/a","status_code":200}"#).unwrap();
        assert_eq!(p.1.method, "GET");
        assert_eq!(p.1.created_at.millis(), NOW_MS);
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
        let p = parse_record::<IngestedLog>(
            r#"{"org_id":"acme","path":"/","status_code":"bad"}"#,
            &limits(),
        );
        assert_eq!(p.org_id.as_deref(), Some("acme"));
        assert!(p.record.is_err());
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

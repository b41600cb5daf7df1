//! Audit events as ingest accepts them: the wire record and its validation.

use apitrail_model::request_log::rules;
use apitrail_model::time::ingest_window;
use apitrail_model::{AuditEntry, Timestamp, new_record_id};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Ingestible, Limits, Parsed, Problems};

/// An audit event as posted to ingest. Unknown fields are refused by name. Optional text
/// fields take null or the empty string for "absent"; text limits are in bytes (UTF-8).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestAuditEvent {
    /// A UUID; re-sending a stored id is a no-op, so retries are safe. Generated when absent.
    /// Unique within a batch.
    #[schema(schema_with = crate::openapi::record_id)]
    id: Option<String>,
    /// Required with the operator token (an existing org); with an org key it defaults to
    /// the key's org, and any other org is refused (403).
    org_id: Option<String>,
    /// The acting user.
    #[schema(max_length = 1024)]
    user_id: Option<String>,
    /// What was done, e.g. create, update, delete.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 1024)]
    action: Option<String>,
    /// What kind of resource, e.g. source, destination.
    #[schema(required = true, nullable = false, min_length = 1, max_length = 1024)]
    resource_type: Option<String>,
    /// The resource's id.
    #[schema(max_length = 1024)]
    resource_id: Option<String>,
    /// What changed: a string, or any JSON (stored as its JSON text); at most 64 KiB by
    /// default (refused beyond, never cut). Never put secrets here.
    #[schema(required = false, value_type = Value)]
    details: Option<Box<RawValue>>,
    /// The actor's IPv4 or IPv6 address.
    #[schema(schema_with = crate::openapi::ingest_ip)]
    ip_address: Option<String>,
    /// The request that made the change, linking the entry to its request log.
    #[schema(max_length = 1024)]
    request_id: Option<String>,
    /// RFC 3339 with offset; defaults to the time of ingest.
    #[schema(schema_with = crate::openapi::ingest_date_time)]
    created_at: Option<String>,
}

impl Ingestible for AuditEntry {
    type Wire = IngestAuditEvent;

    fn id(&self) -> Uuid {
        self.id
    }

    fn validate(rec: IngestAuditEvent, limits: &Limits) -> Parsed<Self> {
        let mut problems: Problems = Vec::new();
        let mut bad =
            |field: &str, msg: &str| problems.push((Some(field.to_owned()), msg.to_owned()));
        let id = match rec.id.as_deref() {
            None | Some("") => new_record_id(),
            Some(s) => Uuid::try_parse(s).unwrap_or_else(|_| {
                bad("id", "must be a UUID");
                Uuid::nil()
            }),
        };
        let created_at = match rec.created_at.as_deref() {
            None | Some("") => limits.now,
            Some(s) => Timestamp::parse(s)
                .map_err(|e| e.to_string())
                .and_then(|t| ingest_window(t, limits.now))
                .unwrap_or_else(|e| {
                    bad("created_at", &e);
                    limits.now
                }),
        };
        let ip_address = match rec.ip_address.as_deref() {
            None | Some("") => None,
            Some(s) => rules::ip(s)
                .map(|ip| ip.to_string())
                .map_err(|e| bad("ip_address", e))
                .ok(),
        };
        // A string is kept as its content; any other JSON as the text the client wrote (keys in
        // their order, numbers digit for digit: a round trip through `Value` would sort the
        // keys and pass numbers through f64), without the whitespace between tokens.
        let details = match rec.details.as_deref().map(RawValue::get) {
            None | Some("null") => None,
            Some(raw) if raw.starts_with('"') => match serde_json::from_str::<String>(raw) {
                // Like every other optional text field, "" means absent.
                Ok(s) => (!s.is_empty()).then_some(s),
                Err(_) => {
                    bad("details", "must be a string or any JSON");
                    None
                }
            },
            Some(raw) => Some(compact_json(raw)),
        };
        // An audit trail is not truncated: an oversized entry is refused, never cut.
        let details = match details {
            Some(d) if d.len() > limits.body_cap => {
                bad(
                    "details",
                    &format!("must be at most {} bytes", limits.body_cap),
                );
                None
            }
            d => d,
        };
        let mut text = |field: &str, v: Option<String>, required: bool| match v {
            None => {
                if required {
                    bad(field, "is required");
                }
                None
            }
            Some(s) if s.is_empty() => {
                if required {
                    bad(field, "must not be empty");
                }
                None
            }
            Some(s) if s.len() > rules::MAX_TEXT => {
                bad(field, &format!("must be at most {} bytes", rules::MAX_TEXT));
                None
            }
            v => v,
        };
        let entry = AuditEntry {
            id,
            user_id: text("user_id", rec.user_id, false),
            action: text("action", rec.action, true).unwrap_or_default(),
            resource_type: text("resource_type", rec.resource_type, true).unwrap_or_default(),
            resource_id: text("resource_id", rec.resource_id, false),
            details,
            ip_address,
            request_id: text("request_id", rec.request_id, false),
            created_at,
        };
        let org_id = super::empty_org_id(rec.org_id, &mut problems);
        Parsed {
            org_id,
            record: if problems.is_empty() {
                Ok(entry)
            } else {
                Err(problems)
            },
        }
    }
}

/// Valid JSON text without the whitespace between its tokens (whitespace inside strings is
/// content and stays).
fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            out.push(c);
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::ingest::parse_record;

    /// The server's clock in these tests: 2026-01-01T00:00:00Z.
    const NOW_MS: i64 = 1_767_225_600_000;

    fn parse(raw: &str) -> Result<AuditEntry, Problems> {
        let limits = Limits {
            body_cap: 16,
            now: Timestamp::from_millis(NOW_MS).unwrap_or_default(),
        };
        parse_record::<AuditEntry>(raw, &limits).record
    }

    fn fields(raw: &str) -> Vec<Option<String>> {
        let mut f: Vec<_> = parse(raw)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        f.sort();
        f
    }

    #[test]
    fn created_at_lies_in_the_ingest_window() {
        for at in [
            "9999-12-31T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2026-01-01T00:10:00Z",
        ] {
            let raw = format!(r#"{{"action":"a","resource_type":"r","created_at":"{at}"}}"#);
            assert_eq!(fields(&raw), vec![Some("created_at".to_owned())], "{at}");
        }
        let raw = r#"{"action":"a","resource_type":"r","created_at":"2025-12-31T23:00:00+01:00"}"#;
        assert!(parse(raw).is_ok());
    }

    #[test]
    fn a_minimal_event_gets_defaults() {
        let e = parse(r#"{"action":"create","resource_type":"source"}"#).expect("valid");
        assert_eq!(e.created_at.millis(), NOW_MS);
        assert_eq!(e.id.get_version_num(), 7);
        assert_eq!(
            (e.user_id, e.resource_id, e.details, e.ip_address),
            (None, None, None, None)
        );
    }

    #[test]
    fn details_keep_strings_and_store_json_as_text() {
        let e = parse(r#"{"action":"a","resource_type":"r","details":"plain"}"#).expect("valid");
        assert_eq!(e.details.as_deref(), Some("plain"));
        let e =
            parse(r#"{"action":"a","resource_type":"r","details":{"b":[1,true]}}"#).expect("valid");
        assert_eq!(e.details.as_deref(), Some(r#"{"b":[1,true]}"#));
        // The client's text (within the 16-byte cap here): key order, number spelling and
        // string content kept, whitespace between tokens dropped.
        let e = parse(
            "{\"action\":\"a\",\"resource_type\":\"r\",\"details\":{ \"z\" : 1e2,\n \"a\":0 }}",
        )
        .expect("valid");
        assert_eq!(e.details.as_deref(), Some(r#"{"z":1e2,"a":0}"#));
        let e =
            parse(r#"{"action":"a","resource_type":"r","details":[ "a \" b" ]}"#).expect("valid");
        assert_eq!(e.details.as_deref(), Some(r#"["a \" b"]"#));
        let e =
            parse(r#"{"action":"a","resource_type":"r","details":123456789012}"#).expect("valid");
        assert_eq!(e.details.as_deref(), Some("123456789012"));
        let e = parse(r#"{"action":"a","resource_type":"r","details":null}"#).expect("valid");
        assert_eq!(e.details, None);
        let e = parse(r#"{"action":"a","resource_type":"r","ip_address":"2001:DB8::1"}"#)
            .expect("valid");
        assert_eq!(e.ip_address.as_deref(), Some("2001:db8::1"));
    }

    #[test]
    fn every_problem_is_reported_by_field() {
        assert_eq!(
            fields(
                r#"{"id":"x","ip_address":"nope","created_at":"2024-01-01","details":"0123456789abcdefg"}"#
            ),
            vec![
                Some("action".into()),
                Some("created_at".into()),
                Some("details".into()),
                Some("id".into()),
                Some("ip_address".into()),
                Some("resource_type".into()),
            ]
        );
        assert_eq!(
            fields(r#"{"action":"","resource_type":"r","colour":1,"user_id":5}"#),
            vec![
                Some("action".into()),
                Some("colour".into()),
                Some("user_id".into())
            ]
        );
        // JSON details pass the field-by-field diagnosis too: only the unknown field is named.
        assert_eq!(
            fields(r#"{"action":"a","resource_type":"r","colour":1,"details":{"x":[1]}}"#),
            vec![Some("colour".into())]
        );
    }
}

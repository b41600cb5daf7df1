//! A remote `apitrail serve` as the sink: records go in NDJSON batches to its ingest API
//! (SPEC §4), under ids the proxy minted, so a batch sent again after a lost answer never
//! creates duplicates (ingest counts them as such).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apitrail_model::{OrgId, RequestLog};
use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::sink::{Captured, Sink, Written};

/// Most records per ingest call (ingest takes 10,000).
const MAX_RECORDS: usize = 5_000;
/// Most bytes per ingest call (ingest takes 16 MiB).
const MAX_BYTES: usize = 15 * 1024 * 1024;
/// The first wait before a retry; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The ingest API of a remote `serve`.
#[derive(Debug)]
pub struct RemoteSink {
    client: reqwest::Client,
    url: String,
    key: Key,
    /// How long a batch is retried before it is given up (counted as failed).
    patience: Duration,
}

/// The ingest key; its `Debug` never shows it.
struct Key(String);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl RemoteSink {
    /// A sink posting to `base` (`https://apitrail.internal:8080`, the server's address)
    /// with `key` (an org key with scope `write`, or the operator token); a batch is retried
    /// with backoff for `patience` before it is given up.
    pub fn new(base: &str, key: &str, patience: Duration) -> Result<Self, String> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("{base:?} must start with http:// or https://"));
        }
        if key.is_empty() {
            return Err("an ingest key is required".into());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Self {
            client,
            url: format!("{base}/v1/ingest/requests"),
            key: Key(key.to_owned()),
            patience,
        })
    }

    /// Sends one org's records, chunked under ingest's limits.
    async fn send_org(&self, org: &OrgId, logs: Vec<RequestLog>, written: &mut Written) {
        let mut lines: Vec<String> = logs.iter().map(|l| line(org, l)).collect();
        while !lines.is_empty() {
            let mut bytes = 0;
            let mut n = 0;
            while n < lines.len()
                && n < MAX_RECORDS
                && (n == 0 || bytes + lines[n].len() < MAX_BYTES)
            {
                bytes += lines[n].len() + 1;
                n += 1;
            }
            let chunk: Vec<String> = lines.drain(..n).collect();
            self.send(chunk, written).await;
        }
    }

    /// Sends one batch, retrying what may succeed later; records ingest refuses by name
    /// (an org it does not know) are left out and the rest sent again.
    async fn send(&self, mut lines: Vec<String>, written: &mut Written) {
        let deadline = Instant::now() + self.patience;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let body = lines.join("\n");
            let sent = self
                .client
                .post(&self.url)
                .bearer_auth(&self.key.0)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await;
            let retry = match sent {
                Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => {
                    let answer: Value = resp.json().await.unwrap_or_default();
                    let stored = answer["accepted"].as_u64().unwrap_or(0)
                        + answer["duplicates"].as_u64().unwrap_or(0);
                    written.recorded += stored;
                    written.failed += (lines.len() as u64).saturating_sub(stored);
                    return;
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::BAD_REQUEST => {
                    let answer: Value = resp.json().await.unwrap_or_default();
                    let refused = refused_records(&answer);
                    if refused.is_empty() {
                        tracing::warn!(error = %answer["error"]["message"], records = lines.len(),
                            "the ingest API refused a batch of captured records");
                        written.failed += lines.len() as u64;
                        return;
                    }
                    for (index, field) in refused.iter().rev() {
                        if *index < lines.len() {
                            lines.remove(*index);
                            if field == "org_id" {
                                written.unknown_org += 1;
                            } else {
                                written.failed += 1;
                            }
                        }
                    }
                    if lines.is_empty() {
                        return;
                    }
                    continue;
                }
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || resp.status() == reqwest::StatusCode::REQUEST_TIMEOUT =>
                {
                    format!("the ingest API answered {}", resp.status())
                }
                Ok(resp) => {
                    // 401, 403, 413…: sending again cannot help.
                    tracing::warn!(status = %resp.status(), records = lines.len(),
                        "the ingest API refused captured records; check --ingest-key");
                    written.failed += lines.len() as u64;
                    return;
                }
                Err(e) => format!("cannot reach the ingest API: {e}"),
            };
            if Instant::now() + backoff > deadline {
                tracing::warn!(reason = %retry, records = lines.len(),
                    "giving up a batch of captured records");
                written.failed += lines.len() as u64;
                return;
            }
            tracing::debug!(reason = %retry, wait_ms = backoff.as_millis() as u64, "retrying a batch");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[async_trait]
impl Sink for RemoteSink {
    async fn write(&self, batch: Vec<Captured>) -> Written {
        let mut by_org: BTreeMap<OrgId, Vec<RequestLog>> = BTreeMap::new();
        for c in batch {
            by_org.entry(c.org).or_default().push(c.log);
        }
        let mut written = Written::default();
        // One call per org: an org key may only write its own org, and a refusal of one
        // org's records must not cost the others theirs.
        for (org, logs) in by_org {
            self.send_org(&org, logs, &mut written).await;
        }
        written
    }
}

/// `(index, field)` of each record an ingest `400 invalid_records` names, ascending.
fn refused_records(answer: &Value) -> Vec<(usize, String)> {
    let mut refused: Vec<(usize, String)> = answer["error"]["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .filter_map(|d| {
                    let index = usize::try_from(d["index"].as_u64()?).ok()?;
                    Some((index, d["field"].as_str().unwrap_or_default().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    refused.sort();
    refused.dedup_by_key(|(i, _)| *i);
    refused
}

/// One record as an NDJSON line of the ingest API.
fn line(org: &OrgId, log: &RequestLog) -> String {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            m.insert(k.to_owned(), v);
        }
    };
    put("id", json!(log.id.to_string()));
    put("org_id", json!(org.as_str()));
    put("request_id", json!(log.request_id));
    put("method", json!(log.method));
    put("path", json!(log.path));
    put("query", json!(log.query));
    put("route_pattern", json!(log.route_pattern));
    put("status_code", json!(log.status_code));
    put("error_code", json!(log.error_code));
    put("duration_ms", json!(log.duration_ms));
    put("started_at", json!(log.started_at.map(|t| t.to_rfc3339())));
    put(
        "completed_at",
        json!(log.completed_at.map(|t| t.to_rfc3339())),
    );
    put("created_at", json!(log.created_at.to_rfc3339()));
    put("client_ip", json!(log.client_ip.map(|ip| ip.to_string())));
    put("user_agent", json!(log.user_agent));
    put("origin", json!(log.origin));
    put("auth_type", json!(log.auth_type));
    put("principal_type", json!(log.principal_type));
    put("principal_id", json!(log.principal_id));
    put("user_id", json!(log.user_id));
    put("email", json!(log.email));
    put("api_key_id", json!(log.api_key_id));
    put("service_account_id", json!(log.service_account_id));
    put("request_body", json!(log.request_body));
    put("response_body", json!(log.response_body));
    if let Some(metadata) = log
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
    {
        put("metadata", metadata);
    }
    Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_ingest_lines_without_absent_fields() {
        let log = RequestLog {
            method: "GET".into(),
            path: "/a".into(),
            status_code: 200,
            metadata: Some(r#"{"credential_fingerprint":"ab"}"#.into()),
            ..RequestLog::default()
        };
        let v: Value = serde_json::from_str(&line(&OrgId::parse("acme").unwrap(), &log)).unwrap();
        assert_eq!(v["org_id"], "acme");
        assert_eq!(v["status_code"], 200);
        assert_eq!(v["metadata"]["credential_fingerprint"], "ab");
        assert!(v.get("query").is_none() && v.get("request_body").is_none());
        assert!(RemoteSink::new("ftp://x", "k", Duration::ZERO).is_err());
        assert!(RemoteSink::new("http://x", "", Duration::ZERO).is_err());
        assert_eq!(format!("{:?}", Key("secret".into())), "Key(..)");
    }

    #[test]
    fn refusals_are_read_from_the_details() {
        let answer = json!({"error": {"code": "invalid_records", "details": [
            {"index": 3, "field": "org_id", "message": "unknown"},
            {"index": 1, "field": "path", "message": "x"},
            {"index": 3, "field": "path", "message": "y"}]}});
        assert_eq!(
            refused_records(&answer),
            [(1, "path".to_owned()), (3, "org_id".to_owned())]
        );
    }
}

//! Helpers shared by the auth, isolation, ingest and admin suites (not by the logs suites).
//! Each test crate uses a different subset, hence the `dead_code` allowance.

#![allow(dead_code, clippy::unwrap_used)]

use apitrail_model::{AuditEntry, OrgId, RequestLog, Tenant};
use apitrail_testkit::{TestServer, expect};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// The four ways a client may present an org API key (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Bearer,
    XApiKey,
    Arklow,
    Cookie,
}

impl Carrier {
    pub const ALL: [Carrier; 4] = [
        Carrier::Bearer,
        Carrier::XApiKey,
        Carrier::Arklow,
        Carrier::Cookie,
    ];

    /// Attaches `secret` to `rb` with this carrier.
    pub fn apply(self, rb: RequestBuilder, secret: &str) -> RequestBuilder {
        match self {
            Carrier::Bearer => rb.header("authorization", format!("Bearer {secret}")),
            Carrier::XApiKey => rb.header("x-api-key", secret),
            Carrier::Arklow => rb.header("x-arklow-auth", secret),
            Carrier::Cookie => rb.header(
                "cookie",
                format!("theme=dark; better-auth.session_token={secret}; lang=en"),
            ),
        }
    }

    /// The `auth_type` a self-logged call made with this carrier is recorded with.
    pub fn auth_type(self) -> &'static str {
        match self {
            Carrier::Cookie => "session",
            _ => "api_key",
        }
    }
}

/// Sends `rb` and returns status, headers and the JSON body (`Null` when empty or not JSON).
pub async fn send(rb: RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let resp = rb.send().await.unwrap();
    split(resp).await
}

/// Status, headers and the JSON body (`Null` when empty), and the raw text in `Value::String`
/// when the body is not JSON.
pub async fn split(resp: Response) -> (StatusCode, HeaderMap, Value) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, headers, body)
}

/// A minimal valid request-log record.
pub fn rec(path: &str) -> Value {
    json!({"method": "GET", "path": path, "status_code": 200})
}

/// Every request log of the key's org visible through `/v1/logs`, walking every page.
pub async fn all_logs(server: &TestServer, secret: &str) -> Vec<Value> {
    all_logs_where(server, secret, "").await
}

/// Every request log matching `query` (without `limit`/`cursor`), walking every page.
pub async fn all_logs_where(server: &TestServer, secret: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut q = format!("limit=100&{query}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = server.logs(secret, &q).await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) if page["pagination"]["has_more"] == true => cursor = Some(c.to_owned()),
            _ => return out,
        }
    }
    panic!("pagination did not terminate");
}

/// The store's handle of an existing org.
pub async fn tenant(server: &TestServer, org: &str) -> Tenant {
    server
        .store
        .tenant(&OrgId::parse(org).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("org {org} does not exist"))
}

/// The org's newest audit entries (at most 100), newest first.
pub async fn audit_entries(server: &TestServer, org: &str) -> Vec<AuditEntry> {
    let t = tenant(server, org).await;
    server
        .store
        .list_audit_entries(&t, &Default::default(), None, 100)
        .await
        .unwrap()
        .items
}

/// How many request logs the org holds, looked up behind the API.
pub async fn stored_count(server: &TestServer, org: &str) -> u64 {
    let t = tenant(server, org).await;
    server.store.count_request_logs(&t).await.unwrap()
}

/// One stored request log, looked up behind the API (for fields `/v1/logs` does not print).
pub async fn stored_log(server: &TestServer, org: &str, id: &str) -> Option<RequestLog> {
    let t = tenant(server, org).await;
    server
        .store
        .get_request_log(&t, Uuid::parse_str(id).unwrap())
        .await
        .unwrap()
}

/// Whether `secret` currently authenticates (`GET /v1/logs` answers 200, or 403 for a key
/// without the read scope, rather than 401).
pub async fn key_works(server: &TestServer, secret: &str) -> bool {
    let resp = server.get("/v1/logs?limit=1", secret).send().await.unwrap();
    match resp.status() {
        StatusCode::OK | StatusCode::FORBIDDEN => true,
        StatusCode::UNAUTHORIZED => false,
        other => panic!("unexpected {other}: {}", resp.text().await.unwrap()),
    }
}

/// Ingests `records` with the operator token, expecting `status`.
pub async fn operator_ingest(server: &TestServer, records: &Value, status: StatusCode) -> Value {
    let resp = server
        .operator(reqwest::Method::POST, "/v1/ingest/requests")
        .json(records)
        .send()
        .await
        .unwrap();
    expect(resp, status).await
}

/// The `(index, field)` pairs of an `invalid_records` error, after checking its envelope.
pub fn detail_pairs(body: &Value) -> Vec<(u64, Option<String>)> {
    assert_eq!(body["error"]["code"], "invalid_records", "{body}");
    let details = body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details: {body}"));
    assert!(!details.is_empty(), "{body}");
    details
        .iter()
        .map(|d| {
            let obj = d.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["field", "index", "message"], "{d}");
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
            assert!(d["field"].is_null() || d["field"].is_string(), "{d}");
            (
                d["index"].as_u64().unwrap(),
                d["field"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

//! The OpenAPI document is generated from the code, committed as `docs/openapi.json`, and
//! must stay current: this test fails when the two differ. Regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p apitrail-api --test it openapi::`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use apitrail_testkit::{TestServer, expect};
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn committed_openapi_is_current() {
    let generated = apitrail_api::openapi::document();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is stale; run UPDATE_OPENAPI=1 cargo test -p apitrail-api --test it openapi::"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_document_describes_every_route() {
    let server = TestServer::start().await;
    let resp = server
        .request(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap();
    let doc: Value = expect(resp, StatusCode::OK).await;
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/logs", "get"),
        ("/v1/ingest/requests", "post"),
        ("/admin/v1/orgs", "post"),
        ("/admin/v1/orgs", "get"),
        ("/admin/v1/orgs/{org_id}", "get"),
        ("/admin/v1/orgs/{org_id}/api-keys", "post"),
        ("/admin/v1/orgs/{org_id}/api-keys", "get"),
        ("/admin/v1/orgs/{org_id}/api-keys/{id}", "get"),
        ("/admin/v1/orgs/{org_id}/api-keys/{id}", "delete"),
        ("/v1/api-keys", "post"),
        ("/v1/api-keys", "get"),
        ("/v1/api-keys/{id}", "get"),
        ("/v1/api-keys/{id}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    let logs_params: Vec<&str> = doc["paths"]["/v1/logs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "limit",
        "cursor",
        "method",
        "route_pattern",
        "request_id",
        "auth_type",
        "status_min",
        "status_max",
        "from",
        "to",
        "sort_by",
        "sort_dir",
    ] {
        assert!(
            logs_params.contains(&p),
            "/v1/logs parameter {p} undocumented"
        );
    }
    server.stop().await;
}

/// What schemathesis (scripts/schemathesis) first found missing, kept from coming back: every
/// response documents X-Request-Id; every operation behind a credential documents 400 (two
/// different credentials), 401, 403
/// and 503 with a body; every query
/// parameter allows an empty value (read as absent); every timestamp field is a date-time and
/// every `id` of a native or dialect item a UUID; request bodies refuse unknown fields.
#[test]
fn document_states_statuses_formats_and_constraints() {
    let doc: Value = serde_json::from_str(&apitrail_api::openapi::document()).unwrap();
    let mut secured = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let label = format!("{method} {path}");
            for (code, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["headers"]["X-Request-Id"].is_object(),
                    "{label}: {code} lacks X-Request-Id"
                );
            }
            if op.get("security").is_some() {
                secured += 1;
                for code in ["400", "401", "403", "503"] {
                    let response = &op["responses"][code];
                    assert!(
                        response["content"]["application/json"]["schema"].is_object(),
                        "{label}: {code} undocumented"
                    );
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "query" {
                    assert_eq!(p["allowEmptyValue"], true, "{label}: {}", p["name"]);
                }
            }
            if let Some(body) = op.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"];
                let name = schema["$ref"]
                    .as_str()
                    .or(schema["items"]["$ref"].as_str())
                    .and_then(|r| r.rsplit('/').next())
                    .unwrap_or_else(|| panic!("{label}: body is not a named schema"));
                let body_schema = &doc["components"]["schemas"][name];
                assert_eq!(
                    body_schema["additionalProperties"], false,
                    "{label}: {name}"
                );
            }
        }
    }
    assert!(secured >= 38, "{secured} secured operations");
    let mut timestamps = 0;
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        for (field, prop) in schema["properties"].as_object().into_iter().flatten() {
            let formats: Vec<&str> = std::iter::once(prop)
                .chain(prop["anyOf"].as_array().into_iter().flatten())
                .filter_map(|s| s["format"].as_str())
                .collect();
            if field.ends_with("_at") {
                timestamps += 1;
                assert_eq!(formats, ["date-time"], "{name}.{field}");
            }
            if field == "id"
                && ![
                    "OrgBody",
                    "MeOrg",
                    "CreateOrg",
                    "IngestLog",
                    "IngestAuditEvent",
                ]
                .contains(&name.as_str())
            {
                assert_eq!(formats, ["uuid"], "{name}.{field}");
            }
        }
    }
    assert!(timestamps >= 30, "{timestamps} timestamp fields");
}

//! The native actions routes over HTTP (SPEC §7, §11): signing credentials, webhook
//! destinations (validation per field, SSRF refusal, partial update, soft delete), versioned
//! action definitions (validation, versions, name conflicts), triggering records (names,
//! schema violations, bounds, destination override), signaling, and the self-audit of every
//! mutation (without any secret).
//!
//! Every destination points to a public address so that it passes the SSRF check; the test
//! server runs no dispatcher, so nothing is ever sent there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::reference;

use std::collections::BTreeSet;

use apitrail_testkit::{Options, TestKey, TestServer, header};
use base64::Engine;
use reference::is_utc_millis;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const PUBLIC_URL: &str = "https://93.184.216.34/hooks/in";

const CREDENTIAL_KEYS: [&str; 4] = ["created_at", "id", "label", "org_id"];
const DESTINATION_KEYS: [&str; 10] = [
    "config",
    "created_at",
    "credential_id",
    "deleted_at",
    "id",
    "label",
    "org_id",
    "tags",
    "type",
    "updated_at",
];
const DEFINITION_KEYS: [&str; 10] = [
    "alias",
    "created_at",
    "deleted_at",
    "destinations",
    "id",
    "org_id",
    "schema",
    "updated_at",
    "variant",
    "version",
];
const RECORD_KEYS: [&str; 12] = [
    "action_definition_id",
    "created_at",
    "destination_id",
    "id",
    "input",
    "org_id",
    "request_id",
    "state",
    "tags",
    "timeout",
    "variant",
    "version",
];

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// Sends a call with `secret` (none: unauthenticated) and a JSON body given as text; returns
/// the status, the `X-Request-Id` header and the body.
async fn send(
    server: &TestServer,
    secret: Option<&str>,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (StatusCode, String, Value) {
    let mut rb = server.request(method, path);
    if let Some(s) = secret {
        rb = rb.header("x-api-key", s);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let request_id = header(&resp, "x-request-id").expect("every response has X-Request-Id");
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
    };
    (status, request_id, body)
}

/// A call expected to answer `status`; returns the body.
async fn ok(
    server: &TestServer,
    secret: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    status: StatusCode,
) -> Value {
    let (got, _, v) = send(
        server,
        Some(secret),
        method.clone(),
        path,
        body.map(Value::to_string),
    )
    .await;
    assert_eq!(got, status, "{method} {path} {body:?}: {v}");
    v
}

async fn create(server: &TestServer, secret: &str, path: &str, body: &Value) -> Value {
    ok(
        server,
        secret,
        Method::POST,
        path,
        Some(body),
        StatusCode::CREATED,
    )
    .await
}

async fn get(server: &TestServer, secret: &str, path: &str) -> Value {
    ok(server, secret, Method::GET, path, None, StatusCode::OK).await
}

/// Checks a native error envelope and returns it.
fn check_native(body: &Value, request_id: &str, code: &str) {
    assert_eq!(keys(body), ["error", "request_id"], "{body}");
    assert_eq!(body["request_id"], request_id, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A call expected to fail with `status` and `code` in the native envelope.
async fn fails(
    server: &TestServer,
    secret: Option<&str>,
    method: Method,
    path: &str,
    body: Option<String>,
    status: StatusCode,
    code: &str,
) -> Value {
    let (got, request_id, v) = send(server, secret, method.clone(), path, body.clone()).await;
    assert_eq!(got, status, "{method} {path} {body:?}: {v}");
    check_native(&v, &request_id, code);
    v
}

/// A body refused with 400 `invalid_request`; returns the fields of its details, in order,
/// after checking that `param` is the first of them and that each has a message.
async fn invalid(
    server: &TestServer,
    secret: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> Vec<String> {
    let v = fails(
        server,
        Some(secret),
        method,
        path,
        Some(body.to_string()),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let details = v["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details: {v}"));
    assert!(!details.is_empty(), "{v}");
    let fields: Vec<String> = details
        .iter()
        .map(|d| {
            assert_eq!(keys(d), ["field", "message"], "{d}");
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
            d["field"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(v["error"]["param"], fields[0].as_str(), "{v}");
    fields
}

/// A body whose syntax or types are refused before validation: 400 naming `param`.
async fn malformed(
    server: &TestServer,
    secret: &str,
    method: Method,
    path: &str,
    body: String,
    param: &str,
) {
    let v = fails(
        server,
        Some(secret),
        method,
        path,
        Some(body),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(v["error"]["param"], param, "{v}");
}

fn with(base: &Value, patch: &Value) -> Value {
    let mut out = base.clone();
    merge(&mut out, patch);
    out
}

/// JSON merge patch (RFC 7396): `null` removes a key.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if v.is_object() && t.get(k).is_some_and(Value::is_object) {
                    merge(t.get_mut(k).unwrap(), v);
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

fn check_time(v: &Value) {
    assert!(v.as_str().is_some_and(is_utc_millis), "{v}");
}

async fn destination(server: &TestServer, secret: &str, label: &str) -> String {
    let body = json!({"label": label, "config": {"url": PUBLIC_URL}});
    id_of(&create(server, secret, "/v1/destinations", &body).await)
}

/// A definition's body linking `destinations` (the first is the default).
fn definition_body(variant: &str, alias: &[&str], schema: &Value, destinations: &[&str]) -> Value {
    let links: Vec<Value> = destinations
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"destination_id": d, "is_default": i == 0}))
        .collect();
    json!({"variant": variant, "alias": alias, "schema": schema, "destinations": links})
}

fn actions_path(key: &TestKey) -> String {
    format!("/v1/orgs/{}/actions", key.org_id)
}

// ---------------------------------------------------------------------------------------------
// Credentials.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_show_their_secret_once() {
    let server = TestServer::start().await;
    let key = server.org_with_key("cred-org").await;
    let s = key.secret.as_str();
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for label in ["signing", "rotation"] {
        let c = create(&server, s, "/v1/credentials", &json!({"label": label})).await;
        let mut want = CREDENTIAL_KEYS.to_vec();
        want.push("secret");
        want.sort_unstable();
        assert_eq!(keys(&c), want, "{c}");
        assert_eq!(c["label"], label);
        assert_eq!(c["org_id"], "cred-org");
        check_time(&c["created_at"]);
        assert_eq!(Uuid::parse_str(&id_of(&c)).unwrap().get_version_num(), 7);
        let secret = c["secret"].as_str().unwrap().to_owned();
        let raw = secret.strip_prefix("whsec_").expect("whsec_ prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .expect("base64 after whsec_");
        assert!(bytes.len() >= 24, "{secret}");
        secrets.push(secret);
        ids.push(id_of(&c));
    }
    assert_ne!(secrets[0], secrets[1]);
    // Listed without their secrets, and the secrets appear nowhere.
    let (status, _, list) = send(&server, Some(s), Method::GET, "/v1/credentials", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&list), ["data", "pagination"]);
    let listed: Vec<&Value> = list["data"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 2);
    for item in &listed {
        assert_eq!(keys(item), CREDENTIAL_KEYS, "{item}");
    }
    let listed_ids: BTreeSet<String> = listed.iter().map(|c| id_of(c)).collect();
    assert_eq!(listed_ids, ids.iter().cloned().collect());
    for secret in &secrets {
        assert!(!list.to_string().contains(secret.as_str()));
        assert!(!list.to_string().contains(&secret["whsec_".len()..]));
    }
    // Validation.
    let path = "/v1/credentials";
    for body in [
        json!({}),
        json!({"label": ""}),
        json!({"label": "   "}),
        json!({"label": "x".repeat(1001)}),
    ] {
        assert_eq!(
            invalid(&server, s, Method::POST, path, &body).await,
            ["label"]
        );
    }
    malformed(
        &server,
        s,
        Method::POST,
        path,
        json!({"label": "x", "secret": "whsec_mine"}).to_string(),
        "secret",
    )
    .await;
    fails(
        &server,
        Some(s),
        Method::POST,
        path,
        Some("{not json".into()),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    // Scopes and authentication.
    let rw = server.create_key("cred-org", &["read", "write"]).await;
    for method in [Method::GET, Method::POST] {
        fails(
            &server,
            Some(&rw.secret),
            method.clone(),
            path,
            Some(json!({"label": "x"}).to_string()),
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        fails(
            &server,
            None,
            method,
            path,
            Some(json!({"label": "x"}).to_string()),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    // Another org sees none of them.
    let other = server.org_with_key("cred-other").await;
    assert_eq!(get(&server, &other.secret, path).await["data"], json!([]));
    assert_eq!(
        get(&server, s, path).await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Destinations.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_check_every_field() {
    let server = TestServer::start().await;
    let key = server.org_with_key("dest-org").await;
    let s = key.secret.as_str();
    let path = "/v1/destinations";
    let base = json!({"label": "hook", "type": "webhook", "config": {"url": PUBLIC_URL}});
    let d = create(&server, s, path, &base).await;
    assert_eq!(keys(&d), DESTINATION_KEYS, "{d}");
    assert_eq!(d["org_id"], "dest-org");
    assert_eq!(d["type"], "webhook");
    assert_eq!(
        d["config"],
        json!({"url": PUBLIC_URL, "headers": {}, "signaling": {"enabled": false, "default": "ack"},
               "response_time_sla_ms": 10_000})
    );
    assert!(d["credential_id"].is_null() && d["deleted_at"].is_null());
    assert_eq!(d["tags"], json!({}));
    check_time(&d["created_at"]);
    assert_eq!(d["created_at"], d["updated_at"]);
    assert_eq!(get(&server, s, &format!("{path}/{}", id_of(&d))).await, d);

    let other = server.org_with_key("dest-other").await;
    let foreign_cred = id_of(
        &create(
            &server,
            &other.secret,
            "/v1/credentials",
            &json!({"label": "theirs"}),
        )
        .await,
    );
    let many_tags: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("t{i}"), json!("v"))).collect();
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"label": null}), vec!["label"]),
        (json!({"label": ""}), vec!["label"]),
        (json!({"label": "x".repeat(1001)}), vec!["label"]),
        (json!({"type": "email"}), vec!["type"]),
        (json!({"config": null}), vec!["config", "config.url"]),
        (json!({"config": {"url": null}}), vec!["config.url"]),
        (
            json!({"config": {"url": "ftp://93.184.216.34/x"}}),
            vec!["config.url"],
        ),
        (
            json!({"config": {"url": "93.184.216.34/hook"}}),
            vec!["config.url"],
        ),
        (
            json!({"config": {"url": "http://user:pw@93.184.216.34/"}}),
            vec!["config.url"],
        ),
        (
            json!({"config": {"url": "http://93.184.216.34:0/"}}),
            vec!["config.url"],
        ),
        (
            json!({"config": {"url": "http:///hook"}}),
            vec!["config.url"],
        ),
        (
            json!({"config": {"url": "http://93.184.216.34/a b"}}),
            vec!["config.url"],
        ),
        (
            json!({"config": {"headers": {"Webhook-Signature": "v1,forged"}}}),
            vec!["config.headers.Webhook-Signature"],
        ),
        (
            json!({"config": {"headers": {"webhook-id": "x", "X-Ok": "1"}}}),
            vec!["config.headers.webhook-id"],
        ),
        (
            json!({"config": {"headers": {"WEBHOOK-TIMESTAMP": "1"}}}),
            vec!["config.headers.WEBHOOK-TIMESTAMP"],
        ),
        (
            json!({"config": {"headers": {"Content-Type": "text/plain"}}}),
            vec!["config.headers.Content-Type"],
        ),
        (
            json!({"config": {"headers": {"content-length": "1"}}}),
            vec!["config.headers.content-length"],
        ),
        (
            json!({"config": {"headers": {"Host": "evil.example"}}}),
            vec!["config.headers.Host"],
        ),
        (
            json!({"config": {"headers": {"bad header": "x"}}}),
            vec!["config.headers.bad header"],
        ),
        (
            json!({"config": {"headers": {"X-Bad": "a\nb"}}}),
            vec!["config.headers.X-Bad"],
        ),
        (
            json!({"config": {"response_time_sla_ms": 0}}),
            vec!["config.response_time_sla_ms"],
        ),
        (
            json!({"config": {"response_time_sla_ms": 120_001}}),
            vec!["config.response_time_sla_ms"],
        ),
        (
            json!({"config": {"signaling": {"enabled": true, "default": "nack"}}}),
            vec!["config.signaling.default"],
        ),
        (
            json!({"credential_id": Uuid::now_v7().to_string()}),
            vec!["credential_id"],
        ),
        (json!({"credential_id": "nope"}), vec!["credential_id"]),
        (
            json!({"credential_id": foreign_cred}),
            vec!["credential_id"],
        ),
        (json!({"tags": many_tags}), vec!["tags"]),
        // Every problem at once is listed, each under its field.
        (
            json!({"label": "", "config": {"url": "ftp://x", "response_time_sla_ms": 0},
                   "credential_id": "nope"}),
            vec![
                "label",
                "config.url",
                "config.response_time_sla_ms",
                "credential_id",
            ],
        ),
    ];
    for (patch, want) in &cases {
        let body = with(&base, patch);
        let got = invalid(&server, s, Method::POST, path, &body).await;
        assert_eq!(got, *want, "{body}");
    }
    // Loopback and private addresses need --allow-private-destinations.
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://127.1.2.3/",
        "http://localhost/hook",
        "http://LOCALHOST:9/",
        "http://api.localhost/x",
        "http://10.0.0.5/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
    ] {
        let body = with(&base, &json!({"config": {"url": url}}));
        let v = fails(
            &server,
            Some(s),
            Method::POST,
            path,
            Some(body.to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert_eq!(v["error"]["param"], "config.url", "{url}: {v}");
        assert!(
            v["error"]["details"][0]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-destinations"),
            "{url}: {v}"
        );
    }
    // Types are checked before anything else, naming the field.
    for (body, param) in [
        (
            json!({"label": "x", "config": {"url": PUBLIC_URL, "response_time_sla_ms": -1}}),
            "config.response_time_sla_ms",
        ),
        (
            json!({"label": "x", "config": {"url": PUBLIC_URL, "colour": "red"}}),
            "colour",
        ),
        (
            json!({"label": "x", "config": {"url": PUBLIC_URL}, "colour": "red"}),
            "colour",
        ),
        (json!({"label": 5, "config": {"url": PUBLIC_URL}}), "label"),
        (
            json!({"label": "x", "config": {"url": PUBLIC_URL}, "tags": {"a": 1}}),
            "tags.a",
        ),
    ] {
        malformed(&server, s, Method::POST, path, body.to_string(), param).await;
    }
    // The bounds themselves, and every field set.
    let cred = create(&server, s, "/v1/credentials", &json!({"label": "c"})).await;
    for sla in [1, 120_000] {
        let body = with(&base, &json!({"config": {"response_time_sla_ms": sla}}));
        let v = create(&server, s, path, &body).await;
        assert_eq!(v["config"]["response_time_sla_ms"], sla);
    }
    let full = json!({"label": "full", "type": "webhook",
                      "config": {"url": "http://93.184.216.34:8080/in?x=1",
                                 "headers": {"Authorization": "Bearer abc", "X-Team": "a"},
                                 "signaling": {"enabled": true, "default": "ack"},
                                 "response_time_sla_ms": 2500},
                      "credential_id": cred["id"], "tags": {"env": "prod"}});
    let v = create(&server, s, path, &full).await;
    for k in ["label", "type", "config", "credential_id", "tags"] {
        assert_eq!(v[k], full[k], "{k}: {v}");
    }
    // Nothing refused was stored: the list holds the four made above.
    let list = get(&server, s, path).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 4, "{list}");
    // Scopes.
    let rw = server.create_key("dest-org", &["read", "write"]).await;
    fails(
        &server,
        Some(&rw.secret),
        Method::POST,
        path,
        Some(base.to_string()),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    fails(
        &server,
        Some(&rw.secret),
        Method::GET,
        path,
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_need_the_server_flag() {
    let server = TestServer::start_with(Options {
        allow_private_destinations: true,
        ..Options::default()
    })
    .await;
    let key = server.org_with_key("private-org").await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/x",
        "http://10.0.0.5/",
        "http://[::1]:8080/",
    ] {
        let body = json!({"label": "local", "config": {"url": url}});
        let v = create(&server, &key.secret, "/v1/destinations", &body).await;
        assert_eq!(v["config"]["url"], url);
    }
    // The flag lifts only the address check, not the URL's form.
    let body = json!({"label": "local", "config": {"url": "ftp://127.0.0.1/"}});
    assert_eq!(
        invalid(
            &server,
            &key.secret,
            Method::POST,
            "/v1/destinations",
            &body
        )
        .await,
        ["config.url"]
    );
    server.stop().await;
}

/// The server's `--allow-private-destinations` is recorded with every destination it creates
/// or changes (every dispatcher sharing the store delivers by it), and shown in the audit
/// details, not in the destination's JSON. A destination from before decisions were recorded
/// gets one at its next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_record_the_servers_private_address_decision() {
    for allow in [false, true] {
        let server = TestServer::start_with(Options {
            allow_private_destinations: allow,
            ..Options::default()
        })
        .await;
        let key = server.org_with_key("decision-org").await;
        let s = key.secret.as_str();
        let tenant = server
            .store
            .tenant(&apitrail_model::OrgId::parse("decision-org").unwrap())
            .await
            .unwrap()
            .unwrap();
        let created = create(
            &server,
            s,
            "/v1/destinations",
            &json!({"label": "hook", "config": {"url": PUBLIC_URL}}),
        )
        .await;
        assert_eq!(keys(&created), DESTINATION_KEYS, "not shown: {created}");
        let id = Uuid::parse_str(&id_of(&created)).unwrap();
        let stored = server
            .store
            .get_destination(&tenant, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.allow_private, Some(allow), "recorded at creation");

        // As stored before decisions were recorded.
        let undecided = apitrail_model::Destination {
            allow_private: None,
            ..stored
        };
        let entry = apitrail_model::AuditEntry {
            id: apitrail_model::new_record_id(),
            user_id: None,
            action: "update".into(),
            resource_type: "destination".into(),
            resource_id: Some(id.to_string()),
            details: None,
            ip_address: None,
            request_id: None,
            created_at: undecided.updated_at,
        };
        server
            .store
            .put_destination(&tenant, &undecided, false, &entry)
            .await
            .unwrap();
        let path = format!("/v1/destinations/{id}");
        ok(
            &server,
            s,
            Method::PATCH,
            &path,
            Some(&json!({"label": "renamed"})),
            StatusCode::OK,
        )
        .await;
        let stored = server
            .store
            .get_destination(&tenant, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.allow_private, Some(allow), "recorded by a change");

        let audit = get(
            &server,
            s,
            &format!("/v1/audit-log?resource_type=destination&resource_id={id}"),
        )
        .await;
        let entries = audit["audit_log"].as_array().unwrap();
        let made_here: Vec<Value> = entries
            .iter()
            .filter(|e| e["details"].is_string())
            .map(|e| serde_json::from_str(e["details"].as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(made_here.len(), 2, "create and update: {audit:#}");
        for details in made_here {
            assert_eq!(details["allow_private_addresses"], allow, "{details}");
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_change_in_part_and_delete_softly() {
    let server = TestServer::start().await;
    let key = server.org_with_key("patch-org").await;
    let s = key.secret.as_str();
    let cred = create(&server, s, "/v1/credentials", &json!({"label": "c"})).await;
    let created = create(
        &server,
        s,
        "/v1/destinations",
        &json!({"label": "hook", "config": {"url": PUBLIC_URL,
                "headers": {"Authorization": "Bearer abc"},
                "signaling": {"enabled": true}, "response_time_sla_ms": 5000},
                "credential_id": cred["id"], "tags": {"env": "prod"}}),
    )
    .await;
    let id = id_of(&created);
    let one = format!("/v1/destinations/{id}");
    let mut want = created.clone();
    // Each PATCH changes only what it names.
    for (patch, change) in [
        (json!({"label": "renamed"}), json!({"label": "renamed"})),
        (
            json!({"config": {"response_time_sla_ms": 7000}}),
            json!({"config": {"response_time_sla_ms": 7000}}),
        ),
        (
            json!({"config": {"signaling": {"enabled": false}}}),
            json!({"config": {"signaling": {"enabled": false}}}),
        ),
        (
            json!({"config": {"url": "https://93.184.216.34/v2"}}),
            json!({"config": {"url": "https://93.184.216.34/v2"}}),
        ),
        (
            json!({"config": {"headers": {"X-New": "1"}}}),
            json!({"config": {"headers": {"Authorization": null, "X-New": "1"}}}),
        ),
        (
            json!({"tags": {"env": "staging"}}),
            json!({"tags": {"env": "staging"}}),
        ),
        (
            json!({"credential_id": null}),
            json!({"credential_id": null}),
        ),
        (json!({}), json!({})),
    ] {
        let got = ok(
            &server,
            s,
            Method::PATCH,
            &one,
            Some(&patch),
            StatusCode::OK,
        )
        .await;
        merge(&mut want, &change);
        if want.get("credential_id").is_none() {
            want["credential_id"] = Value::Null;
        }
        let updated = got["updated_at"].as_str().unwrap();
        assert!(updated >= want["updated_at"].as_str().unwrap(), "{got}");
        want["updated_at"] = got["updated_at"].clone();
        assert_eq!(got, want, "after {patch}");
        assert_eq!(get(&server, s, &one).await, want, "after {patch}");
    }
    // A refused PATCH changes nothing.
    for (patch, field) in [
        (
            json!({"config": {"url": "http://127.0.0.1/"}}),
            "config.url",
        ),
        (json!({"label": ""}), "label"),
        (
            json!({"config": {"headers": {"Host": "x"}}}),
            "config.headers.Host",
        ),
        (
            json!({"config": {"response_time_sla_ms": 0}}),
            "config.response_time_sla_ms",
        ),
        (
            json!({"credential_id": Uuid::now_v7().to_string()}),
            "credential_id",
        ),
    ] {
        assert_eq!(
            invalid(&server, s, Method::PATCH, &one, &patch).await,
            [field]
        );
        assert_eq!(get(&server, s, &one).await, want);
    }
    // Unknown ids.
    for bad in [Uuid::now_v7().to_string(), "nope".to_owned()] {
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            fails(
                &server,
                Some(s),
                method,
                &format!("/v1/destinations/{bad}"),
                Some("{}".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            )
            .await;
        }
    }
    // Another org can neither read, change nor delete it.
    let other = server.org_with_key("patch-other").await;
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        fails(
            &server,
            Some(&other.secret),
            method,
            &one,
            Some(json!({"label": "stolen"}).to_string()),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    assert_eq!(get(&server, s, &one).await, want);

    // Soft delete: still readable by id, out of the list unless include_deleted=true.
    let keep = destination(&server, s, "keep").await;
    let deleted = ok(&server, s, Method::DELETE, &one, None, StatusCode::OK).await;
    check_time(&deleted["deleted_at"]);
    assert_eq!(deleted["label"], "renamed");
    let again = get(&server, s, &one).await;
    assert_eq!(again, deleted);
    let listed =
        |v: &Value| -> Vec<String> { v["data"].as_array().unwrap().iter().map(id_of).collect() };
    for query in ["", "?include_deleted=false"] {
        let l = get(&server, s, &format!("/v1/destinations{query}")).await;
        assert_eq!(listed(&l), vec![keep.clone()], "{query}");
    }
    let l = get(&server, s, "/v1/destinations?include_deleted=true").await;
    let all: BTreeSet<String> = listed(&l).into_iter().collect();
    assert_eq!(all, BTreeSet::from([id.clone(), keep.clone()]));
    let item = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap();
    assert_eq!(item["deleted_at"], deleted["deleted_at"]);
    let v = fails(
        &server,
        Some(s),
        Method::GET,
        "/v1/destinations?include_deleted=yes",
        None,
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
    )
    .await;
    assert_eq!(v["error"]["param"], "include_deleted");
    // A deleted destination cannot change; deleting again changes nothing.
    fails(
        &server,
        Some(s),
        Method::PATCH,
        &one,
        Some(json!({"label": "back"}).to_string()),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let twice = ok(&server, s, Method::DELETE, &one, None, StatusCode::OK).await;
    assert_eq!(twice, deleted);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Action definitions.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_checked_versioned_and_free_their_names() {
    let server = TestServer::start().await;
    let key = server.org_with_key("9100").await;
    let s = key.secret.as_str();
    let path = "/v1/action-definitions";
    let d1 = destination(&server, s, "one").await;
    let d2 = destination(&server, s, "two").await;
    let gone = destination(&server, s, "gone").await;
    ok(
        &server,
        s,
        Method::DELETE,
        &format!("/v1/destinations/{gone}"),
        None,
        StatusCode::OK,
    )
    .await;
    let other = server.org_with_key("9200").await;
    let foreign = destination(&server, &other.secret, "theirs").await;
    let v1 = json!({"type": "object", "required": ["to"],
                    "properties": {"to": {"type": "string"}}});
    let base = definition_body("send_email", &["email"], &v1, &[&d1, &d2]);

    // Validation, each problem under its field.
    let link = |d: &str| json!({"destination_id": d});
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"schema": {"type": "nonsense"}}), vec!["schema"]),
        (json!({"schema": {"minimum": "x"}}), vec!["schema"]),
        (json!({"schema": {"required": "to"}}), vec!["schema"]),
        (json!({"schema": "a string"}), vec!["schema"]),
        (json!({"schema": 5}), vec!["schema"]),
        (json!({"schema": [1]}), vec!["schema"]),
        (
            json!({"schema": {"$ref": "https://schemas.invalid/x.json"}}),
            vec!["schema"],
        ),
        (json!({"schema": null}), vec!["schema"]),
        (json!({"destinations": []}), vec!["destinations"]),
        (json!({"destinations": null}), vec!["destinations"]),
        (
            json!({"destinations": [link(&Uuid::now_v7().to_string())]}),
            vec!["destinations[0].destination_id"],
        ),
        (
            json!({"destinations": [link("nope")]}),
            vec!["destinations[0].destination_id"],
        ),
        (
            json!({"destinations": [link(&d1), link(&gone)]}),
            vec!["destinations[1].destination_id"],
        ),
        (
            json!({"destinations": [link(&foreign)]}),
            vec!["destinations[0].destination_id"],
        ),
        (
            json!({"destinations": [link(&d1), link(&d1)]}),
            vec!["destinations[1].destination_id"],
        ),
        (
            json!({"destinations": [{"destination_id": d1, "is_default": true},
                                    {"destination_id": d2, "is_default": true}]}),
            vec!["destinations"],
        ),
        (json!({"variant": null}), vec!["variant"]),
        (json!({"variant": ""}), vec!["variant"]),
        (json!({"variant": "has space"}), vec!["variant"]),
        (
            json!({"variant": Uuid::now_v7().to_string()}),
            vec!["variant"],
        ),
        (json!({"variant": "v".repeat(101)}), vec!["variant"]),
        (json!({"alias": ["send_email"]}), vec!["alias[0]"]),
        (json!({"alias": ["email", "email"]}), vec!["alias[1]"]),
        (json!({"alias": ["ok", "bad name"]}), vec!["alias[1]"]),
        (
            json!({"alias": (0..20).map(|i| format!("a{i}")).collect::<Vec<_>>()}),
            vec!["alias"],
        ),
        (
            json!({"variant": "", "schema": {"type": 1}, "destinations": []}),
            vec!["variant", "schema", "destinations"],
        ),
    ];
    for (patch, want) in &cases {
        let body = with(&base, patch);
        assert_eq!(
            invalid(&server, s, Method::POST, path, &body).await,
            *want,
            "{body}"
        );
    }
    malformed(
        &server,
        s,
        Method::POST,
        path,
        with(&base, &json!({"colour": "red"})).to_string(),
        "colour",
    )
    .await;
    assert_eq!(get(&server, s, path).await["data"], json!([]));

    // Created at version 1; 19 aliases are the most.
    let a = create(&server, s, path, &base).await;
    assert_eq!(keys(&a), DEFINITION_KEYS, "{a}");
    assert_eq!(a["version"], 1);
    assert_eq!(a["variant"], "send_email");
    assert_eq!(a["alias"], json!(["email"]));
    assert_eq!(a["schema"], v1);
    assert!(a["deleted_at"].is_null());
    let a_id = id_of(&a);
    let links = a["destinations"].as_array().unwrap();
    assert_eq!(links.len(), 2);
    for (l, (d, default)) in links.iter().zip([(&d1, true), (&d2, false)]) {
        assert_eq!(
            keys(l),
            [
                "action_definition_id",
                "destination_id",
                "id",
                "is_default",
                "org_id"
            ]
        );
        assert_eq!(l["destination_id"], d.as_str());
        assert_eq!(l["is_default"], default);
        assert_eq!(l["action_definition_id"], a_id.as_str());
    }
    let many: Vec<String> = (0..19).map(|i| format!("m{i}")).collect();
    let m = create(
        &server,
        s,
        path,
        &definition_body(
            "many",
            &many.iter().map(String::as_str).collect::<Vec<_>>(),
            &json!(true),
            &[&d1],
        ),
    )
    .await;
    assert_eq!(m["alias"].as_array().unwrap().len(), 19);

    // Names are unique among live definitions: variant or alias, either way round.
    for body in [
        definition_body("send_email", &[], &v1, &[&d1]),
        definition_body("email", &[], &v1, &[&d1]),
        definition_body("other", &["send_email"], &v1, &[&d1]),
        definition_body("other", &["email"], &v1, &[&d1]),
        definition_body("other", &["m7"], &v1, &[&d1]),
    ] {
        fails(
            &server,
            Some(s),
            Method::POST,
            path,
            Some(body.to_string()),
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
    }
    let b = create(
        &server,
        s,
        path,
        &definition_body("charge", &[], &v1, &[&d2]),
    )
    .await;
    let b_path = format!("{path}/{}", id_of(&b));
    for body in [
        definition_body("email", &[], &v1, &[&d2]),
        definition_body("charge", &["send_email"], &v1, &[&d2]),
    ] {
        fails(
            &server,
            Some(s),
            Method::PUT,
            &b_path,
            Some(body.to_string()),
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
    }
    // The same names may be used by another org.
    let theirs = create(
        &server,
        &other.secret,
        path,
        &definition_body("send_email", &["email"], &v1, &[&foreign]),
    )
    .await;
    assert_ne!(id_of(&theirs), a_id);

    // PUT with the same schema (other key order and spacing): same version, new aliases.
    let a_path = format!("{path}/{a_id}");
    let same_schema = format!(
        r#"{{"variant":"send_email","alias":["email","mail"],"schema":{{ "properties" : {{"to":{{"type":"string"}}}}, "type":"object","required":["to"] }},
            "destinations":[{{"destination_id":"{d1}","is_default":true}},{{"destination_id":"{d2}"}}]}}"#
    );
    let (status, _, same) = send(&server, Some(s), Method::PUT, &a_path, Some(same_schema)).await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["version"], 1, "{same}");
    assert_eq!(same["alias"], json!(["email", "mail"]));
    // The links keep their ids when their destinations stay.
    assert_eq!(same["destinations"], a["destinations"]);
    assert_eq!(get(&server, s, &a_path).await, same);
    let r1 = create(
        &server,
        s,
        &actions_path(&key),
        &json!({"action": "mail", "input": {"to": "a@example.com"}}),
    )
    .await;
    assert_eq!(r1["version"], 1);

    // A changed schema is the next version; the old one stays readable.
    let v2 = json!({"type": "object", "required": ["to", "subject"],
                    "properties": {"to": {"type": "string"}, "subject": {"type": "string"}}});
    let put2 = definition_body("send_email", &["email", "mail"], &v2, &[&d1, &d2]);
    let a2 = ok(
        &server,
        s,
        Method::PUT,
        &a_path,
        Some(&put2),
        StatusCode::OK,
    )
    .await;
    assert_eq!(a2["version"], 2);
    assert_eq!(a2["schema"], v2);
    assert_eq!(a2["id"], a_id.as_str());
    assert_eq!(get(&server, s, &a_path).await["version"], 2);
    let old = get(&server, s, &format!("{a_path}?version=1")).await;
    assert_eq!(old["version"], 1);
    assert_eq!(old["schema"], v1);
    assert_eq!(get(&server, s, &format!("{a_path}?version=2")).await, a2);
    fails(
        &server,
        Some(s),
        Method::GET,
        &format!("{a_path}?version=3"),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for bad in ["0", "-1", "abc"] {
        let v = fails(
            &server,
            Some(s),
            Method::GET,
            &format!("{a_path}?version={bad}"),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
        )
        .await;
        assert_eq!(v["error"]["param"], "version");
    }
    // Records keep the version they were made with.
    let input_v1 = json!({"to": "b@example.com"});
    let refused = send(
        &server,
        Some(s),
        Method::POST,
        &actions_path(&key),
        Some(json!({"action": "send_email", "input": input_v1}).to_string()),
    )
    .await;
    assert_eq!(refused.0, StatusCode::BAD_REQUEST, "{}", refused.2);
    let r2 = create(
        &server,
        s,
        &actions_path(&key),
        &json!({"action": "send_email", "input": {"to": "c@example.com", "subject": "hi"}}),
    )
    .await;
    assert_eq!(r2["version"], 2);
    let r3 = create(
        &server,
        s,
        &actions_path(&key),
        &json!({"action": a_id, "version": 1, "input": input_v1}),
    )
    .await;
    assert_eq!(r3["version"], 1);
    let records = get(
        &server,
        s,
        "/v1/orgs/9100/actions/records?include_definition=true&variant=send_email",
    )
    .await;
    let by_id = |id: &Value| -> Value {
        records["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == *id)
            .unwrap()["definition"]
            .clone()
    };
    for (r, version, schema) in [(&r1, 1, &v1), (&r2, 2, &v2), (&r3, 1, &v1)] {
        let d = by_id(&r["id"]);
        assert_eq!(d["version"], version, "{d}");
        assert_eq!(d["schema"], *schema, "{d}");
        assert_eq!(d["id"], a_id.as_str());
    }
    // The list shows latest versions.
    let list = get(&server, s, path).await;
    let versions: Vec<(String, u64)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (id_of(d), d["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(versions.len(), 3, "{list}");
    assert!(versions.contains(&(a_id.clone(), 2)));

    // DELETE: still readable (every version), out of the list, names freed.
    let deleted = ok(&server, s, Method::DELETE, &a_path, None, StatusCode::OK).await;
    check_time(&deleted["deleted_at"]);
    assert_eq!(
        get(&server, s, &a_path).await["deleted_at"],
        deleted["deleted_at"]
    );
    let old = get(&server, s, &format!("{a_path}?version=1")).await;
    assert_eq!(old["schema"], v1);
    assert!(old["deleted_at"].is_string(), "{old}");
    let ids = |v: &Value| -> BTreeSet<String> {
        v["data"].as_array().unwrap().iter().map(id_of).collect()
    };
    assert!(!ids(&get(&server, s, path).await).contains(&a_id));
    assert!(ids(&get(&server, s, &format!("{path}?include_deleted=true")).await).contains(&a_id));
    fails(
        &server,
        Some(s),
        Method::PUT,
        &a_path,
        Some(put2.to_string()),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    for action in ["send_email", "email", a_id.as_str()] {
        let fields = invalid(
            &server,
            s,
            Method::POST,
            &actions_path(&key),
            &json!({"action": action, "input": input_v1}),
        )
        .await;
        assert_eq!(fields, ["action"], "{action}");
    }
    assert_eq!(
        ok(&server, s, Method::DELETE, &a_path, None, StatusCode::OK).await,
        deleted
    );
    let c = create(&server, s, path, &base).await;
    assert_ne!(id_of(&c), a_id);
    assert_eq!(c["version"], 1);
    let r4 = create(
        &server,
        s,
        &actions_path(&key),
        &json!({"action": "email", "input": input_v1}),
    )
    .await;
    assert_eq!(r4["action_definition_id"], c["id"]);
    // Old records still show their (deleted) definition.
    let records = get(
        &server,
        s,
        &format!(
            "/v1/orgs/9100/actions/records?include_definition=true&action_definition_id={a_id}"
        ),
    )
    .await;
    assert_eq!(records["data"]["count"], 3);
    for item in records["data"]["items"].as_array().unwrap() {
        assert!(item["definition"]["deleted_at"].is_string(), "{item}");
    }
    // Unknown ids, and another org's definition, are 404s.
    for bad in [
        Uuid::now_v7().to_string(),
        "nope".to_owned(),
        id_of(&theirs),
    ] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            fails(
                &server,
                Some(s),
                method,
                &format!("{path}/{bad}"),
                Some(base.to_string()),
                StatusCode::NOT_FOUND,
                "not_found",
            )
            .await;
        }
    }
    // Scope admin.
    let rw = server.create_key("9100", &["read", "write"]).await;
    fails(
        &server,
        Some(&rw.secret),
        Method::POST,
        path,
        Some(base.to_string()),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Trigger and signal.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_resolve_names_and_check_the_input() {
    let server = TestServer::start().await;
    let key = server.org_with_key("9300").await;
    let s = key.secret.as_str();
    let d1 = destination(&server, s, "one").await;
    let d2 = destination(&server, s, "two").await;
    let loose = destination(&server, s, "not-linked").await;
    let gone = destination(&server, s, "gone").await;
    ok(
        &server,
        s,
        Method::DELETE,
        &format!("/v1/destinations/{gone}"),
        None,
        StatusCode::OK,
    )
    .await;
    let schema = json!({
        "type": "object",
        "required": ["to", "amount"],
        "additionalProperties": false,
        "properties": {
            "to": {"type": "string"},
            "amount": {"type": "number", "minimum": 0},
            "items": {"type": "array", "items": {
                "type": "object", "required": ["sku"],
                "properties": {"sku": {"type": "string"}}}}
        }
    });
    // The second link is the default.
    let def = create(
        &server,
        s,
        "/v1/action-definitions",
        &json!({"variant": "pay", "alias": ["charge", "bill"], "schema": schema,
                "destinations": [{"destination_id": d1},
                                 {"destination_id": d2, "is_default": true}]}),
    )
    .await;
    let def_id = id_of(&def);
    let path = actions_path(&key);
    let input = json!({"to": "a@example.com", "amount": 1.5, "items": [{"sku": "x"}]});
    let mut made = Vec::new();
    for action in [
        "pay",
        "charge",
        "bill",
        def_id.as_str(),
        &def_id.to_uppercase(),
    ] {
        let (status, request_id, r) = send(
            &server,
            Some(s),
            Method::POST,
            &path,
            Some(json!({"action": action, "input": input}).to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{action}: {r}");
        assert_eq!(keys(&r), RECORD_KEYS, "{r}");
        assert_eq!(r["action_definition_id"], def_id.as_str());
        assert_eq!(r["variant"], "pay");
        assert_eq!(r["version"], 1);
        assert_eq!(r["org_id"], "9300");
        assert_eq!(r["input"], input);
        assert_eq!(r["timeout"], 300);
        assert_eq!(r["tags"], json!({}));
        assert_eq!(r["destination_id"], d2.as_str());
        assert_eq!(r["request_id"], request_id.as_str());
        check_time(&r["created_at"]);
        assert_eq!(r["state"]["status"], "pending");
        assert_eq!(r["state"]["attempt"], 0);
        made.push(id_of(&r));
    }
    // Unknown or missing names, missing input.
    let unknown = [
        json!({"action": "nope", "input": input}),
        json!({"action": Uuid::now_v7().to_string(), "input": input}),
        json!({"action": "", "input": input}),
        json!({"input": input}),
        json!({"action": "PAY", "input": input}),
    ];
    for body in &unknown {
        assert_eq!(
            invalid(&server, s, Method::POST, &path, body).await,
            ["action"],
            "{body}"
        );
    }
    assert_eq!(
        invalid(&server, s, Method::POST, &path, &json!({"action": "pay"})).await,
        ["input"]
    );
    // Schema violations: every one listed, under the path where it is.
    let bad_input = json!({"to": 5, "amount": -1, "items": [{"sku": 1}, {}], "extra": true});
    let (status, _, v) = send(
        &server,
        Some(s),
        Method::POST,
        &path,
        Some(json!({"action": "pay", "input": bad_input}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("pay") && message.contains('1'), "{v}");
    let fields: BTreeSet<&str> = v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
            d["field"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "input",
            "input/amount",
            "input/items/0/sku",
            "input/items/1",
            "input/to"
        ]),
        "{v}"
    );
    for (bad, field) in [
        (json!({"to": "a@example.com"}), "input"),
        (json!("a string"), "input"),
        (json!([1]), "input"),
        (json!({"to": "a", "amount": "1"}), "input/amount"),
    ] {
        let fields = invalid(
            &server,
            s,
            Method::POST,
            &path,
            &json!({"action": "pay", "input": bad}),
        )
        .await;
        assert_eq!(fields, [field], "{bad}");
    }
    // Timeout bounds (seconds, up to a week), tags.
    for timeout in [1, 604_800] {
        let r = create(
            &server,
            s,
            &path,
            &json!({"action": "pay", "input": input, "timeout": timeout}),
        )
        .await;
        assert_eq!(r["timeout"], timeout);
    }
    for timeout in [0, 604_801] {
        assert_eq!(
            invalid(
                &server,
                s,
                Method::POST,
                &path,
                &json!({"action": "pay", "input": input, "timeout": timeout})
            )
            .await,
            ["timeout"]
        );
    }
    malformed(
        &server,
        s,
        Method::POST,
        &path,
        json!({"action": "pay", "input": input, "timeout": -1}).to_string(),
        "timeout",
    )
    .await;
    let many_tags: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("t{i}"), json!("v"))).collect();
    assert_eq!(
        invalid(
            &server,
            s,
            Method::POST,
            &path,
            &json!({"action": "pay", "input": input, "tags": many_tags})
        )
        .await,
        ["tags"]
    );
    // Versions that do not exist.
    for version in [2, 99] {
        assert_eq!(
            invalid(
                &server,
                s,
                Method::POST,
                &path,
                &json!({"action": "pay", "input": input, "version": version})
            )
            .await,
            ["version"]
        );
    }
    // A destination override must be a live destination of the org (linked or not).
    let r = create(
        &server,
        s,
        &path,
        &json!({"action": "pay", "input": input, "destination_id": loose, "tags": {"t": "1"}}),
    )
    .await;
    assert_eq!(r["destination_id"], loose.as_str());
    assert_eq!(r["tags"], json!({"t": "1"}));
    let other = server.org_with_key("9400").await;
    let foreign = destination(&server, &other.secret, "theirs").await;
    for dest in [
        gone.clone(),
        foreign,
        Uuid::now_v7().to_string(),
        "nope".into(),
    ] {
        assert_eq!(
            invalid(
                &server,
                s,
                Method::POST,
                &path,
                &json!({"action": "pay", "input": input, "destination_id": dest})
            )
            .await,
            ["destination_id"],
            "{dest}"
        );
    }
    // The path's org must be the caller's; scope write.
    for org in ["9400", "9999", "abc"] {
        fails(
            &server,
            Some(s),
            Method::POST,
            &format!("/v1/orgs/{org}/actions"),
            Some(json!({"action": "pay", "input": input}).to_string()),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    fails(
        &server,
        Some(&other.secret),
        Method::POST,
        &path,
        Some(json!({"action": "pay", "input": input}).to_string()),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Another org cannot trigger this org's definition by id either.
    assert_eq!(
        invalid(
            &server,
            &other.secret,
            Method::POST,
            "/v1/orgs/9400/actions",
            &json!({"action": def_id, "input": input})
        )
        .await,
        ["action"]
    );
    let reader = server.create_key("9300", &["read", "admin"]).await;
    fails(
        &server,
        Some(&reader.secret),
        Method::POST,
        &path,
        Some(json!({"action": "pay", "input": input}).to_string()),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    fails(
        &server,
        None,
        Method::POST,
        &path,
        Some(json!({"action": "pay", "input": input}).to_string()),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    // `null` is an input like any other (when the schema allows it); a missing one is not.
    create(
        &server,
        s,
        "/v1/action-definitions",
        &json!({"variant": "maybe", "schema": {"type": ["object", "null"]},
                "destinations": [{"destination_id": d1}]}),
    )
    .await;
    let r = create(
        &server,
        s,
        &path,
        &json!({"action": "maybe", "input": null}),
    )
    .await;
    assert_eq!(r["input"], Value::Null, "{r}");
    assert_eq!(
        invalid(&server, s, Method::POST, &path, &json!({"action": "maybe"})).await,
        ["input"]
    );
    // Exactly the accepted calls made records.
    let list = get(&server, s, "/v1/orgs/9300/actions/records?take=50").await;
    assert_eq!(list["data"]["count"], made.len() + 4, "{list}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_need_an_acknowledged_record() {
    let server = TestServer::start().await;
    let key = server.org_with_key("9500").await;
    let s = key.secret.as_str();
    let d = destination(&server, s, "hook").await;
    create(
        &server,
        s,
        "/v1/action-definitions",
        &definition_body("noop", &[], &json!({}), &[&d]),
    )
    .await;
    let path = actions_path(&key);
    let r = create(&server, s, &path, &json!({"action": "noop", "input": {}})).await;
    let id = id_of(&r);
    let signal = |id: &str| format!("/v1/orgs/9500/actions/records/{id}/signal");
    // Pending: not waiting for a signal.
    for status in ["succeeded", "failed"] {
        fails(
            &server,
            Some(s),
            Method::POST,
            &signal(&id),
            Some(json!({"status": status}).to_string()),
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
    }
    // Unknown records.
    for bad in [Uuid::now_v7().to_string(), "nope".to_owned()] {
        fails(
            &server,
            Some(s),
            Method::POST,
            &signal(&bad),
            Some(json!({"status": "succeeded"}).to_string()),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    for body in [
        json!({"status": "done"}),
        json!({}),
        json!({"status": "pending"}),
    ] {
        assert_eq!(
            invalid(&server, s, Method::POST, &signal(&id), &body).await,
            ["status"]
        );
    }
    // Acknowledged (as by the dispatcher): one signal is taken, the next is a conflict.
    server.acknowledge_action("9500", &id).await;
    let other = server.org_with_key("9600").await;
    for (secret, org) in [
        (other.secret.as_str(), "9500"),
        (other.secret.as_str(), "9600"),
    ] {
        fails(
            &server,
            Some(secret),
            Method::POST,
            &format!("/v1/orgs/{org}/actions/records/{id}/signal"),
            Some(json!({"status": "succeeded"}).to_string()),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let done = ok(
        &server,
        s,
        Method::POST,
        &signal(&id),
        Some(&json!({"status": "failed", "message": "boom", "data": {"a": [1, 2]}})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["state"]["status"], "failed");
    assert_eq!(done["state"]["error_message"], "boom");
    check_time(&done["state"]["completed_at"]);
    fails(
        &server,
        Some(s),
        Method::POST,
        &signal(&id),
        Some(json!({"status": "succeeded"}).to_string()),
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    // The dialect shows the events in order, the signal's message and data kept.
    let page = get(
        &server,
        s,
        &format!("/v1/orgs/9500/actions/records?include_state=true&field=id&value={id}"),
    )
    .await;
    let item = &page["data"]["items"][0];
    let kinds: Vec<&str> = item["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["created", "acknowledged", "signaled"], "{item}");
    let last = &item["events"][2];
    assert_eq!(last["status"], "failed");
    assert_eq!(last["message"], "boom");
    assert_eq!(last["data"], json!({"a": [1, 2]}));
    assert_eq!(item["state"]["status"], "failed");
    assert_eq!(item["state"]["error_message"], "boom");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Self-audit.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_self_audited_without_secrets() {
    let server = TestServer::start().await;
    let org = "9700";
    server.create_org(org).await;
    // The principal differs from the user id: the principal is what counts.
    let key = server
        .create_key_with(
            org,
            json!({"name": "actions admin", "scopes": ["read", "write", "admin"],
                   "principal_type": "user", "principal_id": "usr_principal",
                   "user_id": "usr_other"}),
        )
        .await;
    let s = key.secret.as_str();
    let audit_path = "/v1/audit-log?limit=200";
    let before = get(&server, s, audit_path).await["audit_log"]
        .as_array()
        .unwrap()
        .len();

    let cred = create(&server, s, "/v1/credentials", &json!({"label": "signing"})).await;
    let secret = cred["secret"].as_str().unwrap().to_owned();
    let header_value = "Bearer hdr-secret-7f3a9";
    let d = create(
        &server,
        s,
        "/v1/destinations",
        &json!({"label": "hook", "config": {"url": PUBLIC_URL,
                "headers": {"Authorization": header_value}},
                "credential_id": cred["id"]}),
    )
    .await;
    let d_id = id_of(&d);
    let d_path = format!("/v1/destinations/{d_id}");
    ok(
        &server,
        s,
        Method::PATCH,
        &d_path,
        Some(&json!({"label": "renamed", "config": {"headers": {"X-Token": header_value}}})),
        StatusCode::OK,
    )
    .await;
    let keep = destination(&server, s, "keep").await;
    let schema = json!({"type": "object"});
    let def = create(
        &server,
        s,
        "/v1/action-definitions",
        &definition_body("noop", &["nop"], &schema, &[&keep]),
    )
    .await;
    let def_id = id_of(&def);
    let def_path = format!("/v1/action-definitions/{def_id}");
    ok(
        &server,
        s,
        Method::PUT,
        &def_path,
        Some(&definition_body(
            "noop",
            &["nop", "no-op"],
            &schema,
            &[&keep],
        )),
        StatusCode::OK,
    )
    .await;
    ok(
        &server,
        s,
        Method::PUT,
        &def_path,
        Some(&definition_body(
            "noop",
            &[],
            &json!({"type": "array"}),
            &[&keep],
        )),
        StatusCode::OK,
    )
    .await;
    ok(&server, s, Method::DELETE, &def_path, None, StatusCode::OK).await;
    ok(&server, s, Method::DELETE, &d_path, None, StatusCode::OK).await;
    // Neither reads, refused changes, repeated deletes nor records add entries.
    ok(&server, s, Method::DELETE, &d_path, None, StatusCode::OK).await;
    ok(&server, s, Method::DELETE, &def_path, None, StatusCode::OK).await;
    get(&server, s, &d_path).await;
    get(&server, s, "/v1/destinations").await;
    get(&server, s, "/v1/credentials").await;
    get(&server, s, "/v1/action-definitions").await;
    invalid(
        &server,
        s,
        Method::POST,
        "/v1/destinations",
        &json!({"label": "", "config": {"url": PUBLIC_URL, "headers": {"X-Token": header_value}}}),
    )
    .await;
    invalid(
        &server,
        s,
        Method::POST,
        "/v1/credentials",
        &json!({"label": ""}),
    )
    .await;

    let all = get(&server, s, audit_path).await;
    let text = all.to_string();
    assert!(
        !text.contains(&secret),
        "the credential's secret is audited"
    );
    assert!(!text.contains(&secret["whsec_".len()..]));
    assert!(
        !text.contains("hdr-secret-7f3a9"),
        "a header value is audited"
    );
    let entries: Vec<&Value> = all["audit_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            ["credential", "destination", "action_definition"]
                .contains(&e["resource_type"].as_str().unwrap())
        })
        .collect();
    let cred_id = id_of(&cred);
    let keep_id = keep.clone();
    let want: [(&str, &str, &str); 9] = [
        ("delete", "destination", &d_id),
        ("delete", "action_definition", &def_id),
        ("update", "action_definition", &def_id),
        ("update", "action_definition", &def_id),
        ("create", "action_definition", &def_id),
        ("create", "destination", &keep_id),
        ("update", "destination", &d_id),
        ("create", "destination", &d_id),
        ("create", "credential", &cred_id),
    ];
    let got: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["resource_type"].as_str().unwrap(),
                e["resource_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{all}");
    assert_eq!(
        all["audit_log"].as_array().unwrap().len(),
        before + want.len(),
        "nothing else was audited: {all}"
    );
    for e in &entries {
        assert_eq!(e["user_id"], "usr_principal", "{e}");
        assert_eq!(e["org_id"], org);
        let details: Value = serde_json::from_str(e["details"].as_str().unwrap()).unwrap();
        assert!(details.is_object(), "{e}");
    }
    // What changed is in the details (header names, never their values).
    let details = |i: usize| -> Value {
        serde_json::from_str(entries[i]["details"].as_str().unwrap()).unwrap()
    };
    assert_eq!(details(8)["label"], "signing");
    assert_eq!(details(7)["header_names"], json!(["Authorization"]));
    assert_eq!(details(7)["url"], PUBLIC_URL);
    assert_eq!(details(6)["label"], "renamed");
    assert_eq!(details(6)["header_names"], json!(["X-Token"]));
    assert_eq!(details(4)["version"], 1);
    assert_eq!(details(3)["version"], 1);
    assert_eq!(details(3)["alias"], json!(["nop", "no-op"]));
    assert_eq!(details(2)["version"], 2);
    // The audit dialect's filters find them.
    let only = get(
        &server,
        s,
        &format!("/v1/audit-log?resource_type=destination&resource_id={d_id}"),
    )
    .await;
    let actions: Vec<&str> = only["audit_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "update", "create"]);
    let creds = get(&server, s, "/v1/audit-log?resource_type=credential").await;
    assert_eq!(creds["audit_log"].as_array().unwrap().len(), 1);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// What the OpenAPI document promises (docs/openapi.json), checked where JSON and JSON
// Schema read a body differently from a naive parser.
// ---------------------------------------------------------------------------------------------

/// Lengths are in characters (as JSON Schema's `maxLength` counts them), not UTF-8 bytes:
/// 1000 two-byte characters are a valid label, tag value and header value, 100 a valid tag
/// key; one more character is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_limits_count_characters() {
    let server = TestServer::start().await;
    let key = server.org_with_key("4242").await;
    let (e1000, e1001, e100, e101) = (
        "é".repeat(1000),
        "é".repeat(1001),
        "é".repeat(100),
        "é".repeat(101),
    );
    let body = json!({
        "label": e1000,
        "config": {"url": PUBLIC_URL, "headers": {"x-note": e1000}},
        "tags": {e100.clone(): e1000},
    });
    let d = create(&server, &key.secret, "/v1/destinations", &body).await;
    assert_eq!(d["label"].as_str().unwrap().chars().count(), 1000);
    let c = create(
        &server,
        &key.secret,
        "/v1/credentials",
        &json!({"label": e1000}),
    )
    .await;
    assert_eq!(c["label"], e1000.as_str());
    for (patch, field) in [
        (json!({"label": e1001}), "label".to_owned()),
        (json!({"tags": {e101.clone(): "v"}}), format!("tags.{e101}")),
        (json!({"tags": {"k": e1001}}), "tags.k".to_owned()),
    ] {
        let fields = invalid(
            &server,
            &key.secret,
            Method::POST,
            "/v1/destinations",
            &with(&body, &patch),
        )
        .await;
        assert_eq!(fields, [field]);
    }
    // A URL of 2048 characters is accepted, whatever its bytes.
    let long = format!("{PUBLIC_URL}?q={}", "é".repeat(2048 - PUBLIC_URL.len() - 3));
    assert_eq!(long.chars().count(), 2048);
    let patch = json!({"config": {"url": long}});
    let d = create(
        &server,
        &key.secret,
        "/v1/destinations",
        &with(&body, &patch),
    )
    .await;
    assert_eq!(d["config"]["url"], long.as_str());
    let fields = invalid(
        &server,
        &key.secret,
        Method::POST,
        "/v1/destinations",
        &with(&body, &json!({"config": {"url": format!("{long}é")}})),
    )
    .await;
    assert_eq!(fields, ["config.url"]);
    // The records' search value: 1000 characters match nothing, 1001 are refused.
    let path = format!("/v1/orgs/{}/actions/records", key.org_id);
    let q = |v: &str| format!("{path}?search[field]=variant&search[value]={v}");
    let page = get(&server, &key.secret, &q(&e1000)).await;
    assert_eq!(page["data"]["count"], 0, "{page}");
    let (status, _, v) = send(&server, Some(&key.secret), Method::GET, &q(&e1001), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    server.stop().await;
}

/// JSON does not tell `60` from `60.0`, nor does the OpenAPI `integer` type: an integer
/// written with a zero fraction is that integer; any other fraction is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_may_carry_a_zero_fraction() {
    let server = TestServer::start().await;
    let key = server.org_with_key("integral").await;
    let body = json!({"label": "d", "config": {"url": PUBLIC_URL, "response_time_sla_ms": 5000.0}});
    let d = create(&server, &key.secret, "/v1/destinations", &body).await;
    assert_eq!(d["config"]["response_time_sla_ms"], 5000);
    let half = json!({"label": "d", "config": {"url": PUBLIC_URL, "response_time_sla_ms": 5000.5}});
    malformed(
        &server,
        &key.secret,
        Method::POST,
        "/v1/destinations",
        half.to_string(),
        "config.response_time_sla_ms",
    )
    .await;
    let def = definition_body("integral", &[], &json!(true), &[&id_of(&d)]);
    create(&server, &key.secret, "/v1/action-definitions", &def).await;
    let trigger = json!({"action": "integral", "version": 1.0, "input": 1, "timeout": 60.0});
    let r = create(&server, &key.secret, &actions_path(&key), &trigger).await;
    assert_eq!(
        (r["version"].clone(), r["timeout"].clone()),
        (json!(1), json!(60))
    );
    server.stop().await;
}

/// An object in a body is a JSON object: serde would also read a struct from an array of
/// its fields in order, which the document (type object) does not allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_objects_are_not_arrays() {
    let server = TestServer::start().await;
    let key = server.org_with_key("objects").await;
    let d = destination(&server, &key.secret, "d").await;
    for (method, path, body, param) in [
        (
            Method::PATCH,
            format!("/v1/destinations/{d}"),
            json!({"config": {"signaling": [null, null]}}),
            "config.signaling",
        ),
        (
            Method::POST,
            "/v1/destinations".to_owned(),
            json!({"label": "a", "config": [PUBLIC_URL]}),
            "config",
        ),
        (
            Method::POST,
            "/v1/action-definitions".to_owned(),
            json!({"variant": "v", "schema": true, "destinations": [[d, true]]}),
            "destinations[0]",
        ),
        (
            Method::POST,
            "/v1/credentials".to_owned(),
            json!(["label"]),
            "",
        ),
    ] {
        let (status, _, v) = send(
            &server,
            Some(&key.secret),
            method.clone(),
            &path,
            Some(body.to_string()),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {v}"
        );
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], param, "{v}");
        }
    }
    // Nothing was changed or made.
    let got = get(&server, &key.secret, &format!("/v1/destinations/{d}")).await;
    assert_eq!(got["config"]["signaling"]["enabled"], false);
    let creds = get(&server, &key.secret, "/v1/credentials").await;
    assert_eq!(creds["data"], json!([]));
    server.stop().await;
}

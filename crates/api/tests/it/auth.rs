//! Authentication and authorization over HTTP (SPEC §2, §3.6, §11): the four key carriers,
//! 401 for missing/unknown/malformed/revoked keys, 403 for missing scopes, 404 for another
//! org's resources, the operator token's reach, and a server without an operator token.

#![allow(clippy::unwrap_used)]

use crate::http_support;

use apitrail_api::native::admin::{create_key_as, create_org_as};
use apitrail_model::key::NewApiKeyInput;
use apitrail_model::{NewApiKey, NewOrg};
use apitrail_testkit::{ADMIN_TOKEN, Options, TestKey, TestServer, expect, expect_native_error};
use http_support::{Carrier, key_works, rec, send, tenant};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// One org route (every route of the router that takes an org key), with the scope it needs.
#[derive(Debug, Clone)]
struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    scope: &'static str,
    /// The status a key with the scope gets.
    ok: StatusCode,
}

/// Every route of the router that authenticates an org key. `victim` is a key id of the
/// caller's own org that the DELETE route may revoke.
fn org_routes(victim: &str) -> Vec<Route> {
    let r = |method: Method, path: &str, body: Option<Value>, scope, ok| Route {
        method,
        path: path.to_owned(),
        body,
        scope,
        ok,
    };
    vec![
        r(Method::GET, "/v1/logs", None, "read", StatusCode::OK),
        r(
            Method::GET,
            "/v1/logs?method=get&status_min=200&limit=5",
            None,
            "read",
            StatusCode::OK,
        ),
        r(
            Method::POST,
            "/v1/ingest/requests",
            Some(json!([rec("/scoped")])),
            "write",
            StatusCode::ACCEPTED,
        ),
        r(Method::GET, "/v1/api-keys", None, "admin", StatusCode::OK),
        r(
            Method::POST,
            "/v1/api-keys",
            Some(json!({"name": "made by a test", "scopes": ["read"],
                        "principal_type": "user", "principal_id": "usr_x"})),
            "admin",
            StatusCode::CREATED,
        ),
        r(
            Method::GET,
            &format!("/v1/api-keys/{victim}"),
            None,
            "admin",
            StatusCode::OK,
        ),
        r(
            Method::DELETE,
            &format!("/v1/api-keys/{victim}"),
            None,
            "admin",
            StatusCode::OK,
        ),
    ]
}

fn build(server: &TestServer, route: &Route) -> RequestBuilder {
    let rb = server.request(route.method.clone(), &route.path);
    match &route.body {
        Some(b) => rb.json(b),
        None => rb,
    }
}

/// Asserts a 401 in the native envelope with `WWW-Authenticate`, and a request id equal to the
/// header.
async fn expect_401(rb: RequestBuilder, what: &str) {
    let resp = rb.send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        resp.url()
    );
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        challenge
            .as_deref()
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("bearer")),
        "{what}: WWW-Authenticate is {challenge:?}"
    );
    expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
}

/// Asserts a 403 in the native envelope (no `WWW-Authenticate`).
async fn expect_403(rb: RequestBuilder, what: &str) -> Value {
    let resp = rb.send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "{what}: {}",
        resp.url()
    );
    assert!(
        resp.headers().get("www-authenticate").is_none(),
        "{what}: a 403 carries no challenge"
    );
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_carrier_authenticates_a_live_key_on_every_org_route() {
    let server = TestServer::start().await;
    let key = server.org_with_key("carriers").await;
    for carrier in Carrier::ALL {
        let victim = server.create_key("carriers", &["read"]).await;
        for route in org_routes(&victim.id) {
            let (status, _, body) = send(carrier.apply(build(&server, &route), &key.secret)).await;
            assert_eq!(
                status, route.ok,
                "{carrier:?} {} {}: {body}",
                route.method, route.path
            );
        }
        // The DELETE through this carrier did revoke the victim.
        assert!(!key_works(&server, &victim.secret).await, "{carrier:?}");
    }
    let logs = http_support::all_logs(&server, &key.secret).await;
    assert_eq!(logs.len(), Carrier::ALL.len());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_are_401_on_every_org_route() {
    let server = TestServer::start().await;
    let key = server.org_with_key("nocreds").await;
    let routes = org_routes(&key.id);
    for route in &routes {
        let what = format!("{} {}", route.method, route.path);
        expect_401(build(&server, route), &what).await;
        // Carriers that are present but empty or of another scheme count as missing.
        for (name, value) in [
            ("authorization", "Bearer "),
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("authorization", &format!("Token {}", key.secret)),
            ("x-api-key", ""),
            ("x-arklow-auth", "   "),
            ("cookie", "better-auth.session_token="),
            ("cookie", &format!("other.session_token={}", key.secret)),
        ] {
            expect_401(
                build(&server, route).header(name, value),
                &format!("{what} with {name}: {value:?}"),
            )
            .await;
        }
    }
    // Nothing was ingested or created by the refused calls.
    assert_eq!(http_support::stored_count(&server, "nocreds").await, 0);
    let keys = expect(
        server
            .get("/v1/api-keys", &key.secret)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
    assert!(key_works(&server, &key.secret).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_keys_are_401_with_every_carrier() {
    let server = TestServer::start().await;
    let key = server.org_with_key("unknown").await;
    let mut flipped = key.secret.clone();
    // The same shape, one character changed: well formed but matching no key.
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'a' { 'b' } else { 'a' });
    let bad = [
        "atk_0000000000000000000000000000000000000000".to_owned(),
        flipped,
        key.secret.to_uppercase(),
        format!("{}x", key.secret),
        key.secret[..key.secret.len() - 1].to_owned(),
        key.secret.replacen("atk_", "atx_", 1),
        "atk_short".to_owned(),
        "not-a-key-at-all".to_owned(),
        "atk_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!".to_owned(),
        key.id.clone(),
    ];
    let routes = org_routes(&key.id);
    for carrier in Carrier::ALL {
        for token in &bad {
            for route in &routes {
                expect_401(
                    carrier.apply(build(&server, route), token),
                    &format!("{carrier:?} {token} {} {}", route.method, route.path),
                )
                .await;
            }
        }
    }
    assert_eq!(http_support::stored_count(&server, "unknown").await, 0);
    assert!(
        key_works(&server, &key.secret).await,
        "the real key still works"
    );
    server.stop().await;
}

/// Every org route answers 401 to `secret` on every carrier.
async fn assert_dead_everywhere(server: &TestServer, secret: &str, victim: &str, what: &str) {
    for carrier in Carrier::ALL {
        for route in org_routes(victim) {
            expect_401(
                carrier.apply(build(server, &route), secret),
                &format!("{what}: {carrier:?} {} {}", route.method, route.path),
            )
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_by_the_operator_stops_working_at_once() {
    let server = TestServer::start().await;
    server.create_org("revoked-op").await;
    for carrier in Carrier::ALL {
        let key = server
            .create_key("revoked-op", &["read", "write", "admin"])
            .await;
        // Warm the key up on this carrier first, so nothing could have been cached cold.
        let (status, _, _) =
            send(carrier.apply(server.request(Method::GET, "/v1/logs"), &key.secret)).await;
        assert_eq!(status, StatusCode::OK);
        let revoked = expect(
            server
                .operator(
                    Method::DELETE,
                    &format!("/admin/v1/orgs/revoked-op/api-keys/{}", key.id),
                )
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert!(revoked["revoked_at"].is_string(), "{revoked}");
        // No waiting: the very next call is refused, on every carrier and route.
        assert_dead_everywhere(&server, &key.secret, &key.id, &format!("{carrier:?}")).await;
    }
    assert_eq!(http_support::stored_count(&server, "revoked-op").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_by_an_org_admin_stops_working_at_once() {
    let server = TestServer::start().await;
    let admin = server.org_with_key("revoked-admin").await;
    for carrier in Carrier::ALL {
        let key = server.create_key("revoked-admin", &["read", "write"]).await;
        assert!(key_works(&server, &key.secret).await);
        // The revoking call itself uses the carrier under test.
        let (status, _, body) = send(carrier.apply(
            server.request(Method::DELETE, &format!("/v1/api-keys/{}", key.id)),
            &admin.secret,
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], key.id.as_str());
        assert!(body["revoked_at"].is_string(), "{body}");
        assert_dead_everywhere(&server, &key.secret, &key.id, &format!("{carrier:?}")).await;
    }
    // An admin key may revoke itself; it is dead on the next call.
    let (status, _, _) = send(
        server
            .request(Method::DELETE, &format!("/v1/api-keys/{}", admin.id))
            .header("x-api-key", &admin.secret),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_dead_everywhere(&server, &admin.secret, &admin.id, "self-revoked").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_is_403_on_every_route_and_carrier() {
    let server = TestServer::start().await;
    server.create_org("scopes").await;
    let combos: [&[&str]; 6] = [
        &["read"],
        &["write"],
        &["admin"],
        &["read", "write"],
        &["read", "admin"],
        &["write", "admin"],
    ];
    for scopes in combos {
        let key = server.create_key("scopes", scopes).await;
        for carrier in Carrier::ALL {
            let victim = server.create_key("scopes", &["read"]).await;
            for route in org_routes(&victim.id) {
                let what = format!("{scopes:?} {carrier:?} {} {}", route.method, route.path);
                let rb = carrier.apply(build(&server, &route), &key.secret);
                if scopes.contains(&route.scope) {
                    let (status, _, body) = send(rb).await;
                    assert_eq!(status, route.ok, "{what}: {body}");
                } else {
                    let body = expect_403(rb, &what).await;
                    assert!(
                        body["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains(route.scope),
                        "{what}: the message names the missing scope: {body}"
                    );
                }
            }
        }
    }
    // Scope is checked before the body: a write-less key is refused even with a bad body, so
    // it learns nothing about validation.
    let read_only = server.create_key("scopes", &["read"]).await;
    let resp = server
        .request(Method::POST, "/v1/ingest/requests")
        .header("x-api-key", &read_only.secret)
        .header("content-type", "text/plain")
        .body("garbage")
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    let resp = server
        .request(Method::POST, "/v1/api-keys")
        .header("x-api-key", &read_only.secret)
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_key_is_404_and_indistinguishable_from_a_missing_one() {
    let server = TestServer::start().await;
    let a = server.org_with_key("org-alpha").await;
    let b = server.org_with_key("org-bravo").await;
    let missing = "0190f5a2-7b3c-7def-8123-456789abcdef";
    let mut answers = Vec::new();
    for id in [b.id.as_str(), missing, "not-a-uuid"] {
        for method in [Method::GET, Method::DELETE] {
            for carrier in Carrier::ALL {
                let resp = carrier
                    .apply(
                        server.request(method.clone(), &format!("/v1/api-keys/{id}")),
                        &a.secret,
                    )
                    .send()
                    .await
                    .unwrap();
                let body =
                    expect_native_error(resp, StatusCode::NOT_FOUND, "not_found", None).await;
                let text = body.to_string();
                assert!(!text.contains("org-bravo"), "{text}");
                answers.push((method.clone(), body["error"]["message"].clone()));
            }
        }
    }
    // Same message whether the key exists in another org or nowhere.
    for (method, message) in &answers {
        let first = answers.iter().find(|(m, _)| m == method).unwrap();
        assert_eq!(message, &first.1, "{method}");
    }
    // B's key survived A's DELETE attempts.
    assert!(
        key_works(&server, &b.secret).await,
        "A's DELETE revoked B's key"
    );
    let got = expect(
        server
            .operator(
                Method::GET,
                &format!("/admin/v1/orgs/org-bravo/api-keys/{}", b.id),
            )
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(got["revoked_at"].is_null(), "{got}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_token_reads_no_org_route() {
    let server = TestServer::start().await;
    let key = server.org_with_key("optoken").await;
    server
        .ingest(&key.secret, &json!([rec("/x")]), StatusCode::ACCEPTED)
        .await;
    for route in org_routes(&key.id) {
        if route.path.starts_with("/v1/ingest") {
            continue; // ingest is the operator token's other door (tested elsewhere)
        }
        let what = format!("{} {}", route.method, route.path);
        expect_403(build(&server, &route).bearer_auth(ADMIN_TOKEN), &what).await;
        // Whatever the carrier, the operator token never reads org data.
        for carrier in Carrier::ALL {
            let (status, _, body) = send(carrier.apply(build(&server, &route), ADMIN_TOKEN)).await;
            assert!(
                status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED,
                "{carrier:?} {what}: {status} {body}"
            );
        }
    }
    assert!(
        key_works(&server, &key.secret).await,
        "the DELETE did not run"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_keys_never_open_the_operator_api() {
    let server = TestServer::start().await;
    let key = server.org_with_key("orgkey-admin").await;
    let other = server.create_key("orgkey-admin", &["read"]).await;
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/admin/v1/orgs".into(), None),
        (
            Method::POST,
            "/admin/v1/orgs".into(),
            Some(json!({"id": "sneaky", "name": "Sneaky"})),
        ),
        (Method::GET, "/admin/v1/orgs/orgkey-admin".into(), None),
        (
            Method::GET,
            "/admin/v1/orgs/orgkey-admin/api-keys".into(),
            None,
        ),
        (
            Method::POST,
            "/admin/v1/orgs/orgkey-admin/api-keys".into(),
            Some(
                json!({"name": "n", "scopes": ["admin"], "principal_type": "user",
                        "principal_id": "p"}),
            ),
        ),
        (
            Method::GET,
            format!("/admin/v1/orgs/orgkey-admin/api-keys/{}", other.id),
            None,
        ),
        (
            Method::DELETE,
            format!("/admin/v1/orgs/orgkey-admin/api-keys/{}", other.id),
            None,
        ),
    ];
    let before = http_support::audit_entries(&server, "orgkey-admin")
        .await
        .len();
    for (method, path, body) in &routes {
        // No credentials, a wrong token, and a real all-scopes org key on every carrier.
        let base = || {
            let rb = server.request(method.clone(), path);
            match body {
                Some(b) => rb.json(b),
                None => rb,
            }
        };
        expect_401(base(), &format!("{method} {path} without credentials")).await;
        expect_401(
            base().bearer_auth("test-operator-token-0123456788"),
            &format!("{method} {path} with a wrong operator token"),
        )
        .await;
        for carrier in Carrier::ALL {
            let what = format!("{carrier:?} {method} {path}");
            let (status, _, resp) = send(carrier.apply(base(), &key.secret)).await;
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                "{what}: {status} {resp}"
            );
            // What the code does today: the org key is not the operator token → 401.
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {resp}");
            assert_eq!(resp["error"]["code"], "unauthorized", "{what}: {resp}");
        }
    }
    // None of the refused calls had an effect.
    assert!(key_works(&server, &other.secret).await);
    let orgs = expect(
        server
            .operator(Method::GET, "/admin/v1/orgs/sneaky")
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(orgs["error"]["code"], "not_found");
    let keys = expect(
        server
            .operator(Method::GET, "/admin/v1/orgs/orgkey-admin/api-keys")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        http_support::audit_entries(&server, "orgkey-admin")
            .await
            .len(),
        before
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_token_the_operator_api_is_refused() {
    let server = TestServer::start_with(Options {
        admin_token: false,
        ..Options::default()
    })
    .await;
    // Bootstrap an org and a key behind the API, as the CLI does.
    let org = create_org_as(
        server.store.as_ref(),
        NewOrg::parse(Some("no-operator".into()), Some("No operator".into())).unwrap(),
    )
    .await
    .unwrap();
    let t = tenant(&server, org.id.as_str()).await;
    let new = NewApiKey::try_from(NewApiKeyInput {
        name: Some("bootstrap".into()),
        scopes: Some(vec!["read".into(), "write".into(), "admin".into()]),
        principal_type: Some("user".into()),
        principal_id: Some("usr_boot".into()),
        ..NewApiKeyInput::default()
    })
    .unwrap();
    let (k, secret) = create_key_as(server.store.as_ref(), &t, new, None)
        .await
        .unwrap();
    let key = TestKey {
        id: k.id.to_string(),
        secret: secret.expose().to_owned(),
        org_id: "no-operator".into(),
    };
    let body = json!({"id": "x", "name": "x"});
    for (method, path) in [
        (Method::GET, "/admin/v1/orgs".to_owned()),
        (Method::POST, "/admin/v1/orgs".to_owned()),
        (Method::GET, "/admin/v1/orgs/no-operator".to_owned()),
        (
            Method::GET,
            "/admin/v1/orgs/no-operator/api-keys".to_owned(),
        ),
        (
            Method::POST,
            "/admin/v1/orgs/no-operator/api-keys".to_owned(),
        ),
        (
            Method::GET,
            format!("/admin/v1/orgs/no-operator/api-keys/{}", key.id),
        ),
        (
            Method::DELETE,
            format!("/admin/v1/orgs/no-operator/api-keys/{}", key.id),
        ),
    ] {
        // With the would-be token, with nothing, and with an org key: never open.
        for rb in [
            server
                .request(method.clone(), &path)
                .bearer_auth(ADMIN_TOKEN),
            server.request(method.clone(), &path),
            server
                .request(method.clone(), &path)
                .header("x-api-key", &key.secret),
        ] {
            let resp = rb.json(&body).send().await.unwrap();
            expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
        }
    }
    // Ingest with the would-be operator token is refused too (it is no credential at all).
    let resp = server
        .request(Method::POST, "/v1/ingest/requests")
        .bearer_auth(ADMIN_TOKEN)
        .json(
            &json!([{"org_id": "no-operator", "method": "GET", "path": "/op", "status_code": 200}]),
        )
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    assert_eq!(http_support::stored_count(&server, "no-operator").await, 0);
    // The org API still works with org keys.
    assert!(
        key_works(&server, &key.secret).await,
        "revoked by a refused call"
    );
    server
        .ingest(&key.secret, &json!([rec("/ok")]), StatusCode::ACCEPTED)
        .await;
    assert_eq!(http_support::stored_count(&server, "no-operator").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_carry_the_request_id_of_the_header() {
    let server = TestServer::start().await;
    let read_only = {
        server.create_org("reqid").await;
        server.create_key("reqid", &["read"]).await
    };
    // A valid incoming id is reused in the header and the body, for 401 and 403 alike.
    for (rb, status) in [
        (
            server.request(Method::GET, "/v1/logs"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            server.get("/v1/api-keys", &read_only.secret),
            StatusCode::FORBIDDEN,
        ),
        (
            server.request(Method::GET, "/admin/v1/orgs"),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let resp = rb
            .header("x-request-id", "client.req-42_A")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["x-request-id"], "client.req-42_A");
        let (_, _, body) = http_support::split(resp).await;
        assert_eq!(body["request_id"], "client.req-42_A", "{body}");
    }
    // An invalid incoming id is replaced by a generated one, which the body repeats.
    let resp = server
        .request(Method::GET, "/v1/logs")
        .header("x-request-id", "has space")
        .send()
        .await
        .unwrap();
    let header = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(header.starts_with("req_") && header.len() == 30, "{header}");
    let body = expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    assert_eq!(body["request_id"], header.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_logged_calls_record_the_carrier_as_auth_type() {
    let server = TestServer::start_with(Options {
        self_log: true,
        ..Options::default()
    })
    .await;
    let key = server.org_with_key("selflog-auth").await;
    let reader = server.create_key("selflog-auth", &["read"]).await;
    for (i, carrier) in Carrier::ALL.into_iter().enumerate() {
        let rid = format!("carrier-call-{i}");
        let (status, _, _) = send(
            carrier
                .apply(server.request(Method::GET, "/v1/logs?limit=1"), &key.secret)
                .header("x-request-id", &rid),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // Self-logging is asynchronous but listed within 1 s: poll, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let log = loop {
            let page = server
                .logs(&reader.secret, &format!("request_id={rid}"))
                .await;
            if let Some(l) = page["data"].as_array().unwrap().first() {
                break l.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{carrier:?}: the call was never self-logged"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(log["auth_type"], carrier.auth_type(), "{carrier:?}: {log}");
        assert_eq!(log["route_pattern"], "/v1/logs", "{log}");
        assert_eq!(log["status_code"], 200, "{log}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_credentials_are_400_in_the_routes_envelope() {
    let server = TestServer::start().await;
    // A numeric org id, so that the actions dialect's route takes it.
    let a = server.org_with_key("4242").await;
    let a2 = server.create_key("4242", &["read", "write"]).await;
    let b = server.org_with_key("other").await;
    let pairs = [
        (
            Carrier::Bearer,
            a.secret.as_str(),
            Carrier::XApiKey,
            b.secret.as_str(),
        ),
        (
            Carrier::XApiKey,
            a.secret.as_str(),
            Carrier::Cookie,
            b.secret.as_str(),
        ),
        (
            Carrier::Arklow,
            a.secret.as_str(),
            Carrier::XApiKey,
            a2.secret.as_str(),
        ),
        (
            Carrier::Cookie,
            a.secret.as_str(),
            Carrier::Bearer,
            a2.secret.as_str(),
        ),
        (
            Carrier::XApiKey,
            a.secret.as_str(),
            Carrier::Bearer,
            ADMIN_TOKEN,
        ),
    ];
    // Each route answers in its own dialect's envelope.
    type IsEnvelope = fn(&Value) -> bool;
    let routes: [(&str, IsEnvelope); 4] = [
        ("/v1/logs", |v| {
            v["error"]["code"] == "ambiguous_credentials"
        }),
        ("/org/api-calls", |v| {
            v["error_code"] == "ambiguous_credentials"
        }),
        ("/v1/api-keys/requests", |v| {
            v["code"] == 400 && v["data"].is_null()
        }),
        ("/v1/orgs/4242/actions/records", |v| {
            v["errors"][0]["code"] == "ambiguous_credentials"
        }),
    ];
    for (c1, s1, c2, s2) in pairs {
        for (path, envelope) in &routes {
            let rb = c2.apply(c1.apply(server.request(Method::GET, path), s1), s2);
            let (status, _, body) = send(rb).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{c1:?}+{c2:?} {path}: {body}"
            );
            assert!(envelope(&body), "{c1:?}+{c2:?} {path}: {body}");
        }
        // Ingest stores nothing for either credential.
        let rb = c2.apply(
            c1.apply(server.request(Method::POST, "/v1/ingest/requests"), s1),
            s2,
        );
        let resp = rb.json(&json!([rec("/ambiguous")])).send().await.unwrap();
        let body =
            expect_native_error(resp, StatusCode::BAD_REQUEST, "ambiguous_credentials", None).await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("two different credentials"),
            "{body}"
        );
    }
    // The operator token beside an org key does not open the operator API either.
    let resp = server
        .operator(Method::GET, "/admin/v1/orgs")
        .header("x-api-key", &a.secret)
        .send()
        .await
        .unwrap();
    expect_native_error(resp, StatusCode::BAD_REQUEST, "ambiguous_credentials", None).await;
    for key in [&a, &b] {
        let logs = server.logs(&key.secret, "").await;
        assert_eq!(logs["data"].as_array().unwrap().len(), 0, "{logs}");
    }
    // The same key in every carrier is one credential.
    let mut rb = server.request(Method::GET, "/v1/logs");
    for carrier in Carrier::ALL {
        rb = carrier.apply(rb, &a.secret);
    }
    expect(rb.send().await.unwrap(), StatusCode::OK).await;
    // So is the operator token twice.
    let resp = server
        .operator(Method::GET, "/admin/v1/orgs")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
    server.stop().await;
}

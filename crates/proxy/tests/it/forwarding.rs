//! What the proxy forwards, what it records, and what reads back through the dialects.

use std::sync::Arc;

use apitrail_model::{NewOrg, OrgId};
use apitrail_proxy::headers::fingerprint;
use apitrail_proxy::{DropReason, FingerprintKey, ProxyConfig};
use apitrail_store::Store;
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use apitrail_testkit::{TestServer, expect, header};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

const USER: &str = "0190b6e4-1111-7000-8000-000000000001";
const KEY_ID: &str = "0190b6e4-2222-7000-8000-0000000000aa";

/// Reads the zoo dialect's items (newest first) once there are `n`.
async fn zoo_items(server: &TestServer, secret: &str, n: usize) -> Vec<Value> {
    eventually("zoo items", || async {
        let resp = server.get("/org/api-calls", secret).send().await.unwrap();
        let page = expect(resp, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap().clone();
        (items.len() >= n).then_some(items)
    })
    .await
}

#[tokio::test]
async fn every_field_of_an_exchange_reads_back_through_the_dialects() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.routes = routes(&["/v1/users/{id}", "/v1/users/me"]);
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;

    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v1/users/42?status=201&expand=teams",
            proxy.base
        ))
        .header("apitrail-org", "acme")
        .header("apitrail-user-id", "usr_from_the_gateway")
        .header("apitrail-principal-id", "prn_1")
        .header("apitrail-email", "ada@example.com")
        .header("apitrail-service-account-id", "sa_9")
        .header("x-forwarded-for", "198.51.100.7")
        .header("user-agent", "proxy-test/1.0")
        .header("origin", "https://app.example.com")
        .header("x-request-id", "req-kept-1")
        .header("authorization", "Bearer sk_live_topsecret")
        .header("connection", "x-hop")
        .header("x-hop", "for this hop only")
        .header(
            "x-respond",
            format!("apitrail-user-id={USER}, apitrail-api-key-id={KEY_ID}, x-upstream=yes"),
        )
        .body("hello upstream")
        .send()
        .await
        .unwrap();
    // What the client sees: the upstream's answer, its attribution headers gone, the id.
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "x-request-id").as_deref(), Some("req-kept-1"));
    assert_eq!(header(&resp, "x-upstream").as_deref(), Some("yes"));
    assert!(
        resp.headers()
            .keys()
            .all(|k| !k.as_str().starts_with("apitrail-")),
        "{:?}",
        resp.headers()
    );
    // What the upstream saw.
    let seen: Value = resp.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/v1/users/42");
    assert_eq!(seen["query"], "status=201&expand=teams");
    assert_eq!(seen["body"], "hello upstream");
    assert!(
        h.as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("apitrail-")),
        "{h}"
    );
    assert_eq!(h["x-forwarded-for"][0], "198.51.100.7, 127.0.0.1");
    assert_eq!(h["host"][0], proxy.addr.to_string(), "Host is kept");
    assert_eq!(h["x-request-id"][0], "req-kept-1");
    assert_eq!(h["authorization"][0], "Bearer sk_live_topsecret");
    assert!(
        h.get("x-hop").is_none() && h.get("connection").is_none(),
        "{h}"
    );

    // The logs dialect.
    let items = logs(&server, &key.secret, 1).await;
    let log = &items[0];
    assert_eq!(log["method"], "POST");
    assert_eq!(log["path"], "/v1/users/42");
    assert_eq!(log["route_pattern"], "/v1/users/{id}");
    assert_eq!(log["status_code"], 201);
    assert_eq!(log["request_id"], "req-kept-1");
    assert_eq!(log["auth_type"], "bearer");
    assert_eq!(log["error_code"], Value::Null);
    assert!(log["duration_ms"].as_i64().is_some_and(|d| d >= 0), "{log}");
    // The zoo dialect.
    let call = &zoo_items(&server, &key.secret, 1).await[0];
    assert_eq!(call["ip_address"], "198.51.100.7");
    assert_eq!(call["user_agent"], "proxy-test/1.0");
    assert_eq!(call["origin"], "https://app.example.com");
    assert_eq!(call["request_query_params"], "status=201&expand=teams");
    assert_eq!(call["endpoint"], "/v1/users/{id}");
    assert_eq!(call["user_id"], USER, "the response's header wins");
    assert_eq!(call["token"], KEY_ID);
    assert_eq!(call["email"], "ada@example.com");
    assert_eq!(call["status_code"], 201);
    assert!(call["started_at"].as_str().is_some() && call["completed_at"].as_str().is_some());
    assert!(call["started_at"].as_str() <= call["completed_at"].as_str());
    // The keys dialect names the principal and service account.
    let resp = server
        .get("/v1/api-keys/requests", &key.secret)
        .send()
        .await
        .unwrap();
    let page = expect(resp, StatusCode::OK).await;
    let item = &page["data"]["items"][0];
    assert_eq!(item["principalId"], "prn_1");
    assert_eq!(item["serviceAccountId"], "sa_9");
    assert_eq!(item["apiKeyId"], KEY_ID);
    assert_eq!(item["clientIp"], "198.51.100.7");
    // Behind the API: the fingerprint, never the secret.
    let stored = stored_logs(server.store.as_ref(), "acme").await;
    assert_eq!(
        stored[0].metadata.as_deref(),
        Some(
            format!(
                r#"{{"credential_fingerprint":"{}"}}"#,
                fingerprint(FP_KEY.as_bytes(), b"sk_live_topsecret")
            )
            .as_str()
        )
    );
    assert_eq!(
        stored[0].request_body, None,
        "bodies only with --capture-bodies"
    );
    proxy.stop().await;
    assert_eq!(proxy_recorded(&server, "acme").await, 1);
}

async fn proxy_recorded(server: &TestServer, org: &str) -> u64 {
    let tenant = server
        .store
        .tenant(&OrgId::parse(org).unwrap())
        .await
        .unwrap()
        .unwrap();
    server.store.count_request_logs(&tenant).await.unwrap()
}

#[tokio::test]
async fn route_patterns_are_the_most_specific_match() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.routes = routes(&[
        "# one pattern a line",
        "/v1/users/{id}",
        "/v1/users/me",
        "/v1/users/{id}/posts/{post}",
        "/v1/{resource}/export",
    ]);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let client = reqwest::Client::new();
    let cases = [
        ("/v1/users/42", Some("/v1/users/{id}")),
        ("/v1/users/me", Some("/v1/users/me")),
        ("/v1/users/me/posts/7", Some("/v1/users/{id}/posts/{post}")),
        // Specificity is decided segment by segment from the left: `users` beats
        // `{resource}` before `export` is looked at.
        ("/v1/users/export", Some("/v1/users/{id}")),
        ("/v1/teams/export", Some("/v1/{resource}/export")),
        ("/v1/nothing/here", None),
    ];
    for (path, _) in &cases {
        let resp = client
            .get(format!("{}{path}", proxy.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let items = logs(&server, &key.secret, cases.len()).await;
    for (path, pattern) in cases {
        let log = items.iter().find(|l| l["path"] == path).unwrap();
        assert_eq!(log["route_pattern"].as_str(), pattern, "{path}");
    }
    // Without a pattern, zoo's endpoint is the path.
    let calls = zoo_items(&server, &key.secret, cases.len()).await;
    let call = calls.iter().find(|c| c["endpoint"] == "/v1/nothing/here");
    assert!(call.is_some(), "{calls:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut untrusting = config(&upstream);
    untrusting.default_org = Some(OrgId::parse("acme").unwrap());
    let mut trusting = untrusting.clone();
    trusting.trusted_proxies = vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ];
    let client = reqwest::Client::new();
    for (config, path) in [(untrusting, "/untrusted"), (trusting, "/trusted")] {
        let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
        let resp = client
            .get(format!("{}{path}", proxy.base))
            .header("x-forwarded-for", "192.0.2.1, 203.0.113.9")
            .header("x-forwarded-for", "10.1.2.3")
            .send()
            .await
            .unwrap();
        let seen: Value = resp.json().await.unwrap();
        // Appended either way.
        assert_eq!(
            seen["headers"]["x-forwarded-for"][0],
            "192.0.2.1, 203.0.113.9, 10.1.2.3, 127.0.0.1"
        );
        proxy.stop().await;
    }
    let calls = zoo_items(&server, &key.secret, 2).await;
    let ip = |path: &str| {
        calls
            .iter()
            .find(|c| c["endpoint"] == path)
            .map(|c| c["ip_address"].clone())
            .unwrap()
    };
    assert_eq!(
        ip("/untrusted"),
        "127.0.0.1",
        "an untrusted peer is the client"
    );
    assert_eq!(
        ip("/trusted"),
        "203.0.113.9",
        "the right-most untrusted entry"
    );
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_and_generated_otherwise() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let client = reqwest::Client::new();
    let mut generated = Vec::new();
    for (path, sent) in [
        ("/kept", Some("abc.DEF_123-x")),
        ("/absent", None),
        ("/invalid", Some("not valid!")),
    ] {
        let mut req = client.get(format!("{}{path}", proxy.base));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        let returned = header(&resp, "x-request-id").unwrap();
        let seen: Value = resp.json().await.unwrap();
        assert_eq!(
            seen["headers"]["x-request-id"][0],
            returned.as_str(),
            "{path}"
        );
        assert_eq!(seen["headers"]["x-request-id"].as_array().unwrap().len(), 1);
        if path == "/kept" {
            assert_eq!(returned, "abc.DEF_123-x");
        } else {
            assert!(
                returned.starts_with("req_") && returned.len() == 30,
                "{path}: {returned}"
            );
        }
        generated.push((path, returned));
    }
    let items = logs(&server, &key.secret, 3).await;
    for (path, id) in generated {
        let log = items.iter().find(|l| l["path"] == path).unwrap();
        assert_eq!(log["request_id"], id.as_str(), "{path}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn attribution_from_the_response_alone_and_unattributed_exchanges() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    // No --org: only exchanges that name their org are recorded.
    let proxy = RunningProxy::start(config(&upstream), store_sink(&server.store)).await;
    let client = reqwest::Client::new();
    let send = |path: &str, respond: &str, org: Option<&str>| {
        let mut req = client
            .get(format!("{}{path}", proxy.base))
            .header("x-respond", respond);
        if let Some(org) = org {
            req = req.header("apitrail-org", org);
        }
        req.send()
    };
    let resp = send(
        "/by-response",
        "apitrail-org=acme, apitrail-email=e@example.com",
        None,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "apitrail-org"), None);
    // Unattributed, an invalid org, an unknown org: answered, never recorded.
    for (path, org) in [
        ("/nobody", None),
        ("/invalid-org", Some("not an org!")),
        ("/unknown-org", Some("nosuchorg")),
    ] {
        let resp = send(path, "x=1", org).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // The response's org wins over the request's.
    let resp = send("/response-wins", "apitrail-org=acme", Some("nosuchorg"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats = Arc::clone(&proxy.stats);
    proxy.stop().await;
    assert_eq!(stats.dropped(DropReason::Unattributed), 1);
    assert_eq!(stats.dropped(DropReason::InvalidOrg), 1);
    assert_eq!(stats.dropped(DropReason::UnknownOrg), 1);
    assert_eq!(stats.dropped_total(), 3);
    assert_eq!(stats.recorded.load(std::sync::atomic::Ordering::Relaxed), 2);
    let items = logs(&server, &key.secret, 2).await;
    let mut paths: Vec<_> = items.iter().map(|l| l["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/by-response", "/response-wins"]);
    let calls = zoo_items(&server, &key.secret, 2).await;
    assert!(calls.iter().any(|c| c["email"] == "e@example.com"));
}

#[tokio::test]
async fn auth_types_are_recorded_with_fingerprints_and_no_secret_reaches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap());
    apitrail_api::native::admin::create_org_as(
        store.as_ref(),
        NewOrg::parse(Some("acme".into()), Some("Acme".into())).unwrap(),
    )
    .await
    .unwrap();
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&store)).await;
    let client = reqwest::Client::new();
    // Each secret is distinctive, so that a byte search of the database finds any copy.
    let basic = "dXNlcjpiYXNpYy1TRUNSRVQtYmJiYg=="; // user:basic-SECRET-bbbb
    /// Path, credential header, recorded auth type, the secret fingerprinted.
    type Case<'a> = (
        &'a str,
        Option<(&'a str, String)>,
        &'a str,
        Option<&'a [u8]>,
    );
    let cases: [Case<'_>; 5] = [
        (
            "/bearer",
            Some(("authorization", "Bearer bearer-SECRET-aaaa".into())),
            "bearer",
            Some(b"bearer-SECRET-aaaa"),
        ),
        (
            "/basic",
            Some(("authorization", format!("Basic {basic}"))),
            "basic",
            Some(basic.as_bytes()),
        ),
        (
            "/api-key",
            Some(("x-api-key", "apikey-SECRET-cccc".into())),
            "api_key",
            Some(b"apikey-SECRET-cccc"),
        ),
        (
            "/cookie",
            Some(("cookie", "session=cookie-SECRET-dddd".into())),
            "cookie",
            Some(b"session=cookie-SECRET-dddd"),
        ),
        ("/none", None, "none", None),
    ];
    for (path, credential, _, _) in &cases {
        let mut req = client.get(format!("{}{path}", proxy.base));
        if let Some((name, value)) = credential {
            req = req.header(*name, value);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK);
    }
    proxy.stop().await;
    let stored = stored_logs(store.as_ref(), "acme").await;
    assert_eq!(stored.len(), cases.len());
    for (path, _, auth_type, secret) in &cases {
        let log = stored.iter().find(|l| l.path == *path).unwrap();
        assert_eq!(log.auth_type.as_deref(), Some(*auth_type), "{path}");
        let want = secret.map(|s| {
            format!(
                r#"{{"credential_fingerprint":"{}"}}"#,
                fingerprint(FP_KEY.as_bytes(), s)
            )
        });
        assert_eq!(log.metadata, want, "{path}");
    }
    // The same secret gives the same fingerprint; another gives another.
    assert_ne!(stored[0].metadata, stored[1].metadata);
    store.shutdown().await.unwrap();
    drop(store);
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(
        bytes.windows(6).any(|w| w == b"/basic"),
        "the records are in these files"
    );
    for needle in [&b"SECRET"[..], basic.as_bytes(), FP_KEY.as_bytes()] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} found in the database files",
            String::from_utf8_lossy(needle)
        );
    }
}

#[tokio::test]
async fn route_patterns_from_an_openapi_document() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    let yaml = "openapi: 3.0.3\ninfo: {title: pets, version: '1'}\npaths:\n  /pets:\n    get: {}\n  /pets/{petId}:\n    get: {}\n  /pets/mine:\n    get: {}\n  /pets/{petId}/photo.{format}:\n    get: {}\n";
    let (routes, skipped) = apitrail_proxy::Routes::from_openapi(yaml).unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    config.routes = routes;
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let client = reqwest::Client::new();
    for path in ["/pets", "/pets/12", "/pets/mine", "/pets/12/photo.png"] {
        let resp = client
            .get(format!("{}{path}", proxy.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let items = logs(&server, &key.secret, 4).await;
    let pattern = |path: &str| {
        items
            .iter()
            .find(|l| l["path"] == path)
            .map(|l| l["route_pattern"].clone())
            .unwrap()
    };
    assert_eq!(pattern("/pets"), "/pets");
    assert_eq!(pattern("/pets/12"), "/pets/{petId}");
    assert_eq!(pattern("/pets/mine"), "/pets/mine");
    assert_eq!(pattern("/pets/12/photo.png"), Value::Null);
    proxy.stop().await;
}

#[tokio::test]
async fn an_https_upstream_is_reached_over_tls_with_a_private_ca() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let (upstream, ca) = TestUpstream::start_tls().await;
    let mut trusting = config(&upstream);
    trusting.default_org = Some(OrgId::parse("acme").unwrap());
    let mut untrusting = trusting.clone();
    trusting.upstream_ca = vec![ca];
    let client = reqwest::Client::new();
    let proxy = RunningProxy::start(trusting, store_sink(&server.store)).await;
    let resp = client
        .post(format!("{}/over-tls?status=201", proxy.base))
        .body("secret payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["body"], "secret payload");
    assert_eq!(seen["headers"]["host"][0], proxy.addr.to_string());
    proxy.stop().await;
    // Without the private CA the upstream's certificate is refused: a 502, recorded.
    untrusting.upstream_ca.clear();
    let proxy = RunningProxy::start(untrusting, store_sink(&server.store)).await;
    let resp = client
        .get(format!("{}/untrusted", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    proxy.stop().await;
    let items = logs(&server, &key.secret, 2).await;
    let status =
        |path: &str| items.iter().find(|l| l["path"] == path).unwrap()["status_code"].clone();
    assert_eq!(status("/over-tls"), 201);
    assert_eq!(status("/untrusted"), 502);
}

/// The answer is written in the client's protocol version, not the upstream's: an HTTP/1.0
/// upstream (one connection per request) leaves the client's HTTP/1.1 connection kept alive.
#[tokio::test]
async fn an_http10_upstream_does_not_close_the_clients_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    server.org_with_key("acme").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let mut config = ProxyConfig::new(
        format!("http://{upstream}").parse().unwrap(),
        FingerprintKey::new(FP_KEY).unwrap(),
    );
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..3 {
        client
            .write_all(b"GET /old HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "request {i}: the connection closed: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    proxy.stop().await;
    assert_eq!(proxy_recorded(&server, "acme").await, 3);
}

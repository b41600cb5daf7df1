//! HTTP/2 on both sides of the proxy (h2c, and h2 by ALPN over TLS) and TLS termination.

use apitrail_model::OrgId;
use apitrail_proxy::server_tls;
use apitrail_testkit::TestServer;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::support::*;

/// A client speaking HTTP/2 with prior knowledge (h2c).
fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req` and reads the answer: its version, status and JSON body.
async fn exchange<C>(
    client: &Client<C, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (Version, StatusCode, Value)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = client.request(req).await.unwrap();
    let (version, status) = (resp.version(), resp.status());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    (version, status, json)
}

#[tokio::test]
async fn h2c_clients_are_forwarded_and_every_stream_is_recorded() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.routes = routes(&["/v1/items/{id}"]);
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let client = h2c_client();

    let req = Request::post(format!("{}/v1/items/7?q=1&status=201", proxy.base))
        .header("apitrail-org", "acme")
        .header("user-agent", "h2c-test/1.0")
        .header("authorization", "Bearer h2-secret")
        .body(Full::new(Bytes::from_static(b"over h2c")))
        .unwrap();
    let (version, status, seen) = exchange(&client, req).await;
    assert_eq!(version, Version::HTTP_2, "the client got HTTP/2 back");
    assert_eq!(status, StatusCode::CREATED);
    // The upstream got HTTP/1.1, with the host the client named in `:authority`.
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["headers"]["host"][0], proxy.addr.to_string());
    assert_eq!(seen["body"], "over h2c");
    assert_eq!(seen["query"], "q=1&status=201");
    assert!(seen["headers"].get("apitrail-org").is_none());

    // Many streams at once on the one connection: each is forwarded and recorded.
    let mut streams = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let url = format!("{}/v1/items/{i}", proxy.base);
        streams.push(tokio::spawn(async move {
            let req = Request::get(url)
                .header("apitrail-org", "acme")
                .body(Full::new(Bytes::new()))
                .unwrap();
            exchange(&client, req).await
        }));
    }
    for s in streams {
        let (version, status, seen) = s.await.unwrap();
        assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
        assert_eq!(seen["method"], "GET");
    }
    let items = logs(&server, &key.secret, 21).await;
    assert_eq!(items.len(), 21);
    let first = items.iter().find(|l| l["method"] == "POST").unwrap();
    assert_eq!(first["path"], "/v1/items/7");
    assert_eq!(first["route_pattern"], "/v1/items/{id}");
    assert_eq!(first["status_code"], 201);
    assert_eq!(first["auth_type"], "bearer");
    let gets = items.iter().filter(|l| l["method"] == "GET").count();
    assert_eq!(gets, 20);
    proxy.stop().await;
    let stored = stored_logs(server.store.as_ref(), "acme").await;
    let post = stored.iter().find(|l| l.method == "POST").unwrap();
    assert_eq!(post.query.as_deref(), Some("q=1&status=201"));
    assert_eq!(post.user_agent.as_deref(), Some("h2c-test/1.0"));
    assert_eq!(
        post.client_ip.map(|ip| ip.to_string()).as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn an_http2_only_upstream_is_reached_with_prior_knowledge() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start_h2c().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    // Over HTTP/1.1 this upstream cannot be spoken to: a 502, recorded.
    let h1 = RunningProxy::start(config.clone(), store_sink(&server.store)).await;
    let resp = reqwest::get(format!("{}/refused", h1.base)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    h1.stop().await;

    config.upstream_http2 = true;
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    // An HTTP/1.1 client, and an h2c one, both reach it over HTTP/2.
    let resp = reqwest::Client::new()
        .put(format!("{}/grpc-like?status=202", proxy.base))
        .header("te", "trailers")
        .header("connection", "te")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["body"], "payload");
    // `TE: trailers`, the one value HTTP/2 allows, goes through (gRPC needs it).
    assert_eq!(seen["headers"]["te"][0], "trailers");
    let req = Request::get(format!("{}/from-h2c", proxy.base))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (version, status, seen) = exchange(&h2c_client(), req).await;
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    assert_eq!(seen["version"], "HTTP/2.0");
    proxy.stop().await;
    let items = logs(&server, &key.secret, 3).await;
    let status =
        |path: &str| items.iter().find(|l| l["path"] == path).unwrap()["status_code"].clone();
    assert_eq!(status("/refused"), 502);
    assert_eq!(status("/grpc-like"), 202);
    assert_eq!(status("/from-h2c"), 200);
}

#[tokio::test]
async fn tls_is_terminated_with_h2_and_http1_chosen_by_alpn() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let made = TestCertificate::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &made.cert_pem).unwrap();
    std::fs::write(&key_file, &made.key_pem).unwrap();
    // The PEM files are read as `--tls-cert`/`--tls-key` read them; a key that does not
    // belong to the certificate, or a file without one, is refused with a clear message.
    let tls = server_tls(&cert, &key_file).unwrap();
    let other = TestCertificate::new();
    std::fs::write(dir.path().join("other.pem"), &other.key_pem).unwrap();
    let mismatched = server_tls(&cert, &dir.path().join("other.pem")).unwrap_err();
    assert!(
        mismatched.contains("do not make a usable pair"),
        "{mismatched}"
    );
    let missing = server_tls(&key_file, &key_file).unwrap_err();
    assert!(missing.contains("no PEM certificate"), "{missing}");

    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    config.tls = Some(tls);
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let url = |path: &str| format!("https://localhost:{}{path}", proxy.addr.port());

    // hyper-rustls offers `h2` alone, or `http/1.1` alone, by ALPN.
    for (alpn, expected) in [("h2", Version::HTTP_2), ("http/1.1", Version::HTTP_11)] {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(made.client_config())
            .https_only();
        let client = if expected == Version::HTTP_2 {
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector.enable_http2().build())
        } else {
            Client::builder(TokioExecutor::new()).build(connector.enable_http1().build())
        };
        let path = format!("/tls/{}", alpn.replace('/', "-"));
        let req = Request::post(url(&path))
            .body(Full::new(Bytes::from_static(b"encrypted")))
            .unwrap();
        let (version, status, seen) = exchange(&client, req).await;
        assert_eq!((version, status), (expected, StatusCode::OK));
        assert_eq!(seen["body"], "encrypted");
        assert_eq!(
            seen["headers"]["host"][0],
            format!("localhost:{}", proxy.addr.port())
        );
    }
    // Plain HTTP to the TLS port gets no answer, and the proxy serves on.
    let plain = reqwest::get(format!("http://{}/plain", proxy.addr)).await;
    assert!(plain.is_err(), "{plain:?}");
    let items = logs(&server, &key.secret, 2).await;
    let mut paths: Vec<&str> = items.iter().map(|l| l["path"].as_str().unwrap()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/tls/h2", "/tls/http-1.1"]);
    proxy.stop().await;
}

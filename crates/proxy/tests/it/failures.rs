//! Exchanges that go wrong are recorded too, and the log never fails or blocks traffic.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apitrail_model::OrgId;
use apitrail_proxy::{DropReason, StoreSink};
use apitrail_testkit::{TestServer, expect, header};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use crate::support::*;

#[tokio::test]
async fn an_unreachable_upstream_is_a_recorded_502() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    // A port that was free a moment ago: nothing listens there.
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    drop(upstream);
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.upstream = format!("http://{}", closed.local_addr().unwrap())
        .parse()
        .unwrap();
    drop(closed);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/down?x=1", proxy.base))
        .send()
        .await
        .unwrap();
    let id = header(&resp, "x-request-id").unwrap();
    let body = expect(resp, StatusCode::BAD_GATEWAY).await;
    assert_eq!(body["error"]["code"], "bad_gateway");
    assert_eq!(body["request_id"], id.as_str());
    let log = &logs(&server, &key.secret, 1).await[0];
    assert_eq!(log["status_code"], 502);
    assert_eq!(log["path"], "/v1/down");
    assert_eq!(log["request_id"], id.as_str());
    assert_eq!(log["error_code"], "upstream_unreachable");
    assert_eq!(proxy.stats.upstream_errors.load(Ordering::Relaxed), 1);
    assert_eq!(
        proxy.metric("apitrail_proxy_upstream_errors_total").await,
        1.0
    );
    let health = reqwest::get(format!("{}/healthz", proxy.admin))
        .await
        .unwrap();
    assert_eq!(expect(health, StatusCode::OK).await["status"], "ok");
    proxy.stop().await;
}

/// Sends a raw request and returns the open socket.
async fn raw_request(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn a_client_gone_before_the_response_ended_is_a_recorded_499() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;

    // Gone while the upstream is still thinking.
    let arrived = upstream.arrived.notified();
    let stream = raw_request(proxy.addr, "/hang/before-head").await;
    arrived.await;
    drop(stream);
    let log = &logs(&server, &key.secret, 1).await[0];
    assert_eq!(log["path"], "/hang/before-head");
    assert_eq!(log["status_code"], 499);

    // Gone in the middle of the response body.
    let arrived = upstream.arrived.notified();
    let mut stream = raw_request(proxy.addr, "/drip/mid-body").await;
    arrived.await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("first chunk") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the proxy closed early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    drop(stream);
    let items = logs(&server, &key.secret, 2).await;
    let log = items
        .iter()
        .find(|l| l["path"] == "/drip/mid-body")
        .unwrap();
    assert_eq!(log["status_code"], 499, "{log}");
    assert_eq!(proxy.stats.client_gone.load(Ordering::Relaxed), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_full_buffer_drops_records_never_requests() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    config.buffer_records = 4;
    let sink = Arc::new(GatedSink {
        inner: StoreSink::new(Arc::clone(&server.store)),
        open: Semaphore::new(0),
        waiting: Notify::new(),
    });
    let proxy = RunningProxy::start(config, Arc::clone(&sink) as _).await;
    let client = reqwest::Client::new();
    // The first record reaches the (stuck) sink; four wait in the buffer; the rest are
    // dropped, and every request is answered all the same.
    let waiting = sink.waiting.notified();
    let resp = client
        .get(format!("{}/r/0", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    waiting.await;
    const N: usize = 50;
    for i in 1..N {
        let resp = client
            .get(format!("{}/r/{i}", proxy.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
    }
    let stats = Arc::clone(&proxy.stats);
    eventually("the buffer to overflow", || async {
        (stats.dropped(DropReason::BufferFull) == (N - 5) as u64).then_some(())
    })
    .await;
    assert_eq!(stats.forwarded.load(Ordering::Relaxed), N as u64);
    // /metrics tells the same.
    let dropped = proxy
        .metric("apitrail_proxy_dropped_total{reason=\"buffer_full\"}")
        .await;
    assert_eq!(dropped, (N - 5) as f64);
    assert_eq!(
        proxy.metric("apitrail_proxy_forwarded_total").await,
        N as f64
    );
    assert_eq!(proxy.metric("apitrail_proxy_buffer_records").await, 4.0);
    assert_eq!(
        proxy.metric("apitrail_proxy_buffer_capacity_records").await,
        4.0
    );
    assert_eq!(
        proxy.metric("apitrail_proxy_upstream_seconds_count").await,
        N as f64
    );
    // The sink comes back: what was buffered is written.
    sink.open.add_permits(1000);
    proxy.stop().await;
    assert_eq!(stats.recorded.load(Ordering::Relaxed), 5);
    assert_eq!(stats.dropped_total(), (N - 5) as u64);
    let items = logs(&server, &key.secret, 5).await;
    assert_eq!(items.len(), 5);
}

#[tokio::test]
async fn shutdown_finishes_exchanges_in_flight_and_writes_their_records() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let mut proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let arrived = upstream.arrived.notified();
    let request = tokio::spawn(
        reqwest::Client::new()
            .get(format!("{}/slow/in-flight", proxy.base))
            .send(),
    );
    arrived.await;
    proxy.begin_stop();
    // It stops accepting...
    let addr = proxy.addr;
    eventually("the listener to close", || async move {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    // ...but the exchange in flight completes, and its record is written before the end.
    upstream.release.notify_one();
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "slow");
    proxy.stop().await;
    let items = server.logs(&key.secret, "").await;
    assert_eq!(items["data"][0]["path"], "/slow/in-flight", "{items}");
}

#[tokio::test]
async fn bodies_are_captured_while_streaming_up_to_the_cap() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    config.capture_bodies = true;
    config.body_cap_bytes = 16;
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/count", proxy.base))
        .body("0123456789abcdefXYZ")
        .send()
        .await
        .unwrap();
    assert_eq!(expect(resp, StatusCode::OK).await["received"], 19);
    let resp = client
        .post(format!("{}/bytes/10", proxy.base))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "x".repeat(10));
    proxy.stop().await;
    let calls = eventually("two calls", || async {
        let resp = server
            .get("/org/api-calls?sort_by=created_at_ascending", &key.secret)
            .send()
            .await
            .unwrap();
        let page = expect(resp, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap().clone();
        (items.len() == 2).then_some(items)
    })
    .await;
    assert_eq!(
        calls[0]["request_body"], "0123456789abcdef",
        "cut at the cap"
    );
    assert_eq!(calls[0]["response_body"], r#"{"received":19}"#);
    assert_eq!(calls[1]["request_body"], "small");
    assert_eq!(calls[1]["response_body"], "xxxxxxxxxx");
    let stored = {
        let tenant = server
            .store
            .tenant(&OrgId::parse("acme").unwrap())
            .await
            .unwrap()
            .unwrap();
        server
            .store
            .list_request_logs(
                &tenant,
                &apitrail_model::LogFilter::default(),
                apitrail_model::Sort::NEWEST_FIRST,
                apitrail_model::PageRequest::first(10),
            )
            .await
            .unwrap()
            .items
    };
    let count = stored.iter().find(|l| l.path == "/count").unwrap();
    assert!(count.request_body_truncated && !count.response_body_truncated);
    let bytes = stored.iter().find(|l| l.path == "/bytes/10").unwrap();
    assert!(!bytes.request_body_truncated && !bytes.response_body_truncated);
}

#[tokio::test]
async fn shutdown_waits_for_exchanges_in_flight_only_for_the_grace() {
    let server = TestServer::start().await;
    server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    config.shutdown_grace = std::time::Duration::from_millis(200);
    let mut proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let arrived = upstream.arrived.notified();
    let _stuck = raw_request(proxy.addr, "/hang/forever").await;
    arrived.await;
    proxy.begin_stop();
    // The upstream never answers, yet the proxy stops (after the grace).
    tokio::time::timeout(std::time::Duration::from_secs(10), proxy.stop())
        .await
        .expect("the proxy stopped within the grace");
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_and_logged_once_with_the_tunnels_duration() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade/chat HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("x-request-id: req_"), "{head}");
    assert!(!head.contains("apitrail-user-id"), "{head}");
    // Bytes go both ways through the tunnel, for a while.
    for message in ["hello", "tunnel"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, message.as_bytes());
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    // Nothing is logged while the tunnel is open...
    assert_eq!(proxy.stats.recorded.load(Ordering::Relaxed), 0);
    drop(stream);
    // ...and one record when it closes.
    let items = logs(&server, &key.secret, 1).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status_code"], 101);
    assert_eq!(items[0]["path"], "/upgrade/chat");
    assert!(
        items[0]["duration_ms"].as_i64().unwrap() >= 120,
        "the tunnel's duration: {}",
        items[0]
    );
    // The 101's attribution headers count, as any response's.
    let resp = server
        .get("/v1/api-keys/requests", &key.secret)
        .send()
        .await
        .unwrap();
    let page = expect(resp, StatusCode::OK).await;
    assert_eq!(page["data"]["items"][0]["userId"], "usr_tunnel");
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_body_too_slow_is_a_recorded_408() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    config.serve.body_read_timeout = std::time::Duration::from_millis(200);
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /count HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    // The rest never comes.
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    let log = &logs(&server, &key.secret, 1).await[0];
    assert_eq!(log["status_code"], 408);
    assert_eq!(log["path"], "/count");
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_breaking_off_its_body_is_recorded_with_an_error_code() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let upstream = TestUpstream::start().await;
    let mut config = config(&upstream);
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let resp = reqwest::get(format!("{}/abort", proxy.base)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.bytes().await.is_err(),
        "the client sees the body cut short"
    );
    let log = &logs(&server, &key.secret, 1).await[0];
    assert_eq!(log["status_code"], 200);
    assert_eq!(log["error_code"], "upstream_aborted");
    proxy.stop().await;
}

#[tokio::test]
async fn a_websocket_echo_works_through_the_proxy() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    // A real WebSocket echo server as the upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        ws.send(message).await.unwrap();
                    }
                }
            });
        }
    });
    let upstream: apitrail_proxy::Upstream = format!("http://{ws_addr}").parse().unwrap();
    let mut config = apitrail_proxy::ProxyConfig::new(
        upstream,
        apitrail_proxy::FingerprintKey::new(FP_KEY).unwrap(),
    );
    config.default_org = Some(OrgId::parse("acme").unwrap());
    let proxy = RunningProxy::start(config, store_sink(&server.store)).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/socket?room=1", proxy.addr))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the proxy"] {
        ws.send(Message::text(text)).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let log = &logs(&server, &key.secret, 1).await[0];
    assert_eq!(log["status_code"], 101);
    assert_eq!(log["path"], "/socket");
    assert_eq!(log["method"], "GET");
    proxy.stop().await;
}

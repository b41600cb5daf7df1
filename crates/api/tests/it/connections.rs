//! The listener's protections, exercised with real slow sockets against the real server:
//! the header-read timeout, the keep-alive idle timeout, the body timeouts (408 in the
//! native envelope, then the connection closed), the connection cap (idle connections make
//! room, others wait), the limits on the request head (414/431 in the native envelope) and
//! graceful shutdown with idle connections open. Each timeout is set small through
//! `ApiConfig::serve`; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use apitrail_api::serve::ServeConfig;
use apitrail_testkit::{Options, TestServer, expect, expect_native_error, header};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slack allowed on top of a timeout before the test calls it missed (a loaded machine).
const SLACK: Duration = Duration::from_secs(4);

fn limits(f: impl FnOnce(&mut ServeConfig)) -> Options {
    let mut serve = ServeConfig {
        header_read_timeout: Duration::from_secs(30),
        keep_alive_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
        body_deadline: Duration::from_secs(60),
        max_connections: 1000,
        http2: false,
    };
    f(&mut serve);
    Options {
        serve,
        ..Options::default()
    }
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one response (the server always sends `content-length`), failing after `within`.
async fn read_response(stream: &mut TcpStream, within: Duration) -> Raw {
    tokio::time::timeout(within, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read the response");
            assert!(n > 0, "connection closed before a response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .expect("content-length");
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk).await.expect("read the body");
            assert!(n > 0, "connection closed inside the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        Raw {
            status,
            headers,
            body: buf[head_end..head_end + len].to_vec(),
        }
    })
    .await
    .expect("no response in time")
}

/// Waits until the server closes the connection (EOF or reset) and returns how long that
/// took; fails if it is still open after `within` or sends anything.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) => start.elapsed(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => start.elapsed(),
        Ok(Ok(_)) => panic!("the server sent data instead of closing"),
        Ok(Err(e)) => panic!("unexpected error: {e}"),
        Err(_) => panic!("the connection is still open after {within:?}"),
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.addr).await.unwrap()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

/// A connection that completed one request and now idles (kept alive).
async fn idle_connection(server: &TestServer) -> TcpStream {
    let mut s = connect(server).await;
    s.write_all(HEALTHZ).await.unwrap();
    let r = read_response(&mut s, SLACK).await;
    assert_eq!(r.status, 200);
    s
}

/// A connection that completed one request and has sent half of the next request's head.
async fn half_head_connection(server: &TestServer) -> TcpStream {
    let mut s = idle_connection(server).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    s
}

async fn metric(server: &TestServer, client: &reqwest::Client, name: &str) -> f64 {
    let resp = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

async fn healthz_ok(server: &TestServer) {
    let resp = reqwest::Client::new()
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    expect(resp, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_head_is_cut_off_at_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let server = TestServer::start_with(limits(|c| c.header_read_timeout = timeout)).await;
    let mut silent = connect(&server).await;
    let mut partial = connect(&server).await;
    partial
        .write_all(b"POST /v1/ingest/requests HTTP/1.1\r\nHost: test\r\nContent-Le")
        .await
        .unwrap();
    // Others are served meanwhile.
    healthz_ok(&server).await;
    let took = closed_within(&mut partial, timeout + SLACK).await;
    assert!(took >= timeout / 2, "closed after {took:?}");
    // A connection that never sends a byte gets no longer.
    closed_within(&mut silent, SLACK).await;
    let client = reqwest::Client::new();
    assert!(metric(&server, &client, "apitrail_http_header_timeouts_total").await >= 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout() {
    let keep_alive = Duration::from_millis(1500);
    let server = TestServer::start_with(limits(|c| c.keep_alive_timeout = keep_alive)).await;
    let mut conn = idle_connection(&server).await;
    // Kept alive: a second request on the same connection is served.
    conn.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut conn, SLACK).await.status, 200);
    let start = Instant::now();
    healthz_ok(&server).await;
    let took = start.elapsed() + closed_within(&mut conn, keep_alive + SLACK).await;
    // The header timeout (30 s) cannot have closed it.
    assert!(took >= keep_alive / 2, "closed after {took:?}");
    let client = reqwest::Client::new();
    assert_eq!(
        metric(&server, &client, "apitrail_http_keep_alive_timeouts_total").await,
        1.0
    );
    // This connection, the idle one (gone) and the one of healthz_ok.
    assert!(metric(&server, &client, "apitrail_http_connections_total").await >= 3.0);
    // At least the one asking.
    assert!(metric(&server, &client, "apitrail_http_connections_open").await >= 1.0);
    server.stop().await;
}

/// Sends the head of an ingest call declaring a 1,000-byte JSON body.
async fn start_ingest(server: &TestServer, secret: &str) -> TcpStream {
    let mut s = connect(server).await;
    let head = format!(
        "POST /v1/ingest/requests HTTP/1.1\r\nHost: test\r\nX-API-Key: {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

async fn expect_408(conn: &mut TcpStream, within: Duration, says: &str) {
    let r = read_response(conn, within).await;
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
    assert_eq!(
        body["request_id"].as_str(),
        r.header("x-request-id"),
        "{body}"
    );
    assert_eq!(r.header("connection"), Some("close"));
    closed_within(conn, SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_in_the_native_envelope_and_the_connection_closes() {
    let stall = Duration::from_secs(1);
    let server = TestServer::start_with(limits(|c| c.body_read_timeout = stall)).await;
    let key = server.org_with_key("slow").await;
    let mut conn = start_ingest(&server, &key.secret).await;
    conn.write_all(b"[{\"method\":\"GET\",").await.unwrap();
    let start = Instant::now();
    healthz_ok(&server).await;
    expect_408(&mut conn, stall + SLACK, "stalled").await;
    assert!(start.elapsed() >= stall / 2, "after {:?}", start.elapsed());
    let client = reqwest::Client::new();
    assert_eq!(
        metric(&server, &client, "apitrail_http_body_timeouts_total").await,
        1.0
    );
    // Nothing of the cut-off batch was stored.
    let logs = server.logs(&key.secret, "").await;
    assert_eq!(logs["data"].as_array().unwrap().len(), 0, "{logs}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_body_is_cut_off_at_the_body_deadline() {
    let deadline = Duration::from_millis(1500);
    let server = TestServer::start_with(limits(|c| {
        c.body_deadline = deadline;
        c.body_read_timeout = Duration::from_secs(30);
    }))
    .await;
    let key = server.org_with_key("drip").await;
    let conn = start_ingest(&server, &key.secret).await;
    let start = Instant::now();
    let (read, mut write) = conn.into_split();
    // One byte every 100 ms, never stalling for the 30 s read timeout, until shortly before
    // the deadline (bytes arriving after the server closed would make it reset the socket).
    let drip = tokio::spawn(async move {
        while start.elapsed() + Duration::from_millis(300) < deadline {
            write.write_all(b" ").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        write
    });
    let write = drip.await.unwrap();
    let mut conn = read.reunite(write).unwrap();
    expect_408(&mut conn, deadline + SLACK, "within").await;
    assert!(
        start.elapsed() >= deadline / 2,
        "after {:?}",
        start.elapsed()
    );
    server.stop().await;
}

/// An ingest call whose handler is reading its (1,000-byte) body: the interim `100 Continue`
/// is sent when the handler starts reading, so the request is surely in flight.
async fn in_flight_ingest(server: &TestServer, secret: &str) -> TcpStream {
    let mut s = connect(server).await;
    let head = format!(
        "POST /v1/ingest/requests HTTP/1.1\r\nHost: test\r\nX-API-Key: {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\
         Expect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    tokio::time::timeout(SLACK, async {
        while !interim.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed");
            interim.push(byte[0]);
        }
    })
    .await
    .expect("no 100 Continue");
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    s
}

/// Closes the test client's pooled connection, so that it holds no slot under a cap.
/// An org and a key with `write` made behind the API (as the CLI does), so that no HTTP
/// connection of the test client holds a slot the connection-cap tests count.
async fn key_behind_the_api(server: &TestServer, org: &str) -> String {
    use apitrail_api::native::admin::{create_key_as, create_org_as};
    use apitrail_model::key::NewApiKeyInput;
    use apitrail_model::{NewApiKey, NewOrg, OrgId};
    create_org_as(
        server.store.as_ref(),
        NewOrg::parse(Some(org.into()), Some(org.into())).unwrap(),
    )
    .await
    .unwrap();
    let tenant = server
        .store
        .tenant(&OrgId::parse(org).unwrap())
        .await
        .unwrap()
        .unwrap();
    let new = NewApiKey::try_from(NewApiKeyInput {
        name: Some("cap".into()),
        scopes: Some(vec!["write".into()]),
        principal_type: Some("service_account".into()),
        principal_id: Some("sa_cap".into()),
        ..NewApiKeyInput::default()
    })
    .unwrap();
    let (_, secret) = create_key_as(server.store.as_ref(), &tenant, new, None)
        .await
        .unwrap();
    secret.expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_for_a_busy_one_to_end() {
    let stall = Duration::from_secs(2);
    let server = TestServer::start_with(limits(|c| {
        c.max_connections = 2;
        c.body_read_timeout = stall;
    }))
    .await;
    let secret = key_behind_the_api(&server, "cap").await;
    // Two requests in flight: never closed for room.
    let mut a = in_flight_ingest(&server, &secret).await;
    let mut b = in_flight_ingest(&server, &secret).await;
    let client = reqwest::Client::new();
    let start = Instant::now();
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = format!("{}/healthz", server.base);
        async move { client.get(url).send().await.unwrap().status() }
    });
    // The third waits until the stalled bodies time out and free their slots, then is served.
    let status = tokio::time::timeout(stall + SLACK, waiting)
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        start.elapsed() >= stall / 2,
        "served after {:?}, before a slot was free",
        start.elapsed()
    );
    expect_408(&mut a, SLACK, "stalled").await;
    expect_408(&mut b, SLACK, "stalled").await;
    assert!(
        metric(
            &server,
            &client,
            "apitrail_http_connection_limit_reached_total"
        )
        .await
            >= 1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_an_idle_connection_is_closed_to_make_room() {
    let server = TestServer::start_with(limits(|c| c.max_connections = 2)).await;
    let secret = key_behind_the_api(&server, "shed").await;
    let mut idle = idle_connection(&server).await;
    let mut busy = in_flight_ingest(&server, &secret).await;
    // Served at once (the keep-alive and body timeouts are 30 s): the idle one made room.
    let client = reqwest::Client::new();
    let resp = tokio::time::timeout(SLACK, client.get(format!("{}/healthz", server.base)).send())
        .await
        .expect("not served while an idle connection held the last slot")
        .unwrap();
    expect(resp, StatusCode::OK).await;
    closed_within(&mut idle, SLACK).await;
    // The connection in the middle of a request was left alone: it finishes its request.
    let mut body = br#"[{"method":"GET","path":"/kept","status_code":200}]"#.to_vec();
    body.resize(1000, b' ');
    busy.write_all(&body).await.unwrap();
    let r = read_response(&mut busy, SLACK).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    // The figures are read on that same kept-alive connection: a new one would arrive at the
    // cap again and (rightly) make an idle connection close, which this count must not see.
    busy.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8(read_response(&mut busy, SLACK).await.body).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    };
    assert_eq!(value("apitrail_http_connections_shed_total"), 1.0);
    assert!(value("apitrail_http_connection_limit_reached_total") >= 1.0);
    drop(busy);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_connections_without_a_request_in_flight_at_once() {
    // The timeouts (30 s) are far longer than the shutdown may take.
    let server = TestServer::start_with(limits(|_| {})).await;
    let mut idle = idle_connection(&server).await;
    let mut half = half_head_connection(&server).await;
    let mut fresh = connect(&server).await;
    healthz_ok(&server).await;
    tokio::time::timeout(SLACK, server.stop())
        .await
        .expect("shutdown waited for connections with nothing in flight");
    closed_within(&mut idle, SLACK).await;
    closed_within(&mut half, SLACK).await;
    closed_within(&mut fresh, SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_request_in_flight_finish() {
    let server = TestServer::start_with(limits(|_| {})).await;
    let key = server.org_with_key("inflight").await;
    let mut body = br#"[{"method":"GET","path":"/late","status_code":200}]"#.to_vec();
    body.resize(1000, b' ');
    let mut conn = in_flight_ingest(&server, &key.secret).await;
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    // The listener is gone (the shutdown has begun) while the request is still in flight.
    let deadline = Instant::now() + SLACK;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the server kept accepting");
        tokio::task::yield_now().await;
    }
    assert!(
        !stopping.is_finished(),
        "the shutdown did not wait for the request"
    );
    conn.write_all(&body).await.unwrap();
    let r = read_response(&mut conn, SLACK).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));
    closed_within(&mut conn, SLACK).await;
    tokio::time::timeout(SLACK, stopping)
        .await
        .expect("the shutdown did not end after the request")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_target_is_414_in_the_native_envelope() {
    let server = TestServer::start().await;
    let long = format!("/v1/logs?route_pattern={}", "a".repeat(9000));
    let resp = server.request(Method::GET, &long).send().await.unwrap();
    expect_native_error(resp, StatusCode::URI_TOO_LONG, "uri_too_long", None).await;
    // Just under the limit, the request reaches its route (and its authentication).
    let fits = format!("/v1/logs?route_pattern={}", "a".repeat(8000));
    let resp = server.request(Method::GET, &fits).send().await.unwrap();
    expect_native_error(resp, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_431_in_the_native_envelope() {
    let server = TestServer::start().await;
    let mut many = server.request(Method::GET, "/healthz");
    for i in 0..150 {
        many = many.header(format!("x-filler-{i}"), "1");
    }
    let resp = many.send().await.unwrap();
    expect_native_error(
        resp,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        None,
    )
    .await;
    let resp = server
        .request(Method::GET, "/healthz")
        .header("x-large", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    let body = expect_native_error(
        resp,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        None,
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("32768"),
        "{body}"
    );
    // A request id sent along is kept, as on every error.
    let resp = server
        .request(Method::GET, "/healthz")
        .header("x-request-id", "req-big-1")
        .header("x-large", "b".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-request-id").as_deref(), Some("req-big-1"));
    server.stop().await;
}

/// The API speaks HTTP/1.1 only (HTTP/2 is the capture proxy's): an h2c preface is not
/// answered as HTTP/2, and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_does_not_speak_h2c() {
    let server = TestServer::start().await;
    let mut s = connect(&server).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(SLACK, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection is still open");
    // An HTTP/2 server would answer with a SETTINGS frame (type 0x04 at byte 3).
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 "),
        "answered as HTTP/2: {got:?}"
    );
    healthz_ok(&server).await;
    server.stop().await;
}

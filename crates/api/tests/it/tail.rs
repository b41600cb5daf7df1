//! HTTP tests of the live tails (`GET /v1/logs/tail`, `GET /v1/audit-log/tail`): real SSE
//! clients over reqwest's byte stream with a small parser here; order, filters, resume by
//! `Last-Event-ID` while ingest goes on, isolation, the cut-off of a slow client, heartbeats,
//! caps and errors in the native envelope. Run on PostgreSQL with
//! `APITRAIL_TEST_BACKEND=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use apitrail_api::tail::TailConfig;
use apitrail_testkit::{Options, TestServer, expect_native_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How long any one expected event may take.
const WAIT: Duration = Duration::from_secs(20);

/// One Server-Sent Event (or comment) as received.
#[derive(Debug, Clone, Default)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: Option<String>,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// A tail connection read chunk by chunk and parsed per the SSE format.
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    ended: bool,
}

impl Sse {
    /// Opens `path` with `secret` (and `Last-Event-ID` when given), expecting a stream.
    async fn open(server: &TestServer, path: &str, secret: &str, last: Option<&str>) -> Self {
        let mut req = server.get(path, secret);
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Self {
            resp,
            buf: Vec::new(),
            ended: false,
        }
    }

    /// The next event or comment; `None` when the server ended the stream. Fails after
    /// `WAIT`.
    async fn next_any(&mut self) -> Option<SseEvent> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.0).collect();
                self.buf.drain(..end.1 - end.0);
                return Some(parse_block(&String::from_utf8(block).unwrap()));
            }
            if self.ended {
                assert!(self.buf.is_empty(), "stream ended mid-event");
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("no event within the deadline")
                .expect("stream read failed");
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => self.ended = true,
            }
        }
    }

    /// The next event, skipping heartbeat comments.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            match self.next_any().await {
                Some(e) if e.comment.is_some() && e.event.is_none() && e.data.is_empty() => {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// The next `n` events, each a record event of `kind`.
    async fn take(&mut self, n: usize, kind: &str) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let e = self.next().await.expect("the stream ended early");
            assert_eq!(e.event.as_deref(), Some(kind), "{e:?}");
            out.push(e);
        }
        out
    }
}

/// Where the first event block ends: (end of block, end of its blank line).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\n\n") {
            Some((i, i + 2))
        } else if buf[i..].starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else {
            None
        }
    })
}

fn parse_block(block: &str) -> SseEvent {
    let mut e = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            e.comment = Some(c.trim().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => e.id = Some(value.to_owned()),
            "event" => e.event = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    e.data = data.join("\n");
    e
}

fn log(i: usize, method: &str, status: u16) -> Value {
    json!({"method": method, "path": format!("/t/{i}"), "status_code": status})
}

/// The index `i` of a tail event's `/t/{i}` path.
fn index_of(e: &SseEvent) -> usize {
    e.json()["path"].as_str().unwrap()[3..].parse().unwrap()
}

async fn server_with(tail: TailConfig) -> TestServer {
    TestServer::start_with(Options {
        tail,
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_tail_sends_new_logs_in_order_with_filters_and_the_list_items() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    // Stored before the tail opened: not sent.
    server
        .ingest(
            &key.secret,
            &json!([log(0, "POST", 201)]),
            StatusCode::ACCEPTED,
        )
        .await;
    let mut posts = Sse::open(&server, "/v1/logs/tail?method=post", &key.secret, None).await;
    let mut errors = Sse::open(
        &server,
        "/v1/logs/tail?status_min=500&route_pattern=",
        &key.secret,
        None,
    )
    .await;
    let mut all = Sse::open(&server, "/v1/logs/tail", &key.secret, None).await;
    let mut sent = Vec::new();
    for batch in 0..5 {
        let records: Vec<Value> = (0..10)
            .map(|j| {
                let i = 1 + batch * 10 + j;
                let (method, status) = match i % 3 {
                    0 => ("POST", 201),
                    1 => ("GET", 200),
                    _ => ("GET", 503),
                };
                log(i, method, status)
            })
            .collect();
        sent.extend(records.clone());
        server
            .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
            .await;
    }
    let want = |f: &dyn Fn(&Value) -> bool| -> Vec<usize> {
        sent.iter()
            .filter(|r| f(r))
            .map(|r| r["path"].as_str().unwrap()[3..].parse().unwrap())
            .collect()
    };
    let got_all: Vec<usize> = all
        .take(50, "request_log")
        .await
        .iter()
        .map(index_of)
        .collect();
    assert_eq!(got_all, want(&|_| true));
    let want_posts = want(&|r| r["method"] == "POST");
    let got_posts = posts.take(want_posts.len(), "request_log").await;
    assert_eq!(
        got_posts.iter().map(index_of).collect::<Vec<_>>(),
        want_posts
    );
    let want_errors = want(&|r| r["status_code"].as_u64().unwrap() >= 500);
    let got_errors = errors.take(want_errors.len(), "request_log").await;
    assert_eq!(
        got_errors.iter().map(index_of).collect::<Vec<_>>(),
        want_errors
    );
    // Each event is the list's item, under the record's id.
    let list = server.logs(&key.secret, "limit=100&method=POST").await;
    for e in &got_posts {
        let item = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| Some(i["id"].as_str().unwrap()) == e.id.as_deref())
            .expect("the event's id is a listed log");
        assert_eq!(&e.json(), item);
    }
    // Nothing else arrives: the next record through the filtered tail is the next POST.
    server
        .ingest(
            &key.secret,
            &json!([log(100, "GET", 200), log(101, "POST", 201)]),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(index_of(&posts.take(1, "request_log").await[0]), 101);
    server.stop().await;
}

#[tokio::test]
async fn resuming_with_last_event_id_misses_and_repeats_nothing_while_ingest_goes_on() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let mut tail = Sse::open(&server, "/v1/logs/tail", &key.secret, None).await;
    const BATCHES: usize = 40;
    const PER: usize = 25;
    let ingest = {
        let (base, secret) = (server.base.clone(), key.secret.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for b in 0..BATCHES {
                let records: Vec<Value> = (0..PER).map(|j| log(b * PER + j, "GET", 200)).collect();
                let resp = client
                    .post(format!("{base}/v1/ingest/requests"))
                    .header("x-api-key", &secret)
                    .json(&records)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::ACCEPTED);
            }
        })
    };
    let mut got: Vec<usize> = Vec::new();
    // Three disconnects: by header, by parameter, by header again.
    for round in 0..3 {
        let first = tail.take(137, "request_log").await;
        got.extend(first.iter().map(index_of));
        let last = first.last().unwrap().id.clone().unwrap();
        drop(tail);
        tail = if round == 1 {
            Sse::open(
                &server,
                &format!("/v1/logs/tail?last_event_id={last}"),
                &key.secret,
                None,
            )
            .await
        } else {
            Sse::open(&server, "/v1/logs/tail", &key.secret, Some(&last)).await
        };
    }
    let rest = tail.take(BATCHES * PER - got.len(), "request_log").await;
    got.extend(rest.iter().map(index_of));
    ingest.await.unwrap();
    assert_eq!(got, (0..BATCHES * PER).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_or_malformed_last_event_id_is_a_400() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let other = server.org_with_key("other").await;
    server
        .ingest(
            &other.secret,
            &json!([log(1, "GET", 200)]),
            StatusCode::ACCEPTED,
        )
        .await;
    let foreign = server.logs(&other.secret, "").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (path, header, param) in [
        (
            "/v1/logs/tail".to_owned(),
            Some("0190f5a2-7c3e-7d4a-8f00-0123456789ab"),
            "Last-Event-ID",
        ),
        ("/v1/logs/tail".to_owned(), Some("nope"), "Last-Event-ID"),
        // Another org's record is unknown here.
        (
            format!("/v1/logs/tail?last_event_id={foreign}"),
            None,
            "last_event_id",
        ),
        (
            "/v1/audit-log/tail?last_event_id=x".to_owned(),
            None,
            "last_event_id",
        ),
        // An empty header resumes nothing, so the parameter is still read.
        (
            "/v1/audit-log/tail?last_event_id=AAA".to_owned(),
            Some(""),
            "last_event_id",
        ),
        (
            "/v1/logs/tail?status_min=700".to_owned(),
            None,
            "status_min",
        ),
    ] {
        let mut req = server.get(&path, &key.secret);
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let resp = req.send().await.unwrap();
        expect_native_error(
            resp,
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            Some(param),
        )
        .await;
    }
    server.stop().await;
}

#[tokio::test]
async fn another_orgs_tail_sees_none_of_its_records() {
    let server = TestServer::start().await;
    let a = server.org_with_key("org-a").await;
    let b = server.org_with_key("org-b").await;
    let mut tail_b = Sse::open(&server, "/v1/logs/tail", &b.secret, None).await;
    let mut audit_b = Sse::open(&server, "/v1/audit-log/tail", &b.secret, None).await;
    for i in 0..20 {
        server
            .ingest(
                &a.secret,
                &json!([log(i, "GET", 200)]),
                StatusCode::ACCEPTED,
            )
            .await;
    }
    ingest_audit(&server, &a.secret, &[("create", "source")]).await;
    server
        .ingest(
            &b.secret,
            &json!([log(999, "GET", 200)]),
            StatusCode::ACCEPTED,
        )
        .await;
    ingest_audit(&server, &b.secret, &[("delete", "b-only")]).await;
    assert_eq!(index_of(&tail_b.take(1, "request_log").await[0]), 999);
    let e = audit_b.take(1, "audit_entry").await.remove(0).json();
    assert_eq!(e["resource_type"], "b-only");
    assert_eq!(e["org_id"], "org-b");
    server.stop().await;
}

async fn ingest_audit(server: &TestServer, secret: &str, entries: &[(&str, &str)]) {
    let body: Vec<Value> = entries
        .iter()
        .map(|(action, rt)| json!({"action": action, "resource_type": rt}))
        .collect();
    let resp = server
        .request(reqwest::Method::POST, "/v1/ingest/audit-events")
        .header("x-api-key", secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_audit_tail_sends_entries_in_chain_order_with_filters() {
    let server = TestServer::start().await;
    let key = server.org_with_key("acme").await;
    let mut all = Sse::open(&server, "/v1/audit-log/tail", &key.secret, None).await;
    let mut deletes = Sse::open(
        &server,
        "/v1/audit-log/tail?action=delete",
        &key.secret,
        None,
    )
    .await;
    let mut sent = Vec::new();
    for round in 0..4 {
        let batch: Vec<(String, String)> = (0..5)
            .map(|j| {
                let action = ["create", "update", "delete"][(round + j) % 3];
                (action.to_owned(), format!("type_{round}_{j}"))
            })
            .collect();
        let refs: Vec<(&str, &str)> = batch
            .iter()
            .map(|(a, t)| (a.as_str(), t.as_str()))
            .collect();
        ingest_audit(&server, &key.secret, &refs).await;
        sent.extend(batch);
    }
    let got = all.take(sent.len(), "audit_entry").await;
    let types: Vec<String> = got
        .iter()
        .map(|e| e.json()["resource_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        sent.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()
    );
    let want: Vec<&String> = sent
        .iter()
        .filter(|(a, _)| a == "delete")
        .map(|(_, t)| t)
        .collect();
    let got = deletes.take(want.len(), "audit_entry").await;
    // Each is the list's item.
    let list: Value = server
        .get("/v1/audit-log?action=delete&limit=200", &key.secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (e, t) in got.iter().zip(&want) {
        assert_eq!(e.json()["resource_type"].as_str().unwrap(), t.as_str());
        let item = list["audit_log"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| Some(i["id"].as_str().unwrap()) == e.id.as_deref())
            .expect("listed");
        assert_eq!(&e.json(), item);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_slow_client_is_cut_off_with_an_error_event_and_can_resume() {
    let server = server_with(TailConfig {
        queue: 16,
        // Cut off as soon as the queue overflows, rather than after a catch-up allowance.
        max_lag: Duration::ZERO,
        ..TailConfig::default()
    })
    .await;
    let key = server.org_with_key("acme").await;
    let mut slow = Sse::open(&server, "/v1/logs/tail", &key.secret, None).await;
    // Far more than the socket buffers hold: the server's queue for this tail fills while
    // the client reads nothing.
    let long = "x".repeat(1_000);
    const BATCHES: usize = 20;
    const PER: usize = 1_000;
    for b in 0..BATCHES {
        let records: Vec<Value> = (0..PER)
            .map(|j| {
                json!({"method": "GET", "path": format!("/t/{}", b * PER + j), "status_code": 200,
                       "route_pattern": long})
            })
            .collect();
        server
            .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
            .await;
    }
    let mut got = Vec::new();
    let error = loop {
        let e = slow
            .next()
            .await
            .expect("the stream ended without an error event");
        match e.event.as_deref() {
            Some("request_log") => got.push(e),
            Some("error") => break e,
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert!(
        slow.next().await.is_none(),
        "the stream goes on after the error"
    );
    assert!(got.len() < BATCHES * PER, "nothing was cut off");
    let indexes: Vec<usize> = got.iter().map(index_of).collect();
    assert_eq!(indexes, (0..got.len()).collect::<Vec<_>>());
    let data = error.json();
    assert_eq!(data["error"]["code"], "tail_fell_behind");
    let last = got.last().map(|e| e.id.clone().unwrap());
    assert_eq!(data["last_event_id"].as_str().map(str::to_owned), last);
    // Resuming from there (reading promptly) gets the rest, in order.
    if let Some(last) = last {
        let mut resumed = Sse::open(&server, "/v1/logs/tail", &key.secret, Some(&last)).await;
        let rest = resumed.take(BATCHES * PER - got.len(), "request_log").await;
        assert_eq!(
            rest.iter().map(index_of).collect::<Vec<_>>(),
            (got.len()..BATCHES * PER).collect::<Vec<_>>()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_burst_larger_than_the_queue_reaches_a_client_that_keeps_reading() {
    let server = server_with(TailConfig {
        queue: 8,
        ..TailConfig::default()
    })
    .await;
    let key = server.org_with_key("acme").await;
    let mut tail = Sse::open(&server, "/v1/logs/tail", &key.secret, None).await;
    // Each call stores far more than the queue holds in one commit; the client reads as
    // fast as it can, and the tail catches up through the store instead of dropping it.
    for b in 0..3 {
        let records: Vec<Value> = (0..2_000).map(|j| log(b * 2_000 + j, "GET", 200)).collect();
        server
            .ingest(&key.secret, &Value::Array(records), StatusCode::ACCEPTED)
            .await;
    }
    let got = tail.take(6_000, "request_log").await;
    assert_eq!(
        got.iter().map(index_of).collect::<Vec<_>>(),
        (0..6_000).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_tail_gets_heartbeat_comments() {
    let server = server_with(TailConfig {
        heartbeat: Duration::from_millis(100),
        ..TailConfig::default()
    })
    .await;
    let key = server.org_with_key("acme").await;
    let mut tail = Sse::open(&server, "/v1/logs/tail", &key.secret, None).await;
    let started = Instant::now();
    for _ in 0..3 {
        let e = tail.next_any().await.expect("open");
        assert_eq!(e.comment.as_deref(), Some("heartbeat"), "{e:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(200));
    server.stop().await;
}

#[tokio::test]
async fn tails_beyond_the_caps_are_429_and_a_closed_tail_frees_its_slot() {
    let server = server_with(TailConfig {
        max_per_org: 2,
        max_total: 3,
        // A closed connection is noticed when a heartbeat cannot be written.
        heartbeat: Duration::from_millis(50),
        ..TailConfig::default()
    })
    .await;
    let a = server.org_with_key("org-a").await;
    let b = server.org_with_key("org-b").await;
    let a1 = Sse::open(&server, "/v1/logs/tail", &a.secret, None).await;
    let _a2 = Sse::open(&server, "/v1/audit-log/tail", &a.secret, None).await;
    let resp = server.get("/v1/logs/tail", &a.secret).send().await.unwrap();
    expect_native_error(resp, StatusCode::TOO_MANY_REQUESTS, "too_many_tails", None).await;
    let _b1 = Sse::open(&server, "/v1/logs/tail", &b.secret, None).await;
    let resp = server.get("/v1/logs/tail", &b.secret).send().await.unwrap();
    expect_native_error(resp, StatusCode::TOO_MANY_REQUESTS, "too_many_tails", None).await;
    drop(a1);
    // The slot comes back once the server notices the closed connection.
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = server.get("/v1/logs/tail", &a.secret).send().await.unwrap();
        if resp.status() == StatusCode::OK {
            break;
        }
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            Instant::now() < deadline,
            "the closed tail's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_tail_needs_the_read_scope() {
    let server = TestServer::start().await;
    server.create_org("acme").await;
    let writer = server.create_key("acme", &["write"]).await;
    for path in ["/v1/logs/tail", "/v1/audit-log/tail"] {
        let resp = server.get(path, &writer.secret).send().await.unwrap();
        expect_native_error(resp, StatusCode::FORBIDDEN, "forbidden", None).await;
    }
    server.stop().await;
}

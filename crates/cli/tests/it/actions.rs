//! Actions end to end (SPEC §7, issue #6) on the real binary: a webhook receiver on loopback,
//! started by the test, records every delivery (headers, body, arrival time, peer) and answers
//! per a scripted plan. The server runs with `--allow-private-destinations` (the receiver is
//! on 127.0.0.1) and a short `--retry-schedule`.
//!
//! - success: `created → delivered`, the documented body and headers, and the signature
//!   verified by the receiver with the credential's secret (HMAC-SHA256 written here);
//! - failures: retried with growing gaps until a 2xx, or `failed` after the last attempt;
//! - signaling: acknowledged, then signaled succeeded/failed, or timed out; 409 otherwise;
//! - schema violations listed per field path;
//! - the dispatcher's figures on `/metrics`;
//! - SSRF: refused at creation without the flag, and at delivery time by the destination's
//!   recorded decision (the delivering server's flag only for destinations from before it);
//! - SIGKILL mid-delivery: every record still ends final, redelivered after its lease;
//! - PostgreSQL: two `serve` processes dispatch 10,000 records, never one record twice at once;
//!   two with different `--allow-private-destinations` deliver (or refuse) every record alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apitrail_pgtest::PgServer;
use apitrail_testkit::expect;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{At, org_with_key, serve};

// ---------------------------------------------------------------------------------------
// The webhook receiver

/// What the receiver answers to one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// This status at once.
    Status(u16),
    /// This status after holding the request this long.
    Slow(Duration, u16),
    /// This status once the gate is open ([`Receiver::open_gate`]), after holding the
    /// request this long.
    Gated(Duration, u16),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    /// The `webhook-id` header ("" without one).
    id: String,
    /// Lowercased names; a repeated header's values joined with ", ".
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    at: Instant,
    peer: SocketAddr,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the delivery body is JSON")
    }
}

#[derive(Debug, Default)]
struct Log {
    hits: Vec<Hit>,
    /// Requests per webhook-id seen so far (picks the plan's step).
    arrivals: HashMap<String, usize>,
    /// Requests per webhook-id whose handler is running.
    in_flight: HashMap<String, usize>,
    /// Requests per webhook-id whose handler ran to its answer.
    answered: HashMap<String, usize>,
    /// A second request for an id arrived while one was in flight.
    violations: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    /// Path → the answers to the 1st, 2nd, … request of one webhook-id (the last repeats).
    plans: HashMap<String, Vec<Reply>>,
    log: Mutex<Log>,
    /// Holds [`Reply::Gated`] requests while false.
    gate: tokio::sync::watch::Sender<bool>,
}

/// Ends a request's in-flight span, whether the handler finished or was dropped.
struct InFlight {
    shared: Arc<Shared>,
    id: String,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut log = self.shared.log.lock().unwrap();
        if let Some(n) = log.in_flight.get_mut(&self.id) {
            *n -= 1;
        }
        if self.answered {
            *log.answered.entry(self.id.clone()).or_default() += 1;
        }
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (axum::http::StatusCode, &'static str) {
    let at = Instant::now();
    let path = uri.path().to_owned();
    let mut flat = BTreeMap::<String, String>::new();
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        flat.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let id = flat.get("webhook-id").cloned().unwrap_or_default();
    let reply = {
        let mut log = shared.log.lock().unwrap();
        let nth = {
            let n = log.arrivals.entry(id.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let running = log.in_flight.entry(id.clone()).or_default();
        let overlapping = *running > 0;
        *running += 1;
        if overlapping && !id.is_empty() {
            log.violations.push(format!(
                "a request for {id} arrived while another was in flight"
            ));
        }
        log.hits.push(Hit {
            path: path.clone(),
            id: id.clone(),
            headers: flat,
            body: body.to_vec(),
            at,
            peer,
        });
        shared
            .plans
            .get(&path)
            .map_or(Reply::Status(200), |plan| plan[nth.min(plan.len() - 1)])
    };
    let mut guard = InFlight {
        shared: Arc::clone(&shared),
        id,
        answered: false,
    };
    let status = match reply {
        Reply::Status(s) => s,
        Reply::Slow(hold, s) => {
            tokio::time::sleep(hold).await;
            s
        }
        Reply::Gated(hold, s) => {
            let mut gate = shared.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            tokio::time::sleep(hold).await;
            s
        }
    };
    guard.answered = true;
    drop(guard);
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        "receiver",
    )
}

/// A webhook receiver on `127.0.0.1`, on its own thread and runtime.
#[derive(Debug)]
struct Receiver {
    base: String,
    port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    fn start(plans: &[(&str, Vec<Reply>)]) -> Self {
        let shared = Arc::new(Shared {
            plans: plans
                .iter()
                .map(|(p, plan)| {
                    assert!(!plan.is_empty());
                    ((*p).to_owned(), plan.clone())
                })
                .collect(),
            log: Mutex::default(),
            gate: tokio::sync::watch::Sender::new(false),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&shared));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let server = axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<SocketAddr>(),
                );
                tokio::select! {
                    r = server => r.unwrap(),
                    _ = stopped => {}
                }
            });
        });
        let addr: SocketAddr = addr_rx.recv().unwrap();
        Self {
            base: format!("http://{addr}"),
            port: addr.port(),
            shared,
            stop: Some(stop),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<Hit> {
        self.shared.log.lock().unwrap().hits.clone()
    }

    /// The requests carrying `webhook-id: id`, in arrival order.
    fn hits_for(&self, id: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.id == id).collect()
    }

    /// Lets [`Reply::Gated`] requests (held and future) through.
    fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Requests whose handler is running.
    fn in_flight(&self) -> usize {
        self.shared.log.lock().unwrap().in_flight.values().sum()
    }

    fn answered(&self) -> HashMap<String, usize> {
        self.shared.log.lock().unwrap().answered.clone()
    }

    fn violations(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().violations.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Servers and the API

/// A running `apitrail serve`; killed if the test ends without stopping it.
#[derive(Debug)]
struct Server {
    child: Option<Child>,
    base: String,
}

impl Server {
    fn start(at: At<'_>, extra: &[&str]) -> Self {
        let mut args = vec!["--no-self-log"];
        args.extend_from_slice(extra);
        let (child, base, _) = serve(at, &args);
        Self {
            child: Some(child),
            base,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) {
        support::stop(self.child.take().unwrap());
    }

    /// SIGKILL (`Child::kill` sends SIGKILL on Unix), and reaped.
    fn sigkill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Calls as one org's key (scopes read, write, admin).
#[derive(Debug, Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    org: String,
    key: String,
}

impl Api {
    fn new(base: &str, org: &str, key: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: base.to_owned(),
            org: org.to_owned(),
            key: key.to_owned(),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A new credential: (id, `whsec_…` secret).
    async fn credential(&self, label: &str) -> (String, String) {
        let made = expect(
            self.post("/v1/credentials", &json!({ "label": label }))
                .await,
            StatusCode::CREATED,
        )
        .await;
        let secret = made["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"), "{made}");
        (made["id"].as_str().unwrap().to_owned(), secret)
    }

    /// A new destination's id.
    async fn destination(&self, body: Value) -> String {
        let made = expect(
            self.post("/v1/destinations", &body).await,
            StatusCode::CREATED,
        )
        .await;
        made["id"].as_str().unwrap().to_owned()
    }

    /// A webhook destination at `url` (signaling as given, signed with `credential`).
    async fn webhook(&self, url: &str, signaling: bool, credential: Option<&str>) -> String {
        self.destination(json!({
            "label": format!("hook {url}"),
            "type": "webhook",
            "config": {"url": url, "signaling": {"enabled": signaling, "default": "ack"}},
            "credential_id": credential,
        }))
        .await
    }

    /// A new definition's id.
    async fn definition(&self, body: Value) -> String {
        let made = expect(
            self.post("/v1/action-definitions", &body).await,
            StatusCode::CREATED,
        )
        .await;
        made["id"].as_str().unwrap().to_owned()
    }

    /// A definition `variant` accepting any object, delivered to `destination` by default.
    async fn simple_definition(&self, variant: &str, destination: &str) -> String {
        self.definition(json!({
            "variant": variant,
            "schema": {"type": "object"},
            "destinations": [{"destination_id": destination, "is_default": true}],
        }))
        .await
    }

    async fn trigger_raw(&self, body: &Value) -> Response {
        self.post(&format!("/v1/orgs/{}/actions", self.org), body)
            .await
    }

    /// Triggers; returns the created record.
    async fn trigger(&self, body: Value) -> Value {
        let record = expect(self.trigger_raw(&body).await, StatusCode::CREATED).await;
        assert_eq!(record["state"]["status"], "pending", "{record}");
        assert_eq!(record["state"]["attempt"], 0, "{record}");
        record
    }

    async fn signal(&self, id: &str, body: Value) -> Response {
        self.post(
            &format!("/v1/orgs/{}/actions/records/{id}/signal", self.org),
            &body,
        )
        .await
    }

    async fn records(&self, query: &[(&str, &str)]) -> Value {
        expect(
            self.client
                .get(format!(
                    "{}/v1/orgs/{}/actions/records",
                    self.base, self.org
                ))
                .header("x-api-key", &self.key)
                .query(query)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await
    }

    /// The record with its state and events, from the actions dialect.
    async fn record(&self, id: &str) -> Value {
        let page = self
            .records(&[
                ("include_state", "true"),
                ("search[field]", "id"),
                ("search[value]", id),
            ])
            .await;
        assert_eq!(page["data"]["count"], 1, "{page}");
        page["data"]["items"][0].clone()
    }

    /// Polls the record until `done` holds (or panics after `within`).
    async fn wait_for(&self, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let record = self.record(id).await;
            if done(&record) {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "record {id} did not get there in {within:?}: {record:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the record until its status is `status`.
    async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(id, Duration::from_secs(30), |r| {
            r["state"]["status"] == status
        })
        .await
    }

    /// How many of the org's records are in `status`.
    async fn count_status(&self, status: &str) -> u64 {
        let page = self
            .records(&[
                ("count_only", "true"),
                ("search[field]", "state.status"),
                ("search[value]", status),
            ])
            .await;
        page["data"]["count"].as_u64().unwrap()
    }
}

fn events(record: &Value) -> &Vec<Value> {
    record["events"].as_array().unwrap()
}

fn event_kinds(record: &Value) -> Vec<&str> {
    events(record)
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

fn event_attempts(record: &Value) -> Vec<u64> {
    events(record)
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect()
}

fn id_of(record: &Value) -> String {
    record["id"].as_str().unwrap().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// A data directory with org `org` and a read/write/admin key on it: (dir, key).
fn sqlite_org(org: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = org_with_key(At::Dir(dir.path()), org, "read,write,admin");
    (dir, key)
}

// ---------------------------------------------------------------------------------------
// Signatures, checked here with an HMAC of the test's own

/// HMAC-SHA256 (RFC 2104), independent of apitrail's.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Whether `webhook-signature` (space-separated `v1,<base64>` entries) holds a valid
/// signature of `"{id}.{timestamp}.{body}"` under the `whsec_` secret.
fn signature_valid(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("the secret is base64 after whsec_");
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    let expected = BASE64.encode(hmac_sha256(&key, &message));
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == expected)
}

#[test]
fn the_test_hmac_matches_rfc_4231() {
    // RFC 4231 test case 2.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

/// The receiver's own check: a second request for a webhook-id while the first is held is
/// a violation; one after the first was answered, or for another id, is not.
#[test]
fn the_receiver_flags_a_second_request_for_an_id_in_flight() {
    let rx = Receiver::start(&[("/gated", vec![Reply::Gated(Duration::ZERO, 200)])]);
    runtime().block_on(async {
        let client = reqwest::Client::new();
        let send = |id: &'static str| {
            let request = client
                .post(rx.url("/gated"))
                .header("webhook-id", id)
                .body("{}");
            tokio::spawn(async move { request.send().await.unwrap().status() })
        };
        let wait_in_flight = |n: usize| {
            let rx = &rx;
            async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                while rx.in_flight() != n {
                    assert!(Instant::now() < deadline, "{} in flight", rx.in_flight());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let first = send("a");
        wait_in_flight(1).await;
        let (second, other) = (send("a"), send("b"));
        wait_in_flight(3).await;
        rx.open_gate();
        for r in [first, second, other] {
            assert_eq!(r.await.unwrap(), StatusCode::OK);
        }
        assert_eq!(send("a").await.unwrap(), StatusCode::OK);
    });
    let violations = rx.violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains(" a "), "{violations:?}");
    assert_eq!(rx.hits().len(), 4);
}

// ---------------------------------------------------------------------------------------
// Delivery

/// A 2xx without signaling: `succeeded`, events `created → delivered`, and the receiver got
/// the documented body and headers (the destination's own headers too), signed with the
/// credential's secret.
#[test]
fn a_delivery_is_signed_and_carries_the_documented_body_and_headers() {
    let rx = Receiver::start(&[]);
    let (dir, key) = sqlite_org("4201");
    let server = Server::start(At::Dir(dir.path()), &["--allow-private-destinations"]);
    let api = Api::new(&server.base, "4201", &key);
    runtime().block_on(async {
        let (credential, secret) = api.credential("signing").await;
        let destination = api
            .destination(json!({
                "label": "billing hooks",
                "type": "webhook",
                "config": {
                    "url": rx.url("/hooks/billing"),
                    "headers": {"x-tenant": "acme", "authorization": "Bearer t0k3n"},
                    "signaling": {"enabled": false, "default": "ack"},
                    "response_time_sla_ms": 5000,
                },
                "credential_id": credential,
                "tags": {"team": "billing"},
            }))
            .await;
        api.definition(json!({
            "variant": "invoice.paid",
            "alias": ["paid"],
            "schema": {"type": "object", "required": ["amount"],
                       "properties": {"amount": {"type": "number"}}},
            "destinations": [{"destination_id": destination, "is_default": true}],
        }))
        .await;
        let input = json!({"amount": 12.5, "currency": "EUR", "lines": [1, 2], "n": {"x": null}});
        // Triggered by its alias: the body still names the variant.
        let created = api
            .trigger(json!({"action": "paid", "input": input, "tags": {"env": "test"}}))
            .await;
        let id = id_of(&created);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();

        let record = api.wait_status(&id, "succeeded").await;
        assert_eq!(event_kinds(&record), ["created", "delivered"], "{record:#}");
        assert_eq!(event_attempts(&record), [0, 1], "{record:#}");
        let statuses: Vec<&str> = events(&record)
            .iter()
            .map(|e| e["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["pending", "succeeded"]);
        assert_eq!(record["state"]["attempt"], 1);
        assert!(record["state"]["completed_at"].is_string(), "{record:#}");

        let hits = rx.hits_for(&id);
        assert_eq!(hits.len(), 1, "one delivery: {hits:#?}");
        let hit = &hits[0];
        assert_eq!(hit.path, "/hooks/billing");
        // The body: exactly {id, action, version, input, tags, attempt}.
        let body = hit.json();
        assert_eq!(
            body,
            json!({"id": id, "action": "invoice.paid", "version": 1, "input": input,
                   "tags": {"env": "test"}, "attempt": 1}),
        );
        let keys: HashSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            HashSet::from(["id", "action", "version", "input", "tags", "attempt"])
        );
        // The headers: the destination's own, the Standard Webhooks trio, JSON.
        let h = &hit.headers;
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-tenant"], "acme");
        assert_eq!(h["authorization"], "Bearer t0k3n");
        assert_eq!(h["webhook-id"], id);
        let ts: u64 = h["webhook-timestamp"]
            .parse()
            .expect("webhook-timestamp is integer seconds");
        assert!(
            ts + 60 >= started && ts <= started + 60,
            "webhook-timestamp {ts} is not now ({started})"
        );
        let signature = &h["webhook-signature"];
        assert!(signature.starts_with("v1,"), "{signature}");
        assert!(
            signature_valid(&secret, &id, &h["webhook-timestamp"], &hit.body, signature),
            "the signature does not verify with the credential's secret: {signature}"
        );
        // The check has teeth: another body, id, timestamp or secret does not verify.
        let mut tampered = hit.body.clone();
        tampered.push(b' ');
        assert!(!signature_valid(
            &secret,
            &id,
            &h["webhook-timestamp"],
            &tampered,
            signature
        ));
        assert!(!signature_valid(
            &secret,
            "other",
            &h["webhook-timestamp"],
            &hit.body,
            signature
        ));
        assert!(!signature_valid(
            &secret,
            &id,
            &(ts + 1).to_string(),
            &hit.body,
            signature
        ));
        let (_, other_secret) = api.credential("other").await;
        assert!(!signature_valid(
            &other_secret,
            &id,
            &h["webhook-timestamp"],
            &hit.body,
            signature
        ));
    });
    server.stop();
}

/// 500, 500, then 200: three attempts with growing gaps, events `attempt_failed` ×2 then
/// `delivered`. Always 500: `failed` with an `error_message` after the last attempt
/// (delays + 1).
#[test]
fn failed_deliveries_are_retried_with_growing_gaps_then_fail() {
    // Three delays: four attempts.
    let delays_ms = [100u64, 600, 1500];
    let rx = Receiver::start(&[
        (
            "/flaky",
            vec![Reply::Status(500), Reply::Status(500), Reply::Status(200)],
        ),
        ("/down", vec![Reply::Status(500)]),
    ]);
    let (dir, key) = sqlite_org("4202");
    let server = Server::start(
        At::Dir(dir.path()),
        &[
            "--allow-private-destinations",
            "--retry-schedule",
            "100ms,600ms,1500ms",
        ],
    );
    let api = Api::new(&server.base, "4202", &key);
    runtime().block_on(async {
        let flaky = api.webhook(&rx.url("/flaky"), false, None).await;
        let down = api.webhook(&rx.url("/down"), false, None).await;
        api.simple_definition("sync.run", &flaky).await;
        let flaky_id = id_of(
            &api.trigger(json!({"action": "sync.run", "input": {}}))
                .await,
        );
        let down_id = id_of(
            &api.trigger(json!({"action": "sync.run", "input": {}, "destination_id": down}))
                .await,
        );

        // Arrival gaps: at least the (jittered, -20%) delay, and growing.
        let check_gaps = |hits: &[Hit]| {
            let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
            for (i, gap) in gaps.iter().enumerate() {
                let floor = Duration::from_millis(delays_ms[i] * 8 / 10 - 5);
                assert!(
                    *gap >= floor,
                    "gap {i} is {gap:?}, less than the schedule's {floor:?}"
                );
            }
            for w in gaps.windows(2) {
                assert!(w[1] > w[0], "the gaps between attempts grow: {gaps:?}");
            }
        };

        let record = api.wait_status(&flaky_id, "succeeded").await;
        assert_eq!(
            event_kinds(&record),
            ["created", "attempt_failed", "attempt_failed", "delivered"],
            "{record:#}"
        );
        assert_eq!(event_attempts(&record), [0, 1, 2, 3], "{record:#}");
        for e in &events(&record)[1..3] {
            assert_eq!(e["status"], "pending", "{e}");
            assert!(e["available_at"].is_string(), "{e}");
            assert!(e["message"].as_str().unwrap().contains("500"), "{e}");
        }
        assert_eq!(record["state"]["attempt"], 3);
        assert!(record["state"]["error_message"].is_null(), "{record:#}");
        let hits = rx.hits_for(&flaky_id);
        let attempts: Vec<u64> = hits
            .iter()
            .map(|h| h.json()["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 2, 3], "the body's attempt counts up");
        check_gaps(&hits);

        let record = api.wait_status(&down_id, "failed").await;
        assert_eq!(
            event_kinds(&record),
            [
                "created",
                "attempt_failed",
                "attempt_failed",
                "attempt_failed",
                "failed"
            ],
            "{record:#}"
        );
        assert_eq!(event_attempts(&record), [0, 1, 2, 3, 4], "{record:#}");
        assert_eq!(record["state"]["attempt"], 4);
        let error = record["state"]["error_message"].as_str().unwrap();
        assert!(error.contains("500"), "{error}");
        assert!(error.contains("attempt 4 of 4"), "{error}");
        assert!(record["state"]["completed_at"].is_string(), "{record:#}");
        // Nothing after the last attempt.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hits = rx.hits_for(&down_id);
        let attempts: Vec<u64> = hits
            .iter()
            .map(|h| h.json()["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 2, 3, 4], "max attempts = delays + 1");
        check_gaps(&hits);
    });
    server.stop();
}

/// A signaling destination: a 2xx only acknowledges; the outcome comes by signal (kept in a
/// `signaled` event), or the record times out. A record not acknowledged refuses signals.
#[test]
fn signaling_destinations_acknowledge_then_signal_or_time_out() {
    let rx = Receiver::start(&[("/held", vec![Reply::Slow(Duration::from_millis(3000), 200)])]);
    let (dir, key) = sqlite_org("4203");
    let server = Server::start(At::Dir(dir.path()), &["--allow-private-destinations"]);
    let api = Api::new(&server.base, "4203", &key);
    runtime().block_on(async {
        let signaling = api.webhook(&rx.url("/signals"), true, None).await;
        let held = api.webhook(&rx.url("/held"), true, None).await;
        let plain = api.webhook(&rx.url("/plain"), false, None).await;
        api.simple_definition("ship.order", &signaling).await;

        // Signaled succeeded, with data.
        let ok = id_of(
            &api.trigger(json!({"action": "ship.order", "input": {"o": 1}, "timeout": 120}))
                .await,
        );
        let record = api.wait_status(&ok, "acknowledged").await;
        assert_eq!(
            event_kinds(&record),
            ["created", "acknowledged"],
            "{record:#}"
        );
        assert!(record["state"]["timeout_at"].is_string(), "{record:#}");
        assert!(record["state"]["completed_at"].is_null(), "{record:#}");
        assert_eq!(rx.hits_for(&ok).len(), 1);
        let data = json!({"tracking": "1Z999", "parcels": [1, 2], "nested": {"ok": true}});
        let signaled = expect(
            api.signal(
                &ok,
                json!({"status": "succeeded", "message": "shipped", "data": data}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(signaled["state"]["status"], "succeeded", "{signaled}");
        let record = api.record(&ok).await;
        assert_eq!(record["state"]["status"], "succeeded");
        assert_eq!(
            event_kinds(&record),
            ["created", "acknowledged", "signaled"],
            "{record:#}"
        );
        let last = events(&record).last().unwrap();
        assert_eq!(last["status"], "succeeded");
        assert_eq!(last["message"], "shipped");
        assert_eq!(last["data"], data, "the signal's data is kept");
        // A second signal: the record is final.
        let again = api.signal(&ok, json!({"status": "failed"})).await;
        let body = expect(again, StatusCode::CONFLICT).await;
        assert_eq!(body["error"]["code"], "conflict", "{body}");

        // Signaled failed, with a message.
        let bad = id_of(
            &api.trigger(json!({"action": "ship.order", "input": {"o": 2}, "timeout": 120}))
                .await,
        );
        api.wait_status(&bad, "acknowledged").await;
        expect(
            api.signal(
                &bad,
                json!({"status": "failed", "message": "address unknown"}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let record = api.record(&bad).await;
        assert_eq!(record["state"]["status"], "failed");
        assert_eq!(record["state"]["error_message"], "address unknown");
        assert_eq!(
            event_kinds(&record),
            ["created", "acknowledged", "signaled"]
        );
        assert_eq!(events(&record).last().unwrap()["status"], "failed");

        // No signal within `timeout` (1 s): timed out; a late signal is refused.
        let late = id_of(
            &api.trigger(json!({"action": "ship.order", "input": {"o": 3}, "timeout": 1}))
                .await,
        );
        let record = api.wait_status(&late, "timed_out").await;
        assert_eq!(
            event_kinds(&record),
            ["created", "acknowledged", "timed_out"],
            "{record:#}"
        );
        assert!(record["state"]["error_message"].is_string(), "{record:#}");
        assert!(record["state"]["completed_at"].is_string(), "{record:#}");
        expect(
            api.signal(&late, json!({"status": "succeeded"})).await,
            StatusCode::CONFLICT,
        )
        .await;

        // Pending (its delivery is held 3 s by the receiver): refused, then acknowledged.
        let pending = id_of(
            &api.trigger(
                json!({"action": "ship.order", "input": {"o": 4}, "timeout": 120,
                                "destination_id": held}),
            )
            .await,
        );
        expect(
            api.signal(&pending, json!({"status": "succeeded"})).await,
            StatusCode::CONFLICT,
        )
        .await;
        assert_eq!(api.record(&pending).await["state"]["status"], "pending");
        api.wait_status(&pending, "acknowledged").await;

        // Without signaling, a 2xx is final: signals are refused.
        let direct = id_of(
            &api.trigger(json!({"action": "ship.order", "input": {"o": 5},
                                "destination_id": plain}))
                .await,
        );
        api.wait_status(&direct, "succeeded").await;
        expect(
            api.signal(&direct, json!({"status": "failed"})).await,
            StatusCode::CONFLICT,
        )
        .await;
        assert_eq!(api.record(&direct).await["state"]["status"], "succeeded");
    });
    server.stop();
}

/// The dispatcher's figures on `/metrics`: deliveries to a loopback receiver (delivered,
/// retried then delivered, retried then failed, acknowledged then timed out) show up as leases,
/// state changes by kind and lease lags, each counted once.
#[test]
fn dispatcher_metrics_count_leases_outcomes_and_lag() {
    let rx = Receiver::start(&[
        ("/ok", vec![Reply::Status(200)]),
        ("/flaky", vec![Reply::Status(500), Reply::Status(200)]),
        ("/down", vec![Reply::Status(500)]),
        ("/signals", vec![Reply::Status(202)]),
    ]);
    let (dir, key) = sqlite_org("4208");
    let server = Server::start(
        At::Dir(dir.path()),
        &["--allow-private-destinations", "--retry-schedule", "200ms"],
    );
    let api = Api::new(&server.base, "4208", &key);
    runtime().block_on(async {
        let metrics = || async {
            let resp = api
                .client
                .get(format!("{}/metrics", api.base))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.text().await.unwrap()
        };
        let value = |text: &str, series: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        };
        let kind = |k: &str| format!("apitrail_dispatch_transitions_total{{kind=\"{k}\"}}");

        // Before any record: every series is there, at zero.
        let text = metrics().await;
        for series in [
            "apitrail_dispatch_due_records",
            "apitrail_dispatch_deliveries_in_flight",
            "apitrail_dispatch_leased_total",
            "apitrail_dispatch_unrecorded_total",
            "apitrail_dispatch_lease_lag_seconds_count",
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series}: {text}");
        }
        for k in [
            "delivered",
            "acknowledged",
            "attempt_failed",
            "failed",
            "timed_out",
        ] {
            assert_eq!(value(&text, &kind(k)), Some(0.0), "{k}: {text}");
        }

        let ok = api.webhook(&rx.url("/ok"), false, None).await;
        let flaky = api.webhook(&rx.url("/flaky"), false, None).await;
        let down = api.webhook(&rx.url("/down"), false, None).await;
        let signals = api.webhook(&rx.url("/signals"), true, None).await;
        api.simple_definition("count.me", &ok).await;
        let mut ids = Vec::new();
        for (destination, timeout) in [
            (&ok, 60),
            (&ok, 60),
            (&ok, 60),
            (&flaky, 60),
            (&down, 60),
            (&signals, 1),
        ] {
            ids.push(id_of(
                &api.trigger(json!({"action": "count.me", "input": {},
                    "destination_id": destination, "timeout": timeout}))
                    .await,
            ));
        }
        for (id, status) in ids.iter().zip([
            "succeeded",
            "succeeded",
            "succeeded",
            "succeeded",
            "failed",
            "timed_out",
        ]) {
            api.wait_status(id, status).await;
        }

        // Outcomes are counted once recorded: poll until the last one shows.
        let want = [
            ("delivered", 4.0),
            ("acknowledged", 1.0),
            ("attempt_failed", 2.0),
            ("failed", 1.0),
            ("timed_out", 1.0),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = metrics().await;
            if want.iter().all(|(k, n)| value(&text, &kind(k)) == Some(*n)) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "transitions never reached {want:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Attempts: 3 + 2 (flaky) + 2 (down) + 1 (signaling).
        assert_eq!(
            value(&text, "apitrail_dispatch_leased_total"),
            Some(8.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "apitrail_dispatch_lease_lag_seconds_count"),
            Some(8.0),
            "one lag per lease: {text}"
        );
        assert_eq!(
            value(
                &text,
                "apitrail_dispatch_lease_lag_seconds_bucket{le=\"+Inf\"}"
            ),
            Some(8.0),
            "{text}"
        );
        assert!(
            value(&text, "apitrail_dispatch_lease_lag_seconds_sum").is_some_and(|s| s >= 0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "apitrail_dispatch_unrecorded_total"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "apitrail_dispatch_deliveries_in_flight"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "apitrail_dispatch_due_records"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(rx.hits().len(), 8, "one request per lease");
    });
    server.stop();
}

/// An input violating the definition's schema: 400 listing every violation by field path,
/// and no record.
#[test]
fn schema_violations_are_listed_per_field_path() {
    let rx = Receiver::start(&[]);
    let (dir, key) = sqlite_org("4204");
    let server = Server::start(At::Dir(dir.path()), &["--allow-private-destinations"]);
    let api = Api::new(&server.base, "4204", &key);
    runtime().block_on(async {
        let destination = api.webhook(&rx.url("/schema"), false, None).await;
        api.definition(json!({
            "variant": "user.invite",
            "schema": {
                "type": "object",
                "required": ["email", "count"],
                "properties": {
                    "email": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                    "profile": {"type": "object",
                                "properties": {"age": {"type": "integer"}}},
                },
                "additionalProperties": false,
            },
            "destinations": [{"destination_id": destination, "is_default": true}],
        }))
        .await;
        let resp = api
            .trigger_raw(&json!({"action": "user.invite",
                                 "input": {"count": 0, "profile": {"age": "old"}, "extra": 1}}))
            .await;
        let body = expect(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let details = body["error"]["details"].as_array().unwrap();
        let mut fields: Vec<&str> = details
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        fields.sort_unstable();
        // Missing `email` and the extra property are the object's (`input`); `count` is
        // below its minimum; `profile.age` is not an integer.
        assert_eq!(
            fields,
            ["input", "input", "input/count", "input/profile/age"],
            "{body:#}"
        );
        for d in details {
            assert!(d["message"].as_str().is_some_and(|m| !m.is_empty()), "{d}");
        }
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("email"), "{message}");
        assert!(message.contains("extra"), "{message}");
        // Nothing was created, nothing delivered.
        let page = api.records(&[("count_only", "true")]).await;
        assert_eq!(page["data"]["count"], 0, "{page}");

        // The same definition takes a valid input.
        let ok = api
            .trigger(json!({"action": "user.invite", "input": {"email": "a@b.c", "count": 2}}))
            .await;
        api.wait_status(&id_of(&ok), "succeeded").await;
        assert_eq!(rx.hits().len(), 1);
    });
    server.stop();
}

/// An `https://` destination is spoken to over TLS: against the loopback receiver, which
/// only speaks plain HTTP, the handshake fails (a TLS error, not an unsupported scheme) and
/// the request never reaches the receiver's handler.
#[test]
fn https_destinations_are_spoken_to_over_tls() {
    let rx = Receiver::start(&[]);
    let (dir, key) = sqlite_org("4205");
    let server = Server::start(
        At::Dir(dir.path()),
        &["--allow-private-destinations", "--retry-schedule", ""],
    );
    let api = Api::new(&server.base, "4205", &key);
    runtime().block_on(async {
        let plain = rx.url("/tls");
        let https = plain.replacen("http://", "https://", 1);
        let destination = api.webhook(&https, false, None).await;
        api.simple_definition("tls.check", &destination).await;
        let record = api
            .trigger(json!({"action": "tls.check", "input": {}}))
            .await;
        let record = api.wait_status(&id_of(&record), "failed").await;
        let error = record["state"]["error_message"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            !error.contains("scheme") && !error.contains("builder"),
            "https must be supported: {error}"
        );
        assert!(
            [
                "tls",
                "ssl",
                "handshake",
                "certificate",
                "record",
                "connect"
            ]
            .iter()
            .any(|w| error.contains(w)),
            "{error}"
        );
        assert!(rx.hits().is_empty(), "{:?}", rx.hits());
    });
    server.stop();
}

// ---------------------------------------------------------------------------------------
// SSRF

/// Without `--allow-private-destinations`, loopback destinations are refused at creation,
/// by address, as `localhost`, and by a name resolving to loopback.
#[test]
fn loopback_destinations_are_refused_without_the_flag() {
    let rx = Receiver::start(&[]);
    let (dir, key) = sqlite_org("4205");
    let server = Server::start(At::Dir(dir.path()), &[]);
    let api = Api::new(&server.base, "4205", &key);
    runtime().block_on(async {
        let mut urls = vec![
            rx.url("/ssrf"),
            format!("http://localhost:{}/ssrf", rx.port),
        ];
        // A name resolving to loopback, where the machine has one.
        urls.extend(loopback_host_name().map(|h| format!("http://{h}:{}/ssrf", rx.port)));
        for url in urls {
            let resp = api
                .post(
                    "/v1/destinations",
                    &json!({"label": "internal", "type": "webhook", "config": {"url": url}}),
                )
                .await;
            let body = expect(resp, StatusCode::BAD_REQUEST).await;
            let details = body["error"]["details"].as_array().unwrap();
            assert!(
                details.iter().any(|d| d["field"] == "config.url"
                    && d["message"].as_str().unwrap().contains("private")),
                "{url}: {body:#}"
            );
        }
        let listed = expect(
            api.client
                .get(format!("{}/v1/destinations", api.base))
                .header("x-api-key", &api.key)
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(listed["data"].as_array().unwrap().len(), 0, "{listed}");
        // A public address is accepted by the same server (the refusal is about the address).
        api.destination(json!({"label": "public", "type": "webhook",
                               "config": {"url": "http://93.184.216.34/hook"}}))
            .await;
    });
    assert!(rx.hits().is_empty());
    server.stop();
}

/// The machine's host name if it resolves to IPv4 loopback addresses only (so a delivery to
/// it reaches the receiver): a name apitrail can only judge by resolving it.
fn loopback_host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()?
        .trim()
        .to_owned();
    if name.is_empty() || name.contains("localhost") || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let addrs: Vec<SocketAddr> = (name.as_str(), 80).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.is_ipv4() && a.ip().is_loopback())).then_some(name)
}

/// At delivery time a destination is judged by the decision recorded when it was made or last
/// changed, not by the delivering server's flag: a loopback destination made while the flag
/// was on is still delivered by a server restarted without it. One from before decisions were
/// recorded (the column is NULL) is judged by the delivering server's flag: refused without
/// it, so the record fails and the receiver never sees it. Both by address and, where the
/// host name resolves to loopback, by a name (the check happens at resolution).
#[test]
fn loopback_destinations_are_judged_at_delivery_time_by_their_recorded_decision() {
    let rx = Receiver::start(&[]);
    let (dir, key) = sqlite_org("4206");
    let at = At::Dir(dir.path());
    let rt = runtime();
    let host = loopback_host_name();
    if host.is_none() {
        eprintln!("the host name does not resolve to loopback only: checking the address alone");
    }
    let with_flag = Server::start(at, &["--allow-private-destinations"]);
    let api = Api::new(&with_flag.base, "4206", &key);
    let by_name = rt.block_on(async {
        let by_ip = api.webhook(&rx.url("/ssrf-ip"), false, None).await;
        api.simple_definition("scan.host", &by_ip).await;
        let by_name = match &host {
            Some(h) => Some(
                api.webhook(&format!("http://{h}:{}/ssrf-name", rx.port), false, None)
                    .await,
            ),
            None => None,
        };
        // With the flag, both reach the receiver: their absence below means refusal.
        let mut ids = vec![id_of(
            &api.trigger(json!({"action": "scan.host", "input": {}}))
                .await,
        )];
        if let Some(d) = &by_name {
            ids.push(id_of(
                &api.trigger(json!({"action": "scan.host", "input": {}, "destination_id": d}))
                    .await,
            ));
        }
        for id in &ids {
            api.wait_status(id, "succeeded").await;
            assert_eq!(rx.hits_for(id).len(), 1);
        }
        by_name
    });
    with_flag.stop();

    // The decision travels with the destination.
    let without = Server::start(at, &["--retry-schedule", "100ms,200ms"]);
    let api = Api::new(&without.base, "4206", &key);
    rt.block_on(async {
        let id = id_of(
            &api.trigger(json!({"action": "scan.host", "input": {}}))
                .await,
        );
        api.wait_status(&id, "succeeded").await;
        assert_eq!(rx.hits_for(&id).len(), 1);
    });
    without.stop();

    // As a destination stored before the decision was recorded.
    let conn = rusqlite::Connection::open(dir.path().join(apitrail_store_sqlite::DB_FILE)).unwrap();
    let undecided = conn
        .execute("UPDATE destinations SET allow_private = NULL", [])
        .unwrap();
    assert_eq!(undecided, 1 + usize::from(by_name.is_some()));
    drop(conn);
    let before = rx.hits().len();
    let without = Server::start(at, &["--retry-schedule", "100ms,200ms"]);
    let api = Api::new(&without.base, "4206", &key);
    rt.block_on(async {
        let id = id_of(
            &api.trigger(json!({"action": "scan.host", "input": {}}))
                .await,
        );
        let record = api.wait_status(&id, "failed").await;
        let error = record["state"]["error_message"].as_str().unwrap();
        assert!(
            error.contains("loopback") || error.contains("private"),
            "{error}"
        );
        // Refused outright: no retries.
        assert_eq!(event_kinds(&record), ["created", "failed"], "{record:#}");
        assert_eq!(record["state"]["attempt"], 1, "{record:#}");
        if let Some(d) = &by_name {
            let id = id_of(
                &api.trigger(json!({"action": "scan.host", "input": {}, "destination_id": d}))
                    .await,
            );
            let record = api.wait_status(&id, "failed").await;
            let error = record["state"]["error_message"].as_str().unwrap();
            assert!(error.contains("private"), "{error}");
            // A name resolving only to refused addresses is refused at once, not retried.
            assert_eq!(event_kinds(&record), ["created", "failed"], "{record:#}");
            assert_eq!(record["state"]["attempt"], 1, "{record:#}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let hits = rx.hits();
    assert_eq!(
        hits.len(),
        before,
        "the receiver saw {:#?}",
        &hits[before..]
    );
    without.stop();
}

// ---------------------------------------------------------------------------------------
// Crash and restart

/// SIGKILL while 20 deliveries are held by a slow receiver; after a restart on the same data
/// directory every record ends final, each was seen, and each whose answer never reached the
/// killed server was delivered again once its lease (3 s) ran out.
#[test]
fn deliveries_in_flight_at_sigkill_are_delivered_again_after_restart() {
    const RECORDS: usize = 20;
    let rx = Receiver::start(&[("/slow", vec![Reply::Slow(Duration::from_millis(1500), 200)])]);
    let (dir, key) = sqlite_org("4207");
    let at = At::Dir(dir.path());
    let flags = [
        "--allow-private-destinations",
        "--action-lease-secs",
        "3",
        "--retry-schedule",
        "200ms,400ms,800ms",
    ];
    let rt = runtime();
    let first = Server::start(at, &flags);
    let api = Api::new(&first.base, "4207", &key);
    let ids: Vec<String> = rt.block_on(async {
        let destination = api.webhook(&rx.url("/slow"), false, None).await;
        api.simple_definition("report.build", &destination).await;
        let mut ids = Vec::new();
        for i in 0..RECORDS {
            ids.push(id_of(
                &api.trigger(json!({"action": "report.build", "input": {"i": i}}))
                    .await,
            ));
        }
        // Every delivery has arrived and is being held.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen: HashSet<String> = rx.hits().into_iter().map(|h| h.id).collect();
            if ids.iter().all(|id| seen.contains(id)) {
                break;
            }
            assert!(Instant::now() < deadline, "not every record was delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    });
    first.sigkill();
    // The killed server got no answer for these: the receiver had not answered them yet.
    let answered = rx.answered();
    let unanswered: Vec<&String> = ids
        .iter()
        .filter(|id| !answered.contains_key(*id))
        .collect();
    assert!(
        !unanswered.is_empty(),
        "the kill came after every delivery was answered: nothing was in flight"
    );

    let second = Server::start(at, &flags);
    let api = Api::new(&second.base, "4207", &key);
    rt.block_on(async {
        for id in &ids {
            let record = api
                .wait_for(id, Duration::from_secs(60), |r| {
                    matches!(
                        r["state"]["status"].as_str(),
                        Some("succeeded" | "failed" | "timed_out")
                    )
                })
                .await;
            assert_eq!(record["state"]["status"], "succeeded", "{record:#}");
        }
    });
    let hits = rx.hits();
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for h in &hits {
        seen.entry(h.id.as_str())
            .or_default()
            .push(h.json()["attempt"].as_u64().unwrap());
    }
    for id in &ids {
        assert!(seen.contains_key(id.as_str()), "{id} was never delivered");
    }
    for id in &unanswered {
        let attempts = &seen[id.as_str()];
        assert!(
            attempts.len() >= 2 && attempts.iter().any(|&a| a >= 2),
            "{id} was in flight at the kill but not delivered again: attempts {attempts:?}"
        );
    }
    eprintln!(
        "sigkill: {} records, {} in flight at the kill, {} deliveries in all",
        ids.len(),
        unanswered.len(),
        hits.len()
    );
    second.stop();
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: two dispatchers on one database

/// For each `pid`, the local ports of its TCP connections to `remote_port` (Linux /proc).
fn connections_to(pids: &[u32], remote_port: u16) -> HashMap<u16, u32> {
    let mut inode_pid = HashMap::new();
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inode_pid.insert(inode.to_owned(), pid);
            }
        }
    }
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let mut ports = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(Path::new(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9
                && port(f[2]) == remote_port
                && let Some(&pid) = inode_pid.get(f[9])
            {
                ports.insert(port(f[1]), pid);
            }
        }
    }
    ports
}

/// Two `serve` processes on one PostgreSQL database, 10,000 actions triggered through both
/// and dispatched by both: every record succeeds, each id is delivered, and no id is ever
/// delivered twice at once (the receiver tracks requests in flight per webhook-id).
#[test]
fn two_dispatchers_on_postgres_never_deliver_one_record_twice_at_once() {
    const RECORDS: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    /// The receiver holds every delivery until this many records were triggered: both
    /// dispatchers fill their slots, a backlog of due records builds up, and at the opening
    /// both compete for it.
    const GATE_AT: usize = 2_000;
    let began = Instant::now();
    let rx = Arc::new(Receiver::start(&[(
        "/pg",
        vec![Reply::Gated(Duration::from_millis(5), 200)],
    )]));
    let rt = runtime();
    let url = rt.block_on(PgServer::shared().fresh_database());
    let at = At::Url(&url);
    let key = org_with_key(at, "4208", "read,write,admin");
    let flags = [
        "--allow-private-destinations",
        "--action-lease-secs",
        "60",
        "--retry-schedule",
        "200ms,500ms,1s,2s",
    ];
    let a = Server::start(at, &flags);
    let b = Server::start(at, &flags);
    let apis = [
        Api::new(&a.base, "4208", &key),
        Api::new(&b.base, "4208", &key),
    ];
    let ids = rt.block_on(async {
        // Held deliveries must not time out before the gate opens (the lease caps the wait
        // at three quarters of 60 s).
        let destination = apis[0]
            .destination(json!({"label": "bulk", "type": "webhook",
                                "config": {"url": rx.url("/pg"), "response_time_sla_ms": 60_000}}))
            .await;
        apis[0].simple_definition("bulk.job", &destination).await;
        // Bounded concurrency: IN_FLIGHT workers take the next index; even ones go to A.
        let next = Arc::new(AtomicUsize::new(0));
        let gate = {
            let (next, rx) = (Arc::clone(&next), Arc::clone(&rx));
            tokio::spawn(async move {
                while next.load(Ordering::Relaxed) < GATE_AT {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let held = rx.in_flight();
                rx.open_gate();
                eprintln!(
                    "postgres: gate opened after {:?} with {held} deliveries held",
                    began.elapsed()
                );
            })
        };
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let (next, apis) = (Arc::clone(&next), apis.clone());
            workers.spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= RECORDS {
                        return ids;
                    }
                    let record = apis[i % 2]
                        .trigger(json!({"action": "bulk.job", "input": {"i": i}}))
                        .await;
                    ids.push(id_of(&record));
                }
            });
        }
        let mut ids = Vec::with_capacity(RECORDS);
        while let Some(part) = workers.join_next().await {
            ids.extend(part.unwrap());
        }
        gate.await.unwrap();
        eprintln!("postgres: {RECORDS} triggered in {:?}", began.elapsed());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done = apis[1].count_status("succeeded").await;
            if done == RECORDS as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {RECORDS} records succeeded"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("postgres: all succeeded after {:?}", began.elapsed());
        let total = apis[0].records(&[("count_only", "true")]).await;
        assert_eq!(total["data"]["count"], RECORDS, "{total}");
        ids
    });
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), RECORDS);

    // Which server delivered what: the receiver's peer port → the process holding it.
    let owners = connections_to(&[a.pid(), b.pid()], rx.port);
    let hits = rx.hits();
    let mut by_server: HashMap<u32, usize> = HashMap::new();
    let mut unattributed = 0;
    for h in &hits {
        match owners.get(&h.peer.port()) {
            Some(pid) => *by_server.entry(*pid).or_default() += 1,
            None => unattributed += 1,
        }
    }
    let violations = rx.violations();
    let delivered: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    let duplicates = hits.len() - delivered.len();
    eprintln!(
        "postgres: {} deliveries, {duplicates} duplicates, {} concurrent-delivery violations; \
         server A {} / server B {} / unattributed {unattributed}; {:?} in all",
        hits.len(),
        violations.len(),
        by_server.get(&a.pid()).unwrap_or(&0),
        by_server.get(&b.pid()).unwrap_or(&0),
        began.elapsed(),
    );
    assert!(
        violations.is_empty(),
        "{} ids were delivered twice at once, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    for id in &ids {
        assert!(delivered.contains(id.as_str()), "{id} was never delivered");
    }
    assert!(
        by_server.get(&a.pid()).is_some_and(|&n| n > 0)
            && by_server.get(&b.pid()).is_some_and(|&n| n > 0),
        "both servers dispatch: {by_server:?} (unattributed {unattributed})"
    );
    a.stop();
    b.stop();
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: servers with different --allow-private-destinations on one database

/// Polls until every one of `n` records is final; panics at once if one failed (naming it) or
/// after the deadline. `api` reads the org's records.
async fn wait_all_succeeded(api: &Api, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failed = api
            .records(&[
                ("include_state", "true"),
                ("search[field]", "state.status"),
                ("search[value]", "failed"),
            ])
            .await;
        assert_eq!(
            failed["data"]["count"], 0,
            "records failed: {:#}",
            failed["data"]["items"][0]
        );
        let done = api.count_status("succeeded").await;
        if done == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} records succeeded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two `serve` processes on one PostgreSQL database, A with `--allow-private-destinations` and
/// B without. A loopback destination made through A (B still refuses to make one) is delivered
/// whichever server leases its records: 200 records triggered through both, both dispatching,
/// every one succeeds and none is refused; B delivers some of them itself.
#[test]
fn servers_with_different_private_settings_deliver_alike() {
    const RECORDS: usize = 200;
    let rx = Receiver::start(&[("/mixed", vec![Reply::Status(200)])]);
    let rt = runtime();
    let url = rt.block_on(PgServer::shared().fresh_database());
    let at = At::Url(&url);
    let key = org_with_key(at, "4209", "read,write,admin");
    let a = Server::start(
        at,
        &[
            "--allow-private-destinations",
            "--retry-schedule",
            "100ms,200ms",
        ],
    );
    let b = Server::start(at, &["--retry-schedule", "100ms,200ms"]);
    let apis = [
        Api::new(&a.base, "4209", &key),
        Api::new(&b.base, "4209", &key),
    ];
    let ids = rt.block_on(async {
        let destination = apis[0].webhook(&rx.url("/mixed"), false, None).await;
        // Making one is still refused by the server without the flag.
        let refused = expect(
            apis[1]
                .post(
                    "/v1/destinations",
                    &json!({"label": "b", "type": "webhook", "config": {"url": rx.url("/mixed")}}),
                )
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(
            refused["error"]["details"][0]["field"], "config.url",
            "{refused:#}"
        );
        apis[0].simple_definition("mixed.job", &destination).await;
        let mut ids = Vec::with_capacity(RECORDS);
        for i in 0..RECORDS {
            // Each server's trigger wakes its own dispatcher: both lease.
            let record = apis[i % 2]
                .trigger(json!({"action": "mixed.job", "input": {"i": i}}))
                .await;
            ids.push(id_of(&record));
        }
        wait_all_succeeded(&apis[1], RECORDS as u64).await;
        for id in ids.iter().step_by(17) {
            let record = apis[0].record(id).await;
            assert_eq!(event_kinds(&record), ["created", "delivered"], "{record:#}");
        }
        ids
    });
    let hits = rx.hits();
    let delivered: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    for id in &ids {
        assert!(delivered.contains(id.as_str()), "{id} was never delivered");
    }
    // Which server delivered what: the receiver's peer port → the process holding it.
    let owners = connections_to(&[a.pid(), b.pid()], rx.port);
    let by_b = hits
        .iter()
        .filter(|h| owners.get(&h.peer.port()) == Some(&b.pid()))
        .count();
    eprintln!(
        "mixed settings: {} deliveries, {by_b} by the server without the flag",
        hits.len()
    );
    assert!(
        by_b > 0,
        "the server without the flag delivered nothing: the test did not exercise it"
    );
    a.stop();
    b.stop();
}

/// The converse: a destination made through a server without `--allow-private-destinations`
/// that later points at loopback (its URL rewritten in the database, as a name rebound to
/// loopback would; and by a name resolving to loopback where the machine has one) is refused by
/// the server with the flag too: every record fails at once with the refusal, through either
/// server, and the receiver never sees one.
#[test]
fn a_destination_refused_where_it_was_made_is_refused_by_every_server() {
    const RECORDS: usize = 20;
    let rx = Receiver::start(&[]);
    let rt = runtime();
    let url = rt.block_on(PgServer::shared().fresh_database());
    let at = At::Url(&url);
    let key = org_with_key(at, "4210", "read,write,admin");
    let a = Server::start(
        at,
        &[
            "--allow-private-destinations",
            "--retry-schedule",
            "100ms,200ms",
        ],
    );
    let b = Server::start(at, &["--retry-schedule", "100ms,200ms"]);
    let apis = [
        Api::new(&a.base, "4210", &key),
        Api::new(&b.base, "4210", &key),
    ];
    let mut targets = vec![rx.url("/rebound-ip")];
    targets.extend(loopback_host_name().map(|h| format!("http://{h}:{}/rebound-name", rx.port)));
    let ids = rt.block_on(async {
        let (sql, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut destinations = Vec::new();
        for target in &targets {
            let id = apis[1]
                .webhook("http://93.184.216.34/hook", false, None)
                .await;
            let changed = sql
                .execute(
                    "UPDATE destinations SET url = $1 WHERE id = $2::text::uuid",
                    &[target, &id],
                )
                .await
                .unwrap();
            assert_eq!(changed, 1);
            destinations.push(id);
        }
        apis[1]
            .simple_definition("rebound.job", &destinations[0])
            .await;
        let mut ids = Vec::new();
        for i in 0..RECORDS {
            let destination = &destinations[i % destinations.len()];
            let record = apis[i % 2]
                .trigger(json!({"action": "rebound.job", "input": {"i": i},
                                "destination_id": destination}))
                .await;
            ids.push(id_of(&record));
        }
        for id in &ids {
            let record = apis[0].wait_status(id, "failed").await;
            let error = record["state"]["error_message"].as_str().unwrap();
            assert!(error.contains("private"), "{error}");
            // Refused at once, not retried.
            assert_eq!(event_kinds(&record), ["created", "failed"], "{record:#}");
        }
        // A delivery that slipped through would have arrived by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ids
    });
    assert_eq!(ids.len(), RECORDS);
    let hits = rx.hits();
    assert!(hits.is_empty(), "the receiver saw {hits:#?}");
    a.stop();
    b.stop();
}

//! Test harness: starts the real apitrail app (router, store, recorder) on `127.0.0.1:0` over
//! a fresh store, and talks HTTP to it. Every helper states the status it expects, so a test
//! fails at the call that went wrong, with the body in the message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;

use std::net::SocketAddr;
use std::sync::Arc;

use apitrail_api::serve::ServeConfig;
use apitrail_api::tail::TailConfig;
use apitrail_api::{AdminToken, ApiConfig, App};
use apitrail_pgtest::PgServer;
use apitrail_store::Store;
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The operator token every test server is started with (unless disabled).
pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789";

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temp dir.
    Sqlite,
    /// A fresh database on the private PostgreSQL server of `apitrail-pgtest`.
    Postgres,
}

impl Backend {
    /// `APITRAIL_TEST_BACKEND` (`sqlite`, the default, or `postgres`): the test script runs
    /// the HTTP suites once per backend this way.
    pub fn from_env() -> Self {
        match std::env::var("APITRAIL_TEST_BACKEND").as_deref() {
            Ok("postgres" | "postgresql") => Self::Postgres,
            Ok("" | "sqlite") | Err(_) => Self::Sqlite,
            Ok(other) => panic!("APITRAIL_TEST_BACKEND={other:?}: use sqlite or postgres"),
        }
    }
}

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The store; `None` follows `APITRAIL_TEST_BACKEND`.
    pub backend: Option<Backend>,
    /// Log authenticated calls into the caller's org.
    pub self_log: bool,
    /// Configure the operator token.
    pub admin_token: bool,
    /// Write queue capacity in records.
    pub queue_capacity: usize,
    /// Body cap in bytes.
    pub body_cap_bytes: usize,
    /// Accept webhook destinations on loopback/private addresses
    /// (`--allow-private-destinations`); off by default, as in `serve`.
    pub allow_private_destinations: bool,
    /// The listener's connection limits and timeouts.
    pub serve: ServeConfig,
    /// Limits and timings of the live tails.
    pub tail: TailConfig,
    /// Who may frame the web console.
    pub ui_frame_ancestors: apitrail_api::console::FrameAncestors,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backend: None,
            self_log: false,
            admin_token: true,
            queue_capacity: 200_000,
            body_cap_bytes: 64 * 1024,
            allow_private_destinations: false,
            serve: ServeConfig::default(),
            tail: TailConfig::default(),
            ui_frame_ancestors: Default::default(),
        }
    }
}

/// A running server over its own temporary store.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// A client with keep-alive.
    pub client: reqwest::Client,
    /// The store, for assertions that need to look behind the API.
    pub store: Arc<dyn Store>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), apitrail_api::ServeError>>>,
    _dir: TempDir,
}

/// An API key created through the operator API.
#[derive(Debug, Clone)]
pub struct TestKey {
    /// The key's id.
    pub id: String,
    /// The secret.
    pub secret: String,
    /// The key's org.
    pub org_id: String,
}

impl TestServer {
    /// Moves a pending action record to `acknowledged` (timing out in an hour) behind the
    /// API, as the dispatcher does after a 2xx from a signaling destination: the test server
    /// runs no dispatcher.
    pub async fn acknowledge_action(&self, org: &str, id: &str) {
        use apitrail_model::{
            ActionEvent, ActionState, ActionStatus, OrgId, Timestamp, new_record_id,
        };
        let tenant = self
            .store
            .tenant(&OrgId::parse(org).expect("org id"))
            .await
            .expect("store")
            .expect("org exists");
        let now = Timestamp::now();
        let timeout_at = Some(now.add_millis(3_600_000));
        let record_id = uuid::Uuid::parse_str(id).expect("record id");
        let state = ActionState {
            status: ActionStatus::Acknowledged,
            attempt: 1,
            updated_at: now,
            available_at: now,
            timeout_at,
            started_at: Some(now),
            completed_at: None,
            error_message: None,
        };
        let event = ActionEvent {
            id: new_record_id(),
            record_id,
            kind: "acknowledged".into(),
            status: ActionStatus::Acknowledged,
            attempt: 1,
            available_at: None,
            timeout_at,
            message: Some("202".into()),
            data: None,
            created_at: now,
        };
        let expected = apitrail_store::Expected {
            status: ActionStatus::Pending,
            attempt: 0,
            lease_owner: None,
        };
        assert!(
            self.store
                .transition_action(&tenant, record_id, &expected, &state, &event)
                .await
                .expect("store"),
            "record {id} was not pending"
        );
    }

    /// Starts a server with default options (self-logging off, so lists hold only what the
    /// test ingested).
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a server with `options`.
    pub async fn start_with(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = options.backend.unwrap_or_else(Backend::from_env);
        let store: Arc<dyn Store> = match backend {
            Backend::Sqlite => Arc::new(
                SqliteStore::open(
                    dir.path(),
                    SqliteOptions {
                        queue_capacity: options.queue_capacity,
                        writer_cache_mib: 64,
                        reader_cache_mib: 16,
                        ..SqliteOptions::default()
                    },
                )
                .expect("open store"),
            ),
            Backend::Postgres => {
                let url = PgServer::shared().fresh_database().await;
                Arc::new(
                    PgStore::connect(
                        &url,
                        PgOptions {
                            queue_capacity: options.queue_capacity,
                            ..PgOptions::default()
                        },
                    )
                    .await
                    .expect("connect to the test PostgreSQL database"),
                )
            }
        };
        let config = ApiConfig {
            admin_token: options
                .admin_token
                .then(|| AdminToken::new(ADMIN_TOKEN).expect("token")),
            self_log: options.self_log,
            body_cap_bytes: options.body_cap_bytes,
            allow_private_destinations: options.allow_private_destinations,
            serve: options.serve,
            tail: options.tail,
            ui_frame_ancestors: options.ui_frame_ancestors,
            ..ApiConfig::default()
        };
        let app = App::build(Arc::clone(&store), config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = app.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        // The result is checked by `stop`; a test that fails before stopping leaves the task
        // to die with its runtime without adding a second panic to the report.
        let task = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::new(),
            store,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped with an error");
        }
    }

    /// A request to `path` (which may carry a query string).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// A GET authenticated with `secret` as `X-API-Key`.
    pub fn get(&self, path: &str, secret: &str) -> RequestBuilder {
        self.request(Method::GET, path).header("x-api-key", secret)
    }

    /// A request authenticated with the operator token.
    pub fn operator(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(ADMIN_TOKEN)
    }

    /// Creates an org through the operator API.
    pub async fn create_org(&self, id: &str) -> Value {
        let resp = self
            .operator(Method::POST, "/admin/v1/orgs")
            .json(&json!({ "id": id, "name": format!("Org {id}") }))
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::CREATED).await
    }

    /// Creates a key in `org` with `scopes`, acting for a user.
    pub async fn create_key(&self, org: &str, scopes: &[&str]) -> TestKey {
        self.create_key_with(
            org,
            json!({
                "name": format!("test key {}", scopes.join("+")),
                "scopes": scopes,
                "principal_type": "user",
                "principal_id": "usr_test",
                "user_id": "usr_test",
                "email": "test@example.com",
            }),
        )
        .await
    }

    /// Creates a key in `org` from a full creation body.
    pub async fn create_key_with(&self, org: &str, body: Value) -> TestKey {
        let resp = self
            .operator(Method::POST, &format!("/admin/v1/orgs/{org}/api-keys"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let v = expect(resp, StatusCode::CREATED).await;
        TestKey {
            id: v["id"].as_str().unwrap().to_owned(),
            secret: v["secret"].as_str().unwrap().to_owned(),
            org_id: org.to_owned(),
        }
    }

    /// Creates an org and a key with every scope.
    pub async fn org_with_key(&self, org: &str) -> TestKey {
        self.create_org(org).await;
        self.create_key(org, &["read", "write", "admin"]).await
    }

    /// Ingests `records` (a JSON array) with `secret`, expecting `status`; returns the body.
    pub async fn ingest(&self, secret: &str, records: &Value, status: StatusCode) -> Value {
        let resp = self
            .request(Method::POST, "/v1/ingest/requests")
            .header("x-api-key", secret)
            .json(records)
            .send()
            .await
            .unwrap();
        expect(resp, status).await
    }

    /// Lists `/v1/logs?query` with `secret`, expecting 200.
    pub async fn logs(&self, secret: &str, query: &str) -> Value {
        let resp = self
            .get(&format!("/v1/logs?{query}"), secret)
            .send()
            .await
            .unwrap();
        expect(resp, StatusCode::OK).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The value of response header `name`, when present and text.
pub fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Asserts the status and returns the JSON body (`Value::Null` for an empty body).
pub async fn expect(resp: Response, status: StatusCode) -> Value {
    let got = resp.status();
    let url = resp.url().to_string();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{url} answered {got}: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"))
    }
}

/// Asserts a native error envelope: status, code, and (when given) the offending param; the
/// body's request id equals the `X-Request-Id` header.
pub async fn expect_native_error(
    resp: Response,
    status: StatusCode,
    code: &str,
    param: Option<&str>,
) -> Value {
    let header_id = header(&resp, "x-request-id");
    let body = expect(resp, status).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    match param {
        Some(p) => assert_eq!(body["error"]["param"], p, "{body}"),
        None => assert!(body["error"].get("param").is_none(), "{body}"),
    }
    assert_eq!(body["request_id"].as_str(), header_id.as_deref(), "{body}");
    body
}

/// Compares `value` with the committed snapshot `<crate_dir>/tests/snapshots/<name>.json`,
/// after replacing every non-null value of a key in `redact` (at any depth) with
/// `"[redacted]"`, so that random ids and times do not make the snapshot flaky while their
/// presence and nullness still count. With `UPDATE_SNAPSHOTS=1` the snapshot is (re)written
/// instead; a missing snapshot fails the test.
pub fn assert_snapshot(crate_dir: &str, name: &str, value: &Value, redact: &[&str]) {
    fn scrub(v: &mut Value, redact: &[&str]) {
        match v {
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    if redact.contains(&k.as_str()) && !item.is_null() {
                        *item = Value::String("[redacted]".into());
                    } else {
                        scrub(item, redact);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| scrub(i, redact)),
            _ => {}
        }
    }
    let mut got = value.clone();
    scrub(&mut got, redact);
    let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
    let path = std::path::Path::new(crate_dir)
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} is missing ({e}); run with UPDATE_SNAPSHOTS=1 to write it",
            path.display()
        )
    });
    assert_eq!(
        text,
        want,
        "snapshot {} differs; if the change is intended, run with UPDATE_SNAPSHOTS=1",
        path.display()
    );
}

//! A real upstream (hyper on port 0), the real proxy in front of it, and the real apitrail
//! server reading the records back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apitrail_proxy::{
    FingerprintKey, Proxy, ProxyConfig, ProxyStats, Routes, Sink, StoreSink, Upstream,
};
use apitrail_store::Store;
use async_trait::async_trait;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

/// The key of fingerprints in these tests.
pub const FP_KEY: &str = "test-fingerprint-key-0123456789";

/// A test upstream. Paths:
/// - `/hang…`: never answers (`arrived` is notified when such a request comes in);
/// - `/drip…`: answers 200 with one chunk, then never sends the rest (`arrived` too);
/// - `/slow…`: answers 200 `slow` once `release` is notified (`arrived` too);
/// - `/abort…`: answers 200 promising 1000 bytes, sends 7, then breaks off;
/// - `/upgrade…`: switches to the protocol asked for, echoing every byte back;
/// - `/bytes/N`: N bytes of `x`, streamed in 64 KiB chunks;
/// - `/count`: reads the whole body and answers `{"received": n}`;
/// - anything else: echoes `{method, path, query, headers, body}` as JSON, with the status
///   of `?status=N` and the response headers listed in the request header `x-respond`
///   (`name=value, name=value`).
#[derive(Debug)]
pub struct TestUpstream {
    /// Behind TLS.
    pub tls: bool,
    pub addr: SocketAddr,
    pub arrived: Arc<Notify>,
    /// Lets the `/slow…` requests answer.
    pub release: Arc<Notify>,
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start() -> Self {
        Self::start_with(None, false).await
    }

    /// The same upstream behind TLS, with a certificate for `localhost` and `127.0.0.1`
    /// issued by a private CA made here; returns it and the CA's certificate.
    pub async fn start_tls() -> (Self, rustls_pki_types::CertificateDer<'static>) {
        let made = TestCertificate::new();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert_der.clone()], made.key_der())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (Self::start_with(Some(acceptor), false).await, made.ca_der)
    }

    /// The same upstream speaking HTTP/2 only (h2c, prior knowledge).
    pub async fn start_h2c() -> Self {
        Self::start_with(None, true).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>, h2: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls_scheme = tls.is_some();
        let arrived = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let requests = Arc::new(AtomicU64::new(0));
        let (a, r, rel) = (
            Arc::clone(&arrived),
            Arc::clone(&requests),
            Arc::clone(&release),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (a, r, rel) = (Arc::clone(&a), Arc::clone(&r), Arc::clone(&rel));
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (a, r, rel) = (Arc::clone(&a), Arc::clone(&r), Arc::clone(&rel));
                        async move {
                            r.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(answer(req, a, rel).await)
                        }
                    });
                    if h2 {
                        let builder = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        );
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        return;
                    }
                    let builder = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(tls) => {
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await
                        }
                        None => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await
                        }
                    };
                });
            }
        });
        Self {
            tls: tls_scheme,
            addr,
            arrived,
            release,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A body that cannot fail, as a [`TestBody`].
fn boxed(
    body: impl HttpBody<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
) -> TestBody {
    body.map_err(|never| match never {}).boxed()
}

async fn answer(
    mut req: Request<Incoming>,
    arrived: Arc<Notify>,
    release: Arc<Notify>,
) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/upgrade") {
        // Switches to an echo protocol: every byte comes back, until the client closes.
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        });
        let mut resp = Response::new(boxed(Full::new(Bytes::new())));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let protocol = req.headers().get("upgrade").cloned().unwrap();
        resp.headers_mut().insert("upgrade", protocol);
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("apitrail-user-id", "usr_tunnel".parse().unwrap());
        return resp;
    }
    if path.starts_with("/slow") {
        let released = release.notified();
        arrived.notify_one();
        released.await;
        return Response::new(boxed(Full::new(Bytes::from_static(b"slow"))));
    }
    if path.starts_with("/hang") {
        arrived.notify_one();
        std::future::pending::<()>().await;
    }
    if path.starts_with("/abort") {
        // 200, one chunk of a promised 1000 bytes, then the upstream breaks off.
        let mut resp = Response::new(
            Abort {
                sent: false,
                pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            }
            .boxed(),
        );
        resp.headers_mut()
            .insert("content-length", "1000".parse().unwrap());
        return resp;
    }
    if path.starts_with("/drip") {
        arrived.notify_one();
        return Response::new(boxed(Drip { sent: false }));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap();
        return Response::new(boxed(Bytes64k { left: n }));
    }
    if path == "/count" {
        let mut body = req.into_body();
        let mut received = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received += data.len() as u64;
            }
        }
        return json_response(StatusCode::OK, &json!({ "received": received }), &[]);
    }
    let status = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("status=")))
        .and_then(|s| s.parse::<u16>().ok())
        .map_or(StatusCode::OK, |s| StatusCode::from_u16(s).unwrap());
    let respond: Vec<(String, String)> = req
        .headers()
        .get("x-respond")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echo = json!({
        "version": format!("{:?}", req.version()),
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut echo = echo;
    echo["body"] = Value::String(String::from_utf8_lossy(&body).into_owned());
    json_response(status, &echo, &respond)
}

fn json_response(
    status: StatusCode,
    v: &Value,
    headers: &[(String, String)],
) -> Response<TestBody> {
    let mut resp = Response::new(boxed(Full::new(Bytes::from(v.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    for (k, v) in headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

/// One chunk, a pause (so that the head and the chunk are surely written), then an error.
struct Abort {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for Abort {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        use std::future::Future as _;
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))));
        }
        if self.pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(std::io::Error::other("the upstream broke off"))))
    }
}

/// One chunk, then nothing more, ever.
struct Drip {
    sent: bool,
}

impl HttpBody for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first chunk\n")))))
    }
}

/// `left` bytes of `x`, 64 KiB at a time, with an exact size.
struct Bytes64k {
    left: u64,
}

impl HttpBody for Bytes64k {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &CHUNK[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A private CA and a certificate it issued for `localhost` and `127.0.0.1`.
pub struct TestCertificate {
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    pub cert_der: rustls_pki_types::CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    key_pkcs8: Vec<u8>,
}

impl TestCertificate {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Self {
            ca_der: ca.der().clone(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_pkcs8: key.serialize_der(),
        }
    }

    pub fn key_der(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        rustls_pki_types::PrivateKeyDer::Pkcs8(self.key_pkcs8.clone().into())
    }

    /// A TLS client configuration trusting the CA.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

/// A running in-process proxy.
#[derive(Debug)]
pub struct RunningProxy {
    pub addr: SocketAddr,
    /// `http://` + the admin listener.
    pub admin: String,
    pub base: String,
    pub stats: Arc<ProxyStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningProxy {
    /// Starts a proxy with `config` writing into `sink`.
    pub async fn start(config: ProxyConfig, sink: Arc<dyn Sink>) -> Self {
        let mut proxy = Proxy::bind(config, sink, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = proxy.local_addr().unwrap();
        let admin = proxy
            .bind_admin("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let stats = proxy.stats();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run_until(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin: format!("http://{admin}"),
            base: format!("http://{addr}"),
            stats,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The value of an unlabelled metric on `/metrics` (or one with `labels`, as written).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }

    /// Asks it to stop (it stops accepting at once).
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops it gracefully (every buffered record written) and waits.
    pub async fn stop(mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The configuration of the tests: forwarding to `upstream`, fingerprints under [`FP_KEY`],
/// three event loops whatever the CPUs (so that exchanges are spread over threads).
pub fn config(upstream: &TestUpstream) -> ProxyConfig {
    ProxyConfig {
        threads: 3,
        ..ProxyConfig::new(
            upstream.url().parse::<Upstream>().unwrap(),
            FingerprintKey::new(FP_KEY).unwrap(),
        )
    }
}

/// Routes from lines.
pub fn routes(lines: &[&str]) -> Routes {
    Routes::parse(&lines.join("\n")).unwrap()
}

/// The store as the proxy's sink.
pub fn store_sink(store: &Arc<dyn Store>) -> Arc<dyn Sink> {
    Arc::new(StoreSink::new(Arc::clone(store)))
}

/// A sink in front of the real store that writes nothing until `open` gets permits: a
/// store that is slow (or gone) as far as the proxy can tell.
#[derive(Debug)]
pub struct GatedSink {
    pub inner: StoreSink,
    pub open: Semaphore,
    pub waiting: Notify,
}

#[async_trait]
impl Sink for GatedSink {
    async fn write(&self, batch: Vec<apitrail_proxy::Captured>) -> apitrail_proxy::Written {
        self.waiting.notify_one();
        let permit = self.open.acquire().await.unwrap();
        permit.forget();
        self.inner.write(batch).await
    }
}

/// Polls `f` until it gives a value, for at most 10 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The org's request logs through `/v1/logs` once there are `n`, newest first.
pub async fn logs(server: &apitrail_testkit::TestServer, secret: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} request logs"), || async {
        let page = server.logs(secret, "limit=100").await;
        let items = page["data"].as_array().unwrap().clone();
        (items.len() >= n).then_some(items)
    })
    .await
}

/// The org's stored logs, newest first.
pub async fn stored_logs(
    store: &dyn apitrail_store::Store,
    org: &str,
) -> Vec<apitrail_model::RequestLog> {
    let tenant = store
        .tenant(&apitrail_model::OrgId::parse(org).unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .list_request_logs(
            &tenant,
            &apitrail_model::LogFilter::default(),
            apitrail_model::Sort::NEWEST_FIRST,
            apitrail_model::PageRequest::first(100),
        )
        .await
        .unwrap()
        .items
}

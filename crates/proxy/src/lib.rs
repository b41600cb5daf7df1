//! `apitrail proxy`: a reverse proxy in front of any HTTP API that records a request log for
//! every exchange passing through (SPEC §8), without a line of code in the upstream.
//!
//! Connections are accepted by `apitrail_api::serve` (the same accept loop, timeouts and
//! connection cap as `serve`); each request runs through the phases of [`exchange`] and is
//! forwarded by hyper's pooled client, bodies streamed both ways. Records go through a
//! bounded buffer to a [`Sink`] (the embedded store: [`StoreSink`]; a remote `serve`:
//! [`RemoteSink`]), so the log never slows
//! or fails traffic: when the buffer is full, records are dropped and counted.

pub mod body;
pub mod exchange;
pub mod headers;
pub mod net;
pub mod remote;
pub mod routes;
pub mod sink;
pub mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apitrail_api::serve::{Handshake, ServeConfig, ServeStats, Socket, serve, serve_with};
use apitrail_model::OrgId;
use axum::body::Body;
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;

pub use net::Cidr;
pub use remote::RemoteSink;
pub use routes::{RouteError, Routes};
pub use sink::{Captured, Sink, StoreSink, Written};
pub use stats::{DropReason, ProxyStats};

use crate::body::RequestBody;
use crate::exchange::Exchange;
use crate::sink::{Buffer, Writer};

/// Where requests are forwarded: `http://host:port` or `https://host:port`, optionally with a path prefix that is
/// put before every request's path (`http://host/api` sends `/users` to `/api/users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// Without a trailing `/`; empty for none.
    prefix: String,
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let uri: Uri = s
            .parse()
            .map_err(|_| format!("{s:?} is not a URL such as http://127.0.0.1:3000"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(format!("{s:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{s:?} names no host"))?;
        if uri.query().is_some() {
            return Err(format!("{s:?}: an upstream URL carries no query string"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            prefix,
        })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

impl Upstream {
    /// The URL the upstream gets for a request target (origin-form or absolute-form; only
    /// its path and query are used).
    pub fn uri_for(&self, target: &Uri) -> Option<Uri> {
        let pq = target
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let pq = if self.prefix.is_empty() {
            pq
        } else {
            PathAndQuery::try_from(format!("{}{}", self.prefix, pq.as_str())).ok()?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }
}

/// The key of credential fingerprints (HMAC-SHA256). Its `Debug` never shows it.
#[derive(Clone)]
pub struct FingerprintKey(Vec<u8>);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

/// The file, in the data directory, that keeps the installation's fingerprint key.
pub const FINGERPRINT_KEY_FILE: &str = "proxy-fingerprint.key";

impl FingerprintKey {
    /// A key from its text (at least 16 bytes; the file holds 64 hex characters).
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < 16 {
            return Err("a fingerprint key is at least 16 characters".into());
        }
        Ok(Self(text.as_bytes().to_vec()))
    }

    /// The installation's key from `dir/proxy-fingerprint.key`, made (256 random bits, as
    /// hex, readable by the owner only) when there is none yet.
    pub fn load_or_create(dir: &Path) -> Result<Self, String> {
        let path = dir.join(FINGERPRINT_KEY_FILE);
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| Self::new(&text).map_err(|e| format!("{}: {e}", path.display())))
        };
        if path.exists() {
            return read(&path);
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut bytes = [0u8; 32];
        apitrail_model::id::fill_random(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(format!("{hex}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Self::new(&hex)
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(&path),
            Err(e) => Err(format!("cannot create {}: {e}", path.display())),
        }
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where requests go.
    pub upstream: Upstream,
    /// Route patterns for `route_pattern`.
    pub routes: Routes,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The org of exchanges without an `apitrail-org` header.
    pub default_org: Option<OrgId>,
    /// Keep request and response bodies (up to `body_cap_bytes` each).
    pub capture_bodies: bool,
    /// Most bytes of each body kept.
    pub body_cap_bytes: usize,
    /// Records the buffer towards the sink holds before records are dropped.
    pub buffer_records: usize,
    /// The key of credential fingerprints.
    pub fingerprint_key: FingerprintKey,
    /// Limits and timeouts of client connections.
    pub serve: ServeConfig,
    /// How long connecting to the upstream may take before the exchange is a 502.
    pub connect_timeout: Duration,
    /// Certificate authorities trusted for an `https://` upstream besides the Mozilla roots
    /// (a private CA).
    pub upstream_ca: Vec<CertificateDer<'static>>,
    /// How long exchanges in flight may take to finish once shutdown is asked for; then the
    /// proxy stops without them (their records are lost, counted as `shutdown`).
    pub shutdown_grace: Duration,
    /// TLS towards clients (`--tls-cert`/`--tls-key`, see [`server_tls`]): HTTPS, with h2
    /// or HTTP/1.1 chosen by ALPN. Without it clients speak HTTP/1.1 or h2c in the clear.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Speak HTTP/2 to the upstream (h2c with prior knowledge for `http://`, h2 by ALPN for
    /// `https://`) rather than HTTP/1.1; `Upgrade` requests are then forwarded as plain
    /// requests (HTTP/2 has no `101`).
    pub upstream_http2: bool,
    /// Event loops serving clients, each on a thread of its own with its own listening
    /// socket (`SO_REUSEPORT`: the kernel spreads connections over them) and its own pool of
    /// upstream connections, so an exchange never changes threads. The connection cap is
    /// shared out among them.
    pub threads: usize,
}

/// The default of [`ProxyConfig::threads`]: one event loop per CPU.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl ProxyConfig {
    /// A configuration with the defaults of `apitrail proxy`.
    pub fn new(upstream: Upstream, fingerprint_key: FingerprintKey) -> Self {
        Self {
            upstream,
            routes: Routes::default(),
            trusted_proxies: Vec::new(),
            default_org: None,
            capture_bodies: false,
            body_cap_bytes: apitrail_model::request_log::rules::DEFAULT_BODY_CAP,
            buffer_records: 10_000,
            fingerprint_key,
            serve: ServeConfig::default(),
            connect_timeout: Duration::from_secs(10),
            upstream_ca: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            upstream_http2: false,
            threads: default_threads(),
        }
    }
}

/// What every exchange shares.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    pub(crate) buffer: Buffer,
    pub(crate) stats: Arc<ProxyStats>,
}

/// A bound, ready-to-run proxy.
#[derive(Debug)]
pub struct Proxy {
    /// One listening socket per event loop, all on one address.
    listeners: Vec<std::net::TcpListener>,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    writer: Writer,
    stats: Arc<ProxyStats>,
    serve_stats: Arc<ServeStats>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Binds `listen` (port 0 picks a free port) and starts the writer towards `sink`. Must
    /// be called within a Tokio runtime.
    pub async fn bind(
        config: ProxyConfig,
        sink: Arc<dyn Sink>,
        listen: SocketAddr,
    ) -> io::Result<Self> {
        let listeners = bind_reuseport(listen, config.threads.max(1))?;
        let stats = Arc::new(ProxyStats::default());
        let (buffer, writer) = Writer::spawn(sink, config.buffer_records, Arc::clone(&stats));
        let shared = Arc::new(Shared {
            client: upstream_client(&config)?,
            config,
            buffer,
            stats: Arc::clone(&stats),
        });
        Ok(Self {
            listeners,
            admin: None,
            shared,
            writer,
            stats,
            serve_stats: Arc::new(ServeStats::default()),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.listeners.first() {
            Some(listener) => listener.local_addr(),
            None => Err(io::Error::other("no listener")),
        }
    }

    /// Binds the admin listener (`/healthz`, `/metrics`) on `listen`; returns its address.
    pub async fn bind_admin(&mut self, listen: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        self.admin = Some(listener);
        Ok(addr)
    }

    /// The proxy's figures.
    pub fn stats(&self) -> Arc<ProxyStats> {
        Arc::clone(&self.stats)
    }

    /// The listener's figures.
    pub fn serve_stats(&self) -> Arc<ServeStats> {
        Arc::clone(&self.serve_stats)
    }

    /// Proxies until `shutdown` resolves, then stops accepting, lets the exchanges in flight
    /// finish (idle connections close at once) for at most the shutdown grace, and writes
    /// the buffered records.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let Self {
            listeners,
            admin,
            shared,
            writer,
            serve_stats,
            ..
        } = self;
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin_task = admin.map(|listener| {
            let router = admin_router(Arc::clone(&shared), Arc::clone(&serve_stats));
            let mut stopped = admin_stopped.clone();
            tokio::spawn(apitrail_api::serve::serve(
                listener,
                router,
                ServeConfig {
                    max_connections: 64,
                    ..ServeConfig::default()
                },
                Arc::new(ServeStats::default()),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        // Clients may speak HTTP/1.1 or HTTP/2 (h2c, or h2 by ALPN over TLS).
        let loops = listeners.len().max(1);
        let serve_config = ServeConfig {
            http2: true,
            max_connections: shared.config.serve.max_connections.div_ceil(loops),
            ..shared.config.serve.clone()
        };
        let grace = shared.config.shutdown_grace;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<io::Result<()>>(loops);
        for (i, listener) in listeners.into_iter().enumerate() {
            // Each loop has its own upstream pool: a pooled connection is driven by a task of
            // the runtime that opened it.
            let own = Arc::new(Shared {
                config: shared.config.clone(),
                client: upstream_client(&shared.config)?,
                buffer: shared.buffer.clone(),
                stats: Arc::clone(&shared.stats),
            });
            let event_loop = EventLoop {
                shared: own,
                serve_config: serve_config.clone(),
                serve_stats: Arc::clone(&serve_stats),
                stop: stop_rx.clone(),
                abort: abort_rx.clone(),
            };
            let done = done_tx.clone();
            std::thread::Builder::new()
                .name(format!("apitrail-proxy-{i}"))
                .spawn(move || {
                    let _ = done.blocking_send(event_loop.run(listener));
                })?;
        }
        drop(done_tx);
        let mut shutdown = pin!(shutdown);
        let mut asked = false;
        let mut aborted = false;
        // Armed when shutdown is asked.
        let mut grace_over = pin!(tokio::time::sleep(Duration::from_secs(365 * 86_400)));
        let mut served = Ok(());
        loop {
            tokio::select! {
                ended = done_rx.recv() => match ended {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        // One loop failing stops them all.
                        if served.is_ok() {
                            served = Err(e);
                        }
                        let _ = stop_tx.send(true);
                    }
                    None => break,
                },
                () = &mut shutdown, if !asked => {
                    asked = true;
                    let _ = stop_tx.send(true);
                    grace_over.as_mut().reset(tokio::time::Instant::now() + grace);
                }
                // A download that never ends, or an upstream that never answers, must not
                // hold the proxy forever: after the grace it stops waiting for them.
                () = &mut grace_over, if asked && !aborted => {
                    aborted = true;
                    tracing::warn!(grace_secs = grace.as_secs_f64(),
                        "exchanges still in flight after the shutdown grace; stopping without them");
                    let _ = abort_tx.send(true);
                }
            }
        }
        writer.finish().await;
        let _ = stop_admin.send(true);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        served
    }
}

/// The admin listener's routes: `/healthz` (the process is up) and `/metrics`.
fn admin_router(shared: Arc<Shared>, serve_stats: Arc<ServeStats>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/metrics",
            get(move || {
                let shared = Arc::clone(&shared);
                let serve_stats = Arc::clone(&serve_stats);
                async move {
                    let (buffered, capacity) = shared.buffer.fill();
                    let mut text = shared.stats.render(buffered, capacity);
                    text.push_str(&render_connections(&serve_stats));
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
}

/// The client side's connection figures.
fn render_connections(s: &ServeStats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    format!(
        "# HELP apitrail_proxy_connections_open Client connections open now.\n\
         # TYPE apitrail_proxy_connections_open gauge\n\
         apitrail_proxy_connections_open {}\n\
         # HELP apitrail_proxy_connections_total Client connections accepted.\n\
         # TYPE apitrail_proxy_connections_total counter\n\
         apitrail_proxy_connections_total {}\n",
        s.open.load(Relaxed),
        s.accepted.load(Relaxed),
    )
}

/// One client-facing event loop: a current-thread runtime serving its own listener.
struct EventLoop {
    shared: Arc<Shared>,
    serve_config: ServeConfig,
    serve_stats: Arc<ServeStats>,
    stop: tokio::sync::watch::Receiver<bool>,
    abort: tokio::sync::watch::Receiver<bool>,
}

impl EventLoop {
    /// Serves until asked to stop (finishing the exchanges in flight) or to abort.
    fn run(self, listener: std::net::TcpListener) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let Self {
                shared,
                serve_config,
                serve_stats,
                mut stop,
                mut abort,
            } = self;
            let listener = TcpListener::from_std(listener)?;
            let tls = shared.config.tls.clone();
            let service = tower::service_fn(move |req: Request<Body>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let serving = async move {
                match tls {
                    Some(tls) => {
                        let handshake = TlsHandshake(tokio_rustls::TlsAcceptor::from(tls));
                        serve_with(
                            listener,
                            handshake,
                            service,
                            serve_config,
                            serve_stats,
                            stopped,
                        )
                        .await
                    }
                    None => serve(listener, service, serve_config, serve_stats, stopped).await,
                }
            };
            tokio::select! {
                served = serving => served,
                _ = abort.wait_for(|a| *a) => Ok(()),
            }
        })
    }
}

/// `n` listening sockets on `addr` (the first picks the port when it is 0), with
/// `SO_REUSEPORT`, for the event loops.
fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        addr = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// hyper's pooled client towards the upstream, with TLS for an `https://` one.
fn upstream_client(
    config: &ProxyConfig,
) -> io::Result<Client<HttpsConnector<HttpConnector>, RequestBody>> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&config.upstream_ca)?)
        .https_or_http();
    let connector = if config.upstream_http2 {
        connector
            .enable_http2()
            .wrap_connector(connector_tcp(config))
    } else {
        connector
            .enable_http1()
            .wrap_connector(connector_tcp(config))
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60));
    if config.upstream_http2 {
        client.http2_only(true).timer(TokioTimer::new());
    }
    Ok(client.build(connector))
}

/// The TCP side of the connections to the upstream.
fn connector_tcp(config: &ProxyConfig) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.enforce_http(false);
    connector
}

/// The TLS settings towards clients from a PEM certificate chain and its PEM private key
/// (PKCS#8, PKCS#1 or SEC1), offering h2 and HTTP/1.1 by ALPN.
pub fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS termination: the handshake `serve` makes on every accepted connection.
struct TlsHandshake(tokio_rustls::TlsAcceptor);

impl Handshake for TlsHandshake {
    type Stream = tokio_rustls::server::TlsStream<Socket>;

    async fn handshake(&self, socket: Socket) -> io::Result<Self::Stream> {
        self.0.accept(socket).await
    }
}

/// The TLS client settings towards the upstream: the Mozilla roots and `extra` CAs.
fn tls_config(extra: &[CertificateDer<'static>]) -> io::Result<rustls::ClientConfig> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for ca in extra {
        roots
            .add(ca.clone())
            .map_err(|e| invalid(format!("an upstream CA certificate is not usable: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates of a PEM file (`--upstream-ca`).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// One exchange, phase by phase (see [`exchange`]).
async fn handle(shared: Arc<Shared>, req: Request<Body>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut exchange = Exchange::accept(Arc::clone(&shared), &parts);
    exchange.match_route();
    exchange.attribute(&mut parts.headers);
    let Some(upstream) = exchange.upstream_request(parts, body) else {
        return exchange.local_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request target cannot be forwarded",
        );
    };
    let sent = Instant::now();
    // If the client goes away meanwhile, hyper drops this future and the exchange with it:
    // its log phase records a 499.
    let result = shared.client.request(upstream).await;
    shared
        .stats
        .upstream_seconds
        .observe(sent.elapsed().as_secs_f64());
    match result {
        Ok(response) => exchange.respond(response),
        Err(e) => exchange.fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_keep_a_path_prefix() {
        let up: Upstream = "http://127.0.0.1:3000".parse().unwrap();
        let target: Uri = "/users/1?x=2".parse().unwrap();
        assert_eq!(
            up.uri_for(&target).unwrap().to_string(),
            "http://127.0.0.1:3000/users/1?x=2"
        );
        let prefixed: Upstream = "http://api.internal/base/".parse().unwrap();
        assert_eq!(prefixed.to_string(), "http://api.internal/base");
        assert_eq!(
            prefixed.uri_for(&target).unwrap().to_string(),
            "http://api.internal/base/users/1?x=2"
        );
        let absolute: Uri = "http://elsewhere/x".parse().unwrap();
        assert_eq!(
            up.uri_for(&absolute).unwrap().to_string(),
            "http://127.0.0.1:3000/x"
        );
        assert!("https://api.example.com".parse::<Upstream>().is_ok());
        for bad in ["ftp://x", "/path", "http://x/?q=1", "nonsense at all"] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_keys_are_kept_beside_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let made = FingerprintKey::load_or_create(dir.path()).unwrap();
        assert_eq!(made.bytes().len(), 64);
        let again = FingerprintKey::load_or_create(dir.path()).unwrap();
        assert_eq!(made.bytes(), again.bytes());
        assert_eq!(format!("{made:?}"), "FingerprintKey(..)");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(FINGERPRINT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(FingerprintKey::new("short").is_err());
    }
}

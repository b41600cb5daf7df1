//! Serving HTTP/1.1 (and, when asked, HTTP/2) over TCP with the protections a public
//! listener needs, which `axum::serve` lacks: a header-read timeout, a keep-alive idle
//! timeout, request-body timeouts and a cap on concurrent connections. It knows nothing of
//! apitrail's routes, so the capture proxy can serve through it too, with a [`Handshake`]
//! (its TLS termination) between the socket and HTTP.
//!
//! Each accepted connection runs on its own task: the handshake first (bounded by the
//! header-read timeout), then hyper's connection and a watchdog polled alongside it. The watchdog knows which phase the connection is in:
//! - **idle**: no request in flight and no byte of the next one read. A new connection must
//!   start its first request within the header-read timeout; between requests a connection
//!   may idle for the keep-alive timeout. Then it is closed.
//! - **head**: the first bytes of a request arrived; its headers must be complete within the
//!   header-read timeout of that first byte, or the connection is closed.
//! - **busy**: a request is being handled or its response written. No connection timeout
//!   applies; the request body is guarded instead by [`TimedBody`]: no byte for the body-read
//!   timeout, or the whole body not received within the body deadline, fails the read, the
//!   request is marked (see [`BodyWatch`]) so the application can answer `408`, and the
//!   response closes the connection.
//!
//! An HTTP/2 connection (h2c with prior knowledge, or h2 chosen by ALPN) carries many
//! requests at once and frames of its own between them, so for it bytes arriving do not
//! start a head: between requests it is idle, and closed after the keep-alive timeout, and
//! its headers are bounded by size ([`H2_MAX_HEADER_LIST`]) instead of by time.
//!
//! On shutdown the loop stops accepting; connections with a request in flight finish it
//! (keep-alive off), the others close at once.
//!
//! At the connection cap the accept loop stops accepting (further clients wait in the
//! kernel's backlog, holding no descriptor of ours) and asks one idle connection to close to
//! make room; connections in the other phases are never cut for room, and they end by
//! themselves within the timeouts above. Hitting the cap is counted and logged (at most once
//! every ten seconds).

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Sleep;
use tower::ServiceExt as _;

/// Connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A request's headers must be complete this long after its first byte (and a new
    /// connection must start its first request within it).
    pub header_read_timeout: Duration,
    /// An idle kept-alive connection is closed after this long.
    pub keep_alive_timeout: Duration,
    /// A request body that sends no byte for this long is cut off (`408`).
    pub body_read_timeout: Duration,
    /// A request body not complete this long after the server started reading it is cut off
    /// (`408`), however steadily it drips.
    pub body_deadline: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Speak HTTP/2 as well as HTTP/1.1: h2c with prior knowledge, or h2 over a TLS
    /// [`Handshake`] that chose it by ALPN. Off, an HTTP/2 preface is refused as HTTP/1.
    pub http2: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
            body_deadline: Duration::from_secs(300),
            max_connections: 10_000,
            http2: false,
        }
    }
}

/// The largest `max_connections` accepted (the semaphore counts permits in a `u32`).
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Descriptors kept free for everything but client connections (store files or
/// connections, webhook deliveries, logs).
pub const RESERVED_FDS: u64 = 512;

/// How many request headers hyper parses before answering `431` itself (with an empty body);
/// kept above the application's own limit, so that the application answers in its envelope.
const HYPER_MAX_HEADERS: usize = 256;

/// Streams one HTTP/2 connection may have open at once.
pub const H2_MAX_STREAMS: u32 = 256;

/// Most bytes of one HTTP/2 request's header list (names, values and 32 bytes each), as
/// HTTP/1.1's header limits bound a head.
pub const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// How often the connection-cap warning is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open-file limit to the hard one and fits `max_connections` under it, with
/// [`RESERVED_FDS`] to spare, so that the process never runs out of descriptors. Returns the
/// limit and whether `max_connections` was lowered.
pub fn fit_to_fd_limit(config: &mut ServeConfig) -> (u64, bool) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (limit.current, limit.maximum)
        && max.is_none_or(|m| m > cur)
    {
        // Raising the soft limit up to the hard one needs no privilege; an unlimited hard
        // limit is still capped by the kernel's nr_open, so aim at a large finite value.
        let wanted = max.unwrap_or(1 << 20);
        let raised = rustix::process::Rlimit {
            current: Some(wanted),
            maximum: max,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    let available = limit.current.unwrap_or(u64::MAX);
    let fits = available.saturating_sub(RESERVED_FDS).max(16);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if config.max_connections > fits {
        config.max_connections = fits;
        return (available, true);
    }
    (available, false)
}

/// Counters of the serving loop, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Times a connection arrived while the cap was reached.
    pub limit_reached: AtomicU64,
    /// Idle connections closed to make room under the cap.
    pub shed: AtomicU64,
    /// Connections closed because a request's headers did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Idle kept-alive connections closed after the keep-alive timeout.
    pub keep_alive_timeouts: AtomicU64,
    /// Request bodies cut off for stalling or missing the body deadline.
    pub body_timeouts: AtomicU64,
}

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyTimeout {
    /// No byte arrived for the body-read timeout.
    Stalled(Duration),
    /// The body was not complete within the body deadline.
    Deadline(Duration),
}

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyTimeout::Stalled(d) => write!(
                f,
                "the request body stalled: no data for {} s",
                d.as_secs_f64()
            ),
            BodyTimeout::Deadline(d) => write!(
                f,
                "the request body was not received within {} s",
                d.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for BodyTimeout {}

/// Tells whether the current request's body was cut off by a timeout; found in every
/// request's extensions, so the application can answer `408` in its own envelope whatever
/// the handler made of the failed read.
#[derive(Debug, Clone)]
pub struct BodyWatch(Arc<BodyWatchInner>);

#[derive(Debug)]
struct BodyWatchInner {
    /// 0: not timed out; 1: stalled; 2: deadline.
    state: AtomicU8,
    read_timeout: Duration,
    deadline: Duration,
}

impl BodyWatch {
    fn new(read_timeout: Duration, deadline: Duration) -> Self {
        Self(Arc::new(BodyWatchInner {
            state: AtomicU8::new(0),
            read_timeout,
            deadline,
        }))
    }

    fn set(&self, timeout: BodyTimeout) {
        let code = match timeout {
            BodyTimeout::Stalled(_) => 1,
            BodyTimeout::Deadline(_) => 2,
        };
        self.0.state.store(code, Ordering::Relaxed);
    }

    /// The timeout that cut the body off, if one did.
    pub fn timed_out(&self) -> Option<BodyTimeout> {
        match self.0.state.load(Ordering::Relaxed) {
            1 => Some(BodyTimeout::Stalled(self.0.read_timeout)),
            2 => Some(BodyTimeout::Deadline(self.0.deadline)),
            _ => None,
        }
    }
}

/// A request body with the body-read timeout and the body deadline. Time counts only while
/// the reader waits for the client, from the first read on, so a handler that reads late is
/// not charged for its own work.
#[derive(Debug)]
pub struct TimedBody {
    inner: Incoming,
    watch: BodyWatch,
    stats: Arc<ServeStats>,
    /// Armed while a read waits for data.
    stall: Option<Pin<Box<Sleep>>>,
    /// Armed at the first read.
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl TimedBody {
    fn fail(
        &mut self,
        timeout: BodyTimeout,
    ) -> Poll<Option<Result<Frame<axum::body::Bytes>, BoxError>>> {
        self.done = true;
        self.stall = None;
        self.deadline = None;
        self.watch.set(timeout);
        self.stats.body_timeouts.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(timeout))))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpBody for TimedBody {
    type Data = axum::body::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let read_timeout = this.watch.0.read_timeout;
        let deadline = this.watch.0.deadline;
        let deadline_sleep = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        if deadline_sleep.as_mut().poll(cx).is_ready() {
            return this.fail(BodyTimeout::Deadline(deadline));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.stall = None;
                if frame.is_none() {
                    this.done = true;
                    this.deadline = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(read_timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    return this.fail(BodyTimeout::Stalled(read_timeout));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a connection stands, for the watchdog.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight and no byte of the next one read; `first` on a new connection.
    Idle { since: Instant, first: bool },
    /// Bytes of a request head arrived, the head is not complete.
    Head { since: Instant },
    /// Requests in flight (handled, or their response being written).
    Busy { requests: usize },
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy)]
enum Closed {
    HeaderTimeout,
    KeepAliveTimeout,
    Shed,
    Shutdown,
}

#[derive(Debug)]
struct ConnState {
    phase: Mutex<Phase>,
    /// The connection speaks HTTP/2: bytes between requests are its own frames.
    h2: std::sync::atomic::AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
                first: true,
            }),
            h2: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *phase = f(*phase);
    }

    /// Bytes arrived: an idle HTTP/1 connection is now reading a request head.
    fn on_read(&self) {
        if self.h2.load(Ordering::Relaxed) {
            return;
        }
        self.update(|p| match p {
            Phase::Idle { .. } => Phase::Head {
                since: Instant::now(),
            },
            other => other,
        });
    }

    fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.update(|p| match p {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        });
        RequestGuard(Arc::clone(self))
    }

    /// The deadline of the current phase, and what passing it means.
    fn deadline(&self, config: &ServeConfig) -> Option<(Instant, Closed)> {
        match self.phase() {
            Phase::Idle { since, first: true } | Phase::Head { since } => {
                Some((since + config.header_read_timeout, Closed::HeaderTimeout))
            }
            Phase::Idle {
                since,
                first: false,
            } => Some((since + config.keep_alive_timeout, Closed::KeepAliveTimeout)),
            Phase::Busy { .. } => None,
        }
    }

    fn is_idle(&self) -> bool {
        matches!(self.phase(), Phase::Idle { .. })
    }
}

/// Held by a request until its response body is written (or dropped).
#[derive(Debug)]
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.update(|p| match p {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
                first: false,
            },
        });
    }
}

/// A response body that keeps its request in flight until hyper has written it.
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An accepted TCP connection, as a [`Handshake`] gets it: it notes when bytes arrive, for
/// the connection's timeouts.
pub struct Socket {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("peer", &self.stream.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Turns an accepted connection into the stream HTTP is spoken on: [`Plain`] keeps it as
/// it is; the capture proxy's TLS termination makes a handshake. It runs on the
/// connection's own task, within the header-read timeout.
pub trait Handshake: Send + Sync + 'static {
    /// The stream after the handshake.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Makes the handshake; an error closes the connection (logged at debug level).
    fn handshake(&self, socket: Socket) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// No handshake: HTTP on the TCP connection itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Stream = Socket;

    async fn handshake(&self, socket: Socket) -> io::Result<Socket> {
        Ok(socket)
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_read();
        }
        polled
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Requests to close idle connections, made by the accept loop at the cap.
#[derive(Debug, Default)]
struct Shed {
    wanted: AtomicUsize,
    notify: Notify,
}

impl Shed {
    fn request(&self) {
        self.wanted.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Withdraws a request nobody took (a connection closed by itself meanwhile).
    fn withdraw(&self) {
        let _ = self
            .wanted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Takes a pending request, if one is left.
    fn take(&self) -> bool {
        self.wanted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What [`serve`] runs for every request: an axum router, or any tower service of its shape.
pub trait AppService:
    tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> AppService for S where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (idle connections close at once) and returns when every
/// connection is closed.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    config: ServeConfig,
    stats: Arc<ServeStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    S: AppService,
{
    serve_with(listener, Plain, service, config, stats, shutdown).await
}

/// [`serve`], with `handshake` made on every accepted connection before HTTP is spoken on
/// it (TLS termination).
pub async fn serve_with<H, S>(
    listener: TcpListener,
    handshake: H,
    service: S,
    config: ServeConfig,
    stats: Arc<ServeStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    H: Handshake,
    S: AppService,
{
    let max = config.max_connections.clamp(1, MAX_CONNECTIONS);
    let permits = Arc::new(Semaphore::new(max));
    let shed = Arc::new(Shed::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let builder = Arc::new(Builder::new(&config));
    let handshake = Arc::new(handshake);
    let config = Arc::new(config);
    let mut shutdown = pin!(shutdown);
    let mut warned: Option<Instant> = None;
    let mut accept_warned: Option<Instant> = None;
    let mut unlogged = 0u64;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: wait a moment rather than spin; the client
                // stays in the backlog meanwhile.
                if accept_warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    accept_warned = Some(Instant::now());
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                stats.limit_reached.fetch_add(1, Ordering::Relaxed);
                unlogged += 1;
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        max_connections = max,
                        times = unlogged,
                        "connection limit reached: new connections wait until one closes \
                         (idle ones are closed to make room)"
                    );
                    warned = Some(Instant::now());
                    unlogged = 0;
                }
                shed.request();
                let acquired = tokio::select! {
                    () = &mut shutdown => None,
                    permit = Arc::clone(&permits).acquire_owned() => permit.ok(),
                };
                shed.withdraw();
                match acquired {
                    Some(permit) => permit,
                    None => break,
                }
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard::new(Arc::clone(&stats), permit);
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            builder: Arc::clone(&builder),
            handshake: Arc::clone(&handshake),
            config: Arc::clone(&config),
            stats: Arc::clone(&stats),
            shed: Arc::clone(&shed),
            stop: stop_rx.clone(),
        };
        let service = service.clone();
        tokio::spawn(async move {
            conn.run(stream, peer, service).await;
            drop(open);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it closes.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}

/// hyper's connection settings: HTTP/1.1 alone, or HTTP/1.1 and HTTP/2 told apart by the
/// first bytes. Kept apart because hyper's automatic builder, once it can speak HTTP/2,
/// answers an HTTP/2 preface with HTTP/2 whatever it was told.
enum Builder {
    Http1(hyper::server::conn::http1::Builder),
    Auto(hyper_util::server::conn::auto::Builder<TokioExecutor>),
}

impl Builder {
    fn new(config: &ServeConfig) -> Self {
        if config.http2 {
            let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            auto.http1()
                .keep_alive(true)
                .max_headers(HYPER_MAX_HEADERS)
                .header_read_timeout(None);
            auto.http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(H2_MAX_HEADER_LIST);
            return Self::Auto(auto);
        }
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .keep_alive(true)
            .max_headers(HYPER_MAX_HEADERS)
            // The watchdog times headers out; hyper's own timer would also close idle
            // kept-alive connections at the header timeout.
            .header_read_timeout(None);
        Self::Http1(http1)
    }
}

/// A connection hyper drives, whichever builder made it.
trait Driven: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    /// Finish the requests in flight, take no more.
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> Driven for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: 'static,
    <S::ResBody as HttpBody>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Driven
    for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// A connection's slot: counted open, and released when the connection's task ends (a
/// panic included).
struct OpenGuard {
    stats: Arc<ServeStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl OpenGuard {
    fn new(stats: Arc<ServeStats>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self {
            stats,
            _permit: permit,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

struct Connection<H> {
    builder: Arc<Builder>,
    handshake: Arc<H>,
    config: Arc<ServeConfig>,
    stats: Arc<ServeStats>,
    shed: Arc<Shed>,
    stop: watch::Receiver<bool>,
}

impl<H: Handshake> Connection<H> {
    async fn run<S>(&self, stream: TcpStream, peer: SocketAddr, service: S)
    where
        S: AppService,
    {
        let state = Arc::new(ConnState::new());
        let socket = Socket {
            stream,
            state: Arc::clone(&state),
        };
        let mut stop = self.stop.clone();
        let stream = tokio::select! {
            shaken = tokio::time::timeout(
                self.config.header_read_timeout,
                self.handshake.handshake(socket),
            ) => match shaken {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "handshake failed");
                    return;
                }
                Err(_) => {
                    self.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "handshake timed out");
                    return;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let io = TokioIo::new(stream);
        let config = Arc::clone(&self.config);
        let stats = Arc::clone(&self.stats);
        let conn_state = Arc::clone(&state);
        let handler = hyper::service::service_fn(move |req: Request<Incoming>| {
            if req.version() == Version::HTTP_2 {
                conn_state.h2.store(true, Ordering::Relaxed);
            }
            let guard = conn_state.begin_request();
            let watch = BodyWatch::new(config.body_read_timeout, config.body_deadline);
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            parts.extensions.insert(watch.clone());
            let body = TimedBody {
                inner: body,
                watch: watch.clone(),
                stats: Arc::clone(&stats),
                stall: None,
                deadline: None,
                done: false,
            };
            let call = service
                .clone()
                .oneshot(Request::from_parts(parts, Body::new(body)));
            async move {
                let Ok(mut response) = call.await;
                if watch.timed_out().is_some() && response.version() != Version::HTTP_2 {
                    // The rest of the body may still be on its way: this connection cannot
                    // carry another request. (An HTTP/2 stream ends by itself.)
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        // With upgrades, a `101 Switching Protocols` hands the socket to whoever awaits the
        // request's upgrade (the capture proxy tunnels WebSockets so); the API never answers
        // 101, so for it nothing changes.
        // Dropping the connection closes the socket.
        match &*self.builder {
            Builder::Http1(http1) => {
                let conn = pin!(http1.serve_connection(io, handler).with_upgrades());
                self.watch(conn, &state, peer).await;
            }
            Builder::Auto(auto) => {
                let conn = pin!(auto.serve_connection_with_upgrades(io, handler));
                self.watch(conn, &state, peer).await;
            }
        }
    }

    /// Drives `conn` until it ends or the watchdog closes it (counted before `conn` is
    /// dropped, so a client that saw the close sees the count).
    async fn watch<C: Driven>(&self, mut conn: Pin<&mut C>, state: &ConnState, peer: SocketAddr) {
        let mut stop = self.stop.clone();
        let mut stopping = pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let mut stopped = false;
        let mut timer = pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let shed = Arc::clone(&self.shed);
        let mut shed_wait = pin!(shed.notify.notified());
        let mut shed_registered = false;
        let closed = poll_fn(|cx| {
            if !stopped && stopping.as_mut().poll(cx).is_ready() {
                stopped = true;
                // Busy connections close after their response.
                conn.as_mut().shut_down();
            }
            if stopped && !matches!(state.phase(), Phase::Busy { .. }) {
                // Idle, or half a request head: nothing is in flight, close now rather than
                // wait for the header timeout.
                return Poll::Ready(Some(Closed::Shutdown));
            }
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return Poll::Ready(None);
            }
            if let Some((deadline, why)) = state.deadline(&self.config) {
                let deadline = tokio::time::Instant::from_std(deadline);
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(why));
                }
            }
            if state.is_idle() && !stopped {
                loop {
                    shed_registered = true;
                    if shed_wait.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    if shed.take() {
                        return Poll::Ready(Some(Closed::Shed));
                    }
                    // A request already withdrawn: wait for the next one.
                    shed_wait.set(shed.notify.notified());
                }
            } else if shed_registered {
                // Busy connections are never shed: leave the queue (a notification this
                // one received passes on to the next waiter).
                shed_wait.set(shed.notify.notified());
                shed_registered = false;
            }
            Poll::Pending
        })
        .await;
        let counter = match closed {
            None | Some(Closed::Shutdown) => return,
            Some(Closed::HeaderTimeout) => &self.stats.header_timeouts,
            Some(Closed::KeepAliveTimeout) => &self.stats.keep_alive_timeouts,
            Some(Closed::Shed) => &self.stats.shed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(reason = ?closed, %peer, "connection closed by the server");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_under_the_open_file_limit() {
        let mut small = ServeConfig {
            max_connections: 8,
            ..ServeConfig::default()
        };
        let (limit, lowered) = fit_to_fd_limit(&mut small);
        assert!(!lowered || limit < 8 + RESERVED_FDS);
        let mut huge = ServeConfig {
            max_connections: usize::MAX,
            ..ServeConfig::default()
        };
        let (limit, lowered) = fit_to_fd_limit(&mut huge);
        assert!(lowered);
        assert!(huge.max_connections as u64 + RESERVED_FDS <= limit.max(16 + RESERVED_FDS));
        // The soft limit now is the one reported.
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current.unwrap_or(u64::MAX), limit);
    }
}

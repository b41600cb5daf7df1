//! The capture proxy benchmark behind BENCHMARKS.md "Capture proxy" (issue 15): requests/s and
//! added latency of `apitrail proxy` beside Debian's nginx as a reverse proxy, in one run.
//!
//! - A fast loopback upstream: a hyper HTTP/1.1 server answering every request with the same
//!   ~1 KB JSON body (Content-Length, keep-alive), in a child process (this binary re-executed
//!   with a hidden flag) so that it shares no runtime with the load generator.
//! - Targets, each started in turn in front of that upstream: the upstream itself; nginx
//!   (`proxy_pass` over an upstream keep-alive pool, `worker_processes 2`) without an access
//!   log and with a JSON access log; `apitrail proxy` recording every exchange into its
//!   embedded store, and with capture off (no `--org`: every exchange is counted unattributed
//!   and nothing is written).
//! - A load generator of its own: N persistent HTTP/1.1 connections, each a closed loop of GETs
//!   (requests/s after a warm-up), then an open loop at a fixed rate, wrk2-style: each of
//!   `--open-connections` connections owns every N-th slot of one timeline and latency counts
//!   from the slot's time, so a slow answer that delays the next request is charged to the
//!   target (coordinated omission is not hidden).
//! - For the recording proxy: after a graceful stop (SIGTERM, wait), the records in the store
//!   against the requests the proxy answered.
//!
//! Run: `scripts/bench-proxy` (installs nginx, builds, runs this), or
//! `cargo run --release -p apitrail-bench --bin proxy-bench -- --quick`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apitrail_model::OrgId;
use apitrail_store::Store;
use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The org the recording proxy attributes every exchange to.
const ORG: &str = "bench";
/// A request that takes longer than this is counted as an error (the target hangs).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a started target gets to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The paths the load generator cycles through.
const PATHS: &[&str] = &[
    "/v1/users/1/orders",
    "/v1/users/2/orders",
    "/v1/users/3/orders?status=shipped",
    "/v1/users/4",
    "/v1/orders/ord_1001",
    "/v1/orders/ord_1002/items",
    "/v1/search?q=shoes&page=2",
    "/v1/users/5/orders",
];

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(
    name = "proxy-bench",
    about = "apitrail proxy beside nginx in front of a loopback upstream: requests/s, added latency, records stored"
)]
struct Args {
    /// Seconds of each measurement (after its warm-up).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds of warm-up before each measurement, not counted.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Connection counts of the closed-loop (requests/s) measurements.
    #[arg(long, value_delimiter = ',', default_values_t = vec![32, 128])]
    connections: Vec<usize>,
    /// Requests per second of the open-loop (latency) measurement.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Connections sharing the open loop's timeline.
    #[arg(long, default_value_t = 64)]
    open_connections: usize,
    /// The `apitrail` binary (default: the one next to this binary, i.e. target/release/apitrail).
    #[arg(long)]
    apitrail: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on the PATH, else /usr/sbin/nginx).
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// The targets to measure, in this order (the direct one is always measured first: the
    /// others are reported against it).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = TargetKind::ALL)]
    targets: Vec<TargetKind>,
    /// A smoke run: measurements of 2 s after warm-ups of 1 s (overrides the two durations).
    #[arg(long)]
    quick: bool,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: be the loopback upstream (prints its address, exits when stdin closes).
    #[arg(long, hide = true)]
    serve_upstream: bool,
}

/// What is measured in front of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// The upstream itself.
    Direct,
    /// nginx as a reverse proxy, no access log.
    Nginx,
    /// nginx as a reverse proxy with a JSON access log.
    NginxLog,
    /// `apitrail proxy` recording every exchange into the embedded store.
    Apitrail,
    /// `apitrail proxy` with capture off (no `--org`).
    ApitrailOff,
}

impl TargetKind {
    const ALL: [Self; 5] = [
        Self::Direct,
        Self::Nginx,
        Self::NginxLog,
        Self::Apitrail,
        Self::ApitrailOff,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Direct => "upstream directly",
            Self::Nginx => "nginx, no access log",
            Self::NginxLog => "nginx, JSON access log",
            Self::Apitrail => "apitrail proxy, recording every request",
            Self::ApitrailOff => "apitrail proxy, capture off (unattributed, nothing written)",
        }
    }
}

fn main() {
    let mut args = Args::parse();
    if args.serve_upstream {
        if let Err(e) = serve_upstream() {
            eprintln!("proxy-bench upstream: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.quick {
        args.duration_secs = 2;
        args.warmup_secs = 1;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("proxy-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            println!("{report}");
            if let Some(out) = &args.out
                && let Err(e) = std::fs::write(out, &report)
            {
                eprintln!("proxy-bench: cannot write {}: {e}", out.display());
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("proxy-bench: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream (child process)

/// The upstream's answer: a fixed JSON document of about 1 KB.
fn upstream_body() -> String {
    let mut orders = Vec::new();
    let mut n = 0;
    loop {
        n += 1;
        let order = format!(
            r#"{{"id":"ord_{n:04}","status":"shipped","amount_cents":{},"currency":"EUR","created_at":"2026-12-01T10:{:02}:00Z"}}"#,
            1000 + n * 37,
            n % 60
        );
        orders.push(order);
        let body = format!(
            r#"{{"data":[{}],"has_more":true,"next":"cur_{n}"}}"#,
            orders.join(",")
        );
        if body.len() >= 1000 {
            return body;
        }
    }
}

fn serve_upstream() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:0: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let body = Bytes::from(upstream_body());
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {addr} body {}", body.len())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write to stdout: {e}"))?;
        }
        // The parent holds our stdin: when it closes (the bench ended or died), so do we.
        std::thread::spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    eprintln!("upstream: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process of this bench, stopped (SIGTERM, then SIGKILL after a grace) when dropped.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child: Some(child),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited already (and how).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err(format!("{} was already stopped", self.name));
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{} did not stop within {} s of SIGTERM and was killed",
                        self.name,
                        grace.as_secs()
                    ));
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop(Duration::from_secs(5));
        }
    }
}

/// Reads a child's stdout on a thread: every line goes to the returned channel, then to
/// nowhere once the receiver is gone (the pipe never fills up and blocks the child).
fn stdout_lines(child: &mut Child) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
    let stdout = child.stdout.take()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    Some(rx)
}

/// Waits for the line that `find` accepts, up to [`START_TIMEOUT`].
async fn wait_for_line<T>(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    mut find: impl FnMut(&str) -> Option<T>,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => {
                if let Some(found) = find(&line) {
                    return Ok(found);
                }
            }
            Ok(None) => return Err(format!("{what} exited before it was listening")),
            Err(_) => {
                return Err(format!(
                    "{what} was not listening after {} s",
                    START_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A free loopback port, for nginx (which cannot report a port 0 back).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// A command without the caller's `APITRAIL_*` settings (an `APITRAIL_ORG` in the environment
/// would turn the capture-off run into a recording one).
fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("APITRAIL_") {
            command.env_remove(key);
        }
    }
    command
}

// ---------------------------------------------------------------------------------------------
// Targets

/// A started target: where to send requests, and what to stop afterwards.
struct Running {
    addr: SocketAddr,
    proc: Option<Proc>,
    /// `apitrail proxy`'s `/metrics`.
    metrics: Option<SocketAddr>,
    /// `apitrail proxy`'s data directory.
    data_dir: Option<PathBuf>,
    /// Where the target's own log goes.
    log: Option<PathBuf>,
}

fn find_apitrail(args: &Args) -> Result<PathBuf, String> {
    let path = match &args.apitrail {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("apitrail")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("target/release/apitrail")),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the apitrail binary {} does not exist: build it (`cargo build --release -p apitrail`) or pass --apitrail BIN",
            path.display()
        ))
    }
}

fn find_nginx(args: &Args) -> Result<PathBuf, String> {
    if let Some(path) = &args.nginx {
        return if path.is_file() {
            Ok(path.clone())
        } else {
            Err(format!("--nginx {}: no such file", path.display()))
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            "nginx is not installed: `apt-get install nginx-light` (scripts/bench-proxy does it), pass --nginx BIN, or leave nginx out with --targets direct,apitrail,apitrail-off".to_owned()
        })
}

/// The primary group of `nobody` (nginx's `user` line when started as root; Debian names it
/// `nogroup`, other systems `nobody`).
fn nobody_group() -> String {
    let gid = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd
                .lines()
                .find(|l| l.starts_with("nobody:"))
                .and_then(|l| l.split(':').nth(3).map(str::to_owned))
        });
    let name = gid.and_then(|gid| {
        std::fs::read_to_string("/etc/group")
            .ok()
            .and_then(|group| {
                group.lines().find_map(|l| {
                    let fields: Vec<&str> = l.split(':').collect();
                    (fields.get(2) == Some(&gid.as_str())).then(|| fields[0].to_owned())
                })
            })
    });
    name.unwrap_or_else(|| "nogroup".to_owned())
}

fn nginx_config(dir: &Path, listen: u16, upstream: SocketAddr, access_log: bool) -> String {
    let d = dir.display();
    let user = if rustix::process::geteuid().is_root() {
        format!("user nobody {};\n", nobody_group())
    } else {
        String::new()
    };
    let log = if access_log {
        // One JSON object a line, the fields a request log has; written per request
        // (unbuffered, nginx's default), escaped for JSON by nginx.
        format!(
            r#"log_format apitrail_json escape=json '{{"time":"$time_iso8601","request_id":"$request_id","remote_addr":"$remote_addr","method":"$request_method","uri":"$request_uri","status":$status,"bytes_sent":$body_bytes_sent,"request_time":$request_time,"upstream_time":"$upstream_response_time","user_agent":"$http_user_agent","referer":"$http_referer"}}';
    access_log {d}/access.json apitrail_json;"#
        )
    } else {
        "access_log off;".to_owned()
    };
    format!(
        r#"# Generated by proxy-bench.
daemon off;
{user}worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    {log}
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # Keep client connections open for the whole run (the default closes one after 1000
    # requests).
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream backend {{
        server {upstream};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

async fn start_nginx(
    bin: &Path,
    work: &Path,
    upstream: SocketAddr,
    access_log: bool,
) -> Result<Running, String> {
    let dir = work.join(if access_log { "nginx-log" } else { "nginx" });
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&dir, port, upstream, access_log))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let output = |name: &str| {
        std::fs::File::create(dir.join(name))
            .map(Stdio::from)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(output("stdout.log")?)
        .stderr(output("stderr.log")?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut proc = Proc::new("nginx", child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Some(status) = proc.exited() {
            return Err(format!(
                "nginx exited ({status}) at start (port {port} taken?):\n{}\n{}",
                read_tail(&dir.join("stderr.log")),
                read_tail(&dir.join("error.log"))
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nginx was not listening on {addr} after {} s:\n{}",
                START_TIMEOUT.as_secs(),
                read_tail(&dir.join("error.log"))
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Running {
        addr,
        proc: Some(proc),
        metrics: None,
        data_dir: None,
        log: access_log.then(|| dir.join("access.json")),
    })
}

async fn start_apitrail(
    bin: &Path,
    work: &Path,
    upstream: SocketAddr,
    record: bool,
) -> Result<Running, String> {
    let name = if record { "apitrail" } else { "apitrail-off" };
    let dir = work.join(name);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    if record {
        let out = clean_command(bin)
            .arg("--data-dir")
            .arg(&data)
            .args(["orgs", "create", "--id", ORG, "--name", "Bench"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`apitrail orgs create` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let mut command = clean_command(bin);
    command
        .arg("--data-dir")
        .arg(&data)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--upstream")
        .arg(format!("http://{upstream}"))
        .env("APITRAIL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if record {
        command.args(["--org", ORG]);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let lines = stdout_lines(&mut child);
    let mut proc = Proc::new(format!("apitrail proxy ({name})"), child);
    let Some(mut lines) = lines else {
        return Err("apitrail proxy: no stdout".to_owned());
    };
    let after = |line: &str, prefix: &str| -> Option<SocketAddr> {
        let rest = line.split_once(prefix)?.1;
        rest.split([',', ' ']).next().and_then(|a| a.parse().ok())
    };
    let started = async {
        let addr = wait_for_line(&mut lines, "apitrail proxy", |l| {
            after(l, "is listening on http://")
        })
        .await?;
        let metrics = wait_for_line(&mut lines, "apitrail proxy", |l| {
            after(l, "(/healthz, /metrics) on http://")
        })
        .await?;
        Ok::<_, String>((addr, metrics))
    }
    .await;
    let (addr, metrics) = match started {
        Ok(found) => found,
        Err(e) => {
            let status = proc.exited();
            drop(proc);
            return Err(format!(
                "{e} ({}):\n{}",
                status.map_or("still running".to_owned(), |s| s.to_string()),
                read_tail(&stderr_path)
            ));
        }
    };
    Ok(Running {
        addr,
        proc: Some(proc),
        metrics: Some(metrics),
        data_dir: Some(data),
        log: Some(stderr_path),
    })
}

/// The upstream child and its address.
async fn start_upstream(work: &Path) -> Result<(Proc, SocketAddr, usize), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let stderr_path = work.join("upstream-stderr.log");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let mut child = Command::new(exe)
        .arg("--serve-upstream")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start the upstream: {e}"))?;
    let lines = stdout_lines(&mut child);
    let proc = Proc::new("upstream", child);
    let Some(mut lines) = lines else {
        return Err("upstream: no stdout".to_owned());
    };
    let found = wait_for_line(&mut lines, "the upstream", |l| {
        let mut words = l.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("listening"), Some(addr), Some("body"), Some(len)) => {
                Some((addr.parse().ok()?, len.parse().ok()?))
            }
            _ => None,
        }
    })
    .await
    .map_err(|e| format!("{e}: {}", read_tail(&stderr_path)))?;
    Ok((proc, found.0, found.1))
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// Answers and failures seen by the load generator for one target, over all its phases.
#[derive(Debug, Default)]
struct Counters {
    answered: AtomicU64,
    non_2xx: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.answered.load(Ordering::Relaxed),
            self.non_2xx.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        ]
    }
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One GET, its body read to the end; the status and whether the connection stays open.
async fn get(sender: &mut Sender, host: &str, path: &str) -> Result<(u16, bool), String> {
    let exchange = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let request = Request::get(path)
            .header(HOST, host)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let close = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, !close))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
}

/// Sends `path` on `conn` (connecting first if needed) and counts the outcome; returns
/// whether an answer came back.
async fn exchange(
    conn: &mut Option<Sender>,
    addr: SocketAddr,
    host: &str,
    path: &str,
    counters: &Counters,
) -> bool {
    let sender = match conn {
        Some(sender) => sender,
        None => match connect(addr).await {
            Ok(sender) => conn.insert(sender),
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                *conn = None;
                // A refused connection fails at once: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return false;
            }
        },
    };
    match get(sender, host, path).await {
        Ok((status, keep)) => {
            counters.answered.fetch_add(1, Ordering::Relaxed);
            if !(200..300).contains(&status) {
                counters.non_2xx.fetch_add(1, Ordering::Relaxed);
            }
            if !keep {
                *conn = None;
            }
            true
        }
        Err(_) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            *conn = None;
            false
        }
    }
}

/// A closed-loop measurement.
#[derive(Debug, Clone, Copy)]
struct Closed {
    per_sec: f64,
    non_2xx: u64,
    errors: u64,
}

/// `connections` connections, each sending its next GET as soon as the last is answered, for
/// the warm-up and then the measurement; requests/s over the measurement only, failures over
/// both.
async fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    counters: &Arc<Counters>,
) -> Closed {
    let host: Arc<str> = Arc::from(addr.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let [_, non_2xx_before, errors_before] = counters.snapshot();
    let tasks: Vec<_> = (0..connections)
        .map(|k| {
            let (host, stop, counters) =
                (Arc::clone(&host), Arc::clone(&stop), Arc::clone(counters));
            tokio::spawn(async move {
                let mut conn = None;
                let mut i = k;
                // The request in flight when the stop comes is finished, so that every
                // request sent is answered and counted.
                while !stop.load(Ordering::Relaxed) {
                    exchange(&mut conn, addr, &host, PATHS[i % PATHS.len()], &counters).await;
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    let [answered0, ..] = counters.snapshot();
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    let [answered1, ..] = counters.snapshot();
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let [_, non_2xx_after, errors_after] = counters.snapshot();
    Closed {
        per_sec: (answered1 - answered0) as f64 / elapsed,
        non_2xx: non_2xx_after - non_2xx_before,
        errors: errors_after - errors_before,
    }
}

/// An open-loop measurement: latencies in µs, sorted.
#[derive(Debug, Default)]
struct Open {
    latencies: Vec<u32>,
    /// How late the generator's timer released requests (µs, sorted): its own share.
    timer_lag: Vec<u32>,
    /// Requests sent after their slot because the previous answer on the connection came late.
    late: u64,
    sent: u64,
    non_2xx: u64,
    errors: u64,
}

/// `rate` requests/s on one timeline, slot `i` at `start + i / rate`, shared round-robin by
/// `connections` connections. Latency counts from the slot's time: a request held back by
/// the previous answer on its connection is charged the wait. A request whose connection is
/// idle at its slot is measured from the moment the timer (1 ms resolution) released it, so
/// the timer's rounding is not charged to the target; that lag is reported on its own.
async fn open_loop(
    addr: SocketAddr,
    rate: u64,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    counters: &Arc<Counters>,
) -> Open {
    let host: Arc<str> = Arc::from(addr.to_string());
    let rate = rate.max(1);
    let warm_slots = (warmup.as_secs_f64() * rate as f64) as u64;
    let total = warm_slots + (measure.as_secs_f64() * rate as f64) as u64;
    let [_, non_2xx_before, errors_before] = counters.snapshot();
    // Connections are opened before the first slot.
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(connect(addr).await.ok());
    }
    let start = Instant::now() + Duration::from_millis(50);
    let step = connections as u64;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, mut conn)| {
            let (host, counters) = (Arc::clone(&host), Arc::clone(counters));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut lags = Vec::new();
                let (mut late, mut sent) = (0u64, 0u64);
                let mut slot = k as u64;
                while slot < total {
                    let at = start + Duration::from_nanos(slot * 1_000_000_000 / rate);
                    let measured = slot >= warm_slots;
                    let from = if Instant::now() < at {
                        tokio::time::sleep_until(at.into()).await;
                        let now = Instant::now();
                        if measured {
                            lags.push(micros(now - at));
                        }
                        now
                    } else {
                        if measured {
                            late += 1;
                        }
                        at
                    };
                    let path = PATHS[(slot as usize) % PATHS.len()];
                    let answered = exchange(&mut conn, addr, &host, path, &counters).await;
                    if measured {
                        sent += 1;
                        if answered {
                            latencies.push(micros(from.elapsed()));
                        }
                    }
                    slot += step;
                }
                (latencies, lags, late, sent)
            })
        })
        .collect();
    let mut open = Open::default();
    for task in tasks {
        if let Ok((latencies, lags, late, sent)) = task.await {
            open.latencies.extend(latencies);
            open.timer_lag.extend(lags);
            open.late += late;
            open.sent += sent;
        }
    }
    open.latencies.sort_unstable();
    open.timer_lag.sort_unstable();
    let [_, non_2xx_after, errors_after] = counters.snapshot();
    open.non_2xx = non_2xx_after - non_2xx_before;
    open.errors = errors_after - errors_before;
    open
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The nearest-rank percentile of sorted samples, in ms.
fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

// ---------------------------------------------------------------------------------------------
// CPU time, from /proc (no profiler needed): where the cycles of each target go

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux whatever the kernel's HZ.
const TICKS_PER_SEC: f64 = 100.0;

/// `(ppid, utime + stime in ticks)` from a `/proc/.../stat` file.
fn stat_ticks(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name, in parentheses, may hold spaces: the fields start after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks of a process and of its direct children (nginx's workers), by pid.
fn tree_ticks(pid: u32) -> std::collections::HashMap<u32, u64> {
    let mut ticks = std::collections::HashMap::new();
    if let Some((_, t)) = stat_ticks(Path::new(&format!("/proc/{pid}/stat"))) {
        ticks.insert(pid, t);
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, t)) = stat_ticks(&entry.path().join("stat"))
                && ppid == pid
            {
                ticks.insert(child, t);
            }
        }
    }
    ticks
}

/// CPU ticks of each thread of a process: `(name, ticks)` by thread id.
fn thread_ticks(pid: u32) -> std::collections::HashMap<u32, (String, u64)> {
    let mut threads = std::collections::HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for entry in entries.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .map_or_else(|_| "?".to_owned(), |c| c.trim().to_owned());
            if let Some((_, t)) = stat_ticks(&entry.path().join("stat")) {
                threads.insert(tid, (name, t));
            }
        }
    }
    threads
}

/// CPU seconds used between two snapshots (processes present in both).
fn used_secs(
    before: &std::collections::HashMap<u32, u64>,
    after: &std::collections::HashMap<u32, u64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(*t)))
        .sum::<u64>() as f64
        / TICKS_PER_SEC
}

/// A process's CPU ticks (and its threads') at the start of a target's measurements.
struct CpuMark {
    target: Option<(u32, std::collections::HashMap<u32, u64>)>,
    threads: Option<std::collections::HashMap<u32, (String, u64)>>,
    upstream: std::collections::HashMap<u32, u64>,
    generator: std::collections::HashMap<u32, u64>,
}

impl CpuMark {
    fn take(target: Option<u32>, upstream: u32, threads: bool) -> Self {
        Self {
            target: target.map(|pid| (pid, tree_ticks(pid))),
            threads: target.filter(|_| threads).map(thread_ticks),
            upstream: tree_ticks(upstream),
            generator: tree_ticks(std::process::id()),
        }
    }

    /// CPU seconds since the mark.
    fn since(&self, upstream: u32) -> Cpu {
        let target = self
            .target
            .as_ref()
            .map(|(pid, before)| used_secs(before, &tree_ticks(*pid)));
        let threads = self
            .threads
            .as_ref()
            .zip(self.target.as_ref())
            .map(|(before, (pid, _))| {
                let mut by_name: Vec<(String, Vec<f64>)> = Vec::new();
                for (tid, (name, t)) in thread_ticks(*pid) {
                    let used = t.saturating_sub(before.get(&tid).map_or(0, |(_, b)| *b)) as f64
                        / TICKS_PER_SEC;
                    match by_name.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, secs)) => secs.push(used),
                        None => by_name.push((name, vec![used])),
                    }
                }
                for (_, secs) in &mut by_name {
                    secs.sort_by(|a, b| b.total_cmp(a));
                }
                by_name.sort_by(|a, b| b.1.iter().sum::<f64>().total_cmp(&a.1.iter().sum::<f64>()));
                by_name
            });
        Cpu {
            target,
            threads,
            upstream: used_secs(&self.upstream, &tree_ticks(upstream)),
            generator: used_secs(&self.generator, &tree_ticks(std::process::id())),
        }
    }
}

/// CPU seconds a target's measurements cost each process.
#[derive(Debug, Default)]
struct Cpu {
    /// The target's processes (nginx: master and workers); none for the direct target.
    target: Option<f64>,
    /// `apitrail proxy`'s threads by name (names cut at 15 characters by Linux), the
    /// seconds of each thread of that name, largest first.
    threads: Option<Vec<(String, Vec<f64>)>>,
    upstream: f64,
    generator: f64,
}

// ---------------------------------------------------------------------------------------------
// The run

/// Everything measured on one target.
struct Measured {
    kind: TargetKind,
    closed: Vec<(usize, Closed)>,
    open: Open,
    answered: u64,
    /// The recording proxy: metrics before the stop, records in the store after it.
    store_check: Option<StoreCheck>,
    /// The capture-off proxy: the exchanges it counted as unattributed.
    unattributed: Option<u64>,
    cpu: Cpu,
    notes: Vec<String>,
}

#[derive(Debug)]
struct StoreCheck {
    forwarded: Option<u64>,
    recorded: Option<u64>,
    dropped: Option<u64>,
    stored: u64,
}

async fn measure(
    kind: TargetKind,
    addr: SocketAddr,
    args: &Args,
) -> (Vec<(usize, Closed)>, Open, Arc<Counters>) {
    let warmup = Duration::from_secs(args.warmup_secs);
    let duration = Duration::from_secs(args.duration_secs);
    let counters = Arc::new(Counters::default());
    let mut closed = Vec::new();
    for &n in &args.connections {
        eprintln!("  {}: {n} connections, closed loop...", kind.label());
        closed.push((n, closed_loop(addr, n, warmup, duration, &counters).await));
    }
    eprintln!(
        "  {}: {} requests/s, open loop on {} connections...",
        kind.label(),
        args.rate,
        args.open_connections
    );
    let open = open_loop(
        addr,
        args.rate,
        args.open_connections.max(1),
        warmup,
        duration,
        &counters,
    )
    .await;
    (closed, open, counters)
}

/// The value of an unlabelled Prometheus sample, or the sum over all label sets of `name`.
fn metric(text: &str, name: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *sum.get_or_insert(0) += v as u64;
        }
    }
    sum
}

async fn fetch_metrics(addr: SocketAddr) -> Result<String, String> {
    let mut sender = connect(addr).await?;
    let request = Request::get("/metrics")
        .header(HOST, addr.to_string())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn count_stored(data_dir: &Path) -> Result<u64, String> {
    let store = SqliteStore::open(data_dir, SqliteOptions::default())
        .map_err(|e| format!("cannot open the proxy's store {}: {e}", data_dir.display()))?;
    let org = OrgId::parse(ORG).map_err(|e| e.to_string())?;
    let tenant = store
        .tenant(&org)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("org {ORG} is not in the proxy's store"))?;
    let count = store
        .count_request_logs(&tenant)
        .await
        .map_err(|e| e.to_string());
    let _ = store.shutdown().await;
    count
}

async fn run_target(
    kind: TargetKind,
    args: &Args,
    work: &Path,
    upstream: SocketAddr,
    upstream_pid: u32,
) -> Result<Measured, String> {
    eprintln!("{}...", kind.label());
    let mut running = match kind {
        TargetKind::Direct => Running {
            addr: upstream,
            proc: None,
            metrics: None,
            data_dir: None,
            log: None,
        },
        TargetKind::Nginx | TargetKind::NginxLog => {
            start_nginx(
                &find_nginx(args)?,
                work,
                upstream,
                kind == TargetKind::NginxLog,
            )
            .await?
        }
        TargetKind::Apitrail | TargetKind::ApitrailOff => {
            start_apitrail(
                &find_apitrail(args)?,
                work,
                upstream,
                kind == TargetKind::Apitrail,
            )
            .await?
        }
    };
    let mark = CpuMark::take(
        running.proc.as_ref().and_then(Proc::pid),
        upstream_pid,
        matches!(kind, TargetKind::Apitrail | TargetKind::ApitrailOff),
    );
    let (closed, open, counters) = measure(kind, running.addr, args).await;
    let cpu = mark.since(upstream_pid);
    let answered = counters.answered.load(Ordering::Relaxed);
    let mut notes = Vec::new();
    let metrics = match running.metrics {
        Some(addr) => match fetch_metrics(addr).await {
            Ok(text) => Some(text),
            Err(e) => {
                notes.push(format!("/metrics could not be read: {e}"));
                None
            }
        },
        None => None,
    };
    if let Some(mut proc) = running.proc.take() {
        // Graceful: apitrail finishes its exchanges and writes its buffered records.
        let stopped = tokio::task::spawn_blocking(move || proc.stop(Duration::from_secs(120)))
            .await
            .map_err(|e| e.to_string())?;
        match stopped {
            Ok(status) if status.success() => {}
            Ok(status) => notes.push(format!("stopped with {status}")),
            Err(e) => notes.push(e),
        }
    }
    if let Some(log) = &running.log
        && let Ok(meta) = std::fs::metadata(log)
        && kind == TargetKind::NginxLog
    {
        notes.push(format!("access log: {} bytes", meta.len()));
    }
    let store_check = match (&running.data_dir, kind) {
        (Some(dir), TargetKind::Apitrail) => Some(StoreCheck {
            forwarded: metrics
                .as_deref()
                .and_then(|m| metric(m, "apitrail_proxy_forwarded_total")),
            recorded: metrics
                .as_deref()
                .and_then(|m| metric(m, "apitrail_proxy_recorded_total")),
            dropped: metrics
                .as_deref()
                .and_then(|m| metric(m, "apitrail_proxy_dropped_total")),
            stored: count_stored(dir).await?,
        }),
        _ => None,
    };
    let unattributed = (kind == TargetKind::ApitrailOff)
        .then(|| {
            metrics
                .as_deref()
                .and_then(|m| metric(m, "apitrail_proxy_unattributed_total"))
        })
        .flatten();
    Ok(Measured {
        kind,
        closed,
        open,
        answered,
        store_check,
        unattributed,
        cpu,
        notes,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let load = std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |s| s.split(' ').take(3).collect::<Vec<_>>().join(" "),
    );
    format!("Machine: nproc {cores}, {cpu}, Linux {kernel}; load average at the end: {load}.")
}

/// `nginx -v` (it prints to stderr) and `apitrail --version`.
fn versions(args: &Args) -> String {
    let version = |bin: &Path, arg: &str| {
        Command::new(bin)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text.trim().to_owned()
            })
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let mut parts = Vec::new();
    if let Ok(bin) = find_apitrail(args) {
        parts.push(format!(
            "{} ({})",
            version(&bin, "--version"),
            bin.display()
        ));
    }
    if let Ok(bin) = find_nginx(args) {
        parts.push(format!("{} ({})", version(&bin, "-v"), bin.display()));
    }
    parts.join("; ")
}

async fn run(args: &Args) -> Result<String, String> {
    if args.connections.is_empty() || args.connections.contains(&0) {
        return Err("--connections needs one or more counts above 0".to_owned());
    }
    if args.duration_secs == 0 {
        return Err("--duration-secs must be at least 1".to_owned());
    }
    // Fail before measuring anything when a binary is missing.
    let mut kinds = vec![TargetKind::Direct];
    for &kind in &args.targets {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds
        .iter()
        .any(|k| matches!(k, TargetKind::Nginx | TargetKind::NginxLog))
    {
        find_nginx(args)?;
    }
    if kinds
        .iter()
        .any(|k| matches!(k, TargetKind::Apitrail | TargetKind::ApitrailOff))
    {
        find_apitrail(args)?;
    }
    let work = tempfile::Builder::new()
        .prefix("proxy-bench-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    // nginx's workers run as `nobody` when it is started as root and must reach their files.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755));
    }
    let (mut upstream_proc, upstream, body_len) = start_upstream(work.path()).await?;
    let upstream_pid = upstream_proc
        .pid()
        .ok_or_else(|| "the upstream is not running".to_owned())?;
    let mut results = Vec::new();
    for kind in kinds {
        results.push(run_target(kind, args, work.path(), upstream, upstream_pid).await?);
    }
    let _ = upstream_proc.stop(Duration::from_secs(5));
    Ok(report(args, &results, body_len))
}

fn report(args: &Args, results: &[Measured], body_len: usize) -> String {
    let mut r = String::new();
    let command: Vec<String> = std::env::args().skip(1).collect();
    let _ = writeln!(
        r,
        "Command: `proxy-bench {}`{}\n",
        command.join(" "),
        if args.quick {
            " (**smoke run**: short measurements, not figures to publish)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        r,
        "Upstream: hyper HTTP/1.1 on loopback, a {body_len}-byte JSON answer to every GET (child process). \
         Closed loop: {} s after {} s of warm-up per connection count. Open loop: {} requests/s on {} connections for {} s after {} s of warm-up; \
         latency from each request's slot on the timeline (a request held back by a slow answer is charged the wait).\n",
        args.duration_secs,
        args.warmup_secs,
        args.rate,
        args.open_connections,
        args.duration_secs,
        args.warmup_secs
    );
    let direct = results.iter().find(|m| m.kind == TargetKind::Direct);
    let direct_rate = |n: usize| {
        direct
            .and_then(|d| d.closed.iter().find(|(c, _)| *c == n))
            .map(|(_, c)| c.per_sec)
    };
    let (direct_p50, direct_p99) = direct.map_or((f64::NAN, f64::NAN), |d| {
        (pct(&d.open.latencies, 0.50), pct(&d.open.latencies, 0.99))
    });

    let mut head = "| target |".to_owned();
    let mut rule = "|---|".to_owned();
    for n in &args.connections {
        let _ = write!(head, " req/s, {n} conns | × direct |");
        rule.push_str("---:|---:|");
    }
    let _ = write!(
        head,
        " p50 at {rate}/s | p99 | added p50 | added p99 | non-2xx | errors |",
        rate = args.rate
    );
    rule.push_str("---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(r, "{head}\n{rule}");
    for m in results {
        let _ = write!(r, "| {} |", m.kind.label());
        for (n, c) in &m.closed {
            let ratio = direct_rate(*n).map_or(f64::NAN, |d| c.per_sec / d);
            let _ = write!(r, " {:.0} | {:.2} |", c.per_sec, ratio);
        }
        let (p50, p99) = (pct(&m.open.latencies, 0.50), pct(&m.open.latencies, 0.99));
        let added = |v: f64, base: f64| {
            if m.kind == TargetKind::Direct {
                "—".to_owned()
            } else {
                format!("{:+.2} ms", v - base)
            }
        };
        let non_2xx: u64 = m.closed.iter().map(|(_, c)| c.non_2xx).sum::<u64>() + m.open.non_2xx;
        let errors: u64 = m.closed.iter().map(|(_, c)| c.errors).sum::<u64>() + m.open.errors;
        let flag = |n: u64| {
            if n > 0 {
                format!("**{n}**")
            } else {
                "0".to_owned()
            }
        };
        let _ = writeln!(
            r,
            " {p50:.2} ms | {p99:.2} ms | {} | {} | {} | {} |",
            added(p50, direct_p50),
            added(p99, direct_p99),
            flag(non_2xx),
            flag(errors)
        );
    }
    let _ = writeln!(
        r,
        "\n× direct: requests/s against the upstream's own at the same connection count. Added: the target's percentile minus the direct one's (same generator, same machine). \
         non-2xx and errors (refused or broken connections, no answer within {} s) over all of the target's phases, warm-ups included.\n",
        REQUEST_TIMEOUT.as_secs()
    );
    let failed: Vec<&str> = results
        .iter()
        .filter(|m| {
            m.open.non_2xx
                + m.open.errors
                + m.closed
                    .iter()
                    .map(|(_, c)| c.non_2xx + c.errors)
                    .sum::<u64>()
                > 0
        })
        .map(|m| m.kind.label())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            r,
            "**This run had failed requests** ({}): its figures for those targets are not valid.\n",
            failed.join("; ")
        );
    }

    let _ = writeln!(
        r,
        "Open loop, details (ms):\n\n| target | sent | p50 | p90 | p99 | p99.9 | max | sent late (previous answer late) | generator timer lag p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for m in results {
        let o = &m.open;
        let _ = writeln!(
            r,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} |",
            m.kind.label(),
            o.sent,
            pct(&o.latencies, 0.50),
            pct(&o.latencies, 0.90),
            pct(&o.latencies, 0.99),
            pct(&o.latencies, 0.999),
            o.latencies
                .last()
                .map_or(f64::NAN, |&v| f64::from(v) / 1000.0),
            o.late,
            pct(&o.timer_lag, 0.99)
        );
    }

    let _ = writeln!(
        r,
        "\nCPU per request, µs (user + system from /proc, 10 ms ticks, over all of the target's measurements, warm-ups included; the requests are those the generator got answered): \n\n\
         | target | requests | target's processes | upstream | load generator |\n|---|---:|---:|---:|---:|"
    );
    for m in results {
        let per = |secs: f64| {
            if m.answered == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}", secs * 1e6 / m.answered as f64)
            }
        };
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} |",
            m.kind.label(),
            m.answered,
            m.cpu.target.map_or_else(|| "—".to_owned(), per),
            per(m.cpu.upstream),
            per(m.cpu.generator)
        );
    }
    for m in results {
        if let Some(threads) = &m.cpu.threads {
            let parts: Vec<String> = threads
                .iter()
                .filter(|(_, secs)| secs.iter().sum::<f64>() > 0.0)
                .map(|(name, secs)| {
                    let each: Vec<String> = secs
                        .iter()
                        .filter(|s| **s > 0.0)
                        .map(|s| format!("{s:.2}"))
                        .collect();
                    format!(
                        "`{name}` ×{} {:.2} s ({})",
                        secs.len(),
                        secs.iter().sum::<f64>(),
                        each.join(" + ")
                    )
                })
                .collect();
            let _ = writeln!(
                r,
                "\n{}, CPU by thread: {}.",
                m.kind.label(),
                parts.join("; ")
            );
        }
    }

    for m in results {
        if let Some(check) = &m.store_check {
            let show = |v: Option<u64>| v.map_or("unknown".to_owned(), |v| v.to_string());
            let verdict = if check.stored == m.answered {
                "**equal**"
            } else {
                "**NOT equal**"
            };
            let _ = writeln!(
                r,
                "\nRecording proxy, after a graceful stop (SIGTERM, wait): requests answered through it (all phases, warm-ups included, counted by the generator) {}; \
                 records in the store (`count_request_logs` of org `{ORG}`) {}: {verdict}. The proxy's /metrics before the stop: forwarded {}, recorded {}, dropped {}.",
                m.answered,
                check.stored,
                show(check.forwarded),
                show(check.recorded),
                show(check.dropped)
            );
        }
        if let Some(n) = m.unattributed {
            let _ = writeln!(
                r,
                "\nCapture off: {n} exchanges counted unattributed (`apitrail_proxy_unattributed_total`) of {} answered; nothing written.",
                m.answered
            );
        }
        for note in &m.notes {
            let _ = writeln!(r, "\n{}: {note}", m.kind.label());
        }
    }
    let _ = writeln!(r, "\n{}", machine());
    let _ = writeln!(r, "Versions: {}.", versions(args));
    r
}

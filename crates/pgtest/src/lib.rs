//! Test harness for the PostgreSQL backend: starts a real PostgreSQL server from Debian's
//! installed binaries, once per test process, and hands out fresh empty databases.
//!
//! The server binaries are found through `$APITRAIL_PG_BINDIR`, else `pg_config --bindir`,
//! else the highest `/usr/lib/postgresql/*/bin`. The server runs from a fresh temp dir (data
//! dir, private socket dir, log; in `/dev/shm` when that has room, for speed, else in the
//! system temp dir) on `127.0.0.1` and a free port, with trust auth for the superuser
//! `postgres`. When the tests run as root it runs as the `postgres` user, since `initdb` and
//! `postgres` refuse root.
//!
//! Lifecycle: the server is spawned from a dedicated thread that never exits, with
//! `PR_SET_PDEATHSIG = SIGQUIT` (an immediate shutdown), so it dies with the test process
//! however that ends. A small `sh` sidecar, holding the read end of a pipe whose write end
//! only the test process has, notices that end (EOF), waits for the server to be gone and
//! removes the temp dir.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// Environment variable naming the folder of the PostgreSQL server binaries; overrides
/// `pg_config --bindir` and the `/usr/lib/postgresql/*/bin` scan.
const BINDIR_ENV: &str = "APITRAIL_PG_BINDIR";

const INSTALL_HINT: &str = "install Debian's postgresql package (./scripts/ensure-deps test does)";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
/// Free space `/dev/shm` needs to be used: the cluster takes ~40 MB, each database ~8 MB.
const SHM_MIN_FREE: u64 = 4 << 30;

/// A private PostgreSQL server, started on first use and shared by the whole test process.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    socket_dir: PathBuf,
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
static DURABLE: OnceLock<Result<PgServer, String>> = OnceLock::new();
static STOCK: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// How a server runs.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// `fsync=on` and the data dir on disk (never `/dev/shm`): what production runs.
    durable: bool,
    /// PostgreSQL's own `max_connections` (100), hence its stock lock table
    /// (`max_locks_per_transaction` × `max_connections`), instead of the shared server's 300.
    stock_locks: bool,
}
static DATABASES: AtomicU64 = AtomicU64::new(0);

impl PgServer {
    /// The shared server (starts it on first call; panics with an actionable message if the
    /// binaries are missing: "install Debian's postgresql package (./scripts/ensure-deps test
    /// does)"). Blocks the calling thread during start-up but never uses its async runtime, so
    /// it may be called from any test, async or not. If start-up fails, every call panics
    /// with the same message.
    pub fn shared() -> &'static PgServer {
        let settings = Settings {
            durable: false,
            stock_locks: false,
        };
        match SHARED.get_or_init(|| start_on_dedicated_thread(settings)) {
            Ok(server) => server,
            Err(message) => panic!("apitrail-pgtest: {message}"),
        }
    }

    /// A second server for benchmarks, started on first call: like [`PgServer::shared`] but
    /// durable (`fsync=on`, data on disk in the system temp dir, `shared_buffers=1GB`), so
    /// commit and ingest figures mean what they would in production.
    pub fn durable() -> &'static PgServer {
        let settings = Settings {
            durable: true,
            stock_locks: false,
        };
        match DURABLE.get_or_init(|| start_on_dedicated_thread(settings)) {
            Ok(server) => server,
            Err(message) => panic!("apitrail-pgtest: {message}"),
        }
    }

    /// A third server with PostgreSQL's stock `max_connections` and
    /// `max_locks_per_transaction`, so its shared lock table is as small as a default
    /// installation's: for tests of what runs out of locks. Started on first call.
    pub fn stock() -> &'static PgServer {
        let settings = Settings {
            durable: false,
            stock_locks: true,
        };
        match STOCK.get_or_init(|| start_on_dedicated_thread(settings)) {
            Ok(server) => server,
            Err(message) => panic!("apitrail-pgtest: {message}"),
        }
    }

    /// A connection URL for database `database` on this server,
    /// `postgres://postgres@127.0.0.1:PORT/DATABASE` (TCP on 127.0.0.1 and the server's port;
    /// trust auth, so no password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new empty database with a unique name (`t_<pid>_<counter>`) and returns its
    /// URL. Runs on the caller's tokio runtime; panics if the server refuses.
    pub async fn fresh_database(&self) -> String {
        let n = DATABASES.fetch_add(1, Ordering::Relaxed);
        let name = format!("t_{}_{n}", std::process::id());
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "apitrail-pgtest: connecting to create {name}: {}",
                    describe(&e)
                )
            });
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| {
                panic!("apitrail-pgtest: CREATE DATABASE {name}: {}", describe(&e))
            });
        drop(client);
        let _ = connection.await;
        self.url(&name)
    }

    /// The server's TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's private Unix socket dir (holds `.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
}

/// Starts the server from a thread of its own that then parks forever: the server's
/// `PR_SET_PDEATHSIG` fires when the thread that forked it exits, so that thread must live as
/// long as the process. The start-up runs there, on its own current-thread runtime; the caller
/// only waits on a std channel.
fn start_on_dedicated_thread(settings: Settings) -> Result<PgServer, String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("apitrail-pgtest-postmaster".into())
        .spawn(move || match start(settings) {
            Ok((server, child, sidecar)) => {
                let _ = tx.send(Ok(server));
                // Never dropped: the server's handle, and the sidecar's pipe, whose closing
                // (at process exit) starts the clean-up.
                let _keep = (child, sidecar);
                loop {
                    std::thread::park();
                }
            }
            Err(message) => {
                let _ = tx.send(Err(message));
            }
        });
    if let Err(e) = spawned {
        return Err(format!("spawning the postmaster thread: {e}"));
    }
    rx.recv()
        .unwrap_or_else(|_| Err("the postmaster thread died during start-up".into()))
}

fn start(settings: Settings) -> Result<(PgServer, Child, ChildStdin), String> {
    let bindir = find_bindir()?;
    let run_as = if sys::is_root() {
        Some(sys::lookup_user("postgres").ok_or_else(|| {
            "running as root, but there is no `postgres` user to run the server as; ".to_string()
                + INSTALL_HINT
        })?)
    } else {
        None
    };

    let temp = make_temp_dir(!settings.durable)?;
    let mut sidecar = spawn_cleanup_sidecar(&temp)?;
    let data_dir = temp.join("data");
    let socket_dir = temp.join("sock");
    for dir in [&data_dir, &socket_dir] {
        fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if let Some(user) = run_as {
        for dir in [&temp, &data_dir, &socket_dir] {
            std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown {} to postgres: {e}", dir.display()))?;
        }
    }

    // initdb (it refuses root, hence `run_as`).
    let mut initdb = command(&bindir.join("initdb"), run_as, &temp);
    initdb
        .arg("-D")
        .arg(&data_dir)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync")
        .stdin(Stdio::null());
    let out = initdb
        .output()
        .map_err(|e| format!("running {}: {e}", bindir.join("initdb").display()))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let log_path = temp.join("postgres.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("building the start-up runtime: {e}"))?;

    for attempt in 1..=START_ATTEMPTS {
        let port = free_port()?;
        let log_start = log.seek(SeekFrom::End(0)).unwrap_or(0);
        let stderr = log
            .try_clone()
            .map_err(|e| format!("duplicating the log fd: {e}"))?;
        let mut postgres = command(&bindir.join("postgres"), run_as, &temp);
        postgres
            .arg("-D")
            .arg(&data_dir)
            .arg("-k")
            .arg(&socket_dir)
            .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
            .args(if settings.stock_locks {
                ["-c", "max_connections=100"]
            } else {
                ["-c", "max_connections=300"]
            })
            .args(if settings.durable {
                ["-c", "fsync=on", "-c", "shared_buffers=1GB"]
            } else {
                ["-c", "fsync=off", "-c", "shared_buffers=128MB"]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let mut child = postgres
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bindir.join("postgres").display()))?;
        // The sidecar waits for this pid to be gone before removing the temp dir.
        let _ = writeln!(sidecar, "{}", child.id());

        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        match runtime.block_on(wait_ready(&url, &mut child)) {
            Ok(()) => {
                return Ok((PgServer { port, socket_dir }, child, sidecar));
            }
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                let attempt_log = read_from(&mut log, log_start);
                let port_taken = attempt_log.contains("could not bind")
                    || attempt_log.contains("could not create any TCP/IP sockets");
                if port_taken && attempt < START_ATTEMPTS {
                    continue;
                }
                return Err(format!(
                    "PostgreSQL ({}) did not start on port {port}: {why}\n--- {} ---\n{}",
                    bindir.display(),
                    log_path.display(),
                    read_from(&mut log, 0)
                ));
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// A fresh temp dir in `/dev/shm` when that is a tmpfs with room (`initdb` and
/// `CREATE DATABASE` run 3-10x faster there than on a VM disk), else in the system temp dir.
fn make_temp_dir(memory_ok: bool) -> Result<PathBuf, String> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("apitrail-pgtest-");
    let shm = Path::new("/dev/shm");
    if memory_ok
        && sys::available_bytes(shm).is_some_and(|bytes| bytes >= SHM_MIN_FREE)
        && let Ok(dir) = builder.tempdir_in(shm)
    {
        return Ok(dir.keep());
    }
    builder.tempdir().map(|dir| dir.keep()).map_err(|e| {
        format!(
            "creating a temp dir in {}: {e}",
            std::env::temp_dir().display()
        )
    })
}

/// Polls a real connection (`SELECT 1`) until it works, the server exits, or the timeout.
async fn wait_ready(url: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited ({status})"));
        }
        // Bounded: something else may have grabbed the port and accept without answering.
        let last_error = match tokio::time::timeout(Duration::from_secs(1), probe(url)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => describe(&e),
            Err(_) => "no answer within 1 s".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready after {READY_TIMEOUT:?}; last error: {last_error}"
            ));
        }
    }
}

async fn probe(url: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let connection = tokio::spawn(connection);
    let result = client.simple_query("SELECT 1").await;
    drop(client);
    let _ = connection.await;
    result.map(drop)
}

/// A command that runs as `run_as` (when root) from `cwd`, and gets `SIGQUIT` when the thread
/// that spawned it exits.
fn command(program: &Path, run_as: Option<sys::User>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    // The server user may not be able to reach the caller's working directory.
    cmd.current_dir(cwd);
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    sys::die_with_parent(&mut cmd);
    cmd
}

/// Starts `sh` reading server pids from a pipe until EOF, which comes when the test process
/// ends, however it ends (only this process holds the write end; it is close-on-exec). It then
/// waits for those servers to be gone (or zombies) and removes the temp dir. It runs in a
/// process group of its own so that a Ctrl-C on the terminal does not stop it.
fn spawn_cleanup_sidecar(temp: &Path) -> Result<ChildStdin, String> {
    const SCRIPT: &str = r#"pids=$(cat)
for p in $pids; do
  i=0
  while [ -d "/proc/$p" ] && [ "$i" -lt 600 ] && ! grep -qs '^State:[[:space:]]*Z' "/proc/$p/status"; do
    sleep 0.1
    i=$((i + 1))
  done
done
rm -rf -- "$1""#;
    let mut child = Command::new("/bin/sh")
        .args(["-c", SCRIPT, "apitrail-pgtest-cleanup"])
        .arg(temp)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the cleanup sidecar (/bin/sh): {e}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| "the cleanup sidecar has no stdin".to_string())
}

/// The error with its sources: tokio-postgres's own Display is just "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading the free port: {e}"))
}

fn read_from(file: &mut File, offset: u64) -> String {
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(offset)).is_ok() {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `APITRAIL_PG_BINDIR`, else `pg_config --bindir`, else the highest
/// `/usr/lib/postgresql/*/bin`; each must hold `postgres` and `initdb`.
fn find_bindir() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        return Err(format!(
            "{BINDIR_ENV}={} holds no `postgres` and `initdb`; unset it or {INSTALL_HINT}",
            dir.display()
        ));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut found: Vec<(Vec<u64>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, dir)| dir).ok_or_else(|| {
        format!(
            "no PostgreSQL server binaries found ({BINDIR_ENV} unset, `pg_config --bindir` \
             absent or without a server, no /usr/lib/postgresql/*/bin/postgres): {INSTALL_HINT}"
        )
    })
}

/// The few libc calls std has no safe form of.
#[allow(unsafe_code)]
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    /// A user's ids.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct User {
        pub(crate) uid: u32,
        pub(crate) gid: u32,
    }

    pub(crate) fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Space available to unprivileged users on the file system holding `path`.
    pub(crate) fn available_bytes(path: &Path) -> Option<u64> {
        let path = CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs is plain old data; all-zero is a valid value, overwritten on success.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        // The fields are u64 on 64-bit Linux, narrower on some 32-bit targets.
        #[allow(clippy::useless_conversion)]
        (rc == 0).then(|| u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
    }

    /// Looks up `name` in the user database (getpwnam_r: the thread-safe getpwnam).
    pub(crate) fn lookup_user(name: &str) -> Option<User> {
        let name = CString::new(name).ok()?;
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: passwd is plain old data; all-zero is a valid value, overwritten on success.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call and `buf.len()` is the buffer's size;
        // on success `result` points at `pwd`, whose string fields point into `buf` (unused).
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (rc == 0 && !result.is_null()).then_some(User {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }

    /// Makes `cmd`'s process get SIGQUIT (PostgreSQL's immediate shutdown) when the thread
    /// that spawned it exits, and not start at all if the parent is already gone.
    pub(crate) fn die_with_parent(cmd: &mut Command) {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-
        // safe calls are allowed: prctl and getppid are plain syscalls and it allocates nothing
        // (io::Error::from_raw_os_error does not allocate). std runs it after the uid/gid
        // change, which would otherwise clear the death signal.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl: then we were reparented already.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

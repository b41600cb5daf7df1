//! The harness against itself: a real server, separate fresh databases, the server user and
//! temp dir, and the server's death (and the temp dir's removal) when the test process ends.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use apitrail_pgtest::PgServer;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Set in the re-executed test binary: `server_dies_with_the_test_process` then starts the
/// server, prints what the parent needs, and returns, ending that process.
const DEATH_CHILD_ENV: &str = "APITRAIL_PGTEST_DEATH_CHILD";

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(connection);
    client
}

async fn one_string(client: &Client, sql: &str) -> String {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn public_tables(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The postmaster's pid, from the first line of `postmaster.pid` in its data dir.
fn postmaster_pid(data_dir: &Path) -> u32 {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// Gone, or a zombie waiting for a parent (or PID 1) to reap it.
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

fn uid_of_user(name: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .unwrap_or_else(|| panic!("no user {name} in /etc/passwd"))[2]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn server_is_real_postgresql_over_tcp_and_its_socket() {
    let server = PgServer::shared();
    let url = server.url("postgres");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/postgres", server.port())
    );
    let client = connect(&url).await;
    let version = one_string(&client, "SELECT version()").await;
    assert!(version.starts_with("PostgreSQL "), "{version}");
    assert_eq!(
        one_string(&client, "SELECT current_user::text").await,
        "postgres"
    );
    assert_eq!(one_string(&client, "SHOW fsync").await, "off");
    assert_eq!(one_string(&client, "SHOW max_connections").await, "300");

    // The private socket dir holds the server's socket, and it answers too.
    let socket = server
        .socket_dir()
        .join(format!(".s.PGSQL.{}", server.port()));
    assert!(socket.exists(), "{} missing", socket.display());
    let over_socket = format!(
        "host={} port={} user=postgres dbname=postgres",
        server.socket_dir().display(),
        server.port()
    );
    let client = connect(&over_socket).await;
    let version_over_socket = one_string(&client, "SELECT version()").await;
    assert_eq!(version_over_socket, version);
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_databases_are_distinct_and_empty() {
    let server = PgServer::shared();
    let (a, b) = tokio::join!(server.fresh_database(), server.fresh_database());
    assert_ne!(a, b);
    let (a, b) = (connect(&a).await, connect(&b).await);
    let name_a = one_string(&a, "SELECT current_database()::text").await;
    let name_b = one_string(&b, "SELECT current_database()::text").await;
    assert_ne!(name_a, name_b);
    assert_eq!(public_tables(&a).await, 0);
    assert_eq!(public_tables(&b).await, 0);

    a.batch_execute("CREATE TABLE only_in_a (id int); INSERT INTO only_in_a VALUES (1)")
        .await
        .unwrap();
    assert_eq!(public_tables(&a).await, 1);
    assert_eq!(public_tables(&b).await, 0);
    let missing = b.query("SELECT * FROM only_in_a", &[]).await.unwrap_err();
    assert_eq!(
        missing.code(),
        Some(&SqlState::UNDEFINED_TABLE),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_fresh_databases() {
    let server = PgServer::shared();
    let tasks: Vec<_> = (0..16)
        .map(|_| tokio::spawn(server.fresh_database()))
        .collect();
    let mut urls = Vec::new();
    for task in tasks {
        urls.push(task.await.unwrap());
    }
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 16);
    let client = connect(&urls[7]).await;
    assert_eq!(public_tables(&client).await, 0);
}

/// A plain test and a current-thread runtime can use it too (start-up never blocks on the
/// caller's runtime).
#[test]
fn shared_works_outside_and_inside_a_current_thread_runtime() {
    let port = PgServer::shared().port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = PgServer::shared();
        assert_eq!(server.port(), port);
        let client = connect(&server.fresh_database().await).await;
        assert_eq!(public_tables(&client).await, 0);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn server_runs_as_postgres_from_a_temp_dir() {
    let server = PgServer::shared();
    let client = connect(&server.url("postgres")).await;
    let data_dir = PathBuf::from(one_string(&client, "SHOW data_directory").await);

    // data dir and socket dir side by side in one fresh temp dir.
    let temp = data_dir.parent().unwrap();
    assert!(
        temp.parent() == Some(Path::new("/dev/shm"))
            || temp.parent() == Some(&std::env::temp_dir()),
        "{} is neither in /dev/shm nor in {}",
        data_dir.display(),
        std::env::temp_dir().display()
    );
    let temp_name = temp.file_name().unwrap().to_str().unwrap();
    assert!(temp_name.starts_with("apitrail-pgtest-"), "{temp_name}");
    assert_eq!(server.socket_dir().parent(), Some(temp));

    let pid = postmaster_pid(&data_dir);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "postgres"
    );
    let server_uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    let our_uid = std::fs::metadata("/proc/self").unwrap().uid();
    let expected = if our_uid == 0 {
        uid_of_user("postgres")
    } else {
        our_uid
    };
    assert_eq!(
        server_uid, expected,
        "postmaster {pid} runs as uid {server_uid}"
    );
    assert_ne!(server_uid, 0, "the server must not run as root");
    assert_eq!(std::fs::metadata(&data_dir).unwrap().uid(), expected);
}

/// Re-runs this test binary with only this test and `DEATH_CHILD_ENV` set: that child starts
/// its own server, prints the postmaster's pid, port and temp dir, and exits. The postmaster
/// must then be gone, its port closed and the temp dir removed, within seconds.
#[test]
fn server_dies_with_the_test_process() {
    if std::env::var_os(DEATH_CHILD_ENV).is_some() {
        return death_child();
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "server_dies_with_the_test_process",
            "--exact",
            "--nocapture",
        ])
        .env(DEATH_CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child_pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Both reach EOF only once nothing holds the pipes: neither the server nor the
        // clean-up sidecar may inherit them.
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send((out, err.join().unwrap_or_default(), child.wait()));
    });
    let Ok((out, err, status)) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = Command::new("kill").arg(child_pid.to_string()).status();
        panic!("the child test process did not finish (or its output pipes stayed open)");
    };
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "child failed: {status:?}\n{out}\n{err}"
    );
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("PGTEST_CHILD "))
        .unwrap_or_else(|| panic!("no PGTEST_CHILD line in:\n{out}\n{err}"));
    let fields: Vec<&str> = line.split(' ').collect();
    let [pid, port, temp] = fields[..] else {
        panic!("bad line {line}")
    };
    let (pid, port, temp): (u32, u16, PathBuf) =
        (pid.parse().unwrap(), port.parse().unwrap(), temp.into());

    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "postmaster {pid} still running 10 s after its test process exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while temp.exists() {
        assert!(
            Instant::now() < deadline,
            "temp dir {} not removed 15 s after the server died",
            temp.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn death_child() {
    let server = PgServer::shared();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data_dir = runtime.block_on(async {
        let client = connect(&server.url("postgres")).await;
        PathBuf::from(one_string(&client, "SHOW data_directory").await)
    });
    let pid = postmaster_pid(&data_dir);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "postgres"
    );
    println!(
        "PGTEST_CHILD {pid} {} {}",
        server.port(),
        data_dir.parent().unwrap().display()
    );
}

/// The benchmark's server is a second one, durable: fsync on, larger buffers, its data on disk
/// (not in `/dev/shm`), and its databases as fresh as the shared server's.
#[tokio::test(flavor = "multi_thread")]
async fn the_durable_server_fsyncs_and_keeps_its_data_on_disk() {
    let durable = PgServer::durable();
    assert_ne!(durable.port(), PgServer::shared().port());
    let client = connect(&durable.fresh_database().await).await;
    assert_eq!(one_string(&client, "SHOW fsync").await, "on");
    assert_eq!(one_string(&client, "SHOW shared_buffers").await, "1GB");
    assert!(
        !durable.socket_dir().starts_with("/dev/shm"),
        "{}",
        durable.socket_dir().display()
    );
}

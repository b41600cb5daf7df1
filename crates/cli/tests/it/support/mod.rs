//! Running the real `apitrail` binary against a data directory or a database URL.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Where the binary keeps its data.
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    /// `--data-dir` (SQLite).
    Dir(&'a Path),
    /// `--database-url`.
    Url(&'a str),
}

impl At<'_> {
    fn args(self) -> Vec<OsString> {
        match self {
            At::Dir(d) => vec!["--data-dir".into(), d.as_os_str().to_owned()],
            At::Url(u) => vec!["--database-url".into(), u.into()],
        }
    }
}

/// Runs `apitrail ARGS` on the store `at` and waits for it.
pub fn apitrail(at: At<'_>, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apitrail"))
        .args(args)
        .args(at.args())
        .env("APITRAIL_LOG", "warn")
        .env_remove("APITRAIL_ADMIN_TOKEN")
        .env_remove("APITRAIL_DATABASE_URL")
        .output()
        .expect("run apitrail")
}

/// The JSON a successful command printed.
pub fn json_out(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "apitrail failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `apitrail serve` on a free port; returns the child, its base URL and its banner.
pub fn serve(at: At<'_>, extra: &[&str]) -> (Child, String, Vec<String>) {
    serve_on(at, "127.0.0.1:0", extra)
}

/// `apitrail serve` on `listen`; returns the child, its base URL and its banner.
pub fn serve_on(at: At<'_>, listen: &str, extra: &[&str]) -> (Child, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apitrail"))
        .args(["serve", "--listen", listen])
        .args(extra)
        .args(at.args())
        .env("APITRAIL_LOG", "warn")
        .env_remove("APITRAIL_ADMIN_TOKEN")
        .env_remove("APITRAIL_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    // The banner ends with an empty line after the call to paste.
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.is_empty() && banner.iter().any(|l: &String| l.contains("curl"));
        banner.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let base = banner[0]
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    (child, base, banner)
}

/// SIGTERM, then a clean exit.
pub fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "exited with {status}");
}

/// Creates org `id` (named after it) and a key on it with `scopes` (comma-separated, e.g.
/// `read,write,admin`) through the CLI; returns the key's secret.
pub fn org_with_key(at: At<'_>, id: &str, scopes: &str) -> String {
    json_out(&apitrail(
        at,
        &["orgs", "create", "--id", id, "--name", &format!("Org {id}")],
    ));
    let key = json_out(&apitrail(
        at,
        &[
            "keys", "create", "--org", id, "--name", "tests", "--scopes", scopes,
        ],
    ));
    key["secret"].as_str().expect("the key's secret").to_owned()
}

/// `apitrail proxy` on a free port; returns the child and its base URL (and the admin
/// listener's, with `--admin-listen`, as the last word of the banner's second line).
pub fn proxy(at: At<'_>, extra: &[&str]) -> (Child, String) {
    let (child, base, _) = proxy_with_admin(at, extra);
    (child, base)
}

/// As [`proxy`], also returning the admin base URL when `extra` asks for one.
pub fn proxy_with_admin(at: At<'_>, extra: &[&str]) -> (Child, String, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apitrail"))
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .args(extra)
        .args(at.args())
        .env("APITRAIL_LOG", "warn")
        .env_remove("APITRAIL_DATABASE_URL")
        .env_remove("APITRAIL_ORG")
        .env_remove("APITRAIL_UPSTREAM")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().expect("the proxy's banner").unwrap();
    let admin = extra.contains(&"--admin-listen").then(|| {
        let line = lines.next().expect("the admin line").unwrap();
        line.split_whitespace()
            .last()
            .expect("the admin address")
            .to_owned()
    });
    std::thread::spawn(move || for _ in lines {});
    let base = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .trim_end_matches(',')
        .to_owned();
    (child, base, admin)
}

/// SIGKILL, and reap.
pub fn kill(mut child: Child) {
    child.kill().expect("SIGKILL"); // `Child::kill` sends SIGKILL on Unix.
    let _ = child.wait();
}
